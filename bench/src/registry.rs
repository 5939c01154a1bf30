//! Section 4, registry: register / get / set-alias ops/s with one
//! sequential client over loopback — the MLflow tracking server (sqlite, 2
//! workers; bench/python/mlflow_bench.py) against the registry daemon
//! (`evergreen_registry::run` in-process on 127.0.0.1:0, sled under the
//! run's work dir) over real gRPC. Also: the floors any call and any durable
//! write pay on this machine (gRPC health round trip, 4 KiB write +
//! fdatasync) and commit-to-watcher latency with 1 and 100 watchers.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    register_version_request::Part, version_ref::Selector, watch_response::Kind,
    CreateModelRequest, EventKind, GetVersionRequest, RegisterVersionRequest, SetAliasRequest,
    VersionHeader, VersionRef, WatchRequest,
};
use evergreen_runtime::tonic_health::pb::health_client::HealthClient;
use evergreen_runtime::tonic_health::pb::HealthCheckRequest;
use serde_json::json;
use tonic::transport::Channel;

use crate::baseline;
use crate::ctx::Ctx;
use crate::report::{Better, Row, Section};
use crate::stats::{median, ms, percentile};

/// One kind of call: each call's latency, sequential.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    /// ops/s as mlflow_bench.py counts it: N / the sum of the call times.
    fn ops(&self) -> f64 {
        self.0.len() as f64 / self.0.iter().sum::<Duration>().as_secs_f64()
    }
    fn pct_ms(&self, q: f64) -> f64 {
        let mut s = self.0.clone();
        s.sort();
        ms(percentile(&s, q))
    }
}

async fn timed<F, Fut>(n: usize, mut f: F) -> anyhow::Result<Samples>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await?;
        out.push(t.elapsed());
    }
    Ok(Samples(out))
}

fn register_msgs(model: &str, payload: Vec<u8>) -> Vec<RegisterVersionRequest> {
    vec![
        RegisterVersionRequest {
            part: Some(Part::Header(VersionHeader {
                model: model.into(),
                ..Default::default()
            })),
        },
        RegisterVersionRequest {
            part: Some(Part::Chunk(payload)),
        },
    ]
}

/// The three measured loops on a fresh model, as mlflow_bench.py runs them:
/// N registrations, N gets (versions 1..N), N alias moves (to 1..N).
struct Run {
    register: Samples,
    get: Samples,
    set_alias: Samples,
    resolve_alias: Samples,
}

async fn evergreen_run(c: &RegistryClient<Channel>, model: &str, n: usize) -> anyhow::Result<Run> {
    c.clone()
        .create_model(CreateModelRequest {
            name: model.into(),
            ..Default::default()
        })
        .await?;
    let register = timed(n, |i| {
        let mut c = c.clone();
        async move {
            // A 1 KiB artifact, distinct per version (the registry stores
            // the bytes; MLflow records a source path only).
            let mut payload = vec![0u8; 1024];
            payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let v = c
                .register_version(futures::stream::iter(register_msgs(model, payload)))
                .await?
                .into_inner();
            ensure!(
                v.version == i as u64 + 1,
                "registered version {}, expected {}",
                v.version,
                i + 1
            );
            Ok(())
        }
    })
    .await?;
    let get = timed(n, |i| {
        let mut c = c.clone();
        async move {
            let v = c
                .get_version(GetVersionRequest {
                    r#ref: Some(VersionRef {
                        model: model.into(),
                        selector: Some(Selector::Version(i as u64 + 1)),
                    }),
                })
                .await?
                .into_inner();
            ensure!(
                v.version == i as u64 + 1,
                "asked for version {}, got {}",
                i + 1,
                v.version
            );
            Ok(())
        }
    })
    .await?;
    let set_alias = timed(n, |i| {
        let mut c = c.clone();
        async move {
            c.set_alias(SetAliasRequest {
                model: model.into(),
                alias: "production".into(),
                version: i as u64 + 1,
                ..Default::default()
            })
            .await?;
            Ok(())
        }
    })
    .await?;
    let resolve_alias = timed(n, |_| {
        let mut c = c.clone();
        async move {
            let v = c
                .get_version(GetVersionRequest {
                    r#ref: Some(VersionRef {
                        model: format!("{model}@production"),
                        selector: None,
                    }),
                })
                .await?
                .into_inner();
            ensure!(
                v.version == n as u64,
                "production is on {}, expected {n}",
                v.version
            );
            Ok(())
        }
    })
    .await?;
    Ok(Run {
        register,
        get,
        set_alias,
        resolve_alias,
    })
}

