//! Recovery guarantees (`shared/design/storage.md`, "What it must guarantee" 2 and 3), proved by
//! damaging the files of a closed or crashed log and opening it again:
//!
//! - a torn write, cut at every byte of the last batch (into preallocated zeros, or with the
//!   file cut short), is cut off and reported, and the log goes on;
//! - a flipped bit anywhere is detected and never served: open refuses, or the read covering it
//!   fails, or (in the last batch of the active segment, where it looks like a torn write) the
//!   batch is cut and reported;
//! - damage with valid data after it is corruption: open fails naming the file and byte, and
//!   changes nothing on disk;
//! - stray files are reported and never confuse the log.
//!
//! The tests at the end are regressions of storage bugs this suite found.
//!
//! Logs live on tmpfs when there is one: every open fsyncs, and what is tested here is what
//! recovery makes of the bytes, not the disk.

// Helpers panic on failure as the tests do; `allow-unwrap-in-tests` covers only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use common::scratch_dir;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use proglog_node::fuzzing::segment_header;
use proglog_node::storage::{
    Durability, Log, LogOptions, Record, SEGMENT_HEADER_LEN, StorageError, encode_batch,
    index_file_name, log_file_name, validate_batch,
};

const MAX_BATCH_BYTES: u32 = 2 * 1024;

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: 8 * 1024,
        max_batch_bytes: MAX_BATCH_BYTES,
        max_record_bytes: 1024,
        index_interval_bytes: 256,
        // Only `close()` checkpoints the active segment, so a test knows what its index covers.
        checkpoint_interval_bytes: 1 << 30,
        durability: Durability::Never,
        segment_max_age: None,
        ..LogOptions::default()
    }
}

/// The value appended at `offset`. Never ends in a zero byte, so a batch cut before its last
/// byte and padded with zeros is never accidentally whole.
fn value(offset: u64) -> Vec<u8> {
    format!(
        "value-{offset:05}-{}!",
        "abcdefgh".repeat((offset % 5) as usize)
    )
    .into_bytes()
}

/// Appends `from..to` in batches of one to four records (epoch 1, then 2 from offset 100).
fn append_range(log: &Log, from: u64, to: u64) {
    let mut offset = from;
    while offset < to {
        let end = (offset + 1 + offset % 4).min(to);
        append_batch(log, offset, end);
        offset = end;
    }
}

fn append_batch(log: &Log, from: u64, to: u64) {
    let values: Vec<Vec<u8>> = (from..to).map(value).collect();
    let records: Vec<Record<'_>> = values
        .iter()
        .zip(from..)
        .map(|(v, offset)| Record::new(v, 1_000 + offset as i64))
        .collect();
    let epoch = if from < 100 { 1 } else { 2 };
    let info = log.append(epoch, &records).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (from, to - 1));
}

/// Reads from the start to the end, `max_bytes` at a time, checking every record against
/// `value(offset)` and that no offset is skipped: wrong data panics. Returns the records read,
/// and where and why reading stopped early, if it did.
fn read_checked(log: &Log, max_bytes: usize) -> (u64, Option<(u64, StorageError)>) {
    read_checked_from(log, log.start_offset(), max_bytes)
}

fn read_checked_from(log: &Log, from: u64, max_bytes: usize) -> (u64, Option<(u64, StorageError)>) {
    let mut next = from;
    let end = log.end_offset();
    while next < end {
        let batches = match log.read(next, max_bytes) {
            Ok(batches) => batches,
            Err(err) => return (next - from, Some((next, err))),
        };
        assert!(!batches.is_empty(), "read at {next} returned nothing");
        for batch in batches {
            assert!(batch.base_offset() <= next && next < batch.next_offset());
            let start = next;
            for record in batch.records().filter(|r| r.offset >= start) {
                assert_eq!(record.offset, next, "offset skipped");
                assert!(
                    record.value[..] == value(next)[..],
                    "offset {next} served a value that was never appended there"
                );
                next += 1;
            }
        }
    }
    (next - from, None)
}

/// Asserts the log holds exactly `value(o)` for every `o` in `0..end`.
fn assert_intact(log: &Log, end: u64) {
    assert_eq!(log.end_offset(), end);
    for max_bytes in [1, 1 << 20] {
        let (read, err) = read_checked(log, max_bytes);
        assert!(err.is_none(), "read failed: {err:?}");
        assert_eq!(read, end);
    }
}

/// Where one batch sits in a segment file.
#[derive(Debug, Clone, Copy)]
struct BatchAt {
    position: u64,
    len: u64,
    base_offset: u64,
    next_offset: u64,
}

