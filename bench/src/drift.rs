//! Section 5, drift report: 100k reference rows vs 100k current rows × 20
//! features — Evidently's DataDriftPreset (bench/python/evidently_drift.py)
//! against the monitor's drift code (`evergreen_monitor::drift`), for a pair
//! without drift and a pair with f0..f9 drifted; verdicts compared feature
//! by feature.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use evergreen_model::pipeline::Column;
use evergreen_model::profile::{FeatureProfile, NumericProfile, PredictionProfile, Profile};
use evergreen_model::schema::Value;
use evergreen_monitor::drift::{self, FeatureDrift, NumericWindow};
use evergreen_monitor::window::{Answer, Window};
use evergreen_trainer::data::{self, Dataset, Selection};
use rayon::prelude::*;
use serde_json::json;

use crate::ctx::Ctx;
use crate::report::{Better, Row, Section};
use crate::stats::median;
use crate::train::goal_vs;

/// Quantile bins per feature in the reference profile (the trainer's
/// default `profile_bins`).
const BINS: usize = 100;

fn numeric(d: &Dataset, i: usize) -> anyhow::Result<&[f64]> {
    match &d.columns[i] {
        Column::Numeric(v) => Ok(v),
        Column::Categorical { .. } => bail!("feature {} is not numeric", d.names[i]),
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Dataset> {
    let sel = Selection {
        target: "target".into(),
        classification: true,
        ..Default::default()
    };
    data::load(path, &sel).with_context(|| format!("load {}", path.display()))
}

/// The data file, or (smoke) its first `limit` rows in the work dir.
fn input(ctx: &Ctx, name: &str, limit: Option<usize>) -> anyhow::Result<PathBuf> {
    let full = ctx.dataset(name);
    let Some(n) = limit else { return Ok(full) };
    let out = ctx.work.join(format!("drift-{n}-{name}"));
    if !out.is_file() {
        let text =
            std::fs::read_to_string(&full).with_context(|| format!("read {}", full.display()))?;
        let head: Vec<&str> = text.lines().take(n + 1).collect();
        std::fs::write(&out, head.join("\n") + "\n")?;
    }
    Ok(out)
}

/// What one report computes, timed as a whole: the reference profile
/// (quantile edges, counts, per-bin sums, std — what the trainer freezes
/// into the artifact), the current values binned into windows on those
/// edges (what the monitor fills as traffic arrives), and the per-feature
/// statistics and verdicts (what the monitor computes per report).
struct Report {
    /// Seconds spent profiling, binning, and computing the statistics.
    phases: [f64; 3],
    profiles: Vec<NumericProfile>,
    windows: Vec<NumericWindow>,
    verdicts: Vec<FeatureDrift>,
}

fn profile(reference: &Dataset) -> anyhow::Result<Vec<NumericProfile>> {
    (0..reference.names.len())
        .into_par_iter()
        .map(|i| {
            Ok(NumericProfile::from_values(
                numeric(reference, i)?.iter().copied(),
                BINS,
            ))
        })
        .collect()
}

fn ingest(profiles: &[NumericProfile], current: &Dataset) -> anyhow::Result<Vec<NumericWindow>> {
    profiles
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let mut w = NumericWindow::new(p);
            for x in numeric(current, i)? {
                w.push(&p.edges, *x);
            }
            Ok(w)
        })
        .collect()
}

fn verdicts(profiles: &[NumericProfile], windows: &[NumericWindow]) -> Vec<FeatureDrift> {
    profiles
        .iter()
        .zip(windows)
        .map(|(p, w)| drift::numeric_drift(p, w))
        .collect()
}

fn report(reference: &Dataset, current: &Dataset) -> anyhow::Result<Report> {
    let t = Instant::now();
    let profiles = profile(reference)?;
    let t_profile = t.elapsed().as_secs_f64();
    let windows = ingest(&profiles, current)?;
    let t_ingest = t.elapsed().as_secs_f64();
    let verdicts = verdicts(&profiles, &windows);
    let t_all = t.elapsed().as_secs_f64();
    Ok(Report {
        phases: [t_profile, t_ingest - t_profile, t_all - t_ingest],
        profiles,
        windows,
        verdicts,
    })
}

