//! [`HttpServer`]: `/metrics`, `/healthz` and `/readyz` over HTTP/1.
//!
//! Three fixed routes do not need a web framework: this is hyper with a path match. The server
//! is bounded so a misbehaving scraper cannot exhaust the node: at most
//! [`MAX_HTTP_CONNECTIONS`] connections at once (accepting waits for one to close), request
//! headers must arrive within [`HEADER_READ_TIMEOUT`] (an idle keep-alive connection is closed
//! after it too), and on stop the server answers the requests in progress, closes every
//! connection and returns within [`DRAIN_TIMEOUT`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Health, Metrics};

/// Connections served at once; more wait in the listen backlog.
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

    /// Serves until `stop` is cancelled, then drains (see the module documentation).
    pub async fn serve(self, stop: CancellationToken) {
        let permits = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
        let mut connections = JoinSet::new();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        loop {
            while connections.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => permit,
            };
            // The semaphore is never closed.
            let Ok(permit) = permit else { break };
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(err) => {
                        tracing::warn!(error = %err, "HTTP accept failed");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        }
                    }
                },
            };
            let routes = Arc::clone(&self.routes);
            let connection = builder.serve_connection(
                TokioIo::new(stream),
                service_fn(move |request| {
                    let response = routes.respond(&request);
                    async move { Ok::<_, Infallible>(response) }
                }),
            );
            let stop = stop.clone();
            connections.spawn(async move {
                let _permit = permit;
                tokio::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    _ = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(err) = result {
                    tracing::debug!(error = %err, "HTTP connection ended with an error");
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
