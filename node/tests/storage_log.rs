//! Behaviour of the segmented log through its public API: appends, reads, rolls, reopen,
//! truncation at both ends, retention, time lookup, locking, limits, group commit.

// Helpers panic on failure as the tests do; `allow-unwrap-in-tests` covers only `#[test]` fns.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use proglog_node::storage::{
    Durability, Log, LogOptions, Record, StorageError, encoded_batch_len, index_file_name,
    log_file_name,
};

fn small_options() -> LogOptions {
    LogOptions {
        segment_bytes: 8 * 1024,
        max_batch_bytes: 4 * 1024,
        max_record_bytes: 2 * 1024,
        index_interval_bytes: 256,
        checkpoint_interval_bytes: 16 * 1024,
        durability: Durability::Never,
        ..LogOptions::default()
    }
}

fn value(i: u64) -> Vec<u8> {
    format!("record-{i:06}-{}", "x".repeat((i % 97) as usize)).into_bytes()
}

/// Appends records `from..to`, `per_batch` per batch, at timestamp `1000 + offset`.
fn append_range(log: &Log, epoch: u64, from: u64, to: u64, per_batch: u64) {
    let mut offset = from;
    while offset < to {
        let end = (offset + per_batch).min(to);
        let values: Vec<Vec<u8>> = (offset..end).map(value).collect();
        let records: Vec<Record<'_>> = values
            .iter()
            .zip(offset..)
            .map(|(v, o)| Record::new(v, 1000 + o as i64))
            .collect();
        let info = log.append(epoch, &records).unwrap();
        assert_eq!(info.base_offset, offset);
        assert_eq!(info.last_offset, end - 1);
        offset = end;
    }
}

/// Reads every record from `from` to the end, one small read at a time.
fn read_all(log: &Log, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    while next < log.end_offset() {
        let batches = log.read(next, 1000).unwrap();
        assert!(
            !batches.is_empty(),
            "read at {next} returned nothing before the end"
        );
        for batch in batches {
            for record in batch.records().filter(|r| r.offset >= next) {
                out.push((record.offset, record.value.to_vec()));
            }
            next = batch.next_offset();
        }
    }
    out
}

fn assert_holds(log: &Log, from: u64, to: u64) {
    let records = read_all(log, from);
    let expected: Vec<(u64, Vec<u8>)> = (from..to).map(|o| (o, value(o))).collect();
    assert_eq!(records.len(), expected.len());
    assert!(
        records == expected,
        "log content differs from what was appended"
    );
}

#[test]
fn appends_roll_and_survive_clean_and_unclean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    append_range(&log, 1, 0, 500, 3);
    assert!(log.segment_count() > 3, "small segments must roll");
    assert_holds(&log, 0, 500);
    assert_holds(&log, 123, 500);
    log.close().unwrap();

    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(
        log.recovery_report().scanned_bytes,
        0,
        "a clean reopen reads no data"
    );
    assert_eq!(log.end_offset(), 500);
    append_range(&log, 2, 500, 700, 5);
    drop(log); // no checkpoint: the next open recovers as after a crash

    let log = Log::open(dir.path(), small_options()).unwrap();
    assert!(log.recovery_report().torn_tail.is_none());
    assert_eq!(log.end_offset(), 700);
    assert_holds(&log, 0, 700);
    assert_eq!(log.epoch_end_offset(1), Some((1, 500)));
    assert_eq!(log.epoch_end_offset(2), Some((2, 700)));
}

