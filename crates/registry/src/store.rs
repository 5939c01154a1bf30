//! Registry state in sled, and the single writer that mutates it.
//!
//! Reads go straight to sled from any task. Every mutation is a closure sent
//! to one writer thread, which runs it in a multi-tree sled transaction that
//! also appends its event (global revision) to the `events` and `audit`
//! trees. The writer takes whatever mutations queued up meanwhile, applies
//! them one transaction each, then flushes once (group commit) and only then
//! publishes the events to watchers and acknowledges the callers. So:
//! revisions are gapless and in commit order, a version number comes from a
//! counter updated in the same transaction as the insert, and nothing is
//! acknowledged or announced before it is on disk.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use evergreen_proto::v1::{Event, EventKind, Model, ModelVersion, VersionStatus};
use evergreen_proto::Timestamp;
use prost::Message;
use serde_json::Value;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::oneshot;

use crate::error::{RegistryError, Result};
use crate::names::{Selector, VersionSpec};
use crate::watch::Hub;

const FORMAT_KEY: &[u8] = b"format";
/// Written once at creation; a data dir with another value is refused.
const FORMAT: &[u8] = b"evergreen-registry/1";
const REVISION_KEY: &[u8] = b"revision";
const COMPACTED_KEY: &[u8] = b"compacted";
/// Every tree a registry database may hold (sled adds its default tree).
const TREES: &[&str] = &[
    "__sled__default",
    "meta",
    "models",
    "versions",
    "counters",
    "events",
    "audit",
    "blobs",
    "phaseouts",
];

/// Most mutations the writer applies before one flush.
const MAX_BATCH: usize = 1024;

pub type TxResult<T> = std::result::Result<T, ConflictableTransactionError<RegistryError>>;

pub fn abort<T>(e: RegistryError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M> {
    M::decode(bytes).map_err(|e| RegistryError::Storage(format!("corrupt {what} record: {e}")))
}

fn u64_of(bytes: Option<sled::IVec>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// `model \0 n` — versions and audit entries sort by model, then number.
fn child_key(model: &str, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(model.len() + 9);
    k.extend_from_slice(model.as_bytes());
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn child_prefix(model: &str) -> Vec<u8> {
    let mut k = model.as_bytes().to_vec();
    k.push(0);
    k
}

pub fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

pub fn status_name(s: VersionStatus) -> &'static str {
    s.short_name()
}

#[derive(Clone)]
struct Trees {
    meta: sled::Tree,
    models: sled::Tree,
    versions: sled::Tree,
    counters: sled::Tree,
    events: sled::Tree,
    audit: sled::Tree,
    phaseouts: sled::Tree,
}

/// What one mutation's transaction sees: the seven trees, plus the events it
/// appends. Built afresh for each attempt of the transaction.
pub struct Tx<'a> {
    meta: &'a TransactionalTree,
    models: &'a TransactionalTree,
    versions: &'a TransactionalTree,
    counters: &'a TransactionalTree,
    events: &'a TransactionalTree,
    audit: &'a TransactionalTree,
    phaseouts: &'a TransactionalTree,
    history: u64,
    actor: &'a str,
    emitted: Vec<Event>,
}

/// A change about to be recorded (the event minus its revision and time).
pub struct Change<'a> {
    pub kind: EventKind,
    pub model: &'a str,
    pub version: u64,
    pub alias: &'a str,
    pub reason: &'a str,
    pub before: Value,
    pub after: Value,
}

fn json_or_empty(v: Value) -> String {
    if v.is_null() {
        String::new()
    } else {
        v.to_string()
    }
}