impl BatchAt {
    fn end(&self) -> u64 {
        self.position + self.len
    }

    fn contains(&self, position: u64) -> bool {
        (self.position..self.end()).contains(&position)
    }
}

/// The batches of a segment file, found by walking it (independently of the log's index).
fn batches_in(path: &Path) -> Vec<BatchAt> {
    let bytes = fs::read(path).unwrap();
    let name = path.file_stem().unwrap().to_str().unwrap();
    let mut expected: u64 = name.parse().unwrap();
    let mut position = SEGMENT_HEADER_LEN;
    let mut found = Vec::new();
    while let Ok(header) = validate_batch(&bytes[position..], MAX_BATCH_BYTES) {
        if header.base_offset != expected {
            break;
        }
        let len = header.total_len();
        found.push(BatchAt {
            position: position as u64,
            len: len as u64,
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
        });
        expected = header.next_offset();
        position += len;
    }
    found
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    logs
}

/// Every file of a log directory but the lock, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name() != ".lock")
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().into_owned(),
                fs::read(entry.path()).unwrap(),
            )
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    for (name, bytes) in snapshot(from) {
        fs::write(to.join(name), bytes).unwrap();
    }
}

fn flip_bit(path: &Path, position: u64, bit: u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, position).unwrap();
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, position).unwrap();
}

/// A small deterministic generator (SplitMix64), so a failure names a reproducible position.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A log built once and copied for each experiment.
struct Built {
    dir: tempfile::TempDir,
    end: u64,
}

/// A log of `end` records over several segments whose last batch holds three records. Closed
/// cleanly when `close`, else dropped as in a crash (the active segment has no index file).
fn build(end: u64, close: bool) -> Built {
    let dir = scratch_dir();
    let log = Log::open(dir.path(), options()).unwrap();
    append_range(&log, 0, end - 3);
    append_batch(&log, end - 3, end);
    assert!(
        log.segment_count() >= 3,
        "the log must span several segments"
    );
    if close {
        log.close().unwrap();
    } else {
        drop(log);
    }
    Built { dir, end }
}

/// The two ways a torn write leaves a preallocated segment file.
#[derive(Debug, Clone, Copy)]
enum Tear {
    /// The data up to the cut reached the disk; the rest of the file is still zeros.
    ZeroFilled,
    /// The file ends at the cut (a file that was not preallocated, or was trimmed).
    Truncated,
}

fn tear(path: &Path, last: &BatchAt, cut: u64, how: Tear) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    match how {
        Tear::ZeroFilled => {
            let zeros = vec![0u8; (last.len - cut) as usize];
            file.write_all_at(&zeros, last.position + cut).unwrap();
        }
        Tear::Truncated => file.set_len(last.position + cut).unwrap(),
    }
}

