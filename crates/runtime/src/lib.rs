//! How an Evergreen daemon starts and stops.
//!
//! Every daemon (registry, trainer, server, monitor) shares the same outer
//! shell: layered configuration, tracing, the standard gRPC health and
//! reflection services, Prometheus metrics, limits, and graceful shutdown
//! on SIGTERM/SIGINT. That shell
//! lives here so each daemon's crate holds only its own domain. No domain code
//! belongs in this crate.

pub mod auth;
pub mod client;
pub mod config;
pub mod daemon;
pub mod drain;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod rpc;
pub mod shell;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use config::{load_config, ConfigSources};
pub use daemon::{daemon_main, DaemonConfig, Shutdown};
pub use grpc::serve;
pub use health::Health;
pub use metrics::{metrics_addr, Metrics};
pub use shell::{AuthConfig, ClientConfig, LimitsConfig, Shell, TlsConfig};
pub use telemetry::init_tracing;
pub use {tonic_health, tonic_reflection};

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received SIGINT, shutting down"),
        _ = term => tracing::info!("received SIGTERM, shutting down"),
    }
}
