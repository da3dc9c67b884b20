//! Mode B (protocol.md §7.2): the runtime's SPDY port-forward session carried end to end inside
//! WebSocket binary messages. The bridge copies bytes and never parses SPDY.
//!
//! ```text
//!  client ──binary messages (any split: 1 B, 4 B, empty, 32 KiB)──▶ queue ──vectored write──▶ runtime
//!         ◀──────── one binary message per runtime read (≤ 32 KiB) ◀──────── read ─────────
//! ```
//!
//! One task, one future: both directions are polled by the same `poll_fn`, so an idle tunnel
//! is a parked task and two sockets: no channels, no extra tasks, and no buffers (they exist
//! only while bytes move; the client connection's [`Reader`] releases its read buffer whenever
//! the client goes quiet).
//!
//! * **Client → runtime.** Message boundaries mean nothing (spdystream writes every frame field
//!   as its own message). Messages that are ready together are queued (up to
//!   [`TunnelConfig::max_coalesce`] bytes) and written with one vectored write when no further
//!   message is immediately ready, so kubectl's 4-byte messages do not become 4-byte TCP writes.
//!   The queued payloads are the client's frames, unmasked where they were read: no copy.
//!   Empty messages are skipped; a text message is a protocol error (client-go's reader fails
//!   on one too). A full queue stops reading the client: back-pressure, never drop.
//! * **Runtime → client.** Each read becomes one binary message, written as one vectored write
//!   of its frame header and the read buffer itself. The read buffer follows the traffic: twice
//!   the last read, between [`TunnelConfig::min_upstream_read`] and
//!   [`TunnelConfig::max_upstream_read`]. It is allocated per read, freed once written, and
//!   freed as well when the read finds nothing, so a quiet tunnel holds no read buffer at all.
//!   One message is written while at most one more read waits for it.
//! * **Control frames.** No client-go peer pings in a tunnel (§7.2), but other clients may: a
//!   Ping is answered with a Pong carrying its payload, ahead of the next data message. A
//!   client's Pong is ignored.
//! * **End.** Either side ending ends both, as the API server's tunnel does: a client Close or
//!   EOF closes the runtime connection (after writing what was queued), and a Close is answered
//!   with a Close echoing its code; a runtime EOF or error becomes Close 1000 to the client; a
//!   text message becomes Close 1002, a message over [`TunnelConfig::max_message`] Close 1009,
//!   any other break of RFC 6455 the code its [`DecodeError`] names.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::websocket::{
    self, CloseFrame, DecodeError, Event, Limits, Opcode, ReadError, Reader, Writer, close_code,
};

use super::close_client;

/// Default [`TunnelConfig::max_upstream_read`]: 32 KiB, the API server's copy buffer.
pub const DEFAULT_MAX_UPSTREAM_READ: usize = 32 * 1024;
/// Default [`TunnelConfig::min_upstream_read`]: 1 KiB.
pub const DEFAULT_MIN_UPSTREAM_READ: usize = 1024;
/// Default [`TunnelConfig::max_coalesce`]: 256 KiB, as much as one read from the client
/// (see [`accept`]): bulk uploads then cost fewer runtime writes, which measured cheaper per GB
/// than 64 KiB.
pub const DEFAULT_MAX_COALESCE: usize = 256 * 1024;
/// Default [`TunnelConfig::close_timeout`]: 1 s, the API server's Close write deadline.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default [`TunnelConfig::max_message`]: 32 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// Pieces handed to one vectored write. Linux takes 1024; 64 is plenty for coalescing.
const MAX_PIECES: usize = 64;

/// The Close reason for a text message in a tunnel.
const TEXT_IN_TUNNEL: &str = "only binary messages are allowed in a tunnel";

