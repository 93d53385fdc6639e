//! StatefulSet pods run as plain processes: what a kubelet and a container runtime would do
//! with a pod planned by [`crate::pod_spec`], imitated just far enough to run `proglog-node` as
//! the rendered template says, without Kubernetes.
//!
//! # Running
//!
//! [`PodProcess::start`] runs the container's entrypoint, the node binary, as
//!
//! ```text
//! ip netns exec <ns> unshare --uts sh -c '<set-up>' <pod> <binary> <args>...
//! ```
//!
//! `ip netns exec` puts it in the pod's network namespace and in a private mount namespace of
//! its own (mounts made there are invisible outside and vanish with the process), with the lab's
//! hosts file over `/etc/hosts`. `unshare --uts` gives it its own hostname. The set-up script
//! then does what the runtime does before starting a container: sets the hostname to the pod's,
//! bind-mounts each volume's host directory at its `mountPath` (read-only where the mount says
//! so), remounts `/` read-only for `readOnlyRootFilesystem` (in this mount namespace only), and
//! `exec`s the binary through `setpriv` with the security context's user, group and
//! supplementary groups (`fsGroup`), no new privileges and no capabilities. Every step `exec`s
//! in place of the last, so the spawned process *is* the node: its pid is the node's. Its
//! environment is the plan's, plus what a runtime adds (`PATH`, the usual default as no image
//! sets one here, and `HOSTNAME`); nothing of the test's own environment reaches it.
//!
//! A mount needs its target directory to exist, and the node's paths (`/etc/proglog/tls`,
//! `/var/lib/proglog`) do not exist on a test machine: [`MountPoints`] creates the missing ones
//! on the host, empty, and removes exactly those again when dropped.
//!
//! The binary is run from a copy (or hard link) in a world-searchable directory, as from an
//! image: the repository's `target/` may sit under a home directory the pod's non-root user
//! cannot enter.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use crate::kube_objects::Objects;
use crate::netns::NetLab;
use crate::pod_spec::{PodPlan, PodSpecError, VolumeSource};
use crate::pod_volumes::{self, VolumeError};

/// The environment variable container runtimes set when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Stderr lines kept per pod.
const KEPT_STDERR_LINES: usize = 2000;

/// Stderr lines quoted when a test fails.
const QUOTED_STDERR_LINES: usize = 40;

/// Programs the set-up (and [`PodProcess::hostname`]) needs, besides `ip`.
const SETUP_PROGRAMS: [&str; 5] = ["sh", "unshare", "mount", "setpriv", "nsenter"];

