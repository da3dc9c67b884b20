//! The two halves of a server-side WebSocket connection on an async byte stream.
//!
//! Why not a general-purpose WebSocket library: the bridge relays bulk data, and the shape of
//! the buffers decides its speed and its memory. Here a client's data frame is unmasked in the
//! read buffer and handed on as a slice of it (no copy); an outgoing message goes out as one
//! vectored write of the frame header, an optional channel byte and the payload, straight from
//! the caller's [`Bytes`] (no copy, no write buffer); and the read buffer grows with the
//! traffic and is released whenever the connection goes quiet, so an idle connection holds no
//! buffer at all, whatever it carried before.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use super::codec::{CloseFrame, DecodeError, Decoder, Event, FrameHeader, Limits, Opcode};

/// Smallest read from the client: where the read size settles between keystrokes.
const MIN_READ: usize = 1024;
/// Default largest read from the client: where the read size grows to during bulk uploads
/// (see [`Reader::set_max_read`]).
pub const DEFAULT_MAX_READ: usize = 64 * 1024;
/// Payloads up to this size are copied behind their header when the connection cannot take
/// vectored writes, so that a small message is still one write.
const COALESCE_SMALL: usize = 4 * 1024;
/// Slices handed to one vectored write: the header and up to this many payload pieces less one.
const MAX_SLICES: usize = 16;

/// Why reading from the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading from the client failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] DecodeError),
    #[error("client connection ended in the middle of a frame")]
    TruncatedFrame,
}

/// Splits an upgraded connection into its reading and writing halves (server role).
/// `leftover` is what was read past the HTTP request (normally empty).
pub fn server<S>(
    io: S,
    leftover: Bytes,
    limits: Limits,
) -> (Reader<ReadHalf<S>>, Writer<WriteHalf<S>>)
where
    S: AsyncRead + AsyncWrite,
{
    let (rd, wr) = tokio::io::split(io);
    (Reader::new(rd, leftover, limits), Writer::new(wr))
}

/// The reading half: client frames in, [`Event`]s out.
pub struct Reader<R> {
    io: R,
    buf: BytesMut,
    decoder: Decoder,
    read_size: usize,
    max_read: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R, leftover: Bytes, limits: Limits) -> Self {
        Reader {
            io,
            buf: BytesMut::from(&leftover[..]),
            decoder: Decoder::new(limits),
            read_size: MIN_READ * 4,
            max_read: DEFAULT_MAX_READ,
            eof: false,
        }
    }

    /// Sets the largest read (at least 1 KiB). Larger reads cost fewer calls and fewer copies
    /// of a frame cut by a read's end during bulk uploads, but the buffer of a burst outlives
    /// it in the allocator's free lists.
    pub fn set_max_read(&mut self, max_read: usize) {
        self.max_read = max_read.max(MIN_READ);
        self.read_size = self.read_size.min(self.max_read);
    }

    /// The next event; `None` at a clean end of the connection.
    pub async fn next(&mut self) -> Option<Result<Event, ReadError>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next event. Cancel-safe: a partial frame stays buffered.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event, ReadError>>> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(event)) => return Poll::Ready(Some(Ok(event))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            if self.eof {
                let clean = self.buf.is_empty() && self.decoder.buffered() == 0;
                return Poll::Ready((!clean).then_some(Err(ReadError::TruncatedFrame)));
            }
            let wanted = self
                .decoder
                .wanted(&self.buf)
                .saturating_sub(self.buf.len());
            self.buf.reserve(self.read_size.max(wanted));
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                Poll::Pending => {
                    if self.buf.is_empty() {
                        // Quiet: hold no buffer until the client sends again.
                        self.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(n)) => {
                    // Grow towards large reads while they come back full, settle back after
                    // small ones.
                    self.read_size = if n >= self.read_size {
                        (self.read_size * 2).min(self.max_read)
                    } else {
                        (n * 2).clamp(MIN_READ, self.max_read)
                    };
                }
            }
        }
    }

    /// Bytes this half holds right now (read buffer capacity and a fragmented message).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity() + self.decoder.buffered()
    }
}

