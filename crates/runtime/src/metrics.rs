//! Prometheus metrics: one registry per daemon (several daemons may share a
//! process, as in the end-to-end tests and `evergreen up`), rendered in the
//! Prometheus text format (0.0.4) and served over HTTP on the daemon's
//! `metrics_listen` together with `/healthz` and `/readyz`.
//!
//! Every daemon gets, from this crate: the RPC metrics of [`crate::rpc`]
//! (`grpc_server_*`, `evergreen_streams_open`), process CPU and memory
//! (`process_*`, read from `/proc/self` on Linux) and
//! `evergreen_build_info{daemon,version}`. A daemon adds its own domain
//! metrics with [`Metrics::register`] (counters, gauges, histograms it
//! updates) or [`Metrics::register_gauges`] (values read from its state at
//! scrape time).
//!
//! Why `prometheus-client`: a registry is a value, not a global, so each
//! daemon in one process serves only its own metrics; it has three small
//! dependencies. The HTTP side is hyper 1 (already in the tree through
//! tonic) serving HTTP/1: three fixed paths need no framework.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::health::Health;
use crate::rpc::RpcMetrics;

pub use prometheus_client;

/// Labels of one sample of a scrape-time gauge: (label name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

/// A daemon's metrics registry. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    rpc: RpcMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry holding the shared metrics of daemon `daemon`
    /// ("registry", "trainer", "server", "monitor").
    pub fn new(daemon: &'static str) -> Self {
        let mut registry = Registry::default();
        let rpc = RpcMetrics::register(&mut registry);
        registry.register_collector(Box::new(ProcessCollector));
        registry.register_collector(Box::new(FnCollector {
            name: "evergreen_build_info".into(),
            help: "Always 1: which daemon this is and its version".into(),
            counter: false,
            f: Box::new(move || {
                vec![(
                    vec![
                        ("daemon", daemon.to_string()),
                        ("version", env!("CARGO_PKG_VERSION").to_string()),
                    ],
                    1.0,
                )]
            }),
        }));
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                rpc,
            }),
        }
    }

    /// Registers a metric the daemon updates itself. Counter names are
    /// given without `_total` (the encoder appends it).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// Registers a gauge family computed at scrape time by `f` (e.g. what
    /// is loaded right now), so it can never disagree with the state.
    pub fn register_gauges(
        &self,
        name: &str,
        help: &str,
        f: impl Fn() -> Vec<(Labels, f64)> + Send + Sync + 'static,
    ) {
        self.registry().register_collector(Box::new(FnCollector {
            name: name.to_string(),
            help: help.to_string(),
            counter: false,
            f: Box::new(f),
        }));
    }

    /// Registers a counter family read at scrape time by `f` from totals
    /// the daemon already keeps (`_total` is appended to `name`).
    pub fn register_counters(
        &self,
        name: &str,
        help: &str,
        f: impl Fn() -> Vec<(Labels, f64)> + Send + Sync + 'static,
    ) {
        self.registry().register_collector(Box::new(FnCollector {
            name: name.to_string(),
            help: help.to_string(),
            counter: true,
            f: Box::new(f),
        }));
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub(crate) fn rpc(&self) -> &RpcMetrics {
        &self.inner.rpc
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct FnCollector {
    name: String,
    help: String,
    counter: bool,
    #[allow(clippy::type_complexity)]
    f: Box<dyn Fn() -> Vec<(Labels, f64)> + Send + Sync>,
}

impl fmt::Debug for FnCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCollector")
            .field("name", &self.name)
            .finish()
    }
}