/// Tears the last batch of `built` at every byte, both ways, and checks what recovery makes of
/// it. `checkpointed` is the size of the active segment its index file covers, if it has one.
fn tear_every_byte_of_the_last_batch(built: &Built, checkpointed: Option<u64>) -> usize {
    let segments = segment_files(built.dir.path());
    let active_name = segments.last().unwrap().file_name().unwrap().to_owned();
    let layout = batches_in(segments.last().unwrap());
    assert!(
        layout.len() >= 3,
        "the active segment must hold several batches"
    );
    let last = *layout.last().unwrap();
    assert_eq!(last.next_offset, built.end);
    assert_eq!(last.next_offset - last.base_offset, 3);

    // The log agrees about where its last batch is and what it holds.
    let pristine = fs::read(segments.last().unwrap()).unwrap();
    let last_bytes = pristine[last.position as usize..last.end() as usize].to_vec();
    {
        let copy = scratch_dir();
        copy_dir(built.dir.path(), copy.path());
        let log = Log::open(copy.path(), options()).unwrap();
        let sealed_bytes: u64 = segments[..segments.len() - 1]
            .iter()
            .map(|path| fs::metadata(path).unwrap().len())
            .sum();
        assert_eq!(
            log.size_bytes() - sealed_bytes,
            last.end(),
            "the active segment's logical end"
        );
        let read = log.read(built.end - 1, 1).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].base_offset(), last.base_offset);
        assert_eq!(read[0].as_bytes()[..], last_bytes[..]);
    }

    let mut torn_reports = 0;
    for cut in 0..last.len {
        for how in [Tear::ZeroFilled, Tear::Truncated] {
            let context = format!("cut at byte {cut} of {} ({how:?})", last.len);
            let work = scratch_dir();
            copy_dir(built.dir.path(), work.path());
            let active = work.path().join(&active_name);
            tear(&active, &last, cut, how);

            let log = Log::open(work.path(), options())
                .unwrap_or_else(|err| panic!("{context}: open failed: {err}"));
            let report = log.recovery_report();
            let partial_is_data = last_bytes[..cut as usize].iter().any(|&b| b != 0);
            match &report.torn_tail {
                Some(torn) => {
                    assert!(partial_is_data, "{context}: zeros reported as a torn write");
                    assert_eq!(torn.path, active, "{context}");
                    assert_eq!(torn.position, last.position, "{context}");
                    assert_eq!(torn.next_offset, last.base_offset, "{context}");
                    torn_reports += 1;
                }
                None => assert!(!partial_is_data, "{context}: torn write not reported"),
            }
            // No fragment of the torn batch is left to confuse a later recovery.
            let after = fs::read(&active).unwrap();
            assert!(
                after[last.position as usize..].iter().all(|&b| b == 0),
                "{context}: bytes of the torn batch survived"
            );
            if let Some(covered) = checkpointed {
                assert!(
                    report.rebuilt_indexes.is_empty(),
                    "{context}: the checkpoint must be trusted: {:?}",
                    report.rebuilt_indexes
                );
                assert_eq!(
                    report.scanned_bytes,
                    last.position - covered,
                    "{context}: recovery must read only what lies past the checkpoint"
                );
            }
            assert_intact(&log, last.base_offset);

            // The log takes appends where the valid data ends, and keeps them across a reopen.
            append_batch(&log, last.base_offset, last.base_offset + 2);
            drop(log);
            let log = Log::open(work.path(), options())
                .unwrap_or_else(|err| panic!("{context}: reopen failed: {err}"));
            assert!(log.recovery_report().torn_tail.is_none(), "{context}");
            assert_intact(&log, last.base_offset + 2);
        }
    }
    torn_reports
}

#[test]
fn a_torn_write_at_any_byte_of_the_last_batch_is_cut_off_and_reported() {
    let built = build(400, false);
    let reported = tear_every_byte_of_the_last_batch(&built, None);
    assert!(reported > 0);
}

#[test]
fn a_torn_write_after_an_index_checkpoint_is_recovered_from_the_checkpoint() {
    let built = build(400, true);
    let segments = segment_files(built.dir.path());
    let active = segments.last().unwrap().clone();
    let covered = batches_in(&active).last().unwrap().end();
    let index = built.dir.path().join(index_file_name(
        active
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap(),
    ));
    assert!(
        index.exists(),
        "close() must write the active segment's index"
    );

    // More batches after the checkpoint, then a crash.
    let log = Log::open(built.dir.path(), options()).unwrap();
    append_range(&log, built.end, built.end + 9);
    append_batch(&log, built.end + 9, built.end + 12);
    assert_eq!(
        log.segment_count(),
        segments.len(),
        "the appends must not roll"
    );
    drop(log);
    let built = Built {
        end: built.end + 12,
        ..built
    };
    let reported = tear_every_byte_of_the_last_batch(&built, Some(covered));
    assert!(reported > 0);
}

/// What one flipped bit led to.
#[derive(Debug, Default)]
struct FlipOutcomes {
    /// Open failed with `Corruption` naming the file, and changed nothing.
    refused_at_open: usize,
    /// Open succeeded; the read covering the damaged batch failed with `Corruption`.
    refused_at_read: usize,
    /// The last batch of the active segment was cut as a torn write (only in a crashed log:
    /// in a closed one the index checkpoint proves that batch durable, so damage there is
    /// refused; see `damage_below_an_index_checkpoint_is_never_cut_as_a_torn_write`).
    cut_as_torn: usize,
    /// A flip in the preallocated zeros after the data, next to it: reported as a torn tail that
    /// loses nothing.
    torn_tail_after_the_data: usize,
    /// A flip in the preallocated zeros after the data: nothing to detect, nothing lost.
    harmless: usize,
}

