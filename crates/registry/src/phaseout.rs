//! Gradual phase-out (#6): a schedule, kept in the `phaseouts` tree (model
//! name -> `Phaseout`), that shifts a model's default traffic from one
//! version to another through its traffic policy, step by step.
//!
//! `StartPhaseout` validates and applies the first step at once. The
//! scheduler (`Phaseouts::run`, started by `run()`, stopped by shutdown)
//! ticks every second: a RUNNING phase-out whose next step is due asks the
//! monitor about the new version first (`monitor.rs`) — a breach halts it
//! and sends all traffic back to the old version, no data yet counts as
//! healthy (and says so), no answer means wait and retry. The last step
//! (100 %) completes it in the same transaction: every alias on the old
//! version moves to the new one, the policy's weights are cleared and the
//! old version is DEPRECATED (replacement: the new one), then RETIRED after
//! `retire_after_seconds` if asked. Every change of a phase-out is one
//! writer transaction that updates the record and the model together and
//! records its events, so a restart resumes exactly where it stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evergreen_proto::v1::{
    EventKind, ModelVersion, Phaseout, PhaseoutAction, PhaseoutEntry, PhaseoutState,
    StartPhaseoutRequest, TrafficPolicy, VersionStatus, VersionWeight,
};
use evergreen_proto::Timestamp;
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::{RegistryError, Result};
use crate::monitor::{Health, HealthCheck};
use crate::names::validate_name;
use crate::service::Caller;
use crate::store::{
    abort, aliases_of, now, status_name, version_status, Change, Store, Tx, TxResult,
};

/// Who the scheduler's changes are attributed to in the audit trail.
pub const ACTOR: &str = "evergreen-registry";
/// How often the scheduler looks for due steps.
pub const TICK: Duration = Duration::from_secs(1);
/// Longest `every_seconds` / `retire_after_seconds` accepted (10 years).
pub const MAX_SECONDS: u64 = 10 * 365 * 86_400;

const STEPS_SHAPE: &str = "expected percentages of traffic on to_version, strictly increasing in (0, 100] and ending at 100, e.g. 10,25,50,100";

// ------------------------------------------------------------ validation ---

fn invalid<T>(message: String) -> Result<T> {
    Err(RegistryError::InvalidArgument(message))
}

/// The steps: percentages of traffic on the new version.
pub fn check_steps(steps: &[u32]) -> Result<()> {
    let Some(last) = steps.last() else {
        return invalid(format!("steps is empty: {STEPS_SHAPE}"));
    };
    for (i, s) in steps.iter().enumerate() {
        if *s == 0 || *s > 100 {
            return invalid(format!("steps[{i}] = {s}: {STEPS_SHAPE}"));
        }
        if i > 0 && *s <= steps[i - 1] {
            return invalid(format!(
                "steps[{i}] = {s} after steps[{}] = {}: {STEPS_SHAPE}",
                i - 1,
                steps[i - 1]
            ));
        }
    }
    if *last != 100 {
        return invalid(format!("steps end at {last}: {STEPS_SHAPE}"));
    }
    Ok(())
}

