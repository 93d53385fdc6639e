//! Black-box test of the node's observability: a real `proglog-node` serves a few RPCs, then
//! `/metrics`, `/healthz` and `/readyz` must tell exactly what happened.
//!
//! Needs the node binary built (see `proglog_tests::node_process`): `cargo test --workspace`
//! builds it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use proglog_client::{Client, ClientError, Produce};
use proglog_tests::node_process::NodeProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long any one condition may take to hold.
const DEADLINE: Duration = Duration::from_secs(10);

/// How often a condition is checked again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A `GET` over a fresh HTTP/1.1 connection: the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8(raw).context("the response is not UTF-8")?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("the response has no end of headers")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .context("the response has no status line")?
            .parse()
            .context("the status is not a number")?;
        anyhow::Ok((status, body.to_string()))
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} took longer than {DEADLINE:?}"))?
}

/// Polls `/metrics` until every line of `expected` is in it (exactly, as a whole line), and
/// returns that scrape.
async fn scrape_until(addr: SocketAddr, expected: &[&str]) -> anyhow::Result<String> {
    let until = Instant::now() + DEADLINE;
    loop {
        let (status, body) = http_get(addr, "/metrics").await?;
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|line| !body.lines().any(|have| have == *line))
            .collect();
        if status == 200 && missing.is_empty() {
            return Ok(body);
        }
        if Instant::now() >= until {
            bail!(
                "after {DEADLINE:?}, /metrics (status {status}) lacks {missing:#?}; it says:\n{body}"
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The value of the sample named exactly `series` (name and labels) in an exposition.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn metrics_and_health_reflect_the_rpcs_served() -> anyhow::Result<()> {
    let mut node = NodeProcess::start_default().await?;
    let http = node
        .http_addr()
        .context("the serving line carries no http_addr")?;

    // Ready once serving; polled because readiness is set just after the serving line.
    let until = Instant::now() + DEADLINE;
    loop {
        let (status, _) = http_get(http, "/readyz").await?;
        if status == 200 {
            break;
        }
        if Instant::now() >= until {
            bail!("/readyz still answers {status} after {DEADLINE:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert_eq!(http_get(http, "/healthz").await?.0, 200);

    let mut client = Client::connect(&node.rpc_addr().to_string()).await?;
    for i in 0..3u8 {
        let offset = client
            .produce(Produce {
                value: Bytes::from(vec![i; 16]),
                ..Produce::default()
            })
            .await?;
        assert_eq!(offset, u64::from(i));
    }
    match client.consume(10).await {
        Err(ClientError::Status(status)) if status.code() == tonic::Code::OutOfRange => {}
        other => bail!("consuming offset 10 of 3 records should be OUT_OF_RANGE, got {other:?}"),
    }

    let body = scrape_until(
        http,
        &[
            r#"proglog_rpc_requests_total{method="Produce",code="Ok"} 3"#,
            r#"proglog_rpc_requests_total{method="Consume",code="OutOfRange"} 1"#,
            r#"proglog_rpc_request_duration_seconds_count{method="Produce"} 3"#,
            r#"proglog_rpc_request_duration_seconds_count{method="Consume"} 1"#,
            r#"proglog_rpc_request_duration_seconds_bucket{le="+Inf",method="Produce"} 3"#,
            r#"proglog_rpc_in_flight{method="Produce"} 0"#,
            r#"proglog_rpc_in_flight{method="Consume"} 0"#,
            r#"proglog_log_start_offset{log="default"} 0"#,
            r#"proglog_log_end_offset{log="default"} 3"#,
            r#"proglog_log_segments{log="default"} 1"#,
            "proglog_logs 1",
        ],
    )
    .await?;

    // Nothing else was called, and nothing else failed.
    let calls: Vec<&str> = body
        .lines()
        .filter(|line| line.starts_with("proglog_rpc_requests_total{"))
        .collect();
    assert_eq!(calls.len(), 2, "unexpected calls counted: {calls:#?}");
    // `--durability always` (the default) syncs before acknowledging: at least one fsync, at
    // most one per produce (group commit may share one).
    let fsyncs = sample(&body, "proglog_fsync_total").context("no proglog_fsync_total")?;
    assert!((1.0..=3.0).contains(&fsyncs), "fsyncs: {fsyncs}");
    let fsync_seconds =
        sample(&body, "proglog_fsync_seconds_total").context("no proglog_fsync_seconds_total")?;
    assert!(fsync_seconds >= 0.0, "fsync seconds: {fsync_seconds}");
    let size = sample(&body, r#"proglog_log_size_bytes{log="default"}"#)
        .context("no proglog_log_size_bytes")?;
    assert!(size >= 3.0 * 16.0, "size: {size}");
    assert!(
        body.ends_with("# EOF\n"),
        "not a complete exposition:\n{body}"
    );

    // The failed call is logged once, at warn, with its method and code.
    let until = Instant::now() + DEADLINE;
    loop {
        let warnings: Vec<serde_json::Value> = node
            .stderr_lines()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["message"] == "rpc failed")
            .collect();
        if !warnings.is_empty() {
            assert_eq!(warnings.len(), 1, "{warnings:#?}");
            let warning = &warnings[0];
            assert_eq!(warning["level"], "WARN", "{warning}");
            assert_eq!(warning["method"], "Consume", "{warning}");
            assert_eq!(warning["code"], "OutOfRange", "{warning}");
            break;
        }
        if Instant::now() >= until {
            bail!("no \"rpc failed\" warning logged within {DEADLINE:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // A stream is counted when it ends, with the code of its trailers.
    let records = futures_util::stream::iter((0..2u8).map(|i| Produce {
        value: Bytes::from(vec![i; 8]),
        ..Produce::default()
    }));
    let mut offsets: Vec<u64> = client
        .produce_stream(records)
        .await?
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    // Sorted: pipelined appends may land out of request order (a known ProduceStream bug that
    // `node_api.rs` tracks); only the counts matter here.
    offsets.sort_unstable();
    assert_eq!(offsets, [3, 4]);
    scrape_until(
        http,
        &[
            r#"proglog_rpc_requests_total{method="ProduceStream",code="Ok"} 1"#,
            r#"proglog_rpc_request_duration_seconds_count{method="ProduceStream"} 1"#,
            r#"proglog_rpc_in_flight{method="ProduceStream"} 0"#,
            r#"proglog_rpc_requests_total{method="Produce",code="Ok"} 3"#,
            r#"proglog_log_end_offset{log="default"} 5"#,
        ],
    )
    .await?;

    assert_eq!(http_get(http, "/healthz").await?.0, 200);
    assert_eq!(http_get(http, "/readyz").await?.0, 200);
    assert_eq!(http_get(http, "/nope").await?.0, 404);

    drop(client);
    let status = node.terminate().await?;
    assert!(status.success(), "the node exited with {status}");
    // The HTTP server stopped with the node.
    assert!(
        TcpStream::connect(http).await.is_err(),
        "{http} still accepts connections after the node exited"
    );
    Ok(())
}

/// A client that keeps failing cannot flood the node's log: failed calls get a log line up to
/// 10 a second, and the rest are counted (every call still is, by method and code).
#[tokio::test]
async fn failed_calls_are_logged_at_a_bounded_rate_and_all_counted() -> anyhow::Result<()> {
    const FAILURES: u64 = 300;
    let node = NodeProcess::start_default().await?;
    let http = node.http_addr().context("no HTTP address")?;
    let mut client = proglog_proto::log::v1::log_client::LogClient::new(node.channel().await?);
    let started = Instant::now();
    for _ in 0..FAILURES {
        let past_the_end = client
            .consume(proglog_proto::log::v1::ConsumeRequest {
                offset: 1_000_000,
                ..Default::default()
            })
            .await;
        anyhow::ensure!(past_the_end.is_err(), "offset 1000000 was found");
    }
    let body = scrape_until(
        http,
        &[&format!(
            "proglog_rpc_requests_total{{method=\"Consume\",code=\"OutOfRange\"}} {FAILURES}"
        )],
    )
    .await?;
    let seconds = started.elapsed().as_secs() + 1;
    let logged = node
        .stderr_lines()
        .iter()
        .filter(|line| line.contains("\"message\":\"rpc failed\""))
        .count() as u64;
    let not_logged = sample(&body, "proglog_rpc_failures_not_logged_total").unwrap_or(0.0) as u64;
    anyhow::ensure!(
        logged <= 10 * seconds,
        "{logged} lines for {FAILURES} failures in {seconds} s"
    );
    anyhow::ensure!(
        logged + not_logged == FAILURES,
        "{logged} logged and {not_logged} counted as left out of {FAILURES}"
    );
    Ok(())
}
