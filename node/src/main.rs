//! `proglog-node`: one proglog node. Flags map onto [`NodeConfig`]; each flag is also an
//! environment variable `PROGLOG_<FLAG>` (for example `--data-dir` / `PROGLOG_DATA_DIR`).
//! Runs until SIGTERM or SIGINT, then drains, syncs and closes the log cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use proglog_node::api::{OutOfWindow, TimestampWindow};
use proglog_node::config::{GossipConfig, LogFormat, NodeConfig, TraceConfig};
use proglog_node::security::{AclConfig, TlsConfig};
use proglog_node::storage::Durability;
use proglog_node::telemetry::TraceExport;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How long the spans still queued at shutdown may take to reach the collector.
const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A proglog node: a segmented commit log served over gRPC (proglog's `log.v1.Log` API).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// `dev` starts a local cluster instead of one node.
    #[command(subcommand)]
    command: Option<Mode>,
    /// This node's id, unique in the cluster.
    #[arg(long, env = "PROGLOG_ID", default_value = "node-0")]
    id: String,
    /// Directory of the log's segments (created if missing).
    #[arg(long, env = "PROGLOG_DATA_DIR", default_value = "proglog-data")]
    data_dir: PathBuf,
    /// Address of the gRPC services (client API, health, reflection).
    #[arg(long, env = "PROGLOG_RPC_ADDR", default_value = "0.0.0.0:8400")]
    rpc_addr: SocketAddr,
    /// Address of the HTTP endpoints: `/metrics` (Prometheus), `/healthz`, `/readyz`.
    #[arg(long, env = "PROGLOG_HTTP_ADDR", default_value = "0.0.0.0:9400")]
    http_addr: SocketAddr,
    /// RPC address announced to clients (default: the bound address).
    #[arg(long, env = "PROGLOG_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// When appends are synced: `always` (before acknowledging; group commit), `interval`, or `never`.
    #[arg(long, env = "PROGLOG_DURABILITY", default_value = "always")]
    durability: Durability,
    /// Sync period with `--durability interval`, in milliseconds.
    #[arg(long, env = "PROGLOG_FLUSH_INTERVAL_MS", default_value_t = 1000)]
    flush_interval_ms: u64,
    /// Largest record value accepted, in bytes.
    #[arg(long, env = "PROGLOG_MAX_RECORD_BYTES", default_value_t = 1 << 20)]
    max_record_bytes: u32,
    /// Segment size at which a new segment starts, in bytes.
    #[arg(long, env = "PROGLOG_SEGMENT_BYTES", default_value_t = 1 << 30)]
    segment_bytes: u64,
    /// Delete the oldest segments while the log is larger than this many bytes (unset: keep all).
    #[arg(long, env = "PROGLOG_RETENTION_BYTES")]
    retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this many hours (unset: keep all).
    #[arg(long, env = "PROGLOG_RETENTION_HOURS")]
    retention_hours: Option<u64>,
    /// How often the retention limits are applied, in milliseconds (100 to 3600000).
    #[arg(
        long,
        env = "PROGLOG_RETENTION_CHECK_INTERVAL_MS",
        default_value_t = 60_000
    )]
    retention_check_interval_ms: u64,
    /// `ConsumeStream` and `ProduceStream` calls open at once, at most; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "PROGLOG_MAX_STREAMS", default_value_t = 4096)]
    max_streams: usize,
    /// Bytes of records all consume streams together may hold read ahead of their clients
    /// (default: 32 MiB, or four of the largest batches if more).
    #[arg(long, env = "PROGLOG_STREAM_MEMORY_BYTES")]
    stream_memory_bytes: Option<usize>,
    /// How long a consume stream over its share of the stream memory may go without its client
    /// taking anything while others wait, before it is cut off (RESOURCE_EXHAUSTED), in
    /// milliseconds.
    #[arg(
        long,
        env = "PROGLOG_SLOW_CONSUMER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    slow_consumer_timeout_ms: u64,
    /// Connections open at once on the client listener (and on the peer listener), at most;
    /// within the process's descriptor limit, less what the log needs. At the cap, the oldest
    /// connection that has sent no request yet is closed to make room, else the new one is
    /// refused.
    #[arg(long, env = "PROGLOG_MAX_CONNECTIONS", default_value_t = proglog_node::security::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// How long a new connection may take to send its first request (TLS handshake included)
    /// before it is closed, in milliseconds.
    #[arg(
        long,
        env = "PROGLOG_FIRST_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    first_request_timeout_ms: u64,
    /// How far in the past a produced record's timestamp may be, in milliseconds (Kafka's
    /// message.timestamp.before.max.ms); age retention goes by timestamps.
    #[arg(long, env = "PROGLOG_TIMESTAMP_BEFORE_MAX_MS", default_value_t = 7 * 24 * 3600 * 1000)]
    timestamp_before_max_ms: u64,
    /// How far in the future a produced record's timestamp may be, in milliseconds (Kafka's
    /// message.timestamp.after.max.ms).
    #[arg(long, env = "PROGLOG_TIMESTAMP_AFTER_MAX_MS", default_value_t = 3600 * 1000)]
    timestamp_after_max_ms: u64,
    /// What happens to a record whose timestamp is outside that window: the produce is refused
    /// (INVALID_ARGUMENT), or the record is stamped with the leader's clock instead.
    #[arg(long, env = "PROGLOG_TIMESTAMP_OUT_OF_WINDOW", value_enum, default_value_t = OutOfWindowArg::Refuse)]
    timestamp_out_of_window: OutOfWindowArg,
    /// Format of the node's own log lines.
    #[arg(long, env = "PROGLOG_LOG_FORMAT", value_enum, default_value_t = FormatArg::Json)]
    log_format: FormatArg,
    /// Serve TLS with this certificate chain (PEM); reloaded when the file changes.
    #[arg(long, env = "PROGLOG_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert; reloaded when the file changes.
    #[arg(long, env = "PROGLOG_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs (PEM): mutual TLS.
    #[arg(long, env = "PROGLOG_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes, in milliseconds (100 to 3600000).
    #[arg(long, env = "PROGLOG_TLS_RELOAD_INTERVAL_MS", default_value_t = 5000)]
    tls_reload_interval_ms: u64,
    /// Casbin model of the ACL (proglog's model.conf); needs mutual TLS and --acl-policy.
    #[arg(long, env = "PROGLOG_ACL_MODEL", requires_all = ["acl_policy", "tls_client_ca"])]
    acl_model: Option<PathBuf>,
    /// Casbin policy of the ACL (proglog's policy.csv: `p, <client CN>, *, produce|consume`).
    #[arg(long, env = "PROGLOG_ACL_POLICY", requires = "acl_model")]
    acl_policy: Option<PathBuf>,
    /// Serve the peer and admin services on this address instead of --rpc-addr, so a network
    /// policy can fence them off. Every node of a cluster uses the same port.
    #[arg(long, env = "PROGLOG_PEER_ADDR")]
    peer_addr: Option<SocketAddr>,
    /// The certificate chain (PEM) of the peer listener, also presented to peers when this node
    /// calls them; reloaded when the file changes. Default: --tls-cert.
    #[arg(long, env = "PROGLOG_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_tls_ca", "peer_addr"])]
    peer_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --peer-tls-cert.
    #[arg(long, env = "PROGLOG_PEER_TLS_KEY", requires = "peer_tls_cert")]
    peer_tls_key: Option<PathBuf>,
    /// The CA (PEM) peers' certificates must chain to: mutual TLS between the nodes.
    #[arg(long, env = "PROGLOG_PEER_TLS_CA", requires = "peer_tls_cert")]
    peer_tls_ca: Option<PathBuf>,
    /// Peer listener addresses of other nodes whose peer port differs from this node's, as
    /// `id=host:port` (comma separated). Others are called at their RPC host and this node's
    /// --peer-addr port.
    #[arg(long, env = "PROGLOG_PEER_LISTENERS", value_delimiter = ',', value_parser = parse_peer, requires = "peer_addr")]
    peer_listeners: Vec<(String, String)>,
    /// Common names of client certificates that may call the admin service when no ACL decides
    /// (comma separated). With neither, the admin service answers over loopback only.
    #[arg(long, env = "PROGLOG_ADMIN_SUBJECTS", value_delimiter = ',')]
    admin_subjects: Vec<String>,
    /// The ids of the first quorum, the same list on every node of a new cluster (comma
    /// separated). Ignored once the node has quorum state on disk. Default: this node alone.
    #[arg(long, env = "PROGLOG_INITIAL_VOTERS", value_delimiter = ',')]
    initial_voters: Vec<String>,
    /// Peer RPC addresses known up front, as `id=host:port` (comma separated). Addresses
    /// learned by gossip are used for peers not listed.
    #[arg(long, env = "PROGLOG_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    peers: Vec<(String, String)>,
    /// Lower bound of the randomized election timeout, in milliseconds (each is drawn from
    /// `[t, 2t)`). Failover takes about 1-2 of these.
    #[arg(long, env = "PROGLOG_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    election_timeout_ms: u64,
    /// Where gossip (member discovery) listens, UDP and TCP; `off` disables gossip.
    #[arg(long, env = "PROGLOG_GOSSIP_ADDR", default_value = "0.0.0.0:8401")]
    gossip_addr: String,
    /// The gossip address peers should use (for example the pod IP), when it differs:
    /// `ip:port` or `[ip]:port`; an IPv6 address may also come without brackets before its
    /// `:port`, so `$(POD_IP):8401` works for IPv4 and IPv6 pods alike.
    #[arg(long, env = "PROGLOG_GOSSIP_ADVERTISE_ADDR", value_parser = parse_socket_addr)]
    gossip_advertise_addr: Option<SocketAddr>,
    /// Gossip addresses of nodes to join, `host:port` (comma separated); retried until one
    /// answers. In Kubernetes: the pods' names under the headless Service.
    #[arg(long, env = "PROGLOG_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// Gossip encryption key: base64 of 32 random bytes (`head -c 32 /dev/urandom | base64`).
    /// Every node needs the same key.
    #[arg(long, env = "PROGLOG_GOSSIP_KEY", value_parser = parse_gossip_key, hide_env_values = true)]
    gossip_key: Option<GossipKey>,
    /// Worker threads of the async runtime, 1 to 256 (default: one per CPU the process may
    /// use, a container's CPU limit included). Nodes sharing a machine should split its cores.
    #[arg(long, env = "PROGLOG_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Export a span per RPC over OTLP/gRPC to this collector, `http://host:4317` (plaintext)
    /// or `https://host:4317` (TLS, system roots). Unset: no trace export.
    #[arg(long, env = "PROGLOG_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Fraction of new traces exported, 0.0 to 1.0; calls carrying a `traceparent` follow the
    /// caller's sampling decision.
    #[arg(long, env = "PROGLOG_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    trace_sample_ratio: f64,
}

