//! Real `kubectl port-forward` through the bridge to a port inside a containerd 1.6 pod.
//!
//! ```text
//! local TCP ──▶ kubectl ──ws SPDY/3.1+portforward.k8s.io──▶ fake API server ──▶ bridge
//!                 (SPDY port-forward client inside the tunnel)      (tunnel) │ SPDY portforward.k8s.io
//!                                                                          ▼
//!                                   pod netns 127.0.0.1:PORT ◀── containerd's port-forward
//! ```
//!
//! kubectl only talks to API-server paths: `support/apiserver.rs` answers discovery and the
//! pod GET, makes the CRI `PortForward` call a kubelet would make for each upgrade, and
//! forwards the upgrade to the bridge (standalone mode, in front of containerd's streaming
//! server). The pod is the containerd peer's (`support/containerd_peer.rs`): busybox `httpd`
//! on 127.0.0.1:8080, and, started here with an exec, an echo server on 9001 (`nc -ll -e dd`).
//!
//! kubectl 1.31+ offer the tunnel and silently fall back to SPDY when it is refused
//! (test-peers.md), so every tunnel case checks the fake API server's record: exactly one
//! upgrade for the run's pod name, a `GET` offering `SPDY/3.1+portforward.k8s.io`, answered
//! `101` with that sub-protocol, and no `POST`. kubectl 1.30 (SPDY only) must pass through.
//!
//! Per kubectl 1.31, 1.32, 1.33: an HTTP GET over the forwarded port; two connections open at
//! once; [`BIG_BYTES`] each way through the echo server, byte-exact by SHA-256, with at most
//! [`MAX_IN_FLIGHT`] unread (see there why). kubectl 1.30: the SPDY port-forward passed
//! through, with a GET.
//!
//! One containerd, bridge and fake API server per test binary. Missing kubectl binaries or
//! containerd skip with a notice unless `WS_SPDY_BRIDGE_REQUIRE_PEERS=1`.
//!
//! ```text
//! WS_SPDY_BRIDGE_REQUIRE_PEERS=1 cargo test --test kubectl_portforward -- --nocapture
//! ```

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/containerd_peer.rs"]
mod containerd_peer;
#[path = "support/kubectl_cli.rs"]
mod kubectl_cli;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Uri;
use sha2::{Digest, Sha256};
use ws_spdy_bridge::cri::CriClient;
use ws_spdy_bridge::cri::proto::{ExecRequest, PortForwardRequest};
use ws_spdy_bridge::server::{Bridge, BridgeConfig};
use ws_spdy_bridge::upstream::UpstreamConfig;
use ws_spdy_bridge::upstream::remotecommand::{
    DEFAULT_ERROR_STREAM_CAP, Outcome, RemoteCommand, StreamOptions, client_connection_config,
};

use apiserver::{
    ApiServerConfig, BoxError, ContainerSpec, FakeApiServer, Subresource, UpgradeCall,
    UpgradeRecord,
};
use containerd_peer::{BUSYBOX_IMAGE, HTTP_BODY, HTTP_PORT, PeerGuard, REQUIRE_ENV};
use kubectl_cli::{ChildGuard, Kubectl, chunks, find_kubectl, read_all, wait_for};

/// kubectl versions that port-forward through the WebSocket tunnel.
macro_rules! tunnel_version {
    ($module:ident, $version:literal) => {
        mod $module {
            const V: &str = $version;

            #[test]
            fn http_get_over_the_websocket_tunnel() {
                super::http_get_over_tunnel(
                    V,
                    concat!(stringify!($module), "::http_get_over_the_websocket_tunnel"),
                );
            }

            #[test]
            fn two_concurrent_connections_over_one_tunnel() {
                super::two_concurrent_connections(
                    V,
                    concat!(
                        stringify!($module),
                        "::two_concurrent_connections_over_one_tunnel"
                    ),
                );
            }

            #[test]
            fn bulk_each_way_is_byte_exact() {
                super::bulk_each_way(
                    V,
                    concat!(stringify!($module), "::bulk_each_way_is_byte_exact"),
                );
            }
        }
    };
}

macro_rules! tunnel_test_names {
    ($($module:ident),*; $($extra:literal),*) => {
        &[
            $(
                concat!(stringify!($module), "::http_get_over_the_websocket_tunnel"),
                concat!(stringify!($module), "::two_concurrent_connections_over_one_tunnel"),
                concat!(stringify!($module), "::bulk_each_way_is_byte_exact"),
            )*
            $($extra),*
        ]
    };
}

