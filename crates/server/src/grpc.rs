//! The tonic adapter for `evergreen.v1.Predictor`. `to_status` is the one
//! place domain errors become statuses (the V2 adapter uses it too).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use evergreen_model::schema::Value;
use evergreen_proto::metadata::REQUEST_ID;
use evergreen_proto::v1::predictor_server::{Predictor, PredictorServer};
use evergreen_proto::v1::{
    self as pb, ListServedRequest, ListServedResponse, PredictRequest, PredictResponse, Row,
};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use crate::catalog::{Deprecation, Route};
use crate::error::ServeError;
use crate::serve::{from_pb_value, to_pb_prediction, Server};

/// gRPC response header carrying the deprecation notice.
pub const DEPRECATION_HEADER: &str = "evergreen-deprecation";

pub fn to_status(e: ServeError) -> Status {
    Status::new(e.code(), e.to_string())
}

fn ts(t: SystemTime) -> Option<evergreen_proto::Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(evergreen_proto::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

/// Adds the deprecation header (ASCII-only) to a response.
pub fn mark_deprecated<T>(resp: &mut Response<T>, d: &Option<Deprecation>) {
    if let Some(d) = d {
        let ascii: String = d
            .message
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(v) = MetadataValue::try_from(ascii.as_str()) {
            resp.metadata_mut().insert(DEPRECATION_HEADER, v);
        }
    }
}

/// A prediction's request id: the caller's `x-request-id` metadata, else
/// the id in the request body, else a new one. Recorded in the call's
/// tracing span, returned in the response metadata, and carried to the
/// monitor in every prediction-log record of the request.
pub fn request_id_of(server: &Server, metadata: &MetadataMap, body_id: &str) -> String {
    let given = metadata
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(body_id);
    let id = server.request_id(given);
    tracing::Span::current().record("request_id", id.as_str());
    id
}

/// Puts the request id in a response's metadata.
pub fn tag_response<T>(resp: &mut Response<T>, request_id: &str) {
    if let Ok(v) = MetadataValue::try_from(request_id) {
        resp.metadata_mut().insert(REQUEST_ID, v);
    }
}

/// Puts the request id in an error's metadata.
pub fn tag(mut status: Status, request_id: &str) -> Status {
    if let Ok(v) = MetadataValue::try_from(request_id) {
        status.metadata_mut().insert(REQUEST_ID, v);
    }
    status
}

/// Positional values of each row (named rows mapped through the schema).
pub fn rows_to_values<'a>(
    route: &Route,
    rows: &'a [Row],
    max_rows: usize,
) -> Result<Vec<Vec<Value<'a>>>, ServeError> {
    if rows.is_empty() {
        return Err(ServeError::InvalidArgument(
            "rows is empty: expected at least one row".into(),
        ));
    }
    if rows.len() > max_rows {
        return Err(ServeError::InvalidArgument(format!(
            "a batch of {} rows exceeds the limit of {max_rows} rows (server.max_batch_rows)",
            rows.len()
        )));
    }
    let schema = &route.primary.artifact.schema;
    let n = schema.features.len();
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            if row.named.is_empty() {
                if row.values.len() != n {
                    return Err(ServeError::InvalidArgument(format!(
                        "row {i}: expected {n} values ({}), got {}",
                        schema.feature_names(),
                        row.values.len()
                    )));
                }
                return Ok(row.values.iter().map(from_pb_value).collect());
            }
            if !row.values.is_empty() {
                return Err(ServeError::InvalidArgument(format!(
                    "row {i}: give values by position or by name, not both"
                )));
            }
            let mut out = vec![Value::Missing; n];
            for (name, v) in &row.named {
                let Some(k) = schema.feature_index(name) else {
                    return Err(ServeError::InvalidArgument(format!(
                        "row {i}: unknown feature {name:?}; expected one of {}",
                        schema.feature_names()
                    )));
                };
                out[k] = from_pb_value(v);
            }
            Ok(out)
        })
        .collect()
}