fn fsync_floor(dir: &std::path::Path, n: usize) -> anyhow::Result<Samples> {
    let mut file = std::fs::File::create(dir.join("fsync-probe"))?;
    let block = vec![7u8; 4096];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        out.push(t.elapsed());
    }
    Ok(Samples(out))
}

/// Sequential alias moves while `watchers` streams follow; latency from
/// the client sending SetAlias to each watcher receiving the event.
async fn watch_latency(
    url: &str,
    client: &RegistryClient<Channel>,
    model: &str,
    watchers: usize,
    n: usize,
) -> anyhow::Result<Samples> {
    let mut handles = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    for _ in 0..watchers {
        let mut c = RegistryClient::connect(url.to_string()).await?;
        let ready = ready_tx.clone();
        let model = model.to_string();
        handles.push(tokio::spawn(async move {
            let mut s = c
                .watch(WatchRequest {
                    from_revision: None,
                    model,
                })
                .await?
                .into_inner();
            let _start = s.message().await?;
            ready.send(()).await?;
            let mut got = Vec::with_capacity(n);
            while got.len() < n {
                match s.message().await?.and_then(|m| m.kind) {
                    Some(Kind::Event(e)) if e.kind() == EventKind::AliasSet => {
                        got.push(Instant::now())
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            anyhow::Ok(got)
        }));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        ready_rx
            .recv()
            .await
            .context("a watcher ended before its stream started")?;
    }
    let mut sent = Vec::with_capacity(n);
    let mut c = client.clone();
    for i in 0..n {
        sent.push(Instant::now());
        c.set_alias(SetAliasRequest {
            model: model.into(),
            // A fresh alias per measurement: moving an alias to the version
            // it is already on is no event.
            alias: format!("watched-{watchers}"),
            version: 1 + (i as u64 % 2),
            ..Default::default()
        })
        .await?;
    }
    let mut out = Vec::with_capacity(n * watchers);
    for h in handles {
        let got = h.await??;
        ensure!(got.len() == n, "a watcher saw {} of {n} events", got.len());
        out.extend(got.iter().zip(&sent).map(|(r, s)| r.duration_since(*s)));
    }
    Ok(Samples(out))
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let n = ctx.size(200, 5);
    let floor_n = ctx.size(2000, 20);
    let fsync_n = ctx.size(500, 10);
    let watch_n = ctx.size(200, 5);
    let many = ctx.size(100, 10);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = evergreen_registry::RegistryConfig {
        metrics_listen: String::new(),
        data_dir: ctx.work.join("registry-bench"),
        monitor_url: String::new(),
        ..Default::default()
    };
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(evergreen_registry::run(config, listener, async {
        let _ = stop_rx.await;
    }));
    let measured = async {
        let channel = Channel::from_shared(url.clone())?.connect().await?;
        let client = RegistryClient::new(channel.clone());
        let health = HealthClient::new(channel);
        // Warm-up (the MLflow script warms up with 20 untimed calls too).
        for _ in 0..20 {
            health
                .clone()
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
        }
        // Evergreen, MLflow, Evergreen, Evergreen: three Evergreen runs
        // (a fresh model each) around the one MLflow run; medians.
        eprintln!("registry: Evergreen run 1 (N = {n})");
        let mut runs = vec![evergreen_run(&client, "bench-1", n).await?];
        eprintln!("registry: MLflow");
        let mlflow = match &ctx.python {
            Some(py) => Some(py.run_json("mlflow_bench.py", &["--n", &n.to_string()])?),
            None => None,
        };
        eprintln!("registry: Evergreen runs 2 and 3");
        runs.push(evergreen_run(&client, "bench-2", n).await?);
        runs.push(evergreen_run(&client, "bench-3", n).await?);
        eprintln!("registry: floors and watch latency");
        let health_s = timed(floor_n, |_| {
            let mut h = health.clone();
            async move {
                h.check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
                Ok(())
            }
        })
        .await?;
        let fsync = fsync_floor(&ctx.work, fsync_n)?;
        let watch1 = watch_latency(&url, &client, "bench-1", 1, watch_n).await?;
        let watch_many = watch_latency(&url, &client, "bench-1", many, watch_n).await?;
        anyhow::Ok((runs, mlflow, health_s, fsync, watch1, watch_many))
    }
    .await;
    let _ = stop.send(());
    task.await?.context("registry daemon")?;
    let (runs, mlflow, health_s, fsync, watch1, watch_many) = measured?;

    let ml = |field: &str| -> anyhow::Result<Option<f64>> {
        mlflow.as_ref().map(|v| baseline::num(v, field)).transpose()
    };
    let med = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let rows = vec![
        Row::new("register version", "ops/s", Better::Higher)
            .figures(ml("/register_ops_s")?, Some(med(&|r| r.register.ops())))
            .at_least(20.0),
        Row::new("get version (name + number)", "ops/s", Better::Higher)
            .figures(ml("/get_ops_s")?, Some(med(&|r| r.get.ops())))
            .at_least(100.0),
        Row::new("set alias", "ops/s", Better::Higher)
            .figures(ml("/set_alias_ops_s")?, Some(med(&|r| r.set_alias.ops())))
            .at_least(20.0),
        Row::new("register version p99", "ms", Better::Lower).figures(
            ml("/register_p99_ms")?,
            Some(med(&|r| r.register.pct_ms(0.99))),
        ),
        Row::new("get version p99", "ms", Better::Lower)
            .figures(ml("/get_p99_ms")?, Some(med(&|r| r.get.pct_ms(0.99)))),
        Row::new("set alias p99", "ms", Better::Lower).figures(
            ml("/set_alias_p99_ms")?,
            Some(med(&|r| r.set_alias.pct_ms(0.99))),
        ),
        Row::new("resolve name@alias (get by alias)", "ops/s", Better::Higher)
            .figures(None, Some(med(&|r| r.resolve_alias.ops()))),
        Row::new("floor: gRPC health round trip p50", "ms", Better::Lower)
            .figures(None, Some(health_s.pct_ms(0.5))),
        Row::new("floor: 4 KiB write + fdatasync p50", "ms", Better::Lower)
            .figures(None, Some(fsync.pct_ms(0.5))),
        Row::new("commit → watcher p99, 1 watcher", "ms", Better::Lower)
            .figures(None, Some(watch1.pct_ms(0.99))),
        Row::new(
            &format!("commit → watcher p99, {many} watchers"),
            "ms",
            Better::Lower,
        )
        .figures(None, Some(watch_many.pct_ms(0.99))),
    ];
    let mut notes = vec![format!(
        "Durable writes: a registration or alias move is acknowledged after the registry's \
         writer flushes sled (group commit). On Linux sled's flush is a sync_file_range of its \
         log (the data written and waited for, without the device cache flush an fdatasync \
         adds), which is why a write can be acknowledged faster than this machine's 4 KiB \
         fdatasync floor ({:.3} ms here); MLflow's sqlite backend commits each write with \
         fsync (sqlite's default synchronous=FULL). An Evergreen registration streams a 1 KiB \
         artifact that the registry hashes and stores with the version; an MLflow \
         registration records a source path only (no upload).",
        fsync.pct_ms(0.5),
    )];
    notes.push(format!(
        "Commit → watcher: from the client sending SetAlias to each Watch stream receiving \
         the AliasSet event, {watch_n} sequential moves; p50 {:.3} ms with 1 watcher, {:.3} ms \
         with {many}.",
        watch1.pct_ms(0.5),
        watch_many.pct_ms(0.5)
    ));
    // A get is one unary round trip: the bare gRPC round trip bounds it.
    let get_p50 = med(&|r| r.get.pct_ms(0.5));
    notes.push(format!(
        "Reads are bound by the round trip: get version p50 {get_p50:.3} ms against {:.3} ms \
         for a bare gRPC health check on the same channel, i.e. at most {:.0} sequential \
         calls/s on this machine{}. Client and registry share this process's tokio runtime \
         and the machine's cores.",
        health_s.pct_ms(0.5),
        1e3 / health_s.pct_ms(0.5),
        ml("/get_ops_s")?
            .map(|g| format!(
                ", {:.0}× MLflow's {g:.1} gets/s",
                1e3 / health_s.pct_ms(0.5) / g
            ))
            .unwrap_or_default()
    ));
    if mlflow.is_none() {
        notes.push("Baselines not run (--no-baselines): MLflow figures are empty.".into());
    }
    let run_json = |r: &Run| {
        json!({
            "register_ops_s": r.register.ops(), "get_ops_s": r.get.ops(),
            "set_alias_ops_s": r.set_alias.ops(), "resolve_alias_ops_s": r.resolve_alias.ops(),
            "register_p50_ms": r.register.pct_ms(0.5), "register_p99_ms": r.register.pct_ms(0.99),
            "get_p50_ms": r.get.pct_ms(0.5), "get_p99_ms": r.get.pct_ms(0.99),
            "set_alias_p50_ms": r.set_alias.pct_ms(0.5), "set_alias_p99_ms": r.set_alias.pct_ms(0.99),
        })
    };
    Ok(Section {
        id: "registry".into(),
        title: "Registry".into(),
        baseline: format!(
            "MLflow {} tracking server, sqlite backend, 2 workers (bench/python/mlflow_bench.py)",
            mlflow
                .as_ref()
                .and_then(|v| v["version"].as_str())
                .unwrap_or("(not run)")
        ),
        method: format!(
            "One sequential client over loopback on each side, the same N = {n} per \
             operation: N registrations of new versions of one model, N gets (versions 1..N), \
             N moves of alias `production` (to 1..N). MLflow: `MlflowClient` \
             create_model_version / get_model_version / set_registered_model_alias against \
             `mlflow server` (sqlite, --workers 2, started by the script, 20 untimed warm-up \
             calls). Evergreen: tonic client, RegisterVersion (header + 1 KiB chunk) / \
             GetVersion / SetAlias against `evergreen_registry::run` in-process on \
             127.0.0.1:0 (sled on a temp dir, 20 warm-up calls). ops/s = N / the sum of the \
             call times on both sides. Order: Evergreen, MLflow, Evergreen, Evergreen (a \
             fresh model each Evergreen run); Evergreen figures are the median of its 3 runs."
        ),
        rows,
        notes,
        raw: json!({
            "n": n,
            "mlflow": mlflow,
            "evergreen_runs": runs.iter().map(run_json).collect::<Vec<_>>(),
            "health_p50_ms": health_s.pct_ms(0.5),
            "health_p99_ms": health_s.pct_ms(0.99),
            "fsync_p50_ms": fsync.pct_ms(0.5),
            "fsync_p99_ms": fsync.pct_ms(0.99),
            "watch_1": { "events": watch_n, "p50_ms": watch1.pct_ms(0.5), "p99_ms": watch1.pct_ms(0.99) },
            "watch_many": { "watchers": many, "events": watch_n, "p50_ms": watch_many.pct_ms(0.5), "p99_ms": watch_many.pct_ms(0.99) },
        }),
    })
}
