//! Every acknowledged append survives `kill -9`, with real processes.
//!
//! Each iteration starts `proglog-crash-appender` on the same data directory (so later iterations
//! recover logs that were themselves recovered, or closed cleanly, before), reads its
//! acknowledgements until a random number of them arrived, SIGKILLs it, and then opens the log in
//! this process and checks it: offsets are contiguous from 0 to the end, every record's content is
//! intact, each writer's records form a gap-free prefix of what it appended, every record ever
//! acknowledged (in this or an earlier iteration) is at its acknowledged offset, the leader-epoch
//! cache matches the batches, and the log accepts a new append.
//!
//! The kill schedule comes from a seed printed at the start; `PROGLOG_CRASH_SEED=<seed>` replays
//! it (thread interleaving in the child is not replayable, so a failure may need a few runs) and
//! `PROGLOG_CRASH_ITERATIONS=<n>` runs longer.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use proglog_node::storage::{Log, Record, now_ms};
use proglog_tests::crash_protocol::{Ack, PROBE_WRITER, RecordId, log_options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const APPENDER: &str = env!("CARGO_BIN_EXE_proglog-crash-appender");
const DEFAULT_ITERATIONS: u64 = 40;
/// Upper bound of the random number of acknowledgements read before the kill. At about 3,000
/// acknowledgements a second in a debug build, an iteration takes well under a second.
const MAX_ACKS_BEFORE_KILL: usize = 600;
/// The longest one appender run (start, acknowledgements, kill, exit) may take: the test fails
/// then instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);

/// Kills and reaps the child however the test ends, so it never outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Errors mean it is already dead and reaped, which is what we want.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a killed appender printed.
struct KilledRun {
    /// Every acknowledgement it printed, including those still in the pipe at the kill.
    acks: Vec<Ack>,
    /// Acknowledgements read before the kill was sent.
    acks_before_kill: usize,
}

/// What reopening the log found.
#[derive(Default)]
struct RecoveryStats {
    records: u64,
    segments: usize,
    scanned_bytes: u64,
    torn_tail: bool,
    rebuilt_indexes: usize,
    open_ms: u128,
    /// Records of the killed run that survived without having been acknowledged: appends the
    /// kill caught between their write and their acknowledgement.
    unacknowledged_survivors: usize,
}

#[test]
fn every_acknowledged_append_survives_kill_9() {
    let seed = match std::env::var("PROGLOG_CRASH_SEED") {
        Ok(seed) => seed
            .parse()
            .unwrap_or_else(|_| panic!("PROGLOG_CRASH_SEED={seed:?} is not a u64")),
        Err(_) => rand::random(),
    };
    let iterations = match std::env::var("PROGLOG_CRASH_ITERATIONS") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("PROGLOG_CRASH_ITERATIONS={n:?} is not a number")),
        Err(_) => DEFAULT_ITERATIONS,
    };
    println!("crash test seed {seed} (replay with PROGLOG_CRASH_SEED={seed})");
    if let Err(err) = crash_iterations(seed, iterations) {
        panic!("crash test failed; replay with PROGLOG_CRASH_SEED={seed}: {err:#}");
    }
}