/// Flips `bit` of byte `position` in the segment file `name` of a copy of `built`, opens it
/// and reads everything, and checks the flip is detected and never served.
fn flip_and_check(built: &Built, name: &str, position: u64, bit: u8, outcomes: &mut FlipOutcomes) {
    let context = format!("{name}: bit {bit} of byte {position}");
    let work = scratch_dir();
    copy_dir(built.dir.path(), work.path());
    let path = work.path().join(name);
    let layout = batches_in(&path);
    let is_active = segment_files(work.path()).last() == Some(&path);
    let data_end = layout
        .last()
        .map_or(SEGMENT_HEADER_LEN as u64, BatchAt::end);
    let damaged = layout.iter().find(|b| b.contains(position)).copied();
    flip_bit(&path, position, bit);
    let before = snapshot(work.path());

    let log = match Log::open(work.path(), options()) {
        Ok(log) => log,
        Err(StorageError::Corruption { path: reported, .. }) => {
            assert_eq!(
                reported, path,
                "{context}: corruption blamed on another file"
            );
            assert!(
                snapshot(work.path()) == before,
                "{context}: a refused open changed the files"
            );
            outcomes.refused_at_open += 1;
            return;
        }
        Err(err) => panic!("{context}: open failed with {err}"),
    };

    if let Some(torn) = &log.recovery_report().torn_tail {
        assert!(
            is_active,
            "{context}: torn tail in a sealed segment: {torn:?}"
        );
        assert_eq!(torn.path, path, "{context}");
        assert!(
            position >= torn.position,
            "{context}: cut before the damage"
        );
        let last = layout.last().unwrap();
        if torn.position == data_end {
            assert!(position >= data_end, "{context}");
            assert_eq!(log.end_offset(), built.end, "{context}");
            outcomes.torn_tail_after_the_data += 1;
        } else {
            assert_eq!(
                torn.position, last.position,
                "{context}: more than the last batch cut"
            );
            assert!(last.contains(position), "{context}");
            assert_eq!(log.end_offset(), last.base_offset, "{context}");
            outcomes.cut_as_torn += 1;
        }
        assert_intact(&log, log.end_offset());
        return;
    }

    assert_eq!(
        log.end_offset(),
        built.end,
        "{context}: records lost silently"
    );
    // One batch per read, so the read that fails is the one covering the damaged batch.
    let (read, stopped) = read_checked(&log, 1);
    match (stopped, damaged) {
        (None, None) => {
            assert!(
                is_active && position >= data_end,
                "{context}: a flip inside the data was not detected"
            );
            assert_eq!(read, built.end);
            outcomes.harmless += 1;
        }
        (None, Some(batch)) => {
            panic!(
                "{context}: the damaged batch at offset {} was served",
                batch.base_offset
            )
        }
        (Some((offset, err)), damaged) => {
            match &err {
                StorageError::Corruption { path: reported, .. } => {
                    assert_eq!(reported, &path, "{context}: {err}");
                }
                other => panic!("{context}: read at {offset} failed with {other}"),
            }
            let batch = damaged
                .unwrap_or_else(|| panic!("{context}: read at {offset} failed outside the damage"));
            assert_eq!(offset, batch.base_offset, "{context}: {err}");
            // Past the damaged batch, whatever is served is still right (a damaged header on
            // the way may refuse more of the segment, which is allowed).
            let (_, after) = read_checked_from(&log, batch.next_offset, 1);
            if let Some((_, err)) = after {
                assert!(matches!(err, StorageError::Corruption { .. }), "{context}");
            }
            outcomes.refused_at_read += 1;
        }
    }
}

#[test]
fn a_flipped_bit_in_a_segment_is_detected_and_never_served() {
    let crashed = build(400, false);
    let closed = build(400, true);
    let mut rng = Rng(0x5eed_0fb1_7f11_b5a7);
    let mut flips = 0;
    for (built, state) in [(&crashed, "crashed"), (&closed, "closed")] {
        let segments = segment_files(built.dir.path());
        let sealed = segments[segments.len() - 2].clone();
        let active = segments.last().unwrap().clone();
        let mut outcomes = FlipOutcomes::default();
        for path in [&sealed, &active] {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let layout = batches_in(path);
            let data_end = layout.last().unwrap().end();
            let file_len = fs::metadata(path).unwrap().len();
            // Every byte of the segment header and of the first and last batches, a seeded
            // sample of the rest of the data, and a few bytes of the zeros after it.
            let mut positions: Vec<u64> = (0..layout[0].end()).collect();
            positions.extend(layout.last().unwrap().position..data_end);
            positions.extend((0..700).map(|_| rng.below(data_end)));
            positions.extend(data_end..(data_end + 12).min(file_len));
            positions.extend((0..20).map(|_| data_end + rng.below(file_len - data_end + 1)));
            positions.retain(|&p| p < file_len);
            positions.sort_unstable();
            positions.dedup();
            for position in positions {
                let bit = rng.below(8) as u8;
                flip_and_check(built, &name, position, bit, &mut outcomes);
                flips += 1;
            }
        }
        eprintln!("{state}: {outcomes:?}");
        assert!(outcomes.refused_at_open > 0, "{state}: {outcomes:?}");
        assert!(outcomes.refused_at_read > 0, "{state}: {outcomes:?}");
        // In a closed log the checkpoint covers every batch: nothing may be cut as torn.
        if state == "crashed" {
            assert!(outcomes.cut_as_torn > 0, "{state}: {outcomes:?}");
        } else {
            assert_eq!(outcomes.cut_as_torn, 0, "{state}: {outcomes:?}");
        }
    }
    eprintln!("{flips} flips checked");
}

