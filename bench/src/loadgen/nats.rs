//! The same cases against NATS JetStream with `async-nats`: a stream with file storage and
//! `--replicas` replicas per record size (`BENCH_<size>_R<replicas>` on subject
//! `bench.<size>.r<replicas>`), created if missing.
//!
//! JetStream 2.9 acknowledges a publish once the message is written to the stream's file,
//! without fsync (with replicas, once a quorum of them has it, still without fsync); compare it
//! with proglog `--durability interval`.
//!
//! A clustered JetStream takes a moment to elect its meta leader and then each stream's
//! leader, so creating the stream is retried for up to [`READY_TIMEOUT`], and one untimed
//! publish must be acknowledged before a case starts.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::Subject;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, Context as JetStream};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use proglog_bench::stats::{Latencies, Outcome};
use tokio::task::JoinSet;

use crate::{Case, Load};

/// Messages per pull request when reading the stream back.
const PULL_BATCH: usize = 1000;

/// How long JetStream may take to accept the stream and acknowledge a first publish.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between two attempts while JetStream is not ready.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Runs `case` against the NATS server at `addr`. With several comma-separated addresses (the
/// servers of one cluster), the stream is created through the first and the case then runs on
/// a connection to the server that leads the stream, as proglog's client talks to its leader.
pub async fn run(addr: &str, case: Case, load: &Load) -> anyhow::Result<Outcome> {
    let addrs: Vec<&str> = addr.split(',').map(str::trim).collect();
    // Our own windows bound the acks in flight; the context only has to allow them.
    let inflight = load.window.max(load.concurrency) * 2;
    let context = |client| {
        jetstream::ContextBuilder::new()
            .max_ack_inflight(inflight)
            .backpressure_on_inflight(true)
            .build(client)
    };
    let mut js = context(connect(addrs[0]).await?);
    let name = format!("BENCH_{}_R{}", load.size, load.replicas);
    let subject = Subject::from(format!("bench.{}.r{}", load.size, load.replicas));
    let value = Bytes::from(vec![0x5A; load.size]);
    ensure_stream(&js, &name, &subject, &value, load.replicas).await?;
    if addrs.len() > 1 {
        let info = js.get_stream(&name).await?.get_info().await?;
        let leader = info
            .cluster
            .and_then(|cluster| cluster.leader)
            .with_context(|| format!("stream {name} reports no leader"))?;
        let mut found = false;
        for addr in &addrs {
            let client = connect(addr).await?;
            if client.server_info().server_name == leader {
                js = context(client);
                found = true;
                break;
            }
        }
        if !found {
            bail!("the leader of stream {name}, server `{leader}`, is none of {addr}");
        }
    }
    match case {
        Case::ProduceUnary => publish_each(&js, &subject, &value, load).await,
        Case::ProduceStream => publish_pipelined(&js, &subject, &value, load).await,
        Case::ProduceBatch => bail!("JetStream has no batch publish; use produce-stream"),
        Case::Consume => read_back(&js, &name, &subject, &value, load).await,
    }
}

async fn connect(addr: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::connect(addr)
        .await
        .with_context(|| format!("connect to NATS at {addr} (is nats-server running with -js?)"))
}

/// Creates the stream if missing and waits until a publish to it is acknowledged, retrying
/// while the (clustered) JetStream elects its leaders.
async fn ensure_stream(
    js: &JetStream,
    name: &str,
    subject: &Subject,
    value: &Bytes,
    replicas: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let created = js
            .get_or_create_stream(stream::Config {
                name: name.to_string(),
                subjects: vec![subject.to_string()],
                storage: StorageType::File,
                num_replicas: replicas,
                ..stream::Config::default()
            })
            .await;
        match created {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(RETRY_PAUSE).await,
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("create JetStream stream {name} with {replicas} replica(s)")
                });
            }
        }
    }
    loop {
        let acked = match js.publish(subject.clone(), value.clone()).await {
            Ok(ack) => ack.await.map(drop).map_err(anyhow::Error::from),
            Err(err) => Err(err.into()),
        };
        match acked {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(RETRY_PAUSE).await,
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("first publish to {subject} never acknowledged"));
            }
        }
    }
}

