//! The admin listener, separate from the streaming one: metrics, live sessions, health.
//!
//! ```text
//!  GET /metrics         200  prometheus text exposition (text/plain; version=0.0.4)
//!  GET /debug/sessions  200  JSON array: id, kind, protocol, age_seconds, peer, bytes per
//!                            channel and direction (never a token)
//!  GET /healthz         200  "ok" while the process serves
//!  GET /readyz          200  "ok" when every registered listener is up and the runtime
//!                            answers a connect; 503 "not ready: <why>" otherwise
//!  anything else        404; a method other than GET or HEAD gets 405
//! ```
//!
//! Started by the binary with [`serve_admin`]; the listener address is
//! [`MetricsConfig::listen`] (the `metrics` section of the configuration).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
pub use crate::metrics::MetricsConfig;

/// How long an admin client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (metrics.listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// How `/readyz` checks that the runtime is reachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeProbe {
    /// Standalone: a TCP connect to the runtime's streaming server.
    Tcp { host: String, port: u16 },
    /// CRI interception: a connect to the runtime's CRI socket.
    Unix(PathBuf),
    /// No runtime check (readiness depends on the listeners only).
    None,
}

impl RuntimeProbe {
    /// The TCP probe for a standalone upstream URL (`http` defaults to port 80, `https` to
    /// 443). `None` when the URL has no host.
    pub fn for_upstream(upstream: &Uri) -> Option<RuntimeProbe> {
        let host = upstream.host()?;
        // `[::1]` in a URL is `::1` to the resolver.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = upstream
            .port_u16()
            .unwrap_or(if upstream.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        Some(RuntimeProbe::Tcp { host, port })
    }

    async fn check(&self, limit: Duration) -> Result<(), String> {
        match self {
            RuntimeProbe::None => Ok(()),
            RuntimeProbe::Tcp { host, port } => {
                match tokio::time::timeout(limit, TcpStream::connect((host.as_str(), *port))).await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("runtime {host}:{port} unreachable: {e}")),
                    Err(_) => Err(format!(
                        "runtime {host}:{port} did not accept a connection within {limit:?}"
                    )),
                }
            }
            RuntimeProbe::Unix(path) => {
                match tokio::time::timeout(limit, UnixStream::connect(path)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!(
                        "runtime socket {} unreachable: {e}",
                        path.display()
                    )),
                    Err(_) => Err(format!(
                        "runtime socket {} did not accept a connection within {limit:?}",
                        path.display()
                    )),
                }
            }
        }
    }
}

/// What `/readyz` checks: the listeners the binary registered, and the runtime.
///
/// Ready means at least one listener is registered, every registered listener is marked up,
/// and the [`RuntimeProbe`] connects within the probe timeout. The binary registers its
/// listeners and marks them up once bound (and down when it stops accepting, e.g. to drain):
///
/// ```no_run
/// # use ws_spdy_bridge::server::admin::ReadyCheck;
/// let ready = ReadyCheck::standalone(&"http://127.0.0.1:10010".parse().unwrap());
/// ready.expect_listener("streaming");
/// // ... after the streaming listener is bound:
/// ready.set_listener("streaming", true);
/// ```
#[derive(Clone, Debug)]
pub struct ReadyCheck {
    runtime: Arc<RuntimeProbe>,
    timeout: Duration,
    listeners: Arc<Mutex<Vec<(&'static str, bool)>>>,
}

impl ReadyCheck {
    /// Default bound on the runtime probe: 1 s (a kubelet readiness probe's own timeout is
    /// 1 s by default).
    pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

    /// A check probing `runtime`, with no listener registered yet.
    pub fn new(runtime: RuntimeProbe) -> ReadyCheck {
        ReadyCheck {
            runtime: Arc::new(runtime),
            timeout: Self::DEFAULT_PROBE_TIMEOUT,
            listeners: Arc::default(),
        }
    }

    /// Standalone mode: probes the upstream's host and port.
    pub fn standalone(upstream: &Uri) -> ReadyCheck {
        Self::new(RuntimeProbe::for_upstream(upstream).unwrap_or(RuntimeProbe::None))
    }

    /// CRI mode: probes the runtime's CRI socket.
    pub fn cri(runtime_socket: impl Into<PathBuf>) -> ReadyCheck {
        Self::new(RuntimeProbe::Unix(runtime_socket.into()))
    }

