//! Connecting to the runtime's streaming server and upgrading the connection.
//!
//! One upgrade is one connection: no pooling, no keep-alive, no retry, no redirect (a runtime
//! token is single use, and a retry or a redirect would spend or leak it). The request is
//! written by hand and the response head parsed with `httparse`, so that the bytes the runtime
//! sends right after its 101 stay ours ([`Upgraded::leftover`], protocol.md §2.3, C-63).
//!
//! Runtime URLs carry a bearer token as their last path segment: errors and logs show only
//! [`redact_path`]'s form of it.

mod config;
mod error;
mod io;
mod redact;
pub mod remotecommand;
mod request;
mod response;
mod tls;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{StatusCode, Uri};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_ERROR_BODY_TIMEOUT, DEFAULT_MAX_ERROR_BODY_BYTES,
    DEFAULT_MAX_RESPONSE_HEADER_BYTES, DEFAULT_RESPONSE_HEADER_TIMEOUT, UpstreamConfig,
};
pub use error::{Fault, Target, UpstreamError};
pub use io::UpstreamIo;
pub use redact::{KEPT_SEGMENT_CHARS, redact_path};
pub use request::{
    SPDY_31, USER_AGENT, UpgradeRequest, X_ACCEPTED_STREAM_PROTOCOL_VERSIONS,
    X_STREAM_PROTOCOL_VERSION,
};
pub use response::RefusalBody;
pub use tls::{
    ALPN_HTTP_1_1, TlsConfigError, UpstreamTlsConfig, UpstreamTlsError, tls_client_config,
};

use response::{BodyFraming, ChunkedDecoder};

/// Bytes asked of the socket per read while looking for the end of the response head, and
/// the most a head read can overshoot the configured cap by.
const READ_CHUNK: usize = 8 * 1024;

/// A connection the runtime switched to the requested protocol.
#[derive(Debug)]
pub struct Upgraded {
    /// The connection, positioned after [`Upgraded::leftover`].
    pub io: UpstreamIo,
    /// Bytes read past the response head: the start of the upgraded protocol's stream (SPDY
    /// frames may share a read with the 101). Feed them to the decoder before reading `io`.
    pub leftover: Bytes,
    /// The 101's `X-Stream-Protocol-Version`; `None` when absent or empty, which means v1
    /// (`channel.k8s.io`) semantics to client-go.
    pub protocol: Option<String>,
    /// The response status (always 101).
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The response head exactly as received, blank line included, for pass-through replay.
    pub raw_head: Bytes,
}

/// Upgrades a SPDY/3.1 connection to `url` with a `POST` offering `protocols` in order.
pub async fn upgrade_spdy(
    url: &Uri,
    protocols: &[&str],
    cfg: &UpstreamConfig,
) -> Result<Upgraded, UpstreamError> {
    upgrade(url, &UpgradeRequest::spdy(protocols), cfg).await
}

