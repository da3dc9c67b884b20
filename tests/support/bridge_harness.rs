//! Harness for `tests/bridge_exec.rs`: the bridge under test over real TCP, with three kinds of
//! peer around it.
//!
//! * [`WsClient`]: a raw WebSocket client. The handshake is written by hand (so a test controls
//!   the method, every header line and the offered sub-protocols) and frames are encoded and
//!   parsed with tungstenite's frame codec, one frame at a time: a test sees every frame the
//!   bridge sends (opcode, FIN, RSV bits) and can send what no well-behaved client would
//!   (fragments, text, unmasked frames, empty messages, oversized headers).
//! * The runtime simulator ([`sim`]) when a real runtime is wanted.
//! * [`FakeRuntime`]: a scripted runtime for what the simulator cannot do. It records the
//!   upgrade request, answers it as the test says, and then speaks SPDY frame by frame: every
//!   frame the bridge sends is recorded whole ([`Recv`]), and the test writes any frame, valid
//!   or not.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame as WsFrame, FrameHeader};
use ws_spdy_bridge::bridge::remotecommand::SessionConfig;
use ws_spdy_bridge::connection::ConnectionConfig;
use ws_spdy_bridge::runtime_sim::{ExecRequest, RuntimeSim, SimConfig};
use ws_spdy_bridge::server::{Bridge, BridgeConfig};
use ws_spdy_bridge::spdy::deflate::HeaderDeflater;
use ws_spdy_bridge::spdy::{Decoder, Encoder, Frame, GoAwayStatus, Limits, RstStatus};
use ws_spdy_bridge::status::Status;
use ws_spdy_bridge::upstream::UpstreamConfig;
use ws_spdy_bridge::upstream::remotecommand::client_connection_config;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
pub const V3: &str = "v3.channel.k8s.io";
pub const V2: &str = "v2.channel.k8s.io";
/// A token-shaped path segment for the fake runtime (it accepts any).
pub const TOKEN: &str = "Vh2Ua5Zr";
/// The status JSON of a successful session, byte for byte.
pub const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;

/// Upper bound on one test body: a hang fails the test instead of stalling the suite.
pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test did not finish within 10 s")
}

/// Waits for `f` with a short bound, for steps that must happen promptly.
pub async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not within {limit:?}"),
    }
}

/// Tasks alive on the current runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until at most `n` tasks are alive (tasks end asynchronously after an abort or a
/// close; there is no signal to await for "every task is gone").
pub async fn settle_tasks(n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while alive_tasks() > n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} tasks still alive, expected at most {n}",
            alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The bridge

/// A bridge configuration with short limits, in front of `upstream` (`http://host:port`).
/// SPDY pings are off so that scripted runtimes see only the frames a test is about.
pub fn bridge_config(upstream: &str) -> BridgeConfig {
    BridgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: upstream.parse().unwrap(),
        upstream_cfg: UpstreamConfig {
            connect_timeout: Duration::from_secs(2),
            response_header_timeout: Duration::from_secs(2),
            error_body_timeout: Duration::from_secs(1),
            ..UpstreamConfig::default()
        },
        connection: ConnectionConfig {
            ping_interval: None,
            reply_timeout: Duration::from_secs(2),
            close_timeout: Duration::from_millis(500),
            ..client_connection_config()
        },
        session: SessionConfig {
            status_write_timeout: Duration::from_secs(1),
            client_gone_grace: Duration::from_millis(300),
            ..SessionConfig::default()
        },
        ..BridgeConfig::default()
    }
}

/// Starts a bridge.
pub async fn start_bridge(cfg: BridgeConfig) -> Bridge {
    Bridge::start(cfg).await.expect("bridge starts")
}

// ---------------------------------------------------------------------------------------------
// The runtime simulator

