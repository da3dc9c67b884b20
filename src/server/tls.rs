//! TLS on the streaming listener: certificates from PEM files, optional client-certificate
//! authentication, and reloading both when the files change (protocol.md §9).
//!
//! Two things can change on disk, and they are swapped differently:
//!
//! * the serving certificate and key live in a [`ResolvesServerCert`] that every
//!   [`ServerConfig`] shares, so a new pair is what the next ClientHello gets;
//! * the client CA bundle is part of the client-certificate verifier, which rustls fixes when a
//!   [`ServerConfig`] is built, so a new bundle means a new `ServerConfig`, swapped behind a
//!   lock that each handshake reads once.
//!
//! Live connections keep the configuration they were accepted with: a reload never touches
//! them. A replacement that does not load (unreadable, not PEM, a key that does not match the
//! certificate) is logged once and the previous one stays in service.

use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use crate::upstream::ALPN_HTTP_1_1;

/// Default [`TlsConfig::reload_interval`]: 10 s.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Default [`TlsConfig::handshake_timeout`]: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings of the streaming listener. Without them the listener speaks plain HTTP.
///
/// In a config file (the `tls` section):
///
/// ```toml
/// [tls]
/// cert_file = "/etc/ws-spdy-bridge/tls.crt"
/// key_file = "/etc/ws-spdy-bridge/tls.key"
/// client_ca_file = "/etc/ws-spdy-bridge/clients-ca.crt"  # optional: require client certs
/// reload_interval = "10s"
/// handshake_timeout = "10s"
/// ```
///
/// Durations are written as a number with a unit (`ms`, `s`, `m`, `h`), or a bare number of
/// seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The serving certificate chain, PEM, leaf first. Required. Reloaded when it changes.
    pub cert_file: PathBuf,
    /// The private key of the leaf certificate, PEM (PKCS#8, PKCS#1 or SEC1). Required.
    /// Reloaded when it changes; it must match [`cert_file`](Self::cert_file).
    pub key_file: PathBuf,
    /// Client-certificate authentication: when set, every client must present a certificate
    /// that chains to one of the CA certificates in this PEM bundle, or the TLS handshake
    /// fails, before any HTTP request is read and so before the runtime is contacted
    /// (protocol.md C-08). Reloaded when it changes. Default none: no client certificate is
    /// requested (authenticate some other way, or only listen where every peer is trusted).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the three files are read and compared with what is in service. Zero turns
    /// reloading off. Default [`DEFAULT_RELOAD_INTERVAL`] (10 s): certificate managers
    /// (cert-manager, kubelet's own rotation) renew well ahead of expiry, so seconds are
    /// plenty, and reading a few small files is cheap.
    #[serde(default = "default_reload_interval", with = "duration_text")]
    pub reload_interval: Duration,
    /// Time allowed for a client's TLS handshake, from the TCP accept. A peer that connects
    /// and stays silent is disconnected then. Default [`DEFAULT_HANDSHAKE_TIMEOUT`] (10 s).
    #[serde(default = "default_handshake_timeout", with = "duration_text")]
    pub handshake_timeout: Duration,
}

fn default_reload_interval() -> Duration {
    DEFAULT_RELOAD_INTERVAL
}

fn default_handshake_timeout() -> Duration {
    DEFAULT_HANDSHAKE_TIMEOUT
}