tunnel_version!(kubectl_1_31, "1.31");
tunnel_version!(kubectl_1_32, "1.32");
tunnel_version!(kubectl_1_33, "1.33");

/// kubectl 1.30 port-forwards over SPDY only.
mod kubectl_1_30_spdy {
    #[test]
    fn spdy_port_forward_passes_through() {
        super::spdy_pass_through(
            "1.30",
            "kubectl_1_30_spdy::spdy_port_forward_passes_through",
        );
    }
}

/// Every test of this binary that uses the peer: the last one to finish tears it down.
const TESTS: &[&str] = tunnel_test_names!(
    kubectl_1_31, kubectl_1_32, kubectl_1_33;
    "kubectl_1_30_spdy::spdy_port_forward_passes_through"
);

const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The container of the pod (busybox httpd); it shares the pod's network namespace.
const WEB: &str = "web";
/// The echo server's port inside the pod.
const ECHO_PORT: u16 = 9001;
/// Bytes sent, and echoed back, in the bulk case: 1 GiB each way.
const BIG_BYTES: u64 = 1 << 30;
/// Bound on kubectl coming up and one ordinary exchange.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause in the bulk transfer before it counts as stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Block size of the bulk writes and of the echo server's `dd`.
const BLOCK: usize = 64 * 1024;
/// Most bytes the bulk case has written and not yet read back. Without a bound, every socket
/// of the chain fills up (loopback receive buffers autotune to `tcp_rmem` max, 32 MiB here),
/// and a receiver whose queue overshoots its buffer makes this kernel (6.18) drop what its
/// peer sends, the ACKs for the other direction included (`PROTO_MEM`, then
/// `TCP_INVALID_SEQUENCE` / `TCP_INVALID_END_SEQUENCE` in `skb:kfree_skb`): both directions of
/// that connection then sit in RTO backoff (13, 26, 52 s) with an empty, reading receiver,
/// which the test saw as a stall. With 8 MiB no such drop was seen in 38 runs under load; it
/// costs about a tenth of the throughput here (74–85 against 85–92 MB/s each way).
const MAX_IN_FLIGHT: u64 = 8 << 20;

fn say(msg: &str) {
    let line = format!("[kubectl port-forward] {msg}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

// ---- the shared environment -------------------------------------------------------------------

/// What the upgrade callback needs.
struct Targets {
    cri: CriClient,
    sandbox_id: String,
    bridge: SocketAddr,
}

impl Targets {
    /// The kubelet's CRI call for a port-forward upgrade, and the bridge's URL for its token.
    async fn target(&self, call: UpgradeCall) -> Result<String, BoxError> {
        if call.subresource != Subresource::PortForward {
            return Err(format!("only port-forward here, not {}", call.subresource).into());
        }
        let runtime_url = self
            .cri
            .port_forward(PortForwardRequest {
                pod_sandbox_id: self.sandbox_id.clone(),
                port: call.ports.iter().map(|&p| i32::from(p)).collect(),
            })
            .await?;
        let uri: Uri = runtime_url.parse()?;
        // The ports ride along for the channel protocol; the tunnel names them per stream.
        let query: Vec<String> = call.ports.iter().map(|p| format!("ports={p}")).collect();
        let mut url = format!("http://{}{}", self.bridge, uri.path());
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query.join("&"));
        }
        Ok(url)
    }
}

struct Env {
    rt: tokio::runtime::Runtime,
    api: FakeApiServer,
    bridge: Mutex<Option<Bridge>>,
    dir: PathBuf,
    kubeconfig: PathBuf,
    runs: AtomicUsize,
}

static ENV: Mutex<Option<Result<Arc<Env>, String>>> = Mutex::new(None);

fn shared_env(peer: &PeerGuard) -> Arc<Env> {
    let mut slot = ENV.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        let t0 = Instant::now();
        let started = Env::start(peer).map(Arc::new).map_err(|e| e.to_string());
        match &started {
            Ok(env) => say(&format!(
                "fake API server on {}; set up (bridge, echo server in the pod) in {} ms",
                env.api.addr(),
                t0.elapsed().as_millis()
            )),
            Err(e) => say(&format!("set-up failed: {e}")),
        }
        containerd_peer::on_teardown(teardown_env);
        *slot = Some(started);
    }
    match slot.as_ref() {
        Some(Ok(env)) => env.clone(),
        Some(Err(e)) => panic!("bridge / fake API server set-up failed: {e}"),
        None => unreachable!(),
    }
}

