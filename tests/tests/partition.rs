//! A network partition of a 3-node cluster, with each `proglog-node` in a network namespace of its
//! own ([`NetLab`]), reaching its peers by hostname.
//!
//! Proves (issue 4): when the leader is cut off, the other two elect a new leader in a later epoch
//! and keep acknowledging writes; the isolated leader acknowledges nothing, though it appends what
//! it is sent; once healed it follows the new leader and truncates that unacknowledged tail, so
//! every node ends with the same committed records: every acknowledged record at its offset, none
//! of the values sent to the isolated leader, and no value twice.
//!
//! The test process reaches the nodes through the lab's host access (an address of the root
//! namespace on the bridge), which the partition cuts too. The writes to the isolated leader come
//! from the `proglog` command line client run inside that leader's namespace, where it reaches
//! the node at its own address during the partition. They are sent right after the partition
//! starts, well before the leader's check-quorum (twice the election timeout since it last heard
//! from a follower) makes it step down, so it appends them and then reports, on stepping down,
//! that leadership changed before they were committed.
//!
//! Skips, printing why, when [`NetLab::available`] says labs cannot be created here (not root).
//! Needs the node and client binaries built: `cargo build -p proglog-node`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use proglog_proto::log::v1::{ProduceRequest, Record};
use proglog_tests::loopback::{Status, data_records_below, status_over};
use proglog_tests::netns::NetLab;
use proglog_tests::node_process::{NodeOptions, NodeProcess, node_binary};
use tokio::sync::mpsc;
use tokio::time::Instant;

const IDS: [&str; 3] = ["n0", "n1", "n2"];
/// Each node is alone in its namespace, so every node uses the default ports.
const RPC_PORT: u16 = 8400;
const HTTP_PORT: u16 = 9400;
/// A leader steps down after twice this without hearing from a majority, and followers long-poll
/// for half of it, so writes sent right after the partition have at least 750 ms to reach the
/// isolated leader while it still leads.
const ELECTION_TIMEOUT_MS: &str = "500";
/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a single call to a node may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client of the isolated leader may wait for answers before it is killed.
const ISOLATED_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Records acknowledged before the partition, and by the new leader during it.
const RECORDS_PER_PHASE: usize = 50;
/// Values sent to the isolated leader.
const ISOLATED_VALUES: usize = 20;
/// The command line client's binary, next to the node's.
const CLIENT_BINARY: &str = "proglog";

fn hostname(i: usize) -> String {
    format!("proglog-{i}")
}

/// The lab with host access, or `None` (after printing why) when labs cannot be created here.
fn lab_or_skip() -> Option<NetLab> {
    if let Err(reason) = NetLab::available() {
        println!("skipped: {reason}");
        return None;
    }
    let hostnames: Vec<Vec<String>> = (0..IDS.len()).map(|i| vec![hostname(i)]).collect();
    Some(NetLab::create_with_host_access(&hostnames).unwrap())
}

/// Starts node `i` of three in host `i`'s namespace, bound to that host's address and reaching
/// its peers by hostname.
async fn start_cluster(lab: &NetLab) -> Vec<NodeProcess> {
    let peers = IDS
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id}={}:{RPC_PORT}", hostname(i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, id) in IDS.iter().enumerate() {
        let (program, args) = lab.exec_prefix(i);
        let mut options = NodeOptions::default()
            .id(*id)
            .wrapper(program, args)
            .flag("--http-addr", format!("{}:{HTTP_PORT}", lab.ip(i)))
            .flag("--advertise-addr", format!("{}:{RPC_PORT}", hostname(i)))
            .flag("--initial-voters", IDS.join(","))
            .flag("--peers", &peers)
            .flag("--election-timeout-ms", ELECTION_TIMEOUT_MS)
            .flag("--durability", "always");
        options.rpc_addr = format!("{}:{RPC_PORT}", lab.ip(i));
        nodes.push(NodeProcess::start(options).await.unwrap());
    }
    nodes
}

/// The node's cluster status, or `None` when it cannot be had within [`CALL_TIMEOUT`].
async fn status(lab: &NetLab, index: usize) -> Option<Status> {
    let call = status_over(lab.loopback_channel(index, RPC_PORT));
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .ok()
        .flatten()
}

