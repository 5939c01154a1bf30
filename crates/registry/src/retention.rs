//! The retention policy (issue #6), applied by the registry on a timer and
//! audited like any change (actor `evergreen-registry`):
//! - `keep_active = K`: a model keeps at most K ACTIVE versions; older
//!   ACTIVE ones that no alias and no traffic weight or shadow points at are
//!   RETIRED;
//! - `archive_retired_after_seconds = N`: a version RETIRED for longer than N
//!   seconds (since its last status change in the audit trail) is archived.
//! Failures are logged and retried at the next pass; nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use evergreen_proto::v1::{EventKind, VersionStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::archive::Archiver;
use crate::names::{Selector, VersionSpec};
use crate::service::{Caller, Deprecation, Registry};
use crate::store::{now, version_status};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Archive versions RETIRED for longer than this (0 = never).
    pub archive_retired_after_seconds: u64,
    /// Keep at most this many ACTIVE versions per model (0 = no limit).
    pub keep_active: u32,
    /// How often the policy is applied (0 = the default, 60 s).
    pub interval_seconds: u64,
}

impl RetentionConfig {
    pub fn enabled(&self) -> bool {
        self.archive_retired_after_seconds > 0 || self.keep_active > 0
    }
}

pub struct Retention {
    registry: Arc<Registry>,
    archiver: Arc<Archiver>,
    config: RetentionConfig,
}

fn caller(reason: String) -> Caller {
    Caller {
        actor: "evergreen-registry".into(),
        reason,
    }
}

fn spec(model: &str, version: u64) -> VersionSpec {
    VersionSpec {
        model: model.to_string(),
        selector: Selector::Version(version),
    }
}

impl Retention {
    pub fn new(registry: Arc<Registry>, archiver: Arc<Archiver>, config: RetentionConfig) -> Self {
        Retention {
            registry,
            archiver,
            config,
        }
    }

    /// Applies the policy every `interval_seconds` until `stop` is set.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if !self.config.enabled() {
            return;
        }
        let every = Duration::from_secs(match self.config.interval_seconds {
            0 => 60,
            s => s,
        });
        let mut tick = tokio::time::interval(every);
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
                _ = self.pass() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass over every model.
    pub async fn pass(&self) {
        let models = match self.registry.store().list_models() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "retention: cannot list models");
                return;
            }
        };
        for m in models {
            if let Err(e) = self.model(&m).await {
                tracing::warn!(model = %m.name, error = %e, "retention: will retry at the next pass");
            }
        }
    }

    async fn model(&self, m: &evergreen_proto::v1::Model) -> crate::error::Result<()> {
        let store = self.registry.store();
        let versions = store.list_versions(&m.name)?;
        let k = self.config.keep_active as usize;
        if k > 0 {
            let mut active: Vec<u64> = versions
                .iter()
                .filter(|v| version_status(v) == VersionStatus::Active)
                .map(|v| v.version)
                .collect();
            active.sort_unstable();
            let excess = active.len().saturating_sub(k);
            let routed: Vec<u64> = m
                .policy
                .iter()
                .flat_map(|p| {
                    p.weights
                        .iter()
                        .map(|w| w.version)
                        .chain([p.shadow_version])
                })
                .chain(m.aliases.values().copied())
                .collect();
            for v in active.into_iter().take(excess) {
                if routed.contains(&v) {
                    continue; // still serving: not ours to retire
                }
                self.registry
                    .set_version_status(
                        caller(format!(
                            "retention: {} keeps at most {k} ACTIVE versions",
                            m.name
                        )),
                        spec(&m.name, v),
                        VersionStatus::Retired,
                        Deprecation::default(),
                    )
                    .await?;
                tracing::info!(model = %m.name, version = v, "retention: retired");
            }
        }
        let after = self.config.archive_retired_after_seconds;
        if after > 0 {
            let history = store.history(&m.name, 0)?;
            let t = now().seconds;
            for v in store.list_versions(&m.name)? {
                if version_status(&v) != VersionStatus::Retired {
                    continue;
                }
                let since = history
                    .iter()
                    .rev()
                    .find(|e| {
                        e.version == v.version
                            && (e.kind == EventKind::VersionStatusChanged as i32
                                || e.kind == EventKind::VersionRestored as i32)
                    })
                    .and_then(|e| e.time.map(|t| t.seconds))
                    .unwrap_or(t);
                if t - since < after as i64 {
                    continue;
                }
                self.archiver
                    .archive(
                        caller(format!("retention: RETIRED for more than {after} s")),
                        spec(&m.name, v.version),
                        false,
                    )
                    .await?;
                tracing::info!(model = %m.name, version = v.version, "retention: archived");
            }
        }
        Ok(())
    }
}
