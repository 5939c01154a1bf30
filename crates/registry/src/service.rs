//! The registry's operations, as plain async Rust over the store and the
//! artifact store. `grpc.rs` is a thin adapter over this.

use std::collections::HashMap;
use std::sync::Arc;

use evergreen_proto::v1::{
    Alias, ArtifactRef, Event, EventKind, Model, ModelVersion, TrafficPolicy, UpdateModelRequest,
    VersionHeader, VersionStatus,
};
use futures::{Stream, StreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::artifacts::ArtifactStore;
use crate::error::{RegistryError, Result};
use crate::names::{validate_alias, validate_name, VersionSpec};
use crate::store::{abort, aliases_of, now, status_name, version_status, Change, Store, TxResult};
use crate::watch::{self, WatchItem};

/// Deprecation details given with a move to DEPRECATED.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deprecation {
    pub sunset_at: Option<evergreen_proto::Timestamp>,
    pub replacement_version: u64,
}

/// Most weighted versions a traffic policy may name.
pub const MAX_POLICY_WEIGHTS: usize = 16;

fn policy_json(p: &Option<TrafficPolicy>) -> serde_json::Value {
    match p {
        None => json!(null),
        Some(p) => json!({
            "weights": p.weights.iter().map(|w| json!({"version": w.version, "weight": w.weight})).collect::<Vec<_>>(),
            "shadow_version": p.shadow_version,
        }),
    }
}

/// Versions a policy sends traffic to (weight > 0) or shadows.
fn policy_versions(p: &Option<TrafficPolicy>) -> Vec<u64> {
    let Some(p) = p else { return Vec::new() };
    let mut v: Vec<u64> = p
        .weights
        .iter()
        .filter(|w| w.weight > 0)
        .map(|w| w.version)
        .collect();
    if p.shadow_version > 0 {
        v.push(p.shadow_version);
    }
    v
}

/// Who is asking and why: recorded in the audit trail of every mutation.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: String,
    pub reason: String,
}

pub struct Registry {
    store: Arc<Store>,
    artifacts: Arc<dyn ArtifactStore>,
    max_artifact_bytes: u64,
}

/// Moves `SetVersionStatus` may make (archive and restore arrive with #6).
fn allowed_transitions(from: VersionStatus) -> &'static [VersionStatus] {
    use VersionStatus::*;
    match from {
        Active => &[Deprecated, Retired],
        Deprecated => &[Active, Retired],
        Retired => &[Active],
        Archived | Unspecified => &[],
    }
}

fn check_tags(field: &str, tags: &HashMap<String, String>) -> Result<()> {
    for k in tags.keys() {
        if k.is_empty() || k.len() > 256 {
            return Err(RegistryError::InvalidArgument(format!(
                "invalid {field} key {k:?}: expected 1-256 characters"
            )));
        }
    }
    Ok(())
}

