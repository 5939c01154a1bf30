//! What every section gets: where things are and how hard to push.

use std::path::PathBuf;
use std::time::Duration;

use crate::baseline::Python;

pub struct Ctx {
    /// ../shared/data: the CSV sets both sides use.
    pub data: PathBuf,
    /// Where the Evergreen binaries are (next to this one).
    pub bins: PathBuf,
    /// Scratch space for the run (train/test splits, sled dirs, models).
    pub work: PathBuf,
    /// The baselines; `None` with `--no-baselines`.
    pub python: Option<Python>,
    /// Tiny sizes, to keep the harness from rotting (CI).
    pub smoke: bool,
    /// Length of one load measurement.
    pub secs: Duration,
}

impl Ctx {
    /// A data file by name.
    pub fn dataset(&self, name: &str) -> PathBuf {
        self.data.join(name)
    }

    /// An Evergreen daemon binary, built next to bench-compare.
    pub fn bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.bins.join(name);
        anyhow::ensure!(
            p.is_file(),
            "{} is missing: build it first (just bench-compare runs `cargo build --release --bins`)",
            p.display()
        );
        Ok(p)
    }

    /// `full` normally, `small` in a smoke run.
    pub fn size(&self, full: usize, small: usize) -> usize {
        if self.smoke {
            small
        } else {
            full
        }
    }
}

/// A 70/30 split of a CSV, written once per run so both sides of a
/// comparison train and score on identical rows.
pub struct Split {
    pub train: PathBuf,
    pub test: PathBuf,
    pub n_train: usize,
    pub n_test: usize,
}

impl Ctx {
    /// Splits `dataset` 70/30 after a seeded shuffle (seed 42), keeping at
    /// most `limit` rows (smoke runs use few); cached per run.
    pub fn split(&self, dataset: &str, limit: Option<usize>) -> anyhow::Result<Split> {
        let stem = dataset.trim_end_matches(".csv");
        let tag = limit.map(|n| format!("-{n}")).unwrap_or_default();
        let train = self.work.join(format!("{stem}{tag}.train.csv"));
        let test = self.work.join(format!("{stem}{tag}.test.csv"));
        let text = std::fs::read_to_string(self.dataset(dataset))?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let mut rows: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
        evergreen_model::rng::Rng::new(42, 0).shuffle(&mut rows);
        if let Some(n) = limit {
            rows.truncate(n);
        }
        let cut = rows.len() * 7 / 10;
        if !train.is_file() {
            let write = |p: &PathBuf, rows: &[&str]| {
                std::fs::write(p, format!("{header}\n{}\n", rows.join("\n")))
            };
            write(&train, &rows[..cut])?;
            write(&test, &rows[cut..])?;
        }
        Ok(Split {
            train,
            test,
            n_train: cut,
            n_test: rows.len() - cut,
        })
    }
}
