//! Behaviour of the bridge's exec/attach translation (Mode A, protocol.md §4, §5, §13.3), one
//! test or more per item of the conformance checklist C-01…C-70 (§14.1–§14.9). Real TCP
//! throughout: a raw WebSocket client in front of the bridge, and behind it either the
//! legacy-runtime simulator or a scripted fake runtime that records every frame the bridge
//! sends (`tests/support/bridge_harness.rs`).
//!
//! The bridge's default order is validate → upgrade the runtime → 101, so a runtime refusal is
//! an HTTP error there; the *(compat)* items that depend on the API server's order (C-12,
//! C-20, C-53…C-57) run with `compat_upgrade_client_first`. A runtime that vanishes without a
//! status is a Failure unless `compat_upstream_loss_is_success`; C-48 and C-61 test both.

#[path = "support/bridge_harness.rs"]
mod bridge_harness;

use std::time::{Duration, Instant};

use bridge_harness::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use ws_spdy_bridge::channel::outcome::Outcome;
use ws_spdy_bridge::runtime_sim::{AttachRequest, ContainerSpec};
use ws_spdy_bridge::server::BridgeConfig;
use ws_spdy_bridge::spdy::{Frame, GoAwayStatus, RstStatus};
use ws_spdy_bridge::status::Status;
use ws_spdy_bridge::wsclient;

const EXIT_42: &str = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: command terminated with exit code 42","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"42"}]}}"#;
/// What the bridge reports when the runtime vanished without a status (its default).
const LOST: &str = "error reading from error stream: the connection to the runtime was lost";
const SHORT: Duration = Duration::from_millis(100);

/// A bridge in front of `upstream` in the API server's order (101 first).
fn compat_config(upstream: &str) -> BridgeConfig {
    BridgeConfig {
        compat_upgrade_client_first: true,
        ..bridge_config(upstream)
    }
}

/// The exec options of a full session: stdin, stdout, stderr, no tty.
fn all_streams() -> String {
    fake_path(true, true, true, false)
}

/// Runs one simulator exec through the bridge with `input` on stdin (then CLOSE), and returns
/// everything the bridge sent.
async fn sim_session(
    bridge: &ws_spdy_bridge::server::Bridge,
    sim: &ws_spdy_bridge::runtime_sim::RuntimeSim,
    req: ws_spdy_bridge::runtime_sim::ExecRequest,
    input: &[u8],
) -> Transcript {
    let url = sim.exec(req.clone()).unwrap();
    let mut ws = upgrade(bridge.addr(), &bridge_path(&url, &req)).await;
    if !input.is_empty() {
        ws.stdin(input).await;
    }
    // On a terminal, the end of stdin detaches the output (containerd's behaviour): leave it
    // open and let the process end the session.
    if req.stdin && !req.tty {
        ws.close_stdin().await;
    }
    ws.read_to_end().await
}

// ---------------------------------------------------------------------------------------------
// §14.1 WebSocket handshake

/// C-01: v5 offered alone, anywhere in a comma list, or on a later header line: 101 with
/// exactly the headers x/net/websocket writes.
#[tokio::test]
async fn c01_v5_offer_in_any_position_gets_101_with_exact_headers() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let offers: [&[&str]; 4] = [
            &[V5],
            &["foo, v5.channel.k8s.io"],
            &["v4.channel.k8s.io,v5.channel.k8s.io , bar"],
            &["foo", V5],
        ];
        for lines in offers {
            let req = exec(&["true"], false, true, false, false);
            let url = sim.exec(req.clone()).unwrap();
            let creq = ClientRequest::v5(bridge_path(&url, &req)).protocols(lines);
            let (resp, mut ws) = handshake(bridge.addr(), &creq).await;
            assert_eq!(resp.status, 101, "offer {lines:?}");
            assert_eq!(resp.header_all("upgrade"), ["websocket"]);
            assert_eq!(resp.header_all("connection"), ["Upgrade"], "exact value");
            // RFC 6455's own example key and answer.
            assert_eq!(
                resp.header("sec-websocket-accept"),
                Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            );
            assert_eq!(
                resp.header("sec-websocket-accept").unwrap(),
                derive_accept_key(creq.key.as_bytes())
            );
            assert_eq!(resp.header_all("sec-websocket-protocol"), [V5]);
            ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        }
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-02: kube-rs's offer `v5, v4` selects v5.
#[tokio::test]
async fn c02_kube_rs_offer_selects_v5() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(&["true"], false, true, false, false);
        let url = sim.exec(req.clone()).unwrap();
        let creq = ClientRequest::v5(bridge_path(&url, &req))
            .protocols(&["v5.channel.k8s.io, v4.channel.k8s.io"]);
        let (resp, mut ws) = handshake(bridge.addr(), &creq).await;
        assert_eq!(resp.status, 101);
        assert_eq!(resp.header("sec-websocket-protocol"), Some(V5));
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-03: only protocols nobody serves for exec: 403 with an empty body, and the runtime is
/// never contacted. (`v4.channel.k8s.io` alone is a legacy protocol the bridge always passes
/// through, Mode C: see `c03_legacy_only_offer_is_passed_through_not_translated`.)
#[tokio::test]
async fn c03_unsupported_protocols_get_403_empty_body_without_upstream() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        for lines in [
            &["foo"][..],
            &["foo, v6.channel.k8s.io"],
            &["v3.channel.k8s.io"],
        ] {
            let creq = ClientRequest::v5(all_streams()).protocols(lines);
            let (resp, ws) = handshake(bridge.addr(), &creq).await;
            assert_eq!(resp.status, 403, "offer {lines:?}");
            assert!(resp.body.is_empty(), "empty body: {:?}", resp.body);
            assert!(resp.header("sec-websocket-protocol").is_none());
            drop(ws);
        }
        fake.expect_no_request(SHORT).await;
        bridge.shutdown().await;
    })
    .await
}

/// C-03 (deviation): with no v5 offered, a legacy protocol is relayed to the runtime's own
/// WebSocket server untouched (Mode C has no off switch), never translated.
#[tokio::test]
async fn c03_legacy_only_offer_is_passed_through_not_translated() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let creq = ClientRequest::v5(all_streams()).protocols(&[V4]);
        let runtime = async {
            let p = fake.request().await;
            assert_eq!(p.head.method, "GET");
            assert_eq!(p.head.header("upgrade"), Some("websocket"));
            assert_eq!(p.head.header("sec-websocket-protocol"), Some(V4));
            p.refuse("403 Forbidden", &[], "").await;
        };
        let ((resp, _ws), ()) = tokio::join!(handshake(bridge.addr(), &creq), runtime);
        assert_eq!(resp.status, 403);
        bridge.shutdown().await;
    })
    .await
}

/// C-04: a WebSocket upgrade with POST: 405, runtime never contacted.
#[tokio::test]
async fn c04_post_upgrade_gets_405_without_upstream() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let creq = ClientRequest::v5(all_streams()).method("POST");
        let (resp, _ws) = handshake(bridge.addr(), &creq).await;
        assert_eq!(resp.status, 405);
        fake.expect_no_request(SHORT).await;
        bridge.shutdown().await;
    })
    .await
}

/// C-05: `Sec-WebSocket-Version: 99`: 400 naming version 13, runtime never contacted.
#[tokio::test]
async fn c05_wrong_websocket_version_gets_400_naming_13() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let creq = ClientRequest::v5(all_streams()).version("99");
        let (resp, _ws) = handshake(bridge.addr(), &creq).await;
        assert_eq!(resp.status, 400);
        assert_eq!(resp.header("sec-websocket-version"), Some("13"));
        fake.expect_no_request(SHORT).await;
        bridge.shutdown().await;
    })
    .await
}

/// C-06: an offered `permessage-deflate` is not negotiated; no frame has RSV1 set.
#[tokio::test]
async fn c06_permessage_deflate_is_never_negotiated() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(
            &["sh", "-c", "echo hello; echo oops >&2"],
            false,
            true,
            true,
            false,
        );
        let url = sim.exec(req.clone()).unwrap();
        let creq = ClientRequest::v5(bridge_path(&url, &req)).header(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        );
        let (resp, mut ws) = handshake(bridge.addr(), &creq).await;
        assert_eq!(resp.status, 101);
        assert!(resp.header("sec-websocket-extensions").is_none());
        let t = ws.read_to_end().await;
        assert!(t.frames.iter().all(|f| f.rsv == (false, false, false)));
        assert_eq!(t.channel(1), b"hello\n");
        assert_eq!(t.channel(2), b"oops\n");
        t.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// §14.2 Session start

/// C-09: with stdout requested, the first message after the 101 is exactly the binary `01`.
#[tokio::test]
async fn c09_first_message_is_stdout_channel_only() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        for req in [
            exec(&["true"], false, true, false, false),
            exec(&["true"], true, true, true, false),
            exec(&["true"], true, true, false, true),
        ] {
            let url = sim.exec(req.clone()).unwrap();
            let mut ws = upgrade(bridge.addr(), &bridge_path(&url, &req)).await;
            let first = ws.read_frame().await;
            assert_eq!(first.opcode, OpCode::Data(Data::Binary));
            assert!(first.fin);
            assert_eq!(&first.payload[..], [1], "{req:?}");
            if req.stdin {
                ws.close_stdin().await;
            }
            ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        }
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-10: only stderr requested: `02`; neither stdout nor stderr: `03`.
#[tokio::test]
async fn c10_first_message_without_stdout_is_stderr_or_error_channel() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        for (req, first) in [
            (exec(&["true"], false, false, true, false), 2u8),
            (exec(&["true"], true, false, true, false), 2),
            (exec(&["cat"], true, false, false, false), 3),
        ] {
            let url = sim.exec(req.clone()).unwrap();
            let mut ws = upgrade(bridge.addr(), &bridge_path(&url, &req)).await;
            let f = ws.read_frame().await;
            assert_eq!(f.opcode, OpCode::Data(Data::Binary));
            assert_eq!(&f.payload[..], [first], "{req:?}");
            if req.stdin {
                ws.close_stdin().await;
            }
            ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        }
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-11: the upstream request: POST to the runtime path (query dropped), `Connection: Upgrade`,
/// `Upgrade: SPDY/3.1`, the five protocol lines in client-go's order, no body, none of the
/// client's credentials.
#[tokio::test]
async fn c11_upstream_request_has_client_go_shape_and_no_credentials() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let creq = ClientRequest::v5(format!("{}&command=sh", all_streams()))
            .header("Authorization", "Bearer secret-token")
            .header("Cookie", "session=secret")
            .header("Impersonate-User", "admin")
            .header("X-Remote-User", "admin");
        let runtime = async {
            let p = fake.request().await;
            let h = p.head.clone();
            assert_eq!(h.method, "POST");
            assert_eq!(h.path, format!("/exec/{TOKEN}"));
            assert_eq!(h.header_all("connection"), ["Upgrade"]);
            assert_eq!(h.header_all("upgrade"), ["SPDY/3.1"]);
            assert_eq!(
                h.header_all("x-stream-protocol-version"),
                [
                    "v5.channel.k8s.io",
                    "v4.channel.k8s.io",
                    "v3.channel.k8s.io",
                    "v2.channel.k8s.io",
                    "channel.k8s.io"
                ]
            );
            assert!(h.header("transfer-encoding").is_none());
            assert!(matches!(h.header("content-length"), None | Some("0")));
            assert!(p.early.is_empty(), "no body: {:?}", p.early);
            for secret in [
                "authorization",
                "cookie",
                "impersonate-user",
                "x-remote-user",
                "sec-websocket-key",
            ] {
                assert!(h.header(secret).is_none(), "{secret} forwarded");
            }
            assert!(
                !h.headers.iter().any(|(_, v)| v.contains("secret")),
                "{h:?}"
            );
            p.refuse("404 Not Found", &[], "404 page not found\n").await;
        };
        let ((resp, _), ()) = tokio::join!(handshake(bridge.addr(), &creq), runtime);
        assert_eq!(resp.status, 404);
        bridge.shutdown().await;
    })
    .await
}

