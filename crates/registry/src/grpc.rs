//! The tonic adapter: decodes requests, calls `service::Registry`, encodes
//! responses. `to_status` is the one place domain errors become statuses.

use std::pin::Pin;
use std::sync::Arc;

use evergreen_proto::metadata;
use evergreen_proto::v1::registry_server::{Registry as RegistryApi, RegistryServer};
use evergreen_proto::v1::{
    register_version_request::Part, version_ref::Selector as RefSelector, watch_response, Alias,
    ArtifactChunk, Compacted, CreateModelRequest, DeleteAliasRequest, DeleteAliasResponse,
    DeleteModelRequest, DeleteModelResponse, DeleteVersionRequest, DeleteVersionResponse,
    DownloadArtifactRequest, GetModelRequest, GetPhaseoutRequest, GetVersionRequest,
    HistoryRequest, HistoryResponse, ListModelsRequest, ListModelsResponse, ListVersionsRequest,
    ListVersionsResponse, Model, ModelVersion, Phaseout, PhaseoutAction, RegisterVersionRequest,
    RollbackAliasRequest, SetAliasRequest, SetTrafficPolicyRequest, SetVersionStatusRequest,
    StartPhaseoutRequest, UpdateModelRequest, UpdatePhaseoutRequest, VersionRef, VersionStatus,
    WatchRequest, WatchResponse,
};
use futures::{Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::archive::Archiver;
use crate::error::RegistryError;
use crate::names::{Selector, VersionSpec};
use crate::phaseout::Phaseouts;
use crate::service::{Caller, Deprecation, Registry};
use crate::watch::WatchItem;

const DOWNLOAD_CHUNK: usize = 256 * 1024;

/// Maps a domain error to the gRPC status a caller sees.
pub fn to_status(e: RegistryError) -> Status {
    let code = match &e {
        RegistryError::InvalidArgument(_) | RegistryError::ChecksumMismatch { .. } => {
            Code::InvalidArgument
        }
        RegistryError::ModelNotFound(_)
        | RegistryError::VersionNotFound { .. }
        | RegistryError::AliasNotFound { .. }
        | RegistryError::NoPhaseout(_) => Code::NotFound,
        RegistryError::ModelExists(_) => Code::AlreadyExists,
        RegistryError::AliasMismatch { .. } | RegistryError::FailedPrecondition(_) => {
            Code::FailedPrecondition
        }
        RegistryError::ArtifactTooLarge { .. } | RegistryError::LimitExceeded(_) => {
            Code::ResourceExhausted
        }
        RegistryError::FutureRevision { .. } => Code::OutOfRange,
        RegistryError::WatcherLagged { .. }
        | RegistryError::ShuttingDown
        | RegistryError::Unavailable(_) => Code::Unavailable,

        RegistryError::DataLoss(_) => Code::DataLoss,
        RegistryError::Storage(_) => Code::Internal,
    };
    let mut status = Status::new(code, e.to_string());
    if let RegistryError::WatcherLagged { resume_from } = e {
        if let Ok(v) = resume_from.to_string().parse() {
            status.metadata_mut().insert(metadata::RESUME_REVISION, v);
        }
    }
    status
}

fn caller(metadata: &MetadataMap, reason: String) -> Caller {
    let actor = metadata
        .get(metadata::ACTOR)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(128).collect())
        .unwrap_or_else(|| "anonymous".to_string());
    Caller { actor, reason }
}

fn spec(r: Option<VersionRef>) -> Result<VersionSpec, Status> {
    let r =
        r.ok_or_else(|| Status::invalid_argument("ref is required: {model, version | alias}"))?;
    let selector = r.selector.map(|s| match s {
        RefSelector::Version(v) => Selector::Version(v),
        RefSelector::Alias(a) => Selector::Alias(a),
    });
    VersionSpec::parse(&r.model, selector).map_err(to_status)
}

pub struct RegistryGrpc {
    registry: Arc<Registry>,
    phaseouts: Arc<Phaseouts>,
    archiver: Arc<Archiver>,
}

