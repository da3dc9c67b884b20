//! Legacy channel-based WebSocket port-forward (protocol.md §7.1), translated to SPDY
//! port-forward (§6): what kube-rs and the Python client speak.
//!
//! ```text
//!  client                                   bridge                          runtime (SPDY)
//!  ◀─ 00 90 1f, 01 90 1f, 02 82 23, 03 82 23   initial port messages (C-81)
//!                                           per port i: SYN error {port, requestid=i}, FIN it,
//!                                                       SYN data  {port, requestid=i}
//!  ── 2i + bytes ─────────────────────────▶ data stream i ──DATA──────────▶
//!  ◀─ 2i + bytes ───────────────────────── data stream i ◀──DATA──────────
//!  ◀─ 2i+1 + "error forwarding port ..." ─ error stream i ◀─text, RST──────
//!  ◀─ Close 1000 ───────────────────────── once every data stream has ended
//! ```
//!
//! Each port gets exactly one forwarded connection per session, as in the kubelet's WebSocket
//! server. A port whose forward fails gets its error text on its error channel and its own
//! streams reset; the other ports and the SPDY session carry on. Client bytes for a port that
//! has ended, for an error channel, or for an unknown channel are dropped.
//!
//! Client payloads reach the data streams as slices of the client connection's read buffer, and
//! runtime bytes go to the client with the channel byte written between the frame header and
//! the payload: neither direction copies in the binary codec. A client's Ping is answered with
//! a Pong ahead of the next queued message; a client's Close with a Close echoing its code; a
//! client breaking RFC 6455 with the Close code its [`DecodeError`] names.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::channel::subprotocol;
use crate::connection::{self, ConnectionConfig, Handle, StreamReader};
use crate::metrics::ByteCounter;
use crate::spdy::{HeaderBlock, RstStatus};
use crate::upstream::UpstreamIo;
use crate::websocket::{
    CloseFrame, DecodeError, Event, Opcode, ReadError, Reader, Writer, close_code,
};

use super::close_client;

/// Default [`ChannelConfig::max_ports`]: 128, the most whose channels (`2i`, `2i+1`) fit in
/// the one-byte channel number.
pub const DEFAULT_MAX_PORTS: usize = 128;
/// Default [`ChannelConfig::error_wait`]: 5 s. containerd holds a forward open for about 1 s
/// after its client side ends, then ends the error stream.
pub const DEFAULT_ERROR_WAIT: Duration = Duration::from_secs(5);
/// Default [`ChannelConfig::max_error_text`]: 64 KiB.
pub const DEFAULT_MAX_ERROR_TEXT: usize = 64 * 1024;

/// Client messages queued per port while its data stream is slow to take them.
const PORT_QUEUE: usize = 4;
/// Messages queued for the client while its connection is slow.
const OUT_QUEUE: usize = 16;

/// How channel-mode sessions run.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// The SPDY connection to the runtime (SYN_REPLY timeout, pings, close timeout, caps).
    /// Default [`ConnectionConfig::client`] (client-go's values).
    pub connection: ConnectionConfig,
    /// Most ports one session may forward. Default [`DEFAULT_MAX_PORTS`] (128).
    pub max_ports: usize,
    /// After a port's data stream has ended, how long to wait for the runtime to end its error
    /// stream (and so say whether the forward failed). Default [`DEFAULT_ERROR_WAIT`] (5 s).
    pub error_wait: Duration,
    /// Error-stream bytes kept per port; the rest is dropped. Default
    /// [`DEFAULT_MAX_ERROR_TEXT`] (64 KiB).
    pub max_error_text: usize,
    /// Bound on each closing step (sending the Close, waiting for the client's reply).
    /// Default 1 s.
    pub close_timeout: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            connection: ConnectionConfig::client(),
            max_ports: DEFAULT_MAX_PORTS,
            error_wait: DEFAULT_ERROR_WAIT,
            max_error_text: DEFAULT_MAX_ERROR_TEXT,
            close_timeout: Duration::from_secs(1),
        }
    }
}