impl TlsConfig {
    /// Server TLS from a certificate chain and key file, with every other setting at its
    /// default.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        TlsConfig {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Why listener TLS could not be set up or a reload was refused. Always the operator's
/// configuration or files; each variant names the config key involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key}: reading {}: {source}", path.display())]
    Read {
        /// The config key: `cert_file`, `key_file` or `client_ca_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not valid PEM.
    #[error("{key}: {} is not valid PEM: {source}", path.display())]
    Pem {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: io::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{key}: {} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The config key: `cert_file` or `client_ca_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error("key_file: {} holds no PEM private key", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The certificate and key do not form a usable pair: an unsupported key type, a
    /// certificate that does not parse, or a key that does not belong to the certificate.
    #[error("cert_file/key_file: {0}")]
    Certificate(rustls::Error),
    /// A CA certificate was rejected as a trust anchor.
    #[error("client_ca_file: CA certificate rejected: {0}")]
    ClientCa(rustls::Error),
    /// The client-certificate verifier could not be built from the CA bundle.
    #[error("client_ca_file: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// rustls refused the configuration.
    #[error("building the listener TLS config: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// The [`TlsConfig`] key at fault: `cert_file`, `key_file`, `client_ca_file`, or
    /// `cert_file` for a pair that does not match and for a refusal of the whole config.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Pem { key, .. }
            | TlsError::NoCertificate { key, .. } => key,
            TlsError::NoPrivateKey { .. } => "key_file",
            TlsError::ClientCa(_) | TlsError::ClientVerifier(_) => "client_ca_file",
            TlsError::Certificate(_) | TlsError::Rustls(_) => "cert_file",
        }
    }
}

/// What one reload check did with one input (the certificate and key pair, or the client CA
/// bundle).
#[derive(Debug)]
pub enum FileReload {
    /// The files hold what is already in service (or there is no such input).
    Unchanged,
    /// New content loaded and in service from the next handshake on.
    Reloaded,
    /// New content that does not load; the previous one stays in service.
    Rejected(TlsError),
}

impl FileReload {
    /// Whether new content went into service.
    pub fn is_reloaded(&self) -> bool {
        matches!(self, FileReload::Reloaded)
    }

    /// Whether new content was refused.
    pub fn is_rejected(&self) -> bool {
        matches!(self, FileReload::Rejected(_))
    }
}

/// The result of [`ServerTls::reload`].
#[derive(Debug)]
pub struct ReloadReport {
    /// The serving certificate and key.
    pub certificate: FileReload,
    /// The client CA bundle.
    pub client_ca: FileReload,
}

/// Why a client's TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The handshake did not finish within [`TlsConfig::handshake_timeout`].
    #[error("TLS handshake not finished within {0:?}")]
    Timeout(Duration),
    /// The handshake failed (I/O error, or a TLS error wrapped by tokio-rustls).
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
}

impl HandshakeError {
    /// A bounded label for the failure, for logs and metrics: `timeout`,
    /// `client_certificate` (missing or not trusted), `alpn` (the client offered ALPN
    /// protocols but not `http/1.1`), `tls` (any other TLS error) or `io`.
    pub fn reason(&self) -> &'static str {
        let HandshakeError::Tls(e) = self else {
            return "timeout";
        };
        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(
                rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertificate(_)
                | rustls::Error::InvalidCertRevocationList(_),
            ) => "client_certificate",
            Some(rustls::Error::NoApplicationProtocol) => "alpn",
            Some(_) => "tls",
            None => "io",
        }
    }
}

/// The serving certificate in force, swapped whole on reload.
#[derive(Debug)]
struct ReloadingCert(RwLock<Arc<CertifiedKey>>);

impl ReloadingCert {
    fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Fingerprints of what is in service and of what was last refused, so that an unchanged file
/// is not parsed again and a broken one is logged once rather than every interval.
#[derive(Default)]
struct Fingerprints {
    certificate: u64,
    client_ca: Option<u64>,
    certificate_refused: Option<u64>,
    client_ca_refused: Option<u64>,
}

/// The listener's TLS state: the configuration each handshake uses, and how to reload it.
pub struct ServerTls {
    cfg: TlsConfig,
    provider: Arc<CryptoProvider>,
    cert: Arc<ReloadingCert>,
    server: RwLock<Arc<ServerConfig>>,
    fingerprints: Mutex<Fingerprints>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate, key and (if configured) client CA bundle. Any error is fatal
    /// here: there is nothing older to fall back to.
    pub fn load(cfg: TlsConfig) -> Result<Arc<ServerTls>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = read_pair(&cfg)?;
        let certified = certified_key(&provider, &cfg, &cert_pem, &key_pem)?;
        let cert = Arc::new(ReloadingCert(RwLock::new(Arc::new(certified))));
        let mut fingerprints = Fingerprints {
            certificate: fingerprint(&[&cert_pem, &key_pem]),
            ..Fingerprints::default()
        };
        let roots = match &cfg.client_ca_file {
            Some(path) => {
                let pem = read_file("client_ca_file", path)?;
                let roots = client_roots(path, &pem)?;
                fingerprints.client_ca = Some(fingerprint(&[&pem]));
                Some(roots)
            }
            None => None,
        };
        let server = server_config(&provider, cert.clone(), roots)?;
        Ok(Arc::new(ServerTls {
            cfg,
            provider,
            cert,
            server: RwLock::new(server),
            fingerprints: Mutex::new(fingerprints),
        }))
    }

    /// The settings this was loaded from.
    pub fn config(&self) -> &TlsConfig {
        &self.cfg
    }

    /// The rustls configuration the next handshake uses.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The certificate chain the next handshake presents, leaf first.
    pub fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.cert.current().cert.clone()
    }

    /// Reads the files and puts whatever changed and loads into service. Blocking file I/O:
    /// from async code run it with `spawn_blocking`. Refusals are logged (once per distinct
    /// content) and reported.
    pub fn reload(&self) -> ReloadReport {
        let mut fp = self.fingerprints.lock().unwrap_or_else(|e| e.into_inner());
        let certificate = self.reload_certificate(&mut fp);
        let client_ca = self.reload_client_ca(&mut fp);
        ReloadReport {
            certificate,
            client_ca,
        }
    }

    fn reload_certificate(&self, fp: &mut Fingerprints) -> FileReload {
        let (cert_pem, key_pem) = match read_pair(&self.cfg) {
            Ok(pair) => pair,
            Err(e) => {
                // A file missing for a moment (a swap in progress) is refused like a broken
                // one; the next check picks up the finished swap.
                let print = fingerprint(&[e.to_string().as_bytes()]);
                log_refusal(&mut fp.certificate_refused, print, "certificate", &e);
                return FileReload::Rejected(e);
            }
        };
        let print = fingerprint(&[&cert_pem, &key_pem]);
        if print == fp.certificate {
            fp.certificate_refused = None;
            return FileReload::Unchanged;
        }
        match certified_key(&self.provider, &self.cfg, &cert_pem, &key_pem) {
            Ok(key) => {
                self.cert.set(Arc::new(key));
                fp.certificate = print;
                fp.certificate_refused = None;
                info!(
                    cert_file = %self.cfg.cert_file.display(),
                    "reloaded the serving certificate; new handshakes present it"
                );
                FileReload::Reloaded
            }
            Err(e) => {
                log_refusal(&mut fp.certificate_refused, print, "certificate", &e);
                FileReload::Rejected(e)
            }
        }
    }

    fn reload_client_ca(&self, fp: &mut Fingerprints) -> FileReload {
        let Some(path) = &self.cfg.client_ca_file else {
            return FileReload::Unchanged;
        };
        let pem = match read_file("client_ca_file", path) {
            Ok(pem) => pem,
            Err(e) => {
                let print = fingerprint(&[e.to_string().as_bytes()]);
                log_refusal(&mut fp.client_ca_refused, print, "client CA bundle", &e);
                return FileReload::Rejected(e);
            }
        };
        let print = fingerprint(&[&pem]);
        if Some(print) == fp.client_ca {
            fp.client_ca_refused = None;
            return FileReload::Unchanged;
        }
        let built = client_roots(path, &pem)
            .and_then(|roots| server_config(&self.provider, self.cert.clone(), Some(roots)));
        match built {
            Ok(server) => {
                *self.server.write().unwrap_or_else(|e| e.into_inner()) = server;
                fp.client_ca = Some(print);
                fp.client_ca_refused = None;
                info!(
                    client_ca_file = %path.display(),
                    "reloaded the client CA bundle; new handshakes are verified against it"
                );
                FileReload::Reloaded
            }
            Err(e) => {
                log_refusal(&mut fp.client_ca_refused, print, "client CA bundle", &e);
                FileReload::Rejected(e)
            }
        }
    }

    /// Starts polling the files every [`TlsConfig::reload_interval`] (none if zero). The task
    /// holds only a weak reference and ends once this `ServerTls` is dropped.
    pub fn spawn_reloader(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        let interval = self.cfg.reload_interval;
        if interval.is_zero() {
            return None;
        }
        let this: Weak<ServerTls> = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(tls) = this.upgrade() else { break };
                if tokio::task::spawn_blocking(move || drop(tls.reload()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }))
    }

    /// The TLS handshake with a client, within [`TlsConfig::handshake_timeout`], with the
    /// configuration in force now.
    pub async fn accept(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config());
        match tokio::time::timeout(self.cfg.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(HandshakeError::Tls(e)),
            Err(_) => Err(HandshakeError::Timeout(self.cfg.handshake_timeout)),
        }
    }
}

fn log_refusal(last: &mut Option<u64>, print: u64, what: &str, e: &TlsError) {
    if *last != Some(print) {
        warn!(error = %e, "the new {what} does not load; keeping the one in service");
        *last = Some(print);
    }
}

/// A content fingerprint, to notice changes. Not a security measure: whoever can write the
/// files decides what is served anyway.
fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    for part in parts {
        h.write_usize(part.len());
        h.write(part);
    }
    h.finish()
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn read_pair(cfg: &TlsConfig) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    Ok((
        read_file("cert_file", &cfg.cert_file)?,
        read_file("key_file", &cfg.key_file)?,
    ))
}

fn read_certs(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            key,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn certified_key(
    provider: &CryptoProvider,
    cfg: &TlsConfig,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs("cert_file", &cfg.cert_file, cert_pem)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|source| TlsError::Pem {
            key: "key_file",
            path: cfg.key_file.clone(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: cfg.key_file.clone(),
        })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Certificate)?;
    // `from_der` lets a key whose public half is unknown through; ring always knows it, so
    // insist: a half-swapped pair (new certificate, old key) must not go into service.
    certified.keys_match().map_err(TlsError::Certificate)?;
    Ok(certified)
}

fn client_roots(path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("client_ca_file", path, pem)? {
        roots.add(cert).map_err(TlsError::ClientCa)?;
    }
    Ok(Arc::new(roots))
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    cert: Arc<ReloadingCert>,
    client_roots: Option<Arc<RootCertStore>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_roots {
        // Required, not optional: a client without a certificate fails the handshake.
        Some(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    // HTTP/2 has no Upgrade: a client offering `h2, http/1.1` must get http/1.1 (C-07).
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// Completes the TLS handshake when `tls` is set; logs and returns `None` when it fails.
pub(crate) async fn accept_client(
    tls: Option<&ServerTls>,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
) -> Option<ClientIo> {
    let Some(tls) = tls else {
        return Some(ClientIo::Plain(tcp));
    };
    match tls.accept(tcp).await {
        Ok(stream) => Some(ClientIo::Tls(Box::new(stream))),
        Err(e) => {
            let reason = e.reason();
            if reason == "client_certificate" {
                info!(%peer, reason, error = %e, "client refused in the TLS handshake");
            } else {
                debug!(%peer, reason, error = %e, "TLS handshake failed");
            }
            None
        }
    }
}

/// A client connection, plain or TLS, as one concrete type for hyper.
#[derive(Debug)]
pub enum ClientIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS. Boxed: a rustls connection is large.
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientIo {
    /// The ALPN protocol agreed with the client, if TLS and one was agreed.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            ClientIo::Plain(_) => None,
            ClientIo::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

/// Ends a TLS connection with close_notify, as Go's `tls.Conn.Close` does, whoever drops it:
/// the sessions end a client connection by dropping it after their WebSocket Close frame, and
/// without the alert a client sees a truncated stream instead of a clean end (rustls reports
/// "peer closed connection without sending TLS close_notify"). Best effort: the alert is a
/// few dozen bytes, written only if the socket takes them now.
impl Drop for ClientIo {
    fn drop(&mut self) {
        let ClientIo::Tls(stream) = self else {
            return;
        };
        let (tcp, conn) = stream.get_mut();
        conn.send_close_notify();
        let mut socket = TryWrite(tcp);
        while conn.wants_write() {
            match conn.write_tls(&mut socket) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
}

/// Non-blocking writes to a tokio socket from synchronous code.
struct TryWrite<'a>(&'a TcpStream);

impl io::Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// Half-close: a TCP FIN, or TLS close_notify then FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Durations in config files: `"500ms"`, `"10s"`, `"5m"`, `"1h"`, or a bare number of seconds
/// (a number, or a string of digits as environment variables give). Written back as
/// milliseconds or seconds.
pub mod duration_text {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    /// Writes `d` as `"<n>s"` when whole seconds, else `"<n>ms"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_millis() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        }
    }

