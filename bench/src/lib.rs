//! # proglog-bench
//!
//! The pieces of `proglog-loadgen` worth sharing: a gRPC floor server and latency bookkeeping.
//! The load generator itself (what it runs against proglog, the echo floor and NATS JetStream,
//! and how it reports) lives in `src/loadgen/` and its modules; `bench/run.sh` drives the
//! single-node comparison and `bench/cluster.sh` the three-node one (proglog against a NATS
//! JetStream R3 cluster, and leader failover time).
//!
//! ## Layout
//!
//! - [`echo`]: `EchoLog`, a `log.v1.Log` service that stores nothing. Served on loopback it is
//!   the cost of tonic + HTTP/2 + prost on this machine, the floor proglog is compared with.
//! - [`stats`]: per-operation latency histograms (HdrHistogram) and the result of one case.

pub mod echo;
pub mod stats;
