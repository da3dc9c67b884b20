//! Modes C and D (protocol.md §13.4): upgrades the bridge does not translate, passed through to
//! the runtime untouched. Legacy WebSocket remote command (`channel.k8s.io`,
//! `v4.channel.k8s.io`, the base64 variants, or no sub-protocol) and every SPDY/3.1 upgrade keep
//! the runtime's exact behaviour this way: initial messages, codecs, status formats, port
//! prefixes, and the token is spent exactly once, by the runtime.
//!
//! ```text
//!  client ──upgrade request───────▶ passthrough ──same method, selected headers──▶ runtime
//!         ◀─101, runtime's headers─             ◀───────────── 101 ───────────────
//!         ◀══════ relay::splice_with_prefix (bytes read past the 101 go first) ══════▶
//!
//!  runtime ≥ 400        → its status, headers and body, relayed
//!  runtime 2xx/3xx      → 502 Status "invalid upgrade response: status code N"
//!  runtime unreachable  → 502 (504 on timeouts) Status with client-go's error text
//! ```
//!
//! The runtime is asked exactly once and redirects are never followed: a retry or a redirect
//! would spend or leak the single-use token.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::metrics::{
    Channel, CountingIo, Direction, Kind, Meter, Outcome, Protocol, RefusalReason, SessionGuard,
};
use crate::relay::{self, Ended, RelayConfig, RelayStats, Side};
use crate::status::{REASON_INTERNAL_ERROR, Status};
use crate::upstream::{
    self, SPDY_31, UpgradeRequest, Upgraded, UpstreamConfig, UpstreamError,
    X_STREAM_PROTOCOL_VERSION,
};

/// `Upgrade` token of a WebSocket handshake.
pub const WEBSOCKET: &str = "websocket";

/// Default half-close timeout of a pass-through relay: 30 s. Neither legacy protocol
/// half-closes TCP (spdystream and WebSocket peers close the whole connection), so a FIN means
/// the peer is leaving; the runtime normally closes at once, and this bounds one that does not.
pub const DEFAULT_HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a pass-through connects and relays.
#[derive(Clone, Debug)]
pub struct PassthroughConfig {
    /// Connecting to the runtime and reading its answer: timeouts, head and error-body limits,
    /// TLS. Default [`UpstreamConfig::default`] (30 s connect, 30 s response head, 1 MiB head,
    /// 64 KiB error body, no TLS).
    pub upstream: UpstreamConfig,
    /// The byte relay after the 101. Default: 32 KiB buffers, no idle timeout (as the API
    /// server's pass-through; the runtime's own idle timeout applies inside), and a half-close
    /// timeout of [`DEFAULT_HALF_CLOSE_TIMEOUT`] (30 s).
    pub relay: RelayConfig,
}

impl Default for PassthroughConfig {
    fn default() -> Self {
        PassthroughConfig {
            upstream: UpstreamConfig::default(),
            relay: RelayConfig {
                half_close_timeout: Some(DEFAULT_HALF_CLOSE_TIMEOUT),
                ..RelayConfig::default()
            },
        }
    }
}

/// Passes the upgrade request `req` through to `upstream_url` (the runtime's streaming URL,
/// path and query included, built by the caller) and answers the client with the runtime's
/// outcome. `client_addr` becomes `X-Forwarded-For`.
///
/// On a 101 the relay runs in a spawned task that ends when either side goes away (or on the
/// [`PassthroughConfig::relay`] timeouts). The connection serving `req` must have been set up
/// with hyper's `with_upgrades()`; a request hyper cannot upgrade is refused before the runtime
/// is contacted, so its token stays unspent.
pub async fn passthrough(
    req: Request<Incoming>,
    upstream_url: Uri,
    client_addr: Option<SocketAddr>,
    cfg: &PassthroughConfig,
) -> Response<Full<Bytes>> {
    // Without metrics the kind is never recorded.
    passthrough_metered(
        req,
        upstream_url,
        client_addr,
        cfg,
        &Meter::default(),
        Kind::Exec,
    )
    .await
}

/// [`passthrough`], accounted for: refusals before the runtime is asked count under `meter`;
/// from then on the session counts as `kind` with protocol `passthrough_websocket` or
/// `passthrough_spdy`, and its bytes are the upgraded connection's, framing included
/// (channel `tunnel`).
pub async fn passthrough_metered(
    req: Request<Incoming>,
    upstream_url: Uri,
    client_addr: Option<SocketAddr>,
    cfg: &PassthroughConfig,
    meter: &Meter,
    kind: Kind,
) -> Response<Full<Bytes>> {
    let (response, relay) =
        passthrough_session(req, upstream_url, client_addr, cfg, meter, kind).await;
    if let Some(relay) = relay {
        tokio::spawn(relay);
    }
    response
}

