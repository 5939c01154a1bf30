//! The demo: a model's whole life against a running stack, narrated in
//! plain words, every step checked.
//!
//! Train (a progress bar from the trainer's stream) → the registry's record
//! → promote → serve → a gated challenger → the same artifact byte for byte
//! → hot swap and rollback → canary and shadow → a monitoring policy →
//! healthy labeled traffic → drifted labeled traffic → the monitor's RETRAIN
//! signal → the trainer's retrain → the gated promotion → the old version
//! deprecated, phased out (the registry's phase-out), retired, archived and
//! restored byte for byte.
//!
//! [`run`] calls the gRPC APIs directly (no shelling out) and is shared by
//! `evergreen up --demo`, `evergreen demo` and the end-to-end suite. A step
//! that does not do what it should ends the demo with a [`DemoError`]
//! naming the step.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use evergreen_proto::metadata;
use evergreen_proto::v1::monitor_client::MonitorClient;
use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::trainer_client::TrainerClient;
use evergreen_proto::v1::{
    train_event, value, version_ref::Selector, ArchiveRequest, DownloadArtifactRequest, EventKind,
    Feedback, Gate, GetJobRequest, GetModelRequest, GetPhaseoutRequest, GetReportRequest,
    GetVersionRequest, HistoryRequest, JobState, ListServedRequest, ListSignalsRequest,
    ModelVersion, PhaseoutState, Policy, PredictRequest, PredictResponse, RecordFeedbackRequest,
    RestoreRequest, RollbackAliasRequest, Row, SetAliasRequest, SetPolicyRequest,
    SetTrafficPolicyRequest, SetVersionStatusRequest, Signal, SignalKind, StartPhaseoutRequest,
    TrafficPolicy, TrainEvent, TrainJob, TrainRequest, Value, VersionRef, VersionStatus,
    VersionWeight, WindowKind,
};
use evergreen_runtime::client::Channel;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Status, Streaming};

use crate::progress::TrainProgress;

/// `data/breast_cancer.csv`, built into the binary so that the demo runs
/// from any directory.
pub const BREAST_CANCER_CSV: &[u8] = include_bytes!("../../../data/breast_cancer.csv");

/// Writes the built-in dataset to `dir/breast_cancer.csv` (the trainer
/// reads datasets from files) and returns its path.
pub fn write_dataset(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("breast_cancer.csv");
    std::fs::write(&path, BREAST_CANCER_CSV)?;
    std::path::absolute(path)
}

/// Rows per window of demo traffic: the stack's monitor must close its
/// tumbling windows at this many rows (`monitor.window_rows`).
pub const WINDOW_ROWS: usize = 50;

/// How long any one wait lasts before the step fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// Channels to the four daemons (with the caller's TLS settings and token:
/// see `evergreen_runtime::client`).
#[derive(Clone)]
pub struct Endpoints {
    pub registry: Channel,
    pub trainer: Channel,
    pub server: Channel,
    pub monitor: Channel,
}

pub struct Options {
    /// A CSV shaped like breast_cancer.csv: numeric features and a binary
    /// `target` column; at least 150 rows. A path the trainer can read.
    pub data: PathBuf,
    /// The model's name; `None`: the first of cancer, cancer-2, cancer-3...
    /// the registry does not have yet (so the demo can run again on the
    /// same stack).
    pub model: Option<String>,
    /// Draw training progress bars on stderr (when it is a terminal).
    pub progress: bool,
}

/// What the demo did, for the caller to check or point at.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub model: String,
    /// The first version, promoted, then hit by drift, then retired,
    /// archived and restored.
    pub old: u64,
    /// The version the monitor's retrain registered and the gate promoted.
    pub retrained: u64,
    /// Where the old version was archived.
    pub archive_uri: String,
    /// One row of the data (features only), for a Predict call.
    pub sample_row: Vec<f64>,
    pub steps: usize,
    pub elapsed: Duration,
}

/// A step that did not do what it should.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoError {
    pub step: &'static str,
    pub message: String,
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "demo: {}: {}", self.step, self.message)
    }
}

impl std::error::Error for DemoError {}

type Step<T> = Result<T, String>;

/// `what: CODE: message` for a failed call.
fn call(what: &str) -> impl FnOnce(Status) -> String + '_ {
    move |s| {
        format!(
            "{what}: {}: {}",
            evergreen_proto::codes::name(s.code()),
            s.message()
        )
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn metric(m: &HashMap<String, f64>, k: &str) -> String {
    m.get(k).map_or("-".into(), |v| format!("{v:.3}"))
}

fn to_row(x: &[f64]) -> Row {
    Row {
        values: x
            .iter()
            .map(|v| Value {
                kind: Some(value::Kind::Number(*v)),
            })
            .collect(),
        named: Default::default(),
    }
}

fn numbered(model: &str, version: u64) -> Option<VersionRef> {
    Some(VersionRef {
        model: model.to_string(),
        selector: Some(Selector::Version(version)),
    })
}

/// The dataset: feature rows and labels.
struct Data {
    rows: Vec<(Vec<f64>, String)>,
}

impl Data {
    fn read(path: &Path) -> Step<Data> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let target = header
            .iter()
            .position(|h| *h == "target")
            .ok_or_else(|| format!("{} has no `target` column", path.display()))?;
        let mut rows = Vec::new();
        for (i, line) in lines.enumerate() {
            let cells: Vec<&str> = line.split(',').collect();
            let mut x = Vec::with_capacity(cells.len().saturating_sub(1));
            for (j, c) in cells.iter().enumerate() {
                if j != target {
                    x.push(c.trim().parse::<f64>().map_err(|_| {
                        format!(
                            "{} line {}: {c:?} is not a number (the demo needs numeric features)",
                            path.display(),
                            i + 2
                        )
                    })?);
                }
            }
            rows.push((x, cells.get(target).unwrap_or(&"").trim().to_string()));
        }
        if rows.len() < 3 * WINDOW_ROWS {
            return Err(format!(
                "{} has {} rows; the demo needs at least {}",
                path.display(),
                rows.len(),
                3 * WINDOW_ROWS
            ));
        }
        Ok(Data { rows })
    }

    /// Window `k` of demo traffic: `ref` windows take every third row from
    /// the first, like the training data; `drift` windows every third row
    /// from the second, every feature ×1.5 (cycling through the file).
    fn window(&self, drift: bool, k: usize) -> Vec<(Vec<f64>, String)> {
        let (off, scale) = if drift { (1, 1.5) } else { (0, 1.0) };
        let n = self.rows.len();
        (0..WINDOW_ROWS)
            .map(|j| {
                let (x, y) = &self.rows[(off + 3 * (k * WINDOW_ROWS + j)) % n];
                (x.iter().map(|v| v * scale).collect(), y.clone())
            })
            .collect()
    }
}

