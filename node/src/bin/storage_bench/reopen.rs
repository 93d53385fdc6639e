//! The large log behind the read and reopen cases: building it, and timing `Log::open` after a
//! clean shutdown (`Log::close`) and after the process appending to it was SIGKILLed.
//!
//! The kill is real: this binary runs itself in the hidden `append-until-killed` mode, which
//! reopens the log and appends until it has written `kill_after_bytes`, reports the end offset
//! it reached on stdout, and keeps appending; the parent then sends SIGKILL
//! (`std::process::Child::kill`), so the kill lands in the middle of the append stream, with the
//! unsynced tail in the page cache and the index checkpoint behind, as after a crash of the node.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proglog_node::storage::{Durability, Log, LogOptions};

use crate::config::KillTargetArgs;
use crate::workload::{BatchSpec, Budget, Throughput, drive};

/// `SIGKILL`, what `Child::kill` sends on Unix.
const SIGKILL: i32 = 9;
/// The build of the large log is bounded by bytes only.
const NO_TIME_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// What one `Log::open` took and found.
#[derive(Debug, Clone)]
pub struct ReopenResult {
    /// Wall time of `Log::open`, by the caller's `Instant`.
    pub wall: Duration,
    /// `RecoveryReport::duration`: the log's own measure of the same.
    pub reported: Duration,
    /// `RecoveryReport::scanned_bytes`: data read to recover, beyond the checkpoints.
    pub scanned_bytes: u64,
    /// Segments opened.
    pub segments: usize,
    /// A torn write cut off the end: where, and why it was not a valid batch.
    pub torn_tail: Option<String>,
    /// Size of the log opened.
    pub log_bytes: u64,
}

/// The options of the large log: default but for the segment size, and `never`, so building it
/// is quick; recovery's work does not depend on the policy, only on what the checkpoints cover.
pub fn log_options(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        durability: Durability::Never,
        ..LogOptions::default()
    }
}

/// Creates a log of about `total_bytes` in `dir` and closes it cleanly.
pub fn build(
    dir: &Path,
    options: &LogOptions,
    spec: &BatchSpec,
    total_bytes: u64,
) -> Result<Throughput> {
    let log = Log::open(dir, options.clone())?;
    let records = spec.records();
    let budget = Budget {
        max_bytes: total_bytes,
        max_time: NO_TIME_LIMIT,
    };
    let built = drive(1, &budget, spec.unit(), || {
        log.append(0, &records)?;
        Ok(())
    })?;
    log.close()?;
    Ok(built)
}

/// Opens the log in `dir` and times it; returns the open log.
pub fn open_timed(dir: &Path, options: &LogOptions) -> Result<(Log, ReopenResult)> {
    let started = Instant::now();
    let log = Log::open(dir, options.clone())?;
    let wall = started.elapsed();
    let report = log.recovery_report();
    let result = ReopenResult {
        wall,
        reported: report.duration,
        scanned_bytes: report.scanned_bytes,
        segments: report.segments,
        torn_tail: report
            .torn_tail
            .as_ref()
            .map(|torn| format!("at byte {}: {}", torn.position, torn.reason)),
        log_bytes: log.size_bytes(),
    };
    Ok((log, result))
}

/// Appends to the closed log in `dir` from a child process, SIGKILLs it mid-append, then times
/// the reopen and checks that every record the child had appended before it reported survived.
pub fn after_kill(
    dir: &Path,
    options: &LogOptions,
    spec: &BatchSpec,
    kill_after_bytes: u64,
) -> Result<ReopenResult> {
    let exe = std::env::current_exe().context("find this benchmark's executable")?;
    let child = Command::new(exe)
        .arg("append-until-killed")
        .arg("--dir")
        .arg(dir)
        .args(["--segment-bytes", &options.segment_bytes.to_string()])
        .args(["--record-bytes", &spec.record_bytes().to_string()])
        .args(["--batch-records", &spec.count().to_string()])
        .args(["--ready-after-bytes", &kill_after_bytes.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the child that is to be killed")?;
    let mut child = KillOnDrop(child);
    let appended_end = wait_until_ready(&mut child.0)?;
    child.0.kill().context("SIGKILL the child")?;
    let status = child.0.wait().context("reap the killed child")?;
    if status.signal() != Some(SIGKILL) {
        bail!("the child ended with {status} before it was killed");
    }

    let (log, result) = open_timed(dir, options)?;
    if log.end_offset() < appended_end {
        bail!(
            "storage bug: after the kill the log ends at offset {}, but the child had appended up \
             to {appended_end} (a process kill must lose nothing that was written)",
            log.end_offset()
        );
    }
    log.close()?;
    Ok(result)
}

/// Reads the child's `ready <end offset>` line.
fn wait_until_ready(child: &mut Child) -> Result<u64> {
    let stdout = child
        .stdout
        .take()
        .context("the child's stdout is not piped")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("read the child's ready line")?;
    line.strip_prefix("ready ")
        .and_then(|offset| offset.trim().parse().ok())
        .with_context(|| format!("the child did not report ready (it printed {line:?})"))
}

/// Kills and reaps the child if the benchmark fails before it does so itself.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Both fail harmlessly when the child is already reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's side: append, report, keep appending until killed. Never closes the log.
pub fn append_until_killed(args: &KillTargetArgs) -> Result<()> {
    let log = Log::open(&args.dir, log_options(args.segment_bytes))?;
    let spec = BatchSpec::new(args.record_bytes, Some(args.batch_records))?;
    let records = spec.records();
    let mut stdout = std::io::stdout();
    let mut appended = 0u64;
    let mut reported = false;
    // Bounded, in case the parent is gone and nobody will kill this process.
    while appended < args.ready_after_bytes.saturating_mul(2) {
        log.append(0, &records)?;
        appended += spec.unit().bytes;
        if !reported && appended >= args.ready_after_bytes {
            writeln!(stdout, "ready {}", log.end_offset())?;
            stdout.flush()?;
            reported = true;
        }
    }
    // Not killed yet: wait for the kill, or for stdin to close when the parent exits.
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    // Dropped without `close()`: no final sync or checkpoint, as after a crash.
    drop(log);
    Ok(())
}
