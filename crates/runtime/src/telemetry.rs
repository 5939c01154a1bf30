//! Tracing set-up: human-readable logs by default, one JSON object per line
//! with `log_format = "json"` (`--log-format json`, `EVERGREEN_LOG_FORMAT`,
//! or the top-level `log_format` key of the config file), filtered by
//! `EVERGREEN_LOG` / the top-level `log` key (`tracing_subscriber::EnvFilter`
//! syntax, default `info`). Flags beat the environment, which beats the
//! file. Each RPC runs in a span `rpc` with its method and request id, so
//! both formats show them on every line logged while serving it. Nothing
//! logs request headers: tokens never reach the logs.

use std::collections::HashMap;

use tracing_subscriber::EnvFilter;

use crate::ConfigSources;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `EVERGREEN_LOG_FORMAT` from `env` (absent = text); errors name the
    /// key and the choices.
    pub fn from_env(env: &HashMap<String, String>) -> anyhow::Result<Self> {
        match env.get("EVERGREEN_LOG_FORMAT").map(|s| s.trim()) {
            None | Some("") | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => anyhow::bail!(
                "invalid log_format {other:?} (--log-format / EVERGREEN_LOG_FORMAT): expected \"text\" or \"json\""
            ),
        }
    }
}

impl ConfigSources {
    /// `--log-format`: overrides `EVERGREEN_LOG_FORMAT` and the file's
    /// top-level `log_format`.
    pub fn log_format(mut self, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.env
                .insert("EVERGREEN_LOG_FORMAT".into(), v.to_string());
        }
        self
    }

    /// The environment with the file's top-level `log` and `log_format`
    /// as `EVERGREEN_LOG` / `EVERGREEN_LOG_FORMAT` where those are unset.
    pub fn logging_env(&self) -> HashMap<String, String> {
        let mut env = self.env.clone();
        let Some(path) = self.file.as_ref().filter(|p| p.is_file()) else {
            return env;
        };
        let Ok(file) = config::Config::builder()
            .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
            .build()
        else {
            return env; // load_config reports a broken file
        };
        for (key, var) in [
            ("log", "EVERGREEN_LOG"),
            ("log_format", "EVERGREEN_LOG_FORMAT"),
        ] {
            if let Ok(v) = file.get_string(key) {
                env.entry(var.to_string()).or_insert(v);
            }
        }
        env
    }
}

/// Installs the global subscriber once; later calls (e.g. several daemons in
/// one test process) are no-ops. An invalid format falls back to text (the
/// daemons check it first: [`LogFormat::from_env`]).
pub fn init_tracing(env: &HashMap<String, String>) {
    let filter = env
        .get("EVERGREEN_LOG")
        .map(String::as_str)
        .unwrap_or("info");
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("EVERGREEN_LOG={filter:?} is not a valid filter ({e}); using `info`");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LogFormat::from_env(env).unwrap_or(LogFormat::Text) {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_comes_from_flag_then_env_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.toml");
        std::fs::write(&path, "log_format = \"json\"\nlog = \"debug\"\n").unwrap();
        let file_only = ConfigSources {
            file: Some(path.clone()),
            ..Default::default()
        };
        let env = file_only.logging_env();
        assert_eq!(LogFormat::from_env(&env).unwrap(), LogFormat::Json);
        assert_eq!(env["EVERGREEN_LOG"], "debug");

        let with_env = ConfigSources {
            file: Some(path),
            env: [("EVERGREEN_LOG_FORMAT".to_string(), "text".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            LogFormat::from_env(&with_env.logging_env()).unwrap(),
            LogFormat::Text
        );
        let with_flag = with_env.log_format(Some("json"));
        assert_eq!(
            LogFormat::from_env(&with_flag.logging_env()).unwrap(),
            LogFormat::Json
        );
        let bad = ConfigSources::default().log_format(Some("xml"));
        let e = LogFormat::from_env(&bad.logging_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_format") && e.contains("json"), "{e}");
    }
}
