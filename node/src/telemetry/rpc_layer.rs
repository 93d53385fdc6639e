//! [`RpcMetricsLayer`]: counts, times and logs every RPC, around the whole tonic server, and
//! (when trace export is on) gives each its OpenTelemetry server span.
//!
//! One place for all of it, keyed by the request path (`/log.v1.Log/Produce` is method
//! `Produce`). The status code comes from the `grpc-status` header of a trailers-only response
//! (every error a handler returns) or from the trailers at the end of the body (successes and
//! errors a stream ends with). What "duration" means for streams, and what a stream's span
//! covers, is in the module documentation of [`super`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::RpcMetrics;
use super::metrics::{MethodCodeLabels, MethodLabels};
use super::rpc_span::RpcSpan;

/// Methods counted under their own name, by service. Any other path is `unknown`, so clients
/// cannot grow the label set. Tests check the `log.v1` lists against their `.proto` files.
pub(crate) const KNOWN_METHODS: &[(&str, &[&str])] = &[
    (
        "log.v1.Log",
        &[
            "Produce",
            "Consume",
            "ConsumeStream",
            "ProduceStream",
            "GetServers",
            "ProduceBatch",
            "GetOffsets",
        ],
    ),
    ("log.v1.Logs", &["ListLogs", "DescribeLog"]),
    (
        "log.v1.Peer",
        &[
            "Vote",
            "BeginQuorumEpoch",
            "EndQuorumEpoch",
            "Fetch",
            "ReadIndex",
        ],
    ),
    (
        "log.v1.Admin",
        &[
            "ClusterStatus",
            "TransferLeadership",
            "AddVoter",
            "RemoveVoter",
        ],
    ),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
    (
        "grpc.reflection.v1.ServerReflection",
        &["ServerReflectionInfo"],
    ),
];

/// Methods that stream responses: their duration, and their span, end when the stream is set
/// up rather than when it ends (see [`super`]). A test checks the `log.v1.Log` ones against
/// `log.proto`.
const STREAMING_METHODS: &[&str] = &[
    "ConsumeStream",
    "ProduceStream",
    "Watch",
    "ServerReflectionInfo",
];

/// Known services whose calls are counted but get no span: followers fetch continuously, and
/// the operator asks for the cluster's status on every reconcile.
const UNTRACED_SERVICES: &[&str] = &["log.v1.Peer", "log.v1.Admin"];

/// The known service and method of a request path (`None` for any other path).
pub(crate) fn known_method(path: &str) -> Option<(&'static str, &'static str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    KNOWN_METHODS
        .iter()
        .find(|(known, _)| *known == service)
        .and_then(|(known_service, methods)| {
            methods
                .iter()
                .find(|known| **known == method)
                .map(|known_method| (*known_service, *known_method))
        })
}

/// The `method` label of a known method (or `unknown`).
fn method_label(known: Option<(&'static str, &'static str)>) -> &'static str {
    known.map_or("unknown", |(_, method)| method)
}

/// gRPC status code names by code, as the `code` label spells them.
const CODE_NAMES: [&str; 17] = [
    "Ok",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// `Cancelled`: the call ended before its status was sent.
const CODE_CANCELLED: u8 = 1;

/// `Unknown`: no (valid) status at all.
const CODE_UNKNOWN: u8 = 2;

/// The gRPC status code of a `grpc-status` value (`Unknown` for anything unexpected).
pub(crate) fn code_of(grpc_status: &[u8]) -> u8 {
    std::str::from_utf8(grpc_status)
        .ok()
        .and_then(|text| text.parse::<u8>().ok())
        .filter(|code| usize::from(*code) < CODE_NAMES.len())
        .unwrap_or(CODE_UNKNOWN)
}

/// The name of a gRPC status code.
pub(crate) fn code_name(code: u8) -> &'static str {
    CODE_NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("Unknown")
}

/// Longest status message logged, in bytes (messages are ours, but stay bounded).
const MAX_LOGGED_MESSAGE: usize = 512;

/// Wraps a tonic server (`Server::builder().layer(RpcMetricsLayer::new(..))`). Add it before
/// other layers so it is the outermost and sees what they reject too.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: RpcMetrics,
    trace_spans: bool,
}

