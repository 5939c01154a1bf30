//! Evergreen's prediction server: serves every model's production alias (and
//! whatever else is configured or asked for), follows the registry's Watch
//! stream to hot-swap a model the moment it is promoted, splits traffic by
//! the model's policy (canary weights, shadow), and speaks both its own
//! `evergreen.v1.Predictor` API and the Open Inference Protocol V2.
//!
//! Code map: `catalog` (the immutable snapshot requests resolve against),
//! `syncer` (registry → catalog: list, watch, load, swap), `serve` (route,
//! score, log, shadow), `log` (prediction log to the monitor), `grpc`
//! (Predictor adapter, `to_status`), `v2` (Open Inference Protocol
//! adapter), `config`, `error`.

pub mod catalog;
pub mod config;
pub mod error;
pub mod grpc;
pub mod log;
pub mod metrics;
pub mod serve;
pub mod syncer;
pub mod v2;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use evergreen_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use evergreen_proto::v1::predictor_server::PredictorServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::service::RoutesBuilder;

pub use crate::config::ServerConfig;
use crate::grpc::PredictorGrpc;
use crate::v2::V2Grpc;

/// A lazily connected channel to the daemon at `url` (config key
/// `server.{what}`), TLS and token per `[server.client]`.
fn lazy_channel(
    client: &evergreen_runtime::client::Client,
    url: &str,
    what: &str,
) -> anyhow::Result<evergreen_runtime::client::Channel> {
    let endpoint = client
        .endpoint(&format!("server.{what}"), url)?
        .connect_timeout(Duration::from_secs(3));
    Ok(client.lazy(endpoint))
}

/// Runs the server on `listener` until `shutdown` resolves. Health reports
/// NOT_SERVING until the initial catalog is loaded.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate()?;
    let shell = evergreen_runtime::DaemonConfig::shell(&config);
    let config = Arc::new(config);
    let catalog = Arc::new(ArcSwap::from_pointee(catalog::Catalog::default()));
    let client = evergreen_runtime::client::Client::new(
        &config.client,
        &evergreen_runtime::client::Keys::Config("server.client".into()),
    )?;
    let registry = lazy_channel(&client, &config.registry_url, "registry_url")?;
    let (log, log_task) = if config.monitor_url.is_empty() {
        (None, None)
    } else {
        let (log, task) = log::LogShipper::start(
            lazy_channel(&client, &config.monitor_url, "monitor_url")?,
            &config.log,
        );
        (Some(log), Some(task))
    };
    let (on_demand_tx, on_demand_rx) = mpsc::channel(64);
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let syncer = syncer::Syncer::new(
        registry,
        catalog.clone(),
        config.clone(),
        ready_tx,
        metrics::SyncMetrics::register(&shell.metrics),
    );
    let sync_task = tokio::spawn(syncer.run(on_demand_rx));
    let server = Arc::new(serve::Server::new(
        catalog.clone(),
        config.clone(),
        on_demand_tx,
        log,
    ));
    metrics::register_state(&shell.metrics, catalog, &server);

    let health_reporter = shell.health.clone();
    health_reporter
        .set_not_serving::<PredictorServer<PredictorGrpc>>()
        .await;
    health_reporter
        .set_not_serving::<GrpcInferenceServiceServer<V2Grpc>>()
        .await;
    health_reporter
        .set_service_status(
            "",
            evergreen_runtime::tonic_health::ServingStatus::NotServing,
        )
        .await;
    tokio::spawn(async move {
        if ready_rx.wait_for(|r| *r).await.is_ok() {
            health_reporter
                .set_serving::<PredictorServer<PredictorGrpc>>()
                .await;
            health_reporter
                .set_serving::<GrpcInferenceServiceServer<V2Grpc>>()
                .await;
            health_reporter
                .set_service_status("", evergreen_runtime::tonic_health::ServingStatus::Serving)
                .await;
        }
    });

    let mut routes = RoutesBuilder::default();
    routes
        .add_service(PredictorGrpc::server(server.clone()))
        .add_service(V2Grpc::server(server.clone()));
    let c = server.catalog.clone();
    routes.add_service(evergreen_runtime::status::service("server", move || {
        Ok(c.load().holdings())
    }));
    tracing::info!(addr = %listener.local_addr()?, registry = %config.registry_url, "server listening (NOT_SERVING until models are loaded)");
    let served = evergreen_runtime::serve(&shell, listener, routes, shutdown).await;
    drop(server); // closes the on-demand channel: the syncer stops
    sync_task.abort();
    // The prediction log's sender ends when the last handle is gone (shadow
    // scorings may hold one briefly): what was queued reaches the monitor.
    if let Some(task) = log_task {
        if tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .is_err()
        {
            tracing::warn!("the prediction log did not flush within 10 s");
        }
    }
    tracing::info!("server stopped");
    served
}
