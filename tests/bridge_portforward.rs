//! Port-forward over WebSocket through the bridge (protocol.md §6, §7; checklist C-71…C-81),
//! over real TCP. The runtime is the legacy-runtime simulator (SPDY port-forward, dialing
//! 127.0.0.1:PORT as its "pod network") or, where the test needs to see or script raw bytes, a
//! scripted runtime in the test. The "pod" ports are small HTTP and echo servers here.
//!
//! The tunnel cases drive a real SPDY port-forward session (`ws_spdy_bridge::connection`, client
//! role, as kubectl's spdystream would) over a WebSocket that the test cuts into messages of 1
//! and 4 bytes, empty messages and larger ones, as client-go's tunnelling connection does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use ws_spdy_bridge::bridge::portforward::tunnel::{self, TunnelConfig};
use ws_spdy_bridge::connection::{self, ConnectionConfig, Handle, Stream, StreamReader};
use ws_spdy_bridge::runtime_sim::{PortForwardRequest, RuntimeSim, SimConfig};
use ws_spdy_bridge::server::{Bridge, BridgeConfig};
use ws_spdy_bridge::spdy::HeaderBlock;
use ws_spdy_bridge::tokens::{self, TokenStore};
use ws_spdy_bridge::upstream::{self, UpstreamConfig};

const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
const SANDBOX: &str = "sandbox-pf-1";
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The HTTP pod's answer body.
const BODY: &str = "hello through the port-forward\n";
/// Message sizes the test client cuts its byte stream into, cyclically (0: an empty message).
const SPLIT_TINY: &[usize] = &[4, 4, 1, 0, 1, 1, 4, 0, 7, 4];

/// Bound on each test body: a hang fails fast instead of stalling the suite.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .expect("test did not finish within 15 s")
}

fn upstream_config() -> UpstreamConfig {
    UpstreamConfig {
        connect_timeout: Duration::from_secs(5),
        response_header_timeout: Duration::from_secs(5),
        error_body_timeout: Duration::from_secs(5),
        ..UpstreamConfig::default()
    }
}

/// A bridge in front of `runtime` (`http://host:port`).
async fn bridge(runtime: &str) -> Bridge {
    Bridge::start(BridgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: runtime.parse().unwrap(),
        upstream_cfg: upstream_config(),
        ..BridgeConfig::default()
    })
    .await
    .expect("bridge starts")
}

/// The simulator and a bridge in front of it.
struct Env {
    sim: RuntimeSim,
    bridge: Bridge,
}

impl Env {
    async fn start() -> Env {
        let sim = RuntimeSim::start(SimConfig::default()).await.unwrap();
        let bridge = bridge(&format!("http://{}", sim.addr())).await;
        Env { sim, bridge }
    }

    /// A fresh port-forward token's path on the bridge (`/portforward/TOKEN`).
    fn token_path(&self, ports: &[u16]) -> String {
        let url = self
            .sim
            .port_forward(PortForwardRequest {
                pod_sandbox_id: SANDBOX.into(),
                ports: ports.to_vec(),
            })
            .unwrap();
        let url: http::Uri = url.parse().unwrap();
        url.path().to_owned()
    }

    fn addr(&self) -> SocketAddr {
        self.bridge.addr()
    }
}

// ---- the pod's ports --------------------------------------------------------------------------

/// An HTTP server that answers one request per connection with [`BODY`] and closes.
async fn http_pod() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    port
}

/// A server that echoes every connection until the client half-closes.
async fn echo_pod() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = conn.into_split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    port
}

/// A port nobody listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn http_request() -> &'static [u8] {
    b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n"
}

fn assert_http_ok(response: &[u8]) {
    let text = String::from_utf8_lossy(response);
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text:?}");
    assert!(text.ends_with(BODY), "{text:?}");
}

// ---- a raw WebSocket client -------------------------------------------------------------------

/// The answer to a hand-written upgrade request.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    stream: TcpStream,
    /// Bytes read past the response head (for a 101: the first WebSocket frames).
    leftover: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    async fn websocket(self) -> WebSocketStream<TcpStream> {
        assert_eq!(
            self.status,
            101,
            "body {:?}",
            String::from_utf8_lossy(&self.body)
        );
        WebSocketStream::from_partially_read(self.stream, self.leftover, Role::Client, None).await
    }
}

/// Sends a WebSocket upgrade for `path` offering `protocols` (one header line, as client-go
/// sends it; `None`: no header) and reads the answer: head, and for a refusal the body.
async fn upgrade(addr: SocketAddr, path: &str, protocols: Option<&str>) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocols {
        req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    read_answer(stream).await
}

async fn read_answer(mut stream: TcpStream) -> Answer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut slots);
        if let httparse::Status::Complete(n) = resp.parse(&buf).unwrap() {
            let status = resp.code.unwrap();
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let mut rest = buf[n..].to_vec();
            let mut body = Vec::new();
            if status != 101 {
                let len: Option<usize> = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok());
                body.append(&mut rest);
                while len.is_none_or(|l| body.len() < l) {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => body.extend_from_slice(&chunk[..k]),
                    }
                }
            }
            return Answer {
                status,
                headers,
                body,
                stream,
                leftover: rest,
            };
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The next message, failing the test after 5 s.
async fn next_message(ws: &mut WebSocketStream<TcpStream>) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no message within 5 s")
        .map(|m| m.expect("WebSocket read"))
}

/// Reads until a Close frame; returns it and the binary payloads before it, concatenated.
async fn read_until_close(ws: &mut WebSocketStream<TcpStream>) -> (Option<CloseFrame>, Vec<u8>) {
    let mut data = Vec::new();
    loop {
        match next_message(ws).await {
            Some(Message::Binary(b)) => data.extend_from_slice(&b),
            Some(Message::Close(frame)) => return (frame, data),
            Some(Message::Text(t)) => panic!("text message {t:?} in a tunnel"),
            Some(_) => {}
            None => panic!("connection ended without a Close frame"),
        }
    }
}

