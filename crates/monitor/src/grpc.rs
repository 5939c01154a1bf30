//! The tonic adapter for `evergreen.v1.Monitor`; `to_status` maps errors.

use std::pin::Pin;
use std::sync::Arc;

use evergreen_proto::v1 as pb;
use evergreen_proto::v1::monitor_server::{Monitor as MonitorApi, MonitorServer};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::service::{Closed, FeatureLine, Monitor, MonitorError, Report, WindowChoice};

pub fn to_status(e: MonitorError) -> Status {
    match e {
        MonitorError::InvalidArgument(m) => Status::invalid_argument(m),
        MonitorError::NotFound(m) => Status::not_found(m),
        MonitorError::Unavailable(m) => Status::unavailable(m),
        MonitorError::Internal(m) => Status::internal(m),
    }
}

fn line(l: FeatureLine) -> pb::FeatureDrift {
    pb::FeatureDrift {
        feature: l.feature,
        test: l.verdict.test.name().into(),
        statistic: l.verdict.statistic,
        drifted: l.verdict.drifted,
        threshold: l.verdict.threshold,
        p_value: l.verdict.p_value.unwrap_or(f64::NAN),
        psi: l.psi,
        count: l.count,
        missing: l.missing,
    }
}

fn ts(t: f64) -> Option<evergreen_proto::Timestamp> {
    (t > 0.0).then(|| evergreen_proto::Timestamp {
        seconds: t as i64,
        nanos: (t.fract() * 1e9) as i32,
    })
}

fn map(v: &[(String, f64)]) -> std::collections::HashMap<String, f64> {
    v.iter().cloned().collect()
}

fn health(h: &crate::perf::HealthCounts, dropped: u64) -> pb::Health {
    pb::Health {
        requests: h.requests,
        errors: h.errors,
        error_rate: h.error_rate(),
        latency_p50_ms: h.quantile_ms(0.5),
        latency_p99_ms: h.quantile_ms(0.99),
        dropped,
    }
}

fn summary(c: &Closed, training: &[(String, f64)], dropped: u64) -> pb::WindowSummary {
    let realized: Vec<(String, f64)> = c
        .realized
        .metrics()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    pb::WindowSummary {
        seq: c.seq,
        start: ts(c.start),
        end: ts(c.end),
        rows: c.rows,
        drifted_share: c.drifted_share,
        dataset_drift: c.dataset_drift,
        drifted_features: c.drifted_features.clone(),
        prediction_drift: c.prediction_drift,
        performance: Some(pb::Performance {
            labeled: c.realized.labeled(),
            realized: map(&realized),
            estimated: map(&c.estimated),
            training: map(training),
            estimated_reference: Default::default(),
        }),
        health: Some(health(&c.health, dropped)),
        breaches: c.all_breaches(),
    }
}

fn window_choice(w: i32) -> Result<WindowChoice, Status> {
    match pb::WindowKind::try_from(w) {
        Ok(pb::WindowKind::Unspecified | pb::WindowKind::Current) => Ok(WindowChoice::Current),
        Ok(pb::WindowKind::Last) => Ok(WindowChoice::Last),
        Ok(pb::WindowKind::Long) => Ok(WindowChoice::Long),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown window {w}: expected WINDOW_KIND_CURRENT, WINDOW_KIND_LAST or WINDOW_KIND_LONG"
        ))),
    }
}

fn drift_report(model: &str, version: u64, r: &mut Report) -> pb::DriftReport {
    let d = &mut r.drift;
    pb::DriftReport {
        model: model.to_string(),
        version,
        features: std::mem::take(&mut d.features)
            .into_iter()
            .map(line)
            .collect(),
        prediction: Some(line(FeatureLine {
            feature: d.prediction.feature.clone(),
            verdict: d.prediction.verdict.clone(),
            psi: d.prediction.psi,
            count: d.prediction.count,
            missing: 0,
        })),
        probabilities: std::mem::take(&mut d.probabilities)
            .into_iter()
            .map(line)
            .collect(),
        dataset_drift: d.dataset_drift,
        rows: d.rows,
        drifted_share: d.drifted_share,
    }
}