/// Everything about a request that needs no state.
pub fn validate(r: &StartPhaseoutRequest) -> Result<()> {
    validate_name("model name", &r.model)?;
    if r.from_version == 0 {
        return invalid(
            "from_version is required: the version to phase out (1, 2, ...)".to_string(),
        );
    }
    if r.to_version == 0 {
        return invalid(
            "to_version is required: the version that takes over the traffic (1, 2, ...)"
                .to_string(),
        );
    }
    if r.from_version == r.to_version {
        return invalid(format!(
            "from_version and to_version are both {}: a version cannot replace itself",
            r.from_version
        ));
    }
    check_steps(&r.steps)?;
    if r.every_seconds == 0 {
        return invalid("every_seconds = 0: expected at least 1 second between steps".to_string());
    }
    for (field, v) in [
        ("every_seconds", r.every_seconds),
        ("retire_after_seconds", r.retire_after_seconds),
    ] {
        if v > MAX_SECONDS {
            return invalid(format!(
                "{field} = {v}: expected at most {MAX_SECONDS} (10 years)"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- helpers ---

pub fn state(p: &Phaseout) -> PhaseoutState {
    PhaseoutState::try_from(p.state).unwrap_or(PhaseoutState::Unspecified)
}

/// Percent of traffic on the new version now.
pub fn current_weight(p: &Phaseout) -> u32 {
    match state(p) {
        PhaseoutState::Halted | PhaseoutState::Aborted | PhaseoutState::Unspecified => 0,
        _ if p.step == 0 => 0,
        _ => p.steps.get(p.step as usize - 1).copied().unwrap_or(0),
    }
}

fn title(p: &Phaseout) -> String {
    format!("{} {} -> {}", p.model, p.from_version, p.to_version)
}

fn progress(p: &Phaseout) -> String {
    format!(
        "{}, step {}/{}, {}% of traffic on {}",
        state(p).short_name(),
        p.step,
        p.steps.len(),
        current_weight(p),
        p.to_version
    )
}

/// Whether a phase-out keeps another from starting, and what to say.
fn blocks(p: &Phaseout) -> Option<String> {
    let name = &p.model;
    match state(p) {
        PhaseoutState::Running | PhaseoutState::Paused => Some(format!(
            "model {name:?} already has a phase-out in progress: {} ({}); one phase-out per model at a time: abort it first (evergreen phaseout abort {name})",
            title(p),
            progress(p)
        )),
        PhaseoutState::Done if retirement_pending(p) => Some(format!(
            "model {name:?} has a finished phase-out {} that retires {name}/{} at {}; one phase-out per model at a time: wait, or abort it to cancel the retirement (evergreen phaseout abort {name})",
            title(p),
            p.from_version,
            p.retire_at.map(seconds).unwrap_or_default()
        )),
        _ => None,
    }
}

fn retirement_pending(p: &Phaseout) -> bool {
    p.retire_at.is_some() && p.retired_at.is_none()
}

/// A timestamp without its fraction, for messages.
fn seconds(t: Timestamp) -> Timestamp {
    Timestamp {
        seconds: t.seconds,
        nanos: 0,
    }
}

fn after(t: Timestamp, secs: u64) -> Timestamp {
    Timestamp {
        seconds: t.seconds.saturating_add(secs as i64),
        nanos: t.nanos,
    }
}

fn due(at: Option<Timestamp>, now: &Timestamp) -> bool {
    at.is_some_and(|t| (t.seconds, t.nanos) <= (now.seconds, now.nanos))
}

fn servable(s: VersionStatus) -> bool {
    matches!(s, VersionStatus::Active | VersionStatus::Deprecated)
}

fn with_reason(text: String, reason: &str) -> String {
    if reason.is_empty() {
        text
    } else {
        format!("{text} ({reason})")
    }
}

fn policy_value(p: &Option<TrafficPolicy>) -> Value {
    match p {
        None => Value::Null,
        Some(p) => json!({
            "weights": p.weights.iter().map(|w| json!({"version": w.version, "weight": w.weight})).collect::<Vec<_>>(),
            "shadow_version": p.shadow_version,
        }),
    }
}

/// A phase-out's state and the model's policy, for an event's before/after.
fn snapshot(p: &Phaseout, policy: &Option<TrafficPolicy>) -> Value {
    json!({
        "state": state(p).short_name(),
        "from_version": p.from_version,
        "to_version": p.to_version,
        "step": p.step,
        "steps": p.steps,
        "weight": current_weight(p),
        "policy": policy_value(policy),
    })
}

fn load(tx: &Tx<'_>, model: &str) -> TxResult<Option<Phaseout>> {
    match tx.phaseouts().get(model.as_bytes())? {
        Some(b) => Phaseout::decode(b.as_ref()).map(Some).or_else(|e| {
            abort(RegistryError::Storage(format!(
                "corrupt phase-out record: {e}"
            )))
        }),
        None => Ok(None),
    }
}

fn save(tx: &Tx<'_>, p: &Phaseout) -> TxResult<()> {
    let mut stored = p.clone();
    stored.waiting.clear(); // in memory only
    tx.phaseouts()
        .insert(p.model.as_bytes(), stored.encode_to_vec())?;
    Ok(())
}

/// The version, or `None` when it does not exist (other errors pass).
fn find_version(tx: &Tx<'_>, model: &str, v: u64) -> TxResult<Option<ModelVersion>> {
    match tx.version(model, v) {
        Ok(v) => Ok(Some(v)),
        Err(RegistryError::VersionNotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn sends_traffic(policy: &Option<TrafficPolicy>, v: u64) -> bool {
    policy.as_ref().is_some_and(|p| {
        p.shadow_version == v || p.weights.iter().any(|w| w.version == v && w.weight > 0)
    })
}

// ------------------------------------------------------------ transitions ---

/// Applies the next step of the RUNNING phase-out `p`: its weights, or at
/// the last step (100 %) the completion. Records its events.
fn apply_step(
    tx: &mut Tx<'_>,
    p: &mut Phaseout,
    kind: EventKind,
    health: &str,
    reason: &str,
) -> TxResult<()> {
    let name = p.model.clone();
    let (from, to) = (p.from_version, p.to_version);
    let mut m = tx.existing_model(&name)?;
    let to_status = version_status(&tx.version(&name, to)?);
    let from_status = version_status(&tx.version(&name, from)?);
    let i = p.step as usize;
    let Some(&weight) = p.steps.get(i) else {
        return abort(RegistryError::Storage(format!(
            "phase-out {} has no step {}",
            title(p),
            i + 1
        )));
    };
    let last = i + 1 == p.steps.len();
    if !servable(to_status) {
        return abort(RegistryError::FailedPrecondition(format!(
            "cannot send traffic to {name}/{to}: it is {}",
            status_name(to_status)
        )));
    }
    if !last && !servable(from_status) {
        return abort(RegistryError::FailedPrecondition(format!(
            "cannot keep traffic on {name}/{from}: it is {}",
            status_name(from_status)
        )));
    }
    let t = now();
    let before = snapshot(p, &m.policy);
    p.step += 1;
    p.updated_at = Some(t);
    p.history.push(PhaseoutEntry {
        time: Some(t),
        step: p.step,
        weight,
        health: health.to_string(),
    });
    let text = with_reason(
        format!(
            "phase-out {}: step {}/{}, {weight}% of traffic on {to}; {health}",
            title(p),
            p.step,
            p.steps.len()
        ),
        reason,
    );
    if last {
        if kind == EventKind::PhaseoutStarted {
            save(tx, p)?;
            tx.record(Change {
                kind,
                model: &name,
                version: from,
                alias: "",
                reason: &text,
                before: Value::Null,
                after: snapshot(p, &m.policy),
            })?;
        }
        return complete(tx, p, m, &text, before);
    }
    let shadow = m.policy.as_ref().map_or(0, |x| x.shadow_version);
    m.policy = Some(TrafficPolicy {
        weights: vec![
            VersionWeight {
                version: from,
                weight: 100 - weight,
            },
            VersionWeight {
                version: to,
                weight,
            },
        ],
        shadow_version: shadow,
    });
    m.updated_at = Some(t);
    tx.put_model(&m)?;
    p.next_step_at = Some(after(t, p.every_seconds));
    save(tx, p)?;
    tx.record(Change {
        kind,
        model: &name,
        version: from,
        alias: "",
        reason: &text,
        before: if kind == EventKind::PhaseoutStarted {
            Value::Null
        } else {
            before
        },
        after: snapshot(p, &m.policy),
    })?;
    Ok(())
}

/// All traffic on the new version: aliases on the old one move to it (each
/// an ALIAS_SET), the weights are cleared (a shadow stays), the old version
/// is DEPRECATED naming its replacement, and the phase-out is DONE.
fn complete(
    tx: &mut Tx<'_>,
    p: &mut Phaseout,
    mut m: evergreen_proto::v1::Model,
    text: &str,
    before: Value,
) -> TxResult<()> {
    let name = p.model.clone();
    let (from, to) = (p.from_version, p.to_version);
    let t = now();
    let moved = aliases_of(&m, from);
    for a in &moved {
        m.aliases.insert(a.clone(), to);
    }
    let shadow = m.policy.as_ref().map_or(0, |x| x.shadow_version);
    m.policy = (shadow > 0).then_some(TrafficPolicy {
        weights: Vec::new(),
        shadow_version: shadow,
    });
    m.updated_at = Some(t);
    tx.put_model(&m)?;
    let done = format!("phase-out {} complete", title(p));
    for a in &moved {
        tx.record(Change {
            kind: EventKind::AliasSet,
            model: &name,
            version: to,
            alias: a,
            reason: &done,
            before: json!({"version": from}),
            after: json!({"version": to}),
        })?;
    }
    p.state = PhaseoutState::Done as i32;
    p.next_step_at = None;
    p.retire_at = (p.retire_after_seconds > 0).then(|| after(t, p.retire_after_seconds));
    let mut old = tx.version(&name, from)?;
    let status = version_status(&old);
    let deprecated = if servable(status) {
        let notice = format!(
            "phased out in favour of {name}/{to} by the phase-out {from} -> {to} started by {}",
            p.started_by
        );
        old.status = VersionStatus::Deprecated as i32;
        old.status_reason = notice.clone();
        old.sunset_at = p.retire_at;
        old.replacement_version = to;
        tx.put_version(&old)?;
        tx.record(Change {
            kind: EventKind::VersionStatusChanged,
            model: &name,
            version: from,
            alias: "",
            reason: &notice,
            before: json!({"status": status_name(status)}),
            after: json!({"status": status_name(VersionStatus::Deprecated)}),
        })?;
        format!("{name}/{from} DEPRECATED")
    } else {
        format!("{name}/{from} is already {}", status_name(status))
    };
    save(tx, p)?;
    let aliases = if moved.is_empty() {
        format!("no alias pointed at {from}")
    } else {
        format!("moved {} to {to}", moved.join(", "))
    };
    let retire = p
        .retire_at
        .map(|r| format!("; retires {name}/{from} at {}", seconds(r)))
        .unwrap_or_default();
    let mut state_after = snapshot(p, &m.policy);
    state_after["aliases_moved"] = json!(moved);
    tx.record(Change {
        kind: EventKind::PhaseoutDone,
        model: &name,
        version: from,
        alias: "",
        reason: &format!("{text}; {aliases}; {deprecated}{retire}"),
        before,
        after: state_after,
    })?;
    Ok(())
}

/// HALTED or ABORTED: all traffic back on the old version (weights
/// from=100, to=0; a shadow stays), recorded as `kind`.
fn return_traffic(
    tx: &mut Tx<'_>,
    p: &mut Phaseout,
    kind: EventKind,
    to_state: PhaseoutState,
    text: String,
    entry_note: String,
) -> TxResult<()> {
    let name = p.model.clone();
    let (from, to) = (p.from_version, p.to_version);
    let t = now();
    let model = tx.model(&name)?;
    let policy_before = model.as_ref().and_then(|m| m.policy.clone());
    let before = snapshot(p, &policy_before);
    p.state = to_state as i32;
    p.next_step_at = None;
    p.updated_at = Some(t);
    p.history.push(PhaseoutEntry {
        time: Some(t),
        step: 0,
        weight: 0,
        health: entry_note,
    });
    let mut policy_after = policy_before.clone();
    let note = match model {
        None => format!("; model {name:?} no longer exists"),
        Some(mut m) => match find_version(tx, &name, from)? {
            Some(v) if servable(version_status(&v)) => {
                let mut weights = vec![VersionWeight {
                    version: from,
                    weight: 100,
                }];
                if find_version(tx, &name, to)?.is_some() {
                    weights.push(VersionWeight {
                        version: to,
                        weight: 0,
                    });
                }
                m.policy = Some(TrafficPolicy {
                    weights,
                    shadow_version: m.policy.as_ref().map_or(0, |x| x.shadow_version),
                });
                m.updated_at = Some(t);
                tx.put_model(&m)?;
                policy_after = m.policy.clone();
                format!("; all traffic back on {from}")
            }
            other => format!(
                "; {name}/{from} cannot take the traffic back ({}): the traffic policy is left as it was",
                other.map_or("deleted", |v| status_name(version_status(&v)))
            ),
        },
    };
    save(tx, p)?;
    let mut state_after = snapshot(p, &policy_after);
    if !p.evidence.is_empty() {
        state_after["evidence"] = json!(p.evidence);
    }
    tx.record(Change {
        kind,
        model: &name,
        version: from,
        alias: "",
        reason: &format!("{text}{note}"),
        before,
        after: state_after,
    })?;
    Ok(())
}

// ---------------------------------------------------------------- service ---

/// The phase-out operations and the scheduler. `waiting` holds, per model,
/// why its next step (or retirement) is late; it is not stored.
pub struct Phaseouts {
    store: Arc<Store>,
    health: HealthCheck,
    waiting: Mutex<HashMap<String, String>>,
}

impl Phaseouts {
    pub fn new(store: Arc<Store>, health: HealthCheck) -> Self {
        Self {
            store,
            health,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Validates, stores the schedule and applies its first step (no health
    /// check before the first step).
    pub async fn start(&self, caller: Caller, req: StartPhaseoutRequest) -> Result<Phaseout> {
        validate(&req)?;
        let reason = caller.reason.clone();
        let p = self
            .store
            .mutate(&caller.actor, move |tx| {
                let r = &req;
                let name = &r.model;
                let (from, to) = (r.from_version, r.to_version);
                let model = tx.existing_model(name)?;
                if let Some(msg) = load(tx, name)?.as_ref().and_then(blocks) {
                    return abort(RegistryError::FailedPrecondition(msg));
                }
                let from_status = version_status(&tx.version(name, from)?);
                let to_status = version_status(&tx.version(name, to)?);
                if !servable(from_status) {
                    return abort(RegistryError::FailedPrecondition(format!(
                        "cannot phase out {name}/{from}: it is {}; only an ACTIVE or DEPRECATED version has traffic to move",
                        status_name(from_status)
                    )));
                }
                if to_status != VersionStatus::Active {
                    return abort(RegistryError::FailedPrecondition(format!(
                        "cannot move traffic to {name}/{to}: it is {}; the version taking over must be ACTIVE",
                        status_name(to_status)
                    )));
                }
                if let Some(policy) = &model.policy {
                    let others: Vec<u64> = policy
                        .weights
                        .iter()
                        .filter(|w| w.weight > 0 && w.version != from && w.version != to)
                        .map(|w| w.version)
                        .collect();
                    if !others.is_empty() {
                        return abort(RegistryError::FailedPrecondition(format!(
                            "the traffic policy of {name:?} also sends traffic to version(s) {others:?}; a phase-out moves traffic between two versions only: change or clear the policy first (evergreen policy clear {name})"
                        )));
                    }
                }
                let t = now();
                let mut p = Phaseout {
                    model: name.clone(),
                    from_version: from,
                    to_version: to,
                    steps: r.steps.clone(),
                    every_seconds: r.every_seconds,
                    step: 0,
                    state: PhaseoutState::Running as i32,
                    started_at: Some(t),
                    started_by: tx.actor().to_string(),
                    next_step_at: None,
                    retire_after_seconds: r.retire_after_seconds,
                    retire_at: None,
                    retired_at: None,
                    history: Vec::new(),
                    reason: String::new(),
                    evidence: Vec::new(),
                    updated_at: Some(t),
                    waiting: String::new(),
                };
                apply_step(
                    tx,
                    &mut p,
                    EventKind::PhaseoutStarted,
                    "first step: no health check",
                    &reason,
                )?;
                Ok(p)
            })
            .await?;
        self.waiting.lock().unwrap().remove(&p.model);
        Ok(p)
    }

    /// The model's current or last phase-out.
    pub fn get(&self, model: &str) -> Result<Phaseout> {
        validate_name("model name", model)?;
        match self.store.phaseouts().get(model.as_bytes())? {
            Some(b) => {
                let mut p = Phaseout::decode(b.as_ref()).map_err(|e| {
                    RegistryError::Storage(format!("corrupt phase-out record: {e}"))
                })?;
                // Only what is still pending can wait (a tick may have
                // noted something just before a pause or abort).
                let pending = state(&p) == PhaseoutState::Running || retirement_pending(&p);
                if pending {
                    p.waiting = self
                        .waiting
                        .lock()
                        .unwrap()
                        .get(model)
                        .cloned()
                        .unwrap_or_default();
                }
                Ok(p)
            }
            None => {
                self.store.get_model(model)?;
                Err(RegistryError::NoPhaseout(model.to_string()))
            }
        }
    }

    /// Every stored phase-out (any state).
    fn list(&self) -> Result<Vec<Phaseout>> {
        self.store
            .phaseouts()
            .iter()
            .values()
            .map(|b| {
                Phaseout::decode(b?.as_ref())
                    .map_err(|e| RegistryError::Storage(format!("corrupt phase-out record: {e}")))
            })
            .collect()
    }

    /// PAUSE (RUNNING), RESUME (PAUSED), ABORT (RUNNING or PAUSED: traffic
    /// back on the old version; DONE with a pending retirement: cancel it).
    pub async fn update(
        &self,
        caller: Caller,
        model: String,
        action: PhaseoutAction,
    ) -> Result<Phaseout> {
        validate_name("model name", &model)?;
        if action == PhaseoutAction::Unspecified {
            return invalid("action is required: expected PAUSE, RESUME or ABORT".to_string());
        }
        let reason = caller.reason.clone();
        let p = self
            .store
            .mutate(&caller.actor, move |tx| {
                let Some(mut p) = load(tx, &model)? else {
                    tx.existing_model(&model)?;
                    return abort(RegistryError::NoPhaseout(model.clone()));
                };
                let st = state(&p);
                let t = now();
                let policy = tx.model(&model)?.and_then(|m| m.policy);
                let before = snapshot(&p, &policy);
                let (kind, text) = match (action, st) {
                    (PhaseoutAction::Pause, PhaseoutState::Running) => {
                        p.state = PhaseoutState::Paused as i32;
                        p.next_step_at = None;
                        (
                            EventKind::PhaseoutPaused,
                            format!(
                                "phase-out {} paused at step {}/{} ({}% of traffic on {})",
                                title(&p),
                                p.step,
                                p.steps.len(),
                                current_weight(&p),
                                p.to_version
                            ),
                        )
                    }
                    (PhaseoutAction::Resume, PhaseoutState::Paused) => {
                        p.state = PhaseoutState::Running as i32;
                        let next = after(t, p.every_seconds);
                        p.next_step_at = Some(next);
                        (
                            EventKind::PhaseoutResumed,
                            format!(
                                "phase-out {} resumed at step {}/{}; next step at {}",
                                title(&p),
                                p.step,
                                p.steps.len(),
                                seconds(next)
                            ),
                        )
                    }
                    (
                        PhaseoutAction::Abort,
                        PhaseoutState::Running | PhaseoutState::Paused,
                    ) => {
                        p.reason = if reason.is_empty() {
                            format!("aborted by {}", tx.actor())
                        } else {
                            format!("aborted by {}: {reason}", tx.actor())
                        };
                        let text = format!(
                            "phase-out {} aborted at step {}/{}",
                            title(&p),
                            p.step,
                            p.steps.len()
                        );
                        let note = p.reason.clone();
                        return_traffic(
                            tx,
                            &mut p,
                            EventKind::PhaseoutAborted,
                            PhaseoutState::Aborted,
                            with_reason(text, &reason),
                            note,
                        )?;
                        return Ok(p);
                    }
                    (PhaseoutAction::Abort, PhaseoutState::Done) if retirement_pending(&p) => {
                        p.retire_at = None;
                        (
                            EventKind::PhaseoutAborted,
                            format!(
                                "phase-out {}: the retirement of {}/{} is cancelled",
                                title(&p),
                                p.model,
                                p.from_version
                            ),
                        )
                    }
                    (action, st) => {
                        let applies = match action {
                            PhaseoutAction::Pause => "pause applies to a RUNNING one",
                            PhaseoutAction::Resume => "resume applies to a PAUSED one",
                            _ => "abort applies to a RUNNING or PAUSED one, or to a DONE one with a retirement pending",
                        };
                        return abort(RegistryError::FailedPrecondition(format!(
                            "cannot {} the phase-out {}: it is {} ({applies})",
                            action.short_name().to_lowercase(),
                            title(&p),
                            st.short_name()
                        )));
                    }
                };
                p.updated_at = Some(t);
                save(tx, &p)?;
                tx.record(Change {
                    kind,
                    model: &model,
                    version: p.from_version,
                    alias: "",
                    reason: &with_reason(text, &reason),
                    before,
                    after: snapshot(&p, &policy),
                })?;
                Ok(p)
            })
            .await?;
        self.waiting.lock().unwrap().remove(&p.model);
        Ok(p)
    }

    // ------------------------------------------------------------ scheduler ---

    /// Ticks every second until `stop` turns true (or its sender is gone);
    /// a tick in progress is abandoned at once (what it committed stays).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = self.tick() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass: due steps, then due retirements.
    pub async fn tick(&self) {
        let records = match self.list() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the phase-out schedules");
                return;
            }
        };
        let t = now();
        for p in records {
            match state(&p) {
                PhaseoutState::Running if due(p.next_step_at, &t) => self.step(p).await,
                PhaseoutState::Done if retirement_pending(&p) && due(p.retire_at, &t) => {
                    self.retire(p).await
                }
                _ => {}
            }
        }
    }

    fn wait(&self, model: &str, note: String) {
        let mut w = self.waiting.lock().unwrap();
        if w.get(model) != Some(&note) {
            tracing::warn!(model, "{note}");
            w.insert(model.to_string(), note);
        }
    }

    fn clear_wait(&self, model: &str) {
        self.waiting.lock().unwrap().remove(model);
    }

    /// The next step of a RUNNING phase-out, after asking the monitor.
    async fn step(&self, p: Phaseout) {
        let name = p.model.clone();
        let next = p.step + 1;
        let n = p.steps.len();
        let note = match self.health.check(&name, p.to_version).await {
            Health::Unreachable(why) => {
                return self.wait(
                    &name,
                    format!(
                        "step {next}/{n} waits for a health check: {why}; retrying every second"
                    ),
                );
            }
            Health::Regressed { note, breaches } => {
                return self
                    .halt(&p, note.clone(), breaches, format!("halted: {note}"))
                    .await;
            }
            Health::Healthy(note) | Health::NoData(note) => note,
            Health::Unchecked => "not checked (registry.monitor_url is empty)".to_string(),
        };
        let model = name.clone();
        let expected = p.step;
        let health = note.clone();
        let applied = self
            .store
            .mutate(ACTOR, move |tx| {
                let Some(mut cur) = load(tx, &model)? else {
                    return Ok(false);
                };
                if state(&cur) != PhaseoutState::Running || cur.step != expected {
                    return Ok(false); // paused or aborted meanwhile
                }
                apply_step(tx, &mut cur, EventKind::PhaseoutStep, &health, "")?;
                Ok(true)
            })
            .await;
        match applied {
            Ok(_) => self.clear_wait(&name),
            Err(RegistryError::ShuttingDown) => {}
            Err(e @ RegistryError::Storage(_)) => self.wait(
                &name,
                format!("step {next}/{n} failed: {e}; retrying every second"),
            ),
            Err(e) => {
                let why = format!("step {next}/{n} cannot be applied: {e}");
                self.halt(
                    &p,
                    why.clone(),
                    Vec::new(),
                    format!("halted: {why} ({note})"),
                )
                .await
            }
        }
    }

    /// HALTED before the next step of `p` (if it is still where `p` was).
    async fn halt(&self, p: &Phaseout, why: String, evidence: Vec<String>, entry: String) {
        let name = p.model.clone();
        let expected = p.step;
        let text = format!(
            "phase-out {} halted before step {}/{}: {why}",
            title(p),
            p.step + 1,
            p.steps.len()
        );
        let halted = self
            .store
            .mutate(ACTOR, move |tx| {
                let Some(mut cur) = load(tx, &name)? else {
                    return Ok(false);
                };
                if state(&cur) != PhaseoutState::Running || cur.step != expected {
                    return Ok(false);
                }
                cur.reason = why.clone();
                cur.evidence = evidence.clone();
                return_traffic(
                    tx,
                    &mut cur,
                    EventKind::PhaseoutHalted,
                    PhaseoutState::Halted,
                    text.clone(),
                    entry.clone(),
                )?;
                Ok(true)
            })
            .await;
        match halted {
            Ok(true) => {
                tracing::warn!(model = %p.model, "phase-out {} halted", title(p));
                self.clear_wait(&p.model);
            }
            Ok(false) | Err(RegistryError::ShuttingDown) => {}
            Err(e) => self.wait(
                &p.model,
                format!("halting failed: {e}; retrying every second"),
            ),
        }
    }

    /// Retires the old version of a DONE phase-out once its grace period is
    /// over. While that is not possible (an alias or weight points at it
    /// again, it is ACTIVE again), the reason shows in `waiting` and it is
    /// retried every second; ABORT cancels the retirement.
    async fn retire(&self, p: Phaseout) {
        let name = p.model.clone();
        let from = p.from_version;
        let retire_at = p.retire_at;
        let label = title(&p);
        let grace = p.retire_after_seconds;
        let model = name.clone();
        let retired = self
            .store
            .mutate(ACTOR, move |tx| {
                let Some(mut cur) = load(tx, &model)? else {
                    return Ok(());
                };
                if state(&cur) != PhaseoutState::Done
                    || !retirement_pending(&cur)
                    || cur.retire_at != retire_at
                {
                    return Ok(());
                }
                let m = tx.existing_model(&model)?;
                let mut v = tx.version(&model, from)?;
                let status = version_status(&v);
                let t = now();
                match status {
                    VersionStatus::Deprecated => {
                        let pointing = aliases_of(&m, from);
                        if !pointing.is_empty() {
                            return abort(RegistryError::FailedPrecondition(format!(
                                "cannot retire {model}/{from}: alias(es) {pointing:?} point at it again"
                            )));
                        }
                        if sends_traffic(&m.policy, from) {
                            return abort(RegistryError::FailedPrecondition(format!(
                                "cannot retire {model}/{from}: the traffic policy sends it traffic again"
                            )));
                        }
                        let text = format!(
                            "phase-out {label}: retired after the grace period of {grace}s"
                        );
                        v.status = VersionStatus::Retired as i32;
                        v.status_reason = text.clone();
                        v.sunset_at = None;
                        v.replacement_version = 0;
                        tx.put_version(&v)?;
                        cur.retired_at = Some(t);
                        cur.updated_at = Some(t);
                        save(tx, &cur)?;
                        tx.record(Change {
                            kind: EventKind::VersionStatusChanged,
                            model: &model,
                            version: from,
                            alias: "",
                            reason: &text,
                            before: json!({"status": status_name(status)}),
                            after: json!({"status": status_name(VersionStatus::Retired)}),
                        })?;
                    }
                    VersionStatus::Retired | VersionStatus::Archived => {
                        cur.retired_at = Some(t);
                        cur.updated_at = Some(t);
                        save(tx, &cur)?;
                        tx.record(Change {
                            kind: EventKind::PhaseoutDone,
                            model: &model,
                            version: from,
                            alias: "",
                            reason: &format!(
                                "phase-out {label}: {model}/{from} is already {}; nothing left to retire",
                                status_name(status)
                            ),
                            before: Value::Null,
                            after: Value::Null,
                        })?;
                    }
                    other => {
                        return abort(RegistryError::FailedPrecondition(format!(
                            "{model}/{from} is {} again, not DEPRECATED: it is not retired",
                            status_name(other)
                        )));
                    }
                }
                Ok(())
            })
            .await;
        match retired {
            Ok(()) => self.clear_wait(&name),
            Err(RegistryError::ShuttingDown) => {}
            Err(e) => self.wait(
                &name,
                format!("the retirement of {name}/{from} waits: {e}; retrying every second (abort the phase-out to cancel it)"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(steps: &[u32]) -> StartPhaseoutRequest {
        StartPhaseoutRequest {
            model: "m".into(),
            from_version: 1,
            to_version: 2,
            steps: steps.to_vec(),
            every_seconds: 60,
            ..Default::default()
        }
    }

    fn message(r: Result<()>) -> String {
        match r {
            Err(RegistryError::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn steps_increase_strictly_in_0_100_and_end_at_100() {
        check_steps(&[10, 25, 50, 100]).unwrap();
        check_steps(&[100]).unwrap();
        assert!(message(check_steps(&[])).starts_with("steps is empty: expected"));
        assert!(message(check_steps(&[0, 100])).starts_with("steps[0] = 0: expected"));
        assert!(message(check_steps(&[50, 101])).starts_with("steps[1] = 101: expected"));
        assert!(message(check_steps(&[50, 50, 100]))
            .starts_with("steps[1] = 50 after steps[0] = 50: expected"));
        assert!(message(check_steps(&[10, 50])).starts_with("steps end at 50: expected"));
    }

    #[test]
    fn requests_are_checked_before_any_state() {
        validate(&req(&[50, 100])).unwrap();
        let mut r = req(&[100]);
        r.to_version = 1;
        assert_eq!(
            message(validate(&r)),
            "from_version and to_version are both 1: a version cannot replace itself"
        );
        let mut r = req(&[100]);
        r.every_seconds = 0;
        assert!(message(validate(&r)).starts_with("every_seconds = 0"));
        let mut r = req(&[100]);
        r.retire_after_seconds = MAX_SECONDS + 1;
        assert!(message(validate(&r)).starts_with("retire_after_seconds = "));
    }

    #[test]
    fn weights_follow_the_state() {
        let mut p = Phaseout {
            steps: vec![10, 50, 100],
            step: 2,
            state: PhaseoutState::Running as i32,
            ..Default::default()
        };
        assert_eq!(current_weight(&p), 50);
        p.state = PhaseoutState::Halted as i32;
        assert_eq!(current_weight(&p), 0);
        p.state = PhaseoutState::Paused as i32;
        p.step = 0;
        assert_eq!(current_weight(&p), 0);
    }
}
