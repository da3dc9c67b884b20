//! The streaming listener: HTTP/1.1 with upgrades, routing, the WebSocket handshake, and the
//! choice between translation (v5) and pass-through (legacy WebSocket protocols, SPDY).

pub mod admin;
mod options;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use options::{OptionsError, stream_options};
pub use tls::{ServerTls, TlsConfig};

use crate::bridge::passthrough::{self, PassthroughConfig};
use crate::bridge::remotecommand::{self, SessionConfig, SessionEnd};
use crate::channel::subprotocol::{self, RemoteCommandChoice};
use crate::connection::ConnectionConfig;
use crate::metrics::{self, Meter, Metrics, Outcome, Protocol, RefusalReason};
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
    /// Largest client WebSocket frame, in bytes. Default 32 MiB, as `max_message`.
    pub max_frame: usize,
    /// Admission and handshake limits.
    pub limits: ServeLimits,
    /// [`Bridge::drain`]: after the deadline, how long translated sessions get for Close 1001
    /// and the upstream teardown before every session is dropped. Default
    /// [`DEFAULT_DRAIN_CLOSE_TIMEOUT`](Self::DEFAULT_DRAIN_CLOSE_TIMEOUT) (2 s).
    pub drain_close_timeout: Duration,
    /// CRI interception: the bridge tokens handed out by [`crate::cri`]. With a store, a
    /// path's token must be one of them and names the runtime URL and stream options; without
    /// one (standalone), the path maps onto [`upstream`](Self::upstream) and the options come
    /// from the query. Default none.
    pub tokens: Option<Arc<TokenStore>>,
    /// Where sessions, bytes and refusals are counted ([`crate::metrics`]); share the same
    /// value with [`admin::serve_admin`]. Default none: nothing is recorded.
    pub metrics: Option<Arc<Metrics>>,
    /// TLS on the streaming listener (`wss://`): certificate files, optional client-certificate
    /// authentication, reloading. Default none: plain HTTP (`ws://`).
    pub tls: Option<TlsConfig>,
}

impl BridgeConfig {
    /// Default for [`listen`](Self::listen).
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:8765";
    /// Default for [`max_message`](Self::max_message).
    pub const DEFAULT_MAX_MESSAGE: usize = 32 * 1024 * 1024;
    /// Default for [`drain_close_timeout`](Self::drain_close_timeout).
    pub const DEFAULT_DRAIN_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
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
            max_frame: Self::DEFAULT_MAX_MESSAGE,
            limits: ServeLimits::default(),
            drain_close_timeout: Self::DEFAULT_DRAIN_CLOSE_TIMEOUT,
            tokens: None,
            metrics: None,
            tls: None,
        }
    }
}

// --- limits and drain (issue 6) -------------------------------------------------------------

/// What one listener admits and how long a request may take (the `limits` section).
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Most sessions at once, handshakes in progress included. Over it a request gets 503
    /// with `Retry-After` and a Status body, before the runtime is contacted. Default
    /// [`DEFAULT_MAX_SESSIONS`](Self::DEFAULT_MAX_SESSIONS) (512).
    pub max_sessions: usize,
    /// `Retry-After` of that 503, rounded up to whole seconds. Default 5 s.
    pub retry_after: Duration,
    /// From a request's arrival to its 101 or error (runtime contact included); past it the
    /// client gets 504 and the runtime's half-done upgrade is dropped. Default 60 s.
    pub handshake_timeout: Duration,
    /// Time for a request head to arrive (idle keep-alive connections included): hyper's
    /// `header_read_timeout`. Default 10 s.
    pub header_read_timeout: Duration,
}

impl ServeLimits {
    /// Default for [`max_sessions`](Self::max_sessions).
    pub const DEFAULT_MAX_SESSIONS: usize = 512;
    /// Default for [`retry_after`](Self::retry_after).
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
    /// Default for [`handshake_timeout`](Self::handshake_timeout).
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default for [`header_read_timeout`](Self::header_read_timeout).
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_sessions: Self::DEFAULT_MAX_SESSIONS,
            retry_after: Self::DEFAULT_RETRY_AFTER,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// A place among [`ServeLimits::max_sessions`], held by a request from its routing to the end
/// of the session it starts.
type Admitted = OwnedSemaphorePermit;

/// What the accept loop is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Run,
    /// Stop accepting; sessions may go on until the deadline.
    Drain(Instant),
    /// End everything now.
    Now,
}