/// How a tunnel buffers and ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Largest client message (and frame) accepted, in bytes; a larger one ends the tunnel
    /// (Close 1009), refused from its frame header before anything of it is buffered.
    /// kubectl's are at most a SPDY frame's payload (32 KiB). Default [`DEFAULT_MAX_MESSAGE`]
    /// (32 MiB, the bridge-wide cap).
    pub max_message: usize,
    /// Largest client frame accepted, in bytes; at most `max_message` counts. Default
    /// [`DEFAULT_MAX_MESSAGE`], as `max_message` (clients do not fragment).
    pub max_frame: usize,
    /// Largest read from the runtime, hence the largest message sent to the client, in bytes.
    /// Default [`DEFAULT_MAX_UPSTREAM_READ`] (32 KiB).
    pub max_upstream_read: usize,
    /// Smallest read buffer from the runtime, in bytes: the size after small reads (SPDY
    /// pings, keystrokes). Default [`DEFAULT_MIN_UPSTREAM_READ`] (1 KiB).
    pub min_upstream_read: usize,
    /// Client bytes queued for one upstream write, in bytes; reaching it stops reading the
    /// client until the runtime takes them. Default [`DEFAULT_MAX_COALESCE`] (256 KiB).
    pub max_coalesce: usize,
    /// Bound on each closing step: writing what is queued to the runtime, sending the Close,
    /// waiting for the client's Close reply. Default [`DEFAULT_CLOSE_TIMEOUT`] (1 s).
    pub close_timeout: Duration,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            max_message: DEFAULT_MAX_MESSAGE,
            max_frame: DEFAULT_MAX_MESSAGE,
            max_upstream_read: DEFAULT_MAX_UPSTREAM_READ,
            min_upstream_read: DEFAULT_MIN_UPSTREAM_READ,
            max_coalesce: DEFAULT_MAX_COALESCE,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        }
    }
}

impl TunnelConfig {
    /// The client connection's limits (the channel mode's too).
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame: self.max_frame.min(self.max_message),
            max_message: self.max_message,
        }
    }
}

/// The upgraded client connection `io` as the tunnel's WebSocket halves (server role).
///
/// hyper's upgraded connection replays whatever it read past the request itself, so nothing
/// is left over here.
pub fn accept<S>(io: S, cfg: &TunnelConfig) -> (Reader<ReadHalf<S>>, Writer<WriteHalf<S>>)
where
    S: AsyncRead + AsyncWrite,
{
    let (mut reader, writer) = websocket::server(io, Bytes::new(), cfg.limits());
    // A tunnel is a byte pipe whose uploads (`kubectl cp`-like copies through a forwarded
    // port) are its main cost: larger reads cut its CPU per GB to the plain relay's.
    reader.set_max_read(TUNNEL_MAX_READ);
    (reader, writer)
}

/// Largest read from a tunnel's client.
const TUNNEL_MAX_READ: usize = 256 * 1024;

/// Why a tunnel ended, and whose doing it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TunnelEnd {
    /// The client sent a Close frame.
    ClientClosed,
    /// The client's connection ended without a Close frame (EOF or an I/O error).
    ClientGone,
    /// The client sent a text message (C-77) or broke the WebSocket protocol.
    ClientProtocolError,
    /// The client sent a message over [`TunnelConfig::max_message`].
    ClientMessageTooBig,
    /// The runtime closed its connection.
    UpstreamClosed,
    /// Reading from or writing to the runtime failed.
    UpstreamFailed(io::ErrorKind),
}

impl TunnelEnd {
    /// A short, bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            TunnelEnd::ClientClosed => "client_closed",
            TunnelEnd::ClientGone => "client_gone",
            TunnelEnd::ClientProtocolError => "client_protocol_error",
            TunnelEnd::ClientMessageTooBig => "client_message_too_big",
            TunnelEnd::UpstreamClosed => "upstream_closed",
            TunnelEnd::UpstreamFailed(_) => "upstream_error",
        }
    }

    /// Whether the client ended the tunnel (as opposed to the runtime).
    pub fn is_client_side(&self) -> bool {
        matches!(
            self,
            TunnelEnd::ClientClosed
                | TunnelEnd::ClientGone
                | TunnelEnd::ClientProtocolError
                | TunnelEnd::ClientMessageTooBig
        )
    }
}