/// Runs at the peer's teardown, while containerd still runs.
fn teardown_env() {
    let Some(Ok(env)) = ENV.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    if let Some(bridge) = env.bridge.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let shutdown =
            async { tokio::time::timeout(Duration::from_secs(10), bridge.shutdown()).await };
        if env.rt.block_on(shutdown).is_err() {
            say("bridge shutdown did not finish within 10 s");
        }
    }
    env.api.shutdown();
    let _ = fs::remove_dir_all(&env.dir);
}

impl Env {
    fn start(peer: &PeerGuard) -> Result<Env, BoxError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "ws-spdy-bridge-kubectl-pf-{}-{}",
            std::process::id(),
            nanos % 1_000_000_000
        ));
        fs::create_dir_all(&dir)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kubectl-pf-env")
            .enable_all()
            .build()?;
        let socket = peer.socket.clone();
        let (sandbox_id, web_id) = (peer.sandbox_id.clone(), peer.web_id.clone());
        let (api, bridge) = rt.block_on(async move {
            let cri = CriClient::connect_unix(&socket).await?;
            // The echo server, started with an exec straight to containerd; the exec returns
            // at once and the server stays (nothing of the exec's stdio is kept open).
            let exec = cri
                .exec(ExecRequest {
                    container_id: web_id.clone(),
                    cmd: vec![
                        "sh".into(),
                        "-c".into(),
                        format!(
                            "setsid nc -ll -p {ECHO_PORT} -e dd bs={BLOCK} </dev/null >/dev/null 2>&1 &"
                        ),
                    ],
                    stdout: true,
                    ..Default::default()
                })
                .await?;
            let exec: Uri = exec.parse()?;
            let containerd_stream: SocketAddr = exec
                .authority()
                .ok_or("containerd's Exec URL has no authority")?
                .as_str()
                .parse()?;
            let mut rc = RemoteCommand::start(
                &exec,
                StreamOptions {
                    stdout: true,
                    ..StreamOptions::default()
                },
                &UpstreamConfig::default(),
                client_connection_config(),
            )
            .await?;
            if let Some(stdout) = rc.stdout.as_mut() {
                while stdout.recv().await.is_some() {}
            }
            let outcome = rc.read_outcome(DEFAULT_ERROR_STREAM_CAP).await;
            if !matches!(outcome, Outcome::Success) {
                return Err(format!("starting the echo server failed: {outcome:?}").into());
            }
            rc.close().await;

            let bridge = Bridge::start(BridgeConfig {
                listen: "127.0.0.1:0".parse()?,
                upstream: format!("http://{containerd_stream}").parse()?,
                ..BridgeConfig::default()
            })
            .await?;
            let targets = Arc::new(Targets {
                cri,
                sandbox_id,
                bridge: bridge.addr(),
            });
            let config = ApiServerConfig {
                containers: vec![ContainerSpec::new(WEB, false, false)],
                image: BUSYBOX_IMAGE.to_string(),
            };
            let api = FakeApiServer::start(config, move |call| {
                let targets = targets.clone();
                async move { targets.target(call).await }
            })
            .await?;
            Ok::<_, BoxError>((api, bridge))
        })?;
        let kubeconfig = dir.join("kubeconfig");
        fs::write(&kubeconfig, api.kubeconfig())?;
        Ok(Env {
            rt,
            api,
            bridge: Mutex::new(Some(bridge)),
            dir,
            kubeconfig,
            runs: AtomicUsize::new(0),
        })
    }

    /// `kubectl port-forward POD :PORT` with a fresh cache dir and a clean environment.
    fn port_forward(&self, kubectl: &Kubectl, pod: &str, port: u16) -> Command {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let mut cmd = Command::new(&kubectl.path);
        cmd.arg(format!(
            "--cache-dir={}",
            self.dir.join(format!("cache-{run}")).display()
        ))
        .args(["port-forward", "--address", "127.0.0.1", pod])
        .arg(format!(":{port}"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &self.dir)
        .env("KUBECONFIG", &self.kubeconfig)
        .env("LANG", "C");
        cmd
    }
}

struct Ctx {
    env: Arc<Env>,
    kubectl: Kubectl,
    _peer: PeerGuard,
}

