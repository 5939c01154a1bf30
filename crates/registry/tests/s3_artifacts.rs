//! The S3 artifact store (`[registry.artifacts.s3]`) through the registry's
//! real gRPC API, against a real S3-compatible server (s3s-fs over HTTP in
//! this process): artifacts above `inline_artifact_bytes` live only in the
//! bucket, content-addressed; S3 failures are named and register nothing;
//! the registry refuses to start on a bucket it cannot use.

use std::path::{Path, PathBuf};

use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    register_version_request::Part, version_ref::Selector, ArchiveRequest, CreateModelRequest,
    DownloadArtifactRequest, GetModelRequest, RegisterVersionRequest, RestoreRequest,
    SetVersionStatusRequest, VersionHeader, VersionRef, VersionStatus,
};
use evergreen_registry::RegistryConfig;
use evergreen_s3::testing::TestS3;
use evergreen_s3::S3Config;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_evergreen-registry");
const MODEL: &str = "churn";

/// A registry on 127.0.0.1:0 whose large artifacts go to `s3`.
struct Registry {
    client: RegistryClient<Channel>,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

fn config(data_dir: &Path, s3: S3Config) -> RegistryConfig {
    let mut c = RegistryConfig {
        data_dir: data_dir.to_path_buf(),
        monitor_url: String::new(),
        metrics_listen: String::new(),
        ..Default::default()
    };
    c.artifacts.s3 = s3;
    c
}

impl Registry {
    async fn start(data_dir: &Path, s3: S3Config) -> Registry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(evergreen_registry::run(
            config(data_dir, s3),
            listener,
            async {
                let _ = rx.await;
            },
        ));
        let client = RegistryClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20);
        let mut r = Registry {
            client,
            data_dir: data_dir.to_path_buf(),
            stop: Some(tx),
            task,
        };
        let _ = r
            .client
            .create_model(CreateModelRequest {
                name: MODEL.into(),
                ..Default::default()
            })
            .await;
        r
    }

    fn running(&self) -> bool {
        !self.task.is_finished()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    async fn register(&mut self, bytes: &[u8]) -> Result<u64, tonic::Status> {
        let msgs: Vec<RegisterVersionRequest> = std::iter::once(RegisterVersionRequest {
            part: Some(Part::Header(VersionHeader {
                model: MODEL.into(),
                ..Default::default()
            })),
        })
        .chain(bytes.chunks(1 << 20).map(|c| RegisterVersionRequest {
            part: Some(Part::Chunk(c.to_vec())),
        }))
        .collect();
        Ok(self
            .client
            .register_version(tokio_stream::iter(msgs))
            .await?
            .into_inner()
            .version)
    }

    async fn download(&mut self, v: u64) -> Result<Vec<u8>, tonic::Status> {
        let mut s = self
            .client
            .download_artifact(DownloadArtifactRequest { r#ref: vref(v) })
            .await?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = s.message().await? {
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }

    async fn latest(&mut self) -> u64 {
        self.client
            .get_model(GetModelRequest { name: MODEL.into() })
            .await
            .unwrap()
            .into_inner()
            .latest_version
    }

    /// Files under the registry's local artifact directory.
    fn local_artifacts(&self) -> Vec<PathBuf> {
        files(&self.data_dir.join("artifacts/sha256"))
    }
}

fn vref(v: u64) -> Option<VersionRef> {
    Some(VersionRef {
        model: MODEL.into(),
        selector: Some(Selector::Version(v)),
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `len` bytes that differ with `seed`.
fn payload(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn object_key(sha: &str) -> String {
    format!("evergreen/artifacts/sha256/{}/{sha}", &sha[..2])
}

/// The client config for bucket "models", prefix `evergreen/`.
fn models(s3: &TestS3) -> S3Config {
    let mut c = s3.config("models");
    c.prefix = "evergreen/".into();
    c
}

/// A TestS3 with bucket "models", and its client config.
async fn s3(dir: &Path) -> (TestS3, S3Config) {
    let s3 = TestS3::start(&dir.join("s3")).await;
    s3.create_bucket("models");
    let c = models(&s3);
    (s3, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_artifacts_live_only_in_s3_content_addressed_and_stream_back() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, s3_config) = s3(dir.path()).await;
    let mut r = Registry::start(&dir.path().join("registry"), s3_config).await;

    // 11 MiB: a multipart upload of three 5 MiB parts.
    let big = payload(11 << 20, 1);
    let v1 = r.register(&big).await.unwrap();
    let object = s3.object_path("models", &object_key(&sha(&big)));
    assert_eq!(
        std::fs::read(&object).unwrap(),
        big,
        "the object holds the bytes"
    );
    assert_eq!(r.local_artifacts(), Vec::<PathBuf>::new(), "nothing local");
    assert_eq!(r.download(v1).await.unwrap(), big);

    // Small artifacts stay inline in the database, not in the bucket.
    let small = payload(1000, 2);
    let v2 = r.register(&small).await.unwrap();
    assert!(!s3.object_path("models", &object_key(&sha(&small))).exists());
    assert_eq!(r.download(v2).await.unwrap(), small);

    // The same bytes again: a new version, the same object, not re-sent.
    let mtime = std::fs::metadata(&object).unwrap().modified().unwrap();
    let v3 = r.register(&big).await.unwrap();
    assert_eq!(v3, 3);
    assert_eq!(r.download(v3).await.unwrap(), big);
    assert_eq!(
        std::fs::metadata(&object).unwrap().modified().unwrap(),
        mtime,
        "an identical upload is a no-op"
    );
    let objects = files(&dir.path().join("s3/models/evergreen/artifacts"));
    assert_eq!(
        objects,
        vec![object.clone()],
        "one object for both versions"
    );

    // Survives a restart (the object is found again, nothing local).
    r.stop().await;
    let mut r = Registry::start(&dir.path().join("registry"), models(&s3)).await;
    assert_eq!(r.download(v1).await.unwrap(), big);
    assert!(r.local_artifacts().is_empty());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_removes_the_object_and_restore_puts_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, s3_config) = s3(dir.path()).await;
    let mut r = Registry::start(&dir.path().join("registry"), s3_config).await;
    let bytes = payload(300 << 10, 3);
    let v = r.register(&bytes).await.unwrap();
    let object = s3.object_path("models", &object_key(&sha(&bytes)));
    assert!(object.is_file());

    r.client
        .set_version_status(SetVersionStatusRequest {
            r#ref: vref(v),
            status: VersionStatus::Retired as i32,
            reason: "superseded".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The archive (a local directory here) streams the artifact from S3.
    let archived = r
        .client
        .archive(ArchiveRequest {
            r#ref: vref(v),
            reason: "retention".into(),
            include_data: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(archived.status, VersionStatus::Archived as i32);
    let archive_copy = files(&r.data_dir.join("archive"))
        .into_iter()
        .find(|p| p.ends_with("artifact.evgm"))
        .expect("archived artifact");
    assert_eq!(std::fs::read(archive_copy).unwrap(), bytes);
    assert!(!object.exists(), "archiving freed the S3 object");
    let e = r.download(v).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    r.client
        .restore(RestoreRequest {
            r#ref: vref(v),
            reason: "audit".into(),
            activate: true,
        })
        .await
        .unwrap();
    assert_eq!(std::fs::read(&object).unwrap(), bytes, "restored into S3");
    assert_eq!(r.download(v).await.unwrap(), bytes);
    assert!(r.local_artifacts().is_empty());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_corrupt_object_is_data_loss_naming_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, s3_config) = s3(dir.path()).await;
    let mut r = Registry::start(&dir.path().join("registry"), s3_config).await;
    let a = payload(400 << 10, 4);
    let b = payload(400 << 10, 5);
    let va = r.register(&a).await.unwrap();
    let vb = r.register(&b).await.unwrap();

    std::fs::remove_file(s3.object_path("models", &object_key(&sha(&a)))).unwrap();
    let e = r.download(va).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(
        e.message().contains(&sha(&a)) && e.message().contains("does not exist"),
        "{e:?}"
    );

    // Same size, other bytes: caught by the checksum at the end of the
    // stream (the SDK's or the registry's sha256), never served as valid.
    std::fs::write(
        s3.object_path("models", &object_key(&sha(&b))),
        payload(400 << 10, 6),
    )
    .unwrap();
    let e = r.download(vb).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(e.message().contains(&sha(&b)), "{e:?}");

    // A multipart object carries no whole-object checksum the SDK could
    // check: the registry's own sha256 at the end of the stream catches it.
    let c = payload(6 << 20, 10);
    let vc = r.register(&c).await.unwrap();
    let mut bad = c.clone();
    bad[5 << 20] ^= 1;
    std::fs::write(s3.object_path("models", &object_key(&sha(&c))), bad).unwrap();
    let e = r.download(vc).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(
        e.message().contains(&sha(&c)) && e.message().contains("corrupt"),
        "{e:?}"
    );

    // The daemon keeps serving; re-registering the lost bytes heals them.
    assert!(r.running());
    let again = r.register(&a).await.unwrap();
    assert_eq!(r.download(va).await.unwrap(), a);
    assert_eq!(r.download(again).await.unwrap(), a);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_is_unavailable_naming_the_endpoint_and_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s3, s3_config) = s3(dir.path()).await;
    let endpoint = s3.endpoint();
    let mut r = Registry::start(&dir.path().join("registry"), s3_config).await;
    let stored = payload(200 << 10, 7);
    let v1 = r.register(&stored).await.unwrap();

    s3.stop().await;
    let big = payload(6 << 20, 8);
    let e = r.register(&big).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&endpoint) && e.message().contains(&sha(&big)),
        "{e:?}"
    );
    assert_eq!(r.latest().await, v1, "no version without its artifact");
    assert!(r.local_artifacts().is_empty());
    let tmp = files(&r.data_dir.join("tmp"));
    assert!(tmp.is_empty(), "the staged upload is gone: {tmp:?}");

    let e = r.download(v1).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&endpoint), "{e:?}");

    // Small artifacts do not need S3; the daemon keeps running.
    assert!(r.running());
    let small = r.register(&payload(100, 9)).await.unwrap();
    assert_eq!(small, v1 + 1);

    // Back up: the same upload now works.
    let _s3 = TestS3::restart_on(&dir.path().join("s3"), s3.addr).await;
    let v = r.register(&big).await.unwrap();
    assert_eq!(v, small + 1);
    assert_eq!(r.download(v).await.unwrap(), big);
    assert_eq!(r.download(v1).await.unwrap(), stored);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_bucket_it_cannot_use_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s3, good) = s3(dir.path()).await;
    let start = |s3: S3Config, name: &str| {
        let data_dir = dir.path().join(name);
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            evergreen_registry::run(config(&data_dir, s3), listener, async {})
                .await
                .unwrap_err()
                .to_string()
        }
    };

    let mut c = good.clone();
    c.bucket = "nope".into();
    let e = start(c, "a").await;
    assert!(
        e.starts_with("registry.artifacts.s3.bucket = \"nope\"") && e.contains("does not exist"),
        "{e}"
    );

    let mut c = good.clone();
    c.secret_access_key = "wrong".into();
    let e = start(c, "b").await;
    assert!(
        e.starts_with(
            "registry.artifacts.s3.access_key_id / registry.artifacts.s3.secret_access_key"
        ),
        "{e}"
    );

    let mut c = good.clone();
    c.part_size_mib = 1;
    let e = start(c, "c").await;
    assert!(e.contains("registry.artifacts.s3.part_size_mib = 1"), "{e}");

    s3.stop().await;
    let e = start(good, "d").await;
    assert!(
        e.starts_with(&format!(
            "registry.artifacts.s3.endpoint = \"{}\"",
            s3.endpoint()
        )) && e.contains("unreachable"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

/// The binary, configured through the environment: one line, exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_names_the_missing_bucket_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_s3, good) = s3(dir.path()).await;
    let out = tokio::process::Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("registry"))
        .env("EVERGREEN_LOG", "error")
        .env("EVERGREEN_REGISTRY__METRICS_LISTEN", "")
        .env(
            "EVERGREEN_REGISTRY__ARTIFACTS__S3__ENDPOINT",
            &good.endpoint,
        )
        .env("EVERGREEN_REGISTRY__ARTIFACTS__S3__BUCKET", "missing")
        .env("EVERGREEN_REGISTRY__ARTIFACTS__S3__PATH_STYLE", "true")
        .env(
            "EVERGREEN_REGISTRY__ARTIFACTS__S3__ACCESS_KEY_ID",
            &good.access_key_id,
        )
        .env(
            "EVERGREEN_REGISTRY__ARTIFACTS__S3__SECRET_ACCESS_KEY",
            &good.secret_access_key,
        )
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line, got {stderr:?}");
    assert!(
        stderr.contains("registry.artifacts.s3.bucket = \"missing\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_stored_before_s3_was_configured_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, s3_config) = s3(dir.path()).await;
    let data_dir = dir.path().join("registry");
    let mut r = Registry::start(&data_dir, S3Config::default()).await;
    let old = payload(300 << 10, 11);
    let v1 = r.register(&old).await.unwrap();
    assert_eq!(r.local_artifacts().len(), 1);
    r.stop().await;

    let mut r = Registry::start(&data_dir, s3_config).await;
    assert_eq!(r.download(v1).await.unwrap(), old);
    let new = payload(300 << 10, 12);
    let v2 = r.register(&new).await.unwrap();
    assert_eq!(r.download(v2).await.unwrap(), new);
    assert!(s3.object_path("models", &object_key(&sha(&new))).is_file());
    assert!(!s3.object_path("models", &object_key(&sha(&old))).exists());
    assert_eq!(r.local_artifacts().len(), 1, "only the old one is local");
    r.stop().await;
}
