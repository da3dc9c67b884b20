//! Port-forward over WebSocket, towards a runtime that serves only SPDY `portforward.k8s.io`
//! (protocol.md §6, §7): the handshake, the choice of mode, and the runtime's refusals.
//!
//! ```text
//!  offer                                    mode                        runtime
//!  SPDY/3.1+portforward.k8s.io (kubectl     tunnel: bytes copied,       POST Upgrade: SPDY/3.1
//!    ≥ 1.31, crictl --transport websocket)  SPDY end to end (tunnel)    X-Stream-Protocol-Version:
//!  v4.channel.k8s.io, v4.base64.channel     channels ⇄ data/error           portforward.k8s.io
//!    .k8s.io, or nothing (kube-rs, python)  stream pairs (channel)
//!  anything else                            400 "unable to upgrade: no tunneling spdy
//!                                           protocols provided" (C-74)
//! ```
//!
//! Both modes upgrade the runtime first and answer the client after (C-71): a refusal reaches
//! the client as the runtime's own status, headers and body (C-72), so client-go falls back to
//! SPDY and the client sees why. Requests refused before the runtime is asked (bad handshake,
//! no usable protocol, no ports) leave the runtime's single-use token unspent. SPDY port-forward
//! clients never come here: the server passes them through.
//!
//! [`serve`] answers the upgrade request and hands back the [`Session`] to run once the 101 is
//! out; the caller decides where it runs (the server keeps its sessions in a set it can shut
//! down).

pub mod channel;
pub mod tunnel;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::bridge::passthrough::{self, redacted, status_response};
use crate::channel::subprotocol::{self, PORT_FORWARD, TUNNEL_PREFIX};
use crate::metrics::{
    self, Channel, CountingIo, Direction, Meter, Outcome, Protocol, RefusalReason, SessionGuard,
};
use crate::status::REASON_INTERNAL_ERROR;
use crate::upstream::{self, UpgradeRequest, UpstreamConfig, UpstreamError, UpstreamIo};
use crate::websocket::{self, CloseFrame, Event, Limits, Reader, Writer};

pub use channel::{
    ChannelConfig, ChannelEnd, ChannelStats, Codec, DataBytes, PortStats, PortsError,
};
pub use tunnel::{TunnelConfig, TunnelEnd, TunnelStats};

/// The API server's answer when no tunnelling sub-protocol is offered (C-74); the bridge gives
/// it when the offer suits neither mode.
pub const NO_TUNNEL_PROTOCOLS: &str = "unable to upgrade: no tunneling spdy protocols provided";

/// How port-forward upgrades are served.
#[derive(Clone, Debug)]
pub struct PortForwardConfig {
    /// Connecting to the runtime and reading its answer. Default [`UpstreamConfig::default`].
    pub upstream: UpstreamConfig,
    /// Tunnel mode, and the client WebSocket limits of both modes (message and frame cap).
    /// Default [`TunnelConfig::default`].
    pub tunnel: TunnelConfig,
    /// Channel mode. Default [`ChannelConfig::default`].
    pub channel: ChannelConfig,
    /// Serve the legacy channel protocol (Mode C) by translation. Off, an offer without a
    /// tunnelling protocol gets the API server's 400 (C-74). Default on.
    pub channel_mode: bool,
}

impl Default for PortForwardConfig {
    fn default() -> Self {
        PortForwardConfig {
            upstream: UpstreamConfig::default(),
            tunnel: TunnelConfig::default(),
            channel: ChannelConfig::default(),
            channel_mode: true,
        }
    }
}

/// What a client's offer of sub-protocols asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Tunnelling: the offered `SPDY/3.1+…k8s.io` protocols with the prefix stripped, in the
    /// client's order; each becomes one `X-Stream-Protocol-Version` line upstream, as the API
    /// server sends them.
    Tunnel(Vec<String>),
    /// The legacy channel protocol, with the sub-protocol to answer (none when none was
    /// offered).
    Channel(Codec, Option<&'static str>),
}

