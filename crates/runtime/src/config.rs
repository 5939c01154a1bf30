//! Layered configuration: built-in defaults < optional TOML file < `EVERGREEN_*`
//! environment variables < command-line flags.
//!
//! One TOML file can describe the whole stack: each daemon reads its own table
//! (`[registry]`, `[trainer]`, `[server]`, `[monitor]`) and ignores the
//! others'. Environment variables use `__` between levels:
//! `EVERGREEN_REGISTRY__DATA_DIR=/var/lib/evergreen` sets `registry.data_dir`.
//! Unknown keys and invalid values are errors that name the key.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use config::{Config, Environment, File, FileFormat};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Top-level keys a stack config may hold. The daemon tables are validated by
/// their owners; the rest are read by clients (`registry_url`) or by tracing
/// (`log`). Every `EVERGREEN_X` variable the CLI reads must be here, or a
/// daemon started from the same shell would reject it as an unknown key (a
/// CLI test checks this).
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "registry",
    "trainer",
    "server",
    "monitor",
    "cli",
    "log",
    "log_format",
    "registry_url",
    "trainer_url",
    "server_url",
    "monitor_url",
    "actor",
    // The CLI's TLS and token variables (EVERGREEN_TOKEN, EVERGREEN_CA, ...).
    "token",
    "token_file",
    "ca",
    "cert",
    "key",
];

/// Where a daemon's configuration comes from, lowest precedence first.
#[derive(Debug, Default, Clone)]
pub struct ConfigSources {
    /// Optional TOML file (`--config`).
    pub file: Option<PathBuf>,
    /// The process environment (or a test's map): only `EVERGREEN_*` is read.
    pub env: HashMap<String, String>,
    /// Command-line flags, as (key within the daemon's table, value).
    pub overrides: Vec<(String, String)>,
}

impl ConfigSources {
    /// Sources from the real process environment.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
            overrides: Vec::new(),
        }
    }

    /// Adds a command-line override when the flag was given.
    pub fn flag(mut self, key: &str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.overrides.push((key.to_string(), v.to_string()));
        }
        self
    }
}

/// Builds the `section` table of the stack config into `T`, starting from
/// `T::default()`. `T` should be `#[serde(deny_unknown_fields)]`.
pub fn load_config<T>(section: &str, sources: &ConfigSources) -> anyhow::Result<T>
where
    T: DeserializeOwned + Serialize + Default,
{
    let defaults = serde_json::json!({ section: serde_json::to_value(T::default())? });
    let mut builder = Config::builder().add_source(
        Config::try_from(&defaults).context("internal error: defaults do not serialize")?,
    );
    if let Some(path) = &sources.file {
        if !path.is_file() {
            bail!("config file {} does not exist", path.display());
        }
        // Parsed on its own first, so that a syntax error names the file as
        // given, on one line (the TOML error is a multi-line snippet).
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let file = File::from_str(&text, FileFormat::Toml);
        Config::builder()
            .add_source(file.clone())
            .build()
            .map_err(|e| anyhow!("config file {}: {}", path.display(), one_line(&e)))?;
        builder = builder.add_source(file);
    }
    let env: HashMap<String, String> = sources
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("EVERGREEN_") && !is_service_link(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        Environment::with_prefix("EVERGREEN")
            .prefix_separator("_")
            .separator("__")
            .source(Some(env)),
    );
    for (key, value) in &sources.overrides {
        builder = builder.set_override(format!("{section}.{key}"), value.as_str())?;
    }
    let cfg = builder
        .build()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;

    let top: BTreeMap<String, config::Value> = cfg
        .clone()
        .try_deserialize()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    for key in top.keys() {
        if key != section && !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            bail!(
                "unknown config key `{key}` (from the config file or an EVERGREEN_{}* variable); expected one of: {}",
                key.to_uppercase(),
                TOP_LEVEL_KEYS.join(", ")
            );
        }
    }
    let table: config::Value = cfg
        .get(section)
        .map_err(|e| anyhow!("invalid configuration in [{section}]: {e}"))?;
    serde_path_to_error::deserialize(table).map_err(|e| {
        let path = e.path().to_string();
        anyhow!("invalid config key `{section}.{path}`: {}", e.into_inner())
    })
}

