//! The streaming listener: HTTP/1.1 with upgrades, routing, the WebSocket handshake, and the
//! choice between translation (v5) and pass-through (legacy WebSocket protocols, SPDY).

mod options;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{debug, info, warn};

pub use options::{OptionsError, stream_options};

use crate::bridge::passthrough::{self, PassthroughConfig};
use crate::bridge::remotecommand::{self, SessionConfig, SessionEnd};
use crate::channel::subprotocol::{self, RemoteCommandChoice};
use crate::connection::ConnectionConfig;
use crate::status::Status;
use crate::tokens::{self, TokenStore};
use crate::upstream::remotecommand::{
    RemoteCommand, StartError, StreamOptions, client_connection_config,
};
use crate::upstream::{UpstreamConfig, UpstreamError, redact_path};

/// The response body type of every route.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How the bridge serves. One struct; the production-surface issue adds file and env loading.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// Streaming listener. Default `127.0.0.1:8765`.
    pub listen: SocketAddr,
    /// The runtime's streaming server, e.g. `http://127.0.0.1:41235`; `/exec/{token}` maps to
    /// `<upstream>/exec/{token}`.
    pub upstream: http::Uri,
    /// Prefix of the bridge's routes (`<base>/exec/{token}`). Default empty.
    pub base_path: String,
    /// API-server compatibility: answer 101 before contacting the runtime, so upstream
    /// failures arrive as a Status on channel 3 (§5.2) instead of an HTTP error. Default off.
    pub compat_upgrade_client_first: bool,
    /// Upstream connection settings.
    pub upstream_cfg: UpstreamConfig,
    /// The SPDY connection to the runtime: SYN_REPLY wait (30 s), PING period (5 s), close
    /// timeout, decoder caps. Default [`client_connection_config`], client-go's values.
    pub connection: ConnectionConfig,
    /// Translated-session settings.
    pub session: SessionConfig,
    /// Largest client WebSocket message, in bytes. Default 32 MiB (x/net/websocket's cap).
    pub max_message: usize,
    /// CRI interception: the bridge tokens handed out by [`crate::cri`]. With a store, a
    /// path's token must be one of them and names the runtime URL and stream options; without
    /// one (standalone), the path maps onto [`upstream`](Self::upstream) and the options come
    /// from the query. Default none.
    pub tokens: Option<Arc<TokenStore>>,
}

impl BridgeConfig {
    /// Default for [`listen`](Self::listen).
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:8765";
    /// Default for [`max_message`](Self::max_message).
    pub const DEFAULT_MAX_MESSAGE: usize = 32 * 1024 * 1024;
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            listen: Self::DEFAULT_LISTEN.parse().expect("valid default"),
            upstream: http::Uri::from_static("http://127.0.0.1:10010"),
            base_path: String::new(),
            compat_upgrade_client_first: false,
            upstream_cfg: UpstreamConfig::default(),
            connection: client_connection_config(),
            session: SessionConfig::default(),
            max_message: Self::DEFAULT_MAX_MESSAGE,
            tokens: None,
        }
    }
}

/// What every connection of a bridge shares.
struct Ctx {
    cfg: BridgeConfig,
    /// Translated sessions outlive the HTTP connection that upgraded them; they are kept here
    /// so that [`Bridge::shutdown`] ends them too. `None` once shut down.
    sessions: Mutex<Option<JoinSet<()>>>,
}

impl Ctx {
    /// Runs a session the bridge tracks; after shutdown the session is dropped unstarted.
    fn spawn_session<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sessions.as_mut() {
            // Reap finished sessions so the set does not grow with the number served.
            while set.try_join_next().is_some() {}
            set.spawn(fut);
        }
    }

    fn take_sessions(&self) -> Option<JoinSet<()>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl std::ops::Deref for Ctx {
    type Target = BridgeConfig;

    fn deref(&self) -> &BridgeConfig {
        &self.cfg
    }
}