// ---- SPDY port-forward over a WebSocket cut into small messages -------------------------------

/// Carries a byte stream over `ws`: bytes written to the returned end go out as binary messages
/// cut per `split` (cyclically; 0 is an empty message); binary messages come back as bytes,
/// empty ones skipped; a Close ends the stream. What client-go's tunnelling connection does.
fn bytes_over_websocket(
    ws: WebSocketStream<TcpStream>,
    split: &'static [usize],
) -> (DuplexStream, JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let task = tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let up = async {
            let mut buf = vec![0u8; 64 * 1024];
            let mut k = 0;
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let take = split[k % split.len()].min(rest.len());
                    k += 1;
                    let msg = Message::Binary(Bytes::copy_from_slice(&rest[..take]));
                    if sink.feed(msg).await.is_err() {
                        return;
                    }
                    rest = &rest[take..];
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await;
        };
        let down = async {
            while let Some(Ok(msg)) = stream.next().await {
                match msg {
                    Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                    Message::Binary(_) => {}
                    Message::Text(t) => panic!("text message {t:?} in a tunnel"),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
        };
        tokio::join!(up, down);
    });
    (ours, task)
}

/// A SPDY port-forward client session through the bridge's tunnel at `path`.
async fn tunnel_session(addr: SocketAddr, path: &str, split: &'static [usize]) -> Handle {
    let answer = upgrade(addr, path, Some(TUNNEL)).await;
    assert_eq!(answer.header("sec-websocket-protocol"), Some(TUNNEL));
    let ws = answer.websocket().await;
    let (io, _pump) = bytes_over_websocket(ws, split);
    let (handle, _incoming) = connection::spawn(io, Bytes::new(), ConnectionConfig::client());
    handle
}

fn pf_headers(kind: &str, port: u16, request_id: u32) -> HeaderBlock {
    HeaderBlock::new()
        .with("streamtype", kind)
        .with("port", port.to_string())
        .with("requestid", request_id.to_string())
}

/// client-go's order: the error stream, half-closed at once, then the data stream.
async fn open_pair(handle: &Handle, port: u16, request_id: u32) -> (StreamReader, Stream) {
    let error = handle
        .open_stream(pf_headers("error", port, request_id))
        .await
        .expect("error stream");
    let (error_reader, mut error_writer) = error.split();
    error_writer.finish().await.unwrap();
    let data = handle
        .open_stream(pf_headers("data", port, request_id))
        .await
        .expect("data stream");
    (error_reader, data)
}

async fn read_stream(reader: &mut StreamReader) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(piece) = reader.recv().await {
        out.extend_from_slice(&piece);
    }
    out
}

/// Sends `request` on a data stream, half-closes it and reads the answer to its end.
async fn exchange(data: Stream, request: &[u8]) -> Vec<u8> {
    let (mut reader, mut writer) = data.split();
    writer.send(Bytes::copy_from_slice(request)).await.unwrap();
    writer.finish().await.unwrap();
    read_stream(&mut reader).await
}

// ---- a scripted runtime -----------------------------------------------------------------------

/// One upgrade request the scripted runtime received: its head, and the connection.
struct Received {
    head: String,
    conn: TcpStream,
}

impl Received {
    fn lines(&self) -> Vec<&str> {
        self.head.split("\r\n").collect()
    }

    async fn answer_101(&mut self, protocol: Option<&str>, extra: &[u8]) {
        let mut head = String::from(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
        );
        if let Some(p) = protocol {
            head.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(extra);
        self.conn.write_all(&out).await.unwrap();
    }

    /// Reads until EOF (or an error); returns the bytes and how long the EOF took from `since`.
    async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.conn.read(&mut buf).await {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }
}

/// A runtime that hands every request to the test. Returns its `http://` base and the queue.
async fn scripted_runtime() -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            // Byte by byte, so nothing past the head is consumed here.
            while !head.ends_with(b"\r\n\r\n") {
                match conn.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            if tx.send(Received { head, conn }).is_err() {
                return;
            }
        }
    });
    (format!("http://{addr}"), rx)
}

