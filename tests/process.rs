//! A daemon binary as an operator runs it: a child process started with
//! flags and environment, its "NAME listening on ADDR" line awaited, its
//! stderr collected, stopped by SIGTERM (or killed when dropped).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A daemon binary (`evergreen-registry`, ...) as cargo built it, next to
/// the test binary's directory (`target/<profile>/`, where the `evergreen`
/// binary of a CLI test also is); panics when it is missing.
pub fn daemon_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/TEST-HASH -> target/<profile>/NAME
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the daemons first (cargo build --bins; cargo test --workspace does)",
        p.display()
    );
    p
}

/// Starts the daemon binary `name` (see `daemon_bin`), panicking with its
/// stderr when it does not start.
pub fn start(name: &str, args: &[&str], env: &[(String, String)]) -> Daemon {
    Daemon::start(&daemon_bin(name), args, env)
}

/// A data set of the repository (`crate::dataset`) as a string, for a
/// command line, an environment variable or a `dataset_uri`.
pub fn dataset(name: &str) -> String {
    crate::dataset(name).display().to_string()
}

/// A running daemon child; killed when dropped unless it already exited.
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything it wrote to stderr so far (drained by a thread).
    stderr: Arc<Mutex<String>>,
    /// How it was started, for `restart`.
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// Spawns `bin` (its file name is the daemon's name) and waits for its
/// "NAME listening on ADDR" line; `Err((exit status, stderr))` when it
/// exits first.
pub fn spawn(
    bin: &Path,
    args: &[&str],
    env: &[(String, String)],
) -> Result<Daemon, (ExitStatus, String)> {
    let name = bin
        .file_name()
        .expect("a binary path")
        .to_string_lossy()
        .into_owned();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("EVERGREEN_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    match line
        .trim()
        .strip_prefix(&format!("{name} listening on "))
        .map(|a| a.parse::<SocketAddr>())
    {
        Some(Ok(addr)) => {
            // Keep draining stdout so the daemon never blocks on it.
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            Ok(Daemon {
                name,
                child,
                addr,
                stderr,
                bin: bin.to_path_buf(),
                args: args.iter().map(|a| a.to_string()).collect(),
                env: env.to_vec(),
            })
        }
        _ => {
            let status = child.wait().unwrap();
            // The stderr thread finishes once the process is gone.
            std::thread::sleep(Duration::from_millis(100));
            let err = stderr.lock().unwrap().clone();
            Err((status, err))
        }
    }
}

impl Daemon {
    /// Starts `bin`, panicking with its stderr when it does not start.
    pub fn start(bin: &Path, args: &[&str], env: &[(String, String)]) -> Daemon {
        spawn(bin, args, env)
            .unwrap_or_else(|(s, err)| panic!("{} did not start ({s}): {err}", bin.display()))
    }

    /// The URL clients and the other daemons reach it at, plain.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL clients and the other daemons reach it at, over TLS.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// SIGTERM, then waits (at most 30 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.wait_exit()
    }

    /// Waits (at most 30 s) for the exit status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL (a crash: no drain, no flush), then reaps the process.
    pub fn kill9(&mut self) -> ExitStatus {
        if self.child.try_wait().unwrap().is_none() {
            let _ = self.child.kill();
        }
        self.child.wait().unwrap()
    }

    /// Starts the daemon again, as it was started (same binary, flags,
    /// environment, so the same data dir) but on the address it had, so
    /// that clients and the other daemons find it where it was; stops the
    /// old process first (SIGKILL) if it still runs. The stderr collected
    /// so far is kept, the new process's appended.
    pub fn restart(&mut self) {
        self.kill9();
        let addr = self.addr.to_string();
        let mut args = self.args.clone();
        match args.iter().position(|a| a == "--listen") {
            Some(i) if i + 1 < args.len() => args[i + 1] = addr.clone(),
            _ => args.extend(["--listen".to_string(), addr.clone()]),
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        // The port is free once the old process is reaped (the daemons
        // bind with SO_REUSEADDR), but retry briefly in case the kernel
        // is slow to release it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut next = loop {
            match spawn(&self.bin, &argv, &self.env) {
                Ok(d) => break d,
                Err((_, err)) if err.contains("in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((s, err)) => panic!("{} did not restart on {addr} ({s}): {err}", self.name),
            }
        };
        let old = self.stderr();
        next.stderr.lock().unwrap().insert_str(0, &old);
        assert_eq!(next.addr, self.addr, "restarted on the same address");
        // Swap in the new process; the old (reaped) one is dropped.
        std::mem::swap(self, &mut next);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `bin` expecting a start-up refusal: asserts it exits with `code`
/// and one stderr line, and returns that line.
pub fn refused(bin: &Path, args: &[&str], env: &[(String, String)], code: i32) -> String {
    match spawn(bin, args, env) {
        Ok(d) => panic!(
            "{} started on {} but should have been refused",
            d.name, d.addr
        ),
        Err((status, err)) => {
            assert_eq!(status.code(), Some(code), "{err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            err.trim().to_string()
        }
    }
}

/// `(key, value)` pairs as owned strings, for `spawn`'s `env`.
pub fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// What every daemon binary promises an operator, checked on `bin`
/// (`section` is its config table; `env` adds what it needs to start,
/// such as a data dir): an unknown key or a bad address stops it at
/// start with exit 2 and one line naming the key; started on port 0 it
/// prints its address, and SIGTERM stops it with exit 0 after saying it
/// is shutting down.
pub fn check_start_and_stop(bin: &Path, section: &str, env: &[(String, String)]) {
    let upper = section.to_uppercase();
    let with = |k: &str, v: &str| {
        let mut e = env.to_vec();
        e.push((format!("EVERGREEN_{upper}__{k}"), v.to_string()));
        e
    };
    let err = refused(
        bin,
        &["--listen", "127.0.0.1:0"],
        &with("NO_SUCH_KEY", "1"),
        2,
    );
    assert!(err.contains("no_such_key"), "{err}");
    let err = refused(
        bin,
        &["--listen", "127.0.0.1:0"],
        &with("METRICS_LISTEN", "localhost"),
        2,
    );
    assert!(err.contains(&format!("{section}.metrics_listen")), "{err}");

    let mut d = Daemon::start(
        bin,
        &["--listen", "127.0.0.1:0"],
        &with("METRICS_LISTEN", "127.0.0.1:0"),
    );
    assert!(
        d.addr.port() != 0 && d.addr.ip().is_loopback(),
        "{}",
        d.addr
    );
    std::net::TcpStream::connect(d.addr).expect("it accepts connections");
    assert_eq!(d.terminate().code(), Some(0), "{}", d.stderr());
    assert!(d.stderr().contains("shutting down"), "{}", d.stderr());
}