/// C-12 (compat): in the API server's order the 101 and the initial message reach the client
/// while the runtime has not even answered the upgrade.
#[tokio::test]
async fn c12_compat_order_answers_101_before_the_runtime_answers() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(compat_config(&fake.url())).await;
        let mut ws = upgrade(bridge.addr(), &fake_path(false, true, false, false)).await;
        // The runtime holds its answer; the client already has its 101 and initial message.
        let pending = fake.request().await;
        assert_eq!(&ws.read_frame().await.payload[..], [1]);
        let mut peer = pending.upgrade(Some(V4)).await;
        let ids = peer.accept_streams(&["error", "stdout"]).await;
        peer.data(ids[1], b"late\n", true).await;
        peer.finish(SUCCESS, &[ids[0]]).await;
        let t = ws.read_to_end().await;
        assert_eq!(t.channel(1), b"late\n");
        t.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-12 (default order, the documented deviation): the runtime is upgraded first; when its
/// request arrives the client has received nothing at all.
#[tokio::test]
async fn c12_default_order_upgrades_the_runtime_before_the_101() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let mut tcp = tokio::net::TcpStream::connect(bridge.addr()).await.unwrap();
        send_request(
            &mut tcp,
            bridge.addr(),
            &ClientRequest::v5(fake_path(false, true, false, false)),
        )
        .await;
        let pending = fake.request().await;
        let mut probe = [0u8; 1];
        assert_eq!(
            tcp.try_read(&mut probe).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "nothing is sent to the client before the runtime answered"
        );
        let mut peer = pending.upgrade(Some(V4)).await;
        let ids = peer.accept_streams(&["error", "stdout"]).await;
        let (resp, mut ws) = read_response(tcp).await;
        assert_eq!(resp.status, 101);
        assert_eq!(&ws.read_frame().await.payload[..], [1]);
        peer.finish(SUCCESS, &ids).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-13: one upstream upgrade attempt per client session, refused or not, in both orders;
/// never a retry or a probe with the same token.
#[tokio::test]
async fn c13_exactly_one_upstream_attempt_per_session() {
    bounded(async {
        for compat in [false, true] {
            let mut fake = FakeRuntime::start().await;
            let cfg = if compat {
                compat_config(&fake.url())
            } else {
                bridge_config(&fake.url())
            };
            let bridge = start_bridge(cfg).await;
            let runtime = async {
                fake.request()
                    .await
                    .refuse("500 Internal Server Error", &[], "boom\n")
                    .await;
            };
            let ((resp, mut ws), ()) = tokio::join!(
                handshake(bridge.addr(), &ClientRequest::v5(all_streams())),
                runtime
            );
            if compat {
                assert_eq!(resp.status, 101);
                let t = ws.read_to_end().await;
                assert_eq!(t.status().code, 500);
                t.assert_clean_end(None);
            } else {
                assert_eq!(resp.status, 500);
            }
            // A successful session too.
            let runtime = async {
                let mut peer = fake.request().await.upgrade(Some(V4)).await;
                let ids = peer.accept_streams(&["error", "stdout"]).await;
                peer.finish(SUCCESS, &ids).await;
            };
            let (mut ws, ()) = tokio::join!(
                upgrade(bridge.addr(), &fake_path(false, true, false, false)),
                runtime
            );
            ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
            bridge.shutdown().await;
            assert_eq!(fake.connections(), 2, "compat={compat}");
            assert!(fake.try_request().is_none());
        }
    })
    .await
}

