//! The monitor's configuration: the `[monitor]` table of the stack config.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Where reference profiles come from (the versions' artifacts).
    pub registry_url: String,
    /// Dataset drift when at least this share of features drifted.
    pub drift_share: f64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7403)),
            registry_url: "http://127.0.0.1:7400".into(),
            drift_share: 0.5,
        }
    }
}

impl MonitorConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://"))
        {
            anyhow::bail!(
                "invalid monitor.registry_url = {:?}: expected an http:// or https:// URL",
                self.registry_url
            );
        }
        if !(self.drift_share > 0.0 && self.drift_share <= 1.0) {
            anyhow::bail!(
                "invalid monitor.drift_share = {}: expected a share in (0, 1]",
                self.drift_share
            );
        }
        Ok(())
    }
}

impl evergreen_runtime::DaemonConfig for MonitorConfig {
    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn validate(&self) -> anyhow::Result<()> {
        MonitorConfig::validate(self)
    }
}
