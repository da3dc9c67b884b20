//! Metrics, the per-session view and health (design.md "Observability"): scripted sessions of
//! every outcome against the runtime simulator, then the numbers on `/metrics`, the live view
//! on `/debug/sessions`, `/healthz` and `/readyz`, `promtool check metrics` on the exposition,
//! and a grep over every log line this test binary captured for the tokens it used.

#[path = "support/bridge_harness.rs"]
mod bridge_harness;
#[path = "support/fake_grpc.rs"]
mod fake_grpc;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bridge_harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use ws_spdy_bridge::channel::outcome::Outcome;
use ws_spdy_bridge::cri::{CriClient, CriProxyConfig};
use ws_spdy_bridge::metrics::{Metrics, MetricsConfig};
use ws_spdy_bridge::runtime_sim::{ExecRequest, PortForwardRequest, RuntimeSim};
use ws_spdy_bridge::server::admin::{AdminHandle, ReadyCheck, serve_admin};
use ws_spdy_bridge::server::{Bridge, BridgeConfig};
use ws_spdy_bridge::wsclient;

// ---------------------------------------------------------------------------------------------
// Log capture: every event of the bridge at debug level, as text and as JSON, into one buffer
// shared by the tests of this binary.

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn logs() -> &'static Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let capture = Capture(Arc::default());
        // The simulator is the runtime, not the bridge: its logs are not the bridge's.
        let filter = tracing_subscriber::EnvFilter::new(
            "warn,ws_spdy_bridge=debug,ws_spdy_bridge::runtime_sim=off",
        );
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(capture.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(capture.clone()),
            )
            .try_init();
        capture
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// The token of a simulator URL.
fn token_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

fn assert_no_token(what: &str, text: &str, tokens: &[String]) {
    for t in tokens {
        assert!(!text.contains(t.as_str()), "{what} contains token {t}");
    }
}

// ---------------------------------------------------------------------------------------------
// Admin endpoints over plain HTTP/1.1.

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path).await
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut tcp = TcpStream::connect(addr).await.expect("connect to admin");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Reply {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// The value of the series `name{labels}` in a text exposition (labels in any order, all of
/// them given); 0 when the series is absent.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, got) = match series.split_once('{') {
            Some((n, rest)) => {
                let rest = rest.strip_suffix('}').unwrap();
                let got: BTreeMap<&str, &str> = rest
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        (k, v.trim_matches('"'))
                    })
                    .collect();
                (n, got)
            }
            None => (series, BTreeMap::new()),
        };
        if n == name && got == want {
            return v.parse().unwrap();
        }
    }
    0.0
}

