//! Archive and restore (issue #6): a RETIRED version's artifact, optionally
//! its training data, and a manifest (record, lineage, metrics, audit and
//! monitoring history, checksums) go to the archive target — S3 when
//! `registry.archive.s3.bucket` is set, else a local directory — under
//!
//! ```text
//! <prefix><model>/<version>/artifact.evgm
//! <prefix><model>/<version>/manifest.json
//! <prefix><model>/<version>/data/<file name>      (when asked and intact)
//! ```
//!
//! Archive uploads (streaming; multipart on S3), reads everything back and
//! verifies the checksums, and only then marks the version ARCHIVED and
//! frees its local artifact. Any failure leaves the version RETIRED with its
//! artifact, and the error names the step. Restore downloads, verifies the
//! sha256 against the manifest and the version record, re-installs the
//! artifact and returns the version as RETIRED (ACTIVE on request).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use evergreen_proto::v1::{EventKind, ModelVersion, VersionStatus};
use evergreen_s3::{S3Config, S3Error, S3Store, Transferred};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::artifacts::ArtifactStore;
use crate::error::{RegistryError, Result};
use crate::names::VersionSpec;
use crate::service::Caller;
use crate::store::{abort, status_name, version_status, Change, Store};

pub const MANIFEST_FORMAT: &str = "evergreen-archive/1";

/// Where archives go.
pub enum Target {
    Local(PathBuf),
    S3(S3Store),
}

