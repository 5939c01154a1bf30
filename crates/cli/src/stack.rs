//! The four daemons in one process, for `evergreen up` and `evergreen demo`.
//!
//! Each daemon is its crate's own `run(config, listener, shutdown)`, exactly
//! as its binary runs it; they still meet only over gRPC on loopback. The
//! stack binds all four listeners first, so that every daemon knows the
//! others' addresses, then wires the URLs a config file or the environment
//! left at their defaults to what was actually bound.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use evergreen_monitor::MonitorConfig;
use evergreen_proto::v1::status_client::StatusClient;
use evergreen_proto::v1::GetStatusRequest;
use evergreen_registry::RegistryConfig;
use evergreen_runtime::client::Client;
use evergreen_runtime::{load_config, ConfigSources, DaemonConfig};
use evergreen_server::ServerConfig;
use evergreen_trainer::TrainerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The daemons, in start order.
pub const DAEMONS: [&str; 4] = ["registry", "trainer", "server", "monitor"];

/// Every daemon's table of the stack config.
#[derive(Debug, Clone, Default)]
pub struct StackConfig {
    pub registry: RegistryConfig,
    pub trainer: TrainerConfig,
    pub server: ServerConfig,
    pub monitor: MonitorConfig,
}

impl StackConfig {
    /// Each daemon's table as its own binary would load it (defaults <
    /// `file` < `EVERGREEN_*` in `env`), with its data under
    /// `data_dir/{registry,trainer,monitor}` when `data_dir` is given (a
    /// flag: it wins over the file and the environment). Errors name the key.
    pub fn load(
        file: Option<PathBuf>,
        env: &HashMap<String, String>,
        data_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let sources = |daemon: &str| {
            ConfigSources {
                file: file.clone(),
                env: env.clone(),
                overrides: Vec::new(),
            }
            .flag(
                "data_dir",
                // The server keeps nothing on disk.
                data_dir
                    .filter(|_| daemon != "server")
                    .map(|d| d.join(daemon).display().to_string()),
            )
        };
        fn one<C: DaemonConfig>(section: &str, s: &ConfigSources) -> anyhow::Result<C> {
            let c: C = load_config(section, s)?;
            c.validate()?;
            evergreen_runtime::metrics::parse_listen(section, &c.shell().metrics_listen)?;
            Ok(c)
        }
        Ok(StackConfig {
            registry: one("registry", &sources("registry"))?,
            trainer: one("trainer", &sources("trainer"))?,
            server: one("server", &sources("server"))?,
            monitor: one("monitor", &sources("monitor"))?,
        })
    }

