//! The trainer's configuration: the `[trainer]` table of the stack config.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
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
    /// Job records (`jobs/`, sled).
    pub data_dir: PathBuf,
    /// Directories local datasets must be in, separated by `:` (like
    /// `PATH`); a dataset path is resolved (symlinks, `..`) before the
    /// check, and one outside them is PERMISSION_DENIED. The trainer's own
    /// `data_dir` (downloads, retrain data) is always allowed. "" = any
    /// file the trainer process can read (set it whenever callers other
    /// than the operator hold a `trainer` token).
    pub dataset_dirs: String,
    /// Where versions are registered.
    pub registry_url: String,
    /// Jobs that train at the same time; others wait QUEUED. Each job uses
    /// every core, so more than one mostly adds memory.
    pub max_concurrent_jobs: usize,
    /// Jobs that may wait QUEUED at once; a Train, SubmitJob or Retrain
    /// beyond it is RESOURCE_EXHAUSTED naming this key.
    pub max_queued_jobs: usize,
    /// How to reach S3 for `s3://BUCKET/KEY` datasets (`[trainer.s3]`):
    /// endpoint, region, path_style, keys. `bucket` and `prefix` are not
    /// used: the URI names the bucket and the whole key.
    pub s3: evergreen_s3::S3Config,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            metrics_listen: evergreen_runtime::shell::default_metrics_listen(7401),
            insecure: false,
            shutdown_grace_seconds: evergreen_runtime::shell::DEFAULT_GRACE_SECONDS,
            shutdown_delay_ms: 0,
            tls: Default::default(),
            auth: Default::default(),
            client: Default::default(),
            limits: evergreen_runtime::LimitsConfig::with_max_message_bytes(256 << 20),
            data_dir: PathBuf::from(".evergreen/trainer"),
            dataset_dirs: String::new(),
            registry_url: "http://127.0.0.1:7400".into(),
            max_concurrent_jobs: 1,
            max_queued_jobs: 100,
            s3: evergreen_s3::S3Config::default(),
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
        if self.max_queued_jobs == 0 {
            anyhow::bail!("invalid trainer.max_queued_jobs = 0: expected at least 1");
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
        self.s3.validate("trainer.s3").map_err(anyhow::Error::msg)?;
        self.dataset_dirs()?;
        Ok(())
    }

    /// `dataset_dirs` resolved (each must be an existing directory).
    pub fn dataset_dirs(&self) -> anyhow::Result<Vec<PathBuf>> {
        self.dataset_dirs
            .split(':')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| {
                let p = std::fs::canonicalize(d).map_err(|e| {
                    anyhow::anyhow!(
                        "invalid trainer.dataset_dirs: {d:?}: {e}; expected existing directories separated by ':'"
                    )
                })?;
                if !p.is_dir() {
                    anyhow::bail!(
                        "invalid trainer.dataset_dirs: {d:?} is not a directory; expected existing directories separated by ':'"
                    );
                }
                Ok(p)
            })
            .collect()
    }
}

impl evergreen_runtime::DaemonConfig for TrainerConfig {
    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn shell(&self) -> evergreen_runtime::Shell {
        evergreen_runtime::shell_of!("trainer", self)
    }

    fn validate(&self) -> anyhow::Result<()> {
        TrainerConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evergreen_runtime::ConfigSources;

    fn load(env: &[(&str, &str)]) -> anyhow::Result<TrainerConfig> {
        let sources = ConfigSources {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let c: TrainerConfig = evergreen_runtime::config::load_config("trainer", &sources)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn dataset_dirs_must_exist_and_are_resolved() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let dirs = format!("{}:{}/sub/..", d.path().display(), d.path().display());
        let c = load(&[("EVERGREEN_TRAINER__DATASET_DIRS", &dirs)]).unwrap();
        let real = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(c.dataset_dirs().unwrap(), vec![real.clone(), real]);
        let missing = d.path().join("nope");
        let e = load(&[(
            "EVERGREEN_TRAINER__DATASET_DIRS",
            &missing.display().to_string(),
        )])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "invalid trainer.dataset_dirs: {:?}: ",
                missing.display().to_string()
            )) && e.ends_with("expected existing directories separated by ':'"),
            "{e}"
        );
    }

    #[test]
    fn the_s3_table_is_set_from_the_environment_and_validated() {
        let c = load(&[
            ("EVERGREEN_TRAINER__S3__ENDPOINT", "http://minio:9000"),
            ("EVERGREEN_TRAINER__S3__PATH_STYLE", "true"),
            ("EVERGREEN_TRAINER__S3__ACCESS_KEY_ID", "k"),
            ("EVERGREEN_TRAINER__S3__SECRET_ACCESS_KEY", "s"),
        ])
        .unwrap();
        assert_eq!(c.s3.endpoint, "http://minio:9000");
        assert!(c.s3.path_style);
        assert_eq!(
            (c.s3.access_key_id.as_str(), c.s3.region.as_str()),
            ("k", "us-east-1")
        );
        let e = load(&[("EVERGREEN_TRAINER__S3__ENDPOINT", "minio:9000")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid trainer.s3.endpoint = \"minio:9000\""),
            "{e}"
        );
        let e = load(&[("EVERGREEN_TRAINER__S3__ACCESS_KEY_ID", "k")]).unwrap_err();
        assert!(
            e.to_string().contains("trainer.s3.secret_access_key"),
            "{e}"
        );
        let e = load(&[("EVERGREEN_TRAINER__S3__ENDPOINTS", "x")]).unwrap_err();
        assert!(e.to_string().contains("trainer.s3"), "{e}");
    }
}