/// How channel messages are encoded, from the negotiated sub-protocol.
///
/// ```text
///  Binary (v4.channel.k8s.io, or none)     Base64 (v4.base64.channel.k8s.io)
///  +---------+----------------+            +--------------+--------------------+
///  | channel | payload bytes  |  binary    | '0' + channel| base64(payload)    |  text
///  +---------+----------------+            +--------------+--------------------+
///    1 byte                                   1 character (past '9' from channel 10)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Binary messages, the channel as the first byte.
    Binary,
    /// Text messages, `'0' + channel` then standard base64 of the payload.
    Base64,
}

impl Codec {
    /// The codec for an offer of WebSocket sub-protocols, and the sub-protocol to answer
    /// with: the first of `v4.channel.k8s.io` and `v4.base64.channel.k8s.io` in client order,
    /// or binary without a sub-protocol when nothing was offered (the kubelet's rule). `None`
    /// when the offer names neither: no channel-mode port-forward for this client.
    pub fn choose(offered: &[String]) -> Option<(Codec, Option<&'static str>)> {
        if offered.is_empty() {
            return Some((Codec::Binary, None));
        }
        offered.iter().find_map(|p| match p.as_str() {
            subprotocol::V4 => Some((Codec::Binary, Some(subprotocol::V4))),
            subprotocol::V4_BASE64 => Some((Codec::Base64, Some(subprotocol::V4_BASE64))),
            _ => None,
        })
    }
}

/// A message for the client, as [`Writer::start`] takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub opcode: Opcode,
    /// Written between the frame header and `payload` (binary codec), so that the payload
    /// is never copied to put the channel in front of it.
    pub channel: Option<u8>,
    pub payload: Bytes,
}

/// One message on `channel` carrying `payload`.
pub fn encode(codec: Codec, channel: u8, payload: Bytes) -> Outgoing {
    match codec {
        Codec::Binary => Outgoing {
            opcode: Opcode::Binary,
            channel: Some(channel),
            payload,
        },
        Codec::Base64 => {
            let mut text = String::with_capacity(1 + payload.len().div_ceil(3) * 4);
            text.push(char::from(b'0'.wrapping_add(channel)));
            STANDARD.encode_string(&payload, &mut text);
            Outgoing {
                opcode: Opcode::Text,
                channel: None,
                payload: Bytes::from(text),
            }
        }
    }
}

/// The channel and payload of a client message, or `None` for a message without a channel
/// byte or whose base64 does not decode (the kubelet drops both). Text and binary messages
/// decode alike, as the kubelet's WebSocket server reads both as bytes.
pub fn decode(codec: Codec, msg: Bytes) -> Option<(u8, Bytes)> {
    let (&first, _) = msg.split_first()?;
    match codec {
        Codec::Binary => Some((first, msg.slice(1..))),
        Codec::Base64 => {
            let payload = STANDARD.decode(&msg[1..]).ok()?;
            Some((first.wrapping_sub(b'0'), Bytes::from(payload)))
        }
    }
}

/// The messages sent right after the 101: for each port in request order, on its data channel
/// and then on its error channel, the port as an unsigned 16-bit little-endian value (C-81).
///
/// ```text
///  port 8080 as port #0:  00 90 1f    01 90 1f
///  port 9090 as port #1:  02 82 23    03 82 23
/// ```
pub fn initial_messages(ports: &[u16], codec: Codec) -> Vec<Outgoing> {
    let mut out = Vec::with_capacity(ports.len() * 2);
    for (i, port) in ports.iter().enumerate() {
        let data = data_channel(i);
        let le = Bytes::copy_from_slice(&port.to_le_bytes());
        out.push(encode(codec, data, le.clone()));
        out.push(encode(codec, data + 1, le));
    }
    out
}