impl RpcMetricsLayer {
    /// A layer recording into `metrics`, making no spans.
    pub fn new(metrics: RpcMetrics) -> Self {
        RpcMetricsLayer {
            metrics,
            trace_spans: false,
        }
    }

    /// Also opens an OpenTelemetry server span per RPC. Only worth it when trace export is on
    /// (`main` installs the layer that exports them); off, RPCs pay nothing for spans.
    pub fn with_trace_spans(mut self, trace_spans: bool) -> Self {
        self.trace_spans = trace_spans;
        self
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
            trace_spans: self.trace_spans,
        }
    }
}

/// The service [`RpcMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: RpcMetrics,
    trace_spans: bool,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcMetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let known = known_method(request.uri().path());
        // Only calls of known services get a span: the replication and admin services (and
        // any path a client makes up) are left out, so followers' continuous fetches do not
        // flood the collector.
        let span = known
            .filter(|(service, _)| self.trace_spans && !UNTRACED_SERVICES.contains(service))
            .map(|(service, method)| RpcSpan::start(request.headers(), service, method));
        let call = Call::start(self.metrics.clone(), known, span);
        ResponseFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

/// One RPC from arrival to its status: keeps `in_flight` up while it lives and records the
/// count (and a warning for an error) exactly once; holds the RPC's span, if any, until the span
/// ends.
#[derive(Debug)]
struct Call {
    metrics: RpcMetrics,
    method: &'static str,
    streaming: bool,
    started: Instant,
    finished: bool,
    span: Option<RpcSpan>,
}

impl Call {
    fn start(
        metrics: RpcMetrics,
        known: Option<(&'static str, &'static str)>,
        span: Option<RpcSpan>,
    ) -> Self {
        let method = method_label(known);
        metrics
            .in_flight
            .get_or_create(&MethodLabels { method })
            .inc();
        Call {
            metrics,
            method,
            streaming: STREAMING_METHODS.contains(&method),
            started: Instant::now(),
            finished: false,
            span,
        }
    }

    /// The response headers are out without a status, so a body follows. A stream's span ends
    /// here, with its duration: a stream may follow the log for hours, and a span is exported
    /// only once it ends.
    fn body_follows(&mut self) {
        if self.streaming {
            self.span = None;
        }
    }

    /// The response headers are out.
    fn headers_sent(&self) {
        self.metrics
            .duration
            .get_or_create(&MethodLabels {
                method: self.method,
            })
            .observe(self.started.elapsed().as_secs_f64());
    }

    /// Records the outcome from `grpc-status` (and `grpc-message`) in `headers`; false when the
    /// headers carry no status.
    fn finish_from(&mut self, headers: &HeaderMap) -> bool {
        let Some(status) = headers.get("grpc-status") else {
            return false;
        };
        let message = headers
            .get("grpc-message")
            .map(|value| percent_decode(value.as_bytes(), MAX_LOGGED_MESSAGE));
        self.finish(code_of(status.as_bytes()), message.as_deref());
        true
    }

