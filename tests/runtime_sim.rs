//! Behaviour of the legacy-runtime simulator (`ws_spdy_bridge::runtime_sim`), driven over real
//! TCP the way a client (or the bridge) drives a runtime: `upstream::upgrade_spdy` for the
//! HTTP/1.1 upgrade, `connection::spawn` for SPDY.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ws_spdy_bridge::connection::{
    self, ConnectionConfig, Handle, Incoming, OpenError, Stream, StreamEnd, StreamReader,
};
use ws_spdy_bridge::runtime_sim::{
    AttachRequest, ContainerSpec, ExecRequest, PortForwardRequest, RuntimeSim, SimConfig,
};
use ws_spdy_bridge::spdy::{HeaderBlock, RstStatus};
use ws_spdy_bridge::status::Status;
use ws_spdy_bridge::upstream::{self, RefusalBody, UpgradeRequest, UpstreamConfig, UpstreamError};

/// What client-go's SPDY executor offers, most preferred first.
const CLIENT_GO_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const PORT_FORWARD: &str = "portforward.k8s.io";

/// Bound on each test body: a hang fails fast instead of stalling the suite.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("test did not finish within 5 s")
}

async fn sim() -> RuntimeSim {
    RuntimeSim::start(SimConfig::default())
        .await
        .expect("start sim")
}

fn exec_request(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: "ctr".into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty,
        stdin,
        stdout,
        stderr,
    }
}

fn client_config() -> ConnectionConfig {
    ConnectionConfig {
        ping_interval: None,
        ..ConnectionConfig::client()
    }
}

async fn upgrade(url: &str, protocols: &[&str]) -> Result<upstream::Upgraded, UpstreamError> {
    let uri: Uri = url.parse().expect("url");
    upstream::upgrade_spdy(&uri, protocols, &UpstreamConfig::default()).await
}

/// Upgrades and starts a client connection; returns the negotiated protocol too.
async fn connect(
    url: &str,
    protocols: &[&str],
    cfg: ConnectionConfig,
) -> (Handle, Incoming, String) {
    let up = upgrade(url, protocols).await.expect("upgrade");
    assert_eq!(up.status, StatusCode::SWITCHING_PROTOCOLS);
    let protocol = up.protocol.clone().unwrap_or_default();
    let (handle, incoming) = connection::spawn(up.io, up.leftover, cfg);
    (handle, incoming, protocol)
}

async fn open(handle: &Handle, stream_type: &str) -> Stream {
    handle
        .open_stream(HeaderBlock::new().with("streamtype", stream_type))
        .await
        .unwrap_or_else(|e| panic!("open {stream_type}: {e}"))
}

async fn read_all(reader: &mut StreamReader) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(piece) = reader.recv().await {
        out.extend_from_slice(&piece);
    }
    out
}

/// A remote command session opened as client-go does: one stream at a time, in the order
/// error, stdin, stdout, stderr, resize.
struct Session {
    handle: Handle,
    _incoming: Incoming,
    protocol: String,
    error: Stream,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

async fn open_session(url: &str, protocols: &[&str], types: &[&str]) -> Session {
    let (handle, incoming, protocol) = connect(url, protocols, client_config()).await;
    let error = open(&handle, "error").await;
    let mut s = Session {
        handle,
        _incoming: incoming,
        protocol,
        error,
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
    };
    for t in types {
        let stream = open(&s.handle, t).await;
        match *t {
            "stdin" => s.stdin = Some(stream),
            "stdout" => s.stdout = Some(stream),
            "stderr" => s.stderr = Some(stream),
            "resize" => s.resize = Some(stream),
            other => panic!("unknown stream type {other}"),
        }
    }
    s
}

struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    error: Vec<u8>,
    error_end: Option<StreamEnd>,
    stdout_end: Option<StreamEnd>,
}

/// Reads stdout, stderr and error to their ends together, as client-go does.
async fn finish(mut s: Session) -> Outcome {
    async fn opt(stream: Option<&mut Stream>) -> (Vec<u8>, Option<StreamEnd>) {
        match stream {
            Some(s) => {
                let data = read_all(&mut s.reader).await;
                (data, s.reader.end())
            }
            None => (Vec::new(), None),
        }
    }
    let ((stdout, stdout_end), (stderr, _), error) = tokio::join!(
        opt(s.stdout.as_mut()),
        opt(s.stderr.as_mut()),
        read_all(&mut s.error.reader)
    );
    let error_end = s.error.reader.end();
    s.handle.close().await;
    Outcome {
        stdout,
        stderr,
        error,
        error_end,
        stdout_end,
    }
}