fn crash_iterations(seed: u64, iterations: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).context("create a data dir")?;
    // Every record ever acknowledged, by the appenders and by our own probe appends.
    let mut acked: Vec<Ack> = Vec::new();
    let mut recovered_mid_stream = 0;
    let mut killed_mid_append = 0;
    let mut torn_tails = 0;
    let mut rebuilt_indexes = 0;
    let mut last = RecoveryStats::default();
    for run in 1..=iterations {
        let kill_after = match rng.random_range(0..10) {
            // Killed while starting up, possibly while recovering the previous run's log.
            0 => 0,
            1..=3 => rng.random_range(1..=20),
            _ => rng.random_range(21..=MAX_ACKS_BEFORE_KILL),
        };
        let writers = rng.random_range(1..=6);
        let close_cleanly = rng.random_bool(0.5);
        let killed = run_and_kill(dir.path(), run, writers, kill_after).with_context(|| {
            format!("run {run}: {writers} writers, killed after {kill_after} acks")
        })?;
        acked.extend(&killed.acks);
        let check_started = Instant::now();
        let stats = check_log(dir.path(), run, &mut acked, close_cleanly).with_context(|| {
            format!(
                "run {run}: checking the log after a kill at {} acks ({} printed in all)",
                killed.acks_before_kill,
                killed.acks.len()
            )
        })?;
        println!(
            "run {run:2}: writers {writers}, killed after {:4} acks ({:4} printed, {:2} more \
             records survived); reopened {:6} records in {:3} segments in {:3} ms, scanned {:6} \
             bytes, torn tail {}, rebuilt {} indexes; checked in {:4} ms; {}",
            killed.acks_before_kill,
            killed.acks.len(),
            stats.unacknowledged_survivors,
            stats.records,
            stats.segments,
            stats.open_ms,
            stats.scanned_bytes,
            stats.torn_tail,
            stats.rebuilt_indexes,
            check_started.elapsed().as_millis(),
            if close_cleanly { "closed" } else { "dropped" },
        );
        if stats.scanned_bytes > 0 {
            recovered_mid_stream += 1;
        }
        if stats.unacknowledged_survivors > 0 {
            killed_mid_append += 1;
        }
        torn_tails += usize::from(stats.torn_tail);
        rebuilt_indexes += stats.rebuilt_indexes;
        last = stats;
    }
    println!(
        "{iterations} runs in {:.1} s: {} acknowledged appends, {} records in {} segments; \
         {killed_mid_append} kills left written but unacknowledged appends, {recovered_mid_stream} \
         recoveries scanned past a checkpoint, {torn_tails} cut a torn tail, {rebuilt_indexes} \
         indexes rebuilt",
        started.elapsed().as_secs_f64(),
        acked.len(),
        last.records,
        last.segments,
    );
    // Without these, the test could pass without ever exercising recovery.
    ensure!(
        recovered_mid_stream > 0,
        "no reopen had to scan data past a checkpoint: the kills never landed mid-stream"
    );
    ensure!(
        killed_mid_append > 0,
        "no kill caught an append between its write and its acknowledgement"
    );
    ensure!(
        last.segments > 1,
        "the log never rolled a segment: the test does not exercise sealed segments"
    );
    Ok(())
}

/// Starts the appender as run `run`, reads `kill_after` acknowledgements, SIGKILLs it and collects
/// everything it printed before it died.
fn run_and_kill(
    dir: &Path,
    run: u64,
    writers: u32,
    kill_after: usize,
) -> anyhow::Result<KilledRun> {
    let mut child = Command::new(APPENDER)
        .arg(dir)
        .arg(run.to_string())
        .arg(writers.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {APPENDER}"))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut child = KillOnDrop(child);
    let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
        bail!("the child's stdout or stderr is not piped");
    };
    let lines = read_lines(stdout)?;
    let stderr = read_to_end(stderr)?;
    let deadline = Instant::now() + DEADLINE;

    let mut acks = Vec::new();
    while acks.len() < kill_after {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => acks.push(parse_ack(line)?),
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "only {} acknowledgements within {DEADLINE:?}; the appender is stuck",
                    acks.len()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.0.wait().context("wait for the appender")?;
                bail!(
                    "the appender exited by itself ({status}) after {} acknowledgements; its \
                     stderr:\n{}",
                    acks.len(),
                    receive_before(&stderr, deadline)?
                );
            }
        }
    }
    let acks_before_kill = acks.len();
    child.0.kill().context("SIGKILL the appender")?;
    // Lines already in the pipe were printed after their appends returned: they are
    // acknowledgements too. The pipe ends when the process is gone.
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => acks.push(parse_ack(line)?),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                bail!("the appender's stdout stayed open {DEADLINE:?} after SIGKILL")
            }
        }
    }
    let status = child.0.wait().context("wait for the killed appender")?;
    let stderr = receive_before(&stderr, deadline)?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "the appender ended with {status} instead of being killed; its stderr:\n{stderr}"
    );
    Ok(KilledRun {
        acks,
        acks_before_kill,
    })
}

