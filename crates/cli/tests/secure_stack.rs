//! The real binaries as an operator runs them: `evergreen-registry`,
//! `-trainer`, `-monitor` and `-server` as child processes with one config
//! file (mutual TLS, the tokens file, how they call each other) and
//! environment overrides (each daemon's own token from a "Secret", data
//! dirs, an extra token), driven by the `evergreen` CLI with --ca, --cert,
//! --key and a token per role. Also: start-up refusals (exit 2, one line)
//! and SIGTERM under load.
//!
//! The daemon binaries are the ones next to the `evergreen` binary
//! (`cargo test --workspace` builds them; alone, run `cargo build --bins`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evergreen_e2e::process::{self, dataset, env, Daemon};
use evergreen_e2e::secure::{tokens, Secure};

const CLI: &str = env!("CARGO_BIN_EXE_evergreen");

/// The four daemons with mutual TLS and tokens.
struct SecureStack {
    dir: tempfile::TempDir,
    secure: Secure,
    registry: Daemon,
    trainer: Daemon,
    monitor: Daemon,
    server: Daemon,
}

/// An extra reader token the server alone accepts (from its environment).
const SERVER_ONLY_TOKEN: &str = "server-only-reader-5150";

/// The stack config file: every daemon serves the same certificate with
/// mutual TLS, reads the same tokens file, and calls the others with the
/// CA and the client certificate. Tokens and data dirs come from the
/// environment.
fn config_file(dir: &Path, s: &Secure) -> PathBuf {
    let mut toml = String::new();
    for d in ["registry", "trainer", "monitor", "server"] {
        toml.push_str(&format!(
            "[{d}]\nmetrics_listen = \"127.0.0.1:0\"\n\
             [{d}.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
             [{d}.auth]\ntokens_file = {:?}\n\
             [{d}.client]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n",
            s.pki.server_cert,
            s.pki.server_key,
            s.pki.ca,
            s.tokens_file,
            s.pki.ca,
            s.pki.client_cert,
            s.pki.client_key,
        ));
    }
    let path = dir.join("evergreen.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Starts the stack (`server_env`: more overrides for the server).
fn secure_stack(server_env: &[(&str, String)]) -> SecureStack {
    let dir = tempfile::tempdir().unwrap();
    let secure = Secure::generate(&dir.path().join("secure"));
    let config = config_file(dir.path(), &secure);
    let config = config.to_str().unwrap();
    let data = |d: &str| dir.path().join(d).display().to_string();
    let registry = process::start(
        "evergreen-registry",
        &["--config", config, "--listen", "127.0.0.1:0"],
        &env(&[
            ("EVERGREEN_REGISTRY__DATA_DIR", data("registry")),
            // The registry -> monitor call is covered by the e2e suite.
            ("EVERGREEN_REGISTRY__MONITOR_URL", String::new()),
            (
                "EVERGREEN_REGISTRY__CLIENT__TOKEN",
                tokens::REGISTRY_DAEMON.into(),
            ),
        ]),
    );
    let trainer = process::start(
        "evergreen-trainer",
        &[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &registry.https_url(),
        ],
        &env(&[
            ("EVERGREEN_TRAINER__DATA_DIR", data("trainer")),
            (
                "EVERGREEN_TRAINER__CLIENT__TOKEN",
                tokens::TRAINER_DAEMON.into(),
            ),
        ]),
    );
    let monitor = process::start(
        "evergreen-monitor",
        &[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &registry.https_url(),
            "--trainer",
            &trainer.https_url(),
        ],
        &env(&[
            ("EVERGREEN_MONITOR__DATA_DIR", data("monitor")),
            (
                "EVERGREEN_MONITOR__CLIENT__TOKEN",
                tokens::MONITOR_DAEMON.into(),
            ),
        ]),
    );
    let mut senv = env(&[
        (
            "EVERGREEN_SERVER__CLIENT__TOKEN",
            tokens::SERVER_DAEMON.into(),
        ),
        // Inline tokens add to the file's.
        (
            "EVERGREEN_SERVER__AUTH__TOKENS",
            format!("reader:{SERVER_ONLY_TOKEN}"),
        ),
    ]);
    senv.extend(env(server_env));
    let server = process::start(
        "evergreen-server",
        &[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &registry.https_url(),
            "--monitor",
            &monitor.https_url(),
        ],
        &senv,
    );
    SecureStack {
        dir,
        secure,
        registry,
        trainer,
        monitor,
        server,
    }
}

impl SecureStack {
    /// `evergreen ARGS` with the stack's URLs, the CA and the client
    /// certificate (environment), and `token` (--token) when given.
    fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(CLI);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        cmd.args(args)
            .env_remove("EVERGREEN_TOKEN")
            .env_remove("EVERGREEN_TOKEN_FILE")
            .env("EVERGREEN_REGISTRY_URL", self.registry.https_url())
            .env("EVERGREEN_TRAINER_URL", self.trainer.https_url())
            .env("EVERGREEN_SERVER_URL", self.server.https_url())
            .env("EVERGREEN_MONITOR_URL", self.monitor.https_url())
            .env("EVERGREEN_CA", &self.secure.pki.ca)
            .env("EVERGREEN_CERT", &self.secure.pki.client_cert)
            .env("EVERGREEN_KEY", &self.secure.pki.client_key)
            .env("EVERGREEN_ACTOR", "secure-stack-test");
        cmd.output().unwrap()
    }

    /// Must succeed; returns stdout.
    fn ok(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli(Some(token), args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Must fail with exit 1; returns the stderr.
    fn refused(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.cli(token, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail: {err}");
        err
    }

    /// Trains "wine" as the `trainer` role; returns the version.
    fn train(&self) -> u64 {
        let out = self.ok(
            tokens::TRAINER,
            &[
                "train",
                "--data",
                &dataset("wine.csv"),
                "--target",
                "target",
                "--model",
                "wine",
                "--algorithm",
                "decision_tree",
                "--json",
            ],
        );
        let last = out.lines().last().unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no version in {v}"))
    }

    /// A two-row CSV of wine features (no target).
    fn rows_file(&self) -> PathBuf {
        let text = std::fs::read_to_string(dataset("wine.csv")).unwrap();
        let rows: Vec<&str> = text.lines().take(3).collect();
        let p = self.dir.path().join("rows.csv");
        std::fs::write(&p, rows.join("\n") + "\n").unwrap();
        p
    }

    /// Polls `evergreen predict` as `token` until the server answers.
    fn predict_when_served(&self, token: &str) -> String {
        let file = self.rows_file();
        let args = [
            "predict",
            "wine",
            "--file",
            file.to_str().unwrap(),
            "--drop",
            "target",
            "--json",
        ];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cli(Some(token), &args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "never served: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn roles_through_the_cli_against_the_real_binaries_with_mutual_tls_and_tokens() {
    let s = secure_stack(&[]);

    // No token / an unknown one.
    let err = s.refused(None, &["models", "list"]);
    assert_eq!(
        err.trim(),
        "error: UNAUTHENTICATED: missing bearer token: set --token or EVERGREEN_TOKEN"
    );
    let err = s.refused(Some("nobody-issued-this"), &["models", "list"]);
    assert_eq!(err.trim(), "error: UNAUTHENTICATED: unknown bearer token");
    assert!(
        !err.contains("nobody-issued-this"),
        "a token is never echoed: {err}"
    );

    // Reader (from EVERGREEN_TOKEN): reads, cannot write.
    let out = Command::new(CLI)
        .args(["models", "list"])
        .env("EVERGREEN_TOKEN", tokens::READER)
        .env("EVERGREEN_REGISTRY_URL", s.registry.https_url())
        .env("EVERGREEN_CA", &s.secure.pki.ca)
        .env("EVERGREEN_CERT", &s.secure.pki.client_cert)
        .env("EVERGREEN_KEY", &s.secure.pki.client_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = s.refused(Some(tokens::READER), &["models", "create", "scratch"]);
    assert_eq!(
        err.trim(),
        "error: PERMISSION_DENIED: evergreen.v1.Registry/CreateModel needs the trainer role (or admin); this token has reader"
    );

    // Trainer: trains (the trainer daemon registers with its own token),
    // cannot promote.
    let v1 = s.train();
    assert_eq!(v1, 1);
    let err = s.refused(
        Some(tokens::TRAINER),
        &["alias", "set", "wine", "production", "1"],
    );
    assert!(
        err.starts_with(
            "error: PERMISSION_DENIED: evergreen.v1.Registry/SetAlias needs the deployer role"
        ),
        "{err}"
    );

    // Deployer (from --token-file): promotes.
    let token_file = s.dir.path().join("deployer.token");
    std::fs::write(&token_file, format!("{}\n", tokens::DEPLOYER)).unwrap();
    let out = s.cli(
        None,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "alias",
            "set",
            "wine",
            "production",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Reader predicts once the server (watching the registry with its own
    // token) serves v1; the monitor gets the log (the server's token).
    let out = s.predict_when_served(tokens::READER);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["version"], 1, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = s.cli(
            Some(tokens::READER),
            &["health", "wine", "--window", "long", "--json"],
        );
        let rows = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["drift"]["rows"].as_u64());
        if rows.is_some_and(|r| r >= 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the monitor never got the prediction log: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The server-only token (EVERGREEN_SERVER__AUTH__TOKENS) works there,
    // and nowhere else.
    s.predict_when_served(SERVER_ONLY_TOKEN);
    let err = s.refused(Some(SERVER_ONLY_TOKEN), &["models", "list"]);
    assert_eq!(err.trim(), "error: UNAUTHENTICATED: unknown bearer token");

    // Deletes are the admin's.
    s.ok(tokens::TRAINER, &["models", "create", "scratch"]);
    let err = s.refused(Some(tokens::DEPLOYER), &["models", "delete", "scratch"]);
    assert_eq!(
        err.trim(),
        "error: PERMISSION_DENIED: evergreen.v1.Registry/DeleteModel needs the admin role; this token has deployer"
    );
    s.ok(tokens::ADMIN, &["models", "delete", "scratch"]);

    // Mutual TLS: without a client certificate the handshake is refused;
    // without the CA the daemon is not trusted.
    let out = Command::new(CLI)
        .args(["--token", tokens::ADMIN, "models", "list"])
        .env("EVERGREEN_REGISTRY_URL", s.registry.https_url())
        .env("EVERGREEN_CA", &s.secure.pki.ca)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The client sees the server's alert, or (TLS 1.3: the handshake ends
    // on the client first) the connection closed or broken under its first
    // call, depending on which side the refusal reaches first.
    assert!(
        err.contains("CertificateRequired")
            || err.contains("connection closed")
            || err.contains("broken pipe"),
        "{err}"
    );
    let out = Command::new(CLI)
        .args(["--token", tokens::ADMIN, "models", "list"])
        .env("EVERGREEN_REGISTRY_URL", s.registry.https_url())
        .env("EVERGREEN_CERT", &s.secure.pki.client_cert)
        .env("EVERGREEN_KEY", &s.secure.pki.client_key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer")
            && err.contains("(TLS: --ca, --cert, --key)"),
        "{err}"
    );
    // A bad --ca is a usage error.
    let out = s.cli(
        Some(tokens::ADMIN),
        &["--ca", "/no/such/ca.pem", "models", "list"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: cannot read --ca /no/such/ca.pem: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No daemon ever logged a token.
    for d in [&s.registry, &s.trainer, &s.monitor, &s.server] {
        let log = d.stderr();
        for t in [
            tokens::READER,
            tokens::TRAINER,
            tokens::DEPLOYER,
            tokens::ADMIN,
            tokens::REGISTRY_DAEMON,
            tokens::TRAINER_DAEMON,
            tokens::SERVER_DAEMON,
            tokens::MONITOR_DAEMON,
            SERVER_ONLY_TOKEN,
        ] {
            assert!(!log.contains(t), "{} logged a token", d.name);
        }
    }
}

#[test]
fn start_up_refusals_exit_2_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let secure = Secure::generate(&dir.path().join("secure"));
    let data = dir.path().join("registry").display().to_string();
    let base = vec![
        ("EVERGREEN_REGISTRY__DATA_DIR".to_string(), data),
        (
            "EVERGREEN_REGISTRY__METRICS_LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
    ];
    let refused = |args: &[&str], extra: &[(&str, String)]| -> String {
        let mut e = base.clone();
        e.extend(env(extra));
        process::refused(&process::daemon_bin("evergreen-registry"), args, &e, 2)
    };

    // A public address without auth.
    let err = refused(&["--listen", "0.0.0.0:0"], &[]);
    assert_eq!(
        err,
        "evergreen-registry: refusing to serve on 0.0.0.0:0 (not a loopback address) without auth: set registry.auth.tokens_file or EVERGREEN_REGISTRY__AUTH__TOKENS, or pass --insecure (registry.insecure = true) to serve it open"
    );
    // TLS does not change that: auth is what matters.
    let err = refused(
        &["--listen", "0.0.0.0:0"],
        &[
            (
                "EVERGREEN_REGISTRY__TLS__CERT",
                secure.pki.server_cert.display().to_string(),
            ),
            (
                "EVERGREEN_REGISTRY__TLS__KEY",
                secure.pki.server_key.display().to_string(),
            ),
        ],
    );
    assert!(err.contains("without auth"), "{err}");
    // A bad certificate path names the key and the path.
    let err = refused(
        &["--listen", "127.0.0.1:0"],
        &[
            ("EVERGREEN_REGISTRY__TLS__CERT", "/no/such/cert.pem".into()),
            (
                "EVERGREEN_REGISTRY__TLS__KEY",
                secure.pki.server_key.display().to_string(),
            ),
        ],
    );
    assert!(
        err.starts_with(
            "evergreen-registry: cannot read registry.tls.cert /no/such/cert.pem: No such file"
        ),
        "{err}"
    );
    // A key that is not the certificate's.
    let err = refused(
        &["--listen", "127.0.0.1:0"],
        &[
            (
                "EVERGREEN_REGISTRY__TLS__CERT",
                secure.pki.server_cert.display().to_string(),
            ),
            (
                "EVERGREEN_REGISTRY__TLS__KEY",
                secure.pki.client_key.display().to_string(),
            ),
        ],
    );
    assert!(
        err.starts_with("evergreen-registry: invalid registry.tls.cert "),
        "{err}"
    );
    // A tokens file with an unknown role names the file and line.
    let bad = dir.path().join("bad-tokens");
    std::fs::write(&bad, "reader r1\nsuperuser s3cr3t\n").unwrap();
    let err = refused(
        &["--listen", "127.0.0.1:0"],
        &[(
            "EVERGREEN_REGISTRY__AUTH__TOKENS_FILE",
            bad.display().to_string(),
        )],
    );
    assert!(
        err.contains("registry.auth.tokens_file") && err.contains("line 2: unknown role"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t"), "a token is never echoed: {err}");

    // With --insecure it serves, and stops cleanly.
    let mut e = base.clone();
    e.push((
        "EVERGREEN_REGISTRY__DATA_DIR".into(),
        dir.path().join("insecure").display().to_string(),
    ));
    let mut d = process::spawn(
        &process::daemon_bin("evergreen-registry"),
        &["--listen", "0.0.0.0:0", "--insecure"],
        &e,
    )
    .unwrap_or_else(|(s, err)| panic!("--insecure did not start ({s}): {err}"));
    assert!(d.addr.ip().is_unspecified(), "{}", d.addr);
    assert_eq!(d.terminate().code(), Some(0), "{}", d.stderr());
}

/// SIGTERM to the server while clients predict: the server goes
/// NOT_SERVING, keeps serving for `shutdown_delay_ms` while the clients
/// (like a load balancer) notice and stop sending, finishes what it
/// accepted and exits 0. Not one accepted prediction fails.
#[test]
fn sigterm_under_load_loses_no_request() {
    let mut s = secure_stack(&[("EVERGREEN_SERVER__SHUTDOWN_DELAY_MS", "1500".into())]);
    s.train();
    s.ok(
        tokens::DEPLOYER,
        &["alias", "set", "wine", "production", "1"],
    );
    s.predict_when_served(tokens::READER);
    let report = sigterm_under_load(&mut s);
    eprintln!("{report:?}");
    assert_eq!(report.exit.code(), Some(0), "{}", s.server.stderr());
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    assert!(report.ok_before > 0, "{report:?}");
    assert!(
        report.ok_after_sigterm > 0,
        "calls are still served during the delay: {report:?}"
    );
}

#[derive(Debug)]
struct LoadReport {
    exit: ExitStatus,
    ok_before: u64,
    ok_after_sigterm: u64,
    failed: Vec<String>,
}

/// The hook: runs prediction loops against the stack's server over mutual
/// TLS as a reader, sends SIGTERM, and stops the loops 300 ms after the
/// server's health says NOT_SERVING (a load balancer's reaction time,
/// shorter than the server's shutdown_delay_ms).
fn sigterm_under_load(s: &mut SecureStack) -> LoadReport {
    use evergreen_proto::v1::predictor_client::PredictorClient;
    use evergreen_proto::v1::{value, PredictRequest, Row, Value};
    use evergreen_runtime::tonic_health::pb::health_check_response::ServingStatus;
    use evergreen_runtime::tonic_health::pb::health_client::HealthClient;
    use evergreen_runtime::tonic_health::pb::HealthCheckRequest;

    let text = std::fs::read_to_string(dataset("wine.csv")).unwrap();
    let row: Vec<f64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    let row = Row {
        values: row[..row.len() - 1]
            .iter()
            .map(|v| Value {
                kind: Some(value::Kind::Number(*v)),
            })
            .collect(),
        named: Default::default(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = s.server.https_url();
    let client = s.secure.client(tokens::READER);
    let sigterm_sent = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ok_before = Arc::new(AtomicU64::new(0));
    let ok_after = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    rt.block_on(async {
        let mut loops = Vec::new();
        for _ in 0..2 {
            let channel = client.connect("server", &url).await.unwrap();
            for _ in 0..4 {
                let mut p = PredictorClient::new(channel.clone());
                let (stop, sent) = (stop.clone(), sigterm_sent.clone());
                let (before, after, failed) = (ok_before.clone(), ok_after.clone(), failed.clone());
                let row = row.clone();
                loops.push(tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let r = p
                            .predict(PredictRequest {
                                model: "wine".into(),
                                rows: vec![row.clone()],
                                request_id: String::new(),
                            })
                            .await;
                        match r {
                            Ok(_) if sent.load(Ordering::SeqCst) => {
                                after.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(_) => {
                                before.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                }));
            }
        }
        // The load balancer: stops sending once health says NOT_SERVING.
        let mut health = HealthClient::new(client.connect("server", &url).await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        sigterm_sent.store(true, Ordering::SeqCst);
        let pid = s.server.child.id().to_string();
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = health.check(HealthCheckRequest::default()).await;
            if r.map(|r| r.into_inner().status != ServingStatus::Serving as i32)
                .unwrap_or(true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "health never left SERVING");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        for l in loops {
            l.await.unwrap();
        }
    });
    let exit = s.server.wait_exit();
    let failed = failed.lock().unwrap().clone();
    LoadReport {
        exit,
        ok_before: ok_before.load(Ordering::SeqCst),
        ok_after_sigterm: ok_after.load(Ordering::SeqCst),
        failed,
    }
}
