//! The accept loops feeding tonic. TLS: TCP accept, TLS handshake off the accept path (bounded
//! in number and time), then the connection, carrying its [`PeerIdentity`], to the server.
//! Plaintext ([`plain_incoming`]): TCP accept, bounded in number the same way.
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

/// Connections open at once, at most, by default (TLS and plaintext alike); more wait in the
/// kernel's backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// One connection from a client (TLS or plain TCP), with who it is. Holds its slot of the
/// connection limit until dropped.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    peer: PeerIdentity,
    _slot: OwnedSemaphorePermit,
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
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
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

/// Accepts plain TCP connections on `listener` until `shutdown`, at most `max_connections` open
/// at once (more wait in the backlog), with TCP_NODELAY set.
pub fn plain_incoming(
    listener: TcpListener,
    max_connections: usize,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<Connection<TcpStream>, io::Error>> {
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        let connections = Arc::new(Semaphore::new(max_connections));
        loop {
            let slot = tokio::select! {
                _ = shutdown.cancelled() => return,
                slot = Arc::clone(&connections).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            let Some((tcp, remote_addr)) = accept(&listener, &shutdown).await else {
                return;
            };
            let connection = Connection {
                stream: tcp,
                peer: PeerIdentity::new(remote_addr, None),
                _slot: slot,
            };
            if ready.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(incoming)
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
        let Some((tcp, remote_addr)) = accept(&listener, &shutdown).await else {
            return;
        };
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
            let connection = Connection {
                stream,
                peer,
                _slot: slot,
            };
            // The server stopped taking connections: it is shutting down.
            let _ = ready.send(Ok(connection)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{FutureExt, StreamExt};

    use super::*;

    #[tokio::test]
    async fn plain_connections_beyond_the_bound_wait_for_a_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let mut incoming = plain_incoming(listener, 1, shutdown.clone());
        let deadline = Duration::from_secs(10);

        let _first_client = TcpStream::connect(addr).await.unwrap();
        let first = tokio::time::timeout(deadline, incoming.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let _second_client = TcpStream::connect(addr).await.unwrap();
        // The accept loop waits for a slot, not for the kernel: nothing comes while the only
        // slot is held, however often the loop gets to run.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            incoming.next().now_or_never().is_none(),
            "a connection beyond the bound was taken"
        );
        drop(first);
        let second = tokio::time::timeout(deadline, incoming.next())
            .await
            .unwrap()
            .unwrap();
        assert!(second.is_ok());
        shutdown.cancel();
        assert!(
            tokio::time::timeout(deadline, incoming.next())
                .await
                .unwrap()
                .is_none()
        );
    }
}
