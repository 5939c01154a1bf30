//! Security end to end: mutual TLS and bearer tokens with roles on all four
//! daemons (`Sandbox::builder().secure()`), clients holding one role each,
//! and the daemons calling each other with their own tokens.

use evergreen_e2e::secure::tokens;
use evergreen_e2e::{dataset, Channel, Sandbox};
use evergreen_proto::v1::monitor_client::MonitorClient;
use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::trainer_client::TrainerClient;
use evergreen_proto::v1::{
    ArchiveRequest, DeleteModelRequest, Feedback, GetReportRequest, ListJobsRequest,
    ListModelsRequest, Policy, PredictRequest, RecordFeedbackRequest, SetAliasRequest,
    SetPolicyRequest, SetVersionStatusRequest, TrainRequest, VersionStatus, WindowKind,
};
use evergreen_runtime::client::{Client, Keys};
use evergreen_runtime::tonic_health::pb::health_client::HealthClient;
use evergreen_runtime::tonic_health::pb::HealthCheckRequest;
use evergreen_runtime::ClientConfig;
use tonic::Code;

use crate::closed_loop::{load, to_row, until};

const MODEL: &str = "sec";

/// A channel to `url` as the holder of `token` (with the CA and the client
/// certificate).
pub(crate) async fn as_role(sb: &Sandbox, url: &str, token: &str) -> Channel {
    sb.secure()
        .client(token)
        .connect("url", url)
        .await
        .expect("connect")
}

/// A client with the CA and the client certificate but no token.
pub(crate) async fn no_token(sb: &Sandbox, url: &str) -> Channel {
    let pki = &sb.secure().pki;
    Client::new(
        &ClientConfig {
            ca: pki.ca.clone(),
            cert: pki.client_cert.clone(),
            key: pki.client_key.clone(),
            ..Default::default()
        },
        &Keys::Flags,
    )
    .unwrap()
    .connect("url", url)
    .await
    .expect("connect")
}

fn assert_denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, message: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert_eq!(e.message(), message);
}