/// C-14: stdin, stdout and stderr without a tty: SYN_STREAMs 1, 3, 5, 7 = error, stdin,
/// stdout, stderr, each sent only after the previous one's SYN_REPLY; no resize.
#[tokio::test]
async fn c14_streams_are_created_in_order_one_reply_at_a_time() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let runtime = async {
            let mut peer = fake.request().await.upgrade(Some(V4)).await;
            let mut ids = Vec::new();
            for kind in ["error", "stdin", "stdout", "stderr"] {
                let id = peer.expect_syn(kind).await;
                // The next SYN_STREAM waits for this reply.
                peer.expect_silence(Duration::from_millis(50)).await;
                peer.reply(id).await;
                ids.push(id);
            }
            assert_eq!(ids, [1, 3, 5, 7]);
            peer
        };
        let (mut ws, mut peer) = tokio::join!(upgrade(bridge.addr(), &all_streams()), runtime);
        peer.expect_silence(SHORT).await;
        peer.finish(SUCCESS, &[1, 3, 5, 7]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-15: stdin, stdout and a tty, negotiated v4: 1, 3, 5, 7 = error, stdin, stdout, resize.
#[tokio::test]
async fn c15_tty_session_creates_resize_instead_of_stderr() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        // stderr=true with a tty is dropped, as the kubelet does.
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(true, true, true, true),
            Some(V4),
            &["error", "stdin", "stdout", "resize"],
        )
        .await;
        assert_eq!(
            [
                peer.id("error"),
                peer.id("stdin"),
                peer.id("stdout"),
                peer.id("resize")
            ],
            [1, 3, 5, 7]
        );
        peer.expect_silence(SHORT).await;
        peer.finish(SUCCESS, &[1, 3, 5, 7]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-16: negotiated v2 with a tty: no resize stream.
#[tokio::test]
async fn c16_v2_tty_session_has_no_resize_stream() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(true, true, false, true),
            Some(V2),
            &["error", "stdin", "stdout"],
        )
        .await;
        // Resizes have nowhere to go and are dropped.
        ws.resize(r#"{"Width":80,"Height":24}"#).await;
        ws.stdin(b"x").await;
        assert_eq!(peer.read_data(3, 1).await, b"x");
        peer.expect_silence(SHORT).await;
        // v2: success is an empty error stream.
        peer.rst(1, RstStatus::CANCEL).await;
        peer.rst(3, RstStatus::CANCEL).await;
        peer.data(5, b"", true).await;
        peer.goaway(5).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-17: the streams created are exactly those of the runtime-side request, for every
/// combination a CRI request can have: the simulator (which waits for exactly that set and
/// abandons the session otherwise) runs each to completion.
#[tokio::test]
async fn c17_stream_set_matches_the_cri_request() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let sh = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
        let cases = [
            // (stdin, stdout, stderr, tty, command, stdout, stderr)
            (false, true, false, false, sh("echo out"), "out\n", ""),
            (false, false, true, false, sh("echo err >&2"), "", "err\n"),
            (
                false,
                true,
                true,
                false,
                sh("echo out; echo err >&2"),
                "out\n",
                "err\n",
            ),
            (true, false, false, false, sh("cat >/dev/null"), "", ""),
            (true, true, false, false, sh("cat"), "in", ""),
            (
                true,
                true,
                true,
                false,
                sh("cat; echo err >&2"),
                "in",
                "err\n",
            ),
            (false, true, false, true, sh("echo tty"), "tty\r\n", ""),
            (true, true, false, true, sh("echo tty"), "tty\r\n", ""),
        ];
        for (stdin, stdout, stderr, tty, cmd, out, err) in cases {
            let req = ws_spdy_bridge::runtime_sim::ExecRequest {
                container_id: "ctr".into(),
                cmd,
                stdin,
                stdout,
                stderr,
                tty,
            };
            let input: &[u8] = if tty { b"" } else { b"in" };
            let t = sim_session(&bridge, &sim, req.clone(), input).await;
            assert_eq!(String::from_utf8_lossy(&t.channel(1)), out, "{req:?}");
            assert_eq!(String::from_utf8_lossy(&t.channel(2)), err, "{req:?}");
            t.assert_clean_end(Some(SUCCESS));
        }
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-17 for attach: the attach route creates the attach request's streams; the container's
/// output is relayed, and the end of stdin detaches with Success (the container keeps running).
#[tokio::test]
async fn c17_attach_relays_the_container_and_detaches_on_close() {
    bounded(async {
        let sim = sim().await;
        sim.create_container(ContainerSpec {
            id: "web".into(),
            command: vec!["cat".into()],
            tty: false,
            stdin: true,
        })
        .unwrap();
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        for round in 0..2 {
            let url = sim
                .attach(AttachRequest {
                    container_id: "web".into(),
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    tty: false,
                })
                .unwrap();
            let path = url.split_once("/attach/").unwrap().1;
            let path = format!("/attach/{path}?{}", query(true, true, true, false));
            let mut ws = upgrade(bridge.addr(), path).await;
            let line = format!("round {round}\n");
            ws.stdin(line.as_bytes()).await;
            assert_eq!(ws.read_channel(1, line.len()).await, line.as_bytes());
            ws.close_stdin().await;
            ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        }
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-18: SYN_STREAM encoding: version 3, flags 0, associated id 0, priority 0, slot 0, one
/// lower-case `streamtype` header; the blocks form one zlib stream whose first block names
/// the SPDY dictionary (`78 f9`, DICTID `e3 c6 a7 c2`).
#[tokio::test]
async fn c18_syn_stream_encoding_matches_spdystream() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let runtime = async {
            let mut peer = fake.request().await.upgrade(Some(V4)).await;
            let mut raws = Vec::new();
            for kind in ["error", "stdin", "stdout", "stderr"] {
                let r = peer.frame().await;
                let Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    fin,
                    unidirectional,
                    headers,
                } = r.frame
                else {
                    panic!("not a SYN_STREAM: {:?}", r.frame);
                };
                assert_eq!((associated_to, priority, slot), (0, 0, 0));
                assert!(!fin && !unidirectional);
                let pairs: Vec<(&str, &[u8])> = headers.iter().collect();
                assert_eq!(pairs, [("streamtype", kind.as_bytes())]);
                // Control bit, version 3, type 1, flags 0.
                assert_eq!(&r.raw[..5], [0x80, 0x03, 0x00, 0x01, 0x00]);
                assert_eq!(&r.raw[8..12], stream_id.to_be_bytes());
                assert_eq!(&r.raw[12..18], [0, 0, 0, 0, 0, 0]);
                peer.streams.insert(kind.to_owned(), stream_id);
                peer.reply(stream_id).await;
                raws.push(r.raw);
            }
            let first = &raws[0][18..];
            assert_eq!(&first[..2], [0x78, 0xf9], "zlib header with FDICT");
            assert_ne!(first[1] & 0x20, 0, "FDICT bit");
            assert_eq!(&first[2..6], [0xe3, 0xc6, 0xa7, 0xc2], "SPDY dictionary id");
            for later in &raws[1..] {
                assert_ne!(&later[18..20], [0x78, 0xf9], "one zlib stream, one header");
            }
            peer
        };
        let (mut ws, mut peer) = tokio::join!(upgrade(bridge.addr(), &all_streams()), runtime);
        peer.finish(SUCCESS, &[1, 3, 5, 7]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-19: over a whole session (stdin, resizes, CLOSE, pings, teardown) the bridge sends only
/// SYN_STREAM, DATA, RST_STREAM, PING and GOAWAY: never SETTINGS, WINDOW_UPDATE or HEADERS.
#[tokio::test]
async fn c19_only_frames_spdystream_tolerates_are_sent() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let mut cfg = bridge_config(&fake.url());
        cfg.connection.ping_interval = Some(Duration::from_millis(20));
        let bridge = start_bridge(cfg).await;
        let runtime = async {
            let mut peer = fake.request().await.upgrade(Some(V4)).await;
            peer.skip_pings = true;
            peer.accept_streams(&["error", "stdin", "stdout", "resize"])
                .await;
            peer
        };
        let (mut ws, mut peer) = tokio::join!(
            upgrade(bridge.addr(), &fake_path(true, true, false, true)),
            runtime
        );
        ws.stdin(&vec![b'a'; 100_000]).await;
        ws.resize(r#"{"Width":10,"Height":20}"#).await;
        ws.close_stdin().await;
        let (stdin, _) = peer.read_until_fin(3).await;
        assert_eq!(stdin.len(), 100_000);
        peer.data(5, b"out", false).await;
        // Long enough for a few pings.
        peer.drain_for(Duration::from_millis(100)).await;
        peer.data(1, SUCCESS.as_bytes(), true).await;
        peer.data(5, b"", true).await;
        let (_, closed) = peer.until_closed().await;
        assert_eq!(closed, None);
        let t = ws.read_to_end().await;
        t.assert_clean_end(Some(SUCCESS));
        assert!(peer.log.iter().any(|f| matches!(f, Frame::Ping { .. })));
        assert!(peer.log.iter().any(|f| matches!(f, Frame::GoAway { .. })));
        for f in &peer.log {
            assert!(
                matches!(
                    f,
                    Frame::SynStream { .. }
                        | Frame::Data { .. }
                        | Frame::RstStream { .. }
                        | Frame::Ping { .. }
                        | Frame::GoAway { .. }
                ),
                "forbidden frame {f:?}"
            );
        }
        bridge.shutdown().await;
    })
    .await
}

/// C-20 (compat): stdin sent before the runtime has even answered the upgrade is delivered,
/// complete and in order, once the stdin stream exists, and the CLOSE after it becomes FIN.
#[tokio::test]
async fn c20_stdin_before_streams_exist_is_delivered_in_order() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(compat_config(&fake.url())).await;
        let mut ws = upgrade(bridge.addr(), &all_streams()).await;
        let pending = fake.request().await;
        assert_eq!(&ws.read_frame().await.payload[..], [1]);
        ws.stdin(b"early ").await;
        ws.stdin(b"bird").await;
        ws.close_stdin().await;
        let mut peer = pending.upgrade(Some(V4)).await;
        peer.accept_streams(&["error", "stdin", "stdout", "stderr"])
            .await;
        let (stdin, _) = peer.read_until_fin(3).await;
        assert_eq!(stdin, b"early bird");
        peer.finish(SUCCESS, &[1, 5, 7]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// §14.3 Data relay

/// A deterministic byte pattern.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// C-21: 1 MiB of stdin through `cat` (a runtime that never sends WINDOW_UPDATE): nothing
/// stalls, and the echo comes back byte for byte on `01`.
#[tokio::test]
async fn c21_one_mib_of_stdin_is_echoed_intact() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(&["cat"], true, true, false, false);
        let url = sim.exec(req.clone()).unwrap();
        let ws = tungstenite_client(bridge.addr(), &bridge_path(&url, &req)).await;
        let (mut sink, mut stream) = ws.split();
        let input = pattern(1 << 20);
        let writer = {
            let input = input.clone();
            tokio::spawn(async move {
                for chunk in input.chunks(32 * 1024) {
                    let mut msg = vec![0u8];
                    msg.extend_from_slice(chunk);
                    sink.send(Message::Binary(msg.into())).await.unwrap();
                }
                sink.send(Message::Binary(Bytes::from_static(&[0xff, 0])))
                    .await
                    .unwrap();
                sink
            })
        };
        let mut out = Vec::new();
        let mut status = None;
        while let Some(msg) = stream.next().await {
            match msg.unwrap() {
                Message::Binary(b) if b[0] == 1 => out.extend_from_slice(&b[1..]),
                Message::Binary(b) if b[0] == 3 => status = Some(b.slice(1..)),
                Message::Close(Some(c)) => assert_eq!(u16::from(c.code), 1000),
                _ => {}
            }
        }
        let _sink = writer.await.unwrap();
        assert_eq!(out.len(), input.len());
        assert!(out == input, "echo differs");
        assert_eq!(status.as_deref(), Some(SUCCESS.as_bytes()));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-22: a 10 MiB stdout burst in 32 KiB DATA frames reaches the client intact; meanwhile the
/// bridge sends the runtime no WINDOW_UPDATE and no RST (FLOW_CONTROL_ERROR or other).
#[tokio::test]
async fn c22_ten_mib_stdout_burst_is_delivered_without_flow_control() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(false, true, false, false),
            Some(V4),
            &["error", "stdout"],
        )
        .await;
        let data = pattern(10 << 20);
        let send = async {
            for chunk in data.chunks(32 * 1024) {
                peer.data(3, chunk, false).await;
            }
            peer.data(3, b"", true).await;
            peer.finish(SUCCESS, &[1]).await;
        };
        let (t, ()) = tokio::join!(ws.read_to_end(), send);
        let out = t.channel(1);
        assert_eq!(out.len(), data.len());
        assert!(out == data, "stdout differs");
        t.assert_clean_end(Some(SUCCESS));
        let (frames, _) = peer.until_closed().await;
        for f in peer.log.iter().chain(&frames) {
            assert!(
                !matches!(f, Frame::WindowUpdate { .. } | Frame::RstStream { .. }),
                "{f:?}"
            );
        }
        bridge.shutdown().await;
    })
    .await
}

/// C-23: stdin DATA frames carry at most 32 KiB each, whatever the client's message size, and
/// concatenate to the input.
#[tokio::test]
async fn c23_stdin_data_frames_are_at_most_32_kib() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &all_streams(),
            Some(V4),
            &["error", "stdin", "stdout", "stderr"],
        )
        .await;
        let input = pattern(300_000);
        let (read, ()) = tokio::join!(peer.read_until_fin(3), async {
            for piece in [&input[..1], &input[1..100_001], &input[100_001..200_000]] {
                ws.stdin(piece).await;
            }
            ws.stdin(&input[200_000..]).await;
            ws.close_stdin().await;
        });
        let (got, sizes) = read;
        assert!(got == input, "stdin differs");
        assert!(sizes.iter().all(|&n| n <= 32 * 1024), "{sizes:?}");
        assert_eq!(sizes.last(), Some(&0), "ends with an empty FIN frame");
        peer.finish(SUCCESS, &[1, 5, 7]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-24: one upstream DATA frame larger than the outbound cap becomes several `01` messages
/// of at most 1 + 32 KiB, concatenating to the payload.
#[tokio::test]
async fn c24_large_upstream_frame_is_split_into_capped_messages() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(false, true, false, false),
            Some(V4),
            &["error", "stdout"],
        )
        .await;
        let big = pattern(100_000);
        peer.data(3, &big, true).await;
        peer.finish(SUCCESS, &[1]).await;
        let t = ws.read_to_end().await;
        let out: Vec<Bytes> = t.messages().into_iter().filter(|m| m[0] == 1).collect();
        // The initial message, then at least four pieces (the bridge relays DATA as it
        // arrives, so a frame that came in several reads gives more).
        assert!(out.len() >= 5, "{} messages", out.len());
        assert!(
            out[1..]
                .iter()
                .all(|m| m.len() > 1 && m.len() <= 1 + 32 * 1024)
        );
        assert!(t.channel(1) == big);
        t.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-25: every message the bridge sends is binary, one unmasked frame, at least one byte, on
/// channel 1, 2 or 3.
#[tokio::test]
async fn c25_outbound_messages_are_single_binary_frames_on_output_channels() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(
            &[
                "sh",
                "-c",
                "echo out; echo err >&2; head -c 200000 /dev/zero; cat",
            ],
            true,
            true,
            true,
            false,
        );
        let t = sim_session(&bridge, &sim, req, &pattern(70_000)).await;
        assert_eq!(t.channel(1).len(), 4 + 200_000 + 70_000);
        for f in &t.frames {
            assert!(f.fin, "single frame");
            assert!(!f.masked, "servers never mask");
            if f.is_data() {
                assert_eq!(f.opcode, OpCode::Data(Data::Binary));
                assert!(!f.payload.is_empty());
                assert!((1..=3).contains(&f.payload[0]), "channel {}", f.payload[0]);
            }
        }
        t.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-26: client data on channels 1, 2, 3 and ≥ 5 is dropped; the session goes on.