/// Polls until exactly one of `live` leads and the others name it leader; returns its index and
/// epoch.
async fn wait_for_leader(lab: &NetLab, live: &[usize]) -> (usize, u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut leaders = Vec::new();
        let mut named = HashSet::new();
        let mut all_answered = true;
        for &index in live {
            match status(lab, index).await {
                Some(status) if status.role == "leader" => leaders.push((index, status.epoch)),
                Some(status) => {
                    named.insert(status.leader);
                }
                None => all_answered = false,
            }
        }
        if let ([(leader, epoch)], true) = (leaders.as_slice(), all_answered)
            && named.iter().all(|name| name == IDS[*leader])
        {
            return (*leader, *epoch);
        }
        assert!(
            Instant::now() < deadline,
            "no single leader among {live:?} within {DEADLINE:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn produce(node: &NodeProcess, value: &str) -> Result<u64, tonic::Status> {
    let call = async {
        let channel = node
            .channel()
            .await
            .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
        let mut client = proglog_proto::log::v1::log_client::LogClient::new(channel);
        let response = client
            .produce(ProduceRequest {
                record: Some(Record {
                    value: value.as_bytes().to_vec().into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        Ok(response.into_inner().offset)
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("produce took too long"))?
}

/// Every value produced and every acknowledgement received.
#[derive(Default)]
struct Ledger {
    /// Acknowledged offsets and their values.
    acknowledged: BTreeMap<u64, String>,
    /// Every value sent to any node, acknowledged or not.
    attempted: HashSet<String>,
}

impl Ledger {
    /// Produces fresh values `<prefix>-<n>` to `node` until `count` of them are acknowledged. A
    /// failed produce is not retried with the same value (it may have been appended), so no
    /// value can legitimately appear twice.
    async fn produce_acknowledged(&mut self, node: &NodeProcess, prefix: &str, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        let mut acknowledged = 0;
        let mut next = 0;
        while acknowledged < count {
            assert!(
                Instant::now() < deadline,
                "{} acknowledged only {acknowledged} of {count} `{prefix}` records within {DEADLINE:?}",
                node.id()
            );
            let value = format!("{prefix}-{next}");
            next += 1;
            self.attempted.insert(value.clone());
            match produce(node, &value).await {
                Ok(offset) => {
                    self.acknowledge(offset, value);
                    acknowledged += 1;
                }
                Err(status) => println!("produce of {value} to {} failed: {status}", node.id()),
            }
        }
    }

    fn acknowledge(&mut self, offset: u64, value: String) {
        if let Some(earlier) = self.acknowledged.insert(offset, value.clone()) {
            panic!("offset {offset} was acknowledged twice: for {earlier} and for {value}");
        }
    }
}

/// `proglog produce` run inside one host's namespace, fed values on stdin, printing one offset
/// per acknowledged record. It reaches its host's node at the host's own address even while the
/// host is partitioned. Killed if still running when dropped.
struct NamespaceProducer {
    child: Child,
    /// Kept open: closing it would end the produce stream.
    stdin: ChildStdin,
    /// Stdout lines (acknowledged offsets) as they arrive; closed at the client's exit.
    acks: mpsc::UnboundedReceiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl NamespaceProducer {
    fn start(lab: &NetLab, host: usize, client: &Path) -> NamespaceProducer {
        let mut child = lab
            .command(host, client)
            .arg("--addr")
            .arg(format!("{}:{RPC_PORT}", lab.ip(host)))
            .arg("produce")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, acks) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        NamespaceProducer {
            child,
            stdin,
            acks,
            stderr: Some(stderr),
        }
    }

    fn send(&mut self, values: &[String]) {
        let mut lines = values.join("\n");
        lines.push('\n');
        self.stdin.write_all(lines.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next acknowledged offset, failing the test if none comes within [`DEADLINE`].
    async fn next_ack(&mut self) -> u64 {
        let line = tokio::time::timeout(DEADLINE, self.acks.recv())
            .await
            .unwrap_or_else(|_| panic!("no acknowledgement within {DEADLINE:?}"))
            .unwrap_or_else(|| panic!("the client exited: {}", self.stderr_text()));
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("the client printed {line:?}, not an offset"))
    }

    /// Waits up to `timeout` for the client to exit on its own, then kills it; returns the
    /// offsets it printed since the last [`Self::next_ack`] and its stderr.
    async fn finish(mut self, timeout: Duration) -> (Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() >= deadline {
                println!(
                    "the client of the isolated leader was still waiting after {timeout:?}; killing it"
                );
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let mut lines = Vec::new();
        // The reader thread closes the channel at end of stdout, which the exit brought.
        while let Some(line) = tokio::time::timeout(DEADLINE, self.acks.recv())
            .await
            .expect("stdout of the exited client did not close")
        {
            lines.push(line);
        }
        (lines, self.stderr_text())
    }

    fn stderr_text(&mut self) -> String {
        if self.child.try_wait().ok().flatten().is_none() {
            return "(still running)".to_owned();
        }
        self.stderr
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for NamespaceProducer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The offset in a produce error saying leadership changed before `offset N` was committed.
fn uncommitted_offset(error: &str) -> Option<u64> {
    let (_, rest) = error.split_once("before offset ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Every record a producer wrote below the node's high watermark, by offset.
async fn committed_records(
    lab: &NetLab,
    nodes: &[NodeProcess],
    index: usize,
) -> BTreeMap<u64, Record> {
    let node = &nodes[index];
    let high_watermark = status(lab, index).await.unwrap().high_watermark;
    let mut client = node.log_client().await.unwrap();
    data_records_below(&mut client, high_watermark, node.id()).await
}

/// Polls until every node follows `leader` (which leads), has the same end offset and high
/// watermark as the others, and that high watermark is at least `target`; returns it.
async fn wait_for_convergence(
    lab: &NetLab,
    nodes: &[NodeProcess],
    leader: usize,
    target: u64,
) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut statuses = Vec::new();
        for index in 0..nodes.len() {
            statuses.push(status(lab, index).await);
        }
        let converged = statuses.iter().enumerate().all(|(index, status)| {
            status.as_ref().is_some_and(|status| {
                let expected_role = if index == leader {
                    "leader"
                } else {
                    "follower"
                };
                status.role == expected_role
                    && status.leader == IDS[leader]
                    && status.high_watermark >= target
                    && status.end_offset == status.high_watermark
            })
        });
        let high_watermarks: HashSet<u64> = statuses
            .iter()
            .flatten()
            .map(|status| status.high_watermark)
            .collect();
        if converged && high_watermarks.len() == 1 {
            return high_watermarks.into_iter().next().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the healed cluster did not converge on leader {} with high watermark >= {target} within {DEADLINE:?}: {statuses:?}",
            IDS[leader]
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_stops_acknowledging_and_truncates_its_tail_after_healing() {
    let started = std::time::Instant::now();
    let Some(lab) = lab_or_skip() else { return };
    let client = node_binary().unwrap().with_file_name(CLIENT_BINARY);
    assert!(
        client.is_file(),
        "no client at {}: build it with `cargo build -p proglog-node`",
        client.display()
    );
    // Declared after the lab, so they are dropped (killed) before it, however the test ends.
    let mut nodes = start_cluster(&lab).await;
    let all = [0, 1, 2];
    let (old_leader, old_epoch) = wait_for_leader(&lab, &all).await;
    println!("{} leads epoch {old_epoch}", IDS[old_leader]);

    let mut ledger = Ledger::default();
    ledger
        .produce_acknowledged(&nodes[old_leader], "before", RECORDS_PER_PHASE)
        .await;
    // A client inside the leader's namespace, proven connected by one acknowledged record.
    let mut isolated_client = NamespaceProducer::start(&lab, old_leader, &client);
    let connected = "isolated-client-connected".to_owned();
    ledger.attempted.insert(connected.clone());
    isolated_client.send(std::slice::from_ref(&connected));
    let offset = isolated_client.next_ack().await;
    ledger.acknowledge(offset, connected);

    lab.partition(old_leader).unwrap();
    let isolated_values: Vec<String> = (0..ISOLATED_VALUES)
        .map(|i| format!("isolated-{i}"))
        .collect();
    ledger.attempted.extend(isolated_values.iter().cloned());
    isolated_client.send(&isolated_values);

    // The majority elects a new leader in a later epoch and acknowledges writes.
    let majority: Vec<usize> = all.into_iter().filter(|&i| i != old_leader).collect();
    let (new_leader, new_epoch) = wait_for_leader(&lab, &majority).await;
    assert!(
        new_epoch > old_epoch,
        "{} leads epoch {new_epoch}, not after {old_epoch}",
        IDS[new_leader]
    );
    println!(
        "partitioned {}; {} leads epoch {new_epoch}",
        IDS[old_leader], IDS[new_leader]
    );
    ledger
        .produce_acknowledged(&nodes[new_leader], "majority", RECORDS_PER_PHASE)
        .await;

    // The isolated leader acknowledged none of the values sent to it, though it appended them.
    let (isolated_acks, isolated_error) = isolated_client.finish(ISOLATED_CLIENT_TIMEOUT).await;
    assert!(
        isolated_acks.is_empty(),
        "the isolated leader acknowledged offsets {isolated_acks:?}; its client said: {isolated_error}"
    );
    let tail_offset = uncommitted_offset(&isolated_error).unwrap_or_else(|| {
        panic!(
            "the isolated leader did not report appending the values sent to it (its answer should say that leadership changed before an offset was committed); its client said: {isolated_error}"
        )
    });
    println!(
        "the isolated leader appended up to offset {tail_offset} unacknowledged: {}",
        isolated_error.trim()
    );

    // Healed, the old leader follows the new one and drops its tail.
    lab.heal(old_leader).unwrap();
    let last_acknowledged = *ledger.acknowledged.keys().last().unwrap();
    let high_watermark =
        wait_for_convergence(&lab, &nodes, new_leader, last_acknowledged + 1).await;
    assert!(
        tail_offset < high_watermark,
        "the isolated leader's tail (offset {tail_offset}) is beyond the committed log ({high_watermark}), so its truncation is not checked"
    );
    let truncations: Vec<String> = nodes[old_leader]
        .stderr_lines()
        .into_iter()
        .filter(|line| line.contains("truncating"))
        .collect();
    println!("{} after healing: {truncations:?}", IDS[old_leader]);

    let logs = [
        committed_records(&lab, &nodes, 0).await,
        committed_records(&lab, &nodes, 1).await,
        committed_records(&lab, &nodes, 2).await,
    ];
    for (offset, value) in &ledger.acknowledged {
        for (index, log) in logs.iter().enumerate() {
            let record = log.get(offset).unwrap_or_else(|| {
                panic!("acknowledged offset {offset} is missing on {}", IDS[index])
            });
            assert_eq!(
                record.value,
                value.as_bytes(),
                "acknowledged offset {offset} holds something else on {}",
                IDS[index]
            );
        }
    }
    for (index, log) in logs.iter().enumerate().skip(1) {
        assert_eq!(
            log, &logs[0],
            "{} and {} disagree on the committed records",
            IDS[0], IDS[index]
        );
    }
    let isolated: HashSet<&str> = isolated_values.iter().map(String::as_str).collect();
    for (index, log) in logs.iter().enumerate() {
        let mut seen = HashSet::new();
        for (offset, record) in log {
            let value = String::from_utf8(record.value.to_vec()).unwrap();
            assert!(
                !isolated.contains(value.as_str()),
                "{value}, sent only to the isolated leader, is committed at offset {offset} on {}",
                IDS[index]
            );
            assert!(
                ledger.attempted.contains(&value),
                "{value} is committed at offset {offset} on {} but nobody produced it",
                IDS[index]
            );
            assert!(
                seen.insert(value.clone()),
                "{value} is committed twice on {} (again at offset {offset})",
                IDS[index]
            );
        }
    }
    println!(
        "{} records committed on all three, {} acknowledged; took {:?}",
        high_watermark,
        ledger.acknowledged.len(),
        started.elapsed()
    );

    for node in &mut nodes {
        node.terminate().await.unwrap();
    }
}
