//! Append throughput: `Log::append` under each durability policy, against plain `write` (and
//! `write` + `fdatasync`) of the same encoded batch bytes, at the same batch size, into a file
//! preallocated with `fallocate` in the same directory, just as the log preallocates segments.
//!
//! Every case gets a fresh directory. Its data is synced, and the directory removed and the
//! removal committed, outside the timing, so no case's writeback spills into the next one's.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use proglog_node::storage::{Durability, Log, LogOptions};
use rustix::fs::{FallocateFlags, fallocate};

use crate::config::Config;
use crate::report;
use crate::workload::{BatchSpec, Budget, RECORD_SIZES, Throughput, drive, median};

/// Where a case's batches go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// `write` into a preallocated file: the baseline of `never` and `interval`.
    RawWrite,
    /// `write` then `fdatasync` per batch, into a preallocated file: the baseline of `always`.
    RawWriteSync,
    /// `Log::append` with default options but this durability.
    Log(Durability),
}

/// One append measurement: a sink and how many threads append to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendCase {
    /// Where the batches go.
    pub sink: Sink,
    /// Concurrent appenders (raw baselines are always single-threaded).
    pub threads: usize,
}

/// A measured case.
#[derive(Debug, Clone, Copy)]
pub struct AppendResult {
    /// Value size of the records.
    pub record_bytes: usize,
    /// What was measured.
    pub case: AppendCase,
    /// How fast.
    pub throughput: Throughput,
    /// `fdatasync` calls made (by the log, including its checkpoints; or by the raw loop).
    pub syncs: u64,
    /// How far apart the rounds were: (fastest - slowest) / median, 0 for one round.
    pub spread: f64,
    /// Throughput as a fraction of the baseline's (see [`AppendCase::baseline`]).
    pub vs_baseline: Option<f64>,
}

/// One round of one case.
#[derive(Debug, Clone, Copy)]
struct Sample {
    throughput: Throughput,
    /// `fdatasync` calls made.
    syncs: u64,
}

impl AppendCase {
    /// The cases in run order; each baseline runs before the cases compared with it.
    pub fn plan(group_threads: usize) -> Vec<AppendCase> {
        let single = |sink| AppendCase { sink, threads: 1 };
        vec![
            single(Sink::RawWrite),
            single(Sink::Log(Durability::Never)),
            single(Sink::Log(Durability::Interval)),
            single(Sink::RawWriteSync),
            single(Sink::Log(Durability::Always)),
            AppendCase {
                sink: Sink::Log(Durability::Always),
                threads: group_threads,
            },
        ]
    }

    /// The raw case this one is reported against: the log's `always` (with any number of
    /// threads) against single-threaded `write` + `fdatasync`, the others against `write`.
    pub fn baseline(&self) -> Option<AppendCase> {
        let sink = match self.sink {
            Sink::RawWrite | Sink::RawWriteSync => return None,
            Sink::Log(Durability::Always) => Sink::RawWriteSync,
            Sink::Log(Durability::Never | Durability::Interval) => Sink::RawWrite,
        };
        Some(AppendCase { sink, threads: 1 })
    }

    /// A short human name.
    pub fn label(&self) -> String {
        let name = match self.sink {
            Sink::RawWrite => "raw write".to_string(),
            Sink::RawWriteSync => "raw write+fdatasync".to_string(),
            Sink::Log(durability) => format!("log {durability}"),
        };
        if self.threads > 1 {
            format!("{name}, {} threads", self.threads)
        } else {
            name
        }
    }
}

/// Runs every case for every record size, `config.rounds` times, and prints each record size's
/// table once its rounds are done. Rounds interleave the cases, so a disturbance (another
/// process using the disk) hits a case and its baseline alike, and the median discards it.
pub fn run_all(config: &Config, run_dir: &Path) -> Result<Vec<AppendResult>> {
    let plan = AppendCase::plan(config.group_threads);
    let mut results: Vec<AppendResult> = Vec::new();
    for record_bytes in RECORD_SIZES {
        let spec = BatchSpec::new(record_bytes, config.batch_records)?;
        report::append_section(&spec, config);
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); plan.len()];
        for _ in 0..config.rounds {
            for (case, case_samples) in plan.iter().zip(&mut samples) {
                let sample = run_case(run_dir, &spec, *case, &config.budget)
                    .with_context(|| format!("{record_bytes}-byte records, {}", case.label()))?;
                case_samples.push(sample);
            }
        }
        let medians: Vec<(AppendCase, Sample, f64)> = plan
            .iter()
            .zip(samples)
            .filter_map(|(case, case_samples)| {
                let spread = spread(&case_samples);
                let middle = median(case_samples, |sample| sample.throughput.bytes_per_sec())?;
                Some((*case, middle, spread))
            })
            .collect();
        for &(case, sample, spread) in &medians {
            let vs_baseline = case.baseline().and_then(|baseline| {
                medians
                    .iter()
                    .find(|(other, _, _)| *other == baseline)
                    .map(|(_, base, _)| sample.throughput.ratio_to(&base.throughput))
            });
            let result = AppendResult {
                record_bytes,
                case,
                throughput: sample.throughput,
                syncs: sample.syncs,
                spread,
                vs_baseline,
            };
            report::append_row(&result, &spec);
            results.push(result);
        }
    }
    Ok(results)
}

