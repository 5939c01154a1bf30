//! The training computation: split, search with cross-validation, final
//! fit, holdout evaluation, reference profile, champion comparison.
//! Pure and synchronous (runs on a blocking thread, parallel inside with
//! rayon); talking to the registry is the job's business (`jobs.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use evergreen_model::artifact::{Estimator, Model, Scratch, TrainingInfo};
use evergreen_model::linear::{fit_linear, fit_logistic, LogisticParams};
use evergreen_model::metrics::{self, Metrics};
use evergreen_model::pipeline::{Column, Pipeline};
use evergreen_model::profile::{FeatureProfile, NumericProfile, PredictionProfile, Profile};
use evergreen_model::rng::Rng;
use evergreen_model::schema::{Schema, Target, Task, Value};
use evergreen_model::tree::{fit_forest, Control, ForestParams, TreeParams};
use evergreen_model::Prediction;
use ndarray::Array2;
use rayon::prelude::*;

use crate::data::{Dataset, TargetColumn};
use crate::error::TrainError;
use crate::spec::{Algorithm, Gate, Recipe};

pub const PRODUCER: &str = concat!("evergreen-trainer ", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stage {
    Queued,
    Loading,
    Searching,
    Fitting,
    Evaluating,
    Comparing,
    Registering,
    Done,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    pub stage: Stage,
    pub message: String,
    pub candidate: u32,
    pub candidates: u32,
    pub fold: u32,
    pub folds: u32,
    pub percent: f64,
}

impl Progress {
    pub fn stage(stage: Stage, percent: f64, message: impl Into<String>) -> Self {
        Progress {
            stage,
            message: message.into(),
            candidate: 0,
            candidates: 0,
            fold: 0,
            folds: 0,
            percent,
        }
    }
}

/// The champion a new model is compared with.
pub struct Champion {
    pub version: u64,
    pub model: Model,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GateOutcome {
    pub alias: String,
    pub metric: String,
    pub champion_version: u64,
    pub champion_score: Option<f64>,
    pub challenger_score: f64,
    pub min_improvement: f64,
    pub promote: bool,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CandidateScore {
    pub params: BTreeMap<String, String>,
    pub mean: f64,
    pub folds: Vec<f64>,
}

pub struct Outcome {
    pub model: Model,
    pub bytes: Vec<u8>,
    pub params: BTreeMap<String, String>,
    /// Holdout and cross-validation metrics, sizes.
    pub metrics: BTreeMap<String, f64>,
    pub search: Vec<CandidateScore>,
    pub confusion: Option<Vec<Vec<u64>>>,
    pub gate: Option<GateOutcome>,
}

/// Everything `train` needs besides the data.
pub struct Inputs<'a> {
    pub recipe: &'a Recipe,
    pub recipe_json: String,
    pub gate: Option<&'a Gate>,
    pub champion: Option<&'a Champion>,
    pub cancel: &'a AtomicBool,
    pub progress: &'a (dyn Fn(Progress) + Sync),
}

fn cancelled(c: &AtomicBool) -> Result<(), TrainError> {
    if c.load(Ordering::Relaxed) {
        Err(TrainError::Cancelled("stopped before registering".into()))
    } else {
        Ok(())
    }
}

/// Seeded train/test split (stratified: each class split in proportion).
pub fn split(
    n: usize,
    classes: Option<&[usize]>,
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut train = Vec::new();
    let mut test = Vec::new();
    let mut take = |mut group: Vec<usize>, stream: u64| {
        Rng::new(seed, stream).shuffle(&mut group);
        let n_test = ((group.len() as f64) * test_fraction).round() as usize;
        let n_test = n_test.min(group.len().saturating_sub(1));
        test.extend_from_slice(&group[..n_test]);
        train.extend_from_slice(&group[n_test..]);
    };
    match classes {
        Some(y) => {
            let k = y.iter().copied().max().map_or(0, |m| m + 1);
            let mut groups = vec![Vec::new(); k];
            for (i, c) in y.iter().enumerate() {
                groups[*c].push(i);
            }
            for (c, g) in groups.into_iter().enumerate() {
                take(g, 100 + c as u64);
            }
        }
        None => take((0..n).collect(), 99),
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// k folds of `rows` (stratified when `classes` is given).
pub fn folds(rows: &[usize], classes: Option<&[usize]>, k: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); k];
    let mut deal = |mut group: Vec<usize>, stream: u64, offset: &mut usize| {
        Rng::new(seed, stream).shuffle(&mut group);
        for r in group {
            out[*offset % k].push(r);
            *offset += 1;
        }
    };
    let mut offset = 0;
    match classes {
        Some(y) => {
            let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for &r in rows {
                groups.entry(y[r]).or_default().push(r);
            }
            for (c, g) in groups {
                deal(g, 200 + c as u64, &mut offset);
            }
        }
        None => deal(rows.to_vec(), 199, &mut offset),
    }
    out.iter_mut().for_each(|f| f.sort_unstable());
    out
}

/// Preprocessed matrix of `rows`.
fn matrix(
    pipeline: &Pipeline,
    schema_features: &[evergreen_model::Feature],
    cols: &[Column],
    rows: &[usize],
) -> Array2<f64> {
    let mut x = Array2::zeros((rows.len(), pipeline.width));
    let mut raw: Vec<Value> = Vec::with_capacity(cols.len());
    for (k, &r) in rows.iter().enumerate() {
        raw.clear();
        raw.extend(cols.iter().map(|c| c.value(r)));
        let out = x.row_mut(k).into_slice().expect("standard layout");
        pipeline
            .transform_row(schema_features, &raw, out)
            .expect("training values were validated when loaded");
    }
    x
}

fn get<T: std::str::FromStr>(p: &BTreeMap<String, String>, k: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    p[k].parse().expect("validated by spec")
}

fn tree_params(p: &BTreeMap<String, String>, seed: u64) -> TreeParams {
    TreeParams {
        max_depth: (p["max_depth"] != "none").then(|| get(p, "max_depth")),
        min_samples_split: get(p, "min_samples_split"),
        min_samples_leaf: get(p, "min_samples_leaf"),
        max_features: get(p, "max_features"),
        criterion: get(p, "criterion"),
        max_bins: get(p, "max_bins"),
        seed,
    }
}

/// Fits the estimator of `alg` with parameter set `p`.
fn fit_estimator(
    alg: Algorithm,
    p: &BTreeMap<String, String>,
    x: &Array2<f64>,
    target: &TargetColumn,
    rows: &[usize],
    seed: u64,
    control: Control,
) -> Result<Estimator, TrainError> {
    let classes = |labels: &[String], y: &[usize]| -> (Vec<usize>, usize) {
        (rows.iter().map(|&r| y[r]).collect(), labels.len())
    };
    Ok(match (alg, target) {
        (Algorithm::DecisionTree, TargetColumn::Classes { y, labels }) => {
            let (y, k) = classes(labels, y);
            let params = ForestParams {
                n_trees: 1,
                bootstrap: false,
                tree: tree_params(p, seed),
            };
            let mut forest = fit_forest(x.view(), &y, k, &params, control)?;
            Estimator::Tree(forest.trees.pop().expect("one tree"))
        }
        (Algorithm::RandomForest, TargetColumn::Classes { y, labels }) => {
            let (y, k) = classes(labels, y);
            let params = ForestParams {
                n_trees: get(p, "n_trees"),
                bootstrap: get(p, "bootstrap"),
                tree: tree_params(p, seed),
            };
            Estimator::Forest(fit_forest(x.view(), &y, k, &params, control)?)
        }
        (Algorithm::LogisticRegression, TargetColumn::Classes { y, labels }) => {
            let (y, k) = classes(labels, y);
            let params = LogisticParams {
                alpha: get(p, "alpha"),
                max_iterations: get(p, "max_iterations"),
            };
            Estimator::Linear(fit_logistic(x.view(), &y, k, &params)?)
        }
        (Algorithm::LinearRegression, TargetColumn::Values(v)) => {
            let y: Vec<f64> = rows.iter().map(|&r| v[r]).collect();
            Estimator::Linear(fit_linear(x.view(), &y)?)
        }
        _ => {
            return Err(TrainError::Internal(
                "target kind does not match the algorithm".into(),
            ))
        }
    })
}

/// Scores `estimator` on the preprocessed `x` of `rows`: probabilities
/// (row-major) or values.
fn outputs(est: &Estimator, x: &Array2<f64>, n_out: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.nrows() * n_out];
    let width = x.ncols().max(1);
    let xs = x.as_slice().expect("standard layout");
    out.par_chunks_mut(n_out)
        .zip(xs.par_chunks(width))
        .for_each(|(o, row)| est.predict_into(row, o));
    out
}

fn metrics_of(target: &TargetColumn, rows: &[usize], out: &[f64]) -> Metrics {
    match target {
        TargetColumn::Classes { y, labels } => {
            let t: Vec<usize> = rows.iter().map(|&r| y[r]).collect();
            Metrics::Classification(metrics::classification(&t, out, labels.len()))
        }
        TargetColumn::Values(v) => {
            let t: Vec<f64> = rows.iter().map(|&r| v[r]).collect();
            Metrics::Regression(metrics::regression(&t, out))
        }
    }
}

fn score(m: &Metrics, metric: &str) -> f64 {
    // roc_auc can be undefined on a fold with one class: count it as chance.
    m.get(metric)
        .unwrap_or(if metric == "roc_auc" { 0.5 } else { f64::NAN })
}

/// Trains per the recipe and builds the artifact.
pub fn train(data: &Dataset, inputs: &Inputs) -> Result<Outcome, TrainError> {
    let recipe = inputs.recipe;
    let report = inputs.progress;
    let n = data.rows();
    let class_ids = match &data.target {
        TargetColumn::Classes { y, .. } => Some(y.as_slice()),
        TargetColumn::Values(_) => None,
    };
    if n < 4 {
        return Err(TrainError::Data(format!(
            "the dataset has {n} rows; expected at least 4 (train and test splits)"
        )));
    }
    let (train_rows, test_rows) = split(
        n,
        class_ids.filter(|_| recipe.stratify),
        recipe.test_fraction,
        recipe.seed,
    );
    if test_rows.is_empty() || train_rows.len() < 2 {
        return Err(TrainError::Data(format!(
            "a {} test fraction of {n} rows leaves an empty split",
            recipe.test_fraction
        )));
    }
    let alg = recipe.algorithm;
    let n_out = match &data.target {
        TargetColumn::Classes { labels, .. } => labels.len(),
        TargetColumn::Values(_) => 1,
    };

    // ---- search ----
    let candidates = recipe.candidates();
    let k = recipe.cv_folds;
    let mut search = Vec::new();
    let best = if k >= 2 {
        if k > train_rows.len() {
            return Err(TrainError::Data(format!(
                "cv_folds {k} is more than the {} training rows",
                train_rows.len()
            )));
        }
        let fold_sets = folds(
            &train_rows,
            class_ids.filter(|_| recipe.stratify),
            k,
            recipe.seed,
        );
        let total = candidates.len() * k;
        let done = AtomicUsize::new(0);
        report(Progress {
            candidates: candidates.len() as u32,
            folds: k as u32,
            ..Progress::stage(
                Stage::Searching,
                5.0,
                format!(
                    "cross-validating {} candidate(s) × {k} folds",
                    candidates.len()
                ),
            )
        });
        let tasks: Vec<(usize, usize)> = (0..candidates.len())
            .flat_map(|c| (0..k).map(move |f| (c, f)))
            .collect();
        let control = Control {
            cancel: Some(inputs.cancel),
            progress: None,
        };
        let scores: Vec<f64> = tasks
            .par_iter()
            .map(|&(c, f)| -> Result<f64, TrainError> {
                cancelled(inputs.cancel)?;
                let val = &fold_sets[f];
                let fit_rows: Vec<usize> = fold_sets
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != f)
                    .flat_map(|(_, s)| s.iter().copied())
                    .collect();
                let (pipe, feats) = Pipeline::fit(
                    &data.names,
                    &data.columns,
                    &fit_rows,
                    recipe.impute,
                    alg.standardize(),
                );
                let x = matrix(&pipe, &feats, &data.columns, &fit_rows);
                let est = fit_estimator(
                    alg,
                    &candidates[c],
                    &x,
                    &data.target,
                    &fit_rows,
                    recipe.seed,
                    control,
                )?;
                let xv = matrix(&pipe, &feats, &data.columns, val);
                let s = score(
                    &metrics_of(&data.target, val, &outputs(&est, &xv, n_out)),
                    &recipe.metric,
                );
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                report(Progress {
                    candidate: (c + 1) as u32,
                    candidates: candidates.len() as u32,
                    fold: (f + 1) as u32,
                    folds: k as u32,
                    ..Progress::stage(
                        Stage::Searching,
                        5.0 + 55.0 * d as f64 / total as f64,
                        format!(
                            "candidate {} of {}, fold {} of {k}",
                            c + 1,
                            candidates.len(),
                            f + 1
                        ),
                    )
                });
                Ok(s)
            })
            .collect::<Result<_, _>>()?;
        for (c, params) in candidates.iter().enumerate() {
            let folds = scores[c * k..(c + 1) * k].to_vec();
            let mean = folds.iter().sum::<f64>() / k as f64;
            search.push(CandidateScore {
                params: params.clone(),
                mean,
                folds,
            });
        }
        // Best mean; the first one wins ties (deterministic).
        let hib = recipe.higher_is_better();
        let mut best = 0;
        for (i, s) in search.iter().enumerate() {
            let better = if hib {
                s.mean > search[best].mean
            } else {
                s.mean < search[best].mean
            };
            if better || search[best].mean.is_nan() {
                best = i;
            }
        }
        best
    } else {
        0
    };
    let params = candidates[best].clone();

    // ---- final fit on the whole training split ----
    cancelled(inputs.cancel)?;
    report(Progress::stage(
        Stage::Fitting,
        60.0,
        format!("fitting {} on {} rows", alg.name(), train_rows.len()),
    ));
    let (pipeline, features) = Pipeline::fit(
        &data.names,
        &data.columns,
        &train_rows,
        recipe.impute,
        alg.standardize(),
    );
    let x = matrix(&pipeline, &features, &data.columns, &train_rows);
    let tick = |d: usize, t: usize| {
        if d == t || d.is_multiple_of((t / 20).max(1)) {
            report(Progress::stage(
                Stage::Fitting,
                60.0 + 30.0 * d as f64 / t as f64,
                format!("tree {d} of {t}"),
            ));
        }
    };
    let control = Control {
        cancel: Some(inputs.cancel),
        progress: Some(&tick),
    };
    let estimator = fit_estimator(
        alg,
        &params,
        &x,
        &data.target,
        &train_rows,
        recipe.seed,
        control,
    )?;
    drop(x);

    // ---- holdout evaluation through the serving path ----
    cancelled(inputs.cancel)?;
    report(Progress::stage(
        Stage::Evaluating,
        90.0,
        format!("evaluating on {} held-out rows", test_rows.len()),
    ));
    let task = match &data.target {
        TargetColumn::Classes { labels, .. } => Task::Classification {
            labels: labels.clone(),
        },
        TargetColumn::Values(_) => Task::Regression,
    };
    let schema = Schema {
        features,
        target: Target {
            name: data.target_name.clone(),
            task,
        },
    };
    let mut model = Model {
        schema,
        pipeline,
        estimator,
        profile: Profile {
            rows: 0,
            features: Vec::new(),
            predictions: PredictionProfile::Classification {
                rows: 0,
                class_counts: vec![],
                probability_counts: vec![],
            },
        },
        training: TrainingInfo::default(),
    };
    let test_out = predict_rows(&model, data, &test_rows)?;
    let holdout = metrics_of(&data.target, &test_rows, &test_out);

    // ---- reference profile ----
    model.profile = Profile {
        rows: train_rows.len() as u64,
        features: data
            .columns
            .par_iter()
            .map(|c| FeatureProfile::of_column(c, &train_rows, recipe.profile_bins))
            .collect(),
        predictions: match &data.target {
            TargetColumn::Classes { labels, .. } => {
                PredictionProfile::classification(&test_out, labels.len())
            }
            TargetColumn::Values(_) => PredictionProfile::Regression(NumericProfile::from_values(
                test_out.iter().copied(),
                recipe.profile_bins,
            )),
        },
    };

    let mut metrics_map: BTreeMap<String, f64> = holdout
        .entries()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if let Some(best) = search.get(best) {
        let m = &recipe.metric;
        let mean = best.mean;
        let std = (best
            .folds
            .iter()
            .map(|s| (s - mean) * (s - mean))
            .sum::<f64>()
            / best.folds.len() as f64)
            .sqrt();
        metrics_map.insert(format!("cv_{m}_mean"), mean);
        metrics_map.insert(format!("cv_{m}_std"), std);
        for (i, s) in best.folds.iter().enumerate() {
            metrics_map.insert(format!("cv_{m}_fold{}", i + 1), *s);
        }
    }
    metrics_map.insert("train_rows".into(), train_rows.len() as f64);
    metrics_map.insert("test_rows".into(), test_rows.len() as f64);
    metrics_map.insert("features".into(), data.names.len() as f64);

    // ---- champion / challenger ----
    let gate = match inputs.gate {
        None => None,
        Some(g) => {
            report(Progress::stage(
                Stage::Comparing,
                95.0,
                format!("comparing with the current {}", g.alias),
            ));
            Some(compare(g, &holdout, inputs.champion, data, &test_rows))
        }
    };

    model.training = TrainingInfo {
        algorithm: alg.name().to_string(),
        params: params.clone(),
        recipe: inputs.recipe_json.clone(),
        dataset_sha256: data.sha256.clone(),
        train_rows: train_rows.len() as u64,
        test_rows: test_rows.len() as u64,
        seed: recipe.seed,
        metrics: metrics_map.clone(),
        producer: PRODUCER.to_string(),
    };
    let bytes = model.to_bytes();
    cancelled(inputs.cancel)?;
    let confusion = match &holdout {
        Metrics::Classification(c) => Some(c.confusion.clone()),
        Metrics::Regression(_) => None,
    };
    Ok(Outcome {
        model,
        bytes,
        params,
        metrics: metrics_map,
        search,
        confusion,
        gate,
    })
}