/// Reopens the log as after a crash and checks it against everything acknowledged so far; then
/// appends (and acknowledges) one probe record and closes or drops the log.
fn check_log(
    dir: &Path,
    run: u64,
    acked: &mut Vec<Ack>,
    close_cleanly: bool,
) -> anyhow::Result<RecoveryStats> {
    let log = Log::open(dir, log_options()).context("reopen the log")?;
    let report = log.recovery_report();
    let mut stats = RecoveryStats {
        records: log.end_offset(),
        segments: log.segment_count(),
        scanned_bytes: report.scanned_bytes,
        torn_tail: report.torn_tail.is_some(),
        rebuilt_indexes: report.rebuilt_indexes.len(),
        open_ms: report.duration.as_millis(),
        unacknowledged_survivors: 0,
    };
    ensure!(
        log.start_offset() == 0,
        "start offset is {}, but nothing was ever truncated",
        log.start_offset()
    );
    let end = log.end_offset();
    ensure!(
        log.durable_offset() == end,
        "after open, durable offset {} != end offset {end}",
        log.durable_offset()
    );
    let ids = read_all(&log, end)?;

    // Appends are serialized and the log recovers to a prefix of them, so each writer's records,
    // acknowledged or not, are its sequence numbers from 0 without a gap or repeat, and runs
    // follow one another.
    let mut next_seq: HashMap<(u64, u32), u64> = HashMap::new();
    let mut previous_run = 0;
    for (offset, id) in ids.iter().enumerate() {
        ensure!(
            id.run >= previous_run,
            "offset {offset} holds {id}, after a record of run {previous_run}"
        );
        previous_run = id.run;
        let expected = next_seq.entry((id.run, id.writer)).or_insert(0);
        ensure!(
            id.seq == *expected,
            "offset {offset} holds {id}, but that writer's next record should be seq {expected}: \
             a record is missing or repeated"
        );
        *expected += 1;
    }

    for ack in acked.iter() {
        for (offset, expected) in ack.records() {
            let found = usize::try_from(offset).ok().and_then(|i| ids.get(i));
            ensure!(
                found == Some(&expected),
                "acknowledged record {expected} ({ack}) is lost: offset {offset} holds {} (end \
                 offset {end})",
                found.map_or("nothing".to_owned(), RecordId::to_string)
            );
        }
    }

    let acknowledged_in_run: usize = acked
        .iter()
        .filter(|ack| ack.first.run == run)
        .map(|ack| ack.records().count())
        .sum();
    let survivors_in_run = ids.iter().filter(|id| id.run == run).count();
    stats.unacknowledged_survivors = survivors_in_run.saturating_sub(acknowledged_in_run);

    // The leader-epoch cache (epoch = run) must match the batches that survived.
    let latest_run = ids.last().map(|id| id.run);
    ensure!(
        log.latest_epoch() == latest_run,
        "latest epoch is {:?}, but the last record is from run {latest_run:?}",
        log.latest_epoch()
    );
    let mut run_starts: Vec<(u64, u64)> = Vec::new();
    for (offset, id) in (0u64..).zip(&ids) {
        if run_starts.last().is_none_or(|&(run, _)| run != id.run) {
            run_starts.push((id.run, offset));
        }
    }
    for (i, &(epoch, _)) in run_starts.iter().enumerate() {
        let epoch_end = run_starts.get(i + 1).map_or(end, |&(_, start)| start);
        ensure!(
            log.epoch_end_offset(epoch) == Some((epoch, epoch_end)),
            "epoch_end_offset({epoch}) is {:?}, but the records say ({epoch}, {epoch_end})",
            log.epoch_end_offset(epoch)
        );
    }

    // The recovered log takes new appends where it ends.
    let probe = RecordId {
        run,
        writer: PROBE_WRITER,
        seq: 0,
    };
    let value = probe.value();
    let info = log
        .append(run, &[Record::new(&value, now_ms())])
        .context("append to the recovered log")?;
    ensure!(
        (info.base_offset, info.last_offset) == (end, end),
        "the first append after recovery got offsets {}..={}, expected {end}",
        info.base_offset,
        info.last_offset
    );
    let read_back = log.read(end, 64 * 1024).context("read the probe record")?;
    let probe_value = read_back
        .iter()
        .flat_map(|batch| batch.records())
        .find(|record| record.offset == end)
        .map(|record| record.value);
    ensure!(
        probe_value.as_deref() == Some(value.as_slice()),
        "the probe appended at {end} reads back as {probe_value:?}"
    );
    acked.push(Ack {
        base_offset: end,
        last_offset: end,
        first: probe,
    });
    if close_cleanly {
        log.close().context("close the log")?;
    }
    Ok(stats)
}

