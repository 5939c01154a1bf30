//! Evergreen's monitor (issue #5): receives the prediction log from servers
//! and delayed labels from callers; measures data and prediction drift,
//! realized and estimated (CBPE) performance and service health per
//! tumbling window of each version, against the reference profile frozen in
//! its artifact; and acts on a model's policy: RETRAIN through the trainer,
//! ROLLBACK and RETIRE through the registry.
//!
//! Code map: `drift` (statistics), `special` (p-value functions), `perf`
//! (performance and health accumulators), `window` (a version's binned
//! window), `service` (ingest, labels, windows, reports), `policy`,
//! `actions` (breach runs → signals → actions), `store` (sled), `grpc`
//! (the tonic adapter), `config`.

pub mod actions;
pub mod config;
pub mod drift;
pub mod grpc;
pub mod metrics;
pub mod perf;
pub mod policy;
pub mod service;
pub mod special;
pub mod store;
pub mod window;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use evergreen_proto::v1::monitor_server::MonitorServer;
use evergreen_runtime::client::{Channel, Client};
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

pub use crate::config::MonitorConfig;
use crate::grpc::MonitorGrpc;

/// A lazily connected channel to the daemon at `url` (config key
/// `monitor.{key}`), TLS and token per `[monitor.client]`.
fn channel(client: &Client, key: &str, url: &str) -> anyhow::Result<Channel> {
    let endpoint = client
        .endpoint(&format!("monitor.{key}"), url)?
        .connect_timeout(Duration::from_secs(3));
    Ok(client.lazy(endpoint))
}

/// Runs the monitor on `listener` until `shutdown` resolves; window state
/// is flushed to disk before it returns.
pub async fn run(
    config: MonitorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate()?;
    let shell = evergreen_runtime::DaemonConfig::shell(&config);
    let client = Client::new(
        &config.client,
        &evergreen_runtime::client::Keys::Config("monitor.client".into()),
    )?;
    let registry = channel(&client, "registry_url", &config.registry_url)?;
    let trainer = if config.trainer_url.is_empty() {
        None
    } else {
        Some(channel(&client, "trainer_url", &config.trainer_url)?)
    };
    let (actions_tx, mut actions_rx) = tokio::sync::mpsc::unbounded_channel();
    let persist_every = Duration::from_millis(config.persist_ms);
    let monitor = Arc::new(service::Monitor::open(
        config, registry, trainer, actions_tx,
    )?);
    metrics::register(&shell.metrics, &monitor);

    // One action at a time, in the order the breaches were found.
    let m = monitor.clone();
    let actor = tokio::spawn(async move {
        while let Some(c) = actions_rx.recv().await {
            m.act(c).await;
        }
    });
    // Time-based window closing and periodic persistence.
    let m = monitor.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut persist = tokio::time::interval(persist_every);
        loop {
            tokio::select! {
                _ = tick.tick() => m.tick(service::now()),
                _ = persist.tick() => {
                    if let Err(e) = m.persist() {
                        tracing::error!(error = %e, "cannot persist window state");
                    }
                }
            }
        }
    });

    shell
        .health
        .set_serving::<MonitorServer<MonitorGrpc>>()
        .await;
    let mut routes = RoutesBuilder::default();
    routes.add_service(MonitorGrpc::server(monitor.clone()));
    let m = Arc::downgrade(&monitor); // weak: the database closes when `run` ends
    routes.add_service(evergreen_runtime::status::service("monitor", move || {
        Ok(m.upgrade()
            .ok_or_else(|| anyhow::anyhow!("stopping"))?
            .holdings())
    }));
    tracing::info!(addr = %listener.local_addr()?, "monitor serving");
    let m = monitor.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = m.stopping.send(true);
    };
    let served = evergreen_runtime::serve(&shell, listener, routes, shutdown).await;

    ticker.abort();
    actor.abort();
    // Wait for both, so that every handle on the database is gone when
    // `run` returns (a restart in the same process reopens it).
    let _ = ticker.await;
    let _ = actor.await;
    // Flush what is left, then close the database whatever happened (a
    // handle dropped here instead would run sled's own final flush on this
    // task, with no bound).
    let persisted = monitor.persist().and_then(|()| monitor.persist_joins());
    if let Err(e) = &persisted {
        tracing::error!(error = %e, "cannot persist the monitor's state at shutdown");
    }
    evergreen_runtime::close_within("monitor database", monitor, evergreen_runtime::CLOSE_WITHIN)
        .await;
    persisted?;
    served
}
