//! What the server holds: an immutable snapshot of every model it knows,
//! swapped atomically (`ArcSwap`) by the syncer. Requests resolve against
//! one snapshot from start to finish, so a swap never tears a request: an
//! in-flight request keeps its `Arc<Loaded>` and the old model is dropped
//! when the last such request ends.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use evergreen_proto::v1::{TrafficPolicy, VersionStatus};
use evergreen_proto::Timestamp;

use crate::error::ServeError;

/// A loaded, verified, warmed model version.
pub struct Loaded {
    pub model: String,
    pub version: u64,
    pub artifact: evergreen_model::Model,
    pub sha256: String,
    pub loaded_at: SystemTime,
    /// Rows scored by this version since it was loaded.
    pub predictions: AtomicU64,
}

/// What the registry says about one version.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub status: VersionStatus,
    pub reason: String,
    pub sunset_at: Option<Timestamp>,
    pub replacement: u64,
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub version: u64,
    pub error: String,
    pub at: SystemTime,
}

/// One model: registry facts plus what is loaded.
#[derive(Default)]
pub struct ModelEntry {
    pub name: String,
    /// Every alias of the model (registry truth).
    pub aliases: HashMap<String, u64>,
    /// Served aliases → the version actually answering for them. Equals
    /// `aliases` unless a new target failed to load (then the old one keeps
    /// serving).
    pub routes: HashMap<String, u64>,
    pub versions: HashMap<u64, VersionInfo>,
    pub loaded: HashMap<u64, Arc<Loaded>>,
    pub policy: Option<TrafficPolicy>,
    pub failures: Vec<Failure>,
}

#[derive(Default)]
pub struct Catalog {
    /// Registry revision this snapshot reflects.
    pub revision: u64,
    pub models: HashMap<String, Arc<ModelEntry>>,
    pub ready: bool,
}

impl Catalog {
    /// What `evergreen status` shows: whether the initial load is done,
    /// the models served and, per model, its loaded versions with the
    /// served aliases answering from each (`v5 production, v1`).
    pub fn holdings(&self) -> Vec<(String, String)> {
        let mut models: Vec<&Arc<ModelEntry>> = self
            .models
            .values()
            .filter(|m| !m.loaded.is_empty())
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = vec![
            (
                "ready".to_string(),
                if self.ready { "yes" } else { "no (loading)" }.to_string(),
            ),
            ("models".to_string(), models.len().to_string()),
        ];
        for m in models {
            let mut versions: Vec<u64> = m.loaded.keys().copied().collect();
            versions.sort_unstable_by(|a, b| b.cmp(a));
            let shown: Vec<String> = versions
                .iter()
                .map(|v| {
                    let mut aliases: Vec<&str> = m
                        .routes
                        .iter()
                        .filter(|(_, t)| *t == v)
                        .map(|(a, _)| a.as_str())
                        .collect();
                    aliases.sort_unstable();
                    if aliases.is_empty() {
                        format!("v{v}")
                    } else {
                        format!("v{v} {}", aliases.join(" "))
                    }
                })
                .collect();
            out.push((m.name.clone(), shown.join(", ")));
        }
        out.push(("revision".to_string(), self.revision.to_string()));
        out
    }
}

/// Which version a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// By name alone: the traffic policy, else the default alias.
    Default,
    Alias(String),
    Version(u64),
}

/// Parses `name`, `name@alias`, `name/3`.
pub fn parse_spec(spec: &str) -> Result<(&str, Selector), ServeError> {
    let bad = |what: &str| {
        ServeError::InvalidArgument(format!(
            "model {spec:?}: {what}; expected \"name\", \"name@alias\" or \"name/VERSION\""
        ))
    };
    let (name, sel) = if let Some((n, a)) = spec.split_once('@') {
        if a.is_empty() {
            return Err(bad("empty alias"));
        }
        (n, Selector::Alias(a.to_string()))
    } else if let Some((n, v)) = spec.split_once('/') {
        evergreen_proto::names::check_name("model name", n).map_err(|e| bad(&e))?;
        let v = v
            .parse::<u64>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| bad("the version must be a positive integer"))?;
        (n, Selector::Version(v))
    } else {
        (spec, Selector::Default)
    };
    evergreen_proto::names::check_name("model name", name).map_err(|e| bad(&e))?;
    Ok((name, sel))
}

/// The version(s) answering one request.
pub struct Route {
    pub primary: Arc<Loaded>,
    pub shadow: Option<Arc<Loaded>>,
    pub deprecation: Option<Deprecation>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Deprecation {
    pub notice: String,
    pub sunset_at: Option<Timestamp>,
    pub replacement: u64,
    pub message: String,
}

/// Why a request could not be routed from the snapshot alone.
pub enum Miss {
    Error(ServeError),
    /// The snapshot does not know this version or alias; it may be brand
    /// new (the watch is milliseconds behind): worth one refresh before
    /// answering with the error.
    Unknown(ServeError),
    /// The version exists and may be served, but is not loaded here: the
    /// caller may ask the syncer to load it.
    NotLoaded(u64),
}

/// FNV-1a: a stable hash for sticky canary assignment.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn rfc3339(t: &Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

impl ModelEntry {
    fn deprecation(&self, version: u64) -> Option<Deprecation> {
        let info = self.versions.get(&version)?;
        if info.status != VersionStatus::Deprecated {
            return None;
        }
        let mut message = format!("{}/{version} is deprecated", self.name);
        if !info.reason.is_empty() {
            message.push_str(&format!(": {}", info.reason));
        }
        if let Some(t) = &info.sunset_at {
            message.push_str(&format!("; sunset {}", rfc3339(t)));
        }
        if info.replacement > 0 {
            message.push_str(&format!("; use {}/{} instead", self.name, info.replacement));
        }
        Some(Deprecation {
            notice: info.reason.clone(),
            sunset_at: info.sunset_at,
            replacement: info.replacement,
            message,
        })
    }

