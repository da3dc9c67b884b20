//! The SPDY/3.1 connection driver: runs a [`spdy::Session`](crate::spdy::Session) over any
//! `AsyncRead + AsyncWrite`, in the client or the server role.
//!
//! Two tasks per connection. The driver owns the read half, the session state and the stream
//! table; the writer owns the write half (see [`writer`]). Streams talk to the writer directly
//! for DATA, so a busy stream never blocks the driver, and the driver never waits on the
//! writer, so reading continues while the peer is slow to read (no write/write deadlock).
//!
//! Back-pressure: each stream buffers at most [`ConnectionConfig::stream_buffer`] inbound
//! bytes. When a stream's reader falls behind, the driver stops reading the socket (TCP then
//! pushes back on the peer, exactly as spdystream behaves), while commands, PING echoes and
//! outbound traffic of every stream keep flowing.

mod stream;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use stream::{DataItem, Shared, WriterLink};
pub use stream::{Stream, StreamEnd, StreamReader, StreamSink, StreamWriter};
use writer::Ctl;

use crate::spdy::{Decoder, Event, Frame, HeaderBlock, Limits, Role, RstStatus, Session};

/// How a connection behaves. Defaults mirror client-go and the kubelet streaming library.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// Client (odd stream ids) or server (even).
    pub role: Role,
    /// Send a PING this often. client-go and the API server translator ping every 5 s; the
    /// kubelet library never does. Default: 5 s for clients, none for servers.
    pub ping_interval: Option<Duration>,
    /// How long [`Handle::open_stream`] waits for SYN_REPLY. Default 30 s (client-go).
    pub reply_timeout: Duration,
    /// Inbound bytes buffered per stream before the connection stops reading. Default 256 KiB.
    pub stream_buffer: usize,
    /// Outbound DATA frames queued per connection before senders wait. Default 16.
    pub write_queue: usize,
    /// Largest DATA payload we send. Default 32 KiB, as client-go's copy buffer.
    pub max_chunk: usize,
    /// Upper bound on a graceful close before the connection is dropped. Default 5 s.
    pub close_timeout: Duration,
    /// Close after this long without any frame in either direction. Default none; the kubelet
    /// library uses 4 h.
    pub idle_timeout: Option<Duration>,
    /// Peer-opened streams held at once (server role); more are refused. Default 1024.
    pub max_incoming_streams: usize,
    /// Decoder caps.
    pub limits: Limits,
}

impl ConnectionConfig {
    /// Default for [`reply_timeout`](Self::reply_timeout).
    pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default client [`ping_interval`](Self::ping_interval).
    pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
    /// Default for [`stream_buffer`](Self::stream_buffer).
    pub const DEFAULT_STREAM_BUFFER: usize = 256 * 1024;
    /// Default for [`write_queue`](Self::write_queue).
    pub const DEFAULT_WRITE_QUEUE: usize = 16;
    /// Default for [`max_chunk`](Self::max_chunk).
    pub const DEFAULT_MAX_CHUNK: usize = 32 * 1024;
    /// Default for [`close_timeout`](Self::close_timeout).
    pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default for [`max_incoming_streams`](Self::max_incoming_streams).
    pub const DEFAULT_MAX_INCOMING_STREAMS: usize = 1024;

    /// A client connection (the bridge towards a runtime).
    pub fn client() -> Self {
        ConnectionConfig {
            role: Role::Client,
            ping_interval: Some(Self::DEFAULT_PING_INTERVAL),
            reply_timeout: Self::DEFAULT_REPLY_TIMEOUT,
            stream_buffer: Self::DEFAULT_STREAM_BUFFER,
            write_queue: Self::DEFAULT_WRITE_QUEUE,
            max_chunk: Self::DEFAULT_MAX_CHUNK,
            close_timeout: Self::DEFAULT_CLOSE_TIMEOUT,
            idle_timeout: None,
            max_incoming_streams: Self::DEFAULT_MAX_INCOMING_STREAMS,
            limits: Limits::default(),
        }
    }

    /// A server connection (the runtime simulator).
    pub fn server() -> Self {
        ConnectionConfig {
            role: Role::Server,
            ping_interval: None,
            ..Self::client()
        }
    }
}

/// Why opening a stream (or a ping) failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// client-go's words for the same failure.
    #[error("Timeout occurred")]
    Timeout,
    #[error("Stream reset")]
    Reset(RstStatus),
    #[error("connection closed")]
    Closed,
}

