//! TLS client settings for `https` runtime URLs (runtime TLS streaming with a private CA).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

/// The only ALPN protocol offered: HTTP/2 has no Upgrade, so `h2` must never be negotiated
/// (protocol.md §2.1, §9).
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Why a TLS client configuration could not be built. Always the operator's configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A PEM input could not be read.
    #[error("reading the {what} PEM: {source}")]
    Pem {
        /// Which input: `CA bundle`, `client certificate` or `client key`.
        what: &'static str,
        /// The parse error.
        source: io::Error,
    },
    /// A PEM input held no certificate.
    #[error("the {what} PEM holds no certificate")]
    NoCertificate {
        /// Which input.
        what: &'static str,
    },
    /// The client key PEM held no private key.
    #[error("the client key PEM holds no private key")]
    NoPrivateKey,
    /// A CA certificate was rejected as a trust anchor.
    #[error("CA bundle certificate rejected: {0}")]
    BadCaCertificate(rustls::Error),
    /// Neither a CA bundle nor `insecure_skip_verify`: there is no default trust store on
    /// purpose, runtimes use private CAs.
    #[error("upstream TLS needs a CA bundle (or verification explicitly disabled)")]
    NoTrustAnchors,
    /// rustls refused the configuration (for example a client key that does not match).
    #[error("building the upstream TLS config: {0}")]
    Rustls(#[from] rustls::Error),
}

/// TLS to the runtime for `https` runtime URLs (runtime TLS streaming), from PEM files read
/// once at start-up. Every field is optional; with none set, `https` runtime URLs are refused
/// ([`super::UpstreamError::NoTlsConfig`]) and `http` ones are unaffected.
///
/// ```toml
/// [upstream_tls]
/// ca_file = "/etc/containerd/stream-ca.crt"
/// client_cert_file = "/etc/ws-spdy-bridge/runtime-client.crt"  # only if the runtime asks
/// client_key_file = "/etc/ws-spdy-bridge/runtime-client.key"
/// insecure_skip_verify = false
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The CA bundle (PEM, one or more certificates) that signed the runtime's serving
    /// certificate. There is no fallback to system roots: runtimes use private CAs. Required
    /// for `https` runtime URLs unless [`insecure_skip_verify`](Self::insecure_skip_verify).
    /// Default none.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to a runtime that requires client
    /// authentication. Needs [`client_key_file`](Self::client_key_file). Default none.
    pub client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of [`client_cert_file`](Self::client_cert_file). Default none.
    pub client_key_file: Option<PathBuf>,
    /// Accept any runtime certificate (self-signed runtimes, crictl-style setups). Handshake
    /// signatures are still checked, but nothing says the peer is the runtime: a warning is
    /// logged at start-up. Overrides [`ca_file`](Self::ca_file). Default `false`.
    pub insecure_skip_verify: bool,
}

/// Why [`UpstreamTlsConfig::client_config`] failed. Always the operator's configuration; each
/// variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    /// A file could not be read.
    #[error("{key}: reading {}: {source}", path.display())]
    Read {
        /// `ca_file`, `client_cert_file` or `client_key_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Only one of `client_cert_file` and `client_key_file` is set.
    #[error("client_cert_file and client_key_file must be set together")]
    ClientCertWithoutKey,
    /// A client certificate but no way to verify the runtime.
    #[error("ca_file: required with a client certificate (or set insecure_skip_verify)")]
    NoTrustAnchors,
    /// The files were read but do not make a TLS configuration.
    #[error("{0}")]
    Config(#[from] TlsConfigError),
}

impl UpstreamTlsError {
    /// The [`UpstreamTlsConfig`] key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            UpstreamTlsError::Read { key, .. } => key,
            UpstreamTlsError::ClientCertWithoutKey => "client_key_file",
            UpstreamTlsError::NoTrustAnchors => "ca_file",
            UpstreamTlsError::Config(TlsConfigError::Pem { what, .. })
            | UpstreamTlsError::Config(TlsConfigError::NoCertificate { what }) => match *what {
                "CA bundle" => "ca_file",
                "client key" => "client_key_file",
                _ => "client_cert_file",
            },
            UpstreamTlsError::Config(TlsConfigError::NoPrivateKey) => "client_key_file",
            UpstreamTlsError::Config(
                TlsConfigError::BadCaCertificate(_) | TlsConfigError::NoTrustAnchors,
            ) => "ca_file",
            UpstreamTlsError::Config(TlsConfigError::Rustls(_)) => "client_cert_file",
        }
    }
}

