//! An exclusive lock on the data directory, so two processes can never open the same log.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use super::error::{Result, StorageError};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = ".lock";

/// Holds an exclusive `flock` on `<dir>/.lock` until dropped. The kernel releases it when the
/// process dies, so a crash never leaves a stale lock behind.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, failing at once with `Locked` if another holder exists.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StorageError::io("open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StorageError::Locked {
                path: dir.to_path_buf(),
            }),
            Err(TryLockError::Error(err)) => Err(StorageError::io("lock", &path)(err)),
        }
    }
}
