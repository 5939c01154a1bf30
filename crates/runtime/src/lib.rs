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

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C). The
/// handlers are installed when this is called (inside a runtime), not when
/// the future is first polled: a signal that arrives while the daemon is
/// still starting stops it cleanly instead of killing the process.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = recv(int.as_mut()) => tracing::info!("received SIGINT, shutting down"),
                _ = recv(term.as_mut()) => tracing::info!("received SIGTERM, shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("received Ctrl-C, shutting down");
    }
}
