//! `LogOptions`: every tunable of the segmented log, with documented defaults and `validate()`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::batch::{BATCH_HEADER_LEN, RECORD_HEADER_LEN};
use super::error::{Result, StorageError};

/// When appended data is made durable with `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every append returns only after its data is on stable storage. Concurrent appends share
    /// one `fdatasync` (group commit), so throughput grows with concurrency and batch size.
    /// The default, and the only policy under which a single node loses nothing on power loss.
    #[default]
    Always,
    /// A background thread syncs every `flush_interval`; a crash of the machine loses at most
    /// that much. A crash of the process alone loses nothing (the page cache survives it).
    Interval,
    /// The OS decides when to write back; data is synced only at segment roll, `flush()` and
    /// close. For replicas that rely on other replicas for durability, and for benchmarks.
    Never,
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Durability::Always),
            "interval" => Ok(Durability::Interval),
            "never" => Ok(Durability::Never),
            other => Err(format!(
                "unknown durability `{other}`: expected one of always, interval, never"
            )),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Always => "always",
            Durability::Interval => "interval",
            Durability::Never => "never",
        })
    }
}

/// Configuration of one segmented log.
///
/// Defaults suit a production node; tests shrink `segment_bytes` to exercise rolling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// A new segment is started when the active one would grow past this many bytes.
    /// Segment files are preallocated to this size. Default 1 GiB; 4 KiB to 2 GiB. A segment
    /// holds at least one batch, as Kafka's do: a batch larger than this goes alone into a
    /// segment of its own, so it may be smaller than `max_batch_bytes`.
    pub segment_bytes: u64,
    /// A new segment is started when the active one is older than this (so retention by age can
    /// delete whole segments). Default 7 days; `None` rolls by size only.
    pub segment_max_age: Option<Duration>,
    /// Retention by size: the oldest sealed segments are deleted while the log is larger than
    /// this. Default `None` (keep everything).
    pub retention_bytes: Option<u64>,
    /// Retention by age: sealed segments whose newest record is older than this are deleted.
    /// Default `None` (keep everything).
    pub retention_age: Option<Duration>,
    /// When appends are synced to disk. Default `Always`.
    pub durability: Durability,
    /// How often the background thread syncs under `Durability::Interval`. Default 1 s.
    pub flush_interval: Duration,
    /// Largest record (key plus value) accepted. Default 1 MiB.
    pub max_record_bytes: u32,
    /// Largest encoded batch accepted, and the largest a reader trusts on disk. Default 8 MiB.
    pub max_batch_bytes: u32,
    /// One index entry is written per this many bytes of batches (a sparse index, as Kafka's).
    /// Smaller values make reads from arbitrary offsets cheaper and the index larger. Default 4 KiB.
    pub index_interval_bytes: u32,
    /// The active segment's index is checkpointed (after an fsync of the data it covers) every
    /// this many appended bytes, bounding the work of recovery after a crash. Default 64 MiB.
    pub checkpoint_interval_bytes: u64,
    /// Preallocate segment files with `fallocate` so appends with fdatasync need not sync file
    /// size changes (about 10x faster on these machines). Default true.
    pub preallocate: bool,
}

/// 1 KiB.
const KIB: u64 = 1024;
/// 1 MiB.
const MIB: u64 = 1024 * KIB;
/// 1 GiB.
const GIB: u64 = 1024 * MIB;

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: GIB,
            segment_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            retention_age: None,
            durability: Durability::Always,
            flush_interval: Duration::from_secs(1),
            max_record_bytes: MIB as u32,
            max_batch_bytes: 8 * MIB as u32,
            index_interval_bytes: 4 * KIB as u32,
            checkpoint_interval_bytes: 64 * MIB,
            preallocate: true,
        }
    }
}

