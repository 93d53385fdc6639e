//! `proglog`: the command line client.
//!
//! ```text
//! proglog --addr 127.0.0.1:8400 produce hello world      # one record per value
//! printf 'a\nb\n' | proglog produce                      # one record per stdin line
//! proglog consume --from 0 --count 10
//! proglog consume --since 10m --follow --output json     # or an RFC 3339 time
//! proglog servers
//! proglog --tls-ca ca.pem --tls-cert me.pem --tls-key me.key servers   # (mutual) TLS
//! ```

use std::future::Future;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use proglog_client::log::v1::{LogDescription, LogSummary, Record, Server};
use proglog_client::{Client, ClusterClient, Produce, TlsOptions};

/// Produce to and consume from a proglog node.
#[derive(Debug, Parser)]
#[command(version, about = "Produce to and consume from a proglog node")]
struct Cli {
    /// A node's gRPC address, or several comma separated: the first that answers tells the
    /// client the members and the leader.
    #[arg(
        long,
        env = "PROGLOG_ADDR",
        default_value = "127.0.0.1:8400",
        global = true
    )]
    addr: String,
    /// CA certificate (PEM) that signed the node's certificate: connect over TLS.
    #[arg(long, env = "PROGLOG_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; its common name is the ACL subject.
    #[arg(long, env = "PROGLOG_TLS_CERT", global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "PROGLOG_TLS_KEY", global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name the node's certificate must carry, when not the host in --addr.
    #[arg(long, env = "PROGLOG_TLS_SERVER_NAME", global = true)]
    tls_server_name: Option<String>,
    /// How long any answer may take: connecting and learning the members, each call, the
    /// acknowledgement of records sent, the next record below the end when not following
    /// (`500ms`, `10s`, `1m`).
    #[arg(long, env = "PROGLOG_TIMEOUT", default_value = "10s", value_parser = parse_timeout, global = true)]
    timeout: Duration,
    /// The log to produce to and consume from: 1 to 249 characters of a-z, A-Z, 0-9, '.', '_'
    /// and '-'.
    #[arg(long, env = "PROGLOG_LOG", default_value = proglog_client::DEFAULT_LOG, value_parser = parse_log_name, global = true)]
    log: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append records: each VALUE is one record; with no VALUE, each line of stdin is one.
    Produce {
        /// Record values.
        values: Vec<String>,
    },
    /// Read records from an offset or a time.
    Consume {
        /// First offset to read.
        #[arg(long, conflicts_with = "since")]
        from: Option<u64>,
        /// Start at the first record at or after this time: RFC 3339 (`2026-11-25T10:00:00Z`),
        /// milliseconds since the Unix epoch, or an age such as `10m` or `2h`.
        #[arg(long)]
        since: Option<String>,
        /// Keep waiting for new records instead of stopping at the end of the log.
        #[arg(long)]
        follow: bool,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
    },
    /// List the cluster's members and its leader.
    Servers,
    /// The cluster's logs.
    Logs {
        #[command(subcommand)]
        command: LogsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum LogsCommand {
    /// The logs this identity may read, with each one's leader and epoch.
    List,
    /// One log (`--log`, or NAME) as its leader sees it: offsets, high watermark, and each
    /// replica's progress and lag.
    Describe {
        /// The log; `--log` when not given.
        #[arg(value_parser = parse_log_name)]
        name: Option<String>,
    },
}

/// Parses `--timeout`: a duration of at least a millisecond.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(timeout) if timeout >= Duration::from_millis(1) => Ok(timeout),
        Ok(_) => Err("it must be at least 1ms".into()),
        Err(err) => Err(format!("{err}: give a duration such as 500ms, 10s or 1m")),
    }
}

/// `call` within the `--timeout`, or an error naming what did not answer.
async fn within<T, E>(
    timeout: Duration,
    what: impl std::fmt::Display,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.with_context(|| what.to_string()),
        Err(_) => bail!(
            "{what}: no answer within {} (--timeout)",
            humantime::format_duration(timeout)
        ),
    }
}

