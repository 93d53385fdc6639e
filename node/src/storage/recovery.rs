//! Opening a segment after a clean shutdown or a crash.
//!
//! A segment's index file, when present and consistent with the log, says how far the data was
//! durable when it was written (its checkpoint). Recovery trusts that prefix (after checking the
//! batch at the last index entry) and scans only what lies beyond it, so its work is
//! proportional to the data written since the last checkpoint, not to the size of the log.
//!
//! Where the scan stops decides what happened:
//! - a zeroed header: the preallocated space after the last batch, the clean end;
//! - an invalid batch (bad length, checksum or offset) in the last segment, with no valid batch
//!   within `TORN_SEARCH_WINDOW` bytes after it: a torn write, cut off and reported;
//! - an invalid batch with a valid batch after it, or any invalid or missing data in a sealed
//!   segment: corruption. Opening fails with `StorageError::Corruption` naming the file and byte
//!   position; nothing is truncated, so an operator can inspect or restore the data.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::batch::{self, BATCH_HEADER_LEN, BatchError, RECORD_HEADER_LEN};
use super::error::{Result, StorageError};
use super::index::{self, Entries, IndexEntry};
use super::options::LogOptions;
use super::segment::{self, IndexBuilder, SEGMENT_HEADER_LEN, Segment, SegmentState};

/// How far past a bad batch recovery looks for valid data before calling it a torn write.
/// Kill -9 leaves at most one partial write (appends are serialized); a bad batch with valid
/// data close behind it is damage to data that was written, not an interrupted write.
pub const TORN_SEARCH_WINDOW: u64 = 1 << 20;

/// Largest read a scan makes at once.
const MAX_CHUNK: usize = 4 << 20;

/// Sequential reads through one buffer, so scanning costs one syscall per chunk, not per batch.
struct ChunkReader<'a> {
    file: &'a File,
    path: &'a Path,
    file_len: u64,
    buf: Vec<u8>,
    buf_start: u64,
    chunk: usize,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a File, path: &'a Path, file_len: u64, chunk: usize) -> Self {
        ChunkReader {
            file,
            path,
            file_len,
            buf: Vec::new(),
            buf_start: 0,
            chunk,
        }
    }

    /// The bytes from `pos` on, at least `min_len` of them unless the file ends first.
    fn at(&mut self, pos: u64, min_len: usize) -> Result<&[u8]> {
        let buf_end = self.buf_start + self.buf.len() as u64;
        let available_in_file = self.file_len.saturating_sub(pos) as usize;
        let wanted = min_len.min(available_in_file);
        if pos < self.buf_start || pos + wanted as u64 > buf_end {
            if !self.buf.is_empty() {
                self.chunk = (self.chunk * 2).min(MAX_CHUNK);
            }
            let len = self.chunk.max(min_len).min(available_in_file);
            self.buf.resize(len, 0);
            self.file
                .read_exact_at(&mut self.buf, pos)
                .map_err(StorageError::io("read", self.path))?;
            self.buf_start = pos;
        }
        let from = (pos - self.buf_start) as usize;
        Ok(&self.buf[from..])
    }
}

/// Where a scan stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// At a zeroed header or the end of the file.
    Clean,
    /// At a batch that is not valid, for `reason`.
    Invalid {
        /// What was wrong.
        reason: String,
    },
}

/// What a scan found, besides the batches it added to the index.
#[derive(Debug)]
pub struct Scan {
    /// Where and why it stopped; the stop position is the builder's size.
    pub end: ScanEnd,
    /// `(epoch, first offset)` for each change of leader epoch among the batches scanned.
    pub epochs: Vec<(u64, u64)>,
    /// Bytes of batches scanned.
    pub bytes: u64,
}