/// The mode for an offer: the tunnel whenever a tunnelling protocol is offered (as the API
/// server routes), else channel mode if enabled and the offer allows it.
pub fn choose_mode(offered: &[String], channel_mode: bool) -> Option<Mode> {
    let tunnels = subprotocol::tunnel_protocols(offered);
    if !tunnels.is_empty() {
        let stripped = tunnels
            .iter()
            .map(|p| p[TUNNEL_PREFIX.len()..].to_owned())
            .collect();
        return Some(Mode::Tunnel(stripped));
    }
    if !channel_mode {
        return None;
    }
    Codec::choose(offered).map(|(codec, protocol)| Mode::Channel(codec, protocol))
}

/// An accepted port-forward whose 101 is on its way to the client: [`Session::run`] runs it.
pub struct Session {
    on_upgrade: OnUpgrade,
    io: UpstreamIo,
    leftover: Bytes,
    work: Work,
    /// The runtime URL with the token redacted, for logs.
    target: String,
    /// Accounts for the session; its outcome is set from the [`SessionReport`].
    guard: SessionGuard,
}

enum Work {
    Tunnel(TunnelConfig),
    Channel(Box<ChannelWork>),
}

struct ChannelWork {
    ports: Vec<u16>,
    codec: Codec,
    cfg: ChannelConfig,
    limits: Limits,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.work {
            Work::Tunnel(_) => "tunnel",
            Work::Channel(_) => "channel",
        };
        f.debug_struct("Session")
            .field("mode", &mode)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// How a session went, for metrics and the log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionReport {
    /// A tunnel ran.
    Tunnel(TunnelStats),
    /// A channel-mode session ran.
    Channel(ChannelStats),
    /// The client connection was never handed over (it went away before the 101 was
    /// written); the runtime connection was closed.
    ClientNotUpgraded,
}

impl SessionReport {
    /// The metric outcome.
    ///
    /// Tunnel: the client's Close is the normal end (`success`); EOF without one is
    /// `client_gone`; a text or oversized message `client_error`; the runtime ending or
    /// failing a tunnel the client still used is `upstream_error`. Channel mode: every port
    /// done is `success` unless a forward failed (`upstream_error`, the runtime's error text
    /// went to the client); the client leaving is the normal end of a channel-mode session
    /// and counts as `success` (the mode does not tell a Close frame from a vanished client);
    /// a client that breaks RFC 6455 is `client_error`.
    pub fn outcome(&self) -> Outcome {
        match self {
            SessionReport::Tunnel(s) => match s.end {
                TunnelEnd::ClientClosed => Outcome::Success,
                TunnelEnd::ClientGone => Outcome::ClientGone,
                TunnelEnd::ClientProtocolError | TunnelEnd::ClientMessageTooBig => {
                    Outcome::ClientError
                }
                TunnelEnd::UpstreamClosed | TunnelEnd::UpstreamFailed(_) => Outcome::UpstreamError,
            },
            SessionReport::Channel(s) => match s.end {
                ChannelEnd::PortsDone if s.ports.iter().any(|p| p.error.is_some()) => {
                    Outcome::UpstreamError
                }
                ChannelEnd::PortsDone | ChannelEnd::ClientGone => Outcome::Success,
                ChannelEnd::ClientProtocolError => Outcome::ClientError,
            },
            SessionReport::ClientNotUpgraded => Outcome::ClientGone,
        }
    }
}

