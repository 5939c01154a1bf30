//! The registry's domain metrics (the RPC and process ones come from the
//! runtime): models and versions held (read from sled at scrape time),
//! the current revision, watchers following Watch, and events published.

use std::sync::Arc;

use evergreen_runtime::metrics::Metrics;

use crate::store::Store;

/// Registers the registry's metrics; the store is held weakly (it closes
/// when `run` ends).
pub fn register(metrics: &Metrics, store: &Arc<Store>) {
    metrics.register(
        "evergreen_registry_events",
        "Events committed and published, by kind (VERSION_REGISTERED, ALIAS_SET, ...)",
        store.hub().events.clone(),
    );
    let w = Arc::downgrade(store);
    metrics.register_gauges(
        "evergreen_registry_models",
        "Models in the registry",
        move || {
            let Some(Ok((models, _))) = w.upgrade().map(|s| s.counts()) else {
                return Vec::new();
            };
            vec![(Vec::new(), models as f64)]
        },
    );
    let w = Arc::downgrade(store);
    metrics.register_gauges(
        "evergreen_registry_versions",
        "Model versions in the registry, by status",
        move || {
            let Some(Ok((_, by_status))) = w.upgrade().map(|s| s.counts()) else {
                return Vec::new();
            };
            by_status
                .into_iter()
                .map(|(status, n)| (vec![("status", status.to_string())], n as f64))
                .collect()
        },
    );
    let w = Arc::downgrade(store);
    metrics.register_gauges(
        "evergreen_registry_revision",
        "The last committed revision (one per change, gapless)",
        move || {
            w.upgrade()
                .map(|s| vec![(Vec::new(), s.hub().published() as f64)])
                .unwrap_or_default()
        },
    );
    let w = Arc::downgrade(store);
    metrics.register_gauges(
        "evergreen_registry_watchers",
        "Watch streams following the registry now",
        move || {
            w.upgrade()
                .map(|s| vec![(Vec::new(), s.hub().watchers() as f64)])
                .unwrap_or_default()
        },
    );
}
