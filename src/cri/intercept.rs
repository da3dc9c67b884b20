//! CRI interception: the bridge serves the CRI gRPC API on its own unix socket and forwards
//! every call to the runtime's socket, swapping the runtime's streaming URLs for its own.
//!
//! ```text
//! kubelet / crictl ──h2──▶ [listen socket] bridge [HTTP/2 client] ──h2──▶ runtime socket
//!                              │
//!                              └─ Exec / Attach / PortForward (runtime.v1, runtime.v1alpha2):
//!                                 request and response buffered and decoded, session stored
//!                                 under a bridge token, URL replaced by the bridge's
//! ```
//!
//! **Transparent forwarding.** The bridge is an HTTP/2 proxy, not a gRPC server: each request
//! (headers, every body frame, trailers) is sent on to the runtime as it arrives, and the
//! runtime's response comes back the same way, so unary and streaming methods, metadata, status
//! and trailers pass unchanged and the bridge needs to know no message but three. A client's
//! cancellation (RST_STREAM) drops the forwarded stream, which resets it at the runtime.
//! `grpc-timeout` travels with the headers and is enforced by the runtime.
//!
//! **One runtime connection per client connection,** opened on the client's first call and
//! reopened when the runtime closed it (a runtime restart): the runtime sees the same
//! connection pattern as without the bridge, and one client's stream limits never starve
//! another's.
//!
//! **The three streaming calls.** Their request is buffered (a few hundred bytes), decoded with
//! [`super::proto`] and forwarded byte for byte; the runtime's response is buffered too and, if
//! it succeeded, its URL is resolved ([`super::urls`]), stored with the request's options under
//! a new bridge token ([`crate::tokens`]) and replaced by `<advertise_url>/<kind>/<token>`.
//! Only the URL field changes; any other field, known or not, keeps its bytes. The runtime's
//! headers and trailers are kept (minus `content-length`, which no longer holds). A failed
//! call passes through untouched. The bridge decodes only uncompressed messages: it asks the
//! runtime for an uncompressed response (`grpc-accept-encoding: identity`) and refuses a
//! compressed request with `UNIMPLEMENTED`, as a gRPC server that lacks the encoding would.
//! When the store is full the call is refused with `RESOURCE_EXHAUSTED` before the runtime is
//! asked, so no runtime token is spent.
//!
//! Tokens (the bridge's and the runtime's) are logged only redacted.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::grpc::{self, Code, FramingError, WireError};
use super::proto::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};
use super::urls::{self, UrlError};
use crate::metrics::Metrics;
use crate::tokens::{self, InsertError, Session, SessionKind, TokenStore, redact_url};
use crate::upstream::remotecommand::StreamOptions;

/// Settings of the CRI interceptor.
#[derive(Clone, Debug)]
pub struct CriProxyConfig {
    /// Unix socket the bridge serves CRI on (`--cri-listen unix:PATH`); the kubelet's
    /// `--container-runtime-endpoint` or crictl's `--runtime-endpoint` points here. A stale
    /// socket file is replaced; a live one (another process answers) is an error.
    pub listen: PathBuf,
    /// The runtime's CRI socket (`--runtime-endpoint unix:PATH`), e.g.
    /// `/run/containerd/containerd.sock`.
    pub runtime_endpoint: PathBuf,
    /// Base of the URLs handed out (`--advertise-url`): `<advertise_url>/exec/<token>`. Must be
    /// `http` or `https` with a host; its path, if any, is a prefix the streaming server's base
    /// path must match. This is the address the kubelet (or crictl) connects to.
    pub advertise_url: Uri,
    /// The runtime's streaming address, used only to resolve runtime URLs without a scheme or
    /// host ([`super::urls`]); `None` learns it from the last absolute URL the runtime returned.
    pub runtime_stream_base: Option<Uri>,
    /// Bridge token lifetime. Default [`tokens::DEFAULT_TTL`] (one minute, as the runtime's).
    pub token_ttl: Duration,
    /// Most outstanding bridge tokens. Default [`tokens::DEFAULT_MAX_TOKENS`] (the runtime's).
    pub max_tokens: usize,
    /// Bound on connecting to the runtime's socket. Default 5 s.
    pub connect_timeout: Duration,
    /// How long [`CriProxy::shutdown`] lets in-flight calls finish. Default 5 s.
    pub shutdown_grace: Duration,
    /// Where forwarded calls are counted (`ws_spdy_bridge_cri_calls_total`). Default none.
    pub metrics: Option<Arc<Metrics>>,
}

