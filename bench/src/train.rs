//! Section 1, training: a decision tree (max depth 10) and a random forest
//! (100 trees) on the same 70/30 split of synth_100000.csv — scikit-learn
//! (bench/python/train.py) against the trainer, in-process and through the
//! daemon.
//!
//! In-process, Evergreen's side is the trainer's fit path:
//! `evergreen_trainer::data::load` (outside the timing, like pandas), the
//! preprocessing pipeline and matrix (outside, like `to_numpy`), then
//! `evergreen_model::tree::fit_forest` — the call `evergreen_trainer::train`
//! makes for its final fit — timed alone, with the trainer's defaults for
//! the algorithm. Through the daemon, a registry and a trainer run
//! in-process on 127.0.0.1:0 (`run()`, sled under the run's work dir) and a
//! `Train` call is timed from submit to the version being registered.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use evergreen_model::pipeline::{Impute, Pipeline};
use evergreen_model::schema::Value;
use evergreen_model::tree::{argmax, fit_forest, Control, Forest, ForestParams, TreeParams};
use evergreen_proto::v1::trainer_client::TrainerClient;
use evergreen_proto::v1::{train_event, JobState, TrainRequest};
use evergreen_trainer::data::{self, Dataset, Selection, TargetColumn};
use ndarray::Array2;
use serde_json::json;

use crate::baseline;
use crate::ctx::{Ctx, Split};
use crate::report::{Better, Row, Section};
use crate::stats::median;

/// A goal that needs both figures: `met` stays unknown without a baseline.
pub fn goal_vs(row: Row, text: &str, check: impl FnOnce(f64, f64) -> bool) -> Row {
    let met = match (row.baseline, row.evergreen) {
        (Some(b), Some(e)) => Some(check(b, e)),
        _ => None,
    };
    let mut r = row.goal(text, |_| true);
    r.met = met;
    r
}

/// The split as matrices, preprocessed by a pipeline fitted on the
/// training rows (mean imputation; nothing to impute in these sets).
struct Prepared {
    x_train: Array2<f64>,
    y_train: Vec<usize>,
    x_test: Array2<f64>,
    y_test: Vec<usize>,
    classes: usize,
}

fn load(path: &Path) -> anyhow::Result<Dataset> {
    let sel = Selection {
        target: "target".into(),
        classification: true,
        ..Default::default()
    };
    data::load(path, &sel).with_context(|| format!("load {}", path.display()))
}

fn prepare(split: &Split) -> anyhow::Result<Prepared> {
    let train = load(&split.train)?;
    let test = load(&split.test)?;
    ensure!(
        train.names == test.names,
        "{} and {} have different feature columns",
        split.train.display(),
        split.test.display()
    );
    let (TargetColumn::Classes { y, labels }, TargetColumn::Classes { y: ty, labels: tl }) =
        (&train.target, &test.target)
    else {
        bail!("the target of the training split is not a class label");
    };
    // Class ids of the test set in the training set's label order.
    let remap: Vec<usize> = tl
        .iter()
        .map(|l| {
            labels
                .iter()
                .position(|x| x == l)
                .with_context(|| format!("test label {l:?} never occurs in the training split"))
        })
        .collect::<anyhow::Result<_>>()?;
    let rows: Vec<usize> = (0..train.rows()).collect();
    let (pipe, feats) = Pipeline::fit(&train.names, &train.columns, &rows, Impute::Mean, false);
    let matrix = |d: &Dataset| -> anyhow::Result<Array2<f64>> {
        let mut x = Array2::zeros((d.rows(), pipe.width));
        let mut raw: Vec<Value> = Vec::with_capacity(d.columns.len());
        for r in 0..d.rows() {
            raw.clear();
            raw.extend(d.columns.iter().map(|c| c.value(r)));
            let out = x.row_mut(r).into_slice().context("standard layout")?;
            pipe.transform_row(&feats, &raw, out)
                .map_err(|e| anyhow::anyhow!("row {r}: {e}"))?;
        }
        Ok(x)
    };
    Ok(Prepared {
        x_train: matrix(&train)?,
        y_train: y.clone(),
        x_test: matrix(&test)?,
        y_test: ty.iter().map(|&c| remap[c]).collect(),
        classes: labels.len(),
    })
}

fn accuracy(f: &Forest, p: &Prepared) -> f64 {
    let mut out = vec![0.0; p.classes];
    let right = p
        .x_test
        .rows()
        .into_iter()
        .zip(&p.y_test)
        .filter(|(row, y)| {
            f.predict_into(row.as_slice().expect("standard layout"), &mut out);
            argmax(&out) == **y
        })
        .count();
    right as f64 / p.y_test.len().max(1) as f64
}