impl Session {
    /// Waits for hyper to hand over the client connection, then runs the session until both
    /// sides are closed.
    pub async fn run(self) -> SessionReport {
        let Session {
            on_upgrade,
            io,
            leftover,
            work,
            target,
            mut guard,
        } = self;
        let client = match on_upgrade.await {
            Ok(client) => TokioIo::new(client),
            Err(e) => {
                tracing::debug!(upstream = %target, error = %e, "client connection not upgraded");
                guard.set_outcome(Outcome::ClientGone);
                return SessionReport::ClientNotUpgraded;
            }
        };
        let report = match work {
            Work::Tunnel(cfg) => {
                let ws = tunnel::accept(client, &cfg);
                // Counted on the runtime's connection: what the tunnel wrote to it and read
                // from it; the early bytes go to the client first, outside it.
                let to_client = guard.bytes(Channel::Tunnel, Direction::RuntimeToClient);
                let to_runtime = guard.bytes(Channel::Tunnel, Direction::ClientToRuntime);
                to_client.add(leftover.len() as u64);
                let io = CountingIo::new(io, to_client, to_runtime);
                SessionReport::Tunnel(tunnel::run(ws, io, leftover, &cfg).await)
            }
            Work::Channel(work) => {
                let ChannelWork {
                    ports,
                    codec,
                    cfg,
                    limits,
                } = *work;
                // hyper's upgraded connection replays what it read past the request itself.
                let ws = websocket::server(client, Bytes::new(), limits);
                let bytes = DataBytes {
                    client_to_runtime: guard.bytes(Channel::Data, Direction::ClientToRuntime),
                    runtime_to_client: guard.bytes(Channel::Data, Direction::RuntimeToClient),
                };
                let stats = channel::run(ws, io, leftover, ports, codec, &cfg, &bytes).await;
                SessionReport::Channel(stats)
            }
        };
        guard.set_outcome(report.outcome());
        match &report {
            SessionReport::Tunnel(s) => tracing::info!(
                upstream = %target,
                mode = "tunnel",
                end = s.end.label(),
                client_to_runtime = s.client_to_upstream,
                runtime_to_client = s.upstream_to_client,
                client_messages = s.client_messages,
                runtime_writes = s.upstream_writes,
                "port-forward ended"
            ),
            SessionReport::Channel(s) => tracing::info!(
                upstream = %target,
                mode = "channel",
                end = s.end.label(),
                client_to_runtime = s.client_bytes,
                runtime_to_client = s.ports.iter().map(|p| p.runtime_to_client).sum::<u64>(),
                failed_ports = s.ports.iter().filter(|p| p.error.is_some()).count(),
                "port-forward ended"
            ),
            SessionReport::ClientNotUpgraded => {}
        }
        report
    }
}