struct Demo<'a> {
    registry: RegistryClient<Channel>,
    trainer: TrainerClient<Channel>,
    server: PredictorClient<Channel>,
    monitor: MonitorClient<Channel>,
    out: &'a mut (dyn Write + Send),
    progress: bool,
    model: String,
    data_path: PathBuf,
    data: Data,
    chapter: usize,
    /// Rows of each version the monitor had counted after our last send.
    logged: HashMap<u64, u64>,
}

/// Runs `f` as step `name`: its error becomes a [`DemoError`].
async fn step<T>(name: &'static str, f: impl Future<Output = Step<T>>) -> Result<T, DemoError> {
    f.await.map_err(|message| DemoError {
        step: name,
        message,
    })
}

/// Plays the whole lifecycle against `ep`, narrating to `out`. Ok when every
/// step did what it should.
pub async fn run(
    ep: &Endpoints,
    opts: &Options,
    out: &mut (dyn Write + Send),
) -> Result<Outcome, DemoError> {
    let started = Instant::now();
    let data = step("dataset", async { Data::read(&opts.data) }).await?;
    let mut d = Demo {
        registry: RegistryClient::new(ep.registry.clone()),
        trainer: TrainerClient::new(ep.trainer.clone()),
        server: PredictorClient::new(ep.server.clone()),
        monitor: MonitorClient::new(ep.monitor.clone()),
        out,
        progress: opts.progress,
        model: String::new(),
        data_path: opts.data.clone(),
        data,
        chapter: 0,
        logged: HashMap::new(),
    };
    d.model = step("model name", d.pick_name(opts.model.clone())).await?;

    let first = step("train", d.train_first()).await?;
    step("register", d.register(&first)).await?;
    let v1 = first.version;
    step("promote", d.promote(v1)).await?;
    step("serve", d.serve(v1)).await?;
    let (challenger, production) = step("challenger", d.challenger()).await?;
    let again = step("reproduce", d.reproduce(&challenger)).await?;
    step("hot swap", d.hot_swap(production, again)).await?;
    step("canary", d.canary(production, again, challenger.version)).await?;
    step("policy", d.policy()).await?;
    step("healthy traffic", d.healthy(production)).await?;
    let signal = step("drift", d.drift(production)).await?;
    let job = step("signal", d.signal(&signal)).await?;
    let job = step("retrain", d.retrain(job)).await?;
    let new = step("gated promotion", d.gated_promotion(production, &job)).await?;
    let before = step("deprecate", d.deprecate(production, new)).await?;
    step("phase-out", d.phase_out(production, new)).await?;
    step("retire", d.retired(production, new)).await?;
    let archive_uri = step("archive", d.archive(production)).await?;
    step("restore", d.restore(production, &before)).await?;
    Ok(Outcome {
        model: d.model.clone(),
        old: production,
        retrained: new,
        archive_uri,
        sample_row: d.data.rows[0].0.clone(),
        steps: d.chapter,
        elapsed: started.elapsed(),
    })
}

/// grpcurl commands to explore the stack the demo left behind, one per
/// line with a comment (`#`) before each.
pub fn explore(o: &Outcome, registry: &str, trainer: &str, server: &str, monitor: &str) -> String {
    let host = |url: &str| url.trim_start_matches("http://").to_string();
    let (r, t, s, m) = (host(registry), host(trainer), host(server), host(monitor));
    let values = o
        .sample_row
        .iter()
        .map(|v| format!("{{\"number\":{v}}}"))
        .collect::<Vec<_>>()
        .join(",");
    let model = &o.model;
    let new = o.retrained;
    [
        format!("# every service (reflection), then the model's versions\ngrpcurl -plaintext {r} list\ngrpcurl -plaintext -d '{{\"model\":\"{model}\"}}' {r} evergreen.v1.Registry/ListVersions"),
        format!("# score a row with production (cancer/{new} now)\ngrpcurl -plaintext -d '{{\"model\":\"{model}\",\"rows\":[{{\"values\":[{values}]}}]}}' {s} evergreen.v1.Predictor/Predict"),
        format!("# the drift report of the current window, and the whole report since {model}/{new} went live\ngrpcurl -plaintext -d '{{\"model\":\"{model}\",\"version\":{new}}}' {m} evergreen.v1.Monitor/GetDrift\ngrpcurl -plaintext -d '{{\"model\":\"{model}\",\"version\":{new},\"window\":\"WINDOW_KIND_LONG\"}}' {m} evergreen.v1.Monitor/GetReport"),
        format!("# every registry change from the start, then live (Ctrl-C to stop); signals likewise\ngrpcurl -plaintext -d '{{\"from_revision\":0}}' {r} evergreen.v1.Registry/Watch\ngrpcurl -plaintext -d '{{\"model\":\"{model}\",\"after_id\":0}}' {m} evergreen.v1.Monitor/WatchSignals"),
        format!("# training jobs, and what each daemon holds\ngrpcurl -plaintext -d '{{\"model\":\"{model}\"}}' {t} evergreen.v1.Trainer/ListJobs\ngrpcurl -plaintext {t} evergreen.v1.Status/GetStatus\nevergreen status"),
    ]
    .join("\n")
}

