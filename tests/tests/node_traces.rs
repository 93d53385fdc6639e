//! Black-box test of OpenTelemetry trace export: a real `proglog-node` started with
//! `--otlp-endpoint` sends its RPC spans over OTLP/gRPC to a collector this test runs, and the
//! spans must continue the caller's trace and tell exactly how each call ended; the last spans
//! must survive a SIGTERM, an `https://` collector must be reachable through the system roots,
//! and a collector that is down must cost no RPC.
//!
//! Needs the node binary built (see `proglog_tests::node_process`): `cargo test --workspace`
//! builds it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::{ConsumeRequest, ProduceRequest, Record};
use proglog_tests::node_process::{NodeOptions, NodeProcess};
use proglog_tests::ports::free_port;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;

/// How long any one condition may take to hold. Spans are exported in batches every few
/// seconds (the SDK's schedule, shortened in the first test), so this is generous.
const DEADLINE: Duration = Duration::from_secs(20);

/// How often the collector is checked again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The caller's trace: W3C `traceparent` version 00, sampled.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{PARENT_SPAN_ID}-01")
}

/// A span as the collector received it, with the resource it came with.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    resource: Vec<KeyValue>,
    span: Span,
}

impl ReceivedSpan {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn attribute(&self, key: &str) -> Option<&Value> {
        find(&self.span.attributes, key)
    }

    fn resource_attribute(&self, key: &str) -> Option<&Value> {
        find(&self.resource, key)
    }
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref())
        .and_then(|value: &AnyValue| value.value.as_ref())
}