fn local_err(path: &Path, e: std::io::Error) -> S3Error {
    S3Error::Local {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Copies `from` to `to`, returning the size and sha256 of the bytes.
async fn copy_hashing(from: &Path, to: &Path) -> std::result::Result<Transferred, S3Error> {
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| local_err(dir, e))?;
    }
    let mut src = tokio::fs::File::open(from)
        .await
        .map_err(|e| local_err(from, e))?;
    let tmp = to.with_extension("partial");
    let mut dst = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| local_err(&tmp, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf).await.map_err(|e| local_err(from, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        dst.write_all(&buf[..n])
            .await
            .map_err(|e| local_err(&tmp, e))?;
    }
    dst.sync_all().await.map_err(|e| local_err(&tmp, e))?;
    tokio::fs::rename(&tmp, to)
        .await
        .map_err(|e| local_err(to, e))?;
    Ok(Transferred {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

impl Target {
    pub async fn new(s3: &S3Config, dir: &Path) -> Target {
        if s3.enabled() {
            Target::S3(S3Store::new(s3).await)
        } else {
            Target::Local(dir.to_path_buf())
        }
    }

    /// Where `key` lives, for records and messages.
    pub fn uri(&self, key: &str) -> String {
        match self {
            Target::Local(d) => format!("file://{}", d.join(key).display()),
            Target::S3(s) => s.config().uri(key),
        }
    }

    async fn check(&self) -> std::result::Result<(), S3Error> {
        match self {
            Target::Local(d) => tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| local_err(d, e)),
            Target::S3(s) => s.check().await,
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> std::result::Result<Transferred, S3Error> {
        match self {
            Target::Local(d) => copy_hashing(path, &d.join(key)).await,
            Target::S3(s) => s.put_file(key, path).await,
        }
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> std::result::Result<(), S3Error> {
        match self {
            Target::Local(d) => {
                let p = d.join(key);
                if let Some(dir) = p.parent() {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(|e| local_err(dir, e))?;
                }
                tokio::fs::write(&p, bytes)
                    .await
                    .map_err(|e| local_err(&p, e))
            }
            Target::S3(s) => s.put_bytes(key, bytes).await.map(|_| ()),
        }
    }

    async fn get_file(&self, key: &str, path: &Path) -> std::result::Result<Transferred, S3Error> {
        match self {
            Target::Local(d) => {
                let src = d.join(key);
                if !src.exists() {
                    return Err(S3Error::NotFound { uri: self.uri(key) });
                }
                copy_hashing(&src, path).await
            }
            Target::S3(s) => s.get_file(key, path).await,
        }
    }

    async fn get_bytes(&self, key: &str) -> std::result::Result<Vec<u8>, S3Error> {
        match self {
            Target::Local(d) => {
                let p = d.join(key);
                tokio::fs::read(&p).await.map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => S3Error::NotFound { uri: self.uri(key) },
                    _ => local_err(&p, e),
                })
            }
            Target::S3(s) => s.get_bytes(key).await,
        }
    }
}

/// An archive failure: what failed, in which step; the version is unchanged.
fn failed(action: &str, model: &str, version: u64, step: &str, e: S3Error) -> RegistryError {
    let unchanged = if action == "restore" {
        "the version stays ARCHIVED"
    } else {
        "the version is unchanged (RETIRED, its artifact intact)"
    };
    let msg = format!("{action} of {model}/{version} failed while {step}: {e}; {unchanged}");
    match e {
        S3Error::Unreachable { .. } => RegistryError::Unavailable(msg),
        S3Error::Local { .. } | S3Error::Other { .. } => RegistryError::Storage(msg),
        S3Error::NoSuchBucket { .. }
        | S3Error::Credentials { .. }
        | S3Error::NotFound { .. }
        | S3Error::Corrupt { .. } => RegistryError::FailedPrecondition(msg),
    }
}

pub struct Archiver {
    store: Arc<Store>,
    artifacts: Arc<dyn ArtifactStore>,
    target: Target,
    /// The monitor, for the manifest's monitoring history (None = none).
    monitor: Option<evergreen_runtime::client::Channel>,
    tmp: PathBuf,
    busy: Mutex<HashSet<(String, u64)>>,
}

/// Releases the per-version guard.
struct Busy<'a>(&'a Mutex<HashSet<(String, u64)>>, (String, u64));

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap().remove(&self.1);
    }
}

fn key(model: &str, version: u64, name: &str) -> String {
    format!("{model}/{version}/{name}")
}

async fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

impl Archiver {
    pub fn new(
        store: Arc<Store>,
        artifacts: Arc<dyn ArtifactStore>,
        target: Target,
        monitor: Option<evergreen_runtime::client::Channel>,
        tmp: PathBuf,
    ) -> Self {
        Archiver {
            store,
            artifacts,
            target,
            monitor,
            tmp,
            busy: Mutex::new(HashSet::new()),
        }
    }

    fn guard(&self, model: &str, version: u64) -> Result<Busy<'_>> {
        let k = (model.to_string(), version);
        if !self.busy.lock().unwrap().insert(k.clone()) {
            return Err(RegistryError::FailedPrecondition(format!(
                "{model}/{version} is being archived or restored already; wait for it to finish"
            )));
        }
        Ok(Busy(&self.busy, k))
    }

    fn temp_path(&self, what: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.tmp)?;
        Ok(self.tmp.join(format!(
            "{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        )))
    }

    /// Whether a version that is not ARCHIVED still needs these bytes
    /// (artifacts are content-addressed: identical retrains share them).
    fn sha_in_use(&self, sha256: &str) -> Result<bool> {
        for m in self.store.list_models()? {
            for v in self.store.list_versions(&m.name)? {
                if version_status(&v) != VersionStatus::Archived
                    && v.artifact.as_ref().is_some_and(|a| a.sha256 == sha256)
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The version's audit entries, oldest first, as JSON.
    fn audit(&self, model: &str, version: u64) -> Result<Value> {
        let events = self.store.history(model, 0)?;
        Ok(Value::Array(
            events
                .iter()
                .filter(|e| e.version == version)
                .map(|e| {
                    json!({
                        "revision": e.revision,
                        "time": e.time.map(|t| t.seconds),
                        "kind": EventKind::try_from(e.kind).map(|k| k.short_name()).unwrap_or("?"),
                        "actor": e.actor,
                        "reason": e.reason,
                        "before": e.before,
                        "after": e.after,
                    })
                })
                .collect(),
        ))
    }

    /// The monitor's window history of the version (best effort: the
    /// manifest says why when it is not available).
    async fn monitoring(&self, model: &str, version: u64) -> Value {
        use evergreen_proto::v1::monitor_client::MonitorClient;
        use evergreen_proto::v1::{GetReportRequest, WindowKind};
        let Some(channel) = self.monitor.clone() else {
            return json!({"unavailable": "no monitor configured (registry.monitor_url)"});
        };
        match MonitorClient::new(channel)
            .get_report(GetReportRequest {
                model: model.to_string(),
                version,
                window: WindowKind::Long as i32,
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let perf = r.performance.unwrap_or_default();
                json!({
                    "rows": r.drift.as_ref().map(|d| d.rows),
                    "drifted_share": r.drift.as_ref().map(|d| d.drifted_share),
                    "labeled": perf.labeled,
                    "realized": perf.realized,
                    "estimated": perf.estimated,
                    "windows": r.history.iter().map(|w| json!({
                        "seq": w.seq,
                        "start": w.start.map(|t| t.seconds),
                        "end": w.end.map(|t| t.seconds),
                        "rows": w.rows,
                        "drifted_share": w.drifted_share,
                        "realized": w.performance.as_ref().map(|p| p.realized.clone()),
                        "estimated": w.performance.as_ref().map(|p| p.estimated.clone()),
                        "breaches": w.breaches,
                    })).collect::<Vec<_>>(),
                    "signals": r.signals.iter().map(|s| json!({
                        "id": s.id,
                        "kind": evergreen_proto::v1::SignalKind::try_from(s.kind).map(|k| k.short_name()).unwrap_or("?"),
                        "reason": s.reason,
                        "action": s.action,
                    })).collect::<Vec<_>>(),
                })
            }
            Err(s) => json!({"unavailable": format!("{:?}: {}", s.code(), s.message())}),
        }
    }

    /// Archives a RETIRED version; see the module doc.
    pub async fn archive(
        &self,
        caller: Caller,
        spec: VersionSpec,
        include_data: bool,
    ) -> Result<ModelVersion> {
        let v = self.store.get_version(&spec)?;
        let (model, number) = (v.model.clone(), v.version);
        match version_status(&v) {
            VersionStatus::Retired => {}
            VersionStatus::Archived => {
                return Err(RegistryError::FailedPrecondition(format!(
                    "{model}/{number} is ARCHIVED already (at {}); restore it to change it",
                    v.archive_uri
                )))
            }
            s => {
                return Err(RegistryError::FailedPrecondition(format!(
                "{model}/{number} is {}: only a RETIRED version can be archived (retire it first)",
                status_name(s)
            )))
            }
        }
        let _busy = self.guard(&model, number)?;
        let fail = |step: &str, e: S3Error| failed("archive", &model, number, step, e);
        let artifact = v.artifact.clone().unwrap_or_default();

        self.target
            .check()
            .await
            .map_err(|e| fail("checking the archive target", e))?;

        // The local artifact, checked before it leaves: uploaded straight
        // from its file, or staged from the database when it is inline.
        let staged = self.temp_path("archive")?;
        let _cleanup = TempFile(staged.clone());
        let local = match self.artifacts.local_path(&artifact.sha256) {
            Some(path) => path,
            None => {
                let mut reader = self.artifacts.open(&artifact.sha256).await?;
                let mut file = tokio::fs::File::create(&staged).await?;
                tokio::io::copy(&mut reader, &mut file).await?;
                file.sync_all().await?;
                staged.clone()
            }
        };
        let (size, sha) = sha256_file(&local).await?;

        if sha != artifact.sha256 {
            return Err(RegistryError::Storage(format!(
                "archive of {model}/{number} refused: the local artifact hashes to {sha}, not the recorded {}; the version is unchanged",
                artifact.sha256
            )));
        }
        let artifact_key = key(&model, number, "artifact.evgm");
        self.target
            .put_file(&artifact_key, &local)
            .await
            .map_err(|e| fail("uploading the artifact", e))?;

        // The training data, when asked for and still what was trained on.
        let lineage = v.lineage.clone().unwrap_or_default();
        let data = if !include_data {
            json!({"included": false, "reason": "not requested"})
        } else {
            let path = lineage
                .dataset_uri
                .strip_prefix("file://")
                .unwrap_or(&lineage.dataset_uri)
                .to_string();
            let p = Path::new(&path);
            if lineage.dataset_uri.is_empty()
                || lineage.dataset_uri.contains("://")
                    && !lineage.dataset_uri.starts_with("file://")
            {
                json!({"included": false, "reason": format!("not a local file: {:?}", lineage.dataset_uri)})
            } else if lineage.dataset_sha256.is_empty() {
                // The lineage is the caller's word: without the checksum of
                // what was trained on, any file the registry can read (its
                // TLS key, its tokens) could be named and copied out.
                json!({"included": false, "reason": "the version's lineage records no dataset_sha256 (only data that matches it is copied)"})
            } else if !p.is_file() {
                json!({"included": false, "reason": format!("{path} no longer exists")})
            } else {
                let (dsize, dsha) = sha256_file(p).await?;
                if dsha != lineage.dataset_sha256 {
                    json!({"included": false, "reason": format!("{path} changed since training (sha256 {dsha}, recorded {})", lineage.dataset_sha256)})
                } else {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "data.csv".into());
                    let data_key = key(&model, number, &format!("data/{name}"));
                    self.target
                        .put_file(&data_key, p)
                        .await
                        .map_err(|e| fail("uploading the training data", e))?;
                    json!({"included": true, "key": data_key, "uri": self.target.uri(&data_key), "source_uri": lineage.dataset_uri, "sha256": dsha, "size": dsize})
                }
            }
        };

        let manifest = json!({
            "format": MANIFEST_FORMAT,
            "model": model,
            "version": number,
            "archived_by": caller.actor,
            "reason": caller.reason,
            "archived_at": crate::store::now().seconds,
            "artifact": {"key": artifact_key, "uri": self.target.uri(&artifact_key), "sha256": artifact.sha256, "size": size},
            "data": data,
            "record": {
                "status_before": "RETIRED",
                "status_reason": v.status_reason,
                "description": v.description,
                "created_at": v.created_at.map(|t| t.seconds),
                "created_by": v.created_by,
                "params": v.params,
                "metrics": v.metrics,
                "tags": v.tags,
                "schema": v.schema.as_ref().map(|s| s.features.iter().map(|f| json!({
                    "name": f.name,
                    "type": evergreen_proto::v1::FeatureType::try_from(f.r#type).map(|t| t.short_name()).unwrap_or("?"),
                })).collect::<Vec<_>>()),
                "lineage": {
                    "dataset_uri": lineage.dataset_uri,
                    "dataset_sha256": lineage.dataset_sha256,
                    "parent_version": lineage.parent_version,
                    "run_id": lineage.run_id,
                },
            },
            "profile": "inside the artifact (evergreen-model format): the reference profile is archived byte for byte with it",
            "audit": self.audit(&model, number)?,
            "monitoring": self.monitoring(&model, number).await,
        });
        let manifest_bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| RegistryError::Storage(e.to_string()))?;
        let manifest_sha = hex::encode(Sha256::digest(&manifest_bytes));
        let manifest_key = key(&model, number, "manifest.json");
        self.target
            .put_bytes(&manifest_key, manifest_bytes)
            .await
            .map_err(|e| fail("uploading the manifest", e))?;

        // Read back and verify before anything changes here.
        let back = self.temp_path("verify")?;
        let _cleanup2 = TempFile(back.clone());
        let got = self
            .target
            .get_file(&artifact_key, &back)
            .await
            .map_err(|e| fail("reading the artifact back", e))?;
        if got.sha256 != artifact.sha256 || got.size != size {
            return Err(RegistryError::Storage(format!(
                "archive of {model}/{number} failed verification: the archived artifact hashes to {} ({} bytes), expected {} ({size} bytes); the version is unchanged",
                got.sha256, got.size, artifact.sha256
            )));
        }
        let m = self
            .target
            .get_bytes(&manifest_key)
            .await
            .map_err(|e| fail("reading the manifest back", e))?;
        if hex::encode(Sha256::digest(&m)) != manifest_sha {
            return Err(RegistryError::Storage(format!(
                "archive of {model}/{number} failed verification: the archived manifest differs from what was written; the version is unchanged"
            )));
        }

        // Commit: ARCHIVED, then free the local bytes.
        let uri = self.target.uri(&format!("{model}/{number}/"));
        let (name, reason, artifact_sha) = (
            model.clone(),
            caller.reason.clone(),
            artifact.sha256.clone(),
        );
        let data_after = manifest["data"].clone();
        let archived = self
            .store
            .mutate(&caller.actor, move |tx| {
                let mut version = tx.version(&name, number)?;
                if version_status(&version) != VersionStatus::Retired {
                    return abort(RegistryError::FailedPrecondition(format!(
                        "{name}/{number} changed to {} while it was being archived; nothing was changed",
                        status_name(version_status(&version))
                    )));
                }
                version.status = VersionStatus::Archived as i32;
                version.archive_uri = uri.clone();
                tx.put_version(&version)?;
                tx.record(Change {
                    kind: EventKind::VersionArchived,
                    model: &name,
                    version: number,
                    alias: "",
                    reason: &reason,
                    before: json!({"status": "RETIRED"}),
                    after: json!({"status": "ARCHIVED", "uri": uri, "artifact_sha256": artifact_sha, "size": size, "manifest_sha256": manifest_sha, "data": data_after}),
                })?;
                Ok(version)
            })
            .await?;
        if !self.sha_in_use(&artifact.sha256)? {
            if let Err(e) = self.artifacts.remove(&artifact.sha256).await {
                tracing::warn!(model = %model, version = number, error = %e, "archived, but the local artifact could not be freed");
            }
        }
        tracing::info!(model = %model, version = number, uri = %archived.archive_uri, "archived");
        Ok(archived)
    }

    /// Restores an ARCHIVED version; see the module doc.
    pub async fn restore(
        &self,
        caller: Caller,
        spec: VersionSpec,
        activate: bool,
    ) -> Result<ModelVersion> {
        let v = self.store.get_version(&spec)?;
        let (model, number) = (v.model.clone(), v.version);
        if version_status(&v) != VersionStatus::Archived {
            return Err(RegistryError::FailedPrecondition(format!(
                "{model}/{number} is {}: only an ARCHIVED version can be restored",
                status_name(version_status(&v))
            )));
        }
        let here = self.target.uri(&format!("{model}/{number}/"));
        if v.archive_uri != here {
            return Err(RegistryError::FailedPrecondition(format!(
                "{model}/{number} was archived at {}, but the registry's archive target is now {here}; configure registry.archive to point there to restore it",
                v.archive_uri
            )));
        }
        let _busy = self.guard(&model, number)?;
        let fail = |step: &str, e: S3Error| failed("restore", &model, number, step, e);
        let expected = v.artifact.clone().unwrap_or_default();
        let manifest_bytes = self
            .target
            .get_bytes(&key(&model, number, "manifest.json"))
            .await
            .map_err(|e| fail("reading the manifest", e))?;
        let manifest: Value = serde_json::from_slice(&manifest_bytes).map_err(|e| {
            RegistryError::FailedPrecondition(format!(
                "restore of {model}/{number} failed: the archived manifest is not valid JSON ({e}); the version stays ARCHIVED"
            ))
        })?;
        let manifest_sha = manifest["artifact"]["sha256"].as_str().unwrap_or_default();
        if manifest_sha != expected.sha256 {
            return Err(RegistryError::FailedPrecondition(format!(
                "restore of {model}/{number} failed: the manifest names artifact {manifest_sha:?}, the version record {}; the version stays ARCHIVED",
                expected.sha256
            )));
        }
        let local = self.temp_path("restore")?;
        let _cleanup = TempFile(local.clone());
        let got = self
            .target
            .get_file(&key(&model, number, "artifact.evgm"), &local)
            .await
            .map_err(|e| fail("downloading the artifact", e))?;
        if got.sha256 != expected.sha256 {
            return Err(RegistryError::FailedPrecondition(format!(
                "restore of {model}/{number} failed: the archived artifact hashes to {}, expected {}; it is corrupt; the version stays ARCHIVED",
                got.sha256, expected.sha256
            )));
        }
        // Re-install, streaming.
        let mut upload = self.artifacts.begin().await?;
        let mut f = tokio::fs::File::open(&local).await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            upload.write(&buf[..n]).await?;
        }
        upload.commit(&expected.sha256).await?;

        let to = if activate {
            VersionStatus::Active
        } else {
            VersionStatus::Retired
        };
        let (name, reason) = (model.clone(), caller.reason.clone());
        let restored = self
            .store
            .mutate(&caller.actor, move |tx| {
                let mut version = tx.version(&name, number)?;
                if version_status(&version) != VersionStatus::Archived {
                    return abort(RegistryError::FailedPrecondition(format!(
                        "{name}/{number} changed to {} while it was being restored",
                        status_name(version_status(&version))
                    )));
                }
                version.status = to as i32;
                tx.put_version(&version)?;
                tx.record(Change {
                    kind: EventKind::VersionRestored,
                    model: &name,
                    version: number,
                    alias: "",
                    reason: &reason,
                    before: json!({"status": "ARCHIVED", "uri": version.archive_uri}),
                    after: json!({"status": status_name(to), "artifact_sha256": expected.sha256, "size": got.size}),
                })?;
                Ok(version)
            })
            .await?;
        tracing::info!(model = %model, version = number, "restored");
        Ok(restored)
    }
}

/// Removes a temp file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
