//! Real clusters where the faults are the ones retention, lost disks and hostile peers bring:
//!
//! - a follower whose data directory is wiped after retention removed every control record
//!   (so no log holds the voter set or the bindings any more) comes back as an observer: it
//!   never leads and never counts toward the high watermark until removed and added back;
//! - with both followers stopped, records the leader alone acknowledges (`acks=leader`) are
//!   never removed by retention before they are committed: the leader's start stays at or
//!   below its high watermark;
//! - a follower stopped again and again (SIGSTOP bursts shorter than the election timeout)
//!   while retention runs loses nothing: every acknowledged record that retention kept is
//!   readable on at least two nodes;
//! - peer messages with impossible values sent from outside are refused with
//!   `INVALID_ARGUMENT`, saved nowhere, and the cluster still fails over afterwards.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::peer_client::PeerClient;
use proglog_proto::log::v1::{
    Acks, BeginQuorumEpochRequest, FetchRequest, ProduceRequest, Record, VoteRequest,
};
use proglog_tests::loopback::{
    IDS, change_voters, consume_at, leader_counts_as_voter, metrics, node_options, offsets,
    plan_ports, produce, start_cluster, status, wait_for_high_watermark, wait_for_leader,
    wait_until, wipe_and_restart,
};
use proglog_tests::node_process::{NodeOptions, NodeProcess};
use rustix::process::Signal;
use tokio::time::Instant;

/// Small segments and retention every 100 ms: a few hundred KiB roll segments and delete the
/// oldest.
const RETENTION: [(&str, &str); 4] = [
    ("--segment-bytes", "65536"),
    ("--max-record-bytes", "8192"),
    ("--retention-bytes", "131072"),
    ("--retention-check-interval-ms", "100"),
];

fn retaining_options(index: usize, ports: &[u16], peers: &str) -> NodeOptions {
    RETENTION.iter().fold(
        node_options(index, ports[index], peers).flag("--durability", "always"),
        |options, (flag, value)| options.flag(flag, value),
    )
}

async fn start_retaining_cluster() -> Vec<NodeProcess> {
    start_retaining_cluster_with(&[]).await
}

/// A retaining cluster with `extra` flags on every node.
async fn start_retaining_cluster_with(extra: &[(&str, &str)]) -> Vec<NodeProcess> {
    let (ports, peers) = plan_ports(3);
    let mut nodes = Vec::new();
    for index in 0..3 {
        let options = extra.iter().fold(
            retaining_options(index, &ports, &peers),
            |options, (flag, value)| options.set_flag(flag, value),
        );
        nodes.push(NodeProcess::start(options).await.unwrap());
    }
    nodes
}

