//! Content-addressed artifact storage. The registry never looks inside an
//! artifact: it stores bytes under their sha256 and streams them back.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use std::task::{Context, Poll};

use async_trait::async_trait;
use evergreen_s3::{S3Config, S3Error, S3Store};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::error::{RegistryError, Result};

/// Where artifact bytes live: the local directory by default, S3 when
/// `registry.artifacts.s3.bucket` is set.
#[async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Starts an upload. Dropping the upload without `commit` discards it.
    async fn begin(&self) -> Result<Box<dyn ArtifactUpload>>;
    /// Opens the artifact with this digest for streaming.
    async fn open(&self, sha256: &str) -> Result<Pin<Box<dyn AsyncRead + Send>>>;
    /// Frees the bytes (after an archive); missing bytes are not an error.
    async fn remove(&self, sha256: &str) -> Result<()>;
    /// The file holding the artifact, when it is a local file (the archive
    /// uploads from it without a staging copy).
    fn local_path(&self, _sha256: &str) -> Option<PathBuf> {
        None
    }
}

#[async_trait]
pub trait ArtifactUpload: Send {
    async fn write(&mut self, chunk: &[u8]) -> Result<()>;
    /// Makes the bytes durable under `sha256` (idempotent: a second upload of
    /// the same bytes is a no-op).
    async fn commit(self: Box<Self>, sha256: &str) -> Result<()>;
}

/// Artifacts as files `sha256/ab/abcdef…` under a directory; uploads go to
/// `tmp/` first, are fsynced, then renamed into place.
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(root.join("sha256"))?;
        // Leftovers of uploads interrupted by a crash.
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(&sha256[..2]).join(sha256)
    }
}

#[async_trait]
impl ArtifactStore for LocalDirStore {
    async fn begin(&self) -> Result<Box<dyn ArtifactUpload>> {
        let tmp = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(self.root.join("tmp"))?;
        let file = tokio::fs::File::from_std(tmp.reopen()?);
        Ok(Box::new(LocalUpload {
            file: tokio::io::BufWriter::with_capacity(256 * 1024, file),
            tmp,
            root: self.root.clone(),
        }))
    }

    async fn open(&self, sha256: &str) -> Result<Pin<Box<dyn AsyncRead + Send>>> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::Storage(format!(
                "malformed artifact digest {sha256:?}"
            )));
        }
        let file = tokio::fs::File::open(self.path_of(sha256))
            .await
            .map_err(|e| {
                let msg = format!("artifact {sha256} is missing from the store: {e}");
                match e.kind() {
                    std::io::ErrorKind::NotFound => RegistryError::DataLoss(msg),
                    _ => RegistryError::Storage(msg),
                }
            })?;
        Ok(Box::pin(file))
    }

    fn local_path(&self, sha256: &str) -> Option<PathBuf> {
        let ok = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        Some(self.path_of(sha256)).filter(|p| ok && p.is_file())
    }

    async fn remove(&self, sha256: &str) -> Result<()> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::Storage(format!(
                "malformed artifact digest {sha256:?}"
            )));
        }
        match tokio::fs::remove_file(self.path_of(sha256)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

struct LocalUpload {
    file: tokio::io::BufWriter<tokio::fs::File>,
    tmp: tempfile::NamedTempFile,
    root: PathBuf,
}

#[async_trait]
impl ArtifactUpload for LocalUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.file.write_all(chunk).await?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, sha256: &str) -> Result<()> {
        self.file.flush().await?;
        self.file.get_ref().sync_data().await?;
        let dir = self.root.join("sha256").join(&sha256[..2]);
        let target = dir.join(sha256);
        let tmp = self.tmp;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if target.exists() {
                return Ok(()); // same bytes already stored; tmp is removed on drop
            }
            std::fs::create_dir_all(&dir)?;
            tmp.persist(&target).map_err(|e| e.error)?;
            // Make the rename itself durable.
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| RegistryError::Storage(format!("artifact commit task failed: {e}")))??;
        Ok(())
    }
}

fn check_digest(sha256: &str) -> Result<()> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RegistryError::Storage(format!(
            "malformed artifact digest {sha256:?}"
        )));
    }
    Ok(())
}

/// Artifacts as S3 objects `<prefix>artifacts/sha256/ab/<sha256>`, so that
/// every registry and tool pointed at the bucket sees the same bytes
/// (content-addressed: uploading the same bytes twice is a no-op).
///
/// An upload is staged in a temp file under `tmp` (memory stays at one
/// multipart part), sent with a streaming multipart upload whose sha256 must
/// be the digest, and checked with a HEAD (size) before `commit` returns, so
/// no version is recorded without its artifact in the bucket. Reads stream
/// the object and check its sha256 at the end (a mismatch or a missing
/// object is `DataLoss` naming the digest). Artifacts written to the local
/// directory before S3 was configured are still read (and removed) there.
pub struct S3ArtifactStore {
    s3: S3Store,
    tmp: PathBuf,
    legacy: LocalDirStore,
}

