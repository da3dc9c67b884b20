//! The client side of remote command (exec, attach) over SPDY, as client-go's SPDY executor
//! runs it: upgrade, create the streams one by one, relay, read the outcome.

use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

use super::{UpstreamConfig, UpstreamError, upgrade_spdy};
use crate::connection::{self, ConnectionConfig, Handle, OpenError, StreamReader, StreamWriter};
use crate::spdy::HeaderBlock;
use crate::status::{STATUS_FAILURE, STATUS_SUCCESS, Status};

/// What the bridge offers upstream, most preferred first (client-go's list; a kubelet-lib
/// runtime picks v4).
pub const REMOTE_COMMAND_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The streams of a remote-command session. They must equal those of the CRI request behind
/// the runtime's token: the runtime waits for exactly that set (protocol.md §3.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The remote-command protocol the runtime chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// `channel.k8s.io`, also assumed when the 101 names none.
    V1,
    V2,
    V3,
    /// `v4.channel.k8s.io`, and v5, which over SPDY behaves exactly as v4.
    V4,
}

impl Protocol {
    /// The protocol a 101's `X-Stream-Protocol-Version` names.
    pub fn from_header(value: Option<&str>) -> Option<Protocol> {
        Some(match value.map(str::trim) {
            None | Some("") | Some("channel.k8s.io") => Protocol::V1,
            Some("v2.channel.k8s.io") => Protocol::V2,
            Some("v3.channel.k8s.io") => Protocol::V3,
            Some("v4.channel.k8s.io") | Some("v5.channel.k8s.io") => Protocol::V4,
            Some(_) => return None,
        })
    }
}

/// Why a remote-command session could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Upgrade(#[from] UpstreamError),
    #[error("runtime chose unknown protocol {0:?}")]
    UnknownProtocol(String),
    /// client-go's texts: `Timeout occurred`, `Stream reset`.
    #[error("{0}")]
    CreateStream(OpenError),
}

/// A running remote-command session with the runtime.
#[derive(Debug)]
pub struct RemoteCommand {
    pub protocol: Protocol,
    pub connection: Handle,
    pub error: StreamReader,
    pub stdin: Option<StreamWriter>,
    pub stdout: Option<StreamReader>,
    pub stderr: Option<StreamReader>,
    pub resize: Option<StreamWriter>,
    /// Our (unused) writers of the output streams. Readers of the input streams are dropped
    /// at once, so anything a runtime might write there is discarded, never buffered.
    _held: (Vec<StreamWriter>, Vec<StreamReader>),
}

impl RemoteCommand {
    /// Upgrades `url` to SPDY and creates the streams of `opts`, in client-go's order
    /// (error, stdin, stdout, stderr, resize), each after the previous one's SYN_REPLY.
    pub async fn start(
        url: &http::Uri,
        opts: StreamOptions,
        upstream: &UpstreamConfig,
        conn: ConnectionConfig,
    ) -> Result<RemoteCommand, StartError> {
        let upgraded = upgrade_spdy(url, &REMOTE_COMMAND_PROTOCOLS, upstream).await?;
        let protocol = Protocol::from_header(upgraded.protocol.as_deref()).ok_or_else(|| {
            StartError::UnknownProtocol(upgraded.protocol.clone().unwrap_or_default())
        })?;
        let (connection, _incoming) = connection::spawn(upgraded.io, upgraded.leftover, conn);
        let mut held = (Vec::new(), Vec::new());
        let result = async {
            let (error, w) = open(&connection, "error").await?.split();
            held.0.push(w);
            let mut stdin = None;
            if opts.stdin {
                let (r, w) = open(&connection, "stdin").await?.split();
                drop(r);
                stdin = Some(w);
            }
            let mut stdout = None;
            if opts.stdout {
                let (r, w) = open(&connection, "stdout").await?.split();
                held.0.push(w);
                stdout = Some(r);
            }
            let mut stderr = None;
            if opts.stderr && !opts.tty {
                let (r, w) = open(&connection, "stderr").await?.split();
                held.0.push(w);
                stderr = Some(r);
            }
            let mut resize = None;
            if opts.tty && protocol >= Protocol::V3 {
                let (r, w) = open(&connection, "resize").await?.split();
                drop(r);
                resize = Some(w);
            }
            Ok::<_, StartError>((error, stdin, stdout, stderr, resize))
        }
        .await;
        match result {
            Ok((error, stdin, stdout, stderr, resize)) => Ok(RemoteCommand {
                protocol,
                connection,
                error,
                stdin,
                stdout,
                stderr,
                resize,
                _held: held,
            }),
            Err(e) => {
                connection.close().await;
                Err(e)
            }
        }
    }

    /// Sends one terminal size on the resize stream as client-go does: JSON and a newline.
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<(), connection::WriteError> {
        if let Some(w) = self.resize.as_mut() {
            let msg = format!("{{\"Width\":{width},\"Height\":{height}}}\n");
            w.send(Bytes::from(msg)).await?;
        }
        Ok(())
    }

    /// Reads the error stream to its end (FIN, RST, GOAWAY or connection end are all the same
    /// to client-go) and decodes the outcome for the negotiated protocol. At most `cap` bytes
    /// are kept.
    pub async fn read_outcome(&mut self, cap: usize) -> Outcome {
        let mut bytes = Vec::new();
        while let Some(piece) = self.error.recv().await {
            let room = cap.saturating_sub(bytes.len());
            bytes.extend_from_slice(&piece[..piece.len().min(room)]);
        }
        Outcome::decode(self.protocol, &bytes)
    }

