//! Archive and restore through real gRPC, against a real S3-compatible
//! server (s3s-fs over HTTP, started here) and a local archive directory.

use evergreen_e2e::Channel;
use evergreen_e2e::{dataset, req, Sandbox};
use evergreen_model::{Model, Scratch, Value as Cell};
use evergreen_proto::v1::{
    registry_client::RegistryClient, train_event, ArchiveRequest, DeleteVersionRequest,
    DownloadArtifactRequest, EventKind, GetVersionRequest, HistoryRequest, ModelVersion,
    RestoreRequest, SetVersionStatusRequest, TrainRequest, VersionStatus,
};
use evergreen_s3::testing::TestS3;
use sha2::{Digest, Sha256};
use tonic::Code;

async fn download(c: &mut RegistryClient<Channel>, spec: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut s = c
        .download_artifact(DownloadArtifactRequest {
            r#ref: req::spec(spec),
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = s.message().await? {
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(bytes)
}

async fn status(c: &mut RegistryClient<Channel>, spec: &str) -> ModelVersion {
    c.get_version(GetVersionRequest {
        r#ref: req::spec(spec),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn retire(c: &mut RegistryClient<Channel>, model: &str, v: u64) {
    c.set_version_status(SetVersionStatusRequest {
        r#ref: req::version(model, v),
        status: VersionStatus::Retired as i32,
        reason: "superseded".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

fn archive_req(model: &str, v: u64, include_data: bool) -> ArchiveRequest {
    ArchiveRequest {
        r#ref: req::version(model, v),
        reason: "retention".into(),
        include_data,
    }
}

fn restore_req(model: &str, v: u64, activate: bool) -> RestoreRequest {
    RestoreRequest {
        r#ref: req::version(model, v),
        reason: "audit".into(),
        activate,
    }
}

/// Registers `bytes` as a new version of `model` (the registry never looks
/// inside an artifact).
async fn register(c: &mut RegistryClient<Channel>, model: &str, bytes: &[u8]) -> u64 {
    let _ = c.create_model(req::create(model)).await;
    let msgs = req::register(req::header(model), bytes, 64 * 1024);
    c.register_version(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner()
        .version
}

fn predict_all(m: &Model) -> Vec<f64> {
    let text = std::fs::read_to_string(dataset("breast_cancer.csv")).unwrap();
    let mut scratch = Scratch::default();
    text.lines()
        .skip(1)
        .take(50)
        .flat_map(|l| {
            let row: Vec<Cell> = l
                .split(',')
                .take(30)
                .map(|c| Cell::Number(c.parse().unwrap()))
                .collect();
            match m.predict(&row, &mut scratch).unwrap() {
                evergreen_model::Prediction::Class { probabilities, .. } => probabilities.to_vec(),
                evergreen_model::Prediction::Value(v) => vec![v],
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_to_s3_then_restore_is_byte_identical_with_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = TestS3::start(&dir.path().join("s3")).await;
    s3.create_bucket("archive");
    let s3_config = s3.config("archive");
    let sb = Sandbox::builder()
        .registry(move |c| c.archive.s3 = s3_config)
        .trainer()
        .start()
        .await;
    let mut t = sb.trainer().await;
    let mut s = t
        .train(TrainRequest {
            model: "cancer".into(),
            dataset_uri: dataset("breast_cancer.csv").display().to_string(),
            target: "target".into(),
            algorithm: "random_forest".into(),
            params: [("n_trees".to_string(), "30".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(ev) = s.message().await.unwrap() {
        if let Some(train_event::Kind::Done(j)) = ev.kind {
            assert_eq!(j.version, 1);
        }
    }
    let mut c = sb.registry().await;
    let original = download(&mut c, "cancer/1").await.unwrap();
    let sha = hex::encode(Sha256::digest(&original));
    let predictions = predict_all(&Model::from_bytes(&original).unwrap());

    // Only a RETIRED version can be archived.
    let e = c.archive(archive_req("cancer", 1, true)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("is ACTIVE") && e.message().contains("only a RETIRED version"),
        "{e:?}"
    );
    retire(&mut c, "cancer", 1).await;
    let e = c
        .restore(restore_req("cancer", 1, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("only an ARCHIVED version"), "{e:?}");

    let v = c
        .archive(archive_req("cancer", 1, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.status, VersionStatus::Archived as i32);
    assert_eq!(v.archive_uri, "s3://archive/cancer/1/");
    // The documented layout, in the bucket.
    let object = |k: &str| s3.object_path("archive", &format!("cancer/1/{k}"));
    assert_eq!(std::fs::read(object("artifact.evgm")).unwrap(), original);
    assert_eq!(
        std::fs::read(object("data/breast_cancer.csv")).unwrap(),
        std::fs::read(dataset("breast_cancer.csv")).unwrap(),
        "the training data, still matching its recorded sha256"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(object("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "evergreen-archive/1");
    assert_eq!(manifest["artifact"]["sha256"], sha.as_str());
    assert_eq!(manifest["data"]["included"], true);
    assert!(manifest["record"]["metrics"]["accuracy"].as_f64().unwrap() > 0.8);
    let audit: Vec<&str> = manifest["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(audit, ["VERSION_REGISTERED", "VERSION_STATUS_CHANGED"]);

    // Freed locally: downloads say where it is and what to do.
    let e = download(&mut c, "cancer/1").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("s3://archive/cancer/1/") && e.message().contains("restore it first"),
        "{e:?}"
    );
    let e = c
        .archive(archive_req("cancer", 1, false))
        .await
        .unwrap_err();
    assert!(e.message().contains("ARCHIVED already"), "{e:?}");
    let e = c
        .delete_version(DeleteVersionRequest {
            r#ref: req::version("cancer", 1),
            reason: String::new(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("--force"), "{e:?}");
    let e = c
        .set_version_status(SetVersionStatusRequest {
            r#ref: req::version("cancer", 1),
            status: VersionStatus::Active as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Restore: the same bytes, the same predictions, RETIRED, history kept.
    let v = c
        .restore(restore_req("cancer", 1, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.status, VersionStatus::Retired as i32);
    let back = download(&mut c, "cancer/1").await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&back)), sha);
    assert_eq!(predict_all(&Model::from_bytes(&back).unwrap()), predictions);
    let kinds: Vec<i32> = c
        .history(HistoryRequest {
            model: "cancer".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.ends_with(&[
        EventKind::VersionStatusChanged as i32,
        EventKind::VersionArchived as i32,
        EventKind::VersionRestored as i32
    ]));
    // And ACTIVE on request, after another round trip.
    c.archive(archive_req("cancer", 1, false)).await.unwrap();
    let v = c
        .restore(restore_req("cancer", 1, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.status, VersionStatus::Active as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_failures_are_named_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s3");
    let mut s3 = TestS3::start(&root).await;
    s3.create_bucket("archive");
    // 300 KiB: a file in the artifact store (not inline in sled).
    let bytes: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();

    // A missing bucket, then wrong credentials: FAILED_PRECONDITION, named.
    for (bucket, secret, expect) in [
        ("nope", None, "bucket \"nope\" does not exist"),
        ("archive", Some("wrong"), "credentials"),
    ] {
        let mut config = s3.config(bucket);
        if let Some(s) = secret {
            config.secret_access_key = s.into();
        }
        let sb = Sandbox::builder()
            .registry(move |c| c.archive.s3 = config)
            .start()
            .await;
        let mut c = sb.registry().await;
        let v = register(&mut c, "m", &bytes).await;
        retire(&mut c, "m", v).await;
        let e = c.archive(archive_req("m", v, false)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(expect), "{e:?}");
        assert!(
            e.message().contains("the version is unchanged (RETIRED"),
            "{e:?}"
        );
        assert_eq!(
            status(&mut c, "m/1").await.status,
            VersionStatus::Retired as i32
        );
        assert_eq!(
            download(&mut c, "m/1").await.unwrap(),
            bytes,
            "artifact intact"
        );
    }

    // Endpoint down: UNAVAILABLE, nothing lost; it succeeds once it is back.
    let config = s3.config("archive");
    let sb = Sandbox::builder()
        .registry(move |c| c.archive.s3 = config)
        .start()
        .await;
    let mut c = sb.registry().await;
    let v = register(&mut c, "m", &bytes).await;
    retire(&mut c, "m", v).await;
    let addr = s3.addr;
    s3.stop().await;
    let e = c.archive(archive_req("m", v, false)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&format!("http://{addr}")), "{e:?}");
    assert_eq!(
        status(&mut c, "m/1").await.status,
        VersionStatus::Retired as i32
    );
    assert_eq!(download(&mut c, "m/1").await.unwrap(), bytes);
    let s3 = TestS3::restart_on(&root, addr).await;
    let archived = c
        .archive(archive_req("m", v, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(archived.status, VersionStatus::Archived as i32);

    // Corrupted behind our back: restore refuses, the version stays ARCHIVED.
    let path = s3.object_path("archive", "m/1/artifact.evgm");
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    let e = c.restore(restore_req("m", v, false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("corrupt") && e.message().contains("stays ARCHIVED"),
        "{e:?}"
    );
    // Deleted behind our back: named.
    std::fs::remove_file(&path).unwrap();
    let e = c.restore(restore_req("m", v, false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("s3://archive/m/1/artifact.evgm")
            && e.message().contains("does not exist"),
        "{e:?}"
    );
    assert_eq!(
        status(&mut c, "m/1").await.status,
        VersionStatus::Archived as i32
    );
    // Put back: restore works.
    std::fs::write(&path, &good).unwrap();
    c.restore(restore_req("m", v, false)).await.unwrap();
    assert_eq!(download(&mut c, "m/1").await.unwrap(), bytes);
    assert!(sb.is_running());
}

#[tokio::test]
async fn without_s3_the_archive_is_a_local_directory() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    let bytes = b"a small inline artifact".to_vec();
    let v = register(&mut c, "small", &bytes).await;
    retire(&mut c, "small", v).await;
    let a = c
        .archive(archive_req("small", v, false))
        .await
        .unwrap()
        .into_inner();
    let dir = sb.data_dir().join("archive");
    assert_eq!(a.archive_uri, format!("file://{}/small/1/", dir.display()));
    assert_eq!(
        std::fs::read(dir.join("small/1/artifact.evgm")).unwrap(),
        bytes
    );
    assert!(download(&mut c, "small/1").await.is_err(), "freed locally");
    c.restore(restore_req("small", v, false)).await.unwrap();
    assert_eq!(download(&mut c, "small/1").await.unwrap(), bytes);
}

/// The lineage is the registering caller's word: a version that names a
/// file the registry can read but records no dataset_sha256 (or a wrong
/// one) does not get that file copied into the archive.
#[tokio::test]
async fn archive_copies_training_data_only_when_it_matches_the_recorded_sha256() {
    let sb = Sandbox::start().await;
    let mut c = sb.registry().await;
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("registry-tls.key");
    std::fs::write(&secret, "-----BEGIN PRIVATE KEY-----\nsekrit\n").unwrap();
    let _ = c.create_model(req::create("nosy")).await;
    let mut dir = sb.data_dir().join("archive");
    for (sha, reason) in [
        (
            String::new(),
            "the version's lineage records no dataset_sha256 (only data that matches it is copied)"
                .to_string(),
        ),
        (
            "0".repeat(64),
            format!("{} changed since training", secret.display()),
        ),
    ] {
        let mut header = req::header("nosy");
        header.lineage = Some(evergreen_proto::v1::Lineage {
            dataset_uri: secret.display().to_string(),
            dataset_sha256: sha,
            ..Default::default()
        });
        let v = c
            .register_version(tokio_stream::iter(req::register(
                header,
                reason.as_bytes(),
                1024,
            )))
            .await
            .unwrap()
            .into_inner()
            .version;
        retire(&mut c, "nosy", v).await;
        c.archive(archive_req("nosy", v, true)).await.unwrap();
        dir = sb.data_dir().join("archive").join(format!("nosy/{v}"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let data = &manifest["data"];
        assert_eq!(data["included"], false, "{manifest}");
        assert!(
            data["reason"].as_str().unwrap().starts_with(&reason),
            "{manifest}"
        );
        assert!(!dir.join("data").exists());
    }
    assert!(
        !String::from_utf8_lossy(&std::fs::read(dir.join("manifest.json")).unwrap())
            .contains("sekrit")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_retires_beyond_k_active_and_archives_what_stays_retired() {
    let sb = Sandbox::builder()
        .registry(|c| {
            c.retention.keep_active = 2;
            c.retention.archive_retired_after_seconds = 1;
            c.retention.interval_seconds = 1;
        })
        .start()
        .await;
    let mut c = sb.registry().await;
    for i in 0..4u8 {
        register(&mut c, "kept", &[i; 100]).await;
    }
    // v1 is still production: retention never retires what serves.
    c.set_alias(evergreen_proto::v1::SetAliasRequest {
        model: "kept".into(),
        alias: "production".into(),
        version: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if status(&mut c, "kept/2").await.status == VersionStatus::Archived as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "v2 was never archived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for v in [1, 3, 4] {
        assert_eq!(
            status(&mut c, &format!("kept/{v}")).await.status,
            VersionStatus::Active as i32,
            "v{v}"
        );
    }
    let h = c
        .history(HistoryRequest {
            model: "kept".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let by_retention: Vec<(i32, u64)> = h
        .iter()
        .filter(|e| e.actor == "evergreen-registry")
        .map(|e| (e.kind, e.version))
        .collect();
    assert_eq!(
        by_retention,
        [
            (EventKind::VersionStatusChanged as i32, 2),
            (EventKind::VersionArchived as i32, 2)
        ]
    );
    assert!(h
        .iter()
        .any(|e| e.reason.contains("keeps at most 2 ACTIVE")));
}