/// A segment holds at least one batch of the largest size allowed, as Kafka's do: with
/// segments smaller than the batch limit, a batch larger than a segment goes alone into a
/// segment of its own, which reads, rolls, recovers (clean and after a crash) and is removed by
/// retention like any other.
#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let options = LogOptions {
        segment_bytes: 4 * 1024,
        max_batch_bytes: 128 * 1024,
        max_record_bytes: 100 * 1024,
        preallocate: true,
        ..small_options()
    };
    let big = vec![7u8; 100 * 1024];
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options.clone()).unwrap();
    append_range(&log, 1, 0, 10, 2);
    let info = log.append(1, &[Record::new(&big, 5_000)]).unwrap();
    assert_eq!(info.base_offset, 10);
    append_range(&log, 1, 11, 40, 2);
    let segments = log.segment_count();
    assert!(segments >= 3, "{segments} segments");
    let read = |log: &Log| {
        let batches = log.read(10, 0).unwrap();
        let record = batches[0].records().next().unwrap();
        (record.offset, record.value.to_vec())
    };
    assert_eq!(read(&log), (10, big.clone()));
    log.close().unwrap();

    let log = Log::open(dir.path(), options.clone()).unwrap();
    assert_eq!(log.end_offset(), 40);
    assert_eq!(read(&log), (10, big.clone()));
    // Another large batch in the active segment, then a crash (no checkpoint).
    let info = log.append(2, &[Record::new(&big, 6_000)]).unwrap();
    assert_eq!(info.base_offset, 40);
    drop(log);
    let log = Log::open(dir.path(), options.clone()).unwrap();
    assert!(log.recovery_report().torn_tail.is_none());
    assert_eq!(log.end_offset(), 41);
    let batches = log.read(40, 0).unwrap();
    assert_eq!(
        batches[0].records().next().unwrap().value.as_ref(),
        &big[..]
    );
    append_range(&log, 2, 41, 50, 3);
    let around: Vec<(u64, Vec<u8>)> = read_all(&log, 11)
        .into_iter()
        .filter(|(offset, _)| *offset != 40)
        .collect();
    let expected: Vec<(u64, Vec<u8>)> = (11..50)
        .filter(|offset| *offset != 40)
        .map(|offset| (offset, value(offset)))
        .collect();
    assert!(
        around == expected,
        "the records around the large ones differ"
    );
    // Retention by size removes whole segments, a large one too: every segment before the
    // second large one goes, and that one stays because the log without it would be smaller
    // than the limit (Kafka's rule).
    let limited = LogOptions {
        retention_bytes: Some(16 * 1024),
        ..options
    };
    log.close().unwrap();
    let log = Log::open(dir.path(), limited).unwrap();
    log.apply_retention(0, log.end_offset()).unwrap();
    assert_eq!(log.start_offset(), 40);
    assert_holds(&log, 41, 50);
}

#[test]
fn out_of_range_reads_name_the_valid_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    append_range(&log, 0, 0, 10, 1);
    assert!(
        log.read(10, 100).unwrap().is_empty(),
        "reading at the end is empty, not an error"
    );
    match log.read(11, 100) {
        Err(StorageError::OffsetOutOfRange {
            requested: 11,
            start: 0,
            end: 10,
        }) => {}
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    let message = log.read(11, 100).unwrap_err().to_string();
    assert!(message.contains("0..10"), "{message}");
}

/// A retention age too large for milliseconds in an `i64` keeps everything: it must never
/// wrap into a negative age that deletes every segment.
#[test]
fn a_huge_retention_age_keeps_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        retention_age: Some(Duration::from_secs(3_000_000_000_000 * 3600)),
        segment_max_age: None,
        ..small_options()
    };
    let log = Log::open(dir.path(), options).unwrap();
    append_range(&log, 1, 0, 300, 4);
    assert!(log.segment_count() > 3);
    log.apply_retention(super_now(), log.end_offset()).unwrap();
    assert_eq!(log.start_offset(), 0);
    assert_holds(&log, 0, 300);
}

#[test]
fn truncate_suffix_cuts_anywhere_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    append_range(&log, 1, 0, 300, 4);
    append_range(&log, 2, 300, 400, 4);
    // Mid-batch and segments away from the end.
    log.truncate_suffix(151).unwrap();
    assert_eq!(log.end_offset(), 151);
    assert_holds(&log, 0, 151);
    assert_eq!(log.epoch_end_offset(2), Some((1, 151)));
    append_range(&log, 3, 151, 200, 2);
    assert_holds(&log, 0, 200);
    drop(log);
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_holds(&log, 0, 200);
    log.truncate_suffix(0).unwrap();
    assert_eq!(log.end_offset(), 0);
    append_range(&log, 4, 0, 20, 3);
    log.close().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_holds(&log, 0, 20);
}

