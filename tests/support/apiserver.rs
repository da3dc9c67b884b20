//! A fake Kubernetes API server, just enough for real kubectl to run `exec`, `attach` and
//! `port-forward` against it.
//!
//! kubectl only talks to API-server paths: discovery (`/api`, `/apis`, `/api/v1`), then
//! `GET /api/v1/namespaces/NS/pods/NAME`, then an upgrade request to `.../pods/NAME/exec`,
//! `/attach` or `/portforward`. This server answers the first two itself and hands every upgrade
//! request to a callback supplied by the test, which turns the request's options into a target
//! URL (typically: a CRI call to the runtime, then the bridge's URL for the token). The request
//! is then forwarded to that target and the two connections are spliced.
//!
//! Raw TCP and `httparse`, not hyper: the upgrade request must reach the target byte for byte
//! (only the request line and the `Host` header are rewritten), and both directions must be
//! relayed with their half-closes intact.
//!
//! Every upgrade is recorded ([`UpgradeRecord`]): the request's method, `Upgrade` header and
//! offered protocols, and the status line and selected protocol of the response that came back.
//! That record is what proves which transport kubectl used: kubectl silently retries over SPDY
//! (a second request, `POST`) when a WebSocket upgrade is refused, so its output alone proves
//! nothing about the WebSocket path.
//!
//! Any pod name in any namespace exists, with the containers of [`ApiServerConfig`]: tests give
//! every kubectl run its own pod name and find their upgrades by it.

#![allow(dead_code)]

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Error type of the upgrade callback.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The callback's future.
pub type UpgradeFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

/// Largest request or response head accepted (kubectl's are well under 4 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// Most headers parsed in one head.
const MAX_HEADERS: usize = 64;
/// Bound on connecting to an upgrade target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The streaming subresource of an upgrade request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Exec,
    Attach,
    PortForward,
}

impl Subresource {
    /// The path segment (`exec`, `attach`, `portforward`).
    pub fn as_str(self) -> &'static str {
        match self {
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
        }
    }

    fn from_segment(s: &str) -> Option<Self> {
        match s {
            "exec" => Some(Subresource::Exec),
            "attach" => Some(Subresource::Attach),
            "portforward" => Some(Subresource::PortForward),
            _ => None,
        }
    }
}

impl fmt::Display for Subresource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an upgrade request asks for, from its path and query (protocol.md §3.8, API server
/// row): what the test's callback needs to make the CRI call the kubelet would make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeCall {
    pub subresource: Subresource,
    pub namespace: String,
    pub pod: String,
    /// `container=`; kubectl always sends it (it picks the default container itself).
    pub container: Option<String>,
    /// `command=`, one per argv element, in order (exec only).
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// `ports=` (port-forward), repeated and/or comma-separated.
    pub ports: Vec<u16>,
}

/// The response head that came back from the upgrade target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseRecord {
    /// Status code, e.g. 101.
    pub status: u16,
    /// The status line as sent, without CRLF, e.g. `HTTP/1.1 101 Switching Protocols`.
    pub status_line: String,
    /// `Upgrade` header.
    pub upgrade: Option<String>,
    /// `Sec-WebSocket-Protocol` header (the selected WebSocket sub-protocol).
    pub websocket_protocol: Option<String>,
    /// `X-Stream-Protocol-Version` header (the selected SPDY stream protocol).
    pub stream_protocol: Option<String>,
}

/// One upgrade request and what became of it.
#[derive(Clone, Debug)]
pub struct UpgradeRecord {
    /// When the request head was complete.
    pub at: Instant,
    pub call: UpgradeCall,
    /// Request method (`GET` for WebSocket, `POST` for SPDY).
    pub method: String,
    /// Path and query as the client sent them.
    pub path: String,
    /// `Upgrade` header of the request (`websocket`, `SPDY/3.1`).
    pub upgrade: Option<String>,
    /// `Sec-WebSocket-Protocol` values offered: every header line, split on commas, trimmed.
    pub offered_websocket_protocols: Vec<String>,
    /// `X-Stream-Protocol-Version` values offered (every header line, split on commas).
    pub offered_stream_protocols: Vec<String>,
    /// The URL the callback returned.
    pub target: Option<String>,
    /// Why the request was not forwarded (callback error, bad URL, connect failure).
    pub error: Option<String>,
    /// The target's response head, once it has passed through.
    pub response: Option<ResponseRecord>,
    /// Bytes relayed client → target after the request head.
    pub bytes_up: u64,
    /// Bytes relayed target → client after the response head.
    pub bytes_down: u64,
    /// Both directions of the splice have ended.
    pub ended: bool,
    /// Time from the request head to the end of the splice.
    pub duration: Option<Duration>,
}