impl UpstreamTlsConfig {
    /// Whether anything is set, i.e. whether `https` runtime URLs can be used.
    pub fn is_configured(&self) -> bool {
        self.insecure_skip_verify || self.ca_file.is_some() || self.client_cert_file.is_some()
    }

    /// Reads the files and builds [`super::UpstreamConfig::tls`]: `None` when nothing is
    /// configured. Logs a warning when verification is disabled; call it once at start-up.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, UpstreamTlsError> {
        let client_files = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(UpstreamTlsError::ClientCertWithoutKey),
        };
        if !self.is_configured() {
            return Ok(None);
        }
        if self.ca_file.is_none() && !self.insecure_skip_verify {
            return Err(UpstreamTlsError::NoTrustAnchors);
        }
        // With verification off the CA bundle is not used: not even read, so a stale path
        // cannot stop start-up.
        let ca = match (&self.ca_file, self.insecure_skip_verify) {
            (Some(path), false) => Some(read("ca_file", path)?),
            _ => None,
        };
        let client = match client_files {
            Some((cert, key)) => Some((
                read("client_cert_file", cert)?,
                read("client_key_file", key)?,
            )),
            None => None,
        };
        let config = tls_client_config(
            ca.as_deref(),
            client.as_ref().map(|(c, k)| (&c[..], &k[..])),
            self.insecure_skip_verify,
        )?;
        if self.insecure_skip_verify {
            tracing::warn!(
                "upstream TLS: insecure_skip_verify is set; the runtime's certificate is NOT \
                 verified, so anyone on the path to the runtime can impersonate it"
            );
        }
        Ok(Some(config))
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, UpstreamTlsError> {
    std::fs::read(path).map_err(|source| UpstreamTlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Builds the TLS client configuration for runtime connections, with the ring provider and
/// ALPN exactly `http/1.1`.
///
/// * `ca_pem`: the CA bundle that signs the runtime's serving certificate (one or more PEM
///   certificates). Required unless `insecure_skip_verify`.
/// * `client_cert`: `(certificate chain PEM, private key PEM)` when the runtime requires
///   client authentication.
/// * `insecure_skip_verify`: accept any server certificate, ignoring `ca_pem`. Handshake
///   signatures are still checked, so the peer holds the key of the certificate it shows, but
///   nothing says whose certificate it is. For tests and crictl-style setups only.
pub fn tls_client_config(
    ca_pem: Option<&[u8]>,
    client_cert: Option<(&[u8], &[u8])>,
    insecure_skip_verify: bool,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
    } else {
        let ca_pem = ca_pem.ok_or(TlsConfigError::NoTrustAnchors)?;
        let mut roots = RootCertStore::empty();
        for cert in read_certs("CA bundle", ca_pem)? {
            roots.add(cert).map_err(TlsConfigError::BadCaCertificate)?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match client_cert {
        Some((cert_pem, key_pem)) => {
            let chain = read_certs("client certificate", cert_pem)?;
            let key = rustls_pemfile::private_key(&mut &key_pem[..])
                .map_err(|source| TlsConfigError::Pem {
                    what: "client key",
                    source,
                })?
                .ok_or(TlsConfigError::NoPrivateKey)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(
    what: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate { what });
    }
    Ok(certs)
}

/// Accepts any server certificate but still verifies handshake signatures.
#[derive(Debug)]
struct AnyServerCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