/// A simulator that gives up quickly on a client that creates the wrong streams.
pub async fn sim() -> RuntimeSim {
    RuntimeSim::start(SimConfig {
        stream_creation_timeout: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// An exec request for `cmd` with the given streams.
pub fn exec(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: "ctr".into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        stdin,
        stdout,
        stderr,
        tty,
    }
}

/// The bridge path for a simulator URL, with the request's stream options as the query.
pub fn bridge_path(sim_url: &str, req: &ExecRequest) -> String {
    let path = sim_url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .expect("url has a path");
    format!(
        "{path}?{}",
        query(req.stdin, req.stdout, req.stderr, req.tty)
    )
}

/// The stream options as the bridge reads them from the query.
pub fn query(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> String {
    let b = |v: bool| if v { "true" } else { "false" };
    format!(
        "stdin={}&stdout={}&stderr={}&tty={}",
        b(stdin),
        b(stdout),
        b(stderr),
        b(tty)
    )
}

/// `/exec/<TOKEN>?<options>` for the fake runtime.
pub fn fake_path(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> String {
    format!("/exec/{TOKEN}?{}", query(stdin, stdout, stderr, tty))
}

// ---------------------------------------------------------------------------------------------
// The WebSocket client

/// The upgrade request a [`WsClient`] sends. Each entry of `protocols` is its own header line.
#[derive(Clone, Debug)]
pub struct ClientRequest {
    pub method: String,
    pub path: String,
    pub protocols: Vec<String>,
    pub version: String,
    pub key: String,
    pub extra: Vec<(String, String)>,
}

impl ClientRequest {
    /// A GET offering only `v5.channel.k8s.io`, as client-go sends it.
    pub fn v5(path: impl Into<String>) -> Self {
        ClientRequest {
            method: "GET".into(),
            path: path.into(),
            protocols: vec![V5.into()],
            version: "13".into(),
            key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
            extra: Vec::new(),
        }
    }

    pub fn protocols(mut self, lines: &[&str]) -> Self {
        self.protocols = lines.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    pub fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }

    pub fn version(mut self, v: &str) -> Self {
        self.version = v.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }

    fn encode(&self, host: SocketAddr) -> Vec<u8> {
        let mut r = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: {}\r\n",
            self.method, self.path, self.key, self.version
        );
        for p in &self.protocols {
            r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        for (n, v) in &self.extra {
            r.push_str(&format!("{n}: {v}\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    }
}

/// An HTTP response head and (for non-101 answers) its body.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl HttpResponse {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as a `metav1.Status`.
    pub fn status_body(&self) -> Status {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not a Status ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Connects to `addr` and sends `req`. Returns the response and the connection, positioned
/// after the response head (101) or the body (anything else).
/// The future owns a copy of `req`, so it can be joined with others.
pub fn handshake(
    addr: SocketAddr,
    req: &ClientRequest,
) -> impl Future<Output = (HttpResponse, WsClient)> + 'static {
    let req = req.clone();
    async move {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connect to the bridge");
        handshake_on(tcp, addr, &req).await
    }
}

/// [`handshake`] on a connection the caller set up (socket options).
pub async fn handshake_on(
    mut tcp: TcpStream,
    addr: SocketAddr,
    req: &ClientRequest,
) -> (HttpResponse, WsClient) {
    send_request(&mut tcp, addr, req).await;
    read_response(tcp).await
}

/// Writes the upgrade request.
pub async fn send_request(tcp: &mut TcpStream, addr: SocketAddr, req: &ClientRequest) {
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(&req.encode(addr)).await.unwrap();
}

/// Reads the response to an upgrade request.
pub async fn read_response(mut tcp: TcpStream) -> (HttpResponse, WsClient) {
    let mut buf = BytesMut::new();
    let (status, headers, head_len) = loop {
        let n = tcp.read_buf(&mut buf).await.expect("read response head");
        assert!(n > 0, "connection closed before the response head");
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut parsed);
        if let httparse::Status::Complete(len) = resp.parse(&buf).expect("valid response head") {
            let headers = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            break (resp.code.unwrap(), headers, len);
        }
    };
    buf.advance(head_len);
    let mut resp = HttpResponse {
        status,
        headers,
        body: Bytes::new(),
    };
    if status != 101 {
        let len: Option<usize> = resp
            .header("content-length")
            .map(|v| v.trim().parse().unwrap());
        match len {
            Some(len) => {
                while buf.len() < len {
                    let n = tcp.read_buf(&mut buf).await.unwrap();
                    assert!(n > 0, "EOF inside the body");
                }
                resp.body = buf.split_to(len).freeze();
            }
            None => {
                tcp.read_to_end(&mut Vec::new()).await.ok();
            }
        }
    }
    (resp, WsClient { tcp, buf })
}

/// A tokio-tungstenite client offering v5, for tests that want message-level convenience.
pub async fn tungstenite_client(
    addr: SocketAddr,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", http::HeaderValue::from_static(V5));
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

/// A successful exec upgrade: panics unless the bridge answered 101.
pub fn upgrade(
    addr: SocketAddr,
    path: impl Into<String>,
) -> impl Future<Output = WsClient> + 'static {
    let req = ClientRequest::v5(path);
    async move {
        let (resp, ws) = handshake(addr, &req).await;
        assert_eq!(
            resp.status,
            101,
            "upgrade refused: {:?}",
            String::from_utf8_lossy(&resp.body)
        );
        ws
    }
}

/// One WebSocket frame as received.
#[derive(Clone, Debug)]
pub struct WsFrameIn {
    pub fin: bool,
    pub rsv: (bool, bool, bool),
    pub opcode: OpCode,
    pub masked: bool,
    pub payload: Bytes,
}

impl WsFrameIn {
    pub fn is_data(&self) -> bool {
        matches!(self.opcode, OpCode::Data(_))
    }

    /// The close code and reason of a Close frame.
    pub fn close(&self) -> Option<(u16, String)> {
        if self.opcode != OpCode::Control(Control::Close) {
            return None;
        }
        if self.payload.len() < 2 {
            return Some((1005, String::new()));
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }
}

/// Everything the bridge sent until it closed the connection.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    pub frames: Vec<WsFrameIn>,
    /// The connection ended with a reset or read error rather than a clean EOF.
    pub reset: bool,
}

impl Transcript {
    /// Data frames' payloads (channel byte included), in order.
    pub fn messages(&self) -> Vec<Bytes> {
        self.frames
            .iter()
            .filter(|f| f.is_data())
            .map(|f| f.payload.clone())
            .collect()
    }

    /// The payload bytes of `channel`, concatenated.
    pub fn channel(&self, channel: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for m in self.messages() {
            if m.first() == Some(&channel) {
                out.extend_from_slice(&m[1..]);
            }
        }
        out
    }

    /// The status JSON (channel 3 with a payload), if any.
    pub fn status_json(&self) -> Option<String> {
        let statuses: Vec<Bytes> = self
            .messages()
            .into_iter()
            .filter(|m| m.len() > 1 && m[0] == 3)
            .collect();
        assert!(statuses.len() <= 1, "more than one status: {statuses:?}");
        statuses
            .first()
            .map(|m| String::from_utf8(m[1..].to_vec()).expect("status is UTF-8"))
    }

    /// The status, decoded.
    pub fn status(&self) -> Status {
        let json = self.status_json().expect("a status on channel 3");
        serde_json::from_str(&json).expect("status is a Status")
    }

    /// The Close frame's code and reason.
    pub fn close(&self) -> Option<(u16, String)> {
        self.frames.iter().find_map(WsFrameIn::close)
    }

    /// Asserts the normal end of a session: the status (if `status` is given, exactly that
    /// JSON) is the last data message, then Close 1000 with an empty reason is the last frame,
    /// then the TCP connection closed. (It may close with a reset when the client had sent
    /// something the bridge did not read any more, as x/net/websocket's close does too.)
    pub fn assert_clean_end(&self, status: Option<&str>) {
        let last = self.frames.last().expect("at least one frame");
        assert_eq!(
            last.close(),
            Some((1000, String::new())),
            "last frame is Close 1000 with an empty reason: {:?}",
            self.frames
        );
        if let Some(json) = status {
            let data = self.messages();
            let m = data.last().expect("a status message");
            assert_eq!(m[0], 3, "the status is the last data message");
            assert_eq!(std::str::from_utf8(&m[1..]).unwrap(), json);
        }
    }
}

/// The client end of a WebSocket connection to the bridge, frame by frame.
pub struct WsClient {
    tcp: TcpStream,
    buf: BytesMut,
}

impl WsClient {
    /// The underlying socket (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Sends one frame; `masked` as every client must (RFC 6455 §5.3) unless a test breaks
    /// the rule on purpose.
    pub async fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8], masked: bool) {
        let header = FrameHeader {
            is_final: fin,
            opcode,
            mask: masked.then(rand_mask),
            ..FrameHeader::default()
        };
        let frame = WsFrame::from_payload(header, Bytes::copy_from_slice(payload));
        let mut out = Vec::with_capacity(payload.len() + 14);
        frame.format(&mut out).unwrap();
        // The peer may already have closed the connection; callers find out on read.
        let _ = self.tcp.write_all(&out).await;
    }

    /// Sends a raw frame header claiming `len` payload bytes, and then `payload` only.
    pub async fn send_header_only(&mut self, opcode: OpCode, len: u64, payload: &[u8]) {
        let header = FrameHeader {
            is_final: true,
            opcode,
            mask: Some(rand_mask()),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(len, &mut out).unwrap();
        out.extend_from_slice(payload);
        let _ = self.tcp.write_all(&out).await;
    }

    /// One binary message.
    pub async fn binary(&mut self, msg: &[u8]) {
        self.send_frame(true, OpCode::Data(Data::Binary), msg, true)
            .await;
    }

    /// `00` + `data`.
    pub async fn stdin(&mut self, data: &[u8]) {
        let mut msg = Vec::with_capacity(data.len() + 1);
        msg.push(0);
        msg.extend_from_slice(data);
        self.binary(&msg).await;
    }

    /// `ff 00`.
    pub async fn close_stdin(&mut self) {
        self.binary(&[0xff, 0]).await;
    }

    /// `04` + `json`.
    pub async fn resize(&mut self, json: &str) {
        let mut msg = vec![4u8];
        msg.extend_from_slice(json.as_bytes());
        self.binary(&msg).await;
    }

    /// A Ping with `payload`.
    pub async fn ping(&mut self, payload: &[u8]) {
        self.send_frame(true, OpCode::Control(Control::Ping), payload, true)
            .await;
    }

    /// A Close frame.
    pub async fn close(&mut self, code: u16) {
        let frame = WsFrame::close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        }));
        let mut frame = frame;
        frame.header_mut().mask = Some(rand_mask());
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        let _ = self.tcp.write_all(&out).await;
    }

    /// The next frame, or `None` at EOF. `Err` on a reset.
    pub async fn try_read_frame(&mut self) -> Result<Option<WsFrameIn>, std::io::Error> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            if let Some((header, len)) = FrameHeader::parse(&mut cursor).expect("valid frame") {
                let head = cursor.position() as usize;
                let len = len as usize;
                if self.buf.len() >= head + len {
                    self.buf.advance(head);
                    let mut payload = self.buf.split_to(len);
                    if let Some(mask) = header.mask {
                        for (i, b) in payload.iter_mut().enumerate() {
                            *b ^= mask[i % 4];
                        }
                    }
                    return Ok(Some(WsFrameIn {
                        fin: header.is_final,
                        rsv: (header.rsv1, header.rsv2, header.rsv3),
                        opcode: header.opcode,
                        masked: header.mask.is_some(),
                        payload: payload.freeze(),
                    }));
                }
            }
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                assert!(self.buf.is_empty(), "EOF inside a frame");
                return Ok(None);
            }
        }
    }

    /// The next frame; panics at EOF or on a reset.
    pub async fn read_frame(&mut self) -> WsFrameIn {
        self.try_read_frame()
            .await
            .expect("read from the bridge")
            .expect("a frame, not EOF")
    }

    /// The next data message's bytes (skipping control frames); panics at EOF.
    pub async fn next_message(&mut self) -> Bytes {
        loop {
            let f = self.read_frame().await;
            if f.is_data() {
                return f.payload;
            }
            assert!(
                f.close().is_none(),
                "closed while a message was expected: {:?}",
                f.close()
            );
        }
    }

    /// The next Pong (data frames before it are skipped); panics on Close or EOF.
    pub async fn read_pong(&mut self) -> Bytes {
        loop {
            let f = self.read_frame().await;
            if f.opcode == OpCode::Control(Control::Pong) {
                return f.payload;
            }
            assert!(f.close().is_none(), "closed while a pong was expected");
        }
    }

    /// Reads until `n` payload bytes of `channel` arrived (other messages are skipped).
    pub async fn read_channel(&mut self, channel: u8, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let m = self.next_message().await;
            if m[0] == channel {
                out.extend_from_slice(&m[1..]);
            }
        }
        out
    }

    /// Every frame until the bridge closes the connection.
    pub async fn read_to_end(&mut self) -> Transcript {
        let mut t = Transcript::default();
        loop {
            match self.try_read_frame().await {
                Ok(Some(f)) => t.frames.push(f),
                Ok(None) => return t,
                Err(_) => {
                    t.reset = true;
                    return t;
                }
            }
        }
    }

    /// Whether the bridge closed the connection (EOF or reset) after at most a few frames,
    /// returning the frames seen.
    pub async fn expect_closed(&mut self) -> Transcript {
        within(
            Duration::from_secs(3),
            "bridge closes the connection",
            self.read_to_end(),
        )
        .await
    }

    /// Closes the TCP connection without a Close frame.
    pub fn drop_tcp(self) {
        drop(self);
    }
}

