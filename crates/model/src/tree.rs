//! Decision trees and random forests: Evergreen's own split search.
//!
//! Why not linfa-trees / linfa-ensemble (measured, see ARCHITECTURE.md):
//! linfa-ensemble samples features once per tree rather than per split,
//! linfa-trees has no `max_features`, is slower than scikit-learn and is not
//! reproducible run to run. This engine is CART on pre-binned features (up to
//! 256 quantile bins per feature, exact when a feature has fewer distinct
//! values), Gini or entropy, features sampled per split, trees grown in
//! parallel, deterministic for a seed. Thresholds are stored as real values
//! (midpoints between bins), so prediction works on raw numbers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use linfa::dataset::DatasetBase;
use linfa::traits::{Fit, PredictInplace};
use ndarray::{Array1, Array2, ArrayBase, ArrayView2, Data, Ix2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::FitError;
use crate::rng::Rng;

/// Marks a child reference as a leaf index (into `Tree::values`).
const LEAF_BIT: u32 = 1 << 31;
pub const MAX_BINS: usize = 256;

/// An internal node: 16 bytes, so trees stay dense in cache on the
/// serving path. Leaves are not nodes: a child reference with `LEAF_BIT`
/// set indexes the leaf values instead.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Go left when `x[feature] <= threshold`. Thresholds are f32 values
    /// (as in scikit-learn) chosen during binning so that they separate the
    /// training values exactly as the f64 comparison during fitting did.
    pub threshold: f32,
    pub feature: u32,
    pub left: u32,
    pub right: u32,
}

/// A fitted tree: internal nodes (root first; children always after their
/// parent, which artifact validation checks so traversal always ends) and
/// the distinct leaf distributions (`n_outputs` class probabilities each;
/// leaves with the same distribution — most leaves of a fully grown tree
/// are pure — share one entry). No nodes = a single leaf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
    pub values: Vec<f32>,
    pub n_outputs: u32,
}

impl Tree {
    /// The leaf values for `x`.
    #[inline]
    pub fn leaf(&self, x: &[f64]) -> &[f32] {
        let n_out = self.n_outputs as usize;
        if self.nodes.is_empty() {
            return &self.values[..n_out];
        }
        let mut i = 0usize;
        loop {
            let n = &self.nodes[i];
            let c = if x[n.feature as usize] <= n.threshold as f64 {
                n.left
            } else {
                n.right
            };
            if c & LEAF_BIT != 0 {
                let at = (c & !LEAF_BIT) as usize * n_out;
                return &self.values[at..at + n_out];
            }
            i = c as usize;
        }
    }

    pub fn n_leaves(&self) -> usize {
        if self.nodes.is_empty() {
            return 1;
        }
        let leaf = |c: u32| usize::from(c & LEAF_BIT != 0);
        self.nodes
            .iter()
            .map(|n| leaf(n.left) + leaf(n.right))
            .sum()
    }

    pub fn depth(&self) -> usize {
        fn walk(t: &Tree, c: u32) -> usize {
            if c & LEAF_BIT != 0 {
                return 0;
            }
            let n = &t.nodes[c as usize];
            1 + walk(t, n.left).max(walk(t, n.right))
        }
        if self.nodes.is_empty() {
            0
        } else {
            walk(self, 0)
        }
    }

    pub(crate) fn validate(&self, width: usize, n_outputs: usize) -> Result<(), String> {
        if n_outputs == 0
            || self.n_outputs as usize != n_outputs
            || !self.values.len().is_multiple_of(n_outputs)
        {
            return Err("tree has the wrong output width".into());
        }
        let leaves = self.values.len() / n_outputs;
        if leaves == 0 || (self.nodes.is_empty() && leaves != 1) {
            return Err("tree has no leaves or stray leaves".into());
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let ok_child = |c: u32| {
                if c & LEAF_BIT != 0 {
                    ((c & !LEAF_BIT) as usize) < leaves
                } else {
                    c as usize > i && (c as usize) < self.nodes.len()
                }
            };
            if n.feature as usize >= width || !ok_child(n.left) || !ok_child(n.right) {
                return Err(format!("tree node {i} has an invalid feature or child"));
            }
        }
        Ok(())
    }
}

