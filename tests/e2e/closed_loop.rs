//! The closed loop, end to end with real daemons: the server logs
//! predictions to the monitor, the test sends the delayed labels, and the
//! monitor acts through the trainer (RETRAIN, gated) and the registry
//! (ROLLBACK) on its own.

use std::time::{Duration, Instant};

use evergreen_e2e::{dataset, metric, Sandbox};
use evergreen_proto::v1::{
    value, Feedback, GetModelRequest, GetReportRequest, HistoryRequest, ListSignalsRequest, Policy,
    PredictRequest, PredictionLogBatch, RecordFeedbackRequest, Report, Row, SetAliasRequest,
    SetPolicyRequest, Signal, SignalKind, TrainRequest, Value, WindowKind,
};
use tonic::Code;

const MODEL: &str = "bc";

/// breast_cancer.csv: features (30 numbers) and the label ("0" / "1").
pub(crate) fn load() -> Vec<(Vec<f64>, String)> {
    let text = std::fs::read_to_string(dataset("breast_cancer.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let mut cells: Vec<&str> = l.split(',').collect();
            let label = cells.pop().unwrap().to_string();
            (cells.iter().map(|c| c.parse().unwrap()).collect(), label)
        })
        .collect()
}

/// A spread-out sample (every 7th row, cycling), so that a window looks
/// like the data as a whole and not like its sorted head.
pub(crate) fn sample(
    data: &[(Vec<f64>, String)],
    from: usize,
    n: usize,
) -> Vec<(Vec<f64>, String)> {
    (from..from + n)
        .map(|i| data[(i * 7) % data.len()].clone())
        .collect()
}

pub(crate) fn to_row(x: &[f64]) -> Row {
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

/// Trains a depth-5 decision tree of `model` on `path`; returns its version.
pub(crate) async fn train(sb: &Sandbox, model: &str, path: &std::path::Path) -> u64 {
    let request = TrainRequest {
        model: model.into(),
        dataset_uri: path.display().to_string(),
        target: "target".into(),
        algorithm: "decision_tree".into(),
        params: [("max_depth".to_string(), "5".to_string())].into(),
        ..Default::default()
    };
    evergreen_e2e::train_version(&mut sb.trainer().await, request).await
}

async fn production(sb: &Sandbox) -> Option<u64> {
    let m = sb
        .registry()
        .await
        .get_model(GetModelRequest { name: MODEL.into() })
        .await
        .unwrap()
        .into_inner();
    m.aliases.get("production").copied()
}

async fn report(sb: &Sandbox, version: u64, window: WindowKind) -> Result<Report, tonic::Status> {
    sb.monitor()
        .await
        .get_report(GetReportRequest {
            model: MODEL.into(),
            version,
            window: window as i32,
        })
        .await
        .map(|r| r.into_inner())
}

/// Polls until `f` holds (30 s at most).
pub(crate) async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    f: impl FnMut() -> F,
) -> T {
    until_within(what, Duration::from_secs(30), f).await
}

/// Polls (every 50 ms) until `f` holds, `within` at most.
pub(crate) async fn until_within<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn signals(sb: &Sandbox) -> Vec<Signal> {
    sb.monitor()
        .await
        .list_signals(ListSignalsRequest {
            model: MODEL.into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .signals
}

/// Sends `rows` as single-row requests to "bc" (its production version),
/// waits until the monitor has them all (`logged`: rows of that version it
/// had before), then sends their labels. Returns the version that answered.
async fn traffic(sb: &Sandbox, tag: &str, rows: &[(Vec<f64>, String)], logged: &mut u64) -> u64 {
    let mut p = sb.predictor().await;
    let mut version = 0;
    for (i, (x, _)) in rows.iter().enumerate() {
        let r = p
            .predict(PredictRequest {
                model: MODEL.into(),
                rows: vec![to_row(x)],
                request_id: format!("{tag}-{i}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(version == 0 || version == r.version, "one version answers");
        version = r.version;
    }
    let before = version;
    // The log is asynchronous: wait until the monitor counted every row.
    let target = *logged + rows.len() as u64;
    until(&format!("the monitor has the {tag} rows"), || async {
        let r = report(sb, before, WindowKind::Long).await.ok()?;
        (r.drift?.rows >= target).then_some(())
    })
    .await;
    *logged = target;
    let feedback: Vec<Feedback> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, label))| Feedback {
            request_id: format!("{tag}-{i}"),
            label: label.clone(),
            ..Default::default()
        })
        .collect();
    let r = sb
        .monitor()
        .await
        .record_feedback(RecordFeedbackRequest { feedback })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.matched, r.unknown, r.expired),
        (rows.len() as u64, 0, 0),
        "{tag}"
    );
    version
}

