//! The accept loops feeding tonic. TLS: TCP accept, TLS handshake off the accept path (bounded
//! in number and time), then the connection, carrying its [`PeerIdentity`], to the server.
//! Plaintext ([`plain_incoming`]): TCP accept, then the connection.
//!
//! Every connection passes a [`ConnectionGate`] first: each listener has a cap, and all
//! listeners share the file descriptors the process may spend on sockets ([`DescriptorBudget`]:
//! its limit, less a reserve for the log's files, which grows with its segments), so running
//! out of sockets can never fail a write to the log. A connection must send the start of its
//! first request (the 24-byte HTTP/2 preface) within the first-request timeout of being
//! accepted (for TLS, the handshake included), or it is closed. At the cap, the oldest
//! connection that has not sent it yet is closed to make room, as no client that speaks gRPC
//! waits before sending it; with none such, the new connection is refused (closed at once).
//! A handshake that fails or times out is logged and dropped: it never stops the loop.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use super::{PeerIdentity, ReloadableTlsConfig};
use crate::telemetry::{ConnectionCounters, Listener, LoadCounters};

/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Established connections waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// Connections open at once on one listener, at most, by default (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// How long a new connection may take to send the start of its first request, by default
/// (`--first-request-timeout-ms`).
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections the peer listener takes at most (from the reserve, not the clients' share).
pub const PEER_MAX_CONNECTIONS: usize = 256;

/// Descriptors kept for everything but client connections and log segments: the peer listener
/// ([`PEER_MAX_CONNECTIONS`]), the HTTP listener (64 connections), the log's other files
/// (index, checkpoints, the directory), connections to peers, gossip, TLS and ACL files,
/// standard streams.
pub const RESERVED_DESCRIPTORS: usize = 512;

/// The HTTP/2 client preface every gRPC client sends first.
const PREFACE_LEN: usize = 24;

/// Connections a full listener admits beyond its cap while the ones it closed to make room
/// finish closing.
const EVICTION_SLACK: usize = 32;

/// How long a listener over its cap waits for the connections it closed to finish closing
/// before it refuses the next one.
const CLOSING_WAIT: Duration = Duration::from_secs(5);

/// The file descriptors the process may spend on connections, shared by all its listeners.
pub struct DescriptorBudget {
    /// The process's limit on open descriptors (`RLIMIT_NOFILE`).
    limit: usize,
    /// Connections open on all listeners.
    open: AtomicUsize,
    /// How many descriptors the log holds open (one per segment).
    log_files: OnceLock<Box<dyn Fn() -> usize + Send + Sync>>,
}

impl std::fmt::Debug for DescriptorBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DescriptorBudget")
            .field("limit", &self.limit)
            .field("open", &self.open.load(Ordering::Relaxed))
            .field("for_connections", &self.for_connections())
            .finish()
    }
}

impl DescriptorBudget {
    /// A budget under a limit of `limit` descriptors.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(DescriptorBudget {
            limit,
            open: AtomicUsize::new(0),
            log_files: OnceLock::new(),
        })
    }

    /// A budget under the process's own soft limit (see [`raise_descriptor_limit`]).
    pub fn of_process() -> Arc<Self> {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(usize::MAX, |limit| {
                usize::try_from(limit).unwrap_or(usize::MAX)
            });
        Self::new(limit)
    }

    /// Where the budget learns how many files the log holds open (set once, when it is open).
    pub fn watch_log(&self, files: impl Fn() -> usize + Send + Sync + 'static) {
        let _ = self.log_files.set(Box::new(files));
    }

    /// Descriptors connections may use now.
    pub fn for_connections(&self) -> usize {
        let log = self.log_files.get().map_or(0, |files| files());
        self.limit
            .saturating_sub(RESERVED_DESCRIPTORS)
            .saturating_sub(log)
    }
}

