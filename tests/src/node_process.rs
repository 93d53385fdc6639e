//! [`NodeProcess`]: a real `proglog-node` process for black-box tests.
//!
//! A node starts on `127.0.0.1:0` (the OS picks the port) with a data directory of its own, and
//! counts as started once it logs its JSON `"serving"` line on stderr, which carries the bound
//! address. A thread drains stderr for the process's whole life (so the node never blocks on a
//! full pipe) and keeps the lines, which errors and failing tests print. Stopping sends SIGTERM
//! and waits for the exit with a deadline; a node still running when its `NodeProcess` is
//! dropped is killed, so no test leaves processes behind.
//!
//! # Finding the binary
//!
//! Integration tests cannot use `CARGO_BIN_EXE_*` for another package's binary, so the binary is
//! looked up next to the running test executable: `target/<profile>/deps/<test>` runs, and
//! `target/<profile>/proglog-node` is the node. `cargo test --workspace` (the README's test
//! command) builds every workspace binary before it runs any test, so the binary is there and
//! current. When running only this package (`cargo test -p proglog-tests`), build the node first
//! with `cargo build -p proglog-node --bin proglog-node`, or a stale binary is tested.
//! `PROGLOG_NODE_BIN=<path>` overrides the lookup.
//!
//! # Wrappers
//!
//! [`NodeOptions::wrapper()`] starts the node through another program that runs it in place of
//! itself, such as `ip netns exec <ns>` (see [`crate::netns::NetLab::exec_prefix`]), which puts
//! the node in a network namespace. The wrapper must exec the node rather than run it as a child,
//! so the spawned process *is* the node: its pid, signals and exit status are the node's.

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use proglog_proto::log::v1::log_client::LogClient;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

/// The node binary's name in `target/<profile>/`.
pub const NODE_BINARY: &str = "proglog-node";

/// Environment variable that overrides where the node binary is looked up.
pub const NODE_BINARY_ENV: &str = "PROGLOG_NODE_BIN";

/// Stderr lines kept per process for diagnostics (the oldest are dropped beyond this).
const KEPT_STDERR_LINES: usize = 2000;

/// Stderr lines quoted in an error message.
const QUOTED_STDERR_LINES: usize = 40;

