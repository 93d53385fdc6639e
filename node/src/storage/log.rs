//! `Log`: the segmented log's public face. One writer appends (serialized by a mutex), any number
//! of readers read concurrently without taking the writer's lock, and group commit lets
//! concurrent appends under `Durability::Always` share one `fdatasync`.
//!
//! Lock order, where more than one is held: `writer` -> `checkpoint_lock` -> `segments` ->
//! `sync`. Readers take only `segments` (briefly, to clone the segment list) and each segment's
//! state lock (briefly, to copy a size and an index entry).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, RwLock};

use super::batch::{self, ATTR_CONTROL, Batch, Record, StoredRecord};
use super::checkpoint::{self, TEMP_SUFFIX};
use super::dir_lock::{DirLock, LOCK_FILE};
use super::epochs::EpochCache;
use super::error::{Result, Shortage, StorageError};
use super::options::{Durability, LogOptions};
use super::recovery::{self, TornTail};
use super::segment::{self, Segment};

/// Checkpoint file holding the log start offset (moved by `truncate_prefix` and retention).
pub const START_OFFSET_FILE: &str = "log-start-offset";

/// [`Inner::shortage`] after a write failed for lack of disk space.
const SHORT_OF_DISK: u8 = 1;
/// [`Inner::shortage`] after a write failed for lack of file descriptors.
const SHORT_OF_DESCRIPTORS: u8 = 2;
/// Checkpoint file holding the leader-epoch cache.
pub const EPOCHS_FILE: &str = "leader-epochs";
/// The replication layer's quorum state (epoch, vote, leader, voters), kept beside the log so
/// one directory holds everything a node must not lose.
pub const QUORUM_STATE_FILE: &str = "quorum-state";

/// What [`Log::read_within`] found.
#[derive(Debug)]
pub enum BoundedRead {
    /// Whole batches in offset order, the first holding the offset asked for (none at the
    /// end of the log).
    Batches(Vec<Batch>),
    /// The batch holding the offset is this many bytes, more than the read allowed.
    FirstBatchNeeds(usize),
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
}

/// What opening the log found and did. Logged by the caller; asserted by tests.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Segments opened.
    pub segments: usize,
    /// Bytes of batches read to recover (beyond the checkpoints).
    pub scanned_bytes: u64,
    /// A torn write cut off the end of the log, if any.
    pub torn_tail: Option<TornTail>,
    /// Indexes that were missing or disagreed with their log, and why, now rebuilt.
    pub rebuilt_indexes: Vec<(PathBuf, String)>,
    /// Leftover files removed (temp files, orphan indexes, segments below the start offset).
    pub removed_files: Vec<PathBuf>,
    /// Unknown files left alone.
    pub unknown_files: Vec<PathBuf>,
    /// Wall time spent opening.
    pub duration: Duration,
}

/// What `apply_retention` deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes freed.
    pub bytes_deleted: u64,
    /// The log start offset afterwards.
    pub start_offset: u64,
}

/// Counters for the node's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    /// `fdatasync` calls made for appends.
    pub syncs: u64,
    /// Total time spent in them.
    pub sync_nanos: u64,
}

#[derive(Debug)]
struct Writer {
    encode_buf: Vec<u8>,
    bytes_since_checkpoint: u64,
    /// Wall-clock time (ms) the active segment started, for roll by age.
    segment_started_ms: i64,
}

#[derive(Debug)]
struct SyncState {
    /// Offsets below this are on stable storage.
    durable_offset: u64,
    /// A thread is in `fdatasync` on behalf of the others.
    syncing: bool,
    /// Bumped by every suffix truncation, so a waiter never mistakes new data at a reused
    /// offset for its own.
    truncations: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    options: LogOptions,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    writer: Mutex<Writer>,
    checkpoint_lock: Mutex<()>,
    start_offset: AtomicU64,
    /// The leader epoch of the record just before `start_offset` (0 when there is none): the
    /// log keeps it as a KRaft snapshot keeps its epoch, so an empty log (retention, a reset)
    /// still says where it ends in epoch terms.
    start_epoch: AtomicU64,
    end_offset: AtomicU64,
    epochs: Mutex<EpochCache>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    stopped: AtomicBool,
    /// What the last write failed for lack of ([`SHORT_OF_DISK`], [`SHORT_OF_DESCRIPTORS`]), or
    /// 0 once a write succeeded.
    shortage: AtomicU8,
    /// Set by a clean `close()`: no more writes.
    closed: AtomicBool,
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
    maintenance: Mutex<MaintenanceState>,
    maintenance_wake: Condvar,
    /// Held from open until `close()` (or drop), so no other process opens the directory.
    dir_lock: Mutex<Option<DirLock>>,
    /// The end offset, published as soon as an append is written and before it is durable, so
    /// readers that may see unsynced records (followers copying the leader) need not wait for
    /// the leader's fsync.
    written: tokio::sync::watch::Sender<u64>,
}

/// The start offset checkpoint.
#[derive(Debug, Clone, Copy)]
struct StartCheckpoint {
    /// The first offset served.
    offset: u64,
    /// The epoch of the record before it.
    epoch: u64,
    /// A reset to `offset` was under way: the next open finishes it.
    resetting: bool,
}

/// The start offset checkpoint: `start u64 | epoch u64 | flags u64` (bit 0: a reset is under
/// way), little-endian.
fn encode_start(start: u64, epoch: u64, resetting: bool) -> [u8; 24] {
    let mut bytes = [0; 24];
    bytes[..8].copy_from_slice(&start.to_le_bytes());
    bytes[8..16].copy_from_slice(&epoch.to_le_bytes());
    bytes[16..].copy_from_slice(&u64::from(resetting).to_le_bytes());
    bytes
}

/// Reads what [`encode_start`] wrote, or the earlier 8-byte (start only) and 16-byte (no
/// flags) forms.
fn decode_start(bytes: &[u8]) -> Option<StartCheckpoint> {
    let word = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    let (offset, epoch, flags) = match bytes.len() {
        8 => (word(0..8)?, 0, 0),
        16 => (word(0..8)?, word(8..16)?, 0),
        24 => (word(0..8)?, word(8..16)?, word(16..24)?),
        _ => return None,
    };
    Some(StartCheckpoint {
        offset,
        epoch,
        resetting: flags & 1 != 0,
    })
}