/// Every record from offset 0 to `end`, checking that offsets are contiguous and that each value
/// is intact and matches the epoch of its batch.
fn read_all(log: &Log, end: u64) -> anyhow::Result<Vec<RecordId>> {
    let mut ids = Vec::new();
    let mut next = 0;
    while next < end {
        let batches = log
            .read(next, 1 << 20)
            .with_context(|| format!("read at offset {next}"))?;
        ensure!(
            !batches.is_empty(),
            "read at offset {next} returned nothing before the end offset {end}"
        );
        for batch in batches {
            ensure!(
                batch.base_offset() <= next,
                "read at offset {next} returned a batch starting at {}: offsets are not contiguous",
                batch.base_offset()
            );
            let from = next;
            for record in batch.records().filter(|record| record.offset >= from) {
                ensure!(
                    record.offset == next,
                    "offset {next} is missing: the next record has offset {}",
                    record.offset
                );
                let id = RecordId::parse_value(&record.value)
                    .with_context(|| format!("content of the record at offset {next}"))?;
                ensure!(
                    record.leader_epoch == id.run,
                    "record {id} at offset {next} is in a batch of epoch {}",
                    record.leader_epoch
                );
                ids.push(id);
                next += 1;
            }
            ensure!(
                next == batch.next_offset(),
                "the batch {}..={} yielded records only up to offset {next}",
                batch.base_offset(),
                batch.last_offset()
            );
        }
    }
    Ok(ids)
}

fn parse_ack(line: std::io::Result<String>) -> anyhow::Result<Ack> {
    let line = line.context("read the appender's stdout")?;
    Ok(line.parse()?)
}

/// The child's stdout, line by line, from a thread, so the test can wait with a deadline. The
/// channel closes at end of file, that is once the child is dead.
fn read_lines(stdout: ChildStdout) -> anyhow::Result<Receiver<std::io::Result<String>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("appender-stdout".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let failed = line.is_err();
                if tx.send(line).is_err() || failed {
                    break;
                }
            }
        })
        .context("spawn the stdout reader")?;
    Ok(rx)
}

/// The child's whole stderr, delivered once it closes.
fn read_to_end(mut stderr: ChildStderr) -> anyhow::Result<Receiver<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("appender-stderr".into())
        .spawn(move || {
            let mut bytes = Vec::new();
            let text = match stderr.read_to_end(&mut bytes) {
                Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(err) => format!("<reading stderr failed: {err}>"),
            };
            // The receiver is gone only if the test already failed.
            let _ = tx.send(text);
        })
        .context("spawn the stderr reader")?;
    Ok(rx)
}

fn receive_before(stderr: &Receiver<String>, deadline: Instant) -> anyhow::Result<String> {
    stderr
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .context("the appender's stderr did not close before the deadline")
}
