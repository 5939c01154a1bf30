//! Drift statistics from binned counts.
//!
//! Live values are binned with the reference profile's frozen edges
//! (`evergreen_model::profile::bin_index`), so a window of any length costs
//! O(bins) memory per feature; every statistic here works on those counts.
//! Within a bin, values are treated as spread uniformly (for Wasserstein);
//! the underflow/overflow bins of the current window span from its own
//! min/max to the reference's edges.
//!
//! Default test per feature (Evidently's rules): numeric with ≤ 1000
//! reference rows → KS (drift when p < 0.05); numeric above that →
//! Wasserstein distance normed by the reference std (drift when ≥ 0.1);
//! categorical with ≤ 1000 reference rows → χ² (p < 0.05), above that →
//! Jensen–Shannon distance (≥ 0.1).

use evergreen_model::profile::{bin_index, NumericProfile};
use serde::{Deserialize, Serialize};

use crate::special::{chi2_sf, kolmogorov_sf};

/// Proportion used for an empty bin in PSI (as Evidently does).
pub const PSI_EPSILON: f64 = 1e-4;
/// Reference rows up to which KS / χ² are chosen over distances.
pub const SMALL_REFERENCE: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    Psi,
    Ks,
    Wasserstein,
    JensenShannon,
    ChiSquare,
}

impl Test {
    pub fn name(self) -> &'static str {
        match self {
            Test::Psi => "psi",
            Test::Ks => "ks",
            Test::Wasserstein => "wasserstein",
            Test::JensenShannon => "jensen_shannon",
            Test::ChiSquare => "chi2",
        }
    }

    /// Evidently's default threshold: p-value for tests, distance otherwise.
    pub fn default_threshold(self) -> f64 {
        match self {
            Test::Ks | Test::ChiSquare => 0.05,
            Test::Wasserstein | Test::JensenShannon => 0.1,
            Test::Psi => 0.1,
        }
    }
}

/// One feature's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    pub test: Test,
    /// The statistic (KS D, χ² statistic, or the distance).
    pub statistic: f64,
    /// For KS and χ².
    pub p_value: Option<f64>,
    pub threshold: f64,
    pub drifted: bool,
}

/// A window of one numeric feature, binned on the reference's edges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericWindow {
    pub counts: Vec<u64>,
    /// Sum of the values in each bin.
    pub sums: Vec<f64>,
    pub missing: u64,
    pub min: f64,
    pub max: f64,
}

