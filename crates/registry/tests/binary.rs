//! The real `evergreen-registry` binary: crash safety under `kill -9`, and
//! start-up errors that name what is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    register_version_request::Part, CreateModelRequest, ListVersionsRequest,
    RegisterVersionRequest, VersionHeader,
};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_evergreen-registry");

/// Starts the binary on port 0 and returns it with the address it printed.
fn spawn(data_dir: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("EVERGREEN_LOG", "warn")
        .env("EVERGREEN_REGISTRY__METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn registry");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("listening line")
        .to_string();
    assert!(
        line.contains("listening on"),
        "unexpected first line {line:?}"
    );
    (child, format!("http://{addr}"))
}

fn register_msgs(payload: Vec<u8>) -> Vec<RegisterVersionRequest> {
    vec![
        RegisterVersionRequest {
            part: Some(Part::Header(VersionHeader {
                model: "crash".into(),
                ..Default::default()
            })),
        },
        RegisterVersionRequest {
            part: Some(Part::Chunk(payload)),
        },
    ]
}

/// Checks that every acknowledged version is listed with its sha256 and that
/// the numbers are gapless and unique.
async fn check_survivors(
    client: &mut RegistryClient<Channel>,
    acked: &BTreeMap<u64, String>,
    round: u32,
) {
    let listed = client
        .list_versions(ListVersionsRequest {
            model: "crash".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let listed: BTreeMap<u64, String> = listed
        .versions
        .iter()
        .map(|v| (v.version, v.artifact.clone().unwrap().sha256))
        .collect();
    for (v, sha) in acked {
        assert_eq!(
            listed.get(v),
            Some(sha),
            "round {round}: acknowledged version {v} lost"
        );
    }
    let numbers: BTreeSet<u64> = listed.keys().copied().collect();
    let max = numbers.last().copied().unwrap_or(0);
    assert_eq!(
        numbers,
        (1..=max).collect(),
        "round {round}: gapless, unique numbers"
    );
}

const ROUNDS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_version_survives_kill_9_with_gapless_unique_numbers() {
    let dir = tempfile::tempdir().unwrap();
    // version -> sha256 of every acknowledged registration, over all rounds.
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    // Rounds 0..ROUNDS write and get killed; the last start only checks.
    for round in 0..=ROUNDS {
        let (mut child, url) = spawn(dir.path());
        let mut client = RegistryClient::connect(url.clone()).await.unwrap();
        if round == 0 {
            client
                .create_model(CreateModelRequest {
                    name: "crash".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        // Everything acknowledged before is still there, byte-identical.
        let so_far = acked.lock().unwrap().clone();
        check_survivors(&mut client, &so_far, round).await;
        if round == ROUNDS {
            assert!(
                so_far.len() > 50,
                "the test registered something: {}",
                so_far.len()
            );
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }

        // Many concurrent writers, then kill -9 mid-stream.
        let mut tasks = Vec::new();
        for w in 0..8u32 {
            let url = url.clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(mut c) = RegistryClient::connect(url).await else {
                    return;
                };
                for i in 0u32.. {
                    let payload = format!("round {round} writer {w} item {i}").into_bytes();
                    match c
                        .register_version(futures::stream::iter(register_msgs(payload)))
                        .await
                    {
                        Ok(v) => {
                            let v = v.into_inner();
                            let prev = acked
                                .lock()
                                .unwrap()
                                .insert(v.version, v.artifact.unwrap().sha256);
                            assert!(prev.is_none(), "version {} acknowledged twice", v.version);
                        }
                        Err(_) => return, // the registry died under us
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + 150 * round as u64)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    }
}

/// Runs the binary expecting it to fail at start; returns (exit code, stderr).
fn fails(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("EVERGREEN_REGISTRY__METRICS_LISTEN", "")
        .envs(env.iter().copied())
        .env("EVERGREEN_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one clear line, got {stderr:?}");
    (out.status.code().unwrap(), stderr)
}

#[test]
fn bad_config_and_data_dirs_fail_start_with_one_line_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("evergreen.toml");
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();

    std::fs::write(&cfg, "[registry]\nmax_artifact_byte = 5\n").unwrap();
    let (code, err) = fails(
        &["--config", cfg.to_str().unwrap(), "--data-dir", data],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("max_artifact_byte"), "{err}");

    let (code, err) = fails(
        &["--data-dir", data],
        &[("EVERGREEN_REGISTRY__WATCH__BUFER", "10")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("bufer"), "{err}");

    let (code, err) = fails(
        &["--data-dir", data],
        &[("EVERGREEN_REGISTRY__WATCH__HISTORY", "lots")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("registry.watch.history"), "{err}");

    let (code, err) = fails(
        &["--data-dir", data],
        &[("EVERGREEN_REGISTRY__MAX_ARTIFACT_BYTES", "0")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("registry.max_artifact_bytes"), "{err}");

    let (code, err) = fails(&["--config", "/no/such/evergreen.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/evergreen.toml"), "{err}");

    let (code, err) = fails(&["--data-dir", data], &[("EVERGREEN_LOG_FORMAT", "xml")]);
    assert_eq!(code, 2);
    assert!(err.contains("log_format") && err.contains("json"), "{err}");

    let (code, err) = fails(
        &["--data-dir", data],
        &[("EVERGREEN_REGISTRY__METRICS_LISTEN", "localhost")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("registry.metrics_listen"), "{err}");

    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "hi").unwrap();
    let (code, err) = fails(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            foreign.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("not an Evergreen registry"), "{err}");

    // Flags win over the environment.
    let (_, err) = fails(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            foreign.to_str().unwrap(),
        ],
        &[("EVERGREEN_REGISTRY__DATA_DIR", data)],
    );
    assert!(err.contains("foreign"), "{err}");
}

#[test]
fn json_logs_and_exit_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("EVERGREEN_LOG", "info")
        .env("EVERGREEN_REGISTRY__METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn registry");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line:?}");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let json = |l: &str| -> serde_json::Value {
        serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"))
    };
    loop {
        let l = lines.next().expect("the registry logs").unwrap();
        let v = json(&l);
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        if v["fields"]["message"] == "registry serving" {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");
    let rest: Vec<serde_json::Value> = lines.map(|l| json(&l.unwrap())).collect();
    assert!(
        rest.iter()
            .any(|v| v["fields"]["message"] == "shutting down: health is NOT_SERVING"),
        "{rest:#?}"
    );
}
