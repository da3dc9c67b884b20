//! Why an upgrade failed, whose fault it is, and what client-go would have said.

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::response::RefusalBody;
use crate::status::Status;

/// Who caused a failure; it drives the Status and the metric outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The runtime: unreachable, refused, misbehaved or failed TLS verification.
    Upstream,
    /// The proxy itself: a URL or request it built, or its own configuration.
    Proxy,
}

/// The request an error is about, named as Go's `url.Error` names it (`Post "<url>"`), with
/// the token redacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Request method.
    pub method: Method,
    /// The URL with its last path segment redacted ([`super::redact_path`]) and no userinfo.
    pub url: String,
}

impl Target {
    /// Go's operation name for a method: first letter kept, the rest lower-cased (`Post`).
    pub fn op(&self) -> String {
        let m = self.method.as_str();
        let mut op = String::with_capacity(m.len());
        let mut chars = m.chars();
        if let Some(first) = chars.next() {
            op.push(first);
        }
        op.extend(chars.map(|c| c.to_ascii_lowercase()));
        op
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} \"{}\"", self.op(), self.url)
    }
}

/// A failed upgrade. Display never contains a full token (URLs are redacted); transport
/// failures read like client-go's (`error sending request: Post "…": …`, protocol.md §5.6).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The runtime URL cannot be used: not http/https, no host, bad port.
    #[error("invalid upstream URL: {reason}")]
    InvalidUrl {
        /// What is wrong; never the URL itself.
        reason: &'static str,
    },
    /// The request cannot be encoded (a protocol or token that is no header value).
    #[error("invalid upstream request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// An `https` runtime URL, but [`super::UpstreamConfig::tls`] is `None`.
    #[error("error sending request: {target}: https runtime URL but no upstream TLS configured")]
    NoTlsConfig {
        /// The request.
        target: Target,
    },
    /// Name resolution or the TCP connect failed (connection refused, no route, no such host).
    #[error("error sending request: {target}: dial tcp {addr}: {}", go_io_text(.source))]
    Dial {
        /// The request.
        target: Target,
        /// The address that failed last (`host:port` if resolution failed).
        addr: String,
        /// The system error.
        source: io::Error,
    },
    /// The TLS handshake failed (certificate verification, protocol, ALPN).
    #[error("error sending request: {target}: tls: {source}")]
    Tls {
        /// The request.
        target: Target,
        /// The rustls error, wrapped by tokio-rustls.
        source: io::Error,
    },
    /// Resolution, TCP connect and TLS handshake together took longer than
    /// [`super::UpstreamConfig::connect_timeout`].
    #[error("error sending request: {target}: dial tcp: i/o timeout after {timeout:?}")]
    ConnectTimeout {
        /// The request.
        target: Target,
        /// The configured limit.
        timeout: Duration,
    },
    /// Writing the request or reading the response head failed (reset, EOF before the head).
    #[error("error sending request: {target}: {}", go_io_text(.source))]
    Transport {
        /// The request.
        target: Target,
        /// The I/O error; `UnexpectedEof` when the runtime closed before a full head.
        source: io::Error,
    },
    /// The response head did not complete within
    /// [`super::UpstreamConfig::response_header_timeout`].
    #[error("error sending request: {target}: net/http: timeout awaiting response headers")]
    ResponseHeaderTimeout {
        /// The request.
        target: Target,
        /// The configured limit.
        timeout: Duration,
    },
    /// The response head exceeded [`super::UpstreamConfig::max_response_header_bytes`].
    #[error(
        "error sending request: {target}: net/http: server response headers exceeded {limit} bytes; aborted"
    )]
    ResponseHeaderTooLarge {
        /// The request.
        target: Target,
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// The response head is not valid HTTP/1.x.
    #[error("error sending request: {target}: malformed HTTP response: {reason}")]
    MalformedResponse {
        /// The request.
        target: Target,
        /// What the parser disliked; never the raw bytes.
        reason: String,
    },
    /// A 301/302/303/307/308 with a `Location`. Never followed: a redirect could send the
    /// token elsewhere, and client-go's translator refuses them too.
    #[error("error sending request: {} \"{location}\": redirect not allowed", .target.op())]
    Redirect {
        /// The request.
        target: Target,
        /// The redirect status.
        status: StatusCode,
        /// The `Location`, redacted like the request URL and cut to 256 characters.
        location: String,
    },
    /// A 101 whose `Connection` lacks `upgrade` or whose `Upgrade` lacks the requested token.
    #[error(
        "unable to upgrade connection: missing upgrade headers in response \
         (Connection: {connection:?}, Upgrade: {upgrade:?}, expected {expected:?})"
    )]
    MissingUpgradeHeaders {
        /// The response's first `Connection` value, lower-cased and cut to 256 characters.
        connection: Option<String>,
        /// The response's first `Upgrade` value, lower-cased and cut to 256 characters.
        upgrade: Option<String>,
        /// The token that was asked for.
        expected: String,
    },
    /// Any other status: the runtime refused the upgrade (404 unknown token, 403 no common
    /// protocol, 400 bad headers, 500, or the 200 some runtime versions send for a request
    /// without protocols).
    #[error("{}", refusal_text(.body))]
    Refused {
        /// The response status.
        status: StatusCode,
        /// The decoded body.
        body: RefusalBody,
        /// The response headers (for pass-through, and `X-Accepted-Stream-Protocol-Versions`).
        headers: Box<HeaderMap>,
        /// The body bytes as kept (de-chunked, at most
        /// [`super::UpstreamConfig::max_error_body_bytes`]), for pass-through replay.
        raw_body: Bytes,
    },
}

