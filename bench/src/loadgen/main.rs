//! `proglog-loadgen`: drives produce and consume load against proglog, a tonic echo floor or
//! NATS JetStream on this machine, and reports msgs/s, MB/s and p50/p99/p99.9 latency.
//!
//! # Running
//!
//! `bench/run.sh` builds everything, starts each system on loopback and runs every case; run
//! single cases by hand with:
//!
//! ```text
//! proglog-loadgen --target proglog --addr 127.0.0.1:8400 --case produce-stream --size 1024 --seconds 5
//! proglog-loadgen --target echo --case produce-unary --concurrency 64     # echo server in-process
//! proglog-loadgen echo-server --rpc-addr 127.0.0.1:0                      # or as its own process
//! proglog-loadgen --target nats --addr 127.0.0.1:4222 --case consume --messages 200000
//! proglog-loadgen report results.jsonl                                    # table and ratios
//! proglog-loadgen report results.jsonl --against nats-r3                  # cluster comparison
//! proglog-loadgen leader --nodes 127.0.0.1:8400,127.0.0.1:8401,127.0.0.1:8402 --caught-up
//! proglog-loadgen failover --nodes A0,A1,A2 --pids P0,P1,P2               # kill -9 the leader
//! ```
//!
//! `bench/cluster.sh` drives the three-node comparison (proglog against a NATS JetStream R3
//! cluster) and the failover measurement with `leader`, `failover` and `report --against`.
//!
//! Every case stops by itself at `--seconds` or `--messages`, whichever comes first, and only
//! talks to loopback addresses.
//!
//! # Cases
//!
//! - `produce-unary`: `--concurrency` tasks each awaiting one `Produce` at a time (NATS: publish
//!   and wait for the JetStream ack). Latency: one call.
//! - `produce-stream`: one pipelined `ProduceStream` per `--concurrency`, at most `--window`
//!   records unanswered (NATS: publish with up to `--window` acks outstanding). Latency: from
//!   handing a record to the stream to its response, so it includes queueing in the window.
//! - `produce-batch`: `ProduceBatch` of `--batch` records per call, `--concurrency` tasks
//!   (proglog and echo only). Latency: one batch call; msgs/s counts records.
//! - `consume`: first tops the log up to `--messages` records (untimed), then reads
//!   `--messages` records from offset 0 with one `ConsumeStream` (NATS: an ephemeral pull
//!   consumer, batches of 1000, no acks). No latency: it is a throughput case.
//!
//! # Reading the output
//!
//! One line per case on stdout; with `--results FILE` also one JSON object per line, which
//! `proglog-loadgen report FILE` turns into a table plus the ratios to the baselines. MB/s
//! counts record values only (10^6 bytes), not framing. Compare ratios from one run, never
//! absolute numbers from different runs or machines.

mod cluster;
mod grpc;
mod nats;
mod report;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use proglog_bench::stats::Outcome;

/// Load generator for proglog, the tonic echo floor and NATS JetStream.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the echo floor (`log.v1.Log` storing nothing) until SIGTERM or SIGINT; logs a JSON
    /// line with "message":"serving" and "rpc_addr" to stderr once listening.
    EchoServer {
        /// Loopback address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        rpc_addr: SocketAddr,
        /// Set TCP_NODELAY on accepted connections (`false` shows what Nagle costs).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        tcp_nodelay: bool,
    },
    /// Print the table and ratios of a results file written with `--results`.
    Report {
        /// The JSON-lines file.
        results: PathBuf,
        /// Instead of the ratios to the baselines, compare every proglog row with this label's row of the
        /// same case, size and concurrency (msgs/s ratio and both p99s), and summarize the
        /// failover rows (the cluster comparison of `bench/cluster.sh`).
        #[arg(long)]
        against: Option<String>,
    },
    /// Wait until one of the nodes says it is the leader (and, with `--caught-up`, until every
    /// voter has fetched up to the leader's end), then print the leader's address.
    Leader {
        /// RPC addresses of the cluster's nodes, comma separated (loopback only).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Also wait until every other voter has fetched up to the leader's log end and the
        /// high watermark is the log end (no produce load must be running).
        #[arg(long)]
        caught_up: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout_seconds: f64,
    },
    /// Under a steady unary produce load (concurrency 1) against the leader, `kill -9` the
    /// leader and measure the time from the kill to the first produce acknowledged by the new
    /// leader, which the client finds by polling `Admin/ClusterStatus` on the survivors (or
    /// from a `proglog-leader-addr` hint).
    Failover(cluster::FailoverArgs),
    /// Print a free TCP port on 127.0.0.1 (for starting servers that cannot report theirs).
    FreePort,
}

