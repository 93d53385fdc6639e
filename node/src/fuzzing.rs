//! Entry points shared by the fuzz targets in `fuzz/` and the test that replays their corpus
//! (`tests/fuzz_corpus.rs`), so a crash found by the fuzzer is one `cargo test` away from a
//! regression test.
//!
//! Each check drives the storage layer's public API with arbitrary bytes and panics only when a
//! guarantee is broken: a panic inside storage, data served that differs from the bytes on disk,
//! an offset skipped, a torn write misreported, or a refused open that changed the files. Errors
//! that storage returns for bad input are the expected outcome, not a failure.
//!
//! The checks never trust storage to say what the bytes hold: they walk the segment themselves
//! with [`validate_batch`] (the one piece of the format they share with the log) and compare.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::storage::{
    BATCH_HEADER_LEN, Batch, BatchError, BatchHeader, Durability, Log, LogOptions,
    RECORD_HEADER_LEN, Record, SEGMENT_HEADER_LEN, StorageError, StoredRecord, TORN_SEARCH_WINDOW,
    encode_batch, log_file_name, validate_batch,
};

/// The batch size limit of [`fuzz_options`], which the corpus seeds are built for.
pub const FUZZ_MAX_BATCH_BYTES: u32 = 4096;

/// Segment bodies longer than this are cut before they are written, to keep each run fast.
pub const MAX_SEGMENT_BODY: usize = 64 * 1024;

/// Options for the logs the recovery check opens: small segments, no fsync wait per append.
pub fn fuzz_options() -> LogOptions {
    LogOptions {
        segment_bytes: 8 * 1024,
        max_batch_bytes: FUZZ_MAX_BATCH_BYTES,
        max_record_bytes: 2 * 1024,
        index_interval_bytes: 256,
        durability: Durability::Never,
        segment_max_age: None,
        ..LogOptions::default()
    }
}

/// Feeds `data` to the batch decoder: [`validate_batch`], [`Batch::decode`] and record
/// iteration. Returns the header when `data` starts with a valid batch.
///
/// # Panics
///
/// When the decoder panics, or accepts bytes it should not, or its parts disagree: the two
/// limits, `validate` and `decode`, the records and the header, or the bytes and a re-encoding
/// of the records.
pub fn check_batch_decoder(data: &[u8]) -> Option<BatchHeader> {
    let limited = validate_batch(data, FUZZ_MAX_BATCH_BYTES);
    let unlimited = validate_batch(data, u32::MAX);
    if let Ok(header) = &limited {
        assert_eq!(
            unlimited.as_ref().ok(),
            Some(header),
            "a batch valid under a small limit must be valid under a larger one"
        );
    }
    let whole = Batch::decode(Bytes::copy_from_slice(data), u32::MAX);
    let header = match unlimited {
        Ok(header) => header,
        Err(err) => {
            assert!(
                whole.is_err(),
                "decode accepted bytes that validate rejected ({err})"
            );
            return None;
        }
    };
    let total = header.total_len();
    assert!(
        total <= data.len(),
        "validate accepted a batch of {total} bytes from {} bytes",
        data.len()
    );
    assert!(total >= BATCH_HEADER_LEN + RECORD_HEADER_LEN);
    assert!(header.record_count >= 1);
    assert!(
        header
            .base_offset
            .checked_add(u64::from(header.record_count))
            .is_some()
    );
    assert_eq!(
        whole.is_ok(),
        total == data.len(),
        "decode must accept exactly one whole batch"
    );
    if total > FUZZ_MAX_BATCH_BYTES as usize {
        assert!(matches!(limited, Err(BatchError::BadLength { .. })));
    }
    assert!(
        validate_batch(&data[..total - 1], u32::MAX).is_err(),
        "a batch cut one byte short was accepted"
    );

    let batch = match Batch::decode(Bytes::copy_from_slice(&data[..total]), u32::MAX) {
        Ok(batch) => batch,
        Err(err) => panic!("decode rejected the batch validate accepted: {err}"),
    };
    assert_eq!(batch.header(), &header);
    let records: Vec<_> = batch.records().collect();
    assert_eq!(records.len(), header.record_count as usize);
    let mut encoded_len = BATCH_HEADER_LEN;
    for (record, offset) in records.iter().zip(header.base_offset..) {
        assert_eq!(record.offset, offset, "record offsets must be contiguous");
        assert_eq!(record.leader_epoch, header.leader_epoch);
        encoded_len +=
            RECORD_HEADER_LEN + record.value.len() + record.key.as_ref().map_or(0, Bytes::len);
    }
    assert_eq!(encoded_len, total, "records must cover the batch exactly");

    // Encoding the decoded records again gives back the same bytes: nothing in a valid batch
    // is ignored by the decoder. Only the stored max_timestamp (which encode recomputes) and
    // the CRC over it may differ.
    let borrowed: Vec<Record<'_>> = records.iter().map(StoredRecord::as_record).collect();
    let mut again = Vec::new();
    match encode_batch(
        &mut again,
        header.base_offset,
        header.leader_epoch,
        header.attributes,
        &borrowed,
        u32::MAX,
        u32::MAX,
    ) {
        Ok(reencoded) => {
            assert_eq!(again.len(), total);
            const MAX_TIMESTAMP: std::ops::Range<usize> = 36..44;
            assert_eq!(again[4..MAX_TIMESTAMP.start], data[4..MAX_TIMESTAMP.start]);
            assert_eq!(again[MAX_TIMESTAMP.end..], data[MAX_TIMESTAMP.end..total]);
            if reencoded.max_timestamp == header.max_timestamp {
                assert_eq!(again, data[..total], "re-encoding changed the batch");
            }
        }
        // Timestamps are `first + delta` with wrapping; a batch whose deltas wrapped around
        // i64 cannot be encoded again, which is the encoder being strict, not a decoder bug.
        Err(StorageError::TimestampSpread { .. }) => {}
        Err(err) => panic!("a decoded batch could not be encoded again: {err}"),
    }
    Some(header)
}