pub struct MonitorGrpc {
    monitor: Arc<Monitor>,
}

impl MonitorGrpc {
    /// `monitor.max_rows_per_request`, checked before anything is taken in.
    fn rows_within_limit(&self, n: usize, what: &str, unit: &str) -> Result<(), Status> {
        let max = self.monitor.config.max_rows_per_request;
        if n > max {
            return Err(Status::invalid_argument(format!(
                "a {what} of {n} {unit} exceeds the limit of {max} (monitor.max_rows_per_request); send smaller batches"
            )));
        }
        Ok(())
    }

    pub fn server(monitor: Arc<Monitor>) -> MonitorServer<Self> {
        let limit = monitor.config.limits.max_message_bytes;
        MonitorServer::new(MonitorGrpc { monitor }).max_decoding_message_size(limit)
    }
}

type SignalStream = Pin<Box<dyn Stream<Item = Result<pb::Signal, Status>> + Send>>;

#[tonic::async_trait]
impl MonitorApi for MonitorGrpc {
    async fn log_predictions(
        &self,
        req: Request<Streaming<pb::PredictionLogBatch>>,
    ) -> Result<Response<pb::LogPredictionsResponse>, Status> {
        let mut stream = req.into_inner();
        let mut accepted = 0;
        let mut stopping = self.monitor.stopping.subscribe();
        loop {
            let batch = tokio::select! {
                biased;
                b = stream.message() => b?,
                // Shutting down: what was not read is not ingested, and the
                // server sends it again (to this monitor once it is back).
                _ = stopping.wait_for(|s| *s) => {
                    return Err(Status::unavailable(format!(
                        "the monitor is shutting down after ingesting {accepted} records of this call; send the rest again"
                    )));
                }
            };
            let Some(batch) = batch else { break };
            self.rows_within_limit(batch.records.len(), "LogPredictions batch", "records")?;
            let r = self.monitor.ingest(&batch.records, batch.dropped).await;
            self.monitor.metrics.records("accepted", r.accepted);
            self.monitor.metrics.records("skipped", r.skipped);
            self.monitor.metrics.records("malformed", r.malformed);
            accepted += r.accepted;
        }
        Ok(Response::new(pb::LogPredictionsResponse { accepted }))
    }

    async fn record_feedback(
        &self,
        req: Request<pb::RecordFeedbackRequest>,
    ) -> Result<Response<pb::RecordFeedbackResponse>, Status> {
        let r = req.into_inner();
        if r.feedback.is_empty() {
            return Err(Status::invalid_argument(
                "feedback is empty: expected at least one {request_id, label or value}",
            ));
        }
        self.rows_within_limit(r.feedback.len(), "RecordFeedback call", "labels")?;
        if let Some(i) = r.feedback.iter().position(|f| f.request_id.is_empty()) {
            return Err(Status::invalid_argument(format!(
                "feedback[{i}].request_id is empty: expected the request id the server returned"
            )));
        }
        let o = self.monitor.feedback(&r.feedback).await;
        let m = &self.monitor.metrics;
        m.feedback("matched", o.matched);
        m.feedback("unknown", o.unknown);
        m.feedback("expired", o.expired);
        m.feedback("invalid", o.invalid);
        Ok(Response::new(pb::RecordFeedbackResponse {
            matched: o.matched,
            unknown: o.unknown,
            expired: o.expired,
            invalid: o.invalid,
        }))
    }

    async fn get_drift(
        &self,
        req: Request<pb::GetDriftRequest>,
    ) -> Result<Response<pb::DriftReport>, Status> {
        let r = req.into_inner();
        let mut report = self
            .monitor
            .report(&r.model, r.version, WindowChoice::Current)
            .await
            .map_err(to_status)?;
        Ok(Response::new(drift_report(
            &r.model,
            r.version,
            &mut report,
        )))
    }