async fn next_request(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the runtime was not asked within 5 s")
        .expect("runtime queue open")
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---- C-71…C-74: the handshake -----------------------------------------------------------------

/// C-71: the runtime is upgraded (POST, SPDY/3.1, portforward.k8s.io) before the client gets
/// anything; then the client's 101 names the tunnel protocol.
#[tokio::test]
async fn tunnel_upgrades_the_runtime_before_answering_the_client() {
    bounded(async {
        let (runtime, mut requests) = scripted_runtime().await;
        let bridge = bridge(&runtime).await;
        let client = tokio::spawn(upgrade(bridge.addr(), "/portforward/Tok3n", Some(TUNNEL)));

        let mut received = next_request(&mut requests).await;
        let lines = received.lines();
        assert_eq!(lines[0], "POST /portforward/Tok3n HTTP/1.1", "{lines:?}");
        assert!(lines.contains(&"Upgrade: SPDY/3.1"), "{lines:?}");
        assert!(lines.contains(&"Connection: Upgrade"), "{lines:?}");
        let versions: Vec<&&str> = lines
            .iter()
            .filter(|l| {
                l.to_ascii_lowercase()
                    .starts_with("x-stream-protocol-version:")
            })
            .collect();
        assert_eq!(
            versions,
            [&"X-Stream-Protocol-Version: portforward.k8s.io"],
            "{lines:?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.to_ascii_lowercase().starts_with("sec-websocket")),
            "WebSocket headers must not reach the runtime: {lines:?}"
        );
        // The runtime has not answered: the client must still be waiting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!client.is_finished(), "client answered before the runtime");

        received.answer_101(Some("portforward.k8s.io"), b"").await;
        let answer = client.await.unwrap();
        assert_eq!(answer.status, 101);
        assert_eq!(answer.header("sec-websocket-protocol"), Some(TUNNEL));
        assert_eq!(
            answer.header("sec-websocket-accept"),
            Some(derive_accept_key(WS_KEY.as_bytes()).as_str())
        );
        assert!(
            answer
                .header("upgrade")
                .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        );
    })
    .await
}

/// C-72: the runtime's refusal (404 unknown token, 403, 400) reaches the client as the same
/// status and body, so client-go reports an upgrade failure and falls back.
#[tokio::test]
async fn tunnel_refusal_reaches_the_client_with_the_runtimes_status_and_body() {
    bounded(async {
        // The simulator's own 404 for a token it does not know.
        let env = Env::start().await;
        let answer = upgrade(env.addr(), "/portforward/unknownToken", Some(TUNNEL)).await;
        assert_eq!(answer.status, 404);
        assert_eq!(answer.body, b"404 page not found\n");
        assert_eq!(
            answer.header("content-type"),
            Some("text/plain; charset=utf-8")
        );

        // A scripted runtime's 403 and 400, headers included.
        let (runtime, mut requests) = scripted_runtime().await;
        let bridge = bridge(&runtime).await;
        for (status, line, body) in [
            (
                403,
                "403 Forbidden",
                "unable to upgrade: unable to negotiate protocol\n",
            ),
            (
                400,
                "400 Bad Request",
                "unable to upgrade: missing upgrade headers\n",
            ),
        ] {
            let client = tokio::spawn(upgrade(bridge.addr(), "/portforward/t", Some(TUNNEL)));
            let mut received = next_request(&mut requests).await;
            let head = format!(
                "HTTP/1.1 {line}\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 X-Accepted-Stream-Protocol-Versions: portforward.k8s.io\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            received.conn.write_all(head.as_bytes()).await.unwrap();
            let answer = client.await.unwrap();
            assert_eq!(answer.status, status);
            assert_eq!(answer.body, body.as_bytes());
            assert_eq!(
                answer.header("x-accepted-stream-protocol-versions"),
                Some("portforward.k8s.io")
            );
        }
    })
    .await
}

/// C-73: a 101 from the runtime without a protocol version becomes a 101 without a
/// sub-protocol (client-go then fails with `invalid protocol` and falls back).
#[tokio::test]
async fn tunnel_answers_without_subprotocol_when_the_runtime_names_none() {
    bounded(async {
        let (runtime, mut requests) = scripted_runtime().await;
        let bridge = bridge(&runtime).await;
        let client = tokio::spawn(upgrade(bridge.addr(), "/portforward/t", Some(TUNNEL)));
        let mut received = next_request(&mut requests).await;
        received.answer_101(None, b"").await;
        let answer = client.await.unwrap();
        assert_eq!(answer.status, 101);
        assert_eq!(answer.header("sec-websocket-protocol"), None);
    })
    .await
}

/// C-74: an offer with neither a tunnelling nor a channel protocol gets the API server's 400,
/// before the runtime is asked: the token still works afterwards.
#[tokio::test]
async fn offer_without_tunnel_or_channel_protocol_gets_400_and_keeps_the_token() {
    bounded(async {
        let env = Env::start().await;
        let pod = http_pod().await;
        let path = env.token_path(&[pod]);
        let answer = upgrade(env.addr(), &path, Some("v5.channel.k8s.io")).await;
        assert_eq!(answer.status, 400);
        let status: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(
            status["message"],
            "unable to upgrade: no tunneling spdy protocols provided"
        );
        assert_eq!(status["code"], 400);

        let handle = tunnel_session(env.addr(), &path, &[4096]).await;
        let (_error, data) = open_pair(&handle, pod, 0).await;
        assert_http_ok(&exchange(data, http_request()).await);
    })
    .await
}

// ---- C-75…C-80: the tunnel --------------------------------------------------------------------

/// C-75: whatever the split (1-byte, 4-byte, empty, large messages), the runtime receives the
/// client's bytes identically.
#[tokio::test]
async fn client_bytes_reach_the_runtime_identically_whatever_the_message_split() {
    bounded(async {
        let (runtime, mut requests) = scripted_runtime().await;
        let bridge = bridge(&runtime).await;
        let payload = random_bytes(300_000, 7);
        let splits: [&[usize]; 4] = [&[1], &[4], &[0, 1, 0, 4, 0, 0, 3], &[1, 70_000, 4, 33_000]];
        for split in splits {
            let client = tokio::spawn(upgrade(bridge.addr(), "/portforward/t", Some(TUNNEL)));
            let mut received = next_request(&mut requests).await;
            received.answer_101(Some("portforward.k8s.io"), b"").await;
            let mut ws = client.await.unwrap().websocket().await;
            let mut k = 0;
            let mut rest = &payload[..];
            while !rest.is_empty() {
                let take = split[k % split.len()].min(rest.len());
                k += 1;
                ws.feed(Message::Binary(Bytes::copy_from_slice(&rest[..take])))
                    .await
                    .unwrap();
                rest = &rest[take..];
            }
            ws.close(None).await.unwrap();
            let got = received.read_to_end().await;
            assert_eq!(got.len(), payload.len(), "split {split:?}");
            assert!(got == payload, "split {split:?}: bytes differ");
        }
    })
    .await
}

/// C-75, with a real SPDY port-forward session inside: 1- and 4-byte and empty messages carry
/// SYN_STREAMs, DATA and the echo back.
#[tokio::test]
async fn spdy_session_survives_one_and_four_byte_and_empty_messages() {
    bounded(async {
        let env = Env::start().await;
        let echo = echo_pod().await;
        let path = env.token_path(&[echo]);
        let handle = tunnel_session(env.addr(), &path, SPLIT_TINY).await;
        let (mut error, data) = open_pair(&handle, echo, 0).await;
        let payload = random_bytes(20_000, 3);
        let echoed = exchange(data, &payload).await;
        assert!(echoed == payload, "echo differs");
        assert!(read_stream(&mut error).await.is_empty());
        let rtt = handle.ping().await.expect("SPDY ping through the tunnel");
        assert!(rtt < Duration::from_secs(2));
    })
    .await
}

/// C-76: the runtime's bytes (including those sent in the same write as its 101) reach the
/// client as binary messages whose concatenation is identical; never text; each at most the
/// 32 KiB read buffer.
#[tokio::test]
async fn runtime_bytes_arrive_as_binary_messages_concatenating_identically() {
    bounded(async {
        let (runtime, mut requests) = scripted_runtime().await;
        let bridge = bridge(&runtime).await;
        let client = tokio::spawn(upgrade(bridge.addr(), "/portforward/t", Some(TUNNEL)));
        let mut received = next_request(&mut requests).await;
        let payload = random_bytes(500_000, 11);
        // 1000 bytes travel with the 101.
        received
            .answer_101(Some("portforward.k8s.io"), &payload[..1000])
            .await;
        let mut ws = client.await.unwrap().websocket().await;
        let writer = tokio::spawn(async move {
            for chunk in payload[1000..].chunks(7_000) {
                received.conn.write_all(chunk).await.unwrap();
            }
            drop(received);
            payload
        });
        let mut got = Vec::new();
        let mut largest = 0;
        let close = loop {
            match next_message(&mut ws).await {
                Some(Message::Binary(b)) => {
                    assert!(!b.is_empty(), "empty message sent");
                    largest = largest.max(b.len());
                    got.extend_from_slice(&b);
                }
                Some(Message::Close(frame)) => break frame,
                other => panic!("unexpected {other:?}"),
            }
        };
        let payload = writer.await.unwrap();
        assert!(
            got == payload,
            "bytes differ ({} of {})",
            got.len(),
            payload.len()
        );
        assert!(largest <= 32 * 1024, "message of {largest} bytes");
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
    })
    .await
}

/// C-77: a text message in a tunnel is a protocol error: Close 1002 to the client, and the
/// runtime's connection is closed.
#[tokio::test]
async fn text_message_closes_the_tunnel_as_a_protocol_error() {
    bounded(async {
        let (runtime, mut requests) = scripted_runtime().await;
        let bridge = bridge(&runtime).await;
        let client = tokio::spawn(upgrade(bridge.addr(), "/portforward/t", Some(TUNNEL)));
        let mut received = next_request(&mut requests).await;
        received.answer_101(Some("portforward.k8s.io"), b"").await;
        let mut ws = client.await.unwrap().websocket().await;
        ws.send(Message::Binary(Bytes::from_static(b"\x80\x03\x00\x06")))
            .await
            .unwrap();
        ws.send(Message::Text("hello".into())).await.unwrap();
        let t0 = Instant::now();
        let runtime_side = tokio::spawn(async move { received.read_to_end().await });
        let (close, _) = read_until_close(&mut ws).await;
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Protocol));
        let _ = runtime_side.await.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    })
    .await
}

