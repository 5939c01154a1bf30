//! `evergreen up`, `evergreen up --demo` and `evergreen demo` as a user
//! runs them: the real binary, four daemons in its process, stopped with
//! SIGINT (Ctrl-C). Ports come from a config file (127.0.0.1:0, metrics
//! off) so that the tests never need the fixed 7400-7403.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_evergreen");

/// Every daemon on a free port, no metrics endpoint.
fn config(dir: &Path) -> std::path::PathBuf {
    let mut toml = String::new();
    for d in ["registry", "trainer", "server", "monitor"] {
        toml.push_str(&format!(
            "[{d}]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"\"\n"
        ));
    }
    let path = dir.join("evergreen.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A running `evergreen up`: its stdout, line by line.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn start(args: &[&str], envs: &[(&str, &str)]) -> Up {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(envs.iter().copied())
            .env_remove("EVERGREEN_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Up {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stdout until a line starts with `prefix` (or fails after
    /// `within`); that line.
    fn until(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let mut err = String::new();
                    let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                    panic!(
                        "no line starting with {prefix:?}; stdout so far:\n{}\nstderr:\n{err}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// The gRPC address of `daemon` from the table `up` prints.
    fn addr(&self, daemon: &str) -> String {
        self.seen
            .iter()
            .find_map(|l| {
                let mut cells = l.split_whitespace();
                (cells.next() == Some(daemon)).then(|| cells.next().unwrap().to_string())
            })
            .unwrap_or_else(|| panic!("no {daemon} row in {:?}", self.seen))
    }

    /// `evergreen ARGS` against this stack.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("EVERGREEN_REGISTRY_URL", self.addr("registry"))
            .env("EVERGREEN_TRAINER_URL", self.addr("trainer"))
            .env("EVERGREEN_SERVER_URL", self.addr("server"))
            .env("EVERGREEN_MONITOR_URL", self.addr("monitor"))
            .output()
            .unwrap()
    }

    /// SIGINT, as Ctrl-C sends; the exit code and stderr.
    fn interrupt(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("evergreen up did not stop within 60 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code(), err)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn up_demo_plays_the_lifecycle_leaves_the_stack_up_and_ctrl_c_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let state = dir.path().join("state");
    let mut up = Up::start(
        &[
            "up",
            "--demo",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            state.to_str().unwrap(),
        ],
        &[],
    );
    up.until("try: evergreen status", Duration::from_secs(30));
    for d in ["registry", "trainer", "monitor"] {
        let row = up
            .seen
            .iter()
            .find(|l| l.starts_with(&format!("{d} ")))
            .unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells[2..],
            ["off", &state.join(d).display().to_string()],
            "{row}"
        );
    }
    up.until("Ctrl-C stops everything.", Duration::from_secs(300));
    let out = up.seen.join("\n");
    for line in [
        "==> 1. Train a model: a random forest on breast_cancer.csv",
        "==> The demo is done: 19 steps in",
        "grpcurl -plaintext ",
        "evergreen.v1.Predictor/Predict",
        "evergreen.v1.Monitor/GetDrift",
        "evergreen.v1.Registry/Watch",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    // The stack stays up: the CLI reaches all four, and they hold the demo.
    let status = up.cli(&["status"]);
    let table = text(&status.stdout);
    assert!(status.status.success(), "{table}{}", text(&status.stderr));
    assert!(
        table.contains("models 1, versions 4 (3 active, 1 retired), aliases 1"),
        "{table}"
    );
    let predict = up.cli(&[
        "predict",
        "cancer",
        "--file",
        &format!(
            "{}/../../data/breast_cancer.csv",
            env!("CARGO_MANIFEST_DIR")
        ),
        "--drop",
        "target",
    ]);
    assert!(
        text(&predict.stdout).contains("served by cancer/4 "),
        "{}{}",
        text(&predict.stdout),
        text(&predict.stderr)
    );

    let (code, err) = up.interrupt();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("stopping registry, trainer, server and monitor")
            && err.ends_with("stopped\n"),
        "{err}"
    );
    // The state is where --data-dir put it, archive included.
    assert!(state
        .join("registry/archive/cancer/1/manifest.json")
        .is_file());
    assert!(state.join("trainer/jobs").is_dir());
    assert!(state.join("monitor").is_dir());
}

#[test]
fn up_again_on_the_same_data_dir_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let state = dir.path().join("state");
    let args = [
        "up",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        state.to_str().unwrap(),
    ];
    // The registry's metrics endpoint on a free port: the table says where.
    let mut up = Up::start(
        &args,
        &[("EVERGREEN_REGISTRY__METRICS_LISTEN", "127.0.0.1:0")],
    );
    up.until("try: evergreen status", Duration::from_secs(30));
    let row = up.seen.iter().find(|l| l.starts_with("registry ")).unwrap();
    let url = row.split_whitespace().nth(2).unwrap();
    let hostport = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{row}"));
    let mut conn = std::net::TcpStream::connect(hostport).unwrap();
    std::io::Write::write_all(
        &mut conn,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200") && body.contains("evergreen_build_info"),
        "{body}"
    );
    let created = up.cli(&["models", "create", "churn"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let (code, err) = up.interrupt();
    assert_eq!(code, Some(0), "{err}");

    let mut up = Up::start(&args, &[]);
    up.until("try: evergreen status", Duration::from_secs(30));
    let list = up.cli(&["models", "list"]);
    assert!(
        text(&list.stdout).contains("churn"),
        "{}",
        text(&list.stdout)
    );
    let (code, err) = up.interrupt();
    assert_eq!(code, Some(0), "{err}");
}

/// `evergreen up --config CFG --data-dir DIR/state` with one variable set.
fn up_with(
    cfg: &std::path::Path,
    dir: &std::path::Path,
    var: &str,
    value: &str,
) -> std::process::Output {
    Command::new(BIN)
        .args([
            "up",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            dir.join("state").to_str().unwrap(),
        ])
        .env(var, value)
        .output()
        .unwrap()
}

#[test]
fn up_on_a_busy_port_names_the_daemon_the_address_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    // The environment wins over the file, as for the daemons.
    let out = up_with(&cfg, dir.path(), "EVERGREEN_TRAINER__LISTEN", &addr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: cannot start the trainer: {addr} is already in use (by another `evergreen up` or evergreen-trainer?); set another address with `trainer.listen` in the config file (--config) or EVERGREEN_TRAINER__LISTEN\n"
        )
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    // A busy metrics port is named the same way, with its own key.
    let out = up_with(&cfg, dir.path(), "EVERGREEN_MONITOR__METRICS_LISTEN", &addr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: cannot start the monitor: {addr} is already in use (by another `evergreen up` or evergreen-monitor?); set another address with `monitor.metrics_listen` in the config file (--config) or EVERGREEN_MONITOR__METRICS_LISTEN (\"\" = no metrics endpoint)\n"
        )
    );
}

#[test]
fn up_with_a_bad_config_key_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:0\"\nmax_batch = 5\n").unwrap();
    let out = Command::new(BIN)
        .args(["up", "--config", cfg.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: invalid config key `server.max_batch`"),
        "{err}"
    );
    let format = Command::new(BIN)
        .args(["up", "--log-format", "xml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(format.status.code(), Some(2));
    assert_eq!(
        text(&format.stderr),
        "error: invalid log_format \"xml\" (--log-format / EVERGREEN_LOG_FORMAT): expected \"text\" or \"json\"\n"
    );
    let missing = Command::new(BIN)
        .args(["up", "--config", "/no/such/evergreen.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(
        text(&missing.stderr),
        "error: config file /no/such/evergreen.toml does not exist\n"
    );
}

/// "evergreen demo runs in CI": the real binary, its own stack, exit 0.
#[test]
fn evergreen_demo_plays_every_step_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("demo")
        .current_dir(dir.path())
        .env_remove("EVERGREEN_LOG")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    for line in [
        "evergreen demo: a fresh stack in ",
        "==> 1. Train a model: a random forest on breast_cancer.csv (569 rows, 30 features), seed 42",
        "==> 3. Promote: point the `production` alias at cancer/1",
        "identical: everything random is drawn from the seed",
        "==> 12. The monitor signals: RETRAIN cancer/1",
        "): promoted",
        "a caller of cancer/1 now reads: cancer/1 is deprecated",
        "phase-out DONE: cancer/1 is DEPRECATED",
        "cancer/1: RETIRED after",
        "cancer/1: ARCHIVED, archived to file://",
        "the bytes match.",
        "==> demo: every step succeeded (19 steps in ",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    // Its temp dir is gone, and nothing was left in the working directory.
    let tmp = stdout
        .lines()
        .next()
        .unwrap()
        .strip_prefix("evergreen demo: a fresh stack in ")
        .unwrap()
        .split(" — ")
        .next()
        .unwrap();
    assert!(!Path::new(tmp).exists(), "{tmp} was left behind");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
