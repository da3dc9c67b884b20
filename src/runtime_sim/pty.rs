//! Pseudo-terminals for `tty` sessions, without `unsafe`: rustix opens and unlocks the pair,
//! tokio's `AsyncFd` drives the non-blocking master.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The master side of a pseudo-terminal, shared by the output pump, the input pump and the
/// resize handler.
#[derive(Debug)]
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

/// Opens a pseudo-terminal pair: the non-blocking master and the slave (for the child's
/// stdin, stdout and stderr). Both are close-on-exec; the child gets the slave through
/// `dup2`, which clears the flag on the copies.
pub fn open() -> io::Result<(Arc<PtyMaster>, OwnedFd)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let flags = rustix::fs::fcntl_getfl(&master)?;
    rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK)?;
    // `AsyncFd::new` is deprecated because a borrowed-fd `T` could be closed while
    // registered; `OwnedFd` owns its descriptor, so that cannot happen here, and the
    // replacement (`register`) is `unsafe`, which this crate forbids.
    #[allow(deprecated)]
    let fd = AsyncFd::new(master)?;
    Ok((Arc::new(PtyMaster { fd }), slave))
}

impl PtyMaster {
    /// Sets the terminal size; the kernel sends `SIGWINCH` to the foreground process group.
    pub fn set_size(&self, width: u16, height: u16) -> io::Result<()> {
        rustix::termios::tcsetwinsize(
            self.fd.get_ref(),
            Winsize {
                ws_row: height,
                ws_col: width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )?;
        Ok(())
    }

    /// The current terminal size as `(width, height)`.
    #[cfg(test)]
    pub fn size(&self) -> io::Result<(u16, u16)> {
        let ws = rustix::termios::tcgetwinsize(self.fd.get_ref())?;
        Ok((ws.ws_col, ws.ws_row))
    }

    fn poll_read_into(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref().as_fd(), &mut *unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Linux reports EIO on the master once every slave descriptor is closed: that
                // is the end of the terminal's output.
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::IO.raw_os_error()) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_write_from(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(rustix::io::write(fd.get_ref().as_fd(), data)?)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Reads the terminal's output (what the child writes to its stdout and stderr).
#[derive(Debug, Clone)]
pub struct PtyReader(pub Arc<PtyMaster>);

/// Writes the terminal's input (what the child reads from its stdin).
#[derive(Debug, Clone)]
pub struct PtyWriter(pub Arc<PtyMaster>);

impl AsyncRead for PtyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.poll_read_into(cx, buf)
    }
}

impl AsyncWrite for PtyWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_from(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    // A terminal has no half-close: the input side simply stops.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn size_set_on_the_master_is_read_back() {
        let (master, _slave) = open().unwrap();
        master.set_size(100, 30).unwrap();
        assert_eq!(master.size().unwrap(), (100, 30));
    }

    #[tokio::test]
    async fn master_reads_eof_when_the_slave_closes() {
        let (master, slave) = open().unwrap();
        let mut slave = std::fs::File::from(slave);
        std::io::Write::write_all(&mut slave, b"hi\n").unwrap();
        drop(slave);
        let mut out = Vec::new();
        PtyReader(master.clone())
            .read_to_end(&mut out)
            .await
            .unwrap();
        // ONLCR turns the newline into CR LF.
        assert_eq!(out, b"hi\r\n");
    }

    #[tokio::test]
    async fn input_written_to_the_master_reaches_the_slave() {
        let (master, slave) = open().unwrap();
        PtyWriter(master.clone()).write_all(b"abc\n").await.unwrap();
        let mut slave = std::fs::File::from(slave);
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut slave, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"abc\n");
    }
}