    /// A throwaway stack under `dir`: every daemon on 127.0.0.1:0, no
    /// metrics endpoint, no config file or environment.
    pub fn ephemeral(dir: &Path) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        StackConfig {
            registry: RegistryConfig {
                listen: any,
                metrics_listen: String::new(),
                data_dir: dir.join("registry"),
                ..Default::default()
            },
            trainer: TrainerConfig {
                listen: any,
                metrics_listen: String::new(),
                data_dir: dir.join("trainer"),
                ..Default::default()
            },
            server: ServerConfig {
                listen: any,
                metrics_listen: String::new(),
                ..Default::default()
            },
            monitor: MonitorConfig {
                listen: any,
                metrics_listen: String::new(),
                data_dir: dir.join("monitor"),
                ..Default::default()
            },
        }
    }

    /// What the demo needs where the config left the default: 50-row
    /// monitor windows (the demo sends a few hundred rows) and a prediction
    /// log flushed every 20 ms.
    pub fn tune_for_demo(&mut self) {
        if self.monitor.window_rows == MonitorConfig::default().window_rows {
            self.monitor.window_rows = 50;
        }
        if self.server.log.flush_ms == ServerConfig::default().log.flush_ms {
            self.server.log.flush_ms = 20;
        }
    }

    /// `daemon`'s `metrics_listen` ("" = off).
    pub fn metrics_listen(&self, daemon: &str) -> &str {
        match daemon {
            "registry" => &self.registry.metrics_listen,
            "trainer" => &self.trainer.metrics_listen,
            "server" => &self.server.metrics_listen,
            _ => &self.monitor.metrics_listen,
        }
    }

    /// `daemon`'s state directory (the server keeps none).
    pub fn data_dir(&self, daemon: &str) -> Option<&Path> {
        match daemon {
            "registry" => Some(&self.registry.data_dir),
            "trainer" => Some(&self.trainer.data_dir),
            "monitor" => Some(&self.monitor.data_dir),
            _ => None,
        }
    }

    /// Whether `daemon` serves TLS (`tls.cert` set).
    pub fn tls(&self, daemon: &str) -> bool {
        let cert = match daemon {
            "registry" => &self.registry.tls.cert,
            "trainer" => &self.trainer.tls.cert,
            "server" => &self.server.tls.cert,
            _ => &self.monitor.tls.cert,
        };
        !cert.as_os_str().is_empty()
    }

    fn listen(&self, daemon: &str) -> SocketAddr {
        match daemon {
            "registry" => self.registry.listen,
            "trainer" => self.trainer.listen,
            "server" => self.server.listen,
            _ => self.monitor.listen,
        }
    }

    /// Points the URLs still at their defaults at the bound addresses.
    fn wire(&mut self, urls: &HashMap<&'static str, String>) {
        let d = StackConfig::default();
        let set = |v: &mut String, default: &str, to: &str| {
            if v == default {
                *v = urls[to].clone();
            }
        };
        set(
            &mut self.registry.monitor_url,
            &d.registry.monitor_url,
            "monitor",
        );
        set(
            &mut self.trainer.registry_url,
            &d.trainer.registry_url,
            "registry",
        );
        set(
            &mut self.server.registry_url,
            &d.server.registry_url,
            "registry",
        );
        set(
            &mut self.server.monitor_url,
            &d.server.monitor_url,
            "monitor",
        );
        set(
            &mut self.monitor.registry_url,
            &d.monitor.registry_url,
            "registry",
        );
        set(
            &mut self.monitor.trainer_url,
            &d.monitor.trainer_url,
            "trainer",
        );
    }
}

/// A daemon's gRPC or metrics address could not be bound.
#[derive(Debug)]
pub struct BindError {
    pub daemon: &'static str,
    /// The config key: "listen" or "metrics_listen".
    pub key: &'static str,
    pub addr: SocketAddr,
    pub error: std::io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (daemon, key, addr) = (self.daemon, self.key, self.addr);
        let why = if self.error.kind() == std::io::ErrorKind::AddrInUse {
            format!("{addr} is already in use (by another `evergreen up` or evergreen-{daemon}?)")
        } else {
            format!("cannot listen on {addr}: {}", self.error)
        };
        write!(
            f,
            "cannot start the {daemon}: {why}; set another address with `{daemon}.{key}` in the config file (--config) or EVERGREEN_{}__{}{}",
            daemon.to_uppercase(),
            key.to_uppercase(),
            if key == "metrics_listen" { " (\"\" = no metrics endpoint)" } else { "" }
        )
    }
}

impl std::error::Error for BindError {}