/// Scans batches from `builder.size` on, adding each valid one to `entries` and `builder`.
pub fn scan(
    file: &File,
    path: &Path,
    base_offset: u64,
    file_len: u64,
    options: &LogOptions,
    entries: &mut Vec<IndexEntry>,
    builder: &mut IndexBuilder,
) -> Result<Scan> {
    let start = builder.size;
    // Start small (a clean reopen reads one header of zeros) and grow for long scans.
    let mut reader = ChunkReader::new(file, path, file_len, 64 << 10);
    let mut epochs: Vec<(u64, u64)> = Vec::new();
    let end = loop {
        let pos = builder.size;
        if pos >= file_len {
            break ScanEnd::Clean;
        }
        let mut data = reader.at(pos, BATCH_HEADER_LEN)?;
        let mut result = batch::validate(data, options.max_batch_bytes);
        if let Err(BatchError::Incomplete { needed }) = result {
            data = reader.at(pos, needed)?;
            result = batch::validate(data, options.max_batch_bytes);
        }
        match result {
            Ok(header) if header.base_offset == builder.next_offset => {
                if epochs
                    .last()
                    .is_none_or(|&(epoch, _)| epoch != header.leader_epoch)
                {
                    epochs.push((header.leader_epoch, header.base_offset));
                }
                builder.add(base_offset, &header, options.index_interval_bytes, entries);
            }
            Ok(header) => {
                break ScanEnd::Invalid {
                    reason: format!(
                        "batch names offset {}, expected {}",
                        header.base_offset, builder.next_offset
                    ),
                };
            }
            Err(BatchError::Zeroed) => break ScanEnd::Clean,
            Err(BatchError::Incomplete { .. }) if data.iter().all(|&b| b == 0) => {
                break ScanEnd::Clean;
            }
            Err(BatchError::Incomplete { needed }) => {
                break ScanEnd::Invalid {
                    reason: format!("batch of {needed} bytes runs past the end of the file"),
                };
            }
            Err(err) => {
                break ScanEnd::Invalid {
                    reason: err.to_string(),
                };
            }
        }
    };
    Ok(Scan {
        end,
        epochs,
        bytes: builder.size - start,
    })
}

/// Looks for a valid batch with an offset at or after `expected_offset` within
/// `TORN_SEARCH_WINDOW` bytes after `from`. Returns its position.
pub fn find_batch_after(
    file: &File,
    path: &Path,
    from: u64,
    file_len: u64,
    expected_offset: u64,
    max_batch_bytes: u32,
) -> Result<Option<u64>> {
    let mut reader = ChunkReader::new(file, path, file_len, 64 << 10);
    let mut pos = from + 1;
    let window_end = file_len.min(from + TORN_SEARCH_WINDOW);
    while pos < window_end {
        let data = reader.at(pos, BATCH_HEADER_LEN)?;
        if data.len() < BATCH_HEADER_LEN {
            return Ok(None);
        }
        // A batch's length field (bytes 4..8) is never zero, so a run of zeros can be skipped
        // up to 7 bytes before its end. Most of the window is preallocated zeros.
        if data[..8].iter().all(|&b| b == 0) {
            let run = data.iter().position(|&b| b != 0).unwrap_or(data.len());
            pos += (run.saturating_sub(7)).max(1) as u64;
            continue;
        }
        // A real later batch continues the offsets: every record takes at least
        // RECORD_HEADER_LEN bytes, so it cannot be further ahead than the bytes in between
        // allow. This rejects batches that a record's value merely contains (a value may hold
        // anything, even an encoded batch, and a torn write leaves it inside the search).
        let max_plausible = expected_offset + (pos - from) / RECORD_HEADER_LEN as u64;
        let candidate = batch::peek_header(data, max_batch_bytes)
            .ok()
            .filter(|header| (expected_offset..=max_plausible).contains(&header.base_offset));
        if let Some(header) = candidate {
            let data = reader.at(pos, header.total_len())?;
            if batch::validate(data, max_batch_bytes).is_ok() {
                return Ok(Some(pos));
            }
        }
        pos += 1;
    }
    Ok(None)
}

/// A torn write that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Where the valid data ends (and the file was cut).
    pub position: u64,
    /// The offset the next record gets.
    pub next_offset: u64,
    /// Why the bytes at `position` were not a valid batch.
    pub reason: String,
}