impl UpgradeRecord {
    /// A WebSocket upgrade (`Upgrade: websocket`, case-insensitive).
    pub fn is_websocket(&self) -> bool {
        self.upgrade
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    }

    /// A SPDY upgrade (`Upgrade: SPDY/3.1`).
    pub fn is_spdy(&self) -> bool {
        self.upgrade
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1"))
    }

    /// The response status code, if a response head came back.
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
    }
}

/// A plain (non-upgrade) request the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// A container of the fake pod.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    /// `stdin: true`: kubectl only attaches stdin to containers that keep it open.
    pub stdin: bool,
    pub tty: bool,
}

impl ContainerSpec {
    pub fn new(name: &str, stdin: bool, tty: bool) -> Self {
        ContainerSpec {
            name: name.to_string(),
            stdin,
            tty,
        }
    }
}

/// What the fake server serves.
#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    /// Containers of every pod, in order (kubectl's default container is the first).
    pub containers: Vec<ContainerSpec>,
    /// Image name shown in the pod spec (informational).
    pub image: String,
}

type Callback = dyn Fn(UpgradeCall) -> UpgradeFuture + Send + Sync;

struct Inner {
    config: ApiServerConfig,
    addr: SocketAddr,
    callback: Box<Callback>,
    upgrades: Mutex<Vec<UpgradeRecord>>,
    requests: Mutex<Vec<RequestRecord>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Inner {
    fn update(&self, index: usize, f: impl FnOnce(&mut UpgradeRecord)) {
        let mut upgrades = self.upgrades.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = upgrades.get_mut(index) {
            f(record);
        }
    }

    fn track(&self, handle: AbortHandle) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }
}

/// The running fake API server. Its tasks run on the tokio runtime that started it.
pub struct FakeApiServer {
    inner: Arc<Inner>,
}