#[test]
fn truncate_prefix_and_retention_delete_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        retention_bytes: Some(20 * 1024),
        ..small_options()
    };
    let log = Log::open(dir.path(), options.clone()).unwrap();
    append_range(&log, 1, 0, 1000, 4);
    let before = log.segment_count();
    let outcome = log.apply_retention(i64::MAX, u64::MAX).unwrap();
    assert!(outcome.segments_deleted > 0);
    assert_eq!(log.segment_count(), before - outcome.segments_deleted);
    assert!(
        log.size_bytes() >= 20 * 1024,
        "retention keeps at least the limit"
    );
    let start = log.start_offset();
    assert_eq!(start, outcome.start_offset);
    assert!(matches!(
        log.read(start - 1, 10),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_holds(&log, start, 1000);
    assert!(!dir.path().join(log_file_name(0)).exists());
    assert!(!dir.path().join(index_file_name(0)).exists());

    log.truncate_prefix(start + 5).unwrap();
    assert_eq!(log.start_offset(), start + 5);
    drop(log);
    let log = Log::open(dir.path(), options).unwrap();
    assert_eq!(log.start_offset(), start + 5);
    assert_holds(&log, start + 5, 1000);
    // Truncating everything keeps an empty active segment at the end.
    log.truncate_prefix(1000).unwrap();
    assert_eq!(log.start_offset(), 1000);
    assert_eq!(log.segment_count(), 1);
    append_range(&log, 1, 1000, 1010, 2);
    assert_holds(&log, 1000, 1010);
}

#[test]
fn retention_by_age_and_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        retention_age: Some(Duration::from_secs(60)),
        segment_max_age: Some(Duration::from_millis(1)),
        ..small_options()
    };
    let log = Log::open(dir.path(), options).unwrap();
    // Records stamped 1000 + offset ms after the Unix epoch: long expired.
    append_range(&log, 1, 0, 3, 1);
    // Keep appending until the first segment is older than 1 ms and the log rolls.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut next = 3;
    while log.segment_count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the active segment never rolled by age"
        );
        append_range(&log, 1, next, next + 1, 1);
        next += 1;
    }

    let outcome = log.apply_retention(super_now(), u64::MAX).unwrap();
    assert!(outcome.segments_deleted >= 1);
    // Every sealed segment is expired; only the active one is left.
    assert_eq!(log.segment_count(), 1);
    assert!(log.start_offset() > 0);
    assert_holds(&log, log.start_offset(), next);
}

#[test]
fn retention_never_removes_a_segment_at_or_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        retention_bytes: Some(1),
        ..small_options()
    };
    let log = Log::open(dir.path(), options).unwrap();
    append_range(&log, 1, 0, 1000, 4);
    assert!(log.segment_count() > 3);
    // Bounded at offset 300 (a high watermark): segments ending after it stay.
    let outcome = log.apply_retention(i64::MAX, 300).unwrap();
    assert!(outcome.segments_deleted > 0);
    assert!(log.start_offset() <= 300, "start {}", log.start_offset());
    assert_holds(&log, log.start_offset(), 1000);
    // Nothing more goes while the bound stays; everything sealed goes once it moves.
    let start = log.start_offset();
    assert_eq!(
        log.apply_retention(i64::MAX, 300).unwrap().segments_deleted,
        0
    );
    assert_eq!(log.start_offset(), start);
    log.apply_retention(i64::MAX, 1000).unwrap();
    assert_eq!(log.segment_count(), 1);
}

#[test]
fn the_start_keeps_the_epoch_of_the_record_before_it_across_retention_resets_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(log.start_epoch(), 0);
    append_range(&log, 2, 0, 100, 4);
    append_range(&log, 5, 100, 200, 4);
    log.truncate_prefix(150).unwrap();
    assert_eq!(log.start_epoch(), 5, "record 149 is of epoch 5");
    log.truncate_prefix(150).unwrap();
    assert_eq!(log.start_epoch(), 5);
    log.close().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!((log.start_offset(), log.start_epoch()), (150, 5));
    log.reset_to(400, 7).unwrap();
    assert_eq!((log.start_offset(), log.start_epoch()), (400, 7));
    assert_eq!(log.latest_epoch(), None, "no batch yet");
    log.close().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!((log.start_offset(), log.start_epoch()), (400, 7));
}

#[test]
fn a_start_offset_checkpoint_without_an_epoch_reads_as_epoch_0() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    append_range(&log, 3, 0, 100, 4);
    log.close().unwrap();
    proglog_node::storage::checkpoint::write(
        dir.path(),
        proglog_node::storage::START_OFFSET_FILE,
        &10u64.to_le_bytes(),
    )
    .unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!((log.start_offset(), log.start_epoch()), (10, 0));
}

fn super_now() -> i64 {
    proglog_node::storage::now_ms()
}