impl UpstreamError {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            UpstreamError::InvalidUrl { .. }
            | UpstreamError::InvalidRequest { .. }
            | UpstreamError::NoTlsConfig { .. } => Fault::Proxy,
            _ => Fault::Upstream,
        }
    }

    /// A short, bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::InvalidUrl { .. } => "invalid_url",
            UpstreamError::InvalidRequest { .. } => "invalid_request",
            UpstreamError::NoTlsConfig { .. } => "no_tls_config",
            UpstreamError::Dial { .. } => "dial",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::Transport { .. } => "transport",
            UpstreamError::ResponseHeaderTimeout { .. } => "response_header_timeout",
            UpstreamError::ResponseHeaderTooLarge { .. } => "response_header_too_large",
            UpstreamError::MalformedResponse { .. } => "malformed_response",
            UpstreamError::Redirect { .. } => "redirect",
            UpstreamError::MissingUpgradeHeaders { .. } => "missing_upgrade_headers",
            UpstreamError::Refused { .. } => "refused",
        }
    }

    /// The error text client-go's SPDY client would report for this outcome (protocol.md §2.5,
    /// §5.6), which the translator wraps in an InternalError Status:
    /// `unable to upgrade connection: <trimmed body>` for a text refusal, the Status message
    /// for a Status refusal, `error sending request: …` for transport failures (URLs redacted).
    ///
    /// For a 101 without the upgrade headers client-go would block reading the connection to
    /// EOF; we report the missing headers instead.
    pub fn client_go_text(&self) -> String {
        self.to_string()
    }

    /// The `metav1.Status` the runtime refused with, if its body was one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            UpstreamError::Refused {
                body: RefusalBody::Status(status),
                ..
            } => Some(status),
            _ => None,
        }
    }

    /// The HTTP status of the runtime's answer, for refusals and redirects.
    pub fn http_status(&self) -> Option<StatusCode> {
        match self {
            UpstreamError::Refused { status, .. } | UpstreamError::Redirect { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

fn refusal_text(body: &RefusalBody) -> String {
    match body {
        // client-go's StatusError prints only the message.
        RefusalBody::Status(status) => status.message.clone(),
        RefusalBody::Text(text) => format!("unable to upgrade connection: {text}"),
    }
}

/// An I/O error in the words Go's net package uses for the common cases.
fn go_io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        io::ErrorKind::ConnectionReset => "read: connection reset by peer".into(),
        io::ErrorKind::BrokenPipe => "write: broken pipe".into(),
        io::ErrorKind::UnexpectedEof => "EOF".into(),
        io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_the_method_like_go() {
        let t = Target {
            method: Method::POST,
            url: "http://h:1/exec/Vh2U…".into(),
        };
        assert_eq!(t.to_string(), r#"Post "http://h:1/exec/Vh2U…""#);
    }

    #[test]
    fn refusal_texts_match_client_go() {
        let text = UpstreamError::Refused {
            status: StatusCode::NOT_FOUND,
            body: RefusalBody::Text("404 page not found".into()),
            headers: Box::default(),
            raw_body: Bytes::from_static(b"404 page not found\n"),
        };
        assert_eq!(
            text.client_go_text(),
            "unable to upgrade connection: 404 page not found"
        );
        assert_eq!(text.fault(), Fault::Upstream);
        assert!(text.status().is_none());

        let status = Status::http_error(403, "Forbidden", "nope");
        let refused = UpstreamError::Refused {
            status: StatusCode::FORBIDDEN,
            body: RefusalBody::Status(Box::new(status.clone())),
            headers: Box::default(),
            raw_body: Bytes::new(),
        };
        assert_eq!(refused.client_go_text(), "nope");
        assert_eq!(refused.status(), Some(&status));
    }
}
