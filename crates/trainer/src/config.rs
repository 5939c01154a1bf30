//! The trainer's configuration: the `[trainer]` table of the stack config.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Job records (`jobs/`, sled).
    pub data_dir: PathBuf,
    /// Where versions are registered.
    pub registry_url: String,
    /// Jobs that train at the same time; others wait QUEUED. Each job uses
    /// every core, so more than one mostly adds memory.
    pub max_concurrent_jobs: usize,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            data_dir: PathBuf::from(".evergreen/trainer"),
            registry_url: "http://127.0.0.1:7400".into(),
            max_concurrent_jobs: 1,
        }
    }
}

impl TrainerConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_concurrent_jobs == 0 || self.max_concurrent_jobs > 64 {
            anyhow::bail!(
                "invalid trainer.max_concurrent_jobs = {}: expected 1..=64",
                self.max_concurrent_jobs
            );
        }
        if !(self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://"))
        {
            anyhow::bail!(
                "invalid trainer.registry_url = {:?}: expected an http:// or https:// URL",
                self.registry_url
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            anyhow::bail!("invalid trainer.data_dir: expected a directory path");
        }
        Ok(())
    }
}

impl evergreen_runtime::DaemonConfig for TrainerConfig {
    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn validate(&self) -> anyhow::Result<()> {
        TrainerConfig::validate(self)
    }
}