impl LogOptions {
    /// Checks every field, naming the first that cannot work and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key, reason: String| Err(StorageError::InvalidOption { key, reason });
        if !(4 * KIB..=2 * GIB).contains(&self.segment_bytes) {
            return invalid(
                "segment_bytes",
                format!(
                    "{} is outside 4096..=2147483648 (4 KiB to 2 GiB)",
                    self.segment_bytes
                ),
            );
        }
        let min_batch = (BATCH_HEADER_LEN + RECORD_HEADER_LEN) as u32;
        if !(min_batch..=GIB as u32).contains(&self.max_batch_bytes) {
            return invalid(
                "max_batch_bytes",
                format!(
                    "{} is outside {min_batch}..=1073741824",
                    self.max_batch_bytes
                ),
            );
        }
        let max_record = self.max_batch_bytes - min_batch;
        if self.max_record_bytes == 0 || self.max_record_bytes > max_record {
            return invalid(
                "max_record_bytes",
                format!(
                    "{} is outside 1..={max_record} (a record and its batch's header must fit \
                     in the largest batch, {} bytes)",
                    self.max_record_bytes, self.max_batch_bytes
                ),
            );
        }
        if self.index_interval_bytes == 0 {
            return invalid("index_interval_bytes", "must be at least 1".into());
        }
        if self.checkpoint_interval_bytes == 0 {
            return invalid("checkpoint_interval_bytes", "must be at least 1".into());
        }
        if self.durability == Durability::Interval && self.flush_interval.is_zero() {
            return invalid(
                "flush_interval",
                "is 0, which would sync nothing: give a period of at least 1 ms with \
                 durability `interval`"
                    .into(),
            );
        }
        for (key, value) in [
            ("segment_max_age", self.segment_max_age),
            ("retention_age", self.retention_age),
        ] {
            if value.is_some_and(|age| age.is_zero()) {
                return invalid(
                    key,
                    "is 0, which would delete or roll every segment at once: give a positive \
                     age, or leave it unset to keep segments regardless of age"
                        .into(),
                );
            }
        }
        if self.retention_bytes == Some(0) {
            return invalid(
                "retention_bytes",
                "is 0, which would delete every sealed segment at once: give a positive size, \
                 or leave it unset to keep the log whatever its size"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        LogOptions::default().validate().unwrap();
    }

    #[test]
    fn segments_may_be_smaller_than_a_batch() {
        LogOptions {
            segment_bytes: 4096,
            ..Default::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn each_invalid_field_is_named() {
        let cases: Vec<(&str, LogOptions)> = vec![
            (
                "segment_bytes",
                LogOptions {
                    segment_bytes: 100,
                    ..Default::default()
                },
            ),
            (
                "max_batch_bytes",
                LogOptions {
                    max_batch_bytes: 10,
                    ..Default::default()
                },
            ),
            (
                "max_record_bytes",
                LogOptions {
                    max_record_bytes: 0,
                    ..Default::default()
                },
            ),
            (
                "index_interval_bytes",
                LogOptions {
                    index_interval_bytes: 0,
                    ..Default::default()
                },
            ),
            (
                "flush_interval",
                LogOptions {
                    durability: Durability::Interval,
                    flush_interval: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "retention_bytes",
                LogOptions {
                    retention_bytes: Some(0),
                    ..Default::default()
                },
            ),
            (
                "retention_age",
                LogOptions {
                    retention_age: Some(Duration::ZERO),
                    ..Default::default()
                },
            ),
        ];
        for (key, options) in cases {
            match options.validate() {
                Err(StorageError::InvalidOption { key: found, .. }) => assert_eq!(found, key),
                other => panic!("{key}: expected InvalidOption, got {other:?}"),
            }
        }
    }

    #[test]
    fn durability_parses_and_prints() {
        for d in [Durability::Always, Durability::Interval, Durability::Never] {
            assert_eq!(d.to_string().parse::<Durability>().unwrap(), d);
        }
        assert!(
            "sometimes"
                .parse::<Durability>()
                .unwrap_err()
                .contains("always, interval, never")
        );
    }
}