/// How often a stopping process is checked for its exit.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Why a node process could not be started, reached or stopped. Variants that concern a running
/// or exited process quote the end of its stderr, which usually says why.
#[derive(Debug, thiserror::Error)]
pub enum NodeProcessError {
    /// The binary is not where it was looked for.
    #[error(
        "no node binary at {path}: build it with `cargo build -p {NODE_BINARY} --bin {NODE_BINARY}` (`cargo test --workspace` does), or set {NODE_BINARY_ENV}"
    )]
    BinaryNotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The path of the running test executable is unknown, so the binary cannot be found.
    #[error("cannot locate the running test executable to find {NODE_BINARY} next to it")]
    CurrentExe(#[source] std::io::Error),
    /// The temporary data directory could not be created.
    #[error("cannot create a temporary data directory")]
    TempDir(#[source] std::io::Error),
    /// The process could not be spawned.
    #[error("cannot spawn {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The process exited before it logged that it was serving.
    #[error("node exited with {status} before serving; its stderr ends with:\n{stderr}")]
    ExitedBeforeServing {
        /// How it exited.
        status: ExitStatus,
        /// The end of its stderr.
        stderr: StderrTail,
    },
    /// The process did not log that it was serving within the deadline.
    #[error("node did not log \"serving\" within {deadline:?}; its stderr ends with:\n{stderr}")]
    StartTimeout {
        /// The deadline.
        deadline: Duration,
        /// The end of its stderr.
        stderr: StderrTail,
    },
    /// The process did not exit within the deadline (it was left running; drop kills it).
    #[error("node {pid} did not exit within {deadline:?}; its stderr ends with:\n{stderr}")]
    ExitTimeout {
        /// The process id.
        pid: u32,
        /// The deadline.
        deadline: Duration,
        /// The end of its stderr.
        stderr: StderrTail,
    },
    /// A signal could not be sent.
    #[error("cannot send signal {signal} to node {pid}")]
    Signal {
        /// The process id.
        pid: u32,
        /// The signal number.
        signal: i32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the process failed.
    #[error("cannot wait for node {pid}")]
    Wait {
        /// The process id.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A restart was asked of a process that is still running.
    #[error("node {pid} is still running; stop it before restarting")]
    StillRunning {
        /// The process id.
        pid: u32,
    },
    /// The node's address is not a valid endpoint, or connecting failed.
    #[error("cannot connect to the node at {addr}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// Connecting did not finish within the deadline.
    #[error("connecting to the node at {addr} took longer than {deadline:?}")]
    ConnectTimeout {
        /// The address.
        addr: SocketAddr,
        /// The deadline.
        deadline: Duration,
    },
}

/// The last lines of a process's stderr, for error messages.
#[derive(Debug, Clone)]
pub struct StderrTail(pub Vec<String>);

impl fmt::Display for StderrTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "    (nothing)");
        }
        for line in &self.0 {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// How to start a node: its id, data directory, extra flags and deadlines.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `--id`.
    pub id: String,
    /// `--data-dir`; `None` gives the node a temporary directory that lives as long as its
    /// [`NodeProcess`] (across restarts).
    pub data_dir: Option<PathBuf>,
    /// `--rpc-addr`. Port 0 lets the OS pick a free port, which the node then logs.
    pub rpc_addr: String,
    /// More flags (`--durability always`, ...), passed after the ones above.
    pub args: Vec<OsString>,
    /// Environment variables set for the process (on top of the test's environment, from which
    /// every `PROGLOG_*` variable is removed so that flags alone configure the node).
    pub envs: Vec<(OsString, OsString)>,
    /// How long starting may take before it counts as failed.
    pub start_deadline: Duration,
    /// How long a stop (SIGTERM to exit) may take. The node's own drain grace is 10 s.
    pub stop_deadline: Duration,
    /// A program and its arguments that the node's command line is appended to, such as
    /// `ip netns exec <ns>`; it must exec the node in place of itself (see the module
    /// documentation). `None` runs the node directly.
    pub wrapper: Option<(OsString, Vec<OsString>)>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            id: "node-0".into(),
            data_dir: None,
            rpc_addr: "127.0.0.1:0".into(),
            args: Vec::new(),
            envs: Vec::new(),
            start_deadline: Duration::from_secs(20),
            stop_deadline: Duration::from_secs(20),
            wrapper: None,
        }
    }
}

impl NodeOptions {
    /// Sets `--id`.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Uses `dir` as the data directory instead of a temporary one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Adds a flag and its value, such as `.flag("--max-record-bytes", "1024")`.
    pub fn flag(mut self, flag: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }

