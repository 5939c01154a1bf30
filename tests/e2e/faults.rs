//! Network faults between the daemons (issue #9): the daemons reach each
//! other through `evergreen_e2e::proxy::Proxy` (`SandboxBuilder::proxied`),
//! which delays, cuts, resets or black-holes their connections while
//! traffic runs. What must hold: no failed prediction, nothing lost
//! uncounted, no event missed or applied twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evergreen_e2e::proxy::Proxy;
use evergreen_e2e::{metric, req, Channel, Sandbox};
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    watch_response, ArchiveRequest, EventKind, GetModelRequest, GetReportRequest,
    GetVersionRequest, HistoryRequest, ListModelsRequest, ListServedRequest, ListSignalsRequest,
    RestoreRequest, SetAliasRequest, SetVersionStatusRequest, VersionStatus, WatchRequest,
    WindowKind,
};
use evergreen_s3::testing::TestS3;

use crate::closed_loop::until_within;
use crate::server::{serves, set_alias, train, wait_served, Answer, Load};
use crate::trainer::download;

/// What each traffic caller pauses between calls, so a 2-core machine
/// keeps room for the daemons' own work.
const PACE: Duration = Duration::from_millis(2);

/// The `q` quantile of what the answers took.
fn quantile(answers: &[Answer], q: f64) -> Duration {
    let mut t: Vec<Duration> = answers.iter().map(|a| a.took).collect();
    t.sort();
    t[((t.len() - 1) as f64 * q) as usize]
}

const SWAPS: &str = r#"evergreen_server_swaps_total{model="wine",alias="production"}"#;