fn rand_mask() -> [u8; 4] {
    rand::random()
}

// ---------------------------------------------------------------------------------------------
// The fake runtime

/// A scripted runtime streaming server.
pub struct FakeRuntime {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<PendingUpgrade>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeRuntime {
    /// Listens on a random loopback port.
    pub async fn start() -> FakeRuntime {
        Self::start_with(None, None).await
    }

    /// Like [`start`](Self::start), with `SO_RCVBUF` / `SO_SNDBUF` set on the listener
    /// (accepted connections inherit them), so that little data hides in the runtime's kernel
    /// buffers: a runtime that stops reading pushes back early, and one whose writes stall
    /// shows it early.
    pub async fn start_with(recv_buffer: Option<u32>, send_buffer: Option<u32>) -> FakeRuntime {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        if let Some(size) = send_buffer {
            socket.set_send_buffer_size(size).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            let mut heads = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { return };
                        count.fetch_add(1, Ordering::SeqCst);
                        let tx = tx.clone();
                        heads.spawn(async move {
                            if let Some(p) = read_request(tcp).await {
                                let _ = tx.send(p);
                            }
                        });
                    }
                    Some(_) = heads.join_next(), if !heads.is_empty() => {}
                }
            }
        });
        FakeRuntime {
            addr,
            requests,
            connections,
            task,
        }
    }

    /// `http://<addr>`, the bridge's upstream.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The next upgrade request.
    pub async fn request(&mut self) -> PendingUpgrade {
        within(
            Duration::from_secs(3),
            "the bridge sends an upgrade request",
            self.requests.recv(),
        )
        .await
        .expect("fake runtime running")
    }

    /// A request that has already arrived, if any.
    pub fn try_request(&mut self) -> Option<PendingUpgrade> {
        self.requests.try_recv().ok()
    }

    /// Asserts that no request arrives within `d` (and that no connection was made at all).
    pub async fn expect_no_request(&mut self, d: Duration) {
        if let Ok(Some(p)) = tokio::time::timeout(d, self.requests.recv()).await {
            panic!("unexpected upgrade request: {:?}", p.head);
        }
        assert_eq!(self.connections(), 0, "the runtime was contacted");
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upgrade request as the runtime received it.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A request the runtime has read and not answered yet.
pub struct PendingUpgrade {
    pub head: RequestHead,
    /// Bytes that arrived after the head before any answer (there must be none).
    pub early: Bytes,
    tcp: TcpStream,
}

async fn read_request(mut tcp: TcpStream) -> Option<PendingUpgrade> {
    let mut buf = BytesMut::new();
    loop {
        if tcp.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut parsed);
        if let httparse::Status::Complete(len) = req.parse(&buf).ok()? {
            let head = RequestHead {
                method: req.method?.to_owned(),
                path: req.path?.to_owned(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            buf.advance(len);
            return Some(PendingUpgrade {
                head,
                early: buf.freeze(),
                tcp,
            });
        }
    }
}

/// The 101 a kubelet-lib runtime sends, choosing `protocol` (none: no version header).
pub fn switching_protocols(protocol: Option<&str>) -> String {
    let mut head = String::from(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
    );
    if let Some(p) = protocol {
        head.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    head.push_str("\r\n");
    head
}

impl PendingUpgrade {
    /// Answers 101 choosing `protocol` and starts speaking SPDY.
    pub async fn upgrade(self, protocol: Option<&str>) -> SpdyPeer {
        self.upgrade_raw(switching_protocols(protocol).as_bytes())
            .await
    }

    /// Writes `bytes` (a response head, maybe followed by frames) and starts speaking SPDY.
    pub async fn upgrade_raw(mut self, bytes: &[u8]) -> SpdyPeer {
        self.tcp.write_all(bytes).await.unwrap();
        SpdyPeer::new(self.tcp)
    }

    /// Answers with `status_line` (e.g. `404 Not Found`), `headers` and `body`, then closes,
    /// as Go's `http.Error` does.
    pub async fn refuse(mut self, status_line: &str, headers: &[(&str, &str)], body: &str) {
        let mut r = format!("HTTP/1.1 {status_line}\r\n");
        for (n, v) in headers {
            r.push_str(&format!("{n}: {v}\r\n"));
        }
        r.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        let _ = self.tcp.write_all(r.as_bytes()).await;
        let _ = self.tcp.shutdown().await;
    }

    /// Writes `bytes` and returns the connection, for a runtime that answers oddly.
    pub async fn respond_raw(mut self, bytes: &[u8]) -> TcpStream {
        self.tcp.write_all(bytes).await.unwrap();
        self.tcp
    }
}

/// A frame the bridge sent, decoded, with its exact wire bytes.
#[derive(Clone, Debug)]
pub struct Recv {
    pub frame: Frame,
    pub raw: Bytes,
}

/// What the runtime's reader saw.
#[derive(Debug)]
pub enum PeerEvent {
    Frame(Box<Recv>),
    /// The bridge closed the connection (`None`), or reading failed.
    Closed(Option<String>),
}

/// The runtime end of a SPDY connection, scripted by the test.
pub struct SpdyPeer {
    wr: OwnedWriteHalf,
    encoder: Encoder,
    deflater: HeaderDeflater,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    reader: JoinHandle<()>,
    /// Streams the bridge opened, by `streamtype`.
    pub streams: HashMap<String, u32>,
    /// Every frame read so far through [`frame`](Self::frame), PINGs included.
    pub log: Vec<Frame>,
    /// Let [`frame`](Self::frame) pass over PINGs (they stay in the log, unanswered).
    pub skip_pings: bool,
}

impl Drop for SpdyPeer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl SpdyPeer {
    fn new(tcp: TcpStream) -> SpdyPeer {
        let (mut rd, wr) = tcp.into_split();
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut decoder = Decoder::new(Limits::default());
            loop {
                let mut header = [0u8; 8];
                match rd.read_exact(&mut header).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        let _ = tx.send(PeerEvent::Closed(None));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(PeerEvent::Closed(Some(e.to_string())));
                        return;
                    }
                }
                let len = u32::from_be_bytes([0, header[5], header[6], header[7]]) as usize;
                let mut raw = BytesMut::with_capacity(8 + len);
                raw.extend_from_slice(&header);
                raw.resize(8 + len, 0);
                if let Err(e) = rd.read_exact(&mut raw[8..]).await {
                    let _ = tx.send(PeerEvent::Closed(Some(format!("inside a frame: {e}"))));
                    return;
                }
                let bytes = raw.clone().freeze();
                // A whole frame at a time, so DATA comes out as one piece.
                match decoder.decode(&mut raw) {
                    Ok(Some(frame)) => {
                        assert!(raw.is_empty(), "one frame decoded from one frame's bytes");
                        let _ = tx.send(PeerEvent::Frame(Box::new(Recv { frame, raw: bytes })));
                    }
                    other => {
                        let _ = tx.send(PeerEvent::Closed(Some(format!(
                            "bridge sent an undecodable frame: {other:?}"
                        ))));
                        return;
                    }
                }
            }
        });
        SpdyPeer {
            wr,
            encoder: Encoder::new(),
            deflater: HeaderDeflater::new(),
            events,
            reader,
            streams: HashMap::new(),
            log: Vec::new(),
            skip_pings: false,
        }
    }

    // --- reading -----------------------------------------------------------------------

    /// The next thing the reader saw.
    pub async fn event(&mut self) -> PeerEvent {
        within(Duration::from_secs(3), "a frame from the bridge", async {
            self.events.recv().await.expect("reader alive")
        })
        .await
    }

    /// The next frame; panics if the connection ended.
    pub async fn frame(&mut self) -> Recv {
        loop {
            match self.event().await {
                PeerEvent::Frame(r) => {
                    self.log.push(r.frame.clone());
                    if self.skip_pings && matches!(r.frame, Frame::Ping { .. }) {
                        continue;
                    }
                    return *r;
                }
                PeerEvent::Closed(why) => {
                    panic!("connection ended ({why:?}) where a frame was expected")
                }
            }
        }
    }

    /// A frame if one arrives within `d`.
    pub async fn frame_within(&mut self, d: Duration) -> Option<PeerEvent> {
        tokio::time::timeout(d, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Every frame until the bridge closes the connection, and how it closed.
    pub async fn until_closed(&mut self) -> (Vec<Frame>, Option<String>) {
        let mut frames = Vec::new();
        loop {
            match self.event().await {
                PeerEvent::Frame(r) => {
                    self.log.push(r.frame.clone());
                    frames.push(r.frame);
                }
                PeerEvent::Closed(why) => return (frames, why),
            }
        }
    }

    /// Expects a SYN_STREAM for `kind`, returns its id (not replied).
    pub async fn expect_syn(&mut self, kind: &str) -> u32 {
        let r = self.frame().await;
        match r.frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => {
                assert_eq!(
                    headers.get_str("streamtype"),
                    Some(kind),
                    "stream {stream_id}: {headers:?}"
                );
                self.streams.insert(kind.to_owned(), stream_id);
                stream_id
            }
            other => panic!("expected SYN_STREAM {kind}, got {other:?}"),
        }
    }

    /// Expects SYN_STREAMs for `kinds` in order, replying to each before the next arrives
    /// (as the bridge waits for each reply). Returns their ids.
    pub async fn accept_streams(&mut self, kinds: &[&str]) -> Vec<u32> {
        let mut ids = Vec::new();
        for kind in kinds {
            let id = self.expect_syn(kind).await;
            self.reply(id).await;
            ids.push(id);
        }
        ids
    }

    /// The id of the stream of type `kind`.
    pub fn id(&self, kind: &str) -> u32 {
        *self
            .streams
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind} stream"))
    }

    /// Reads DATA on `stream_id` until its FIN; returns the bytes and every DATA payload size.
    /// Panics on any other frame.
    pub async fn read_until_fin(&mut self, stream_id: u32) -> (Vec<u8>, Vec<usize>) {
        let mut data = Vec::new();
        let mut sizes = Vec::new();
        loop {
            match self.frame().await.frame {
                Frame::Data {
                    stream_id: id,
                    fin,
                    payload,
                } if id == stream_id => {
                    data.extend_from_slice(&payload);
                    sizes.push(payload.len());
                    if fin {
                        return (data, sizes);
                    }
                }
                other => panic!("expected DATA on {stream_id}, got {other:?}"),
            }
        }
    }

    /// Reads exactly `n` bytes of DATA on `stream_id` (no FIN expected).
    pub async fn read_data(&mut self, stream_id: u32, n: usize) -> Vec<u8> {
        let mut data = Vec::new();
        while data.len() < n {
            match self.frame().await.frame {
                Frame::Data {
                    stream_id: id,
                    fin: false,
                    payload,
                } if id == stream_id => data.extend_from_slice(&payload),
                other => panic!("expected DATA on {stream_id}, got {other:?}"),
            }
        }
        assert_eq!(data.len(), n);
        data
    }

    /// Reads (and logs) whatever arrives during `d`; panics if the connection ends.
    pub async fn drain_for(&mut self, d: Duration) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + d;
        let mut frames = Vec::new();
        while let Ok(e) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            match e.expect("reader alive") {
                PeerEvent::Frame(r) => {
                    self.log.push(r.frame.clone());
                    frames.push(r.frame);
                }
                PeerEvent::Closed(why) => panic!("connection ended ({why:?})"),
            }
        }
        frames
    }

    /// Asserts that no frame arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Some(e) = self.frame_within(d).await {
            panic!("expected no frame, got {e:?}");
        }
    }

    /// Stops reading the connection: the bridge's writes pile up in the socket buffers.
    pub fn stop_reading(&mut self) {
        self.reader.abort();
    }

    // --- writing -----------------------------------------------------------------------

    /// Writes raw bytes.
    pub async fn raw(&mut self, bytes: &[u8]) {
        let _ = self.wr.write_all(bytes).await;
    }

    /// Writes `frame` (header blocks through this peer's own zlib context).
    pub async fn send(&mut self, frame: Frame) {
        let bytes = self.encode(&frame);
        self.raw(&bytes).await;
    }

    /// The wire form of `frame`.
    pub fn encode(&mut self, frame: &Frame) -> Vec<u8> {
        match frame {
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                let pairs: Vec<(&str, &[u8])> = headers.iter().collect();
                self.syn_reply_raw(*stream_id, *fin, &pairs)
            }
            other => {
                let mut out = BytesMut::new();
                self.encoder.encode(other, &mut out).unwrap();
                out.to_vec()
            }
        }
    }

    /// A SYN_REPLY with exactly these header pairs, unchecked (upper-case names included).
    pub fn syn_reply_raw(&mut self, stream_id: u32, fin: bool, pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut payload = stream_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&self.header_block(pairs));
        control_frame(2, u8::from(fin), &payload)
    }

    /// A compressed header block holding `pairs`, continuing this peer's zlib stream.
    pub fn header_block(&mut self, pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut plain = (pairs.len() as u32).to_be_bytes().to_vec();
        for (n, v) in pairs {
            plain.extend_from_slice(&(n.len() as u32).to_be_bytes());
            plain.extend_from_slice(n.as_bytes());
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v);
        }
        let mut out = Vec::new();
        self.deflater.compress(&plain, &mut out);
        out
    }

    /// SYN_REPLY with no headers, as every Kubernetes server answers.
    pub async fn reply(&mut self, stream_id: u32) {
        let bytes = self.syn_reply_raw(stream_id, false, &[]);
        self.raw(&bytes).await;
    }

    pub async fn data(&mut self, stream_id: u32, payload: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id,
            fin,
            payload: Bytes::copy_from_slice(payload),
        })
        .await;
    }

    pub async fn rst(&mut self, stream_id: u32, status: RstStatus) {
        self.send(Frame::RstStream { stream_id, status }).await;
    }

    pub async fn goaway(&mut self, last_good_stream_id: u32) {
        self.send(Frame::GoAway {
            last_good_stream_id,
            status: GoAwayStatus::OK,
        })
        .await;
    }

    /// Ends the session as the kubelet library does (protocol.md §3.7): `status` on the error
    /// stream, RST CANCEL on every stream in `unfinished`, GOAWAY, TCP close.
    pub async fn finish(&mut self, status: &str, unfinished: &[u32]) {
        let error = self.id("error");
        self.data(error, status.as_bytes(), false).await;
        for id in unfinished {
            self.rst(*id, RstStatus::CANCEL).await;
        }
        let last = self.streams.values().copied().max().unwrap_or(0);
        self.goaway(last).await;
        let _ = self.wr.shutdown().await;
    }

    /// Closes the write side (TCP FIN) without any SPDY goodbye.
    pub async fn shutdown(&mut self) {
        let _ = self.wr.shutdown().await;
    }

    /// Resets the TCP connection (RST, not FIN).
    pub fn reset_tcp(self) {
        self.wr.as_ref().set_zero_linger().unwrap();
        // Dropping both halves closes the socket; with a zero linger that sends RST.
        drop(self);
    }
}

