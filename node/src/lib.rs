//! # proglog-node
//!
//! The proglog node: a segmented commit log on disk, served over gRPC and replicated by pulling
//! from an elected leader. This crate holds the node's library; the binaries are thin wrappers.
//!
//! ## Layout
//!
//! - [`storage`]: the segmented log (sync, pure I/O). Everything else stands on it.
//!
//! Next (see `shared/design/architecture.md`): `replication/`, `discovery/`, `api/`,
//! `security/`, `telemetry/`, `client/`, each depending only on the layers below it.

pub mod fuzzing;
pub mod storage;