/// What to run against, and how hard.
#[derive(Debug, Args)]
struct RunArgs {
    /// The system under load.
    #[arg(long, value_enum, default_value_t = Target::Echo)]
    target: Target,
    /// Its address, HOST:PORT on loopback. Required except for `echo`, which then starts an
    /// echo server in this process. For `nats`, the addresses of a cluster's servers, comma
    /// separated: the case runs against the server that leads the stream.
    #[arg(long)]
    addr: Option<String>,
    /// The workload.
    #[arg(long, value_enum, default_value_t = Case::ProduceUnary)]
    case: Case,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Stop after this many messages (default: unbounded for produce, 200000 for consume,
    /// which also tops the log up to this many first).
    #[arg(long)]
    messages: Option<u64>,
    /// Concurrent callers (produce-unary, produce-batch) or streams (produce-stream).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Unanswered records allowed per stream (produce-stream).
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Records per call (produce-batch).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Replicas of the JetStream stream (nats only; 3 needs a three-server cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Before the case, open this many `ConsumeStream`s from offset 0 that never read (500 to
    /// a connection) and hold them until the case ends: the load of slow or stuck consumers
    /// (proglog and echo only).
    #[arg(long, default_value_t = 0)]
    idle_streams: usize,
    /// Name of this target in the report, e.g. `proglog-interval` (default: the target).
    #[arg(long)]
    label: Option<String>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    results: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// A proglog node.
    Proglog,
    /// The tonic echo floor.
    Echo,
    /// NATS JetStream (file storage).
    Nats,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Proglog => "proglog",
            Target::Echo => "echo",
            Target::Nats => "nats",
        }
    }
}

/// A workload; see the crate docs for what each measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Case {
    ProduceUnary,
    ProduceStream,
    ProduceBatch,
    Consume,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::ProduceUnary => "produce-unary",
            Case::ProduceStream => "produce-stream",
            Case::ProduceBatch => "produce-batch",
            Case::Consume => "consume",
        }
    }
}

