//! The monitor's state and its operations: ingest the prediction log, join
//! delayed labels, close tumbling windows, report. Signals and actions are
//! in `actions`; persistence in `store`.
//!
//! Per (model, version) the monitor keeps the open window, the merge of
//! every closed one (the long window), the last closed window in full and
//! the summaries of the last `history` closed ones. Labels are attributed
//! to the window in which the prediction was made (as NannyML chunks by
//! prediction time): the open window, or a closed one's summary.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use evergreen_model::metrics::higher_is_better;
use evergreen_model::profile::PredictionProfile;
use evergreen_model::schema::Value;
use evergreen_model::Model;
use evergreen_proto::v1 as pb;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::trainer_client::TrainerClient;
use evergreen_runtime::client::Channel;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Mutex as AsyncMutex};

use crate::config::MonitorConfig;
use crate::drift::{dataset_drift, FeatureDrift};
use crate::perf::{binary_expected_accuracy, HealthCounts, Realized};
use crate::policy::Policy;
use crate::store::Store;
use crate::window::{Answer, Truth, Window};

#[derive(Debug, Clone, thiserror::Error)]
pub enum MonitorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Key = (String, u64);

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A raw feature value kept for retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cell {
    Missing,
    Number(f64),
    Category(String),
}

impl Cell {
    fn from_pb(v: &pb::Value) -> Cell {
        match &v.kind {
            Some(pb::value::Kind::Number(x)) => Cell::Number(*x),
            Some(pb::value::Kind::Category(s)) => Cell::Category(s.clone()),
            None => Cell::Missing,
        }
    }

    pub fn to_pb(&self) -> pb::Value {
        pb::Value {
            kind: match self {
                Cell::Missing => None,
                Cell::Number(x) => Some(pb::value::Kind::Number(*x)),
                Cell::Category(s) => Some(pb::value::Kind::Category(s.clone())),
            },
        }
    }
}

/// A logged row joined with its label, for RETRAIN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabeledRow {
    pub features: Vec<Cell>,
    pub label: String,
    pub value: f64,
}

/// A closed window, summarized. Realized performance keeps accumulating
/// as late labels for its predictions arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Closed {
    pub seq: u64,
    pub start: f64,
    pub end: f64,
    pub rows: u64,
    pub drifted_share: f64,
    pub dataset_drift: bool,
    pub drifted_features: Vec<String>,
    pub prediction_drift: bool,
    pub estimated: Vec<(String, f64)>,
    pub realized: Realized,
    pub health: HealthCounts,
    /// Rows enough for a verdict (the policy's min_rows at close).
    pub judged: bool,
    /// Drift / estimated-performance breaches found at close.
    pub breaches: Vec<String>,
    /// The realized-performance breach, once enough labels arrived.
    pub realized_breach: Option<String>,
    pub realized_judged: bool,
    /// CBPE: the holdout's estimated accuracy minus this window's (binary
    /// classifiers).
    pub estimated_drop: Option<f64>,
}

impl Closed {
    pub fn breached(&self) -> bool {
        self.judged && (!self.breaches.is_empty() || self.realized_breach.is_some())
    }

    pub fn all_breaches(&self) -> Vec<String> {
        let mut b = self.breaches.clone();
        b.extend(self.realized_breach.clone());
        b
    }
}

/// What is persisted per version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionState {
    pub current: Window,
    /// Every closed window merged.
    pub long: Window,
    pub last: Option<Window>,
    pub history: VecDeque<Closed>,
    /// The first window of the breach run that already raised a signal.
    pub fired_episode: u64,
}

pub struct Tracked {
    pub model: Arc<Model>,
    pub state: VersionState,
}

/// A logged prediction waiting for its label.
#[derive(Serialize, Deserialize)]
struct Pending {
    key: Key,
    seq: u64,
    shadow: bool,
    probabilities: Vec<f64>,
    value: f64,
    features: Vec<Cell>,
}

/// The label join: kept in memory, written at a graceful shutdown and
/// taken back (once) at the next open; a crash loses it.
#[derive(Default, Serialize, Deserialize)]
struct Joins {
    by_id: HashMap<(String, u32), Vec<Pending>>,
    order: VecDeque<((String, u32), f64)>,
    /// Recently evicted ids (bounded), to tell expired from unknown.
    evicted: HashSet<(String, u32)>,
    evicted_order: VecDeque<(String, u32)>,
}

pub(crate) struct State {
    pub versions: HashMap<Key, Tracked>,
    /// Restored from disk, waiting for their model to be loaded.
    pub dormant: HashMap<Key, VersionState>,
    joins: Joins,
    pub labeled: HashMap<String, VecDeque<LabeledRow>>,
    pub policies: HashMap<String, pb::Policy>,
    pub last_action: HashMap<String, f64>,
    pub feedback_unknown: u64,
    pub feedback_expired: u64,
    /// Log records the servers reported dropped (all versions), persisted.
    pub dropped: u64,
    /// `dropped` changed since the last `persist`.
    dirty_dropped: bool,
    dirty: HashSet<Key>,
    dirty_labeled: HashSet<String>,
}