    /// Sets a flag's value, replacing the value of an earlier `flag` or `set_flag` of it.
    pub fn set_flag(mut self, flag: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        let flag = flag.into();
        match self.args.iter().position(|arg| *arg == flag) {
            Some(at) if at + 1 < self.args.len() => {
                self.args[at + 1] = value.into();
                self
            }
            _ => self.flag(flag, value),
        }
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts the node through `program` and `args`, which exec it in place of themselves:
    /// `.wrapper(program, args)` runs `program args... proglog-node <flags>`.
    pub fn wrapper<I, S>(mut self, program: impl Into<OsString>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.wrapper = Some((program.into(), args.into_iter().map(Into::into).collect()));
        self
    }

    /// The command line, with `data_dir` as the data directory: JSON log lines at `info` (the
    /// serving line is how a start is detected, so neither may come from the environment).
    fn command(&self, binary: &Path, data_dir: &Path) -> Command {
        let mut command = match &self.wrapper {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PROGLOG_") {
                command.env_remove(key);
            }
        }
        command
            .env("RUST_LOG", "info")
            // The HTTP endpoints (metrics, probes) on a free port too, so that nodes started in
            // parallel do not collide. An environment variable rather than `--http-addr`, so
            // that a node without those endpoints starts all the same; a flag in `args` wins.
            .env("PROGLOG_HTTP_ADDR", "127.0.0.1:0")
            // Gossip likewise (tests that form clusters by gossip pass `--gossip-addr`).
            .env("PROGLOG_GOSSIP_ADDR", "127.0.0.1:0")
            // Segments are preallocated: at the 1 GiB default, the dozens of nodes a test run
            // starts in parallel would reserve tens of GB. A `--segment-bytes` in `args` wins.
            .env("PROGLOG_SEGMENT_BYTES", "8388608")
            .arg("--id")
            .arg(&self.id)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--rpc-addr")
            .arg(&self.rpc_addr)
            .arg("--log-format")
            .arg("json")
            .args(&self.args)
            .envs(self.envs.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Runs a node that is expected to exit on its own (a configuration it must refuse, say) and
    /// returns how it exited and its whole stderr. A node that is still running at the start
    /// deadline is killed and reported as [`NodeProcessError::ExitTimeout`].
    pub async fn run_to_exit(&self) -> Result<ExitedNode, NodeProcessError> {
        let (temp_dir, data_dir) = self.resolve_data_dir()?;
        let mut running = Running::spawn(self.command(&node_binary()?, &data_dir))?;
        let status = running.wait_exit(self.start_deadline).await?;
        let stderr = running.stderr.join_all();
        drop(temp_dir);
        Ok(ExitedNode { status, stderr })
    }

    fn resolve_data_dir(&self) -> Result<(Option<TempDir>, PathBuf), NodeProcessError> {
        match &self.data_dir {
            Some(dir) => Ok((None, dir.clone())),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("proglog-node-")
                    .tempdir()
                    .map_err(NodeProcessError::TempDir)?;
                let path = dir.path().to_path_buf();
                Ok((Some(dir), path))
            }
        }
    }
}

/// A node that exited on its own.
#[derive(Debug)]
pub struct ExitedNode {
    /// How it exited.
    pub status: ExitStatus,
    /// Its whole stderr, line by line.
    pub stderr: Vec<String>,
}

/// Where to find the node binary: `PROGLOG_NODE_BIN`, else `target/<profile>/proglog-node` next
/// to the running test executable (see the module documentation for why it is built).
pub fn node_binary() -> Result<PathBuf, NodeProcessError> {
    let path = match std::env::var_os(NODE_BINARY_ENV) {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().map_err(NodeProcessError::CurrentExe)?;
            // target/<profile>/deps/<test>-<hash> -> target/<profile>
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .ok_or_else(|| {
                    NodeProcessError::CurrentExe(std::io::Error::other(format!(
                        "{} has no grandparent directory",
                        exe.display()
                    )))
                })?
                .to_path_buf();
            profile_dir.join(NODE_BINARY)
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(NodeProcessError::BinaryNotFound { path })
    }
}

/// A running (or stopped) `proglog-node` process; killed if still running when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    options: NodeOptions,
    data_dir: PathBuf,
    running: Running,
    rpc_addr: SocketAddr,
    /// Declared last so the directory is removed after the process is killed.
    _temp_dir: Option<TempDir>,
}

impl NodeProcess {
    /// Starts a node with the default options: id `node-0`, a temporary data directory, port 0.
    pub async fn start_default() -> Result<Self, NodeProcessError> {
        Self::start(NodeOptions::default()).await
    }

    /// Starts a node and waits, up to `options.start_deadline`, for its serving line.
    pub async fn start(options: NodeOptions) -> Result<Self, NodeProcessError> {
        let (temp_dir, data_dir) = options.resolve_data_dir()?;
        let binary = node_binary()?;
        let (running, rpc_addr) = Running::start(&options, &binary, &data_dir).await?;
        Ok(NodeProcess {
            options,
            data_dir,
            running,
            rpc_addr,
            _temp_dir: temp_dir,
        })
    }

    /// Starts the node again on the same data directory (and a new port, if the options ask for
    /// port 0). The previous process must have exited.
    pub async fn restart(&mut self) -> Result<(), NodeProcessError> {
        if self.running.try_status()?.is_none() {
            return Err(NodeProcessError::StillRunning {
                pid: self.running.pid(),
            });
        }
        let binary = node_binary()?;
        let (running, rpc_addr) = Running::start(&self.options, &binary, &self.data_dir).await?;
        self.running = running;
        self.rpc_addr = rpc_addr;
        Ok(())
    }