/// A node while growing: leaves included, children adjacent
/// (`left`, `left + 1`); `finish` turns the result into a `Tree`.
#[derive(Clone, Copy)]
struct Entry {
    threshold: f64,
    feature: u32,
    /// Left child entry, or for a leaf the offset of its values.
    left: u32,
    leaf: bool,
}

fn finish(entries: &[Entry], grown: &[f32], n_out: usize) -> Tree {
    let mut tree = Tree {
        nodes: Vec::new(),
        values: Vec::new(),
        n_outputs: n_out as u32,
    };
    let mut palette: std::collections::HashMap<Vec<u32>, u32> = std::collections::HashMap::new();
    let leaf_values = |e: &Entry| &grown[e.left as usize..e.left as usize + n_out];
    if entries[0].leaf {
        tree.values.extend_from_slice(leaf_values(&entries[0]));
        return tree;
    }
    tree.nodes.push(Node {
        threshold: 0.0,
        feature: 0,
        left: 0,
        right: 0,
    });
    let mut stack = vec![(0usize, 0usize)];
    while let Some((e, at)) = stack.pop() {
        let entry = entries[e];
        let mut child = |ce: usize, tree: &mut Tree, stack: &mut Vec<(usize, usize)>| -> u32 {
            let c = &entries[ce];
            if c.leaf {
                let v = leaf_values(c);
                let key: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
                let next = (tree.values.len() / n_out) as u32;
                let li = *palette.entry(key).or_insert_with(|| {
                    tree.values.extend_from_slice(v);
                    next
                });
                li | LEAF_BIT
            } else {
                let ni = tree.nodes.len();
                tree.nodes.push(Node {
                    threshold: 0.0,
                    feature: 0,
                    left: 0,
                    right: 0,
                });
                stack.push((ce, ni));
                ni as u32
            }
        };
        let left = child(entry.left as usize, &mut tree, &mut stack);
        let right = child(entry.left as usize + 1, &mut tree, &mut stack);
        tree.nodes[at] = Node {
            threshold: entry.threshold as f32,
            feature: entry.feature,
            left,
            right,
        };
    }
    tree
}

/// Features considered at each split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MaxFeatures {
    All,
    Sqrt,
    Log2,
    Fraction(f64),
    Count(usize),
}

impl MaxFeatures {
    pub fn resolve(self, n: usize) -> usize {
        let k = match self {
            MaxFeatures::All => n,
            MaxFeatures::Sqrt => (n as f64).sqrt() as usize,
            MaxFeatures::Log2 => (n as f64).log2() as usize,
            MaxFeatures::Fraction(f) => (f * n as f64) as usize,
            MaxFeatures::Count(k) => k,
        };
        k.clamp(1, n.max(1))
    }
}

impl std::str::FromStr for MaxFeatures {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" | "none" => Ok(MaxFeatures::All),
            "sqrt" => Ok(MaxFeatures::Sqrt),
            "log2" => Ok(MaxFeatures::Log2),
            _ => {
                if let Ok(k) = s.parse::<usize>() {
                    if k > 0 {
                        return Ok(MaxFeatures::Count(k));
                    }
                } else if let Ok(f) = s.parse::<f64>() {
                    if f > 0.0 && f <= 1.0 {
                        return Ok(MaxFeatures::Fraction(f));
                    }
                }
                Err(format!(
                    "expected sqrt, log2, all, a count >= 1 or a fraction in (0, 1], got {s:?}"
                ))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Criterion {
    Gini,
    Entropy,
}

impl std::str::FromStr for Criterion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gini" => Ok(Criterion::Gini),
            "entropy" | "log_loss" => Ok(Criterion::Entropy),
            _ => Err(format!("expected gini or entropy, got {s:?}")),
        }
    }
}

/// Hyperparameters of one tree (scikit-learn's names and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct TreeParams {
    pub max_depth: Option<usize>,
    pub min_samples_split: usize,
    pub min_samples_leaf: usize,
    pub max_features: MaxFeatures,
    pub criterion: Criterion,
    pub max_bins: usize,
    pub seed: u64,
}