/// Parses `--since`: RFC 3339, epoch milliseconds, or an age back from now.
fn parse_since(text: &str) -> Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(millis(time));
    }
    if let Ok(age) = humantime::parse_duration(text) {
        return Ok(millis(SystemTime::now() - age));
    }
    bail!(
        "cannot read --since `{text}`: give an RFC 3339 time (2026-11-25T10:00:00Z), milliseconds since the Unix epoch, or an age (10m, 2h)"
    )
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn print_record(out: &mut impl Write, record: &Record, output: Output) -> Result<()> {
    match output {
        Output::Text => writeln!(
            out,
            "{}\t{}",
            record.offset,
            String::from_utf8_lossy(&record.value)
        )?,
        Output::Json => {
            let line = serde_json::json!({
                "offset": record.offset,
                "value": String::from_utf8_lossy(&record.value),
                "term": record.term,
                "type": record.r#type,
                "timestamp_ms": record.timestamp_ms,
            });
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// Records to produce: the values given, or stdin's lines read as they come (a bounded queue,
/// so a large input is streamed, not loaded whole).
fn records(values: Vec<String>) -> tokio::sync::mpsc::Receiver<Result<Produce>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let produce = |value: String| Produce {
        value: Bytes::from(value),
        ..Produce::default()
    };
    if values.is_empty() {
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let record = line.context("read stdin").map(produce);
                let failed = record.is_err();
                if tx.blocking_send(record).is_err() || failed {
                    return;
                }
            }
        });
    } else {
        tokio::spawn(async move {
            for value in values {
                if tx.send(Ok(produce(value))).await.is_err() {
                    return;
                }
            }
        });
    }
    rx
}

async fn produce(
    client: &mut Client,
    values: Vec<String>,
    output: Output,
    timeout: Duration,
) -> Result<()> {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Set once the input has ended: from then on the node owes the end of the stream too.
    let input_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let input_error = std::sync::Arc::new(std::sync::Mutex::new(None));
    // The stream is opened once the first record is there (a node gives a stream that sends
    // nothing only --first-request-timeout-ms), so `tail -f log | proglog produce` may wait.
    let mut input = tokio_stream::wrappers::ReceiverStream::new(records(values));
    let first = input.next().await;
    let records = {
        let sent = std::sync::Arc::clone(&sent);
        let input_error = std::sync::Arc::clone(&input_error);
        futures_util::stream::iter(first)
            .chain(input)
            .filter_map(move |record| {
                let record = match record {
                    Ok(record) => {
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Some(record)
                    }
                    Err(err) => {
                        if let Ok(mut slot) = input_error.lock() {
                            *slot = Some(err);
                        }
                        None
                    }
                };
                futures_util::future::ready(record)
            })
            .chain({
                let input_done = std::sync::Arc::clone(&input_done);
                futures_util::stream::poll_fn(move |_| {
                    input_done.store(true, std::sync::atomic::Ordering::Relaxed);
                    std::task::Poll::Ready(None)
                })
            })
    };
    let mut offsets = within(
        timeout,
        "open a produce stream",
        client.produce_stream(records),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    let mut answered = 0u64;
    // Records read from stdin may come slowly: the timeout runs only while some sent are not
    // acknowledged, from the last acknowledgement (or the moment none was outstanding).
    let mut waiting_since = Instant::now();
    loop {
        let next = tokio::select! {
            next = offsets.next() => next,
            _ = tokio::time::sleep(timeout.min(Duration::from_millis(200))) => {
                let outstanding = sent.load(std::sync::atomic::Ordering::Relaxed) > answered
                    || input_done.load(std::sync::atomic::Ordering::Relaxed);
                if !outstanding {
                    waiting_since = Instant::now();
                } else if waiting_since.elapsed() >= timeout {
                    bail!(
                        "{answered} records were acknowledged; the node acknowledged nothing more within {} (--timeout), so the rest may not be appended",
                        humantime::format_duration(timeout)
                    );
                }
                continue;
            }
        };
        let Some(offset) = next else { break };
        waiting_since = Instant::now();
        let offset = offset.with_context(|| {
            format!("after {answered} records were appended; the rest were not")
        })?;
        answered += 1;
        match output {
            Output::Text => writeln!(out, "{offset}")?,
            Output::Json => writeln!(out, "{}", serde_json::json!({ "offset": offset }))?,
        }
    }
    if let Some(err) = input_error.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(err.context(format!("after {answered} records were appended")));
    }
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    if answered != sent {
        bail!("the node acknowledged {answered} of {sent} records; the rest may not be appended");
    }
    Ok(())
}

