//! [`Health`]: what `/healthz` and `/readyz` answer.
//!
//! Liveness is "the process runs its loops": the HTTP server answering on the node's runtime is
//! the proof, so `/healthz` is 200 whenever it can answer at all, during log recovery and
//! shutdown too (restarting a node that is recovering a large log would only start over).
//! Readiness is "send me traffic": 200 from the moment the log is open and gRPC is serving until
//! shutdown begins, 503 before and after.

use std::sync::atomic::{AtomicBool, Ordering};

/// The node's readiness, shared by the server (which sets it) and the HTTP endpoints.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Not ready yet.
    pub fn new() -> Self {
        Health::default()
    }

    /// The log is open and gRPC is serving.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Shutdown began (or serving stopped): take the node out of load balancing.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
