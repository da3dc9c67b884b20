//! The HTTP/1.1 upgrade request, encoded by hand (sans-IO).

use http::Method;
use http::header::{self, HeaderName, HeaderValue};

/// `Upgrade` token of a SPDY/3.1 upgrade (protocol.md §2.1).
pub const SPDY_31: &str = "SPDY/3.1";
/// Header carrying each offered stream protocol in the request, and the chosen one in the 101.
pub const X_STREAM_PROTOCOL_VERSION: &str = "X-Stream-Protocol-Version";
/// Header listing the runtime's protocols in a 403 negotiation failure.
pub const X_ACCEPTED_STREAM_PROTOCOL_VERSIONS: &str = "X-Accepted-Stream-Protocol-Versions";
/// `User-Agent` of every upstream request.
pub const USER_AGENT: &str = concat!("ws-spdy-bridge/", env!("CARGO_PKG_VERSION"));

/// Extra headers never sent upstream: the ones the encoder writes itself (a second copy would
/// confuse the runtime's checks), hop-by-hop ones, and client credentials. The runtime does no
/// authentication, the token is the capability, so credentials would only leak (protocol.md §9).
const DROPPED_EXTRA_HEADERS: &[HeaderName] = &[
    header::HOST,
    header::USER_AGENT,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::EXPECT,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
];

/// Extra header names dropped for the same reasons, not in `http`'s constant set.
const DROPPED_EXTRA_HEADER_NAMES: &[&str] = &[
    "x-stream-protocol-version",
    "keep-alive",
    "proxy-connection",
];

/// What [`super::upgrade`] asks the runtime for.
#[derive(Clone, Debug)]
pub struct UpgradeRequest {
    /// Request method. Default `POST`, as client-go sends for SPDY; a WebSocket pass-through
    /// uses `GET`.
    pub method: Method,
    /// `Upgrade` token sent, and looked for (lower-cased substring) in the 101's `Upgrade`
    /// header. Default [`SPDY_31`].
    pub upgrade: String,
    /// Offered stream protocols, most preferred first; one `X-Stream-Protocol-Version` line
    /// each, because older runtimes read only the first value of a comma-separated line.
    pub protocols: Vec<String>,
    /// Further headers, sent after the protocol lines in this order (pass-through use).
    /// Credentials, hop-by-hop headers and the headers written above are dropped.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Default for UpgradeRequest {
    fn default() -> Self {
        UpgradeRequest {
            method: Method::POST,
            upgrade: SPDY_31.to_owned(),
            protocols: Vec::new(),
            headers: Vec::new(),
        }
    }
}

impl UpgradeRequest {
    /// A `POST` upgrade to SPDY/3.1 offering `protocols` in order.
    pub fn spdy<S: AsRef<str>>(protocols: &[S]) -> Self {
        UpgradeRequest {
            protocols: protocols.iter().map(|p| p.as_ref().to_owned()).collect(),
            ..UpgradeRequest::default()
        }
    }
}

/// Encodes the request head. `host` is the `Host` value (authority without userinfo) and
/// `path` the request target (`/exec/…?…`). Fails, naming the bad field, if a token or protocol
/// could not be a header value (a CR or LF would let it inject header lines).
///
/// ```text
/// POST /exec/Vh2Ua5Zr HTTP/1.1\r\n
/// Host: 127.0.0.1:41235\r\n
/// User-Agent: ws-spdy-bridge/<version>\r\n
/// Content-Length: 0\r\n                              (not for GET or HEAD, like Go)
/// Connection: Upgrade\r\n
/// Upgrade: SPDY/3.1\r\n
/// X-Stream-Protocol-Version: v5.channel.k8s.io\r\n   (one line per protocol, in order)
/// X-Stream-Protocol-Version: v4.channel.k8s.io\r\n
/// <extra headers>\r\n
/// \r\n                                               (no body)
/// ```
pub(crate) fn encode(request: &UpgradeRequest, host: &str, path: &str) -> Result<Vec<u8>, String> {
    check_value("upgrade token", &request.upgrade)?;
    if request.upgrade.is_empty() {
        return Err("upgrade token is empty".into());
    }
    for protocol in &request.protocols {
        check_value("stream protocol", protocol)?;
    }
    check_value("host", host)?;
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("request path must start with '/' and contain no spaces or controls".into());
    }

    let mut out = Vec::with_capacity(256 + request.protocols.len() * 48);
    out.extend_from_slice(format!("{} {path} HTTP/1.1\r\n", request.method).as_bytes());
    let mut line = |name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    line("Host", host.as_bytes());
    line("User-Agent", USER_AGENT.as_bytes());
    if request.method != Method::GET && request.method != Method::HEAD {
        line("Content-Length", b"0");
    }
    line("Connection", b"Upgrade");
    line("Upgrade", request.upgrade.as_bytes());
    for protocol in &request.protocols {
        line(X_STREAM_PROTOCOL_VERSION, protocol.as_bytes());
    }
    for (name, value) in &request.headers {
        if DROPPED_EXTRA_HEADERS.contains(name)
            || DROPPED_EXTRA_HEADER_NAMES.contains(&name.as_str())
        {
            continue;
        }
        line(name.as_str(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

fn check_value(what: &str, value: &str) -> Result<(), String> {
    HeaderValue::from_str(value)
        .map(drop)
        .map_err(|_| format!("{what} is not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_has_no_content_length_and_extras_follow_protocols() {
        let request = UpgradeRequest {
            method: Method::GET,
            upgrade: "websocket".into(),
            protocols: vec![],
            headers: vec![
                (
                    HeaderName::from_static("sec-websocket-key"),
                    HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
                ),
                (
                    header::AUTHORIZATION,
                    HeaderValue::from_static("Bearer secret"),
                ),
                (header::COOKIE, HeaderValue::from_static("a=b")),
                (header::HOST, HeaderValue::from_static("evil")),
                (
                    HeaderName::from_static("x-stream-protocol-version"),
                    HeaderValue::from_static("dup"),
                ),
                (
                    HeaderName::from_static("sec-websocket-version"),
                    HeaderValue::from_static("13"),
                ),
            ],
        };
        let bytes = encode(&request, "h:1", "/attach/abc?x=1").unwrap();
        let expected = format!(
            "GET /attach/abc?x=1 HTTP/1.1\r\nHost: h:1\r\nUser-Agent: {USER_AGENT}\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    }

    #[test]
    fn header_injection_through_a_protocol_is_refused() {
        let request = UpgradeRequest::spdy(&["v4.channel.k8s.io\r\nAuthorization: x"]);
        assert!(encode(&request, "h", "/exec/t").is_err());
        let request = UpgradeRequest {
            upgrade: String::new(),
            ..UpgradeRequest::default()
        };
        assert!(encode(&request, "h", "/exec/t").is_err());
        assert!(encode(&UpgradeRequest::default(), "h", "/exec/a b").is_err());
        assert!(encode(&UpgradeRequest::default(), "h", "exec").is_err());
    }
}