/// A parsed gossip key (kept out of `Debug` output).
#[derive(Clone)]
struct GossipKey([u8; 32]);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

fn parse_gossip_key(value: &str) -> Result<GossipKey, String> {
    proglog_node::discovery::parse_key(value)
        .map(GossipKey)
        .map_err(|err| err.to_string())
}

/// `ip:port`, `[ip]:port` for either family, or an IPv6 address without brackets followed by
/// `:port` (what `$(POD_IP):8401` becomes on an IPv6 pod: the port is required, so the last
/// group is the port).
fn parse_socket_addr(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let bracketed = value
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("]:"));
    let (ip, port) = bracketed
        .or_else(|| value.rsplit_once(':').filter(|(ip, _)| ip.contains(':')))
        .ok_or_else(|| format!("`{value}` is not `ip:port` or `[ip]:port`"))?;
    match (ip.parse(), port.parse()) {
        (Ok(ip), Ok(port)) => Ok(SocketAddr::new(ip, port)),
        _ => Err(format!("`{value}` is not `ip:port` or `[ip]:port`")),
    }
}

/// `addr`, or the IPv4 wildcard on its port when it is the IPv6 wildcard (`[::]`, which takes
/// IPv4 and IPv6 connections) on a host without IPv6 (a kernel booted with `ipv6.disable=1`).
fn usable_bind(addr: SocketAddr) -> SocketAddr {
    static IPV6: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let unspecified_v6 = addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    if unspecified_v6 && !*IPV6.get_or_init(|| std::net::UdpSocket::bind("[::]:0").is_ok()) {
        return SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
    }
    addr
}

