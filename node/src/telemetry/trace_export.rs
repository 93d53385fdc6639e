//! [`TraceExport`]: the OpenTelemetry pipeline that sends the RPC spans to a collector over
//! OTLP/gRPC, started only when `--otlp-endpoint` is set.
//!
//! Spans go through the SDK's batch span processor: a bounded queue
//! ([`MAX_QUEUED_SPANS`] by default) drained by a thread of its own every few seconds. RPCs only
//! put their span in the queue and never wait for the collector; when the queue is full, new
//! spans are dropped (the SDK warns once, and counts them at shutdown). A failed export is
//! logged by the SDK (`BatchSpanProcessor.ExportError`), at most once per batch, and the batch
//! is dropped: an unreachable collector costs spans, never RPCs.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use super::rpc_span::RPC_SPAN_TARGET;
use crate::config::TraceConfig;

/// The `service.name` of the node's spans (and the name of their instrumentation scope).
pub const SERVICE_NAME: &str = "proglog-node";

/// Spans the batch processor queues for export, at most, unless `OTEL_BSP_MAX_QUEUE_SIZE` says
/// otherwise (the SDK's default, which the node keeps).
pub const MAX_QUEUED_SPANS: usize = opentelemetry_sdk::trace::OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT;

/// Why trace export could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum TraceExportError {
    /// The OTLP exporter could not be built from `--otlp-endpoint`.
    #[error("cannot set up OTLP trace export to --otlp-endpoint {endpoint}")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The spans still queued at shutdown could not all be exported in time.
    #[error("cannot flush the last spans to --otlp-endpoint within {timeout:?}")]
    Shutdown {
        /// How long shutdown waited.
        timeout: Duration,
        /// Why.
        #[source]
        source: opentelemetry_sdk::error::OTelSdkError,
    },
}

/// A running export pipeline: add [`TraceExport::layer`] to the subscriber, and call
/// [`TraceExport::shutdown`] when the node has stopped, so the last spans are sent.
#[derive(Debug)]
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Starts exporting when `config` names an endpoint; `Ok(None)` when it does not. Call it
    /// inside the node's Tokio runtime: the gRPC channel to the collector runs there. It
    /// connects lazily, so a collector that is down does not keep the node from starting.
    pub fn start(config: &TraceConfig, node_id: &str) -> Result<Option<Self>, TraceExportError> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone());
        if endpoint.starts_with("https:") {
            exporter = exporter
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
        }
        let exporter = exporter
            .build()
            .map_err(|source| TraceExportError::Exporter {
                endpoint: endpoint.clone(),
                source,
            })?;
        let resource = Resource::builder()
            .with_service_name(SERVICE_NAME)
            .with_attribute(KeyValue::new("service.instance.id", node_id.to_owned()))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            // A caller's sampling decision wins, so a trace is never exported in pieces.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        Ok(Some(TraceExport { provider }))
    }

    /// The `tracing` layer that turns the RPC spans into OpenTelemetry spans. It sees nothing
    /// else: other spans and all events go only to the log output.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer(SERVICE_NAME))
            // The RPC semantic conventions' attributes only: no source location, thread or
            // busy/idle time of the span.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(RPC_SPAN_TARGET, tracing::Level::INFO))
    }

    /// Exports the spans still queued and stops the exporter, waiting at most `timeout`.
    /// Call it once the node has stopped serving, while the Tokio runtime still runs.
    pub fn shutdown(self, timeout: Duration) -> Result<(), TraceExportError> {
        self.provider
            .shutdown_with_timeout(timeout)
            .map_err(|source| TraceExportError::Shutdown { timeout, source })
    }
}