/// Stops or continues a node's process (SIGSTOP, SIGCONT).
fn send(pid: u32, signal: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Produces 1 KiB records on `leader` until every node's log starts past `offset`.
async fn produce_until_every_start_passes(nodes: &[NodeProcess], leader: usize, offset: u64) {
    let value = "x".repeat(1024);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut passed = true;
        for node in nodes {
            passed &= offsets(node).await.0 > offset;
        }
        if passed {
            return;
        }
        for _ in 0..50 {
            produce(&nodes[leader], &value).await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "retention never moved every node's start past offset {offset}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_wiped_after_retention_removed_every_control_record_stays_an_observer() {
    let mut nodes = start_retaining_cluster().await;
    let all = [0, 1, 2];
    let leader = wait_for_leader(&nodes, &all).await;
    let (wiped, healthy) = ((leader + 1) % 3, (leader + 2) % 3);
    for follower in [wiped, healthy] {
        wait_until("the leader counts both followers as bound voters", || {
            leader_counts_as_voter(&nodes[leader], IDS[follower]).map(|voter| voter == Some(true))
        })
        .await;
    }
    // Every control record (leader change, voter sets) is below this offset.
    let last_control = offsets(&nodes[leader]).await.1;
    produce_until_every_start_passes(&nodes, leader, last_control).await;

    // The volume is lost: the same id comes back with an empty data directory.
    wipe_and_restart(&mut nodes[wiped]).await;
    wait_until(
        "the wiped node copies from the leader's start and learns it is not the voter it was",
        || async {
            let copied = offsets(&nodes[wiped]).await.0 > last_control;
            copied
                && status(&nodes[wiped])
                    .await
                    .is_some_and(|status| status.role == "observer")
        },
    )
    .await;
    wait_until("the leader does not count the wiped node", || {
        leader_counts_as_voter(&nodes[leader], IDS[wiped]).map(|voter| voter == Some(false))
    })
    .await;

    // With the healthy follower stopped, the leader and the wiped node are two of three
    // nodes, but only one voter: nothing may commit, and the wiped node may not lead.
    let high_watermark = status(&nodes[leader]).await.unwrap().high_watermark;
    send(nodes[healthy].pid(), Signal::STOP);
    let unacknowledged = produce(&nodes[leader], "must not be acknowledged").await;
    assert!(
        unacknowledged.is_err(),
        "a record was acknowledged with the wiped node counted: {unacknowledged:?}"
    );
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        for index in [leader, wiped] {
            if let Some(now) = status(&nodes[index]).await {
                assert!(
                    now.high_watermark <= high_watermark + 1,
                    "{} committed past {high_watermark} without the healthy follower",
                    IDS[index]
                );
                if index == wiped {
                    assert_eq!(now.role, "observer", "the wiped node campaigned or led");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send(nodes[healthy].pid(), Signal::CONT);

    // Removed and added back, it is bound to its new directory and counted again.
    let voters = change_voters(&nodes, &all, false, IDS[wiped]).await;
    assert!(!voters.contains(&IDS[wiped].to_owned()), "{voters:?}");
    let voters = change_voters(&nodes, &all, true, IDS[wiped]).await;
    assert!(voters.contains(&IDS[wiped].to_owned()), "{voters:?}");
    let leader = wait_for_leader(&nodes, &all).await;
    wait_until("the re-added node is counted again", || {
        leader_counts_as_voter(&nodes[leader], IDS[wiped]).map(|voter| voter == Some(true))
    })
    .await;
    let last = produce(&nodes[leader], "after it was added back")
        .await
        .unwrap();
    wait_for_high_watermark(&nodes, last + 1).await;
    let mut on_wiped = LogClient::new(nodes[wiped].channel().await.unwrap());
    assert_eq!(
        consume_at(&mut on_wiped, last).await.value,
        "after it was added back".as_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_stays_below_the_high_watermark_while_the_followers_are_stopped() {
    // A long election timeout: the leader keeps leading (and taking acks=leader produces) for
    // seconds with no follower.
    let nodes = start_retaining_cluster_with(&[("--election-timeout-ms", "5000")]).await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let followers = [(leader + 1) % 3, (leader + 2) % 3];
    let committed = produce(&nodes[leader], "committed before the stop")
        .await
        .unwrap();
    wait_for_high_watermark(&nodes, committed + 1).await;
    for &follower in &followers {
        send(nodes[follower].pid(), Signal::STOP);
    }
    // Far more than the retention limit, acknowledged by the leader alone.
    let mut client = LogClient::new(nodes[leader].channel().await.unwrap());
    let value = "z".repeat(1024);
    let mut last = committed;
    for _ in 0..400 {
        last = client
            .produce(ProduceRequest {
                record: Some(Record {
                    value: value.clone().into_bytes().into(),
                    ..Default::default()
                }),
                acks: Acks::Leader as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .offset;
    }
    // Retention runs every 100 ms; for a second, it must never pass the high watermark.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let now = status(&nodes[leader]).await.unwrap();
        let (start, _) = offsets(&nodes[leader]).await;
        assert!(
            start <= now.high_watermark,
            "retention moved the start to {start}, past the high watermark {}",
            now.high_watermark
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &follower in &followers {
        send(nodes[follower].pid(), Signal::CONT);
    }
    // Once the followers copy them, every record the leader acknowledged is committed.
    wait_for_high_watermark(&nodes, last + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_in_bursts_while_retention_runs_loses_no_acknowledged_record() {
    let nodes = start_retaining_cluster().await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let slowed = (leader + 1) % 3;

    // Stops of 150 ms, shorter than the election timeout (300-600 ms), again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let pid = nodes[slowed].pid();
    let bursts = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut count = 0u32;
            while !stop.load(Ordering::Relaxed) {
                send(pid, Signal::STOP);
                tokio::time::sleep(Duration::from_millis(150)).await;
                send(pid, Signal::CONT);
                tokio::time::sleep(Duration::from_millis(100)).await;
                count += 1;
            }
            count
        })
    };
    let mut acknowledged: BTreeMap<u64, String> = BTreeMap::new();
    let padding = "y".repeat(1000);
    for i in 0..1200 {
        let value = format!("{i:05} {padding}");
        let offset = produce(&nodes[leader], &value).await.unwrap();
        acknowledged.insert(offset, value);
    }
    stop.store(true, Ordering::Relaxed);
    let bursts = bursts.await.unwrap();
    assert!(bursts > 3, "only {bursts} stop bursts");

    let last = *acknowledged.keys().next_back().unwrap();
    wait_for_high_watermark(&nodes, last + 1).await;
    let leader_start = offsets(&nodes[leader]).await.0;
    assert!(leader_start > 0, "retention never ran");
    let mut starts = Vec::new();
    let mut clients = Vec::new();
    for node in &nodes {
        starts.push(offsets(node).await.0);
        clients.push(LogClient::new(node.channel().await.unwrap()));
    }
    for (&offset, value) in acknowledged.range(leader_start..) {
        let mut holders = 0;
        for (client, &start) in clients.iter_mut().zip(&starts) {
            if start <= offset && consume_at(client, offset).await.value == value.as_bytes() {
                holders += 1;
            }
        }
        assert!(
            holders >= 2,
            "acknowledged offset {offset} is readable on {holders} nodes (starts {starts:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_peer_messages_are_refused_and_the_cluster_still_fails_over() {
    let mut nodes = start_cluster().await;
    let all = [0, 1, 2];
    let leader = wait_for_leader(&nodes, &all).await;
    let mut epochs = Vec::new();
    for node in &nodes {
        epochs.push(status(node).await.unwrap().epoch);
    }
    for node in &nodes {
        let mut peer = PeerClient::new(node.channel().await.unwrap());
        let refused = peer
            .begin_quorum_epoch(BeginQuorumEpochRequest {
                epoch: u64::MAX,
                leader_id: "evil".into(),
            })
            .await
            .expect_err("an announcement of epoch u64::MAX must be refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        let refused = peer
            .vote(VoteRequest {
                candidate_epoch: 1 << 60,
                candidate_id: "evil".into(),
                voter_id: node.id().into(),
                ..Default::default()
            })
            .await
            .expect_err("a vote for epoch 2^60 must be refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        let refused = peer
            .fetch(FetchRequest {
                replica_id: "evil".into(),
                fetch_offset: u64::MAX,
                ..Default::default()
            })
            .await
            .expect_err("a fetch past any offset must be refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    }
    // Nothing moved: same epochs, same leader, and each node counted what it refused.
    for (node, &before) in nodes.iter().zip(&epochs) {
        assert_eq!(status(node).await.unwrap().epoch, before, "{}", node.id());
        let text = metrics(node).await;
        let refused = text
            .lines()
            .find_map(|line| {
                line.strip_prefix("proglog_replication_events_total{event=\"refused_message\"} ")
            })
            .and_then(|count| count.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(
            refused >= 3,
            "{}: {refused} refused messages counted",
            node.id()
        );
    }
    assert_eq!(wait_for_leader(&nodes, &all).await, leader);

    // The cluster still elects: the leader dies, the other two take over and commit.
    nodes[leader].kill().await.unwrap();
    let rest: Vec<usize> = all.into_iter().filter(|&i| i != leader).collect();
    let new_leader = wait_for_leader(&nodes, &rest).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match produce(&nodes[new_leader], "after the hostile messages").await {
            Ok(_) => break,
            Err(status) => assert!(Instant::now() < deadline, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
