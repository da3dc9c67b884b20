//! The kubelet's path end to end: real kubectl, a fake API server that plays the kubelet's
//! part over CRI, and the bridge in CRI interception mode in front of real containerd 1.6.
//!
//! ```text
//!                 ┌──────────── CRI Exec/Attach/PortForward (as a kubelet) ─────────────┐
//!                 │                                                                      ▼
//! kubectl ──▶ fake API server                 bridge CRI socket ──(forwarded)──▶ containerd.sock
//!    │            │ forwards the upgrade        │ stores (runtime URL, options) under a token,
//!    │            │ to the URL CRI returned     │ answers <advertise>/exec/<bridge token>
//!    │            ▼                             ▼
//!    └────── bridge <advertise path>/exec/<bridge token>  (no query) ── SPDY ──▶ containerd
//! ```
//!
//! Nothing carries stream options in a URL: the callback of `support/apiserver.rs` makes the
//! CRI call a kubelet would make, on the bridge's CRI socket, and returns the streaming URL it
//! gets back unchanged. That URL must be the bridge's (`<advertise>/<kind>/<token>`, no
//! query); the bridge finds containerd's URL and the request's stdin/stdout/stderr/tty under
//! the token. The bridge listens on TCP with the advertised base path, as `serve
//! --cri-listen … --advertise-url http://HOST:PORT/cri-stream` sets it up, and has no
//! standalone upstream it could fall back to.
//!
//! kubectl 1.30+ opens a WebSocket offering only `v5.channel.k8s.io` and silently retries over
//! SPDY when that is refused, so each WebSocket case checks the fake API server's record: one
//! `GET` upgrade answered `101` with `Sec-WebSocket-Protocol: v5.channel.k8s.io`, no second
//! request.
//!
//! Per kubectl 1.30–1.33 (one module each): `exec -- echo hi`; `echo data | exec -i -- cat`
//! (stdin EOF is the v5 CLOSE); `exec -- sh -c 'exit 3'`; `exec -it` on a pseudo-terminal
//! (`stty size` sees the initial size and a resize; a tty session's exit code); `attach -i` to
//! a running `cat`; `port-forward` and one HTTP GET (the WebSocket tunnel from 1.31, SPDY
//! pass-through with the bridge token before). And kubectl forced to SPDY
//! (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`): the SPDY upgrade with a bridge token passes
//! through to containerd's stored URL. Finally the README's `ws-spdy-bridge serve --cri-listen
//! … --runtime-endpoint … --advertise-url …` as a process of its own in front of the same
//! containerd (kubectl 1.33 `exec`, `exec -i`; SIGINT ends it cleanly; no token in its log).
//!
//! One containerd, bridge, CRI proxy and fake API server per test binary. Missing kubectl
//! binaries or containerd skip with a notice unless `WS_SPDY_BRIDGE_REQUIRE_PEERS=1`; binary
//! discovery as in `tests/kubectl.rs` (`support/kubectl_cli.rs`).
//!
//! ```text
//! WS_SPDY_BRIDGE_REQUIRE_PEERS=1 cargo test --test kubectl_cri -- --nocapture
//! ```

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/containerd_peer.rs"]
mod containerd_peer;
#[path = "support/kubectl_cli.rs"]
mod kubectl_cli;

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use http::Uri;
use ws_spdy_bridge::cri::proto::{AttachRequest, ExecRequest, PortForwardRequest};
use ws_spdy_bridge::cri::{CriClient, CriProxy, CriProxyConfig};
use ws_spdy_bridge::server::{Bridge, BridgeConfig};
use ws_spdy_bridge::tokens::{TOKEN_LEN, TokenStore};

use apiserver::{
    ApiServerConfig, BoxError, ContainerSpec, FakeApiServer, Subresource, UpgradeCall,
    UpgradeRecord,
};
use containerd_peer::{BUSYBOX_IMAGE, HTTP_BODY, HTTP_PORT, PeerGuard, REQUIRE_ENV};
use kubectl_cli::{
    ChildGuard, Kubectl, Pty, assert_success, chunks, find_kubectl, http_get, minor, read_all, run,
    set_window_size, wait_for,
};

/// One module of tests per kubectl version that speaks WebSocket v5.
macro_rules! cri_version {
    ($module:ident, $version:literal) => {
        mod $module {
            const V: &str = $version;

            #[test]
            fn exec_echo_hi_prints_hi() {
                super::exec_echo_hi(V, concat!(stringify!($module), "::exec_echo_hi_prints_hi"));
            }

            #[test]
            fn exec_stdin_eof_ends_cat() {
                super::exec_stdin_eof_ends_cat(
                    V,
                    concat!(stringify!($module), "::exec_stdin_eof_ends_cat"),
                );
            }

            #[test]
            fn exec_exit_code_3_reaches_kubectl() {
                super::exec_exit_code_3(
                    V,
                    concat!(stringify!($module), "::exec_exit_code_3_reaches_kubectl"),
                );
            }

            #[test]
            fn exec_tty_window_size_and_resize_arrive() {
                super::exec_tty_resize(
                    V,
                    concat!(
                        stringify!($module),
                        "::exec_tty_window_size_and_resize_arrive"
                    ),
                );
            }

            #[test]
            fn attach_stdin_line_is_echoed() {
                super::attach_stdin_echo(
                    V,
                    concat!(stringify!($module), "::attach_stdin_line_is_echoed"),
                );
            }

            #[test]
            fn port_forward_http_get() {
                super::port_forward_http_get(
                    V,
                    concat!(stringify!($module), "::port_forward_http_get"),
                );
            }
        }
    };
}

/// The test names of the [`cri_version`] modules, as libtest prints them, and extra ones.
macro_rules! cri_test_names {
    ($($module:ident),* ; $($extra:literal),*) => {
        &[
            $(
                concat!(stringify!($module), "::exec_echo_hi_prints_hi"),
                concat!(stringify!($module), "::exec_stdin_eof_ends_cat"),
                concat!(stringify!($module), "::exec_exit_code_3_reaches_kubectl"),
                concat!(stringify!($module), "::exec_tty_window_size_and_resize_arrive"),
                concat!(stringify!($module), "::attach_stdin_line_is_echoed"),
                concat!(stringify!($module), "::port_forward_http_get"),
            )*
            $($extra),*
        ]
    };
}

