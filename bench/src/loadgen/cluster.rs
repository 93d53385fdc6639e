//! A proglog cluster seen from outside: which node leads, whether its followers caught up, and
//! how long a client waits for a committed produce after the leader is `kill -9`ed.
//!
//! # Failover, as measured
//!
//! One task produces records one at a time (concurrency 1) to the leader. After
//! `--warmup-seconds`, the leader's process gets SIGKILL; the clock starts just before the
//! `kill(2)` call. The call in flight fails (the connection is reset), and from then on the
//! client looks for the new leader the way a leader-aware client would: the
//! `proglog-leader-addr` hint of a not-leader answer when a survivor gives one, otherwise
//! `Admin/ClusterStatus` polled on every node every [`POLL_INTERVAL`] until one of the survivors
//! says it leads. The clock stops when a survivor acknowledges a produce, which under the
//! default `acks` means the record is committed on a majority (both survivors). The time at
//! which a survivor was first seen leading is reported too (`leader_seen_ms`), so the election
//! and the first commit can be told apart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use futures_util::future::join_all;
use proglog_bench::stats::Latencies;
use proglog_client::{Client, ClientError, Produce};
use proglog_proto::log::v1::admin_client::AdminClient;
use proglog_proto::log::v1::{ClusterStatusRequest, ClusterStatusResponse};
use rustix::process::{Pid, Signal, kill_process};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::report;

/// Metadata key of the leader's RPC address on a not-leader answer (`proglog_node::api`).
const LEADER_ADDR_METADATA: &str = "proglog-leader-addr";

/// Pause between two rounds of `ClusterStatus` polls.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Longest wait for one `ClusterStatus` answer.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Longest wait for a connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Longest wait for one produce during failover (a hung call must not stop the clock).
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(2);

/// Options of `proglog-loadgen failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// RPC addresses of the cluster's nodes, comma separated (loopback only).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Process ids of those nodes, comma separated, in the same order: the leader's gets
    /// SIGKILL.
    #[arg(long, value_delimiter = ',', required = true)]
    pids: Vec<i32>,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Seconds of steady load against the leader before the kill.
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,
    /// Give up when no survivor acknowledged a produce this many seconds after the kill.
    #[arg(long, default_value_t = 30.0)]
    timeout_seconds: f64,
    /// Name of this run in the report.
    #[arg(long, default_value = "proglog")]
    label: String,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    results: Option<PathBuf>,
}

/// The nodes' admin services, one lazily connected channel each.
struct Cluster {
    addrs: Vec<String>,
    admins: Vec<AdminClient<Channel>>,
}

type Statuses = Vec<Option<ClusterStatusResponse>>;