#[test]
fn offset_for_time_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    append_range(&log, 1, 0, 400, 3);
    assert_eq!(log.offset_for_time(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_time(1000 + 250).unwrap(), Some(250));
    assert_eq!(log.offset_for_time(1000 + 399).unwrap(), Some(399));
    assert_eq!(log.offset_for_time(1000 + 400).unwrap(), None);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open(dir.path(), small_options()).unwrap();
    match Log::open(dir.path(), small_options()) {
        Err(StorageError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn limits_and_epochs_are_enforced_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    append_range(&log, 5, 0, 3, 1);
    let big = vec![0u8; 2 * 1024 + 1];
    assert!(matches!(
        log.append(5, &[Record::new(&big, 0)]),
        Err(StorageError::RecordTooLarge {
            size: 2049,
            max: 2048
        })
    ));
    assert!(matches!(
        log.append(4, &[Record::new(b"old leader", 0)]),
        Err(StorageError::EpochRegression {
            epoch: 4,
            latest: 5
        })
    ));
    assert!(matches!(log.append(5, &[]), Err(StorageError::EmptyBatch)));
    assert_eq!(log.end_offset(), 3);
    assert_holds(&log, 0, 3);
}

#[test]
fn concurrent_appends_under_always_share_fsyncs_and_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        durability: Durability::Always,
        ..small_options()
    };
    let log = Arc::new(Log::open(dir.path(), options.clone()).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    let payload = format!("t{t}-{i}");
                    let info = log
                        .append(1, &[Record::new(payload.as_bytes(), 0)])
                        .unwrap();
                    assert!(
                        log.durable_offset() > info.last_offset,
                        "acknowledged before durable"
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(log.end_offset(), 400);
    // Group commit: 400 appends waited for durability from 8 threads at once, and a thread that
    // found a sync in progress rode on the next one instead of making its own. One sync per
    // append would mean no append ever overlapped another's fsync.
    let stats = log.sync_stats();
    assert!(stats.syncs >= 1 && stats.syncs < 400, "{stats:?}");
    let mut seen: Vec<String> = Vec::new();
    let mut next = 0;
    while next < 400 {
        for batch in log.read(next, 1 << 20).unwrap() {
            seen.extend(
                batch
                    .records()
                    .map(|r| String::from_utf8(r.value.to_vec()).unwrap()),
            );
            next = batch.next_offset();
        }
    }
    seen.sort();
    let mut expected: Vec<String> = (0..8)
        .flat_map(|t| (0..50).map(move |i| format!("t{t}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn an_unsynced_append_is_published_at_once_and_durable_after_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        durability: Durability::Always,
        ..small_options()
    };
    let log = Log::open(dir.path(), options).unwrap();
    let mut written = log.subscribe_written();
    assert_eq!(*written.borrow_and_update(), 0);
    let info = log
        .append_unsynced(1, &[Record::new(b"a", 0), Record::new(b"b", 0)])
        .unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 1));
    // Written: published and readable, but not yet claimed durable.
    assert!(written.has_changed().unwrap());
    assert_eq!(*written.borrow_and_update(), 2);
    assert_eq!(log.read(0, 1 << 20).unwrap()[0].next_offset(), 2);
    assert_eq!(log.durable_offset(), 0);
    // One flush makes everything written so far durable.
    log.append_unsynced(1, &[Record::new(b"c", 0)]).unwrap();
    log.flush().unwrap();
    assert_eq!(log.durable_offset(), 3);
    // A synced append publishes too, and a suffix truncation publishes the shorter end.
    log.append(1, &[Record::new(b"d", 0)]).unwrap();
    assert_eq!(*written.borrow_and_update(), 4);
    log.truncate_suffix(2).unwrap();
    assert_eq!(*written.borrow_and_update(), 2);
    log.close().unwrap();
}

#[test]
fn reset_empties_the_log_and_restarts_it_at_a_later_offset_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    append_range(&log, 1, 0, 300, 7);
    assert!(log.segment_count() > 1);
    let mut written = log.subscribe_written();
    written.borrow_and_update();

    log.reset_to(1000, 2).unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (1000, 1000));
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.latest_epoch(), None, "no epoch without records");
    assert_eq!(*written.borrow_and_update(), 1000);
    assert!(matches!(
        log.read(0, 1 << 20),
        Err(StorageError::OffsetOutOfRange { start: 1000, .. })
    ));
    // Copies of the leader's batches continue from the new start.
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = Log::open(leader_dir.path(), small_options()).unwrap();
    leader.reset_to(1000, 2).unwrap();
    append_range(&leader, 3, 1000, 1010, 5);
    for batch in leader.read(1000, 1 << 20).unwrap() {
        log.append_batch(&batch).unwrap();
    }
    assert_eq!(log.end_offset(), 1010);
    assert_eq!(log.latest_epoch(), Some(3));
    log.close().unwrap();

    let reopened = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(
        (reopened.start_offset(), reopened.end_offset()),
        (1000, 1010)
    );
    let values: Vec<Vec<u8>> = reopened
        .read(1000, 1 << 20)
        .unwrap()
        .iter()
        .flat_map(|batch| {
            batch
                .records()
                .map(|r| r.value.to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(values, (1000..1010).map(value).collect::<Vec<_>>());
}

#[test]
fn a_reset_cut_short_by_a_crash_is_finished_by_the_next_open() {
    // reset_to saves its intent first, then deletes segments oldest first: a crash in between
    // leaves the intent and a suffix of the old segments, and the open finishes the reset.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    append_range(&log, 1, 0, 300, 7);
    assert!(log.segment_count() > 2);
    log.close().unwrap();
    let intent: Vec<u8> = [150u64, 3, 1]
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .collect();
    proglog_node::storage::checkpoint::write(
        dir.path(),
        proglog_node::storage::START_OFFSET_FILE,
        &intent,
    )
    .unwrap();
    std::fs::remove_file(dir.path().join(log_file_name(0))).unwrap();
    let _ = std::fs::remove_file(dir.path().join(index_file_name(0)));

    let reopened = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(
        (
            reopened.start_offset(),
            reopened.end_offset(),
            reopened.start_epoch()
        ),
        (150, 150, 3),
        "the reset was finished"
    );
    assert_eq!(reopened.segment_count(), 1);
    append_range(&reopened, 4, 150, 160, 5);
    reopened.close().unwrap();
    let again = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(
        (
            again.start_offset(),
            again.end_offset(),
            again.start_epoch()
        ),
        (150, 160, 3)
    );
}

#[test]
fn a_start_checkpoint_past_the_segments_reopens_and_can_be_reset_again() {
    // A start offset checkpoint of an earlier version (8 bytes, no reset intent) past what is
    // left: the start is clamped to the segments.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    append_range(&log, 1, 0, 300, 7);
    let end = log.end_offset();
    assert!(log.segment_count() > 2);
    log.close().unwrap();
    proglog_node::storage::checkpoint::write(
        dir.path(),
        proglog_node::storage::START_OFFSET_FILE,
        &5000u64.to_le_bytes(),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join(log_file_name(0))).unwrap();
    let _ = std::fs::remove_file(dir.path().join(index_file_name(0)));

    let reopened = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!(reopened.end_offset(), end);
    assert!(reopened.start_offset() <= end);
    reopened.reset_to(5000, 1).unwrap();
    append_range(&reopened, 2, 5000, 5010, 5);
    assert_eq!(
        (reopened.start_offset(), reopened.end_offset()),
        (5000, 5010)
    );
    reopened.close().unwrap();
    let again = Log::open(dir.path(), small_options()).unwrap();
    assert_eq!((again.start_offset(), again.end_offset()), (5000, 5010));
}

#[test]
fn interval_durability_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        durability: Durability::Interval,
        flush_interval: Duration::from_millis(5),
        ..small_options()
    };
    let log = Log::open(dir.path(), options).unwrap();
    append_range(&log, 1, 0, 10, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.durable_offset() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flusher never synced"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    log.close().unwrap();
}

#[test]
fn followers_append_the_leaders_batches_byte_for_byte() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = Log::open(leader_dir.path(), small_options()).unwrap();
    let follower = Log::open(follower_dir.path(), small_options()).unwrap();
    append_range(&leader, 1, 0, 100, 3);
    let mut next = 0;
    while next < leader.end_offset() {
        for batch in leader.read(next, 2000).unwrap() {
            follower.append_batch(&batch).unwrap();
            next = batch.next_offset();
        }
    }
    assert_holds(&follower, 0, 100);
    let batch = leader.read(0, 10).unwrap().remove(0);
    assert!(matches!(
        follower.append_batch(&batch),
        Err(StorageError::NonContiguousBatch {
            expected: 100,
            found: 0
        })
    ));
}

#[test]
fn an_append_is_said_to_stay_in_the_page_cache_only_when_no_file_work_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_options()).unwrap();
    // The first batch of an epoch rewrites the epoch checkpoint.
    assert!(!log.append_stays_in_page_cache(1, 1, 100));
    append_range(&log, 1, 0, 10, 5);
    assert!(log.append_stays_in_page_cache(1, 1, 100));
    assert!(!log.append_stays_in_page_cache(2, 1, 100), "a new epoch");
    // Past the segment size the append would seal (and sync) this segment and start another.
    assert!(!log.append_stays_in_page_cache(1, 1, 8 * 1024));
    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    // The encoded size of the next 5 records, as `append_range` writes them.
    let next_bytes = |end: u64| encoded_batch_len((end..end + 5).map(|i| value(i).len()));
    while log.append_stays_in_page_cache(1, 5, next_bytes(log.end_offset())) {
        let end = log.end_offset();
        append_range(&log, 1, end, end + 5, 5);
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        segments,
        "no segment was started while appends were said to stay in the page cache"
    );
    let end = log.end_offset();
    append_range(&log, 1, end, end + 5, 5);
    assert!(std::fs::read_dir(dir.path()).unwrap().count() > segments);
}