/// Names the `registry.artifacts.s3` key to fix when S3 is not usable at
/// start-up.
fn startup_error(section: &str, config: &S3Config, e: &S3Error) -> String {
    match e {
        S3Error::NoSuchBucket { .. } => format!("{section}.bucket = {:?}: {e}", config.bucket),
        S3Error::Credentials { .. } => format!(
            "{section}.access_key_id / {section}.secret_access_key (bucket {:?}): {e}",
            config.bucket
        ),
        S3Error::Unreachable { .. } => format!(
            "{section}.endpoint = {:?}: {e}; the registry needs its artifact store at start-up",
            config.endpoint
        ),
        _ => format!("{section} (bucket {:?}): {e}", config.bucket),
    }
}

/// An S3 failure on artifact `sha256`, as the error a caller sees.
fn s3_error(sha256: &str, doing: &str, e: S3Error) -> RegistryError {
    let msg = format!("{doing} artifact {sha256} in the S3 artifact store failed: {e}");
    match e {
        S3Error::Unreachable { .. } | S3Error::Other { .. } => RegistryError::Unavailable(msg),
        S3Error::NoSuchBucket { .. } | S3Error::Credentials { .. } => {
            RegistryError::FailedPrecondition(msg)
        }
        S3Error::NotFound { .. } | S3Error::Corrupt { .. } => RegistryError::DataLoss(format!(
            "artifact {sha256} is lost from the S3 artifact store: {e}"
        )),
        S3Error::Local { .. } => RegistryError::Storage(msg),
    }
}

const UPLOAD_PREFIX: &str = "artifact-upload-";

impl S3ArtifactStore {
    /// A store on `config`'s bucket, checked now (bucket, credentials,
    /// endpoint): an error is one line naming the key under `section`.
    /// Uploads are staged in `tmp`; `legacy` holds artifacts stored before
    /// S3 was configured.
    pub async fn connect(
        config: &S3Config,
        section: &str,
        tmp: &Path,
        legacy: LocalDirStore,
    ) -> std::result::Result<Self, String> {
        std::fs::create_dir_all(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        // Leftovers of uploads interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(tmp) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(UPLOAD_PREFIX)
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let s3 = S3Store::new(config).await;
        s3.check()
            .await
            .map_err(|e| startup_error(section, config, &e))?;
        Ok(Self {
            s3,
            tmp: tmp.to_path_buf(),
            legacy,
        })
    }

    /// The object key of an artifact (the configured prefix goes in front).
    pub fn key(sha256: &str) -> String {
        format!("artifacts/sha256/{}/{sha256}", &sha256[..2])
    }

    /// `s3://bucket/prefix…` of an artifact, for logs and messages.
    pub fn uri(&self, sha256: &str) -> String {
        self.s3.config().uri(&Self::key(sha256))
    }
}

#[async_trait]
impl ArtifactStore for S3ArtifactStore {
    async fn begin(&self) -> Result<Box<dyn ArtifactUpload>> {
        let tmp = tempfile::Builder::new()
            .prefix(UPLOAD_PREFIX)
            .tempfile_in(&self.tmp)?;
        let file = tokio::fs::File::from_std(tmp.reopen()?);
        Ok(Box::new(S3Upload {
            file: tokio::io::BufWriter::with_capacity(256 * 1024, file),
            tmp,
            size: 0,
            s3: self.s3.clone(),
        }))
    }

    async fn open(&self, sha256: &str) -> Result<Pin<Box<dyn AsyncRead + Send>>> {
        check_digest(sha256)?;
        if self.legacy.local_path(sha256).is_some() {
            return self.legacy.open(sha256).await;
        }
        let inner = self
            .s3
            .reader(&Self::key(sha256))
            .await
            .map_err(|e| s3_error(sha256, "reading", e))?;
        Ok(Box::pin(VerifiedRead {
            inner,
            hasher: Sha256::new(),
            sha256: sha256.to_string(),
            checked: false,
        }))
    }

    fn local_path(&self, sha256: &str) -> Option<PathBuf> {
        self.legacy.local_path(sha256)
    }

    async fn remove(&self, sha256: &str) -> Result<()> {
        check_digest(sha256)?;
        self.legacy.remove(sha256).await?;
        self.s3
            .delete(&Self::key(sha256))
            .await
            .map_err(|e| s3_error(sha256, "deleting", e))
    }
}

struct S3Upload {
    file: tokio::io::BufWriter<tokio::fs::File>,
    tmp: tempfile::NamedTempFile,
    size: u64,
    s3: S3Store,
}

#[async_trait]
impl ArtifactUpload for S3Upload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.file.write_all(chunk).await?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, sha256: &str) -> Result<()> {
        check_digest(sha256)?;
        self.file.flush().await?;
        let key = S3ArtifactStore::key(sha256);
        let storing = |e| s3_error(sha256, "storing", e);
        // Content-addressed: the same bytes are there already.
        if self.s3.size(&key).await.map_err(storing)? == Some(self.size) {
            return Ok(());
        }
        let sent = self
            .s3
            .put_file(&key, self.tmp.path())
            .await
            .map_err(storing)?;
        if sent.sha256 != sha256 || sent.size != self.size {
            let _ = self.s3.delete(&key).await;
            return Err(RegistryError::Storage(format!(
                "artifact {sha256}: the staged file in {} changed during the upload (it hashes to {}, {} bytes; {} bytes were received); nothing was stored",
                self.tmp.path().display(),
                sent.sha256,
                sent.size,
                self.size
            )));
        }
        match self.s3.size(&key).await.map_err(storing)? {
            Some(n) if n == self.size => Ok(()),
            other => Err(RegistryError::Unavailable(format!(
                "storing artifact {sha256} in the S3 artifact store failed verification: {} reports {} after the upload, expected {} bytes",
                self.s3.config().uri(&key),
                other.map_or("no object".to_string(), |n| format!("{n} bytes")),
                self.size
            ))),
        }
    }
}

