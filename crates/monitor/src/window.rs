//! A version's live window: every logged row binned feature by feature on
//! the version's reference profile. O(bins) memory per feature.

use evergreen_model::profile::{CategoricalProfile, FeatureProfile, PredictionProfile, Profile};
use evergreen_model::schema::Value;

use crate::drift::{self, FeatureDrift, NumericWindow};

#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub enum PredictionWindow {
    /// Predicted-class counts, by class index.
    Classes(Vec<u64>),
    Values(NumericWindow),
}

#[derive(Debug, Clone)]
pub struct Window {
    pub rows: u64,
    pub features: Vec<FeatureWindow>,
    pub predictions: PredictionWindow,
}

/// One logged answer: class probabilities (classification) or a value.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    Probabilities(&'a [f64]),
    Value(f64),
}

fn category_index(p: &CategoricalProfile, s: &str) -> Option<usize> {
    p.categories.binary_search_by(|c| c.as_str().cmp(s)).ok()
}

impl Window {
    pub fn new(profile: &Profile) -> Self {
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
        let predictions = match &profile.predictions {
            PredictionProfile::Classification { class_counts, .. } => {
                PredictionWindow::Classes(vec![0; class_counts.len()])
            }
            PredictionProfile::Regression(p) => PredictionWindow::Values(NumericWindow::new(p)),
        };
        Window {
            rows: 0,
            features,
            predictions,
        }
    }

    /// Adds one answer of the model.
    pub fn push_answer(&mut self, profile: &Profile, answer: Answer) {
        match (&mut self.predictions, answer, &profile.predictions) {
            (PredictionWindow::Classes(c), Answer::Probabilities(p), _) if p.len() == c.len() => {
                c[evergreen_model::tree::argmax(p)] += 1;
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
                PredictionWindow::Classes(c),
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

    /// Per-feature verdicts plus PSI, with Evidently's default tests.
    pub fn drift(&self, profile: &Profile) -> Vec<(FeatureDrift, f64, u64, u64)> {
        self.features
            .iter()
            .zip(&profile.features)
            .map(|(w, p)| match (w, p) {
                (FeatureWindow::Numeric(w), FeatureProfile::Numeric(p)) => (
                    drift::numeric_drift(p, w),
                    drift::psi(&p.counts, &w.counts),
                    w.count(),
                    w.missing,
                ),
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
                    (
                        drift::categorical_drift(&r, &c),
                        drift::psi(&r, &c),
                        n,
                        *missing,
                    )
                }
                _ => unreachable!("windows are built from the same profile"),
            })
            .collect()
    }
}
