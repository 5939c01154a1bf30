//! From breached windows to signals and actions.
//!
//! `evaluate` (sync, under the state lock) finds a run of at least
//! `consecutive` breached windows that has not fired yet, outside the
//! model's cool-down, marks it fired and hands a `Candidate` to the action
//! task. `act` (async, one at a time) asks the registry where the policy's
//! alias points and picks the action:
//! - the breached version is the alias target, was promoted over a
//!   predecessor, has not had a healthy window since (a bad promotion, not
//!   a good version meeting changed data), and does measurably worse than
//!   the predecessor did (its realized metric in the monitor, else at
//!   training) → ROLLBACK (compare-and-set of the alias back, audited with
//!   the evidence);
//! - the breached version is the alias target otherwise → RETRAIN (the
//!   trainer's Retrain with the recent labeled rows, gated on the alias);
//! - the breached version is no longer the target, and the target does at
//!   least as well → RETIRE (DEPRECATED, naming the replacement).
//!
//! The breach is marked fired and written to disk before its action is
//! taken; each signal is stored before it is broadcast to WatchSignals.

use evergreen_proto::v1 as pb;
use evergreen_proto::v1::SignalKind;

use crate::perf::Realized;
use crate::policy::Policy;
use crate::service::{metric, now, primary_metric, training_metric, Key, Monitor};

/// A breach run due a signal.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: Key,
    pub policy: Policy,
    pub windows: Vec<u64>,
    pub evidence: Vec<String>,
    /// The version's primary metric over the run: realized when enough
    /// labels arrived, else training minus the CBPE-estimated drop.
    pub value: Option<f64>,
    pub metric: String,
    pub realized: bool,
    /// The run covers every judged window of the version: it has not had a
    /// healthy window since it was first seen (a new promotion gone bad,
    /// rather than a good version meeting changed data).
    pub never_healthy: bool,
}

/// A request the audit trail attributes to the monitor.
fn as_monitor<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        evergreen_proto::metadata::ACTOR,
        tonic::metadata::MetadataValue::from_static("evergreen-monitor"),
    );
    r
}

fn ts(t: f64) -> Option<evergreen_proto::Timestamp> {
    Some(evergreen_proto::Timestamp {
        seconds: t as i64,
        nanos: ((t.fract()) * 1e9) as i32,
    })
}

impl Monitor {
    /// Checks the version's recent windows against its model's policy.
    pub(crate) fn evaluate(&self, key: &Key) {
        let t = now();
        let candidate = {
            let mut guard = self.state.lock().unwrap();
            let s = &mut *guard;
            let policy = self.policy(s, &key.0);
            let in_cooldown = s
                .last_action
                .get(&key.0)
                .is_some_and(|last| t - last < policy.cooldown_seconds as f64);
            let Some(tr) = s.versions.get_mut(key) else {
                return;
            };
            let st = &mut tr.state;
            let run: Vec<_> = st
                .history
                .iter()
                .filter(|c| c.judged)
                .rev()
                .take_while(|c| c.breached())
                .collect();
            if run.len() < policy.consecutive as usize || run.is_empty() {
                return;
            }
            let episode = run.last().expect("non-empty").seq;
            let never_healthy = run.len() == st.history.iter().filter(|c| c.judged).count();
            if st.fired_episode == episode || in_cooldown {
                return;
            }
            let run: Vec<_> = run.into_iter().rev().collect();
            let name = primary_metric(&tr.model).to_string();
            let mut realized: Option<Realized> = None;
            for c in &run {
                match &mut realized {
                    None => realized = Some(c.realized.clone()),
                    Some(r) => r.merge(&c.realized),
                }
            }
            let realized = realized.expect("non-empty run");
            let training = training_metric(&tr.model);
            let (value, is_realized) = if realized.labeled() >= policy.min_labels {
                (metric(&owned(realized.metrics()), &name), true)
            } else {
                let drops: Vec<f64> = run.iter().filter_map(|c| c.estimated_drop).collect();
                let est = (!drops.is_empty())
                    .then(|| training.map(|t| t - drops.iter().sum::<f64>() / drops.len() as f64))
                    .flatten();
                (est, false)
            };
            let mut evidence: Vec<String> = run
                .iter()
                .map(|c| {
                    format!(
                        "window {} ({} rows, {} labeled): {}",
                        c.seq,
                        c.rows,
                        c.realized.labeled(),
                        c.all_breaches().join("; ")
                    )
                })
                .collect();
            if let (Some(v), Some(t)) = (value, training) {
                evidence.push(format!(
                    "{} {name} over the run: {v:.3} (training holdout: {t:.3})",
                    if is_realized { "realized" } else { "estimated" }
                ));
            }
            st.fired_episode = episode;
            let c = Candidate {
                key: key.clone(),
                policy,
                windows: run.iter().map(|c| c.seq).collect(),
                evidence,
                value,
                metric: name,
                realized: is_realized,
                never_healthy,
            };
            s.last_action.insert(key.0.clone(), t);
            s.mark_dirty(key);
            c
        };

        let _ = self.actions.send(candidate);
    }

