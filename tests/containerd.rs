//! Integration tests against a real legacy runtime: containerd 1.6 + runc, driven over CRI,
//! streamed through our own SPDY engine (`upstream::upgrade_spdy` + `connection::spawn`).
//!
//! The runtime is started once per test binary by `support/containerd_peer.rs`; the tests skip
//! with a printed notice when it cannot run here (not root, packages missing) unless
//! `WS_SPDY_BRIDGE_REQUIRE_PEERS=1`. Run with output to see containerd's texts and timings:
//!
//! ```text
//! WS_SPDY_BRIDGE_REQUIRE_PEERS=1 cargo test --test containerd -- --nocapture
//! ```

#[path = "support/containerd_peer.rs"]
mod containerd_peer;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use ws_spdy_bridge::connection::{self, ConnectionConfig, Handle, Incoming, Stream, StreamReader};
use ws_spdy_bridge::cri::proto::{
    AttachRequest, ContainerFilter, ContainerState, ExecRequest, PortForwardRequest,
};
use ws_spdy_bridge::spdy::HeaderBlock;
use ws_spdy_bridge::status::Status;
use ws_spdy_bridge::upstream::{self, RefusalBody, UpstreamConfig, UpstreamError};

use containerd_peer::{HTTP_BODY, HTTP_PORT, PeerGuard, notice};

/// Every test here that uses the peer: the last one to finish tears containerd down.
const TESTS: &[&str] = &[
    "exec_echo_hi",
    "exec_cat_stdin_then_fin",
    "exec_exit_code_3",
    "exec_url_used_twice_is_404",
    "port_forward_http_get",
    "port_forward_closed_port_reports_error",
    "attach_cat_echoes_stdin",
];

/// What client-go offers for remote command, minus v5 (protocol.md §3.1: the kubelet lib does
/// not accept v5 over SPDY, so containerd picks v4 either way).
const REMOTE_COMMAND_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Bound on one test's body.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn peer(test: &'static str) -> Option<PeerGuard> {
    containerd_peer::acquire(test, TESTS)
}

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {TEST_TIMEOUT:?}"))
}

/// Upgrades `url` to SPDY and starts our connection driver on it.
async fn connect(url: &str, protocols: &[&str]) -> (Handle, Incoming, Option<String>) {
    let uri: Uri = url.parse().expect("runtime URL");
    let up = upstream::upgrade_spdy(&uri, protocols, &UpstreamConfig::default())
        .await
        .unwrap_or_else(|e| panic!("upgrade refused: {e}"));
    assert_eq!(up.status, StatusCode::SWITCHING_PROTOCOLS);
    let (handle, incoming) = connection::spawn(up.io, up.leftover, ConnectionConfig::client());
    (handle, incoming, up.protocol)
}

/// A remote-command session with its streams, created as client-go does (protocol.md §3.3):
/// `error`, `stdin`, `stdout`, `stderr`, one at a time, each after the previous SYN_REPLY.
struct Session {
    handle: Handle,
    _incoming: Incoming,
    error: Stream,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
}

async fn open_session(url: &str, stdin: bool, stdout: bool, stderr: bool) -> Session {
    let (handle, incoming, protocol) = connect(url, REMOTE_COMMAND_PROTOCOLS).await;
    assert_eq!(protocol.as_deref(), Some("v4.channel.k8s.io"));
    let open = |kind: &'static str| {
        let handle = handle.clone();
        async move {
            handle
                .open_stream(HeaderBlock::new().with("streamtype", kind))
                .await
                .unwrap_or_else(|e| panic!("open {kind} stream: {e}"))
        }
    };
    let error = open("error").await;
    let stdin = if stdin {
        Some(open("stdin").await)
    } else {
        None
    };
    let stdout = if stdout {
        Some(open("stdout").await)
    } else {
        None
    };
    let stderr = if stderr {
        Some(open("stderr").await)
    } else {
        None
    };
    Session {
        handle,
        _incoming: incoming,
        error,
        stdin,
        stdout,
        stderr,
    }
}

async fn read_all(reader: &mut StreamReader) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(piece) = reader.recv().await {
        out.extend_from_slice(&piece);
    }
    out
}

async fn read_opt(stream: Option<&mut Stream>) -> Vec<u8> {
    match stream {
        Some(s) => read_all(&mut s.reader).await,
        None => Vec::new(),
    }
}

/// Reads stdout, stderr and the error stream to their ends (together, so no stream's buffer
/// can stall another), then closes the connection. Returns (stdout, stderr, status).
async fn finish_session(mut s: Session) -> (Vec<u8>, Vec<u8>, Status) {
    let (out, err, status) = tokio::join!(
        read_opt(s.stdout.as_mut()),
        read_opt(s.stderr.as_mut()),
        read_all(&mut s.error.reader),
    );
    s.handle.close().await;
    let status: Status = serde_json::from_slice(&status).unwrap_or_else(|e| {
        panic!(
            "error stream is no v4 Status ({e}): {:?}",
            String::from_utf8_lossy(&status)
        )
    });
    (out, err, status)
}