/// Answers a WebSocket port-forward upgrade `req` whose runtime URL is `upstream_url`: the 101
/// and the [`Session`] to run after it, or an error response (and no session).
///
/// `known_ports` are the ports of the CRI `PortForward` request behind a bridge token (CRI
/// interception): channel mode forwards those, as the kubelet's CRI streaming server does.
/// `None` or empty (standalone mode): they come from the query (`ports=`, `port=`).
///
/// The connection serving `req` must have been set up with hyper's `with_upgrades()`.
///
/// Refusals before the runtime is asked count under `meter` as handshake refusals; from the
/// upgrade on, the session is accounted for (kind `portforward`, protocol `tunnel` or
/// `channel`) until the [`Session`] ends.
pub async fn serve(
    mut req: Request<Incoming>,
    upstream_url: Uri,
    known_ports: Option<&[u16]>,
    cfg: &PortForwardConfig,
    meter: &Meter,
) -> (Response<Full<Bytes>>, Option<Session>) {
    let key = match check_handshake(&req) {
        Ok(key) => key,
        Err(refusal) => {
            meter.refused(refusal.reason());
            return (refusal.response(), None);
        }
    };
    let offered = subprotocol::offered(req.headers());
    let Some(mode) = choose_mode(&offered, cfg.channel_mode) else {
        meter.refused(RefusalReason::UnsupportedProtocol);
        return (
            status_response(StatusCode::BAD_REQUEST, "BadRequest", NO_TUNNEL_PROTOCOLS),
            None,
        );
    };
    let ports = match &mode {
        Mode::Tunnel(_) => Vec::new(),
        Mode::Channel(..) => {
            let ports = match known_ports.filter(|p| !p.is_empty()) {
                Some(known) => channel::check_port_count(known.to_vec(), cfg.channel.max_ports),
                None => channel::ports_from_query(req.uri().query(), cfg.channel.max_ports),
            };
            match ports {
                Ok(ports) => ports,
                Err(e) => {
                    meter.refused(RefusalReason::Ports);
                    return (
                        status_response(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
                        None,
                    );
                }
            }
        }
    };
    // Taken before the runtime is asked: without it the client could never be switched over.
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        meter.refused(RefusalReason::NotUpgradable);
        return (
            status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "unable to upgrade: this connection cannot switch protocols (HTTP/1.1 required)",
            ),
            None,
        );
    };
    drop(req);

    let target = redacted(&upstream_url);
    let request = match &mode {
        Mode::Tunnel(protocols) => UpgradeRequest::spdy(protocols),
        Mode::Channel(..) => UpgradeRequest::spdy(&[PORT_FORWARD]),
    };
    let protocol = match &mode {
        Mode::Tunnel(_) => Protocol::Tunnel,
        Mode::Channel(..) => Protocol::Channel,
    };
    let mut guard = meter.start(metrics::Kind::PortForward, protocol);
    let asked = tokio::time::Instant::now();
    let upgraded = match upstream::upgrade(&upstream_url, &request, &cfg.upstream).await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::info!(upstream = %target, error = %e, kind = e.kind(), "runtime refused the port-forward upgrade");
            guard.set_outcome(match e.fault() {
                upstream::Fault::Upstream => Outcome::UpstreamError,
                upstream::Fault::Proxy => Outcome::InternalError,
            });
            return (refusal_response(e), None);
        }
    };
    guard.upgraded(asked.elapsed());
    // Only the connection and its early bytes are kept: the response head's buffer is freed
    // (an idle tunnel should hold as little as possible).
    let io = upgraded.io;
    let leftover = if upgraded.leftover.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&upgraded.leftover)
    };
    let chosen = upgraded.protocol;

    let (answer, work) = match mode {
        Mode::Tunnel(_) => {
            // `SPDY/3.1+<runtime's choice>` when the client offered it; none otherwise, which
            // client-go reports as `invalid protocol` and answers by falling back (C-73).
            let answer = chosen
                .map(|p| format!("{TUNNEL_PREFIX}{p}"))
                .filter(|p| offered.iter().any(|o| o == p));
            if answer.is_none() {
                tracing::info!(upstream = %target, "runtime chose no offered protocol; answering without a sub-protocol");
            }
            (answer, Work::Tunnel(cfg.tunnel.clone()))
        }
        Mode::Channel(codec, protocol) => {
            if chosen.as_deref() != Some(PORT_FORWARD) {
                guard.set_outcome(Outcome::UpstreamError);
                return (
                    status_response(
                        StatusCode::BAD_GATEWAY,
                        REASON_INTERNAL_ERROR,
                        format!(
                            "unable to upgrade connection: runtime chose protocol {:?}, not {PORT_FORWARD:?}",
                            chosen.unwrap_or_default()
                        ),
                    ),
                    None,
                );
            }
            let work = Work::Channel(Box::new(ChannelWork {
                ports,
                codec,
                cfg: cfg.channel.clone(),
                limits: cfg.tunnel.limits(),
            }));
            (protocol.map(str::to_owned), work)
        }
    };

    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&websocket::accept_key(&key))
            .expect("base64 is a valid header value"),
    );
    if let Some(protocol) = answer.and_then(|p| HeaderValue::from_str(&p).ok()) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    let session = Session {
        on_upgrade,
        io,
        leftover,
        work,
        target,
        guard,
    };
    (response, Some(session))
}

/// A WebSocket handshake the bridge refuses before asking the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadHandshake {
    NotGet,
    NotWebSocket,
    Version,
    NoKey,
}

impl BadHandshake {
    fn reason(self) -> RefusalReason {
        match self {
            BadHandshake::NotGet => RefusalReason::Method,
            BadHandshake::NotWebSocket => RefusalReason::NotAnUpgrade,
            BadHandshake::Version => RefusalReason::WebSocketVersion,
            BadHandshake::NoKey => RefusalReason::MissingKey,
        }
    }

