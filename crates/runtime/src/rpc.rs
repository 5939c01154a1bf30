//! The one tower layer [`crate::serve`] puts in front of every daemon's
//! services. Per call it:
//! - counts it and times it (`grpc_server_started_total`,
//!   `grpc_server_handled_total{grpc_code}`, `grpc_server_handling_seconds`,
//!   labelled by `grpc_service` and `grpc_method`; paths that are not in
//!   Evergreen's contracts count as `unknown`, so junk cannot blow up the
//!   label set);
//! - opens a tracing span `rpc` with the method and the caller's
//!   `x-request-id`;
//! - refuses a request message larger than `limits.max_message_bytes` with
//!   RESOURCE_EXHAUSTED naming the limit and its key, checked on the gRPC
//!   frame headers as the bytes arrive (before tonic buffers the message);
//! - caps the long-lived streams open at once on this daemon
//!   ([`evergreen_proto::LONG_LIVED_CALLS`]) at
//!   `limits.max_concurrent_streams` (`evergreen_streams_open` shows them).
//!   Streams of the open services (health `Watch`, callable without a
//!   token) have a cap of their own of the same size, so callers without a
//!   token cannot use up the slots of authenticated watches.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Frame;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::metrics::Metrics;

pub use evergreen_proto::metadata::REQUEST_ID;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

/// Latency buckets, seconds: sub-millisecond predictions to minute-long
/// uploads.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

pub(crate) struct RpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<CodeLabels, Counter>,
    seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    streams: Family<MethodLabels, Gauge>,
}

impl RpcMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = RpcMetrics {
            started: Family::default(),
            handled: Family::default(),
            seconds: Family::new_with_constructor(histogram as fn() -> Histogram),
            streams: Family::default(),
        };
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            m.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by gRPC status code",
            m.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its last response byte (whole stream for streaming calls)",
            m.seconds.clone(),
        );
        registry.register(
            "evergreen_streams_open",
            "Long-lived streams open now (limited by limits.max_concurrent_streams)",
            m.streams.clone(),
        );
        m
    }
}

/// `/pkg.Service/Method` -> ("pkg.Service", "Method") for every method of
/// Evergreen's contracts, health and reflection; anything else is
/// ("unknown", "unknown").
fn method_of(path: &str) -> (&'static str, &'static str) {
    static KNOWN: OnceLock<HashMap<String, (&'static str, &'static str)>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let mut known = HashMap::new();
        let mut add = |service: String, method: String| {
            let service: &'static str = Box::leak(service.into_boxed_str());
            let method: &'static str = Box::leak(method.into_boxed_str());
            known.insert(format!("/{service}/{method}"), (service, method));
        };
        for set in [
            evergreen_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = format!("{package}.{}", service.name.unwrap_or_default());
                    for m in service.method {
                        add(name.clone(), m.name.unwrap_or_default());
                    }
                }
            }
        }
        for r in [
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            add(r.to_string(), "ServerReflectionInfo".to_string());
        }
        known
    });
    known.get(path).copied().unwrap_or(("unknown", "unknown"))
}

/// The per-daemon state of the layer.
struct Shared {
    metrics: Metrics,
    daemon: &'static str,
    max_message_bytes: usize,
    max_streams: u32,
    streams: Arc<Semaphore>,
    /// Long-lived streams of the open services (no token needed).
    open_streams: Arc<Semaphore>,
    /// Calls whose handler or response body is still alive.
    inflight: Arc<AtomicUsize>,
}

/// Counts a call as in flight until dropped (the handler's future, then
/// the response body, carry it).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        InFlight(n.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct RpcLayer {
    shared: Arc<Shared>,
}