/// One model kind, both sides.
struct Kind {
    /// train.py's --model.
    id: &'static str,
    title: &'static str,
    /// The trainer's algorithm and the params given to the daemon.
    algorithm: &'static str,
    params: BTreeMap<String, String>,
    /// What the in-process fit uses (the trainer's defaults + params).
    forest: ForestParams,
    /// Extra train.py arguments.
    py_args: Vec<String>,
}

fn kinds(n_trees: usize) -> Vec<Kind> {
    vec![
        Kind {
            id: "tree",
            title: "decision tree (max depth 10)",
            algorithm: "decision_tree",
            params: [("max_depth".to_string(), "10".to_string())].into(),
            // The trainer's decision_tree: one tree on every row, every
            // feature at each split, gini, 256 bins, seed 0.
            forest: ForestParams {
                n_trees: 1,
                bootstrap: false,
                tree: TreeParams {
                    max_depth: Some(10),
                    seed: 0,
                    ..TreeParams::default()
                },
            },
            py_args: vec![],
        },
        Kind {
            id: "forest",
            title: "random forest (100 trees)",
            algorithm: "random_forest",
            params: [("n_trees".to_string(), n_trees.to_string())].into(),
            // The trainer's random_forest defaults: bootstrap, sqrt(features)
            // per split, unlimited depth, gini, 256 bins, seed 0.
            forest: ForestParams {
                n_trees,
                ..ForestParams::default()
            },
            py_args: vec!["--n-trees".into(), n_trees.to_string()],
        },
    ]
}

/// Submit → registered through a real trainer and registry, with the time
/// at which each stage began (from the job's progress events).
struct DaemonRun {
    total: Duration,
    stages: Vec<(String, Duration)>,
    version: u64,
    accuracy: Option<f64>,
}

async fn daemon_train(
    client: &mut TrainerClient<tonic::transport::Channel>,
    model: &str,
    dataset: &Path,
    kind: &Kind,
) -> anyhow::Result<DaemonRun> {
    let req = TrainRequest {
        model: model.into(),
        dataset_uri: dataset.display().to_string(),
        target: "target".into(),
        algorithm: kind.algorithm.into(),
        params: kind.params.clone().into_iter().collect(),
        seed: 0,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut stream = client.train(req).await?.into_inner();
    let mut stages: Vec<(String, Duration)> = Vec::new();
    while let Some(ev) = stream.message().await? {
        match ev.kind {
            Some(train_event::Kind::Progress(p)) => {
                let name = p.stage().as_str_name().trim_start_matches("STAGE_");
                if stages.last().map(|(s, _)| s.as_str()) != Some(name) {
                    stages.push((name.to_lowercase(), t0.elapsed()));
                }
            }
            Some(train_event::Kind::Done(job)) => {
                let total = t0.elapsed();
                ensure!(
                    job.state() == JobState::Succeeded && job.version > 0,
                    "training job {} ended {:?} without a version: {}",
                    job.id,
                    job.state(),
                    job.error
                );
                return Ok(DaemonRun {
                    total,
                    stages,
                    version: job.version,
                    accuracy: job.metrics.get("accuracy").copied(),
                });
            }
            None => {}
        }
    }
    bail!("the Train stream ended without a done event")
}

/// Stage durations of a run: each stage lasts until the next begins.
fn stage_durations(r: &DaemonRun) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (i, (name, start)) in r.stages.iter().enumerate() {
        let end = r.stages.get(i + 1).map_or(r.total, |(_, t)| *t);
        out.push((name.clone(), (end - *start).as_secs_f64()));
    }
    out
}

