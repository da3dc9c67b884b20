//! The client side of remote command (exec, attach) over SPDY, as client-go's SPDY executor
//! runs it: upgrade, create the streams one by one, relay, read the outcome.

use bytes::Bytes;
use thiserror::Error;

use super::{UpstreamConfig, UpstreamError, upgrade_spdy};
use crate::connection::{self, ConnectionConfig, Handle, OpenError, StreamReader, StreamWriter};
use crate::spdy::HeaderBlock;

pub use crate::channel::outcome::{Outcome, Protocol};

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
        // Each stream keeps only the half that carries data. Dropping our writer of an output
        // stream sends nothing; dropping our reader of an input stream discards whatever the
        // runtime might write there instead of buffering it.
        let result = async {
            let error = open(&connection, "error").await?.reader;
            let stdin = match opts.stdin {
                true => Some(open(&connection, "stdin").await?.writer),
                false => None,
            };
            let stdout = match opts.stdout {
                true => Some(open(&connection, "stdout").await?.reader),
                false => None,
            };
            let stderr = match opts.stderr && !opts.tty {
                true => Some(open(&connection, "stderr").await?.reader),
                false => None,
            };
            let resize = match opts.tty && protocol >= Protocol::V3 {
                true => Some(open(&connection, "resize").await?.writer),
                false => None,
            };
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
        let bytes = self.read_error_stream(cap).await;
        Outcome::decode(self.protocol, &bytes)
    }

    /// Reads the error stream to its end, keeping at most `cap` bytes.
    pub async fn read_error_stream(&mut self, cap: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        while let Some(piece) = self.error.recv().await {
            let room = cap.saturating_sub(bytes.len());
            bytes.extend_from_slice(&piece[..piece.len().min(room)]);
        }
        bytes
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

/// The connection settings the bridge uses towards a runtime: client-go's (PING every 5 s,
/// 30 s per SYN_REPLY), which are [`ConnectionConfig::client`]'s defaults.
pub fn client_connection_config() -> ConnectionConfig {
    ConnectionConfig::client()
}
