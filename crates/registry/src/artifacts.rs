//! Content-addressed artifact storage. The registry never looks inside an
//! artifact: it stores bytes under their sha256 and streams them back.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::error::{RegistryError, Result};

/// Where artifact bytes live. The local directory is the default; S3 (#6)
/// implements the same trait.
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
                RegistryError::Storage(format!("artifact {sha256} is missing from the store: {e}"))
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

        self.small.flush_async().await?;
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