cri_version!(kubectl_1_30, "1.30");
cri_version!(kubectl_1_31, "1.31");
cri_version!(kubectl_1_32, "1.32");
cri_version!(kubectl_1_33, "1.33");

/// Every test here that uses the peer: the last one to finish tears everything down.
const TESTS: &[&str] = cri_test_names!(
    kubectl_1_30, kubectl_1_31, kubectl_1_32, kubectl_1_33;
    "spdy_fallback::exec_echo_hi_passes_through_with_bridge_token",
    "serve_command::kubectl_exec_through_the_serve_process",
    "crictl_path::exec_and_attach_over_websocket_on_the_cri_url"
);

const V5: &str = "v5.channel.k8s.io";
/// What kubectl 1.31+ offers for port-forward over WebSocket.
const PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The containers of the containerd peer's pod: busybox httpd (exec target) and `cat` with
/// stdin open (attach target).
const WEB: &str = "web";
const CAT: &str = "cat";
/// The advertised URL's path: the bridge's routes live under it.
const BASE_PATH: &str = "/cri-stream";
/// The bridge's standalone upstream. Nothing listens there: in CRI mode every upstream URL
/// comes from a token.
const UNUSED_UPSTREAM: &str = "http://127.0.0.1:9";
/// Bound on one ordinary kubectl run (discovery, pod GET, CRI call, session).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

// ---- output that libtest does not capture ---------------------------------------------------

fn say(msg: &str) {
    let line = format!("[kubectl-cri] {msg}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

// ---- the kubelet's part: CRI on the bridge's socket -----------------------------------------

/// One CRI call the callback made.
#[derive(Clone, Debug)]
struct CriCall {
    pod: String,
    subresource: Subresource,
    /// The URL the bridge returned (the token is single use and spent by the test).
    url: String,
    /// The advertised URL of the bridge asked.
    advertise: String,
    elapsed: Duration,
}

/// Pods whose name starts with this are served by the `serve` process of
/// [`serve_command`], not the in-process bridge.
const SERVE_POD_PREFIX: &str = "serve-";

/// What the upgrade callback needs.
struct Kubelet {
    /// A CRI client on the bridge's socket, not containerd's.
    cri: CriClient,
    sandbox_id: String,
    web_id: String,
    cat_id: String,
    /// `http://127.0.0.1:PORT/cri-stream`.
    advertise: String,
    /// The CRI socket of a `ws-spdy-bridge serve` process and its advertised URL, while a
    /// test runs one: pods named `serve-*` go there.
    serve_process: Mutex<Option<(CriClient, String)>>,
    calls: Arc<Mutex<Vec<CriCall>>>,
}

impl Kubelet {
    /// The CRI call a kubelet makes for `call`, and the URL it gets back, which must be the
    /// bridge's own and carry no options.
    async fn target(&self, call: UpgradeCall) -> Result<String, BoxError> {
        let container_id = match call.container.as_deref() {
            None | Some(WEB) => self.web_id.clone(),
            Some(CAT) => self.cat_id.clone(),
            Some(other) => return Err(format!("the pod has no container {other:?}").into()),
        };
        let (cri, advertise) = if call.pod.starts_with(SERVE_POD_PREFIX) {
            self.serve_process
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or("no serve process runs")?
        } else {
            (self.cri.clone(), self.advertise.clone())
        };
        let t0 = Instant::now();
        let url = match call.subresource {
            Subresource::Exec => {
                cri.exec(ExecRequest {
                    container_id,
                    cmd: call.command.clone(),
                    tty: call.tty,
                    stdin: call.stdin,
                    stdout: call.stdout,
                    stderr: call.stderr,
                })
                .await?
            }
            Subresource::Attach => {
                cri.attach(AttachRequest {
                    container_id,
                    stdin: call.stdin,
                    tty: call.tty,
                    stdout: call.stdout,
                    stderr: call.stderr,
                })
                .await?
            }
            Subresource::PortForward => {
                cri.port_forward(PortForwardRequest {
                    pod_sandbox_id: self.sandbox_id.clone(),
                    port: call.ports.iter().map(|&p| i32::from(p)).collect(),
                })
                .await?
            }
        };
        let elapsed = t0.elapsed();
        check_bridge_url(&url, &advertise, call.subresource)?;
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(CriCall {
                pod: call.pod.clone(),
                subresource: call.subresource,
                url: url.clone(),
                advertise,
                elapsed,
            });
        Ok(url)
    }
}

/// `url` is `<advertise>/<subresource>/<token>`: no query, a token of the bridge's shape.
fn check_bridge_url(url: &str, advertise: &str, sub: Subresource) -> Result<(), String> {
    let parsed: Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    if parsed.query().is_some() || url.contains('?') {
        return Err(format!("the CRI URL carries a query: {url}"));
    }
    let prefix = format!("{advertise}/{sub}/");
    let token = url
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("the CRI URL {url} is not the bridge's ({prefix}…)"))?;
    if token.len() != TOKEN_LEN
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("the CRI URL {url} has no bridge token"));
    }
    Ok(())
}

// ---- the shared environment -----------------------------------------------------------------

struct Env {
    rt: tokio::runtime::Runtime,
    api: FakeApiServer,
    bridge: Mutex<Option<Bridge>>,
    proxy: Mutex<Option<CriProxy>>,
    store: Arc<TokenStore>,
    advertise: String,
    bridge_addr: SocketAddr,
    kubelet: Arc<Kubelet>,
    cri_socket: PathBuf,
    calls: Arc<Mutex<Vec<CriCall>>>,
    /// kubeconfig, HOME, kubectl cache dirs (inside the peer's run directory).
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
                "bridge on {} advertising {}, CRI proxy on {} in front of {}, fake API server on {}; set up in {} ms",
                env.bridge_addr,
                env.advertise,
                env.cri_socket.display(),
                peer.socket.display(),
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
        Some(Err(e)) => panic!("bridge / CRI proxy / fake API server set-up failed: {e}"),
        None => unreachable!(),
    }
}

