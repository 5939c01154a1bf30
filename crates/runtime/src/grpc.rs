//! Serving a daemon's gRPC routes together with the standard
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha).

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

/// Serves `routes` (the daemon's own services plus its health service) and
/// reflection on `listener` until `shutdown` resolves, then drains in-flight
/// calls and returns.
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
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .max_concurrent_streams(shell.limits.max_concurrent_streams)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("grpc server failed")
}
