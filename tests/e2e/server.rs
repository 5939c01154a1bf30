//! The prediction server through real gRPC: train → promote → predict,
//! hot swaps under load with zero failed requests, registry outages, the
//! Open Inference Protocol V2, bad input, deprecation, retirement, canary,
//! shadow, rollback and the prediction log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evergreen_e2e::req::{row, WINE_ROW};
use evergreen_e2e::Channel;
use evergreen_e2e::{dataset, monitor, req, Sandbox};
use evergreen_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use evergreen_proto::inference::model_infer_request::InferInputTensor;
use evergreen_proto::inference::{
    infer_parameter, InferTensorContents, ModelInferRequest, ModelMetadataRequest,
    ModelReadyRequest, ServerLiveRequest, ServerReadyRequest,
};
use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::{
    train_event, value, ListServedRequest, ListServedResponse, PredictRequest,
    RollbackAliasRequest, Row, SetAliasRequest, SetTrafficPolicyRequest, SetVersionStatusRequest,
    TrafficPolicy, TrainRequest, Value, VersionStatus, VersionWeight,
};
use tonic::{Code, Status};

pub(crate) fn predict_req(model: &str, id: &str) -> PredictRequest {
    PredictRequest {
        model: model.into(),
        rows: vec![row(&WINE_ROW)],
        request_id: id.into(),
    }
}

/// Trains a wine model through the trainer; returns its version.
pub(crate) async fn train(
    sb: &Sandbox,
    model: &str,
    algorithm: &str,
    seed: u64,
    promote: bool,
) -> u64 {
    let mut t = sb.trainer().await;
    let r = TrainRequest {
        model: model.into(),
        dataset_uri: dataset("wine.csv").display().to_string(),
        target: "target".into(),
        algorithm: algorithm.into(),
        seed,
        params: if algorithm == "random_forest" {
            [("n_trees".to_string(), "20".to_string())].into()
        } else {
            Default::default()
        },
        ..Default::default()
    };
    let mut s = t.train(r).await.unwrap().into_inner();
    let mut version = 0;
    while let Some(ev) = s.message().await.unwrap() {
        if let Some(train_event::Kind::Done(j)) = ev.kind {
            version = j.version;
        }
    }
    assert!(version > 0);
    if promote {
        set_alias(sb, model, version).await;
    }
    version
}

