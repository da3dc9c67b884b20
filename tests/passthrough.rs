//! Pass-through (protocol.md §13.4) over real TCP: a hyper server in the test serves
//! `bridge::passthrough` for every request, mapping `http://<bridge>/<path>` to
//! `http://<runtime>/<path>`. The runtime is the legacy-runtime simulator (SPDY), a tiny
//! tokio-tungstenite echo server (WebSocket), or a scripted raw-TCP runtime that records what it
//! was sent.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server as ws_server;
use ws_spdy_bridge::bridge::passthrough::{PassthroughConfig, passthrough};
use ws_spdy_bridge::connection::ConnectionConfig;
use ws_spdy_bridge::runtime_sim::{ExecRequest, RuntimeSim, SimConfig};
use ws_spdy_bridge::status::Status;
use ws_spdy_bridge::upstream::remotecommand::{
    DEFAULT_ERROR_STREAM_CAP, Outcome, Protocol, RemoteCommand, StreamOptions,
};
use ws_spdy_bridge::upstream::{
    self, RefusalBody, UpgradeRequest, UpstreamConfig, UpstreamError,
    X_ACCEPTED_STREAM_PROTOCOL_VERSIONS,
};

/// What client-go's SPDY executor offers, most preferred first.
const CLIENT_GO_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// A token-shaped path for the scripted runtimes.
const EXEC_PATH: &str = "/exec/Vh2Ua5Zr";

/// Bound on each test body: a hang fails fast instead of stalling the suite.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test did not finish within 10 s")
}

/// Short limits, so that a failing test fails fast.
fn upstream_config() -> UpstreamConfig {
    UpstreamConfig {
        connect_timeout: Duration::from_secs(5),
        response_header_timeout: Duration::from_secs(5),
        error_body_timeout: Duration::from_secs(5),
        ..UpstreamConfig::default()
    }
}

