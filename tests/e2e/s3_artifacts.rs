//! Server replicas share artifacts through S3 (`[registry.artifacts.s3]`):
//! two prediction servers follow one registry whose artifacts live only in
//! a bucket (a real S3-compatible server, s3s-fs over HTTP); both load a
//! version from there, and a promotion hot-swaps both.

use evergreen_e2e::{dataset, Sandbox};
use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::{GetVersionRequest, PredictRequest, SetAliasRequest};
use evergreen_s3::testing::TestS3;
use evergreen_server::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::closed_loop::{flipped_dataset, load, to_row, train, until};

const MODEL: &str = "shared";

/// Files under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The version `server` answers `row` with (None while it has no model).
async fn served(server: &str, row: &[f64]) -> Option<u64> {
    let mut p = PredictorClient::new(
        Channel::from_shared(server.to_string())
            .unwrap()
            .connect()
            .await
            .ok()?,
    );
    let r = p
        .predict(PredictRequest {
            model: MODEL.into(),
            rows: vec![to_row(row)],
            request_id: String::new(),
        })
        .await
        .ok()?;
    Some(r.into_inner().version)
}

async fn promote(sb: &Sandbox, version: u64) {
    sb.registry()
        .await
        .set_alias(SetAliasRequest {
            model: MODEL.into(),
            alias: "production".into(),
            version,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The version's artifact digest and size, from the registry.
async fn artifact(sb: &Sandbox, version: u64) -> (String, u64) {
    let v = sb
        .registry()
        .await
        .get_version(GetVersionRequest {
            r#ref: evergreen_e2e::req::version(MODEL, version),
        })
        .await
        .unwrap()
        .into_inner();
    let a = v.artifact.unwrap();
    (a.sha256, a.size_bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_server_replicas_load_from_s3_and_both_hot_swap_on_promotion() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = TestS3::start(&dir.path().join("s3")).await;
    s3.create_bucket("artifacts");
    let mut s3_config = s3.config("artifacts");
    s3_config.prefix = "prod/".into();
    let sb = Sandbox::builder()
        .registry(move |c| {
            c.artifacts.s3 = s3_config;
            // Every trained model is above this: none stays in the database.
            c.inline_artifact_bytes = 1024;
        })
        .trainer()
        .server(|_| {})
        .start()
        .await;
    // The second replica: same config, same registry.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica = format!("http://{}", listener.local_addr().unwrap());
    let (stop_replica, stopped) = oneshot::channel::<()>();
    let config = ServerConfig {
        registry_url: sb.registry_url(),
        metrics_listen: String::new(),
        ..Default::default()
    };
    let replica_task = tokio::spawn(evergreen_server::run(config, listener, async {
        let _ = stopped.await;
    }));
    let servers = [sb.server_url(), replica.clone()];

    let v1 = train(&sb, MODEL, &dataset("breast_cancer.csv")).await;
    let v2 = train(&sb, MODEL, &flipped_dataset(dir.path())).await;

    // Both artifacts are objects in the bucket, and nowhere in the
    // registry's local artifact directory.
    for v in [v1, v2] {
        let (sha, size) = artifact(&sb, v).await;
        assert!(size > 1024, "v{v} is {size} bytes: it must not be inline");
        let object = s3.object_path(
            "artifacts",
            &format!("prod/artifacts/sha256/{}/{sha}", &sha[..2]),
        );
        assert_eq!(
            std::fs::metadata(&object)
                .unwrap_or_else(|e| panic!("v{v}: no object {}: {e}", object.display()))
                .len(),
            size
        );
    }
    assert_eq!(
        files(&sb.data_dir().join("artifacts")),
        Vec::<std::path::PathBuf>::new(),
        "no artifact file on the registry's disk"
    );

    let row = load()[0].0.clone();
    promote(&sb, v1).await;
    for s in &servers {
        until(&format!("{s} serves v{v1}"), || async {
            (served(s, &row).await == Some(v1)).then_some(())
        })
        .await;
    }

    // A promotion hot-swaps both replicas to the version loaded from S3.
    promote(&sb, v2).await;
    for s in &servers {
        until(&format!("{s} serves v{v2}"), || async {
            (served(s, &row).await == Some(v2)).then_some(())
        })
        .await;
    }

    let _ = stop_replica.send(());
    replica_task.await.unwrap().unwrap();
}