/// At the peer's teardown, while containerd still runs: the fake API server, the bridge and
/// the CRI proxy stop; a summary of the CRI calls made through the bridge.
fn teardown_env() {
    let Some(Ok(env)) = ENV.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let open: Vec<String> = env
        .api
        .upgrades()
        .iter()
        .filter(|u| !u.ended)
        .map(describe)
        .collect();
    if !open.is_empty() {
        say(&format!(
            "{} upgraded connection(s) still open at teardown: {}",
            open.len(),
            open.join("; ")
        ));
    }
    env.api.shutdown();
    let calls = env.calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut times: Vec<Duration> = calls.iter().map(|c| c.elapsed).collect();
    times.sort();
    if !times.is_empty() {
        say(&format!(
            "{} CRI streaming calls through the bridge: median {:?}, max {:?}; {} bridge token(s) never used",
            times.len(),
            times[times.len() / 2],
            times[times.len() - 1],
            env.store.len()
        ));
    }
    let bridge = env.bridge.lock().unwrap_or_else(|e| e.into_inner()).take();
    let proxy = env.proxy.lock().unwrap_or_else(|e| e.into_inner()).take();
    let t0 = Instant::now();
    let limit = Duration::from_secs(10);
    let stop = async {
        tokio::time::timeout(limit, async {
            if let Some(bridge) = bridge {
                bridge.shutdown().await;
            }
            if let Some(proxy) = proxy {
                proxy.shutdown().await;
            }
        })
        .await
    };
    match env.rt.block_on(stop) {
        Ok(()) => say(&format!(
            "bridge and CRI proxy shut down in {} ms",
            t0.elapsed().as_millis()
        )),
        Err(_) => say(&format!("shutdown did not finish within {limit:?}")),
    }
    if !std::env::var(containerd_peer::KEEP_ENV).is_ok_and(|v| v == "1") {
        let _ = fs::remove_dir_all(&env.dir);
    }
}

impl Env {
    fn start(peer: &PeerGuard) -> Result<Env, BoxError> {
        // Inside the peer's run directory: whatever ends this process, the reaper removes it.
        let dir = peer.dir.join("kubectl-cri");
        fs::create_dir_all(&dir)?;
        let cri_socket = peer.dir.join("bridge-cri.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kubectl-cri-env")
            .enable_all()
            .build()?;
        let runtime_socket = peer.socket.clone();
        let (sandbox_id, web_id, cat_id) = (
            peer.sandbox_id.clone(),
            peer.web_id.clone(),
            peer.cat_id.clone(),
        );
        let calls = Arc::new(Mutex::new(Vec::new()));
        let socket = cri_socket.clone();
        let callback_calls = calls.clone();
        let (api, bridge, proxy, store, advertise, kubelet) = rt.block_on(async move {
            // As `serve --cri-listen … --advertise-url …` wires it: one store shared by the
            // CRI proxy (issues tokens) and the streaming server (takes them); the routes live
            // under the advertised path.
            let store = Arc::new(TokenStore::default());
            let bridge = Bridge::start(BridgeConfig {
                listen: "127.0.0.1:0".parse()?,
                upstream: UNUSED_UPSTREAM.parse()?,
                base_path: BASE_PATH.into(),
                tokens: Some(store.clone()),
                ..BridgeConfig::default()
            })
            .await?;
            let advertise = format!("http://{}{BASE_PATH}", bridge.addr());
            let proxy = ws_spdy_bridge::cri::serve(
                CriProxyConfig::new(&socket, &runtime_socket, advertise.parse()?),
                store.clone(),
            )
            .await?;
            let kubelet = Arc::new(Kubelet {
                cri: CriClient::connect_unix(&socket).await?,
                sandbox_id,
                web_id,
                cat_id,
                advertise: advertise.clone(),
                serve_process: Mutex::new(None),
                calls: callback_calls,
            });
            let config = ApiServerConfig {
                containers: vec![
                    ContainerSpec::new(WEB, false, false),
                    ContainerSpec::new(CAT, true, false),
                ],
                image: BUSYBOX_IMAGE.to_string(),
            };
            let callback_kubelet = kubelet.clone();
            let api = FakeApiServer::start(config, move |call| {
                let kubelet = callback_kubelet.clone();
                async move { kubelet.target(call).await }
            })
            .await?;
            Ok::<_, BoxError>((api, bridge, proxy, store, advertise, kubelet))
        })?;
        let kubeconfig = dir.join("kubeconfig");
        fs::write(&kubeconfig, api.kubeconfig())?;
        Ok(Env {
            rt,
            api,
            bridge_addr: bridge.addr(),
            bridge: Mutex::new(Some(bridge)),
            proxy: Mutex::new(Some(proxy)),
            store,
            advertise,
            kubelet,
            cri_socket,
            calls,
            dir,
            kubeconfig,
            runs: AtomicUsize::new(0),
        })
    }

    /// A kubectl command line: fresh `--cache-dir`, our kubeconfig, a clean environment.
    /// `wrapper` (such as `setsid -c`) runs kubectl.
    fn command(&self, kubectl: &Kubectl, wrapper: &[&str], args: &[&str]) -> Command {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let cache = self.dir.join(format!("cache-{run}"));
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(&kubectl.path);
                cmd
            }
            None => Command::new(&kubectl.path),
        };
        cmd.arg(format!("--cache-dir={}", cache.display()))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("LANG", "C");
        cmd
    }

    /// The CRI calls made for `pod`.
    fn calls_for(&self, pod: &str) -> Vec<CriCall> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| c.pod == pod)
            .cloned()
            .collect()
    }
}

/// Everything a test needs; dropping it ends the test's hold on the shared peer.
struct Ctx {
    env: Arc<Env>,
    kubectl: Kubectl,
    peer: PeerGuard,
}

/// The shared environment and kubectl `version`, or `None` (after a notice) when containerd
/// or the binary is missing and peers are not required.
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
    Some(Ctx { env, kubectl, peer })
}

/// A pod name per test, so its upgrades and CRI calls can be told apart.
fn pod_name(case: &str, version: &str) -> String {
    format!("cri-{case}-{}", version.replace('.', "-"))
}