async fn consume(
    client: &mut Client,
    from: Option<u64>,
    since: Option<String>,
    follow: bool,
    count: Option<u64>,
    output: Output,
    timeout: Duration,
) -> Result<()> {
    let since_ms = since.as_deref().map(parse_since).transpose()?;
    // Without --follow, stop at the end of the log as it is now.
    let end = if follow {
        None
    } else {
        Some(
            within(timeout, "read the log's offsets", client.offsets())
                .await?
                .1,
        )
    };
    let mut next = from.unwrap_or(0);
    let mut since_ms = since_ms;
    if let (Some(since), false) = (since_ms, follow) {
        // Resolve the time to an offset first, so the stop at the end below knows where it
        // starts (and an empty result returns instead of waiting).
        match within(
            timeout,
            "find the first record since the time",
            client.consume_since(since),
        )
        .await?
        {
            Some(record) => next = record.offset,
            None => return Ok(()),
        }
        since_ms = None;
    }
    if end == Some(next) {
        return Ok(());
    }
    // Without --follow, the node ends the stream at the end as it was, past any control
    // records there, which no stream delivers.
    let mut stream = match end {
        Some(end) => within(
            timeout,
            "open a consume stream",
            client.consume_range(next, end),
        )
        .await?
        .boxed(),
        None => within(
            timeout,
            "open a consume stream",
            client.consume_stream(next, since_ms),
        )
        .await?
        .boxed(),
    };
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    while count.is_none_or(|count| printed < count) && end.is_none_or(|end| next < end) {
        // Below the end the records are there: each must come within the timeout. Following
        // the log, the next one comes when it is produced.
        let record = if end.is_some() {
            let what = format!("read the record at or after offset {next}");
            match tokio::time::timeout(timeout, stream.next()).await {
                Ok(record) => record,
                Err(_) => bail!(
                    "{what}: no answer within {} (--timeout)",
                    humantime::format_duration(timeout)
                ),
            }
        } else {
            stream.next().await
        };
        match record {
            Some(record) => {
                let record = record?;
                next = record.offset + 1;
                print_record(&mut out, &record, output)?;
                out.flush()?;
                printed += 1;
            }
            None => break,
        }
    }
    Ok(())
}

fn servers(members: &[Server], output: Output) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for server in members {
        match output {
            Output::Text => writeln!(
                out,
                "{}\t{}\t{}",
                server.id,
                server.rpc_addr,
                if server.is_leader {
                    "leader"
                } else {
                    "follower"
                }
            )?,
            Output::Json => writeln!(
                out,
                "{}",
                serde_json::json!({ "id": server.id, "rpc_addr": server.rpc_addr, "is_leader": server.is_leader })
            )?,
        }
    }
    Ok(())
}

/// A leader's id as text output shows it: `none` while there is none.
fn leader_or_none(leader_id: &str) -> &str {
    if leader_id.is_empty() {
        "none"
    } else {
        leader_id
    }
}

fn list_logs(logs: &[LogSummary], output: Output) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for log in logs {
        match output {
            Output::Text => writeln!(
                out,
                "{}\tleader {}\tepoch {}",
                log.name,
                leader_or_none(&log.leader_id),
                log.epoch
            )?,
            Output::Json => writeln!(
                out,
                "{}",
                serde_json::json!({ "name": log.name, "leader_id": log.leader_id, "epoch": log.epoch })
            )?,
        }
    }
    Ok(())
}