/// Why a pod could not be prepared or started.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The pod's template cannot be run as rendered.
    #[error(transparent)]
    Spec(#[from] PodSpecError),
    /// Writing a volume failed.
    #[error("pod {pod}, volume {volume}")]
    Volume {
        /// The pod.
        pod: String,
        /// The volume.
        volume: String,
        /// Why.
        #[source]
        source: VolumeError,
    },
    /// A host-side file system step failed.
    #[error("{operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program the set-up needs is not installed.
    #[error("`{0}` is not installed")]
    MissingProgram(&'static str),
    /// The process could not be spawned.
    #[error("cannot spawn pod {pod}")]
    Spawn {
        /// The pod.
        pod: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PodError {
    let path = path.to_path_buf();
    move |source| PodError::Io {
        operation,
        path,
        source,
    }
}

/// Directories created on the host as mount points, removed (if still empty) when dropped.
#[derive(Debug, Default)]
pub struct MountPoints {
    /// In creation order (parents first).
    created: Vec<PathBuf>,
}

impl MountPoints {
    /// Makes sure `path` exists as a directory, creating it and any missing parents.
    pub fn ensure(&mut self, path: &Path) -> Result<(), PodError> {
        let mut missing = Vec::new();
        let mut current = Some(path);
        while let Some(dir) = current {
            if dir.exists() {
                break;
            }
            missing.push(dir.to_path_buf());
            current = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            fs::create_dir(&dir).map_err(io_error("create the mount point", &dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .map_err(io_error("chmod", &dir))?;
            self.created.push(dir);
        }
        Ok(())
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        while let Some(dir) = self.created.pop() {
            if let Err(err) = fs::remove_dir(&dir) {
                eprintln!(
                    "MountPoints cleanup: cannot remove {}: {err}",
                    dir.display()
                );
            }
        }
    }
}

/// Whether pods can be run here: the programs the set-up uses are installed (root and `ip`
/// are [`NetLab::available`]'s to check). `Err` says what is missing.
pub fn available() -> Result<(), String> {
    for program in SETUP_PROGRAMS {
        find_program(program)
            .ok_or_else(|| format!("`{program}` (util-linux) is not installed"))?;
    }
    Ok(())
}

/// `program` on `PATH` or in the usual system directories.
fn find_program(program: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Quotes `text` for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The host side of one pod: a directory per volume.
#[derive(Debug)]
pub struct PodSandbox {
    /// The pod's directory on the host.
    pub dir: PathBuf,
}

impl PodSandbox {
    /// The host directory that backs volume `volume`.
    pub fn volume_dir(&self, volume: &str) -> PathBuf {
        self.dir.join("volumes").join(volume)
    }

    /// Writes every volume of `plan` from `objects` (Secrets and ConfigMaps atomically, as the
    /// kubelet does, see [`pod_volumes`]; plain directories created once). Called again after
    /// the objects change, it updates what changed in place; returns the volumes that changed.
    pub fn sync_volumes(&self, plan: &PodPlan, objects: &Objects) -> Result<Vec<String>, PodError> {
        let fs_group = plan.security.fs_group;
        let mut changed = Vec::new();
        for (volume, source) in &plan.volumes {
            let dir = self.volume_dir(volume);
            let volume_error = |source: VolumeError| PodError::Volume {
                pod: plan.name.clone(),
                volume: volume.clone(),
                source,
            };
            match plan.projected_files(objects, volume)? {
                Some(files) => {
                    if pod_volumes::write_atomically(&dir, &files, fs_group)
                        .map_err(volume_error)?
                    {
                        changed.push(volume.clone());
                    }
                    // The volume's root too, as the kubelet's ownership pass covers it.
                    if let Some(group) = fs_group {
                        set_dir_group(&dir, group, 0o755)?;
                    }
                }
                None if !dir.exists() => {
                    fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
                    match (source, fs_group) {
                        // An emptyDir is world-writable.
                        (VolumeSource::EmptyDir, _) => {
                            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
                                .map_err(io_error("chmod", &dir))?;
                        }
                        (_, Some(group)) => {
                            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                                .map_err(io_error("chmod", &dir))?;
                            pod_volumes::apply_fs_group(&dir, group, false)
                                .map_err(volume_error)?;
                        }
                        (_, None) => {}
                    }
                    changed.push(volume.clone());
                }
                None => {}
            }
        }
        Ok(changed)
    }
}

fn set_dir_group(dir: &Path, group: u32, mode: u32) -> Result<(), PodError> {
    std::os::unix::fs::lchown(dir, None, Some(group)).map_err(io_error("chown", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o2000 | 0o050))
        .map_err(io_error("chmod", dir))
}

/// How to start one pod.
#[derive(Debug)]
pub struct PodLaunch<'a> {
    /// What to run.
    pub plan: &'a PodPlan,
    /// Its host-side directories, volumes already written.
    pub sandbox: &'a PodSandbox,
    /// The lab whose host `host` is the pod's network namespace.
    pub lab: &'a NetLab,
    /// The pod's host index in `lab`.
    pub host: usize,
    /// The image's entrypoint (`command` replaces it, but its first word must name the same
    /// binary, which runs from here).
    pub entrypoint: &'a Path,
}

/// A pod's process: killed if still running when dropped, printing its stderr's end if the
/// test is failing.
#[derive(Debug)]
pub struct PodProcess {
    name: String,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl PodProcess {
    /// Starts the pod's container as described in the module documentation. Mount points that
    /// do not exist on the host are created through `mount_points`.
    pub fn start(launch: &PodLaunch<'_>, mount_points: &mut MountPoints) -> Result<Self, PodError> {
        let plan = launch.plan;
        if plan.security.run_as_non_root && plan.security.run_as_user.unwrap_or(0) == 0 {
            return Err(PodSpecError::Invalid {
                pod: plan.name.clone(),
                reason: "runAsNonRoot without a non-zero runAsUser: the kubelet would refuse it"
                    .into(),
            }
            .into());
        }
        let program = |name: &'static str| find_program(name).ok_or(PodError::MissingProgram(name));
        let (sh, unshare, mount, setpriv) = (
            program("sh")?,
            program("unshare")?,
            program("mount")?,
            program("setpriv")?,
        );
        // The image's entrypoint is the node binary: a `command` must name that binary (its
        // path in the image is not known here), and its other words come before the args.
        let mut argv: Vec<String> = Vec::new();
        if let Some(command) = &plan.command {
            let binary_name = launch
                .entrypoint
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let first = command.first().map(String::as_str).unwrap_or_default();
            let first_name = Path::new(first)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned());
            if first_name.as_deref() != Some(binary_name.as_str()) {
                return Err(PodSpecError::Unsupported {
                    pod: plan.name.clone(),
                    what: format!("command {first:?} (only the image's {binary_name} exists)"),
                }
                .into());
            }
            argv.extend(command.iter().skip(1).cloned());
        }
        argv.extend(plan.args.iter().cloned());

        let mut script = String::from("set -e\n");
        let _ = writeln!(
            script,
            "printf '%s' {} > /proc/sys/kernel/hostname",
            shell_quote(&plan.name)
        );
        let mount = shell_quote(&mount.to_string_lossy());
        for volume_mount in &plan.mounts {
            let source = launch.sandbox.volume_dir(&volume_mount.volume);
            if launch.sandbox.dir.starts_with(&volume_mount.mount_path) {
                return Err(PodSpecError::Unsupported {
                    pod: plan.name.clone(),
                    what: format!(
                        "a mount at {} (it would hide the pod's host directory {})",
                        volume_mount.mount_path.display(),
                        launch.sandbox.dir.display()
                    ),
                }
                .into());
            }
            mount_points.ensure(&volume_mount.mount_path)?;
            let options = if volume_mount.read_only {
                "bind,ro"
            } else {
                "bind,rw"
            };
            let _ = writeln!(
                script,
                "{mount} --bind {} {}\n{mount} -o remount,{options} {}",
                shell_quote(&source.to_string_lossy()),
                shell_quote(&volume_mount.mount_path.to_string_lossy()),
                shell_quote(&volume_mount.mount_path.to_string_lossy()),
            );
        }
        // After the volumes: a bind mount starts with its source mount's flags, and the
        // volumes' host directories are on the root file system.
        if plan.security.read_only_root_filesystem {
            let _ = writeln!(script, "{mount} -o remount,bind,ro /");
        }
        let mut privileges = Vec::new();
        let security = &plan.security;
        if let Some(user) = security.run_as_user {
            privileges.push(format!("--reuid={user}"));
        }
        // Without runAsGroup the image's group applies: root's, as no image sets one here.
        if let Some(group) = security.run_as_group {
            privileges.push(format!("--regid={group}"));
        }
        let groups: Vec<String> = security
            .fs_group
            .iter()
            .chain(&security.supplemental_groups)
            .map(u32::to_string)
            .collect();
        if groups.is_empty() {
            privileges.push("--clear-groups".into());
        } else {
            privileges.push(format!("--groups={}", groups.join(",")));
        }
        if security.no_new_privileges {
            privileges.push("--no-new-privs".into());
        }
        if security.drop_all_capabilities {
            privileges.push("--inh-caps=-all".into());
            privileges.push("--bounding-set=-all".into());
        }
        let _ = writeln!(
            script,
            "exec {} {} -- \"$@\"",
            shell_quote(&setpriv.to_string_lossy()),
            privileges.join(" ")
        );

        let (ip, ip_args) = launch.lab.exec_prefix(launch.host);
        let mut command = Command::new(ip);
        command
            .args(ip_args)
            .arg(unshare)
            .arg("--uts")
            .arg(sh)
            .arg("-c")
            .arg(script)
            .arg(&plan.name)
            .arg(launch.entrypoint)
            .args(&argv)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .env("HOSTNAME", &plan.name)
            .envs(plan.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|source| PodError::Spawn {
            pod: plan.name.clone(),
            source,
        })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let kept = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
                    if kept.len() >= KEPT_STDERR_LINES {
                        kept.remove(0);
                    }
                    kept.push(line);
                }
            });
        }
        Ok(PodProcess {
            name: plan.name.clone(),
            child,
            stderr,
        })
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (the node's: every wrapper execs in place of itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process exited, or `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The process's real user, real group and supplementary groups, from `/proc`
    /// (`None` once it has exited).
    pub fn credentials(&self) -> Option<(u32, u32, Vec<u32>)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let field = |key: &str| -> Option<Vec<u32>> {
            let values = status.lines().find_map(|line| line.strip_prefix(key))?;
            values
                .split_whitespace()
                .map(|value| value.parse().ok())
                .collect()
        };
        let uid = *field("Uid:")?.first()?;
        let gid = *field("Gid:")?.first()?;
        Some((uid, gid, field("Groups:")?))
    }

    /// The hostname the process sees (read in its UTS namespace with `nsenter`; `None` when
    /// that fails, or once it has exited).
    pub fn hostname(&self) -> Option<String> {
        let output = Command::new(find_program("nsenter")?)
            .arg(format!("--target={}", self.child.id()))
            .args(["--uts", "cat", "/proc/sys/kernel/hostname"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Every stderr line kept so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last stderr lines, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let lines = self.stderr_lines();
        let skip = lines.len().saturating_sub(QUOTED_STDERR_LINES);
        lines[skip..]
            .iter()
            .map(|line| format!("    {line}\n"))
            .collect()
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- end of the stderr of pod {} (pid {}) ---\n{}",
                self.name,
                self.child.id(),
                self.stderr_tail()
            );
        }
    }
}

/// Puts a copy (a hard link where possible) of `binary` in `dir`, readable and executable by
/// everyone, as an image would hold it; returns its path.
pub fn install_binary(binary: &Path, dir: &Path) -> Result<PathBuf, PodError> {
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_error("chmod", dir))?;
    let name = binary.file_name().map(OsString::from).unwrap_or_default();
    let target = dir.join(name);
    if fs::hard_link(binary, &target).is_err() {
        fs::copy(binary, &target).map_err(io_error("copy the binary to", &target))?;
    }
    let mode = fs::metadata(&target)
        .map_err(io_error("stat", &target))?
        .permissions()
        .mode();
    if mode & 0o005 != 0o005 {
        fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o555))
            .map_err(io_error("chmod", &target))?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