/// C-78: an HTTP GET over a forwarded port, and two connections (request ids 0 and 1) open at
/// the same time.
#[tokio::test]
async fn http_get_and_two_concurrent_connections_through_the_tunnel() {
    bounded(async {
        let env = Env::start().await;
        let pod = http_pod().await;
        let path = env.token_path(&[pod]);
        let handle = tunnel_session(env.addr(), &path, &[4, 4, 32 * 1024]).await;

        let (mut error0, data0) = open_pair(&handle, pod, 0).await;
        let (mut error1, data1) = open_pair(&handle, pod, 1).await;
        // Request 1 is served while request 0's streams are open, then request 0.
        assert_http_ok(&exchange(data1, http_request()).await);
        assert_http_ok(&exchange(data0, http_request()).await);
        assert!(read_stream(&mut error0).await.is_empty());
        assert!(read_stream(&mut error1).await.is_empty());

        // A third, after the first two are done, on the same session.
        let (_error2, data2) = open_pair(&handle, pod, 2).await;
        assert_http_ok(&exchange(data2, http_request()).await);
    })
    .await
}

/// C-79: a target port that refuses: the client reads the runtime's `error forwarding port`
/// text unmodified (the same bytes a direct SPDY client gets).
#[tokio::test]
async fn refused_target_port_error_text_reaches_the_client_unmodified() {
    bounded(async {
        let env = Env::start().await;
        let port = closed_port().await;

        let handle = tunnel_session(env.addr(), &env.token_path(&[port]), SPLIT_TINY).await;
        let (mut error, data) = open_pair(&handle, port, 0).await;
        let through_bridge = read_stream(&mut error).await;
        drop(data);

        // The same forward, straight to the simulator.
        let url: http::Uri = format!("http://{}{}", env.sim.addr(), env.token_path(&[port]))
            .parse()
            .unwrap();
        let upgraded = upstream::upgrade_spdy(&url, &["portforward.k8s.io"], &upstream_config())
            .await
            .unwrap();
        let (direct, _incoming) =
            connection::spawn(upgraded.io, upgraded.leftover, ConnectionConfig::client());
        let (mut error, _data) = open_pair(&direct, port, 0).await;
        let straight = read_stream(&mut error).await;

        let text = String::from_utf8_lossy(&through_bridge);
        assert!(
            text.starts_with(&format!(
                "error forwarding port {port} to pod {SANDBOX}, uid : "
            )),
            "{text:?}"
        );
        assert!(text.contains("connection refused"), "{text:?}");
        assert_eq!(through_bridge, straight);
    })
    .await
}

