//! The S3 client against a real S3-compatible server (s3s-fs over HTTP).

use std::time::{Duration, Instant};

use evergreen_s3::testing::TestS3;
use evergreen_s3::{S3Error, S3Store, ATTEMPTS};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_and_download_round_trip_with_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = TestS3::start(&dir.path().join("s3")).await;
    s3.create_bucket("archive");
    let store = S3Store::new(&s3.config("archive")).await;
    store.check().await.unwrap();

    // 12 MiB of varied bytes: three 5 MiB parts (the last one short).
    let src = dir.path().join("big.bin");
    let bytes: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &bytes).unwrap();
    let up = store.put_file("m/1/artifact", &src).await.unwrap();
    assert_eq!(up.size, bytes.len() as u64);
    assert_eq!(store.size("m/1/artifact").await.unwrap(), Some(up.size));
    let dst = dir.path().join("back.bin");
    let down = store.get_file("m/1/artifact", &dst).await.unwrap();
    assert_eq!(down, up, "same size and sha256");
    assert_eq!(std::fs::read(&dst).unwrap(), bytes);

    // Small objects.
    store
        .put_bytes("m/1/manifest.json", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(store.get_bytes("m/1/manifest.json").await.unwrap(), b"{}");
    store.delete("m/1/manifest.json").await.unwrap();
    assert_eq!(store.size("m/1/manifest.json").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_errors_users_meet_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = TestS3::start(&dir.path().join("s3")).await;
    s3.create_bucket("archive");

    // Missing bucket.
    let store = S3Store::new(&s3.config("nope")).await;
    let e = store.check().await.unwrap_err();
    assert!(matches!(e, S3Error::NoSuchBucket { .. }), "{e:?}");
    assert!(e.to_string().contains("\"nope\" does not exist"), "{e}");
    // (s3s-fs creates a bucket directory on PutObject, unlike S3, so the
    // archive checks the bucket before it uploads anything.)

    // Wrong credentials.

    let mut c = s3.config("archive");
    c.secret_access_key = "wrong".into();
    let e = S3Store::new(&c)
        .await
        .put_bytes("k", b"x".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(e, S3Error::Credentials { .. }), "{e:?}");
    assert!(e.to_string().contains("credentials"), "{e}");

    // Object deleted behind our back.
    let store = S3Store::new(&s3.config("archive")).await;
    store.put_bytes("gone", b"x".to_vec()).await.unwrap();
    std::fs::remove_file(s3.object_path("archive", "gone")).unwrap();
    let e = store.get_bytes("gone").await.unwrap_err();
    assert!(matches!(e, S3Error::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("s3://archive/gone"), "{e}");

    // Endpoint down.
    s3.stop().await;
    let e = store.put_bytes("k", b"x".to_vec()).await.unwrap_err();
    assert!(matches!(e, S3Error::Unreachable { .. }), "{e:?}");
    assert!(e.transient());
    assert!(e.to_string().contains(&s3.endpoint()), "{e}");
}

/// An endpoint that accepts connections and then says nothing (a firewall
/// that forgot the flow, a hung server): each attempt is abandoned after
/// `timeout_seconds`, and the call fails as unreachable, naming the
/// endpoint, after `ATTEMPTS` of them — not after minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_fails_after_the_configured_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestS3::start(&dir.path().join("s3"))
        .await
        .config("archive");
    config.endpoint = format!("http://{addr}");
    config.timeout_seconds = 1;
    let store = S3Store::new(&config).await;
    let t = Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        store.put_bytes("k", vec![7; 1 << 20]),
    )
    .await
    .expect("the call gives up by itself")
    .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, S3Error::Unreachable { .. }), "{e:?}");
    assert!(e.transient());
    assert!(e.to_string().contains(&config.endpoint), "{e}");
    // Every attempt waited its full second; backoff adds at most 1 + 2 s.
    let attempts = Duration::from_secs(ATTEMPTS as u64);
    assert!(
        took >= attempts && took < attempts + Duration::from_secs(5),
        "gave up after {took:?}"
    );
}
