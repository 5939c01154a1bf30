//! What the serve, promote and memory sections share: the forest both
//! sides serve (trained once per run on the same split), an in-process
//! registry, the real `evergreen-server` binary as a child process, the
//! seed's gunicorn stack as child processes, a closed-loop gRPC load
//! generator, and resident-memory readings from /proc.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use evergreen_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use evergreen_proto::inference::model_infer_request::InferInputTensor;
use evergreen_proto::inference::ModelInferRequest;
use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    register_version_request::Part, value, CreateModelRequest, ListServedRequest, PredictRequest,
    RegisterVersionRequest, SetAliasRequest, Value, VersionHeader,
};
use evergreen_runtime::tonic_health::pb::health_client::HealthClient;
use evergreen_runtime::tonic_health::pb::HealthCheckRequest;
use evergreen_trainer::data::{self, Selection};
use evergreen_trainer::spec::RawRequest;
use evergreen_trainer::train::{self, Inputs};
use tonic::transport::Channel;

use crate::baseline::Python;
use crate::ctx::Ctx;
use crate::stats::percentile;

/// The data set every serving comparison uses.
pub const DATASET: &str = "synth_100000.csv";

/// Rows kept from the data set in a smoke run (none dropped otherwise).
pub fn limit(ctx: &Ctx) -> Option<usize> {
    ctx.smoke.then_some(2000)
}

/// Forest size: 100 trees, 10 in a smoke run.
pub fn n_trees(ctx: &Ctx) -> usize {
    ctx.size(100, 10)
}

/// A forest trained by the trainer library on the split's train file.
pub struct Forest {
    /// The artifact, as the registry stores it.
    pub bytes: Vec<u8>,
    pub train_secs: f64,
}

/// The first row of the test file, features only (the row every single-row
/// request sends, on both sides).
pub struct Probe {
    pub values: Vec<f64>,
    /// The values as written in the CSV (for wrk's JSON body).
    pub text: Vec<String>,
}