    fn response(self) -> Response<Full<Bytes>> {
        let (code, reason, message) = match self {
            BadHandshake::NotGet => (
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "a WebSocket upgrade must use GET",
            ),
            BadHandshake::NotWebSocket => (
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "unable to upgrade: Upgrade: websocket required",
            ),
            BadHandshake::Version => (
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "unsupported Sec-WebSocket-Version; use 13",
            ),
            BadHandshake::NoKey => (
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "missing Sec-WebSocket-Key",
            ),
        };
        let mut response = status_response(code, reason, message);
        if self == BadHandshake::Version {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// The checks made before the runtime is asked (so a bad request never spends the token):
/// GET, an `Upgrade: websocket`, version 13, a key. Returns the key.
fn check_handshake(req: &Request<Incoming>) -> Result<Vec<u8>, BadHandshake> {
    if req.method() != Method::GET {
        return Err(BadHandshake::NotGet);
    }
    let headers = req.headers();
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("websocket"));
    if !websocket {
        return Err(BadHandshake::NotWebSocket);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(BadHandshake::Version);
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
        .ok_or(BadHandshake::NoKey)
}

/// Ends a client connection from the bridge's side: sends the Close `frame` (an empty Close
/// for `None`) after the frame in progress; with `reader`, reads (and discards) until the
/// client's Close reply or EOF, so that the TCP close does not reset a client still sending;
/// then shuts the connection down. Each step is bounded by `limit`.
async fn close_client<R, W>(
    writer: &mut Writer<W>,
    reader: Option<&mut Reader<R>>,
    frame: Option<CloseFrame>,
    limit: std::time::Duration,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let sent = tokio::time::timeout(limit, writer.send_close(frame.as_ref())).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    if let Some(reader) = reader {
        let _ = tokio::time::timeout(limit, async {
            while let Some(Ok(event)) = reader.next().await {
                if matches!(event, Event::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = tokio::time::timeout(limit, writer.shutdown()).await;
}

/// What the client gets when the runtime did not switch protocols (protocol.md §7.2 step 5):
/// what every pass-through answers (the runtime's own refusal relayed, C-72), except for a 101
/// without the upgrade headers, which the API server's tunnel reports in its own words.
fn refusal_response(e: UpstreamError) -> Response<Full<Bytes>> {
    match e {
        UpstreamError::MissingUpgradeHeaders { .. } => status_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            REASON_INTERNAL_ERROR,
            "unable to upgrade: missing upgrade headers in response",
        ),
        e => passthrough::error_response(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_session_the_client_broke_counts_as_a_client_error() {
        let report = |end| {
            SessionReport::Channel(ChannelStats {
                client_bytes: 0,
                ports: Vec::new(),
                end,
            })
            .outcome()
        };
        assert_eq!(
            report(ChannelEnd::ClientProtocolError),
            Outcome::ClientError
        );
        assert_eq!(report(ChannelEnd::ClientGone), Outcome::Success);
        assert_eq!(report(ChannelEnd::PortsDone), Outcome::Success);
    }

    fn offer(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_tunnel_offer_wins_and_is_stripped_in_client_order() {
        assert_eq!(
            choose_mode(
                &offer(&["v4.channel.k8s.io", "SPDY/3.1+portforward.k8s.io"]),
                true
            ),
            Some(Mode::Tunnel(vec!["portforward.k8s.io".into()]))
        );
        assert_eq!(
            choose_mode(
                &offer(&[
                    "SPDY/3.1+v2.portforward.k8s.io",
                    "SPDY/3.1+portforward.k8s.io"
                ]),
                false
            ),
            Some(Mode::Tunnel(vec![
                "v2.portforward.k8s.io".into(),
                "portforward.k8s.io".into()
            ]))
        );
    }

    #[test]
    fn channel_mode_takes_v4_offers_or_no_offer() {
        assert_eq!(
            choose_mode(&[], true),
            Some(Mode::Channel(Codec::Binary, None))
        );
        assert_eq!(
            choose_mode(&offer(&["v5.channel.k8s.io", "v4.channel.k8s.io"]), true),
            Some(Mode::Channel(Codec::Binary, Some("v4.channel.k8s.io")))
        );
        assert_eq!(choose_mode(&offer(&["v4.channel.k8s.io"]), false), None);
        assert_eq!(choose_mode(&offer(&["v5.channel.k8s.io"]), true), None);
    }
}
