//! The fitted preprocessing pipeline: imputation, standardization, one-hot.
//!
//! Fitted on the training split only, stored in the artifact, and applied to
//! every row at serve time by [`Pipeline::transform_row`], which writes into
//! a caller-owned buffer and never allocates.

use serde::{Deserialize, Serialize};

use crate::error::PredictError;
use crate::schema::{Feature, FeatureKind, Value};

/// How missing numeric values are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Impute {
    Mean,
    Median,
}

impl std::str::FromStr for Impute {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mean" => Ok(Impute::Mean),
            "median" => Ok(Impute::Median),
            _ => Err(format!("expected mean or median, got {s:?}")),
        }
    }
}

/// One training column, as loaded from data.
#[derive(Debug, Clone)]
pub enum Column {
    /// NaN marks a missing value.
    Numeric(Vec<f64>),
    /// `codes[i]` indexes `vocab`; `MISSING_CODE` marks a missing value.
    Categorical { codes: Vec<u32>, vocab: Vec<String> },
}

pub const MISSING_CODE: u32 = u32::MAX;

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Numeric(v) => v.len(),
            Column::Categorical { codes, .. } => codes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` as a raw value.
    pub fn value(&self, i: usize) -> Value<'_> {
        match self {
            Column::Numeric(v) if v[i].is_nan() => Value::Missing,
            Column::Numeric(v) => Value::Number(v[i]),
            Column::Categorical { codes, .. } if codes[i] == MISSING_CODE => Value::Missing,
            Column::Categorical { codes, vocab } => Value::Text(&vocab[codes[i] as usize]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Step {
    Numeric {
        fill: f64,
        /// `(mean, std)` when the estimator wants standardized inputs.
        scale: Option<(f64, f64)>,
    },
    /// One output per category (sorted, as in the schema); `fill` is the
    /// most frequent category's index, used for missing values.
    Categorical { fill: u32, width: u32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub steps: Vec<Step>,
    pub width: usize,
}

impl Pipeline {
    /// Fits on the rows `train` of `columns`; returns the pipeline and the
    /// schema features (categorical vocabularies = categories seen in
    /// `train`).
    pub fn fit(
        names: &[String],
        columns: &[Column],
        train: &[usize],
        impute: Impute,
        standardize: bool,
    ) -> (Pipeline, Vec<Feature>) {
        let mut steps = Vec::with_capacity(columns.len());
        let mut features = Vec::with_capacity(columns.len());
        let mut width = 0;
        for (name, col) in names.iter().zip(columns) {
            match col {
                Column::Numeric(v) => {
                    let mut seen: Vec<f64> = train
                        .iter()
                        .map(|&i| v[i])
                        .filter(|x| !x.is_nan())
                        .collect();
                    let fill = match impute {
                        _ if seen.is_empty() => 0.0,
                        Impute::Mean => seen.iter().sum::<f64>() / seen.len() as f64,
                        Impute::Median => {
                            seen.sort_by(f64::total_cmp);
                            let m = seen.len() / 2;
                            if seen.len() % 2 == 1 {
                                seen[m]
                            } else {
                                (seen[m - 1] + seen[m]) / 2.0
                            }
                        }
                    };
                    let scale = standardize.then(|| {
                        let n = train.len().max(1) as f64;
                        let filled = || {
                            train
                                .iter()
                                .map(|&i| if v[i].is_nan() { fill } else { v[i] })
                        };
                        let mean = filled().sum::<f64>() / n;
                        let var = filled().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
                        let std = var.sqrt();
                        (mean, if std > 1e-12 { std } else { 1.0 })
                    });
                    steps.push(Step::Numeric { fill, scale });
                    features.push(Feature {
                        name: name.clone(),
                        kind: FeatureKind::Numeric,
                    });
                    width += 1;
                }
                Column::Categorical { codes, vocab } => {
                    let mut counts = vec![0u64; vocab.len()];
                    for &i in train {
                        if codes[i] != MISSING_CODE {
                            counts[codes[i] as usize] += 1;
                        }
                    }
                    let mut seen: Vec<(&String, u64)> =
                        vocab.iter().zip(counts).filter(|(_, c)| *c > 0).collect();
                    seen.sort();
                    // Most frequent; ties go to the first in sorted order.
                    let mut fill = 0u32;
                    let mut best = 0u64;
                    for (k, (_, c)) in seen.iter().enumerate() {
                        if *c > best {
                            best = *c;
                            fill = k as u32;
                        }
                    }
                    let categories: Vec<String> =
                        seen.into_iter().map(|(s, _)| s.clone()).collect();
                    let w = categories.len() as u32;
                    steps.push(Step::Categorical { fill, width: w });
                    features.push(Feature {
                        name: name.clone(),
                        kind: FeatureKind::Categorical { categories },
                    });
                    width += w as usize;
                }
            }
        }
        (Pipeline { steps, width }, features)
    }

    /// Transforms one raw row (values in schema order) into `out`
    /// (`out.len() == self.width`).
    pub fn transform_row(
        &self,
        features: &[Feature],
        row: &[Value],
        out: &mut [f64],
    ) -> Result<(), PredictError> {
        if row.len() != self.steps.len() {
            return Err(PredictError::Arity {
                expected: self.steps.len(),
                got: row.len(),
                names: features
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let mut at = 0;
        for ((step, feature), value) in self.steps.iter().zip(features).zip(row) {
            match (step, &feature.kind) {
                (Step::Numeric { fill, scale }, _) => {
                    let x = match *value {
                        Value::Missing => *fill,
                        Value::Number(x) if x.is_finite() => x,
                        Value::Number(x) => {
                            return Err(PredictError::NotFinite {
                                feature: feature.name.clone(),
                                value: x,
                            })
                        }
                        Value::Text(s) if s.trim().is_empty() => *fill,
                        Value::Text(s) => match s.trim().parse::<f64>() {
                            Ok(x) if x.is_finite() => x,
                            _ => {
                                return Err(PredictError::NotANumber {
                                    feature: feature.name.clone(),
                                    value: s.to_string(),
                                })
                            }
                        },
                    };
                    out[at] = match scale {
                        Some((m, s)) => (x - m) / s,
                        None => x,
                    };
                    at += 1;
                }
                (Step::Categorical { fill, width }, FeatureKind::Categorical { categories }) => {
                    let w = *width as usize;
                    let slot = &mut out[at..at + w];
                    slot.fill(0.0);
                    let hit = match *value {
                        Value::Missing => Some(*fill as usize),
                        Value::Text(s) => categories.binary_search_by(|c| c.as_str().cmp(s)).ok(),
                        Value::Number(x) => {
                            // Numbers name categories by their shortest form ("1", "2.5").
                            let mut buf = [0u8; 32];
                            let s = fmt_number(x, &mut buf);
                            categories.binary_search_by(|c| c.as_str().cmp(s)).ok()
                        }
                    };
                    // Unseen category: all zeros (scikit-learn's handle_unknown="ignore").
                    if let Some(k) = hit {
                        slot[k] = 1.0;
                    }
                    at += w;
                }
                (Step::Categorical { .. }, FeatureKind::Numeric) => {
                    unreachable!(
                        "artifact validation rejects a categorical step on a numeric feature"
                    )
                }
            }
        }
        Ok(())
    }

    /// Checks that the steps agree with the schema (for artifact loading).
    pub(crate) fn validate(&self, features: &[Feature]) -> Result<(), String> {
        if self.steps.len() != features.len() {
            return Err(format!(
                "pipeline has {} steps for {} features",
                self.steps.len(),
                features.len()
            ));
        }
        let mut width = 0usize;
        for (step, f) in self.steps.iter().zip(features) {
            match (step, &f.kind) {
                (Step::Numeric { .. }, FeatureKind::Numeric) => width += 1,
                (Step::Categorical { fill, width: w }, FeatureKind::Categorical { categories })
                    if *w as usize == categories.len()
                        && (categories.is_empty() || (*fill as usize) < categories.len()) =>
                {
                    width += *w as usize
                }
                _ => {
                    return Err(format!(
                        "pipeline step for feature {:?} does not match its type",
                        f.name
                    ))
                }
            }
        }
        if width != self.width {
            return Err(format!(
                "pipeline width {} does not match its steps ({width})",
                self.width
            ));
        }
        Ok(())
    }
}

/// Formats `x` the way categories read in a CSV would (no trailing ".0").
fn fmt_number(x: f64, buf: &mut [u8; 32]) -> &str {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cur, "{x}");
    let n = cur.position() as usize;
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_on_train_rows_only_and_encodes_unseen_as_zeros() {
        let names = vec!["x".to_string(), "c".to_string()];
        let cols = vec![
            Column::Numeric(vec![1.0, f64::NAN, 3.0, 100.0]),
            Column::Categorical {
                codes: vec![0, 1, 1, 2],
                vocab: vec!["b".into(), "a".into(), "z".into()],
            },
        ];
        let (p, feats) = Pipeline::fit(&names, &cols, &[0, 1, 2], Impute::Mean, false);
        assert_eq!(p.width, 3);
        assert_eq!(
            feats[1].kind,
            FeatureKind::Categorical {
                categories: vec!["a".into(), "b".into()]
            }
        );
        let mut out = [9.0; 3];
        p.transform_row(&feats, &[Value::Missing, Value::Missing], &mut out)
            .unwrap();
        assert_eq!(out, [2.0, 1.0, 0.0], "mean of 1 and 3; most frequent is a");
        p.transform_row(&feats, &[Value::Text("4"), Value::Text("z")], &mut out)
            .unwrap();
        assert_eq!(
            out,
            [4.0, 0.0, 0.0],
            "z was only in the held-out row: unseen"
        );
        let err = p.transform_row(&feats, &[Value::Text("abc"), Value::Missing], &mut out);
        assert!(matches!(err, Err(PredictError::NotANumber { .. })));
        let err = p.transform_row(
            &feats,
            &[Value::Number(f64::INFINITY), Value::Missing],
            &mut out,
        );
        assert!(matches!(err, Err(PredictError::NotFinite { .. })));
        let err = p.transform_row(&feats, &[Value::Missing], &mut out);
        assert!(matches!(
            err,
            Err(PredictError::Arity {
                expected: 2,
                got: 1,
                ..
            })
        ));
    }

    #[test]
    fn numbers_address_numeric_looking_categories() {
        let names = vec!["c".to_string()];
        let cols = vec![Column::Categorical {
            codes: vec![0, 1],
            vocab: vec!["1".into(), "2.5".into()],
        }];
        let (p, feats) = Pipeline::fit(&names, &cols, &[0, 1], Impute::Mean, false);
        let mut out = [0.0; 2];
        p.transform_row(&feats, &[Value::Number(2.5)], &mut out)
            .unwrap();
        assert_eq!(out, [0.0, 1.0]);
        p.transform_row(&feats, &[Value::Number(1.0)], &mut out)
            .unwrap();
        assert_eq!(out, [1.0, 0.0]);
    }

    #[test]
    fn standardizes_with_train_statistics() {
        let names = vec!["x".to_string()];
        let cols = vec![Column::Numeric(vec![0.0, 2.0, 1000.0])];
        let (p, feats) = Pipeline::fit(&names, &cols, &[0, 1], Impute::Median, true);
        let mut out = [0.0];
        p.transform_row(&feats, &[Value::Number(2.0)], &mut out)
            .unwrap();
        assert!((out[0] - 1.0).abs() < 1e-12);
    }
}
