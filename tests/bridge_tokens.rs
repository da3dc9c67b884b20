//! The streaming side of CRI interception: a bridge with a token store
//! (`BridgeConfig::tokens`) serves only the sessions the store holds, each once.
//!
//! ```text
//! test client ──▶ bridge <base>/exec/<bridge token> ──▶ counting TCP relay ──▶ runtime simulator
//!                     │                                   (connections seen)
//!                     └─ TokenStore: token → (kind, runtime URL, CRI stream options)
//! ```
//!
//! Sessions are put into the store directly, as the CRI interceptor would after a CRI call
//! (no containerd needed). Their runtime URLs point at a relay in front of the simulator that
//! counts connections, which is how "nothing was forwarded to the runtime" is proven; the
//! simulator's own single-use token staying outstanding proves it once more.
//!
//! Cases: the stored options win over any query; a token used twice (one after the other, or
//! two clients racing, WebSocket or SPDY) runs once and the other use gets a 404
//! `metav1.Status`; a token after its TTL; forged, altered and truncated tokens; a token of
//! another kind (spent by that use, like the kubelet's streaming server does); a path outside
//! the advertised base. Every bridge log line is captured and no token (the bridge's or the
//! runtime's) may appear in it in full.

#[path = "support/bridge_harness.rs"]
mod bridge_harness;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bridge_harness::{
    ClientRequest, HttpResponse, SUCCESS, bounded, bridge_config, exec, handshake, read_response,
    sim, start_bridge, upgrade,
};
use http::Uri;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use ws_spdy_bridge::runtime_sim::{AttachRequest, ContainerSpec, PortForwardRequest, RuntimeSim};
use ws_spdy_bridge::server::Bridge;
use ws_spdy_bridge::tokens::{
    REDACT_KEEP, Session, SessionKind, TOKEN_LEN, Token, TokenStore, redact,
};
use ws_spdy_bridge::upstream::remotecommand::StreamOptions;

/// The advertised URL's path: the bridge's routes live under it, as `serve` sets them up.
const BASE: &str = "/cri-stream";
/// The standalone upstream of the bridge config. Nothing listens there: with a store, the
/// bridge must never map a path onto it.
const UNUSED_UPSTREAM: &str = "http://127.0.0.1:9";

// ---------------------------------------------------------------------------------------------
// Log capture

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every event of the bridge at any level goes to [`LOG`]. The simulator is the runtime, not
/// the bridge: its own lines are left out.
fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("ws_spdy_bridge=trace,ws_spdy_bridge::runtime_sim=off")
            .with_writer(|| Capture)
            .with_ansi(false)
            .try_init();
    });
}

fn log_text() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// Neither `token` nor any long piece of it is in the log. Tokens here are random, so a
/// match of more than [`REDACT_KEEP`] characters is a leak, not chance.
fn assert_not_logged(token: &str) {
    let log = log_text();
    let window = REDACT_KEEP + 2;
    if token.len() <= window {
        assert!(!log.contains(token), "{token:?} in the log:\n{log}");
        return;
    }
    for start in 0..=token.len() - window {
        let piece = &token[start..start + window];
        assert!(
            !log.contains(piece),
            "{piece:?} (part of a token) in the log:\n{log}"
        );
    }
}

