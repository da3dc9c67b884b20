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
    /// Write what is queued, shut the write side down and stop.
    Shutdown,
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
                Some(Ctl::Shutdown) | None => Next::Shutdown,
            },
            d = data.recv(), if data_open => match d {
                Some(item) => Next::Data(item),
                None => { data_open = false; continue; }
            },
        };
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Next::Shutdown => {
                    io.write_all(&buf).await?;
                    io.flush().await?;
                    return io.shutdown().await;
                }
                Next::Frame(frame) => encode(&mut encoder, &frame, &mut buf)?,
                Next::Data(item) => {
                    let header = data_header(item.stream_id, item.fin, item.payload.len())
                        .map_err(io::Error::other)?;
                    buf.extend_from_slice(&header);
                    if item.payload.len() >= DIRECT_WRITE {
                        io.write_all(&buf).await?;
                        buf.clear();
                        io.write_all(&item.payload).await?;
                    } else {
                        buf.extend_from_slice(&item.payload);
                    }
                }
            }
            if buf.len() >= BATCH {
                io.write_all(&buf).await?;
                buf.clear();
            }
            // Take whatever else is ready, control first, before paying for a write.
            next = match ctl.try_recv() {
                Ok(Ctl::Frame(f)) => Some(Next::Frame(f)),
                Ok(Ctl::Shutdown) => Some(Next::Shutdown),
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
    Shutdown,
}

fn encode(encoder: &mut Encoder, frame: &Frame, buf: &mut BytesMut) -> io::Result<()> {
    encoder.encode(frame, buf).map_err(io::Error::other)
}
