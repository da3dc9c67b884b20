//! Mode A: a `v5.channel.k8s.io` WebSocket client ⇄ a remote-command SPDY session with the
//! runtime (protocol.md §5, §13.3).
//!
//! ```text
//!  client ──ws──▶ reader ──stdin queue (bounded)──▶ stdin pump ──DATA──▶ runtime
//!                   │ resize ──canonical JSON──────────────────────DATA──▶
//!                   │ pings
//!  client ◀──ws── session ◀── stdout/stderr stream readers ◀──DATA── runtime
//!                   ▲ status (channel 3), Close 1000 ◀── error stream decoded at the end
//! ```
//!
//! The reader never waits on the runtime while the stdin queue has room, so pings are answered
//! while stdin is back-pressured. Output takes no detour: the session task reads the runtime's
//! stream queues itself and writes each message as one vectored write of header, channel byte
//! and the runtime's bytes as they arrived. The session ends in the order all output → status
//! → Close 1000 → TCP close.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, WriteHalf};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::channel::frame::{self, Inbound};
use crate::channel::outcome::{Outcome, Protocol, client_status, status_message};
use crate::channel::resize::ResizeDecoder;
use crate::connection::{StreamEnd, StreamReader, StreamWriter};
use crate::metrics::{self, ByteCounter, CloseSignal, CloseSignals, Direction, SessionGuard};
use crate::status::{STATUS_SUCCESS, Status};
use crate::upstream::remotecommand::{DEFAULT_ERROR_STREAM_CAP, RemoteCommand, StreamOptions};
use crate::websocket::{self, CloseFrame, Event, Limits, Opcode, close_code};

/// How a translated session behaves. Defaults mirror the API server's translator.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// End the session after this long without a data message either way. Default 4 h.
    pub idle_timeout: Duration,
    /// Deadline for writing the final status. Default 10 s.
    pub status_write_timeout: Duration,
    /// After the client vanished: how long the runtime may take to finish on its own before
    /// the upstream connection is torn down. Default 10 s.
    pub client_gone_grace: Duration,
    /// Client stdin bytes buffered while the runtime is slow to take them. Default 1 MiB.
    pub stdin_buffer: usize,
    /// Largest payload of one outbound message. Default 32 KiB.
    pub max_outbound_payload: usize,
    /// API-server compatibility: an upstream that dies without a status (or a v4 error stream
    /// that ends empty) is reported as Success, as the API server does (§5.7). Default false:
    /// we report an InternalError.
    pub compat_upstream_loss_is_success: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout: Duration::from_secs(4 * 60 * 60),
            status_write_timeout: Duration::from_secs(10),
            client_gone_grace: Duration::from_secs(10),
            stdin_buffer: 1024 * 1024,
            max_outbound_payload: frame::MAX_OUTBOUND_PAYLOAD,
            compat_upstream_loss_is_success: false,
        }
    }
}

/// How a session ended, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The status was delivered; `exit_code` when the process exited non-zero.
    Completed {
        status: Box<Status>,
        exit_code: Option<u8>,
    },
    /// The client went away before the status.
    ClientGone,
    /// The client broke the protocol (malformed CLOSE); torn down without a status (§4.6).
    ClientProtocolError,
    /// No data either way for the idle timeout.
    Idle,
    /// The bridge drained and the deadline came first: Close 1001 sent, upstream torn down.
    Drained,
}

impl SessionEnd {
    /// The metric outcome: a delivered Success is `success`, an exit code `exit_nonzero`, any
    /// other delivered status (the runtime's failure, a runtime that could not be reached in
    /// the API-server order, or one that vanished) `upstream_error`; an idle session counts as
    /// `client_gone` (the client stopped using it).
    pub fn outcome(&self) -> metrics::Outcome {
        match self {
            SessionEnd::Completed {
                exit_code: Some(_), ..
            } => metrics::Outcome::ExitNonzero,
            SessionEnd::Completed { status, .. } if status.status == STATUS_SUCCESS => {
                metrics::Outcome::Success
            }
            SessionEnd::Completed { .. } => metrics::Outcome::UpstreamError,
            SessionEnd::ClientGone | SessionEnd::Idle => metrics::Outcome::ClientGone,
            SessionEnd::ClientProtocolError => metrics::Outcome::ClientError,
            // Ended by the bridge (its shutdown), not by the command, the client or the runtime.
            SessionEnd::Drained => metrics::Outcome::InternalError,
        }
    }