/// The monitor daemon's per-record path: each logged row (20 values in
/// feature order) and the model's answer into a version's `Window`, one row
/// at a time on one thread. Returns rows/s.
fn ingest_rows(profiles: &[NumericProfile], d: &Dataset) -> anyhow::Result<f64> {
    let profile = Profile {
        rows: profiles.first().map_or(0, |p| p.count),
        features: profiles
            .iter()
            .cloned()
            .map(FeatureProfile::Numeric)
            .collect(),
        predictions: PredictionProfile::classification(&[0.8, 0.2, 0.3, 0.7], 2),
    };
    let cols: Vec<&[f64]> = (0..profiles.len())
        .map(|i| numeric(d, i))
        .collect::<anyhow::Result<_>>()?;
    let mut w = Window::new(&profile, 1, 0.0);
    let mut row: Vec<Value> = Vec::with_capacity(cols.len());
    let t = Instant::now();
    for r in 0..d.rows() {
        row.clear();
        row.extend(cols.iter().map(|c| Value::Number(c[r])));
        w.push(&profile, &row);
        let p = if r % 3 == 0 { [0.8, 0.2] } else { [0.3, 0.7] };
        w.push_answer(&profile, Answer::Probabilities(&p));
    }
    let s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        w.rows == d.rows() as u64,
        "the window counted {} rows",
        w.rows
    );
    Ok(d.rows() as f64 / s)
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let limit = ctx.smoke.then_some(3000);
    let runs = ctx.size(3, 1);
    let ref_path = input(ctx, "synth_100000.csv", limit)?;
    let reference = load(&ref_path)?;
    let nf = reference.names.len();
    let pairs = [
        ("no drift", "synth_100000_current.csv"),
        ("f0..f9 drifted", "synth_100000_drifted.csv"),
    ];
    let threads = rayon::current_num_threads();

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut raw_pairs = Vec::new();
    let mut evidently_version = None;
    let mut ingest_rates = Vec::new();
    let mut phase_notes = Vec::new();
    for (label, file) in pairs {
        let cur_path = input(ctx, file, limit)?;
        let current = load(&cur_path)?;
        anyhow::ensure!(
            current.names == reference.names,
            "{file} has other feature columns than synth_100000.csv"
        );
        let (ref_s, cur_s) = (
            ref_path.display().to_string(),
            cur_path.display().to_string(),
        );
        // A B A B: one Evidently report (one script run), then ours.
        let mut base_s = Vec::new();
        let mut ours_s = Vec::new();
        let mut from_windows_s = Vec::new();
        let mut phases = Vec::new();
        let mut evidently = None;
        let mut ours = None;
        for _ in 0..runs {
            if let Some(py) = &ctx.python {
                let v = py.run_json(
                    "evidently_drift.py",
                    &["--reference", &ref_s, "--current", &cur_s, "--runs", "1"],
                )?;
                base_s.push(crate::baseline::num(&v, "/seconds/0")?);
                evidently_version = v["version"].as_str().map(String::from);
                evidently = Some(v);
            }
            let t = Instant::now();
            let r = report(&reference, &current)?;
            ours_s.push(t.elapsed().as_secs_f64());
            phases.push(r.phases);
            let t = Instant::now();
            std::hint::black_box(verdicts(&r.profiles, &r.windows));
            from_windows_s.push(t.elapsed().as_secs_f64());
            ours = Some(r);
        }
        let ours = ours.context("no run")?;
        ingest_rates.push(ingest_rows(&ours.profiles, &current)?);

        // Feature by feature.
        let mut differ = Vec::new();
        let mut per_feature = serde_json::Map::new();
        let mut max_score_diff: f64 = 0.0;
        for (i, name) in reference.names.iter().enumerate() {
            let v = &ours.verdicts[i];
            let theirs = evidently.as_ref().map(|e| {
                (
                    e["drifted"][name].as_bool(),
                    e["score"][name].as_f64(),
                    e["method"][name].as_str().unwrap_or("?").to_string(),
                )
            });
            if let Some((d, score, method)) = &theirs {
                if let Some(s) = score {
                    max_score_diff = max_score_diff.max((s - v.statistic).abs());
                }
                if *d != Some(v.drifted) {
                    differ.push(format!(
                        "{name}: Evidently {} ({method} {}), Evergreen {} ({} {:.4}, threshold {})",
                        match d {
                            Some(true) => "drifted",
                            Some(false) => "not drifted",
                            None => "no verdict",
                        },
                        score.map_or("?".into(), |s| format!("{s:.4}")),
                        if v.drifted { "drifted" } else { "not drifted" },
                        v.test.name(),
                        v.statistic,
                        v.threshold
                    ));
                }
            }
            per_feature.insert(
                name.clone(),
                json!({
                    "evergreen": { "test": v.test.name(), "statistic": v.statistic,
                                   "threshold": v.threshold, "drifted": v.drifted },
                    "evidently": theirs.as_ref().map(|(d, s, m)| json!({
                        "method": m, "score": s, "drifted": d })),
                }),
            );
        }
        let ours_drifted: Vec<&str> = reference
            .names
            .iter()
            .zip(&ours.verdicts)
            .filter(|(_, v)| v.drifted)
            .map(|(n, _)| n.as_str())
            .collect();
        let theirs_drifted = evidently.as_ref().map(|e| {
            reference
                .names
                .iter()
                .filter(|n| e["drifted"][n.as_str()].as_bool() == Some(true))
                .count() as f64
        });

        let b = (!base_s.is_empty()).then(|| median(&base_s));
        rows.push(
            Row::new(
                &format!("drift report ({label}), data loaded"),
                "s",
                Better::Lower,
            )
            .figures(b, Some(median(&ours_s)))
            .at_least(100.0),
        );
        let mut verdict_row = goal_vs(
            Row::new(
                &format!("drifted features ({label}), verdicts compared per feature"),
                &format!("of {nf}"),
                Better::Higher,
            )
            .figures(theirs_drifted, Some(ours_drifted.len() as f64)),
            "verdicts identical",
            |_, _| differ.is_empty(),
        );
        verdict_row.ratio = None;
        rows.push(verdict_row);
        rows.push(
            Row::new(
                &format!("report from filled windows ({label})"),
                "ms",
                Better::Lower,
            )
            .figures(None, Some(median(&from_windows_s) * 1e3)),
        );
        if evidently.is_some() {
            notes.push(format!(
                "{label}: Evergreen finds {} drifted; {}. Largest difference between the two \
                 normed Wasserstein scores over the 20 features: {max_score_diff:.4} (Evergreen \
                 computes it from 100 quantile bins with per-bin sums, Evidently from the raw \
                 values).",
                if ours_drifted.is_empty() {
                    "none".to_string()
                } else {
                    ours_drifted.join(" ")
                },
                if differ.is_empty() {
                    "the verdicts are identical feature by feature".to_string()
                } else {
                    format!("verdicts differ on: {}", differ.join("; "))
                }
            ));
        }
        let ph =
            |k: usize| median(&phases.iter().map(|p: &[f64; 3]| p[k]).collect::<Vec<_>>()) * 1e3;
        phase_notes.push(format!(
            "{label}: profile {:.1} ms, binning {:.1} ms, statistics {:.2} ms",
            ph(0),
            ph(1),
            ph(2)
        ));
        raw_pairs.push(json!({
            "pair": label,
            "current": file,
            "evidently_s": base_s,
            "evergreen_s": ours_s,
            "evergreen_from_windows_s": from_windows_s,
            "evergreen_phases_s": phases.iter().map(|p| json!({
                "profile": p[0], "ingest": p[1], "statistics": p[2] })).collect::<Vec<_>>(),
            "evergreen_drifted": ours_drifted,
            "differ": differ,
            "max_score_diff": max_score_diff,
            "features": per_feature,
            "evidently": evidently,
        }));
    }
    let ingest = median(&ingest_rates);
    rows.push(
        Row::new(
            "monitor record path (Window::push), 1 thread",
            "rows/s",
            Better::Higher,
        )
        .figures(None, Some(ingest)),
    );
    notes.push(format!(
        "The report figure is the whole computation from loaded columns: the reference profile \
         (in production the trainer freezes it into the artifact once), binning the current \
         values on its edges (in production the monitor fills windows as predictions are \
         logged, {:.1} M rows × {nf} values/s on one thread through `Window::push`) and the \
         statistics. What the monitor itself pays when a report is asked for is the \"from \
         filled windows\" row. Evergreen uses rayon's {threads} threads for the profile and \
         the binning; Evidently runs on one. Where the report's time goes (medians): {}.",
        ingest / 1e6,
        phase_notes.join("; ")
    ));
    if ctx.python.is_none() {
        notes.push(
            "Baselines not run (--no-baselines): Evidently figures and verdicts are empty.".into(),
        );
    }
    Ok(Section {
        id: "drift".into(),
        title: "Drift report".into(),
        baseline: format!(
            "Evidently {} DataDriftPreset, defaults (bench/python/evidently_drift.py)",
            evidently_version.as_deref().unwrap_or("(not run)")
        ),
        method: format!(
            "Reference {} × {nf} features vs current {} rows (target dropped), for \
             synth_100000_current.csv (no drift by construction) and \
             synth_100000_drifted.csv (f0..f4 shifted, f5..f9 scaled){}. Both sides read the \
             CSVs before timing. Evidently: `Report([DataDriftPreset()], \
             include_tests=True).run(current, reference)` timed with perf_counter (its default \
             test for > 1000 numeric rows: normed Wasserstein ≥ 0.1). Evergreen: \
             `evergreen_monitor::drift` as the monitor uses it — reference profile \
             ({BINS} quantile bins per feature), current values binned into windows, \
             `numeric_drift` per feature (same rule: Wasserstein normed by the reference std, \
             ≥ 0.1) — timed as a whole. Runs alternate (Evidently, Evergreen), {runs} each per \
             pair; medians. Verdicts compared feature by feature.",
            reference.rows(),
            reference.rows(),
            if ctx.smoke {
                " (smoke: the first 3000 rows of each)"
            } else {
                ""
            }
        ),
        rows,
        notes,
        raw: json!({
            "rows": reference.rows(),
            "features": nf,
            "runs": runs,
            "threads": threads,
            "ingest_rows_per_s": ingest_rates,
            "pairs": raw_pairs,
        }),
    })
}
