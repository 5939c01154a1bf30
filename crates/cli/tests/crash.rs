//! Crash tests with the real daemon binaries as child processes: each
//! daemon is killed with SIGKILL (no drain, no flush) under load and
//! started again on the same port and data dir, and the test checks what a
//! user would notice afterwards — nothing acknowledged is lost, nothing is
//! done twice, numbering and event streams stay gapless.
//!
//! The daemon binaries are the ones next to the `evergreen` binary
//! (`cargo test --workspace` builds them; alone, run `cargo build --bins`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evergreen_e2e::process::{env, Daemon};
use evergreen_proto::v1 as pb;
use evergreen_proto::v1::registry_client::RegistryClient;
use pb::register_version_request::Part;
use pb::watch_response::Kind as WatchKind;
use tonic::transport::{Channel, Endpoint};

const CLI: &str = env!("CARGO_BIN_EXE_evergreen");

/// A daemon binary next to the CLI's.
fn daemon_bin(name: &str) -> PathBuf {
    let p = Path::new(CLI).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build the daemons first (cargo build --bins; cargo test --workspace does)",
        p.display()
    );
    p
}

fn dataset(name: &str) -> String {
    format!("{}/../../data/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A channel to a daemon that reconnects by itself (so it outlives a
/// restart on the same address).
fn channel(d: &Daemon) -> Channel {
    Endpoint::from_shared(format!("http://{}", d.addr))
        .unwrap()
        .connect_lazy()
}

fn url(d: &Daemon) -> String {
    format!("http://{}", d.addr)
}

/// The registry binary on port 0 with its data in `dir`.
fn registry(dir: &Path) -> Daemon {
    Daemon::start(
        &daemon_bin("evergreen-registry"),
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
        let g = acked.lock().unwrap();
        for (rev, (_, v)) in g.aliases.iter().filter(|(_, (m, _))| m == model) {
            assert_eq!(
                alias_sets.get(rev),
                Some(v),
                "round {round}: acknowledged move of {model}@production to {v} (revision {rev}) not in the audit trail"
            );
        }
        let (last_acked, in_flight) = g.production[model];
        drop(g);
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
