//! Mode B (protocol.md §7.2): the runtime's SPDY port-forward session carried end to end inside
//! WebSocket binary messages. The bridge copies bytes and never parses SPDY.
//!
//! ```text
//!  client ──binary messages (any split: 1 B, 4 B, empty, 32 KiB)──▶ queue ──vectored write──▶ runtime
//!         ◀──────── one binary message per runtime read (≤ 32 KiB) ◀──────── read ─────────
//! ```
//!
//! One task, one future: both directions are polled by the same `poll_fn`, so an idle tunnel
//! is a parked task, two sockets and tungstenite's small read buffer: no channels, no extra
//! tasks, and no buffers of ours (they exist only while bytes move).
//!
//! * **Client → runtime.** Message boundaries mean nothing (spdystream writes every frame field
//!   as its own message). Messages that are ready together are queued (up to
//!   [`TunnelConfig::max_coalesce`] bytes) and written with one vectored write when no further
//!   message is immediately ready, so kubectl's 4-byte messages do not become 4-byte TCP writes.
//!   Empty messages are skipped; a text message is a protocol error (client-go's reader fails
//!   on one too). A full queue stops reading the client: back-pressure, never drop. During bulk
//!   uploads [`ReadAhead`] reads the client socket in large reads, so tungstenite's small read
//!   buffer does not cost a read call per few KiB.
//! * **Runtime → client.** Each read becomes one binary message. The read buffer follows the
//!   traffic: twice the last read, between [`TunnelConfig::min_upstream_read`] and
//!   [`TunnelConfig::max_upstream_read`]. It is allocated per read, freed once tungstenite has
//!   framed its bytes, and freed as well when the read finds nothing, so a quiet tunnel holds
//!   no read buffer at all.
//! * **End.** Either side ending ends both, as the API server's tunnel does: a client Close or
//!   EOF closes the runtime connection (after writing what was queued); a runtime EOF or error
//!   becomes Close 1000 to the client; a text message becomes Close 1002.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Default [`TunnelConfig::read_buffer_size`]: 4 KiB.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 4 * 1024;
/// Default [`TunnelConfig::read_ahead`]: 64 KiB.
pub const DEFAULT_READ_AHEAD: usize = 64 * 1024;
/// Default [`TunnelConfig::max_upstream_read`]: 32 KiB, the API server's copy buffer.
pub const DEFAULT_MAX_UPSTREAM_READ: usize = 32 * 1024;
/// Default [`TunnelConfig::min_upstream_read`]: 1 KiB.
pub const DEFAULT_MIN_UPSTREAM_READ: usize = 1024;
/// Default [`TunnelConfig::max_coalesce`]: 64 KiB.
pub const DEFAULT_MAX_COALESCE: usize = 64 * 1024;
/// Default [`TunnelConfig::close_timeout`]: 1 s, the API server's Close write deadline.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default [`TunnelConfig::max_message`]: 32 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// Pieces handed to one vectored write. Linux takes 1024; 64 is plenty for coalescing.
const MAX_PIECES: usize = 64;

/// How a tunnel buffers and ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// tungstenite's read buffer for the client connection, in bytes: allocated when the
    /// tunnel starts, held for its life, and the most tungstenite asks for per read. Small
    /// keeps idle tunnels cheap; [`read_ahead`](Self::read_ahead) makes up for it on bulk
    /// uploads. Default [`DEFAULT_READ_BUFFER_SIZE`] (4 KiB).
    pub read_buffer_size: usize,
    /// Read-ahead for bulk uploads, in bytes: once reads from the client come back full, the
    /// client socket is read this much at a time and tungstenite served from memory, so an
    /// upload costs one read call per this many bytes instead of one per read buffer. The
    /// buffer exists only while data is waiting; 0 turns read-ahead off. Default
    /// [`DEFAULT_READ_AHEAD`] (64 KiB).
    pub read_ahead: usize,
    /// Largest client message (and frame) accepted, in bytes; a larger one ends the tunnel
    /// (Close 1009). kubectl's are at most a SPDY frame's payload (32 KiB). Default
    /// [`DEFAULT_MAX_MESSAGE`] (32 MiB, the bridge-wide cap).
    pub max_message: usize,
    /// Largest read from the runtime, hence the largest message sent to the client, in bytes.
    /// Default [`DEFAULT_MAX_UPSTREAM_READ`] (32 KiB).
    pub max_upstream_read: usize,
    /// Smallest read buffer from the runtime, in bytes: the size after small reads (SPDY
    /// pings, keystrokes). Default [`DEFAULT_MIN_UPSTREAM_READ`] (1 KiB).
    pub min_upstream_read: usize,
    /// Client bytes queued for one upstream write, in bytes; reaching it stops reading the
    /// client until the runtime takes them. Default [`DEFAULT_MAX_COALESCE`] (64 KiB).
    pub max_coalesce: usize,
    /// Bound on each closing step: writing what is queued to the runtime, sending the Close,
    /// waiting for the client's Close reply. Default [`DEFAULT_CLOSE_TIMEOUT`] (1 s).
    pub close_timeout: Duration,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            read_ahead: DEFAULT_READ_AHEAD,
            max_message: DEFAULT_MAX_MESSAGE,
            max_upstream_read: DEFAULT_MAX_UPSTREAM_READ,
            min_upstream_read: DEFAULT_MIN_UPSTREAM_READ,
            max_coalesce: DEFAULT_MAX_COALESCE,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        }
    }
}

