//! # proglog-node
//!
//! The proglog node: a segmented commit log on disk, served over gRPC and replicated by pulling
//! from an elected leader. This crate holds the node's library; the binaries are thin wrappers.
//!
//! ## Layout
//!
//! - [`storage`]: the segmented log (sync, pure I/O). Everything else stands on it.
//! - [`replication`]: pull-based consensus: the I/O-free state machine (elections, fetch,
//!   high watermark), its persisted quorum state, and the simulation that tests it.
//! - [`discovery`]: gossip membership (serf): who is alive, their RPC addresses and roles;
//!   the only module that knows serf.
//! - [`api`]: the gRPC services over the log (proglog's `log.v1.Log`), and the async adapter
//!   to storage.
//! - [`config`]: [`config::NodeConfig`], validated before anything starts.
//! - [`dev`]: `proglog-node dev`, a local cluster in one command.
//! - [`server`]: start, serve until shutdown, drain, close.
//! - [`security`]: TLS with certificate hot reload, mutual TLS, and the Casbin ACL (proglog's
//!   model and policy files) enforced in one tower layer.
//! - [`telemetry`]: Prometheus metrics (one RPC layer, log gauges read at scrape time), the
//!   `/metrics`, `/healthz` and `/readyz` HTTP server, optional OpenTelemetry trace export.
//! - `fuzzing`: entry points shared by the fuzz targets and the corpus replay test.
//!
//! Each module depends only on the ones listed before it (`storage` at the bottom, `server`
//! wiring them together). The binaries: `proglog-node` (a node, or `dev`: a local cluster),
//! `proglog` (the CLI, built on the `proglog-client` crate) and `proglog-storage-bench`.

pub mod api;
pub mod config;
pub mod dev;
pub mod discovery;
pub mod fuzzing;
pub mod replication;
pub mod security;
pub mod server;
pub mod storage;
pub mod telemetry;