impl Default for TreeParams {
    fn default() -> Self {
        TreeParams {
            max_depth: None,
            min_samples_split: 2,
            min_samples_leaf: 1,
            max_features: MaxFeatures::All,
            criterion: Criterion::Gini,
            max_bins: MAX_BINS,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForestParams {
    pub n_trees: usize,
    pub bootstrap: bool,
    /// `max_features` defaults to `Sqrt` for forests.
    pub tree: TreeParams,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            n_trees: 100,
            bootstrap: true,
            tree: TreeParams {
                max_features: MaxFeatures::Sqrt,
                ..TreeParams::default()
            },
        }
    }
}

/// Cancellation and progress for long fits.
#[derive(Default, Clone, Copy)]
pub struct Control<'a> {
    pub cancel: Option<&'a AtomicBool>,
    /// Called with (units done, units total) as trees finish.
    pub progress: Option<&'a (dyn Fn(usize, usize) + Sync)>,
}

impl Control<'_> {
    pub fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Features quantized once, shared by every tree of a fit: column-major
/// bin ids plus the real-valued threshold of each bin boundary
/// (`bin <= b` ⇔ `x <= thresholds[b]`).
pub struct Binned {
    n_rows: usize,
    bins: Vec<u8>,
    thresholds: Vec<Vec<f64>>,
}

impl Binned {
    pub fn new(x: ArrayView2<f64>, max_bins: usize) -> Binned {
        let (n_rows, n_features) = x.dim();
        let max_bins = max_bins.clamp(2, MAX_BINS);
        let columns: Vec<(Vec<u8>, Vec<f64>)> = (0..n_features)
            .into_par_iter()
            .map(|f| {
                let col = x.column(f);
                let mut sorted: Vec<f64> = col.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                let mut distinct = sorted.clone();
                distinct.dedup();
                let thresholds: Vec<f64> = if distinct.len() <= max_bins {
                    distinct
                        .windows(2)
                        .filter_map(|w| cut(w[0], w[1]))
                        .collect()
                } else {
                    // Quantile cut points, then midpoints to the next
                    // distinct value so no bin boundary splits equal values.
                    let mut t = Vec::with_capacity(max_bins - 1);
                    for q in 1..max_bins {
                        let v = sorted[q * (n_rows - 1) / max_bins];
                        let next = distinct.partition_point(|d| *d <= v);
                        if next < distinct.len() {
                            if let Some(c) = cut(v, distinct[next]) {
                                if t.last().is_none_or(|l| *l < c) {
                                    t.push(c);
                                }
                            }
                        }
                    }
                    t
                };
                let bins = col
                    .iter()
                    .map(|v| thresholds.partition_point(|t| t < v) as u8)
                    .collect();
                (bins, thresholds)
            })
            .collect();
        let mut bins = Vec::with_capacity(n_rows * n_features);
        let mut thresholds = Vec::with_capacity(n_features);
        for (b, t) in columns {
            bins.extend_from_slice(&b);
            thresholds.push(t);
        }
        Binned {
            n_rows,
            bins,
            thresholds,
        }
    }

    fn column(&self, f: usize) -> &[u8] {
        &self.bins[f * self.n_rows..(f + 1) * self.n_rows]
    }

    fn n_features(&self) -> usize {
        self.thresholds.len()
    }
}

/// A split point between distinct values `a < b`: an f32 value `t` with
/// `a <= t < b`, near the midpoint, or `None` if no f32 lies between them
/// (then `a` and `b` share a bin). f32 keeps nodes small; choosing it here
/// means serving compares exactly as fitting did.
fn cut(a: f64, b: f64) -> Option<f64> {
    fn up(t: f32) -> f32 {
        if t.is_nan() || t == f32::INFINITY {
            t
        } else if t == 0.0 {
            f32::from_bits(1)
        } else if t > 0.0 {
            f32::from_bits(t.to_bits() + 1)
        } else {
            f32::from_bits(t.to_bits() - 1)
        }
    }
    let m = (a + (b - a) / 2.0) as f32;
    [m, up(m), -up(-m)]
        .into_iter()
        .map(f64::from)
        .find(|t| a <= *t && *t < b)
}

struct Split {
    feature: usize,
    bin: u8,
    score: f64,
    left_counts: Vec<u64>,
}

