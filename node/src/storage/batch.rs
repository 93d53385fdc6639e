//! The on-disk batch format: encoding, validation and record iteration.
//!
//! A batch is the unit of append, replication and checksumming. All integers are little-endian.
//!
//! ```text
//! offset  size  field
//!      0     4  crc32c            CRC32C (Castagnoli) of every byte after this field
//!      4     4  length            bytes after this field (batch size = 8 + length)
//!      8     8  base_offset       offset of the first record
//!     16     8  leader_epoch      epoch of the leader that wrote the batch
//!     24     4  record_count      records in the batch (>= 1); offsets are contiguous
//!     28     8  first_timestamp   milliseconds since the Unix epoch, of the first record
//!     36     8  max_timestamp     largest record timestamp in the batch
//!     44     2  attributes        bit 0: control batch (written by the log itself)
//!     46        records
//!
//! record:
//!      0     4  length            bytes after this field
//!      4     4  timestamp_delta   i32, milliseconds from first_timestamp
//!      8     4  record_type       u32, carried for proglog's `Record.type`
//!     12     4  key_length        i32, -1 when there is no key
//!     16        key, then value (the rest of the record)
//! ```
//!
//! The CRC covers every header field, the epoch and the timestamps, so every byte that is read
//! back is checked. A length is never trusted before it is bounded by `max_batch_bytes`.

use bytes::Bytes;

use super::error::{Result, StorageError};

/// Size of the fixed batch header.
pub const BATCH_HEADER_LEN: usize = 46;
/// Size of the fixed per-record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// The largest number of records one batch may hold.
pub const MAX_RECORDS_PER_BATCH: usize = i32::MAX as usize;

const CRC_RANGE_START: usize = 4;
const LENGTH_FIELD_END: usize = 8;
/// Attribute bit marking a control batch (leader change, voter change), never user data.
pub const ATTR_CONTROL: u16 = 1;

/// One record to append. Borrowed so appending copies each value exactly once, into the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The payload.
    pub value: &'a [u8],
    /// An optional key (proglog's clients never set one).
    pub key: Option<&'a [u8]>,
    /// Milliseconds since the Unix epoch: when the producer created it, or when it was appended.
    pub timestamp_ms: i64,
    /// An application-defined type, carried for proglog's `Record.type`.
    pub record_type: u32,
}

impl<'a> Record<'a> {
    /// A record with a value and timestamp, no key, type 0.
    pub fn new(value: &'a [u8], timestamp_ms: i64) -> Self {
        Record {
            value,
            key: None,
            timestamp_ms,
            record_type: 0,
        }
    }

    /// Bytes this record's key and value occupy; what `max_record_bytes` limits.
    pub fn payload_len(&self) -> usize {
        self.value.len() + self.key.map_or(0, <[u8]>::len)
    }

    fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN + self.payload_len()
    }
}

/// Bytes a batch of records with these payload sizes (key plus value, as
/// [`Record::payload_len`]) takes once encoded, header included.
pub fn encoded_batch_len(payload_lens: impl IntoIterator<Item = usize>) -> u64 {
    payload_lens
        .into_iter()
        .fold(BATCH_HEADER_LEN as u64, |bytes, payload| {
            bytes + (RECORD_HEADER_LEN + payload) as u64
        })
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Bytes after the length field.
    pub length: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Epoch of the leader that wrote the batch.
    pub leader_epoch: u64,
    /// Number of records.
    pub record_count: u32,
    /// Timestamp of the first record.
    pub first_timestamp: i64,
    /// Largest record timestamp.
    pub max_timestamp: i64,
    /// Attribute bits (`ATTR_CONTROL`).
    pub attributes: u16,
}

