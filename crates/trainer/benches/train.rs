//! Training benchmark: fit time and test accuracy on the shared 100k × 20
//! set, 70/30 split with seed 42 — Evergreen's trees and forest, linfa-trees
//! as an in-run baseline, and scikit-learn in the same run when a Python
//! with scikit-learn is given (EVERGREEN_BENCH_PYTHON=/path/to/python).
//!
//!   cargo bench -p evergreen-trainer --bench train
//!
//! Env: EVERGREEN_BENCH_DATA (default ../shared/data/synth_100000.csv),
//! EVERGREEN_BENCH_RUNS (default 3; the best run is reported, as for the
//! scikit-learn baseline).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use evergreen_model::metrics;
use evergreen_model::pipeline::{Impute, Pipeline};
use evergreen_model::schema::Value;
use evergreen_model::tree::{fit_forest, Control, ForestParams, MaxFeatures, TreeParams};
use evergreen_trainer::data::{self, Selection, TargetColumn};
use evergreen_trainer::spec::RawRequest;
use evergreen_trainer::train::{self, Inputs};
use linfa::prelude::*;
use ndarray::{Array1, Array2};

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = None;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let out = f();
        let d = t.elapsed();
        best = Some(best.map_or(d, |b: Duration| b.min(d)));
        last = Some(out);
    }
    (best.unwrap(), last.unwrap())
}