impl Collector for FnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let samples = (self.f)();
        let kind = if self.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut family = encoder.encode_descriptor(&self.name, &self.help, None, kind)?;
        for (labels, value) in &samples {
            let sample = family.encode_family(labels)?;
            if self.counter {
                ConstCounter::new(*value).encode(sample)?;
            } else {
                ConstGauge::new(*value).encode(sample)?;
            }
        }
        Ok(())
    }
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds` of this process (Linux; absent elsewhere).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(p) = process_stats() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(p.resident_bytes as f64);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            rss.metric_type(),
        )?)?;
        if let Some(fds) = p.open_fds {
            let fds = ConstGauge::new(fds as f64);
            fds.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                fds.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: Option<u64>,
}

/// Reads `/proc/self/stat` (utime + stime, fields 14 and 15, in clock
/// ticks) and `/proc/self/statm` (resident pages, field 2). `None` where
/// there is no `/proc` (not Linux).
pub fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after the last ')'. Field 3 is the first after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: f64 = fields.get(15 - 3)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the running system.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / ticks.max(1) as f64,
        resident_bytes: resident_pages * page.max(1) as u64,
        open_fds,
    })
}

// ---------------------------------------------------------------------------
// The HTTP endpoint.

/// Where each running daemon's metrics endpoint is, by the address of its
/// gRPC listener: `run(config, listener, ..)` callers know the latter, so
/// they can find the former (tests bind `metrics_listen = 127.0.0.1:0`).
fn bound() -> &'static Mutex<HashMap<SocketAddr, watch::Sender<Option<SocketAddr>>>> {
    static BOUND: OnceLock<Mutex<HashMap<SocketAddr, watch::Sender<Option<SocketAddr>>>>> =
        OnceLock::new();
    BOUND.get_or_init(Default::default)
}

fn slot(grpc: SocketAddr) -> watch::Receiver<Option<SocketAddr>> {
    let mut map = bound().lock().unwrap_or_else(|p| p.into_inner());
    map.entry(grpc)
        .or_insert_with(|| watch::channel(None).0)
        .subscribe()
}

/// The metrics address of the daemon serving gRPC on `grpc`, once its
/// endpoint is bound (waits for it; `None` if it is not enabled or the
/// daemon stopped before binding it). Use a timeout around it.
pub async fn metrics_addr(grpc: SocketAddr) -> Option<SocketAddr> {
    let mut rx = slot(grpc);
    let r = rx.wait_for(|a| a.is_some()).await;
    r.ok().and_then(|a| *a)
}

/// The metrics endpoint of one daemon; stops when dropped.
pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    grpc: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
        let mut map = bound().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(&self.grpc) {
            if *tx.borrow() == Some(self.addr) {
                map.remove(&self.grpc);
            }
        }
    }
}

/// Checks a `metrics_listen` value ("" = off); errors name the key.
pub fn parse_listen(name: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        anyhow::anyhow!(
            "invalid {name}.metrics_listen = {value:?}: expected an address like 127.0.0.1:9400, or \"\" for no metrics endpoint"
        )
    })
}

/// Binds `shell.metrics_listen` and serves `/metrics`, `/healthz` and
/// `/readyz` until the returned endpoint is dropped. `None` when off.
pub(crate) async fn start(
    shell: &crate::Shell,
    grpc: SocketAddr,
) -> anyhow::Result<Option<Endpoint>> {
    let Some(want) = parse_listen(shell.name, &shell.metrics_listen)? else {
        return Ok(None);
    };
    let listener = TcpListener::bind(want).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for metrics on {want} ({}.metrics_listen): {e}",
            shell.name
        )
    })?;
    let addr = listener.local_addr()?;
    tracing::info!(daemon = shell.name, %addr, "metrics on http://{addr}/metrics");
    let state = Arc::new((shell.metrics.clone(), shell.health.clone()));
    let task = tokio::spawn(async move {
        // Connection tasks live in the set: aborting this task (dropping
        // the endpoint) ends them too.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // e.g. out of file descriptors: do not spin.
                    tracing::debug!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            connections.spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state.0, &state.1, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    {
        let mut map = bound().lock().unwrap_or_else(|p| p.into_inner());
        map.entry(grpc)
            .or_insert_with(|| watch::channel(None).0)
            .send_replace(Some(addr));
    }
    Ok(Some(Endpoint { addr, grpc, task }))
}

fn answer<B>(metrics: &Metrics, health: &Health, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "use GET\n".to_string(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            metrics.render(),
        ),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".to_string()),
        "/readyz" if health.is_ready() => reply(StatusCode::OK, TEXT, "ready\n".to_string()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            if health.is_draining() {
                "shutting down\n".to_string()
            } else {
                "not ready\n".to_string()
            },
        ),
        other => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("no such path {other:?}: expected /metrics, /healthz or /readyz\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_are_read_from_proc() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        // Burn a little CPU so the counter is above zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let p = process_stats().expect("readable /proc/self");
        assert!(p.cpu_seconds > 0.0, "{p:?}");
        // A test binary is at least a megabyte resident and under 100 GB.
        assert!(
            p.resident_bytes > 1 << 20 && p.resident_bytes < 100 << 30,
            "{p:?}"
        );
        assert!(p.open_fds.unwrap() >= 3, "{p:?}");
    }

    #[test]
    fn scrape_time_gauges_and_build_info_render() {
        let m = Metrics::new("registry");
        m.register_gauges("evergreen_test_loaded", "Loaded things", || {
            vec![
                (vec![("model", "a".into()), ("version", "1".into())], 1.0),
                (vec![("model", "b".into()), ("version", "2".into())], 1.0),
            ]
        });
        let text = m.render();
        assert!(
            text.contains("evergreen_test_loaded{model=\"a\",version=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("evergreen_build_info{daemon=\"registry\",version=\""),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
    }

    #[test]
    fn metrics_listen_is_checked() {
        assert_eq!(parse_listen("server", "").unwrap(), None);
        assert!(parse_listen("server", "127.0.0.1:0").unwrap().is_some());
        let e = parse_listen("server", "localhost").unwrap_err().to_string();
        assert!(e.contains("server.metrics_listen"), "{e}");
    }
}