/// One job of the background thread.
type BackgroundTask = fn(&Inner) -> Result<()>;

/// Requests to the log's background thread.
#[derive(Debug, Default)]
struct MaintenanceState {
    stop: bool,
    checkpoint_requested: bool,
}

/// The log's background thread: periodic fsync under `Durability::Interval`, and index
/// checkpoints, which must sync the data they cover and so must not stall an appender.
#[derive(Debug)]
struct Maintenance {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

/// A segmented, checksummed, crash-safe commit log in one directory.
#[derive(Debug)]
pub struct Log {
    inner: Arc<Inner>,
    maintenance: Mutex<Option<Maintenance>>,
    report: RecoveryReport,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering from a crash if there was one.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Log> {
        let started = Instant::now();
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(StorageError::io("create directory", &dir))?;
        let lock = DirLock::acquire(&dir)?;
        let mut report = RecoveryReport::default();

        let mut bases = Vec::new();
        let mut index_bases = Vec::new();
        let listing = fs::read_dir(&dir).map_err(StorageError::io("list directory", &dir))?;
        for entry in listing {
            let entry = entry.map_err(StorageError::io("list directory", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(TEMP_SUFFIX) {
                segment::remove_if_exists(&path)?;
                report.removed_files.push(path);
            } else if let Some(base) = segment::parse_file_name(&name, "log") {
                bases.push(base);
            } else if let Some(base) = segment::parse_file_name(&name, "index") {
                index_bases.push((base, path));
            } else if ![LOCK_FILE, START_OFFSET_FILE, EPOCHS_FILE, QUORUM_STATE_FILE]
                .contains(&name.as_str())
            {
                tracing::warn!(path = %path.display(), "ignoring unknown file in the data directory");
                report.unknown_files.push(path);
            }
        }
        bases.sort_unstable();
        for (base, path) in index_bases {
            if bases.binary_search(&base).is_err() {
                segment::remove_if_exists(&path)?;
                report.removed_files.push(path);
            }
        }

        let checkpointed = match checkpoint::read(&dir, START_OFFSET_FILE)?.as_deref() {
            None => None,
            Some(bytes) => Some(decode_start(bytes).ok_or_else(|| StorageError::Corruption {
                path: dir.join(START_OFFSET_FILE),
                position: 0,
                expected_offset: 0,
                reason: "start offset checkpoint is not 8, 16 or 24 bytes".into(),
            })?),
        };
        let checkpointed_start = checkpointed.map(|start| start.offset);
        let start_epoch = checkpointed.map_or(0, |start| start.epoch);
        if let Some(reset) = checkpointed.filter(|start| start.resetting) {
            // A reset was cut short: finish it. Every segment goes, and the log starts empty
            // where the reset said (a half-deleted log would start where no leader's does).
            for base in bases.drain(..) {
                for path in [
                    dir.join(segment::log_file_name(base)),
                    dir.join(segment::index_file_name(base)),
                ] {
                    segment::remove_if_exists(&path)?;
                    report.removed_files.push(path);
                }
            }
            checkpoint::sync_dir(&dir)?;
            checkpoint::write(
                &dir,
                START_OFFSET_FILE,
                &encode_start(reset.offset, reset.epoch, false),
            )?;
        }

        let mut segments = BTreeMap::new();
        let mut scanned_epochs = Vec::new();
        let mut previous_next: Option<u64> = None;
        for (i, &base) in bases.iter().enumerate() {
            let is_last = i + 1 == bases.len();
            if let Some(expected) = previous_next
                && expected != base
            {
                return Err(StorageError::Corruption {
                    path: dir.join(segment::log_file_name(base)),
                    position: 0,
                    expected_offset: expected,
                    reason: format!(
                        "segment starts at offset {base}; the one before ends at {expected} (a segment is missing or overlaps)"
                    ),
                });
            }
            let (seg, seg_report) = recovery::open_segment(&dir, base, is_last, &options)?;
            report.scanned_bytes += seg_report.scanned_bytes;
            if let Some(reason) = seg_report.rebuilt_index {
                report
                    .rebuilt_indexes
                    .push((seg.log_path().to_path_buf(), reason));
            }
            if seg_report.torn_tail.is_some() {
                report.torn_tail = seg_report.torn_tail;
            }
            scanned_epochs.extend(seg_report.epochs);
            previous_next = Some(seg.next_offset());
            segments.insert(base, Arc::new(seg));
        }
        if segments.is_empty() {
            let base = checkpointed_start.unwrap_or(0);
            let seg = Segment::create(
                &dir,
                base,
                options.preallocate.then_some(options.segment_bytes),
            )?;
            segments.insert(base, Arc::new(seg));
        }
        report.segments = segments.len();

        let Some(active) = segments.values().next_back().cloned() else {
            unreachable!("a segment was created above");
        };
        let end = active.next_offset();
        let first_base = segments.keys().next().copied().unwrap_or(end);
        let start = checkpointed_start
            .unwrap_or(first_base)
            .clamp(first_base, end);
        // Segments wholly below the start offset: retention was interrupted after moving it.
        let below: Vec<u64> = segments
            .iter()
            .filter(|(_, seg)| {
                seg.next_offset() <= start && seg.base_offset() != active.base_offset()
            })
            .map(|(&base, _)| base)
            .collect();
        for base in below {
            if let Some(seg) = segments.remove(&base) {
                seg.delete_files()?;
                report.removed_files.push(seg.log_path().to_path_buf());
            }
        }

        let stored_epochs = match checkpoint::read(&dir, EPOCHS_FILE) {
            Ok(Some(bytes)) => EpochCache::decode(&bytes),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(error = %err, "leader epoch checkpoint unreadable; rebuilding it from the log");
                None
            }
        };
        let mut epochs = match stored_epochs.clone() {
            Some(mut cache) => {
                // An epoch persisted just before a crash may start past the recovered end.
                cache.truncate_from_end(end);
                for (epoch, start_offset) in scanned_epochs {
                    cache.assign(epoch, start_offset);
                }
                cache
            }
            None => {
                let mut cache = EpochCache::default();
                for seg in segments.values() {
                    for (epoch, start_offset) in seg.epoch_changes(options.max_batch_bytes)? {
                        cache.assign(epoch, start_offset);
                    }
                }
                cache
            }
        };
        // The cache describes exactly the records in [start, end): from the start first, so an
        // empty range leaves no epoch behind.
        epochs.truncate_from_start(start);
        epochs.truncate_from_end(end);
        if stored_epochs.as_ref() != Some(&epochs) {
            checkpoint::write(&dir, EPOCHS_FILE, &epochs.encode())?;
        }

        let now = now_ms();
        let segment_started_ms = active
            .first_timestamp(options.max_batch_bytes)?
            .map_or(now, |ts| ts.min(now));
        let inner = Arc::new(Inner {
            dir,
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer {
                encode_buf: Vec::new(),
                bytes_since_checkpoint: 0,
                segment_started_ms,
            }),
            checkpoint_lock: Mutex::new(()),
            start_offset: AtomicU64::new(start),
            start_epoch: AtomicU64::new(start_epoch),
            end_offset: AtomicU64::new(end),
            epochs: Mutex::new(epochs),
            // Everything recovered was read back from the file; sync it once before claiming it
            // durable (a process crash leaves written-but-unsynced data in the page cache).
            sync: Mutex::new(SyncState {
                durable_offset: 0,
                syncing: false,
                truncations: 0,
            }),
            synced: Condvar::new(),
            stopped: AtomicBool::new(false),
            shortage: AtomicU8::new(0),
            closed: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            sync_nanos: AtomicU64::new(0),
            maintenance: Mutex::new(MaintenanceState::default()),
            maintenance_wake: Condvar::new(),
            options,
            dir_lock: Mutex::new(Some(lock)),
            written: tokio::sync::watch::Sender::new(end),
        });
        inner.wait_durable(end, 0)?;
        let maintenance = Mutex::new(Some(Maintenance::start(&inner)));
        report.duration = started.elapsed();
        tracing::info!(
            dir = %inner.dir.display(),
            start_offset = start,
            end_offset = end,
            segments = report.segments,
            scanned_bytes = report.scanned_bytes,
            torn_tail = report.torn_tail.is_some(),
            duration_ms = report.duration.as_millis() as u64,
            "log opened"
        );
        Ok(Log {
            inner,
            maintenance,
            report,
        })
    }

