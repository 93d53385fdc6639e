//! What replication needs from a log, defined here (the consuming layer) and implemented by the
//! storage engine and by the simulation's in-memory log.

use std::sync::Arc;

use crate::storage::{AppendInfo, Batch, Durability, Log, Record, StorageError};

/// A replica's log. Every method is synchronous I/O; failures are storage errors, and one that
/// [`StorageError::is_fatal`] means the node must stop.
pub trait ReplicaLog {
    /// The first offset held.
    fn start_offset(&self) -> u64;
    /// One past the last offset written.
    fn end_offset(&self) -> u64;
    /// One past the last offset that survives a crash under the node's durability policy: what
    /// a replica may count towards the high watermark. Equal to `end_offset` when the node
    /// acknowledges without fsync.
    fn durable_end(&self) -> u64;
    /// Epoch of the last batch; for an empty log, [`ReplicaLog::start_epoch`].
    fn last_epoch(&self) -> u64;
    /// Epoch of the record just before the log's start (0 when it starts at 0): retention and
    /// resets keep it, as a KRaft snapshot keeps its epoch, so an empty log still compares in
    /// an election as where it ends, not as a log that never held anything.
    fn start_epoch(&self) -> u64;
    /// The first offset and the start epoch, read together (retention may move the start
    /// meanwhile).
    fn start(&self) -> (u64, u64) {
        (self.start_offset(), self.start_epoch())
    }
    /// The largest epoch `<= epoch` in the log (the start epoch included) and the offset
    /// where it ends.
    fn epoch_end_offset(&self, epoch: u64) -> Option<(u64, u64)>;
    /// Whole batches from the one holding `offset`, up to about `max_bytes` (at least one).
    fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>, StorageError>;
    /// Appends records as a leader of `epoch`; `control` marks a leader-change record.
    fn append(
        &self,
        epoch: u64,
        records: &[Record<'_>],
        control: bool,
    ) -> Result<AppendInfo, StorageError>;
    /// Appends batches copied from the leader, durable under the node's policy on return.
    fn append_fetched(&self, batches: &[Batch]) -> Result<(), StorageError>;
    /// Whether [`ReplicaLog::append_fetched`] of `batches` would only copy them into the page
    /// cache: no fsync under the node's durability, no segment roll and no new epoch to
    /// record. `false` when unsure: the caller then steps on the blocking pool.
    fn append_stays_in_page_cache(&self, batches: &[Batch]) -> bool;
    /// Removes every record at or after `offset`.
    fn truncate_suffix(&self, offset: u64) -> Result<(), StorageError>;
    /// Removes every record and restarts the log at `offset` (the leader's start, when
    /// retention removed what this replica lacks), whose preceding record is of `epoch`.
    fn reset_to(&self, offset: u64, epoch: u64) -> Result<(), StorageError>;
}

impl ReplicaLog for Arc<Log> {
    fn start_offset(&self) -> u64 {
        Log::start_offset(self)
    }

    fn end_offset(&self) -> u64 {
        Log::end_offset(self)
    }

    fn durable_end(&self) -> u64 {
        if self.options().durability == Durability::Always {
            self.durable_offset().min(Log::end_offset(self))
        } else {
            Log::end_offset(self)
        }
    }

    fn last_epoch(&self) -> u64 {
        self.latest_epoch()
            .unwrap_or_else(|| Log::start_epoch(self))
    }

    fn start_epoch(&self) -> u64 {
        Log::start_epoch(self)
    }

    fn start(&self) -> (u64, u64) {
        Log::start(self)
    }

    fn epoch_end_offset(&self, epoch: u64) -> Option<(u64, u64)> {
        Log::epoch_end_offset(self, epoch).or_else(|| {
            let start_epoch = Log::start_epoch(self);
            (start_epoch > 0 && start_epoch <= epoch)
                .then(|| (start_epoch, Log::start_offset(self)))
        })
    }

    fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>, StorageError> {
        Log::read(self, offset, max_bytes)
    }

    fn append(
        &self,
        epoch: u64,
        records: &[Record<'_>],
        control: bool,
    ) -> Result<AppendInfo, StorageError> {
        if control {
            self.append_control(epoch, records)
        } else {
            Log::append(self, epoch, records)
        }
    }

    fn append_fetched(&self, batches: &[Batch]) -> Result<(), StorageError> {
        self.append_batches(batches).map(|_| ())
    }

    fn append_stays_in_page_cache(&self, batches: &[Batch]) -> bool {
        if self.options().durability == Durability::Always {
            return false;
        }
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            return true;
        };
        let bytes = batches
            .iter()
            .map(|batch| batch.as_bytes().len() as u64)
            .sum();
        // One epoch for all: a batch of a later epoch than the log's last is recorded in the
        // epoch checkpoint, a file write.
        first.leader_epoch() == last.leader_epoch()
            && Log::append_stays_in_page_cache(
                self,
                last.leader_epoch(),
                last.next_offset().saturating_sub(first.base_offset()),
                bytes,
            )
    }

    fn truncate_suffix(&self, offset: u64) -> Result<(), StorageError> {
        Log::truncate_suffix(self, offset)
    }

    fn reset_to(&self, offset: u64, epoch: u64) -> Result<(), StorageError> {
        Log::reset_to(self, offset, epoch)
    }
}
