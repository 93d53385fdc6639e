//! Pull-based consensus (KIP-595 in spirit): quorum state, elections, replication by fetch and
//! the high watermark.
//!
//! # Layout
//!
//! - [`messages`]: the peer protocol as plain values.
//! - [`replica`]: the I/O-free state machine, driven by time, ticks and messages.
//! - [`driver`]: [`driver::Consensus`], the async driver in a running node: timers, peer calls
//!   through [`driver::PeerTransport`], long-polled fetches, and the published cluster view.
//! - [`log`]: [`ReplicaLog`], what the state machine needs from a log (storage implements it).
//! - [`quorum`]: [`QuorumState`] and where it is persisted.
//! - [`error`]: the one error enum, [`ReplicationError`].
//! - `testkit` (tests): an in-memory disk (unsynced tails, retention, resets cut short, crashes
//!   inside any storage operation, failing saves) and a hand-driven network of replicas.
//! - `tests` (tests): one scenario for each fault that can break a guarantee when handled
//!   wrong: retention, lost disks, stale addresses, failed saves, hostile messages.
//! - `sim` (tests): a deterministic simulated cluster with every fault at once, checked after
//!   every event.

pub mod driver;
pub mod error;
pub mod log;
pub mod messages;
pub mod quorum;
pub mod replica;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

pub use error::ReplicationError;
pub use log::ReplicaLog;
pub use messages::{Envelope, FetchResult, Message, NodeId};
pub use quorum::{FileQuorumStore, QuorumState, QuorumStore, VoterSet};
pub use replica::{
    LEADER_CHANGE_RECORD_TYPE, Replica, ReplicaConfig, ReplicaStatus, RoleKind, VOTERS_RECORD_TYPE,
    VoterChange,
};