impl RpcLayer {
    pub fn new(shell: &crate::Shell) -> Self {
        let max_streams = shell.limits.max_concurrent_streams;
        RpcLayer {
            shared: Arc::new(Shared {
                metrics: shell.metrics.clone(),
                daemon: shell.name,
                max_message_bytes: shell.limits.max_message_bytes,
                max_streams,
                streams: Arc::new(Semaphore::new(max_streams as usize)),
                open_streams: Arc::new(Semaphore::new(max_streams as usize)),
                inflight: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// Calls still alive (handlers running, response bodies not dropped).
    pub fn in_flight(&self) -> usize {
        self.shared.inflight.load(Ordering::SeqCst)
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The config key of a shell setting, e.g. `server.limits.max_message_bytes
/// (EVERGREEN_SERVER__LIMITS__MAX_MESSAGE_BYTES)`.
fn key(daemon: &str, key: &str) -> String {
    format!(
        "{daemon}.{key} (EVERGREEN_{}__{})",
        daemon.to_uppercase(),
        key.to_uppercase().replace('.', "__")
    )
}

impl<S> tower_service::Service<Request<Body>> for Rpc<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let path = req.uri().path();
        let (service, method) = method_of(path);
        let labels = MethodLabels {
            grpc_service: service,
            grpc_method: method,
        };
        let shared = self.shared.clone();
        let rpc = shared.metrics.rpc();
        rpc.started.get_or_create(&labels).inc();

        let permit = if evergreen_proto::LONG_LIVED_CALLS.contains(&path) {
            let open = crate::auth::required_role(path).is_none();
            let streams = if open {
                &shared.open_streams
            } else {
                &shared.streams
            };
            match streams.clone().try_acquire_owned() {
                Ok(p) => {
                    rpc.streams.get_or_create(&labels).inc();
                    Some(p)
                }
                Err(_) => {
                    let what = if open {
                        "health watches (the open streams, counted apart from the others)"
                    } else {
                        "long-lived streams (watches, prediction logs, training progress)"
                    };
                    let status = Status::resource_exhausted(format!(
                        "too many open streams: this {} already holds {} {what}, the limit set by {}; retry later or raise the limit",
                        shared.daemon,
                        shared.max_streams,
                        key(shared.daemon, "limits.max_concurrent_streams"),
                    ));
                    tracing::warn!(rpc = path, "{}", status.message());
                    let obs = Observed {
                        shared,
                        labels,
                        start,
                        code: Some(Code::ResourceExhausted),
                        permit: None,
                        done: false,
                    };
                    drop(obs);
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        } else {
            None
        };

        // The caller's request id, when given; a handler may record the
        // one it settles on (`Span::current().record("request_id", ..)`).
        let span = tracing::info_span!("rpc", rpc = path, request_id = tracing::field::Empty);
        if let Some(id) = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
            span.record("request_id", id);
        }
        let guard = InFlight::new(&shared.inflight);
        let limit = shared.max_message_bytes;
        let daemon = shared.daemon;
        let req = req.map(|b| Body::new(LimitedBody::new(b, limit, daemon)));
        // The clone was made ready by `poll_ready`; keep that one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let resp = inner.call(req).instrument(span).await?;
            let code = resp
                .headers()
                .get("grpc-status")
                .map(|v| Code::from_bytes(v.as_bytes()));
            let obs = Observed {
                shared,
                labels,
                start,
                code,
                permit,
                done: false,
            };
            Ok(resp.map(|b| {
                Body::new(ObservedBody {
                    inner: b,
                    obs,
                    _guard: guard,
                })
            }))
        })
    }
}

/// Records one call when it ends (or is dropped: cancelled).
struct Observed {
    shared: Arc<Shared>,
    labels: MethodLabels,
    start: Instant,
    code: Option<Code>,
    permit: Option<OwnedSemaphorePermit>,
    done: bool,
}

impl Observed {
    fn finish(&mut self, ended: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let code = match self.code {
            Some(c) => c,
            // A stream that ended without trailers, or was dropped early
            // (client went away, forced shutdown).
            None if ended => Code::Unknown,
            None => Code::Cancelled,
        };
        let rpc = self.shared.metrics.rpc();
        rpc.handled
            .get_or_create(&CodeLabels {
                grpc_service: self.labels.grpc_service,
                grpc_method: self.labels.grpc_method,
                grpc_code: evergreen_proto::codes::name(code),
            })
            .inc();
        rpc.seconds
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
        if self.permit.take().is_some() {
            rpc.streams.get_or_create(&self.labels).dec();
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish(false);
    }
}

struct ObservedBody {
    inner: Body,
    obs: Observed,
    _guard: InFlight,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    if let Some(v) = t.get("grpc-status") {
                        this.obs.code = Some(Code::from_bytes(v.as_bytes()));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.obs.code = Some(e.code());
                this.obs.finish(true);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.obs.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The request body, with each gRPC message's length (the 5-byte frame
/// header: compression flag, u32 big-endian length) checked against the
/// limit as it streams by.
struct LimitedBody {
    inner: Body,
    limit: usize,
    daemon: &'static str,
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    failed: bool,
}

impl LimitedBody {
    fn new(inner: Body, limit: usize, daemon: &'static str) -> Self {
        LimitedBody {
            inner,
            limit,
            daemon,
            header: [0; 5],
            have: 0,
            remaining: 0,
            failed: false,
        }
    }

    /// Scans `data`; the length of a message over the limit.
    fn scan(&mut self, mut data: &[u8]) -> Option<usize> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data.advance(n);
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data.advance(1);
            if self.have == 5 {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.limit {
                    return Some(len);
                }
                self.remaining = len;
            }
        }
        None
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(len) = this.scan(data) {
                        this.failed = true;
                        return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                            "message too large: {len} bytes, the limit is {} bytes, set by {}",
                            this.limit,
                            key(this.daemon, "limits.max_message_bytes")
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_and_junk() {
        assert_eq!(
            method_of("/evergreen.v1.Predictor/Predict"),
            ("evergreen.v1.Predictor", "Predict")
        );
        assert_eq!(
            method_of("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(method_of("/no.Such/Thing"), ("unknown", "unknown"));
    }

    #[test]
    fn frame_lengths_are_checked_across_chunks() {
        let mut b = LimitedBody::new(Body::empty(), 10, "server");
        // A 4-byte message, then a header split over two chunks.
        assert_eq!(b.scan(&[0, 0, 0, 0, 4, 1, 2, 3, 4, 0, 0]), None);
        assert_eq!(b.scan(&[0, 0, 10]), None);
        assert_eq!(b.scan(&[0; 10]), None);
        assert_eq!(b.scan(&[0, 0, 0, 0, 11]), Some(11));
    }

    #[test]
    fn keys_name_the_env_variable() {
        assert_eq!(
            key("monitor", "limits.max_message_bytes"),
            "monitor.limits.max_message_bytes (EVERGREEN_MONITOR__LIMITS__MAX_MESSAGE_BYTES)"
        );
    }
}