async fn exec_url(peer: &PeerGuard, cmd: &[&str], stdin: bool) -> String {
    peer.cri()
        .await
        .exec(ExecRequest {
            container_id: peer.web_id.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("CRI Exec")
}

#[tokio::test]
async fn exec_echo_hi() {
    let Some(peer) = peer("exec_echo_hi") else {
        return;
    };
    bounded("exec echo hi", async {
        let url = exec_url(&peer, &["echo", "hi"], false).await;
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let (out, err, status) = finish_session(open_session(&url, false, true, true).await).await;
        assert_eq!(out, b"hi\n");
        assert_eq!(err, b"");
        assert_eq!(status, Status::success(), "{status:?}");
    })
    .await;
}

#[tokio::test]
async fn exec_cat_stdin_then_fin() {
    let Some(peer) = peer("exec_cat_stdin_then_fin") else {
        return;
    };
    bounded("exec cat", async {
        let url = exec_url(&peer, &["cat"], true).await;
        let mut s = open_session(&url, true, true, true).await;
        let stdin = &mut s.stdin.as_mut().expect("stdin stream").writer;
        stdin
            .send(Bytes::from_static(b"hello"))
            .await
            .expect("write stdin");
        stdin.finish().await.expect("FIN stdin");
        let (out, err, status) = finish_session(s).await;
        assert_eq!(out, b"hello");
        assert_eq!(err, b"");
        assert_eq!(status, Status::success(), "{status:?}");
        assert_eq!(status.exit_code(), None);
    })
    .await;
}

#[tokio::test]
async fn exec_exit_code_3() {
    let Some(peer) = peer("exec_exit_code_3") else {
        return;
    };
    bounded("exec exit 3", async {
        let url = exec_url(&peer, &["sh", "-c", "exit 3"], false).await;
        let (out, err, status) = finish_session(open_session(&url, false, true, true).await).await;
        assert_eq!(out, b"");
        assert_eq!(err, b"");
        notice(&format!(
            "containerd's exit-code status: {}",
            serde_json::to_string(&status).unwrap_or_default()
        ));
        assert_eq!(status.status, "Failure");
        assert_eq!(status.reason, "NonZeroExitCode");
        assert_eq!(status.exit_code(), Some(3), "{status:?}");
        let causes = &status.details.as_ref().expect("details").causes;
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].reason, "ExitCode");
        assert_eq!(causes[0].message, "3");
        assert!(
            status
                .message
                .starts_with("command terminated with non-zero exit code: "),
            "{}",
            status.message
        );
    })
    .await;
}

#[tokio::test]
async fn exec_url_used_twice_is_404() {
    let Some(peer) = peer("exec_url_used_twice_is_404") else {
        return;
    };
    bounded("exec URL used twice", async {
        let url = exec_url(&peer, &["echo", "hi"], false).await;
        let (out, _, status) = finish_session(open_session(&url, false, true, true).await).await;
        assert_eq!(out, b"hi\n");
        assert_eq!(status, Status::success());

        let uri: Uri = url.parse().expect("runtime URL");
        let err =
            upstream::upgrade_spdy(&uri, REMOTE_COMMAND_PROTOCOLS, &UpstreamConfig::default())
                .await
                .expect_err("a spent token must be refused");
        match &err {
            UpstreamError::Refused { status, body, .. } => {
                assert_eq!(*status, StatusCode::NOT_FOUND, "{err}");
                assert_eq!(
                    *body,
                    RefusalBody::Text("404 page not found".into()),
                    "{err}"
                );
            }
            other => panic!("expected a 404 refusal, got {other:?}"),
        }
        // The error text must not show the token.
        let token = url.rsplit('/').next().unwrap_or_default();
        assert!(!err.to_string().contains(token), "{err}");
    })
    .await;
}

/// One forwarded TCP connection over a port-forward connection, as client-go does it
/// (protocol.md §6.3): error stream, immediately half-closed; data stream; request bytes;
/// half-close of the data stream. Returns (bytes from the target, error-stream text).
async fn forward_once(
    handle: &Handle,
    port: u16,
    request_id: u32,
    request: &[u8],
) -> (Vec<u8>, String) {
    let headers = |kind: &str| {
        HeaderBlock::new()
            .with("streamtype", kind)
            .with("port", port.to_string())
            .with("requestid", request_id.to_string())
    };
    let mut error = handle
        .open_stream(headers("error"))
        .await
        .expect("open port-forward error stream");
    error.writer.finish().await.expect("FIN error stream");
    let mut data = handle
        .open_stream(headers("data"))
        .await
        .expect("open port-forward data stream");
    data.writer
        .send(Bytes::copy_from_slice(request))
        .await
        .expect("send request");
    // Half-close our side: containerd then ends the forward as soon as the target is done
    // (without it, containerd holds the connection about 1 s longer; test-peers.md).
    data.writer.finish().await.expect("FIN data stream");
    let (response, error_text) =
        tokio::join!(read_all(&mut data.reader), read_all(&mut error.reader));
    (response, String::from_utf8_lossy(&error_text).into_owned())
}

