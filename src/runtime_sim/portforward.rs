//! Port-forward sessions over SPDY, as the kubelet streaming library runs them (protocol.md
//! §6.4), with containerd's forwarder behind them dialing the "pod network" (loopback).
//!
//! Every forwarded connection is a pair of client streams (`error`, `data`) sharing a
//! `requestid`. Streams are admitted before their SYN_REPLY (bad `port` or `streamtype` → RST
//! CANCEL), paired by request id within the stream-creation timeout, and each complete pair is
//! forwarded: success FINs the error stream then the data stream; failure writes the reason on
//! the error stream and resets both.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::remotecommand::{ConnGuard, server_config, stream_header};
use super::{PortForwardRequest, Shared};
use crate::connection::{self, Stream, StreamReader, StreamWriter, WriteError};
use crate::spdy::{HeaderBlock, RstStatus};

/// containerd waits this long for the second direction once the target has closed its side.
const TARGET_EOF_GRACE: Duration = Duration::from_secs(1);

/// Numbers standing in for Go's `%p` of the connection in timeout messages.
static CONN_IDS: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// Admission before SYN_REPLY: `port` a decimal u16 > 0, `streamtype` `error` or `data`.
/// The error text is what the library logs.
fn admit(headers: &HeaderBlock) -> Result<(Kind, u16), String> {
    let port = stream_header(headers, "port").ok_or("\"port\" header is required")?;
    let port_text = String::from_utf8_lossy(port);
    let port = parse_port(port).map_err(|e| {
        format!(
            "unable to parse {port_text:?} as a port: strconv.ParseUint: parsing {port_text:?}: {e}"
        )
    })?;
    if port == 0 {
        return Err(format!("port {port_text:?} must be > 0"));
    }
    let kind = match stream_header(headers, "streamtype") {
        None => return Err("\"streamType\" header is required".into()),
        Some(b"error") => Kind::Error,
        Some(b"data") => Kind::Data,
        Some(other) => {
            return Err(format!(
                "invalid stream type {:?}",
                String::from_utf8_lossy(other)
            ));
        }
    };
    Ok((kind, port))
}

/// Go's `strconv.ParseUint(s, 10, 16)`: ASCII digits only, no sign.
fn parse_port(s: &[u8]) -> Result<u16, &'static str> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err("invalid syntax");
    }
    s.iter()
        .try_fold(0u16, |n, d| {
            n.checked_mul(10)?.checked_add(u16::from(d - b'0'))
        })
        .ok_or("value out of range")
}

/// The pair key: the `requestid` header, or for very old clients a pseudo id derived from the
/// stream id (the error stream's own id; the data stream's id − 2).
fn request_id(headers: &HeaderBlock, stream_id: u32, kind: Kind) -> String {
    match stream_header(headers, "requestid") {
        Some(id) => String::from_utf8_lossy(id).into_owned(),
        None => match kind {
            Kind::Error => stream_id.to_string(),
            Kind::Data => (i64::from(stream_id) - 2).to_string(),
        },
    }
}

struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    port: u16,
    deadline: Instant,
}

impl Pair {
    async fn print_error(&mut self, text: String) {
        if let Some(error) = self.error.as_mut() {
            let _ = error.writer.send(Bytes::from(text)).await;
        }
    }
}