impl CriProxyConfig {
    /// Default for [`connect_timeout`](Self::connect_timeout).
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default for [`shutdown_grace`](Self::shutdown_grace).
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
    /// Largest intercepted message (request or response) in bytes: gRPC's default receive
    /// limit. Real ones are a few hundred bytes.
    pub const MAX_INTERCEPTED_MESSAGE: usize = 4 * 1024 * 1024;
    /// HTTP/2 header list limit on both sides, in bytes: room for long `grpc-message`
    /// trailers (hyper's default is 16 KiB; grpc-go accepts up to 16 MiB).
    pub const MAX_HEADER_LIST: u32 = 1024 * 1024;

    /// A config with defaults for everything but the three addresses.
    pub fn new(
        listen: impl Into<PathBuf>,
        runtime_endpoint: impl Into<PathBuf>,
        advertise_url: Uri,
    ) -> Self {
        CriProxyConfig {
            listen: listen.into(),
            runtime_endpoint: runtime_endpoint.into(),
            advertise_url,
            runtime_stream_base: None,
            token_ttl: tokens::DEFAULT_TTL,
            max_tokens: tokens::DEFAULT_MAX_TOKENS,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            shutdown_grace: Self::DEFAULT_SHUTDOWN_GRACE,
            metrics: None,
        }
    }

    /// The token store this config describes (`token_ttl`, `max_tokens`). Make one, share it
    /// (`Arc`) between [`serve`] and the streaming server.
    pub fn token_store(&self) -> TokenStore {
        TokenStore::new(self.token_ttl, self.max_tokens)
    }

    /// Checks the fields, naming the one at fault.
    pub fn validate(&self) -> Result<(), ServeError> {
        let http_with_host =
            |u: &Uri| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some();
        if !http_with_host(&self.advertise_url) || self.advertise_url.query().is_some() {
            return Err(ServeError::Config {
                key: "advertise_url",
                why: "must be http:// or https:// with a host and no query",
            });
        }
        if let Some(base) = &self.runtime_stream_base
            && !http_with_host(base)
        {
            return Err(ServeError::Config {
                key: "runtime_stream_base",
                why: "must be http:// or https:// with a host",
            });
        }
        if self.max_tokens == 0 {
            return Err(ServeError::Config {
                key: "max_tokens",
                why: "must be at least 1",
            });
        }
        if self.token_ttl.is_zero() {
            return Err(ServeError::Config {
                key: "token_ttl",
                why: "must be more than zero",
            });
        }
        if self.listen == self.runtime_endpoint {
            return Err(ServeError::Config {
                key: "listen",
                why: "must differ from runtime_endpoint",
            });
        }
        Ok(())
    }
}

/// Why the interceptor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid CRI proxy setting {key}: {why}")]
    Config {
        key: &'static str,
        why: &'static str,
    },
    /// Something that is not a socket sits at the listen path: refuse to delete it.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// A live process serves the listen socket.
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A running interceptor. Dropping it stops it too, without waiting.
pub struct CriProxy {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for CriProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriProxy")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CriProxy {
    /// The socket the bridge serves CRI on.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, removes the socket file, sends GOAWAY on every connection and waits up
    /// to `shutdown_grace` for in-flight calls before cutting the rest.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds `cfg.listen` (replacing a stale socket file) and starts serving. Tokens go to
/// `store`, which the streaming server shares; its own TTL and bound apply (see
/// [`CriProxyConfig::token_store`]).
pub async fn serve(cfg: CriProxyConfig, store: Arc<TokenStore>) -> Result<CriProxy, ServeError> {
    cfg.validate()?;
    let listener = bind(&cfg.listen).await?;
    let inode = std::fs::metadata(&cfg.listen).map(|m| m.ino()).ok();
    info!(
        listen = %cfg.listen.display(),
        runtime = %cfg.runtime_endpoint.display(),
        advertise = %cfg.advertise_url,
        "CRI interception listening"
    );
    let (stop, stop_rx) = watch::channel(false);
    let path = cfg.listen.clone();
    let shared = Arc::new(Shared {
        cfg,
        store,
        learned_base: Mutex::new(None),
    });
    let task = tokio::spawn(accept_loop(listener, shared, stop_rx, inode));
    Ok(CriProxy { path, stop, task })
}

async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let listen_err = |source| ServeError::Listen {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServeError::NotASocket(path.to_path_buf()));
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => return Err(ServeError::InUse(path.to_path_buf())),
            // Nobody listens: a previous run's leftover.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                debug!(path = %path.display(), "removing a stale socket file");
                std::fs::remove_file(path)
                    .or_else(|e| match e.kind() {
                        io::ErrorKind::NotFound => Ok(()),
                        _ => Err(e),
                    })
                    .map_err(listen_err)?;
            }
            Err(e) => return Err(listen_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    // Like a runtime's socket: the owner and its group only. Whoever can call CRI can run
    // anything on the node.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(listen_err)?;
    Ok(listener)
}