    /// Checks that `version` may be served and returns it if loaded.
    fn servable(&self, version: u64) -> Result<Arc<Loaded>, Miss> {
        let name = &self.name;
        let Some(info) = self.versions.get(&version) else {
            return Err(Miss::Unknown(ServeError::NotFound(format!(
                "version {version} of model {name:?} not found"
            ))));
        };
        if matches!(
            info.status,
            VersionStatus::Retired | VersionStatus::Archived
        ) {
            let status = info.status.short_name();
            let hint = match (info.replacement, self.routes.values().next()) {
                (r, _) if r > 0 => format!("; use {name}/{r}"),
                (_, Some(v)) => format!("; {name} is served at {name}/{v}"),
                _ => String::new(),
            };
            return Err(Miss::Error(ServeError::FailedPrecondition(format!(
                "{name}/{version} is {status} and no longer served{hint}"
            ))));
        }
        if let Some(l) = self.loaded.get(&version) {
            return Ok(l.clone());
        }
        if let Some(f) = self.failures.iter().rev().find(|f| f.version == version) {
            return Err(Miss::Error(ServeError::FailedPrecondition(format!(
                "{name}/{version} cannot be served: its artifact failed to load: {}",
                f.error
            ))));
        }
        Err(Miss::NotLoaded(version))
    }

    /// Picks the version(s) for `sel`; `key` (the request id) makes the
    /// canary split sticky.
    pub fn route(&self, sel: &Selector, key: &str, default_alias: &str) -> Result<Route, Miss> {
        let name = &self.name;
        let (version, shadow) = match sel {
            Selector::Version(v) => (*v, None),
            Selector::Alias(a) => match self.routes.get(a).or_else(|| self.aliases.get(a)) {
                Some(v) => (*v, None),
                None => {
                    return Err(Miss::Unknown(ServeError::NotFound(format!(
                        "alias {a:?} of model {name:?} not found"
                    ))))
                }
            },
            Selector::Default => {
                let policy = self.policy.as_ref();
                let weighted: Vec<(u64, u64)> = policy
                    .map(|p| {
                        p.weights
                            .iter()
                            .filter(|w| w.weight > 0 && self.loaded.contains_key(&w.version))
                            .map(|w| (w.version, w.weight as u64))
                            .collect()
                    })
                    .unwrap_or_default();
                let shadow = policy
                    .map(|p| p.shadow_version)
                    .filter(|v| *v > 0)
                    .and_then(|v| self.loaded.get(&v).cloned());
                let total: u64 = weighted.iter().map(|(_, w)| w).sum();
                if total > 0 {
                    let mut point = stable_hash(key) % total;
                    let mut chosen = weighted[0].0;
                    for (v, w) in &weighted {
                        if point < *w {
                            chosen = *v;
                            break;
                        }
                        point -= w;
                    }
                    (chosen, shadow)
                } else {
                    match self.routes.get(default_alias).or_else(|| self.aliases.get(default_alias)) {
                        Some(v) => (*v, shadow),
                        None => {
                            return Err(Miss::Error(ServeError::NotFound(format!(
                                "model {name:?} has no {default_alias} alias; promote a version (evergreen alias set {name} {default_alias} N) or address {name}/N"
                            ))))
                        }
                    }
                }
            }
        };
        let primary = self.servable(version)?;
        let shadow = shadow.filter(|s| s.version != primary.version);
        Ok(Route {
            deprecation: self.deprecation(version),
            primary,
            shadow,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_name_the_problem() {
        assert_eq!(parse_spec("m").unwrap(), ("m", Selector::Default));
        assert_eq!(
            parse_spec("m@prod").unwrap(),
            ("m", Selector::Alias("prod".into()))
        );
        assert_eq!(parse_spec("m/3").unwrap(), ("m", Selector::Version(3)));
        for bad in ["", "m/0", "m/x", "m@", "../x"] {
            assert!(
                matches!(parse_spec(bad), Err(ServeError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn canary_split_is_sticky_and_proportional() {
        let mut hits = [0u32; 2];
        for i in 0..10_000 {
            let key = format!("req-{i}");
            let h = stable_hash(&key) % 100;
            assert_eq!(h, stable_hash(&key) % 100, "sticky");
            hits[usize::from(h >= 90)] += 1;
        }
        assert!((8_700..9_300).contains(&hits[0]), "{hits:?}");
    }
}
