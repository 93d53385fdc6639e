//! [`NetLab`]: real processes in network namespaces of their own, joined by a Linux bridge, so
//! black-box tests can run several `proglog-node`s that reach each other by hostname and can be
//! cut off from each other (a network partition) and reconnected.
//!
//! # Topology
//!
//! A lab is one bridge in the root namespace and one namespace per host. Each namespace has `lo`
//! up and one veth pair: `eth0` inside with `10.A.B.(i+2)/24`, the other end a port of the bridge.
//! By default the root namespace gets no address on the bridge, so a lab is a closed layer-2
//! segment: its traffic never reaches the host's networks, and labs cannot see each other even if
//! their subnets happened to overlap.
//!
//! [`NetLab::create_with_host_access`] also gives the bridge `10.A.B.1/24` in the root namespace,
//! so the test process itself (and anything else in the root namespace) reaches every host at
//! [`NetLab::ip`] without entering a namespace. The hosts still have no route beyond their /24,
//! so their traffic stays inside the lab; and the root namespace is just one more party on the
//! bridge, which a partition cuts off from the partitioned host like every other. Such a lab
//! refuses to start when the root namespace already has an address in its subnet, as two labs
//! both reachable from the root namespace on the same subnet would make its routing ambiguous.
//!
//! # Hostnames
//!
//! `ip netns exec <ns>` bind-mounts every file under `/etc/netns/<ns>/` over the same file under
//! `/etc/` for the program it runs, so [`NetLab::create`] writes `/etc/netns/<ns>/hosts` mapping
//! every host's names to its address. Programs started through [`NetLab::command`] resolve them
//! with the ordinary resolver (`getaddrinfo`), with no DNS server involved.
//!
//! # Partitions
//!
//! [`NetLab::partition`] sets the host's bridge port down: its packets are dropped at the bridge
//! and the host's `eth0` loses carrier, so connections neither complete nor get reset (as in a
//! real partition, TCP retransmits until it times out). [`NetLab::heal`] sets the port up again.
//! The partitioned host still reaches itself, at its own address as well as on `lo`: a local
//! address keeps its local route without carrier, so a client started in the host's namespace
//! (with [`NetLab::command`]) can talk to a server there during a partition.
//!
//! # Names and cleanup
//!
//! Names embed the process id and a process-wide lab counter, and each live lab of a process has
//! its own subnet, so labs run in parallel within a test binary and across test binaries. Dropping
//! a lab deletes what it created, in reverse order; a failed deletion is reported on stderr.
//! Processes still running in a namespace keep it alive (unnamed) until they exit, so stop them
//! before dropping the lab.
//!
//! This needs root (`CAP_NET_ADMIN` and `CAP_SYS_ADMIN`) and `ip` from iproute2; tests call
//! [`NetLab::available`] first and skip when it says why not.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Most hosts in one lab: addresses run from `.2` to `.201` of the lab's /24.
pub const MAX_HOSTS: usize = 200;

/// The interface name of each host's end of its veth pair, inside its namespace.
pub const HOST_INTERFACE: &str = "eth0";

/// Labs alive at once in one process: each has its own subnet `10.(200 + slot).B.0/24`.
const SUBNET_SLOTS: usize = 50;

/// Where `ip netns exec` looks for files to bind-mount over `/etc`.
const NETNS_ETC_DIR: &str = "/etc/netns";

/// Where `ip netns add` keeps a handle on each named namespace.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Capability bits (see capabilities(7)) that creating namespaces and links needs.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Numbers labs within this process, for unique names.
static NEXT_LAB_NUMBER: AtomicU32 = AtomicU32::new(0);

/// Which subnet slots live labs of this process hold.
static SUBNET_SLOTS_IN_USE: Mutex<[bool; SUBNET_SLOTS]> = Mutex::new([false; SUBNET_SLOTS]);

