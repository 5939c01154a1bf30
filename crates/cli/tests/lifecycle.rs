//! The end of a version's life as a user drives it: `deprecate`, `retire`,
//! `archive`, `restore` and `versions delete --force` with the real binary
//! against a real registry and trainer on loopback, archiving to the
//! registry's local archive directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use evergreen_e2e::process::dataset;
use serde_json::Value;
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_evergreen");

struct Stack {
    registry: String,
    trainer: String,
    /// `<registry data_dir>/archive`, the default archive target.
    archive_dir: PathBuf,
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
        // No monitor here: the manifest says so instead of asking one.
        monitor_url: String::new(),
        ..Default::default()
    };
    let archive_dir = rc.archive_dir();
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
        archive_dir,
        _dir: dir,
    }
}

async fn evergreen(s: &Stack, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("EVERGREEN_REGISTRY_URL", &s.registry)
        .env("EVERGREEN_TRAINER_URL", &s.trainer)
        .env("EVERGREEN_ACTOR", "tester");
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

/// Runs a command that must succeed; returns its stdout.
async fn ok(s: &Stack, args: &[&str]) -> String {
    let out = evergreen(s, args).await;
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs a command that must fail with exit 1; returns its stderr.
async fn refused(s: &Stack, args: &[&str]) -> String {
    let out = evergreen(s, args).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    stderr(&out)
}

async fn get_json(s: &Stack, reference: &str) -> Value {
    serde_json::from_str(&ok(s, &["versions", "get", reference, "--json"]).await).unwrap()
}

fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(std::fs::read(p).unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn deprecate_retire_archive_restore_and_delete() {
    let s = stack().await;
    let data = dataset("wine.csv");
    for algorithm in ["decision_tree", "logistic_regression"] {
        ok(
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
                "--json",
            ],
        )
        .await;
    }
    ok(&s, &["alias", "set", "wine", "production", "1"]).await;
    let sha = get_json(&s, "wine/1").await["sha256"]
        .as_str()
        .unwrap()
        .to_string();

    // Deprecate: the notice, sunset and replacement are on the version.
    let out = ok(
        &s,
        &[
            "deprecate",
            "wine",
            "1",
            "--notice",
            "moving to version 2",
            "--sunset",
            "2027-01-01",
            "--replacement",
            "2",
        ],
    )
    .await;
    assert!(out.contains("DEPRECATED (moving to version 2)"), "{out}");
    let get = ok(&s, &["versions", "get", "wine/1"]).await;
    assert!(
        get.contains(
            "DEPRECATED (moving to version 2), sunset 2027-01-01T00:00:00Z, replaced by wine/2"
        ),
        "{get}"
    );

    // Retire while production points at it: the registry's message.
    let err = refused(&s, &["retire", "wine", "1", "--reason", "sunset"]).await;
    assert!(
        err.starts_with("error: FAILED_PRECONDITION: cannot retire wine/1:")
            && err.contains("\"production\"")
            && err.contains("move them first"),
        "{err}"
    );
    ok(&s, &["alias", "set", "wine", "production", "2"]).await;
    let out = ok(&s, &["retire", "wine", "1", "--reason", "sunset"]).await;
    assert!(out.contains("RETIRED (sunset)"), "{out}");

    // Archive with the training data: a file:// URI under the archive dir.
    let out = evergreen(
        &s,
        &[
            "archive",
            "wine",
            "1",
            "--include-data",
            "--reason",
            "retention",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("may take a while"),
        "{}",
        stderr(&out)
    );
    let text = stdout(&out);
    let first = text.lines().next().unwrap();
    let uri = first
        .strip_prefix("archived wine/1 to ")
        .unwrap_or_else(|| panic!("{text}"));
    let dir = s.archive_dir.join("wine/1");
    assert_eq!(uri, format!("file://{}/", dir.display()));
    assert!(
        text.contains(&format!("manifest:      {uri}manifest.json")),
        "{text}"
    );
    assert!(text.contains(&format!("{uri}data/wine.csv")), "{text}");
    assert!(text.contains("evergreen restore wine 1"), "{text}");
    assert_eq!(sha256_file(&dir.join("artifact.evgm")), sha);
    assert_eq!(
        sha256_file(&dir.join("data/wine.csv")),
        sha256_file(Path::new(&data))
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["artifact"]["sha256"], sha.as_str());
    assert_eq!(manifest["data"]["included"], true);

    // `versions get` and `list` show ARCHIVED and where.
    let get = ok(&s, &["versions", "get", "wine/1"]).await;
    assert!(get.contains("status:") && get.contains("ARCHIVED"), "{get}");
    assert!(get.contains(&format!("archive:        {uri}")), "{get}");
    let j = get_json(&s, "wine/1").await;
    assert_eq!(
        (j["status"].as_str(), j["archive_uri"].as_str()),
        (Some("ARCHIVED"), Some(uri))
    );
    let list = ok(&s, &["versions", "list", "wine"]).await;
    assert!(list.lines().next().unwrap().ends_with("ARCHIVE"), "{list}");
    assert!(list.contains(uri), "{list}");

    // Not downloadable, not deletable without --force, not archived twice.
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("wine1.evgm");
    let err = refused(
        &s,
        &[
            "versions",
            "download",
            "wine/1",
            "-o",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(err.contains("restore it first"), "{err}");
    let err = refused(&s, &["versions", "delete", "wine/1"]).await;
    assert!(
        err.starts_with("error: FAILED_PRECONDITION: wine/1 is ARCHIVED")
            && err.contains("--force"),
        "{err}"
    );
    let err = refused(&s, &["archive", "wine", "1"]).await;
    assert!(err.contains("ARCHIVED already"), "{err}");

    // Restore as ACTIVE: the same bytes come back.
    let out = ok(
        &s,
        &["restore", "wine", "1", "--activate", "--reason", "audit"],
    )
    .await;
    assert!(
        out.starts_with(&format!(
            "restored wine/1 from {uri} (sha256 verified): ACTIVE"
        )),
        "{out}"
    );
    assert_eq!(get_json(&s, "wine/1").await["status"], "ACTIVE");
    ok(
        &s,
        &[
            "versions",
            "download",
            "wine/1",
            "-o",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(sha256_file(&file), sha);

    let history = ok(&s, &["history", "wine"]).await;
    assert!(
        history.contains("VERSION_ARCHIVED") && history.contains("VERSION_RESTORED"),
        "{history}"
    );
    assert!(
        history.contains(&format!("RETIRED -> ARCHIVED at {uri} (with data)"))
            && history.contains(&format!("ARCHIVED -> ACTIVE, restored from {uri}"))
            && history.contains("DEPRECATED -> RETIRED"),
        "{history}"
    );

    // Archive again (--json), then delete the record with --force: the
    // archive stays.
    ok(&s, &["retire", "wine", "1"]).await;
    let j: Value =
        serde_json::from_str(&ok(&s, &["archive", "wine", "1", "--json"]).await).unwrap();
    assert_eq!(j["status"], "ARCHIVED");
    assert_eq!(j["manifest_uri"], format!("{uri}manifest.json"));
    assert_eq!(j["data"]["included"], false);
    let out = ok(&s, &["versions", "delete", "wine/1", "--force"]).await;
    assert!(out.starts_with("deleted version wine/1"), "{out}");
    assert!(dir.join("artifact.evgm").is_file() && dir.join("manifest.json").is_file());
    let err = refused(&s, &["versions", "get", "wine/1"]).await;
    assert!(err.starts_with("error: NOT_FOUND"), "{err}");
}
