//! Training jobs: queue, run, cancel, persist, and register the result.
//!
//! Jobs are records in a small sled database so that `GetJob`/`ListJobs`
//! survive a restart; a job that was queued or running when the trainer
//! stopped reads as FAILED afterwards (nothing was registered: registration
//! is the job's last step). Live progress goes through a `watch` channel
//! per running job.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use evergreen_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use crate::data::{self, Selection};
use crate::error::TrainError;
use crate::labeled::{self, LabeledRow};
use crate::registry::{NewVersion, Registry};
use crate::spec::{self, Gate, RawRequest, Recipe, S3Object, Source, TrainSpec};
use crate::train::{self, Champion, GateOutcome, Inputs, Progress, Stage, PRODUCER};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub state: JobState,
    pub model: String,
    pub version: u64,
    pub metrics: BTreeMap<String, f64>,
    pub params: BTreeMap<String, String>,
    pub error: String,
    /// gRPC code name of the failure.
    pub error_code: String,
    pub request: RawRequest,
    pub progress: Progress,
    /// The first progress of every stage the job entered, in order: a
    /// watcher that missed a short stage (the live record only holds the
    /// latest) still reports it.
    #[serde(default)]
    pub stages: Vec<Progress>,
    pub artifact_sha256: String,
    pub gate: Option<GateOutcome>,
    pub created_ms: i64,
    pub finished_ms: i64,
    pub actor: String,
    /// Start of the run, for `elapsed`; not persisted meaningfully.
    #[serde(skip)]
    pub started: Option<Instant>,
}

impl JobRecord {
    /// Moves the job's progress on, recording a stage it enters.
    pub fn set_progress(&mut self, p: Progress) {
        if self.stages.last().map(|l| l.stage) != Some(p.stage) {
            self.stages.push(p.clone());
        }
        self.progress = p;
    }
}

struct Live {
    cancel: Arc<AtomicBool>,
    cancel_reason: Arc<Mutex<String>>,
    tx: watch::Sender<JobRecord>,
}

pub struct Jobs {
    db: sled::Db,
    tree: sled::Tree,
    live: Mutex<HashMap<String, Live>>,
    permits: Arc<Semaphore>,
    /// `trainer.max_queued_jobs`: more QUEUED jobs are refused.
    max_queued: usize,
    registry: Registry,
    /// The trainer's data dir (absolute); retrain data goes to `retrain/`,
    /// `s3://` datasets are downloaded to `s3/<bucket>/<key>`.
    dir: PathBuf,
    /// `trainer.dataset_dirs`, resolved; empty = any readable file. The
    /// data dir is allowed besides these.
    dataset_dirs: Vec<PathBuf>,
    /// How to reach S3 (its bucket and prefix are not used).
    s3: evergreen_s3::S3Config,
    /// One client per bucket, made on first use.
    s3_clients: Mutex<HashMap<String, evergreen_s3::S3Store>>,
    /// Counters for `/metrics` (registered by `run`).
    pub metrics: crate::metrics::JobMetrics,
}

/// What `Retrain` asks for.
#[derive(Debug, Clone, Default)]
pub struct RetrainRequest {
    pub model: String,
    /// The version whose recipe is reused; empty: `production` (the latest
    /// version when there is no such alias).
    pub alias: String,
    /// Empty: that version's own training data (its lineage).
    pub dataset_uri: String,
    pub reason: String,
    pub gate: Option<Gate>,
    /// Added to the data, positional in that version's feature order.
    pub rows: Vec<LabeledRow>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Jobs {
    /// Jobs (queued, running) now.
    pub fn live_counts(&self) -> (usize, usize) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let running = live
            .values()
            .filter(|l| l.tx.borrow().state == JobState::Running)
            .count();
        (live.len() - running, running)
    }