/// Serves `/portforward/{token}` after the 101, until the connection ends.
pub(crate) async fn serve<IO>(shared: Arc<Shared>, io: IO, leftover: Bytes, req: PortForwardRequest)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let conn_id = CONN_IDS.fetch_add(1, Ordering::Relaxed);
    let (handle, mut incoming) = connection::spawn(io, leftover, server_config(&shared));
    let _guard = ConnGuard(handle.clone());
    let timeout = shared.config().stream_creation_timeout;
    let max_chunk = shared.config().max_chunk;
    let sandbox: Arc<str> = req.pod_sandbox_id.into();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Streams of timed-out or refused pairs: never used again but left open, as the library
    // forgets them without a reset.
    let mut forgotten: Vec<Stream> = Vec::new();
    let mut forwards = JoinSet::new();

    loop {
        let next_deadline = pairs.values().map(|p| p.deadline).min();
        tokio::select! {
            next = incoming.accept() => {
                let Some(incoming_stream) = next else { break };
                let (kind, port) = match admit(incoming_stream.headers()) {
                    Ok(admitted) => admitted,
                    Err(reason) => {
                        tracing::warn!(%reason, stream = incoming_stream.id(), "port-forward stream refused");
                        incoming_stream.reject(RstStatus::CANCEL);
                        continue;
                    }
                };
                let id = request_id(incoming_stream.headers(), incoming_stream.id(), kind);
                let stream = incoming_stream.accept();
                let pair = pairs.entry(id.clone()).or_insert_with(|| Pair {
                    error: None,
                    data: None,
                    port,
                    deadline: Instant::now() + timeout,
                });
                let slot = match kind {
                    Kind::Error => &mut pair.error,
                    Kind::Data => &mut pair.data,
                };
                if slot.is_some() {
                    let which = if kind == Kind::Error { "error" } else { "data" };
                    let msg = format!("error processing stream for request {id}: {which} stream already assigned");
                    tracing::warn!("{msg}");
                    forgotten.push(stream);
                    pair.print_error(msg).await;
                    continue;
                }
                *slot = Some(stream);
                if pair.error.is_some() && pair.data.is_some() {
                    let pair = pairs.remove(&id).expect("pair just completed");
                    let (Some(error), Some(data)) = (pair.error, pair.data) else { unreachable!() };
                    // The port is the data stream's, as the library reads it.
                    let port = stream_header(data.headers(), "port")
                        .and_then(|p| parse_port(p).ok())
                        .unwrap_or(pair.port);
                    forwards.spawn(forward(error, data, port, sandbox.clone(), max_chunk));
                }
            }
            () = sleep_until_opt(next_deadline) => {
                let now = Instant::now();
                let expired: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    let mut pair = pairs.remove(&id).expect("expired pair present");
                    let msg = format!("(conn=0xc{conn_id:09x}, request={id}) timed out waiting for streams");
                    tracing::warn!("{msg}");
                    pair.print_error(msg).await;
                    forgotten.extend(pair.error.take());
                    forgotten.extend(pair.data.take());
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    // The connection has ended: stop forwarding (drops the target sockets).
    forwards.abort_all();
    drop(forgotten);
    handle.close().await;
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Forwards one pair and reports the outcome on its streams.
async fn forward(error: Stream, data: Stream, port: u16, sandbox: Arc<str>, max_chunk: usize) {
    // The client never writes on the error stream; its reader is kept so the stream stays
    // as the client left it.
    let (_error_reader, mut error_writer) = error.split();
    let (mut data_reader, mut data_writer) = data.split();
    match copy_both_ways(
        &mut data_reader,
        &mut data_writer,
        port,
        &sandbox,
        max_chunk,
    )
    .await
    {
        Ok(()) => {
            let _ = error_writer.finish().await;
            let _ = data_writer.finish().await;
        }
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {sandbox}, uid : {e}");
            tracing::warn!("{msg}");
            let _ = error_writer.send(Bytes::from(msg)).await;
            data_writer.reset(RstStatus::CANCEL);
            error_writer.reset(RstStatus::CANCEL);
        }
    }
}

/// Dials the target and copies until both directions are done. Client FIN (or reset) on the
/// data stream half-closes the socket towards the target. Target EOF while the client still
/// sends FINs the data stream at once (so the client learns of it), and then, as containerd
/// does, the client gets [`TARGET_EOF_GRACE`] to finish its direction. When the client had
/// finished first, the data stream is left for the caller to FIN after the error stream, in
/// the library's order.
async fn copy_both_ways(
    reader: &mut StreamReader,
    writer: &mut StreamWriter,
    port: u16,
    sandbox: &str,
    max_chunk: usize,
) -> Result<(), String> {
    // containerd 1.6's text for a pod whose network namespace has no IPv6 loopback (the
    // trailing space is containerd's), with "host" for the namespace path.
    let target = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| {
        format!(
            "failed to execute portforward in network namespace \"host\": failed to connect to \
             localhost:{port} inside namespace {sandbox:?}, IPv4: dial tcp4 127.0.0.1:{port}: {} \
             IPv6 dial tcp6: address localhost: no suitable address found ",
            go_net_error(&e, "connect")
        )
    })?;
    let (mut target_rd, mut target_wr) = target.into_split();
    let client_done = AtomicBool::new(false);

    let upstream = async {
        while let Some(chunk) = reader.recv().await {
            target_wr.write_all(&chunk).await.map_err(|e| {
                format!("write tcp 127.0.0.1:{port}: {}", go_net_error(&e, "write"))
            })?;
        }
        // The client is done sending: pass the half-close on.
        client_done.store(true, Ordering::Relaxed);
        let _ = target_wr.shutdown().await;
        Ok::<(), String>(())
    };
    let downstream = async {
        loop {
            let mut buf = BytesMut::with_capacity(max_chunk);
            let n = target_rd
                .read_buf(&mut buf)
                .await
                .map_err(|e| format!("read tcp 127.0.0.1:{port}: {}", go_net_error(&e, "read")))?;
            if n == 0 {
                if !client_done.load(Ordering::Relaxed) {
                    let _ = writer.finish().await;
                }
                return Ok::<(), String>(());
            }
            match writer.send(buf.freeze()).await {
                Ok(()) => {}
                // The client reset the data stream or left: nobody reads this direction any
                // more, which ends it without an error.
                Err(WriteError::Reset(_) | WriteError::ConnectionClosed | WriteError::Finished) => {
                    return Ok(());
                }
            }
        }
    };
    tokio::pin!(upstream, downstream);
    tokio::select! {
        up = &mut upstream => {
            up?;
            downstream.await
        }
        down = &mut downstream => {
            down?;
            match tokio::time::timeout(TARGET_EOF_GRACE, upstream).await {
                Ok(up) => up,
                Err(_) => Ok(()),
            }
        }
    }
}

/// Go's rendering of a socket error: `connect: connection refused` and the like.
fn go_net_error(e: &std::io::Error, op: &str) -> String {
    use std::io::ErrorKind;
    let text = match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ErrorKind::ConnectionReset => "connection reset by peer".to_owned(),
        ErrorKind::BrokenPipe => "broken pipe".to_owned(),
        ErrorKind::TimedOut => "connection timed out".to_owned(),
        _ => e.to_string(),
    };
    format!("{op}: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderBlock {
        let mut h = HeaderBlock::new();
        for (n, v) in pairs {
            h.push(n, *v);
        }
        h
    }

    #[test]
    fn admission_requires_a_positive_u16_port_and_a_known_type() {
        let ok = headers(&[("streamtype", "data"), ("port", "8080")]);
        assert_eq!(admit(&ok), Ok((Kind::Data, 8080)));
        let cases = [
            (
                headers(&[("streamtype", "data")]),
                "\"port\" header is required",
            ),
            (
                headers(&[("streamtype", "data"), ("port", "+80")]),
                "unable to parse \"+80\" as a port: strconv.ParseUint: parsing \"+80\": invalid syntax",
            ),
            (
                headers(&[("streamtype", "data"), ("port", "65536")]),
                "unable to parse \"65536\" as a port: strconv.ParseUint: parsing \"65536\": value out of range",
            ),
            (
                headers(&[("streamtype", "data"), ("port", "0")]),
                "port \"0\" must be > 0",
            ),
            (
                headers(&[("port", "80")]),
                "\"streamType\" header is required",
            ),
            (
                headers(&[("streamtype", "stdin"), ("port", "80")]),
                "invalid stream type \"stdin\"",
            ),
        ];
        for (h, want) in cases {
            assert_eq!(admit(&h), Err(want.to_owned()));
        }
    }

    #[test]
    fn pairs_without_request_id_get_pseudo_ids_from_stream_ids() {
        let h = headers(&[]);
        assert_eq!(request_id(&h, 1, Kind::Error), "1");
        assert_eq!(request_id(&h, 3, Kind::Data), "1");
        assert_eq!(
            request_id(&headers(&[("requestid", "7")]), 3, Kind::Data),
            "7"
        );
    }
}
