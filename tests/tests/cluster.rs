//! A 3-node cluster of real `proglog-node` processes on loopback, replicating by fetch with
//! elections (`--initial-voters`, static `--peers` addresses, `--durability always`).
//!
//! Proves: one leader is elected and every node ends up with the same records at the same
//! offsets; under continuous produce, a SIGKILLed leader is replaced and producing continues;
//! the killed node restarts with its data and catches up; afterwards every acknowledged record
//! is on every node at the offset it was acknowledged with, and no node holds, below its high
//! watermark, a record nobody produced or one produced twice. A node that joins after retention
//! deleted the start of the leader's log copies it from the leader's start and becomes a voter.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use futures_util::FutureExt;
use proglog_proto::log::v1::admin_client::AdminClient;
use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::{
    Acks, ClusterStatusRequest, ConsumeRequest, GetOffsetsRequest, ProduceRequest, Record,
    TransferLeadershipRequest,
};
use proglog_tests::loopback::{
    IDS, change_voters, committed_records, consume_at, leader_counts_as_voter, metrics,
    node_options, offsets, plan_ports, produce, start_cluster, start_cluster_of, status,
    wait_for_high_watermark, wait_for_leader, wait_until, wipe_and_restart,
};
use proglog_tests::node_process::{NodeOptions, NodeProcess};
use proglog_tests::ports::free_port;
use proglog_tests::python::run_grpcio_client;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_no_acknowledged_record_is_lost() {
    let mut nodes = start_cluster().await;
    let all = [0, 1, 2];
    let first_leader = wait_for_leader(&nodes, &all).await;

    let mut acknowledged: BTreeMap<u64, String> = BTreeMap::new();
    let mut attempted: HashSet<String> = HashSet::new();
    let mut next = 0;
    // Produce to the leader until 200 records are acknowledged.
    while acknowledged.len() < 200 {
        let value = format!("record-{next}");
        next += 1;
        attempted.insert(value.clone());
        if let Ok(offset) = produce(&nodes[first_leader], &value).await {
            acknowledged.insert(offset, value);
        }
    }

    // Crash the leader; the other two elect a new one, and producing goes on there.
    nodes[first_leader].kill().await.unwrap();
    let survivors: Vec<usize> = all.into_iter().filter(|&i| i != first_leader).collect();
    let second_leader = wait_for_leader(&nodes, &survivors).await;
    assert_ne!(second_leader, first_leader);
    let target = acknowledged.len() + 200;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.len() < target {
        assert!(Instant::now() < deadline, "producing did not resume");
        let value = format!("record-{next}");
        next += 1;
        attempted.insert(value.clone());
        if let Ok(offset) = produce(&nodes[second_leader], &value).await {
            acknowledged.insert(offset, value);
        }
    }

    // The crashed node comes back with its data and catches up.
    nodes[first_leader].restart().await.unwrap();
    let last = *acknowledged.keys().last().unwrap();
    wait_for_high_watermark(&nodes, last + 1).await;

    let logs = [
        committed_records(&nodes[0]).await,
        committed_records(&nodes[1]).await,
        committed_records(&nodes[2]).await,
    ];
    for (offset, value) in &acknowledged {
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
    // Below the lowest high watermark, every node holds the same records.
    let common = [&nodes[0], &nodes[1], &nodes[2]];
    let mut lowest = u64::MAX;
    for node in common {
        lowest = lowest.min(status(node).await.unwrap().high_watermark);
    }
    for (index, log) in logs.iter().enumerate().skip(1) {
        assert!(
            log.range(..lowest).eq(logs[0].range(..lowest)),
            "{} and {} disagree on the committed records below {lowest}",
            IDS[0],
            IDS[index]
        );
    }
    let mut seen = HashSet::new();
    for record in logs[0].values() {
        let value = String::from_utf8(record.value.to_vec()).unwrap();
        assert!(
            attempted.contains(&value),
            "{value} is committed but nobody produced it"
        );
        assert!(seen.insert(value.clone()), "{value} is committed twice");
    }
    for node in &mut nodes {
        node.terminate().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_sent_to_a_follower_is_forwarded_to_the_leader() {
    let mut nodes = start_cluster().await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    // Any node works, as through a Kubernetes Service: the follower forwards to the leader.
    let offset = produce(&nodes[follower], "to-a-follower").await.unwrap();
    let mut client = LogClient::new(nodes[leader].channel().await.unwrap());
    let record = consume_at(&mut client, offset).await;
    assert_eq!(record.value, "to-a-follower".as_bytes());

    // A produce stream through the follower is relayed to the leader, in order.
    let requests: Vec<ProduceRequest> = (0..100)
        .map(|i| ProduceRequest {
            record: Some(Record {
                value: format!("streamed-{i}").into_bytes().into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let mut follower_client = LogClient::new(nodes[follower].channel().await.unwrap());
    let mut answers = follower_client
        .produce_stream(futures_util::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut offsets = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        offsets.push(answer.offset);
    }
    assert_eq!(offsets.len(), 100);
    assert!(
        offsets.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{offsets:?}"
    );
    let streamed = consume_at(&mut client, offsets[99]).await;
    assert_eq!(streamed.value, "streamed-99".as_bytes());

    // A request already forwarded once is not forwarded again: the answer names the leader,
    // with its address in the metadata, for clients that route themselves.
    let mut request = tonic::Request::new(ProduceRequest {
        record: Some(Record {
            value: b"twice".to_vec().into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("proglog-forwarded-by", "test".parse().unwrap());
    let mut follower_client = LogClient::new(nodes[follower].channel().await.unwrap());
    let status = follower_client.produce(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(IDS[leader]),
        "the message names the leader: {}",
        status.message()
    );
    let addr = status
        .metadata()
        .get("proglog-leader-addr")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(addr, nodes[leader].rpc_addr().to_string());
    for node in &mut nodes {
        node.terminate().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_3_to_5_to_3_voters_while_producing_loses_nothing() {
    let mut nodes = start_cluster_of(5).await;
    let all = [0, 1, 2, 3, 4];
    wait_for_leader(&nodes, &all).await;
    let first = status(&nodes[3]).await.unwrap();
    assert_eq!(first.role, "observer", "n3 starts outside the voter set");

    // A producer through n0 (forwarding to whoever leads) for the whole test.
    let stop = tokio_util::sync::CancellationToken::new();
    let producer = {
        let stop = stop.clone();
        let channel = nodes[0].channel().await.unwrap();
        tokio::spawn(async move {
            let mut client = LogClient::new(channel);
            let mut acknowledged = BTreeMap::new();
            let mut next = 0;
            while !stop.is_cancelled() {
                let value = format!("scale-{next}");
                next += 1;
                let request = ProduceRequest {
                    record: Some(Record {
                        value: value.as_bytes().to_vec().into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                if let Ok(response) = client.produce(request).await {
                    acknowledged.insert(response.into_inner().offset, value);
                }
            }
            acknowledged
        })
    };

    let voters = change_voters(&nodes, &all, true, "n3").await;
    assert_eq!(voters, ["n0", "n1", "n2", "n3"]);
    let voters = change_voters(&nodes, &all, true, "n4").await;
    assert_eq!(voters, ["n0", "n1", "n2", "n3", "n4"]);
    for index in all {
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(&nodes[index]).await.unwrap().voters.len() != 5 {
            assert!(
                Instant::now() < deadline,
                "{} never saw 5 voters",
                IDS[index]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Back to three: a leader among n3/n4 hands over first.
    for id in ["n4", "n3"] {
        let leader = wait_for_leader(&nodes, &all).await;
        if IDS[leader] == id {
            let mut admin = AdminClient::new(nodes[leader].channel().await.unwrap());
            admin
                .transfer_leadership(TransferLeadershipRequest {})
                .await
                .unwrap();
        }
        change_voters(&nodes, &all, false, id).await;
    }
    let leader = wait_for_leader(&nodes, &all).await;
    assert_eq!(
        status(&nodes[leader]).await.unwrap().voters,
        ["n0", "n1", "n2"]
    );
    stop.cancel();
    let acknowledged = producer.await.unwrap();
    assert!(!acknowledged.is_empty());
    let last = *acknowledged.keys().last().unwrap();
    wait_for_high_watermark(&nodes, last + 1).await;
    for index in all {
        let log = committed_records(&nodes[index]).await;
        for (offset, value) in &acknowledged {
            assert_eq!(
                log.get(offset).map(|record| record.value.to_vec()),
                Some(value.as_bytes().to_vec()),
                "acknowledged offset {offset} on {}",
                IDS[index]
            );
        }
    }
    for node in &mut nodes {
        node.terminate().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_forms_from_initial_voters_and_gossip_alone() {
    // No --peers: every node has the same --initial-voters and the gossip seeds, and learns
    // the others' RPC addresses by gossip.
    let gossip_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let seeds = gossip_ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (id, port) in IDS[..3].iter().zip(&gossip_ports) {
        let options = NodeOptions::default()
            .id(*id)
            .flag("--initial-voters", IDS[..3].join(","))
            .flag("--gossip-addr", format!("127.0.0.1:{port}"))
            .flag("--join", &seeds)
            .flag("--election-timeout-ms", "300");
        nodes.push(NodeProcess::start(options).await.unwrap());
    }
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;

    // GetServers lists every member with its RPC address, and which one leads.
    let follower = (leader + 1) % 3;
    let mut client = LogClient::new(nodes[follower].channel().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let servers = loop {
        let servers = client
            .get_servers(proglog_proto::log::v1::GetServersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .servers;
        if servers.len() == 3 {
            break servers;
        }
        assert!(
            Instant::now() < deadline,
            "GetServers never listed 3: {servers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (server, node) in servers.iter().zip(&nodes) {
        assert_eq!(server.id, node.id());
        assert_eq!(server.rpc_addr, node.rpc_addr().to_string());
        assert_eq!(server.is_leader, server.id == IDS[leader]);
    }
    // And records replicate: produce through a follower, read from every node.
    let offset = produce(&nodes[follower], "gossip").await.unwrap();
    wait_for_high_watermark(&nodes, offset + 1).await;
    for node in &nodes {
        let log = committed_records(node).await;
        assert_eq!(log[&offset].value, "gossip".as_bytes());
    }
    for node in &mut nodes {
        node.terminate().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_leadership_over() {
    let mut nodes = start_cluster().await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let mut acknowledged = BTreeMap::new();
    for i in 0..50 {
        let value = format!("before-{i}");
        let offset = produce(&nodes[leader], &value).await.unwrap();
        acknowledged.insert(offset, value);
    }
    let exit = nodes[leader].terminate().await.unwrap();
    assert!(exit.success(), "{exit}");
    assert!(
        nodes[leader]
            .stderr_lines()
            .iter()
            .any(|line| line.contains("handed leadership over")),
        "the leader resigned with EndQuorumEpoch before stopping"
    );
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let next = wait_for_leader(&nodes, &survivors).await;
    let offset = produce(&nodes[next], "after").await.unwrap();
    acknowledged.insert(offset, "after".into());
    let nodes_left: Vec<&NodeProcess> = survivors.iter().map(|&i| &nodes[i]).collect();
    for node in nodes_left {
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(node).await.unwrap().high_watermark <= offset {
            assert!(Instant::now() < deadline, "{} did not commit", node.id());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = committed_records(node).await;
        for (offset, value) in &acknowledged {
            assert_eq!(
                log[offset].value,
                value.as_bytes(),
                "offset {offset} on {}",
                node.id()
            );
        }
    }
    for &index in &survivors {
        nodes[index].terminate().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_produces_to_the_leader_itself() {
    let mut nodes = start_cluster().await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let cli = proglog_tests::node_process::node_binary()
        .unwrap()
        .with_file_name("proglog");
    // Given only a follower's address, the CLI asks it for the members and produces on the
    // leader directly: the follower serves no produce at all.
    let output = tokio::process::Command::new(cli)
        .arg("--addr")
        .arg(nodes[follower].rpc_addr().to_string())
        .args(["produce", "routed-1", "routed-2"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let produced = |text: &str| {
        text.lines()
            .any(|line| line.starts_with("proglog_rpc_requests_total{method=\"ProduceStream\""))
    };
    let leader_metrics = metrics(&nodes[leader]).await;
    assert!(produced(&leader_metrics));
    assert!(!produced(&metrics(&nodes[follower]).await));
    // Replication is counted by method too: the records were committed, so the followers'
    // fetches reached the leader and show under their own name, not `unknown`.
    let fetched = leader_metrics.lines().any(|line| {
        line.starts_with("proglog_rpc_requests_total{method=\"Fetch\",code=\"Ok\"}")
            && !line.ends_with(" 0")
    });
    assert!(fetched, "no Fetch count on the leader:\n{leader_metrics}");
    for node in &mut nodes {
        node.terminate().await.unwrap();
    }
}

/// A leadership change leaves a control record at the end of the log, which no stream
/// delivers: `proglog consume` without `--follow` still stops at the end, through every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_consume_stops_at_the_end_when_a_control_record_is_last() {
    let mut nodes = start_cluster().await;
    let all = [0, 1, 2];
    let leader = wait_for_leader(&nodes, &all).await;
    let cli = proglog_tests::node_process::node_binary()
        .unwrap()
        .with_file_name("proglog");
    let output = tokio::process::Command::new(&cli)
        .arg("--addr")
        .arg(nodes[leader].rpc_addr().to_string())
        .args(["produce", "first", "second"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let mut admin = AdminClient::new(nodes[leader].channel().await.unwrap());
    admin
        .transfer_leadership(TransferLeadershipRequest {})
        .await
        .unwrap();
    let new_leader = wait_for_leader(&nodes, &all).await;
    // The new leader's first record, a control record, is the last one, and committed.
    let (_, end) = offsets(&nodes[new_leader]).await;
    wait_for_high_watermark(&nodes, end).await;
    for node in &nodes {
        let consume = tokio::process::Command::new(&cli)
            .arg("--addr")
            .arg(node.rpc_addr().to_string())
            .args(["consume", "--from", "0"])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), consume)
            .await
            .unwrap_or_else(|_| panic!("consume through {} never stopped", node.id()))
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let values: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('\t').map(|(_, value)| value.to_owned()))
            .collect();
        assert_eq!(values, ["first", "second"], "through {}", node.id());
    }
    for node in &mut nodes {
        node.terminate().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_leader_answers_without_a_majority_and_quorum_acks_do_not() {
    let mut nodes = start_cluster().await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    // Both followers down: nothing can commit, but the leader still appends. The leader steps
    // down once it notices (check-quorum), so produce right away.
    for index in (0..3).filter(|&i| i != leader) {
        nodes[index].kill().await.unwrap();
    }
    let mut client = LogClient::new(nodes[leader].channel().await.unwrap());
    let request = |acks: Acks| ProduceRequest {
        record: Some(Record {
            value: b"x".to_vec().into(),
            ..Default::default()
        }),
        acks: acks as i32,
        ..Default::default()
    };
    let quorum = tokio::time::timeout(
        Duration::from_secs(10),
        client.produce(request(Acks::Quorum)),
    )
    .await;
    assert!(
        !matches!(quorum, Ok(Ok(_))),
        "a quorum produce must not be acknowledged without a majority: {quorum:?}"
    );
    // Restart the followers so there is a leader again, then take one away and ask for
    // acks=leader: the leader alone answers.
    for index in (0..3).filter(|&i| i != leader) {
        nodes[index].restart().await.unwrap();
    }
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let mut client = LogClient::new(nodes[leader].channel().await.unwrap());
    for index in (0..3).filter(|&i| i != leader) {
        nodes[index].kill().await.unwrap();
    }
    let offset = tokio::time::timeout(
        Duration::from_secs(10),
        client.produce(request(Acks::Leader)),
    )
    .await
    .expect("acks=leader answers without waiting for followers")
    .expect("acks=leader succeeds on the leader alone")
    .into_inner()
    .offset;
    assert!(offset > 0);
    for node in &mut nodes {
        let _ = node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_retention_copies_the_log_from_the_leaders_start() {
    // Small segments and retention applied every 100 ms, so a few hundred KiB roll segments
    // and delete the oldest.
    let retention = [
        ("--segment-bytes", "65536"),
        ("--max-record-bytes", "8192"),
        ("--retention-bytes", "131072"),
        ("--retention-check-interval-ms", "100"),
    ];
    let (ports, peers) = plan_ports(4);
    let options_for = |index: usize| {
        retention.iter().fold(
            node_options(index, ports[index], &peers),
            |options, (flag, value)| options.flag(flag, value),
        )
    };
    let mut nodes = Vec::new();
    for index in 0..3 {
        nodes.push(NodeProcess::start(options_for(index)).await.unwrap());
    }
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let value = "x".repeat(1024);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut produced = 0;
    while offsets(&nodes[leader]).await.0 == 0 {
        for _ in 0..50 {
            produce(&nodes[leader], &value).await.unwrap();
            produced += 1;
        }
        assert!(
            Instant::now() < deadline,
            "retention never moved the leader's start after {produced} records"
        );
    }
    let (leader_start, _) = offsets(&nodes[leader]).await;

    // A new node, with an empty data directory, as an observer.
    nodes.push(NodeProcess::start(options_for(3)).await.unwrap());
    let last = produce(&nodes[leader], "after the join").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut admin = AdminClient::new(nodes[leader].channel().await.unwrap());
        let status = admin
            .cluster_status(ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let caught_up = status
            .replicas
            .iter()
            .any(|replica| replica.id == "n3" && replica.end_offset > last);
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n3 never caught up past offset {last}: {:?}",
            nodes[3]
                .stderr_lines()
                .iter()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let voters = change_voters(&nodes, &[0, 1, 2, 3], true, "n3").await;
    assert!(voters.contains(&"n3".to_owned()), "{voters:?}");

    // n3 holds the leader's log from (at least) the leader's start at the time it joined, not
    // from 0, and the same records as the leader there.
    wait_for_high_watermark(&nodes, last + 1).await;
    let (start, _) = offsets(&nodes[3]).await;
    assert!(start >= leader_start && start > 0, "n3 starts at {start}");
    let mut on_leader = LogClient::new(nodes[leader].channel().await.unwrap());
    let mut on_new = LogClient::new(nodes[3].channel().await.unwrap());
    for offset in [start, last] {
        assert_eq!(
            consume_at(&mut on_new, offset).await,
            consume_at(&mut on_leader, offset).await,
            "offset {offset}"
        );
    }
    assert_eq!(
        consume_at(&mut on_new, last).await.value,
        "after the join".as_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_lost_its_data_is_an_observer_until_added_again() {
    let mut nodes = start_cluster().await;
    let all = [0, 1, 2];
    let leader = wait_for_leader(&nodes, &all).await;
    let wiped = (leader + 1) % 3;
    let id = IDS[wiped];
    let mut last = 0;
    for i in 0..10 {
        last = produce(&nodes[leader], &format!("before {i}"))
            .await
            .unwrap();
    }
    wait_for_high_watermark(&nodes, last + 1).await;
    wait_until("the leader binds every voter to its directory", || {
        leader_counts_as_voter(&nodes[leader], id).map(|voter| voter == Some(true))
    })
    .await;

    // The volume is lost: the same id comes back with an empty data directory.
    wipe_and_restart(&mut nodes[wiped]).await;

    // Its empty log must not count: it copies the log as an observer, and the leader does not
    // count it towards the majority (nor would a candidate count its vote).
    wait_until(
        "the wiped node sees that it is no longer the voter it was",
        || async {
            status(&nodes[wiped])
                .await
                .is_some_and(|status| status.role == "observer")
        },
    )
    .await;
    wait_until(
        "the leader sees the wiped node fetch with its new directory, and does not count it",
        || leader_counts_as_voter(&nodes[leader], id).map(|voter| voter == Some(false)),
    )
    .await;
    let after = produce(&nodes[leader], "while it is an observer")
        .await
        .unwrap();

    // Removed and added again, it is bound to its new directory and votes again.
    let voters = change_voters(&nodes, &all, false, id).await;
    assert!(!voters.contains(&id.to_owned()), "{voters:?}");
    let voters = change_voters(&nodes, &all, true, id).await;
    assert!(voters.contains(&id.to_owned()), "{voters:?}");
    let leader = wait_for_leader(&nodes, &all).await;
    wait_until("the re-added node is bound and counted again", || {
        leader_counts_as_voter(&nodes[leader], id).map(|voter| voter == Some(true))
    })
    .await;
    wait_for_high_watermark(&nodes, after + 1).await;
    let mut on_wiped = LogClient::new(nodes[wiped].channel().await.unwrap());
    assert_eq!(
        consume_at(&mut on_wiped, after).await.value,
        "while it is an observer".as_bytes()
    );
}

/// Clients see only what producers wrote. A unary `Consume` at an offset that holds a control
/// record answers with the first data record after it, or `OUT_OF_RANGE` naming the next offset
/// when none follows yet. A client reading every record from 0 by unary `Consume` after a
/// failover and a voter change (proglog's Rust test client, and Python's grpcio) gets the
/// producers' records and nothing else, through every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_control_records_answer_with_the_next_data_record() {
    let mut nodes = start_cluster().await;
    let all = [0, 1, 2];
    let leader = wait_for_leader(&nodes, &all).await;
    let first = produce(&nodes[leader], "first").await.unwrap();
    assert!(
        first > 0,
        "the log starts with the cluster's control records"
    );
    wait_for_high_watermark(&nodes, first + 1).await;
    for node in &nodes {
        let mut client = LogClient::new(node.channel().await.unwrap());
        let record = consume_at(&mut client, 0).await;
        assert_eq!(
            (record.offset, record.value.as_ref()),
            (first, "first".as_bytes()),
            "Consume(0) through {}",
            node.id()
        );
    }

    // A leadership change leaves a control record at the end of the log.
    let epoch = status(&nodes[leader]).await.unwrap().epoch;
    AdminClient::new(nodes[leader].channel().await.unwrap())
        .transfer_leadership(TransferLeadershipRequest {})
        .await
        .unwrap();
    wait_until("a leader of a later epoch", || async {
        let mut led = false;
        for node in &nodes {
            led |= status(node)
                .await
                .is_some_and(|status| status.role == "leader" && status.epoch > epoch);
        }
        led
    })
    .await;
    let new_leader = wait_for_leader(&nodes, &all).await;
    let (_, end) = offsets(&nodes[new_leader]).await;
    assert!(
        end > first + 1,
        "no control record after {first}: end {end}"
    );
    wait_for_high_watermark(&nodes, end).await;
    for node in &nodes {
        let mut client = LogClient::new(node.channel().await.unwrap());
        let status = client
            .consume(ConsumeRequest {
                offset: first + 1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert!(
            status.message().contains(&format!("offset {end}")),
            "through {}: {status:?}",
            node.id()
        );
    }

    // A voter set change leaves another; then a second record.
    change_voters(&nodes, &all, false, IDS[2]).await;
    change_voters(&nodes, &all, true, IDS[2]).await;
    let leader = wait_for_leader(&nodes, &all).await;
    let second = produce(&nodes[leader], "second").await.unwrap();
    wait_for_high_watermark(&nodes, second + 1).await;
    for node in &nodes {
        let data: Vec<(u64, Vec<u8>)> = committed_records(node)
            .await
            .into_values()
            .map(|record| (record.offset, record.value.to_vec()))
            .collect();
        assert_eq!(
            data,
            [(first, b"first".to_vec()), (second, b"second".to_vec())],
            "through {}",
            node.id()
        );
        let report = run_grpcio_client(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            &["--read-all".to_owned(), node.rpc_addr().to_string()],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let read: Vec<(u64, String, u64)> = report["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|record| {
                (
                    record["offset"].as_u64().unwrap(),
                    record["value"].as_str().unwrap().to_owned(),
                    record["type"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            read,
            [
                (first, "first".to_owned(), 0),
                (second, "second".to_owned(), 0)
            ],
            "Python's grpcio through {}",
            node.id()
        );
    }
    for node in &mut nodes {
        node.terminate().await.unwrap();
    }
}

/// Read your writes through any node: once a produce is acknowledged with offset N, the end of
/// the log that any node answers (`GetOffsets`) is past N and a read of N there returns it,
/// though followers learn the leader's high watermark only with their next fetch. The CLI's
/// `produce` then `consume --from 0`, through each node, shows every acknowledged record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_any_node_see_every_acknowledged_write() {
    let mut nodes = start_cluster().await;
    let all = [0, 1, 2];
    let leader = wait_for_leader(&nodes, &all).await;
    let mut readers = Vec::new();
    for node in &nodes {
        readers.push(LogClient::new(node.channel().await.unwrap()));
    }
    for round in 0..30 {
        let value = format!("write-{round}");
        let offset = produce(&nodes[leader], &value).await.unwrap();
        // Each round asks a different node first, so followers are asked at once too.
        for step in 0..3 {
            let index = (round + step) % 3;
            let reader = &mut readers[index];
            let end = reader
                .get_offsets(GetOffsetsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .end_offset;
            assert!(
                end > offset,
                "round {round}: {} says the log ends at {end}, before the acknowledged {offset}",
                IDS[index]
            );
        }
        let index = (round + 1) % 3;
        let record = consume_at(&mut readers[index], offset).await;
        assert_eq!(
            record.value,
            value.as_bytes(),
            "round {round} on {}",
            IDS[index]
        );
    }

    let cli = proglog_tests::node_process::node_binary()
        .unwrap()
        .with_file_name("proglog");
    let mut acknowledged = Vec::new();
    for round in 0..6 {
        let through = &nodes[round % 3];
        let value = format!("cli-{round}");
        let output = tokio::process::Command::new(&cli)
            .arg("--addr")
            .arg(through.rpc_addr().to_string())
            .args(["produce", &value])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        acknowledged.push(value);
        for node in &nodes {
            let output = tokio::process::Command::new(&cli)
                .arg("--addr")
                .arg(node.rpc_addr().to_string())
                .args(["consume", "--from", "0"])
                .kill_on_drop(true)
                .output()
                .await
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            let values: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| line.split_once('\t').map(|(_, value)| value.to_owned()))
                .filter(|value| value.starts_with("cli-"))
                .collect();
            assert_eq!(values, acknowledged, "consume through {}", node.id());
        }
    }
    for node in &mut nodes {
        node.terminate().await.unwrap();
    }
}

/// `ListLogs` and `DescribeLog` through any node: the cluster's one log with its leader, and
/// a describe answered by the leader with every other replica's progress, also from the CLI.
/// With a follower's leader gone, the follower answers from its own view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_listed_and_described_through_any_node() {
    use proglog_client::Client;
    let mut nodes = start_cluster().await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let acknowledged = produce(&nodes[leader], "described").await.unwrap();
    let leader_id = IDS[leader];
    let cli = proglog_tests::node_process::node_binary()
        .unwrap()
        .with_file_name("proglog");
    for node in &nodes {
        let addr = node.rpc_addr().to_string();
        let mut client = Client::connect(&addr).await.unwrap();
        let logs = client.list_logs().await.unwrap();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].name, "default");
        assert_eq!(logs[0].leader_id, leader_id);
        // Every replica fetches within a round trip: poll until the leader has seen both.
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        let described = loop {
            let described = client.describe_log().await.unwrap();
            let caught_up = described.replicas.len() == 2
                && described
                    .replicas
                    .iter()
                    .all(|replica| replica.fetched && replica.end_offset > acknowledged);
            if caught_up {
                break described;
            }
            assert!(
                Instant::now() < deadline,
                "replicas never caught up: {last:?}"
            );
            last = Some(described);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(described.name, "default");
        assert_eq!(described.described_by, leader_id, "answered by the leader");
        assert_eq!(described.leader_id, leader_id);
        assert!(described.high_watermark > acknowledged, "{described:?}");
        for replica in &described.replicas {
            assert_ne!(replica.id, leader_id);
            assert!(replica.voter, "{described:?}");
        }

        for args in [
            vec!["logs", "list"],
            vec!["--output", "json", "logs", "describe", "default"],
        ] {
            let output = tokio::process::Command::new(&cli)
                .args(["--addr", &addr])
                .args(&args)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{args:?}: {output:?}");
            assert!(
                stdout.contains("default") && stdout.contains(leader_id),
                "{args:?}: {stdout}"
            );
        }
        let unknown = tokio::process::Command::new(&cli)
            .args(["--addr", &addr, "logs", "describe", "orders"])
            .output()
            .await
            .unwrap();
        assert!(!unknown.status.success());
        assert!(
            String::from_utf8_lossy(&unknown.stderr).contains("log `orders` does not exist"),
            "{unknown:?}"
        );
    }

    // A ProduceStream through a follower whose second request names an unknown log: the
    // first is appended and answered, then the refusal ends the stream.
    {
        use proglog_proto::log::v1::log_client::LogClient;
        let follower = (leader + 1) % 3;
        let mut client = LogClient::new(nodes[follower].channel().await.unwrap());
        let request = |value: &str, log: &str| ProduceRequest {
            record: Some(Record {
                value: value.as_bytes().to_vec().into(),
                ..Default::default()
            }),
            log: log.to_owned(),
            ..Default::default()
        };
        let mut answers = client
            .produce_stream(futures_util::stream::iter([
                request("before the refusal", ""),
                request("never written", "orders"),
            ]))
            .await
            .unwrap()
            .into_inner();
        let first = answers.message().await;
        let offset = match first {
            Ok(Some(answer)) => answer.offset,
            other => panic!("the first request's answer comes before the refusal: {other:?}"),
        };
        assert!(offset > acknowledged);
        let refusal = answers.message().await.unwrap_err();
        assert_eq!(refusal.code(), tonic::Code::NotFound, "{refusal:?}");
    }

    // The leader killed: a follower still answers, from its own view and without replicas.
    nodes[leader].kill().await.unwrap();
    let follower = (leader + 1) % 3;
    let mut client = Client::connect(&nodes[follower].rpc_addr().to_string())
        .await
        .unwrap();
    let described = tokio::time::timeout(Duration::from_secs(30), client.describe_log())
        .await
        .expect("a describe answers even while the leader is gone")
        .unwrap();
    assert!(!described.described_by.is_empty());
    assert!(described.end_offset > acknowledged, "{described:?}");
    for node in &mut nodes {
        let _ = node.terminate().await;
    }
}
