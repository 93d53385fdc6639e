//! What every case writes (batches of equal records, encoded exactly as the log encodes them)
//! and the one driver that runs and times a case.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use proglog_node::storage::{LogOptions, Record, encode_batch, now_ms};

/// Value sizes of the records appended, in bytes.
pub const RECORD_SIZES: [usize; 2] = [100, 1024];
/// Without `--batch-records`, a batch holds about this many bytes of values.
const DEFAULT_BATCH_VALUE_BYTES: usize = 16 * 1024;

/// One batch shape, and its bytes as the log writes them (header, records, checksum).
#[derive(Debug)]
pub struct BatchSpec {
    value: Vec<u8>,
    count: usize,
    encoded: Vec<u8>,
}

/// What one operation of a case writes or reads.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    /// Bytes, as stored on disk.
    pub bytes: u64,
    /// Records.
    pub records: u64,
}

impl BatchSpec {
    /// `count` records of `record_bytes` each (about 16 KiB of values when `None`).
    pub fn new(record_bytes: usize, count: Option<usize>) -> Result<BatchSpec> {
        let count = count.unwrap_or((DEFAULT_BATCH_VALUE_BYTES / record_bytes.max(1)).max(1));
        // Not all zeros, so nothing on the way (compression, dedup) can shortcut the bytes.
        let value: Vec<u8> = (0..record_bytes).map(|i| (i % 251) as u8).collect();
        let mut encoded = Vec::new();
        let records = vec![Record::new(&value, now_ms()); count];
        let options = LogOptions::default();
        encode_batch(
            &mut encoded,
            0,
            0,
            0,
            &records,
            options.max_record_bytes,
            options.max_batch_bytes,
        )?;
        Ok(BatchSpec {
            value,
            count,
            encoded,
        })
    }

    /// Value size of each record.
    pub fn record_bytes(&self) -> usize {
        self.value.len()
    }

    /// Records per batch.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The records to hand to `Log::append` (which encodes them into the same bytes as
    /// [`BatchSpec::encoded`], give or take offsets and timestamps).
    pub fn records(&self) -> Vec<Record<'_>> {
        vec![Record::new(&self.value, now_ms()); self.count]
    }

    /// The encoded batch: what the raw-file baselines write.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// What appending one batch writes.
    pub fn unit(&self) -> Unit {
        Unit {
            bytes: self.encoded.len() as u64,
            records: self.count as u64,
        }
    }
}

/// How long one append case runs: until `max_bytes` are written or `max_time` has passed.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most bytes written (rounded down to whole batches, at least one).
    pub max_bytes: u64,
    /// Longest time taken.
    pub max_time: Duration,
}

impl Budget {
    /// Most operations of `unit` the budget allows.
    pub fn max_ops(&self, unit: Unit) -> u64 {
        (self.max_bytes / unit.bytes.max(1)).max(1)
    }
}

/// Bytes and records moved in a measured time.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Bytes written or read.
    pub bytes: u64,
    /// Records written or read.
    pub records: u64,
    /// Wall time, by `Instant`.
    pub elapsed: Duration,
}

impl Throughput {
    /// Bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Records per second.
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// This throughput as a fraction of `baseline`'s.
    pub fn ratio_to(&self, baseline: &Throughput) -> f64 {
        self.bytes_per_sec() / baseline.bytes_per_sec().max(1e-9)
    }
}

/// Runs `op` (which writes one `unit`) on `threads` threads until the budget is spent, and
/// times the whole. Threads claim operations from one counter, so together they never exceed
/// the byte budget; the first error stops every thread and is returned.
pub fn drive<F>(threads: usize, budget: &Budget, unit: Unit, op: F) -> Result<Throughput>
where
    F: Fn() -> Result<()> + Sync,
{
    let max_ops = budget.max_ops(unit);
    let claimed = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + budget.max_time;
    let worker = || -> Result<u64> {
        let mut done = 0;
        while claimed.fetch_add(1, Ordering::Relaxed) < max_ops && Instant::now() < deadline {
            if let Err(err) = op() {
                claimed.store(max_ops, Ordering::Relaxed);
                return Err(err);
            }
            done += 1;
        }
        Ok(done)
    };
    let per_thread: Result<Vec<u64>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| anyhow!("a benchmark thread panicked"))?
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let ops: u64 = per_thread?.iter().sum();
    Ok(Throughput {
        bytes: ops * unit.bytes,
        records: ops * unit.records,
        elapsed,
    })
}

/// The sample with the median `rate` (the upper one of an even count); `None` when empty.
pub fn median<T>(mut samples: Vec<T>, rate: impl Fn(&T) -> f64) -> Option<T> {
    samples.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let middle = samples.len() / 2;
    samples.into_iter().nth(middle)
}

/// The best (fastest) of `passes` runs of `measure`: the least disturbed by other work.
pub fn best_of(
    passes: usize,
    mut measure: impl FnMut() -> Result<Throughput>,
) -> Result<Throughput> {
    let mut best: Option<Throughput> = None;
    for _ in 0..passes.max(1) {
        let pass = measure()?;
        if best.is_none_or(|b| pass.bytes_per_sec() > b.bytes_per_sec()) {
            best = Some(pass);
        }
    }
    best.ok_or_else(|| anyhow!("no pass ran"))
}
