//! What a model takes and gives: feature names and types, target and labels.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FeatureKind {
    Numeric,
    /// Categories seen in the training split, sorted; anything else is
    /// "unseen" and one-hot encodes to all zeros.
    Categorical {
        categories: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub kind: FeatureKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Task {
    /// Class labels as they appeared in the data; index = class id.
    Classification {
        labels: Vec<String>,
    },
    Regression,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub task: Task,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub features: Vec<Feature>,
    pub target: Target,
}

impl Schema {
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }

    /// Class labels, or `None` for a regression model.
    pub fn labels(&self) -> Option<&[String]> {
        match &self.target.task {
            Task::Classification { labels } => Some(labels),
            Task::Regression => None,
        }
    }

    /// Width of the estimator's output: classes, or 1 for regression.
    pub fn n_outputs(&self) -> usize {
        self.labels().map_or(1, |l| l.len())
    }

    pub fn feature_names(&self) -> String {
        self.features
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One raw input value, as a caller sends it: preprocessing turns rows of
/// these into the estimator's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Number(f64),
    Text(&'a str),
    Missing,
}