/// Trains a small tree of MODEL as the `trainer` role; the trainer daemon
/// registers it with its own token. Returns the version.
async fn train(t: &mut TrainerClient<Channel>) -> u64 {
    let request = TrainRequest {
        model: MODEL.into(),
        dataset_uri: dataset("breast_cancer.csv").display().to_string(),
        target: "target".into(),
        algorithm: "decision_tree".into(),
        params: [("max_depth".to_string(), "3".to_string())].into(),
        ..Default::default()
    };
    evergreen_e2e::train_version(t, request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_role_is_allowed_and_refused_where_it_should_be_on_all_four_daemons() {
    let sb = Sandbox::builder()
        .secure()
        .trainer()
        .monitor_with(|c| c.window_rows = 1000)
        .server(|_| {})
        .start()
        .await;
    let (reg, trn, srv) = (sb.registry_url(), sb.trainer_url(), sb.server_url());
    let mon = sb.monitor_url();

    // No token, or one nobody issued: UNAUTHENTICATED on every daemon.
    let missing = "missing bearer token: set --token or EVERGREEN_TOKEN";
    assert_denied(
        RegistryClient::new(no_token(&sb, &reg).await)
            .list_models(ListModelsRequest::default())
            .await,
        Code::Unauthenticated,
        missing,
    );
    assert_denied(
        TrainerClient::new(no_token(&sb, &trn).await)
            .list_jobs(ListJobsRequest::default())
            .await,
        Code::Unauthenticated,
        missing,
    );
    assert_denied(
        PredictorClient::new(no_token(&sb, &srv).await)
            .predict(PredictRequest::default())
            .await,
        Code::Unauthenticated,
        missing,
    );
    assert_denied(
        MonitorClient::new(no_token(&sb, &mon).await)
            .get_report(GetReportRequest::default())
            .await,
        Code::Unauthenticated,
        missing,
    );
    assert_denied(
        RegistryClient::new(as_role(&sb, &reg, "not-a-token").await)
            .list_models(ListModelsRequest::default())
            .await,
        Code::Unauthenticated,
        "unknown bearer token",
    );
    // Health stays open (probes carry no token).
    for url in [&reg, &trn, &srv, &mon] {
        HealthClient::new(no_token(&sb, url).await)
            .check(HealthCheckRequest::default())
            .await
            .unwrap_or_else(|e| panic!("health of {url} without a token: {e:?}"));
    }

    // Registry: everyone reads; writes need their role.
    let mut r_reader = RegistryClient::new(as_role(&sb, &reg, tokens::READER).await);
    let mut r_trainer = RegistryClient::new(as_role(&sb, &reg, tokens::TRAINER).await);
    let mut r_deployer = RegistryClient::new(as_role(&sb, &reg, tokens::DEPLOYER).await);
    let mut r_admin = RegistryClient::new(as_role(&sb, &reg, tokens::ADMIN).await);
    for c in [&mut r_reader, &mut r_trainer, &mut r_deployer, &mut r_admin] {
        c.list_models(ListModelsRequest::default()).await.unwrap();
    }
    assert_denied(
        r_reader
            .create_model(evergreen_e2e::req::create("scratch"))
            .await,
        Code::PermissionDenied,
        "evergreen.v1.Registry/CreateModel needs the trainer role (or admin); this token has reader",
    );
    r_trainer
        .create_model(evergreen_e2e::req::create("scratch"))
        .await
        .unwrap();
    assert_denied(
        r_deployer
            .delete_model(DeleteModelRequest {
                name: "scratch".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "evergreen.v1.Registry/DeleteModel needs the admin role; this token has deployer",
    );
    r_admin
        .delete_model(DeleteModelRequest {
            name: "scratch".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Trainer: readers look, the trainer role trains; the trainer daemon
    // registers the version with its own token.
    let mut t_reader = TrainerClient::new(as_role(&sb, &trn, tokens::READER).await);
    t_reader
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap();
    assert_denied(
        t_reader.train(TrainRequest::default()).await,
        Code::PermissionDenied,
        "evergreen.v1.Trainer/Train needs the trainer role (or admin); this token has reader",
    );
    let mut t_trainer = TrainerClient::new(as_role(&sb, &trn, tokens::TRAINER).await);
    let v1 = train(&mut t_trainer).await;

    // Promotion is the deployer's.
    let promote = |version: u64, expected: u64| SetAliasRequest {
        model: MODEL.into(),
        alias: "production".into(),
        version,
        expected_version: Some(expected),
        reason: "security e2e".into(),
    };
    assert_denied(
        r_trainer.set_alias(promote(v1, 0)).await,
        Code::PermissionDenied,
        "evergreen.v1.Registry/SetAlias needs the deployer role (or admin); this token has trainer",
    );
    r_deployer.set_alias(promote(v1, 0)).await.unwrap();

    // Server: a reader predicts once the server (watching the registry with
    // its own token) serves v1; the prediction reaches the monitor (logged
    // with the server's token).
    let data = load();
    let mut p = PredictorClient::new(as_role(&sb, &srv, tokens::READER).await);
    let request = |id: &str| PredictRequest {
        model: MODEL.into(),
        rows: vec![to_row(&data[0].0)],
        request_id: id.into(),
    };
    let served = until("the server serves v1", || async {
        p.clone().predict(request("probe")).await.ok()
    })
    .await;
    assert_eq!(served.into_inner().version, v1);
    p.predict(request("sec-1")).await.unwrap();
    let mut m_reader = MonitorClient::new(as_role(&sb, &mon, tokens::READER).await);
    until("the monitor has the predictions", || async {
        let r = m_reader
            .clone()
            .get_report(GetReportRequest {
                model: MODEL.into(),
                version: v1,
                window: WindowKind::Long as i32,
            })
            .await
            .ok()?;
        (r.into_inner().drift?.rows >= 2).then_some(())
    })
    .await;

    // Monitor: policies are the deployer's, labels the trainer's.
    let policy = SetPolicyRequest {
        policy: Some(Policy {
            model: MODEL.into(),
            ..Default::default()
        }),
    };
    assert_denied(
        m_reader.set_policy(policy.clone()).await,
        Code::PermissionDenied,
        "evergreen.v1.Monitor/SetPolicy needs the deployer role (or admin); this token has reader",
    );
    MonitorClient::new(as_role(&sb, &mon, tokens::DEPLOYER).await)
        .set_policy(policy)
        .await
        .unwrap();
    let feedback = RecordFeedbackRequest {
        feedback: vec![Feedback {
            request_id: "sec-1".into(),
            label: data[0].1.clone(),
            ..Default::default()
        }],
    };
    assert_denied(
        m_reader.record_feedback(feedback.clone()).await,
        Code::PermissionDenied,
        "evergreen.v1.Monitor/RecordFeedback needs the trainer role (or admin); this token has reader",
    );
    let r = MonitorClient::new(as_role(&sb, &mon, tokens::TRAINER).await)
        .record_feedback(feedback)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.matched, 1);

    // Lifecycle: v2 takes over, v1 is retired and archived by the deployer;
    // the archive manifest holds v1's monitoring history, which the registry
    // read from the monitor with its own token.
    let v2 = train(&mut t_trainer).await;
    r_deployer.set_alias(promote(v2, v1)).await.unwrap();
    let retire = SetVersionStatusRequest {
        r#ref: evergreen_e2e::req::version(MODEL, v1),
        status: VersionStatus::Retired as i32,
        reason: "superseded".into(),
        ..Default::default()
    };
    assert_denied(
        r_reader.set_version_status(retire.clone()).await,
        Code::PermissionDenied,
        "evergreen.v1.Registry/SetVersionStatus needs the deployer role (or admin); this token has reader",
    );
    r_deployer.set_version_status(retire).await.unwrap();
    r_deployer
        .archive(ArchiveRequest {
            r#ref: evergreen_e2e::req::version(MODEL, v1),
            reason: "security e2e".into(),
            include_data: false,
        })
        .await
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            sb.data_dir()
                .join(format!("archive/{MODEL}/{v1}/manifest.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let monitoring = &manifest["monitoring"];
    assert!(
        monitoring.get("unavailable").is_none(),
        "the registry could not read the monitor: {monitoring}"
    );
    assert!(monitoring["rows"].as_u64().unwrap() >= 2, "{monitoring}");
}

/// The server's TLS alert `alert`, or (TLS 1.3: the client finishes its
/// side of the handshake first) the connection closed under the first call.
fn refused_by_tls(e: &anyhow::Error, alert: &str) -> bool {
    let text = format!("{e:#}");
    text.contains(alert) || text.contains("connection closed")
}

/// A connection that never completes the TLS handshake is closed after
/// `tls::HANDSHAKE_TIMEOUT`, and the daemon keeps serving.
#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_after_the_handshake_timeout() {
    use evergreen_runtime::tls::HANDSHAKE_TIMEOUT;
    use tokio::io::AsyncReadExt;
    let sb = Sandbox::builder().secure().start().await;
    let mut idle = tokio::net::TcpStream::connect(sb.registry_addr)
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        HANDSHAKE_TIMEOUT + std::time::Duration::from_secs(10),
        idle.read(&mut buf),
    )
    .await
    .expect("a connection that sent nothing was still open 20 s later");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        t0.elapsed() + std::time::Duration::from_millis(500) >= HANDSHAKE_TIMEOUT,
        "closed after {:?}",
        t0.elapsed()
    );
    sb.registry()
        .await
        .list_models(ListModelsRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let sb = Sandbox::builder().secure().start().await;
    let reg = sb.registry_url();
    let pki = &sb.secure().pki;
    let call = |cfg: ClientConfig| {
        let reg = reg.clone();
        async move {
            let client = Client::new(&cfg, &Keys::Flags).unwrap();
            let channel = client.connect("--registry", &reg).await?;
            RegistryClient::new(channel)
                .list_models(ListModelsRequest::default())
                .await
                .map_err(|s| anyhow::anyhow!("{s:?}"))
        }
    };
    // With the CA's client certificate: allowed.
    call(pki.client(tokens::READER)).await.unwrap();
    // No client certificate, a valid token: refused by TLS.
    let e = call(ClientConfig {
        ca: pki.ca.clone(),
        token: tokens::ADMIN.into(),
        ..Default::default()
    })
    .await
    .expect_err("no client certificate is refused");
    assert!(refused_by_tls(&e, "CertificateRequired"), "{e:#}");
    // A certificate from another CA: refused.
    let e = call(ClientConfig {
        ca: pki.ca.clone(),
        cert: pki.rogue_cert.clone(),
        key: pki.rogue_key.clone(),
        token: tokens::ADMIN.into(),
        ..Default::default()
    })
    .await
    .expect_err("a certificate from another CA is refused");
    assert!(refused_by_tls(&e, "UnknownCA"), "{e:#}");
    // Without the CA (system roots only): the daemon is not trusted.
    let e = call(ClientConfig {
        cert: pki.client_cert.clone(),
        key: pki.client_key.clone(),
        token: tokens::ADMIN.into(),
        ..Default::default()
    })
    .await
    .expect_err("a certificate from an unknown CA is not trusted");
    assert_eq!(
        format!("{e:#}"),
        format!(
            "cannot reach --registry at {reg}: transport error: invalid peer certificate: UnknownIssuer"
        )
    );
    // Plaintext to the TLS port: no answer.
    let plain = Client::default()
        .connect("--registry", &reg.replace("https://", "http://"))
        .await;
    if let Ok(channel) = plain {
        RegistryClient::new(channel)
            .list_models(ListModelsRequest::default())
            .await
            .expect_err("plaintext to a TLS port fails");
    }
}

/// Tokens are rotated and revoked in the running daemons by editing the
/// tokens file (as a Kubernetes Secret update does): a new token works
/// within seconds, a removed one is refused, an expired one is refused
/// naming its expiry, a broken file changes nothing — no restart, and the
/// daemons' own tokens keep the stack talking.
#[tokio::test]
async fn tokens_are_rotated_by_editing_the_file_without_a_restart() {
    let sb = Sandbox::builder().secure().start().await;
    let reg = sb.registry_url();
    let file = sb.secure().tokens_file.clone();
    let list = |token: &'static str| {
        let (sb, reg) = (&sb, reg.clone());
        async move {
            RegistryClient::new(as_role(sb, &reg, token).await)
                .list_models(ListModelsRequest::default())
                .await
        }
    };
    const NEW: &str = "reader-token-rotated-in-91";
    list(tokens::READER).await.expect("the reader token works");
    assert_denied(
        list(NEW).await,
        Code::Unauthenticated,
        "unknown bearer token",
    );

    // Rotate: NEW in, READER out, ADMIN given an expiry already past.
    let rotated = tokens::file()
        .replace(
            &format!("reader {}\n", tokens::READER),
            &format!("reader {NEW}\n"),
        )
        .replace(
            &format!("admin {}\n", tokens::ADMIN),
            &format!("admin {} expires=2026-01-01T00:00:00Z\n", tokens::ADMIN),
        );
    assert_ne!(rotated, tokens::file());
    std::fs::write(&file, &rotated).unwrap();
    until("the registry takes the new token", || async {
        list(NEW).await.ok()
    })
    .await;
    assert_denied(
        list(tokens::READER).await,
        Code::Unauthenticated,
        "unknown bearer token",
    );
    assert_denied(
        list(tokens::ADMIN).await,
        Code::Unauthenticated,
        "bearer token expired at 2026-01-01T00:00:00Z: ask for a new token",
    );

    // A file broken mid-edit changes nothing; the daemon keeps serving.
    std::fs::write(&file, format!("{rotated}root {}\n", tokens::READER)).unwrap();
    tokio::time::sleep(evergreen_runtime::auth::RELOAD_EVERY * 2).await;
    list(NEW).await.expect("the tokens in force stay");
    assert_denied(
        list(tokens::READER).await,
        Code::Unauthenticated,
        "unknown bearer token",
    );
}
