//! Limits and TLS settings for connections to the runtime's streaming server.

use std::sync::Arc;
use std::time::Duration;

/// Default [`UpstreamConfig::connect_timeout`]: 30 s (protocol.md §8, the proxy's own limit).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`UpstreamConfig::response_header_timeout`]: 30 s (protocol.md §8).
pub const DEFAULT_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`UpstreamConfig::max_response_header_bytes`]: 1 MiB, the API server's own cap on
/// buffered upstream response headers (protocol.md §8).
pub const DEFAULT_MAX_RESPONSE_HEADER_BYTES: usize = 1 << 20;
/// Default [`UpstreamConfig::max_error_body_bytes`]: 64 KiB.
pub const DEFAULT_MAX_ERROR_BODY_BYTES: usize = 64 << 10;
/// Default [`UpstreamConfig::error_body_timeout`]: 10 s, the API server's deadline for
/// replaying an upstream error response (protocol.md §8).
pub const DEFAULT_ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How the proxy connects to the runtime and how long it waits for it.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Time allowed for name resolution, the TCP connect and, for `https`, the TLS handshake,
    /// together. Default [`DEFAULT_CONNECT_TIMEOUT`] (30 s).
    pub connect_timeout: Duration,
    /// Time allowed from the start of writing the upgrade request until the end of the response
    /// head. A runtime that accepts the connection and never answers holds a token and a task
    /// until then. Default [`DEFAULT_RESPONSE_HEADER_TIMEOUT`] (30 s).
    pub response_header_timeout: Duration,
    /// Largest response head accepted, in bytes, status line and blank line included. Bounds
    /// the memory a misbehaving runtime can make us hold. Default
    /// [`DEFAULT_MAX_RESPONSE_HEADER_BYTES`] (1 MiB).
    pub max_response_header_bytes: usize,
    /// Largest refusal body kept, in bytes (after chunked decoding); the rest is not read. The
    /// body becomes the client's error text, and real runtimes send one short line.
    /// Default [`DEFAULT_MAX_ERROR_BODY_BYTES`] (64 KiB).
    pub max_error_body_bytes: usize,
    /// Time allowed for reading a refusal body; what arrived by then is kept.
    /// Default [`DEFAULT_ERROR_BODY_TIMEOUT`] (10 s).
    pub error_body_timeout: Duration,
    /// TLS client settings for `https` runtime URLs, usually from [`super::tls_client_config`].
    /// It must offer only `http/1.1` in ALPN: HTTP/2 cannot carry an Upgrade (protocol.md §9).
    /// `None` makes every `https` URL fail with [`super::UpstreamError::NoTlsConfig`] rather
    /// than trusting some default set of roots. Default `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_header_timeout: DEFAULT_RESPONSE_HEADER_TIMEOUT,
            max_response_header_bytes: DEFAULT_MAX_RESPONSE_HEADER_BYTES,
            max_error_body_bytes: DEFAULT_MAX_ERROR_BODY_BYTES,
            error_body_timeout: DEFAULT_ERROR_BODY_TIMEOUT,
            tls: None,
        }
    }
}
