//! `evergreen train`, `evergreen retrain` and `evergreen jobs`: talk to the
//! trainer, draw progress from its event stream, print the result.

use std::collections::HashMap;
use std::path::Path;

use crate::commands::Channel;
use evergreen_proto::metadata;
use evergreen_proto::v1::trainer_client::TrainerClient;
use evergreen_proto::v1::{
    train_event, CancelJobRequest, Gate, GetJobRequest, JobState, ListJobsRequest, RetrainRequest,
    SearchStrategy, TrainEvent, TrainJob, TrainRequest,
};
use serde_json::{json, Value};
use tonic::metadata::AsciiMetadataValue;
use tonic::{Request, Status, Streaming};

use evergreen_cli::progress::TrainProgress;

use crate::output::{self, emit, emit_json, Table};

pub struct TrainCtx {
    client: TrainerClient<Channel>,
    actor: AsciiMetadataValue,
    json: bool,
}

/// The options of `evergreen train` that shape the request.
pub struct TrainOptions {
    pub model: String,
    pub data: String,
    pub target: String,
    pub algorithm: String,
    pub params: Vec<(String, String)>,
    pub cv: u32,
    pub seed: u64,
    pub test_fraction: f64,
    pub features: Vec<String>,
    pub exclude: Vec<String>,
    pub categorical: Vec<String>,
    pub random_search: bool,
    pub n_iter: u32,
    pub metric: String,
    pub gate: Option<Gate>,
    pub reason: String,
    pub description: String,
    pub tags: Vec<(String, String)>,
}

/// An absolute path when the file exists here (the trainer's working
/// directory is not ours); otherwise as typed, for the trainer to resolve.
/// URIs (`s3://BUCKET/KEY`, `file://…`) pass through untouched.
pub fn dataset_uri(data: &str) -> String {
    if data.contains("://") {
        return data.to_string();
    }
    std::fs::canonicalize(Path::new(data))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| data.to_string())
}

fn state_name(s: i32) -> &'static str {
    JobState::try_from(s).map_or("?", |s| s.short_name())
}