/// `load.concurrency` publishers, each waiting for every ack before the next publish.
async fn publish_each(
    js: &JetStream,
    subject: &Subject,
    value: &Bytes,
    load: &Load,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let deadline = start + load.duration;
    let per_task = load.messages / load.concurrency as u64;
    let mut tasks = JoinSet::new();
    for _ in 0..load.concurrency {
        let (js, subject, value) = (js.clone(), subject.clone(), value.clone());
        tasks.spawn(async move {
            let mut latencies = Latencies::new()?;
            let mut acked = 0u64;
            while acked < per_task.max(1) && Instant::now() < deadline {
                let began = Instant::now();
                js.publish(subject.clone(), value.clone()).await?.await?;
                latencies.record(began.elapsed());
                acked += 1;
            }
            anyhow::Ok((acked, latencies))
        });
    }
    let mut latencies = Latencies::new()?;
    let mut messages = 0;
    while let Some(joined) = tasks.join_next().await {
        let (count, task_latencies) = joined.context("publish task panicked")??;
        messages += count;
        latencies.merge(&task_latencies)?;
    }
    Ok(Outcome {
        messages,
        payload_bytes: messages * load.size as u64,
        elapsed: start.elapsed(),
        latencies: Some(latencies),
    })
}

/// One publisher keeping up to `load.window` acks outstanding; latency is publish -> ack.
async fn publish_pipelined(
    js: &JetStream,
    subject: &Subject,
    value: &Bytes,
    load: &Load,
) -> anyhow::Result<Outcome> {
    let (acked, latencies, elapsed) = publish_window(
        js,
        subject,
        value,
        load.messages,
        load.window,
        Some(load.duration),
    )
    .await?;
    Ok(Outcome {
        messages: acked,
        payload_bytes: acked * load.size as u64,
        elapsed,
        latencies: Some(latencies),
    })
}

async fn publish_window(
    js: &JetStream,
    subject: &Subject,
    value: &Bytes,
    messages: u64,
    window: usize,
    duration: Option<std::time::Duration>,
) -> anyhow::Result<(u64, Latencies, std::time::Duration)> {
    let start = Instant::now();
    let deadline = duration.map(|duration| start + duration);
    let mut latencies = Latencies::new()?;
    let mut in_flight = FuturesUnordered::new();
    let (mut published, mut acked) = (0u64, 0u64);
    loop {
        while in_flight.len() < window
            && published < messages
            && deadline.is_none_or(|deadline| Instant::now() < deadline)
        {
            let sent = Instant::now();
            let ack = js.publish(subject.clone(), value.clone()).await?;
            in_flight.push(async move { ack.await.map(|_| sent) });
            published += 1;
        }
        match in_flight.next().await {
            Some(ack) => {
                latencies.record(ack?.elapsed());
                acked += 1;
            }
            None => break,
        }
    }
    Ok((acked, latencies, start.elapsed()))
}

/// Tops the stream up to `load.messages` (untimed), then reads that many from the first with
/// an ephemeral pull consumer in batches of [`PULL_BATCH`], without acks.
async fn read_back(
    js: &JetStream,
    name: &str,
    subject: &Subject,
    value: &Bytes,
    load: &Load,
) -> anyhow::Result<Outcome> {
    let stream = js.get_stream(name).await?;
    let held = stream.get_info().await?.state.messages;
    if held < load.messages {
        publish_window(js, subject, value, load.messages - held, 1024, None)
            .await
            .context("top the stream up before reading")?;
    }
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..pull::Config::default()
        })
        .await
        .context("create a pull consumer")?;
    let start = Instant::now();
    let deadline = start + load.duration;
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .messages()
        .await?;
    let mut messages = std::pin::pin!(messages);
    let timer = tokio::time::sleep_until(deadline.into());
    let mut timer = std::pin::pin!(timer);
    let (mut count, mut payload_bytes) = (0u64, 0u64);
    while count < load.messages {
        let message = tokio::select! {
            biased;
            next = messages.next() => match next {
                Some(message) => message.map_err(|err| anyhow::anyhow!("pull: {err}"))?,
                None => break,
            },
            () = &mut timer => break,
        };
        count += 1;
        payload_bytes += message.payload.len() as u64;
    }
    Ok(Outcome {
        messages: count,
        payload_bytes,
        elapsed: start.elapsed(),
        latencies: None,
    })
}