    /// Sets the runtime probe's timeout (default [`Self::DEFAULT_PROBE_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> ReadyCheck {
        self.timeout = timeout;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, bool)>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a listener that must be up for readiness; it starts down.
    pub fn expect_listener(&self, name: &'static str) {
        let mut l = self.lock();
        if !l.iter().any(|(n, _)| *n == name) {
            l.push((name, false));
        }
    }

    /// Marks a listener up or down (registering it if new). Clones share the state.
    pub fn set_listener(&self, name: &'static str, up: bool) {
        let mut l = self.lock();
        match l.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = up,
            None => l.push((name, up)),
        }
    }

    /// `Ok` when ready; otherwise why not.
    pub async fn check(&self) -> Result<(), String> {
        {
            let l = self.lock();
            if l.is_empty() {
                return Err("no listener is up yet".into());
            }
            if let Some((name, _)) = l.iter().find(|(_, up)| !up) {
                return Err(format!("the {name} listener is not up"));
            }
        }
        self.runtime.check(self.timeout).await
    }
}

/// A running admin listener.
#[derive(Debug)]
pub struct AdminHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminHandle {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and ends every admin connection.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds [`MetricsConfig::listen`] and serves the admin endpoints until
/// [`AdminHandle::shutdown`].
pub async fn serve_admin(
    cfg: MetricsConfig,
    metrics: Arc<Metrics>,
    ready: ReadyCheck,
) -> Result<AdminHandle, AdminError> {
    let bind_err = |source| AdminError::Bind {
        addr: cfg.listen,
        source,
    };
    let listener = TcpListener::bind(cfg.listen).await.map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    info!(%addr, "admin listener (metrics, health) listening");
    let (stop, stop_rx) = watch::channel(false);
    let shared = Arc::new((metrics, ready));
    let task = tokio::spawn(accept_loop(listener, shared, stop_rx));
    Ok(AdminHandle { addr, stop, task })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<(Arc<Metrics>, ReadyCheck)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        warn!(error = %e, "admin accept failed");
                        // Out of descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(req, &shared.0, &shared.1).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(tcp), service);
                    if let Err(e) = conn.await {
                        debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn handle(
    req: Request<Incoming>,
    metrics: &Metrics,
    ready: &ReadyCheck,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            prometheus::TEXT_FORMAT,
            metrics.encode().into(),
        ),
        "/debug/sessions" => {
            let json = serde_json::to_vec(&metrics.sessions().snapshot())
                .expect("session views serialize");
            respond(StatusCode::OK, "application/json", json.into())
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match ready.check().await {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(why) => {
                debug!(reason = %why, "not ready");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                )
            }
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(code: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    respond(code, "text/plain; charset=utf-8", Bytes::from(body.into()))
}

fn respond(code: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_probe_takes_the_url_port_or_the_scheme_default() {
        let probe = |u: &str| RuntimeProbe::for_upstream(&u.parse().unwrap());
        assert_eq!(
            probe("http://127.0.0.1:41235/base"),
            Some(RuntimeProbe::Tcp {
                host: "127.0.0.1".into(),
                port: 41235
            })
        );
        assert_eq!(
            probe("https://runtime.local"),
            Some(RuntimeProbe::Tcp {
                host: "runtime.local".into(),
                port: 443
            })
        );
        assert_eq!(
            probe("http://[::1]:9"),
            Some(RuntimeProbe::Tcp {
                host: "::1".into(),
                port: 9
            })
        );
    }

    #[tokio::test]
    async fn readiness_needs_every_registered_listener_up() {
        let ready = ReadyCheck::new(RuntimeProbe::None);
        assert!(ready.check().await.is_err(), "nothing registered");
        ready.expect_listener("streaming");
        ready.expect_listener("cri");
        ready.set_listener("streaming", true);
        assert_eq!(
            ready.check().await,
            Err("the cri listener is not up".into())
        );
        ready.clone().set_listener("cri", true);
        assert_eq!(ready.check().await, Ok(()));
    }

    #[tokio::test]
    async fn a_closed_runtime_port_is_not_ready() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ready = ReadyCheck::new(RuntimeProbe::Tcp {
            host: "127.0.0.1".into(),
            port,
        });
        ready.set_listener("streaming", true);
        assert_eq!(ready.check().await, Ok(()));
        drop(listener);
        let err = ready.check().await.unwrap_err();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }
}
