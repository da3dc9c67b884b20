//! The task that owns the write half of a connection.
//!
//! Control frames have their own unbounded queue and always go first, so a PING echo, a
//! RST_STREAM or a SYN_REPLY never waits behind a stream's bulk data. Stream DATA comes through
//! one bounded queue shared by every stream of the connection: a full queue makes senders wait
//! (back-pressure), it never drops.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::stream::DataItem;
use crate::spdy::frame::data_header;
use crate::spdy::{Encoder, Frame};

/// What the driver asks of the writer.
#[derive(Debug)]
pub(crate) enum Ctl {
    Frame(Frame),
    /// Write what is queued, then these closing frames (RST_STREAMs, GOAWAY), shut the write
    /// side down and stop.
    Shutdown(Vec<Frame>),
}

/// Payloads at least this large are written from their own buffer instead of being copied
/// into the batch buffer.
const DIRECT_WRITE: usize = 1024;
/// A batch is written once it holds this much.
const BATCH: usize = 16 * 1024;

pub(crate) async fn run<W: AsyncWrite + Unpin>(
    mut io: W,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    mut data: mpsc::Receiver<DataItem>,
) -> io::Result<()> {
    let mut encoder = Encoder::new();
    let mut buf = BytesMut::new();
    let mut data_open = true;
    loop {
        let first = tokio::select! {
            biased;
            c = ctl.recv() => match c {
                Some(Ctl::Frame(f)) => Next::Frame(f),
                Some(Ctl::Shutdown(last)) => Next::Shutdown(last),
                None => Next::Shutdown(Vec::new()),
            },
            d = data.recv(), if data_open => match d {
                Some(item) => Next::Data(item),
                None => { data_open = false; continue; }
            },
        };
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Next::Shutdown(last) => {
                    // DATA whose `send` returned before the close goes out before the close's
                    // RST_STREAMs and GOAWAY: the runtime's last output and its status are
                    // queued just before it closes, and a reset must not overtake them (the
                    // peer would drop them) nor a shutdown discard them. The driver bounds
                    // this by its close timeout when the peer does not read.
                    while let Ok(item) = data.try_recv() {
                        put_data(&mut io, &mut buf, item).await?;
                    }
                    for frame in &last {
                        encode(&mut encoder, frame, &mut buf)?;
                    }
                    io.write_all(&buf).await?;
                    io.flush().await?;
                    return io.shutdown().await;
                }
                Next::Frame(frame) => encode(&mut encoder, &frame, &mut buf)?,
                Next::Data(item) => put_data(&mut io, &mut buf, item).await?,
            }
            if buf.len() >= BATCH {
                io.write_all(&buf).await?;
                buf.clear();
            }
            // Take whatever else is ready, control first, before paying for a write.
            next = match ctl.try_recv() {
                Ok(Ctl::Frame(f)) => Some(Next::Frame(f)),
                Ok(Ctl::Shutdown(last)) => Some(Next::Shutdown(last)),
                Err(_) if data_open => data.try_recv().ok().map(Next::Data),
                Err(_) => None,
            };
        }
        // The queues ran dry: write the batch and flush (TLS buffers otherwise).
        io.write_all(&buf).await?;
        io.flush().await?;
        buf.clear();
        if buf.capacity() > BATCH * 2 {
            buf = BytesMut::new();
        }
    }
}

enum Next {
    Frame(Frame),
    Data(DataItem),
    Shutdown(Vec<Frame>),
}

/// Appends one DATA frame to the batch; a large payload is written from its own buffer
/// (after the batch) rather than copied.
async fn put_data<W: AsyncWrite + Unpin>(
    io: &mut W,
    buf: &mut BytesMut,
    item: DataItem,
) -> io::Result<()> {
    let header =
        data_header(item.stream_id, item.fin, item.payload.len()).map_err(io::Error::other)?;
    buf.extend_from_slice(&header);
    if item.payload.len() >= DIRECT_WRITE {
        write_both(io, buf, &item.payload).await?;
        buf.clear();
    } else {
        buf.extend_from_slice(&item.payload);
    }
    Ok(())
}

/// Writes `head` then `tail` with vectored writes: one syscall (one TCP segment train) per
/// DATA frame instead of one for the 8-byte header and another for the payload. With
/// TCP_NODELAY a lone header would otherwise leave as its own segment and wake the peer for
/// 8 bytes.
async fn write_both<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut head: &[u8],
    mut tail: &[u8],
) -> io::Result<()> {
    while !head.is_empty() {
        let n = io
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(tail)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < head.len() {
            head = &head[n..];
        } else {
            tail = &tail[n - head.len()..];
            head = &[];
        }
    }
    io.write_all(tail).await
}

fn encode(encoder: &mut Encoder, frame: &Frame, buf: &mut BytesMut) -> io::Result<()> {
    encoder.encode(frame, buf).map_err(io::Error::other)
}