/// The writing half: one frame at a time, written without copying the payload.
pub struct Writer<W> {
    io: W,
    /// Frame header plus an optional channel byte.
    head: [u8; 11],
    head_len: u8,
    head_pos: u8,
    /// The payload still to write, in pieces.
    body: VecDeque<Bytes>,
    close_sent: bool,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub fn new(io: W) -> Self {
        Writer {
            io,
            head: [0; 11],
            head_len: 0,
            head_pos: 0,
            body: VecDeque::new(),
            close_sent: false,
        }
    }

    /// Whether the last frame has been written out, so a new one may be started.
    pub fn is_idle(&self) -> bool {
        self.head_pos == self.head_len && self.body.is_empty()
    }

    /// Starts a frame whose payload is `channel` (when given) followed by `payload`; it goes
    /// out with [`poll_write_frame`](Self::poll_write_frame). The previous frame must be done.
    pub fn start(&mut self, opcode: Opcode, channel: Option<u8>, payload: Bytes) {
        debug_assert!(self.is_idle(), "a frame is already being written");
        let len = payload.len();
        if !payload.is_empty() {
            self.body.push_back(payload);
        }
        self.start_head(opcode, channel, len);
    }

    /// Starts one frame whose payload is `channel` (when given) followed by every piece of
    /// `parts` in order, which are taken out of it; they go out in one vectored write, so
    /// pieces that arrived separately cost neither a copy nor a frame each.
    pub fn start_parts(&mut self, opcode: Opcode, channel: Option<u8>, parts: &mut Vec<Bytes>) {
        debug_assert!(self.is_idle(), "a frame is already being written");
        let len = parts.iter().map(Bytes::len).sum();
        self.body.extend(parts.drain(..).filter(|p| !p.is_empty()));
        self.start_head(opcode, channel, len);
    }

    fn start_head(&mut self, opcode: Opcode, channel: Option<u8>, body_len: usize) {
        let len = body_len + usize::from(channel.is_some());
        let header = FrameHeader::new(opcode, len);
        let h = header.as_bytes();
        self.head[..h.len()].copy_from_slice(h);
        let mut n = h.len();
        if let Some(c) = channel {
            self.head[n] = c;
            n += 1;
        }
        self.head_len = n as u8;
        self.head_pos = 0;
        if opcode == Opcode::Close {
            self.close_sent = true;
        }
    }