/// Why a write failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WriteError {
    #[error("stream already half-closed")]
    Finished,
    #[error("stream reset ({})", .0.0)]
    Reset(RstStatus),
    #[error("connection closed")]
    ConnectionClosed,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it ([`Handle::close`], or every handle was dropped).
    Local,
    /// The peer sent GOAWAY.
    GoAway,
    /// The peer closed the TCP connection.
    PeerClosed,
    /// No frame for the idle timeout.
    Idle,
    /// The peer sent something that is not SPDY/3.1; the text says what.
    Protocol(String),
    /// Reading or writing the socket failed.
    Io(String),
    /// [`Handle::abort`].
    Aborted,
}

/// Commands from handles and streams to the driver.
#[derive(Debug)]
pub(crate) enum Cmd {
    Open {
        headers: HeaderBlock,
        reply: oneshot::Sender<Result<Stream, OpenError>>,
    },
    LocalFin(u32),
    Reset(u32, RstStatus),
    Ping(oneshot::Sender<Duration>),
    Close(oneshot::Sender<()>),
    Abort,
}

/// Controls a connection. Cloneable; the connection closes gracefully once every handle,
/// stream and the [`Incoming`] are dropped.
#[derive(Clone, Debug)]
pub struct Handle {
    cmd: mpsc::UnboundedSender<Cmd>,
    closed: watch::Receiver<Option<CloseReason>>,
    reply_timeout: Duration,
}

impl Handle {
    /// Opens a stream and waits for the peer's SYN_REPLY.
    pub async fn open_stream(&self, headers: HeaderBlock) -> Result<Stream, OpenError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Open { headers, reply })
            .map_err(|_| OpenError::Closed)?;
        match tokio::time::timeout(self.reply_timeout, rx).await {
            Err(_) => Err(OpenError::Timeout),
            Ok(Err(_)) => Err(OpenError::Closed),
            Ok(Ok(result)) => result,
        }
    }

    /// Sends one PING and waits for its echo.
    pub async fn ping(&self) -> Result<Duration, OpenError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Ping(tx))
            .map_err(|_| OpenError::Closed)?;
        rx.await.map_err(|_| OpenError::Closed)
    }

    /// Closes gracefully: RST_STREAM CANCEL on streams we have not half-closed, GOAWAY, then
    /// the socket. Returns once done, or after the close timeout when the peer does not read.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        self.closed().await;
    }

    /// Drops the connection at once.
    pub fn abort(&self) {
        let _ = self.cmd.send(Cmd::Abort);
    }

    /// Waits until the connection has ended.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.closed.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(CloseReason::Local),
            Err(_) => CloseReason::Local,
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }
}

/// Streams the peer opens (server role).
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::UnboundedReceiver<IncomingStream>,
    // Accepting keeps the connection alive even without a Handle.
    _cmd: mpsc::UnboundedSender<Cmd>,
}

impl Incoming {
    /// The next stream the peer opened; `None` once the connection has ended.
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        self.rx.recv().await
    }
}

/// A stream the peer opened, not yet answered.
pub struct IncomingStream {
    id: u32,
    headers: HeaderBlock,
    shared: Arc<Shared>,
    link: WriterLink,
    ctl: mpsc::UnboundedSender<Ctl>,
}

impl std::fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl IncomingStream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The SYN_STREAM's headers.
    pub fn headers(&self) -> &HeaderBlock {
        &self.headers
    }

    /// Accepts with an empty SYN_REPLY, as every Kubernetes server does.
    pub fn accept(self) -> Stream {
        self.accept_with(HeaderBlock::new())
    }

    /// Accepts with a SYN_REPLY carrying `headers`.
    pub fn accept_with(self, headers: HeaderBlock) -> Stream {
        // Straight to the writer's control queue: it is written before any DATA the
        // application can queue after this returns.
        let _ = self.ctl.send(Ctl::Frame(Frame::SynReply {
            stream_id: self.id,
            fin: false,
            headers,
        }));
        Stream::new(self.id, self.headers, self.shared, self.link)
    }

    /// Refuses the stream with RST_STREAM.
    pub fn reject(self, status: RstStatus) {
        let _ = self.link.cmd.send(Cmd::Reset(self.id, status));
    }
}

