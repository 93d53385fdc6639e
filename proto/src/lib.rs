//! # proglog-proto
//!
//! The `.proto` files of proglog's services and the code tonic and prost generate from them.
//! This crate holds nothing else: no logic, so that clients can depend on it alone.
//!
//! ## Layout
//!
//! Empty until the node's gRPC service lands (issue 3): it will hold `log.v1` (wire-compatible
//! with proglog's `Log` service), the peer service and the admin service.