impl TunnelConfig {
    /// tungstenite's settings for the client connection: the read buffer, the message cap,
    /// and no write buffering (every message goes out at once; the upstream reads already
    /// batch).
    pub fn websocket_config(&self) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size.max(64))
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
    }
}

/// Makes the tunnel's WebSocket (server role) on the upgraded client connection `io`, with
/// [`TunnelConfig::read_ahead`] in front of tungstenite's small read buffer.
pub async fn accept<S>(io: S, cfg: &TunnelConfig) -> WebSocketStream<ReadAhead<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketStream::from_raw_socket(
        ReadAhead::new(io, cfg.read_ahead),
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(cfg.websocket_config()),
    )
    .await
}

/// A connection whose reads switch to large read-ahead reads while data keeps coming.
///
/// tungstenite reads at most its read buffer (a few KiB) per call. While reads come back full,
/// more is waiting: then the socket is read up to `max` bytes at a time into a buffer of our
/// own (not zero-filled) and tungstenite's reads are served from it. The buffer is freed as
/// soon as a read finds nothing, so an idle connection holds none; small reads go straight to
/// the caller's buffer. Writes pass through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    max: usize,
    /// The last direct read filled the caller's buffer: read ahead next time.
    bulk: bool,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`; `max` 0 passes reads straight through.
    pub fn new(inner: S, max: usize) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
            max,
            bulk: false,
        }
    }

    /// Bytes read ahead and not yet taken.
    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buffered().is_empty() {
            if !this.bulk || this.max <= out.remaining() {
                let before = out.filled().len();
                let wanted = out.remaining();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                this.bulk = this.max > 0 && out.filled().len() - before == wanted && wanted > 0;
                return Poll::Ready(Ok(()));
            }
            this.buf.clear();
            this.pos = 0;
            if this.buf.capacity() < this.max {
                this.buf.reserve_exact(this.max);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf) {
                Poll::Pending => {
                    // Nothing waiting: the upload paused; hold no buffer while it does.
                    this.buf = Vec::new();
                    this.bulk = false;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => {
                    // A short read means the sender is not ahead of us: back to direct reads
                    // once this is used up.
                    this.bulk = n >= this.max / 2;
                }
            }
        }
        let take = this.buffered().len().min(out.remaining());
        out.put_slice(&this.buf[this.pos..this.pos + take]);
        this.pos += take;
        if this.pos == this.buf.len() && !this.bulk {
            this.buf = Vec::new();
            this.pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

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

/// Runs a tunnel between the upgraded client connection `ws` (server role) and the runtime's
/// upgraded connection `upstream`, whose first bytes, read along with its 101, are `prefix`.
/// Returns when both connections are closed.
pub async fn run<C, U>(
    mut ws: WebSocketStream<C>,
    upstream: U,
    prefix: Bytes,
    cfg: &TunnelConfig,
) -> TunnelStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = upstream;
    let mut up = ClientToUpstream::new(cfg);
    let mut down = UpstreamToClient::new(cfg, prefix);
    let mut client_first = true;

    let end = poll_fn(|cx| {
        // Alternate which direction goes first, so that a busy one cannot use up the task's
        // cooperative budget every time and starve the other.
        client_first = !client_first;
        if client_first {
            if let Poll::Ready(end) = up.poll(cx, &mut ws, Pin::new(&mut upstream)) {
                return Poll::Ready(end);
            }
            down.poll(cx, &mut ws, Pin::new(&mut upstream))
        } else {
            if let Poll::Ready(end) = down.poll(cx, &mut ws, Pin::new(&mut upstream)) {
                return Poll::Ready(end);
            }
            up.poll(cx, &mut ws, Pin::new(&mut upstream))
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
                // Sends tungstenite's queued reply to the client's Close, then ends.
                let _ = tokio::time::timeout(cfg.close_timeout, SinkExt::close(&mut ws)).await;
            }
        }
        TunnelEnd::ClientProtocolError | TunnelEnd::ClientMessageTooBig => {
            drop(upstream);
            let (code, reason) = if end == TunnelEnd::ClientMessageTooBig {
                (CloseCode::Size, "message too big")
            } else {
                (
                    CloseCode::Protocol,
                    "only binary messages are allowed in a tunnel",
                )
            };
            close_client(&mut ws, code, reason, cfg.close_timeout).await;
        }
        TunnelEnd::UpstreamClosed | TunnelEnd::UpstreamFailed(_) => {
            drop(upstream);
            // client-go reads Close 1000 as EOF (protocol.md §7.2).
            close_client(&mut ws, CloseCode::Normal, "", cfg.close_timeout).await;
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

/// Sends a Close frame, then reads (and discards) until the client's Close reply or EOF, so
/// that the TCP close does not reset a client still sending; each step bounded by `limit`.
async fn close_client<C>(
    ws: &mut WebSocketStream<C>,
    code: CloseCode,
    reason: &str,
    limit: Duration,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let sent = tokio::time::timeout(limit, ws.send(Message::Close(Some(frame)))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(limit, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// Client messages → runtime writes.
struct ClientToUpstream {
    queue: VecDeque<Bytes>,
    queued: usize,
    max_queued: usize,
    /// Set once the client side has ended; the queue is still written for a clean end.
    end: Option<TunnelEnd>,
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
            moved: 0,
            messages: 0,
            writes: 0,
        }
    }

    /// `Ready` once the client side has ended, or the tunnel broke.
    fn poll<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut WebSocketStream<C>,
        mut upstream: Pin<&mut U>,
    ) -> Poll<TunnelEnd>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncWrite + ?Sized,
    {
        loop {
            // Take every message that is ready now, up to the coalescing limit.
            while self.end.is_none()
                && self.queued < self.max_queued
                && self.queue.len() < MAX_PIECES
            {
                let next = match Pin::new(&mut *ws).poll_next(cx) {
                    Poll::Pending => break,
                    Poll::Ready(next) => next,
                };
                match next {
                    Some(Ok(Message::Binary(payload))) => {
                        self.messages += 1;
                        if !payload.is_empty() {
                            self.queued += payload.len();
                            self.queue.push_back(payload);
                        }
                    }
                    // client-go never sends one; its own reader treats one as an error.
                    Some(Ok(Message::Text(_))) => {
                        return Poll::Ready(TunnelEnd::ClientProtocolError);
                    }
                    Some(Ok(Message::Close(_))) => self.end = Some(TunnelEnd::ClientClosed),
                    // Pings are answered by tungstenite; nothing else reaches here.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Err(e)) => return Poll::Ready(classify(&e)),
                    None => self.end = Some(TunnelEnd::ClientGone),
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
}

impl ClientToUpstream {
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

/// The tunnel end for a WebSocket read error.
fn classify(e: &WsError) -> TunnelEnd {
    match e {
        WsError::Capacity(_) => TunnelEnd::ClientMessageTooBig,
        WsError::Protocol(p) => {
            use tokio_tungstenite::tungstenite::error::ProtocolError;
            match p {
                // EOF without a Close: the client left (kubectl killed, network gone).
                ProtocolError::ResetWithoutClosingHandshake => TunnelEnd::ClientGone,
                _ => TunnelEnd::ClientProtocolError,
            }
        }
        WsError::Utf8(_) => TunnelEnd::ClientProtocolError,
        _ => TunnelEnd::ClientGone,
    }
}

/// Runtime reads → client messages.
struct UpstreamToClient {
    /// The runtime's bytes that came with its 101, sent first.
    prefix: Bytes,
    /// Read but not yet accepted by the WebSocket sink.
    pending: Option<Bytes>,
    /// The buffer of the read in progress; no capacity while the runtime is quiet.
    buf: Vec<u8>,
    /// Capacity of the next read buffer.
    size: usize,
    min: usize,
    max: usize,
    /// Messages were written since the last flush.
    unflushed: bool,
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
            unflushed: false,
            moved: 0,
            messages: 0,
        }
    }

    /// `Ready` when the runtime's side has ended, or the client cannot be written to.
    fn poll<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut WebSocketStream<C>,
        mut upstream: Pin<&mut U>,
    ) -> Poll<TunnelEnd>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + ?Sized,
    {
        loop {
            if let Some(payload) = self.pending.take() {
                match Pin::new(&mut *ws).poll_ready(cx) {
                    Poll::Pending => {
                        self.pending = Some(payload);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(TunnelEnd::ClientGone),
                    Poll::Ready(Ok(())) => {}
                }
                let len = payload.len() as u64;
                if Pin::new(&mut *ws)
                    .start_send(Message::Binary(payload))
                    .is_err()
                {
                    return Poll::Ready(TunnelEnd::ClientGone);
                }
                self.moved += len;
                self.messages += 1;
                self.unflushed = true;
            }
            if !self.prefix.is_empty() {
                self.pending = Some(std::mem::take(&mut self.prefix));
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
                    if self.unflushed {
                        match Pin::new(&mut *ws).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.unflushed = false,
                            Poll::Ready(Err(_)) => return Poll::Ready(TunnelEnd::ClientGone),
                            Poll::Pending => {}
                        }
                    }
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

    #[tokio::test]
    async fn read_ahead_passes_bytes_through_and_holds_nothing_when_idle() {
        use tokio::io::AsyncReadExt;
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut reader = ReadAhead::new(rx, 64 * 1024);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        tx.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < data.len() {
            let n = reader.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        assert!(reader.bulk, "full 4 KiB reads switch to read-ahead");
        // Nothing waiting: the read parks, and the read-ahead buffer is gone.
        let pending = tokio::time::timeout(Duration::from_millis(20), reader.read(&mut buf)).await;
        assert!(pending.is_err());
        assert_eq!(reader.buf.capacity(), 0);
        assert!(!reader.bulk);
        tx.write_all(b"ping").await.unwrap();
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(reader.buf.capacity(), 0, "small reads go straight through");
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
}