/// Starts a connection on `io`. `leftover` holds bytes already read past the HTTP 101 head:
/// SPDY frames may arrive in the same read as the response.
pub fn spawn<IO>(io: IO, leftover: Bytes, cfg: ConnectionConfig) -> (Handle, Incoming)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::channel(cfg.write_queue.max(1));
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = watch::channel(None);
    let writer = tokio::spawn(writer::run(wr, ctl_rx, data_rx));
    let handle = Handle {
        cmd: cmd_tx.clone(),
        closed: closed_rx,
        reply_timeout: cfg.reply_timeout,
    };
    let mut rbuf = BytesMut::new();
    rbuf.extend_from_slice(&leftover);
    let driver = Driver {
        session: Session::new(cfg.role),
        decoder: Decoder::new(cfg.limits),
        rbuf,
        read_size: MIN_READ,
        slots: HashMap::new(),
        ctl: ctl_tx,
        data: data_tx,
        cmd: cmd_tx.downgrade(),
        incoming: (cfg.role == Role::Server).then_some(incoming_tx),
        pings: HashMap::new(),
        pending: None,
        last_activity: Instant::now(),
        cfg,
    };
    tokio::spawn(driver.run(rd, cmd_rx, writer, closed_tx));
    let incoming = Incoming {
        rx: incoming_rx,
        _cmd: cmd_tx,
    };
    (handle, incoming)
}

const MIN_READ: usize = 2 * 1024;
const MAX_READ: usize = 64 * 1024;

struct Slot {
    shared: Arc<Shared>,
    opener: Option<oneshot::Sender<Result<Stream, OpenError>>>,
}

/// Data the driver could not hand to a full stream yet.
struct Pending {
    shared: Arc<Shared>,
    payload: Bytes,
    fin: bool,
}

struct Driver {
    cfg: ConnectionConfig,
    session: Session,
    decoder: Decoder,
    rbuf: BytesMut,
    read_size: usize,
    slots: HashMap<u32, Slot>,
    ctl: mpsc::UnboundedSender<Ctl>,
    data: mpsc::Sender<DataItem>,
    // Weak, so the connection closes once every handle and stream is gone.
    cmd: mpsc::WeakUnboundedSender<Cmd>,
    incoming: Option<mpsc::UnboundedSender<IncomingStream>>,
    pings: HashMap<u32, (Instant, oneshot::Sender<Duration>)>,
    pending: Option<Pending>,
    last_activity: Instant,
}

/// What ends the driver loop.
enum Exit {
    Graceful(CloseReason, Option<oneshot::Sender<()>>),
    Now(CloseReason),
}