    /// Reads a duration; see the module documentation for the forms.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    /// Parses `"500ms"`, `"10s"`, `"5m"`, `"1h"` or `"10"` (seconds).
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number.parse().map_err(|_| {
            format!("invalid duration {text:?}: expected e.g. \"10s\" or \"500ms\"")
        })?;
        let unit_ms: u64 = match unit.trim() {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            other => {
                return Err(format!(
                    "invalid duration unit {other:?} in {text:?}: use ms, s, m or h"
                ));
            }
        };
        n.checked_mul(unit_ms)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("duration {text:?} is too large"))
    }

    struct DurationVisitor;

    impl<'de> Visitor<'de> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"10s\" or \"500ms\", or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|e| E::custom(format!("invalid duration: {e}")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(duration_text::parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration_text::parse("10"), Ok(Duration::from_secs(10)));
        assert_eq!(
            duration_text::parse("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(duration_text::parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration_text::parse("1h"), Ok(Duration::from_secs(3600)));
        assert!(duration_text::parse("ten").is_err());
        assert!(duration_text::parse("10d").is_err());
        assert!(duration_text::parse("-1s").is_err());
    }

    #[test]
    fn tls_config_defaults_and_rejects_unknown_keys() {
        let cfg: TlsConfig =
            serde_json::from_str(r#"{"cert_file":"/c.pem","key_file":"/k.pem"}"#).unwrap();
        assert_eq!(cfg, TlsConfig::new("/c.pem", "/k.pem"));
        assert_eq!(cfg.reload_interval, DEFAULT_RELOAD_INTERVAL);
        assert_eq!(cfg.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        let cfg: TlsConfig = serde_json::from_str(
            r#"{"cert_file":"c","key_file":"k","client_ca_file":"ca","reload_interval":"500ms","handshake_timeout":3}"#,
        )
        .unwrap();
        assert_eq!(cfg.client_ca_file.as_deref(), Some(Path::new("ca")));
        assert_eq!(cfg.reload_interval, Duration::from_millis(500));
        assert_eq!(cfg.handshake_timeout, Duration::from_secs(3));
        let err = serde_json::from_str::<TlsConfig>(r#"{"cert_file":"c","key_file":"k","ca":"x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `ca`"), "{err}");
        assert!(serde_json::from_str::<TlsConfig>(r#"{"cert_file":"c"}"#).is_err());
        let back = serde_json::to_value(&cfg).unwrap();
        assert_eq!(back["reload_interval"], "500ms");
        assert_eq!(back["handshake_timeout"], "3s");
    }

    #[test]
    fn missing_files_name_their_key() {
        let err = ServerTls::load(TlsConfig::new("/nonexistent/c.pem", "/nonexistent/k.pem"))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cert_file: reading /nonexistent/c.pem"),
            "{err}"
        );
    }
}
