//! A model's monitoring policy: what counts as a breach, how many breached
//! windows make a signal, and which actions the monitor may take. Stored as
//! the proto `Policy` (unset = default); `Policy::resolve` fills defaults
//! and `validate` names each bad field.

use std::collections::BTreeMap;

use evergreen_proto::v1 as pb;

use crate::drift::Test;
use crate::service::MonitorError;

/// The effective policy of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min_rows: u64,
    pub min_labels: u64,
    pub drift_share: f64,
    pub max_metric_drop: f64,
    pub drift_breaches: bool,
    pub consecutive: u32,
    pub cooldown_seconds: u64,
    pub retrain: bool,
    pub rollback: bool,
    pub retire: bool,
    pub alias: String,
    pub rollback_margin: f64,
    pub min_improvement: f64,
    pub tests: BTreeMap<String, Test>,
    pub thresholds: BTreeMap<String, f64>,
}

pub const DEFAULT_MIN_ROWS: u64 = 100;
pub const DEFAULT_MIN_LABELS: u64 = 50;
pub const DEFAULT_MAX_METRIC_DROP: f64 = 0.05;
pub const DEFAULT_CONSECUTIVE: u32 = 2;
pub const DEFAULT_COOLDOWN_SECONDS: u64 = 600;
pub const DEFAULT_ROLLBACK_MARGIN: f64 = 0.05;

pub fn parse_test(s: &str) -> Option<Test> {
    Some(match s {
        "psi" => Test::Psi,
        "ks" => Test::Ks,
        "wasserstein" => Test::Wasserstein,
        "jensen_shannon" => Test::JensenShannon,
        "chi2" => Test::ChiSquare,
        _ => return None,
    })
}

fn or<T: PartialEq + Default>(v: T, default: T) -> T {
    if v == T::default() {
        default
    } else {
        v
    }
}

impl Policy {
    /// The stored policy with defaults filled in; `drift_share` defaults to
    /// the monitor's configured share.
    pub fn resolve(p: &pb::Policy, drift_share: f64) -> Policy {
        Policy {
            min_rows: or(p.min_rows, DEFAULT_MIN_ROWS),
            min_labels: or(p.min_labels, DEFAULT_MIN_LABELS),
            drift_share: or(p.drift_share, drift_share),
            max_metric_drop: or(p.max_metric_drop, DEFAULT_MAX_METRIC_DROP),
            drift_breaches: p.drift_breaches.unwrap_or(true),
            consecutive: or(p.consecutive, DEFAULT_CONSECUTIVE),
            cooldown_seconds: or(p.cooldown_seconds, DEFAULT_COOLDOWN_SECONDS),

            retrain: p.retrain.unwrap_or(true),
            rollback: p.rollback.unwrap_or(true),
            retire: p.retire.unwrap_or(false),
            alias: or(p.alias.clone(), "production".into()),
            rollback_margin: or(p.rollback_margin, DEFAULT_ROLLBACK_MARGIN),
            min_improvement: p.min_improvement,
            tests: p
                .tests
                .iter()
                .filter_map(|(f, t)| parse_test(t).map(|t| (f.clone(), t)))
                .collect(),
            thresholds: p.thresholds.iter().map(|(f, t)| (f.clone(), *t)).collect(),
        }
    }

    pub fn to_proto(&self, model: &str) -> pb::Policy {
        pb::Policy {
            model: model.to_string(),
            min_rows: self.min_rows,
            min_labels: self.min_labels,
            drift_share: self.drift_share,
            max_metric_drop: self.max_metric_drop,
            drift_breaches: Some(self.drift_breaches),
            consecutive: self.consecutive,
            cooldown_seconds: self.cooldown_seconds,
            retrain: Some(self.retrain),
            rollback: Some(self.rollback),
            retire: Some(self.retire),
            alias: self.alias.clone(),
            rollback_margin: self.rollback_margin,
            tests: self
                .tests
                .iter()
                .map(|(f, t)| (f.clone(), t.name().to_string()))
                .collect(),
            thresholds: self
                .thresholds
                .iter()
                .map(|(f, t)| (f.clone(), *t))
                .collect(),
            min_improvement: self.min_improvement,
        }
    }
}

/// Checks a policy sent by SetPolicy. `features` are the model's feature
/// names when known (overrides for other names are refused).
pub fn validate(p: &pb::Policy, features: Option<&[String]>) -> Result<(), MonitorError> {
    let bad = |m: String| Err(MonitorError::InvalidArgument(m));
    evergreen_proto::names::check_name("model name", &p.model)
        .map_err(MonitorError::InvalidArgument)?;
    let share = |name: &str, v: f64| -> Result<(), MonitorError> {
        if !(0.0..=1.0).contains(&v) || v.is_nan() {
            return bad(format!(
                "invalid policy.{name} = {v}: expected a number in [0, 1]"
            ));
        }
        Ok(())
    };
    share("drift_share", p.drift_share)?;
    share("max_metric_drop", p.max_metric_drop)?;
    share("rollback_margin", p.rollback_margin)?;
    share("min_improvement", p.min_improvement)?;
    if p.consecutive > 1000 {
        return bad(format!(
            "invalid policy.consecutive = {}: expected 1 to 1000 windows (0 = default {DEFAULT_CONSECUTIVE})",
            p.consecutive
        ));
    }
    if !p.alias.is_empty() {
        evergreen_proto::names::check_name("policy.alias", &p.alias)
            .map_err(MonitorError::InvalidArgument)?;
    }
    for (f, t) in &p.tests {
        if parse_test(t).is_none() {
            return bad(format!(
                "invalid policy.tests[{f:?}] = {t:?}: expected one of psi, ks, wasserstein, jensen_shannon, chi2"
            ));
        }
    }
    for (f, t) in &p.thresholds {
        if !t.is_finite() || *t <= 0.0 {
            return bad(format!(
                "invalid policy.thresholds[{f:?}] = {t}: expected a positive number"
            ));
        }
    }
    if let Some(features) = features {
        for f in p.tests.keys().chain(p.thresholds.keys()) {
            if !features.iter().any(|n| n == f) {
                return bad(format!(
                    "policy names feature {f:?}, which model {:?} does not have (its features: {})",
                    p.model,
                    features.join(", ")
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_the_defaults() {
        let p = Policy::resolve(&pb::Policy::default(), 0.5);
        assert_eq!(p.min_rows, DEFAULT_MIN_ROWS);
        assert_eq!(p.consecutive, DEFAULT_CONSECUTIVE);
        assert_eq!(p.cooldown_seconds, DEFAULT_COOLDOWN_SECONDS);
        assert!(p.retrain && p.rollback && !p.retire && p.drift_breaches);
        assert_eq!(p.alias, "production");
        let again = Policy::resolve(&p.to_proto("m"), 0.5);
        assert_eq!(again, p, "a resolved policy round-trips");
    }

    #[test]
    fn bad_values_are_named() {
        let mut p = pb::Policy {
            model: "m".into(),
            drift_share: 1.5,
            ..Default::default()
        };
        let e = validate(&p, None).unwrap_err().to_string();
        assert!(e.contains("drift_share") && e.contains("[0, 1]"), "{e}");
        p.drift_share = 0.5;
        p.tests.insert("f0".into(), "t-test".into());
        let e = validate(&p, None).unwrap_err().to_string();
        assert!(e.contains("t-test") && e.contains("wasserstein"), "{e}");
        p.tests.insert("f0".into(), "ks".into());
        let e = validate(&p, Some(&["a".into()])).unwrap_err().to_string();
        assert!(e.contains("\"f0\"") && e.contains("its features: a"), "{e}");
    }
}
