//! Crash tests with the real daemon binaries as child processes: each
//! daemon is killed with SIGKILL (no drain, no flush) under load and
//! started again on the same port and data dir, and the test checks what a
//! user would notice afterwards — nothing acknowledged is lost, nothing is
//! done twice, numbering and event streams stay gapless.
//!
//! The daemon binaries are the ones next to the `evergreen` binary
//! (`cargo test --workspace` builds them; alone, run `cargo build --bins`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evergreen_e2e::process::{self, dataset, env, Daemon};
use evergreen_proto::v1 as pb;
use evergreen_proto::v1::registry_client::RegistryClient;
use pb::register_version_request::Part;
use pb::watch_response::Kind as WatchKind;
use tonic::transport::{Channel, Endpoint};

/// A channel to a daemon that reconnects by itself (so it outlives a
/// restart on the same address).
fn channel(d: &Daemon) -> Channel {
    Endpoint::from_shared(d.http_url()).unwrap().connect_lazy()
}

/// The registry binary on port 0 with its data in `dir`.
fn registry(dir: &Path) -> Daemon {
    process::start(
        "evergreen-registry",
        &["--listen", "127.0.0.1:0"],
        &env(&[
            ("EVERGREEN_LOG", "warn".into()),
            ("EVERGREEN_REGISTRY__DATA_DIR", dir.display().to_string()),
            ("EVERGREEN_REGISTRY__METRICS_LISTEN", String::new()),
            ("EVERGREEN_REGISTRY__MONITOR_URL", String::new()),
        ]),
    )
}

/// Polls `f` (every 50 ms, at most `secs`) until it returns `Some`.
async fn until<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------
// Registry: 20 rounds of kill -9 under registrations, alias moves, watches
// ---------------------------------------------------------------------

const MODELS: [&str; 2] = ["crash-a", "crash-b"];
const ROUNDS: u64 = 20;

/// What clients were told (the call returned Ok), over all rounds.
#[derive(Default)]
struct Acked {
    /// (model, version) -> artifact sha256.
    versions: BTreeMap<(String, u64), String>,
    /// revision -> (model, version) of every acknowledged SetAlias.
    aliases: BTreeMap<u64, (String, u64)>,
    /// model -> where production points per the last acknowledged move
    /// (0 = unset), and the move in flight when the registry died.
    production: BTreeMap<String, (u64, Option<u64>)>,
}

/// The watcher's view: every event it received, in order, across rounds.
#[derive(Default)]
struct Seen {
    events: Vec<pb::Event>,
}

impl Seen {
    fn last(&self) -> u64 {
        self.events.last().map_or(0, |e| e.revision)
    }
}

