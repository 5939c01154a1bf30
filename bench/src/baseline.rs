//! The Python baselines (bench/python): a virtualenv made from pinned
//! requirements by `bench/python/setup.sh`, and scripts that print one
//! JSON object on stdout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The baselines' interpreter and script directory.
#[derive(Clone, Debug)]
pub struct Python {
    pub exe: PathBuf,
    pub scripts: PathBuf,
}

impl Python {
    /// Runs `bench/python/setup.sh` (creates or reuses the virtualenv and
    /// makes sure wrk is installed); its last stdout line is the python.
    pub fn setup(root: &Path) -> anyhow::Result<Python> {
        let scripts = root.join("bench/python");
        let out = Command::new("bash")
            .arg(scripts.join("setup.sh"))
            .stderr(Stdio::inherit())
            .output()
            .context("run bench/python/setup.sh")?;
        if !out.status.success() {
            bail!("bench/python/setup.sh failed ({})", out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let exe = stdout
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .context("setup.sh printed no python path")?;
        if !exe.is_file() {
            bail!("setup.sh printed {}, which is not a file", exe.display());
        }
        Ok(Python { exe, scripts })
    }

    /// The virtualenv's `bin/` (gunicorn, mlflow live there).
    pub fn bin_dir(&self) -> PathBuf {
        self.exe.parent().unwrap().to_path_buf()
    }

    /// Runs `script` with `args`; its stdout must be one JSON object.
    pub fn run_json(&self, script: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&self.exe)
            .arg(self.scripts.join(script))
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("run {script}"))?;
        if !out.status.success() {
            bail!("{script} {} failed ({})", args.join(" "), out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        serde_json::from_str(last)
            .with_context(|| format!("{script} printed no JSON object: {stdout:?}"))
    }
}

/// A number out of a baseline's JSON, or an error naming the field.
pub fn num(v: &serde_json::Value, field: &str) -> anyhow::Result<f64> {
    v.pointer(field)
        .and_then(|x| x.as_f64())
        .with_context(|| format!("baseline JSON has no number at {field}: {v}"))
}