/// The registry goes silent for 30 s (a black hole: the server's open
/// connection, its Watch included, never carries another byte, and new
/// connections hang) while steady traffic runs and a promotion is made
/// behind the server's back. No prediction fails; once the registry is
/// reachable again the server catches up with that promotion and the next
/// one, each applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_black_holed_for_30_s_fails_no_prediction_and_the_watch_resumes() {
    let sb = Sandbox::builder()
        .proxied()
        .trainer()
        .server(|_| {})
        .start()
        .await;
    let v1 = train(&sb, "wine", "random_forest", 1, true).await;
    let v2 = train(&sb, "wine", "decision_tree", 2, false).await;
    let v3 = train(&sb, "wine", "logistic_regression", 3, false).await;
    let mut p = sb.predictor().await;
    wait_served(&mut p, "v1 serves", |r| serves(r, "wine", v1)).await;
    let server = sb.server_addr.unwrap();
    let swaps_before = metric(&sb.scrape(server).await, SWAPS).unwrap_or(0.0);

    let traffic = Load::start(&sb, "wine", 4, PACE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outage = Instant::now();
    sb.registry_proxy().black_hole();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The sandbox's own client reaches the registry directly: this
    // promotion happens, the server just cannot hear of it.
    set_alias(&sb, "wine", v2).await;
    tokio::time::sleep(Duration::from_secs(29)).await;
    let healed = Instant::now();
    sb.registry_proxy().pass();
    let caught_up = traffic
        .wait_version(v2, healed, Duration::from_secs(45))
        .await;
    let promoted = Instant::now();
    set_alias(&sb, "wine", v3).await;
    let followed = traffic
        .wait_version(v3, promoted, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (answers, failures) = traffic.stop().await;

    assert!(failures.is_empty(), "failed predictions: {failures:?}");
    let during: Vec<Answer> = answers
        .iter()
        .filter(|a| a.at > outage && a.at < healed)
        .copied()
        .collect();
    assert!(
        during.len() > 1000,
        "traffic ran through the outage: {} answers",
        during.len()
    );
    assert!(
        during.iter().all(|a| a.version == v1),
        "the server cannot have seen v2 through a black hole"
    );
    // Versions only move forward: once one answered, its predecessor
    // never comes back (a replayed event would bring it back).
    let settle = Duration::from_millis(100);
    let back = |after: Instant, old: u64| {
        answers
            .iter()
            .filter(|a| a.at > after + settle && a.version == old)
            .count()
    };
    assert_eq!(back(caught_up, v1), 0, "v1 answered after v2 took over");
    assert_eq!(back(followed, v2), 0, "v2 answered after v3 took over");
    let swaps = metric(&sb.scrape(server).await, SWAPS).unwrap_or(0.0) - swaps_before;
    assert_eq!(swaps, 2.0, "v1→v2 and v2→v3, each applied once");
    eprintln!(
        "registry black-holed 30 s: {} answers during it, p99 {:?}; back → v2 (promoted during the outage) served after {:?}; v3 promoted after → served in {:?}",
        during.len(),
        quantile(&during, 0.99),
        caught_up - healed,
        followed - promoted
    );
}

/// (records the monitor accepted, drops it was told of).
async fn monitor_counts(sb: &Sandbox, version: u64) -> (u64, u64) {
    let page = sb.scrape(sb.monitor_addr.unwrap()).await;
    let accepted = metric(
        &page,
        r#"evergreen_monitor_records_total{outcome="accepted"}"#,
    );
    let told = sb
        .monitor()
        .await
        .get_report(GetReportRequest {
            model: "wine".into(),
            version,
            window: WindowKind::Current as i32,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().health)
        .map_or(0, |h| h.dropped);
    (accepted.unwrap_or(0.0) as u64, told)
}

const DROPPED: &str = "evergreen_server_prediction_log_dropped_total";

/// The monitor becomes unreachable twice under steady traffic — black-holed
/// for 8 s, then its port closed for 5 s. Predictions neither fail nor
/// slow down; the server counts what it could not ship; once the monitor
/// is back, records reach it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_monitor_outage_costs_no_prediction_and_drops_are_counted() {
    let sb = Sandbox::builder()
        .proxied()
        .trainer()
        .monitor()
        // A small queue, so the outage overflows it.
        .server(|c| c.log.queue = 200)
        .start()
        .await;
    let v1 = train(&sb, "wine", "random_forest", 1, true).await;
    let mut p = sb.predictor().await;
    wait_served(&mut p, "v1 serves", |r| serves(r, "wine", v1)).await;
    let server = sb.server_addr.unwrap();

    let traffic = Load::start(&sb, "wine", 4, PACE).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let healthy_until = Instant::now();
    until_within(
        "the monitor counts what is served",
        Duration::from_secs(15),
        || async { (monitor_counts(&sb, v1).await.0 > 100).then_some(()) },
    )
    .await;

    let mut outages = Vec::new();
    for (what, fault, secs) in [("black hole", 0, 8), ("port closed", 1, 5)] {
        let start = Instant::now();
        match fault {
            0 => sb.monitor_proxy().black_hole(),
            _ => sb.monitor_proxy().cut(),
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let end = Instant::now();
        sb.monitor_proxy().pass();
        let dropped = metric(&sb.scrape(server).await, DROPPED).unwrap_or(0.0);
        assert!(dropped > 0.0, "{what}: the overflow is counted as dropped");
        // Records made after the monitor came back reach it (more than the
        // queue and a stream's batches could have held back).
        let back = monitor_counts(&sb, v1).await.0;
        until_within(
            &format!("{what}: records reach the monitor again"),
            Duration::from_secs(45),
            || async { (monitor_counts(&sb, v1).await.0 > back + 3000).then_some(()) },
        )
        .await;
        outages.push((what, start, end));
    }
    let (answers, failures) = traffic.stop().await;
    assert!(failures.is_empty(), "failed predictions: {failures:?}");

    // Latency: nothing on the prediction path waits for the monitor.
    let healthy: Vec<Answer> = answers
        .iter()
        .filter(|a| a.at < healthy_until)
        .copied()
        .collect();
    let p50 = quantile(&healthy, 0.5);
    for (what, start, end) in &outages {
        let during: Vec<Answer> = answers
            .iter()
            .filter(|a| a.at > *start && a.at < *end)
            .copied()
            .collect();
        assert!(during.len() > 200, "{what}: traffic ran: {}", during.len());
        let (d50, dmax) = (quantile(&during, 0.5), quantile(&during, 1.0));
        eprintln!(
            "monitor {what}: {} answers, p50 {d50:?} (healthy {p50:?}), p99 {:?}, max {dmax:?}",
            during.len(),
            quantile(&during, 0.99)
        );
        assert!(
            d50 <= p50 * 3 + Duration::from_millis(5),
            "{what}: predictions slowed down: p50 {d50:?} vs {p50:?} healthy"
        );
        assert!(
            dmax < Duration::from_secs(1),
            "{what}: a prediction waited {dmax:?}"
        );
    }

    // The accounting: every served prediction reached the monitor or was
    // counted as dropped — each batch is its own call, confirmed by the
    // monitor's answer, so none is lost uncounted. (Delivery is at least
    // once, so a batch whose answer was cut off may count twice: `>=`.)
    let total = answers.len() as u64;
    let (rows, dropped, told) = until_within(
        "every served prediction is logged or counted as dropped",
        Duration::from_secs(20),
        || async {
            let dropped = metric(&sb.scrape(server).await, DROPPED).unwrap_or(0.0) as u64;
            let (rows, told) = monitor_counts(&sb, v1).await;
            (rows + dropped >= total).then_some((rows, dropped, told))
        },
    )
    .await;
    eprintln!(
        "{total} predictions: {rows} taken by the monitor, {dropped} counted dropped; the monitor was told {told} drops"
    );
    assert!(
        told > 0 && told <= dropped,
        "the shipper tells the monitor what it dropped: told {told} of {dropped}"
    );
}

/// The audit trail's events of `kind` for `model`/`version`.
async fn audited(
    c: &mut RegistryClient<Channel>,
    model: &str,
    version: u64,
    kind: EventKind,
) -> usize {
    c.history(HistoryRequest {
        model: model.into(),
        limit: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .entries
    .iter()
    .filter(|e| e.version == version && e.kind == kind as i32)
    .count()
}

async fn status_of(c: &mut RegistryClient<Channel>, model: &str, v: u64) -> i32 {
    c.get_version(GetVersionRequest {
        r#ref: req::version(model, v),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

/// A registry archiving to an in-process S3 (bucket "archive") reached
/// through a fault proxy; `tweak` adjusts the archive's S3 config.
async fn archive_to_s3_behind_a_proxy(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut evergreen_s3::S3Config),
) -> (TestS3, Proxy, Sandbox) {
    let s3 = TestS3::start(&dir.join("s3")).await;
    s3.create_bucket("archive");
    let proxy = Proxy::start(s3.addr).await;
    let mut config = s3.config("archive");
    config.endpoint = format!("http://{}", proxy.addr());
    tweak(&mut config);
    let sb = Sandbox::builder()
        .registry(move |c| c.archive.s3 = config)
        .start()
        .await;
    (s3, proxy, sb)
}

/// 12 MiB of varied bytes: an S3 multipart upload of three parts.
fn twelve_mib() -> Vec<u8> {
    (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Registers `bytes` as a new version of "m" and retires it (ready to be
/// archived).
async fn retired_version(c: &mut RegistryClient<Channel>, bytes: &[u8]) -> u64 {
    let v = c
        .register_version(tokio_stream::iter(req::register(
            req::header("m"),
            bytes,
            64 * 1024,
        )))
        .await
        .unwrap()
        .into_inner()
        .version;
    c.set_version_status(SetVersionStatusRequest {
        r#ref: req::version("m", v),
        status: VersionStatus::Retired as i32,
        reason: "superseded".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    v
}

async fn archive(
    mut c: RegistryClient<Channel>,
    v: u64,
) -> Result<tonic::Response<evergreen_proto::v1::ModelVersion>, tonic::Status> {
    c.archive(ArchiveRequest {
        r#ref: req::version("m", v),
        reason: "retention".into(),
        include_data: false,
    })
    .await
}

/// Starts archiving `m/v` through `proxy`, slowed down (about 5 MiB/s),
/// and returns once 2 MiB went up, so that a fault lands mid-upload.
async fn archive_under_way(
    proxy: &Proxy,
    c: &RegistryClient<Channel>,
    v: u64,
) -> tokio::task::JoinHandle<
    Result<tonic::Response<evergreen_proto::v1::ModelVersion>, tonic::Status>,
> {
    proxy.delay(Duration::from_millis(3));
    let before = proxy.forwarded();
    let task = tokio::spawn(archive(c.clone(), v));
    until_within("2 MiB went up", Duration::from_secs(60), || async {
        (proxy.forwarded() - before > 2 << 20).then_some(())
    })
    .await;
    assert!(!task.is_finished(), "the archive is under way");
    task
}

/// After a failed archive: still RETIRED, the artifact intact, no archive
/// event, no manifest.
async fn unchanged_after_a_failed_archive(
    sb: &Sandbox,
    c: &mut RegistryClient<Channel>,
    v: u64,
    bytes: &[u8],
    manifest: &std::path::Path,
) {
    assert_eq!(status_of(c, "m", v).await, VersionStatus::Retired as i32);
    assert!(
        download(sb, &format!("m/{v}")).await == bytes,
        "artifact intact"
    );
    assert_eq!(audited(c, "m", v, EventKind::VersionArchived).await, 0);
    assert!(!manifest.exists(), "no manifest for a failed archive");
}

/// Archived exactly once, with its manifest, and restored byte-identical.
async fn archived_once_and_restored_intact(
    sb: &Sandbox,
    c: &mut RegistryClient<Channel>,
    v: u64,
    bytes: &[u8],
    manifest: &std::path::Path,
) {
    assert!(manifest.exists());
    assert_eq!(audited(c, "m", v, EventKind::VersionArchived).await, 1);
    c.restore(RestoreRequest {
        r#ref: req::version("m", v),
        reason: "audit".into(),
        activate: false,
    })
    .await
    .unwrap();
    assert!(
        download(sb, &format!("m/{v}")).await == bytes,
        "restored byte-identical"
    );
}

/// S3 fails in the middle of an archive: the connection is cut (and the
/// endpoint refuses new ones), or reset while it still accepts. A failed
/// archive leaves the version RETIRED with its artifact, nothing archived
/// and no manifest; a retry once the endpoint is back archives it, and the
/// restore gives back the same bytes. (A reset the S3 client's own retry
/// absorbs may also succeed at once: then it is ARCHIVED, exactly once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_cut_or_reset_mid_archive_leaves_the_version_retired_and_a_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, proxy, sb) = archive_to_s3_behind_a_proxy(dir.path(), |_| {}).await;
    let mut c = sb.registry().await;
    let _ = c.create_model(req::create("m")).await;
    let bytes = twelve_mib();
    for fault in ["cut", "reset"] {
        let v = retired_version(&mut c, &bytes).await;
        let task = archive_under_way(&proxy, &c, v).await;
        match fault {
            "cut" => proxy.cut(),
            _ => proxy.reset(),
        }
        let first = task.await.unwrap();
        proxy.pass();
        let manifest = s3.object_path("archive", &format!("m/{v}/manifest.json"));
        match &first {
            Err(e) => {
                eprintln!("{fault} mid-archive: {:?} {}", e.code(), e.message());
                if fault == "cut" {
                    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                }
                assert!(
                    e.message().contains("RETIRED"),
                    "says the version is unchanged: {e:?}"
                );
                unchanged_after_a_failed_archive(&sb, &mut c, v, &bytes, &manifest).await;
                // The endpoint is back: the retry archives it.
                let done = archive(c.clone(), v).await.unwrap().into_inner();
                assert_eq!(done.status, VersionStatus::Archived as i32);
            }
            Ok(done) => {
                eprintln!("{fault} mid-archive: absorbed by the S3 client's retry");
                assert_ne!(fault, "cut", "a refusing endpoint cannot take an archive");
                assert_eq!(done.get_ref().status, VersionStatus::Archived as i32);
            }
        }
        archived_once_and_restored_intact(&sb, &mut c, v, &bytes, &manifest).await;
    }
    assert!(sb.is_running());
}

/// S3 goes silent in the middle of an archive: the flow is black-holed (the
/// endpoint still accepts connections, nothing ever comes back, nothing is
/// closed). With `timeout_seconds = 2` the archive answers UNAVAILABLE,
/// naming the endpoint, within the attempts' timeouts plus backoff and the
/// abort's one attempt — not minutes later (each attempt was allowed 300 s
/// before the timeout was configurable). The version stays RETIRED with its
/// artifact and no manifest; once the network heals, a retry archives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_s3_endpoint_fails_an_archive_within_its_timeout_and_a_retry_succeeds() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let (s3, proxy, sb) =
        archive_to_s3_behind_a_proxy(dir.path(), |c| c.timeout_seconds = TIMEOUT.as_secs()).await;
    let endpoint = format!("http://{}", proxy.addr());
    let mut c = sb.registry().await;
    let _ = c.create_model(req::create("m")).await;
    let bytes = twelve_mib();
    let v = retired_version(&mut c, &bytes).await;
    let task = archive_under_way(&proxy, &c, v).await;
    proxy.black_hole();
    let holed = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the archive gives up by itself, within a minute")
        .unwrap();
    let took = holed.elapsed();
    proxy.pass();
    let e = first.expect_err("nothing can be archived through a black hole");
    eprintln!(
        "black hole mid-archive: {:?} after {took:?}: {}",
        e.code(),
        e.message()
    );
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&endpoint) && e.message().contains("unreachable"),
        "names the endpoint: {e:?}"
    );
    assert!(
        e.message().contains("RETIRED"),
        "says the version is unchanged: {e:?}"
    );
    // The part in flight, then two more attempts, each abandoned after
    // TIMEOUT; backoff of at most 1 + 2 s; one attempt to abort the upload.
    let attempts = evergreen_s3::ATTEMPTS;
    let bound = TIMEOUT * (attempts + 1) + Duration::from_secs(3 + 4);
    assert!(
        took >= TIMEOUT * (attempts - 1) && took < bound,
        "failed {took:?} after the black hole (expected within {bound:?})"
    );
    let manifest = s3.object_path("archive", &format!("m/{v}/manifest.json"));
    unchanged_after_a_failed_archive(&sb, &mut c, v, &bytes, &manifest).await;

    // The network heals: the retry archives it, and it restores intact.
    let done = archive(c.clone(), v).await.unwrap().into_inner();
    assert_eq!(done.status, VersionStatus::Archived as i32);
    archived_once_and_restored_intact(&sb, &mut c, v, &bytes, &manifest).await;
    assert!(sb.is_running());
}

/// Follows the registry's Watch for `model` from `from` through `channel`,
/// reconnecting from the last revision it saw whenever the stream breaks,
/// until it has seen `until` (0 = not known yet). Returns every event
/// revision in the order received.
async fn watch_resuming(
    channel: Channel,
    model: &str,
    mut from: u64,
    until: Arc<std::sync::atomic::AtomicU64>,
) -> Vec<u64> {
    let mut c = RegistryClient::new(channel);
    let mut seen = Vec::new();
    let done = |last: u64| {
        let u = until.load(Ordering::Relaxed);
        u != 0 && last >= u
    };
    loop {
        if done(from) {
            return seen;
        }
        let req = WatchRequest {
            from_revision: Some(from),
            model: model.into(),
        };
        let mut s = match c.watch(req).await {
            Ok(s) => s.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        loop {
            match tokio::time::timeout(Duration::from_millis(300), s.message()).await {
                Ok(Ok(Some(m))) => match m.kind {
                    Some(watch_response::Kind::Event(e)) => {
                        seen.push(e.revision);
                        from = e.revision;
                    }
                    Some(watch_response::Kind::Compacted(c)) => panic!("compacted: {c:?}"),
                    _ => {}
                },
                Ok(_) => break, // broken: resume from `from`
                Err(_) if done(from) => return seen,
                Err(_) => {}
            }
        }
    }
}

/// Moves `production` from `from` to `to` with a compare-and-set, retrying
/// through faults. A retry refused because the alias already moved means
/// the first attempt was applied and only its answer was lost.
async fn move_alias(c: &mut RegistryClient<Channel>, from: u64, to: u64) -> u32 {
    let mut retries = 0;
    loop {
        let r = c
            .set_alias(SetAliasRequest {
                model: "wine".into(),
                alias: "production".into(),
                version: to,
                expected_version: Some(from),
                reason: format!("{from} -> {to}"),
            })
            .await;
        match r {
            Ok(_) => return retries,
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                let now = loop {
                    if let Ok(m) = c
                        .get_model(GetModelRequest {
                            name: "wine".into(),
                        })
                        .await
                    {
                        break m.into_inner().aliases.get("production").copied();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                assert_eq!(now, Some(to), "refused, yet not moved: {e:?}");
                return retries + 1;
            }
            Err(_) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Both proxies — registry (server, trainer, monitor and a mover client
/// behind it) and monitor (the server's log) — take turns delaying (40 ms
/// a chunk), resetting and cutting their connections every 300 ms while
/// `production` moves 12 times and traffic runs. Then: no failed
/// prediction; the server serves the last target; a watcher behind the
/// proxy that resumes from its last revision saw every event exactly once
/// and in order; the audit trail holds exactly one ALIAS_SET per move, in
/// the order made (no move lost or applied twice); the monitor fired no
/// signal and still takes records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delays_cuts_and_resets_while_aliases_move_lose_no_event_and_apply_none_twice() {
    let sb = Sandbox::builder()
        .proxied()
        .trainer()
        // No window closes during the test: the constant traffic row would
        // drift, and a monitor action would move the alias too.
        .monitor_with(|c| c.window_rows = 1_000_000)
        .server(|_| {})
        .start()
        .await;
    let v1 = train(&sb, "wine", "random_forest", 1, true).await;
    let v2 = train(&sb, "wine", "decision_tree", 2, false).await;
    let v3 = train(&sb, "wine", "logistic_regression", 3, false).await;
    let mut p = sb.predictor().await;
    wait_served(&mut p, "v1 serves", |r| serves(r, "wine", v1)).await;
    let mut direct = sb.registry().await;
    let start = direct
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    let server = sb.server_addr.unwrap();
    let swaps_before = metric(&sb.scrape(server).await, SWAPS).unwrap_or(0.0);
    let proxied = format!("http://{}", sb.registry_proxy().addr());
    let until_rev = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = tokio::spawn(watch_resuming(
        sb.connect(&proxied).await,
        "wine",
        start,
        until_rev.clone(),
    ));
    let traffic = Load::start(&sb, "wine", 2, PACE).await;

    let plan = [v2, v3, v1, v3, v2, v1, v2, v3, v1, v2, v1, v3];
    let moving = AtomicBool::new(true);
    let mut mover = RegistryClient::new(sb.connect(&proxied).await);
    let moves = async {
        let (mut from, mut retries) = (v1, 0);
        for to in plan {
            retries += move_alias(&mut mover, from, to).await;
            from = to;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        moving.store(false, Ordering::Relaxed);
        retries
    };
    let chaos = async {
        let proxies = [sb.registry_proxy(), sb.monitor_proxy()];
        let mut step = 0usize;
        while moving.load(Ordering::Relaxed) {
            for (i, p) in proxies.iter().enumerate() {
                match (step + i) % 4 {
                    0 => p.delay(Duration::from_millis(40)),
                    1 => p.reset(),
                    2 => p.cut(),
                    _ => p.pass(),
                }
            }
            step += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for p in proxies {
            p.pass();
        }
        step
    };
    let (retries, steps) = tokio::join!(moves, chaos);
    let calm = Instant::now();

    // The server ends on the last target.
    let last = *plan.last().unwrap();
    until_within(
        "the server serves the last target",
        Duration::from_secs(30),
        || async {
            let r = p.clone().list_served(ListServedRequest {}).await.ok()?;
            serves(&r.into_inner(), "wine", last).then_some(())
        },
    )
    .await;
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (answers, failures) = traffic.stop().await;
    assert!(failures.is_empty(), "failed predictions: {failures:?}");
    let late: Vec<u64> = answers
        .iter()
        .filter(|a| a.at > settled + Duration::from_millis(100))
        .map(|a| a.version)
        .collect();
    assert!(
        !late.is_empty() && late.iter().all(|v| *v == last),
        "after settling only {last} answers"
    );
    let swaps = metric(&sb.scrape(server).await, SWAPS).unwrap_or(0.0) - swaps_before;
    assert!(
        (1.0..=plan.len() as f64).contains(&swaps),
        "{swaps} swaps for {} moves",
        plan.len()
    );

    // The audit trail: one ALIAS_SET per move, in order.
    let history = direct
        .history(HistoryRequest {
            model: "wine".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let audited: Vec<u64> = history
        .iter()
        .filter(|e| {
            e.revision > start && e.kind == EventKind::AliasSet as i32 && e.alias == "production"
        })
        .map(|e| e.version)
        .collect();
    assert_eq!(audited, plan, "each move applied exactly once");
    assert!(
        history.iter().all(|e| e.actor != "evergreen-monitor"),
        "the monitor took no action"
    );

    // The watcher behind the faults saw every event once, in order.
    let mut expected: Vec<u64> = history
        .iter()
        .filter(|e| e.revision > start)
        .map(|e| e.revision)
        .collect();
    expected.sort();
    until_rev.store(*expected.last().unwrap(), Ordering::Relaxed);
    let seen = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("the watcher catches up within 30 s")
        .unwrap();
    assert_eq!(seen, expected, "every event exactly once, in order");

    // The monitor: no signal, and records flow again after the faults.
    let signals = sb
        .monitor()
        .await
        .list_signals(ListSignalsRequest {
            model: "wine".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .signals;
    assert!(signals.is_empty(), "{signals:?}");
    let taken = monitor_counts(&sb, last).await.0;
    let more = Load::start(&sb, "wine", 1, PACE).await;
    until_within(
        "records reach the monitor after the faults",
        Duration::from_secs(30),
        || async { (monitor_counts(&sb, last).await.0 > taken + 50).then_some(()) },
    )
    .await;
    let (_, failures) = more.stop().await;
    assert!(failures.is_empty());
    eprintln!(
        "{steps} fault steps on 2 proxies: {} moves ({retries} retried), {swaps} swaps, {} events watched through {} reconnects; calm → last target served in {:?}; {} answers",
        plan.len(),
        seen.len(),
        sb.registry_proxy().accepted(),
        settled - calm,
        answers.len()
    );
}
