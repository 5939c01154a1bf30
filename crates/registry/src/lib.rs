//! Evergreen's registry daemon: models, atomically numbered versions,
//! aliases moved by compare-and-set, lineage, an audit trail and a resumable
//! Watch stream, on sled. Artifacts are opaque, content-addressed bytes.
//!
//! Code map: `store` (sled + the single writer), `watch` (fan-out to
//! watchers), `artifacts` (content-addressed blobs: inline in sled, in a
//! directory or in S3), `service` (the operations), `archive` (archive to S3 or a directory, and restore),
//! `phaseout` (gradual phase-out schedules and their
//! scheduler), `retention` (keep K active, archive after N seconds),
//! `monitor` (its health checks), `grpc` (the tonic adapter),

//! `config`, `names`, `error`.

pub mod archive;
pub mod artifacts;
pub mod config;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod monitor;
pub mod names;
pub mod phaseout;
pub mod retention;
pub mod service;
pub mod store;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use evergreen_proto::v1::registry_server::RegistryServer;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

pub use crate::config::RegistryConfig;
use crate::grpc::RegistryGrpc;

/// Runs the registry on `listener` until `shutdown` resolves.
pub async fn run(
    config: RegistryConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate()?;
    let shell = evergreen_runtime::DaemonConfig::shell(&config);
    let store = Arc::new(store::Store::open(
        &config.data_dir,
        store::StoreOptions {
            history: config.watch.history,
            watch_buffer: config.watch.buffer,
        },
    )?);
    let files =
        artifacts::LocalDirStore::open(&config.data_dir.join("artifacts")).with_context(|| {
            format!(
                "cannot open artifact dir under {}",
                config.data_dir.display()
            )
        })?;
    let large: Arc<dyn artifacts::ArtifactStore> = if config.artifacts.s3.enabled() {
        let s3 = artifacts::S3ArtifactStore::connect(
            &config.artifacts.s3,
            "registry.artifacts.s3",
            &config.data_dir.join("tmp"),
            files,
        )
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
        tracing::info!(store = %config.artifacts.s3.uri("artifacts/"), "artifacts above inline_artifact_bytes go to S3");
        Arc::new(s3)
    } else {
        Arc::new(files)
    };
    let artifacts = Arc::new(artifacts::TieredStore::new(
        store.blobs(),
        config.inline_artifact_bytes as usize,
        large,
    ));
    let client = evergreen_runtime::client::Client::new(
        &config.client,
        &evergreen_runtime::client::Keys::Config("registry.client".into()),
    )?;
    let monitor = monitor::channel(&client, &config.monitor_url)?;
    let archiver = Arc::new(archive::Archiver::new(
        store.clone(),
        artifacts.clone(),
        archive::Target::new(&config.archive.s3, &config.archive_dir()).await,
        monitor.clone(),
        config.data_dir.join("tmp"),
    ));
    let registry = Arc::new(service::Registry::new(
        store.clone(),
        artifacts,
        config.max_artifact_bytes,
    ));
    let phaseouts = Arc::new(phaseout::Phaseouts::new(
        store.clone(),
        monitor::HealthCheck::new(&config.monitor_url, monitor),
    ));
    // The phase-out scheduler: stopped by the shutdown signal, awaited
    // before the store closes.
    let (stop_scheduler, stopped) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(phaseouts.clone().run(stopped.clone()));
    let retention = Arc::new(retention::Retention::new(
        registry.clone(),
        archiver.clone(),
        config.retention.clone(),
    ));
    let retention = tokio::spawn(retention.run(stopped));

    metrics::register(&shell.metrics, &store);
    shell
        .health
        .set_serving::<RegistryServer<RegistryGrpc>>()
        .await;
    let mut routes = RoutesBuilder::default();
    routes.add_service(RegistryGrpc::server(
        registry.clone(),
        phaseouts,
        archiver,
        shell.limits.max_message_bytes,
    ));
    let r = Arc::downgrade(&registry); // weak: the store closes when `run` ends
    routes.add_service(evergreen_runtime::status::service("registry", move || {
        Ok(r.upgrade()
            .ok_or_else(|| anyhow::anyhow!("stopping"))?
            .holdings()?)
    }));

    let hub = store.hub().clone();
    let signal = async {
        shutdown.await;
        let _ = stop_scheduler.send(true);
        hub.close(); // ends watch streams so the drain can finish
    };
    tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "registry serving");
    let served = evergreen_runtime::serve(&shell, listener, routes, signal).await;
    let _ = stop_scheduler.send(true);
    if let Err(e) = retention.await {
        tracing::error!(error = %e, "the retention task panicked");
    }
    if let Err(e) = scheduler.await {
        tracing::error!(error = %e, "the phase-out scheduler panicked");
    }
    drop(registry);
    store.close();
    evergreen_runtime::close_within("registry database", store, evergreen_runtime::CLOSE_WITHIN)
        .await;
    tracing::info!("registry stopped");
    served
}
