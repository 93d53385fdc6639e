//! The segmented log: synchronous, pure I/O; it knows nothing of gRPC, tokio or replication.
//!
//! ## Layout
//!
//! - `log`: [`Log`], the public face: open/recover, append with group commit, read, truncate,
//!   retention, checkpoints. Lock order and concurrency notes live there.
//! - `segment`: one log file plus its index; appends, positional reads, seal, truncate.
//! - `recovery`: opening a segment after a crash: trusting the checkpointed prefix, scanning the
//!   rest, telling a torn write from corruption.
//! - `batch`: the on-disk batch format, CRC32C over every field.
//! - `index`: the sparse offset and time index, memory-mapped when sealed.
//! - `epochs`: the leader-epoch cache replication uses to find divergence.
//! - `checkpoint`: small CRC'd files replaced atomically.
//! - `dir_lock`: `flock` on the data directory.
//! - `options`, `error`: [`LogOptions`] and [`StorageError`].
//!
//! ## On disk
//!
//! ```text
//! <dir>/.lock                        flock'd while open
//! <dir>/log-start-offset             checkpoint: first offset served (retention, truncate_prefix)
//! <dir>/leader-epochs                checkpoint: epoch -> start offset
//! <dir>/<base:020>.log               segment header, then batches; preallocated while active
//! <dir>/<base:020>.index             sparse offset/time index with a CRC'd footer
//! ```
//!
//! Guarantees, and the tests that prove them, are listed in `docs/storage.md`.

mod batch;
pub mod checkpoint;
mod dir_lock;
mod epochs;
mod error;
mod index;
mod log;
mod options;
mod recovery;
mod segment;

pub use batch::{
    ATTR_CONTROL, BATCH_HEADER_LEN, Batch, BatchError, BatchHeader, RECORD_HEADER_LEN, Record,
    StoredRecord, encode as encode_batch, encoded_batch_len, validate as validate_batch,
};
pub use error::{Result, Shortage, StorageError};
pub use log::{
    AppendInfo, BoundedRead, Log, QUORUM_STATE_FILE, RecoveryReport, RetentionOutcome,
    START_OFFSET_FILE, SyncStats, now_ms,
};
pub use options::{Durability, LogOptions};
pub use recovery::{TORN_SEARCH_WINDOW, TornTail};
pub use segment::{SEGMENT_HEADER_LEN, index_file_name, log_file_name};
