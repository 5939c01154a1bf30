//! The tonic adapter for `evergreen.v1.Trainer`: converts messages and calls
//! `jobs::Jobs`. `to_status` is the one place domain errors become statuses.

use std::pin::Pin;
use std::sync::Arc;

use evergreen_proto::metadata;
use evergreen_proto::v1::trainer_server::{Trainer as TrainerApi, TrainerServer};
use evergreen_proto::v1::{
    self as pb, train_event, CancelJobRequest, GetJobRequest, ListJobsRequest, ListJobsResponse,
    RetrainRequest, SearchStrategy, TrainEvent, TrainJob, TrainRequest,
};
use futures_core::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::error::TrainError;
use crate::jobs::{self, JobRecord, JobState, Jobs};
use crate::labeled::{Cell, LabeledRow};
use crate::spec::{Gate, RawRequest};
use crate::train::{Progress, Stage};
use evergreen_proto::codes::from_name as code_from_name;

pub fn to_status(e: TrainError) -> Status {
    Status::new(e.code(), e.to_string())
}

fn actor(m: &MetadataMap) -> String {
    m.get(metadata::ACTOR)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or("anonymous")
        .to_string()
}

fn gate_from(g: Option<pb::Gate>) -> Option<(String, String, f64)> {
    g.filter(|g| !g.alias.is_empty())
        .map(|g| (g.alias, g.metric, g.min_improvement))
}

fn raw_from(r: TrainRequest) -> RawRequest {
    RawRequest {
        model: r.model,
        dataset_uri: r.dataset_uri,
        target: r.target,
        algorithm: r.algorithm,
        params: r.params.into_iter().collect(),
        features: r.features,
        exclude: r.exclude,
        categorical: r.categorical,
        cv_folds: r.cv_folds,
        seed: r.seed,
        test_fraction: r.test_fraction,
        stratify: r.stratify,
        random_search: r.search == SearchStrategy::Random as i32,
        n_iter: r.n_iter,
        metric: r.metric,
        gate: gate_from(r.gate),
        impute: r.impute,
        profile_bins: r.profile_bins,
        reason: r.reason,
        description: r.description,
        tags: r.tags.into_iter().collect(),
    }
}

fn request_to_proto(r: &RawRequest) -> TrainRequest {
    TrainRequest {
        model: r.model.clone(),
        dataset_uri: r.dataset_uri.clone(),
        target: r.target.clone(),
        algorithm: r.algorithm.clone(),
        params: r.params.clone().into_iter().collect(),
        reason: r.reason.clone(),
        features: r.features.clone(),
        exclude: r.exclude.clone(),
        categorical: r.categorical.clone(),
        cv_folds: r.cv_folds,
        seed: r.seed,
        test_fraction: r.test_fraction,
        stratify: r.stratify,
        search: if r.random_search {
            SearchStrategy::Random
        } else {
            SearchStrategy::Grid
        } as i32,
        n_iter: r.n_iter,
        metric: r.metric.clone(),
        gate: r.gate.as_ref().map(|(alias, metric, m)| pb::Gate {
            alias: alias.clone(),
            metric: metric.clone(),
            min_improvement: *m,
        }),
        description: r.description.clone(),
        tags: r.tags.clone().into_iter().collect(),
        impute: r.impute.clone(),
        profile_bins: r.profile_bins,
    }
}

fn cell(v: pb::Value) -> Cell {
    match v.kind {
        None => Cell::Missing,
        Some(pb::value::Kind::Number(x)) => Cell::Number(x),
        Some(pb::value::Kind::Category(s)) => Cell::Category(s),
    }
}

fn labeled_from(r: pb::LabeledRow) -> LabeledRow {
    let features = r.features.unwrap_or_default();
    let mut named: Vec<(String, Cell)> = features
        .named
        .into_iter()
        .map(|(k, v)| (k, cell(v)))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    LabeledRow {
        values: features.values.into_iter().map(cell).collect(),
        named,
        label: r.label,
        value: r.value,
    }
}