    async fn get_report(
        &self,
        req: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::Report>, Status> {
        let r = req.into_inner();
        let choice = window_choice(r.window)?;
        let mut rep = self
            .monitor
            .report(&r.model, r.version, choice)
            .await
            .map_err(to_status)?;
        let drift = drift_report(&r.model, r.version, &mut rep);
        let mut signals: Vec<pb::Signal> = self
            .monitor
            .signals(&r.model, 0)
            .into_iter()
            .filter(|s| s.version == r.version || s.target_version == r.version)
            .collect();
        signals.drain(..signals.len().saturating_sub(20));

        let mut window = summary(&rep.window, &rep.training, rep.dropped);
        if rep.open {
            window.end = None;
        }
        Ok(Response::new(pb::Report {
            model: r.model,
            version: r.version,
            window: match choice {
                WindowChoice::Current => pb::WindowKind::Current,
                WindowChoice::Last => pb::WindowKind::Last,
                WindowChoice::Long => pb::WindowKind::Long,
            } as i32,
            drift: Some(drift),
            performance: Some(pb::Performance {
                labeled: rep.labeled,
                realized: map(&rep.realized),
                estimated: map(&rep.estimated),
                training: map(&rep.training),
                estimated_reference: map(&rep.estimated_reference),
            }),
            health: Some(health(&rep.health, rep.dropped)),
            summary: Some(window),
            history: rep
                .history
                .iter()
                .map(|c| summary(c, &rep.training, rep.dropped))
                .collect(),
            signals,
            feedback_unknown: rep.feedback_unknown,
            feedback_expired: rep.feedback_expired,
        }))
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let p = req.into_inner().policy.ok_or_else(|| {
            Status::invalid_argument("policy is missing: expected a Policy with its model")
        })?;
        let model = p.model.clone();
        let effective = self.monitor.set_policy(p).map_err(to_status)?;
        Ok(Response::new(effective.to_proto(&model)))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let model = req.into_inner().model;
        let p = self.monitor.get_policy(&model).map_err(to_status)?;
        Ok(Response::new(p.to_proto(&model)))
    }

    async fn list_signals(
        &self,
        req: Request<pb::ListSignalsRequest>,
    ) -> Result<Response<pb::ListSignalsResponse>, Status> {
        let r = req.into_inner();
        let mut signals = self.monitor.signals(&r.model, 0);
        if r.limit > 0 && signals.len() > r.limit as usize {
            signals.drain(..signals.len() - r.limit as usize);
        }
        Ok(Response::new(pb::ListSignalsResponse { signals }))
    }

    type WatchSignalsStream = SignalStream;

    async fn watch_signals(
        &self,
        req: Request<pb::WatchSignalsRequest>,
    ) -> Result<Response<Self::WatchSignalsStream>, Status> {
        let r = req.into_inner();
        // Subscribe first, then replay: nothing falls between the two.
        let mut live = self.monitor.signals.subscribe();
        let replay = match r.after_id {
            Some(after) => self.monitor.signals(&r.model, after),
            None => vec![],
        };
        let model = r.model;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut stopping = self.monitor.stopping.subscribe();
        tokio::spawn(async move {
            let mut last = r.after_id.unwrap_or(0);
            for s in replay {
                last = s.id;
                if tx.send(Ok(s)).await.is_err() {
                    return;
                }
            }
            loop {
                let s = tokio::select! {
                    s = live.recv() => s,
                    _ = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                };

                match s {
                    Ok(s) if s.id > last && (model.is_empty() || s.model == model) => {
                        last = s.id;
                        if tx.send(Ok(s)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "the watcher fell behind; resume with after_id = {last}"
                            ))))
                            .await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }
}
