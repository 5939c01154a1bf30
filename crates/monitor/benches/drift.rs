//! Drift benchmark on the shared 100k × 20 sets: the full drift report for
//! 100k reference vs 100k current rows, and ingest throughput, next to the
//! published Evidently figures and (with EVERGREEN_BENCH_PYTHON) scipy on
//! the raw arrays in the same run.
//!
//!   cargo bench -p evergreen-monitor --bench drift
//!
//! Env: EVERGREEN_BENCH_DATA_DIR (default ../shared/data), EVERGREEN_BENCH_RUNS (5).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use evergreen_model::pipeline::Column;
use evergreen_model::profile::NumericProfile;
use evergreen_model::profile::{FeatureProfile, PredictionProfile, Profile};
use evergreen_model::schema::Value;
use evergreen_monitor::drift::{self, FeatureDrift, NumericWindow};
use evergreen_monitor::window::{Answer, Window};

use evergreen_trainer::data::{self, Dataset, Selection};
use rayon::prelude::*;

fn numeric(d: &Dataset, i: usize) -> &[f64] {
    match &d.columns[i] {
        Column::Numeric(v) => v,
        Column::Categorical { .. } => panic!("numeric features expected"),
    }
}

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let o = f();
        best = best.min(t.elapsed());
        out = Some(o);
    }
    (best, out.unwrap())
}

/// Bins every value of `d` into windows on the reference's edges.
fn ingest(profiles: &[NumericProfile], d: &Dataset) -> Vec<NumericWindow> {
    profiles
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let mut w = NumericWindow::new(p);
            for x in numeric(d, i) {
                w.push(&p.edges, *x);
            }
            w
        })
        .collect()
}

/// The daemon's per-record path: a logged row (20 values in feature order)
/// and the model's answer into a version's `Window`, one row at a time.
fn ingest_rows(profile: &Profile, d: &Dataset) -> Window {
    let mut w = Window::new(profile, 1, 0.0);
    let nf = profile.features.len();
    let mut row: Vec<Value> = Vec::with_capacity(nf);
    for r in 0..d.rows() {
        row.clear();
        row.extend((0..nf).map(|i| Value::Number(numeric(d, i)[r])));
        w.push(profile, &row);
        let p = if r % 3 == 0 { [0.8, 0.2] } else { [0.3, 0.7] };
        w.push_answer(profile, Answer::Probabilities(&p));
    }
    w
}

fn report(profiles: &[NumericProfile], windows: &[NumericWindow]) -> Vec<FeatureDrift> {
    profiles
        .iter()
        .zip(windows)
        .map(|(p, w)| drift::numeric_drift(p, w))
        .collect()
}

fn main() {
    let dir = PathBuf::from(
        std::env::var("EVERGREEN_BENCH_DATA_DIR").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data").into()
        }),
    );
    let runs: usize = std::env::var("EVERGREEN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let sel = Selection {
        target: "target".into(),
        classification: true,
        ..Default::default()
    };
    let load = |f: &str| data::load(&dir.join(f), &sel).expect("benchmark data");
    let reference = load("synth_100000.csv");
    let sets = [
        ("current (no drift)", load("synth_100000_current.csv"), 8.7),
        ("drifted (f0..f9)", load("synth_100000_drifted.csv"), 9.1),
    ];
    let nf = reference.names.len();
    let rows = reference.rows();

    // The reference profile, as the trainer freezes it.
    let (t_profile, profiles) = best(runs, || {
        (0..nf)
            .into_par_iter()
            .map(|i| NumericProfile::from_values(numeric(&reference, i).iter().copied(), 100))
            .collect::<Vec<_>>()
    });

    // The same binning as the golden script (crates/monitor/golden).
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/golden/synth_drift.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let same = profiles.iter().zip(&reference.names).all(|(p, name)| {
        let g = &golden["features"][name]["reference_counts"];
        g.as_array().is_some_and(|a| {
            a.iter()
                .map(|x| x.as_u64().unwrap())
                .eq(p.counts.iter().copied())
        })
    });

    println!(
        "data: {} × {nf} reference vs current rows, from {}; best of {runs}",
        rows,
        dir.display()
    );
    println!("reference profile (100 quantile bins × {nf} features, both cores): built in {:.1} ms; bins identical to the golden script's: {same}", t_profile.as_secs_f64() * 1e3);
    println!("full report from raw = profile + ingest (both cores) + statistics; the monitor itself only pays the last column but one, since the profile is frozen at training and windows fill as traffic arrives");
    println!();
    // Ingest on one core, as one window's task would.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    println!("| current set | ingest (bin {} values, 1 core) | values/s per core | report from windows | full report from raw | drifted features | Evidently 0.7.23 DataDriftPreset | ratio (full) |", rows * nf);
    println!("|---|---|---|---|---|---|---|---|");
    for (name, d, evidently) in &sets {
        let (t_one, _) = best(runs, || one.install(|| ingest(&profiles, d)));
        let (t_ingest, windows) = best(runs, || ingest(&profiles, d));
        let (t_report, verdicts) = best(runs, || report(&profiles, &windows));
        let full = t_profile + t_ingest + t_report;
        let drifted: Vec<&str> = verdicts
            .iter()
            .zip(&reference.names)
            .filter(|(v, _)| v.drifted)
            .map(|(_, n)| n.as_str())
            .collect();
        println!(
            "| {name} | {:.1} ms | {:.0} M | {:.3} ms | {:.1} ms | {} | {evidently} s | {:.0}× |",
            t_one.as_secs_f64() * 1e3,
            (rows * nf) as f64 / t_one.as_secs_f64() / 1e6,
            t_report.as_secs_f64() * 1e3,
            full.as_secs_f64() * 1e3,
            if drifted.is_empty() {
                "none".to_string()
            } else {
                drifted.join(" ")
            },
            evidently / full.as_secs_f64()
        );
    }
    let profile = Profile {
        rows: rows as u64,
        features: profiles
            .iter()
            .cloned()
            .map(FeatureProfile::Numeric)
            .collect(),
        predictions: PredictionProfile::classification(&[0.8, 0.2, 0.3, 0.7], 2),
    };
    let (t_rows, w) = best(runs, || ingest_rows(&profile, &sets[0].1));
    assert_eq!(w.rows, rows as u64);
    println!();
    println!(
        "the daemon's record path (Window::push of {rows} rows × {nf} values + answers, 1 core): {:.1} ms = {:.0} M values/s (goal 1 M)",
        t_rows.as_secs_f64() * 1e3,
        (rows * nf) as f64 / t_rows.as_secs_f64() / 1e6
    );
    println!();
    println!("Evidently's verdicts (../shared/data/README.md): current: none; drifted: exactly f0..f9 (normed Wasserstein ≥ 0.1).");

    if let Ok(py) = std::env::var("EVERGREEN_BENCH_PYTHON") {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/scipy_drift.py");
        let out = std::process::Command::new(py)
            .arg(script)
            .arg(dir.join("synth_100000.csv"))
            .arg(dir.join("synth_100000_current.csv"))
            .arg(dir.join("synth_100000_drifted.csv"))
            .output();
        match out {
            Ok(o) if o.status.success() => println!("scipy on the raw arrays, this run (PSI + KS + Wasserstein, CSV loading excluded): {}", String::from_utf8_lossy(&o.stdout).trim()),
            other => println!("(scipy run failed: {other:?})"),
        }
    }
}
