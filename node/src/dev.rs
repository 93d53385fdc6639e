//! `proglog-node dev`: a local cluster in one command, for trying proglog out.
//!
//! Starts this same binary several times on 127.0.0.1 (node `i` on RPC port `base + 10 i`,
//! gossip `base + 10 i + 1`, HTTP `base + 1000 + 10 i`), with the first node's gossip address as
//! the seed and every node as an initial voter, waits for a leader, prints the addresses, and
//! stops the nodes with SIGTERM on Ctrl-C. Data stays in the directory, so running it again
//! resumes the same cluster. Segments are 64 MiB (preallocated) unless `PROGLOG_SEGMENT_BYTES`
//! says otherwise, and the nodes split the machine's cores between their async runtimes
//! (`--worker-threads`) unless `PROGLOG_WORKER_THREADS` says otherwise.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use proglog_proto::log::v1::ClusterStatusRequest;
use proglog_proto::log::v1::admin_client::AdminClient;

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
        leader = wait_for_leader(&mut nodes) => leader.map(|leader| print_cluster(&cluster.dir, &nodes, &leader)),
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
        if let Ok(mut admin) = AdminClient::connect(format!("http://{}", nodes[0].rpc_addr)).await
            && let Ok(status) = admin.cluster_status(ClusterStatusRequest {}).await
            && !status.get_ref().leader_id.is_empty()
        {
            return Ok(status.into_inner().leader_id);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no leader after 60 s; see the logs in the data directory");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_cluster(dir: &Path, nodes: &[DevNode], leader: &str) {
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
    println!("Ctrl-C stops the cluster; run the same command again to resume it.");
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