impl BatchHeader {
    /// Whole size of the batch in bytes.
    pub fn total_len(&self) -> usize {
        LENGTH_FIELD_END + self.length as usize
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// The offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    fn parse(buf: &[u8]) -> Self {
        BatchHeader {
            length: le_u32(buf, 4),
            base_offset: le_u64(buf, 8),
            leader_epoch: le_u64(buf, 16),
            record_count: le_u32(buf, 24),
            first_timestamp: le_u64(buf, 28) as i64,
            max_timestamp: le_u64(buf, 36) as i64,
            attributes: u16::from_le_bytes([buf[44], buf[45]]),
        }
    }
}

/// Why bytes are not a valid batch. Recovery uses the kind to tell a clean end (zeros), a torn
/// write and corruption apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the batch needs; `needed` is the whole batch (or header) size.
    Incomplete {
        /// Bytes needed to decide.
        needed: usize,
    },
    /// The header is all zeros: preallocated space, the logical end of a segment.
    Zeroed,
    /// The length field is impossible (too small, or above `max_batch_bytes`).
    BadLength {
        /// The length found.
        length: u32,
    },
    /// The CRC does not match the bytes.
    BadChecksum {
        /// CRC stored in the batch.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
    /// The CRC matched but the records inside are malformed (a format bug, or a CRC collision).
    BadRecords {
        /// What was malformed.
        reason: &'static str,
    },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Incomplete { needed } => {
                write!(f, "incomplete batch: {needed} bytes needed")
            }
            BatchError::Zeroed => f.write_str("zeroed header"),
            BatchError::BadLength { length } => write!(f, "impossible batch length {length}"),
            BatchError::BadChecksum { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            BatchError::BadRecords { reason } => write!(f, "malformed records: {reason}"),
        }
    }
}