/// Why a lab could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetLabError {
    /// A command could not be started at all.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed with {status}: {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A namespace's hosts file could not be written.
    #[error("cannot write the namespace hosts file {path}")]
    HostsFile {
        /// The file, or the directory that could not be created for it.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// More hosts were asked for than a lab's /24 holds.
    #[error("a lab holds at most {max} hosts, {requested} were asked for")]
    TooManyHosts {
        /// How many were asked for.
        requested: usize,
        /// The limit.
        max: usize,
    },
    /// A hostname would corrupt the hosts file.
    #[error(
        "invalid hostname {hostname:?} for host {host}: hostnames are non-empty and contain no whitespace or '#'"
    )]
    InvalidHostname {
        /// The host's index.
        host: usize,
        /// The hostname.
        hostname: String,
    },
    /// Every subnet slot of this process is held by a live lab.
    #[error("all {SUBNET_SLOTS} lab subnets of this process are in use; drop a lab first")]
    NoFreeSubnet,
    /// The root namespace already has an address in the subnet a lab with host access would
    /// take (another lab with host access, or one of the host's own networks).
    #[error(
        "the root namespace already has an address in {subnet}/24 ({existing}), so a lab there cannot get host access"
    )]
    SubnetInUse {
        /// The lab's subnet.
        subnet: Ipv4Addr,
        /// What `ip -o addr show to` listed.
        existing: String,
    },
}

/// One isolated network: a bridge in the root namespace and one namespace per host.
///
/// Host indexes passed to its methods must be below the number of hosts it was created with;
/// an index beyond that is a bug in the test and panics.
#[derive(Debug)]
pub struct NetLab {
    bridge: String,
    /// The bridge's address in the root namespace, for labs with host access.
    host_address: Option<Ipv4Addr>,
    hosts: Vec<LabHost>,
    /// What exists so far, in creation order; dropping undoes it in reverse.
    created: Vec<Created>,
    /// Released when the lab is dropped, after everything in `created` is gone.
    _subnet: SubnetSlot,
}

#[derive(Debug)]
struct LabHost {
    namespace: String,
    /// The veth end on the bridge, in the root namespace; partitions set it down.
    bridge_port: String,
    ip: Ipv4Addr,
}

/// Something a lab created, with what deleting it needs.
#[derive(Debug)]
enum Created {
    /// A link in the root namespace: the bridge or a veth (deleting either end deletes both).
    Link(String),
    Namespace(String),
    HostsDir(PathBuf),
}

impl NetLab {
    /// Creates a lab with one namespace per entry of `hosts`, whose strings are that host's
    /// hostnames (for example `proglog-0` and `proglog-0.proglog-peers.default.svc.cluster.local`).
    /// Every namespace resolves every host's names, and `localhost`.
    ///
    /// If a step fails, what was created before it is deleted again.
    pub fn create(hosts: &[Vec<String>]) -> Result<NetLab, NetLabError> {
        Self::create_lab(hosts, false)
    }

    /// Like [`NetLab::create`], and the root namespace (the test process) reaches every host at
    /// its [`NetLab::ip`] through an address of its own on the bridge, [`NetLab::host_address`].
    /// A partitioned host is cut off from the root namespace too.
    pub fn create_with_host_access(hosts: &[Vec<String>]) -> Result<NetLab, NetLabError> {
        Self::create_lab(hosts, true)
    }

    fn create_lab(hosts: &[Vec<String>], host_access: bool) -> Result<NetLab, NetLabError> {
        if hosts.len() > MAX_HOSTS {
            return Err(NetLabError::TooManyHosts {
                requested: hosts.len(),
                max: MAX_HOSTS,
            });
        }
        for (host, hostnames) in hosts.iter().enumerate() {
            if let Some(hostname) = hostnames.iter().find(|name| !is_valid_hostname(name)) {
                return Err(NetLabError::InvalidHostname {
                    host,
                    hostname: hostname.clone(),
                });
            }
        }
        let subnet = SubnetSlot::acquire()?;
        let pid = std::process::id();
        let lab_number = NEXT_LAB_NUMBER.fetch_add(1, Ordering::Relaxed);
        // Fixed width, so a veth name (tag then host index) is unambiguous, and `plv` + 8 + 3
        // characters stays within Linux's 15-character interface names.
        let tag = format!("{:05}{:03}", pid % 100_000, lab_number % 1000);
        let third_octet = u8::try_from(pid % 250).unwrap_or_default();
        let lab_hosts = (0..hosts.len())
            .zip(2u8..)
            .map(|(index, last_octet)| LabHost {
                namespace: format!("pl{tag}-{index}"),
                bridge_port: format!("plv{tag}{index}"),
                ip: Ipv4Addr::new(10, 200 + subnet.0, third_octet, last_octet),
            })
            .collect();
        let host_address = host_access.then(|| Ipv4Addr::new(10, 200 + subnet.0, third_octet, 1));
        let mut lab = NetLab {
            bridge: format!("plb{tag}"),
            host_address,
            hosts: lab_hosts,
            created: Vec::new(),
            _subnet: subnet,
        };
        // On failure `lab` is dropped here, which deletes what was created.
        lab.build(hosts)?;
        Ok(lab)
    }

