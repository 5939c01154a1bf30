//! A version's window: every logged row binned feature by feature on the
//! version's reference profile, the model's answers, realized and estimated
//! performance, and service health. O(bins) memory per feature, whatever
//! the traffic; serializable, so it survives a restart.

use evergreen_model::profile::{
    CategoricalProfile, FeatureProfile, PredictionProfile, Profile, PROBABILITY_BINS,
};
use evergreen_model::schema::Value;
use serde::{Deserialize, Serialize};

use crate::drift::{self, FeatureDrift, NumericWindow};
use crate::perf::{ClassPerf, HealthCounts, Realized, RegPerf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FeatureWindow {
    Numeric(NumericWindow),
    /// Counts per reference category (same order), then categories the
    /// reference never saw.
    Categorical {
        counts: Vec<u64>,
        unseen: u64,
        missing: u64,
    },
}

/// What the model answered over the window, for prediction drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PredictionWindow {
    /// Predicted-class counts, by class index, and per class the counts of
    /// its probability in `PROBABILITY_BINS` equal-width bins (as the
    /// profile keeps them).
    Classes {
        counts: Vec<u64>,
        probabilities: Vec<Vec<u64>>,
    },
    Values(NumericWindow),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// 1, 2, ... per version (0 for the long window).
    pub seq: u64,
    /// Unix seconds: opened, and closed (0 while open).
    pub start: f64,
    pub end: f64,
    pub rows: u64,
    pub features: Vec<FeatureWindow>,
    pub predictions: PredictionWindow,
    /// Labels matched to this window's predictions.
    pub realized: Realized,
    /// CBPE accumulators (classifiers).
    pub estimated: Option<ClassPerf>,
    pub health: HealthCounts,
}

/// One logged answer: class probabilities (classification) or a value.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    Probabilities(&'a [f64]),
    Value(f64),
}

/// Ground truth: a class index or a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Truth {
    Class(usize),
    Value(f64),
}

