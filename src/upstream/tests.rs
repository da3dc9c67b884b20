//! Upgrades against tiny in-test runtimes on 127.0.0.1, plain and TLS.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;

const TOKEN: &str = "Vh2Ua5Zr";
const EXEC_PATH: &str = "/exec/Vh2Ua5Zr";
const REDACTED_EXEC_PATH: &str = "/exec/Vh2U…";
const PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// A 101 as the kubelet lib writes it.
const SPDY_101: &str = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                        Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
                        Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
/// A SPDY SETTINGS frame header with an empty body, as a runtime could send right after a 101.
const SPDY_BYTES: &[u8] = &[0x80, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 0];

/// Short limits so that a failing test fails fast instead of hanging for 30 s.
fn test_config() -> UpstreamConfig {
    UpstreamConfig {
        connect_timeout: Duration::from_secs(5),
        response_header_timeout: Duration::from_secs(5),
        error_body_timeout: Duration::from_secs(5),
        ..UpstreamConfig::default()
    }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn url(scheme: &str, addr: SocketAddr, path: &str) -> Uri {
    format!("{scheme}://{addr}{path}").parse().unwrap()
}

/// Reads one request head, through its blank line, and nothing more.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    head
}

/// What a test runtime does with its connection after answering.
#[derive(Clone, Copy)]
enum After {
    /// Close at once (the body, if unframed, ends at EOF).
    Close,
    /// Hand the connection back to the test.
    Hold,
}

/// A runtime that accepts one connection, reads the request head, writes `response` in one
/// write, and returns the request head (and the connection if held).
fn runtime(
    listener: TcpListener,
    response: Vec<u8>,
    after: After,
) -> JoinHandle<(Vec<u8>, Option<TcpStream>)> {
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let request = read_request(&mut s).await;
        s.write_all(&response).await.unwrap();
        match after {
            After::Close => (request, None),
            After::Hold => (request, Some(s)),
        }
    })
}

async fn refused(response: &str, after: After, cfg: &UpstreamConfig) -> UpstreamError {
    let (listener, addr) = bind().await;
    let server = runtime(listener, response.as_bytes().to_vec(), after);
    let err = upgrade_spdy(&url("http", addr, EXEC_PATH), &PROTOCOLS, cfg)
        .await
        .expect_err("the runtime refused");
    drop(server.await.unwrap());
    err
}

#[tokio::test]
async fn request_has_the_client_go_shape_and_no_credentials() {
    let (listener, addr) = bind().await;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let request = read_request(&mut s).await;
        // Nothing may follow the head: no body.
        let mut extra = [0u8; 16];
        let more = tokio::time::timeout(Duration::from_millis(100), s.read(&mut extra)).await;
        assert!(more.is_err(), "bytes after the request head: {more:?}");
        s.write_all(SPDY_101.as_bytes()).await.unwrap();
        (request, s)
    });
    let with_userinfo: Uri = format!("http://user:secret@{addr}{EXEC_PATH}")
        .parse()
        .unwrap();
    let request = UpgradeRequest {
        headers: vec![(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer client-token"),
        )],
        ..UpgradeRequest::spdy(&PROTOCOLS)
    };
    let upgraded = upgrade(&with_userinfo, &request, &test_config())
        .await
        .unwrap();
    let (request, _conn) = server.await.unwrap();
    let request = String::from_utf8(request).unwrap();
    let expected = format!(
        "POST {EXEC_PATH} HTTP/1.1\r\n\
         Host: {addr}\r\n\
         User-Agent: ws-spdy-bridge/{}\r\n\
         Content-Length: 0\r\n\
         Connection: Upgrade\r\n\
         Upgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v5.channel.k8s.io\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
         X-Stream-Protocol-Version: v3.channel.k8s.io\r\n\
         X-Stream-Protocol-Version: v2.channel.k8s.io\r\n\
         X-Stream-Protocol-Version: channel.k8s.io\r\n\
         \r\n",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(request, expected);
    assert!(!request.to_ascii_lowercase().contains("authorization"));
    assert!(!request.contains("secret"));
    assert_eq!(upgraded.protocol.as_deref(), Some("v4.channel.k8s.io"));
}

