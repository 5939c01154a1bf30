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

/// How long [`close_within`] waits for a daemon's state to close.
pub const CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Drops `state` (the last handle on a daemon's database) on a thread of
/// its own and waits for that at most `within`. sled 0.34 flushes again
/// when its last handle goes, and that flush has been seen to block forever
/// (a sled 0.34 bug: it waits for a buffer no thread will write). Every
/// daemon flushes its state itself before this, so a close that does not
/// finish is logged and `run` returns instead of never returning; the
/// stuck thread holds the database's file lock until the process exits.
pub async fn close_within<T: Send + 'static>(
    what: &'static str,
    state: T,
    within: std::time::Duration,
) {
    let (done, closed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("close {what}"))
        .spawn(move || {
            drop(state);
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        // The closure (and the state) is dropped here, on this thread.
        tracing::warn!(what, error = %e, "no thread to close on; closed inline");
        return;
    }
    if tokio::time::timeout(within, closed).await.is_err() {
        tracing::error!(
            what,
            secs = within.as_secs(),
            "the database did not close in time (its final flush is stuck); it was flushed before, so nothing is lost — exiting without waiting for it"
        );
    }
}

#[cfg(test)]
mod close_tests {
    use super::*;
    use std::time::{Duration, Instant};

    struct SlowDrop(Duration, std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for SlowDrop {
        fn drop(&mut self) {
            std::thread::sleep(self.0);
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_close_that_hangs_is_given_up_on_and_one_that_ends_is_awaited() {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        close_within(
            "quick",
            SlowDrop(Duration::from_millis(50), flag.clone()),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            flag.load(std::sync::atomic::Ordering::SeqCst),
            "awaited to the end"
        );

        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t0 = Instant::now();
        close_within(
            "stuck",
            SlowDrop(Duration::from_secs(3), flag.clone()),
            Duration::from_millis(200),
        )
        .await;
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(
            !flag.load(std::sync::atomic::Ordering::SeqCst),
            "not waited for"
        );
    }
}
