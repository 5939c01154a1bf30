//! The Open Inference Protocol V2 adapter (`inference.GRPCInferenceService`,
//! as KServe and Triton speak it), over the same routing and scoring as
//! `Predictor`.
//!
//! Inputs: one tensor `[batch, features]` (or `[features]` for one row), or
//! one tensor per feature named after it (`[batch]` / `[batch, 1]`).
//! Datatypes FP64, FP32, INT64, INT32 and BYTES (text categories), given as
//! typed contents or `raw_input_contents`. Outputs always in
//! `raw_output_contents`: `predict` (`[batch]`: INT64 class labels when every
//! label is an integer, else BYTES; FP64 for regression) and, for
//! classifiers, `probabilities` (FP64 `[batch, classes]`). Model version ""
//! means the production alias (traffic policy applies); a number is a
//! version; anything else an alias.

use std::sync::Arc;
use std::time::Instant;

use evergreen_model::schema::Value;
use evergreen_proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use evergreen_proto::inference::{
    infer_parameter, model_infer_request::InferInputTensor,
    model_infer_response::InferOutputTensor, model_metadata_response::TensorMetadata,
    InferParameter, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest,
    ServerReadyResponse,
};
use tonic::{Request, Response, Status};

use crate::catalog::{Route, Selector};
use crate::error::ServeError;
use crate::grpc::{
    mark_deprecated, request_id_of, tag, tag_response, to_status, DEPRECATION_HEADER,
};
use crate::serve::{Output, Server};

const SUPPORTED: &str = "FP64, FP32, INT64, INT32 or BYTES";

/// A decoded input tensor, flattened row-major.
enum Tensor {
    Num(Vec<f64>),
    Text(Vec<String>),
}

impl Tensor {
    fn len(&self) -> usize {
        match self {
            Tensor::Num(v) => v.len(),
            Tensor::Text(v) => v.len(),
        }
    }

    fn value(&self, i: usize) -> Value<'_> {
        match self {
            Tensor::Num(v) => Value::Number(v[i]),
            Tensor::Text(v) => Value::Text(&v[i]),
        }
    }
}

fn bad(msg: String) -> ServeError {
    ServeError::InvalidArgument(msg)
}

fn element_count(t: &InferInputTensor) -> Result<usize, ServeError> {
    let mut n: usize = 1;
    for d in &t.shape {
        if *d < 0 {
            return Err(bad(format!(
                "input {:?}: shape {:?} has a negative dimension; requests need concrete sizes",
                t.name, t.shape
            )));
        }
        n = n.checked_mul(*d as usize).ok_or_else(|| {
            bad(format!(
                "input {:?}: shape {:?} is too large",
                t.name, t.shape
            ))
        })?;
    }
    Ok(n)
}

