//! Operations: every daemon's `/metrics`, `/healthz`, `/readyz`; the
//! request id from the caller to the monitor; limits; graceful shutdown.

use std::time::Duration;

use evergreen_e2e::{dataset, http_get, metric, req, Sandbox};
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    Feedback, GetReportRequest, ListModelsRequest, ListVersionsRequest, PredictRequest,
    PredictionLog, PredictionLogBatch, RecordFeedbackRequest, SetAliasRequest, WatchRequest,
    WindowKind,
};
use tonic::Code;

use crate::closed_loop::{load, to_row, train, until};

const MODEL: &str = "bc";

/// Sum of every sample of `name` (any labels) in a Prometheus page.
fn total(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Trains "bc", points production at it and waits until the server
/// answers with it.
async fn serving(sb: &Sandbox) -> u64 {
    let v = train(sb, MODEL, &dataset("breast_cancer.csv")).await;
    sb.registry()
        .await
        .set_alias(SetAliasRequest {
            model: MODEL.into(),
            alias: "production".into(),
            version: v,
            ..Default::default()
        })
        .await
        .unwrap();
    let row = load()[0].0.clone();
    until("the server serves bc", || async {
        let r = sb
            .predictor()
            .await
            .predict(PredictRequest {
                model: MODEL.into(),
                rows: vec![to_row(&row)],
                request_id: String::new(),
            })
            .await
            .ok()?;
        (r.into_inner().version == v).then_some(())
    })
    .await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_daemon_serves_metrics_health_and_readiness() {
    let sb = Sandbox::builder()
        .trainer()
        .monitor_with(|c| c.window_rows = 50)
        .server(|_| {})
        .start()
        .await;
    let v = serving(&sb).await;
    let server = sb.server_addr.unwrap();
    let predict = r#"grpc_service="evergreen.v1.Predictor",grpc_method="Predict""#;
    let not_found = format!(r#"grpc_server_handled_total{{{predict},grpc_code="NOT_FOUND"}}"#);
    // Asked before it was loaded, the server may have said NOT_FOUND.
    let not_found_before = metric(&sb.scrape(server).await, &not_found).unwrap_or(0.0);
    let data = load();
    let mut p = sb.predictor().await;
    for (x, _) in data.iter().take(60) {
        p.predict(PredictRequest {
            model: MODEL.into(),
            rows: vec![to_row(x)],
            request_id: String::new(),
        })
        .await
        .unwrap();
    }
    let e = p
        .predict(PredictRequest {
            model: "nosuch".into(),
            rows: vec![to_row(&data[0].0)],
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // The server: RPCs by method and code, latency, what is loaded.
    let page = sb.scrape(server).await;
    let ok = metric(
        &page,
        &format!(r#"grpc_server_handled_total{{{predict},grpc_code="OK"}}"#),
    )
    .unwrap();
    assert!(ok >= 60.0, "{page}");
    let not_found = metric(&page, &not_found).unwrap();
    assert_eq!(not_found, not_found_before + 1.0, "{page}");
    let timed = metric(
        &page,
        &format!("grpc_server_handling_seconds_count{{{predict}}}"),
    )
    .unwrap();
    assert_eq!(timed, ok + not_found, "every call is timed: {page}");
    assert!(
        page.contains(&format!(
            "grpc_server_handling_seconds_bucket{{le=\"0.005\",{predict}}}"
        )) || page.contains(&format!(
            "grpc_server_handling_seconds_bucket{{{predict},le=\"0.005\"}}"
        )),
        "a latency histogram: {page}"
    );
    assert_eq!(
        metric(
            &page,
            &format!(r#"evergreen_server_models_loaded{{model="bc",version="{v}"}}"#)
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"evergreen_server_alias_version{model="bc",alias="production"}"#
        ),
        Some(v as f64),
        "{page}"
    );
    assert!(metric(&page, "process_cpu_seconds_total").unwrap() > 0.0);
    assert!(metric(&page, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(
        page.contains(r#"evergreen_build_info{daemon="server""#),
        "{page}"
    );
    // The prediction log drains to the monitor.
    until("the prediction log is sent", || async {
        let page = sb.scrape(server).await;
        let sent = metric(&page, "evergreen_server_prediction_log_sent_total")?;
        (sent >= 60.0
            && metric(&page, "evergreen_server_prediction_log_queue") == Some(0.0)
            && metric(&page, "evergreen_server_prediction_log_dropped_total") == Some(0.0))
        .then_some(())
    })
    .await;

    // The registry: what it holds, its watchers (the server), its events.
    let page = sb.scrape(sb.registry_addr).await;
    assert_eq!(
        metric(&page, "evergreen_registry_models"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, r#"evergreen_registry_versions{status="ACTIVE"}"#),
        Some(1.0),
        "{page}"
    );
    assert!(metric(&page, "evergreen_registry_watchers").unwrap() >= 1.0);
    assert_eq!(
        metric(
            &page,
            r#"evergreen_registry_events_total{kind="VERSION_REGISTERED"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert!(
        metric(
            &page,
            r#"evergreen_streams_open{grpc_service="evergreen.v1.Registry",grpc_method="Watch"}"#
        )
        .unwrap()
            >= 1.0,
        "{page}"
    );

    // The trainer: one job, succeeded, timed; none running.
    let page = sb.scrape(sb.trainer_addr.unwrap()).await;
    assert_eq!(
        metric(
            &page,
            r#"evergreen_trainer_jobs_finished_total{outcome="succeeded"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            r#"evergreen_trainer_job_duration_seconds_count{outcome="succeeded"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, r#"evergreen_trainer_jobs{state="running"}"#),
        Some(0.0)
    );

    // The monitor: records in, a window closed with its drift share.
    let monitor = sb.monitor_addr.unwrap();
    let page = until("the monitor closed a window", || async {
        let page = sb.scrape(monitor).await;
        metric(
            &page,
            &format!(r#"evergreen_monitor_drifted_share{{model="bc",version="{v}"}}"#),
        )?;
        Some(page)
    })
    .await;
    assert!(
        metric(
            &page,
            r#"evergreen_monitor_records_total{outcome="accepted"}"#
        )
        .unwrap()
            >= 60.0,
        "{page}"
    );
    assert!(total(&page, "grpc_server_started_total") >= 1.0);

    // Liveness and readiness of all four; junk paths are named.
    for addr in [sb.registry_addr, sb.trainer_addr.unwrap(), server, monitor] {
        let m = sb.metrics_addr(addr).await;
        assert_eq!(http_get(m, "/healthz").await.0, 200);
        assert_eq!(http_get(m, "/readyz").await.0, 200);
        let (code, body) = http_get(m, "/metrix").await;
        assert_eq!(code, 404);
        assert!(body.contains("/metrics"), "{body}");
    }
}

#[tokio::test]
async fn a_server_that_has_not_loaded_its_models_is_live_but_not_ready() {
    // The registry is down: the server cannot list it.
    let nowhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = evergreen_server::ServerConfig {
        metrics_listen: "127.0.0.1:0".into(),
        registry_url: format!("http://{nowhere}"),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(evergreen_server::run(config, listener, async {
        let _ = stopped.await;
    }));
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        evergreen_runtime::metrics_addr(addr),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(http_get(m, "/healthz").await.0, 200);
    let (code, body) = http_get(m, "/readyz").await;
    assert_eq!((code, body.trim()), (503, "not ready"));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_follows_a_prediction_from_the_caller_to_the_monitor() {
    let sb = Sandbox::builder()
        .trainer()
        .monitor()
        .server(|_| {})
        .start()
        .await;
    serving(&sb).await;
    let (row, label) = load()[0].clone();
    let mut p = sb.predictor().await;
    let ask = |meta: Option<&str>, body: &str| {
        let mut r = tonic::Request::new(PredictRequest {
            model: MODEL.into(),
            rows: vec![to_row(&row)],
            request_id: body.into(),
        });
        if let Some(m) = meta {
            r.metadata_mut().insert("x-request-id", m.parse().unwrap());
        }
        r
    };
    let id_of = |md: &tonic::metadata::MetadataMap| {
        md.get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
    };

    // From the caller's metadata, returned in the response metadata.
    let r = p.predict(ask(Some("abc"), "")).await.unwrap();
    assert_eq!(id_of(r.metadata()).as_deref(), Some("abc"));
    assert_eq!(r.get_ref().request_id, "abc");
    // Metadata beats the body; the body is used without metadata; with
    // neither, the server makes one and says which.
    let r = p.predict(ask(Some("meta-1"), "body-1")).await.unwrap();
    assert_eq!(r.get_ref().request_id, "meta-1");
    let r = p.predict(ask(None, "body-2")).await.unwrap();
    assert_eq!(id_of(r.metadata()).as_deref(), Some("body-2"));
    let r = p.predict(ask(None, "")).await.unwrap();
    let made = r.get_ref().request_id.clone();
    assert!(!made.is_empty());
    assert_eq!(id_of(r.metadata()), Some(made));
    // An error carries it too.
    let mut bad = ask(Some("err-1"), "");
    bad.get_mut().model = "nosuch".into();
    let e = p.predict(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(id_of(e.metadata()).as_deref(), Some("err-1"));

    // The monitor got the prediction under that id: its label matches.
    let mut m = sb.monitor().await;
    until("the monitor labels request abc", || {
        let label = label.clone();
        let mut m = m.clone();
        async move {
            let r = m
                .record_feedback(RecordFeedbackRequest {
                    feedback: vec![Feedback {
                        request_id: "abc".into(),
                        label,
                        ..Default::default()
                    }],
                })
                .await
                .ok()?
                .into_inner();
            (r.matched == 1).then_some(())
        }
    })
    .await;
    // And not under an id it never saw.
    let r = m
        .record_feedback(RecordFeedbackRequest {
            feedback: vec![Feedback {
                request_id: "never-sent".into(),
                label: label.clone(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.matched, r.unknown), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_over_max_message_bytes_is_resource_exhausted_naming_the_key() {
    let sb = Sandbox::builder()
        .registry(|c| c.limits.max_message_bytes = 2 << 20)
        .trainer()
        .server(|c| c.limits.max_message_bytes = 4096)
        .start()
        .await;
    serving(&sb).await;

    // The server: a 100-row request is ~35 KB, over 4096 bytes.
    let data = load();
    let mut p = sb.predictor().await;
    let e = p
        .predict(PredictRequest {
            model: MODEL.into(),
            rows: data.iter().take(100).map(|(x, _)| to_row(x)).collect(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    for part in [
        "the limit is 4096 bytes",
        "server.limits.max_message_bytes",
        "EVERGREEN_SERVER__LIMITS__MAX_MESSAGE_BYTES",
    ] {
        assert!(e.message().contains(part), "{part}: {}", e.message());
    }
    // ... and keeps serving requests under the limit.
    p.predict(PredictRequest {
        model: MODEL.into(),
        rows: vec![to_row(&data[0].0)],
        request_id: String::new(),
    })
    .await
    .unwrap();
    let page = sb.scrape(sb.server_addr.unwrap()).await;
    assert_eq!(
        metric(
            &page,
            r#"grpc_server_handled_total{grpc_service="evergreen.v1.Predictor",grpc_method="Predict",grpc_code="RESOURCE_EXHAUSTED"}"#
        ),
        Some(1.0),
        "{page}"
    );

    // The registry: one 3 MiB chunk is over its 2 MiB limit, while a 5 MiB
    // artifact in 1 MiB chunks goes through (uploads are chunked).
    let mut r = sb.registry().await;
    r.create_model(req::create("big")).await.unwrap();
    let artifact = vec![7u8; 5 << 20];
    let e = r
        .register_version(tokio_stream::iter(req::register(
            req::header("big"),
            &artifact[..3 << 20],
            3 << 20,
        )))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("registry.limits.max_message_bytes")
            && e.message().contains(&(2 << 20).to_string()),
        "{}",
        e.message()
    );
    let v = r
        .register_version(tokio_stream::iter(req::register(
            req::header("big"),
            &artifact,
            1 << 20,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v.version, v.artifact.unwrap().size_bytes), (1, 5 << 20));
}

#[tokio::test]
async fn long_lived_streams_beyond_max_concurrent_streams_are_resource_exhausted() {
    let sb = Sandbox::builder()
        .registry(|c| c.limits.max_concurrent_streams = 2)
        .start()
        .await;
    // Each watch on a connection of its own: the per-daemon cap is hit,
    // not HTTP/2's per-connection one.
    let watch = || async {
        sb.registry()
            .await
            .watch(WatchRequest::default())
            .await
            .map(|r| r.into_inner())
    };
    let w1 = watch().await.unwrap();
    let _w2 = watch().await.unwrap();
    let e = watch().await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    for part in [
        "2 long-lived streams",
        "registry.limits.max_concurrent_streams",
        "EVERGREEN_REGISTRY__LIMITS__MAX_CONCURRENT_STREAMS",
    ] {
        assert!(e.message().contains(part), "{part}: {}", e.message());
    }
    // Other calls are still served.
    sb.registry()
        .await
        .create_model(req::create("m"))
        .await
        .unwrap();
    let page = sb.scrape(sb.registry_addr).await;
    assert_eq!(
        metric(
            &page,
            r#"evergreen_streams_open{grpc_service="evergreen.v1.Registry",grpc_method="Watch"}"#
        ),
        Some(2.0),
        "{page}"
    );
    // A watcher that leaves frees its slot.
    drop(w1);
    until("a watch slot is free again", || async {
        watch().await.ok()
    })
    .await;
}

/// Beyond `limits.max_connections`, a new connection is closed at once
/// (UNAVAILABLE for its caller); the open ones keep working, and a slot
/// freed by a client that leaves is taken by the next.
#[tokio::test]
async fn connections_beyond_max_connections_are_refused_and_open_ones_keep_working() {
    let sb = Sandbox::builder()
        .registry(|c| c.limits.max_connections = 2)
        .start()
        .await;
    // A connection of its own for each client.
    let dial = || async {
        tonic::transport::Endpoint::from_shared(sb.registry_url())
            .unwrap()
            .connect()
            .await
            .map(RegistryClient::new)
            .map_err(|e| format!("connect: {e}"))
    };
    let list = |mut c: RegistryClient<tonic::transport::Channel>| async move {
        match c.list_models(ListModelsRequest::default()).await {
            Ok(_) => Ok(c),
            Err(e) => Err(format!("{:?}: {}", e.code(), e.message())),
        }
    };
    let a = list(dial().await.unwrap()).await.expect("first connection");
    let b = list(dial().await.unwrap())
        .await
        .expect("second connection");
    // The third is closed as soon as it is accepted: the dial or the call
    // fails, as UNAVAILABLE.
    let third = match dial().await {
        Err(e) => e,
        Ok(c) => list(c)
            .await
            .map(|_| ())
            .expect_err("a third connection was served"),
    };
    eprintln!("the third connection: {third}");
    assert!(
        third.starts_with("connect") || third.starts_with("Unavailable"),
        "{third}"
    );
    // The open ones are unaffected.
    let a = list(a).await.expect("the first still works");
    let _b = list(b).await.expect("the second still works");
    // One leaves; the next caller gets its slot.
    drop(a);
    until("a freed slot is taken", || async {
        list(dial().await.ok()?).await.ok()
    })
    .await;
}

/// A watcher that hangs without closing (its process frozen: the kernel
/// still acknowledges TCP, nothing answers HTTP/2) does not keep its
/// long-lived stream slot: the daemon's keep-alive ping goes unanswered,
/// the connection is closed, and the slot is free for the next caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_watcher_is_found_by_keepalive_and_its_stream_slot_freed() {
    let sb = Sandbox::builder()
        .registry(|c| {
            c.limits.max_concurrent_streams = 1;
            c.limits.keepalive_seconds = 1;
        })
        .start()
        .await;
    // The watcher runs on a runtime of its own, on a thread that then
    // blocks: its connection stays open, and nothing on it runs.
    let url = sb.registry_url();
    let (watching, frozen) = (
        tokio::sync::oneshot::channel(),
        std::sync::mpsc::channel::<()>(),
    );
    let watcher = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = rt.block_on(async {
            RegistryClient::connect(url)
                .await
                .unwrap()
                .watch(WatchRequest::default())
                .await
                .map(|r| r.into_inner())
        });
        let _ = watching.0.send(stream.is_ok());
        let _ = frozen.1.recv(); // until the test ends
        drop((stream, rt));
    });
    assert!(watching.1.await.unwrap(), "the watch opened");
    let direct = || async {
        sb.registry()
            .await
            .watch(WatchRequest::default())
            .await
            .map(|r| r.into_inner())
    };
    assert_eq!(
        direct().await.unwrap_err().code(),
        Code::ResourceExhausted,
        "the frozen watcher holds the one slot"
    );

    let t0 = std::time::Instant::now();
    let _next = until("the slot is freed", || async { direct().await.ok() }).await;
    let took = t0.elapsed();
    // One ping interval plus the ping timeout (1 s each), with slack.
    assert!(
        took > Duration::from_millis(900) && took < Duration::from_secs(10),
        "freed after {took:?}"
    );
    drop(frozen.0);
    watcher.join().unwrap();
}

/// Health `Watch` needs no token; its streams are capped apart, so callers
/// without a token cannot take the slots authenticated watches need.
#[tokio::test]
async fn health_watches_without_a_token_cannot_use_up_the_authenticated_stream_slots() {
    use evergreen_proto::v1::registry_client::RegistryClient;
    use evergreen_runtime::client::{Client, Keys};
    use evergreen_runtime::tonic_health::pb::health_client::HealthClient;
    use evergreen_runtime::tonic_health::pb::HealthCheckRequest;

    let sb = Sandbox::builder()
        .registry(|c| {
            c.limits.max_concurrent_streams = 2;
            c.auth.tokens = "reader:r1".into();
        })
        .start()
        .await;
    let url = format!("http://{}", sb.registry_addr);
    let anonymous = Client::default();
    let reader = Client::new(
        &evergreen_runtime::ClientConfig {
            token: "r1".into(),
            ..Default::default()
        },
        &Keys::Flags,
    )
    .unwrap();
    // Each stream on a connection of its own (the daemon-wide cap).
    let health_watch = || async {
        let ch = anonymous.connect("registry", &url).await.unwrap();
        HealthClient::new(ch)
            .watch(HealthCheckRequest::default())
            .await
            .map(|r| r.into_inner())
    };
    let watch = |client: &Client| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let ch = client.connect("registry", &url).await.unwrap();
            RegistryClient::new(ch)
                .watch(WatchRequest::default())
                .await
                .map(|r| r.into_inner())
        }
    };
    let h1 = health_watch().await.unwrap();
    let _h2 = health_watch().await.unwrap();
    let e = health_watch().await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    for part in [
        "already holds 2 health watches",
        "registry.limits.max_concurrent_streams",
    ] {
        assert!(e.message().contains(part), "{part}: {}", e.message());
    }
    // Without a token a registry watch is refused by auth ...
    let e = watch(&anonymous).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // ... and a reader's watches still get both slots, then hit their cap.
    let _w1 = watch(&reader).await.unwrap();
    let _w2 = watch(&reader).await.unwrap();
    let e = watch(&reader).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("already holds 2 long-lived streams"),
        "{}",
        e.message()
    );
    // A health watcher that leaves frees its slot.
    drop(h1);
    until("a health watch slot is free again", || async {
        health_watch().await.ok()
    })
    .await;
}

#[tokio::test]
async fn monitor_batches_over_max_rows_per_request_are_refused_naming_the_key() {
    let sb = Sandbox::builder()
        .monitor_with(|c| c.max_rows_per_request = 3)
        .start()
        .await;
    let mut m = sb.monitor().await;
    let labels = |n: usize| RecordFeedbackRequest {
        feedback: (0..n)
            .map(|i| Feedback {
                request_id: format!("r{i}"),
                label: "1".into(),
                ..Default::default()
            })
            .collect(),
    };
    let e = m.record_feedback(labels(4)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("4 labels") && e.message().contains("monitor.max_rows_per_request"),
        "{}",
        e.message()
    );
    let r = m.record_feedback(labels(3)).await.unwrap().into_inner();
    assert_eq!(r.unknown, 3);

    let batch = |n: usize| PredictionLogBatch {
        records: vec![PredictionLog::default(); n],
        dropped: 0,
    };
    let e = m
        .log_predictions(tokio_stream::iter(vec![batch(4)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("4 records") && e.message().contains("monitor.max_rows_per_request"),
        "{}",
        e.message()
    );
    m.log_predictions(tokio_stream::iter(vec![batch(2)]))
        .await
        .unwrap();
    assert!(sb.monitor_running());
}

/// An error for a call the server never took in: the listener was closed
/// (connection refused), or the client's connection closed (GOAWAY) while
/// the call still waited in its dispatch queue — hyper's `Canceled`
/// "connection closed" is exactly that: the request was never sent.
/// Callers retry these safely; anything else is a failure.
fn never_accepted(e: &tonic::Status) -> bool {
    let text = format!("{e:?}").to_lowercase();
    match e.code() {
        Code::Unavailable => {
            text.contains("connection refused")
                || text.contains("tcp connect error")
                || text.contains("refused_stream")
        }
        Code::Cancelled => text.contains("canceled") && text.contains("connection closed"),
        // A stream above the last one the server's GOAWAY says it took:
        // h2 fails exactly those (the ones below run to completion).
        Code::Internal => text.contains("goaway") && text.contains("no_error"),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_under_load_finishes_every_accepted_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use evergreen_proto::v1::predictor_client::PredictorClient;
    use evergreen_runtime::tonic_health::pb::health_client::HealthClient;
    use evergreen_runtime::tonic_health::pb::HealthCheckRequest;
    use evergreen_runtime::tonic_health::ServingStatus;
    use tokio::time::Instant;
    use tonic::transport::Channel;

    const DELAY: Duration = Duration::from_millis(800);
    const GRACE: Duration = Duration::from_secs(5);
    let mut sb = Sandbox::builder()
        .trainer()
        .monitor()
        .server(|c| {
            c.shutdown_delay_ms = DELAY.as_millis() as u64;
            c.shutdown_grace_seconds = GRACE.as_secs();
            c.log.queue = 1_000_000;
        })
        .start()
        .await;
    // One logged prediction (the first that succeeds).
    let v = serving(&sb).await;
    let addr = sb.server_addr.unwrap();
    let url = sb.server_url();
    let metrics = sb.metrics_addr(addr).await;
    let row = load()[0].0.clone();
    let done = Arc::new(AtomicBool::new(false));

    // Continuous load: 8 callers, each on a connection of its own.
    let mut workers = Vec::new();
    for _ in 0..8 {
        let mut p = PredictorClient::new(sb.server_channel().await);
        let (row, done) = (row.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut refused, mut failed) = (0u64, 0u64, Vec::new());
            while !done.load(Ordering::Relaxed) {
                let r = p
                    .predict(PredictRequest {
                        model: MODEL.into(),
                        rows: vec![to_row(&row)],
                        request_id: String::new(),
                    })
                    .await;
                match r {
                    Ok(_) => ok += 1,
                    Err(e) if never_accepted(&e) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => failed.push(format!("{e:?}")),
                }
            }
            (ok, refused, failed)
        }));
    }
    // Health as a load balancer sees it: a new connection per check.
    let probe = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(Instant, Option<i32>)> = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let r = async {
                    let ch = Channel::from_shared(url.clone())
                        .unwrap()
                        .connect()
                        .await
                        .ok()?;
                    let r = HealthClient::new(ch)
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .ok()?;
                    Some(r.into_inner().status)
                }
                .await;
                seen.push((Instant::now(), r));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = metric(
        &sb.scrape(addr).await,
        r#"grpc_server_handled_total{grpc_service="evergreen.v1.Predictor",grpc_method="Predict",grpc_code="OK"}"#,
    )
    .unwrap();
    assert!(before > 0.0, "the load runs");

    let t0 = Instant::now();
    let run = sb.begin_stop_server();
    // Readiness turns 503 at once, while calls are still served.
    let (code, body) = until("/readyz says 503", || async {
        let r = http_get(metrics, "/readyz").await;
        (r.0 == 503).then_some(r)
    })
    .await;
    assert!(
        t0.elapsed() < DELAY,
        "readiness flipped before the listener closed"
    );
    assert_eq!((code, body.trim()), (503, "shutting down"));
    let result = run.await.expect("the server task");
    let took = t0.elapsed();
    result.expect("run returns Ok");
    assert!(
        took >= DELAY && took < GRACE,
        "run returned after {took:?} (delay {DELAY:?}, grace {GRACE:?})"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    done.store(true, Ordering::Relaxed);

    let (mut ok, mut refused) = (0, 0);
    for w in workers {
        let (o, r, failed) = w.await.unwrap();
        assert!(failed.is_empty(), "accepted requests failed: {failed:#?}");
        ok += o;
        refused += r;
    }
    assert!(
        ok as f64 > before,
        "requests kept succeeding during the drain"
    );
    assert!(refused > 0, "calls after the close were refused, not hung");
    // The server's side of it: its log was flushed before `run` returned,
    // so every prediction answered OK (plus the first, in `serving`) is a
    // row in the monitor or a drop it was told of, exactly once. The rows
    // may span versions: this one row repeated thousands of times is
    // drift, so the monitor may signal a retrain whose gated promotion the
    // server swaps to mid-load. Each version's Long window counts its own.
    let versions = sb
        .registry()
        .await
        .list_versions(ListVersionsRequest {
            model: MODEL.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    let (mut logged, mut dropped, mut per_version) = (0, 0, Vec::new());
    for mv in versions {
        let r = sb
            .monitor()
            .await
            .get_report(GetReportRequest {
                model: MODEL.into(),
                version: mv.version,
                window: WindowKind::Long as i32,
            })
            .await;
        let report = match r {
            Ok(r) => r.into_inner(),
            Err(e) if e.code() == Code::NotFound => continue,
            Err(e) => panic!("report of {MODEL}/{}: {e:?}", mv.version),
        };
        let rows = report.drift.unwrap().rows;
        // Drops are the monitor's (per server), not a version's.
        dropped = report.health.unwrap().dropped;
        logged += rows;
        per_version.push((mv.version, rows));
    }
    eprintln!("{logged} logged {per_version:?}, {dropped} reported dropped, {ok} answered OK");
    assert!(per_version.iter().any(|(n, _)| *n == v), "{per_version:?}");
    assert_eq!(
        logged + dropped,
        1 + ok,
        "rows logged {per_version:?} + dropped ({dropped}) vs predictions answered OK (1 + {ok})"
    );

    // Health: SERVING, then NOT_SERVING while the listener still accepts,
    // then no connection; never back.
    let seen = probe.await.unwrap();
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    let first_not = seen
        .iter()
        .position(|(_, s)| *s == Some(not_serving))
        .unwrap_or_else(|| panic!("NOT_SERVING was never seen: {seen:?}"));
    let first_gone = seen
        .iter()
        .position(|(_, s)| s.is_none())
        .unwrap_or_else(|| panic!("the listener never closed: {seen:?}"));
    assert!(first_not < first_gone, "{seen:?}");
    assert!(seen[..first_not].iter().all(|(_, s)| *s == Some(serving)));
    assert!(seen[first_not..].iter().all(|(_, s)| *s != Some(serving)));
    assert!(
        seen[first_gone..].iter().all(|(_, s)| s.is_none()),
        "{seen:?}"
    );
    assert!(seen[first_not].0 >= t0 && seen[first_gone].0 >= t0 + DELAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_stream_does_not_hold_shutdown_past_the_grace_period() {
    use evergreen_proto::v1::register_version_request::Part;
    use evergreen_proto::v1::{GetModelRequest, RegisterVersionRequest};
    use tokio::time::Instant;

    let mut sb = Sandbox::builder()
        .registry(|c| c.shutdown_grace_seconds = 1)
        .start()
        .await;
    let mut r = sb.registry().await;
    r.create_model(req::create("m")).await.unwrap();
    // An upload that sends its header and then nothing, forever.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(RegisterVersionRequest {
        part: Some(Part::Header(req::header("m"))),
    })
    .await
    .unwrap();
    let stuck = tokio::spawn(async move {
        r.register_version(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    until("the upload is in", || async {
        let page = sb.scrape(sb.registry_addr).await;
        metric(
            &page,
            r#"grpc_server_started_total{grpc_service="evergreen.v1.Registry",grpc_method="RegisterVersion"}"#,
        )
    })
    .await;

    let t0 = Instant::now();
    sb.stop().await.expect("run returns Ok");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "stopped after {took:?} with a 1 s grace period"
    );
    // The stuck caller got an error rather than hanging.
    let e = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the stuck call ended")
        .unwrap()
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    drop(tx);
    // Nothing holds the data dir: the registry starts again on it.
    sb.start_registry().await;
    sb.registry()
        .await
        .get_model(GetModelRequest { name: "m".into() })
        .await
        .unwrap();
}
