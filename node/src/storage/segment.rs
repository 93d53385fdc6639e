//! One segment: a log file of batches starting at a base offset, and its index.
//!
//! The log file starts with a CRC'd header and is preallocated to `segment_bytes`, so the file
//! size says nothing about where the data ends: the logical end is the first position that does
//! not hold a valid batch with the expected offset (see `recovery`). A sealed segment's file is
//! trimmed to its logical size and its index written once; the active segment's index is kept in
//! memory and checkpointed.
//!
//! Concurrency: the writer appends with positional writes and then publishes the new size under
//! the state lock; readers take the lock only to copy the size and one index entry, then read
//! with positional reads, so reads never wait for writes or fsyncs.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parking_lot::RwLock;

use super::batch::{self, BATCH_HEADER_LEN, Batch, BatchError, BatchHeader};
use super::checkpoint;
use super::error::{Result, StorageError};
use super::index::{self, Entries, IndexEntry, IndexFooter};

/// Size of the log file header.
pub const SEGMENT_HEADER_LEN: usize = 24;
const MAGIC: &[u8; 8] = b"PROGLOG\0";
const VERSION: u32 = 1;

/// `<base_offset:020>.log`
pub fn log_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// `<base_offset:020>.index`
pub fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.index")
}

/// Parses a segment file name strictly: twenty digits and the given extension.
pub fn parse_file_name(name: &str, extension: &str) -> Option<u64> {
    let digits = name.strip_suffix(extension)?.strip_suffix('.')?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn encode_header(base_offset: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32c::crc32c(&header[..20]);
    header[20..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Index state that grows as batches are appended (or found by recovery). Appends and recovery
/// both go through [`IndexBuilder::add`], so a rebuilt index equals the one built by appending.
#[derive(Debug, Clone)]
pub struct IndexBuilder {
    /// Bytes of the file holding valid batches (header included).
    pub size: u64,
    /// The offset after the last batch.
    pub next_offset: u64,
    /// Largest record timestamp so far (`i64::MIN` when empty).
    pub max_timestamp: i64,
    /// Bytes of batches appended since the last index entry.
    pub bytes_since_entry: u64,
}

impl IndexBuilder {
    /// Starts an empty segment.
    pub fn empty(base_offset: u64) -> Self {
        IndexBuilder {
            size: SEGMENT_HEADER_LEN as u64,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            bytes_since_entry: 0,
        }
    }

    /// Accounts for `header`'s batch written at `self.size`, adding an index entry to `entries`
    /// when one is due.
    pub fn add(
        &mut self,
        base_offset: u64,
        header: &BatchHeader,
        interval: u32,
        entries: &mut Vec<IndexEntry>,
    ) {
        if entries.is_empty() || self.bytes_since_entry >= u64::from(interval) {
            entries.push(IndexEntry {
                relative_offset: (header.base_offset - base_offset) as u32,
                position: self.size as u32,
                max_timestamp_before: self.max_timestamp,
            });
            self.bytes_since_entry = 0;
        }
        self.advance(header);
    }

    /// Accounts for `header`'s batch written at `self.size`, without considering an index
    /// entry (the entries before it are already known).
    pub fn advance(&mut self, header: &BatchHeader) {
        let len = header.total_len() as u64;
        self.bytes_since_entry += len;
        self.size += len;
        self.next_offset = header.next_offset();
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
    }
}

/// The mutable part of a segment, behind one lock so readers see a consistent snapshot.
#[derive(Debug)]
pub struct SegmentState {
    /// The index entries.
    pub entries: Entries,
    /// Size, next offset and timestamps of the valid data.
    pub builder: IndexBuilder,
    /// True once sealed (read-only, trimmed, index on disk).
    pub sealed: bool,
}

/// A segment file and its index.
#[derive(Debug)]
pub struct Segment {
    base_offset: u64,
    dir: PathBuf,
    log_path: PathBuf,
    file: File,
    state: RwLock<SegmentState>,
}

/// What one segment read returned.
pub struct SegmentRead {
    /// Whole, verified batches in offset order; the first contains the offset asked for.
    pub batches: Vec<Batch>,
    /// Their total size in bytes.
    pub bytes: usize,
}

impl Segment {
    /// Creates a new, empty segment file (preallocated when asked) and makes it durable.
    pub fn create(dir: &Path, base_offset: u64, preallocate_to: Option<u64>) -> Result<Segment> {
        // Built under a temporary name and renamed into place once its header and allocation are
        // durable: a crash part-way leaves a temp file (removed on open), never a headerless
        // segment that would stop the log from opening.
        let log_path = dir.join(log_file_name(base_offset));
        let temp_path = dir.join(format!(
            "{}{}",
            log_file_name(base_offset),
            checkpoint::TEMP_SUFFIX
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp_path)
            .map_err(StorageError::io("create segment", &temp_path))?;
        file.write_all_at(&encode_header(base_offset), 0)
            .map_err(StorageError::io("write segment header", &temp_path))?;
        if let Some(len) = preallocate_to {
            preallocate(&file, &temp_path, len)?;
        }
        file.sync_all().map_err(|source| StorageError::SyncFailed {
            path: temp_path.clone(),
            source,
        })?;
        if log_path.exists() {
            return Err(StorageError::io("create segment", &log_path)(
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a segment with this base offset already exists",
                ),
            ));
        }
        fs::rename(&temp_path, &log_path)
            .map_err(StorageError::io("rename segment", &temp_path))?;
        checkpoint::sync_dir(dir)?;
        Ok(Segment {
            base_offset,
            dir: dir.to_path_buf(),
            log_path,
            file,
            state: RwLock::new(SegmentState {
                entries: Entries::Memory(Vec::new()),
                builder: IndexBuilder::empty(base_offset),
                sealed: false,
            }),
        })
    }

    /// Opens an existing segment file and checks its header. The caller recovers its state.
    pub fn open_file(dir: &Path, base_offset: u64) -> Result<(File, PathBuf)> {
        let log_path = dir.join(log_file_name(base_offset));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(StorageError::io("open segment", &log_path))?;
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let header_ok =
            file.read_exact_at(&mut header, 0).is_ok() && header == encode_header(base_offset);
        if !header_ok {
            return Err(StorageError::Corruption {
                path: log_path,
                position: 0,
                expected_offset: base_offset,
                reason: "segment header is missing, damaged, or names another base offset".into(),
            });
        }
        Ok((file, log_path))
    }

    /// Assembles a recovered segment.
    pub fn from_parts(
        dir: &Path,
        base_offset: u64,
        file: File,
        log_path: PathBuf,
        state: SegmentState,
    ) -> Segment {
        Segment {
            base_offset,
            dir: dir.to_path_buf(),
            log_path,
            file,
            state: RwLock::new(state),
        }
    }

    /// The offset of the segment's first record.
    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    /// The log file's path.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The log file, for fsync by the group committer.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes of valid data (header included).
    pub fn size(&self) -> u64 {
        self.state.read().builder.size
    }

    /// The offset after the segment's last record.
    pub fn next_offset(&self) -> u64 {
        self.state.read().builder.next_offset
    }

    /// Largest record timestamp (`i64::MIN` if empty).
    pub fn max_timestamp(&self) -> i64 {
        self.state.read().builder.max_timestamp
    }

    /// True when the segment holds no batches.
    pub fn is_empty(&self) -> bool {
        self.state.read().builder.size == SEGMENT_HEADER_LEN as u64
    }

    /// Appends one encoded batch at the end. The caller (the log's single writer) serializes
    /// appends; readers see the batch once the state lock publishes the new size.
    pub fn append(&self, bytes: &[u8], header: &BatchHeader, index_interval: u32) -> Result<()> {
        let position = self.state.read().builder.size;
        if let Err(source) = self.file.write_all_at(bytes, position) {
            // Whatever part was written goes, so no later read or recovery can meet it; if
            // that fails too, the segment's tail is unknown and the log must stop.
            self.file
                .set_len(position)
                .map_err(StorageError::io("cut a failed write from", &self.log_path))?;
            return Err(StorageError::io("write", &self.log_path)(source));
        }
        let mut state = self.state.write();
        let SegmentState {
            entries, builder, ..
        } = &mut *state;
        match entries {
            Entries::Memory(entries) => {
                builder.add(self.base_offset, header, index_interval, entries)
            }
            Entries::Mapped { .. } => unreachable!("appends go to the active segment only"),
        }
        Ok(())
    }

    /// Writes the active segment's index as a checkpoint covering the data up to `covered`
    /// (a snapshot taken before the caller synced it). Skipped if the segment was sealed since.
    pub fn write_checkpoint(&self, covered: &(Vec<IndexEntry>, IndexBuilder)) -> Result<()> {
        let (entries, builder) = covered;
        index::write(
            &self.dir,
            &index_file_name(self.base_offset),
            entries,
            &IndexFooter {
                sealed: false,
                base_offset: self.base_offset,
                logical_size: builder.size,
                next_offset: builder.next_offset,
                max_timestamp: builder.max_timestamp,
            },
        )
    }

    /// A consistent copy of the index state, for a checkpoint; `None` once sealed.
    pub fn snapshot(&self) -> Option<(Vec<IndexEntry>, IndexBuilder)> {
        let state = self.state.read();
        if state.sealed {
            return None;
        }
        Some((state.entries.to_vec(), state.builder.clone()))
    }

    /// Whether the segment is sealed (it takes no appends).
    pub fn is_sealed(&self) -> bool {
        self.state.read().sealed
    }

    /// Seals the segment: fsync, trim the preallocated tail, write the index, map it. Sealing
    /// a sealed segment writes and maps its index again.
    pub fn seal(&self) -> Result<()> {
        let (entries, builder) = {
            let state = self.state.read();
            (state.entries.to_vec(), state.builder.clone())
        };
        self.file
            .set_len(builder.size)
            .map_err(StorageError::io("trim segment", &self.log_path))?;
        self.file
            .sync_all()
            .map_err(|source| StorageError::SyncFailed {
                path: self.log_path.clone(),
                source,
            })?;
        let footer = IndexFooter {
            sealed: true,
            base_offset: self.base_offset,
            logical_size: builder.size,
            next_offset: builder.next_offset,
            max_timestamp: builder.max_timestamp,
        };
        let index_name = index_file_name(self.base_offset);
        index::write(&self.dir, &index_name, &entries, &footer)?;
        let index_path = self.dir.join(&index_name);
        // Opened here, so that a lack of descriptors is told apart from a damaged file.
        let index_file =
            File::open(&index_path).map_err(StorageError::io("open index", &index_path))?;
        let (mapped, _) = index::load_file(&index_file, self.base_offset).map_err(|reason| {
            StorageError::Corruption {
                path: index_path.clone(),
                position: 0,
                expected_offset: self.base_offset,
                reason: format!("index unreadable right after it was written: {reason}"),
            }
        })?;
        let mut state = self.state.write();
        state.entries = mapped;
        state.sealed = true;
        Ok(())
    }

    /// Cuts the segment back to `position` (a batch boundary holding `next_offset`), zeroes what
    /// was after it, and makes it the active segment again. The stale index file goes first, so
    /// a crash part-way leaves a log that recovery reads as a prefix of the old one.
    pub fn truncate_to(
        &self,
        position: u64,
        next_offset: u64,
        preallocate_to: Option<u64>,
    ) -> Result<()> {
        let index_path = self.dir.join(index_file_name(self.base_offset));
        remove_if_exists(&index_path)?;
        checkpoint::sync_dir(&self.dir)?;
        // Cutting the file and preallocating again zeroes the old bytes, so recovery can never
        // mistake truncated batches for data.
        self.file
            .set_len(position)
            .map_err(StorageError::io("truncate segment", &self.log_path))?;
        if let Some(len) = preallocate_to {
            preallocate(&self.file, &self.log_path, len)?;
        }
        self.file
            .sync_all()
            .map_err(|source| StorageError::SyncFailed {
                path: self.log_path.clone(),
                source,
            })?;
        let mut state = self.state.write();
        let entries: Vec<IndexEntry> = state
            .entries
            .to_vec()
            .into_iter()
            .filter(|entry| u64::from(entry.position) < position)
            .collect();
        // Size and offset are given; the bytes since the last entry and the newest timestamp
        // follow from the batches between the last kept entry and the cut (at most one index
        // interval of headers).
        let mut builder = IndexBuilder::empty(self.base_offset);
        if let Some(last) = entries.last() {
            builder.size = u64::from(last.position);
            builder.max_timestamp = last.max_timestamp_before;
            builder.next_offset = self.base_offset + u64::from(last.relative_offset);
        }
        let mut header = [0u8; BATCH_HEADER_LEN];
        while builder.size < position {
            self.file
                .read_exact_at(&mut header, builder.size)
                .map_err(StorageError::io("read", &self.log_path))?;
            let parsed = batch::peek_header(&header, u32::MAX).map_err(|err| {
                self.corruption(builder.size, builder.next_offset, err.to_string())
            })?;
            builder.advance(&parsed);
        }
        if builder.size != position || builder.next_offset != next_offset {
            return Err(self.corruption(
                position,
                next_offset,
                "truncation point is not a batch boundary".into(),
            ));
        }
        state.entries = Entries::Memory(entries);
        state.builder = builder;
        state.sealed = false;
        Ok(())
    }

    /// Deletes the segment's files: the index first, so a crash never leaves an index without
    /// its log.
    pub fn delete_files(&self) -> Result<()> {
        remove_if_exists(&self.dir.join(index_file_name(self.base_offset)))?;
        remove_if_exists(&self.log_path)
    }

    /// Finds the batch containing `offset` (which must be in this segment): its position and
    /// header. Headers between the index entry and the batch are read but not served, and each
    /// must continue the offsets of the one before.
    pub fn locate(&self, offset: u64, max_batch_bytes: u32) -> Result<(u64, BatchHeader)> {
        let (mut position, mut expected, size) = {
            let state = self.state.read();
            let relative = (offset - self.base_offset).min(u64::from(u32::MAX)) as u32;
            match state.entries.floor_offset(relative) {
                Some(entry) => (
                    u64::from(entry.position),
                    self.base_offset + u64::from(entry.relative_offset),
                    state.builder.size,
                ),
                None => (
                    SEGMENT_HEADER_LEN as u64,
                    self.base_offset,
                    state.builder.size,
                ),
            }
        };
        let mut buf = [0u8; BATCH_HEADER_LEN];
        loop {
            if position + BATCH_HEADER_LEN as u64 > size {
                return Err(self.corruption(
                    position,
                    expected,
                    "offset not found before the end of the segment".into(),
                ));
            }
            self.file
                .read_exact_at(&mut buf, position)
                .map_err(StorageError::io("read", &self.log_path))?;
            let header = batch::peek_header(&buf, max_batch_bytes)
                .map_err(|err| self.corruption(position, expected, err.to_string()))?;
            if header.base_offset != expected {
                return Err(self.corruption(
                    position,
                    expected,
                    format!("batch header names offset {}", header.base_offset),
                ));
            }
            if header.last_offset() >= offset {
                return Ok((position, header));
            }
            position += header.total_len() as u64;
            expected = header.next_offset();
        }
    }

    /// Reads whole batches starting with the one containing `offset`, up to `max_bytes` (but at
    /// least one batch when `at_least_one`) and never past the segment's end as it was when
    /// called.
    pub fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        max_batch_bytes: u32,
        at_least_one: bool,
    ) -> Result<SegmentRead> {
        let size = self.size();
        let (position, first) = self.locate(offset, max_batch_bytes)?;
        if !at_least_one && first.total_len() > max_bytes {
            return Ok(SegmentRead {
                batches: Vec::new(),
                bytes: 0,
            });
        }
        let want = (size - position).min(max_bytes.max(first.total_len()) as u64) as usize;
        let mut buf = vec![0u8; want];
        self.file
            .read_exact_at(&mut buf, position)
            .map_err(StorageError::io("read", &self.log_path))?;
        let data = Bytes::from(buf);
        let mut batches = Vec::new();
        let mut at = 0usize;
        let mut expected = first.base_offset;
        while at < data.len() {
            match batch::validate(&data[at..], max_batch_bytes) {
                Ok(header) if header.base_offset == expected => {
                    let len = header.total_len();
                    batches.push(Batch::from_validated(header, data.slice(at..at + len)));
                    at += len;
                    expected = header.next_offset();
                }
                Ok(header) => {
                    return Err(self.corruption(
                        position + at as u64,
                        expected,
                        format!("batch names offset {}", header.base_offset),
                    ));
                }
                Err(BatchError::Incomplete { .. }) if at > 0 => break,
                Err(err) => {
                    return Err(self.corruption(position + at as u64, expected, err.to_string()));
                }
            }
        }
        Ok(SegmentRead { batches, bytes: at })
    }

    /// The first batch whose records may be at or after `timestamp`, by the time index.
    pub fn time_floor(&self, timestamp: i64) -> u64 {
        let state = self.state.read();
        state
            .entries
            .floor_time(timestamp)
            .map_or(self.base_offset, |entry| {
                self.base_offset + u64::from(entry.relative_offset)
            })
    }

    /// Timestamp of the first batch, if any (for roll by age after a reopen).
    pub fn first_timestamp(&self, max_batch_bytes: u32) -> Result<Option<i64>> {
        if self.is_empty() {
            return Ok(None);
        }
        let (_, header) = self.locate(self.base_offset, max_batch_bytes)?;
        Ok(Some(header.first_timestamp))
    }

    /// `(epoch, first offset)` for each change of leader epoch, from batch headers. Reads every
    /// header of the segment: only for rebuilding a lost epoch checkpoint.
    pub fn epoch_changes(&self, max_batch_bytes: u32) -> Result<Vec<(u64, u64)>> {
        let (size, next_offset) = {
            let state = self.state.read();
            (state.builder.size, state.builder.next_offset)
        };
        let mut changes: Vec<(u64, u64)> = Vec::new();
        let mut position = SEGMENT_HEADER_LEN as u64;
        let mut buf = [0u8; BATCH_HEADER_LEN];
        let mut expected = self.base_offset;
        while expected < next_offset && position < size {
            self.file
                .read_exact_at(&mut buf, position)
                .map_err(StorageError::io("read", &self.log_path))?;
            let header = batch::peek_header(&buf, max_batch_bytes)
                .map_err(|err| self.corruption(position, expected, err.to_string()))?;
            if header.base_offset != expected {
                return Err(self.corruption(
                    position,
                    expected,
                    format!("batch header names offset {}", header.base_offset),
                ));
            }
            if changes
                .last()
                .is_none_or(|&(epoch, _)| epoch != header.leader_epoch)
            {
                changes.push((header.leader_epoch, header.base_offset));
            }
            position += header.total_len() as u64;
            expected = header.next_offset();
        }
        Ok(changes)
    }

    fn corruption(&self, position: u64, expected_offset: u64, reason: String) -> StorageError {
        StorageError::Corruption {
            path: self.log_path.clone(),
            position,
            expected_offset,
            reason,
        }
    }
}

/// Allocates `len` bytes for the file so later writes need not grow it.
pub fn preallocate(file: &File, path: &Path, len: u64) -> Result<()> {
    let current = file
        .metadata()
        .map_err(StorageError::io("stat", path))?
        .len();
    if current >= len {
        return Ok(());
    }
    rustix::fs::fallocate(
        file,
        rustix::fs::FallocateFlags::empty(),
        current,
        len - current,
    )
    .map_err(|errno| StorageError::io("preallocate", path)(errno.into()))
}

/// Removes a file; a file already gone is fine.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(StorageError::io("remove", path)(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_parse_strictly() {
        assert_eq!(parse_file_name(&log_file_name(42), "log"), Some(42));
        assert_eq!(parse_file_name(&index_file_name(7), "index"), Some(7));
        assert_eq!(parse_file_name("42.log", "log"), None);
        assert_eq!(parse_file_name("0000000000000000004x.log", "log"), None);
        assert_eq!(parse_file_name("00000000000000000042.log.tmp", "log"), None);
        assert_eq!(parse_file_name("00000000000000000042.index", "log"), None);
    }
}