impl FakeApiServer {
    /// Listens on `127.0.0.1:0`. `callback` maps each upgrade request to the URL it is forwarded
    /// to (`http://HOST:PORT/PATH?QUERY`); an error is answered with a 500 Status.
    pub async fn start<F, Fut>(config: ApiServerConfig, callback: F) -> io::Result<FakeApiServer>
    where
        F: Fn(UpgradeCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            config,
            addr,
            callback: Box::new(move |call| Box::pin(callback(call))),
            upgrades: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let accept_inner = inner.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // EMFILE and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn_inner = accept_inner.clone();
                let task = tokio::spawn(serve_connection(conn_inner, stream));
                accept_inner.track(task.abort_handle());
            }
        });
        inner.track(accept.abort_handle());
        Ok(FakeApiServer { inner })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A kubeconfig for this server: plain HTTP, no credentials, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {}\n\
             users:\n\
             - name: nobody\n  user: {{}}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: nobody\n    namespace: default\n\
             current-context: fake\n",
            self.url()
        )
    }

    /// Every upgrade request so far, in arrival order.
    pub fn upgrades(&self) -> Vec<UpgradeRecord> {
        self.inner
            .upgrades
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The upgrade requests for pod `pod` (any namespace), in arrival order.
    pub fn upgrades_for_pod(&self, pod: &str) -> Vec<UpgradeRecord> {
        self.upgrades()
            .into_iter()
            .filter(|u| u.call.pod == pod)
            .collect()
    }

    /// Every plain request answered so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops accepting and aborts every connection still open.
    pub fn shutdown(&self) {
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A parsed request head. `raw` is the head as received, through the blank line.
struct RequestHead {
    raw: Vec<u8>,
    method: String,
    path: String,
    /// The version token of the request line (`HTTP/1.1`).
    version: String,
    headers: Vec<(String, String)>,
}

impl RequestHead {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header that may repeat, each line split on commas.
    fn list(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

enum HeadRead {
    Head(RequestHead),
    Closed,
    Bad(String),
}

/// Reads one request head from `stream`, with `buf` holding bytes already read; the bytes after
/// the head stay in `buf`.
async fn read_request_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> HeadRead {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let head = RequestHead {
                    raw: buf[..n].to_vec(),
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or_default().to_string(),
                    version: format!("HTTP/1.{}", req.version.unwrap_or(1)),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                };
                buf.drain(..n);
                return HeadRead::Head(head);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return HeadRead::Bad(format!("bad request head: {e}")),
        }
        if buf.len() > MAX_HEAD {
            return HeadRead::Bad("request head too large".into());
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return HeadRead::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve_connection(inner: Arc<Inner>, mut stream: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let head = match read_request_head(&mut stream, &mut buf).await {
            HeadRead::Head(head) => head,
            HeadRead::Closed => return,
            HeadRead::Bad(why) => {
                let _ = respond(&mut stream, 400, &status_json(400, "BadRequest", &why)).await;
                return;
            }
        };
        let (path_only, query) = match head.path.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (head.path.clone(), String::new()),
        };
        let segments: Vec<&str> = path_only.trim_matches('/').split('/').collect();
        // /api/v1/namespaces/NS/pods/NAME/SUBRESOURCE
        if let ["api", "v1", "namespaces", ns, "pods", pod, sub] = segments[..]
            && let Some(subresource) = Subresource::from_segment(sub)
        {
            let call = parse_call(subresource, ns, pod, &query);
            let leftover = std::mem::take(&mut buf);
            forward_upgrade(inner, stream, head, leftover, call).await;
            return;
        }

        // A plain request: skip any body, answer, keep the connection.
        let body_len: usize = head
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            let _ = respond(
                &mut stream,
                411,
                &status_json(
                    411,
                    "LengthRequired",
                    "chunked bodies are not supported here",
                ),
            )
            .await;
            return;
        }
        while buf.len() < body_len {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_len);

        let (status, body) = answer(&inner, &head.method, &segments);
        inner
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RequestRecord {
                method: head.method.clone(),
                path: head.path.clone(),
                status,
            });
        if respond(&mut stream, status, &body).await.is_err() {
            return;
        }
        let close = head
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
            || head.version == "HTTP/1.0";
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// The JSON answer to a plain request.
fn answer(inner: &Inner, method: &str, segments: &[&str]) -> (u16, Value) {
    if method != "GET" {
        return (
            405,
            status_json(
                405,
                "MethodNotAllowed",
                "this fake API server only serves GET",
            ),
        );
    }
    match segments {
        ["api"] => (
            200,
            json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": inner.addr.to_string()}
                ],
            }),
        ),
        ["apis"] => (
            200,
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        ),
        ["api", "v1"] => (200, core_v1_resources()),
        ["version"] => (
            200,
            json!({
                "major": "1",
                "minor": "33",
                "gitVersion": "v1.33.0-ws-spdy-bridge-fake",
                "platform": "linux/amd64",
            }),
        ),
        ["api", "v1", "namespaces", ns, "pods", pod] => (200, pod_json(&inner.config, ns, pod)),
        _ => (
            404,
            status_json(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ),
    }
}

/// Legacy discovery of the core group: only what kubectl's exec, attach and port-forward need.
fn core_v1_resources() -> Value {
    let sub = |name: &str, kind: &str| {
        json!({
            "name": name,
            "singularName": "",
            "namespaced": true,
            "kind": kind,
            "verbs": ["create", "get"],
        })
    };
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "pods",
                "singularName": "pod",
                "namespaced": true,
                "kind": "Pod",
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                "shortNames": ["po"],
                "categories": ["all"],
            },
            sub("pods/attach", "PodAttachOptions"),
            sub("pods/exec", "PodExecOptions"),
            sub("pods/portforward", "PodPortForwardOptions"),
        ],
    })
}