#[tokio::test]
async fn c26_client_data_on_other_channels_is_ignored() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(&["cat"], true, true, true, false);
        let url = sim.exec(req.clone()).unwrap();
        let mut ws = upgrade(bridge.addr(), &bridge_path(&url, &req)).await;
        for ch in [1u8, 2, 3, 5, 6, 100, 254] {
            ws.binary(&[ch, b'X']).await;
            ws.binary(&[ch]).await;
        }
        ws.stdin(b"ok\n").await;
        ws.close_stdin().await;
        let t = ws.read_to_end().await;
        assert_eq!(t.channel(1), b"ok\n");
        assert_eq!(t.channel(2), b"");
        t.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-27: a message fragmented into binary + continuation frames (with a ping between the
/// fragments, and a split right after the channel byte) is reassembled and handled as one.
#[tokio::test]
async fn c27_fragmented_messages_are_reassembled() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(&["cat"], true, true, false, false);
        let url = sim.exec(req.clone()).unwrap();
        let mut ws = upgrade(bridge.addr(), &bridge_path(&url, &req)).await;
        let binary = OpCode::Data(Data::Binary);
        let cont = OpCode::Data(Data::Continue);
        ws.send_frame(false, binary, b"\x00hel", true).await;
        ws.ping(b"between").await;
        ws.send_frame(false, cont, b"lo ", true).await;
        ws.send_frame(true, cont, b"world\n", true).await;
        ws.send_frame(false, binary, b"\x00", true).await;
        ws.send_frame(true, cont, b"second\n", true).await;
        // A CLOSE in two fragments is still a CLOSE.
        ws.send_frame(false, binary, b"\xff", true).await;
        ws.send_frame(true, cont, b"\x00", true).await;
        let t = ws.read_to_end().await;
        let pong = t
            .frames
            .iter()
            .find(|f| f.opcode == OpCode::Control(Control::Pong))
            .expect("pong");
        assert_eq!(&pong.payload[..], b"between");
        assert_eq!(t.channel(1), b"hello world\nsecond\n");
        t.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-28 (compat): a text frame `00`+data on v5 is treated exactly like a binary one, and so is
/// a text CLOSE `ff 00`, which is not UTF-8: like the kubelet's x/net/websocket server, the
/// bridge does not validate text payloads.
#[tokio::test]
async fn c28_text_frames_are_treated_like_binary() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(&["cat"], true, true, false, false);
        let url = sim.exec(req.clone()).unwrap();
        let mut ws = upgrade(bridge.addr(), &bridge_path(&url, &req)).await;
        let text = OpCode::Data(Data::Text);
        ws.send_frame(true, text, b"\x00typed as text\n", true)
            .await;
        ws.stdin(b"binary\n").await;
        // The CLOSE alone ends `cat`'s input: nothing else is sent.
        ws.send_frame(true, text, &[0xff, 0x00], true).await;
        let t = ws.read_to_end().await;
        assert_eq!(t.channel(1), b"typed as text\nbinary\n");
        t.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-29: while the runtime takes no stdin at all (its socket is not read), a client Ping is
/// answered with an identical Pong within 1 s.
#[tokio::test]
async fn c29_ping_is_answered_while_upstream_stdin_is_back_pressured() {
    bounded(async {
        let mut fake = FakeRuntime::start_with(Some(16 * 1024), None).await;
        let mut cfg = bridge_config(&fake.url());
        cfg.session.stdin_buffer = 16 << 20;
        let bridge = start_bridge(cfg).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(true, true, false, false),
            Some(V4),
            &["error", "stdin", "stdout"],
        )
        .await;
        peer.stop_reading();
        // More than the runtime side can absorb (SPDY write queue, socket buffers): the stdin
        // pump is blocked and the rest waits in the bridge's stdin buffer.
        let chunk = pattern(32 * 1024);
        for _ in 0..256 {
            ws.stdin(&chunk).await;
        }
        let started = Instant::now();
        ws.ping(b"are you there?").await;
        let pong = within(Duration::from_secs(1), "pong", async {
            loop {
                let f = ws.read_frame().await;
                if f.opcode == OpCode::Control(Control::Pong) {
                    return f;
                }
            }
        })
        .await;
        assert_eq!(&pong.payload[..], b"are you there?");
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(ws);
        drop(peer);
        bridge.shutdown().await;
    })
    .await
}

/// C-30: empty messages (binary or text, no channel byte) are ignored.
#[tokio::test]
async fn c30_empty_client_messages_are_ignored() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(&["cat"], true, true, false, false);
        let url = sim.exec(req.clone()).unwrap();
        let mut ws = upgrade(bridge.addr(), &bridge_path(&url, &req)).await;
        ws.binary(b"").await;
        ws.send_frame(true, OpCode::Data(Data::Text), b"", true)
            .await;
        ws.stdin(b"").await;
        ws.stdin(b"still here\n").await;
        ws.binary(b"").await;
        ws.close_stdin().await;
        let t = ws.read_to_end().await;
        assert_eq!(t.channel(1), b"still here\n");
        t.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// §14.4 v5 CLOSE

/// A stdin + stdout session against the fake runtime: streams error 1, stdin 3, stdout 5.
async fn stdin_session(
    bridge: &ws_spdy_bridge::server::Bridge,
    fake: &mut FakeRuntime,
) -> (WsClient, SpdyPeer) {
    session(
        bridge.addr(),
        fake,
        &fake_path(true, true, false, false),
        Some(V4),
        &["error", "stdin", "stdout"],
    )
    .await
}

