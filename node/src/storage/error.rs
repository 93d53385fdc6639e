//! The storage layer's one error type.
//!
//! Variants carry what a caller (or an operator reading a log line) needs to act: the offsets
//! asked for and allowed, the file and byte position of damage, the limit that was exceeded.
//! Hot-path variants (`OffsetOutOfRange`, `RecordTooLarge`, ...) are cheap to build and match.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the segmented log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A read or truncation asked for an offset the log does not hold.
    #[error(
        "offset {requested} is out of range: the log holds offsets {start}..{end} (end exclusive)"
    )]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// The first offset the log holds.
        start: u64,
        /// One past the last offset the log holds (the next offset to be assigned).
        end: u64,
    },

    /// One record is larger than `max_record_bytes`.
    #[error("record of {size} bytes exceeds the limit of {max} bytes (max_record_bytes)")]
    RecordTooLarge {
        /// Encoded size of the record (key and value).
        size: usize,
        /// The configured limit.
        max: usize,
    },

    /// A whole batch is larger than `max_batch_bytes`.
    #[error("batch of {size} bytes exceeds the limit of {max} bytes (max_batch_bytes)")]
    BatchTooLarge {
        /// Encoded size of the batch.
        size: usize,
        /// The configured limit.
        max: usize,
    },

    /// An append carried no records.
    #[error("a batch must hold at least one record")]
    EmptyBatch,

    /// A batch holds more records than its offset fields can describe.
    #[error("a batch may hold at most {max} records, got {count}")]
    TooManyRecords {
        /// Records in the batch.
        count: usize,
        /// The format's limit.
        max: usize,
    },

    /// Record timestamps in one batch are further apart than the format's 32-bit millisecond delta.
    #[error(
        "record timestamp {timestamp_ms} is more than 24 days away from the batch's first timestamp {first_timestamp_ms}"
    )]
    TimestampSpread {
        /// The offending record's timestamp.
        timestamp_ms: i64,
        /// The batch's first timestamp.
        first_timestamp_ms: i64,
    },

    /// An append carried a leader epoch older than one already in the log.
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    EpochRegression {
        /// Epoch of the rejected append.
        epoch: u64,
        /// Latest epoch in the log.
        latest: u64,
    },

    /// A pre-built batch (a follower's fetched data) does not start at the log's end offset.
    #[error("batch starts at offset {found} but the log's end offset is {expected}")]
    NonContiguousBatch {
        /// The log's end offset.
        expected: u64,
        /// The batch's base offset.
        found: u64,
    },

    /// A pre-built batch failed validation before it was written.
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// What was wrong with it.
        reason: String,
    },

    /// Bytes on disk are damaged: a checksum mismatch, an impossible length, or a gap, with valid
    /// data after it. The range is never served and never silently truncated.
    #[error(
        "corruption in {path} at byte {position} (expected offset {expected_offset}): {reason}"
    )]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the first bad batch in that file.
        position: u64,
        /// The offset the log expected to find there.
        expected_offset: u64,
        /// What was found instead.
        reason: String,
    },

    /// An fsync failed. The page cache may have dropped the dirty pages, so retrying could report
    /// success for data that is gone; the log refuses all further writes and the node must stop.
    #[error(
        "fsync of {path} failed; the log is stopped and must be reopened after the disk is checked"
    )]
    SyncFailed {
        /// The file whose sync failed.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// An earlier fatal error (a failed fsync or write) stopped the log.
    #[error("the log was stopped by an earlier fatal I/O error and must be reopened")]
    Stopped,

    /// The log was closed (clean shutdown); it accepts no more writes.
    #[error("the log is closed")]
    Closed,

    /// The log was truncated while an append waited for its fsync: the appended records are gone.
    #[error("records from offset {offset} were truncated before they became durable")]
    Truncated {
        /// First offset of the append that was truncated.
        offset: u64,
    },

    /// Another process (or another `Log` in this one) holds the data directory.
    #[error("data directory {path} is locked by another process")]
    Locked {
        /// The data directory.
        path: PathBuf,
    },

    /// A `LogOptions` field has a value that cannot work.
    #[error("invalid log option `{key}`: {reason}")]
    InvalidOption {
        /// The option's name.
        key: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },

    /// An I/O operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done ("open", "read", "write", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Result alias for the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// Builds an `Io` error; used with `map_err` at every syscall site.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StorageError::Io { op, path, source }
    }

    /// What the system ran out of, when this error is a failed write or file creation for
    /// lack of room (`ENOSPC`, `EDQUOT`) or of file descriptors (`EMFILE`, `ENFILE`). Such a
    /// write leaves the log as it was: the caller may retry once the resource is back.
    pub fn shortage(&self) -> Option<Shortage> {
        let StorageError::Io { source, .. } = self else {
            return None;
        };
        use rustix::io::Errno;
        match Errno::from_io_error(source)? {
            Errno::NOSPC | Errno::DQUOT => Some(Shortage::Disk),
            Errno::MFILE | Errno::NFILE => Some(Shortage::Descriptors),
            _ => None,
        }
    }

    /// True for errors after which the log accepts no more writes and the node must stop.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StorageError::SyncFailed { .. } | StorageError::Stopped
        )
    }
}

/// A resource whose lack fails a write without harming the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// The file system is full (or the quota is used up).
    Disk,
    /// The process or the system has no file descriptor left.
    Descriptors,
}
