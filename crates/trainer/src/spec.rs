//! What a training job does: the validated request ("spec") and the part of
//! it that is the model's recipe (stored in the artifact for `Retrain`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use evergreen_model::metrics::{higher_is_better, CLASSIFICATION_METRICS, REGRESSION_METRICS};
use evergreen_model::pipeline::Impute;
use evergreen_model::tree::{Criterion, MaxFeatures};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    DecisionTree,
    RandomForest,
    LogisticRegression,
    LinearRegression,
}

pub const ALGORITHMS: &str = "decision_tree, random_forest, logistic_regression, linear_regression";

/// How a parameter's values are checked.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Count,
    /// A count or "none".
    Depth,
    MaxFeatures,
    Criterion,
    Bins,
    Positive,
    Bool,
}

struct ParamDef {
    name: &'static str,
    kind: Kind,
    default: &'static str,
}

const fn p(name: &'static str, kind: Kind, default: &'static str) -> ParamDef {
    ParamDef {
        name,
        kind,
        default,
    }
}

const TREE: &[ParamDef] = &[
    p("max_depth", Kind::Depth, "none"),
    p("min_samples_split", Kind::Count, "2"),
    p("min_samples_leaf", Kind::Count, "1"),
    p("max_features", Kind::MaxFeatures, "all"),
    p("criterion", Kind::Criterion, "gini"),
    p("max_bins", Kind::Bins, "256"),
];
const FOREST: &[ParamDef] = &[
    p("n_trees", Kind::Count, "100"),
    p("max_depth", Kind::Depth, "none"),
    p("min_samples_split", Kind::Count, "2"),
    p("min_samples_leaf", Kind::Count, "1"),
    p("max_features", Kind::MaxFeatures, "sqrt"),
    p("criterion", Kind::Criterion, "gini"),
    p("bootstrap", Kind::Bool, "true"),
    p("max_bins", Kind::Bins, "256"),
];
const LOGISTIC: &[ParamDef] = &[
    p("alpha", Kind::Positive, "1.0"),
    p("max_iterations", Kind::Count, "200"),
];
const LINEAR: &[ParamDef] = &[];

