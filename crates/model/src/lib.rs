//! The Evergreen model: everything a trained model is, in one artifact.
//!
//! Shared by the trainer (which fits and writes it), the server (which loads
//! it and calls [`Model::predict`] on its hot path) and the monitor (which
//! reads its reference [`Profile`] and uses the same [`metrics`]).
//!
//! - [`schema`]: features, types, target and labels; raw input [`Value`]s.
//! - [`pipeline`]: fitted imputation, standardization, one-hot encoding.
//! - [`tree`]: decision trees and random forests (Evergreen's own split
//!   search, exposed as linfa `Fit`/`Predict`).
//! - [`linear`]: logistic (linfa-logistic) and linear (linfa-linear) models.
//! - [`profile`]: the reference data profile.
//! - [`metrics`]: classification and regression metrics.
//! - [`artifact`]: the file format and [`Model`].

pub mod artifact;
pub mod error;
pub mod linear;
pub mod metrics;
pub mod pipeline;
pub mod profile;
pub mod rng;
pub mod schema;
pub mod tree;

pub use artifact::{Estimator, Model, Prediction, Scratch, TrainingInfo, FORMAT_VERSION};
pub use error::{ArtifactError, FitError, PredictError};
pub use profile::Profile;
pub use schema::{Feature, FeatureKind, Schema, Target, Task, Value};
