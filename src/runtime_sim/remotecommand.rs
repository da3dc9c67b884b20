//! Exec and attach sessions over SPDY, as the kubelet streaming library runs them
//! (protocol.md §3.4–§3.7).
//!
//! 1. Accept the client's streams by their `streamtype` until the set implied by the *CRI
//!    request* is complete, or give up silently after the stream-creation timeout.
//! 2. v1 quirks: half-close our side of stdin, reset the error stream.
//! 3. Run the process (exec) or connect to the container (attach): stdin stream → process
//!    stdin, process stdout/stderr → their streams (FIN at the end of output), resize stream →
//!    terminal size.
//! 4. Write the status on the error stream (v4: JSON always; v2/v3: text on failure), then
//!    close the connection: RST CANCEL on every stream we have not FINed, GOAWAY, TCP close.

use std::future::pending;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::container::Attachment;
use super::process::{self, Input, Output, SpawnSpec};
use super::pty::PtyMaster;
use super::{AttachRequest, ExecRequest, Shared};
use crate::channel::resize::ResizeDecoder;
use crate::connection::{
    self, ConnectionConfig, Handle, Incoming, Stream, StreamReader, StreamWriter,
};
use crate::spdy::{HeaderBlock, RstStatus};
use crate::status::{STATUS_SUCCESS, Status};

/// Remote command protocol versions the library serves over SPDY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    V1,
    V2,
    V3,
    V4,
}

impl Version {
    fn from_protocol(p: &str) -> Version {
        match p {
            "v4.channel.k8s.io" => Version::V4,
            "v3.channel.k8s.io" => Version::V3,
            "v2.channel.k8s.io" => Version::V2,
            _ => Version::V1,
        }
    }

    fn supports_resize(self) -> bool {
        self >= Version::V3
    }
}

/// Which streams the CRI request asked for.
#[derive(Clone, Copy, Debug)]
struct Opts {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl Opts {
    fn expected_streams(self, version: Version) -> usize {
        1 + usize::from(self.stdin)
            + usize::from(self.stdout)
            + usize::from(self.stderr)
            + usize::from(self.tty && version.supports_resize())
    }
}

/// The client's streams by type. Streams of unknown types, and earlier streams of a type
/// that came twice, are held open in `ignored` and never used (as in the library, where they
/// are simply not referenced any more).
#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
    ignored: Vec<Stream>,
}

/// Aborts the connection when the session ends by any path (task aborted at shutdown
/// included); after a graceful close it does nothing.
pub(crate) struct ConnGuard(pub(crate) Handle);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection whose expected streams have all been accepted.
struct Session {
    handle: Handle,
    _guard: ConnGuard,
    /// Kept, never polled again: later SYN_STREAMs get no reply, as in the library.
    _incoming: Incoming,
    version: Version,
    streams: Streams,
}

pub(crate) fn server_config(shared: &Shared) -> ConnectionConfig {
    let cfg = shared.config();
    ConnectionConfig {
        idle_timeout: Some(cfg.idle_timeout),
        max_chunk: cfg.max_chunk,
        ..ConnectionConfig::server()
    }
}

/// The first value of a stream header, matched case-insensitively as Go's `Header.Get` does
/// on spdystream's header map; an empty value counts as absent.
pub(crate) fn stream_header<'h>(headers: &'h HeaderBlock, name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split(|b| *b == 0).next().unwrap_or_default())
        .filter(|v| !v.is_empty())
}