struct Shared {
    cfg: CriProxyConfig,
    store: Arc<TokenStore>,
    /// Origin of the last absolute streaming URL the runtime returned.
    learned_base: Mutex<Option<Uri>>,
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    inode: Option<u64>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // A send or a dropped handle: either way, stop.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, shared.clone(), stop.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "CRI accept failed");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    // Remove the socket only if it is still ours (not replaced by a newer bridge).
    let path = &shared.cfg.listen;
    if inode.is_some() && std::fs::metadata(path).map(|m| m.ino()).ok() == inode {
        let _ = std::fs::remove_file(path);
    }
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.cfg.shutdown_grace, drain)
        .await
        .is_err()
    {
        debug!("CRI calls still running at the end of the grace period; cutting them");
        conns.shutdown().await;
    }
    info!("CRI interception stopped");
}

async fn serve_connection(
    stream: UnixStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let conn = Arc::new(Conn {
        upstream: Upstream::new(&shared.cfg),
        shared,
    });
    let service = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&conn, req).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(CriProxyConfig::MAX_HEADER_LIST);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        res = connection.as_mut() => {
            if let Err(e) = res {
                debug!(error = %e, "CRI client connection ended with an error");
            }
            return;
        }
        _ = stop.changed() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// One client connection and its runtime connection.
struct Conn {
    shared: Arc<Shared>,
    upstream: Upstream,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every request and response the proxy sends.
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The HTTP/2 connection to the runtime's socket, opened on first use and reopened after the
/// runtime closed it.
struct Upstream {
    path: PathBuf,
    connect_timeout: Duration,
    sender: tokio::sync::Mutex<Option<SendRequest<ProxyBody>>>,
}

impl Upstream {
    fn new(cfg: &CriProxyConfig) -> Self {
        Upstream {
            path: cfg.runtime_endpoint.clone(),
            connect_timeout: cfg.connect_timeout,
            sender: tokio::sync::Mutex::new(None),
        }
    }

    async fn sender(&self) -> Result<SendRequest<ProxyBody>, InterceptError> {
        // Held across the connect so concurrent first calls share one connection.
        let mut slot = self.sender.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let unavailable = |why: String| InterceptError::RuntimeUnavailable {
            path: self.path.clone(),
            why,
        };
        let stream = tokio::time::timeout(self.connect_timeout, UnixStream::connect(&self.path))
            .await
            .map_err(|_| unavailable(format!("no connection within {:?}", self.connect_timeout)))?
            .map_err(|e| unavailable(e.to_string()))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(CriProxyConfig::MAX_HEADER_LIST)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "runtime connection ended with an error");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, InterceptError> {
        let mut sender = self.sender().await?;
        let unavailable = |e: hyper::Error| InterceptError::RuntimeUnavailable {
            path: self.path.clone(),
            why: e.to_string(),
        };
        sender.ready().await.map_err(unavailable)?;
        sender.send_request(req).await.map_err(unavailable)
    }
}

async fn handle(conn: &Conn, req: Request<Incoming>) -> Response<ProxyBody> {
    let method = req.uri().path().to_owned();
    let kind = intercepted(&method);
    if let Some(m) = &conn.shared.cfg.metrics {
        m.cri_call(&method, kind.is_some());
    }
    let result = match kind {
        Some(kind) => intercept(conn, kind, req).await,
        None => forward(conn, req).await,
    };
    result.unwrap_or_else(|e| {
        match e.blame() {
            Blame::Client => debug!(%method, error = %e, "CRI call refused"),
            Blame::Runtime | Blame::Bridge => warn!(%method, error = %e, "CRI call failed"),
        }
        status_response(e.code(), &e.to_string())
    })
}

/// Which session kind a method path hands out URLs for.
fn intercepted(path: &str) -> Option<SessionKind> {
    let method = path
        .strip_prefix("/runtime.v1.RuntimeService/")
        .or_else(|| path.strip_prefix("/runtime.v1alpha2.RuntimeService/"))?;
    match method {
        "Exec" => Some(SessionKind::Exec),
        "Attach" => Some(SessionKind::Attach),
        "PortForward" => Some(SessionKind::PortForward),
        _ => None,
    }
}

/// Any other call: headers, body frames and trailers pass as they come, both ways.
async fn forward(
    conn: &Conn,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, InterceptError> {
    debug!(method = %req.uri().path(), "forwarding CRI call");
    let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
    let resp = conn.upstream.send(req).await?;
    Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()))
}