    /// What opening the log found and did.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.inner.options
    }

    /// The first offset the log holds.
    pub fn start_offset(&self) -> u64 {
        self.inner.start_offset.load(Ordering::Acquire)
    }

    /// One past the last offset the log holds: the offset the next record gets.
    pub fn end_offset(&self) -> u64 {
        self.inner.end_offset.load(Ordering::Acquire)
    }

    /// A receiver of the end offset that changes as soon as an append is written, before it is
    /// durable under `Durability::Always` (and on a suffix truncation).
    pub fn subscribe_written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.written.subscribe()
    }

    /// Offsets below this are on stable storage.
    pub fn durable_offset(&self) -> u64 {
        self.inner.sync.lock().durable_offset
    }

    /// The leader epoch of the record just before the start offset (0 when the log starts at
    /// 0, or when it started elsewhere before this was recorded).
    pub fn start_epoch(&self) -> u64 {
        self.inner.start_epoch.load(Ordering::Acquire)
    }

    /// The start offset and [`Log::start_epoch`] as one: read while nothing moves the start
    /// (retention and resets hold the writer), so they never come from two different starts.
    pub fn start(&self) -> (u64, u64) {
        let _writer = self.inner.writer.lock();
        (self.start_offset(), self.start_epoch())
    }

    /// The latest leader epoch in the log.
    pub fn latest_epoch(&self) -> Option<u64> {
        self.inner.epochs.lock().latest()
    }

    /// The largest epoch `<= epoch` in the log and the offset where it ends (KIP-595's
    /// `EpochEndOffset`), used to find where a follower's log diverged from the leader's.
    pub fn epoch_end_offset(&self, epoch: u64) -> Option<(u64, u64)> {
        self.inner
            .epochs
            .lock()
            .end_offset_for(epoch, self.end_offset())
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.inner.segments.read().len()
    }

    /// Bytes of data in all segments (not counting preallocated space).
    pub fn size_bytes(&self) -> u64 {
        self.inner.segment_list().iter().map(|seg| seg.size()).sum()
    }

    /// What the last write failed for lack of, until a write succeeds again: while the disk is
    /// full the log refuses writes (each one tried again) and serves reads.
    pub fn shortage(&self) -> Option<Shortage> {
        match self.inner.shortage.load(Ordering::Acquire) {
            SHORT_OF_DISK => Some(Shortage::Disk),
            SHORT_OF_DESCRIPTORS => Some(Shortage::Descriptors),
            _ => None,
        }
    }

    /// fsync counters, for metrics.
    pub fn sync_stats(&self) -> SyncStats {
        SyncStats {
            syncs: self.inner.syncs.load(Ordering::Relaxed),
            sync_nanos: self.inner.sync_nanos.load(Ordering::Relaxed),
        }
    }

    /// True once a fatal I/O error stopped the log.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Appends `records` as one batch written by the leader of `epoch`. Returns once the batch is
    /// durable under `Durability::Always`, or once it is written otherwise.
    pub fn append(&self, epoch: u64, records: &[Record<'_>]) -> Result<AppendInfo> {
        self.inner.append(epoch, 0, records, true)
    }

    /// Appends like [`Log::append`] but returns once the batch is written, whatever the
    /// durability: under `Durability::Always` the caller makes it durable with [`Log::flush`]
    /// (which syncs everything written so far, so one caller can sync for many appends) and
    /// learns how far it is durable from [`Log::durable_offset`].
    pub fn append_unsynced(&self, epoch: u64, records: &[Record<'_>]) -> Result<AppendInfo> {
        self.inner.append(epoch, 0, records, false)
    }

    /// Appends a control batch (leader change, voter change): never user data.
    pub fn append_control(&self, epoch: u64, records: &[Record<'_>]) -> Result<AppendInfo> {
        self.inner.append(epoch, ATTR_CONTROL, records, true)
    }

    /// Appends a batch exactly as another replica encoded it (a follower copying the leader's
    /// log). Its base offset must be the log's end offset.
    pub fn append_batch(&self, batch: &Batch) -> Result<AppendInfo> {
        self.inner.append_encoded(batch)
    }

    /// Appends batches exactly as another replica encoded them, in order, starting at the log's
    /// end, and waits once for durability under `Durability::Always` (one fsync for a whole
    /// fetch, not one per batch). Returns the offsets covered, or `None` for no batches.
    pub fn append_batches(&self, batches: &[Batch]) -> Result<Option<AppendInfo>> {
        self.inner.append_encoded_all(batches)
    }

    /// Reads whole batches from the one containing `offset`, up to about `max_bytes` (at least
    /// one batch, so a consumer always progresses). The first batch may start before `offset`;
    /// callers skip the records they did not ask for. Empty at the end of the log. Batches are
    /// returned as soon as they are written; callers that must only expose durable or committed
    /// data bound what they serve by `durable_offset()` or their high watermark.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>> {
        match self.inner.read(offset, max_bytes, true)? {
            BoundedRead::Batches(batches) => Ok(batches),
            // Not returned when at least one batch is asked for.
            BoundedRead::FirstBatchNeeds(_) => Ok(Vec::new()),
        }
    }

    /// Like [`Log::read`], but never more than `max_bytes`: when the batch holding `offset`
    /// alone is larger, nothing is read and its size is returned instead, so a caller that
    /// budgets its memory can take that much first.
    pub fn read_within(&self, offset: u64, max_bytes: usize) -> Result<BoundedRead> {
        self.inner.read(offset, max_bytes, false)
    }

    /// The offset of the first record with a timestamp at or after `timestamp_ms`, or `None`
    /// when there is none (a consumer then starts at the end).
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        self.inner.offset_for_time(timestamp_ms)
    }

    /// Removes every record at or after `offset` (a follower whose tail diverged from the
    /// leader's). Whole segments after it are deleted; a batch that straddles `offset` is
    /// rewritten with only its records before `offset`.
    pub fn truncate_suffix(&self, offset: u64) -> Result<()> {
        self.inner.truncate_suffix(offset)
    }

    /// Moves the start of the log to `offset`: records before it are no longer served and
    /// segments wholly before it are deleted.
    pub fn truncate_prefix(&self, offset: u64) -> Result<()> {
        let mut writer = self.inner.writer.lock();
        self.inner.truncate_prefix_locked(&mut writer, offset)
    }

    /// Empties the log and restarts it at `offset`, whose preceding record the leader wrote in
    /// `epoch`: every record is removed and the next append gets `offset`. A follower does this
    /// when the leader no longer holds the records it lacks (retention removed them), so it can
    /// copy the leader's log from the leader's start. Atomic across a crash: the intent is
    /// saved first, and an open that finds it finishes the reset, so the log reopens either as
    /// it was or empty at `offset`.
    pub fn reset_to(&self, offset: u64, epoch: u64) -> Result<()> {
        self.inner.reset_to(offset, epoch)
    }

    /// Deletes the oldest sealed segments beyond the size and age limits, never a segment
    /// that holds `below` or a later offset: replication passes its high watermark, so
    /// retention never removes what is not committed (Kafka's rule).
    pub fn apply_retention(&self, now_ms: i64, below: u64) -> Result<RetentionOutcome> {
        self.inner.apply_retention(now_ms, below)
    }

    /// Whether appending `records` records (`bytes` encoded bytes) written by the leader of
    /// `epoch` would only copy them into the page cache: no segment roll is due (by size, age
    /// or offsets), so no file is sealed, synced or created, and `epoch` is already recorded,
    /// so the epoch checkpoint is not rewritten. A hint for callers that append on an async
    /// task: appends from other threads can make a roll due before this caller appends, and
    /// the age limit is only checked when no other append holds the writer.
    pub fn append_stays_in_page_cache(&self, epoch: u64, records: u64, bytes: u64) -> bool {
        if self.inner.epochs.lock().latest() != Some(epoch) {
            return false;
        }
        let started_ms = self
            .inner
            .writer
            .try_lock()
            .map(|writer| writer.segment_started_ms);
        let next_offset = self.inner.end_offset.load(Ordering::Acquire) + records;
        !self
            .inner
            .roll_due(&self.inner.active(), started_ms, bytes, next_offset)
    }

    /// Makes every appended record durable.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Flushes and writes the active segment's index, so a reopen need not scan.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// Clean shutdown: stops the background thread, syncs everything and checkpoints the
    /// index, so the next open reads no data. Dropping a `Log` without closing it is safe; the
    /// next open then recovers as after a crash.
    ///
    /// Takes `&self` so a log shared behind an `Arc` can be closed while callers still hold
    /// it; later writes fail with `StorageError::Closed`, and the directory lock is released.
    pub fn close(&self) -> Result<()> {
        if let Some(mut maintenance) = self.maintenance.lock().take() {
            maintenance.stop();
        }
        let writer = self.inner.writer.lock();
        self.inner.check_running()?;
        self.inner.flush()?;
        self.inner.checkpoint()?;
        self.inner.closed.store(true, Ordering::Release);
        drop(writer);
        // Closed for good: another process (or a new `Log`) may open the directory now.
        self.inner.dir_lock.lock().take();
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Some(mut maintenance) = self.maintenance.get_mut().take() {
            maintenance.stop();
        }
    }
}