fn stage(s: Stage) -> pb::Stage {
    match s {
        Stage::Queued => pb::Stage::Queued,
        Stage::Loading => pb::Stage::Loading,
        Stage::Searching => pb::Stage::Searching,
        Stage::Fitting => pb::Stage::Fitting,
        Stage::Evaluating => pb::Stage::Evaluating,
        Stage::Comparing => pb::Stage::Comparing,
        Stage::Registering => pb::Stage::Registering,
        Stage::Done => pb::Stage::Done,
    }
}

fn progress(p: &Progress, job: &JobRecord) -> pb::Progress {
    let elapsed_ms = match (job.started, job.finished_ms) {
        (_, f) if f > 0 => (f - job.created_ms).max(0) as u64,
        (Some(s), _) => s.elapsed().as_millis() as u64,
        _ => 0,
    };
    pb::Progress {
        stage: stage(p.stage) as i32,
        message: p.message.clone(),
        candidate: p.candidate,
        candidates: p.candidates,
        fold: p.fold,
        folds: p.folds,
        percent: p.percent,
        elapsed_ms,
        job_id: job.id.clone(),
    }
}

fn ts(ms: i64) -> Option<pb_types::Timestamp> {
    (ms > 0).then(|| pb_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

mod pb_types {
    pub use evergreen_proto::Timestamp;
}

pub fn job_to_proto(j: &JobRecord) -> TrainJob {
    TrainJob {
        id: j.id.clone(),
        state: match j.state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        } as i32,
        model: j.model.clone(),
        version: j.version,
        metrics: j.metrics.clone().into_iter().collect(),
        error: j.error.clone(),
        error_code: j.error_code.clone(),
        request: Some(request_to_proto(&j.request)),
        progress: Some(progress(&j.progress, j)),
        artifact_sha256: j.artifact_sha256.clone(),
        gate: j.gate.as_ref().map(|g| pb::GateResult {
            alias: g.alias.clone(),
            metric: g.metric.clone(),
            champion_version: g.champion_version,
            champion_score: g.champion_score.unwrap_or(f64::NAN),
            challenger_score: g.challenger_score,
            min_improvement: g.min_improvement,
            promoted: g.promote,
            reason: g.reason.clone(),
        }),
        params: j.params.clone().into_iter().collect(),
        created_at: ts(j.created_ms),
        finished_at: ts(j.finished_ms),
        actor: j.actor.clone(),
    }
}

pub struct TrainerGrpc {
    jobs: Arc<Jobs>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<TrainEvent, Status>> + Send>>;

impl TrainerGrpc {
    /// `max_message_bytes`: `trainer.limits.max_message_bytes` (a Retrain
    /// carries labeled rows, up to a million: 256 MiB by default).
    pub fn server(jobs: Arc<Jobs>, max_message_bytes: usize) -> TrainerServer<Self> {
        TrainerServer::new(TrainerGrpc { jobs }).max_decoding_message_size(max_message_bytes)
    }

    /// Streams a job's progress, then its end: the finished job, or the
    /// failure as a status. With `cancel_on_drop`, a caller that goes away
    /// cancels the job.
    fn follow(&self, id: &str, cancel_on_drop: bool) -> Result<EventStream, Status> {
        let mut rx = self.jobs.subscribe(id).map_err(to_status)?;
        let (tx, out) = mpsc::channel(16);
        let jobs = self.jobs.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let mut last = None;
            // Stages entered and reported so far (a stage shorter than the
            // watcher's turn is still reported, from the job's history).
            let mut reported = 0;
            'watch: loop {
                let job = rx.borrow_and_update().clone();
                for entered in job.stages.iter().skip(reported) {
                    reported += 1;
                    let p = progress(entered, &job);
                    // `Done` is the final event itself.
                    if entered.stage == Stage::Done
                        || last.as_ref().map(|(s, _)| *s) == Some(p.stage)
                    {
                        continue;
                    }
                    last = Some((p.stage, p.message.clone()));
                    let ev = TrainEvent {
                        kind: Some(train_event::Kind::Progress(p)),
                    };
                    if tx.send(Ok(ev)).await.is_err() {
                        break 'watch;
                    }
                }
                if job.state.is_final() {
                    let end = match job.state {
                        JobState::Succeeded => Ok(TrainEvent {
                            kind: Some(train_event::Kind::Done(job_to_proto(&job))),
                        }),
                        _ => Err(Status::new(
                            code_from_name(&job.error_code),
                            format!("{}: {}", job.id, job.error),
                        )),
                    };
                    let _ = tx.send(end).await;
                    return;
                }
                let p = progress(&job.progress, &job);
                if last.as_ref() != Some(&(p.stage, p.message.clone())) {
                    last = Some((p.stage, p.message.clone()));
                    let ev = TrainEvent {
                        kind: Some(train_event::Kind::Progress(p)),
                    };
                    if tx.send(Ok(ev)).await.is_err() {
                        break;
                    }
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() {
                        // The job ended and its sender is gone: read the stored record.
                        match jobs.get(&id) {
                            Ok(j) => rx = tokio::sync::watch::channel(j).1,
                            Err(_) => return,
                        }
                    },
                    _ = tx.closed() => break,
                }
            }
            if cancel_on_drop {
                let _ = jobs.cancel(&id, "the Train call was cancelled by the client");
            }
        });
        Ok(Box::pin(ReceiverStream::new(out)))
    }
}

