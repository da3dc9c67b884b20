//! TLS on both sides of the bridge (protocol.md §9): `wss://` on the streaming listener with
//! ALPN `http/1.1` only (C-07), client-certificate authentication that refuses in the
//! handshake, before any runtime contact (C-08), certificate and client-CA files reloaded
//! from disk without disturbing live sessions, and `https` runtime URLs with a private CA, a
//! client certificate or the insecure switch.
//!
//! Every certificate is made here with rcgen; the runtime is the simulator, behind a TLS
//! terminator (tokio-rustls, spliced to the simulator's TCP port) for the upstream cases.

#[path = "support/bridge_harness.rs"]
mod bridge_harness;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge_harness::{
    SUCCESS, V5, bounded, bridge_config, bridge_path, exec, sim, start_bridge, within,
};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use ws_spdy_bridge::runtime_sim::RuntimeSim;
use ws_spdy_bridge::server::tls::{FileReload, ServerTls, TlsError};
use ws_spdy_bridge::server::{Bridge, BridgeConfig, TlsConfig};
use ws_spdy_bridge::upstream::{UpstreamTlsConfig, UpstreamTlsError, tls_client_config};

const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";
/// Reload poll period in these tests: short, so a swap shows within a few of them.
const RELOAD: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Certificates and files

