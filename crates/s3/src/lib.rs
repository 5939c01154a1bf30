//! Evergreen's S3 access, shared by the registry (archive, restore) and the
//! trainer (`s3://` datasets), on aws-sdk-s3.
//!
//! - `S3Config`: endpoint override and path-style addressing for
//!   S3-compatible servers (MinIO, …), static keys or the standard AWS
//!   credential chain, part size.
//! - `S3Store`: streaming multipart upload from a file (memory stays at one
//!   part), streaming download into a file with its sha256, small objects,
//!   head/delete.
//! - `S3Error`: what a user will meet — missing bucket, wrong credentials,
//!   endpoint down, object missing — each a clear sentence.
//! - `testing` (feature `test-server`): s3s + s3s-fs served over real HTTP on
//!   127.0.0.1:0, so tests exercise the real client end to end.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[cfg(feature = "test-server")]
pub mod testing;

/// Where and how to reach S3. Empty strings mean "the default".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// e.g. `http://minio:9000`; empty = AWS.
    pub endpoint: String,
    /// Region (any value for most S3-compatible servers).
    pub region: String,
    /// Bucket name; empty = S3 not used.
    pub bucket: String,
    /// Prepended to every key (e.g. `evergreen/`).
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), as most S3-compatible
    /// servers need.
    pub path_style: bool,
    /// Static credentials; both empty = the standard AWS chain (env vars,
    /// profile, web identity, instance metadata).
    pub access_key_id: String,
    /// Secret of `access_key_id`.
    pub secret_access_key: String,
    /// Multipart part size in MiB (≥ 5, S3's minimum).
    pub part_size_mib: u64,
    /// Each S3 request attempt must finish within this many seconds (1 to
    /// 3600), or it is abandoned and retried (3 attempts; an abandoned
    /// multipart upload's abort gets one). An endpoint that accepts
    /// connections and then says nothing so fails a call in about 3× this,
    /// as UNAVAILABLE. An attempt includes sending its body: the default
    /// 60 lets an 8 MiB part (`part_size_mib`) go up at ≥ 140 KiB/s; raise
    /// it with `part_size_mib` on slow links. Downloads are bounded to the
    /// first byte; a body that stalls mid-way is cut by the SDK's
    /// stalled-stream protection (no progress for 20 s).
    pub timeout_seconds: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            path_style: false,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            part_size_mib: 8,
            timeout_seconds: 60,
        }
    }
}

impl S3Config {
    /// Checks values serde cannot; errors name the key under `section`.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        let url = self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://");
        if !self.endpoint.is_empty() && !url {
            return Err(format!(
                "invalid {section}.endpoint = {:?}: expected an http:// or https:// URL (or empty for AWS)",
                self.endpoint
            ));
        }
        if self.access_key_id.is_empty() != self.secret_access_key.is_empty() {
            return Err(format!(
                "{section}.access_key_id and {section}.secret_access_key go together: set both, or neither for the standard AWS credential chain"
            ));
        }
        if self.part_size_mib < 5 || self.part_size_mib > 5 * 1024 {
            return Err(format!(
                "invalid {section}.part_size_mib = {}: expected 5 to 5120 (S3's part size limits)",
                self.part_size_mib
            ));
        }
        if !(1..=3600).contains(&self.timeout_seconds) {
            return Err(format!(
                "invalid {section}.timeout_seconds = {}: expected 1 to 3600 (seconds one S3 request attempt may take)",
                self.timeout_seconds
            ));
        }
        if self.region.is_empty() {
            return Err(format!(
                "invalid {section}.region = \"\": expected e.g. us-east-1"
            ));
        }
        Ok(())
    }

    /// Whether a bucket is configured at all.
    pub fn enabled(&self) -> bool {
        !self.bucket.is_empty()
    }

    /// `s3://bucket/prefix+key`, for messages and records.
    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{}{}", self.bucket, self.prefix, key)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum S3Error {
    #[error(
        "S3 bucket {bucket:?} does not exist at {endpoint}: create it or fix the bucket setting"
    )]
    NoSuchBucket { bucket: String, endpoint: String },
    #[error("S3 refused the credentials ({code}): {message}; check access_key_id / secret_access_key or the AWS credential chain")]
    Credentials { code: String, message: String },
    #[error("S3 object {uri} does not exist (deleted behind our back?)")]
    NotFound { uri: String },
    #[error("S3 endpoint {endpoint} is unreachable: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("S3 {operation} of {uri} failed: {message}")]
    Other {
        operation: String,
        uri: String,
        message: String,
    },
    #[error("local file {path}: {message}")]
    Local { path: String, message: String },
    #[error("S3 object {uri} is corrupt: {message}")]
    Corrupt { uri: String, message: String },
}