/// How the recovery check lays out the segment, read from the first byte of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryLayout {
    /// Base offset of the segment holding the bytes.
    pub base_offset: u64,
    /// The bytes are a sealed segment with an empty active segment after it (at the offset
    /// where the valid batches end), instead of the active segment.
    pub sealed: bool,
    /// Whether the log preallocates its active segment.
    pub preallocate: bool,
}

/// Base offsets the first byte of a recovery input chooses from: zero, small, past `u32`, and
/// close to the top of the offset space.
pub const RECOVERY_BASES: [u64; 4] = [0, 7, 1 << 32, u64::MAX - (1 << 20)];

impl RecoveryLayout {
    /// Splits a fuzz input into its layout byte (bit 0: sealed, bits 1-2: base offset from
    /// [`RECOVERY_BASES`], bit 3: no preallocation) and the segment body after the header.
    pub fn parse(data: &[u8]) -> (RecoveryLayout, &[u8]) {
        let Some((&flags, body)) = data.split_first() else {
            return (RecoveryLayout::from_flags(0), &[]);
        };
        (
            RecoveryLayout::from_flags(flags),
            &body[..body.len().min(MAX_SEGMENT_BODY)],
        )
    }

    fn from_flags(flags: u8) -> RecoveryLayout {
        RecoveryLayout {
            sealed: flags & 1 != 0,
            base_offset: RECOVERY_BASES[usize::from((flags >> 1) & 3)],
            preallocate: flags & 8 == 0,
        }
    }

    /// The layout byte that [`RecoveryLayout::parse`] reads back as this layout.
    pub fn flags(&self) -> u8 {
        let base = RECOVERY_BASES
            .iter()
            .position(|&b| b == self.base_offset)
            .unwrap_or(0) as u8;
        u8::from(self.sealed) | (base << 1) | (u8::from(!self.preallocate) << 3)
    }
}

