//! Volume contents as the kubelet lays them out on the node, for pods run without a kubelet
//! (see [`crate::pods`]).
//!
//! # Secret and ConfigMap volumes
//!
//! [`write_atomically`] imitates the kubelet's `AtomicWriter`: the files live in a timestamped
//! directory `..2026_11_25_07_30_00.123456789`, a symlink `..data` points at it, and each
//! user-visible name is a symlink through `..data` (`ca.crt -> ..data/ca.crt`). An update
//! writes a new timestamped directory, points a new symlink `..data_tmp` at it and renames that
//! over `..data` (one atomic step: a reader sees either every old file or every new one), then
//! removes the old directory. A process watching the files sees the change by re-reading them,
//! as it would in a pod.
//!
//! # Ownership (`fsGroup`)
//!
//! With a pod `fsGroup`, the kubelet gives every file and directory of a volume that group, adds
//! read (read-only volumes) or read-write (others) permission for it, and sets the set-group-id
//! bit on directories; [`apply_fs_group`] does the same, so a process running as the pod's
//! non-root user reads its Secrets and writes its data directory only if the rendered modes and
//! groups allow it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The symlink to the current timestamped directory.
pub const DATA_DIR_LINK: &str = "..data";
/// The symlink renamed over [`DATA_DIR_LINK`].
const NEW_DATA_DIR_LINK: &str = "..data_tmp";

/// Read permission for owner and group, added to read-only volumes' files under `fsGroup`.
const READ_ONLY_MASK: u32 = 0o440;
/// Read-write permission for owner and group, added to other volumes' files under `fsGroup`.
const READ_WRITE_MASK: u32 = 0o660;
/// Search permission for owner and group, added to directories under `fsGroup`.
const EXEC_MASK: u32 = 0o110;
/// The set-group-id bit, on directories under `fsGroup` (new files inherit the group).
const SET_GID: u32 = 0o2000;

/// One file of a projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedFile {
    /// Its path relative to the volume (a key, or an item's `path`).
    pub path: String,
    /// Its contents.
    pub data: Vec<u8>,
    /// Its permission bits (`defaultMode` or the item's `mode`).
    pub mode: u32,
}

/// Why a volume could not be written.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A file system operation failed.
    #[error("{operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A projected path would leave the volume or clash with the kubelet's own names.
    #[error(
        "projected path {path:?} is not a relative path inside the volume, or starts with `..`"
    )]
    BadPath {
        /// The path.
        path: String,
    },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError {
    let path = path.to_path_buf();
    move |source| VolumeError::Io {
        operation,
        path,
        source,
    }
}

/// Writes `files` into the volume directory `dir` (created if missing) the way the kubelet's
/// `AtomicWriter` does (see the module documentation), giving them the group `fs_group` if set.
/// Returns whether anything changed: writing the same payload again does nothing.
pub fn write_atomically(
    dir: &Path,
    files: &[ProjectedFile],
    fs_group: Option<u32>,
) -> Result<bool, VolumeError> {
    for file in files {
        let relative = Path::new(&file.path);
        let inside = !file.path.is_empty()
            && !file.path.starts_with("..")
            && relative
                .components()
                .all(|component| matches!(component, Component::Normal(_)));
        if !inside {
            return Err(VolumeError::BadPath {
                path: file.path.clone(),
            });
        }
    }
    fs::create_dir_all(dir).map_err(io_error("create the volume directory", dir))?;
    let data_link = dir.join(DATA_DIR_LINK);
    let current = fs::read_link(&data_link).ok();
    if let Some(current) = &current
        && payload_matches(&dir.join(current), files)
    {
        return Ok(false);
    }

    let stamp_dir = new_timestamped_dir(dir)?;
    for file in files {
        let path = stamp_dir.join(&file.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        }
        fs::write(&path, &file.data).map_err(io_error("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))
            .map_err(io_error("chmod", &path))?;
    }
    if let Some(group) = fs_group {
        apply_fs_group(&stamp_dir, group, true)?;
    }

    // The atomic step: a new link renamed over the old one.
    let new_link = dir.join(NEW_DATA_DIR_LINK);
    let _ = fs::remove_file(&new_link);
    let stamp_name = stamp_dir.file_name().map(PathBuf::from).unwrap_or_default();
    symlink(&stamp_name, &new_link).map_err(io_error("symlink", &new_link))?;
    fs::rename(&new_link, &data_link).map_err(io_error("rename over", &data_link))?;

    // User-visible names: one symlink per top-level entry of the payload.
    let visible: BTreeMap<String, ()> = files
        .iter()
        .filter_map(|file| file.path.split('/').next().map(|top| (top.to_owned(), ())))
        .collect();
    for top in visible.keys() {
        let link = dir.join(top);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_DIR_LINK).join(top), &link)
                .map_err(io_error("symlink", &link))?;
        }
    }
    let entries = fs::read_dir(dir).map_err(io_error("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !visible.contains_key(&name) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_error("remove the stale link", &path))?;
        }
    }
    if let Some(old) = current {
        let old = dir.join(old);
        fs::remove_dir_all(&old).map_err(io_error("remove the old payload", &old))?;
    }
    Ok(true)
}