/// A failure while reading an object's body: corruption (the SDK checks the
/// checksums S3 stored at upload) or a transfer error.
fn body_error(uri: String, e: impl std::error::Error + 'static) -> S3Error {
    let message = DisplayErrorContext(&e).to_string();
    if message.contains("checksum mismatch") {
        S3Error::Corrupt { uri, message }
    } else {
        S3Error::Other {
            operation: "download".into(),
            uri,
            message,
        }
    }
}

impl S3Error {
    /// Whether retrying later may help (endpoint down, throttling).
    pub fn transient(&self) -> bool {
        matches!(self, S3Error::Unreachable { .. })
    }
}

impl S3Error {
    /// The `S3Error` inside an `io::Error` from an [`ObjectReader`], if any.
    pub fn of_io(e: &std::io::Error) -> Option<&S3Error> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<S3Error>())
    }
}

/// An object's body as `AsyncRead` (see [`S3Store::reader`]).
pub struct ObjectReader {
    inner: std::pin::Pin<Box<dyn tokio::io::AsyncBufRead + Send>>,
    uri: String,
}

impl tokio::io::AsyncRead for ObjectReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match tokio::io::AsyncRead::poll_read(self.inner.as_mut(), cx, buf) {
            std::task::Poll::Ready(Err(e)) => {
                std::task::Poll::Ready(Err(std::io::Error::other(body_error(self.uri.clone(), e))))
            }
            other => other,
        }
    }
}

/// Size and sha256 of what was moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    pub size: u64,
    pub sha256: String,
}

/// Attempts per S3 request (the SDK's standard retry: the first one and
/// two retries, with jittered backoff of at most 1 s then 2 s).
pub const ATTEMPTS: u32 = 3;

#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    config: S3Config,
}

fn endpoint_name(c: &S3Config) -> String {
    if c.endpoint.is_empty() {
        format!("AWS S3 ({})", c.region)
    } else {
        c.endpoint.clone()
    }
}