/// An S3 artifact's bytes, hashed as they are read: at the end the sha256
/// must be the digest. Errors are `RegistryError`s inside `io::Error`
/// (`RegistryError::from` unwraps them): a broken transfer is
/// `Unavailable`, a corrupt object `DataLoss`.
struct VerifiedRead {
    inner: evergreen_s3::ObjectReader,
    hasher: Sha256,
    sha256: String,
    checked: bool,
}

impl AsyncRead for VerifiedRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.hasher.update(read);
                } else if buf.remaining() > 0 && !this.checked {
                    this.checked = true;
                    let got = hex::encode(std::mem::take(&mut this.hasher).finalize());
                    if got != this.sha256 {
                        return Poll::Ready(Err(std::io::Error::other(RegistryError::DataLoss(
                            format!(
                                "artifact {} is corrupt in the S3 artifact store: its bytes hash to {got}",
                                this.sha256
                            ),
                        ))));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                let err = match S3Error::of_io(&e) {
                    Some(s3) => s3_error(&this.sha256, "reading", s3.clone()),
                    None => RegistryError::Unavailable(format!(
                        "reading artifact {} from the S3 artifact store failed: {e}",
                        this.sha256
                    )),
                };
                Poll::Ready(Err(std::io::Error::other(err)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Small artifacts (up to `inline_max` bytes) are kept in a sled tree of the
/// registry's own database: the writer's flush, which covers every tree and
/// runs before the version is acknowledged, makes them durable in the same
/// fsync as the version record. Larger ones spill to `large`. Both are keyed
/// by sha256.
pub struct TieredStore {
    small: sled::Tree,
    inline_max: usize,
    large: Arc<dyn ArtifactStore>,
}

impl TieredStore {
    pub fn new(small: sled::Tree, inline_max: usize, large: Arc<dyn ArtifactStore>) -> Self {
        Self {
            small,
            inline_max,
            large,
        }
    }
}

#[async_trait]
impl ArtifactStore for TieredStore {
    async fn begin(&self) -> Result<Box<dyn ArtifactUpload>> {
        Ok(Box::new(TieredUpload {
            buf: Vec::new(),
            spilled: None,
            small: self.small.clone(),
            inline_max: self.inline_max,
            large: self.large.clone(),
        }))
    }

    async fn open(&self, sha256: &str) -> Result<Pin<Box<dyn AsyncRead + Send>>> {
        match self.small.get(sha256.as_bytes())? {
            Some(bytes) => Ok(Box::pin(std::io::Cursor::new(bytes))),
            None => self.large.open(sha256).await,
        }
    }

    fn local_path(&self, sha256: &str) -> Option<PathBuf> {
        match self.small.contains_key(sha256.as_bytes()) {
            Ok(false) => self.large.local_path(sha256),
            _ => None,
        }
    }

    async fn remove(&self, sha256: &str) -> Result<()> {
        self.small.remove(sha256.as_bytes())?;

        // Not flush_async: concurrent flush_async calls can deadlock in
        // sled 0.34 (spacejam/sled#1308).
        let small = self.small.clone();
        tokio::task::spawn_blocking(move || small.flush())
            .await
            .map_err(|e| RegistryError::Storage(format!("flushing the artifact tree: {e}")))??;
        self.large.remove(sha256).await
    }
}

struct TieredUpload {
    buf: Vec<u8>,
    spilled: Option<Box<dyn ArtifactUpload>>,
    small: sled::Tree,
    inline_max: usize,
    large: Arc<dyn ArtifactStore>,
}

#[async_trait]
impl ArtifactUpload for TieredUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if let Some(up) = &mut self.spilled {
            return up.write(chunk).await;
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > self.inline_max {
            let mut up = self.large.begin().await?;
            up.write(&std::mem::take(&mut self.buf)).await?;
            self.spilled = Some(up);
        }
        Ok(())
    }

    async fn commit(self: Box<Self>, sha256: &str) -> Result<()> {
        match self.spilled {
            Some(up) => up.commit(sha256).await,
            None => {
                self.small.insert(sha256.as_bytes(), self.buf)?;
                Ok(())
            }
        }
    }
}
