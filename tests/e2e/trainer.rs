//! The trainer daemon through real gRPC: CSV → trained, evaluated,
//! profiled, registered version; gates, retraining (with labeled rows),
//! jobs, bad data.

use std::path::Path;

use evergreen_e2e::Channel;
use evergreen_e2e::{dataset, req, Sandbox};
use evergreen_model::profile::{FeatureProfile, PredictionProfile};
use evergreen_model::Model;
use evergreen_proto::v1::trainer_client::TrainerClient;
use evergreen_proto::v1::{
    train_event, value, CancelJobRequest, DownloadArtifactRequest, FeatureType, Gate,
    GetJobRequest, GetVersionRequest, JobState, LabeledRow, ListJobsRequest, ListModelsRequest,
    RetrainRequest, Row, Stage, TrainJob, TrainRequest, Value,
};
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

fn bc_request(model: &str) -> TrainRequest {
    TrainRequest {
        model: model.into(),
        dataset_uri: dataset("breast_cancer.csv").display().to_string(),
        target: "target".into(),
        algorithm: "random_forest".into(),
        seed: 42,
        ..Default::default()
    }
}

/// Runs `Train`; returns the progress stages seen and the finished job, or
/// the status the call or the stream ended with.
async fn train(
    t: &mut TrainerClient<Channel>,
    r: TrainRequest,
) -> Result<(Vec<Stage>, TrainJob), Status> {
    let mut stream = t.train(r).await?.into_inner();
    let mut stages = Vec::new();
    while let Some(ev) = stream.message().await? {
        match ev.kind {
            Some(train_event::Kind::Progress(p)) => {
                let s = Stage::try_from(p.stage).unwrap();
                if stages.last() != Some(&s) {
                    stages.push(s);
                }
            }
            Some(train_event::Kind::Done(job)) => return Ok((stages, job)),
            None => panic!("empty event"),
        }
    }
    panic!("stream ended without a result")
}

