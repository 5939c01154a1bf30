//! Evergreen's trainer daemon: reads a CSV, preprocesses, trains (decision
//! tree, random forest, logistic and linear regression), cross-validates and
//! searches hyperparameters, evaluates, and registers a reproducible model
//! version with its metrics, lineage and reference profile.
//!
//! Code map: `data` (CSV → typed columns), `spec` (request validation and
//! the stored recipe), `train` (the computation), `jobs` (queue, cancel,
//! persistence, registration, retrain), `labeled` (labeled rows appended to
//! a retrain's data), `registry` (client side of the registry
//! contract), `grpc` (the tonic adapter), `config`, `error`.

pub mod config;
pub mod data;
pub mod error;
pub mod grpc;
pub mod jobs;
pub mod labeled;
pub mod metrics;
pub mod registry;
pub mod spec;
pub mod train;

use std::future::Future;

use evergreen_proto::v1::trainer_server::TrainerServer;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

pub use crate::config::TrainerConfig;
use crate::grpc::TrainerGrpc;

/// Runs the trainer on `listener` until `shutdown` resolves.
pub async fn run(
    config: TrainerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate()?;
    let shell = evergreen_runtime::DaemonConfig::shell(&config);
    let client = evergreen_runtime::client::Client::new(
        &config.client,
        &evergreen_runtime::client::Keys::Config("trainer.client".into()),
    )?;
    let registry = registry::Registry::connect_lazy(&client, &config.registry_url)?;
    let jobs = jobs::Jobs::open(
        &config.data_dir,
        registry,
        config.max_concurrent_jobs,
        config.max_queued_jobs,
        config.s3.clone(),
        config.dataset_dirs()?,
    )?;
    metrics::register(&shell.metrics, &jobs);
    shell
        .health
        .set_serving::<TrainerServer<TrainerGrpc>>()
        .await;
    let mut routes = RoutesBuilder::default();
    routes.add_service(TrainerGrpc::server(
        jobs.clone(),
        shell.limits.max_message_bytes,
    ));
    let j = std::sync::Arc::downgrade(&jobs); // weak: `run` waits for the last strong one
    routes.add_service(evergreen_runtime::status::service("trainer", move || {
        j.upgrade()
            .ok_or_else(|| anyhow::anyhow!("stopping"))?
            .holdings()
    }));
    tracing::info!(addr = %listener.local_addr()?, registry = %config.registry_url, "trainer serving");
    let j = jobs.clone();
    let signal = async move {
        shutdown.await;
        // Jobs are cancelled as the drain begins (nothing is registered),
        // so their progress streams end saying so instead of holding the
        // drain until the grace period runs out.
        tokio::spawn(async move { j.shutdown().await });
    };
    let served = evergreen_runtime::serve(&shell, listener, routes, signal).await;
    jobs.shutdown().await;
    // Job and stream tasks hold the job database; wait for them to let go so
    // that a restart in the same process can reopen it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::sync::Arc::strong_count(&jobs) > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    evergreen_runtime::close_within("trainer database", jobs, evergreen_runtime::CLOSE_WITHIN)
        .await;
    tracing::info!("trainer stopped");
    served
}
