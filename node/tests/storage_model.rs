//! Model-based property test: random appends, reads, truncations at both ends, retention,
//! checkpoints and reopens (clean and as after a crash) against a plain in-memory model. After
//! every step the log must agree with the model on its range, content, epochs and timestamps.
//! A failing case is shrunk and printed by proptest; `PROPTEST_CASES` raises the case count.

// Helpers panic on failure as the tests do; `allow-unwrap-in-tests` covers only `#[test]` fns.
#![allow(clippy::unwrap_used)]

use proglog_node::storage::{Durability, Log, LogOptions, Record, StorageError};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append a batch; `new_epoch` bumps the leader epoch first.
    Append {
        new_epoch: bool,
        records: Vec<(Vec<u8>, i64)>,
    },
    /// Read from a point in the log (as a fraction of its range), within a byte budget.
    Read {
        at: f64,
        max_bytes: usize,
    },
    /// Read from just outside the log.
    ReadOutside {
        after: bool,
    },
    TruncateSuffix {
        at: f64,
    },
    TruncatePrefix {
        at: f64,
    },
    Retention,
    OffsetForTime {
        timestamp: i64,
    },
    EpochEndOffset {
        epoch: u64,
    },
    Checkpoint,
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let record = (prop::collection::vec(any::<u8>(), 0..300), 0i64..10_000);
    prop_oneof![
        8 => (any::<bool>(), prop::collection::vec(record, 1..6))
            .prop_map(|(bump, records)| Op::Append { new_epoch: bump && records.len() % 3 == 0, records }),
        4 => (0.0..=1.0f64, 1usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => any::<bool>().prop_map(|after| Op::ReadOutside { after }),
        1 => (0.0..=1.0f64).prop_map(|at| Op::TruncateSuffix { at }),
        1 => (0.0..=1.0f64).prop_map(|at| Op::TruncatePrefix { at }),
        1 => Just(Op::Retention),
        1 => (0i64..11_000).prop_map(|timestamp| Op::OffsetForTime { timestamp }),
        1 => (0u64..8).prop_map(|epoch| Op::EpochEndOffset { epoch }),
        1 => Just(Op::Checkpoint),
        2 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// The model: every record ever appended and not truncated, by offset.
#[derive(Debug, Default)]
struct Model {
    /// (epoch, value, timestamp) at offset `i`; entries below `start` are kept only so offsets
    /// index the vector directly.
    records: Vec<(u64, Vec<u8>, i64)>,
    start: u64,
    epoch: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.records.len() as u64
    }

    fn point(&self, at: f64) -> u64 {
        self.start + ((self.end() - self.start) as f64 * at).round() as u64
    }
}

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: 4096,
        max_batch_bytes: 2048,
        max_record_bytes: 1024,
        index_interval_bytes: 128,
        checkpoint_interval_bytes: 1024,
        retention_bytes: Some(6000),
        durability: Durability::Never,
        ..LogOptions::default()
    }
}

fn check_read(log: &Log, model: &Model, from: u64, max_bytes: usize) -> Result<(), TestCaseError> {
    let batches = log
        .read(from, max_bytes)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    if from == model.end() {
        prop_assert!(batches.is_empty());
        return Ok(());
    }
    prop_assert!(
        !batches.is_empty(),
        "nothing read at {} of {}..{}",
        from,
        model.start,
        model.end()
    );
    let first = &batches[0];
    prop_assert!(first.base_offset() <= from && from <= first.last_offset());
    let mut expected_next = first.base_offset();
    let mut bytes = 0;
    for batch in &batches {
        prop_assert_eq!(batch.base_offset(), expected_next, "batches not contiguous");
        expected_next = batch.next_offset();
        bytes += batch.as_bytes().len();
        prop_assert!(batch.last_offset() < model.end());
        for record in batch.records().filter(|r| r.offset >= model.start) {
            let (epoch, value, timestamp) = &model.records[record.offset as usize];
            prop_assert_eq!(&record.value[..], &value[..], "value at {}", record.offset);
            prop_assert_eq!(record.timestamp_ms, *timestamp);
            prop_assert_eq!(record.leader_epoch, *epoch);
        }
    }
    prop_assert!(
        batches.len() == 1 || bytes <= max_bytes,
        "read {} bytes for a budget of {}",
        bytes,
        max_bytes
    );
    Ok(())
}

