//! The contract between `proglog-crash-appender` and `tests/crash.rs`.
//!
//! A record's value starts with its identity (`run:writer:seq:`) followed by filler derived only
//! from that identity, so the checker can verify the content of any record it reads back without
//! knowing where it should be. An acknowledgement line names the offsets an append got and the
//! identity of its first record; the rest of the batch holds the same writer's next sequence
//! numbers, one per offset.

use std::fmt;
use std::str::FromStr;

use proglog_node::storage::{Durability, LogOptions};

/// The writer id the checker uses for its own append after each recovery, so every record in the
/// log, including those, follows this format.
pub const PROBE_WRITER: u32 = u32::MAX;

/// Payload budget of one appended batch, well under `max_batch_bytes` of [`log_options`] so the
/// appender never hits `BatchTooLarge`.
pub const BATCH_PAYLOAD_BUDGET: usize = 12 * 1024;

/// Most records the appender puts in one batch.
pub const MAX_RECORDS_PER_BATCH: usize = 8;

/// The options both the appender and the checker open the log with: durable acknowledgements,
/// and segments and checkpoint intervals small enough that every run rolls segments, seals
/// indexes and checkpoints the active one while it is being killed.
pub fn log_options() -> LogOptions {
    LogOptions {
        durability: Durability::Always,
        segment_bytes: 64 * 1024,
        checkpoint_interval_bytes: 16 * 1024,
        max_batch_bytes: 16 * 1024,
        max_record_bytes: 15 * 1024,
        index_interval_bytes: 1024,
        ..LogOptions::default()
    }
}

/// Who wrote a record: one appender process (`run`), one of its threads (`writer`), and that
/// thread's record count before it (`seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    /// The appender process; also the leader epoch its batches carry.
    pub run: u64,
    /// The appending thread, or [`PROBE_WRITER`].
    pub writer: u32,
    /// Records this writer appended before this one in this run.
    pub seq: u64,
}

/// A value or acknowledgement line that does not follow the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The value does not start with `run:writer:seq:`.
    #[error("value does not start with `run:writer:seq:` ({reason}); it starts with {prefix:?}")]
    MalformedValue {
        /// The first bytes of the value, lossily decoded.
        prefix: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The identity parsed but the filler after it is not the one derived from it.
    #[error(
        "record {id}: filler differs from the expected one (length {found_len}, expected \
         {expected_len}; first differing byte at {first_difference:?})"
    )]
    FillerMismatch {
        /// The identity the value claims.
        id: RecordId,
        /// Filler bytes expected for that identity.
        expected_len: usize,
        /// Filler bytes found.
        found_len: usize,
        /// Index of the first differing filler byte, if the common part differs.
        first_difference: Option<usize>,
    },
    /// A line on the appender's stdout is not an acknowledgement.
    #[error("malformed acknowledgement line {line:?}: {reason}")]
    MalformedAck {
        /// The line.
        line: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.run, self.writer, self.seq)
    }
}

impl FromStr for RecordId {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let (Some(run), Some(writer), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("identity is not three `:`-separated numbers");
        };
        Ok(RecordId {
            run: run.parse().map_err(|_| "run is not a number")?,
            writer: writer.parse().map_err(|_| "writer is not a number")?,
            seq: seq.parse().map_err(|_| "seq is not a number")?,
        })
    }
}

impl RecordId {
    /// The identity `n` records later from the same writer.
    pub fn plus(self, n: u64) -> RecordId {
        RecordId {
            seq: self.seq + n,
            ..self
        }
    }

    /// The record's value: its identity, then filler of varying length derived from it.
    pub fn value(self) -> Vec<u8> {
        let mut value = format!("{self}:").into_bytes();
        value.extend(self.filler());
        value
    }