/// What recovering one segment did.
#[derive(Debug, Default)]
pub struct SegmentRecovery {
    /// Bytes of batches scanned (0 when the index covered everything).
    pub scanned_bytes: u64,
    /// Set when the index was missing or disagreed with the log and was rebuilt.
    pub rebuilt_index: Option<String>,
    /// Set when a torn write was cut off.
    pub torn_tail: Option<TornTail>,
    /// Epoch changes among scanned batches.
    pub epochs: Vec<(u64, u64)>,
}

/// Opens and recovers segment `base_offset`. `is_last` marks the active segment: only it may
/// end in a torn write.
pub fn open_segment(
    dir: &Path,
    base_offset: u64,
    is_last: bool,
    options: &LogOptions,
) -> Result<(Segment, SegmentRecovery)> {
    let (file, log_path) = Segment::open_file(dir, base_offset)?;
    let file_len = file
        .metadata()
        .map_err(StorageError::io("stat", &log_path))?
        .len();
    let index_path = dir.join(segment::index_file_name(base_offset));
    let mut report = SegmentRecovery::default();
    let corruption =
        |position: u64, expected_offset: u64, reason: String| StorageError::Corruption {
            path: log_path.clone(),
            position,
            expected_offset,
            reason,
        };

    let mut loaded = None;
    if index_path.exists() {
        match index::load(&index_path, base_offset) {
            Ok((entries, footer)) => {
                // The index is intact, so the data it covers was durable when it was written: if
                // the log now disagrees, durable data was damaged. Rebuilding would cut it off
                // as if it were a torn write.
                verify_index(
                    &file,
                    file_len,
                    base_offset,
                    &entries,
                    &footer,
                    is_last,
                    options,
                )
                .map_err(|reason| {
                    // Name the first bad batch: rescan the segment from its start (an error
                    // path, so the cost does not matter).
                    let mut builder = IndexBuilder::empty(base_offset);
                    let mut scratch = Vec::new();
                    let scanned = scan(
                        &file,
                        &log_path,
                        base_offset,
                        file_len,
                        options,
                        &mut scratch,
                        &mut builder,
                    );
                    let position = match scanned {
                        Ok(_) => builder.size,
                        Err(_) => footer.logical_size.min(file_len),
                    };
                    corruption(
                        position,
                        builder.next_offset,
                        format!(
                            "the log disagrees with its intact index {}: {reason}",
                            index_path.display()
                        ),
                    )
                })?;
                loaded = Some((entries, footer));
            }
            Err(reason) => {
                tracing::warn!(path = %index_path.display(), %reason, "index file is damaged; rebuilding it from the log");
                report.rebuilt_index = Some(reason);
            }
        }
    } else if !is_last {
        report.rebuilt_index = Some("index file missing".into());
    }

    let (mut entries, mut builder) = match loaded {
        Some((entries, footer)) if footer.sealed && !is_last => {
            let builder = IndexBuilder {
                size: footer.logical_size,
                next_offset: footer.next_offset,
                max_timestamp: footer.max_timestamp,
                bytes_since_entry: 0,
            };
            let state = SegmentState {
                entries,
                builder,
                sealed: true,
            };
            return Ok((
                Segment::from_parts(dir, base_offset, file, log_path, state),
                report,
            ));
        }
        Some((entries, footer)) => {
            let last_position = if entries.is_empty() {
                footer.logical_size
            } else {
                u64::from(entries.get(entries.len() - 1).position)
            };
            let builder = IndexBuilder {
                size: footer.logical_size,
                next_offset: footer.next_offset,
                max_timestamp: footer.max_timestamp,
                bytes_since_entry: footer.logical_size - last_position,
            };
            (entries.to_vec(), builder)
        }
        None => (Vec::new(), IndexBuilder::empty(base_offset)),
    };

    let scan = scan(
        &file,
        &log_path,
        base_offset,
        file_len,
        options,
        &mut entries,
        &mut builder,
    )?;
    report.scanned_bytes = scan.bytes;
    report.epochs = scan.epochs;
    let stop = builder.size;
    if !is_last {
        match scan.end {
            ScanEnd::Clean if stop == file_len => {}
            ScanEnd::Clean => {
                return Err(corruption(
                    stop,
                    builder.next_offset,
                    "zeroed bytes inside a sealed segment".into(),
                ));
            }
            ScanEnd::Invalid { reason } => {
                return Err(corruption(stop, builder.next_offset, reason));
            }
        }
    } else {
        let reason = match scan.end {
            ScanEnd::Invalid { reason } => Some(reason),
            ScanEnd::Clean => None,
        };
        if let Some(found) = find_batch_after(
            &file,
            &log_path,
            stop,
            file_len,
            builder.next_offset,
            options.max_batch_bytes,
        )? {
            return Err(corruption(
                stop,
                builder.next_offset,
                format!(
                    "{}, but a valid batch follows at byte {found}",
                    reason.as_deref().unwrap_or("zeroed bytes")
                ),
            ));
        }
        if let Some(reason) = reason {
            // A torn write: zero everything from the cut on, so no fragment survives to
            // confuse a later recovery.
            file.set_len(stop)
                .map_err(StorageError::io("truncate torn tail", &log_path))?;
            file.sync_all().map_err(|source| StorageError::SyncFailed {
                path: log_path.clone(),
                source,
            })?;
            tracing::warn!(path = %log_path.display(), position = stop, next_offset = builder.next_offset, %reason, "cut a torn write off the end of the log");
            report.torn_tail = Some(TornTail {
                path: log_path.clone(),
                position: stop,
                next_offset: builder.next_offset,
                reason,
            });
        }
    }
    if is_last && options.preallocate {
        segment::preallocate(&file, &log_path, options.segment_bytes.max(stop))?;
    }
    let state = SegmentState {
        entries: Entries::Memory(entries),
        builder,
        sealed: false,
    };
    let segment = Segment::from_parts(dir, base_offset, file, log_path, state);
    if !is_last {
        // The index was rebuilt by the scan: write it so the next open need not scan again.
        segment.seal()?;
    }
    Ok((segment, report))
}

