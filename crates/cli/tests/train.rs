//! `evergreen train` as a user runs it: the real binary against a real
//! registry and trainer on loopback.

use std::process::Command;

use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_evergreen");

fn dataset(name: &str) -> String {
    format!("{}/../../data/{name}", env!("CARGO_MANIFEST_DIR"))
}

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
        data_dir: dir.path().join("r"),
        ..Default::default()
    };
    let tc = evergreen_trainer::TrainerConfig {
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