fn le_u32(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn le_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Smallest possible value of the length field: a header and one empty record.
const MIN_LENGTH: usize = BATCH_HEADER_LEN - LENGTH_FIELD_END + RECORD_HEADER_LEN;

/// Reads the header fields without checking the CRC. Only for skipping over batches whose
/// contents are not served; whatever is served goes through [`validate`].
pub(crate) fn peek_header(buf: &[u8], max_batch_bytes: u32) -> Result<BatchHeader, BatchError> {
    if buf.len() < BATCH_HEADER_LEN {
        return Err(BatchError::Incomplete {
            needed: BATCH_HEADER_LEN,
        });
    }
    let header = BatchHeader::parse(buf);
    if header.length == 0 && le_u32(buf, 0) == 0 {
        return Err(BatchError::Zeroed);
    }
    if (header.length as usize) < MIN_LENGTH
        || header.total_len() > max_batch_bytes as usize
        || header.record_count == 0
    {
        return Err(BatchError::BadLength {
            length: header.length,
        });
    }
    Ok(header)
}

/// Checks that `buf` starts with a whole, intact batch no larger than `max_batch_bytes`, and
/// returns its header. `buf` may hold more bytes after the batch.
pub fn validate(buf: &[u8], max_batch_bytes: u32) -> Result<BatchHeader, BatchError> {
    if buf.len() < LENGTH_FIELD_END {
        return Err(BatchError::Incomplete {
            needed: LENGTH_FIELD_END,
        });
    }
    let stored = le_u32(buf, 0);
    let length = le_u32(buf, 4);
    if stored == 0 && length == 0 {
        return Err(BatchError::Zeroed);
    }
    let total = LENGTH_FIELD_END + length as usize;
    if (length as usize) < MIN_LENGTH || total > max_batch_bytes as usize {
        return Err(BatchError::BadLength { length });
    }
    if buf.len() < total {
        return Err(BatchError::Incomplete { needed: total });
    }
    let computed = crc32c::crc32c(&buf[CRC_RANGE_START..total]);
    if computed != stored {
        return Err(BatchError::BadChecksum { stored, computed });
    }
    let header = BatchHeader::parse(buf);
    if header.record_count == 0 {
        return Err(BatchError::BadRecords {
            reason: "zero records",
        });
    }
    if header
        .base_offset
        .checked_add(u64::from(header.record_count))
        .is_none()
    {
        return Err(BatchError::BadRecords {
            reason: "offsets overflow",
        });
    }
    let mut records = RecordIter::new(&buf[..total], header);
    for _ in 0..header.record_count {
        match records.next_raw() {
            Some(Ok(_)) => {}
            Some(Err(reason)) => return Err(BatchError::BadRecords { reason }),
            None => {
                return Err(BatchError::BadRecords {
                    reason: "fewer records than record_count",
                });
            }
        }
    }
    if records.position != total {
        return Err(BatchError::BadRecords {
            reason: "bytes left after the last record",
        });
    }
    Ok(header)
}

/// Encodes `records` as one batch into `out` (cleared first) and returns its header.
pub fn encode(
    out: &mut Vec<u8>,
    base_offset: u64,
    leader_epoch: u64,
    attributes: u16,
    records: &[Record<'_>],
    max_record_bytes: u32,
    max_batch_bytes: u32,
) -> Result<BatchHeader> {
    let Some(first) = records.first() else {
        return Err(StorageError::EmptyBatch);
    };
    if records.len() > MAX_RECORDS_PER_BATCH {
        return Err(StorageError::TooManyRecords {
            count: records.len(),
            max: MAX_RECORDS_PER_BATCH,
        });
    }
    if base_offset.checked_add(records.len() as u64).is_none() {
        return Err(StorageError::InvalidBatch {
            reason: format!(
                "offsets {base_offset} + {} records overflow the offset space",
                records.len()
            ),
        });
    }
    let first_timestamp = first.timestamp_ms;
    let mut max_timestamp = first_timestamp;
    let mut total = BATCH_HEADER_LEN;
    for record in records {
        let size = record.payload_len();
        if size > max_record_bytes as usize {
            return Err(StorageError::RecordTooLarge {
                size,
                max: max_record_bytes as usize,
            });
        }
        let delta = record.timestamp_ms.checked_sub(first_timestamp);
        if delta.and_then(|d| i32::try_from(d).ok()).is_none() {
            return Err(StorageError::TimestampSpread {
                timestamp_ms: record.timestamp_ms,
                first_timestamp_ms: first_timestamp,
            });
        }
        max_timestamp = max_timestamp.max(record.timestamp_ms);
        total += record.encoded_len();
    }
    if total > max_batch_bytes as usize {
        return Err(StorageError::BatchTooLarge {
            size: total,
            max: max_batch_bytes as usize,
        });
    }
    let header = BatchHeader {
        length: (total - LENGTH_FIELD_END) as u32,
        base_offset,
        leader_epoch,
        record_count: records.len() as u32,
        first_timestamp,
        max_timestamp,
        attributes,
    };
    out.clear();
    out.reserve(total);
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&header.length.to_le_bytes());
    out.extend_from_slice(&base_offset.to_le_bytes());
    out.extend_from_slice(&leader_epoch.to_le_bytes());
    out.extend_from_slice(&header.record_count.to_le_bytes());
    out.extend_from_slice(&first_timestamp.to_le_bytes());
    out.extend_from_slice(&max_timestamp.to_le_bytes());
    out.extend_from_slice(&attributes.to_le_bytes());
    for record in records {
        let length = (record.encoded_len() - 4) as u32;
        // Checked above to fit in an i32.
        let delta = (record.timestamp_ms - first_timestamp) as i32;
        let key_length = record.key.map_or(-1, |key| key.len() as i32);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&delta.to_le_bytes());
        out.extend_from_slice(&record.record_type.to_le_bytes());
        out.extend_from_slice(&key_length.to_le_bytes());
        if let Some(key) = record.key {
            out.extend_from_slice(key);
        }
        out.extend_from_slice(record.value);
    }
    debug_assert_eq!(out.len(), total);
    let crc = crc32c::crc32c(&out[CRC_RANGE_START..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(header)
}

/// A batch read back from disk (or received from a leader) whose checksum has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    header: BatchHeader,
    data: Bytes,
}

/// One record of a stored batch. Key and value share the batch's buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record's offset in the log.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The record's type (proglog's `Record.type`).
    pub record_type: u32,
    /// Epoch of the leader that appended it (proglog's `Record.term`).
    pub leader_epoch: u64,
    /// The key, if any.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
}