/// Checks an index against its log: sizes agree and the batch at the last entry is intact and
/// where the index says. A damaged log elsewhere is caught when that range is read.
fn verify_index(
    file: &File,
    file_len: u64,
    base_offset: u64,
    entries: &Entries,
    footer: &index::IndexFooter,
    is_last: bool,
    options: &LogOptions,
) -> Result<(), String> {
    if footer.logical_size < SEGMENT_HEADER_LEN as u64 || footer.logical_size > file_len {
        return Err(format!(
            "index covers {} bytes, log file has {file_len}",
            footer.logical_size
        ));
    }
    if footer.sealed && !is_last && footer.logical_size != file_len {
        return Err(format!(
            "sealed index covers {} bytes, log file has {file_len}",
            footer.logical_size
        ));
    }
    if entries.is_empty() {
        return if footer.logical_size == SEGMENT_HEADER_LEN as u64
            && footer.next_offset == base_offset
        {
            Ok(())
        } else {
            Err("index has no entries but covers data".into())
        };
    }
    let last = entries.get(entries.len() - 1);
    let position = u64::from(last.position);
    let available =
        (footer.logical_size - position).min(u64::from(options.max_batch_bytes)) as usize;
    let mut buf = vec![0u8; available];
    file.read_exact_at(&mut buf, position)
        .map_err(|err| format!("cannot read the last indexed batch: {err}"))?;
    let header = batch::validate(&buf, options.max_batch_bytes)
        .map_err(|err| format!("last indexed batch at byte {position}: {err}"))?;
    if header.base_offset != base_offset + u64::from(last.relative_offset) {
        return Err(format!(
            "last indexed batch names offset {}",
            header.base_offset
        ));
    }
    if header.next_offset() > footer.next_offset {
        return Err("last indexed batch ends past the index's next offset".into());
    }
    Ok(())
}