/// What a tunnel moved, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelStats {
    /// Bytes written to the runtime (binary message payloads).
    pub client_to_upstream: u64,
    /// Bytes sent to the client as binary message payloads, the runtime's early bytes included.
    pub upstream_to_client: u64,
    /// Binary messages received from the client, empty ones included.
    pub client_messages: u64,
    /// Writes to the runtime; far fewer than `client_messages` when coalescing works.
    pub upstream_writes: u64,
    /// Binary messages sent to the client.
    pub client_writes: u64,
    /// Why it ended.
    pub end: TunnelEnd,
}

/// Runs a tunnel between the client connection's halves `client` (from [`accept`]) and the
/// runtime's upgraded connection `upstream`, whose first bytes, read along with its 101, are
/// `prefix`. Returns when both connections are closed.
pub async fn run<R, W, U>(
    client: (Reader<R>, Writer<W>),
    upstream: U,
    prefix: Bytes,
    cfg: &TunnelConfig,
) -> TunnelStats
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, writer) = client;
    let mut out = ToClient { writer, pong: None };
    let mut upstream = upstream;
    let mut up = ClientToUpstream::new(cfg);
    let mut down = UpstreamToClient::new(cfg, prefix);
    let mut client_first = true;

    let end = poll_fn(|cx| {
        // Alternate which direction goes first, so that a busy one cannot use up the task's
        // cooperative budget every time and starve the other.
        client_first = !client_first;
        if client_first {
            if let Poll::Ready(end) = up.poll(cx, &mut reader, &mut out, Pin::new(&mut upstream)) {
                return Poll::Ready(end);
            }
            down.poll(cx, &mut out, Pin::new(&mut upstream))
        } else {
            if let Poll::Ready(end) = down.poll(cx, &mut out, Pin::new(&mut upstream)) {
                return Poll::Ready(end);
            }
            if let Poll::Ready(end) = up.poll(cx, &mut reader, &mut out, Pin::new(&mut upstream)) {
                return Poll::Ready(end);
            }
            if out.pong.is_some() {
                // A Ping was just read: its Pong goes out now, not whenever the runtime next
                // sends something.
                return down.poll(cx, &mut out, Pin::new(&mut upstream));
            }
            Poll::Pending
        }
    })
    .await;

    match end {
        TunnelEnd::ClientClosed | TunnelEnd::ClientGone => {
            // What the client sent before leaving (kubectl's RST_STREAMs and GOAWAY) goes to
            // the runtime first; then the end is passed on at once.
            let _ = tokio::time::timeout(cfg.close_timeout, async {
                up.drain(Pin::new(&mut upstream)).await?;
                upstream.shutdown().await
            })
            .await;
            drop(upstream);
            if end == TunnelEnd::ClientClosed {
                // RFC 6455 §5.5.1: the reply echoes the client's status code (none if none).
                let reply = up.close_reply.map(|code| CloseFrame {
                    code,
                    reason: String::new(),
                });
                close_client(
                    &mut out.writer,
                    None::<&mut Reader<R>>,
                    reply,
                    cfg.close_timeout,
                )
                .await;
            }
        }
        TunnelEnd::ClientProtocolError | TunnelEnd::ClientMessageTooBig => {
            drop(upstream);
            let frame = up.refusal.take().unwrap_or(CloseFrame {
                code: close_code::PROTOCOL_ERROR,
                reason: String::new(),
            });
            // After a frame the decoder refused, the client's bytes are no longer frames:
            // there is no Close reply to wait for.
            let reader = up.readable.then_some(&mut reader);
            close_client(&mut out.writer, reader, Some(frame), cfg.close_timeout).await;
        }
        TunnelEnd::UpstreamClosed | TunnelEnd::UpstreamFailed(_) => {
            drop(upstream);
            // client-go reads Close 1000 as EOF (protocol.md §7.2).
            let frame = CloseFrame {
                code: close_code::NORMAL,
                reason: String::new(),
            };
            close_client(
                &mut out.writer,
                Some(&mut reader),
                Some(frame),
                cfg.close_timeout,
            )
            .await;
        }
    }

    TunnelStats {
        client_to_upstream: up.moved,
        upstream_to_client: down.moved,
        client_messages: up.messages,
        upstream_writes: up.writes,
        client_writes: down.messages,
        end,
    }
}

