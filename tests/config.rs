//! The production surface owned by `src/config.rs` and the server's limits and drain: the
//! three configuration layers and their precedence, validation that names every bad key at
//! once, unknown keys, `check-config` (the built binary), the documented example config,
//! draining with live sessions (in process and through SIGTERM to the binary), the session
//! limit, and the handshake and header-read timeouts.

#[path = "support/bridge_harness.rs"]
mod bridge_harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridge_harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ws_spdy_bridge::config::{Config, ConfigErrors, Flags, LogFormat, Sources};
use ws_spdy_bridge::server::{BridgeConfig, ServeLimits};
use ws_spdy_bridge::spdy::Frame;

const BIN: &str = env!("CARGO_BIN_EXE_ws-spdy-bridge");

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "ws-spdy-bridge-config-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(
    file: Option<&Path>,
    env_pairs: &[(&str, &str)],
    flags: Flags,
) -> Result<Config, ConfigErrors> {
    Config::load(&Sources {
        file: file.map(Path::to_owned),
        env: env(env_pairs),
        flags,
    })
}

fn error_for<'a>(errors: &'a ConfigErrors, key: &str) -> &'a ws_spdy_bridge::config::KeyError {
    errors
        .0
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error for {key}; got:\n{errors}"))
}

// ---------------------------------------------------------------------------------------------
// Layers

#[test]
fn file_then_environment_then_flags_each_override_the_one_before() {
    let dir = Scratch::new("precedence");
    let file = dir.file(
        "bridge.yaml",
        r#"
listen: "127.0.0.1:7000"
upstream:
  url: "http://file:1"
  connect_timeout: 7s
session:
  idle_timeout: 1h
limits:
  write_queue: 3
  max_sessions: 10
log:
  format: json
"#,
    );
    let cfg = load(
        Some(&file),
        &[
            ("WS_SPDY_BRIDGE_UPSTREAM__URL", "http://env:2"),
            ("WS_SPDY_BRIDGE_SESSION__IDLE_TIMEOUT", "90m"),
            ("WS_SPDY_BRIDGE_LIMITS__MAX_SESSIONS", "20"),
            ("WS_SPDY_BRIDGE_LISTEN", "127.0.0.1:7001"),
        ],
        Flags {
            upstream: Some("http://flag:3".into()),
            listen: Some("127.0.0.1:7002".parse().unwrap()),
            ..Flags::default()
        },
    )
    .unwrap();
    // File only.
    assert_eq!(cfg.upstream.connect_timeout, Duration::from_secs(7));
    assert_eq!(cfg.limits.write_queue, 3);
    assert_eq!(cfg.log.format, LogFormat::Json);
    // File, then environment.
    assert_eq!(cfg.session.idle_timeout, Duration::from_secs(90 * 60));
    assert_eq!(cfg.limits.max_sessions, 20);
    // File, environment, then flags.
    assert_eq!(cfg.upstream.url.unwrap().to_string(), "http://flag:3/");
    assert_eq!(cfg.listen, "127.0.0.1:7002".parse().unwrap());
    // Untouched keys keep their defaults.
    assert_eq!(cfg.drain.deadline, Duration::from_secs(30));
}

#[test]
fn toml_files_load_like_yaml_ones() {
    let dir = Scratch::new("toml");
    let file = dir.file(
        "bridge.toml",
        r#"
base_path = "/stream"
[upstream]
url = "http://127.0.0.1:10010"
[limits]
max_message_size = "1MiB"
max_frame_size = 65536
[drain]
deadline = "5s"
"#,
    );
    let cfg = load(Some(&file), &[], Flags::default()).unwrap();
    assert_eq!(cfg.base_path, "/stream");
    assert_eq!(cfg.limits.max_message_size, 1 << 20);
    assert_eq!(cfg.limits.max_frame_size, 65536);
    assert_eq!(cfg.drain.deadline, Duration::from_secs(5));
    let bridge = cfg.to_bridge_config().unwrap();
    assert_eq!(bridge.max_message, 1 << 20);
    assert_eq!(bridge.max_frame, 65536);
}

