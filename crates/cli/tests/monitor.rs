//! The monitoring commands as a user runs them: the real `evergreen` binary
//! against a real registry, trainer, server and monitor on loopback —
//! predictions with request ids, labels from a CSV, then `health`,
//! `versions compare`, `signals` and `monitoring set`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use evergreen_e2e::process::dataset;
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_evergreen");

/// Rows per tumbling window: 60 rows close window #1 and leave 20 open.
const WINDOW_ROWS: u64 = 40;

struct Stack {
    urls: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// Registry, trainer, monitor (small windows) and a server logging to it.
async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let (rl, registry) = bind().await;
    let (tl, trainer) = bind().await;
    let (ml, monitor) = bind().await;
    let (sl, server) = bind().await;
    let rc = evergreen_registry::RegistryConfig {
        metrics_listen: String::new(),
        data_dir: dir.path().join("r"),
        ..Default::default()
    };
    let tc = evergreen_trainer::TrainerConfig {
        metrics_listen: String::new(),
        data_dir: dir.path().join("t"),
        registry_url: registry.clone(),
        ..Default::default()
    };
    let mc = evergreen_monitor::MonitorConfig {
        metrics_listen: String::new(),
        data_dir: dir.path().join("m"),
        registry_url: registry.clone(),
        trainer_url: trainer.clone(),
        window_rows: WINDOW_ROWS,
        window_seconds: 3600,
        ..Default::default()
    };
    let mut sc = evergreen_server::ServerConfig {
        metrics_listen: String::new(),
        registry_url: registry.clone(),
        monitor_url: monitor.clone(),
        ..Default::default()
    };
    sc.log.flush_ms = 20;
    let pending = std::future::pending::<()>;
    tokio::spawn(evergreen_registry::run(rc, rl, pending()));
    tokio::spawn(evergreen_trainer::run(tc, tl, pending()));
    tokio::spawn(evergreen_monitor::run(mc, ml, pending()));
    tokio::spawn(evergreen_server::run(sc, sl, pending()));
    Stack {
        urls: vec![
            ("EVERGREEN_REGISTRY_URL", registry),
            ("EVERGREEN_TRAINER_URL", trainer),
            ("EVERGREEN_MONITOR_URL", monitor),
            ("EVERGREEN_SERVER_URL", server),
        ],
        _dir: dir,
    }
}

