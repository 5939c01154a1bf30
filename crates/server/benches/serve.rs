//! Serving benchmark: a 100-tree random forest trained on the shared 100k ×
//! 20 set, served by the real `evergreen-server` binary (a child process)
//! from an in-process registry; load generated from this process over
//! loopback gRPC (tonic clients, closed loop, N concurrent callers over
//! min(N, 4) HTTP/2 connections).
//!
//!   cargo bench -p evergreen-server --bench serve
//!
//! Prints: single-row Predict throughput and p50/p99 at concurrency 1, 8, 32
//! next to an empty unary RPC (grpc.health.v1 Check) measured alternately in
//! the same run; promotion-to-serving latency over 50 promotions under load
//! with the failed-request count; resident memory with 1 and 10 models.
//! Env: EVERGREEN_BENCH_DATA, EVERGREEN_BENCH_SECS (per measurement, default 3).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    register_version_request::Part, value, ListServedRequest, PredictRequest,
    RegisterVersionRequest, Row, SetAliasRequest, Value, VersionHeader,
};
use evergreen_runtime::tonic_health::pb::health_client::HealthClient;
use evergreen_runtime::tonic_health::pb::HealthCheckRequest;
use evergreen_trainer::data::{self, Selection};
use evergreen_trainer::spec::RawRequest;
use evergreen_trainer::train::{self, Inputs};
use tonic::transport::Channel;

/// The seed's stack (gunicorn + Flask + scikit-learn forest, wrk), from
/// ../shared/data/README.md: requests/s at concurrency 1, 8, 32.
const SEED_RPS: [(usize, f64); 3] = [(1, 75.0), (8, 155.0), (32, 162.0)];

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn channels(addr: &str, n: usize) -> Vec<Channel> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap(),
        );
    }
    v
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Empty,
    Predict,
}

