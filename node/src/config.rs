//! `NodeConfig`: everything a node needs to start, typed, with documented defaults, validated
//! before any task starts. `main` maps flags and `PROGLOG_*` environment variables onto it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::security::{AclConfig, TlsConfig};
use crate::storage::LogOptions;

/// Format of the node's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines (a terminal).
    Pretty,
}

/// Configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id, unique in its cluster (a StatefulSet pod name, say).
    pub id: String,
    /// Directory of the log's segments.
    pub data_dir: PathBuf,
    /// Where the gRPC services listen. Default `0.0.0.0:8400`.
    pub rpc_addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served over HTTP. Default `0.0.0.0:9400`.
    /// Trace export, the other half of telemetry, is [`NodeConfig::traces`].
    pub http_addr: SocketAddr,
    /// The RPC address other nodes and clients are told to use (defaults to `rpc_addr`, with the
    /// bound port when `rpc_addr` asks for port 0).
    pub advertise_addr: Option<String>,
    /// The storage engine's options (segment size, retention, durability, limits).
    pub log: LogOptions,
    /// How often retention runs.
    pub retention_check_interval: Duration,
    /// Records served per `ConsumeStream` read from the log, at most (a byte bound).
    pub consume_read_bytes: usize,
    /// Responses buffered per stream before the server waits for the client.
    pub stream_buffer: usize,
    /// Produce requests of one `ProduceStream` appended as one batch, at most (whatever arrived
    /// while the previous batch was syncing).
    pub produce_pipeline: usize,
    /// `ConsumeStream` and `ProduceStream` calls open at once on this node, at most
    /// (`--max-streams`); more are refused with `RESOURCE_EXHAUSTED`. Default 4096.
    pub max_streams: usize,
    /// Bytes of records all consume streams together may hold read ahead of their clients
    /// (`--stream-memory-bytes`). `None`, the default: 32 MiB, or four of the largest batches
    /// if that is more.
    pub stream_memory_bytes: Option<usize>,
    /// How long a consume stream holding more than its share of the stream memory may go
    /// without its client taking anything while other streams wait, before it is cut off
    /// (`--slow-consumer-timeout-ms`). Default 10 s.
    pub slow_consumer_timeout: Duration,
    /// Connections open at once on the client listener, and on the peer listener, at most
    /// (`--max-connections`); within the process's descriptor limit less what the log needs.
    /// At the cap, the oldest connection that has sent no request is closed to make room, or
    /// the new one is refused. Default 10,000.
    pub max_connections: usize,
    /// How long a new connection may take to send the start of its first request, TLS
    /// handshake included, before it is closed (`--first-request-timeout-ms`). Default 10 s.
    pub first_request_timeout: Duration,
    /// The timestamps produced records may carry, around the leader's clock.
    pub timestamps: crate::api::TimestampWindow,
    /// How long shutdown waits for calls in flight before closing the log.
    pub shutdown_grace: Duration,
    /// Format of the node's log lines.
    pub log_format: LogFormat,
    /// TLS for the gRPC port (`--tls-cert`, `--tls-key`, `--tls-client-ca`); `None` serves
    /// plaintext. Default `None`.
    pub tls: Option<TlsConfig>,
    /// ACL authorization (`--acl-model`, `--acl-policy`); needs mutual TLS, since the subject is
    /// the client certificate's common name. Default `None`: no authorization.
    pub acl: Option<AclConfig>,
    /// Where the peer and admin services listen (`--peer-addr`), apart from the clients'
    /// services, so a network policy can fence them off. `None`, the default: on `rpc_addr`.
    /// Every node of a cluster listens for peers on the same port (as a StatefulSet's pods do);
    /// a node calls a peer at its RPC host and that port.
    pub peer_addr: Option<SocketAddr>,
    /// TLS of the peer listener and of this node's calls to its peers (`--peer-tls-cert`,
    /// `--peer-tls-key`, `--peer-tls-ca`: mutual TLS with the cluster's own CA). `None`: the
    /// client TLS (`tls`) serves peers too.
    pub peer_tls: Option<TlsConfig>,
    /// Common names of the client certificates that may call the admin service when no ACL
    /// decides it (`--admin-subjects`). With neither, the admin service answers over loopback
    /// only.
    pub admin_subjects: Vec<String>,
    /// Replication: the first quorum, known peer addresses, timing.
    pub replication: ReplicationConfig,
    /// Worker threads of the async runtime (`--worker-threads`, 1 to 256). `None`, the
    /// default: one per CPU the process may use, a cgroup CPU limit included. Nodes that share
    /// a machine (`proglog-node dev`, benchmarks) each get their share instead, since threads
    /// beyond the cores only add hand-offs between them.
    pub worker_threads: Option<usize>,
    /// OpenTelemetry trace export (`--otlp-endpoint`, `--trace-sample-ratio`). Default: off.
    pub traces: TraceConfig,
}