fn setup(test: &'static str, version: &'static str) -> Option<Ctx> {
    let peer = containerd_peer::acquire(test, TESTS)?;
    let kubectl = match find_kubectl(version) {
        Ok(k) => k,
        Err(why) => {
            if required() {
                panic!("kubectl {version} required ({REQUIRE_ENV}=1) but unusable: {why}");
            }
            say(&format!(
                "SKIPPED {test}: {why}; set {REQUIRE_ENV}=1 to make this a failure"
            ));
            return None;
        }
    };
    let env = shared_env(&peer);
    Some(Ctx {
        env,
        kubectl,
        _peer: peer,
    })
}

fn pod_name(case: &str, version: &str) -> String {
    format!("pf-{case}-{}", version.replace('.', "-"))
}

// ---- kubectl port-forward ---------------------------------------------------------------------

/// A running `kubectl port-forward`, killed when dropped.
struct Forward {
    child: ChildGuard,
    /// The local port kubectl listens on.
    local: u16,
    /// From start to "Forwarding from".
    ready: Duration,
    stderr: Option<thread::JoinHandle<Vec<u8>>>,
    /// kubectl's stdout, still read: it prints a line per connection, and a closed pipe would
    /// kill it with SIGPIPE at the second one.
    _stdout: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Forward {
    fn start(ctx: &Ctx, pod: &str, port: u16) -> Forward {
        let mut cmd = ctx.env.port_forward(&ctx.kubectl, pod, port);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = ChildGuard(cmd.spawn().expect("start kubectl port-forward"));
        let (rx, _reader) = chunks(child.0.stdout.take().expect("stdout pipe"));
        let stderr = child.0.stderr.take().expect("stderr pipe");
        let stderr = thread::spawn(move || read_all(stderr));
        let mut seen = Vec::new();
        let listening = wait_for(
            &rx,
            &mut seen,
            format!(" -> {port}").as_bytes(),
            Instant::now() + RUN_TIMEOUT,
        );
        let text = String::from_utf8_lossy(&seen).into_owned();
        let local = text.lines().find_map(|l| {
            l.strip_prefix("Forwarding from 127.0.0.1:")?
                .split_whitespace()
                .next()?
                .parse::<u16>()
                .ok()
        });
        let mut forward = Forward {
            child,
            local: 0,
            ready: t0.elapsed(),
            stderr: Some(stderr),
            _stdout: rx,
        };
        match local.filter(|_| listening) {
            Some(local) => forward.local = local,
            None => {
                let stderr = forward.stop();
                panic!(
                    "kubectl port-forward never listened; stdout {text:?}; stderr {stderr:?}; {}",
                    describe_all(&ctx.env.api.upgrades_for_pod(pod))
                );
            }
        }
        forward
    }

    /// Kills kubectl; returns its stderr.
    fn stop(&mut self) -> String {
        self.child.kill();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .map(|e| String::from_utf8_lossy(&e).into_owned())
            .unwrap_or_default()
    }

    fn connect(&self) -> TcpStream {
        let conn = TcpStream::connect(("127.0.0.1", self.local)).expect("connect to kubectl");
        conn.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
        conn.set_nodelay(true).unwrap();
        conn
    }
}

// ---- the fake API server's record ---------------------------------------------------------------

fn describe(u: &UpgradeRecord) -> String {
    let response = match &u.response {
        Some(r) => format!(
            "{:?} (Sec-WebSocket-Protocol {:?}, X-Stream-Protocol-Version {:?})",
            r.status_line, r.websocket_protocol, r.stream_protocol
        ),
        None => "no response head".into(),
    };
    format!(
        "{} {} Upgrade={:?} offered ws={:?} spdy={:?} -> {response}; error={:?}; up {} B, down {} B",
        u.method,
        u.path,
        u.upgrade,
        u.offered_websocket_protocols,
        u.offered_stream_protocols,
        u.error,
        u.bytes_up,
        u.bytes_down,
    )
}

fn describe_all(ups: &[UpgradeRecord]) -> String {
    if ups.is_empty() {
        return "no upgrade requests".into();
    }
    ups.iter()
        .enumerate()
        .map(|(i, u)| format!("\n  #{i}: {}", describe(u)))
        .collect()
}

/// The port-forward for `pod` used the WebSocket tunnel: one `GET` offering the tunnel,
/// answered 101 with it, and no SPDY fallback.
fn assert_tunnel_used(env: &Env, pod: &str) -> UpgradeRecord {
    let ups = env.api.upgrades_for_pod(pod);
    let all = describe_all(&ups);
    assert_eq!(
        ups.len(),
        1,
        "exactly one upgrade expected for {pod} (a second one is kubectl's SPDY fallback): {all}"
    );
    let u = ups.into_iter().next().expect("one upgrade");
    assert_eq!(u.call.subresource, Subresource::PortForward, "{all}");
    assert_eq!(u.method, "GET", "{all}");
    assert!(u.is_websocket(), "not a WebSocket upgrade: {all}");
    assert!(
        u.offered_websocket_protocols.iter().any(|p| p == TUNNEL),
        "{all}"
    );
    let response = u.response.as_ref().unwrap_or_else(|| panic!("{all}"));
    assert_eq!(response.status, 101, "{all}");
    assert_eq!(
        response.websocket_protocol.as_deref(),
        Some(TUNNEL),
        "{all}"
    );
    u
}

fn assert_http_ok(response: &[u8]) {
    let text = String::from_utf8_lossy(response);
    assert!(
        text.lines().next().is_some_and(|l| l.contains(" 200 ")),
        "{text:?}"
    );
    assert!(text.ends_with(HTTP_BODY), "{text:?}");
}

fn http_get(conn: &mut TcpStream) -> Vec<u8> {
    conn.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    read_all(conn)
}

// ---- the cases --------------------------------------------------------------------------------

/// An HTTP GET over the forwarded port reaches busybox httpd in the pod, over the tunnel.
fn http_get_over_tunnel(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("get", version);
    let mut forward = Forward::start(&ctx, &pod, HTTP_PORT);
    let t0 = Instant::now();
    let response = http_get(&mut forward.connect());
    let get_ms = t0.elapsed().as_millis();
    let stderr = forward.stop();
    assert_http_ok(&response);
    assert_tunnel_used(&ctx.env, &pod);
    assert!(!stderr.contains("error"), "kubectl reported: {stderr}");
    say(&format!(
        "{} port-forward over the WebSocket tunnel: listening after {} ms, GET {get_ms} ms",
        ctx.kubectl.git_version,
        forward.ready.as_millis()
    ));
}

/// Two connections through one kubectl at once (request ids 0 and 1): the first sends half a
/// request and waits while the second is served, then finishes.
fn two_concurrent_connections(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("two", version);
    let mut forward = Forward::start(&ctx, &pod, HTTP_PORT);
    let t0 = Instant::now();
    let mut first = forward.connect();
    first.write_all(b"GET / HTTP/1.0\r\n").unwrap();
    // Let kubectl open the first pair of streams before the second connection arrives.
    thread::sleep(Duration::from_millis(200));
    let mut second = forward.connect();
    let second_response = http_get(&mut second);
    let _ = first.write_all(b"Host: localhost\r\n\r\n");
    let _ = first.shutdown(Shutdown::Write);
    let first_response = read_all(&mut first);
    let elapsed = t0.elapsed();
    let stderr = forward.stop();
    assert_http_ok(&second_response);
    assert_http_ok(&first_response);
    assert_tunnel_used(&ctx.env, &pod);
    assert!(!stderr.contains("error"), "kubectl reported: {stderr}");
    say(&format!(
        "{} two concurrent connections over one tunnel: {} ms",
        ctx.kubectl.git_version,
        elapsed.as_millis()
    ));
}

/// A deterministic byte stream (xorshift64*), generated block by block.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes read back so far, and whether the reading is over; the sender waits on it.
type Echoed = Arc<(Mutex<(u64, bool)>, Condvar)>;

/// Waits until at most [`MAX_IN_FLIGHT`] minus one block of the `sent` bytes is still unread.
/// `false` when the reading ended or nothing came back for [`STALL_TIMEOUT`].
fn wait_for_echo(echoed: &Echoed, sent: u64) -> bool {
    let (lock, cond) = &**echoed;
    let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = state.0;
    let mut since = Instant::now();
    while sent - state.0.min(sent) > MAX_IN_FLIGHT - BLOCK as u64 {
        if state.1 {
            return false;
        }
        if state.0 != last {
            last = state.0;
            since = Instant::now();
        }
        let Some(left) = STALL_TIMEOUT.checked_sub(since.elapsed()) else {
            return false;
        };
        state = cond
            .wait_timeout(state, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

/// [`BIG_BYTES`] written to the echo server in the pod while its echo is read back, both
/// hashed, with at most [`MAX_IN_FLIGHT`] unread; the digests must match, and the fake API
/// server must have carried at least that much each way over the WebSocket.
fn bulk_each_way(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("bulk", version);
    let mut forward = Forward::start(&ctx, &pod, ECHO_PORT);
    let conn = forward.connect();
    // A stalled transfer fails the test instead of hanging it.
    conn.set_read_timeout(Some(STALL_TIMEOUT)).unwrap();
    conn.set_write_timeout(Some(STALL_TIMEOUT)).unwrap();
    let mut reader = conn.try_clone().unwrap();
    let mut writer = conn;
    let t0 = Instant::now();
    let echoed: Echoed = Arc::new((Mutex::new((0, false)), Condvar::new()));
    let sender_echoed = echoed.clone();
    let sender = thread::spawn(move || {
        let mut pattern = Pattern(0x9e37_79b9_7f4a_7c15);
        let mut hasher = Sha256::new();
        let mut block = vec![0u8; BLOCK];
        let mut left = BIG_BYTES;
        while left > 0 {
            if !wait_for_echo(&sender_echoed, BIG_BYTES - left) {
                break;
            }
            let n = left.min(BLOCK as u64) as usize;
            pattern.fill(&mut block[..n]);
            hasher.update(&block[..n]);
            if writer.write_all(&block[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        (hex(&hasher.finalize()), BIG_BYTES - left, writer)
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut got = 0u64;
    while got < BIG_BYTES {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                got += n as u64;
                let (lock, cond) = &*echoed;
                lock.lock().unwrap_or_else(|e| e.into_inner()).0 = got;
                cond.notify_one();
            }
        }
    }
    {
        let (lock, cond) = &*echoed;
        lock.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        cond.notify_one();
    }
    let elapsed = t0.elapsed();
    let received = hex(&hasher.finalize());
    let (sent, sent_bytes, writer) = sender.join().expect("sender thread");
    drop(writer);
    drop(reader);
    let stderr = forward.stop();
    assert_eq!(
        (sent_bytes, got),
        (BIG_BYTES, BIG_BYTES),
        "(sent, echoed) short of {BIG_BYTES} each: the transfer stalled for {STALL_TIMEOUT:?} or \
         ended early; stderr {stderr:?}"
    );
    assert_eq!(received, sent, "echoed bytes differ");
    let u = assert_tunnel_used(&ctx.env, &pod);
    // Wait for the fake API server to count the bytes of the tunnel it spliced.
    let deadline = Instant::now() + Duration::from_secs(5);
    let u = loop {
        let now = ctx
            .env
            .api
            .upgrades_for_pod(&pod)
            .pop()
            .unwrap_or(u.clone());
        if now.ended || Instant::now() > deadline {
            break now;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(
        u.bytes_up >= BIG_BYTES && u.bytes_down >= BIG_BYTES,
        "the tunnel did not carry the bytes: {}",
        describe(&u)
    );
    let mb = BIG_BYTES as f64 / 1e6;
    say(&format!(
        "{} {} MiB each way through the echo server, byte-exact (sha256 {}…): {:.1} s, {:.0} MB/s each way",
        ctx.kubectl.git_version,
        BIG_BYTES >> 20,
        &sent[..16],
        elapsed.as_secs_f64(),
        mb / elapsed.as_secs_f64()
    ));
}

/// kubectl 1.30 port-forwards over SPDY: the bridge passes it through to containerd.
fn spdy_pass_through(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("spdy", version);
    let mut forward = Forward::start(&ctx, &pod, HTTP_PORT);
    let response = http_get(&mut forward.connect());
    forward.stop();
    assert_http_ok(&response);
    let ups = ctx.env.api.upgrades_for_pod(&pod);
    let all = describe_all(&ups);
    assert_eq!(ups.len(), 1, "{all}");
    let u = &ups[0];
    assert_eq!(u.method, "POST", "{all}");
    assert!(u.is_spdy(), "{all}");
    let response = u.response.as_ref().unwrap_or_else(|| panic!("{all}"));
    assert_eq!(response.status, 101, "{all}");
    assert_eq!(
        response.stream_protocol.as_deref(),
        Some("portforward.k8s.io"),
        "{all}"
    );
    say(&format!(
        "{} port-forward over SPDY, passed through: listening after {} ms",
        ctx.kubectl.git_version,
        forward.ready.as_millis()
    ));
}
