//! `proglog-node dev`: a local cluster in one command, for trying proglog out.
//!
//! Starts this same binary several times on 127.0.0.1 (node `i` on RPC port `base + 10 i`,
//! gossip `base + 10 i + 1`, peer and admin services `base + 10 i + 2`, HTTP
//! `base + 1000 + 10 i`), with the first node's gossip address as the seed and every node as an
//! initial voter, waits for a leader, prints the addresses, and stops the nodes with SIGTERM
//! on Ctrl-C. Data stays in the directory, so running it again resumes the same cluster.
//!
//! The nodes talk to each other over mutual TLS, as a production cluster should: the first run
//! makes a CA and a certificate for each node (and one, `admin`, for calling the admin service)
//! under `<dir>/tls`, and later runs reuse them. Clients use the RPC ports in plaintext. Segments are 64 MiB (preallocated) unless `PROGLOG_SEGMENT_BYTES`
//! says otherwise, and the nodes split the machine's cores between their async runtimes
//! (`--worker-threads`) unless `PROGLOG_WORKER_THREADS` says otherwise.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use proglog_proto::log::v1::GetServersRequest;
use proglog_proto::log::v1::log_client::LogClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// What `dev` starts.
#[derive(Debug, Clone)]
pub struct DevCluster {
    /// Number of nodes (all voters).
    pub nodes: u16,
    /// Where each node keeps its data (`<dir>/node-<i>`) and its log file.
    pub dir: PathBuf,
    /// RPC port of the first node.
    pub base_port: u16,
    /// Durability of every node.
    pub durability: String,
}

struct DevNode {
    id: String,
    rpc_addr: String,
    http_addr: String,
    log_file: PathBuf,
    child: Child,
}

/// Segment size of the dev cluster's nodes (64 MiB) unless `PROGLOG_SEGMENT_BYTES` is set.
const DEV_SEGMENT_BYTES: u64 = 64 << 20;

/// Runs the cluster until `shutdown`, then stops every node and waits for it.
pub async fn run(cluster: DevCluster, shutdown: CancellationToken) -> anyhow::Result<()> {
    if cluster.nodes == 0 || cluster.nodes > 9 {
        bail!("--nodes must be 1 to 9, not {}", cluster.nodes);
    }
    let binary = std::env::current_exe().context("find this program's path")?;
    std::fs::create_dir_all(&cluster.dir)
        .with_context(|| format!("create {}", cluster.dir.display()))?;
    let ids: Vec<String> = (0..cluster.nodes).map(|i| format!("node-{i}")).collect();
    let port = |i: u16, offset: u16| cluster.base_port + 10 * i + offset;
    let tls = DevTls::load_or_make(&cluster.dir.join("tls"), &ids)?;
    let peer_listeners = (0..cluster.nodes)
        .zip(&ids)
        .map(|(i, id)| format!("{id}=127.0.0.1:{}", port(i, 2)))
        .collect::<Vec<_>>()
        .join(",");
    let seed = format!("127.0.0.1:{}", port(0, 1));
    let threads_each = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .div_ceil(usize::from(cluster.nodes))
        .max(1);
    let mut nodes = Vec::new();
    for (i, id) in (0..cluster.nodes).zip(&ids) {
        let rpc_addr = format!("127.0.0.1:{}", port(i, 0));
        let http_addr = format!("127.0.0.1:{}", port(i, 1000));
        let log_file = cluster.dir.join(format!("{id}.log"));
        let log = std::fs::File::create(&log_file)
            .with_context(|| format!("create {}", log_file.display()))?;
        let mut command = Command::new(&binary);
        if std::env::var_os("PROGLOG_SEGMENT_BYTES").is_none() {
            // Segments are preallocated; a local cluster needs no 1 GiB per node.
            command.env("PROGLOG_SEGMENT_BYTES", DEV_SEGMENT_BYTES.to_string());
        }
        if std::env::var_os("PROGLOG_WORKER_THREADS").is_none() {
            // The nodes share this machine's cores: threads beyond a node's share only add
            // hand-offs between them.
            command.env("PROGLOG_WORKER_THREADS", threads_each.to_string());
        }
        let child = command
            .env_remove("PROGLOG_DATA_DIR")
            .arg("--id")
            .arg(id)
            .arg("--data-dir")
            .arg(cluster.dir.join(id))
            .arg("--rpc-addr")
            .arg(&rpc_addr)
            .arg("--http-addr")
            .arg(&http_addr)
            .arg("--gossip-addr")
            .arg(format!("127.0.0.1:{}", port(i, 1)))
            .arg("--peer-addr")
            .arg(format!("127.0.0.1:{}", port(i, 2)))
            .arg("--peer-listeners")
            .arg(&peer_listeners)
            .arg("--peer-tls-cert")
            .arg(tls.cert(id))
            .arg("--peer-tls-key")
            .arg(tls.key(id))
            .arg("--peer-tls-ca")
            .arg(tls.ca())
            .arg("--join")
            .arg(&seed)
            .arg("--initial-voters")
            .arg(ids.join(","))
            .arg("--durability")
            .arg(&cluster.durability)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {id}"))?;
        nodes.push(DevNode {
            id: id.clone(),
            rpc_addr,
            http_addr,
            log_file,
            child,
        });
    }
    let outcome = tokio::select! {
        leader = wait_for_leader(&mut nodes) => leader.map(|leader| print_cluster(&cluster.dir, &nodes, &leader, &tls)),
        _ = shutdown.cancelled() => Ok(()),
    };
    if outcome.is_ok() {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            exited = first_exit(&mut nodes) => eprintln!("proglog dev: {exited}; stopping the others"),
        }
    }
    stop(&mut nodes).await;
    outcome
}