/// Grows one tree on the rows with non-zero `weight` (bootstrap counts).
pub fn grow_tree(
    data: &Binned,
    y: &[u32],
    n_classes: usize,
    weight: &[u32],
    params: &TreeParams,
    rng: &mut Rng,
) -> Tree {
    let n_features = data.n_features();
    let k = params.max_features.resolve(n_features);
    let mut rows: Vec<u32> = (0..data.n_rows as u32)
        .filter(|&r| weight[r as usize] > 0)
        .collect();
    let mut root_counts = vec![0u64; n_classes];
    for &r in &rows {
        root_counts[y[r as usize] as usize] += weight[r as usize] as u64;
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut grown: Vec<f32> = Vec::new();
    let blank = Entry {
        threshold: 0.0,
        feature: 0,
        left: 0,
        leaf: true,
    };
    let mut features: Vec<usize> = (0..n_features).collect();
    let mut hist = vec![0u64; MAX_BINS * n_classes];
    // (node index, rows start, rows end, depth, class counts)
    let mut stack = vec![(0usize, 0usize, rows.len(), 0usize, root_counts)];
    entries.push(blank);
    while let Some((id, start, end, depth, counts)) = stack.pop() {
        let total: u64 = counts.iter().sum();
        let pure = counts.iter().filter(|c| **c > 0).count() <= 1;
        let stop = pure
            || params.max_depth.is_some_and(|d| depth >= d)
            || total < params.min_samples_split as u64
            || total < 2 * params.min_samples_leaf as u64;
        let split = if stop {
            None
        } else {
            best_split(
                data,
                y,
                weight,
                &rows[start..end],
                &counts,
                &mut features,
                k,
                params,
                &mut hist,
                rng,
            )
        };
        let Some(split) = split else {
            let at = grown.len() as u32;
            let t = total.max(1) as f32;
            grown.extend(counts.iter().map(|c| *c as f32 / t));
            entries[id] = Entry { left: at, ..blank };
            continue;
        };
        // Partition rows[start..end]: left = bin <= split.bin.
        let col = data.column(split.feature);
        let slice = &mut rows[start..end];
        let mut i = 0;
        let mut j = slice.len();
        while i < j {
            if col[slice[i] as usize] <= split.bin {
                i += 1;
            } else {
                j -= 1;
                slice.swap(i, j);
            }
        }
        let mid = start + i;
        let right_counts: Vec<u64> = counts
            .iter()
            .zip(&split.left_counts)
            .map(|(c, l)| c - l)
            .collect();
        let left_id = entries.len();
        let right_id = left_id + 1;
        entries.push(blank);
        entries.push(blank);
        entries[id] = Entry {
            threshold: data.thresholds[split.feature][split.bin as usize],
            feature: split.feature as u32,
            left: left_id as u32,
            leaf: false,
        };
        stack.push((right_id, mid, end, depth + 1, right_counts));
        stack.push((left_id, start, mid, depth + 1, split.left_counts));
    }
    finish(&entries, &grown, n_classes)
}

#[allow(clippy::too_many_arguments)]
fn best_split(
    data: &Binned,
    y: &[u32],
    weight: &[u32],
    rows: &[u32],
    counts: &[u64],
    features: &mut [usize],
    k: usize,
    params: &TreeParams,
    hist: &mut [u64],
    rng: &mut Rng,
) -> Option<Split> {
    let c = counts.len();
    let total: u64 = counts.iter().sum();
    let min_leaf = params.min_samples_leaf as u64;
    let mut best: Option<Split> = None;
    let mut left = vec![0u64; c];
    let n = features.len();
    // Sample features without replacement; as scikit-learn does, keep
    // drawing past `k` until at least one valid split was found.
    for drawn in 0..n {
        if drawn >= k && best.is_some() {
            break;
        }
        let pick = drawn + rng.below(n - drawn);
        features.swap(drawn, pick);
        let f = features[drawn];
        let n_bins = data.thresholds[f].len() + 1;
        if n_bins < 2 {
            continue;
        }
        let col = data.column(f);
        let h = &mut hist[..n_bins * c];
        h.fill(0);
        for &r in rows {
            let r = r as usize;
            h[col[r] as usize * c + y[r] as usize] += weight[r] as u64;
        }
        left.fill(0);
        let mut n_left = 0u64;
        for b in 0..n_bins - 1 {
            let hb = &h[b * c..(b + 1) * c];
            let mut added = 0;
            for (l, v) in left.iter_mut().zip(hb) {
                *l += v;
                added += v;
            }
            if added == 0 {
                continue;
            }
            n_left += added;
            let n_right = total - n_left;
            if n_right < min_leaf.max(1) {
                break;
            }
            if n_left < min_leaf.max(1) {
                continue;
            }
            let score = split_score(params.criterion, &left, counts, n_left, n_right);
            if best.as_ref().is_none_or(|s| score > s.score) {
                best = Some(Split {
                    feature: f,
                    bin: b as u8,
                    score,
                    left_counts: left.clone(),
                });
            }
        }
    }
    best
}

/// Larger is better: the negated weighted child impurity, up to constants.
#[inline]
fn split_score(criterion: Criterion, left: &[u64], counts: &[u64], nl: u64, nr: u64) -> f64 {
    match criterion {
        Criterion::Gini => {
            let (mut sl, mut sr) = (0.0, 0.0);
            for (l, t) in left.iter().zip(counts) {
                let l = *l as f64;
                let r = (*t as f64) - l;
                sl += l * l;
                sr += r * r;
            }
            sl / nl as f64 + sr / nr as f64
        }
        Criterion::Entropy => {
            let (nl, nr) = (nl as f64, nr as f64);
            let mut s = 0.0;
            for (l, t) in left.iter().zip(counts) {
                let l = *l as f64;
                let r = (*t as f64) - l;
                if l > 0.0 {
                    s += l * (l / nl).ln();
                }
                if r > 0.0 {
                    s += r * (r / nr).ln();
                }
            }
            s
        }
    }
}

/// Checks the labels and returns the class count.
fn check_labels(x: &ArrayView2<f64>, y: &[usize]) -> Result<usize, FitError> {
    if x.nrows() == 0 || x.nrows() != y.len() {
        return Err(FitError::Data(format!(
            "need at least one row and one label per row (got {} rows, {} labels)",
            x.nrows(),
            y.len()
        )));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(FitError::Data(
            "features must be finite (impute missing values first)".into(),
        ));
    }
    Ok(y.iter().copied().max().unwrap_or(0) + 1)
}

/// Fits one tree (all rows, weight 1).
pub fn fit_tree(
    x: ArrayView2<f64>,
    y: &[usize],
    n_classes: usize,
    params: &TreeParams,
) -> Result<Tree, FitError> {
    let n_classes = n_classes.max(check_labels(&x, y)?);
    let data = Binned::new(x, params.max_bins);
    let y: Vec<u32> = y.iter().map(|v| *v as u32).collect();
    let weight = vec![1u32; y.len()];
    let mut rng = Rng::new(params.seed, 0);
    Ok(grow_tree(&data, &y, n_classes, &weight, params, &mut rng))
}

/// A fitted random forest: the mean of its trees' class probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub trees: Vec<Tree>,
}

