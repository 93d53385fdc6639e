//! `proglog-node dev`, the README's main command: a local 3-node cluster in one command that
//! prints where to connect, replicates, keeps its peer and admin services on their own
//! mutual-TLS ports, and stops cleanly on Ctrl-C.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use proglog_proto::log::v1::admin_client::AdminClient;
use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::peer_client::PeerClient;
use proglog_proto::log::v1::{
    BeginQuorumEpochRequest, ClusterStatusRequest, ConsumeRequest, ProduceRequest, Record,
};
use proglog_tests::node_process::node_binary;
use proglog_tests::ports::is_free;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A base port whose twelve ports (3 nodes x RPC, gossip, peer, HTTP) are free now, all below
/// the kernel's ephemeral range (see `proglog_tests::ports`).
fn free_base_port() -> u16 {
    for base in (20_000..31_000).step_by(557) {
        let ports = (0..3).flat_map(|i| {
            [
                base + 10 * i,
                base + 10 * i + 1,
                base + 10 * i + 2,
                base + 1000 + 10 * i,
            ]
        });
        let free = ports.clone().all(is_free);
        if free {
            return base;
        }
    }
    panic!("no free base port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_starts_a_replicating_cluster_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let mut child = Command::new(node_binary().unwrap())
        .args(["dev", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The banner ends with how to stop it; everything before names the nodes.
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let Ok(banner) = tokio::time::timeout(Duration::from_secs(60), banner).await else {
        // The nodes' own logs say why there is no leader.
        let mut logs = String::new();
        for i in 0..3 {
            let path = dir.path().join(format!("node-{i}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            logs.push_str(&format!("--- {} (last 30 lines)\n", path.display()));
            for line in tail.into_iter().rev() {
                logs.push_str(line);
                logs.push('\n');
            }
        }
        let _ = child.kill();
        panic!("dev printed no banner within 60 s\n{logs}");
    };
    let banner = banner.unwrap();
    let text = banner.join("\n");
    for i in 0..3 {
        assert!(
            text.contains(&format!("node-{i}  rpc 127.0.0.1:{}", base + 10 * i)),
            "{text}"
        );
    }
    assert_eq!(text.matches("(leader)").count(), 1, "{text}");

    // Produce through the last node, read it back from the first.
    let addr = |i: u16| format!("http://127.0.0.1:{}", base + 10 * i);
    let mut producer = LogClient::connect(addr(2)).await.unwrap();
    let offset = producer
        .produce(ProduceRequest {
            record: Some(Record {
                value: b"hello".to_vec().into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .offset;
    let mut consumer = LogClient::connect(addr(0)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let record = loop {
        match consumer
            .consume(ConsumeRequest {
                offset,
                ..Default::default()
            })
            .await
        {
            Ok(response) => break response.into_inner().record.unwrap(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
                assert!(tokio::time::Instant::now() < deadline, "never replicated");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(record.value, "hello".as_bytes());

    // The peer and admin services are not on the clients' port, but on the peer port, for
    // certificates of the dev CA only.
    let mut peer = PeerClient::connect(addr(0)).await.unwrap();
    let missing = peer
        .begin_quorum_epoch(BeginQuorumEpochRequest {
            epoch: 1,
            leader_id: "node-1".into(),
        })
        .await
        .expect_err("the peer service is not on the RPC port");
    assert_eq!(missing.code(), tonic::Code::Unimplemented, "{missing:?}");
    let tls_dir = dir.path().join("tls");
    let read = |name: &str| std::fs::read(tls_dir.join(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("admin.pem"), read("admin-key.pem")))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", base + 2))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = AdminClient::new(channel)
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.leader_id.is_empty(), "{status:?}");
    let plaintext = Endpoint::from_shared(format!("http://127.0.0.1:{}", base + 2))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert!(
        AdminClient::new(plaintext)
            .cluster_status(ClusterStatusRequest {})
            .await
            .is_err(),
        "the peer port answered plaintext"
    );

    // Ctrl-C: every node stops, and so does dev, successfully.
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(60), status)
        .await
        .expect("dev exited within 60 s of Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status}");
}