/// C-31: `ff 00` after stdin data: upstream gets an empty DATA with FIN on stdin after all the
/// data; stdout keeps flowing afterwards.
#[tokio::test]
async fn c31_close_signal_half_closes_stdin_only() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        ws.stdin(b"x\n").await;
        ws.stdin(&pattern(50_000)).await;
        ws.close_stdin().await;
        let (data, sizes) = peer.read_until_fin(3).await;
        assert_eq!(data.len(), 2 + 50_000);
        assert_eq!(&data[..2], b"x\n");
        assert_eq!(sizes.last(), Some(&0), "FIN comes as an empty DATA frame");
        // Output still flows after the half-close.
        peer.data(5, b"after the FIN\n", false).await;
        assert_eq!(ws.read_channel(1, 14).await, b"after the FIN\n");
        peer.data(5, b"", true).await;
        peer.finish(SUCCESS, &[1]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-31 end to end: `echo x | cat` through the simulator with the crate's v5 client returns
/// `x` and exit status success.
#[tokio::test]
async fn c31_echo_into_cat_returns_the_input_and_success() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(&["cat"], true, true, false, false);
        let url = sim.exec(req.clone()).unwrap();
        let url = format!("ws://{}{}", bridge.addr(), bridge_path(&url, &req));
        let mut out = Vec::new();
        let outcome = wsclient::run(&url, Some(&b"x\n"[..]), &mut out, tokio::io::sink())
            .await
            .unwrap();
        assert_eq!(out, b"x\n");
        assert_eq!(outcome, Outcome::Success);
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-32: a second `ff 00` sends no second FIN and breaks nothing.
#[tokio::test]
async fn c32_repeated_close_sends_one_fin() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        ws.close_stdin().await;
        ws.close_stdin().await;
        ws.close_stdin().await;
        assert_eq!(peer.read_until_fin(3).await.0, b"");
        peer.expect_silence(SHORT).await;
        peer.data(5, b"alive", false).await;
        assert_eq!(ws.read_channel(1, 5).await, b"alive");
        peer.finish(SUCCESS, &[1, 5]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-33: stdin data after `ff 00` is dropped; the session goes on.
#[tokio::test]
async fn c33_stdin_after_close_is_dropped() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        ws.stdin(b"before").await;
        ws.close_stdin().await;
        ws.stdin(b"after").await;
        assert_eq!(peer.read_until_fin(3).await.0, b"before");
        peer.expect_silence(SHORT).await;
        peer.data(5, b"alive", false).await;
        assert_eq!(ws.read_channel(1, 5).await, b"alive");
        peer.finish(SUCCESS, &[1, 5]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// A tty session against the fake runtime: error 1, stdin 3, stdout 5, resize 7.
async fn tty_session(
    bridge: &ws_spdy_bridge::server::Bridge,
    fake: &mut FakeRuntime,
) -> (WsClient, SpdyPeer) {
    session(
        bridge.addr(),
        fake,
        &fake_path(true, true, false, true),
        Some(V4),
        &["error", "stdin", "stdout", "resize"],
    )
    .await
}

/// Reads resize DATA frames (stream 7) until stdin (stream 3) carries `marker`; every frame
/// must be one or the other. Returns the resize payloads, one per frame.
async fn resizes_until_marker(peer: &mut SpdyPeer, marker: &[u8]) -> Vec<String> {
    let mut resizes = Vec::new();
    let mut stdin = Vec::new();
    while stdin != marker {
        match peer.frame().await.frame {
            Frame::Data {
                stream_id: 7,
                payload,
                fin: false,
            } => resizes.push(String::from_utf8(payload.to_vec()).unwrap()),
            Frame::Data {
                stream_id: 3,
                payload,
                fin: false,
            } => stdin.extend_from_slice(&payload),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The resize pump is its own task: give a late resize the chance to show.
    match peer.frame_within(SHORT).await {
        None => {}
        Some(PeerEvent::Frame(r)) => match r.frame {
            Frame::Data {
                stream_id: 7,
                payload,
                ..
            } => resizes.push(String::from_utf8(payload.to_vec()).unwrap()),
            other => panic!("unexpected {other:?}"),
        },
        Some(e) => panic!("unexpected {e:?}"),
    }
    resizes
}

/// C-34: after `ff 04` no resize reaches the runtime; the session goes on.
#[tokio::test]
async fn c34_close_of_resize_stops_resizes() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = tty_session(&bridge, &mut fake).await;
        ws.resize(r#"{"Width":80,"Height":24}"#).await;
        ws.binary(&[0xff, 4]).await;
        ws.resize(r#"{"Width":100,"Height":30}"#).await;
        ws.stdin(b"marker").await;
        let resizes = resizes_until_marker(&mut peer, b"marker").await;
        assert_eq!(resizes, ["{\"Width\":80,\"Height\":24}\n"]);
        peer.data(5, b"alive", false).await;
        assert_eq!(ws.read_channel(1, 5).await, b"alive");
        peer.finish(SUCCESS, &[1, 3, 5, 7]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-35: `ff 01`, `ff 02`, `ff 03` have no observable effect.
#[tokio::test]
async fn c35_close_of_output_channels_has_no_effect() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        for ch in 1..=3 {
            ws.binary(&[0xff, ch]).await;
        }
        ws.stdin(b"still open").await;
        assert_eq!(peer.read_data(3, 10).await, b"still open");
        peer.expect_silence(SHORT).await;
        peer.data(5, b"out", false).await;
        assert_eq!(ws.read_channel(1, 3).await, b"out");
        peer.finish(SUCCESS, &[1, 3, 5]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// After a teardown without status: the runtime sees stdin half-closed (as after the client
/// went away) and then its connection torn down within the grace period.
async fn expect_client_gone_upstream(peer: &mut SpdyPeer, stdin_sent: &[u8]) {
    let (stdin, _) = peer.read_until_fin(3).await;
    assert_eq!(stdin, stdin_sent);
    let started = Instant::now();
    let (frames, closed) = peer.until_closed().await;
    assert!(
        started.elapsed() < Duration::from_millis(300 + 700),
        "torn down within the grace period"
    );
    assert_eq!(closed, None, "closed with FIN");
    assert!(
        frames.iter().any(|f| matches!(f, Frame::GoAway { .. })),
        "{frames:?}"
    );
}

/// C-36 (compat): `ff` alone, or `ff 00 00`: Close 1000 and no status; upstream as after a
/// client disconnect.
#[tokio::test]
async fn c36_malformed_close_tears_down_without_status() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        for bad in [&[0xff][..], &[0xff, 0, 0]] {
            let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
            ws.stdin(b"some").await;
            ws.binary(bad).await;
            let t = ws.expect_closed().await;
            assert_eq!(t.status_json(), None, "no status");
            assert_eq!(t.close(), Some((1000, String::new())));
            assert_eq!(
                t.messages(),
                [Bytes::from_static(&[1])],
                "only the initial message"
            );
            expect_client_gone_upstream(&mut peer, b"some").await;
        }
        bridge.shutdown().await;
    })
    .await
}

/// C-37 (compat): CLOSE for channel 5 or above: Close 1000 and no status.
#[tokio::test]
async fn c37_close_of_invalid_channel_tears_down_without_status() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        for ch in [5u8, 0xff] {
            let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
            ws.binary(&[0xff, ch]).await;
            let t = ws.expect_closed().await;
            assert_eq!(t.status_json(), None, "no status");
            assert_eq!(t.close(), Some((1000, String::new())));
            expect_client_gone_upstream(&mut peer, b"").await;
        }
        bridge.shutdown().await;
    })
    .await
}

/// C-38: `ff 00` when stdin was not requested has no effect.
#[tokio::test]
async fn c38_close_of_unrequested_stdin_has_no_effect() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(false, true, false, false),
            Some(V4),
            &["error", "stdout"],
        )
        .await;
        ws.close_stdin().await;
        ws.stdin(b"nowhere").await;
        peer.expect_silence(SHORT).await;
        peer.data(3, b"out", true).await;
        peer.finish(SUCCESS, &[1]).await;
        let t = ws.read_to_end().await;
        assert_eq!(t.channel(1), b"out");
        t.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// §14.5 Resize

/// C-39: `04{"Width":80,"Height":24}` becomes exactly `{"Width":80,"Height":24}\n` upstream.
#[tokio::test]
async fn c39_resize_is_relayed_as_canonical_json_line() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = tty_session(&bridge, &mut fake).await;
        ws.resize(r#"{"Width":80,"Height":24}"#).await;
        assert_eq!(
            peer.read_data(7, 25).await,
            b"{\"Width\":80,\"Height\":24}\n"
        );
        // client-go's own form, newline included, comes out the same.
        ws.resize("{\"Width\":132,\"Height\":43}\n").await;
        assert_eq!(
            peer.read_data(7, 26).await,
            b"{\"Width\":132,\"Height\":43}\n"
        );
        peer.finish(SUCCESS, &[1, 3, 5, 7]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-40: lower-case keys (and spaces, unknown fields) are re-encoded canonically.
#[tokio::test]
async fn c40_resize_keys_match_case_insensitively() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = tty_session(&bridge, &mut fake).await;
        ws.resize(r#"{"width":100,"height":30}"#).await;
        assert_eq!(
            peer.read_data(7, 26).await,
            b"{\"Width\":100,\"Height\":30}\n"
        );
        ws.resize(r#" { "HEIGHT" : 5 , "extra": [1], "wIdTh": 7 } "#)
            .await;
        assert_eq!(peer.read_data(7, 23).await, b"{\"Width\":7,\"Height\":5}\n");
        peer.finish(SUCCESS, &[1, 3, 5, 7]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-41: an object split across two messages gives one resize; two objects in one message give
/// two.
#[tokio::test]
async fn c41_resize_stream_is_decoded_across_message_boundaries() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = tty_session(&bridge, &mut fake).await;
        ws.resize(r#"{"Width":1"#).await;
        ws.resize(r#"2,"Height":34}"#).await;
        ws.resize(r#"{"Width":1,"Height":2}{"Width":3,"Height":4}"#)
            .await;
        ws.stdin(b"m").await;
        let resizes = resizes_until_marker(&mut peer, b"m").await;
        assert_eq!(
            resizes,
            [
                "{\"Width\":12,\"Height\":34}\n",
                "{\"Width\":1,\"Height\":2}\n",
                "{\"Width\":3,\"Height\":4}\n"
            ]
        );
        peer.finish(SUCCESS, &[1, 3, 5, 7]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-42: invalid JSON or a width above 65535 crashes nothing: later stdin, CLOSE and pings are
/// still processed (resizes are not: the first error ends them, as in the kubelet).
#[tokio::test]
async fn c42_bad_resize_ends_resizes_but_not_the_session() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        for bad in [
            r#"{"Width":70000,"Height":1}"#,
            "{nope",
            "[1,2]",
            "\"text\"",
        ] {
            let (mut ws, mut peer) = tty_session(&bridge, &mut fake).await;
            ws.resize(bad).await;
            ws.resize(r#"{"Width":1,"Height":1}"#).await;
            ws.stdin(b"after").await;
            ws.ping(b"p").await;
            ws.close_stdin().await;
            let (stdin, _) = peer.read_until_fin(3).await;
            assert_eq!(stdin, b"after", "{bad}");
            peer.expect_silence(SHORT).await;
            assert_eq!(ws.read_pong().await, "p", "{bad}");
            peer.finish(SUCCESS, &[1, 5, 7]).await;
            ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        }
        bridge.shutdown().await;
    })
    .await
}

/// C-43: resize messages without a tty are ignored and never block the reader: stdin and a
/// ping after a thousand of them go through at once.
#[tokio::test]
async fn c43_resizes_without_tty_are_ignored() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        for i in 0..1000 {
            ws.resize(&format!("{{\"Width\":{i},\"Height\":{i}}}"))
                .await;
        }
        ws.stdin(b"through").await;
        ws.ping(b"p").await;
        assert_eq!(peer.read_data(3, 7).await, b"through");
        let pong = within(Duration::from_secs(1), "pong", ws.read_pong()).await;
        assert_eq!(pong, "p");
        peer.expect_silence(SHORT).await;
        peer.finish(SUCCESS, &[1, 3, 5]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// §14.6 Status and termination

/// C-44: a runtime's v4 Success becomes `03{"metadata":{},"status":"Success"}`, then Close
/// 1000, then TCP close.
#[tokio::test]
async fn c44_success_is_reported_then_close_1000() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let t = sim_session(
            &bridge,
            &sim,
            exec(&["true"], false, true, false, false),
            b"",
        )
        .await;
        assert_eq!(t.messages().len(), 2, "initial message and status");
        t.assert_clean_end(Some(SUCCESS));
        assert!(!t.reset, "plain TCP close");
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-45: exit code 42 becomes the API server's NonZeroExitCode Status, which client-go decodes
/// as exit code 42.
#[tokio::test]
async fn c45_exit_code_reaches_v5_client() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(&["sh", "-c", "exit 42"], false, true, false, false);
        let t = sim_session(&bridge, &sim, req.clone(), b"").await;
        t.assert_clean_end(Some(EXIT_42));
        // Decoded as client-go decodes it.
        let url = sim.exec(req.clone()).unwrap();
        let url = format!("ws://{}{}", bridge.addr(), bridge_path(&url, &req));
        let outcome = wsclient::run(&url, None::<&[u8]>, tokio::io::sink(), tokio::io::sink())
            .await
            .unwrap();
        assert!(
            matches!(outcome, Outcome::ExitCode { code: 42, .. }),
            "{outcome:?}"
        );
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-46: a runtime InternalError with message M becomes an InternalError with message
/// `Internal error occurred: M` and code 500 (the API server's doubled prefix included).
#[tokio::test]
async fn c46_runtime_internal_error_is_wrapped_once_more() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(false, true, false, false),
            Some(V4),
            &["error", "stdout"],
        )
        .await;
        let runtime = Status::internal_error("error executing command in container: boom");
        peer.finish(&runtime.to_json(), &[1, 3]).await;
        let t = ws.read_to_end().await;
        t.assert_clean_end(Some(
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: Internal error occurred: error executing command in container: boom","reason":"InternalError","details":{"causes":[{"message":"Internal error occurred: error executing command in container: boom"}]},"code":500}"#,
        ));
        bridge.shutdown().await;
    })
    .await
}

/// C-46 with the simulator: a command that cannot start.
#[tokio::test]
async fn c46_exec_failure_in_the_runtime_is_an_internal_error() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(&["/no/such/program"], false, true, false, false);
        let t = sim_session(&bridge, &sim, req, b"").await;
        let status = t.status();
        assert_eq!(status.code, 500);
        assert_eq!(status.reason, "InternalError");
        assert!(
            status.message.starts_with(
                "Internal error occurred: Internal error occurred: error executing command in container:"
            ),
            "{}",
            status.message
        );
        t.assert_clean_end(None);
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-47: negotiated v3, error text T: InternalError `error executing remote command: T`.
#[tokio::test]
async fn c47_v3_error_text_becomes_internal_error() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(false, true, false, false),
            Some(V3),
            &["error", "stdout"],
        )
        .await;
        let text = "command terminated with non-zero exit code: exit status 3";
        peer.finish(text, &[1, 3]).await;
        let t = ws.read_to_end().await;
        let expected = Status::internal_error(format!("error executing remote command: {text}"));
        assert_eq!(
            expected.message,
            format!("Internal error occurred: error executing remote command: {text}")
        );
        t.assert_clean_end(Some(&expected.to_json()));
        bridge.shutdown().await;
    })
    .await
}

/// C-48 (compat): the error stream ends with no bytes, by RST or by GOAWAY alone. With
/// `compat_upstream_loss_is_success` that is Success, as in the API server; by default the
/// bridge reports the lost status (a v4 runtime always writes one).
#[tokio::test]
async fn c48_empty_error_stream_is_success_only_in_compat() {
    bounded(async {
        for compat in [true, false] {
            for by_goaway in [false, true] {
                let mut fake = FakeRuntime::start().await;
                let mut cfg = bridge_config(&fake.url());
                cfg.session.compat_upstream_loss_is_success = compat;
                let bridge = start_bridge(cfg).await;
                let (mut ws, mut peer) = session(
                    bridge.addr(),
                    &mut fake,
                    &fake_path(false, true, false, false),
                    Some(V4),
                    &["error", "stdout"],
                )
                .await;
                peer.data(3, b"out", true).await;
                if !by_goaway {
                    peer.rst(1, RstStatus::CANCEL).await;
                }
                peer.goaway(3).await;
                peer.shutdown().await;
                let t = ws.read_to_end().await;
                assert_eq!(t.channel(1), b"out");
                if compat {
                    t.assert_clean_end(Some(SUCCESS));
                } else {
                    t.assert_clean_end(Some(&Status::internal_error(LOST).to_json()));
                }
                bridge.shutdown().await;
            }
        }
    })
    .await
}

/// C-49: the status follows every `01`/`02` message; then Close 1000 with an empty reason;
/// then the TCP connection closes (FIN, without waiting for the client's Close).
#[tokio::test]
async fn c49_status_comes_after_all_output_then_close_then_tcp_close() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(false, true, true, false),
            Some(V4),
            &["error", "stdout", "stderr"],
        )
        .await;
        for i in 0..20 {
            peer.data(3, format!("o{i};").as_bytes(), false).await;
            peer.data(5, format!("e{i};").as_bytes(), false).await;
        }
        // The status comes before the runtime's FINs, in the same burst.
        peer.data(1, EXIT_42_RUNTIME.as_bytes(), false).await;
        peer.data(3, b"last-out", true).await;
        peer.data(5, b"last-err", true).await;
        peer.rst(1, RstStatus::CANCEL).await;
        peer.goaway(5).await;
        peer.shutdown().await;
        let t = ws.read_to_end().await;
        let data = t.messages();
        let status_at = data.iter().position(|m| m[0] == 3).expect("status");
        assert_eq!(status_at, data.len() - 1, "status is the last data message");
        assert!(
            String::from_utf8(t.channel(1))
                .unwrap()
                .ends_with("o19;last-out")
        );
        assert!(
            String::from_utf8(t.channel(2))
                .unwrap()
                .ends_with("e19;last-err")
        );
        t.assert_clean_end(Some(EXIT_42));
        let close = t.frames.last().unwrap();
        assert_eq!(&close.payload[..], [0x03, 0xe8], "code 1000, no reason");
        assert!(!t.reset, "TCP closed with FIN");
        bridge.shutdown().await;
    })
    .await
}