async fn wait_for_leader(nodes: &mut [DevNode]) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        for node in nodes.iter_mut() {
            if let Ok(Some(status)) = node.child.try_wait() {
                bail!(
                    "{} exited ({status}) while starting; see {} (is a port in use?)",
                    node.id,
                    node.log_file.display()
                );
            }
        }
        if let Ok(mut client) = LogClient::connect(format!("http://{}", nodes[0].rpc_addr)).await
            && let Ok(servers) = client.get_servers(GetServersRequest::default()).await
            && let Some(leader) = servers.get_ref().servers.iter().find(|s| s.is_leader)
        {
            return Ok(leader.id.clone());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no leader after 60 s; see the logs in the data directory");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_cluster(dir: &Path, nodes: &[DevNode], leader: &str, tls: &DevTls) {
    println!(
        "proglog dev: {} nodes on 127.0.0.1, data in {}",
        nodes.len(),
        dir.display()
    );
    for node in nodes {
        let role = if node.id == leader { "  (leader)" } else { "" };
        println!(
            "  {}  rpc {}  metrics http://{}/metrics  log {}{role}",
            node.id,
            node.rpc_addr,
            node.http_addr,
            node.log_file.display()
        );
    }
    let any = &nodes[nodes.len() - 1].rpc_addr;
    println!("Produce and consume through any node (followers forward produces to the leader):");
    println!("  proglog --addr {any} produce hello world");
    println!("  proglog --addr {any} consume --from 0");
    println!(
        "The nodes talk to each other over mutual TLS (CA and certificates in {}); the admin \
         service is on each node's peer port, for the `admin` certificate:",
        tls.dir.display()
    );
    println!(
        "  grpcurl -cacert {} -cert {} -key {} 127.0.0.1:{} log.v1.Admin/ClusterStatus",
        tls.ca().display(),
        tls.cert("admin").display(),
        tls.key("admin").display(),
        nodes[0]
            .rpc_addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .map_or(0, |port| port + 2)
    );
    println!("Ctrl-C stops the cluster; run the same command again to resume it.");
}

/// The dev cluster's CA and certificates, PEM files under one directory.
struct DevTls {
    dir: PathBuf,
}

impl DevTls {
    /// The files in `dir`, made (with a new CA) when any is missing: a certificate for each of
    /// `ids` and for `admin`, valid for 127.0.0.1 and localhost.
    fn load_or_make(dir: &Path, ids: &[String]) -> anyhow::Result<DevTls> {
        let tls = DevTls {
            dir: dir.to_path_buf(),
        };
        let names: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .chain(std::iter::once("admin"))
            .collect();
        let complete = tls.ca().exists()
            && names
                .iter()
                .all(|name| tls.cert(name).exists() && tls.key(name).exists());
        if complete {
            return Ok(tls);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let ca_key = KeyPair::generate().context("make the dev CA's key")?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).context("dev CA")?;
        ca.distinguished_name
            .push(DnType::CommonName, "proglog dev CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).context("sign the dev CA")?.pem();
        let issuer = Issuer::new(ca, ca_key);
        write_private(&tls.ca(), ca_pem.as_bytes())?;
        for name in names {
            let key = KeyPair::generate().context("make a certificate key")?;
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .context("dev certificate")?;
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params
                .signed_by(&key, &issuer)
                .with_context(|| format!("sign the certificate of {name}"))?;
            write_private(&tls.cert(name), cert.pem().as_bytes())?;
            write_private(&tls.key(name), key.serialize_pem().as_bytes())?;
        }
        Ok(tls)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }
}

/// Writes `bytes` to `path`, readable by the owner only (private keys among them).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("write {}", path.display()))
}

async fn first_exit(nodes: &mut [DevNode]) -> String {
    loop {
        for node in nodes.iter_mut() {
            if let Ok(Some(status)) = node.child.try_wait() {
                return format!(
                    "{} exited ({status}); see {}",
                    node.id,
                    node.log_file.display()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to every node (they hand leadership over, drain and sync), then wait; SIGKILL after
/// 20 s.
async fn stop(nodes: &mut [DevNode]) {
    for node in nodes.iter() {
        if let Some(pid) = node
            .child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for node in nodes.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(20), node.child.wait())
            .await
            .is_err()
        {
            let _ = node.child.kill().await;
        }
    }
}