/// What the bridge keeps of a streaming call's request.
#[derive(Debug)]
struct Learned {
    options: StreamOptions,
    ports: Vec<u16>,
    container_id: String,
    pod_sandbox_id: String,
}

fn decode_request(kind: SessionKind, message: &[u8]) -> Result<Learned, InterceptError> {
    let bad = InterceptError::DecodeRequest;
    Ok(match kind {
        SessionKind::Exec => {
            let r = ExecRequest::decode(message).map_err(bad)?;
            Learned {
                options: StreamOptions {
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                    tty: r.tty,
                },
                ports: Vec::new(),
                container_id: r.container_id,
                pod_sandbox_id: String::new(),
            }
        }
        SessionKind::Attach => {
            let r = AttachRequest::decode(message).map_err(bad)?;
            Learned {
                options: StreamOptions {
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                    tty: r.tty,
                },
                ports: Vec::new(),
                container_id: r.container_id,
                pod_sandbox_id: String::new(),
            }
        }
        SessionKind::PortForward => {
            let r = PortForwardRequest::decode(message).map_err(bad)?;
            let ports = r
                .port
                .iter()
                .map(|&p| {
                    u16::try_from(p)
                        .ok()
                        .filter(|&p| p != 0)
                        .ok_or(InterceptError::InvalidPort(p))
                })
                .collect::<Result<_, _>>()?;
            Learned {
                options: StreamOptions::default(),
                ports,
                container_id: String::new(),
                pod_sandbox_id: r.pod_sandbox_id,
            }
        }
    })
}

fn decode_url(kind: SessionKind, message: &[u8]) -> Result<String, prost::DecodeError> {
    Ok(match kind {
        SessionKind::Exec => ExecResponse::decode(message)?.url,
        SessionKind::Attach => AttachResponse::decode(message)?.url,
        SessionKind::PortForward => PortForwardResponse::decode(message)?.url,
    })
}