/// Gives every file and directory under `root` (itself included) the group `group` and the
/// permissions the kubelet adds for an `fsGroup`: read (`read_only`) or read-write for owner
/// and group on files; that and search permission plus set-group-id on directories. Symlinks
/// are left alone (their targets are inside the volume and get the same treatment).
pub fn apply_fs_group(root: &Path, group: u32, read_only: bool) -> Result<(), VolumeError> {
    let metadata = fs::symlink_metadata(root).map_err(io_error("stat", root))?;
    if metadata.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(root, None, Some(group)).map_err(io_error("chown", root))?;
    let mask = if read_only {
        READ_ONLY_MASK
    } else {
        READ_WRITE_MASK
    };
    let mode = metadata.permissions().mode() & 0o7777;
    let new_mode = if metadata.is_dir() {
        mode | mask | EXEC_MASK | SET_GID
    } else {
        mode | mask
    };
    fs::set_permissions(root, fs::Permissions::from_mode(new_mode))
        .map_err(io_error("chmod", root))?;
    if metadata.is_dir() {
        for entry in fs::read_dir(root).map_err(io_error("list", root))? {
            let entry = entry.map_err(io_error("list", root))?;
            apply_fs_group(&entry.path(), group, read_only)?;
        }
    }
    Ok(())
}

/// Whether the timestamped directory `dir` holds exactly `files`, byte for byte and mode.
fn payload_matches(dir: &Path, files: &[ProjectedFile]) -> bool {
    files.iter().all(|file| {
        let path = dir.join(&file.path);
        let same_mode = fs::metadata(&path)
            .is_ok_and(|metadata| metadata.permissions().mode() & 0o777 == file.mode & 0o777);
        same_mode && fs::read(&path).is_ok_and(|data| data == file.data)
    }) && count_files(dir) == files.len()
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|entry| {
                let path = entry.path();
                if path.is_dir() { count_files(&path) } else { 1 }
            })
            .sum()
    })
}

/// A new directory `..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN` in `dir` (UTC, as the kubelet names them).
fn new_timestamped_dir(dir: &Path) -> Result<PathBuf, VolumeError> {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (date, time) = civil_from_unix(elapsed.as_secs());
    for attempt in 0..1000u32 {
        let name = format!(
            "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{:09}",
            date.0,
            date.1,
            date.2,
            time.0,
            time.1,
            time.2,
            (elapsed.subsec_nanos() + attempt) % 1_000_000_000
        );
        let path = dir.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(io_error("chmod", &path))?;
                return Ok(path);
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(io_error("create", &path)(err)),
        }
    }
    Err(VolumeError::Io {
        operation: "find a free timestamped directory name in",
        path: dir.to_path_buf(),
        source: io::Error::from(io::ErrorKind::AlreadyExists),
    })
}

/// The UTC date `(year, month, day)` and time `(hour, minute, second)` of a Unix time
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_unix(seconds: u64) -> ((u64, u64, u64), (u64, u64, u64)) {
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (
        (year, month, day),
        (of_day / 3600, of_day % 3600 / 60, of_day % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &str) -> ProjectedFile {
        ProjectedFile {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode: 0o440,
        }
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_unix(0), ((1970, 1, 1), (0, 0, 0)));
        // 2026-11-25T07:30:05Z
        assert_eq!(civil_from_unix(1_795_591_805), ((2026, 11, 25), (7, 30, 5)));
    }

    #[test]
    fn updates_swap_the_data_link_and_drop_stale_names() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("tls");
        assert!(
            write_atomically(&volume, &[file("a.crt", "one"), file("b.crt", "b")], None).unwrap()
        );
        assert_eq!(fs::read_to_string(volume.join("a.crt")).unwrap(), "one");
        assert_eq!(
            fs::read_link(volume.join("a.crt")).unwrap(),
            Path::new("..data/a.crt")
        );
        let first = fs::read_link(volume.join(DATA_DIR_LINK)).unwrap();
        assert!(
            !write_atomically(&volume, &[file("a.crt", "one"), file("b.crt", "b")], None).unwrap()
        );

        assert!(write_atomically(&volume, &[file("a.crt", "two")], None).unwrap());
        assert_eq!(fs::read_to_string(volume.join("a.crt")).unwrap(), "two");
        assert!(fs::symlink_metadata(volume.join("b.crt")).is_err());
        assert!(!volume.join(first).exists(), "the old payload is removed");
        let mode = fs::metadata(volume.join("a.crt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o440);

        assert!(write_atomically(&volume, &[file("../x", "no")], None).is_err());
        assert!(write_atomically(&volume, &[file("..data", "no")], None).is_err());
    }
}