/// Starts the bridge under test in front of `runtime`; returns its address.
async fn bridge(runtime: SocketAddr, cfg: PassthroughConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Arc::new(cfg);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let cfg = cfg.clone();
                    async move {
                        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                        let url: Uri = format!("http://{runtime}{path}").parse().unwrap();
                        Ok::<_, Infallible>(passthrough(req, url, Some(peer), &cfg).await)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn default_bridge(runtime: SocketAddr) -> SocketAddr {
    bridge(
        runtime,
        PassthroughConfig {
            upstream: upstream_config(),
            ..PassthroughConfig::default()
        },
    )
    .await
}

/// `url` (a runtime URL) with the bridge's address instead of the runtime's.
fn via(bridge: SocketAddr, url: &str) -> Uri {
    let url: Uri = url.parse().unwrap();
    format!("http://{bridge}{}", url.path_and_query().unwrap())
        .parse()
        .unwrap()
}

fn exec_request(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        container_id: "ctr".into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        stdout: true,
        ..ExecRequest::default()
    }
}

/// A SPDY upgrade through `url`, expected to be refused.
async fn refused(url: &Uri, protocols: &[&str]) -> UpstreamError {
    upstream::upgrade_spdy(url, protocols, &upstream_config())
        .await
        .expect_err("upgrade should be refused")
}

fn lines(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// A refusal's status, headers that matter (no `Date`, no `Connection`) and raw body.
fn refusal_parts(e: UpstreamError) -> (StatusCode, Vec<(String, String)>, Bytes) {
    let UpstreamError::Refused {
        status,
        headers,
        raw_body,
        ..
    } = e
    else {
        panic!("not a refusal: {e}");
    };
    let mut kept: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| *n != http::header::DATE && *n != http::header::CONNECTION)
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    kept.sort();
    (status, kept, raw_body)
}

#[tokio::test]
async fn spdy_exec_runs_through_the_passthrough_against_the_runtime() {
    bounded(async {
        let sim = RuntimeSim::start(SimConfig::default()).await.unwrap();
        let bridge = default_bridge(sim.addr()).await;
        let url = sim.exec(exec_request(&["echo", "hi"])).unwrap();

        let opts = StreamOptions {
            stdout: true,
            ..StreamOptions::default()
        };
        let conn = ConnectionConfig {
            ping_interval: None,
            ..ConnectionConfig::client()
        };
        let mut session = RemoteCommand::start(&via(bridge, &url), opts, &upstream_config(), conn)
            .await
            .expect("exec through the pass-through");
        assert_eq!(session.protocol, Protocol::V4);
        let mut stdout = session.stdout.take().unwrap();
        let mut output = Vec::new();
        while let Some(piece) = stdout.recv().await {
            output.extend_from_slice(&piece);
        }
        assert_eq!(output, b"hi\n");
        assert_eq!(
            session.read_outcome(DEFAULT_ERROR_STREAM_CAP).await,
            Outcome::Success
        );
        session.close().await;
        assert_eq!(sim.outstanding_tokens(), 0);
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn spent_token_gets_the_runtimes_exact_404() {
    bounded(async {
        let sim = RuntimeSim::start(SimConfig::default()).await.unwrap();
        let bridge = default_bridge(sim.addr()).await;
        let url = sim.exec(exec_request(&["true"])).unwrap();
        // Spend the token directly.
        let direct_url: Uri = url.parse().unwrap();
        drop(upstream::upgrade_spdy(&direct_url, CLIENT_GO_PROTOCOLS, &upstream_config()).await);

        let through = refused(&via(bridge, &url), CLIENT_GO_PROTOCOLS).await;
        let direct = refused(&direct_url, CLIENT_GO_PROTOCOLS).await;
        let (status, headers, body) = refusal_parts(through);
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, "404 page not found\n");
        assert!(headers.contains(&("content-type".into(), "text/plain; charset=utf-8".into())));
        assert!(headers.contains(&("x-content-type-options".into(), "nosniff".into())));
        assert_eq!((status, headers, body), refusal_parts(direct));
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn protocol_mismatch_gets_the_runtimes_403_with_its_accepted_versions() {
    bounded(async {
        let sim = RuntimeSim::start(SimConfig::default()).await.unwrap();
        let bridge = default_bridge(sim.addr()).await;
        let offer = ["v9.channel.k8s.io"];
        let through_url = sim.exec(exec_request(&["true"])).unwrap();
        let direct_url = sim.exec(exec_request(&["true"])).unwrap();

        let through = refused(&via(bridge, &through_url), &offer).await;
        let UpstreamError::Refused { headers, .. } = &through else {
            panic!("not a refusal: {through}");
        };
        assert_eq!(
            lines(headers, X_ACCEPTED_STREAM_PROTOCOL_VERSIONS),
            [
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io",
                "channel.k8s.io"
            ]
        );
        let direct = refused(&direct_url.parse().unwrap(), &offer).await;
        let (status, headers, body) = refusal_parts(through);
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            body,
            "unable to upgrade: unable to negotiate protocol: client supports \
             [v9.channel.k8s.io], server accepts [v4.channel.k8s.io v3.channel.k8s.io \
             v2.channel.k8s.io channel.k8s.io]\n"
        );
        assert_eq!((status, headers, body), refusal_parts(direct));
        // Each token was spent once, by the runtime.
        assert_eq!(sim.outstanding_tokens(), 0);
        sim.shutdown().await;
    })
    .await;
}

/// A WebSocket "runtime" that echoes data messages, reports each handshake's request headers
/// and each connection's end, and picks `channel.k8s.io` when offered.
struct WsRuntime {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<HeaderMap>,
    ended: mpsc::UnboundedReceiver<()>,
}

async fn ws_echo_runtime() -> WsRuntime {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (requests_tx, requests) = mpsc::unbounded_channel();
    let (ended_tx, ended) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let requests_tx = requests_tx.clone();
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                // The error type is tungstenite's, not ours to shrink.
                #[allow(clippy::result_large_err)]
                let callback = move |req: &ws_server::Request, mut resp: ws_server::Response| {
                    let _ = requests_tx.send(req.headers().clone());
                    let offered = req
                        .headers()
                        .get_all("sec-websocket-protocol")
                        .iter()
                        .flat_map(|v| v.to_str().unwrap().split(','))
                        .any(|p| p.trim() == "channel.k8s.io");
                    if offered {
                        resp.headers_mut().insert(
                            "Sec-WebSocket-Protocol",
                            http::HeaderValue::from_static("channel.k8s.io"),
                        );
                    }
                    Ok(resp)
                };
                if let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = ended_tx.send(());
            });
        }
    });
    WsRuntime {
        addr,
        requests,
        ended,
    }
}