fn parse_peer(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((id, addr)) if !id.is_empty() && !addr.is_empty() => {
            Ok((id.to_owned(), addr.to_owned()))
        }
        _ => Err(format!("`{value}` is not `id=host:port`")),
    }
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Runs a local cluster of nodes on 127.0.0.1 (embedded defaults), prints the addresses,
    /// and stops it on Ctrl-C. Data is kept in `--dir`, so running it again resumes.
    Dev {
        /// Number of nodes, all voters.
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Directory of the nodes' data and logs.
        #[arg(long, default_value = "proglog-dev")]
        dir: PathBuf,
        /// RPC port of the first node; node i uses base + 10 i (gossip + 1, HTTP + 1000).
        #[arg(long, default_value_t = 8400)]
        base_port: u16,
        /// Durability of every node: always, interval or never.
        #[arg(long, default_value = "always")]
        durability: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutOfWindowArg {
    Refuse,
    Replace,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Json,
    Pretty,
}

impl Cli {
    fn into_config(self) -> Result<NodeConfig, String> {
        let mut config = NodeConfig::new(self.id, self.data_dir);
        config.rpc_addr = usable_bind(self.rpc_addr);
        config.http_addr = usable_bind(self.http_addr);
        config.advertise_addr = self.advertise_addr;
        config.log.durability = self.durability;
        config.log.flush_interval = Duration::from_millis(self.flush_interval_ms);
        config.log.segment_bytes = self.segment_bytes;
        config.log.max_record_bytes = self.max_record_bytes;
        // A batch holds at least one record, so keep room for the largest. A segment holds at
        // least one batch, so small segments need no smaller batches.
        config.log.max_batch_bytes = config
            .log
            .max_batch_bytes
            .max(self.max_record_bytes.saturating_add(4096));
        config.log.retention_bytes = self.retention_bytes;
        config.log.retention_age = self
            .retention_hours
            .map(|hours| Duration::from_secs(hours.saturating_mul(3600)));
        config.retention_check_interval = Duration::from_millis(self.retention_check_interval_ms);
        config.max_streams = self.max_streams;
        config.stream_memory_bytes = self.stream_memory_bytes;
        config.slow_consumer_timeout = Duration::from_millis(self.slow_consumer_timeout_ms);
        config.max_connections = self.max_connections;
        config.timestamps = TimestampWindow {
            before: Duration::from_millis(self.timestamp_before_max_ms),
            after: Duration::from_millis(self.timestamp_after_max_ms),
            out_of_window: match self.timestamp_out_of_window {
                OutOfWindowArg::Refuse => OutOfWindow::Refuse,
                OutOfWindowArg::Replace => OutOfWindow::Replace,
            },
        };
        config.first_request_timeout = Duration::from_millis(self.first_request_timeout_ms);
        if let (Some(cert), Some(key)) = (self.tls_cert, self.tls_key) {
            let mut tls = TlsConfig::new(cert, key);
            tls.client_ca = self.tls_client_ca;
            tls.reload_interval = Duration::from_millis(self.tls_reload_interval_ms);
            config.tls = Some(tls);
        }
        if let (Some(model), Some(policy)) = (self.acl_model, self.acl_policy) {
            config.acl = Some(AclConfig { model, policy });
        }
        config.peer_addr = self.peer_addr.map(usable_bind);
        if let (Some(cert), Some(key), Some(ca)) =
            (self.peer_tls_cert, self.peer_tls_key, self.peer_tls_ca)
        {
            let mut tls = TlsConfig::new(cert, key);
            tls.client_ca = Some(ca);
            tls.reload_interval = Duration::from_millis(self.tls_reload_interval_ms);
            config.peer_tls = Some(tls);
        }
        config.admin_subjects = self.admin_subjects;
        config.replication.peer_addrs = self.peer_listeners.into_iter().collect();
        config.replication.initial_voters = self.initial_voters;
        config.replication.peers = self.peers.into_iter().collect();
        config.replication.election_timeout = Duration::from_millis(self.election_timeout_ms);
        config.replication.gossip = if self.gossip_addr.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(GossipConfig {
                bind_addr: usable_bind(self.gossip_addr.parse().map_err(|err| {
                    format!(
                        "invalid --gossip-addr (PROGLOG_GOSSIP_ADDR): `{}` is not host:port or `off`: {err}",
                        self.gossip_addr
                    )
                })?),
                advertise_addr: self.gossip_advertise_addr,
                seeds: self.join,
                key: self.gossip_key.map(|key| key.0),
            })
        };
        config.worker_threads = self.worker_threads;
        config.traces = TraceConfig {
            otlp_endpoint: self.otlp_endpoint,
            sample_ratio: self.trace_sample_ratio,
        };
        config.log_format = match self.log_format {
            FormatArg::Json => LogFormat::Json,
            FormatArg::Pretty => LogFormat::Pretty,
        };
        Ok(config)
    }
}