fn describe_log(log: &LogDescription, output: Output) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let replicas: Vec<serde_json::Value> = log
        .replicas
        .iter()
        .map(|replica| {
            serde_json::json!({
                "id": replica.id,
                "voter": replica.voter,
                "fetched": replica.fetched,
                "end_offset": replica.end_offset,
                "lag": replica.lag,
                "last_fetch_ago_ms": replica.last_fetch_ago_ms,
            })
        })
        .collect();
    match output {
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::json!({
                "name": log.name,
                "leader_id": log.leader_id,
                "epoch": log.epoch,
                "start_offset": log.start_offset,
                "end_offset": log.end_offset,
                "high_watermark": log.high_watermark,
                "replicas": replicas,
                "described_by": log.described_by,
            })
        )?,
        Output::Text => {
            writeln!(out, "log\t{}", log.name)?;
            writeln!(out, "leader\t{}", leader_or_none(&log.leader_id))?;
            writeln!(out, "epoch\t{}", log.epoch)?;
            writeln!(
                out,
                "offsets\t{}..{} (high watermark {})",
                log.start_offset, log.end_offset, log.high_watermark
            )?;
            for replica in &log.replicas {
                let role = if replica.voter { "voter" } else { "observer" };
                if replica.fetched {
                    writeln!(
                        out,
                        "replica\t{}\t{role}\tend {}\tlag {}\tlast fetch {} ms ago",
                        replica.id, replica.end_offset, replica.lag, replica.last_fetch_ago_ms
                    )?;
                } else {
                    writeln!(
                        out,
                        "replica\t{}\t{role}\tno fetch in this epoch",
                        replica.id
                    )?;
                }
            }
            writeln!(out, "described by\t{}", log.described_by)?;
        }
    }
    Ok(())
}

fn parse_log_name(name: &str) -> Result<String, String> {
    proglog_client::names::check_log_name(name)
        .map(|()| name.to_owned())
        .map_err(|error| error.to_string())
}

async fn run(cli: Cli) -> Result<()> {
    let tls = TlsOptions {
        ca_cert: cli.tls_ca,
        client_cert: cli.tls_cert,
        client_key: cli.tls_key,
        server_name: cli.tls_server_name,
    };
    // Produces go to the leader, reads to the members in turn; any node would do (followers
    // forward), the leader saves a hop.
    let seeds: Vec<String> = cli
        .addr
        .split(',')
        .map(str::trim)
        .filter(|addr| !addr.is_empty())
        .map(str::to_owned)
        .collect();
    let timeout = cli.timeout;
    let mut cluster = within(
        timeout,
        format_args!("reach a node at {}", cli.addr),
        ClusterClient::connect_to_log(&seeds, &tls, &cli.log),
    )
    .await?;
    match cli.command {
        Command::Produce { values } => {
            let mut leader = within(timeout, "reach the leader", cluster.leader()).await?;
            produce(&mut leader, values, cli.output, timeout).await
        }
        Command::Consume {
            from,
            since,
            follow,
            count,
        } => {
            let mut client = within(timeout, "reach a node to read from", cluster.reader()).await?;
            consume(&mut client, from, since, follow, count, cli.output, timeout).await
        }
        // No members known means the first node refused to list them: ask again, so the
        // refusal (an identity without `consume` on the log) is what the user sees.
        Command::Servers if cluster.members().is_empty() => {
            let mut client = within(timeout, "reach a node", cluster.reader()).await?;
            let members = within(timeout, "list the members", client.servers()).await?;
            servers(&members, cli.output)
        }
        Command::Servers => servers(cluster.members(), cli.output),
        Command::Logs {
            command: LogsCommand::List,
        } => {
            let mut client = within(timeout, "reach a node", cluster.reader()).await?;
            let logs = within(timeout, "list the logs", client.list_logs()).await?;
            list_logs(&logs, cli.output)
        }
        Command::Logs {
            command: LogsCommand::Describe { name },
        } => {
            let client = within(timeout, "reach a node", cluster.reader()).await?;
            let mut client = match name {
                Some(name) => client.with_log(&name)?,
                None => client,
            };
            let what = format!("describe the log `{}`", client.log());
            let log = within(timeout, what, client.describe_log()).await?;
            describe_log(&log, cli.output)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("proglog: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("proglog: {err:#}");
            ExitCode::FAILURE
        }
    }
}