/// The artifact of `spec` ("model/version", "model@alias"), downloaded.
pub(crate) async fn download(sb: &Sandbox, spec: &str) -> Vec<u8> {
    let mut c = sb.registry().await;
    let mut s = c
        .download_artifact(DownloadArtifactRequest {
            r#ref: req::spec(spec),
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = s.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    bytes
}

async fn wait_job(t: &mut TrainerClient<Channel>, id: &str) -> TrainJob {
    let mut s = t
        .watch_job(GetJobRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner();
    loop {
        match s.message().await {
            Ok(Some(ev)) => {
                if let Some(train_event::Kind::Done(j)) = ev.kind {
                    return j;
                }
            }
            Ok(None) | Err(_) => {
                return t
                    .get_job(GetJobRequest { id: id.into() })
                    .await
                    .unwrap()
                    .into_inner()
            }
        }
    }
}

#[tokio::test]
async fn trains_breast_cancer_and_registers_version_metrics_lineage_and_profile() {
    let sb = Sandbox::builder().trainer().start().await;
    let mut t = sb.trainer().await;
    let mut r = bc_request("cancer");
    r.gate = Some(Gate {
        alias: "production".into(),
        ..Default::default()
    });
    let (stages, job) = train(&mut t, r).await.unwrap();
    assert_eq!(
        stages,
        [
            Stage::Loading,
            Stage::Fitting,
            Stage::Evaluating,
            Stage::Comparing,
            Stage::Registering
        ],
        "progress is streamed stage by stage"
    );
    assert_eq!((job.state, job.version), (JobState::Succeeded as i32, 1));
    let acc = job.metrics["accuracy"];
    assert!(
        acc >= 0.94,
        "random forest on breast_cancer, 70/30, seed 42: accuracy {acc}"
    );
    let gate = job.gate.clone().unwrap();
    assert!(gate.promoted, "first version is promoted: {}", gate.reason);

    // The registry has the version with metrics, params, schema and lineage.
    let mut c = sb.registry().await;
    let v = c
        .get_version(GetVersionRequest {
            r#ref: req::spec("cancer@production"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, 1);
    assert_eq!(v.metrics["accuracy"], acc);
    for m in [
        "f1_macro",
        "f1_weighted",
        "precision_macro",
        "recall_weighted",
        "roc_auc",
        "log_loss",
        "train_seconds",
    ] {
        assert!(
            v.metrics.contains_key(m),
            "metric {m} missing: {:?}",
            v.metrics.keys()
        );
    }
    assert_eq!(v.params["algorithm"], "random_forest");
    assert_eq!(v.params["n_trees"], "100");
    assert_eq!(v.params["max_features"], "sqrt");
    let confusion: Vec<Vec<u64>> =
        serde_json::from_str(&v.tags["evergreen.confusion_matrix"]).unwrap();
    assert_eq!(
        confusion.iter().flatten().sum::<u64>(),
        171,
        "the 30% holdout"
    );
    let schema = v.schema.unwrap();
    assert_eq!(schema.features.len(), 30);
    assert!(schema
        .features
        .iter()
        .all(|f| f.r#type == FeatureType::Numeric as i32));
    assert_eq!(schema.target.unwrap().categories, ["0", "1"]);
    let lineage = v.lineage.unwrap();
    let file = std::fs::read(dataset("breast_cancer.csv")).unwrap();
    assert_eq!(lineage.dataset_sha256, hex::encode(Sha256::digest(&file)));
    assert_eq!(lineage.run_id, job.id);
    assert!(lineage.producer.starts_with("evergreen-trainer "));

    // The artifact loads, carries the reference profile, and predicts.
    let bytes = download(&sb, "cancer/1").await;
    assert_eq!(hex::encode(Sha256::digest(&bytes)), job.artifact_sha256);
    let model = Model::from_bytes(&bytes).unwrap();
    assert_eq!(model.profile.rows, 398);
    assert_eq!(model.profile.features.len(), 30);
    for f in &model.profile.features {
        let FeatureProfile::Numeric(p) = f else {
            panic!("numeric expected")
        };
        assert_eq!(p.counts.iter().sum::<u64>(), 398);
        assert!(
            p.edges.len() > 50 && p.edges.len() <= 101,
            "quantile bins: {}",
            p.edges.len()
        );
        assert!(p.std > 0.0 && p.min <= p.mean && p.mean <= p.max);
    }
    let PredictionProfile::Classification {
        rows, class_counts, ..
    } = &model.profile.predictions
    else {
        panic!("classification profile expected")
    };
    assert_eq!((*rows, class_counts.iter().sum::<u64>()), (171, 171));
    assert_eq!(model.training.dataset_sha256, lineage.dataset_sha256);
    assert!(model.training.recipe.contains("random_forest"));
}

#[tokio::test]
async fn the_same_request_produces_a_byte_identical_artifact() {
    let sb = Sandbox::builder().trainer().start().await;
    let mut t = sb.trainer().await;
    let mut r = bc_request("repro");
    r.params.insert("n_trees".into(), "25".into());
    r.params.insert("max_depth".into(), "4,8".into()); // a search with CV, too
    let (_, a) = train(&mut t, r.clone()).await.unwrap();
    let (_, b) = train(&mut t, r.clone()).await.unwrap();
    assert_eq!((a.version, b.version), (1, 2));
    assert_eq!(
        a.artifact_sha256, b.artifact_sha256,
        "same data + same request = same bytes"
    );
    assert_eq!(
        download(&sb, "repro/1").await,
        download(&sb, "repro/2").await
    );
    assert!(
        a.metrics.contains_key("cv_accuracy_mean") && a.metrics.contains_key("cv_accuracy_fold5")
    );
    r.seed = 7;
    let (_, c) = train(&mut t, r).await.unwrap();
    assert_ne!(
        c.artifact_sha256, a.artifact_sha256,
        "another seed, another forest"
    );
}

#[tokio::test]
async fn a_worse_challenger_is_registered_but_not_promoted() {
    let sb = Sandbox::builder().trainer().start().await;
    let mut t = sb.trainer().await;
    let gate = Some(Gate {
        alias: "production".into(),
        metric: "accuracy".into(),
        min_improvement: 0.0,
    });
    let (_, champion) = train(
        &mut t,
        TrainRequest {
            gate: gate.clone(),
            ..bc_request("gated")
        },
    )
    .await
    .unwrap();
    let mut weak = bc_request("gated");
    weak.algorithm = "decision_tree".into();
    weak.params.insert("max_depth".into(), "1".into());
    weak.gate = gate;
    let (_, challenger) = train(&mut t, weak).await.unwrap();
    assert_eq!(challenger.version, 2);
    let g = challenger.gate.unwrap();
    assert!(!g.promoted, "{}", g.reason);
    assert_eq!(g.champion_version, 1);
    assert_eq!(
        g.champion_score, champion.metrics["accuracy"],
        "champion re-scored on the same holdout"
    );
    assert!(g.challenger_score < g.champion_score);
    assert!(g.reason.contains("not promoted"), "{}", g.reason);

    let mut c = sb.registry().await;
    let prod = c
        .get_version(GetVersionRequest {
            r#ref: req::spec("gated@production"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prod.version, 1, "the alias did not move");
    let v2 = c
        .get_version(GetVersionRequest {
            r#ref: req::spec("gated/2"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.lineage.unwrap().parent_version, 1);
    let recorded: serde_json::Value = serde_json::from_str(&v2.tags["evergreen.gate"]).unwrap();
    assert_eq!(recorded["promote"], false);
    assert_eq!(recorded["champion_version"], 1);
}

#[tokio::test]
async fn retrain_reuses_the_recipe_of_the_production_version() {
    let sb = Sandbox::builder().trainer().start().await;
    let mut t = sb.trainer().await;
    let mut r = bc_request("recipe");
    r.algorithm = "decision_tree".into();
    r.params.insert("max_depth".into(), "3".into());
    r.params.insert("criterion".into(), "entropy".into());
    r.gate = Some(Gate {
        alias: "production".into(),
        ..Default::default()
    });
    train(&mut t, r).await.unwrap();

    let job = t
        .retrain(RetrainRequest {
            model: "recipe".into(),
            reason: "drift on f3".into(),
            dataset_uri: dataset("breast_cancer.csv").display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_job(&mut t, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{}", done.error);
    assert_eq!(done.version, 2);
    let mut c = sb.registry().await;
    let v2 = c
        .get_version(GetVersionRequest {
            r#ref: req::spec("recipe/2"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.params["algorithm"], "decision_tree");
    assert_eq!(v2.params["max_depth"], "3");
    assert_eq!(v2.params["criterion"], "entropy");
    let prod = c
        .get_version(GetVersionRequest {
            r#ref: req::spec("recipe@production"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prod.version, 1, "retrain without a gate only registers");
    let err = t
        .retrain(RetrainRequest {
            model: "nope".into(),
            dataset_uri: "/x.csv".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

/// A CSV in a temp dir with `body`.
fn csv(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[tokio::test]
async fn bad_data_and_bad_requests_are_clear_errors_and_register_nothing() {
    let sb = Sandbox::builder().trainer().start().await;
    let mut t = sb.trainer().await;
    let dir = tempfile::tempdir().unwrap();
    let mut good_rows = String::from("f1,f7,target\n");
    for i in 0..1040 {
        good_rows.push_str(&format!("{},{},{}\n", i, i * 2, i % 2));
    }
    let bad_value = csv(dir.path(), "data.csv", &format!("{good_rows}1,abc,0\n"));
    let cases: Vec<(&str, TrainRequest, Code, String)> = vec![
        (
            "unparsable number",
            TrainRequest {
                dataset_uri: bad_value.clone(),
                ..bc_request("bad")
            },
            Code::InvalidArgument,
            format!("{bad_value} line 1042: column f7: cannot parse \"abc\" as a number"),
        ),
        (
            "unknown target",
            TrainRequest {
                target: "label".into(),
                ..bc_request("bad")
            },
            Code::InvalidArgument,
            "target column \"label\" is not in".into(),
        ),
        (
            "single-class target",
            TrainRequest {
                dataset_uri: csv(dir.path(), "one.csv", "a,target\n1,x\n2,x\n3,x\n4,x\n"),
                ..bc_request("bad")
            },
            Code::InvalidArgument,
            "the target has a single class (\"x\"); classification needs at least two".into(),
        ),
        (
            "empty file",
            TrainRequest {
                dataset_uri: csv(dir.path(), "empty.csv", ""),
                ..bc_request("bad")
            },
            Code::InvalidArgument,
            "the file is empty".into(),
        ),
        (
            "ragged row",
            TrainRequest {
                dataset_uri: csv(dir.path(), "ragged.csv", "a,b,target\n1,2,0\n3,1\n"),
                ..bc_request("bad")
            },
            Code::InvalidArgument,
            "line 3: expected 3 fields (as in the header), found 2".into(),
        ),
        (
            "missing file",
            TrainRequest {
                dataset_uri: "/nonexistent/data.csv".into(),
                ..bc_request("bad")
            },
            Code::NotFound,
            "dataset /nonexistent/data.csv does not exist".into(),
        ),
        (
            "unknown algorithm",
            TrainRequest {
                algorithm: "svm".into(),
                ..bc_request("bad")
            },
            Code::InvalidArgument,
            "unknown algorithm \"svm\": expected one of".into(),
        ),
        (
            "bad hyperparameter",
            TrainRequest {
                params: [("max_depth".to_string(), "deep".to_string())].into(),
                ..bc_request("bad")
            },
            Code::InvalidArgument,
            "param max_depth of random_forest: expected an integer >= 1 or none, got \"deep\""
                .into(),
        ),
        (
            "regression metric for a classifier",
            TrainRequest {
                metric: "rmse".into(),
                ..bc_request("bad")
            },
            Code::InvalidArgument,
            "metric \"rmse\": expected one of accuracy".into(),
        ),
        (
            "path-like model name",
            TrainRequest {
                model: "../x".into(),
                ..bc_request("bad")
            },
            Code::InvalidArgument,
            "invalid model name \"../x\"".into(),
        ),
    ];
    for (what, request, code, message) in cases {
        let err = train(&mut t, request)
            .await
            .map(|(_, j)| j)
            .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(
            err.message().contains(&message),
            "{what}: {:?} should contain {message:?}",
            err.message()
        );
    }
    assert!(sb.trainer_running(), "the trainer survives bad input");
    let models = sb
        .registry()
        .await
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(models.is_empty(), "nothing registered: {models:?}");
    // Failed jobs say why.
    let jobs = t
        .list_jobs(ListJobsRequest {
            model: "bad".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let failed = jobs
        .iter()
        .find(|j| j.error.contains("line 1042"))
        .expect("the failed job is listed");
    assert_eq!(
        (failed.state, failed.error_code.as_str()),
        (JobState::Failed as i32, "INVALID_ARGUMENT")
    );
}

#[tokio::test]
async fn a_cancelled_job_registers_nothing_and_shutdown_cancels_running_jobs() {
    let mut sb = Sandbox::builder().trainer().start().await;
    let mut t = sb.trainer().await;
    // 20k rows and 5000 trees: long enough to be caught running.
    let dir = tempfile::tempdir().unwrap();
    let mut body = String::from("a,b,c,d,target\n");
    for i in 0..20_000u64 {
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (a, b, c, d) = (
            h % 1000,
            (h >> 10) % 1000,
            (h >> 20) % 1000,
            (h >> 30) % 1000,
        );
        body.push_str(&format!("{a},{b},{c},{d},{}\n", u64::from(a + b > c + d)));
    }
    let big = TrainRequest {
        model: "big".into(),
        dataset_uri: csv(dir.path(), "big.csv", &body),
        target: "target".into(),
        params: [("n_trees".to_string(), "5000".to_string())].into(),
        ..Default::default()
    };
    let job = t.submit_job(big.clone()).await.unwrap().into_inner();
    assert_eq!(job.state, JobState::Queued as i32);
    // Wait until it trains, then cancel.
    loop {
        let j = t
            .get_job(GetJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner();
        if j.progress
            .as_ref()
            .is_some_and(|p| p.stage == Stage::Fitting as i32)
        {
            break;
        }
        assert!(
            j.state <= JobState::Running as i32,
            "job ended early: {}",
            j.error
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    t.cancel_job(CancelJobRequest {
        id: job.id.clone(),
        reason: "changed my mind".into(),
    })
    .await
    .unwrap();
    let done = wait_job(&mut t, &job.id).await;
    assert_eq!(done.state, JobState::Cancelled as i32);
    assert!(done.error.contains("changed my mind"), "{}", done.error);

    // An attached Train whose caller goes away (Ctrl-C) cancels its job.
    let mut stream = t.train(big.clone()).await.unwrap().into_inner();
    let attached_id = loop {
        let ev = stream.message().await.unwrap().expect("progress");
        if let Some(train_event::Kind::Progress(p)) = ev.kind {
            if p.stage == Stage::Fitting as i32 {
                break p.job_id;
            }
        }
    };
    drop(stream);
    let done = wait_job(&mut t, &attached_id).await;
    assert_eq!(done.state, JobState::Cancelled as i32);
    assert!(
        done.error.contains("cancelled by the client"),
        "{}",
        done.error
    );
    let err = t
        .cancel_job(CancelJobRequest {
            id: job.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = t
        .get_job(GetJobRequest {
            id: "job-999999".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A job still running at shutdown is cancelled, and after the restart
    // its record says so.
    let job = t.submit_job(big).await.unwrap().into_inner();
    let mut watch = t
        .watch_job(GetJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let stopping = std::time::Instant::now();
    sb.restart_trainer().await;
    // Its progress stream ended with the reason as the drain began, not
    // with a connection cut at the end of the grace period.
    assert!(stopping.elapsed() < std::time::Duration::from_secs(10));
    let end = loop {
        match watch.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without the job's end"),
            Err(e) => break e,
        }
    };
    assert_eq!(end.code(), Code::Cancelled, "{end:?}");
    assert!(end.message().contains("shutting down"), "{}", end.message());
    let mut t = sb.trainer().await;
    let j = t
        .get_job(GetJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.state, JobState::Cancelled as i32, "{}", j.error);
    assert!(j.error.contains("shutting down"), "{}", j.error);
    let models = sb
        .registry()
        .await
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(models.is_empty(), "nothing registered: {models:?}");
}

#[tokio::test]
async fn categorical_features_missing_values_and_regression() {
    use evergreen_model::schema::Value;
    use evergreen_model::{FeatureKind, Prediction, Scratch};
    let sb = Sandbox::builder().trainer().start().await;
    let mut t = sb.trainer().await;
    let dir = tempfile::tempdir().unwrap();
    let colours = ["red", "green", "blue"];
    let mut body = String::from("size,colour,price,expensive\n");
    for i in 0..600 {
        let size = (i % 50) as f64;
        let c = i % 3;
        let price = 2.0 * size + [0.0, 30.0, 60.0][c] + ((i * 7919) % 13) as f64 * 0.1;
        let size_s = if i % 17 == 0 {
            "NA".to_string()
        } else {
            size.to_string()
        };
        let colour = if i % 23 == 0 { "" } else { colours[c] };
        body.push_str(&format!(
            "{size_s},{colour},{price},{}\n",
            if price > 70.0 { "yes" } else { "no" }
        ));
    }
    let path = csv(dir.path(), "shop.csv", &body);

    // Regression with linear_regression (one-hot colours, standardized size).
    let r = TrainRequest {
        model: "price".into(),
        dataset_uri: path.clone(),
        target: "price".into(),
        algorithm: "linear_regression".into(),
        exclude: vec!["expensive".into()],
        ..Default::default()
    };
    let (_, job) = train(&mut t, r).await.unwrap();
    assert!(job.metrics["r2"] > 0.9, "{:?}", job.metrics);
    assert!(job.metrics["rmse"] > 0.0 && job.metrics.contains_key("mae"));
    let model = Model::from_bytes(&download(&sb, "price/1").await).unwrap();
    assert_eq!(
        model.schema.features[1].kind,
        FeatureKind::Categorical {
            categories: vec!["blue".into(), "green".into(), "red".into()]
        }
    );
    let mut s = Scratch::default();
    let Prediction::Value(p) = model
        .predict(&[Value::Number(10.0), Value::Text("green")], &mut s)
        .unwrap()
    else {
        panic!("a value")
    };
    assert!((p - 50.0).abs() < 3.0, "2 × 10 + 30 ≈ {p}");
    // Unseen category and missing size: imputed and encoded, not an error.
    assert!(model
        .predict(&[Value::Missing, Value::Text("purple")], &mut s)
        .is_ok());

    // Classification on the same data with a categorical feature.
    let r = TrainRequest {
        model: "expensive".into(),
        dataset_uri: path,
        target: "expensive".into(),
        algorithm: "decision_tree".into(),
        exclude: vec!["price".into()],
        ..Default::default()
    };
    let (_, job) = train(&mut t, r).await.unwrap();
    assert!(job.metrics["accuracy"] > 0.9, "{:?}", job.metrics);
    let v = sb
        .registry()
        .await
        .get_version(GetVersionRequest {
            r#ref: req::spec("expensive/1"),
        })
        .await
        .unwrap()
        .into_inner();
    let schema = v.schema.unwrap();
    assert_eq!(schema.features[1].r#type, FeatureType::Categorical as i32);
    assert_eq!(schema.target.unwrap().categories, ["no", "yes"]);
}

/// A decision tree on `dataset_uri` (fast), as `model/1`.
async fn train_small_tree(t: &mut TrainerClient<Channel>, model: &str, dataset_uri: String) {
    let mut r = bc_request(model);
    r.dataset_uri = dataset_uri;
    r.algorithm = "decision_tree".into();
    r.params.insert("max_depth".into(), "3".into());
    let (_, job) = train(t, r).await.unwrap();
    assert_eq!(job.version, 1);
}

/// The first `n` data rows of breast_cancer.csv as labeled rows, values in
/// the order of `features` (the model's), label from `target`.
fn bc_labeled_rows(features: &[String], n: usize) -> Vec<LabeledRow> {
    let text = std::fs::read_to_string(dataset("breast_cancer.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let order: Vec<usize> = features.iter().map(|f| col(f)).collect();
    let target = col("target");
    lines
        .take(n)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            LabeledRow {
                features: Some(Row {
                    values: order
                        .iter()
                        .map(|&i| Value {
                            kind: Some(value::Kind::Number(fields[i].parse().unwrap())),
                        })
                        .collect(),
                    ..Default::default()
                }),
                label: fields[target].to_string(),
                value: 0.0,
            }
        })
        .collect()
}

async fn feature_names(sb: &Sandbox, spec: &str) -> Vec<String> {
    let v = sb
        .registry()
        .await
        .get_version(GetVersionRequest {
            r#ref: req::spec(spec),
        })
        .await
        .unwrap()
        .into_inner();
    v.schema
        .unwrap()
        .features
        .into_iter()
        .map(|f| f.name)
        .collect()
}

fn trainer_dir(sb: &Sandbox) -> std::path::PathBuf {
    sb.data_dir().parent().unwrap().join("trainer")
}

#[tokio::test]
async fn retrain_adds_labeled_rows_to_the_versions_own_training_data() {
    let sb = Sandbox::builder().trainer().start().await;
    let mut t = sb.trainer().await;
    let base_path = dataset("breast_cancer.csv");
    train_small_tree(&mut t, "grow", base_path.display().to_string()).await;
    let base = std::fs::read_to_string(&base_path).unwrap();
    let base_rows = base.lines().count() - 1;

    let rows = bc_labeled_rows(&feature_names(&sb, "grow/1").await, 50);
    let job = t
        .retrain(RetrainRequest {
            model: "grow".into(),
            reason: "feedback".into(),
            rows,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let reason = &job.request.as_ref().unwrap().reason;
    assert_eq!(reason, "retrain of grow/1: feedback (+50 labeled rows)");
    let done = wait_job(&mut t, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{}", done.error);
    assert_eq!(done.version, 2);

    let v2 = sb
        .registry()
        .await
        .get_version(GetVersionRequest {
            r#ref: req::spec("grow/2"),
        })
        .await
        .unwrap()
        .into_inner();
    let lineage = v2.lineage.unwrap();
    let file = std::path::PathBuf::from(&lineage.dataset_uri);
    assert!(
        file.starts_with(trainer_dir(&sb).join("retrain")),
        "the combined data lives under the trainer's data dir: {}",
        file.display()
    );
    let combined = std::fs::read(&file).unwrap();
    assert_eq!(
        lineage.dataset_sha256,
        hex::encode(Sha256::digest(&combined)),
        "the lineage's sha256 is the file's"
    );
    let combined = String::from_utf8(combined).unwrap();
    assert!(combined.starts_with(&base), "the base data is unchanged");
    assert_eq!(combined.lines().count(), 1 + base_rows + 50);
    assert_eq!(
        v2.metrics["train_rows"] + v2.metrics["test_rows"],
        (base_rows + 50) as f64
    );
    let model = Model::from_bytes(&download(&sb, "grow/2").await).unwrap();
    assert_eq!(
        model.training.train_rows + model.training.test_rows,
        (base_rows + 50) as u64
    );
    assert_eq!(v2.params["max_depth"], "3", "the recipe is v1's");
}

#[tokio::test]
async fn bad_labeled_rows_are_invalid_argument_and_create_no_job() {
    let sb = Sandbox::builder().trainer().start().await;
    let mut t = sb.trainer().await;
    train_small_tree(
        &mut t,
        "rows",
        dataset("breast_cancer.csv").display().to_string(),
    )
    .await;
    let good = bc_labeled_rows(&feature_names(&sb, "rows/1").await, 3);
    let number = |x: f64| Value {
        kind: Some(value::Kind::Number(x)),
    };
    let with = |f: &dyn Fn(&mut LabeledRow)| {
        let mut rows = good.clone();
        f(&mut rows[1]);
        rows
    };
    let cases: Vec<(&str, Vec<LabeledRow>, &str)> = vec![
        (
            "too many values",
            with(&|r| r.features.as_mut().unwrap().values.push(number(1.0))),
            "rows[1]: 31 feature values; rows/1 has 30 features (mean radius..worst fractal dimension)",
        ),
        (
            "empty label",
            with(&|r| r.label.clear()),
            "rows[1]: label \"\" is empty or reads as missing; rows/1 is a classifier of \"target\", expected a class label (known: 0, 1)",
        ),
        (
            "text for a numeric feature",
            with(&|r| {
                r.features.as_mut().unwrap().values[2] = Value {
                    kind: Some(value::Kind::Category("big".into())),
                }
            }),
            "rows[1]: feature \"mean perimeter\" (values[2]) is numeric; cannot use \"big\"",
        ),
        (
            "infinite value",
            with(&|r| r.features.as_mut().unwrap().values[0] = number(f64::INFINITY)),
            "rows[1]: feature \"mean radius\" (values[0]) is inf; expected a finite number",
        ),
    ];
    for (what, rows, message) in cases {
        let err = t
            .retrain(RetrainRequest {
                model: "rows".into(),
                rows,
                ..Default::default()
            })
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(message),
            "{what}: {:?} should contain {message:?}",
            err.message()
        );
    }
    let jobs = t
        .list_jobs(ListJobsRequest {
            model: "rows".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "only the first training: {jobs:?}");
    let retrain_dir = trainer_dir(&sb).join("retrain");
    let written = std::fs::read_dir(&retrain_dir).map_or(0, |d| d.count());
    assert_eq!(written, 0, "nothing written to {}", retrain_dir.display());
}

#[tokio::test]
async fn retrain_without_data_fails_when_the_training_data_is_gone() {
    let sb = Sandbox::builder().trainer().start().await;
    let mut t = sb.trainer().await;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("cancer.csv");
    std::fs::copy(dataset("breast_cancer.csv"), &copy).unwrap();
    train_small_tree(&mut t, "gone", copy.display().to_string()).await;
    let rows = bc_labeled_rows(&feature_names(&sb, "gone/1").await, 5);
    std::fs::remove_file(&copy).unwrap();
    for rows in [vec![], rows] {
        let err = t
            .retrain(RetrainRequest {
                model: "gone".into(),
                rows,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(
            err.message(),
            format!(
                "the training data of gone/1, {}, no longer exists; pass dataset_uri",
                copy.display()
            )
        );
    }
    let jobs = t
        .list_jobs(ListJobsRequest {
            model: "gone".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "no retrain job: {jobs:?}");
}

// ---- s3:// datasets, against a real S3 server (s3s-fs over HTTP) ----

const S3_BUCKET: &str = "datasets";
const S3_URI: &str = "s3://datasets/cancer/breast_cancer.csv";

/// A running S3 server with `datasets/cancer/breast_cancer.csv` uploaded
/// through the real client.
async fn s3_with_breast_cancer(dir: &Path) -> evergreen_s3::testing::TestS3 {
    let s3 = evergreen_s3::testing::TestS3::start(dir).await;
    s3.create_bucket(S3_BUCKET);
    evergreen_s3::S3Store::new(&s3.config(S3_BUCKET))
        .await
        .put_file("cancer/breast_cancer.csv", &dataset("breast_cancer.csv"))
        .await
        .unwrap();
    s3
}

/// A trainer that reaches `s3` (the config's bucket is ignored: the URI
/// names it).
async fn s3_sandbox(s3: evergreen_s3::S3Config) -> Sandbox {
    Sandbox::builder()
        .trainer_with(move |c| {
            c.s3 = evergreen_s3::S3Config {
                bucket: "not-used".into(),
                ..s3
            }
        })
        .start()
        .await
}

async fn lineage(sb: &Sandbox, spec: &str) -> evergreen_proto::v1::Lineage {
    sb.registry()
        .await
        .get_version(GetVersionRequest {
            r#ref: req::spec(spec),
        })
        .await
        .unwrap()
        .into_inner()
        .lineage
        .unwrap()
}

#[tokio::test]
async fn trains_from_s3_recording_the_uri_and_the_same_artifact_as_from_the_local_file() {
    let s3_dir = tempfile::tempdir().unwrap();
    let s3 = s3_with_breast_cancer(s3_dir.path()).await;
    let sb = s3_sandbox(s3.config("")).await;
    let mut t = sb.trainer().await;
    let mut r = bc_request("from-s3");
    r.dataset_uri = S3_URI.into();
    r.params.insert("n_trees".into(), "25".into());
    let (stages, job) = train(&mut t, r.clone()).await.unwrap();
    assert_eq!(
        stages[0],
        Stage::Loading,
        "downloading is LOADING: {stages:?}"
    );
    assert_eq!((job.state, job.version), (JobState::Succeeded as i32, 1));

    let local = std::fs::read(dataset("breast_cancer.csv")).unwrap();
    let l = lineage(&sb, "from-s3/1").await;
    assert_eq!(l.dataset_uri, S3_URI, "the lineage keeps the s3:// URI");
    assert_eq!(l.dataset_sha256, hex::encode(Sha256::digest(&local)));
    let copy = trainer_dir(&sb).join("s3/datasets/cancer/breast_cancer.csv");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        local,
        "downloaded to {copy:?}"
    );

    // The same request on the local file: the same model, byte for byte.
    r.model = "from-file".into();
    r.dataset_uri = dataset("breast_cancer.csv").display().to_string();
    let (_, from_file) = train(&mut t, r).await.unwrap();
    assert_eq!(from_file.artifact_sha256, job.artifact_sha256);
}

#[tokio::test]
async fn retrain_of_an_s3_trained_version_downloads_its_data_again() {
    let s3_dir = tempfile::tempdir().unwrap();
    let s3 = s3_with_breast_cancer(s3_dir.path()).await;
    let sb = s3_sandbox(s3.config("")).await;
    let mut t = sb.trainer().await;
    train_small_tree(&mut t, "again", S3_URI.into()).await;
    let copy = trainer_dir(&sb).join("s3/datasets/cancer/breast_cancer.csv");
    std::fs::remove_file(&copy).unwrap();

    // No dataset_uri: the version's lineage, s3:// — fetched again.
    let job = t
        .retrain(RetrainRequest {
            model: "again".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.request.as_ref().unwrap().dataset_uri, S3_URI);
    let done = wait_job(&mut t, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{}", done.error);
    assert_eq!(done.version, 2);
    let local = std::fs::read(dataset("breast_cancer.csv")).unwrap();
    let l = lineage(&sb, "again/2").await;
    assert_eq!(
        (l.dataset_uri.as_str(), l.dataset_sha256),
        (S3_URI, hex::encode(Sha256::digest(&local)))
    );
    assert!(copy.is_file(), "downloaded again");

    // The object gone: retrain says so, as for a deleted file.
    let object = s3.object_path(S3_BUCKET, "cancer/breast_cancer.csv");
    let aside = s3_dir.path().join("aside.csv");
    std::fs::rename(&object, &aside).unwrap();
    let err = t
        .retrain(RetrainRequest {
            model: "again".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        err.message(),
        format!("the training data of again/2, {S3_URI}, no longer exists; pass dataset_uri")
    );
    std::fs::rename(&aside, &object).unwrap();

    // Labeled rows are appended to the downloaded base.
    std::fs::remove_file(&copy).unwrap();
    let rows = bc_labeled_rows(&feature_names(&sb, "again/2").await, 20);
    let job = t
        .retrain(RetrainRequest {
            model: "again".into(),
            rows,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_job(&mut t, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{}", done.error);
    let l = lineage(&sb, "again/3").await;
    assert!(
        Path::new(&l.dataset_uri).starts_with(trainer_dir(&sb).join("retrain")),
        "{}",
        l.dataset_uri
    );
    let combined = std::fs::read(&l.dataset_uri).unwrap();
    assert!(combined.starts_with(&local), "the base is the S3 object");
    let lines = |b: &[u8]| b.iter().filter(|c| **c == b'\n').count();
    assert_eq!(lines(&combined), lines(&local) + 20);
}

/// Trains `model` from `uri`; the error the call ends with.
async fn s3_train_err(t: &mut TrainerClient<Channel>, model: &str, uri: &str) -> Status {
    let mut r = bc_request(model);
    r.dataset_uri = uri.into();
    r.algorithm = "decision_tree".into();
    train(t, r).await.map(|(_, j)| j).expect_err(uri)
}

async fn assert_trains(t: &mut TrainerClient<Channel>, model: &str, uri: String) {
    let mut r = bc_request(model);
    r.dataset_uri = uri;
    r.algorithm = "decision_tree".into();
    r.params.insert("max_depth".into(), "3".into());
    let (_, job) = train(t, r).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded as i32);
}

#[tokio::test]
async fn s3_failures_are_clear_statuses_and_the_trainer_keeps_serving() {
    let s3_dir = tempfile::tempdir().unwrap();
    let mut s3 = s3_with_breast_cancer(s3_dir.path()).await;
    s3.create_bucket("empty");
    std::fs::write(s3.object_path("empty", "nothing.csv"), "").unwrap();
    std::fs::write(s3.object_path("empty", "labels.csv"), "a,b\n1,2\n3,4\n").unwrap();
    let sb = s3_sandbox(s3.config("")).await;
    let mut t = sb.trainer().await;
    let local = dataset("breast_cancer.csv").display().to_string();

    let cases = [
        (
            "s3://datasets/cancer/typo.csv",
            Code::NotFound,
            "dataset s3://datasets/cancer/typo.csv does not exist".to_string(),
        ),
        (
            "s3://no-such-bucket/x.csv",
            Code::FailedPrecondition,
            format!(
                "dataset s3://no-such-bucket/x.csv: S3 bucket \"no-such-bucket\" does not exist at {}",
                s3.endpoint()
            ),
        ),
        (
            "s3://datasets/../trainer/jobs/db",
            Code::InvalidArgument,
            "has an empty, \".\" or \"..\" path component".into(),
        ),
        (
            "s3://empty/nothing.csv",
            Code::InvalidArgument,
            "s3://empty/nothing.csv is empty".into(),
        ),
        (
            // Found, downloaded, then refused by the job like a local file.
            "s3://empty/labels.csv",
            Code::InvalidArgument,
            "target column \"target\" is not in s3://empty/labels.csv (columns: a, b)".into(),
        ),
    ];
    for (uri, code, message) in cases {
        let err = s3_train_err(&mut t, "bad", uri).await;
        assert_eq!(err.code(), code, "{uri}: {err:?}");
        assert!(
            err.message().contains(&message),
            "{uri}: {:?} should contain {message:?}",
            err.message()
        );
    }
    assert_trains(&mut t, "after-bad-uris", S3_URI.into()).await;

    // The endpoint goes down: UNAVAILABLE; the trainer serves on, and
    // reads S3 again once it is back.
    let addr = s3.addr;
    s3.stop().await;
    let err = s3_train_err(&mut t, "bad", S3_URI).await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().starts_with(&format!(
            "dataset {S3_URI}: S3 endpoint {} is unreachable",
            s3.endpoint()
        )),
        "{}",
        err.message()
    );
    assert_trains(&mut t, "while-s3-is-down", local).await;
    let _s3 = evergreen_s3::testing::TestS3::restart_on(s3_dir.path(), addr).await;
    assert_trains(&mut t, "s3-is-back", S3_URI.into()).await;

    let models = sb
        .registry()
        .await
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(
        models.iter().all(|m| m.name != "bad"),
        "nothing registered for failures: {models:?}"
    );
}

#[tokio::test]
async fn wrong_s3_credentials_are_permission_denied_and_the_trainer_keeps_serving() {
    let s3_dir = tempfile::tempdir().unwrap();
    let s3 = s3_with_breast_cancer(s3_dir.path()).await;
    let sb = s3_sandbox(evergreen_s3::S3Config {
        secret_access_key: "not-the-secret".into(),
        ..s3.config("")
    })
    .await;
    let mut t = sb.trainer().await;
    let err = s3_train_err(&mut t, "denied", S3_URI).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .starts_with(&format!("dataset {S3_URI}: S3 refused the credentials")),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("secret_access_key"),
        "{}",
        err.message()
    );
    let jobs = t
        .list_jobs(ListJobsRequest {
            model: "denied".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "the call failed, no job: {jobs:?}");
    assert_trains(
        &mut t,
        "denied",
        dataset("breast_cancer.csv").display().to_string(),
    )
    .await;
}