/// Raises the soft limit on open descriptors to the hard limit, as Go's runtime does at start:
/// the soft limit (often 1,024) exists for programs that use `select(2)`, which this one does
/// not. Returns the limit in force.
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limits = getrlimit(Resource::Nofile);
    if limits.current != limits.maximum {
        let raised = rustix::process::Rlimit {
            current: limits.maximum,
            maximum: limits.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %err, soft = ?limits.current, hard = ?limits.maximum, "cannot raise the soft limit on open files to the hard limit");
            return limits.current;
        }
        tracing::info!(from = ?limits.current, to = ?limits.maximum, "raised the soft limit on open files to the hard limit");
    }
    limits.maximum
}

/// One listener's bounds on connections (see the module documentation).
pub struct ConnectionGate {
    listener: Listener,
    max: usize,
    first_request_timeout: Duration,
    descriptors: Arc<DescriptorBudget>,
    load: Arc<LoadCounters>,
    open: AtomicUsize,
    /// Connections that have not sent their first request yet, oldest first (with some that
    /// have since, which eviction skips).
    unproven: Mutex<VecDeque<Arc<Pending>>>,
    /// Signalled whenever one of its connections closes.
    closed: Notify,
    /// Connections closed to make room that have not finished closing.
    closing: AtomicUsize,
    /// When a refusal was last logged, in milliseconds since `started`: one line per interval.
    last_refusal_log_ms: AtomicU64,
    started: tokio::time::Instant,
}

impl std::fmt::Debug for ConnectionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGate")
            .field("listener", &self.listener)
            .field("max", &self.max)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

/// A connection's place in the unproven queue.
#[derive(Debug)]
struct Pending {
    evict: CancellationToken,
    /// [`UNPROVEN`], [`EVICTED`] or [`SETTLED`]; changed only by compare-and-swap, so eviction
    /// racing the first request or the close is decided once.
    state: AtomicU8,
}

/// No first request yet: a candidate for eviction.
const UNPROVEN: u8 = 0;
/// Closed to make room, not yet dropped (counted in `closing`).
const EVICTED: u8 = 1;
/// Sent its first request, or dropped.
const SETTLED: u8 = 2;

