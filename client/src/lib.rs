//! # proglog-client
//!
//! The Rust client of [proglog](https://github.com/proglog/proglog), a distributed commit log
//! for Kubernetes. It holds the generated `log.v1` types (the wire API, compatible with the Go
//! proglog's `log.v1.Log` service) and two clients over them:
//!
//! - [`Client`]: typed calls to one node, with errors that say what to do.
//! - [`ClusterClient`]: learns a cluster's members from any of them, sends produces to the
//!   leader itself and spreads reads over the members.
//!
//! It depends on tonic (its client side only, with tonic-prost), prost and tokio-stream, and
//! nothing of the node: no storage engine, gossip, ACL or telemetry code.
//!
//! ## What a client can rely on
//!
//! - A produce is acknowledged with its offset once a majority of the cluster holds it
//!   (durably, under the nodes' default durability). Any node takes a produce: followers
//!   forward it to the leader.
//! - Reads see your writes through any node: once a produce was acknowledged with offset N,
//!   every node's end of the log ([`Client::offsets`]) is past N and a read there returns N.
//! - Reads deliver only records that producers wrote. The log also holds the cluster's own
//!   control records (leader changes, voter sets); streams skip them and [`Client::consume`]
//!   at such an offset answers with the next record, so offsets have gaps. Read the next
//!   record at `record.offset + 1` of the one you got.
//!
//! ## Example
//!
//! ```no_run
//! use proglog_client::{ClusterClient, Produce, TlsOptions};
//!
//! # async fn run() -> Result<(), proglog_client::ClientError> {
//! let seeds = vec!["127.0.0.1:8400".to_owned()];
//! let mut cluster = ClusterClient::connect(&seeds, &TlsOptions::default()).await?;
//! let offset = cluster
//!     .leader()
//!     .await?
//!     .produce(Produce::new("hello"))
//!     .await?;
//! let record = cluster.reader().await?.consume(offset).await?;
//! assert_eq!(record.value, "hello");
//! # Ok(())
//! # }
//! ```
//!
//! `examples/produce_consume.rs` runs the same against a cluster:
//! `cargo run -p proglog-client --example produce_consume -- 127.0.0.1:8400`.
//!
//! ## Layout
//!
//! - [`log::v1`]: the generated messages and the `Log` service's tonic client.
//! - [`Client`], [`Produce`], [`TlsOptions`], [`ClientError`]: one node (this file).
//! - [`ClusterClient`]: a whole cluster (`cluster.rs`).
//! - [`names`]: the rules for log names, which nodes and clients share.

mod cluster;
pub mod names;

pub use cluster::ClusterClient;
pub use names::{DEFAULT_LOG, LogNameError};

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::bytes::Bytes;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use log::v1::log_client::LogClient;
use log::v1::logs_client::LogsClient;
use log::v1::{
    ConsumeRequest, DescribeLogRequest, GetOffsetsRequest, GetServersRequest, ListLogsRequest,
    LogDescription, LogSummary, ProduceBatchRequest, ProduceRequest, Record, Server,
};

/// Package `log.v1`, generated from `proto/log/v1/log.proto`.
pub mod log {
    /// The `log.v1` messages and the `Log` service's client.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("log.v1");
    }
}

/// The largest answer taken from a node: a record of the largest size a node may be set to
/// accept (1 GiB less a batch's overhead), with room for its framing.
const MAX_MESSAGE_BYTES: usize = (1 << 30) + (64 << 10);

