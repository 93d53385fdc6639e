//! [`Health`]: what `/healthz` and `/readyz` answer.
//!
//! Liveness is "the process runs its loops": the HTTP server answering on the node's runtime is
//! the proof, so `/healthz` is 200 whenever it can answer at all, during log recovery and
//! shutdown too (restarting a node that is recovering a large log would only start over).
//! Readiness is "send me traffic": 200 from the moment the log is open and gRPC is serving until
//! shutdown begins, 503 before and after. A full disk shows in the body of a 200 (see
//! [`Health::disk_full`]) and in the `proglog_disk_full` gauge.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the disk is full now.
type DiskCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// The node's readiness, shared by the server (which sets it) and the HTTP endpoints.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    disk_full: OnceLock<DiskCheck>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.is_ready())
            .field("disk_full", &self.disk_full())
            .finish()
    }
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

    /// Where `/readyz` learns that the disk is full (set once, when the log is open).
    pub fn watch_disk(&self, full: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.disk_full.set(Box::new(full));
    }

    /// Whether the log refuses writes because the disk is full. The node stays ready then: it
    /// serves reads, and a follower forwards writes to the leader, so taking it out of load
    /// balancing would only cut its readers off; `/readyz` says so in its body instead.
    pub fn disk_full(&self) -> bool {
        self.disk_full.get().is_some_and(|full| full())
    }
}
