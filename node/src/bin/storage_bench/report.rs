//! Everything the benchmark prints: rows as cases finish, then the summary of targets.

use std::path::Path;

use proglog_node::storage::Durability;

use crate::appends::{AppendResult, Sink};
use crate::config::{Config, GIB, MIB};
use crate::reads::ReadResult;
use crate::reopen::ReopenResult;
use crate::targets::Check;
use crate::workload::{BatchSpec, RECORD_SIZES, Throughput};

/// `tmpfs`'s `statfs` magic: on it, syncs are free and the numbers mean nothing.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// What is measured where, before the first case runs.
pub fn header(config: &Config, run_dir: &Path) {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "proglog storage benchmark{}",
        if config.quick { " (--quick)" } else { "" }
    );
    println!(
        "  dir {} ({}), {cpus} CPUs",
        run_dir.display(),
        filesystem(run_dir)
    );
    println!("  MB = 10^6 bytes, GB = 10^9; every ratio compares two cases of this same run");
}

/// The filesystem under `dir`, by `statfs` magic; warns on tmpfs.
fn filesystem(dir: &Path) -> String {
    match rustix::fs::statfs(dir) {
        Ok(stat) => {
            #[allow(clippy::unnecessary_cast)] // `f_type`'s width differs between targets.
            let magic = stat.f_type as i64;
            let name = match magic {
                0xEF53 => "ext4",
                0x5846_5342 => "xfs",
                0x9123_683E => "btrfs",
                0x794C_7630 => "overlayfs",
                TMPFS_MAGIC => "tmpfs: WARNING, not a disk, syncs cost nothing",
                _ => "other",
            };
            format!("filesystem {name}, magic {magic:#x}")
        }
        Err(err) => format!("filesystem unknown: {err}"),
    }
}

/// Heads the append table for one record size.
pub fn append_section(spec: &BatchSpec, config: &Config) {
    println!();
    println!(
        "appends of {} B records, {} per batch ({} B encoded); each case up to {} MiB or {:.2} s, \
         median of {} round{}",
        spec.record_bytes(),
        spec.count(),
        spec.unit().bytes,
        config.budget.max_bytes / MIB,
        config.budget.max_time.as_secs_f64(),
        config.rounds,
        if config.rounds == 1 { "" } else { "s" }
    );
    println!(
        "  {:<28} {:>9} {:>12} {:>8}  compared with",
        "case", "MB/s", "records/s", "spread"
    );
}

/// One measured append case.
pub fn append_row(result: &AppendResult, spec: &BatchSpec) {
    let mut note = String::new();
    if let (Some(ratio), Some(baseline)) = (result.vs_baseline, result.case.baseline()) {
        note = format!("{:.2}x {}", ratio, baseline.label());
    }
    let syncing = matches!(
        result.case.sink,
        Sink::RawWriteSync | Sink::Log(Durability::Always)
    );
    if syncing && result.syncs > 0 {
        let batches = result.throughput.records as f64 / spec.count() as f64;
        note.push_str(&format!(
            "{}{:.1} batches per fdatasync",
            if note.is_empty() { "" } else { "; " },
            batches / result.syncs as f64
        ));
    }
    let row = format!(
        "  {:<28} {:>9.1} {:>12.0} {:>7.0}%  {note}",
        result.case.label(),
        result.throughput.bytes_per_sec() / 1e6,
        result.throughput.records_per_sec(),
        result.spread * 100.0
    );
    println!("{}", row.trim_end());
}

/// How the large log was built.
pub fn built(spec: &BatchSpec, config: &Config, build: &Throughput) {
    println!();
    println!(
        "large log: {:.2} GiB of {} B records in {} MiB segments (all but the last sealed), \
         durability never, built at {:.0} MB/s",
        build.bytes as f64 / GIB as f64,
        spec.record_bytes(),
        config.segment_bytes / MIB,
        build.bytes_per_sec() / 1e6
    );
}

/// One timed `Log::open`.
pub fn reopen_row(when: &str, reopen: &ReopenResult) {
    println!(
        "  reopen {when:<26} {:>8.1} ms  (recovery report: {:.1} ms, scanned {:.1} MiB, {} segments)",
        reopen.wall.as_secs_f64() * 1e3,
        reopen.reported.as_secs_f64() * 1e3,
        reopen.scanned_bytes as f64 / MIB as f64,
        reopen.segments,
    );
    if let Some(torn) = &reopen.torn_tail {
        println!("    torn write cut off the end {torn}");
    }
}

/// The read measurements.
pub fn read_rows(reads: &ReadResult, passes: usize) {
    println!(
        "  read, Log::read 1 MiB at a time {:>6.2} GB/s {:>12.0} records/s  {:.2}x pread",
        reads.log.bytes_per_sec() / 1e9,
        reads.log.records_per_sec(),
        reads.log.ratio_to(&reads.raw)
    );
    println!(
        "  read, pread 1 MiB at a time     {:>6.2} GB/s   (best of {passes} passes each, from the page cache)",
        reads.raw.bytes_per_sec() / 1e9,
    );
}

/// The summary: every ratio, then every target with PASS or MISS.
pub fn summary(appends: &[AppendResult], reads: &ReadResult, checks: &[Check]) {
    println!();
    println!("summary: the log as a ratio of plain file I/O at the same batch size (medians)");
    for record_bytes in RECORD_SIZES {
        let ratios: Vec<String> = appends
            .iter()
            .filter(|r| r.record_bytes == record_bytes)
            .filter_map(|r| {
                let (ratio, baseline) = (r.vs_baseline?, r.case.baseline()?);
                Some(format!(
                    "{} {ratio:.2}x {}",
                    r.case.label(),
                    baseline.label()
                ))
            })
            .collect();
        println!("  {record_bytes:>4} B records: {}", ratios.join(" | "));
    }
    println!(
        "  reads: Log::read {:.2} GB/s, {:.2}x pread",
        reads.log.bytes_per_sec() / 1e9,
        reads.log.ratio_to(&reads.raw)
    );
    println!("targets");
    for check in checks {
        println!(
            "  {}  {:<48} {:>12}  (target {})",
            if check.pass { "PASS" } else { "MISS" },
            check.what,
            check.measured,
            check.target
        );
    }
}