/// What went wrong talking to a node. New kinds of error may be added: match with a `_` arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The address is not a valid endpoint.
    InvalidAddress {
        /// The address given.
        addr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// No connection could be made.
    Connect {
        /// The address tried.
        addr: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// A TLS file could not be read.
    TlsFile {
        /// The option naming the file, as the CLI spells it (`--tls-ca`).
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS options do not make a usable configuration.
    TlsOptions {
        /// What is wrong.
        reason: String,
    },
    /// A log name breaks the naming rules (see [`names`]).
    InvalidLogName(LogNameError),
    /// The node answered with an error status.
    Status(Status),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::InvalidAddress { addr, reason } => write!(
                f,
                "invalid address `{addr}`: {reason} (expected HOST:PORT, for example 127.0.0.1:8400)"
            ),
            ClientError::Connect { addr, .. } => {
                write!(
                    f,
                    "cannot connect to {addr} (is a proglog node listening there?)"
                )
            }
            ClientError::TlsFile {
                option,
                path,
                source,
            } => write!(f, "cannot read {option} {}: {source}", path.display()),
            ClientError::TlsOptions { reason } => write!(f, "invalid TLS options: {reason}"),
            ClientError::InvalidLogName(error) => write!(f, "{error}"),
            ClientError::Status(status) => {
                write!(f, "{}: {}", code_name(status.code()), status.message())
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } => Some(source),
            ClientError::TlsFile { source, .. } => Some(source),
            ClientError::InvalidLogName(error) => Some(error),
            _ => None,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status(status)
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::OutOfRange => "offset out of range",
        Code::InvalidArgument => "invalid request",
        Code::Unavailable => "node unavailable",
        Code::Unauthenticated => "not authenticated",
        Code::PermissionDenied => "permission denied",
        Code::NotFound => "not found",
        Code::DataLoss => "data damaged",
        _ => "request failed",
    }
}

/// TLS to a node. Field docs name the CLI flags that set them.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) the node's certificate must chain to (`--tls-ca`). Required: the
    /// client trusts no public roots, proglog clusters use their own CA.
    pub ca_cert: Option<PathBuf>,
    /// This client's certificate chain (PEM) for mutual TLS (`--tls-cert`); its common name is
    /// the ACL subject.
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (`--tls-key`).
    pub client_key: Option<PathBuf>,
    /// The name the node's certificate must carry, when it is not the host of the address
    /// (`--tls-server-name`).
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Whether any option is set: TLS is then used.
    pub fn is_set(&self) -> bool {
        self.ca_cert.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.server_name.is_some()
    }

    /// Reads the files into tonic's TLS config.
    pub fn to_tonic(&self) -> Result<ClientTlsConfig, ClientError> {
        let read = |option: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| ClientError::TlsFile {
                option,
                path: path.to_path_buf(),
                source,
            })
        };
        let Some(ca) = &self.ca_cert else {
            return Err(ClientError::TlsOptions {
                reason: "--tls-ca is required with TLS (the CA that signed the node's certificate)"
                    .into(),
            });
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?));
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read("--tls-cert", cert)?,
                    read("--tls-key", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::TlsOptions {
                    reason: "--tls-cert and --tls-key go together".into(),
                });
            }
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// A connection to one node, for one log (the `default` log unless [`Client::with_log`] names
/// another).
#[derive(Debug, Clone)]
pub struct Client {
    inner: LogClient<Channel>,
    logs: LogsClient<Channel>,
    /// The `log` field of every request; empty for the `default` log, so the requests are
    /// exactly what the Go proglog's clients send.
    log: String,
}

/// A record to produce.
#[derive(Debug, Clone, Default)]
pub struct Produce {
    /// The payload.
    pub value: Bytes,
    /// Milliseconds since the Unix epoch; 0 lets the node stamp it.
    pub timestamp_ms: i64,
    /// proglog's `Record.type`.
    pub record_type: u32,
}

impl Produce {
    /// A record holding `value`, stamped by the node, of type 0.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Produce {
            value: value.into(),
            ..Produce::default()
        }
    }

    fn into_proto(self) -> Record {
        Record {
            value: self.value,
            timestamp_ms: self.timestamp_ms,
            r#type: self.record_type,
            ..Record::default()
        }
    }
}