fn main() {
    let path = PathBuf::from(std::env::var("EVERGREEN_BENCH_DATA").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/synth_100000.csv"
        )
        .into()
    }));
    let runs: usize = std::env::var("EVERGREEN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let sel = Selection {
        target: "target".into(),
        classification: true,
        ..Default::default()
    };
    let t = Instant::now();
    let d = data::load(&path, &sel).expect("load the benchmark data");
    let load = t.elapsed();
    let TargetColumn::Classes { y, labels } = &d.target else {
        unreachable!()
    };
    let (tr, te) = train::split(d.rows(), Some(y), 0.3, 42);
    let (pipe, feats) = Pipeline::fit(&d.names, &d.columns, &tr, Impute::Mean, false);
    let matrix = |rows: &[usize]| {
        let mut x = Array2::zeros((rows.len(), pipe.width));
        for (k, &r) in rows.iter().enumerate() {
            let raw: Vec<Value> = d.columns.iter().map(|c| c.value(r)).collect();
            pipe.transform_row(&feats, &raw, x.row_mut(k).into_slice().unwrap())
                .unwrap();
        }
        x
    };
    let (xtr, xte) = (matrix(&tr), matrix(&te));
    let ytr: Vec<usize> = tr.iter().map(|&r| y[r]).collect();
    let yte: Vec<usize> = te.iter().map(|&r| y[r]).collect();
    let acc = |f: &dyn Fn(&[f64], &mut [f64])| {
        let mut out = vec![0.0; yte.len() * labels.len()];
        for (i, row) in xte.rows().into_iter().enumerate() {
            f(row.as_slice().unwrap(), &mut out[i * 2..i * 2 + 2]);
        }
        metrics::classification(&yte, &out, labels.len()).accuracy
    };
    println!(
        "data: {} ({} rows × {} features, loaded in {:.2} s); train {} / test {}; best of {runs}",
        path.display(),
        d.rows(),
        d.names.len(),
        load.as_secs_f64(),
        tr.len(),
        te.len()
    );
    println!("threads: {}", rayon::current_num_threads());
    println!();
    let tree_p = ForestParams {
        n_trees: 1,
        bootstrap: false,
        tree: TreeParams {
            max_depth: Some(10),
            seed: 42,
            ..TreeParams::default()
        },
    };
    let (t_tree, tree) = best_of(runs, || {
        fit_forest(xtr.view(), &ytr, 2, &tree_p, Control::default()).unwrap()
    });
    let a_tree = acc(&|x, o| tree.predict_into(x, o));

    let forest_p = ForestParams {
        n_trees: 100,
        bootstrap: true,
        tree: TreeParams {
            max_features: MaxFeatures::Sqrt,
            seed: 42,
            ..TreeParams::default()
        },
    };
    let (t_forest, forest) = best_of(runs, || {
        fit_forest(xtr.view(), &ytr, 2, &forest_p, Control::default()).unwrap()
    });
    let a_forest = acc(&|x, o| forest.predict_into(x, o));
    let leaves: usize = forest.trees.iter().map(|t| t.n_leaves()).sum();

    // In-run baseline: linfa-trees, one depth-10 tree on the same split.
    let ds = DatasetBase::new(xtr.clone(), Array1::from(ytr.clone()));
    let (t_linfa, linfa_tree) = best_of(runs, || {
        linfa_trees::DecisionTree::params()
            .max_depth(Some(10))
            .fit(&ds)
            .unwrap()
    });
    let pred = linfa_tree.predict(&xte);
    let a_linfa = pred.iter().zip(&yte).filter(|(p, t)| p == t).count() as f64 / yte.len() as f64;

    // The whole job as the daemon runs it (load excluded): fit + holdout
    // evaluation through the serving path + reference profile + artifact.
    let raw = RawRequest {
        model: "bench".into(),
        dataset_uri: path.display().to_string(),
        target: "target".into(),
        algorithm: "random_forest".into(),
        seed: 42,
        ..Default::default()
    };
    let spec = raw.validate().unwrap();
    let cancel = AtomicBool::new(false);
    let inputs = Inputs {
        recipe: &spec.recipe,
        recipe_json: String::new(),
        gate: None,
        champion: None,
        cancel: &cancel,
        progress: &|_| {},
    };
    let (t_job, out) = best_of(1, || train::train(&d, &inputs).unwrap());
    // Baselines in this run: linfa-trees always, scikit-learn when given.
    let mut sk_tree = (1.9, 0.922, "README");
    let mut sk_forest = (16.9, 0.970, "README");
    if let Ok(py) = std::env::var("EVERGREEN_BENCH_PYTHON") {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/sklearn_train.py");
        let out = std::process::Command::new(&py)
            .arg(script)
            .arg(&path)
            .arg(runs.to_string())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    let v: serde_json::Value =
                        serde_json::from_str(line).expect("sklearn json line");
                    let fig = (
                        v["fit_s"].as_f64().unwrap(),
                        v["accuracy"].as_f64().unwrap(),
                        "this run",
                    );
                    match v["model"].as_str() {
                        Some("tree") => sk_tree = fig,
                        Some("forest") => sk_forest = fig,
                        _ => {}
                    }
                }
            }
            other => println!("(scikit-learn run failed: {other:?}; using the README baseline)"),
        }
    }

    // Single-row prediction through the serving path (raw row → pipeline →
    // forest), one thread, reusing the scratch buffer.
    let model = &out.model;
    let rows: Vec<Vec<Value>> = te
        .iter()
        .take(10_000)
        .map(|&r| d.columns.iter().map(|c| c.value(r)).collect())
        .collect();
    let mut scratch = evergreen_model::Scratch::default();
    let t = Instant::now();
    let mut sink = 0usize;
    for r in &rows {
        if let Ok(evergreen_model::Prediction::Class { class, .. }) = model.predict(r, &mut scratch)
        {
            sink += class;
        }
    }
    let per_row = t.elapsed() / rows.len() as u32;
    std::hint::black_box(sink);

    println!("| model | fit (s) | test accuracy | fit-time ratio (baseline / evergreen) |");
    println!("|---|---|---|---|");
    println!(
        "| evergreen decision tree (depth 10) | {:.3} | {:.4} | {:.1}× vs scikit-learn |",
        t_tree.as_secs_f64(),
        a_tree,
        sk_tree.0 / t_tree.as_secs_f64()
    );
    println!(
        "| scikit-learn 1.9.1 DecisionTreeClassifier(max_depth=10) ({}) | {:.3} | {:.4} | 1.0 |",
        sk_tree.2, sk_tree.0, sk_tree.1
    );
    println!("| linfa-trees 0.8 DecisionTree (max_depth 10) (this run) | {:.3} | {:.4} | {:.1}× vs linfa-trees |", t_linfa.as_secs_f64(), a_linfa, t_linfa.as_secs_f64() / t_tree.as_secs_f64());
    println!("| evergreen random forest (100 trees, sqrt features per split, 2 threads) | {:.3} | {:.4} | {:.1}× vs scikit-learn |", t_forest.as_secs_f64(), a_forest, sk_forest.0 / t_forest.as_secs_f64());
    println!(
        "| scikit-learn 1.9.1 RandomForestClassifier(100, n_jobs=-1) ({}) | {:.3} | {:.4} | 1.0 |",
        sk_forest.2, sk_forest.0, sk_forest.1
    );
    println!("| evergreen whole job: forest + holdout eval + profile + artifact | {:.3} | {:.4} | artifact {:.1} MiB |", t_job.as_secs_f64(), out.metrics["accuracy"], out.bytes.len() as f64 / (1 << 20) as f64);
    println!();
    println!(
        "accuracy difference (evergreen - scikit-learn): tree {:+.4}, forest {:+.4}",
        a_tree - sk_tree.1,
        a_forest - sk_forest.1
    );
    println!(
        "evergreen forest: {leaves} leaves; single-row predict (raw row, 100 trees): {:.1} µs",
        per_row.as_secs_f64() * 1e6
    );
}
