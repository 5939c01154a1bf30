//! The registry's configuration: the `[registry]` table of the stack config.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
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
    /// sled database (`sled/`) and local artifacts (`artifacts/`).
    pub data_dir: PathBuf,
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// Artifacts up to this size are stored inside the database (one fsync
    /// with the version record); larger ones go to `data_dir/artifacts`, or
    /// to S3 when `artifacts.s3.bucket` is set.
    pub inline_artifact_bytes: u64,
    pub artifacts: ArtifactsConfig,
    /// The monitor a phase-out asks whether the new version is healthy
    /// before each step; "" = no health check (steps advance on time).
    pub monitor_url: String,
    pub watch: WatchConfig,
    pub archive: ArchiveConfig,
    pub retention: crate::retention::RetentionConfig,
}

/// Where artifacts larger than `inline_artifact_bytes` live: S3 when
/// `s3.bucket` is set (objects `<prefix>artifacts/sha256/<ab>/<sha256>`,
/// shared by every reader of the bucket; the registry checks the bucket and
/// credentials at start-up and refuses to start without them), else
/// `data_dir/artifacts`. Servers still download through the registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// The S3 artifact store; an empty `bucket` = the local directory.
    pub s3: evergreen_s3::S3Config,
}

/// Where `Archive` puts retired versions: S3 when `s3.bucket` is set, else
/// a local directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Local archive directory ("" = `data_dir/archive`).
    pub dir: PathBuf,
    pub s3: evergreen_s3::S3Config,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Events retained for `Watch`; a watcher asking for older ones is told
    /// to relist ("compacted").
    pub history: u64,
    /// Events a watcher may fall behind before its stream ends with a
    /// resumable status.
    pub buffer: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            metrics_listen: evergreen_runtime::shell::default_metrics_listen(7400),
            insecure: false,
            shutdown_grace_seconds: evergreen_runtime::shell::DEFAULT_GRACE_SECONDS,
            shutdown_delay_ms: 0,
            tls: Default::default(),
            auth: Default::default(),
            client: Default::default(),
            limits: evergreen_runtime::LimitsConfig::with_max_message_bytes(16 << 20),
            data_dir: PathBuf::from(".evergreen/registry"),
            max_artifact_bytes: 1 << 30,
            inline_artifact_bytes: 128 * 1024,
            artifacts: ArtifactsConfig::default(),
            monitor_url: "http://127.0.0.1:7403".into(),
            watch: WatchConfig::default(),
            archive: ArchiveConfig::default(),
            retention: Default::default(),
        }
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            history: 100_000,
            buffer: 4096,
        }
    }
}

impl RegistryConfig {
    /// The local archive directory in effect.
    pub fn archive_dir(&self) -> PathBuf {
        if self.archive.dir.as_os_str().is_empty() {
            self.data_dir.join("archive")
        } else {
            self.archive.dir.clone()
        }
    }

    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_artifact_bytes == 0 {
            anyhow::bail!(
                "invalid registry.max_artifact_bytes = 0: expected a positive number of bytes"
            );
        }
        if self.inline_artifact_bytes > 16 << 20 {
            anyhow::bail!(
                "invalid registry.inline_artifact_bytes = {}: expected at most 16777216 (larger artifacts belong in files)",
                self.inline_artifact_bytes
            );
        }
        if self.watch.history == 0 {
            anyhow::bail!(
                "invalid registry.watch.history = 0: expected a positive number of events"
            );
        }
        if self.watch.buffer == 0 || self.watch.buffer > 1 << 20 {
            anyhow::bail!(
                "invalid registry.watch.buffer = {}: expected 1..=1048576 events",
                self.watch.buffer
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            anyhow::bail!(
                "invalid registry.data_dir: expected a directory path, got an empty string"
            );
        }
        self.artifacts
            .s3
            .validate("registry.artifacts.s3")
            .map_err(|e| anyhow::anyhow!(e))?;
        self.archive
            .s3
            .validate("registry.archive.s3")
            .map_err(|e| anyhow::anyhow!(e))?;
        let url = &self.monitor_url;

        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!(
                "invalid registry.monitor_url = {url:?}: expected an http:// or https:// URL (\"\" = no health check)"
            );
        }
        Ok(())
    }
}

impl evergreen_runtime::DaemonConfig for RegistryConfig {
    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn shell(&self) -> evergreen_runtime::Shell {
        evergreen_runtime::shell_of!("registry", self)
    }

    fn validate(&self) -> anyhow::Result<()> {
        RegistryConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_url_is_an_http_url_or_empty() {
        let mut c = RegistryConfig::default();
        assert_eq!(c.monitor_url, "http://127.0.0.1:7403");
        c.validate().unwrap();
        c.monitor_url = String::new();
        c.validate().unwrap();
        c.monitor_url = "monitor:7403".into();
        let e = c.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid registry.monitor_url = \"monitor:7403\": expected an http:// or https:// URL (\"\" = no health check)"
        );
    }
}
