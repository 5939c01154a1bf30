//! The registry's domain errors. `grpc::to_status` is the one place they
//! become gRPC statuses.

use thiserror::Error;

#[derive(Debug, Clone, Error)]
pub enum RegistryError {
    /// A field of the request is malformed; the message names it and the
    /// expected shape.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("model {0:?} not found")]
    ModelNotFound(String),
    #[error("version {version} of model {model:?} not found")]
    VersionNotFound { model: String, version: u64 },
    #[error("alias {alias:?} of model {model:?} not found")]
    AliasNotFound { model: String, alias: String },
    #[error("model {0:?} has no phase-out; start one with StartPhaseout (evergreen phaseout {0} --from V --to W --steps 10,25,50,100 --every 10m)")]
    NoPhaseout(String),
    #[error("model {0:?} already exists")]
    ModelExists(String),
    #[error("alias {model}@{alias} {}, but the request expected it {}", describe_target(*.actual), describe_expected(*.expected))]
    AliasMismatch {
        model: String,
        alias: String,
        expected: Option<u64>,
        actual: Option<u64>,
    },
    #[error("checksum mismatch: declared sha256 {declared}, uploaded bytes hash to {actual}")]
    ChecksumMismatch { declared: String, actual: String },
    #[error("artifact exceeds the size limit of {limit} bytes")]
    ArtifactTooLarge { limit: u64 },
    /// A limit of the daemon was hit; the message names it and its key.
    #[error("{0}")]
    LimitExceeded(String),
    /// An operation that is not allowed in the current state (the message
    /// says what is allowed).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("from_revision {requested} is ahead of the current revision {current}")]
    FutureRevision { requested: u64, current: u64 },
    /// A watcher fell too far behind; it resumes from `resume_from`.
    #[error("watcher fell behind the event stream; resume with from_revision={resume_from}")]
    WatcherLagged { resume_from: u64 },
    #[error("registry is shutting down")]
    ShuttingDown,
    /// A dependency (an S3 endpoint) is down; retry later.
    #[error("{0}")]
    Unavailable(String),

    /// Stored bytes are gone or corrupt (an artifact missing from its
    /// store): nothing the caller can fix by retrying.
    #[error("{0}")]
    DataLoss(String),

    /// Disk or database failure: not the caller's fault.
    #[error("storage error: {0}")]
    Storage(String),
}

fn describe_expected(v: Option<u64>) -> String {
    match v {
        Some(v) => format!("to point at version {v}"),
        None => "not to exist".to_string(),
    }
}

fn describe_target(v: Option<u64>) -> String {
    match v {
        Some(v) => format!("points at version {v}"),
        None => "does not exist".to_string(),
    }
}

impl From<sled::Error> for RegistryError {
    fn from(e: sled::Error) -> Self {
        RegistryError::Storage(e.to_string())
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        // A reader of the artifact store may carry the domain error (an S3
        // object gone mid-download is DataLoss, not a local disk error).
        match e.get_ref().and_then(|i| i.downcast_ref::<RegistryError>()) {
            Some(inner) => inner.clone(),
            None => RegistryError::Storage(e.to_string()),
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