impl Maintenance {
    fn start(inner: &Arc<Inner>) -> Maintenance {
        let worker = Arc::clone(inner);
        let thread = std::thread::Builder::new()
            .name("proglog-log-maintenance".into())
            .spawn(move || worker.run_maintenance())
            .map_err(|err| {
                tracing::error!(error = %err, "could not start the log's background thread; checkpoints and interval syncs run only at close");
            })
            .ok();
        Maintenance {
            inner: Arc::clone(inner),
            thread,
        }
    }

    fn stop(&mut self) {
        self.inner.maintenance.lock().stop = true;
        self.inner.maintenance_wake.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the log's background thread panicked");
        }
    }
}

impl Inner {
    /// The background thread's loop: checkpoints on request, syncs on the interval, until
    /// stopped or the log hits a fatal error. Disk work happens without the request lock held,
    /// so `stop()` never waits behind a sync for longer than that one sync.
    fn run_maintenance(&self) {
        let interval = (self.options.durability == Durability::Interval)
            .then_some(self.options.flush_interval);
        let mut next_flush = interval.map(|every| Instant::now() + every);
        let mut state = self.maintenance.lock();
        loop {
            if state.stop {
                return;
            }
            let work: Option<(&str, BackgroundTask)> = if state.checkpoint_requested {
                state.checkpoint_requested = false;
                Some(("checkpoint", Inner::checkpoint))
            } else {
                match (interval, next_flush) {
                    (Some(every), Some(deadline)) if Instant::now() >= deadline => {
                        next_flush = Some(Instant::now() + every);
                        Some(("interval flush", Inner::flush))
                    }
                    (_, Some(deadline)) => {
                        self.maintenance_wake.wait_until(&mut state, deadline);
                        None
                    }
                    (_, None) => {
                        self.maintenance_wake.wait(&mut state);
                        None
                    }
                }
            };
            if let Some((what, task)) = work {
                drop(state);
                if let Err(err) = task(self) {
                    tracing::error!(error = %err, task = what, "background log task failed");
                    if self.stopped.load(Ordering::Acquire) {
                        return;
                    }
                }
                state = self.maintenance.lock();
            }
        }
    }

