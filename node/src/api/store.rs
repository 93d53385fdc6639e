//! `LogStore`: the one async adapter to the synchronous storage engine.
//!
//! Blocking work (fsyncs, reads) runs on tokio's blocking pool, never on a runtime thread and
//! never under a lock held across `.await`. Under `always`, a produce with quorum acks only
//! writes its batch; one sync task fsyncs everything written since its last fsync (group
//! commit without a blocked thread per produce) and tells the consensus, whose high watermark
//! counts only durable offsets, so the produce is still acknowledged only once durable on a
//! majority. A watch channel carries the *visible*
//! end offset: records below it were acknowledged (durable under `always`), so consumers never
//! see a record its producer has not been told about, and streams wait on the channel instead of
//! polling.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::status::{to_replication_status, to_status};
use crate::replication::driver::{Consensus, PeerDirectory};
use crate::replication::{NodeId, ReplicationError};
use crate::storage::{
    AppendInfo, Batch, BoundedRead, Durability, Log, Record, StorageError, encoded_batch_len,
    now_ms,
};

/// How long a produce waits for a leader to be elected before giving up.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A record to append, owned (decoded from a request).
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// The payload.
    pub value: Bytes,
    /// Milliseconds since the Unix epoch; 0 means "now".
    pub timestamp_ms: i64,
    /// proglog's `Record.type`.
    pub record_type: u32,
}

/// What to do with a record whose timestamp is outside the window around the leader's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfWindow {
    /// Refuse the produce with `INVALID_ARGUMENT` (Kafka's `CreateTime` with its bounds).
    Refuse,
    /// Stamp the record with the leader's clock instead.
    Replace,
}

/// The timestamps a leader accepts: at most `before` older and `after` newer than its clock,
/// as Kafka's `message.timestamp.before.max.ms` and `after.max.ms`. Age retention goes by the
/// largest timestamp a segment holds, so a record stamped far in the past would be deleted at
/// once and one stamped far in the future would keep its segment for good; the window keeps
/// both out. A timestamp of 0 means "now" and is always accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampWindow {
    /// How far in the past a timestamp may be (`--timestamp-before-max-ms`). Default 7 days.
    pub before: Duration,
    /// How far in the future a timestamp may be (`--timestamp-after-max-ms`). Default 1 hour.
    pub after: Duration,
    /// What happens to one outside (`--timestamp-out-of-window`). Default: refuse.
    pub out_of_window: OutOfWindow,
}

impl Default for TimestampWindow {
    fn default() -> Self {
        TimestampWindow {
            before: Duration::from_secs(7 * 24 * 3600),
            after: Duration::from_secs(3600),
            out_of_window: OutOfWindow::Refuse,
        }
    }
}