    fn finish(&mut self, code_number: u8, message: Option<&str>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let code = code_name(code_number);
        // Ends the span (if the call still has one) with the status.
        if let Some(span) = self.span.take() {
            span.record_status(code_number, code, message);
        }
        self.metrics
            .requests
            .get_or_create(&MethodCodeLabels {
                method: self.method,
                code,
            })
            .inc();
        if code != "Ok"
            && let Some(left_out) = self.metrics.failure_log.admit(std::time::Instant::now())
        {
            if left_out > 0 {
                tracing::warn!(
                    left_out,
                    "failed RPCs left out of the log by its rate limit (all are counted in proglog_rpc_requests_total)"
                );
            }
            tracing::warn!(
                method = self.method,
                code,
                grpc_message = message.unwrap_or(""),
                "rpc failed"
            );
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before a status: the client went away (or the connection broke).
        self.finish(
            CODE_CANCELLED,
            Some("the call ended before its status was sent"),
        );
        self.metrics
            .in_flight
            .get_or_create(&MethodLabels {
                method: self.method,
            })
            .dec();
    }
}

/// Decodes a `grpc-message` (percent-encoded UTF-8), bounded to [`MAX_LOGGED_MESSAGE`] bytes.
/// Decodes a `grpc-message` header (gRPC percent-encodes it), keeping at most `max_len` bytes.
pub(crate) fn percent_decode(raw: &[u8], max_len: usize) -> String {
    let mut bytes = Vec::with_capacity(raw.len().min(max_len));
    let mut rest = raw;
    while let Some((&first, tail)) = rest.split_first() {
        if bytes.len() >= max_len {
            break;
        }
        let hex = |byte: u8| (byte as char).to_digit(16);
        match (first, tail) {
            (b'%', [high, low, after @ ..]) if hex(*high).is_some() && hex(*low).is_some() => {
                let value = hex(*high).unwrap_or(0) * 16 + hex(*low).unwrap_or(0);
                bytes.push(value as u8);
                rest = after;
            }
            _ => {
                bytes.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

pin_project! {
    /// The response future of [`RpcMetricsService`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<MetricsBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(mut call) = this.call.take() else {
            // Polled after completion: a contract violation of the caller; report it as such.
            panic!("ResponseFuture polled after it completed");
        };
        call.headers_sent();
        match result {
            Ok(response) => {
                // A trailers-only response (every handler error) has its status in the headers.
                let call = if call.finish_from(response.headers()) {
                    None
                } else {
                    call.body_follows();
                    Some(call)
                };
                Poll::Ready(Ok(response.map(|body| MetricsBody { inner: body, call })))
            }
            Err(err) => {
                call.finish(CODE_UNKNOWN, Some("the server failed to answer"));
                Poll::Ready(Err(err))
            }
        }
    }
}

pin_project! {
    /// A response body that records the call's status from its trailers.
    #[derive(Debug)]
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(trailers), Some(call)) = (frame.trailers_ref(), this.call.as_mut())
                    && call.finish_from(trailers)
                {
                    *this.call = None;
                }
            }
            Some(Err(_)) => {
                if let Some(mut call) = this.call.take() {
                    call.finish(CODE_UNKNOWN, Some("the response body failed"));
                }
            }
            None => {
                if let Some(mut call) = this.call.take() {
                    call.finish(
                        CODE_UNKNOWN,
                        Some("the response ended without a grpc-status"),
                    );
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use futures_util::FutureExt;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};

    use super::*;
    use crate::telemetry::Metrics;

    #[test]
    fn method_is_the_last_path_segment_of_a_known_service() {
        assert_eq!(method_label(known_method("/log.v1.Log/Produce")), "Produce");
        assert_eq!(
            method_label(known_method("/log.v1.Log/ConsumeStream")),
            "ConsumeStream"
        );
        assert_eq!(
            method_label(known_method("/grpc.health.v1.Health/Check")),
            "Check"
        );
        assert_eq!(method_label(known_method("/log.v1.Log/Nope")), "unknown");
        assert_eq!(
            method_label(known_method("/evil.Service/Produce")),
            "unknown"
        );
        assert_eq!(method_label(known_method("/log.v1.Log")), "unknown");
        assert_eq!(method_label(known_method("/")), "unknown");
        assert_eq!(method_label(known_method("")), "unknown");
    }

    /// The methods `proto` declares.
    /// The methods of `service` (`log.v1.Log`) in `proto`: the `rpc` lines of its block.
    fn methods_in<'a>(proto: &'a str, service: &str) -> Vec<&'a str> {
        let name = service.rsplit('.').next().unwrap();
        let mut methods: Vec<&str> = proto
            .lines()
            .skip_while(|line| line.trim() != format!("service {name} {{"))
            .take_while(|line| line.trim() != "}")
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .filter_map(|rest| rest.split('(').next())
            .map(str::trim)
            .collect();
        methods.sort_unstable();
        methods
    }

