//! CRI interception: a CRI client talks to the bridge's socket in front of a real containerd
//! 1.6 (started once per test binary by `support/containerd_peer.rs`), and the answers must
//! be containerd's own except for the streaming URLs, which point at the bridge with a token
//! that resolves to containerd's URL and the request's options.
//!
//! A scripted HTTP/2 runtime (`support/fake_grpc.rs`) covers what containerd cannot be made to
//! do on demand: frame timing of a streaming call, metadata and trailers, odd URLs, errors.
//!
//! ```text
//! WS_SPDY_BRIDGE_REQUIRE_PEERS=1 cargo test --test cri_intercept -- --nocapture
//! ```

#[path = "support/containerd_peer.rs"]
mod containerd_peer;
#[path = "support/fake_grpc.rs"]
mod fake_grpc;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::BodyExt;
use hyper::body::Frame;
use prost::Message;
use tonic::Code;
use ws_spdy_bridge::cri::proto::*;
use ws_spdy_bridge::cri::{CriClient, CriProxy, CriProxyConfig, ServeError, methods, serve};
use ws_spdy_bridge::tokens::{Session, SessionKind, TOKEN_LEN, TokenStore};
use ws_spdy_bridge::upstream::remotecommand::{
    DEFAULT_ERROR_STREAM_CAP, Outcome, RemoteCommand, StreamOptions, client_connection_config,
};
use ws_spdy_bridge::upstream::{self, UpstreamConfig};

use containerd_peer::{BUSYBOX_IMAGE, HTTP_PORT, Peer, PeerGuard, notice};

/// Every test here that uses the peer: the last one to finish tears containerd down.
const TESTS: &[&str] = &[
    "version_and_lists_match_containerd",
    "unknown_methods_and_errors_pass_through_unchanged",
    "container_created_and_started_through_the_bridge",
    "exec_url_points_at_the_bridge_and_its_token_runs_the_command",
    "attach_url_points_at_the_bridge_and_its_token_attaches",
    "port_forward_url_points_at_the_bridge_and_its_token_forwards",
    "v1alpha2_streaming_calls_are_intercepted",
    "bridge_tokens_are_single_use_expire_and_cannot_be_forged",
    "full_token_store_refuses_with_resource_exhausted",
    "forwarded_call_latency",
];

/// What the bridge advertises; nothing listens there (the streaming side is not under test).
const ADVERTISE: &str = "http://127.0.0.1:8765";
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn peer(test: &'static str) -> Option<PeerGuard> {
    capture_logs();
    containerd_peer::acquire(test, TESTS)
}

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {TEST_TIMEOUT:?}"))
}

// ---------------------------------------------------------------------------------------------
// Log capture: proves tokens never reach a log line in full.
// ---------------------------------------------------------------------------------------------

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

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("ws_spdy_bridge=debug")
            .with_writer(|| Capture)
            .with_ansi(false)
            .try_init();
    });
}

fn log_text() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

// ---------------------------------------------------------------------------------------------
// A bridge in front of containerd (or a fake), one per test: its tasks live on the test's
// runtime.
// ---------------------------------------------------------------------------------------------

static NEXT_SOCKET: AtomicUsize = AtomicUsize::new(0);

struct Bridge {
    proxy: CriProxy,
    store: Arc<TokenStore>,
    /// A CRI client on the bridge's socket.
    cri: CriClient,
}

async fn start_bridge(
    dir: &std::path::Path,
    runtime: &std::path::Path,
    tweak: impl FnOnce(&mut CriProxyConfig),
) -> Bridge {
    let n = NEXT_SOCKET.fetch_add(1, Ordering::SeqCst);
    let listen = dir.join(format!("cri-{n}.sock"));
    let mut cfg = CriProxyConfig::new(&listen, runtime, Uri::from_static(ADVERTISE));
    tweak(&mut cfg);
    let store = Arc::new(cfg.token_store());
    let proxy = serve(cfg, store.clone())
        .await
        .expect("start CRI interception");
    let cri = CriClient::connect_unix(&listen)
        .await
        .expect("connect to the bridge's CRI socket");
    Bridge { proxy, store, cri }
}

async fn bridge(peer: &Peer) -> Bridge {
    start_bridge(&peer.dir, &peer.socket, |_| {}).await
}

/// The token of a bridge URL, after checking the URL's shape.
fn bridge_token<'a>(url: &'a str, kind: &str) -> &'a str {
    let prefix = format!("{ADVERTISE}/{kind}/");
    let token = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} does not start with {prefix}"));
    assert_eq!(token.len(), TOKEN_LEN, "{url}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{url}"
    );
    token
}

