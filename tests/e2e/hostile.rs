//! One table of hostile and mistaken inputs across the four daemons (issue
//! #9, "bad input, table-driven"): wrong shapes and types, NaN/inf, empty
//! and huge batches, oversized messages, unknown models/versions/aliases,
//! path-like names, malformed CSV (ragged, bad UTF-8, a UTF-16 BOM, a
//! million columns), corrupt, truncated and future-format artifacts, and
//! forged or missing tokens. (Bad config values are the CLI's table,
//! `crates/cli/tests/hostile.rs`: they are exit codes, not statuses.)
//!
//! Each row asserts the exact status code and a fragment of the message
//! naming what was wrong and what was expected; after each row every daemon
//! still answers a real call (the server a real prediction) and nothing
//! stored changed: the registry's models, aliases, policies, versions,
//! audit history and revision, the trainer's jobs (a refused request may
//! leave only a FAILED job saying why), and the monitor's counted rows,
//! labels, signals and policy.

use std::path::Path;
use std::time::{Duration, Instant};

use evergreen_e2e::hostile::{train_request, wine_in_production, Table};
use evergreen_e2e::req::{num, row, WINE_ROW};
use evergreen_e2e::secure::tokens;
use evergreen_e2e::{dataset, req, Channel, Sandbox};
use evergreen_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use evergreen_proto::inference::model_infer_request::InferInputTensor;
use evergreen_proto::inference::{InferTensorContents, ModelInferRequest};
use evergreen_proto::v1::monitor_client::MonitorClient;
use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::trainer_client::TrainerClient;
use evergreen_proto::v1::{
    train_event, value, CreateModelRequest, Feedback, GetJobRequest, GetReportRequest,
    GetVersionRequest, JobState, LabeledRow, Policy, PredictRequest, Prediction, PredictionLog,
    PredictionLogBatch, RecordFeedbackRequest, RegisterVersionRequest, RetrainRequest, Row,
    SetAliasRequest, SetPolicyRequest, TrainRequest, Value, WatchRequest,
};
use evergreen_runtime::LimitsConfig;
use tonic::{Code, Status};

use crate::security::{as_role, no_token};
use crate::trainer::download;

/// Message size limit of the registry and the server in this table.
const LIMIT: usize = 1 << 20;

fn wine_with(i: usize, v: Value) -> Row {
    let mut r = row(&WINE_ROW);
    r.values[i] = v;
    r
}

fn predict(model: &str, rows: Vec<Row>) -> PredictRequest {
    PredictRequest {
        model: model.into(),
        rows,
        request_id: String::new(),
    }
}

