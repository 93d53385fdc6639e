//! A real node under the loads that exhaust servers: streams that never read, connections that
//! never speak, probes among half-open connections. Each test checks a bound (memory,
//! descriptors) and that the node keeps serving the clients that behave.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use proglog_proto::log::v1::{ConsumeRequest, ProduceBatchRequest, ProduceRequest, Record};
use proglog_tests::loopback::metrics;
use proglog_tests::node_process::{NodeOptions, NodeProcess};

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
fn memory_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line:?}"));
    kib * 1024
}

const MIB: u64 = 1 << 20;

/// 256 MB, the bound on the node's resident memory under 2,000 streams that never read.
const MEMORY_BOUND: u64 = 256_000_000;

/// A sample's value from the node's `/metrics`, if it is there.
async fn metric(node: &NodeProcess, series: &str) -> Option<f64> {
    metrics(node)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// 2,000 `ConsumeStream`s from the start of a 48 MiB log whose clients never read a message:
/// the node reads ahead only what its stream memory allows, so its peak resident memory stays
/// under 256 MB; a producer on another connection keeps committing while they are open; a
/// consumer that does read gets the whole log, once the streams over their share have been cut
/// off as slow consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_never_read_leave_memory_bounded() {
    let node = NodeProcess::start(NodeOptions::default().flag("--segment-bytes", "16777216"))
        .await
        .unwrap();
    let mut producer = node.log_client().await.unwrap();
    // 48 MiB in 16 KiB records, 64 to a batch.
    let value = Bytes::from(vec![7u8; 16 << 10]);
    for _ in 0..48 {
        let records = (0..64)
            .map(|_| Record {
                value: value.clone(),
                ..Default::default()
            })
            .collect();
        producer
            .produce_batch(ProduceBatchRequest {
                records,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let before = memory_field(node.pid(), "VmRSS");

    // Four connections of 500 streams each; every stream is opened (its response headers have
    // arrived) and then never read.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let client = node.log_client().await.unwrap();
        let opened = futures_util::future::join_all((0..500).map(|_| {
            let mut client = client.clone();
            async move {
                client
                    .consume_stream(ConsumeRequest {
                        offset: 0,
                        ..Default::default()
                    })
                    .await
            }
        }))
        .await;
        for stream in opened {
            streams.push(stream.unwrap().into_inner());
        }
    }
    // While they sit there, another client produces; every produce commits.
    for i in 0..200u32 {
        producer
            .produce(ProduceRequest {
                record: Some(Record {
                    value: Bytes::from(i.to_be_bytes().to_vec()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // And a client that does read gets the whole log through.
    let mut reader = node
        .log_client()
        .await
        .unwrap()
        .consume_stream(ConsumeRequest {
            offset: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut read = 0;
    while read < 48 * 64 + 200 {
        let message = tokio::time::timeout(Duration::from_secs(60), reader.message())
            .await
            .expect("a reading consumer stalled")
            .unwrap()
            .expect("the stream ended early");
        assert_eq!(message.record.unwrap().offset, read);
        read += 1;
    }
    let peak = memory_field(node.pid(), "VmHWM");
    assert!(
        peak < MEMORY_BOUND,
        "2,000 streams that never read took the node to {} MiB resident (from {} MiB)",
        peak / MIB,
        before / MIB
    );
    let cut = metric(&node, "proglog_slow_consumers_total").await;
    assert!(
        cut.is_some_and(|cut| cut > 0.0),
        "no stream was cut off as a slow consumer: {cut:?}"
    );
    drop(streams);
}
