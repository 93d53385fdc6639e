//! Telemetry: Prometheus metrics, the health endpoints, and the RPC layer that feeds them.
//!
//! ## Layout
//!
//! - `metrics`: [`Metrics`], the one registry of the node: RPC golden signals and the log gauges
//!   (read from the log at scrape time by a collector, so nothing on the hot path updates them).
//! - `rpc_layer`: [`RpcMetricsLayer`], a tower layer around the whole tonic server. Every RPC is
//!   counted, timed and (when it fails) logged once, here and nowhere else: handlers never
//!   record metrics themselves.
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
//! | `proglog_log_start_offset` | gauge | | first offset the log holds |
//! | `proglog_log_end_offset` | gauge | | offset the next record gets |
//! | `proglog_log_size_bytes` | gauge | | bytes of data in all segments |
//! | `proglog_log_segments` | gauge | | number of segments |
//! | `proglog_fsync_total` | counter | | `fdatasync` calls for appends |
//! | `proglog_fsync_seconds_total` | counter | | time spent in them (`rate(seconds)/rate(total)` is the mean fsync latency) |
//!
//! Errors are not a separate metric: they are the `code!="Ok"` part of
//! `proglog_rpc_requests_total`, for example
//! `sum by (method) (rate(proglog_rpc_requests_total{code!="Ok"}[5m]))`.
//!
//! `method` is the method name of a known service (`Produce` for `/log.v1.Log/Produce`); any
//! other path is counted as `unknown`, so a client cannot grow the label set. A new service must
//! add its methods to `rpc_layer::KNOWN_METHODS`.
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
//! ## Trace export (OpenTelemetry): not implemented
//!
//! Exporting spans over OTLP is optional in the observability issue and is not implemented:
//! there is no flag for it and no exporter dependency. It would go here, as a
//! `tracing-opentelemetry` layer added to the subscriber `main` builds, configured by a
//! `NodeConfig` field next to `http_addr`.

mod health;
mod http;
mod metrics;
mod rpc_layer;

pub use health::Health;
pub use http::{HttpServer, MAX_HTTP_CONNECTIONS};
pub use metrics::{LogSnapshot, LogStats, Metrics, RpcMetrics};
pub(crate) use rpc_layer::percent_decode;
pub use rpc_layer::{RpcMetricsLayer, RpcMetricsService};
