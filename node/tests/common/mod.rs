//! Helpers shared by the storage integration tests.

use std::path::Path;

/// A temp dir on tmpfs when there is one: the tests open many logs, every open fsyncs, and what
/// they check is what recovery makes of the bytes, not the disk.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.expect("create a temporary directory")
}