/// Fits a forest; trees are grown in parallel, each from its own seeded
/// stream, so the result is the same whatever the thread count.
pub fn fit_forest(
    x: ArrayView2<f64>,
    y: &[usize],
    n_classes: usize,
    params: &ForestParams,
    control: Control,
) -> Result<Forest, FitError> {
    if params.n_trees == 0 {
        return Err(FitError::InvalidParams(
            "n_trees: expected at least 1".into(),
        ));
    }
    let n_classes = n_classes.max(check_labels(&x, y)?);
    let data = Binned::new(x, params.tree.max_bins);
    let y: Vec<u32> = y.iter().map(|v| *v as u32).collect();
    let n = y.len();
    let done = AtomicUsize::new(0);
    let trees: Option<Vec<Tree>> = (0..params.n_trees)
        .into_par_iter()
        .map(|t| {
            if control.cancelled() {
                return None;
            }
            let mut rng = Rng::new(params.tree.seed, t as u64 + 1);
            let mut weight = vec![0u32; n];
            if params.bootstrap {
                for _ in 0..n {
                    weight[rng.below(n)] += 1;
                }
            } else {
                weight.fill(1);
            }
            let tree = grow_tree(&data, &y, n_classes, &weight, &params.tree, &mut rng);
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(p) = control.progress {
                p(d, params.n_trees);
            }
            Some(tree)
        })
        .collect();
    trees
        .map(|trees| Forest { trees })
        .ok_or(FitError::Cancelled)
}