pub(crate) async fn set_alias(sb: &Sandbox, model: &str, version: u64) {
    sb.registry()
        .await
        .set_alias(SetAliasRequest {
            model: model.into(),
            alias: "production".into(),
            version,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Polls ListServed until `f` holds (10 s at most).
pub(crate) async fn wait_served(
    p: &mut PredictorClient<Channel>,
    what: &str,
    f: impl Fn(&ListServedResponse) -> bool,
) -> ListServedResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = p.list_served(ListServedRequest {}).await {
            let r = r.into_inner();
            if f(&r) {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn serves(r: &ListServedResponse, model: &str, version: u64) -> bool {
    r.ready
        && r.models.iter().any(|m| {
            m.model == model
                && m.versions
                    .iter()
                    .any(|v| v.version == version && v.aliases.iter().any(|a| a == "production"))
        })
}

/// One answered Predict.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answer {
    pub(crate) at: Instant,
    pub(crate) version: u64,
    pub(crate) took: Duration,
}

/// Concurrent single-row Predict callers, recording every answer.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    answers: Arc<Mutex<Vec<Answer>>>,
    failures: Arc<Mutex<Vec<Status>>>,
}

impl Load {
    /// `workers` callers of `model`, each pausing `pause` between calls
    /// (zero: back to back; a few ms keep room on a 2-core machine for
    /// the daemons' own work).
    pub(crate) async fn start(sb: &Sandbox, model: &str, workers: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..workers {
            let mut p = sb.predictor().await;
            let (stop, answers, failures, model) = (
                stop.clone(),
                answers.clone(),
                failures.clone(),
                model.to_string(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let t = Instant::now();
                    match p.predict(predict_req(&model, &format!("w{w}-{i}"))).await {
                        Ok(r) => answers.lock().unwrap().push(Answer {
                            at: Instant::now(),
                            version: r.into_inner().version,
                            took: t.elapsed(),
                        }),
                        Err(s) => failures.lock().unwrap().push(s),
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }));
        }
        Load {
            stop,
            tasks,
            answers,
            failures,
        }
    }

    /// Waits (at most `within`) for an answer from `version` made after
    /// `since`; returns when it came.
    pub(crate) async fn wait_version(
        &self,
        version: u64,
        since: Instant,
        within: Duration,
    ) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some(a) = self
                .answers
                .lock()
                .unwrap()
                .iter()
                .find(|a| a.version == version && a.at >= since)
            {
                return a.at;
            }
            assert!(
                Instant::now() < deadline,
                "version {version} did not answer within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) async fn stop(self) -> (Vec<Answer>, Vec<Status>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let a = self.answers.lock().unwrap().clone();
        let f = self.failures.lock().unwrap().clone();
        (a, f)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promotion_hot_swaps_under_load_with_zero_failed_requests() {
    let sb = Sandbox::builder().trainer().server(|_| {}).start().await;
    let v1 = train(&sb, "wine", "random_forest", 1, true).await;
    let mut p = sb.predictor().await;
    wait_served(&mut p, "v1 serves", |r| serves(r, "wine", v1)).await;
    let first = p
        .predict(predict_req("wine", "x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (first.version, first.predictions[0].label.as_str()),
        (v1, "0")
    );
    assert_eq!(first.labels, ["0", "1", "2"]);
    assert_eq!(first.request_id, "x");

    let v2 = train(&sb, "wine", "logistic_regression", 2, false).await;
    let load = Load::start(&sb, "wine", 8, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let promoted_at = Instant::now();
    set_alias(&sb, "wine", v2).await;
    let switched = load
        .wait_version(v2, promoted_at, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (answers, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "failed requests during the swap: {failures:?}"
    );
    assert!(
        answers.len() > 100,
        "the load ran: {} answers",
        answers.len()
    );
    // Once v2 answered, every request that started later is v2's.
    let late_v1 = answers
        .iter()
        .filter(|a| a.version == v1 && a.at > switched + Duration::from_millis(50))
        .count();
    assert_eq!(late_v1, 0, "v1 still answered well after the swap");
    eprintln!("promotion → first v2 answer: {:?}", switched - promoted_at);
    // The old version was dropped from the server.
    wait_served(&mut p, "v1 unloaded", |r| {
        r.models
            .iter()
            .all(|m| m.versions.iter().all(|v| v.version != v1))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_outage_fails_no_prediction_and_later_promotions_are_picked_up() {
    let mut sb = Sandbox::builder().trainer().server(|_| {}).start().await;
    let v1 = train(&sb, "wine", "random_forest", 1, true).await;
    let v2 = train(&sb, "wine", "decision_tree", 2, false).await;
    let mut p = sb.predictor().await;
    wait_served(&mut p, "v1 serves", |r| serves(r, "wine", v1)).await;
    let load = Load::start(&sb, "wine", 4, Duration::ZERO).await;
    sb.stop_registry().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    sb.start_registry().await;
    let promoted_at = Instant::now();
    set_alias(&sb, "wine", v2).await;
    load.wait_version(v2, promoted_at, Duration::from_secs(10))
        .await;
    let (answers, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "failed predictions during the outage: {failures:?}"
    );
    assert!(answers.iter().any(|a| a.version == v1) && answers.iter().any(|a| a.version == v2));
}

async fn v2_client(sb: &Sandbox) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(sb.server_channel().await)
}

fn fp64_input(rows: &[[f64; 13]]) -> InferInputTensor {
    InferInputTensor {
        name: "input-0".into(),
        datatype: "FP64".into(),
        shape: vec![rows.len() as i64, 13],
        contents: Some(InferTensorContents {
            fp64_contents: rows.iter().flatten().copied().collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn open_inference_protocol_v2_typed_and_raw_contents_agree() {
    let sb = Sandbox::builder().trainer().server(|_| {}).start().await;
    let v1 = train(&sb, "wine", "random_forest", 1, true).await;
    let mut p = sb.predictor().await;
    wait_served(&mut p, "v1 serves", |r| serves(r, "wine", v1)).await;
    let mut c = v2_client(&sb).await;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str, version: &str| ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("wine", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("wine", "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("nope", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .model_metadata(ModelMetadataRequest {
            name: "wine".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs[0].shape, [-1, 13]);
    assert_eq!(
        meta.outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["predict", "probabilities"]
    );

    let second = [
        12.37, 0.94, 1.36, 10.6, 88.0, 1.98, 0.57, 0.28, 0.42, 1.95, 1.05, 1.82, 520.0,
    ];
    let typed = ModelInferRequest {
        model_name: "wine".into(),
        id: "req-7".into(),
        inputs: vec![fp64_input(&[WINE_ROW, second])],
        ..Default::default()
    };
    let mut raw = typed.clone();
    let bytes: Vec<u8> = typed.inputs[0]
        .contents
        .as_ref()
        .unwrap()
        .fp64_contents
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![bytes];
    let a = c.model_infer(typed).await.unwrap().into_inner();
    let b = c.model_infer(raw).await.unwrap().into_inner();
    assert_eq!(
        a.raw_output_contents, b.raw_output_contents,
        "typed and raw inputs give the same answer"
    );
    assert_eq!((a.model_version.as_str(), a.id.as_str()), ("1", "req-7"));
    assert_eq!(a.outputs[0].datatype, "INT64");
    let labels: Vec<i64> = a.raw_output_contents[0]
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // The same rows through Predict give the same labels and probabilities.
    let mut p = sb.predictor().await;
    let r = p
        .predict(PredictRequest {
            model: "wine/1".into(),
            rows: vec![row(&WINE_ROW), row(&second)],
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let expected: Vec<i64> = r
        .predictions
        .iter()
        .map(|p| p.label.parse().unwrap())
        .collect();
    assert_eq!(labels, expected);
    let probs: Vec<f64> = a.raw_output_contents[1]
        .chunks(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(a.outputs[1].shape, [2, 3]);
    assert_eq!(
        probs,
        r.predictions
            .iter()
            .flat_map(|p| p.probabilities.clone())
            .collect::<Vec<_>>()
    );
    // FP32 and one-tensor-per-feature inputs work too.
    let mut fp32 = ModelInferRequest {
        model_name: "wine".into(),
        model_version: "1".into(),
        ..Default::default()
    };
    fp32.inputs.push(InferInputTensor {
        name: "x".into(),
        datatype: "FP32".into(),
        shape: vec![1, 13],
        contents: Some(InferTensorContents {
            fp32_contents: WINE_ROW.iter().map(|x| *x as f32).collect(),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(
        c.model_infer(fp32)
            .await
            .unwrap()
            .into_inner()
            .raw_output_contents[0],
        a.raw_output_contents[0][..8].to_vec()
    );
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_problem_and_the_server_keeps_serving() {
    let sb = Sandbox::builder()
        .trainer()
        .server(|c| c.max_batch_rows = 50)
        .start()
        .await;
    let v1 = train(&sb, "wine", "decision_tree", 1, true).await;
    let mut p = sb.predictor().await;
    wait_served(&mut p, "v1 serves", |r| serves(r, "wine", v1)).await;
    let num = |x: f64| Value {
        kind: Some(value::Kind::Number(x)),
    };
    let text = |s: &str| Value {
        kind: Some(value::Kind::Category(s.into())),
    };
    let mut nan_row = row(&WINE_ROW);
    nan_row.values[2] = num(f64::NAN);
    let mut text_row = row(&WINE_ROW);
    text_row.values[0] = text("strong");
    let mut named = Row::default();
    named.named.insert("colour".into(), num(1.0));
    let cases: Vec<(&str, PredictRequest, Code, &str)> = vec![
        (
            "wrong count",
            PredictRequest {
                rows: vec![row(&[1.0, 2.0])],
                ..predict_req("wine", "")
            },
            Code::InvalidArgument,
            "row 0: expected 13 values (alcohol, malic_acid",
        ),
        (
            "unknown feature",
            PredictRequest {
                rows: vec![named],
                ..predict_req("wine", "")
            },
            Code::InvalidArgument,
            "row 0: unknown feature \"colour\"; expected one of alcohol",
        ),
        (
            "text for a number",
            PredictRequest {
                rows: vec![row(&WINE_ROW), text_row],
                ..predict_req("wine", "")
            },
            Code::InvalidArgument,
            "row 1: feature \"alcohol\" is numeric: cannot parse \"strong\" as a number",
        ),
        (
            "NaN",
            PredictRequest {
                rows: vec![nan_row],
                ..predict_req("wine", "")
            },
            Code::InvalidArgument,
            "row 0: feature \"ash\": value NaN is not finite",
        ),
        (
            "empty batch",
            PredictRequest {
                rows: vec![],
                ..predict_req("wine", "")
            },
            Code::InvalidArgument,
            "rows is empty: expected at least one row",
        ),
        (
            "batch over the limit",
            PredictRequest {
                rows: vec![row(&WINE_ROW); 51],
                ..predict_req("wine", "")
            },
            Code::InvalidArgument,
            "a batch of 51 rows exceeds the limit of 50 rows",
        ),
        (
            "unknown model",
            predict_req("beer", ""),
            Code::NotFound,
            "model \"beer\" not found",
        ),
        (
            "unknown alias",
            predict_req("wine@staging", ""),
            Code::NotFound,
            "alias \"staging\" of model \"wine\" not found",
        ),
        (
            "unknown version",
            predict_req("wine/9", ""),
            Code::NotFound,
            "version 9 of model \"wine\" not found",
        ),
        (
            "bad spec",
            predict_req("wine/x", ""),
            Code::InvalidArgument,
            "expected \"name\", \"name@alias\" or \"name/VERSION\"",
        ),
        (
            "path-like name",
            predict_req("../wine", ""),
            Code::InvalidArgument,
            "invalid model name",
        ),
    ];
    for (what, r, code, msg) in cases {
        let e = p.predict(r).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(
            e.message().contains(msg),
            "{what}: {:?} should contain {msg:?}",
            e.message()
        );
    }
    // V2 shapes and types.
    let mut c = v2_client(&sb).await;
    let base = ModelInferRequest {
        model_name: "wine".into(),
        inputs: vec![fp64_input(&[WINE_ROW])],
        ..Default::default()
    };
    let mut wrong_shape = base.clone();
    wrong_shape.inputs[0].shape = vec![1, 12];
    wrong_shape.inputs[0]
        .contents
        .as_mut()
        .unwrap()
        .fp64_contents
        .pop();

    let mut wrong_type = base.clone();
    wrong_type.inputs[0].datatype = "FP16".into();
    let mut short_raw = base.clone();
    short_raw.inputs[0].contents = None;
    short_raw.raw_input_contents = vec![vec![0u8; 10]];
    let mut count = base.clone();
    count.inputs[0].shape = vec![2, 13];
    let mut unknown_output = base.clone();
    unknown_output.outputs.push(Default::default());
    unknown_output.outputs[0].name = "logits".into();
    let v2_cases = vec![
        (
            "v2 shape",
            wrong_shape,
            "shape [1, 12] has 12 features; the model takes 13",
        ),
        (
            "v2 datatype",
            wrong_type,
            "datatype \"FP16\" is not supported; expected FP64, FP32, INT64, INT32 or BYTES",
        ),
        (
            "v2 raw size",
            short_raw,
            "raw contents of input \"input-0\" have 10 bytes; shape [1, 13] of FP64 needs 104",
        ),
        (
            "v2 element count",
            count,
            "13 FP64 contents for shape [2, 13], which needs 26",
        ),
        (
            "v2 output",
            unknown_output,
            "requested output \"logits\" does not exist; expected one of predict, probabilities",
        ),
        (
            "v2 no inputs",
            ModelInferRequest {
                model_name: "wine".into(),
                ..Default::default()
            },
            "inputs is empty",
        ),
    ];
    for (what, r, msg) in v2_cases {
        let e = c.model_infer(r).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().contains(msg),
            "{what}: {:?} should contain {msg:?}",
            e.message()
        );
    }
    assert!(sb.server_running());
    assert_eq!(
        p.predict(predict_req("wine", ""))
            .await
            .unwrap()
            .into_inner()
            .version,
        v1
    );
}

#[tokio::test]
async fn deprecated_versions_carry_the_notice_and_retired_ones_are_never_served() {
    let sb = Sandbox::builder().trainer().server(|_| {}).start().await;
    let v1 = train(&sb, "wine", "decision_tree", 1, true).await;
    let v2 = train(&sb, "wine", "random_forest", 2, false).await;
    let mut reg = sb.registry().await;
    reg.set_version_status(SetVersionStatusRequest {
        r#ref: req::version("wine", v1),
        status: VersionStatus::Deprecated as i32,
        reason: "superseded by the forest".into(),
        sunset_at: Some(evergreen_proto::Timestamp {
            seconds: 1_798_761_600,
            nanos: 0,
        }), // 2027-01-01
        replacement_version: v2,
    })
    .await
    .unwrap();
    let mut p = sb.predictor().await;
    wait_served(&mut p, "v1 deprecated", |r| {
        r.models.iter().any(|m| {
            m.versions
                .iter()
                .any(|v| v.version == v1 && v.status == VersionStatus::Deprecated as i32)
        })
    })
    .await;
    let resp = p.predict(predict_req("wine", "")).await.unwrap();
    let header = resp
        .metadata()
        .get("evergreen-deprecation")
        .expect("deprecation header")
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.into_inner();
    let d = body.deprecation.expect("deprecation in the response");
    assert_eq!(
        (d.notice.as_str(), d.replacement_version),
        ("superseded by the forest", v2)
    );
    assert_eq!(d.message, "wine/1 is deprecated: superseded by the forest; sunset 2027-01-01T00:00:00Z; use wine/2 instead");
    assert_eq!(header, d.message);
    let mut c = v2_client(&sb).await;
    let r = c
        .model_infer(ModelInferRequest {
            model_name: "wine".into(),
            inputs: vec![fp64_input(&[WINE_ROW])],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match &r.parameters["evergreen-deprecation"].parameter_choice {
        Some(infer_parameter::ParameterChoice::StringParam(s)) => assert_eq!(s, &d.message),
        other => panic!("{other:?}"),
    }
    // A version that is not deprecated carries nothing.
    assert!(p
        .predict(predict_req("wine/2", ""))
        .await
        .unwrap()
        .into_inner()
        .deprecation
        .is_none());

    // Move production to v2, retire v1: it is never served again.
    set_alias(&sb, "wine", v2).await;
    reg.set_version_status(SetVersionStatusRequest {
        r#ref: req::version("wine", v1),
        status: VersionStatus::Retired as i32,
        reason: "sunset".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    wait_served(&mut p, "v2 serves", |r| serves(r, "wine", v2)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let e = loop {
        match p.predict(predict_req("wine/1", "")).await {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "retired v1 still served"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("wine/1 is RETIRED and no longer served"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_is_sticky_shadow_goes_to_the_monitor_and_rollback_undoes_a_promotion() {
    let (monitor_addr, received) = monitor::start().await;
    let sb = Sandbox::builder()
        .trainer()
        .server(move |c| {
            c.monitor_url = format!("http://{monitor_addr}");
            c.log.flush_ms = 20;
        })
        .start()
        .await;
    let v1 = train(&sb, "wine", "decision_tree", 1, true).await;
    let v2 = train(&sb, "wine", "random_forest", 2, false).await;
    let v3 = train(&sb, "wine", "logistic_regression", 3, false).await;
    let mut reg = sb.registry().await;
    reg.set_traffic_policy(SetTrafficPolicyRequest {
        model: "wine".into(),
        policy: Some(TrafficPolicy {
            weights: vec![
                VersionWeight {
                    version: v1,
                    weight: 70,
                },
                VersionWeight {
                    version: v2,
                    weight: 30,
                },
            ],
            shadow_version: v3,
        }),
        reason: "canary v2 at 30%".into(),
    })
    .await
    .unwrap();
    let mut p = sb.predictor().await;
    wait_served(&mut p, "policy loaded", |r| {
        r.models
            .iter()
            .any(|m| m.versions.len() == 3 && m.policy.is_some())
    })
    .await;
    let mut by_version = std::collections::HashMap::new();
    for i in 0..400 {
        let id = format!("user-{i}");
        let a = p
            .predict(predict_req("wine", &id))
            .await
            .unwrap()
            .into_inner()
            .version;
        let b = p
            .predict(predict_req("wine", &id))
            .await
            .unwrap()
            .into_inner()
            .version;
        assert_eq!(a, b, "the same request id sticks to one arm");
        *by_version.entry(a).or_insert(0) += 1;
    }
    let share = by_version[&v2] as f64 / 400.0;
    assert!(
        (0.2..0.4).contains(&share),
        "v2 got {share} of traffic: {by_version:?}"
    );
    assert!(!by_version.contains_key(&v3), "the shadow never answers");
    // Explicit addressing bypasses the policy.
    assert_eq!(
        p.predict(predict_req("wine@production", "user-1"))
            .await
            .unwrap()
            .into_inner()
            .version,
        v1
    );

    // The log reaches the monitor: primary answers and shadow copies.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recs = received.records.lock().unwrap().clone();
        let shadows = recs.iter().filter(|r| r.shadow).count();
        if recs.iter().filter(|r| !r.shadow).count() >= 801 && shadows >= 800 {
            assert!(recs.iter().filter(|r| r.shadow).all(|r| r.version == v3));
            let r = recs.iter().find(|r| !r.shadow).unwrap();
            assert_eq!(r.model, "wine");
            assert_eq!(r.features.as_ref().unwrap().values.len(), 13);
            assert!(r.prediction.is_some() && r.time.is_some());
            assert_eq!(r.labels, ["0", "1", "2"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "monitor got {} records, {shadows} shadow",
            recs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Rollback: promote v2, then roll back to v1 (audited, compare-and-set).
    reg.set_traffic_policy(SetTrafficPolicyRequest {
        model: "wine".into(),
        policy: None,
        reason: "canary done".into(),
    })
    .await
    .unwrap();
    set_alias(&sb, "wine", v2).await;
    let a = reg
        .rollback_alias(RollbackAliasRequest {
            model: "wine".into(),
            alias: "production".into(),
            reason: "v2 regressed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.version, v1);
    wait_served(&mut p, "the rollback is applied", |r| {
        r.revision >= a.revision && serves(r, "wine", v1)
    })
    .await;
    assert_eq!(
        p.predict(predict_req("wine", ""))
            .await
            .unwrap()
            .into_inner()
            .version,
        v1
    );
    let history = reg
        .history(evergreen_proto::v1::HistoryRequest {
            model: "wine".into(),
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        history.entries[0]
            .reason
            .contains("rollback from 2 to 1: v2 regressed"),
        "{:?}",
        history.entries[0]
    );
}

#[tokio::test]
async fn an_unloadable_version_leaves_the_old_one_serving_and_is_reported() {
    let (closed, _) = {
        // A monitor address nobody listens on: the log must not matter.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (l.local_addr().unwrap(), drop(l))
    };
    let sb = Sandbox::builder()
        .trainer()
        .server(move |c| c.monitor_url = format!("http://{closed}"))
        .start()
        .await;
    let v1 = train(&sb, "wine", "decision_tree", 1, true).await;
    let mut p = sb.predictor().await;
    wait_served(&mut p, "v1 serves", |r| serves(r, "wine", v1)).await;
    // A version whose artifact is not a model.
    let mut reg = sb.registry().await;
    let v = reg
        .register_version(tokio_stream::iter(req::register(
            req::header("wine"),
            b"definitely not a model",
            1024,
        )))
        .await
        .unwrap()
        .into_inner()
        .version;
    set_alias(&sb, "wine", v).await;
    let served = wait_served(&mut p, "the failure is reported", |r| {
        r.models.iter().any(|m| !m.failures.is_empty())
    })
    .await;
    let failure = &served.models[0].failures[0];
    assert_eq!(failure.version, v);
    assert!(
        failure.error.contains("not an Evergreen model artifact"),
        "{}",
        failure.error
    );
    for i in 0..20 {
        let r = p
            .predict(predict_req("wine", &format!("r{i}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.version, v1, "the old version keeps serving");
    }
    let e = p
        .predict(predict_req(&format!("wine/{v}"), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("its artifact failed to load"),
        "{}",
        e.message()
    );
    // On-demand: an older version not otherwise served is loaded when asked for.
    let v3 = train(&sb, "wine", "random_forest", 3, false).await;
    assert_eq!(
        p.predict(predict_req(&format!("wine/{v3}"), ""))
            .await
            .unwrap()
            .into_inner()
            .version,
        v3
    );
    // The monitor is down: predictions are unaffected and drops are counted.
    let served = wait_served(&mut p, "drops counted", |r| {
        r.log.as_ref().is_some_and(|l| l.dropped > 0)
    })
    .await;
    assert!(served.log.unwrap().dropped > 0);
}

#[tokio::test]
async fn not_serving_until_the_registry_is_reachable_and_the_catalog_loaded() {
    use evergreen_runtime::tonic_health::pb::health_check_response::ServingStatus;
    use evergreen_runtime::tonic_health::pb::health_client::HealthClient;
    use evergreen_runtime::tonic_health::pb::HealthCheckRequest;
    // Pick a registry port, but start the server first: the registry is down.
    let reg_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let config = evergreen_server::ServerConfig {
        metrics_listen: String::new(),
        registry_url: format!("http://{reg_addr}"),
        ..Default::default()
    };
    tokio::spawn(evergreen_server::run(
        config,
        listener,
        std::future::pending(),
    ));
    let ch = evergreen_runtime::client::Client::default()
        .connect("server", &format!("http://{server_addr}"))
        .await
        .unwrap();
    let mut health = HealthClient::new(ch.clone());
    let status = |r: evergreen_runtime::tonic_health::pb::HealthCheckResponse| r.status;
    let check = HealthCheckRequest {
        service: String::new(),
    };
    assert_eq!(
        status(health.check(check.clone()).await.unwrap().into_inner()),
        ServingStatus::NotServing as i32
    );
    let mut p = PredictorClient::new(ch.clone());
    let e = p.predict(predict_req("wine", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("still loading"), "{}", e.message());
    assert!(!v2_ready(ch.clone()).await);

    // The registry comes up: the server lists it and reports SERVING.
    let rl = tokio::net::TcpListener::bind(reg_addr).await.unwrap();
    let rc = evergreen_registry::RegistryConfig {
        metrics_listen: String::new(),
        data_dir: dir.path().join("r"),
        ..Default::default()
    };
    tokio::spawn(evergreen_registry::run(rc, rl, std::future::pending()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(health.check(check.clone()).await.unwrap().into_inner())
        != ServingStatus::Serving as i32
    {
        assert!(Instant::now() < deadline, "never became SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(v2_ready(ch).await);
    let e = p.predict(predict_req("wine", "")).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "ready now; the model just does not exist"
    );
}

async fn v2_ready(ch: Channel) -> bool {
    GrpcInferenceServiceClient::new(ch)
        .server_ready(ServerReadyRequest {})
        .await
        .unwrap()
        .into_inner()
        .ready
}
