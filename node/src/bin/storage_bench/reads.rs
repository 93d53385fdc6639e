//! Reads from the page cache: the whole log through `Log::read`, 1 MiB at a time, touching every
//! record, against `pread` of the same segment files, 1 MiB at a time, into one reused buffer.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use proglog_node::storage::Log;

use crate::workload::{Throughput, best_of};

/// `max_bytes` of each `Log::read`, and the `pread` size of the baseline.
pub const READ_CHUNK_BYTES: usize = 1 << 20;

/// The two read measurements, each the best of several passes.
#[derive(Debug, Clone, Copy)]
pub struct ReadResult {
    /// `Log::read` over the whole log.
    pub log: Throughput,
    /// `pread` over the same files (`records` is 0: the baseline does not parse them).
    pub raw: Throughput,
}

/// Reads the whole of `log` (already in the page cache: it was just written) both ways.
pub fn measure(log: &Log, passes: usize, record_bytes: usize) -> Result<ReadResult> {
    let segment_files = segment_files(log.dir())?;
    let raw = best_of(passes, || pread_files(&segment_files, log.size_bytes()))?;
    let log = best_of(passes, || read_log(log, record_bytes))?;
    Ok(ReadResult { log, raw })
}

/// One pass of `Log::read` from the start to the end of the log. Sums every value's length so
/// no record is skipped, and checks the sum and the end reached.
fn read_log(log: &Log, record_bytes: usize) -> Result<Throughput> {
    let started = Instant::now();
    let mut offset = log.start_offset();
    let (mut bytes, mut records, mut value_bytes) = (0u64, 0u64, 0u64);
    loop {
        let batches = log.read(offset, READ_CHUNK_BYTES)?;
        let Some(last) = batches.last() else {
            break;
        };
        offset = last.next_offset();
        for batch in &batches {
            bytes += batch.as_bytes().len() as u64;
            for record in batch.records() {
                records += 1;
                value_bytes += record.value.len() as u64;
            }
        }
    }
    let elapsed = started.elapsed();
    if offset != log.end_offset() || value_bytes != records * record_bytes as u64 {
        bail!(
            "reading the log stopped at offset {offset} of {}, with {value_bytes} value bytes \
             in {records} records of {record_bytes} bytes",
            log.end_offset()
        );
    }
    Ok(Throughput {
        bytes,
        records,
        elapsed,
    })
}

/// The segment files of the log in `dir`, in offset order (their names are zero-padded).
fn segment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "log") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// One pass of `pread` over the first `total` bytes of `paths`, taken in order. Sealed segments
/// end at their data; the active one is preallocated, so `total` stops the pass at its data.
fn pread_files(paths: &[PathBuf], total: u64) -> Result<Throughput> {
    let files = paths
        .iter()
        .map(|path| File::open(path).with_context(|| format!("open {}", path.display())))
        .collect::<Result<Vec<File>>>()?;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let started = Instant::now();
    let mut bytes = 0u64;
    for file in &files {
        let mut position = 0u64;
        while bytes < total {
            let want = (total - bytes).min(READ_CHUNK_BYTES as u64) as usize;
            let read = file.read_at(&mut buf[..want], position)?;
            if read == 0 {
                break;
            }
            position += read as u64;
            bytes += read as u64;
        }
    }
    std::hint::black_box(&buf);
    Ok(Throughput {
        bytes,
        records: 0,
        elapsed: started.elapsed(),
    })
}