    /// Parses a value and checks that its filler is the one its identity implies.
    pub fn parse_value(value: &[u8]) -> Result<RecordId, ProtocolError> {
        let malformed = |reason| ProtocolError::MalformedValue {
            prefix: String::from_utf8_lossy(&value[..value.len().min(40)]).into_owned(),
            reason,
        };
        let mut colons = value
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b':')
            .map(|(i, _)| i);
        let Some(end) = colons.nth(2) else {
            return Err(malformed("fewer than three `:`"));
        };
        let identity = std::str::from_utf8(&value[..end]).map_err(|_| malformed("not UTF-8"))?;
        let id: RecordId = identity.parse().map_err(malformed)?;
        let found = &value[end + 1..];
        let expected = id.filler();
        if found != expected.as_slice() {
            return Err(ProtocolError::FillerMismatch {
                id,
                expected_len: expected.len(),
                found_len: found.len(),
                first_difference: found.iter().zip(&expected).position(|(a, b)| a != b),
            });
        }
        Ok(id)
    }

    /// Pseudo-random bits from the identity alone (splitmix64 over its fields).
    fn mix(self) -> u64 {
        let mut h = splitmix64(self.run ^ 0x5EED_C0FF_EE00_0001);
        h = splitmix64(h ^ u64::from(self.writer));
        splitmix64(h ^ self.seq)
    }

    /// Mostly short values of varying length, with a rare large one that spans several index
    /// intervals.
    fn filler_len(self) -> usize {
        let h = self.mix();
        if h.is_multiple_of(41) {
            3000 + (h >> 8) as usize % 5000
        } else {
            (h >> 8) as usize % 700
        }
    }

    fn filler(self) -> Vec<u8> {
        let len = self.filler_len();
        let mut state = self.mix();
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state = splitmix64(state);
            out.extend_from_slice(&state.to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// How many records the append starting at `first` holds: 1 to [`MAX_RECORDS_PER_BATCH`], fewer
/// when their values would exceed [`BATCH_PAYLOAD_BUDGET`]. About a third of appends are single
/// records.
pub fn batch_len(first: RecordId) -> usize {
    let h = splitmix64(first.mix());
    let wanted = if h.is_multiple_of(3) {
        1
    } else {
        2 + (h >> 8) as usize % (MAX_RECORDS_PER_BATCH - 1)
    };
    let mut total = 0;
    let mut n = 0;
    while n < wanted {
        let len = first.plus(n as u64).value().len();
        if n > 0 && total + len > BATCH_PAYLOAD_BUDGET {
            break;
        }
        total += len;
        n += 1;
    }
    n
}

/// One line of the appender's stdout: an append returned (under `Durability::Always`, its
/// records are on stable storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// Identity of its first record; the record at `base_offset + i` is `first.plus(i)`.
    pub first: RecordId,
}

impl Ack {
    /// Each acknowledged offset with the identity of the record that must be there.
    pub fn records(&self) -> impl Iterator<Item = (u64, RecordId)> + '_ {
        (self.base_offset..=self.last_offset)
            .map(|offset| (offset, self.first.plus(offset - self.base_offset)))
    }
}

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ack {} {} {}",
            self.base_offset, self.last_offset, self.first
        )
    }
}

impl FromStr for Ack {
    type Err = ProtocolError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let malformed = |reason| ProtocolError::MalformedAck {
            line: line.to_owned(),
            reason,
        };
        let mut words = line.split(' ');
        let (Some("ack"), Some(base), Some(last), Some(first), None) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            return Err(malformed("expected `ack <base> <last> <run:writer:seq>`"));
        };
        let ack = Ack {
            base_offset: base
                .parse()
                .map_err(|_| malformed("base offset is not a number"))?,
            last_offset: last
                .parse()
                .map_err(|_| malformed("last offset is not a number"))?,
            first: first.parse().map_err(malformed)?,
        };
        if ack.last_offset < ack.base_offset {
            return Err(malformed("last offset is before the base offset"));
        }
        Ok(ack)
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_damage_is_caught() {
        for seq in 0..500 {
            let id = RecordId {
                run: 3,
                writer: 2,
                seq,
            };
            let mut value = id.value();
            assert_eq!(RecordId::parse_value(&value), Ok(id));
            let last = value.len() - 1;
            value[last] ^= 1;
            assert!(RecordId::parse_value(&value).is_err(), "{id}");
            value.pop();
            assert!(RecordId::parse_value(&value).is_err(), "{id}");
        }
    }

    #[test]
    fn batches_vary_and_fit_the_budget() {
        let lens: Vec<usize> = (0..300)
            .map(|seq| {
                batch_len(RecordId {
                    run: 1,
                    writer: 0,
                    seq,
                })
            })
            .collect();
        assert!(lens.contains(&1));
        assert!(lens.iter().any(|&n| n >= 4));
        for seq in 0..2000 {
            let first = RecordId {
                run: 7,
                writer: 1,
                seq,
            };
            let n = batch_len(first);
            let payload: usize = (0..n as u64).map(|i| first.plus(i).value().len()).sum();
            assert!((1..=MAX_RECORDS_PER_BATCH).contains(&n));
            assert!(n == 1 || payload <= BATCH_PAYLOAD_BUDGET);
        }
    }

    #[test]
    fn acks_round_trip() {
        let ack = Ack {
            base_offset: 10,
            last_offset: 13,
            first: RecordId {
                run: 2,
                writer: 3,
                seq: 40,
            },
        };
        assert_eq!(ack.to_string().parse::<Ack>(), Ok(ack));
        assert!("ack 1 0 1:1:1".parse::<Ack>().is_err());
        assert!("ack 1 2 1:1".parse::<Ack>().is_err());
        assert!("nack 1 2 1:1:1".parse::<Ack>().is_err());
    }
}
