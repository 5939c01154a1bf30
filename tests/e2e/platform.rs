//! Health, reflection (v1 and v1alpha) and graceful shutdown.

use evergreen_e2e::{req, Sandbox};
use futures::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn health_reports_serving_for_the_registry_service() {
    let sb = Sandbox::start().await;
    let mut health = HealthClient::new(sb.channel().await);
    for service in ["", "evergreen.v1.Registry"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_services_in_v1_and_v1alpha() {
    let sb = Sandbox::start().await;
    let channel = sb.channel().await;

    use tonic_reflection::pb::v1 as r1;
    let mut client = r1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected reflection answer {resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"evergreen.v1.Registry".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    // The describe path: the file that defines the Registry resolves, with
    // its imports.
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            r1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "evergreen.v1.Registry".into(),
            ),
        ),
    };
    let mut stream = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(resp.message_response, Some(r1::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{resp:?}"
    );

    use tonic_reflection::pb::v1alpha as ra;
    let mut client = ra::server_reflection_client::ServerReflectionClient::new(channel);
    let request = ra::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(ra::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(ra::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        resp.message_response
    else {
        panic!("unexpected v1alpha answer {resp:?}")
    };
    assert!(list
        .service
        .iter()
        .any(|s| s.name == "evergreen.v1.Registry"));
}

#[tokio::test]
async fn shutdown_is_graceful_even_with_open_watch_streams_and_state_survives() {
    let mut sb = Sandbox::start().await;
    let mut client = sb.registry().await;
    client.create_model(req::create("kept")).await.unwrap();
    let mut watch = client
        .watch(evergreen_proto::v1::WatchRequest {
            from_revision: Some(0),
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.next().await.is_some());
    // A watcher must not keep the daemon from stopping.
    tokio::time::timeout(std::time::Duration::from_secs(10), sb.stop())
        .await
        .expect("shutdown finished despite an open watch")
        .unwrap();
    sb.restart().await;
    let m = sb
        .registry()
        .await
        .get_model(evergreen_proto::v1::GetModelRequest {
            name: "kept".into(),
        })
        .await;
    assert_eq!(m.unwrap().into_inner().name, "kept");
}