fn check_whole(log: &Log, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.start_offset(), model.start);
    prop_assert_eq!(log.end_offset(), model.end());
    let mut next = model.start;
    while next < model.end() {
        check_read(log, model, next, 4096)?;
        let batches = log
            .read(next, 4096)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        next = batches.last().map_or(next, |b| b.next_offset());
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let open = || Log::open(dir.path(), options()).map_err(|e| TestCaseError::fail(e.to_string()));
    let mut log = Some(open()?);
    let mut model = Model::default();
    for op in ops {
        let Some(current) = log.as_ref() else {
            unreachable!()
        };
        match op {
            Op::Append { new_epoch, records } => {
                if new_epoch {
                    model.epoch += 1;
                }
                let encoded: Vec<Record<'_>> =
                    records.iter().map(|(v, ts)| Record::new(v, *ts)).collect();
                let info = current
                    .append(model.epoch, &encoded)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(info.base_offset, model.end());
                for (value, timestamp) in records {
                    model.records.push((model.epoch, value, timestamp));
                }
                prop_assert_eq!(info.last_offset + 1, model.end());
            }
            Op::Read { at, max_bytes } => check_read(current, &model, model.point(at), max_bytes)?,
            Op::ReadOutside { after } => {
                let offset = if after {
                    model.end() + 1
                } else {
                    model.start.wrapping_sub(1)
                };
                if after || model.start > 0 {
                    match current.read(offset, 100) {
                        Err(StorageError::OffsetOutOfRange {
                            requested,
                            start,
                            end,
                        }) => {
                            prop_assert_eq!(
                                (requested, start, end),
                                (offset, model.start, model.end())
                            );
                        }
                        other => prop_assert!(false, "expected OffsetOutOfRange, got {:?}", other),
                    }
                }
            }
            Op::TruncateSuffix { at } => {
                let offset = model.point(at);
                current
                    .truncate_suffix(offset)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.records.truncate(offset as usize);
                // Appends continue at the latest epoch still in the log, or any higher one.
                check_whole(current, &model)?;
            }
            Op::TruncatePrefix { at } => {
                let offset = model.point(at);
                current
                    .truncate_prefix(offset)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.start = offset;
                check_whole(current, &model)?;
            }
            Op::Retention => {
                let outcome = current
                    .apply_retention(i64::MAX, u64::MAX)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(
                    outcome.start_offset >= model.start && outcome.start_offset <= model.end()
                );
                prop_assert!(current.size_bytes() >= 6000 || outcome.segments_deleted == 0);
                model.start = outcome.start_offset;
                check_whole(current, &model)?;
            }
            Op::OffsetForTime { timestamp } => {
                let expected =
                    (model.start..model.end()).find(|&o| model.records[o as usize].2 >= timestamp);
                let found = current
                    .offset_for_time(timestamp)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(found, expected, "offset_for_time({})", timestamp);
            }
            Op::EpochEndOffset { epoch } => {
                let live = &model.records[model.start as usize..];
                let expected =
                    live.iter()
                        .map(|r| r.0)
                        .filter(|&e| e <= epoch)
                        .max()
                        .map(|found| {
                            let end = live
                                .iter()
                                .position(|r| r.0 > found)
                                .map_or(model.end(), |i| model.start + i as u64);
                            (found, end)
                        });
                prop_assert_eq!(
                    current.epoch_end_offset(epoch),
                    expected,
                    "epoch_end_offset({})",
                    epoch
                );
            }
            Op::Checkpoint => current
                .checkpoint()
                .map_err(|e| TestCaseError::fail(e.to_string()))?,
            Op::Reopen { clean } => {
                let Some(old) = log.take() else {
                    unreachable!()
                };
                if clean {
                    old.close()
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                } else {
                    drop(old);
                }
                let reopened = open()?;
                if clean {
                    prop_assert_eq!(reopened.recovery_report().scanned_bytes, 0);
                }
                prop_assert!(reopened.recovery_report().torn_tail.is_none());
                check_whole(&reopened, &model)?;
                log = Some(reopened);
            }
        }
        // Appends after a truncation must use an epoch at least the log's latest.
        if let Some(latest) = log.as_ref().and_then(Log::latest_epoch) {
            model.epoch = model.epoch.max(latest);
        }
    }
    let Some(current) = log.as_ref() else {
        unreachable!()
    };
    check_whole(current, &model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_the_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
