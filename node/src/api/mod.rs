//! The gRPC services: proglog's client `Log` API (wire-compatible with proglog's `log.v1.Log`)
//! over the storage engine, plus health and reflection. The only layer (with `client/`) that
//! knows tonic.
//!
//! ## Layout
//!
//! - `log_service`: `LogService`, the `log.v1.Log` implementation.
//! - `logs`: the `log.v1.Logs` service (list and describe the cluster's logs), also
//!   implemented by `LogService`.
//! - `store`: `LogStore`, the async adapter to the synchronous storage engine (blocking work on
//!   the blocking pool, a watch channel announcing new records so streams never poll).
//! - `limits`: a request over the gRPC message limit gets `INVALID_ARGUMENT`, like an oversize
//!   record, not tonic's `OUT_OF_RANGE`.
//! - `peer`: the `log.v1.Peer` service replicas replicate through, and the gRPC transport that
//!   calls it.
//! - `admin`: the `log.v1.Admin` service: cluster status, leadership transfer.
//! - `health`: `grpc.health.v1`, with watches that end at shutdown.
//! - `streams`: the node's bounds on open streams and on the bytes they read ahead of their
//!   clients, and the slow-consumer rule.
//! - `status`: the one place storage errors become gRPC statuses.

mod admin;
mod health;
mod limits;
mod log_service;
mod logs;
mod peer;
mod status;
mod store;
mod streams;

pub use admin::{AdminAccess, AdminService};
pub use health::{EndingHealth, health_service};
pub use limits::MessageLimitLayer;
pub use log_service::{LogService, ServiceSettings};
pub use peer::{GrpcPeerTransport, PeerService};
pub use status::{LEADER_ADDR_METADATA, LEADER_ID_METADATA, to_replication_status, to_status};
pub use store::{LogStore, NewRecord, OutOfWindow, TimestampWindow};
pub use streams::{StreamBudget, StreamLimits};
