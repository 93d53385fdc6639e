//! [`HttpServer`]: `/metrics`, `/healthz` and `/readyz` over HTTP/1.
//!
//! Three fixed routes do not need a web framework: this is hyper with a path match. The server
//! is bounded so a misbehaving scraper cannot exhaust the node, and so that the kubelet's
//! probes get through whatever else is connected: at most [`MAX_HTTP_CONNECTIONS`] connections
//! at once; at the cap, the oldest connection that has not sent a whole request yet is closed
//! to make room (with none such, the new one is refused); request headers must arrive within
//! [`HEADER_READ_TIMEOUT`] (an idle keep-alive connection is closed after it too); and on stop
//! the server answers the requests in progress, closes every connection and returns within
//! [`DRAIN_TIMEOUT`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Health, Listener, Metrics};
use crate::security::{ConnectionGate, DescriptorBudget};

/// Connections served at once (see the module documentation for what happens at the cap).
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stop waits for connections to close before dropping them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The content type of the OpenMetrics text format, which Prometheus scrapes natively.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} (--http-addr / PROGLOG_HTTP_ADDR)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The HTTP server of metrics and health, bound and not yet serving.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    routes: Arc<Routes>,
}

#[derive(Debug)]
struct Routes {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port: see [`HttpServer::local_addr`]).
    pub async fn bind(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, HttpError> {
        let bind_error = |source| HttpError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(HttpServer {
            listener,
            local_addr,
            routes: Arc::new(Routes { metrics, health }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves as [`HttpServer::serve`] does, on a thread of its own with a single-threaded
    /// runtime, so that probes are answered however busy the node's runtime is. The receiver
    /// resolves when serving has stopped (an error if the thread failed).
    pub fn serve_on_own_thread(
        self,
        stop: CancellationToken,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
        let HttpServer {
            listener,
            local_addr,
            routes,
        } = self;
        let listener = listener.into_std()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("proglog-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let server = HttpServer {
                                listener,
                                local_addr,
                                routes,
                            };
                            server.serve(stop).await;
                            let _ = done.send(());
                        }
                        Err(err) => tracing::error!(error = %err, "cannot serve HTTP"),
                    }
                });
            })?;
        Ok(finished)
    }

    /// Serves until `stop` is cancelled, then drains (see the module documentation).
    pub async fn serve(self, stop: CancellationToken) {
        // The listener's descriptors are part of the node's reserve, so its gate has a budget
        // of its own.
        let gate = ConnectionGate::new(
            Listener::Http,
            MAX_HTTP_CONNECTIONS,
            HEADER_READ_TIMEOUT,
            DescriptorBudget::new(usize::MAX),
            Arc::clone(self.routes.metrics.load()),
        );
        let mut connections = JoinSet::new();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        loop {
            while connections.try_join_next().is_some() {}
            let (stream, remote_addr) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "HTTP accept failed");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        }
                    }
                },
            };
            // At the cap, the oldest connection still short of a whole request makes room, so
            // a probe gets through however many half-open connections there are.
            let Some(ticket) = gate.admit(remote_addr).await else {
                continue;
            };
            let ticket = Arc::new(ticket);
            let evicted = ticket.evicted();
            let routes = Arc::clone(&self.routes);
            let connection = builder.serve_connection(
                TokioIo::new(stream),
                service_fn({
                    let ticket = Arc::clone(&ticket);
                    move |request| {
                        ticket.proven();
                        let response = routes.respond(&request);
                        async move { Ok::<_, Infallible>(response) }
                    }
                }),
            );
            let stop = stop.clone();
            connections.spawn(async move {
                tokio::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    _ = evicted => return,
                    _ = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                match result {
                    Err(err) if err.is_timeout() => {
                        ticket
                            .gate
                            .counters()
                            .timed_out
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "HTTP connection ended with an error")
                    }
                    Ok(()) => {}
                }
            });
        }
        drop(self.listener);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = connections.len(),
                "HTTP connections still open after the drain timeout; closing them"
            );
            connections.abort_all();
        }
    }
}

impl Routes {
    fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match request.uri().path() {
            "/metrics" => match self.metrics.encode() {
                Ok(body) => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
                    );
                    response
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot encode the metrics");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
                }
            },
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.health.is_ready() && self.health.disk_full() => text(
                StatusCode::OK,
                "ready, read-only: the disk is full; writes are refused until space is freed\n",
            ),
            "/readyz" if self.health.is_ready() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(routes: &Routes, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(()).unwrap();
        let response = routes.respond(&request);
        let status = response.status();
        let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
            response.into_body(),
        ))
        .unwrap()
        .unwrap()
        .to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn routes_answer_health_readiness_and_metrics() {
        let routes = Routes {
            metrics: Metrics::new(),
            health: Arc::new(Health::new()),
        };
        assert_eq!(get(&routes, "/healthz").0, StatusCode::OK);
        assert_eq!(get(&routes, "/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        routes.health.set_ready();
        assert_eq!(get(&routes, "/readyz").0, StatusCode::OK);
        routes.health.set_not_ready();
        assert_eq!(get(&routes, "/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        let (status, body) = get(&routes, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(get(&routes, "/nope").0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn serve_stops_on_cancel_even_with_an_idle_connection_open() {
        let server = HttpServer::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Metrics::new(),
            Arc::new(Health::new()),
        )
        .await
        .unwrap();
        let addr = server.local_addr();
        let stop = CancellationToken::new();
        let serving = tokio::spawn(server.serve(stop.clone()));
        // An idle connection (no request sent) must not hold the stop up.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        stop.cancel();
        tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(5), serving)
            .await
            .expect("the server stops")
            .unwrap();
    }
}