fn add(a: &mut [u64], b: &[u64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn category_index(p: &CategoricalProfile, s: &str) -> Option<usize> {
    p.categories.binary_search_by(|c| c.as_str().cmp(s)).ok()
}

impl Window {
    pub fn new(profile: &Profile, seq: u64, start: f64) -> Self {
        let features = profile
            .features
            .iter()
            .map(|f| match f {
                FeatureProfile::Numeric(p) => FeatureWindow::Numeric(NumericWindow::new(p)),
                FeatureProfile::Categorical(p) => FeatureWindow::Categorical {
                    counts: vec![0; p.categories.len()],
                    unseen: 0,
                    missing: 0,
                },
            })
            .collect();
        let (predictions, realized, estimated) = match &profile.predictions {
            PredictionProfile::Classification { class_counts, .. } => {
                let k = class_counts.len();
                (
                    PredictionWindow::Classes {
                        counts: vec![0; k],
                        probabilities: vec![vec![0; PROBABILITY_BINS]; k],
                    },
                    Realized::Class(ClassPerf::new(k)),
                    Some(ClassPerf::new(k)),
                )
            }
            PredictionProfile::Regression(p) => (
                PredictionWindow::Values(NumericWindow::new(p)),
                Realized::Reg(RegPerf::default()),
                None,
            ),
        };
        Window {
            seq,
            start,
            end: 0.0,
            rows: 0,
            features,
            predictions,
            realized,
            estimated,
            health: HealthCounts::default(),
        }
    }

    /// Whether the window has the shape `profile` gives (a persisted window
    /// of another artifact would not).
    pub fn fits(&self, profile: &Profile) -> bool {
        let fresh = Window::new(profile, 0, 0.0);
        self.features.len() == fresh.features.len()
            && self
                .features
                .iter()
                .zip(&fresh.features)
                .all(|(a, b)| match (a, b) {
                    (FeatureWindow::Numeric(a), FeatureWindow::Numeric(b)) => {
                        a.counts.len() == b.counts.len()
                    }
                    (
                        FeatureWindow::Categorical { counts: a, .. },
                        FeatureWindow::Categorical { counts: b, .. },
                    ) => a.len() == b.len(),
                    _ => false,
                })
            && match (&self.predictions, &fresh.predictions) {
                (
                    PredictionWindow::Classes { counts: a, .. },
                    PredictionWindow::Classes { counts: b, .. },
                ) => a.len() == b.len(),
                (PredictionWindow::Values(a), PredictionWindow::Values(b)) => {
                    a.counts.len() == b.counts.len()
                }
                _ => false,
            }
    }

    /// Adds everything `other` (a window of the same profile) counted.
    pub fn merge(&mut self, other: &Window) {
        self.rows += other.rows;
        for (a, b) in self.features.iter_mut().zip(&other.features) {
            match (a, b) {
                (FeatureWindow::Numeric(a), FeatureWindow::Numeric(b)) => a.merge(b),
                (
                    FeatureWindow::Categorical {
                        counts,
                        unseen,
                        missing,
                    },
                    FeatureWindow::Categorical {
                        counts: c2,
                        unseen: u2,
                        missing: m2,
                    },
                ) => {
                    add(counts, c2);
                    *unseen += u2;
                    *missing += m2;
                }
                _ => {}
            }
        }
        match (&mut self.predictions, &other.predictions) {
            (
                PredictionWindow::Classes {
                    counts,
                    probabilities,
                },
                PredictionWindow::Classes {
                    counts: c2,
                    probabilities: p2,
                },
            ) => {
                add(counts, c2);
                for (a, b) in probabilities.iter_mut().zip(p2) {
                    add(a, b);
                }
            }
            (PredictionWindow::Values(a), PredictionWindow::Values(b)) => a.merge(b),
            _ => {}
        }
        self.realized.merge(&other.realized);
        if let (Some(a), Some(b)) = (&mut self.estimated, &other.estimated) {
            a.merge(b);
        }
        self.health.merge(&other.health);
    }

    /// A label for one of this window's predictions.
    pub fn add_label(&mut self, answer: Answer, truth: Truth) {
        match (&mut self.realized, answer, truth) {
            (Realized::Class(c), Answer::Probabilities(p), Truth::Class(t)) => c.add_labeled(p, t),
            (Realized::Reg(r), Answer::Value(v), Truth::Value(t)) => r.add(v, t),
            _ => {}
        }
    }

    /// Per class, its predicted probability against the holdout's.
    pub fn probability_drift(&self, profile: &Profile) -> Vec<(FeatureDrift, f64, u64)> {
        match (&self.predictions, &profile.predictions) {
            (
                PredictionWindow::Classes { probabilities, .. },
                PredictionProfile::Classification {
                    probability_counts, ..
                },
            ) => probabilities
                .iter()
                .zip(probability_counts)
                .map(|(cur, reference)| {
                    let (d, p) = drift::ks(reference, cur);
                    let t = drift::Test::Ks.default_threshold();
                    (
                        FeatureDrift {
                            test: drift::Test::Ks,
                            statistic: d,
                            p_value: Some(p),
                            threshold: t,
                            drifted: p < t,
                        },
                        drift::psi(reference, cur),
                        cur.iter().sum(),
                    )
                })
                .collect(),
            _ => vec![],
        }
    }

    /// Adds one answer of the model.
    pub fn push_answer(&mut self, profile: &Profile, answer: Answer) {
        match (&mut self.predictions, answer, &profile.predictions) {
            (
                PredictionWindow::Classes {
                    counts,
                    probabilities,
                },
                Answer::Probabilities(p),
                _,
            ) if p.len() == counts.len() => {
                counts[evergreen_model::tree::argmax(p)] += 1;
                for (h, q) in probabilities.iter_mut().zip(p) {
                    let b = ((q * PROBABILITY_BINS as f64) as usize).min(PROBABILITY_BINS - 1);
                    h[b] += 1;
                }
                if let Some(e) = &mut self.estimated {
                    e.add_expected(p);
                }
            }
            (PredictionWindow::Values(w), Answer::Value(v), PredictionProfile::Regression(p)) => {
                w.push(&p.edges, v)
            }
            _ => {} // a malformed record: nothing to count
        }
    }

    /// The model's answers against its answers on the training holdout.
    pub fn prediction_drift(&self, profile: &Profile) -> (FeatureDrift, f64, u64) {
        match (&self.predictions, &profile.predictions) {
            (
                PredictionWindow::Classes { counts: c, .. },
                PredictionProfile::Classification { class_counts, .. },
            ) => (
                drift::categorical_drift(class_counts, c),
                drift::psi(class_counts, c),
                c.iter().sum(),
            ),
            (PredictionWindow::Values(w), PredictionProfile::Regression(p)) => (
                drift::numeric_drift(p, w),
                drift::psi(&p.counts, &w.counts),
                w.count(),
            ),
            _ => unreachable!("windows are built from the same profile"),
        }
    }

    /// Adds one row (values in feature order; a short row counts the rest
    /// as missing).
    pub fn push(&mut self, profile: &Profile, row: &[Value]) {
        self.rows += 1;
        for (i, (w, p)) in self.features.iter_mut().zip(&profile.features).enumerate() {
            let v = row.get(i).copied().unwrap_or(Value::Missing);
            match (w, p) {
                (FeatureWindow::Numeric(w), FeatureProfile::Numeric(p)) => {
                    let x = match v {
                        Value::Number(x) => x,
                        Value::Text(s) => s.trim().parse().unwrap_or(f64::NAN),
                        Value::Missing => f64::NAN,
                    };
                    w.push(&p.edges, x);
                }
                (
                    FeatureWindow::Categorical {
                        counts,
                        unseen,
                        missing,
                    },
                    FeatureProfile::Categorical(p),
                ) => match v {
                    Value::Missing => *missing += 1,
                    Value::Text(s) => match category_index(p, s) {
                        Some(k) => counts[k] += 1,
                        None => *unseen += 1,
                    },
                    Value::Number(x) => match category_index(p, &format!("{x}")) {
                        Some(k) => counts[k] += 1,
                        None => *unseen += 1,
                    },
                },
                _ => {}
            }
        }
    }

    /// Per-feature verdicts plus PSI, count and missing: Evidently's default
    /// test per feature unless `choose(i)` names a test and/or threshold.
    pub fn drift(
        &self,
        profile: &Profile,
        choose: impl Fn(usize) -> (Option<drift::Test>, Option<f64>),
    ) -> Vec<(FeatureDrift, f64, u64, u64)> {
        self.features
            .iter()
            .zip(&profile.features)
            .enumerate()
            .map(|(i, (w, p))| {
                let (test, threshold) = choose(i);
                match (w, p) {
                    (FeatureWindow::Numeric(w), FeatureProfile::Numeric(p)) => {
                        let mut v = match test {
                            Some(t) => {
                                drift::verdict(t, threshold, &p.counts, &w.counts, Some((p, w)))
                            }
                            None => drift::numeric_drift(p, w),
                        };
                        if let (None, Some(t)) = (test, threshold) {
                            v = drift::verdict(v.test, Some(t), &p.counts, &w.counts, Some((p, w)));
                        }
                        (v, drift::psi(&p.counts, &w.counts), w.count(), w.missing)
                    }
                    (
                        FeatureWindow::Categorical {
                            counts,
                            unseen,
                            missing,
                        },
                        FeatureProfile::Categorical(p),
                    ) => {
                        let mut r = p.counts.clone();
                        r.push(0);
                        let mut c = counts.clone();
                        c.push(*unseen);
                        let n = c.iter().sum();
                        let mut v = match test {
                            Some(t) => drift::verdict(t, threshold, &r, &c, None),
                            None => drift::categorical_drift(&r, &c),
                        };
                        if let (None, Some(t)) = (test, threshold) {
                            v = drift::verdict(v.test, Some(t), &r, &c, None);
                        }
                        (v, drift::psi(&r, &c), n, *missing)
                    }
                    _ => unreachable!("windows are built from the same profile"),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evergreen_model::profile::NumericProfile;

    fn profile() -> Profile {
        Profile {
            rows: 5000,
            features: vec![FeatureProfile::Numeric(NumericProfile::from_values(
                (0..5000).map(|i| (i % 100) as f64),
                20,
            ))],
            predictions: PredictionProfile::classification(&[0.9, 0.1, 0.2, 0.8], 2),
        }
    }

    #[test]
    fn policy_overrides_choose_the_test_and_threshold() {
        let p = profile();
        let mut w = Window::new(&p, 1, 0.0);
        for i in 0..2000 {
            w.push(&p, &[Value::Number((i % 100) as f64 + 3.0)]);
        }
        // Default for 5000 reference rows: normed Wasserstein, 3 / 28.9 ≥ 0.1.
        let d = w.drift(&p, |_| (None, None));
        assert_eq!(d[0].0.test, drift::Test::Wasserstein);
        assert!(d[0].0.drifted, "{:?}", d[0].0);
        // A looser threshold on the same test: not drifted.
        let d = w.drift(&p, |_| (None, Some(0.5)));
        assert_eq!(
            (d[0].0.test, d[0].0.threshold),
            (drift::Test::Wasserstein, 0.5)
        );
        assert!(!d[0].0.drifted);
        // Another test: PSI with its default threshold.
        let d = w.drift(&p, |_| (Some(drift::Test::Psi), None));
        assert_eq!(d[0].0.test, drift::Test::Psi);
        assert!(
            (d[0].0.statistic - d[0].1).abs() < 1e-12,
            "PSI is the PSI column"
        );
    }

    #[test]
    fn windows_merge_and_survive_serialization() {
        let p = profile();
        let (mut a, mut b) = (Window::new(&p, 1, 0.0), Window::new(&p, 2, 0.0));
        a.push(&p, &[Value::Number(1.0)]);
        b.push(&p, &[Value::Number(50.0)]);
        b.push_answer(&p, Answer::Probabilities(&[0.3, 0.7]));
        b.add_label(Answer::Probabilities(&[0.3, 0.7]), Truth::Class(1));
        a.merge(&b);
        assert_eq!(a.rows, 2);
        assert_eq!(a.realized.labeled(), 1);
        let bytes = postcard::to_stdvec(&a).unwrap();
        let back: Window = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, a);
        assert!(back.fits(&p));
    }
}
