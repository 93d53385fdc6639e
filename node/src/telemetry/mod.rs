//! Telemetry: Prometheus metrics, the health endpoints, OpenTelemetry trace export, and the RPC
//! layer that feeds them.
//!
//! ## Layout
//!
//! - `metrics`: [`Metrics`], the one registry of the node: RPC golden signals and the log gauges
//!   (read from the log at scrape time by a collector, so nothing on the hot path updates them).
//! - `rpc_layer`: [`RpcMetricsLayer`], a tower layer around the whole tonic server. Every RPC is
//!   counted, timed, (when it fails) logged and (when trace export is on) given its span once,
//!   here and nowhere else: handlers never record metrics themselves.
//! - `rpc_span`: the OpenTelemetry server span of one RPC, its attributes and its parent.
//! - `trace_export`: [`TraceExport`], the OTLP exporter and batch processor behind
//!   `--otlp-endpoint`, and the `tracing` layer that feeds them.
//! - `health`: [`Health`], liveness and readiness as the HTTP endpoints report them.
//! - `http`: [`HttpServer`], the small HTTP/1 server of `/metrics`, `/healthz` and `/readyz`
//!   (default `0.0.0.0:9400`, `--http-addr`), bounded in connections and header time, stopped
//!   with the node.
//!
//! ## Metrics
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `proglog_rpc_requests_total` | counter | `method`, `code` | finished RPCs by gRPC status code name (`Ok`, `OutOfRange`, ...) |
//! | `proglog_rpc_request_duration_seconds` | histogram | `method` | latency, 50 µs to 10 s buckets |
//! | `proglog_rpc_in_flight` | gauge | `method` | RPCs started and not finished (open streams included) |
//! | `proglog_log_start_offset` | gauge | `log` | first offset the log holds |
//! | `proglog_log_end_offset` | gauge | `log` | offset the next record gets |
//! | `proglog_log_size_bytes` | gauge | `log` | bytes of data in all segments |
//! | `proglog_log_segments` | gauge | `log` | number of segments |
//! | `proglog_log_high_watermark` | gauge | `log` | records below it are committed and visible |
//! | `proglog_leader_epoch` | gauge | `log` | the log's current leader epoch |
//! | `proglog_is_leader` | gauge | `log` | 1 while this node leads the log |
//! | `proglog_logs` | gauge | | logs this node holds a replica of |
//! | `proglog_leaders` | gauge | | logs this node leads |
//! | `proglog_voters` | gauge | | voters in the quorum, as this node knows it |
//! | `proglog_disk_full` | gauge | | 1 while the disk is full |
//! | `proglog_fsync_total` | counter | | `fdatasync` calls for appends |
//! | `proglog_fsync_seconds_total` | counter | | time spent in them (`rate(seconds)/rate(total)` is the mean fsync latency) |
//!
//! Errors are not a separate metric: they are the `code!="Ok"` part of
//! `proglog_rpc_requests_total`, for example
//! `sum by (method) (rate(proglog_rpc_requests_total{code!="Ok"}[5m]))`.
//!
//! `method` is the method name of a known service (`Produce` for `/log.v1.Log/Produce`): the
//! client `Log` and `Logs` services, the replication `Peer` service (`Vote`, `Fetch`, ...),
//! the `Admin` service, health and reflection. Any other path is counted as `unknown`, so a client cannot
//! grow the label set. A new service must add its methods to `rpc_layer::KNOWN_METHODS`.
//! `Fetch` is a long poll: a caught-up follower's fetch waits on the leader for new records, so
//! its duration is mostly that wait, and its rate (about one per follower per commit under
//! load) is the replication traffic.
//!
//! ### Streaming RPCs
//!
//! The duration is the time until the response headers are sent. For a unary RPC that is the
//! handler's whole run (tonic answers after the handler returns); for `ConsumeStream` and
//! `ProduceStream` it is only the time to set the stream up, since a stream may follow the log
//! for hours. A stream is counted in `proglog_rpc_requests_total` when it ends, with the code of
//! its trailers (`Cancelled` if the client went away first); until then it shows in
//! `proglog_rpc_in_flight`.
//!
//! ## Logs
//!
//! Structured `tracing` events, JSON by default (`--log-format json|pretty`, `RUST_LOG` filters).
//! Each failed RPC is logged once at `warn` by the RPC layer (`"message":"rpc failed"`) with
//! `method`, `code` and `grpc_message`, the status message (never a request or response payload).
//!
//! ## Trace export (OpenTelemetry)
//!
//! Optional: `--otlp-endpoint http://collector:4317` (`PROGLOG_OTLP_ENDPOINT`) turns it on;
//! without it no exporter starts, no OpenTelemetry layer is installed and the RPC layer makes no
//! spans, so RPCs pay nothing for it. The endpoint speaks OTLP over gRPC: `http://` is
//! plaintext (a sidecar or node-local agent), `https://` is TLS verified against the system's
//! root certificates (or the bundle `SSL_CERT_FILE` names). The standard
//! `OTEL_EXPORTER_OTLP_TRACES_HEADERS` and `_TIMEOUT` variables and the `OTEL_BSP_*` batch
//! settings are honoured.
//!
//! - Spans: one server span per RPC of `log.v1.Log`, health and reflection, named
//!   `log.v1.Log/Produce` and so on, with `rpc.system` = `grpc`, `rpc.service`, `rpc.method`
//!   and `rpc.grpc.status_code`. Any code but `OK` sets the span's
//!   status to error with the status message, as every code but `Ok` counts as failed above
//!   (OpenTelemetry's conventions would leave client-caused codes such as `OUT_OF_RANGE` unset
//!   on server spans). The replication and admin services get no spans: followers fetch
//!   continuously.
//! - Context: a caller's W3C `traceparent` / `tracestate` metadata is the span's parent, so a
//!   client's trace continues into the node.
//! - Streams: like the duration, the span of `ConsumeStream` or `ProduceStream` covers setting
//!   the stream up and ends when the response headers are sent; it has a status code only when
//!   the stream was refused at once. The stream's final code is in
//!   `proglog_rpc_requests_total` and the logs.
//! - Resource: `service.name` = `proglog-node`, `service.instance.id` = the node's `--id`.
//! - Sampling: `--trace-sample-ratio` (default 1.0) of new traces; an RPC with a `traceparent`
//!   follows its caller's decision.
//! - Delivery: the SDK's batch span processor, a queue of at most [`MAX_QUEUED_SPANS`] spans
//!   (2048; beyond it spans are dropped) exported every 5 s from a thread of its own. RPCs never
//!   wait for the collector; an unreachable one costs spans and an error logged by the SDK per
//!   failed batch (`BatchSpanProcessor.ExportError`, after its retries), never RPCs. At
//!   shutdown, after the drain, the queued spans are flushed (at most 5 s) before the process
//!   exits.

mod health;
mod http;
mod load;
mod metrics;
mod rpc_layer;
mod rpc_span;
mod trace_export;

pub use health::Health;
pub use http::{HttpServer, MAX_HTTP_CONNECTIONS};
pub use load::{ConnectionCounters, Listener, LoadCounters};
pub use metrics::{LogSnapshot, LogStats, Metrics, RpcMetrics};
pub(crate) use rpc_layer::percent_decode;
pub use rpc_layer::{RpcMetricsLayer, RpcMetricsService};
pub use trace_export::{MAX_QUEUED_SPANS, SERVICE_NAME, TraceExport, TraceExportError};
