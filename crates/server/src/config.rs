//! The server's configuration: the `[server]` table of the stack config.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address (Predictor, Open Inference Protocol V2, health).
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
    /// The registry whose aliases are watched and whose artifacts are loaded.
    pub registry_url: String,
    /// Where prediction logs go; empty = no prediction log.
    pub monitor_url: String,
    /// The alias served for a model addressed by name alone.
    pub default_alias: String,
    /// Per-model overrides: which aliases and pinned versions to keep loaded.
    pub models: BTreeMap<String, ModelServing>,
    /// Largest batch accepted by Predict / ModelInfer, in rows.
    pub max_batch_rows: usize,
    /// Versions loaded on demand (a request for `name/N` or `name@alias`
    /// that is not otherwise served); the oldest is unloaded beyond this.
    pub max_on_demand: usize,
    /// Shadow scorings waiting to run; more are skipped (and counted).
    pub shadow_queue: usize,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelServing {
    /// Aliases to serve (default: `[default_alias]`).
    pub aliases: Vec<String>,
    /// Versions to keep loaded, addressable as `name/N`.
    pub versions: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Share of predictions logged, 0.0-1.0 (decided by request id hash).
    pub sample_rate: f64,
    /// Records waiting to be sent; when full, new records are dropped.
    pub queue: usize,
    /// Records per batch sent to the monitor.
    pub batch: usize,
    /// Longest a record waits before its batch is sent, in milliseconds.
    pub flush_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7402)),
            metrics_listen: evergreen_runtime::shell::default_metrics_listen(7402),
            insecure: false,
            shutdown_grace_seconds: evergreen_runtime::shell::DEFAULT_GRACE_SECONDS,
            shutdown_delay_ms: 0,
            tls: Default::default(),
            auth: Default::default(),
            client: Default::default(),
            limits: evergreen_runtime::LimitsConfig::with_max_message_bytes(64 << 20),
            registry_url: "http://127.0.0.1:7400".into(),
            monitor_url: String::new(),
            default_alias: "production".into(),
            models: BTreeMap::new(),
            max_batch_rows: 10_000,
            max_on_demand: 8,
            shadow_queue: 1024,
            log: LogConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            sample_rate: 1.0,
            queue: 10_000,
            batch: 500,
            flush_ms: 200,
        }
    }
}

impl ServerConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let url = |key: &str, v: &str, optional: bool| -> anyhow::Result<()> {
            if (optional && v.is_empty()) || v.starts_with("http://") || v.starts_with("https://") {
                Ok(())
            } else {
                anyhow::bail!("invalid server.{key} = {v:?}: expected an http:// or https:// URL")
            }
        };
        url("registry_url", &self.registry_url, false)?;
        url("monitor_url", &self.monitor_url, true)?;
        evergreen_proto::names::check_name("server.default_alias", &self.default_alias)
            .map_err(|e| anyhow::anyhow!("invalid server.default_alias: {e}"))?;
        for (name, m) in &self.models {
            evergreen_proto::names::check_name("model name", name)
                .map_err(|e| anyhow::anyhow!("invalid server.models key: {e}"))?;
            for a in &m.aliases {
                evergreen_proto::names::check_name("alias", a)
                    .map_err(|e| anyhow::anyhow!("invalid server.models.{name}.aliases: {e}"))?;
            }
            if m.versions.contains(&0) {
                anyhow::bail!("invalid server.models.{name}.versions: version numbers start at 1");
            }
        }
        if self.max_batch_rows == 0 {
            anyhow::bail!("invalid server.max_batch_rows = 0: expected at least 1");
        }
        if !(0.0..=1.0).contains(&self.log.sample_rate) {
            anyhow::bail!(
                "invalid server.log.sample_rate = {}: expected a share between 0.0 and 1.0",
                self.log.sample_rate
            );
        }
        if self.log.queue == 0 || self.log.batch == 0 {
            anyhow::bail!("invalid server.log.queue / server.log.batch: expected at least 1");
        }
        Ok(())
    }

    /// Aliases served for `model`.
    pub fn aliases_of(&self, model: &str) -> Vec<String> {
        match self.models.get(model) {
            Some(m) if !m.aliases.is_empty() => m.aliases.clone(),
            _ => vec![self.default_alias.clone()],
        }
    }

    pub fn pinned_of(&self, model: &str) -> &[u64] {
        self.models.get(model).map_or(&[], |m| &m.versions)
    }
}

impl evergreen_runtime::DaemonConfig for ServerConfig {
    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn shell(&self) -> evergreen_runtime::Shell {
        evergreen_runtime::shell_of!("server", self)
    }

    fn validate(&self) -> anyhow::Result<()> {
        ServerConfig::validate(self)
    }
}
