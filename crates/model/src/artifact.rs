//! The model artifact: one self-describing file.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "EVGMODEL"
//! 8       2     format version, u16 little-endian (this build: FORMAT_VERSION)
//! 10      2     reserved, 0
//! 12      8     body length, u64 little-endian
//! 20      32    sha256 of the body
//! 52      …     body: the `Model`, postcard-encoded
//! ```
//!
//! Encoding is deterministic (no maps with random order, no wall-clock
//! facts), so the same training run produces the same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ArtifactError, PredictError};
use crate::linear::LinearModel;
use crate::pipeline::Pipeline;
use crate::profile::{FeatureProfile, PredictionProfile, Profile};
use crate::schema::{FeatureKind, Schema, Value};
use crate::tree::{argmax, Forest, Tree};

pub const MAGIC: &[u8; 8] = b"EVGMODEL";
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 52;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Estimator {
    Tree(Tree),
    Forest(Forest),
    Linear(LinearModel),
}

impl Estimator {
    /// Class probabilities (or the regression value in `out[0]`) for one
    /// preprocessed row.
    #[inline]
    pub fn predict_into(&self, x: &[f64], out: &mut [f64]) {
        match self {
            Estimator::Tree(t) => {
                for (o, v) in out.iter_mut().zip(t.leaf(x)) {
                    *o = *v as f64;
                }
            }
            Estimator::Forest(f) => f.predict_into(x, out),
            Estimator::Linear(m) => m.predict_into(x, out),
        }
    }

    fn validate(&self, width: usize, n_outputs: usize) -> Result<(), String> {
        match self {
            Estimator::Tree(t) => t.validate(width, n_outputs),
            Estimator::Forest(f) if f.trees.is_empty() => Err("forest has no trees".into()),
            Estimator::Forest(f) => f
                .trees
                .iter()
                .try_for_each(|t| t.validate(width, n_outputs)),
            Estimator::Linear(m) => m.validate(width, n_outputs),
        }
    }
}

/// Facts about the training run that are reproducible (no wall clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainingInfo {
    pub algorithm: String,
    /// The chosen hyperparameters, as strings.
    pub params: BTreeMap<String, String>,
    /// The training request that produced this model (JSON), so that it can
    /// be retrained with the same recipe.
    pub recipe: String,
    pub dataset_sha256: String,
    pub train_rows: u64,
    pub test_rows: u64,
    pub seed: u64,
    /// Holdout metrics.
    pub metrics: BTreeMap<String, f64>,
    /// e.g. "evergreen-trainer 0.1.0".
    pub producer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub schema: Schema,
    pub pipeline: Pipeline,
    pub estimator: Estimator,
    pub profile: Profile,
    pub training: TrainingInfo,
}

/// Reusable buffers for [`Model::predict`]: one per worker thread, so the
/// hot path does not allocate.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    x: Vec<f64>,
    out: Vec<f64>,
}

/// One prediction, borrowing the scratch buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prediction<'a> {
    Class {
        /// Index into the schema's labels.
        class: usize,
        probabilities: &'a [f64],
    },
    Value(f64),
}

impl Model {
    /// Scores one raw row (values in schema feature order).
    pub fn predict<'s>(
        &self,
        row: &[Value],
        scratch: &'s mut Scratch,
    ) -> Result<Prediction<'s>, PredictError> {
        scratch.x.resize(self.pipeline.width, 0.0);
        scratch.out.resize(self.schema.n_outputs(), 0.0);
        self.pipeline
            .transform_row(&self.schema.features, row, &mut scratch.x)?;
        self.estimator.predict_into(&scratch.x, &mut scratch.out);
        Ok(match self.schema.labels() {
            Some(_) => Prediction::Class {
                class: argmax(&scratch.out),
                probabilities: &scratch.out,
            },
            None => Prediction::Value(scratch.out[0]),
        })
    }

    /// Encodes the artifact (header + body).
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = postcard::to_stdvec(self).expect("in-memory postcard encoding cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and validates an artifact. Any input gives a model or an
    /// error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ArtifactError> {
        let short = |what, expected: usize| ArtifactError::Truncated {
            what,
            expected: expected as u64,
            found: bytes.len() as u64,
        };
        if bytes.len() < MAGIC.len() {
            return Err(if MAGIC.starts_with(bytes) && !bytes.is_empty() {
                short("the header", HEADER_LEN)
            } else {
                ArtifactError::BadMagic
            });
        }
        if &bytes[..8] != MAGIC {
            return Err(ArtifactError::BadMagic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(short("the header", HEADER_LEN));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version > FORMAT_VERSION {
            return Err(ArtifactError::NewerFormat {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version == 0 {
            return Err(ArtifactError::Corrupt(
                "format version 0 is not valid".into(),
            ));
        }
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let body = &bytes[HEADER_LEN..];
        if (body.len() as u64) < len {
            return Err(ArtifactError::Truncated {
                what: "the body",
                expected: len,
                found: body.len() as u64,
            });
        }
        if body.len() as u64 > len {
            return Err(ArtifactError::Corrupt(format!(
                "{} unexpected bytes after the body",
                body.len() as u64 - len
            )));
        }
        let actual = Sha256::digest(body);
        if actual[..] != bytes[20..52] {
            return Err(ArtifactError::Checksum {
                expected: hex(&bytes[20..52]),
                actual: hex(&actual),
            });
        }
        let model: Model =
            postcard::from_bytes(body).map_err(|e| ArtifactError::Corrupt(format!("body: {e}")))?;
        model.validate().map_err(ArtifactError::Corrupt)?;
        Ok(model)
    }

    /// Internal consistency, so that a decoded model can never index out of
    /// bounds or loop while predicting.
    fn validate(&self) -> Result<(), String> {
        let n_out = self.schema.n_outputs();
        if n_out == 0 {
            return Err("classification target has no labels".into());
        }
        self.pipeline.validate(&self.schema.features)?;
        self.estimator.validate(self.pipeline.width, n_out)?;
        if self.profile.features.len() != self.schema.features.len() {
            return Err("profile does not cover the schema's features".into());
        }
        for (p, f) in self.profile.features.iter().zip(&self.schema.features) {
            match (p, &f.kind) {
                (FeatureProfile::Numeric(n), FeatureKind::Numeric) => n.validate()?,
                (FeatureProfile::Categorical(c), FeatureKind::Categorical { .. })
                    if c.categories.len() == c.counts.len() => {}
                _ => {
                    return Err(format!(
                        "profile of feature {:?} does not match its type",
                        f.name
                    ))
                }
            }
        }
        match &self.profile.predictions {
            PredictionProfile::Classification {
                class_counts,
                probability_counts,
                ..
            } if class_counts.len() == n_out && probability_counts.len() == n_out => {}
            PredictionProfile::Regression(p) if self.schema.labels().is_none() => p.validate()?,
            _ => return Err("prediction profile does not match the target".into()),
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