impl Algorithm {
    pub fn parse(s: &str) -> Result<Self, TrainError> {
        Ok(match s {
            "decision_tree" => Algorithm::DecisionTree,
            "random_forest" => Algorithm::RandomForest,
            "logistic_regression" => Algorithm::LogisticRegression,
            "linear_regression" => Algorithm::LinearRegression,
            _ => {
                return Err(TrainError::InvalidArgument(format!(
                    "unknown algorithm {s:?}: expected one of {ALGORITHMS}"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::DecisionTree => "decision_tree",
            Algorithm::RandomForest => "random_forest",
            Algorithm::LogisticRegression => "logistic_regression",
            Algorithm::LinearRegression => "linear_regression",
        }
    }

    pub fn is_classifier(self) -> bool {
        !matches!(self, Algorithm::LinearRegression)
    }

    /// Linear models see standardized numeric features; trees do not need it.
    pub fn standardize(self) -> bool {
        matches!(
            self,
            Algorithm::LogisticRegression | Algorithm::LinearRegression
        )
    }

    fn params(self) -> &'static [ParamDef] {
        match self {
            Algorithm::DecisionTree => TREE,
            Algorithm::RandomForest => FOREST,
            Algorithm::LogisticRegression => LOGISTIC,
            Algorithm::LinearRegression => LINEAR,
        }
    }

    pub fn default_metric(self) -> &'static str {
        if self.is_classifier() {
            "accuracy"
        } else {
            "r2"
        }
    }
}

fn check_value(alg: Algorithm, def: &ParamDef, v: &str) -> Result<(), TrainError> {
    let bad = |expected: &str| {
        TrainError::InvalidArgument(format!(
            "param {} of {}: expected {expected}, got {v:?}",
            def.name,
            alg.name()
        ))
    };
    match def.kind {
        Kind::Count => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .map(drop)
            .ok_or_else(|| bad("an integer >= 1")),
        Kind::Depth => (v == "none" || v.parse::<usize>().is_ok_and(|n| n >= 1))
            .then_some(())
            .ok_or_else(|| bad("an integer >= 1 or none")),
        Kind::MaxFeatures => v.parse::<MaxFeatures>().map(drop).map_err(|e| bad(&e)),
        Kind::Criterion => v.parse::<Criterion>().map(drop).map_err(|e| bad(&e)),
        Kind::Bins => v
            .parse::<usize>()
            .ok()
            .filter(|n| (2..=256).contains(n))
            .map(drop)
            .ok_or_else(|| bad("an integer in 2..=256")),
        Kind::Positive => v
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(drop)
            .ok_or_else(|| bad("a finite number >= 0")),
        Kind::Bool => matches!(v, "true" | "false")
            .then_some(())
            .ok_or_else(|| bad("true or false")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Search {
    Grid,
    Random { n_iter: usize },
}

/// How a model is made, minus where the data comes from: stored in the
/// artifact, reused by `Retrain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub target: String,
    pub algorithm: Algorithm,
    /// Search space: each parameter's candidate values (one value = fixed).
    pub params: BTreeMap<String, Vec<String>>,
    pub features: Vec<String>,
    pub exclude: Vec<String>,
    pub categorical: Vec<String>,
    pub cv_folds: usize,
    pub seed: u64,
    pub test_fraction: f64,
    pub stratify: bool,
    pub search: Search,
    pub metric: String,
    pub impute: Impute,
    pub profile_bins: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub alias: String,
    pub metric: String,
    pub min_improvement: f64,
}

/// A validated training request.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec {
    pub model: String,
    /// As given (recorded as lineage).
    pub dataset_uri: String,
    pub dataset: Source,
    pub recipe: Recipe,
    pub gate: Option<Gate>,
    pub reason: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

/// Raw request fields, before validation (what the gRPC adapter fills in).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawRequest {
    pub model: String,
    pub dataset_uri: String,
    pub target: String,
    pub algorithm: String,
    pub params: BTreeMap<String, String>,
    pub features: Vec<String>,
    pub exclude: Vec<String>,
    pub categorical: Vec<String>,
    pub cv_folds: u32,
    pub seed: u64,
    pub test_fraction: f64,
    pub stratify: Option<bool>,
    pub random_search: bool,
    pub n_iter: u32,
    pub metric: String,
    pub gate: Option<(String, String, f64)>,
    pub impute: String,
    pub profile_bins: u32,
    pub reason: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

/// Largest search space accepted (candidates before random sampling).
pub const MAX_CANDIDATES: usize = 10_000;

/// Where a dataset comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A CSV file on the trainer's machine.
    Local(PathBuf),
    /// An S3 object, downloaded under the data dir before training.
    S3(S3Object),
}

/// `s3://bucket/key`, checked to be safe as a path under the data dir.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Object {
    pub bucket: String,
    pub key: String,
}

impl S3Object {
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Where the object is downloaded to: `<dir>/s3/<bucket>/<key>`.
    pub fn local_path(&self, dir: &Path) -> PathBuf {
        let mut p = dir.join("s3").join(&self.bucket);
        p.extend(self.key.split('/'));
        p
    }
}

/// Parses `dataset_uri`: a local path, `file://PATH` or `s3://BUCKET/KEY`.
pub fn dataset_source(uri: &str) -> Result<Source, TrainError> {
    if uri.is_empty() {
        return Err(TrainError::InvalidArgument(
            "dataset_uri is empty: expected the path of a CSV file or s3://BUCKET/KEY".into(),
        ));
    }
    if uri.starts_with("s3://") {
        let bad = |why: String| TrainError::InvalidArgument(format!("dataset_uri {uri:?}: {why}"));
        let (bucket, key) = evergreen_s3::parse_uri(uri)
            .map_err(|e| TrainError::InvalidArgument(format!("dataset_uri {e}")))?;
        let bucket_ok = bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err(bad(format!(
                "bucket {bucket:?} is not a bucket name: expected letters, digits, '.', '-' or '_', starting with a letter or digit"
            )));
        }
        // The key becomes a path under the data dir: no way out of it.
        for part in key.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(bad(format!(
                    "key {key:?} has an empty, \".\" or \"..\" path component; expected s3://BUCKET/DIR/FILE.csv (the object is downloaded under the trainer's data dir)"
                )));
            }
        }
        return Ok(Source::S3(S3Object { bucket, key }));
    }
    if let Some(p) = uri.strip_prefix("file://") {
        return Ok(Source::Local(PathBuf::from(p)));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(TrainError::InvalidArgument(format!(
            "dataset_uri {uri:?}: scheme {scheme}:// is not supported; expected a local path, file:// or s3://"
        )));
    }
    Ok(Source::Local(PathBuf::from(uri)))
}