/// The client connection's writing half, and the Pong it owes.
struct ToClient<W> {
    writer: Writer<W>,
    /// The payload of the latest Ping not yet answered (only the latest needs an answer,
    /// RFC 6455 §5.5.3).
    pong: Option<Bytes>,
}

impl<W: AsyncWrite + Unpin> ToClient<W> {
    /// Finishes the frame in progress and sends the Pong owed, if any. `Ready(Ok)` once the
    /// writer is free for a data message.
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.writer.is_idle() {
                ready!(self.writer.poll_write_frame(cx))?;
            }
            let Some(payload) = self.pong.take() else {
                return Poll::Ready(Ok(()));
            };
            self.writer.start(Opcode::Pong, None, payload);
        }
    }
}

/// Client messages → runtime writes.
struct ClientToUpstream {
    queue: VecDeque<Bytes>,
    queued: usize,
    max_queued: usize,
    /// Set once the client side has ended; the queue is still written for a clean end.
    end: Option<TunnelEnd>,
    /// The status code of the client's Close, echoed in the reply.
    close_reply: Option<u16>,
    /// The Close that answers a client's protocol error.
    refusal: Option<CloseFrame>,
    /// Whether the client's bytes can still be read as frames.
    readable: bool,
    moved: u64,
    messages: u64,
    writes: u64,
}

impl ClientToUpstream {
    fn new(cfg: &TunnelConfig) -> Self {
        ClientToUpstream {
            queue: VecDeque::new(),
            queued: 0,
            max_queued: cfg.max_coalesce.max(1),
            end: None,
            close_reply: None,
            refusal: None,
            readable: true,
            moved: 0,
            messages: 0,
            writes: 0,
        }
    }

