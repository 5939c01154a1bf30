//! Evergreen's gRPC contracts, generated from `proto/evergreen/v1/*.proto`.
//!
//! Every daemon and client speaks through these types. The encoded file
//! descriptor set is exported for server reflection.

/// Package `evergreen.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("evergreen.v1");
}

/// Package `inference`: the Open Inference Protocol V2 (KServe / Triton).
pub mod inference {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inference");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every Evergreen proto file
/// (plus the well-known types they import), for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/evergreen_descriptor.bin"));

pub use prost_types::Timestamp;

/// gRPC metadata keys that are part of the contract.
pub mod metadata {
    /// Request header naming who makes a change (recorded in the audit trail).
    pub const ACTOR: &str = "x-evergreen-actor";
    /// Trailer on a lagged watcher's final status: the revision to resume from.
    pub const RESUME_REVISION: &str = "x-evergreen-resume-revision";
    /// A prediction's request id: taken from the caller when given, returned
    /// by the server in its response metadata, and carried to the monitor
    /// in each prediction-log record (the key for RecordFeedback).
    pub const REQUEST_ID: &str = "x-request-id";
}

/// Naming rules that are part of the contract (checked by the registry,
/// and early by any daemon that will later hand a name to it).
pub mod names {
    /// Model and alias names: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`. The error
    /// names `field` and the expected shape.
    pub fn check_name(field: &str, name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid {field} {name:?}: expected 1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"
            ))
        }
    }
}

/// gRPC status codes by their canonical names (`INVALID_ARGUMENT`), as
/// the CLI prints them and job records store them.
pub mod codes {
    use tonic::Code;

    const NAMES: &[(Code, &str)] = &[
        (Code::Ok, "OK"),
        (Code::Cancelled, "CANCELLED"),
        (Code::Unknown, "UNKNOWN"),
        (Code::InvalidArgument, "INVALID_ARGUMENT"),
        (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
        (Code::NotFound, "NOT_FOUND"),
        (Code::AlreadyExists, "ALREADY_EXISTS"),
        (Code::PermissionDenied, "PERMISSION_DENIED"),
        (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
        (Code::FailedPrecondition, "FAILED_PRECONDITION"),
        (Code::Aborted, "ABORTED"),
        (Code::OutOfRange, "OUT_OF_RANGE"),
        (Code::Unimplemented, "UNIMPLEMENTED"),
        (Code::Internal, "INTERNAL"),
        (Code::Unavailable, "UNAVAILABLE"),
        (Code::DataLoss, "DATA_LOSS"),
        (Code::Unauthenticated, "UNAUTHENTICATED"),
    ];

    pub fn name(code: Code) -> &'static str {
        NAMES
            .iter()
            .find(|(c, _)| *c == code)
            .map_or("UNKNOWN", |(_, n)| n)
    }

    /// `UNKNOWN` for a name that is not a code.
    pub fn from_name(name: &str) -> Code {
        NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map_or(Code::Unknown, |(c, _)| *c)
    }
}

/// Enum names without their proto prefix, as people read and type them:
/// `ACTIVE`, `ALIAS_SET`, `NUMERIC`.
macro_rules! short_name {
    ($($enum:ident => $prefix:literal),* $(,)?) => {$(
        impl v1::$enum {
            pub fn short_name(&self) -> &'static str {
                let full = self.as_str_name();
                full.strip_prefix($prefix).unwrap_or(full)
            }
        }
    )*};
}

short_name! {
    VersionStatus => "VERSION_STATUS_",
    EventKind => "EVENT_KIND_",
    FeatureType => "FEATURE_TYPE_",
    JobState => "JOB_STATE_",
    Stage => "STAGE_",
    SignalKind => "SIGNAL_KIND_",
    WindowKind => "WINDOW_KIND_",
    PhaseoutState => "PHASEOUT_STATE_",
    PhaseoutAction => "PHASEOUT_ACTION_",
}

#[cfg(test)]
mod tests {
    use super::v1::{EventKind, VersionStatus};

    #[test]
    fn short_names_drop_the_prefix() {
        assert_eq!(VersionStatus::Deprecated.short_name(), "DEPRECATED");
        assert_eq!(EventKind::AliasSet.short_name(), "ALIAS_SET");
    }
}

/// Calls that stay open as long as the caller wants (watches, the
/// prediction log, a training job's progress). Each daemon caps how many
/// are open at once (`limits.max_concurrent_streams`).
pub const LONG_LIVED_CALLS: &[&str] = &[
    "/evergreen.v1.Registry/Watch",
    "/evergreen.v1.Monitor/WatchSignals",
    "/evergreen.v1.Monitor/LogPredictions",
    "/evergreen.v1.Trainer/Train",
    "/evergreen.v1.Trainer/WatchJob",
    "/grpc.health.v1.Health/Watch",
];