type ClientWs = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A legacy WebSocket attach through the bridge, with credentials the runtime must not see.
async fn ws_client(bridge: SocketAddr) -> (ClientWs, http::Response<Option<Vec<u8>>>) {
    let mut request = format!("ws://{bridge}/attach/Vh2Ua5Zr")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    for (name, value) in [
        (
            "Sec-WebSocket-Protocol",
            "base64.channel.k8s.io, channel.k8s.io",
        ),
        ("Authorization", "Bearer secret-token"),
        ("Cookie", "session=secret"),
        ("Origin", "http://client.example"),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    let stream = TcpStream::connect(bridge).await.unwrap();
    tokio_tungstenite::client_async(request, stream)
        .await
        .expect("WebSocket handshake through the bridge")
}

#[tokio::test]
async fn websocket_upgrade_reaches_the_runtime_and_messages_echo() {
    bounded(async {
        let mut runtime = ws_echo_runtime().await;
        let bridge = default_bridge(runtime.addr).await;
        let (mut ws, response) = ws_client(bridge).await;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            lines(response.headers(), "sec-websocket-protocol"),
            ["channel.k8s.io"]
        );

        let seen = runtime.requests.recv().await.unwrap();
        assert!(seen.get("authorization").is_none());
        assert!(seen.get("cookie").is_none());
        assert_eq!(
            lines(&seen, "sec-websocket-protocol"),
            ["base64.channel.k8s.io, channel.k8s.io"]
        );
        assert_eq!(lines(&seen, "origin"), ["http://client.example"]);
        assert_eq!(lines(&seen, "x-forwarded-for"), ["127.0.0.1"]);

        for msg in [
            Message::binary(&b"\x00hello"[..]),
            Message::text("text too"),
            Message::binary(vec![7u8; 200_000]),
        ] {
            ws.send(msg.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), msg);
        }
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        runtime.ended.recv().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn client_vanishing_ends_the_runtime_connection() {
    bounded(async {
        let mut runtime = ws_echo_runtime().await;
        let bridge = default_bridge(runtime.addr).await;
        let (mut ws, _) = ws_client(bridge).await;
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
        // No close handshake: the TCP connection just goes.
        drop(ws);
        runtime.ended.recv().await.unwrap();
    })
    .await;
}

/// What a scripted runtime does after reading a request head.
#[derive(Clone)]
enum Script {
    /// Write this response and close.
    Respond(&'static str),
    /// Never answer; hold the connection.
    Silent,
    /// Write `head` (a 101, possibly followed by early bytes) in one write, then echo
    /// everything until EOF, then close.
    UpgradeEcho(&'static [u8]),
    /// Write `head`, read to EOF (reporting what was read), then write `reply` and close.
    UpgradeReplyAfterEof(&'static [u8], &'static [u8]),
    /// Write `head`, then close the whole connection.
    UpgradeThenClose(&'static [u8]),
}

/// A raw-TCP runtime: counts connections and reports each request head (and, for
/// `UpgradeReplyAfterEof`, the bytes read after it).
struct ScriptedRuntime {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: mpsc::UnboundedReceiver<String>,
    received: mpsc::UnboundedReceiver<Vec<u8>>,
}

async fn scripted_runtime(script: Script) -> ScriptedRuntime {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (heads_tx, heads) = mpsc::unbounded_channel();
    let (received_tx, received) = mpsc::unbounded_channel();
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (script, heads_tx, received_tx) =
                (script.clone(), heads_tx.clone(), received_tx.clone());
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                let _ = heads_tx.send(head);
                match script {
                    Script::Respond(response) => {
                        let _ = stream.write_all(response.as_bytes()).await;
                    }
                    Script::Silent => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Script::UpgradeEcho(head) => {
                        stream.write_all(head).await.unwrap();
                        let (mut r, mut w) = stream.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                    Script::UpgradeReplyAfterEof(head, reply) => {
                        stream.write_all(head).await.unwrap();
                        let mut got = Vec::new();
                        stream.read_to_end(&mut got).await.unwrap();
                        let _ = received_tx.send(got);
                        stream.write_all(reply).await.unwrap();
                    }
                    Script::UpgradeThenClose(head) => {
                        stream.write_all(head).await.unwrap();
                    }
                }
            });
        }
    });
    ScriptedRuntime {
        addr,
        connections,
        heads,
        received,
    }
}

/// Reads one request head through its blank line, byte by byte (nothing past it).
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if s.read_exact(&mut byte).await.is_err() {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Sends `request` to the bridge as raw bytes and reads the whole answer (the bridge closes
/// after every non-101 answer). Returns status, headers and body.
async fn raw_exchange(bridge: SocketAddr, request: &str) -> (u16, HeaderMap, Vec<u8>) {
    let mut stream = TcpStream::connect(bridge).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(len) = response.parse(&raw).unwrap() else {
        panic!("incomplete response: {:?}", String::from_utf8_lossy(&raw));
    };
    let mut headers = HeaderMap::new();
    for h in response.headers.iter() {
        headers.append(
            http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(h.value).unwrap(),
        );
    }
    (response.code.unwrap(), headers, raw[len..].to_vec())
}

fn status_body(body: &[u8]) -> Status {
    serde_json::from_slice(body).expect("a Status JSON body")
}

const RAW_WEBSOCKET_REQUEST: &str = "GET /attach/Vh2Ua5Zr?stdout=1 HTTP/1.1\r\n\
    Host: bridge.example\r\n\
    Connection: Upgrade\r\n\
    Upgrade: websocket\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Protocol: v4.channel.k8s.io, channel.k8s.io\r\n\
    Origin: http://client.example\r\n\
    User-Agent: kubectl/v1.20.0\r\n\
    Authorization: Bearer secret-token\r\n\
    Cookie: session=secret\r\n\
    Proxy-Authorization: Basic c2VjcmV0\r\n\
    X-Stream-Protocol-Version: v4.channel.k8s.io, v3.channel.k8s.io\r\n\
    X-Stream-Protocol-Version: channel.k8s.io\r\n\
    X-Forwarded-For: 10.0.0.1\r\n\
    X-Custom: not for the runtime\r\n\
    \r\n";

#[tokio::test]
async fn only_what_the_runtime_reads_is_forwarded_and_never_credentials() {
    bounded(async {
        let mut runtime = scripted_runtime(Script::Respond(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\
             X-Content-Type-Options: nosniff\r\nContent-Length: 5\r\n\r\nnope\n",
        ))
        .await;
        let bridge = default_bridge(runtime.addr).await;
        let (status, headers, body) = raw_exchange(bridge, RAW_WEBSOCKET_REQUEST).await;
        assert_eq!(status, 403);
        assert_eq!(body, b"nope\n");
        assert_eq!(
            lines(&headers, "content-type"),
            ["text/plain; charset=utf-8"]
        );
        assert_eq!(lines(&headers, "x-content-type-options"), ["nosniff"]);

        let head = runtime.heads.recv().await.unwrap();
        let mut head_lines = head.lines();
        assert_eq!(
            head_lines.next(),
            Some("GET /attach/Vh2Ua5Zr?stdout=1 HTTP/1.1")
        );
        let fields: Vec<(String, String)> = head_lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let values = |name: &str| -> Vec<&str> {
            fields
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        for secret in ["authorization", "cookie", "proxy-authorization", "x-custom"] {
            assert!(values(secret).is_empty(), "{secret} was forwarded: {head}");
        }
        assert!(!head.contains("secret"), "a credential leaked: {head}");
        assert_eq!(values("upgrade"), ["websocket"]);
        assert_eq!(values("connection"), ["Upgrade"]);
        assert_eq!(values("sec-websocket-key"), ["dGhlIHNhbXBsZSBub25jZQ=="]);
        assert_eq!(values("sec-websocket-version"), ["13"]);
        assert_eq!(
            values("sec-websocket-protocol"),
            ["v4.channel.k8s.io, channel.k8s.io"]
        );
        assert_eq!(values("origin"), ["http://client.example"]);
        assert_eq!(
            values("x-stream-protocol-version"),
            ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
        assert_eq!(values("x-forwarded-for"), ["10.0.0.1, 127.0.0.1"]);
        assert_eq!(
            values("content-length"),
            Vec::<&str>::new(),
            "GET has no body"
        );
        assert_eq!(runtime.connections.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn runtime_down_is_a_502_status_without_the_token() {
    bounded(async {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let bridge = default_bridge(dead).await;
        let e = refused(
            &via(bridge, &format!("http://x{EXEC_PATH}")),
            CLIENT_GO_PROTOCOLS,
        )
        .await;
        let UpstreamError::Refused {
            status,
            body: RefusalBody::Status(body),
            headers,
            ..
        } = e
        else {
            panic!("not a Status refusal: {e}");
        };
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(lines(&headers, "content-type"), ["application/json"]);
        assert_eq!((body.kind.as_str(), body.code), ("Status", 502));
        assert_eq!(body.status, "Failure");
        assert_eq!(
            body.message,
            format!(
                "error sending request: Post \"http://{dead}/exec/Vh2U…\": dial tcp {dead}: \
                 connect: connection refused"
            )
        );
        assert!(!body.message.contains("Vh2Ua5Zr"));
    })
    .await;
}

#[tokio::test]
async fn silent_runtime_is_a_504_status_after_one_attempt() {
    bounded(async {
        let runtime = scripted_runtime(Script::Silent).await;
        let bridge = bridge(
            runtime.addr,
            PassthroughConfig {
                upstream: UpstreamConfig {
                    response_header_timeout: Duration::from_millis(200),
                    ..upstream_config()
                },
                ..PassthroughConfig::default()
            },
        )
        .await;
        let request = format!(
            "POST {EXEC_PATH} HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\
             Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        );
        let (status, _, body) = raw_exchange(bridge, &request).await;
        assert_eq!(status, 504);
        let body = status_body(&body);
        assert_eq!((body.code, body.reason.as_str()), (504, "Timeout"));
        assert!(
            body.message
                .ends_with("net/http: timeout awaiting response headers"),
            "{}",
            body.message
        );
        assert_eq!(runtime.connections.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn success_without_switching_is_a_502_invalid_upgrade_response() {
    bounded(async {
        // What kubelet-lib 1.18–1.34 runtimes answer to a request without protocols.
        let runtime = scripted_runtime(Script::Respond(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        let bridge = default_bridge(runtime.addr).await;
        let e = refused(&via(bridge, &format!("http://x{EXEC_PATH}")), &[]).await;
        let status = e.status().expect("a Status body").clone();
        assert_eq!(e.http_status(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(status.message, "invalid upgrade response: status code 200");
        assert_eq!(status.code, 502);
        assert_eq!(runtime.connections.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn redirect_is_not_followed() {
    bounded(async {
        let elsewhere = scripted_runtime(Script::Silent).await;
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 302 Found\r\nLocation: http://{}{EXEC_PATH}\r\nContent-Length: 0\r\n\r\n",
                elsewhere.addr
            )
            .into_boxed_str(),
        );
        let runtime = scripted_runtime(Script::Respond(response)).await;
        let bridge = default_bridge(runtime.addr).await;
        let e = refused(
            &via(bridge, &format!("http://x{EXEC_PATH}")),
            CLIENT_GO_PROTOCOLS,
        )
        .await;
        assert_eq!(e.http_status(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(
            e.status().unwrap().message,
            "invalid upgrade response: status code 302"
        );
        assert_eq!(runtime.connections.load(Ordering::SeqCst), 1);
        assert_eq!(elsewhere.connections.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn request_without_a_known_upgrade_is_refused_without_asking_the_runtime() {
    bounded(async {
        let runtime = scripted_runtime(Script::Silent).await;
        let bridge = default_bridge(runtime.addr).await;
        let request = format!(
            "GET {EXEC_PATH} HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        );
        let (status, _, body) = raw_exchange(bridge, &request).await;
        assert_eq!(status, 400);
        assert_eq!(status_body(&body).reason, "BadRequest");
        assert_eq!(runtime.connections.load(Ordering::SeqCst), 0);
    })
    .await;
}

const SPDY_101: &str = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                        Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n";

#[tokio::test]
async fn bytes_sent_with_the_101_reach_the_client_first() {
    bounded(async {
        let head: &'static [u8] = Box::leak([SPDY_101.as_bytes(), b"early"].concat().into());
        let runtime = scripted_runtime(Script::UpgradeEcho(head)).await;
        let bridge = default_bridge(runtime.addr).await;
        let url = via(bridge, &format!("http://x{EXEC_PATH}"));
        let upgraded = upstream::upgrade(
            &url,
            &UpgradeRequest::spdy(&["v4.channel.k8s.io"]),
            &upstream_config(),
        )
        .await
        .expect("101 through the bridge");
        assert_eq!(upgraded.protocol.as_deref(), Some("v4.channel.k8s.io"));
        assert_eq!(lines(&upgraded.headers, "upgrade"), ["SPDY/3.1"]);
        assert_eq!(lines(&upgraded.headers, "connection"), ["Upgrade"]);
        assert!(upgraded.headers.get("content-length").is_none());
        assert!(upgraded.headers.get("transfer-encoding").is_none());

        let mut got = upgraded.leftover.to_vec();
        let mut io = upgraded.io;
        while got.len() < 5 {
            let mut buf = [0u8; 16];
            let n = io.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "EOF before the early bytes");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"early");
        io.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        io.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        assert_eq!(runtime.connections.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn client_fin_reaches_the_runtime_and_its_reply_still_arrives() {
    bounded(async {
        let mut runtime =
            scripted_runtime(Script::UpgradeReplyAfterEof(SPDY_101.as_bytes(), b"bye")).await;
        let bridge = default_bridge(runtime.addr).await;
        let url = via(bridge, &format!("http://x{EXEC_PATH}"));
        let upgraded = upstream::upgrade(
            &url,
            &UpgradeRequest::spdy(&["v4.channel.k8s.io"]),
            &upstream_config(),
        )
        .await
        .expect("101 through the bridge");
        let mut io = upgraded.io;
        io.write_all(b"data").await.unwrap();
        io.shutdown().await.unwrap();
        assert_eq!(runtime.received.recv().await.unwrap(), b"data");
        let mut reply = upgraded.leftover.to_vec();
        io.read_to_end(&mut reply).await.unwrap();
        // The runtime closed after its reply, and the bridge passed that on.
        assert_eq!(reply, b"bye");
    })
    .await;
}

#[tokio::test]
async fn runtime_closing_reaches_the_client_as_eof() {
    bounded(async {
        let head: &'static [u8] = Box::leak([SPDY_101.as_bytes(), b"last"].concat().into());
        let runtime = scripted_runtime(Script::UpgradeThenClose(head)).await;
        let bridge = default_bridge(runtime.addr).await;
        let url = via(bridge, &format!("http://x{EXEC_PATH}"));
        let upgraded = upstream::upgrade(
            &url,
            &UpgradeRequest::spdy(&["v4.channel.k8s.io"]),
            &upstream_config(),
        )
        .await
        .expect("101 through the bridge");
        // The client never closes its side; the runtime's close still ends its reads.
        let mut got = upgraded.leftover.to_vec();
        let mut io = upgraded.io;
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");
    })
    .await;
}