impl RegistryGrpc {
    /// `max_message_bytes`: `registry.limits.max_message_bytes` (artifacts
    /// arrive in chunks, so one message stays small).
    pub fn server(
        registry: Arc<Registry>,
        phaseouts: Arc<Phaseouts>,
        archiver: Arc<Archiver>,
        max_message_bytes: usize,
    ) -> RegistryServer<Self> {
        RegistryServer::new(Self {
            registry,
            phaseouts,
            archiver,
        })
        .max_decoding_message_size(max_message_bytes)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl RegistryApi for RegistryGrpc {
    async fn create_model(
        &self,
        req: Request<CreateModelRequest>,
    ) -> Result<Response<Model>, Status> {
        let (meta, _, r) = req.into_parts();
        let c = caller(&meta, r.reason);
        let m = self
            .registry
            .create_model(c, r.name, r.description, r.tags)
            .await
            .map_err(to_status)?;
        Ok(Response::new(m))
    }

    async fn get_model(&self, req: Request<GetModelRequest>) -> Result<Response<Model>, Status> {
        Ok(Response::new(
            self.registry
                .get_model(&req.into_inner().name)
                .map_err(to_status)?,
        ))
    }

    async fn list_models(
        &self,
        _: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let (models, revision) = self.registry.list_models().await.map_err(to_status)?;
        Ok(Response::new(ListModelsResponse { models, revision }))
    }

    async fn update_model(
        &self,
        req: Request<UpdateModelRequest>,
    ) -> Result<Response<Model>, Status> {
        let (meta, _, mut r) = req.into_parts();
        let c = caller(&meta, std::mem::take(&mut r.reason));
        Ok(Response::new(
            self.registry.update_model(c, r).await.map_err(to_status)?,
        ))
    }

    async fn delete_model(
        &self,
        req: Request<DeleteModelRequest>,
    ) -> Result<Response<DeleteModelResponse>, Status> {
        let (meta, _, r) = req.into_parts();
        let c = caller(&meta, r.reason);
        let revision = self
            .registry
            .delete_model(c, r.name, r.force)
            .await
            .map_err(to_status)?;
        Ok(Response::new(DeleteModelResponse { revision }))
    }

    async fn register_version(
        &self,
        req: Request<Streaming<RegisterVersionRequest>>,
    ) -> Result<Response<ModelVersion>, Status> {
        let (meta, _, mut stream) = req.into_parts();
        let header = match stream.message().await? {
            Some(RegisterVersionRequest {
                part: Some(Part::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first RegisterVersion message must be a header (then artifact chunks)",
                ))
            }
        };
        let c = caller(&meta, header.reason.clone());
        let chunks = stream.map(|m| match m {
            Ok(RegisterVersionRequest {
                part: Some(Part::Chunk(b)),
            }) => Ok(b),
            Ok(_) => Err(RegistryError::InvalidArgument(
                "only the first RegisterVersion message may be a header; later ones must be chunks"
                    .into(),
            )),
            // A chunk over limits.max_message_bytes (the message says so).
            Err(s) if s.code() == Code::ResourceExhausted => {
                Err(RegistryError::LimitExceeded(s.message().to_string()))
            }
            Err(s) => Err(RegistryError::InvalidArgument(format!(
                "upload stream failed: {}",
                s.message()
            ))),
        });
        let v = self
            .registry
            .register_version(c, header, chunks)
            .await
            .map_err(to_status)?;
        Ok(Response::new(v))
    }

    async fn get_version(
        &self,
        req: Request<GetVersionRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let spec = spec(req.into_inner().r#ref)?;
        Ok(Response::new(
            self.registry.get_version(&spec).map_err(to_status)?,
        ))
    }

    async fn list_versions(
        &self,
        req: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        let (versions, revision) = self
            .registry
            .list_versions(&req.into_inner().model)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ListVersionsResponse { versions, revision }))
    }

    type DownloadArtifactStream = BoxStream<ArtifactChunk>;

    async fn download_artifact(
        &self,
        req: Request<DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let spec = spec(req.into_inner().r#ref)?;
        let (version, mut reader) = self
            .registry
            .open_artifact(&spec)
            .await
            .map_err(to_status)?;
        // A small bounded channel: memory stays flat whatever the size.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ArtifactChunk, Status>>(4);
        tokio::spawn(async move {
            let mut first = Some((version.artifact.clone(), version.version));
            loop {
                let mut buf = vec![0u8; DOWNLOAD_CHUNK];
                let n = match reader.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(to_status(RegistryError::from(e)))).await;
                        return;
                    }
                };
                buf.truncate(n);
                let (artifact, version) = first.take().unwrap_or((None, 0));
                if tx
                    .send(Ok(ArtifactChunk {
                        data: buf,
                        artifact,
                        version,
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn set_version_status(
        &self,
        req: Request<SetVersionStatusRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let (meta, _, r) = req.into_parts();
        let status = VersionStatus::try_from(r.status).map_err(|_| {
            Status::invalid_argument(format!(
                "unknown status {}: expected ACTIVE (1), DEPRECATED (2) or RETIRED (3)",
                r.status
            ))
        })?;
        let spec = spec(r.r#ref)?;
        let c = caller(&meta, r.reason);
        let deprecation = Deprecation {
            sunset_at: r.sunset_at,
            replacement_version: r.replacement_version,
        };
        Ok(Response::new(
            self.registry
                .set_version_status(c, spec, status, deprecation)
                .await
                .map_err(to_status)?,
        ))
    }

    async fn delete_version(
        &self,
        req: Request<DeleteVersionRequest>,
    ) -> Result<Response<DeleteVersionResponse>, Status> {
        let (meta, _, r) = req.into_parts();
        let spec = spec(r.r#ref)?;
        let revision = self
            .registry
            .delete_version(caller(&meta, r.reason), spec, r.force)
            .await
            .map_err(to_status)?;
        Ok(Response::new(DeleteVersionResponse { revision }))
    }

    async fn archive(
        &self,
        req: Request<evergreen_proto::v1::ArchiveRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let (meta, _, r) = req.into_parts();
        let spec = spec(r.r#ref)?;
        let v = self
            .archiver
            .archive(caller(&meta, r.reason), spec, r.include_data)
            .await
            .map_err(to_status)?;
        Ok(Response::new(v))
    }

    async fn restore(
        &self,
        req: Request<evergreen_proto::v1::RestoreRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let (meta, _, r) = req.into_parts();
        let spec = spec(r.r#ref)?;
        let v = self
            .archiver
            .restore(caller(&meta, r.reason), spec, r.activate)
            .await
            .map_err(to_status)?;
        Ok(Response::new(v))
    }

    async fn set_alias(&self, req: Request<SetAliasRequest>) -> Result<Response<Alias>, Status> {
        let (meta, _, r) = req.into_parts();
        let c = caller(&meta, r.reason);
        let a = self
            .registry
            .set_alias(c, r.model, r.alias, r.version, r.expected_version)
            .await
            .map_err(to_status)?;
        Ok(Response::new(a))
    }

    async fn rollback_alias(
        &self,
        req: Request<RollbackAliasRequest>,
    ) -> Result<Response<Alias>, Status> {
        let (meta, _, r) = req.into_parts();
        let c = caller(&meta, r.reason);
        let a = self
            .registry
            .rollback_alias(c, r.model, r.alias)
            .await
            .map_err(to_status)?;
        Ok(Response::new(a))
    }

    async fn set_traffic_policy(
        &self,
        req: Request<SetTrafficPolicyRequest>,
    ) -> Result<Response<Model>, Status> {
        let (meta, _, r) = req.into_parts();
        let c = caller(&meta, r.reason);
        let m = self
            .registry
            .set_traffic_policy(c, r.model, r.policy.unwrap_or_default())
            .await
            .map_err(to_status)?;
        Ok(Response::new(m))
    }

    async fn delete_alias(
        &self,
        req: Request<DeleteAliasRequest>,
    ) -> Result<Response<DeleteAliasResponse>, Status> {
        let (meta, _, r) = req.into_parts();
        let c = caller(&meta, r.reason);
        let revision = self
            .registry
            .delete_alias(c, r.model, r.alias, r.expected_version)
            .await
            .map_err(to_status)?;
        Ok(Response::new(DeleteAliasResponse { revision }))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let r = req.into_inner();
        let entries = self
            .registry
            .history(&r.model, r.limit as usize)
            .map_err(to_status)?;
        Ok(Response::new(HistoryResponse { entries }))
    }

    async fn start_phaseout(
        &self,
        req: Request<StartPhaseoutRequest>,
    ) -> Result<Response<Phaseout>, Status> {
        let (meta, _, mut r) = req.into_parts();
        let c = caller(&meta, std::mem::take(&mut r.reason));
        Ok(Response::new(
            self.phaseouts.start(c, r).await.map_err(to_status)?,
        ))
    }

    async fn get_phaseout(
        &self,
        req: Request<GetPhaseoutRequest>,
    ) -> Result<Response<Phaseout>, Status> {
        Ok(Response::new(
            self.phaseouts
                .get(&req.into_inner().model)
                .map_err(to_status)?,
        ))
    }

    async fn update_phaseout(
        &self,
        req: Request<UpdatePhaseoutRequest>,
    ) -> Result<Response<Phaseout>, Status> {
        let (meta, _, r) = req.into_parts();
        let action = PhaseoutAction::try_from(r.action).map_err(|_| {
            Status::invalid_argument(format!(
                "unknown action {}: expected PAUSE (1), RESUME (2) or ABORT (3)",
                r.action
            ))
        })?;
        let c = caller(&meta, r.reason);
        Ok(Response::new(
            self.phaseouts
                .update(c, r.model, action)
                .await
                .map_err(to_status)?,
        ))
    }

    type WatchStream = BoxStream<WatchResponse>;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = req.into_inner();
        let rx = self
            .registry
            .watch(r.from_revision, r.model)
            .map_err(to_status)?;
        let stream = ReceiverStream::new(rx).map(|item| {
            let kind = match item.map_err(to_status)? {
                WatchItem::Start(rev) => watch_response::Kind::StartRevision(rev),
                WatchItem::Event(e) => watch_response::Kind::Event((*e).clone()),
                WatchItem::Compacted {
                    compact_revision,
                    current_revision,
                } => watch_response::Kind::Compacted(Compacted {
                    compact_revision,
                    current_revision,
                }),
            };
            Ok(WatchResponse { kind: Some(kind) })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