/// C-80: the runtime closing its connection reaches the client as Close 1000 within 1 s.
#[tokio::test]
async fn runtime_close_reaches_the_client_as_close_1000_within_1s() {
    bounded(async {
        let (runtime, mut requests) = scripted_runtime().await;
        let bridge = bridge(&runtime).await;
        let client = tokio::spawn(upgrade(bridge.addr(), "/portforward/t", Some(TUNNEL)));
        let mut received = next_request(&mut requests).await;
        received
            .answer_101(Some("portforward.k8s.io"), b"last bytes")
            .await;
        let mut ws = client.await.unwrap().websocket().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        drop(received);
        let (close, data) = read_until_close(&mut ws).await;
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(data, b"last bytes");
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
        // And the TCP connection ends.
        let end = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
        assert!(matches!(end, Ok(None) | Ok(Some(Err(_)))), "{end:?}");
    })
    .await
}

/// C-80: the client's Close, or the client vanishing without one, closes the runtime's
/// connection within 1 s; what the client sent before its Close still arrives first.
#[tokio::test]
async fn client_close_or_disconnect_closes_the_runtime_within_1s() {
    bounded(async {
        let (runtime, mut requests) = scripted_runtime().await;
        let bridge = bridge(&runtime).await;
        for with_close_frame in [true, false] {
            let client = tokio::spawn(upgrade(bridge.addr(), "/portforward/t", Some(TUNNEL)));
            let mut received = next_request(&mut requests).await;
            received.answer_101(Some("portforward.k8s.io"), b"").await;
            let mut ws = client.await.unwrap().websocket().await;
            ws.send(Message::Binary(Bytes::from_static(b"GOAWAY-ish")))
                .await
                .unwrap();
            let t0 = Instant::now();
            if with_close_frame {
                ws.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await
                .unwrap();
                // The bridge answers the Close.
                let reply = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
                assert!(
                    matches!(reply, Ok(Some(Ok(Message::Close(_)))) | Ok(None)),
                    "{reply:?}"
                );
            } else {
                drop(ws);
            }
            let got = tokio::time::timeout(Duration::from_secs(1), received.read_to_end())
                .await
                .expect("runtime connection still open 1 s after the client left");
            assert_eq!(got, b"GOAWAY-ish");
            assert!(t0.elapsed() < Duration::from_secs(1));
        }
    })
    .await
}

/// The many tiny messages kubectl sends are coalesced: far fewer runtime writes than messages
/// (here the runtime side cannot take vectored writes, so the pieces are merged).
#[tokio::test]
async fn tiny_messages_are_coalesced_into_few_runtime_writes() {
    bounded(async {
        let cfg = TunnelConfig::default();
        let (client_io, bridge_io) = tokio::io::duplex(1 << 20);
        let (bridge_up, mut runtime) = tokio::io::duplex(1 << 20);
        let server = tunnel::accept(bridge_io, &cfg);
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let expected: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        for (i, piece) in expected.chunks(4).enumerate() {
            if i % 10 == 0 {
                client.feed(Message::Binary(Bytes::new())).await.unwrap();
            }
            client
                .feed(Message::Binary(Bytes::copy_from_slice(piece)))
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        let task =
            tokio::spawn(async move { tunnel::run(server, bridge_up, Bytes::new(), &cfg).await });
        let mut got = vec![0u8; expected.len()];
        runtime.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        client.close(None).await.unwrap();
        let stats = task.await.unwrap();
        assert_eq!(stats.client_messages, 1100);
        assert_eq!(stats.client_to_upstream, 4000);
        assert!(stats.upstream_writes <= 20, "{stats:?}");
        assert_eq!(stats.end, tunnel::TunnelEnd::ClientClosed);
    })
    .await
}

/// A tunnel between an in-memory client connection and an in-memory runtime: the client's
/// end, the runtime's end and the running tunnel.
fn tunnel_pair(cfg: TunnelConfig) -> (DuplexStream, DuplexStream, JoinHandle<tunnel::TunnelStats>) {
    let (client_io, bridge_io) = tokio::io::duplex(1 << 20);
    let (bridge_up, runtime) = tokio::io::duplex(1 << 20);
    let server = tunnel::accept(bridge_io, &cfg);
    let task =
        tokio::spawn(async move { tunnel::run(server, bridge_up, Bytes::new(), &cfg).await });
    (client_io, runtime, task)
}

/// No client-go peer pings in a tunnel, but a client that does gets a Pong with its Ping's
/// payload, and the tunnel carries on.
#[tokio::test]
async fn tunnel_answers_a_ping_with_a_pong_carrying_its_payload() {
    bounded(async {
        let (client_io, mut runtime, task) = tunnel_pair(TunnelConfig::default());
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        client
            .send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(1), client.next()).await;
        assert!(
            matches!(&reply, Ok(Some(Ok(Message::Pong(p)))) if &p[..] == b"are you there"),
            "{reply:?}"
        );
        client
            .send(Message::Binary(Bytes::from_static(b"still here")))
            .await
            .unwrap();
        let mut got = [0u8; 10];
        runtime.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still here");
        runtime.write_all(b"back").await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(1), client.next()).await;
        assert!(
            matches!(&back, Ok(Some(Ok(Message::Binary(b)))) if &b[..] == b"back"),
            "{back:?}"
        );
        client.close(None).await.unwrap();
        assert_eq!(task.await.unwrap().end, tunnel::TunnelEnd::ClientClosed);
    })
    .await
}

/// The bridge's answer to a client's Close echoes its status code, or carries none when the
/// client's had none (RFC 6455 §5.5.1).
#[tokio::test]
async fn tunnel_answers_a_client_close_with_a_close_echoing_its_code() {
    bounded(async {
        for sent in [
            Some(CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            }),
            None,
        ] {
            let (client_io, mut runtime, task) = tunnel_pair(TunnelConfig::default());
            let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
            client.close(sent.clone()).await.unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(1), client.next()).await;
            let Ok(Some(Ok(Message::Close(reply)))) = reply else {
                panic!("no Close reply: {reply:?}");
            };
            assert_eq!(reply.map(|f| f.code), sent.map(|f| f.code));
            assert!(
                tokio::time::timeout(Duration::from_secs(1), runtime.read(&mut [0u8; 8]))
                    .await
                    .is_ok_and(|n| matches!(n, Ok(0) | Err(_))),
                "runtime connection closed"
            );
            assert_eq!(task.await.unwrap().end, tunnel::TunnelEnd::ClientClosed);
        }
    })
    .await
}