fn status(bytes: &[u8]) -> Status {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not a Status ({e}): {:?}", String::from_utf8_lossy(bytes)))
}

#[tokio::test]
async fn exec_echo_writes_stdout_then_v4_success_and_resets_the_error_stream() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, true, false))
            .unwrap();
        let s = open_session(&url, CLIENT_GO_PROTOCOLS, &["stdout", "stderr"]).await;
        assert_eq!(
            s.protocol, "v4.channel.k8s.io",
            "v5 is not offered over SPDY"
        );
        let out = finish(s).await;
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"");
        assert_eq!(out.stdout_end, Some(StreamEnd::Fin));
        assert_eq!(out.error, br#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(out.error_end, Some(StreamEnd::Reset(RstStatus::CANCEL)));
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn exec_cat_copies_stdin_until_the_client_fin() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(&["cat"], true, true, false, false))
            .unwrap();
        let mut s = open_session(&url, CLIENT_GO_PROTOCOLS, &["stdin", "stdout"]).await;
        let stdin = &mut s.stdin.as_mut().unwrap().writer;
        stdin.send(Bytes::from_static(b"hello ")).await.unwrap();
        stdin.send(Bytes::from_static(b"world")).await.unwrap();
        stdin.finish().await.unwrap();
        let out = finish(s).await;
        assert_eq!(out.stdout, b"hello world");
        assert_eq!(status(&out.error), Status::success());
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn exec_exit_code_reaches_the_v4_status() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(
                &["sh", "-c", "exit 3"],
                false,
                true,
                true,
                false,
            ))
            .unwrap();
        let out =
            finish(open_session(&url, CLIENT_GO_PROTOCOLS, &["stdout", "stderr"]).await).await;
        let st = status(&out.error);
        assert_eq!(
            st,
            Status::non_zero_exit(
                "command terminated with non-zero exit code: error executing command \
                 [sh -c exit 3], exit code 3",
                3
            )
        );
        assert_eq!(st.exit_code(), Some(3));
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn exec_stderr_goes_to_the_stderr_stream() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(
                &["sh", "-c", "echo out; echo oops >&2"],
                false,
                true,
                true,
                false,
            ))
            .unwrap();
        let out =
            finish(open_session(&url, CLIENT_GO_PROTOCOLS, &["stdout", "stderr"]).await).await;
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"oops\n");
        assert_eq!(status(&out.error), Status::success());
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn exec_of_a_missing_program_is_an_internal_error_status() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(
                &["no-such-program-xyz"],
                false,
                true,
                false,
                false,
            ))
            .unwrap();
        let out = finish(open_session(&url, CLIENT_GO_PROTOCOLS, &["stdout"]).await).await;
        let st = status(&out.error);
        assert_eq!(st.reason, "InternalError");
        assert_eq!(st.code, 500);
        assert_eq!(
            st.message,
            "Internal error occurred: error executing command in container: failed to exec in \
             container: exec: \"no-such-program-xyz\": executable file not found in $PATH"
        );
        sim.shutdown().await;
    })
    .await;
}