#[test]
fn cri_flags_select_cri_mode_and_convert() {
    let cfg = load(
        None,
        &[("WS_SPDY_BRIDGE_CRI__TOKEN_TTL", "30s")],
        Flags {
            cri_listen: Some("unix:/run/ws-spdy-bridge/cri.sock".into()),
            runtime_endpoint: Some("unix:///run/containerd/containerd.sock".into()),
            advertise_url: Some("http://127.0.0.1:8765/bridge".into()),
            ..Flags::default()
        },
    )
    .unwrap();
    let cri = cfg.to_cri_config().expect("CRI mode");
    assert_eq!(cri.listen, Path::new("/run/ws-spdy-bridge/cri.sock"));
    assert_eq!(
        cri.runtime_endpoint,
        Path::new("/run/containerd/containerd.sock")
    );
    assert_eq!(cri.token_ttl, Duration::from_secs(30));
    assert_eq!(cfg.to_bridge_config().unwrap().base_path, "/bridge");
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn every_validation_error_names_its_key() {
    // One bad value at a time: the key it is reported under, and a word of the message.
    let cases: &[(&str, &str, &str)] = &[
        ("upstream: {url: 'ftp://x'}", "upstream.url", "http"),
        ("upstream: {url: 'http://h?x=1'}", "upstream.url", "query"),
        (
            "upstream: {connect_timeout: 0s}",
            "upstream.connect_timeout",
            "> 0",
        ),
        (
            "upstream: {response_header_timeout: 0}",
            "upstream.response_header_timeout",
            "> 0",
        ),
        (
            "upstream: {max_response_header_bytes: 100}",
            "upstream.max_response_header_bytes",
            "at least",
        ),
        ("base_path: 'stream'", "base_path", "'/'"),
        ("session: {idle_timeout: 0s}", "session.idle_timeout", "> 0"),
        (
            "session: {status_write_timeout: 0s}",
            "session.status_write_timeout",
            "> 0",
        ),
        ("session: {stdin_buffer: 0}", "session.stdin_buffer", "> 0"),
        (
            "session: {max_outbound_payload: 0}",
            "session.max_outbound_payload",
            "> 0",
        ),
        ("limits: {max_sessions: 0}", "limits.max_sessions", "> 0"),
        (
            "limits: {retry_after: 500ms}",
            "limits.retry_after",
            "at least 1s",
        ),
        (
            "limits: {max_message_size: 0, max_frame_size: 0}",
            "limits.max_message_size",
            "> 0",
        ),
        (
            "limits: {max_frame_size: 0}",
            "limits.max_frame_size",
            "> 0",
        ),
        (
            "limits: {max_message_size: 1KiB, max_frame_size: 2KiB}",
            "limits.max_frame_size",
            "max_message_size",
        ),
        (
            "limits: {handshake_timeout: 0s}",
            "limits.handshake_timeout",
            "> 0",
        ),
        (
            "limits: {header_read_timeout: 0s}",
            "limits.header_read_timeout",
            "> 0",
        ),
        (
            "limits: {stream_buffer: 512}",
            "limits.stream_buffer",
            "at least",
        ),
        ("limits: {write_queue: 0}", "limits.write_queue", "> 0"),
        ("drain: {close_timeout: 0s}", "drain.close_timeout", "> 0"),
        ("log: {level: 'info,['}", "log.level", "filter"),
        ("log: {format: xml}", "log.format", "xml"),
        (
            "session: {idle_timeout: soon}",
            "session.idle_timeout",
            "duration",
        ),
        (
            "limits: {stream_buffer: 12XB}",
            "limits.stream_buffer",
            "unit",
        ),
        (
            "limits: {max_sessions: many}",
            "limits.max_sessions",
            "invalid",
        ),
        ("listen: 'not an address'", "listen", "address"),
        (
            "compat: {upgrade_client_first: perhaps}",
            "compat.upgrade_client_first",
            "invalid",
        ),
    ];
    let dir = Scratch::new("each");
    for (i, (yaml, key, word)) in cases.iter().enumerate() {
        // A valid upstream from the environment, unless the case is about the upstream URL.
        let upstream: &[(&str, &str)] = if yaml.contains("url:") {
            &[]
        } else {
            &[("WS_SPDY_BRIDGE_UPSTREAM__URL", "http://127.0.0.1:10010")]
        };
        let file = dir.file(&format!("case{i}.yaml"), yaml);
        let errors = load(Some(&file), upstream, Flags::default())
            .expect_err(&format!("{yaml} must be refused"));
        let e = error_for(&errors, key);
        assert!(e.message.contains(word), "{yaml}: expected {word:?} in {e}");
        let origin = e.origin.as_deref().unwrap_or_default();
        assert!(origin.ends_with(".yaml"), "{yaml}: origin of {e}");
        // Nothing outside the section is blamed.
        let section = key.split('.').next().unwrap();
        assert!(
            errors.0.iter().all(|e| e.key.starts_with(section)),
            "{yaml}: only {section}: {errors}"
        );
    }
}

#[test]
fn cri_section_errors_name_their_keys() {
    let dir = Scratch::new("cri");
    let file = dir.file(
        "cri.yaml",
        r#"
base_path: /other
cri:
  listen: relative.sock
  advertise_url: "ftp://bridge"
  runtime_stream_base: "http://runtime:1/path"
  token_ttl: 0s
  max_tokens: 0
  connect_timeout: 0s
"#,
    );
    let errors = load(Some(&file), &[], Flags::default()).unwrap_err();
    for (key, word) in [
        ("cri.listen", "absolute"),
        ("cri.runtime_endpoint", "required"),
        ("cri.advertise_url", "http"),
        ("cri.runtime_stream_base", "no path"),
        ("cri.token_ttl", "> 0"),
        ("cri.max_tokens", "> 0"),
        ("cri.connect_timeout", "> 0"),
    ] {
        let e = error_for(&errors, key);
        assert!(e.message.contains(word), "{key}: {e}");
    }
    // Standalone mode needs an upstream; CRI mode does not.
    assert!(!errors.has_key("upstream.url"), "{errors}");
    let none = load(None, &[], Flags::default()).unwrap_err();
    assert!(none.has_key("upstream.url"), "{none}");
}

#[test]
fn several_errors_from_every_layer_are_reported_together() {
    let dir = Scratch::new("several");
    let file = dir.file(
        "bad.yaml",
        r#"
upstream:
  url: "http://127.0.0.1:10010"
  connect_timeout: later
session:
  idle_timeout: 0s
  stdin_buffer: lots
limits:
  max_sessions: 0
"#,
    );
    let errors = load(
        Some(&file),
        &[("WS_SPDY_BRIDGE_DRAIN__CLOSE_TIMEOUT", "0s")],
        Flags {
            base_path: Some("no-slash".into()),
            ..Flags::default()
        },
    )
    .unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "base_path",
            "drain.close_timeout",
            "limits.max_sessions",
            "session.idle_timeout",
            "session.stdin_buffer",
            "upstream.connect_timeout",
        ],
        "{errors}"
    );
    let origin = |key| error_for(&errors, key).origin.clone().unwrap_or_default();
    assert!(origin("session.idle_timeout").ends_with("bad.yaml"));
    assert_eq!(
        origin("drain.close_timeout"),
        "environment variable WS_SPDY_BRIDGE_DRAIN__CLOSE_TIMEOUT"
    );
    assert_eq!(origin("base_path"), "command line");
    // One line each, key first.
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(text.lines().all(|l| keys.iter().any(|k| l.starts_with(k))));
}