/// `runtime` has the shape of containerd's URL `direct`: same origin and route, a token of the
/// same length, but not the same token (each call gets its own).
fn assert_same_runtime_route(runtime: &Uri, direct: &str) {
    let direct: Uri = direct.parse().expect("containerd's URL");
    assert_eq!(runtime.scheme(), direct.scheme());
    assert_eq!(runtime.authority(), direct.authority());
    let (dir_a, tok_a) = runtime.path().rsplit_once('/').expect("path");
    let (dir_b, tok_b) = direct.path().rsplit_once('/').expect("path");
    assert_eq!(dir_a, dir_b);
    assert_eq!(tok_a.len(), tok_b.len());
    assert_ne!(tok_a, tok_b);
}

fn code_and_message(e: &ws_spdy_bridge::cri::CriError) -> (Code, String) {
    let s = e.status().expect("a gRPC status");
    (s.code(), s.message().to_owned())
}

/// Runs a remote command on the runtime URL and options a token resolved to, through the
/// SPDY engine: proves both are the real ones (the runtime waits for exactly the streams of
/// the CRI request).
async fn run_session(session: &Session) -> (Vec<u8>, Outcome) {
    let mut rc = RemoteCommand::start(
        &session.runtime_url,
        session.options,
        &UpstreamConfig::default(),
        client_connection_config(),
    )
    .await
    .unwrap_or_else(|e| panic!("runtime refused the stored session: {e}"));
    let mut out = Vec::new();
    if let Some(stdout) = rc.stdout.as_mut() {
        while let Some(piece) = stdout.recv().await {
            out.extend_from_slice(&piece);
        }
    }
    let outcome = rc.read_outcome(DEFAULT_ERROR_STREAM_CAP).await;
    rc.close().await;
    (out, outcome)
}