    /// The remote command's exit code when it exited non-zero.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            SessionEnd::Completed { exit_code, .. } => exit_code.map(i32::from),
            _ => None,
        }
    }
}

/// A session's counters, resolved once when it starts (no label lookups per message).
#[derive(Clone, Debug, Default)]
struct Meters {
    stdin: ByteCounter,
    stdout: ByteCounter,
    stderr: ByteCounter,
    error: ByteCounter,
    resize: ByteCounter,
    close: CloseSignals,
}

impl Meters {
    fn new(guard: &SessionGuard, opts: StreamOptions) -> Meters {
        use metrics::Channel;
        let (to_runtime, to_client) = (Direction::ClientToRuntime, Direction::RuntimeToClient);
        let when = |on: bool, c, d| {
            if on {
                guard.bytes(c, d)
            } else {
                ByteCounter::default()
            }
        };
        Meters {
            stdin: when(opts.stdin, Channel::Stdin, to_runtime),
            stdout: when(opts.stdout, Channel::Stdout, to_client),
            stderr: when(opts.stderr && !opts.tty, Channel::Stderr, to_client),
            error: guard.bytes(Channel::Error, to_client),
            resize: when(opts.tty, Channel::Resize, to_runtime),
            close: guard.close_signals(),
        }
    }

    /// Counts a message written to the client: its payload, on the channel its first byte
    /// names.
    fn sent(&self, message_head: Option<u8>, message_len: usize) {
        let counter = match message_head {
            Some(frame::STDOUT) => &self.stdout,
            Some(frame::STDERR) => &self.stderr,
            Some(frame::ERROR) => &self.error,
            _ => return,
        };
        counter.add(message_len.saturating_sub(1) as u64);
    }
}

/// What the reader tells the session.
enum ReaderEnd {
    /// The connection ended or failed.
    Gone,
    /// The client sent a Close frame; it waits for ours (RFC 6455 §5.5.1).
    Closed(Option<CloseFrame>),
    /// The client broke the channel protocol (a malformed CLOSE, §4.6).
    ProtocolError,
    /// The client broke the WebSocket protocol; the Close code that says how.
    Broken(u16),
}

/// The client connection's writing half.
type ClientWriter<S> = websocket::Writer<WriteHalf<S>>;