impl Probe {
    pub fn read(test_csv: &Path) -> anyhow::Result<Probe> {
        let f = std::fs::File::open(test_csv)?;
        let mut lines = BufReader::new(f).lines();
        let header = lines.next().context("empty test file")??;
        let first = lines.next().context("test file has no rows")??;
        let mut text = Vec::new();
        for (n, v) in header.split(',').zip(first.split(',')) {
            if n.trim() != "target" {
                text.push(v.trim().to_string());
            }
        }
        let values = text
            .iter()
            .map(|t| {
                t.parse::<f64>()
                    .with_context(|| format!("{t:?} is not a number"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Probe { values, text })
    }

    pub fn row(&self) -> evergreen_proto::v1::Row {
        evergreen_proto::v1::Row {
            values: self
                .values
                .iter()
                .map(|x| Value {
                    kind: Some(value::Kind::Number(*x)),
                })
                .collect(),
            named: Default::default(),
        }
    }

    /// A V2 request: one FP64 tensor `[1, features]`, typed contents.
    pub fn infer(&self, model: &str) -> ModelInferRequest {
        ModelInferRequest {
            model_name: model.into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP64".into(),
                shape: vec![1, self.values.len() as i64],
                contents: Some(evergreen_proto::inference::InferTensorContents {
                    fp64_contents: self.values.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }
}

static FORESTS: OnceLock<Mutex<HashMap<u64, Arc<Forest>>>> = OnceLock::new();

/// The forest for `seed`, trained on first use and kept for the run (the
/// serve, promote and memory sections share it).
pub async fn forest(ctx: &Ctx, seed: u64) -> anyhow::Result<Arc<Forest>> {
    let cache = FORESTS.get_or_init(Default::default);
    if let Some(f) = cache.lock().unwrap().get(&seed) {
        return Ok(f.clone());
    }
    let split = ctx.split(DATASET, limit(ctx))?;
    let trees = n_trees(ctx);
    let path = split.train.clone();
    eprintln!(
        "  training the {trees}-tree forest (seed {seed}) on {} rows with the trainer library",
        split.n_train
    );
    let f = tokio::task::spawn_blocking(move || -> anyhow::Result<Forest> {
        let d = data::load(
            &path,
            &Selection {
                target: "target".into(),
                classification: true,
                ..Default::default()
            },
        )?;
        let spec = RawRequest {
            model: "bench".into(),
            dataset_uri: path.display().to_string(),
            target: "target".into(),
            algorithm: "random_forest".into(),
            params: [("n_trees".to_string(), trees.to_string())].into(),
            seed,
            ..Default::default()
        }
        .validate()?;
        let cancel = AtomicBool::new(false);
        let inputs = Inputs {
            recipe: &spec.recipe,
            recipe_json: String::new(),
            gate: None,
            champion: None,
            cancel: &cancel,
            progress: &|_| {},
        };
        let t = Instant::now();
        let out = train::train(&d, &inputs)?;
        Ok(Forest {
            bytes: out.bytes,
            train_secs: t.elapsed().as_secs_f64(),
        })
    })
    .await??;
    let f = Arc::new(f);
    cache.lock().unwrap().insert(seed, f.clone());
    Ok(f)
}

/// The baseline's forest: `fit_forest.py` on the same train file, same tree
/// count, saved with joblib (once per run).
pub fn joblib_forest(ctx: &Ctx, py: &Python) -> anyhow::Result<(PathBuf, serde_json::Value)> {
    static FIT: OnceLock<Mutex<Option<(PathBuf, serde_json::Value)>>> = OnceLock::new();
    let cell = FIT.get_or_init(Default::default);
    let mut g = cell.lock().unwrap();
    if let Some(x) = g.as_ref() {
        return Ok(x.clone());
    }
    let split = ctx.split(DATASET, limit(ctx))?;
    let out = ctx.work.join("forest.joblib");
    eprintln!(
        "  fitting the scikit-learn forest ({} trees) on {} rows",
        n_trees(ctx),
        split.n_train
    );
    let v = py.run_json(
        "fit_forest.py",
        &[
            "--train",
            &split.train.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--n-trees",
            &n_trees(ctx).to_string(),
        ],
    )?;
    *g = Some((out.clone(), v.clone()));
    Ok((out, v))
}

pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect to {addr}"))
}

pub async fn channels(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(connect(addr).await?);
    }
    Ok(v)
}

/// The registry daemon in this process (its own `run` on 127.0.0.1:0, sled
/// under the run's scratch dir); stopped when dropped.
pub struct Registry {
    pub url: String,
    pub client: RegistryClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Registry {
    pub async fn start(ctx: &Ctx, tag: &str) -> anyhow::Result<Registry> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let config = evergreen_registry::RegistryConfig {
            metrics_listen: String::new(),
            data_dir: ctx.work.join(format!("registry-{tag}")),
            shutdown_grace_seconds: 1,
            shutdown_delay_ms: 0,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            if let Err(e) = evergreen_registry::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            {
                eprintln!("bench registry stopped: {e:#}");
            }
        });
        Ok(Registry {
            url: format!("http://{addr}"),
            client: RegistryClient::new(connect(&addr).await?),
            _stop: tx,
        })
    }

    /// Registers `bytes` as a new version of `model` (created if needed).
    pub async fn register(&mut self, model: &str, bytes: &[u8]) -> anyhow::Result<u64> {
        let mut msgs = vec![RegisterVersionRequest {
            part: Some(Part::Header(VersionHeader {
                model: model.into(),
                ..Default::default()
            })),
        }];
        msgs.extend(bytes.chunks(1 << 20).map(|c| RegisterVersionRequest {
            part: Some(Part::Chunk(c.to_vec())),
        }));
        if let Err(s) = self
            .client
            .create_model(CreateModelRequest {
                name: model.into(),
                ..Default::default()
            })
            .await
        {
            ensure!(
                s.code() == tonic::Code::AlreadyExists,
                "create model {model}: {s}"
            );
        }
        Ok(self
            .client
            .register_version(tokio_stream::iter(msgs))
            .await
            .with_context(|| format!("register a version of {model}"))?
            .into_inner()
            .version)
    }

    /// Points `model@production` at `version`; returns when acknowledged.
    pub async fn promote(&mut self, model: &str, version: u64) -> anyhow::Result<()> {
        self.client
            .set_alias(SetAliasRequest {
                model: model.into(),
                alias: "production".into(),
                version,
                ..Default::default()
            })
            .await
            .with_context(|| format!("set {model}@production to {version}"))?;
        Ok(())
    }
}

/// The release `evergreen-server` binary as a child process (its memory is
/// its own), killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(ctx: &Ctx, registry_url: &str) -> anyhow::Result<Server> {
        let mut child = Command::new(ctx.bin("evergreen-server")?)
            .args(["--listen", "127.0.0.1:0", "--registry", registry_url])
            .env("EVERGREEN_LOG", "warn")
            .env("EVERGREEN_SERVER__METRICS_LISTEN", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start evergreen-server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        let Some(addr) = line
            .trim()
            .strip_prefix("evergreen-server listening on ")
            .map(str::to_string)
        else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("evergreen-server printed {line:?} instead of its address");
        };
        Ok(Server { child, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the server is ready and serves a production version of
    /// `models` models.
    pub async fn wait_loaded(&self, models: usize) -> anyhow::Result<()> {
        let mut p = PredictorClient::new(connect(&self.addr).await?);
        let t = Instant::now();
        loop {
            let r = p.list_served(ListServedRequest {}).await?.into_inner();
            if r.ready && r.models.iter().filter(|m| !m.versions.is_empty()).count() >= models {
                return Ok(());
            }
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "evergreen-server did not load {models} model(s) within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The seed's stack: gunicorn (2 sync workers) serving `serve_app:app`,
/// on a free port; stopped (master and workers) when dropped.
pub struct Gunicorn {
    child: Child,
    pub port: u16,
}

impl Gunicorn {
    /// `models`: (name, joblib path); one model uses `MODEL_PATH`, several
    /// `MODEL_PATHS` (routes `/predict/NAME`).
    pub fn start(py: &Python, models: &[(String, PathBuf)]) -> anyhow::Result<Gunicorn> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(py.bin_dir().join("gunicorn"));
        cmd.args(["-w", "2", "-b", &format!("127.0.0.1:{port}"), "--chdir"])
            .arg(&py.scripts)
            .arg("serve_app:app")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match models {
            [(_, path)] => {
                cmd.env("MODEL_PATH", path);
            }
            _ => {
                let list: Vec<String> = models
                    .iter()
                    .map(|(n, p)| format!("{n}={}", p.display()))
                    .collect();
                cmd.env("MODEL_PATHS", list.join(","));
            }
        }
        let child = cmd.spawn().context("start gunicorn")?;
        let mut g = Gunicorn { child, port };
        let t = Instant::now();
        loop {
            if http_get_ok(port, "/ping") {
                // Both workers import the app (and load the models) on
                // their own; wait until both exist and answer.
                let workers = children(g.child.id()).len();
                if workers >= 2 {
                    std::thread::sleep(Duration::from_millis(200));
                    if (0..4).all(|_| http_get_ok(port, "/ping")) {
                        return Ok(g);
                    }
                }
            }
            if let Some(st) = g.child.try_wait()? {
                bail!("gunicorn exited before serving ({st}); run it by hand to see why");
            }
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "gunicorn did not answer GET /ping on port {port} within 120 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        let pid = self.child.id();
        let workers = children(pid);
        signal("TERM", pid);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for w in workers {
            if Path::new(&format!("/proc/{w}")).exists() {
                signal("KILL", w);
            }
        }
    }
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A plain HTTP/1.0 GET on loopback: true on a 200.
fn http_get_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

/// The direct children of `pid` (from /proc/*/stat).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// VmRSS of one process, MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Proportional set size of one process (pages shared with other
/// processes divided among them), MiB, from /proc/PID/smaps_rollup.
pub fn pss_mib(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    s.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .with_context(|| format!("no Pss in /proc/{pid}/smaps_rollup"))
}

/// PSS of `pid` plus its direct children, MiB.
pub fn tree_pss_mib(pid: u32) -> anyhow::Result<f64> {
    let mut total = pss_mib(pid)?;
    for c in children(pid) {
        total += pss_mib(c).unwrap_or(0.0);
    }
    Ok(total)
}

/// VmRSS of `pid` plus its direct children (gunicorn's master and workers),
/// MiB, and how many processes were summed.
pub fn tree_rss_mib(pid: u32) -> anyhow::Result<(f64, usize)> {
    let mut total = rss_mib(pid)?;
    let kids = children(pid);
    for c in &kids {
        total += rss_mib(*c).unwrap_or(0.0);
    }
    Ok((total, 1 + kids.len()))
}

/// One closed-loop gRPC measurement.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Kind {
    /// grpc.health.v1 Check: the floor any unary RPC pays.
    Empty,
    /// evergreen.v1.Predictor/Predict, one row.
    Predict,
    /// inference.GRPCInferenceService/ModelInfer, one row.
    V2,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadStats {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// `concurrency` callers in a closed loop over `chans` (caller i uses
/// channel i mod n) for `warmup` + `secs`; samples from the warm-up are
/// dropped.
pub async fn load(
    chans: &[Channel],
    concurrency: usize,
    warmup: Duration,
    secs: Duration,
    kind: Kind,
    probe: &Probe,
    model: &str,
) -> LoadStats {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let begin = Instant::now() + warmup;
    let row = probe.row();
    let infer = probe.infer(model);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let ch = chans[w % chans.len()].clone();
        let (stop, errors, row, infer, model) = (
            stop.clone(),
            errors.clone(),
            row.clone(),
            infer.clone(),
            model.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(65_536);
            let mut health = HealthClient::new(ch.clone());
            let mut pred = PredictorClient::new(ch.clone());
            let mut v2 = GrpcInferenceServiceClient::new(ch);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                let ok = match kind {
                    Kind::Empty => health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok(),
                    Kind::Predict => pred
                        .predict(PredictRequest {
                            model: model.clone(),
                            rows: vec![row.clone()],
                            request_id: format!("{w}-{i}"),
                        })
                        .await
                        .is_ok_and(|r| r.get_ref().predictions.len() == 1),
                    Kind::V2 => v2
                        .model_infer(infer.clone())
                        .await
                        .is_ok_and(|r| !r.get_ref().raw_output_contents.is_empty()),
                };
                if t >= begin {
                    lat.push(t.elapsed());
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(warmup).await;
    let start = Instant::now();
    tokio::time::sleep(secs).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort();
    LoadStats {
        requests: all.len() as u64,
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&all, 0.5).as_secs_f64() * 1e3,
        p99_ms: percentile(&all, 0.99).as_secs_f64() * 1e3,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// wrk against the seed's stack: single-row POSTs of `probe` to `url`, one
/// wrk thread per core (at most one per connection), `c` keep-alive
/// connections; wrk.lua's JSON line.
pub fn wrk(
    py: &Python,
    url: &str,
    c: usize,
    secs: Duration,
    probe: &Probe,
) -> anyhow::Result<serde_json::Value> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = cores.min(c).max(1);
    let d = secs.as_secs_f64().round().max(1.0) as u64;
    let out = Command::new("wrk")
        .args([
            format!("-t{threads}"),
            format!("-c{c}"),
            format!("-d{d}s"),
            "--latency".into(),
            "-s".into(),
        ])
        .arg(py.scripts.join("wrk.lua"))
        .arg(url)
        .env("WRK_ROW", probe.text.join(","))
        .stderr(Stdio::inherit())
        .output()
        .context("run wrk")?;
    ensure!(out.status.success(), "wrk failed ({})", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rfind(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("wrk printed no JSON line: {stdout}"))?;
    Ok(serde_json::from_str(last)?)
}

/// wrk's figures as [`LoadStats`] (errors = socket errors + non-2xx/3xx).
pub fn wrk_stats(v: &serde_json::Value) -> anyhow::Result<LoadStats> {
    let n = |p: &str| crate::baseline::num(v, p);
    let errors = ["connect", "read", "write", "status", "timeout"]
        .iter()
        .map(|k| n(&format!("/errors/{k}")).unwrap_or(0.0))
        .sum::<f64>();
    Ok(LoadStats {
        requests: n("/requests")? as u64,
        rps: n("/rps")?,
        p50_ms: n("/p50_us")? / 1e3,
        p99_ms: n("/p99_us")? / 1e3,
        errors: errors as u64,
    })
}
