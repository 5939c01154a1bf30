//! Streaming performance: realized (labels joined to predictions) and
//! estimated without labels (CBPE, as NannyML), plus service health. Every
//! accumulator is O(classes² + classes · bins), independent of traffic.

use serde::{Deserialize, Serialize};

/// Bins of the per-class score histograms used for ROC AUC.
pub const SCORE_BINS: usize = 100;

fn score_bin(p: f64) -> usize {
    ((p.clamp(0.0, 1.0) * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1)
}

/// A confusion matrix and per-class score histograms with real-valued
/// counts: whole rows for realized performance, expected fractions of rows
/// for CBPE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassPerf {
    pub classes: usize,
    /// `confusion[true * classes + predicted]`.
    pub confusion: Vec<f64>,
    /// Per class c, per score bin of p(c): weight of rows whose class is c
    /// (`pos`) and is not (`neg`).
    pub pos: Vec<f64>,
    pub neg: Vec<f64>,
    pub rows: f64,
}

impl ClassPerf {
    pub fn new(classes: usize) -> Self {
        ClassPerf {
            classes,
            confusion: vec![0.0; classes * classes],
            pos: vec![0.0; classes * SCORE_BINS],
            neg: vec![0.0; classes * SCORE_BINS],
            rows: 0.0,
        }
    }

    /// A labeled row: `probabilities` as served, `truth` the true class.
    pub fn add_labeled(&mut self, probabilities: &[f64], truth: usize) {
        let k = self.classes;
        if probabilities.len() != k || truth >= k {
            return;
        }
        let pred = evergreen_model::tree::argmax(probabilities);
        self.confusion[truth * k + pred] += 1.0;
        for (c, p) in probabilities.iter().enumerate() {
            let b = c * SCORE_BINS + score_bin(*p);
            if c == truth {
                self.pos[b] += 1.0;
            } else {
                self.neg[b] += 1.0;
            }
        }
        self.rows += 1.0;
    }

    /// CBPE: an unlabeled row counts as class j with probability p(j),
    /// taking the model's probabilities as calibrated.
    pub fn add_expected(&mut self, probabilities: &[f64]) {
        let k = self.classes;
        if probabilities.len() != k {
            return;
        }
        let pred = evergreen_model::tree::argmax(probabilities);
        for (j, p) in probabilities.iter().enumerate() {
            let p = p.clamp(0.0, 1.0);
            self.confusion[j * k + pred] += p;
            let b = j * SCORE_BINS + score_bin(p);
            self.pos[b] += p;
            self.neg[b] += 1.0 - p;
        }
        self.rows += 1.0;
    }

    pub fn accuracy(&self) -> Option<f64> {
        let k = self.classes;
        let total: f64 = self.confusion.iter().sum();
        (total > 0.0).then(|| (0..k).map(|c| self.confusion[c * k + c]).sum::<f64>() / total)
    }

    /// Macro F1 over all classes (a class never predicted nor present
    /// scores 0, as scikit-learn's zero_division=0 over the model's labels).
    pub fn f1_macro(&self) -> Option<f64> {
        let k = self.classes;
        if self.rows == 0.0 || k == 0 {
            return None;
        }
        let mut sum = 0.0;
        for c in 0..k {
            let tp = self.confusion[c * k + c];
            let predicted: f64 = (0..k).map(|t| self.confusion[t * k + c]).sum();
            let actual: f64 = (0..k).map(|p| self.confusion[c * k + p]).sum();
            let denom = predicted + actual;
            sum += if denom > 0.0 { 2.0 * tp / denom } else { 0.0 };
        }
        Some(sum / k as f64)
    }

