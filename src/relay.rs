//! Bounded, half-close-correct byte pumps between two connections.
//!
//! [`splice`] copies bytes both ways between two `AsyncRead + AsyncWrite` values until both
//! directions are done. Each direction is a [`Pump`]: read into its buffer, write all of it
//! out, read again. Memory is bounded by one buffer per direction; a slow writer stops the
//! reads on its side, and TCP pushes back from there (backpressure, never drop).
//!
//! Half-close is explicit (style habit 8): end of stream one way becomes a `shutdown()` (a FIN,
//! or TLS close_notify then FIN) the same way, while the other direction keeps flowing. An I/O
//! error on either side ends the splice and drops both connections.
//!
//! Buffers start small: each direction reads into a small inline buffer and moves to its full
//! [`RelayConfig::buffer_size`] buffer only after a read fills the small one. Interactive
//! sessions (keystrokes, short output lines) so never allocate the large buffer, and a
//! direction that never carries data costs only the inline bytes.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Default [`RelayConfig::buffer_size`]: 32 KiB, the buffer of Go's `io.Copy` and of the API
/// server's tunnel copy loops (protocol.md §7.2).
pub const DEFAULT_BUFFER_SIZE: usize = 32 * 1024;

/// Size of the inline buffer each direction starts with, in bytes. A read that fills it moves
/// the direction to its full buffer for the rest of the splice.
pub const SMALL_BUFFER_SIZE: usize = 1024;

/// How a splice buffers and when it gives up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Largest read per direction, in bytes, once a direction carries bulk data; allocated on
    /// the first read that fills the [`SMALL_BUFFER_SIZE`] inline buffer, and reused for every
    /// read after. Values below [`SMALL_BUFFER_SIZE`] keep the inline buffer for good; zero is
    /// treated as one. Default [`DEFAULT_BUFFER_SIZE`] (32 KiB).
    pub buffer_size: usize,
    /// End the splice after this long without a byte moving in either direction. `None`: no
    /// limit, as the API server's tunnel (protocol.md §7.2 step 7); the protocols inside have
    /// their own keepalives and idle limits. Default `None`.
    pub idle_timeout: Option<Duration>,
    /// Once one direction has ended (EOF passed on as a FIN), end the splice if the other
    /// direction has not ended within this time. Bounds a peer that never answers a FIN.
    /// `None`: the remaining direction may run for as long as it flows. Default `None`.
    pub half_close_timeout: Option<Duration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            buffer_size: DEFAULT_BUFFER_SIZE,
            idle_timeout: None,
            half_close_timeout: None,
        }
    }
}

/// One of the two connections of a splice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first argument of [`splice`].
    A,
    /// The second argument of [`splice`].
    B,
}

/// The operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    Shutdown,
}

/// Why a splice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ended {
    /// Both directions reached end of stream and each end was passed on as a FIN.
    Closed,
    /// An operation on `side` failed; both connections were dropped.
    Error {
        /// Where it failed.
        side: Side,
        /// What failed.
        op: IoOp,
        /// The error's kind (the error itself is logged at debug level).
        kind: io::ErrorKind,
    },
    /// No byte moved either way for [`RelayConfig::idle_timeout`].
    IdleTimeout,
    /// One direction ended and the other did not within [`RelayConfig::half_close_timeout`].
    HalfCloseTimeout,
}

impl Ended {
    /// A short, bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Ended::Closed => "closed",
            Ended::Error { side: Side::A, .. } => "error_a",
            Ended::Error { side: Side::B, .. } => "error_b",
            Ended::IdleTimeout => "idle_timeout",
            Ended::HalfCloseTimeout => "half_close_timeout",
        }
    }
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Error { side, op, kind } => write!(f, "{op:?} on side {side:?} failed: {kind}"),
            other => f.write_str(other.label()),
        }
    }
}

/// What a splice moved and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes written to B that were read from A.
    pub a_to_b: u64,
    /// Bytes written to A: the prefix of [`splice_with_prefix`], then what was read from B.
    pub b_to_a: u64,
    /// Why it ended.
    pub ended: Ended,
}

/// Copies bytes both ways between `a` and `b` until both directions have ended, an I/O error
/// occurs on either side, or a configured timeout fires. End of stream read from one side is
/// passed on as `shutdown()` of the other side's write half; the other direction keeps going.
/// Both connections are dropped when this returns.
pub async fn splice<A, B>(a: A, b: B, cfg: &RelayConfig) -> RelayStats
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    splice_with_prefix(a, b, Bytes::new(), cfg).await
}