/// A running pod named `pod` with the configured containers, all ready.
fn pod_json(config: &ApiServerConfig, namespace: &str, pod: &str) -> Value {
    let started = "2024-01-01T00:00:00Z";
    let containers: Vec<Value> = config
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": config.image,
                "stdin": c.stdin,
                "tty": c.tty,
            })
        })
        .collect();
    let statuses: Vec<Value> = config
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": config.image,
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            })
        })
        .collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": pod,
            "namespace": namespace,
            "uid": format!("00000000-0000-4000-8000-{:012x}", fnv(pod) & 0xffff_ffff_ffff),
            "resourceVersion": "1",
            "creationTimestamp": started,
        },
        "spec": {
            "containers": containers,
            "restartPolicy": "Always",
            "nodeName": "fake-node",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
            ],
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.2",
            "startTime": started,
            "containerStatuses": statuses,
        },
    })
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A `metav1.Status` failure body.
fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Unknown",
    }
}

async fn respond(stream: &mut TcpStream, code: u16, body: &Value) -> io::Result<()> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        reason_phrase(code),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    stream.write_all(&out).await
}

/// `application/x-www-form-urlencoded` decoding of one query component (`+` is a space).
fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's `(name, value)` pairs, decoded, in order.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode_component(k), decode_component(v)),
            None => (decode_component(p), String::new()),
        })
        .collect()
}

/// The API server's boolean parsing (Go's `strconv.ParseBool` true values).
fn truthy(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

fn parse_call(subresource: Subresource, namespace: &str, pod: &str, query: &str) -> UpgradeCall {
    let mut call = UpgradeCall {
        subresource,
        namespace: decode_component(namespace),
        pod: decode_component(pod),
        container: None,
        command: Vec::new(),
        stdin: false,
        stdout: false,
        stderr: false,
        tty: false,
        ports: Vec::new(),
    };
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "container" => call.container = Some(v),
            "command" => call.command.push(v),
            "stdin" => call.stdin = truthy(&v),
            "stdout" => call.stdout = truthy(&v),
            "stderr" => call.stderr = truthy(&v),
            "tty" => call.tty = truthy(&v),
            "ports" | "port" => call
                .ports
                .extend(v.split(',').filter_map(|p| p.trim().parse::<u16>().ok())),
            _ => {}
        }
    }
    call
}

/// Asks the callback for the target, forwards the request there and splices the connections.
async fn forward_upgrade(
    inner: Arc<Inner>,
    mut client: TcpStream,
    head: RequestHead,
    leftover: Vec<u8>,
    call: UpgradeCall,
) {
    let started = Instant::now();
    let index = {
        let mut upgrades = inner.upgrades.lock().unwrap_or_else(|e| e.into_inner());
        upgrades.push(UpgradeRecord {
            at: started,
            call: call.clone(),
            method: head.method.clone(),
            path: head.path.clone(),
            upgrade: head.header("upgrade").map(str::to_string),
            offered_websocket_protocols: head.list("sec-websocket-protocol"),
            offered_stream_protocols: head.list("x-stream-protocol-version"),
            target: None,
            error: None,
            response: None,
            bytes_up: 0,
            bytes_down: 0,
            ended: false,
            duration: None,
        });
        upgrades.len() - 1
    };
    let fail = |why: String| {
        inner.update(index, |r| {
            r.error = Some(why.clone());
            r.ended = true;
            r.duration = Some(started.elapsed());
        });
        why
    };

    let target = match (inner.callback)(call).await {
        Ok(target) => target,
        Err(e) => {
            let why = fail(format!("upgrade callback failed: {e}"));
            let _ = respond(&mut client, 500, &status_json(500, "InternalError", &why)).await;
            return;
        }
    };
    inner.update(index, |r| r.target = Some(target.clone()));
    let uri: http::Uri = match target.parse() {
        Ok(uri) => uri,
        Err(e) => {
            let why = fail(format!("target URL {target:?}: {e}"));
            let _ = respond(&mut client, 500, &status_json(500, "InternalError", &why)).await;
            return;
        }
    };
    let (Some(authority), Some(path_and_query)) = (uri.authority(), uri.path_and_query()) else {
        let why = fail(format!(
            "target URL {target:?} lacks an authority or a path"
        ));
        let _ = respond(&mut client, 500, &status_json(500, "InternalError", &why)).await;
        return;
    };
    if uri.scheme_str() != Some("http") {
        let why = fail(format!("target URL {target:?}: only http:// is supported"));
        let _ = respond(&mut client, 500, &status_json(500, "InternalError", &why)).await;
        return;
    }
    let authority = authority.as_str().to_string();
    let upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority.as_str())).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let why = fail(format!("connect to {authority}: {e}"));
                let _ = respond(&mut client, 502, &status_json(502, "BadGateway", &why)).await;
                return;
            }
            Err(_) => {
                let why = fail(format!("connect to {authority}: timed out"));
                let _ = respond(&mut client, 502, &status_json(502, "BadGateway", &why)).await;
                return;
            }
        };
    let _ = upstream.set_nodelay(true);

    let request = rewrite_head(&head, path_and_query.as_str(), &authority);
    splice(inner, index, started, client, upstream, request, leftover).await;
}