/// A client message over the tunnel's cap ends the tunnel with Close 1009, refused from its
/// frame header.
#[tokio::test]
async fn oversized_client_message_closes_the_tunnel_with_1009() {
    bounded(async {
        let cfg = TunnelConfig {
            max_message: 1024,
            ..TunnelConfig::default()
        };
        let (client_io, _runtime, task) = tunnel_pair(cfg);
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        client
            .send(Message::Binary(Bytes::from(vec![1u8; 4096])))
            .await
            .unwrap();
        let (close, _) = loop {
            match tokio::time::timeout(Duration::from_secs(1), client.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break (frame, ()),
                Ok(Some(Ok(_))) => {}
                other => panic!("no Close: {other:?}"),
            }
        };
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Size));
        assert_eq!(
            task.await.unwrap().end,
            tunnel::TunnelEnd::ClientMessageTooBig
        );
    })
    .await
}

/// A frame that breaks RFC 6455 (here: unmasked, as no client may send) ends the tunnel with
/// the Close code the violation calls for, 1002.
#[tokio::test]
async fn websocket_protocol_violation_closes_the_tunnel_with_1002() {
    bounded(async {
        let (mut client_io, _runtime, task) = tunnel_pair(TunnelConfig::default());
        client_io
            .write_all(&[0x82, 0x02, b'h', b'i'])
            .await
            .unwrap();
        let mut head = [0u8; 4];
        client_io.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x88, "a Close frame");
        assert_eq!(u16::from_be_bytes([head[2], head[3]]), 1002);
        assert_eq!(
            task.await.unwrap().end,
            tunnel::TunnelEnd::ClientProtocolError
        );
    })
    .await
}

/// SPDY port-forward clients (kubectl ≤ 1.30, and client-go's fallback) are passed through to
/// the runtime untouched.
#[tokio::test]
async fn spdy_port_forward_is_passed_through() {
    bounded(async {
        let env = Env::start().await;
        let pod = http_pod().await;
        let url: http::Uri = format!("http://{}{}", env.addr(), env.token_path(&[pod]))
            .parse()
            .unwrap();
        let upgraded = upstream::upgrade_spdy(&url, &["portforward.k8s.io"], &upstream_config())
            .await
            .unwrap();
        assert_eq!(upgraded.protocol.as_deref(), Some("portforward.k8s.io"));
        let (handle, _incoming) =
            connection::spawn(upgraded.io, upgraded.leftover, ConnectionConfig::client());
        let (_error, data) = open_pair(&handle, pod, 0).await;
        assert_http_ok(&exchange(data, http_request()).await);
    })
    .await
}

// ---- C-81: channel mode -----------------------------------------------------------------------

/// Binary payloads per channel until the Close frame; the Close.
async fn channel_messages(
    ws: &mut WebSocketStream<TcpStream>,
) -> (Vec<(u8, Vec<u8>)>, Option<CloseFrame>) {
    let mut out = Vec::new();
    loop {
        match next_message(ws).await {
            Some(Message::Binary(b)) => out.push((b[0], b[1..].to_vec())),
            Some(Message::Text(t)) => panic!("text message {t:?} in binary channel mode"),
            Some(Message::Close(frame)) => return (out, frame),
            Some(_) => {}
            None => panic!("connection ended without a Close frame"),
        }
    }
}

fn channel_bytes(messages: &[(u8, Vec<u8>)], channel: u8) -> Vec<u8> {
    messages
        .iter()
        .filter(|(c, _)| *c == channel)
        .flat_map(|(_, d)| d.iter().copied())
        .collect()
}