fn exec_request(peer: &Peer, cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        container_id: peer.web_id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

// ---------------------------------------------------------------------------------------------
// Against containerd
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn version_and_lists_match_containerd() {
    let Some(peer) = peer("version_and_lists_match_containerd") else {
        return;
    };
    bounded("version and lists", async {
        let b = bridge(&peer).await;
        let direct = peer.cri().await;

        // Version, byte for byte, in both API versions.
        for method in [methods::VERSION, "/runtime.v1alpha2.RuntimeService/Version"] {
            let req = Bytes::from(
                VersionRequest {
                    version: "0.1.0".into(),
                }
                .encode_to_vec(),
            );
            let via = b.cri.unary_raw(method, req.clone()).await.expect(method);
            let want = direct.unary_raw(method, req).await.expect(method);
            assert_eq!(via, want, "{method}");
        }
        let v = b.cri.version().await.expect("Version");
        assert_eq!(v.runtime_name, "containerd");

        // containerd lists in map order, and other tests add containers of their own: compare
        // sorted, and the pod's two long-lived containers only.
        let sandboxes = |mut v: Vec<PodSandbox>| {
            v.sort_by(|a, b| a.id.cmp(&b.id));
            v
        };
        let via = sandboxes(b.cri.list_pod_sandbox(None).await.expect("ListPodSandbox"));
        assert_eq!(via, sandboxes(direct.list_pod_sandbox(None).await.unwrap()));
        assert!(via.iter().any(|s| s.id == peer.sandbox_id), "{via:?}");

        let ours = |mut v: Vec<Container>| {
            v.retain(|c| c.id == peer.web_id || c.id == peer.cat_id);
            v.sort_by(|a, b| a.id.cmp(&b.id));
            v
        };
        let containers = ours(b.cri.list_containers(None).await.expect("ListContainers"));
        assert_eq!(
            containers,
            ours(direct.list_containers(None).await.unwrap())
        );
        assert_eq!(containers.len(), 2, "{containers:?}");
        let filtered = b
            .cri
            .list_containers(Some(ContainerFilter {
                label_selector: HashMap::from([(
                    "ws-spdy-bridge/test".to_string(),
                    "web".to_string(),
                )]),
                ..Default::default()
            }))
            .await
            .expect("ListContainers with a filter");
        assert_eq!(filtered.len(), 1);
        assert_eq!(filtered[0].id, peer.web_id);

        let images = |mut v: Vec<Image>| {
            v.sort_by(|a, b| a.id.cmp(&b.id));
            v
        };
        let images_via = images(b.cri.list_images(None).await.expect("ListImages"));
        assert_eq!(images_via, images(direct.list_images(None).await.unwrap()));
        let images = images_via;
        assert!(
            images
                .iter()
                .any(|i| i.repo_tags.iter().any(|t| t == BUSYBOX_IMAGE))
        );
        b.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_methods_and_errors_pass_through_unchanged() {
    let Some(peer) = peer("unknown_methods_and_errors_pass_through_unchanged") else {
        return;
    };
    bounded("pass-through", async {
        let b = bridge(&peer).await;
        let direct = peer.cri().await;

        // Calls whose messages the bridge does not know: ContainerStatus, RuntimeService
        // Status. Encoded by hand: field 1 = container id.
        let mut status_req = vec![0x0a, peer.web_id.len() as u8];
        status_req.extend_from_slice(peer.web_id.as_bytes());
        let status_req = Bytes::from(status_req);
        for (method, req) in [
            ("/runtime.v1.RuntimeService/ContainerStatus", status_req),
            ("/runtime.v1.RuntimeService/Status", Bytes::new()),
        ] {
            let via = b.cri.unary_raw(method, req.clone()).await.expect(method);
            let want = direct.unary_raw(method, req).await.expect(method);
            assert!(!via.is_empty(), "{method}");
            assert_eq!(via, want, "{method}");
        }

        // Errors: an unknown method, an unknown container (for an intercepted call too).
        let unknown = "/runtime.v1.RuntimeService/NoSuchMethod";
        let via = b.cri.unary_raw(unknown, Bytes::new()).await.unwrap_err();
        let want = direct.unary_raw(unknown, Bytes::new()).await.unwrap_err();
        assert_eq!(code_and_message(&via), code_and_message(&want));
        assert_eq!(code_and_message(&via).0, Code::Unimplemented);

        let missing = ExecRequest {
            container_id: "no-such-container".into(),
            ..exec_request(&peer, &["true"])
        };
        let via = b.cri.exec(missing.clone()).await.unwrap_err();
        let want = direct.exec(missing).await.unwrap_err();
        notice(&format!(
            "containerd's Exec error: {:?}",
            code_and_message(&want)
        ));
        assert_eq!(code_and_message(&via), code_and_message(&want));
        assert_eq!(code_and_message(&via).0, Code::NotFound);

        // A request the runtime refuses (tty with stderr): its error, not ours.
        let invalid = ExecRequest {
            tty: true,
            ..exec_request(&peer, &["true"])
        };
        let via = b.cri.exec(invalid.clone()).await.unwrap_err();
        let want = direct.exec(invalid).await.unwrap_err();
        assert_eq!(code_and_message(&via), code_and_message(&want));
        // Nothing was issued for the failed calls.
        assert!(b.store.is_empty());
        b.proxy.shutdown().await;
    })
    .await;
}

fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn container_created_and_started_through_the_bridge() {
    let Some(peer) = peer("container_created_and_started_through_the_bridge") else {
        return;
    };
    bounded("create and start", async {
        let b = bridge(&peer).await;
        let direct = peer.cri().await;
        let cgroup_parent = std::fs::read_to_string(peer.dir.join("cgroup_parent"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "wsb-test".into(),
                uid: format!("wsb-{}", std::process::id()),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "wsb-test".into(),
            log_directory: peer.dir.join("pod-logs").display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "via-bridge".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: BUSYBOX_IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sleep".into(), "1000".into()],
            log_path: "via-bridge.log".into(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            labels: HashMap::from([("ws-spdy-bridge/test".to_string(), "via-bridge".to_string())]),
            ..Default::default()
        };
        let id = b
            .cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: peer.sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .expect("CreateContainer through the bridge");
        b.cri
            .start_container(&id)
            .await
            .expect("StartContainer through the bridge");
        let filter = Some(ContainerFilter {
            id: id.clone(),
            ..Default::default()
        });
        let via = b.cri.list_containers(filter.clone()).await.unwrap();
        assert_eq!(via, direct.list_containers(filter.clone()).await.unwrap());
        assert_eq!(via.len(), 1);
        assert_eq!(via[0].state(), ContainerState::ContainerRunning);
        assert_eq!(via[0].pod_sandbox_id, peer.sandbox_id);

        // And the new container streams through the bridge like the others.
        let url = b
            .cri
            .exec(ExecRequest {
                container_id: id.clone(),
                ..exec_request(&peer, &["echo", "new"])
            })
            .await
            .expect("Exec");
        let session = b.store.take(bridge_token(&url, "exec")).expect("session");
        let (out, outcome) = run_session(&session).await;
        assert_eq!(out, b"new\n");
        assert_eq!(outcome, Outcome::Success);

        b.cri.stop_container(&id, 0).await.expect("StopContainer");
        b.cri.remove_container(&id).await.expect("RemoveContainer");
        assert!(direct.list_containers(filter).await.unwrap().is_empty());
        b.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn exec_url_points_at_the_bridge_and_its_token_runs_the_command() {
    let Some(peer) = peer("exec_url_points_at_the_bridge_and_its_token_runs_the_command") else {
        return;
    };
    bounded("exec", async {
        let b = bridge(&peer).await;
        let direct = peer.cri().await;
        let req = exec_request(&peer, &["echo", "hi"]);
        let raw_req = Bytes::from(req.encode_to_vec());

        let via = b
            .cri
            .unary_raw(methods::EXEC, raw_req.clone())
            .await
            .expect("Exec");
        let want = direct
            .unary_raw(methods::EXEC, raw_req)
            .await
            .expect("Exec");
        let via_msg = ExecResponse::decode(&via[..]).unwrap();
        let want_msg = ExecResponse::decode(&want[..]).unwrap();
        // The answers are one URL field each, nothing else: only the URL differs.
        assert_eq!(via_msg.encode_to_vec(), via);
        assert_eq!(want_msg.encode_to_vec(), want);
        notice(&format!(
            "Exec URL via the bridge {}…, containerd's {}…",
            &via_msg.url[..via_msg.url.len() - TOKEN_LEN + 4],
            &want_msg.url[..want_msg.url.len() - 4]
        ));
        let token = bridge_token(&via_msg.url, "exec");

        let session = b.store.take(token).expect("the token resolves");
        assert_eq!(session.kind, SessionKind::Exec);
        assert_eq!(session.container_id, peer.web_id);
        assert_eq!(
            session.options,
            StreamOptions {
                stdin: false,
                stdout: true,
                stderr: true,
                tty: false
            }
        );
        assert!(session.ports.is_empty());
        assert_same_runtime_route(&session.runtime_url, &want_msg.url);

        let (out, outcome) = run_session(&session).await;
        assert_eq!(out, b"hi\n");
        assert_eq!(outcome, Outcome::Success);

        // The options are the request's, whatever they are.
        let url = b
            .cri
            .exec(ExecRequest {
                tty: true,
                stdin: true,
                stderr: false,
                ..exec_request(&peer, &["sh", "-c", "exit 3"])
            })
            .await
            .expect("Exec with a tty");
        let session = b.store.take(bridge_token(&url, "exec")).unwrap();
        assert_eq!(
            session.options,
            StreamOptions {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true
            }
        );
        let (_, outcome) = run_session(&session).await;
        assert!(
            matches!(outcome, Outcome::ExitCode { code: 3, .. }),
            "{outcome:?}"
        );

        // Neither the bridge's nor the runtime's token reached the log in full.
        let log = log_text();
        assert!(log.contains("issued a bridge streaming URL"), "{log}");
        assert!(log.contains(&format!("token={}…", &token[..4])), "{log}");
        assert!(!log.contains(token), "{log}");
        let runtime_token = session.runtime_url.path().rsplit('/').next().unwrap();
        assert!(!log.contains(runtime_token), "{log}");
        b.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn attach_url_points_at_the_bridge_and_its_token_attaches() {
    let Some(peer) = peer("attach_url_points_at_the_bridge_and_its_token_attaches") else {
        return;
    };
    bounded("attach", async {
        let b = bridge(&peer).await;
        let req = AttachRequest {
            container_id: peer.cat_id.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        };
        let url = b.cri.attach(req.clone()).await.expect("Attach");
        let direct_url = peer.cri().await.attach(req).await.expect("Attach");
        let session = b.store.take(bridge_token(&url, "attach")).expect("session");
        assert_eq!(session.kind, SessionKind::Attach);
        assert_eq!(session.container_id, peer.cat_id);
        assert_eq!(
            session.options,
            StreamOptions {
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false
            }
        );
        assert_same_runtime_route(&session.runtime_url, &direct_url);

        let mut rc = RemoteCommand::start(
            &session.runtime_url,
            session.options,
            &UpstreamConfig::default(),
            client_connection_config(),
        )
        .await
        .expect("attach with the stored session");
        let line = b"ping through the bridge's token\n";
        rc.stdin
            .as_mut()
            .expect("stdin")
            .send(Bytes::from_static(line))
            .await
            .expect("write stdin");
        let stdout = rc.stdout.as_mut().expect("stdout");
        let mut seen = Vec::new();
        while !seen.ends_with(line) {
            match stdout.recv().await {
                Some(piece) => seen.extend_from_slice(&piece),
                None => panic!("stdout ended early: {:?}", String::from_utf8_lossy(&seen)),
            }
        }
        rc.close().await;
        b.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn port_forward_url_points_at_the_bridge_and_its_token_forwards() {
    let Some(peer) = peer("port_forward_url_points_at_the_bridge_and_its_token_forwards") else {
        return;
    };
    bounded("port-forward", async {
        let b = bridge(&peer).await;
        let req = PortForwardRequest {
            pod_sandbox_id: peer.sandbox_id.clone(),
            port: vec![i32::from(HTTP_PORT)],
        };
        let url = b.cri.port_forward(req.clone()).await.expect("PortForward");
        let direct_url = peer
            .cri()
            .await
            .port_forward(req)
            .await
            .expect("PortForward");
        let session = b
            .store
            .take(bridge_token(&url, "portforward"))
            .expect("session");
        assert_eq!(session.kind, SessionKind::PortForward);
        assert_eq!(session.pod_sandbox_id, peer.sandbox_id);
        assert_eq!(session.ports, [HTTP_PORT]);
        assert_eq!(session.options, StreamOptions::default());
        assert_same_runtime_route(&session.runtime_url, &direct_url);

        // The stored URL is live: containerd upgrades it.
        let up = upstream::upgrade_spdy(
            &session.runtime_url,
            &["portforward.k8s.io"],
            &UpstreamConfig::default(),
        )
        .await
        .expect("containerd accepts the stored port-forward URL");
        assert_eq!(up.protocol.as_deref(), Some("portforward.k8s.io"));
        drop(up);

        // Ports outside 1..=65535 are refused before containerd is asked.
        let err = b
            .cri
            .port_forward(PortForwardRequest {
                pod_sandbox_id: peer.sandbox_id.clone(),
                port: vec![70000],
            })
            .await
            .unwrap_err();
        assert_eq!(code_and_message(&err).0, Code::InvalidArgument);
        b.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn v1alpha2_streaming_calls_are_intercepted() {
    let Some(peer) = peer("v1alpha2_streaming_calls_are_intercepted") else {
        return;
    };
    bounded("v1alpha2", async {
        let b = bridge(&peer).await;
        let resp: ExecResponse = b
            .cri
            .unary(
                methods::V1ALPHA2_EXEC,
                exec_request(&peer, &["echo", "alpha"]),
            )
            .await
            .expect("v1alpha2 Exec");
        let session = b.store.take(bridge_token(&resp.url, "exec")).unwrap();
        let (out, outcome) = run_session(&session).await;
        assert_eq!(out, b"alpha\n");
        assert_eq!(outcome, Outcome::Success);

        let resp: AttachResponse = b
            .cri
            .unary(
                methods::V1ALPHA2_ATTACH,
                AttachRequest {
                    container_id: peer.cat_id.clone(),
                    stdin: false,
                    tty: false,
                    stdout: true,
                    stderr: false,
                },
            )
            .await
            .expect("v1alpha2 Attach");
        let session = b.store.take(bridge_token(&resp.url, "attach")).unwrap();
        assert_eq!(session.kind, SessionKind::Attach);

        let resp: PortForwardResponse = b
            .cri
            .unary(
                methods::V1ALPHA2_PORT_FORWARD,
                PortForwardRequest {
                    pod_sandbox_id: peer.sandbox_id.clone(),
                    port: vec![],
                },
            )
            .await
            .expect("v1alpha2 PortForward");
        let session = b
            .store
            .take(bridge_token(&resp.url, "portforward"))
            .unwrap();
        assert!(session.ports.is_empty());
        b.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn bridge_tokens_are_single_use_expire_and_cannot_be_forged() {
    let Some(peer) = peer("bridge_tokens_are_single_use_expire_and_cannot_be_forged") else {
        return;
    };
    bounded("tokens", async {
        let b = bridge(&peer).await;
        let exec = || b.cri.exec(exec_request(&peer, &["true"]));

        // Used twice: the second take finds nothing.
        let url = exec().await.unwrap();
        let token = bridge_token(&url, "exec").to_owned();
        assert!(b.store.take(&token).is_some());
        assert!(b.store.take(&token).is_none());

        // After the TTL: gone (time as an argument), and removed.
        let url = exec().await.unwrap();
        let token = bridge_token(&url, "exec").to_owned();
        let late = tokio::time::Instant::now() + b.store.ttl() + Duration::from_millis(1);
        assert!(b.store.take_at(&token, late).is_none());
        assert!(b.store.take(&token).is_none());

        // Forged: a random token of the right shape, or a real one altered.
        let url = exec().await.unwrap();
        let token = bridge_token(&url, "exec").to_owned();
        assert!(b.store.take("AAAAAAAAAAAAAAAAAAAAAA").is_none());
        let mut altered = token.clone().into_bytes();
        altered[TOKEN_LEN - 1] = if altered[TOKEN_LEN - 1] == b'A' {
            b'B'
        } else {
            b'A'
        };
        assert!(
            b.store
                .take(std::str::from_utf8(&altered).unwrap())
                .is_none()
        );
        assert!(b.store.take(&token[..TOKEN_LEN - 1]).is_none());
        // None of that spent the real one.
        assert!(b.store.take(&token).is_some());
        b.proxy.shutdown().await;

        // A short TTL on the real clock.
        let b = start_bridge(&peer.dir, &peer.socket, |c| {
            c.token_ttl = Duration::from_millis(200)
        })
        .await;
        let url = b.cri.exec(exec_request(&peer, &["true"])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b.store.take(bridge_token(&url, "exec")).is_none());
        b.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn full_token_store_refuses_with_resource_exhausted() {
    let Some(peer) = peer("full_token_store_refuses_with_resource_exhausted") else {
        return;
    };
    bounded("full store", async {
        let b = start_bridge(&peer.dir, &peer.socket, |c| c.max_tokens = 1).await;
        let first = b.cri.exec(exec_request(&peer, &["true"])).await.unwrap();
        let err = b
            .cri
            .exec(exec_request(&peer, &["true"]))
            .await
            .unwrap_err();
        let (code, message) = code_and_message(&err);
        assert_eq!(code, Code::ResourceExhausted);
        assert!(
            message.contains("maximum number of in-flight requests exceeded"),
            "{message}"
        );
        // Other calls are unaffected, and taking the token frees its slot.
        b.cri.version().await.expect("Version");
        assert!(b.store.take(bridge_token(&first, "exec")).is_some());
        b.cri.exec(exec_request(&peer, &["true"])).await.unwrap();
        b.proxy.shutdown().await;
    })
    .await;
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

// Two workers: the bridge and the client do not take turns on one thread, as they would not
// in separate processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_call_latency() {
    let Some(peer) = peer("forwarded_call_latency") else {
        return;
    };
    bounded("latency", async {
        let b = bridge(&peer).await;
        let direct = peer.cri().await;
        for _ in 0..20 {
            direct.version().await.unwrap();
            b.cri.version().await.unwrap();
        }
        const N: usize = 200;
        let (mut d, mut v) = (Vec::with_capacity(N), Vec::with_capacity(N));
        // Interleaved, so drift (other tests, the machine) hits both alike.
        for _ in 0..N {
            let t = Instant::now();
            direct.version().await.unwrap();
            d.push(t.elapsed());
            let t = Instant::now();
            b.cri.version().await.unwrap();
            v.push(t.elapsed());
        }
        d.sort();
        v.sort();
        let (d50, v50) = (percentile(&d, 50), percentile(&v, 50));
        notice(&format!(
            "CRI Version over {N} calls: p50 direct {d50:?}, through the bridge {v50:?} \
             (added {:?}); p90 direct {:?}, bridge {:?}; p99 direct {:?}, bridge {:?}",
            v50.saturating_sub(d50),
            percentile(&d, 90),
            percentile(&v, 90),
            percentile(&d, 99),
            percentile(&v, 99),
        ));
        // A loose bound: a regression to milliseconds per call would show here.
        assert!(
            v50 < d50 + Duration::from_millis(10),
            "p50 direct {d50:?}, bridge {v50:?}"
        );
        b.proxy.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Against a scripted runtime
// ---------------------------------------------------------------------------------------------

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A private directory for sockets, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("wsb-cri-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A runtime whose `Exec` answers with the URL named in the request's `x-url` metadata,
/// plus an unknown field 15, an `x-runtime` header and trailer; `/test.Echo/Chat` echoes
/// each request frame at once and ends with custom trailers.
async fn scripted_runtime(dir: &TempDir) -> fake_grpc::FakeRuntime {
    fake_grpc::start(
        dir.0.join("runtime.sock"),
        |req: Request<hyper::body::Incoming>| async move {
            match req.uri().path() {
                "/runtime.v1.RuntimeService/Exec" => {
                    let url = req
                        .headers()
                        .get("x-url")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("http://127.0.0.1:1/exec/rtTOKEN1")
                        .to_owned();
                    if url == "fail" {
                        return fake_grpc::trailers_only(5, "no such container");
                    }
                    let mut msg = ExecResponse { url }.encode_to_vec();
                    msg.extend_from_slice(&[0x7a, 5, b'e', b'x', b't', b'r', b'a']);
                    let mut resp = fake_grpc::unary_ok(&msg, &[("x-runtime-trailer", "t")]);
                    resp.headers_mut()
                        .insert("x-runtime", HeaderValue::from_static("fake"));
                    resp
                }
                "/test.Echo/Chat" => {
                    let probe = req.headers().get("x-probe").cloned();
                    let (tx, body) = fake_grpc::channel_body();
                    let mut incoming = req.into_body();
                    tokio::spawn(async move {
                        while let Some(Ok(frame)) = incoming.frame().await {
                            if let Ok(data) = frame.into_data()
                                && tx.send(Frame::data(data)).await.is_err()
                            {
                                return;
                            }
                        }
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        trailers.insert("x-chat-trailer", HeaderValue::from_static("bye"));
                        let _ = tx.send(Frame::trailers(trailers)).await;
                    });
                    let mut resp = http::Response::new(body);
                    resp.headers_mut()
                        .insert("content-type", HeaderValue::from_static("application/grpc"));
                    if let Some(p) = probe {
                        resp.headers_mut().insert("x-probe-echo", p);
                    }
                    resp
                }
                _ => fake_grpc::trailers_only(12, "unknown method"),
            }
        },
    )
    .await
}

async fn exec_via(
    bridge_socket: &std::path::Path,
    x_url: &str,
    body: Bytes,
) -> http::Response<hyper::body::Incoming> {
    let mut client = fake_grpc::client(bridge_socket).await;
    let body = http_body_util::Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut req = fake_grpc::grpc_request(methods::EXEC, body);
    req.headers_mut()
        .insert("x-url", HeaderValue::from_str(x_url).unwrap());
    client.ready().await.unwrap();
    client
        .send_request(req)
        .await
        .expect("Exec through the bridge")
}

fn exec_body() -> Bytes {
    fake_grpc::framed(
        &ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["sh".into()],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        }
        .encode_to_vec(),
    )
}

#[tokio::test]
async fn streaming_call_passes_frame_by_frame_with_metadata_and_trailers() {
    let dir = TempDir::new();
    let runtime = scripted_runtime(&dir).await;
    let b = start_bridge(&dir.0, &runtime.path, |_| {}).await;
    bounded("bidi streaming", async {
        let mut client = fake_grpc::client(b.proxy.socket_path()).await;
        let (tx, body) = fake_grpc::channel_body();
        let mut req = fake_grpc::grpc_request("/test.Echo/Chat", body);
        req.headers_mut()
            .insert("x-probe", HeaderValue::from_static("probe-1"));
        client.ready().await.unwrap();
        let resp = client.send_request(req).await.expect("response headers");
        assert_eq!(resp.headers()["x-probe-echo"], "probe-1");
        let mut body = resp.into_body();
        // Each frame comes back before the next is sent: nothing is buffered on the way.
        for i in 0..3u8 {
            let msg = fake_grpc::framed(&[i; 3]);
            tx.send(Frame::data(msg.clone())).await.unwrap();
            let frame = body.frame().await.expect("a frame").expect("no error");
            assert_eq!(frame.into_data().expect("data"), msg);
        }
        drop(tx);
        let frame = body.frame().await.expect("trailers").expect("no error");
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-chat-trailer"], "bye");
        assert!(body.frame().await.is_none());
    })
    .await;
    b.proxy.shutdown().await;
}

#[tokio::test]
async fn rewrite_keeps_unknown_fields_headers_and_trailers() {
    let dir = TempDir::new();
    let runtime = scripted_runtime(&dir).await;
    let b = start_bridge(&dir.0, &runtime.path, |_| {}).await;
    bounded("rewrite", async {
        let resp = exec_via(
            b.proxy.socket_path(),
            "http://127.0.0.1:1/exec/rtTOKEN1",
            exec_body(),
        )
        .await;
        assert_eq!(resp.headers()["x-runtime"], "fake");
        assert!(resp.headers().get("content-length").is_none());
        let (data, trailers) = fake_grpc::read_all(resp.into_body()).await;
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-runtime-trailer"], "t");
        let msg = &data[5..];
        let url = ExecResponse::decode(msg).unwrap().url;
        let token = bridge_token(&url, "exec");
        // The unknown field survives, after the URL as the runtime sent it.
        let mut expected = ExecResponse { url: url.clone() }.encode_to_vec();
        expected.extend_from_slice(&[0x7a, 5, b'e', b'x', b't', b'r', b'a']);
        assert_eq!(msg, &expected[..]);
        assert_eq!(&data[..5], &fake_grpc::framed(&expected)[..5]);
        let session = b.store.take(token).unwrap();
        assert_eq!(session.runtime_url, "http://127.0.0.1:1/exec/rtTOKEN1");
        assert_eq!(
            session.options,
            StreamOptions {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true
            }
        );
    })
    .await;
    b.proxy.shutdown().await;
}

#[tokio::test]
async fn relative_runtime_urls_resolve_against_configured_or_learned_base() {
    let dir = TempDir::new();
    let runtime = scripted_runtime(&dir).await;
    bounded("relative URLs", async {
        // Configured.
        let b = start_bridge(&dir.0, &runtime.path, |c| {
            c.runtime_stream_base = Some(Uri::from_static("http://10.1.2.3:10010"))
        })
        .await;
        let resp = exec_via(b.proxy.socket_path(), "/exec/rtTOKEN2", exec_body()).await;
        let (data, _) = fake_grpc::read_all(resp.into_body()).await;
        let url = ExecResponse::decode(&data[5..]).unwrap().url;
        let session = b.store.take(bridge_token(&url, "exec")).unwrap();
        assert_eq!(session.runtime_url, "http://10.1.2.3:10010/exec/rtTOKEN2");
        b.proxy.shutdown().await;

        // Unknown: a clear error that hides the runtime's token, and nothing stored.
        let b = start_bridge(&dir.0, &runtime.path, |_| {}).await;
        let resp = exec_via(b.proxy.socket_path(), "/exec/rtTOKEN3", exec_body()).await;
        assert_eq!(resp.headers()["grpc-status"], "9");
        let message = resp.headers()["grpc-message"].to_str().unwrap().to_owned();
        assert!(message.contains("--runtime-stream-base"), "{message}");
        assert!(!message.contains("rtTOKEN3"), "{message}");
        assert!(b.store.is_empty());

        // Learned from an absolute URL the runtime returned earlier.
        let resp = exec_via(
            b.proxy.socket_path(),
            "http://127.0.0.1:5555/exec/rtTOKEN4",
            exec_body(),
        )
        .await;
        let _ = fake_grpc::read_all(resp.into_body()).await;
        let resp = exec_via(b.proxy.socket_path(), "/exec/rtTOKEN5", exec_body()).await;
        let (data, _) = fake_grpc::read_all(resp.into_body()).await;
        let url = ExecResponse::decode(&data[5..]).unwrap().url;
        let session = b.store.take(bridge_token(&url, "exec")).unwrap();
        assert_eq!(session.runtime_url, "http://127.0.0.1:5555/exec/rtTOKEN5");
        b.proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn runtime_errors_pass_and_bad_requests_never_reach_the_runtime() {
    let dir = TempDir::new();
    let runtime = scripted_runtime(&dir).await;
    let b = start_bridge(&dir.0, &runtime.path, |_| {}).await;
    bounded("errors", async {
        let socket = b.proxy.socket_path().to_owned();
        // The runtime's own error, untouched.
        let resp = exec_via(&socket, "fail", exec_body()).await;
        assert_eq!(resp.headers()["grpc-status"], "5");
        assert_eq!(resp.headers()["grpc-message"], "no such container");
        assert_eq!(runtime.calls(), 1);
        assert!(b.store.is_empty());

        // A compressed request: UNIMPLEMENTED, as a server without the encoding answers.
        let mut compressed = exec_body().to_vec();
        compressed[0] = 1;
        let resp = exec_via(&socket, "x", Bytes::from(compressed)).await;
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert_eq!(resp.headers()["grpc-accept-encoding"], "identity");
        // Garbage instead of an ExecRequest.
        let resp = exec_via(&socket, "x", fake_grpc::framed(&[0xff, 0xff])).await;
        assert_eq!(resp.headers()["grpc-status"], "13");
        // Two messages in a unary call.
        let mut two = exec_body().to_vec();
        two.extend_from_slice(&exec_body());
        let resp = exec_via(&socket, "x", Bytes::from(two)).await;
        assert_eq!(resp.headers()["grpc-status"], "13");
        assert_eq!(
            runtime.calls(),
            1,
            "refused requests must not reach the runtime"
        );
    })
    .await;
    b.proxy.shutdown().await;
}

#[tokio::test]
async fn unreachable_runtime_is_unavailable() {
    let dir = TempDir::new();
    let b = start_bridge(&dir.0, &dir.0.join("nobody.sock"), |_| {}).await;
    bounded("unreachable", async {
        let err = b.cri.version().await.unwrap_err();
        let (code, message) = code_and_message(&err);
        assert_eq!(code, Code::Unavailable);
        assert!(message.contains("nobody.sock"), "{message}");
    })
    .await;
    b.proxy.shutdown().await;
}

#[tokio::test]
async fn stale_socket_is_replaced_live_one_refused_and_removed_at_shutdown() {
    let dir = TempDir::new();
    let runtime = scripted_runtime(&dir).await;
    let listen = dir.0.join("bridge.sock");
    let cfg = || CriProxyConfig::new(&listen, &runtime.path, Uri::from_static(ADVERTISE));

    // A leftover socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&listen).unwrap());
    assert!(listen.exists());
    let store = Arc::new(TokenStore::default());
    let proxy = serve(cfg(), store.clone())
        .await
        .expect("stale socket replaced");

    // A second bridge on the same socket: refused, the first keeps it.
    match serve(cfg(), store.clone()).await {
        Err(ServeError::InUse(p)) => assert_eq!(p, listen),
        other => panic!("expected InUse, got {other:?}"),
    }
    let cri = CriClient::connect_unix(&listen).await.unwrap();
    let err = cri.version().await.unwrap_err();
    // The scripted runtime does not know Version: its answer came through.
    assert_eq!(err.status().unwrap().message(), "unknown method");

    proxy.shutdown().await;
    assert!(!listen.exists(), "socket file removed at shutdown");

    // Not a socket: left alone.
    std::fs::write(&listen, b"keep me").unwrap();
    assert!(matches!(
        serve(cfg(), store).await,
        Err(ServeError::NotASocket(_))
    ));
    assert_eq!(std::fs::read(&listen).unwrap(), b"keep me");
}

#[tokio::test]
async fn invalid_config_names_the_key() {
    let dir = TempDir::new();
    let store = Arc::new(TokenStore::default());
    let mut cfg = CriProxyConfig::new(
        dir.0.join("a.sock"),
        dir.0.join("b.sock"),
        Uri::from_static("/no-host"),
    );
    let err = serve(cfg.clone(), store.clone()).await.unwrap_err();
    assert!(err.to_string().contains("advertise_url"), "{err}");
    cfg.advertise_url = Uri::from_static(ADVERTISE);
    cfg.max_tokens = 0;
    let err = serve(cfg, store).await.unwrap_err();
    assert!(err.to_string().contains("max_tokens"), "{err}");
}