#[test]
fn unknown_keys_are_rejected_from_the_file_and_the_environment() {
    let dir = Scratch::new("unknown");
    let file = dir.file(
        "typo.yaml",
        r#"
upstream:
  url: "http://127.0.0.1:10010"
sesion:
  idle_timeout: 1h
session:
  idel_timeout: 1h
"#,
    );
    let errors = load(
        Some(&file),
        &[
            ("WS_SPDY_BRIDGE_LIMITS__MAX_SESION", "3"),
            ("WS_SPDY_BRIDGE_LISTENING", "127.0.0.1:1"),
            // The test suite's own switches are not settings, and not errors.
            ("WS_SPDY_BRIDGE_REQUIRE_PEERS", "1"),
            ("UNRELATED", "x"),
        ],
        Flags::default(),
    )
    .unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "limits.max_sesion",
            "listening",
            "sesion",
            "session.idel_timeout"
        ],
        "{errors}"
    );
    let e = error_for(&errors, "session.idel_timeout");
    assert!(e.message.starts_with("unknown key"), "{e}");
    assert!(
        e.message.contains("idle_timeout"),
        "lists the known keys: {e}"
    );
    assert_eq!(
        error_for(&errors, "limits.max_sesion").origin.as_deref(),
        Some("environment variable WS_SPDY_BRIDGE_LIMITS__MAX_SESION")
    );
}

