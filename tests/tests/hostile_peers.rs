//! Attacks on the peer service from a client that is not a member, against real nodes on
//! loopback, while a producer keeps writing: forged announcements, votes and fetches over
//! plaintext are refused and change nothing (the producer loses nothing and keeps committing),
//! and over TLS an ordinary client certificate cannot call the peer service at all.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::peer_client::PeerClient;
use proglog_proto::log::v1::{BeginQuorumEpochRequest, FetchRequest, VoteRequest};
use proglog_tests::loopback::{
    consume_at, produce, start_cluster, status, wait_for_high_watermark, wait_for_leader,
};
use tonic::transport::Channel;

/// Sends forged peer messages to `targets` until `stop`, checking each is refused; returns
/// how many were sent.
async fn attack(targets: Vec<(String, Channel)>, stop: Arc<AtomicBool>) -> usize {
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        for (id, channel) in &targets {
            let mut peer = PeerClient::new(channel.clone());
            let epoch = 1 + status_epoch(channel).await;
            // "I lead the next epoch."
            let refused = peer
                .begin_quorum_epoch(BeginQuorumEpochRequest {
                    epoch,
                    leader_id: "evil".into(),
                })
                .await
                .expect_err("an announcement from a non-voter must be refused");
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
            // "Vote for me in a much later epoch."
            let answer = peer
                .vote(VoteRequest {
                    candidate_epoch: epoch + 100,
                    candidate_id: "evil".into(),
                    last_offset_epoch: epoch + 100,
                    end_offset: u64::MAX >> 2,
                    voter_id: id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!answer.granted, "{id} voted for a non-voter");
            assert!(
                answer.voter_directory_id.is_empty(),
                "{id} handed its directory id to a stranger"
            );
            // "I am a replica: give me the log."
            let refused = peer
                .fetch(FetchRequest {
                    epoch,
                    replica_id: "evil".into(),
                    max_bytes: 1 << 20,
                    fetch_id: 1,
                    ..Default::default()
                })
                .await
                .expect_err("a fetch from a made-up replica must be refused");
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
            sent += 3;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sent
}

async fn status_epoch(channel: &Channel) -> u64 {
    use proglog_proto::log::v1::ClusterStatusRequest;
    use proglog_proto::log::v1::admin_client::AdminClient;
    AdminClient::new(channel.clone())
        .cluster_status(ClusterStatusRequest {})
        .await
        .map_or(0, |status| status.into_inner().epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peer_messages_over_plaintext_change_nothing_and_lose_nothing() {
    let nodes = start_cluster().await;
    let all = [0, 1, 2];
    let leader = wait_for_leader(&nodes, &all).await;
    let epoch = status(&nodes[leader]).await.unwrap().epoch;

    let stop = Arc::new(AtomicBool::new(false));
    let mut targets = Vec::new();
    for node in &nodes {
        targets.push((node.id().to_owned(), node.channel().await.unwrap()));
    }
    let attacker = tokio::spawn(attack(targets, Arc::clone(&stop)));

    let mut acknowledged = BTreeMap::new();
    for i in 0..150 {
        let value = format!("under attack {i}");
        let offset = produce(&nodes[leader], &value)
            .await
            .unwrap_or_else(|status| panic!("produce {i} failed under attack: {status:?}"));
        acknowledged.insert(offset, value);
    }
    stop.store(true, Ordering::Relaxed);
    let sent = attacker.await.unwrap();
    assert!(sent >= 9, "only {sent} forged messages sent");

    // The same leader in the same epoch, and every record on every node.
    assert_eq!(wait_for_leader(&nodes, &all).await, leader);
    for node in &nodes {
        assert_eq!(status(node).await.unwrap().epoch, epoch, "{}", node.id());
    }
    let last = *acknowledged.keys().next_back().unwrap();
    wait_for_high_watermark(&nodes, last + 1).await;
    for node in &nodes {
        let mut client = LogClient::new(node.channel().await.unwrap());
        for (&offset, value) in &acknowledged {
            assert_eq!(
                consume_at(&mut client, offset).await.value,
                value.as_bytes(),
                "offset {offset} on {}",
                node.id()
            );
        }
    }
}
