//! `EchoLog`: the `log.v1.Log` service shape with no log behind it, so that a load generator
//! run against it measures only gRPC (tonic, HTTP/2, prost, loopback TCP) on this machine.
//!
//! It remembers only how many records were "produced" and the size of the last one, so
//! `GetOffsets` and `ConsumeStream` behave like a log of that many records (every value the
//! same, built once per stream) and a consume benchmark reads the same amount of data from it
//! as from proglog. Nothing is stored, copied per record, or synced.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use proglog_proto::log::v1::log_server::{Log, LogServer};
use proglog_proto::log::v1::{
    ConsumeRequest, ConsumeResponse, GetOffsetsRequest, GetOffsetsResponse, GetServersRequest,
    GetServersResponse, ProduceBatchRequest, ProduceBatchResponse, ProduceRequest, ProduceResponse,
    Record, Server,
};

/// The echo service; cheap to clone (the counters are shared).
#[derive(Debug, Clone, Default)]
pub struct EchoLog {
    state: Arc<EchoState>,
}

#[derive(Debug, Default)]
struct EchoState {
    /// Records "produced" so far: the end offset a log would have.
    produced: AtomicU64,
    /// Value size of the last record produced: what `ConsumeStream` sends back.
    value_len: AtomicUsize,
}

impl EchoState {
    /// Counts `count` new records whose last value is `value_len` bytes; returns the first
    /// offset they would have.
    fn append(&self, count: u64, value_len: usize) -> u64 {
        self.value_len.store(value_len, Ordering::Relaxed);
        self.produced.fetch_add(count, Ordering::Relaxed)
    }

    fn end(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    fn record(&self, value: Bytes, offset: u64) -> Record {
        Record {
            value,
            offset,
            ..Record::default()
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Log for EchoLog {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let len = request
            .get_ref()
            .record
            .as_ref()
            .map_or(0, |r| r.value.len());
        let offset = self.state.append(1, len);
        Ok(Response::new(ProduceResponse { offset }))
    }

    async fn consume(
        &self,
        request: Request<ConsumeRequest>,
    ) -> Result<Response<ConsumeResponse>, Status> {
        let offset = request.get_ref().offset;
        let value = Bytes::from(vec![0xA5; self.state.value_len.load(Ordering::Relaxed)]);
        Ok(Response::new(ConsumeResponse {
            record: Some(self.state.record(value, offset)),
        }))
    }

    type ConsumeStreamStream = BoxStream<ConsumeResponse>;

    /// Streams records `offset..end` (end as of the call) and ends: no channel, no task, the
    /// cheapest server stream tonic can send.
    async fn consume_stream(
        &self,
        request: Request<ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
        let start = request.get_ref().offset;
        let value = Bytes::from(vec![0xA5; self.state.value_len.load(Ordering::Relaxed)]);
        let state = Arc::clone(&self.state);
        let records = futures_util::stream::iter(start..self.state.end()).map(move |offset| {
            Ok(ConsumeResponse {
                record: Some(state.record(value.clone(), offset)),
            })
        });
        Ok(Response::new(Box::pin(records)))
    }

    type ProduceStreamStream = BoxStream<ProduceResponse>;

    /// Answers each request as it is decoded: one response per request, in order.
    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let state = Arc::clone(&self.state);
        let responses = request.into_inner().map(move |request| {
            let len = request?.record.map_or(0, |r| r.value.len());
            Ok(ProduceResponse {
                offset: state.append(1, len),
            })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn get_servers(
        &self,
        _request: Request<GetServersRequest>,
    ) -> Result<Response<GetServersResponse>, Status> {
        Ok(Response::new(GetServersResponse {
            servers: vec![Server {
                id: "echo".into(),
                rpc_addr: String::new(),
                is_leader: true,
            }],
        }))
    }

    async fn produce_batch(
        &self,
        request: Request<ProduceBatchRequest>,
    ) -> Result<Response<ProduceBatchResponse>, Status> {
        let records = &request.get_ref().records;
        let Some(last) = records.last() else {
            return Err(Status::invalid_argument("ProduceBatchRequest: no records"));
        };
        let count = records.len() as u64;
        let base_offset = self.state.append(count, last.value.len());
        Ok(Response::new(ProduceBatchResponse {
            base_offset,
            last_offset: base_offset + count - 1,
        }))
    }

    async fn get_offsets(
        &self,
        _request: Request<GetOffsetsRequest>,
    ) -> Result<Response<GetOffsetsResponse>, Status> {
        Ok(Response::new(GetOffsetsResponse {
            start_offset: 0,
            end_offset: self.state.end(),
        }))
    }
}

/// Serves [`EchoLog`] on `listener` until `shutdown` resolves. Limits match what the proglog
/// client accepts (64 MiB messages), so big batches behave the same against both.
///
/// `tcp_nodelay` is set on every accepted connection when asked (the floor wants it): tonic's
/// own `tcp_nodelay` setting only applies to listeners it binds itself, not to a stream of
/// accepted sockets handed to `serve_with_incoming*`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tcp_nodelay: bool,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let service = LogServer::new(EchoLog::default())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let incoming = TcpListenerStream::new(listener).map(move |accepted| {
        if let Ok(stream) = &accepted
            && let Err(err) = stream.set_nodelay(tcp_nodelay)
        {
            eprintln!("echo server: cannot set TCP_NODELAY: {err}");
        }
        accepted
    });
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Starts an echo server on `127.0.0.1:0` in a runtime of its own (own threads, so that it
/// does not share the load generator's scheduler any more than a separate process would) and
/// returns its address. The server lives until the process exits.
pub fn spawn_in_background() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("echo-server")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("echo-server".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        if let Err(err) = serve(listener, true, std::future::pending()).await {
                            eprintln!("echo server stopped: {err}");
                        }
                    }
                    Err(err) => eprintln!("echo server cannot listen: {err}"),
                }
            });
        })?;
    Ok(addr)
}
