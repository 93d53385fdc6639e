//! Gives a request over the gRPC message limit the status an oversize record gets.
//!
//! tonic refuses a message larger than the server's decoding limit before any handler runs,
//! with `OUT_OF_RANGE` ("decoded message length too large"): the code proglog uses for an
//! offset outside the log. This layer rewrites that answer to `INVALID_ARGUMENT` naming
//! `--max-record-bytes`, so a client can tell "your record is too big" from "that offset does
//! not exist". The layer sees answers given in the response headers (unary calls); streaming
//! handlers pass request errors through [`oversize_status`] themselves.

use std::task::{Context, Poll};

use futures_util::TryFutureExt;
use futures_util::future::MapOk;
use tower_layer::Layer;
use tower_service::Service;

use crate::telemetry::percent_decode;

/// What tonic says when a message is over the decoding limit.
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large";

/// The layer; `max_record_bytes` is named in the rewritten message.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    max_record_bytes: usize,
}

impl MessageLimitLayer {
    /// A layer naming `max_record_bytes` in its answers.
    pub fn new(max_record_bytes: usize) -> Self {
        MessageLimitLayer { max_record_bytes }
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit {
            inner,
            max_record_bytes: self.max_record_bytes,
        }
    }
}

/// The service the layer wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    max_record_bytes: usize,
}

type Rewrite<B> = Box<dyn FnOnce(http::Response<B>) -> http::Response<B> + Send>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MessageLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MapOk<S::Future, Rewrite<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let max_record_bytes = self.max_record_bytes;
        let rewrite: Rewrite<ResBody> =
            Box::new(move |response| rewrite(response, max_record_bytes));
        self.inner.call(request).map_ok(rewrite)
    }
}

/// The same rewrite for a status a handler sees on a request stream (a `ProduceStream`
/// message over the limit arrives after the response headers, so the layer cannot see it).
pub fn oversize_status(status: tonic::Status, max_record_bytes: usize) -> tonic::Status {
    if status.code() == tonic::Code::OutOfRange && status.message().starts_with(TOO_LARGE_PREFIX) {
        return tonic::Status::invalid_argument(too_large_message(
            status.message(),
            max_record_bytes,
        ));
    }
    status
}

fn too_large_message(original: &str, max_record_bytes: usize) -> String {
    format!(
        "request too large for this node (records may be at most {max_record_bytes} bytes, --max-record-bytes; a request at most one batch): {original}"
    )
}

fn rewrite<B>(mut response: http::Response<B>, max_record_bytes: usize) -> http::Response<B> {
    let headers = response.headers();
    let too_large = headers.get("grpc-status").is_some_and(|code| code == "11")
        && headers
            .get("grpc-message")
            .and_then(|message| message.to_str().ok())
            .is_some_and(|message| {
                percent_decode(message.as_bytes(), usize::MAX).starts_with(TOO_LARGE_PREFIX)
            });
    if !too_large {
        return response;
    }
    let original = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        .map(|message| percent_decode(message.as_bytes(), usize::MAX))
        .unwrap_or_default();
    let message = too_large_message(&original, max_record_bytes);
    let headers = response.headers_mut();
    headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    if let Ok(value) = http::HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable ASCII, and `%`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: &str, message: &str) -> http::Response<()> {
        let mut response = http::Response::new(());
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_str(code).unwrap());
        response.headers_mut().insert(
            "grpc-message",
            http::HeaderValue::from_str(&percent_encode(message)).unwrap(),
        );
        response
    }

    #[test]
    fn too_large_becomes_invalid_argument_naming_the_flag() {
        let original = "Error, decoded message length too large: found 9000000 bytes, the limit is: 8454144 bytes";
        let rewritten = rewrite(response("11", original), 1024);
        assert_eq!(rewritten.headers()["grpc-status"], "3");
        let message = percent_decode(rewritten.headers()["grpc-message"].as_bytes(), usize::MAX);
        assert!(
            message.contains("1024 bytes, --max-record-bytes"),
            "{message}"
        );
        assert!(message.contains("found 9000000 bytes"), "{message}");
    }

    #[test]
    fn other_statuses_pass_through() {
        let offset = rewrite(response("11", "offset 9 is out of range"), 1024);
        assert_eq!(offset.headers()["grpc-status"], "11");
        let ok = rewrite(response("0", ""), 1024);
        assert_eq!(ok.headers()["grpc-status"], "0");
    }
}