fn decode_raw(t: &InferInputTensor, raw: &[u8], n: usize) -> Result<Tensor, ServeError> {
    let width = match t.datatype.as_str() {
        "FP64" | "INT64" => 8,
        "FP32" | "INT32" => 4,
        "BYTES" => 0,
        other => {
            return Err(bad(format!(
                "input {:?}: datatype {other:?} is not supported; expected {SUPPORTED}",
                t.name
            )))
        }
    };
    // Checked: a crafted shape must not overflow (a panic) when multiplied.
    let needed = n.checked_mul(width);
    if width > 0 && needed != Some(raw.len()) {
        return Err(bad(format!(
            "raw contents of input {:?} have {} bytes; shape {:?} of {} needs {}",
            t.name,
            raw.len(),
            t.shape,
            t.datatype,
            needed.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string())
        )));
    }
    let chunks = raw.chunks_exact(width.max(1));
    Ok(match t.datatype.as_str() {
        "FP64" => Tensor::Num(
            chunks
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        "INT64" => Tensor::Num(
            chunks
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
                .collect(),
        ),
        "FP32" => Tensor::Num(
            chunks
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                .collect(),
        ),
        "INT32" => Tensor::Num(
            chunks
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                .collect(),
        ),
        _ => {
            // BYTES: each element is a 4-byte little-endian length, then the bytes.
            // Each element takes at least its 4-byte prefix: the shape alone
            // must not size the allocation (a huge one aborts the process).
            let mut out = Vec::with_capacity(n.min(raw.len() / 4));
            let mut at = 0;
            while at < raw.len() {
                let len = raw
                    .get(at..at + 4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                    .ok_or_else(|| {
                        bad(format!(
                            "raw BYTES contents of input {:?} end inside a length prefix",
                            t.name
                        ))
                    })?;
                let s = raw.get(at + 4..at + 4 + len).ok_or_else(|| {
                    bad(format!(
                        "raw BYTES contents of input {:?} end inside an element",
                        t.name
                    ))
                })?;
                out.push(
                    String::from_utf8(s.to_vec()).map_err(|_| {
                        bad(format!("input {:?}: BYTES element is not UTF-8", t.name))
                    })?,
                );
                at += 4 + len;
            }
            if out.len() != n {
                return Err(bad(format!(
                    "raw BYTES contents of input {:?} hold {} elements; shape {:?} needs {n}",
                    t.name,
                    out.len(),
                    t.shape
                )));
            }
            Tensor::Text(out)
        }
    })
}

fn decode_typed(t: &InferInputTensor, n: usize) -> Result<Tensor, ServeError> {
    let c = t.contents.clone().unwrap_or_default();
    let tensor = match t.datatype.as_str() {
        "FP64" => Tensor::Num(c.fp64_contents),
        "FP32" => Tensor::Num(c.fp32_contents.into_iter().map(f64::from).collect()),
        "INT64" => Tensor::Num(c.int64_contents.into_iter().map(|x| x as f64).collect()),
        "INT32" => Tensor::Num(c.int_contents.into_iter().map(f64::from).collect()),
        "BYTES" => Tensor::Text(
            c.bytes_contents
                .into_iter()
                .map(|b| {
                    String::from_utf8(b)
                        .map_err(|_| bad(format!("input {:?}: BYTES element is not UTF-8", t.name)))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => {
            return Err(bad(format!(
                "input {:?}: datatype {other:?} is not supported; expected {SUPPORTED}",
                t.name
            )))
        }
    };
    if tensor.len() != n {
        return Err(bad(format!(
            "input {:?}: {} {} contents for shape {:?}, which needs {n}",
            t.name,
            tensor.len(),
            t.datatype,
            t.shape
        )));
    }
    Ok(tensor)
}

fn decode_inputs(r: &ModelInferRequest) -> Result<Vec<Tensor>, ServeError> {
    if r.inputs.is_empty() {
        return Err(bad(
            "inputs is empty: expected one [batch, features] tensor or one tensor per feature"
                .into(),
        ));
    }
    if !r.raw_input_contents.is_empty() && r.raw_input_contents.len() != r.inputs.len() {
        return Err(bad(format!(
            "{} raw_input_contents for {} inputs; expected one per input, in order",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    r.inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = element_count(t)?;
            match r.raw_input_contents.get(i) {
                Some(raw) => decode_raw(t, raw, n),
                None => decode_typed(t, n),
            }
        })
        .collect()
}

/// The request's rows, positional in the model's feature order.
fn rows<'a>(
    route: &Route,
    r: &ModelInferRequest,
    tensors: &'a [Tensor],
    max_rows: usize,
) -> Result<Vec<Vec<Value<'a>>>, ServeError> {
    let schema = &route.primary.artifact.schema;
    let nf = schema.features.len();
    let single = r.inputs.len() == 1 && schema.feature_index(&r.inputs[0].name).is_none();
    let rows: Vec<Vec<Value>> = if single {
        let t = &r.inputs[0];
        let (b, w) = match t.shape.as_slice() {
            [b, w] => (*b as usize, *w as usize),
            [w] => (1, *w as usize),
            s => {
                return Err(bad(format!(
                    "input {:?}: shape {s:?}; expected [batch, {nf}]",
                    t.name
                )))
            }
        };
        if w != nf {
            return Err(bad(format!(
                "input {:?}: shape {:?} has {w} features; the model takes {nf} ({}), so expected [batch, {nf}]",
                t.name,
                t.shape,
                schema.feature_names()
            )));
        }
        (0..b)
            .map(|i| (0..nf).map(|j| tensors[0].value(i * nf + j)).collect())
            .collect()
    } else {
        // One tensor per feature, by name.
        let mut batch = None;
        let mut columns: Vec<Option<&Tensor>> = vec![None; nf];
        for (t, tensor) in r.inputs.iter().zip(tensors) {
            let Some(k) = schema.feature_index(&t.name) else {
                return Err(bad(format!(
                    "input {:?} is not a feature; expected one [batch, {nf}] tensor or inputs named after features ({})",
                    t.name,
                    schema.feature_names()
                )));
            };
            let b = match t.shape.as_slice() {
                [b] | [b, 1] => *b as usize,
                s => {
                    return Err(bad(format!(
                        "input {:?}: shape {s:?}; a per-feature input is [batch] or [batch, 1]",
                        t.name
                    )))
                }
            };
            if *batch.get_or_insert(b) != b {
                return Err(bad(format!(
                    "input {:?}: batch size {b} differs from the other inputs' {}",
                    t.name,
                    batch.unwrap_or(0)
                )));
            }
            columns[k] = Some(tensor);
        }
        let b = batch.unwrap_or(0);
        (0..b)
            .map(|i| {
                columns
                    .iter()
                    .map(|c| c.map_or(Value::Missing, |t| t.value(i)))
                    .collect()
            })
            .collect()
    };
    if rows.is_empty() {
        return Err(bad("the batch is empty: expected at least one row".into()));
    }
    if rows.len() > max_rows {
        return Err(bad(format!(
            "a batch of {} rows exceeds the limit of {max_rows} rows (server.max_batch_rows)",
            rows.len()
        )));
    }
    Ok(rows)
}

fn selector(version: &str) -> Selector {
    if version.is_empty() {
        Selector::Default
    } else if let Ok(v) = version.parse::<u64>() {
        Selector::Version(v)
    } else {
        Selector::Alias(version.to_string())
    }
}

fn integer_labels(labels: &[String]) -> Option<Vec<i64>> {
    labels.iter().map(|l| l.parse::<i64>().ok()).collect()
}

fn output_meta(route: &Route) -> Vec<TensorMetadata> {
    let schema = &route.primary.artifact.schema;
    match schema.labels() {
        Some(labels) => vec![
            TensorMetadata {
                name: "predict".into(),
                datatype: if integer_labels(labels).is_some() {
                    "INT64"
                } else {
                    "BYTES"
                }
                .into(),
                shape: vec![-1],
            },
            TensorMetadata {
                name: "probabilities".into(),
                datatype: "FP64".into(),
                shape: vec![-1, labels.len() as i64],
            },
        ],
        None => vec![TensorMetadata {
            name: "predict".into(),
            datatype: "FP64".into(),
            shape: vec![-1],
        }],
    }
}

pub struct V2Grpc {
    server: Arc<Server>,
}

impl V2Grpc {
    pub fn server(server: Arc<Server>) -> GrpcInferenceServiceServer<Self> {
        let limit = server.config.limits.max_message_bytes;
        GrpcInferenceServiceServer::new(V2Grpc { server }).max_decoding_message_size(limit)
    }

    fn peek(&self, name: &str, version: &str) -> Option<Route> {
        let catalog = self.server.catalog.load();
        let entry = catalog.models.get(name)?;
        entry
            .route(&selector(version), "", &self.server.config.default_alias)
            .ok()
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for V2Grpc {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.server.catalog.load().ready,
        }))
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(ModelReadyResponse {
            ready: self.peek(&r.name, &r.version).is_some(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "evergreen".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let route = self
            .server
            .route_parsed(&r.name, &selector(&r.version), "")
            .await
            .map_err(to_status)?;
        let schema = &route.primary.artifact.schema;
        let numeric = schema
            .features
            .iter()
            .all(|f| matches!(f.kind, evergreen_model::FeatureKind::Numeric));
        let mut versions: Vec<String> = self
            .server
            .catalog
            .load()
            .models
            .get(&r.name)
            .map(|m| {
                let mut v: Vec<u64> = m.loaded.keys().copied().collect();
                v.sort();
                v.into_iter().map(|v| v.to_string()).collect()
            })
            .unwrap_or_default();
        versions.dedup();
        Ok(Response::new(ModelMetadataResponse {
            name: r.name,
            versions,
            platform: "evergreen".into(),
            inputs: vec![TensorMetadata {
                name: "input-0".into(),
                datatype: if numeric { "FP64" } else { "BYTES" }.into(),
                shape: vec![-1, schema.features.len() as i64],
            }],
            outputs: output_meta(&route),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let start = Instant::now();
        let s = &self.server;
        let request_id = request_id_of(s, req.metadata(), &req.get_ref().id);
        let r = req.into_inner();
        let route = s
            .route_parsed(&r.model_name, &selector(&r.model_version), &request_id)
            .await
            .map_err(|e| tag(to_status(e), &request_id))?;
        let fail = |e: ServeError| {
            s.failed(&route, &request_id, &e, start.elapsed());
            tag(to_status(e), &request_id)
        };
        let tensors = decode_inputs(&r).map_err(fail)?;
        let rows = rows(&route, &r, &tensors, s.config.max_batch_rows).map_err(fail)?;
        let outputs = s.score(&route, &rows).map_err(fail)?;
        s.after(&route, &request_id, &rows, &outputs, start.elapsed());

        let b = outputs.len() as i64;
        let schema = &route.primary.artifact.schema;
        let mut tensors_out: Vec<(InferOutputTensor, Vec<u8>)> = Vec::new();
        match schema.labels() {
            Some(labels) => {
                let classes: Vec<usize> = outputs
                    .iter()
                    .map(|o| match o {
                        Output::Class { class, .. } => *class,
                        Output::Value(_) => 0,
                    })
                    .collect();
                let (datatype, raw) = match integer_labels(labels) {
                    Some(ints) => (
                        "INT64",
                        classes
                            .iter()
                            .flat_map(|c| ints[*c].to_le_bytes())
                            .collect::<Vec<u8>>(),
                    ),
                    None => {
                        let mut raw = Vec::new();
                        for c in &classes {
                            let l = labels[*c].as_bytes();
                            raw.extend_from_slice(&(l.len() as u32).to_le_bytes());
                            raw.extend_from_slice(l);
                        }
                        ("BYTES", raw)
                    }
                };
                tensors_out.push((
                    InferOutputTensor {
                        name: "predict".into(),
                        datatype: datatype.into(),
                        shape: vec![b],
                        ..Default::default()
                    },
                    raw,
                ));
                let probs: Vec<u8> = outputs
                    .iter()
                    .flat_map(|o| match o {
                        Output::Class { probabilities, .. } => probabilities.clone(),
                        Output::Value(_) => Vec::new(),
                    })
                    .flat_map(f64::to_le_bytes)
                    .collect();
                tensors_out.push((
                    InferOutputTensor {
                        name: "probabilities".into(),
                        datatype: "FP64".into(),
                        shape: vec![b, labels.len() as i64],
                        ..Default::default()
                    },
                    probs,
                ));
            }
            None => {
                let raw = outputs
                    .iter()
                    .flat_map(|o| match o {
                        Output::Value(v) => v.to_le_bytes(),
                        Output::Class { .. } => [0; 8],
                    })
                    .collect();
                tensors_out.push((
                    InferOutputTensor {
                        name: "predict".into(),
                        datatype: "FP64".into(),
                        shape: vec![b],
                        ..Default::default()
                    },
                    raw,
                ));
            }
        }
        if !r.outputs.is_empty() {
            let mut chosen = Vec::new();
            for want in &r.outputs {
                let Some(i) = tensors_out.iter().position(|(t, _)| t.name == want.name) else {
                    let names: Vec<&str> =
                        tensors_out.iter().map(|(t, _)| t.name.as_str()).collect();
                    return Err(to_status(bad(format!(
                        "requested output {:?} does not exist; expected one of {}",
                        want.name,
                        names.join(", ")
                    ))));
                };
                chosen.push(tensors_out[i].clone());
            }
            tensors_out = chosen;
        }
        let mut parameters = std::collections::HashMap::new();
        if let Some(d) = &route.deprecation {
            parameters.insert(
                DEPRECATION_HEADER.to_string(),
                InferParameter {
                    parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(
                        d.message.clone(),
                    )),
                },
            );
        }
        let (outputs, raw_output_contents) = tensors_out.into_iter().unzip();
        let mut resp = Response::new(ModelInferResponse {
            model_name: route.primary.model.clone(),
            model_version: route.primary.version.to_string(),
            id: request_id.clone(),
            parameters,
            outputs,
            raw_output_contents,
        });
        mark_deprecated(&mut resp, &route.deprecation);
        tag_response(&mut resp, &request_id);
        Ok(resp)
    }
}

/// Fuzzing V2 tensor decoding (issue #9): whatever the inputs, shapes,
/// datatypes, typed and raw contents, `decode_inputs` → `rows` → scoring
/// returns rows and predictions or an INVALID_ARGUMENT — never a panic, an
/// overflow or an allocation sized by a shape. `cargo test` runs a bounded
/// number of cases (seconds); a long run raises it:
///
///     EVERGREEN_FUZZ_CASES=1000000 cargo test --release -p evergreen-server fuzz_
///
/// (`just fuzz` runs every fuzz target so.)
#[cfg(test)]
mod fuzz {
    use std::sync::atomic::AtomicU64;

    use evergreen_model::artifact::{Estimator, Model, TrainingInfo};
    use evergreen_model::pipeline::{Column, Impute, Pipeline};
    use evergreen_model::profile::{FeatureProfile, PredictionProfile, Profile};
    use evergreen_model::schema::{Schema, Target, Task};
    use evergreen_model::tree::{fit_forest, Control, ForestParams};
    use evergreen_proto::inference::InferTensorContents;
    use proptest::prelude::*;

    use super::*;
    use crate::catalog::Loaded;

    fn fuzz_config(default: u32) -> ProptestConfig {
        let cases = std::env::var("EVERGREEN_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default);
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// A two-feature classifier: numeric "x", categorical "colour".
    fn route() -> Route {
        let names = vec!["x".to_string(), "colour".to_string()];
        let n = 40;
        let cols = vec![
            Column::Numeric((0..n).map(|i| i as f64).collect()),
            Column::Categorical {
                codes: (0..n).map(|i| (i % 3) as u32).collect(),
                vocab: vec!["red".into(), "green".into(), "blue".into()],
            },
        ];
        let y: Vec<usize> = (0..n).map(|i| usize::from(i >= 20)).collect();
        let rows: Vec<usize> = (0..n).collect();
        let (pipeline, features) = Pipeline::fit(&names, &cols, &rows, Impute::Mean, false);
        let mut x = ndarray::Array2::zeros((n, pipeline.width));
        for i in 0..n {
            let row = [cols[0].value(i), cols[1].value(i)];
            pipeline
                .transform_row(&features, &row, x.row_mut(i).into_slice().unwrap())
                .unwrap();
        }
        let params = ForestParams {
            n_trees: 2,
            ..ForestParams::default()
        };
        let forest = fit_forest(x.view(), &y, 2, &params, Control::default()).unwrap();
        let artifact = Model {
            schema: Schema {
                features,
                target: Target {
                    name: "y".into(),
                    task: Task::Classification {
                        labels: vec!["no".into(), "yes".into()],
                    },
                },
            },
            pipeline,
            estimator: Estimator::Forest(forest),
            profile: Profile {
                rows: n as u64,
                features: cols
                    .iter()
                    .map(|c| FeatureProfile::of_column(c, &rows, 10))
                    .collect(),
                predictions: PredictionProfile::classification(&[0.2, 0.8], 2),
            },
            training: TrainingInfo::default(),
        };
        Route {
            primary: Arc::new(Loaded {
                model: "m".into(),
                version: 1,
                artifact,
                sha256: String::new(),
                loaded_at: std::time::SystemTime::now(),
                predictions: AtomicU64::new(0),
            }),
            shadow: None,
            deprecation: None,
        }
    }

    fn dims() -> impl Strategy<Value = Vec<i64>> {
        proptest::collection::vec(
            prop_oneof![
                6 => 0i64..4,
                1 => -3i64..0,
                1 => Just(i64::MAX),
                1 => Just(1i64 << 62),
                1 => Just(1i64 << 40),
                1 => any::<i64>(),
            ],
            0..4,
        )
    }

    fn contents() -> impl Strategy<Value = Option<InferTensorContents>> {
        proptest::option::of(
            (
                proptest::collection::vec(any::<f64>(), 0..8),
                proptest::collection::vec(any::<f32>(), 0..8),
                proptest::collection::vec(any::<i64>(), 0..8),
                proptest::collection::vec(any::<i32>(), 0..8),
                proptest::collection::vec(
                    prop_oneof![
                        Just(b"red".to_vec()),
                        Just(b"1.5".to_vec()),
                        Just(b"\xff".to_vec()),
                        proptest::collection::vec(any::<u8>(), 0..4),
                    ],
                    0..8,
                ),
            )
                .prop_map(|(fp64, fp32, int64, int32, bytes)| InferTensorContents {
                    fp64_contents: fp64,
                    fp32_contents: fp32,
                    int64_contents: int64,
                    int_contents: int32,
                    bytes_contents: bytes,
                    ..Default::default()
                }),
        )
    }

    /// Raw contents: arbitrary bytes, or BYTES elements (length-prefixed,
    /// some lengths lying).
    fn raw() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(
                (
                    prop_oneof![Just(b"red".to_vec()), Just(b"2".to_vec()), Just(vec![0xC3])],
                    prop_oneof![4 => Just(None), 1 => any::<u32>().prop_map(Some)]
                ),
                0..6
            )
            .prop_map(|els| {
                let mut out = Vec::new();
                for (e, lie) in els {
                    out.extend_from_slice(&lie.unwrap_or(e.len() as u32).to_le_bytes());
                    out.extend_from_slice(&e);
                }
                out
            }),
        ]
    }

    fn input() -> impl Strategy<Value = InferInputTensor> {
        (
            prop::sample::select(vec!["input-0", "x", "colour", "nope"]),
            prop::sample::select(vec!["FP64", "FP32", "INT64", "INT32", "BYTES", "FP16", ""]),
            dims(),
            contents(),
        )
            .prop_map(|(name, datatype, shape, contents)| InferInputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape,
                contents,
                ..Default::default()
            })
    }

    fn arbitrary_request() -> impl Strategy<Value = ModelInferRequest> {
        (
            proptest::collection::vec(input(), 0..4),
            prop_oneof![
                2 => Just(vec![]),
                1 => proptest::collection::vec(raw(), 0..4),
            ],
        )
            .prop_map(|(inputs, raw_input_contents)| ModelInferRequest {
                model_name: "m".into(),
                inputs,
                raw_input_contents,
                ..Default::default()
            })
    }

    /// A request whose contents fit its shape (so decoding gets through to
    /// rows and scoring): one [batch, 2] tensor or one tensor per feature,
    /// typed or raw, with any values (NaN, text for numbers, unseen
    /// categories).
    fn coherent_request() -> impl Strategy<Value = ModelInferRequest> {
        (
            0i64..60,
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec!["FP64", "FP32", "INT64", "INT32", "BYTES"]),
            proptest::collection::vec(
                prop_oneof![
                    any::<f64>(),
                    Just(f64::NAN),
                    Just(f64::INFINITY),
                    -3.0f64..3.0
                ],
                240,
            ),
            proptest::collection::vec(
                prop::sample::select(vec!["red", "blue", "purple", "2.5", ""]),
                240,
            ),
        )
            .prop_map(|(b, per_feature, as_raw, datatype, nums, texts)| {
                let tensors: Vec<(&str, Vec<i64>, usize)> = if per_feature {
                    vec![
                        ("x", vec![b], b as usize),
                        ("colour", vec![b, 1], b as usize),
                    ]
                } else {
                    vec![("input-0", vec![b, 2], 2 * b as usize)]
                };
                let mut inputs = Vec::new();
                let mut raws = Vec::new();
                for (name, shape, n) in tensors {
                    let mut c = InferTensorContents::default();
                    let mut raw = Vec::new();
                    for i in 0..n {
                        let x = nums[i];
                        match datatype {
                            "FP64" => {
                                c.fp64_contents.push(x);
                                raw.extend_from_slice(&x.to_le_bytes());
                            }
                            "FP32" => {
                                c.fp32_contents.push(x as f32);
                                raw.extend_from_slice(&(x as f32).to_le_bytes());
                            }
                            "INT64" => {
                                c.int64_contents.push(x as i64);
                                raw.extend_from_slice(&(x as i64).to_le_bytes());
                            }
                            "INT32" => {
                                c.int_contents.push(x as i32);
                                raw.extend_from_slice(&(x as i32).to_le_bytes());
                            }
                            _ => {
                                c.bytes_contents.push(texts[i].as_bytes().to_vec());
                                raw.extend_from_slice(&(texts[i].len() as u32).to_le_bytes());
                                raw.extend_from_slice(texts[i].as_bytes());
                            }
                        }
                    }
                    inputs.push(InferInputTensor {
                        name: name.into(),
                        datatype: datatype.into(),
                        shape,
                        contents: (!as_raw).then_some(c),
                        ..Default::default()
                    });
                    raws.push(raw);
                }
                ModelInferRequest {
                    model_name: "m".into(),
                    inputs,
                    raw_input_contents: if as_raw { raws } else { vec![] },
                    ..Default::default()
                }
            })
    }

    fn request() -> impl Strategy<Value = ModelInferRequest> {
        prop_oneof![arbitrary_request(), coherent_request()]
    }

    /// Decoding, rows and scoring; every refusal is INVALID_ARGUMENT.
    fn check(route: &Route, r: &ModelInferRequest) -> Result<(), TestCaseError> {
        let outcome = decode_inputs(r).and_then(|tensors| {
            let rows = rows(route, r, &tensors, 50)?;
            prop_assert_or_err(!rows.is_empty() && rows.len() <= 50)?;
            prop_assert_or_err(rows.iter().all(|row| row.len() == 2))?;
            crate::serve::score_with(&route.primary, &rows).map(|_| ())
        });
        if outcome.is_ok() {
            SCORED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(e) = outcome {
            prop_assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e);
            prop_assert!(!e.to_string().is_empty() && e.to_string().len() < 2000);
        }
        Ok(())
    }

    /// An invariant broken inside the pipeline, as an error that fails the
    /// case (it is not INVALID_ARGUMENT's kind of message).
    fn prop_assert_or_err(ok: bool) -> Result<(), ServeError> {
        if ok {
            Ok(())
        } else {
            Err(ServeError::Internal("rows broke an invariant".into()))
        }
    }

    /// Cases that were scored (not refused), so the target is known to
    /// reach past decoding.
    static SCORED: AtomicU64 = AtomicU64::new(0);

    proptest! {
        #![proptest_config(fuzz_config(3000))]

        #[test]
        fn fuzz_v2_tensor_decoding(r in request()) {
            thread_local!(static ROUTE: Route = route());
            ROUTE.with(|route| check(route, &r))?;
        }
    }

    #[test]
    fn fuzz_v2_reaches_scoring() {
        let route = route();
        let mut runner = proptest::test_runner::TestRunner::new(fuzz_config(300));
        runner
            .run(&coherent_request(), |r| check(&route, &r))
            .unwrap();
        assert!(
            SCORED.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "no case was scored"
        );
    }

    /// The shapes that overflowed or sized an allocation before the fix.
    #[test]
    fn fuzz_regression_huge_raw_shapes_are_invalid_argument() {
        for (datatype, shape, raw) in [
            ("FP64", vec![1i64 << 62], vec![0u8; 8]),
            ("INT32", vec![1i64 << 62, 2], vec![0u8; 8]),
            ("BYTES", vec![1i64 << 50], vec![1, 0, 0, 0, b'x']),
        ] {
            let r = ModelInferRequest {
                model_name: "m".into(),
                inputs: vec![InferInputTensor {
                    name: "input-0".into(),
                    datatype: datatype.into(),
                    shape,
                    ..Default::default()
                }],
                raw_input_contents: vec![raw],
                ..Default::default()
            };
            let e = decode_inputs(&r).err().expect("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        }
    }
}