#[test]
fn a_flipped_bit_in_a_segment_header_refuses_the_open_and_changes_nothing() {
    let built = build(400, true);
    let segments = segment_files(built.dir.path());
    for path in [&segments[0], segments.last().unwrap()] {
        let name = path.file_name().unwrap().to_str().unwrap();
        for position in 0..SEGMENT_HEADER_LEN as u64 {
            for bit in 0..8 {
                let work = scratch_dir();
                copy_dir(built.dir.path(), work.path());
                let damaged = work.path().join(name);
                flip_bit(&damaged, position, bit);
                let before = snapshot(work.path());
                match Log::open(work.path(), options()) {
                    Err(StorageError::Corruption {
                        path, position: 0, ..
                    }) => assert_eq!(path, damaged),
                    other => panic!("{name}: bit {bit} of byte {position}: {other:?}"),
                }
                assert!(snapshot(work.path()) == before, "{name}: files changed");
            }
        }
    }
}

#[test]
fn a_flipped_bit_in_an_index_file_rebuilds_the_index_from_the_log() {
    let built = build(400, true);
    let segments = segment_files(built.dir.path());
    let mut rng = Rng(0x1de5_f11b);
    // A sealed segment's index, and the checkpoint of the active segment that close() wrote.
    for (log_path, is_active) in [(&segments[1], false), (segments.last().unwrap(), true)] {
        let base: u64 = log_path
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let index_name = index_file_name(base);
        let index_len = fs::metadata(built.dir.path().join(&index_name))
            .unwrap()
            .len();
        let data_end = batches_in(log_path).last().unwrap().end();
        // Every byte of the footer (52 bytes) and of the first two entries (16 bytes each),
        // and a seeded sample of the rest.
        let mut positions: Vec<u64> = (index_len - 52..index_len).chain(0..32).collect();
        positions.extend((0..40).map(|_| rng.below(index_len)));
        positions.sort_unstable();
        positions.dedup();
        for position in positions {
            let bit = rng.below(8) as u8;
            let context = format!("{index_name}: bit {bit} of byte {position}");
            let work = scratch_dir();
            copy_dir(built.dir.path(), work.path());
            flip_bit(&work.path().join(&index_name), position, bit);
            let log = Log::open(work.path(), options())
                .unwrap_or_else(|err| panic!("{context}: open failed: {err}"));
            let report = log.recovery_report();
            let rebuilt: Vec<&PathBuf> = report.rebuilt_indexes.iter().map(|(p, _)| p).collect();
            assert_eq!(
                rebuilt,
                [&work.path().join(log_path.file_name().unwrap())],
                "{context}"
            );
            if is_active {
                assert_eq!(
                    report.scanned_bytes,
                    data_end - SEGMENT_HEADER_LEN as u64,
                    "{context}: the whole active segment must be scanned again"
                );
            }
            assert!(report.torn_tail.is_none(), "{context}");
            assert_intact(&log, built.end);
            log.close().unwrap();
            // The rebuilt index was written back and is trusted next time.
            let log = Log::open(work.path(), options()).unwrap();
            assert!(
                log.recovery_report().rebuilt_indexes.is_empty(),
                "{context}"
            );
            assert_eq!(log.recovery_report().scanned_bytes, 0, "{context}");
            assert_intact(&log, built.end);
        }
    }
}