/// OpenTelemetry trace export: one server span per RPC, sent over OTLP/gRPC (see the
/// `telemetry` module for what a span holds and how export behaves when the collector is down).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The collector's OTLP/gRPC endpoint (`--otlp-endpoint`), `http://host:4317` (plaintext,
    /// such as a sidecar or node-local agent) or `https://host:4317` (TLS, verified against the
    /// system's root certificates). `None`, the default, exports nothing and starts no exporter.
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces recorded and exported (`--trace-sample-ratio`, 0.0 to 1.0, default
    /// 1.0). An RPC whose caller sent a `traceparent` follows the caller's sampling decision
    /// instead, so a trace is never exported in pieces.
    pub sample_ratio: f64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            otlp_endpoint: None,
            sample_ratio: 1.0,
        }
    }
}

impl TraceConfig {
    /// Whether spans are exported at all.
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    /// Checks the sample ratio and the endpoint: `(flag, reason)` of the first that cannot work.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err((
                "trace-sample-ratio",
                format!("{} is outside 0.0..=1.0", self.sample_ratio),
            ));
        }
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(());
        };
        let invalid = |why: &str| Err(("otlp-endpoint", format!("`{endpoint}` {why}")));
        let uri: http::Uri = match endpoint.parse() {
            Ok(uri) => uri,
            Err(err) => return invalid(&format!("is not a URL: {err}")),
        };
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return invalid("must start with http:// (plaintext) or https:// (TLS)");
        }
        if uri.host().is_none_or(str::is_empty) {
            return invalid("names no host");
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            // `/v1/traces` belongs to OTLP over HTTP; the node speaks OTLP over gRPC.
            return invalid(
                "has a path, but OTLP/gRPC takes none: give the collector's gRPC address (usually port 4317)",
            );
        }
        Ok(())
    }
}

/// How a node finds and replicates with its peers.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Ids of the first quorum (`--initial-voters`); empty means this node alone. Ignored once
    /// the node has quorum state on disk. A node not in the list starts as an observer: it
    /// replicates, and joins the quorum when an operator adds it (admin `AddVoter`).
    pub initial_voters: Vec<String>,
    /// Peer RPC addresses known up front (`--peers id=host:port,...`).
    pub peers: std::collections::BTreeMap<String, String>,
    /// Peer listener addresses known up front, for nodes whose peer port differs from this
    /// node's (`proglog-node dev`, where every node shares one host). Others are called at
    /// their RPC host and this node's peer port.
    pub peer_addrs: std::collections::BTreeMap<String, String>,
    /// Lower bound of the randomized election timeout (`--election-timeout-ms`).
    pub election_timeout: Duration,
    /// Gossip discovery; `None` turns it off (`--gossip-addr off`): peers then come only from
    /// `peers`.
    pub gossip: Option<GossipConfig>,
}

/// Gossip (serf) discovery settings.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Where gossip listens, UDP and TCP (`--gossip-addr`, default `0.0.0.0:8401`).
    pub bind_addr: SocketAddr,
    /// The address peers should use, when `bind_addr` is not reachable as is
    /// (`--gossip-advertise-addr`, for example the pod IP).
    pub advertise_addr: Option<SocketAddr>,
    /// Seed gossip addresses, `host:port` (`--join`), resolved on every attempt; retried
    /// until one answers.
    pub seeds: Vec<String>,
    /// AES-256 key (`--gossip-key`, base64 of 32 bytes): gossip is encrypted and unencrypted
    /// peers are refused.
    pub key: Option<[u8; 32]>,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            bind_addr: SocketAddr::from(([0, 0, 0, 0], 8401)),
            advertise_addr: None,
            seeds: Vec::new(),
            key: None,
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            initial_voters: Vec::new(),
            peers: std::collections::BTreeMap::new(),
            peer_addrs: std::collections::BTreeMap::new(),
            election_timeout: Duration::from_secs(1),
            gossip: Some(GossipConfig::default()),
        }
    }
}

