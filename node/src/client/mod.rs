//! The Rust client of proglog's `log.v1.Log` API, shared by the CLI, the benches and the tests.
//!
//! Thin on purpose: typed calls over the generated tonic client with errors that say what to
//! do. Leader-aware produce and load-balanced consume arrive with replication.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::{
    ConsumeRequest, GetOffsetsRequest, GetServersRequest, ProduceBatchRequest, ProduceRequest,
    Record, Server,
};

/// What went wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a valid endpoint.
    #[error("invalid address `{addr}`: {reason} (expected HOST:PORT, for example 127.0.0.1:8400)")]
    InvalidAddress {
        /// The address given.
        addr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot connect to {addr} (is a proglog node listening there?)")]
    Connect {
        /// The address tried.
        addr: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The node answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(Status),
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
        Code::DataLoss => "data damaged",
        _ => "request failed",
    }
}

/// A connection to one node.
#[derive(Debug, Clone)]
pub struct Client {
    inner: LogClient<Channel>,
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
    /// Connects to `addr` (`HOST:PORT`, or an `http://` URL).
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(url)
            .map_err(|err| ClientError::InvalidAddress {
                addr: addr.to_string(),
                reason: err.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Client {
            inner: LogClient::new(channel).max_decoding_message_size(64 << 20),
        })
    }

    /// Appends one record; returns its offset.
    pub async fn produce(&mut self, record: Produce) -> Result<u64, ClientError> {
        let response = self
            .inner
            .produce(ProduceRequest {
                record: Some(record.into_proto()),
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
            .produce_batch(ProduceBatchRequest { records })
            .await?
            .into_inner();
        Ok((response.base_offset, response.last_offset))
    }

    /// Pipelined produce: sends every record of `records` without waiting, and yields each
    /// offset in order.
    pub async fn produce_stream(
        &mut self,
        records: impl Stream<Item = Produce> + Send + 'static,
    ) -> Result<impl Stream<Item = Result<u64, ClientError>>, ClientError> {
        let requests = records.map(|record| ProduceRequest {
            record: Some(record.into_proto()),
        });
        let responses = self.inner.produce_stream(requests).await?.into_inner();
        Ok(responses.map(|response| response.map(|r| r.offset).map_err(ClientError::from)))
    }

    /// Reads the record at `offset`.
    pub async fn consume(&mut self, offset: u64) -> Result<Record, ClientError> {
        let response = self
            .inner
            .consume(ConsumeRequest {
                offset,
                ..ConsumeRequest::default()
            })
            .await?;
        response.into_inner().record.ok_or_else(|| {
            ClientError::Status(Status::internal("the node answered without a record"))
        })
    }

    /// Streams records from `offset` (or from the first at or after `since_ms`, when set), then
    /// follows the log as it grows.
    pub async fn consume_stream(
        &mut self,
        offset: u64,
        since_ms: Option<i64>,
    ) -> Result<impl Stream<Item = Result<Record, ClientError>>, ClientError> {
        let request = ConsumeRequest {
            offset,
            since_timestamp_ms: since_ms.unwrap_or(0),
        };
        let responses = self.inner.consume_stream(request).await?.into_inner();
        Ok(responses.filter_map(|response| {
            futures_util::future::ready(match response {
                Ok(response) => response.record.map(Ok),
                Err(status) => Some(Err(ClientError::from(status))),
            })
        }))
    }

    /// The first offset served and the offset the next record gets.
    pub async fn offsets(&mut self) -> Result<(u64, u64), ClientError> {
        let response = self
            .inner
            .get_offsets(GetOffsetsRequest {})
            .await?
            .into_inner();
        Ok((response.start_offset, response.end_offset))
    }

    /// The cluster's members.
    pub async fn servers(&mut self) -> Result<Vec<Server>, ClientError> {
        Ok(self
            .inner
            .get_servers(GetServersRequest {})
            .await?
            .into_inner()
            .servers)
    }
}
