//! Replication's one error enum. Hot-path variants are cheap and matchable; the API layer maps
//! them to gRPC statuses in one place.

use std::path::PathBuf;

use super::messages::NodeId;
use crate::storage::StorageError;

/// What can go wrong in replication.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// This node is not the leader; `leader` is the one it knows, if any.
    #[error("this node is not the leader{}", leader_hint(leader))]
    NotLeader {
        /// The current leader's id, when known.
        leader: Option<NodeId>,
    },
    /// Leadership changed while a produce waited to be committed: it may or may not have been.
    #[error(
        "leadership changed (epoch {epoch}) before offset {offset} was committed; the record may \
         or may not be in the log: consume to check before producing it again"
    )]
    LeadershipLost {
        /// The epoch the record was appended in.
        epoch: u64,
        /// The record's offset.
        offset: u64,
    },
    /// A voter change that cannot be made now; the reason says what to do.
    #[error("voter change refused: {reason}")]
    VoterChangeRefused {
        /// Why, and what to do.
        reason: String,
    },
    /// A peer message with a value no correct peer sends (an epoch or offset past any that can
    /// exist, a missing id, an answer from a node other than the one asked). Refused before it
    /// changes anything, never saved.
    #[error("refused a {kind} message: {reason}")]
    InvalidMessage {
        /// The message's kind.
        kind: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A peer message from a node this one does not know as a member: an announcement from a
    /// node that is not a voter, or a fetch from one that is neither a voter nor a member
    /// discovery knows. Ignored (its view may just be older), never acted on.
    #[error("refused a {kind} message from {id}: {reason}")]
    UnknownPeer {
        /// The message's kind.
        kind: &'static str,
        /// Who sent it.
        id: NodeId,
        /// Why it is not taken.
        reason: &'static str,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A follower was told to truncate below its high watermark: a committed record would be
    /// lost, so it refuses and stops.
    #[error(
        "refusing to truncate to offset {offset}, below the high watermark {high_watermark}: \
         committed records would be lost"
    )]
    TruncateBelowHighWatermark {
        /// Where the leader asked to truncate to.
        offset: u64,
        /// This node's high watermark.
        high_watermark: u64,
    },
    /// The quorum state file could not be parsed.
    #[error("quorum state {} is damaged: {reason}; restore it from a backup or remove the node's data to rejoin empty", path.display())]
    BadQuorumState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The quorum state could not be saved: the node cannot promise not to vote twice.
    #[error("saving the quorum state failed: {0}")]
    SaveQuorumState(#[source] Box<ReplicationError>),
    /// Configuration that cannot form a cluster.
    #[error("invalid replication configuration: {0}")]
    Config(String),
    /// The log failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn leader_hint(leader: &Option<NodeId>) -> String {
    match leader {
        Some(id) => format!("; the leader is {id}"),
        None => "; no leader is known yet (an election may be in progress), retry shortly".into(),
    }
}

impl ReplicationError {
    /// True when the node must stop: its log or quorum state can no longer be trusted.
    pub fn is_fatal(&self) -> bool {
        match self {
            ReplicationError::Storage(err) => err.is_fatal(),
            ReplicationError::TruncateBelowHighWatermark { .. }
            | ReplicationError::BadQuorumState { .. }
            | ReplicationError::SaveQuorumState(_) => true,
            _ => false,
        }
    }
}
