//! # proglog-proto
//!
//! The `.proto` files of proglog's services and the code tonic and prost generate from them.
//! This crate holds nothing else: no logic. Clients use `proglog-client`, which generates
//! the client API's types itself.
//!
//! ## Layout
//!
//! - `../client/proto/log/v1/log.proto` (the client crate's): the client API, package
//!   `log.v1`, wire-compatible with proglog's `Log` service; proglog's additions are new fields
//!   (numbers 16 and up) and RPCs.
//! - `proto/log/v1/peer.proto`: the peer service nodes replicate with (KIP-595's messages).
//! - `proto/log/v1/admin.proto`: cluster status and leadership transfer, for operators.
//! - [`log::v1`]: the generated messages, client and server.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.

/// Package `log.v1`.
pub mod log {
    /// Generated from `proto/log/v1/*.proto`.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("log.v1");
    }
}

/// The encoded `FileDescriptorSet` of every proto in this crate (for server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/proglog_descriptor.bin"));
