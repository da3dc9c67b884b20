//! A scripted HTTP/2 server on a unix socket that stands in for a runtime where a test must
//! control what the runtime does (stream timing, odd URLs, metadata, trailers), and a bare
//! HTTP/2 client that sees every frame, header and trailer as sent.
//!
//! Both are plain hyper: no gRPC library in between, so nothing is normalised behind the
//! test's back.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every request and response here.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A running fake runtime. Dropping it stops it.
pub struct FakeRuntime {
    pub path: PathBuf,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRuntime {
    /// Requests received so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves HTTP/2 on `path`, answering every request with `handler`.
pub async fn start<F, Fut>(path: PathBuf, handler: F) -> FakeRuntime
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind the fake runtime's socket");
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let counter = calls.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    FakeRuntime { path, calls, task }
}

/// A bare HTTP/2 client on `path`.
pub async fn client(path: &Path) -> SendRequest<Body> {
    let stream = UnixStream::connect(path).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}

/// A body whose frames the test sends one at a time.
pub fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(8);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, BoxError>(f), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// A gRPC request for `method` (`/pkg.Service/Method`) with `body`.
pub fn grpc_request(method: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(format!("http://localhost{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request")
}

/// `message` with its uncompressed gRPC prefix.
pub fn framed(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// A whole body: data frames joined, and the trailers.
pub async fn read_all(body: Incoming) -> (Bytes, Option<HeaderMap>) {
    let collected = body.collect().await.expect("read the body");
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

/// A successful unary answer: `message`, then `grpc-status: 0` plus `extra_trailers`.
pub fn unary_ok(message: &[u8], extra_trailers: &[(&'static str, &'static str)]) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    for (k, v) in extra_trailers {
        trailers.insert(*k, HeaderValue::from_static(v));
    }
    let body = Full::new(framed(message))
        .map_err(|never: Infallible| match never {})
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed_unsync();
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .expect("response")
}

/// A trailers-only gRPC error.
pub fn trailers_only(code: u32, message: &'static str) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", code.to_string())
        .header("grpc-message", message)
        .body(
            Empty::new()
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
        )
        .expect("response")
}