/// A parser's message on one line: the lines of its source snippet
/// (`1 | [registry`, `  |          ^`) dropped, the rest joined.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_7400_TCP`,
/// ... for every Service in the namespace (unless the pod says
/// `enableServiceLinks: false`); a Service named `evergreen-registry` gives
/// `EVERGREEN_REGISTRY_SERVICE_HOST`. These are never config, so they are
/// skipped instead of stopping the daemon as unknown keys. Config variables
/// of a daemon table always contain `__`, so none is mistaken for one.
fn is_service_link(var: &str) -> bool {
    if var.contains("__") {
        return false;
    }
    let parts: Vec<&str> = var.split('_').collect();
    let n = parts.len();
    let is_port = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let is_proto = |s: &str| matches!(s, "TCP" | "UDP" | "SCTP");
    // X_SERVICE_HOST, X_SERVICE_PORT, X_SERVICE_PORT_<NAME>
    if let Some(i) = parts.iter().rposition(|p| *p == "SERVICE") {
        if i + 1 < n && ((parts[i + 1] == "HOST" && i + 2 == n) || parts[i + 1] == "PORT") {
            return true;
        }
    }
    // X_PORT (also X_PORT_7400_TCP_PORT), X_PORT_7400_TCP, X_PORT_7400_TCP_{PROTO,ADDR}
    match parts.as_slice() {
        [.., "PORT"] => true,
        [.., "PORT", p, proto] => is_port(p) && is_proto(proto),
        [.., "PORT", p, proto, "PROTO" | "ADDR"] => is_port(p) && is_proto(proto),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        listen: std::net::SocketAddr,
        limit: u64,
        nested: Nested,
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Nested {
        depth: u32,
    }
    impl Default for Demo {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:1".parse().unwrap(),
                limit: 10,
                nested: Nested::default(),
            }
        }
    }
    impl Default for Nested {
        fn default() -> Self {
            Self { depth: 3 }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[demo]\nlimit = 20\n[demo.nested]\ndepth = 4\n[server]\nanything = 1\n",
        )
        .unwrap();
        let only_file = ConfigSources {
            file: Some(path.clone()),
            ..Default::default()
        };
        let c: Demo = load_config("demo", &only_file).unwrap();
        assert_eq!((c.limit, c.nested.depth), (20, 4));

        let with_env = ConfigSources {
            file: Some(path.clone()),
            env: env(&[
                ("EVERGREEN_DEMO__LIMIT", "30"),
                ("EVERGREEN_DEMO__NESTED__DEPTH", "5"),
            ]),
            ..Default::default()
        };
        let c: Demo = load_config("demo", &with_env).unwrap();
        assert_eq!((c.limit, c.nested.depth), (30, 5));

        let with_flag = with_env.flag("limit", Some(40));
        let c: Demo = load_config("demo", &with_flag).unwrap();
        assert_eq!((c.limit, c.nested.depth, c.listen.port()), (40, 5, 1));
    }

    #[test]
    fn a_toml_syntax_error_is_one_line_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[demo\nlimit = ").unwrap();
        let err = load_config::<Demo>(
            "demo",
            &ConfigSources {
                file: Some(path.clone()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            format!(
                "config file {}: TOML parse error at line 1, column 6; unclosed table, expected `]`",
                path.display()
            )
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[demo]\nlimt = 20\n").unwrap();
        let err = load_config::<Demo>(
            "demo",
            &ConfigSources {
                file: Some(path),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("limt"), "{err}");

        let err = load_config::<Demo>(
            "demo",
            &ConfigSources {
                env: env(&[("EVERGREEN_BOGUS", "1")]),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let err = load_config::<Demo>(
            "demo",
            &ConfigSources {
                env: env(&[("EVERGREEN_DEMO__LISTEN", "not-an-address")]),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listen"), "{err}");
        let err = load_config::<Demo>(
            "demo",
            &ConfigSources {
                env: env(&[("EVERGREEN_DEMO__LIMIT", "lots")]),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("limit"), "{err}");
    }

    #[test]
    fn kubernetes_service_links_are_not_config() {
        let links = [
            ("EVERGREEN_REGISTRY_SERVICE_HOST", "10.0.0.7"),
            ("EVERGREEN_REGISTRY_SERVICE_PORT", "7400"),
            ("EVERGREEN_REGISTRY_SERVICE_PORT_GRPC", "7400"),
            ("EVERGREEN_REGISTRY_PORT", "tcp://10.0.0.7:7400"),
            ("EVERGREEN_REGISTRY_PORT_7400_TCP", "tcp://10.0.0.7:7400"),
            ("EVERGREEN_REGISTRY_PORT_7400_TCP_PROTO", "tcp"),
            ("EVERGREEN_REGISTRY_PORT_7400_TCP_PORT", "7400"),
            ("EVERGREEN_REGISTRY_PORT_7400_TCP_ADDR", "10.0.0.7"),
            ("EVERGREEN_DEMO__LIMIT", "30"),
        ];
        let c: Demo = load_config(
            "demo",
            &ConfigSources {
                env: env(&links),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.limit, 30, "real config variables still apply");
        // Near misses are still unknown keys.
        for typo in [
            "EVERGREEN_REGISTRY_PORTS",
            "EVERGREEN_SERVICE_HOSTS",
            "EVERGREEN_DEMO_LIMIT",
        ] {
            let err = load_config::<Demo>(
                "demo",
                &ConfigSources {
                    env: env(&[(typo, "1")]),
                    ..Default::default()
                },
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("unknown config key"), "{typo}: {err}");
        }
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = load_config::<Demo>(
            "demo",
            &ConfigSources {
                file: Some("/nonexistent/evergreen.toml".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/evergreen.toml"), "{err}");
    }
}
