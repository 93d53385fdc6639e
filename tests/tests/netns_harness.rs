//! The [`NetLab`] harness itself: hosts resolve each other by name and connect, a partition cuts
//! one host off from all others until it is healed, the root namespace reaches the hosts only of a
//! lab with host access (and a partition cuts it off too), and dropping a lab leaves nothing
//! behind.
//!
//! The programs in the namespaces are small Python 3 scripts (a line-echo server and a client),
//! since CI has Python 3 and these tests should not depend on the node. Each test skips, printing
//! why, when [`NetLab::available`] says labs cannot be created here (not root, no `ip`).

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proglog_tests::netns::NetLab;

/// Each namespace has its own port space, so a fixed port is fine.
const ECHO_PORT: &str = "7000";

/// Serves forever: each connection gets its first line echoed back, then is closed.
const ECHO_SERVER: &str = r#"
import socket, sys
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(16)
while True:
    connection, _ = server.accept()
    with connection:
        connection.settimeout(5)
        try:
            connection.sendall(connection.makefile("rb").readline())
        except OSError:
            pass
"#;

/// Connects to `host:port` with a timeout, sends a line and checks it comes back; prints `ok` or
/// `error: ...` and exits non-zero on error.
const ECHO_CLIENT: &str = r#"
import socket, sys
host, port, timeout, message = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(message.encode() + b"\n")
        reply = connection.makefile("rb").readline().decode().rstrip("\n")
except OSError as error:
    print(f"error: {error!r}")
    sys.exit(1)
if reply != message:
    print(f"error: sent {message!r}, got {reply!r}")
    sys.exit(1)
print("ok")
"#;

/// Prints each name the host resolves, as `name address` lines.
const RESOLVER: &str = r#"
import socket, sys
for name in sys.argv[1:]:
    print(name, socket.gethostbyname(name))
"#;

/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: &str = "1";

/// How long a condition polled for may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// Kills and reaps a child however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lab for `hosts` hosts named `proglog-<i>` and `proglog-<i>.proglog-peers.default.svc.cluster.local`,
/// or `None` (after printing why) when labs cannot be created here.
fn lab_or_skip(hosts: usize) -> Option<NetLab> {
    if let Err(reason) = NetLab::available() {
        println!("skipped: {reason}");
        return None;
    }
    let hostnames: Vec<Vec<String>> = (0..hosts)
        .map(|i| {
            vec![
                format!("proglog-{i}"),
                format!("proglog-{i}.proglog-peers.default.svc.cluster.local"),
            ]
        })
        .collect();
    Some(NetLab::create(&hostnames).unwrap())
}

/// Like [`lab_or_skip`], with the root namespace on the bridge ([`NetLab::create_with_host_access`]).
fn lab_with_host_access_or_skip(hosts: usize) -> Option<NetLab> {
    if let Err(reason) = NetLab::available() {
        println!("skipped: {reason}");
        return None;
    }
    let hostnames: Vec<Vec<String>> = (0..hosts).map(|i| vec![format!("proglog-{i}")]).collect();
    Some(NetLab::create_with_host_access(&hostnames).unwrap())
}