pub struct PredictorGrpc {
    server: Arc<Server>,
}

impl PredictorGrpc {
    pub fn server(server: Arc<Server>) -> PredictorServer<Self> {
        let limit = server.config.limits.max_message_bytes;
        PredictorServer::new(PredictorGrpc { server }).max_decoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl Predictor for PredictorGrpc {
    async fn predict(
        &self,
        req: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let start = Instant::now();
        let s = &self.server;
        let request_id = request_id_of(s, req.metadata(), &req.get_ref().request_id);
        let r = req.into_inner();
        let route = s
            .route(&r.model, &request_id)
            .await
            .map_err(|e| tag(to_status(e), &request_id))?;
        let (rows, outputs) = rows_to_values(&route, &r.rows, s.config.max_batch_rows)
            .and_then(|rows| Ok((s.score(&route, &rows)?, rows)))
            .map(|(outputs, rows)| (rows, outputs))
            .map_err(|e| {
                s.failed(&route, &request_id, &e, start.elapsed());
                tag(to_status(e), &request_id)
            })?;

        let labels: Vec<String> = route
            .primary
            .artifact
            .schema
            .labels()
            .map(|l| l.to_vec())
            .unwrap_or_default();
        let predictions = outputs
            .iter()
            .map(|o| to_pb_prediction(o, &labels))
            .collect();
        s.after(&route, &request_id, &rows, &outputs, start.elapsed());
        let mut resp = Response::new(PredictResponse {
            predictions,
            model: route.primary.model.clone(),
            version: route.primary.version,
            request_id: request_id.clone(),
            deprecation: route.deprecation.as_ref().map(|d| pb::Deprecation {
                notice: d.notice.clone(),
                sunset_at: d.sunset_at,
                replacement_version: d.replacement,
                message: d.message.clone(),
            }),
            labels,
        });
        mark_deprecated(&mut resp, &route.deprecation);
        tag_response(&mut resp, &request_id);
        Ok(resp)
    }

    async fn list_served(
        &self,
        _req: Request<ListServedRequest>,
    ) -> Result<Response<ListServedResponse>, Status> {
        let catalog = self.server.catalog.load();
        let mut models: Vec<pb::ServedModel> = catalog
            .models
            .values()
            .map(|m| {
                let mut versions: Vec<pb::ServedVersion> = m
                    .loaded
                    .values()
                    .map(|l| {
                        let mut aliases: Vec<String> = m
                            .routes
                            .iter()
                            .filter(|(_, v)| **v == l.version)
                            .map(|(a, _)| a.clone())
                            .collect();
                        aliases.sort();
                        pb::ServedVersion {
                            version: l.version,
                            aliases,
                            status: m.versions.get(&l.version).map_or(0, |i| i.status as i32),
                            sha256: l.sha256.clone(),
                            loaded_at: ts(l.loaded_at),
                            predictions: l.predictions.load(Ordering::Relaxed),
                        }
                    })
                    .collect();
                versions.sort_by_key(|v| v.version);
                pb::ServedModel {
                    model: m.name.clone(),
                    versions,
                    policy: m.policy.clone(),
                    failures: m
                        .failures
                        .iter()
                        .map(|f| pb::LoadFailure {
                            version: f.version,
                            error: f.error.clone(),
                            at: ts(f.at),
                        })
                        .collect(),
                }
            })
            .collect();
        models.sort_by(|a, b| a.model.cmp(&b.model));
        let log = self.server.log.as_ref().map(|l| pb::PredictionLogStats {
            sent: l.stats.sent.load(Ordering::Relaxed),
            dropped: l.stats.dropped.load(Ordering::Relaxed),
            queued: l.queued(),
        });
        Ok(Response::new(ListServedResponse {
            models,
            revision: catalog.revision,
            ready: catalog.ready,
            log,
        }))
    }
}
