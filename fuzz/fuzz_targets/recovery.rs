//! Arbitrary bytes as a segment file after a valid header: opening the log must never panic,
//! must either refuse with `Corruption` or serve exactly the valid batches, and must cut a torn
//! tail only where there is one (see `proglog_node::fuzzing::check_recovery`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // tmpfs when there is one: every open fsyncs, and the checks are about logic, not disks.
    let parent = Path::new("/dev/shm");
    let dir = if parent.is_dir() {
        tempfile::tempdir_in(parent)
    } else {
        tempfile::tempdir()
    }
    .expect("create a temp dir");
    proglog_node::fuzzing::check_recovery(dir.path(), data);
});