pub fn job_json(j: &TrainJob) -> Value {
    let sorted = |m: &HashMap<String, f64>| {
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        Value::Object(v.into_iter().map(|(k, x)| (k.clone(), json!(x))).collect())
    };
    let mut params: Vec<_> = j.params.iter().collect();
    params.sort();
    json!({
        "job": j.id,
        "state": state_name(j.state),
        "model": j.model,
        "version": j.version,
        "artifact_sha256": j.artifact_sha256,
        "metrics": sorted(&j.metrics),
        "params": Value::Object(params.into_iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        "gate": j.gate.as_ref().map(|g| json!({
            "alias": g.alias,
            "metric": g.metric,
            "champion_version": g.champion_version,
            "champion_score": if g.champion_score.is_finite() { json!(g.champion_score) } else { Value::Null },
            "challenger_score": g.challenger_score,
            "min_improvement": g.min_improvement,
            "promoted": g.promoted,
            "reason": g.reason,
        })),
        "error": if j.error.is_empty() { Value::Null } else { json!(j.error) },
        "created_at": output::rfc3339(j.created_at.as_ref()),
        "finished_at": output::rfc3339(j.finished_at.as_ref()),
    })
}

fn print_job(j: &TrainJob) {
    let mut fields = vec![
        ("job", j.id.clone()),
        ("state", state_name(j.state).to_string()),
        ("model", j.model.clone()),
    ];
    if j.version > 0 {
        fields.push(("version", format!("{}/{}", j.model, j.version)));
        fields.push(("artifact", j.artifact_sha256.clone()));
    }
    if let Some(r) = &j.request {
        fields.push(("algorithm", r.algorithm.clone()));
        fields.push(("data", r.dataset_uri.clone()));
    }
    if !j.params.is_empty() {
        let mut p: Vec<_> = j.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        p.sort();
        fields.push(("params", p.join(" ")));
    }
    if let Some(p) = &j.progress {
        if j.state == JobState::Running as i32 || j.state == JobState::Queued as i32 {
            fields.push(("progress", format!("{:.0}% {}", p.percent, p.message)));
        }
    }
    if !j.error.is_empty() {
        fields.push(("error", format!("{}: {}", j.error_code, j.error)));
    }
    if let Some(g) = &j.gate {
        fields.push(("gate", g.reason.clone()));
    }
    output::print_fields(&fields);
    if !j.metrics.is_empty() {
        let mut t = Table::new(&["METRIC", "VALUE"]);
        let mut m: Vec<_> = j.metrics.iter().collect();
        m.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in m {
            t.row(vec![k.clone(), format!("{v:.4}")]);
        }
        emit("");
        t.print();
    }
}

impl TrainCtx {
    pub async fn connect(url: &str, actor: AsciiMetadataValue, json: bool) -> anyhow::Result<Self> {
        let channel = crate::commands::connect(url, "trainer").await?;
        Ok(TrainCtx {
            client: TrainerClient::new(channel),
            actor,
            json,
        })
    }

    fn req<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert(metadata::ACTOR, self.actor.clone());
        r
    }

    fn show_job(&self, j: &TrainJob) {
        if self.json {
            emit_json(&job_json(j));
        } else {
            print_job(j);
        }
    }

    /// Draws the stream's progress and returns the finished job.
    async fn follow(&self, mut stream: Streaming<TrainEvent>) -> anyhow::Result<TrainJob> {
        let mut bar = TrainProgress::new(true);
        loop {
            let msg = match stream.message().await {
                Ok(m) => m,
                Err(s) => {
                    bar.finish();
                    return Err(s.into());
                }
            };
            match msg.and_then(|m| m.kind) {
                Some(train_event::Kind::Progress(p)) => {
                    if let Some(line) = bar.update(&p) {
                        eprintln!("{line}");
                    }
                }
                Some(train_event::Kind::Done(job)) => {
                    bar.finish();
                    return Ok(job);
                }
                None => {
                    bar.finish();
                    return Err(Status::unavailable(
                        "the trainer ended the stream without a result",
                    )
                    .into());
                }
            }
        }
    }

    pub async fn train(&mut self, o: TrainOptions, detach: bool) -> anyhow::Result<()> {
        let req = TrainRequest {
            model: o.model,
            dataset_uri: dataset_uri(&o.data),
            target: o.target,
            algorithm: o.algorithm,
            params: o.params.into_iter().collect(),
            reason: o.reason,
            features: o.features,
            exclude: o.exclude,
            categorical: o.categorical,
            cv_folds: o.cv,
            seed: o.seed,
            test_fraction: o.test_fraction,
            stratify: None,
            search: if o.random_search {
                SearchStrategy::Random
            } else {
                SearchStrategy::Grid
            } as i32,
            n_iter: o.n_iter,
            metric: o.metric,
            gate: o.gate,
            description: o.description,
            tags: o.tags.into_iter().collect(),
            impute: String::new(),
            profile_bins: 0,
        };
        if detach {
            let job = self.client.submit_job(self.req(req)).await?.into_inner();
            self.show_job(&job);
            return Ok(());
        }
        let stream = self.client.train(self.req(req)).await?.into_inner();
        let job = self.follow(stream).await?;
        self.show_job(&job);
        Ok(())
    }

    pub async fn retrain(
        &mut self,
        model: String,
        data: String,
        alias: String,
        reason: String,
        gate: Option<Gate>,
        detach: bool,
    ) -> anyhow::Result<()> {
        let req = RetrainRequest {
            model,
            reason,
            dataset_uri: dataset_uri(&data),
            alias,
            gate,
            // `rows` (labeled rows to add) is the monitor's; the CLI sends a file.
            ..Default::default()
        };
        let job = self.client.retrain(self.req(req)).await?.into_inner();
        if detach {
            self.show_job(&job);
            return Ok(());
        }
        let stream = self
            .client
            .watch_job(GetJobRequest { id: job.id })
            .await?
            .into_inner();
        let job = self.follow(stream).await?;
        self.show_job(&job);
        Ok(())
    }

    pub async fn get(&mut self, id: String) -> anyhow::Result<()> {
        let job = self
            .client
            .get_job(GetJobRequest { id })
            .await?
            .into_inner();
        self.show_job(&job);
        Ok(())
    }

    pub async fn watch(&mut self, id: String) -> anyhow::Result<()> {
        let stream = self
            .client
            .watch_job(GetJobRequest { id })
            .await?
            .into_inner();
        let job = self.follow(stream).await?;
        self.show_job(&job);
        Ok(())
    }

    pub async fn cancel(&mut self, id: String, reason: String) -> anyhow::Result<()> {
        let job = self
            .client
            .cancel_job(self.req(CancelJobRequest { id, reason }))
            .await?
            .into_inner();
        if self.json {
            emit_json(&job_json(&job));
        } else {
            emit(format!(
                "cancelling {} (was {})",
                job.id,
                state_name(job.state)
            ));
        }
        Ok(())
    }

    pub async fn list(&mut self, model: Option<String>, limit: u32) -> anyhow::Result<()> {
        let jobs = self
            .client
            .list_jobs(ListJobsRequest {
                model: model.unwrap_or_default(),
                limit,
            })
            .await?
            .into_inner()
            .jobs;
        if self.json {
            emit_json(&Value::Array(jobs.iter().map(job_json).collect()));
            return Ok(());
        }
        let mut t = Table::new(&[
            "JOB",
            "STATE",
            "MODEL",
            "VERSION",
            "ALGORITHM",
            "CREATED",
            "RESULT",
        ]);
        for j in &jobs {
            let result = if !j.error.is_empty() {
                j.error.clone()
            } else if let Some(a) = j.metrics.get("accuracy").or_else(|| j.metrics.get("r2")) {
                format!(
                    "{} {a:.4}",
                    if j.metrics.contains_key("accuracy") {
                        "accuracy"
                    } else {
                        "r2"
                    }
                )
            } else {
                j.progress
                    .as_ref()
                    .map(|p| format!("{:.0}% {}", p.percent, p.message))
                    .unwrap_or_default()
            };
            t.row(vec![
                j.id.clone(),
                state_name(j.state).to_string(),
                j.model.clone(),
                if j.version > 0 {
                    j.version.to_string()
                } else {
                    "-".into()
                },
                j.request
                    .as_ref()
                    .map(|r| r.algorithm.clone())
                    .unwrap_or_default(),
                output::rfc3339(j.created_at.as_ref()).unwrap_or_default(),
                result,
            ]);
        }
        t.print();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::dataset_uri;

    #[test]
    fn uris_pass_through_and_local_files_become_absolute() {
        for uri in [
            "s3://bucket/dir/x.csv",
            "s3://b/../odd key.csv",
            "file:///d.csv",
        ] {
            assert_eq!(dataset_uri(uri), uri);
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.csv");
        std::fs::write(&file, "a,b\n").unwrap();
        let abs = dataset_uri(file.to_str().unwrap());
        assert!(std::path::Path::new(&abs).is_absolute(), "{abs}");
        assert_eq!(dataset_uri("no/such.csv"), "no/such.csv");
    }
}
