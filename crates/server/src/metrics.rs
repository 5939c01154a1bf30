//! The server's domain metrics (the RPC and process ones come from the
//! runtime). What is loaded and routed is read from the catalog snapshot
//! at scrape time, so it cannot disagree with what requests see; swaps and
//! failed loads are counted by the syncer as they happen.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use evergreen_runtime::metrics::prometheus_client::metrics::counter::Counter;
use evergreen_runtime::metrics::prometheus_client::metrics::family::Family;
use evergreen_runtime::metrics::{Labels, Metrics};

use crate::catalog::Catalog;
use crate::log::LogShipper;
use crate::serve::Server;

/// Counters the syncer updates.
#[derive(Clone, Default)]
pub struct SyncMetrics {
    /// A served alias moved to another version.
    pub swaps: Family<Labels, Counter>,
    /// A version that should be served failed to download, verify or load.
    pub load_failures: Family<Labels, Counter>,
}

impl SyncMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let m = SyncMetrics::default();
        metrics.register(
            "evergreen_server_swaps",
            "Times a served alias moved to another version (hot swap)",
            m.swaps.clone(),
        );
        metrics.register(
            "evergreen_server_load_failures",
            "Versions that failed to download, verify or load",
            m.load_failures.clone(),
        );
        m
    }

    pub fn swapped(&self, model: &str, alias: &str) {
        self.swaps
            .get_or_create(&vec![
                ("model", model.to_string()),
                ("alias", alias.to_string()),
            ])
            .inc();
    }

    pub fn load_failed(&self, model: &str) {
        self.load_failures
            .get_or_create(&vec![("model", model.to_string())])
            .inc();
    }
}

/// Registers the scrape-time gauges and counters read from the catalog,
/// the prediction log and the shadow queue. The server and its log are
/// held weakly: the registry must not keep the log's queue open (its
/// sender closing is what flushes it at shutdown).
pub fn register_state(metrics: &Metrics, catalog: Arc<ArcSwap<Catalog>>, server: &Arc<Server>) {
    let c = catalog.clone();
    metrics.register_gauges(
        "evergreen_server_models_loaded",
        "Model versions loaded and ready to answer (1 per model and version)",
        move || {
            let catalog = c.load();
            let mut out = Vec::new();
            for m in catalog.models.values() {
                for v in m.loaded.keys() {
                    out.push((
                        vec![("model", m.name.clone()), ("version", v.to_string())],
                        1.0,
                    ));
                }
            }
            out
        },
    );
    let c = catalog.clone();
    metrics.register_gauges(
        "evergreen_server_alias_version",
        "The version answering each served alias",
        move || {
            let catalog = c.load();
            let mut out = Vec::new();
            for m in catalog.models.values() {
                for (alias, v) in &m.routes {
                    out.push((
                        vec![("model", m.name.clone()), ("alias", alias.clone())],
                        *v as f64,
                    ));
                }
            }
            out
        },
    );
    let c = catalog;
    metrics.register_counters(
        "evergreen_server_rows_scored",
        "Rows scored, by model and version (since the version was loaded)",
        move || {
            let catalog = c.load();
            let mut out = Vec::new();
            for m in catalog.models.values() {
                for (v, l) in &m.loaded {
                    out.push((
                        vec![("model", m.name.clone()), ("version", v.to_string())],
                        l.predictions.load(Ordering::Relaxed) as f64,
                    ));
                }
            }
            out
        },
    );
    if let Some(log) = &server.log {
        register_log(metrics, Arc::downgrade(log));
    }
    let s = Arc::downgrade(server);
    metrics.register_counters(
        "evergreen_server_shadow_skipped",
        "Shadow scorings skipped because the shadow queue was full",
        move || {
            one(s
                .upgrade()
                .map(|s| s.shadow_skipped.load(Ordering::Relaxed)))
        },
    );
}

fn one(v: Option<u64>) -> Vec<(Labels, f64)> {
    v.map(|v| vec![(Vec::new(), v as f64)]).unwrap_or_default()
}

fn register_log(metrics: &Metrics, log: Weak<LogShipper>) {
    let l = log.clone();
    metrics.register_gauges(
        "evergreen_server_prediction_log_queue",
        "Prediction-log records waiting to be sent to the monitor",
        move || one(l.upgrade().map(|l| l.queued())),
    );
    let l = log.clone();
    metrics.register_counters(
        "evergreen_server_prediction_log_sent",
        "Prediction-log records handed to the monitor stream",
        move || one(l.upgrade().map(|l| l.stats.sent.load(Ordering::Relaxed))),
    );
    let l = log;
    metrics.register_counters(
        "evergreen_server_prediction_log_dropped",
        "Prediction-log records dropped (queue full or monitor unreachable)",
        move || one(l.upgrade().map(|l| l.stats.dropped.load(Ordering::Relaxed))),
    );
}