/// [`splice`], but first writes `prefix` to `a` as if it had been read from `b`: the bytes an
/// upgrade read past the runtime's response head ([`crate::upstream::Upgraded::leftover`]).
/// Nothing read from `b` reaches `a` before all of `prefix` has; the other direction flows
/// meanwhile. `prefix` counts in [`RelayStats::b_to_a`].
pub async fn splice_with_prefix<A, B>(a: A, b: B, prefix: Bytes, cfg: &RelayConfig) -> RelayStats
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let mut a = pin!(a);
    let mut b = pin!(b);
    let mut a_to_b = Pump::new(cfg.buffer_size, Bytes::new());
    let mut b_to_a = Pump::new(cfg.buffer_size, prefix);
    let mut timers = Timers::new(cfg);
    let mut sleep = pin!(tokio::time::sleep_until(Instant::now()));

    let ended = poll_fn(|cx| {
        let mut active = false;
        if let Poll::Ready(Err(failure)) = a_to_b.poll(cx, a.as_mut(), b.as_mut(), &mut active) {
            return Poll::Ready(failure.ended(Side::A, Side::B));
        }
        if let Poll::Ready(Err(failure)) = b_to_a.poll(cx, b.as_mut(), a.as_mut(), &mut active) {
            return Poll::Ready(failure.ended(Side::B, Side::A));
        }
        if a_to_b.is_done() && b_to_a.is_done() {
            return Poll::Ready(Ended::Closed);
        }
        timers.poll(
            cx,
            sleep.as_mut(),
            active,
            a_to_b.is_done() || b_to_a.is_done(),
        )
    })
    .await;

    RelayStats {
        a_to_b: a_to_b.moved,
        b_to_a: b_to_a.moved,
        ended,
    }
}

/// The idle and half-close deadlines, served by one coarse timer.
///
/// Activity does not touch the timer: it only moves `last_active`. When the timer fires early
/// because of that, it is re-armed for the deadline that now applies. So a busy splice costs
/// one clock read per wakeup and no timer-wheel work per read.
struct Timers {
    idle: Option<Duration>,
    half_close: Option<Duration>,
    last_active: Instant,
    half_closed_at: Option<Instant>,
    armed: Option<Instant>,
}

impl Timers {
    fn new(cfg: &RelayConfig) -> Self {
        Timers {
            idle: cfg.idle_timeout,
            half_close: cfg.half_close_timeout,
            last_active: Instant::now(),
            half_closed_at: None,
            armed: None,
        }
    }

    /// Returns `Ready` with the timeout that expired, or `Pending` with the timer registered.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut Sleep>,
        active: bool,
        half_closed: bool,
    ) -> Poll<Ended> {
        if self.idle.is_none() && self.half_close.is_none() {
            return Poll::Pending;
        }
        let now = Instant::now();
        if active {
            self.last_active = now;
        }
        if half_closed && self.half_closed_at.is_none() {
            self.half_closed_at = Some(now);
        }
        loop {
            let idle_deadline = self.idle.map(|t| self.last_active + t);
            let half_close_deadline = self
                .half_close
                .zip(self.half_closed_at)
                .map(|(t, at)| at + t);
            let now = Instant::now();
            if half_close_deadline.is_some_and(|d| now >= d) {
                return Poll::Ready(Ended::HalfCloseTimeout);
            }
            if idle_deadline.is_some_and(|d| now >= d) {
                return Poll::Ready(Ended::IdleTimeout);
            }
            let Some(deadline) = idle_deadline.into_iter().chain(half_close_deadline).min() else {
                return Poll::Pending;
            };
            // Deadlines only move later, except when a half-close deadline first appears.
            if self.armed.is_none_or(|armed| deadline < armed) {
                sleep.as_mut().reset(deadline);
                self.armed = Some(deadline);
            }
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Fired for a deadline that activity has since moved: re-arm and look again.
                Poll::Ready(()) => self.armed = None,
            }
        }
    }
}

/// A failed operation of one pump, before it is attributed to a side.
struct Failure {
    /// The reader's side failed (a read), rather than the writer's.
    on_reader: bool,
    op: IoOp,
    error: io::Error,
}

impl Failure {
    fn read(error: io::Error) -> Self {
        Failure {
            on_reader: true,
            op: IoOp::Read,
            error,
        }
    }

    fn write(op: IoOp, error: io::Error) -> Self {
        Failure {
            on_reader: false,
            op,
            error,
        }
    }