    /// Writes what is left of the started frame, then flushes the connection.
    pub fn poll_write_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_idle() {
            let head = &self.head[usize::from(self.head_pos)..usize::from(self.head_len)];
            let first = self.body.front().map_or(&[][..], |b| &b[..]);
            let n = if self.io.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                slices[0] = IoSlice::new(head);
                let mut k = 1;
                for part in self.body.iter().take(MAX_SLICES - 1) {
                    slices[k] = IoSlice::new(part);
                    k += 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..k]))?
            } else if head.is_empty() {
                ready!(Pin::new(&mut self.io).poll_write(cx, first))?
            } else if self.body.len() <= 1 && first.len() <= COALESCE_SMALL {
                let mut one = Vec::with_capacity(head.len() + first.len());
                one.extend_from_slice(head);
                one.extend_from_slice(first);
                ready!(Pin::new(&mut self.io).poll_write(cx, &one))?
            } else {
                ready!(Pin::new(&mut self.io).poll_write(cx, head))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_head = n.min(head.len());
            self.head_pos += from_head as u8;
            let mut rest = n - from_head;
            while rest > 0 {
                let front = self
                    .body
                    .front_mut()
                    .expect("written bytes came from the body");
                if rest >= front.len() {
                    rest -= front.len();
                    self.body.pop_front();
                } else {
                    front.advance(rest);
                    rest = 0;
                }
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes one frame.
    pub async fn send(
        &mut self,
        opcode: Opcode,
        channel: Option<u8>,
        payload: Bytes,
    ) -> io::Result<()> {
        if !self.is_idle() {
            poll_fn(|cx| self.poll_write_frame(cx)).await?;
        }
        self.start(opcode, channel, payload);
        poll_fn(|cx| self.poll_write_frame(cx)).await
    }

    /// Writes a binary message.
    pub async fn send_binary(&mut self, payload: Bytes) -> io::Result<()> {
        self.send(Opcode::Binary, None, payload).await
    }

    /// Writes a Close frame (at most once; later calls do nothing).
    pub async fn send_close(&mut self, frame: Option<&CloseFrame>) -> io::Result<()> {
        if self.close_sent {
            return Ok(());
        }
        self.send(Opcode::Close, None, super::codec::encode_close(frame))
            .await
    }

    /// Answers a ping.
    pub async fn send_pong(&mut self, payload: Bytes) -> io::Result<()> {
        self.send(Opcode::Pong, None, payload).await
    }

    /// Shuts the writing side of the connection down (TCP FIN, TLS close_notify).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::codec::close_code;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: Limits = Limits {
        max_frame: 1 << 20,
        max_message: 1 << 20,
    };

    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut out = vec![b0];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[tokio::test]
    async fn frames_split_across_reads_arrive_whole_and_an_idle_reader_holds_no_buffer() {
        let (client, server) = tokio::io::duplex(64);
        let (mut rd, _wr) = super::server(server, Bytes::new(), LIMITS);
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let wire = masked(0x82, &payload);
        let mut client = client;
        let writer = tokio::spawn(async move {
            client.write_all(&wire).await.unwrap();
            client
        });
        let event = rd.next().await.unwrap().unwrap();
        assert_eq!(
            event,
            Event::Message {
                text: false,
                payload: Bytes::from(payload)
            }
        );
        let _client = writer.await.unwrap();
        // The next read finds nothing: the buffer goes.
        let pending = futures_util::FutureExt::now_or_never(rd.next());
        assert!(pending.is_none());
        assert_eq!(rd.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn pieces_go_out_as_one_frame_in_order_through_short_writes() {
        // A 7-byte pipe: every write is cut short, across header, channel byte and pieces.
        let (mut client, server) = tokio::io::duplex(7);
        let (_rd, mut wr) = super::server(server, Bytes::new(), LIMITS);
        let pieces: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![i; 1 + i as usize * 37]))
            .collect();
        let total: usize = pieces.iter().map(Bytes::len).sum();
        let mut parts = pieces.clone();
        let write = async {
            wr.start_parts(Opcode::Binary, Some(2), &mut parts);
            poll_fn(|cx| wr.poll_write_frame(cx)).await.unwrap();
            assert!(wr.is_idle());
        };
        let mut got = vec![0u8; 4 + 1 + total];
        let read = client.read_exact(&mut got);
        let (_, r) = tokio::join!(write, read);
        r.unwrap();
        assert!(parts.is_empty(), "the pieces were taken");
        let len = 1 + total;
        assert_eq!(&got[..4], &[0x82, 126, (len >> 8) as u8, len as u8]);
        assert_eq!(got[4], 2);
        assert_eq!(got[5..], pieces.concat()[..]);
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_reported() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut rd, _wr) = super::server(server, Bytes::new(), LIMITS);
        client
            .write_all(&masked(0x82, b"abcdef")[..5])
            .await
            .unwrap();
        drop(client);
        assert!(matches!(
            rd.next().await,
            Some(Err(ReadError::TruncatedFrame))
        ));
    }

    #[tokio::test]
    async fn a_channel_message_is_header_channel_byte_payload() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (_rd, mut wr) = super::server(server, Bytes::new(), LIMITS);
        wr.send(Opcode::Binary, Some(1), Bytes::from(vec![7u8; 300]))
            .await
            .unwrap();
        wr.send_close(Some(&CloseFrame {
            code: close_code::NORMAL,
            reason: String::new(),
        }))
        .await
        .unwrap();
        // Only one Close ever goes out.
        wr.send_close(None).await.unwrap();
        drop(wr);
        drop(_rd);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut want = vec![0x82, 126, 0x01, 0x2d, 1];
        want.extend_from_slice(&[7u8; 300]);
        want.extend_from_slice(&[0x88, 2, 0x03, 0xe8]);
        assert_eq!(got, want);
    }
}