/// The request head with a new request line (same method and version, new path and query) and
/// `Host` header; every other header line byte for byte as received.
fn rewrite_head(head: &RequestHead, path_and_query: &str, authority: &str) -> Vec<u8> {
    let mut out = format!("{} {} {}\r\n", head.method, path_and_query, head.version).into_bytes();
    let mut lines = head.raw.split_inclusive(|&b| b == b'\n');
    lines.next(); // the request line
    for line in lines {
        let name = line
            .iter()
            .position(|&b| b == b':')
            .map(|colon| &line[..colon]);
        if name.is_some_and(|n| n.eq_ignore_ascii_case(b"host")) {
            out.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
        } else {
            // Includes the final empty line.
            out.extend_from_slice(line);
        }
    }
    out
}

/// Relays both directions until both have ended; each EOF becomes a half-close the same way.
/// `leftover`: client bytes read together with the request head.
/// The response head is recorded before it is passed on, so the record is complete by the time
/// the client acts on the response.
async fn splice(
    inner: Arc<Inner>,
    index: usize,
    started: Instant,
    client: TcpStream,
    upstream: TcpStream,
    request: Vec<u8>,
    leftover: Vec<u8>,
) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut up_rd, mut up_wr) = upstream.into_split();

    let up_inner = inner.clone();
    let up = async move {
        let mut first = request;
        first.extend_from_slice(&leftover);
        if up_wr.write_all(&first).await.is_ok() {
            let n = copy_counting(&mut client_rd, &mut up_wr).await;
            up_inner.update(index, |r| r.bytes_up = leftover.len() as u64 + n);
        }
        let _ = up_wr.shutdown().await;
    };

    let down_inner = inner.clone();
    let down = async move {
        let mut head = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        // Accumulate the response head (or whatever arrives before EOF).
        let head_end = loop {
            if let Some(end) = find_head_end(&head) {
                break Some(end);
            }
            if head.len() > MAX_HEAD {
                break None;
            }
            match up_rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break None,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        };
        let record = parse_response_head(&head[..head_end.unwrap_or(head.len())]);
        down_inner.update(index, |r| r.response = record);
        let written = client_wr.write_all(&head).await.is_ok();
        if let (true, Some(end)) = (written, head_end) {
            let extra = (head.len() - end) as u64;
            let n = copy_counting(&mut up_rd, &mut client_wr).await;
            down_inner.update(index, |r| r.bytes_down = extra + n);
        }
        let _ = client_wr.shutdown().await;
    };

    tokio::join!(up, down);
    inner.update(index, |r| {
        r.ended = true;
        r.duration = Some(started.elapsed());
    });
}

/// Copies until EOF or an error; returns the bytes copied.
async fn copy_counting<R, W>(rd: &mut R, wr: &mut W) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => n,
        };
        if wr.write_all(&buf[..n]).await.is_err() {
            return total;
        }
        total += n as u64;
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_response_head(head: &[u8]) -> Option<ResponseRecord> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let status = resp.code?;
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let status_line_end = head.windows(2).position(|w| w == b"\r\n")?;
    Some(ResponseRecord {
        status,
        status_line: String::from_utf8_lossy(&head[..status_line_end]).into_owned(),
        upgrade: header("upgrade"),
        websocket_protocol: header("sec-websocket-protocol"),
        stream_protocol: header("x-stream-protocol-version"),
    })
}