/// A control frame with `frame_type`, `flags` and `payload`.
pub fn control_frame(frame_type: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80, 0x03];
    out.extend_from_slice(&frame_type.to_be_bytes());
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&[flags, len[1], len[2], len[3]]);
    out.extend_from_slice(payload);
    out
}

/// The status a kubelet-lib runtime writes for exit code `code`.
pub fn runtime_exit_status(code: u32) -> String {
    Status::non_zero_exit(
        format!("command terminated with non-zero exit code: error executing command [sh], exit code {code}"),
        code,
    )
    .to_json()
}

/// Sets up a session against `fake` for the options in `path`: the client's handshake and the
/// runtime's 101 (choosing `protocol`) and stream replies run together, since the bridge
/// upgrades the runtime before it answers the client (default order).
pub async fn session(
    bridge: SocketAddr,
    fake: &mut FakeRuntime,
    path: &str,
    protocol: Option<&str>,
    kinds: &[&str],
) -> (WsClient, SpdyPeer) {
    let req = ClientRequest::v5(path);
    let runtime = async {
        let pending = fake.request().await;
        let mut peer = pending.upgrade(protocol).await;
        peer.accept_streams(kinds).await;
        peer
    };
    let ((resp, ws), peer) = tokio::join!(handshake(bridge, &req), runtime);
    assert_eq!(
        resp.status,
        101,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    (ws, peer)
}