#[tokio::test]
async fn spdy_bytes_in_the_same_write_as_the_101_are_kept() {
    let (listener, addr) = bind().await;
    let mut response = SPDY_101.as_bytes().to_vec();
    response.extend_from_slice(SPDY_BYTES);
    let server = runtime(listener, response, After::Hold);
    let mut upgraded = upgrade_spdy(&url("http", addr, EXEC_PATH), &PROTOCOLS, &test_config())
        .await
        .unwrap();
    let (_, conn) = server.await.unwrap();
    let mut conn = conn.unwrap();

    assert_eq!(upgraded.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(&upgraded.raw_head[..], SPDY_101.as_bytes());
    assert_eq!(&upgraded.leftover[..], SPDY_BYTES);
    assert_eq!(upgraded.protocol.as_deref(), Some("v4.channel.k8s.io"));
    assert_eq!(upgraded.headers["upgrade"], "SPDY/3.1");
    assert!(!upgraded.io.is_tls());
    assert!(upgraded.io.tcp().nodelay().unwrap());

    // The connection carries bytes both ways after the leftover.
    conn.write_all(b"later").await.unwrap();
    let mut later = [0u8; 5];
    upgraded.io.read_exact(&mut later).await.unwrap();
    assert_eq!(&later, b"later");
    upgraded.io.write_all(b"to runtime").await.unwrap();
    upgraded.io.shutdown().await.unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"to runtime");
}