/// The segment file header for `base_offset`: magic, version, base offset, CRC32C of those.
/// Written out here so the checks can build segment files; `tests/fuzz_corpus.rs` checks that it
/// matches what the log writes.
pub fn segment_header(base_offset: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[..8].copy_from_slice(b"PROGLOG\0");
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    header[12..20].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32c::crc32c(&header[..20]);
    header[20..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// One record as the check expects the log to serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExpectedRecord {
    value: Bytes,
    key: Option<Bytes>,
    timestamp_ms: i64,
    record_type: u32,
    leader_epoch: u64,
}

/// What the body holds, found without the log: the valid, contiguous batches from its start.
#[derive(Debug)]
struct Walk {
    records: BTreeMap<u64, ExpectedRecord>,
    /// The offset after the last valid batch.
    next_offset: u64,
    /// Bytes of the body the valid batches cover.
    valid_len: usize,
    /// What follows them: `None` for a clean end (end of the body, a zeroed header, or only
    /// zeros), else the bytes there are a torn write or corruption.
    stop: Option<String>,
}

fn walk(base_offset: u64, body: &[u8]) -> Walk {
    let mut records = BTreeMap::new();
    let mut next_offset = base_offset;
    let mut at = 0usize;
    let stop = loop {
        let rest = &body[at..];
        if rest.is_empty() {
            break None;
        }
        match validate_batch(rest, FUZZ_MAX_BATCH_BYTES) {
            Ok(header) if header.base_offset == next_offset => {
                let len = header.total_len();
                let batch = Batch::decode(Bytes::copy_from_slice(&rest[..len]), u32::MAX)
                    .unwrap_or_else(|err| panic!("decode rejected a validated batch: {err}"));
                for record in batch.records() {
                    records.insert(
                        record.offset,
                        ExpectedRecord {
                            value: record.value,
                            key: record.key,
                            timestamp_ms: record.timestamp_ms,
                            record_type: record.record_type,
                            leader_epoch: record.leader_epoch,
                        },
                    );
                }
                next_offset = header.next_offset();
                at += len;
            }
            Ok(header) => break Some(format!("batch names offset {}", header.base_offset)),
            Err(BatchError::Zeroed) => break None,
            Err(BatchError::Incomplete { needed }) => {
                let window = &rest[..rest.len().min(needed)];
                if window.iter().all(|&b| b == 0) {
                    break None;
                }
                break Some(format!("incomplete batch of {needed} bytes"));
            }
            Err(err) => break Some(err.to_string()),
        }
    };
    Walk {
        records,
        next_offset,
        valid_len: at,
        stop,
    }
}

const _: () = assert!(MAX_SEGMENT_BODY as u64 <= TORN_SEARCH_WINDOW);

/// The first position after `from` where a valid batch with an offset at or after
/// `expected_offset` starts: what tells corruption (valid data after the damage) from a torn
/// write. Bodies are shorter than `TORN_SEARCH_WINDOW`, so the whole rest is searched.
fn valid_batch_after(body: &[u8], from: usize, expected_offset: u64) -> Option<usize> {
    (from + 1..body.len()).find(|&at| {
        body.len() - at >= BATCH_HEADER_LEN
            && validate_batch(&body[at..], FUZZ_MAX_BATCH_BYTES)
                .is_ok_and(|header| header.base_offset >= expected_offset)
    })
}

/// What the recovery check saw.
#[derive(Debug)]
pub enum RecoveryOutcome {
    /// Open refused the directory, with this error (always `Corruption` naming the file).
    Refused(StorageError),
    /// Open succeeded and every record was served as written.
    Opened {
        /// The log's end offset.
        end_offset: u64,
        /// Records served.
        records: u64,
        /// Whether a torn write was cut off the end.
        torn_tail: bool,
    },
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let listing = fs::read_dir(dir).unwrap_or_else(|err| panic!("list {}: {err}", dir.display()));
    for entry in listing {
        let path = entry
            .unwrap_or_else(|err| panic!("list {}: {err}", dir.display()))
            .path();
        // The lock file is created by every open, failed or not, and holds nothing.
        if path.file_name().is_some_and(|name| name == ".lock") {
            continue;
        }
        let bytes = fs::read(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
        files.insert(path, bytes);
    }
    files
}

/// Reads the whole log, one batch per read and then in large reads, and checks every record
/// against `expected`. Returns the number of records.
fn read_everything(log: &Log, expected: &BTreeMap<u64, ExpectedRecord>) -> u64 {
    let start = log.start_offset();
    let end = log.end_offset();
    let mut served = None;
    for max_bytes in [1, 1 << 20] {
        let mut next = start;
        while next < end {
            let batches = log
                .read(next, max_bytes)
                .unwrap_or_else(|err| panic!("read at {next} of [{start}, {end}) failed: {err}"));
            assert!(!batches.is_empty(), "read at {next} returned nothing");
            for batch in &batches {
                assert!(
                    batch.base_offset() <= next && next < batch.next_offset(),
                    "read at {next} returned a batch of [{}, {})",
                    batch.base_offset(),
                    batch.next_offset()
                );
                let from = next;
                for record in batch.records().filter(|record| record.offset >= from) {
                    assert_eq!(record.offset, next, "an offset was skipped");
                    let want = expected.get(&record.offset).unwrap_or_else(|| {
                        panic!("offset {} served but not in the segment", record.offset)
                    });
                    let got = ExpectedRecord {
                        value: record.value,
                        key: record.key,
                        timestamp_ms: record.timestamp_ms,
                        record_type: record.record_type,
                        leader_epoch: record.leader_epoch,
                    };
                    assert_eq!(&got, want, "offset {next} served other data");
                    next += 1;
                }
            }
        }
        assert_eq!(next, end);
        served = Some(next - start);
    }
    served.unwrap_or(0)
}

/// Writes `data` (a layout byte, then the bytes after a segment header; see
/// [`RecoveryLayout::parse`]) as a segment into the empty directory `dir`, opens the log, reads
/// everything, reopens, appends and reads again.
///
/// # Panics
///
/// When storage panics, serves data that differs from the valid batches in the file (or skips
/// an offset), ends the log anywhere but after the last valid batch, reports a torn tail where
/// there was none (or misses one), refuses a directory for anything but `Corruption` naming the
/// segment, or changes the files while refusing them.
pub fn check_recovery(dir: &Path, data: &[u8]) -> RecoveryOutcome {
    let (layout, body) = RecoveryLayout::parse(data);
    let base = layout.base_offset;
    let found = walk(base, body);
    // A sealed segment with no batches would share its name with the active one after it.
    let sealed = layout.sealed && found.next_offset > base;
    let options = LogOptions {
        preallocate: layout.preallocate,
        ..fuzz_options()
    };
    let segment_path = dir.join(log_file_name(base));
    let mut file = segment_header(base).to_vec();
    file.extend_from_slice(body);
    fs::write(&segment_path, &file)
        .unwrap_or_else(|err| panic!("write {}: {err}", segment_path.display()));
    if sealed {
        let active = dir.join(log_file_name(found.next_offset));
        fs::write(&active, segment_header(found.next_offset))
            .unwrap_or_else(|err| panic!("write {}: {err}", active.display()));
    }
    let later_batch = valid_batch_after(body, found.valid_len, found.next_offset);
    let before = snapshot(dir);
    let header_len = SEGMENT_HEADER_LEN as u64;

    let log = match Log::open(dir, options.clone()) {
        Ok(log) => log,
        Err(err) => {
            match &err {
                StorageError::Corruption {
                    path,
                    position,
                    expected_offset,
                    ..
                } => {
                    assert_eq!(path, &segment_path, "corruption reported in the wrong file");
                    assert_eq!(*position, header_len + found.valid_len as u64);
                    assert_eq!(*expected_offset, found.next_offset);
                }
                other => panic!("open failed with something other than corruption: {other}"),
            }
            if sealed {
                assert!(
                    found.valid_len < body.len(),
                    "a sealed segment of valid batches was refused: {err}"
                );
            } else {
                assert!(
                    later_batch.is_some(),
                    "open refused an active segment with no valid batch after its end: {err}"
                );
            }
            assert!(
                snapshot(dir) == before,
                "a refused open changed the files: {err}"
            );
            return RecoveryOutcome::Refused(err);
        }
    };
    if sealed {
        assert_eq!(
            found.valid_len,
            body.len(),
            "a damaged sealed segment opened"
        );
        assert_eq!(log.recovery_report().rebuilt_indexes.len(), 1);
    } else {
        assert_eq!(
            later_batch, None,
            "a valid batch after the end of the active segment must be reported as corruption"
        );
    }
    assert_eq!(log.start_offset(), base);
    assert_eq!(
        log.end_offset(),
        found.next_offset,
        "the log must end after the last valid batch"
    );
    let torn = log.recovery_report().torn_tail.clone();
    assert_eq!(
        torn.is_some(),
        found.stop.is_some(),
        "torn tail {torn:?}, bytes after the valid batches: {:?}",
        found.stop
    );
    if let Some(torn) = &torn {
        assert_eq!(torn.path, segment_path);
        assert_eq!(torn.position, header_len + found.valid_len as u64);
        assert_eq!(torn.next_offset, found.next_offset);
    }
    let records = read_everything(&log, &found.records);
    drop(log);

    // Recovery is idempotent: the second open finds what the first left, with nothing to cut.
    let log = Log::open(dir, options.clone())
        .unwrap_or_else(|err| panic!("the second open of a recovered log failed: {err}"));
    assert_eq!(log.end_offset(), found.next_offset);
    assert!(log.recovery_report().torn_tail.is_none());
    assert!(log.recovery_report().rebuilt_indexes.is_empty());
    assert_eq!(read_everything(&log, &found.records), records);

    // And it takes appends where the valid data ended.
    let end = log.end_offset();
    if end.checked_add(2).is_some() {
        let value = b"appended after recovery";
        let info = log
            .append(
                log.latest_epoch().unwrap_or(0),
                &[Record::new(value, 1_000)],
            )
            .unwrap_or_else(|err| panic!("append after recovery failed: {err}"));
        assert_eq!(info.base_offset, end);
        let batches = log
            .read(end, 1 << 20)
            .unwrap_or_else(|err| panic!("reading the appended record failed: {err}"));
        let record = batches
            .iter()
            .flat_map(Batch::records)
            .find(|record| record.offset == end)
            .unwrap_or_else(|| panic!("the appended record at {end} was not served"));
        assert_eq!(&record.value[..], &value[..]);
        if let Err(err) = log.close() {
            panic!("close after recovery failed: {err}");
        }
        let log = Log::open(dir, options)
            .unwrap_or_else(|err| panic!("reopen after the append failed: {err}"));
        assert_eq!(log.end_offset(), end + 1);
        assert_eq!(log.recovery_report().scanned_bytes, 0);
    }
    RecoveryOutcome::Opened {
        end_offset: found.next_offset,
        records,
        torn_tail: torn.is_some(),
    }
}
