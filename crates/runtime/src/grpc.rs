//! Serving a daemon's gRPC routes together with the standard
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha), behind
//! the per-call layer of [`crate::rpc`] (metrics, request span, limits),
//! with the metrics endpoint of [`crate::metrics`] alongside and the
//! shutdown sequence of [`crate::drain`].

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

/// Serves `routes` (the daemon's own services), `shell.health`'s health
/// service and reflection on `listener` until `shutdown` resolves, then
/// drains (see [`crate::drain`]) and returns.
pub async fn serve(
    shell: &crate::Shell,
    listener: TcpListener,
    mut routes: RoutesBuilder,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(evergreen_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection v1")?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(evergreen_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection v1alpha")?;
    routes.add_service(v1).add_service(v1alpha);
    shell.health.add_to(&mut routes);

    let grpc_addr = listener.local_addr()?;
    // TLS and bearer-token auth (crate::tls, crate::auth).
    let security = crate::auth::Security::prepare(shell, grpc_addr)?;
    // Tokens-file changes take effect while serving; stops with serve().
    let _reloading = security.auth.reload();
    let _metrics = crate::metrics::start(shell, grpc_addr).await?;
    let drain = crate::drain::Drain::new(shell);
    let incoming = drain.incoming(TcpIncoming::from(listener).with_nodelay(Some(true)));
    let (began_tx, began_rx) = tokio::sync::oneshot::channel();
    let health = shell.health.clone();
    let delay = Duration::from_millis(shell.shutdown_delay_ms);
    let name = shell.name;
    let signal = async move {
        shutdown.await;
        let _ = began_tx.send(tokio::time::Instant::now());
        health.drain().await;
        tracing::info!(
            daemon = name,
            delay_ms = delay.as_millis() as u64,
            "shutting down: health is NOT_SERVING"
        );
        tokio::time::sleep(delay).await;
        health.close_watches().await;
        tracing::info!(
            daemon = name,
            "listener closed; waiting for in-flight calls"
        );
    };
    let layer = crate::rpc::RpcLayer::new(shell);
    let mut builder = Server::builder();
    if shell.limits.keepalive_seconds > 0 {
        let every = Duration::from_secs(shell.limits.keepalive_seconds);
        builder = builder
            .http2_keepalive_interval(Some(every))
            .http2_keepalive_timeout(Some(every));
    }
    if let Some(tls) = security.tls {
        builder = builder.tls_config(tls).context("configuring TLS")?;
    }
    let server = builder
        .max_concurrent_streams(shell.limits.max_concurrent_streams)
        // Outermost first: RPC metrics also count calls auth refuses.
        .layer(layer.clone())
        .layer(security.auth)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, signal);
    let began = async move {
        match began_rx.await {
            Ok(t) => t,
            // The server ended without a signal: nothing to time.
            Err(_) => std::future::pending().await,
        }
    };
    let served = drain.run(server, began).await.context("grpc server failed");
    // Calls closed by force end on their own tasks: wait for them to let go
    // of the daemon's state, so that it can close (and restart in-process).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while layer.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if layer.in_flight() > 0 {
        tracing::warn!(
            daemon = name,
            calls = layer.in_flight(),
            "calls still alive 5 s after the forced close"
        );
    }
    served
}