#[tokio::test]
async fn a_101_without_upgrade_header_is_missing_upgrade_headers() {
    let cfg = test_config();
    let err = refused(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
        After::Hold,
        &cfg,
    )
    .await;
    assert!(
        matches!(&err, UpstreamError::MissingUpgradeHeaders { connection: Some(c), upgrade: None, .. } if c == "upgrade"),
        "{err:?}"
    );
    assert_eq!(err.fault(), Fault::Upstream);

    let err = refused(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        After::Hold,
        &cfg,
    )
    .await;
    assert!(
        matches!(err, UpstreamError::MissingUpgradeHeaders { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn upgrade_token_check_is_a_case_insensitive_substring() {
    let (listener, addr) = bind().await;
    let response = "HTTP/1.1 101 Switching Protocols\r\nconnection: keep-alive, UPGRADE\r\n\
                    upgrade: spdy/3.1\r\n\r\n";
    let server = runtime(listener, response.into(), After::Hold);
    let upgraded = upgrade_spdy(&url("http", addr, EXEC_PATH), &PROTOCOLS, &test_config()).await;
    assert!(upgraded.is_ok(), "{upgraded:?}");
    drop(server.await.unwrap());
}

#[tokio::test]
async fn a_101_without_protocol_header_means_v1() {
    let (listener, addr) = bind().await;
    let response =
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n";
    let server = runtime(listener, response.into(), After::Hold);
    let upgraded = upgrade_spdy(&url("http", addr, EXEC_PATH), &PROTOCOLS, &test_config())
        .await
        .unwrap();
    assert_eq!(upgraded.protocol, None);
    assert!(upgraded.leftover.is_empty());
    drop(server.await.unwrap());
}

#[tokio::test]
async fn websocket_upgrade_reuses_the_same_path() {
    let (listener, addr) = bind().await;
    let response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    let server = runtime(listener, response.into(), After::Hold);
    let request = UpgradeRequest {
        method: http::Method::GET,
        upgrade: "websocket".into(),
        protocols: vec![],
        headers: vec![(
            http::HeaderName::from_static("sec-websocket-protocol"),
            http::HeaderValue::from_static("v4.channel.k8s.io"),
        )],
    };
    let upgraded = upgrade(&url("http", addr, EXEC_PATH), &request, &test_config())
        .await
        .unwrap();
    let (request, _conn) = server.await.unwrap();
    let request = String::from_utf8(request).unwrap();
    assert!(request.starts_with(&format!("GET {EXEC_PATH} HTTP/1.1\r\n")));
    assert!(request.contains("\r\nUpgrade: websocket\r\n"));
    assert!(request.contains("\r\nsec-websocket-protocol: v4.channel.k8s.io\r\n"));
    assert!(!request.contains("Content-Length"));
    assert_eq!(&upgraded.raw_head[..], response.as_bytes());
}

#[tokio::test]
async fn unknown_token_404_reads_like_client_go() {
    let err = refused(
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Length: 19\r\n\r\n404 page not found\n",
        After::Hold,
        &test_config(),
    )
    .await;
    match &err {
        UpstreamError::Refused {
            status,
            body,
            raw_body,
            ..
        } => {
            assert_eq!(*status, StatusCode::NOT_FOUND);
            assert_eq!(*body, RefusalBody::Text("404 page not found".into()));
            assert_eq!(&raw_body[..], b"404 page not found\n");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(
        err.client_go_text(),
        "unable to upgrade connection: 404 page not found"
    );
    assert_eq!(err.http_status(), Some(StatusCode::NOT_FOUND));
    assert!(err.status().is_none());
    assert_eq!(err.kind(), "refused");
}

#[tokio::test]
async fn no_common_protocol_403_keeps_the_accepted_versions() {
    // No Content-Length: the body runs to EOF, as some servers send it.
    let err = refused(
        "HTTP/1.1 403 Forbidden\r\n\
         X-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io\r\n\
         X-Accepted-Stream-Protocol-Versions: v3.channel.k8s.io\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         unable to upgrade: unable to negotiate protocol: client supports [foo], \
         server accepts [v4.channel.k8s.io v3.channel.k8s.io]\n",
        After::Close,
        &test_config(),
    )
    .await;
    let UpstreamError::Refused {
        status, headers, ..
    } = &err
    else {
        panic!("expected Refused, got {err:?}");
    };
    assert_eq!(*status, StatusCode::FORBIDDEN);
    let accepted: Vec<_> = headers
        .get_all(X_ACCEPTED_STREAM_PROTOCOL_VERSIONS)
        .iter()
        .collect();
    assert_eq!(accepted, ["v4.channel.k8s.io", "v3.channel.k8s.io"]);
    assert_eq!(
        err.client_go_text(),
        "unable to upgrade connection: unable to upgrade: unable to negotiate protocol: \
         client supports [foo], server accepts [v4.channel.k8s.io v3.channel.k8s.io]"
    );
}

#[tokio::test]
async fn status_json_refusal_is_a_status() {
    let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"x\" is forbidden","reason":"Forbidden","code":403}"#;
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let err = refused(&response, After::Hold, &test_config()).await;
    let status = err.status().expect("a Status body");
    assert_eq!(status.code, 403);
    assert_eq!(status.reason, "Forbidden");
    assert_eq!(err.client_go_text(), r#"pods "x" is forbidden"#);
    assert!(matches!(
        &err,
        UpstreamError::Refused {
            body: RefusalBody::Status(_),
            ..
        }
    ));
}

#[tokio::test]
async fn empty_200_from_a_protocol_less_request_reads_like_client_go() {
    let err = refused(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        After::Hold,
        &test_config(),
    )
    .await;
    assert_eq!(err.client_go_text(), "unable to upgrade connection: ");
}

#[tokio::test]
async fn chunked_refusal_body_is_decoded() {
    let err = refused(
        "HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n\
         13\r\nunable to upgrade: \r\n1a\r\nunable to hijack response\n\r\n0\r\n\r\n",
        After::Hold,
        &test_config(),
    )
    .await;
    assert_eq!(
        err.client_go_text(),
        "unable to upgrade connection: unable to upgrade: unable to hijack response"
    );
}

#[tokio::test]
async fn refusal_body_is_bounded_in_size() {
    let cfg = UpstreamConfig {
        max_error_body_bytes: 1024,
        ..test_config()
    };
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Length: 100000\r\n\r\n{}",
        "a".repeat(100_000)
    );
    let err = refused(&response, After::Hold, &cfg).await;
    let UpstreamError::Refused { raw_body, body, .. } = &err else {
        panic!("expected Refused, got {err:?}");
    };
    assert_eq!(raw_body.len(), 1024);
    assert_eq!(*body, RefusalBody::Text("a".repeat(1024)));
}

#[tokio::test]
async fn refusal_body_read_stops_at_the_deadline_keeping_what_arrived() {
    let cfg = UpstreamConfig {
        error_body_timeout: Duration::from_millis(200),
        ..test_config()
    };
    let started = Instant::now();
    // Promises 100 bytes, sends 7, then stalls with the connection open.
    let err = refused(
        "HTTP/1.1 400 Bad Request\r\nContent-Length: 100\r\n\r\npartial",
        After::Hold,
        &cfg,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        err.client_go_text(),
        "unable to upgrade connection: partial"
    );
}

#[tokio::test]
async fn redirect_is_reported_and_not_followed() {
    let (listener, addr) = bind().await;
    let (elsewhere, elsewhere_addr) = bind().await;
    let location = format!("http://{elsewhere_addr}/exec/OtherTok");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await;
        let response =
            format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n");
        s.write_all(response.as_bytes()).await.unwrap();
        // Count further connections to the same runtime: a retry would show up here.
        let mut more = 0;
        while tokio::time::timeout(Duration::from_millis(300), listener.accept())
            .await
            .is_ok()
        {
            more += 1;
        }
        (s, more)
    });
    let err = upgrade_spdy(&url("http", addr, EXEC_PATH), &PROTOCOLS, &test_config())
        .await
        .expect_err("a redirect is an error");
    let (_conn, more) = server.await.unwrap();
    assert_eq!(more, 0, "the upgrade was retried");
    let followed = tokio::time::timeout(Duration::from_millis(300), elsewhere.accept()).await;
    assert!(followed.is_err(), "the redirect was followed");

    let UpstreamError::Redirect {
        status, location, ..
    } = &err
    else {
        panic!("expected Redirect, got {err:?}");
    };
    assert_eq!(*status, StatusCode::FOUND);
    assert_eq!(*location, format!("http://{elsewhere_addr}/exec/Othe…"));
    let text = err.to_string();
    assert!(text.starts_with("error sending request: Post \""), "{text}");
    assert!(text.ends_with("redirect not allowed"), "{text}");
    assert!(
        !text.contains("OtherTok") && !text.contains(TOKEN),
        "{text}"
    );
}

#[tokio::test]
async fn oversized_response_head_is_refused() {
    let (listener, addr) = bind().await;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\n")
            .await
            .unwrap();
        let line = b"X-Junk: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(64);
        // Endless headers; stops when the client hangs up.
        while s.write_all(&line).await.is_ok() {}
    });
    let cfg = UpstreamConfig {
        max_response_header_bytes: 4096,
        ..test_config()
    };
    let err = upgrade_spdy(&url("http", addr, EXEC_PATH), &PROTOCOLS, &cfg)
        .await
        .expect_err("head too large");
    assert!(
        matches!(
            err,
            UpstreamError::ResponseHeaderTooLarge { limit: 4096, .. }
        ),
        "{err:?}"
    );
    server.await.unwrap();
}

/// An endless response head, counting what it hands out.
struct EndlessHead {
    served: usize,
}

impl AsyncRead for EndlessHead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        const PREFIX: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n";
        const LINE: &[u8] = b"X-Junk: a\r\n";
        while buf.remaining() > 0 {
            let i = self.served;
            let b = if i < PREFIX.len() {
                PREFIX[i]
            } else {
                LINE[(i - PREFIX.len()) % LINE.len()]
            };
            buf.put_slice(&[b]);
            self.served += 1;
        }
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn head_read_holds_at_most_one_chunk_past_the_cap() {
    let mut endless = EndlessHead { served: 0 };
    let result = read_head(&mut endless, 4096).await;
    assert!(matches!(result, Err(HeadError::TooLarge)), "{result:?}");
    assert!(endless.served <= 4096 + READ_CHUNK, "{}", endless.served);
}

#[tokio::test]
async fn head_at_the_cap_is_accepted_with_its_leftover() {
    let mut wire = SPDY_101.as_bytes().to_vec();
    wire.extend_from_slice(SPDY_BYTES);
    let (buf, end) = read_head(&mut &wire[..], SPDY_101.len()).await.unwrap();
    assert_eq!(end, SPDY_101.len());
    assert_eq!(&buf[end..], SPDY_BYTES);
    let result = read_head(&mut &wire[..], SPDY_101.len() - 1).await;
    assert!(matches!(result, Err(HeadError::TooLarge)), "{result:?}");
}

#[tokio::test]
async fn silent_runtime_times_out_awaiting_headers() {
    let (listener, addr) = bind().await;
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(s);
    });
    let cfg = UpstreamConfig {
        response_header_timeout: Duration::from_millis(200),
        ..test_config()
    };
    let started = Instant::now();
    let err = upgrade_spdy(&url("http", addr, EXEC_PATH), &PROTOCOLS, &cfg)
        .await
        .expect_err("silence");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(err, UpstreamError::ResponseHeaderTimeout { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("timeout awaiting response headers")
    );
    server.abort();
}