impl Cluster {
    fn new(addrs: &[String]) -> anyhow::Result<Self> {
        if addrs.is_empty() {
            bail!("--nodes needs at least one address");
        }
        let mut admins = Vec::with_capacity(addrs.len());
        for addr in addrs {
            crate::ensure_loopback_addr(addr)?;
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .with_context(|| format!("`{addr}` is not HOST:PORT"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(STATUS_TIMEOUT)
                .tcp_nodelay(true);
            admins.push(AdminClient::new(endpoint.connect_lazy()));
        }
        Ok(Cluster {
            addrs: addrs.to_vec(),
            admins,
        })
    }

    /// Every node's own status, `None` for a node that did not answer.
    async fn statuses(&self) -> Statuses {
        join_all(self.admins.iter().map(|admin| {
            let mut admin = admin.clone();
            async move {
                admin
                    .cluster_status(ClusterStatusRequest {})
                    .await
                    .ok()
                    .map(tonic::Response::into_inner)
            }
        }))
        .await
    }

    /// Polls until a node says it leads (and, with `caught_up`, until its followers caught
    /// up); returns its index and every status of that round.
    async fn wait_leader(
        &self,
        caught_up: bool,
        deadline: Instant,
    ) -> anyhow::Result<(usize, Statuses)> {
        loop {
            let statuses = self.statuses().await;
            if let Some(leader) = leader_of(&statuses, None)
                && (!caught_up || statuses[leader].as_ref().is_some_and(is_caught_up))
            {
                return Ok((leader, statuses));
            }
            if Instant::now() >= deadline {
                bail!(
                    "no {} before the deadline; last statuses: {}",
                    if caught_up {
                        "caught-up leader"
                    } else {
                        "leader"
                    },
                    describe(&self.addrs, &statuses)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls until a node other than `except` says it leads; returns it and when it was seen.
    async fn wait_new_leader(
        &self,
        except: usize,
        deadline: Instant,
    ) -> anyhow::Result<(usize, Instant)> {
        loop {
            let statuses = self.statuses().await;
            if let Some(leader) = leader_of(&statuses, Some(except)) {
                return Ok((leader, Instant::now()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "no survivor took over before the deadline; last statuses: {}",
                    describe(&self.addrs, &statuses)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// The node that says it leads (the highest epoch if several do), ignoring `except`.
fn leader_of(statuses: &[Option<ClusterStatusResponse>], except: Option<usize>) -> Option<usize> {
    statuses
        .iter()
        .enumerate()
        .filter(|(index, _)| Some(*index) != except)
        .filter_map(|(index, status)| {
            status
                .as_ref()
                .filter(|status| status.role == "leader")
                .map(|status| (index, status.epoch))
        })
        .max_by_key(|(_, epoch)| *epoch)
        .map(|(index, _)| index)
}

/// Whether every other voter has fetched up to the leader's log end and all of it is
/// committed.
fn is_caught_up(leader: &ClusterStatusResponse) -> bool {
    leader.high_watermark >= leader.end_offset
        && leader
            .voters
            .iter()
            .filter(|voter| **voter != leader.node_id)
            .all(|voter| {
                leader.replicas.iter().any(|replica| {
                    replica.id == *voter
                        && replica.fetched
                        && replica.end_offset >= leader.end_offset
                })
            })
}

fn describe(addrs: &[String], statuses: &[Option<ClusterStatusResponse>]) -> String {
    addrs
        .iter()
        .zip(statuses)
        .map(|(addr, status)| match status {
            Some(status) => format!(
                "{addr}: {} {} epoch {} end {} high watermark {}",
                status.node_id, status.role, status.epoch, status.end_offset, status.high_watermark
            ),
            None => format!("{addr}: no answer"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(value > 0.0 && value <= 3600.0) {
        bail!("{flag} must be in (0, 3600]");
    }
    Ok(Duration::from_secs_f64(value))
}

/// `proglog-loadgen leader`: prints the leader's address once there is one.
pub async fn print_leader(
    nodes: &[String],
    caught_up: bool,
    timeout_seconds: f64,
) -> anyhow::Result<()> {
    let cluster = Cluster::new(nodes)?;
    let deadline = Instant::now() + seconds(timeout_seconds, "--timeout-seconds")?;
    let (leader, _) = cluster.wait_leader(caught_up, deadline).await?;
    println!("{}", cluster.addrs[leader]);
    Ok(())
}

/// `proglog-loadgen failover`: see the module docs.
pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    if args.pids.len() != args.nodes.len() {
        bail!("--pids must name one process per --nodes address, in the same order");
    }
    if args.size == 0 {
        bail!("--size must be at least 1");
    }
    let warmup = seconds(args.warmup_seconds, "--warmup-seconds")?;
    let give_up = seconds(args.timeout_seconds, "--timeout-seconds")?;
    let cluster = Arc::new(Cluster::new(&args.nodes)?);
    let (old, statuses) = cluster.wait_leader(false, Instant::now() + give_up).await?;
    let ids: Vec<String> = statuses
        .iter()
        .zip(&cluster.addrs)
        .map(|(status, addr)| {
            status
                .as_ref()
                .map_or_else(|| addr.clone(), |s| s.node_id.clone())
        })
        .collect();
    let pid = Pid::from_raw(args.pids[old]).context("--pids must be positive")?;

    let killed_at = Arc::new(OnceLock::new());
    let value = Bytes::from(vec![0x5A; args.size]);
    let producer = tokio::spawn(produce_through_failover(
        Arc::clone(&cluster),
        old,
        value,
        Arc::clone(&killed_at),
        give_up,
    ));
    tokio::time::sleep(warmup).await;
    if producer.is_finished() {
        producer.await.context("load task panicked")??;
        bail!("the load ended before the kill");
    }
    // Set before the signal, so that any error the kill causes is seen as after it.
    let killed = *killed_at.get_or_init(Instant::now);
    kill_process(pid, Signal::KILL)
        .with_context(|| format!("kill -9 {} ({})", args.pids[old], ids[old]))?;
    let through = producer.await.context("load task panicked")??;

    let millis = |at: Instant| at.duration_since(killed).as_secs_f64() * 1e3;
    let line = serde_json::json!({
        "kind": "failover",
        "label": args.label,
        "size": args.size,
        "killed_id": ids[old],
        "killed_addr": cluster.addrs[old],
        "killed_pid": args.pids[old],
        "new_leader_id": ids[through.new_leader],
        "new_leader_addr": cluster.addrs[through.new_leader],
        "failover_ms": millis(through.acked_at),
        "leader_seen_ms": through.leader_seen.map(millis),
        "acked_before_kill": through.acked_before,
        "before_p50_us": through.latencies_before.quantile_micros(0.5),
        "before_p99_us": through.latencies_before.quantile_micros(0.99),
        "failed_calls": through.failed_calls,
    });
    println!("{}", report::format_failover(&line));
    crate::append_result(args.results.as_deref(), &line)
}

/// What the producing task saw.
struct Through {
    /// Produces acknowledged by the old leader before the kill, and their latencies.
    acked_before: u64,
    latencies_before: Latencies,
    /// The index of the node that acknowledged the first produce after the kill, and when.
    new_leader: usize,
    acked_at: Instant,
    /// When a survivor was first seen saying it leads (`None` if a hint led there first).
    leader_seen: Option<Instant>,
    /// Calls that failed after the kill.
    failed_calls: u64,
}

/// Produces to the leader `old` one record at a time until, after `killed_at` is set, another
/// node acknowledges one.
async fn produce_through_failover(
    cluster: Arc<Cluster>,
    old: usize,
    value: Bytes,
    killed_at: Arc<OnceLock<Instant>>,
    give_up: Duration,
) -> anyhow::Result<Through> {
    let mut clients: HashMap<usize, Client> = HashMap::new();
    let first = Client::connect(&cluster.addrs[old])
        .await
        .with_context(|| format!("connect to the leader at {}", cluster.addrs[old]))?;
    clients.insert(old, first);
    let mut latencies_before = Latencies::new()?;
    let (mut acked_before, mut failed_calls) = (0u64, 0u64);
    let mut leader_seen = None;
    let mut target = old;
    loop {
        let began = Instant::now();
        let answer = match client_for(&mut clients, &cluster.addrs, target).await {
            Ok(mut client) => {
                let record = Produce {
                    value: value.clone(),
                    ..Produce::default()
                };
                tokio::time::timeout(PRODUCE_TIMEOUT, client.produce(record))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::Status(Status::deadline_exceeded(format!(
                            "no answer within {PRODUCE_TIMEOUT:?}"
                        ))))
                    })
            }
            Err(err) => Err(err),
        };
        let Some(&killed) = killed_at.get() else {
            // Before the kill: the steady load against the leader.
            answer.context("a produce to the leader failed before it was killed")?;
            latencies_before.record(began.elapsed());
            acked_before += 1;
            continue;
        };
        match answer {
            Ok(_) if target != old => {
                return Ok(Through {
                    acked_before,
                    latencies_before,
                    new_leader: target,
                    acked_at: Instant::now(),
                    leader_seen,
                    failed_calls,
                });
            }
            // The old leader's answer raced the kill; its next call fails.
            Ok(_) => {}
            Err(err) => {
                failed_calls += 1;
                let deadline = killed + give_up;
                if Instant::now() >= deadline {
                    bail!(
                        "no survivor acknowledged a produce within {give_up:?} of the kill: {err}"
                    );
                }
                target = match hinted_leader(&err, &cluster.addrs, old) {
                    Some(hinted) if hinted != target => hinted,
                    _ => {
                        let (found, seen) = cluster.wait_new_leader(old, deadline).await?;
                        leader_seen.get_or_insert(seen);
                        found
                    }
                };
            }
        }
    }
}

/// A connected client for node `index`, connecting (with a timeout) on first use.
async fn client_for(
    clients: &mut HashMap<usize, Client>,
    addrs: &[String],
    index: usize,
) -> Result<Client, ClientError> {
    if let Some(client) = clients.get(&index) {
        return Ok(client.clone());
    }
    let client = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(&addrs[index]))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Status(Status::unavailable(format!(
                "no connection to {} within {CONNECT_TIMEOUT:?}",
                addrs[index]
            ))))
        })?;
    clients.insert(index, client.clone());
    Ok(client)
}

/// The node a not-leader answer points to, when it is one of ours and not `except`.
fn hinted_leader(err: &ClientError, addrs: &[String], except: usize) -> Option<usize> {
    let ClientError::Status(status) = err else {
        return None;
    };
    let hint = status.metadata().get(LEADER_ADDR_METADATA)?.to_str().ok()?;
    addrs
        .iter()
        .position(|addr| addr == hint)
        .filter(|index| *index != except)
}
