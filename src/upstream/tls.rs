//! TLS client settings for `https` runtime URLs (runtime TLS streaming with a private CA).

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

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