impl Forest {
    /// Mean class probabilities into `out`.
    #[inline]
    pub fn predict_into(&self, x: &[f64], out: &mut [f64]) {
        out.fill(0.0);
        // Walk LANES trees in lockstep: their node loads are independent,
        // so the CPU overlaps the cache misses instead of waiting on each.
        const LANES: usize = 8;
        for group in self.trees.chunks(LANES) {
            let mut cur = [LEAF_BIT; LANES];
            let mut walking = 0;
            for (k, t) in group.iter().enumerate() {
                if !t.nodes.is_empty() {
                    cur[k] = 0;
                    walking += 1;
                }
            }
            while walking > 0 {
                for (k, t) in group.iter().enumerate() {
                    let c = cur[k];
                    if c & LEAF_BIT != 0 {
                        continue;
                    }
                    let n = &t.nodes[c as usize];
                    let next = if x[n.feature as usize] <= n.threshold as f64 {
                        n.left
                    } else {
                        n.right
                    };
                    cur[k] = next;
                    if next & LEAF_BIT != 0 {
                        walking -= 1;
                    }
                }
            }
            for (k, t) in group.iter().enumerate() {
                let n_out = t.n_outputs as usize;
                let at = (cur[k] & !LEAF_BIT) as usize * n_out;
                for (o, v) in out.iter_mut().zip(&t.values[at..at + n_out]) {
                    *o += *v as f64;
                }
            }
        }
        let n = self.trees.len().max(1) as f64;
        out.iter_mut().for_each(|o| *o /= n);
    }
}

/// Index of the largest value (first on ties, like numpy's argmax).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

// ---- linfa compatibility: the engine as linfa `Fit` / `Predict` --------

fn predict_classes<D: Data<Elem = f64>>(
    x: &ArrayBase<D, Ix2>,
    y: &mut Array1<usize>,
    n: usize,
    f: impl Fn(&[f64], &mut [f64]),
) {
    let mut out = vec![0.0; n];
    for (row, t) in x.rows().into_iter().zip(y.iter_mut()) {
        let row = row.to_vec();
        f(&row, &mut out);
        *t = argmax(&out);
    }
}

impl Fit<Array2<f64>, Array1<usize>, FitError> for TreeParams {
    type Object = Tree;
    fn fit(&self, ds: &DatasetBase<Array2<f64>, Array1<usize>>) -> Result<Tree, FitError> {
        let y = ds.targets.to_vec();
        fit_tree(ds.records.view(), &y, 0, self)
    }
}

impl Fit<Array2<f64>, Array1<usize>, FitError> for ForestParams {
    type Object = Forest;
    fn fit(&self, ds: &DatasetBase<Array2<f64>, Array1<usize>>) -> Result<Forest, FitError> {
        let y = ds.targets.to_vec();
        fit_forest(ds.records.view(), &y, 0, self, Control::default())
    }
}

impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<usize>> for Tree {
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<usize>) {
        predict_classes(x, y, self.n_outputs as usize, |row, out| {
            for (o, v) in out.iter_mut().zip(self.leaf(row)) {
                *o = *v as f64;
            }
        });
    }
    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<usize> {
        Array1::zeros(x.nrows())
    }
}

impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<usize>> for Forest {
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<usize>) {
        let n = self.trees.first().map_or(1, |t| t.n_outputs as usize);
        predict_classes(x, y, n, |row, out| self.predict_into(row, out));
    }
    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<usize> {
        Array1::zeros(x.nrows())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::traits::Predict;
    use ndarray::array;

    fn xor_data() -> (Array2<f64>, Vec<usize>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..200 {
            let a = (i % 2) as f64;
            let b = ((i / 2) % 2) as f64;
            x.extend_from_slice(&[a, b, (i % 7) as f64]);
            y.push((a as usize) ^ (b as usize));
        }
        (Array2::from_shape_vec((200, 3), x).unwrap(), y)
    }

    #[test]
    fn tree_learns_xor_exactly_and_thresholds_are_real_values() {
        let (x, y) = xor_data();
        let t = fit_tree(x.view(), &y, 2, &TreeParams::default()).unwrap();
        for (row, label) in x.rows().into_iter().zip(&y) {
            let p = t.leaf(row.as_slice().unwrap());
            assert_eq!(p[*label], 1.0);
        }
        assert_eq!(t.nodes[0].threshold, 0.5);
        assert!(t.nodes.iter().all(|n| n.left != n.right));
        assert!(t.validate(3, 2).is_ok());
    }

    #[test]
    fn max_depth_and_min_samples_leaf_are_honoured() {
        let (x, y) = xor_data();
        let p = TreeParams {
            max_depth: Some(1),
            ..TreeParams::default()
        };
        assert_eq!(fit_tree(x.view(), &y, 2, &p).unwrap().depth(), 1);
        let p = TreeParams {
            min_samples_leaf: 150,
            ..TreeParams::default()
        };
        assert_eq!(fit_tree(x.view(), &y, 2, &p).unwrap().n_leaves(), 1);
    }

    #[test]
    fn forest_is_deterministic_for_a_seed_whatever_the_thread_count() {
        let (x, y) = xor_data();
        let p = ForestParams {
            n_trees: 16,
            ..ForestParams::default()
        };
        let a = fit_forest(x.view(), &y, 2, &p, Control::default()).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| fit_forest(x.view(), &y, 2, &p, Control::default()).unwrap());
        assert_eq!(a, b);
        let mut p2 = p.clone();
        p2.tree.seed = 99;
        assert_ne!(
            a,
            fit_forest(x.view(), &y, 2, &p2, Control::default()).unwrap()
        );
    }

    #[test]
    fn lockstep_forest_prediction_equals_tree_by_tree() {
        let x = Array2::from_shape_fn((300, 4), |(i, j)| {
            ((i * 7 + j * 13) % 17) as f64 + (i % 3) as f64 * 0.1
        });
        let y: Vec<usize> = (0..300).map(|i| (i * 31 % 7) % 3).collect();
        let p = ForestParams {
            n_trees: 19,
            ..ForestParams::default()
        };
        let f = fit_forest(x.view(), &y, 3, &p, Control::default()).unwrap();
        for row in x.rows() {
            let row = row.as_slice().unwrap();
            let mut fast = [0.0; 3];
            f.predict_into(row, &mut fast);
            let mut slow = [0.0; 3];
            for t in &f.trees {
                for (s, v) in slow.iter_mut().zip(t.leaf(row)) {
                    *s += *v as f64;
                }
            }
            slow.iter_mut().for_each(|s| *s /= 19.0);
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn cancel_stops_a_forest() {
        let (x, y) = xor_data();
        let flag = AtomicBool::new(true);
        let c = Control {
            cancel: Some(&flag),
            progress: None,
        };
        let r = fit_forest(x.view(), &y, 2, &ForestParams::default(), c);
        assert!(matches!(r, Err(FitError::Cancelled)));
    }

    #[test]
    fn works_through_linfa_traits() {
        let x = array![[0.0], [1.0], [2.0], [3.0]];
        let ds = DatasetBase::new(x.clone(), array![0usize, 0, 1, 1]);
        let model = TreeParams::default().fit(&ds).unwrap();
        assert_eq!(model.predict(&x), array![0usize, 0, 1, 1]);
        let forest = ForestParams {
            n_trees: 5,
            bootstrap: false,
            ..Default::default()
        }
        .fit(&ds)
        .unwrap();
        assert_eq!(forest.predict(&x), array![0usize, 0, 1, 1]);
    }

    #[test]
    fn cuts_are_f32_values_that_separate_their_neighbours() {
        assert_eq!(cut(0.0, 1.0), Some(0.5));
        let (a, b) = (1.000_000_01_f64, 1.000_000_02_f64); // no f32 in between
        assert_eq!(cut(a, b), None);
        let (a, b) = (0.1_f64, 0.100_001_f64);
        let t = cut(a, b).unwrap();
        assert!(a <= t && t < b && (t as f32) as f64 == t);
        let t = cut(-3.3, -3.2).unwrap();
        assert!((-3.3..-3.2).contains(&t));
    }

    #[test]
    fn binning_is_exact_for_few_distinct_values_and_bounded_otherwise() {
        let x = Array2::from_shape_fn(
            (1000, 2),
            |(i, j)| if j == 0 { (i % 3) as f64 } else { i as f64 },
        );
        let b = Binned::new(x.view(), 256);
        assert_eq!(b.thresholds[0], vec![0.5, 1.5]);
        assert!(b.thresholds[1].len() <= 255 && b.thresholds[1].len() > 200);
        assert!(b.thresholds[1].windows(2).all(|w| w[0] < w[1]));
    }
}
