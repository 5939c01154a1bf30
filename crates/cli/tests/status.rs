//! `evergreen status` as a user runs it: the real binary against real
//! daemons on loopback — all four up, one of them down, and nothing at all.

use std::process::{Command, Output};

use serde_json::Value;
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_evergreen");

async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// A loopback URL nothing listens on.
async fn closed_url() -> String {
    let (l, url) = bind().await;
    drop(l);
    url
}

/// The four daemons; the server is left out (its URL closed) when `server`
/// is false. Returns (flag env, url) pairs for the CLI and the temp dir.
async fn stack(server: bool) -> (Vec<(&'static str, String)>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (rl, registry) = bind().await;
    let (tl, trainer) = bind().await;
    let (ml, monitor) = bind().await;
    let rc = evergreen_registry::RegistryConfig {
        data_dir: dir.path().join("r"),
        monitor_url: monitor.clone(),
        metrics_listen: String::new(),
        ..Default::default()
    };
    let tc = evergreen_trainer::TrainerConfig {
        data_dir: dir.path().join("t"),
        registry_url: registry.clone(),
        metrics_listen: String::new(),
        ..Default::default()
    };
    let mc = evergreen_monitor::MonitorConfig {
        data_dir: dir.path().join("m"),
        registry_url: registry.clone(),
        trainer_url: trainer.clone(),
        metrics_listen: String::new(),
        ..Default::default()
    };
    let pending = std::future::pending::<()>;
    tokio::spawn(evergreen_registry::run(rc, rl, pending()));
    tokio::spawn(evergreen_trainer::run(tc, tl, pending()));
    tokio::spawn(evergreen_monitor::run(mc, ml, pending()));
    let server = if server {
        let (sl, url) = bind().await;
        let sc = evergreen_server::ServerConfig {
            registry_url: registry.clone(),
            monitor_url: monitor.clone(),
            metrics_listen: String::new(),
            ..Default::default()
        };
        tokio::spawn(evergreen_server::run(sc, sl, pending()));
        url
    } else {
        closed_url().await
    };
    let urls = vec![
        ("EVERGREEN_REGISTRY_URL", registry),
        ("EVERGREEN_TRAINER_URL", trainer),
        ("EVERGREEN_SERVER_URL", server),
        ("EVERGREEN_MONITOR_URL", monitor),
    ];
    (urls, dir)
}

async fn evergreen(urls: &[(&'static str, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .envs(urls.iter().map(|(k, v)| (k, v)))
        .env("EVERGREEN_ACTOR", "tester");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The table row of `daemon`.
fn row<'a>(table: &'a str, daemon: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(&format!("{daemon} ")))
        .unwrap_or_else(|| panic!("no {daemon} row in:\n{table}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn all_four_up_show_version_uptime_and_what_they_hold() {
    let (urls, _dir) = stack(true).await;
    let out = evergreen(&urls, &["models", "create", "churn"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The server's catalog learns about it through Watch.
    let mut served = false;
    for _ in 0..100 {
        let out = evergreen(&urls, &["status", "--json"]).await;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if v[2]["holds"]["revision"] != "0" {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served, "the server never saw revision 1");

    let out = evergreen(&urls, &["status"]).await;
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    assert!(
        table.starts_with("DAEMON    STATE  VERSION  ADDRESS"),
        "{table}"
    );
    let version = env!("CARGO_PKG_VERSION");
    for (daemon, (_, url)) in ["registry", "trainer", "server", "monitor"]
        .iter()
        .zip(&urls)
    {
        let r = row(&table, daemon);
        assert!(
            r.split_whitespace().collect::<Vec<_>>()[..4] == [daemon, "up", version, url],
            "{r}"
        );
    }
    let r = row(&table, "registry");
    assert!(
        r.contains("models 1, versions 0, aliases 0, phase-outs 0, revision 1"),
        "{r}"
    );
    assert!(
        row(&table, "trainer")
            .contains("running 0, queued 0, done 0 (0 succeeded, 0 failed, 0 cancelled)"),
        "{table}"
    );
    assert!(
        row(&table, "server").contains("ready yes, models 0, revision 1"),
        "{table}"
    );
    assert!(
        row(&table, "monitor").contains("models 0, versions 0, policies 0, signals 0 (0 failed)"),
        "{table}"
    );

    let out = evergreen(&urls, &["status", "--json"]).await;
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let daemons: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["daemon"].as_str().unwrap())
        .collect();
    assert_eq!(daemons, ["registry", "trainer", "server", "monitor"]);
    for d in v.as_array().unwrap() {
        assert_eq!(d["up"], true, "{d}");
        assert_eq!(d["version"], version, "{d}");
        assert_eq!(d["name"], d["daemon"], "{d}");
        assert!(d["uptime_seconds"].as_u64().unwrap() < 600, "{d}");
        assert!(d["started_at"].as_str().unwrap().ends_with('Z'), "{d}");
    }
    assert_eq!(v[0]["holds"]["models"], "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_that_is_down_is_shown_with_the_error_and_exit_1() {
    let (urls, _dir) = stack(false).await;
    let server_url = urls[2].1.clone();
    let out = evergreen(&urls, &["status"]).await;
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    let r = row(&table, "server");
    let cells: Vec<&str> = r.split_whitespace().collect();
    assert_eq!(cells[..5], ["server", "down", "-", &server_url, "-"], "{r}");
    assert!(
        cells[5..].join(" ").starts_with(&format!(
            "cannot reach the server at {server_url} (set --server or EVERGREEN_SERVER_URL): "
        )),
        "{r}"
    );
    for d in ["registry", "trainer", "monitor"] {
        assert!(row(&table, d).contains(" up "), "{table}");
    }
    assert_eq!(
        text(&out.stderr).trim(),
        "error: 1 of 4 daemons down: server"
    );

    let out = evergreen(&urls, &["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[2]["up"], false);
    assert_eq!(v[2]["address"], server_url.as_str());
    assert!(
        v[2]["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("cannot reach the server at {server_url}")),
        "{v}"
    );
    assert_eq!(v[0]["up"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_against_nothing_shows_four_down() {
    let mut urls = Vec::new();
    for k in [
        "EVERGREEN_REGISTRY_URL",
        "EVERGREEN_TRAINER_URL",
        "EVERGREEN_SERVER_URL",
        "EVERGREEN_MONITOR_URL",
    ] {
        urls.push((k, closed_url().await));
    }
    let out = evergreen(&urls, &["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    let table = text(&out.stdout);
    for (d, (_, url)) in ["registry", "trainer", "server", "monitor"]
        .iter()
        .zip(&urls)
    {
        let r = row(&table, d);
        assert!(
            r.contains(" down ") && r.contains(&format!("cannot reach the {d} at {url}")),
            "{r}"
        );
    }
    assert_eq!(
        text(&out.stderr).trim(),
        "error: 4 of 4 daemons down: registry, trainer, server, monitor"
    );
}