/// A pass-through's relay, to be run (and owned) by the caller.
pub type RelayTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// [`passthrough_metered`], with the relay handed back instead of spawned, so that the caller
/// can track it (the server's session set: its limit and its drain).
pub async fn passthrough_session(
    mut req: Request<Incoming>,
    upstream_url: Uri,
    client_addr: Option<SocketAddr>,
    cfg: &PassthroughConfig,
    meter: &Meter,
    kind: Kind,
) -> (Response<Full<Bytes>>, Option<RelayTask>) {
    let request = match upstream_request(&req, client_addr) {
        Ok(request) => request,
        Err(message) => {
            meter.refused(RefusalReason::NotUpgradable);
            let response = status_response(StatusCode::BAD_REQUEST, "BadRequest", message);
            return (response, None);
        }
    };
    // Taken before the runtime is asked: without it the client could never be switched over.
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        meter.refused(RefusalReason::NotUpgradable);
        let response = status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "unable to upgrade: this connection cannot switch protocols (HTTP/1.1 required)",
        );
        return (response, None);
    };
    drop(req);

    let target = redacted(&upstream_url);
    let protocol = if request.upgrade == WEBSOCKET {
        Protocol::PassthroughWebSocket
    } else {
        Protocol::PassthroughSpdy
    };
    let mut guard = meter.start(kind, protocol);
    let asked = tokio::time::Instant::now();
    let upgraded = match upstream::upgrade(&upstream_url, &request, &cfg.upstream).await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(upstream = %target, error = %e, kind = e.kind(), "pass-through refused");
            guard.set_outcome(match e.fault() {
                upstream::Fault::Upstream => Outcome::UpstreamError,
                upstream::Fault::Proxy => Outcome::InternalError,
            });
            return (error_response(e), None);
        }
    };
    guard.upgraded(asked.elapsed());
    let response = switching_protocols(&upgraded.headers);
    let relay = relay_session(on_upgrade, upgraded, cfg.relay.clone(), target, guard);
    (response, Some(Box::pin(relay)))
}

/// The outcome of a relay: both FINs passed on (or one, with the other side silent past the
/// half-close timeout) is `success` (the bridge cannot see inside a pass-through to tell an
/// exit code); a failure names the side that failed; an idle relay counts as `client_gone`.
fn relay_outcome(stats: &RelayStats) -> Outcome {
    match stats.ended {
        Ended::Closed | Ended::HalfCloseTimeout => Outcome::Success,
        Ended::Error { side: Side::A, .. } | Ended::IdleTimeout => Outcome::ClientGone,
        Ended::Error { side: Side::B, .. } => Outcome::UpstreamError,
    }
}

/// Waits for hyper to hand over the client connection, then relays until either side ends.
async fn relay_session(
    on_upgrade: OnUpgrade,
    upgraded: Upgraded,
    cfg: RelayConfig,
    target: String,
    mut guard: SessionGuard,
) {
    let client = match on_upgrade.await {
        Ok(client) => TokioIo::new(client),
        Err(e) => {
            // The client went away before the 101 was written; dropping `upgraded` closes the
            // runtime's connection.
            tracing::debug!(upstream = %target, error = %e, "client connection not upgraded");
            guard.set_outcome(Outcome::ClientGone);
            return;
        }
    };
    let to_client = guard.bytes(Channel::Tunnel, Direction::RuntimeToClient);
    let to_runtime = guard.bytes(Channel::Tunnel, Direction::ClientToRuntime);
    // The runtime's early bytes reach the client first, outside the counted connection.
    to_client.add(upgraded.leftover.len() as u64);
    let runtime = CountingIo::new(upgraded.io, to_client, to_runtime);
    let stats = relay::splice_with_prefix(client, runtime, upgraded.leftover, &cfg).await;
    guard.set_outcome(relay_outcome(&stats));
    tracing::debug!(
        upstream = %target,
        client_to_runtime = stats.a_to_b,
        runtime_to_client = stats.b_to_a,
        ended = stats.ended.label(),
        "pass-through ended"
    );
}

/// The upstream request: the client's method, upgrade token and the headers the runtime reads.
///
/// Forwarded: `Sec-WebSocket-*` (key, version, protocol, extensions: the handshake runs end to
/// end), `Origin`, and `X-Stream-Protocol-Version` one line per protocol (older runtimes read
/// only the first value of a comma-separated line, protocol.md §2.1). `X-Forwarded-For` gets
/// `client_addr` appended to the client's own list, as Go's upgrade-aware proxy does.
/// Everything else stays behind, credentials first: the runtime authenticates nobody, the token
/// is the capability (protocol.md §9).
fn upstream_request(
    req: &Request<Incoming>,
    client_addr: Option<SocketAddr>,
) -> Result<UpgradeRequest, String> {
    let headers = req.headers();
    let upgrade = upgrade_token(headers).ok_or_else(|| {
        "unable to upgrade: pass-through needs Upgrade: websocket or Upgrade: SPDY/3.1".to_owned()
    })?;

    let mut protocols = Vec::new();
    for value in headers.get_all(X_STREAM_PROTOCOL_VERSION) {
        let value = value
            .to_str()
            .map_err(|_| format!("invalid {X_STREAM_PROTOCOL_VERSION} header value"))?;
        let before = protocols.len();
        protocols.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        );
        if protocols.len() == before {
            // An empty or comma-only line: the runtime's answer to it depends on its version
            // (protocol.md §2.4), so it gets the line as sent.
            protocols.push(value.trim().to_owned());
        }
    }

    let mut forwarded = Vec::new();
    for (name, value) in headers {
        if name.as_str().starts_with("sec-websocket-") || name == header::ORIGIN {
            forwarded.push((name.clone(), value.clone()));
        }
    }
    if let Some(addr) = client_addr {
        let mut chain: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let ip = addr.ip().to_string();
        chain.push(&ip);
        if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
            forwarded.push((HeaderName::from_static(X_FORWARDED_FOR), value));
        }
    }

    Ok(UpgradeRequest {
        method: req.method().clone(),
        upgrade: upgrade.to_owned(),
        protocols,
        headers: forwarded,
    })
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The upgrade token to ask the runtime for, from the client's `Upgrade` header (first line,
/// case-insensitive substring, as the runtimes check it).
fn upgrade_token(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers
        .get(header::UPGRADE)?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    if value.contains(WEBSOCKET) {
        Some(WEBSOCKET)
    } else if value.contains(&SPDY_31.to_ascii_lowercase()) {
        Some(SPDY_31)
    } else {
        None
    }
}