impl TimestampWindow {
    /// Checks (or replaces) the timestamps of `records` against `now_ms`.
    pub fn apply(&self, records: &mut [NewRecord], now_ms: i64) -> Result<(), Status> {
        let millis = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        let earliest = now_ms.saturating_sub(millis(self.before));
        let latest = now_ms.saturating_add(millis(self.after));
        let several = records.len() > 1;
        for (index, record) in records.iter_mut().enumerate() {
            let stamp = record.timestamp_ms;
            if stamp == 0 || (earliest..=latest).contains(&stamp) {
                continue;
            }
            match self.out_of_window {
                OutOfWindow::Replace => record.timestamp_ms = 0,
                OutOfWindow::Refuse => {
                    let (how_far, limit, flag) = if stamp < earliest {
                        (
                            now_ms.saturating_sub(stamp),
                            self.before,
                            "timestamp-before-max-ms",
                        )
                    } else {
                        (
                            stamp.saturating_sub(now_ms),
                            self.after,
                            "timestamp-after-max-ms",
                        )
                    };
                    let direction = if stamp < earliest { "before" } else { "after" };
                    let which = if several {
                        format!("record {index} of the batch: ")
                    } else {
                        String::new()
                    };
                    return Err(Status::invalid_argument(format!(
                        "{which}timestamp_ms {stamp} is {how_far} ms {direction} the node's clock ({now_ms}); at most {} ms are accepted (--{flag}). Leave timestamp_ms 0 to have the node stamp the record",
                        limit.as_millis()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The log, shared by every service.
#[derive(Debug)]
pub struct LogStore {
    log: Arc<Log>,
    consensus: Arc<Consensus>,
    directory: Arc<dyn PeerDirectory>,
    visible: watch::Sender<u64>,
    /// Cancelled when the log hits a fatal error: the node must stop.
    fatal: CancellationToken,
    /// The sync task under `always` (see the module docs), stopped by `close`.
    sync_task: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    timestamps: TimestampWindow,
}

impl LogStore {
    /// Wraps an open log replicated by `consensus`. Consumers see records below the high
    /// watermark; `directory` finds the leader's address for clients sent elsewhere. `fatal`
    /// is cancelled if the log stops on an I/O error. Produced records must have timestamps
    /// within `timestamps`.
    pub fn new(
        log: Arc<Log>,
        consensus: Arc<Consensus>,
        directory: Arc<dyn PeerDirectory>,
        fatal: CancellationToken,
        timestamps: TimestampWindow,
    ) -> Arc<Self> {
        let mut view = consensus.subscribe();
        let visible = watch::Sender::new(view.borrow_and_update().high_watermark);
        let sync_task = (log.options().durability == Durability::Always).then(|| {
            let stop = CancellationToken::new();
            let task = tokio::spawn(sync_loop(
                Arc::clone(&log),
                Arc::clone(&consensus),
                fatal.clone(),
                stop.clone(),
            ));
            (stop, task)
        });
        let store = Arc::new(LogStore {
            log,
            consensus,
            directory,
            visible: visible.clone(),
            fatal,
            sync_task: Mutex::new(sync_task),
            timestamps,
        });
        // The high watermark, as consumers' watch channel. Ends with the consensus.
        tokio::spawn(async move {
            while view.changed().await.is_ok() {
                let high_watermark = view.borrow_and_update().high_watermark;
                show_up_to(&visible, high_watermark);
            }
        });
        store
    }

    /// The consensus driver (status, admin).
    pub fn consensus(&self) -> &Arc<Consensus> {
        &self.consensus
    }

    /// Where the cluster's members are.
    pub fn directory(&self) -> &Arc<dyn PeerDirectory> {
        &self.directory
    }

    /// The first offset served.
    pub fn start_offset(&self) -> u64 {
        self.log.start_offset()
    }

    /// One past the last acknowledged offset: what consumers may read.
    pub fn visible_end(&self) -> u64 {
        *self.visible.borrow()
    }

    /// A receiver that changes whenever new records become visible.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// The storage engine, for metrics and status.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Appends `records` as one batch on the leader and returns once it is committed (below
    /// the high watermark, on a majority), or once the leader has it with `acks_leader`.
    ///
    /// The write only copies into the page cache (a few microseconds for the largest batch
    /// allowed), so it runs in place: the hop to the blocking pool and back would cost more
    /// than the write and is what bounds unary produce at concurrency 1. A write that would
    /// roll the segment (which fsyncs the sealed one) or record a new epoch runs on the
    /// blocking pool instead; a roll that another produce makes due in between can still
    /// happen in place, rarely. Under `always` the sync task makes the write durable; only
    /// `acks_leader` waits for its own fsync, on the blocking pool.
    pub async fn append(
        &self,
        mut records: Vec<NewRecord>,
        acks_leader: bool,
    ) -> Result<AppendInfo, Status> {
        let view = self.consensus.view();
        let Some(epoch) = view.leader_epoch else {
            return Err(self.not_leader(view.leader_id));
        };
        // The leader's clock decides, as a Kafka broker's does.
        self.timestamps.apply(&mut records, now_ms())?;
        let syncs_now = acks_leader && self.log.options().durability == Durability::Always;
        let encoded_bytes = encoded_batch_len(records.iter().map(|record| record.value.len()));
        let in_place = !syncs_now
            && self
                .log
                .append_stays_in_page_cache(epoch, records.len() as u64, encoded_bytes);
        let result = if in_place {
            append_now(&self.log, epoch, &records, false)
        } else {
            // An fsync, a segment roll or the epoch's first batch: file work, off the runtime.
            let log = Arc::clone(&self.log);
            tokio::task::spawn_blocking(move || append_now(&log, epoch, &records, syncs_now))
                .await
                .map_err(|err| Status::internal(format!("append task failed: {err}")))?
        };
        let info = match result {
            Ok(info) => info,
            // A later epoch's batches are already in the log: this node stopped leading.
            Err(StorageError::EpochRegression { .. }) => {
                return Err(self.not_leader(self.consensus.view().leader_id));
            }
            Err(err) => return Err(self.fail(err)),
        };
        self.consensus.note_local_append();
        if acks_leader {
            return Ok(info);
        }
        let mut view = self.consensus.subscribe();
        loop {
            {
                let now = view.borrow_and_update();
                if now.leader_epoch != Some(epoch) {
                    return Err(to_replication_status(
                        ReplicationError::LeadershipLost {
                            epoch,
                            offset: info.last_offset,
                        },
                        None,
                    ));
                }
                if now.high_watermark > info.last_offset {
                    // Consumers see it before its producer hears of it (read your writes), not
                    // only once the task above catches up with the view.
                    show_up_to(&self.visible, now.high_watermark);
                    return Ok(info);
                }
            }
            if view.changed().await.is_err() {
                return Err(Status::unavailable("the node is shutting down"));
            }
        }
    }

    /// Where a produce (or a question about the log's end) goes: `Ok(None)` when this node
    /// leads, `Ok(Some(leader))` when another node does. During an election it waits (up to
    /// `LEADER_WAIT`) for one to be known, so a call sent during a failover succeeds late
    /// rather than failing. A request that was
    /// already forwarded once is never forwarded again (`forwarded`), so views that disagree
    /// for a moment cannot bounce it between nodes.
    pub async fn route_to_leader(&self, forwarded: bool) -> Result<Option<NodeId>, Status> {
        let mut view = self.consensus.subscribe();
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            {
                let now = view.borrow_and_update();
                if now.leader_epoch.is_some() {
                    return Ok(None);
                }
                match &now.leader_id {
                    Some(_) if forwarded => return Err(self.not_leader(now.leader_id.clone())),
                    Some(leader) => return Ok(Some(leader.clone())),
                    None => {}
                }
            }
            match tokio::time::timeout_at(deadline, view.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable("the node is shutting down")),
                Err(_) => return Err(self.not_leader(None)),
            }
        }
    }

    /// `UNAVAILABLE` naming the leader and its address (also in the `proglog-leader-id` and
    /// `proglog-leader-addr` metadata), so a client can go there.
    pub fn not_leader(&self, leader: Option<NodeId>) -> Status {
        let addr = leader.as_deref().and_then(|id| self.directory.rpc_addr(id));
        to_replication_status(ReplicationError::NotLeader { leader }, addr)
    }

    /// Reads batches from the one holding `offset`, up to about `max_bytes`, trimmed to the
    /// visible end. `OUT_OF_RANGE` (with the valid range) outside `start..=visible_end`.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>, Status> {
        let (visible, mut batches) = self
            .read_visible(offset, move |log| log.read(offset, max_bytes))
            .await?;
        batches.retain(|batch| batch.base_offset() < visible);
        Ok(batches)
    }

    /// Reads committed batches from `offset`, never more than `max_bytes` (see
    /// [`crate::storage::Log::read_within`]).
    pub async fn read_within(&self, offset: u64, max_bytes: usize) -> Result<BoundedRead, Status> {
        let (visible, read) = self
            .read_visible(offset, move |log| log.read_within(offset, max_bytes))
            .await?;
        Ok(match read {
            BoundedRead::Batches(mut batches) => {
                batches.retain(|batch| batch.base_offset() < visible);
                BoundedRead::Batches(batches)
            }
            needs => needs,
        })
    }

    /// Runs `read` on the blocking pool if `offset` is at most the visible end, with that end.
    async fn read_visible<T: Send + 'static>(
        &self,
        offset: u64,
        read: impl FnOnce(&Log) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<(u64, T), Status> {
        let visible = self.visible_end();
        if offset > visible {
            return Err(to_status(StorageError::OffsetOutOfRange {
                requested: offset,
                start: self.start_offset(),
                end: visible,
            }));
        }
        let log = Arc::clone(&self.log);
        let result = tokio::task::spawn_blocking(move || read(&log))
            .await
            .map_err(|err| Status::internal(format!("read task failed: {err}")))?
            .map_err(|err| self.fail(err))?;
        Ok((visible, result))
    }

    /// The first offset at or after a time, or the visible end when there is none.
    pub async fn offset_for_time(&self, timestamp_ms: i64) -> Result<u64, Status> {
        let log = Arc::clone(&self.log);
        let found = tokio::task::spawn_blocking(move || log.offset_for_time(timestamp_ms))
            .await
            .map_err(|err| Status::internal(format!("lookup task failed: {err}")))?
            .map_err(|err| self.fail(err))?;
        Ok(found
            .unwrap_or_else(|| self.visible_end())
            .min(self.visible_end()))
    }

    /// Deletes segments past the retention limits, below the high watermark.
    pub async fn apply_retention(&self) -> Result<(), Status> {
        match self.consensus.apply_retention().await {
            Ok(_) => Ok(()),
            Err(ReplicationError::Storage(err)) => Err(self.fail(err)),
            Err(err) => {
                if err.is_fatal() {
                    tracing::error!(error = %err, "fatal replication error; stopping the node");
                    self.fatal.cancel();
                }
                Err(to_replication_status(err, None))
            }
        }
    }

    /// Clean shutdown of the log: sync and checkpoint. Calls still in flight that write
    /// afterwards fail with `UNAVAILABLE`.
    pub async fn close(&self) -> Result<(), StorageError> {
        let sync_task = self.sync_task.lock().take();
        if let Some((stop, task)) = sync_task {
            stop.cancel();
            let _ = task.await;
        }
        let log = Arc::clone(&self.log);
        tokio::task::spawn_blocking(move || log.close())
            .await
            .map_err(|err| StorageError::Io {
                op: "close",
                path: "log".into(),
                source: std::io::Error::other(err.to_string()),
            })?
    }

    fn fail(&self, err: StorageError) -> Status {
        if err.is_fatal() {
            tracing::error!(error = %err, "fatal storage error; stopping the node");
            self.fatal.cancel();
        }
        to_status(err)
    }
}

/// Makes records below `high_watermark` visible to consumers; the visible end never goes back.
fn show_up_to(visible: &watch::Sender<u64>, high_watermark: u64) {
    visible.send_if_modified(|visible| {
        let advanced = high_watermark > *visible;
        *visible = (*visible).max(high_watermark);
        advanced
    });
}

/// Under `always`: makes what the leader wrote durable and tells `consensus`, until `stop`.
/// Each fsync covers everything written before it started, so produces that arrive during one
/// share the next (group commit). A fatal error cancels `fatal`.
async fn sync_loop(
    log: Arc<Log>,
    consensus: Arc<Consensus>,
    fatal: CancellationToken,
    stop: CancellationToken,
) {
    let mut written = log.subscribe_written();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = written.changed() => if changed.is_err() { return },
        }
        let end = *written.borrow_and_update();
        if log.durable_offset() >= end {
            // A follower's append, which syncs itself, or one an earlier fsync covered.
            continue;
        }
        let flushing = Arc::clone(&log);
        match tokio::task::spawn_blocking(move || flushing.flush()).await {
            Ok(Ok(())) => consensus.note_local_append(),
            // A suffix truncation raced the fsync: the next write brings a new one.
            Ok(Err(StorageError::Truncated { .. })) => {}
            Ok(Err(err)) => {
                if err.is_fatal() {
                    tracing::error!(error = %err, "fatal storage error; stopping the node");
                    fatal.cancel();
                } else {
                    tracing::warn!(error = %err, "the log stopped taking writes; sync task ends");
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// Appends `records` as one batch of `epoch`, stamping records without a time; waits for
/// durability (under `always`) only `until_durable`.
fn append_now(
    log: &Log,
    epoch: u64,
    records: &[NewRecord],
    until_durable: bool,
) -> Result<AppendInfo, StorageError> {
    let now = now_ms();
    let batch: Vec<Record<'_>> = records
        .iter()
        .map(|record| Record {
            value: &record.value,
            key: None,
            timestamp_ms: if record.timestamp_ms == 0 {
                now
            } else {
                record.timestamp_ms
            },
            record_type: record.record_type,
        })
        .collect();
    if until_durable {
        log.append(epoch, &batch)
    } else {
        log.append_unsynced(epoch, &batch)
    }
}

#[cfg(test)]
mod tests {
    use super::{NewRecord, OutOfWindow, TimestampWindow};

    fn stamped(timestamps: &[i64]) -> Vec<NewRecord> {
        timestamps
            .iter()
            .map(|&timestamp_ms| NewRecord {
                value: bytes::Bytes::from_static(b"v"),
                timestamp_ms,
                record_type: 0,
            })
            .collect()
    }

    #[test]
    fn timestamps_outside_the_window_are_refused_or_replaced() {
        let now = 1_800_000_000_000;
        let window = TimestampWindow::default();
        let hour = 3_600_000;
        let mut fine = stamped(&[0, now, now - 6 * 24 * hour, now + hour]);
        window.apply(&mut fine, now).expect("within the window");
        assert_eq!(fine[2].timestamp_ms, now - 6 * 24 * hour, "kept as given");
        for bad in [
            1,
            now - 8 * 24 * hour,
            now + 2 * hour,
            i64::MAX,
            i64::MIN,
            -1,
        ] {
            let status = window
                .apply(&mut stamped(&[now, bad]), now)
                .expect_err("outside the window");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains("record 1 of the batch"),
                "{status:?}"
            );
            assert!(status.message().contains("--timestamp-"), "{status:?}");
        }
        let replace = TimestampWindow {
            out_of_window: OutOfWindow::Replace,
            ..window
        };
        let mut replaced = stamped(&[1, now, i64::MAX]);
        replace.apply(&mut replaced, now).expect("replaced");
        let stamps: Vec<i64> = replaced.iter().map(|record| record.timestamp_ms).collect();
        assert_eq!(
            stamps,
            [0, now, 0],
            "0 is stamped with the leader's clock on append"
        );
    }
}