/// `Exec`, `Attach`, `PortForward`: learn the request, swap the URL.
async fn intercept(
    conn: &Conn,
    kind: SessionKind,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, InterceptError> {
    let shared = &conn.shared;
    let max = CriProxyConfig::MAX_INTERCEPTED_MESSAGE;
    let (mut parts, body) = req.into_parts();
    let body = collect(body, max).await.map_err(|e| match e {
        CollectError::TooLarge => InterceptError::RequestTooLarge { max },
        CollectError::Body(e) => InterceptError::RequestBody(e),
    })?;
    let message = grpc::single_message(&body.data, max).map_err(InterceptError::RequestFraming)?;
    let learned = decode_request(kind, message)?;
    // Refuse before the runtime issues a token we could not hand out.
    if shared.store.is_full() {
        return Err(InterceptError::StoreFull(InsertError::Full {
            max: shared.store.max(),
        }));
    }
    // The request message is uncompressed (checked above); make sure the answer is too.
    parts.headers.remove(grpc::GRPC_ENCODING);
    parts.headers.insert(
        grpc::GRPC_ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let req = Request::from_parts(parts, Replay::new(body.data, body.trailers).boxed_unsync());
    let resp = conn.upstream.send(req).await?;

    let (mut parts, body) = resp.into_parts();
    // HTTP errors and trailers-only responses (a gRPC error) carry no URL: pass them on.
    if parts.status != StatusCode::OK || grpc::status_code(&parts.headers).is_some() {
        return Ok(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed_unsync(),
        ));
    }
    let body = collect(body, max).await.map_err(|e| match e {
        CollectError::TooLarge => InterceptError::ResponseTooLarge { max },
        CollectError::Body(e) => InterceptError::ResponseBody(e),
    })?;
    if body.trailers.as_ref().and_then(grpc::status_code) != Some(Code::Ok as u32) {
        // A failed call: whatever it says, it is the runtime's answer.
        return Ok(Response::from_parts(
            parts,
            Replay::new(body.data, body.trailers).boxed_unsync(),
        ));
    }
    let message = grpc::single_message(&body.data, max).map_err(InterceptError::ResponseFraming)?;
    let raw_url = decode_url(kind, message).map_err(InterceptError::DecodeResponse)?;
    let runtime_url = shared.resolve(&raw_url)?;
    let runtime_redacted = redact_url(&runtime_url);
    let session = Session {
        kind,
        runtime_url,
        options: learned.options,
        ports: learned.ports,
        container_id: learned.container_id,
        pod_sandbox_id: learned.pod_sandbox_id,
    };
    let target = match kind {
        SessionKind::PortForward => session.pod_sandbox_id.clone(),
        _ => session.container_id.clone(),
    };
    let options = session.options;
    let token = shared
        .store
        .insert(session)
        .map_err(InterceptError::StoreFull)?;
    let url = urls::bridge_url(&shared.cfg.advertise_url, kind, &token);
    let rewritten = grpc::replace_string_field(message, 1, &url).map_err(|e| {
        // Not handed out: free the slot.
        shared.store.take(token.as_str());
        InterceptError::RewriteResponse(e)
    })?;
    info!(
        kind = kind.as_str(),
        target = %target,
        stdin = options.stdin,
        stdout = options.stdout,
        stderr = options.stderr,
        tty = options.tty,
        token = %tokens::redact(token.as_str()),
        runtime_url = %runtime_redacted,
        "issued a bridge streaming URL"
    );
    parts.headers.remove(CONTENT_LENGTH);
    Ok(Response::from_parts(
        parts,
        Replay::new(grpc::frame(&rewritten), body.trailers).boxed_unsync(),
    ))
}

impl Shared {
    fn resolve(&self, raw: &str) -> Result<Uri, InterceptError> {
        let learned = self
            .learned_base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let base = self.cfg.runtime_stream_base.as_ref().or(learned.as_ref());
        let url = urls::resolve_runtime_url(raw, base).map_err(InterceptError::RuntimeUrl)?;
        if raw.contains("://")
            && let Some((scheme, authority)) = urls::origin(&url)
        {
            let origin = Uri::builder()
                .scheme(scheme)
                .authority(authority)
                .path_and_query("/")
                .build()
                .ok();
            *self.learned_base.lock().unwrap_or_else(|e| e.into_inner()) = origin;
        }
        Ok(url)
    }
}

/// Why a call got the bridge's own error status instead of the runtime's answer.
#[derive(Debug, thiserror::Error)]
enum InterceptError {
    #[error("cannot reach the container runtime at {}: {why}", path.display())]
    RuntimeUnavailable { path: PathBuf, why: String },
    #[error("reading the request failed: {0}")]
    RequestBody(BoxError),
    #[error("the request is larger than the {max} bytes the bridge buffers")]
    RequestTooLarge { max: usize },
    #[error("the bridge cannot read the request: {0}")]
    RequestFraming(FramingError),
    #[error("the bridge cannot decode the request: {0}")]
    DecodeRequest(prost::DecodeError),
    #[error("invalid port {0}: must be 1 to 65535")]
    InvalidPort(i32),
    #[error("{0}")]
    StoreFull(InsertError),
    #[error("reading the runtime's response failed: {0}")]
    ResponseBody(BoxError),
    #[error("the runtime's response is larger than the {max} bytes the bridge buffers")]
    ResponseTooLarge { max: usize },
    #[error("the bridge cannot read the runtime's response: {0}")]
    ResponseFraming(FramingError),
    #[error("the bridge cannot decode the runtime's response: {0}")]
    DecodeResponse(prost::DecodeError),
    #[error("the bridge cannot rewrite the runtime's response: {0}")]
    RewriteResponse(WireError),
    #[error("{0}")]
    RuntimeUrl(UrlError),
}

/// Who is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blame {
    Client,
    Runtime,
    Bridge,
}

impl InterceptError {
    fn blame(&self) -> Blame {
        use InterceptError::*;
        match self {
            RequestBody(_)
            | RequestTooLarge { .. }
            | RequestFraming(_)
            | DecodeRequest(_)
            | InvalidPort(_) => Blame::Client,
            RuntimeUnavailable { .. }
            | ResponseBody(_)
            | ResponseTooLarge { .. }
            | ResponseFraming(_)
            | DecodeResponse(_)
            | RewriteResponse(_) => Blame::Runtime,
            RuntimeUrl(UrlError::NoBase(_)) | StoreFull(_) => Blame::Bridge,
            RuntimeUrl(_) => Blame::Runtime,
        }
    }

