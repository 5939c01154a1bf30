//! The trainer's domain errors; `grpc::to_status` maps them to statuses.

use std::path::Path;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TrainError {
    /// The request is malformed (unknown algorithm, bad parameter, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The dataset cannot be used; the message starts with the file name and
    /// says where and why ("data.csv line 3: column f7: ...").
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this (a dataset outside `trainer.dataset_dirs`).
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was reached (the message names its config key).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// An `s3://` dataset could not be read.
    #[error("dataset {uri}: {error}")]
    S3 {
        uri: String,
        error: evergreen_s3::S3Error,
    },
    /// The registry refused or failed a call.
    #[error("registry: {message}")]
    Registry { code: tonic::Code, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl TrainError {
    pub fn data(path: &Path, msg: impl std::fmt::Display) -> Self {
        TrainError::Data(format!("{} {msg}", path.display()))
    }

    /// The same error with `from` (a file name) written as `to` in the
    /// message of a data error.
    pub fn replace_name(self, from: &str, to: &str) -> Self {
        match self {
            TrainError::Data(m) => TrainError::Data(m.replace(from, to)),
            TrainError::InvalidArgument(m) => TrainError::InvalidArgument(m.replace(from, to)),
            other => other,
        }
    }

    pub fn from_status(s: tonic::Status) -> Self {
        TrainError::Registry {
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            TrainError::InvalidArgument(_) | TrainError::Data(_) => Code::InvalidArgument,
            TrainError::NotFound(_) => Code::NotFound,
            TrainError::FailedPrecondition(_) => Code::FailedPrecondition,
            TrainError::PermissionDenied(_) => Code::PermissionDenied,
            TrainError::ResourceExhausted(_) => Code::ResourceExhausted,
            TrainError::Cancelled(_) => Code::Cancelled,
            TrainError::S3 { error, .. } => {
                use evergreen_s3::S3Error;
                match error {
                    S3Error::NotFound { .. } => Code::NotFound,
                    // Fixed by creating the bucket or naming another one.
                    S3Error::NoSuchBucket { .. } => Code::FailedPrecondition,
                    // S3 answered 403: the trainer's identity may not read
                    // this object (bad keys, or no grant on the bucket).
                    S3Error::Credentials { .. } => Code::PermissionDenied,
                    S3Error::Unreachable { .. } => Code::Unavailable,
                    // S3 refused for a reason we do not classify (an
                    // archived object, ...): retrying as is will not help.
                    S3Error::Other { .. } => Code::FailedPrecondition,
                    // The object fails the checksum S3 stored at upload.
                    S3Error::Corrupt { .. } => Code::DataLoss,
                    // The trainer's own disk.
                    S3Error::Local { .. } => Code::Internal,
                }
            }
            TrainError::Registry { code, .. } => match code {
                // Our request was wrong: the caller's fault only for these.
                Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::AlreadyExists => *code,
                Code::Unavailable | Code::DeadlineExceeded => Code::Unavailable,
                _ => Code::Internal,
            },
            TrainError::Internal(_) => Code::Internal,
        }
    }
}

impl From<evergreen_model::FitError> for TrainError {
    fn from(e: evergreen_model::FitError) -> Self {
        use evergreen_model::FitError;
        match e {
            FitError::InvalidParams(m) => TrainError::InvalidArgument(m),
            FitError::Data(m) => TrainError::Data(m),
            FitError::Cancelled => TrainError::Cancelled("stopped during fitting".into()),
            FitError::Linfa(m) => TrainError::FailedPrecondition(format!("fitting failed: {m}")),
        }
    }
}