impl StoredRecord {
    /// The record as an append input, borrowing its key and value (to copy or rewrite it).
    pub fn as_record(&self) -> Record<'_> {
        Record {
            value: &self.value,
            key: self.key.as_deref(),
            timestamp_ms: self.timestamp_ms,
            record_type: self.record_type,
        }
    }
}

impl Batch {
    /// Validates `data` as exactly one batch.
    pub fn decode(data: Bytes, max_batch_bytes: u32) -> Result<Self, BatchError> {
        let header = validate(&data, max_batch_bytes)?;
        if header.total_len() != data.len() {
            return Err(BatchError::BadRecords {
                reason: "bytes after the batch",
            });
        }
        Ok(Batch { header, data })
    }

    /// Wraps bytes that `validate` already accepted with this header.
    pub(crate) fn from_validated(header: BatchHeader, data: Bytes) -> Self {
        debug_assert_eq!(header.total_len(), data.len());
        Batch { header, data }
    }

    /// The batch's header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.header.last_offset()
    }

    /// The offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.header.next_offset()
    }

    /// Epoch of the leader that wrote it.
    pub fn leader_epoch(&self) -> u64 {
        self.header.leader_epoch
    }

    /// True for batches the log writes for itself (leader change, voter change).
    pub fn is_control(&self) -> bool {
        self.header.attributes & ATTR_CONTROL != 0
    }

    /// The encoded batch, as stored on disk and sent to followers.
    pub fn as_bytes(&self) -> &Bytes {
        &self.data
    }

    /// The records, in offset order.
    pub fn records(&self) -> impl Iterator<Item = StoredRecord> + '_ {
        let mut iter = RecordIter::new(&self.data, self.header);
        std::iter::from_fn(move || {
            // The batch was validated, so every record parses.
            let raw = iter.next_raw()?.ok()?;
            Some(StoredRecord {
                offset: raw.offset,
                timestamp_ms: raw.timestamp_ms,
                record_type: raw.record_type,
                leader_epoch: self.header.leader_epoch,
                key: raw.key.map(|range| self.data.slice(range)),
                value: self.data.slice(raw.value),
            })
        })
    }
}

/// A record's fields as ranges into its batch.
struct RawRecord {
    offset: u64,
    timestamp_ms: i64,
    record_type: u32,
    key: Option<std::ops::Range<usize>>,
    value: std::ops::Range<usize>,
}

struct RecordIter<'a> {
    buf: &'a [u8],
    header: BatchHeader,
    position: usize,
    index: u32,
}

impl<'a> RecordIter<'a> {
    fn new(buf: &'a [u8], header: BatchHeader) -> Self {
        RecordIter {
            buf,
            header,
            position: BATCH_HEADER_LEN,
            index: 0,
        }
    }

