//! `proglog-crash-appender`: appends self-verifying records to a log from several threads until it
//! is killed, printing one acknowledgement line per append once the append has returned (under
//! `Durability::Always`, once its records are on stable storage).
//!
//! `tests/crash.rs` runs it, SIGKILLs it at a random moment, reopens the log and checks that every
//! acknowledged record is there, at the acknowledged offset, intact. The record and line formats
//! are in `proglog_tests::crash_protocol`.
//!
//! Usage: `proglog-crash-appender <data-dir> <run> [writers]`. `run` tells this process's records
//! apart from earlier runs' in the same directory and is the leader epoch of its batches, so it
//! must grow from run to run; `writers` (default 4) threads share one `Log`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};

use anyhow::{Context, bail, ensure};
use proglog_node::storage::{Log, Record, now_ms};
use proglog_tests::crash_protocol::{Ack, PROBE_WRITER, RecordId, batch_len, log_options};

struct Args {
    dir: PathBuf,
    run: u64,
    writers: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let usage = "usage: proglog-crash-appender <data-dir> <run> [writers]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, run, writers) = match args.as_slice() {
        [dir, run] => (dir, run, None),
        [dir, run, writers] => (dir, run, Some(writers)),
        _ => bail!("{usage}"),
    };
    let run = run
        .parse()
        .with_context(|| format!("run {run:?} is not a number; {usage}"))?;
    let writers = match writers {
        Some(w) => w
            .parse()
            .with_context(|| format!("writers {w:?} is not a number; {usage}"))?,
        None => 4,
    };
    ensure!(
        (1..PROBE_WRITER).contains(&writers),
        "writers must be at least 1 and below {PROBE_WRITER}"
    );
    Ok(Args {
        dir: PathBuf::from(dir),
        run,
        writers,
    })
}

/// Appends batches from `writer` forever; returns only on an error.
fn append_forever(log: &Log, run: u64, writer: u32) -> anyhow::Result<()> {
    let mut next = RecordId {
        run,
        writer,
        seq: 0,
    };
    loop {
        let count = batch_len(next) as u64;
        let values: Vec<Vec<u8>> = (0..count).map(|i| next.plus(i).value()).collect();
        let timestamp_ms = now_ms();
        let records: Vec<Record<'_>> = values
            .iter()
            .map(|value| Record::new(value, timestamp_ms))
            .collect();
        let info = log
            .append(run, &records)
            .with_context(|| format!("append of {count} records starting with {next}"))?;
        ensure!(
            info.last_offset.checked_sub(info.base_offset) == Some(count - 1),
            "append of {count} records starting with {next} returned offsets {}..={}",
            info.base_offset,
            info.last_offset
        );
        let ack = Ack {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            first: next,
        };
        // One line per write, flushed at once: the parent may kill us right after reading it.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ack}")
            .and_then(|()| stdout.flush())
            .context("write an acknowledgement to stdout")?;
        next = next.plus(count);
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let log = Log::open(&args.dir, log_options())
        .with_context(|| format!("open the log in {}", args.dir.display()))?;
    let log = Arc::new(log);
    let (failed, failure) = mpsc::channel();
    for writer in 0..args.writers {
        let log = Arc::clone(&log);
        let failed = failed.clone();
        std::thread::Builder::new()
            .name(format!("writer-{writer}"))
            .spawn(move || {
                let err = match append_forever(&log, args.run, writer) {
                    Err(err) => err.context(format!("writer {writer}")),
                    Ok(()) => anyhow::anyhow!("writer {writer} stopped without an error"),
                };
                // The receiver lives as long as main, which is waiting on it.
                let _ = failed.send(err);
            })
            .with_context(|| format!("spawn writer thread {writer}"))?;
    }
    drop(failed);
    // The writers run until the process is killed; the first failure ends it.
    match failure.recv() {
        Ok(err) => Err(err),
        Err(mpsc::RecvError) => bail!("every writer thread ended without reporting why"),
    }
}
