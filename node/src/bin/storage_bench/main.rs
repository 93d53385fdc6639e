//! # proglog-storage-bench
//!
//! Measures proglog's storage engine ([`proglog_node::storage::Log`]) against plain file I/O on
//! the same disk, in the same run, and prints each result as a ratio of its baseline, then
//! PASS/MISS against the storage done-criteria. Absolute numbers drift between machines and
//! runs; the ratios are what to read.
//!
//! ```text
//! cargo run --release -p proglog-node --bin proglog-storage-bench            # about a minute
//! cargo run --release -p proglog-node --bin proglog-storage-bench -- --quick # CI smoke run
//! ```
//!
//! ## What it measures
//!
//! - **Appends** of 100 B and 1 KiB records in batches of about 16 KiB (`--batch-records`), with
//!   `Log::append` under each durability policy, and the same encoded batch bytes written by
//!   plain `write` to a file preallocated with `fallocate` in the same directory (the log
//!   preallocates its segments the same way), with and without an `fdatasync` per batch. Reported
//!   as MB/s and records/s; `never` and `interval` as a ratio of raw `write`, `always` of raw
//!   `write` + `fdatasync`. Each case stops after `--case-mib` or `--seconds`, whichever is first.
//! - **Group commit**: `always` with `--threads` appenders sharing one log, against
//!   single-threaded `write` + `fdatasync` of the same batch; also how many batches each
//!   `fdatasync` covered.
//! - **Reads**: a log of `--log-gib` (1 KiB records, `--segment-mib` segments, so nearly all of
//!   it is sealed) read whole with `Log::read` 1 MiB at a time, every record's value touched,
//!   against `pread` of the same files 1 MiB at a time. Both from the page cache (the log was
//!   just written); best of three passes.
//! - **Reopen**: `Log::open` of that log after `close()`, and after a child process appending
//!   to it was SIGKILLed mid-append, with the log's recovery report (bytes scanned, duration).
//!
//! ## Reading the numbers
//!
//! Raw `write` runs at page-cache (memcpy) speed as long as the dirty-page limits are not
//! reached. The log also checkpoints its index every 64 MiB by default, syncing the data it
//! covers, even under `never`; that happens on the log's background thread, so it costs the
//! appender only the competition for the disk and the second core. `interval` syncs once a
//! second, so it looks like `never` when a case lasts under a second. Timing uses
//! `std::time::Instant` only; nothing here asserts a timing (tests never do).
//!
//! ## Layout
//!
//! - `config`: flags and the validated [`config::Config`] they map onto.
//! - `workload`: the batches written and the one driver that runs and times every case.
//! - `appends`, `reads`, `reopen`: the cases (`reopen` also holds the child's kill-target mode).
//! - `targets`: the done-criteria; `report`: all printing.

mod appends;
mod config;
mod reads;
mod reopen;
mod report;
mod targets;
mod workload;

use anyhow::{Context, Result};
use clap::Parser;

use crate::config::{Cli, Config, Mode};
use crate::workload::BatchSpec;

/// Value size of the records in the large log (reads and reopen).
const LARGE_LOG_RECORD_BYTES: usize = 1024;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::AppendUntilKilled(args)) => reopen::append_until_killed(&args),
        None => run(&Config::from_args(cli.bench)?),
    }
}

/// The whole benchmark, in a temporary directory removed at the end.
fn run(config: &Config) -> Result<()> {
    std::fs::create_dir_all(&config.parent_dir)
        .with_context(|| format!("create {}", config.parent_dir.display()))?;
    let run_dir = tempfile::Builder::new()
        .prefix("proglog-storage-bench-")
        .tempdir_in(&config.parent_dir)
        .with_context(|| format!("create a directory in {}", config.parent_dir.display()))?;
    report::header(config, run_dir.path());

    let appends = appends::run_all(config, run_dir.path())?;

    let spec = BatchSpec::new(LARGE_LOG_RECORD_BYTES, config.batch_records)?;
    let log_dir = run_dir.path().join("log");
    let options = reopen::log_options(config.segment_bytes);
    let build = reopen::build(&log_dir, &options, &spec, config.log_bytes)?;
    report::built(&spec, config, &build);
    let (log, clean) = reopen::open_timed(&log_dir, &options)?;
    report::reopen_row("after a clean shutdown", &clean);
    let reads = reads::measure(&log, config.read_passes, spec.record_bytes())?;
    report::read_rows(&reads, config.read_passes);
    log.close()?;
    let killed = reopen::after_kill(&log_dir, &options, &spec, config.kill_after_bytes)?;
    report::reopen_row("after SIGKILL mid-append", &killed);

    let checks = targets::evaluate(&appends, &reads, &clean, &killed);
    report::summary(&appends, &reads, &checks);
    Ok(())
}