impl Tx<'_> {
    pub fn model(&self, name: &str) -> TxResult<Option<Model>> {
        match self.models.get(name.as_bytes())? {
            Some(b) => decode(&b, "model").map(Some).or_else(abort),
            None => Ok(None),
        }
    }

    pub fn existing_model(&self, name: &str) -> TxResult<Model> {
        match self.model(name)? {
            Some(m) => Ok(m),
            None => abort(RegistryError::ModelNotFound(name.to_string())),
        }
    }

    pub fn put_model(&self, model: &Model) -> TxResult<()> {
        self.models
            .insert(model.name.as_bytes(), model.encode_to_vec())?;
        Ok(())
    }

    pub fn remove_model(&self, name: &str) -> TxResult<()> {
        self.models.remove(name.as_bytes())?;
        Ok(())
    }

    pub fn version(&self, model: &str, version: u64) -> TxResult<ModelVersion> {
        match self.versions.get(child_key(model, version))? {
            Some(b) => decode(&b, "version").or_else(abort),
            None => abort(RegistryError::VersionNotFound {
                model: model.to_string(),
                version,
            }),
        }
    }

    pub fn put_version(&self, v: &ModelVersion) -> TxResult<()> {
        let mut stored = v.clone();
        stored.aliases.clear(); // derived from the model record on read
        self.versions
            .insert(child_key(&v.model, v.version), stored.encode_to_vec())?;
        Ok(())
    }

    pub fn remove_version(&self, model: &str, version: u64) -> TxResult<()> {
        self.versions.remove(child_key(model, version))?;
        Ok(())
    }

    /// Version numbers of a model that still exist. (sled transactions
    /// cannot scan, so this probes 1..=counter.)
    pub fn version_numbers(&self, model: &str) -> TxResult<Vec<u64>> {
        let mut out = Vec::new();
        for v in 1..=self.last_version(model)? {
            if self.versions.get(child_key(model, v))?.is_some() {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Bumps the model's version counter (which outlives the model, so
    /// numbers are never reused) and returns the new number.
    pub fn next_version(&self, model: &str) -> TxResult<u64> {
        let next = u64_of(self.counters.get(model.as_bytes())?) + 1;
        self.counters
            .insert(model.as_bytes(), &next.to_be_bytes())?;
        Ok(next)
    }

    /// Highest version number ever assigned to this model name.
    pub fn last_version(&self, model: &str) -> TxResult<u64> {
        Ok(u64_of(self.counters.get(model.as_bytes())?))
    }

    pub fn actor(&self) -> &str {
        self.actor
    }

    /// Phase-out records, model name -> `Phaseout` (see `phaseout.rs`).
    pub fn phaseouts(&self) -> &TransactionalTree {
        self.phaseouts
    }

    /// Appends the change to the event log and the model's audit trail and
    /// returns its revision.
    pub fn record(&mut self, c: Change<'_>) -> TxResult<u64> {
        let revision = u64_of(self.meta.get(REVISION_KEY)?) + 1;
        self.meta.insert(REVISION_KEY, &revision.to_be_bytes())?;
        let event = Event {
            revision,
            time: Some(now()),
            kind: c.kind as i32,
            model: c.model.to_string(),
            version: c.version,
            alias: c.alias.to_string(),
            actor: self.actor.to_string(),
            reason: c.reason.to_string(),
            before: json_or_empty(c.before),
            after: json_or_empty(c.after),
        };
        let bytes = event.encode_to_vec();
        self.events.insert(&revision.to_be_bytes(), bytes.clone())?;
        self.audit.insert(child_key(c.model, revision), bytes)?;
        if revision > self.history {
            let compacted = revision - self.history;
            self.events.remove(&compacted.to_be_bytes())?;
            self.meta.insert(COMPACTED_KEY, &compacted.to_be_bytes())?;
        }
        self.emitted.push(event);
        Ok(revision)
    }
}

/// A queued unit of work for the writer thread.
type Job = Box<dyn FnOnce(&Writer) -> Applied + Send>;

/// Answers a job's caller once the flush is done: `None` = durable,
/// `Some` = the flush failed.
type Reply = Box<dyn FnOnce(Option<&RegistryError>) + Send>;

/// The outcome of one job: the events it committed, and its reply.
struct Applied {
    events: Vec<Event>,
    reply: Reply,
}

struct Writer {
    trees: Trees,
    history: u64,
}

/// Limits the store enforces.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Events retained for Watch; older ones are compacted away.
    pub history: u64,
    /// Events a watcher may fall behind before its stream ends.
    pub watch_buffer: usize,
}

pub struct Store {
    reader: Reader,
    jobs: Mutex<Option<std_mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    hub: Arc<Hub>,
    blobs: sled::Tree,
}

impl Store {
    /// Opens (or creates) the database under `dir`. A foreign, corrupt or
    /// newer-format directory is refused with one clear line.
    pub fn open(dir: &Path, opts: StoreOptions) -> anyhow::Result<Self> {
        let db = open_sled(dir)?;
        let trees = Trees {
            meta: db.open_tree("meta")?,
            models: db.open_tree("models")?,
            versions: db.open_tree("versions")?,
            counters: db.open_tree("counters")?,
            events: db.open_tree("events")?,
            audit: db.open_tree("audit")?,
            phaseouts: db.open_tree("phaseouts")?,
        };
        match trees.meta.get(FORMAT_KEY)? {
            Some(f) if f.as_ref() == FORMAT => {}
            Some(f) => anyhow::bail!(
                "data dir {} holds format {:?}, this registry reads {:?}: refusing to open it",
                dir.display(),
                String::from_utf8_lossy(&f),
                String::from_utf8_lossy(FORMAT)
            ),
            None => {
                let foreign = db
                    .tree_names()
                    .iter()
                    .any(|t| !TREES.contains(&&*String::from_utf8_lossy(t)))
                    || [&trees.models, &trees.versions, &trees.events]
                        .iter()
                        .any(|t| !t.is_empty());
                if foreign {
                    anyhow::bail!(
                        "data dir {} holds a sled database that is not an Evergreen registry",
                        dir.display()
                    );
                }
                trees.meta.insert(FORMAT_KEY, FORMAT)?;
                db.flush()?;
            }
        }
        let revision = u64_of(trees.meta.get(REVISION_KEY)?);
        let mut compacted = u64_of(trees.meta.get(COMPACTED_KEY)?);
        // A smaller retention than last time: drop the excess now.
        if revision.saturating_sub(compacted) > opts.history {
            let new_compacted = revision - opts.history;
            for k in trees.events.range(..=new_compacted.to_be_bytes()).keys() {
                trees.events.remove(k?)?;
            }
            trees
                .meta
                .insert(COMPACTED_KEY, &new_compacted.to_be_bytes())?;
            db.flush()?;
            compacted = new_compacted;
        }
        let hub = Arc::new(Hub::new(revision, compacted, opts.watch_buffer));
        let blobs = db.open_tree("blobs")?;

        let (tx, rx) = std_mpsc::channel::<Job>();
        let writer = Writer {
            trees: trees.clone(),
            history: opts.history.max(1),
        };
        let writer_hub = hub.clone();
        let handle = std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || writer_loop(db, writer, rx, writer_hub))?;
        Ok(Self {
            reader: Reader { trees },
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            hub,
            blobs,
        })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Content-addressed small artifacts (see `artifacts::TieredStore`).
    /// Written outside transactions; made durable by the writer's next flush.
    pub fn blobs(&self) -> sled::Tree {
        self.blobs.clone()
    }

    /// Stops the writer after the jobs already queued, and waits for it.
    pub fn close(&self) {
        self.jobs.lock().unwrap().take();
        if let Some(h) = self.writer.lock().unwrap().take() {
            let _ = h.join();
        }
        self.hub.close();
    }

    fn submit(&self, job: Job) -> Result<()> {
        let guard = self.jobs.lock().unwrap();
        let sender = guard.as_ref().ok_or(RegistryError::ShuttingDown)?;
        sender.send(job).map_err(|_| RegistryError::ShuttingDown)
    }

    /// Runs `f` as one durable transaction on the writer thread. `f` may run
    /// more than once (sled retries on conflict), so it must be pure apart
    /// from its `Tx`.
    pub async fn mutate<T, F>(&self, actor: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Tx<'_>) -> TxResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let actor = actor.to_string();
        let job: Job = Box::new(move |w: &Writer| match w.apply(&actor, &f) {
            Ok((value, events)) => Applied {
                events,
                reply: Box::new(move |flush_error| {
                    let _ = tx.send(match flush_error {
                        None => Ok(value),
                        Some(e) => Err(e.clone()),
                    });
                }),
            },
            Err(e) => Applied {
                events: Vec::new(),
                reply: Box::new(move |_| {
                    let _ = tx.send(Err(e));
                }),
            },
        });
        self.submit(job)?;
        rx.await.map_err(|_| RegistryError::ShuttingDown)?
    }

    /// Runs a read on the writer thread, between two commits, so the result
    /// reflects exactly the returned revision (for list-then-watch).
    pub async fn snapshot<T, F>(&self, f: F) -> Result<(T, u64)>
    where
        T: Send + 'static,
        F: FnOnce(&Reader) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<(T, u64)>>();
        let reader = self.reader.clone();
        let hub = self.hub.clone();
        let job: Job = Box::new(move |_w: &Writer| {
            let revision = hub.published();
            let result = f(&reader).map(|v| (v, revision));
            Applied {
                events: Vec::new(),
                reply: Box::new(move |_| {
                    let _ = tx.send(result);
                }),
            }
        });
        self.submit(job)?;
        rx.await.map_err(|_| RegistryError::ShuttingDown)?
    }
}