pub struct Monitor {
    pub(crate) registry: RegistryClient<Channel>,
    pub(crate) trainer: Option<TrainerClient<Channel>>,
    pub(crate) config: MonitorConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) store: Store,
    pub(crate) signals: broadcast::Sender<pb::Signal>,
    /// Set when the daemon is shutting down: open streams (the servers' logs,
    /// signal watchers) end so that graceful shutdown can finish.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// Breaches due a signal, to the action task (one at a time).
    pub(crate) actions: tokio::sync::mpsc::UnboundedSender<crate::actions::Candidate>,
    loading: AsyncMutex<()>,
    /// One `persist` at a time: each takes its snapshot and writes it under
    /// this lock, so an older snapshot never lands after a newer one (the
    /// periodic writer, `act` and shutdown all persist).
    persisting: std::sync::Mutex<()>,
    /// Counters for `/metrics` (registered by `run`).
    pub metrics: crate::metrics::MonitorMetrics,
}

/// One feature's line of a report.
pub struct FeatureLine {
    pub feature: String,
    pub verdict: FeatureDrift,
    pub psi: f64,
    pub count: u64,
    pub missing: u64,
}

pub struct DriftLines {
    pub rows: u64,
    pub features: Vec<FeatureLine>,
    /// The model's answers vs its answers on the holdout.
    pub prediction: FeatureLine,
    pub probabilities: Vec<FeatureLine>,
    pub dataset_drift: bool,
    pub drifted_share: f64,
}

pub struct Report {
    pub drift: DriftLines,
    pub labeled: u64,
    pub realized: Vec<(String, f64)>,
    pub estimated: Vec<(String, f64)>,
    pub estimated_reference: Vec<(String, f64)>,
    pub training: Vec<(String, f64)>,
    pub health: HealthCounts,
    pub dropped: u64,
    pub window: Closed,
    pub open: bool,
    pub history: Vec<Closed>,
    pub feedback_unknown: u64,
    pub feedback_expired: u64,
}

/// Which window a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowChoice {
    Current,
    Last,
    Long,
}

/// Outcome of ingesting a batch.
#[derive(Default, Debug)]
pub struct Ingested {
    pub accepted: u64,
    /// Records of versions whose profile could not be loaded.
    pub skipped: u64,
    /// Records that do not fit their version (feature count, non-finite
    /// numbers, probabilities of the wrong width): not counted anywhere, so
    /// a malformed log cannot fake drift and set off actions.
    pub malformed: u64,
}

/// Whether a successful prediction's record fits its model: as many
/// features as the schema (finite numbers or categories or missing), and
/// an answer of the model's shape.
fn fits(model: &Model, features: Option<&pb::Row>, p: &pb::Prediction) -> bool {
    let Some(f) = features else { return false };
    let finite =
        |v: &pb::Value| !matches!(v.kind, Some(pb::value::Kind::Number(x)) if !x.is_finite());
    let answer = match model.schema.labels() {
        Some(labels) => {
            p.probabilities.len() == labels.len()
                && p.probabilities
                    .iter()
                    .all(|q| (-1e-9..=1.0 + 1e-9).contains(q))
        }
        None => p.value.is_finite(),
    };
    answer
        && f.named.is_empty()
        && f.values.len() == model.schema.features.len()
        && f.values.iter().all(finite)
}

#[derive(Default, Debug, PartialEq)]
pub struct FeedbackOutcome {
    pub matched: u64,
    pub unknown: u64,
    pub expired: u64,
    pub invalid: u64,
}

fn to_value(v: &pb::Value) -> Value<'_> {
    match &v.kind {
        Some(pb::value::Kind::Number(x)) => Value::Number(*x),
        Some(pb::value::Kind::Category(s)) => Value::Text(s),
        None => Value::Missing,
    }
}

/// The metric a policy judges a model by: accuracy, or r2 for regression.
pub fn primary_metric(model: &Model) -> &'static str {
    if model.schema.labels().is_some() {
        "accuracy"
    } else {
        "r2"
    }
}

pub fn metric(list: &[(String, f64)], name: &str) -> Option<f64> {
    list.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
}