/// Response headers never copied from the runtime: message framing (hyper frames what it
/// sends) and hop-by-hop headers. `Connection` and `Upgrade` are kept on a 101 only.
const NOT_RELAYED: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
];

/// Hop-by-hop names without an `http` constant.
const NOT_RELAYED_NAMES: &[&str] = &["keep-alive", "proxy-connection"];

fn relayed(name: &HeaderName) -> bool {
    !NOT_RELAYED.contains(name) && !NOT_RELAYED_NAMES.contains(&name.as_str())
}

/// The 101 for the client: the runtime's headers as it sent them (`Upgrade`, `Connection`,
/// `Sec-WebSocket-Accept`, `Sec-WebSocket-Protocol`, `X-Stream-Protocol-Version`, …), values
/// and order kept.
fn switching_protocols(runtime: &HeaderMap) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    for (name, value) in runtime {
        if relayed(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    response
}

/// What the client gets when the runtime did not switch protocols.
pub(crate) fn error_response(e: UpstreamError) -> Response<Full<Bytes>> {
    match e {
        // protocol.md §13.4 step 4: the runtime's own refusal, relayed unchanged (a 403 keeps
        // its X-Accepted-Stream-Protocol-Versions lines).
        UpstreamError::Refused {
            status,
            headers,
            raw_body,
            ..
        } if status.as_u16() >= 400 => {
            let mut response = Response::new(Full::new(raw_body));
            *response.status_mut() = status;
            let out = response.headers_mut();
            for (name, value) in headers.iter() {
                if relayed(name) && name != header::CONNECTION && name != header::UPGRADE {
                    out.append(name.clone(), value.clone());
                }
            }
            // Like Go's proxy, which closes after relaying a refusal.
            out.insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        // §13.4 step 5: any other answer (1xx, 2xx, 3xx with or without a Location) is the
        // proxy's own error; a redirect is never followed.
        UpstreamError::Refused { status, .. } | UpstreamError::Redirect { status, .. } => {
            status_response(
                StatusCode::BAD_GATEWAY,
                REASON_INTERNAL_ERROR,
                format!("invalid upgrade response: status code {}", status.as_u16()),
            )
        }
        UpstreamError::ConnectTimeout { .. } | UpstreamError::ResponseHeaderTimeout { .. } => {
            status_response(StatusCode::GATEWAY_TIMEOUT, "Timeout", e.client_go_text())
        }
        UpstreamError::InvalidUrl { .. }
        | UpstreamError::InvalidRequest { .. }
        | UpstreamError::NoTlsConfig { .. } => status_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            REASON_INTERNAL_ERROR,
            e.client_go_text(),
        ),
        UpstreamError::Dial { .. }
        | UpstreamError::Tls { .. }
        | UpstreamError::Transport { .. }
        | UpstreamError::ResponseHeaderTooLarge { .. }
        | UpstreamError::MalformedResponse { .. }
        | UpstreamError::MissingUpgradeHeaders { .. } => status_response(
            StatusCode::BAD_GATEWAY,
            REASON_INTERNAL_ERROR,
            e.client_go_text(),
        ),
    }
}

/// A `metav1.Status` error response, as the API server writes them. Its texts come from
/// [`UpstreamError`]'s display, which never holds a full token.
pub(crate) fn status_response(
    code: StatusCode,
    reason: &str,
    message: impl Into<String>,
) -> Response<Full<Bytes>> {
    let status = Status::http_error(code.as_u16(), reason, message);
    let mut response = Response::new(Full::new(Bytes::from(status.to_json())));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The runtime URL for logs: host, port and the redacted path; never userinfo or the token.
pub(crate) fn redacted(url: &Uri) -> String {
    let path = upstream::redact_path(url.path_and_query().map_or("/", |pq| pq.as_str()));
    match (url.host(), url.port_u16()) {
        (Some(host), Some(port)) => format!("{host}:{port}{path}"),
        (Some(host), None) => format!("{host}{path}"),
        _ => path,
    }
}
