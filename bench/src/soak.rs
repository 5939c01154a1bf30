//! bench-soak: the whole stack (`evergreen up`, one process) under mixed
//! load for a long run — predictions from closed-loop callers, delayed
//! labels for them, a promotion every 30 s and a training job every 2 min —
//! sampled every interval: requests, errors, latency, and the stack's
//! resident memory. The baseline is the run itself: latency drift is the
//! last fifth's mean p99 over the second fifth's (the first fifth is
//! warm-up), memory growth the same ratio of mean RSS.
//!
//! Not a CI test: `just bench-soak` runs 10 minutes (CI runs `--secs 20`
//! to keep it working).

#[allow(dead_code)] // median is bench-compare's
#[path = "stats.rs"]
mod stats;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use evergreen_proto::v1::monitor_client::MonitorClient;
use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::trainer_client::TrainerClient;
use evergreen_proto::v1::{
    train_event, value, Feedback, PredictRequest, RecordFeedbackRequest, Row, SetAliasRequest,
    TrainRequest, Value,
};
use tonic::transport::Channel;

use crate::stats::{ms, percentile};

#[derive(Parser)]
#[command(
    about = "The whole stack under mixed load for a long run: errors, latency drift, memory growth"
)]
struct Args {
    /// Length of the measured run, in seconds.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Seconds per sample (a row of the table).
    #[arg(long, default_value_t = 30)]
    interval: u64,
    /// Closed-loop prediction callers.
    #[arg(long, default_value_t = 4)]
    callers: usize,
    /// Where to write the report (markdown); "-" = stdout only.
    #[arg(long, default_value = "bench/SOAK.md")]
    out: String,
}

const MODEL: &str = "soak";

/// One sample of the run.
#[derive(Default, Clone)]
struct Sample {
    at_secs: f64,
    requests: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mib: f64,
    promotions: u64,
    trainings: u64,
    feedback: u64,
}

/// What the load tasks share.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    promotions: AtomicU64,
    trainings: AtomicU64,
    feedback: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
    /// (request id, true label) of answered predictions, for feedback.
    answered: Mutex<VecDeque<(String, String)>>,
    /// Failures, with what failed (printed at the end).
    failures: Mutex<Vec<String>>,
}

