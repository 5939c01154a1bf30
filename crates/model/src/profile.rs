//! The reference data profile: what "normal" looked like at training time,
//! frozen in the artifact for the monitor to compare live traffic against.
//! Compact by construction: O(bins) per feature, never the data itself.

use serde::{Deserialize, Serialize};

use crate::pipeline::{Column, MISSING_CODE};

/// Default number of quantile bins per numeric feature.
pub const DEFAULT_BINS: usize = 100;
/// Equal-width bins for predicted probabilities on [0, 1].
pub const PROBABILITY_BINS: usize = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericProfile {
    pub count: u64,
    pub missing: u64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Sorted, at least two; see [`bin_index`] for the bins they define.
    pub edges: Vec<f64>,
    /// `edges.len() + 1` counts: underflow, interior bins, overflow.
    pub counts: Vec<u64>,
    /// Sum of the values in each bin (same length as `counts`): with the
    /// counts, it makes the Wasserstein distance from bins exact up to
    /// where the two CDFs cross inside a bin.
    pub sums: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalProfile {
    pub count: u64,
    pub missing: u64,
    /// Sorted categories and their counts.
    pub categories: Vec<String>,
    pub counts: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FeatureProfile {
    Numeric(NumericProfile),
    Categorical(CategoricalProfile),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PredictionProfile {
    Classification {
        rows: u64,
        /// Predicted-label counts, by class index.
        class_counts: Vec<u64>,
        /// Per class, counts of its predicted probability in
        /// `PROBABILITY_BINS` equal-width bins over [0, 1].
        probability_counts: Vec<Vec<u64>>,
    },
    Regression(NumericProfile),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Training rows profiled.
    pub rows: u64,
    /// One per schema feature, same order.
    pub features: Vec<FeatureProfile>,
    /// Model outputs on the holdout.
    pub predictions: PredictionProfile,
}

/// The bin of `x` for `edges` (`e0 < … < em`, m ≥ 1): 0 is underflow
/// (`x < e0`), `1..m` are `[e(i-1), e(i))` with the last one closed
/// (`[e(m-1), em]`), and `m + 1`… is overflow (`x > em`). Returns an index
/// into `counts` (length `edges.len() + 1`).
pub fn bin_index(edges: &[f64], x: f64) -> usize {
    let m = edges.len();
    if x < edges[0] {
        return 0;
    }
    if x > edges[m - 1] {
        return m;
    }
    // Number of interior edges <= x, capped so that x == em is in the last bin.
    1 + edges[1..].partition_point(|e| *e <= x).min(m - 2)
}

/// Sorts into IEEE total order (as `f64::total_cmp`): LSD radix sort on the
/// order-preserving integer image of the bits, 11 bits per pass, for large
/// inputs (profiling sorts every numeric column once; this is ~4× faster
/// than a comparison sort at 100k values); a comparison sort for small ones.
pub fn sort_floats(v: &mut Vec<f64>) {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    if v.len() < 4096 {
        v.sort_unstable_by(f64::total_cmp);
        return;
    }
    let key = |x: f64| {
        let b = x.to_bits();
        if b >> 63 == 1 {
            !b
        } else {
            b | (1 << 63)
        }
    };
    let mut keys: Vec<u64> = v.iter().map(|x| key(*x)).collect();
    let mut tmp = vec![0u64; keys.len()];
    let mut shift = 0;
    while shift < 64 {
        let mut counts = [0usize; BUCKETS];
        for k in &keys {
            counts[((k >> shift) as usize) & (BUCKETS - 1)] += 1;
        }
        // A pass where every key has the same digit changes nothing.
        if counts.iter().any(|c| *c == keys.len()) {
            shift += BITS;
            continue;
        }
        let mut pos = 0;
        for c in counts.iter_mut() {
            let n = *c;
            *c = pos;
            pos += n;
        }
        for k in &keys {
            let d = ((k >> shift) as usize) & (BUCKETS - 1);
            tmp[counts[d]] = *k;
            counts[d] += 1;
        }
        std::mem::swap(&mut keys, &mut tmp);
        shift += BITS;
    }
    for (x, k) in v.iter_mut().zip(&keys) {
        let b = if k >> 63 == 1 { k & !(1 << 63) } else { !k };
        *x = f64::from_bits(b);
    }
}

impl NumericProfile {
    /// Profiles `values` (NaN = missing) with up to `bins` quantile bins.
    pub fn from_values(values: impl Iterator<Item = f64>, bins: usize) -> NumericProfile {
        let mut missing = 0u64;
        let mut v: Vec<f64> = Vec::new();
        for x in values {
            if x.is_nan() {
                missing += 1;
            } else {
                v.push(x);
            }
        }
        sort_floats(&mut v);
        let n = v.len();
        if n == 0 {
            return NumericProfile {
                count: 0,
                missing,
                mean: 0.0,
                std: 0.0,
                min: 0.0,
                max: 0.0,
                edges: vec![0.0, 0.0],
                counts: vec![0, 0, 0],
                sums: vec![0.0; 3],
            };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64).sqrt();
        let bins = bins.max(1);
        let mut edges: Vec<f64> = (0..=bins).map(|i| v[i * (n - 1) / bins]).collect();
        edges.dedup();
        if edges.len() == 1 {
            edges.push(edges[0]);
        }
        let mut counts = vec![0u64; edges.len() + 1];
        let mut sums = vec![0.0f64; edges.len() + 1];
        for x in &v {
            let b = bin_index(&edges, *x);
            counts[b] += 1;
            sums[b] += *x;
        }
        NumericProfile {
            count: n as u64,
            missing,
            mean,
            std,
            min: v[0],
            max: v[n - 1],
            edges,
            counts,
            sums,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.edges.len() < 2
            || self.counts.len() != self.edges.len() + 1
            || self.sums.len() != self.counts.len()
            || self.edges.iter().any(|e| e.is_nan())
            || self.edges.windows(2).any(|w| w[0] > w[1])
        {
            return Err("numeric profile has malformed bins".into());
        }
        Ok(())
    }
}

impl FeatureProfile {
    /// Profiles training rows `rows` of one column.
    pub fn of_column(col: &Column, rows: &[usize], bins: usize) -> FeatureProfile {
        match col {
            Column::Numeric(v) => FeatureProfile::Numeric(NumericProfile::from_values(
                rows.iter().map(|&i| v[i]),
                bins,
            )),
            Column::Categorical { codes, vocab } => {
                let mut counts = vec![0u64; vocab.len()];
                let mut missing = 0;
                for &i in rows {
                    match codes[i] {
                        MISSING_CODE => missing += 1,
                        c => counts[c as usize] += 1,
                    }
                }
                let mut pairs: Vec<(String, u64)> = vocab
                    .iter()
                    .cloned()
                    .zip(counts)
                    .filter(|(_, c)| *c > 0)
                    .collect();
                pairs.sort();
                let count = pairs.iter().map(|(_, c)| c).sum();
                let (categories, counts) = pairs.into_iter().unzip();
                FeatureProfile::Categorical(CategoricalProfile {
                    count,
                    missing,
                    categories,
                    counts,
                })
            }
        }
    }
}

impl PredictionProfile {
    /// From per-row class probabilities (`n_classes` each, row-major).
    pub fn classification(probabilities: &[f64], n_classes: usize) -> PredictionProfile {
        let rows = probabilities.len() / n_classes.max(1);
        let mut class_counts = vec![0u64; n_classes];
        let mut probability_counts = vec![vec![0u64; PROBABILITY_BINS]; n_classes];
        for row in probabilities.chunks(n_classes.max(1)) {
            class_counts[crate::tree::argmax(row)] += 1;
            for (c, p) in row.iter().enumerate() {
                let b = ((p * PROBABILITY_BINS as f64) as usize).min(PROBABILITY_BINS - 1);
                probability_counts[c][b] += 1;
            }
        }
        PredictionProfile::Classification {
            rows: rows as u64,
            class_counts,
            probability_counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_sort_is_the_total_order() {
        let mut rng = crate::rng::Rng::new(3, 0);
        let mut v: Vec<f64> = (0..20_000)
            .map(|i| match i % 7 {
                0 => -rng.unit() * 1e6,
                1 => rng.unit() * 1e-300,
                2 => (rng.below(10) as f64) - 5.0,
                3 => -0.0,
                4 => f64::INFINITY,
                5 => f64::NEG_INFINITY,
                _ => rng.unit(),
            })
            .collect();
        let mut expected = v.clone();
        expected.sort_unstable_by(f64::total_cmp);
        sort_floats(&mut v);
        assert!(v
            .iter()
            .zip(&expected)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn bins_cover_underflow_interior_and_overflow() {
        let e = [0.0, 1.0, 2.0];
        assert_eq!(bin_index(&e, -0.1), 0);
        assert_eq!(bin_index(&e, 0.0), 1);
        assert_eq!(bin_index(&e, 0.99), 1);
        assert_eq!(bin_index(&e, 1.0), 2);
        assert_eq!(bin_index(&e, 2.0), 2, "the max is in the last interior bin");
        assert_eq!(bin_index(&e, 2.01), 3);
        assert_eq!(bin_index(&[5.0, 5.0], 5.0), 1);
    }

    #[test]
    fn numeric_profile_is_quantile_binned_with_stats() {
        let p = NumericProfile::from_values((0..1000).map(|i| i as f64).chain([f64::NAN]), 10);
        assert_eq!((p.count, p.missing, p.min, p.max), (1000, 1, 0.0, 999.0));
        assert!((p.mean - 499.5).abs() < 1e-9);
        assert_eq!(p.edges.len(), 11);
        assert_eq!(p.counts[0], 0);
        assert_eq!(*p.counts.last().unwrap(), 0);
        assert!(
            p.counts[1..11].iter().all(|c| (99..=101).contains(c)),
            "{:?}",
            p.counts
        );
        assert_eq!(p.counts.iter().sum::<u64>(), 1000);
    }

    #[test]
    fn constant_feature_gets_one_interior_bin() {
        let p = NumericProfile::from_values([3.0; 5].into_iter(), 10);
        assert_eq!(p.edges, vec![3.0, 3.0]);
        assert_eq!(p.counts, vec![0, 5, 0]);
    }
}