async fn evergreen(s: &Stack, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).envs(s.urls.iter().map(|(k, v)| (k, v)));
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and asserts success; returns stdout.
async fn ok(s: &Stack, args: &[&str]) -> String {
    let o = evergreen(s, args).await;
    assert!(o.status.success(), "evergreen {args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Runs until it succeeds (10 s at most): for what the server or the
/// monitor learns asynchronously.
async fn eventually(s: &Stack, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = evergreen(s, args).await;
        if o.status.success() && done(&stdout(&o)) {
            return stdout(&o);
        }
        assert!(
            Instant::now() < deadline,
            "evergreen {args:?} never did: {}{}",
            stdout(&o),
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn train(s: &Stack, depth: &str) {
    ok(
        s,
        &[
            "train",
            "--data",
            &dataset("breast_cancer.csv"),
            "--target",
            "target",
            "--model",
            "bc",
            "--algorithm",
            "decision_tree",
            "--param",
            &format!("max_depth={depth}"),
        ],
    )
    .await;
}

/// Every 9th row of breast_cancer.csv (a spread, not the sorted head), in
/// two request files of 30 rows; returns their labels in order.
fn write_requests(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dataset("breast_cancer.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.step_by(9).take(60).collect();
    let mut labels = Vec::new();
    for (k, chunk) in rows.chunks(30).enumerate() {
        let mut out = format!("{header}\n");
        let mut ls = Vec::new();
        for r in chunk {
            out.push_str(r);
            out.push('\n');
            ls.push(r.rsplit_once(',').unwrap().1.to_string());
        }
        std::fs::write(dir.join(format!("batch{k}.csv")), out).unwrap();
        labels.push(ls);
    }
    labels
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_from_a_csv_show_up_in_health_compare_and_signals() {
    let s = stack().await;
    let dir = tempfile::tempdir().unwrap();

    // A model in production, and a policy tuned for small windows.
    train(&s, "5").await;
    ok(&s, &["alias", "set", "bc", "production", "1"]).await;
    let policy = ok(
        &s,
        &[
            "monitoring",
            "set",
            "bc",
            "--min-rows",
            "20",
            "--min-labels",
            "10",
            "--cooldown",
            "1m",
        ],
    )
    .await;
    let line = |key: &str| {
        policy
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key:?} in {policy}"))
            .split_whitespace()
            .skip(key.split_whitespace().count())
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("min rows"), "20", "{policy}");
    assert_eq!(line("min labels"), "10", "{policy}");
    assert_eq!(line("cooldown"), "1m", "{policy}");
    assert!(
        ["2", "default (2)"].contains(&line("consecutive").as_str()),
        "fields not given keep the default: {policy}"
    );

    // 60 rows in two requests with our own ids; the server prints them back.
    let labels = write_requests(dir.path());
    let mut ids = Vec::new();
    for k in 0..2 {
        let file = dir.path().join(format!("batch{k}.csv"));
        let id = format!("batch-{k}");
        let out = eventually(
            &s,
            &[
                "predict",
                "bc",
                "--file",
                file.to_str().unwrap(),
                "--drop",
                "target",
                "--request-id",
                &id,
            ],
            |_| true,
        )
        .await;
        assert!(
            out.contains(&format!("served by bc/1 (request {id})")),
            "{out}"
        );
        assert!(out.contains("\n29 "), "rows are numbered 0..29: {out}");
        ids.push(id);
    }
    // The log reaches the monitor asynchronously.
    eventually(&s, &["health", "bc", "--window", "long", "--json"], |o| {
        serde_json::from_str::<serde_json::Value>(o).unwrap()["drift"]["rows"].as_u64() == Some(60)
    })
    .await;

    // Labels: one line per (request id, row), plus one nobody asked for.
    let mut csv = String::from("request_id,row,label\n");
    for (id, ls) in ids.iter().zip(&labels) {
        for (row, label) in ls.iter().enumerate() {
            csv.push_str(&format!("{id},{row},{label}\n"));
        }
    }
    csv.push_str("never-served,0,1\n");
    let labels_csv = dir.path().join("labels.csv");
    std::fs::write(&labels_csv, csv).unwrap();
    let out = ok(&s, &["feedback", "--file", labels_csv.to_str().unwrap()]).await;
    assert_eq!(out.trim(), "matched 60, unknown 1, expired 0, invalid 0");
    let out = ok(
        &s,
        &[
            "feedback",
            "--request-id",
            "batch-0",
            "--row",
            "99",
            "--label",
            "1",
            "--json",
        ],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            v["matched"].as_u64(),
            v["unknown"].as_u64(),
            v["sent"].as_u64()
        ),
        (Some(0), Some(1), Some(1)),
        "no row 99 in batch-0: {v}"
    );
    // A file without a label column: exit 2, naming the file and the columns.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "request_id,target\nbatch-0,1\n").unwrap();
    let o = evergreen(&s, &["feedback", "--file", bad.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "error: {}: no `label` or `value` column; expected a header with `request_id` and `label` (or `value`)",
            bad.display()
        )) && err.lines().count() == 1,
        "{err}"
    );

    // health: the drift table, realized accuracy, the closed window's rows.
    let health = ok(&s, &["health", "bc"]).await;
    for expected in [
        "bc/1 (production)  window CURRENT #2  20 rows",
        "mean radius",
        "worst fractal dimension",
        "prediction",
        "labeled rows: 20",
        "last windows (1 of 1):",
    ] {
        assert!(health.contains(expected), "{expected:?} in\n{health}");
    }
    let accuracy = health
        .lines()
        .find(|l| l.starts_with("accuracy "))
        .unwrap_or_else(|| panic!("no accuracy row in\n{health}"));
    let cells: Vec<&str> = accuracy.split_whitespace().collect();
    let realized: f64 = cells[2].parse().unwrap_or_else(|_| panic!("{accuracy}"));
    assert!(realized > 0.8, "realized accuracy: {accuracy}");
    let window = health
        .lines()
        .find(|l| l.starts_with("#1 "))
        .unwrap_or_else(|| panic!("no window #1 in\n{health}"));
    assert!(
        window
            .split_whitespace()
            .any(|c| c == WINDOW_ROWS.to_string()),
        "window #1 holds {WINDOW_ROWS} rows: {window}"
    );

    let v: serde_json::Value =
        serde_json::from_str(&ok(&s, &["health", "bc", "--json"]).await).unwrap();
    for key in [
        "model",
        "version",
        "window",
        "drift",
        "performance",
        "health",
        "summary",
        "history",
        "signals",
    ] {
        assert!(v.get(key).is_some(), "{key} in {v}");
    }
    assert_eq!(v["drift"]["features"].as_array().unwrap().len(), 30);
    assert_eq!(v["performance"]["labeled"], 20);
    assert_eq!(v["history"][0]["rows"], WINDOW_ROWS);
    assert_eq!(v["history"][0]["performance"]["labeled"], WINDOW_ROWS);

    // A second version the monitor has never seen.
    train(&s, "3").await;
    let cmp = ok(&s, &["versions", "compare", "bc", "1", "2"]).await;
    let header = cmp.lines().next().unwrap();
    assert!(header.contains("bc/1") && header.contains("bc/2"), "{cmp}");
    let realized = cmp
        .lines()
        .find(|l| l.starts_with("realized accuracy"))
        .unwrap_or_else(|| panic!("no realized accuracy in\n{cmp}"));
    assert!(
        realized.ends_with('—') || realized.contains(" — "),
        "{realized}"
    );
    assert!(cmp.contains("bc/2: not seen by the monitor"), "{cmp}");

    assert_eq!(ok(&s, &["signals", "bc"]).await.trim(), "no signals for bc");
    assert_eq!(ok(&s, &["signals", "bc", "--json"]).await.trim(), "[]");

    // An unreachable monitor: one line naming the URL and the flag.
    let o = evergreen(&s, &["--monitor", "http://127.0.0.1:1", "signals"]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("http://127.0.0.1:1")
            && err.contains("--monitor")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
}