/// breast_cancer.csv with every label flipped: a model trained on it is
/// confidently wrong.
pub(crate) fn flipped_dataset(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(dataset("breast_cancer.csv")).unwrap();
    let mut out = String::new();
    for (i, l) in text.lines().enumerate() {
        if i == 0 {
            out.push_str(l);
        } else {
            let (head, y) = l.rsplit_once(',').unwrap();
            out.push_str(&format!("{head},{}", if y == "1" { "0" } else { "1" }));
        }
        out.push('\n');
    }
    let path = dir.join("flipped.csv");
    std::fs::write(&path, out).unwrap();
    path
}

/// Waits until "bc" (its production version) is answered by `version`.
async fn served_by(sb: &Sandbox, row: &[f64], version: u64) {
    until(&format!("the server serves v{version}"), || async {
        let r = sb
            .predictor()
            .await
            .predict(PredictRequest {
                model: MODEL.into(),
                rows: vec![to_row(row)],
                request_id: String::new(),
            })
            .await
            .ok()?;
        (r.into_inner().version == version).then_some(())
    })
    .await;
}

/// Rows of `version` the monitor has counted so far.
async fn logged(sb: &Sandbox, version: u64) -> u64 {
    report(sb, version, WindowKind::Long)
        .await
        .map(|r| r.drift.unwrap().rows)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_with_labels_retrains_and_a_bad_promotion_is_rolled_back() {
    drift_retrain_rollback(Sandbox::builder()).await;
}

/// The same story with mutual TLS and bearer tokens on every daemon: the
/// trainer registers and promotes, the server watches and logs, the monitor
/// retrains and rolls back — each over TLS with its own token, which holds
/// only the roles it needs (`evergreen_e2e::secure::tokens`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_closed_loop_runs_with_mutual_tls_and_each_daemons_own_token() {
    drift_retrain_rollback(Sandbox::builder().secure()).await;
}

