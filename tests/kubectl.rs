//! Real kubectl through the bridge against real containerd 1.6.
//!
//! ```text
//! kubectl ──▶ fake API server ──(CRI Exec/Attach)──▶ containerd        (options → token)
//!    │              │ forwards the upgrade byte for byte to
//!    │              ▼
//!    └────── bridge /exec/TOKEN?stdin=..&stdout=..&stderr=..&tty=.. ── SPDY ──▶ containerd
//! ```
//!
//! kubectl only talks to API-server paths, so `support/apiserver.rs` plays the API server: it
//! answers discovery and the pod GET, and for each upgrade request asks the callback here for a
//! target. The callback makes the CRI call the kubelet would make (same container, command and
//! stdin/stdout/stderr/tty) and returns the bridge's URL for containerd's token, with the
//! options as query parameters (the bridge's standalone mode, design.md).
//!
//! kubectl 1.30+ opens a WebSocket offering only `v5.channel.k8s.io` and, if that upgrade is
//! refused, silently retries over SPDY (test-peers.md). So every WebSocket case checks the fake
//! API server's record of the upgrade: one `GET` with `Upgrade: websocket` offering v5, answered
//! `101` with `Sec-WebSocket-Protocol: v5.channel.k8s.io`, and no second (SPDY) request. Each
//! kubectl run uses its own pod name, which is how its upgrades are found in the record.
//!
//! Per kubectl 1.30–1.33 (one module each): `exec -- echo hi`; `exec -i -- cat` ended by stdin
//! EOF (the v5 CLOSE); exit code 3; `exec -it` on a pseudo-terminal (initial window size and a
//! resize reach the container, exit code of a tty session); `attach -i` to a running `cat`;
//! 100 MB of stdout byte-exact (with a SPDY pass-through baseline); all 256 byte values through
//! stdin and stdout; port-forward (the WebSocket tunnel from 1.31 on). kubectl 1.27 (SPDY only):
//! exec and port-forward pass through the bridge untouched.
//!
//! One containerd, one bridge, one fake API server per test binary (shared by all tests, on a
//! runtime of their own; the bridge is shut down before containerd at the end). Missing kubectl
//! binaries or containerd skip with a notice unless `WS_SPDY_BRIDGE_REQUIRE_PEERS=1`. The
//! `kubectl.1.NN` binaries are looked for beside the `kubectl` on `PATH` (after resolving
//! symlinks), then in every `PATH` folder; `WS_SPDY_BRIDGE_KUBECTL_DIR` names the only folder
//! to use instead. Every kubectl run gets a fresh `--cache-dir`, a generated kubeconfig
//! (`http://127.0.0.1:PORT`, no credentials), a clean environment and a time limit.
//!
//! ```text
//! WS_SPDY_BRIDGE_REQUIRE_PEERS=1 cargo test --test kubectl -- --nocapture
//! ```

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/containerd_peer.rs"]
mod containerd_peer;
#[path = "support/kubectl_cli.rs"]
mod kubectl_cli;

use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use http::Uri;
use sha2::{Digest, Sha256};
use ws_spdy_bridge::cri::CriClient;
use ws_spdy_bridge::cri::proto::{AttachRequest, ExecRequest, PortForwardRequest};
use ws_spdy_bridge::server::{Bridge, BridgeConfig};

use apiserver::{
    ApiServerConfig, BoxError, ContainerSpec, FakeApiServer, Subresource, UpgradeCall,
    UpgradeRecord,
};
use containerd_peer::{BUSYBOX_IMAGE, HTTP_BODY, HTTP_PORT, PeerGuard, REQUIRE_ENV};
use kubectl_cli::{
    ChildGuard, Kubectl, Pty, assert_success, chunks, find_kubectl, read_all, run, run_with,
    set_window_size, wait_for,
};