    /// The address the node logged it serves on.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// The address of the node's HTTP endpoints (`/metrics`, `/healthz`, `/readyz`), from the
    /// newest serving line (`None` if that line carries none).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.stderr_lines()
            .iter()
            .rev()
            .find_map(|line| serving_field(line, "http_addr"))
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.options.id
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.running.pid()
    }

    /// Every stderr line kept so far (the newest [`KEPT_STDERR_LINES`]).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.running.stderr.snapshot()
    }

    /// A new HTTP/2 connection to the node.
    pub async fn channel(&self) -> Result<Channel, NodeProcessError> {
        let addr = self.rpc_addr;
        let deadline = Duration::from_secs(10);
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| NodeProcessError::Connect { addr, source })?
            .connect_timeout(deadline);
        match tokio::time::timeout(deadline, endpoint.connect()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(source)) => Err(NodeProcessError::Connect { addr, source }),
            Err(_) => Err(NodeProcessError::ConnectTimeout { addr, deadline }),
        }
    }

    /// A `log.v1.Log` client on a new connection, accepting messages as large as the node's
    /// largest record.
    pub async fn log_client(&self) -> Result<LogClient<Channel>, NodeProcessError> {
        Ok(LogClient::new(self.channel().await?).max_decoding_message_size(usize::MAX))
    }

    /// A `grpc.health.v1.Health` client on a new connection.
    pub async fn health_client(&self) -> Result<HealthClient<Channel>, NodeProcessError> {
        Ok(HealthClient::new(self.channel().await?))
    }

    /// Sends SIGTERM without waiting: the node starts draining.
    pub fn signal_term(&mut self) -> Result<(), NodeProcessError> {
        self.running.signal(libc::SIGTERM)
    }

    /// Waits, up to the stop deadline, for the process to exit (after [`Self::signal_term`], or
    /// on its own).
    pub async fn wait_exit(&mut self) -> Result<ExitStatus, NodeProcessError> {
        self.running.wait_exit(self.options.stop_deadline).await
    }

    /// SIGTERM, then waits for the exit: a clean shutdown, whose status says how it went.
    pub async fn terminate(&mut self) -> Result<ExitStatus, NodeProcessError> {
        if let Some(status) = self.running.try_status()? {
            return Ok(status);
        }
        self.signal_term()?;
        self.wait_exit().await
    }

    /// SIGKILL, then waits for the exit: a crash.
    pub async fn kill(&mut self) -> Result<ExitStatus, NodeProcessError> {
        if let Some(status) = self.running.try_status()? {
            return Ok(status);
        }
        self.running.signal(libc::SIGKILL)?;
        self.wait_exit().await
    }
}

/// One spawned process and the thread draining its stderr.
#[derive(Debug)]
struct Running {
    child: Child,
    stderr: StderrLog,
    /// Lines as they arrive, for whoever waits for a particular one.
    lines: mpsc::UnboundedReceiver<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Result<Self, NodeProcessError> {
        let mut child = command.spawn().map_err(|source| NodeProcessError::Spawn {
            binary: PathBuf::from(command.get_program()),
            source,
        })?;
        let (tx, lines) = mpsc::unbounded_channel();
        let stderr = match child.stderr.take() {
            Some(pipe) => StderrLog::drain(pipe, tx),
            None => StderrLog::default(),
        };
        Ok(Running {
            child,
            stderr,
            lines,
        })
    }