/// Pulls `stty size` answers ("ROWS COLS") out of terminal output.
fn sizes(output: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(output)
        .split("\r\n")
        .filter(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            parts.len() == 2
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
        .collect()
}

/// A shell loop answering each input line with `stty size`, ending on `q`.
const STTY_LOOP: &str = "while read x; do [ \"$x\" = q ] && exit 0; stty size; done";

/// Sends empty lines to a [`STTY_LOOP`] until its answer is `want` ("ROWS COLS"). Resize and
/// stdin are separate streams that the runtime handles concurrently, so the first answers
/// may predate the resize.
async fn ask_size_until(s: &mut Session, want: &str) {
    let mut output = Vec::new();
    for answers in 1..=20 {
        s.stdin
            .as_mut()
            .unwrap()
            .writer
            .send(Bytes::from_static(b"\n"))
            .await
            .unwrap();
        while sizes(&output).len() < answers {
            let stdout = &mut s.stdout.as_mut().unwrap().reader;
            output.extend_from_slice(&stdout.recv().await.expect("tty output"));
        }
        if sizes(&output).last().map(String::as_str) == Some(want) {
            return;
        }
    }
    panic!(
        "size never became {want}: {:?}",
        String::from_utf8_lossy(&output)
    );
}

#[tokio::test]
async fn exec_tty_resize_changes_the_terminal_size() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(
                &["sh", "-c", STTY_LOOP],
                true,
                true,
                false,
                true,
            ))
            .unwrap();
        let mut s = open_session(&url, CLIENT_GO_PROTOCOLS, &["stdin", "stdout", "resize"]).await;
        let resize = &mut s.resize.as_mut().unwrap().writer;
        // Split across two DATA frames, as the decoder must cope with.
        resize
            .send(Bytes::from_static(b"{\"Width\":100,"))
            .await
            .unwrap();
        resize
            .send(Bytes::from_static(b"\"Height\":30}\n"))
            .await
            .unwrap();
        ask_size_until(&mut s, "30 100").await;
        // A second resize packed with junk after it: the size applies, then handling stops.
        let resize = &mut s.resize.as_mut().unwrap().writer;
        resize
            .send(Bytes::from_static(
                b"{\"width\":81,\"height\":25} {\"Width\":-1}",
            ))
            .await
            .unwrap();
        ask_size_until(&mut s, "25 81").await;
        s.stdin
            .as_mut()
            .unwrap()
            .writer
            .send(Bytes::from_static(b"q\n"))
            .await
            .unwrap();
        let out = finish(s).await;
        assert_eq!(status(&out.error), Status::success());
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn exec_tty_stdin_fin_ends_stdout_but_not_the_process() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(
                &["sh", "-c", "echo $$; exec sleep 30"],
                true,
                true,
                false,
                true,
            ))
            .unwrap();
        let mut s = open_session(&url, CLIENT_GO_PROTOCOLS, &["stdin", "stdout", "resize"]).await;
        let pid = read_pid(&mut s.stdout.as_mut().unwrap().reader).await;
        s.stdin.as_mut().unwrap().writer.finish().await.unwrap();
        let stdout = &mut s.stdout.as_mut().unwrap().reader;
        assert_eq!(read_all(stdout).await, b"");
        assert_eq!(stdout.end(), Some(StreamEnd::Fin));
        // The process still runs, so there is no status yet.
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert_eq!(s.error.reader.end(), None);
        s.handle.abort();
        wait_gone(pid).await;
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn attach_to_a_tty_container_resizes_its_terminal() {
    bounded(async {
        let sim = sim().await;
        sim.create_container(ContainerSpec {
            id: "term".into(),
            command: vec!["sh".into(), "-c".into(), STTY_LOOP.into()],
            tty: true,
            stdin: true,
        })
        .unwrap();
        let url = sim
            .attach(AttachRequest {
                container_id: "term".into(),
                tty: true,
                stdin: true,
                stdout: true,
                stderr: false,
            })
            .unwrap();
        let mut s = open_session(&url, CLIENT_GO_PROTOCOLS, &["stdin", "stdout", "resize"]).await;
        let resize = &mut s.resize.as_mut().unwrap().writer;
        resize
            .send(Bytes::from_static(b"{\"Width\":120,\"Height\":40}\n"))
            .await
            .unwrap();
        ask_size_until(&mut s, "40 120").await;
        // The container exits: its output ends and the attach succeeds.
        s.stdin
            .as_mut()
            .unwrap()
            .writer
            .send(Bytes::from_static(b"q\n"))
            .await
            .unwrap();
        let out = finish(s).await;
        assert_eq!(status(&out.error), Status::success());
        assert_eq!(out.stdout_end, Some(StreamEnd::Fin));
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn v2_sends_no_status_on_success_and_plain_text_on_failure() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let s = open_session(&url, &["v2.channel.k8s.io"], &["stdout"]).await;
        assert_eq!(s.protocol, "v2.channel.k8s.io");
        let out = finish(s).await;
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.error, b"", "v2 writes nothing on success");
        assert_eq!(out.error_end, Some(StreamEnd::Reset(RstStatus::CANCEL)));

        let url = sim
            .exec(exec_request(
                &["sh", "-c", "exit 3"],
                false,
                true,
                false,
                false,
            ))
            .unwrap();
        let out = finish(open_session(&url, &["v2.channel.k8s.io"], &["stdout"]).await).await;
        assert_eq!(
            String::from_utf8_lossy(&out.error),
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], \
             exit code 3"
        );
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn v1_resets_the_error_stream_and_half_closes_stdin_after_setup() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(
                &["sh", "-c", "exit 3"],
                true,
                true,
                false,
                false,
            ))
            .unwrap();
        let mut s = open_session(&url, &["channel.k8s.io"], &["stdin", "stdout"]).await;
        assert_eq!(s.protocol, "channel.k8s.io");
        // The server FINs its side of stdin at once: the client sees the end of the stream.
        let stdin_rest = read_all(&mut s.stdin.as_mut().unwrap().reader).await;
        assert_eq!(stdin_rest, b"");
        assert_eq!(s.stdin.as_ref().unwrap().reader.end(), Some(StreamEnd::Fin));
        let out = finish(s).await;
        assert_eq!(out.error, b"", "v1 errors are never delivered");
        assert_eq!(out.error_end, Some(StreamEnd::Reset(RstStatus::CANCEL)));
        sim.shutdown().await;
    })
    .await;
}