/// Measures one case in a fresh directory: its throughput and the `fdatasync` calls it made.
fn run_case(run_dir: &Path, spec: &BatchSpec, case: AppendCase, budget: &Budget) -> Result<Sample> {
    let dir = tempfile::Builder::new()
        .prefix("append-")
        .tempdir_in(run_dir)
        .context("create the case directory")?;
    let sample = match case.sink {
        Sink::RawWrite => append_raw(dir.path(), spec, budget, false),
        Sink::RawWriteSync => append_raw(dir.path(), spec, budget, true),
        Sink::Log(durability) => append_log(dir.path(), spec, budget, durability, case.threads),
    }?;
    dir.close().context("remove the case directory")?;
    // Commit the removal now, outside any timing: freeing blocks (and discarding them, on a
    // filesystem mounted with `discard`) would otherwise land in the next case's first sync.
    File::open(run_dir)
        .and_then(|parent| parent.sync_all())
        .context("sync the benchmark directory")?;
    Ok(sample)
}

/// The baseline: the encoded batch written with `write` (and `fdatasync` when `sync`) into a
/// file preallocated for the whole budget and made durable first, so, as with the log's
/// segments, a sync never has to persist a size change.
fn append_raw(dir: &Path, spec: &BatchSpec, budget: &Budget, sync: bool) -> Result<Sample> {
    let path = dir.join("raw.data");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    let len = budget.max_ops(spec.unit()) * spec.unit().bytes;
    fallocate(&file, FallocateFlags::empty(), 0, len)
        .with_context(|| format!("fallocate {len} bytes for {}", path.display()))?;
    file.sync_all().context("sync the preallocated file")?;
    let bytes = spec.encoded();
    let write_one = || -> Result<()> {
        (&file).write_all(bytes)?;
        if sync {
            file.sync_data()?;
        }
        Ok(())
    };
    let throughput = drive(1, budget, spec.unit(), write_one)?;
    // Outside the timing: leave nothing dirty for the next case's writeback.
    file.sync_all().context("sync after the case")?;
    let syncs = if sync {
        throughput.records / spec.unit().records
    } else {
        0
    };
    Ok(Sample { throughput, syncs })
}

/// The log, with default options (1 GiB preallocated segments, an index checkpoint every
/// 64 MiB) and `durability`, shared by `threads` appenders.
fn append_log(
    dir: &Path,
    spec: &BatchSpec,
    budget: &Budget,
    durability: Durability,
    threads: usize,
) -> Result<Sample> {
    let options = LogOptions {
        durability,
        ..LogOptions::default()
    };
    let log = Log::open(dir, options)?;
    let records = spec.records();
    let append_one = || -> Result<()> {
        log.append(0, &records)?;
        Ok(())
    };
    let throughput = drive(threads, budget, spec.unit(), append_one)?;
    let syncs = log.sync_stats().syncs;
    log.close()?;
    Ok(Sample { throughput, syncs })
}

/// (fastest - slowest) / median of the rounds' throughput.
fn spread(samples: &[Sample]) -> f64 {
    let rates: Vec<f64> = samples
        .iter()
        .map(|sample| sample.throughput.bytes_per_sec())
        .collect();
    let fastest = rates.iter().copied().fold(f64::MIN, f64::max);
    let slowest = rates.iter().copied().fold(f64::MAX, f64::min);
    let middle = median(rates, |rate| *rate).unwrap_or(0.0);
    if middle > 0.0 {
        (fastest - slowest) / middle
    } else {
        0.0
    }
}