/// The bridge logged the refusal of `token`, redacted: proves the capture works, so the
/// absence checks are not vacuous.
fn assert_refusal_logged(token: &str) {
    let log = log_text();
    let want = format!("token={}", redact(token));
    assert!(
        log.lines()
            .any(|l| l.contains("unknown or expired bridge token") && l.contains(&want)),
        "no refusal line with {want:?}:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// The runtime behind a counting relay

/// A TCP relay in front of the simulator that counts the connections it accepts.
struct Relay {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut runtime) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut runtime).await;
                    }
                });
            }
        });
        Relay {
            addr,
            accepted,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A bridge with a store, the simulator and the relay between them.
struct Fixture {
    sim: RuntimeSim,
    relay: Relay,
    store: Arc<TokenStore>,
    bridge: Bridge,
}

impl Fixture {
    async fn start(ttl: Duration) -> Fixture {
        capture_logs();
        let sim = sim().await;
        let relay = Relay::start(sim.addr()).await;
        let store = Arc::new(TokenStore::new(ttl, 100));
        let bridge = start_bridge(ws_spdy_bridge::server::BridgeConfig {
            tokens: Some(store.clone()),
            base_path: BASE.into(),
            ..bridge_config(UNUSED_UPSTREAM)
        })
        .await;
        Fixture {
            sim,
            relay,
            store,
            bridge,
        }
    }

    /// The simulator's URL, reached through the relay.
    fn via_relay(&self, sim_url: &str) -> Uri {
        let sim_url: Uri = sim_url.parse().expect("simulator URL");
        format!("http://{}{}", self.relay.addr, sim_url.path())
            .parse()
            .expect("relayed URL")
    }

    /// Stores what the CRI interceptor would store after a successful CRI call.
    fn issue(&self, kind: SessionKind, sim_url: &str, options: StreamOptions) -> Token {
        self.store
            .insert(Session {
                kind,
                runtime_url: self.via_relay(sim_url),
                options,
                ports: Vec::new(),
                container_id: "ctr".into(),
                pod_sandbox_id: String::new(),
            })
            .expect("room in the store")
    }

    /// A stored `echo hi` exec (stdout and stderr) and the simulator's token behind it.
    fn issue_echo(&self) -> (Token, String) {
        let url = self
            .sim
            .exec(exec(&["echo", "hi"], false, true, true, false))
            .expect("simulator Exec");
        let runtime_token = url.rsplit('/').next().expect("token").to_owned();
        let token = self.issue(
            SessionKind::Exec,
            &url,
            StreamOptions {
                stdin: false,
                stdout: true,
                stderr: true,
                tty: false,
            },
        );
        (token, runtime_token)
    }

    fn path(&self, kind: &str, token: &str) -> String {
        format!("{BASE}/{kind}/{token}")
    }

    async fn shutdown(self) {
        self.bridge.shutdown().await;
        self.sim.shutdown().await;
    }
}

/// A WebSocket v5 upgrade of `path` that the bridge must refuse with a 404 Status.
async fn assert_404(addr: SocketAddr, path: &str) -> HttpResponse {
    let (resp, _) = handshake(addr, &ClientRequest::v5(path)).await;
    assert_404_status(&resp, path);
    resp
}

/// The response is the bridge's 404 `metav1.Status` for an unusable token.
fn assert_404_status(resp: &HttpResponse, path: &str) {
    assert_eq!(
        resp.status,
        404,
        "{path}: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(
        resp.header("upgrade").is_none() && resp.header("sec-websocket-protocol").is_none(),
        "{:?}",
        resp.headers
    );
    let status = resp.status_body();
    assert_eq!(status.kind, "Status");
    assert_eq!(status.api_version, "v1");
    assert_eq!(status.status, "Failure");
    assert_eq!(status.reason, "NotFound");
    assert_eq!(status.code, 404);
    assert!(
        status.message.contains("unknown or expired"),
        "{}",
        status.message
    );
}

/// A SPDY upgrade (`POST`, what kubectl falls back to) of `path`.
async fn spdy_upgrade(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the bridge");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("send request");
    read_response(tcp).await.0
}

/// Runs the stored `echo hi` through `path` and checks the output and status.
async fn run_echo(addr: SocketAddr, path: &str) {
    let mut ws = upgrade(addr, path).await;
    let t = ws.read_to_end().await;
    assert_eq!(t.channel(1), b"hi\n");
    assert_eq!(t.channel(2), b"");
    t.assert_clean_end(Some(SUCCESS));
}

// ---------------------------------------------------------------------------------------------
// The cases

/// The stored session runs with the CRI request's options, whatever the query says; the second
/// use of its token, over WebSocket or SPDY, is a 404 Status and never reaches the runtime.
#[tokio::test]
async fn token_runs_its_session_once_then_404_without_reaching_the_runtime() {
    let f = Fixture::start(Duration::from_secs(60)).await;
    bounded(async {
        let (token, runtime_token) = f.issue_echo();
        let addr = f.bridge.addr();
        // If the bridge read these, the simulator would wait for a stdin stream and a tty
        // and get no stdout stream: the session could not print "hi".
        let path = format!(
            "{}?stdin=true&stdout=false&stderr=false&tty=true",
            f.path("exec", token.as_str())
        );
        run_echo(addr, &path).await;
        assert_eq!(f.relay.connections(), 1);
        assert_eq!(
            f.sim.outstanding_tokens(),
            0,
            "the runtime's token was used"
        );
        assert!(f.store.is_empty(), "the bridge token is spent");

        let again = f.path("exec", token.as_str());
        assert_404(addr, &again).await;
        assert_404(addr, &path).await;
        // kubectl's fallback after a refused WebSocket upgrade: refused the same way.
        let spdy = spdy_upgrade(addr, &again).await;
        assert_404_status(&spdy, &again);
        assert_eq!(
            f.relay.connections(),
            1,
            "a reused token must not reach the runtime"
        );

        assert_refusal_logged(token.as_str());
        assert_not_logged(token.as_str());
        assert_not_logged(&runtime_token);
    })
    .await;
    f.shutdown().await;
}

/// Two clients racing with one token: exactly one session runs, the other gets the 404.
#[tokio::test]
async fn two_clients_racing_with_one_token_get_one_session() {
    let f = Fixture::start(Duration::from_secs(60)).await;
    bounded(async {
        let (token, runtime_token) = f.issue_echo();
        let addr = f.bridge.addr();
        let req = ClientRequest::v5(f.path("exec", token.as_str()));
        let ((a, mut ws_a), (b, mut ws_b)) =
            tokio::join!(handshake(addr, &req), handshake(addr, &req));
        let mut codes = [a.status, b.status];
        codes.sort_unstable();
        assert_eq!(codes, [101, 404], "{a:?} {b:?}");
        let (refused, ws) = if a.status == 101 {
            (b, &mut ws_a)
        } else {
            (a, &mut ws_b)
        };
        assert_404_status(&refused, &req.path);
        let t = ws.read_to_end().await;
        assert_eq!(t.channel(1), b"hi\n");
        t.assert_clean_end(Some(SUCCESS));
        assert_eq!(f.relay.connections(), 1);
        assert_not_logged(token.as_str());
        assert_not_logged(&runtime_token);
    })
    .await;
    f.shutdown().await;
}

/// After its TTL a token is a 404, the runtime is not contacted and its own token stays
/// unspent. A token issued at the same moment and used within the TTL works, so the store's
/// clock is not simply refusing everything.
#[tokio::test]
async fn token_after_expiry_gets_404_and_the_runtime_token_stays_unspent() {
    let ttl = Duration::from_secs(2);
    let f = Fixture::start(ttl).await;
    bounded(async {
        let issued = tokio::time::Instant::now();
        let (in_time, _) = f.issue_echo();
        let (late, runtime_token) = f.issue_echo();
        assert_eq!(f.sim.outstanding_tokens(), 2);
        run_echo(f.bridge.addr(), &f.path("exec", in_time.as_str())).await;
        assert_eq!(f.relay.connections(), 1);

        tokio::time::sleep_until(issued + ttl + Duration::from_millis(300)).await;
        assert_404(f.bridge.addr(), &f.path("exec", late.as_str())).await;
        assert_eq!(f.relay.connections(), 1, "nothing forwarded to the runtime");
        assert_eq!(
            f.sim.outstanding_tokens(),
            1,
            "the runtime's token behind the expired one was not spent"
        );
        assert!(f.store.is_empty(), "an expired token is gone, not kept");
        assert_refusal_logged(late.as_str());
        assert_not_logged(late.as_str());
        assert_not_logged(in_time.as_str());
        assert_not_logged(&runtime_token);
    })
    .await;
    f.shutdown().await;
}

/// Tokens the bridge never issued: random ones, the real one altered, truncated or extended,
/// other shapes. Each is a 404 and reaches nothing; the real token still works afterwards.
#[tokio::test]
async fn forged_tokens_get_404_and_reach_nothing() {
    let f = Fixture::start(Duration::from_secs(60)).await;
    bounded(async {
        let (token, runtime_token) = f.issue_echo();
        let real = token.as_str();
        assert_eq!(real.len(), TOKEN_LEN);
        let flipped = {
            let mut chars: Vec<char> = real.chars().collect();
            chars[TOKEN_LEN / 2] = if chars[TOKEN_LEN / 2] == 'A' {
                'B'
            } else {
                'A'
            };
            chars.into_iter().collect::<String>()
        };
        let mut random = [0u8; 16];
        rand::fill(&mut random[..]);
        let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let forged = [
            random[..TOKEN_LEN].to_owned(),
            flipped,
            real[..TOKEN_LEN - 1].to_owned(),
            format!("{real}x"),
            real.to_ascii_uppercase(),
            // The runtime's own token: meaningless to the bridge.
            runtime_token.clone(),
            "x".to_owned(),
            "A".repeat(4096),
        ];
        for t in &forged {
            if t == real {
                continue;
            }
            assert_404(f.bridge.addr(), &f.path("exec", t)).await;
            assert_refusal_logged(t);
        }
        // Outside the advertised base path, even the real token is no route.
        let (resp, _) =
            handshake(f.bridge.addr(), &ClientRequest::v5(format!("/exec/{real}"))).await;
        assert_eq!(resp.status, 404);
        assert_eq!(resp.status_body().reason, "NotFound");

        assert_eq!(f.relay.connections(), 0, "nothing forwarded to the runtime");
        assert_eq!(f.sim.outstanding_tokens(), 1);
        // Failed guesses do not disturb the real token.
        run_echo(f.bridge.addr(), &f.path("exec", real)).await;
        assert_eq!(f.relay.connections(), 1);
        assert_not_logged(real);
        assert_not_logged(&runtime_token);
    })
    .await;
    f.shutdown().await;
}

/// A token presented on another route (an exec token on `/attach/`, and every other pairing)
/// is a 404 that reaches nothing, and that use spends it, as the kubelet's streaming server
/// consumes a token before checking its type.
#[tokio::test]
async fn token_of_another_kind_gets_404_and_is_spent() {
    let f = Fixture::start(Duration::from_secs(60)).await;
    bounded(async {
        f.sim
            .create_container(ContainerSpec {
                id: "cat".into(),
                command: vec!["cat".into()],
                tty: false,
                stdin: true,
            })
            .expect("simulator container");
        let exec_url = f
            .sim
            .exec(exec(&["echo", "hi"], false, true, true, false))
            .unwrap();
        let attach_url = f
            .sim
            .attach(AttachRequest {
                container_id: "cat".into(),
                stdin: true,
                stdout: true,
                ..AttachRequest::default()
            })
            .unwrap();
        let pf_url = f
            .sim
            .port_forward(PortForwardRequest {
                pod_sandbox_id: "pod".into(),
                ports: vec![80],
            })
            .unwrap();
        let streams = StreamOptions {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: false,
        };
        let cases = [
            (SessionKind::Exec, exec_url, streams, "attach"),
            (SessionKind::Exec, String::new(), streams, "portforward"),
            (SessionKind::Attach, attach_url, streams, "exec"),
            (SessionKind::Attach, String::new(), streams, "portforward"),
            (
                SessionKind::PortForward,
                pf_url,
                StreamOptions::default(),
                "exec",
            ),
            (
                SessionKind::PortForward,
                String::new(),
                StreamOptions::default(),
                "attach",
            ),
        ];
        let mut last_url = String::new();
        for (kind, url, options, wrong_route) in cases {
            // Each kind's second case reuses its runtime URL: it is never contacted anyway.
            if !url.is_empty() {
                last_url = url;
            }
            let token = f.issue(kind, &last_url, options);
            assert_404(f.bridge.addr(), &f.path(wrong_route, token.as_str())).await;
            // Spent by that use: its own route refuses it now.
            assert_404(f.bridge.addr(), &f.path(kind.as_str(), token.as_str())).await;
            assert_refusal_logged(token.as_str());
            assert_not_logged(token.as_str());
        }
        assert_eq!(f.relay.connections(), 0, "nothing forwarded to the runtime");
        assert_eq!(f.sim.outstanding_tokens(), 3, "no runtime token was spent");
        assert!(f.store.is_empty());
    })
    .await;
    f.shutdown().await;
}

/// A port-forward token over the WebSocket tunnel (kubectl ≥ 1.31's offer) reaches the
/// runtime's port-forward with the stored URL; a second use is refused.
#[tokio::test]
async fn port_forward_token_opens_the_tunnel_once() {
    let f = Fixture::start(Duration::from_secs(60)).await;
    bounded(async {
        let url = f
            .sim
            .port_forward(PortForwardRequest {
                pod_sandbox_id: "pod".into(),
                ports: vec![80],
            })
            .unwrap();
        let runtime_token = url.rsplit('/').next().unwrap().to_owned();
        let token = f.issue(SessionKind::PortForward, &url, StreamOptions::default());
        let path = f.path("portforward", token.as_str());
        let req = ClientRequest::v5(path.clone()).protocols(&["SPDY/3.1+portforward.k8s.io"]);
        let (resp, ws) = handshake(f.bridge.addr(), &req).await;
        assert_eq!(
            resp.status,
            101,
            "{:?}",
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(
            resp.header("sec-websocket-protocol"),
            Some("SPDY/3.1+portforward.k8s.io")
        );
        assert_eq!(f.relay.connections(), 1);
        assert_eq!(f.sim.outstanding_tokens(), 0);
        drop(ws);
        let (resp, _) = handshake(f.bridge.addr(), &req).await;
        assert_404_status(&resp, &path);
        assert_eq!(f.relay.connections(), 1);
        assert_not_logged(token.as_str());
        assert_not_logged(&runtime_token);
    })
    .await;
    f.shutdown().await;
}