async fn setup<IO>(
    shared: &Shared,
    io: IO,
    leftover: Bytes,
    protocol: &str,
    opts: Opts,
) -> Option<Session>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let version = Version::from_protocol(protocol);
    let (handle, mut incoming) = connection::spawn(io, leftover, server_config(shared));
    let guard = ConnGuard(handle.clone());
    let expected = opts.expected_streams(version);
    let deadline = Instant::now() + shared.config().stream_creation_timeout;
    let mut streams = Streams::default();
    let mut received = 0;
    while received < expected {
        let next = tokio::select! {
            next = incoming.accept() => next,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!("timed out waiting for client to create streams");
                // Abandon the request: no status, no reset, no GOAWAY; the connection stays
                // until the client closes it or the idle timeout fires.
                let closed = handle.closed().await;
                tracing::debug!(?closed, "abandoned remote command connection ended");
                drop((streams, incoming, guard));
                return None;
            }
        };
        // The connection ended before the streams were complete.
        let incoming_stream = next?;
        let stream_type =
            stream_header(incoming_stream.headers(), "streamtype").map(<[u8]>::to_vec);
        let stream = incoming_stream.accept();
        let slot = match stream_type.as_deref() {
            Some(b"error") => &mut streams.error,
            Some(b"stdin") => &mut streams.stdin,
            Some(b"stdout") => &mut streams.stdout,
            Some(b"stderr") => &mut streams.stderr,
            Some(b"resize") if version.supports_resize() => &mut streams.resize,
            other => {
                tracing::warn!(
                    stream_type = %String::from_utf8_lossy(other.unwrap_or_default()),
                    "unexpected stream type"
                );
                streams.ignored.push(stream);
                continue;
            }
        };
        if let Some(earlier) = slot.replace(stream) {
            streams.ignored.push(earlier);
        }
        received += 1;
    }

    if version == Version::V1 {
        // v1: our side of stdin is closed at once and the error stream reset after setup,
        // so v1 clients never see an error.
        if let Some(stdin) = streams.stdin.as_mut() {
            let _ = stdin.writer.finish().await;
        }
        if let Some(mut error) = streams.error.take() {
            error.writer.reset(RstStatus::CANCEL);
            streams.ignored.push(error);
        }
    }
    Some(Session {
        handle,
        _guard: guard,
        _incoming: incoming,
        version,
        streams,
    })
}

impl Session {
    /// Writes the outcome on the error stream and closes the connection.
    async fn finish(mut self, status: Status) {
        let text = match self.version {
            Version::V4 => Some(status.to_json()),
            _ if status.status == STATUS_SUCCESS => None,
            _ => Some(status.message.clone()),
        };
        if let (Some(text), Some(error)) = (text, self.streams.error.as_mut())
            && let Err(e) = error.writer.send(Bytes::from(text)).await
        {
            tracing::debug!(error = %e, "could not write the remote command status");
        }
        self.handle.close().await;
    }
}

/// Serves `/exec/{token}` after the 101.
pub(crate) async fn serve_exec<IO>(
    shared: Arc<Shared>,
    io: IO,
    leftover: Bytes,
    protocol: &'static str,
    req: ExecRequest,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let opts = Opts {
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
        tty: req.tty,
    };
    let Some(mut session) = setup(&shared, io, leftover, protocol, opts).await else {
        return;
    };
    let spawned = match process::spawn(&SpawnSpec {
        argv: req.cmd.clone(),
        tty: req.tty,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    }) {
        Ok(p) => p,
        Err(e) => {
            let err =
                format!("error executing command in container: failed to exec in container: {e}");
            tracing::warn!(error = %err, "exec failed");
            session.finish(Status::internal_error(err)).await;
            return;
        }
    };
    let process::Spawned {
        mut child,
        killer,
        stdin,
        stdout,
        stderr,
        terminal,
    } = spawned;

    let max_chunk = shared.config().max_chunk;
    let handle = session.handle.clone();
    let streams = &mut session.streams;
    let (stdin_reader, _stdin_writer) = split(streams.stdin.as_mut());
    let (_out_reader, mut out_writer) = split(streams.stdout.as_mut());
    let (_err_reader, mut err_writer) = split(streams.stderr.as_mut());
    let (resize_reader, _resize_writer) = split(streams.resize.as_mut());

    // containerd, on the end of a terminal session's stdin, stops copying the terminal's
    // output (FIN stdout) but leaves the process running; without a terminal it closes the
    // process's stdin instead.
    let stdin_ended = Notify::new();
    let detach = req.tty.then_some(&stdin_ended);
    // Like the runtime: the exec is over once the process has exited and its output is
    // drained; stdin and resize handling just stop then.
    let run = async {
        let (status, (), ()) = tokio::join!(
            child.wait(),
            pump_output(Source::Reader(stdout), &mut out_writer, max_chunk, detach),
            pump_output(Source::Reader(stderr), &mut err_writer, max_chunk, None),
        );
        status
    };
    let background = async {
        tokio::join!(
            pump_stdin(stdin_reader, stdin.map(Sink::Owned), &stdin_ended),
            pump_resize(resize_reader, terminal.as_deref()),
        );
        pending::<()>().await;
    };
    let status = tokio::select! {
        status = run => status,
        () = background => unreachable!("background pumps never complete"),
        reason = handle.closed() => {
            // The client went away: kill the process (the guard) rather than let it linger.
            tracing::debug!(?reason, "exec connection closed before the process exited");
            return;
        }
    };
    drop(killer);
    let status = match status {
        Ok(status) => match process::exit_code(status) {
            0 => Status::success(),
            code => Status::non_zero_exit(
                format!(
                    "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                    req.cmd.join(" ")
                ),
                u32::try_from(code).unwrap_or(255),
            ),
        },
        Err(e) => Status::internal_error(format!(
            "error executing command in container: failed while waiting for exec: {e}"
        )),
    };
    session.finish(status).await;
}