/// `http://HOST:PORT` for a bound address (loopback for 0.0.0.0 / ::);
/// `https://` when the daemon serves TLS.
fn url_of(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// The running daemons.
pub struct Stack {
    /// The configs they run with (URLs wired).
    pub config: StackConfig,
    addrs: HashMap<&'static str, SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

impl Stack {
    /// Binds the four listen addresses (a busy one is a [`BindError`]),
    /// wires the URLs and starts the daemons. They run until [`Stack::stop`].
    pub async fn start(mut config: StackConfig) -> anyhow::Result<Stack> {
        // The metrics endpoints are bound by each daemon's serve(); a busy
        // one is found here first, so that it is named like a gRPC port.
        for daemon in DAEMONS {
            let m =
                evergreen_runtime::metrics::parse_listen(daemon, config.metrics_listen(daemon))?;
            if let Some(addr) = m.filter(|a| a.port() != 0) {
                std::net::TcpListener::bind(addr).map_err(|error| BindError {
                    daemon,
                    key: "metrics_listen",
                    addr,
                    error,
                })?;
            }
        }
        let mut listeners = HashMap::new();
        let mut addrs = HashMap::new();
        for daemon in DAEMONS {
            let addr = config.listen(daemon);
            let l = TcpListener::bind(addr).await.map_err(|error| BindError {
                daemon,
                key: "listen",
                addr,
                error,
            })?;
            addrs.insert(daemon, l.local_addr()?);
            listeners.insert(daemon, l);
        }
        let urls = addrs
            .iter()
            .map(|(d, a)| (*d, url_of(*a, config.tls(d))))
            .collect();
        config.wire(&urls);

        let (stop, stopped) = watch::channel(false);
        let signal = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut take = |d: &str| listeners.remove(d).expect("bound above");
        let tasks = vec![
            (
                "registry",
                tokio::spawn(evergreen_registry::run(
                    config.registry.clone(),
                    take("registry"),
                    signal(),
                )),
            ),
            (
                "trainer",
                tokio::spawn(evergreen_trainer::run(
                    config.trainer.clone(),
                    take("trainer"),
                    signal(),
                )),
            ),
            (
                "server",
                tokio::spawn(evergreen_server::run(
                    config.server.clone(),
                    take("server"),
                    signal(),
                )),
            ),
            (
                "monitor",
                tokio::spawn(evergreen_monitor::run(
                    config.monitor.clone(),
                    take("monitor"),
                    signal(),
                )),
            ),
        ];
        Ok(Stack {
            config,
            addrs,
            stop,
            tasks,
        })
    }

    /// Waits until all four answer `Status/GetStatus` over `client` (any
    /// gRPC answer counts, UNAUTHENTICATED too: they serve), or one of them
    /// stops: that one's error.
    pub async fn ready(&mut self, client: &Client) -> anyhow::Result<()> {
        let urls: Vec<(&'static str, String)> = DAEMONS.iter().map(|d| (*d, self.url(d))).collect();
        let client = client.clone();
        let serving = async move {
            for (daemon, url) in urls {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                loop {
                    let ok = match client.connect(daemon, &url).await {
                        Ok(ch) => match StatusClient::new(ch).get_status(GetStatusRequest {}).await
                        {
                            Ok(_) => true,
                            Err(s) => s.code() != tonic::Code::Unavailable,
                        },
                        Err(_) => false,
                    };
                    if ok {
                        break;
                    }
                    if std::time::Instant::now() > deadline {
                        anyhow::bail!("the {daemon} did not answer at {url} within 60 s");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            Ok(())
        };
        tokio::select! {
            r = serving => r,
            (daemon, r) = self.exited() => Err(r.err().unwrap_or_else(|| {
                anyhow::anyhow!("the {daemon} stopped by itself")
            })),
        }
    }

    /// The bound gRPC address of `daemon`.
    pub fn addr(&self, daemon: &str) -> SocketAddr {
        self.addrs[daemon]
    }

    /// Where `daemon` serves `/metrics`: `None` when `metrics_listen` is
    /// "" (or it is not bound within 5 s).
    pub async fn metrics_addr(&self, daemon: &str) -> Option<SocketAddr> {
        if self.config.metrics_listen(daemon).is_empty() {
            return None;
        }
        let grpc = self.addr(daemon);
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            evergreen_runtime::metrics_addr(grpc),
        )
        .await
        .ok()
        .flatten()
    }

    /// `http://...` of `daemon`, as clients reach it.
    pub fn url(&self, daemon: &str) -> String {
        url_of(self.addr(daemon), self.config.tls(daemon))
    }

    /// Resolves when a daemon's `run` returns by itself (it failed, or
    /// ended early): its name and what it returned. Pending forever once
    /// every daemon is gone.
    pub async fn exited(&mut self) -> (&'static str, anyhow::Result<()>) {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let (result, i, _) =
            futures::future::select_all(self.tasks.iter_mut().map(|(_, t)| t)).await;
        let (name, _) = self.tasks.remove(i);
        (name, flatten(name, result))
    }

    /// Stops every daemon (each `run` drains and returns) and waits for
    /// them; the first failure is returned, naming its daemon.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut first = Ok(());
        for (name, task) in self.tasks {
            if let Err(e) = flatten(name, task.await) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

fn flatten(
    name: &str,
    r: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    r.with_context(|| format!("the {name} panicked"))?
        .with_context(|| format!("the {name} failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        assert_eq!(
            url_of("0.0.0.0:7400".parse().unwrap(), false),
            "http://127.0.0.1:7400"
        );
        assert_eq!(
            url_of("[::]:7401".parse().unwrap(), false),
            "http://[::1]:7401"
        );
        assert_eq!(
            url_of("10.0.0.5:7402".parse().unwrap(), true),
            "https://10.0.0.5:7402"
        );
    }

    #[test]
    fn only_default_urls_are_wired() {
        let mut c = StackConfig::default();
        c.trainer.registry_url = "http://registry.internal:7400".into();
        let urls: HashMap<&'static str, String> = DAEMONS
            .iter()
            .enumerate()
            .map(|(i, d)| (*d, format!("http://127.0.0.1:{}", 8000 + i)))
            .collect();
        c.wire(&urls);
        assert_eq!(c.registry.monitor_url, "http://127.0.0.1:8003");
        assert_eq!(c.trainer.registry_url, "http://registry.internal:7400");
        assert_eq!(c.server.registry_url, "http://127.0.0.1:8000");
        assert_eq!(c.server.monitor_url, "http://127.0.0.1:8003");
        assert_eq!(c.monitor.registry_url, "http://127.0.0.1:8000");
        assert_eq!(c.monitor.trainer_url, "http://127.0.0.1:8001");
    }

    #[test]
    fn config_comes_from_file_env_and_the_data_dir_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("evergreen.toml");
        std::fs::write(
            &file,
            "[monitor]\nwindow_rows = 77\n[server]\nlisten = \"127.0.0.1:8402\"\n",
        )
        .unwrap();
        let env: HashMap<String, String> = [(
            "EVERGREEN_TRAINER__MAX_CONCURRENT_JOBS".to_string(),
            "3".to_string(),
        )]
        .into();
        let c = StackConfig::load(Some(file.clone()), &env, Some(Path::new("/srv/eg"))).unwrap();
        assert_eq!(c.monitor.window_rows, 77);
        assert_eq!(c.server.listen, "127.0.0.1:8402".parse().unwrap());
        assert_eq!(c.trainer.max_concurrent_jobs, 3);
        assert_eq!(c.registry.data_dir, Path::new("/srv/eg/registry"));
        assert_eq!(c.trainer.data_dir, Path::new("/srv/eg/trainer"));
        assert_eq!(c.monitor.data_dir, Path::new("/srv/eg/monitor"));
        // Without --data-dir: the daemons' own defaults, ./.evergreen/*.
        let c = StackConfig::load(None, &HashMap::new(), None).unwrap();
        assert_eq!(c.registry.data_dir, Path::new(".evergreen/registry"));
        // A bad key is named.
        std::fs::write(&file, "[registry]\nlisten_on = 1\n").unwrap();
        let e = StackConfig::load(Some(file), &HashMap::new(), None).unwrap_err();
        assert!(format!("{e:#}").contains("registry.listen_on"), "{e:#}");
    }
}
