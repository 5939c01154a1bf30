//! Keeps the catalog in step with the registry: an initial listing, then the
//! Watch stream from that revision. Every event names a model; the syncer
//! re-reads that model (GetModel + ListVersions), loads what is newly needed
//! off the request path (download, verify sha256, decode, warm), and swaps
//! in a new snapshot. State-based, so replays and retries are harmless:
//! nothing missed, nothing applied twice. On a registry outage it keeps the
//! current snapshot, retries with backoff and resumes from its revision; on
//! "compacted" it relists everything.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use evergreen_model::schema::Value;
use evergreen_model::{Model, Scratch};
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{
    version_ref, watch_response, DownloadArtifactRequest, GetModelRequest, ListModelsRequest,
    ListVersionsRequest, Model as PbModel, ModelVersion, VersionRef, VersionStatus, WatchRequest,
};
use evergreen_runtime::client::Channel;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Code;

use crate::catalog::{Catalog, Failure, Loaded, ModelEntry, VersionInfo};
use crate::config::ServerConfig;
use crate::error::ServeError;

/// A request to load a version that is not otherwise served.
pub struct OnDemand {
    pub model: String,
    /// A version to load; None = just refresh the model.
    pub version: Option<u64>,
    pub reply: oneshot::Sender<Result<(), ServeError>>,
}

pub struct Syncer {
    client: RegistryClient<Channel>,
    catalog: Arc<ArcSwap<Catalog>>,
    config: Arc<ServerConfig>,
    /// On-demand versions, oldest first.
    extras: VecDeque<(String, u64)>,
    ready: watch::Sender<bool>,
    metrics: crate::metrics::SyncMetrics,
}

type Result<T, E = tonic::Status> = std::result::Result<T, E>;

fn version_ref(model: &str, v: u64) -> Option<VersionRef> {
    Some(VersionRef {
        model: model.to_string(),
        selector: Some(version_ref::Selector::Version(v)),
    })
}

fn info(v: &ModelVersion) -> VersionInfo {
    VersionInfo {
        status: VersionStatus::try_from(v.status).unwrap_or(VersionStatus::Unspecified),
        reason: v.status_reason.clone(),
        sunset_at: v.sunset_at,
        replacement: v.replacement_version,
        sha256: v
            .artifact
            .as_ref()
            .map(|a| a.sha256.clone())
            .unwrap_or_default(),
    }
}

/// Decodes and warms an artifact (blocking: run off the async threads).
fn decode_and_warm(bytes: &[u8]) -> std::result::Result<Model, String> {
    let model = Model::from_bytes(bytes).map_err(|e| e.to_string())?;
    // Touch every tree and buffer once so the first request pays nothing.
    let row = vec![Value::Missing; model.schema.features.len()];
    let mut scratch = Scratch::default();
    for _ in 0..3 {
        model
            .predict(&row, &mut scratch)
            .map_err(|e| format!("warm-up prediction failed: {e}"))?;
    }
    Ok(model)
}

impl Syncer {
    pub fn new(
        channel: Channel,
        catalog: Arc<ArcSwap<Catalog>>,
        config: Arc<ServerConfig>,
        ready: watch::Sender<bool>,
        metrics: crate::metrics::SyncMetrics,
    ) -> Self {
        Syncer {
            client: RegistryClient::new(channel),
            catalog,
            config,
            extras: VecDeque::new(),
            ready,
            metrics,
        }
    }

