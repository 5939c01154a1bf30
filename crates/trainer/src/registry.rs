//! The trainer's side of the registry contract: fetch a champion, a
//! recipe or a version's lineage, register a version, move an alias by compare-and-set.

use std::collections::{BTreeMap, HashMap};

use evergreen_model::{FeatureKind, Model, Schema, Task};
use evergreen_proto::metadata;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    self as pb, register_version_request::Part, version_ref::Selector, CreateModelRequest,
    DownloadArtifactRequest, GetModelRequest, GetVersionRequest, RegisterVersionRequest,
    SetAliasRequest, VersionHeader, VersionRef,
};
use evergreen_runtime::client::{Channel, Client};
use tonic::{Code, Request};

use crate::error::TrainError;

const CHUNK: usize = 1 << 20;

#[derive(Clone)]
pub struct Registry {
    client: RegistryClient<Channel>,
}

fn with_actor<T>(msg: T, actor: &str) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = actor.parse() {
        req.metadata_mut().insert(metadata::ACTOR, v);
    }
    req
}

/// What to register.
pub struct NewVersion<'a> {
    pub model: &'a str,
    pub artifact: &'a [u8],
    pub sha256: &'a str,
    pub schema: &'a Schema,
    pub params: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
    pub tags: BTreeMap<String, String>,
    pub lineage: pb::Lineage,
    pub description: String,
    pub reason: String,
}

pub fn schema_to_proto(s: &Schema) -> pb::FeatureSchema {
    let feature = |name: &str, ty: pb::FeatureType, categories: Vec<String>| pb::Feature {
        name: name.to_string(),
        r#type: ty as i32,
        categories,
    };
    pb::FeatureSchema {
        features: s
            .features
            .iter()
            .map(|f| match &f.kind {
                FeatureKind::Numeric => feature(&f.name, pb::FeatureType::Numeric, vec![]),
                FeatureKind::Categorical { categories } => {
                    feature(&f.name, pb::FeatureType::Categorical, categories.clone())
                }
            })
            .collect(),
        target: Some(match &s.target.task {
            Task::Classification { labels } => {
                feature(&s.target.name, pb::FeatureType::Categorical, labels.clone())
            }
            Task::Regression => feature(&s.target.name, pb::FeatureType::Numeric, vec![]),
        }),
    }
}

impl Registry {
    /// A lazily connected client of the registry at `url`, TLS and token
    /// per `client` (the `[trainer.client]` table).
    pub fn connect_lazy(client: &Client, url: &str) -> anyhow::Result<Self> {
        Ok(Registry {
            client: RegistryClient::new(client.lazy_channel("trainer.registry_url", url)?),
        })
    }

    /// The version `model@alias`, or `None` when the model or alias does
    /// not exist.
    pub async fn version_at(
        &self,
        model: &str,
        alias: &str,
    ) -> Result<Option<pb::ModelVersion>, TrainError> {
        let req = GetVersionRequest {
            r#ref: Some(VersionRef {
                model: model.to_string(),
                selector: Some(Selector::Alias(alias.to_string())),
            }),
        };
        match self.client.clone().get_version(req).await {
            Ok(v) => Ok(Some(v.into_inner())),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(TrainError::from_status(s)),
        }
    }

    /// The version `model/version`.
    pub async fn version(&self, model: &str, version: u64) -> Result<pb::ModelVersion, TrainError> {
        let req = GetVersionRequest {
            r#ref: Some(VersionRef {
                model: model.to_string(),
                selector: Some(Selector::Version(version)),
            }),
        };
        match self.client.clone().get_version(req).await {
            Ok(v) => Ok(v.into_inner()),
            Err(s) => Err(TrainError::from_status(s)),
        }
    }

    pub async fn latest_version(&self, model: &str) -> Result<Option<u64>, TrainError> {
        match self
            .client
            .clone()
            .get_model(GetModelRequest {
                name: model.to_string(),
            })
            .await
        {
            Ok(m) => Ok(Some(m.into_inner().latest_version).filter(|v| *v > 0)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(TrainError::from_status(s)),
        }
    }

    /// Downloads and decodes the artifact of `model/version`.
    pub async fn load_model(&self, model: &str, version: u64) -> Result<Model, TrainError> {
        let req = DownloadArtifactRequest {
            r#ref: Some(VersionRef {
                model: model.to_string(),
                selector: Some(Selector::Version(version)),
            }),
        };
        let mut stream = self
            .client
            .clone()
            .download_artifact(req)
            .await
            .map_err(TrainError::from_status)?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(TrainError::from_status)? {
            bytes.extend_from_slice(&chunk.data);
        }
        Model::from_bytes(&bytes).map_err(|e| {
            TrainError::FailedPrecondition(format!(
                "artifact of {model}/{version} cannot be loaded: {e}"
            ))
        })
    }

    /// Creates the model unless it exists, then registers the version.
    pub async fn register(
        &self,
        v: NewVersion<'_>,
        actor: &str,
    ) -> Result<pb::ModelVersion, TrainError> {
        let create = CreateModelRequest {
            name: v.model.to_string(),
            description: String::new(),
            tags: HashMap::new(),
            reason: "first version registered by the trainer".into(),
        };
        match self
            .client
            .clone()
            .create_model(with_actor(create, actor))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(TrainError::from_status(s)),
        }
        let header = VersionHeader {
            model: v.model.to_string(),
            params: v.params.into_iter().collect(),
            metrics: v.metrics.into_iter().collect(),
            tags: v.tags.into_iter().collect(),
            schema: Some(schema_to_proto(v.schema)),
            lineage: Some(v.lineage),
            description: v.description,
            expected_sha256: v.sha256.to_string(),
            reason: v.reason,
        };
        let mut parts = vec![RegisterVersionRequest {
            part: Some(Part::Header(header)),
        }];
        parts.extend(v.artifact.chunks(CHUNK).map(|c| RegisterVersionRequest {
            part: Some(Part::Chunk(c.to_vec())),
        }));
        let req = with_actor(tokio_stream::iter(parts), actor);
        self.client
            .clone()
            .register_version(req)
            .await
            .map(|r| r.into_inner())
            .map_err(TrainError::from_status)
    }

    /// Moves `model@alias` to `version` if it still points at `expected`
    /// (`None`: must not exist). `Ok(false)` when someone moved it first.
    pub async fn move_alias(
        &self,
        model: &str,
        alias: &str,
        version: u64,
        expected: Option<u64>,
        reason: String,
        actor: &str,
    ) -> Result<bool, TrainError> {
        let req = SetAliasRequest {
            model: model.to_string(),
            alias: alias.to_string(),
            version,
            expected_version: Some(expected.unwrap_or(0)),
            reason,
        };
        match self.client.clone().set_alias(with_actor(req, actor)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::FailedPrecondition => Ok(false),
            Err(s) => Err(TrainError::from_status(s)),
        }
    }
}
