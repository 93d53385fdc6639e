//! Small CRC'd files replaced atomically: write a temp file, fsync it, rename it over the old
//! one, fsync the directory. A reader sees the old contents or the new, never a mix, and a
//! damaged file is reported rather than trusted.
//!
//! Format: `magic "PLCK" | version u16 | payload length u32 | payload | crc32c u32` where the CRC
//! covers everything before it.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::error::{Result, StorageError};

const MAGIC: &[u8; 4] = b"PLCK";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 10;
/// Suffix of files being written; leftovers from a crash are deleted on open.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Writes `payload` to `dir/name` atomically and durably.
pub fn write(dir: &Path, name: &str, payload: &[u8]) -> Result<()> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(payload);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    replace_file(dir, name, &bytes)
}

/// Reads `dir/name`: `Ok(None)` when it does not exist, `Corruption` when it is damaged.
pub fn read(dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(StorageError::io("read", &path)(err)),
    };
    let corrupt = |reason: String| StorageError::Corruption {
        path: path.clone(),
        position: 0,
        expected_offset: 0,
        reason,
    };
    if bytes.len() < HEADER_LEN + 4 || &bytes[..4] != MAGIC {
        return Err(corrupt(
            "not a checkpoint file (bad magic or too short)".into(),
        ));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(corrupt(format!("unsupported checkpoint version {version}")));
    }
    let len = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
    if bytes.len() != HEADER_LEN + len + 4 {
        return Err(corrupt(format!(
            "payload length {len} does not match file size {}",
            bytes.len()
        )));
    }
    let (body, crc) = bytes.split_at(HEADER_LEN + len);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(Some(body[HEADER_LEN..].to_vec()))
}

/// Replaces `dir/name` with `bytes`: temp file, fsync, rename, fsync of the directory.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(StorageError::io("create", &temp))?;
    file.write_all(bytes)
        .map_err(StorageError::io("write", &temp))?;
    file.sync_all().map_err(|source| StorageError::SyncFailed {
        path: temp.clone(),
        source,
    })?;
    drop(file);
    fs::rename(&temp, &path).map_err(StorageError::io("rename", &temp))?;
    sync_dir(dir)
}

/// Makes a directory's entries (created, renamed, deleted files) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(StorageError::io("open directory", dir))?;
    handle
        .sync_all()
        .map_err(|source| StorageError::SyncFailed {
            path: PathBuf::from(dir),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), "state").unwrap(), None);
        write(dir.path(), "state", b"one").unwrap();
        write(dir.path(), "state", b"two").unwrap();
        assert_eq!(
            read(dir.path(), "state").unwrap().as_deref(),
            Some(&b"two"[..])
        );
        assert!(!dir.path().join("state.tmp").exists());
    }

    #[test]
    fn any_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "state", b"payload").unwrap();
        let good = fs::read(dir.path().join("state")).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(dir.path().join("state"), &bad).unwrap();
            assert!(
                matches!(
                    read(dir.path(), "state"),
                    Err(StorageError::Corruption { .. })
                ),
                "damage at byte {at} not reported"
            );
        }
        fs::write(dir.path().join("state"), &good[..good.len() - 1]).unwrap();
        assert!(read(dir.path(), "state").is_err());
    }
}
