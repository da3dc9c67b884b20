//! The simulator's HTTP/1.1 front-end (hyper): the streaming routes with their SPDY upgrade,
//! and the JSON CRI endpoints.
//!
//! Streaming request processing, in the kubelet library's order (protocol.md §2.2): route,
//! consume the token (404 if unknown, expired, used or of another kind), WebSocket check,
//! protocol negotiation (400/403), upgrade-header check (400), 101 and hand-over of the
//! connection to a session.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};

use super::handshake::{self, HEADER_PROTOCOL_VERSION, Refusal, SPDY_31};
use super::{Cached, Shared, SimError, portforward, remotecommand};

/// containerd's `ReadHeaderTimeout` for its streaming server.
const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Largest JSON CRI request body accepted.
const MAX_CRI_BODY: usize = 1 << 20;
/// Answer to a WebSocket upgrade; the simulator speaks only SPDY for now.
const WEBSOCKET_REFUSAL: &str = "websocket not supported by runtime-sim";

type Body = Full<Bytes>;

/// Accepts connections until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Go's net package (containerd) turns Nagle off on every TCP connection; so
                // must we, or small writes at the end of a burst wait for a delayed ACK.
                let _ = stream.set_nodelay(true);
                tracing::debug!(%peer, "runtime simulator connection");
                shared.spawn(serve_connection(stream, shared.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "runtime simulator accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let conn = http1::Builder::new()
        // Go writes canonical header names; so do we (X-Stream-Protocol-Version, ...).
        .title_case_headers(true)
        .timer(TokioTimer::new())
        .header_read_timeout(READ_HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "runtime simulator connection ended with an error");
    }
}

/// The three streaming operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Exec,
    Attach,
    PortForward,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if let Some(call) = path.strip_prefix("/cri/") {
        return cri(&shared, call, req).await;
    }
    let base = shared.config().normalized_base_path();
    let Some((op, token)) = route(&base, &path) else {
        return restful_error(StatusCode::NOT_FOUND, "404: Page Not Found");
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        return restful_error(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
    }
    streaming(shared, op, token, req)
}

/// `<base>/exec/{token}` and friends; the token is one non-empty path segment.
fn route<'a>(base: &str, path: &'a str) -> Option<(Op, &'a str)> {
    let rest = path.strip_prefix(base)?;
    let (op, token) = rest.strip_prefix('/')?.split_once('/')?;
    if token.is_empty() || token.contains('/') {
        return None;
    }
    let op = match op {
        "exec" => Op::Exec,
        "attach" => Op::Attach,
        "portforward" => Op::PortForward,
        _ => return None,
    };
    Some((op, token))
}

fn streaming(
    shared: Arc<Shared>,
    op: Op,
    token: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    // The token is spent whatever happens next.
    let cached = match (op, shared.consume(token)) {
        (Op::Exec, Some(c @ Cached::Exec(_)))
        | (Op::Attach, Some(c @ Cached::Attach(_)))
        | (Op::PortForward, Some(c @ Cached::PortForward(_))) => c,
        _ => return go_error(StatusCode::NOT_FOUND, "404 page not found", &[]),
    };
    let headers = req.headers();
    if handshake::is_websocket_request(headers) {
        return go_error(StatusCode::BAD_REQUEST, WEBSOCKET_REFUSAL, &[]);
    }
    let supported: &[&'static str] = match op {
        Op::Exec | Op::Attach => &handshake::REMOTE_COMMAND_PROTOCOLS,
        Op::PortForward => &handshake::PORT_FORWARD_PROTOCOLS,
    };
    let protocol = match handshake::negotiate(headers, supported) {
        Ok(p) => p,
        Err(refusal) => return refusal_response(&refusal, &[]),
    };
    // The negotiated protocol header is already set when the upgrader refuses.
    if let Err(refusal) = handshake::check_upgrade_headers(headers) {
        return refusal_response(&refusal, &[(HEADER_PROTOCOL_VERSION, protocol)]);
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_shared = shared.clone();
    shared.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade to SPDY failed");
                return;
            }
        };
        // Unwrap hyper's wrapper to get the socket and the bytes read past the request head.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                run_session(
                    session_shared,
                    parts.io.into_inner(),
                    parts.read_buf,
                    protocol,
                    cached,
                )
                .await;
            }
            Err(upgraded) => {
                run_session(
                    session_shared,
                    TokioIo::new(upgraded),
                    Bytes::new(),
                    protocol,
                    cached,
                )
                .await;
            }
        }
    });

    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(HEADER_PROTOCOL_VERSION, HeaderValue::from_static(protocol));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static(SPDY_31));
    resp
}

