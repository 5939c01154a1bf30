//! `evergreen train` as a user runs it: the real binary against a real
//! registry and trainer on loopback.

use std::process::Command;

use evergreen_e2e::process::dataset;
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_evergreen");

struct Stack {
    registry: String,
    trainer: String,
    _dir: tempfile::TempDir,
}

async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let rl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}", rl.local_addr().unwrap());
    let trainer = format!("http://{}", tl.local_addr().unwrap());
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
    tokio::spawn(evergreen_registry::run(rc, rl, std::future::pending()));
    tokio::spawn(evergreen_trainer::run(tc, tl, std::future::pending()));
    Stack {
        registry,
        trainer,
        _dir: dir,
    }
}

async fn evergreen(s: &Stack, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("EVERGREEN_REGISTRY_URL", &s.registry)
        .env("EVERGREEN_TRAINER_URL", &s.trainer);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn train_prints_progress_and_a_json_result() {
    let s = stack().await;
    let data = dataset("wine.csv");
    let out = evergreen(
        &s,
        &[
            "train",
            "--data",
            &data,
            "--target",
            "target",
            "--model",
            "wine",
            "--algorithm",
            "logistic_regression",
            "--param",
            "alpha=0.01,0.1",
            "--cv",
            "3",
            "--seed",
            "42",
            "--promote-if-better",
            "production",
            "--metric",
            "f1_macro",
            "--json",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for stage in [
        "loading:",
        "searching:",
        "fitting:",
        "evaluating:",
        "comparing:",
        "registering:",
    ] {
        assert!(
            stderr.contains(stage),
            "progress line {stage} missing from {stderr}"
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["artifact_sha256"].as_str().unwrap().len(), 64);
    assert!(v["metrics"]["accuracy"].as_f64().unwrap() > 0.9, "{v}");
    assert!(
        v["metrics"]["roc_auc"].as_f64().is_some(),
        "one-vs-rest AUC for 3 classes"
    );
    assert_eq!(v["gate"]["promoted"], true);

    // The human form: a summary with the metrics table.
    let out = evergreen(&s, &["jobs", "get", v["job"].as_str().unwrap()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SUCCEEDED") && text.contains("wine/1") && text.contains("f1_macro"),
        "{text}"
    );
    let out = evergreen(&s, &["versions", "get", "wine@production"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("logistic_regression"));
}

#[tokio::test(flavor = "multi_thread")]
async fn train_errors_name_the_problem_and_exit_1() {
    let s = stack().await;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "a,target\n1,0\n2,1\nx,0\n").unwrap();
    let out = evergreen(
        &s,
        &[
            "train",
            "--data",
            bad.to_str().unwrap(),
            "--target",
            "target",
            "--model",
            "m",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: INVALID_ARGUMENT:")
            && stderr.contains("bad.csv line 4: column a: cannot parse \"x\" as a number"),
        "{stderr}"
    );
    let out = evergreen(
        &s,
        &[
            "train",
            "--data",
            &dataset("wine.csv"),
            "--target",
            "nope",
            "--model",
            "m",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("target column \"nope\" is not in"));
    let out = evergreen(&s, &["--trainer", "http://127.0.0.1:1", "jobs", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("error: UNAVAILABLE: cannot reach the trainer"));
}

#[tokio::test(flavor = "multi_thread")]
async fn predict_served_rollback_and_policy_from_the_cli() {
    let s = stack().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let sc = evergreen_server::ServerConfig {
        metrics_listen: String::new(),
        registry_url: s.registry.clone(),
        ..Default::default()
    };
    tokio::spawn(evergreen_server::run(sc, listener, std::future::pending()));
    let data = dataset("wine.csv");
    for algorithm in ["decision_tree", "logistic_regression"] {
        let out = evergreen(
            &s,
            &[
                "train",
                "--data",
                &data,
                "--target",
                "target",
                "--model",
                "wine",
                "--algorithm",
                algorithm,
            ],
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let run = |args: Vec<String>| {
        let (s, server) = (&s, server.clone());
        async move {
            let mut full = vec!["--server".to_string(), server];
            full.extend(args);
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            evergreen(s, &refs).await
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(run(args(&["alias", "set", "wine", "production", "1"]))
        .await
        .status
        .success());
    let row = "14.23,1.71,2.43,15.6,127,2.8,3.06,.28,2.29,5.64,1.04,3.92,1065";
    // The server learns of the promotion from the watch; retry briefly.
    let mut out = run(args(&["predict", "wine", "--row", row, "--json"])).await;
    for _ in 0..100 {
        if out.status.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        out = run(args(&["predict", "wine", "--row", row, "--json"])).await;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["predictions"][0]["label"].as_str()),
        (Some(1), Some("0"))
    );
    assert_eq!(v["labels"], serde_json::json!(["0", "1", "2"]));

    assert!(run(args(&["alias", "set", "wine", "production", "2"]))
        .await
        .status
        .success());
    let out = run(args(&["rollback", "wine", "--reason", "worse"])).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("version:  1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(args(&[
        "policy", "set", "wine", "--weight", "1=90", "--weight", "2=10",
    ]))
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("traffic policy: 1=90 2=10"));
    let out = run(args(&["policy", "set", "wine", "--weight", "1=x"])).await;
    assert_eq!(out.status.code(), Some(2), "clap rejects a bad --weight");
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected VERSION=WEIGHT"));

    let out = run(args(&["predict", "wine", "--row", "1,2"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("error: INVALID_ARGUMENT: row 0: expected 13 values"));
    let out = run(args(&["served"])).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ready at registry revision") && text.contains("wine"),
        "{text}"
    );
}