fn owned(v: Vec<(&'static str, f64)>) -> Vec<(String, f64)> {
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// CBPE accuracy on the holdout, from its probability histogram (binary
/// classifiers only): the baseline an estimated accuracy is compared with.
pub fn reference_estimate(model: &Model) -> Option<f64> {
    match &model.profile.predictions {
        PredictionProfile::Classification {
            probability_counts, ..
        } if probability_counts.len() == 2 => binary_expected_accuracy(&probability_counts[1]),
        _ => None,
    }
}

/// The same estimate for a window.
fn window_estimate(w: &Window) -> Option<f64> {
    match &w.predictions {
        crate::window::PredictionWindow::Classes { probabilities, .. }
            if probabilities.len() == 2 =>
        {
            binary_expected_accuracy(&probabilities[1])
        }
        _ => None,
    }
}

impl Monitor {
    pub fn open(
        config: MonitorConfig,
        registry: Channel,
        trainer: Option<Channel>,
        actions: tokio::sync::mpsc::UnboundedSender<crate::actions::Candidate>,
    ) -> anyhow::Result<Self> {
        let store = Store::open(&config.data_dir)?;
        let dormant: HashMap<Key, VersionState> = store.versions().into_iter().collect();
        let labeled = store.labeled().into_iter().collect();
        let policies = store
            .policies()
            .into_iter()
            .map(|p| (p.model.clone(), p))
            .collect();
        let last_action = store.actions().into_iter().collect();
        let dropped = store.dropped();
        if !dormant.is_empty() {
            tracing::info!(versions = dormant.len(), "restored window state");
        }
        let (signals, _) = broadcast::channel(256);
        Ok(Monitor {
            registry: RegistryClient::new(registry),
            trainer: trainer.map(TrainerClient::new),
            state: Mutex::new(State {
                versions: HashMap::new(),
                dormant,
                joins: store.take_joins().unwrap_or_default(),
                labeled,
                policies,
                last_action,
                feedback_unknown: 0,
                feedback_expired: 0,
                dropped,
                dirty_dropped: false,
                dirty: HashSet::new(),
                dirty_labeled: HashSet::new(),
            }),
            store,
            config,
            signals,
            stopping: tokio::sync::watch::channel(false).0,
            actions,
            metrics: Default::default(),

            loading: AsyncMutex::new(()),
            persisting: std::sync::Mutex::new(()),
        })
    }

    pub(crate) fn policy(&self, state: &State, model: &str) -> Policy {
        let p = state.policies.get(model).cloned().unwrap_or_default();
        Policy::resolve(&p, self.config.drift_share)
    }

    pub(crate) async fn load_model(
        &self,
        model: &str,
        version: u64,
    ) -> Result<Model, MonitorError> {
        let req = pb::DownloadArtifactRequest {
            r#ref: Some(pb::VersionRef {
                model: model.to_string(),
                selector: Some(pb::version_ref::Selector::Version(version)),
            }),
        };
        let mut client = self.registry.clone();
        let unavailable = |e: tonic::Status| match e.code() {
            tonic::Code::NotFound => MonitorError::NotFound(e.message().to_string()),
            _ => MonitorError::Unavailable(format!("registry: {}", e.message())),
        };
        let mut stream = client
            .download_artifact(req)
            .await
            .map_err(unavailable)?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(c) = stream.message().await.map_err(unavailable)? {
            bytes.extend_from_slice(&c.data);
        }
        Model::from_bytes(&bytes)
            .map_err(|e| MonitorError::Unavailable(format!("{model}/{version}: {e}")))
    }

    /// Makes sure the version is tracked (its model loaded, its restored
    /// state adopted). `create`: start tracking a version never seen.
    pub(crate) async fn ensure(&self, key: &Key, create: bool) -> Result<(), MonitorError> {
        {
            let s = self.state.lock().unwrap();
            if s.versions.contains_key(key) {
                return Ok(());
            }
            if !create && !s.dormant.contains_key(key) {
                return Err(MonitorError::NotFound(format!(
                    "no predictions of {}/{} have been logged yet",
                    key.0, key.1
                )));
            }
        }
        let _one_at_a_time = self.loading.lock().await;
        if self.state.lock().unwrap().versions.contains_key(key) {
            return Ok(());
        }
        let model = Arc::new(self.load_model(&key.0, key.1).await?);
        let mut s = self.state.lock().unwrap();
        let state = match s.dormant.remove(key) {
            Some(st) if st.current.fits(&model.profile) && st.long.fits(&model.profile) => st,
            Some(_) => {
                tracing::warn!(model = %key.0, version = key.1, "persisted windows do not fit the artifact; starting afresh");
                fresh(&model)
            }
            None => fresh(&model),
        };
        s.versions.insert(key.clone(), Tracked { model, state });
        Ok(())
    }

    /// Adds a batch of prediction-log records to their versions' windows.
    /// Shadow records count for the shadow version like any other.
    pub async fn ingest(&self, records: &[pb::PredictionLog], dropped: u64) -> Ingested {
        let mut out = Ingested::default();
        let mut keys: Vec<Key> = Vec::new();
        for r in records {
            let key = (r.model.clone(), r.version);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        for key in &keys {
            if let Err(e) = self.ensure(key, true).await {
                tracing::warn!(model = %key.0, version = key.1, error = %e, "cannot load the reference profile; records skipped");
            }
        }
        let t = now();
        let mut closed: Vec<Key> = Vec::new();
        {
            let mut guard = self.state.lock().unwrap();
            let s = &mut *guard;
            if dropped > 0 {
                s.dropped += dropped;
                s.dirty_dropped = true;
            }
            let mut row: Vec<Value> = Vec::new();
            for r in records {
                let key = (r.model.clone(), r.version);
                let Some(tr) = s.versions.get_mut(&key) else {
                    out.skipped += 1;
                    continue;
                };
                if let (true, Some(p)) = (r.error.is_empty(), &r.prediction) {
                    if !fits(&tr.model, r.features.as_ref(), p) {
                        out.malformed += 1;
                        continue;
                    }
                }
                let cur = &mut tr.state.current;
                if cur.rows == 0 && cur.health.requests == 0 {
                    cur.start = t;
                }
                out.accepted += 1;
                if !r.error.is_empty() || r.prediction.is_none() {
                    cur.health.add(r.latency_us, true);
                    continue;
                }
                cur.health.add(r.latency_us, false);
                row.clear();
                if let Some(f) = &r.features {
                    row.extend(f.values.iter().map(to_value));
                }
                let profile = &tr.model.profile;
                cur.push(profile, &row);
                let p = r.prediction.as_ref().expect("checked above");
                let classifier = tr.model.schema.labels().is_some();
                let answer = if classifier {
                    Answer::Probabilities(&p.probabilities)
                } else {
                    Answer::Value(p.value)
                };
                cur.push_answer(profile, answer);
                let seq = cur.seq;
                let full = cur.rows >= self.config.window_rows;
                s.dirty.insert(key.clone());
                if !r.request_id.is_empty() {
                    let pending = Pending {
                        key,
                        seq,
                        shadow: r.shadow,
                        probabilities: if classifier {
                            p.probabilities.clone()
                        } else {
                            vec![]
                        },
                        value: p.value,
                        features: r
                            .features
                            .as_ref()
                            .map(|f| f.values.iter().map(Cell::from_pb).collect())
                            .unwrap_or_default(),
                    };
                    s.joins.insert(
                        (r.request_id.clone(), r.row),
                        pending,
                        t,
                        self.config.feedback_capacity,
                    );
                }
                // Close at exactly window_rows, even in the middle of a batch.
                if full {
                    let key = (r.model.clone(), r.version);
                    self.close_locked(s, &key, t);
                    if !closed.contains(&key) {
                        closed.push(key);
                    }
                }
            }
        }
        for key in closed {
            self.evaluate(&key);
        }
        out
    }

    /// Joins delayed labels with logged predictions.
    pub async fn feedback(&self, items: &[pb::Feedback]) -> FeedbackOutcome {
        // Versions restored from disk are tracked lazily: first load those
        // the labels' predictions were made by (a label join taken back
        // after a restart points at them).
        let keys: Vec<Key> = {
            let s = self.state.lock().unwrap();
            let mut keys: Vec<Key> = Vec::new();
            for f in items {
                let pendings = s.joins.by_id.get(&(f.request_id.clone(), f.row));
                for p in pendings.into_iter().flatten() {
                    if !s.versions.contains_key(&p.key) && !keys.contains(&p.key) {
                        keys.push(p.key.clone());
                    }
                }
            }
            keys
        };
        for key in &keys {
            if let Err(e) = self.ensure(key, false).await {
                tracing::warn!(model = %key.0, version = key.1, error = %e, "cannot load the version labels are for; they stay pending");
            }
        }
        self.join_labels(items)
    }

    fn join_labels(&self, items: &[pb::Feedback]) -> FeedbackOutcome {
        let t = now();
        let ttl = self.config.feedback_ttl_seconds as f64;
        let mut out = FeedbackOutcome::default();
        let mut touched: Vec<Key> = Vec::new();
        let mut guard = self.state.lock().unwrap();
        let s = &mut *guard;
        s.joins.expire(t - ttl);
        for f in items {
            let id = (f.request_id.clone(), f.row);
            let untracked = s
                .joins
                .by_id
                .get(&id)
                .is_some_and(|ps| ps.iter().any(|p| !s.versions.contains_key(&p.key)));
            if untracked {
                // Its version could not be loaded: the prediction stays
                // pending, so the label can be sent again.
                out.unknown += 1;
                continue;
            }
            let Some(pendings) = s.joins.take(&id) else {
                if s.joins.evicted.contains(&id) {
                    out.expired += 1;
                } else {
                    out.unknown += 1;
                }
                continue;
            };
            let mut matched = false;
            let mut invalid = false;
            for p in &pendings {
                let Some(tr) = s.versions.get_mut(&p.key) else {
                    continue;
                };
                let (answer, truth) = match tr.model.schema.labels() {
                    Some(labels) => match labels.iter().position(|l| *l == f.label) {
                        Some(c) => (Answer::Probabilities(&p.probabilities), Truth::Class(c)),
                        None => {
                            invalid = true;
                            continue;
                        }
                    },
                    None if f.value.is_finite() => (Answer::Value(p.value), Truth::Value(f.value)),
                    None => {
                        invalid = true;
                        continue;
                    }
                };
                matched = true;
                let st = &mut tr.state;
                if st.current.seq == p.seq {
                    st.current.add_label(answer, truth);
                } else {
                    st.long.add_label(answer, truth);
                    if let Some(c) = st.history.iter_mut().find(|c| c.seq == p.seq) {
                        match (&mut c.realized, answer, truth) {
                            (Realized::Class(r), Answer::Probabilities(pr), Truth::Class(t)) => {
                                r.add_labeled(pr, t)
                            }
                            (Realized::Reg(r), Answer::Value(v), Truth::Value(t)) => r.add(v, t),
                            _ => {}
                        }
                    }
                    if let Some(last) = st.last.as_mut().filter(|l| l.seq == p.seq) {
                        last.add_label(answer, truth);
                    }
                }
                s.dirty.insert(p.key.clone());
                if !touched.contains(&p.key) {
                    touched.push(p.key.clone());
                }
                if !p.shadow {
                    let rows = s.labeled.entry(p.key.0.clone()).or_default();
                    rows.push_back(LabeledRow {
                        features: p.features.clone(),
                        label: f.label.clone(),
                        value: f.value,
                    });
                    while rows.len() > self.config.retrain_rows {
                        rows.pop_front();
                    }
                    s.dirty_labeled.insert(p.key.0.clone());
                }
            }
            if matched {
                out.matched += 1;
            } else if invalid {
                out.invalid += 1;
            }
        }
        s.feedback_unknown += out.unknown;
        s.feedback_expired += out.expired;
        // Closed windows whose realized verdict just became possible.
        let mut candidates = Vec::new();
        for key in touched {
            let policy = self.policy(s, &key.0);
            let Some(tr) = s.versions.get_mut(&key) else {
                continue;
            };
            let training = training_metric(&tr.model);
            let name = primary_metric(&tr.model);
            let mut changed = false;
            for c in tr.state.history.iter_mut() {
                if !c.realized_judged && c.judged && c.realized.labeled() >= policy.min_labels {
                    c.realized_judged = true;
                    c.realized_breach =
                        realized_breach(&owned(c.realized.metrics()), training, name, &policy);
                    changed = true;
                }
            }
            if changed {
                candidates.push(key);
            }
        }
        drop(guard);
        for key in candidates {
            self.evaluate(&key);
        }
        out
    }

    /// Closes the version's open window: summarizes it, judges it against
    /// the policy, merges it into the long window, opens the next, and
    /// evaluates whether a signal is due.
    pub fn close(&self, key: &Key, t: f64) {
        let closed = {
            let mut guard = self.state.lock().unwrap();
            self.close_locked(&mut guard, key, t)
        };
        if closed {
            self.evaluate(key);
        }
    }

    /// `close` under the state lock; returns whether a window was closed
    /// (the caller evaluates once the lock is released).
    fn close_locked(&self, s: &mut State, key: &Key, t: f64) -> bool {
        {
            let policy = self.policy(s, &key.0);
            let Some(tr) = s.versions.get_mut(key) else {
                return false;
            };
            let st = &mut tr.state;
            if st.current.rows == 0 && st.current.health.requests == 0 {
                return false;
            }
            let model = tr.model.clone();
            let mut w = std::mem::replace(&mut st.current, Window::new(&model.profile, 0, t));
            st.current.seq = w.seq + 1;
            w.end = t;
            let lines = drift_lines(&model, &w, &policy);
            let estimated = w
                .estimated
                .as_ref()
                .map(|e| owned(e.metrics()))
                .unwrap_or_default();
            let judged = w.rows >= policy.min_rows;
            let mut breaches = Vec::new();
            if judged && policy.drift_breaches {
                if lines.dataset_drift {
                    breaches.push(format!(
                        "dataset drift: {:.0}% of features drifted ({})",
                        lines.drifted_share * 100.0,
                        drifted_names(&lines).join(", ")
                    ));
                }
                if lines.prediction.verdict.drifted {
                    breaches.push(format!(
                        "prediction drift: {}",
                        describe(&lines.prediction.verdict)
                    ));
                }
            }
            let estimated_drop = reference_estimate(&model)
                .zip(window_estimate(&w))
                .map(|(r, c)| r - c);
            if judged {
                if let (Some(r), Some(c)) = (reference_estimate(&model), window_estimate(&w)) {
                    if r - c > policy.max_metric_drop {
                        breaches.push(format!(
                            "estimated accuracy (CBPE) {c:.3} vs {r:.3} on the holdout (drop {:.3} > {})",
                            r - c,
                            policy.max_metric_drop
                        ));
                    }
                }
            }
            let training = training_metric(&model);
            let name = primary_metric(&model);
            let realized_judged = judged && w.realized.labeled() >= policy.min_labels;
            let realized_breach = if realized_judged {
                realized_breach(&owned(w.realized.metrics()), training, name, &policy)
            } else {
                None
            };
            let closed = Closed {
                seq: w.seq,
                start: w.start,
                end: t,
                rows: w.rows,
                drifted_share: lines.drifted_share,
                dataset_drift: lines.dataset_drift,
                drifted_features: drifted_names(&lines),
                prediction_drift: lines.prediction.verdict.drifted,
                estimated,
                realized: w.realized.clone(),
                health: w.health.clone(),
                judged,
                breaches,
                realized_breach,
                realized_judged,
                estimated_drop,
            };
            tracing::info!(
                model = %key.0, version = key.1, window = closed.seq, rows = closed.rows,
                drifted_share = closed.drifted_share, breaches = ?closed.all_breaches(),
                "window closed"
            );
            st.long.merge(&w);
            st.history.push_back(closed);
            while st.history.len() > self.config.history {
                st.history.pop_front();
            }
            st.last = Some(w);
            s.dirty.insert(key.clone());
        }
        true
    }

    /// Closes windows open for longer than `window_seconds`, and evaluates
    /// every version again (a breach held back by a cool-down fires when
    /// the cool-down ends, if it still stands). Called every second.
    pub fn tick(&self, t: f64) {
        let (due, all): (Vec<Key>, Vec<Key>) = {
            let s = self.state.lock().unwrap();
            let due = s
                .versions
                .iter()
                .filter(|(_, tr)| {
                    let c = &tr.state.current;
                    (c.rows > 0 || c.health.requests > 0)
                        && t - c.start >= self.config.window_seconds as f64
                })
                .map(|(k, _)| k.clone())
                .collect();
            (due, s.versions.keys().cloned().collect())
        };
        for key in due {
            self.close(&key, t);
        }
        for key in all {
            self.evaluate(&key);
        }
    }

    /// At a graceful shutdown, after the last ingest: writes the label
    /// join (predictions waiting for labels), so that labels arriving
    /// after the restart still match. [`Monitor::open`] takes it back.
    pub fn persist_joins(&self) -> Result<(), MonitorError> {
        let s = self.state.lock().unwrap();
        self.store.put_joins(&s.joins)?;
        drop(s);
        self.store.flush()
    }

    /// Writes dirty window state and labeled rows to disk.
    pub fn persist(&self) -> Result<(), MonitorError> {
        let _one_at_a_time = self.persisting.lock().unwrap();
        let (versions, labeled, dropped) = {
            let mut s = self.state.lock().unwrap();
            let dropped = std::mem::take(&mut s.dirty_dropped).then_some(s.dropped);
            let dirty: Vec<Key> = s.dirty.drain().collect();
            let dirty_labeled: Vec<String> = s.dirty_labeled.drain().collect();
            let versions: Vec<(Key, VersionState)> = dirty
                .into_iter()
                .filter_map(|k| s.versions.get(&k).map(|t| (k, t.state.clone())))
                .collect();
            let labeled: Vec<(String, Vec<LabeledRow>)> = dirty_labeled
                .into_iter()
                .filter_map(|m| s.labeled.get(&m).map(|r| (m, r.iter().cloned().collect())))
                .collect();
            (versions, labeled, dropped)
        };
        for ((m, v), st) in &versions {
            self.store.put_version(m, *v, st)?;
        }
        for (m, rows) in &labeled {
            self.store.put_labeled(m, rows)?;
        }
        if let Some(d) = dropped {
            self.store.put_dropped(d)?;
        }
        if !versions.is_empty() || !labeled.is_empty() || dropped.is_some() {
            self.store.flush()?;
        }
        Ok(())
    }

    pub async fn report(
        &self,
        model: &str,
        version: u64,
        choice: WindowChoice,
    ) -> Result<Report, MonitorError> {
        if version == 0 {
            return Err(MonitorError::InvalidArgument(
                "version is required: expected a version number (1, 2, ...)".into(),
            ));
        }
        let key = (model.to_string(), version);
        self.ensure(&key, false).await?;
        let s = self.state.lock().unwrap();
        let policy = self.policy(&s, model);
        let tr = s.versions.get(&key).expect("ensured");
        let st = &tr.state;
        let long;
        let (w, open) = match choice {
            WindowChoice::Current => (&st.current, true),
            WindowChoice::Last => match &st.last {
                Some(l) => (l, false),
                None => {
                    return Err(MonitorError::NotFound(format!(
                    "{model}/{version} has no closed window yet (window {} is open with {} rows)",
                    st.current.seq, st.current.rows
                )))
                }
            },
            WindowChoice::Long => {
                let mut l = st.long.clone();
                l.merge(&st.current);
                l.start = st.history.front().map_or(st.current.start, |c| c.start);
                long = l;
                (&long, true)
            }
        };
        let lines = drift_lines(&tr.model, w, &policy);
        let training: Vec<(String, f64)> = tr
            .model
            .training
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut realized = owned(w.realized.metrics());
        let mut labeled = w.realized.labeled();
        // The last window's labels keep arriving: its summary is newest.
        if choice == WindowChoice::Last {
            if let Some(c) = st.history.back() {
                realized = owned(c.realized.metrics());
                labeled = c.realized.labeled();
            }
        }
        let summary = match (choice, st.history.back()) {
            (WindowChoice::Last, Some(c)) => c.clone(),
            _ => Closed {
                seq: if choice == WindowChoice::Long {
                    0
                } else {
                    w.seq
                },
                start: w.start,
                end: if open { 0.0 } else { w.end },
                rows: w.rows,
                drifted_share: lines.drifted_share,
                dataset_drift: lines.dataset_drift,
                drifted_features: drifted_names(&lines),
                prediction_drift: lines.prediction.verdict.drifted,
                estimated: w
                    .estimated
                    .as_ref()
                    .map(|e| owned(e.metrics()))
                    .unwrap_or_default(),
                realized: w.realized.clone(),
                health: w.health.clone(),
                judged: false,
                breaches: vec![],
                realized_breach: None,
                realized_judged: false,
                estimated_drop: reference_estimate(&tr.model)
                    .zip(window_estimate(w))
                    .map(|(r, c)| r - c),
            },
        };
        Ok(Report {
            labeled,
            realized,
            estimated: w
                .estimated
                .as_ref()
                .map(|e| owned(e.metrics()))
                .unwrap_or_default(),
            estimated_reference: reference_estimate(&tr.model)
                .map(|a| vec![("accuracy".to_string(), a)])
                .unwrap_or_default(),
            training,
            health: w.health.clone(),
            dropped: s.dropped,
            window: summary,
            open: choice != WindowChoice::Last,
            history: st.history.iter().cloned().collect(),
            feedback_unknown: s.feedback_unknown,
            feedback_expired: s.feedback_expired,
            drift: lines,
        })
    }
}

impl State {
    pub(crate) fn mark_dirty(&mut self, key: &Key) {
        self.dirty.insert(key.clone());
    }
}

impl Monitor {
    /// Stores a model's policy (validated against its features when a
    /// version of it is tracked) and returns the effective one.
    pub fn set_policy(&self, p: pb::Policy) -> Result<Policy, MonitorError> {
        let features: Option<Vec<String>> = {
            let s = self.state.lock().unwrap();
            s.versions
                .iter()
                .filter(|((m, _), _)| *m == p.model)
                .max_by_key(|((_, v), _)| *v)
                .map(|(_, t)| {
                    t.model
                        .schema
                        .features
                        .iter()
                        .map(|f| f.name.clone())
                        .collect()
                })
        };
        crate::policy::validate(&p, features.as_deref())?;
        self.store.put_policy(&p)?;
        let mut s = self.state.lock().unwrap();
        s.policies.insert(p.model.clone(), p.clone());
        Ok(self.policy(&s, &p.model))
    }

    pub fn get_policy(&self, model: &str) -> Result<Policy, MonitorError> {
        evergreen_proto::names::check_name("model name", model)
            .map_err(MonitorError::InvalidArgument)?;
        let s = self.state.lock().unwrap();
        Ok(self.policy(&s, model))
    }

    /// What `evergreen status` shows: models and versions watched (with
    /// window state), policies set, and the signals raised (failed actions
    /// and the latest one).
    pub fn holdings(&self) -> Vec<(String, String)> {
        let (versions, models, policies) = {
            let s = self.state.lock().unwrap();
            let keys: HashSet<&Key> = s.versions.keys().chain(s.dormant.keys()).collect();
            let models: HashSet<&str> = keys.iter().map(|k| k.0.as_str()).collect();
            (keys.len(), models.len(), s.policies.len())
        };
        let signals = self.store.signals_after(0);
        let failed = signals.iter().filter(|s| !s.error.is_empty()).count();
        let mut out = vec![
            ("models".to_string(), models.to_string()),
            ("versions".to_string(), versions.to_string()),
            ("policies".to_string(), policies.to_string()),
            (
                "signals".to_string(),
                format!("{} ({failed} failed)", signals.len()),
            ),
        ];
        if let Some(last) = signals.last() {
            out.push((
                "latest signal".to_string(),
                format!(
                    "#{} {} {}/{}",
                    last.id,
                    last.kind().short_name(),
                    last.model,
                    last.version
                ),
            ));
        }
        out
    }

    /// Stored signals with id > `after` (of `model` when not empty).
    pub fn signals(&self, model: &str, after: u64) -> Vec<pb::Signal> {
        self.store
            .signals_after(after)
            .into_iter()
            .filter(|s| model.is_empty() || s.model == model)
            .collect()
    }
}

fn fresh(model: &Model) -> VersionState {
    let t = now();
    VersionState {
        current: Window::new(&model.profile, 1, t),
        long: Window::new(&model.profile, 0, t),
        last: None,
        history: VecDeque::new(),
        fired_episode: 0,
    }
}

/// The version's primary metric on its training holdout.
pub fn training_metric(model: &Model) -> Option<f64> {
    model.training.metrics.get(primary_metric(model)).copied()
}

fn realized_breach(
    realized: &[(String, f64)],
    training: Option<f64>,
    name: &str,
    policy: &Policy,
) -> Option<String> {
    let (r, t) = (metric(realized, name)?, training?);
    debug_assert!(higher_is_better(name));
    (t - r > policy.max_metric_drop).then(|| {
        format!(
            "realized {name} {r:.3} vs {t:.3} at training (drop {:.3} > {})",
            t - r,
            policy.max_metric_drop
        )
    })
}

fn describe(v: &FeatureDrift) -> String {
    match v.p_value {
        Some(p) => format!("{} p={p:.4} < {}", v.test.name(), v.threshold),
        None => format!("{} {:.3} >= {}", v.test.name(), v.statistic, v.threshold),
    }
}

fn drifted_names(lines: &DriftLines) -> Vec<String> {
    lines
        .features
        .iter()
        .filter(|l| l.verdict.drifted)
        .map(|l| l.feature.clone())
        .collect()
}

/// Drift of every feature, the predictions and the probabilities of `w`.
pub fn drift_lines(model: &Model, w: &Window, policy: &Policy) -> DriftLines {
    let names: Vec<&str> = model
        .schema
        .features
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    let features: Vec<FeatureLine> = w
        .drift(&model.profile, |i| {
            (
                policy.tests.get(names[i]).copied(),
                policy.thresholds.get(names[i]).copied(),
            )
        })
        .into_iter()
        .zip(&names)
        .map(|((verdict, psi, count, missing), f)| FeatureLine {
            feature: f.to_string(),
            verdict,
            psi,
            count,
            missing,
        })
        .collect();
    let (verdict, psi, count) = w.prediction_drift(&model.profile);
    let prediction = FeatureLine {
        feature: "prediction".into(),
        verdict,
        psi,
        count,
        missing: 0,
    };
    let labels = model.schema.labels().unwrap_or(&[]);
    let probabilities = w
        .probability_drift(&model.profile)
        .into_iter()
        .zip(labels)
        .map(|((verdict, psi, count), l)| FeatureLine {
            feature: format!("p({l})"),
            verdict,
            psi,
            count,
            missing: 0,
        })
        .collect();
    let verdicts: Vec<FeatureDrift> = features.iter().map(|l| l.verdict.clone()).collect();
    let drifted = verdicts.iter().filter(|v| v.drifted).count();
    DriftLines {
        rows: w.rows,
        prediction,
        probabilities,
        dataset_drift: dataset_drift(&verdicts, policy.drift_share),
        drifted_share: if verdicts.is_empty() {
            0.0
        } else {
            drifted as f64 / verdicts.len() as f64
        },
        features,
    }
}

impl Joins {
    fn insert(&mut self, id: (String, u32), p: Pending, t: f64, capacity: usize) {
        let fresh = !self.by_id.contains_key(&id);
        self.by_id.entry(id.clone()).or_default().push(p);
        if fresh {
            self.order.push_back((id, t));
        }
        while self.order.len() > capacity {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((id, _)) = self.order.pop_front() {
            if self.by_id.remove(&id).is_some() {
                self.evicted.insert(id.clone());
                self.evicted_order.push_back(id);
                // Remember as many evicted ids as we keep live ones.
                while self.evicted_order.len() > self.order.len().max(1024) {
                    if let Some(old) = self.evicted_order.pop_front() {
                        self.evicted.remove(&old);
                    }
                }
            }
        }
    }

    fn expire(&mut self, before: f64) {
        while self.order.front().is_some_and(|(_, t)| *t < before) {
            self.evict_oldest();
        }
    }

    fn take(&mut self, id: &(String, u32)) -> Option<Vec<Pending>> {
        // The id stays in `order` until it reaches the front; removing it
        // from the map is enough.
        self.by_id.remove(id)
    }
}