/// Refusals are logged at most once per this interval (all are counted).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl ConnectionGate {
    /// A gate for `listener` admitting at most `max` connections, within `descriptors`,
    /// closing those that send no request within `first_request_timeout`.
    pub fn new(
        listener: Listener,
        max: usize,
        first_request_timeout: Duration,
        descriptors: Arc<DescriptorBudget>,
        load: Arc<LoadCounters>,
    ) -> Arc<Self> {
        Arc::new(ConnectionGate {
            listener,
            max: max.max(1),
            first_request_timeout,
            descriptors,
            load,
            open: AtomicUsize::new(0),
            unproven: Mutex::new(VecDeque::new()),
            closed: Notify::new(),
            closing: AtomicUsize::new(0),
            last_refusal_log_ms: AtomicU64::new(0),
            started: tokio::time::Instant::now(),
        })
    }

    pub(crate) fn counters(&self) -> &ConnectionCounters {
        self.load.connections(self.listener)
    }

    /// Admits a connection just accepted, or refuses it (`None`: the caller closes it). At the
    /// cap, closes the oldest connection that has sent no request to make room; while the
    /// ones it closed are still closing, waits (briefly) for them rather than overshoot.
    pub(crate) async fn admit(self: &Arc<Self>, remote_addr: SocketAddr) -> Option<Ticket> {
        let deadline = tokio::time::Instant::now() + CLOSING_WAIT;
        loop {
            let closed = self.closed.notified();
            let open = self.open.load(Ordering::Acquire);
            let full = open >= self.max
                || self.descriptors.open.load(Ordering::Acquire)
                    >= self.descriptors.for_connections();
            if !full || (open < self.max + EVICTION_SLACK && self.evict_oldest_unproven()) {
                break;
            }
            if self.closing.load(Ordering::Acquire) == 0
                || tokio::time::timeout_at(deadline, closed).await.is_err()
            {
                self.counters().refused.fetch_add(1, Ordering::Relaxed);
                self.log_refusal(remote_addr);
                return None;
            }
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        self.descriptors.open.fetch_add(1, Ordering::AcqRel);
        self.counters().open.fetch_add(1, Ordering::Relaxed);
        let pending = Arc::new(Pending {
            evict: CancellationToken::new(),
            state: AtomicU8::new(UNPROVEN),
        });
        {
            let mut unproven = self.unproven.lock();
            // Settled entries leave from the front as eviction passes them; this keeps the
            // queue bounded when it does not.
            if unproven.len() >= 2 * self.max {
                unproven.retain(|pending| pending.state.load(Ordering::Acquire) == UNPROVEN);
            }
            unproven.push_back(Arc::clone(&pending));
        }
        Some(Ticket {
            gate: Arc::clone(self),
            pending,
        })
    }

    /// Closes the oldest connection that has not sent a request yet; false if there is none.
    fn evict_oldest_unproven(&self) -> bool {
        let mut unproven = self.unproven.lock();
        while let Some(pending) = unproven.pop_front() {
            // Counted first, so a close racing the eviction never takes it below zero.
            self.closing.fetch_add(1, Ordering::AcqRel);
            let evicted = pending
                .state
                .compare_exchange(UNPROVEN, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if !evicted {
                self.closing.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            pending.evict.cancel();
            self.counters().evicted.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn log_refusal(&self, remote_addr: SocketAddr) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_refusal_log_ms.load(Ordering::Acquire);
        let due = last == 0 || now.saturating_sub(last) >= REFUSAL_LOG_INTERVAL.as_millis() as u64;
        if due
            && self
                .last_refusal_log_ms
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::warn!(
                listener = ?self.listener,
                %remote_addr,
                max_connections = self.max,
                descriptors_for_connections = self.descriptors.for_connections(),
                refused_total = self.counters().refused.load(Ordering::Relaxed),
                "refusing connections: the listener is full and every open connection has sent a request (see proglog_connections_closed_total)"
            );
        }
    }
}

/// A connection's place under its gate, given back when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) gate: Arc<ConnectionGate>,
    pending: Arc<Pending>,
}

impl Ticket {
    /// The connection sent its first request: it is no longer evicted to make room.
    pub(crate) fn proven(&self) {
        // An evicted connection stays evicted: it is closing.
        let _ = self.pending.state.compare_exchange(
            UNPROVEN,
            SETTLED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Resolves when the gate closes the connection to make room.
    pub(crate) fn evicted(&self) -> WaitForCancellationFutureOwned {
        self.pending.evict.clone().cancelled_owned()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let was = self.pending.state.swap(SETTLED, Ordering::AcqRel);
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        self.gate.descriptors.open.fetch_sub(1, Ordering::AcqRel);
        self.gate.counters().open.fetch_sub(1, Ordering::Relaxed);
        if was == EVICTED {
            self.gate.closing.fetch_sub(1, Ordering::AcqRel);
        }
        self.gate.closed.notify_waiters();
    }
}

/// Until a connection has sent its preface: how much of it is still to come, the deadline, and
/// the signal that it was closed to make room.
struct FirstRequest {
    preface_left: usize,
    deadline: Pin<Box<Sleep>>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl std::fmt::Debug for FirstRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstRequest")
            .field("preface_left", &self.preface_left)
            .finish_non_exhaustive()
    }
}

/// One connection from a client (TLS or plain TCP), with who it is. Holds its place under the
/// listener's [`ConnectionGate`] until dropped; reading from it fails once its first request is
/// overdue or it was closed to make room.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    peer: PeerIdentity,
    ticket: Ticket,
    first_request: Option<FirstRequest>,
}

impl<S> Connection<S> {
    fn new(stream: S, peer: PeerIdentity, ticket: Ticket, first_request: FirstRequest) -> Self {
        Connection {
            stream,
            peer,
            ticket,
            first_request: Some(first_request),
        }
    }
}

/// A TLS connection.
pub type TlsConnection = Connection<TlsStream<TcpStream>>;

impl<S> Connected for Connection<S> {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(first) = &mut this.first_request {
            if first.evicted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed to make room: the listener was full and this connection had sent no request",
                )));
            }
            if first.deadline.as_mut().poll(cx).is_ready() {
                this.ticket
                    .gate
                    .counters()
                    .timed_out
                    .fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent no request within the first-request timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let (Some(first), Poll::Ready(Ok(()))) = (&mut this.first_request, &read) {
            first.preface_left = first
                .preface_left
                .saturating_sub(buf.filled().len() - before);
            if first.preface_left == 0 {
                this.first_request = None;
                this.ticket.proven();
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TLS connections on `listener` through `gate` until `shutdown`, each with the TLS
/// config current at its accept. The stream is what `serve_with_incoming_shutdown` takes; it
/// ends at shutdown.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ReloadableTlsConfig>,
    gate: Arc<ConnectionGate>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, tls, gate, ready, shutdown));
    ReceiverStream::new(incoming)
}