impl Demo<'_> {
    fn say(&mut self, line: impl fmt::Display) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn chapter(&mut self, title: impl fmt::Display) {
        self.chapter += 1;
        let n = self.chapter;
        self.say(format!("\n==> {n}. {title}"));
    }

    /// A request carrying the demo's actor (the audit trail names it).
    fn req<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut()
            .insert(metadata::ACTOR, "evergreen-demo".parse().expect("ascii"));
        r
    }

    async fn pick_name(&mut self, given: Option<String>) -> Step<String> {
        if let Some(name) = given {
            return Ok(name);
        }
        for i in 1..100 {
            let name = if i == 1 {
                "cancer".to_string()
            } else {
                format!("cancer-{i}")
            };
            match self
                .registry
                .get_model(GetModelRequest { name: name.clone() })
                .await
            {
                Err(s) if s.code() == Code::NotFound => {
                    if i > 1 {
                        self.say(format!(
                            "(earlier runs left models cancer..cancer-{}: this run is {name})",
                            i - 1
                        ));
                    }
                    return Ok(name);
                }
                Ok(_) => continue,
                Err(s) => return Err(call("the registry")(s)),
            }
        }
        Err("cancer, cancer-2 ... cancer-99 all exist: pass a model name".into())
    }

    /// Follows a job's event stream with a progress bar; the finished job.
    async fn follow(&mut self, mut stream: Streaming<TrainEvent>) -> Step<TrainJob> {
        let mut bar = TrainProgress::new(self.progress);
        loop {
            let msg = stream
                .message()
                .await
                .map_err(call("the training stream"))?;
            match msg.and_then(|m| m.kind) {
                Some(train_event::Kind::Progress(p)) => {
                    if let Some(line) = bar.update(&p) {
                        self.say(format!("  {line}"));
                    }
                }
                Some(train_event::Kind::Done(job)) => {
                    bar.finish();
                    if job.state() != JobState::Succeeded {
                        return Err(format!(
                            "job {} ended {}: {} {}",
                            job.id,
                            job.state().short_name(),
                            job.error_code,
                            job.error
                        ));
                    }
                    return Ok(job);
                }
                None => return Err("the trainer ended the stream without a result".into()),
            }
        }
    }

    async fn train(&mut self, req: TrainRequest) -> Step<TrainJob> {
        let stream = self
            .trainer
            .train(self.req(req))
            .await
            .map_err(call("Train"))?
            .into_inner();
        self.follow(stream).await
    }

    fn train_request(&self, algorithm: &str, params: &[(&str, &str)]) -> TrainRequest {
        TrainRequest {
            model: self.model.clone(),
            dataset_uri: self.data_path.display().to_string(),
            target: "target".into(),
            algorithm: algorithm.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            seed: 42,
            ..Default::default()
        }
    }

    async fn version(&mut self, v: u64) -> Step<ModelVersion> {
        let req = GetVersionRequest {
            r#ref: numbered(&self.model, v),
        };
        Ok(self
            .registry
            .get_version(req)
            .await
            .map_err(call("GetVersion"))?
            .into_inner())
    }

    async fn production(&mut self) -> Step<Option<u64>> {
        let m = self
            .registry
            .get_model(GetModelRequest {
                name: self.model.clone(),
            })
            .await
            .map_err(call("GetModel"))?
            .into_inner();
        Ok(m.aliases.get("production").copied())
    }

    async fn predict(
        &mut self,
        model: String,
        rows: &[Vec<f64>],
        request_id: String,
    ) -> Result<PredictResponse, Status> {
        let req = PredictRequest {
            model,
            rows: rows.iter().map(|x| to_row(x)).collect(),
            request_id,
        };
        Ok(self.server.predict(req).await?.into_inner())
    }

    /// Waits until the server answers the model's default traffic with
    /// `version`; how long it took.
    async fn served_by(&mut self, version: u64) -> Step<Duration> {
        let t = Instant::now();
        let row = self.data.rows[0].0.clone();
        let mut last = String::new();
        while t.elapsed() < PATIENCE {
            match self
                .predict(
                    self.model.clone(),
                    std::slice::from_ref(&row),
                    String::new(),
                )
                .await
            {
                Ok(r) if r.version == version => return Ok(t.elapsed()),
                Ok(r) => last = format!("still served by {}/{}", self.model, r.version),
                Err(s) => last = call("Predict")(s),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "the server did not switch to {}/{version} within {} s ({last})",
            self.model,
            PATIENCE.as_secs()
        ))
    }

    /// Waits until the served policy is `want` (None = no weights).
    async fn served_policy(&mut self, want: Option<&TrafficPolicy>) -> Step<()> {
        let t = Instant::now();
        while t.elapsed() < PATIENCE {
            let served = self
                .server
                .list_served(ListServedRequest {})
                .await
                .map_err(call("ListServed"))?
                .into_inner();
            let policy = served
                .models
                .iter()
                .find(|m| m.model == self.model)
                .and_then(|m| m.policy.clone())
                .filter(|p| !p.weights.is_empty() || p.shadow_version != 0);
            if policy.as_ref() == want {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "the server did not apply the traffic policy {want:?} within {} s",
            PATIENCE.as_secs()
        ))
    }

    /// Rows of `version` the monitor has counted.
    async fn logged(&mut self, version: u64) -> Step<u64> {
        let req = GetReportRequest {
            model: self.model.clone(),
            version,
            window: WindowKind::Long as i32,
        };
        match self.monitor.get_report(req).await {
            Ok(r) => Ok(r.into_inner().drift.map_or(0, |d| d.rows)),
            Err(s) if s.code() == Code::NotFound => Ok(0),
            Err(s) => Err(call("GetReport")(s)),
        }
    }

    /// Rows of `version` the monitor has counted once earlier traffic (the
    /// probes that waited for a swap, the canary) has arrived: the server's
    /// log queue is empty and the count holds still for 100 ms.
    async fn settled(&mut self, version: u64) -> Step<u64> {
        let t = Instant::now();
        let mut last = self.logged(version).await?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let queued = self
                .server
                .list_served(ListServedRequest {})
                .await
                .map_err(call("ListServed"))?
                .into_inner()
                .log
                .map_or(0, |l| l.queued);
            let now = self.logged(version).await?;
            if queued == 0 && now == last {
                return Ok(now);
            }
            if t.elapsed() > PATIENCE {
                return Err(format!(
                    "the prediction log of {}/{version} did not settle ({queued} records queued)",
                    self.model
                ));
            }
            last = now;
        }
    }

    /// One window of labeled traffic: 50 rows in one request, then (once
    /// the monitor has logged them) their labels. The version that answered.
    async fn traffic(&mut self, drift: bool, k: usize) -> Step<u64> {
        let kind = if drift { "drift" } else { "ref" };
        let id = format!("{}-{kind}-{k}", self.model);
        let rows = self.data.window(drift, k);
        let x: Vec<Vec<f64>> = rows.iter().map(|r| r.0.clone()).collect();
        // Rows of the production version counted before this request (the
        // version that answers is production: the policy is cleared).
        let production = self.production().await?.unwrap_or(0);
        if !self.logged.contains_key(&production) {
            let n = self.settled(production).await?;
            self.logged.insert(production, n);
        }
        let r = self
            .predict(self.model.clone(), &x, id.clone())
            .await
            .map_err(call("Predict"))?;
        if r.predictions.len() != rows.len() || r.request_id != id {
            return Err(format!(
                "Predict {id}: {} predictions under request id {:?}, expected {} under {id:?}",
                r.predictions.len(),
                r.request_id,
                rows.len()
            ));
        }
        let right = r
            .predictions
            .iter()
            .zip(&rows)
            .filter(|(p, (_, y))| p.label == *y)
            .count();
        let version = r.version;
        let before = *self.logged.get(&version).ok_or_else(|| {
            format!("request {id} was answered by {version}, not by production ({production})")
        })?;
        let want = before + rows.len() as u64;
        let t = Instant::now();
        let mut now = self.logged(version).await?;
        while now < want {
            if t.elapsed() > PATIENCE {
                return Err(format!(
                    "the monitor logged {now} rows of {}/{version}, expected {want}: the server's prediction log did not arrive",
                    self.model
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            now = self.logged(version).await?;
        }
        self.logged.insert(version, now);
        let feedback: Vec<Feedback> = rows
            .iter()
            .enumerate()
            .map(|(i, (_, y))| Feedback {
                request_id: id.clone(),
                label: y.clone(),
                row: i as u32,
                ..Default::default()
            })
            .collect();
        let f = self
            .monitor
            .record_feedback(RecordFeedbackRequest { feedback })
            .await
            .map_err(call("RecordFeedback"))?
            .into_inner();
        if (f.matched, f.unknown, f.expired, f.invalid) != (rows.len() as u64, 0, 0, 0) {
            return Err(format!(
                "labels of {id}: matched {}, unknown {}, expired {}, invalid {}; expected all {} matched",
                f.matched,
                f.unknown,
                f.expired,
                f.invalid,
                rows.len()
            ));
        }
        self.say(format!(
            "  request {id}: {} rows served by {}/{version}, {right} right; {} labels sent later, all matched",
            rows.len(),
            self.model,
            f.matched
        ));
        Ok(version)
    }

    async fn signals(&mut self) -> Step<Vec<Signal>> {
        Ok(self
            .monitor
            .list_signals(ListSignalsRequest {
                model: self.model.clone(),
                limit: 0,
            })
            .await
            .map_err(call("ListSignals"))?
            .into_inner()
            .signals)
    }

    async fn download(&mut self, v: u64) -> Result<Vec<u8>, Status> {
        let req = DownloadArtifactRequest {
            r#ref: numbered(&self.model, v),
        };
        let mut stream = self.registry.download_artifact(req).await?.into_inner();
        let mut bytes = Vec::new();
        let mut announced = None;
        while let Some(chunk) = stream.message().await? {
            if chunk.artifact.is_some() {
                announced = chunk.artifact;
            }
            bytes.extend_from_slice(&chunk.data);
        }
        if let Some(a) = announced {
            if a.sha256 != sha256_hex(&bytes) || a.size_bytes != bytes.len() as u64 {
                return Err(Status::data_loss(format!(
                    "downloaded {} bytes with sha256 {}, announced {} bytes with sha256 {}",
                    bytes.len(),
                    sha256_hex(&bytes),
                    a.size_bytes,
                    a.sha256
                )));
            }
        }
        Ok(bytes)
    }

    // ------------------------------------------------------------ steps ---

    async fn train_first(&mut self) -> Step<TrainJob> {
        let file = self
            .data_path
            .file_name()
            .map_or("the data".into(), |f| f.to_string_lossy().into_owned());
        let n = self.data.rows.len();
        let features = self.data.rows[0].0.len();
        self.chapter(format!(
            "Train a model: a random forest on {file} ({n} rows, {features} features), seed 42"
        ));
        self.say(
            "The trainer splits the rows 70/30 (stratified, seeded), fits 100 trees on the 70%,",
        );
        self.say("scores the 30% it never saw, and streams its progress:");
        let job = self
            .train(self.train_request("random_forest", &[("n_trees", "100")]))
            .await?;
        let accuracy = job.metrics.get("accuracy").copied().unwrap_or(0.0);
        self.say(format!(
            "job {}: {}/{} — holdout accuracy {}, F1 {}, ROC AUC {}",
            job.id,
            self.model,
            job.version,
            metric(&job.metrics, "accuracy"),
            metric(&job.metrics, "f1_macro"),
            metric(&job.metrics, "roc_auc")
        ));
        if job.version == 0 {
            return Err(format!("job {} registered no version", job.id));
        }
        if accuracy < 0.85 {
            return Err(format!(
                "holdout accuracy {accuracy:.3}: a random forest should reach 0.85 on this data"
            ));
        }
        Ok(job)
    }

    async fn register(&mut self, job: &TrainJob) -> Step<()> {
        self.chapter(format!(
            "Register: the trainer's last step stored {}/{} in the registry",
            self.model, job.version
        ));
        let v = self.version(job.version).await?;
        let artifact = v.artifact.clone().unwrap_or_default();
        let lineage = v.lineage.clone().unwrap_or_default();
        let data_sha = sha256_hex(
            &std::fs::read(&self.data_path)
                .map_err(|e| format!("cannot read {}: {e}", self.data_path.display()))?,
        );
        self.say(format!(
            "artifact  sha256 {}…, {} bytes (content-addressed: the registry keeps it by its hash)",
            short(&artifact.sha256),
            artifact.size_bytes
        ));
        self.say(format!(
            "lineage   dataset sha256 {}…, job {}, by {}",
            short(&lineage.dataset_sha256),
            lineage.run_id,
            lineage.producer
        ));
        self.say(format!(
            "status    {}; metrics, parameters and the input schema ({} features) are on the record",
            v.status().short_name(),
            v.schema.as_ref().map_or(0, |s| s.features.len())
        ));
        if artifact.sha256 != job.artifact_sha256 {
            return Err(format!(
                "the registry holds artifact {} but the job trained {}",
                artifact.sha256, job.artifact_sha256
            ));
        }
        if lineage.dataset_sha256 != data_sha {
            return Err(format!(
                "the lineage names dataset sha256 {}, but {} has sha256 {data_sha}",
                lineage.dataset_sha256,
                self.data_path.display()
            ));
        }
        if lineage.run_id != job.id || v.status() != VersionStatus::Active {
            return Err(format!(
                "expected an ACTIVE version from job {}, got {} from job {:?}",
                job.id,
                v.status().short_name(),
                lineage.run_id
            ));
        }
        self.say(
            "the dataset's sha256 matches the file here: this version can be traced to its data",
        );
        Ok(())
    }

    async fn promote(&mut self, v: u64) -> Step<()> {
        self.chapter(format!(
            "Promote: point the `production` alias at {}/{v}",
            self.model
        ));
        self.say("A compare-and-set (expected: no production yet), so two people promoting at once cannot both win.");
        let a = self
            .registry
            .set_alias(self.req(SetAliasRequest {
                model: self.model.clone(),
                alias: "production".into(),
                version: v,
                expected_version: Some(0),
                reason: "first model".into(),
            }))
            .await
            .map_err(call("SetAlias"))?
            .into_inner();
        if a.version != v {
            return Err(format!("production points at {}, expected {v}", a.version));
        }
        let took = self.served_by(v).await?;
        self.say(format!(
            "production -> {v} (registry revision {}); the server followed the registry's Watch stream,",
            a.revision
        ));
        self.say(format!(
            "downloaded, verified and loaded it: serving {}/{v} after {} ms",
            self.model,
            took.as_millis()
        ));
        Ok(())
    }

    async fn serve(&mut self, v: u64) -> Step<()> {
        self.chapter("Serve traffic: score three rows of the CSV");
        let rows: Vec<(Vec<f64>, String)> = self.data.rows[..3].to_vec();
        let x: Vec<Vec<f64>> = rows.iter().map(|r| r.0.clone()).collect();
        let r = self
            .predict(self.model.clone(), &x, String::new())
            .await
            .map_err(call("Predict"))?;
        for (i, (p, (_, y))) in r.predictions.iter().zip(&rows).enumerate() {
            let pos = r.labels.iter().position(|l| *l == p.label);
            let prob = pos.and_then(|i| p.probabilities.get(i)).copied();
            self.say(format!(
                "  row {i}: predicted {} (probability {}), true label {y}",
                p.label,
                prob.map_or("-".into(), |p| format!("{p:.2}"))
            ));
        }
        self.say(format!(
            "served by {}/{} as request {} (a request id the monitor can later join labels to)",
            r.model, r.version, r.request_id
        ));
        if r.version != v || r.predictions.len() != 3 || r.request_id.is_empty() {
            return Err(format!(
                "expected 3 predictions from version {v} with a request id, got {} from version {} (id {:?})",
                r.predictions.len(),
                r.version,
                r.request_id
            ));
        }
        Ok(())
    }

    /// The challenger and production afterwards.
    async fn challenger(&mut self) -> Step<(TrainJob, u64)> {
        self.chapter("A challenger: logistic regression, C searched with 5-fold CV, gated on F1");
        self.say("It replaces production only if it beats it on the same holdout (the gate).");
        let mut req = self.train_request("logistic_regression", &[("C", "0.1,1,10")]);
        req.cv_folds = 5;
        req.metric = "f1_macro".into();
        req.gate = Some(Gate {
            alias: "production".into(),
            metric: "f1_macro".into(),
            min_improvement: 0.0,
        });
        let job = self.train(req).await?;
        let gate = job
            .gate
            .clone()
            .ok_or_else(|| format!("job {} has no gate result", job.id))?;
        let mut params: Vec<String> = job.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        params.sort();
        self.say(format!(
            "{}/{} ({}): {}",
            self.model,
            job.version,
            params.join(" "),
            gate.reason
        ));
        let production = self.production().await?.ok_or("production disappeared")?;
        let expected = if gate.promoted {
            job.version
        } else {
            gate.champion_version
        };
        if production != expected {
            return Err(format!(
                "the gate said promoted = {}, but production is {production}",
                gate.promoted
            ));
        }
        self.say(format!("production stays on {}/{production}", self.model));
        Ok((job, production))
    }

    async fn reproduce(&mut self, challenger: &TrainJob) -> Step<u64> {
        self.chapter("Reproducible: the same data and the same request give the same artifact, byte for byte");
        let mut req = self.train_request("logistic_regression", &[("C", "0.1,1,10")]);
        req.cv_folds = 5;
        req.metric = "f1_macro".into();
        let job = self.train(req).await?;
        self.say(format!(
            "{}/{}: sha256 {}",
            self.model, challenger.version, challenger.artifact_sha256
        ));
        self.say(format!(
            "{}/{}: sha256 {}",
            self.model, job.version, job.artifact_sha256
        ));
        if job.artifact_sha256 != challenger.artifact_sha256 {
            return Err("the two artifacts differ".into());
        }
        self.say("identical: everything random is drawn from the seed");
        Ok(job.version)
    }

    async fn hot_swap(&mut self, production: u64, other: u64) -> Step<()> {
        self.chapter(format!(
            "Hot swap and rollback: promote {}/{other}, then roll production back",
            self.model
        ));
        self.registry
            .set_alias(self.req(SetAliasRequest {
                model: self.model.clone(),
                alias: "production".into(),
                version: other,
                expected_version: Some(production),
                reason: "try the reproduced challenger".into(),
            }))
            .await
            .map_err(call("SetAlias"))?;
        let took = self.served_by(other).await?;
        self.say(format!(
            "production -> {other}: the server swapped it in after {} ms, no restart, no failed request",
            took.as_millis()
        ));
        let a = self
            .registry
            .rollback_alias(self.req(RollbackAliasRequest {
                model: self.model.clone(),
                alias: "production".into(),
                reason: "demo rollback".into(),
            }))
            .await
            .map_err(call("RollbackAlias"))?
            .into_inner();
        if a.version != production {
            return Err(format!(
                "rollback moved production to {}, expected its previous target {production}",
                a.version
            ));
        }
        let took = self.served_by(production).await?;
        self.say(format!(
            "rollback: production -> {production} again (its previous target, from the audit trail), served after {} ms",
            took.as_millis()
        ));
        let stale = self
            .registry
            .set_alias(self.req(SetAliasRequest {
                model: self.model.clone(),
                alias: "production".into(),
                version: other,
                expected_version: Some(other),
                reason: "a stale promotion".into(),
            }))
            .await;
        match stale {
            Err(s) if s.code() == Code::FailedPrecondition => {
                self.say(format!(
                    "a stale promotion (expecting production at {other}) is refused: {}",
                    s.message()
                ));
                Ok(())
            }
            Err(s) => Err(call("the stale SetAlias")(s)),
            Ok(_) => Err("a stale compare-and-set promotion was accepted".into()),
        }
    }

    async fn canary(&mut self, production: u64, canary: u64, shadow: u64) -> Step<()> {
        self.chapter(format!(
            "Canary and shadow: 90% of traffic on {production}, 10% on {canary}; {shadow} scores a copy of every request"
        ));
        let policy = TrafficPolicy {
            weights: vec![
                VersionWeight {
                    version: production,
                    weight: 90,
                },
                VersionWeight {
                    version: canary,
                    weight: 10,
                },
            ],
            shadow_version: shadow,
        };
        self.registry
            .set_traffic_policy(self.req(SetTrafficPolicyRequest {
                model: self.model.clone(),
                policy: Some(policy.clone()),
                reason: format!("canary for version {canary}"),
            }))
            .await
            .map_err(call("SetTrafficPolicy"))?;
        self.served_policy(Some(&policy)).await?;
        let mut counts: HashMap<u64, u32> = HashMap::new();
        let n = self.data.rows.len();
        for i in 0..100 {
            let row = self.data.rows[(i * 5) % n].0.clone();
            let r = self
                .predict(
                    self.model.clone(),
                    &[row],
                    format!("{}-canary-{i}", self.model),
                )
                .await
                .map_err(call("Predict"))?;
            *counts.entry(r.version).or_default() += 1;
        }
        let (p, c) = (
            counts.get(&production).copied().unwrap_or(0),
            counts.get(&canary).copied().unwrap_or(0),
        );
        self.say(format!(
            "100 requests: {p} answered by {production}, {c} by {canary} (sticky per request id); {shadow} shadowed them off the response path"
        ));
        if p + c != 100 || c == 0 || p < c {
            return Err(format!(
                "expected most of 100 requests on {production} and some on {canary}, got {counts:?}"
            ));
        }
        self.registry
            .set_traffic_policy(self.req(SetTrafficPolicyRequest {
                model: self.model.clone(),
                policy: None,
                reason: "canary done".into(),
            }))
            .await
            .map_err(call("SetTrafficPolicy"))?;
        self.served_policy(None).await?;
        self.say(format!(
            "policy cleared: all traffic on production ({production}) again"
        ));
        Ok(())
    }

    async fn policy(&mut self) -> Step<()> {
        self.chapter(
            "Monitoring policy: judge every 50-row window; 3 breached windows in a row act",
        );
        let p = self
            .monitor
            .set_policy(SetPolicyRequest {
                policy: Some(Policy {
                    model: self.model.clone(),
                    min_rows: WINDOW_ROWS as u64,
                    min_labels: 30,
                    consecutive: 3,
                    max_metric_drop: 0.1,
                    cooldown_seconds: 60,
                    ..Default::default()
                }),
            })
            .await
            .map_err(call("SetPolicy"))?
            .into_inner();
        self.say(format!(
            "a window breaches on data drift (Evidently's tests per feature, dataset drift at {:.0}% of features) or",
            p.drift_share * 100.0
        ));
        self.say(format!(
            "on accuracy {} below the holdout's (on its labels, or estimated without them by CBPE);",
            p.max_metric_drop
        ));
        self.say(format!(
            "actions on `{}`: retrain {}, rollback {} (of a promotion never healthy), retire {}",
            p.alias,
            p.retrain.unwrap_or(false),
            p.rollback.unwrap_or(false),
            p.retire.unwrap_or(false)
        ));
        if p.min_rows != WINDOW_ROWS as u64 || p.consecutive != 3 || p.retrain != Some(true) {
            return Err(format!("the monitor stored a different policy: {p:?}"));
        }
        Ok(())
    }

    async fn healthy(&mut self, production: u64) -> Step<()> {
        self.chapter("Traffic like the training data, labeled after the fact: healthy windows");
        self.say("Each request carries 50 rows; the true labels arrive later, keyed by (request id, row).");
        for k in 0..3 {
            let v = self.traffic(false, k).await?;
            if v != production {
                return Err(format!("served by {v}, expected production {production}"));
            }
        }
        let r = self
            .monitor
            .get_report(GetReportRequest {
                model: self.model.clone(),
                version: production,
                window: WindowKind::Long as i32,
            })
            .await
            .map_err(call("GetReport"))?
            .into_inner();
        let perf = r.performance.unwrap_or_default();
        self.say(format!(
            "the monitor's view of {}/{production} so far: {} rows, {} labeled, accuracy {} (holdout: {}), {} windows closed",
            self.model,
            r.drift.as_ref().map_or(0, |d| d.rows),
            perf.labeled,
            metric(&perf.realized, "accuracy"),
            metric(&perf.training, "accuracy"),
            r.history.len()
        ));
        let signals = self.signals().await?;
        if !signals.is_empty() {
            return Err(format!(
                "the monitor raised a signal on healthy traffic: {}",
                signals[0].reason
            ));
        }
        self.say("no signal: nothing to do");
        Ok(())
    }

    /// Sends drifted windows until the monitor raises RETRAIN.
    async fn drift(&mut self, production: u64) -> Step<Signal> {
        self.chapter("Drift appears: every measurement ×1.5 (say, a recalibrated scanner), labeled as before");
        let retrain = |s: &[Signal]| s.iter().find(|s| s.kind() == SignalKind::Retrain).cloned();
        for k in 0..8 {
            let v = self.traffic(true, k).await?;
            if v != production {
                return Err(format!("served by {v}, expected production {production}"));
            }
            if let Some(s) = retrain(&self.signals().await?) {
                return Ok(s);
            }
        }
        let t = Instant::now();
        while t.elapsed() < PATIENCE {
            if let Some(s) = retrain(&self.signals().await?) {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = self
            .monitor
            .get_report(GetReportRequest {
                model: self.model.clone(),
                version: production,
                window: WindowKind::Last as i32,
            })
            .await
            .map_err(call("GetReport"))?
            .into_inner();
        Err(format!(
            "no RETRAIN signal after 8 drifted windows; the last window's breaches: {:?}",
            r.summary.map(|s| s.breaches).unwrap_or_default()
        ))
    }

    /// Shows the signal; the retrain job's id.
    async fn signal(&mut self, s: &Signal) -> Step<String> {
        self.chapter(format!(
            "The monitor signals: {} {}/{}",
            s.kind().short_name(),
            s.model,
            s.version
        ));
        self.say(&s.reason);
        for e in s.evidence.iter().take(4) {
            let mut line: String = e.chars().take(150).collect();
            if line.len() < e.len() {
                line.push('…');
            }
            self.say(format!("  {line}"));
        }
        if !s.error.is_empty() {
            return Err(format!("the monitor could not act: {}", s.error));
        }
        self.say(format!("action: {}", s.action));
        s.action
            .split_whitespace()
            .find(|w| w.starts_with("job-"))
            .map(|w| {
                w.trim_end_matches(|c: char| !c.is_alphanumeric())
                    .to_string()
            })
            .ok_or_else(|| format!("the signal's action names no trainer job: {:?}", s.action))
    }

    async fn retrain(&mut self, id: String) -> Step<TrainJob> {
        self.chapter("Retrain: the monitor asked the trainer to retrain production's recipe on its training data + the labeled traffic");
        let stream = self
            .trainer
            .watch_job(GetJobRequest { id: id.clone() })
            .await
            .map_err(call("WatchJob"))?
            .into_inner();
        let job = self.follow(stream).await?;
        self.say(format!(
            "job {id}: {}/{} — holdout accuracy {} (its holdout includes drifted rows)",
            self.model,
            job.version,
            metric(&job.metrics, "accuracy")
        ));
        if job.version == 0 {
            return Err(format!("job {id} registered no version"));
        }
        Ok(job)
    }

    async fn gated_promotion(&mut self, old: u64, job: &TrainJob) -> Step<u64> {
        self.chapter(
            "Gated promotion: the retrained version must beat production on the same holdout",
        );
        let gate = job
            .gate
            .clone()
            .ok_or_else(|| format!("job {} ran without a gate", job.id))?;
        self.say(&gate.reason);
        if !gate.promoted {
            return Err(format!(
                "the gate did not promote {}/{}: {}",
                self.model, job.version, gate.reason
            ));
        }
        let production = self.production().await?;
        if production != Some(job.version) {
            return Err(format!(
                "the gate promoted {}, but production is {production:?}",
                job.version
            ));
        }
        let took = self.served_by(job.version).await?;
        self.say(format!(
            "production {old} -> {}; the server serves it after {} ms",
            job.version,
            took.as_millis()
        ));
        let v = self.traffic(true, 8).await?;
        if v != job.version {
            return Err(format!(
                "drifted traffic served by {v}, expected the retrained {}",
                job.version
            ));
        }
        Ok(job.version)
    }

    /// Deprecates the old version; its artifact's bytes (for the restore check).
    async fn deprecate(&mut self, old: u64, new: u64) -> Step<Vec<u8>> {
        self.chapter(format!(
            "Deprecate {}/{old}: callers that still pin it see a notice, a sunset and the replacement",
            self.model
        ));
        let sunset = chrono::Utc::now() + chrono::Duration::days(30);
        self.registry
            .set_version_status(self.req(SetVersionStatusRequest {
                r#ref: numbered(&self.model, old),
                status: VersionStatus::Deprecated as i32,
                reason: format!("replaced by version {new}, retrained after drift"),
                sunset_at: Some(evergreen_proto::Timestamp {
                    seconds: sunset.timestamp(),
                    nanos: 0,
                }),
                replacement_version: new,
            }))
            .await
            .map_err(call("SetVersionStatus"))?;
        let pinned = format!("{}/{old}", self.model);
        let row = self.data.rows[0].0.clone();
        let t = Instant::now();
        let notice = loop {
            let r = self
                .predict(pinned.clone(), std::slice::from_ref(&row), String::new())
                .await
                .map_err(call("Predict"))?;
            if let Some(d) = r.deprecation {
                break d;
            }
            if t.elapsed() > PATIENCE {
                return Err(format!(
                    "a caller of {pinned} still gets no deprecation notice"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.say(format!(
            "a caller of {pinned} now reads: {}",
            notice.message
        ));
        if notice.replacement_version != new {
            return Err(format!(
                "the notice names replacement {}, expected {new}",
                notice.replacement_version
            ));
        }
        self.download(old).await.map_err(call("DownloadArtifact"))
    }

    async fn phase_out(&mut self, old: u64, new: u64) -> Step<()> {
        self.chapter(format!(
            "Phase out {}/{old} through the registry's schedule",
            self.model
        ));
        self.say("A phase-out moves a model's traffic from one version to another in steps, asking the monitor");
        self.say("before each; here the gate already moved production, so one step of 100% remains: every alias");
        self.say(format!(
            "still on {old} moves to {new}, {old} stays DEPRECATED, and it retires after a grace period (3 s here)."
        ));
        let p = self
            .registry
            .start_phaseout(self.req(StartPhaseoutRequest {
                model: self.model.clone(),
                from_version: old,
                to_version: new,
                steps: vec![100],
                every_seconds: 1,
                retire_after_seconds: 3,
                reason: "the drifted version leaves".into(),
            }))
            .await
            .map_err(call("StartPhaseout"))?
            .into_inner();
        let p = if p.state() == PhaseoutState::Done {
            p
        } else {
            self.registry
                .get_phaseout(GetPhaseoutRequest {
                    model: self.model.clone(),
                })
                .await
                .map_err(call("GetPhaseout"))?
                .into_inner()
        };
        for h in &p.history {
            self.say(format!(
                "  step {}/{}: {}% of traffic on {new}; {}",
                h.step,
                p.steps.len(),
                h.weight,
                h.health
            ));
        }
        if p.state() != PhaseoutState::Done {
            return Err(format!(
                "the phase-out is {}, expected DONE",
                p.state().short_name()
            ));
        }
        let v = self.version(old).await?;
        self.say(format!(
            "phase-out DONE: {}/{old} is {} ({})",
            self.model,
            v.status().short_name(),
            v.status_reason
        ));
        if v.status() != VersionStatus::Deprecated || v.replacement_version != new {
            return Err(format!(
                "{}/{old} is {} with replacement {}, expected DEPRECATED in favour of {new}",
                self.model,
                v.status().short_name(),
                v.replacement_version
            ));
        }
        Ok(())
    }

    async fn retired(&mut self, old: u64, new: u64) -> Step<()> {
        self.chapter(format!(
            "Retire: the registry's scheduler retires {}/{old} when the grace period ends",
            self.model
        ));
        let t = Instant::now();
        let v = loop {
            let v = self.version(old).await?;
            if v.status() == VersionStatus::Retired {
                break v;
            }
            if t.elapsed() > PATIENCE {
                return Err(format!(
                    "{}/{old} is still {} {} s after the phase-out",
                    self.model,
                    v.status().short_name(),
                    PATIENCE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.say(format!(
            "{}/{old}: RETIRED after {:.1} s ({})",
            self.model,
            t.elapsed().as_secs_f64(),
            v.status_reason
        ));
        let pinned = format!("{}/{old}", self.model);
        let row = self.data.rows[0].0.clone();
        let t = Instant::now();
        loop {
            match self
                .predict(pinned.clone(), std::slice::from_ref(&row), String::new())
                .await
            {
                Err(s) if s.code() == Code::FailedPrecondition => {
                    self.say(format!("a caller of {pinned} is refused: {}", s.message()));
                    break;
                }
                Err(s) => return Err(call("Predict of a retired version")(s)),
                Ok(_) if t.elapsed() < PATIENCE => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(_) => return Err(format!("the server still serves the retired {pinned}")),
            }
        }
        let answered = self
            .predict(self.model.clone(), &[row], String::new())
            .await
            .map_err(call("Predict"))?;
        if answered.version != new {
            return Err(format!(
                "default traffic answered by {}, expected {new}",
                answered.version
            ));
        }
        Ok(())
    }

    async fn archive(&mut self, old: u64) -> Step<String> {
        self.chapter(format!(
            "Archive {}/{old}: artifact, training data and a manifest leave the registry",
            self.model
        ));
        let v = self
            .registry
            .archive(self.req(ArchiveRequest {
                r#ref: numbered(&self.model, old),
                reason: "kept for audits".into(),
                include_data: true,
            }))
            .await
            .map_err(call("Archive"))?
            .into_inner();
        let sha = v.artifact.clone().unwrap_or_default().sha256;
        self.say(format!(
            "{}/{old}: {}, archived to {}",
            self.model,
            v.status().short_name(),
            v.archive_uri
        ));
        self.say("(the registry's local archive directory; with [registry.archive.s3] a bucket it goes to S3)");
        if v.status() != VersionStatus::Archived || v.archive_uri.is_empty() {
            return Err(format!(
                "the version is {} with archive URI {:?}, expected ARCHIVED",
                v.status().short_name(),
                v.archive_uri
            ));
        }
        if let Some(dir) = v.archive_uri.strip_prefix("file://") {
            let dir = Path::new(dir);
            let manifest = dir.join("manifest.json");
            let artifact = std::fs::read(dir.join("artifact.evgm")).map_err(|e| {
                format!(
                    "cannot read the archived artifact in {}: {e}",
                    dir.display()
                )
            })?;
            let m: serde_json::Value = std::fs::read(&manifest)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| format!("no readable manifest at {}", manifest.display()))?;
            if sha256_hex(&artifact) != sha {
                return Err(format!(
                    "the archived artifact has sha256 {}, the version {sha}",
                    sha256_hex(&artifact)
                ));
            }
            let data = dir.join("data").is_dir();
            self.say(format!(
                "on disk: manifest.json ({} audit entries), artifact.evgm (sha256 {}… = the version's), training data {}",
                m["audit"].as_array().map_or(0, |a| a.len()),
                short(&sha),
                if data { "included" } else { "not included" }
            ));
        }
        match self.download(old).await {
            Err(s) if s.code() == Code::FailedPrecondition => {
                self.say(format!(
                    "its artifact is gone from the registry: {}",
                    s.message()
                ));
            }
            Err(s) => return Err(call("DownloadArtifact of an archived version")(s)),
            Ok(_) => return Err("an ARCHIVED version's artifact can still be downloaded".into()),
        }
        Ok(v.archive_uri)
    }

    async fn restore(&mut self, old: u64, before: &[u8]) -> Step<()> {
        self.chapter(format!(
            "Restore {}/{old} from the archive: verified against the manifest, back as RETIRED",
            self.model
        ));
        let v = self
            .registry
            .restore(self.req(RestoreRequest {
                r#ref: numbered(&self.model, old),
                reason: "an audit asks for it".into(),
                activate: false,
            }))
            .await
            .map_err(call("Restore"))?
            .into_inner();
        let after = self.download(old).await.map_err(call("DownloadArtifact"))?;
        self.say(format!("sha256 before the archive: {}", sha256_hex(before)));
        self.say(format!("sha256 after the restore:  {}", sha256_hex(&after)));
        if v.status() != VersionStatus::Retired {
            return Err(format!(
                "restored as {}, expected RETIRED",
                v.status().short_name()
            ));
        }
        if after != before {
            return Err("the restored artifact differs from the archived one".into());
        }
        self.say("the bytes match. Its whole life, from the audit trail:");
        let entries = self
            .registry
            .history(HistoryRequest {
                model: self.model.clone(),
                limit: 0,
            })
            .await
            .map_err(call("History"))?
            .into_inner()
            .entries;
        let mut kinds = Vec::new();
        for e in entries.iter().filter(|e| e.version == old) {
            kinds.push(e.kind());
            let reason: String = e.reason.chars().take(90).collect();
            self.say(format!(
                "  rev {:>3}  {:<24} by {:<18} {reason}",
                e.revision,
                e.kind().short_name(),
                e.actor
            ));
        }
        for want in [
            EventKind::VersionRegistered,
            EventKind::PhaseoutDone,
            EventKind::VersionArchived,
            EventKind::VersionRestored,
        ] {
            if !kinds.contains(&want) {
                return Err(format!(
                    "the audit trail of {}/{old} has no {}",
                    self.model,
                    want.short_name()
                ));
            }
        }
        Ok(())
    }
}
