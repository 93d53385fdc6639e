//! A real node under the loads that exhaust servers: streams that never read, connections that
//! never speak, probes among half-open connections. Each test checks a bound (memory,
//! descriptors) and that the node keeps serving the clients that behave.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use proglog_proto::log::v1::{ConsumeRequest, ProduceBatchRequest, ProduceRequest, Record};
use proglog_tests::loopback::metric;
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

/// The start of the HTTP/2 client preface: what a half-open client sends before it stalls.
const HALF_PREFACE: &[u8] = b"PRI * HTTP/2";

/// Raises this process's soft descriptor limit to its hard limit; `false` if that leaves less
/// than `needed`.
fn descriptors_for_test(needed: u64) -> bool {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limits = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limits.maximum,
        maximum: limits.maximum,
    };
    setrlimit(Resource::Nofile, raised).is_ok() && limits.maximum.is_none_or(|max| max >= needed)
}

/// Whether the node closed `stream` (EOF or reset) within the deadline, reading past what it
/// sent first (its HTTP/2 settings).
async fn closed_by_node(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), closed)
        .await
        .is_ok()
}

/// A node under a descriptor limit of 1,024 (a container's usual soft limit), with 64 KiB
/// segments, meets 2,000 connections that never send a request (half of them stall inside the
/// HTTP/2 preface). It keeps within its descriptors (closing the oldest silent connections to
/// make room, then each at its first-request deadline), so the segment rolls of a producer's
/// 300 records all succeed and the node never stops; every silent connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_under_a_low_descriptor_limit_never_stop_the_log() {
    use tokio::io::AsyncWriteExt;
    const SILENT: usize = 2000;
    let Some(prlimit) = ["/usr/bin/prlimit", "/bin/prlimit"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
    else {
        println!("skipped: prlimit (util-linux) is not installed");
        return;
    };
    if !descriptors_for_test(SILENT as u64 + 512) {
        println!("skipped: this process may not open {SILENT} sockets");
        return;
    }
    let node = NodeProcess::start(
        NodeOptions::default()
            .wrapper(prlimit, ["--nofile=1024:1024"])
            .flag("--segment-bytes", "65536")
            .flag("--max-record-bytes", "16384")
            .env("PROGLOG_FIRST_REQUEST_TIMEOUT_MS", "3000"),
    )
    .await
    .unwrap();
    let addr = node.rpc_addr();
    let mut silent = Vec::with_capacity(SILENT);
    for i in 0..SILENT {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            // The node may already have closed it to make room.
            let _ = stream.write_all(HALF_PREFACE).await;
        }
        silent.push(stream);
    }

    // 300 records of 4 KiB: a segment roll every 15 or so.
    let mut producer = node.log_client().await.unwrap();
    let value = Bytes::from(vec![3u8; 4 << 10]);
    for i in 0..300u64 {
        let offset = producer
            .produce(ProduceRequest {
                record: Some(Record {
                    value: value.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("produce {i} failed: {status}"))
            .into_inner()
            .offset;
        assert_eq!(offset, i);
    }
    let segments = metric(&node, r#"proglog_log_segments{log="default"}"#)
        .await
        .unwrap();
    assert!(segments >= 10.0, "only {segments} segments: too few rolls");
    let consumed = producer
        .consume(ConsumeRequest {
            offset: 299,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(consumed.value, value);

    // Every silent connection is closed by the node: to make room, or at its deadline.
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_node(stream).await,
            "silent connection {i} is still open"
        );
    }
    let mut closed = 0.0;
    for reason in ["evicted", "timed_out", "refused"] {
        let series =
            format!("proglog_connections_closed_total{{listener=\"rpc\",reason=\"{reason}\"}}");
        closed += metric(&node, &series).await.unwrap_or(0.0);
    }
    assert!(
        closed >= SILENT as f64,
        "the node counted {closed} closed connections"
    );
}

/// A probe of `path` as the kubelet makes it: a fresh connection, one request, the response
/// within the probe's timeout (`None` if it did not come).
async fn probe(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let call = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    };
    // Generous next to the kubelet's default probe timeout (1 s), as the test shares the
    // machine with others; but without room made for it, a probe waits for half-open
    // connections' header timeout (10 s) at least, and fails here.
    tokio::time::timeout(Duration::from_secs(9), call)
        .await
        .ok()
        .flatten()
}

/// 200 connections that send half a request's headers and stall hold the HTTP listener's 64
/// places; `/healthz` and `/readyz` probes still get their answers, because the oldest
/// half-open connection makes room for each newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_get_through_half_open_http_connections() {
    use tokio::io::AsyncWriteExt;
    let node = NodeProcess::start_default().await.unwrap();
    let addr = node.http_addr().unwrap();
    let mut half_open = Vec::new();
    for _ in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The node may already have closed it to make room.
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: prober\r\n")
            .await;
        half_open.push(stream);
    }
    for round in 0..10 {
        for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
            let response = probe(addr, path).await;
            assert!(
                response.as_deref().is_some_and(
                    |response| response.starts_with("HTTP/1.1 200") && response.ends_with(body)
                ),
                "probe {round} of {path} failed among 200 half-open connections: {response:?}"
            );
        }
        // More half-open connections arrive between probes.
        for _ in 0..20 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\n").await;
            half_open.push(stream);
        }
    }
    let evicted = metric(
        &node,
        "proglog_connections_closed_total{listener=\"http\",reason=\"evicted\"}",
    )
    .await;
    assert!(
        evicted.is_some_and(|evicted| evicted >= 136.0),
        "{evicted:?}"
    );
}