/// A running bridge.
pub struct Bridge {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Bridge {
    /// Binds the listener and starts serving.
    pub async fn start(cfg: BridgeConfig) -> std::io::Result<Bridge> {
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            cfg,
            sessions: Mutex::new(Some(JoinSet::new())),
        });
        info!(%addr, upstream = %ctx.upstream, "bridge listening");
        let task = tokio::spawn(accept_loop(listener, ctx, stop_rx));
        Ok(Bridge { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and ends every connection and session.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let ctx = ctx.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(handle(req, peer, ctx).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades();
                    if let Err(e) = conn.await {
                        debug!(error = %e, "client connection ended with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Connections first: once their handlers are gone, no new session can start.
    conns.shutdown().await;
    if let Some(mut sessions) = ctx.take_sessions() {
        sessions.shutdown().await;
    }
}

/// The routes a bridge serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Exec,
    Attach,
    PortForward,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Attach => "attach",
            Kind::PortForward => "portforward",
        }
    }
}

fn route<'a>(path: &'a str, base: &str) -> Option<(Kind, &'a str)> {
    let rest = path.strip_prefix(base.trim_end_matches('/'))?;
    let rest = rest.strip_prefix('/')?;
    let (kind, token) = rest.split_once('/')?;
    if token.is_empty() || token.contains('/') {
        return None;
    }
    let kind = match kind {
        "exec" => Kind::Exec,
        "attach" => Kind::Attach,
        "portforward" => Kind::PortForward,
        _ => return None,
    };
    Some((kind, token))
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, ctx: Arc<Ctx>) -> Response<Body> {
    let Some((kind, token)) = route(req.uri().path(), &ctx.base_path) else {
        return status_response(
            StatusCode::NOT_FOUND,
            Status::http_error(404, "NotFound", "404 page not found"),
        );
    };
    // With CRI interception the token is the bridge's own: it names the runtime's URL and
    // the CRI request's stream options, and like the runtime's it is spent by its first use,
    // whatever happens next (protocol.md §2.2).
    let (upstream_url, known) = match &ctx.tokens {
        Some(store) => match store.take(token) {
            Some(s) if s.kind.as_str() == kind.as_str() => (s.runtime_url.clone(), Some(s)),
            _ => {
                debug!(token = %tokens::redact(token), "unknown or expired bridge token");
                return status_response(
                    StatusCode::NOT_FOUND,
                    Status::http_error(404, "NotFound", "unknown or expired streaming token"),
                );
            }
        },
        None => match upstream_url(&ctx.upstream, kind, token) {
            Some(u) => (u, None),
            None => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    Status::http_error(400, "BadRequest", "invalid token in request path"),
                );
            }
        },
    };
    let known_options = known.as_ref().map(|s| s.options);
    let headers = req.headers();
    let websocket =
        header_has(headers, &UPGRADE, "websocket") && header_has(headers, &CONNECTION, "upgrade");
    if !websocket {
        if header_has(headers, &UPGRADE, "spdy/3.1") {
            // Old clients (kubectl ≤ 1.29, fallbacks): the runtime serves them natively.
            return passthrough_response(req, upstream_url, peer, &ctx).await;
        }
        return status_response(
            StatusCode::BAD_REQUEST,
            Status::http_error(
                400,
                "BadRequest",
                "a WebSocket (v5.channel.k8s.io) or SPDY/3.1 upgrade is required",
            ),
        );
    }
    let offered = subprotocol::offered(headers);
    if kind == Kind::PortForward {
        // WebSocket port-forward: the tunnel or the legacy channel protocol, translated to the
        // runtime's SPDY port-forward. (SPDY clients were passed through above.)
        return portforward_response(req, upstream_url, &ctx).await;
    }
    match subprotocol::choose_remote_command(&offered) {
        RemoteCommandChoice::V5 => translate(req, kind, upstream_url, known_options, &ctx).await,
        RemoteCommandChoice::Legacy(_) | RemoteCommandChoice::NoneOffered => {
            passthrough_response(req, upstream_url, peer, &ctx).await
        }
        // x/net/websocket's answer to an unacceptable sub-protocol: 403, empty body (C-03).
        RemoteCommandChoice::Unsupported => empty_response(StatusCode::FORBIDDEN),
    }
}