/// Opens `dir` expecting `Corruption` in `path` at `position` for `expected_offset`, with the
/// message naming both, and checks the open changed no file.
fn assert_refused(dir: &Path, path: &Path, position: u64, expected_offset: u64, context: &str) {
    let before = snapshot(dir);
    for attempt in 0..2 {
        let err = Log::open(dir, options()).expect_err(context);
        match &err {
            StorageError::Corruption {
                path: reported,
                position: at,
                expected_offset: offset,
                ..
            } => {
                assert_eq!(reported, path, "{context}: {err}");
                assert_eq!(*at, position, "{context}: {err}");
                assert_eq!(*offset, expected_offset, "{context}: {err}");
            }
            other => panic!("{context}: expected corruption, got {other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string())
                && message.contains(&format!("byte {position}")),
            "{context}: the message must name the file and byte: {message}"
        );
        assert!(
            snapshot(dir) == before,
            "{context}: open attempt {attempt} changed the files"
        );
    }
}

#[test]
fn damage_with_valid_batches_after_it_is_corruption_and_nothing_is_cut() {
    let crashed = build(400, false);
    let segments = segment_files(crashed.dir.path());
    let active_name = segments.last().unwrap().file_name().unwrap().to_owned();
    let layout = batches_in(segments.last().unwrap());
    let middle = layout[layout.len() / 2];
    assert!(layout.len() - layout.len() / 2 >= 3);

    type Damage = fn(&Path, &BatchAt);
    let damages: [(&str, Damage); 7] = [
        ("a flipped bit in a record", |path, b| {
            flip_bit(path, b.position + b.len - 2, 3)
        }),
        ("a flipped bit in the CRC", |path, b| {
            flip_bit(path, b.position, 0)
        }),
        ("a flipped bit in the base offset", |path, b| {
            flip_bit(path, b.position + 8, 1)
        }),
        ("an impossible length", |path, b| {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&0xffff_fff0u32.to_le_bytes(), b.position + 4)
                .unwrap();
        }),
        ("a length one byte short", |path, b| {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            let length = (b.len - 8 - 1) as u32;
            file.write_all_at(&length.to_le_bytes(), b.position + 4)
                .unwrap();
        }),
        ("a zeroed header", |path, b| {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&[0u8; 46], b.position).unwrap();
        }),
        ("a whole batch of zeros", |path, b| {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&vec![0u8; b.len as usize], b.position)
                .unwrap();
        }),
    ];
    for (what, damage) in damages {
        let work = scratch_dir();
        copy_dir(crashed.dir.path(), work.path());
        let active = work.path().join(&active_name);
        damage(&active, &middle);
        let context = format!("{what} in the middle of the active segment");
        assert_refused(
            work.path(),
            &active,
            middle.position,
            middle.base_offset,
            &context,
        );
    }

    // The same past an index checkpoint: the first batch the scan reads is damaged.
    let closed = build(400, true);
    let covered = batches_in(segment_files(closed.dir.path()).last().unwrap())
        .last()
        .unwrap()
        .end();
    let log = Log::open(closed.dir.path(), options()).unwrap();
    append_range(&log, closed.end, closed.end + 12);
    drop(log);
    let work = scratch_dir();
    copy_dir(closed.dir.path(), work.path());
    let active = work.path().join(&active_name);
    let first_new = *batches_in(&active)
        .iter()
        .find(|b| b.position == covered)
        .unwrap();
    flip_bit(&active, first_new.position + 20, 5);
    assert_refused(
        work.path(),
        &active,
        first_new.position,
        first_new.base_offset,
        "damage right after the checkpoint",
    );

    // A sealed segment is never cut: damage in it, or the file cut short, is corruption once
    // its index is gone (with the index, a read of the range reports it; see the bit flips).
    let sealed_name = segments[1].file_name().unwrap().to_owned();
    let sealed_base: u64 = segments[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let sealed_layout = batches_in(&segments[1]);
    let victim = sealed_layout[sealed_layout.len() / 2];
    let last = *sealed_layout.last().unwrap();
    let cases: [(&str, BatchAt, Damage); 3] = [
        ("a flipped bit in a sealed segment", victim, |path, b| {
            flip_bit(path, b.position + 30, 2)
        }),
        ("a sealed segment cut short", last, |path, b| {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(b.position + b.len - 1).unwrap();
        }),
        (
            "the last batch of a sealed segment damaged",
            last,
            |path, b| flip_bit(path, b.position + b.len - 1, 0),
        ),
    ];
    for (what, batch, damage) in cases {
        for keep_index in [false, true] {
            let work = scratch_dir();
            copy_dir(crashed.dir.path(), work.path());
            if !keep_index {
                fs::remove_file(work.path().join(index_file_name(sealed_base))).unwrap();
            }
            let sealed = work.path().join(&sealed_name);
            damage(&sealed, &batch);
            let context = format!("{what} (index kept: {keep_index})");
            let index_still_agrees =
                keep_index && fs::metadata(&sealed).unwrap().len() == last.end();
            if index_still_agrees {
                // Open checks only the batch at the last (sparse) index entry, so it may trust
                // the index; then the read of the damaged range refuses instead.
                match Log::open(work.path(), options()) {
                    Ok(log) => {
                        let (_, stopped) = read_checked(&log, 1);
                        let (offset, err) =
                            stopped.unwrap_or_else(|| panic!("{context}: damage served"));
                        assert_eq!(offset, batch.base_offset, "{context}");
                        match err {
                            StorageError::Corruption { path, .. } => assert_eq!(path, sealed),
                            other => panic!("{context}: {other}"),
                        }
                    }
                    Err(_) => assert_refused(
                        work.path(),
                        &sealed,
                        batch.position,
                        batch.base_offset,
                        &context,
                    ),
                }
            } else {
                assert_refused(
                    work.path(),
                    &sealed,
                    batch.position,
                    batch.base_offset,
                    &context,
                );
            }
        }
    }
}