    fn next_raw(&mut self) -> Option<Result<RawRecord, &'static str>> {
        if self.index == self.header.record_count {
            return None;
        }
        let at = self.position;
        if self.buf.len() < at + RECORD_HEADER_LEN {
            return Some(Err("record header past the end of the batch"));
        }
        let length = le_u32(self.buf, at) as usize;
        let end = match (at + 4).checked_add(length) {
            Some(end) if end <= self.buf.len() && length >= RECORD_HEADER_LEN - 4 => end,
            _ => return Some(Err("record length past the end of the batch")),
        };
        let delta = le_u32(self.buf, at + 4) as i32;
        let record_type = le_u32(self.buf, at + 8);
        let key_length = le_u32(self.buf, at + 12) as i32;
        let key_start = at + RECORD_HEADER_LEN;
        let (key, value_start) = match key_length {
            -1 => (None, key_start),
            n if n >= 0 && key_start + n as usize <= end => (
                Some(key_start..key_start + n as usize),
                key_start + n as usize,
            ),
            _ => return Some(Err("key length past the end of the record")),
        };
        let record = RawRecord {
            offset: self.header.base_offset + u64::from(self.index),
            timestamp_ms: self.header.first_timestamp.wrapping_add(i64::from(delta)),
            record_type,
            key,
            value: value_start..end,
        };
        self.position = end;
        self.index += 1;
        Some(Ok(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 1 << 20;

    fn encode_one(records: &[Record<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, 42, 7, 0, records, MAX, MAX).unwrap();
        out
    }

    #[test]
    fn round_trips_records_keys_types_and_timestamps() {
        let records = [
            Record {
                value: b"hello",
                key: Some(b"k"),
                timestamp_ms: 1_000,
                record_type: 3,
            },
            Record {
                value: b"",
                key: None,
                timestamp_ms: 900,
                record_type: 0,
            },
            Record {
                value: b"world",
                key: Some(b""),
                timestamp_ms: 5_000,
                record_type: 9,
            },
        ];
        let bytes = encode_one(&records);
        let batch = Batch::decode(Bytes::from(bytes), MAX).unwrap();
        assert_eq!(batch.base_offset(), 42);
        assert_eq!(batch.last_offset(), 44);
        assert_eq!(batch.leader_epoch(), 7);
        assert_eq!(batch.header().max_timestamp, 5_000);
        let decoded: Vec<_> = batch.records().collect();
        assert_eq!(decoded.len(), 3);
        for (i, (stored, original)) in decoded.iter().zip(&records).enumerate() {
            assert_eq!(stored.offset, 42 + i as u64);
            assert_eq!(&stored.value[..], original.value);
            assert_eq!(stored.key.as_deref(), original.key);
            assert_eq!(stored.timestamp_ms, original.timestamp_ms);
            assert_eq!(stored.record_type, original.record_type);
            assert_eq!(stored.leader_epoch, 7);
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode_one(&[Record::new(b"abc", 1), Record::new(b"defg", 2)]);
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    validate(&damaged, MAX).is_err(),
                    "flip of bit {bit} in byte {byte} was not detected"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_incomplete_or_invalid() {
        let bytes = encode_one(&[Record::new(b"abc", 1)]);
        for cut in 0..bytes.len() {
            assert!(
                validate(&bytes[..cut], MAX).is_err(),
                "cut at {cut} accepted"
            );
        }
    }

    #[test]
    fn zeros_are_the_end_not_corruption() {
        assert_eq!(validate(&[0u8; 64], MAX), Err(BatchError::Zeroed));
    }

    #[test]
    fn lengths_are_bounded_before_they_are_trusted() {
        let mut bytes = encode_one(&[Record::new(b"abc", 1)]);
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            validate(&bytes, MAX),
            Err(BatchError::BadLength { length: u32::MAX })
        );
    }

    #[test]
    fn limits_are_enforced_with_the_sizes() {
        let mut out = Vec::new();
        let big = vec![0u8; 100];
        let err = encode(&mut out, 0, 0, 0, &[Record::new(&big, 0)], 99, MAX).unwrap_err();
        assert!(matches!(
            err,
            StorageError::RecordTooLarge { size: 100, max: 99 }
        ));
        let err = encode(&mut out, 0, 0, 0, &[Record::new(&big, 0)], MAX, 100).unwrap_err();
        assert!(matches!(err, StorageError::BatchTooLarge { max: 100, .. }));
        assert!(matches!(
            encode(&mut out, 0, 0, 0, &[], MAX, MAX),
            Err(StorageError::EmptyBatch)
        ));
        let spread = [
            Record::new(b"a", 0),
            Record::new(b"b", i64::from(i32::MAX) + 1),
        ];
        assert!(matches!(
            encode(&mut out, 0, 0, 0, &spread, MAX, MAX),
            Err(StorageError::TimestampSpread { .. })
        ));
    }
}