fn check_metric(what: &str, metric: &str, classifier: bool) -> Result<(), TrainError> {
    let known = if classifier {
        CLASSIFICATION_METRICS
    } else {
        REGRESSION_METRICS
    };
    if known.contains(&metric) {
        Ok(())
    } else {
        Err(TrainError::InvalidArgument(format!(
            "{what} {metric:?}: expected one of {}",
            known.join(", ")
        )))
    }
}

impl RawRequest {
    pub fn validate(self) -> Result<TrainSpec, TrainError> {
        evergreen_proto::names::check_name("model name", &self.model)
            .map_err(TrainError::InvalidArgument)?;
        let dataset = dataset_source(&self.dataset_uri)?;
        if self.target.is_empty() {
            return Err(TrainError::InvalidArgument(
                "target is empty: expected the name of the column to predict".into(),
            ));
        }
        let algorithm = Algorithm::parse(if self.algorithm.is_empty() {
            "random_forest"
        } else {
            &self.algorithm
        })?;
        let defs = algorithm.params();
        let mut params = BTreeMap::new();
        for (raw_key, raw) in &self.params {
            let key = match raw_key.as_str() {
                "n_estimators" => "n_trees",
                "C" => "alpha", // not the same scale; see below
                k => k,
            };
            let def = defs.iter().find(|d| d.name == key).ok_or_else(|| {
                let names: Vec<&str> = defs.iter().map(|d| d.name).collect();
                TrainError::InvalidArgument(format!(
                    "unknown param {raw_key:?} for {}: expected one of {}",
                    algorithm.name(),
                    if names.is_empty() {
                        "(none)".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?;
            let mut values: Vec<String> = raw.split(',').map(|v| v.trim().to_string()).collect();
            if raw_key == "C" {
                // scikit-learn's C is the inverse of the L2 weight.
                values = values
                    .iter()
                    .map(|v| match v.parse::<f64>() {
                        Ok(c) if c > 0.0 && c.is_finite() => Ok((1.0 / c).to_string()),
                        _ => Err(TrainError::InvalidArgument(format!(
                            "param C of logistic_regression: expected a number > 0, got {v:?}"
                        ))),
                    })
                    .collect::<Result<_, _>>()?;
            }
            for v in &values {
                check_value(algorithm, def, v)?;
            }
            values.dedup();
            params.insert(key.to_string(), values);
        }
        let classifier = algorithm.is_classifier();
        let metric = if self.metric.is_empty() {
            algorithm.default_metric().to_string()
        } else {
            self.metric
        };
        check_metric("metric", &metric, classifier)?;
        let test_fraction = if self.test_fraction == 0.0 {
            0.3
        } else {
            self.test_fraction
        };
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            return Err(TrainError::InvalidArgument(format!(
                "test_fraction {test_fraction}: expected a number between 0 and 1 (exclusive)"
            )));
        }
        let search = if self.random_search {
            Search::Random {
                n_iter: if self.n_iter == 0 {
                    10
                } else {
                    self.n_iter as usize
                },
            }
        } else {
            Search::Grid
        };
        let mut recipe = Recipe {
            target: self.target,
            algorithm,
            params,
            features: self.features,
            exclude: self.exclude,
            categorical: self.categorical,
            cv_folds: self.cv_folds as usize,
            seed: self.seed,
            test_fraction,
            stratify: self.stratify.unwrap_or(classifier),
            search,
            metric,
            impute: if self.impute.is_empty() {
                Impute::Mean
            } else {
                self.impute
                    .parse()
                    .map_err(|e| TrainError::InvalidArgument(format!("impute: {e}")))?
            },
            profile_bins: if self.profile_bins == 0 {
                evergreen_model::profile::DEFAULT_BINS
            } else {
                self.profile_bins as usize
            },
        };
        if recipe.stratify && !classifier {
            return Err(TrainError::InvalidArgument(
                "stratify: only classification can be stratified".into(),
            ));
        }
        if recipe.cv_folds == 1 || recipe.cv_folds > 100 {
            return Err(TrainError::InvalidArgument(format!(
                "cv_folds {}: expected 0 (no cross-validation) or 2..=100",
                recipe.cv_folds
            )));
        }
        if recipe.profile_bins > 10_000 {
            return Err(TrainError::InvalidArgument(format!(
                "profile_bins {}: expected at most 10000",
                recipe.profile_bins
            )));
        }
        let n = recipe.space_size();
        if n > MAX_CANDIDATES {
            return Err(TrainError::InvalidArgument(format!(
                "the search space has {n} candidates; expected at most {MAX_CANDIDATES}"
            )));
        }
        if n > 1 && recipe.cv_folds == 0 {
            recipe.cv_folds = 5; // choosing among candidates needs validation folds
        }
        let gate = match self.gate {
            None => None,
            Some((alias, metric, min_improvement)) => {
                evergreen_proto::names::check_name("gate alias", &alias)
                    .map_err(TrainError::InvalidArgument)?;
                let metric = if metric.is_empty() {
                    algorithm.default_metric().to_string()
                } else {
                    metric
                };
                check_metric("gate metric", &metric, classifier)?;
                if !(min_improvement.is_finite() && min_improvement >= 0.0) {
                    return Err(TrainError::InvalidArgument(format!(
                        "gate min_improvement {min_improvement}: expected a finite number >= 0"
                    )));
                }
                Some(Gate {
                    alias,
                    metric,
                    min_improvement,
                })
            }
        };
        Ok(TrainSpec {
            model: self.model,
            dataset_uri: self.dataset_uri,
            dataset,
            recipe,
            gate,
            reason: self.reason,
            description: self.description,
            tags: self.tags,
        })
    }
}

impl Recipe {
    fn space_size(&self) -> usize {
        self.params
            .values()
            .map(Vec::len)
            .fold(1usize, |a, b| a.saturating_mul(b))
    }

    /// Every candidate parameter set (complete, defaults filled in), in a
    /// fixed order; random search samples `n_iter` of them with the seed.
    pub fn candidates(&self) -> Vec<BTreeMap<String, String>> {
        let mut all = vec![BTreeMap::new()];
        for def in self.algorithm.params() {
            let values: Vec<String> = match self.params.get(def.name) {
                Some(v) => v.clone(),
                None => vec![def.default.to_string()],
            };
            all = all
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(def.name.to_string(), v.clone());
                        c
                    })
                })
                .collect();
        }
        if let Search::Random { n_iter } = self.search {
            if n_iter < all.len() {
                let mut rng = evergreen_model::rng::Rng::new(self.seed, 0x5EA2C4);
                rng.shuffle(&mut all);
                all.truncate(n_iter);
            }
        }
        all
    }

