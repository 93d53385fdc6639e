//! The done-criteria, checked against the run's measurements.

use std::time::Duration;

use proglog_node::storage::Durability;

use crate::appends::{AppendResult, Sink};
use crate::reads::ReadResult;
use crate::reopen::ReopenResult;

/// `never` appends of 1 KiB records, as a fraction of raw `write`.
const NEVER_VS_WRITE: f64 = 0.80;
/// Single-threaded `always` appends of 1 KiB records, as a fraction of raw `write`+`fdatasync`.
const ALWAYS_VS_FDATASYNC: f64 = 0.50;
/// Reads through `Log::read`, bytes per second.
const READ_BYTES_PER_SEC: f64 = 1e9;
/// Opening the large log after `close()`.
const CLEAN_REOPEN: Duration = Duration::from_millis(100);
/// Opening the large log after a SIGKILL.
const KILLED_REOPEN: Duration = Duration::from_secs(1);
/// The append targets are about records of this size.
const TARGET_RECORD_BYTES: usize = 1024;

/// One criterion and how the run fared.
#[derive(Debug, Clone)]
pub struct Check {
    /// What is measured.
    pub what: String,
    /// The measured value, formatted.
    pub measured: String,
    /// The target, formatted.
    pub target: String,
    /// Whether the target was met.
    pub pass: bool,
}

/// Checks every criterion. A measurement that is missing counts as a miss.
pub fn evaluate(
    appends: &[AppendResult],
    reads: &ReadResult,
    clean: &ReopenResult,
    killed: &ReopenResult,
) -> Vec<Check> {
    vec![
        ratio_check(appends, Durability::Never, "raw write", NEVER_VS_WRITE),
        ratio_check(
            appends,
            Durability::Always,
            "raw write+fdatasync",
            ALWAYS_VS_FDATASYNC,
        ),
        Check {
            what: "Log::read over sealed segments (page cache)".into(),
            measured: format!("{:.2} GB/s", reads.log.bytes_per_sec() / 1e9),
            target: format!(">= {:.0} GB/s", READ_BYTES_PER_SEC / 1e9),
            pass: reads.log.bytes_per_sec() >= READ_BYTES_PER_SEC,
        },
        reopen_check("after a clean shutdown", clean, CLEAN_REOPEN),
        reopen_check("after SIGKILL", killed, KILLED_REOPEN),
    ]
}

/// Single-threaded 1 KiB appends under `durability` against their baseline.
fn ratio_check(
    appends: &[AppendResult],
    durability: Durability,
    baseline: &str,
    target: f64,
) -> Check {
    let ratio = appends
        .iter()
        .find(|r| {
            r.record_bytes == TARGET_RECORD_BYTES
                && r.case.sink == Sink::Log(durability)
                && r.case.threads == 1
        })
        .and_then(|r| r.vs_baseline);
    Check {
        what: format!("1 KiB appends, {durability}, vs {baseline}"),
        measured: ratio.map_or_else(|| "not measured".into(), |r| format!("{:.0}%", r * 100.0)),
        target: format!(">= {:.0}%", target * 100.0),
        pass: ratio.is_some_and(|r| r >= target),
    }
}

/// Wall time of one reopen of the large log.
fn reopen_check(when: &str, reopen: &ReopenResult, limit: Duration) -> Check {
    Check {
        what: format!(
            "reopen a {:.2} GiB log {when}",
            reopen.log_bytes as f64 / (1u64 << 30) as f64
        ),
        measured: format!("{:.1} ms", reopen.wall.as_secs_f64() * 1e3),
        target: format!("< {} ms", limit.as_millis()),
        pass: reopen.wall < limit,
    }
}