#[tonic::async_trait]
impl TrainerApi for TrainerGrpc {
    type TrainStream = EventStream;
    type WatchJobStream = EventStream;

    async fn train(
        &self,
        req: Request<TrainRequest>,
    ) -> Result<Response<Self::TrainStream>, Status> {
        let actor = actor(req.metadata());
        let job = self
            .jobs
            .submit(raw_from(req.into_inner()), &actor)
            .await
            .map_err(to_status)?;
        self.follow(&job.id, true).map(Response::new)
    }

    async fn submit_job(&self, req: Request<TrainRequest>) -> Result<Response<TrainJob>, Status> {
        let actor = actor(req.metadata());
        let job = self
            .jobs
            .submit(raw_from(req.into_inner()), &actor)
            .await
            .map_err(to_status)?;
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<TrainJob>, Status> {
        let job = self.jobs.get(&req.into_inner().id).map_err(to_status)?;
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn list_jobs(
        &self,
        req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let r = req.into_inner();
        let jobs = self.jobs.list(&r.model, r.limit as usize);
        Ok(Response::new(ListJobsResponse {
            jobs: jobs.iter().map(job_to_proto).collect(),
        }))
    }

    async fn cancel_job(
        &self,
        req: Request<CancelJobRequest>,
    ) -> Result<Response<TrainJob>, Status> {
        let r = req.into_inner();
        let job = self.jobs.cancel(&r.id, &r.reason).map_err(to_status)?;
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn watch_job(
        &self,
        req: Request<GetJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        self.follow(&req.into_inner().id, false).map(Response::new)
    }

    async fn retrain(&self, req: Request<RetrainRequest>) -> Result<Response<TrainJob>, Status> {
        let actor = actor(req.metadata());
        let r = req.into_inner();
        let gate = gate_from(r.gate).map(|(alias, metric, min_improvement)| Gate {
            alias,
            metric,
            min_improvement,
        });
        let request = jobs::RetrainRequest {
            model: r.model,
            alias: r.alias,
            dataset_uri: r.dataset_uri,
            reason: r.reason,
            gate,
            rows: r.rows.into_iter().map(labeled_from).collect(),
        };
        let job = self
            .jobs
            .retrain(request, &actor)
            .await
            .map_err(to_status)?;
        Ok(Response::new(job_to_proto(&job)))
    }
}