/// C-81: `v4.channel.k8s.io` with ports 8080 and 9090: the first four messages are the port
/// prefixes, data channel then error channel, port by port.
#[tokio::test]
async fn channel_mode_starts_with_the_port_prefixes_in_order() {
    bounded(async {
        let env = Env::start().await;
        let path = format!("{}?ports=8080,9090", env.token_path(&[8080, 9090]));
        let answer = upgrade(
            env.addr(),
            &path,
            Some("v5.channel.k8s.io, v4.channel.k8s.io"),
        )
        .await;
        assert_eq!(
            answer.header("sec-websocket-protocol"),
            Some("v4.channel.k8s.io")
        );
        let mut ws = answer.websocket().await;
        let mut first = Vec::new();
        for _ in 0..4 {
            match next_message(&mut ws).await {
                Some(Message::Binary(b)) => first.push(b.to_vec()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            first,
            vec![
                vec![0x00, 0x90, 0x1f],
                vec![0x01, 0x90, 0x1f],
                vec![0x02, 0x82, 0x23],
                vec![0x03, 0x82, 0x23],
            ]
        );
    })
    .await
}

/// Channel mode relays each port over its own stream pair, and closes with 1000 once every
/// port's forward has ended.
#[tokio::test]
async fn channel_mode_relays_each_port_and_closes_when_all_have_ended() {
    bounded(async {
        let env = Env::start().await;
        let (a, b) = (http_pod().await, http_pod().await);
        let path = format!("{}?port={a}&port={b}", env.token_path(&[a, b]));
        let mut ws = upgrade(env.addr(), &path, Some("v4.channel.k8s.io"))
            .await
            .websocket()
            .await;
        for channel in [2u8, 0] {
            let mut msg = vec![channel];
            msg.extend_from_slice(http_request());
            ws.send(Message::Binary(msg.into())).await.unwrap();
        }
        let (messages, close) = channel_messages(&mut ws).await;
        assert!(messages.len() >= 4, "{messages:?}");
        assert_eq!(messages[0], (0, a.to_le_bytes().to_vec()));
        assert_http_ok(&channel_bytes(&messages[4..], 0));
        assert_http_ok(&channel_bytes(&messages[4..], 2));
        assert!(channel_bytes(&messages[4..], 1).is_empty());
        assert!(channel_bytes(&messages[4..], 3).is_empty());
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
    })
    .await
}

/// A port whose target refuses gets the runtime's error text on its own error channel; the
/// other port is unaffected.
#[tokio::test]
async fn channel_mode_failing_port_reports_only_on_its_error_channel() {
    bounded(async {
        let env = Env::start().await;
        let (good, bad) = (http_pod().await, closed_port().await);
        let path = format!("{}?ports={bad},{good}", env.token_path(&[bad, good]));
        let mut ws = upgrade(env.addr(), &path, None).await.websocket().await;
        let mut msg = vec![2u8];
        msg.extend_from_slice(http_request());
        ws.send(Message::Binary(msg.into())).await.unwrap();
        let (messages, close) = channel_messages(&mut ws).await;
        let error = String::from_utf8(channel_bytes(&messages[4..], 1)).unwrap();
        assert!(
            error.starts_with(&format!(
                "error forwarding port {bad} to pod {SANDBOX}, uid : "
            )),
            "{error:?}"
        );
        assert!(channel_bytes(&messages[4..], 0).is_empty());
        assert_http_ok(&channel_bytes(&messages[4..], 2));
        assert!(channel_bytes(&messages[4..], 3).is_empty());
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
    })
    .await
}

/// `v4.base64.channel.k8s.io`: text messages, `'0' + channel` then base64, both ways.
#[tokio::test]
async fn channel_mode_base64_uses_text_messages_both_ways() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    bounded(async {
        let env = Env::start().await;
        let echo = echo_pod().await;
        let path = format!("{}?ports={echo}", env.token_path(&[echo]));
        let answer = upgrade(env.addr(), &path, Some("v4.base64.channel.k8s.io")).await;
        assert_eq!(
            answer.header("sec-websocket-protocol"),
            Some("v4.base64.channel.k8s.io")
        );
        let mut ws = answer.websocket().await;
        let port = STANDARD.encode(echo.to_le_bytes());
        for channel in ['0', '1'] {
            assert_eq!(
                next_message(&mut ws).await,
                Some(Message::Text(format!("{channel}{port}").into()))
            );
        }
        ws.send(Message::Text(
            format!("0{}", STANDARD.encode("ping pong")).into(),
        ))
        .await
        .unwrap();
        let mut echoed = Vec::new();
        while echoed.len() < 9 {
            match next_message(&mut ws).await {
                Some(Message::Text(t)) => {
                    assert!(t.starts_with('0'), "{t:?}");
                    echoed.extend(STANDARD.decode(&t.as_bytes()[1..]).unwrap());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(echoed, b"ping pong");
        ws.close(None).await.unwrap();
    })
    .await
}

/// Channel mode needs the ports; without them the request is refused before the runtime is
/// asked, and the token stays usable.
#[tokio::test]
async fn channel_mode_without_ports_is_refused_and_keeps_the_token() {
    bounded(async {
        let env = Env::start().await;
        let pod = http_pod().await;
        let path = env.token_path(&[pod]);
        let answer = upgrade(env.addr(), &path, Some("v4.channel.k8s.io")).await;
        assert_eq!(answer.status, 400);
        let status: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(status["message"], "query parameter \"port\" is required");

        let path = format!("{path}?ports={pod}");
        let mut ws = upgrade(env.addr(), &path, Some("v4.channel.k8s.io"))
            .await
            .websocket()
            .await;
        let mut msg = vec![0u8];
        msg.extend_from_slice(http_request());
        ws.send(Message::Binary(msg.into())).await.unwrap();
        let (messages, _) = channel_messages(&mut ws).await;
        assert_http_ok(&channel_bytes(&messages[2..], 0));
    })
    .await
}

/// With CRI interception the ports are the CRI request's, stored with the bridge token: a
/// channel-mode client need not (and cannot) name them in the query.
#[tokio::test]
async fn channel_mode_takes_the_ports_of_the_cri_request_behind_a_bridge_token() {
    bounded(async {
        let sim = RuntimeSim::start(SimConfig::default()).await.unwrap();
        let pod = http_pod().await;
        let store = Arc::new(TokenStore::new(Duration::from_secs(60), 10));
        let bridge = Bridge::start(BridgeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream_cfg: upstream_config(),
            tokens: Some(store.clone()),
            ..BridgeConfig::default()
        })
        .await
        .unwrap();
        let runtime_url = sim
            .port_forward(PortForwardRequest {
                pod_sandbox_id: SANDBOX.into(),
                ports: vec![pod],
            })
            .unwrap();
        let token = store
            .insert(tokens::Session {
                kind: tokens::SessionKind::PortForward,
                runtime_url: runtime_url.parse().unwrap(),
                options: Default::default(),
                ports: vec![pod],
                container_id: String::new(),
                pod_sandbox_id: SANDBOX.into(),
            })
            .unwrap();
        // The query names another port: the token's port wins, as the kubelet's CRI server
        // forwards the ports of the CRI request.
        let path = format!("/portforward/{}?ports=1", token.as_str());
        let mut ws = upgrade(bridge.addr(), &path, Some("v4.channel.k8s.io"))
            .await
            .websocket()
            .await;
        let mut msg = vec![0u8];
        msg.extend_from_slice(http_request());
        ws.send(Message::Binary(msg.into())).await.unwrap();
        let (messages, close) = channel_messages(&mut ws).await;
        assert_eq!(messages[0], (0, pod.to_le_bytes().to_vec()));
        assert_http_ok(&channel_bytes(&messages[2..], 0));
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
    })
    .await
}

/// A client leaving a channel-mode session ends the runtime session (streams reset, GOAWAY),
/// leaving the simulator with nothing open.
#[tokio::test]
async fn channel_mode_client_close_ends_the_runtime_session() {
    bounded(async {
        let env = Env::start().await;
        let echo = echo_pod().await;
        let path = format!("{}?ports={echo}", env.token_path(&[echo]));
        let mut ws = upgrade(env.addr(), &path, Some("v4.channel.k8s.io"))
            .await
            .websocket()
            .await;
        ws.send(Message::Binary(Bytes::from_static(b"\x00abc")))
            .await
            .unwrap();
        for channel in [0u8, 1] {
            let mut prefix = vec![channel];
            prefix.extend_from_slice(&echo.to_le_bytes());
            assert_eq!(
                next_message(&mut ws).await,
                Some(Message::Binary(prefix.into()))
            );
        }
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match next_message(&mut ws).await {
                Some(Message::Binary(b)) if b[0] == 0 => seen.extend_from_slice(&b[1..]),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, b"abc");
        let t0 = Instant::now();
        ws.close(None).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
        assert!(
            matches!(reply, Ok(Some(Ok(Message::Close(_)))) | Ok(None)),
            "{reply:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    })
    .await
}

/// Channel mode answers a client's Ping with a Pong carrying its payload, and the client's
/// Close with a Close echoing its code.
#[tokio::test]
async fn channel_mode_answers_pings_and_echoes_the_client_close_code() {
    bounded(async {
        let env = Env::start().await;
        let echo = echo_pod().await;
        let path = format!("{}?ports={echo}", env.token_path(&[echo]));
        let mut ws = upgrade(env.addr(), &path, Some("v4.channel.k8s.io"))
            .await
            .websocket()
            .await;
        for _ in 0..2 {
            assert!(matches!(
                next_message(&mut ws).await,
                Some(Message::Binary(_))
            ));
        }
        ws.send(Message::Ping(Bytes::from_static(b"p-1")))
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut ws).await,
            Some(Message::Pong(Bytes::from_static(b"p-1")))
        );
        ws.close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "done".into(),
        }))
        .await
        .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
        let Ok(Some(Ok(Message::Close(reply)))) = reply else {
            panic!("no Close reply: {reply:?}");
        };
        assert_eq!(reply.map(|f| f.code), Some(CloseCode::Away));
    })
    .await
}

/// kubectl's upload pattern (4, 4 and 32 KiB messages, each with its own mask, some split into
/// fragments, written in arbitrary pieces) and the runtime's echo, at once and at full speed:
/// every byte comes back, in order, without a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_at_once_is_byte_exact_through_the_tunnel() {
    const TOTAL: usize = 16 << 20;
    tokio::time::timeout(Duration::from_secs(60), async {
        let (runtime, mut requests) = scripted_runtime().await;
        let bridge = bridge(&runtime).await;
        let client = tokio::spawn(upgrade(bridge.addr(), "/portforward/t", Some(TUNNEL)));
        let mut received = next_request(&mut requests).await;
        received.answer_101(Some("portforward.k8s.io"), b"").await;
        tokio::spawn(async move {
            let (mut rd, mut wr) = received.conn.into_split();
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
        });
        let answer = client.await.unwrap();
        assert_eq!(answer.status, 101);
        assert!(answer.leftover.is_empty());
        let (mut rd, mut wr) = answer.stream.into_split();
        let data = Arc::new(random_bytes(TOTAL, 7));
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let mut rng = 0x1234_5678_9abc_def1u64;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut at = 0;
            let mut out = Vec::new();
            while at < TOTAL {
                out.clear();
                for len in [4usize, 4, 32 * 1024] {
                    let piece = &sent[at..(at + len).min(TOTAL)];
                    at += piece.len();
                    // Sometimes as two fragments, as gorilla writes a message larger than
                    // its write buffer.
                    let cut = if piece.len() > 1024 && next() % 4 == 0 {
                        (next() as usize) % piece.len()
                    } else {
                        piece.len()
                    };
                    let parts: Vec<(u8, &[u8])> = if cut < piece.len() {
                        vec![(0x02, &piece[..cut]), (0x80, &piece[cut..])]
                    } else {
                        vec![(0x82, piece)]
                    };
                    for (b0, part) in parts {
                        let mask = (next() as u32).to_ne_bytes();
                        out.push(b0);
                        if part.len() < 126 {
                            out.push(0x80 | part.len() as u8);
                        } else {
                            out.push(0x80 | 126);
                            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
                        }
                        out.extend_from_slice(&mask);
                        out.extend(part.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                    }
                }
                let mut rest = &out[..];
                while !rest.is_empty() {
                    let n = ((next() as usize) % (48 * 1024) + 1).min(rest.len());
                    wr.write_all(&rest[..n]).await.unwrap();
                    rest = &rest[n..];
                }
            }
            wr
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        let mut got = 0usize;
        while got < TOTAL {
            let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("stalled after {got} bytes"))
                .unwrap();
            assert!(n > 0, "tunnel ended after {got} bytes");
            pending.extend_from_slice(&buf[..n]);
            while let [b0, b1, ..] = pending[..] {
                assert_eq!(b0, 0x82, "a final binary frame");
                let (len, at) = match b1 {
                    126 if pending.len() >= 4 => {
                        (usize::from(u16::from_be_bytes([pending[2], pending[3]])), 4)
                    }
                    127 if pending.len() >= 10 => (
                        u64::from_be_bytes(pending[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => break,
                    n => (usize::from(n), 2),
                };
                if pending.len() < at + len {
                    break;
                }
                assert_eq!(
                    &pending[at..at + len],
                    &data[got..got + len],
                    "bytes {got}.. differ"
                );
                got += len;
                pending.drain(..at + len);
            }
        }
        writer.await.unwrap();
    })
    .await
    .expect("bulk transfer did not finish within 60 s");
}