/// Waits until every session has been accounted for (guards drop when session tasks end,
/// which may be just after the client saw the end).
async fn until_no_session_is_active(metrics: &Metrics) {
    within(Duration::from_secs(5), "sessions end", async {
        while !metrics.sessions().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Runs `promtool check metrics` on `text` when promtool is installed (required in CI).
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("WS_SPDY_BRIDGE_REQUIRE_PEERS").as_deref() != Ok("1"),
                "promtool is required (Debian package prometheus): {e}"
            );
            eprintln!("skipping promtool check: {e}");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// A bridge with metrics in front of the simulator, and the admin listener.

struct Setup {
    sim: RuntimeSim,
    bridge: Bridge,
    metrics: Arc<Metrics>,
    admin: AdminHandle,
    ready: ReadyCheck,
}

fn metered(cfg: BridgeConfig, metrics: &Arc<Metrics>) -> BridgeConfig {
    BridgeConfig {
        metrics: Some(metrics.clone()),
        ..cfg
    }
}

async fn setup() -> Setup {
    logs();
    let sim = sim().await;
    let metrics = Arc::new(Metrics::new());
    let bridge = start_bridge(metered(bridge_config(sim.base_url()), &metrics)).await;
    let ready = ReadyCheck::standalone(&sim.base_url().parse().unwrap());
    ready.expect_listener("streaming");
    ready.set_listener("streaming", true);
    let admin = serve_admin(
        MetricsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        },
        metrics.clone(),
        ready.clone(),
    )
    .await
    .expect("admin listener starts");
    Setup {
        sim,
        bridge,
        metrics,
        admin,
        ready,
    }
}

fn ws_url(bridge: &Bridge, sim_url: &str, req: &ExecRequest) -> String {
    format!("ws://{}{}", bridge.addr(), bridge_path(sim_url, req))
}

const EXIT_3: &str = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: command terminated with exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;

#[tokio::test]
async fn sessions_of_every_outcome_are_counted_with_their_bytes() {
    let s = setup().await;
    let mut tokens = Vec::new();
    let run = |url: String, input: Option<&'static [u8]>| async move {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let outcome = wsclient::run(&url, input, &mut out, &mut err).await;
        (outcome, out, err)
    };

    within(Duration::from_secs(20), "scripted sessions", async {
        // success: echo.
        let echo = exec(&["echo", "hello"], false, true, false, false);
        let echo_url = s.sim.exec(echo.clone()).unwrap();
        tokens.push(token_of(&echo_url));
        let (outcome, out, _) = run(ws_url(&s.bridge, &echo_url, &echo), None).await;
        assert_eq!(outcome.unwrap(), Outcome::Success);
        assert_eq!(out, b"hello\n");

        // exit_nonzero: output on stderr, exit 3.
        let fail = exec(
            &["sh", "-c", "echo oops >&2; exit 3"],
            false,
            true,
            true,
            false,
        );
        let url = s.sim.exec(fail.clone()).unwrap();
        tokens.push(token_of(&url));
        let (outcome, _, err) = run(ws_url(&s.bridge, &url, &fail), None).await;
        assert!(
            matches!(outcome.unwrap(), Outcome::ExitCode { code: 3, .. }),
            "exit code 3"
        );
        assert_eq!(err, b"oops\n");

        // success with stdin: cat echoes it; the client's CLOSE ends stdin.
        let cat = exec(&["cat"], true, true, false, false);
        let url = s.sim.exec(cat.clone()).unwrap();
        tokens.push(token_of(&url));
        let (outcome, out, _) = run(ws_url(&s.bridge, &url, &cat), Some(b"ping\n")).await;
        assert_eq!(outcome.unwrap(), Outcome::Success);
        assert_eq!(out, b"ping\n");

        // client_error: a malformed CLOSE (`ff` alone) tears the session down.
        let url = s.sim.exec(cat.clone()).unwrap();
        tokens.push(token_of(&url));
        let mut ws = upgrade(s.bridge.addr(), bridge_path(&url, &cat)).await;
        ws.binary(&[0xff]).await;
        ws.expect_closed().await;

        // upstream_error: the echo token again, spent by its first use.
        let (outcome, _, _) = run(ws_url(&s.bridge, &echo_url, &echo), None).await;
        assert!(outcome.is_err(), "a spent token is refused");

        // upstream_error: a runtime that is down (a second bridge, same metrics).
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let down = start_bridge(metered(
            bridge_config(&format!("http://{closed}")),
            &s.metrics,
        ))
        .await;
        let url = s.sim.exec(echo.clone()).unwrap();
        tokens.push(token_of(&url));
        let (outcome, _, _) = run(ws_url(&down, &url, &echo), None).await;
        assert!(outcome.is_err(), "runtime down is refused");
        down.shutdown().await;

        // A live session shows in /debug/sessions, without its token; then the client
        // vanishes mid-session (client_gone).
        until_no_session_is_active(&s.metrics).await;
        let url = s.sim.exec(cat.clone()).unwrap();
        let token = token_of(&url);
        tokens.push(token.clone());
        let mut ws = upgrade(s.bridge.addr(), bridge_path(&url, &cat)).await;
        ws.stdin(b"abc").await;
        assert_eq!(ws.read_channel(1, 3).await, b"abc");
        let view = get(s.admin.addr(), "/debug/sessions").await;
        assert_eq!(view.status, 200);
        assert_eq!(view.content_type, "application/json");
        assert!(!view.body.contains(&token), "{}", view.body);
        let live: serde_json::Value = serde_json::from_str(&view.body).unwrap();
        let live = live.as_array().expect("an array");
        assert_eq!(live.len(), 1, "{live:?}");
        let entry = &live[0];
        assert_eq!(entry["kind"], "exec");
        assert_eq!(entry["protocol"], "v5");
        assert!(entry["id"].as_u64().unwrap() >= 1);
        assert!(entry["age_seconds"].as_f64().unwrap() >= 0.0);
        assert!(entry["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(entry["bytes"]["stdin"]["client_to_runtime"], 3);
        assert_eq!(entry["bytes"]["stdout"]["runtime_to_client"], 3);
        ws.drop_tcp();

        // Refused before any session: no stream options in a standalone request.
        let (resp, _) = handshake(s.bridge.addr(), &ClientRequest::v5("/exec/abcdefgh")).await;
        assert_eq!(resp.status, 400);
    })
    .await;
    until_no_session_is_active(&s.metrics).await;

    let scrape = get(s.admin.addr(), "/metrics").await;
    assert_eq!(scrape.status, 200);
    assert_eq!(scrape.content_type, "text/plain; version=0.0.4");
    let m = scrape.body;
    let exec_v5 = [("kind", "exec"), ("protocol", "v5")];
    let ended = |outcome: &str| {
        value(
            &m,
            "ws_spdy_bridge_sessions_ended_total",
            &[("kind", "exec"), ("protocol", "v5"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        value(&m, "ws_spdy_bridge_sessions_started_total", &exec_v5),
        7.0
    );
    assert_eq!(ended("success"), 2.0);
    assert_eq!(ended("exit_nonzero"), 1.0);
    assert_eq!(ended("client_error"), 1.0);
    assert_eq!(ended("upstream_error"), 2.0);
    assert_eq!(ended("client_gone"), 1.0);
    assert_eq!(ended("internal_error"), 0.0);
    assert_eq!(
        value(&m, "ws_spdy_bridge_sessions_active", &[("kind", "exec")]),
        0.0
    );

    let bytes = |channel: &str, direction: &str| {
        value(
            &m,
            "ws_spdy_bridge_bytes_total",
            &[
                ("kind", "exec"),
                ("channel", channel),
                ("direction", direction),
            ],
        )
    };
    // hello\n, ping\n and abc from the three sessions that had output on stdout.
    assert_eq!(bytes("stdout", "runtime_to_client"), 6.0 + 5.0 + 3.0);
    assert_eq!(bytes("stderr", "runtime_to_client"), 5.0);
    assert_eq!(bytes("stdin", "client_to_runtime"), 5.0 + 3.0);
    // Two Success statuses and one exit-code status reached clients.
    assert_eq!(
        bytes("error", "runtime_to_client"),
        (2 * SUCCESS.len() + EXIT_3.len()) as f64
    );

    let close = |channel: &str| {
        value(
            &m,
            "ws_spdy_bridge_close_signals_total",
            &[("channel", channel)],
        )
    };
    assert_eq!(close("stdin"), 1.0);
    assert_eq!(close("invalid"), 1.0);
    assert_eq!(
        value(
            &m,
            "ws_spdy_bridge_handshake_refusals_total",
            &[("reason", "stream_options")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "ws_spdy_bridge_session_duration_seconds_count",
            &[("kind", "exec")]
        ),
        7.0
    );
    // Five sessions got as far as a runtime session.
    assert_eq!(
        value(
            &m,
            "ws_spdy_bridge_upstream_upgrade_duration_seconds_count",
            &[("kind", "exec")]
        ),
        5.0
    );
    assert_no_token("/metrics", &m, &tokens);
    promtool_check(&m);

    // One log line per session, with its fields; no token anywhere in the captured logs.
    let text = log_text();
    assert!(
        text.lines().any(|l| l.contains("session ended")
            && l.contains("outcome=\"exit_nonzero\"")
            && l.contains("exit_code=3")
            && l.contains("protocol=\"v5\"")
            && l.contains("peer=127.0.0.1:")),
        "a text line for the exit-code session"
    );
    let json_line = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["fields"]["message"] == "session ended" && v["fields"]["outcome"] == "client_gone"
        })
        .expect("a JSON line for the client_gone session");
    let fields = &json_line["fields"];
    assert_eq!(fields["kind"], "exec");
    assert!(fields["id"].as_u64().is_some());
    assert!(fields["duration_seconds"].as_f64().is_some());
    assert_eq!(fields["bytes_client_to_runtime"], 3);
    let per_channel: serde_json::Value =
        serde_json::from_str(fields["bytes"].as_str().unwrap()).unwrap();
    assert_eq!(per_channel["stdout"]["runtime_to_client"], 3);
    assert_no_token("the logs", &text, &tokens);

    s.admin.shutdown().await;
    s.bridge.shutdown().await;
    s.sim.shutdown().await;
}

#[tokio::test]
async fn health_and_readiness_follow_the_listeners_and_the_runtime() {
    let s = setup().await;
    let admin = s.admin.addr();

    let health = get(admin, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(admin, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"));

    // A listener that stops accepting (a drain) makes the bridge unready.
    s.ready.set_listener("streaming", false);
    let ready = get(admin, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("streaming listener"), "{}", ready.body);
    s.ready.set_listener("streaming", true);

    // The runtime going away makes it unready, and says why.
    let sim_addr = s.sim.addr();
    s.sim.shutdown().await;
    let ready = get(admin, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.starts_with("not ready: runtime ") && ready.body.contains(&sim_addr.to_string()),
        "{}",
        ready.body
    );
    // Still alive.
    assert_eq!(get(admin, "/healthz").await.status, 200);

    assert_eq!(get(admin, "/nowhere").await.status, 404);
    assert_eq!(request(admin, "POST", "/metrics").await.status, 405);

    s.admin.shutdown().await;
    s.bridge.shutdown().await;
}

#[tokio::test]
async fn port_forward_and_pass_through_sessions_are_counted_by_protocol() {
    logs();
    let metrics = Arc::new(Metrics::new());
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let bridge = start_bridge(metered(
        bridge_config(&format!("http://{closed}")),
        &metrics,
    ))
    .await;

    within(Duration::from_secs(10), "refused sessions", async {
        // A tunnel offer with the runtime down: the session starts, the runtime fails it.
        let req =
            ClientRequest::v5("/portforward/abcdefgh").protocols(&["SPDY/3.1+portforward.k8s.io"]);
        let (resp, _) = handshake(bridge.addr(), &req).await;
        assert_eq!(resp.status, 502);
        // No usable sub-protocol: refused before any session.
        let req = ClientRequest::v5("/portforward/abcdefgh").protocols(&["v5.channel.k8s.io"]);
        let (resp, _) = handshake(bridge.addr(), &req).await;
        assert_eq!(resp.status, 400);
        // A legacy exec protocol is passed through; the runtime is down.
        let req = ClientRequest::v5("/exec/abcdefgh").protocols(&["v4.channel.k8s.io"]);
        let (resp, _) = handshake(bridge.addr(), &req).await;
        assert_eq!(resp.status, 502);
        // No sub-protocol the bridge serves for exec: 403.
        let req = ClientRequest::v5("/exec/abcdefgh").protocols(&["v9.channel.k8s.io"]);
        let (resp, _) = handshake(bridge.addr(), &req).await;
        assert_eq!(resp.status, 403);
        // Not a streaming route at all.
        let (resp, _) = handshake(bridge.addr(), &ClientRequest::v5("/logs/x")).await;
        assert_eq!(resp.status, 404);
    })
    .await;
    until_no_session_is_active(&metrics).await;

    let m = metrics.encode();
    assert_eq!(
        value(
            &m,
            "ws_spdy_bridge_sessions_ended_total",
            &[
                ("kind", "portforward"),
                ("protocol", "tunnel"),
                ("outcome", "upstream_error")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "ws_spdy_bridge_sessions_ended_total",
            &[
                ("kind", "exec"),
                ("protocol", "passthrough_websocket"),
                ("outcome", "upstream_error")
            ]
        ),
        1.0
    );
    let refused = |reason: &str| {
        value(
            &m,
            "ws_spdy_bridge_handshake_refusals_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(refused("unsupported_protocol"), 2.0);
    assert_eq!(refused("not_found"), 1.0);
    assert_eq!(
        value(
            &m,
            "ws_spdy_bridge_sessions_active",
            &[("kind", "portforward")]
        ),
        0.0
    );
    promtool_check(&m);
    bridge.shutdown().await;
}

/// A port-forward WebSocket client for a fresh simulator token: `protocol` offered, `query`
/// appended to the path. Returns the connection and the token.
async fn port_forward_client(
    bridge: &Bridge,
    sim: &RuntimeSim,
    port: u16,
    protocol: &str,
    query: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    String,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = sim
        .port_forward(PortForwardRequest {
            pod_sandbox_id: "sandbox".into(),
            ports: vec![port],
        })
        .unwrap();
    let token = token_of(&url);
    let mut req = format!("ws://{}/portforward/{token}{query}", bridge.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_str(protocol).unwrap(),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    (ws, token)
}

/// A pod port that echoes every connection.
async fn echo_pod() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = conn.into_split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn port_forward_sessions_count_their_bytes_and_end_cleanly() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let s = setup().await;
    let pod = echo_pod().await;
    let mut tokens = Vec::new();
    within(Duration::from_secs(10), "port-forward sessions", async {
        // Channel mode (kube-rs, python): `00 + bytes` to the port, its echo back on 00.
        let (mut ws, token) = port_forward_client(
            &s.bridge,
            &s.sim,
            pod,
            "v4.channel.k8s.io",
            &format!("?port={pod}"),
        )
        .await;
        tokens.push(token);
        for _ in 0..2 {
            ws.next().await.unwrap().unwrap(); // The port prefixes on channels 0 and 1.
        }
        ws.send(Message::Binary(b"\x00hello".to_vec().into()))
            .await
            .unwrap();
        let mut echoed = Vec::new();
        while echoed.len() < 5 {
            let m = ws.next().await.unwrap().unwrap().into_data();
            assert_eq!(m[0], 0, "data channel");
            echoed.extend_from_slice(&m[1..]);
        }
        assert_eq!(echoed, b"hello");
        let live: serde_json::Value =
            serde_json::from_str(&get(s.admin.addr(), "/debug/sessions").await.body).unwrap();
        assert_eq!(live[0]["kind"], "portforward");
        assert_eq!(live[0]["protocol"], "channel");
        assert_eq!(live[0]["bytes"]["data"]["client_to_runtime"], 5);
        assert_eq!(live[0]["bytes"]["data"]["runtime_to_client"], 5);
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}

        // Tunnel mode (kubectl): the SPDY bytes go through untouched; a PING comes back as is.
        let (mut ws, token) =
            port_forward_client(&s.bridge, &s.sim, pod, "SPDY/3.1+portforward.k8s.io", "").await;
        tokens.push(token);
        let ping: &[u8] = &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
        ws.send(Message::Binary(ping.to_vec().into()))
            .await
            .unwrap();
        let mut back = Vec::new();
        while back.len() < ping.len() {
            back.extend_from_slice(&ws.next().await.unwrap().unwrap().into_data());
        }
        assert_eq!(back, ping);
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    })
    .await;
    until_no_session_is_active(&s.metrics).await;

    let m = get(s.admin.addr(), "/metrics").await.body;
    let ended = |protocol: &str, outcome: &str| {
        value(
            &m,
            "ws_spdy_bridge_sessions_ended_total",
            &[
                ("kind", "portforward"),
                ("protocol", protocol),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(ended("channel", "success"), 1.0);
    assert_eq!(ended("tunnel", "success"), 1.0);
    let bytes = |channel: &str, direction: &str| {
        value(
            &m,
            "ws_spdy_bridge_bytes_total",
            &[
                ("kind", "portforward"),
                ("channel", channel),
                ("direction", direction),
            ],
        )
    };
    assert_eq!(bytes("data", "client_to_runtime"), 5.0);
    assert_eq!(bytes("data", "runtime_to_client"), 5.0);
    // The tunnel wrote the PING and whatever the client's Close left queued (nothing here).
    assert_eq!(bytes("tunnel", "client_to_runtime"), 12.0);
    assert!(bytes("tunnel", "runtime_to_client") >= 12.0);
    assert_eq!(
        value(
            &m,
            "ws_spdy_bridge_upstream_upgrade_duration_seconds_count",
            &[("kind", "portforward")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "ws_spdy_bridge_sessions_active",
            &[("kind", "portforward")]
        ),
        0.0
    );
    assert_no_token("/metrics", &m, &tokens);
    promtool_check(&m);
    assert_no_token("the logs", &log_text(), &tokens);

    s.admin.shutdown().await;
    s.bridge.shutdown().await;
    s.sim.shutdown().await;
}

#[tokio::test]
async fn cri_calls_are_counted_and_cri_readiness_probes_the_runtime_socket() {
    logs();
    let dir = std::env::temp_dir().join(format!("ws-spdy-bridge-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime_path = dir.join("runtime.sock");
    let runtime = fake_grpc::start(runtime_path.clone(), |_req| async {
        fake_grpc::trailers_only(12, "not here")
    })
    .await;

    let metrics = Arc::new(Metrics::new());
    let listen = dir.join("bridge.sock");
    let mut cfg = CriProxyConfig::new(
        &listen,
        &runtime_path,
        "http://127.0.0.1:8765".parse().unwrap(),
    );
    cfg.metrics = Some(metrics.clone());
    let store = Arc::new(cfg.token_store());
    let proxy = ws_spdy_bridge::cri::serve(cfg, store).await.unwrap();
    let cri = CriClient::connect_unix(&listen).await.unwrap();
    assert!(cri.version().await.is_err());
    assert!(cri.list_containers(None).await.is_err());
    assert!(
        cri.exec(ws_spdy_bridge::cri::proto::ExecRequest {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .is_err()
    );
    assert!(
        cri.unary_raw("/grpc.health.v1.Health/Check", Default::default())
            .await
            .is_err()
    );
    let m = metrics.encode();
    let calls = |method: &str, intercepted: &str| {
        value(
            &m,
            "ws_spdy_bridge_cri_calls_total",
            &[("method", method), ("intercepted", intercepted)],
        )
    };
    assert_eq!(calls("Version", "false"), 1.0);
    assert_eq!(calls("ListContainers", "false"), 1.0);
    assert_eq!(calls("Exec", "true"), 1.0);
    assert_eq!(calls("other", "false"), 1.0);

    let ready = ReadyCheck::cri(&runtime_path);
    ready.set_listener("cri", true);
    assert_eq!(ready.check().await, Ok(()));
    drop(runtime);
    let why = ready.check().await.unwrap_err();
    assert!(why.contains("runtime socket"), "{why}");

    proxy.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