    /// The request that reproduces this recipe (for `Retrain`).
    pub fn to_raw(&self) -> RawRequest {
        RawRequest {
            target: self.target.clone(),
            algorithm: self.algorithm.name().to_string(),
            params: self
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.join(",")))
                .collect(),
            features: self.features.clone(),
            exclude: self.exclude.clone(),
            categorical: self.categorical.clone(),
            cv_folds: self.cv_folds as u32,
            seed: self.seed,
            test_fraction: self.test_fraction,
            stratify: Some(self.stratify),
            random_search: matches!(self.search, Search::Random { .. }),
            n_iter: match self.search {
                Search::Random { n_iter } => n_iter as u32,
                Search::Grid => 0,
            },
            metric: self.metric.clone(),
            impute: match self.impute {
                Impute::Mean => "mean".into(),
                Impute::Median => "median".into(),
            },
            profile_bins: self.profile_bins as u32,
            ..RawRequest::default()
        }
    }

    pub fn higher_is_better(&self) -> bool {
        higher_is_better(&self.metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawRequest {
        RawRequest {
            model: "m".into(),
            dataset_uri: "/d.csv".into(),
            target: "y".into(),
            ..Default::default()
        }
    }

    fn err(r: RawRequest) -> String {
        r.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_grid() {
        let mut r = raw();
        r.params.insert("max_depth".into(), "4, 8".into());
        r.params.insert("n_estimators".into(), "10".into());
        let s = r.validate().unwrap();
        assert_eq!(s.recipe.algorithm, Algorithm::RandomForest);
        assert_eq!(s.recipe.cv_folds, 5, "a search needs folds");
        assert!(s.recipe.stratify);
        let c = s.recipe.candidates();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["max_depth"], "4");
        assert_eq!(c[1]["n_trees"], "10");
        assert_eq!(c[0]["max_features"], "sqrt");
    }

    #[test]
    fn a_recipe_round_trips_through_a_request() {
        let mut r = raw();
        r.params.insert("max_depth".into(), "3,5".into());
        r.params.insert("C".into(), "0.5".into());
        r.algorithm = "logistic_regression".into();
        r.params.remove("max_depth");
        r.random_search = true;
        let s = r.validate().unwrap();
        assert_eq!(s.recipe.params["alpha"], vec!["2".to_string()]);
        let again = RawRequest {
            model: "m".into(),
            dataset_uri: "/d.csv".into(),
            ..s.recipe.to_raw()
        };
        assert_eq!(again.validate().unwrap().recipe, s.recipe);
    }

    #[test]
    fn random_search_samples_deterministically() {
        let mut r = raw();
        r.params.insert("max_depth".into(), "1,2,3,4,5,6".into());
        r.params.insert("min_samples_leaf".into(), "1,2,3".into());
        r.random_search = true;
        r.n_iter = 4;
        let s = r.validate().unwrap();
        let a = s.recipe.candidates();
        assert_eq!(a.len(), 4);
        assert_eq!(a, s.recipe.candidates());
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let mut r = raw();
        r.algorithm = "svm".into();
        assert!(err(r).contains("unknown algorithm \"svm\": expected one of decision_tree"));
        let mut r = raw();
        r.params.insert("max_depth".into(), "abc".into());
        assert!(err(r).contains(
            "param max_depth of random_forest: expected an integer >= 1 or none, got \"abc\""
        ));
        let mut r = raw();
        r.params.insert("depth".into(), "3".into());
        assert!(
            err(r).contains("unknown param \"depth\" for random_forest: expected one of n_trees")
        );
        let mut r = raw();
        r.algorithm = "linear_regression".into();
        r.metric = "accuracy".into();
        assert!(err(r).contains("metric \"accuracy\": expected one of rmse, mae, r2"));
        let mut r = raw();
        r.model = "../x".into();
        assert!(err(r).contains("invalid model name"));
        let mut r = raw();
        r.dataset_uri = "gs://bucket/x.csv".into();
        assert!(err(r).contains("scheme gs:// is not supported"));
        let mut r = raw();
        r.test_fraction = 1.5;
        assert!(err(r).contains("test_fraction 1.5"));
        let mut r = raw();
        r.cv_folds = 1;
        assert!(err(r).contains("cv_folds 1"));
        let mut r = raw();
        r.gate = Some(("production".into(), "rmse".into(), 0.0));
        assert!(err(r).contains("gate metric \"rmse\""));
    }

    #[test]
    fn s3_datasets_map_to_a_path_under_the_data_dir_and_cannot_leave_it() {
        let o = match dataset_source("s3://data-1/dir/x.csv").unwrap() {
            Source::S3(o) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!((o.bucket.as_str(), o.key.as_str()), ("data-1", "dir/x.csv"));
        assert_eq!(o.uri(), "s3://data-1/dir/x.csv");
        assert_eq!(
            o.local_path(Path::new("/var/t")),
            Path::new("/var/t/s3/data-1/dir/x.csv")
        );
        for bad in [
            "s3://b/../x.csv",
            "s3://b/a/../../x.csv",
            "s3://b//etc/passwd",
            "s3://b/./x.csv",
            "s3://b/dir/",
        ] {
            let e = dataset_source(bad).unwrap_err();
            assert!(
                matches!(&e, TrainError::InvalidArgument(m) if m.contains("path component")),
                "{bad}: {e}"
            );
        }
        for bad in ["s3://../x.csv", "s3://.b/x.csv", "s3://b%2F/x"] {
            let e = dataset_source(bad).unwrap_err().to_string();
            assert!(e.contains("is not a bucket name"), "{bad}: {e}");
        }
        let e = dataset_source("s3://bucket").unwrap_err().to_string();
        assert!(e.contains("names no object"), "{e}");
        assert_eq!(
            dataset_source("file:///d.csv").unwrap(),
            Source::Local("/d.csv".into())
        );
    }
}
