//! A real S3-compatible server for tests and benchmarks: s3s + s3s-fs
//! (objects are files under a directory, buckets its subdirectories),
//! served over HTTP/1.1 on 127.0.0.1:0 with SigV4 authentication. Tests
//! use the production client against it — nothing is mocked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::S3Config;

pub const ACCESS_KEY: &str = "evergreen-test";
pub const SECRET_KEY: &str = "evergreen-test-secret";

pub struct TestS3 {
    pub addr: SocketAddr,
    pub root: PathBuf,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestS3 {
    /// Serves `root` (created if needed) on a fresh port.
    pub async fn start(root: &Path) -> TestS3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(root, listener).await
    }

    /// Serves `root` on `addr` again (after `stop`), so clients configured
    /// with the old endpoint reach it.
    pub async fn restart_on(root: &Path, addr: SocketAddr) -> TestS3 {
        let listener = TcpListener::bind(addr).await.expect("bind the same port");
        Self::serve(root, listener).await
    }

    async fn serve(root: &Path, listener: TcpListener) -> TestS3 {
        std::fs::create_dir_all(root).expect("s3 root");
        let addr = listener.local_addr().unwrap();
        let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs");
        let service = {
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            b.build()
        };
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            // Open connections, so that `stop` returns only once they are
            // cut (a client's pooled connection must not outlive it).
            let mut conns = tokio::task::JoinSet::new();
            loop {
                while conns.try_join_next().is_some() {}
                let accepted = tokio::select! {
                    r = listener.accept() => r.ok(),
                    _ = stopped.wait_for(|s| *s) => None,
                };
                let Some((socket, _)) = accepted else {
                    if *stopped.borrow() {
                        while conns.join_next().await.is_some() {}
                        return;
                    }
                    continue;
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                let mut stopped = stopped.clone();
                conns.spawn(async move {
                    tokio::select! {
                        _ = conn => {}
                        // Stopping cuts open connections too: "endpoint down".
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        TestS3 {
            addr,
            root: root.to_path_buf(),
            stop,
            task: Some(task),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration for `bucket` on this server.
    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            endpoint: self.endpoint(),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: String::new(),
            path_style: true,
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            part_size_mib: 5,
            ..S3Config::default()
        }
    }

    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.join(name)).expect("bucket dir");
    }

    /// The file behind an object (to corrupt or delete it behind the
    /// client's back).
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// Stops serving and cuts open connections (returns once they are).
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