/// The runtime's own exit-42 status (the kubelet lib's wording).
const EXIT_42_RUNTIME: &str = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 42], exit code 42","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"42"}]}}"#;

/// C-50: stdout ended by RST_STREAM CANCEL instead of FIN is a normal end of stdout.
#[tokio::test]
async fn c50_stdout_reset_is_a_normal_end() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(false, true, true, false),
            Some(V4),
            &["error", "stdout", "stderr"],
        )
        .await;
        peer.data(3, b"partial", false).await;
        peer.rst(3, RstStatus::CANCEL).await;
        peer.data(5, b"err", false).await;
        peer.rst(5, RstStatus::CANCEL).await;
        // The session is not over before the error stream ends.
        peer.expect_silence(SHORT).await;
        peer.finish(SUCCESS, &[1]).await;
        let t = ws.read_to_end().await;
        assert_eq!(t.channel(1), b"partial");
        assert_eq!(t.channel(2), b"err");
        t.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-51: GOAWAY right after the status: the status is delivered, and the bridge sends the
/// runtime nothing more (no RST_STREAM, no GOAWAY of its own), it only closes.
#[tokio::test]
async fn c51_goaway_after_status_delivers_it_and_silences_the_bridge() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        peer.data(5, b"out", false).await;
        peer.data(1, EXIT_42_RUNTIME.as_bytes(), false).await;
        peer.goaway(5).await;
        let t = ws.read_to_end().await;
        assert_eq!(t.channel(1), b"out");
        t.assert_clean_end(Some(EXIT_42));
        let (frames, closed) = peer.until_closed().await;
        assert!(frames.is_empty(), "nothing after GOAWAY: {frames:?}");
        assert_eq!(closed, None);
        bridge.shutdown().await;
    })
    .await
}

/// C-52: the bridge's own teardown: RST_STREAM CANCEL on every stream it has not FINed (here
/// all but stdin, which the client closed), then GOAWAY(last-good 0, status OK), then TCP
/// close.
#[tokio::test]
async fn c52_teardown_resets_unfinished_streams_then_goaway() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &all_streams(),
            Some(V4),
            &["error", "stdin", "stdout", "stderr"],
        )
        .await;
        ws.close_stdin().await;
        assert_eq!(peer.read_until_fin(3).await.0, b"");
        // The runtime ends every stream it writes with FIN and leaves the rest to the bridge.
        peer.data(5, b"", true).await;
        peer.data(7, b"", true).await;
        peer.data(1, SUCCESS.as_bytes(), true).await;
        let t = ws.read_to_end().await;
        t.assert_clean_end(Some(SUCCESS));
        let (frames, closed) = peer.until_closed().await;
        assert_eq!(
            frames,
            [
                Frame::RstStream {
                    stream_id: 1,
                    status: RstStatus::CANCEL
                },
                Frame::RstStream {
                    stream_id: 5,
                    status: RstStatus::CANCEL
                },
                Frame::RstStream {
                    stream_id: 7,
                    status: RstStatus::CANCEL
                },
                Frame::GoAway {
                    last_good_stream_id: 0,
                    status: GoAwayStatus::OK
                },
            ]
        );
        assert_eq!(closed, None, "then TCP FIN");
        bridge.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// §14.7 Upstream failures

/// Runs a compat-order session whose runtime answers with `respond`, and returns what the
/// client saw after its 101.
async fn compat_refusal<F, Fut>(respond: F) -> Transcript
where
    F: FnOnce(PendingUpgrade) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut fake = FakeRuntime::start().await;
    let bridge = start_bridge(compat_config(&fake.url())).await;
    let mut ws = upgrade(bridge.addr(), &fake_path(false, true, false, false)).await;
    respond(fake.request().await).await;
    let t = ws.read_to_end().await;
    assert_eq!(
        t.messages()[0],
        Bytes::from_static(&[1]),
        "initial message first"
    );
    assert_eq!(t.messages().len(), 2, "initial message and status only");
    t.assert_clean_end(None);
    bridge.shutdown().await;
    t
}

/// C-53 (compat): `404 page not found`: 101, initial message, then exactly the API server's
/// InternalError, Close 1000. (The simulator answers an unknown token exactly so.)
#[tokio::test]
async fn c53_runtime_404_becomes_internal_error_status() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(compat_config(sim.base_url())).await;
        let mut ws = upgrade(
            bridge.addr(),
            format!("/exec/Expired0?{}", query(false, true, false, false)),
        )
        .await;
        let t = ws.read_to_end().await;
        assert_eq!(t.messages()[0], Bytes::from_static(&[1]));
        t.assert_clean_end(Some(
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: unable to upgrade connection: 404 page not found","reason":"InternalError","details":{"causes":[{"message":"unable to upgrade connection: 404 page not found"}]},"code":500}"#,
        ));
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-53 (default order, the documented deviation): the refusal is an HTTP 404 before any 101,
/// with a Status body carrying the runtime's text.
#[tokio::test]
async fn c53_default_order_runtime_404_is_an_http_404() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let creq = ClientRequest::v5(format!(
            "/exec/Expired0?{}",
            query(false, true, false, false)
        ));
        let (resp, _) = handshake(bridge.addr(), &creq).await;
        assert_eq!(resp.status, 404);
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let status = resp.status_body();
        assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
        assert!(
            status.message.contains("404 page not found"),
            "{}",
            status.message
        );
        bridge.shutdown().await;
        sim.shutdown().await;
    })
    .await
}

/// C-54 (compat): the runtime's 403 protocol refusal.
#[tokio::test]
async fn c54_runtime_protocol_refusal_becomes_internal_error() {
    bounded(async {
        let t = compat_refusal(|p| async move {
            p.refuse(
                "403 Forbidden",
                &[
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("X-Accepted-Stream-Protocol-Versions", "v4.channel.k8s.io"),
                ],
                "unable to upgrade: unable to negotiate protocol: client supports [v5.channel.k8s.io v4.channel.k8s.io v3.channel.k8s.io v2.channel.k8s.io channel.k8s.io], server accepts [v9.channel.k8s.io]\n",
            )
            .await
        })
        .await;
        let status = t.status();
        assert_eq!(status.code, 500);
        assert!(
            status.message.contains(
                "unable to upgrade connection: unable to upgrade: unable to negotiate protocol"
            ),
            "{}",
            status.message
        );
    })
    .await
}

/// C-55 (compat): a refusal whose body is a `metav1.Status` (code 403) is relayed as that
/// Status, its code kept.
#[tokio::test]
async fn c55_runtime_status_refusal_is_relayed_with_its_code() {
    bounded(async {
        let refusal = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"x\" is forbidden: no","reason":"Forbidden","details":{"name":"x","kind":"pods"},"code":403}"#;
        let t = compat_refusal(|p| async move {
            p.refuse("403 Forbidden", &[("Content-Type", "application/json")], refusal)
                .await
        })
        .await;
        assert_eq!(t.status_json().as_deref(), Some(refusal));
        assert_eq!(t.status().code, 403);
    })
    .await
}

/// C-55 (default order): the same refusal is the HTTP answer itself, status and body.
#[tokio::test]
async fn c55_default_order_status_refusal_is_the_http_answer() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let refusal = Status::http_error(403, "Forbidden", "no exec for you");
        let json = refusal.to_json();
        let runtime = async {
            fake.request()
                .await
                .refuse(
                    "403 Forbidden",
                    &[("Content-Type", "application/json")],
                    &json,
                )
                .await
        };
        let ((resp, _), ()) = tokio::join!(
            handshake(bridge.addr(), &ClientRequest::v5(all_streams())),
            runtime
        );
        assert_eq!(resp.status, 403);
        let got = resp.status_body();
        assert_eq!((got.code, got.message.as_str()), (403, "no exec for you"));
        bridge.shutdown().await;
    })
    .await
}

