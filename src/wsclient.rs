//! A minimal `v5.channel.k8s.io` remote-command client, as client-go's WebSocket executor
//! behaves: for the CLI (`ws-exec`, the demo) and for tests.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::channel::frame;
use crate::channel::outcome::{Outcome, Protocol};
use crate::channel::subprotocol;

/// Why a session could not run.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid URL: {0}")]
    Url(String),
    #[error("upgrade failed: {0}")]
    Upgrade(String),
    #[error("server chose sub-protocol {0:?}, not v5.channel.k8s.io")]
    Protocol(Option<String>),
    #[error("connection failed: {0}")]
    Io(String),
}

/// Runs one session: `stdin` (if any) is sent on channel 0 and half-closed with CLOSE at its
/// end; channel 1 and 2 go to `stdout` and `stderr`; the status on channel 3 is decoded as
/// client-go decodes it once the server closes.
pub async fn run<I, O, E>(
    url: &str,
    stdin: Option<I>,
    mut stdout: O,
    mut stderr: E,
) -> Result<Outcome, ClientError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::Url(e.to_string()))?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(subprotocol::V5),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| ClientError::Upgrade(e.to_string()))?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if chosen.as_deref() != Some(subprotocol::V5) {
        return Err(ClientError::Protocol(chosen));
    }
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(4);
    let stdin_task = stdin.map(|mut input| {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match input.read(&mut buf[1..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf[0] = frame::STDIN;
                        let msg = Message::Binary(Bytes::copy_from_slice(&buf[..=n]));
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let close = Bytes::from_static(&[frame::CLOSE, frame::STDIN]);
            let _ = tx.send(Message::Binary(close)).await;
        })
    });
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        sink
    });
    let mut status = Vec::new();
    while let Some(msg) = stream.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                if let Some(t) = stdin_task {
                    t.abort();
                }
                return Err(ClientError::Io(e.to_string()));
            }
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        let written = match channel {
            frame::STDOUT => stdout.write_all(payload).await,
            frame::STDERR => stderr.write_all(payload).await,
            frame::ERROR => {
                status.extend_from_slice(payload);
                Ok(())
            }
            _ => Ok(()),
        };
        written.map_err(|e| ClientError::Io(e.to_string()))?;
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    if let Some(t) = stdin_task {
        t.abort();
    }
    writer.abort();
    Ok(Outcome::decode(Protocol::V4, &status))
}