impl Registry {
    pub fn new(
        store: Arc<Store>,
        artifacts: Arc<dyn ArtifactStore>,
        max_artifact_bytes: u64,
    ) -> Self {
        Self {
            store,
            artifacts,
            max_artifact_bytes,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// What `evergreen status` shows: models, versions (by status),
    /// aliases, phase-outs running, and the Watch revision.
    pub fn holdings(&self) -> Result<Vec<(String, String)>> {
        let models = self.store.list_models()?;
        let mut by_status: std::collections::BTreeMap<&'static str, u64> = Default::default();
        let mut versions = 0u64;
        for m in &models {
            for v in self.store.list_versions(&m.name)? {
                versions += 1;
                *by_status
                    .entry(crate::store::version_status(&v).short_name())
                    .or_default() += 1;
            }
        }
        let aliases: usize = models.iter().map(|m| m.aliases.len()).sum();
        let running = self
            .store
            .phaseouts()
            .iter()
            .values()
            .filter_map(|b| b.ok())
            .filter_map(|b| {
                <evergreen_proto::v1::Phaseout as prost::Message>::decode(b.as_ref()).ok()
            })
            .filter(|p| {
                matches!(
                    p.state(),
                    evergreen_proto::v1::PhaseoutState::Running
                        | evergreen_proto::v1::PhaseoutState::Paused
                )
            })
            .count();
        let split = by_status
            .iter()
            .map(|(s, n)| format!("{n} {}", s.to_lowercase()))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(vec![
            ("models".into(), models.len().to_string()),
            (
                "versions".into(),
                if split.is_empty() {
                    versions.to_string()
                } else {
                    format!("{versions} ({split})")
                },
            ),
            ("aliases".into(), aliases.to_string()),
            ("phase-outs".into(), running.to_string()),
            ("revision".into(), self.store.hub().published().to_string()),
        ])
    }

    // ---- models ----

    pub async fn create_model(
        &self,
        caller: Caller,
        name: String,
        description: String,
        tags: HashMap<String, String>,
    ) -> Result<Model> {
        validate_name("model name", &name)?;
        check_tags("tag", &tags)?;
        self.store
            .mutate(&caller.actor, move |tx| {
                if tx.model(&name)?.is_some() {
                    return abort(RegistryError::ModelExists(name.clone()));
                }
                let t = now();
                let model = Model {
                    name: name.clone(),
                    description: description.clone(),
                    tags: tags.clone(),
                    created_at: Some(t),
                    updated_at: Some(t),
                    latest_version: tx.last_version(&name)?,
                    aliases: HashMap::new(),
                    policy: None,
                };
                tx.put_model(&model)?;
                tx.record(Change {
                    kind: EventKind::ModelCreated,
                    model: &name,
                    version: 0,
                    alias: "",
                    reason: &caller.reason,
                    before: json!(null),
                    after: json!({"description": description, "tags": tags}),
                })?;
                Ok(model)
            })
            .await
    }

    pub fn get_model(&self, name: &str) -> Result<Model> {
        validate_name("model name", name)?;
        self.store.get_model(name)
    }

    /// All models, with the revision the listing reflects exactly.
    pub async fn list_models(&self) -> Result<(Vec<Model>, u64)> {
        self.store.snapshot(|r| r.list_models()).await
    }

    pub async fn update_model(&self, caller: Caller, req: UpdateModelRequest) -> Result<Model> {
        validate_name("model name", &req.name)?;
        check_tags("tag", &req.set_tags)?;
        self.store
            .mutate(&caller.actor, move |tx| {
                let mut model = tx.existing_model(&req.name)?;
                let before = json!({"description": model.description, "tags": model.tags});
                if let Some(d) = &req.description {
                    model.description = d.clone();
                }
                for k in &req.remove_tags {
                    model.tags.remove(k);
                }
                model.tags.extend(req.set_tags.clone());
                model.updated_at = Some(now());
                tx.put_model(&model)?;
                tx.record(Change {
                    kind: EventKind::ModelUpdated,
                    model: &req.name,
                    version: 0,
                    alias: "",
                    reason: &caller.reason,
                    before,
                    after: json!({"description": model.description, "tags": model.tags}),
                })?;
                Ok(model)
            })
            .await
    }

    /// Deletes a model. With versions left it needs `force`, which deletes
    /// them too. The audit trail and the version counter survive, so a model
    /// re-created under the same name never reuses a number.
    pub async fn delete_model(&self, caller: Caller, name: String, force: bool) -> Result<u64> {
        validate_name("model name", &name)?;
        self.store
            .mutate(&caller.actor, move |tx| {
                let model = tx.existing_model(&name)?;
                let versions = tx.version_numbers(&name)?;
                if !versions.is_empty() && !force {
                    return abort(RegistryError::FailedPrecondition(format!(
                            "model {name:?} still has {} version(s); delete them first or pass force=true",
                            versions.len(),
                    )));
                }
                for v in &versions {
                    tx.remove_version(&name, *v)?;
                }
                tx.remove_model(&name)?;
                tx.record(Change {
                    kind: EventKind::ModelDeleted,
                    model: &name,
                    version: 0,
                    alias: "",
                    reason: &caller.reason,
                    before: json!({"versions": versions, "aliases": model.aliases}),
                    after: json!(null),
                })
            })
            .await
    }

    // ---- versions ----

    /// Streams the artifact into the store while hashing it, then registers
    /// the next version number in one durable transaction. Nothing is
    /// registered if any check fails.
    pub async fn register_version<S>(
        &self,
        caller: Caller,
        header: VersionHeader,
        mut chunks: S,
    ) -> Result<ModelVersion>
    where
        S: Stream<Item = Result<Vec<u8>>> + Unpin + Send,
    {
        validate_name("model name", &header.model)?;
        check_tags("tag", &header.tags)?;
        check_tags("param", &header.params)?;
        let expected = header.expected_sha256.to_ascii_lowercase();
        if !expected.is_empty()
            && (expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(RegistryError::InvalidArgument(format!(
                "invalid expected_sha256 {:?}: expected 64 hex digits",
                header.expected_sha256
            )));
        }
        for (k, v) in &header.metrics {
            if !v.is_finite() {
                return Err(RegistryError::InvalidArgument(format!(
                    "metric {k:?} is {v}: metrics must be finite numbers"
                )));
            }
        }
        // Fail fast, before taking the upload.
        self.store.get_model(&header.model)?;

        let mut upload = self.artifacts.begin().await?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            if size > self.max_artifact_bytes {
                return Err(RegistryError::ArtifactTooLarge {
                    limit: self.max_artifact_bytes,
                });
            }
            hasher.update(&chunk);
            upload.write(&chunk).await?;
        }
        if size == 0 {
            return Err(RegistryError::InvalidArgument(
                "empty artifact: send the header, then at least one non-empty chunk".into(),
            ));
        }
        let sha256 = hex::encode(hasher.finalize());
        if !expected.is_empty() && expected != sha256 {
            return Err(RegistryError::ChecksumMismatch {
                declared: expected,
                actual: sha256,
            });
        }
        upload.commit(&sha256).await?;

        let artifact = ArtifactRef {
            sha256,
            size_bytes: size,
        };
        self.store
            .mutate(&caller.actor, move |tx| {
                let mut model = tx.existing_model(&header.model)?;
                let number = tx.next_version(&header.model)?;
                let version = ModelVersion {
                    model: header.model.clone(),
                    version: number,
                    status: VersionStatus::Active as i32,
                    status_reason: String::new(),
                    artifact: Some(artifact.clone()),
                    params: header.params.clone(),
                    metrics: header.metrics.clone(),
                    tags: header.tags.clone(),
                    schema: header.schema.clone(),
                    lineage: header.lineage.clone(),
                    description: header.description.clone(),
                    created_at: Some(now()),
                    created_by: tx.actor().to_string(),
                    aliases: Vec::new(),
                    sunset_at: None,
                    replacement_version: 0,
                    archive_uri: String::new(),
                };
                tx.put_version(&version)?;
                model.latest_version = number;
                model.updated_at = version.created_at;
                tx.put_model(&model)?;
                tx.record(Change {
                    kind: EventKind::VersionRegistered,
                    model: &header.model,
                    version: number,
                    alias: "",
                    reason: &caller.reason,
                    before: json!(null),
                    after: json!({"sha256": artifact.sha256, "size_bytes": artifact.size_bytes}),
                })?;
                Ok(version)
            })
            .await
    }

    pub fn get_version(&self, spec: &VersionSpec) -> Result<ModelVersion> {
        self.store.get_version(spec)
    }

    pub async fn list_versions(&self, model: &str) -> Result<(Vec<ModelVersion>, u64)> {
        validate_name("model name", model)?;
        let model = model.to_string();
        self.store.snapshot(move |r| r.list_versions(&model)).await
    }

    /// The version and a reader of its artifact's bytes.
    pub async fn open_artifact(
        &self,
        spec: &VersionSpec,
    ) -> Result<(ModelVersion, std::pin::Pin<Box<dyn AsyncRead + Send>>)> {
        let version = self.store.get_version(spec)?;
        if version_status(&version) == VersionStatus::Archived {
            return Err(RegistryError::FailedPrecondition(format!(
                "{}/{} is ARCHIVED (at {}): its artifact is not here; restore it first (evergreen restore {} {})",
                version.model, version.version, version.archive_uri, version.model, version.version
            )));
        }
        let sha = version
            .artifact
            .as_ref()
            .map(|a| a.sha256.clone())
            .unwrap_or_default();

        let reader = self.artifacts.open(&sha).await?;
        Ok((version, reader))
    }

    pub async fn set_version_status(
        &self,
        caller: Caller,
        spec: VersionSpec,
        status: VersionStatus,
        deprecation: Deprecation,
    ) -> Result<ModelVersion> {
        if matches!(status, VersionStatus::Unspecified) {
            return Err(RegistryError::InvalidArgument(
                "status is required: expected ACTIVE, DEPRECATED or RETIRED".into(),
            ));
        }
        if status != VersionStatus::Deprecated && deprecation != Deprecation::default() {
            return Err(RegistryError::InvalidArgument(
                "sunset_at and replacement_version only go with status DEPRECATED".into(),
            ));
        }
        let (_, number) = self.store.resolve(&spec)?;
        let name = spec.model.clone();
        self.store
            .mutate(&caller.actor, move |tx| {
                let model = tx.existing_model(&name)?;
                let mut version = tx.version(&name, number)?;
                version.aliases = aliases_of(&model, number);
                let from = version_status(&version);
                let same_details = version.sunset_at == deprecation.sunset_at
                    && version.replacement_version == deprecation.replacement_version
                    && version.status_reason == caller.reason;
                if from == status && (status != VersionStatus::Deprecated || same_details) {
                    return Ok(version); // nothing to change, nothing to record
                }
                let allowed = allowed_transitions(from);
                if !allowed.contains(&status) {
                    let names: Vec<&str> = allowed.iter().map(|s| status_name(*s)).collect();
                    let hint = if matches!(status, VersionStatus::Archived) || matches!(from, VersionStatus::Archived) {
                        " (archive and restore have their own calls)"
                    } else {
                        ""
                    };
                    return abort(RegistryError::FailedPrecondition(format!(
                            "{name}/{number} is {}: it can move to {}, not {}{hint}",
                            status_name(from),
                            if names.is_empty() { "nothing".to_string() } else { names.join(" or ") },
                            status_name(status),
                    )));
                }
                if matches!(status, VersionStatus::Retired) {
                    let pointing: Vec<&String> =
                        model.aliases.iter().filter(|(_, v)| **v == number).map(|(a, _)| a).collect();
                    if !pointing.is_empty() {
                        return abort(RegistryError::FailedPrecondition(format!(
                                "cannot retire {name}/{number}: alias(es) {pointing:?} still point at it; move them first"
                            )));
                    }
                    if policy_versions(&model.policy).contains(&number) {
                        return abort(RegistryError::FailedPrecondition(format!(
                            "cannot retire {name}/{number}: the traffic policy still sends it traffic (weight or shadow); change the policy first"
                        )));
                    }
                }
                if deprecation.replacement_version > 0 {
                    let r = deprecation.replacement_version;
                    if r == number {
                        return abort(RegistryError::InvalidArgument(format!(
                            "replacement_version {r}: a version cannot replace itself"
                        )));
                    }
                    let replacement = tx.version(&name, r)?;
                    if matches!(version_status(&replacement), VersionStatus::Retired | VersionStatus::Archived) {
                        return abort(RegistryError::FailedPrecondition(format!(
                            "replacement {name}/{r} is {}; name an ACTIVE version",
                            status_name(version_status(&replacement))
                        )));
                    }
                }
                version.status = status as i32;
                version.status_reason = caller.reason.clone();
                version.sunset_at = deprecation.sunset_at;
                version.replacement_version = deprecation.replacement_version;
                tx.put_version(&version)?;
                tx.record(Change {
                    kind: EventKind::VersionStatusChanged,
                    model: &name,
                    version: number,
                    alias: "",
                    reason: &caller.reason,
                    before: json!({"status": status_name(from)}),
                    after: json!({"status": status_name(status)}),
                })?;
                Ok(version)
            })
            .await
    }

    pub async fn delete_version(
        &self,
        caller: Caller,
        spec: VersionSpec,
        force: bool,
    ) -> Result<u64> {
        let (_, number) = self.store.resolve(&spec)?;
        let name = spec.model.clone();
        self.store
            .mutate(&caller.actor, move |tx| {
                let model = tx.existing_model(&name)?;
                let version = tx.version(&name, number)?;
                let pointing: Vec<&String> =
                    model.aliases.iter().filter(|(_, v)| **v == number).map(|(a, _)| a).collect();
                if !pointing.is_empty() {
                    return abort(RegistryError::FailedPrecondition(format!(
                            "cannot delete {name}/{number}: alias(es) {pointing:?} still point at it; move them first"
                        )));
                }
                if version_status(&version) == VersionStatus::Archived && !force {
                    return abort(RegistryError::FailedPrecondition(format!(
                        "{name}/{number} is ARCHIVED (at {}): deleting its record needs force (--force); the archive itself is kept",
                        version.archive_uri
                    )));
                }
                tx.remove_version(&name, number)?;
                tx.record(Change {
                    kind: EventKind::VersionDeleted,
                    model: &name,
                    version: number,
                    alias: "",
                    reason: &caller.reason,
                    before: json!({
                        "sha256": version.artifact.as_ref().map(|a| a.sha256.clone()),
                        "status": status_name(version_status(&version)),
                    }),
                    after: json!(null),
                })
            })
            .await
    }

    // ---- aliases ----

    /// Points `alias` at `version`. With `expected` it is a compare-and-set:
    /// `Some(0)` = the alias must not exist, `Some(v)` = it must point at v.
    pub async fn set_alias(
        &self,
        caller: Caller,
        model: String,
        alias: String,
        version: u64,
        expected: Option<u64>,
    ) -> Result<Alias> {
        validate_name("model name", &model)?;
        validate_alias(&alias)?;
        if version == 0 {
            return Err(RegistryError::InvalidArgument(
                "version must be a positive integer, got 0".into(),
            ));
        }
        self.store
            .mutate(&caller.actor, move |tx| {
                let mut m = tx.existing_model(&model)?;
                let current = m.aliases.get(&alias).copied();
                check_expected(&model, &alias, expected, current)?;
                let target = tx.version(&model, version)?;
                let status = version_status(&target);
                if matches!(status, VersionStatus::Retired | VersionStatus::Archived) {
                    return abort(RegistryError::FailedPrecondition(format!(
                            "cannot point {model}@{alias} at {model}/{version}: it is {}; reactivate it first",
                            status_name(status),
                    )));
                }
                if current == Some(version) {
                    return Ok(Alias { model: model.clone(), alias: alias.clone(), version, revision: 0 });
                }
                m.aliases.insert(alias.clone(), version);
                m.updated_at = Some(now());
                tx.put_model(&m)?;
                let revision = tx.record(Change {
                    kind: EventKind::AliasSet,
                    model: &model,
                    version,
                    alias: &alias,
                    reason: &caller.reason,
                    before: current.map_or(json!(null), |v| json!({"version": v})),
                    after: json!({"version": version}),
                })?;
                Ok(Alias { model: model.clone(), alias: alias.clone(), version, revision })
            })
            .await
    }

    pub async fn delete_alias(
        &self,
        caller: Caller,
        model: String,
        alias: String,
        expected: Option<u64>,
    ) -> Result<u64> {
        validate_name("model name", &model)?;
        validate_alias(&alias)?;
        self.store
            .mutate(&caller.actor, move |tx| {
                let mut m = tx.existing_model(&model)?;
                let Some(current) = m.aliases.get(&alias).copied() else {
                    return abort(RegistryError::AliasNotFound {
                        model: model.clone(),
                        alias: alias.clone(),
                    });
                };
                check_expected(&model, &alias, expected, Some(current))?;
                m.aliases.remove(&alias);
                m.updated_at = Some(now());
                tx.put_model(&m)?;
                tx.record(Change {
                    kind: EventKind::AliasDeleted,
                    model: &model,
                    version: current,
                    alias: &alias,
                    reason: &caller.reason,
                    before: json!({"version": current}),
                    after: json!(null),
                })
            })
            .await
    }

    /// Moves `alias` back to the target it had before its current one, as
    /// the audit trail records it; a compare-and-set on the current target.
    pub async fn rollback_alias(
        &self,
        caller: Caller,
        model: String,
        alias: String,
    ) -> Result<Alias> {
        validate_name("model name", &model)?;
        validate_alias(&alias)?;
        let m = self.store.get_model(&model)?;
        let Some(current) = m.aliases.get(&alias).copied() else {
            return Err(RegistryError::AliasNotFound { model, alias });
        };
        // The newest ALIAS_SET that put the alias on its current target.
        let history = self.store.history(&model, 0)?;
        let previous = history
            .iter()
            .rev()
            .find(|e| {
                e.kind == EventKind::AliasSet as i32 && e.alias == alias && e.version == current
            })
            .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.before).ok())
            .and_then(|b| b["version"].as_u64());
        let Some(previous) = previous else {
            return Err(RegistryError::FailedPrecondition(format!(
                "{model}@{alias} has no previous target to roll back to (it was first set to {current})"
            )));
        };
        let reason = if caller.reason.is_empty() {
            format!("rollback from {current} to {previous}")
        } else {
            format!("rollback from {current} to {previous}: {}", caller.reason)
        };
        self.set_alias(
            Caller { reason, ..caller },
            model,
            alias,
            previous,
            Some(current),
        )
        .await
    }

    /// Replaces the model's traffic policy (empty = clear).
    pub async fn set_traffic_policy(
        &self,
        caller: Caller,
        model: String,
        policy: TrafficPolicy,
    ) -> Result<Model> {
        validate_name("model name", &model)?;
        if policy.weights.len() > MAX_POLICY_WEIGHTS {
            return Err(RegistryError::InvalidArgument(format!(
                "policy has {} weights; expected at most {MAX_POLICY_WEIGHTS}",
                policy.weights.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for w in &policy.weights {
            if w.version == 0 || !seen.insert(w.version) {
                return Err(RegistryError::InvalidArgument(format!(
                    "policy weights: version {} is zero or listed twice; expected distinct version numbers",
                    w.version
                )));
            }
        }
        if !policy.weights.is_empty() && policy.weights.iter().all(|w| w.weight == 0) {
            return Err(RegistryError::InvalidArgument(
                "policy weights are all 0: expected at least one positive weight (or no weights to clear)".into(),
            ));
        }
        let cleared = policy.weights.is_empty() && policy.shadow_version == 0;
        self.store
            .mutate(&caller.actor, move |tx| {
                let mut m = tx.existing_model(&model)?;
                let new = (!cleared).then(|| policy.clone());
                for v in policy_versions(&new) {
                    let target = tx.version(&model, v)?;
                    let status = version_status(&target);
                    if matches!(status, VersionStatus::Retired | VersionStatus::Archived) {
                        return abort(RegistryError::FailedPrecondition(format!(
                            "cannot send traffic to {model}/{v}: it is {}; reactivate it first",
                            status_name(status)
                        )));
                    }
                }
                if m.policy == new {
                    return Ok(m);
                }
                let before = policy_json(&m.policy);
                m.policy = new;
                m.updated_at = Some(now());
                tx.put_model(&m)?;
                tx.record(Change {
                    kind: EventKind::PolicySet,
                    model: &model,
                    version: 0,
                    alias: "",
                    reason: &caller.reason,
                    before,
                    after: policy_json(&m.policy),
                })?;
                Ok(m)
            })
            .await
    }

    // ---- audit and watch ----

    pub fn history(&self, model: &str, limit: usize) -> Result<Vec<Event>> {
        validate_name("model name", model)?;
        self.store.history(model, limit)
    }

    pub fn watch(
        &self,
        from: Option<u64>,
        model: String,
    ) -> Result<mpsc::Receiver<Result<WatchItem>>> {
        if !model.is_empty() {
            validate_name("model name", &model)?;
        }
        watch::watch(
            self.store.hub().clone(),
            (**self.store).clone(),
            from,
            model,
        )
    }
}

fn check_expected(
    model: &str,
    alias: &str,
    expected: Option<u64>,
    current: Option<u64>,
) -> TxResult<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let expected = (expected != 0).then_some(expected);
    if expected != current {
        return abort(RegistryError::AliasMismatch {
            model: model.to_string(),
            alias: alias.to_string(),
            expected,
            actual: current,
        });
    }
    Ok(())
}