/// C-56 (compat): nothing listens on the runtime's port: InternalError `error sending
/// request: …`, Close 1000. Default order: 502 before any 101.
#[tokio::test]
async fn c56_unreachable_runtime_is_error_sending_request() {
    bounded(async {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let bridge = start_bridge(compat_config(&url)).await;
        let mut ws = upgrade(bridge.addr(), &all_streams()).await;
        let t = ws.read_to_end().await;
        let status = t.status();
        assert!(
            status
                .message
                .starts_with("Internal error occurred: error sending request:"),
            "{}",
            status.message
        );
        assert!(
            status.message.contains("connection refused"),
            "{}",
            status.message
        );
        assert!(
            !status.message.contains(TOKEN),
            "token redacted: {}",
            status.message
        );
        assert_eq!(status.code, 500);
        t.assert_clean_end(None);
        bridge.shutdown().await;

        let bridge = start_bridge(bridge_config(&url)).await;
        let (resp, _) = handshake(bridge.addr(), &ClientRequest::v5(all_streams())).await;
        assert_eq!(resp.status, 502);
        assert!(
            resp.status_body()
                .message
                .starts_with("error sending request:")
        );
        bridge.shutdown().await;
    })
    .await
}

/// C-57 (compat): a 302 is not followed (its target sees no connection); InternalError.
#[tokio::test]
async fn c57_redirect_is_not_followed() {
    bounded(async {
        let mut elsewhere = FakeRuntime::start().await;
        let location = format!("{}/exec/{TOKEN}", elsewhere.url());
        let t = compat_refusal(|p| async move {
            p.refuse("302 Found", &[("Location", &location)], "").await
        })
        .await;
        let status = t.status();
        assert_eq!(status.code, 500);
        assert!(
            status.message.contains("redirect not allowed"),
            "{}",
            status.message
        );
        elsewhere.expect_no_request(SHORT).await;
    })
    .await
}

/// C-58: a 101 without `Upgrade: SPDY/3.1` is a refusal; no SPDY frame is sent on it.
#[tokio::test]
async fn c58_101_without_upgrade_header_is_a_refusal() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(compat_config(&fake.url())).await;
        let mut ws = upgrade(bridge.addr(), &all_streams()).await;
        let mut tcp = fake
            .request()
            .await
            .respond_raw(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                  X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
            )
            .await;
        let t = ws.read_to_end().await;
        let status = t.status();
        assert_eq!(status.code, 500);
        assert!(
            status.message.contains("unable to upgrade connection"),
            "{}",
            status.message
        );
        t.assert_clean_end(None);
        let mut rest = Vec::new();
        within(
            Duration::from_secs(1),
            "bridge drops the connection",
            tcp.read_to_end(&mut rest),
        )
        .await
        .ok();
        assert!(rest.is_empty(), "no SPDY bytes: {rest:?}");
        bridge.shutdown().await;
    })
    .await
}

/// C-59: a 101 without `X-Stream-Protocol-Version` means v1: no resize stream even with a tty,
/// and error text is reported with v1's capitalised prefix.
#[tokio::test]
async fn c59_101_without_protocol_runs_v1() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = session(
            bridge.addr(),
            &mut fake,
            &fake_path(true, true, false, true),
            None,
            &["error", "stdin", "stdout"],
        )
        .await;
        peer.expect_silence(SHORT).await;
        peer.finish("it broke", &[1, 3, 5]).await;
        let t = ws.read_to_end().await;
        t.assert_clean_end(Some(
            &Status::internal_error("Error executing remote command: it broke").to_json(),
        ));
        bridge.shutdown().await;
    })
    .await
}

/// C-60: a runtime that never answers a SYN_STREAM: after the configured reply timeout,
/// InternalError `Timeout occurred` and Close 1000 (compat order); an HTTP 500 with the same
/// text in the default order.
#[tokio::test]
async fn c60_unanswered_syn_stream_times_out() {
    bounded(async {
        for compat in [true, false] {
            let mut fake = FakeRuntime::start().await;
            let mut cfg = bridge_config(&fake.url());
            cfg.compat_upgrade_client_first = compat;
            cfg.connection.reply_timeout = Duration::from_millis(300);
            let bridge = start_bridge(cfg).await;
            let started = Instant::now();
            let runtime = async {
                let mut peer = fake.request().await.upgrade(Some(V4)).await;
                peer.expect_syn("error").await;
                peer
            };
            let ((resp, mut ws), mut peer) = tokio::join!(
                handshake(bridge.addr(), &ClientRequest::v5(all_streams())),
                runtime
            );
            if compat {
                assert_eq!(resp.status, 101);
                let t = ws.read_to_end().await;
                t.assert_clean_end(Some(
                    r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: Timeout occurred","reason":"InternalError","details":{"causes":[{"message":"Timeout occurred"}]},"code":500}"#,
                ));
            } else {
                assert_eq!(resp.status, 500);
                assert_eq!(resp.status_body().message, "Internal error occurred: Timeout occurred");
            }
            let elapsed = started.elapsed();
            assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
            assert!(elapsed < Duration::from_millis(1300), "{elapsed:?}");
            // The abandoned connection is closed, not leaked.
            let (_, closed) = peer.until_closed().await;
            assert_eq!(closed, None);
            bridge.shutdown().await;
        }
    })
    .await
}

/// C-61: the runtime's TCP connection is reset mid-session: the output so far is delivered,
/// then a status (Success with `compat_upstream_loss_is_success`, the lost-status
/// InternalError by default) and Close 1000, promptly; nothing is left running.
#[tokio::test]
async fn c61_runtime_reset_mid_session_ends_with_status() {
    bounded(async {
        for compat in [false, true] {
            let mut fake = FakeRuntime::start().await;
            let mut cfg = bridge_config(&fake.url());
            cfg.session.compat_upstream_loss_is_success = compat;
            let bridge = start_bridge(cfg).await;
            let idle = alive_tasks();
            let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
            peer.data(5, b"so far", false).await;
            assert_eq!(ws.read_channel(1, 6).await, b"so far");
            let started = Instant::now();
            peer.reset_tcp();
            let t = ws.read_to_end().await;
            assert!(started.elapsed() < Duration::from_secs(1));
            let expected = if compat {
                SUCCESS.to_owned()
            } else {
                Status::internal_error(LOST).to_json()
            };
            t.assert_clean_end(Some(&expected));
            drop(ws);
            settle_tasks(idle).await;
            bridge.shutdown().await;
        }
    })
    .await
}

/// Runs a stdin session whose runtime sends `bad` bytes mid-session; the client must get a
/// status and Close 1000, and the runtime connection must be aborted.
async fn malformed_runtime(bad: impl FnOnce(&mut SpdyPeer) -> Vec<u8>) {
    let mut fake = FakeRuntime::start().await;
    let mut cfg = bridge_config(&fake.url());
    cfg.connection.limits.max_control_frame = 16 * 1024;
    let bridge = start_bridge(cfg).await;
    let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
    peer.data(5, b"before", false).await;
    let bytes = bad(&mut peer);
    peer.raw(&bytes).await;
    let t = within(
        Duration::from_secs(2),
        "status after a bad frame",
        ws.read_to_end(),
    )
    .await;
    assert_eq!(t.channel(1), b"before");
    t.assert_clean_end(Some(&Status::internal_error(LOST).to_json()));
    let (_, closed) = peer.until_closed().await;
    assert_eq!(closed, None, "the bridge closed the runtime connection");
    bridge.shutdown().await;
}

/// C-62: an unknown control frame type aborts the runtime connection; the client gets a status.
#[tokio::test]
async fn c62_unknown_control_frame_aborts_upstream() {
    bounded(malformed_runtime(|_| {
        control_frame(0x00ff, 0, &[1, 2, 3, 4])
    }))
    .await
}

/// C-62: a header block that is not valid zlib aborts the runtime connection.
#[tokio::test]
async fn c62_bad_zlib_block_aborts_upstream() {
    bounded(malformed_runtime(|_| {
        let mut payload = 3u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x11]);
        // HEADERS on the stdin stream.
        control_frame(8, 0, &payload)
    }))
    .await
}

/// C-62: an upper-case header name (fatal to spdystream) aborts the runtime connection.
#[tokio::test]
async fn c62_upper_case_header_name_aborts_upstream() {
    bounded(malformed_runtime(|peer| {
        let mut payload = 3u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&peer.header_block(&[("X-Upper", b"1")]));
        control_frame(8, 0, &payload)
    }))
    .await
}

/// C-62: a control frame longer than the configured cap is refused from its header alone (the
/// bridge never waits for, or buffers, the announced megabyte).
#[tokio::test]
async fn c62_oversized_frame_is_refused_from_its_header() {
    bounded(malformed_runtime(|_| {
        let mut header = control_frame(2, 0, &[]);
        header[5..8].copy_from_slice(&[0x10, 0x00, 0x00]);
        header
    }))
    .await
}