/// The read side of the store: lock-free, straight from sled, usable from
/// any task. `Store` derefs to it.
#[derive(Clone)]
pub struct Reader {
    trees: Trees,
}

impl std::ops::Deref for Store {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        &self.reader
    }
}

impl Reader {
    pub fn get_model(&self, name: &str) -> Result<Model> {
        match self.trees.models.get(name.as_bytes())? {
            Some(b) => decode(&b, "model"),
            None => Err(RegistryError::ModelNotFound(name.to_string())),
        }
    }

    pub fn list_models(&self) -> Result<Vec<Model>> {
        self.trees
            .models
            .iter()
            .values()
            .map(|v| decode(&v?, "model"))
            .collect()
    }

    /// (models, versions by status), for `/metrics`: one pass over the
    /// versions tree.
    pub fn counts(&self) -> Result<(usize, std::collections::BTreeMap<&'static str, u64>)> {
        let mut by_status = std::collections::BTreeMap::new();
        for b in self.trees.versions.iter().values() {
            let v: ModelVersion = decode(&b?, "version")?;
            *by_status.entry(status_name(v.status())).or_insert(0) += 1;
        }
        Ok((self.trees.models.len(), by_status))
    }

    /// Resolves `spec` to (model record, version number).
    pub fn resolve(&self, spec: &VersionSpec) -> Result<(Model, u64)> {
        let model = self.get_model(&spec.model)?;
        let version = match &spec.selector {
            Selector::Version(v) => *v,
            Selector::Alias(a) => {
                *model
                    .aliases
                    .get(a)
                    .ok_or_else(|| RegistryError::AliasNotFound {
                        model: spec.model.clone(),
                        alias: a.clone(),
                    })?
            }
        };
        Ok((model, version))
    }