async fn port_forward_connect(peer: &PeerGuard) -> (Handle, Incoming) {
    let url = peer
        .cri()
        .await
        .port_forward(PortForwardRequest {
            pod_sandbox_id: peer.sandbox_id.clone(),
            port: vec![i32::from(HTTP_PORT)],
        })
        .await
        .expect("CRI PortForward");
    let (handle, incoming, protocol) = connect(&url, &[PORT_FORWARD_PROTOCOL]).await;
    assert_eq!(protocol.as_deref(), Some(PORT_FORWARD_PROTOCOL));
    (handle, incoming)
}

#[tokio::test]
async fn port_forward_http_get() {
    let Some(peer) = peer("port_forward_http_get") else {
        return;
    };
    bounded("port-forward GET", async {
        let (handle, _incoming) = port_forward_connect(&peer).await;
        let request = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";
        // httpd starts with its container; give it a moment on a slow machine. A refused
        // forward ends only that stream pair on the runtime's side (client-go would give up on
        // the whole connection), so retries reuse the connection with new request ids.
        let mut request_id = 0;
        let (response, error_text) = loop {
            let (response, error_text) =
                forward_once(&handle, HTTP_PORT, request_id, request).await;
            if error_text.is_empty() || request_id >= 20 {
                break (response, error_text);
            }
            request_id += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if request_id > 0 {
            notice(&format!(
                "httpd answered after {request_id} refused attempts"
            ));
        }
        assert_eq!(error_text, "", "port-forward error stream");
        let text = String::from_utf8_lossy(&response);
        let status_line = text.lines().next().unwrap_or_default();
        assert!(
            status_line.starts_with("HTTP/1.") && status_line.contains(" 200 "),
            "{text}"
        );
        assert!(text.ends_with(HTTP_BODY), "{text}");

        // The same connection serves a second forwarded connection.
        let (response, error_text) =
            forward_once(&handle, HTTP_PORT, request_id + 1, request).await;
        assert_eq!(error_text, "");
        assert!(String::from_utf8_lossy(&response).contains(" 200 "));
        handle.close().await;
    })
    .await;
}

#[tokio::test]
async fn port_forward_closed_port_reports_error() {
    let Some(peer) = peer("port_forward_closed_port_reports_error") else {
        return;
    };
    bounded("port-forward to a closed port", async {
        let (handle, _incoming) = port_forward_connect(&peer).await;
        let closed_port = HTTP_PORT + 1;
        let (response, error_text) = forward_once(&handle, closed_port, 0, b"x").await;
        notice(&format!("containerd's port-forward error: {error_text:?}"));
        assert_eq!(response, b"");
        let prefix = format!(
            "error forwarding port {closed_port} to pod {}, uid : ",
            peer.sandbox_id
        );
        assert!(error_text.starts_with(&prefix), "{error_text:?}");
        assert!(error_text.contains("connection refused"), "{error_text:?}");
        handle.close().await;
    })
    .await;
}

#[tokio::test]
async fn attach_cat_echoes_stdin() {
    let Some(peer) = peer("attach_cat_echoes_stdin") else {
        return;
    };
    bounded("attach to cat", async {
        let cri = peer.cri().await;
        let url = cri
            .attach(AttachRequest {
                container_id: peer.cat_id.clone(),
                stdin: true,
                tty: false,
                stdout: true,
                stderr: true,
            })
            .await
            .expect("CRI Attach");
        let mut s = open_session(&url, true, true, true).await;
        let line = b"ping from attach\n";
        s.stdin
            .as_mut()
            .expect("stdin stream")
            .writer
            .send(Bytes::from_static(line))
            .await
            .expect("write stdin");
        let stdout = &mut s.stdout.as_mut().expect("stdout stream").reader;
        let mut seen = Vec::new();
        while !seen.ends_with(line) {
            match stdout.recv().await {
                Some(piece) => seen.extend_from_slice(&piece),
                None => panic!("stdout ended early: {:?}", String::from_utf8_lossy(&seen)),
            }
        }
        assert_eq!(seen, line);
        s.handle.close().await;

        // Detaching leaves the container running (stdin_once is false).
        let containers = cri
            .list_containers(Some(ContainerFilter {
                id: peer.cat_id.clone(),
                ..Default::default()
            }))
            .await
            .expect("CRI ListContainers");
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0].state(), ContainerState::ContainerRunning);
    })
    .await;
}
