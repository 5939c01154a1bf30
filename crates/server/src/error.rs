//! The server's domain errors; `grpc::to_status` maps them to statuses.

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// Bad request content; the message names the field and the expectation.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// A RETIRED version, or one whose artifact failed to load.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Not ready yet, or the registry is unreachable for an on-demand load.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    pub fn code(&self) -> tonic::Code {
        match self {
            ServeError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            ServeError::NotFound(_) => tonic::Code::NotFound,
            ServeError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            ServeError::Unavailable(_) => tonic::Code::Unavailable,
            ServeError::Internal(_) => tonic::Code::Internal,
        }
    }
}