/// Data channel of the `i`-th port; its error channel is the next one.
fn data_channel(i: usize) -> u8 {
    u8::try_from(2 * i).expect("port count is capped so channels fit in a byte")
}

/// Why the requested ports are unusable; the texts are the kubelet's.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PortsError {
    #[error("query parameter \"port\" is required")]
    Missing,
    #[error("query parameter \"port\" cannot be empty")]
    Empty,
    #[error("unable to parse {0:?} as a port: {1}")]
    Invalid(String, &'static str),
    #[error("port {0:?} must be > 0")]
    Zero(String),
    #[error("at most {0} ports can be forwarded in one session")]
    TooMany(usize),
}

/// The ports of a standalone request, from its query: every `port` and `ports` parameter, each
/// a comma-separated list of decimal ports 1–65535, in order (the API server's `ports=` and the
/// kubelet's `port=`).
pub fn ports_from_query(query: Option<&str>, max_ports: usize) -> Result<Vec<u16>, PortsError> {
    let mut ports = Vec::new();
    let mut seen = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "port" && name != "ports" {
            continue;
        }
        seen = true;
        let value = percent_decode(value);
        if value.is_empty() {
            return Err(PortsError::Empty);
        }
        for item in value.split(',') {
            let port = parse_port(item).map_err(|why| PortsError::Invalid(value.clone(), why))?;
            if port == 0 {
                return Err(PortsError::Zero(value.clone()));
            }
            ports.push(port);
        }
    }
    if !seen {
        return Err(PortsError::Missing);
    }
    check_port_count(ports, max_ports)
}

/// `ports`, if there are at most `max_ports` of them (and never more than
/// [`DEFAULT_MAX_PORTS`], whose channels fill the one-byte channel number).
pub fn check_port_count(ports: Vec<u16>, max_ports: usize) -> Result<Vec<u16>, PortsError> {
    let max = max_ports.min(DEFAULT_MAX_PORTS);
    if ports.len() > max {
        return Err(PortsError::TooMany(max));
    }
    Ok(ports)
}

/// Go's `strconv.ParseUint(s, 10, 16)`: ASCII digits only.
fn parse_port(s: &str) -> Result<u16, &'static str> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid syntax");
    }
    s.bytes()
        .try_fold(0u16, |n, d| {
            n.checked_mul(10)?.checked_add(u16::from(d - b'0'))
        })
        .ok_or("value out of range")
}

/// Query-component decoding: `%XX` escapes and `+` as a space; malformed escapes stay as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a channel-mode session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelEnd {
    /// Every port's forward ended; the client got Close 1000.
    PortsDone,
    /// The client sent a Close frame or went away first.
    ClientGone,
    /// The client broke the WebSocket protocol; it got the Close code that says how.
    ClientProtocolError,
}

impl ChannelEnd {
    /// A short, bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ChannelEnd::PortsDone => "ports_done",
            ChannelEnd::ClientGone => "client_gone",
            ChannelEnd::ClientProtocolError => "client_protocol_error",
        }
    }
}

/// What one port's forward did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStats {
    /// The forwarded port.
    pub port: u16,
    /// Client bytes written to the data stream.
    pub client_to_runtime: u64,
    /// Data-stream bytes sent to the client.
    pub runtime_to_client: u64,
    /// The error text sent on the port's error channel, if the forward failed.
    pub error: Option<String>,
}

/// What a channel-mode session did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelStats {
    /// Client payload bytes received on data channels (including bytes for ports that had
    /// already ended, which are dropped).
    pub client_bytes: u64,
    /// The ports whose forwards finished before the session ended, in completion order.
    pub ports: Vec<PortStats>,
    /// Why the session ended.
    pub end: ChannelEnd,
}