    /// Opens the job database; jobs interrupted by a stop become FAILED.
    pub fn open(
        dir: &Path,
        registry: Registry,
        max_concurrent: usize,
        max_queued: usize,
        s3: evergreen_s3::S3Config,
        dataset_dirs: Vec<PathBuf>,
    ) -> anyhow::Result<Arc<Jobs>> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new().path(dir.join("jobs")).open()?;
        let tree = db.open_tree("jobs")?;
        for item in tree.iter() {
            let (k, v) = item?;
            let mut job: JobRecord = serde_json::from_slice(&v)?;
            if !job.state.is_final() {
                job.state = JobState::Failed;
                job.error = "the trainer stopped while this job was queued or running; nothing was registered".into();
                job.error_code = "ABORTED".into();
                job.finished_ms = now_ms();
                tree.insert(k, serde_json::to_vec(&job)?)?;
            }
        }
        db.flush()?;
        let dir = std::path::absolute(dir)?;
        let mut dataset_dirs = dataset_dirs;
        if !dataset_dirs.is_empty() {
            dataset_dirs.push(std::fs::canonicalize(&dir)?);
        }
        Ok(Arc::new(Jobs {
            dir,
            dataset_dirs,
            db,
            tree,
            live: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_queued,
            registry,
            s3,
            s3_clients: Mutex::new(HashMap::new()),
            metrics: Default::default(),
        }))
    }

    fn save(&self, job: &JobRecord) {
        let bytes = serde_json::to_vec(job).expect("job records serialize");
        if let Err(e) = self
            .tree
            .insert(job.id.as_bytes(), bytes)
            .and_then(|_| self.db.flush().map(drop))
        {
            tracing::error!(job = %job.id, error = %e, "cannot persist job record");
        }
    }

    pub fn get(&self, id: &str) -> Result<JobRecord, TrainError> {
        if let Some(live) = self.live.lock().unwrap().get(id) {
            return Ok(live.tx.borrow().clone());
        }
        match self.tree.get(id.as_bytes()) {
            Ok(Some(v)) => {
                serde_json::from_slice(&v).map_err(|e| TrainError::Internal(e.to_string()))
            }
            Ok(None) => Err(TrainError::NotFound(format!("job {id:?} not found"))),
            Err(e) => Err(TrainError::Internal(e.to_string())),
        }
    }

    /// What `evergreen status` shows: jobs running, queued and done
    /// (succeeded / failed / cancelled).
    pub fn holdings(&self) -> anyhow::Result<Vec<(String, String)>> {
        let live: HashMap<String, JobState> = self
            .live
            .lock()
            .unwrap()
            .iter()
            .map(|(id, l)| (id.clone(), l.tx.borrow().state))
            .collect();
        let mut counts: HashMap<JobState, u64> = HashMap::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let state = match live.get(&id) {
                Some(s) => *s,
                None => serde_json::from_slice::<JobRecord>(&v)?.state,
            };
            *counts.entry(state).or_default() += 1;
        }
        let n = |s| counts.get(&s).copied().unwrap_or(0);
        Ok(vec![
            ("running".into(), n(JobState::Running).to_string()),
            ("queued".into(), n(JobState::Queued).to_string()),
            (
                "done".into(),
                format!(
                    "{} ({} succeeded, {} failed, {} cancelled)",
                    n(JobState::Succeeded) + n(JobState::Failed) + n(JobState::Cancelled),
                    n(JobState::Succeeded),
                    n(JobState::Failed),
                    n(JobState::Cancelled)
                ),
            ),
        ])
    }

    /// Newest first.
    pub fn list(&self, model: &str, limit: usize) -> Vec<JobRecord> {
        let limit = if limit == 0 { 100 } else { limit };
        self.tree
            .iter()
            .rev()
            .filter_map(|r| r.ok())
            .filter_map(|(_, v)| serde_json::from_slice::<JobRecord>(&v).ok())
            .map(|j| self.get(&j.id).unwrap_or(j))
            .filter(|j| model.is_empty() || j.model == model)
            .take(limit)
            .collect()
    }

    /// A receiver that sees the job's updates; a finished job's receiver
    /// holds its final record.
    pub fn subscribe(&self, id: &str) -> Result<watch::Receiver<JobRecord>, TrainError> {
        if let Some(live) = self.live.lock().unwrap().get(id) {
            return Ok(live.tx.subscribe());
        }
        let job = self.get(id)?;
        Ok(watch::channel(job).1)
    }

    pub fn cancel(&self, id: &str, reason: &str) -> Result<JobRecord, TrainError> {
        {
            let live = self.live.lock().unwrap();
            if let Some(l) = live.get(id) {
                *l.cancel_reason.lock().unwrap() = if reason.is_empty() {
                    "cancelled by request".into()
                } else {
                    reason.to_string()
                };
                l.cancel.store(true, Ordering::Relaxed);
                return Ok(l.tx.borrow().clone());
            }
        }
        let job = self.get(id)?;
        Err(TrainError::FailedPrecondition(format!(
            "job {id} already ended ({:?}); only queued or running jobs can be cancelled",
            job.state
        )))
    }

    /// Cancels every queued or running job (recorded as CANCELLED) and
    /// waits for them to end.
    pub async fn shutdown(&self) {
        let ids: Vec<String> = self.live.lock().unwrap().keys().cloned().collect();
        for id in &ids {
            let _ = self.cancel(id, "the trainer is shutting down");
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while !self.live.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The local dataset `path`, if the trainer may read it: a regular file
    /// (not a device such as `/dev/zero`, a FIFO or a directory, which
    /// would exhaust memory or block a thread), inside `trainer.dataset_dirs`
    /// when they are set (checked on the resolved path, so neither `..` nor
    /// a symlink leads out).
    pub fn local_dataset(&self, path: &Path) -> Result<PathBuf, TrainError> {
        let meta = std::fs::metadata(path).map_err(|e| data::open_error(path, e))?;
        if !meta.is_file() {
            return Err(TrainError::InvalidArgument(format!(
                "dataset {} is not a regular file; expected a CSV file",
                path.display()
            )));
        }
        if self.dataset_dirs.is_empty() {
            return Ok(path.to_path_buf());
        }
        let real = std::fs::canonicalize(path).map_err(|e| data::open_error(path, e))?;
        if self.dataset_dirs.iter().any(|d| real.starts_with(d)) {
            Ok(real)
        } else {
            Err(TrainError::PermissionDenied(format!(
                "dataset {} is outside the directories this trainer may read (trainer.dataset_dirs); put it under one of them or use s3://",
                path.display()
            )))
        }
    }

    /// Validates a request, records the job and starts it.
    pub async fn submit(
        self: &Arc<Self>,
        raw: RawRequest,
        actor: &str,
    ) -> Result<JobRecord, TrainError> {
        let spec = raw.clone().validate()?;
        let recipe_json = serde_json::to_string(&spec.recipe).expect("recipes serialize");
        self.start(spec, raw, recipe_json, actor).await
    }

    /// The S3 client for `bucket`.
    async fn s3_store(&self, bucket: &str) -> evergreen_s3::S3Store {
        if let Some(s) = self.s3_clients.lock().unwrap().get(bucket) {
            return s.clone();
        }
        let config = evergreen_s3::S3Config {
            bucket: bucket.to_string(),
            prefix: String::new(),
            ..self.s3.clone()
        };
        let store = evergreen_s3::S3Store::new(&config).await;
        self.s3_clients
            .lock()
            .unwrap()
            .entry(bucket.to_string())
            .or_insert(store)
            .clone()
    }

    /// The object's size; a missing object is NOT_FOUND naming it, a
    /// missing bucket, refused credentials or an unreachable endpoint
    /// are `TrainError::S3`.
    async fn s3_size(&self, o: &S3Object) -> Result<u64, TrainError> {
        let uri = o.uri();
        let failed = |error| TrainError::S3 {
            uri: uri.clone(),
            error,
        };
        let store = self.s3_store(&o.bucket).await;
        match store.size(&o.key).await.map_err(failed)? {
            Some(size) => Ok(size),
            None => {
                // HEAD of an object in a missing bucket is a bare 404 too.
                store.check().await.map_err(failed)?;
                Err(TrainError::NotFound(format!(
                    "dataset {uri} does not exist"
                )))
            }
        }
    }

    /// Downloads `o` to `<data_dir>/s3/<bucket>/<key>` (through a temporary
    /// file, so that a concurrent download of the same object never leaves
    /// a torn file) and returns that path.
    async fn s3_fetch(&self, o: &S3Object) -> Result<PathBuf, TrainError> {
        let uri = o.uri();
        let path = o.local_path(&self.dir);
        let parent = path.parent().expect("under the data dir");
        let local = |e: std::io::Error| TrainError::S3 {
            uri: uri.clone(),
            error: evergreen_s3::S3Error::Local {
                path: path.display().to_string(),
                message: e.to_string(),
            },
        };
        std::fs::create_dir_all(parent).map_err(local)?;
        let tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempfile_in(parent)
            .map_err(local)?
            .into_temp_path();
        let store = self.s3_store(&o.bucket).await;
        let got = store
            .get_file(&o.key, &tmp)
            .await
            .map_err(|error| match error {
                evergreen_s3::S3Error::NotFound { .. } => {
                    TrainError::NotFound(format!("dataset {uri} does not exist"))
                }
                error => TrainError::S3 {
                    uri: uri.clone(),
                    error,
                },
            })?;
        tmp.persist(&path).map_err(|e| local(e.error))?;
        tracing::info!(%uri, path = %path.display(), bytes = got.size, sha256 = %got.sha256, "downloaded dataset");
        Ok(path)
    }

    /// Retrains `model` with the recipe of the version behind `alias`
    /// (the latest version when the alias does not exist), on `dataset_uri`
    /// or that version's own training data, plus `rows` when there are any
    /// (written with the base data to a new file under `<data_dir>/retrain`,
    /// which the new version's lineage records). Bad rows fail the call:
    /// nothing is written and no job is created.
    pub async fn retrain(
        self: &Arc<Self>,
        r: RetrainRequest,
        actor: &str,
    ) -> Result<JobRecord, TrainError> {
        let model = r.model.as_str();
        evergreen_proto::names::check_name("model name", model)
            .map_err(TrainError::InvalidArgument)?;
        if r.rows.len() > labeled::MAX_ROWS {
            return Err(TrainError::InvalidArgument(format!(
                "rows: {} labeled rows; at most {} per retrain",
                r.rows.len(),
                labeled::MAX_ROWS
            )));
        }
        let alias = if r.alias.is_empty() {
            "production"
        } else {
            &r.alias
        };
        let (version, record) = match self.registry.version_at(model, alias).await? {
            Some(v) => (v.version, Some(v)),
            None => (
                self.registry.latest_version(model).await?.ok_or_else(|| {
                    TrainError::NotFound(format!(
                        "model {model:?} has no versions to take a recipe from"
                    ))
                })?,
                None,
            ),
        };
        let at = format!("{model}/{version}");
        let current = self.registry.load_model(model, version).await?;
        let recipe: Recipe = serde_json::from_str(&current.training.recipe).map_err(|e| {
            TrainError::FailedPrecondition(format!(
                "{at} has no usable recipe ({e}); train it with an explicit request"
            ))
        })?;
        let base_uri = if r.dataset_uri.is_empty() {
            let record = match record {
                Some(v) => v,
                None => self.registry.version(model, version).await?,
            };
            self.own_training_data(&at, record.lineage.unwrap_or_default())
                .await?
        } else {
            r.dataset_uri.clone()
        };
        let n = r.rows.len();
        let mut reason = format!("retrain of {at}");
        if !r.reason.is_empty() {
            reason = format!("{reason}: {}", r.reason);
        }
        if n > 0 {
            let s = if n == 1 { "" } else { "s" };
            reason = format!("{reason} (+{n} labeled row{s})");
        }
        let mut raw = RawRequest {
            model: model.to_string(),
            dataset_uri: base_uri.clone(),
            reason,
            gate: r.gate.map(|g| (g.alias, g.metric, g.min_improvement)),
            ..recipe.to_raw()
        };
        if r.rows.is_empty() {
            return self.submit(raw, actor).await;
        }
        // The request must be good before anything is written.
        let base = match raw.clone().validate()?.dataset {
            Source::Local(p) => self.local_dataset(&p)?,
            // The rows are checked against the header and appended to the
            // data: fetch it now.
            Source::S3(o) => self.s3_fetch(&o).await?,
        };
        let header = data::read_header(&base)?;
        let schema = current.schema.clone();
        let dir = self.dir.join("retrain");
        let (name, rows) = (model.to_string(), r.rows);
        let (path, fresh) = tokio::task::spawn_blocking(move || {
            labeled::check(&rows, &schema, &header, &base, &at)?;
            labeled::write(&rows, &schema, &header, &base, &dir, &name, &at)
        })
        .await
        .map_err(|e| TrainError::Internal(format!("writing retrain data failed: {e}")))??;
        raw.dataset_uri = path.display().to_string();
        let job = self.submit(raw, actor).await;
        if job.is_err() && fresh {
            let _ = std::fs::remove_file(&path);
        }
        job
    }

    async fn start(
        self: &Arc<Self>,
        spec: TrainSpec,
        raw: RawRequest,
        recipe_json: String,
        actor: &str,
    ) -> Result<JobRecord, TrainError> {
        // Cheap checks now, so a typo fails the call rather than the job.
        // An S3 object is only looked at (its columns are checked once the
        // job has downloaded it).
        match &spec.dataset {
            Source::Local(given) => {
                let path = &self.local_dataset(given)?;
                // Errors name the file as the caller did.
                let named = |e: TrainError| {
                    e.replace_name(&path.display().to_string(), &given.display().to_string())
                };
                let header = data::read_header(path).map_err(named)?;
                data::resolve(path, &header, &selection(&spec.recipe)).map_err(named)?;
            }
            Source::S3(o) => {
                if self.s3_size(o).await? == 0 {
                    return Err(TrainError::Data(format!(
                        "{} is empty; expected a header row and data rows",
                        o.uri()
                    )));
                }
            }
        }
        let (queued, _) = self.live_counts();
        if queued >= self.max_queued {
            return Err(TrainError::ResourceExhausted(format!(
                "{queued} jobs are already waiting for a training slot, the limit set by trainer.max_queued_jobs (EVERGREEN_TRAINER__MAX_QUEUED_JOBS); retry when one has started, or cancel one"
            )));
        }
        let id = format!(
            "job-{:06}",
            self.db
                .generate_id()
                .map_err(|e| TrainError::Internal(e.to_string()))?
                + 1
        );
        let job = JobRecord {
            id: id.clone(),
            state: JobState::Queued,
            model: spec.model.clone(),
            version: 0,
            metrics: BTreeMap::new(),
            params: BTreeMap::new(),
            error: String::new(),
            error_code: String::new(),
            request: raw,
            progress: Progress::stage(Stage::Queued, 0.0, "waiting for a training slot"),
            // Waiting in the queue is not history: a watcher that comes
            // later starts from the first stage of the run.
            stages: Vec::new(),
            artifact_sha256: String::new(),
            gate: None,
            created_ms: now_ms(),
            finished_ms: 0,
            actor: actor.to_string(),
            started: None,
        };
        self.save(&job);
        let (tx, _) = watch::channel(job.clone());
        let cancel = Arc::new(AtomicBool::new(false));
        let cancel_reason = Arc::new(Mutex::new(String::new()));
        self.live.lock().unwrap().insert(
            id.clone(),
            Live {
                cancel: cancel.clone(),
                cancel_reason: cancel_reason.clone(),
                tx: tx.clone(),
            },
        );
        let jobs = self.clone();
        tokio::spawn(async move {
            let result = jobs.run(&spec, recipe_json, &tx, cancel).await;
            let mut job = tx.borrow().clone();
            job.finished_ms = now_ms();
            match result {
                Ok(()) => job.state = JobState::Succeeded,
                Err(TrainError::Cancelled(why)) => {
                    let reason = cancel_reason.lock().unwrap().clone();
                    job.state = JobState::Cancelled;
                    job.error = if reason.is_empty() {
                        format!("cancelled: {why}")
                    } else {
                        format!("cancelled: {reason}; nothing was registered")
                    };
                    job.error_code = "CANCELLED".into();
                }
                Err(e) => {
                    job.state = JobState::Failed;
                    job.error = e.to_string();
                    job.error_code = evergreen_proto::codes::name(e.code()).into();
                }
            }
            if job.state == JobState::Succeeded {
                job.set_progress(Progress::stage(
                    Stage::Done,
                    100.0,
                    format!("registered {}/{}", job.model, job.version),
                ));
            }
            tracing::info!(job = %job.id, state = ?job.state, version = job.version, error = %job.error, "training job ended");
            jobs.metrics
                .finished(job.state, job.started.map(|t| t.elapsed().as_secs_f64()));
            jobs.save(&job);
            jobs.live.lock().unwrap().remove(&job.id);
            let _ = tx.send(job);
        });
        Ok(job)
    }

    async fn run(
        &self,
        spec: &TrainSpec,
        recipe_json: String,
        tx: &watch::Sender<JobRecord>,
        cancel: Arc<AtomicBool>,
    ) -> Result<(), TrainError> {
        let _permit = tokio::select! {
            p = self.permits.clone().acquire_owned() => p.map_err(|_| TrainError::Internal("trainer shutting down".into()))?,
            _ = wait_flag(&cancel) => return Err(TrainError::Cancelled("while queued".into())),
        };
        let started = Instant::now();
        let loading = match &spec.dataset {
            Source::Local(p) => format!("reading {}", p.display()),
            Source::S3(o) => format!("downloading {}", o.uri()),
        };
        tx.send_modify(|j| {
            j.state = JobState::Running;
            j.started = Some(started);
            j.set_progress(Progress::stage(Stage::Loading, 1.0, loading));
        });
        self.save(&tx.borrow());
        let actor = tx.borrow().actor.clone();
        let path = match &spec.dataset {
            // Checked again: the file may have changed since the call.
            Source::Local(p) => self.local_dataset(p)?,
            Source::S3(o) => {
                let path = tokio::select! {
                    p = self.s3_fetch(o) => p?,
                    _ = wait_flag(&cancel) => {
                        return Err(TrainError::Cancelled("while downloading the dataset".into()))
                    }
                };
                tx.send_modify(|j| {
                    j.set_progress(Progress::stage(
                        Stage::Loading,
                        2.0,
                        format!("reading {} (downloaded to {})", o.uri(), path.display()),
                    ))
                });
                path
            }
        };

        // The champion, when the request has a gate.
        let champion = match &spec.gate {
            None => None,
            Some(g) => match self.registry.version_at(&spec.model, &g.alias).await? {
                None => None,
                Some(v) => Some(Champion {
                    version: v.version,
                    model: self.registry.load_model(&spec.model, v.version).await?,
                }),
            },
        };

        let spec2 = spec.clone();
        let tx2 = tx.clone();
        let cancel2 = cancel.clone();
        let outcome = tokio::task::spawn_blocking(
            move || -> Result<(train::Outcome, std::time::Duration), TrainError> {
                let data = data::load(&path, &selection(&spec2.recipe)).map_err(|e| {
                    match &spec2.dataset {
                        // Name the object, not where it was downloaded to.
                        Source::S3(o) => e.replace_name(&path.display().to_string(), &o.uri()),
                        Source::Local(p) => {
                            e.replace_name(&path.display().to_string(), &p.display().to_string())
                        }
                    }
                })?;
                let progress = |p: Progress| {
                    tx2.send_modify(|j| j.set_progress(p));
                };
                let inputs = Inputs {
                    recipe: &spec2.recipe,
                    recipe_json,
                    gate: spec2.gate.as_ref(),
                    champion: champion.as_ref(),
                    cancel: &cancel2,
                    progress: &progress,
                };
                let t0 = Instant::now();
                let out = train::train(&data, &inputs)?;
                Ok((out, t0.elapsed()))
            },
        )
        .await
        .map_err(|e| TrainError::Internal(format!("training task failed: {e}")))?;
        let (out, fit_time) = outcome?;
        if cancel.load(Ordering::Relaxed) {
            return Err(TrainError::Cancelled("before registering".into()));
        }

        // Register: from here on the job is not cancellable.
        tx.send_modify(|j| {
            j.set_progress(Progress::stage(
                Stage::Registering,
                97.0,
                "registering the version",
            ))
        });
        let id = tx.borrow().id.clone();
        let sha = hex::encode(sha2::Digest::finalize(
            <sha2::Sha256 as sha2::Digest>::new_with_prefix(&out.bytes),
        ));
        let mut metrics = out.metrics.clone();
        metrics.insert("train_seconds".into(), fit_time.as_secs_f64());
        let r = &spec.recipe;
        let mut params = out.params.clone();
        params.insert("algorithm".into(), r.algorithm.name().into());
        params.insert("target".into(), r.target.clone());
        params.insert("seed".into(), r.seed.to_string());
        params.insert("test_fraction".into(), r.test_fraction.to_string());
        params.insert("cv_folds".into(), r.cv_folds.to_string());
        params.insert("metric".into(), r.metric.clone());
        params.insert("stratify".into(), r.stratify.to_string());
        let mut tags = spec.tags.clone();
        tags.insert("evergreen.job".into(), id.clone());
        if let Some(c) = &out.confusion {
            tags.insert(
                "evergreen.confusion_matrix".into(),
                serde_json::to_string(c).expect("json"),
            );
        }
        if out.search.len() > 1 {
            tags.insert(
                "evergreen.search".into(),
                serde_json::to_string(&out.search).expect("json"),
            );
        }
        if let Some(g) = &out.gate {
            tags.insert(
                "evergreen.gate".into(),
                serde_json::to_string(g).expect("json"),
            );
        }
        let version = self
            .registry
            .register(
                NewVersion {
                    model: &spec.model,
                    artifact: &out.bytes,
                    sha256: &sha,
                    schema: &out.model.schema,
                    params: params.clone(),
                    metrics: metrics.clone(),
                    tags,
                    lineage: pb::Lineage {
                        run_id: id.clone(),
                        dataset_sha256: out.model.training.dataset_sha256.clone(),
                        dataset_uri: spec.dataset_uri.clone(),
                        parent_version: out.gate.as_ref().map_or(0, |g| g.champion_version),
                        producer: PRODUCER.to_string(),
                    },
                    description: spec.description.clone(),
                    reason: if spec.reason.is_empty() {
                        format!("trained by {id}")
                    } else {
                        spec.reason.clone()
                    },
                },
                &actor,
            )
            .await?;
        let mut gate = out.gate.clone();
        if let Some(g) = gate.as_mut().filter(|g| g.promote) {
            let expected = (g.champion_version > 0).then_some(g.champion_version);
            let moved = self
                .registry
                .move_alias(
                    &spec.model,
                    &g.alias,
                    version.version,
                    expected,
                    format!("{id}: {}", g.reason),
                    &actor,
                )
                .await?;
            if !moved {
                g.promote = false;
                g.reason = format!(
                    "{}; but {}@{} moved meanwhile, so it was left alone",
                    g.reason, spec.model, g.alias
                );
            }
        }
        tx.send_modify(|j| {
            j.version = version.version;
            j.metrics = metrics;
            j.params = params;
            j.artifact_sha256 = sha;
            j.gate = gate;
        });
        Ok(())
    }
}

impl Jobs {
    /// The dataset `at` (model/version) was trained on, from its lineage,
    /// if it is still there.
    async fn own_training_data(
        &self,
        at: &str,
        lineage: pb::Lineage,
    ) -> Result<String, TrainError> {
        let uri = lineage.dataset_uri;
        if uri.is_empty() {
            return Err(TrainError::FailedPrecondition(format!(
                "{at} records no training data (its lineage has no dataset_uri); pass dataset_uri"
            )));
        }
        let gone = |why: &str| {
            TrainError::FailedPrecondition(format!(
                "the training data of {at}, {uri}, {why}; pass dataset_uri"
            ))
        };
        match spec::dataset_source(&uri) {
            Ok(Source::Local(p)) if p.is_file() => Ok(uri.clone()),
            Ok(Source::Local(_)) => Err(gone("no longer exists")),
            Ok(Source::S3(o)) => match self.s3_size(&o).await {
                Ok(_) => Ok(uri.clone()),
                Err(TrainError::NotFound(_)) => Err(gone("no longer exists")),
                Err(e) => Err(e),
            },
            Err(_) => Err(gone("is not a local file or an s3:// object")),
        }
    }
}

async fn wait_flag(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub fn selection(r: &Recipe) -> Selection {
    Selection {
        target: r.target.clone(),
        classification: r.algorithm.is_classifier(),
        features: r.features.clone(),
        exclude: r.exclude.clone(),
        categorical: r.categorical.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trainer killed mid-job (no graceful shutdown) leaves a RUNNING
    /// record; the next start reports it FAILED.
    /// A running job record of model "m" at `progress`.
    fn running_record(progress: Progress) -> JobRecord {
        JobRecord {
            id: "job-1".into(),
            state: JobState::Running,
            model: "m".into(),
            version: 0,
            metrics: BTreeMap::new(),
            params: BTreeMap::new(),
            error: String::new(),
            error_code: String::new(),
            request: RawRequest::default(),
            progress,
            stages: Vec::new(),
            artifact_sha256: String::new(),
            gate: None,
            created_ms: now_ms(),
            finished_ms: 0,
            actor: "t".into(),
            started: None,
        }
    }

    #[test]
    fn a_job_remembers_each_stage_it_entered_once_with_its_first_message() {
        let mut j = running_record(Progress::stage(Stage::Queued, 0.0, "queued"));
        j.set_progress(Progress::stage(Stage::Fitting, 10.0, "tree 1 of 100"));
        j.set_progress(Progress::stage(Stage::Fitting, 50.0, "tree 50 of 100"));
        j.set_progress(Progress::stage(Stage::Comparing, 95.0, "against v1"));
        j.set_progress(Progress::stage(Stage::Registering, 97.0, "registering"));
        let seen: Vec<(Stage, &str)> = j
            .stages
            .iter()
            .map(|p| (p.stage, p.message.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (Stage::Fitting, "tree 1 of 100"),
                (Stage::Comparing, "against v1"),
                (Stage::Registering, "registering"),
            ]
        );
        assert_eq!(j.progress.message, "registering");
    }

    /// `trainer.dataset_dirs`: a Train request may read only regular files
    /// inside them (after resolving `..` and symlinks) or the trainer's own
    /// data dir; anything else is refused before a job exists.
    #[tokio::test]
    async fn datasets_outside_dataset_dirs_devices_and_fifos_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("datasets");
        let outside = root.path().join("private");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let csv = "a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,1,0\n";
        std::fs::write(allowed.join("ok.csv"), csv).unwrap();
        std::fs::write(outside.join("secret.csv"), "password,y\nhunter2,1\n").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.csv"), allowed.join("link.csv")).unwrap();
        let registry = Registry::connect_lazy(&Default::default(), "http://127.0.0.1:1").unwrap();
        let dirs = vec![std::fs::canonicalize(&allowed).unwrap()];
        let jobs = Jobs::open(
            &root.path().join("data"),
            registry.clone(),
            1,
            8,
            Default::default(),
            dirs,
        )
        .unwrap();
        let submit = |uri: String| {
            let jobs = jobs.clone();
            async move {
                jobs.submit(
                    RawRequest {
                        model: "m".into(),
                        dataset_uri: uri,
                        target: "y".into(),
                        ..Default::default()
                    },
                    "test",
                )
                .await
            }
        };
        let denied = |uri: &str| {
            format!(
                "dataset {uri} is outside the directories this trainer may read (trainer.dataset_dirs); put it under one of them or use s3://"
            )
        };
        for uri in [
            outside.join("secret.csv").display().to_string(),
            allowed.join("../private/secret.csv").display().to_string(),
            allowed.join("link.csv").display().to_string(),
            format!("file://{}", outside.join("secret.csv").display()),
        ] {
            let e = submit(uri.clone()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{uri}: {e}");
            let shown = uri.strip_prefix("file://").unwrap_or(&uri);
            assert_eq!(e.to_string(), denied(shown));
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        // Not a regular file: a device that never ends, a FIFO that would
        // block a thread, a directory. Refused with or without the dirs.
        let fifo = allowed.join("fifo.csv");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let open = Jobs::open(
            &root.path().join("data2"),
            registry,
            1,
            8,
            Default::default(),
            Vec::new(),
        )
        .unwrap();
        for j in [&jobs, &open] {
            for p in [Path::new("/dev/zero"), &fifo, &allowed] {
                let e = j
                    .submit(
                        RawRequest {
                            model: "m".into(),
                            dataset_uri: p.display().to_string(),
                            target: "y".into(),
                            ..Default::default()
                        },
                        "test",
                    )
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
                assert_eq!(
                    e.to_string(),
                    format!(
                        "dataset {} is not a regular file; expected a CSV file",
                        p.display()
                    )
                );
            }
        }
        // Inside the dirs (also through `..` that stays inside): accepted,
        // and errors name the file as the caller did.
        let job = submit(allowed.join("ok.csv").display().to_string())
            .await
            .unwrap();
        assert_eq!(job.state, JobState::Queued);
        let given = allowed.join("../datasets/ok.csv").display().to_string();
        let mut bad = RawRequest {
            model: "m".into(),
            dataset_uri: given.clone(),
            target: "nope".into(),
            ..Default::default()
        };
        let e = jobs.submit(bad.clone(), "test").await.unwrap_err();
        assert!(
            e.to_string().contains(&format!("is not in {given} ")),
            "{e}"
        );
        // No dirs set: any readable regular file, as before.
        bad.dataset_uri = outside.join("secret.csv").display().to_string();
        bad.target = "y".into();
        assert_eq!(
            open.submit(bad, "test").await.unwrap().state,
            JobState::Queued
        );
    }

    /// Jobs waiting for a training slot are capped by
    /// `trainer.max_queued_jobs`; a slot freed lets the next one in.
    #[tokio::test]
    async fn jobs_beyond_max_queued_jobs_are_resource_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("d.csv");
        std::fs::write(&csv, "a,y\n1,0\n2,1\n3,0\n4,1\n").unwrap();
        let registry = Registry::connect_lazy(&Default::default(), "http://127.0.0.1:1").unwrap();
        let jobs = Jobs::open(
            &dir.path().join("data"),
            registry,
            1,
            2,
            Default::default(),
            Vec::new(),
        )
        .unwrap();
        // The only training slot is taken: every job waits QUEUED.
        let _slot = jobs.permits.clone().acquire_owned().await.unwrap();
        let raw = RawRequest {
            model: "m".into(),
            dataset_uri: csv.display().to_string(),
            target: "y".into(),
            ..Default::default()
        };
        let first = jobs.submit(raw.clone(), "test").await.unwrap();
        jobs.submit(raw.clone(), "test").await.unwrap();
        let e = jobs.submit(raw.clone(), "test").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        assert_eq!(
            e.to_string(),
            "2 jobs are already waiting for a training slot, the limit set by trainer.max_queued_jobs (EVERGREEN_TRAINER__MAX_QUEUED_JOBS); retry when one has started, or cancel one"
        );
        assert_eq!(jobs.live_counts(), (2, 0), "the refused call made no job");
        jobs.cancel(&first.id, "test").unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while jobs.live_counts().0 > 1 {
            assert!(Instant::now() < deadline, "the cancelled job never left");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(
            jobs.submit(raw, "test").await.unwrap().state,
            JobState::Queued
        );
    }

    #[tokio::test]
    async fn jobs_interrupted_by_a_crash_read_as_failed_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::connect_lazy(&Default::default(), "http://127.0.0.1:1").unwrap();
        {
            let jobs = Jobs::open(
                dir.path(),
                registry.clone(),
                1,
                8,
                Default::default(),
                Vec::new(),
            )
            .unwrap();
            let job = JobRecord {
                id: "job-000007".into(),
                ..running_record(Progress::stage(Stage::Fitting, 70.0, "tree 50 of 100"))
            };
            jobs.save(&job);
        }
        let jobs = Jobs::open(dir.path(), registry, 1, 8, Default::default(), Vec::new()).unwrap();
        let j = jobs.get("job-000007").unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert!(
            j.error
                .contains("stopped while this job was queued or running"),
            "{}",
            j.error
        );
        assert_eq!(j.error_code, "ABORTED");
        assert!(matches!(jobs.get("job-1"), Err(TrainError::NotFound(_))));
    }
}