    /// `Ready` once the client side has ended, or the tunnel broke.
    fn poll<R, W, U>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut Reader<R>,
        out: &mut ToClient<W>,
        mut upstream: Pin<&mut U>,
    ) -> Poll<TunnelEnd>
    where
        R: AsyncRead + Unpin,
        U: AsyncWrite + ?Sized,
    {
        loop {
            // Take every message that is ready now, up to the coalescing limit.
            while self.end.is_none()
                && self.queued < self.max_queued
                && self.queue.len() < MAX_PIECES
            {
                let next = match reader.poll_next(cx) {
                    Poll::Pending => break,
                    Poll::Ready(next) => next,
                };
                match next {
                    Some(Ok(Event::Message {
                        text: false,
                        payload,
                    })) => {
                        self.messages += 1;
                        if !payload.is_empty() {
                            self.queued += payload.len();
                            self.queue.push_back(payload);
                        }
                    }
                    // client-go never sends one; its own reader treats one as an error.
                    Some(Ok(Event::Message { text: true, .. })) => {
                        self.refusal = Some(CloseFrame {
                            code: close_code::PROTOCOL_ERROR,
                            reason: TEXT_IN_TUNNEL.into(),
                        });
                        return Poll::Ready(TunnelEnd::ClientProtocolError);
                    }
                    // A Ping's payload is its own copy (websocket::codec::COPY_BELOW), so a
                    // waiting Pong holds no read buffer.
                    Some(Ok(Event::Ping(payload))) => out.pong = Some(payload),
                    Some(Ok(Event::Pong(_))) => {}
                    Some(Ok(Event::Close(frame))) => {
                        self.close_reply = frame.map(|f| f.code);
                        self.end = Some(TunnelEnd::ClientClosed);
                    }
                    Some(Err(ReadError::Protocol(e))) => return Poll::Ready(self.refuse(&e)),
                    Some(Err(ReadError::Io(_) | ReadError::TruncatedFrame)) | None => {
                        // EOF without a Close: the client left (kubectl killed, network gone).
                        self.end = Some(TunnelEnd::ClientGone);
                    }
                }
            }
            if let Some(end) = self.end {
                // What is still queued is written by the closing step, under its deadline.
                return Poll::Ready(end);
            }
            if self.queue.is_empty() {
                return Poll::Pending;
            }
            let written = match ready!(write_queue(
                cx,
                upstream.as_mut(),
                &mut self.queue,
                self.max_queued
            )) {
                Ok(0) => return Poll::Ready(TunnelEnd::UpstreamFailed(io::ErrorKind::WriteZero)),
                Ok(n) => n,
                Err(e) => return Poll::Ready(TunnelEnd::UpstreamFailed(e.kind())),
            };
            self.queued -= written;
            self.moved += written as u64;
            self.writes += 1;
        }
    }

    /// Records the Close that answers `e` and names the end.
    fn refuse(&mut self, e: &DecodeError) -> TunnelEnd {
        self.readable = false;
        let code = e.close_code();
        self.refusal = Some(CloseFrame {
            code,
            reason: e.to_string(),
        });
        if code == close_code::MESSAGE_TOO_BIG {
            TunnelEnd::ClientMessageTooBig
        } else {
            TunnelEnd::ClientProtocolError
        }
    }

    /// Writes whatever is still queued.
    async fn drain<U>(&mut self, mut upstream: Pin<&mut U>) -> io::Result<()>
    where
        U: AsyncWrite + ?Sized,
    {
        while !self.queue.is_empty() {
            let limit = self.max_queued;
            let n =
                poll_fn(|cx| write_queue(cx, upstream.as_mut(), &mut self.queue, limit)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.queued -= n;
            self.moved += n as u64;
            self.writes += 1;
        }
        Ok(())
    }
}
/// Writes the front of `queue` with one (vectored, where the writer supports it) write and
/// drops what was written from the queue. Returns the bytes written. Without vectored writes,
/// small pieces are first merged into buffers of up to `merge_limit` bytes.
fn write_queue<U>(
    cx: &mut Context<'_>,
    mut upstream: Pin<&mut U>,
    queue: &mut VecDeque<Bytes>,
    merge_limit: usize,
) -> Poll<io::Result<usize>>
where
    U: AsyncWrite + ?Sized,
{
    if queue.len() > 1 && !upstream.is_write_vectored() {
        // Without vectored writes, one write per message would undo the coalescing: merge
        // the small pieces at the front into one buffer first.
        merge_front(queue, merge_limit);
    }
    let written = if queue.len() == 1 {
        ready!(upstream.as_mut().poll_write(cx, &queue[0]))?
    } else {
        let mut slices = [IoSlice::new(&[]); MAX_PIECES];
        let mut count = 0;
        for (slot, piece) in slices.iter_mut().zip(queue.iter()) {
            *slot = IoSlice::new(piece);
            count += 1;
        }
        ready!(upstream.as_mut().poll_write_vectored(cx, &slices[..count]))?
    };
    let mut left = written;
    while left > 0 {
        let Some(front) = queue.front_mut() else {
            break;
        };
        if front.len() <= left {
            left -= front.len();
            queue.pop_front();
        } else {
            front.advance(left);
            left = 0;
        }
    }
    Poll::Ready(Ok(written))
}

/// Replaces the pieces at the front of `queue` by one piece of at most `limit` bytes (or the
/// first piece alone, if that is larger).
fn merge_front(queue: &mut VecDeque<Bytes>, limit: usize) {
    if queue.front().is_none_or(|front| front.len() >= limit) {
        return;
    }
    let mut merged = BytesMut::with_capacity(limit.min(queue.iter().map(Bytes::len).sum()));
    while let Some(front) = queue.front() {
        if !merged.is_empty() && merged.len() + front.len() > limit {
            break;
        }
        merged.extend_from_slice(front);
        queue.pop_front();
    }
    queue.push_front(merged.freeze());
}

/// Runtime reads → client messages.
struct UpstreamToClient {
    /// The runtime's bytes that came with its 101, sent first.
    prefix: Bytes,
    /// Read, waiting for the frame in progress to be written.
    pending: Option<Bytes>,
    /// The buffer of the read in progress; no capacity while the runtime is quiet.
    buf: Vec<u8>,
    /// Capacity of the next read buffer.
    size: usize,
    min: usize,
    max: usize,
    moved: u64,
    messages: u64,
}