    fn ended(self, reader: Side, writer: Side) -> Ended {
        let side = if self.on_reader { reader } else { writer };
        tracing::debug!(?side, op = ?self.op, error = %self.error, "relay I/O failed");
        Ended::Error {
            side,
            op: self.op,
            kind: self.error.kind(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PumpState {
    /// Reading and writing.
    Copying,
    /// The reader hit end of stream and everything read was written: shutting the writer down.
    ShuttingDown,
    /// The writer is shut down; nothing more to do.
    Done,
}

/// One direction of a splice.
struct Pump {
    /// Written before anything is read.
    prefix: Bytes,
    small: [u8; SMALL_BUFFER_SIZE],
    /// The full buffer, once a read filled `small`.
    large: Option<Box<[u8]>>,
    large_size: usize,
    /// Read but not yet written: `start..end` of the current buffer.
    start: usize,
    end: usize,
    /// Some bytes were written since the last flush.
    unflushed: bool,
    read_eof: bool,
    state: PumpState,
    moved: u64,
}

impl Pump {
    fn new(buffer_size: usize, prefix: Bytes) -> Self {
        Pump {
            prefix,
            small: [0; SMALL_BUFFER_SIZE],
            large: None,
            large_size: buffer_size.max(1),
            start: 0,
            end: 0,
            unflushed: false,
            read_eof: false,
            state: PumpState::Copying,
            moved: 0,
        }
    }

    fn is_done(&self) -> bool {
        self.state == PumpState::Done
    }

    /// The buffer reads go into: the large one once allocated, else the inline one (cut to the
    /// configured size when that is smaller).
    fn buffer(&mut self) -> &mut [u8] {
        match &mut self.large {
            Some(large) => large,
            None => {
                let len = self.large_size.min(SMALL_BUFFER_SIZE);
                &mut self.small[..len]
            }
        }
    }

    /// Moves bytes from `reader` to `writer` until one of them is not ready. `Ready(Ok)` once
    /// the writer has been shut down after end of stream; `active` is set when bytes moved.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        active: &mut bool,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self.state {
                PumpState::Done => return Poll::Ready(Ok(())),
                PumpState::ShuttingDown => {
                    // A shutdown flushes first (AsyncWrite contract), so nothing written is lost.
                    ready!(writer.as_mut().poll_shutdown(cx))
                        .map_err(|e| Failure::write(IoOp::Shutdown, e))?;
                    self.state = PumpState::Done;
                }
                PumpState::Copying => {
                    while !self.prefix.is_empty() {
                        let n = ready!(writer.as_mut().poll_write(cx, &self.prefix))
                            .map_err(|e| Failure::write(IoOp::Write, e))?;
                        if n == 0 {
                            return Poll::Ready(Err(write_zero()));
                        }
                        self.prefix.advance(n);
                        self.wrote(n, active);
                    }
                    while self.start < self.end {
                        let (start, end) = (self.start, self.end);
                        let pending = &self.buffer()[start..end];
                        let n = ready!(writer.as_mut().poll_write(cx, pending))
                            .map_err(|e| Failure::write(IoOp::Write, e))?;
                        if n == 0 {
                            return Poll::Ready(Err(write_zero()));
                        }
                        self.start += n;
                        self.wrote(n, active);
                    }
                    if self.read_eof {
                        self.state = PumpState::ShuttingDown;
                        continue;
                    }
                    let read = {
                        let mut buf = ReadBuf::new(self.buffer());
                        match reader.as_mut().poll_read(cx, &mut buf) {
                            Poll::Pending => None,
                            Poll::Ready(result) => Some(result.map(|()| buf.filled().len())),
                        }
                    };
                    match read {
                        None => {
                            // Nothing more to read for now: push out what was written, so that
                            // a buffering writer (TLS) never sits on a keystroke.
                            if self.unflushed {
                                ready!(writer.as_mut().poll_flush(cx))
                                    .map_err(|e| Failure::write(IoOp::Flush, e))?;
                                self.unflushed = false;
                            }
                            return Poll::Pending;
                        }
                        Some(Err(e)) => return Poll::Ready(Err(Failure::read(e))),
                        Some(Ok(0)) => self.read_eof = true,
                        Some(Ok(n)) => {
                            self.start = 0;
                            self.end = n;
                            *active = true;
                            if self.large.is_none()
                                && n == SMALL_BUFFER_SIZE
                                && self.large_size > SMALL_BUFFER_SIZE
                            {
                                // Bulk data: the next read goes into the full buffer. The
                                // pending bytes are written from `small` first.
                                self.grow();
                            }
                        }
                    }
                }
            }
        }
    }

    fn wrote(&mut self, n: usize, active: &mut bool) {
        self.moved += n as u64;
        self.unflushed = true;
        *active = true;
    }

    /// Allocates the large buffer and moves the pending bytes into it, which keeps one code
    /// path for writing (a one-time copy of at most [`SMALL_BUFFER_SIZE`] bytes).
    fn grow(&mut self) {
        let mut large = vec![0u8; self.large_size].into_boxed_slice();
        let pending = self.end - self.start;
        large[..pending].copy_from_slice(&self.small[self.start..self.end]);
        self.start = 0;
        self.end = pending;
        self.large = Some(large);
    }
}

fn write_zero() -> Failure {
    Failure::write(
        IoOp::Write,
        io::Error::new(io::ErrorKind::WriteZero, "write returned zero bytes"),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    /// Deterministic, non-repeating test bytes.
    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Spawns `splice(a, b)` over two duplex pairs; returns the outer ends and the task.
    fn spawned(
        cfg: RelayConfig,
        capacity: usize,
        prefix: Bytes,
    ) -> (
        DuplexStream,
        DuplexStream,
        tokio::task::JoinHandle<RelayStats>,
    ) {
        let (a_peer, a) = duplex(capacity);
        let (b_peer, b) = duplex(capacity);
        let task = tokio::spawn(async move { splice_with_prefix(a, b, prefix, &cfg).await });
        (a_peer, b_peer, task)
    }

    #[tokio::test]
    async fn bytes_arrive_exactly_both_ways_and_both_fins_end_the_splice() {
        let cfg = RelayConfig {
            buffer_size: 4096,
            ..RelayConfig::default()
        };
        let (a_peer, b_peer, task) = spawned(cfg, 1500, Bytes::new());
        let to_b = pattern(300_000, 1);
        let to_a = pattern(200_000, 2);

        let (a_send, b_send) = (to_b.clone(), to_a.clone());
        let a_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(a_peer);
            let writer = async {
                // Uneven writes, to cross buffer boundaries everywhere.
                for chunk in a_send.chunks(777) {
                    w.write_all(chunk).await.unwrap();
                }
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let reader = r.read_to_end(&mut got);
            let (_, read) = tokio::join!(writer, reader);
            read.unwrap();
            got
        });
        let b_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(b_peer);
            let writer = async {
                w.write_all(&b_send).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let reader = r.read_to_end(&mut got);
            let (_, read) = tokio::join!(writer, reader);
            read.unwrap();
            got
        });
        assert_eq!(b_side.await.unwrap(), to_b);
        assert_eq!(a_side.await.unwrap(), to_a);
        let stats = task.await.unwrap();
        assert_eq!(
            stats,
            RelayStats {
                a_to_b: to_b.len() as u64,
                b_to_a: to_a.len() as u64,
                ended: Ended::Closed,
            }
        );
    }

