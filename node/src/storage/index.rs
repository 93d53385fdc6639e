//! The segment index: a sparse map from offset to file position, which doubles as the time
//! index.
//!
//! One entry is kept for the first batch of a segment and then per `index_interval_bytes` of
//! batches. Each entry also records the largest timestamp of all batches *before* it, a
//! non-decreasing value, so the same entries answer "where does offset N start" and "from where
//! must I scan to find the first record at or after time T" with one binary search. Keeping both
//! in one file halves the files, maps and fsyncs per segment compared with Kafka's separate
//! `.index` and `.timeindex`.
//!
//! The active segment's entries live in memory. An index file is written (temp, fsync, rename,
//! fsync directory) when a segment is sealed and, for the active segment, at each checkpoint and
//! at clean shutdown. Sealed index files are read through a read-only `memmap2` map. The file
//! ends with a CRC'd footer that also records how far into the log file the entries are valid
//! (`logical_size`) and the next offset there, which is what lets recovery start at the last
//! checkpoint instead of the start of the segment.
//!
//! ```text
//! entry (16 bytes):  relative_offset u32 | position u32 | max_timestamp_before i64
//! footer (52 bytes): magic "PIDX" | version u16 | flags u16 (bit 0: sealed) | base_offset u64 |
//!                    entry_count u64 | logical_size u64 | next_offset u64 | max_timestamp i64 |
//!                    crc32c u32 (of all entries and the footer before it)
//! ```

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::checkpoint;

/// Size of one entry on disk.
pub const ENTRY_LEN: usize = 16;
/// Size of the footer.
pub const FOOTER_LEN: usize = 52;
const MAGIC: &[u8; 4] = b"PIDX";
const VERSION: u16 = 1;
const FLAG_SEALED: u16 = 1;

/// Where a batch starts, and the newest timestamp seen before it in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch, minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment's log file.
    pub position: u32,
    /// Largest record timestamp of all batches before this one in the segment (`i64::MIN` for
    /// the first batch).
    pub max_timestamp_before: i64,
}

impl IndexEntry {
    fn parse(bytes: &[u8]) -> Self {
        let mut relative = [0u8; 4];
        let mut position = [0u8; 4];
        let mut timestamp = [0u8; 8];
        relative.copy_from_slice(&bytes[0..4]);
        position.copy_from_slice(&bytes[4..8]);
        timestamp.copy_from_slice(&bytes[8..16]);
        IndexEntry {
            relative_offset: u32::from_le_bytes(relative),
            position: u32::from_le_bytes(position),
            max_timestamp_before: i64::from_le_bytes(timestamp),
        }
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.relative_offset.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp_before.to_le_bytes());
    }
}

/// The footer's summary of the segment as far as the index covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexFooter {
    /// Written when the segment was sealed (the whole segment is covered), rather than at a
    /// checkpoint of the active segment.
    pub sealed: bool,
    /// The segment's base offset.
    pub base_offset: u64,
    /// Bytes of the log file covered: batches up to here were durable when the index was written.
    pub logical_size: u64,
    /// The offset after the last covered record.
    pub next_offset: u64,
    /// Largest record timestamp in the covered batches (`i64::MIN` when there are none).
    pub max_timestamp: i64,
}

/// The entries of one segment: in memory for the active segment, mapped for sealed ones.
#[derive(Debug)]
pub enum Entries {
    /// Growing entries of the active segment.
    Memory(Vec<IndexEntry>),
    /// A sealed segment's index file, mapped read-only; `count` entries from its start.
    Mapped {
        /// The mapped file.
        map: Mmap,
        /// Number of entries.
        count: usize,
    },
}

impl Entries {
    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            Entries::Memory(entries) => entries.len(),
            Entries::Mapped { count, .. } => *count,
        }
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `i` (which must be `< len()`).
    pub fn get(&self, i: usize) -> IndexEntry {
        match self {
            Entries::Memory(entries) => entries[i],
            Entries::Mapped { map, .. } => {
                IndexEntry::parse(&map[i * ENTRY_LEN..(i + 1) * ENTRY_LEN])
            }
        }
    }

    /// The last entry whose batch starts at or before `relative_offset`.
    pub fn floor_offset(&self, relative_offset: u32) -> Option<IndexEntry> {
        let count = self.partition_point(|entry| entry.relative_offset <= relative_offset);
        count.checked_sub(1).map(|i| self.get(i))
    }

    /// The last entry before which no batch has a timestamp at or after `timestamp`: scanning
    /// from it finds the first such record.
    pub fn floor_time(&self, timestamp: i64) -> Option<IndexEntry> {
        let count = self.partition_point(|entry| entry.max_timestamp_before < timestamp);
        count.checked_sub(1).map(|i| self.get(i))
    }

    /// All entries, copied.
    pub fn to_vec(&self) -> Vec<IndexEntry> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    fn partition_point(&self, pred: impl Fn(&IndexEntry) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            if pred(&self.get(mid)) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }
}

