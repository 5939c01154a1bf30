//! Evergreen's gRPC contracts, generated from `proto/evergreen/v1/*.proto`.
//!
//! Every daemon and client speaks through these types. The encoded file
//! descriptor set is exported for server reflection.

/// Package `evergreen.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("evergreen.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every Evergreen proto file
/// (plus the well-known types they import), for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/evergreen_descriptor.bin"));

pub use prost_types::Timestamp;
