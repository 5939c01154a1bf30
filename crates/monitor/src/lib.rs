//! Evergreen's monitor (issue #5, in progress): receives the prediction log
//! from servers and measures data drift per feature against each version's
//! reference profile, from binned counts in O(bins) memory per feature.
//!
//! Code map: `drift` (statistics), `special` (p-value functions), `window`
//! (a version's binned live window), `service` (ingest and reports),
//! `grpc` (the tonic adapter), `config`.
//!
//! Not yet (see the issue): delayed labels and realized performance,
//! confidence-based estimation, tumbling/time windows and their
//! persistence, prediction drift, policies and the retrain / rollback /
//! retire signals.

pub mod config;
pub mod drift;
pub mod grpc;
pub mod service;
pub mod special;
pub mod window;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use evergreen_proto::v1::monitor_server::MonitorServer;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic::transport::Channel;

pub use crate::config::MonitorConfig;
use crate::grpc::MonitorGrpc;

/// Runs the monitor on `listener` until `shutdown` resolves.
pub async fn run(
    config: MonitorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate()?;
    let registry = Channel::from_shared(config.registry_url.clone())
        .map_err(|e| anyhow::anyhow!("invalid monitor.registry_url: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect_lazy();
    let monitor = Arc::new(service::Monitor::new(registry, config.drift_share));
    let (health_reporter, health) = evergreen_runtime::tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<MonitorServer<MonitorGrpc>>()
        .await;
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(health)
        .add_service(MonitorGrpc::server(monitor));
    tracing::info!(addr = %listener.local_addr()?, "monitor serving");
    evergreen_runtime::serve(listener, routes, shutdown).await
}