/// Serves `/attach/{token}` after the 101.
pub(crate) async fn serve_attach<IO>(
    shared: Arc<Shared>,
    io: IO,
    leftover: Bytes,
    protocol: &'static str,
    req: AttachRequest,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let opts = Opts {
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
        tty: req.tty,
    };
    let Some(mut session) = setup(&shared, io, leftover, protocol, opts).await else {
        return;
    };
    let attachment = match shared.container(&req.container_id) {
        None => Err(format!("container {:?} not found", req.container_id)),
        Some(c) if !c.is_running() => {
            Err(format!("container {:?} is not running", req.container_id))
        }
        Some(c) => c.attach(req.stdout, req.stderr),
    };
    let mut attachment: Attachment = match attachment {
        Ok(a) => a,
        Err(e) => {
            let err = format!("error attaching to container: {e}");
            tracing::warn!(error = %err, "attach failed");
            session.finish(Status::internal_error(err)).await;
            return;
        }
    };
    let container = attachment.container().clone();
    let max_chunk = shared.config().max_chunk;
    let handle = session.handle.clone();
    let streams = &mut session.streams;
    let (stdin_reader, _stdin_writer) = split(streams.stdin.as_mut());
    let (_out_reader, mut out_writer) = split(streams.stdout.as_mut());
    let (_err_reader, mut err_writer) = split(streams.stderr.as_mut());
    let (resize_reader, _resize_writer) = split(streams.resize.as_mut());
    let stdout = attachment.stdout.take();
    let stderr = attachment.stderr.take();
    let (has_stdout, has_stderr) = (stdout.is_some(), stderr.is_some());
    let wants_output = has_stdout || has_stderr;

    // The attach ends when the container's output ends (it exited), when the client ends
    // stdin (the session detaches; the container keeps its stdin), or when the container exits.
    let outputs = async {
        if wants_output {
            tokio::join!(
                pump_output(Source::Channel(stdout), &mut out_writer, max_chunk, None),
                pump_output(Source::Channel(stderr), &mut err_writer, max_chunk, None),
            );
        } else {
            pending::<()>().await;
        }
    };
    // Only a stream that feeds the container's stdin detaches when it ends; without container
    // stdin the stream is drained and ignored.
    let stdin_ended = async {
        let ended = Notify::new();
        let sink = container.stdin().map(Sink::Shared);
        let feeds = sink.is_some() && stdin_reader.is_some();
        pump_stdin(stdin_reader, sink, &ended).await;
        if !feeds {
            pending::<()>().await;
        }
    };
    let background = async {
        pump_resize(resize_reader, container.terminal().map(|t| &**t)).await;
        pending::<()>().await;
    };
    tokio::select! {
        () = outputs => {}
        () = stdin_ended => {}
        _ = container.exited(), if !wants_output => {}
        () = background => unreachable!("resize handling never completes"),
        reason = handle.closed() => {
            tracing::debug!(?reason, "attach connection closed");
            return;
        }
    }
    drop(attachment);
    // Detaching closes the output writers that were attached, as the runtime's writer groups
    // do; an unattached one (stderr of a terminal container) is left to the teardown reset.
    let attached = [(has_stdout, out_writer), (has_stderr, err_writer)];
    for writer in attached
        .into_iter()
        .filter_map(|(has, writer)| has.then_some(writer).flatten())
    {
        let _ = writer.finish().await;
    }
    session.finish(Status::success()).await;
}

/// Borrows a stream's halves.
fn split(stream: Option<&mut Stream>) -> (Option<&mut StreamReader>, Option<&mut StreamWriter>) {
    match stream {
        Some(s) => (Some(&mut s.reader), Some(&mut s.writer)),
        None => (None, None),
    }
}

/// Where process input goes: an owned pipe or terminal, or a container's shared stdin.
enum Sink<'a> {
    Owned(Input),
    Shared(&'a tokio::sync::Mutex<Input>),
}

impl Sink<'_> {
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Owned(input) => input.write_all(data).await,
            Sink::Shared(input) => input.lock().await.write_all(data).await,
        }
    }
}

