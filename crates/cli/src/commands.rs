//! One method per CLI command: build the request, call the registry, print.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use evergreen_proto::metadata;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    register_version_request::Part, version_ref::Selector, watch_response::Kind, ArchiveRequest,
    CreateModelRequest, DeleteAliasRequest, DeleteModelRequest, DeleteVersionRequest,
    DownloadArtifactRequest, EventKind, GetModelRequest, GetVersionRequest, HistoryRequest,
    ListModelsRequest, ListVersionsRequest, ModelVersion, RegisterVersionRequest, RestoreRequest,
    SetAliasRequest, SetVersionStatusRequest, UpdateModelRequest, VersionHeader, VersionRef,
    VersionStatus, WatchRequest,
};
pub use evergreen_runtime::client::Channel;
use evergreen_runtime::client::Client;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::{Code, Request, Status};

use crate::output::{self, emit, emit_json};
use crate::{to_map, RegisterArgs};

/// Upload chunk size for `versions register`.
const CHUNK: usize = 1024 * 1024;
/// Exit code of `watch` when the requested history is compacted.
const EXIT_COMPACTED: u8 = 3;

pub struct Ctx {
    client: RegistryClient<Channel>,
    actor: AsciiMetadataValue,
    json: bool,
}

/// `a: b: c` from an error and its sources (transport errors nest deeply).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let s = s.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        source = source.and_then(|e| e.source());
    }
    parts.join(": ")
}

/// A reference as typed (`name@alias`, `name/3`): the registry parses it.
pub fn version_ref(reference: String) -> Option<VersionRef> {
    Some(VersionRef {
        model: reference,
        selector: None,
    })
}

/// `NAME VERSION` as the lifecycle commands take it.
pub fn numbered(model: String, version: u64) -> Option<VersionRef> {
    Some(VersionRef {
        model,
        selector: Some(Selector::Version(version)),
    })
}

/// The actor header value (printable ASCII only).
pub fn actor_value(actor: &str) -> anyhow::Result<AsciiMetadataValue> {
    Some(actor)
        .filter(|a| a.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .and_then(|a| AsciiMetadataValue::try_from(a).ok())
        .ok_or_else(|| anyhow!("invalid --actor {actor:?}: use printable ASCII only"))
}

/// A channel to `daemon` ("registry", "trainer", "server", "monitor") at
/// `url` (the value of its `--daemon` flag; `http://` is assumed when no
/// scheme is given). Unreachable is UNAVAILABLE naming the daemon, the
/// address, and the flag and environment variable that set it.
///
/// TLS (`https://`) and the bearer token come from `--ca`, `--cert`,
/// `--key`, `--token`/`--token-file`, read once by `main` ([`set_client`]).
pub async fn connect(url: &str, daemon: &str) -> anyhow::Result<Channel> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let client = CLIENT.get().cloned().unwrap_or_default();
    let endpoint = client.endpoint(&format!("--{daemon}"), &url)?;
    let channel = endpoint.connect().await.map_err(|e| {
        let tls = if url.starts_with("https://") {
            " (TLS: --ca, --cert, --key)"
        } else {
            ""
        };
        anyhow::Error::from(Status::unavailable(format!(
            "cannot reach the {daemon} at {url} (set --{daemon} or EVERGREEN_{}_URL){tls}: {}",
            daemon.to_uppercase(),
            error_chain(&e)
        )))
    })?;
    Ok(client.wrap(channel))
}

/// The TLS settings and token every [`connect`] uses (set once, from the
/// global flags).
static CLIENT: std::sync::OnceLock<Client> = std::sync::OnceLock::new();

/// What [`connect`] uses (the defaults when the flags set nothing).
pub fn client() -> Client {
    CLIENT.get().cloned().unwrap_or_default()
}

/// Sets what [`connect`] uses; the first call wins.
pub fn set_client(client: Client) {
    let _ = CLIENT.set(client);
}

impl Ctx {
    pub async fn connect(url: &str, actor: &str, json: bool) -> anyhow::Result<Self> {
        let actor = actor_value(actor)?;
        let channel = connect(url, "registry").await?;
        Ok(Self {
            client: RegistryClient::new(channel),
            actor,
            json,
        })
    }

    /// Prints `json()` with `--json`, else runs the human renderer.
    fn show(&self, json: impl FnOnce() -> Value, human: impl FnOnce()) {
        if self.json {
            emit_json(&json());
        } else {
            human();
        }
    }

