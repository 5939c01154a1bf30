//! Registry benchmark: one sequential client over real gRPC on loopback,
//! the same pattern as the MLflow reference in issue #2, plus
//! commit-to-watcher latency with 1 and 100 watchers.
//!
//! `cargo bench -p evergreen-registry --bench registry` prints a table.
//! `EVERGREEN_BENCH_SCALE=0.1` shortens every loop (e.g. for a smoke run).
//!
//! Two baselines run in the same invocation, so figures can be read as
//! ratios on a shared, noisy machine: a gRPC health-check round trip (the
//! floor for any call) and a 4 KiB write + fdatasync (the floor for any
//! durable write).

use std::io::Write;
use std::time::{Duration, Instant};

use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    register_version_request::Part, version_ref::Selector, watch_response::Kind,
    CreateModelRequest, EventKind, GetVersionRequest, RegisterVersionRequest, SetAliasRequest,
    VersionHeader, VersionRef, WatchRequest,
};
use evergreen_registry::RegistryConfig;
use evergreen_runtime::tonic_health::pb::health_client::HealthClient;
use evergreen_runtime::tonic_health::pb::HealthCheckRequest;
use tonic::transport::Channel;

/// MLflow 3.17 tracking server (sqlite, 2 workers), one sequential client,
/// measured on this machine class (issue #2): ops/s.
const MLFLOW_REGISTER: f64 = 58.0;
const MLFLOW_GET: f64 = 59.0;
const MLFLOW_SET_ALIAS: f64 = 19.0;

struct Row {
    name: String,
    samples: Vec<Duration>,
    wall: Duration,
    mlflow: Option<(f64, f64)>, // (reference ops/s, goal ratio)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("EVERGREEN_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(10)
}

async fn time_loop<F, Fut>(name: &str, n: usize, mlflow: Option<(f64, f64)>, mut f: F) -> Row
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f(i).await;
        samples.push(t.elapsed());
    }
    Row {
        name: name.to_string(),
        samples,
        wall: start.elapsed(),
        mlflow,
    }
}

fn fsync_baseline(dir: &std::path::Path, n: usize) -> Row {
    let mut file = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let block = vec![7u8; 4096];
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        samples.push(t.elapsed());
    }
    Row {
        name: "baseline: 4 KiB write + fdatasync".into(),
        samples,
        wall: start.elapsed(),
        mlflow: None,
    }
}

fn register_msgs(payload: Vec<u8>) -> Vec<RegisterVersionRequest> {
    vec![
        RegisterVersionRequest {
            part: Some(Part::Header(VersionHeader {
                model: "bench".into(),
                ..Default::default()
            })),
        },
        RegisterVersionRequest {
            part: Some(Part::Chunk(payload)),
        },
    ]
}

