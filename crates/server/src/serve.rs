//! Serving a request: route it (policy, alias, version; on-demand load),
//! score its rows on the hot path, then — off the response path — log it
//! and let the shadow version score a copy.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use evergreen_model::schema::Value;
use evergreen_model::{Prediction, Scratch};
use evergreen_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::catalog::{parse_spec, Catalog, Miss, Route, Selector};
use crate::config::ServerConfig;
use crate::error::ServeError;
use crate::log::LogShipper;
use crate::syncer::OnDemand;

/// One scored row.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Class {
        class: usize,
        probabilities: Vec<f64>,
    },
    Value(f64),
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

pub struct Server {
    pub catalog: Arc<ArcSwap<Catalog>>,
    pub config: Arc<ServerConfig>,
    on_demand: mpsc::Sender<OnDemand>,
    pub log: Option<Arc<LogShipper>>,
    shadow_permits: Arc<Semaphore>,
    pub shadow_skipped: AtomicU64,
    boot: u64,
    counter: AtomicU64,
}

/// Rows to a loggable, owned form (only when logging or shadowing).
pub fn to_pb_row(row: &[Value]) -> pb::Row {
    let values = row
        .iter()
        .map(|v| pb::Value {
            kind: match v {
                Value::Number(x) => Some(pb::value::Kind::Number(*x)),
                Value::Text(s) => Some(pb::value::Kind::Category(s.to_string())),
                Value::Missing => None,
            },
        })
        .collect();
    pb::Row {
        values,
        named: Default::default(),
    }
}

pub fn from_pb_value(v: &pb::Value) -> Value<'_> {
    match &v.kind {
        Some(pb::value::Kind::Number(x)) => Value::Number(*x),
        Some(pb::value::Kind::Category(s)) => Value::Text(s),
        None => Value::Missing,
    }
}

pub fn to_pb_prediction(o: &Output, labels: &[String]) -> pb::Prediction {
    match o {
        Output::Class {
            class,
            probabilities,
        } => pb::Prediction {
            label: labels.get(*class).cloned().unwrap_or_default(),
            probabilities: probabilities.clone(),
            value: 0.0,
        },
        Output::Value(v) => pb::Prediction {
            label: String::new(),
            probabilities: Vec::new(),
            value: *v,
        },
    }
}

