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