    #[test]
    fn every_method_of_the_protos_is_known() {
        for (service, proto) in [
            (
                "log.v1.Log",
                include_str!("../../../client/proto/log/v1/log.proto"),
            ),
            (
                "log.v1.Logs",
                include_str!("../../../client/proto/log/v1/log.proto"),
            ),
            (
                "log.v1.Peer",
                include_str!("../../../proto/proto/log/v1/peer.proto"),
            ),
            (
                "log.v1.Admin",
                include_str!("../../../proto/proto/log/v1/admin.proto"),
            ),
        ] {
            let mut known = KNOWN_METHODS
                .iter()
                .find(|(known, _)| *known == service)
                .map(|(_, methods)| methods.to_vec())
                .unwrap();
            known.sort_unstable();
            assert!(!known.is_empty(), "{service}");
            assert_eq!(methods_in(proto, service), known, "{service}");
        }
    }

    #[test]
    fn streaming_methods_of_the_proto_are_the_streaming_ones() {
        let proto = include_str!("../../../client/proto/log/v1/log.proto");
        let mut streaming_in_proto: Vec<&str> = proto
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .filter(|rest| rest.contains("returns (stream "))
            .filter_map(|rest| rest.split('(').next())
            .map(str::trim)
            .collect();
        streaming_in_proto.sort_unstable();
        let log_methods = KNOWN_METHODS
            .iter()
            .find(|(service, _)| *service == "log.v1.Log")
            .map(|(_, methods)| methods.to_vec())
            .unwrap();
        let mut streaming_known: Vec<&str> = STREAMING_METHODS
            .iter()
            .copied()
            .filter(|method| log_methods.contains(method))
            .collect();
        streaming_known.sort_unstable();
        assert_eq!(streaming_in_proto, streaming_known);
    }

    #[test]
    fn known_methods_carry_their_service() {
        assert_eq!(
            known_method("/log.v1.Log/Produce"),
            Some(("log.v1.Log", "Produce"))
        );
        assert_eq!(
            known_method("/grpc.health.v1.Health/Watch"),
            Some(("grpc.health.v1.Health", "Watch"))
        );
        assert_eq!(
            known_method("/log.v1.Peer/Fetch"),
            Some(("log.v1.Peer", "Fetch"))
        );
        assert_eq!(known_method("/evil.Service/Produce"), None);
    }

    #[test]
    fn status_codes_have_their_grpc_names() {
        assert_eq!(code_name(code_of(b"0")), "Ok");
        assert_eq!(code_of(b"11"), 11);
        assert_eq!(code_name(code_of(b"11")), "OutOfRange");
        assert_eq!(code_name(code_of(b"16")), "Unauthenticated");
        assert_eq!(code_name(code_of(b"17")), "Unknown");
        assert_eq!(code_name(code_of(b"x")), "Unknown");
        assert_eq!(code_name(code_of(b"")), "Unknown");
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(
            percent_decode(b"offset 9%20out", MAX_LOGGED_MESSAGE),
            "offset 9 out"
        );
        assert_eq!(percent_decode(b"100%", MAX_LOGGED_MESSAGE), "100%");
        assert_eq!(percent_decode(b"%E2%9C%93", MAX_LOGGED_MESSAGE), "\u{2713}");
    }