    /// Tears the connection down (RST CANCEL, GOAWAY, close), bounded by the close timeout.
    pub async fn close(self) {
        self.connection.close().await;
    }
}

async fn open(connection: &Handle, kind: &'static str) -> Result<connection::Stream, StartError> {
    connection
        .open_stream(HeaderBlock::new().with("streamtype", kind))
        .await
        .map_err(StartError::CreateStream)
}

/// Default cap on the error stream's bytes.
pub const DEFAULT_ERROR_STREAM_CAP: usize = 64 * 1024;

/// How a remote command ended, decoded as client-go decodes the error stream (protocol.md
/// §3.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The process exited with a non-zero code.
    ExitCode {
        code: u8,
        status: Status,
    },
    /// Any other failure the runtime reported, as a Status.
    Failure(Status),
    /// v1–v3 failure text (no exit code exists in these protocols).
    Text(String),
    /// The error stream did not hold what the protocol says; client-go's error text.
    ProtocolError(String),
}

impl Outcome {
    /// Decodes the error stream's bytes.
    pub fn decode(protocol: Protocol, bytes: &[u8]) -> Outcome {
        if bytes.is_empty() {
            return Outcome::Success;
        }
        let text = String::from_utf8_lossy(bytes).into_owned();
        if protocol < Protocol::V4 {
            return Outcome::Text(text);
        }
        let status: Status = match serde_json::from_slice(bytes) {
            Ok(s) => s,
            Err(e) => {
                return Outcome::ProtocolError(format!(
                    "error stream protocol error: {e} in \"{text}\""
                ));
            }
        };
        match status.status.as_str() {
            STATUS_SUCCESS => Outcome::Success,
            STATUS_FAILURE if status.reason == crate::status::REASON_NON_ZERO_EXIT_CODE => {
                let Some(details) = &status.details else {
                    return Outcome::ProtocolError(
                        "error stream protocol error: details must be set".into(),
                    );
                };
                let Some(cause) = details
                    .causes
                    .iter()
                    .find(|c| c.reason == crate::status::CAUSE_EXIT_CODE)
                else {
                    return Outcome::ProtocolError(
                        "error stream protocol error: no ExitCode cause given".into(),
                    );
                };
                match cause.message.parse::<u8>() {
                    Ok(code) => Outcome::ExitCode {
                        code,
                        status: status.clone(),
                    },
                    Err(_) => Outcome::ProtocolError(format!(
                        "error stream protocol error: invalid exit code value {:?}",
                        cause.message
                    )),
                }
            }
            STATUS_FAILURE => Outcome::Failure(status),
            _ => Outcome::ProtocolError("error stream protocol error: unknown error".into()),
        }
    }
}

/// The connection settings the bridge uses towards a runtime.
pub fn client_connection_config() -> ConnectionConfig {
    ConnectionConfig {
        ping_interval: Some(Duration::from_secs(5)),
        ..ConnectionConfig::client()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_error_stream_is_success_in_every_protocol() {
        for p in [Protocol::V1, Protocol::V2, Protocol::V3, Protocol::V4] {
            assert_eq!(Outcome::decode(p, b""), Outcome::Success);
        }
    }

    #[test]
    fn v4_exit_code_is_decoded() {
        let json =
            Status::non_zero_exit("command terminated with non-zero exit code: x", 3).to_json();
        assert!(matches!(
            Outcome::decode(Protocol::V4, json.as_bytes()),
            Outcome::ExitCode { code: 3, .. }
        ));
    }

    #[test]
    fn v4_protocol_errors_use_client_go_texts() {
        let no_details = r#"{"metadata":{},"status":"Failure","reason":"NonZeroExitCode"}"#;
        assert_eq!(
            Outcome::decode(Protocol::V4, no_details.as_bytes()),
            Outcome::ProtocolError("error stream protocol error: details must be set".into())
        );
        let bad_code = Status::non_zero_exit("m", 1)
            .to_json()
            .replace("\"1\"", "\"300\"");
        assert!(matches!(
            Outcome::decode(Protocol::V4, bad_code.as_bytes()),
            Outcome::ProtocolError(m) if m.contains("invalid exit code value \"300\"")
        ));
        let unknown = r#"{"metadata":{},"status":"Maybe"}"#;
        assert_eq!(
            Outcome::decode(Protocol::V4, unknown.as_bytes()),
            Outcome::ProtocolError("error stream protocol error: unknown error".into())
        );
        assert!(matches!(
            Outcome::decode(Protocol::V4, b"not json"),
            Outcome::ProtocolError(m) if m.starts_with("error stream protocol error: ")
        ));
    }

    #[test]
    fn v2_text_is_kept() {
        assert_eq!(
            Outcome::decode(Protocol::V2, b"boom"),
            Outcome::Text("boom".into())
        );
    }

    #[test]
    fn negotiated_header_maps_to_protocol() {
        assert_eq!(Protocol::from_header(None), Some(Protocol::V1));
        assert_eq!(
            Protocol::from_header(Some("v4.channel.k8s.io")),
            Some(Protocol::V4)
        );
        assert_eq!(
            Protocol::from_header(Some("v5.channel.k8s.io")),
            Some(Protocol::V4)
        );
        assert_eq!(Protocol::from_header(Some("portforward.k8s.io")), None);
    }
}