fn string(value: &str) -> Value {
    Value::StringValue(value.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// An OTLP/gRPC trace collector on `127.0.0.1:0` that keeps every span it is sent.
struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<ResourceSpans>>>,
    stop: CancellationToken,
}

/// The collector's `TraceService`: records, and accepts everything.
struct Recorder {
    received: Arc<Mutex<Vec<ResourceSpans>>>,
}

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(request.into_inner().resource_spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// Serves TLS with `identity` (certificate chain and key, PEM) when given.
    async fn start_with(identity: Option<(String, String)>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = identity {
            builder = builder.tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )?;
        }
        let server = builder
            .add_service(TraceServiceServer::new(Recorder {
                received: Arc::clone(&received),
            }))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        Ok(Collector {
            addr,
            received,
            stop,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        let received = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        received
            .iter()
            .flat_map(|resource_spans| {
                let resource = resource_spans
                    .resource
                    .as_ref()
                    .map(|resource| resource.attributes.clone())
                    .unwrap_or_default();
                resource_spans
                    .scope_spans
                    .iter()
                    .flat_map(|scope| scope.spans.iter())
                    .map(move |span| ReceivedSpan {
                        resource: resource.clone(),
                        span: span.clone(),
                    })
            })
            .collect()
    }

    /// Polls until a span named `name` of trace `trace_id` has arrived, and returns it.
    async fn span_until(&self, name: &str, trace_id: &str) -> anyhow::Result<ReceivedSpan> {
        let until = Instant::now() + DEADLINE;
        loop {
            let spans = self.spans();
            if let Some(span) = spans
                .iter()
                .find(|span| span.span.name == name && span.trace_id() == trace_id)
            {
                return Ok(span.clone());
            }
            if Instant::now() >= until {
                let seen: Vec<(String, String)> = spans
                    .iter()
                    .map(|span| (span.span.name.clone(), span.trace_id()))
                    .collect();
                bail!("no span {name} of trace {trace_id} after {DEADLINE:?}; received {seen:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A request carrying the caller's trace context, as an instrumented client sends it.
fn traced<T>(message: T, trace_id: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent(trace_id).parse()?);
    request
        .metadata_mut()
        .insert("tracestate", "vendor=opaque".parse()?);
    Ok(request)
}

async fn produce(client: &mut LogClient<Channel>, trace_id: &str) -> anyhow::Result<u64> {
    let request = ProduceRequest {
        record: Some(Record {
            value: b"traced".to_vec().into(),
            ..Record::default()
        }),
        ..ProduceRequest::default()
    };
    let response = client.produce(traced(request, trace_id)?).await?;
    Ok(response.into_inner().offset)
}

#[tokio::test]
async fn rpc_spans_continue_the_callers_trace_and_carry_the_status() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let node = NodeProcess::start(
        NodeOptions::default()
            .id("traced-node")
            .flag("--otlp-endpoint", collector.endpoint())
            // Export every 100 ms instead of every 5 s, so the test does not wait for batches.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    )
    .await?;
    let mut client = node.log_client().await?;

    assert_eq!(produce(&mut client, TRACE_ID).await?, 0);
    let span = collector.span_until("log.v1.Log/Produce", TRACE_ID).await?;
    assert_eq!(hex(&span.span.parent_span_id), PARENT_SPAN_ID, "{span:#?}");
    assert_eq!(span.span.kind, SpanKind::Server as i32, "{span:#?}");
    assert_eq!(span.attribute("rpc.system"), Some(&string("grpc")));
    assert_eq!(span.attribute("rpc.service"), Some(&string("log.v1.Log")));
    assert_eq!(span.attribute("rpc.method"), Some(&string("Produce")));
    assert_eq!(
        span.attribute("rpc.grpc.status_code"),
        Some(&Value::IntValue(0))
    );
    let status = span.span.status.clone().unwrap_or_default();
    assert_ne!(status.code, StatusCode::Error as i32, "{span:#?}");
    assert!(span.span.end_time_unix_nano >= span.span.start_time_unix_nano);
    assert_eq!(
        span.resource_attribute("service.name"),
        Some(&string("proglog-node"))
    );
    assert_eq!(
        span.resource_attribute("service.instance.id"),
        Some(&string("traced-node"))
    );

    // A failing call: consuming past the end is OUT_OF_RANGE (gRPC code 11).
    let failing_trace = "0af7651916cd43dd8448eb211c80319c";
    let status = client
        .consume(traced(
            ConsumeRequest {
                offset: 10,
                ..ConsumeRequest::default()
            },
            failing_trace,
        )?)
        .await
        .err()
        .context("consuming offset 10 of 1 record succeeded")?;
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    let span = collector
        .span_until("log.v1.Log/Consume", failing_trace)
        .await?;
    assert_eq!(hex(&span.span.parent_span_id), PARENT_SPAN_ID, "{span:#?}");
    assert_eq!(span.attribute("rpc.method"), Some(&string("Consume")));
    assert_eq!(
        span.attribute("rpc.grpc.status_code"),
        Some(&Value::IntValue(11))
    );
    let status = span
        .span
        .status
        .clone()
        .context("the failed span has no status")?;
    assert_eq!(status.code, StatusCode::Error as i32, "{span:#?}");
    assert!(!status.message.is_empty(), "{span:#?}");

    // A stream's span covers its setup: it is exported while the stream is still open.
    let stream_trace = "7d3e3f1a9b0c4d5e8f60718293a4b5c6";
    let mut stream = client
        .consume_stream(traced(
            ConsumeRequest {
                offset: 0,
                ..ConsumeRequest::default()
            },
            stream_trace,
        )?)
        .await?
        .into_inner();
    let first = stream
        .message()
        .await?
        .context("the stream ended before the first record")?;
    assert_eq!(first.record.map(|record| record.offset), Some(0));
    let span = collector
        .span_until("log.v1.Log/ConsumeStream", stream_trace)
        .await?;
    assert_eq!(hex(&span.span.parent_span_id), PARENT_SPAN_ID, "{span:#?}");
    assert_eq!(span.attribute("rpc.grpc.status_code"), None, "{span:#?}");
    drop(stream);

    // A call without trace context starts a trace of its own (the default ratio samples all).
    client
        .produce(ProduceRequest {
            record: Some(Record {
                value: b"untraced".to_vec().into(),
                ..Record::default()
            }),
            ..ProduceRequest::default()
        })
        .await?;
    let until = Instant::now() + DEADLINE;
    loop {
        let roots = collector
            .spans()
            .into_iter()
            .filter(|span| span.span.name == "log.v1.Log/Produce" && span.trace_id() != TRACE_ID)
            .collect::<Vec<_>>();
        if let Some(root) = roots.first() {
            ensure!(root.span.parent_span_id.is_empty(), "{root:#?}");
            break;
        }
        if Instant::now() >= until {
            bail!("the untraced produce exported no span of a new trace after {DEADLINE:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

#[tokio::test]
async fn the_last_spans_are_flushed_at_shutdown() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let mut node = NodeProcess::start(
        NodeOptions::default()
            .flag("--otlp-endpoint", collector.endpoint())
            // No scheduled export before the test ends: only the flush at shutdown sends it.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    )
    .await?;
    let mut client = node.log_client().await?;
    let trace_id = "5c1c63257de34c67a8e4f0f16a5f0a11";
    produce(&mut client, trace_id).await?;
    drop(client);
    ensure!(
        collector.spans().is_empty(),
        "spans arrived before shutdown: the schedule delay was not honoured"
    );

    let status = node.terminate().await?;
    ensure!(status.success(), "the node exited with {status}");
    // The node has exited, so the span is there now or never; the poll only absorbs the
    // collector's own handling of the last request.
    let span = collector.span_until("log.v1.Log/Produce", trace_id).await?;
    assert_eq!(hex(&span.span.parent_span_id), PARENT_SPAN_ID, "{span:#?}");
    Ok(())
}

#[tokio::test]
async fn spans_reach_an_https_collector_trusted_by_the_system_roots() -> anyhow::Result<()> {
    // A CA of the test's own, made "the system's" for the node through SSL_CERT_FILE.
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "trace test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate()?;
    let server_cert =
        CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&server_key, &issuer)?;
    let dir = tempfile::Builder::new()
        .prefix("proglog-otlp-tls-")
        .tempdir()?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem)?;

    let collector =
        Collector::start_with(Some((server_cert.pem(), server_key.serialize_pem()))).await?;
    let node = NodeProcess::start(
        NodeOptions::default()
            .flag("--otlp-endpoint", format!("https://{}", collector.addr))
            .env("SSL_CERT_FILE", &ca_file)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    )
    .await?;
    let mut client = node.log_client().await?;
    let trace_id = "9a0b1c2d3e4f5061728394a5b6c7d8e9";
    produce(&mut client, trace_id).await?;
    let span = collector.span_until("log.v1.Log/Produce", trace_id).await?;
    assert_eq!(hex(&span.span.parent_span_id), PARENT_SPAN_ID, "{span:#?}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_collector_costs_no_rpcs() -> anyhow::Result<()> {
    // A port nothing listens on. Not one bound on port 0 and released: the kernel would hand it
    // to the next port-0 listener, say another test's collector, which would then get spans.
    let unused = format!("127.0.0.1:{}", free_port());
    let mut node = NodeProcess::start(
        NodeOptions::default()
            .flag("--otlp-endpoint", format!("http://{unused}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    )
    .await?;
    let mut client = node.log_client().await?;
    for expected in 0..20 {
        assert_eq!(produce(&mut client, TRACE_ID).await?, expected);
    }
    drop(client);
    // The lost batch is logged (by the SDK), and that is all it costs.
    let until = Instant::now() + DEADLINE;
    while !node
        .stderr_lines()
        .iter()
        .any(|line| line.contains("BatchSpanProcessor.ExportError"))
    {
        if Instant::now() >= until {
            bail!(
                "no export error logged after {DEADLINE:?}: {:#?}",
                node.stderr_lines()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let status = node.terminate().await?;
    ensure!(status.success(), "the node exited with {status}");
    Ok(())
}

#[tokio::test]
async fn a_bad_trace_setting_refuses_to_start() -> anyhow::Result<()> {
    for (flag, value) in [
        ("--otlp-endpoint", "collector:4317"),
        ("--trace-sample-ratio", "1.5"),
    ] {
        let exited = NodeOptions::default()
            .flag(flag, value)
            .run_to_exit()
            .await?;
        let name = flag.trim_start_matches('-');
        ensure!(
            exited.status.code() == Some(2),
            "{flag} {value}: exited with {}",
            exited.status
        );
        ensure!(
            exited.stderr.iter().any(|line| line.contains(name)),
            "{flag} {value}: stderr does not name the flag: {:#?}",
            exited.stderr
        );
    }
    Ok(())
}
