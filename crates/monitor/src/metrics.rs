//! The monitor's domain metrics (the RPC and process ones come from the
//! runtime). Drift figures are read from the window state at scrape time;
//! signals, logged records and labels are counted as they happen.

use std::sync::{Arc, Weak};

use evergreen_runtime::metrics::prometheus_client::metrics::counter::Counter;
use evergreen_runtime::metrics::prometheus_client::metrics::family::Family;
use evergreen_runtime::metrics::{Labels, Metrics};

use crate::service::Monitor;

/// Counters the monitor updates.
#[derive(Clone, Default)]
pub struct MonitorMetrics {
    /// Signals raised, by kind.
    pub signals: Family<Labels, Counter>,
    /// Prediction-log records, by outcome (accepted / skipped).
    pub records: Family<Labels, Counter>,
    /// Labels received, by outcome (matched / unknown / expired / invalid).
    pub feedback: Family<Labels, Counter>,
}

impl MonitorMetrics {
    pub fn signal(&self, kind: &str) {
        self.signals
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    pub fn records(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.records
                .get_or_create(&vec![("outcome", outcome.to_string())])
                .inc_by(n);
        }
    }

    pub fn feedback(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.feedback
                .get_or_create(&vec![("outcome", outcome.to_string())])
                .inc_by(n);
        }
    }
}

/// Registers `monitor`'s counters and the scrape-time drift gauges. The
/// monitor is held weakly (its database must close when `run` ends).
pub fn register(metrics: &Metrics, monitor: &Arc<Monitor>) {
    let m = &monitor.metrics;
    metrics.register(
        "evergreen_monitor_signals",
        "Signals raised, by kind (RETRAIN, ROLLBACK, RETIRE, ...)",
        m.signals.clone(),
    );
    metrics.register(
        "evergreen_monitor_records",
        "Prediction-log records received, by outcome (accepted; skipped: no reference profile; malformed: does not fit its version)",
        m.records.clone(),
    );
    metrics.register(
        "evergreen_monitor_feedback",
        "Labels received, by outcome (matched, unknown, expired, invalid)",
        m.feedback.clone(),
    );
    let w = Arc::downgrade(monitor);
    metrics.register_gauges(
        "evergreen_monitor_drifted_share",
        "Share of features that drifted in the last closed window of each model version",
        move || last_closed(&w, |c| c.drifted_share),
    );
    let w = Arc::downgrade(monitor);
    metrics.register_gauges(
        "evergreen_monitor_dataset_drift",
        "1 when the last closed window of the model version had dataset drift",
        move || last_closed(&w, |c| f64::from(u8::from(c.dataset_drift))),
    );
    let w = Arc::downgrade(monitor);
    metrics.register_gauges(
        "evergreen_monitor_window_rows",
        "Rows in the open window of each model version",
        move || {
            let Some(m) = w.upgrade() else {
                return Vec::new();
            };
            let state = m.state.lock().unwrap_or_else(|p| p.into_inner());
            state
                .versions
                .iter()
                .map(|((model, version), t)| {
                    (
                        vec![("model", model.clone()), ("version", version.to_string())],
                        t.state.current.rows as f64,
                    )
                })
                .collect()
        },
    );
}

fn last_closed(
    monitor: &Weak<Monitor>,
    f: impl Fn(&crate::service::Closed) -> f64,
) -> Vec<(Labels, f64)> {
    let Some(m) = monitor.upgrade() else {
        return Vec::new();
    };
    let state = m.state.lock().unwrap_or_else(|p| p.into_inner());
    state
        .versions
        .iter()
        .filter_map(|((model, version), t)| {
            let c = t.state.history.back()?;
            Some((
                vec![("model", model.clone()), ("version", version.to_string())],
                f(c),
            ))
        })
        .collect()
}