/// A private CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate the CA signed, with its key, as PEM files would hold them.
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A serving certificate for `localhost` and `127.0.0.1` with the given serial number.
    fn server(&self, serial: u64) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.leaf(params)
    }

    /// A client certificate.
    fn client(&self, name: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(params)
    }

    fn leaf(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ws-spdy-bridge-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces `path` whole, as certificate managers do (write aside, rename over), so that a
/// reader sees the old or the new content and never half of it.
fn replace(path: &Path, content: impl AsRef<[u8]>) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// Listener TLS files for `leaf` (and a client CA bundle when given) in `dir`.
fn listener_tls(dir: &TempDir, leaf: &Leaf, client_ca: Option<&str>) -> TlsConfig {
    replace(&dir.path("tls.crt"), &leaf.cert_pem);
    replace(&dir.path("tls.key"), &leaf.key_pem);
    let mut cfg = TlsConfig::new(dir.path("tls.crt"), dir.path("tls.key"));
    if let Some(ca) = client_ca {
        replace(&dir.path("clients-ca.crt"), ca);
        cfg.client_ca_file = Some(dir.path("clients-ca.crt"));
    }
    cfg.reload_interval = RELOAD;
    cfg
}

/// Installs the listener certificate pair `leaf` over the files of `cfg`.
fn swap_certificate(cfg: &TlsConfig, leaf: &Leaf) {
    // Key first, then certificate: in between, the pair does not match and must be refused.
    replace(&cfg.key_file, &leaf.key_pem);
    replace(&cfg.cert_file, &leaf.cert_pem);
}

// ---------------------------------------------------------------------------------------------
// The client side

/// A client TLS configuration trusting `ca`, offering `alpn`, with an optional client
/// certificate.
fn client_tls(ca: &Ca, client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let client = client.map(|l| (l.cert_pem.as_bytes(), l.key_pem.as_bytes()));
    let mut cfg =
        Arc::unwrap_or_clone(tls_client_config(Some(ca.pem().as_bytes()), client, false).unwrap());
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// What a TLS handshake with the bridge showed.
#[derive(Clone, Debug)]
struct Seen {
    certificate: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
}

/// Connects and completes the client's side of the handshake (with TLS 1.3 the server may
/// still refuse the client's certificate after this: that shows on the first read).
async fn tls_connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<(TlsStream<TcpStream>, Seen)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let conn = stream.get_ref().1;
    let seen = Seen {
        certificate: conn.peer_certificates().expect("server certificate")[0].clone(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
    };
    Ok((stream, seen))
}

/// The leaf certificate the bridge presents to a new handshake now.
async fn served_certificate(addr: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    tls_connect(addr, client_tls(ca, None, &[HTTP11]))
        .await
        .expect("TLS handshake")
        .1
        .certificate
}

/// Waits until new handshakes present `want`.
async fn until_served(addr: SocketAddr, ca: &Ca, want: &Leaf) {
    within(
        Duration::from_secs(5),
        "the new certificate is served",
        async {
            while served_certificate(addr, ca).await != want.der {
                tokio::time::sleep(RELOAD / 2).await;
            }
        },
    )
    .await
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A v5 upgrade over `wss://`: the TLS handshake, then the WebSocket upgrade. Any failure is
/// returned as text (a refused client certificate shows either in the handshake or on the
/// first read).
async fn wss_upgrade(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(Wss, Seen), String> {
    let (stream, seen) = tls_connect(addr, tls)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let mut req = format!("wss://localhost:{}{path}", addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", http::HeaderValue::from_static(V5));
    let (ws, resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => format!(
                "HTTP {}: {}",
                resp.status().as_u16(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
            ),
            other => format!("upgrade: {other}"),
        })?;
    assert_eq!(resp.status(), 101);
    Ok((ws, seen))
}

/// Sends `data` on stdin and waits for it to come back on stdout (the command is `cat`).
async fn echo(ws: &mut Wss, data: &[u8]) {
    let mut msg = vec![0u8];
    msg.extend_from_slice(data);
    ws.send(Message::Binary(msg.into())).await.unwrap();
    let mut out = Vec::new();
    within(Duration::from_secs(5), "echo", async {
        while out.len() < data.len() {
            match ws.next().await.expect("session open").expect("message") {
                Message::Binary(b) if b[0] == 1 => out.extend_from_slice(&b[1..]),
                Message::Binary(b) => panic!("unexpected message on channel {}: {b:?}", b[0]),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(out, data);
}

/// Closes stdin (v5 CLOSE) if `close_stdin`, and reads to the end: stdout and the status.
/// The TLS stream must end cleanly (close_notify). The bridge, like x/net/websocket, closes
/// its socket right after its Close frame, so the reply tungstenite writes to that may meet a
/// reset: the one error accepted, and only after the Close frame.
async fn finish(mut ws: Wss, close_stdin: bool) -> (Vec<u8>, Option<Bytes>) {
    if close_stdin {
        ws.send(Message::Binary(Bytes::from_static(&[0xff, 0])))
            .await
            .unwrap();
    }
    let mut out = Vec::new();
    let mut status = None;
    let mut closed = false;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Binary(b)) if b[0] == 1 => out.extend_from_slice(&b[1..]),
            Ok(Message::Binary(b)) if b[0] == 3 => status = Some(b.slice(1..)),
            Ok(Message::Close(Some(c))) => {
                assert_eq!(u16::from(c.code), 1000);
                closed = true;
            }
            Ok(_) => {}
            Err(tokio_tungstenite::tungstenite::Error::Io(e))
                if closed && e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                break;
            }
            Err(e) => panic!("session ended with an error: {e}"),
        }
    }
    assert!(closed, "the bridge sent a Close frame");
    (out, status)
}

/// One `cat` exec over `wss://` with `input`, start to finish; returns what the handshake
/// showed.
async fn cat_session(
    bridge: &Bridge,
    sim: &RuntimeSim,
    tls: Arc<rustls::ClientConfig>,
    input: &[u8],
) -> Seen {
    let req = exec(&["cat"], true, true, false, false);
    let url = sim.exec(req.clone()).unwrap();
    let (mut ws, seen) = wss_upgrade(bridge.addr(), tls, &bridge_path(&url, &req))
        .await
        .expect("wss upgrade");
    echo(&mut ws, input).await;
    let (rest, status) = finish(ws, true).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(status.as_deref(), Some(SUCCESS.as_bytes()));
    seen
}

/// A bridge config with listener TLS in front of `upstream`.
fn tls_bridge(upstream: &str, tls: TlsConfig) -> BridgeConfig {
    BridgeConfig {
        tls: Some(tls),
        ..bridge_config(upstream)
    }
}

// ---------------------------------------------------------------------------------------------
// The listener

/// C-07: a client offering `h2, http/1.1` gets http/1.1, and the v5 upgrade and the session
/// work over `wss://`.
#[tokio::test]
async fn c07_wss_exec_negotiates_http_1_1_when_h2_is_offered() {
    bounded(async {
        let dir = TempDir::new();
        let ca = Ca::new("listener CA");
        let leaf = ca.server(1);
        let sim = sim().await;
        let bridge =
            start_bridge(tls_bridge(sim.base_url(), listener_tls(&dir, &leaf, None))).await;
        let seen = cat_session(
            &bridge,
            &sim,
            client_tls(&ca, None, &[H2, HTTP11]),
            b"over wss\n",
        )
        .await;
        assert_eq!(seen.alpn.as_deref(), Some(HTTP11));
        assert_eq!(seen.certificate, leaf.der);
        // No ALPN at all is fine too.
        let seen = cat_session(&bridge, &sim, client_tls(&ca, None, &[]), b"no alpn\n").await;
        assert_eq!(seen.alpn, None);
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// A client that offers ALPN but not http/1.1 cannot get a protocol that carries an Upgrade:
/// the handshake fails (no_application_protocol).
#[tokio::test]
async fn client_offering_only_h2_is_refused_in_the_handshake() {
    bounded(async {
        let dir = TempDir::new();
        let ca = Ca::new("listener CA");
        let sim = sim().await;
        let bridge = start_bridge(tls_bridge(
            sim.base_url(),
            listener_tls(&dir, &ca.server(1), None),
        ))
        .await;
        let err = tls_connect(bridge.addr(), client_tls(&ca, None, &[H2]))
            .await
            .expect_err("no protocol in common");
        assert!(
            err.to_string()
                .to_lowercase()
                .contains("noapplicationprotocol"),
            "{err}"
        );
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// Plain HTTP to the TLS listener gets nowhere, and a client that connects and says nothing
/// is disconnected after the handshake timeout.
#[tokio::test]
async fn silent_or_plaintext_clients_are_disconnected() {
    bounded(async {
        let dir = TempDir::new();
        let ca = Ca::new("listener CA");
        let sim = sim().await;
        let mut tls = listener_tls(&dir, &ca.server(1), None);
        tls.handshake_timeout = Duration::from_millis(200);
        let bridge = start_bridge(tls_bridge(sim.base_url(), tls)).await;

        let mut silent = TcpStream::connect(bridge.addr()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = within(Duration::from_secs(2), "silent client dropped", async {
            silent.read(&mut buf).await.unwrap_or(0)
        })
        .await;
        assert_eq!(n, 0, "closed without a byte");

        let url = sim
            .exec(exec(&["true"], false, true, false, false))
            .unwrap();
        let mut plain = TcpStream::connect(bridge.addr()).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut plain,
            b"GET /exec/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        within(Duration::from_secs(2), "plaintext client dropped", async {
            let _ = plain.read_to_end(&mut answer).await;
        })
        .await;
        assert!(!answer.starts_with(b"HTTP/"), "no HTTP answer: {answer:?}");
        assert_eq!(sim.outstanding_tokens(), 1, "the runtime never saw {url}");
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// Start-up fails, naming the key, when the files do not make a certificate.
#[tokio::test]
async fn unusable_certificate_files_fail_start_up() {
    let dir = TempDir::new();
    let ca = Ca::new("listener CA");
    let one = ca.server(1);
    let two = ca.server(2);
    let mut cfg = listener_tls(&dir, &one, None);
    replace(&dir.path("other.key"), &two.key_pem);
    let cases = [
        (
            TlsConfig {
                key_file: dir.path("other.key"),
                ..cfg.clone()
            },
            "cert_file/key_file",
        ),
        (
            TlsConfig {
                cert_file: dir.path("missing.crt"),
                ..cfg.clone()
            },
            "cert_file: reading",
        ),
        (
            TlsConfig {
                client_ca_file: Some(cfg.key_file.clone()),
                ..cfg.clone()
            },
            "client_ca_file",
        ),
    ];
    replace(&dir.path("garbage.key"), "not a key");
    cfg.key_file = dir.path("garbage.key");
    for (tls, want) in cases.into_iter().chain([(cfg, "key_file")]) {
        let Err(err) = Bridge::start(tls_bridge("http://127.0.0.1:1", tls)).await else {
            panic!("{want}: start-up not refused");
        };
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        let tls_err = err.get_ref().and_then(|e| e.downcast_ref::<TlsError>());
        assert!(
            want.starts_with(tls_err.expect("a TlsError").key()),
            "{want}: {err}"
        );
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Client certificates (C-08)

/// A bridge requiring client certificates from `clients`, in front of a simulator.
async fn mtls_bridge(dir: &TempDir, server_ca: &Ca, clients: &Ca) -> (RuntimeSim, Bridge) {
    let sim = sim().await;
    let tls = listener_tls(dir, &server_ca.server(1), Some(&clients.pem()));
    let bridge = start_bridge(tls_bridge(sim.base_url(), tls)).await;
    (sim, bridge)
}

/// Tries an exec with `tls` and expects a refusal in the TLS layer, before any HTTP: the
/// runtime's token is not spent.
async fn expect_refused(
    bridge: &Bridge,
    sim: &RuntimeSim,
    tls: Arc<rustls::ClientConfig>,
) -> String {
    let req = exec(&["echo", "never"], false, true, false, false);
    let url = sim.exec(req.clone()).unwrap();
    let before = sim.outstanding_tokens();
    let err = wss_upgrade(bridge.addr(), tls, &bridge_path(&url, &req))
        .await
        .expect_err("refused");
    assert!(
        !err.starts_with("HTTP"),
        "refused before any HTTP answer: {err}"
    );
    // Give a wrongly forwarded request time to arrive before checking the token.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        sim.outstanding_tokens(),
        before,
        "the runtime was not contacted"
    );
    err
}

#[tokio::test]
async fn c08_client_without_certificate_is_refused_in_the_handshake() {
    bounded(async {
        let dir = TempDir::new();
        let ca = Ca::new("listener CA");
        let clients = Ca::new("clients CA");
        let (sim, bridge) = mtls_bridge(&dir, &ca, &clients).await;
        let err = expect_refused(&bridge, &sim, client_tls(&ca, None, &[HTTP11])).await;
        assert!(err.contains("CertificateRequired"), "{err}");
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn c08_client_certificate_from_another_ca_is_refused_in_the_handshake() {
    bounded(async {
        let dir = TempDir::new();
        let ca = Ca::new("listener CA");
        let clients = Ca::new("clients CA");
        let (sim, bridge) = mtls_bridge(&dir, &ca, &clients).await;
        let stranger = Ca::new("someone else's CA").client("kubectl");
        let err = expect_refused(&bridge, &sim, client_tls(&ca, Some(&stranger), &[HTTP11])).await;
        assert!(err.contains("UnknownCA"), "{err}");
        // A server certificate of the right CA is no client certificate either.
        let wrong_use = clients.server(7);
        expect_refused(&bridge, &sim, client_tls(&ca, Some(&wrong_use), &[HTTP11])).await;
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn c08_client_certificate_from_the_configured_ca_is_accepted() {
    bounded(async {
        let dir = TempDir::new();
        let ca = Ca::new("listener CA");
        let clients = Ca::new("clients CA");
        let (sim, bridge) = mtls_bridge(&dir, &ca, &clients).await;
        let me = clients.client("kubectl");
        cat_session(
            &bridge,
            &sim,
            client_tls(&ca, Some(&me), &[H2, HTTP11]),
            b"trusted\n",
        )
        .await;
        assert_eq!(sim.outstanding_tokens(), 0);
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// A client CA bundle swapped on disk decides the next handshake; a session authenticated
/// under the old bundle goes on.
#[tokio::test]
async fn client_ca_swapped_on_disk_applies_to_the_next_handshake() {
    bounded(async {
        let dir = TempDir::new();
        let ca = Ca::new("listener CA");
        let old_clients = Ca::new("old clients CA");
        let new_clients = Ca::new("new clients CA");
        let (sim, bridge) = mtls_bridge(&dir, &ca, &old_clients).await;
        let old_me = client_tls(&ca, Some(&old_clients.client("old")), &[HTTP11]);
        let new_me = client_tls(&ca, Some(&new_clients.client("new")), &[HTTP11]);

        let req = exec(&["cat"], true, true, false, false);
        let url = sim.exec(req.clone()).unwrap();
        let (mut live, _) = wss_upgrade(bridge.addr(), old_me.clone(), &bridge_path(&url, &req))
            .await
            .unwrap();
        echo(&mut live, b"before\n").await;

        replace(&dir.path("clients-ca.crt"), new_clients.pem());
        within(Duration::from_secs(5), "new clients accepted", async {
            loop {
                let req = exec(&["true"], false, true, false, false);
                let url = sim.exec(req.clone()).unwrap();
                if let Ok((ws, _)) =
                    wss_upgrade(bridge.addr(), new_me.clone(), &bridge_path(&url, &req)).await
                {
                    let (_, status) = finish(ws, false).await;
                    assert_eq!(status.as_deref(), Some(SUCCESS.as_bytes()));
                    break;
                }
                tokio::time::sleep(RELOAD / 2).await;
            }
        })
        .await;
        expect_refused(&bridge, &sim, old_me).await;

        echo(&mut live, b"after\n").await;
        let (_, status) = finish(live, true).await;
        assert_eq!(status.as_deref(), Some(SUCCESS.as_bytes()));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Certificate reload

/// A new certificate and key swapped on disk are presented to the next handshake, while a
/// session started under the old certificate keeps running and ends normally.
#[tokio::test]
async fn certificate_swapped_on_disk_is_served_next_while_the_old_session_continues() {
    bounded(async {
        let dir = TempDir::new();
        let ca = Ca::new("listener CA");
        let (one, two) = (ca.server(1), ca.server(2));
        let sim = sim().await;
        let tls = listener_tls(&dir, &one, None);
        let bridge = start_bridge(tls_bridge(sim.base_url(), tls.clone())).await;

        let req = exec(&["cat"], true, true, false, false);
        let url = sim.exec(req.clone()).unwrap();
        let (mut old, seen) = wss_upgrade(
            bridge.addr(),
            client_tls(&ca, None, &[HTTP11]),
            &bridge_path(&url, &req),
        )
        .await
        .unwrap();
        assert_eq!(seen.certificate, one.der);
        echo(&mut old, b"first\n").await;

        swap_certificate(&tls, &two);
        until_served(bridge.addr(), &ca, &two).await;
        let seen = cat_session(&bridge, &sim, client_tls(&ca, None, &[HTTP11]), b"new\n").await;
        assert_eq!(seen.certificate, two.der);

        // The old session, on its old connection, is untouched.
        echo(&mut old, b"second\n").await;
        let (rest, status) = finish(old, true).await;
        assert!(rest.is_empty());
        assert_eq!(status.as_deref(), Some(SUCCESS.as_bytes()));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// Replacements that do not load (not PEM, a key of another certificate, a missing file)
/// leave the certificate in service; a good one after them is picked up.
#[tokio::test]
async fn broken_replacement_keeps_the_certificate_in_service() {
    bounded(async {
        let dir = TempDir::new();
        let ca = Ca::new("listener CA");
        let (one, two, three) = (ca.server(1), ca.server(2), ca.server(3));
        let sim = sim().await;
        let tls = listener_tls(&dir, &one, None);
        let bridge = start_bridge(tls_bridge(sim.base_url(), tls.clone())).await;
        let settle = || tokio::time::sleep(RELOAD * 6);

        replace(
            &tls.cert_file,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        );
        settle().await;
        assert_eq!(served_certificate(bridge.addr(), &ca).await, one.der);

        replace(&tls.cert_file, &two.cert_pem); // key still one's
        settle().await;
        assert_eq!(served_certificate(bridge.addr(), &ca).await, one.der);

        std::fs::remove_file(&tls.key_file).unwrap();
        settle().await;
        assert_eq!(served_certificate(bridge.addr(), &ca).await, one.der);
        cat_session(
            &bridge,
            &sim,
            client_tls(&ca, None, &[HTTP11]),
            b"still one\n",
        )
        .await;

        swap_certificate(&tls, &three);
        until_served(bridge.addr(), &ca, &three).await;
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// The same, step by step on [`ServerTls::reload`]: what each check reports and what the next
/// handshake would present.
#[test]
fn reload_reports_each_outcome_and_keeps_the_old_certificate_on_failure() {
    let dir = TempDir::new();
    let ca = Ca::new("listener CA");
    let clients = Ca::new("clients CA");
    let (one, two) = (ca.server(1), ca.server(2));
    let cfg = listener_tls(&dir, &one, Some(&clients.pem()));
    let tls = ServerTls::load(cfg.clone()).unwrap();
    let chain = |tls: &ServerTls| tls.certificate_chain()[0].clone();
    let config_before = tls.server_config();

    let r = tls.reload();
    assert!(matches!(r.certificate, FileReload::Unchanged), "{r:?}");
    assert!(matches!(r.client_ca, FileReload::Unchanged), "{r:?}");

    replace(&cfg.cert_file, "garbage");
    let r = tls.reload();
    assert!(r.certificate.is_rejected(), "{r:?}");
    assert_eq!(chain(&tls), one.der);

    replace(&cfg.cert_file, &two.cert_pem);
    let r = tls.reload();
    let FileReload::Rejected(e) = &r.certificate else {
        panic!("a half-swapped pair must be refused: {r:?}");
    };
    assert!(e.to_string().starts_with("cert_file/key_file"), "{e}");
    assert_eq!(chain(&tls), one.der);

    replace(&cfg.key_file, &two.key_pem);
    let r = tls.reload();
    assert!(r.certificate.is_reloaded(), "{r:?}");
    assert_eq!(chain(&tls), two.der);
    // A certificate swap keeps the rustls config (and its resumption state); the resolver
    // inside it changed.
    assert!(Arc::ptr_eq(&config_before, &tls.server_config()));

    replace(cfg.client_ca_file.as_ref().unwrap(), "garbage");
    let r = tls.reload();
    assert!(r.client_ca.is_rejected(), "{r:?}");
    assert!(Arc::ptr_eq(&config_before, &tls.server_config()));

    replace(
        cfg.client_ca_file.as_ref().unwrap(),
        Ca::new("next clients CA").pem(),
    );
    let r = tls.reload();
    assert!(r.client_ca.is_reloaded(), "{r:?}");
    assert!(!Arc::ptr_eq(&config_before, &tls.server_config()));
    assert_eq!(
        chain(&tls),
        two.der,
        "the new config serves the current certificate"
    );
    assert_eq!(tls.server_config().alpn_protocols, [HTTP11.to_vec()]);
}

// ---------------------------------------------------------------------------------------------
// Upstream TLS

/// A TLS terminator in front of the simulator, as a runtime with TLS streaming: it offers
/// `h2` and `http/1.1` (a real Go server would), optionally requires client certificates, and
/// records the ALPN protocol of each connection it spliced.
struct Terminator {
    addr: SocketAddr,
    alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    task: JoinHandle<()>,
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Terminator {
    async fn start(backend: SocketAddr, leaf: &Leaf, clients: Option<&Ca>) -> Terminator {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match clients {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.issuer.der().clone()).unwrap();
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider,
                    )
                    .build()
                    .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let key = rustls_pemfile::private_key(&mut leaf.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let mut config = builder
            .with_single_cert(vec![leaf.der.clone()], key)
            .unwrap();
        config.alpn_protocols = vec![H2.to_vec(), HTTP11.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let alpn = Arc::new(Mutex::new(Vec::new()));
        let seen = alpn.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                conns.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    seen.lock()
                        .unwrap()
                        .push(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                    let mut sim = TcpStream::connect(backend).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut sim).await;
                });
            }
        });
        Terminator { addr, alpn, task }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn spliced(&self) -> Vec<Option<Vec<u8>>> {
        self.alpn.lock().unwrap().clone()
    }
}

/// A plain-`ws` bridge in front of `upstream` with runtime TLS from `upstream_tls`.
fn https_bridge(upstream: &str, upstream_tls: &UpstreamTlsConfig) -> BridgeConfig {
    let mut cfg = bridge_config(upstream);
    cfg.upstream_cfg.tls = upstream_tls.client_config().expect("upstream TLS config");
    cfg
}

/// Runs `cat` through the bridge (plain `ws://`), returning the Status, or the HTTP refusal.
async fn ws_cat(bridge: &Bridge, sim: &RuntimeSim) -> Result<Option<Bytes>, String> {
    let req = exec(&["cat"], true, true, false, false);
    let url = sim.exec(req.clone()).unwrap();
    let tcp = TcpStream::connect(bridge.addr()).await.unwrap();
    let mut creq = format!("ws://{}{}", bridge.addr(), bridge_path(&url, &req))
        .into_client_request()
        .unwrap();
    creq.headers_mut()
        .insert("sec-websocket-protocol", http::HeaderValue::from_static(V5));
    let mut ws = match tokio_tungstenite::client_async(creq, tcp).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            return Err(format!(
                "HTTP {}: {}",
                resp.status().as_u16(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
            ));
        }
        Err(e) => panic!("upgrade: {e}"),
    };
    ws.send(Message::Binary(Bytes::from_static(b"\0via https\n")))
        .await
        .unwrap();
    ws.send(Message::Binary(Bytes::from_static(&[0xff, 0])))
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut status = None;
    let mut closed = false;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Binary(b)) if b[0] == 1 => out.extend_from_slice(&b[1..]),
            Ok(Message::Binary(b)) if b[0] == 3 => status = Some(b.slice(1..)),
            Ok(Message::Close(_)) => closed = true,
            Ok(_) => {}
            // See `finish`: the reply to the bridge's Close may meet a reset.
            Err(_) if closed => break,
            Err(e) => panic!("session ended with an error: {e}"),
        }
    }
    assert_eq!(out, b"via https\n");
    Ok(status)
}

/// Files for the upstream side in `dir`.
fn upstream_files(dir: &TempDir, ca: Option<&Ca>, client: Option<&Leaf>) -> UpstreamTlsConfig {
    let mut cfg = UpstreamTlsConfig::default();
    if let Some(ca) = ca {
        replace(&dir.path("runtime-ca.crt"), ca.pem());
        cfg.ca_file = Some(dir.path("runtime-ca.crt"));
    }
    if let Some(client) = client {
        replace(&dir.path("runtime-client.crt"), &client.cert_pem);
        replace(&dir.path("runtime-client.key"), &client.key_pem);
        cfg.client_cert_file = Some(dir.path("runtime-client.crt"));
        cfg.client_key_file = Some(dir.path("runtime-client.key"));
    }
    cfg
}

/// An `https` runtime URL with the runtime's private CA: the exec works, and the bridge
/// offered only http/1.1 though the runtime would have taken h2.
#[tokio::test]
async fn https_upstream_with_a_private_ca_runs_exec() {
    bounded(async {
        let dir = TempDir::new();
        let runtime_ca = Ca::new("runtime CA");
        let sim = sim().await;
        let term = Terminator::start(sim.addr(), &runtime_ca.server(1), None).await;
        let bridge = start_bridge(https_bridge(
            &term.url(),
            &upstream_files(&dir, Some(&runtime_ca), None),
        ))
        .await;
        let status = ws_cat(&bridge, &sim).await.expect("upgrade");
        assert_eq!(status.as_deref(), Some(SUCCESS.as_bytes()));
        assert_eq!(term.spliced(), [Some(HTTP11.to_vec())]);
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// Both sides at once: `wss://` with a client certificate in front, `https` with a client
/// certificate behind.
#[tokio::test]
async fn wss_with_client_certificate_to_https_runtime_with_client_certificate() {
    bounded(async {
        let dir = TempDir::new();
        let (listener_ca, clients) = (Ca::new("listener CA"), Ca::new("clients CA"));
        let (runtime_ca, bridge_clients) = (Ca::new("runtime CA"), Ca::new("runtime clients CA"));
        let sim = sim().await;
        let term =
            Terminator::start(sim.addr(), &runtime_ca.server(1), Some(&bridge_clients)).await;
        let upstream = upstream_files(
            &dir,
            Some(&runtime_ca),
            Some(&bridge_clients.client("bridge")),
        );
        let cfg = BridgeConfig {
            tls: Some(listener_tls(
                &dir,
                &listener_ca.server(1),
                Some(&clients.pem()),
            )),
            ..https_bridge(&term.url(), &upstream)
        };
        let bridge = start_bridge(cfg).await;
        let me = client_tls(
            &listener_ca,
            Some(&clients.client("kubectl")),
            &[H2, HTTP11],
        );
        cat_session(&bridge, &sim, me, b"end to end\n").await;
        assert_eq!(term.spliced(), [Some(HTTP11.to_vec())]);
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// A runtime whose certificate the configured CA did not sign, or that wants a client
/// certificate the bridge does not have: the client gets an upstream error (502 with a
/// Status), and the runtime never got the request (the token is still there).
#[tokio::test]
async fn https_upstream_with_the_wrong_ca_is_an_upstream_error() {
    bounded(async {
        let dir = TempDir::new();
        let runtime_ca = Ca::new("runtime CA");
        let sim = sim().await;

        let term = Terminator::start(sim.addr(), &runtime_ca.server(1), None).await;
        let wrong = upstream_files(&dir, Some(&Ca::new("not the runtime's CA")), None);
        let bridge = start_bridge(https_bridge(&term.url(), &wrong)).await;
        let err = ws_cat(&bridge, &sim).await.expect_err("refused");
        assert!(err.starts_with("HTTP 502: "), "{err}");
        assert!(err.contains(r#""kind":"Status""#), "{err}");
        assert!(err.contains("tls: "), "{err}");
        assert!(err.contains("UnknownIssuer"), "{err}");
        assert_eq!(sim.outstanding_tokens(), 1, "token not spent");
        bridge.shutdown().await;

        let term = Terminator::start(sim.addr(), &runtime_ca.server(1), Some(&Ca::new("x"))).await;
        let no_client_cert = upstream_files(&dir, Some(&runtime_ca), None);
        let bridge = start_bridge(https_bridge(&term.url(), &no_client_cert)).await;
        let err = ws_cat(&bridge, &sim).await.expect_err("refused");
        assert!(err.starts_with("HTTP 502: "), "{err}");
        assert_eq!(sim.outstanding_tokens(), 2, "token not spent");
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// `insecure_skip_verify` accepts a runtime certificate nobody configured, and says so loudly
/// when the config is built.
#[tokio::test]
async fn https_upstream_insecure_switch_works_and_warns() {
    bounded(async {
        let sim = sim().await;
        let term = Terminator::start(sim.addr(), &Ca::new("unknown CA").server(1), None).await;
        let insecure = UpstreamTlsConfig {
            insecure_skip_verify: true,
            ..UpstreamTlsConfig::default()
        };
        let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogSink(writer.clone()))
            .finish();
        let client = tracing::subscriber::with_default(subscriber, || insecure.client_config())
            .unwrap()
            .expect("a TLS config");
        let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains("insecure_skip_verify"), "{logs}");

        let mut cfg = bridge_config(&term.url());
        cfg.upstream_cfg.tls = Some(client);
        let bridge = start_bridge(cfg).await;
        let status = ws_cat(&bridge, &sim).await.expect("upgrade");
        assert_eq!(status.as_deref(), Some(SUCCESS.as_bytes()));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The upstream TLS section: nothing set means no TLS config (https URLs refused), and each
/// mistake names its key.
#[test]
fn upstream_tls_config_errors_name_the_key() {
    let dir = TempDir::new();
    let ca = Ca::new("runtime CA");
    assert!(
        UpstreamTlsConfig::default()
            .client_config()
            .unwrap()
            .is_none()
    );

    let cfg: UpstreamTlsConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, UpstreamTlsConfig::default());
    let err = serde_json::from_str::<UpstreamTlsConfig>(r#"{"ca":"x"}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `ca`"), "{err}");

    let only_cert = UpstreamTlsConfig {
        client_cert_file: Some(dir.path("c.crt")),
        ..upstream_files(&dir, Some(&ca), None)
    };
    assert!(matches!(
        only_cert.client_config(),
        Err(UpstreamTlsError::ClientCertWithoutKey)
    ));

    let client = upstream_files(&dir, None, Some(&ca.client("bridge")));
    assert!(matches!(
        client.client_config(),
        Err(UpstreamTlsError::NoTrustAnchors)
    ));

    let missing = UpstreamTlsConfig {
        ca_file: Some(dir.path("missing.crt")),
        ..UpstreamTlsConfig::default()
    };
    let err = missing.client_config().unwrap_err();
    assert!(err.to_string().starts_with("ca_file: reading "), "{err}");
    assert_eq!(err.key(), "ca_file");

    replace(&dir.path("garbage.crt"), "garbage");
    let garbage = UpstreamTlsConfig {
        ca_file: Some(dir.path("garbage.crt")),
        ..UpstreamTlsConfig::default()
    };
    let err = garbage.client_config().unwrap_err();
    assert!(err.to_string().contains("CA bundle"), "{err}");
    assert_eq!(err.key(), "ca_file");
    let swapped = UpstreamTlsConfig {
        client_cert_file: client.client_key_file.clone(),
        client_key_file: client.client_key_file.clone(),
        ..upstream_files(&dir, Some(&ca), None)
    };
    assert_eq!(
        swapped.client_config().unwrap_err().key(),
        "client_cert_file"
    );

    // With verification off the CA file is not read at all.
    let insecure = UpstreamTlsConfig {
        insecure_skip_verify: true,
        ..missing
    };
    assert!(insecure.client_config().unwrap().is_some());
}