/// A configuration value that cannot work. It reads as the flag and its environment variable,
/// then what is wrong, what is allowed and how to fix it: `invalid --segment-bytes
/// (PROGLOG_SEGMENT_BYTES): 10 is outside 4096..=2147483648 (4 KiB to 2 GiB)`.
#[derive(Debug, thiserror::Error)]
#[error("invalid {}: {reason}", flag_and_env(.key))]
pub struct ConfigError {
    /// The flag (without dashes) to fix.
    pub key: &'static str,
    /// What is wrong and what is allowed.
    pub reason: String,
}

/// `--flag (PROGLOG_FLAG)` for a flag's name, or the name as it is for what is not one.
fn flag_and_env(key: &str) -> String {
    if key
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        format!(
            "--{key} (PROGLOG_{})",
            key.to_ascii_uppercase().replace('-', "_")
        )
    } else {
        format!("configuration ({key})")
    }
}

/// The largest `--retention-hours`.
pub const MAX_RETENTION_HOURS: u64 = 1_000_000;

/// The largest `--max-record-bytes`: a record and its batch's overhead within the 1 GiB batch
/// limit.
pub const MAX_RECORD_BYTES_LIMIT: u32 = (1 << 30) - 4096;

impl NodeConfig {
    /// The stream memory budget in force: `stream_memory_bytes`, or its default.
    pub fn stream_budget_bytes(&self) -> usize {
        self.stream_memory_bytes
            .unwrap_or_else(|| (32usize << 20).max(4 * self.log.max_batch_bytes as usize))
    }