    /// Whether labs can be created here; `Err` says why not (not root, missing capabilities,
    /// no `ip`), for tests to print before skipping.
    pub fn available() -> Result<(), String> {
        let status = fs::read_to_string("/proc/self/status")
            .map_err(|error| format!("cannot read /proc/self/status: {error}"))?;
        let effective_uid = status_field(&status, "Uid:")
            .and_then(|fields| fields.split_whitespace().nth(1))
            .ok_or("no effective uid in /proc/self/status")?;
        if effective_uid != "0" {
            return Err(format!(
                "network namespaces need root (running as uid {effective_uid})"
            ));
        }
        let capabilities = status_field(&status, "CapEff:")
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .ok_or("no effective capabilities in /proc/self/status")?;
        for (bit, name) in [
            (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
            (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        ] {
            if capabilities & (1 << bit) == 0 {
                return Err(format!(
                    "network namespaces need {name}, which root lacks here"
                ));
            }
        }
        let Some(ip) = ip_program() else {
            return Err("`ip` (iproute2) is not installed".to_owned());
        };
        match Command::new(ip)
            .args(["netns", "list"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(output) if output.status.success() => Ok(()),
            Ok(output) => Err(format!(
                "`ip netns list` failed with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(error) => Err(format!("cannot run {}: {error}", ip.display())),
        }
    }

    /// The name of host `i`'s namespace (for `ip netns exec` and `ip -n`).
    pub fn ns_name(&self, i: usize) -> &str {
        &self.host(i).namespace
    }

    /// Host `i`'s address, which its hostnames resolve to in every namespace of the lab.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.host(i).ip
    }

    /// The bridge's name in the root namespace.
    pub fn bridge_name(&self) -> &str {
        &self.bridge
    }

    /// The root namespace's address on the bridge, for a lab made with
    /// [`NetLab::create_with_host_access`]; `None` for a closed lab.
    pub fn host_address(&self) -> Option<Ipv4Addr> {
        self.host_address
    }

    /// A command that runs `program` inside host `i`'s namespace; add arguments, stdio and
    /// environment as with any [`Command`]. `ip netns exec` execs the program in place of
    /// itself, so the child's pid is the program's and signals sent to it reach the program.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let (ip, args) = self.exec_prefix(i);
        let mut command = Command::new(ip);
        command.args(args).arg(program);
        command
    }

    /// The program and arguments that run a program, appended after them, inside host `i`'s
    /// namespace (`ip netns exec <ns>`), for helpers that build the command line themselves,
    /// such as [`crate::node_process::NodeOptions::wrapper()`]. Like [`NetLab::command`], it
    /// execs the program in place of itself.
    pub fn exec_prefix(&self, i: usize) -> (OsString, Vec<OsString>) {
        let ip = ip_program().unwrap_or(Path::new("ip"));
        let args = ["netns", "exec", self.ns_name(i)]
            .map(OsString::from)
            .to_vec();
        (ip.as_os_str().to_owned(), args)
    }

    /// A gRPC channel to `port` at host `i`'s own address, whose connections are made inside
    /// that host's namespace from `127.0.0.1`: the node sees a loopback caller, as it would a
    /// tool run beside it on the same machine (the admin service answers only those on a node
    /// without mutual TLS). Local delivery needs no carrier, so the channel keeps working while
    /// the host is partitioned.
    pub fn loopback_channel(&self, i: usize, port: u16) -> Channel {
        let connector = LoopbackConnector {
            namespace: Path::new(NETNS_RUN_DIR).join(self.ns_name(i)),
            target: SocketAddr::from((self.ip(i), port)),
        };
        // The URI only names the authority for HTTP/2; the connector decides where to connect.
        Endpoint::from_static("http://loopback.invalid").connect_with_connector_lazy(connector)
    }

    /// Cuts host `i` off from every other host, by setting its bridge port down. Takes effect
    /// when this returns. Partitioning a partitioned host is a no-op.
    pub fn partition(&self, i: usize) -> Result<(), NetLabError> {
        run_ip(&["link", "set", &self.host(i).bridge_port, "down"])
    }

    /// Reconnects host `i` after [`NetLab::partition`]. Healing a connected host is a no-op.
    /// Neighbour entries that failed during the partition are retried on the next packet, so
    /// the first connection may take a moment; poll for it.
    pub fn heal(&self, i: usize) -> Result<(), NetLabError> {
        run_ip(&["link", "set", &self.host(i).bridge_port, "up"])
    }

    fn host(&self, i: usize) -> &LabHost {
        self.hosts.get(i).unwrap_or_else(|| {
            panic!(
                "host index {i} out of range: the lab has {} hosts",
                self.hosts.len()
            )
        })
    }

    /// Creates the bridge, then each namespace with its veth pair, then the hosts files,
    /// recording each piece in `created` as soon as it exists.
    fn build(&mut self, hostnames: &[Vec<String>]) -> Result<(), NetLabError> {
        let bridge = self.bridge.clone();
        // No STP and no forwarding delay: a port forwards as soon as it is up, so a heal takes
        // effect at once rather than after the default 15 s of listening and learning.
        run_ip(&[
            "link",
            "add",
            &bridge,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
        self.created.push(Created::Link(bridge.clone()));
        if let Some(address) = self.host_address {
            // Labs of one process never share a subnet, but another process's lab with host
            // access, or one of the host's networks, may hold this one.
            let subnet = Ipv4Addr::from(u32::from(address) & 0xffff_ff00);
            let existing = ip_output(&["-o", "-4", "addr", "show", "to", &format!("{subnet}/24")])?;
            if !existing.trim().is_empty() {
                return Err(NetLabError::SubnetInUse {
                    subnet,
                    existing: existing.trim().to_owned(),
                });
            }
            // Deleted with the bridge.
            run_ip(&["addr", "add", &format!("{address}/24"), "dev", &bridge])?;
        }
        run_ip(&["link", "set", &bridge, "up"])?;

        let hosts: Vec<(String, String, Ipv4Addr)> = self
            .hosts
            .iter()
            .map(|host| (host.namespace.clone(), host.bridge_port.clone(), host.ip))
            .collect();
        for (namespace, bridge_port, ip) in &hosts {
            run_ip(&["netns", "add", namespace])?;
            self.created.push(Created::Namespace(namespace.clone()));
            run_ip(&["-n", namespace, "link", "set", "lo", "up"])?;
            // The peer is created directly inside the namespace, so every host's is `eth0`.
            run_ip(&[
                "link",
                "add",
                bridge_port,
                "type",
                "veth",
                "peer",
                "name",
                HOST_INTERFACE,
                "netns",
                namespace,
            ])?;
            self.created.push(Created::Link(bridge_port.clone()));
            run_ip(&["link", "set", bridge_port, "master", &bridge, "up"])?;
            run_ip(&[
                "-n",
                namespace,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                HOST_INTERFACE,
            ])?;
            run_ip(&["-n", namespace, "link", "set", HOST_INTERFACE, "up"])?;
        }

        let hosts_file = self.hosts_file(hostnames);
        for (namespace, _, _) in &hosts {
            let dir = Path::new(NETNS_ETC_DIR).join(namespace);
            fs::create_dir_all(&dir).map_err(|source| NetLabError::HostsFile {
                path: dir.clone(),
                source,
            })?;
            self.created.push(Created::HostsDir(dir.clone()));
            let path = dir.join("hosts");
            fs::write(&path, &hosts_file)
                .map_err(|source| NetLabError::HostsFile { path, source })?;
        }
        Ok(())
    }

    /// The hosts file every namespace gets: localhost, then each host's names.
    fn hosts_file(&self, hostnames: &[Vec<String>]) -> String {
        let mut text = String::from(
            "# Written by proglog-tests NetLab\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        for (host, names) in self.hosts.iter().zip(hostnames) {
            if !names.is_empty() {
                text.push_str(&format!("{}\t{}\n", host.ip, names.join(" ")));
            }
        }
        text
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        while let Some(created) = self.created.pop() {
            let result = match &created {
                Created::Link(name) => run_ip(&["link", "del", name]),
                Created::Namespace(name) => run_ip(&["netns", "del", name]),
                Created::HostsDir(dir) => {
                    fs::remove_dir_all(dir).map_err(|source| NetLabError::HostsFile {
                        path: dir.clone(),
                        source,
                    })
                }
            };
            if let Err(error) = result {
                eprintln!("NetLab cleanup: cannot delete {created:?}: {error}");
            }
        }
    }
}

/// A subnet slot held by a live lab of this process; dropping it frees the slot.
#[derive(Debug)]
struct SubnetSlot(u8);

impl SubnetSlot {
    fn acquire() -> Result<SubnetSlot, NetLabError> {
        let mut in_use = SUBNET_SLOTS_IN_USE
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (index, slot) = in_use
            .iter_mut()
            .enumerate()
            .find(|(_, used)| !**used)
            .ok_or(NetLabError::NoFreeSubnet)?;
        let number = u8::try_from(index).map_err(|_| NetLabError::NoFreeSubnet)?;
        *slot = true;
        Ok(SubnetSlot(number))
    }
}

impl Drop for SubnetSlot {
    fn drop(&mut self) {
        let mut in_use = SUBNET_SLOTS_IN_USE
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = in_use.get_mut(usize::from(self.0)) {
            *slot = false;
        }
    }
}

fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '#')
}

/// The value after `key` on its line of `/proc/self/status`.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| line.strip_prefix(key))
}

/// Where `ip` is: on `PATH`, or in the sbin directories a non-login `PATH` may leave out.
fn ip_program() -> Option<&'static Path> {
    static IP: OnceLock<Option<PathBuf>> = OnceLock::new();
    IP.get_or_init(|| {
        let on_path = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join("ip"))
            .find(|candidate| candidate.is_file())
    })
    .as_deref()
}

