//! Evaluation metrics, shared by the trainer (holdout, cross-validation,
//! champion/challenger) and the monitor (realized performance). Definitions
//! follow scikit-learn's: macro averages over the labels present in truth or
//! predictions, zero for an undefined precision or recall, one-vs-rest macro
//! ROC AUC for more than two classes.

use crate::tree::argmax;

#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub accuracy: f64,
    pub precision_macro: f64,
    pub recall_macro: f64,
    pub f1_macro: f64,
    pub precision_weighted: f64,
    pub recall_weighted: f64,
    pub f1_weighted: f64,
    /// `None` when undefined (a single class in the truth).
    pub roc_auc: Option<f64>,
    pub log_loss: f64,
    /// `confusion[actual][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Regression {
    pub rmse: f64,
    pub mae: f64,
    pub r2: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Metrics {
    Classification(Classification),
    Regression(Regression),
}

pub const CLASSIFICATION_METRICS: &[&str] = &[
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "roc_auc",
    "log_loss",
];
pub const REGRESSION_METRICS: &[&str] = &["rmse", "mae", "r2"];

/// Whether a larger value of `metric` is better.
pub fn higher_is_better(metric: &str) -> bool {
    !matches!(metric, "log_loss" | "rmse" | "mae")
}

impl Metrics {
    /// Named values, as stored on a version.
    pub fn entries(&self) -> Vec<(&'static str, f64)> {
        match self {
            Metrics::Classification(c) => {
                let mut v = vec![
                    ("accuracy", c.accuracy),
                    ("precision_macro", c.precision_macro),
                    ("recall_macro", c.recall_macro),
                    ("f1_macro", c.f1_macro),
                    ("precision_weighted", c.precision_weighted),
                    ("recall_weighted", c.recall_weighted),
                    ("f1_weighted", c.f1_weighted),
                    ("log_loss", c.log_loss),
                ];
                if let Some(a) = c.roc_auc {
                    v.push(("roc_auc", a));
                }
                v
            }
            Metrics::Regression(r) => vec![("rmse", r.rmse), ("mae", r.mae), ("r2", r.r2)],
        }
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.entries()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Classification metrics from true class ids and per-row probabilities
/// (`n_classes` per row, row-major).
pub fn classification(y: &[usize], proba: &[f64], n_classes: usize) -> Classification {
    let n = y.len();
    let mut confusion = vec![vec![0u64; n_classes]; n_classes];
    let mut log_loss = 0.0;
    for (row, &t) in proba.chunks(n_classes).zip(y) {
        confusion[t][argmax(row)] += 1;
        log_loss -= row[t].clamp(1e-15, 1.0 - 1e-15).ln();
    }
    let correct: u64 = (0..n_classes).map(|c| confusion[c][c]).sum();
    let support: Vec<u64> = confusion.iter().map(|r| r.iter().sum()).collect();
    let predicted: Vec<u64> = (0..n_classes)
        .map(|c| confusion.iter().map(|r| r[c]).sum())
        .collect();
    let present: Vec<usize> = (0..n_classes)
        .filter(|&c| support[c] > 0 || predicted[c] > 0)
        .collect();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (mut pm, mut rm, mut fm, mut pw, mut rw, mut fw) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for &c in &present {
        let tp = confusion[c][c];
        let p = ratio(tp, predicted[c]);
        let r = ratio(tp, support[c]);
        let f = if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        };
        let w = ratio(support[c], n as u64);
        pm += p;
        rm += r;
        fm += f;
        pw += w * p;
        rw += w * r;
        fw += w * f;
    }
    let k = present.len().max(1) as f64;
    Classification {
        accuracy: ratio(correct, n as u64),
        precision_macro: pm / k,
        recall_macro: rm / k,
        f1_macro: fm / k,
        precision_weighted: pw,
        recall_weighted: rw,
        f1_weighted: fw,
        roc_auc: roc_auc(y, proba, n_classes),
        log_loss: if n == 0 { 0.0 } else { log_loss / n as f64 },
        confusion,
    }
}

/// Binary: AUC of class 1's probability. More classes: one-vs-rest macro
/// average over the classes that have both positives and negatives.
fn roc_auc(y: &[usize], proba: &[f64], n_classes: usize) -> Option<f64> {
    let one = |c: usize| {
        let scores: Vec<f64> = proba.chunks(n_classes).map(|r| r[c]).collect();
        let positive: Vec<bool> = y.iter().map(|t| *t == c).collect();
        binary_auc(&scores, &positive)
    };
    if n_classes == 2 {
        return one(1);
    }
    let aucs: Vec<f64> = (0..n_classes).filter_map(one).collect();
    (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
}

/// Mann–Whitney AUC with average ranks for ties.
pub fn binary_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|p| **p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if positive[k] {
                rank_sum += avg_rank;
            }
        }
        i = j + 1;
    }
    let np = n_pos as f64;
    Some((rank_sum - np * (np + 1.0) / 2.0) / (np * n_neg as f64))
}