/// Writes an index file for a segment atomically and durably. The caller must have made the
/// log data up to `footer.logical_size` durable first.
pub fn write(
    dir: &Path,
    file_name: &str,
    entries: &[IndexEntry],
    footer: &IndexFooter,
) -> super::Result<()> {
    let mut bytes = Vec::with_capacity(entries.len() * ENTRY_LEN + FOOTER_LEN);
    for entry in entries {
        entry.write_to(&mut bytes);
    }
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(if footer.sealed { FLAG_SEALED } else { 0 }).to_le_bytes());
    bytes.extend_from_slice(&footer.base_offset.to_le_bytes());
    bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&footer.logical_size.to_le_bytes());
    bytes.extend_from_slice(&footer.next_offset.to_le_bytes());
    bytes.extend_from_slice(&footer.max_timestamp.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    checkpoint::replace_file(dir, file_name, &bytes)
}

/// Maps and verifies an index file. `Err` says why it cannot be trusted; the caller then
/// rebuilds the index from the log.
pub fn load(path: &Path, base_offset: u64) -> Result<(Entries, IndexFooter), String> {
    let file = File::open(path).map_err(|err| format!("cannot open: {err}"))?;
    load_file(&file, base_offset)
}

/// [`load`] of an index file already open.
pub fn load_file(file: &File, base_offset: u64) -> Result<(Entries, IndexFooter), String> {
    // SAFETY: index files are only ever replaced by rename, never modified in place, and the
    // data directory is locked against other processes, so the mapped bytes cannot change.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(file) }.map_err(|err| format!("cannot map: {err}"))?;
    if map.len() < FOOTER_LEN || !(map.len() - FOOTER_LEN).is_multiple_of(ENTRY_LEN) {
        return Err(format!("size {} is not entries plus a footer", map.len()));
    }
    let footer_at = map.len() - FOOTER_LEN;
    let footer_bytes = &map[footer_at..];
    let stored = u32::from_le_bytes([
        footer_bytes[48],
        footer_bytes[49],
        footer_bytes[50],
        footer_bytes[51],
    ]);
    if crc32c::crc32c(&map[..map.len() - 4]) != stored {
        return Err("checksum mismatch".into());
    }
    if &footer_bytes[0..4] != MAGIC {
        return Err("bad magic".into());
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&footer_bytes[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let version = u16::from_le_bytes([footer_bytes[4], footer_bytes[5]]);
    if version != VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let flags = u16::from_le_bytes([footer_bytes[6], footer_bytes[7]]);
    let footer = IndexFooter {
        sealed: flags & FLAG_SEALED != 0,
        base_offset: u64_at(8),
        logical_size: u64_at(24),
        next_offset: u64_at(32),
        max_timestamp: u64_at(40) as i64,
    };
    let count = u64_at(16);
    if footer.base_offset != base_offset {
        return Err(format!(
            "footer names base offset {}, file name {base_offset}",
            footer.base_offset
        ));
    }
    if count != (footer_at / ENTRY_LEN) as u64 {
        return Err(format!(
            "footer counts {count} entries, file holds {}",
            footer_at / ENTRY_LEN
        ));
    }
    if footer.next_offset < base_offset {
        return Err(format!(
            "next offset {} is below the base offset",
            footer.next_offset
        ));
    }
    let entries = Entries::Mapped {
        map,
        count: count as usize,
    };
    let mut previous: Option<IndexEntry> = None;
    for i in 0..entries.len() {
        let entry = entries.get(i);
        let ordered = previous.is_none_or(|p| {
            p.relative_offset < entry.relative_offset
                && p.position < entry.position
                && p.max_timestamp_before <= entry.max_timestamp_before
        });
        if !ordered || u64::from(entry.position) >= footer.logical_size {
            return Err(format!(
                "entry {i} is out of order or past the covered size"
            ));
        }
        if base_offset + u64::from(entry.relative_offset) >= footer.next_offset {
            return Err(format!("entry {i} points past the covered offsets"));
        }
        previous = Some(entry);
    }
    Ok((entries, footer))
}