impl NumericWindow {
    pub fn new(reference: &NumericProfile) -> Self {
        NumericWindow {
            counts: vec![0; reference.counts.len()],
            sums: vec![0.0; reference.counts.len()],
            missing: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    #[inline]
    pub fn push(&mut self, edges: &[f64], x: f64) {
        if x.is_nan() {
            self.missing += 1;
            return;
        }
        let b = bin_index(edges, x);
        self.counts[b] += 1;
        self.sums[b] += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, o: &NumericWindow) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        for (a, b) in self.sums.iter_mut().zip(&o.sums) {
            *a += b;
        }
        self.missing += o.missing;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

fn proportions(counts: &[u64]) -> Vec<f64> {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| if n == 0 { 0.0 } else { *c as f64 / n as f64 })
        .collect()
}

/// Population stability index: Σ (a − e) · ln(a / e) over bins, with
/// proportions a (current) and e (reference); empty bins count as
/// `PSI_EPSILON`.
pub fn psi(reference: &[u64], current: &[u64]) -> f64 {
    let e = proportions(reference);
    let a = proportions(current);
    e.iter()
        .zip(&a)
        .map(|(e, a)| {
            let e = if *e == 0.0 { PSI_EPSILON } else { *e };
            let a = if *a == 0.0 { PSI_EPSILON } else { *a };
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Two-sample Kolmogorov–Smirnov on binned counts: D is the largest CDF
/// difference at a bin boundary; the p-value is the asymptotic one.
pub fn ks(reference: &[u64], current: &[u64]) -> (f64, f64) {
    let n: u64 = reference.iter().sum();
    let m: u64 = current.iter().sum();
    if n == 0 || m == 0 {
        return (0.0, 1.0);
    }
    let (mut fr, mut fc, mut d) = (0u64, 0u64, 0.0f64);
    for (r, c) in reference.iter().zip(current) {
        fr += r;
        fc += c;
        d = d.max((fr as f64 / n as f64 - fc as f64 / m as f64).abs());
    }
    let en = ((n as f64 * m as f64) / (n + m) as f64).sqrt();
    (d, kolmogorov_sf(en * d))
}

/// First Wasserstein distance, W = ∫ |F_ref − F_cur| dx, from binned counts
/// and per-bin sums. Over a bin [lo, hi), ∫ F dx is exactly
/// P(before)·(hi − lo) + p(bin)·hi − Σ(values in bin)/n, so each bin's
/// signed area is exact; W adds their absolute values, which is exact
/// except in a bin where the two CDFs cross. `edges` are the reference's;
/// the current window's min/max bound the underflow/overflow bins.
pub fn wasserstein(reference: &NumericProfile, current: &NumericWindow) -> f64 {
    let edges = &reference.edges;
    let n: u64 = reference.counts.iter().sum();
    let m = current.count();
    if n == 0 || m == 0 {
        return 0.0;
    }
    let last = edges.len() - 1;
    let lo_u = current.min.min(edges[0]);
    let hi_o = current.max.max(edges[last]);
    let (n, m) = (n as f64, m as f64);
    let (mut before_r, mut before_c, mut total) = (0.0f64, 0.0f64, 0.0f64);
    for b in 0..reference.counts.len() {
        let (lo, hi) = if b == 0 {
            (lo_u, edges[0])
        } else if b == edges.len() {
            (edges[last], hi_o)
        } else {
            (edges[b - 1], edges[b])
        };
        let (pr, pc) = (reference.counts[b] as f64 / n, current.counts[b] as f64 / m);
        let area_r = before_r * (hi - lo) + pr * hi - reference.sums[b] / n;
        let area_c = before_c * (hi - lo) + pc * hi - current.sums[b] / m;
        total += (area_r - area_c).abs();
        before_r += pr;
        before_c += pc;
    }
    total
}

/// The same distance with values spread uniformly within each bin, for
/// counts without sums (e.g. prediction histograms).
pub fn wasserstein_uniform(edges: &[f64], reference: &[u64], current: &NumericWindow) -> f64 {
    let n: u64 = reference.iter().sum();
    let m = current.count();
    if n == 0 || m == 0 {
        return 0.0;
    }
    let last = edges.len() - 1;
    // Bin b spans [lo(b), hi(b)].
    let lo_u = current.min.min(edges[0]);
    let hi_o = current.max.max(edges[last]);
    let span = |b: usize| -> (f64, f64) {
        if b == 0 {
            (lo_u, edges[0])
        } else if b == edges.len() {
            (edges[last], hi_o)
        } else {
            (edges[b - 1], edges[b])
        }
    };
    let (mut fr, mut fc) = (0.0f64, 0.0f64);
    let mut total = 0.0;
    for (b, (r, c)) in reference.iter().zip(&current.counts).enumerate() {
        let (lo, hi) = span(b);
        let width = hi - lo;
        let (pr, pc) = (*r as f64 / n as f64, *c as f64 / m as f64);

        let d0 = fr - fc;
        fr += pr;
        fc += pc;
        let d1 = fr - fc;
        if width > 0.0 {
            total += if d0 * d1 >= 0.0 {
                (d0.abs() + d1.abs()) / 2.0 * width
            } else {
                (d0 * d0 + d1 * d1) / (2.0 * (d0 - d1).abs()) * width
            };
        }
    }
    total
}

/// Jensen–Shannon distance (natural log, as scipy's default) between two
/// count vectors over the same categories or bins.
pub fn jensen_shannon(reference: &[u64], current: &[u64]) -> f64 {
    let p = proportions(reference);
    let q = proportions(current);
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, m)| a * (a / m).ln())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a + b) / 2.0).collect();
    ((kl(&p, &m) + kl(&q, &m)) / 2.0).max(0.0).sqrt()
}

/// Pearson's χ² of the current counts against the reference proportions
/// (categories the reference never saw are expected at `PSI_EPSILON`).
pub fn chi_square(reference: &[u64], current: &[u64]) -> (f64, f64) {
    let m: u64 = current.iter().sum();
    let e = proportions(reference);
    let mut stat = 0.0;
    let mut k = 0;
    for (e, c) in e.iter().zip(current) {
        let expected = e.max(PSI_EPSILON) * m as f64;
        if *e > 0.0 || *c > 0 {
            k += 1;
            stat += (*c as f64 - expected).powi(2) / expected;
        }
    }
    let df = (k.max(2) - 1) as f64;
    (stat, chi2_sf(stat, df))
}

/// The default verdict for a numeric feature (Evidently's rule).
pub fn numeric_drift(reference: &NumericProfile, window: &NumericWindow) -> FeatureDrift {
    if reference.count <= SMALL_REFERENCE {
        let (d, p) = ks(&reference.counts, &window.counts);
        let t = Test::Ks.default_threshold();
        FeatureDrift {
            test: Test::Ks,
            statistic: d,
            p_value: Some(p),
            threshold: t,
            drifted: p < t,
        }
    } else {
        let w = wasserstein(reference, window);

        let normed = if reference.std > 0.0 {
            w / reference.std
        } else {
            w
        };
        let t = Test::Wasserstein.default_threshold();
        FeatureDrift {
            test: Test::Wasserstein,
            statistic: normed,
            p_value: None,
            threshold: t,
            drifted: normed >= t,
        }
    }
}

/// The default verdict for a categorical feature; `reference` and
/// `current` count the same categories in the same order.
pub fn categorical_drift(reference: &[u64], current: &[u64]) -> FeatureDrift {
    let n: u64 = reference.iter().sum();
    if n <= SMALL_REFERENCE {
        let (s, p) = chi_square(reference, current);
        let t = Test::ChiSquare.default_threshold();
        FeatureDrift {
            test: Test::ChiSquare,
            statistic: s,
            p_value: Some(p),
            threshold: t,
            drifted: p < t,
        }
    } else {
        let d = jensen_shannon(reference, current);
        let t = Test::JensenShannon.default_threshold();
        FeatureDrift {
            test: Test::JensenShannon,
            statistic: d,
            p_value: None,
            threshold: t,
            drifted: d >= t,
        }
    }
}

/// A chosen test (a policy override) instead of the default rule; `threshold`
/// overrides the test's default (a p-value for KS/χ², a distance otherwise).
/// `reference`/`current` are binned counts; `numeric` carries the profile
/// and window when the feature is numeric (for Wasserstein).
pub fn verdict(
    test: Test,
    threshold: Option<f64>,
    reference: &[u64],
    current: &[u64],
    numeric: Option<(&NumericProfile, &NumericWindow)>,
) -> FeatureDrift {
    let t = threshold.unwrap_or(test.default_threshold());
    let (statistic, p_value) = match (test, numeric) {
        (Test::Ks, _) => {
            let (d, p) = ks(reference, current);
            (d, Some(p))
        }
        (Test::ChiSquare, _) => {
            let (s, p) = chi_square(reference, current);
            (s, Some(p))
        }
        (Test::Psi, _) => (psi(reference, current), None),
        (Test::JensenShannon, _) => (jensen_shannon(reference, current), None),
        (Test::Wasserstein, Some((r, w))) => {
            let d = wasserstein(r, w);
            (if r.std > 0.0 { d / r.std } else { d }, None)
        }
        // Wasserstein needs an ordered axis: categories fall back to JS.
        (Test::Wasserstein, None) => (jensen_shannon(reference, current), None),
    };
    let drifted = match p_value {
        Some(p) => p < t,
        None => statistic >= t,
    };
    FeatureDrift {
        test,
        statistic,
        p_value,
        threshold: t,
        drifted,
    }
}

/// Dataset-level drift: the share of drifted features reaches `share`.
pub fn dataset_drift(features: &[FeatureDrift], share: f64) -> bool {
    !features.is_empty()
        && features.iter().filter(|f| f.drifted).count() as f64 / features.len() as f64 >= share
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() < tol, "{a} vs {b}");
    }

    #[test]
    fn psi_is_the_textbook_formula() {
        let r = [10, 20, 30, 40];
        let c = [40, 30, 20, 10];
        let expected: f64 = [(0.4, 0.1), (0.3, 0.2), (0.2, 0.3), (0.1, 0.4)]
            .iter()
            .map(|(a, e): &(f64, f64)| (a - e) * (a / e).ln())
            .sum();
        close(psi(&r, &c), expected, 1e-12);
        close(psi(&r, &r), 0.0, 1e-15);
        // An empty bin uses the epsilon instead of dividing by zero.
        assert!(psi(&[0, 10], &[5, 5]).is_finite());
    }

    #[test]
    fn identical_windows_show_no_drift_and_shifted_ones_do() {
        let edges: Vec<f64> = (0..=10).map(f64::from).collect();
        let reference: Vec<u64> = [0].into_iter().chain([100; 10]).chain([0]).collect();
        let same = NumericWindow {
            counts: reference.clone(),
            sums: vec![0.0; 12],
            missing: 0,
            min: 0.0,
            max: 10.0,
        };
        assert_eq!(wasserstein_uniform(&edges, &reference, &same), 0.0);
        assert_eq!(ks(&reference, &same.counts).0, 0.0);
        // Everything moved one bin up: W = 1 (one unit), KS = 0.1.
        let mut shifted = vec![0u64; 12];
        shifted[2..12].copy_from_slice(&[100; 10]);
        let w = NumericWindow {
            counts: shifted.clone(),
            sums: vec![0.0; 12],
            missing: 0,
            min: 1.0,
            max: 11.0,
        };
        close(wasserstein_uniform(&edges, &reference, &w), 1.0, 1e-12);

        close(ks(&reference, &shifted).0, 0.1, 1e-12);
        close(jensen_shannon(&[1, 0], &[0, 1]), (2f64.ln()).sqrt(), 1e-12);
        let (s, p) = chi_square(&[50, 50], &[50, 50]);
        assert_eq!((s, p), (0.0, 1.0));
    }
}

#[cfg(test)]
mod exact_tests {
    use super::*;

    /// With per-bin sums the binned distance equals the exact one on raw
    /// samples when the CDFs do not cross inside a bin.
    #[test]
    fn wasserstein_from_sums_is_exact_for_a_shift() {
        let reference: Vec<f64> = (0..1000).map(|i| i as f64 / 10.0).collect();
        let current: Vec<f64> = reference.iter().map(|x| x + 2.5).collect();
        let profile = NumericProfile::from_values(reference.iter().copied(), 20);
        let mut w = NumericWindow::new(&profile);
        for x in &current {
            w.push(&profile.edges, *x);
        }
        // Exact W1 of a pure shift is the shift.
        assert!(
            (wasserstein(&profile, &w) - 2.5).abs() < 1e-9,
            "{}",
            wasserstein(&profile, &w)
        );
    }
}