async fn load(chans: &[Channel], concurrency: usize, secs: f64, kind: Kind, row: Row) -> Stats {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let ch = chans[w % chans.len()].clone();
        let (stop, errors, row) = (stop.clone(), errors.clone(), row.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut health = HealthClient::new(ch.clone());
            let mut pred = PredictorClient::new(ch);
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
                            model: "bench".into(),
                            rows: vec![row.clone()],
                            request_id: format!("{w}-{i}"),
                        })
                        .await
                        .is_ok(),
                };
                lat.push(t.elapsed());
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(0.3)).await; // warm-up, discarded below
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed() + Duration::from_secs_f64(0.3);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    Stats {
        rps: n as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn start_server(registry: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_evergreen-server"))
        .args(["--listen", "127.0.0.1:0", "--registry", registry])
        .env("EVERGREEN_LOG", "warn")
        .env("EVERGREEN_SERVER__METRICS_LISTEN", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start evergreen-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    (child, addr)
}

async fn wait_loaded(addr: &str, models: usize) {
    let mut p = PredictorClient::new(channels(addr, 1).await.remove(0));
    loop {
        let r = p
            .list_served(ListServedRequest {})
            .await
            .unwrap()
            .into_inner();
        if r.ready && r.models.iter().filter(|m| !m.versions.is_empty()).count() >= models {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn register(reg: &mut RegistryClient<Channel>, model: &str, bytes: &[u8]) -> u64 {
    let mut msgs = vec![RegisterVersionRequest {
        part: Some(Part::Header(VersionHeader {
            model: model.into(),
            ..Default::default()
        })),
    }];
    msgs.extend(bytes.chunks(1 << 20).map(|c| RegisterVersionRequest {
        part: Some(Part::Chunk(c.to_vec())),
    }));
    let _ = reg
        .create_model(evergreen_proto::v1::CreateModelRequest {
            name: model.into(),
            ..Default::default()
        })
        .await;
    reg.register_version(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner()
        .version
}

async fn promote(reg: &mut RegistryClient<Channel>, model: &str, version: u64) {
    reg.set_alias(SetAliasRequest {
        model: model.into(),
        alias: "production".into(),
        version,
        ..Default::default()
    })
    .await
    .unwrap();
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let secs: f64 = std::env::var("EVERGREEN_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let path = PathBuf::from(std::env::var("EVERGREEN_BENCH_DATA").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/synth_100000.csv"
        )
        .into()
    }));
    // Two 100-tree forests (seeds 42 and 43), as the trainer makes them.
    let d = data::load(
        &path,
        &Selection {
            target: "target".into(),
            classification: true,
            ..Default::default()
        },
    )
    .expect("benchmark data");
    let mut artifacts = Vec::new();
    for seed in [42, 43] {
        let spec = RawRequest {
            model: "bench".into(),
            dataset_uri: path.display().to_string(),
            target: "target".into(),
            algorithm: "random_forest".into(),
            seed,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let cancel = AtomicBool::new(false);
        let inputs = Inputs {
            recipe: &spec.recipe,
            recipe_json: String::new(),
            gate: None,
            champion: None,
            cancel: &cancel,
            progress: &|_| {},
        };
        artifacts.push(train::train(&d, &inputs).unwrap().bytes);
    }
    let row = Row {
        values: (0..d.names.len())
            .map(|j| Value {
                kind: d.columns[j].value(0).into_number().map(value::Kind::Number),
            })
            .collect(),
        named: Default::default(),
    };

    // Registry in-process on a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}", listener.local_addr().unwrap());
    let config = evergreen_registry::RegistryConfig {
        metrics_listen: String::new(),
        data_dir: dir.path().join("registry"),
        ..Default::default()
    };
    tokio::spawn(evergreen_registry::run(
        config,
        listener,
        std::future::pending(),
    ));
    let mut reg = RegistryClient::new(
        channels(registry.trim_start_matches("http://"), 1)
            .await
            .remove(0),
    );
    let v1 = register(&mut reg, "bench", &artifacts[0]).await;
    let v2 = register(&mut reg, "bench", &artifacts[1]).await;
    promote(&mut reg, "bench", v1).await;

    let (mut server, addr) = start_server(&registry);
    wait_loaded(&addr, 1).await;
    let rss_1 = rss_mib(server.id());
    println!("model: 100-tree random forest on {} ({:.1} MiB artifact); server pid {}; {secs} s per measurement", path.display(), artifacts[0].len() as f64 / (1 << 20) as f64, server.id());
    println!();
    println!("| concurrency | empty RPC req/s | p50 | p99 | Predict req/s | p50 | p99 | errors | Predict p99 / empty p99 | vs seed's stack (req/s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (c, seed_rps) in SEED_RPS {
        let chans = channels(&addr, c.min(4)).await;
        let e = load(&chans, c, secs, Kind::Empty, row.clone()).await;
        let p = load(&chans, c, secs, Kind::Predict, row.clone()).await;
        println!(
            "| {c} | {:.0} | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {:.0} µs | {} | {:.2}× | {:.0}× ({seed_rps}) |",
            e.rps,
            e.p50.as_secs_f64() * 1e6,
            e.p99.as_secs_f64() * 1e6,
            p.rps,
            p.p50.as_secs_f64() * 1e6,
            p.p99.as_secs_f64() * 1e6,
            p.errors + e.errors,
            p.p99.as_secs_f64() / e.p99.as_secs_f64(),
            p.rps / seed_rps
        );
    }

    // Promotions under load: alias set → first response from the new version.
    let chans = channels(&addr, 4).await;
    let target = Arc::new(AtomicU64::new(v1));
    let first_seen: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let failed = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut p = PredictorClient::new(chans[w % chans.len()].clone());
        let (target, first_seen, failed, served, stop, row) = (
            target.clone(),
            first_seen.clone(),
            failed.clone(),
            served.clone(),
            stop.clone(),
            row.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match p
                    .predict(PredictRequest {
                        model: "bench".into(),
                        rows: vec![row.clone()],
                        request_id: format!("p{w}-{i}"),
                    })
                    .await
                {
                    Ok(r) => {
                        served.fetch_add(1, Ordering::Relaxed);
                        if r.into_inner().version == target.load(Ordering::Relaxed) {
                            let mut f = first_seen.lock().unwrap();
                            if f.is_none() {
                                *f = Some(Instant::now());
                            }
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut lat = Vec::new();
    for i in 0..50 {
        let to = if i % 2 == 0 { v2 } else { v1 };
        *first_seen.lock().unwrap() = None;
        target.store(to, Ordering::Relaxed);
        let t0 = Instant::now();
        promote(&mut reg, "bench", to).await;
        loop {
            if let Some(t) = *first_seen.lock().unwrap() {
                if t >= t0 {
                    lat.push(t - t0);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    lat.sort();
    println!();
    println!("| promotions under load (8 callers) | p50 | p99 | max | requests served | failed requests |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| 50 | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} |",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    let _ = server.kill();
    let _ = server.wait();

    // Memory: a fresh server with 10 such models (production of each).
    for m in 2..=10 {
        let name = format!("bench{m}");
        let v = register(&mut reg, &name, &artifacts[m % 2]).await;
        promote(&mut reg, &name, v).await;
    }
    let (mut server, addr) = start_server(&registry);
    wait_loaded(&addr, 10).await;
    let rss_10 = rss_mib(server.id());
    println!();
    println!("| resident memory | 1 model | 10 models | goal |");
    println!("|---|---|---|---|");
    println!("| evergreen-server VmRSS | {rss_1:.1} MiB | {rss_10:.1} MiB | ≤ 100 MB with 10 |");
    let _ = server.kill();
    let _ = server.wait();
}

trait IntoNumber {
    fn into_number(self) -> Option<f64>;
}

impl IntoNumber for evergreen_model::schema::Value<'_> {
    fn into_number(self) -> Option<f64> {
        match self {
            evergreen_model::schema::Value::Number(x) => Some(x),
            _ => None,
        }
    }
}