/// The validated shape of one case, shared by the gRPC and NATS drivers.
#[derive(Debug, Clone)]
struct Load {
    size: usize,
    duration: Duration,
    messages: u64,
    concurrency: usize,
    window: usize,
    batch: usize,
    replicas: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Report { results, against }) => match against {
            Some(baseline) => report::print_against(&results, &baseline),
            None => report::print(&results),
        },
        Some(Command::Leader {
            nodes,
            caught_up,
            timeout_seconds,
        }) => runtime()?.block_on(cluster::print_leader(&nodes, caught_up, timeout_seconds)),
        Some(Command::Failover(args)) => runtime()?.block_on(cluster::failover(args)),
        Some(Command::FreePort) => {
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
            println!("{}", listener.local_addr()?.port());
            Ok(())
        }
        Some(Command::EchoServer {
            rpc_addr,
            tcp_nodelay,
        }) => runtime()?.block_on(echo_server(rpc_addr, tcp_nodelay)),
        None => runtime()?.block_on(run(cli.run)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

async fn echo_server(rpc_addr: SocketAddr, tcp_nodelay: bool) -> anyhow::Result<()> {
    ensure_loopback(rpc_addr.ip())?;
    let listener = tokio::net::TcpListener::bind(rpc_addr)
        .await
        .with_context(|| format!("listen on {rpc_addr}"))?;
    let local = listener.local_addr()?;
    eprintln!(
        "{}",
        serde_json::json!({"level": "INFO", "message": "serving", "rpc_addr": local.to_string()})
    );
    proglog_bench::echo::serve(listener, tcp_nodelay, shutdown_signal())
        .await
        .context("echo server")
}

/// Resolves on the first SIGTERM or SIGINT (or at once if signals cannot be watched).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => eprintln!("cannot watch SIGTERM ({err}); stopping"),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.size == 0
        || args.concurrency == 0
        || args.window == 0
        || args.batch == 0
        || args.replicas == 0
    {
        bail!("--size, --concurrency, --window, --batch and --replicas must be at least 1");
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    let load = Load {
        size: args.size,
        duration: Duration::from_secs_f64(args.seconds),
        messages: args.messages.unwrap_or(match args.case {
            Case::Consume => 200_000,
            _ => u64::MAX,
        }),
        concurrency: args.concurrency,
        window: args.window,
        batch: args.batch,
        replicas: args.replicas,
    };
    let addr = match (&args.addr, args.target) {
        (Some(addr), _) => {
            for one in addr.split(',') {
                ensure_loopback_addr(one.trim())?;
            }
            addr.clone()
        }
        (None, Target::Echo) => proglog_bench::echo::spawn_in_background()
            .context("start the in-process echo server")?
            .to_string(),
        (None, target) => bail!("--target {} needs --addr HOST:PORT", target.name()),
    };
    if args.idle_streams > 0 && args.target == Target::Nats {
        bail!("--idle-streams is for proglog and echo");
    }
    let idle = grpc::open_idle_streams(&addr, args.idle_streams).await?;
    let outcome = match args.target {
        Target::Proglog | Target::Echo => grpc::run(&addr, args.case, &load).await?,
        Target::Nats => nats::run(&addr, args.case, &load).await?,
    };
    drop(idle);
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| args.target.name().to_string());
    let line = result_json(&label, &args, &load, &outcome);
    println!("{}", report::format_line(&line));
    append_result(args.results.as_deref(), &line)
}

/// Appends `line` to the results file, when there is one.
fn append_result(path: Option<&std::path::Path>, line: &serde_json::Value) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    writeln!(file, "{line}").with_context(|| format!("write {}", path.display()))
}

fn result_json(label: &str, args: &RunArgs, load: &Load, outcome: &Outcome) -> serde_json::Value {
    let quantile = |q: f64| {
        outcome
            .latencies
            .as_ref()
            .map(|latencies| latencies.quantile_micros(q))
    };
    serde_json::json!({
        "label": label,
        "target": args.target.name(),
        "case": args.case.name(),
        "size": load.size,
        "concurrency": load.concurrency,
        "window": (args.case == Case::ProduceStream).then_some(load.window),
        "batch": (args.case == Case::ProduceBatch).then_some(load.batch),
        "replicas": (args.target == Target::Nats).then_some(load.replicas),
        "messages": outcome.messages,
        "elapsed_s": outcome.elapsed.as_secs_f64(),
        "msgs_per_s": outcome.messages_per_second(),
        "mb_per_s": outcome.megabytes_per_second(),
        "p50_us": quantile(0.5),
        "p99_us": quantile(0.99),
        "p999_us": quantile(0.999),
        "idle_streams": args.idle_streams,
    })
}

/// Refuses addresses off this machine: a load generator must not be pointed at someone else.
fn ensure_loopback_addr(addr: &str) -> anyhow::Result<()> {
    let without_scheme = addr.split("://").last().unwrap_or(addr);
    let host = without_scheme
        .rsplit_once(':')
        .map_or(without_scheme, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host == "localhost" {
        return Ok(());
    }
    let ip: IpAddr = host
        .parse()
        .with_context(|| format!("`{addr}`: expected a loopback HOST:PORT like 127.0.0.1:8400"))?;
    ensure_loopback(ip)
}

fn ensure_loopback(ip: IpAddr) -> anyhow::Result<()> {
    if !ip.is_loopback() {
        bail!("{ip} is not a loopback address; proglog-loadgen only runs against 127.0.0.1");
    }
    Ok(())
}