    /// A configuration with every default, for the given id and data directory.
    pub fn new(id: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            id: id.into(),
            data_dir: data_dir.into(),
            rpc_addr: SocketAddr::from(([0, 0, 0, 0], 8400)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 9400)),
            advertise_addr: None,
            log: LogOptions::default(),
            retention_check_interval: Duration::from_secs(60),
            consume_read_bytes: 1 << 20,
            stream_buffer: 64,
            produce_pipeline: 64,
            max_streams: 4096,
            stream_memory_bytes: None,
            slow_consumer_timeout: Duration::from_secs(10),
            max_connections: crate::security::DEFAULT_MAX_CONNECTIONS,
            first_request_timeout: crate::security::DEFAULT_FIRST_REQUEST_TIMEOUT,
            timestamps: crate::api::TimestampWindow::default(),
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Json,
            tls: None,
            acl: None,
            peer_addr: None,
            peer_tls: None,
            admin_subjects: Vec::new(),
            replication: ReplicationConfig::default(),
            worker_threads: None,
            traces: TraceConfig::default(),
        }
    }

    /// Checks everything, naming the first flag that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError { key, reason });
        if self.id.is_empty() || self.id.len() > 128 {
            return invalid(
                "id",
                format!(
                    "`{}` has {} characters; give a node id of 1 to 128",
                    self.id,
                    self.id.len()
                ),
            );
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&self.retention_check_interval)
        {
            return invalid(
                "retention-check-interval-ms",
                format!(
                    "{} is outside 100..=3600000",
                    self.retention_check_interval.as_millis()
                ),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data-dir", "must name a directory".into());
        }
        if !(1..=MAX_RECORD_BYTES_LIMIT).contains(&self.log.max_record_bytes) {
            return invalid(
                "max-record-bytes",
                format!(
                    "{} is outside 1..={MAX_RECORD_BYTES_LIMIT} (1 GiB less a batch's overhead)",
                    self.log.max_record_bytes
                ),
            );
        }
        if let Some(age) = self.log.retention_age
            && age > Duration::from_secs(MAX_RETENTION_HOURS * 3600)
        {
            return invalid(
                "retention-hours",
                format!(
                    "{} is outside 1..={MAX_RETENTION_HOURS} (about 114 years); leave it unset \
                     to keep records regardless of age",
                    age.as_secs() / 3600
                ),
            );
        }
        if let Err(err) = self.log.validate() {
            return Err(match err {
                crate::storage::StorageError::InvalidOption { key, reason } => {
                    // The flag that sets it; the batch limit follows --max-record-bytes.
                    let key = match key {
                        "segment_bytes" => "segment-bytes",
                        "max_record_bytes" | "max_batch_bytes" => "max-record-bytes",
                        "retention_bytes" => "retention-bytes",
                        "retention_age" => "retention-hours",
                        "flush_interval" => "flush-interval-ms",
                        other => other,
                    };
                    ConfigError { key, reason }
                }
                other => ConfigError {
                    key: "log options",
                    reason: other.to_string(),
                },
            });
        }
        if self.peer_tls.is_some() && self.peer_addr.is_none() {
            return invalid(
                "peer-tls-cert",
                "TLS of its own is for a peer listener of its own: give --peer-addr too".into(),
            );
        }
        if !self.admin_subjects.is_empty() {
            let mutual =
                |tls: &Option<TlsConfig>| tls.as_ref().is_some_and(|t| t.client_ca.is_some());
            let admin_mutual = if self.peer_addr.is_some() {
                mutual(&self.peer_tls) || (self.peer_tls.is_none() && mutual(&self.tls))
            } else {
                mutual(&self.tls)
            };
            if !admin_mutual {
                return invalid(
                    "admin-subjects",
                    "names certificates, so the listener of the admin service needs mutual TLS \
                     (--tls-client-ca, or --peer-tls-ca with --peer-addr)"
                        .into(),
                );
            }
            if self.admin_subjects.iter().any(String::is_empty) {
                return invalid("admin-subjects", "names must not be empty".into());
            }
        }
        if self.peer_addr.is_some()
            && self.peer_addr.map(|a| a.port()) == Some(self.rpc_addr.port())
            && self.rpc_addr.port() != 0
        {
            return invalid(
                "peer-addr",
                format!(
                    "uses --rpc-addr's port {}: give the peer listener a port of its own",
                    self.rpc_addr.port()
                ),
            );
        }
        let replication = &self.replication;
        if replication.initial_voters.iter().any(String::is_empty) {
            return invalid("initial-voters", "ids must not be empty".into());
        }
        let timeout_ms = replication.election_timeout.as_millis();
        if !(50..=60_000).contains(&timeout_ms) {
            return invalid(
                "election-timeout-ms",
                format!("{timeout_ms} is outside 50..=60000"),
            );
        }
        if self.stream_buffer == 0 || self.produce_pipeline == 0 || self.consume_read_bytes == 0 {
            return invalid(
                "stream limits",
                "buffers and pipelines must be at least 1".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.max_streams) {
            return invalid(
                "max-streams",
                format!("{} is outside 1..=1000000", self.max_streams),
            );
        }
        let min_budget = 2 * self.log.max_batch_bytes as usize;
        if let Some(bytes) = self.stream_memory_bytes
            && !(min_budget..=(16usize << 30)).contains(&bytes)
        {
            return invalid(
                "stream-memory-bytes",
                format!(
                    "{bytes} is outside {min_budget}..=17179869184: it must hold at least two of the largest batches (twice the batch limit that --max-record-bytes sets), so one large read cannot hold up every stream"
                ),
            );
        }
        let slow_ms = self.slow_consumer_timeout.as_millis();
        if !(100..=3_600_000).contains(&slow_ms) {
            return invalid(
                "slow-consumer-timeout-ms",
                format!("{slow_ms} is outside 100..=3600000"),
            );
        }
        let max_window = Duration::from_millis(i64::MAX as u64);
        for (flag, window) in [
            ("timestamp-before-max-ms", self.timestamps.before),
            ("timestamp-after-max-ms", self.timestamps.after),
        ] {
            if window > max_window {
                return invalid(
                    flag,
                    format!("{} is more than {} ms", window.as_millis(), i64::MAX),
                );
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return invalid(
                "max-connections",
                format!("{} is outside 1..=1000000", self.max_connections),
            );
        }
        let first_ms = self.first_request_timeout.as_millis();
        if !(100..=600_000).contains(&first_ms) {
            return invalid(
                "first-request-timeout-ms",
                format!("{first_ms} is outside 100..=600000"),
            );
        }
        if let Some(threads) = self.worker_threads
            && !(1..=256).contains(&threads)
        {
            return invalid("worker-threads", format!("{threads} is outside 1..=256"));
        }
        if self.http_addr == self.rpc_addr && self.http_addr.port() != 0 {
            return invalid(
                "http-addr",
                format!(
                    "{} is already --rpc-addr; pick another port",
                    self.http_addr
                ),
            );
        }
        if let Some(tls) = &self.tls
            && let Err(err) = tls.validate()
        {
            return invalid(err.flag(), err.to_string());
        }
        if let Some(acl) = &self.acl {
            if self.tls.as_ref().is_none_or(|tls| tls.client_ca.is_none()) {
                return invalid(
                    "acl-model",
                    "the ACL needs mutual TLS (--tls-cert, --tls-key and --tls-client-ca): its subject is the client certificate's common name".into(),
                );
            }
            for (key, path) in [("acl-model", &acl.model), ("acl-policy", &acl.policy)] {
                if !path.is_file() {
                    return invalid(key, format!("{} is not a readable file", path.display()));
                }
            }
        }
        if let Err((key, reason)) = self.traces.validate() {
            return invalid(key, reason);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_flag() {
        NodeConfig::new("node-0", "/tmp/x").validate().unwrap();
        let mut config = NodeConfig::new("", "/tmp/x");
        assert_eq!(config.validate().unwrap_err().key, "id");
        config.id = "node-0".into();
        config.log.max_record_bytes = 0;
        assert_eq!(config.validate().unwrap_err().key, "max-record-bytes");
    }

    #[test]
    fn worker_threads_are_bounded() {
        let mut config = NodeConfig::new("node-0", "/tmp/x");
        for threads in [1, 2, 256] {
            config.worker_threads = Some(threads);
            config.validate().unwrap();
        }
        for threads in [0, 257] {
            config.worker_threads = Some(threads);
            let err = config.validate().unwrap_err();
            assert_eq!(err.key, "worker-threads");
            assert!(err.reason.contains("1..=256"), "{err}");
        }
    }

    #[test]
    fn security_settings_are_checked_before_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new("node-0", dir.path());
        config.tls = Some(TlsConfig::new(
            dir.path().join("missing.pem"),
            dir.path().join("missing.key"),
        ));
        let err = config.validate().unwrap_err();
        assert_eq!(err.key, "tls-cert");
        assert!(err.reason.contains("cannot read --tls-cert"), "{err}");

        config.tls = None;
        config.acl = Some(AclConfig {
            model: dir.path().join("model.conf"),
            policy: dir.path().join("policy.csv"),
        });
        let err = config.validate().unwrap_err();
        assert_eq!(err.key, "acl-model");
        assert!(err.reason.contains("mutual TLS"), "{err}");
    }

    #[test]
    fn trace_export_settings_are_checked_before_start() {
        let mut config = NodeConfig::new("node-0", "/tmp/x");
        assert!(!config.traces.enabled(), "export is opt-in");
        for endpoint in [
            "http://127.0.0.1:4317",
            "http://otel-agent:4317/",
            "https://collector.example.com:4317",
        ] {
            config.traces.otlp_endpoint = Some(endpoint.into());
            config.validate().unwrap();
        }
        for (endpoint, why) in [
            ("127.0.0.1:4317", "must start with http://"),
            ("grpc://collector:4317", "must start with http://"),
            ("http://collector:4318/v1/traces", "OTLP/gRPC takes none"),
            ("http://", "is not a URL"),
            ("not a url", "is not a URL"),
        ] {
            config.traces.otlp_endpoint = Some(endpoint.into());
            let err = config.validate().unwrap_err();
            assert_eq!(err.key, "otlp-endpoint", "{endpoint}: {err}");
            assert!(err.reason.contains(why), "{endpoint}: {err}");
        }

        config.traces.otlp_endpoint = None;
        for ratio in [0.0, 0.25, 1.0] {
            config.traces.sample_ratio = ratio;
            config.validate().unwrap();
        }
        for ratio in [-0.1, 1.5, f64::NAN] {
            config.traces.sample_ratio = ratio;
            let err = config.validate().unwrap_err();
            assert_eq!(err.key, "trace-sample-ratio", "{ratio}: {err}");
            assert!(err.to_string().contains("0.0..=1.0"), "{err}");
        }
    }
}