async fn passthrough_response(
    req: Request<Incoming>,
    upstream_url: http::Uri,
    peer: SocketAddr,
    ctx: &BridgeConfig,
) -> Response<Body> {
    let cfg = PassthroughConfig {
        upstream: ctx.upstream_cfg.clone(),
        ..PassthroughConfig::default()
    };
    debug!(upstream = %redact_path(upstream_url.path()), "passing the upgrade through");
    passthrough::passthrough(req, upstream_url, Some(peer), &cfg)
        .await
        .map(|b| b.map_err(|never| match never {}).boxed())
}

/// Mode A: validate, upgrade the runtime (unless in API-server order), answer 101, translate.
async fn translate(
    req: Request<Incoming>,
    kind: Kind,
    upstream_url: http::Uri,
    known_options: Option<StreamOptions>,
    ctx: &Arc<Ctx>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            Status::http_error(405, "MethodNotAllowed", "a WebSocket upgrade must use GET"),
        );
    }
    let headers = req.headers();
    if headers.get("sec-websocket-version").map(|v| v.as_bytes()) != Some(b"13") {
        let mut resp = status_response(
            StatusCode::BAD_REQUEST,
            Status::http_error(
                400,
                "BadRequest",
                "unsupported Sec-WebSocket-Version; use 13",
            ),
        );
        resp.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return resp;
    }
    let Some(key) = headers
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
    else {
        return status_response(
            StatusCode::BAD_REQUEST,
            Status::http_error(400, "BadRequest", "missing Sec-WebSocket-Key"),
        );
    };
    let opts = match known_options.map_or_else(|| stream_options(req.uri().query()), Ok) {
        Ok(o) => o,
        Err(e) => {
            // Refused before any upstream contact: the runtime's token is not spent.
            return status_response(
                StatusCode::BAD_REQUEST,
                Status::http_error(400, "BadRequest", e.to_string()),
            );
        }
    };

    let upstream = if ctx.compat_upgrade_client_first {
        None
    } else {
        match start_upstream(&upstream_url, opts, ctx).await {
            Ok(rc) => Some(rc),
            Err(e) => return upstream_error_response(kind, e),
        }
    };

    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&derive_accept_key(&key)).expect("base64 is a valid header"),
    );
    h.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(subprotocol::V5),
    );

    let session_ctx = ctx.clone();
    ctx.spawn_session(async move {
        let ctx = session_ctx;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "client upgrade failed");
                if let Some(rc) = upstream {
                    rc.close().await;
                }
                return;
            }
        };
        let ws_cfg = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(ctx.max_message))
            .max_frame_size(Some(ctx.max_message));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_cfg))
                .await;
        // API-server order: the dial happens inside the session, after the initial message.
        let upstream = async {
            match upstream {
                Some(rc) => Ok(rc),
                None => start_upstream(&upstream_url, opts, &ctx)
                    .await
                    .map_err(|e| status_for_start_error(&e)),
            }
        };
        let end = remotecommand::run(ws, upstream, opts, &ctx.session).await;
        log_end(kind, &end);
    });
    resp
}

async fn start_upstream(
    url: &http::Uri,
    opts: StreamOptions,
    ctx: &BridgeConfig,
) -> Result<RemoteCommand, StartError> {
    RemoteCommand::start(url, opts, &ctx.upstream_cfg, ctx.connection.clone()).await
}

fn log_end(kind: Kind, end: &SessionEnd) {
    match end {
        SessionEnd::Completed { exit_code, status } => {
            info!(kind = kind.as_str(), outcome = %status.status, exit_code = ?exit_code, "session ended")
        }
        other => info!(kind = kind.as_str(), end = ?other, "session ended"),
    }
}

/// The Status a client gets on channel 3 when the runtime could not be reached (API-server
/// order, §5.6).
fn status_for_start_error(e: &StartError) -> Status {
    match e {
        StartError::Upgrade(up) => match up.status() {
            Some(status) => status.clone(),
            None => Status::internal_error(up.client_go_text()),
        },
        other => Status::internal_error(other.to_string()),
    }
}