    #[tokio::test]
    async fn eof_one_way_is_a_fin_and_the_other_direction_keeps_flowing() {
        let (mut a_peer, mut b_peer, task) =
            spawned(RelayConfig::default(), 64 * 1024, Bytes::new());
        a_peer.write_all(b"last words").await.unwrap();
        a_peer.shutdown().await.unwrap();

        let mut got = Vec::new();
        b_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");

        // B still talks to A after A's FIN, for as long as it likes.
        for i in 0..3u8 {
            b_peer.write_all(&[i; 10]).await.unwrap();
            let mut buf = [0u8; 10];
            a_peer.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, [i; 10]);
        }
        assert!(!task.is_finished());
        b_peer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        a_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let stats = task.await.unwrap();
        assert_eq!(stats.ended, Ended::Closed);
        assert_eq!((stats.a_to_b, stats.b_to_a), (10, 30));
    }

    #[tokio::test]
    async fn a_write_error_on_one_side_ends_both() {
        let (a_peer, mut b_peer, task) = spawned(RelayConfig::default(), 1024, Bytes::new());
        // A's peer vanishes: writes to A now fail with a broken pipe.
        drop(a_peer);
        b_peer.write_all(b"into the void").await.unwrap();
        let stats = task.await.unwrap();
        // A's read side sees EOF first and may have passed a FIN to B; either way the write to
        // A fails and the splice ends, dropping B.
        assert_eq!(
            stats.ended,
            Ended::Error {
                side: Side::A,
                op: IoOp::Write,
                kind: io::ErrorKind::BrokenPipe,
            }
        );
        let mut rest = Vec::new();
        b_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    /// Reads fail with a connection reset; writes go nowhere.
    struct ResetOnRead;

    impl AsyncRead for ResetOnRead {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    impl AsyncWrite for ResetOnRead {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_read_error_ends_both_and_names_the_side() {
        let (b_peer, b) = duplex(1024);
        let stats = splice(ResetOnRead, b, &RelayConfig::default()).await;
        assert_eq!(
            stats.ended,
            Ended::Error {
                side: Side::A,
                op: IoOp::Read,
                kind: io::ErrorKind::ConnectionReset,
            }
        );
        assert_eq!(stats.ended.label(), "error_a");
        // B was dropped: its peer reads EOF rather than waiting forever.
        let mut b_peer = b_peer;
        let mut rest = Vec::new();
        b_peer.read_to_end(&mut rest).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_from_the_last_byte_moved() {
        let cfg = RelayConfig {
            idle_timeout: Some(Duration::from_secs(10)),
            ..RelayConfig::default()
        };
        let start = Instant::now();
        let (mut a_peer, mut b_peer, task) = spawned(cfg, 1024, Bytes::new());
        tokio::time::sleep(Duration::from_secs(6)).await;
        a_peer.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        b_peer.read_exact(&mut one).await.unwrap();
        let stats = task.await.unwrap();
        assert_eq!(stats.ended, Ended::IdleTimeout);
        assert_eq!(stats.a_to_b, 1);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_secs(16) && elapsed < Duration::from_secs(17),
            "ended after {elapsed:?}"
        );
        // Both connections were dropped.
        let mut rest = Vec::new();
        a_peer.read_to_end(&mut rest).await.unwrap();
        b_peer.read_to_end(&mut rest).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn half_close_timeout_bounds_the_remaining_direction() {
        let cfg = RelayConfig {
            half_close_timeout: Some(Duration::from_secs(5)),
            ..RelayConfig::default()
        };
        let start = Instant::now();
        let (mut a_peer, _b_peer, task) = spawned(cfg, 1024, Bytes::new());
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!task.is_finished(), "no timeout before a half-close");
        a_peer.shutdown().await.unwrap();
        let stats = task.await.unwrap();
        assert_eq!(stats.ended, Ended::HalfCloseTimeout);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_secs(105) && elapsed < Duration::from_secs(106),
            "ended after {elapsed:?}"
        );
    }

    #[tokio::test]
    async fn prefix_reaches_a_before_anything_read_from_b() {
        let (mut a_peer, mut b_peer, task) =
            spawned(RelayConfig::default(), 1024, Bytes::from_static(b"early "));
        b_peer.write_all(b"late").await.unwrap();
        b_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        a_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early late");
        a_peer.shutdown().await.unwrap();
        let stats = task.await.unwrap();
        assert_eq!((stats.a_to_b, stats.b_to_a), (0, 10));
        assert_eq!(stats.ended, Ended::Closed);
    }

    /// Records the buffer size offered to each read.
    struct Recording {
        inner: DuplexStream,
        offered: Arc<Mutex<Vec<usize>>>,
    }

    impl AsyncRead for Recording {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.offered.lock().unwrap().push(buf.remaining());
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recording {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn small_reads_never_allocate_the_large_buffer_and_a_full_read_does() {
        let offered = Arc::new(Mutex::new(Vec::new()));
        let (mut a_peer, a) = duplex(1 << 20);
        let (mut b_peer, b) = duplex(1 << 20);
        let a = Recording {
            inner: a,
            offered: offered.clone(),
        };
        let task = tokio::spawn(async move { splice(a, b, &RelayConfig::default()).await });

        // Keystrokes: one small read at a time.
        for key in [b"l", b"s", b"\n"] {
            a_peer.write_all(key).await.unwrap();
            let mut got = [0u8; 1];
            b_peer.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, key);
        }
        assert!(
            offered
                .lock()
                .unwrap()
                .iter()
                .all(|&n| n == SMALL_BUFFER_SIZE)
        );

        // Bulk: the first read fills the small buffer, the next ones get the full buffer.
        let bulk = pattern(100_000, 3);
        a_peer.write_all(&bulk).await.unwrap();
        let mut got = vec![0u8; bulk.len()];
        b_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, bulk);
        assert!(offered.lock().unwrap().contains(&DEFAULT_BUFFER_SIZE));

        a_peer.shutdown().await.unwrap();
        b_peer.shutdown().await.unwrap();
        assert_eq!(task.await.unwrap().ended, Ended::Closed);
    }
}
