//! The `log.v1.Log` API of a real `proglog-node` process, over gRPC on a loopback port.
//!
//! Each test starts its own node (port 0, a temporary data directory) through
//! [`proglog_tests::node_process`], which documents how the binary is found: `cargo test
//! --workspace` builds it; with `cargo test -p proglog-tests` build it first with `cargo build -p
//! proglog-node --bin proglog-node`. Every wait has a deadline: a hung node fails the test.
//!

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures_util::stream;
use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::{
    ConsumeRequest, GetOffsetsRequest, GetServersRequest, ProduceBatchRequest, ProduceRequest,
    Record,
};
use proglog_tests::node_process::{NodeOptions, NodeProcess};
use proglog_tests::python::run_grpcio_client;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The longest any one call (or one stream message) may take.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `future`, failing if it takes longer than [`CALL_DEADLINE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(CALL_DEADLINE, future)
        .await
        .with_context(|| format!("{what} took longer than {CALL_DEADLINE:?}"))
}

fn now_ms() -> anyhow::Result<i64> {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH)?;
    Ok(i64::try_from(since_epoch.as_millis())?)
}

/// A record to produce: only the value set, so the node assigns the rest.
fn record(value: impl Into<Bytes>) -> Record {
    Record {
        value: value.into(),
        ..Record::default()
    }
}

fn produce_request(record: Record) -> ProduceRequest {
    ProduceRequest {
        record: Some(record),
        ..Default::default()
    }
}

fn consume_request(offset: u64) -> ConsumeRequest {
    ConsumeRequest {
        offset,
        ..ConsumeRequest::default()
    }
}

async fn produce(client: &mut LogClient<Channel>, record: Record) -> anyhow::Result<u64> {
    let response = within("Produce", client.produce(produce_request(record)))
        .await?
        .context("Produce failed")?;
    Ok(response.into_inner().offset)
}

async fn consume(client: &mut LogClient<Channel>, offset: u64) -> anyhow::Result<Record> {
    let response = within("Consume", client.consume(consume_request(offset)))
        .await?
        .with_context(|| format!("Consume({offset}) failed"))?;
    response
        .into_inner()
        .record
        .with_context(|| format!("Consume({offset}) answered without a record"))
}

/// The status of a call expected to fail.
fn expect_error<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Status>,
) -> anyhow::Result<Status> {
    match result {
        Ok(value) => bail!("{what} succeeded with {value:?}; expected an error"),
        Err(status) => Ok(status),
    }
}

/// The error of a `ConsumeStream` expected to fail, whether the node refuses the call or ends
/// the stream with it.
async fn consume_stream_error(
    client: &mut LogClient<Channel>,
    offset: u64,
) -> anyhow::Result<Status> {
    let response = match within(
        "ConsumeStream",
        client.consume_stream(consume_request(offset)),
    )
    .await?
    {
        Err(status) => return Ok(status),
        Ok(response) => response,
    };
    let mut stream = response.into_inner();
    let first = within("ConsumeStream's first message", stream.message()).await?;
    expect_error(&format!("ConsumeStream from {offset}"), first)
}

/// `(offset, value)` of every record in the log, read with one `ConsumeStream` from 0.
async fn read_all(client: &mut LogClient<Channel>) -> anyhow::Result<Vec<(u64, Bytes)>> {
    let end = within(
        "GetOffsets",
        client.get_offsets(GetOffsetsRequest::default()),
    )
    .await??
    .into_inner()
    .end_offset;
    let mut records = Vec::new();
    if end == 0 {
        return Ok(records);
    }
    let mut stream = within("ConsumeStream", client.consume_stream(consume_request(0)))
        .await??
        .into_inner();
    while (records.len() as u64) < end {
        let response = within("ConsumeStream message", stream.message())
            .await??
            .context("ConsumeStream ended before the end of the log")?;
        let record = response.record.context("ConsumeStream sent no record")?;
        records.push((record.offset, record.value));
    }
    Ok(records)
}

#[tokio::test]
async fn produce_then_consume_round_trips_every_field() -> anyhow::Result<()> {
    let node = NodeProcess::start_default().await?;
    let mut client = node.log_client().await?;
    let explicit_timestamp = now_ms()? - 3_600_000;
    let all_bytes: Vec<u8> = (0..=255).collect();
    let produced = vec![
        Record {
            value: Bytes::from_static(b"first"),
            r#type: 1,
            // The node assigns the term (its leader epoch); a client's is ignored.
            term: 99,
            ..Record::default()
        },
        Record {
            value: Bytes::new(),
            r#type: 0,
            ..Record::default()
        },
        Record {
            value: Bytes::from(all_bytes),
            r#type: u32::MAX,
            timestamp_ms: explicit_timestamp,
            ..Record::default()
        },
        Record {
            value: Bytes::from(vec![b'x'; 100_000]),
            r#type: 7,
            ..Record::default()
        },
    ];

    let before = now_ms()?;
    let mut offsets = Vec::new();
    for record in &produced {
        offsets.push(produce(&mut client, record.clone()).await?);
    }
    let after = now_ms()?;
    assert_eq!(offsets, vec![0, 1, 2, 3], "offsets of consecutive produces");

    for (offset, sent) in offsets.iter().zip(&produced) {
        let got = consume(&mut client, *offset).await?;
        assert_eq!(got.offset, *offset);
        assert_eq!(got.value, sent.value, "value at offset {offset}");
        assert_eq!(got.r#type, sent.r#type, "type at offset {offset}");
        // A single node elects itself in epoch 1 on its first start.
        assert_eq!(got.term, 1, "term at offset {offset}");
        if sent.timestamp_ms == 0 {
            assert!(
                (before..=after).contains(&got.timestamp_ms),
                "timestamp {} at offset {offset} is not the time of the produce ({before}..={after})",
                got.timestamp_ms
            );
        } else {
            assert_eq!(got.timestamp_ms, sent.timestamp_ms, "timestamp at {offset}");
        }
    }
    Ok(())
}

/// Age retention goes by record timestamps, so a client's clock must not decide when records
/// are deleted: a timestamp more than 7 days old (1970, say) or more than an hour ahead
/// (`i64::MAX`, which would pin its segment for good) is refused, naming the flag, and nothing
/// is appended; with `--timestamp-out-of-window replace`, such a record is stamped with the
/// node's clock instead.
#[tokio::test]
async fn timestamps_far_from_the_node_s_clock_are_refused_or_replaced() -> anyhow::Result<()> {
    let node = NodeProcess::start(NodeOptions::default().flag("--retention-hours", "1")).await?;
    let mut client = node.log_client().await?;
    let hour = 3_600_000;
    for (timestamp_ms, flag) in [
        (1, "--timestamp-before-max-ms"),
        (now_ms()? - 8 * 24 * hour, "--timestamp-before-max-ms"),
        (now_ms()? + 2 * hour, "--timestamp-after-max-ms"),
        (i64::MAX, "--timestamp-after-max-ms"),
    ] {
        let refused = client
            .produce(produce_request(Record {
                timestamp_ms,
                ..record("stamped by a client")
            }))
            .await;
        let status = expect_error("a timestamp outside the window", refused)?;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(flag), "{status:?}");
    }
    let accepted = now_ms()? - 24 * hour;
    let offset = produce(
        &mut client,
        Record {
            timestamp_ms: accepted,
            ..record("yesterday")
        },
    )
    .await?;
    assert_eq!(offset, 0, "nothing refused was appended");
    assert_eq!(consume(&mut client, 0).await?.timestamp_ms, accepted);

    let node =
        NodeProcess::start(NodeOptions::default().flag("--timestamp-out-of-window", "replace"))
            .await?;
    let mut client = node.log_client().await?;
    let before = now_ms()?;
    produce(
        &mut client,
        Record {
            timestamp_ms: 1,
            ..record("from 1970")
        },
    )
    .await?;
    let stamped = consume(&mut client, 0).await?.timestamp_ms;
    assert!(
        (before..=now_ms()?).contains(&stamped),
        "the record kept the client's timestamp: {stamped}"
    );
    Ok(())
}

/// An `acks` value the API does not define is refused, not read as the default, on every
/// produce call; nothing is appended.
#[tokio::test]
async fn an_unknown_acks_value_is_invalid_argument() -> anyhow::Result<()> {
    let node = NodeProcess::start_default().await?;
    let mut client = node.log_client().await?;
    let unary = client
        .produce(ProduceRequest {
            acks: 7,
            ..produce_request(record("unknown acks"))
        })
        .await;
    let batch = client
        .produce_batch(ProduceBatchRequest {
            records: vec![record("unknown acks")],
            acks: -1,
            ..Default::default()
        })
        .await;
    let stream = client
        .produce_stream(stream::iter([ProduceRequest {
            acks: 2,
            ..produce_request(record("unknown acks"))
        }]))
        .await;
    let stream_status = match stream {
        Ok(response) => {
            let mut responses = response.into_inner();
            expect_error("ProduceStream", responses.message().await)?
        }
        Err(status) => status,
    };
    for status in [
        expect_error("Produce", unary)?,
        expect_error("ProduceBatch", batch)?,
        stream_status,
    ] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("`acks`"), "{status:?}");
    }
    assert_eq!(
        produce(&mut client, record("known")).await?,
        0,
        "nothing was appended"
    );
    Ok(())
}

#[tokio::test]
async fn consume_stream_follows_the_log_and_ends_with_unavailable_on_sigterm() -> anyhow::Result<()>
{
    let mut node = NodeProcess::start_default().await?;
    let mut producer = node.log_client().await?;
    for i in 0..3 {
        produce(&mut producer, record(format!("before-{i}"))).await?;
    }

    let mut consumer = node.log_client().await?;
    let mut stream = within("ConsumeStream", consumer.consume_stream(consume_request(0)))
        .await??
        .into_inner();
    for i in 0..3u64 {
        let response = within("existing record", stream.message())
            .await??
            .context("stream ended early")?;
        let record = response.record.context("no record")?;
        assert_eq!(record.offset, i);
        assert_eq!(record.value, format!("before-{i}"));
    }

    // The stream has caught up; a record produced now must reach it.
    let offset = produce(&mut producer, record("after")).await?;
    assert_eq!(offset, 3);
    let response = within(
        "record produced after the stream caught up",
        stream.message(),
    )
    .await??
    .context("stream ended instead of delivering the new record")?;
    let record = response.record.context("no record")?;
    assert_eq!(
        (record.offset, record.value.as_ref()),
        (3, b"after".as_ref())
    );

    node.signal_term()?;
    let end = within("the stream's end after SIGTERM", stream.message()).await?;
    // The stream ends with UNAVAILABLE naming where to resume, so a client can tell a node
    // going away from the end of a stream it asked for.
    match end {
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(
                status.message().contains("resume from offset 4"),
                "{status:?}"
            );
        }
        Ok(Some(response)) => panic!("stream delivered {response:?} after SIGTERM, not its end"),
        Ok(None) => panic!("stream ended OK on SIGTERM, as if the client had finished it"),
    }
    let status = node.wait_exit().await?;
    assert!(status.success(), "node exited with {status} after SIGTERM");
    Ok(())
}

/// Sends `count` produce requests on one `ProduceStream` without waiting for responses.
/// Returns the requests' values and the offsets the responses carried, in response order.
async fn produce_pipelined(
    client: &mut LogClient<Channel>,
    count: usize,
) -> anyhow::Result<(Vec<Bytes>, Vec<u64>)> {
    let values: Vec<Bytes> = (0..count)
        .map(|i| Bytes::from(format!("pipelined-{i}")))
        .collect();
    let requests: Vec<ProduceRequest> = values
        .iter()
        .map(|value| produce_request(record(value.clone())))
        .collect();
    let mut responses = within(
        "ProduceStream",
        client.produce_stream(stream::iter(requests)),
    )
    .await??
    .into_inner();
    let mut offsets = Vec::new();
    while let Some(response) = within("ProduceStream response", responses.message()).await?? {
        offsets.push(response.offset);
    }
    Ok((values, offsets))
}

#[tokio::test]
async fn produce_stream_pipelines_1000_requests() -> anyhow::Result<()> {
    let node = NodeProcess::start_default().await?;
    let mut client = node.log_client().await?;
    let (values, offsets) = produce_pipelined(&mut client, 1000).await?;
    assert_eq!(offsets.len(), 1000, "one response per request");
    let mut sorted = offsets.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..1000).collect::<Vec<u64>>(),
        "offsets fill 0..1000"
    );

    // Each response's offset holds that request's record, and nothing else was written.
    let stored: HashMap<u64, Bytes> = read_all(&mut client).await?.into_iter().collect();
    assert_eq!(stored.len(), 1000);
    for (value, offset) in values.iter().zip(&offsets) {
        assert_eq!(stored.get(offset), Some(value), "record at offset {offset}");
    }
    Ok(())
}

#[tokio::test]
async fn produce_stream_appends_in_request_order() -> anyhow::Result<()> {
    let node = NodeProcess::start_default().await?;
    let mut client = node.log_client().await?;
    let (_, offsets) = produce_pipelined(&mut client, 1000).await?;
    let out_of_order: Vec<(usize, u64)> = offsets
        .iter()
        .enumerate()
        .filter(|(i, offset)| **offset != *i as u64)
        .map(|(i, offset)| (i, *offset))
        .take(10)
        .collect();
    assert!(
        out_of_order.is_empty(),
        "request i must get offset i; first (request, offset) pairs that did not: {out_of_order:?}"
    );
    Ok(())
}

#[tokio::test]
async fn consume_past_the_end_is_out_of_range_with_the_valid_range() -> anyhow::Result<()> {
    let node = NodeProcess::start_default().await?;
    let mut client = node.log_client().await?;

    let status = expect_error(
        "Consume(0) of an empty log",
        within("Consume", client.consume(consume_request(0))).await?,
    )?;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("0..0"), "{status:?}");

    for i in 0..3 {
        produce(&mut client, record(format!("r{i}"))).await?;
    }
    for offset in [3, 4, 1_000_000, u64::MAX] {
        let status = expect_error(
            &format!("Consume({offset})"),
            within("Consume", client.consume(consume_request(offset))).await?,
        )?;
        assert_eq!(
            status.code(),
            Code::OutOfRange,
            "Consume({offset}): {status:?}"
        );
        assert!(
            status.message().contains("0..3"),
            "Consume({offset}) should name the valid range 0..3: {status:?}"
        );
    }

    for offset in [4, u64::MAX] {
        let status = consume_stream_error(&mut client, offset).await?;
        assert_eq!(
            status.code(),
            Code::OutOfRange,
            "ConsumeStream({offset}): {status:?}"
        );
        assert!(status.message().contains("0..3"), "{status:?}");
    }

    // The end itself is a valid start: the stream waits there for the next record.
    let mut stream = within(
        "ConsumeStream(3)",
        client.consume_stream(consume_request(3)),
    )
    .await??
    .into_inner();
    let mut producer = node.log_client().await?;
    assert_eq!(produce(&mut producer, record("r3")).await?, 3);
    let response = within("ConsumeStream(3) message", stream.message())
        .await??
        .context("stream ended")?;
    assert_eq!(response.record.context("no record")?.offset, 3);
    Ok(())
}

#[tokio::test]
async fn record_over_max_record_bytes_is_invalid_argument_and_changes_nothing() -> anyhow::Result<()>
{
    let node =
        NodeProcess::start(NodeOptions::default().flag("--max-record-bytes", "1024")).await?;
    let mut client = node.log_client().await?;
    assert_eq!(produce(&mut client, record("a")).await?, 0);
    assert_eq!(produce(&mut client, record("b")).await?, 1);

    for size in [1025, 64 * 1024, 1 << 20] {
        let status = expect_error(
            &format!("Produce of {size} bytes"),
            within(
                "Produce",
                client.produce(produce_request(record(vec![7u8; size]))),
            )
            .await?,
        )?;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{size} bytes: {status:?}"
        );
        assert!(
            status.message().contains("1024"),
            "the error for {size} bytes should name the limit 1024: {status:?}"
        );
    }

    // The limit itself is allowed, and the rejected records left no trace.
    let at_limit = Bytes::from(vec![9u8; 1024]);
    assert_eq!(produce(&mut client, record(at_limit.clone())).await?, 2);
    assert_eq!(produce(&mut client, record("c")).await?, 3);
    let stored = read_all(&mut client).await?;
    let expected: Vec<(u64, Bytes)> = vec![
        (0, Bytes::from_static(b"a")),
        (1, Bytes::from_static(b"b")),
        (2, at_limit),
        (3, Bytes::from_static(b"c")),
    ];
    assert_eq!(stored, expected);
    Ok(())
}

#[tokio::test]
async fn huge_record_is_invalid_argument_naming_the_limit() -> anyhow::Result<()> {
    let node =
        NodeProcess::start(NodeOptions::default().flag("--max-record-bytes", "1024")).await?;
    let mut client = node.log_client().await?;
    let status = expect_error(
        "Produce of 9 MiB",
        within(
            "Produce",
            client.produce(produce_request(record(vec![7u8; 9 << 20]))),
        )
        .await?,
    )?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("1024"), "{status:?}");
    // Nothing was appended, and the node goes on.
    assert_eq!(produce(&mut client, record("after")).await?, 0);
    Ok(())
}

#[tokio::test]
async fn produce_stream_ends_at_a_rejected_record() -> anyhow::Result<()> {
    let node =
        NodeProcess::start(NodeOptions::default().flag("--max-record-bytes", "1024")).await?;
    let mut client = node.log_client().await?;
    let requests = vec![
        produce_request(record("ok-0")),
        produce_request(record(vec![0u8; 2048])),
    ];
    let mut responses = within(
        "ProduceStream",
        client.produce_stream(stream::iter(requests)),
    )
    .await??
    .into_inner();
    let first = within("first response", responses.message())
        .await??
        .context("no response to the valid request")?;
    assert_eq!(first.offset, 0);
    let status = expect_error(
        "ProduceStream's oversized request",
        within("second response", responses.message()).await?,
    )?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("1024"), "{status:?}");
    assert_eq!(read_all(&mut client).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn produce_stream_appends_nothing_after_a_rejected_record() -> anyhow::Result<()> {
    let node =
        NodeProcess::start(NodeOptions::default().flag("--max-record-bytes", "1024")).await?;
    let mut client = node.log_client().await?;
    // The oversized request in the middle of a full pipeline: its rejection is immediate,
    // while the appends around it wait for their fsync.
    let mut requests: Vec<ProduceRequest> = (0..30)
        .map(|i| produce_request(record(format!("before-{i}"))))
        .collect();
    requests.push(produce_request(record(vec![0u8; 2048])));
    requests.extend((0..100).map(|i| produce_request(record(format!("after-{i}")))));
    let mut responses = within(
        "ProduceStream",
        client.produce_stream(stream::iter(requests)),
    )
    .await??
    .into_inner();
    let mut acknowledged = 0;
    let error = loop {
        match within("ProduceStream response", responses.message()).await? {
            Ok(Some(_)) => acknowledged += 1,
            Ok(None) => bail!("ProduceStream ended without reporting the oversized record"),
            Err(status) => break status,
        }
    };
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert_eq!(acknowledged, 30, "responses before the rejected request");
    let stored = read_all(&mut client).await?;
    let unacknowledged: Vec<(u64, String)> = stored
        .iter()
        .map(|(offset, value)| (*offset, String::from_utf8_lossy(value).into_owned()))
        .filter(|(_, value)| value.starts_with("after-"))
        .collect();
    assert!(
        unacknowledged.is_empty(),
        "{} records sent after the rejected one are in the log without a response: {:?}",
        unacknowledged.len(),
        unacknowledged.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(stored.len(), 30);
    Ok(())
}

#[tokio::test]
async fn health_serves_and_reflection_lists_the_log_service() -> anyhow::Result<()> {
    let node = NodeProcess::start_default().await?;
    let mut health = node.health_client().await?;
    for service in ["", "log.v1.Log"] {
        let response = within(
            "Health.Check",
            health.check(HealthCheckRequest {
                service: service.into(),
            }),
        )
        .await?
        .with_context(|| format!("Health.Check({service:?})"))?;
        assert_eq!(
            response.into_inner().status(),
            ServingStatus::Serving,
            "health of {service:?}"
        );
    }
    let unknown = expect_error(
        "Health.Check of an unknown service",
        within(
            "Health.Check",
            health.check(HealthCheckRequest {
                service: "no.such.Service".into(),
            }),
        )
        .await?,
    )?;
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let mut reflection = ServerReflectionClient::new(node.channel().await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = within(
        "ServerReflectionInfo",
        reflection.server_reflection_info(stream::iter(vec![request])),
    )
    .await??
    .into_inner();
    let response = within("reflection response", responses.message())
        .await??
        .context("no reflection response")?;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        bail!("reflection answered ListServices with {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["log.v1.Log", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }

    // The same through v1alpha, which older tools speak.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let mut alpha = AlphaClient::new(node.channel().await?);
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut responses = within(
        "v1alpha ServerReflectionInfo",
        alpha.server_reflection_info(stream::iter(vec![request])),
    )
    .await??
    .into_inner();
    let response = within("v1alpha reflection response", responses.message())
        .await??
        .context("no v1alpha reflection response")?;
    let Some(AlphaResponse::ListServicesResponse(list)) = response.message_response else {
        bail!("v1alpha reflection answered ListServices with {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"log.v1.Log"), "log.v1.Log not in {names:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_no_acknowledged_record() -> anyhow::Result<()> {
    const PRODUCERS: usize = 8;
    const PER_PRODUCER: usize = 50;
    /// SIGTERM goes out once this many records are acknowledged, with the rest in flight.
    const ACKS_BEFORE_SIGTERM: usize = 100;

    let data_dir = tempfile::tempdir()?;
    let mut node = NodeProcess::start(
        NodeOptions::default()
            .data_dir(data_dir.path())
            .flag("--durability", "always"),
    )
    .await?;

    let (ack_tx, mut acks) = mpsc::unbounded_channel::<(u64, Bytes)>();
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let mut client = node.log_client().await?;
        let ack_tx = ack_tx.clone();
        producers.push(tokio::spawn(async move {
            for seq in 0..PER_PRODUCER {
                let value = Bytes::from(format!("p{producer}-s{seq}-{}", "v".repeat(seq * 13)));
                let call = client.produce(produce_request(record(value.clone())));
                match tokio::time::timeout(CALL_DEADLINE, call).await {
                    Ok(Ok(response)) => {
                        // The receiver outlives the producers.
                        let _ = ack_tx.send((response.into_inner().offset, value));
                    }
                    // Refused or cut off by the shutdown: this producer is done.
                    Ok(Err(status)) => return Some(status),
                    Err(_) => return Some(Status::deadline_exceeded("Produce hung")),
                }
            }
            None
        }));
    }
    drop(ack_tx);

    let mut acknowledged: Vec<(u64, Bytes)> = Vec::new();
    let mut signalled = false;
    while let Some(ack) = within("the next acknowledgement", acks.recv()).await? {
        acknowledged.push(ack);
        if !signalled && acknowledged.len() >= ACKS_BEFORE_SIGTERM {
            node.signal_term()?;
            signalled = true;
        }
    }
    ensure!(signalled, "only {} acknowledgements", acknowledged.len());
    let mut refused = Vec::new();
    for producer in producers {
        if let Some(status) = within("producer task", producer).await?? {
            refused.push(status.code());
        }
    }
    let status = node.wait_exit().await?;
    assert!(status.success(), "node exited with {status} after SIGTERM");
    println!(
        "{} acknowledged before the exit; producers stopped by the shutdown with {refused:?}",
        acknowledged.len()
    );

    let mut offsets: Vec<u64> = acknowledged.iter().map(|(offset, _)| *offset).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(
        offsets.len(),
        acknowledged.len(),
        "an offset was acknowledged twice"
    );

    node.restart().await?;
    let mut client = node.log_client().await?;
    let stored: HashMap<u64, Bytes> = read_all(&mut client).await?.into_iter().collect();
    for (offset, value) in &acknowledged {
        assert_eq!(
            stored.get(offset),
            Some(value),
            "acknowledged record at offset {offset} after the restart"
        );
    }
    Ok(())
}

#[tokio::test]
async fn get_servers_names_this_node_as_leader() -> anyhow::Result<()> {
    let node = NodeProcess::start(NodeOptions::default().id("node-under-test")).await?;
    let mut client = node.log_client().await?;
    let servers = within(
        "GetServers",
        client.get_servers(GetServersRequest::default()),
    )
    .await??
    .into_inner()
    .servers;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0].id, "node-under-test");
    assert_eq!(servers[0].rpc_addr, node.rpc_addr().to_string());
    assert!(servers[0].is_leader);

    let advertised = "proglog-0.proglog.default.svc.cluster.local:8400";
    let node =
        NodeProcess::start(NodeOptions::default().flag("--advertise-addr", advertised)).await?;
    let mut client = node.log_client().await?;
    let servers = within(
        "GetServers",
        client.get_servers(GetServersRequest::default()),
    )
    .await??
    .into_inner()
    .servers;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0].rpc_addr, advertised);
    Ok(())
}

/// Every refused setting says which flag (and environment variable) it was, what was given,
/// what is allowed, and never a name the user cannot set.
#[tokio::test]
async fn bad_configuration_exits_non_zero_naming_the_flag_and_what_works() -> anyhow::Result<()> {
    let cases: Vec<(NodeOptions, &str, &str)> = vec![
        (
            NodeOptions::default().flag("--segment-bytes", "10"),
            "--segment-bytes (PROGLOG_SEGMENT_BYTES): 10 is outside 4096..=2147483648",
            "",
        ),
        (
            NodeOptions::default().flag("--segment-bytes", "ten"),
            "--segment-bytes",
            "ten",
        ),
        (
            NodeOptions::default().flag("--max-record-bytes", "0"),
            "--max-record-bytes (PROGLOG_MAX_RECORD_BYTES): 0 is outside 1..=",
            "",
        ),
        (
            NodeOptions::default().flag("--max-record-bytes", "2000000000"),
            "--max-record-bytes (PROGLOG_MAX_RECORD_BYTES): 2000000000 is outside 1..=1073737728",
            "",
        ),
        (
            NodeOptions::default().flag("--retention-hours", "0"),
            "--retention-hours (PROGLOG_RETENTION_HOURS): is 0",
            "leave it unset",
        ),
        (
            NodeOptions::default().flag("--retention-hours", "3000000000000"),
            "--retention-hours (PROGLOG_RETENTION_HOURS): 3000000000000 is outside 1..=1000000",
            "leave it unset",
        ),
        (
            NodeOptions::default().flag("--retention-bytes", "0"),
            "--retention-bytes (PROGLOG_RETENTION_BYTES): is 0",
            "leave it unset",
        ),
        (
            NodeOptions::default()
                .flag("--durability", "interval")
                .flag("--flush-interval-ms", "0"),
            "--flush-interval-ms (PROGLOG_FLUSH_INTERVAL_MS): is 0",
            "at least 1 ms",
        ),
        (
            NodeOptions::default().flag("--stream-memory-bytes", "1"),
            "--stream-memory-bytes (PROGLOG_STREAM_MEMORY_BYTES): 1 is outside",
            "--max-record-bytes",
        ),
        (
            NodeOptions::default().flag("--durability", "sometimes"),
            "--durability",
            "always",
        ),
        (
            NodeOptions::default().id(""),
            "--id (PROGLOG_ID)",
            "1 to 128",
        ),
        (
            NodeOptions::default().env("PROGLOG_SEGMENT_BYTES", "10"),
            "--segment-bytes (PROGLOG_SEGMENT_BYTES)",
            "4096..=2147483648",
        ),
        (
            NodeOptions {
                rpc_addr: "localhost".into(),
                ..NodeOptions::default()
            },
            "rpc-addr",
            "",
        ),
    ];
    for (options, names, allowed) in cases {
        let exited = options.run_to_exit().await?;
        let stderr = exited.stderr.join("\n");
        assert!(
            !exited.status.success(),
            "{:?} {:?}: exited with {}",
            options.args,
            options.envs,
            exited.status
        );
        for expected in [names, allowed] {
            assert!(
                stderr.contains(expected),
                "{:?} {:?}: stderr does not say `{expected}`:\n{stderr}",
                options.args,
                options.envs
            );
        }
        for internal in [
            "max_batch_bytes",
            "max_record_bytes",
            "segment_bytes",
            "retention_age",
        ] {
            assert!(
                !stderr.contains(internal),
                "{:?}: stderr names `{internal}`, which no flag sets:\n{stderr}",
                options.args
            );
        }
        assert!(
            !stderr.contains("\"serving\""),
            "started serving:\n{stderr}"
        );
    }
    Ok(())
}

/// A segment holds at least one batch of the largest size allowed, so segments smaller than
/// the record limit work with every default: a 1 MiB record goes into a log of 1 MiB and of
/// 4 KiB segments, and is there after a crash.
#[tokio::test]
async fn small_segments_start_with_the_default_record_limit_and_take_the_largest_record()
-> anyhow::Result<()> {
    for segment_bytes in ["1048576", "4096"] {
        let mut node =
            NodeProcess::start(NodeOptions::default().flag("--segment-bytes", segment_bytes))
                .await?;
        let mut client = node.log_client().await?;
        let largest = vec![b'x'; 1 << 20];
        assert_eq!(produce(&mut client, record("small")).await?, 0);
        assert_eq!(produce(&mut client, record(largest.clone())).await?, 1);
        assert_eq!(produce(&mut client, record("after")).await?, 2);
        assert_eq!(consume(&mut client, 1).await?.value, largest);
        // After a crash, recovery reads the large batch back too.
        node.kill().await?;
        node.restart().await?;
        let mut client = node.log_client().await?;
        assert_eq!(consume(&mut client, 1).await?.value, largest);
        assert_eq!(consume(&mut client, 2).await?.value, &b"after"[..]);
        assert!(node.terminate().await?.success());
    }
    Ok(())
}

#[tokio::test]
async fn python_grpcio_client_interoperates() -> anyhow::Result<()> {
    let node = NodeProcess::start_default().await?;
    let report = run_grpcio_client(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &[node.rpc_addr().to_string()],
        Duration::from_secs(60),
    )
    .await?;
    let produced = report["produced"]
        .as_array()
        .context("the report has no `produced` list")?;
    ensure!(!produced.is_empty(), "the Python client produced nothing");
    let mut client = node.log_client().await?;
    for item in produced {
        let offset = item["offset"].as_u64().context("offset")?;
        let value = item["value"].as_str().context("value")?;
        let record_type = item["type"].as_u64().context("type")?;
        let got = consume(&mut client, offset).await?;
        assert_eq!(got.value, value.as_bytes(), "value at offset {offset}");
        assert_eq!(
            u64::from(got.r#type),
            record_type,
            "type at offset {offset}"
        );
    }
    let end = within(
        "GetOffsets",
        client.get_offsets(GetOffsetsRequest::default()),
    )
    .await??
    .into_inner()
    .end_offset;
    assert_eq!(
        end,
        produced.len() as u64,
        "records beyond the Python client's"
    );
    Ok(())
}

#[tokio::test]
async fn an_open_health_watch_ends_at_shutdown_instead_of_holding_the_drain() -> anyhow::Result<()>
{
    let mut node = NodeProcess::start_default().await?;
    let mut health = node.health_client().await?;
    let mut watch = within(
        "Health.Watch",
        health.watch(HealthCheckRequest {
            service: "log.v1.Log".into(),
        }),
    )
    .await??
    .into_inner();
    let first = within("first watch update", watch.message())
        .await??
        .context("the watch ended before its first update")?;
    assert_eq!(first.status(), ServingStatus::Serving);
    let exit = node.terminate().await?;
    assert!(exit.success(), "{exit}");
    // The watch saw the node stop serving, then ended; the drain never waited for it.
    let mut statuses = Vec::new();
    while let Ok(Some(update)) = within("watch update", watch.message()).await? {
        statuses.push(update.status());
    }
    assert_eq!(statuses, [ServingStatus::NotServing]);
    assert!(
        !node
            .stderr_lines()
            .iter()
            .any(|line| line.contains("calls still running after the grace period")),
        "the drain waited for the watch"
    );
    Ok(())
}

/// A server that accepts connections and never answers (a hung process, a wrong port): every
/// `proglog` command gives up at its `--timeout` with an error that names the flag, instead of
/// hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_gives_up_on_a_silent_server_at_its_timeout() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let cli = proglog_tests::node_process::node_binary()?.with_file_name("proglog");
    for command in [
        &["produce", "never", "acknowledged"][..],
        &["consume", "--from", "0"],
        &["consume", "--follow"],
        &["servers"],
    ] {
        let run = tokio::process::Command::new(&cli)
            .args(["--addr", &addr.to_string(), "--timeout", "1s"])
            .args(command)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = within(&format!("proglog {command:?}"), run).await??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            !output.status.success(),
            "proglog {command:?} succeeded: {output:?}"
        );
        ensure!(
            stderr.contains("no answer within 1s (--timeout)"),
            "proglog {command:?} said: {stderr}"
        );
    }
    held.abort();
    Ok(())
}

/// Every `log.v1.Log` call names its log in `log`: empty and `default` are the one log every
/// cluster has; a name that breaks the rules is INVALID_ARGUMENT and a log the cluster does not
/// hold is NOT_FOUND, each naming it, on every method, and neither writes anything. The CLI's
/// `--log` does the same.
#[tokio::test]
async fn calls_name_their_log_and_unknown_or_bad_names_are_refused() -> anyhow::Result<()> {
    let node = NodeProcess::start(NodeOptions::default()).await?;
    let mut client = node.log_client().await?;
    let first = produce(&mut client, record("to the default log")).await?;
    let named = within(
        "Produce to `default`",
        client.produce(ProduceRequest {
            record: Some(record("named default")),
            log: "default".into(),
            ..Default::default()
        }),
    )
    .await??
    .into_inner()
    .offset;
    ensure!(named == first + 1, "one log: {first} then {named}");
    let read = within(
        "Consume from `default`",
        client.consume(ConsumeRequest {
            offset: first,
            log: "default".into(),
            ..Default::default()
        }),
    )
    .await??
    .into_inner();
    ensure!(read.record.map(|r| r.value) == Some(Bytes::from("to the default log")));
    let end = within(
        "GetOffsets",
        client.get_offsets(GetOffsetsRequest::default()),
    )
    .await??
    .into_inner()
    .end_offset;

    let long = "x".repeat(250);
    for (log, code, says) in [
        ("orders", Code::NotFound, "log `orders` does not exist"),
        (
            "no/slash",
            Code::InvalidArgument,
            "invalid log name \"no/slash\"",
        ),
        (".", Code::InvalidArgument, "reserved"),
        (long.as_str(), Code::InvalidArgument, "too long"),
    ] {
        let log = log.to_owned();
        let mut refusals = vec![
            (
                "Produce",
                client
                    .produce(ProduceRequest {
                        record: Some(record("never written")),
                        log: log.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "ProduceBatch",
                client
                    .produce_batch(ProduceBatchRequest {
                        records: vec![record("never written")],
                        log: log.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "Consume",
                client
                    .consume(ConsumeRequest {
                        log: log.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "ConsumeStream",
                client
                    .consume_stream(ConsumeRequest {
                        log: log.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "GetOffsets",
                client
                    .get_offsets(GetOffsetsRequest { log: log.clone() })
                    .await
                    .map(drop),
            ),
            (
                "GetServers",
                client
                    .get_servers(GetServersRequest { log: log.clone() })
                    .await
                    .map(drop),
            ),
        ];
        // A stream whose second request names the log: the first is appended, the second
        // ends the stream.
        let mut answers = within(
            "ProduceStream",
            client.produce_stream(stream::iter([
                ProduceRequest {
                    record: Some(record("streamed to default")),
                    ..Default::default()
                },
                ProduceRequest {
                    record: Some(record("never written")),
                    log: log.clone(),
                    ..Default::default()
                },
            ])),
        )
        .await??
        .into_inner();
        let appended = within("ProduceStream's first answer", answers.message())
            .await??
            .context("the stream ended before its first answer")?;
        ensure!(appended.offset >= end, "{appended:?}");
        refusals.push((
            "ProduceStream",
            within("ProduceStream's end", answers.message())
                .await?
                .map(drop),
        ));
        for (method, result) in refusals {
            let status = expect_error(&format!("{method} to {log:?}"), result)?;
            ensure!(
                status.code() == code && status.message().contains(says),
                "{method} to a log named {log:?}: {status:?}"
            );
            ensure!(
                status.message().len() < 400,
                "{method}: the name is cut short in the message"
            );
        }
    }
    // Only the records to `default` were written: three streamed ones, nothing else.
    let records = read_all(&mut client).await?;
    let values: Vec<&[u8]> = records.iter().map(|(_, value)| value.as_ref()).collect();
    ensure!(
        values
            == [
                b"to the default log".as_slice(),
                b"named default",
                b"streamed to default",
                b"streamed to default",
                b"streamed to default",
                b"streamed to default",
            ],
        "{values:?}"
    );

    // The CLI: `--log default` works, an unknown log and a bad name are refused, naming them.
    let cli = proglog_tests::node_process::node_binary()?.with_file_name("proglog");
    let run = |args: Vec<String>| {
        let cli = cli.clone();
        async move {
            within(
                "the CLI",
                tokio::process::Command::new(&cli)
                    .args(&args)
                    .stdin(Stdio::null())
                    .output(),
            )
            .await?
            .context("run the CLI")
        }
    };
    let addr = node.rpc_addr().to_string();
    let ok = run(vec![
        "--addr".into(),
        addr.clone(),
        "--log".into(),
        "default".into(),
        "produce".into(),
        "by the cli".into(),
    ])
    .await?;
    ensure!(ok.status.success(), "{ok:?}");
    for (log, says) in [
        ("orders", "log `orders` does not exist"),
        ("a b", "invalid log name \"a b\""),
    ] {
        let refused = run(vec![
            "--addr".into(),
            addr.clone(),
            "--log".into(),
            log.into(),
            "produce".into(),
            "never written".into(),
        ])
        .await?;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        ensure!(
            !refused.status.success() && stderr.contains(says),
            "--log {log:?}: {refused:?}"
        );
    }
    Ok(())
}

/// A produce stream that sends nothing holds no stream slot, waits at most
/// `--first-request-timeout-ms`, and only `--max-streams` of them wait at once.
#[tokio::test]
async fn a_produce_stream_that_sends_nothing_ends_at_the_first_request_timeout()
-> anyhow::Result<()> {
    let node = NodeProcess::start(
        NodeOptions::default()
            .flag("--max-streams", "1")
            .flag("--first-request-timeout-ms", "500"),
    )
    .await?;
    let mut client = node.log_client().await?;
    let (_sender, receiver) = mpsc::channel::<ProduceRequest>(1);
    let silent = proglog_tests::channel_stream(receiver);
    let mut answers = within("ProduceStream", client.produce_stream(silent))
        .await??
        .into_inner();
    // A second one waiting at the same time is one too many.
    let (_second_sender, second) = mpsc::channel::<ProduceRequest>(1);
    let second = proglog_tests::channel_stream(second);
    let refused = expect_error(
        "a second waiting ProduceStream",
        within("ProduceStream", client.produce_stream(second)).await?,
    )?;
    ensure!(refused.code() == Code::ResourceExhausted, "{refused:?}");
    // The waiting stream holds no slot: a consume stream (the one slot) still opens.
    produce(&mut client, record("one")).await?;
    let mut stream = within("ConsumeStream", client.consume_stream(consume_request(0)))
        .await??
        .into_inner();
    let first = within("the streamed record", stream.message()).await??;
    ensure!(first.and_then(|response| response.record).is_some());
    drop(stream);
    let ended = expect_error(
        "the silent ProduceStream",
        within("its end", answers.message()).await?,
    )?;
    ensure!(
        ended.code() == Code::DeadlineExceeded && ended.message().contains("first-request-timeout"),
        "{ended:?}"
    );
    Ok(())
}