async fn run_session<IO>(
    shared: Arc<Shared>,
    io: IO,
    leftover: Bytes,
    protocol: &'static str,
    cached: Cached,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    match cached {
        Cached::Exec(req) => remotecommand::serve_exec(shared, io, leftover, protocol, req).await,
        Cached::Attach(req) => {
            remotecommand::serve_attach(shared, io, leftover, protocol, req).await
        }
        Cached::PortForward(req) => portforward::serve(shared, io, leftover, req).await,
    }
}

fn refusal_response(refusal: &Refusal, extra: &[(&'static str, &'static str)]) -> Response<Body> {
    let mut headers: Vec<(&'static str, String)> =
        extra.iter().map(|(n, v)| (*n, (*v).to_owned())).collect();
    headers.extend(refusal.headers.iter().cloned());
    go_error(refusal.status, &refusal.text, &headers)
}

/// Go's `http.Error`.
fn go_error(status: StatusCode, text: &str, headers: &[(&'static str, String)]) -> Response<Body> {
    let mut resp = Response::new(Body::from(format!("{text}\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.append(*name, v);
        }
    }
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// go-restful's answer for an unrouted path or method: the text, no newline, sniffed type.
fn restful_error(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[derive(Serialize)]
struct UrlAnswer {
    url: String,
}

#[derive(Serialize)]
struct ErrorAnswer<'a> {
    code: &'a str,
    message: String,
}

async fn cri(shared: &Shared, call: &str, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return restful_error(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
    }
    let result = match call {
        "exec" => body(req).await.and_then(|r| shared.exec(r)).map(url_json),
        "attach" => body(req).await.and_then(|r| shared.attach(r)).map(url_json),
        "portforward" => body(req)
            .await
            .and_then(|r| shared.port_forward(r))
            .map(url_json),
        "containers" => body(req)
            .await
            .and_then(|spec| shared.create_container(spec))
            .map(|()| (StatusCode::CREATED, "{}".to_owned())),
        _ => return restful_error(StatusCode::NOT_FOUND, "404: Page Not Found"),
    };
    let (status, text) = match result {
        Ok(ok) => ok,
        Err(e) => {
            let answer = ErrorAnswer {
                code: e.grpc_code(),
                message: e.to_string(),
            };
            (
                e.http_status(),
                serde_json::to_string(&answer).expect("serialisable"),
            )
        }
    };
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::TOO_MANY_REQUESTS {
        // As the kubelet answers ResourceExhausted: wait out the token TTL.
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("60"));
    }
    resp
}

fn url_json(url: String) -> (StatusCode, String) {
    (
        StatusCode::OK,
        serde_json::to_string(&UrlAnswer { url }).expect("serialisable"),
    )
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, SimError> {
    let bytes = Limited::new(req.into_body(), MAX_CRI_BODY)
        .collect()
        .await
        .map_err(|e| SimError::InvalidArgument(format!("reading request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| SimError::InvalidArgument(format!("invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_routes_take_one_token_segment_under_the_base_path() {
        assert_eq!(route("", "/exec/abc"), Some((Op::Exec, "abc")));
        assert_eq!(route("", "/attach/abc"), Some((Op::Attach, "abc")));
        assert_eq!(
            route("", "/portforward/abc"),
            Some((Op::PortForward, "abc"))
        );
        assert_eq!(route("/base", "/base/exec/abc"), Some((Op::Exec, "abc")));
        assert_eq!(route("/base", "/exec/abc"), None);
        assert_eq!(route("", "/exec/"), None);
        assert_eq!(route("", "/exec/a/b"), None);
        assert_eq!(route("", "/port-forward/abc"), None);
    }
}