impl S3Store {
    /// A client for `config` (nothing is contacted yet).
    pub async fn new(config: &S3Config) -> S3Store {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        // The attempt timeout covers a request from its first byte sent to
        // its response read (for GetObject, to the body's first byte), so a
        // silent endpoint costs `ATTEMPTS` × `timeout_seconds`, not forever.
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(config.timeout_seconds))
            .build();
        let mut b = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .http_client(http.clone())
            .region(aws_sdk_s3::config::Region::new(config.region.clone()))
            .force_path_style(config.path_style)
            .timeout_config(timeouts)
            .retry_config(
                aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(ATTEMPTS),
            );
        if !config.endpoint.is_empty() {
            b = b.endpoint_url(config.endpoint.clone());
        }
        if !config.access_key_id.is_empty() {
            b = b.credentials_provider(aws_credential_types::Credentials::new(
                config.access_key_id.clone(),
                config.secret_access_key.clone(),
                None,
                None,
                "evergreen-config",
            ));
        } else {
            let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .http_client(http)
                .region(aws_config::Region::new(config.region.clone()))
                .load()
                .await;
            if let Some(p) = shared.credentials_provider() {
                b = b.credentials_provider(p);
            }
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.config.prefix, key)
    }

    fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        operation: &str,
        key: &str,
        e: SdkError<E, R>,
    ) -> S3Error {
        let uri = self.config.uri(key);
        let endpoint = endpoint_name(&self.config);
        match &e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                return S3Error::Unreachable {
                    endpoint,
                    message: DisplayErrorContext(&e).to_string(),
                }
            }
            _ => {}
        }
        let code = e.code().unwrap_or_default().to_string();
        let message = e.message().unwrap_or_default().to_string();
        match code.as_str() {
            "NoSuchBucket" => S3Error::NoSuchBucket {
                bucket: self.config.bucket.clone(),
                endpoint,
            },
            "NoSuchKey" | "NotFound" => S3Error::NotFound { uri },
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "ExpiredToken" => S3Error::Credentials { code, message },
            _ => {
                // HEAD responses carry no body, so no code: use the status.
                let status = match &e {
                    SdkError::ServiceError(s) => format!("{:?}", s.raw()),
                    _ => String::new(),
                };
                if status.contains("404") && operation == "head" {
                    return S3Error::NotFound { uri };
                }
                if status.contains("403") {
                    return S3Error::Credentials {
                        code: "403".into(),
                        message: "forbidden".into(),
                    };
                }
                S3Error::Other {
                    operation: operation.into(),
                    uri,
                    message: if code.is_empty() {
                        DisplayErrorContext(&e).to_string()
                    } else {
                        format!("{code}: {message}")
                    },
                }
            }
        }
    }

    /// Checks that the bucket exists and the credentials work.
    pub async fn check(&self) -> Result<(), S3Error> {
        match self
            .client
            .head_bucket()
            .bucket(&self.config.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let raw404 =
                    matches!(&e, SdkError::ServiceError(s) if s.raw().status().as_u16() == 404);
                if raw404 {
                    return Err(S3Error::NoSuchBucket {
                        bucket: self.config.bucket.clone(),
                        endpoint: endpoint_name(&self.config),
                    });
                }
                Err(self.classify("head-bucket", "", e))
            }
        }
    }

    /// Uploads a small object in one request.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<Transferred, S3Error> {
        let t = Transferred {
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        self.client
            .put_object()
            .bucket(&self.config.bucket)
            .key(self.key(key))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.classify("upload", key, e))?;
        Ok(t)
    }

    /// Uploads a file: one request up to the part size, else a multipart
    /// upload that reads one part at a time (memory stays at one part).
    /// An unfinished multipart upload is aborted.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<Transferred, S3Error> {
        let local = |e: std::io::Error| S3Error::Local {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let mut file = tokio::fs::File::open(path).await.map_err(local)?;
        let size = file.metadata().await.map_err(local)?.len();
        let part = (self.config.part_size_mib << 20) as usize;
        if size as usize <= part {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).await.map_err(local)?;
            return self.put_bytes(key, bytes).await;
        }
        let full = self.key(key);
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.config.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.classify("upload", key, e))?;
        let id = upload.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut hasher = Sha256::new();
            let mut parts = Vec::new();
            let mut n = 1;
            loop {
                let mut buf = Vec::with_capacity(part);
                (&mut file)
                    .take(part as u64)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(local)?;
                if buf.is_empty() {
                    break;
                }
                hasher.update(&buf);
                let r = self
                    .client
                    .upload_part()
                    .bucket(&self.config.bucket)
                    .key(&full)
                    .upload_id(&id)
                    .part_number(n)
                    .body(ByteStream::from(buf))
                    .send()
                    .await
                    .map_err(|e| self.classify("upload", key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .set_e_tag(r.e_tag().map(str::to_string))
                        .part_number(n)
                        .build(),
                );
                n += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.config.bucket)
                .key(&full)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.classify("upload", key, e))?;
            Ok(hex::encode(hasher.finalize()))
        }
        .await;
        match result {
            Ok(sha256) => Ok(Transferred { size, sha256 }),
            Err(e) => {
                // Best effort, one attempt: when the endpoint has gone
                // silent this costs one more timeout, not `ATTEMPTS`.
                let once = aws_sdk_s3::config::Builder::default().retry_config(
                    aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(1),
                );
                if let Err(abort) = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.config.bucket)
                    .key(&full)
                    .upload_id(&id)
                    .customize()
                    .config_override(once)
                    .send()
                    .await
                {
                    tracing::warn!(uri = %self.config.uri(key), error = %DisplayErrorContext(&abort), "cannot abort a failed multipart upload; its parts stay until the bucket's lifecycle rules remove them");
                }
                Err(e)
            }
        }
    }

    /// Downloads an object into `path` (created or truncated), streaming,
    /// and returns its size and sha256.
    pub async fn get_file(&self, key: &str, path: &Path) -> Result<Transferred, S3Error> {
        let local = |e: std::io::Error| S3Error::Local {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let mut body = self.body(key).await?;
        let mut file = tokio::fs::File::create(path).await.map_err(local)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| body_error(self.config.uri(key), e))?
        {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.flush().await.map_err(local)?;
        file.sync_all().await.map_err(local)?;
        Ok(Transferred {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    /// The body stream of an object (GetObject).
    async fn body(&self, key: &str) -> Result<ByteStream, S3Error> {
        let resp = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|e| self.classify("download", key, e))?;
        Ok(resp.body)
    }

    /// Opens an object for a streaming read (GetObject); nothing is
    /// buffered beyond what the caller reads. A failure before the body
    /// starts is the `S3Error`; one while reading it is an `io::Error`
    /// carrying an `S3Error` (`Corrupt` when the SDK's checksum check fails,
    /// `Other` for a broken transfer) — see [`S3Error::of_io`].
    pub async fn reader(&self, key: &str) -> Result<ObjectReader, S3Error> {
        let body = self.body(key).await?;
        Ok(ObjectReader {
            inner: Box::pin(body.into_async_read()),
            uri: self.config.uri(key),
        })
    }

    /// Downloads a small object into memory.
    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, S3Error> {
        let bytes = self
            .body(key)
            .await?
            .collect()
            .await
            .map_err(|e| body_error(self.config.uri(key), e))?;

        Ok(bytes.into_bytes().to_vec())
    }

    /// The object's size, or None when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, S3Error> {
        match self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(self.key(key))
            .send()
            .await
        {
            Ok(r) => Ok(Some(r.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => match self.classify("head", key, e) {
                S3Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|e| self.classify("delete", key, e))?;
        Ok(())
    }
}

/// Splits `s3://bucket/key` into its parts.
pub fn parse_uri(uri: &str) -> Result<(String, String), String> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{uri:?} is not an s3:// URI: expected s3://BUCKET/KEY"))?;
    match rest.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok((b.to_string(), k.to_string())),
        _ => Err(format!("{uri:?} names no object: expected s3://BUCKET/KEY")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_config_are_checked() {
        assert_eq!(
            parse_uri("s3://b/dir/x.csv").unwrap(),
            ("b".to_string(), "dir/x.csv".to_string())
        );
        assert!(parse_uri("s3://b/")
            .unwrap_err()
            .contains("names no object"));
        assert!(parse_uri("/tmp/x")
            .unwrap_err()
            .contains("not an s3:// URI"));
        let mut c = S3Config {
            bucket: "b".into(),
            ..Default::default()
        };
        assert!(c.validate("registry.s3").is_ok());
        c.access_key_id = "k".into();
        assert!(c
            .validate("registry.s3")
            .unwrap_err()
            .contains("registry.s3.access_key_id and registry.s3.secret_access_key"));
        c.secret_access_key = "s".into();
        c.part_size_mib = 1;
        assert!(c.validate("x").unwrap_err().contains("part_size_mib = 1"));
        c.part_size_mib = 8;
        for bad in [0, 3601] {
            c.timeout_seconds = bad;
            let e = c.validate("registry.archive.s3").unwrap_err();
            assert!(
                e.contains(&format!("registry.archive.s3.timeout_seconds = {bad}"))
                    && e.contains("expected 1 to 3600"),
                "{e}"
            );
        }
        c.timeout_seconds = 60;
        assert!(c.validate("x").is_ok());
        c.endpoint = "minio:9000".into();
        assert!(c.validate("x").unwrap_err().contains("http://"));
    }
}