/// Installs the subscriber: log lines on stderr, filtered by `RUST_LOG`, and, when trace
/// export is on, the layer that exports RPC spans (filtered on its own, so `RUST_LOG` never
/// silences traces and traces never add log lines).
fn init_tracing(format: LogFormat, traces: Option<&TraceExport>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // memberlist logs a harmless "broadcast failed to notify" at ERROR each time a gossip
        // tag changes (the role, on every election); keep it out of operators' alerts.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,memberlist_core::broadcast=off")
        });
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Json => lines.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Pretty => lines.with_filter(filter).boxed(),
    };
    tracing_subscriber::registry()
        .with(lines)
        .with(traces.map(TraceExport::layer))
        .init();
}

fn run_dev(cluster: proglog_node::dev::DevCluster) -> ExitCode {
    init_tracing(LogFormat::Pretty, None);
    let runtime = match runtime(None) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("proglog-node dev: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The nodes are processes of their own, which raise their own descriptor limits.
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        proglog_node::dev::run(cluster, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("proglog-node dev: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Threads for blocking work (log reads, appends, fsyncs), at most. Reads and appends from
/// the page cache take microseconds, so a few dozen keep up with any load; more would only
/// cost memory (each thread has its stack and its allocator arena).
const MAX_BLOCKING_THREADS: usize = 64;

/// The async runtime, with `worker_threads` workers (default: one per available CPU).
fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    builder
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!(error = %err, "cannot listen for signals; stop the node with SIGKILL");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
        _ = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(Mode::Dev {
        nodes,
        dir,
        base_port,
        durability,
    }) = cli.command.take()
    {
        return run_dev(proglog_node::dev::DevCluster {
            nodes,
            dir,
            base_port,
            durability,
        });
    }
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("proglog-node: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = config.validate() {
        init_tracing(config.log_format, None);
        tracing::error!(error = %err, "refusing to start");
        eprintln!("proglog-node: {err}");
        return ExitCode::from(2);
    }
    let runtime = match runtime(config.worker_threads) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("proglog-node: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the exporter's gRPC channel runs on it.
    let traces = match runtime.block_on(async { TraceExport::start(&config.traces, &config.id) }) {
        Ok(traces) => traces,
        Err(err) => {
            // With its source: why the exporter could not be built.
            let err = anyhow::Error::new(err);
            init_tracing(config.log_format, None);
            tracing::error!(error = format!("{err:#}"), "refusing to start");
            eprintln!("proglog-node: {err:#}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format, traces.as_ref());
    proglog_node::security::raise_descriptor_limit();
    if let Some(endpoint) = &config.traces.otlp_endpoint {
        tracing::info!(
            otlp_endpoint = %endpoint,
            sample_ratio = config.traces.sample_ratio,
            "exporting RPC spans over OTLP"
        );
    }
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        proglog_node::server::run(config, shutdown).await
    });
    // After the drain, with the runtime still running the exporter's channel: the spans of the
    // last calls are still queued.
    if let Some(traces) = traces
        && let Err(err) = traces.shutdown(TRACE_FLUSH_TIMEOUT)
    {
        let err = anyhow::Error::new(err);
        tracing::warn!(error = format!("{err:#}"), "spans lost at shutdown");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "node stopped");
            eprintln!("proglog-node: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_addresses_take_brackets_for_either_family() {
        let v4: SocketAddr = "10.1.2.3:8401".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:8401".parse().unwrap();
        assert_eq!(parse_socket_addr("10.1.2.3:8401"), Ok(v4));
        assert_eq!(parse_socket_addr("[10.1.2.3]:8401"), Ok(v4));
        assert_eq!(parse_socket_addr("[fd00::1]:8401"), Ok(v6));
        // $(POD_IP):8401 on an IPv6 pod.
        assert_eq!(parse_socket_addr("fd00::1:8401"), Ok(v6));
        assert!(parse_socket_addr("fd00::1").is_err());
        assert!(parse_socket_addr("[10.1.2.3]").is_err());
        assert!(parse_socket_addr("10.1.2.3").is_err());
        assert!(parse_socket_addr("[pod]:8401").is_err());
    }

    #[test]
    fn the_ipv6_wildcard_is_kept_where_ipv6_works() {
        let any: SocketAddr = "[::]:8400".parse().unwrap();
        let expected = if std::net::UdpSocket::bind("[::]:0").is_ok() {
            any
        } else {
            "0.0.0.0:8400".parse().unwrap()
        };
        assert_eq!(usable_bind(any), expected);
        let v4: SocketAddr = "0.0.0.0:8400".parse().unwrap();
        assert_eq!(usable_bind(v4), v4);
    }
}