fn start_echo_server(lab: &NetLab, host: usize) -> KillOnDrop {
    let child = lab
        .command(host, "python3")
        .args(["-c", ECHO_SERVER, ECHO_PORT])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// One echo round trip from namespace `from` to `target` (a hostname or address).
fn echo(lab: &NetLab, from: usize, target: &str) -> Result<(), String> {
    let output = lab
        .command(from, "python3")
        .args(["-c", ECHO_CLIENT, target, ECHO_PORT, CONNECT_TIMEOUT])
        .arg(format!("hello from {}", lab.ns_name(from)))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() && stdout == "ok" {
        Ok(())
    } else {
        Err(format!(
            "{stdout} {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// One echo round trip from the root namespace (this process's) to `target`.
fn echo_from_root(target: &str) -> Result<(), String> {
    let output = Command::new("python3")
        .args(["-c", ECHO_CLIENT, target, ECHO_PORT, CONNECT_TIMEOUT])
        .arg("hello from the root namespace")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() && stdout == "ok" {
        Ok(())
    } else {
        Err(format!(
            "{stdout} {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Polls `condition` until it returns `Ok`, failing the test after [`DEADLINE`] with the last
/// error; returns how many attempts it took.
fn poll_until(what: &str, mut condition: impl FnMut() -> Result<(), String>) -> u32 {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match condition() {
            Ok(()) => return attempts,
            Err(error) if start.elapsed() > DEADLINE => {
                panic!("{what}: not within {DEADLINE:?}; last error: {error}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().unwrap()
}

#[test]
fn hosts_reach_each_other_by_hostname() {
    let Some(lab) = lab_or_skip(3) else { return };
    let server = start_echo_server(&lab, 1);

    poll_until("proglog-1 reachable from ns 0", || {
        echo(&lab, 0, "proglog-1")
    });
    echo(&lab, 2, "proglog-1.proglog-peers.default.svc.cluster.local").unwrap();
    // `lo` is up in each namespace, and 127.0.0.1 there is the namespace's own.
    echo(&lab, 1, "127.0.0.1").unwrap();
    assert!(echo(&lab, 0, "127.0.0.1").is_err());

    // Every namespace resolves every host's names to that host's address.
    let names = [
        "proglog-0",
        "proglog-1",
        "proglog-2.proglog-peers.default.svc.cluster.local",
        "localhost",
    ];
    let output = lab
        .command(0, "python3")
        .args(["-c", RESOLVER])
        .args(names)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let resolved = String::from_utf8(output.stdout).unwrap();
    let expected = format!(
        "proglog-0 {}\nproglog-1 {}\nproglog-2.proglog-peers.default.svc.cluster.local {}\nlocalhost 127.0.0.1\n",
        lab.ip(0),
        lab.ip(1),
        lab.ip(2)
    );
    assert_eq!(resolved, expected);

    // `ip netns exec` replaced itself with the program, so the child's pid is the server's.
    // (A version manager's `python3` shim may exec the real interpreter by its full path.)
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.0.id())).unwrap();
    let program = cmdline.split(|&byte| byte == 0).next().unwrap();
    let program_name =
        String::from_utf8_lossy(program.rsplit(|&byte| byte == b'/').next().unwrap());
    assert!(
        program_name.starts_with("python3"),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
}

#[test]
fn partition_cuts_a_host_off_until_healed() {
    let Some(lab) = lab_or_skip(3) else { return };
    let _server_1 = start_echo_server(&lab, 1);
    let _server_2 = start_echo_server(&lab, 2);
    poll_until("proglog-1 reachable from ns 0", || {
        echo(&lab, 0, "proglog-1")
    });
    poll_until("proglog-2 reachable from ns 0", || {
        echo(&lab, 0, "proglog-2")
    });

    lab.partition(1).unwrap();
    let took = poll_until("proglog-1 unreachable from ns 0", || {
        match echo(&lab, 0, "proglog-1") {
            Ok(()) => Err("still reachable".to_owned()),
            Err(_) => Ok(()),
        }
    });
    println!(
        "partition observed on attempt {took} (each attempt times out after {CONNECT_TIMEOUT} s)"
    );
    // The partitioned host is cut off from every other host, in both directions...
    let error = echo(&lab, 2, "proglog-1").unwrap_err();
    println!("ns 2 -> proglog-1 while partitioned: {error}");
    echo(&lab, 1, "proglog-2").unwrap_err();
    // ...while the others still reach each other.
    echo(&lab, 0, "proglog-2").unwrap();

    lab.heal(1).unwrap();
    let took = poll_until("proglog-1 reachable from ns 0 after healing", || {
        echo(&lab, 0, "proglog-1")
    });
    println!("heal observed on attempt {took}");
    echo(&lab, 1, "proglog-2").unwrap();
    echo(&lab, 2, "proglog-1").unwrap();
}

#[test]
fn drop_removes_namespaces_links_and_hosts_files() {
    let Some(lab) = lab_or_skip(2) else { return };
    let Some(other) = lab_or_skip(2) else { return };
    // Labs alive at the same time get their own names and subnets.
    assert_ne!(lab.bridge_name(), other.bridge_name());
    assert_ne!(lab.ns_name(0), other.ns_name(0));
    assert_ne!(lab.ip(0), other.ip(0));

    let bridge = lab.bridge_name().to_owned();
    let namespaces = [lab.ns_name(0).to_owned(), lab.ns_name(1).to_owned()];
    let ports_output = ip(&["-o", "link", "show", "master", &bridge]);
    assert!(ports_output.status.success(), "{ports_output:?}");
    let ports: Vec<String> = String::from_utf8(ports_output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            // `<index>: <name>@<peer>: ...`
            let name = line.split(": ").nth(1).unwrap();
            name.split('@').next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ports.len(), 2, "{ports:?}");
    let netns_list = String::from_utf8(ip(&["netns", "list"]).stdout).unwrap();
    for namespace in &namespaces {
        assert!(netns_list.contains(namespace.as_str()), "{netns_list}");
        assert!(
            std::path::Path::new("/etc/netns")
                .join(namespace)
                .join("hosts")
                .is_file()
        );
    }

    drop(lab);

    let netns_list = String::from_utf8(ip(&["netns", "list"]).stdout).unwrap();
    for namespace in &namespaces {
        assert!(!netns_list.contains(namespace.as_str()), "{netns_list}");
        assert!(!std::path::Path::new("/etc/netns").join(namespace).exists());
    }
    for link in ports.iter().chain([&bridge]) {
        assert!(
            !ip(&["link", "show", link]).status.success(),
            "{link} still exists"
        );
    }
    // The other lab is untouched.
    assert!(ip(&["link", "show", other.bridge_name()]).status.success());
}

#[test]
fn host_access_reaches_every_host_until_it_is_partitioned() {
    let Some(lab) = lab_with_host_access_or_skip(2) else {
        return;
    };
    let host_address = lab.host_address().unwrap();
    let _server_0 = start_echo_server(&lab, 0);
    let _server_1 = start_echo_server(&lab, 1);
    let target_0 = lab.ip(0).to_string();
    let target_1 = lab.ip(1).to_string();
    poll_until("host 0 reachable from the root namespace", || {
        echo_from_root(&target_0)
    });
    poll_until("host 1 reachable from the root namespace", || {
        echo_from_root(&target_1)
    });
    // The root namespace's address is in the lab's subnet and on the bridge.
    assert_eq!(host_address.octets()[..3], lab.ip(0).octets()[..3]);
    let addresses =
        String::from_utf8(ip(&["-o", "-4", "addr", "show", "dev", lab.bridge_name()]).stdout)
            .unwrap();
    assert!(
        addresses.contains(&format!("{host_address}/24")),
        "{addresses}"
    );

    // A partition cuts the host off from the root namespace too, but not from itself...
    lab.partition(1).unwrap();
    poll_until(
        "host 1 unreachable from the root namespace",
        || match echo_from_root(&target_1) {
            Ok(()) => Err("still reachable".to_owned()),
            Err(_) => Ok(()),
        },
    );
    echo(&lab, 1, &target_1).unwrap();
    // ...and leaves the others reachable.
    echo_from_root(&target_0).unwrap();

    lab.heal(1).unwrap();
    poll_until(
        "host 1 reachable from the root namespace after healing",
        || echo_from_root(&target_1),
    );
}

#[test]
fn a_closed_lab_is_unreachable_from_the_root_namespace() {
    let Some(lab) = lab_or_skip(1) else { return };
    assert_eq!(lab.host_address(), None);
    let _server = start_echo_server(&lab, 0);
    let target = lab.ip(0).to_string();
    // The server is up (seen from its own namespace) before the root namespace tries.
    poll_until("host 0 reachable from itself", || echo(&lab, 0, &target));
    echo_from_root(&target).unwrap_err();
}