#[tokio::test]
async fn runtime_closing_before_answering_is_a_transport_error() {
    let (listener, addr) = bind().await;
    let server = runtime(listener, Vec::new(), After::Close);
    let err = upgrade_spdy(&url("http", addr, EXEC_PATH), &PROTOCOLS, &test_config())
        .await
        .expect_err("EOF");
    server.await.unwrap();
    assert!(matches!(err, UpstreamError::Transport { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("error sending request: Post \"http://{addr}{REDACTED_EXEC_PATH}\": EOF")
    );
}

#[tokio::test]
async fn garbage_response_is_malformed() {
    let err = refused("SPDY/3.1 hello\r\n\r\n", After::Hold, &test_config()).await;
    assert!(
        matches!(err, UpstreamError::MalformedResponse { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn dead_port_is_a_dial_error_without_the_token() {
    let (listener, addr) = bind().await;
    drop(listener);
    let err = upgrade_spdy(&url("http", addr, EXEC_PATH), &PROTOCOLS, &test_config())
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, UpstreamError::Dial { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::Upstream);
    assert_eq!(
        err.client_go_text(),
        format!(
            "error sending request: Post \"http://{addr}{REDACTED_EXEC_PATH}\": \
             dial tcp {addr}: connect: connection refused"
        )
    );
}

#[tokio::test]
async fn unusable_urls_fail_before_connecting() {
    let cfg = test_config();
    for bad in ["ftp://127.0.0.1/exec/x", "/exec/Vh2Ua5Zr"] {
        let err = upgrade_spdy(&bad.parse().unwrap(), &PROTOCOLS, &cfg)
            .await
            .expect_err(bad);
        assert!(matches!(err, UpstreamError::InvalidUrl { .. }), "{err:?}");
        assert_eq!(err.fault(), Fault::Proxy);
    }
    // https without a TLS config: no connection attempted.
    let (listener, addr) = bind().await;
    let err = upgrade_spdy(&url("https", addr, EXEC_PATH), &PROTOCOLS, &cfg)
        .await
        .expect_err("no TLS config");
    assert!(matches!(err, UpstreamError::NoTlsConfig { .. }), "{err:?}");
    assert!(!err.to_string().contains(TOKEN));
    let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
    assert!(accepted.is_err());
}

// ---- TLS ----

/// A private CA, a serving certificate it signed, and a client certificate it signed.
struct Pki {
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    client_cert_pem: String,
    client_key_pem: String,
    ca_der: CertificateDer<'static>,
}

fn pki(server_names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "upstream test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let names: Vec<String> = server_names.iter().map(|n| n.to_string()).collect();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();

    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["ws-spdy-bridge".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();

    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        server_chain: vec![server_cert.der().clone()],
        server_key: server_key.serialize_der(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

fn server_config(pki: &Pki, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone()));
    let mut config = builder
        .with_single_cert(pki.server_chain.clone(), key)
        .unwrap();
    // The runtime would pick h2 if it were offered.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What the TLS runtime saw.
struct TlsSeen {
    offered_alpn: Option<Vec<Vec<u8>>>,
    request: Vec<u8>,
    peer_certificates: usize,
}

/// A TLS runtime that records the ClientHello's ALPN list, then answers one upgrade with a 101
/// followed by SPDY bytes.
fn tls_runtime(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> JoinHandle<std::io::Result<TlsSeen>> {
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let offered_alpn = start
            .client_hello()
            .alpn()
            .map(|list| list.map(<[u8]>::to_vec).collect());
        let mut tls = start.into_stream(config).await?;
        let request = read_request(&mut tls).await;
        let mut response = SPDY_101.as_bytes().to_vec();
        response.extend_from_slice(SPDY_BYTES);
        tls.write_all(&response).await?;
        tls.flush().await?;
        let peer_certificates = tls.get_ref().1.peer_certificates().map_or(0, |c| c.len());
        // Wait for the client to hang up so the 101 is not cut short.
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        Ok(TlsSeen {
            offered_alpn,
            request,
            peer_certificates,
        })
    })
}

fn tls_config(tls: Arc<rustls::ClientConfig>) -> UpstreamConfig {
    UpstreamConfig {
        tls: Some(tls),
        ..test_config()
    }
}

async fn finish<S: AsyncWrite + Unpin>(io: &mut S) {
    io.shutdown().await.unwrap();
}

#[tokio::test]
async fn https_upgrade_with_a_private_ca_offers_only_http_1_1() {
    let pki = pki(&["127.0.0.1"]);
    let (listener, addr) = bind().await;
    let server = tls_runtime(listener, server_config(&pki, false));
    let tls = tls_client_config(Some(pki.ca_pem.as_bytes()), None, false).unwrap();
    let mut upgraded = upgrade_spdy(&url("https", addr, EXEC_PATH), &PROTOCOLS, &tls_config(tls))
        .await
        .unwrap();
    assert!(upgraded.io.is_tls());
    assert_eq!(upgraded.io.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(upgraded.protocol.as_deref(), Some("v4.channel.k8s.io"));
    // The leftover may or may not share a TLS record with the head; either way no byte is lost.
    let mut after_head = upgraded.leftover.to_vec();
    while after_head.len() < SPDY_BYTES.len() {
        let mut more = [0u8; 64];
        let n = upgraded.io.read(&mut more).await.unwrap();
        assert!(n > 0, "EOF before the SPDY bytes");
        after_head.extend_from_slice(&more[..n]);
    }
    assert_eq!(after_head, SPDY_BYTES);
    finish(&mut upgraded.io).await;
    drop(upgraded);

    let seen = server.await.unwrap().unwrap();
    assert_eq!(seen.offered_alpn, Some(vec![b"http/1.1".to_vec()]));
    assert!(
        seen.request
            .starts_with(format!("POST {EXEC_PATH} HTTP/1.1\r\n").as_bytes())
    );
    assert_eq!(seen.peer_certificates, 0);
}

#[tokio::test]
async fn https_with_the_wrong_ca_is_a_tls_error() {
    let runtime_pki = pki(&["127.0.0.1"]);
    let other_pki = pki(&["127.0.0.1"]);
    let (listener, addr) = bind().await;
    let server = tls_runtime(listener, server_config(&runtime_pki, false));
    let tls = tls_client_config(Some(other_pki.ca_pem.as_bytes()), None, false).unwrap();
    let err = upgrade_spdy(&url("https", addr, EXEC_PATH), &PROTOCOLS, &tls_config(tls))
        .await
        .expect_err("unknown issuer");
    assert!(matches!(err, UpstreamError::Tls { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("error sending request: Post \"https://"),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "{text}");
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() {
    // Neither the issuer nor the name matches anything the client knows.
    let pki = pki(&["runtime.invalid"]);
    let (listener, addr) = bind().await;
    let server = tls_runtime(listener, server_config(&pki, false));
    let tls = tls_client_config(None, None, true).unwrap();
    let mut upgraded = upgrade_spdy(&url("https", addr, EXEC_PATH), &PROTOCOLS, &tls_config(tls))
        .await
        .unwrap();
    assert!(upgraded.io.is_tls());
    finish(&mut upgraded.io).await;
    drop(upgraded);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn client_certificate_is_presented_when_configured() {
    let pki = pki(&["127.0.0.1"]);
    let (listener, addr) = bind().await;
    let server = tls_runtime(listener, server_config(&pki, true));
    let tls = tls_client_config(
        Some(pki.ca_pem.as_bytes()),
        Some((
            pki.client_cert_pem.as_bytes(),
            pki.client_key_pem.as_bytes(),
        )),
        false,
    )
    .unwrap();
    let mut upgraded = upgrade_spdy(&url("https", addr, EXEC_PATH), &PROTOCOLS, &tls_config(tls))
        .await
        .unwrap();
    finish(&mut upgraded.io).await;
    drop(upgraded);
    let seen = server.await.unwrap().unwrap();
    assert_eq!(seen.peer_certificates, 1);
}

#[tokio::test]
async fn stalled_tls_handshake_hits_the_connect_timeout() {
    let pki = pki(&["127.0.0.1"]);
    let (listener, addr) = bind().await;
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(s);
    });
    let tls = tls_client_config(Some(pki.ca_pem.as_bytes()), None, false).unwrap();
    let cfg = UpstreamConfig {
        connect_timeout: Duration::from_millis(200),
        ..tls_config(tls)
    };
    let started = Instant::now();
    let err = upgrade_spdy(&url("https", addr, EXEC_PATH), &PROTOCOLS, &cfg)
        .await
        .expect_err("no ServerHello");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(err, UpstreamError::ConnectTimeout { .. }),
        "{err:?}"
    );
    server.abort();
}

#[test]
fn tls_config_needs_trust_anchors_and_real_pem() {
    assert!(matches!(
        tls_client_config(None, None, false),
        Err(TlsConfigError::NoTrustAnchors)
    ));
    assert!(matches!(
        tls_client_config(Some(b"not a pem"), None, false),
        Err(TlsConfigError::NoCertificate { .. })
    ));
    let pki = pki(&["127.0.0.1"]);
    assert!(matches!(
        tls_client_config(
            Some(pki.ca_pem.as_bytes()),
            Some((pki.client_cert_pem.as_bytes(), b"no key here")),
            false
        ),
        Err(TlsConfigError::NoPrivateKey)
    ));
    let config = tls_client_config(Some(pki.ca_pem.as_bytes()), None, false).unwrap();
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
}
