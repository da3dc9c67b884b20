//! Byte counting at the edge: an I/O wrapper around a connection (style habit 7).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ByteCounter;

pin_project! {
    /// A connection whose reads add to one counter and whose writes add to another. Counts
    /// what the inner I/O reported moved, nothing else: no buffering, no copies.
    ///
    /// ```text
    ///  caller ──poll_write(n)──▶ CountingIo ──▶ inner      written += n accepted
    ///  caller ◀──poll_read(n)─── CountingIo ◀── inner      read += n filled
    /// ```
    #[derive(Debug)]
    pub struct CountingIo<T> {
        #[pin]
        inner: T,
        read: ByteCounter,
        written: ByteCounter,
    }
}

impl<T> CountingIo<T> {
    /// Wraps `inner`: bytes read from it count in `read`, bytes written to it in `written`.
    pub fn new(inner: T, read: ByteCounter, written: ByteCounter) -> Self {
        CountingIo {
            inner,
            read,
            written,
        }
    }

    /// The wrapped connection.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead> AsyncRead for CountingIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.read.add((buf.filled().len() - before) as u64);
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for CountingIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.written.add(n as u64);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            this.written.add(n as u64);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;
    use crate::metrics::{Channel, Direction, Kind, Metrics, Protocol};

    #[tokio::test]
    async fn reads_and_writes_count_what_moved() {
        let m = Arc::new(Metrics::new());
        let guard = m.start_session(Kind::PortForward, Protocol::Tunnel, None);
        let up = guard.bytes(Channel::Tunnel, Direction::ClientToRuntime);
        let down = guard.bytes(Channel::Tunnel, Direction::RuntimeToClient);
        let (a, mut b) = duplex(64);
        let mut io = CountingIo::new(a, down.clone(), up.clone());
        io.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        b.write_all(b"abc").await.unwrap();
        let mut back = [0u8; 3];
        io.read_exact(&mut back).await.unwrap();
        assert_eq!((up.get(), down.get()), (5, 3));
        let view = &m.sessions().snapshot()[0];
        assert_eq!(view.bytes["tunnel"].client_to_runtime, 5);
        assert_eq!(view.bytes["tunnel"].runtime_to_client, 3);
    }
}