    /// Asks the background thread for a checkpoint.
    fn request_checkpoint(&self) {
        self.maintenance.lock().checkpoint_requested = true;
        self.maintenance_wake.notify_all();
    }

    fn segment_list(&self) -> Vec<Arc<Segment>> {
        self.segments.read().values().cloned().collect()
    }

    fn active(&self) -> Arc<Segment> {
        match self.segments.read().values().next_back() {
            Some(seg) => Arc::clone(seg),
            None => unreachable!("the log always has an active segment"),
        }
    }

    fn check_running(&self) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(StorageError::Stopped);
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// After a write or roll failed: for lack of disk space or descriptors the log stays as it
    /// was and takes writes again once the resource is back (the failure is remembered for
    /// [`Log::shortage`]); any other failure stops the log.
    fn write_failed(&self, err: StorageError) -> StorageError {
        match err.shortage() {
            Some(shortage) => {
                let code = match shortage {
                    Shortage::Disk => SHORT_OF_DISK,
                    Shortage::Descriptors => SHORT_OF_DESCRIPTORS,
                };
                if self.shortage.swap(code, Ordering::AcqRel) != code {
                    tracing::warn!(error = %err, "a write failed for lack of a resource; the log refuses writes until it is back and serves reads meanwhile");
                }
                err
            }
            None => self.stop(err),
        }
    }

    /// Marks the log stopped after a failed write or sync and wakes every waiter.
    fn stop(&self, err: StorageError) -> StorageError {
        self.stopped.store(true, Ordering::Release);
        tracing::error!(error = %err, "fatal storage error; the log accepts no more writes");
        let _guard = self.sync.lock();
        self.synced.notify_all();
        err
    }