async fn drift_retrain_rollback(builder: evergreen_e2e::SandboxBuilder) {
    let sb = builder
        .trainer()
        .monitor_with(|c| {
            c.window_rows = 50;
            c.window_seconds = 3600;
        })
        .server(|_| {})
        .start()
        .await;
    let data = load();

    // v1, promoted.
    let v1 = train(&sb, MODEL, &dataset("breast_cancer.csv")).await;
    sb.registry()
        .await
        .set_alias(SetAliasRequest {
            model: MODEL.into(),
            alias: "production".into(),
            version: v1,
            expected_version: Some(0),
            reason: "first".into(),
        })
        .await
        .unwrap();
    let policy = sb
        .monitor()
        .await
        .set_policy(SetPolicyRequest {
            policy: Some(Policy {
                model: MODEL.into(),
                min_rows: 50,
                min_labels: 30,
                consecutive: 3,
                cooldown_seconds: 1,
                max_metric_drop: 0.1,
                rollback_margin: 0.1,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policy.alias, "production", "defaults filled in");
    assert_eq!((policy.retrain, policy.retire), (Some(true), Some(false)));

    // 1. Traffic like the training data, labeled: healthy windows, no signal.
    until("the server serves v1", || async {
        let mut p = sb.predictor().await;
        p.predict(PredictRequest {
            model: MODEL.into(),
            rows: vec![to_row(&data[0].0)],
            request_id: "warmup".into(),
        })
        .await
        .ok()
        .map(|_| ())
    })
    .await;
    let mut n = until("the monitor saw the warm-up row", || async {
        let n = logged(&sb, v1).await;
        (n > 0).then_some(n)
    })
    .await;
    for (k, chunk) in sample(&data, 0, 150).chunks(50).enumerate() {
        assert_eq!(traffic(&sb, &format!("ref{k}"), chunk, &mut n).await, v1);
    }
    let r = report(&sb, v1, WindowKind::Long).await.unwrap();
    assert!(r.history.len() >= 3, "{} windows closed", r.history.len());
    // A single window may cross a p < 0.05 test by chance (that is what
    // hysteresis is for), but none drifts as a dataset or loses accuracy.
    for w in &r.history {
        assert!(!w.dataset_drift, "window {}: {:?}", w.seq, w.breaches);
        assert!(
            !w.breaches.iter().any(|b| b.contains("accuracy")),
            "window {}: {:?}",
            w.seq,
            w.breaches
        );
    }

    let perf = r.performance.clone().unwrap();
    assert!(perf.labeled >= 150);
    assert!(perf.realized["accuracy"] > 0.85, "{:?}", perf.realized);
    assert!(
        perf.estimated.contains_key("accuracy"),
        "CBPE: {:?}",
        perf.estimated
    );
    assert!(
        signals(&sb).await.is_empty(),
        "no signal on healthy traffic"
    );

    // 2. Drifted traffic (every feature ×1.5), labeled: v1 fails on it.
    let drifted: Vec<(Vec<f64>, String)> = sample(&data, 150, 150)
        .into_iter()
        .map(|(x, y)| (x.iter().map(|v| v * 1.5).collect(), y))
        .collect();
    for (k, chunk) in drifted.chunks(50).enumerate() {
        traffic(&sb, &format!("drift{k}"), chunk, &mut n).await;
    }
    let retrain = until("RETRAIN fires", || async {
        signals(&sb)
            .await
            .into_iter()
            .find(|s| s.kind == SignalKind::Retrain as i32)
    })
    .await;
    assert_eq!(retrain.version, v1);
    assert!(retrain.error.is_empty(), "{retrain:?}");
    assert!(retrain.action.contains("trainer job"), "{retrain:?}");
    assert_eq!(retrain.windows.len(), 3, "three breached windows in a row");
    let evidence = retrain.evidence.join("\n");
    assert!(
        evidence.contains("dataset drift") && evidence.contains("realized accuracy"),
        "{evidence}"
    );
    // The trainer registers v2 and the gate promotes it; the server follows.
    let v2 = until("the gate promotes the retrained version", || async {
        production(&sb).await.filter(|v| *v > v1)
    })
    .await;
    let r = report(&sb, v1, WindowKind::Last).await.unwrap();
    assert!(!r.summary.unwrap().breaches.is_empty());
    served_by(&sb, &data[3].0, v2).await;

    // 3. A deliberately bad version (trained on flipped labels) is promoted.
    let dir = tempfile::tempdir().unwrap();
    let flipped = flipped_dataset(dir.path());
    let v3 = train(&sb, MODEL, &flipped).await;
    sb.registry()
        .await
        .set_alias(SetAliasRequest {
            model: MODEL.into(),
            alias: "production".into(),
            version: v3,
            expected_version: Some(v2),
            reason: "a bad promotion".into(),
        })
        .await
        .unwrap();
    served_by(&sb, &data[5].0, v3).await;
    // The probe request is logged asynchronously: count from what it left.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut n = logged(&sb, v3).await;
    for (k, chunk) in sample(&data, 300, 150).chunks(50).enumerate() {
        traffic(&sb, &format!("bad{k}"), chunk, &mut n).await;
    }
    let rollback = until("ROLLBACK fires", || async {
        signals(&sb)
            .await
            .into_iter()
            .find(|s| s.kind == SignalKind::Rollback as i32)
    })
    .await;
    assert_eq!((rollback.version, rollback.target_version), (v3, v2));
    assert_eq!(
        rollback.action,
        format!("production: {v3} -> {v2}"),
        "{rollback:?}"
    );
    assert_eq!(
        production(&sb).await,
        Some(v2),
        "the alias is back on the good version"
    );
    // Audited with the evidence.
    let h = sb
        .registry()
        .await
        .history(HistoryRequest {
            model: MODEL.into(),
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let last = &h.entries[0];
    assert_eq!((last.alias.as_str(), last.version), ("production", v2));
    assert_eq!(
        last.actor, "evergreen-monitor",
        "attributed in the audit trail"
    );

    assert!(
        last.reason.contains("monitor") && last.reason.contains("realized accuracy"),
        "{}",
        last.reason
    );
    // Each breach fired once.
    let all = signals(&sb).await;
    let kinds: Vec<i32> = all.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [SignalKind::Retrain as i32, SignalKind::Rollback as i32],
        "{all:#?}"
    );
    // And /metrics counts them by kind.
    let page = sb.scrape(sb.monitor_addr.unwrap()).await;
    for kind in ["RETRAIN", "ROLLBACK"] {
        assert_eq!(
            metric(
                &page,
                &format!("evergreen_monitor_signals_total{{kind=\"{kind}\"}}")
            ),
            Some(1.0),
            "{page}"
        );
    }
}

#[tokio::test]
async fn feedback_and_reports_reject_bad_input_and_count_unknown_ids() {
    let sb = Sandbox::builder().monitor().start().await;
    let mut m = sb.monitor().await;
    let r = m
        .record_feedback(RecordFeedbackRequest {
            feedback: vec![Feedback {
                request_id: "never-logged".into(),
                label: "1".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.matched, r.unknown), (0, 1), "counted, not an error");
    let e = m
        .record_feedback(RecordFeedbackRequest { feedback: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("feedback is empty"), "{e:?}");
    let e = m
        .record_feedback(RecordFeedbackRequest {
            feedback: vec![Feedback::default()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("feedback[0].request_id"), "{e:?}");
    let e = m
        .get_report(GetReportRequest {
            model: "nope".into(),
            version: 1,
            window: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = m
        .get_report(GetReportRequest {
            model: "nope".into(),
            version: 1,
            window: 42,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("WINDOW_KIND_LONG"), "{e:?}");
    let e = m
        .set_policy(SetPolicyRequest {
            policy: Some(Policy {
                model: "m".into(),
                drift_share: 2.0,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("policy.drift_share = 2"), "{e:?}");
    let e = m
        .set_policy(SetPolicyRequest { policy: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = m
        .set_policy(SetPolicyRequest {
            policy: Some(Policy {
                model: "../x".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Nothing was stored; the daemon still answers.
    let p = m
        .get_policy(evergreen_proto::v1::GetPolicyRequest { model: "m".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.drift_share, 0.5, "the default, not the refused 2.0");
    assert!(sb.monitor_running());
}

async fn status_of(sb: &Sandbox, version: u64) -> (i32, u64) {
    let v = sb
        .registry()
        .await
        .get_version(evergreen_proto::v1::GetVersionRequest {
            r#ref: Some(evergreen_proto::v1::VersionRef {
                model: MODEL.into(),
                selector: Some(evergreen_proto::v1::version_ref::Selector::Version(version)),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    (v.status, v.replacement_version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_superseded_version_that_fails_is_retired_and_state_survives_a_restart() {
    let mut sb = Sandbox::builder()
        .trainer()
        .monitor_with(|c| {
            c.window_rows = 25;
            c.window_seconds = 3600;
            c.persist_ms = 100;
        })
        .server(|_| {})
        .start()
        .await;
    let data = load();
    let v1 = train(&sb, MODEL, &dataset("breast_cancer.csv")).await;
    let v2 = train(&sb, MODEL, &dataset("breast_cancer.csv")).await;
    let mut reg = sb.registry().await;
    reg.set_alias(SetAliasRequest {
        model: MODEL.into(),
        alias: "production".into(),
        version: v2,
        ..Default::default()
    })
    .await
    .unwrap();
    sb.monitor()
        .await
        .set_policy(SetPolicyRequest {
            policy: Some(Policy {
                model: MODEL.into(),
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

    // v1 still gets traffic by number, and its answers are wrong (the
    // labels are the opposite of the truth): it breaches, while v2 (the
    // production version) did well at training.
    let mut p = sb.predictor().await;
    let rows = sample(&data, 0, 50);
    let spec = format!("{MODEL}/{v1}");
    until("the server serves v1 by number", || async {
        p.clone()
            .predict(PredictRequest {
                model: spec.clone(),
                rows: vec![to_row(&rows[0].0)],
                request_id: "probe".into(),
            })
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    for (i, (x, _)) in rows.iter().enumerate() {
        p.predict(PredictRequest {
            model: spec.clone(),
            rows: vec![to_row(x)],
            request_id: format!("old-{i}"),
        })
        .await
        .unwrap();
    }
    // A request with a row of the wrong width fails, and is counted.
    let e = p
        .predict(PredictRequest {
            model: MODEL.into(),
            rows: vec![to_row(&[1.0, 2.0])],
            request_id: "bad-width".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    until("the monitor has v1's rows", || async {
        let r = report(&sb, v1, WindowKind::Long).await.ok()?;
        (r.drift?.rows >= 51).then_some(())
    })
    .await;
    let feedback: Vec<Feedback> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, y))| Feedback {
            request_id: format!("old-{i}"),
            label: if y == "1" { "0".into() } else { "1".into() },
            ..Default::default()
        })
        .collect();
    let r = sb
        .monitor()
        .await
        .record_feedback(RecordFeedbackRequest { feedback })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.matched, 50);
    let retire = until("RETIRE fires", || async {
        signals(&sb)
            .await
            .into_iter()
            .find(|s| s.kind == SignalKind::Retire as i32)
    })
    .await;
    assert_eq!(
        (retire.version, retire.target_version),
        (v1, v2),
        "{retire:?}"
    );
    assert_eq!(
        status_of(&sb, v1).await,
        (evergreen_proto::v1::VersionStatus::Deprecated as i32, v2),
        "deprecated in favour of the production version"
    );
    assert_eq!(production(&sb).await, Some(v2), "production untouched");
    let errors = until("the failed request is counted", || async {
        let r = report(&sb, v2, WindowKind::Long).await.ok()?;
        let h = r.health?;
        (h.errors >= 1).then_some(h)
    })
    .await;
    assert!(errors.error_rate > 0.0, "{errors:?}");

    // Predictions whose labels come only after the restart.
    let v2_rows = report(&sb, v2, WindowKind::Long)
        .await
        .unwrap()
        .drift
        .unwrap()
        .rows;
    for (i, (x, _)) in rows.iter().take(10).enumerate() {
        p.predict(PredictRequest {
            model: MODEL.into(),
            rows: vec![to_row(x)],
            request_id: format!("late-{i}"),
        })
        .await
        .unwrap();
    }
    until("the monitor has the late rows", || async {
        let r = report(&sb, v2, WindowKind::Long).await.ok()?;
        (r.drift?.rows >= v2_rows + 10).then_some(())
    })
    .await;

    // A server reports 7 records it dropped (queue full, monitor away):
    // the count is shown on every report.
    let dropped = |r: &Report| r.health.as_ref().unwrap().dropped;
    let dropped_before = dropped(&report(&sb, v1, WindowKind::Long).await.unwrap());
    sb.monitor()
        .await
        .log_predictions(futures::stream::iter(vec![PredictionLogBatch {
            records: vec![],
            dropped: 7,
        }]))
        .await
        .unwrap();

    // Restart: windows, labels, history, policy, signals and the dropped
    // count come back.
    let before = report(&sb, v1, WindowKind::Long).await.unwrap();
    assert_eq!(dropped(&before), dropped_before + 7, "{:?}", before.health);
    let signals_before = signals(&sb).await;
    sb.restart_monitor().await;
    // The label join came back: labels for predictions logged before the
    // restart still match; those already matched do not match twice.
    let labels = |tag: &str, n: usize| RecordFeedbackRequest {
        feedback: rows
            .iter()
            .take(n)
            .enumerate()
            .map(|(i, (_, y))| Feedback {
                request_id: format!("{tag}-{i}"),
                label: y.clone(),
                ..Default::default()
            })
            .collect(),
    };
    let r = sb
        .monitor()
        .await
        .record_feedback(labels("late", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.matched, r.unknown), (10, 0), "{r:?}");
    let r = sb
        .monitor()
        .await
        .record_feedback(labels("old", 50))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.matched, 0, "matched before the restart: {r:?}");
    let after = report(&sb, v1, WindowKind::Long).await.unwrap();
    assert_eq!(
        dropped(&after),
        dropped(&before),
        "the dropped count survives a restart"
    );
    assert_eq!(after.drift.unwrap().rows, before.drift.unwrap().rows);
    assert_eq!(
        after.performance.as_ref().unwrap().labeled,
        before.performance.as_ref().unwrap().labeled
    );
    assert_eq!(
        after.performance.unwrap().realized["accuracy"],
        before.performance.unwrap().realized["accuracy"]
    );
    assert_eq!(after.history.len(), before.history.len());
    assert_eq!(signals(&sb).await, signals_before);
    let policy = sb
        .monitor()
        .await
        .get_policy(evergreen_proto::v1::GetPolicyRequest {
            model: MODEL.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((policy.retire, policy.min_rows), (Some(true), 25));
}