    /// Spawns a node and waits for its serving line, which gives the bound address.
    async fn start(
        options: &NodeOptions,
        binary: &Path,
        data_dir: &Path,
    ) -> Result<(Self, SocketAddr), NodeProcessError> {
        let mut running = Running::spawn(options.command(binary, data_dir))?;
        let deadline = Instant::now() + options.start_deadline;
        loop {
            match tokio::time::timeout_at(deadline, running.lines.recv()).await {
                Ok(Some(line)) => {
                    if let Some(addr) = serving_addr(&line) {
                        return Ok((running, addr));
                    }
                }
                Ok(None) => {
                    // Stderr closed: the process is exiting (or closed it, which a node
                    // never does); its status says which.
                    let status = running.wait_exit(options.stop_deadline).await?;
                    return Err(NodeProcessError::ExitedBeforeServing {
                        status,
                        stderr: running.stderr.tail(),
                    });
                }
                Err(_) => {
                    return Err(NodeProcessError::StartTimeout {
                        deadline: options.start_deadline,
                        stderr: running.stderr.tail(),
                    });
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn try_status(&mut self) -> Result<Option<ExitStatus>, NodeProcessError> {
        self.child
            .try_wait()
            .map_err(|source| NodeProcessError::Wait {
                pid: self.child.id(),
                source,
            })
    }

    #[allow(unsafe_code)]
    fn signal(&mut self, signal: i32) -> Result<(), NodeProcessError> {
        let pid = self.child.id();
        // Never signal a reaped child: its pid may belong to another process by now.
        if self.try_status()?.is_some() {
            return Ok(());
        }
        let raw_pid = libc::pid_t::try_from(pid).map_err(|_| NodeProcessError::Signal {
            pid,
            signal,
            source: std::io::Error::other("pid does not fit pid_t"),
        })?;
        // SAFETY: kill(2) takes plain integers and touches no memory of this process. The pid
        // is our own unreaped child (checked just above), so it names that process.
        if unsafe { libc::kill(raw_pid, signal) } == 0 {
            Ok(())
        } else {
            Err(NodeProcessError::Signal {
                pid,
                signal,
                source: std::io::Error::last_os_error(),
            })
        }
    }

    /// Polls for the exit until `deadline` (no blocking wait: the runtime keeps serving the
    /// test's clients meanwhile, whose calls the node may be draining).
    async fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus, NodeProcessError> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() >= until {
                return Err(NodeProcessError::ExitTimeout {
                    pid: self.pid(),
                    deadline,
                    stderr: self.stderr.tail(),
                });
            }
            tokio::time::sleep(EXIT_POLL_INTERVAL).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Errors mean it already exited and was reaped, which is what we want.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- end of the stderr of node pid {} ---\n{}",
                self.child.id(),
                self.stderr.tail()
            );
        }
    }
}

/// The address of a JSON `"serving"` log line: `{"message":"serving","rpc_addr":"..."}`.
fn serving_addr(line: &str) -> Option<SocketAddr> {
    serving_field(line, "rpc_addr")
}

/// An address field (`rpc_addr`, `http_addr`) of a JSON `"serving"` log line.
fn serving_field(line: &str, field: &str) -> Option<SocketAddr> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    if event.get("message")?.as_str()? != "serving" {
        return None;
    }
    event.get(field)?.as_str()?.parse().ok()
}

/// A process's stderr lines, collected by a thread that reads until the pipe closes.
#[derive(Debug, Default)]
struct StderrLog {
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl StderrLog {
    fn drain(pipe: ChildStderr, tx: mpsc::UnboundedSender<String>) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match pipe.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                {
                    let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
                    if kept.len() >= KEPT_STDERR_LINES {
                        kept.remove(0);
                    }
                    kept.push(line.clone());
                }
                // Nobody listening any more is fine: the line is kept above.
                let _ = tx.send(line);
            }
        });
        StderrLog {
            lines,
            reader: Some(reader),
        }
    }

    fn snapshot(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn tail(&self) -> StderrTail {
        let lines = self.snapshot();
        let skip = lines.len().saturating_sub(QUOTED_STDERR_LINES);
        StderrTail(lines[skip..].to_vec())
    }

    /// Every line, once the process has exited and the pipe is drained.
    fn join_all(&mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            // The reader never panics; a failed join only loses lines.
            let _ = reader.join();
        }
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_serving_line() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"serving","id":"node-0","rpc_addr":"127.0.0.1:4321","advertise_addr":"127.0.0.1:4321","target":"proglog_node::server"}"#;
        assert_eq!(
            serving_addr(line),
            Some(SocketAddr::from(([127, 0, 0, 1], 4321)))
        );
        assert_eq!(serving_addr(r#"{"message":"shutting down"}"#), None);
        assert_eq!(serving_addr("proglog-node: serving"), None);
    }
}