impl Client {
    /// Connects to `addr` (`HOST:PORT`, or an `http://` URL) in plaintext.
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        Self::connect_with(addr, &TlsOptions::default()).await
    }

    /// Connects to `addr`, over TLS when any of `tls` is set (`HOST:PORT`, or a URL).
    pub async fn connect_with(addr: &str, tls: &TlsOptions) -> Result<Self, ClientError> {
        let tls_config = if tls.is_set() {
            Some(tls.to_tonic()?)
        } else {
            None
        };
        let scheme = if tls_config.is_some() {
            "https"
        } else {
            "http"
        };
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("{scheme}://{addr}")
        };
        let endpoint = Endpoint::from_shared(url)
            .map_err(|err| ClientError::InvalidAddress {
                addr: addr.to_string(),
                reason: err.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let endpoint = match tls_config {
            Some(config) => endpoint
                .tls_config(config)
                .map_err(|source| ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                })?,
            None => endpoint,
        };
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Client {
            inner: LogClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            logs: LogsClient::new(channel),
            log: String::new(),
        })
    }

    /// The same connection, for the log named `name`; refused here, before any call, when the
    /// name breaks the rules in [`names`]. A log the cluster does not hold is the node's
    /// `NOT_FOUND`, naming it.
    pub fn with_log(mut self, name: &str) -> Result<Self, ClientError> {
        names::check_log_name(name).map_err(ClientError::InvalidLogName)?;
        self.log = if name == DEFAULT_LOG {
            String::new()
        } else {
            name.to_owned()
        };
        Ok(self)
    }

    /// The log this client's calls are about.
    pub fn log(&self) -> &str {
        if self.log.is_empty() {
            DEFAULT_LOG
        } else {
            &self.log
        }
    }

    /// Appends one record; returns its offset.
    pub async fn produce(&mut self, record: Produce) -> Result<u64, ClientError> {
        let response = self
            .inner
            .produce(ProduceRequest {
                record: Some(record.into_proto()),
                log: self.log.clone(),
                ..Default::default()
            })
            .await?;
        Ok(response.into_inner().offset)
    }

    /// Appends records as one batch; returns the first and last offsets.
    pub async fn produce_batch(
        &mut self,
        records: Vec<Produce>,
    ) -> Result<(u64, u64), ClientError> {
        let records = records.into_iter().map(Produce::into_proto).collect();
        let response = self
            .inner
            .produce_batch(ProduceBatchRequest {
                records,
                log: self.log.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok((response.base_offset, response.last_offset))
    }

    /// Pipelined produce: sends every record of `records` without waiting, and yields each
    /// offset in order. The stream of offsets does not borrow the client: other calls can go on
    /// meanwhile.
    pub async fn produce_stream<S>(
        &mut self,
        records: S,
    ) -> Result<impl Stream<Item = Result<u64, ClientError>> + use<S>, ClientError>
    where
        S: Stream<Item = Produce> + Send + 'static,
    {
        let log = self.log.clone();
        let requests = records.map(move |record| ProduceRequest {
            record: Some(record.into_proto()),
            log: log.clone(),
            ..Default::default()
        });
        let responses = self.inner.produce_stream(requests).await?.into_inner();
        Ok(responses.map(|response| response.map(|r| r.offset).map_err(ClientError::from)))
    }

    /// Reads the record at `offset`, or, when a control record sits there, the first record a
    /// producer wrote after it (its `offset` says which). `OUT_OF_RANGE` past the end, naming
    /// the valid range.
    pub async fn consume(&mut self, offset: u64) -> Result<Record, ClientError> {
        let response = self
            .inner
            .consume(ConsumeRequest {
                offset,
                log: self.log.clone(),
                ..ConsumeRequest::default()
            })
            .await?;
        response.into_inner().record.ok_or_else(|| {
            ClientError::Status(Status::internal("the node answered without a record"))
        })
    }

    /// Reads the first record at or after `since_ms` (milliseconds since the Unix epoch);
    /// `None` when there is none yet.
    pub async fn consume_since(&mut self, since_ms: i64) -> Result<Option<Record>, ClientError> {
        let request = ConsumeRequest {
            since_timestamp_ms: since_ms,
            log: self.log.clone(),
            ..ConsumeRequest::default()
        };
        match self.inner.consume(request).await {
            Ok(response) => Ok(response.into_inner().record),
            Err(status) if status.code() == Code::OutOfRange => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    /// Streams records from `offset` (or from the first at or after `since_ms`, when set), then
    /// follows the log as it grows.
    pub async fn consume_stream(
        &mut self,
        offset: u64,
        since_ms: Option<i64>,
    ) -> Result<impl Stream<Item = Result<Record, ClientError>> + use<>, ClientError> {
        let request = ConsumeRequest {
            offset,
            since_timestamp_ms: since_ms.unwrap_or(0),
            log: self.log.clone(),
            ..ConsumeRequest::default()
        };
        self.stream(request).await
    }

    /// The records from `offset` below `until`, as a stream that ends when it has passed them
    /// all (control records at the end included, which it skips).
    pub async fn consume_range(
        &mut self,
        offset: u64,
        until: u64,
    ) -> Result<impl Stream<Item = Result<Record, ClientError>> + use<>, ClientError> {
        let request = ConsumeRequest {
            offset,
            until_offset: until,
            log: self.log.clone(),
            ..ConsumeRequest::default()
        };
        self.stream(request).await
    }

    async fn stream(
        &mut self,
        request: ConsumeRequest,
    ) -> Result<impl Stream<Item = Result<Record, ClientError>> + use<>, ClientError> {
        let responses = self.inner.consume_stream(request).await?.into_inner();
        Ok(responses.filter_map(|response| match response {
            Ok(response) => response.record.map(Ok),
            Err(status) => Some(Err(ClientError::from(status))),
        }))
    }

    /// The first offset served and the offset the next record gets.
    pub async fn offsets(&mut self) -> Result<(u64, u64), ClientError> {
        let response = self
            .inner
            .get_offsets(GetOffsetsRequest {
                log: self.log.clone(),
            })
            .await?
            .into_inner();
        Ok((response.start_offset, response.end_offset))
    }

    /// The cluster's logs this client's identity may read, with each one's leader.
    pub async fn list_logs(&mut self) -> Result<Vec<LogSummary>, ClientError> {
        Ok(self
            .logs
            .list_logs(ListLogsRequest {})
            .await?
            .into_inner()
            .logs)
    }

    /// This client's log as its leader sees it: epoch, offsets, every replica's progress.
    pub async fn describe_log(&mut self) -> Result<LogDescription, ClientError> {
        Ok(self
            .logs
            .describe_log(DescribeLogRequest {
                log: self.log.clone(),
            })
            .await?
            .into_inner())
    }

    /// The cluster's members, with the leader of this client's log marked.
    pub async fn servers(&mut self) -> Result<Vec<Server>, ClientError> {
        Ok(self
            .inner
            .get_servers(GetServersRequest {
                log: self.log.clone(),
            })
            .await?
            .into_inner()
            .servers)
    }
}