async fn daemon_runs(
    ctx: &Ctx,
    dataset: &Path,
    kinds: &[Kind],
    runs: usize,
) -> anyhow::Result<Vec<Vec<DaemonRun>>> {
    let reg_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let reg_url = format!("http://{}", reg_listener.local_addr()?);
    let tr_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tr_url = format!("http://{}", tr_listener.local_addr()?);
    let registry = evergreen_registry::RegistryConfig {
        metrics_listen: String::new(),
        data_dir: ctx.work.join("train-registry"),
        monitor_url: String::new(),
        ..Default::default()
    };
    let trainer = evergreen_trainer::TrainerConfig {
        metrics_listen: String::new(),
        data_dir: ctx.work.join("train-trainer"),
        registry_url: reg_url,
        ..Default::default()
    };
    let (stop_reg, reg_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tr, tr_rx) = tokio::sync::oneshot::channel::<()>();
    let reg_task = tokio::spawn(evergreen_registry::run(registry, reg_listener, async {
        let _ = reg_rx.await;
    }));
    let tr_task = tokio::spawn(evergreen_trainer::run(trainer, tr_listener, async {
        let _ = tr_rx.await;
    }));
    let result = async {
        let mut client = TrainerClient::connect(tr_url).await?;
        let mut out: Vec<Vec<DaemonRun>> = kinds.iter().map(|_| Vec::new()).collect();
        for _ in 0..runs {
            for (k, kind) in kinds.iter().enumerate() {
                let model = format!("bench-{}", kind.id);
                out[k].push(daemon_train(&mut client, &model, dataset, kind).await?);
            }
        }
        anyhow::Ok(out)
    }
    .await;
    let _ = stop_tr.send(());
    let _ = stop_reg.send(());
    tr_task.await?.context("trainer daemon")?;
    reg_task.await?.context("registry daemon")?;
    result
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let limit = ctx.smoke.then_some(2000);
    let split = ctx.split("synth_100000.csv", limit)?;
    let runs = ctx.size(3, 1);
    let n_trees = ctx.size(100, 10);
    let t = Instant::now();
    let prep = prepare(&split)?;
    let load_s = t.elapsed().as_secs_f64();
    let kinds = kinds(n_trees);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (train_s, test_s) = (
        split.train.display().to_string(),
        split.test.display().to_string(),
    );

    // A B A B: each baseline fit (one train.py run) is followed by the same
    // fit in-process, per model kind.
    let mut base_s: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut base_acc: Vec<Option<f64>> = vec![None; kinds.len()];
    let mut base_version = None;
    let mut ever_s: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut ever_acc: Vec<f64> = vec![0.0; kinds.len()];
    let mut leaves = vec![0usize; kinds.len()];
    for i in 0..runs {
        for (k, kind) in kinds.iter().enumerate() {
            if let Some(py) = &ctx.python {
                let mut args: Vec<&str> = vec![
                    "--train", &train_s, "--test", &test_s, "--model", kind.id, "--runs", "1",
                ];
                args.extend(kind.py_args.iter().map(String::as_str));
                let v = py.run_json("train.py", &args)?;
                base_s[k].push(baseline::num(&v, "/fit_seconds/0")?);
                base_acc[k] = Some(baseline::num(&v, "/accuracy")?);
                base_version = v["version"].as_str().map(String::from);
            }
            let t = Instant::now();
            let forest = fit_forest(
                prep.x_train.view(),
                &prep.y_train,
                prep.classes,
                &kind.forest,
                Control::default(),
            )
            .map_err(|e| anyhow::anyhow!("{} fit: {e}", kind.title))?;
            let s = t.elapsed().as_secs_f64();
            ever_s[k].push(s);
            ever_acc[k] = accuracy(&forest, &prep);
            leaves[k] = forest.trees.iter().map(|t| t.n_leaves()).sum();
            eprintln!(
                "train: run {}/{runs} {}: evergreen fit {s:.3} s, accuracy {:.4}{}",
                i + 1,
                kind.id,
                ever_acc[k],
                base_s[k]
                    .last()
                    .map(|b| format!("; scikit-learn {b:.3} s"))
                    .unwrap_or_default()
            );
        }
    }

    // The daemon trains on the same rows (train + test of the split in one
    // file) and makes its own stratified 70/30 split of them.
    let all = ctx.work.join("train-daemon-input.csv");
    {
        let train = std::fs::read_to_string(&split.train)?;
        let test = std::fs::read_to_string(&split.test)?;
        let body = test.split_once('\n').map(|(_, b)| b).unwrap_or("");
        std::fs::write(&all, format!("{train}{body}"))?;
    }
    let daemon = daemon_runs(ctx, &all, &kinds, runs).await?;

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut raw_kinds = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let b = (!base_s[k].is_empty()).then(|| median(&base_s[k]));
        let e = median(&ever_s[k]);
        rows.push(goal_vs(
            Row::new(&format!("{} fit", kind.title), "s", Better::Lower).figures(b, Some(e)),
            "no slower than scikit-learn (≥ 1×)",
            |b, e| b / e >= 1.0,
        ));
        rows.push(goal_vs(
            Row::new(
                &format!("{} test accuracy", kind.title),
                "%",
                Better::Higher,
            )
            .figures(base_acc[k].map(|a| a * 100.0), Some(ever_acc[k] * 100.0)),
            "within 1 point (≥ scikit-learn − 1)",
            |b, e| e >= b - 1.0,
        ));
        let d = &daemon[k];
        let d_total: Vec<f64> = d.iter().map(|r| r.total.as_secs_f64()).collect();
        rows.push(
            Row::new(
                &format!("{} through the daemon, submit → registered", kind.title),
                "s",
                Better::Lower,
            )
            .figures(None, Some(median(&d_total))),
        );
        // Median duration of each stage over the daemon runs.
        let mut per_stage: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for r in d {
            for (name, s) in stage_durations(r) {
                if !order.contains(&name) {
                    order.push(name.clone());
                }
                per_stage.entry(name).or_default().push(s);
            }
        }
        let breakdown: Vec<String> = order
            .iter()
            .map(|n| format!("{n} {:.2} s", median(&per_stage[n])))
            .collect();
        notes.push(format!(
            "Through the daemon, {}: median {:.2} s from the Train call to the registered \
             version, against {:.2} s for the fit alone in-process. By stage (from the job's \
             progress events): {}. Beyond the fit the daemon reads and parses the CSV \
             (loading), builds the preprocessing matrix (inside fitting), scores the holdout \
             rows through the serving path and builds the reference profile (evaluating), and \
             serializes and uploads the artifact to the registry, which stores it durably \
             (registering). Its own stratified split of the same {} rows gives holdout \
             accuracy {}.",
            kind.title,
            median(&d_total),
            e,
            breakdown.join(", "),
            split.n_train + split.n_test,
            d.last()
                .and_then(|r| r.accuracy)
                .map(|a| format!("{:.2} %", a * 100.0))
                .unwrap_or_else(|| "—".into())
        ));
        raw_kinds.push(json!({
            "model": kind.id,
            "scikit_learn_fit_s": base_s[k],
            "scikit_learn_accuracy": base_acc[k],
            "evergreen_fit_s": ever_s[k],
            "evergreen_accuracy": ever_acc[k],
            "evergreen_leaves": leaves[k],
            "evergreen_params": format!("{:?}", kind.forest),
            "daemon_total_s": d_total,
            "daemon_stages_s": d.iter().map(|r| stage_durations(r)).collect::<Vec<_>>(),
            "daemon_versions": d.iter().map(|r| r.version).collect::<Vec<_>>(),
            "daemon_accuracy": d.iter().map(|r| r.accuracy).collect::<Vec<_>>(),
        }));
    }
    notes.insert(
        0,
        format!(
            "Threads: scikit-learn's forest runs with n_jobs=-1 (one worker per core, {threads} \
             here); its DecisionTreeClassifier is single-threaded. Evergreen uses rayon's global \
             pool ({threads} threads) for both: the forest grows trees in parallel, the single \
             tree bins its features in parallel and grows on one thread. Split-finding \
             differs: scikit-learn sorts exact thresholds, Evergreen bins each feature into at \
             most 256 quantile bins first (like LightGBM / HistGradientBoosting), so the two \
             forests are not the same trees and accuracies differ slightly."
        ),
    );
    if ctx.python.is_none() {
        notes.push("Baselines not run (--no-baselines): scikit-learn figures are empty.".into());
    }
    Ok(Section {
        id: "train".into(),
        title: "Training".into(),
        baseline: format!(
            "scikit-learn {} (bench/python/train.py)",
            base_version.as_deref().unwrap_or("(not run)")
        ),
        method: format!(
            "{} on a seeded 70/30 split ({} train / {} test rows, identical CSVs for both \
             sides). Both sides load the CSVs before timing and time the fit alone: \
             scikit-learn `estimator.fit(X, y)` (DecisionTreeClassifier(max_depth=10), \
             RandomForestClassifier({n_trees}, n_jobs=-1, max_features=\"sqrt\", \
             bootstrap=True)), Evergreen `evergreen_model::tree::fit_forest` — the call \
             `evergreen_trainer::train` makes for the final fit — with the trainer's defaults \
             (decision_tree max_depth 10; random_forest n_trees {n_trees}, max_features sqrt, \
             bootstrap true), seed 0 both sides. Runs alternate (scikit-learn, Evergreen, \
             per model), {runs} each; figures are medians; accuracy on the test CSV. The \
             daemon rows run a registry and a trainer in-process on 127.0.0.1:0 (sled on temp \
             dirs) and time one `Train` gRPC call from submit to the done event carrying \
             the registered version, {runs} runs, median.",
            if ctx.smoke {
                "synth_100000.csv cut to 2000 rows (smoke)".to_string()
            } else {
                "synth_100000.csv".to_string()
            },
            split.n_train,
            split.n_test
        ),
        rows,
        notes,
        raw: json!({
            "n_train": split.n_train,
            "n_test": split.n_test,
            "load_and_prepare_s": load_s,
            "threads": threads,
            "runs": runs,
            "models": raw_kinds,
        }),
    })
}