// ---- assertions on the records --------------------------------------------------------------

fn describe(u: &UpgradeRecord) -> String {
    let response = match &u.response {
        Some(r) => format!(
            "{:?} (Sec-WebSocket-Protocol {:?}, X-Stream-Protocol-Version {:?})",
            r.status_line, r.websocket_protocol, r.stream_protocol
        ),
        None => "no response head".into(),
    };
    format!(
        "{} {} Upgrade={:?} offered ws={:?} spdy={:?} -> target {:?} -> {response}; error={:?}; up {} B, down {} B, ended={}",
        u.method,
        u.call.subresource,
        u.upgrade,
        u.offered_websocket_protocols,
        u.offered_stream_protocols,
        u.target,
        u.error,
        u.bytes_up,
        u.bytes_down,
        u.ended
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

/// Every upgrade of `pod` went to the bridge URL its CRI call returned, one CRI call each,
/// and no URL carried a query.
fn assert_cri_mode(env: &Env, pod: &str, sub: Subresource) -> Vec<CriCall> {
    let ups = env.api.upgrades_for_pod(pod);
    let calls = env.calls_for(pod);
    let all = describe_all(&ups);
    assert_eq!(calls.len(), ups.len(), "one CRI call per upgrade: {all}");
    for (u, c) in ups.iter().zip(&calls) {
        assert_eq!(c.subresource, sub, "{all}");
        let target = u.target.as_deref().unwrap_or_else(|| panic!("{all}"));
        assert_eq!(target, c.url, "forwarded to the URL CRI returned: {all}");
        check_bridge_url(target, &c.advertise, sub).unwrap_or_else(|e| panic!("{e}: {all}"));
    }
    calls
}

/// The upgrade for `pod` went over WebSocket v5 to the bridge URL from CRI and was accepted,
/// and kubectl made no second (SPDY) attempt.
fn assert_websocket_v5(env: &Env, pod: &str, sub: Subresource) -> (UpgradeRecord, CriCall) {
    let ups = env.api.upgrades_for_pod(pod);
    let all = describe_all(&ups);
    assert_eq!(
        ups.len(),
        1,
        "exactly one upgrade expected for {pod} (a second one is kubectl's SPDY fallback): {all}"
    );
    let u = ups.into_iter().next().expect("one upgrade");
    assert_eq!(u.call.subresource, sub, "{all}");
    assert_eq!(u.method, "GET", "{all}");
    assert!(u.is_websocket(), "not a WebSocket upgrade: {all}");
    assert!(
        u.offered_websocket_protocols.iter().any(|p| p == V5),
        "kubectl did not offer {V5}: {all}"
    );
    let response = u.response.as_ref().unwrap_or_else(|| panic!("{all}"));
    assert_eq!(response.status, 101, "{all}");
    assert_eq!(response.websocket_protocol.as_deref(), Some(V5), "{all}");
    let call = assert_cri_mode(env, pod, sub)
        .into_iter()
        .next()
        .expect("one CRI call");
    (u, call)
}

/// Waits (bounded) until every upgraded connection of `pod` has ended in both directions.
/// Returns the milliseconds waited.
fn assert_connections_end(env: &Env, pod: &str) -> u128 {
    let t0 = Instant::now();
    let limit = Duration::from_secs(10);
    loop {
        let ups = env.api.upgrades_for_pod(pod);
        if ups.iter().all(|u| u.ended) {
            return t0.elapsed().as_millis();
        }
        if t0.elapsed() >= limit {
            panic!(
                "a connection stayed open {limit:?} after kubectl was gone: {}",
                describe_all(&ups)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---- the cases ------------------------------------------------------------------------------

/// `kubectl exec POD -- echo hi` prints `hi`.
fn exec_echo_hi(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("echo", version);
    let cmd = ctx.env.command(
        &ctx.kubectl,
        &[],
        &["exec", &pod, "-c", WEB, "--", "echo", "hi"],
    );
    let run = run(cmd, None, RUN_TIMEOUT, "exec echo hi");
    assert_success(&run, "exec echo hi");
    assert_eq!(String::from_utf8_lossy(&run.out), "hi\n", "{}", run.stderr);
    let (u, call) = assert_websocket_v5(&ctx.env, &pod, Subresource::Exec);
    assert_eq!(u.call.command, ["echo", "hi"]);
    assert!(!u.call.stdin && u.call.stdout && u.call.stderr && !u.call.tty);
    say(&format!(
        "{} exec echo hi: {} ms (CRI Exec through the bridge {:?})",
        ctx.kubectl.git_version,
        run.elapsed.as_millis(),
        call.elapsed
    ));
}

/// `echo data | kubectl exec -i POD -- cat` prints `data` and ends: stdin's EOF is the v5
/// CLOSE, which reaches containerd as the end of cat's stdin.
fn exec_stdin_eof_ends_cat(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("cat", version);
    let cmd = ctx.env.command(
        &ctx.kubectl,
        &[],
        &["exec", "-i", &pod, "-c", WEB, "--", "cat"],
    );
    let run = run(cmd, Some(b"data\n".to_vec()), RUN_TIMEOUT, "exec -i cat");
    assert_success(&run, "exec -i cat");
    assert_eq!(
        String::from_utf8_lossy(&run.out),
        "data\n",
        "{}",
        run.stderr
    );
    let (u, _) = assert_websocket_v5(&ctx.env, &pod, Subresource::Exec);
    assert!(u.call.stdin && u.call.stdout && u.call.stderr && !u.call.tty);
    say(&format!(
        "{} exec -i cat (stdin EOF ends it): {} ms",
        ctx.kubectl.git_version,
        run.elapsed.as_millis()
    ));
}

/// `kubectl exec POD -- sh -c 'exit 3'` exits 3.
fn exec_exit_code_3(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("exit3", version);
    let cmd = ctx.env.command(
        &ctx.kubectl,
        &[],
        &["exec", &pod, "-c", WEB, "--", "sh", "-c", "exit 3"],
    );
    let run = run(cmd, None, RUN_TIMEOUT, "exec exit 3");
    assert_eq!(run.status.code(), Some(3), "stderr: {:?}", run.stderr);
    assert!(
        run.stderr.contains("command terminated with exit code 3"),
        "{:?}",
        run.stderr
    );
    assert_eq!(run.out, b"");
    let (u, _) = assert_websocket_v5(&ctx.env, &pod, Subresource::Exec);
    assert_eq!(u.call.command, ["sh", "-c", "exit 3"]);
    say(&format!(
        "{} exec exit 3: {} ms",
        ctx.kubectl.git_version,
        run.elapsed.as_millis()
    ));
}

/// `kubectl exec -it POD -- sh -c '…stty size…'` on a pseudo-terminal: the container's
/// terminal gets the initial window size and a resize, and the tty session's exit code comes
/// back. The tty and stdin options reach containerd only through the bridge token.
fn exec_tty_resize(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("tty", version);
    let pty = Pty::open(37, 113);
    let script = r#"while read -r line; do [ "$line" = quit ] && exit 5; stty size; done"#;
    // setsid -c: kubectl leads a session with the pty as its controlling terminal, so a
    // window-size change signals it.
    let mut cmd = ctx.env.command(
        &ctx.kubectl,
        &["setsid", "-c"],
        &["exec", "-it", &pod, "-c", WEB, "--", "sh", "-c", script],
    );
    cmd.stdin(pty.stdio())
        .stdout(pty.stdio())
        .stderr(pty.stdio());
    let t0 = Instant::now();
    let mut child = ChildGuard(cmd.spawn().expect("start setsid -c kubectl exec -it"));
    // Only kubectl may hold the terminal side, so that its exit ends our reads of the master.
    drop(cmd);
    let Pty { master, terminal } = pty;
    drop(terminal);
    let mut writer = master.try_clone().expect("dup pty master");
    let resizer = master.try_clone().expect("dup pty master");
    let (rx, _reader) = chunks(master);
    let mut seen = Vec::new();

    // The container's terminal is 0x0 until kubectl's first resize message is applied: ask
    // until the answer is right.
    let mut ask_until = |want: &str, seen: &mut Vec<u8>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            writer.write_all(b"\r").expect("write to the pty");
            let round = (Instant::now() + Duration::from_millis(500)).min(deadline);
            if wait_for(&rx, seen, want.as_bytes(), round) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "`stty size` never printed {want:?}; terminal output: {:?}",
                    String::from_utf8_lossy(seen)
                );
            }
        }
    };
    ask_until("37 113", &mut seen);
    let initial_at = t0.elapsed();
    set_window_size(&resizer, 45, 150);
    ask_until("45 150", &mut seen);
    writer.write_all(b"quit\r").expect("write quit");
    let Some(status) = child.wait_timeout(RUN_TIMEOUT) else {
        child.kill();
        panic!(
            "kubectl exec -it did not end after `quit`; terminal output: {:?}",
            String::from_utf8_lossy(&seen)
        );
    };
    drop(writer);
    drop(resizer);
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(chunk) = rx.recv_timeout(drain_deadline.saturating_duration_since(Instant::now()))
    {
        seen.extend_from_slice(&chunk);
    }
    let output = String::from_utf8_lossy(&seen);
    assert_eq!(status.code(), Some(5), "terminal output: {output:?}");
    assert!(
        output.contains("command terminated with exit code 5"),
        "{output:?}"
    );
    let (u, _) = assert_websocket_v5(&ctx.env, &pod, Subresource::Exec);
    assert!(
        u.call.tty && u.call.stdin && u.call.stdout && !u.call.stderr,
        "{u:?}"
    );
    say(&format!(
        "{} exec -it: initial size seen after {} ms, resize seen, whole session {} ms",
        ctx.kubectl.git_version,
        initial_at.as_millis(),
        t0.elapsed().as_millis()
    ));
}

/// `kubectl attach -i POD -c cat`: a line written to kubectl's stdin comes back from the
/// container's `cat`; killing kubectl ends the session through the bridge.
fn attach_stdin_echo(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("attach", version);
    let mut cmd = ctx
        .env
        .command(&ctx.kubectl, &[], &["attach", "-i", &pod, "-c", CAT]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = ChildGuard(cmd.spawn().expect("start kubectl attach"));
    let mut stdin = child.0.stdin.take().expect("stdin pipe");
    let (rx, _reader) = chunks(child.0.stdout.take().expect("stdout pipe"));
    let stderr = child.0.stderr.take().expect("stderr pipe");
    let err = thread::spawn(move || read_all(stderr));
    // Other tests attach to the same cat meanwhile: a line of our own.
    let line = format!(
        "attach through the bridge's CRI token, kubectl {version}, pid {}\n",
        child.0.id()
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut echoed = false;
    // containerd copies stdin a moment before it adds the new attach's stdout to cat's
    // listeners: resend until the echo shows.
    while !echoed && Instant::now() < deadline {
        stdin
            .write_all(line.as_bytes())
            .expect("write to kubectl's stdin");
        let round = (Instant::now() + Duration::from_secs(2)).min(deadline);
        echoed = wait_for(&rx, &mut seen, line.as_bytes(), round);
        if !echoed && child.0.try_wait().ok().flatten().is_some() {
            break;
        }
    }
    let echo_ms = t0.elapsed().as_millis();
    child.kill();
    drop(stdin);
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    assert!(
        echoed,
        "the line never came back; stdout {:?}; stderr {stderr:?}",
        String::from_utf8_lossy(&seen)
    );
    let (u, _) = assert_websocket_v5(&ctx.env, &pod, Subresource::Attach);
    assert!(
        u.call.stdin && u.call.stdout && u.call.stderr && !u.call.tty,
        "{u:?}"
    );
    let closed_ms = assert_connections_end(&ctx.env, &pod);
    say(&format!(
        "{} attach -i: echo after {echo_ms} ms; connection closed {closed_ms} ms after kubectl was killed",
        ctx.kubectl.git_version,
    ));
}

/// `kubectl port-forward POD :8080` and one HTTP GET through it reach busybox httpd in the
/// pod. kubectl 1.31+ uses the WebSocket tunnel, which needs nothing from the token but
/// containerd's URL; 1.30 uses SPDY, passed through to that URL.
fn port_forward_http_get(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    // httpd starts with its container, possibly moments before this test; a refused forward
    // makes kubectl give up, so a refused first GET is retried with a new kubectl.
    let mut attempt = 0;
    let (pod, pf) = loop {
        let pod = format!("{}-{attempt}", pod_name("pf", version));
        let pf = port_forward_once(&ctx, &pod);
        if pf.response.is_empty() && attempt < 4 {
            say(&format!(
                "{} port-forward attempt {attempt} got no response (stderr {:?}); retrying",
                ctx.kubectl.git_version, pf.stderr
            ));
            attempt += 1;
            thread::sleep(Duration::from_millis(500));
            continue;
        }
        break (pod, pf);
    };
    let text = String::from_utf8_lossy(&pf.response);
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with("HTTP/1.") && l.contains(" 200 ")),
        "response {text:?}; kubectl stderr {:?}",
        pf.stderr
    );
    assert!(text.ends_with(HTTP_BODY), "{text:?}");

    let ups = ctx.env.api.upgrades_for_pod(&pod);
    let all = describe_all(&ups);
    assert_eq!(ups.len(), 1, "one upgrade expected, no fallback: {all}");
    let u = &ups[0];
    assert_eq!(u.status(), Some(101), "{all}");
    let calls = assert_cri_mode(&ctx.env, &pod, Subresource::PortForward);
    let transport = if minor(version) >= 31 {
        assert!(u.is_websocket() && u.method == "GET", "{all}");
        assert_eq!(
            u.response
                .as_ref()
                .and_then(|r| r.websocket_protocol.as_deref()),
            Some(PORT_FORWARD_TUNNEL),
            "{all}"
        );
        "WebSocket tunnel"
    } else {
        assert!(u.is_spdy() && u.method == "POST", "{all}");
        assert_eq!(
            u.response
                .as_ref()
                .and_then(|r| r.stream_protocol.as_deref()),
            Some("portforward.k8s.io"),
            "{all}"
        );
        "SPDY pass-through"
    };
    let closed_ms = assert_connections_end(&ctx.env, &pod);
    say(&format!(
        "{} port-forward over {transport}: CRI PortForward {:?}, listening after {} ms, GET {} ms, connection closed {closed_ms} ms after kubectl was killed",
        ctx.kubectl.git_version, calls[0].elapsed, pf.ready_ms, pf.get_ms,
    ));
}

struct PortForward {
    response: Vec<u8>,
    stderr: String,
    ready_ms: u128,
    get_ms: u128,
}

/// Runs `kubectl port-forward POD :8080`, does one GET through it, kills kubectl.
fn port_forward_once(ctx: &Ctx, pod: &str) -> PortForward {
    let mut cmd = ctx.env.command(
        &ctx.kubectl,
        &[],
        &[
            "port-forward",
            "--address",
            "127.0.0.1",
            pod,
            &format!(":{HTTP_PORT}"),
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = ChildGuard(cmd.spawn().expect("start kubectl port-forward"));
    let (rx, _reader) = chunks(child.0.stdout.take().expect("stdout pipe"));
    let stderr = child.0.stderr.take().expect("stderr pipe");
    let err = thread::spawn(move || read_all(stderr));
    let mut seen = Vec::new();
    // "Forwarding from 127.0.0.1:PORT -> 8080" once kubectl listens.
    let listening = wait_for(
        &rx,
        &mut seen,
        format!(" -> {HTTP_PORT}").as_bytes(),
        Instant::now() + RUN_TIMEOUT,
    );
    let stdout_text = String::from_utf8_lossy(&seen).into_owned();
    let local_port = stdout_text.lines().find_map(|l| {
        l.strip_prefix("Forwarding from 127.0.0.1:")?
            .split_whitespace()
            .next()?
            .parse::<u16>()
            .ok()
    });
    let Some(local_port) = local_port.filter(|_| listening) else {
        child.kill();
        let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
        panic!("kubectl port-forward never listened; stdout {stdout_text:?}; stderr {stderr:?}");
    };
    let ready_ms = t0.elapsed().as_millis();
    let t1 = Instant::now();
    let response = http_get(local_port, RUN_TIMEOUT).unwrap_or_default();
    let get_ms = t1.elapsed().as_millis();
    child.kill();
    PortForward {
        response,
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        ready_ms,
        get_ms,
    }
}

/// kubectl forced to SPDY, as after a refused WebSocket upgrade: its `POST` with a bridge
/// token passes through to containerd's stored URL, which picks `v4.channel.k8s.io`.
mod spdy_fallback {
    use super::*;

    #[test]
    fn exec_echo_hi_passes_through_with_bridge_token() {
        let version = "1.33";
        let Some(ctx) = setup(
            "spdy_fallback::exec_echo_hi_passes_through_with_bridge_token",
            version,
        ) else {
            return;
        };
        let pod = pod_name("spdy", version);
        let mut cmd = ctx.env.command(
            &ctx.kubectl,
            &[],
            &["exec", &pod, "-c", WEB, "--", "echo", "hi"],
        );
        cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
        let run = run(cmd, None, RUN_TIMEOUT, "exec echo hi (SPDY)");
        assert_success(&run, "exec echo hi (SPDY)");
        assert_eq!(String::from_utf8_lossy(&run.out), "hi\n", "{}", run.stderr);
        let ups = ctx.env.api.upgrades_for_pod(&pod);
        let all = describe_all(&ups);
        assert_eq!(ups.len(), 1, "{all}");
        let u = &ups[0];
        assert!(u.method == "POST" && u.is_spdy(), "{all}");
        let response = u.response.as_ref().unwrap_or_else(|| panic!("{all}"));
        assert_eq!(response.status, 101, "{all}");
        assert_eq!(
            response.stream_protocol.as_deref(),
            Some("v4.channel.k8s.io"),
            "{all}"
        );
        assert_cri_mode(&ctx.env, &pod, Subresource::Exec);
        say(&format!(
            "{} exec echo hi over SPDY with a bridge token: {} ms",
            ctx.kubectl.git_version,
            run.elapsed.as_millis()
        ));
    }
}

/// The `serve` command of the README as a process of its own, in front of the same containerd:
/// `ws-spdy-bridge serve --listen … --cri-listen unix:… --runtime-endpoint unix:…
/// --advertise-url http://…` (only the paths and the port differ). kubectl's upgrades for
/// `serve-*` pods go through CRI calls on that process's socket. SIGINT stops it cleanly and
/// removes its socket; its log holds no token in full.
mod serve_command {
    use super::*;

    /// Stops the process with SIGINT when dropped (SIGKILL if it does not end).
    struct Serve {
        child: ChildGuard,
        socket: PathBuf,
        log: PathBuf,
        advertise: String,
        /// Keeps reading stdout, so a late line never meets a closed pipe.
        _stdout: std::sync::mpsc::Receiver<Vec<u8>>,
    }

    impl Serve {
        fn start(ctx: &Ctx) -> Serve {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let socket = ctx.peer.dir.join("serve-cri.sock");
            let log = ctx.env.dir.join("serve.log");
            let advertise = format!("http://127.0.0.1:{port}");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-spdy-bridge"));
            cmd.arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--cri-listen")
                .arg(format!("unix:{}", socket.display()))
                .arg("--runtime-endpoint")
                .arg(format!("unix:{}", ctx.peer.socket.display()))
                .arg("--advertise-url")
                .arg(&advertise)
                // The admin listener's default port may be taken by another bridge here.
                .arg("--metrics-listen")
                .arg("127.0.0.1:0")
                .env_clear()
                .env("RUST_LOG", "ws_spdy_bridge=trace")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(fs::File::create(&log).expect("serve log file"));
            let mut child = ChildGuard(cmd.spawn().expect("start ws-spdy-bridge serve"));
            let (rx, _reader) = chunks(child.0.stdout.take().expect("stdout pipe"));
            let mut seen = Vec::new();
            let ready = wait_for(
                &rx,
                &mut seen,
                b"point the kubelet",
                Instant::now() + Duration::from_secs(20),
            );
            assert!(
                ready,
                "serve did not come up; stdout {:?}; log {:?}",
                String::from_utf8_lossy(&seen),
                fs::read_to_string(&log).unwrap_or_default()
            );
            Serve {
                child,
                socket,
                log,
                advertise,
                _stdout: rx,
            }
        }

        /// SIGINT, then the exit status (bounded).
        fn stop(&mut self) -> Option<std::process::ExitStatus> {
            let pid = rustix::process::Pid::from_child(&self.child.0);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            self.child.wait_timeout(Duration::from_secs(10))
        }
    }

    impl Drop for Serve {
        fn drop(&mut self) {
            if let Ok(None) = self.child.0.try_wait() {
                let _ = self.stop();
            }
        }
    }

    #[test]
    fn kubectl_exec_through_the_serve_process() {
        let version = "1.33";
        let Some(ctx) = setup(
            "serve_command::kubectl_exec_through_the_serve_process",
            version,
        ) else {
            return;
        };
        let t0 = Instant::now();
        let mut serve = Serve::start(&ctx);
        let up_ms = t0.elapsed().as_millis();
        let socket = serve.socket.clone();
        // The client's connection task lives on the environment's runtime, like the
        // callback that uses it.
        let cri = ctx
            .env
            .rt
            .block_on(async move { CriClient::connect_unix(&socket).await })
            .expect("connect to serve's CRI socket");
        *ctx.env
            .kubelet
            .serve_process
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((cri, serve.advertise.clone()));

        let echo_pod = format!("{SERVE_POD_PREFIX}{}", pod_name("echo", version));
        let cmd = ctx.env.command(
            &ctx.kubectl,
            &[],
            &["exec", &echo_pod, "-c", WEB, "--", "echo", "hi"],
        );
        let echo = run(cmd, None, RUN_TIMEOUT, "exec echo hi via serve");
        assert_success(&echo, "exec echo hi via serve");
        assert_eq!(
            String::from_utf8_lossy(&echo.out),
            "hi\n",
            "{}",
            echo.stderr
        );
        let (_, echo_call) = assert_websocket_v5(&ctx.env, &echo_pod, Subresource::Exec);

        let cat_pod = format!("{SERVE_POD_PREFIX}{}", pod_name("cat", version));
        let cmd = ctx.env.command(
            &ctx.kubectl,
            &[],
            &["exec", "-i", &cat_pod, "-c", WEB, "--", "cat"],
        );
        let cat = run(
            cmd,
            Some(b"data\n".to_vec()),
            RUN_TIMEOUT,
            "exec -i cat via serve",
        );
        assert_success(&cat, "exec -i cat via serve");
        assert_eq!(
            String::from_utf8_lossy(&cat.out),
            "data\n",
            "{}",
            cat.stderr
        );
        let (_, cat_call) = assert_websocket_v5(&ctx.env, &cat_pod, Subresource::Exec);

        ctx.env
            .kubelet
            .serve_process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let t1 = Instant::now();
        let status = serve.stop();
        let stop_ms = t1.elapsed().as_millis();
        let log = fs::read_to_string(&serve.log).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "serve did not exit 0 after SIGINT: {status:?}; log:\n{log}"
        );
        assert!(
            !serve.socket.exists(),
            "serve left its CRI socket behind; log:\n{log}"
        );
        assert!(log.contains("issued a bridge streaming URL"), "{log}");
        for call in [&echo_call, &cat_call] {
            let token = call.url.rsplit('/').next().expect("token");
            assert!(!log.contains(token), "a token in serve's log:\n{log}");
        }
        say(&format!(
            "{} through `ws-spdy-bridge serve --cri-listen …`: up in {up_ms} ms, exec echo hi {} ms (CRI Exec {:?}), exec -i cat {} ms, SIGINT to exit {stop_ms} ms",
            ctx.kubectl.git_version,
            echo.elapsed.as_millis(),
            echo_call.elapsed,
            cat.elapsed.as_millis(),
        ));
    }
}

/// What `crictl exec --transport websocket` does, without crictl: a CRI call on the bridge's
/// socket, then a WebSocket v5 client straight to the URL it returned (http → ws, nothing
/// added). The same client on containerd's own URL fails: containerd 1.6 has no v5
/// (containerd#11136).
mod crictl_path {
    use super::*;
    use ws_spdy_bridge::channel::outcome::Outcome;
    use ws_spdy_bridge::wsclient;

    #[test]
    fn exec_and_attach_over_websocket_on_the_cri_url() {
        let test = "crictl_path::exec_and_attach_over_websocket_on_the_cri_url";
        let Some(peer) = containerd_peer::acquire(test, TESTS) else {
            return;
        };
        let env = shared_env(&peer);
        let kubelet = env.kubelet.clone();
        let (web_id, cat_id) = (peer.web_id.clone(), peer.cat_id.clone());
        let containerd_socket = peer.socket.clone();
        env.rt.block_on(async move {
            let ws_url = |url: &str| url.replacen("http://", "ws://", 1);

            // Without the bridge: containerd's own URL does not give a v5 session.
            let direct = CriClient::connect_unix(&containerd_socket)
                .await
                .expect("containerd's CRI socket")
                .exec(ExecRequest {
                    container_id: web_id.clone(),
                    cmd: vec!["true".into()],
                    stdout: true,
                    ..Default::default()
                })
                .await
                .expect("CRI Exec on containerd's socket");
            let refused = wsclient::run(
                &ws_url(&direct),
                None::<&[u8]>,
                tokio::io::sink(),
                tokio::io::sink(),
            )
            .await
            .expect_err("containerd 1.6 serves no v5.channel.k8s.io");
            say(&format!(
                "containerd's own URL over WebSocket v5, without the bridge: {refused}"
            ));

            // exec -i: stdin, its CLOSE, stdout, stderr and the exit code.
            let t0 = Instant::now();
            let url = kubelet
                .cri
                .exec(ExecRequest {
                    container_id: web_id,
                    cmd: ["sh", "-c", "cat; echo oops >&2; exit 7"]
                        .map(String::from)
                        .to_vec(),
                    tty: false,
                    stdin: true,
                    stdout: true,
                    stderr: true,
                })
                .await
                .expect("CRI Exec on the bridge's socket");
            let cri_ms = t0.elapsed();
            check_bridge_url(&url, &kubelet.advertise, Subresource::Exec)
                .unwrap_or_else(|e| panic!("{e}"));
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let t1 = Instant::now();
            let outcome = tokio::time::timeout(
                RUN_TIMEOUT,
                wsclient::run(
                    &ws_url(&url),
                    Some(&b"from stdin\n"[..]),
                    &mut out,
                    &mut err,
                ),
            )
            .await
            .expect("exec session ends")
            .expect("WebSocket v5 session on the CRI URL");
            assert_eq!(out, b"from stdin\n");
            assert_eq!(err, b"oops\n");
            assert!(
                matches!(outcome, Outcome::ExitCode { code: 7, .. }),
                "{outcome:?}"
            );
            let session = t1.elapsed();

            // The same URL again: the bridge token is spent.
            let again = wsclient::run(
                &ws_url(&url),
                None::<&[u8]>,
                tokio::io::sink(),
                tokio::io::sink(),
            )
            .await;
            let why = again.expect_err("a spent token is refused").to_string();
            assert!(why.contains("404"), "{why}");

            // attach: a line to cat comes back.
            let url = kubelet
                .cri
                .attach(AttachRequest {
                    container_id: cat_id,
                    stdin: true,
                    tty: false,
                    stdout: true,
                    stderr: false,
                })
                .await
                .expect("CRI Attach on the bridge's socket");
            check_bridge_url(&url, &kubelet.advertise, Subresource::Attach)
                .unwrap_or_else(|e| panic!("{e}"));
            let line = format!("crictl-style attach, pid {}\n", std::process::id());
            let (input, mut feed) = tokio::io::duplex(1024);
            let (echo_tx, mut echo_rx) = tokio::io::duplex(64 * 1024);
            let attach_url = ws_url(&url);
            let attach = tokio::spawn(async move {
                wsclient::run(&attach_url, Some(input), echo_tx, tokio::io::sink()).await
            });
            let mut seen = Vec::new();
            let echoed = tokio::time::timeout(Duration::from_secs(20), async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                // containerd starts copying stdin a moment before the new attach's stdout
                // joins cat's listeners: resend until the echo shows.
                loop {
                    feed.write_all(line.as_bytes()).await.expect("stdin");
                    let round = tokio::time::sleep(Duration::from_secs(1));
                    tokio::pin!(round);
                    loop {
                        tokio::select! {
                            n = echo_rx.read(&mut buf) => {
                                let n = n.expect("stdout");
                                assert!(n > 0, "attach ended early: {:?}", String::from_utf8_lossy(&seen));
                                seen.extend_from_slice(&buf[..n]);
                                if seen.windows(line.len()).any(|w| w == line.as_bytes()) {
                                    return;
                                }
                            }
                            _ = &mut round => break,
                        }
                    }
                }
            })
            .await;
            attach.abort();
            assert!(
                echoed.is_ok(),
                "the line never came back: {:?}",
                String::from_utf8_lossy(&seen)
            );
            say(&format!(
                "crictl-style exec over WebSocket on the CRI URL: CRI Exec {cri_ms:?}, session {} ms; attach echo ok",
                session.as_millis()
            ));
        });
    }
}

/// The URL check the callback applies, without containerd.
#[test]
fn bridge_urls_are_checked_for_shape_and_query() {
    let adv = "http://127.0.0.1:8765/cri-stream";
    let token = "A".repeat(TOKEN_LEN);
    assert!(check_bridge_url(&format!("{adv}/exec/{token}"), adv, Subresource::Exec).is_ok());
    assert!(
        check_bridge_url(
            &format!("{adv}/portforward/{token}"),
            adv,
            Subresource::PortForward
        )
        .is_ok()
    );
    for bad in [
        format!("{adv}/exec/{token}?stdin=true"),
        format!("{adv}/exec/{token}?"),
        format!("{adv}/attach/{token}"),
        format!("http://127.0.0.1:41235/exec/{token}"),
        format!("{adv}/exec/short"),
        format!("{adv}/exec/{}", "/".repeat(TOKEN_LEN)),
    ] {
        assert!(
            check_bridge_url(&bad, adv, Subresource::Exec).is_err(),
            "{bad}"
        );
    }
}