    /// The version's primary metric as the monitor last saw it (realized
    /// over all its windows with enough labels), else at training.
    async fn standing(
        &self,
        model: &str,
        version: u64,
        policy: &Policy,
        name: &str,
    ) -> Option<f64> {
        {
            let s = self.state.lock().unwrap();
            if let Some(tr) = s.versions.get(&(model.to_string(), version)) {
                let mut r = tr.state.long.realized.clone();
                r.merge(&tr.state.current.realized);
                if r.labeled() >= policy.min_labels {
                    return metric(&owned(r.metrics()), name);
                }
                return training_metric(&tr.model);
            }
        }
        let mut registry = self.registry.clone();
        let v = registry
            .get_version(pb::GetVersionRequest {
                r#ref: Some(pb::VersionRef {
                    model: model.to_string(),
                    selector: Some(pb::version_ref::Selector::Version(version)),
                }),
            })
            .await
            .ok()?
            .into_inner();
        v.metrics.get(name).copied()
    }

    /// The version the alias pointed at before it was moved to `current`.
    async fn predecessor(&self, model: &str, alias: &str, current: u64) -> Option<u64> {
        let mut registry = self.registry.clone();
        let h = registry
            .history(pb::HistoryRequest {
                model: model.to_string(),
                limit: 0,
            })
            .await
            .ok()?
            .into_inner();
        h.entries
            .iter()
            .rev()
            .find(|e| {
                e.kind == pb::EventKind::AliasSet as i32 && e.alias == alias && e.version == current
            })
            .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.before).ok())
            .and_then(|b| b["version"].as_u64())
    }

    /// Decides and takes the action for one candidate; records the signal.
    pub(crate) async fn act(&self, c: Candidate) {
        // The fired run (`fired_episode`) and the windows behind it become
        // durable before anything is done about them: the periodic write
        // (every `persist_ms`) alone would let a crash right after the
        // action forget the run, renumber its windows, and act again on
        // the same breach after the restart. A crash between this write
        // and the action loses the action rather than repeating it.
        if let Err(e) = self.persist() {
            tracing::error!(error = %e, "cannot persist the breach before acting on it");
        }
        let (model, version) = (c.key.0.clone(), c.key.1);
        let p = &c.policy;
        let mut signal = pb::Signal {
            model: model.clone(),
            version,
            time: ts(now()),
            evidence: c.evidence.clone(),
            windows: c.windows.clone(),
            ..Default::default()
        };
        let mut registry = self.registry.clone();
        let target = match registry
            .get_model(pb::GetModelRequest {
                name: model.clone(),
            })
            .await
        {
            Ok(m) => m.into_inner().aliases.get(&p.alias).copied(),
            Err(e) => {
                tracing::warn!(model = %model, error = %e.message(), "cannot read the model's aliases; no action");
                signal.kind = SignalKind::Retrain as i32;
                signal.reason = format!(
                    "{model}/{version} breached its policy in windows {:?}",
                    c.windows
                );
                signal.error = format!("registry unreachable: {}", e.message());
                self.record(signal).await;
                return;
            }
        };
        if target == Some(version) {
            let previous = self.predecessor(&model, &p.alias, version).await;

            let mut rolled = false;
            if let (true, true, Some(prev), Some(v)) =
                (p.rollback, c.never_healthy, previous, c.value)
            {
                if let Some(pv) = self.standing(&model, prev, p, &c.metric).await {
                    if pv - v > p.rollback_margin {
                        rolled = true;
                        signal.kind = SignalKind::Rollback as i32;
                        signal.target_version = prev;
                        signal.reason = format!(
                            "{model}/{version} ({} {} {v:.3}) does worse than {model}/{prev} did ({pv:.3}) by more than {}: {} returns to {prev}",
                            if c.realized { "realized" } else { "estimated" },
                            c.metric,
                            p.rollback_margin,
                            p.alias
                        );
                        let reason =
                            format!("monitor: {}; {}", signal.reason, c.evidence.join("; "));
                        match registry
                            .set_alias(as_monitor(pb::SetAliasRequest {
                                model: model.clone(),
                                alias: p.alias.clone(),
                                version: prev,
                                expected_version: Some(version),
                                reason,
                            }))
                            .await
                        {
                            Ok(_) => signal.action = format!("{}: {version} -> {prev}", p.alias),
                            Err(e) => {
                                signal.error =
                                    format!("moving {} back failed: {}", p.alias, e.message())
                            }
                        }
                    }
                }
            }
            if !rolled {
                signal.kind = SignalKind::Retrain as i32;
                signal.reason = format!(
                    "{model}/{version} ({}) breached its policy in {} consecutive windows",
                    p.alias,
                    c.windows.len()
                );
                self.retrain(&c, &mut signal).await;
            }
        } else {
            let Some(t) = target.filter(|_| p.retire) else {
                tracing::info!(model = %model, version, "breach on a version that is not the alias target; retire disabled or no successor");
                return;
            };
            let (tv, vv) = (self.standing(&model, t, p, &c.metric).await, c.value);
            if let (Some(tv), Some(vv)) = (tv, vv) {
                if tv < vv {
                    tracing::info!(model = %model, version, "the successor is not better; not retiring");
                    return;
                }
            }
            signal.kind = SignalKind::Retire as i32;
            signal.target_version = t;
            signal.reason = format!(
                "{model}/{version} stays unhealthy and {model}/{t} ({}) does better: deprecated in favour of {t}",
                p.alias
            );
            match registry
                .set_version_status(as_monitor(pb::SetVersionStatusRequest {
                    r#ref: Some(pb::VersionRef {
                        model: model.clone(),
                        selector: Some(pb::version_ref::Selector::Version(version)),
                    }),
                    status: pb::VersionStatus::Deprecated as i32,
                    reason: format!("deprecated by the monitor: {}", signal.reason),
                    sunset_at: None,
                    replacement_version: t,
                }))
                .await
            {
                Ok(_) => signal.action = format!("{model}/{version} DEPRECATED, replacement {t}"),
                Err(e) => signal.error = format!("deprecating failed: {}", e.message()),
            }
        }
        self.record(signal).await;
    }

    async fn retrain(&self, c: &Candidate, signal: &mut pb::Signal) {
        let p = &c.policy;
        if !p.retrain {
            signal.action = "none: retrain is disabled by the policy".into();
            return;
        }
        let Some(mut trainer) = self.trainer.clone() else {
            signal.error = "no trainer configured (set monitor.trainer_url)".into();
            return;
        };
        let rows: Vec<pb::LabeledRow> = {
            let s = self.state.lock().unwrap();
            s.labeled
                .get(&c.key.0)
                .map(|rows| {
                    rows.iter()
                        .map(|r| pb::LabeledRow {
                            features: Some(pb::Row {
                                values: r.features.iter().map(|v| v.to_pb()).collect(),
                                named: Default::default(),
                            }),
                            label: r.label.clone(),
                            value: r.value,
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let n = rows.len();
        let req = pb::RetrainRequest {
            model: c.key.0.clone(),
            reason: format!("monitor: {}", signal.reason),
            dataset_uri: String::new(),
            alias: p.alias.clone(),
            gate: Some(pb::Gate {
                alias: p.alias.clone(),
                metric: c.metric.clone(),
                min_improvement: p.min_improvement,
            }),
            rows,
        };
        match trainer.retrain(as_monitor(req)).await {
            Ok(job) => {
                signal.action = format!(
                    "trainer job {} on the training data + {n} labeled rows, gated on {}",
                    job.into_inner().id,
                    p.alias
                )
            }
            Err(e) => signal.error = format!("the trainer refused: {}", e.message()),
        }
    }

    async fn record(&self, mut signal: pb::Signal) {
        let at = now();
        if let Err(e) = self.store.add_signal(&mut signal, at) {
            tracing::error!(error = %e, "cannot store a signal");
        }
        tracing::warn!(
            id = signal.id,
            kind = pb::SignalKind::try_from(signal.kind).map(|k| k.short_name()).unwrap_or("?"),
            model = %signal.model,
            version = signal.version,
            action = %signal.action,
            error = %signal.error,
            "{}",
            signal.reason
        );
        self.metrics.signal(
            pb::SignalKind::try_from(signal.kind)
                .map(|k| k.short_name())
                .unwrap_or("UNKNOWN"),
        );
        let _ = self.signals.send(signal);
    }
}

fn owned(v: Vec<(&'static str, f64)>) -> Vec<(String, f64)> {
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
