//! The monitor's configuration: the `[monitor]` table of the stack config.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address ("" = off).
    pub metrics_listen: String,
    /// Allow a non-loopback `listen` without auth (refused otherwise).
    pub insecure: bool,
    /// After SIGTERM, in-flight calls get this long to finish.
    pub shutdown_grace_seconds: u64,
    /// After SIGTERM, health says NOT_SERVING and calls are still accepted
    /// this long (so load balancers stop sending) before the listener
    /// closes; part of the grace period.
    pub shutdown_delay_ms: u64,
    pub tls: evergreen_runtime::TlsConfig,
    pub auth: evergreen_runtime::AuthConfig,
    /// How this daemon calls the others (CA, client certificate, token).
    pub client: evergreen_runtime::ClientConfig,
    pub limits: evergreen_runtime::LimitsConfig,
    /// Where reference profiles come from (the versions' artifacts), and
    /// where rollbacks and deprecations go.
    pub registry_url: String,
    /// Where RETRAIN goes; empty = no trainer (the signal is still raised).
    pub trainer_url: String,
    /// sled database: windows, policies, signals, labeled rows.
    pub data_dir: PathBuf,
    /// Default dataset-drift share (a policy may override it).
    pub drift_share: f64,
    /// A tumbling window closes after this many logged rows...
    pub window_rows: u64,
    /// ...or this many seconds after it opened, whichever comes first.
    pub window_seconds: u64,
    /// Closed windows kept per version (their summaries).
    pub history: usize,
    /// Logged predictions kept to join delayed labels with (oldest evicted
    /// first); about features × 24 bytes each.
    pub feedback_capacity: usize,
    /// Labels for predictions older than this are counted as expired.
    pub feedback_ttl_seconds: u64,
    /// Recent labeled rows kept per model, sent along with RETRAIN.
    pub retrain_rows: usize,
    /// Window state is written to disk this often (the most a crash loses).
    pub persist_ms: u64,
    /// Most records in one LogPredictions batch and most labels in one
    /// RecordFeedback call; more is INVALID_ARGUMENT naming this key.
    pub max_rows_per_request: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7403)),
            metrics_listen: evergreen_runtime::shell::default_metrics_listen(7403),
            insecure: false,
            shutdown_grace_seconds: evergreen_runtime::shell::DEFAULT_GRACE_SECONDS,
            shutdown_delay_ms: 0,
            tls: Default::default(),
            auth: Default::default(),
            client: Default::default(),
            limits: evergreen_runtime::LimitsConfig::with_max_message_bytes(64 << 20),
            registry_url: "http://127.0.0.1:7400".into(),
            trainer_url: "http://127.0.0.1:7401".into(),
            data_dir: PathBuf::from(".evergreen/monitor"),
            drift_share: 0.5,
            window_rows: 1000,
            window_seconds: 300,
            history: 100,
            feedback_capacity: 50_000,
            feedback_ttl_seconds: 7 * 24 * 3600,
            retrain_rows: 10_000,
            persist_ms: 2000,
            max_rows_per_request: 10_000,
        }
    }
}

fn url(key: &str, v: &str, optional: bool) -> anyhow::Result<()> {
    if (optional && v.is_empty()) || v.starts_with("http://") || v.starts_with("https://") {
        return Ok(());
    }
    anyhow::bail!("invalid monitor.{key} = {v:?}: expected an http:// or https:// URL")
}

impl MonitorConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        url("registry_url", &self.registry_url, false)?;
        url("trainer_url", &self.trainer_url, true)?;
        if !(self.drift_share > 0.0 && self.drift_share <= 1.0) {
            anyhow::bail!(
                "invalid monitor.drift_share = {}: expected a share in (0, 1]",
                self.drift_share
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            anyhow::bail!("invalid monitor.data_dir = \"\": expected a directory path");
        }
        let positive = [
            ("window_rows", self.window_rows),
            ("window_seconds", self.window_seconds),
            ("history", self.history as u64),
            ("feedback_capacity", self.feedback_capacity as u64),
            ("feedback_ttl_seconds", self.feedback_ttl_seconds),
            ("persist_ms", self.persist_ms),
            ("max_rows_per_request", self.max_rows_per_request as u64),
        ];
        for (k, v) in positive {
            if v == 0 {
                anyhow::bail!("invalid monitor.{k} = 0: expected a positive number");
            }
        }
        Ok(())
    }
}

impl evergreen_runtime::DaemonConfig for MonitorConfig {
    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn shell(&self) -> evergreen_runtime::Shell {
        evergreen_runtime::shell_of!("monitor", self)
    }

    fn validate(&self) -> anyhow::Result<()> {
        MonitorConfig::validate(self)
    }
}
