//! Cases over gRPC with the shared client (`proglog_client::Client`), used unchanged for
//! proglog and the echo floor, so both pay exactly the same client-side costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use proglog_bench::stats::{Latencies, Outcome};
use proglog_client::{Client, Produce};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::{Case, Load};

/// Runs `case` against the `log.v1.Log` service at `addr`.
pub async fn run(addr: &str, case: Case, load: &Load) -> anyhow::Result<Outcome> {
    let client = Client::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    match case {
        Case::ProduceUnary => produce_calls(client, load, 1).await,
        Case::ProduceBatch => produce_calls(client, load, load.batch).await,
        Case::ProduceStream => produce_streams(client, load).await,
        Case::Consume => consume(client, load).await,
    }
}

/// `ConsumeStream`s opened from offset 0 whose records are never read.
pub type IdleStreams = Vec<tonic::Streaming<proglog_proto::log::v1::ConsumeResponse>>;

/// Opens `count` streams that never read, 500 to a connection, each open once the node has
/// answered it (its response headers arrived).
pub async fn open_idle_streams(addr: &str, count: usize) -> anyhow::Result<IdleStreams> {
    use proglog_proto::log::v1::ConsumeRequest;
    use proglog_proto::log::v1::log_client::LogClient;
    const PER_CONNECTION: usize = 500;
    let mut streams = Vec::with_capacity(count);
    while streams.len() < count {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("connect to {addr}"))?;
        let client = LogClient::new(channel);
        let batch = PER_CONNECTION.min(count - streams.len());
        let opened = futures_util::future::join_all((0..batch).map(|_| {
            let mut client = client.clone();
            async move {
                client
                    .consume_stream(ConsumeRequest::default())
                    .await
                    .map(tonic::Response::into_inner)
            }
        }))
        .await;
        for stream in opened {
            streams.push(stream.context("open an idle ConsumeStream")?);
        }
    }
    Ok(streams)
}

fn record(value: &Bytes) -> Produce {
    Produce {
        value: value.clone(),
        ..Produce::default()
    }
}

/// Takes up to `want` message slots of the shared budget; 0 when it is spent.
fn take_budget(issued: &AtomicU64, limit: u64, want: u64) -> u64 {
    let before = issued.fetch_add(want, Ordering::Relaxed);
    limit.saturating_sub(before).min(want)
}

/// `Produce` (batch of 1) or `ProduceBatch` calls from `load.concurrency` tasks sharing one
/// HTTP/2 connection, each waiting for its answer before the next call.
async fn produce_calls(client: Client, load: &Load, batch: usize) -> anyhow::Result<Outcome> {
    let value = Bytes::from(vec![0x5A; load.size]);
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + load.duration;
    let mut tasks = JoinSet::new();
    for _ in 0..load.concurrency {
        let (mut client, value, issued) = (client.clone(), value.clone(), Arc::clone(&issued));
        let limit = load.messages;
        tasks.spawn(async move {
            let mut latencies = Latencies::new()?;
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let count = take_budget(&issued, limit, batch as u64);
                if count == 0 {
                    break;
                }
                let began = Instant::now();
                if batch == 1 {
                    client.produce(record(&value)).await?;
                } else {
                    let records = (0..count).map(|_| record(&value)).collect();
                    client.produce_batch(records).await?;
                }
                latencies.record(began.elapsed());
                sent += count;
            }
            anyhow::Ok((sent, latencies))
        });
    }
    collect(tasks, start, load.size).await
}

/// Pipelined `ProduceStream`s: each keeps up to `load.window` records unanswered. Responses
/// come in request order, so the send time of the oldest unanswered record is the one a
/// response belongs to.
async fn produce_streams(client: Client, load: &Load) -> anyhow::Result<Outcome> {
    let value = Bytes::from(vec![0x5A; load.size]);
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + load.duration;
    let mut tasks = JoinSet::new();
    for _ in 0..load.concurrency {
        let (mut client, value, issued) = (client.clone(), value.clone(), Arc::clone(&issued));
        let (limit, window) = (load.messages, load.window);
        tasks.spawn(async move {
            let window = Arc::new(Semaphore::new(window));
            let (sent_at, mut sent_times) = mpsc::unbounded_channel::<Instant>();
            let state = (Arc::clone(&window), sent_at, issued, value);
            let requests = futures_util::stream::unfold(state, move |state| async move {
                let (permits, sent_at, issued, value) = &state;
                if Instant::now() >= deadline || take_budget(issued, limit, 1) == 0 {
                    return None;
                }
                // Closed only if the response side is gone; then the stream just ends.
                permits.acquire().await.ok()?.forget();
                sent_at.send(Instant::now()).ok()?;
                let request = record(value);
                Some((request, state))
            });
            let responses = client.produce_stream(requests).await?;
            let mut responses = std::pin::pin!(responses);
            let mut latencies = Latencies::new()?;
            let mut acked = 0u64;
            while let Some(response) = responses.next().await {
                response?;
                let Some(sent) = sent_times.recv().await else {
                    bail!("the server answered more records than were sent");
                };
                latencies.record(sent.elapsed());
                window.add_permits(1);
                acked += 1;
            }
            anyhow::Ok((acked, latencies))
        });
    }
    collect(tasks, start, load.size).await
}

async fn collect(
    mut tasks: JoinSet<anyhow::Result<(u64, Latencies)>>,
    start: Instant,
    size: usize,
) -> anyhow::Result<Outcome> {
    let mut latencies = Latencies::new()?;
    let mut messages = 0;
    while let Some(joined) = tasks.join_next().await {
        let (count, task_latencies) = joined.context("load task panicked")??;
        messages += count;
        latencies.merge(&task_latencies)?;
    }
    Ok(Outcome {
        messages,
        payload_bytes: messages * size as u64,
        elapsed: start.elapsed(),
        latencies: Some(latencies),
    })
}

/// Tops the log up to `load.messages` records (untimed, batches of 1000), then reads that many
/// from the first offset with one `ConsumeStream`.
async fn consume(mut client: Client, load: &Load) -> anyhow::Result<Outcome> {
    let (first, end) = client.offsets().await.context("read the log's offsets")?;
    let held = end - first;
    if held < load.messages {
        let value = Bytes::from(vec![0x5A; load.size]);
        let mut missing = load.messages - held;
        while missing > 0 {
            let count = missing.min(1000);
            client
                .produce_batch((0..count).map(|_| record(&value)).collect())
                .await
                .context("top the log up before consuming")?;
            missing -= count;
        }
    }
    let start = Instant::now();
    let deadline = start + load.duration;
    let stream = client
        .consume_stream(first, None)
        .await
        .context("open ConsumeStream")?;
    let mut stream = std::pin::pin!(stream);
    let (mut messages, mut payload_bytes) = (0u64, 0u64);
    let timer = tokio::time::sleep_until(deadline.into());
    let mut timer = std::pin::pin!(timer);
    while messages < load.messages {
        let record = tokio::select! {
            biased;
            next = stream.next() => match next {
                Some(record) => record?,
                None => break,
            },
            () = &mut timer => break,
        };
        messages += 1;
        payload_bytes += record.value.len() as u64;
    }
    Ok(Outcome {
        messages,
        payload_bytes,
        elapsed: start.elapsed(),
        latencies: None,
    })
}