impl Counters {
    fn fail(&self, what: &str, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(format!("{what}: {e}"));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The `evergreen` binary next to this one (`cargo build --release --bins`).
fn evergreen_bin() -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name("evergreen");
    if !p.is_file() {
        bail!(
            "{} is missing: build it first (cargo build --release --bins; just bench-soak does)",
            p.display()
        );
    }
    Ok(p)
}

/// Rows of the data set: (features, label).
fn load_rows(csv: &Path) -> anyhow::Result<Vec<(Vec<f64>, String)>> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("read {}", csv.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty csv")?.split(',').collect();
    let target = header
        .iter()
        .position(|h| *h == "target")
        .context("no target column")?;
    let mut rows = Vec::new();
    for l in lines {
        let cells: Vec<&str> = l.split(',').collect();
        let mut x = Vec::new();
        for (i, c) in cells.iter().enumerate() {
            if i != target {
                x.push(c.parse::<f64>()?);
            }
        }
        rows.push((x, cells[target].to_string()));
    }
    Ok(rows)
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

async fn connect(port: u16) -> anyhow::Result<Channel> {
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Channel::from_shared(url.clone())?.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => bail!("{url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn train(t: &mut TrainerClient<Channel>, csv: &Path, seed: u64) -> anyhow::Result<u64> {
    let mut s = t
        .train(TrainRequest {
            model: MODEL.into(),
            dataset_uri: csv.display().to_string(),
            target: "target".into(),
            algorithm: "decision_tree".into(),
            seed,
            ..Default::default()
        })
        .await?
        .into_inner();
    while let Some(ev) = s.message().await? {
        match ev.kind {
            Some(train_event::Kind::Done(j)) if j.version > 0 => return Ok(j.version),
            Some(train_event::Kind::Done(j)) => bail!("training failed: {}", j.error),
            _ => {}
        }
    }
    bail!("the training stream ended without a result")
}

async fn set_production(r: &mut RegistryClient<Channel>, v: u64) -> anyhow::Result<()> {
    r.set_alias(SetAliasRequest {
        model: MODEL.into(),
        alias: "production".into(),
        version: v,
        ..Default::default()
    })
    .await?;
    Ok(())
}

struct Stack {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let csv = std::fs::canonicalize(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/breast_cancer.csv"),
    )?;
    let rows = Arc::new(load_rows(&csv)?);
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(evergreen_bin()?);
    cmd.args(["up", "--data-dir"])
        .arg(dir.path())
        .env("EVERGREEN_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (d, p) in ["REGISTRY", "TRAINER", "SERVER", "MONITOR"]
        .iter()
        .zip(&ports)
    {
        cmd.env(format!("EVERGREEN_{d}__LISTEN"), format!("127.0.0.1:{p}"))
            .env(format!("EVERGREEN_{d}__METRICS_LISTEN"), "");
    }
    let stack = Stack {
        child: cmd.spawn().context("start evergreen up")?,
        _dir: dir,
    };
    let pid = stack.child.id();
    let registry = connect(ports[0]).await?;
    let trainer = connect(ports[1]).await?;
    let server = connect(ports[2]).await?;
    let monitor = connect(ports[3]).await?;

    // Two versions to move production between; v1 serves first.
    let mut t = TrainerClient::new(trainer);
    let v1 = train(&mut t, &csv, 1).await?;
    let v2 = train(&mut t, &csv, 2).await?;
    let mut reg = RegistryClient::new(registry);
    set_production(&mut reg, v1).await?;
    let mut p = PredictorClient::new(server.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while p
        .predict(PredictRequest {
            model: MODEL.into(),
            rows: vec![to_row(&rows[0].0)],
            request_id: String::new(),
        })
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the server never served {MODEL}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "bench-soak: stack up (pid {pid}), {MODEL} v{v1}/v{v2}; {} s of load, a sample every {} s",
        args.secs, args.interval
    );

    let c = Arc::new(Counters::default());
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let seq = Arc::new(AtomicU64::new(0));
    for _ in 0..args.callers {
        let (c, done, rows, seq) = (c.clone(), done.clone(), rows.clone(), seq.clone());
        let mut p = PredictorClient::new(server.clone());
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let (x, label) = &rows[n as usize % rows.len()];
                let id = format!("soak-{n}");
                let t0 = Instant::now();
                let r = p
                    .predict(PredictRequest {
                        model: MODEL.into(),
                        rows: vec![to_row(x)],
                        request_id: id.clone(),
                    })
                    .await;
                let took = t0.elapsed();
                c.requests.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(_) => {
                        c.latencies.lock().unwrap().push(took);
                        let mut a = c.answered.lock().unwrap();
                        if a.len() < 100_000 {
                            a.push_back((id, label.clone()));
                        }
                    }
                    Err(e) => c.fail("predict", e),
                }
            }
        }));
    }
    // Delayed labels: every second, the labels of what was answered.
    {
        let (c, done) = (c.clone(), done.clone());
        let mut m = MonitorClient::new(monitor);
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let batch: Vec<Feedback> = {
                    let mut a = c.answered.lock().unwrap();
                    let n = a.len().min(5000);
                    a.drain(..n)
                        .map(|(request_id, label)| Feedback {
                            request_id,
                            label,
                            ..Default::default()
                        })
                        .collect()
                };
                if batch.is_empty() {
                    continue;
                }
                let n = batch.len() as u64;
                match m
                    .record_feedback(RecordFeedbackRequest { feedback: batch })
                    .await
                {
                    Ok(_) => {
                        c.feedback.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => c.fail("feedback", e),
                }
            }
        }));
    }
    // A promotion every 30 s (production flips between v1 and v2).
    {
        let (c, done) = (c.clone(), done.clone());
        let mut reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            let mut to = v2;
            let mut next = Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if Instant::now() < next {
                    continue;
                }
                next += Duration::from_secs(30);
                match set_production(&mut reg, to).await {
                    Ok(()) => {
                        c.promotions.fetch_add(1, Ordering::Relaxed);
                        to = if to == v1 { v2 } else { v1 };
                    }
                    Err(e) => c.fail("promote", e),
                }
            }
        }));
    }
    // A training job every 2 minutes (registered, not promoted).
    {
        let (c, done, csv) = (c.clone(), done.clone(), csv.clone());
        tasks.push(tokio::spawn(async move {
            let mut seed = 10;
            let mut next = Instant::now() + Duration::from_secs(10);
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if Instant::now() < next {
                    continue;
                }
                next += Duration::from_secs(120);
                seed += 1;
                match train(&mut t, &csv, seed).await {
                    Ok(_) => {
                        c.trainings.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => c.fail("train", e),
                }
            }
        }));
    }

    let start = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut last = Sample::default();
    let interval = Duration::from_secs(args.interval.max(1));
    while start.elapsed() < Duration::from_secs(args.secs) {
        tokio::time::sleep(
            interval.min(
                Duration::from_secs(args.secs)
                    .saturating_sub(start.elapsed())
                    .max(Duration::from_millis(1)),
            ),
        )
        .await;
        let mut lat = std::mem::take(&mut *c.latencies.lock().unwrap());
        lat.sort();
        let now = Sample {
            at_secs: start.elapsed().as_secs_f64(),
            requests: c.requests.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            p50_ms: ms(percentile(&lat, 0.5)),
            p99_ms: ms(percentile(&lat, 0.99)),
            rss_mib: rss_mib(pid),
            promotions: c.promotions.load(Ordering::Relaxed),
            trainings: c.trainings.load(Ordering::Relaxed),
            feedback: c.feedback.load(Ordering::Relaxed),
        };
        let row = Sample {
            requests: now.requests - last.requests,
            errors: now.errors - last.errors,
            promotions: now.promotions - last.promotions,
            trainings: now.trainings - last.trainings,
            feedback: now.feedback - last.feedback,
            ..now.clone()
        };
        eprintln!(
            "  {:>6.0} s  {:>8} req  {:>3} err  p50 {:>6.2} ms  p99 {:>6.2} ms  rss {:>6.1} MiB",
            row.at_secs, row.requests, row.errors, row.p50_ms, row.p99_ms, row.rss_mib
        );
        samples.push(row);
        last = now;
    }
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    drop(stack);

    let report = render(&args, &samples, &c);
    print!("{report}");
    if args.out != "-" {
        std::fs::write(&args.out, &report).with_context(|| format!("write {}", args.out))?;
        eprintln!("bench-soak: wrote {}", args.out);
    }
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    if errors > 0 {
        bail!("{errors} errors during the soak (goal 0)");
    }
    Ok(())
}