    fn append(
        &self,
        epoch: u64,
        attributes: u16,
        records: &[Record<'_>],
        until_durable: bool,
    ) -> Result<AppendInfo> {
        self.check_running()?;
        let mut writer = self.writer.lock();
        let base_offset = self.end_offset.load(Ordering::Acquire);
        let mut buf = std::mem::take(&mut writer.encode_buf);
        let encoded = batch::encode(
            &mut buf,
            base_offset,
            epoch,
            attributes,
            records,
            self.options.max_record_bytes,
            self.options.max_batch_bytes,
        );
        let result = encoded.and_then(|header| self.write_locked(&mut writer, &buf, &header));
        writer.encode_buf = buf;
        self.finish_append(writer, result, until_durable)
    }

    fn append_encoded(&self, batch: &Batch) -> Result<AppendInfo> {
        self.check_running()?;
        let bytes = batch.as_bytes();
        if bytes.len() > self.options.max_batch_bytes as usize {
            return Err(StorageError::BatchTooLarge {
                size: bytes.len(),
                max: self.options.max_batch_bytes as usize,
            });
        }
        let mut writer = self.writer.lock();
        let expected = self.end_offset.load(Ordering::Acquire);
        if batch.base_offset() != expected {
            return Err(StorageError::NonContiguousBatch {
                expected,
                found: batch.base_offset(),
            });
        }
        let result = self.write_locked(&mut writer, bytes, batch.header());
        self.finish_append(writer, result, true)
    }

    fn append_encoded_all(&self, batches: &[Batch]) -> Result<Option<AppendInfo>> {
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            return Ok(None);
        };
        self.check_running()?;
        let mut writer = self.writer.lock();
        let mut checkpoint_due = false;
        let mut result = Ok(());
        for batch in batches {
            let bytes = batch.as_bytes();
            if bytes.len() > self.options.max_batch_bytes as usize {
                result = Err(StorageError::BatchTooLarge {
                    size: bytes.len(),
                    max: self.options.max_batch_bytes as usize,
                });
                break;
            }
            let expected = self.end_offset.load(Ordering::Acquire);
            if batch.base_offset() != expected {
                result = Err(StorageError::NonContiguousBatch {
                    expected,
                    found: batch.base_offset(),
                });
                break;
            }
            match self.write_locked(&mut writer, bytes, batch.header()) {
                Ok((_, due)) => checkpoint_due |= due,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        let info = AppendInfo {
            base_offset: first.base_offset(),
            last_offset: last.last_offset(),
        };
        self.finish_append(writer, result.map(|()| (info, checkpoint_due)), true)
            .map(Some)
    }

    /// After the write: release the writer, publish the new end, wait for durability (under
    /// `Always`, when asked to), ask for a checkpoint when due.
    fn finish_append(
        &self,
        writer: parking_lot::MutexGuard<'_, Writer>,
        result: Result<(AppendInfo, bool)>,
        until_durable: bool,
    ) -> Result<AppendInfo> {
        let truncations = self.sync.lock().truncations;
        drop(writer);
        let (info, checkpoint_due) = result?;
        self.publish_written();
        if until_durable && self.options.durability == Durability::Always {
            self.wait_durable(info.last_offset + 1, truncations)?;
        }
        if checkpoint_due {
            self.request_checkpoint();
        }
        Ok(info)
    }

    /// Publishes the end offset to `subscribe_written` receivers (only when it moved).
    fn publish_written(&self) {
        let end = self.end_offset.load(Ordering::Acquire);
        self.written.send_if_modified(|published| {
            let moved = *published != end;
            *published = end;
            moved
        });
    }

    /// Writes one encoded batch at the end of the log, rolling first if due. Any I/O error here
    /// stops the log: the file's state past the last good batch is unknown.
    fn write_locked(
        &self,
        writer: &mut Writer,
        bytes: &[u8],
        header: &batch::BatchHeader,
    ) -> Result<(AppendInfo, bool)> {
        let mut new_epoch = false;
        {
            let mut epochs = self.epochs.lock();
            match epochs.latest() {
                Some(latest) if header.leader_epoch < latest => {
                    return Err(StorageError::EpochRegression {
                        epoch: header.leader_epoch,
                        latest,
                    });
                }
                _ => {
                    if epochs.assign(header.leader_epoch, header.base_offset) {
                        // Persisted before the batch is written; a crash in between leaves an
                        // epoch past the end, which open clamps away.
                        if let Err(err) =
                            checkpoint::write(&self.dir, EPOCHS_FILE, &epochs.encode())
                        {
                            epochs.unassign_latest();
                            return Err(self.write_failed(err));
                        }
                        new_epoch = true;
                    }
                }
            }
        }
        // If the batch is not written after all, its epoch is taken back (the saved copy is
        // past the end, which open clamps away).
        let undo_epoch = |err: StorageError| {
            if new_epoch {
                self.epochs.lock().unassign_latest();
            }
            self.write_failed(err)
        };
        let active = self.active();
        // A sealed active segment is a roll that failed for lack of room or descriptors: it
        // is done again before anything is written.
        let roll = active.is_sealed()
            || self.roll_due(
                &active,
                Some(writer.segment_started_ms),
                bytes.len() as u64,
                header.next_offset(),
            );
        let active = if roll {
            self.roll(writer).map_err(undo_epoch)?
        } else {
            active
        };
        // Written at the segment's logical end, which moves only once the write succeeded: a
        // write cut short leaves bytes past the end that the next write overwrites (and that
        // recovery, checking every batch, never reads as data).
        active
            .append(bytes, header, self.options.index_interval_bytes)
            .map_err(undo_epoch)?;
        self.shortage.store(0, Ordering::Release);
        self.end_offset
            .store(header.next_offset(), Ordering::Release);
        writer.bytes_since_checkpoint += bytes.len() as u64;
        let checkpoint_due =
            writer.bytes_since_checkpoint >= self.options.checkpoint_interval_bytes;
        if checkpoint_due {
            writer.bytes_since_checkpoint = 0;
        }
        Ok((
            AppendInfo {
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
            },
            checkpoint_due,
        ))
    }

    /// Whether writing `bytes` more, up to `next_offset`, into `active` must first roll it: it
    /// would grow past `segment_bytes`, it is older than `segment_max_age` (checked only when
    /// `segment_started_ms` is known), or its offsets would outgrow its index. An empty
    /// segment never rolls.
    fn roll_due(
        &self,
        active: &Segment,
        segment_started_ms: Option<i64>,
        bytes: u64,
        next_offset: u64,
    ) -> bool {
        if active.is_empty() {
            return false;
        }
        let too_big = active.size() + bytes > self.options.segment_bytes;
        let too_old = self
            .options
            .segment_max_age
            .zip(segment_started_ms)
            .is_some_and(|(age, started_ms)| now_ms().saturating_sub(started_ms) >= millis(age));
        let offsets_full = next_offset - active.base_offset() > u64::from(u32::MAX);
        too_big || too_old || offsets_full
    }

    /// Seals the active segment and starts a new one at the end offset.
    fn roll(&self, writer: &mut Writer) -> Result<Arc<Segment>> {
        let _checkpoint = self.checkpoint_lock.lock();
        let old = self.active();
        old.seal()?;
        {
            let mut sync = self.sync.lock();
            sync.durable_offset = sync.durable_offset.max(old.next_offset());
        }
        let end = old.next_offset();
        // A file at `end` that the log does not hold is what an earlier roll left when it
        // failed after creating it (for lack of room or descriptors): nothing was written to
        // it, so it is made again.
        let leftover = self.dir.join(segment::log_file_name(end));
        if !self.segments.read().contains_key(&end) && leftover.exists() {
            fs::remove_file(&leftover).map_err(StorageError::io("remove segment", &leftover))?;
        }
        let new = Arc::new(Segment::create(
            &self.dir,
            end,
            self.options
                .preallocate
                .then_some(self.options.segment_bytes),
        )?);
        self.segments.write().insert(end, Arc::clone(&new));
        writer.segment_started_ms = now_ms();
        writer.bytes_since_checkpoint = 0;
        tracing::debug!(base_offset = end, "rolled to a new segment");
        Ok(new)
    }

    /// Blocks until offsets below `target` are durable. The first waiter syncs for everyone
    /// waiting (group commit); the others sleep until it is done.
    fn wait_durable(&self, target: u64, truncations: u64) -> Result<()> {
        let mut state = self.sync.lock();
        loop {
            self.check_running()?;
            if state.truncations != truncations {
                return Err(StorageError::Truncated {
                    offset: target.saturating_sub(1),
                });
            }
            if state.durable_offset >= target {
                return Ok(());
            }
            if state.syncing {
                self.synced.wait(&mut state);
                continue;
            }
            state.syncing = true;
            let generation = state.truncations;
            drop(state);
            // End first, then the segment: if a roll happens in between, the older segment was
            // synced when it was sealed.
            let end = self.end_offset.load(Ordering::Acquire);
            let active = self.active();
            let started = Instant::now();
            let result = active.file().sync_data();
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.sync_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            state = self.sync.lock();
            state.syncing = false;
            match result {
                Ok(()) if state.truncations == generation => {
                    state.durable_offset = state.durable_offset.max(end);
                }
                Ok(()) => {}
                Err(source) => {
                    drop(state);
                    return Err(self.stop(StorageError::SyncFailed {
                        path: active.log_path().to_path_buf(),
                        source,
                    }));
                }
            }
            self.synced.notify_all();
        }
    }

    fn flush(&self) -> Result<()> {
        let truncations = self.sync.lock().truncations;
        self.wait_durable(self.end_offset.load(Ordering::Acquire), truncations)
    }

    fn checkpoint(&self) -> Result<()> {
        self.check_running()?;
        let _checkpoint = self.checkpoint_lock.lock();
        let active = self.active();
        let Some(snapshot) = active.snapshot() else {
            return Ok(());
        };
        let truncations = self.sync.lock().truncations;
        self.wait_durable(snapshot.1.next_offset, truncations)?;
        // A checkpoint that fails for lack of room is only late: the data is durable already.
        active
            .write_checkpoint(&snapshot)
            .map_err(|err| self.write_failed(err))
    }

    fn read(&self, offset: u64, max_bytes: usize, at_least_one: bool) -> Result<BoundedRead> {
        // A concurrent suffix truncation can cut a segment under a reader; the read is then
        // retried against the new end instead of reporting the vanished bytes as corruption.
        let mut attempts = 0;
        loop {
            let truncations = self.sync.lock().truncations;
            match self.read_once(offset, max_bytes, at_least_one) {
                Err(StorageError::Corruption { .. })
                    if attempts == 0 && self.sync.lock().truncations != truncations =>
                {
                    attempts += 1;
                }
                result => return result,
            }
        }
    }

    fn read_once(&self, offset: u64, max_bytes: usize, at_least_one: bool) -> Result<BoundedRead> {
        let start = self.start_offset.load(Ordering::Acquire);
        let end = self.end_offset.load(Ordering::Acquire);
        if offset < start || offset > end {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        let segments: Vec<Arc<Segment>> = {
            let map = self.segments.read();
            let first = map
                .range(..=offset)
                .next_back()
                .map_or(0, |(&base, _)| base);
            map.range(first..).map(|(_, seg)| Arc::clone(seg)).collect()
        };
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        let mut next = offset;
        for seg in segments {
            if next >= end || (bytes >= max_bytes && !batches.is_empty()) {
                break;
            }
            if next >= seg.next_offset() {
                continue;
            }
            let read = seg.read(
                next,
                max_bytes.saturating_sub(bytes),
                self.options.max_batch_bytes,
                at_least_one && batches.is_empty(),
            )?;
            if read.batches.is_empty() && batches.is_empty() {
                // The first batch alone is over `max_bytes`.
                let (_, first) = seg.locate(next, self.options.max_batch_bytes)?;
                return Ok(BoundedRead::FirstBatchNeeds(first.total_len()));
            }
            bytes += read.bytes;
            if let Some(last) = read.batches.last() {
                next = last.next_offset();
            }
            batches.extend(read.batches);
            if next < seg.next_offset() {
                // The byte budget ended inside this segment.
                break;
            }
        }
        // Batches written after `end` was read are left for the next call.
        batches.retain(|batch| batch.base_offset() < end);
        Ok(BoundedRead::Batches(batches))
    }

    fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let start = self.start_offset.load(Ordering::Acquire);
        for seg in self.segment_list() {
            if seg.next_offset() <= start || seg.max_timestamp() < timestamp_ms {
                continue;
            }
            let mut next = seg.time_floor(timestamp_ms).max(start);
            while next < seg.next_offset() {
                let read = seg.read(next, 1 << 20, self.options.max_batch_bytes, true)?;
                for batch in &read.batches {
                    if batch.header().max_timestamp >= timestamp_ms
                        && let Some(record) = batch.records().find(|record| {
                            record.offset >= start && record.timestamp_ms >= timestamp_ms
                        })
                    {
                        return Ok(Some(record.offset));
                    }
                }
                match read.batches.last() {
                    Some(last) => next = last.next_offset(),
                    None => break,
                }
            }
        }
        Ok(None)
    }

    fn truncate_suffix(&self, offset: u64) -> Result<()> {
        self.check_running()?;
        let mut writer = self.writer.lock();
        // Held until the cut is done, so no checkpoint writes a stale index meanwhile; released
        // before a straddling batch is re-appended, which may roll (and takes it again).
        let checkpoint_guard = self.checkpoint_lock.lock();
        let start = self.start_offset.load(Ordering::Acquire);
        let end = self.end_offset.load(Ordering::Acquire);
        if offset < start || offset > end {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        if offset == end {
            return Ok(());
        }
        let (target, later): (Arc<Segment>, Vec<Arc<Segment>>) = {
            let map = self.segments.read();
            let Some((_, target)) = map.range(..=offset).next_back() else {
                unreachable!("offset >= start, and the first segment starts at or before start");
            };
            let later = map
                .range(offset + 1..)
                .map(|(_, seg)| Arc::clone(seg))
                .collect();
            (Arc::clone(target), later)
        };
        let (position, header) = target.locate(offset, self.options.max_batch_bytes)?;
        // A batch that straddles the cut is rewritten with its records before `offset`.
        let straddling = if header.base_offset < offset {
            let read = target.read(header.base_offset, 0, self.options.max_batch_bytes, true)?;
            read.batches.into_iter().next()
        } else {
            None
        };
        let result = (|| {
            for seg in later.iter().rev() {
                seg.delete_files()?;
                self.segments.write().remove(&seg.base_offset());
            }
            checkpoint::sync_dir(&self.dir)?;
            target.truncate_to(
                position,
                header.base_offset,
                self.options
                    .preallocate
                    .then_some(self.options.segment_bytes),
            )
        })();
        result.map_err(|err| self.stop(err))?;
        self.end_offset.store(header.base_offset, Ordering::Release);
        {
            let mut sync = self.sync.lock();
            sync.truncations += 1;
            sync.durable_offset = sync.durable_offset.min(header.base_offset);
            self.synced.notify_all();
        }
        self.clamp_epochs()?;
        writer.bytes_since_checkpoint = 0;
        if target.is_empty() {
            writer.segment_started_ms = now_ms();
        }
        drop(checkpoint_guard);
        if let Some(batch) = straddling {
            let keep: Vec<_> = batch
                .records()
                .take_while(|record| record.offset < offset)
                .collect();
            let records: Vec<Record<'_>> = keep.iter().map(StoredRecord::as_record).collect();
            let mut buf = Vec::new();
            let header = batch::encode(
                &mut buf,
                batch.base_offset(),
                batch.leader_epoch(),
                batch.header().attributes,
                &records,
                u32::MAX,
                u32::MAX,
            )?;
            self.write_locked(&mut writer, &buf, &header)?;
            // The rewritten batch may hold records below the start offset.
            self.clamp_epochs()?;
        }
        drop(writer);
        self.publish_written();
        self.flush()
    }

    /// Makes the epoch cache describe exactly the records in `[start, end)`, persisting it if
    /// that changed it.
    fn clamp_epochs(&self) -> Result<()> {
        let mut epochs = self.epochs.lock();
        let before = epochs.clone();
        epochs.truncate_from_start(self.start_offset.load(Ordering::Acquire));
        epochs.truncate_from_end(self.end_offset.load(Ordering::Acquire));
        if *epochs != before {
            checkpoint::write(&self.dir, EPOCHS_FILE, &epochs.encode())
                .map_err(|err| self.stop(err))?;
        }
        Ok(())
    }

    fn truncate_prefix_locked(&self, writer: &mut Writer, offset: u64) -> Result<()> {
        self.check_running()?;
        let start = self.start_offset.load(Ordering::Acquire);
        let end = self.end_offset.load(Ordering::Acquire);
        if offset > end {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        if offset <= start {
            return Ok(());
        }
        // The epoch of the record before the new start, while the cache still knows it.
        let epoch = self
            .epochs
            .lock()
            .epoch_at(offset - 1)
            .unwrap_or_else(|| self.start_epoch.load(Ordering::Acquire));
        // Nothing has changed yet if this fails for lack of room: retention runs again later.
        checkpoint::write(
            &self.dir,
            START_OFFSET_FILE,
            &encode_start(offset, epoch, false),
        )
        .map_err(|err| self.write_failed(err))?;
        self.start_epoch.store(epoch, Ordering::Release);
        self.start_offset.store(offset, Ordering::Release);
        self.clamp_epochs()?;
        let active = self.active();
        if active.next_offset() <= offset && !active.is_empty() {
            self.roll(writer).map_err(|err| self.write_failed(err))?;
        }
        let doomed: Vec<Arc<Segment>> = {
            let mut map = self.segments.write();
            let Some(&active_base) = map.keys().next_back() else {
                unreachable!("the log always has an active segment");
            };
            let bases: Vec<u64> = map
                .iter()
                .filter(|&(&base, seg)| base != active_base && seg.next_offset() <= offset)
                .map(|(&base, _)| base)
                .collect();
            bases.iter().filter_map(|base| map.remove(base)).collect()
        };
        for seg in &doomed {
            seg.delete_files().map_err(|err| self.stop(err))?;
        }
        if !doomed.is_empty() {
            checkpoint::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn reset_to(&self, offset: u64, epoch: u64) -> Result<()> {
        self.check_running()?;
        let mut writer = self.writer.lock();
        let checkpoint_guard = self.checkpoint_lock.lock();
        // The intent first: a crash before the end is finished by the next open. Nothing has
        // changed yet if it fails for lack of room.
        checkpoint::write(
            &self.dir,
            START_OFFSET_FILE,
            &encode_start(offset, epoch, true),
        )
        .map_err(|err| self.write_failed(err))?;
        self.start_epoch.store(epoch, Ordering::Release);
        {
            // Held across the swap, so no reader ever finds the log without a segment; readers
            // already holding a segment keep its mapping after its files are gone.
            let mut segments = self.segments.write();
            for seg in segments.values() {
                seg.delete_files().map_err(|err| self.stop(err))?;
            }
            let fresh = Segment::create(
                &self.dir,
                offset,
                self.options
                    .preallocate
                    .then_some(self.options.segment_bytes),
            )
            .map_err(|err| self.stop(err))?;
            checkpoint::sync_dir(&self.dir).map_err(|err| self.stop(err))?;
            checkpoint::write(
                &self.dir,
                START_OFFSET_FILE,
                &encode_start(offset, epoch, false),
            )
            .map_err(|err| self.stop(err))?;
            // A read that raced this sees the truncation count move and retries.
            {
                let mut sync = self.sync.lock();
                sync.truncations += 1;
                sync.durable_offset = offset;
                self.synced.notify_all();
            }
            self.start_offset.store(offset, Ordering::Release);
            self.end_offset.store(offset, Ordering::Release);
            *segments = BTreeMap::from([(offset, Arc::new(fresh))]);
        }
        self.clamp_epochs()?;
        writer.bytes_since_checkpoint = 0;
        writer.segment_started_ms = now_ms();
        drop(checkpoint_guard);
        drop(writer);
        self.publish_written();
        tracing::info!(offset, "log emptied and restarted at a new start offset");
        Ok(())
    }

    fn apply_retention(&self, now_ms: i64, below: u64) -> Result<RetentionOutcome> {
        let mut writer = self.writer.lock();
        let segments = self.segment_list();
        let mut total: u64 = segments.iter().map(|seg| seg.size()).sum();
        let mut outcome = RetentionOutcome::default();
        let mut new_start = None;
        // Never the active segment, which is always last.
        for seg in segments.iter().take(segments.len().saturating_sub(1)) {
            let size = seg.size();
            let over_size = self
                .options
                .retention_bytes
                .is_some_and(|limit| total.saturating_sub(size) >= limit);
            let too_old = self
                .options
                .retention_age
                .is_some_and(|age| seg.max_timestamp() < now_ms.saturating_sub(millis(age)));
            if !(over_size || too_old) || seg.next_offset() > below {
                break;
            }
            total -= size;
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += size;
            new_start = Some(seg.next_offset());
        }
        if let Some(offset) = new_start {
            self.truncate_prefix_locked(&mut writer, offset)?;
            tracing::info!(
                segments = outcome.segments_deleted,
                bytes = outcome.bytes_deleted,
                start_offset = offset,
                "retention deleted old segments"
            );
        }
        outcome.start_offset = self.start_offset.load(Ordering::Acquire);
        Ok(outcome)
    }
}

/// `duration` in milliseconds, `i64::MAX` when longer: an age too large to count never wraps
/// into a negative one (which would make every segment old).
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