    /// Wraps a message, attaching the actor header.
    fn req<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert(metadata::ACTOR, self.actor.clone());
        r
    }

    // ------------------------------------------------------------ models ---

    pub async fn create_model(
        &mut self,
        name: String,
        description: String,
        tags: HashMap<String, String>,
        reason: String,
    ) -> anyhow::Result<()> {
        let req = self.req(CreateModelRequest {
            name,
            description,
            tags,
            reason,
        });
        let m = self.client.create_model(req).await?.into_inner();
        self.show(|| output::model_json(&m), || output::print_model(&m));
        Ok(())
    }

    pub async fn list_models(&mut self) -> anyhow::Result<()> {
        let req = self.req(ListModelsRequest {});
        let mut models = self.client.list_models(req).await?.into_inner().models;
        models.sort_by(|a, b| a.name.cmp(&b.name));
        self.show(
            || Value::Array(models.iter().map(output::model_json).collect()),
            || output::print_models(&models),
        );
        Ok(())
    }

    pub async fn get_model(&mut self, name: String) -> anyhow::Result<()> {
        let req = self.req(GetModelRequest { name });
        let m = self.client.get_model(req).await?.into_inner();
        self.show(|| output::model_json(&m), || output::print_model(&m));
        Ok(())
    }

    pub async fn update_model(
        &mut self,
        name: String,
        description: Option<String>,
        set_tags: HashMap<String, String>,
        remove_tags: Vec<String>,
        reason: String,
    ) -> anyhow::Result<()> {
        let req = self.req(UpdateModelRequest {
            name,
            description,
            set_tags,
            remove_tags,
            reason,
        });
        let m = self.client.update_model(req).await?.into_inner();
        self.show(|| output::model_json(&m), || output::print_model(&m));
        Ok(())
    }

    pub async fn delete_model(
        &mut self,
        name: String,
        force: bool,
        reason: String,
    ) -> anyhow::Result<()> {
        let req = self.req(DeleteModelRequest {
            name: name.clone(),
            force,
            reason,
        });
        let revision = self.client.delete_model(req).await?.into_inner().revision;
        self.show(
            || json!({ "model": name, "revision": revision }),
            || emit(format!("deleted model {name} (revision {revision})")),
        );
        Ok(())
    }

    // ---------------------------------------------------------- versions ---

    pub async fn register_version(&mut self, args: RegisterArgs) -> anyhow::Result<()> {
        let mut file = tokio::fs::File::open(&args.artifact)
            .await
            .with_context(|| format!("cannot open artifact {}", args.artifact.display()))?;
        let header = VersionHeader {
            model: args.name,
            params: to_map(args.params),
            metrics: to_map(args.metrics),
            tags: to_map(args.tags),
            description: args.description,
            expected_sha256: args.sha256.unwrap_or_default().trim().to_lowercase(),
            reason: args.reason,
            ..Default::default()
        };

        // `None` in the channel means "reading the file failed". The upload
        // stream then stalls instead of ending: a clean end would make the
        // registry store a truncated artifact. Dropping the call (and the
        // connection when the process exits) aborts it instead.
        let (tx, rx) = mpsc::channel::<Option<RegisterVersionRequest>>(4);
        let body = ReceiverStream::new(rx).then(|m| async move {
            match m {
                Some(m) => m,
                None => std::future::pending().await,
            }
        });
        let path = args.artifact;
        let feed = async move {
            let header = RegisterVersionRequest {
                part: Some(Part::Header(header)),
            };
            if tx.send(Some(header)).await.is_err() {
                return Ok(()); // the call ended early: its status says why
            }
            loop {
                let mut buf = Vec::with_capacity(CHUNK);
                match (&mut file).take(CHUNK as u64).read_to_end(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {
                        let chunk = RegisterVersionRequest {
                            part: Some(Part::Chunk(buf)),
                        };
                        if tx.send(Some(chunk)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(None).await;
                        return Err(anyhow::Error::new(e)
                            .context(format!("cannot read artifact {}", path.display())));
                    }
                }
            }
        };
        let req = self.req(body);
        let call =
            async { Ok::<_, anyhow::Error>(self.client.register_version(req).await?.into_inner()) };
        let (v, ()) = tokio::try_join!(call, feed)?;
        self.show(|| output::version_json(&v), || output::print_version(&v));
        Ok(())
    }

    pub async fn list_versions(&mut self, model: String) -> anyhow::Result<()> {
        let req = self.req(ListVersionsRequest { model });
        let mut versions = self.client.list_versions(req).await?.into_inner().versions;
        versions.sort_by_key(|v| v.version);
        self.show(
            || Value::Array(versions.iter().map(output::version_json).collect()),
            || output::print_versions(&versions),
        );
        Ok(())
    }

    pub async fn get_version(&mut self, reference: String) -> anyhow::Result<()> {
        let req = self.req(GetVersionRequest {
            r#ref: version_ref(reference),
        });
        let v = self.client.get_version(req).await?.into_inner();
        self.show(|| output::version_json(&v), || output::print_version(&v));
        Ok(())
    }

    /// `model/version` as the registry records it.
    pub async fn fetch_version(
        &mut self,
        model: &str,
        version: u64,
    ) -> anyhow::Result<ModelVersion> {
        let req = self.req(GetVersionRequest {
            r#ref: Some(VersionRef {
                model: model.to_string(),
                selector: Some(Selector::Version(version)),
            }),
        });
        Ok(self.client.get_version(req).await?.into_inner())
    }

    /// The version behind `model@production`, else the latest one, and
    /// which of the two it is (`production`, `latest`).
    pub async fn default_version(&mut self, model: &str) -> anyhow::Result<(u64, &'static str)> {
        let req = self.req(GetVersionRequest {
            r#ref: Some(VersionRef {
                model: model.to_string(),
                selector: Some(Selector::Alias("production".to_string())),
            }),
        });
        match self.client.get_version(req).await {
            Ok(v) => return Ok((v.into_inner().version, "production")),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
        let req = self.req(GetModelRequest {
            name: model.to_string(),
        });
        let m = self.client.get_model(req).await?.into_inner();
        if m.latest_version == 0 {
            return Err(Status::not_found(format!("model {model} has no versions")).into());
        }
        Ok((m.latest_version, "latest"))
    }

    /// Streams the artifact into `FILE.part`, checks size and sha256 against
    /// what the registry announced, then renames it to `FILE`.
    pub async fn download(&mut self, reference: String, output: PathBuf) -> anyhow::Result<()> {
        let mut part = OsString::from(output.as_os_str());
        part.push(".part");
        let part = PathBuf::from(part);
        let result = self.download_to(&reference, &part).await;
        let (version, sha256, size) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        tokio::fs::rename(&part, &output)
            .await
            .with_context(|| format!("cannot move {} to {}", part.display(), output.display()))?;
        if self.json {
            emit_json(&json!({
                "ref": reference,
                "version": version,
                "sha256": sha256,
                "size_bytes": size,
                "path": output.display().to_string(),
            }));
        } else {
            emit(format!(
                "downloaded {reference} (version {version}, {}, sha256 {sha256}) to {}",
                output::human_size(size),
                output.display()
            ));
        }
        Ok(())
    }

    async fn download_to(
        &mut self,
        reference: &str,
        path: &Path,
    ) -> anyhow::Result<(u64, String, u64)> {
        let req = self.req(DownloadArtifactRequest {
            r#ref: version_ref(reference.to_string()),
        });
        let mut stream = self.client.download_artifact(req).await?.into_inner();
        let mut file = tokio::fs::File::create(path)
            .await
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut announced = None;
        let mut version = 0;
        while let Some(chunk) = stream.message().await? {
            if chunk.artifact.is_some() {
                announced = chunk.artifact;
                version = chunk.version;
            }
            hasher.update(&chunk.data);
            size += chunk.data.len() as u64;
            file.write_all(&chunk.data)
                .await
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        file.sync_all()
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
        let sha256 = format!("{:x}", hasher.finalize());
        if let Some(a) = announced {
            if a.size_bytes != size || !a.sha256.eq_ignore_ascii_case(&sha256) {
                return Err(anyhow!(
                    "downloaded artifact is corrupt: expected {} bytes with sha256 {}, got {size} bytes with sha256 {sha256}",
                    a.size_bytes,
                    a.sha256
                ));
            }
        }
        Ok((version, sha256, size))
    }

    pub async fn set_status(
        &mut self,
        reference: Option<VersionRef>,
        status: VersionStatus,
        reason: String,
        sunset_at: Option<evergreen_proto::Timestamp>,
        replacement_version: u64,
    ) -> anyhow::Result<()> {
        let req = self.req(SetVersionStatusRequest {
            r#ref: reference,
            status: status as i32,
            reason,
            sunset_at,
            replacement_version,
        });
        let v = self.client.set_version_status(req).await?.into_inner();
        self.show(|| output::version_json(&v), || output::print_version(&v));
        Ok(())
    }

    pub async fn delete_version(
        &mut self,
        reference: String,
        force: bool,
        reason: String,
    ) -> anyhow::Result<()> {
        let req = self.req(DeleteVersionRequest {
            r#ref: version_ref(reference.clone()),
            reason,
            force,
        });
        let revision = self.client.delete_version(req).await?.into_inner().revision;

        self.show(
            || json!({ "ref": reference, "revision": revision }),
            || emit(format!("deleted version {reference} (revision {revision})")),
        );
        Ok(())
    }

    /// Archives a RETIRED version and prints where it went, and whether
    /// the training data went with it.
    pub async fn archive(
        &mut self,
        model: String,
        version: u64,
        include_data: bool,
        reason: String,
    ) -> anyhow::Result<()> {
        if !self.json {
            eprintln!(
                "archiving {model}/{version}{}: the registry uploads, reads back and verifies it \
                 before marking it ARCHIVED (big artifacts may take a while)",
                if include_data {
                    " with its training data"
                } else {
                    ""
                }
            );
        }
        let req = self.req(ArchiveRequest {
            r#ref: numbered(model.clone(), version),
            reason,
            include_data,
        });
        let v = self.client.archive(req).await?.into_inner();
        // What went with it is in the VERSION_ARCHIVED event (best effort).
        let data = self.archived_data(&model, version).await;
        let manifest = format!("{}manifest.json", v.archive_uri);
        if self.json {
            let mut j = output::version_json(&v);
            j["manifest_uri"] = Value::from(manifest);
            j["data"] = data.unwrap_or(Value::Null);
            emit_json(&j);
            return Ok(());
        }
        let artifact = v.artifact.clone().unwrap_or_default();
        emit(format!("archived {model}/{version} to {}", v.archive_uri));
        let data = match data {
            Some(d) if d["included"] == true => d["uri"].as_str().unwrap_or_default().to_string(),
            Some(d) if include_data => format!(
                "not included: {}",
                d["reason"].as_str().unwrap_or("unknown reason")
            ),
            _ => "not included (add --include-data)".to_string(),
        };
        output::print_fields(&[
            (
                "artifact",
                format!(
                    "sha256 {}, {} (verified; the local copy is freed unless another version shares it)",
                    artifact.sha256,
                    output::human_size(artifact.size_bytes)
                ),
            ),
            ("manifest", manifest),
            ("training data", data),
            ("status", output::status_name(v.status)),
            ("restore with", format!("evergreen restore {model} {version}")),
        ]);
        Ok(())
    }

    /// The `data` part of the newest VERSION_ARCHIVED event of `model/version`.
    async fn archived_data(&mut self, model: &str, version: u64) -> Option<Value> {
        let req = self.req(HistoryRequest {
            model: model.to_string(),
            limit: 50,
        });
        let entries = self.client.history(req).await.ok()?.into_inner().entries;
        let e = entries
            .iter()
            .rev()
            .find(|e| e.version == version && e.kind == EventKind::VersionArchived as i32)?;
        let after: Value = serde_json::from_str(&e.after).ok()?;
        Some(after["data"].clone())
    }

    pub async fn restore(
        &mut self,
        model: String,
        version: u64,
        activate: bool,
        reason: String,
    ) -> anyhow::Result<()> {
        if !self.json {
            eprintln!(
                "restoring {model}/{version}: the registry downloads and verifies it (big artifacts may take a while)"
            );
        }
        let req = self.req(RestoreRequest {
            r#ref: numbered(model.clone(), version),
            reason,
            activate,
        });
        let v = self.client.restore(req).await?.into_inner();
        self.show(
            || output::version_json(&v),
            || {
                emit(format!(
                    "restored {model}/{version} from {} (sha256 verified): {}",
                    v.archive_uri,
                    output::status_name(v.status)
                ));
                output::print_version(&v);
            },
        );
        Ok(())
    }

    // ----------------------------------------------------------- aliases ---

    pub async fn set_alias(
        &mut self,
        model: String,
        alias: String,
        version: u64,
        expected_version: Option<u64>,
        reason: String,
    ) -> anyhow::Result<()> {
        let req = self.req(SetAliasRequest {
            model,
            alias,
            version,
            expected_version,
            reason,
        });
        let a = self.client.set_alias(req).await?.into_inner();
        self.show(|| output::alias_json(&a), || output::print_alias(&a));
        Ok(())
    }

    pub async fn rollback(
        &mut self,
        model: String,
        alias: String,
        reason: String,
    ) -> anyhow::Result<()> {
        let req = self.req(evergreen_proto::v1::RollbackAliasRequest {
            model,
            alias,
            reason,
        });
        let a = self.client.rollback_alias(req).await?.into_inner();
        self.show(|| output::alias_json(&a), || output::print_alias(&a));
        Ok(())
    }

    pub async fn set_policy(
        &mut self,
        model: String,
        weights: Vec<(u64, u32)>,
        shadow: u64,
        reason: String,
    ) -> anyhow::Result<()> {
        let policy = evergreen_proto::v1::TrafficPolicy {
            weights: weights
                .into_iter()
                .map(|(version, weight)| evergreen_proto::v1::VersionWeight { version, weight })
                .collect(),
            shadow_version: shadow,
        };
        let req = self.req(evergreen_proto::v1::SetTrafficPolicyRequest {
            model,
            policy: Some(policy),
            reason,
        });
        let m = self.client.set_traffic_policy(req).await?.into_inner();
        self.show(|| output::model_json(&m), || output::print_model(&m));
        Ok(())
    }

    pub async fn delete_alias(
        &mut self,
        model: String,
        alias: String,
        expected_version: Option<u64>,
        reason: String,
    ) -> anyhow::Result<()> {
        let req = self.req(DeleteAliasRequest {
            model: model.clone(),
            alias: alias.clone(),
            expected_version,
            reason,
        });
        let revision = self.client.delete_alias(req).await?.into_inner().revision;
        if self.json {
            emit_json(&json!({ "model": model, "alias": alias, "revision": revision }));
        } else {
            emit(format!(
                "deleted alias {model}@{alias} (revision {revision})"
            ));
        }
        Ok(())
    }

    // ----------------------------------------------------- history, watch ---

    pub async fn history(&mut self, model: String, limit: u32) -> anyhow::Result<()> {
        let req = self.req(HistoryRequest { model, limit });
        let entries = self.client.history(req).await?.into_inner().entries;
        self.show(
            || Value::Array(entries.iter().map(output::event_json).collect()),
            || output::print_events(&entries),
        );
        Ok(())
    }

    /// Prints events until interrupted. Exits 3 when the requested history
    /// is compacted; fails when the stream ends, cleanly or not.
    pub async fn watch(
        &mut self,
        from_revision: Option<u64>,
        model: Option<String>,
    ) -> anyhow::Result<ExitCode> {
        let req = self.req(WatchRequest {
            from_revision,
            model: model.unwrap_or_default(),
        });
        let mut stream = self.client.watch(req).await?.into_inner();
        loop {
            let msg = match stream.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Err(anyhow!("the registry closed the watch stream")),
                Err(status) => {
                    let resume = status.metadata().get(metadata::RESUME_REVISION);
                    if let Some(rev) = resume.and_then(|v| v.to_str().ok()) {
                        return Err(Status::new(
                            status.code(),
                            format!(
                                "{}; resume with `evergreen watch --from {rev}`",
                                status.message()
                            ),
                        )
                        .into());
                    }
                    return Err(status.into());
                }
            };
            match msg.kind {
                // Human mode only: scripts read events from stdout.
                Some(Kind::StartRevision(rev)) if !self.json => {
                    eprintln!("watching from revision {rev}");
                }
                Some(Kind::Event(e)) => {
                    if self.json {
                        emit_json(&output::event_json(&e));
                    } else {
                        emit(output::event_line(&e));
                    }
                }
                Some(Kind::Compacted(c)) => {
                    eprintln!(
                        "error: history before revision {} is compacted; relist and watch from the current revision {}",
                        c.compact_revision + 1,
                        c.current_revision
                    );
                    return Ok(ExitCode::from(EXIT_COMPACTED));
                }
                Some(Kind::StartRevision(_)) | None => {}
            }
        }
    }
}
