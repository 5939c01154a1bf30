//! The tonic adapter for `evergreen.v1.Monitor`; `to_status` maps errors.

use std::sync::Arc;

use evergreen_proto::v1::monitor_server::{Monitor as MonitorApi, MonitorServer};
use evergreen_proto::v1::{
    DriftReport, FeatureDrift, GetDriftRequest, LogPredictionsResponse, PredictionLogBatch,
    RecordFeedbackRequest, RecordFeedbackResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::service::{FeatureLine, Monitor, MonitorError};

pub fn to_status(e: MonitorError) -> Status {
    match e {
        MonitorError::InvalidArgument(m) => Status::invalid_argument(m),
        MonitorError::NotFound(m) => Status::not_found(m),
        MonitorError::Unavailable(m) => Status::unavailable(m),
    }
}

fn line(l: FeatureLine) -> FeatureDrift {
    FeatureDrift {
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

pub struct MonitorGrpc {
    monitor: Arc<Monitor>,
}

impl MonitorGrpc {
    pub fn server(monitor: Arc<Monitor>) -> MonitorServer<Self> {
        MonitorServer::new(MonitorGrpc { monitor }).max_decoding_message_size(64 << 20)
    }
}

#[tonic::async_trait]
impl MonitorApi for MonitorGrpc {
    async fn log_predictions(
        &self,
        req: Request<Streaming<PredictionLogBatch>>,
    ) -> Result<Response<LogPredictionsResponse>, Status> {
        let mut stream = req.into_inner();
        let mut accepted = 0;
        while let Some(batch) = stream.message().await? {
            let r = self.monitor.ingest(&batch.records).await;
            accepted += r.accepted;
            if batch.dropped > 0 {
                tracing::debug!(
                    dropped = batch.dropped,
                    "the server dropped prediction-log records"
                );
            }
        }
        Ok(Response::new(LogPredictionsResponse { accepted }))
    }

    async fn record_feedback(
        &self,
        _req: Request<RecordFeedbackRequest>,
    ) -> Result<Response<RecordFeedbackResponse>, Status> {
        Err(Status::unimplemented(
            "RecordFeedback (delayed labels) is not implemented yet: it arrives with the rest of issue #5",
        ))
    }

    async fn get_drift(
        &self,
        req: Request<GetDriftRequest>,
    ) -> Result<Response<DriftReport>, Status> {
        let r = req.into_inner();
        let report = self
            .monitor
            .report(&r.model, r.version)
            .map_err(to_status)?;
        Ok(Response::new(DriftReport {
            model: r.model,
            version: r.version,
            features: report.features.into_iter().map(line).collect(),
            prediction: Some(line(report.prediction)),

            dataset_drift: report.dataset_drift,
            rows: report.rows,
            drifted_share: report.drifted_share,
        }))
    }
}