/// Runs a session on the upgraded client connection `client`, whose WebSocket frames are held
/// to `limits`. `upstream` yields the runtime session: already established in the default
/// order (a ready future), or dialled now in the API-server order, where the 101 came first and
/// a failure becomes `Err(status)` on channel 3.
///
/// The initial message goes out and the client reader starts before the dial (§5.2, §13.3):
/// the client learns at once that the connection is live, its pings are answered and its
/// stdin is queued (C-20) while the runtime is slow to answer.
///
/// Bytes and CLOSE signals are counted into `meter`'s session; the caller records the
/// outcome ([`SessionEnd::outcome`]) on it.
///
/// `going_away` is the bridge's drain deadline: once cancelled, a session that has not
/// finished sends a Failure status (ServiceUnavailable) and WebSocket Close 1001, tears its
/// upstream down and ends as [`SessionEnd::Drained`].
pub async fn run<S, U>(
    client: S,
    limits: Limits,
    upstream: U,
    opts: StreamOptions,
    cfg: &SessionConfig,
    meter: &SessionGuard,
    going_away: &CancellationToken,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    U: Future<Output = Result<RemoteCommand, Status>>,
{
    let (client_rd, mut ws) = websocket::server(client, Bytes::new(), limits);
    let activity = Arc::new(Activity::new());
    let meters = Meters::new(meter, opts);
    let initial = frame::initial_message(opts.stdout, opts.stderr && !opts.tty);
    if ws.send_binary(initial).await.is_err() {
        // An established upstream closes itself once its handle and streams are dropped.
        return SessionEnd::ClientGone;
    }

    // Client → runtime: the queues exist before the runtime's streams do.
    let stdin_budget = Arc::new(Semaphore::new(cfg.stdin_buffer.max(1)));
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel::<(Bytes, u32)>();
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(8);
    // The reader hands pings over for the writer to answer; when pongs pile up, only a few
    // are worth sending.
    let (pong_tx, mut pongs) = mpsc::channel::<Bytes>(4);
    let mut reader = spawn(read_client(
        client_rd,
        ReaderCtx {
            stdin: opts.stdin.then_some(stdin_tx),
            stdin_budget: stdin_budget.clone(),
            stdin_cap: cfg.stdin_buffer.max(1),
            resize: opts.tty.then_some(resize_tx),
            tty: opts.tty,
            activity: activity.clone(),
            meters: meters.clone(),
            pongs: pong_tx,
        },
    ));

    // Made once: the output loop below must not re-register a waiter per message.
    let going_away = going_away.cancelled();
    tokio::pin!(going_away);
    let dialled = {
        tokio::pin!(upstream);
        loop {
            tokio::select! {
                u = &mut upstream => break Ok(u),
                r = &mut reader => break Err(r.unwrap_or(ReaderEnd::Gone)),
                Some(ping) = pongs.recv() => {
                    // A failed write shows up as the reader's end soon after.
                    let _ = ws.send_pong(ping).await;
                }
                // The dial is dropped with `upstream`, which closes whatever it had opened.
                () = &mut going_away => {
                    reader.abort();
                    Box::pin(say_going_away(&mut ws, cfg, &meters)).await;
                    return SessionEnd::Drained;
                }
            }
        }
    };
    let mut rc = match dialled {
        Ok(Ok(rc)) => rc,
        Ok(Err(status)) => {
            reader.abort();
            let end = Box::pin(finish(&mut ws, Some(status.clone()), cfg, &meters)).await;
            return end.unwrap_or(SessionEnd::Completed {
                exit_code: None,
                status: Box::new(status),
            });
        }
        // The client left (or broke the protocol) while the runtime was being dialled; the
        // dial is dropped with this future, which closes whatever it had opened.
        Err(why) => {
            Box::pin(say_goodbye(&mut ws, &why, cfg, &meters)).await;
            return why.session_end();
        }
    };

    let stdin_pump = rc
        .stdin
        .take()
        .map(|w| spawn(pump_stdin(w, stdin_rx, stdin_budget, meters.stdin.clone())));
    // Without a resize stream (no tty, or v1/v2) the receiver is dropped, and the reader stops
    // decoding resizes at the first one.
    let _resize_pump = rc.resize.take().map(|mut w| {
        let mut rx = resize_rx;
        spawn(async move {
            while let Some(json) = rx.recv().await {
                if w.send(json).await.is_err() {
                    return;
                }
            }
        })
    });

    // Runtime → client, read here: no task or queue between the runtime's streams and the
    // client's socket.
    let mut output = Output::new(
        [
            (rc.stdout.take(), frame::STDOUT),
            (rc.stderr.take(), frame::STDERR),
        ],
        cfg.max_outbound_payload,
    );

    let protocol = rc.protocol;
    let mut outcome_fut = Box::pin(async move {
        let bytes = rc.read_error_stream(DEFAULT_ERROR_STREAM_CAP).await;
        let outcome = Outcome::decode(protocol, &bytes);
        let end = UpstreamEnd {
            error_stream: rc.error.end(),
            empty: bytes.is_empty(),
        };
        (outcome, end, rc)
    });
    let mut idle_check = tokio::time::interval(idle_period(cfg.idle_timeout));
    let mut outcome: Option<(Outcome, UpstreamEnd, RemoteCommand)> = None;
    let mut output_done = false;
    let mut client_gone: Option<ReaderEnd> = None;

    // Forward output until every output stream and the error stream have ended.
    loop {
        if output_done && outcome.is_some() {
            break;
        }
        tokio::select! {
            msg = poll_fn(|cx| output.poll_message(cx)), if !output_done => match msg {
                Some((channel, len)) => {
                    activity.touch();
                    ws.start_parts(Opcode::Binary, Some(channel), &mut output.parts);
                    if poll_fn(|cx| ws.poll_write_frame(cx)).await.is_err() {
                        client_gone = Some(ReaderEnd::Gone);
                        break;
                    }
                    meters.sent(Some(channel), len + 1);
                }
                None => output_done = true,
            },
            Some(ping) = pongs.recv() => {
                if ws.send_pong(ping).await.is_err() {
                    client_gone = Some(ReaderEnd::Gone);
                    break;
                }
            }
            o = &mut outcome_fut, if outcome.is_none() => outcome = Some(o),
            r = &mut reader => {
                client_gone = Some(r.unwrap_or(ReaderEnd::Gone));
                break;
            }
            _ = idle_check.tick() => {
                if activity.idle_for() >= cfg.idle_timeout {
                    let _ = Box::pin(finish(&mut ws, None, cfg, &meters)).await;
                    reader.abort();
                    Box::pin(teardown(outcome, outcome_fut, stdin_pump)).await;
                    return SessionEnd::Idle;
                }
            }
            () = &mut going_away => {
                reader.abort();
                Box::pin(say_going_away(&mut ws, cfg, &meters)).await;
                Box::pin(teardown(outcome, outcome_fut, stdin_pump)).await;
                return SessionEnd::Drained;
            }
        }
    }

    if let Some(why) = client_gone {
        // The client is gone (or broke the protocol): end stdin upstream, let the runtime
        // finish on its own for a bounded time, then tear the upstream down. The output
        // streams' readers are dropped, so the runtime's data is discarded, never left to
        // wedge the SPDY connection.
        drop(output);
        Box::pin(say_goodbye(&mut ws, &why, cfg, &meters)).await;
        reader.abort();
        // One grace period for all of it: a runtime that does not take stdin must not
        // double the wait.
        let deadline = Instant::now() + cfg.client_gone_grace;
        if let Some(p) = stdin_pump {
            // The reader's end dropped the stdin queue: the pump sends FIN after what it has.
            let _ = tokio::time::timeout_at(deadline, p).await;
        }
        let rc = match outcome {
            Some((_, _, rc)) => Some(rc),
            None => tokio::time::timeout_at(deadline, &mut outcome_fut)
                .await
                .ok()
                .map(|(_, _, rc)| rc),
        };
        match rc {
            Some(rc) => Box::pin(rc.close()).await,
            None => drop(outcome_fut),
        }
        return why.session_end();
    }

    let (outcome, error_end, rc) = outcome.expect("loop ends with the outcome");
    let lost = error_end.lost(protocol);
    let status = if lost && !cfg.compat_upstream_loss_is_success {
        Status::internal_error(
            "error reading from error stream: the connection to the runtime was lost",
        )
    } else {
        client_status(&outcome, protocol)
    };
    let exit_code = status.exit_code();
    let end = Box::pin(finish(&mut ws, Some(status.clone()), cfg, &meters)).await;
    reader.abort();
    if let Some(p) = stdin_pump {
        p.abort();
    }
    Box::pin(rc.close()).await;
    end.unwrap_or(SessionEnd::Completed {
        status: Box::new(status),
        exit_code,
    })
}

impl ReaderEnd {
    fn session_end(&self) -> SessionEnd {
        match self {
            ReaderEnd::Gone | ReaderEnd::Closed(_) => SessionEnd::ClientGone,
            ReaderEnd::ProtocolError | ReaderEnd::Broken(_) => SessionEnd::ClientProtocolError,
        }
    }
}

/// The last words to a client that is leaving or broke a protocol.
async fn say_goodbye<W>(
    ws: &mut ClientWriter<W>,
    why: &ReaderEnd,
    cfg: &SessionConfig,
    meters: &Meters,
) where
    W: AsyncRead + AsyncWrite,
{
    match why {
        ReaderEnd::Gone => {}
        // Echo the client's code, as RFC 6455 §5.5.1 suggests.
        ReaderEnd::Closed(frame) => {
            let reply = frame.as_ref().map(|f| CloseFrame {
                code: f.code,
                reason: String::new(),
            });
            let _ =
                tokio::time::timeout(cfg.status_write_timeout, ws.send_close(reply.as_ref())).await;
        }
        ReaderEnd::ProtocolError => {
            let _ = finish(ws, None, cfg, meters).await;
        }
        ReaderEnd::Broken(code) => {
            let frame = CloseFrame {
                code: *code,
                reason: String::new(),
            };
            let _ =
                tokio::time::timeout(cfg.status_write_timeout, ws.send_close(Some(&frame))).await;
        }
    }
}

/// How the runtime ended the error stream.
struct UpstreamEnd {
    error_stream: Option<StreamEnd>,
    empty: bool,
}

impl UpstreamEnd {
    /// Whether the runtime vanished instead of ending the session: a kubelet-lib runtime
    /// always resets or FINs its streams and says GOAWAY, and from v4 on it always writes a
    /// status, success included. The API server reports both cases as Success (§5.7).
    fn lost(&self, protocol: Protocol) -> bool {
        let orderly = matches!(
            self.error_stream,
            Some(StreamEnd::Fin | StreamEnd::Reset(_) | StreamEnd::GoAway)
        );
        !orderly || (protocol == Protocol::V4 && self.empty)
    }
}

/// Writes the status (if any), then Close 1000 with an empty reason, within the status write
/// deadline. `Some(ClientGone)` when the client could not be written to.
async fn finish<W>(
    ws: &mut ClientWriter<W>,
    status: Option<Status>,
    cfg: &SessionConfig,
    meters: &Meters,
) -> Option<SessionEnd>
where
    W: AsyncRead + AsyncWrite,
{
    let write = async {
        if let Some(status) = status {
            let message = status_message(&status);
            let (head, len) = (message.first().copied(), message.len());
            ws.send_binary(message).await.ok()?;
            meters.sent(head, len);
        }
        let close = CloseFrame {
            code: close_code::NORMAL,
            reason: String::new(),
        };
        ws.send_close(Some(&close)).await.ok()?;
        // x/net/websocket closes TCP right after its Close frame without waiting for the
        // reply; the caller drops the connection next.
        Some(())
    };
    match tokio::time::timeout(cfg.status_write_timeout, write).await {
        Ok(Some(())) => None,
        _ => Some(SessionEnd::ClientGone),
    }
}

/// The bridge is shutting down: a Failure status, then Close 1001 (going away). The status
/// matters: client-go reads a connection that closes without one as the command's success.
async fn say_going_away<W>(ws: &mut ClientWriter<W>, cfg: &SessionConfig, meters: &Meters)
where
    W: AsyncRead + AsyncWrite,
{
    const WHY: &str = "the streaming bridge is shutting down; the command was cut off";
    let status = Status {
        status: crate::status::STATUS_FAILURE.into(),
        message: WHY.into(),
        reason: "ServiceUnavailable".into(),
        code: 503,
        ..Status::default()
    };
    let write = async {
        let message = status_message(&status);
        let (head, len) = (message.first().copied(), message.len());
        ws.send_binary(message).await.ok()?;
        meters.sent(head, len);
        let close = CloseFrame {
            code: close_code::GOING_AWAY,
            reason: "shutting down".into(),
        };
        ws.send_close(Some(&close)).await.ok()
    };
    let _ = tokio::time::timeout(cfg.status_write_timeout, write).await;
}

async fn teardown<F>(
    outcome: Option<(Outcome, UpstreamEnd, RemoteCommand)>,
    fut: F,
    stdin_pump: Option<Task<()>>,
) where
    F: std::future::Future<Output = (Outcome, UpstreamEnd, RemoteCommand)>,
{
    if let Some(p) = stdin_pump {
        p.abort();
    }
    match outcome {
        Some((_, _, rc)) => Box::pin(rc.close()).await,
        None => drop(fut),
    }
}

struct ReaderCtx {
    stdin: Option<mpsc::UnboundedSender<(Bytes, u32)>>,
    /// Permits are stdin bytes queued but not yet taken by the runtime.
    stdin_budget: Arc<Semaphore>,
    stdin_cap: usize,
    resize: Option<mpsc::Sender<Bytes>>,
    tty: bool,
    activity: Arc<Activity>,
    meters: Meters,
    /// Pings for the session to answer.
    pongs: mpsc::Sender<Bytes>,
}

/// Reads the client: stdin into the bounded queue, resizes re-encoded, CLOSE signals, pings
/// handed to the session to answer. Returns why it stopped.
async fn read_client<R>(mut client: websocket::Reader<R>, mut ctx: ReaderCtx) -> ReaderEnd
where
    R: AsyncRead + Unpin,
{
    let mut resize = ResizeDecoder::new();
    let mut resize_open = ctx.tty && ctx.resize.is_some();
    while let Some(event) = client.next().await {
        let data = match event {
            // v5 servers accept text frames exactly like binary ones (C-28).
            Ok(Event::Message { payload, .. }) => payload,
            Ok(Event::Ping(ping)) => {
                // A full queue already holds answers; the client needs only some.
                let _ = ctx.pongs.try_send(ping);
                continue;
            }
            Ok(Event::Pong(_)) => continue,
            Ok(Event::Close(frame)) => return ReaderEnd::Closed(frame),
            Err(websocket::ReadError::Protocol(e)) => {
                tracing::debug!(error = %e, "client broke the WebSocket protocol");
                return ReaderEnd::Broken(e.close_code());
            }
            Err(_) => return ReaderEnd::Gone,
        };
        match frame::decode_inbound(data) {
            Inbound::Stdin(bytes) => {
                ctx.activity.touch();
                // A bare `00` carries nothing; the API server sends nothing upstream for it.
                if bytes.is_empty() {
                    continue;
                }
                let Some(tx) = &ctx.stdin else { continue };
                // A message larger than the whole budget takes all of it and goes alone.
                let n = bytes.len().min(ctx.stdin_cap).min(u32::MAX as usize) as u32;
                // Waits only when the runtime is already `stdin_buffer` bytes behind.
                match ctx.stdin_budget.acquire_many(n).await {
                    Ok(permit) => permit.forget(),
                    Err(_) => continue,
                }
                if tx.send((bytes, n)).is_err() {
                    ctx.stdin = None;
                }
            }
            Inbound::CloseStdin => {
                ctx.meters.close.record(CloseSignal::Stdin);
                ctx.stdin = None;
            }
            Inbound::Resize(bytes) => {
                ctx.activity.touch();
                if !resize_open {
                    continue;
                }
                ctx.meters.resize.add(bytes.len() as u64);
                match resize.push(&bytes) {
                    Ok(sizes) => {
                        for size in sizes {
                            // Never wait on the runtime here (§4.7): a terminal size is state,
                            // so when the runtime is this far behind, a newer one will follow.
                            let json = Bytes::from(size.to_canonical_json());
                            if let Some(tx) = &ctx.resize
                                && let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(json)
                            {
                                resize_open = false;
                            }
                        }
                    }
                    // Like the kubelet: the first bad object ends resize handling (C-42).
                    Err(_) => resize_open = false,
                }
            }
            Inbound::CloseResize => {
                ctx.meters.close.record(CloseSignal::Resize);
                resize_open = false;
            }
            Inbound::MalformedClose { .. } | Inbound::CloseInvalidChannel(_) => {
                ctx.meters.close.record(CloseSignal::Invalid);
                return ReaderEnd::ProtocolError;
            }
            Inbound::CloseOther(channel) => {
                ctx.meters.close.record(CloseSignal::for_channel(channel));
            }
            Inbound::Ignored(_) | Inbound::Empty => {}
        }
    }
    ReaderEnd::Gone
}

/// Copies queued stdin to the runtime; FIN when the queue closes (CLOSE, or client gone).
async fn pump_stdin(
    mut writer: StreamWriter,
    mut rx: mpsc::UnboundedReceiver<(Bytes, u32)>,
    budget: Arc<Semaphore>,
    counted: ByteCounter,
) {
    while let Some((bytes, n)) = rx.recv().await {
        let len = bytes.len() as u64;
        let ok = writer.send(bytes).await.is_ok();
        budget.add_permits(n as usize);
        if !ok {
            return;
        }
        counted.add(len);
    }
    let _ = writer.finish().await;
}

/// The runtime's output streams, read by the session itself. A message is what one stream
/// has ready, up to the payload cap: pieces that arrived separately (SPDY frames, socket
/// reads) go out together as one message without being copied, and the streams take turns.
struct Output {
    sources: Vec<(StreamReader, u8)>,
    /// The next source to ask first.
    next: usize,
    max_payload: usize,
    /// The pieces of the message [`poll_message`](Self::poll_message) made ready.
    parts: Vec<Bytes>,
    /// What did not fit in the last message: its source and bytes.
    carry: Option<(usize, Bytes)>,
}

impl Output {
    fn new(streams: [(Option<StreamReader>, u8); 2], max_payload: usize) -> Self {
        Output {
            sources: streams
                .into_iter()
                .filter_map(|(r, ch)| r.map(|r| (r, ch)))
                .collect(),
            next: 0,
            max_payload: max_payload.max(1),
            parts: Vec::new(),
            carry: None,
        }
    }

    /// The channel and payload length of the next message, whose pieces are left in
    /// `parts`; `None` once every stream has ended.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<(u8, usize)>> {
        let (source, first) = match self.carry.take() {
            Some(c) => c,
            None => match self.poll_any(cx) {
                Poll::Ready(Some(c)) => c,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        self.next = (source + 1) % self.sources.len().max(1);
        let mut len = 0;
        let mut piece = first;
        loop {
            let room = self.max_payload - len;
            if piece.len() > room {
                self.carry = Some((source, piece.split_off(room)));
            }
            len += piece.len();
            self.parts.push(piece);
            if self.carry.is_some() || len == self.max_payload {
                break;
            }
            // More may already be queued behind it; a pending poll leaves a waker behind,
            // which is harmless.
            match self.sources[source].0.poll_recv(cx) {
                Poll::Ready(Some(p)) => piece = p,
                _ => break,
            }
        }
        Poll::Ready(Some((self.sources[source].1, len)))
    }

    /// The first piece any stream has ready, asking them in turn from `next`.
    fn poll_any(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, Bytes)>> {
        let n = self.sources.len();
        let mut open = false;
        for k in 0..n {
            let i = (self.next + k) % n;
            match self.sources[i].0.poll_recv(cx) {
                Poll::Ready(Some(piece)) => return Poll::Ready(Some((i, piece))),
                Poll::Ready(None) => {}
                Poll::Pending => open = true,
            }
        }
        if open {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }
}

/// Time of the last data message either way, for the idle limit. Pings do not count, as in
/// the API server.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

fn idle_period(idle: Duration) -> Duration {
    (idle / 8).clamp(Duration::from_millis(10), Duration::from_secs(60))
}

/// A task spawned for one session, aborted when dropped: when the session's own task is
/// aborted (bridge shutdown), its reader, pumps and their streams go with it instead of
/// outliving it.
struct Task<T>(JoinHandle<T>);

fn spawn<F>(fut: F) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Task(tokio::spawn(fut))
}

impl<T> Task<T> {
    fn abort(&self) {
        self.0.abort();
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
