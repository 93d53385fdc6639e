//! The Python interop script (`tests/python/grpcio_client.py`) and the virtual environment it
//! runs in.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};

/// The Python packages of the interop script, pinned.
const PYTHON_REQUIREMENTS: &str =
    "grpcio==1.85.1\ngrpcio-tools==1.85.1\ngrpcio-reflection==1.85.1\n";

/// The workspace root, where `tests/python/grpcio_client.py` lives.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A virtual environment in `tmp_dir` (the tests' `CARGO_TARGET_TMPDIR`) holding [`PYTHON_REQUIREMENTS`], made on first use
/// (from PyPI) and kept while the pins stay the same, so the tests need Python 3 and nothing
/// installed beforehand. Returns its interpreter. Tests that call it at once wait for each
/// other (a lock file), so one makes the environment and the others use it.
fn python_env(tmp_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = tmp_dir.join("python-interop");
    let lock_path = tmp_dir.join("python-interop.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("create {}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("lock {}", lock_path.display()))?;
    let python = dir.join("bin").join("python3");
    let installed = dir.join("installed.txt");
    if python.exists()
        && std::fs::read_to_string(&installed).ok().as_deref() == Some(PYTHON_REQUIREMENTS)
    {
        return Ok(python);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let run = |command: &mut std::process::Command, what: &str| -> anyhow::Result<()> {
        let output = command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{what} (is Python 3 with venv installed?)"))?;
        ensure!(
            output.status.success(),
            "{what} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    run(
        std::process::Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&dir),
        "python3 -m venv",
    )?;
    let requirements = dir.join("requirements.txt");
    std::fs::write(&requirements, PYTHON_REQUIREMENTS)?;
    run(
        std::process::Command::new(dir.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        "pip install of the interop script's packages",
    )?;
    std::fs::write(&installed, PYTHON_REQUIREMENTS)?;
    Ok(python)
}

/// Runs the interop script with `args` (after making its environment in `tmp_dir`, which takes
/// at most 10 minutes) and
/// returns the JSON report it prints. Every call the script makes has its own 10 s timeout, so
/// it ends by itself; `deadline` only bounds how long the caller waits for it.
pub async fn run_grpcio_client(
    tmp_dir: &Path,
    args: &[String],
    deadline: Duration,
) -> anyhow::Result<serde_json::Value> {
    let tmp_dir = tmp_dir.to_owned();
    let python = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::task::spawn_blocking(move || python_env(&tmp_dir)),
    )
    .await
    .context("setting up the Python environment took longer than 10 minutes")???;
    let root = workspace_root();
    let mut command = std::process::Command::new(python);
    command
        .arg(root.join("tests/python/grpcio_client.py"))
        .args(args)
        .current_dir(&root)
        .stdin(Stdio::null());
    let output = tokio::time::timeout(
        deadline,
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .with_context(|| format!("the Python client took longer than {deadline:?}"))??
    .context("run python3 (is Python 3 installed?)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "the Python client failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("the Python client printed no JSON report: {stdout}"))
}
