//! Black-box tests of proglog: helpers shared by the binaries under `src/bin` and the tests under
//! `tests/`, which start those binaries as real processes.
//!
//! # Layout
//!
//! - `crash_protocol`: what the crash appender writes and prints (self-verifying record values
//!   and acknowledgement lines), so `tests/crash.rs` can check a recovered log against it.
//! - `netns`: a lab of network namespaces joined by a bridge, one per host, with hostnames in
//!   each namespace's hosts file, for running real processes on separate addresses (reachable
//!   from the test process too, if asked) and cutting one off from the others (a network
//!   partition) and healing it.
//! - `ports`: fixed loopback ports for processes that must know each other's addresses before
//!   they start, chosen so that nothing else is handed the same port meanwhile.
//! - `node_process`: a real `proglog-node` process on port 0 with a temporary data directory
//!   (start, connect, SIGTERM, restart, kill on drop), for the tests that talk to it over gRPC.

pub mod crash_protocol;
pub mod netns;
pub mod node_process;
pub mod ports;
