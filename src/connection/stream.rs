//! One SPDY stream as the application sees it: a bounded inbound queue and a writer.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::PollSender;

use super::{Cmd, WriteError};
use crate::spdy::{HeaderBlock, RstStatus};

/// Why a stream's inbound side ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The peer half-closed it (FIN).
    Fin,
    /// It was reset (by the peer, or locally).
    Reset(RstStatus),
    /// The peer sent GOAWAY.
    GoAway,
    /// The connection ended (EOF, error, local close).
    ConnectionClosed,
}

/// A DATA frame on its way to the writer task.
#[derive(Debug)]
pub(crate) struct DataItem {
    pub stream_id: u32,
    pub fin: bool,
    pub payload: Bytes,
}

#[derive(Default)]
struct Inbound {
    queue: VecDeque<Bytes>,
    queued: usize,
    end: Option<StreamEnd>,
    reader_waker: Option<Waker>,
    reader_gone: bool,
}

/// The state the connection driver and the stream's reader share.
pub(crate) struct Shared {
    inbound: Mutex<Inbound>,
    /// Signalled whenever the reader takes data, so a driver waiting for room can retry.
    pub space: Notify,
    cap: usize,
}

impl Shared {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Shared {
            inbound: Mutex::new(Inbound::default()),
            space: Notify::new(),
            cap,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inbound> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.inbound.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `payload` for the reader. Gives it back when the queue is full, so the driver
    /// stops reading the connection until [`space`](Self::space) is signalled (back-pressure,
    /// never an unbounded buffer). A single piece is always taken by an empty queue.
    pub fn offer(&self, payload: Bytes) -> Result<(), Bytes> {
        let mut inbound = self.lock();
        if inbound.reader_gone || inbound.end.is_some() || payload.is_empty() {
            // Nobody will read it: drop it rather than wedge the connection.
            return Ok(());
        }
        if inbound.queued > 0 && inbound.queued + payload.len() > self.cap {
            return Err(payload);
        }
        inbound.queued += payload.len();
        inbound.queue.push_back(payload);
        if let Some(w) = inbound.reader_waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Ends the inbound side (first reason wins); queued data stays readable.
    pub fn finish(&self, end: StreamEnd) {
        let mut inbound = self.lock();
        if inbound.end.is_none() {
            inbound.end = Some(end);
        }
        if let Some(w) = inbound.reader_waker.take() {
            w.wake();
        }
    }

    pub fn end(&self) -> Option<StreamEnd> {
        self.lock().end
    }
}

/// An open stream: its reader and writer can be used from different tasks.
#[derive(Debug)]
pub struct Stream {
    pub reader: StreamReader,
    pub writer: StreamWriter,
    headers: HeaderBlock,
}

impl Stream {
    pub(crate) fn new(
        id: u32,
        headers: HeaderBlock,
        shared: Arc<Shared>,
        link: WriterLink,
    ) -> Self {
        Stream {
            reader: StreamReader {
                id,
                shared: shared.clone(),
                partial: Bytes::new(),
            },
            writer: StreamWriter {
                id,
                shared,
                link,
                finished: false,
            },
            headers,
        }
    }

    /// The stream id.
    pub fn id(&self) -> u32 {
        self.reader.id
    }

    /// The headers of the SYN_REPLY (for streams we opened) or SYN_STREAM (for the peer's).
    pub fn headers(&self) -> &HeaderBlock {
        &self.headers
    }