/// Accepts plain TCP connections on `listener` through `gate` until `shutdown`, with
/// TCP_NODELAY set.
pub fn plain_incoming(
    listener: TcpListener,
    gate: Arc<ConnectionGate>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<Connection<TcpStream>, io::Error>> {
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        loop {
            let Some((tcp, remote_addr)) = accept(&listener, &shutdown).await else {
                return;
            };
            let Some(ticket) = gate.admit(remote_addr).await else {
                continue;
            };
            let first_request = first_request(&gate, &ticket);
            let connection = Connection::new(
                tcp,
                PeerIdentity::new(remote_addr, None),
                ticket,
                first_request,
            );
            if ready.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(incoming)
}

fn first_request(gate: &ConnectionGate, ticket: &Ticket) -> FirstRequest {
    FirstRequest {
        preface_left: PREFACE_LEN,
        deadline: Box::pin(tokio::time::sleep(gate.first_request_timeout)),
        evicted: Box::pin(ticket.evicted()),
    }
}

/// The next TCP connection with TCP_NODELAY set (without it, Nagle's algorithm and delayed ACKs
/// hold small responses for up to 40 ms), retrying failed accepts; `None` at shutdown.
async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, remote_addr)) => {
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %err, %remote_addr, "cannot set TCP_NODELAY");
                }
                return Some((tcp, remote_addr));
            }
            Err(err) => {
                tracing::warn!(error = %err, "accept failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ReloadableTlsConfig>,
    gate: Arc<ConnectionGate>,
    ready: mpsc::Sender<Result<TlsConnection, io::Error>>,
    shutdown: CancellationToken,
) {
    let settings = tls.settings().clone();
    let handshakes = Arc::new(Semaphore::new(settings.max_handshakes));
    loop {
        // A handshake slot first, so that while handshakes are at their bound, connections
        // wait unaccepted.
        let handshake = tokio::select! {
            _ = shutdown.cancelled() => return,
            handshake = Arc::clone(&handshakes).acquire_owned() => match handshake {
                Ok(handshake) => handshake,
                Err(_) => return,
            },
        };
        let Some((tcp, remote_addr)) = accept(&listener, &shutdown).await else {
            return;
        };
        let Some(ticket) = gate.admit(remote_addr).await else {
            continue;
        };
        let first_request = first_request(&gate, &ticket);
        let evicted = ticket.evicted();
        let acceptor = TlsAcceptor::from(tls.current());
        let ready = ready.clone();
        let timeout = settings.handshake_timeout;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake_result = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = evicted => return,
                result = tokio::time::timeout(timeout, acceptor.accept(tcp)) => result,
            };
            drop(handshake);
            let stream = match handshake_result {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::info!(%remote_addr, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    ticket
                        .gate
                        .counters()
                        .timed_out
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote_addr, ?timeout, "TLS handshake timed out");
                    return;
                }
            };
            let peer = PeerIdentity::new(remote_addr, stream.get_ref().1.peer_certificates());
            let connection = Connection::new(stream, peer, ticket, first_request);
            // The server stopped taking connections: it is shutting down.
            let _ = ready.send(Ok(connection)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);
    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    struct Lab {
        addr: SocketAddr,
        incoming: ReceiverStream<Result<Connection<TcpStream>, io::Error>>,
        load: Arc<LoadCounters>,
        shutdown: CancellationToken,
    }

    async fn lab(max: usize, first_request_timeout: Duration) -> Lab {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let load = Arc::new(LoadCounters::default());
        let gate = ConnectionGate::new(
            Listener::Rpc,
            max,
            first_request_timeout,
            DescriptorBudget::new(usize::MAX),
            Arc::clone(&load),
        );
        let shutdown = CancellationToken::new();
        let incoming = plain_incoming(listener, gate, shutdown.clone());
        Lab {
            addr,
            incoming,
            load,
            shutdown,
        }
    }

    impl Lab {
        /// Connects, optionally sends the preface, and returns both ends.
        async fn connect(&mut self, preface: bool) -> (TcpStream, Connection<TcpStream>) {
            let mut client = TcpStream::connect(self.addr).await.unwrap();
            if preface {
                client.write_all(PREFACE).await.unwrap();
            }
            let mut server = tokio::time::timeout(DEADLINE, self.incoming.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if preface {
                let mut got = [0u8; PREFACE_LEN];
                server.read_exact(&mut got).await.unwrap();
            }
            (client, server)
        }

        fn counter(&self, pick: fn(&ConnectionCounters) -> &AtomicU64) -> u64 {
            pick(self.load.connections(Listener::Rpc)).load(Ordering::Relaxed)
        }
    }

    /// Reads from the client's end until the server closes it (EOF or reset).
    async fn closed_by_server(client: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(DEADLINE, client.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_request_in_time_is_closed() {
        let mut lab = lab(10, Duration::from_millis(200)).await;
        let (_silent_client, mut silent) = lab.connect(false).await;
        let (_client, mut talking) = lab.connect(true).await;
        let mut byte = [0u8; 1];
        let error = tokio::time::timeout(DEADLINE, silent.read(&mut byte))
            .await
            .unwrap()
            .expect_err("the silent connection's read fails once its first request is overdue");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(lab.counter(|c| &c.timed_out), 1);
        // One that sent its preface is never timed out: its read waits for data.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), talking.read(&mut byte))
                .await
                .is_err()
        );
        assert_eq!(lab.counter(|c| &c.open), 2);
        drop(silent);
        assert_eq!(lab.counter(|c| &c.open), 1);
        lab.shutdown.cancel();
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_silent_connection_makes_room() {
        let mut lab = lab(2, Duration::from_secs(600)).await;
        let (_talking_client, _talking) = lab.connect(true).await;
        let (_silent_client, mut silent) = lab.connect(false).await;
        // The listener is full: the newcomer is admitted, and the silent one is closed.
        let (_new_client, _new) = lab.connect(true).await;
        let mut byte = [0u8; 1];
        let error = tokio::time::timeout(DEADLINE, silent.read(&mut byte))
            .await
            .unwrap()
            .expect_err("the silent connection was evicted");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(lab.counter(|c| &c.evicted), 1);
        assert_eq!(lab.counter(|c| &c.refused), 0);
        lab.shutdown.cancel();
    }

    #[tokio::test]
    async fn at_the_cap_with_every_connection_talking_a_new_one_is_refused() {
        let mut lab = lab(2, Duration::from_secs(600)).await;
        let (_first_client, first) = lab.connect(true).await;
        let (_second_client, _second) = lab.connect(true).await;
        let mut refused = TcpStream::connect(lab.addr).await.unwrap();
        assert!(
            closed_by_server(&mut refused).await,
            "a third connection is refused"
        );
        assert_eq!(lab.counter(|c| &c.refused), 1);
        assert_eq!(lab.counter(|c| &c.open), 2);
        // A connection that closes frees its place.
        drop(first);
        let (_third_client, _third) = lab.connect(true).await;
        assert_eq!(lab.counter(|c| &c.open), 2);
        lab.shutdown.cancel();
        assert!(
            tokio::time::timeout(DEADLINE, lab.incoming.next())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_log_s_files_come_out_of_the_connections_share() {
        let budget = DescriptorBudget::new(1024);
        assert_eq!(budget.for_connections(), 1024 - RESERVED_DESCRIPTORS);
        budget.watch_log(|| 300);
        assert_eq!(budget.for_connections(), 1024 - RESERVED_DESCRIPTORS - 300);
        budget.watch_log(|| 5000);
        assert_eq!(
            budget.for_connections(),
            1024 - RESERVED_DESCRIPTORS - 300,
            "set once"
        );
        assert_eq!(DescriptorBudget::new(100).for_connections(), 0);
    }
}
