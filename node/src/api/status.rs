//! Storage errors to gRPC statuses, in one place. Messages say what was wrong and what is
//! allowed, so a client can act without reading server logs.

use tonic::{Code, Status};

use crate::replication::ReplicationError;
use crate::storage::{Shortage, StorageError};

/// Metadata key naming the leader's id on a `NOT_LEADER`-style answer.
pub const LEADER_ID_METADATA: &str = "proglog-leader-id";
/// Metadata key naming the leader's RPC address, when known.
pub const LEADER_ADDR_METADATA: &str = "proglog-leader-addr";

/// Maps a replication error to the status a client sees; `leader_addr` goes into the
/// metadata of a not-leader answer so smart clients can go straight to the leader.
pub fn to_replication_status(err: ReplicationError, leader_addr: Option<String>) -> Status {
    match err {
        ReplicationError::Storage(err) => to_status(err),
        ReplicationError::NotLeader { ref leader } => {
            let message = match &leader_addr {
                Some(addr) => format!("{err} at {addr}"),
                None => err.to_string(),
            };
            let mut status = Status::unavailable(message);
            if let Some(id) = leader.as_deref().and_then(|id| id.parse().ok()) {
                status.metadata_mut().insert(LEADER_ID_METADATA, id);
            }
            if let Some(addr) = leader_addr.and_then(|addr| addr.parse().ok()) {
                status.metadata_mut().insert(LEADER_ADDR_METADATA, addr);
            }
            status
        }
        ReplicationError::LeadershipLost { .. } | ReplicationError::ShuttingDown => {
            Status::unavailable(err.to_string())
        }
        ReplicationError::VoterChangeRefused { .. } => Status::failed_precondition(err.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// Maps a storage error to the status a client sees.
pub fn to_status(err: StorageError) -> Status {
    match err.shortage() {
        Some(Shortage::Disk) => {
            return Status::resource_exhausted(format!(
                "the disk is full, so this node takes no writes; it still serves reads, and \
                 takes writes again by itself once space is freed ({err}: {})",
                source_of(&err)
            ));
        }
        Some(Shortage::Descriptors) => {
            return Status::resource_exhausted(format!(
                "this node has no file descriptor left for the write; retry shortly ({err}: {})",
                source_of(&err)
            ));
        }
        None => {}
    }
    let code = match &err {
        StorageError::OffsetOutOfRange { .. } => Code::OutOfRange,
        StorageError::RecordTooLarge { .. }
        | StorageError::BatchTooLarge { .. }
        | StorageError::EmptyBatch
        | StorageError::TooManyRecords { .. }
        | StorageError::TimestampSpread { .. }
        | StorageError::InvalidBatch { .. } => Code::InvalidArgument,
        StorageError::EpochRegression { .. }
        | StorageError::NonContiguousBatch { .. }
        | StorageError::Truncated { .. } => Code::Aborted,
        StorageError::Corruption { .. } => Code::DataLoss,
        StorageError::SyncFailed { .. } | StorageError::Stopped | StorageError::Closed => {
            Code::Unavailable
        }
        StorageError::Locked { .. }
        | StorageError::InvalidOption { .. }
        | StorageError::Io { .. } => Code::Internal,
    };
    Status::new(code, err.to_string())
}

/// The OS error under an I/O error, which its own message leaves out.
fn source_of(err: &StorageError) -> String {
    std::error::Error::source(err).map_or_else(String::new, ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_carries_the_valid_range() {
        let status = to_status(StorageError::OffsetOutOfRange {
            requested: 9,
            start: 0,
            end: 5,
        });
        assert_eq!(status.code(), Code::OutOfRange);
        assert!(status.message().contains("0..5"), "{}", status.message());
    }

    #[test]
    fn oversize_names_the_limit() {
        let status = to_status(StorageError::RecordTooLarge { size: 10, max: 5 });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("limit of 5 bytes"),
            "{}",
            status.message()
        );
    }
}