/// 503 with `Retry-After` and a Status body: over the session limit, or draining.
fn unavailable(retry_after: Duration, message: &str) -> Response<Body> {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut status = Status::http_error(503, "ServiceUnavailable", message);
    status.details = Some(crate::status::StatusDetails {
        retry_after_seconds: i32::try_from(secs).unwrap_or(i32::MAX),
        ..Default::default()
    });
    let mut resp = status_response(StatusCode::SERVICE_UNAVAILABLE, status);
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Runs `fut` until the drain deadline (`going_away`), for sessions that have no gentler way
/// to end (pass-through relays, port-forward): they are dropped then.
async fn until_going_away<F>(going_away: CancellationToken, fut: F)
where
    F: std::future::Future<Output = ()>,
{
    tokio::select! {
        () = fut => {}
        () = going_away.cancelled() => {}
    }
}

// --- end limits and drain --------------------------------------------------------------------

/// What every connection of a bridge shares.
struct Ctx {
    cfg: BridgeConfig,
    /// Translated sessions outlive the HTTP connection that upgraded them; they are kept here
    /// so that [`Bridge::shutdown`] ends them too. `None` once shut down.
    sessions: Mutex<Option<JoinSet<()>>>,
    /// Listener TLS, read per handshake (reloads swap what it holds).
    tls: Option<Arc<ServerTls>>,
    /// One permit per session ([`ServeLimits::max_sessions`]).
    admission: Arc<Semaphore>,
    /// Set when a drain starts: new requests are refused.
    draining: CancellationToken,
    /// Set at the drain deadline: translated sessions send Close 1001, the rest are dropped.
    going_away: CancellationToken,
}

impl Ctx {
    /// Runs a session the bridge tracks, holding its place among `max_sessions` until it
    /// ends; after shutdown the session is dropped unstarted.
    fn spawn_session<F>(&self, admitted: Admitted, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sessions.as_mut() {
            // Reap finished sessions so the set does not grow with the number served.
            while set.try_join_next().is_some() {}
            set.spawn(async move {
                let _admitted = admitted;
                fut.await
            });
        }
    }

    /// A place for one more session; none while draining or at `max_sessions`.
    fn admit(&self) -> Option<Admitted> {
        if self.draining.is_cancelled() {
            return None;
        }
        self.admission.clone().try_acquire_owned().ok()
    }

    /// The 503 for a request [`admit`](Self::admit) turned away, counted under `meter`.
    fn turned_away(&self, meter: &Meter) -> Response<Body> {
        if self.draining.is_cancelled() {
            meter.refused(RefusalReason::Draining);
            return unavailable(
                self.limits.retry_after,
                "the bridge is shutting down; retry on another instance or later",
            );
        }
        meter.refused(RefusalReason::TooManySessions);
        unavailable(
            self.limits.retry_after,
            &format!(
                "too many concurrent streaming sessions (limit {}); retry later",
                self.limits.max_sessions
            ),
        )
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
    stop: watch::Sender<Stop>,
    task: tokio::task::JoinHandle<()>,
}

impl Bridge {
    /// Binds the listener and starts serving.
    pub async fn start(cfg: BridgeConfig) -> std::io::Result<Bridge> {
        // Certificates first: a bad file fails start-up before the port is taken.
        let tls = match &cfg.tls {
            Some(t) => {
                let tls = ServerTls::load(t.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                // Ends by itself once the bridge's last reference to `tls` is gone.
                drop(tls.spawn_reloader());
                Some(tls)
            }
            None => None,
        };
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(Stop::Run);
        let ctx = Arc::new(Ctx {
            admission: Arc::new(Semaphore::new(cfg.limits.max_sessions)),
            cfg,
            sessions: Mutex::new(Some(JoinSet::new())),
            tls,
            draining: CancellationToken::new(),
            going_away: CancellationToken::new(),
        });
        info!(%addr, upstream = %ctx.upstream, tls = ctx.tls.is_some(), "bridge listening");
        let task = tokio::spawn(accept_loop(listener, ctx, stop_rx));
        Ok(Bridge { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and ends every connection and session.
    pub async fn shutdown(self) {
        let _ = self.stop.send(Stop::Now);
        let _ = self.task.await;
    }

    /// Graceful shutdown: closes the listener at once (new connections are refused; requests
    /// on open keep-alive connections get 503), lets handshakes in progress and live sessions
    /// go on for up to `deadline`, then ends what is left: translated sessions send a Failure
    /// status and WebSocket Close 1001 (going away) and tear their upstream down, within
    /// [`BridgeConfig::drain_close_timeout`]; pass-through and port-forward sessions are
    /// dropped. Returns when every session is gone.
    pub async fn drain(self, deadline: Duration) {
        let _ = self.stop.send(Stop::Drain(Instant::now() + deadline));
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, mut stop: watch::Receiver<Stop>) {
    let mut conns = JoinSet::new();
    let how = loop {
        tokio::select! {
            _ = stop.changed() => break *stop.borrow(),
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
                    // The TLS handshake runs here, not in the accept loop: a slow client holds
                    // only its own task, and client certificates are checked before any HTTP.
                    let Some(io) = tls::accept_client(ctx.tls.as_deref(), tcp, peer).await else {
                        return;
                    };
                    let draining = ctx.draining.clone();
                    let header_read_timeout = ctx.limits.header_read_timeout;
                    let service = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(handle_in_time(req, peer, ctx).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_read_timeout)
                        .serve_connection(TokioIo::new(io), service)
                        .with_upgrades();
                    tokio::pin!(conn);
                    let ended = tokio::select! {
                        ended = conn.as_mut() => ended,
                        () = draining.cancelled() => {
                            // Finish the request in progress, then close (no keep-alive).
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = ended {
                        debug!(error = %e, "client connection ended with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    };
    // Closed here: from now on connecting is refused.
    drop(listener);
    if let Stop::Drain(deadline) = how {
        ctx.draining.cancel();
        info!("draining: listener closed, waiting for live sessions");
        // Handshakes in progress may still become sessions.
        let _ = tokio::time::timeout_at(deadline, join_all(&mut conns)).await;
    }
    // Connections first: once their handlers are gone, no new session can start.
    conns.shutdown().await;
    let Some(mut sessions) = ctx.take_sessions() else {
        return;
    };
    if let Stop::Drain(deadline) = how
        && tokio::time::timeout_at(deadline, join_all(&mut sessions))
            .await
            .is_err()
    {
        info!(
            sessions = sessions.len(),
            "drain deadline reached: ending the remaining sessions"
        );
        ctx.going_away.cancel();
        let _ = tokio::time::timeout(ctx.drain_close_timeout, join_all(&mut sessions)).await;
    }
    sessions.shutdown().await;
}

async fn join_all(set: &mut JoinSet<()>) {
    while set.join_next().await.is_some() {}
}

/// [`handle`] within [`ServeLimits::handshake_timeout`]: a request that has not been answered
/// by then gets 504, and whatever it had started upstream is dropped with it.
async fn handle_in_time(req: Request<Incoming>, peer: SocketAddr, ctx: Arc<Ctx>) -> Response<Body> {
    let limit = ctx.limits.handshake_timeout;
    match tokio::time::timeout(limit, handle(req, peer, ctx)).await {
        Ok(resp) => resp,
        Err(_) => {
            warn!(%peer, ?limit, "handshake timed out");
            status_response(
                StatusCode::GATEWAY_TIMEOUT,
                Status::http_error(
                    504,
                    "Timeout",
                    format!("the upgrade did not complete within {limit:?}"),
                ),
            )
        }
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
    fn metric(self) -> metrics::Kind {
        match self {
            Kind::Exec => metrics::Kind::Exec,
            Kind::Attach => metrics::Kind::Attach,
            Kind::PortForward => metrics::Kind::PortForward,
        }
    }

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
    let meter = Meter::new(ctx.metrics.clone(), Some(peer));
    let Some((kind, token)) = route(req.uri().path(), &ctx.base_path) else {
        meter.refused(RefusalReason::NotFound);
        return status_response(
            StatusCode::NOT_FOUND,
            Status::http_error(404, "NotFound", "404 page not found"),
        );
    };
    // Before the token is spent and before the runtime is asked.
    let Some(admitted) = ctx.admit() else {
        return ctx.turned_away(&meter);
    };
    // With CRI interception the token is the bridge's own: it names the runtime's URL and
    // the CRI request's stream options, and like the runtime's it is spent by its first use,
    // whatever happens next (protocol.md §2.2).
    let (upstream_url, known) = match &ctx.tokens {
        Some(store) => match store.take(token) {
            Some(s) if s.kind.as_str() == kind.as_str() => (s.runtime_url.clone(), Some(s)),
            _ => {
                debug!(token = %tokens::redact(token), "unknown or expired bridge token");
                meter.refused(RefusalReason::UnknownToken);
                return status_response(
                    StatusCode::NOT_FOUND,
                    Status::http_error(404, "NotFound", "unknown or expired streaming token"),
                );
            }
        },
        None => match upstream_url(&ctx.upstream, kind, token) {
            Some(u) => (u, None),
            None => {
                meter.refused(RefusalReason::InvalidToken);
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
            return passthrough_response(req, upstream_url, peer, &ctx, &meter, kind, admitted)
                .await;
        }
        meter.refused(RefusalReason::NotAnUpgrade);
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
        let known_ports = known.map(|s| s.ports);
        return portforward_response(req, upstream_url, known_ports, &ctx, &meter, admitted).await;
    }
    match subprotocol::choose_remote_command(&offered) {
        RemoteCommandChoice::V5 => {
            translate(
                req,
                kind,
                upstream_url,
                known_options,
                &ctx,
                meter,
                admitted,
            )
            .await
        }
        RemoteCommandChoice::Legacy(_) | RemoteCommandChoice::NoneOffered => {
            passthrough_response(req, upstream_url, peer, &ctx, &meter, kind, admitted).await
        }
        // x/net/websocket's answer to an unacceptable sub-protocol: 403, empty body (C-03).
        RemoteCommandChoice::Unsupported => {
            meter.refused(RefusalReason::UnsupportedProtocol);
            empty_response(StatusCode::FORBIDDEN)
        }
    }
}

async fn passthrough_response(
    req: Request<Incoming>,
    upstream_url: http::Uri,
    peer: SocketAddr,
    ctx: &Ctx,
    meter: &Meter,
    kind: Kind,
    admitted: Admitted,
) -> Response<Body> {
    let cfg = PassthroughConfig {
        upstream: ctx.upstream_cfg.clone(),
        ..PassthroughConfig::default()
    };
    debug!(upstream = %redact_path(upstream_url.path()), "passing the upgrade through");
    let (response, relay) =
        passthrough::passthrough_session(req, upstream_url, Some(peer), &cfg, meter, kind.metric())
            .await;
    if let Some(relay) = relay {
        ctx.spawn_session(admitted, until_going_away(ctx.going_away.clone(), relay));
    }
    response.map(|b| b.map_err(|never| match never {}).boxed())
}

/// Mode A: validate, upgrade the runtime (unless in API-server order), answer 101, translate.
async fn translate(
    req: Request<Incoming>,
    kind: Kind,
    upstream_url: http::Uri,
    known_options: Option<StreamOptions>,
    ctx: &Arc<Ctx>,
    meter: Meter,
    admitted: Admitted,
) -> Response<Body> {
    if req.method() != Method::GET {
        meter.refused(RefusalReason::Method);
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            Status::http_error(405, "MethodNotAllowed", "a WebSocket upgrade must use GET"),
        );
    }
    let headers = req.headers();
    if headers.get("sec-websocket-version").map(|v| v.as_bytes()) != Some(b"13") {
        meter.refused(RefusalReason::WebSocketVersion);
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
        meter.refused(RefusalReason::MissingKey);
        return status_response(
            StatusCode::BAD_REQUEST,
            Status::http_error(400, "BadRequest", "missing Sec-WebSocket-Key"),
        );
    };
    let opts = match known_options.map_or_else(|| stream_options(req.uri().query()), Ok) {
        Ok(o) => o,
        Err(e) => {
            // Refused before any upstream contact: the runtime's token is not spent.
            meter.refused(RefusalReason::StreamOptions);
            return status_response(
                StatusCode::BAD_REQUEST,
                Status::http_error(400, "BadRequest", e.to_string()),
            );
        }
    };

    // The session starts here: the runtime is about to be asked (now, or after the 101).
    let mut guard = meter.start(kind.metric(), Protocol::V5);
    let upstream = if ctx.compat_upgrade_client_first {
        None
    } else {
        let asked = tokio::time::Instant::now();
        match start_upstream(&upstream_url, opts, ctx).await {
            Ok(rc) => {
                guard.upgraded(asked.elapsed());
                Some(rc)
            }
            Err(e) => {
                guard.set_outcome(start_error_outcome(&e));
                return upstream_error_response(kind, e);
            }
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
        HeaderValue::from_str(&crate::websocket::accept_key(&key))
            .expect("base64 is a valid header"),
    );
    h.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(subprotocol::V5),
    );

    let session_ctx = ctx.clone();
    ctx.spawn_session(admitted, async move {
        let ctx = session_ctx;
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "client upgrade failed");
                guard.set_outcome(Outcome::ClientGone);
                if let Some(rc) = upstream {
                    rc.close().await;
                }
                return;
            }
        };
        let limits = crate::websocket::Limits {
            max_frame: ctx.max_frame,
            max_message: ctx.max_message,
        };
        // API-server order: the dial happens inside the session, after the initial message.
        let dial_outcome = std::sync::Mutex::new(None);
        // Boxed: the dial's state is needed only until the runtime answers; inline, it would
        // stay in the session's future for the session's life.
        let upstream = Box::pin(async {
            match upstream {
                Some(rc) => Ok(rc),
                None => {
                    let asked = tokio::time::Instant::now();
                    let started = start_upstream(&upstream_url, opts, &ctx).await;
                    match &started {
                        Ok(_) => guard.upgraded(asked.elapsed()),
                        Err(e) => {
                            *dial_outcome.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(start_error_outcome(e));
                        }
                    }
                    started.map_err(|e| status_for_start_error(&e))
                }
            }
        });
        let end = remotecommand::run(
            TokioIo::new(upgraded),
            limits,
            upstream,
            opts,
            &ctx.session,
            &guard,
            &ctx.going_away,
        )
        .await;
        // A dial that failed is the runtime's (or our) failure, whatever status it became.
        let dialled = dial_outcome.into_inner().unwrap_or_else(|e| e.into_inner());
        guard.set_outcome(match (&end, dialled) {
            (SessionEnd::Completed { .. }, Some(outcome)) => outcome,
            _ => end.outcome(),
        });
        guard.set_exit_code(end.exit_code());
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

/// Whose fault a failed start was: the bridge's own request or configuration
/// (`internal_error`), or the runtime (`upstream_error`).
fn start_error_outcome(e: &StartError) -> Outcome {
    match e {
        StartError::Upgrade(up) if up.fault() == crate::upstream::Fault::Proxy => {
            Outcome::InternalError
        }
        _ => Outcome::UpstreamError,
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
    known_ports: Option<Vec<u16>>,
    ctx: &Arc<Ctx>,
    meter: &Meter,
    admitted: Admitted,
) -> Response<Body> {
    use crate::bridge::portforward::{self, ChannelConfig, PortForwardConfig, TunnelConfig};
    let cfg = PortForwardConfig {
        upstream: ctx.upstream_cfg.clone(),
        tunnel: TunnelConfig {
            max_message: ctx.max_message,
            max_frame: ctx.max_frame,
            ..TunnelConfig::default()
        },
        channel: ChannelConfig {
            connection: ctx.connection.clone(),
            ..ChannelConfig::default()
        },
        ..PortForwardConfig::default()
    };
    let (response, session) =
        portforward::serve(req, upstream_url, known_ports.as_deref(), &cfg, meter).await;
    if let Some(session) = session {
        let going_away = ctx.going_away.clone();
        ctx.spawn_session(
            admitted,
            until_going_away(going_away, async move {
                session.run().await;
            }),
        );
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