pub fn regression(y: &[f64], pred: &[f64]) -> Regression {
    let n = y.len().max(1) as f64;
    let mean = y.iter().sum::<f64>() / n;
    let (mut se, mut ae, mut tot) = (0.0, 0.0, 0.0);
    for (t, p) in y.iter().zip(pred) {
        se += (t - p) * (t - p);
        ae += (t - p).abs();
        tot += (t - mean) * (t - mean);
    }
    Regression {
        rmse: (se / n).sqrt(),
        mae: ae / n,
        r2: if tot == 0.0 { 0.0 } else { 1.0 - se / tot },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    // Expected values computed with scikit-learn 1.x by hand-checkable
    // definitions (see each comment).
    #[test]
    fn binary_metrics_match_definitions() {
        let y = [0, 0, 1, 1, 1];
        // p(class 1): 0.1, 0.6, 0.4, 0.8, 0.9 → predictions 0,1,0,1,1
        let p1 = [0.1, 0.6, 0.4, 0.8, 0.9];
        let proba: Vec<f64> = p1.iter().flat_map(|p| [1.0 - p, *p]).collect();
        let m = classification(&y, &proba, 2);
        close(m.accuracy, 0.6);
        assert_eq!(m.confusion, vec![vec![1, 1], vec![1, 2]]);
        // class 0: p=1/2 r=1/2 f=1/2; class 1: p=2/3 r=2/3 f=2/3
        close(m.precision_macro, (0.5 + 2.0 / 3.0) / 2.0);
        close(m.f1_weighted, 0.4 * 0.5 + 0.6 * 2.0 / 3.0);
        // AUC: positives {0.4,0.8,0.9} vs negatives {0.1,0.6}: 5 of 6 pairs ordered.
        close(m.roc_auc.unwrap(), 5.0 / 6.0);
        let ll =
            -((0.9f64).ln() + (0.4f64).ln() + (0.4f64).ln() + (0.8f64).ln() + (0.9f64).ln()) / 5.0;
        close(m.log_loss, ll);
    }

    #[test]
    fn auc_averages_ties_and_multiclass_is_ovr_macro() {
        close(binary_auc(&[0.5, 0.5], &[true, false]).unwrap(), 0.5);
        assert_eq!(binary_auc(&[0.1, 0.2], &[true, true]), None);
        // Perfectly separated 3 classes → 1.0.
        let y = [0, 1, 2];
        let proba = [0.8, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1, 0.1, 0.8];
        let m = classification(&y, &proba, 3);
        close(m.roc_auc.unwrap(), 1.0);
        close(m.f1_macro, 1.0);
    }

    #[test]
    fn regression_metrics() {
        let r = regression(&[1.0, 2.0, 3.0], &[1.0, 2.0, 5.0]);
        close(r.rmse, (4.0f64 / 3.0).sqrt());
        close(r.mae, 2.0 / 3.0);
        close(r.r2, 1.0 - 4.0 / 2.0);
    }
}
