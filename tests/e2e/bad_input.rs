//! Bad input gets the right status and a message naming what was wrong, and
//! the daemon keeps serving.

use evergreen_e2e::Channel;
use evergreen_e2e::{req, Sandbox};
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    register_version_request::Part, GetModelRequest, GetVersionRequest, ListModelsRequest,
    ListVersionsRequest, RegisterVersionRequest, SetAliasRequest, WatchRequest,
};
use tonic::Code;

fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needles: &[&str]) {
    let s = r.expect_err("expected an error");
    assert_eq!(s.code(), code, "{s:?}");
    for n in needles {
        assert!(
            s.message().contains(n),
            "{:?} does not mention {n:?}",
            s.message()
        );
    }
}

async fn still_serving(sb: &Sandbox, c: &mut RegistryClient<Channel>) {
    assert!(sb.is_running());
    c.list_models(ListModelsRequest {})
        .await
        .expect("still serving");
}

async fn no_versions(c: &mut RegistryClient<Channel>, model: &str) {
    let l = c
        .list_versions(ListVersionsRequest {
            model: model.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        l.versions.is_empty(),
        "nothing registered: {:?}",
        l.versions
    );
    let m = c
        .get_model(GetModelRequest { name: model.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.latest_version, 0, "no number consumed");
}

#[tokio::test]
async fn bad_names_unknown_things_and_duplicates() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    assert_status(
        c.create_model(req::create("bad name")).await,
        Code::InvalidArgument,
        &["model name", "\"bad name\"", "A-Z"],
    );
    assert_status(
        c.create_model(req::create("")).await,
        Code::InvalidArgument,
        &["model name"],
    );
    assert_status(
        c.create_model(req::create(&"x".repeat(129))).await,
        Code::InvalidArgument,
        &["1-128"],
    );
    c.create_model(req::create("churn")).await.unwrap();
    assert_status(
        c.create_model(req::create("churn")).await,
        Code::AlreadyExists,
        &["churn", "already exists"],
    );
    c.register_version(futures::stream::iter(req::register(
        req::header("churn"),
        b"abc",
        3,
    )))
    .await
    .unwrap();

    assert_status(
        c.get_model(GetModelRequest {
            name: "nope".into(),
        })
        .await,
        Code::NotFound,
        &["nope"],
    );
    assert_status(
        c.get_version(GetVersionRequest {
            r#ref: req::spec("churn/9"),
        })
        .await,
        Code::NotFound,
        &["version 9", "churn"],
    );
    assert_status(
        c.get_version(GetVersionRequest {
            r#ref: req::spec("churn@staging"),
        })
        .await,
        Code::NotFound,
        &["alias", "staging"],
    );
    assert_status(
        c.get_version(GetVersionRequest {
            r#ref: req::spec("ghost@production"),
        })
        .await,
        Code::NotFound,
        &["ghost"],
    );
    assert_status(
        c.get_version(GetVersionRequest {
            r#ref: req::spec("churn"),
        })
        .await,
        Code::InvalidArgument,
        &["name@alias"],
    );
    assert_status(
        c.get_version(GetVersionRequest {
            r#ref: req::spec("churn/x"),
        })
        .await,
        Code::InvalidArgument,
        &["positive integer"],
    );
    assert_status(
        c.get_version(GetVersionRequest { r#ref: None }).await,
        Code::InvalidArgument,
        &["ref is required"],
    );

    let alias = |alias: &str, version: u64| SetAliasRequest {
        model: "churn".into(),
        alias: alias.into(),
        version,
        ..Default::default()
    };
    assert_status(
        c.set_alias(alias("42", 1)).await,
        Code::InvalidArgument,
        &["alias", "non-digit"],
    );
    assert_status(
        c.set_alias(alias("prod uction", 1)).await,
        Code::InvalidArgument,
        &["alias"],
    );
    assert_status(
        c.set_alias(alias("production", 7)).await,
        Code::NotFound,
        &["version 7"],
    );
    assert_status(
        c.set_alias(alias("production", 0)).await,
        Code::InvalidArgument,
        &["positive"],
    );
    still_serving(&sb, &mut c).await;
}

#[tokio::test]
async fn bad_uploads_register_nothing() {
    let sb = Sandbox::builder()
        .registry(|c| c.max_artifact_bytes = 1000)
        .start()
        .await;
    let mut c = sb.registry().await;
    c.create_model(req::create("churn")).await.unwrap();

    let mut header = req::header("churn");
    header.expected_sha256 = "0".repeat(64);
    assert_status(
        c.register_version(futures::stream::iter(req::register(header, b"abc", 3)))
            .await,
        Code::InvalidArgument,
        &[
            "checksum mismatch",
            &"0".repeat(64),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ],
    );
    let mut header = req::header("churn");
    header.expected_sha256 = "xyz".into();
    assert_status(
        c.register_version(futures::stream::iter(req::register(header, b"abc", 3)))
            .await,
        Code::InvalidArgument,
        &["expected_sha256", "64 hex"],
    );
    assert_status(
        c.register_version(futures::stream::iter(req::register(
            req::header("churn"),
            &[1u8; 2000],
            100,
        )))
        .await,
        Code::ResourceExhausted,
        &["1000 bytes"],
    );
    assert_status(
        c.register_version(futures::stream::iter(req::register(
            req::header("churn"),
            b"",
            1,
        )))
        .await,
        Code::InvalidArgument,
        &["empty artifact"],
    );
    let chunk_first = vec![RegisterVersionRequest {
        part: Some(Part::Chunk(b"abc".to_vec())),
    }];
    assert_status(
        c.register_version(futures::stream::iter(chunk_first)).await,
        Code::InvalidArgument,
        &["first", "header"],
    );
    let two_headers = vec![
        RegisterVersionRequest {
            part: Some(Part::Header(req::header("churn"))),
        },
        RegisterVersionRequest {
            part: Some(Part::Header(req::header("churn"))),
        },
    ];
    assert_status(
        c.register_version(futures::stream::iter(two_headers)).await,
        Code::InvalidArgument,
        &["header"],
    );
    let mut header = req::header("churn");
    header.metrics.insert("auc".into(), f64::NAN);
    assert_status(
        c.register_version(futures::stream::iter(req::register(header, b"abc", 3)))
            .await,
        Code::InvalidArgument,
        &["metric \"auc\"", "finite"],
    );
    assert_status(
        c.register_version(futures::stream::iter(req::register(
            req::header("ghost"),
            b"abc",
            3,
        )))
        .await,
        Code::NotFound,
        &["ghost"],
    );
    no_versions(&mut c, "churn").await;

    // And a good upload still gets number 1.
    let v = c
        .register_version(futures::stream::iter(req::register(
            req::header("churn"),
            b"abc",
            3,
        )))
        .await
        .unwrap();
    assert_eq!(v.into_inner().version, 1);
    still_serving(&sb, &mut c).await;
}

#[tokio::test]
async fn watch_from_a_future_revision_is_out_of_range() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    c.create_model(req::create("a")).await.unwrap();
    assert_status(
        c.watch(WatchRequest {
            from_revision: Some(99),
            model: String::new(),
        })
        .await,
        Code::OutOfRange,
        &["99", "current revision 1"],
    );
    assert_status(
        c.watch(WatchRequest {
            from_revision: Some(0),
            model: "no such".into(),
        })
        .await,
        Code::InvalidArgument,
        &["model name"],
    );
    still_serving(&sb, &mut c).await;
}

#[tokio::test]
async fn a_corrupt_or_foreign_data_dir_fails_start_with_one_clear_line() {
    async fn start_on(dir: &std::path::Path) -> String {
        let config = evergreen_registry::RegistryConfig {
            metrics_listen: String::new(),
            data_dir: dir.to_path_buf(),
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = evergreen_registry::run(config, listener, std::future::ready(()))
            .await
            .expect_err("start-up must fail");
        format!("{err:#}")
    }
    let tmp = tempfile::tempdir().unwrap();

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("postgresql.conf"), "x").unwrap();
    let msg = start_on(&foreign).await;
    assert!(
        msg.contains("not an Evergreen registry") && msg.contains("postgresql.conf"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");

    let corrupt = tmp.path().join("corrupt");
    std::fs::create_dir_all(corrupt.join("sled")).unwrap();
    std::fs::write(
        corrupt.join("sled/conf"),
        b"\xff\x00garbage that is not a sled config",
    )
    .unwrap();
    std::fs::write(corrupt.join("sled/db"), vec![0xA5u8; 4096]).unwrap();
    let msg = start_on(&corrupt).await;
    assert!(
        msg.contains("cannot open data dir") && msg.contains("corrupt"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");

    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let msg = start_on(&file).await;
    assert!(msg.contains("not a directory"), "{msg}");
}

#[tokio::test]
async fn bad_traffic_policies_rollbacks_and_deprecations_change_nothing() {
    use evergreen_proto::v1::{
        RollbackAliasRequest, SetTrafficPolicyRequest, SetVersionStatusRequest, TrafficPolicy,
        VersionStatus, VersionWeight,
    };
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    c.create_model(req::create("m")).await.unwrap();
    for _ in 0..3 {
        c.register_version(tokio_stream::iter(req::register(
            req::header("m"),
            b"artifact",
            16,
        )))
        .await
        .unwrap();
    }
    let alias = |v: u64| SetAliasRequest {
        model: "m".into(),
        alias: "production".into(),
        version: v,
        ..Default::default()
    };
    c.set_alias(alias(1)).await.unwrap();
    let policy = |weights: &[(u64, u32)], shadow: u64| SetTrafficPolicyRequest {
        model: "m".into(),
        policy: Some(TrafficPolicy {
            weights: weights
                .iter()
                .map(|(v, w)| VersionWeight {
                    version: *v,
                    weight: *w,
                })
                .collect(),
            shadow_version: shadow,
        }),
        reason: String::new(),
    };
    assert_status(
        c.set_traffic_policy(policy(&[(1, 50), (1, 50)], 0)).await,
        Code::InvalidArgument,
        &["version 1 is zero or listed twice"],
    );
    assert_status(
        c.set_traffic_policy(policy(&[(1, 0), (2, 0)], 0)).await,
        Code::InvalidArgument,
        &["all 0"],
    );
    assert_status(
        c.set_traffic_policy(policy(&[(1, 90), (9, 10)], 0)).await,
        Code::NotFound,
        &["version 9"],
    );
    assert_status(
        c.set_traffic_policy(policy(&[], 9)).await,
        Code::NotFound,
        &["version 9"],
    );
    let too_many: Vec<(u64, u32)> = (1..=17).map(|v| (v, 1)).collect();
    assert_status(
        c.set_traffic_policy(policy(&too_many, 0)).await,
        Code::InvalidArgument,
        &["at most 16"],
    );
    assert_status(
        c.set_traffic_policy(SetTrafficPolicyRequest {
            model: "nope".into(),
            ..policy(&[(1, 1)], 0)
        })
        .await,
        Code::NotFound,
        &["model \"nope\""],
    );
    let m = c
        .get_model(GetModelRequest { name: "m".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.policy, None, "no bad policy was stored");

    // A version with traffic cannot be retired; a retired one cannot get traffic.
    c.set_traffic_policy(policy(&[(1, 90), (2, 10)], 3))
        .await
        .unwrap();
    let status = |v: u64, s: VersionStatus| SetVersionStatusRequest {
        r#ref: req::version("m", v),
        status: s as i32,
        ..Default::default()
    };
    assert_status(
        c.set_version_status(status(3, VersionStatus::Retired))
            .await,
        Code::FailedPrecondition,
        &["traffic policy still sends it traffic"],
    );
    c.set_traffic_policy(policy(&[(1, 90), (2, 10)], 0))
        .await
        .unwrap();
    c.set_version_status(status(3, VersionStatus::Retired))
        .await
        .unwrap();
    assert_status(
        c.set_traffic_policy(policy(&[(1, 90)], 3)).await,
        Code::FailedPrecondition,
        &["m/3: it is RETIRED"],
    );

    // Deprecation details belong to DEPRECATED and must name a live version.
    let mut active_with_sunset = status(2, VersionStatus::Active);
    active_with_sunset.replacement_version = 1;
    assert_status(
        c.set_version_status(active_with_sunset).await,
        Code::InvalidArgument,
        &["only go with status DEPRECATED"],
    );
    let mut self_replacing = status(2, VersionStatus::Deprecated);
    self_replacing.replacement_version = 2;
    assert_status(
        c.set_version_status(self_replacing).await,
        Code::InvalidArgument,
        &["cannot replace itself"],
    );
    let mut retired_replacement = status(2, VersionStatus::Deprecated);
    retired_replacement.replacement_version = 3;
    assert_status(
        c.set_version_status(retired_replacement).await,
        Code::FailedPrecondition,
        &["replacement m/3 is RETIRED"],
    );

    // Rollback needs a previous target and an existing alias.
    let rollback = |alias: &str| RollbackAliasRequest {
        model: "m".into(),
        alias: alias.into(),
        reason: String::new(),
    };
    assert_status(
        c.rollback_alias(rollback("production")).await,
        Code::FailedPrecondition,
        &["no previous target", "first set to 1"],
    );
    assert_status(
        c.rollback_alias(rollback("staging")).await,
        Code::NotFound,
        &["alias \"staging\""],
    );
    c.set_alias(alias(2)).await.unwrap();
    assert_eq!(
        c.rollback_alias(rollback("production"))
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    assert_eq!(
        c.rollback_alias(rollback("production"))
            .await
            .unwrap()
            .into_inner()
            .version,
        2,
        "a second rollback undoes the first"
    );
    still_serving(&sb, &mut c).await;
}