fn refusal(err: UpstreamError) -> (StatusCode, http::HeaderMap, String) {
    match err {
        UpstreamError::Refused {
            status,
            headers,
            raw_body,
            ..
        } => (
            status,
            *headers,
            String::from_utf8_lossy(&raw_body).into_owned(),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn assert_go_text_error(headers: &http::HeaderMap) {
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn used_token_is_404_page_not_found() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let out = finish(open_session(&url, CLIENT_GO_PROTOCOLS, &["stdout"]).await).await;
        assert_eq!(out.stdout, b"hi\n");
        let (status, headers, body) =
            refusal(upgrade(&url, CLIENT_GO_PROTOCOLS).await.unwrap_err());
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, "404 page not found\n");
        assert_go_text_error(&headers);
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn refused_upgrade_still_spends_the_token() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let (status, _, _) = refusal(upgrade(&url, &["v5.channel.k8s.io"]).await.unwrap_err());
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = refusal(upgrade(&url, CLIENT_GO_PROTOCOLS).await.unwrap_err());
        assert_eq!(status, StatusCode::NOT_FOUND);
        // A token of one kind is not valid on another route, and is spent by the attempt.
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let wrong = url.replace("/exec/", "/attach/");
        let (status, _, _) = refusal(upgrade(&wrong, CLIENT_GO_PROTOCOLS).await.unwrap_err());
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = refusal(upgrade(&url, CLIENT_GO_PROTOCOLS).await.unwrap_err());
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(sim.outstanding_tokens(), 0);
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn expired_token_is_404() {
    bounded(async {
        let sim = RuntimeSim::start(SimConfig {
            token_ttl: Duration::ZERO,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let (status, _, body) = refusal(upgrade(&url, CLIENT_GO_PROTOCOLS).await.unwrap_err());
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, "404 page not found\n");
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn protocol_mismatch_is_403_with_one_accepted_versions_line_per_protocol() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let (status, headers, body) = refusal(
            upgrade(&url, &["v5.channel.k8s.io", "foo"])
                .await
                .unwrap_err(),
        );
        assert_eq!(status, StatusCode::FORBIDDEN);
        let accepted: Vec<&str> = headers
            .get_all("x-accepted-stream-protocol-versions")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            accepted,
            [
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io",
                "channel.k8s.io"
            ]
        );
        assert_eq!(
            body,
            "unable to upgrade: unable to negotiate protocol: client supports \
             [v5.channel.k8s.io foo], server accepts [v4.channel.k8s.io v3.channel.k8s.io \
             v2.channel.k8s.io channel.k8s.io]\n"
        );
        assert_go_text_error(&headers);

        let url = sim
            .port_forward(PortForwardRequest {
                pod_sandbox_id: "pod".into(),
                ports: vec![80],
            })
            .unwrap();
        let (status, headers, _) =
            refusal(upgrade(&url, &["v4.channel.k8s.io"]).await.unwrap_err());
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(headers["x-accepted-stream-protocol-versions"], PORT_FORWARD);
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn missing_protocol_header_is_400_as_in_kubernetes_1_35() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let (status, headers, body) = refusal(upgrade(&url, &[]).await.unwrap_err());
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.starts_with(
                "unable to upgrade: header X-Stream-Protocol-Version does not exist in request \
                 with "
            ) && body.ends_with(" headers\n"),
            "{body:?}"
        );
        assert_go_text_error(&headers);
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn missing_upgrade_headers_are_400_after_negotiation() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let request = UpgradeRequest {
            upgrade: "h2c".into(),
            ..UpgradeRequest::spdy(&["v4.channel.k8s.io"])
        };
        let err = upstream::upgrade(&url.parse().unwrap(), &request, &UpstreamConfig::default())
            .await
            .unwrap_err();
        let (status, headers, body) = refusal(err);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.starts_with("unable to upgrade: missing upgrade headers in request: http.Header{"),
            "{body:?}"
        );
        assert!(body.contains(r#""Upgrade":[]string{"h2c"}"#), "{body:?}");
        // Negotiation came first: its answer header is already on the refusal.
        assert_eq!(headers["x-stream-protocol-version"], "v4.channel.k8s.io");
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn response_header_names_are_canonical_like_go() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let up = upgrade(&url, CLIENT_GO_PROTOCOLS).await.unwrap();
        let head = String::from_utf8_lossy(&up.raw_head).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{head}"
        );
        for line in [
            "Connection: Upgrade\r\n",
            "Upgrade: SPDY/3.1\r\n",
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n",
        ] {
            assert!(head.contains(line), "{line:?} missing in {head:?}");
        }
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn stream_creation_timeout_abandons_the_request_without_status_or_reset() {
    bounded(async {
        let sim = RuntimeSim::start(SimConfig {
            stream_creation_timeout: Duration::from_millis(100),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let cfg = ConnectionConfig {
            reply_timeout: Duration::from_millis(300),
            ..client_config()
        };
        let (handle, _incoming, _) = connect(&url, CLIENT_GO_PROTOCOLS, cfg).await;
        let mut error = open(&handle, "error").await;
        // Only the timeout itself can tell us the server gave up; there is no signal to await.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            handle
                .open_stream(HeaderBlock::new().with("streamtype", "stdout"))
                .await
                .unwrap_err(),
            OpenError::Timeout,
            "streams created after the timeout get no reply"
        );
        assert_eq!(
            error.reader.end(),
            None,
            "no FIN, no reset on the error stream"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(1), error.reader.recv())
                .await
                .is_err(),
            "no status"
        );
        handle.ping().await.expect("the connection stays open");
        assert!(!handle.is_closed());
        handle.close().await;
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn attach_connects_to_the_container_stdio_and_detaches_on_stdin_fin() {
    bounded(async {
        let sim = sim().await;
        sim.create_container(ContainerSpec {
            id: "web".into(),
            command: vec!["cat".into()],
            tty: false,
            stdin: true,
        })
        .unwrap();
        let attach = |stdin| AttachRequest {
            container_id: "web".into(),
            tty: false,
            stdin,
            stdout: true,
            stderr: true,
        };
        let url = sim.attach(attach(true)).unwrap();
        assert!(url.contains("/attach/"), "{url}");
        let mut s = open_session(&url, CLIENT_GO_PROTOCOLS, &["stdin", "stdout", "stderr"]).await;
        s.stdin
            .as_mut()
            .unwrap()
            .writer
            .send(Bytes::from_static(b"ping\n"))
            .await
            .unwrap();
        let echoed = s.stdout.as_mut().unwrap().reader.recv().await.unwrap();
        assert_eq!(echoed, "ping\n");
        s.stdin.as_mut().unwrap().writer.finish().await.unwrap();
        let out = finish(s).await;
        assert_eq!(status(&out.error), Status::success());
        assert_eq!(out.stdout_end, Some(StreamEnd::Fin));

        // The container kept running and its stdin open: a second attach works.
        let url = sim.attach(attach(true)).unwrap();
        let mut s = open_session(&url, CLIENT_GO_PROTOCOLS, &["stdin", "stdout", "stderr"]).await;
        s.stdin
            .as_mut()
            .unwrap()
            .writer
            .send(Bytes::from_static(b"again\n"))
            .await
            .unwrap();
        assert_eq!(
            s.stdout.as_mut().unwrap().reader.recv().await.unwrap(),
            "again\n"
        );
        s.handle.close().await;
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn attach_to_an_unknown_container_fails_the_cri_call() {
    bounded(async {
        let sim = sim().await;
        let err = sim
            .attach(AttachRequest {
                container_id: "nope".into(),
                stdout: true,
                ..AttachRequest::default()
            })
            .unwrap_err();
        assert_eq!(err.grpc_code(), "NotFound");
        sim.shutdown().await;
    })
    .await;
}

/// A TCP server that echoes every connection until EOF, then closes it.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = conn.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    port
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn pf_headers(stream_type: &str, port: u16, request_id: &str) -> HeaderBlock {
    HeaderBlock::new()
        .with("streamtype", stream_type)
        .with("port", port.to_string())
        .with("requestid", request_id)
}

/// Opens a pair as client-go does: error stream (half-closed at once), then data stream.
async fn open_pair(handle: &Handle, port: u16, request_id: &str) -> (Stream, Stream) {
    let mut error = handle
        .open_stream(pf_headers("error", port, request_id))
        .await
        .unwrap();
    error.writer.finish().await.unwrap();
    let data = handle
        .open_stream(pf_headers("data", port, request_id))
        .await
        .unwrap();
    (error, data)
}

async fn port_forward_session(sim: &RuntimeSim) -> (Handle, Incoming) {
    let url = sim
        .port_forward(PortForwardRequest {
            pod_sandbox_id: "sandbox1".into(),
            ports: vec![],
        })
        .unwrap();
    let (handle, incoming, protocol) = connect(&url, &[PORT_FORWARD], client_config()).await;
    assert_eq!(protocol, PORT_FORWARD);
    (handle, incoming)
}

#[tokio::test]
async fn port_forward_echoes_through_two_concurrent_pairs_with_half_close() {
    bounded(async {
        let sim = sim().await;
        let port = echo_server().await;
        let (handle, _incoming) = port_forward_session(&sim).await;
        let (mut err0, mut data0) = open_pair(&handle, port, "0").await;
        let (mut err1, mut data1) = open_pair(&handle, port, "1").await;
        data1.writer.send(Bytes::from_static(b"two")).await.unwrap();
        data0.writer.send(Bytes::from_static(b"one")).await.unwrap();
        // Both pairs are live at once: each gets its own echo before either half-closes.
        assert_eq!(data0.reader.recv().await.unwrap(), "one");
        assert_eq!(data1.reader.recv().await.unwrap(), "two");
        data0.writer.finish().await.unwrap();
        data1.writer.finish().await.unwrap();
        for (err, data) in [(&mut err0, &mut data0), (&mut err1, &mut data1)] {
            let (rest, error_text) =
                tokio::join!(read_all(&mut data.reader), read_all(&mut err.reader));
            assert_eq!(rest, b"", "nothing after the echo");
            assert_eq!(data.reader.end(), Some(StreamEnd::Fin));
            assert_eq!(error_text, b"", "success leaves the error stream empty");
            assert_eq!(err.reader.end(), Some(StreamEnd::Fin));
        }
        // The connection serves further pairs.
        let (mut err2, mut data2) = open_pair(&handle, port, "2").await;
        data2
            .writer
            .send(Bytes::from_static(b"three"))
            .await
            .unwrap();
        data2.writer.finish().await.unwrap();
        assert_eq!(read_all(&mut data2.reader).await, b"three");
        assert_eq!(read_all(&mut err2.reader).await, b"");
        handle.close().await;
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn port_forward_to_a_refused_port_writes_the_error_then_resets_both_streams() {
    bounded(async {
        let sim = sim().await;
        let port = closed_port().await;
        let (handle, _incoming) = port_forward_session(&sim).await;
        let (mut err, mut data) = open_pair(&handle, port, "0").await;
        let (data_bytes, error_text) =
            tokio::join!(read_all(&mut data.reader), read_all(&mut err.reader));
        let error_text = String::from_utf8(error_text).unwrap();
        assert_eq!(data_bytes, b"");
        // containerd 1.6's wording (observed), with "host" for its network namespace path.
        assert_eq!(
            error_text,
            format!(
                "error forwarding port {port} to pod sandbox1, uid : failed to execute \
                 portforward in network namespace \"host\": failed to connect to \
                 localhost:{port} inside namespace \"sandbox1\", IPv4: dial tcp4 \
                 127.0.0.1:{port}: connect: connection refused IPv6 dial tcp6: address \
                 localhost: no suitable address found "
            )
        );
        assert_eq!(err.reader.end(), Some(StreamEnd::Reset(RstStatus::CANCEL)));
        assert_eq!(data.reader.end(), Some(StreamEnd::Reset(RstStatus::CANCEL)));
        // Only that pair failed: the connection still forwards.
        let echo = echo_server().await;
        let (mut err, mut data) = open_pair(&handle, echo, "1").await;
        data.writer.send(Bytes::from_static(b"ok")).await.unwrap();
        data.writer.finish().await.unwrap();
        assert_eq!(read_all(&mut data.reader).await, b"ok");
        assert_eq!(read_all(&mut err.reader).await, b"");
        handle.close().await;
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn port_forward_streams_with_bad_headers_are_reset_before_reply() {
    bounded(async {
        let sim = sim().await;
        let (handle, _incoming) = port_forward_session(&sim).await;
        for headers in [
            HeaderBlock::new().with("streamtype", "data"),
            pf_headers("data", 0, "0"),
            HeaderBlock::new()
                .with("streamtype", "data")
                .with("port", "http"),
            pf_headers("stdin", 80, "0"),
        ] {
            assert_eq!(
                handle.open_stream(headers.clone()).await.unwrap_err(),
                OpenError::Reset(RstStatus::CANCEL),
                "{headers:?}"
            );
        }
        handle.close().await;
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn port_forward_duplicate_stream_type_is_reported_on_the_error_stream() {
    bounded(async {
        let sim = sim().await;
        let (handle, _incoming) = port_forward_session(&sim).await;
        let mut err = handle
            .open_stream(pf_headers("error", 9, "7"))
            .await
            .unwrap();
        let _dup = handle
            .open_stream(pf_headers("error", 9, "7"))
            .await
            .unwrap();
        let text = err.reader.recv().await.unwrap();
        assert_eq!(
            text,
            "error processing stream for request 7: error stream already assigned"
        );
        handle.close().await;
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn port_forward_incomplete_pair_times_out_with_a_message_and_no_reset() {
    bounded(async {
        let sim = RuntimeSim::start(SimConfig {
            stream_creation_timeout: Duration::from_millis(100),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let (handle, _incoming) = port_forward_session(&sim).await;
        let mut err = handle
            .open_stream(pf_headers("error", 9, "req"))
            .await
            .unwrap();
        let text = String::from_utf8(err.reader.recv().await.unwrap().to_vec()).unwrap();
        assert!(text.starts_with("(conn=0x"), "{text:?}");
        assert!(
            text.ends_with(", request=req) timed out waiting for streams"),
            "{text:?}"
        );
        assert_eq!(err.reader.end(), None, "the stream stays open");
        handle.close().await;
        sim.shutdown().await;
    })
    .await;
}

/// Reads a pid the child printed, then polls /proc until that process is gone (or a zombie).
async fn wait_gone(pid: u32) {
    for _ in 0..200 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                return;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    panic!("process {pid} still running");
}

async fn read_pid(reader: &mut StreamReader) -> u32 {
    let mut text = Vec::new();
    while !text.ends_with(b"\n") {
        text.extend_from_slice(&reader.recv().await.expect("pid line"));
    }
    String::from_utf8(text).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn client_disconnect_kills_the_exec_process() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(
                &["sh", "-c", "echo $$; exec sleep 30"],
                false,
                true,
                false,
                false,
            ))
            .unwrap();
        let mut s = open_session(&url, CLIENT_GO_PROTOCOLS, &["stdout"]).await;
        let pid = read_pid(&mut s.stdout.as_mut().unwrap().reader).await;
        s.handle.abort();
        wait_gone(pid).await;
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_kills_sessions_and_containers() {
    bounded(async {
        let sim = sim().await;
        sim.create_container(ContainerSpec {
            id: "c".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "read x; echo $$; exec sleep 30".into(),
            ],
            tty: false,
            stdin: true,
        })
        .unwrap();
        let url = sim
            .attach(AttachRequest {
                container_id: "c".into(),
                stdin: true,
                stdout: true,
                ..AttachRequest::default()
            })
            .unwrap();
        let mut s = open_session(&url, CLIENT_GO_PROTOCOLS, &["stdin", "stdout"]).await;
        s.stdin
            .as_mut()
            .unwrap()
            .writer
            .send(Bytes::from_static(b"\n"))
            .await
            .unwrap();
        let container_pid = read_pid(&mut s.stdout.as_mut().unwrap().reader).await;

        let url = sim
            .exec(exec_request(
                &["sh", "-c", "echo $$; exec sleep 30"],
                false,
                true,
                false,
                false,
            ))
            .unwrap();
        let mut e = open_session(&url, CLIENT_GO_PROTOCOLS, &["stdout"]).await;
        let exec_pid = read_pid(&mut e.stdout.as_mut().unwrap().reader).await;

        sim.shutdown().await;
        wait_gone(container_pid).await;
        wait_gone(exec_pid).await;
        // The sessions' connections are gone too.
        s.handle.closed().await;
        e.handle.closed().await;
    })
    .await;
}

#[tokio::test]
async fn cri_json_endpoints_serve_out_of_process_callers() {
    bounded(async {
        let sim = sim().await;
        let post = |path: &'static str, body: &'static str| {
            let addr = sim.addr();
            async move {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                let req = format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(req.as_bytes()).await.unwrap();
                let mut resp = String::new();
                conn.read_to_string(&mut resp).await.unwrap();
                resp
            }
        };
        let resp = post(
            "/cri/exec",
            r#"{"container_id":"c","cmd":["echo","hi"],"stdout":true}"#,
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        let url: serde_json::Value = serde_json::from_str(body).unwrap();
        let url = url["url"].as_str().unwrap();
        assert!(
            url.starts_with(&format!("http://{}/exec/", sim.addr())),
            "{url}"
        );
        let out = finish(open_session(url, CLIENT_GO_PROTOCOLS, &["stdout"]).await).await;
        assert_eq!(out.stdout, b"hi\n");

        let resp = post(
            "/cri/exec",
            r#"{"containerId":"c","cmd":["sh"],"tty":true,"stderr":true}"#,
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp}");
        assert!(
            resp.contains(
                r#"{"code":"InvalidArgument","message":"tty and stderr cannot both be true"}"#
            ),
            "{resp}"
        );

        let resp = post(
            "/cri/containers",
            r#"{"id":"k","command":["cat"],"stdin":true}"#,
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 201 Created\r\n"), "{resp}");
        let resp = post(
            "/cri/attach",
            r#"{"container_id":"k","stdin":true,"stdout":true}"#,
        )
        .await;
        assert!(resp.contains("/attach/"), "{resp}");
        let resp = post("/cri/portforward", r#"{"pod_sandbox_id":"p","port":[80]}"#).await;
        assert!(resp.contains("/portforward/"), "{resp}");
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn refusal_body_is_plain_text_to_client_go() {
    bounded(async {
        let sim = sim().await;
        let url = format!("{}/exec/AAAAAAAA", sim.base_url());
        match upgrade(&url, CLIENT_GO_PROTOCOLS).await.unwrap_err() {
            UpstreamError::Refused { body, .. } => {
                assert_eq!(body, RefusalBody::Text("404 page not found".into()));
            }
            other => panic!("{other:?}"),
        }
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn websocket_upgrade_is_refused_and_spends_the_token() {
    bounded(async {
        let sim = sim().await;
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        let request = UpgradeRequest {
            method: http::Method::GET,
            upgrade: "websocket".into(),
            ..UpgradeRequest::spdy(&["v4.channel.k8s.io"])
        };
        let err = upstream::upgrade(&url.parse().unwrap(), &request, &UpstreamConfig::default())
            .await
            .unwrap_err();
        let (status, headers, body) = refusal(err);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, "websocket not supported by runtime-sim\n");
        assert_go_text_error(&headers);
        let (status, _, _) = refusal(upgrade(&url, CLIENT_GO_PROTOCOLS).await.unwrap_err());
        assert_eq!(status, StatusCode::NOT_FOUND);
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn base_path_prefixes_the_streaming_urls() {
    bounded(async {
        let sim = RuntimeSim::start(SimConfig {
            base_path: "/streaming/".into(),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let url = sim
            .exec(exec_request(&["echo", "hi"], false, true, false, false))
            .unwrap();
        assert!(
            url.starts_with(&format!("http://{}/streaming/exec/", sim.addr())),
            "{url}"
        );
        let out = finish(open_session(&url, CLIENT_GO_PROTOCOLS, &["stdout"]).await).await;
        assert_eq!(out.stdout, b"hi\n");
        sim.shutdown().await;
    })
    .await;
}
