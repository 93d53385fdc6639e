//! Storage errors to gRPC statuses, in one place. Messages say what was wrong and what is
//! allowed, so a client can act without reading server logs.

use tonic::{Code, Status};

use crate::storage::StorageError;

/// Maps a storage error to the status a client sees.
pub fn to_status(err: StorageError) -> Status {
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
