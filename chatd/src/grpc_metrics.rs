//! gRPC calls counted at the server's edge, for every service the node serves:
//! `chatd_grpc_requests_total{method, code}` and the histogram `chatd_grpc_request_seconds{method}`
//! when the answer starts; `chatd_grpc_open_calls{method}` while it lasts; and when it ends,
//! `chatd_grpc_calls_ended_total{method, code}` with the histogram
//! `chatd_grpc_call_seconds{method}` of its whole life (a device stream's connected time).
//!
//! A tower layer in front of tonic's router sees every call as an HTTP/2 request and its
//! response head. The code is taken from the head: tonic answers every failed unary call
//! "trailers-only", with `grpc-status` in the head, and a head without it starts a successful
//! answer. So unary calls are counted exactly, and their time is the handler's; a stream is
//! counted OK once it has started. The answer's body is wrapped so its end is seen too: the code
//! in its trailers (how a stream ended), or CANCELLED if the client went away first. Paths no
//! service answers are counted under `method="unknown"`, so a client sending made-up paths
//! cannot grow the label set.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::Code;

/// The layer to give `Server::builder().layer(..)`.
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

/// The service the layer wraps around tonic's router.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: http_body::Body + Unpin,
{
    type Response = http::Response<Metered<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            let code = match &result {
                Ok(response) => code_of(response.headers()),
                Err(_) => Code::Internal,
            };
            let method = if code == Code::Unimplemented {
                "unknown".to_string()
            } else {
                method
            };
            metrics::counter!("chatd_grpc_requests_total",
                "method" => method.clone(), "code" => code_name(code))
            .increment(1);
            metrics::histogram!("chatd_grpc_request_seconds", "method" => method.clone())
                .record(started.elapsed().as_secs_f64());
            result.map(|response| {
                let open = OpenCall::start(method, started, code);
                response.map(|body| Metered {
                    inner: body,
                    open: Some(open),
                })
            })
        })
    }
}

/// A call whose answer has started and not ended: counted in `chatd_grpc_open_calls` until it is
/// dropped, then in `chatd_grpc_calls_ended_total` with its final code.
struct OpenCall {
    method: String,
    started: Instant,
    /// The code so far: the head's, then the trailers'.
    code: Code,
    /// Whether the body reached its end (else the client went away: CANCELLED).
    ended: bool,
}

impl OpenCall {
    fn start(method: String, started: Instant, code: Code) -> OpenCall {
        metrics::gauge!("chatd_grpc_open_calls", "method" => method.clone()).increment(1.0);
        OpenCall {
            method,
            started,
            code,
            ended: false,
        }
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        let method = std::mem::take(&mut self.method);
        metrics::gauge!("chatd_grpc_open_calls", "method" => method.clone()).decrement(1.0);
        let code = if self.ended {
            self.code
        } else {
            Code::Cancelled
        };
        metrics::counter!("chatd_grpc_calls_ended_total",
            "method" => method.clone(), "code" => code_name(code))
        .increment(1);
        metrics::histogram!("chatd_grpc_call_seconds", "method" => method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// An answer's body, watched for its trailers and its end.
pub struct Metered<B: http_body::Body> {
    inner: B,
    open: Option<OpenCall>,
}

impl<B: http_body::Body> Drop for Metered<B> {
    fn drop(&mut self) {
        // A trailers-only answer (a failed unary call) has an empty body hyper never polls.
        if let Some(open) = self.open.as_mut() {
            open.ended |= self.inner.is_end_stream();
        }
    }
}

impl<B> http_body::Body for Metered<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            // The trailers are a gRPC answer's last frame (hyper polls no further).
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(open)) = (frame.trailers_ref(), this.open.as_mut()) {
                    open.code = code_of(trailers);
                    open.ended = true;
                }
            }
            Poll::Ready(None) => {
                if let Some(mut open) = this.open.take() {
                    open.ended = true;
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The call's code as its response head says: `grpc-status` if present (a trailers-only
/// answer), else OK (an answer that has started).
fn code_of(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// The code as gRPC spells it (`OK`, `UNAVAILABLE`, …): what dashboards filter on.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_comes_from_the_head() {
        let mut head = http::HeaderMap::new();
        assert_eq!(code_of(&head), Code::Ok);
        head.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(code_name(code_of(&head)), "UNAVAILABLE");
        head.insert("grpc-status", "junk".parse().unwrap());
        assert_eq!(code_of(&head), Code::Ok);
    }
}