/// Connects to `url` (`http` or `https`), sends the upgrade request and reads the answer.
///
/// Success is a 101 whose `Connection` contains `upgrade` and whose `Upgrade` contains
/// `request.upgrade` (lower-cased substring checks on the first value of each, as client-go
/// does). Anything else is an [`UpstreamError`]; a refusal's body is read, bounded, and decoded
/// as client-go decodes it. Redirects are never followed.
pub async fn upgrade(
    url: &Uri,
    request: &UpgradeRequest,
    cfg: &UpstreamConfig,
) -> Result<Upgraded, UpstreamError> {
    let endpoint = Endpoint::parse(url)?;
    let target = Target {
        method: request.method.clone(),
        url: redact::redact_uri(url),
    };
    let wire = request::encode(request, &endpoint.host_header, &endpoint.path)
        .map_err(|reason| UpstreamError::InvalidRequest { reason })?;
    let tls = match (endpoint.tls, &cfg.tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls.clone()),
        (true, None) => return Err(UpstreamError::NoTlsConfig { target }),
    };

    let mut io = match timeout(cfg.connect_timeout, connect(&endpoint, tls, &target)).await {
        Ok(io) => io?,
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                target,
                timeout: cfg.connect_timeout,
            });
        }
    };

    let limit = cfg.max_response_header_bytes;
    let exchange = async {
        io.write_all(&wire).await?;
        io.flush().await?;
        read_head(&mut io, limit).await
    };
    let (mut buf, head_len) = match timeout(cfg.response_header_timeout, exchange).await {
        Err(_) => {
            return Err(UpstreamError::ResponseHeaderTimeout {
                target,
                timeout: cfg.response_header_timeout,
            });
        }
        Ok(Err(HeadError::TooLarge)) => {
            return Err(UpstreamError::ResponseHeaderTooLarge { target, limit });
        }
        Ok(Err(HeadError::Io(source))) => return Err(UpstreamError::Transport { target, source }),
        Ok(Ok(read)) => read,
    };
    let head = response::parse_head(&buf[..head_len]).map_err(|reason| {
        UpstreamError::MalformedResponse {
            target: target.clone(),
            reason,
        }
    })?;
    let raw_head = buf.split_to(head_len).freeze();

    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        let connection = response::first_lower(&head.headers, &header::CONNECTION);
        let upgrade = response::first_lower(&head.headers, &header::UPGRADE);
        let expected = request.upgrade.to_ascii_lowercase();
        let upgraded = connection.as_deref().is_some_and(|c| c.contains("upgrade"))
            && upgrade.as_deref().is_some_and(|u| u.contains(&expected));
        if !upgraded {
            return Err(UpstreamError::MissingUpgradeHeaders {
                connection: connection.map(response::bounded),
                upgrade: upgrade.map(response::bounded),
                expected: request.upgrade.clone(),
            });
        }
        let protocol = head
            .headers
            .get(X_STREAM_PROTOCOL_VERSION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .filter(|p| !p.is_empty());
        tracing::debug!(
            upstream = %target,
            protocol = protocol.as_deref().unwrap_or(""),
            leftover = buf.len(),
            "upstream upgraded"
        );
        return Ok(Upgraded {
            io,
            leftover: buf.freeze(),
            protocol,
            status: head.status,
            headers: head.headers,
            raw_head,
        });
    }

    if is_redirect(head.status)
        && let Some(location) = head.headers.get(header::LOCATION)
    {
        let location = response::bounded(redact::redact_location(&String::from_utf8_lossy(
            location.as_bytes(),
        )));
        return Err(UpstreamError::Redirect {
            target,
            status: head.status,
            location,
        });
    }

    let framing = BodyFraming::of(&request.method, head.status, &head.headers);
    let mut body = Vec::new();
    // What arrived by the deadline is kept: a partial message beats none.
    let _ = timeout(
        cfg.error_body_timeout,
        read_body(&mut io, buf, framing, cfg.max_error_body_bytes, &mut body),
    )
    .await;
    let error = UpstreamError::Refused {
        status: head.status,
        body: RefusalBody::decode(&body),
        headers: Box::new(head.headers),
        raw_body: Bytes::from(body),
    };
    tracing::debug!(upstream = %target, status = %head.status, "upstream refused the upgrade");
    Err(error)
}

/// The parts of a runtime URL the connection needs.
#[derive(Debug)]
struct Endpoint {
    tls: bool,
    /// Host to resolve or connect to, IPv6 brackets removed.
    host: String,
    port: u16,
    /// `Host` header value: host, plus the port when the URL names one; never userinfo.
    host_header: String,
    /// Request target: path and query, `/` when empty.
    path: String,
}

impl Endpoint {
    fn parse(url: &Uri) -> Result<Self, UpstreamError> {
        let invalid = |reason| UpstreamError::InvalidUrl { reason };
        let tls = match url.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(invalid("scheme must be http or https")),
            None => return Err(invalid("no scheme")),
        };
        let authority = url.authority().ok_or(invalid("no host"))?;
        let bracketed = authority.host();
        let host = bracketed
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(bracketed);
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let (port, host_header) = match authority.port() {
            Some(port) => (port.as_u16(), format!("{bracketed}:{}", port.as_u16())),
            None if authority.as_str().ends_with(':') => return Err(invalid("empty port")),
            None => (if tls { 443 } else { 80 }, bracketed.to_owned()),
        };
        let path = match url.path_and_query().map(|pq| pq.as_str()) {
            None | Some("") => "/".to_owned(),
            Some(pq) if pq.starts_with('?') => format!("/{pq}"),
            Some(pq) => pq.to_owned(),
        };
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
            host_header,
            path,
        })
    }
}