/// Copies the stdin stream into the process until the client half-closes it (or resets it,
/// or the connection ends). Dropping an owned pipe then closes the process's stdin; a terminal
/// just stops receiving input. After a write error the rest of the stream is discarded.
/// `ended` is notified at the end of a stream that fed a process.
async fn pump_stdin(reader: Option<&mut StreamReader>, mut sink: Option<Sink<'_>>, ended: &Notify) {
    let Some(reader) = reader else { return };
    let fed = sink.is_some();
    while let Some(chunk) = reader.recv().await {
        if let Some(s) = sink.as_mut()
            && let Err(e) = s.write_all(&chunk).await
        {
            tracing::debug!(error = %e, "process stdin closed");
            sink = None;
        }
    }
    drop(sink);
    if fed {
        ended.notify_one();
    }
}

/// Process output: a pipe or terminal (exec), or a container's broadcast (attach).
enum Source {
    Reader(Option<Output>),
    Channel(Option<mpsc::Receiver<Bytes>>),
}

impl Source {
    fn is_absent(&self) -> bool {
        matches!(self, Source::Reader(None) | Source::Channel(None))
    }

    async fn next(&mut self, max_chunk: usize) -> Option<Bytes> {
        match self {
            Source::Reader(Some(r)) => {
                let mut buf = BytesMut::with_capacity(max_chunk);
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(buf.freeze()),
                }
            }
            Source::Channel(Some(rx)) => rx.recv().await,
            Source::Reader(None) | Source::Channel(None) => None,
        }
    }
}

/// Copies process output to its stream, one DATA frame per read, and FINs the stream at the
/// end of output, or when `detach` is notified. Without a stream the output is drained and
/// dropped; after a write error or a detach too, so the process never blocks on a full pipe.
async fn pump_output(
    mut source: Source,
    writer: &mut Option<&mut StreamWriter>,
    max_chunk: usize,
    mut detach: Option<&Notify>,
) {
    // No output source (stderr with a terminal, say): the stream is left to the reset at
    // teardown, as the runtime never closes a writer it did not use.
    if source.is_absent() {
        return;
    }
    let mut open = writer.is_some();
    loop {
        let next = match detach {
            Some(signal) if open => tokio::select! {
                next = source.next(max_chunk) => next,
                () = signal.notified() => {
                    detach = None;
                    open = false;
                    if let Some(w) = writer.as_mut() {
                        let _ = w.finish().await;
                    }
                    continue;
                }
            },
            _ => source.next(max_chunk).await,
        };
        let Some(chunk) = next else { break };
        if open
            && let Some(w) = writer.as_mut()
            && let Err(e) = w.send(chunk).await
        {
            tracing::debug!(error = %e, "output stream closed");
            open = false;
        }
    }
    if open && let Some(w) = writer.as_mut() {
        let _ = w.finish().await;
    }
}

/// Applies the resize stream's sizes to the terminal until the stream ends or the first
/// decode error; later bytes are discarded.
async fn pump_resize(reader: Option<&mut StreamReader>, terminal: Option<&PtyMaster>) {
    let Some(reader) = reader else { return };
    let mut decoder = ResizeDecoder::new();
    while let Some(chunk) = reader.recv().await {
        if decoder.has_failed() {
            continue;
        }
        match decoder.push(&chunk) {
            Ok(sizes) => {
                for size in sizes {
                    if let Some(t) = terminal
                        && let Err(e) = t.set_size(size.width, size.height)
                    {
                        tracing::debug!(error = %e, "terminal resize failed");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "resize handling ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_streams_follow_the_cri_request_and_version() {
        let opts = Opts {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        assert_eq!(opts.expected_streams(Version::V4), 4);
        assert_eq!(opts.expected_streams(Version::V3), 4);
        assert_eq!(opts.expected_streams(Version::V2), 3);
        let opts = Opts {
            stdin: false,
            stdout: true,
            stderr: true,
            tty: false,
        };
        assert_eq!(opts.expected_streams(Version::V4), 3);
    }

    #[test]
    fn stream_headers_match_names_case_insensitively_and_take_the_first_value() {
        let h = HeaderBlock::new()
            .with("streamtype", "stdin")
            .with("port", b"80\x0081".to_vec())
            .with("requestid", "");
        assert_eq!(stream_header(&h, "streamType"), Some(&b"stdin"[..]));
        assert_eq!(stream_header(&h, "port"), Some(&b"80"[..]));
        assert_eq!(stream_header(&h, "requestid"), None);
        assert_eq!(stream_header(&h, "missing"), None);
    }

    #[test]
    fn versions_map_from_negotiated_protocols() {
        assert_eq!(Version::from_protocol("v4.channel.k8s.io"), Version::V4);
        assert_eq!(Version::from_protocol("channel.k8s.io"), Version::V1);
        assert!(!Version::V2.supports_resize());
    }
}