/// Where a session counts its ports' data bytes (all ports together). The default counts
/// nothing.
#[derive(Clone, Debug, Default)]
pub struct DataBytes {
    /// Client bytes written to the runtime's data streams.
    pub client_to_runtime: ByteCounter,
    /// Data-stream bytes sent to the client.
    pub runtime_to_client: ByteCounter,
}

/// Runs a channel-mode session: `client` is the client connection's halves (server role, 101
/// already sent with the sub-protocol of `codec`), `io` and `leftover` the runtime connection
/// upgraded to SPDY `portforward.k8s.io`, `ports` the ports to forward (at most
/// [`DEFAULT_MAX_PORTS`]).
pub async fn run<R, W>(
    client: (Reader<R>, Writer<W>),
    io: UpstreamIo,
    leftover: Bytes,
    ports: Vec<u16>,
    codec: Codec,
    cfg: &ChannelConfig,
    bytes: &DataBytes,
) -> ChannelStats
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = client;
    let (handle, _incoming) = connection::spawn(io, leftover, cfg.connection.clone());
    let mut stats = ChannelStats {
        client_bytes: 0,
        ports: Vec::new(),
        end: ChannelEnd::ClientGone,
    };

    for msg in initial_messages(&ports, codec) {
        if writer
            .send(msg.opcode, msg.channel, msg.payload)
            .await
            .is_err()
        {
            handle.close().await;
            return stats;
        }
    }

    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(OUT_QUEUE);
    let mut inputs = Vec::with_capacity(ports.len());
    let mut forwards = FuturesUnordered::new();
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(PORT_QUEUE);
        inputs.push(tx);
        forwards.push(forward(
            i,
            port,
            &handle,
            out_tx.clone(),
            rx,
            (codec, bytes),
            cfg,
        ));
    }
    drop(out_tx);

    // The reader hands a Ping's payload to the writer here rather than through the data
    // queue, so a Pong never waits behind queued data (nor the reader behind a full queue).
    let pong = Pong::default();
    let ports_done = {
        let reader = read_client(&mut reader, &inputs, codec, &pong, &mut stats.client_bytes);
        let ports_and_writer = async {
            let collect = async {
                let mut done = Vec::new();
                while let Some(port) = forwards.next().await {
                    done.push(port);
                }
                done
            };
            // Ends once every forward has ended and its messages are out.
            let write = async {
                loop {
                    if let Some(payload) = pong.take() {
                        writer.send(Opcode::Pong, None, payload).await?;
                        continue;
                    }
                    tokio::select! {
                        biased;
                        () = pong.owed.notified() => {}
                        msg = out_rx.recv() => match msg {
                            Some(msg) => writer.send(msg.opcode, msg.channel, msg.payload).await?,
                            None => return Ok::<(), io::Error>(()),
                        },
                    }
                }
            };
            let (done, written) = futures_util::future::join(collect, write).await;
            (done, written.is_ok())
        };
        tokio::select! {
            left = reader => Err(left),
            done = ports_and_writer => Ok(done),
        }
    };
    drop(inputs);

    match ports_done {
        Ok((done, client_ok)) => {
            stats.ports = done;
            stats.end = ChannelEnd::PortsDone;
            // The client learns at once; the runtime session (nothing open on it any more)
            // ends while the client answers the Close.
            let client = async {
                if client_ok {
                    let close = CloseFrame {
                        code: close_code::NORMAL,
                        reason: String::new(),
                    };
                    close_client(
                        &mut writer,
                        Some(&mut reader),
                        Some(close),
                        cfg.close_timeout,
                    )
                    .await;
                }
            };
            futures_util::future::join(client, handle.close()).await;
        }
        Err(left) => {
            // The client left: every stream is reset and the session ends (GOAWAY), while the
            // client gets its answer.
            drop(forwards);
            if matches!(left, ClientLeft::Broke(_)) {
                stats.end = ChannelEnd::ClientProtocolError;
            }
            let client = async {
                match left {
                    // RFC 6455 §5.5.1: the reply echoes the client's status code.
                    ClientLeft::Closed(code) => {
                        let reply = code.map(|code| CloseFrame {
                            code,
                            reason: String::new(),
                        });
                        close_client(
                            &mut writer,
                            None::<&mut Reader<R>>,
                            reply,
                            cfg.close_timeout,
                        )
                        .await;
                    }
                    // The client's bytes are no longer frames: no Close reply to wait for.
                    ClientLeft::Broke(e) => {
                        let refusal = CloseFrame {
                            code: e.close_code(),
                            reason: e.to_string(),
                        };
                        close_client(
                            &mut writer,
                            None::<&mut Reader<R>>,
                            Some(refusal),
                            cfg.close_timeout,
                        )
                        .await;
                    }
                    ClientLeft::Gone => {}
                }
            };
            futures_util::future::join(client, handle.close()).await;
        }
    }
    stats
}