impl UpstreamToClient {
    fn new(cfg: &TunnelConfig, prefix: Bytes) -> Self {
        let max = cfg.max_upstream_read.max(1);
        let min = cfg.min_upstream_read.clamp(1, max);
        UpstreamToClient {
            prefix,
            pending: None,
            buf: Vec::new(),
            size: min,
            min,
            max,
            moved: 0,
            messages: 0,
        }
    }

    /// `Ready` when the runtime's side has ended, or the client cannot be written to. Every
    /// call also drives the client's writer, so a Pong owed goes out from here.
    fn poll<W, U>(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ToClient<W>,
        mut upstream: Pin<&mut U>,
    ) -> Poll<TunnelEnd>
    where
        W: AsyncWrite + Unpin,
        U: AsyncRead + ?Sized,
    {
        loop {
            let writable = match out.poll_control(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(_)) => return Poll::Ready(TunnelEnd::ClientGone),
                Poll::Pending => false,
            };
            if self.pending.is_none() && !self.prefix.is_empty() {
                self.pending = Some(std::mem::take(&mut self.prefix));
            }
            if let Some(payload) = self.pending.take() {
                if !writable {
                    // One message in flight and one read waiting: the client is slow, so the
                    // runtime waits (back-pressure).
                    self.pending = Some(payload);
                    return Poll::Pending;
                }
                self.moved += payload.len() as u64;
                self.messages += 1;
                out.writer.start(Opcode::Binary, None, payload);
                continue;
            }
            if self.buf.capacity() == 0 {
                self.buf = Vec::with_capacity(self.size);
            }
            match tokio_util::io::poll_read_buf(upstream.as_mut(), cx, &mut self.buf) {
                Poll::Pending => {
                    // Nothing to read: the buffer is empty, so give it back rather than hold it
                    // while the tunnel idles; the next read allocates again.
                    self.buf = Vec::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(TunnelEnd::UpstreamFailed(e.kind())),
                Poll::Ready(Ok(0)) => return Poll::Ready(TunnelEnd::UpstreamClosed),
                Poll::Ready(Ok(n)) => {
                    // Bulk transfers fill the buffer and double it; pings and keystrokes shrink
                    // it back, so an idle tunnel holds little.
                    self.size = n.saturating_mul(2).clamp(self.min, self.max);
                    self.pending = Some(Bytes::from(std::mem::take(&mut self.buf)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn queue(pieces: &[&[u8]]) -> VecDeque<Bytes> {
        pieces.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[test]
    fn merging_keeps_order_and_respects_the_limit() {
        let mut q = queue(&[b"ab", b"cd", b"efgh", b"ij"]);
        merge_front(&mut q, 8);
        assert_eq!(q, queue(&[b"abcdefgh", b"ij"]));

        let mut big = queue(&[&[1; 10], b"x"]);
        merge_front(&mut big, 8);
        assert_eq!(big.len(), 2, "a piece over the limit stays alone");
    }

    #[test]
    fn ends_say_whose_side_ended() {
        assert!(TunnelEnd::ClientClosed.is_client_side());
        assert!(TunnelEnd::ClientProtocolError.is_client_side());
        assert!(!TunnelEnd::UpstreamClosed.is_client_side());
        assert_eq!(
            TunnelEnd::UpstreamFailed(io::ErrorKind::BrokenPipe).label(),
            "upstream_error"
        );
    }

    #[tokio::test]
    async fn an_owed_pong_goes_out_before_the_next_data_message() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (_reader, writer) = accept(server, &TunnelConfig::default());
        let mut out = ToClient {
            writer,
            pong: Some(Bytes::from_static(b"p1")),
        };
        let mut down = UpstreamToClient::new(&TunnelConfig::default(), Bytes::from_static(b"data"));
        let (_runtime, mut upstream) = tokio::io::duplex(1024);
        let polled =
            poll_fn(|cx| Poll::Ready(down.poll(cx, &mut out, Pin::new(&mut upstream)))).await;
        assert!(polled.is_pending(), "the runtime has sent nothing more");
        let mut wire = [0u8; 10];
        client.read_exact(&mut wire).await.unwrap();
        assert_eq!(&wire, b"\x8a\x02p1\x82\x04data");
    }
}