    /// Splits into the reader and the writer.
    pub fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

/// The inbound side of a stream. Dropping it discards later data for the stream, so an
/// abandoned stream never stalls the connection.
pub struct StreamReader {
    id: u32,
    shared: Arc<Shared>,
    /// What an `AsyncRead` caller has not taken yet of the current piece.
    partial: Bytes,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl StreamReader {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next piece of data, or `None` once the stream has ended (see [`end`](Self::end)).
    pub async fn recv(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Poll form of [`recv`](Self::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if !self.partial.is_empty() {
            return Poll::Ready(Some(std::mem::take(&mut self.partial)));
        }
        let mut inbound = self.shared.lock();
        if let Some(piece) = inbound.queue.pop_front() {
            inbound.queued -= piece.len();
            drop(inbound);
            self.shared.space.notify_one();
            return Poll::Ready(Some(piece));
        }
        if inbound.end.is_some() {
            return Poll::Ready(None);
        }
        inbound.reader_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Why the stream ended, once it has.
    pub fn end(&self) -> Option<StreamEnd> {
        self.shared.end()
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.partial.is_empty() {
            match ready!(this.poll_recv(cx)) {
                Some(piece) => this.partial = piece,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.partial.len().min(buf.remaining());
        buf.put_slice(&this.partial[..n]);
        this.partial.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let mut inbound = self.shared.lock();
        inbound.reader_gone = true;
        inbound.queue.clear();
        inbound.queued = 0;
        drop(inbound);
        self.shared.space.notify_one();
    }
}

/// What a writer needs to reach the connection.
#[derive(Clone)]
pub(crate) struct WriterLink {
    pub data: mpsc::Sender<DataItem>,
    pub cmd: mpsc::UnboundedSender<Cmd>,
    pub max_chunk: usize,
}

/// The outbound side of a stream. Sends are split into DATA frames of at most
/// `max_chunk` bytes and wait for room in the connection's write queue.
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
    link: WriterLink,
    finished: bool,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("id", &self.id)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` as DATA frames.
    pub async fn send(&mut self, mut data: Bytes) -> Result<(), WriteError> {
        self.check_open()?;
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(self.link.max_chunk));
            self.queue(piece, false).await?;
        }
        Ok(())
    }

    /// Half-closes the stream: an empty DATA frame with FIN. A second call does nothing.
    pub async fn finish(&mut self) -> Result<(), WriteError> {
        if self.finished {
            return Ok(());
        }
        self.check_open()?;
        self.queue(Bytes::new(), true).await?;
        self.finished = true;
        let _ = self.link.cmd.send(Cmd::LocalFin(self.id));
        Ok(())
    }

    /// Resets the stream (RST_STREAM unless we already half-closed it, as spdystream does).
    pub fn reset(&mut self, status: RstStatus) {
        self.finished = true;
        let _ = self.link.cmd.send(Cmd::Reset(self.id, status));
    }

    /// Whether [`finish`](Self::finish) or [`reset`](Self::reset) has been called.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn check_open(&self) -> Result<(), WriteError> {
        if self.finished {
            return Err(WriteError::Finished);
        }
        match self.shared.end() {
            Some(StreamEnd::Reset(status)) => Err(WriteError::Reset(status)),
            Some(StreamEnd::GoAway | StreamEnd::ConnectionClosed) => {
                Err(WriteError::ConnectionClosed)
            }
            _ => Ok(()),
        }
    }

    async fn queue(&self, payload: Bytes, fin: bool) -> Result<(), WriteError> {
        self.link
            .data
            .send(DataItem {
                stream_id: self.id,
                fin,
                payload,
            })
            .await
            .map_err(|_| WriteError::ConnectionClosed)
    }

    /// An `AsyncWrite` view of this writer (for `tokio::io::copy`).
    pub fn into_async_write(self) -> StreamSink {
        StreamSink {
            sender: PollSender::new(self.link.data.clone()),
            writer: self,
        }
    }
}

/// [`StreamWriter`] as a tokio `AsyncWrite`; shutdown sends FIN.
pub struct StreamSink {
    writer: StreamWriter,
    sender: PollSender<DataItem>,
}

impl StreamSink {
    fn poll_item(
        &mut self,
        cx: &mut Context<'_>,
        payload: Bytes,
        fin: bool,
    ) -> Poll<io::Result<()>> {
        ready!(self.sender.poll_reserve(cx)).map_err(|_| closed())?;
        self.sender
            .send_item(DataItem {
                stream_id: self.writer.id,
                fin,
                payload,
            })
            .map_err(|_| closed())?;
        Poll::Ready(Ok(()))
    }

    /// Back to the plain writer.
    pub fn into_inner(self) -> StreamWriter {
        self.writer
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, WriteError::ConnectionClosed)
}

impl AsyncWrite for StreamSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.writer
            .check_open()
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        let n = buf.len().min(this.writer.link.max_chunk);
        ready!(this.poll_item(cx, Bytes::copy_from_slice(&buf[..n]), false))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer task flushes whenever its queue runs dry.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.writer.finished {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_item(cx, Bytes::new(), true))?;
        this.writer.finished = true;
        let _ = this.writer.link.cmd.send(Cmd::LocalFin(this.writer.id));
        Poll::Ready(Ok(()))
    }
}