#[test]
fn stray_files_are_reported_and_never_confuse_the_log() {
    let built = build(400, true);
    let dir = built.dir.path();
    let segments = segment_files(dir);
    let sealed_base: u64 = segments[0]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let index_bytes = fs::read(dir.join(index_file_name(sealed_base))).unwrap();

    let unknown = [
        "notes.txt",
        "00000000000000000042.log.bak",
        "42.log",
        "core",
    ];
    for name in unknown {
        fs::write(dir.join(name), b"not the log's").unwrap();
    }
    fs::create_dir(dir.join("lost+found")).unwrap();
    // An index whose log is gone (its segment was deleted between the two unlinks).
    let orphan = dir.join(index_file_name(built.end + 1_000));
    fs::write(&orphan, &index_bytes).unwrap();
    // Temp files of an interrupted index write and checkpoint replacement.
    let temps = [
        dir.join(format!("{}.tmp", index_file_name(sealed_base))),
        dir.join("leader-epochs.tmp"),
        dir.join("log-start-offset.tmp"),
    ];
    for temp in &temps {
        fs::write(temp, b"half-written").unwrap();
    }
    let segment_count = segments.len();

    let log = Log::open(dir, options()).unwrap();
    let report = log.recovery_report();
    let mut expected_unknown: Vec<PathBuf> = unknown
        .iter()
        .map(|name| dir.join(name))
        .chain([dir.join("lost+found")])
        .collect();
    expected_unknown.sort();
    let mut found_unknown = report.unknown_files.clone();
    found_unknown.sort();
    assert_eq!(found_unknown, expected_unknown);
    let mut expected_removed: Vec<PathBuf> =
        temps.iter().cloned().chain([orphan.clone()]).collect();
    expected_removed.sort();
    let mut removed = report.removed_files.clone();
    removed.sort();
    assert_eq!(removed, expected_removed);
    assert!(
        report.rebuilt_indexes.is_empty(),
        "{:?}",
        report.rebuilt_indexes
    );
    assert!(report.torn_tail.is_none());
    assert_eq!(report.scanned_bytes, 0);
    assert_eq!(log.segment_count(), segment_count);
    assert_intact(&log, built.end);
    for path in temps.iter().chain([&orphan]) {
        assert!(!path.exists(), "{} was not removed", path.display());
    }
    for name in unknown {
        assert_eq!(fs::read(dir.join(name)).unwrap(), b"not the log's");
    }

    // The log goes on: appends, a roll, and a clean reopen that finds only the unknown files.
    append_range(&log, built.end, built.end + 150);
    assert!(log.segment_count() > segment_count);
    log.close().unwrap();
    let log = Log::open(dir, options()).unwrap();
    assert!(log.recovery_report().removed_files.is_empty());
    assert_eq!(
        log.recovery_report().unknown_files.len(),
        expected_unknown.len()
    );
    assert_intact(&log, built.end + 150);
}

// Regressions: each of these was a storage bug found by this suite.

#[test]
fn a_crash_while_rolling_to_a_new_segment_leaves_a_log_that_opens() {
    // A new segment is written under a temporary name (header, preallocation, fsync) and only
    // then renamed into place. A crash part-way leaves the temporary file, in any state: open
    // removes it and the previous segment is the active one again. (A headerless `.log` file
    // can then only come from damage, which is refused.)
    for (what, contents) in [
        ("empty", Vec::new()),
        ("zeros", vec![0u8; 8 * 1024]),
        ("part of its header", b"PROGLOG".to_vec()),
    ] {
        let dir = scratch_dir();
        let log = Log::open(dir.path(), options()).unwrap();
        let mut offset = 0;
        while log.segment_count() < 2 {
            append_batch(&log, offset, offset + 1);
            offset += 1;
        }
        drop(log);
        // Undo the roll: the batch that caused it and the new segment never reached the disk,
        // only the temporary file of the segment being created.
        let new_segment = segment_files(dir.path()).pop().unwrap();
        let new_base: u64 = new_segment
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        fs::remove_file(&new_segment).unwrap();
        let temp = dir.path().join(format!("{}.tmp", log_file_name(new_base)));
        fs::write(&temp, contents).unwrap();
        let log = Log::open(dir.path(), options())
            .unwrap_or_else(|err| panic!("new segment {what}: open failed: {err}"));
        assert!(
            log.recovery_report().removed_files.contains(&temp),
            "{what}"
        );
        assert_intact(&log, new_base);
        append_batch(&log, new_base, new_base + 2);
        assert_intact(&log, new_base + 2);
    }
}