fn is_transport_failure(s: &tonic::Status) -> bool {
    // What a client sees when the daemon dies mid-call or is gone.
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// Registers versions of `model` until the registry dies.
async fn registrar(ch: Channel, acked: Arc<Mutex<Acked>>, model: &'static str, tag: String) {
    let mut c = RegistryClient::new(ch);
    for i in 0u32.. {
        let payload = format!("{tag} item {i}").into_bytes();
        let msgs = vec![
            pb::RegisterVersionRequest {
                part: Some(Part::Header(pb::VersionHeader {
                    model: model.into(),
                    ..Default::default()
                })),
            },
            pb::RegisterVersionRequest {
                part: Some(Part::Chunk(payload)),
            },
        ];
        match c.register_version(futures::stream::iter(msgs)).await {
            Ok(v) => {
                let v = v.into_inner();
                let prev = acked
                    .lock()
                    .unwrap()
                    .versions
                    .insert((model.to_string(), v.version), v.artifact.unwrap().sha256);
                assert!(prev.is_none(), "{model}/{} acknowledged twice", v.version);
            }
            Err(s) => {
                assert!(is_transport_failure(&s), "registration refused: {s:?}");
                return;
            }
        }
    }
}

/// Moves `production` of `model` with compare-and-set between its newest
/// acknowledged versions until the registry dies.
async fn alias_mover(ch: Channel, acked: Arc<Mutex<Acked>>, model: &'static str) {
    let mut c = RegistryClient::new(ch);
    loop {
        let (current, target) = {
            let a = acked.lock().unwrap();
            let current = a.production[model].0;
            let target = a
                .versions
                .keys()
                .filter(|(m, v)| m == model && *v != current)
                .map(|(_, v)| *v)
                .next_back();
            (current, target)
        };
        let Some(target) = target else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        acked.lock().unwrap().production.get_mut(model).unwrap().1 = Some(target);
        let r = c
            .set_alias(pb::SetAliasRequest {
                model: model.into(),
                alias: "production".into(),
                version: target,
                expected_version: Some(current),
                reason: "crash test".into(),
            })
            .await;
        match r {
            Ok(a) => {
                let a = a.into_inner();
                assert_eq!(a.version, target);
                let mut g = acked.lock().unwrap();
                g.aliases.insert(a.revision, (model.to_string(), target));
                *g.production.get_mut(model).unwrap() = (target, None);
            }
            Err(s) => {
                assert!(is_transport_failure(&s), "alias move refused: {s:?}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// Follows Watch from the last revision it saw until the stream ends (the
/// registry died) or `upto` is reached; each event must be the next
/// revision: no gap, no repeat, in order.
async fn watcher(ch: Channel, seen: Arc<Mutex<Seen>>, upto: Option<u64>) {
    let mut c = RegistryClient::new(ch);
    let from = seen.lock().unwrap().last();
    if upto.is_some_and(|u| from >= u) {
        return;
    }
    let Ok(stream) = c
        .watch(pb::WatchRequest {
            from_revision: Some(from),
            model: String::new(),
        })
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    while let Ok(Some(msg)) = stream.message().await {
        match msg.kind {
            Some(WatchKind::Event(e)) => {
                let mut s = seen.lock().unwrap();
                assert_eq!(
                    e.revision,
                    s.last() + 1,
                    "the watcher got revision {} after {}: {e:?}",
                    e.revision,
                    s.last()
                );
                let r = e.revision;
                s.events.push(e);
                if upto.is_some_and(|u| r >= u) {
                    return;
                }
            }
            Some(WatchKind::Compacted(c)) => panic!("history is large enough: {c:?}"),
            Some(WatchKind::StartRevision(_)) | None => {}
        }
    }
}

/// After a restart: every acknowledged change is there, numbers are
/// gapless and unique, production points where the last acknowledged move
/// (or the one in flight at the kill) put it.
async fn check_registry(c: &mut RegistryClient<Channel>, acked: &Mutex<Acked>, round: u64) {
    let versions = acked.lock().unwrap().versions.clone();
    for model in MODELS {
        let listed: BTreeMap<u64, String> = c
            .list_versions(pb::ListVersionsRequest {
                model: model.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .versions
            .into_iter()
            .map(|v| (v.version, v.artifact.unwrap().sha256))
            .collect();
        for ((m, v), sha) in versions.iter().filter(|((m, _), _)| m == model) {
            assert_eq!(
                listed.get(v),
                Some(sha),
                "round {round}: acknowledged {m}/{v} lost or changed"
            );
        }
        let numbers: Vec<u64> = listed.keys().copied().collect();
        assert_eq!(
            numbers,
            (1..=numbers.len() as u64).collect::<Vec<_>>(),
            "round {round}: {model}'s version numbers are gapless and unique"
        );

        let history = c
            .history(pb::HistoryRequest {
                model: model.into(),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        let alias_sets: BTreeMap<u64, u64> = history
            .iter()
            .filter(|e| e.kind == pb::EventKind::AliasSet as i32)
            .map(|e| (e.revision, e.version))
            .collect();
        let (last_acked, in_flight) = {
            let g = acked.lock().unwrap();
            for (rev, (_, v)) in g.aliases.iter().filter(|(_, (m, _))| m == model) {
                assert_eq!(
                    alias_sets.get(rev),
                    Some(v),
                    "round {round}: acknowledged move of {model}@production to {v} (revision {rev}) not in the audit trail"
                );
            }
            g.production[model]
        };
        let now = c
            .get_model(pb::GetModelRequest { name: model.into() })
            .await
            .unwrap()
            .into_inner()
            .aliases
            .get("production")
            .copied()
            .unwrap_or(0);
        assert!(
            now == last_acked || Some(now) == in_flight,
            "round {round}: {model}@production is {now}, acknowledged {last_acked} (in flight: {in_flight:?})"
        );
        // The mover carries on from what is really there.
        *acked.lock().unwrap().production.get_mut(model).unwrap() = (now, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_keeps_every_acknowledged_change_through_20_kill_9s() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = registry(dir.path());
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut c = RegistryClient::new(channel(&reg));
    for m in MODELS {
        c.create_model(pb::CreateModelRequest {
            name: m.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        acked
            .lock()
            .unwrap()
            .production
            .insert(m.to_string(), (0, None));
    }
    for round in 0..ROUNDS {
        if round > 0 {
            reg.restart();
        }
        let ch = channel(&reg);
        check_registry(&mut RegistryClient::new(ch.clone()), &acked, round).await;

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(watcher(ch.clone(), seen.clone(), None)));
        for (i, m) in MODELS.into_iter().enumerate() {
            for w in 0..2 {
                // A channel (connection) per writer, as separate clients.
                tasks.push(tokio::spawn(registrar(
                    channel(&reg),
                    acked.clone(),
                    m,
                    format!("round {round} model {i} writer {w}"),
                )));
            }
            tasks.push(tokio::spawn(alias_mover(channel(&reg), acked.clone(), m)));
        }
        // Kill at a different point of the work each round.
        tokio::time::sleep(Duration::from_millis(150 + (round * 53) % 300)).await;
        reg.kill9();
        for t in tasks {
            t.await.unwrap();
        }
    }

    // The last start: everything checks out, and the watcher resumes from
    // its revision up to the current one.
    reg.restart();
    let ch = channel(&reg);
    let mut c = RegistryClient::new(ch.clone());
    check_registry(&mut c, &acked, ROUNDS).await;
    let current = c
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    tokio::time::timeout(
        Duration::from_secs(20),
        watcher(ch.clone(), seen.clone(), Some(current)),
    )
    .await
    .expect("the watcher catches up");
    // Every event a watcher was ever shown is still the registry's event
    // of that revision (nothing announced was lost or rewritten), and the
    // watcher saw every revision exactly once.
    let fresh: Arc<Mutex<Seen>> = Arc::default();
    tokio::time::timeout(
        Duration::from_secs(20),
        watcher(ch.clone(), fresh.clone(), Some(current)),
    )
    .await
    .expect("a fresh watcher replays the history");
    let key = |e: &pb::Event| {
        (
            e.revision,
            e.kind,
            e.model.clone(),
            e.version,
            e.alias.clone(),
        )
    };
    let seen = seen.lock().unwrap();
    let fresh = fresh.lock().unwrap();
    assert_eq!(
        seen.events.iter().map(key).collect::<Vec<_>>(),
        fresh.events.iter().map(key).collect::<Vec<_>>()
    );
    assert_eq!(seen.last(), current);

    // Every acknowledged change is an event the watcher saw.
    let a = acked.lock().unwrap();
    let registered: BTreeSet<(String, u64)> = seen
        .events
        .iter()
        .filter(|e| e.kind == pb::EventKind::VersionRegistered as i32)
        .map(|e| (e.model.clone(), e.version))
        .collect();
    for k in a.versions.keys() {
        assert!(
            registered.contains(k),
            "no VERSION_REGISTERED event for {k:?}"
        );
    }
    for (rev, (m, v)) in &a.aliases {
        let e = &seen.events[*rev as usize - 1];
        assert_eq!(
            (e.kind, e.model.as_str(), e.version),
            (pb::EventKind::AliasSet as i32, m.as_str(), *v),
            "revision {rev}"
        );
    }
    // The test did enough to mean something.
    eprintln!(
        "{ROUNDS} kill -9 rounds: {} registrations, {} alias moves acknowledged, {} events watched",
        a.versions.len(),
        a.aliases.len(),
        seen.events.len()
    );
    assert!(
        a.versions.len() >= 200 && a.aliases.len() >= 40,
        "acknowledged {} registrations and {} alias moves",
        a.versions.len(),
        a.aliases.len()
    );
}

// ---------------------------------------------------------------------
// Trainer: killed mid-job
// ---------------------------------------------------------------------

/// The trainer binary on port 0, registering into `registry`.
fn trainer(dir: &Path, registry: &Daemon) -> Daemon {
    process::start(
        "evergreen-trainer",
        &[
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &registry.http_url(),
        ],
        &env(&[
            ("EVERGREEN_LOG", "warn".into()),
            ("EVERGREEN_TRAINER__DATA_DIR", dir.display().to_string()),
            ("EVERGREEN_TRAINER__METRICS_LISTEN", String::new()),
        ]),
    )
}

/// A request for a depth-limited decision tree (seconds in a debug build).
fn tree_request(model: &str, data: &str, depth: &str) -> pb::TrainRequest {
    pb::TrainRequest {
        model: model.into(),
        dataset_uri: dataset(data),
        target: "target".into(),
        algorithm: "decision_tree".into(),
        params: [("max_depth".to_string(), depth.to_string())].into(),
        ..Default::default()
    }
}

/// Trains through the trainer's Train stream; returns the finished job.
async fn train(ch: Channel, req: pb::TrainRequest) -> pb::TrainJob {
    let mut t = pb::trainer_client::TrainerClient::new(ch);
    let mut s = t.train(req).await.unwrap().into_inner();
    let mut done = None;
    while let Some(ev) = s.message().await.unwrap() {
        if let Some(pb::train_event::Kind::Done(j)) = ev.kind {
            done = Some(j);
        }
    }
    let j = done.expect("the stream ends with the job");
    assert_eq!(j.state, pb::JobState::Succeeded as i32, "{j:?}");
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_killed_mid_job_registers_nothing_and_the_job_reads_failed() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(&dir.path().join("registry"));
    let mut tr = trainer(&dir.path().join("trainer"), &reg);
    let mut t = pb::trainer_client::TrainerClient::new(channel(&tr));

    // A forest with a grid (3 candidates x 5 folds, then the refit): long
    // enough that the kill lands while it cross-validates.
    let job = t
        .submit_job(pb::TrainRequest {
            model: "interrupted".into(),
            dataset_uri: dataset("breast_cancer.csv"),
            target: "target".into(),
            algorithm: "random_forest".into(),
            params: [
                ("n_trees".to_string(), "150".to_string()),
                ("max_depth".to_string(), "4,8,none".to_string()),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = t
        .watch_job(pb::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    loop {
        let ev = events
            .message()
            .await
            .unwrap()
            .expect("the job ended before it reached SEARCHING");
        match ev.kind {
            Some(pb::train_event::Kind::Progress(p)) if p.stage == pb::Stage::Searching as i32 => {
                break
            }
            Some(pb::train_event::Kind::Done(j)) => panic!("the job ended too soon: {j:?}"),
            _ => {}
        }
    }
    tr.kill9();
    drop(events);

    tr.restart();
    let mut t = pb::trainer_client::TrainerClient::new(channel(&tr));
    let j = t
        .get_job(pb::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.state, pb::JobState::Failed as i32, "{j:?}");
    assert_eq!(j.error_code, "ABORTED", "{j:?}");
    assert!(
        j.error
            .contains("stopped while this job was queued or running")
            && j.error.contains("nothing was registered"),
        "{}",
        j.error
    );
    assert_eq!(j.version, 0, "no version: {j:?}");
    assert!(j.finished_at.is_some(), "{j:?}");
    let listed = t
        .list_jobs(pb::ListJobsRequest {
            model: "interrupted".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].state, pb::JobState::Failed as i32);

    // Nothing reached the registry: the model does not exist.
    let mut r = RegistryClient::new(channel(&reg));
    let e = r
        .list_versions(pb::ListVersionsRequest {
            model: "interrupted".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // The restarted trainer works, and the model's first version is 1.
    let done = train(
        channel(&tr),
        tree_request("interrupted", "breast_cancer.csv", "3"),
    )
    .await;
    assert_eq!(done.version, 1, "{done:?}");
    let versions = r
        .list_versions(pb::ListVersionsRequest {
            model: "interrupted".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].lineage.as_ref().unwrap().run_id, done.id);
}

// ---------------------------------------------------------------------
// Server: killed under predict load; a promotion while it is down
// ---------------------------------------------------------------------

/// The server binary on port 0, following `registry`; with a monitor,
/// shipping its prediction log there (flushed every 50 ms).
fn server(registry: &Daemon, monitor: Option<&Daemon>) -> Daemon {
    let registry = registry.http_url();
    let mut args = vec!["--listen", "127.0.0.1:0", "--registry", &registry];
    let mut vars = vec![
        ("EVERGREEN_LOG", "warn".into()),
        ("EVERGREEN_SERVER__METRICS_LISTEN", String::new()),
    ];
    let monitor = monitor.map(Daemon::http_url);
    if let Some(m) = &monitor {
        args.extend(["--monitor", m]);
        vars.push(("EVERGREEN_SERVER__LOG__FLUSH_MS", "50".into()));
    }
    process::start("evergreen-server", &args, &env(&vars))
}

/// The first `n` rows of a data set's features (the last column is the
/// target), as prediction rows.
fn feature_rows(data: &str, n: usize) -> Vec<pb::Row> {
    let text = std::fs::read_to_string(dataset(data)).unwrap();
    text.lines()
        .skip(1)
        .take(n)
        .map(|l| {
            let mut cells: Vec<&str> = l.split(',').collect();
            cells.pop();
            pb::Row {
                values: cells
                    .iter()
                    .map(|c| pb::Value {
                        kind: Some(pb::value::Kind::Number(c.parse().unwrap())),
                    })
                    .collect(),
                named: Default::default(),
            }
        })
        .collect()
}

/// One predict of `model` (default alias); the version that answered.
async fn predict(ch: Channel, model: &str, rows: &[pb::Row]) -> Result<u64, tonic::Status> {
    pb::predictor_client::PredictorClient::new(ch)
        .predict(pb::PredictRequest {
            model: model.into(),
            rows: rows.to_vec(),
            request_id: String::new(),
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            assert_eq!(r.predictions.len(), rows.len());
            r.version
        })
}

/// What the server serves: model -> production version.
async fn served(ch: Channel) -> BTreeMap<String, Vec<u64>> {
    pb::predictor_client::PredictorClient::new(ch)
        .list_served(pb::ListServedRequest {})
        .await
        .unwrap()
        .into_inner()
        .models
        .into_iter()
        .map(|m| {
            let v = m
                .versions
                .iter()
                .filter(|v| v.aliases.iter().any(|a| a == "production"))
                .map(|v| v.version)
                .collect();
            (m.model, v)
        })
        .collect()
}

async fn set_production(ch: Channel, model: &str, version: u64) {
    RegistryClient::new(ch)
        .set_alias(pb::SetAliasRequest {
            model: model.into(),
            alias: "production".into(),
            version,
            expected_version: None,
            reason: "crash test".into(),
        })
        .await
        .unwrap();
}

/// Answers of the load generator: (phase at the call's start, phase at
/// its end, model, Ok(version) or Err(code)).
type Answers = Arc<Mutex<Vec<(u32, u32, &'static str, Result<u64, tonic::Code>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_under_load_comes_back_with_its_models_and_the_promotion_made_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(&dir.path().join("registry"));
    let tr = trainer(&dir.path().join("trainer"), &reg);
    let w1 = train(channel(&tr), tree_request("wine", "wine.csv", "2")).await;
    let w2 = train(channel(&tr), tree_request("wine", "wine.csv", "4")).await;
    let b1 = train(channel(&tr), tree_request("bc", "breast_cancer.csv", "3")).await;
    assert_eq!((w1.version, w2.version, b1.version), (1, 2, 1));
    set_production(channel(&reg), "wine", 1).await;
    set_production(channel(&reg), "bc", 1).await;

    let mut srv = server(&reg, None);
    let wine_rows = feature_rows("wine.csv", 4);
    let bc_rows = feature_rows("breast_cancer.csv", 4);
    until("the server serves both models", 30, || async {
        let w = predict(channel(&srv), "wine", &wine_rows).await.ok()?;
        let b = predict(channel(&srv), "bc", &bc_rows).await.ok()?;
        (w == 1 && b == 1).then_some(())
    })
    .await;
    let before = served(channel(&srv)).await;
    assert_eq!(
        before,
        BTreeMap::from([("bc".to_string(), vec![1]), ("wine".to_string(), vec![1])])
    );

    // Load: 4 clients, each on its own connection, predicting both models
    // in a loop, through the kill and the restart.
    let phase = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Answers = Arc::default();
    let mut load = Vec::new();
    for i in 0..4 {
        let (ch, phase, stop, answers) =
            (channel(&srv), phase.clone(), stop.clone(), answers.clone());
        let (model, rows): (&'static str, _) = if i % 2 == 0 {
            ("wine", wine_rows.clone())
        } else {
            ("bc", bc_rows.clone())
        };
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let start = phase.load(Ordering::SeqCst);
                let r = predict(ch.clone(), model, &rows)
                    .await
                    .map_err(|s| s.code());
                let end = phase.load(Ordering::SeqCst);
                if r.is_err() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                answers.lock().unwrap().push((start, end, model, r));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Phase 1: the server is dead; production of wine moves to 2.
    phase.store(1, Ordering::SeqCst);
    srv.kill9();
    set_production(channel(&reg), "wine", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Phase 2: it is back on the same address.
    phase.store(2, Ordering::SeqCst);
    srv.restart();
    until(
        "the restarted server answers for both models",
        30,
        || async {
            let a = answers.lock().unwrap();
            let ok = |m: &str| {
                a.iter()
                    .any(|(_, p, mm, r)| *p == 2 && *mm == m && r.is_ok())
            };
            (ok("wine") && ok("bc")).then_some(())
        },
    )
    .await;
    // Phase 3: steady again.
    phase.store(3, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }

    let a = std::mem::take(&mut *answers.lock().unwrap());
    let count = |p: u32, ok: bool| {
        a.iter()
            .filter(|(start, _, _, r)| *start == p && r.is_ok() == ok)
            .count()
    };
    eprintln!(
        "predictions ok/failed by the phase they started in: before the kill {}/{}, down {}/{}, restarting {}/{}, after {}/{}",
        count(0, true),
        count(0, false),
        count(1, true),
        count(1, false),
        count(2, true),
        count(2, false),
        count(3, true),
        count(3, false)
    );
    assert!(count(0, true) > 20 && count(3, true) > 20, "the load ran");
    for (start, end, m, r) in a.iter() {
        match (start, end, r) {
            // Before the kill, all answered by the first production.
            (0, 0, r) => assert_eq!(*r, Ok(1), "{m} before the kill"),
            // Back: never the version demoted while it was down.
            (_, 2.., Ok(v)) => assert_eq!(
                *v,
                if *m == "wine" { 2 } else { 1 },
                "{m} after the restart"
            ),
            _ => {}
        }
        if *start == 3 {
            assert!(r.is_ok(), "{m} failed once the server was back: {r:?}");
        }
    }
    assert_eq!(
        served(channel(&srv)).await,
        BTreeMap::from([("bc".to_string(), vec![1]), ("wine".to_string(), vec![2])]),
        "the same models, with the promotion made while it was down"
    );
}

// ---------------------------------------------------------------------
// Monitor: restarts (SIGTERM, kill -9) keep windows; one breach, one action
// ---------------------------------------------------------------------

/// Window state is written this often; a kill -9 may lose what came since.
const PERSIST_MS: u64 = 500;

fn monitor(dir: &Path, registry: &Daemon, trainer: &Daemon) -> Daemon {
    process::start(
        "evergreen-monitor",
        &[
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &registry.http_url(),
            "--trainer",
            &trainer.http_url(),
        ],
        &env(&[
            ("EVERGREEN_LOG", "warn".into()),
            ("EVERGREEN_MONITOR__DATA_DIR", dir.display().to_string()),
            ("EVERGREEN_MONITOR__METRICS_LISTEN", String::new()),
            ("EVERGREEN_MONITOR__WINDOW_ROWS", "25".into()),
            ("EVERGREEN_MONITOR__WINDOW_SECONDS", "3600".into()),
            ("EVERGREEN_MONITOR__PERSIST_MS", PERSIST_MS.to_string()),
        ]),
    )
}

/// breast_cancer.csv as (features, label), every 7th row cycling from
/// `from` (a window then looks like the data as a whole).
fn bc_sample(from: usize, n: usize) -> Vec<(pb::Row, String)> {
    let text = std::fs::read_to_string(dataset("breast_cancer.csv")).unwrap();
    let all: Vec<&str> = text.lines().skip(1).collect();
    (from..from + n)
        .map(|i| {
            let mut cells: Vec<&str> = all[(i * 7) % all.len()].split(',').collect();
            let label = cells.pop().unwrap().to_string();
            let row = pb::Row {
                values: cells
                    .iter()
                    .map(|c| pb::Value {
                        kind: Some(pb::value::Kind::Number(c.parse().unwrap())),
                    })
                    .collect(),
                named: Default::default(),
            };
            (row, label)
        })
        .collect()
}

/// A report's closed windows without `health.dropped`: that is the count
/// of records the servers reported dropped (a monitor-wide counter shown
/// on every window, not window state; persisted with the windows, it is
/// checked by `tests/e2e/closed_loop.rs`).
fn closed_windows(r: &pb::Report) -> Vec<pb::WindowSummary> {
    let mut w = r.history.clone();
    for c in &mut w {
        if let Some(h) = &mut c.health {
            h.dropped = 0;
        }
    }
    w
}

struct MonitorStack {
    _dir: tempfile::TempDir,
    registry: Daemon,
    monitor: Daemon,
    server: Daemon,
    _trainer: Daemon,
}

/// How a round stops the monitor before starting it again.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGTERM: it must exit 0.
    Term,
    /// SIGKILL: no drain, no flush.
    Kill9,
}

impl MonitorStack {
    /// The Long report of `bc/version`.
    async fn try_report(&self, version: u64) -> Result<pb::Report, tonic::Status> {
        pb::monitor_client::MonitorClient::new(channel(&self.monitor))
            .get_report(pb::GetReportRequest {
                model: "bc".into(),
                version,
                window: pb::WindowKind::Long as i32,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn report(&self, version: u64) -> pb::Report {
        self.try_report(version).await.unwrap()
    }

    /// Rows of `version` the monitor holds (0 before the first).
    async fn rows(&self, version: u64) -> u64 {
        self.try_report(version)
            .await
            .ok()
            .and_then(|r| r.drift)
            .map_or(0, |d| d.rows)
    }

    /// One restart round: stops the monitor (`how`), starts it again on
    /// its address and data dir, and checks that `bc/version`'s report is
    /// what it was before the stop — rows and drift, performance, closed
    /// windows. Returns the report.
    async fn check_round(&mut self, version: u64, how: Stop) -> pb::Report {
        let before = self.report(version).await;
        match how {
            Stop::Term => assert_eq!(
                self.monitor.terminate().code(),
                Some(0),
                "{}",
                self.monitor.stderr()
            ),
            Stop::Kill9 => {
                self.monitor.kill9();
            }
        }
        self.monitor.restart();
        let after = self.report(version).await;
        assert_eq!(
            after.drift, before.drift,
            "{how:?}: rows and drift restored"
        );
        assert_eq!(
            after.performance, before.performance,
            "{how:?}: performance restored"
        );
        assert_eq!(
            closed_windows(&after),
            closed_windows(&before),
            "{how:?}: closed windows restored"
        );
        after
    }

    async fn signals(&self) -> Vec<pb::Signal> {
        pb::monitor_client::MonitorClient::new(channel(&self.monitor))
            .list_signals(pb::ListSignalsRequest {
                model: "bc".into(),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .signals
    }

    /// Status changes of `bc` the monitor made, from the registry's audit
    /// trail.
    async fn monitor_actions(&self) -> Vec<pb::Event> {
        RegistryClient::new(channel(&self.registry))
            .history(pb::HistoryRequest {
                model: "bc".into(),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .filter(|e| e.actor == "evergreen-monitor")
            .collect()
    }

    /// Predicts `rows` one by one with `bc/version` and request ids
    /// `TAG-i`; waits until the monitor holds them all (also right after a
    /// monitor restart: the server re-sends what a dead stream did not
    /// take), once each.
    async fn traffic(&self, version: u64, tag: &str, rows: &[(pb::Row, String)]) {
        let base = self.rows(version).await;
        let mut p = pb::predictor_client::PredictorClient::new(channel(&self.server));
        for (i, (row, _)) in rows.iter().enumerate() {
            p.predict(pb::PredictRequest {
                model: format!("bc/{version}"),
                rows: vec![row.clone()],
                request_id: format!("{tag}-{i}"),
            })
            .await
            .unwrap();
        }
        let expect = base + rows.len() as u64;
        until(&format!("the monitor holds {expect} rows"), 30, || async {
            (self.rows(version).await >= expect).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(self.rows(version).await, expect, "each row logged once");
    }

    /// Sends the opposite of the true labels for `TAG-i` (the version
    /// looks wrong on every row).
    async fn wrong_labels(&self, tag: &str, rows: &[(pb::Row, String)]) {
        let feedback = rows
            .iter()
            .enumerate()
            .map(|(i, (_, y))| pb::Feedback {
                request_id: format!("{tag}-{i}"),
                label: if y == "1" { "0".into() } else { "1".into() },
                ..Default::default()
            })
            .collect();
        let r = pb::monitor_client::MonitorClient::new(channel(&self.monitor))
            .record_feedback(pb::RecordFeedbackRequest { feedback })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.matched, rows.len() as u64, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_monitor_keeps_its_windows_and_acts_once_per_breach() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(&dir.path().join("registry"));
    let trainer = trainer(&dir.path().join("trainer"), &registry);
    let v1 = train(
        channel(&trainer),
        tree_request("bc", "breast_cancer.csv", "5"),
    )
    .await
    .version;
    let v2 = train(
        channel(&trainer),
        tree_request("bc", "breast_cancer.csv", "5"),
    )
    .await
    .version;
    set_production(channel(&registry), "bc", v2).await;
    let monitor = monitor(&dir.path().join("monitor"), &registry, &trainer);
    let server = server(&registry, Some(&monitor));
    let mut s = MonitorStack {
        _dir: dir,
        registry,
        monitor,
        server,
        _trainer: trainer,
    };
    // v1 still gets traffic by number; it is not production, so a breach
    // of it is answered by RETIRE (deprecated in favour of v2).
    pb::monitor_client::MonitorClient::new(channel(&s.monitor))
        .set_policy(pb::SetPolicyRequest {
            policy: Some(pb::Policy {
                model: "bc".into(),
                min_rows: 25,
                min_labels: 20,
                consecutive: 2,
                cooldown_seconds: 1,
                retire: Some(true),
                drift_breaches: Some(false),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    until("the server serves bc/1", 30, || async {
        pb::predictor_client::PredictorClient::new(channel(&s.server))
            .predict(pb::PredictRequest {
                model: format!("bc/{v1}"),
                rows: vec![bc_sample(0, 1)[0].0.clone()],
                request_id: String::new(),
            })
            .await
            .ok()
    })
    .await;
    until("the probe is logged", 30, || async {
        (s.rows(v1).await == 1).then_some(())
    })
    .await;
    let a = bc_sample(0, 50);
    s.traffic(v1, "a", &a).await;

    // SIGTERM: everything comes back exactly.
    let after = s.check_round(v1, Stop::Term).await;
    assert!(after.drift.as_ref().unwrap().rows >= 50);

    // kill -9, some time after the last traffic: windows older than
    // persist_ms are all there.
    let b = bc_sample(50, 50);
    s.traffic(v1, "b", &b).await;
    tokio::time::sleep(Duration::from_millis(3 * PERSIST_MS)).await;
    s.check_round(v1, Stop::Kill9).await;

    // A breach: the labels say v1 is wrong on every row. RETIRE fires;
    // the monitor is killed right after (before its next periodic write).
    // (The label join is written only at a graceful shutdown: after the
    // kill -9 above, labels for earlier predictions count as unknown, so
    // the breach comes from new traffic.)
    let c = bc_sample(100, 50);
    s.traffic(v1, "c", &c).await;
    s.wrong_labels("c", &c).await;
    let signal = until("RETIRE fires", 30, || async {
        s.signals()
            .await
            .into_iter()
            .find(|x| x.kind == pb::SignalKind::Retire as i32)
    })
    .await;
    s.monitor.kill9();
    assert_eq!(
        (signal.version, signal.target_version),
        (v1, v2),
        "{signal:?}"
    );
    let actions = s.monitor_actions().await;
    assert_eq!(actions.len(), 1, "{actions:#?}");
    assert_eq!(
        (actions[0].kind, actions[0].version),
        (pb::EventKind::VersionStatusChanged as i32, v1),
        "{actions:#?}"
    );

    // Restarted, the same breach goes on (v1 keeps getting it wrong) past
    // the cool-down: no second signal, no second action.
    s.monitor.restart();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let d = bc_sample(150, 50);
    s.traffic(v1, "d", &d).await;
    let labeled = s.report(v1).await.performance.map_or(0, |p| p.labeled);
    s.wrong_labels("d", &d).await;
    until("the monitor has judged the new labels", 30, || async {
        let r = s.report(v1).await;
        let judged = r
            .history
            .iter()
            .filter(|w| w.performance.as_ref().is_some_and(|p| p.labeled > 0))
            .count();
        (r.performance.map_or(0, |p| p.labeled) >= labeled + 50 && judged >= 2).then_some(())
    })
    .await;
    // An action would follow the judgement within milliseconds; give it
    // ample time to (wrongly) happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let signals = s.signals().await;
    assert_eq!(signals.len(), 1, "one breach, one signal: {signals:#?}");
    assert_eq!(signals[0].id, signal.id);
    let actions = s.monitor_actions().await;
    assert_eq!(actions.len(), 1, "one breach, one action: {actions:#?}");

    // And once more through a clean restart.
    s.check_round(v1, Stop::Term).await;
    assert_eq!(s.signals().await.len(), 1);
}