    /// ROC AUC from the score histograms (ties within a bin count half),
    /// one-vs-rest averaged over classes that have both positives and
    /// negatives. Binary: both classes give the same value.
    pub fn roc_auc(&self) -> Option<f64> {
        let mut aucs = Vec::new();
        for c in 0..self.classes {
            let pos = &self.pos[c * SCORE_BINS..(c + 1) * SCORE_BINS];
            let neg = &self.neg[c * SCORE_BINS..(c + 1) * SCORE_BINS];
            let (p, n): (f64, f64) = (pos.iter().sum(), neg.iter().sum());
            if p <= 0.0 || n <= 0.0 {
                continue;
            }
            let mut below = 0.0;
            let mut area = 0.0;
            for b in 0..SCORE_BINS {
                area += pos[b] * (below + 0.5 * neg[b]);
                below += neg[b];
            }
            aucs.push(area / (p * n));
        }
        (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
    }

    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        [
            ("accuracy", self.accuracy()),
            ("f1_macro", self.f1_macro()),
            ("roc_auc", self.roc_auc()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    pub fn merge(&mut self, other: &ClassPerf) {
        for (a, b) in self.confusion.iter_mut().zip(&other.confusion) {
            *a += b;
        }
        for (a, b) in self.pos.iter_mut().zip(&other.pos) {
            *a += b;
        }
        for (a, b) in self.neg.iter_mut().zip(&other.neg) {
            *a += b;
        }
        self.rows += other.rows;
    }
}

/// Realized regression error, from sums.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegPerf {
    pub n: f64,
    pub se: f64,
    pub ae: f64,
    pub y: f64,
    pub y2: f64,
}

impl RegPerf {
    pub fn add(&mut self, predicted: f64, truth: f64) {
        let e = truth - predicted;
        self.n += 1.0;
        self.se += e * e;
        self.ae += e.abs();
        self.y += truth;
        self.y2 += truth * truth;
    }

    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        if self.n == 0.0 {
            return vec![];
        }
        let sst = self.y2 - self.y * self.y / self.n;
        let mut m = vec![
            ("rmse", (self.se / self.n).sqrt()),
            ("mae", self.ae / self.n),
        ];
        if sst > 0.0 {
            m.push(("r2", 1.0 - self.se / sst));
        }
        m
    }

    pub fn merge(&mut self, o: &RegPerf) {
        self.n += o.n;
        self.se += o.se;
        self.ae += o.ae;
        self.y += o.y;
        self.y2 += o.y2;
    }
}

/// Realized performance of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Realized {
    Class(ClassPerf),
    Reg(RegPerf),
}

impl Realized {
    pub fn labeled(&self) -> u64 {
        match self {
            Realized::Class(c) => c.rows as u64,
            Realized::Reg(r) => r.n as u64,
        }
    }

    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        match self {
            Realized::Class(c) => c.metrics(),
            Realized::Reg(r) => r.metrics(),
        }
    }

    pub fn merge(&mut self, o: &Realized) {
        match (self, o) {
            (Realized::Class(a), Realized::Class(b)) => a.merge(b),
            (Realized::Reg(a), Realized::Reg(b)) => a.merge(b),
            _ => {}
        }
    }
}

/// CBPE accuracy of a binary classifier from a histogram of p(class 1) in
/// equal-width bins (bin midpoints): the expected share of rows whose
/// predicted class is the true one. The same rule is applied to the
/// reference holdout and to a window, so their difference is unbiased by
/// the binning.
pub fn binary_expected_accuracy(p1_counts: &[u64]) -> Option<f64> {
    let n: u64 = p1_counts.iter().sum();
    if n == 0 {
        return None;
    }
    let bins = p1_counts.len() as f64;
    let s: f64 = p1_counts
        .iter()
        .enumerate()
        .map(|(b, c)| {
            let mid = (b as f64 + 0.5) / bins;
            *c as f64 * mid.max(1.0 - mid)
        })
        .sum();
    Some(s / n as f64)
}

/// Latency (log-spaced buckets, 4 per power of two of µs) and error counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCounts {
    pub requests: u64,
    pub errors: u64,
    pub latency: Vec<u64>,
}

const LATENCY_BUCKETS: usize = 4 * 40;

fn latency_bucket(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    (((us as f64).log2() * 4.0) as usize + 1).min(LATENCY_BUCKETS - 1)
}

fn bucket_upper_us(b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        2f64.powf(b as f64 / 4.0)
    }
}

impl Default for HealthCounts {
    fn default() -> Self {
        HealthCounts {
            requests: 0,
            errors: 0,
            latency: vec![0; LATENCY_BUCKETS],
        }
    }
}

impl HealthCounts {
    pub fn add(&mut self, latency_us: u64, error: bool) {
        self.requests += 1;
        if error {
            self.errors += 1;
        } else {
            self.latency[latency_bucket(latency_us)] += 1;
        }
    }