    /// The status a gRPC server would have sent for the same trouble.
    fn code(&self) -> Code {
        use InterceptError::*;
        match self {
            RuntimeUnavailable { .. } | ResponseBody(_) => Code::Unavailable,
            RequestTooLarge { .. } | ResponseTooLarge { .. } | StoreFull(_) => {
                Code::ResourceExhausted
            }
            RequestFraming(FramingError::Compressed) => Code::Unimplemented,
            InvalidPort(_) => Code::InvalidArgument,
            RuntimeUrl(UrlError::NoBase(_)) => Code::FailedPrecondition,
            RequestBody(_) | RequestFraming(_) | DecodeRequest(_) | ResponseFraming(_)
            | DecodeResponse(_) | RewriteResponse(_) | RuntimeUrl(_) => Code::Internal,
        }
    }
}

/// A trailers-only gRPC response: HTTP 200, the status in the headers, no body.
fn status_response(code: Code, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Replay::new(Bytes::new(), None).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(grpc::CONTENT_TYPE_GRPC),
    );
    if code == Code::Unimplemented {
        h.insert(
            grpc::GRPC_ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    h.extend(grpc::status_headers(code, message));
    resp
}

struct Collected {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

enum CollectError {
    TooLarge,
    Body(BoxError),
}

/// Reads a whole body, at most `max` bytes of data plus the gRPC prefix.
async fn collect(body: Incoming, max: usize) -> Result<Collected, CollectError> {
    let collected = Limited::new(body, max + grpc::PREFIX_LEN)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                CollectError::TooLarge
            } else {
                CollectError::Body(e)
            }
        })?;
    let trailers = collected.trailers().cloned();
    Ok(Collected {
        data: collected.to_bytes(),
        trailers,
    })
}

/// A buffered body sent again: its data as one frame, then its trailers.
struct Replay {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Replay {
    fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Replay {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    // No exact size_hint on purpose: hyper would add a content-length the runtime never sent.
    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_streaming_calls_are_intercepted() {
        assert_eq!(
            intercepted("/runtime.v1.RuntimeService/Exec"),
            Some(SessionKind::Exec)
        );
        assert_eq!(
            intercepted("/runtime.v1alpha2.RuntimeService/Attach"),
            Some(SessionKind::Attach)
        );
        assert_eq!(
            intercepted("/runtime.v1.RuntimeService/PortForward"),
            Some(SessionKind::PortForward)
        );
        for other in [
            "/runtime.v1.RuntimeService/ExecSync",
            "/runtime.v1.RuntimeService/Version",
            "/runtime.v1.ImageService/Exec",
            "/runtime.v1.RuntimeService/Exec/",
            "/runtime.v2.RuntimeService/Exec",
        ] {
            assert_eq!(intercepted(other), None, "{other}");
        }
    }

    #[test]
    fn exec_request_options_are_learned_verbatim() {
        let msg = ExecRequest {
            container_id: "c".into(),
            cmd: vec!["sh".into()],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        }
        .encode_to_vec();
        let l = decode_request(SessionKind::Exec, &msg).unwrap();
        assert_eq!(
            l.options,
            StreamOptions {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true
            }
        );
        assert_eq!(l.container_id, "c");
    }

    #[test]
    fn port_forward_ports_must_fit_a_port_number() {
        let msg = |port: Vec<i32>| {
            PortForwardRequest {
                pod_sandbox_id: "p".into(),
                port,
            }
            .encode_to_vec()
        };
        let l = decode_request(SessionKind::PortForward, &msg(vec![80, 65535])).unwrap();
        assert_eq!(l.ports, [80, 65535]);
        assert_eq!(l.pod_sandbox_id, "p");
        for bad in [0, -1, 65536] {
            let e = decode_request(SessionKind::PortForward, &msg(vec![bad])).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
        }
    }

    #[test]
    fn error_statuses_match_what_grpc_servers_send() {
        let compressed = InterceptError::RequestFraming(FramingError::Compressed);
        assert_eq!(compressed.code(), Code::Unimplemented);
        assert_eq!(compressed.blame(), Blame::Client);
        let full = InterceptError::StoreFull(InsertError::Full { max: 1 });
        assert_eq!(full.code(), Code::ResourceExhausted);
        let resp = status_response(full.code(), &full.to_string());
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(grpc::status_code(resp.headers()), Some(8));
        assert!(resp.body().is_end_stream());
    }
}