    pub fn get_version(&self, spec: &VersionSpec) -> Result<ModelVersion> {
        let (model, version) = self.resolve(spec)?;
        let bytes = self
            .trees
            .versions
            .get(child_key(&model.name, version))?
            .ok_or(RegistryError::VersionNotFound {
                model: model.name.clone(),
                version,
            })?;
        let mut v: ModelVersion = decode(&bytes, "version")?;
        v.aliases = aliases_of(&model, version);
        Ok(v)
    }

    pub fn list_versions(&self, name: &str) -> Result<Vec<ModelVersion>> {
        let model = self.get_model(name)?;
        self.trees
            .versions
            .scan_prefix(child_prefix(name))
            .values()
            .map(|b| {
                let mut v: ModelVersion = decode(&b?, "version")?;
                v.aliases = aliases_of(&model, v.version);
                Ok(v)
            })
            .collect()
    }

    /// The model's audit trail, oldest first; `limit` > 0 keeps the newest N.
    pub fn history(&self, name: &str, limit: usize) -> Result<Vec<Event>> {
        let mut entries: Vec<Event> = self
            .trees
            .audit
            .scan_prefix(child_prefix(name))
            .values()
            .map(|b| decode(&b?, "audit"))
            .collect::<Result<_>>()?;
        if entries.is_empty() && !self.trees.models.contains_key(name.as_bytes())? {
            return Err(RegistryError::ModelNotFound(name.to_string()));
        }
        if limit > 0 && entries.len() > limit {
            entries.drain(..entries.len() - limit);
        }
        Ok(entries)
    }