#[test]
fn damage_below_an_index_checkpoint_is_never_cut_as_a_torn_write() {
    // close() syncs the active segment and writes its index, whose footer says how far the data
    // is durable (here: every record). A torn write can only lie past that point, so damage
    // before it is corruption, even in the batch at the last index entry (here the last batch)
    // or when the file is shorter than the checkpoint says. (It used to be cut as a torn
    // write, moving the log's end back from 400 to 397 with only a warning.)
    let built = build(400, true);
    let segments = segment_files(built.dir.path());
    let active_name = segments.last().unwrap().file_name().unwrap().to_owned();
    let last = *batches_in(segments.last().unwrap()).last().unwrap();
    type Damage = fn(&Path, &BatchAt);
    let damages: [(&str, Damage); 2] = [
        ("a flipped bit in the last batch", |path, b| {
            flip_bit(path, b.end() - 3, 2)
        }),
        ("the file cut inside the last batch", |path, b| {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(b.end() - 3).unwrap();
        }),
    ];
    for (what, damage) in damages {
        let work = scratch_dir();
        copy_dir(built.dir.path(), work.path());
        let active = work.path().join(&active_name);
        damage(&active, &last);
        match Log::open(work.path(), options()) {
            Err(StorageError::Corruption { path, .. }) => assert_eq!(path, active, "{what}"),
            Err(err) => panic!("{what}: {err}"),
            Ok(log) => {
                assert!(
                    log.recovery_report().torn_tail.is_none(),
                    "{what}: checkpointed data cut as a torn write: {:?}",
                    log.recovery_report().torn_tail
                );
                assert_eq!(
                    log.end_offset(),
                    built.end,
                    "{what}: durable records dropped"
                );
                let (_, stopped) = read_checked(&log, 1);
                assert!(stopped.is_some(), "{what}: damage served");
            }
        }
    }
}

#[test]
fn a_torn_write_of_a_value_holding_an_encoded_batch_is_still_a_torn_write() {
    // Recovery tells a torn write from corruption by looking for a valid batch after the bad
    // one, starting inside the torn batch itself. A record whose value holds an encoded batch
    // (a mirror storing fetched batches, or any client that wants to) must not make a torn
    // write of that batch look like corruption, or the node could not restart after an
    // ordinary kill -9.
    let dir = scratch_dir();
    let log = Log::open(dir.path(), options()).unwrap();
    append_range(&log, 0, 10);
    let mut inner = Vec::new();
    encode_batch(
        &mut inner,
        1_000_000,
        1,
        0,
        &[Record::new(b"inner", 1)],
        1024,
        1024,
    )
    .unwrap();
    inner.extend_from_slice(&[b'x'; 100]);
    log.append(1, &[Record::new(&inner, 5)]).unwrap();
    drop(log);
    let path = segment_files(dir.path()).pop().unwrap();
    let last = *batches_in(&path).last().unwrap();
    tear(&path, &last, last.len - 50, Tear::ZeroFilled);
    let log = Log::open(dir.path(), options()).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        log.recovery_report().torn_tail.as_ref().map(|t| t.position),
        Some(last.position)
    );
    assert_intact(&log, 10);
}

#[test]
fn appending_at_the_end_of_the_offset_space_is_an_error_not_a_panic() {
    let dir = scratch_dir();
    let base = u64::MAX - 1;
    fs::write(dir.path().join(log_file_name(base)), segment_header(base)).unwrap();
    let log = Log::open(dir.path(), options()).unwrap();
    log.append(1, &[Record::new(b"last offset", 1)]).unwrap();
    assert_eq!(log.end_offset(), u64::MAX);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        log.append(1, &[Record::new(b"one too many", 1)])
    }));
    assert!(
        matches!(result, Ok(Err(_))),
        "expected an error, got {result:?}"
    );
}