/// Runs `ip` with `args`, failing with the command line and its stderr.
fn run_ip(args: &[&str]) -> Result<(), NetLabError> {
    ip_output(args).map(drop)
}

/// Runs `ip` with `args` and returns its stdout, failing with the command line and its stderr.
fn ip_output(args: &[&str]) -> Result<String, NetLabError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new(ip_program().unwrap_or(Path::new("ip")))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetLabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetLabError::CommandFailed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Connects to `target` from `127.0.0.1`, with a socket made inside the network namespace at
/// `namespace` (a socket belongs to the namespace it was created in).
#[derive(Debug, Clone)]
struct LoopbackConnector {
    namespace: PathBuf,
    target: SocketAddr,
}

impl tower_service::Service<Uri> for LoopbackConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let LoopbackConnector { namespace, target } = self.clone();
        Box::pin(async move {
            // A thread of its own enters the namespace: a runtime thread must stay where it is.
            let (sender, receiver) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = sender.send(loopback_socket_in(&namespace));
            });
            let socket = receiver
                .await
                .map_err(|_| io::Error::other("the namespace thread ended without a socket"))??;
            Ok(TokioIo::new(socket.connect(target).await?))
        })
    }
}

/// A TCP socket bound to `127.0.0.1` inside the namespace at `namespace`. Moves the calling
/// thread into that namespace for good: call it on a thread that ends afterwards.
fn loopback_socket_in(namespace: &Path) -> io::Result<TcpSocket> {
    let handle = fs::File::open(namespace)?;
    // SAFETY: setns(2) takes a valid descriptor, which `handle` holds open for the call, and
    // changes only this thread's network namespace.
    #[allow(unsafe_code)]
    let entered = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    if entered != 0 {
        return Err(io::Error::last_os_error());
    }
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(socket)
}