/// kubectl versions that speak WebSocket (v5) for exec and attach.
macro_rules! websocket_version {
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
            fn exec_stdout_100mb_byte_exact() {
                super::exec_stdout_100mb(
                    V,
                    concat!(stringify!($module), "::exec_stdout_100mb_byte_exact"),
                );
            }

            #[test]
            fn exec_all_byte_values_round_trip() {
                super::exec_all_byte_values(
                    V,
                    concat!(stringify!($module), "::exec_all_byte_values_round_trip"),
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

/// The test names of one [`websocket_version`] module, as libtest prints them.
macro_rules! websocket_test_names {
    ($($module:ident),* ; $($extra:literal),*) => {
        &[
            $(
                concat!(stringify!($module), "::exec_echo_hi_prints_hi"),
                concat!(stringify!($module), "::exec_stdin_eof_ends_cat"),
                concat!(stringify!($module), "::exec_exit_code_3_reaches_kubectl"),
                concat!(stringify!($module), "::exec_tty_window_size_and_resize_arrive"),
                concat!(stringify!($module), "::attach_stdin_line_is_echoed"),
                concat!(stringify!($module), "::exec_stdout_100mb_byte_exact"),
                concat!(stringify!($module), "::exec_all_byte_values_round_trip"),
                concat!(stringify!($module), "::port_forward_http_get"),
            )*
            $($extra),*
        ]
    };
}

websocket_version!(kubectl_1_30, "1.30");
websocket_version!(kubectl_1_31, "1.31");
websocket_version!(kubectl_1_32, "1.32");
websocket_version!(kubectl_1_33, "1.33");

/// Every test here that uses the peer: the last one to finish tears everything down.
const TESTS: &[&str] = websocket_test_names!(
    kubectl_1_30, kubectl_1_31, kubectl_1_32, kubectl_1_33;
    "kubectl_1_27_spdy::exec_echo_hi_passes_through",
    "kubectl_1_27_spdy::port_forward_http_get"
);

const V5: &str = "v5.channel.k8s.io";
/// What kubectl 1.31+ offers for port-forward over WebSocket (protocol.md §7.2).
const PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The container kubectl execs in (busybox httpd) and the one it attaches to (`cat`, stdin
/// open), as in the containerd peer's pod.
const WEB: &str = "web";
const CAT: &str = "cat";

/// Bound on one ordinary kubectl run (discovery, pod GET, session).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the 100 MB run.
const BIG_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of the 100 MB stdout case.
const BIG_SIZE: u64 = 100_000_000;
/// The line `yes` repeats in the container for the 100 MB case (63 bytes with the newline, so
/// the pattern never lines up with power-of-two buffer sizes).
const BIG_LINE: &str = "ws-spdy-bridge-kubectl-stdout-0123456789-abcdefghijklmnopqrstuv";

// ---- output that libtest does not capture ---------------------------------------------------

fn say(msg: &str) {
    let line = format!("[kubectl] {msg}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

// ---- the kubectl binaries -------------------------------------------------------------------

// ---- the shared environment: bridge + fake API server ---------------------------------------

/// What the upgrade callback needs: the CRI client and the pod's ids, and the bridge.
struct Targets {
    cri: CriClient,
    sandbox_id: String,
    web_id: String,
    cat_id: String,
    bridge: SocketAddr,
}

impl Targets {
    /// The CRI call the kubelet would make for `call`, and the bridge URL for its token.
    async fn target(&self, call: UpgradeCall) -> Result<String, BoxError> {
        let container_id = match call.container.as_deref() {
            None | Some(WEB) => self.web_id.clone(),
            Some(CAT) => self.cat_id.clone(),
            Some(other) => return Err(format!("the pod has no container {other:?}").into()),
        };
        let runtime_url = match call.subresource {
            Subresource::Exec => {
                self.cri
                    .exec(ExecRequest {
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
                self.cri
                    .attach(AttachRequest {
                        container_id,
                        stdin: call.stdin,
                        tty: call.tty,
                        stdout: call.stdout,
                        stderr: call.stderr,
                    })
                    .await?
            }
            Subresource::PortForward => {
                self.cri
                    .port_forward(PortForwardRequest {
                        pod_sandbox_id: self.sandbox_id.clone(),
                        port: call.ports.iter().map(|&p| i32::from(p)).collect(),
                    })
                    .await?
            }
        };
        let uri: Uri = runtime_url.parse()?;
        let query = match call.subresource {
            Subresource::Exec | Subresource::Attach => format!(
                "stdin={}&stdout={}&stderr={}&tty={}",
                call.stdin, call.stdout, call.stderr, call.tty
            ),
            // kubectl names the ports in the stream headers, not in the URL (`ports=` comes
            // from other clients); the legacy WebSocket port-forward reads `port=`.
            Subresource::PortForward => call
                .ports
                .iter()
                .map(|p| format!("port={p}"))
                .collect::<Vec<_>>()
                .join("&"),
        };
        let mut url = format!("http://{}{}", self.bridge, uri.path());
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        Ok(url)
    }
}

struct Env {
    rt: tokio::runtime::Runtime,
    api: FakeApiServer,
    bridge: Mutex<Option<Bridge>>,
    bridge_addr: SocketAddr,
    containerd_stream: SocketAddr,
    /// Temporary directory: kubeconfig, HOME, kubectl cache dirs (under the peer's run
    /// directory).
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
                "bridge on {} (upstream: containerd's streaming server {}), fake API server on {}; set up in {} ms",
                env.bridge_addr,
                env.containerd_stream,
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

/// Runs at the containerd peer's teardown, after the last test: the bridge must shut down
/// cleanly while containerd still runs.
fn teardown_env() {
    let Some(Ok(env)) = ENV.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let unfinished: Vec<UpgradeRecord> = env
        .api
        .upgrades()
        .into_iter()
        .filter(|u| !u.ended)
        .collect();
    if !unfinished.is_empty() {
        say(&format!(
            "{} upgraded connection(s) still open at teardown: {}",
            unfinished.len(),
            unfinished
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let bridge = env.bridge.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(bridge) = bridge {
        let t0 = Instant::now();
        let limit = Duration::from_secs(10);
        // The timer must be created inside the runtime.
        let shutdown = async { tokio::time::timeout(limit, bridge.shutdown()).await };
        match env.rt.block_on(shutdown) {
            Ok(_) => say(&format!(
                "bridge shut down in {} ms",
                t0.elapsed().as_millis()
            )),
            Err(_) => say(&format!("bridge shutdown did not finish within {limit:?}")),
        }
    }
    env.api.shutdown();
    if !std::env::var(containerd_peer::KEEP_ENV).is_ok_and(|v| v == "1") {
        let _ = fs::remove_dir_all(&env.dir);
    }
}

impl Env {
    fn start(peer: &PeerGuard) -> Result<Env, BoxError> {
        // Inside the peer's run directory, so whatever ends this process, the peer's reaper
        // removes it too.
        let dir = peer.dir.join("kubectl");
        fs::create_dir_all(&dir)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kubectl-env")
            .enable_all()
            .build()?;
        let socket = peer.socket.clone();
        let (sandbox_id, web_id, cat_id) = (
            peer.sandbox_id.clone(),
            peer.web_id.clone(),
            peer.cat_id.clone(),
        );
        let (api, bridge, bridge_addr, containerd_stream) = rt.block_on(async move {
            let cri = CriClient::connect_unix(&socket).await?;
            // containerd's streaming server listens on a random port: read it from an Exec URL
            // (the token is never used and expires).
            let probe = cri
                .exec(ExecRequest {
                    container_id: web_id.clone(),
                    cmd: vec!["true".into()],
                    stdout: true,
                    ..Default::default()
                })
                .await?;
            let probe: Uri = probe.parse()?;
            let containerd_stream: SocketAddr = probe
                .authority()
                .ok_or("containerd's Exec URL has no authority")?
                .as_str()
                .parse()?;
            let bridge = Bridge::start(BridgeConfig {
                listen: "127.0.0.1:0".parse()?,
                upstream: format!("http://{containerd_stream}").parse()?,
                ..BridgeConfig::default()
            })
            .await?;
            let bridge_addr = bridge.addr();
            let targets = Arc::new(Targets {
                cri,
                sandbox_id,
                web_id,
                cat_id,
                bridge: bridge_addr,
            });
            let config = ApiServerConfig {
                containers: vec![
                    ContainerSpec::new(WEB, false, false),
                    ContainerSpec::new(CAT, true, false),
                ],
                image: BUSYBOX_IMAGE.to_string(),
            };
            let api = FakeApiServer::start(config, move |call| {
                let targets = targets.clone();
                async move { targets.target(call).await }
            })
            .await?;
            Ok::<_, BoxError>((api, bridge, bridge_addr, containerd_stream))
        })?;
        let kubeconfig = dir.join("kubeconfig");
        fs::write(&kubeconfig, api.kubeconfig())?;
        Ok(Env {
            rt,
            api,
            bridge: Mutex::new(Some(bridge)),
            bridge_addr,
            containerd_stream,
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
}

/// Everything a test needs; dropping it ends the test's hold on the shared peer.
struct Ctx {
    env: Arc<Env>,
    kubectl: Kubectl,
    _peer: PeerGuard,
}

/// The shared environment and the kubectl binary for `version`, or `None` (after a notice) when
/// containerd or the binary is missing and peers are not required.
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

/// A pod name of its own for each test, so its upgrades can be told apart.
fn pod_name(case: &str, version: &str) -> String {
    format!("{case}-{}", version.replace('.', "-"))
}

// ---- running kubectl ------------------------------------------------------------------------

// ---- assertions on the fake API server's record ---------------------------------------------

fn describe(u: &UpgradeRecord) -> String {
    let response = match &u.response {
        Some(r) => format!(
            "{:?} (Sec-WebSocket-Protocol {:?}, X-Stream-Protocol-Version {:?})",
            r.status_line, r.websocket_protocol, r.stream_protocol
        ),
        None => "no response head".into(),
    };
    format!(
        "{} {} {} Upgrade={:?} offered ws={:?} spdy={:?} -> {response}; error={:?}; up {} B, down {} B, ended={}",
        u.method,
        u.call.subresource,
        u.path,
        u.upgrade,
        u.offered_websocket_protocols,
        u.offered_stream_protocols,
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

/// The upgrade for `pod` went over WebSocket v5, was accepted by the bridge, and kubectl made no
/// second (SPDY) attempt.
fn assert_websocket_v5(env: &Env, pod: &str, subresource: Subresource) -> UpgradeRecord {
    let ups = env.api.upgrades_for_pod(pod);
    let all = describe_all(&ups);
    assert_eq!(
        ups.len(),
        1,
        "exactly one upgrade request expected for {pod} (a second one is kubectl's SPDY fallback): {all}"
    );
    assert!(
        !ups.iter().any(|u| u.method == "POST" || u.is_spdy()),
        "kubectl fell back to SPDY: {all}"
    );
    let u = ups.into_iter().next().expect("one upgrade");
    assert_eq!(u.call.subresource, subresource, "{all}");
    assert_eq!(u.method, "GET", "{all}");
    assert!(u.is_websocket(), "not a WebSocket upgrade: {all}");
    assert!(
        u.offered_websocket_protocols.iter().any(|p| p == V5),
        "kubectl did not offer {V5}: {all}"
    );
    let response = u.response.as_ref().unwrap_or_else(|| panic!("{all}"));
    assert_eq!(response.status, 101, "{all}");
    assert_eq!(response.websocket_protocol.as_deref(), Some(V5), "{all}");
    u
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---- the cases ------------------------------------------------------------------------------

/// `kubectl exec POD -- echo hi` prints `hi` over WebSocket v5.
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
    let u = assert_websocket_v5(&ctx.env, &pod, Subresource::Exec);
    assert_eq!(u.call.command, ["echo", "hi"]);
    assert!(!u.call.stdin && u.call.stdout && u.call.stderr && !u.call.tty);
    say(&format!(
        "{} exec echo hi: {} ms",
        ctx.kubectl.git_version,
        run.elapsed.as_millis()
    ));
}

/// `echo data | kubectl exec -i POD -- cat` prints `data` and ends: stdin EOF becomes the v5
/// CLOSE signal, which the bridge turns into a half-close of containerd's stdin stream, so cat
/// sees EOF and exits.
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
    let u = assert_websocket_v5(&ctx.env, &pod, Subresource::Exec);
    assert!(u.call.stdin && u.call.stdout && u.call.stderr && !u.call.tty);
    say(&format!(
        "{} exec -i cat (stdin EOF ends it): {} ms",
        ctx.kubectl.git_version,
        run.elapsed.as_millis()
    ));
}

/// `kubectl exec POD -- sh -c 'exit 3'` exits 3: the bridge re-encodes containerd's status
/// on the error channel.
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
    let u = assert_websocket_v5(&ctx.env, &pod, Subresource::Exec);
    assert_eq!(u.call.command, ["sh", "-c", "exit 3"]);
    say(&format!(
        "{} exec exit 3: {} ms",
        ctx.kubectl.git_version,
        run.elapsed.as_millis()
    ));
}

/// `kubectl exec -it POD -- sh -c 'while read l; do stty size; done'` on a pseudo-terminal:
/// the window size set before kubectl starts reaches the container's terminal (kubectl's first
/// resize message), and so does a resize during the session (SIGWINCH → resize message); the
/// exit code of the tty session comes back too.
fn exec_tty_resize(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("tty", version);
    let pty = Pty::open(37, 113);
    let script = r#"while read -r line; do [ "$line" = quit ] && exit 5; stty size; done"#;
    // setsid -c: kubectl leads a new session with the pty as its controlling terminal, so a
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
    // Only kubectl may hold the terminal side (the Command keeps its copies until dropped):
    // then kubectl's exit ends our reads of the master side.
    drop(cmd);
    let Pty { master, terminal } = pty;
    drop(terminal);
    let mut writer = master.try_clone().expect("dup pty master");
    let resizer = master.try_clone().expect("dup pty master");
    let (rx, _reader) = chunks(master);
    let mut seen = Vec::new();

    // The container's terminal starts at 0x0 until kubectl's resize message is applied, so ask
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
    let status = child.wait_timeout(RUN_TIMEOUT);
    let Some(status) = status else {
        child.kill();
        panic!(
            "kubectl exec -it did not end after `quit`; terminal output: {:?}",
            String::from_utf8_lossy(&seen)
        );
    };
    drop(writer);
    drop(resizer);
    // The rest of the output (kubectl's exit message), until the terminal side is closed.
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
    let u = assert_websocket_v5(&ctx.env, &pod, Subresource::Exec);
    assert!(
        u.call.tty && u.call.stdin && u.call.stdout && !u.call.stderr,
        "{u:?}"
    );
    say(&format!(
        "{} exec -it: initial size seen after {} ms, whole session {} ms",
        ctx.kubectl.git_version,
        initial_at.as_millis(),
        t0.elapsed().as_millis()
    ));
}

/// `kubectl attach -i POD -c cat`: a line written to kubectl's stdin comes back from the
/// container's `cat`. Ending kubectl (it has no other way out: the container keeps running)
/// must end the bridge's session too: the connection through the fake API server closes.
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
    // Other tests attach to the same cat at the same time: a line of our own.
    let line = format!(
        "attach through the bridge, kubectl {version}, pid {}\n",
        child.0.id()
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut echoed = false;
    // containerd starts copying stdin a moment before it adds the new attach's stdout to cat's
    // listeners; resend until the echo is seen.
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
    let u = assert_websocket_v5(&ctx.env, &pod, Subresource::Attach);
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

/// The expected SHA-256 of `yes BIG_LINE | head -c BIG_SIZE`.
fn expected_big_sha256() -> String {
    static CACHE: Mutex<Option<String>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get_or_insert_with(|| {
            let line = format!("{BIG_LINE}\n");
            let block = line.repeat((1 << 20) / line.len());
            let mut hasher = Sha256::new();
            let mut left = BIG_SIZE as usize;
            while left > 0 {
                let n = left.min(block.len());
                hasher.update(&block.as_bytes()[..n]);
                left -= n;
            }
            hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .clone()
}

/// 100 MB of stdout, generated in the container (`yes LINE | dd ...`, 64 KiB writes), arrive
/// byte-exact: same length and SHA-256 as the same bytes generated here. The same over SPDY
/// (pass-through) gives a throughput baseline.
fn exec_stdout_100mb(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("big", version);
    let ws = big_stdout(&ctx, &pod, false);
    let u = assert_websocket_v5(&ctx.env, &pod, Subresource::Exec);
    // Baseline in the same run: the same bytes over SPDY, which the bridge passes through
    // untouched (kubectl forced to SPDY). Other tests run meanwhile, so this is indicative.
    let spdy_pod = pod_name("big-spdy", version);
    let spdy = big_stdout(&ctx, &spdy_pod, true);
    let spdy_up = ctx.env.api.upgrades_for_pod(&spdy_pod);
    assert!(
        spdy_up.len() == 1 && spdy_up[0].is_spdy() && spdy_up[0].status() == Some(101),
        "{}",
        describe_all(&spdy_up)
    );
    let mbps = |d: Duration| BIG_SIZE as f64 / 1e6 / d.as_secs_f64();
    say(&format!(
        "{} exec 100 MB stdout: WebSocket v5 {:.2} s ({:.0} MB/s, {} bytes of frames), SPDY pass-through {:.2} s ({:.0} MB/s); ratio {:.2}",
        ctx.kubectl.git_version,
        ws.as_secs_f64(),
        mbps(ws),
        u.bytes_down,
        spdy.as_secs_f64(),
        mbps(spdy),
        ws.as_secs_f64() / spdy.as_secs_f64(),
    ));
}

/// Runs the 100 MB generator in the container through kubectl (over SPDY if `force_spdy`) and
/// checks stdout's length and SHA-256. Returns kubectl's run time.
fn big_stdout(ctx: &Ctx, pod: &str, force_spdy: bool) -> Duration {
    let script = format!(
        "yes {BIG_LINE} | dd bs=65536 count={BIG_SIZE} iflag=fullblock,count_bytes 2>/dev/null"
    );
    let mut cmd = ctx.env.command(
        &ctx.kubectl,
        &[],
        &["exec", pod, "-c", WEB, "--", "sh", "-c", &script],
    );
    if force_spdy {
        cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
    }
    let run = run_with(cmd, None, BIG_TIMEOUT, "exec 100 MB", |mut stdout| {
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    len += n as u64;
                }
            }
        }
        let hex: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (len, hex)
    });
    assert!(
        run.status.success(),
        "kubectl exited with {}; stderr {:?}",
        run.status,
        run.stderr
    );
    let (len, sha) = run.out;
    assert_eq!(len, BIG_SIZE, "stdout length; stderr {:?}", run.stderr);
    assert_eq!(sha, expected_big_sha256(), "stdout SHA-256");
    run.elapsed
}

/// Every byte value, in both directions: a buffer holding all 256 values (several times, in
/// different orders) goes through `kubectl exec -i -- cat` unchanged.
fn exec_all_byte_values(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("bytes", version);
    let mut data: Vec<u8> = Vec::new();
    for round in 0..16u8 {
        data.extend((0..=255u8).map(|b| b.wrapping_mul(2 * round + 1)));
        data.extend((0..=255u8).rev());
    }
    let cmd = ctx.env.command(
        &ctx.kubectl,
        &[],
        &["exec", "-i", &pod, "-c", WEB, "--", "cat"],
    );
    let run = run(
        cmd,
        Some(data.clone()),
        RUN_TIMEOUT,
        "exec -i cat (all bytes)",
    );
    assert_success(&run, "exec -i cat (all bytes)");
    assert_eq!(run.out.len(), data.len(), "{}", run.stderr);
    assert!(
        run.out == data,
        "bytes changed on the way: sent sha256 {}, got {}; first difference at {:?}",
        sha256_hex(&data),
        sha256_hex(&run.out),
        run.out.iter().zip(&data).position(|(a, b)| a != b)
    );
    let u = assert_websocket_v5(&ctx.env, &pod, Subresource::Exec);
    assert!(u.call.stdin);
    say(&format!(
        "{} exec -i cat with all 256 byte values ({} bytes): {} ms",
        ctx.kubectl.git_version,
        data.len(),
        run.elapsed.as_millis()
    ));
}

/// kubectl 1.27 speaks only SPDY: its `POST` with `Upgrade: SPDY/3.1` passes through the bridge
/// to containerd untouched, which picks `v4.channel.k8s.io`.
fn spdy_exec_echo_hi(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    let pod = pod_name("echo", version);
    let cmd = ctx.env.command(
        &ctx.kubectl,
        &[],
        &["exec", &pod, "-c", WEB, "--", "echo", "hi"],
    );
    let run = run(cmd, None, RUN_TIMEOUT, "exec echo hi (SPDY)");
    assert_success(&run, "exec echo hi (SPDY)");
    assert_eq!(String::from_utf8_lossy(&run.out), "hi\n", "{}", run.stderr);
    let ups = ctx.env.api.upgrades_for_pod(&pod);
    let all = describe_all(&ups);
    assert_eq!(ups.len(), 1, "{all}");
    let u = &ups[0];
    assert_eq!(u.method, "POST", "{all}");
    assert!(u.is_spdy(), "{all}");
    assert!(
        u.offered_stream_protocols
            .iter()
            .any(|p| p == "v4.channel.k8s.io"),
        "{all}"
    );
    let response = u.response.as_ref().unwrap_or_else(|| panic!("{all}"));
    assert_eq!(response.status, 101, "{all}");
    assert_eq!(
        response.stream_protocol.as_deref(),
        Some("v4.channel.k8s.io"),
        "{all}"
    );
    say(&format!(
        "{} exec echo hi over SPDY pass-through: {} ms",
        ctx.kubectl.git_version,
        run.elapsed.as_millis()
    ));
}

/// kubectl 1.27 (SPDY only for exec and port-forward).
mod kubectl_1_27_spdy {
    const V: &str = "1.27";

    #[test]
    fn exec_echo_hi_passes_through() {
        super::spdy_exec_echo_hi(V, "kubectl_1_27_spdy::exec_echo_hi_passes_through");
    }

    #[test]
    fn port_forward_http_get() {
        super::port_forward_http_get(V, "kubectl_1_27_spdy::port_forward_http_get");
    }
}

/// `kubectl port-forward POD :8080`, then an HTTP GET through the local port reaches busybox
/// httpd inside the pod. kubectl 1.31+ must use the WebSocket tunnel
/// (`SPDY/3.1+portforward.k8s.io`, accepted by the bridge, no SPDY retry); older ones use SPDY,
/// which passes through. Killing kubectl ends the forwarded connection through the bridge.
fn port_forward_http_get(version: &'static str, test: &'static str) {
    let Some(ctx) = setup(test, version) else {
        return;
    };
    // httpd starts with its container, which may be moments before this test: a refused
    // forward makes kubectl give up, so a refused first GET is retried with a new kubectl.
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
    assert_eq!(u.call.subresource, Subresource::PortForward, "{all}");
    assert_eq!(u.status(), Some(101), "{all}");
    let transport = if minor(version) >= 31 {
        assert!(u.is_websocket() && u.method == "GET", "{all}");
        assert!(
            u.offered_websocket_protocols
                .iter()
                .any(|p| p == PORT_FORWARD_TUNNEL),
            "{all}"
        );
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
        "{} port-forward over {transport}: listening after {} ms, GET {} ms, connection closed {closed_ms} ms after kubectl was killed",
        ctx.kubectl.git_version, pf.ready_ms, pf.get_ms,
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
    let deadline = Instant::now() + RUN_TIMEOUT;
    // "Forwarding from 127.0.0.1:PORT -> 8080" once the upgrade is done and it listens.
    let listening = wait_for(
        &rx,
        &mut seen,
        format!(" -> {HTTP_PORT}").as_bytes(),
        deadline,
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
        panic!(
            "kubectl port-forward never listened; stdout {stdout_text:?}; stderr {stderr:?}; {}",
            describe_all(&ctx.env.api.upgrades_for_pod(pod))
        );
    };
    let ready_ms = t0.elapsed().as_millis();
    let t1 = Instant::now();
    let response = http_get(local_port).unwrap_or_default();
    let get_ms = t1.elapsed().as_millis();
    child.kill();
    PortForward {
        response,
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        ready_ms,
        get_ms,
    }
}

/// Waits (bounded) until every upgraded connection of `pod` has ended in both directions, that
/// is, the bridge closed its side after kubectl went away. Returns the milliseconds waited.
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
                "the bridge kept a connection open {limit:?} after kubectl was killed: {}",
                describe_all(&ups)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The minor version of `1.NN`.
fn minor(version: &str) -> u32 {
    version
        .rsplit('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_default()
}

/// `GET /` on 127.0.0.1:`port`, half-closing after the request; the whole response.
fn http_get(port: u16) -> std::io::Result<Vec<u8>> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(RUN_TIMEOUT))?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    conn.shutdown(std::net::Shutdown::Write)?;
    Ok(read_all(conn))
}

/// The harness itself, without kubectl or containerd: an upgrade request reaches the target with
/// only the request line and `Host` rewritten, the options are parsed as the API server does,
/// both directions are relayed with their half-closes, and the record says what happened.
#[tokio::test]
async fn fake_api_server_relays_upgrade_byte_exact_with_half_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let target = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind target");
    let target_addr = target.local_addr().expect("target addr");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen_calls = calls.clone();
    let config = ApiServerConfig {
        containers: vec![ContainerSpec::new(WEB, false, false)],
        image: BUSYBOX_IMAGE.to_string(),
    };
    let api = FakeApiServer::start(config, move |call: UpgradeCall| {
        seen_calls.lock().expect("calls").push(call);
        async move { Ok(format!("http://{target_addr}/exec/tok3n?stdin=true")) }
    })
    .await
    .expect("start fake API server");

    let head = "GET /api/v1/namespaces/ns1/pods/p%2D1/exec?command=sh&command=-c&command=exit+3%3B%20x&container=web&stdin=true&stdout=1&tty=false HTTP/1.1\r\n\
                host: 127.0.0.1:1\r\n\
                UPGRADE: websocket\r\n\
                Connection: Upgrade\r\n\
                Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n\
                Sec-WebSocket-Protocol: channel.k8s.io\r\n\
                X-Odd:   spaced\t value \r\n\
                \r\n";
    let mut client = tokio::net::TcpStream::connect(api.addr())
        .await
        .expect("connect");
    client.write_all(head.as_bytes()).await.expect("send head");
    client.write_all(b"early bytes").await.expect("send body");
    client.shutdown().await.expect("half-close the client side");

    let (mut upstream, _) = target.accept().await.expect("accept forwarded request");
    let mut forwarded = Vec::new();
    upstream
        .read_to_end(&mut forwarded)
        .await
        .expect("read until the client's half-close arrives");
    let expected = head
        .replacen(
            "/api/v1/namespaces/ns1/pods/p%2D1/exec?command=sh&command=-c&command=exit+3%3B%20x&container=web&stdin=true&stdout=1&tty=false",
            "/exec/tok3n?stdin=true",
            1,
        )
        .replacen("host: 127.0.0.1:1", &format!("Host: {target_addr}"), 1)
        + "early bytes";
    assert_eq!(String::from_utf8_lossy(&forwarded), expected);

    // The other direction still flows after the client's half-close.
    upstream
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\nafter",
        )
        .await
        .expect("answer");
    upstream.write_all(b" the head").await.expect("more");
    drop(upstream);
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.expect("read response");
    assert!(
        back.ends_with(b"\r\n\r\nafter the head"),
        "{:?}",
        String::from_utf8_lossy(&back)
    );

    let call = calls.lock().expect("calls")[0].clone();
    assert_eq!(
        call,
        UpgradeCall {
            subresource: Subresource::Exec,
            namespace: "ns1".into(),
            pod: "p-1".into(),
            container: Some(WEB.into()),
            command: vec!["sh".into(), "-c".into(), "exit 3; x".into()],
            stdin: true,
            stdout: true,
            stderr: false,
            tty: false,
            ports: Vec::new(),
        }
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let record = loop {
        let ups = api.upgrades();
        if ups.iter().all(|u| u.ended) || Instant::now() > deadline {
            break ups.into_iter().next().expect("one record");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(record.ended && record.is_websocket() && record.method == "GET");
    assert_eq!(
        record.offered_websocket_protocols,
        ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"]
    );
    let response = record.response.expect("response recorded");
    assert_eq!(response.status, 101);
    assert_eq!(response.status_line, "HTTP/1.1 101 Switching Protocols");
    assert_eq!(response.websocket_protocol.as_deref(), Some(V5));
    assert_eq!(record.bytes_up, "early bytes".len() as u64);
    assert_eq!(record.bytes_down, "after the head".len() as u64);
    api.shutdown();
}
