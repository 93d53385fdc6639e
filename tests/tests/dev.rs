//! `proglog-node dev`, the README's main command: a local 3-node cluster in one command that
//! prints where to connect, replicates, and stops cleanly on Ctrl-C.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::{ConsumeRequest, ProduceRequest, Record};
use proglog_tests::node_process::node_binary;
use proglog_tests::ports::is_free;

/// A base port whose nine ports (3 nodes x RPC, gossip, HTTP) are free now, all below the
/// kernel's ephemeral range (see `proglog_tests::ports`).
fn free_base_port() -> u16 {
    for base in (20_000..31_000).step_by(557) {
        let ports = (0..3).flat_map(|i| [base + 10 * i, base + 10 * i + 1, base + 1000 + 10 * i]);
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
    let banner = tokio::time::timeout(Duration::from_secs(60), banner)
        .await
        .expect("dev printed its banner within 60 s")
        .unwrap();
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
