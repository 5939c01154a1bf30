//! Errors of the model crate: loading an artifact, fitting, predicting.

/// Why an artifact could not be loaded. Never a panic: every byte sequence
/// either decodes into a valid model or yields one of these.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("not an Evergreen model artifact: expected the magic bytes \"EVGMODEL\" at the start")]
    BadMagic,
    #[error("artifact format version {found} is newer than this build understands (up to {supported}); upgrade Evergreen to load it")]
    NewerFormat { found: u16, supported: u16 },
    #[error("artifact truncated: {what} needs {expected} bytes, found {found}")]
    Truncated {
        what: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("artifact corrupt: body checksum mismatch (expected sha256 {expected}, got {actual})")]
    Checksum { expected: String, actual: String },
    #[error("artifact corrupt: {0}")]
    Corrupt(String),
}

/// A training failure that is the caller's to fix (parameters, data shape).
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("{0}")]
    InvalidParams(String),
    #[error("{0}")]
    Data(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Linfa(String),
}

impl From<linfa::Error> for FitError {
    fn from(e: linfa::Error) -> Self {
        FitError::Linfa(e.to_string())
    }
}

/// A row that cannot be scored: the message names the feature and what was
/// expected, for the server to return as INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PredictError {
    #[error("expected {expected} feature values ({names}), got {got}")]
    Arity {
        expected: usize,
        got: usize,
        names: String,
    },
    #[error("feature {feature:?} is numeric: cannot parse {value:?} as a number")]
    NotANumber { feature: String, value: String },
    #[error("feature {feature:?}: value {value} is not finite (send a missing value instead of NaN/inf)")]
    NotFinite { feature: String, value: f64 },
    #[error("unknown feature {0:?}")]
    UnknownFeature(String),
}