    /// The q-quantile of successful requests' latency, in ms (the bucket's
    /// upper bound: at most 19% above the true value).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let n: u64 = self.latency.iter().sum();
        if n == 0 {
            return 0.0;
        }
        let rank = (q * n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, c) in self.latency.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper_us(b) / 1000.0;
            }
        }
        bucket_upper_us(LATENCY_BUCKETS - 1) / 1000.0
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    pub fn merge(&mut self, o: &HealthCounts) {
        self.requests += o.requests;
        self.errors += o.errors;
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evergreen_model::metrics;

    #[test]
    fn realized_metrics_match_the_batch_metrics() {
        // 3 classes, 300 rows with varied probabilities and some errors.
        let mut rng = evergreen_model::rng::Rng::new(7, 0);
        let (mut y, mut proba) = (vec![], vec![]);
        let mut perf = ClassPerf::new(3);
        for _ in 0..300 {
            let raw = [rng.unit(), rng.unit(), rng.unit()];
            let s: f64 = raw.iter().sum();
            let p: Vec<f64> = raw.iter().map(|x| x / s).collect();
            let t = rng.below(3);
            perf.add_labeled(&p, t);
            y.push(t);
            proba.extend_from_slice(&p);
        }
        let batch = metrics::classification(&y, &proba, 3);
        assert!((perf.accuracy().unwrap() - batch.accuracy).abs() < 1e-12);
        assert!((perf.f1_macro().unwrap() - batch.f1_macro).abs() < 1e-12);
        // AUC from 100-bin histograms: close to the exact rank statistic.
        assert!((perf.roc_auc().unwrap() - batch.roc_auc.unwrap()).abs() < 0.01);
    }

    #[test]
    fn cbpe_of_calibrated_probabilities_estimates_the_realized_accuracy() {
        // Labels drawn from the probabilities themselves: calibrated, so the
        // estimate must approach the realized accuracy.
        let mut rng = evergreen_model::rng::Rng::new(11, 0);
        let mut realized = ClassPerf::new(2);
        let mut estimated = ClassPerf::new(2);
        for _ in 0..20_000 {
            let p1 = rng.unit();
            let p = [1.0 - p1, p1];
            let t = usize::from(rng.unit() < p1);
            realized.add_labeled(&p, t);
            estimated.add_expected(&p);
        }
        let (r, e) = (realized.accuracy().unwrap(), estimated.accuracy().unwrap());
        assert!((r - 0.75).abs() < 0.01, "realized {r}");
        assert!((e - r).abs() < 0.01, "estimated {e} vs realized {r}");
        let (ra, ea) = (realized.roc_auc().unwrap(), estimated.roc_auc().unwrap());
        assert!(
            (ra - ea).abs() < 0.02,
            "AUC estimated {ea} vs realized {ra}"
        );
    }

    #[test]
    fn regression_metrics_match_the_batch_metrics() {
        let y = [1.0, 2.0, 3.0, 4.0, 10.0];
        let p = [1.5, 2.0, 2.0, 5.0, 8.0];
        let mut r = RegPerf::default();
        for (t, q) in y.iter().zip(&p) {
            r.add(*q, *t);
        }
        let batch = metrics::regression(&y, &p);
        let m: std::collections::HashMap<_, _> = r.metrics().into_iter().collect();
        assert!((m["rmse"] - batch.rmse).abs() < 1e-12);
        assert!((m["mae"] - batch.mae).abs() < 1e-12);
        assert!((m["r2"] - batch.r2).abs() < 1e-12);
    }

    #[test]
    fn latency_quantiles_are_within_a_bucket() {
        let mut h = HealthCounts::default();
        for us in 1..=1000u64 {
            h.add(us * 10, false); // 10 µs .. 10 ms
        }
        h.add(0, true);
        let p50 = h.quantile_ms(0.5);
        let p99 = h.quantile_ms(0.99);
        assert!((5.0..=5.0 * 1.19).contains(&p50), "p50 {p50}");
        assert!((9.9..=9.9 * 1.19).contains(&p99), "p99 {p99}");
        assert!((h.error_rate() - 1.0 / 1001.0).abs() < 1e-12);
    }

    #[test]
    fn expected_accuracy_from_a_histogram() {
        // All mass at p1 in [0.9, 0.95): expected accuracy 0.925.
        let mut c = vec![0u64; 20];
        c[18] = 10;
        assert!((binary_expected_accuracy(&c).unwrap() - 0.925).abs() < 1e-12);
        assert_eq!(binary_expected_accuracy(&[0; 20]), None);
    }
}
