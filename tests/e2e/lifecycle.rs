//! Models, versions, aliases and the audit trail through the real gRPC API.

use std::collections::BTreeSet;

use evergreen_e2e::{req, Sandbox};
use evergreen_proto::v1::{
    DeleteModelRequest, DeleteVersionRequest, DownloadArtifactRequest, EventKind, GetModelRequest,
    GetVersionRequest, HistoryRequest, Lineage, ListModelsRequest, ListVersionsRequest,
    SetAliasRequest, SetVersionStatusRequest, UpdateModelRequest, VersionHeader, VersionStatus,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tonic::Request;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn artifact(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn with_actor<T>(msg: T, actor: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-evergreen-actor", actor.parse().unwrap());
    r
}

#[tokio::test]
async fn models_can_be_created_listed_updated_and_deleted() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    let mut create = req::create("churn");
    create.description = "predicts churn".into();
    create.tags.insert("team".into(), "growth".into());
    let m = c.create_model(create).await.unwrap().into_inner();
    assert_eq!((m.name.as_str(), m.latest_version), ("churn", 0));
    c.create_model(req::create("fraud")).await.unwrap();

    let list = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["churn", "fraud"]);
    assert_eq!(list.revision, 2, "two creations, two revisions");

    let mut upd = UpdateModelRequest {
        name: "churn".into(),
        description: Some("v2".into()),
        ..Default::default()
    };
    upd.set_tags.insert("tier".into(), "1".into());
    upd.remove_tags.push("team".into());
    let m = c.update_model(upd).await.unwrap().into_inner();
    assert_eq!(m.description, "v2");
    assert_eq!(m.tags.keys().collect::<Vec<_>>(), ["tier"]);

    c.delete_model(DeleteModelRequest {
        name: "fraud".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c
        .get_model(GetModelRequest {
            name: "fraud".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("fraud"), "{}", err.message());
}

#[tokio::test]
async fn versions_register_stream_and_download_byte_for_byte() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    c.create_model(req::create("churn")).await.unwrap();

    let bytes = artifact(3 * 1024 * 1024 + 17, 7); // several chunks, odd tail
    let mut header = req::header("churn");
    header.metrics.insert("accuracy".into(), 0.93);
    header.params.insert("max_depth".into(), "8".into());
    header.lineage = Some(Lineage {
        run_id: "run-1".into(),
        dataset_sha256: "ab".repeat(32),
        parent_version: 0,
        producer: "test".into(),
        ..Default::default()
    });
    let v = c
        .register_version(with_actor(
            futures::stream::iter(req::register(header, &bytes, 1 << 20)),
            "alice",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, 1);
    assert_eq!(v.status(), VersionStatus::Active);
    assert_eq!(v.created_by, "alice");
    let a = v.artifact.clone().unwrap();
    assert_eq!(a.size_bytes, bytes.len() as u64);
    assert_eq!(a.sha256.len(), 64);
    assert_eq!(a.sha256, sha256_hex(&bytes));

    // Declaring the digest the registry computed is accepted (same bytes).
    let mut header = req::header("churn");
    header.expected_sha256 = a.sha256.to_uppercase();
    let v2 = c
        .register_version(futures::stream::iter(req::register(
            header,
            &bytes,
            64 * 1024,
        )))
        .await
        .unwrap();
    assert_eq!(v2.into_inner().version, 2);

    let mut down = c
        .download_artifact(DownloadArtifactRequest {
            r#ref: req::spec("churn/1"),
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let mut first = None;
    while let Some(chunk) = down.next().await {
        let chunk = chunk.unwrap();
        if first.is_none() {
            first = Some((chunk.artifact.clone(), chunk.version));
        }
        assert!(
            chunk.data.len() <= 256 * 1024,
            "chunks stay at most 256 KiB"
        );
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(got, bytes);
    assert_eq!(first, Some((Some(a.clone()), 1)));

    let got = c
        .get_version(GetVersionRequest {
            r#ref: req::version("churn", 1),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.metrics["accuracy"], 0.93);
    assert_eq!(got.params["max_depth"], "8");
    assert_eq!(got.lineage.unwrap().run_id, "run-1");
}

#[tokio::test]
async fn concurrent_registrations_get_gapless_unique_numbers_never_reused() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    c.create_model(req::create("m")).await.unwrap();
    let mut tasks = Vec::new();
    for client in 0..16u8 {
        let mut c = sb.registry().await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..8u8 {
                let bytes = artifact(100 + i as usize, client);
                let v = c
                    .register_version(futures::stream::iter(req::register(
                        req::header("m"),
                        &bytes,
                        64,
                    )))
                    .await
                    .unwrap();
                got.push(v.into_inner().version);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), 128, "no duplicates");
    assert_eq!(unique, (1..=128).collect(), "no gaps");

    // Deleting the newest version does not free its number.
    c.delete_version(DeleteVersionRequest {
        r#ref: req::version("m", 128),
        ..Default::default()
    })
    .await
    .unwrap();
    let v = c
        .register_version(futures::stream::iter(req::register(
            req::header("m"),
            b"next",
            4,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, 129);

    // Nor does deleting and re-creating the model.
    c.delete_model(DeleteModelRequest {
        name: "m".into(),
        force: true,
        ..Default::default()
    })
    .await
    .unwrap();
    c.create_model(req::create("m")).await.unwrap();
    let v = c
        .register_version(futures::stream::iter(req::register(
            req::header("m"),
            b"again",
            5,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, 130);
    let list = c
        .list_versions(ListVersionsRequest { model: "m".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [130]
    );
}

#[tokio::test]
async fn aliases_move_by_compare_and_set_and_resolve_everywhere() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    c.create_model(req::create("churn")).await.unwrap();
    for i in 0..3u8 {
        c.register_version(futures::stream::iter(req::register(
            req::header("churn"),
            &[i; 10],
            10,
        )))
        .await
        .unwrap();
    }
    let set = |version: u64, expected: Option<u64>| SetAliasRequest {
        model: "churn".into(),
        alias: "production".into(),
        version,
        expected_version: expected,
        reason: "promote".into(),
    };
    // expected 0 = must not exist yet.
    c.set_alias(set(1, Some(0))).await.unwrap();
    let err = c.set_alias(set(2, Some(0))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("points at version 1"),
        "{}",
        err.message()
    );

    let a = c.set_alias(set(2, Some(1))).await.unwrap().into_inner();
    assert_eq!(a.version, 2);
    let err = c.set_alias(set(3, Some(1))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("production") && err.message().contains("version 2"),
        "{}",
        err.message()
    );

    // name@alias resolves in GetVersion and DownloadArtifact.
    let v = c
        .get_version(GetVersionRequest {
            r#ref: req::spec("churn@production"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.version, v.aliases.clone()),
        (2, vec!["production".to_string()])
    );
    let mut d = c
        .download_artifact(DownloadArtifactRequest {
            r#ref: req::spec("churn@production"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.next().await.unwrap().unwrap().data, vec![1u8; 10]);

    // An aliased version cannot be retired or deleted.
    let err = c
        .set_version_status(SetVersionStatusRequest {
            r#ref: req::version("churn", 2),
            status: VersionStatus::Retired as i32,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("production"), "{}", err.message());
    let err = c
        .delete_version(DeleteVersionRequest {
            r#ref: req::version("churn", 2),
            ..Default::default()
        })
        .await;
    assert_eq!(err.unwrap_err().code(), tonic::Code::FailedPrecondition);

    // A status change answers with the version as a Get would, aliases included.
    let v = c
        .set_version_status(SetVersionStatusRequest {
            r#ref: req::spec("churn@production"),
            status: VersionStatus::Deprecated as i32,
            reason: "sunset soon".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.version, v.status(), v.aliases.clone()),
        (2, VersionStatus::Deprecated, vec!["production".to_string()])
    );

    // Lifecycle moves are audited; illegal ones name the allowed ones.
    let v = c
        .set_version_status(SetVersionStatusRequest {
            r#ref: req::version("churn", 1),
            status: VersionStatus::Deprecated as i32,
            reason: "superseded by 2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.status(), VersionStatus::Deprecated);
    let err = c
        .set_version_status(SetVersionStatusRequest {
            r#ref: req::version("churn", 1),
            status: VersionStatus::Archived as i32,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("ACTIVE or RETIRED"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn every_mutation_is_in_the_audit_trail_with_actor_reason_and_before_after() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    c.create_model(with_actor(req::create("churn"), "bob"))
        .await
        .unwrap();
    for _ in 0..2 {
        c.register_version(futures::stream::iter(req::register(
            req::header("churn"),
            b"abc",
            3,
        )))
        .await
        .unwrap();
    }
    c.set_alias(with_actor(
        SetAliasRequest {
            model: "churn".into(),
            alias: "production".into(),
            version: 1,
            expected_version: None,
            reason: "first".into(),
        },
        "carol",
    ))
    .await
    .unwrap();
    c.set_alias(SetAliasRequest {
        model: "churn".into(),
        alias: "production".into(),
        version: 2,
        expected_version: Some(1),
        reason: "better auc".into(),
    })
    .await
    .unwrap();
    let h = c
        .history(HistoryRequest {
            model: "churn".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let kinds: Vec<EventKind> = h.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            EventKind::ModelCreated,
            EventKind::VersionRegistered,
            EventKind::VersionRegistered,
            EventKind::AliasSet,
            EventKind::AliasSet
        ]
    );
    assert_eq!(h[0].actor, "bob");
    assert_eq!(h[3].actor, "carol");
    let last = h.last().unwrap();
    assert_eq!(
        (last.reason.as_str(), last.alias.as_str(), last.version),
        ("better auc", "production", 2)
    );
    assert_eq!(last.before, r#"{"version":1}"#);
    assert_eq!(last.after, r#"{"version":2}"#);
    assert!(h.windows(2).all(|w| w[0].revision < w[1].revision));
    assert!(h.iter().all(|e| e.time.is_some()));

    let newest = c
        .history(HistoryRequest {
            model: "churn".into(),
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(
        newest.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [h[3].revision, h[4].revision]
    );
}

#[tokio::test]
async fn state_survives_a_restart() {
    let mut sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    c.create_model(req::create("churn")).await.unwrap();
    let header = VersionHeader {
        model: "churn".into(),
        description: "first".into(),
        ..Default::default()
    };
    c.register_version(futures::stream::iter(req::register(
        header,
        b"model-bytes",
        4,
    )))
    .await
    .unwrap();
    c.set_alias(SetAliasRequest {
        model: "churn".into(),
        alias: "champion".into(),
        version: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    sb.restart().await;
    let mut c = sb.registry().await;
    let v = c
        .get_version(GetVersionRequest {
            r#ref: req::spec("churn@champion"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v.version, v.description.as_str()), (1, "first"));
    let list = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.revision, 3);
    let v = c
        .register_version(futures::stream::iter(req::register(
            req::header("churn"),
            b"more",
            4,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, 2);
}