/// Resolves, connects (each resolved address in turn) and, for TLS, handshakes.
async fn connect(
    endpoint: &Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    target: &Target,
) -> Result<UpstreamIo, UpstreamError> {
    let dial_error = |addr: String, source| UpstreamError::Dial {
        target: target.clone(),
        addr,
        source,
    };
    let addrs = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| dial_error(format!("{}:{}", endpoint.host, endpoint.port), e))?;
    let mut last_error = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some((addr.to_string(), e)),
        }
    }
    let stream = match (stream, last_error) {
        (Some(s), _) => s,
        (None, Some((addr, e))) => return Err(dial_error(addr, e)),
        (None, None) => {
            let addr = format!("{}:{}", endpoint.host, endpoint.port);
            let e = std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses");
            return Err(dial_error(addr, e));
        }
    };
    // Interactive traffic: a keystroke must not wait for Nagle.
    stream
        .set_nodelay(true)
        .map_err(|source| UpstreamError::Transport {
            target: target.clone(),
            source,
        })?;
    let Some(tls) = tls else {
        return Ok(UpstreamIo::Plain(stream));
    };

    let server_name =
        ServerName::try_from(endpoint.host.clone()).map_err(|_| UpstreamError::InvalidUrl {
            reason: "host is not a valid TLS server name",
        })?;
    let tls_error = |source| UpstreamError::Tls {
        target: target.clone(),
        source,
    };
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, stream)
        .await
        .map_err(tls_error)?;
    if let Some(alpn) = stream.get_ref().1.alpn_protocol()
        && alpn != ALPN_HTTP_1_1
    {
        // Only possible with a caller-supplied config that offers more than http/1.1.
        return Err(tls_error(std::io::Error::other(format!(
            "runtime selected ALPN protocol {:?}; only http/1.1 can carry an upgrade",
            String::from_utf8_lossy(alpn)
        ))));
    }
    Ok(UpstreamIo::Tls(Box::new(stream)))
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Why the response head could not be read.
#[derive(Debug)]
enum HeadError {
    /// No end of head within the limit.
    TooLarge,
    /// Read failure, or EOF (`UnexpectedEof`) before the end of the head.
    Io(std::io::Error),
}

impl From<std::io::Error> for HeadError {
    fn from(e: std::io::Error) -> Self {
        HeadError::Io(e)
    }
}

/// Reads until the end of the response head. Returns everything read (head plus any bytes
/// past it) and the head's length. Never holds more than `limit + READ_CHUNK` bytes of data.
async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    limit: usize,
) -> Result<(BytesMut, usize), HeadError> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let scanned = buf.len();
        buf.reserve(READ_CHUNK);
        let n = {
            use bytes::BufMut;
            let mut window = (&mut buf).limit(READ_CHUNK);
            io.read_buf(&mut window).await?
        };
        if n == 0 {
            return Err(HeadError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the response head",
            )));
        }
        if let Some(end) = response::find_head_end(&buf, scanned) {
            if end > limit {
                return Err(HeadError::TooLarge);
            }
            return Ok((buf, end));
        }
        if buf.len() > limit {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Reads a refusal body into `out`, at most `limit` bytes, starting with `buf` (the bytes read
/// past the head). Stops quietly at EOF, on an I/O or framing error, or at the limit: the body
/// is only an error message.
async fn read_body<R: AsyncRead + Unpin>(
    io: &mut R,
    mut buf: BytesMut,
    framing: BodyFraming,
    limit: usize,
    out: &mut Vec<u8>,
) {
    let mut chunked = ChunkedDecoder::default();
    let mut remaining = match framing {
        BodyFraming::Empty => return,
        BodyFraming::Length(n) => n,
        BodyFraming::Chunked | BodyFraming::UntilEof => u64::MAX,
    };
    loop {
        if framing == BodyFraming::Chunked {
            match chunked.decode(&mut buf, out, limit) {
                Ok(false) => {}
                Ok(true) | Err(_) => return,
            }
        } else {
            let take = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(&buf[..take.min(room)]);
            remaining -= take as u64;
            buf.clear();
            if remaining == 0 || out.len() >= limit {
                return;
            }
        }
        buf.reserve(READ_CHUNK);
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
