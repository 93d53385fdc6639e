//! [`RpcSpan`]: the OpenTelemetry server span of one RPC, made by the RPC layer when trace
//! export is on.
//!
//! A span is a `tracing` span with target [`RPC_SPAN_TARGET`], which only the OpenTelemetry
//! layer (`trace_export`) listens to: the log output does not change when export is on, and
//! when export is off no span is made at all. Its fields follow OpenTelemetry's RPC semantic
//! conventions (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`); the caller's
//! W3C trace context (`traceparent`, `tracestate` metadata) is its parent, so a client's trace
//! continues into the node.

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of RPC spans; the OpenTelemetry layer exports spans of this target only.
pub(crate) const RPC_SPAN_TARGET: &str = "proglog_node::rpc";

/// The open server span of one RPC; it ends (and is queued for export) when dropped.
#[derive(Debug)]
pub(crate) struct RpcSpan {
    span: tracing::Span,
}

impl RpcSpan {
    /// Opens the span of a call to `service`/`method`, continuing the trace of the request's
    /// `traceparent`, if any.
    pub(crate) fn start(request_headers: &HeaderMap, service: &str, method: &str) -> Self {
        let span = tracing::info_span!(
            target: RPC_SPAN_TARGET,
            "rpc",
            otel.name = format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let parent = TraceContextPropagator::new().extract(&MetadataExtractor(request_headers));
        // Fails only when no OpenTelemetry layer is installed (the span then goes nowhere) or
        // the span already started, which a span made just above has not.
        let _ = span.set_parent(parent);
        RpcSpan { span }
    }

    /// Records the call's gRPC status. Every code but `OK` marks the span as an error, as every
    /// code but `Ok` counts as failed in the metrics and logs; the description is the status
    /// message (or the code's name when there is none).
    pub(crate) fn record_status(&self, code: u8, code_name: &str, message: Option<&str>) {
        self.span.record("rpc.grpc.status_code", i64::from(code));
        if code != 0 {
            let description = message.filter(|message| !message.is_empty());
            self.span
                .record("otel.status_description", description.unwrap_or(code_name));
        }
    }
}

/// Reads W3C trace context from gRPC metadata (HTTP/2 headers).
struct MetadataExtractor<'a>(&'a HeaderMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}