/// Scores rows of `data` with any model, matching its features by name —
/// the path the server takes, so holdout metrics are what serving gives.
/// Returns probabilities in `data`'s label order (or values).
pub fn predict_rows(model: &Model, data: &Dataset, rows: &[usize]) -> Result<Vec<f64>, TrainError> {
    let cols: Vec<&Column> = model
        .schema
        .features
        .iter()
        .map(|f| {
            data.names
                .iter()
                .position(|n| *n == f.name)
                .map(|i| &data.columns[i])
                .ok_or_else(|| {
                    TrainError::FailedPrecondition(format!(
                        "the data has no column {:?}, which the model needs",
                        f.name
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    let (n_out, map): (usize, Vec<Option<usize>>) = match (&data.target, model.schema.labels()) {
        (TargetColumn::Classes { labels, .. }, Some(theirs)) => (
            labels.len(),
            theirs
                .iter()
                .map(|l| labels.iter().position(|x| x == l))
                .collect(),
        ),
        (TargetColumn::Values(_), None) => (1, vec![Some(0)]),
        _ => {
            return Err(TrainError::FailedPrecondition(
                "the model's task (classification/regression) differs".into(),
            ))
        }
    };
    let mut out = vec![0.0; rows.len() * n_out];
    out.par_chunks_mut(n_out)
        .zip(rows.par_iter())
        .try_for_each_init(
            || (Scratch::default(), Vec::with_capacity(cols.len())),
            |(scratch, raw), (o, &r)| -> Result<(), TrainError> {
                raw.clear();
                raw.extend(cols.iter().map(|c| c.value(r)));
                match model
                    .predict(raw, scratch)
                    .map_err(|e| TrainError::FailedPrecondition(e.to_string()))?
                {
                    Prediction::Class { probabilities, .. } => {
                        for (p, m) in probabilities.iter().zip(&map) {
                            if let Some(i) = m {
                                o[*i] = *p;
                            }
                        }
                    }
                    Prediction::Value(v) => o[0] = v,
                }
                Ok(())
            },
        )?;
    Ok(out)
}

fn compare(
    g: &Gate,
    holdout: &Metrics,
    champion: Option<&Champion>,
    data: &Dataset,
    test_rows: &[usize],
) -> GateOutcome {
    let challenger = score(holdout, &g.metric);
    let mut out = GateOutcome {
        alias: g.alias.clone(),
        metric: g.metric.clone(),
        champion_version: 0,
        champion_score: None,
        challenger_score: challenger,
        min_improvement: g.min_improvement,
        promote: false,
        reason: String::new(),
    };
    let Some(ch) = champion else {
        out.promote = true;
        out.reason = format!("no current {} version: promoted as the first", g.alias);
        return out;
    };
    out.champion_version = ch.version;
    match predict_rows(&ch.model, data, test_rows) {
        Err(e) => {
            out.reason = format!(
                "champion version {} cannot score this data ({e}); not promoted",
                ch.version
            )
        }
        Ok(o) => {
            let c = score(&metrics_of(&data.target, test_rows, &o), &g.metric);
            out.champion_score = Some(c);
            let gain = if metrics::higher_is_better(&g.metric) {
                challenger - c
            } else {
                c - challenger
            };
            out.promote = gain >= g.min_improvement && gain.is_finite();
            out.reason = format!(
                "{} {:.4} vs champion v{} {:.4} (improvement {:+.4}, required {:.4}): {}",
                g.metric,
                challenger,
                ch.version,
                c,
                gain,
                g.min_improvement,
                if out.promote {
                    "promoted"
                } else {
                    "not promoted"
                }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_seeded_stratified_and_disjoint() {
        let y: Vec<usize> = (0..100).map(|i| usize::from(i < 20)).collect();
        let (tr, te) = split(100, Some(&y), 0.3, 42);
        assert_eq!((tr.len(), te.len()), (70, 30));
        assert_eq!(te.iter().filter(|&&i| y[i] == 1).count(), 6, "20% of 30");
        assert_eq!(split(100, Some(&y), 0.3, 42), (tr.clone(), te.clone()));
        assert_ne!(split(100, Some(&y), 0.3, 43).1, te);
        let mut all: Vec<usize> = tr.iter().chain(&te).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn folds_partition_the_rows() {
        let rows: Vec<usize> = (0..53).collect();
        let f = folds(&rows, None, 5, 1);
        assert_eq!(f.iter().map(Vec::len).sum::<usize>(), 53);
        assert!(f.iter().all(|s| s.len() == 10 || s.len() == 11));
    }
}
