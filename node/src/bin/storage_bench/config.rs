//! Command-line flags, and the validated [`Config`] they map onto (flags exist only here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use proglog_node::storage::{BATCH_HEADER_LEN, LogOptions, RECORD_HEADER_LEN};

use crate::workload::{Budget, RECORD_SIZES};

/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;

/// Measures proglog's storage engine against plain file I/O on the same disk, in the same run.
#[derive(Debug, Parser)]
#[command(name = "proglog-storage-bench", version)]
pub struct Cli {
    /// The benchmark's flags.
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Internal modes; absent for a benchmark run.
    #[command(subcommand)]
    pub mode: Option<Mode>,
}

/// Modes the benchmark runs itself in, as a child process.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Appends to an existing log until the parent SIGKILLs this process (the reopen-after-kill
    /// case). Not for humans.
    #[command(hide = true)]
    AppendUntilKilled(KillTargetArgs),
}

/// What the user can tune. Every size has a default for the full run and one for `--quick`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Parent directory for the benchmark's files; a fresh subdirectory is created in it and
    /// removed at the end. It must be on the disk under test, not tmpfs. Default: `./target` when
    /// it exists (the usual `cargo run` case), else the system temp directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Small sizes for a CI smoke run (a few seconds). The targets are printed but mean little.
    #[arg(long)]
    pub quick: bool,
    /// Size of the log built for the read and reopen cases, in GiB [default: 1, quick: 1/16].
    #[arg(long)]
    pub log_gib: Option<f64>,
    /// Longest time one append case runs, in seconds [default: 2, quick: 0.25].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Most data one append case writes, in MiB; a case stops at this or `--seconds`, whichever
    /// comes first [default: 256, quick: 16].
    #[arg(long)]
    pub case_mib: Option<u64>,
    /// Rounds of append cases; each round runs every case once, baselines next to the cases
    /// compared with them, and each case reports its median round [default: 3, quick: 1].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Concurrent appenders sharing one log in the group-commit case.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Records per appended batch [default: as many as hold about 16 KiB of values: 163 of
    /// 100 B, 16 of 1 KiB].
    #[arg(long)]
    pub batch_records: Option<usize>,
    /// Segment size of the read/reopen log, in MiB, small enough that most of that log is in
    /// sealed segments [default: 256, quick: 16].
    #[arg(long)]
    pub segment_mib: Option<u64>,
}

/// Flags of the hidden child mode, filled in by the parent.
#[derive(Debug, Args)]
pub struct KillTargetArgs {
    /// The log's directory (it exists and is closed).
    #[arg(long)]
    pub dir: PathBuf,
    /// `LogOptions::segment_bytes` the log was built with.
    #[arg(long)]
    pub segment_bytes: u64,
    /// Value size of each record.
    #[arg(long)]
    pub record_bytes: usize,
    /// Records per batch.
    #[arg(long)]
    pub batch_records: usize,
    /// After appending this many bytes, print `ready <end offset>` and keep appending.
    #[arg(long)]
    pub ready_after_bytes: u64,
}

/// A benchmark run's settings, checked before anything is written.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the run's own temporary directory is created.
    pub parent_dir: PathBuf,
    /// Smoke-test sizes.
    pub quick: bool,
    /// How long and how much each append case runs.
    pub budget: Budget,
    /// Rounds of append cases (each case reports its median).
    pub rounds: usize,
    /// Appenders in the group-commit case.
    pub group_threads: usize,
    /// Records per batch, or `None` for about 16 KiB of values per batch.
    pub batch_records: Option<usize>,
    /// Size of the read/reopen log.
    pub log_bytes: u64,
    /// Segment size of the read/reopen log.
    pub segment_bytes: u64,
    /// How much the killed child appends before the kill: three quarters of a checkpoint
    /// interval, so recovery has nearly the most it can ever have to scan.
    pub kill_after_bytes: u64,
    /// Each read measurement is the best of this many passes.
    pub read_passes: usize,
}

impl Config {
    /// Applies the defaults (full or quick) and rejects values that cannot work, naming the flag.
    pub fn from_args(args: BenchArgs) -> Result<Config> {
        let quick = args.quick;
        let seconds = args.seconds.unwrap_or(if quick { 0.25 } else { 2.0 });
        let case_mib = args.case_mib.unwrap_or(if quick { 16 } else { 256 });
        let log_gib = args.log_gib.unwrap_or(if quick { 1.0 / 16.0 } else { 1.0 });
        let segment_mib = args.segment_mib.unwrap_or(if quick { 16 } else { 256 });
        let rounds = args.rounds.unwrap_or(if quick { 1 } else { 3 });

        if !(seconds.is_finite() && seconds > 0.0) {
            bail!("--seconds must be a positive number, got {seconds}");
        }
        if case_mib == 0 {
            bail!("--case-mib must be at least 1");
        }
        if !(log_gib.is_finite() && log_gib > 0.0 && log_gib <= 1024.0) {
            bail!("--log-gib must be in (0, 1024], got {log_gib}");
        }
        if !(1..=100).contains(&rounds) {
            bail!("--rounds must be in 1..=100, got {rounds}");
        }
        if !(1..=256).contains(&args.threads) {
            bail!("--threads must be in 1..=256, got {}", args.threads);
        }
        if let Some(count) = args.batch_records {
            check_batch_records(count)?;
        }
        let segment_bytes = segment_mib.saturating_mul(MIB);
        LogOptions {
            segment_bytes,
            ..LogOptions::default()
        }
        .validate()
        .with_context(|| format!("--segment-mib {segment_mib} is not a valid segment size"))?;

        let checkpoint_interval = LogOptions::default().checkpoint_interval_bytes;
        Ok(Config {
            parent_dir: args.dir.unwrap_or_else(default_parent_dir),
            quick,
            budget: Budget {
                max_bytes: case_mib.saturating_mul(MIB),
                max_time: Duration::from_secs_f64(seconds),
            },
            rounds,
            group_threads: args.threads,
            batch_records: args.batch_records,
            log_bytes: ((log_gib * GIB as f64) as u64).max(MIB),
            segment_bytes,
            kill_after_bytes: if quick {
                8 * MIB
            } else {
                checkpoint_interval / 4 * 3
            },
            read_passes: 3,
        })
    }
}

/// `--batch-records` must give batches the log accepts, for every record size.
fn check_batch_records(count: usize) -> Result<()> {
    let max_batch = LogOptions::default().max_batch_bytes as usize;
    let largest = RECORD_SIZES.iter().max().copied().unwrap_or(0);
    let encoded = count
        .checked_mul(largest + RECORD_HEADER_LEN)
        .and_then(|records| records.checked_add(BATCH_HEADER_LEN));
    match encoded {
        _ if count == 0 => bail!("--batch-records must be at least 1"),
        Some(size) if size <= max_batch => Ok(()),
        _ => bail!(
            "--batch-records {count}: a batch of {largest}-byte records would exceed the log's \
             max_batch_bytes ({max_batch})"
        ),
    }
}

/// `./target` when run from the workspace (it is on the real disk), else the temp directory.
fn default_parent_dir() -> PathBuf {
    let target = Path::new("target");
    if target.is_dir() {
        target.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