    /// Phase-out records, model name -> `Phaseout` (see `phaseout.rs`).
    pub fn phaseouts(&self) -> &sled::Tree {
        &self.trees.phaseouts
    }

    /// Retained events with revision in (after, upto], in order.
    pub fn events_between(&self, after: u64, upto: u64) -> impl Iterator<Item = Result<Event>> {
        let lo = after.saturating_add(1).to_be_bytes();
        let hi = upto.to_be_bytes();
        let range = if after >= upto {
            None
        } else {
            Some(self.trees.events.range(lo..=hi))
        };
        range.into_iter().flatten().map(|r| {
            let (_, v) = r?;
            decode(&v, "event")
        })
    }
}

/// Aliases of `model` that point at `version`, sorted.
pub fn aliases_of(model: &Model, version: u64) -> Vec<String> {
    let mut a: Vec<String> = model
        .aliases
        .iter()
        .filter(|(_, v)| **v == version)
        .map(|(k, _)| k.clone())
        .collect();
    a.sort();
    a
}

impl Writer {
    fn apply<T>(
        &self,
        actor: &str,
        f: &dyn Fn(&mut Tx<'_>) -> TxResult<T>,
    ) -> Result<(T, Vec<Event>)> {
        let t = &self.trees;
        let result = (
            &t.meta,
            &t.models,
            &t.versions,
            &t.counters,
            &t.events,
            &t.audit,
            &t.phaseouts,
        )
            .transaction(
                |(meta, models, versions, counters, events, audit, phaseouts)| {
                    let mut tx = Tx {
                        meta,
                        models,
                        versions,
                        counters,
                        events,
                        audit,
                        phaseouts,
                        history: self.history,
                        actor,
                        emitted: Vec::new(),
                    };
                    let value = f(&mut tx)?;
                    Ok((value, tx.emitted))
                },
            );
        match result {
            Ok(v) => Ok(v),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }
}

fn writer_loop(db: sled::Db, writer: Writer, jobs: std_mpsc::Receiver<Job>, hub: Arc<Hub>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut events = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            let applied = job(&writer);
            events.extend(applied.events);
            replies.push(applied.reply);
        }
        let flush_error = if events.is_empty() {
            None
        } else {
            db.flush().err().map(|e| {
                tracing::error!(error = %e, "flushing the registry database failed");
                RegistryError::from(e)
            })
        };
        if flush_error.is_none() && !events.is_empty() {
            hub.publish(events, writer.history);
        }
        for reply in replies {
            reply(flush_error.as_ref());
        }
    }
    if let Err(e) = db.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
}

/// Opens sled under `dir/sled`, turning a foreign, locked or corrupt
/// directory into one clear error (sled can panic on some corruptions).
fn open_sled(dir: &Path) -> anyhow::Result<sled::Db> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("data dir {} is not a directory", dir.display());
    }
    let sled_dir = dir.join("sled");
    if dir.is_dir() && !sled_dir.exists() {
        let foreign: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "artifacts")
            .collect();
        if !foreign.is_empty() {
            anyhow::bail!(
                "data dir {} is not an Evergreen registry (it holds {}; expected sled/ and artifacts/ or an empty directory)",
                dir.display(),
                foreign.join(", ")
            );
        }
    }
    std::fs::create_dir_all(&sled_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", dir.display()))?;
    let path = sled_dir.clone();
    let opened = std::panic::catch_unwind(move || sled::Config::new().path(path).open());
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => anyhow::bail!("cannot open data dir {}: {e}", dir.display()),
        Err(_) => anyhow::bail!(
            "cannot open data dir {}: the database is corrupt",
            dir.display()
        ),
    }
}

pub fn version_status(v: &ModelVersion) -> VersionStatus {
    VersionStatus::try_from(v.status).unwrap_or(VersionStatus::Unspecified)
}