#[test]
fn files_of_other_types_and_unreadable_files_are_errors() {
    let dir = Scratch::new("types");
    let json = dir.file("bridge.json", "{}");
    let errors = load(Some(&json), &[], Flags::default()).unwrap_err();
    assert!(errors.0[0].message.contains(".yaml"), "{errors}");
    let missing = dir.0.join("missing.yaml");
    assert!(load(Some(&missing), &[], Flags::default()).is_err());
    let broken = dir.file("broken.yaml", "upstream: [unclosed");
    let errors = load(Some(&broken), &[], Flags::default()).unwrap_err();
    assert!(errors.0[0].key.ends_with("broken.yaml"), "{errors}");
}

// ---------------------------------------------------------------------------------------------
// check-config and the documented keys

fn check_config(file: &Path, extra_env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config").arg(file);
    for (k, _) in std::env::vars() {
        if k.starts_with("WS_SPDY_BRIDGE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run check-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let dir = Scratch::new("check-ok");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_file = dir.file("tls.crt", &cert.cert.pem());
    let key_pem = cert.signing_key.serialize_pem();
    let key_file = dir.file("tls.key", &key_pem);
    let file = dir.file(
        "bridge.yaml",
        &format!(
            r#"
upstream:
  url: "http://runtime:10010/base"
tls:
  cert_file: "{}"
  key_file: "{}"
session:
  idle_timeout: 90m
"#,
            cert_file.display(),
            key_file.display()
        ),
    );
    let (code, stdout, stderr) = check_config(
        &file,
        &[(
            "WS_SPDY_BRIDGE_UPSTREAM__URL",
            "http://admin:hunter2@runtime:10010/base",
        )],
    );
    assert_eq!(code, 0, "stderr: {stderr}");
    // The environment's value won, and is shown without its credentials or query.
    assert!(
        stdout.contains(r#"url: "http://***@runtime:10010/base""#),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2") && !stdout.contains("admin"));
    // Key files by path; their contents never.
    assert!(stdout.contains(&key_file.display().to_string()), "{stdout}");
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!stdout.contains("PRIVATE KEY") && !stdout.contains(key_body));
    assert!(stdout.contains("idle_timeout: \"1h30m\""), "{stdout}");
    // What it prints loads back to the same configuration.
    let printed = dir.file("printed.yaml", &stdout);
    let (code, again, stderr) = check_config(&printed, &[]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(again, stdout);
}

#[test]
fn check_config_exits_1_with_every_error_and_its_key() {
    let dir = Scratch::new("check-bad");
    let file = dir.file(
        "bad.yaml",
        r#"
upstream:
  url: "http://127.0.0.1:10010"
session:
  idle_timeout: 0s
limits:
  max_sessions: 0
  colour: blue
"#,
    );
    let (code, stdout, stderr) =
        check_config(&file, &[("WS_SPDY_BRIDGE_DRAIN__DEADLINE", "whenever")]);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    for key in [
        "session.idle_timeout:",
        "limits.max_sessions:",
        "limits.colour:",
        "drain.deadline:",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    // Listener TLS files are loaded, and a bad one is reported under its key.
    let file = dir.file(
        "tls.yaml",
        "upstream: {url: 'http://127.0.0.1:10010'}\ntls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}\n",
    );
    let (code, _, stderr) = check_config(&file, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("tls:"), "{stderr}");
}

/// Every leaf key of the configuration, from a config with the optional sections filled in.
fn every_key() -> Vec<String> {
    let cfg = Config {
        cri: Some(Default::default()),
        tls: Some(ws_spdy_bridge::server::TlsConfig::new("/c", "/k")),
        ..Config::default()
    };
    let value = serde_json::to_value(&cfg).unwrap();
    let mut keys = Vec::new();
    fn walk(v: &serde_json::Value, prefix: &str, keys: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(v, &key, keys);
                }
            }
            _ => keys.push(prefix.to_owned()),
        }
    }
    walk(&value, "", &mut keys);
    keys
}

#[test]
fn example_config_is_valid_and_readme_documents_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("deploy/config.example.yaml");
    let cfg = load(Some(&example), &[], Flags::default()).expect("the example loads");
    // The example spells out the defaults.
    let mut expected = Config::default();
    expected.upstream.url = cfg.upstream.url.clone();
    assert_eq!(cfg, expected);
    let example_text = std::fs::read_to_string(&example).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("\n## Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    for key in every_key() {
        assert!(
            section.contains(&format!("`{key}`")),
            "README Configuration lacks `{key}`"
        );
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            example_text.contains(&format!("{leaf}:")),
            "deploy/config.example.yaml lacks {key}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Drain

fn sleep_request(secs: &str) -> ws_spdy_bridge::runtime_sim::ExecRequest {
    exec(&["sleep", secs], false, true, false, false)
}

/// Waits until connecting to `addr` is refused.
async fn until_refused(addr: std::net::SocketAddr) {
    within(Duration::from_secs(2), "listener closed", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn drain_refuses_new_connections_and_closes_live_sessions_with_1001_at_the_deadline() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let addr = bridge.addr();
        let req = sleep_request("30");
        let url = sim.exec(req.clone()).unwrap();
        let mut ws = upgrade(addr, &bridge_path(&url, &req)).await;
        // The initial message: the session is live.
        ws.next_message().await;

        let deadline = Duration::from_millis(800);
        let started = Instant::now();
        let drain = tokio::spawn(bridge.drain(deadline));
        until_refused(addr).await;
        assert!(
            started.elapsed() < deadline,
            "refused only after the deadline"
        );

        let t = ws.expect_closed().await;
        let closed_after = started.elapsed();
        assert_eq!(
            t.close().map(|(code, _)| code),
            Some(1001),
            "Close 1001 (going away): {t:?}"
        );
        // A Failure status first: without one, client-go reports the cut command as a success.
        let status = t.status();
        assert_eq!((status.status.as_str(), status.code), ("Failure", 503));
        assert!(
            status.message.contains("shutting down"),
            "{}",
            status.message
        );
        assert!(
            closed_after >= deadline,
            "closed before the deadline: {closed_after:?}"
        );
        assert!(
            closed_after < deadline + Duration::from_millis(700),
            "{closed_after:?}"
        );
        within(Duration::from_secs(3), "drain returns", drain)
            .await
            .unwrap();
        sim.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn drain_lets_a_session_that_ends_in_time_finish_normally() {
    bounded(async {
        let sim = sim().await;
        let bridge = start_bridge(bridge_config(sim.base_url())).await;
        let req = exec(
            &["sh", "-c", "sleep 0.3; echo done"],
            false,
            true,
            false,
            false,
        );
        let url = sim.exec(req.clone()).unwrap();
        let mut ws = upgrade(bridge.addr(), &bridge_path(&url, &req)).await;
        let started = Instant::now();
        let drain = tokio::spawn(bridge.drain(Duration::from_secs(5)));
        let t = ws.expect_closed().await;
        t.assert_clean_end(Some(SUCCESS));
        assert_eq!(t.channel(1), b"done\n");
        within(
            Duration::from_secs(2),
            "drain returns once sessions end",
            drain,
        )
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        sim.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn drain_tears_the_upstream_down_at_the_deadline() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(bridge_config(&fake.url())).await;
        let runtime = async {
            let mut peer = fake.request().await.upgrade(Some(V4)).await;
            peer.accept_streams(&["error", "stdin", "stdout"]).await;
            peer
        };
        let (mut ws, mut peer) = tokio::join!(
            upgrade(bridge.addr(), &fake_path(true, true, false, false)),
            runtime
        );
        let drain = tokio::spawn(bridge.drain(Duration::from_millis(300)));
        let t = ws.expect_closed().await;
        assert_eq!(t.close().map(|(c, _)| c), Some(1001), "{t:?}");
        let (frames, closed) = within(
            Duration::from_secs(2),
            "upstream closed",
            peer.until_closed(),
        )
        .await;
        assert!(
            frames.iter().any(|f| matches!(f, Frame::GoAway { .. })),
            "GOAWAY to the runtime: {frames:?}"
        );
        assert_eq!(closed, None);
        drain.await.unwrap();
    })
    .await
}

#[test]
fn sigterm_drains_the_serving_binary_and_it_exits_0() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bounded(async {
        let sim = sim().await;
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--upstream",
                sim.base_url(),
            ])
            .env("WS_SPDY_BRIDGE_DRAIN__DEADLINE", "1s")
            .env("WS_SPDY_BRIDGE_LOG__LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start serve");
        let stdout = child.stdout.take().unwrap();
        // The pipe stays open (`_out`) until the child has exited.
        let (first, _out) = tokio::task::spawn_blocking(move || {
            let mut out = BufReader::new(stdout);
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            (line, out)
        })
        .await
        .unwrap();
        let addr: std::net::SocketAddr = first
            .trim()
            .strip_prefix("bridge on ws://")
            .unwrap_or_else(|| panic!("banner: {first:?}"))
            .parse()
            .unwrap();

        let req = sleep_request("30");
        let url = sim.exec(req.clone()).unwrap();
        let mut ws = upgrade(addr, &bridge_path(&url, &req)).await;
        ws.next_message().await;

        let started = Instant::now();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        until_refused(addr).await;
        let t = ws.expect_closed().await;
        assert_eq!(t.close().map(|(c, _)| c), Some(1001), "{t:?}");
        assert!(started.elapsed() >= Duration::from_secs(1));
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "exit status {status:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        sim.shutdown().await;
    }));
}

// ---------------------------------------------------------------------------------------------
// Limits

fn limited(upstream: &str, limits: ServeLimits) -> BridgeConfig {
    BridgeConfig {
        limits,
        ..bridge_config(upstream)
    }
}

#[tokio::test]
async fn over_the_session_limit_gets_503_with_retry_after_and_the_runtime_is_not_asked() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let bridge = start_bridge(limited(
            &fake.url(),
            ServeLimits {
                max_sessions: 1,
                retry_after: Duration::from_millis(2500),
                ..ServeLimits::default()
            },
        ))
        .await;
        // The first request holds the only place while the runtime has not answered.
        let first = tokio::spawn(handshake(
            bridge.addr(),
            &ClientRequest::v5(fake_path(false, true, false, false)),
        ));
        let pending = fake.request().await;
        let (resp, _) = handshake(
            bridge.addr(),
            &ClientRequest::v5(fake_path(false, true, false, false)),
        )
        .await;
        assert_eq!(resp.status, 503);
        assert_eq!(resp.header("retry-after"), Some("3"));
        let status = resp.status_body();
        assert_eq!(status.code, 503);
        assert_eq!(status.reason, "ServiceUnavailable");
        assert!(status.message.contains("limit 1"), "{}", status.message);
        assert_eq!(status.details.unwrap().retry_after_seconds, 3);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(fake.try_request().is_none(), "the runtime was asked again");
        assert_eq!(fake.connections(), 1);

        // The place is free again once the first session is over.
        pending.refuse("404 Not Found", &[], "gone").await;
        let (resp, _) = first.await.unwrap();
        assert_eq!(resp.status, 404);
        let second = tokio::spawn(handshake(
            bridge.addr(),
            &ClientRequest::v5(fake_path(false, true, false, false)),
        ));
        fake.request()
            .await
            .refuse("404 Not Found", &[], "gone")
            .await;
        assert_eq!(second.await.unwrap().0.status, 404);
        bridge.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn header_read_timeout_closes_a_silent_connection() {
    bounded(async {
        let fake = FakeRuntime::start().await;
        let limit = Duration::from_millis(300);
        let bridge = start_bridge(limited(
            &fake.url(),
            ServeLimits {
                header_read_timeout: limit,
                ..ServeLimits::default()
            },
        ))
        .await;
        for partial in [&b""[..], b"GET /exec/x HTTP/1.1\r\nHost: a\r\n"] {
            let mut tcp = TcpStream::connect(bridge.addr()).await.unwrap();
            tcp.write_all(partial).await.unwrap();
            let started = Instant::now();
            let mut got = Vec::new();
            let _ = within(
                Duration::from_secs(3),
                "connection closed",
                tcp.read_to_end(&mut got),
            )
            .await;
            let elapsed = started.elapsed();
            assert!(elapsed >= limit - Duration::from_millis(50), "{elapsed:?}");
            assert!(elapsed < limit * 4, "{elapsed:?}");
            // Nothing, or a 408, and the connection is closed.
            assert!(
                got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
                "{:?}",
                String::from_utf8_lossy(&got)
            );
        }
        assert_eq!(fake.connections(), 0);
        bridge.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn handshake_timeout_answers_504_and_drops_the_runtime_dial() {
    bounded(async {
        let mut fake = FakeRuntime::start().await;
        let limit = Duration::from_millis(400);
        let bridge = start_bridge(limited(
            &fake.url(),
            ServeLimits {
                handshake_timeout: limit,
                ..ServeLimits::default()
            },
        ))
        .await;
        let started = Instant::now();
        let client = tokio::spawn(handshake(
            bridge.addr(),
            &ClientRequest::v5(fake_path(false, true, false, false)),
        ));
        // The runtime accepts the upgrade request and never answers.
        let pending = fake.request().await;
        let (resp, _) = client.await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(resp.status, 504);
        assert_eq!(resp.status_body().reason, "Timeout");
        assert!(elapsed >= limit && elapsed < limit * 3, "{elapsed:?}");
        // The bridge gave up its connection to the runtime.
        let mut tcp = pending.respond_raw(b"").await;
        let mut rest = Vec::new();
        let n = within(
            Duration::from_secs(2),
            "runtime side closed",
            tcp.read_to_end(&mut rest),
        )
        .await
        .unwrap_or(0);
        assert_eq!(n, 0);
        bridge.shutdown().await;
    })
    .await
}