fn fp64(shape: Vec<i64>, values: Vec<f64>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "wine".into(),
        inputs: vec![InferInputTensor {
            name: "input-0".into(),
            datatype: "FP64".into(),
            shape,
            contents: Some(InferTensorContents {
                fp64_contents: values,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One input with raw contents.
fn raw(datatype: &str, shape: Vec<i64>, bytes: Vec<u8>) -> ModelInferRequest {
    let mut r = fp64(shape, vec![]);
    r.inputs[0].datatype = datatype.into();
    r.inputs[0].contents = None;
    r.raw_input_contents = vec![bytes];
    r
}

fn policy(model: &str, f: impl FnOnce(&mut Policy)) -> SetPolicyRequest {
    let mut p = Policy {
        model: model.into(),
        ..Default::default()
    };
    f(&mut p);
    SetPolicyRequest { policy: Some(p) }
}

/// A prediction-log batch of one answered record of wine/1.
fn log_record(features: Row, probabilities: Vec<f64>) -> PredictionLogBatch {
    PredictionLogBatch {
        records: vec![PredictionLog {
            request_id: "hostile-log".into(),
            model: "wine".into(),
            version: 1,
            features: Some(features),
            prediction: Some(Prediction {
                label: "0".into(),
                probabilities,
                value: 0.0,
            }),
            labels: vec!["0".into(), "1".into(), "2".into()],
            ..Default::default()
        }],
        dropped: 0,
    }
}

/// What a row sends, and to which daemon. (A table of about 70 rows:
/// the size of the largest variant does not matter.)
#[allow(clippy::large_enum_variant)]
enum Call {
    CreateModel(CreateModelRequest),
    Register(Vec<RegisterVersionRequest>),
    GetVersion(&'static str),
    SetAlias(SetAliasRequest),
    Watch(WatchRequest),
    /// Train, following the job's stream to its end.
    Train(TrainRequest),
    /// Retrain, then the job until it finishes.
    Retrain(RetrainRequest),
    Predict(PredictRequest),
    Infer(ModelInferRequest),
    Feedback(RecordFeedbackRequest),
    Log(Vec<PredictionLogBatch>),
    SetPolicy(SetPolicyRequest),
    Report(GetReportRequest),
    /// The call with this token instead of the admin's ("" = no token).
    As(&'static str, Box<Call>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Daemon {
    Registry,
    Trainer,
    Server,
    Monitor,
}

impl Call {
    fn daemon(&self) -> Daemon {
        match self {
            Call::CreateModel(_)
            | Call::Register(_)
            | Call::GetVersion(_)
            | Call::SetAlias(_)
            | Call::Watch(_) => Daemon::Registry,
            Call::Train(_) | Call::Retrain(_) => Daemon::Trainer,
            Call::Predict(_) | Call::Infer(_) => Daemon::Server,
            Call::Feedback(_) | Call::Log(_) | Call::SetPolicy(_) | Call::Report(_) => {
                Daemon::Monitor
            }
            Call::As(_, c) => c.daemon(),
        }
    }
}

fn url(sb: &Sandbox, d: Daemon) -> String {
    match d {
        Daemon::Registry => sb.registry_url(),
        Daemon::Trainer => sb.trainer_url(),
        Daemon::Server => sb.server_url(),
        Daemon::Monitor => sb.monitor_url(),
    }
}

/// A channel holding `token` (with the CA and client certificate); "" = none.
async fn as_token(sb: &Sandbox, url: &str, token: &str) -> Channel {
    if token.is_empty() {
        no_token(sb, url).await
    } else {
        as_role(sb, url, token).await
    }
}

fn code_named(name: &str) -> Code {
    match name {
        "INVALID_ARGUMENT" => Code::InvalidArgument,
        "NOT_FOUND" => Code::NotFound,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "UNAVAILABLE" => Code::Unavailable,
        "INTERNAL" => Code::Internal,
        _ => Code::Unknown,
    }
}

/// Sends `call`; `Ok` carries a description of a successful answer.
async fn send(sb: &Sandbox, call: Call) -> Result<String, Status> {
    let daemon = call.daemon();
    let (ch, call) = match call {
        Call::As(token, c) => (as_token(sb, &url(sb, daemon), token).await, *c),
        c => (sb.connect(&url(sb, daemon)).await, c),
    };
    match call {
        Call::CreateModel(r) => {
            let m = RegistryClient::new(ch).create_model(r).await?.into_inner();
            Ok(format!("created {}", m.name))
        }
        Call::Register(msgs) => {
            let v = RegistryClient::new(ch)
                .register_version(futures::stream::iter(msgs))
                .await?
                .into_inner();
            Ok(format!("registered {}/{}", v.model, v.version))
        }
        Call::GetVersion(spec) => {
            let v = RegistryClient::new(ch)
                .get_version(GetVersionRequest {
                    r#ref: req::spec(spec),
                })
                .await?
                .into_inner();
            Ok(format!("got {}/{}", v.model, v.version))
        }
        Call::SetAlias(r) => {
            RegistryClient::new(ch).set_alias(r).await?;
            Ok("alias set".into())
        }
        Call::Watch(r) => {
            RegistryClient::new(ch).watch(r).await?;
            Ok("watching".into())
        }
        Call::Train(r) => {
            let mut s = TrainerClient::new(ch).train(r).await?.into_inner();
            while let Some(ev) = s.message().await? {
                if let Some(train_event::Kind::Done(j)) = ev.kind {
                    return Ok(format!("trained version {}", j.version));
                }
            }
            Ok("stream ended without a result".into())
        }
        Call::Retrain(r) => {
            let mut t = TrainerClient::new(ch);
            let job = t.retrain(r).await?.into_inner();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let j = t
                    .get_job(GetJobRequest { id: job.id.clone() })
                    .await?
                    .into_inner();
                match JobState::try_from(j.state) {
                    Ok(JobState::Failed) => {
                        return Err(Status::new(code_named(&j.error_code), j.error))
                    }
                    Ok(JobState::Succeeded) => return Ok(format!("retrained {}", j.version)),
                    _ => {}
                }
                assert!(
                    Instant::now() < deadline,
                    "retrain job {} never ended",
                    j.id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Call::Predict(r) => {
            let p = PredictorClient::new(ch).predict(r).await?.into_inner();
            Ok(format!("predicted with {}/{}", p.model, p.version))
        }
        Call::Infer(r) => {
            let p = GrpcInferenceServiceClient::new(ch)
                .model_infer(r)
                .await?
                .into_inner();
            Ok(format!(
                "inferred with {}/{}",
                p.model_name, p.model_version
            ))
        }
        Call::Feedback(r) => {
            let f = MonitorClient::new(ch)
                .record_feedback(r)
                .await?
                .into_inner();
            Ok(format!(
                "matched {} unknown {} expired {} invalid {}",
                f.matched, f.unknown, f.expired, f.invalid
            ))
        }
        Call::Log(batches) => {
            let a = MonitorClient::new(ch)
                .log_predictions(futures::stream::iter(batches))
                .await?
                .into_inner();
            Ok(format!("accepted {}", a.accepted))
        }
        Call::SetPolicy(r) => {
            MonitorClient::new(ch).set_policy(r).await?;
            Ok("policy set".into())
        }
        Call::Report(r) => {
            MonitorClient::new(ch).get_report(r).await?;
            Ok("report".into())
        }
        Call::As(..) => unreachable!("one level of As"),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

struct Case {
    what: &'static str,
    call: Call,
    code: Code,
    /// Must appear in the status message (or, for `Code::Ok`, the answer).
    fragment: String,
}

fn case(what: &'static str, call: Call, code: Code, fragment: impl Into<String>) -> Case {
    Case {
        what,
        call,
        code,
        fragment: fragment.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_inputs_get_the_right_code_and_message_and_change_nothing() {
    let sb = Sandbox::builder()
        .secure()
        .registry(|c| c.limits = LimitsConfig::with_max_message_bytes(LIMIT))
        .trainer()
        .monitor_with(|c| {
            c.window_rows = 1_000_000;
            c.window_seconds = 3600;
            c.max_rows_per_request = 10;
        })
        .server(|c| {
            c.max_batch_rows = 50;
            c.limits = LimitsConfig::with_max_message_bytes(LIMIT);
        })
        .start()
        .await;

    // wine/1 in production, served, seen by the monitor.
    let data = tempfile::tempdir().unwrap();
    wine_in_production(&sb).await;
    let mut table = Table::new(&sb).await;

    // "broken": a truncated artifact, one of a future format, and bytes
    // that are no model at all (the registry stores artifacts opaquely).
    let good = download(&sb, "wine/1").await;
    let mut future = good.clone();
    future[8..10].copy_from_slice(&9u16.to_le_bytes());
    let mut r = sb.registry().await;
    r.create_model(req::create("broken")).await.unwrap();
    for bytes in [
        &good[..good.len() / 2],
        &future[..],
        b"{\"weights\": [1, 2]}",
    ] {
        r.register_version(futures::stream::iter(req::register(
            req::header("broken"),
            bytes,
            1 << 16,
        )))
        .await
        .unwrap();
    }

    // Malformed CSVs.
    let dir = data.path();
    let ragged = write(dir, "ragged.csv", b"a,b,target\n1,2,0\n3,4,1\n5,1\n");
    let mut latin1 = b"a,b,target\n1,2,0\n3,4,1\n".to_vec();
    latin1.extend_from_slice(b"5,caf\xe9,0\n");
    let bad_utf8 = write(dir, "latin1.csv", &latin1);
    let mut utf16 = vec![0xFF, 0xFE];
    for u in "a,b,target\n1,2,0\n3,4,1\n".encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    let utf16 = write(dir, "utf16.csv", &utf16);
    let empty = write(dir, "empty.csv", b"\xEF\xBB\xBF\n");
    let mut wide = (0..1_000_000)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(",");
    wide.push_str(",target\n1,2,3\n");
    let wide = write(dir, "wide.csv", wide.as_bytes());

    let alias = |alias: &str, version: u64| SetAliasRequest {
        model: "wine".into(),
        alias: alias.into(),
        version,
        ..Default::default()
    };
    let header = |f: &dyn Fn(&mut evergreen_proto::v1::VersionHeader)| {
        let mut h = req::header("wine");
        f(&mut h);
        h
    };
    let cat = |s: &str| Value {
        kind: Some(value::Kind::Category(s.into())),
    };
    let nan_v2 = {
        let mut v = WINE_ROW.to_vec();
        v[3] = f64::NAN;
        fp64(vec![1, 13], v)
    };

    let cases = vec![
        // --- registry ---
        case(
            "path-like model name",
            Call::CreateModel(req::create("../x")),
            Code::InvalidArgument,
            "invalid model name \"../x\"",
        ),
        case(
            "model name with a slash",
            Call::CreateModel(req::create("a/b")),
            Code::InvalidArgument,
            "model name \"a/b\"",
        ),
        case(
            "model name too long",
            Call::CreateModel(req::create(&"x".repeat(129))),
            Code::InvalidArgument,
            "1-128",
        ),
        case(
            "duplicate model",
            Call::CreateModel(req::create("wine")),
            Code::AlreadyExists,
            "model \"wine\" already exists",
        ),
        case(
            "register to an unknown model",
            Call::Register(req::register(req::header("ghost"), b"abc", 3)),
            Code::NotFound,
            "model \"ghost\"",
        ),
        case(
            "register with a wrong checksum",
            Call::Register(req::register(
                header(&|h| h.expected_sha256 = "0".repeat(64)),
                b"abc",
                3,
            )),
            Code::InvalidArgument,
            "checksum mismatch",
        ),
        case(
            "register with a NaN metric",
            Call::Register(req::register(
                header(&|h| {
                    h.metrics.insert("auc".into(), f64::NAN);
                }),
                b"abc",
                3,
            )),
            Code::InvalidArgument,
            "metric \"auc\"",
        ),
        case(
            "register with an infinite metric",
            Call::Register(req::register(
                header(&|h| {
                    h.metrics.insert("rmse".into(), f64::INFINITY);
                }),
                b"abc",
                3,
            )),
            Code::InvalidArgument,
            "finite",
        ),
        case(
            "register a chunk over the message limit",
            Call::Register(req::register(
                req::header("wine"),
                &vec![7u8; LIMIT + 10],
                LIMIT + 10,
            )),
            Code::ResourceExhausted,
            "registry.limits.max_message_bytes",
        ),
        case(
            "register an empty artifact",
            Call::Register(req::register(req::header("wine"), b"", 1)),
            Code::InvalidArgument,
            "empty artifact",
        ),
        case(
            "unknown version",
            Call::GetVersion("wine/9"),
            Code::NotFound,
            "version 9",
        ),
        case(
            "unknown alias",
            Call::GetVersion("wine@staging"),
            Code::NotFound,
            "alias \"staging\"",
        ),
        case(
            "version that is not a number",
            Call::GetVersion("wine/x"),
            Code::InvalidArgument,
            "positive integer",
        ),
        case(
            "alias to an unknown version",
            Call::SetAlias(alias("production", 7)),
            Code::NotFound,
            "version 7",
        ),
        case(
            "path-like alias",
            Call::SetAlias(alias("../prod", 1)),
            Code::InvalidArgument,
            "alias",
        ),
        case(
            "watch from a future revision",
            Call::Watch(WatchRequest {
                from_revision: Some(1 << 40),
                model: String::new(),
            }),
            Code::OutOfRange,
            "1099511627776",
        ),
        // --- trainer ---
        case(
            "CSV: ragged row",
            Call::Train(train_request("csv", &ragged, "target")),
            Code::InvalidArgument,
            "line 4: expected 3 fields (as in the header), found 2",
        ),
        case(
            "CSV: a value that is not UTF-8",
            Call::Train(train_request("csv", &bad_utf8, "target")),
            Code::InvalidArgument,
            "line 4: column b: value is not valid UTF-8",
        ),
        case(
            "CSV: UTF-16 with a byte-order mark",
            Call::Train(train_request("csv", &utf16, "target")),
            Code::InvalidArgument,
            "header is not valid UTF-8",
        ),
        case(
            "CSV: only a UTF-8 byte-order mark",
            Call::Train(train_request("csv", &empty, "target")),
            Code::InvalidArgument,
            "the file is empty",
        ),
        case(
            "CSV: a million columns, target missing",
            Call::Train(train_request("csv", &wide, "label")),
            Code::InvalidArgument,
            "target column \"label\" is not in",
        ),
        case(
            "CSV: a million columns, a short row",
            Call::Train(train_request("csv", &wide, "target")),
            Code::InvalidArgument,
            "line 2: expected 1000001 fields (as in the header), found 3",
        ),
        case(
            "train: path-like model name",
            Call::Train(train_request("../x", &dataset("wine.csv"), "target")),
            Code::InvalidArgument,
            "invalid model name \"../x\"",
        ),
        case(
            "train: NaN test fraction",
            Call::Train(TrainRequest {
                test_fraction: f64::NAN,
                ..train_request("csv", &dataset("wine.csv"), "target")
            }),
            Code::InvalidArgument,
            "test_fraction",
        ),
        case(
            "retrain an unknown model",
            Call::Retrain(RetrainRequest {
                model: "ghost".into(),
                ..Default::default()
            }),
            Code::NotFound,
            "ghost",
        ),
        case(
            "retrain from an artifact that is no model",
            Call::Retrain(RetrainRequest {
                model: "broken".into(),
                ..Default::default()
            }),
            Code::FailedPrecondition,
            "broken/3",
        ),
        case(
            "retrain with a NaN labeled row",
            Call::Retrain(RetrainRequest {
                model: "wine".into(),
                rows: vec![LabeledRow {
                    features: Some(wine_with(0, num(f64::NAN))),
                    label: "0".into(),
                    value: 0.0,
                }],
                ..Default::default()
            }),
            Code::InvalidArgument,
            "rows[0]",
        ),
        case(
            "retrain with a labeled row of the wrong width",
            Call::Retrain(RetrainRequest {
                model: "wine".into(),
                rows: vec![LabeledRow {
                    features: Some(row(&[1.0, 2.0])),
                    label: "0".into(),
                    value: 0.0,
                }],
                ..Default::default()
            }),
            Code::InvalidArgument,
            "rows[0]: 2 feature values; wine/1 has 13 features (alcohol..proline), in that order",
        ),
        // --- server ---
        case(
            "predict: wrong number of values",
            Call::Predict(predict("wine", vec![row(&[1.0, 2.0])])),
            Code::InvalidArgument,
            "row 0: expected 13 values (alcohol, malic_acid",
        ),
        case(
            "predict: text for a number",
            Call::Predict(predict("wine", vec![wine_with(0, cat("strong"))])),
            Code::InvalidArgument,
            "row 0: feature \"alcohol\" is numeric: cannot parse \"strong\" as a number",
        ),
        case(
            "predict: NaN",
            Call::Predict(predict("wine", vec![wine_with(2, num(f64::NAN))])),
            Code::InvalidArgument,
            "row 0: feature \"ash\": value NaN is not finite",
        ),
        case(
            "predict: infinity",
            Call::Predict(predict("wine", vec![wine_with(1, num(f64::NEG_INFINITY))])),
            Code::InvalidArgument,
            "row 0: feature \"malic_acid\": value -inf is not finite",
        ),
        case(
            "predict: empty batch",
            Call::Predict(predict("wine", vec![])),
            Code::InvalidArgument,
            "rows is empty: expected at least one row",
        ),
        case(
            "predict: batch over the limit",
            Call::Predict(predict("wine", vec![row(&WINE_ROW); 51])),
            Code::InvalidArgument,
            "a batch of 51 rows exceeds the limit of 50 rows",
        ),
        case(
            "predict: message over the limit",
            Call::Predict(predict("wine", vec![wine_with(0, cat(&"x".repeat(LIMIT)))])),
            Code::ResourceExhausted,
            "server.limits.max_message_bytes",
        ),
        case(
            "predict: unknown model",
            Call::Predict(predict("beer", vec![row(&WINE_ROW)])),
            Code::NotFound,
            "model \"beer\" not found",
        ),
        case(
            "predict: unknown alias",
            Call::Predict(predict("wine@staging", vec![row(&WINE_ROW)])),
            Code::NotFound,
            "alias \"staging\" of model \"wine\" not found",
        ),
        case(
            "predict: path-like model",
            Call::Predict(predict("../wine", vec![row(&WINE_ROW)])),
            Code::InvalidArgument,
            "invalid model name",
        ),
        case(
            "predict: truncated artifact",
            Call::Predict(predict("broken/1", vec![row(&WINE_ROW)])),
            Code::FailedPrecondition,
            "truncated",
        ),
        case(
            "predict: artifact of a future format",
            Call::Predict(predict("broken/2", vec![row(&WINE_ROW)])),
            Code::FailedPrecondition,
            "format version 9 is newer",
        ),
        case(
            "predict: artifact that is no model",
            Call::Predict(predict("broken/3", vec![row(&WINE_ROW)])),
            Code::FailedPrecondition,
            "broken/3",
        ),
        case(
            "v2: unknown model",
            Call::Infer(ModelInferRequest {
                model_name: "beer".into(),
                ..fp64(vec![1, 13], WINE_ROW.to_vec())
            }),
            Code::NotFound,
            "model \"beer\" not found",
        ),
        case(
            "v2: artifact of a future format",
            Call::Infer(ModelInferRequest {
                model_name: "broken".into(),
                model_version: "2".into(),
                ..fp64(vec![1, 13], WINE_ROW.to_vec())
            }),
            Code::FailedPrecondition,
            "format version 9 is newer",
        ),
        case(
            "v2: wrong shape",
            Call::Infer(fp64(vec![1, 12], WINE_ROW[..12].to_vec())),
            Code::InvalidArgument,
            "shape [1, 12] has 12 features; the model takes 13",
        ),
        case(
            "v2: unsupported datatype",
            Call::Infer({
                let mut r = fp64(vec![1, 13], WINE_ROW.to_vec());
                r.inputs[0].datatype = "FP16".into();
                r
            }),
            Code::InvalidArgument,
            "datatype \"FP16\" is not supported; expected FP64, FP32, INT64, INT32 or BYTES",
        ),
        case(
            "v2: NaN",
            Call::Infer(nan_v2),
            Code::InvalidArgument,
            "not finite",
        ),
        case(
            "v2: negative dimension",
            Call::Infer(fp64(vec![-1, 13], WINE_ROW.to_vec())),
            Code::InvalidArgument,
            "negative dimension",
        ),
        case(
            "v2: raw FP64 with a huge shape",
            Call::Infer(raw("FP64", vec![1 << 62], vec![0; 8])),
            Code::InvalidArgument,
            "input \"input-0\"",
        ),
        case(
            "v2: raw BYTES with a huge shape",
            Call::Infer(raw("BYTES", vec![1 << 50], vec![1, 0, 0, 0, b'x'])),
            Code::InvalidArgument,
            "input \"input-0\"",
        ),
        case(
            "v2: raw BYTES cut inside an element",
            Call::Infer(raw("BYTES", vec![1], vec![200, 0, 0, 0, b'x'])),
            Code::InvalidArgument,
            "end inside an element",
        ),
        // --- monitor ---
        case(
            "feedback: empty",
            Call::Feedback(RecordFeedbackRequest { feedback: vec![] }),
            Code::InvalidArgument,
            "feedback is empty",
        ),
        case(
            "feedback: no request id",
            Call::Feedback(RecordFeedbackRequest {
                feedback: vec![Feedback::default()],
            }),
            Code::InvalidArgument,
            "feedback[0].request_id",
        ),
        case(
            "feedback: a batch over the row limit",
            Call::Feedback(RecordFeedbackRequest {
                feedback: vec![
                    Feedback {
                        request_id: "r".into(),
                        label: "0".into(),
                        ..Default::default()
                    };
                    11
                ],
            }),
            Code::InvalidArgument,
            "a RecordFeedback call of 11 labels exceeds the limit of 10 (monitor.max_rows_per_request)",
        ),
        case(
            "feedback: an id never logged is counted, not stored",
            Call::Feedback(RecordFeedbackRequest {
                feedback: vec![Feedback {
                    request_id: "never-logged".into(),
                    label: "0".into(),
                    ..Default::default()
                }],
            }),
            Code::Ok,
            "matched 0 unknown 1",
        ),
        case(
            "policy: NaN drift share",
            Call::SetPolicy(policy("wine", |p| p.drift_share = f64::NAN)),
            Code::InvalidArgument,
            "policy.drift_share",
        ),
        case(
            "policy: drift share above 1",
            Call::SetPolicy(policy("wine", |p| p.drift_share = 2.0)),
            Code::InvalidArgument,
            "policy.drift_share = 2",
        ),
        case(
            "policy: path-like model",
            Call::SetPolicy(policy("../x", |_| {})),
            Code::InvalidArgument,
            "invalid model name",
        ),
        case(
            "report: unknown model",
            Call::Report(GetReportRequest {
                model: "beer".into(),
                version: 1,
                window: 0,
            }),
            Code::NotFound,
            "beer",
        ),
        case(
            "report: unknown window kind",
            Call::Report(GetReportRequest {
                model: "wine".into(),
                version: 1,
                window: 42,
            }),
            Code::InvalidArgument,
            "WINDOW_KIND_LONG",
        ),
        case(
            "log: a record of the wrong width is not counted",
            Call::Log(vec![log_record(row(&[1.0, 2.0]), vec![1.0, 0.0, 0.0])]),
            Code::Ok,
            "accepted 0",
        ),
        case(
            "log: a NaN feature is not counted",
            Call::Log(vec![log_record(
                wine_with(0, num(f64::NAN)),
                vec![1.0, 0.0, 0.0],
            )]),
            Code::Ok,
            "accepted 0",
        ),
        case(
            "log: probabilities of the wrong width are not counted",
            Call::Log(vec![log_record(row(&WINE_ROW), vec![0.5, 0.5])]),
            Code::Ok,
            "accepted 0",
        ),
        case(
            "log: a record over the row limit",
            Call::Log(vec![PredictionLogBatch {
                records: vec![
                    log_record(row(&WINE_ROW), vec![1.0, 0.0, 0.0]).records[0].clone();
                    11
                ],
                dropped: 0,
            }]),
            Code::InvalidArgument,
            "monitor.max_rows_per_request",
        ),
        // --- tokens ---
        case(
            "forged token",
            Call::As(
                "admin-token-e5a4",
                Box::new(Call::SetAlias(alias("production", 1))),
            ),
            Code::Unauthenticated,
            "",
        ),
        case(
            "expired token",
            Call::As(
                tokens::EXPIRED,
                Box::new(Call::Predict(predict("wine", vec![row(&WINE_ROW)]))),
            ),
            Code::Unauthenticated,
            "bearer token expired at 2020-01-01T00:00:00Z",
        ),
        case(
            "no token",
            Call::As(
                "",
                Box::new(Call::Predict(predict("wine", vec![row(&WINE_ROW)]))),
            ),
            Code::Unauthenticated,
            "",
        ),
        case(
            "reader token on a write",
            Call::As(
                tokens::READER,
                Box::new(Call::SetAlias(alias("production", 1))),
            ),
            Code::PermissionDenied,
            "",
        ),
        case(
            "reader token on training",
            Call::As(
                tokens::READER,
                Box::new(Call::Train(train_request("wine", &dataset("wine.csv"), "target"))),
            ),
            Code::PermissionDenied,
            "",
        ),
        case(
            "a daemon's token outside its role",
            Call::As(
                tokens::SERVER_DAEMON,
                Box::new(Call::SetPolicy(policy("wine", |p| p.drift_share = 0.9))),
            ),
            Code::PermissionDenied,
            "",
        ),
    ];
    assert!(cases.len() >= 30);
    let sb = &sb;
    for c in cases {
        let what = c.what;
        table
            .row(what, async move {
                let daemon = c.call.daemon();
                let started = Instant::now();
                let outcome = tokio::time::timeout(Duration::from_secs(60), send(sb, c.call))
                    .await
                    .unwrap_or_else(|_| Err(Status::deadline_exceeded("the call took over 60 s")));
                let (code, message) = match &outcome {
                    Ok(answer) => (Code::Ok, answer.clone()),
                    Err(s) => (s.code(), s.message().to_string()),
                };
                eprintln!(
                    "{:?} | {} | {:?} | {} | {:?}",
                    daemon,
                    c.what,
                    code,
                    message.chars().take(200).collect::<String>(),
                    started.elapsed()
                );
                let mut failures = Vec::new();
                if code != c.code || !message.contains(&c.fragment) {
                    failures.push(format!(
                        "{}: expected {:?} containing {:?}, got {code:?} {:?}",
                        c.what,
                        c.code,
                        c.fragment,
                        message.chars().take(300).collect::<String>()
                    ));
                }
                if message.len() > 2000 {
                    failures.push(format!("{}: a {}-byte message", c.what, message.len()));
                }
                failures
            })
            .await;
    }
    table.finish();
}