/// Sequential alias moves while `watchers` streams follow; latency from the
/// client sending the call to each watcher receiving its event.
async fn watch_latency(
    url: &str,
    client: &mut RegistryClient<Channel>,
    watchers: usize,
    n: usize,
) -> Row {
    let mut handles = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    for _ in 0..watchers {
        let mut c = RegistryClient::connect(url.to_string()).await.unwrap();
        let ready = ready_tx.clone();
        handles.push(tokio::spawn(async move {
            let mut s = c
                .watch(WatchRequest {
                    from_revision: None,
                    model: "bench".into(),
                })
                .await
                .unwrap()
                .into_inner();
            let _start = s.message().await.unwrap();
            ready.send(()).await.unwrap();
            let mut got = Vec::with_capacity(n);
            while got.len() < n {
                match s.message().await.unwrap().and_then(|m| m.kind) {
                    Some(Kind::Event(e)) if e.kind() == EventKind::AliasSet => {
                        got.push(Instant::now())
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            got
        }));
    }
    for _ in 0..watchers {
        ready_rx.recv().await.unwrap();
    }
    let mut sent = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        sent.push(Instant::now());
        client
            .set_alias(SetAliasRequest {
                model: "bench".into(),
                alias: "watched".into(),
                version: 1 + (i as u64 % 2),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let wall = start.elapsed();
    let mut samples = Vec::with_capacity(n * watchers);
    for h in handles {
        let got = h.await.unwrap();
        assert_eq!(got.len(), n, "every watcher saw every event");
        samples.extend(got.iter().zip(&sent).map(|(r, s)| r.duration_since(*s)));
    }
    Row {
        name: format!("commit-to-watcher, {watchers} watcher(s)"),
        samples,
        wall,
        mlflow: None,
    }
}

/// Sequential GetVersion calls, the version named by `reference(i)`.
async fn get_loop(
    name: &str,
    client: &RegistryClient<Channel>,
    reference: impl Fn(usize) -> VersionRef,
) -> Row {
    time_loop(name, scaled(20_000), Some((MLFLOW_GET, 100.0)), |i| {
        let mut c = client.clone();
        let r = reference(i);
        async move {
            c.get_version(GetVersionRequest { r#ref: Some(r) })
                .await
                .unwrap();
        }
    })
    .await
}

fn print(rows: &mut [Row], rtt_p50: Duration, fsync_p50: Duration) {
    println!();
    println!(
        "{:<38} {:>8} {:>10} {:>12} {:>12} {:>10} {:>10} {:>16}",
        "operation", "n", "ops/s", "p50", "p99", "p50/rtt", "p50/fsync", "vs MLflow (goal)"
    );
    for r in rows.iter_mut() {
        r.samples.sort();
        let (p50, p99) = (pct(&r.samples, 0.5), pct(&r.samples, 0.99));
        let is_watch = r.name.starts_with("commit-to-watcher");
        let ops = r.samples.len() as f64 / r.wall.as_secs_f64();
        let vs = match r.mlflow {
            Some((reference, goal)) => format!("{:.0}x ({goal:.0}x)", ops / reference),
            None => "-".into(),
        };
        println!(
            "{:<38} {:>8} {:>10.0} {:>12} {:>12} {:>10.1} {:>10.1} {:>16}",
            r.name,
            r.samples.len(),
            if is_watch { f64::NAN } else { ops },
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / rtt_p50.as_secs_f64(),
            p50.as_secs_f64() / fsync_p50.as_secs_f64(),
            vs
        );
    }
    println!();
    println!("ops/s: one sequential client; durable ops are acknowledged after the sled flush.");
    println!("p50/rtt, p50/fsync: ratios to this run's baselines. commit-to-watcher: from the client sending SetAlias to each watcher receiving the event (goal p99 <= 10 ms with 100 watchers).");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistryConfig {
            metrics_listen: String::new(),
            data_dir: dir.path().join("registry"),
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(evergreen_registry::run(config, listener, async {
            let _ = stop_rx.await;
        }));
        let channel = Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = RegistryClient::new(channel.clone());
        let health = HealthClient::new(channel);
        client
            .create_model(CreateModelRequest {
                name: "bench".into(),
                ..Default::default()
            })
            .await
            .unwrap();

        let mut rows = Vec::new();
        rows.push(
            time_loop("baseline: gRPC health check", scaled(20_000), None, |_| {
                let mut h = health.clone();
                async move {
                    h.check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .unwrap();
                }
            })
            .await,
        );
        rows.push(fsync_baseline(dir.path(), scaled(2_000)));

        let c = client.clone();
        rows.push(
            time_loop(
                "baseline: streaming call, rejected at header",
                scaled(3_000),
                None,
                |_| {
                    let mut c = c.clone();
                    async move {
                        let mut msgs = register_msgs(vec![0u8; 1024]);
                        if let Some(Part::Header(h)) = &mut msgs[0].part {
                            h.model = "no-such-model".into();
                        }
                        c.register_version(futures::stream::iter(msgs))
                            .await
                            .unwrap_err();
                    }
                },
            )
            .await,
        );
        rows.push(
            time_loop(
                "register version (1 KiB artifact)",
                scaled(3_000),
                Some((MLFLOW_REGISTER, 20.0)),
                |i| {
                    let mut c = c.clone();
                    async move {
                        let mut payload = vec![0u8; 1024];
                        payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
                        c.register_version(futures::stream::iter(register_msgs(payload)))
                            .await
                            .unwrap();
                    }
                },
            )
            .await,
        );
        client
            .set_alias(SetAliasRequest {
                model: "bench".into(),
                alias: "production".into(),
                version: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let versions = scaled(3_000) as u64;
        let by_number = |i: usize| VersionRef {
            model: "bench".into(),
            selector: Some(Selector::Version(1 + i as u64 % versions)),
        };
        let by_alias = |_: usize| VersionRef {
            model: "bench@production".into(),
            selector: None,
        };
        rows.push(get_loop("get version (name/N)", &c, by_number).await);
        rows.push(get_loop("resolve name@alias", &c, by_alias).await);
        rows.push(
            time_loop(
                "set alias (durable)",
                scaled(3_000),
                Some((MLFLOW_SET_ALIAS, 20.0)),
                |i| {
                    let mut c = c.clone();
                    async move {
                        c.set_alias(SetAliasRequest {
                            model: "bench".into(),
                            alias: "staging".into(),
                            version: 1 + (i as u64 % 2),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    }
                },
            )
            .await,
        );
        rows.push(watch_latency(&url, &mut client, 1, scaled(1_000)).await);
        rows.push(watch_latency(&url, &mut client, 100, scaled(500)).await);

        let rtt = {
            let mut s = rows[0].samples.clone();
            s.sort();
            pct(&s, 0.5)
        };
        let fsync = {
            let mut s = rows[1].samples.clone();
            s.sort();
            pct(&s, 0.5)
        };
        print(&mut rows, rtt, fsync);
        let _ = stop_tx.send(());
        server.await.unwrap().unwrap();
    });
}