/// C-63: SPDY frames in the same TCP segment as the 101 head are not lost: two PINGs sent with
/// the head are echoed.
#[tokio::test]
async fn c63_frames_sharing_a_read_with_the_101_are_parsed() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let runtime = async {
            let pending = fake.request().await;
            let mut bytes = switching_protocols(Some(V4)).into_bytes();
            bytes.extend_from_slice(&control_frame(6, 0, &2u32.to_be_bytes()));
            bytes.extend_from_slice(&control_frame(6, 0, &4u32.to_be_bytes()));
            let mut peer = pending.upgrade_raw(&bytes).await;
            let mut pings = Vec::new();
            let mut kinds = vec!["stdout", "error"];
            while let Some(kind) = kinds.last().copied() {
                match peer.frame().await.frame {
                    Frame::Ping { id } => pings.push(id),
                    Frame::SynStream { stream_id, .. } => {
                        peer.streams.insert(kind.to_owned(), stream_id);
                        peer.reply(stream_id).await;
                        kinds.pop();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(pings, [2, 4]);
            peer
        };
        let (mut ws, mut peer) = tokio::join!(
            upgrade(bridge.addr(), &fake_path(false, true, false, false)),
            runtime
        );
        peer.finish(SUCCESS, &[1, 3]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// §14.8 SPDY liveness

/// C-64: a runtime PING (even id) is echoed at once, identical.
#[tokio::test]
async fn c64_runtime_ping_is_echoed() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        for id in [2u32, 4, 0x7fff_fffe] {
            let sent = Instant::now();
            peer.send(Frame::Ping { id }).await;
            let echo = peer.frame().await;
            assert_eq!(echo.frame, Frame::Ping { id });
            assert_eq!(&echo.raw[..], control_frame(6, 0, &id.to_be_bytes()));
            assert!(sent.elapsed() < Duration::from_millis(500));
        }
        peer.finish(SUCCESS, &[1, 3, 5]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-65: an idle session pings the runtime every interval with odd ids 1, 3, 5…; unanswered
/// pings do not end it.
#[tokio::test]
async fn c65_idle_session_pings_the_runtime_with_odd_ids() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let mut cfg = bridge_config(&fake.url());
        cfg.connection.ping_interval = Some(Duration::from_millis(50));
        let bridge = start_bridge(cfg).await;
        let runtime = async {
            let mut peer = fake.request().await.upgrade(Some(V4)).await;
            peer.skip_pings = true;
            peer.accept_streams(&["error", "stdin", "stdout"]).await;
            peer
        };
        let (mut ws, mut peer) = tokio::join!(
            upgrade(bridge.addr(), &fake_path(true, true, false, false)),
            runtime
        );
        let mut ids = Vec::new();
        let mut last = Instant::now();
        while ids.len() < 4 {
            match peer.event().await {
                PeerEvent::Frame(r) => match r.frame {
                    Frame::Ping { id } => {
                        ids.push(id);
                        last = Instant::now();
                    }
                    other => panic!("unexpected {other:?}"),
                },
                PeerEvent::Closed(why) => panic!("closed: {why:?}"),
            }
        }
        assert_eq!(ids[..], [1, 3, 5, 7]);
        assert!(last.elapsed() < Duration::from_secs(1));
        // Never answered, and the session goes on.
        ws.stdin(b"alive").await;
        assert_eq!(peer.read_data(3, 5).await, b"alive");
        peer.data(5, b"yes", false).await;
        assert_eq!(ws.read_channel(1, 3).await, b"yes");
        peer.finish(SUCCESS, &[1, 3, 5]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

/// C-66: no data either way for the idle limit (client pings do not count): Close 1000 without
/// a status, and the runtime connection torn down.
#[tokio::test]
async fn c66_idle_session_is_closed_and_upstream_torn_down() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let mut cfg = bridge_config(&fake.url());
        cfg.session.idle_timeout = Duration::from_millis(300);
        let bridge = start_bridge(cfg).await;
        let idle = alive_tasks();
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        let started = Instant::now();
        ws.ping(b"1").await;
        assert_eq!(ws.read_pong().await, "1");
        let t = ws.expect_closed().await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");
        assert_eq!(t.status_json(), None);
        t.assert_clean_end(None);
        let (frames, closed) = peer.until_closed().await;
        assert!(
            frames.iter().any(|f| matches!(f, Frame::GoAway { .. })),
            "{frames:?}"
        );
        assert_eq!(closed, None);
        drop(ws);
        settle_tasks(idle).await;
        bridge.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// §14.9 Client-side failures

/// C-67: the client's TCP connection closes mid-session without a Close frame: stdin is
/// half-closed upstream, the runtime connection is torn down within the grace period, and no
/// task of the session is left.
#[tokio::test]
async fn c67_client_disconnect_fins_stdin_then_tears_down_upstream() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let idle = alive_tasks();
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        ws.stdin(b"partial").await;
        assert_eq!(peer.read_data(3, 7).await, b"partial");
        ws.drop_tcp();
        // The runtime keeps writing output nobody reads any more.
        peer.data(5, b"into the void", false).await;
        expect_client_gone_upstream(&mut peer, b"").await;
        settle_tasks(idle).await;
        bridge.shutdown().await;
    })
    .await
}

/// C-67: a runtime that finishes on its own within the grace period is not cut short: its
/// output is drained and its own teardown ends the session.
#[tokio::test]
async fn c67_runtime_may_finish_within_the_grace_period() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let mut cfg = bridge_config(&fake.url());
        cfg.session.client_gone_grace = Duration::from_secs(5);
        let bridge = start_bridge(cfg).await;
        let idle = alive_tasks();
        let (ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        ws.drop_tcp();
        assert_eq!(peer.read_until_fin(3).await.0, b"");
        peer.data(5, &pattern(300_000), true).await;
        peer.finish(SUCCESS, &[1]).await;
        let started = Instant::now();
        let (_, closed) = peer.until_closed().await;
        assert_eq!(closed, None);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not the 5 s grace"
        );
        settle_tasks(idle).await;
        bridge.shutdown().await;
    })
    .await
}

/// C-67: the grace period bounds the whole wait, even when the runtime takes no stdin (so the
/// stdin FIN cannot be sent): the session is gone after one grace period plus the close
/// timeout, not two grace periods.
#[tokio::test]
async fn c67_grace_period_bounds_teardown_when_runtime_takes_no_stdin() {
    bounded(async {
        let mut fake = FakeRuntime::start_with(Some(16 * 1024), None).await;
        let mut cfg = bridge_config(&fake.url());
        cfg.session.client_gone_grace = Duration::from_millis(400);
        cfg.session.stdin_buffer = 16 << 20;
        cfg.connection.close_timeout = Duration::from_millis(100);
        let bridge = start_bridge(cfg).await;
        let idle = alive_tasks();
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        peer.stop_reading();
        // More than the socket buffers towards the runtime hold: the stdin pump blocks.
        let chunk = pattern(32 * 1024);
        for _ in 0..256 {
            ws.stdin(&chunk).await;
        }
        ws.ping(b"sync").await;
        assert_eq!(ws.read_pong().await, "sync");
        let started = Instant::now();
        ws.drop_tcp();
        settle_tasks(idle).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(750), "{elapsed:?}");
        drop(peer);
        bridge.shutdown().await;
    })
    .await
}

/// C-68: the client's Close 1000 mid-session is answered with a Close; then as C-67.
#[tokio::test]
async fn c68_client_close_is_answered_then_upstream_torn_down() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let idle = alive_tasks();
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        ws.close(1000).await;
        let t = ws.expect_closed().await;
        assert_eq!(t.close().map(|c| c.0), Some(1000), "Close answered: {t:?}");
        assert_eq!(t.status_json(), None);
        expect_client_gone_upstream(&mut peer, b"").await;
        drop(ws);
        settle_tasks(idle).await;
        bridge.shutdown().await;
    })
    .await
}

/// C-69: a client message over the cap (a frame announcing 1 GiB, or fragments adding up to
/// more than the cap) ends the connection at once, without buffering it; then as C-67.
#[tokio::test]
async fn c69_oversized_client_message_closes_the_connection() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let mut cfg = bridge_config(&fake.url());
        cfg.max_message = 64 * 1024;
        let bridge = start_bridge(cfg).await;
        let idle = alive_tasks();
        for fragmented in [false, true] {
            let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
            ws.stdin(b"ok").await;
            if fragmented {
                let piece = pattern(40 * 1024);
                ws.send_frame(false, OpCode::Data(Data::Binary), &piece, true)
                    .await;
                ws.send_frame(true, OpCode::Data(Data::Continue), &piece, true)
                    .await;
            } else {
                ws.send_header_only(OpCode::Data(Data::Binary), 1 << 30, b"\x00abc")
                    .await;
            }
            let t = ws.expect_closed().await;
            assert_eq!(t.status_json(), None);
            expect_client_gone_upstream(&mut peer, b"ok").await;
        }
        settle_tasks(idle).await;
        bridge.shutdown().await;
    })
    .await
}

/// C-70: a client that stops reading pauses the runtime's output (its writes stall, well short
/// of what it wants to send), and nothing is lost once the client reads again.
#[tokio::test]
async fn c70_slow_client_back_pressures_the_runtime_without_loss() {
    bounded(async {
        let mut fake = FakeRuntime::start_with(None, Some(64 * 1024)).await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        // A small receive window on the client, so that its kernel holds little.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let tcp = socket.connect(bridge.addr()).await.unwrap();
        let runtime = async {
            let mut peer = fake.request().await.upgrade(Some(V4)).await;
            peer.accept_streams(&["error", "stdout"]).await;
            peer
        };
        let creq = ClientRequest::v5(fake_path(false, true, false, false));
        let ((resp, mut ws), mut peer) =
            tokio::join!(handshake_on(tcp, bridge.addr(), &creq), runtime);
        assert_eq!(resp.status, 101);
        const TOTAL: usize = 16 << 20;
        let data = pattern(TOTAL);
        let sent = std::sync::atomic::AtomicUsize::new(0);
        // Never cancelled: a frame cut in the middle would corrupt the SPDY stream.
        let send = async {
            for chunk in data.chunks(32 * 1024) {
                peer.data(3, chunk, false).await;
                sent.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
            }
        };
        let client = async {
            // Wait until the runtime's writes stall (no progress for 100 ms), then read again.
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = sent.load(std::sync::atomic::Ordering::SeqCst);
                if now == last {
                    break;
                }
                last = now;
            }
            (last, ws.read_channel(1, TOTAL).await)
        };
        let ((stalled_at, got), ()) = tokio::join!(client, send);
        // What the runtime got rid of sits in socket buffers (several MiB on loopback) and the
        // bridge's small per-stream queues; the rest waits in the runtime.
        assert!(
            stalled_at <= 12 << 20,
            "stalled only after {stalled_at} bytes"
        );
        assert!(got == data, "stdout differs");
        peer.data(3, b"", true).await;
        peer.finish(SUCCESS, &[1]).await;
        ws.read_to_end().await.assert_clean_end(Some(SUCCESS));
        bridge.shutdown().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Bridge life cycle

/// `Bridge::shutdown` ends running sessions too: the client's connection closes, the runtime
/// connection is torn down, and no task is left behind.
#[tokio::test]
async fn shutdown_ends_running_sessions() {
    bounded(async {
        let idle = alive_tasks();
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let (mut ws, mut peer) = stdin_session(&bridge, &mut fake).await;
        ws.stdin(b"x").await;
        assert_eq!(peer.read_data(3, 1).await, b"x");
        within(Duration::from_secs(2), "shutdown", bridge.shutdown()).await;
        ws.expect_closed().await;
        let (_, closed) = peer.until_closed().await;
        assert_eq!(closed, None);
        drop((ws, peer, fake));
        settle_tasks(idle).await;
    })
    .await
}