impl Driver {
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        mut rd: R,
        mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
        mut writer: JoinHandle<std::io::Result<()>>,
        closed_tx: watch::Sender<Option<CloseReason>>,
    ) {
        let mut ping = self.cfg.ping_interval.map(|p| {
            let mut i = tokio::time::interval_at(Instant::now() + p, p);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut idle_check = self.cfg.idle_timeout.map(|t| {
            let period = (t / 8).max(Duration::from_millis(10));
            tokio::time::interval_at(Instant::now() + period, period)
        });
        let mut reading = true;
        // Frames that came with the 101 are processed before the first read.
        let mut exit = self.process();
        while exit.is_none() {
            if self.pending.is_none() && !self.rbuf.is_empty() {
                // Frames that waited behind a stream that was full or reset.
                exit = self.process();
                if exit.is_some() {
                    break;
                }
            }
            self.flush_outbox();
            let waiting = self.pending.as_ref().map(|p| p.shared.clone());
            let wanted = self.decoder.wanted(&self.rbuf);
            exit = tokio::select! {
                biased;
                cmd = cmd_rx.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => Some(Exit::Graceful(CloseReason::Local, None)),
                },
                _ = async { waiting.as_ref().unwrap().space.notified().await }, if waiting.is_some() => {
                    self.retry_pending()
                }
                r = read_some(&mut rd, &mut self.rbuf, self.read_size, wanted),
                    if reading && self.pending.is_none() =>
                {
                    match r {
                        Ok(0) => {
                            reading = false;
                            Some(Exit::Graceful(CloseReason::PeerClosed, None))
                        }
                        Ok(n) => {
                            self.adapt_read_size(n);
                            self.process()
                        }
                        Err(e) => Some(Exit::Now(CloseReason::Io(e.to_string()))),
                    }
                }
                _ = tick(&mut ping), if ping.is_some() => {
                    let frame = self.session.ping();
                    self.send_ctl(frame);
                    None
                }
                _ = tick(&mut idle_check), if idle_check.is_some() => {
                    let idle = self.cfg.idle_timeout.unwrap_or(Duration::MAX);
                    (self.last_activity.elapsed() >= idle)
                        .then_some(Exit::Graceful(CloseReason::Idle, None))
                }
                w = &mut writer => {
                    let reason = match w {
                        Ok(Ok(())) => CloseReason::Local,
                        Ok(Err(e)) => CloseReason::Io(e.to_string()),
                        Err(e) => CloseReason::Io(e.to_string()),
                    };
                    Some(Exit::Now(reason))
                }
            };
            if matches!(exit, Some(Exit::Graceful(CloseReason::GoAway, _))) {
                reading = false;
            }
        }
        let (reason, notify) = match exit {
            Some(Exit::Graceful(reason, notify)) => {
                // After the peer's GOAWAY or EOF nothing more is worth sending: the peer has
                // stopped reading. Otherwise reset what is open and say GOAWAY, after the
                // DATA already queued (the writer sends these last).
                let mut last = self.session.close();
                if matches!(reason, CloseReason::GoAway | CloseReason::PeerClosed) {
                    last.clear();
                }
                self.flush_outbox();
                let _ = self.ctl.send(Ctl::Shutdown(last));
                if tokio::time::timeout(self.cfg.close_timeout, &mut writer)
                    .await
                    .is_err()
                {
                    writer.abort();
                }
                (reason, notify)
            }
            Some(Exit::Now(reason)) => {
                writer.abort();
                (reason, None)
            }
            None => unreachable!("the loop only ends with an exit"),
        };
        let end = if reason == CloseReason::GoAway {
            StreamEnd::GoAway
        } else {
            StreamEnd::ConnectionClosed
        };
        if let Some(p) = self.pending.take() {
            // The peer said it before going away; keep it.
            let _ = p.shared.offer(p.payload);
        }
        for (_, slot) in self.slots.drain() {
            slot.shared.finish(end);
            if let Some(opener) = slot.opener {
                let _ = opener.send(Err(OpenError::Closed));
            }
        }
        self.incoming = None;
        let _ = closed_tx.send(Some(reason));
        if let Some(n) = notify {
            let _ = n.send(());
        }
    }

    fn adapt_read_size(&mut self, n: usize) {
        // Grow towards large reads under load; an idle connection keeps a small buffer.
        self.read_size = if n >= self.read_size {
            (self.read_size * 2).min(MAX_READ)
        } else {
            (n * 2).clamp(MIN_READ, MAX_READ)
        };
    }

    /// Decodes and dispatches every complete frame in the read buffer.
    fn process(&mut self) -> Option<Exit> {
        while self.pending.is_none() {
            let frame = match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Some(Exit::Graceful(CloseReason::Protocol(e.to_string()), None)),
            };
            self.last_activity = Instant::now();
            if let Some(event) = self.session.recv(frame)
                && let Some(exit) = self.on_event(event)
            {
                return Some(exit);
            }
        }
        if self.rbuf.is_empty() {
            // Everything read was handed on: let go of the allocation. Frames split off its
            // front may still hold it, and once they are gone `reserve` would reuse it, so a
            // connection that carried bulk data and then went idle would keep its last
            // MAX_READ buffer for good (`capacity()` cannot show that). The next read takes a
            // fresh buffer of the size it needs; under load that allocation happens anyway,
            // because the delivered frames still share the old one.
            self.rbuf = BytesMut::new();
        }
        None
    }

    fn on_event(&mut self, event: Event) -> Option<Exit> {
        match event {
            Event::StreamOpened {
                stream_id,
                headers,
                fin,
                ..
            } => {
                self.on_stream_opened(stream_id, headers);
                if fin && let Some(slot) = self.slots.get(&stream_id) {
                    slot.shared.finish(StreamEnd::Fin);
                }
                self.forget_if_closed(stream_id);
            }
            Event::StreamReplied {
                stream_id, headers, ..
            } => {
                let link = self.link();
                if let Some(slot) = self.slots.get_mut(&stream_id)
                    && let Some(opener) = slot.opener.take()
                {
                    let delivered = match link {
                        Some(link) => {
                            let stream = Stream::new(stream_id, headers, slot.shared.clone(), link);
                            opener.send(Ok(stream)).is_ok()
                        }
                        None => false,
                    };
                    if !delivered {
                        // Whoever opened it gave up (timeout): don't leave it half-open.
                        self.reset(stream_id, RstStatus::CANCEL);
                    }
                }
            }
            Event::Data {
                stream_id,
                payload,
                fin,
            } => {
                if let Some(slot) = self.slots.get(&stream_id) {
                    let shared = slot.shared.clone();
                    self.deliver(shared, payload, fin);
                }
                self.forget_if_closed(stream_id);
            }
            Event::StreamReset { stream_id, status } => {
                if let Some(slot) = self.slots.remove(&stream_id) {
                    slot.shared.finish(StreamEnd::Reset(status));
                    if let Some(opener) = slot.opener {
                        let _ = opener.send(Err(OpenError::Reset(status)));
                    }
                }
            }
            Event::PingAcked { id } => {
                if let Some((sent, tx)) = self.pings.remove(&id) {
                    let _ = tx.send(sent.elapsed());
                }
            }
            Event::GoAway { .. } => return Some(Exit::Graceful(CloseReason::GoAway, None)),
        }
        None
    }

    fn on_stream_opened(&mut self, stream_id: u32, headers: HeaderBlock) {
        let link = self.link();
        let room = self.slots.len() < self.cfg.max_incoming_streams;
        match (&self.incoming, link) {
            (Some(incoming), Some(link)) if room && !incoming.is_closed() => {
                let shared = Shared::new(self.cfg.stream_buffer);
                self.slots.insert(
                    stream_id,
                    Slot {
                        shared: shared.clone(),
                        opener: None,
                    },
                );
                let _ = incoming.send(IncomingStream {
                    id: stream_id,
                    headers,
                    shared,
                    link,
                    ctl: self.ctl.clone(),
                });
            }
            _ => self.reset(stream_id, RstStatus::REFUSED_STREAM),
        }
    }

    fn deliver(&mut self, shared: Arc<Shared>, payload: Bytes, fin: bool) {
        match shared.offer(payload) {
            Ok(()) => {
                if fin {
                    shared.finish(StreamEnd::Fin);
                }
            }
            Err(payload) => {
                self.pending = Some(Pending {
                    shared,
                    payload,
                    fin,
                })
            }
        }
    }

    fn retry_pending(&mut self) -> Option<Exit> {
        let Pending {
            shared,
            payload,
            fin,
        } = self.pending.take()?;
        self.deliver(shared, payload, fin);
        if self.pending.is_none() {
            // Frames that were waiting behind the full stream.
            return self.process();
        }
        None
    }

    fn on_cmd(&mut self, cmd: Cmd) -> Option<Exit> {
        match cmd {
            Cmd::Open { headers, reply } => match self.session.open(headers) {
                Ok((stream_id, frame)) => {
                    self.send_ctl(frame);
                    self.slots.insert(
                        stream_id,
                        Slot {
                            shared: Shared::new(self.cfg.stream_buffer),
                            opener: Some(reply),
                        },
                    );
                }
                Err(_) => {
                    let _ = reply.send(Err(OpenError::Closed));
                }
            },
            Cmd::LocalFin(stream_id) => {
                let _ = self.session.sent_data(stream_id, true);
                self.forget_if_closed(stream_id);
            }
            Cmd::Reset(stream_id, status) => self.reset(stream_id, status),
            Cmd::Ping(reply) => {
                let frame = self.session.ping();
                if let Frame::Ping { id } = frame {
                    self.pings.insert(id, (Instant::now(), reply));
                }
                self.send_ctl(frame);
            }
            Cmd::Close(notify) => return Some(Exit::Graceful(CloseReason::Local, Some(notify))),
            Cmd::Abort => return Some(Exit::Now(CloseReason::Aborted)),
        }
        None
    }

    fn reset(&mut self, stream_id: u32, status: RstStatus) {
        if let Some(frame) = self.session.reset(stream_id, status) {
            self.send_ctl(frame);
        }
        if let Some(slot) = self.slots.remove(&stream_id) {
            slot.shared.finish(StreamEnd::Reset(status));
            if let Some(opener) = slot.opener {
                let _ = opener.send(Err(OpenError::Reset(status)));
            }
            // Data held back for a stream that no longer exists has nowhere to go; the run
            // loop resumes decoding what waited behind it.
            if self
                .pending
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(&p.shared, &slot.shared))
            {
                self.pending = None;
            }
        }
    }

    /// Drops the slot of a stream both sides have finished. Its reader already holds its end
    /// (set when the FIN was delivered, or when held-back data is).
    fn forget_if_closed(&mut self, stream_id: u32) {
        if !self.session.is_open(stream_id) {
            self.slots.remove(&stream_id);
        }
    }

    fn link(&self) -> Option<WriterLink> {
        Some(WriterLink {
            data: self.data.clone(),
            cmd: self.cmd.upgrade()?,
            max_chunk: self.cfg.max_chunk,
        })
    }

    fn send_ctl(&mut self, frame: Frame) {
        self.last_activity = Instant::now();
        let _ = self.ctl.send(Ctl::Frame(frame));
    }

    fn flush_outbox(&mut self) {
        while let Some(frame) = self.session.poll_transmit() {
            self.send_ctl(frame);
        }
    }
}

async fn read_some<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    read_size: usize,
    wanted: usize,
) -> std::io::Result<usize> {
    let want = read_size.max(wanted.saturating_sub(buf.len()));
    buf.reserve(want);
    rd.read_buf(buf).await
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