    /// Runs until `requests` closes (server shutdown).
    pub async fn run(mut self, mut requests: mpsc::Receiver<OnDemand>) {
        let mut backoff = Backoff::new();
        'relist: loop {
            let mut revision = match self.full_sync().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the registry; retrying");
                    if !self.wait_or_serve(&mut requests, backoff.next()).await {
                        return;
                    }
                    continue 'relist;
                }
            };
            backoff.reset();
            if !*self.ready.borrow() {
                tracing::info!(
                    revision,
                    models = self.catalog.load().models.len(),
                    "initial catalog loaded"
                );
                let _ = self.ready.send(true);
            }
            // Follow the watch; reconnect from `revision` after failures.
            loop {
                match self.follow(&mut revision, &mut requests).await {
                    Follow::Shutdown => return,
                    Follow::Compacted => {
                        tracing::warn!(revision, "watch history compacted; relisting");
                        continue 'relist;
                    }
                    Follow::Broken(e) => {
                        tracing::warn!(error = %e, revision, "registry watch interrupted; serving what is loaded and retrying");
                        if !self.wait_or_serve(&mut requests, backoff.next()).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Sleeps for `d` while still answering on-demand requests (with an
    /// error: the registry is unreachable). False on shutdown.
    async fn wait_or_serve(
        &mut self,
        requests: &mut mpsc::Receiver<OnDemand>,
        d: Duration,
    ) -> bool {
        let deadline = tokio::time::sleep(d);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return true,
                r = requests.recv() => match r {
                    None => return false,
                    Some(r) => {
                        let _ = r.reply.send(Err(ServeError::Unavailable(format!(
                            "{} needs the registry, which is unreachable; retry shortly",
                            r.model
                        ))));
                    }
                },
            }
        }
    }

    async fn follow(
        &mut self,
        revision: &mut u64,
        requests: &mut mpsc::Receiver<OnDemand>,
    ) -> Follow {
        let req = WatchRequest {
            from_revision: Some(*revision),
            model: String::new(),
        };
        let mut stream = match self.client.watch(req).await {
            Ok(s) => s.into_inner(),
            Err(e) if e.code() == Code::OutOfRange => return Follow::Compacted,
            Err(e) => return Follow::Broken(e.to_string()),
        };
        let mut retry = tokio::time::interval(Duration::from_secs(10));
        retry.tick().await;
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let first = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => return Follow::Broken("watch stream ended".into()),
                        Err(e) => return Follow::Broken(e.to_string()),
                    };
                    // Take whatever else is already buffered, then sync each
                    // touched model once.
                    let mut dirty: Vec<String> = Vec::new();
                    let mut next = Some(first);
                    while let Some(m) = next.take() {
                        match m.kind {
                            Some(watch_response::Kind::Event(e)) => {
                                *revision = e.revision;
                                if !dirty.contains(&e.model) {
                                    dirty.push(e.model);
                                }
                            }
                            Some(watch_response::Kind::Compacted(_)) => return Follow::Compacted,
                            Some(watch_response::Kind::StartRevision(_)) | None => {}
                        }
                        if let Some(Ok(Some(m))) = futures::FutureExt::now_or_never(stream.message()) {
                            next = Some(m);
                        }
                    }
                    for model in dirty {
                        if let Err(e) = self.sync_model(&model, *revision).await {
                            return Follow::Broken(e.to_string());
                        }
                    }
                }
                r = requests.recv() => match r {
                    None => return Follow::Shutdown,
                    Some(r) => self.on_demand(r, *revision).await,
                },
                _ = retry.tick() => {
                    // Retry versions that failed to load (a transient error,
                    // or a fixed artifact).
                    let failing: Vec<String> = self.catalog.load().models.values()
                        .filter(|m| !m.failures.is_empty())
                        .map(|m| m.name.clone())
                        .collect();
                    for model in failing {
                        if let Err(e) = self.sync_model(&model, *revision).await {
                            return Follow::Broken(e.to_string());
                        }
                    }
                }
            }
        }
    }

    async fn on_demand(&mut self, r: OnDemand, revision: u64) {
        if let Some(v) = r.version {
            let key = (r.model.clone(), v);
            if !self.extras.contains(&key) {
                self.extras.push_back(key);
                while self.extras.len() > self.config.max_on_demand.max(1) {
                    self.extras.pop_front();
                }
            }
        }
        let result = match self.sync_model(&r.model, revision).await {
            Err(e) => Err(ServeError::Unavailable(format!(
                "registry: {}",
                e.message()
            ))),
            Ok(()) => {
                let cat = self.catalog.load();
                match (cat.models.get(&r.model), r.version) {
                    (None, _) => Err(ServeError::NotFound(format!(
                        "model {:?} not found",
                        r.model
                    ))),
                    (Some(_), None) => Ok(()),
                    // Loaded, or known but not servable (e.g. RETIRED meanwhile):
                    // the caller re-routes and gets the precise answer.
                    (Some(m), Some(v))
                        if m.loaded.contains_key(&v) || m.versions.contains_key(&v) =>
                    {
                        Ok(())
                    }

                    (Some(m), Some(v)) => {
                        Err(match m.failures.iter().rev().find(|f| f.version == v) {
                            Some(f) => ServeError::FailedPrecondition(format!(
                                "{}/{v} cannot be served: its artifact failed to load: {}",
                                r.model, f.error
                            )),
                            None => ServeError::NotFound(format!(
                                "version {v} of model {:?} not found",
                                r.model
                            )),
                        })
                    }
                }
            }
        };
        if result.is_err() {
            if let Some(v) = r.version {
                self.extras.retain(|(m, x)| !(m == &r.model && *x == v));
            }
        }
        let _ = r.reply.send(result);
    }

    /// Lists every model and rebuilds the whole catalog.
    async fn full_sync(&mut self) -> Result<u64> {
        let listing = self
            .client
            .list_models(ListModelsRequest {})
            .await?
            .into_inner();
        let old = self.catalog.load_full();
        let mut models = HashMap::new();
        for m in listing.models {
            let versions = self.list_versions(&m.name).await?;
            let name = m.name.clone();
            let entry = self
                .build_entry(m, versions, old.models.get(&name).cloned())
                .await;
            models.insert(name, Arc::new(entry));
        }
        self.catalog.store(Arc::new(Catalog {
            revision: listing.revision,
            models,
            ready: true,
        }));
        Ok(listing.revision)
    }

    async fn list_versions(&mut self, model: &str) -> Result<Vec<ModelVersion>> {
        Ok(self
            .client
            .list_versions(ListVersionsRequest {
                model: model.to_string(),
            })
            .await?
            .into_inner()
            .versions)
    }

    /// Re-reads one model and swaps it into the catalog.
    async fn sync_model(&mut self, name: &str, revision: u64) -> Result<()> {
        let model = match self
            .client
            .get_model(GetModelRequest {
                name: name.to_string(),
            })
            .await
        {
            Ok(m) => Some(m.into_inner()),
            Err(e) if e.code() == Code::NotFound => None,
            Err(e) => return Err(e),
        };
        let old = self.catalog.load_full();
        let entry = match model {
            None => None,
            Some(m) => {
                let versions = match self.list_versions(name).await {
                    Ok(v) => v,
                    Err(e) if e.code() == Code::NotFound => Vec::new(),
                    Err(e) => return Err(e),
                };
                Some(
                    self.build_entry(m, versions, old.models.get(name).cloned())
                        .await,
                )
            }
        };
        let mut models = old.models.clone();
        match entry {
            Some(e) => models.insert(name.to_string(), Arc::new(e)),
            None => models.remove(name),
        };
        self.catalog.store(Arc::new(Catalog {
            revision: revision.max(old.revision),
            models,
            ready: old.ready,
        }));
        Ok(())
    }

    /// The entry for `model`: loads what is newly needed, reuses what is
    /// already loaded, and keeps an old alias target serving when the new
    /// one fails to load.
    async fn build_entry(
        &mut self,
        model: PbModel,
        versions: Vec<ModelVersion>,
        old: Option<Arc<ModelEntry>>,
    ) -> ModelEntry {
        let name = model.name.clone();
        let infos: HashMap<u64, VersionInfo> =
            versions.iter().map(|v| (v.version, info(v))).collect();
        let servable = |v: &u64| {
            infos.get(v).is_some_and(|i| {
                !matches!(i.status, VersionStatus::Retired | VersionStatus::Archived)
            })
        };
        let served_aliases = self.config.aliases_of(&name);
        let mut desired: Vec<u64> = Vec::new();
        for a in &served_aliases {
            if let Some(v) = model.aliases.get(a) {
                desired.push(*v);
            }
        }
        desired.extend_from_slice(self.config.pinned_of(&name));
        if let Some(p) = &model.policy {
            desired.extend(p.weights.iter().filter(|w| w.weight > 0).map(|w| w.version));
            if p.shadow_version > 0 {
                desired.push(p.shadow_version);
            }
        }
        desired.extend(
            self.extras
                .iter()
                .filter(|(m, _)| *m == name)
                .map(|(_, v)| *v),
        );
        let mut seen = HashSet::new();
        desired.retain(|v| servable(v) && seen.insert(*v));

        let mut loaded: HashMap<u64, Arc<Loaded>> = HashMap::new();
        let mut failures: Vec<Failure> = Vec::new();
        for v in desired {
            let sha = &infos[&v].sha256;
            if let Some(l) = old
                .as_ref()
                .and_then(|o| o.loaded.get(&v))
                .filter(|l| &l.sha256 == sha)
            {
                loaded.insert(v, l.clone());
                continue;
            }
            match self.load(&name, v, sha).await {
                Ok(l) => {
                    tracing::info!(model = %name, version = v, "loaded");
                    loaded.insert(v, Arc::new(l));
                }
                Err(e) => {
                    tracing::error!(model = %name, version = v, error = %e, "version failed to load; not serving it");
                    self.metrics.load_failed(&name);
                    failures.push(Failure {
                        version: v,
                        error: e,
                        at: SystemTime::now(),
                    });
                }
            }
        }
        // Served aliases route to their target if it loaded, else keep the
        // previous target serving.
        let mut routes = HashMap::new();
        for a in &served_aliases {
            let Some(target) = model.aliases.get(a) else {
                continue;
            };
            if loaded.contains_key(target) {
                routes.insert(a.clone(), *target);
            } else if let Some((prev, l)) = old
                .as_ref()
                .and_then(|o| {
                    o.routes
                        .get(a)
                        .and_then(|p| o.loaded.get(p).map(|l| (*p, l.clone())))
                })
                .filter(|(p, _)| servable(p))
            {
                tracing::warn!(model = %name, alias = %a, target, serving = prev, "alias target not loadable; previous version keeps serving");
                loaded.insert(prev, l);
                routes.insert(a.clone(), prev);
            }
        }
        if let Some(o) = &old {
            for (a, v) in &routes {
                if o.routes.get(a).is_some_and(|p| p != v) {
                    self.metrics.swapped(&name, a);
                }
            }
        }
        ModelEntry {
            name,
            aliases: model.aliases.into_iter().collect(),
            routes,
            versions: infos,
            loaded,
            policy: model.policy,
            failures,
        }
    }

    /// Downloads, verifies, decodes and warms one version.
    async fn load(
        &mut self,
        model: &str,
        version: u64,
        sha256: &str,
    ) -> std::result::Result<Loaded, String> {
        let req = DownloadArtifactRequest {
            r#ref: version_ref(model, version),
        };
        let mut stream = self
            .client
            .download_artifact(req)
            .await
            .map_err(|e| format!("download: {}", e.message()))?
            .into_inner();
        let mut bytes = Vec::new();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|e| format!("download: {}", e.message()))?
        {
            hasher.update(&chunk.data);
            bytes.extend_from_slice(&chunk.data);
        }
        let actual = hex::encode(hasher.finalize());

        if actual != sha256 {
            return Err(format!(
                "artifact sha256 mismatch: the registry lists {sha256}, the bytes hash to {actual}"
            ));
        }
        let model_name = model.to_string();
        let sha = sha256.to_string();
        tokio::task::spawn_blocking(move || {
            decode_and_warm(&bytes).map(|artifact| Loaded {
                model: model_name,
                version,
                artifact,
                sha256: sha,
                loaded_at: SystemTime::now(),
                predictions: Default::default(),
            })
        })
        .await
        .map_err(|e| format!("loader task failed: {e}"))?
    }
}

enum Follow {
    Shutdown,
    Compacted,
    Broken(String),
}

struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: Duration::from_millis(50),
        }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }
    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(2));
        d
    }
}