/// The HTTP answer when the runtime could not be reached before the 101 (default order): the
/// runtime's own status code where it refused, with a Status body client-go reports clearly.
fn upstream_error_response(kind: Kind, e: StartError) -> Response<Body> {
    warn!(kind = kind.as_str(), error = %e, "upstream refused or unreachable");
    let (code, mut status) = match &e {
        StartError::Upgrade(UpstreamError::Refused { status, .. }) => {
            let mut s = status_for_start_error(&e);
            if s.code == 0 || s.code == 500 && status.as_u16() != 500 {
                s = Status::http_error(status.as_u16(), reason_for(*status), e.to_string());
            }
            (*status, s)
        }
        StartError::Upgrade(
            UpstreamError::ConnectTimeout { .. } | UpstreamError::ResponseHeaderTimeout { .. },
        ) => (
            StatusCode::GATEWAY_TIMEOUT,
            Status::http_error(504, "Timeout", e.to_string()),
        ),
        StartError::Upgrade(_) => (
            StatusCode::BAD_GATEWAY,
            Status::http_error(502, "ServiceUnavailable", e.to_string()),
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Status::internal_error(e.to_string()),
        ),
    };
    if status.kind.is_empty() {
        status.kind = "Status".into();
        status.api_version = "v1".into();
    }
    status_response(code, status)
}

fn reason_for(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        429 => "TooManyRequests",
        _ => "InternalError",
    }
}

fn upstream_url(base: &http::Uri, kind: Kind, token: &str) -> Option<http::Uri> {
    let base = base.to_string();
    format!("{}/{}/{}", base.trim_end_matches('/'), kind.as_str(), token)
        .parse()
        .ok()
}

fn header_has(headers: &HeaderMap, name: &http::HeaderName, needle: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.to_ascii_lowercase().contains(needle))
            .unwrap_or(false)
    })
}

fn status_response(code: StatusCode, status: Status) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(status.to_json()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn empty_response(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = code;
    resp
}

/// Port-forward over WebSocket (Mode B tunnel, Mode C channels): `bridge::portforward` answers
/// the upgrade; its session runs among the bridge's sessions, so shutdown ends it.
async fn portforward_response(
    req: Request<Incoming>,
    upstream_url: http::Uri,
    ctx: &Arc<Ctx>,
) -> Response<Body> {
    use crate::bridge::portforward::{self, ChannelConfig, PortForwardConfig, TunnelConfig};
    let cfg = PortForwardConfig {
        upstream: ctx.upstream_cfg.clone(),
        tunnel: TunnelConfig {
            max_message: ctx.max_message,
            ..TunnelConfig::default()
        },
        channel: ChannelConfig {
            connection: ctx.connection.clone(),
            ..ChannelConfig::default()
        },
        ..PortForwardConfig::default()
    };
    let (response, session) = portforward::serve(req, upstream_url, &cfg).await;
    if let Some(session) = session {
        ctx.spawn_session(async move {
            session.run().await;
        });
    }
    response.map(|b| b.map_err(|never| match never {}).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_under_the_base_path() {
        assert_eq!(route("/exec/abc", ""), Some((Kind::Exec, "abc")));
        assert_eq!(route("/b/attach/x1", "/b"), Some((Kind::Attach, "x1")));
        assert_eq!(route("/b/attach/x1", "/b/"), Some((Kind::Attach, "x1")));
        assert_eq!(route("/portforward/t", ""), Some((Kind::PortForward, "t")));
        assert_eq!(route("/exec/", ""), None);
        assert_eq!(route("/exec/a/b", ""), None);
        assert_eq!(route("/other/a", ""), None);
    }

    #[test]
    fn upstream_url_keeps_the_token_and_drops_the_query() {
        let base = http::Uri::from_static("http://127.0.0.1:5000");
        assert_eq!(
            upstream_url(&base, Kind::Exec, "Vh2Ua5Zr")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:5000/exec/Vh2Ua5Zr"
        );
    }
}