/// Latency drift and memory growth: the last fifth of the samples against
/// the second fifth (the first is warm-up: allocator arenas, sled caches and
/// the monitor's windows filling). Means of p99 and of RSS.
fn summary(samples: &[Sample]) -> (f64, f64, f64, f64) {
    let n = samples.len();
    let fifth = (n / 5).max(1);
    let base = &samples[fifth.min(n - 1)..(2 * fifth).min(n)];
    let tail = &samples[n - fifth..];
    let mean = |v: &[Sample], f: fn(&Sample) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    (
        mean(base, |s| s.p99_ms),
        mean(tail, |s| s.p99_ms),
        mean(base, |s| s.rss_mib),
        mean(tail, |s| s.rss_mib),
    )
}

fn render(args: &Args, samples: &[Sample], c: &Counters) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Soak: the whole stack under mixed load\n");
    let _ = writeln!(
        o,
        "`bench-soak --secs {} --interval {} --callers {}` on {} ({} cores), commit {}.\n",
        args.secs,
        args.interval,
        args.callers,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        git_commit()
    );
    let _ = writeln!(
        o,
        "`evergreen up` (one process: registry, trainer, server, monitor on sled in a temp dir) \
         serves a decision tree on breast_cancer to {} closed-loop Predict callers; every second the \
         monitor gets the true labels of what was answered; production flips between two versions \
         every 30 s (the server hot-swaps); a training job registers a new version every 2 min. \
         RSS is the stack process's, from /proc.\n",
        args.callers
    );
    if samples.is_empty() {
        let _ = writeln!(o, "No samples (run shorter than one interval).");
        return o;
    }
    let (p99_base, p99_tail, rss_base, rss_end) = summary(samples);
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    let requests: u64 = samples.iter().map(|s| s.requests).sum();
    let _ = writeln!(o, "| figure | value | goal | met |\n|---|---|---|---|");
    let _ = writeln!(
        o,
        "| errors (predict, feedback, promote, train) | {errors} of {requests} predictions | 0 | {} |",
        if errors == 0 { "yes" } else { "no" }
    );
    let drift = p99_tail / p99_base;
    let _ = writeln!(
        o,
        "| latency drift: mean p99, last fifth / second fifth | {p99_tail:.2} / {p99_base:.2} ms = {drift:.2}× | ≤ 1.25× | {} |",
        if drift <= 1.25 { "yes" } else { "no" }
    );
    let growth = rss_end / rss_base;
    let _ = writeln!(
        o,
        "| memory growth: mean RSS, last fifth / second fifth | {rss_end:.1} / {rss_base:.1} MiB = {growth:.2}× | ≤ 1.10× (flat) | {} |",
        if growth <= 1.10 { "yes" } else { "no" }
    );
    let _ = writeln!(
        o,
        "\n| t (s) | predictions | errors | p50 ms | p99 ms | RSS MiB | promotions | trainings | labels |\n|---|---|---|---|---|---|---|---|---|"
    );
    for s in samples {
        let _ = writeln!(
            o,
            "| {:.0} | {} | {} | {:.2} | {:.2} | {:.1} | {} | {} | {} |",
            s.at_secs,
            s.requests,
            s.errors,
            s.p50_ms,
            s.p99_ms,
            s.rss_mib,
            s.promotions,
            s.trainings,
            s.feedback
        );
    }
    let failures = c.failures.lock().unwrap();
    if !failures.is_empty() {
        let _ = writeln!(o, "\nFirst failures:\n");
        for f in failures.iter() {
            let _ = writeln!(o, "- {f}");
        }
    }
    o
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