    fn grpc_response(status_in_headers: Option<&str>) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from_static(b"payload")));
        if let Some(status) = status_in_headers {
            response
                .headers_mut()
                .insert("grpc-status", status.parse().unwrap());
            response
                .headers_mut()
                .insert("grpc-message", "out%20of%20range".parse().unwrap());
        }
        response
    }

    fn counted(metrics: &Metrics, method: &'static str, code: &'static str) -> u64 {
        metrics
            .rpc()
            .requests
            .get(&MethodCodeLabels { method, code })
            .map(|counter| counter.get())
            .unwrap_or(0)
    }

    fn in_flight(metrics: &Metrics, method: &'static str) -> i64 {
        metrics
            .rpc()
            .in_flight
            .get(&MethodLabels { method })
            .map(|gauge| gauge.get())
            .unwrap_or(0)
    }

    /// Observations of the duration histogram, from the exposition (the histogram's own
    /// counter is only public with a test feature of the crate).
    fn timed(metrics: &Metrics, method: &'static str) -> u64 {
        let prefix = format!("proglog_rpc_request_duration_seconds_count{{method=\"{method}\"}} ");
        let text = metrics.encode().unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|count| count.parse().unwrap())
            .unwrap_or(0)
    }

    fn request(path: &str) -> Request<Empty<Bytes>> {
        Request::post(path).body(Empty::new()).unwrap()
    }

    #[test]
    fn a_trailers_only_error_is_counted_with_its_code_at_once() {
        let metrics = Metrics::new();
        let mut service =
            RpcMetricsLayer::new(metrics.rpc().clone()).layer(tower_service_fn(|_| {
                Ok::<_, Infallible>(grpc_response(Some("11")))
            }));
        let response = service
            .call(request("/log.v1.Log/Consume"))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(counted(&metrics, "Consume", "OutOfRange"), 1);
        assert_eq!(timed(&metrics, "Consume"), 1);
        assert_eq!(in_flight(&metrics, "Consume"), 0);
        drop(response);
        assert_eq!(counted(&metrics, "Consume", "OutOfRange"), 1);
        assert_eq!(counted(&metrics, "Consume", "Cancelled"), 0);
    }

    #[test]
    fn a_success_is_counted_when_its_trailers_pass() {
        let metrics = Metrics::new();
        let mut service =
            RpcMetricsLayer::new(metrics.rpc().clone()).layer(tower_service_fn(|_| {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                    Ok(Frame::data(Bytes::from_static(b"payload"))),
                    Ok(Frame::trailers(trailers)),
                ];
                Ok::<_, Infallible>(Response::new(StreamBody::new(futures_util::stream::iter(
                    frames,
                ))))
            }));
        let response = service
            .call(request("/log.v1.Log/Produce"))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(in_flight(&metrics, "Produce"), 1, "the body is still open");
        assert_eq!(counted(&metrics, "Produce", "Ok"), 0);
        let collected = response.into_body().collect().now_or_never().unwrap();
        assert!(collected.unwrap().trailers().is_some());
        assert_eq!(counted(&metrics, "Produce", "Ok"), 1);
        assert_eq!(in_flight(&metrics, "Produce"), 0);
        assert_eq!(timed(&metrics, "Produce"), 1);
    }

    #[test]
    fn a_call_dropped_before_its_status_counts_as_cancelled() {
        let metrics = Metrics::new();
        let mut service =
            RpcMetricsLayer::new(metrics.rpc().clone()).layer(tower_service_fn(|_| {
                Ok::<_, Infallible>(grpc_response(None))
            }));
        let response = service
            .call(request("/log.v1.Log/ConsumeStream"))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(in_flight(&metrics, "ConsumeStream"), 1);
        drop(response);
        assert_eq!(counted(&metrics, "ConsumeStream", "Cancelled"), 1);
        assert_eq!(in_flight(&metrics, "ConsumeStream"), 0);
    }

    #[test]
    fn unknown_paths_share_one_label() {
        let metrics = Metrics::new();
        let mut service =
            RpcMetricsLayer::new(metrics.rpc().clone()).layer(tower_service_fn(|_| {
                Ok::<_, Infallible>(grpc_response(Some("12")))
            }));
        for path in ["/a.B/C", "/x.Y/Z", "/garbage"] {
            drop(service.call(request(path)).now_or_never().unwrap().unwrap());
        }
        assert_eq!(counted(&metrics, "unknown", "Unimplemented"), 3);
        let text = metrics.encode().unwrap();
        assert!(!text.contains("method=\"C\""), "{text}");
    }

    /// A tower service from a closure, ready at once.
    fn tower_service_fn<F, R, E>(f: F) -> ServiceFn<F>
    where
        F: FnMut(Request<Empty<Bytes>>) -> Result<R, E>,
    {
        ServiceFn(f)
    }

    struct ServiceFn<F>(F);

    impl<F, R, E> Service<Request<Empty<Bytes>>> for ServiceFn<F>
    where
        F: FnMut(Request<Empty<Bytes>>) -> Result<R, E>,
    {
        type Response = R;
        type Error = E;
        type Future = std::future::Ready<Result<R, E>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<Empty<Bytes>>) -> Self::Future {
            std::future::ready((self.0)(request))
        }
    }
}