/// The Pong the writer owes the client: the latest Ping's payload (only the latest needs an
/// answer, RFC 6455 §5.5.3).
#[derive(Default)]
struct Pong {
    payload: Mutex<Option<Bytes>>,
    owed: Notify,
}

impl Pong {
    fn owe(&self, payload: Bytes) {
        *self.payload.lock().unwrap_or_else(|e| e.into_inner()) = Some(payload);
        self.owed.notify_one();
    }

    fn take(&self) -> Option<Bytes> {
        self.payload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// How the client side of a session ended.
enum ClientLeft {
    /// A Close frame, with its status code if it had one.
    Closed(Option<u16>),
    /// A frame the decoder refused.
    Broke(DecodeError),
    /// EOF or an I/O error, without a Close.
    Gone,
}

/// Reads client messages and hands data-channel payloads to their port's forward, and Pings to
/// the writer, until the client sends a Close, breaks the protocol or goes away.
async fn read_client<R>(
    reader: &mut Reader<R>,
    inputs: &[mpsc::Sender<Bytes>],
    codec: Codec,
    pong: &Pong,
    received: &mut u64,
) -> ClientLeft
where
    R: AsyncRead + Unpin,
{
    loop {
        // Text and binary alike: the kubelet's WebSocket server reads both as bytes.
        let bytes = match reader.next().await {
            Some(Ok(Event::Message { payload, .. })) => payload,
            // A Ping's payload is its own copy (websocket::codec::COPY_BELOW), so a waiting
            // Pong holds no read buffer.
            Some(Ok(Event::Ping(payload))) => {
                pong.owe(payload);
                continue;
            }
            Some(Ok(Event::Pong(_))) => continue,
            Some(Ok(Event::Close(frame))) => return ClientLeft::Closed(frame.map(|f| f.code)),
            Some(Err(ReadError::Protocol(e))) => return ClientLeft::Broke(e),
            Some(Err(ReadError::Io(_) | ReadError::TruncatedFrame)) | None => {
                return ClientLeft::Gone;
            }
        };
        let Some((channel, payload)) = decode(codec, bytes) else {
            continue;
        };
        // Error channels are server → client only; unknown channels are the kubelet's
        // "possible protocol error", dropped.
        let index = usize::from(channel / 2);
        if channel % 2 == 1 || index >= inputs.len() || payload.is_empty() {
            continue;
        }
        *received += payload.len() as u64;
        // Waits while this port's data stream is slow (the kubelet's pipes block the same
        // way); fails, and the bytes are dropped, once the port's forward has ended.
        let _ = inputs[index].send(payload).await;
    }
}

/// One port's forward: opens its stream pair, relays until the runtime ends the data stream,
/// then reports the runtime's error text, if any, on the port's error channel.
async fn forward(
    index: usize,
    port: u16,
    handle: &Handle,
    out: mpsc::Sender<Outgoing>,
    mut input: mpsc::Receiver<Bytes>,
    (codec, bytes): (Codec, &DataBytes),
    cfg: &ChannelConfig,
) -> PortStats {
    let data_ch = data_channel(index);
    let error_ch = data_ch + 1;
    let mut stats = PortStats {
        port,
        client_to_runtime: 0,
        runtime_to_client: 0,
        error: None,
    };
    let headers = |kind: &str| {
        HeaderBlock::new()
            .with("streamtype", kind)
            .with("port", port.to_string())
            .with("requestid", index.to_string())
    };
    let report = |text: String| {
        let msg = encode(codec, error_ch, Bytes::from(text.clone()));
        let out = out.clone();
        async move {
            let _ = out.send(msg).await;
            text
        }
    };

    // client-go's order: the error stream first, half-closed at once (the client never writes
    // on it), then the data stream.
    let error = match handle.open_stream(headers("error")).await {
        Ok(s) => s,
        Err(e) => {
            stats.error = Some(report(format!("error forwarding port {port}: {e}")).await);
            return stats;
        }
    };
    let (mut error_reader, mut error_writer) = error.split();
    let _ = error_writer.finish().await;
    let data = match handle.open_stream(headers("data")).await {
        Ok(s) => s,
        Err(e) => {
            error_writer.reset(RstStatus::CANCEL);
            stats.error = Some(report(format!("error forwarding port {port}: {e}")).await);
            return stats;
        }
    };
    let (mut data_reader, mut data_writer) = data.split();

    let (relay_done, relay_done_rx) = oneshot::channel::<()>();
    let relay = async {
        let to_runtime = async {
            while let Some(piece) = input.recv().await {
                let len = piece.len() as u64;
                if data_writer.send(piece).await.is_err() {
                    break;
                }
                stats.client_to_runtime += len;
                bytes.client_to_runtime.add(len);
            }
            // The client cannot end one port's direction in this protocol: only the runtime
            // ends a forward, so this side just waits.
            std::future::pending::<()>().await;
        };
        let to_client = async {
            while let Some(piece) = data_reader.recv().await {
                let len = piece.len() as u64;
                stats.runtime_to_client += len;
                if out.send(encode(codec, data_ch, piece)).await.is_err() {
                    break;
                }
                bytes.runtime_to_client.add(len);
            }
        };
        tokio::select! {
            () = to_client => {}
            () = to_runtime => {}
        }
        // The runtime ended the forward (target closed, or forwarding failed): later client
        // bytes for this port are dropped, and the runtime learns it at once (client-go ≥ 1.32
        // resets its data stream the same way).
        data_writer.reset(RstStatus::CANCEL);
        drop(input);
        let _ = relay_done.send(());
    };
    let collect = read_error_text(&mut error_reader, relay_done_rx, cfg);
    let ((), text) = futures_util::future::join(relay, collect).await;

    if !text.is_empty() {
        // The runtime resets both streams after its error text; ours are reset too, and only
        // this port's.
        error_writer.reset(RstStatus::CANCEL);
        let text = String::from_utf8_lossy(&text).into_owned();
        stats.error = Some(report(text).await);
    }
    stats
}

/// The error stream's bytes (at most [`ChannelConfig::max_error_text`]), read until the
/// stream ends, or until [`ChannelConfig::error_wait`] after `relay_done` fires.
async fn read_error_text(
    reader: &mut StreamReader,
    relay_done: oneshot::Receiver<()>,
    cfg: &ChannelConfig,
) -> Vec<u8> {
    let mut text = Vec::new();
    let mut relay_done = relay_done;
    let mut deadline: Option<Instant> = None;
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            piece = reader.recv() => match piece {
                Some(piece) => {
                    let room = cfg.max_error_text.saturating_sub(text.len());
                    text.extend_from_slice(&piece[..piece.len().min(room)]);
                }
                None => return text,
            },
            _ = &mut relay_done, if deadline.is_none() => {
                deadline = Some(Instant::now() + cfg.error_wait);
            }
            () = sleep => return text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn initial_messages_carry_each_port_little_endian_on_data_then_error() {
        let msgs = initial_messages(&[8080, 9090], Codec::Binary);
        assert!(msgs.iter().all(|m| m.opcode == Opcode::Binary));
        let raw: Vec<Vec<u8>> = msgs
            .iter()
            .map(|m| [&[m.channel.unwrap()][..], &m.payload].concat())
            .collect();
        assert_eq!(
            raw,
            vec![
                vec![0x00, 0x90, 0x1f],
                vec![0x01, 0x90, 0x1f],
                vec![0x02, 0x82, 0x23],
                vec![0x03, 0x82, 0x23],
            ]
        );
    }

    #[test]
    fn base64_messages_are_text_with_a_channel_character() {
        let text = |payload: &'static str| Outgoing {
            opcode: Opcode::Text,
            channel: None,
            payload: Bytes::from_static(payload.as_bytes()),
        };
        let msgs = initial_messages(&[8080], Codec::Base64);
        assert_eq!(msgs, vec![text("0kB8="), text("1kB8=")]);
        assert_eq!(
            encode(Codec::Base64, 10, Bytes::from_static(b"hi")),
            text(":aGk=")
        );
        assert_eq!(
            decode(Codec::Base64, Bytes::from_static(b"2aGk=")),
            Some((2, Bytes::from_static(b"hi")))
        );
        assert_eq!(decode(Codec::Base64, Bytes::from_static(b"0%%%")), None);
    }

    #[test]
    fn binary_decoding_splits_off_the_channel_byte() {
        assert_eq!(
            decode(Codec::Binary, Bytes::from_static(b"\x04abc")),
            Some((4, Bytes::from_static(b"abc")))
        );
        assert_eq!(decode(Codec::Binary, Bytes::new()), None);
    }

    #[test]
    fn codec_follows_the_first_v4_offer_or_binary_without_offer() {
        assert_eq!(Codec::choose(&[]), Some((Codec::Binary, None)));
        assert_eq!(
            Codec::choose(&offer(&[
                "v5.channel.k8s.io",
                "v4.base64.channel.k8s.io",
                "v4.channel.k8s.io"
            ])),
            Some((Codec::Base64, Some(subprotocol::V4_BASE64)))
        );
        assert_eq!(
            Codec::choose(&offer(&["v4.channel.k8s.io"])),
            Some((Codec::Binary, Some(subprotocol::V4)))
        );
        assert_eq!(
            Codec::choose(&offer(&["channel.k8s.io", "v5.channel.k8s.io"])),
            None
        );
    }

    #[test]
    fn ports_come_from_port_and_ports_parameters_in_order() {
        assert_eq!(
            ports_from_query(Some("ports=8080,9090&x=1&port=7"), 128),
            Ok(vec![8080, 9090, 7])
        );
        assert_eq!(
            ports_from_query(Some("ports=80%2C81"), 128),
            Ok(vec![80, 81])
        );
        assert_eq!(ports_from_query(None, 128), Err(PortsError::Missing));
        assert_eq!(ports_from_query(Some("port="), 128), Err(PortsError::Empty));
        assert_eq!(
            ports_from_query(Some("port=0"), 128),
            Err(PortsError::Zero("0".into()))
        );
        assert_eq!(
            ports_from_query(Some("port=80,x"), 128),
            Err(PortsError::Invalid("80,x".into(), "invalid syntax"))
        );
        assert_eq!(
            ports_from_query(Some("port=65536"), 128),
            Err(PortsError::Invalid("65536".into(), "value out of range"))
        );
        assert_eq!(
            ports_from_query(Some("port=1,2,3"), 2),
            Err(PortsError::TooMany(2))
        );
        assert_eq!(
            PortsError::Missing.to_string(),
            "query parameter \"port\" is required"
        );
    }
}