impl Server {
    pub fn new(
        catalog: Arc<ArcSwap<Catalog>>,
        config: Arc<ServerConfig>,
        on_demand: mpsc::Sender<OnDemand>,
        log: Option<Arc<LogShipper>>,
    ) -> Self {
        let boot = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 40);
        Server {
            shadow_permits: Arc::new(Semaphore::new(config.shadow_queue.max(1))),
            catalog,
            config,
            on_demand,
            log,
            shadow_skipped: AtomicU64::new(0),
            boot,
            counter: AtomicU64::new(0),
        }
    }

    /// The caller's request id, or a new unique one.
    pub fn request_id(&self, given: &str) -> String {
        if !given.is_empty() {
            return given.to_string();
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.boot)
    }

    /// Resolves `spec` to loaded versions, loading on demand a version that
    /// exists but is not served yet.
    pub async fn route(&self, spec: &str, key: &str) -> Result<Route, ServeError> {
        let (name, sel) = parse_spec(spec)?;
        self.route_parsed(name, &sel, key).await
    }

    pub async fn route_parsed(
        &self,
        name: &str,
        sel: &Selector,
        key: &str,
    ) -> Result<Route, ServeError> {
        let (mut refreshed, mut loaded) = (false, false);
        loop {
            let catalog = self.catalog.load();
            if !catalog.ready {
                return Err(ServeError::Unavailable(
                    "the server is still loading its models; retry shortly".into(),
                ));
            }
            let Some(entry) = catalog.models.get(name) else {
                return Err(ServeError::NotFound(format!("model {name:?} not found")));
            };
            let (version, fallback) = match entry.route(sel, key, &self.config.default_alias) {
                Ok(r) => return Ok(r),
                Err(Miss::Error(e)) => return Err(e),
                Err(Miss::Unknown(e)) if refreshed => return Err(e),
                Err(Miss::NotLoaded(v)) if loaded => {
                    return Err(ServeError::Unavailable(format!(
                        "{name}/{v} was unloaded meanwhile; retry"
                    )))
                }
                Err(Miss::Unknown(e)) => {
                    refreshed = true;
                    (None, e)
                }
                Err(Miss::NotLoaded(v)) => {
                    loaded = true;
                    (Some(v), ServeError::Internal(String::new()))
                }
            };
            drop(catalog);
            // Ask the syncer to refresh the model (and load `version`).
            let (reply, rx) = oneshot::channel();
            let req = OnDemand {
                model: name.to_string(),
                version,
                reply,
            };
            self.on_demand
                .send(req)
                .await
                .map_err(|_| ServeError::Unavailable("the server is shutting down".into()))?;
            match tokio::time::timeout(Duration::from_secs(60), rx).await {
                Ok(Ok(Ok(()))) => continue,
                Ok(Ok(Err(e))) if version.is_some() => return Err(e),
                Ok(Ok(Err(_))) => return Err(fallback),
                Ok(Err(_)) => return Err(ServeError::Unavailable("the loader stopped".into())),
                Err(_) => {
                    return Err(ServeError::Unavailable(format!(
                        "{name} took too long to load"
                    )))
                }
            }
        }
    }

    /// Scores positional rows with `route.primary`. Row errors name the row.
    pub fn score(&self, route: &Route, rows: &[Vec<Value>]) -> Result<Vec<Output>, ServeError> {
        score_with(&route.primary, rows)
    }

    /// Logs a request that failed after routing (bad rows), so that the
    /// monitor's error rate sees it. One record, without features.
    pub fn failed(&self, route: &Route, request_id: &str, error: &ServeError, latency: Duration) {
        let Some(log) = self.log.as_ref().filter(|l| l.sampled(request_id)) else {
            return;
        };
        let mut r = record(
            request_id,
            &route.primary.model,
            route.primary.version,
            pb::Row::default(),
            pb::Prediction::default(),
            &[],
            latency,
            false,
        );
        r.prediction = None;
        r.error = format!("{}: {error}", evergreen_proto::codes::name(error.code()));
        log.offer(r);
    }

    /// Logs the request and hands a copy to the shadow version. Returns at

    /// once; nothing here can slow or fail the caller.
    pub fn after(
        &self,
        route: &Route,
        request_id: &str,
        rows: &[Vec<Value>],
        outputs: &[Output],
        latency: Duration,
    ) {
        let log = self.log.as_ref().filter(|l| l.sampled(request_id));
        let shadow = route.shadow.clone();
        if log.is_none() && shadow.is_none() {
            return;
        }
        let pb_rows: Vec<pb::Row> = rows.iter().map(|r| to_pb_row(r)).collect();
        if let Some(log) = log {
            let labels = route
                .primary
                .artifact
                .schema
                .labels()
                .map(|l| l.to_vec())
                .unwrap_or_default();
            for (i, (row, out)) in pb_rows.iter().zip(outputs).enumerate() {
                let mut r = record(
                    request_id,
                    &route.primary.model,
                    route.primary.version,
                    row.clone(),
                    to_pb_prediction(out, &labels),
                    &labels,
                    latency,
                    false,
                );
                r.row = i as u32;
                log.offer(r);
            }
        }
        if let Some(shadow) = shadow {
            let Ok(permit) = self.shadow_permits.clone().try_acquire_owned() else {
                self.shadow_skipped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let log = self.log.clone();
            let request_id = request_id.to_string();
            tokio::spawn(async move {
                let _permit = permit;
                let rows: Vec<Vec<Value>> = pb_rows
                    .iter()
                    .map(|r| r.values.iter().map(from_pb_value).collect())
                    .collect();
                let t = std::time::Instant::now();
                let Ok(outs) = score_with(&shadow, &rows) else {
                    return;
                };
                let latency = t.elapsed();
                if let Some(log) = log {
                    let labels = shadow
                        .artifact
                        .schema
                        .labels()
                        .map(|l| l.to_vec())
                        .unwrap_or_default();
                    for (i, (row, out)) in pb_rows.into_iter().zip(&outs).enumerate() {
                        let mut r = record(
                            &request_id,
                            &shadow.model,
                            shadow.version,
                            row,
                            to_pb_prediction(out, &labels),
                            &labels,
                            latency,
                            true,
                        );
                        r.row = i as u32;
                        log.offer(r);
                    }
                }
            });
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    request_id: &str,
    model: &str,
    version: u64,
    features: pb::Row,
    prediction: pb::Prediction,
    labels: &[String],
    latency: Duration,
    shadow: bool,
) -> pb::PredictionLog {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    pb::PredictionLog {
        request_id: request_id.to_string(),
        model: model.to_string(),
        version,
        features: Some(features),
        prediction: Some(prediction),
        latency_us: latency.as_micros() as u64,
        shadow,
        time: Some(evergreen_proto::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
        labels: labels.to_vec(),
        row: 0,
        error: String::new(),
    }
}

pub(crate) fn score_with(
    loaded: &crate::catalog::Loaded,
    rows: &[Vec<Value>],
) -> Result<Vec<Output>, ServeError> {
    let model = &loaded.artifact;
    let mut out = Vec::with_capacity(rows.len());
    SCRATCH.with(|s| {
        let mut scratch = s.borrow_mut();
        for (i, row) in rows.iter().enumerate() {
            let p = model
                .predict(row, &mut scratch)
                .map_err(|e| ServeError::InvalidArgument(format!("row {i}: {e}")))?;
            out.push(match p {
                Prediction::Class {
                    class,
                    probabilities,
                } => Output::Class {
                    class,
                    probabilities: probabilities.to_vec(),
                },
                Prediction::Value(v) => Output::Value(v),
            });
        }
        Ok::<(), ServeError>(())
    })?;
    loaded
        .predictions
        .fetch_add(rows.len() as u64, Ordering::Relaxed);
    Ok(out)
}
