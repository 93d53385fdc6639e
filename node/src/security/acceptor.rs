//! The TLS accept loop feeding tonic: TCP accept, TLS handshake off the accept path (bounded
//! in number and time), then the connection, carrying its [`PeerIdentity`], to the server.
//!
//! A handshake that fails or times out is logged and dropped: it never stops the loop. The
//! number of handshakes in progress and of open connections is bounded by semaphores; at the
//! bound, new TCP connections wait in the kernel's backlog rather than consume memory.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::{PeerIdentity, ReloadableTlsConfig};

/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Established connections waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// One TLS connection from a client, with who it is. Holds its slot of the connection limit
/// until dropped.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: PeerIdentity,
    _slot: OwnedSemaphorePermit,
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
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

/// Accepts TLS connections on `listener` until `shutdown`, each with the TLS config current at
/// its accept. The stream is what `serve_with_incoming_shutdown` takes; it ends at shutdown.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ReloadableTlsConfig>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, tls, ready, shutdown));
    ReceiverStream::new(incoming)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ReloadableTlsConfig>,
    ready: mpsc::Sender<Result<TlsConnection, io::Error>>,
    shutdown: CancellationToken,
) {
    let settings = tls.settings().clone();
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let handshakes = Arc::new(Semaphore::new(settings.max_handshakes));
    loop {
        // Slots first, so that at the bound connections wait unaccepted.
        let slots = tokio::select! {
            _ = shutdown.cancelled() => return,
            slots = async {
                let slot = Arc::clone(&connections).acquire_owned().await?;
                let handshake = Arc::clone(&handshakes).acquire_owned().await?;
                Ok::<_, tokio::sync::AcquireError>((slot, handshake))
            } => slots,
        };
        let Ok((slot, handshake)) = slots else { return };
        let (tcp, remote_addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, %remote_addr, "cannot set TCP_NODELAY");
        }
        let acceptor = TlsAcceptor::from(tls.current());
        let ready = ready.clone();
        let timeout = settings.handshake_timeout;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake_result = tokio::select! {
                _ = shutdown.cancelled() => return,
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
                    tracing::info!(%remote_addr, ?timeout, "TLS handshake timed out");
                    return;
                }
            };
            let peer = PeerIdentity::new(remote_addr, stream.get_ref().1.peer_certificates());
            let connection = TlsConnection {
                stream,
                peer,
                _slot: slot,
            };
            // The server stopped taking connections: it is shutting down.
            let _ = ready.send(Ok(connection)).await;
        });
    }
}
