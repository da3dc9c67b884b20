//! A real legacy runtime for integration tests: containerd 1.6 + runc, started privately by
//! `tests/peers/containerd/start.sh`, with one pod sandbox and two busybox containers created
//! over CRI.
//!
//! One containerd per test binary, shared by its tests:
//!
//! * [`acquire`] starts it on first use (blocking; other tests wait) and returns `None` after
//!   printing a notice when it cannot run here, unless `WS_SPDY_BRIDGE_REQUIRE_PEERS=1`, in which
//!   case that is a panic.
//! * Teardown is synchronous when the last selected test of the binary drops its guard: the
//!   binary's test list (passed to [`acquire`]) is matched against libtest's filters on the
//!   command line, as libtest does.
//! * A reaper process, in its own process group, holds the read end of a pipe whose write end
//!   only this process holds. Whenever this process ends (normally, by panic, abort, SIGINT,
//!   SIGKILL) the pipe closes and the reaper runs `stop.sh`: nothing survives the binary even if
//!   the synchronous teardown never ran.
//! * Run directories live under `$TMPDIR/ws-spdy-bridge-peers/`, each with the owning test
//!   process's pid; a directory whose owner is gone is a leak of an earlier run and is stopped
//!   and removed before a new containerd starts.
//!
//! `WS_SPDY_BRIDGE_KEEP_PEER_DIR=1` keeps the run directory (logs, config) after teardown.
//!
//! Output that must be seen even when libtest captures test output (the skip notice, timings)
//! is written straight to the process's stderr.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ws_spdy_bridge::cri::CriClient;
use ws_spdy_bridge::cri::proto::*;

/// Image with `/bin/busybox` and a symlink per applet, imported by start.sh.
pub const BUSYBOX_IMAGE: &str = "localhost/ws-spdy-bridge/busybox:1";
/// Port busybox httpd listens on inside the pod (loopback of the pod's network namespace).
pub const HTTP_PORT: u16 = 8080;
/// Body of `GET /` on [`HTTP_PORT`].
pub const HTTP_BODY: &str = "hello from ws-spdy-bridge tests\n";

/// Env var that turns "cannot run containerd here" into a failure (CI sets it).
pub const REQUIRE_ENV: &str = "WS_SPDY_BRIDGE_REQUIRE_PEERS";
/// Env var that keeps the run directory after teardown.
pub const KEEP_ENV: &str = "WS_SPDY_BRIDGE_KEEP_PEER_DIR";

/// The running runtime and what the tests use in it.
#[derive(Debug)]
pub struct Peer {
    /// Run directory (config, state, logs).
    pub dir: PathBuf,
    /// containerd's gRPC (CRI) socket.
    pub socket: PathBuf,
    /// The pod sandbox (own network namespace, lo up).
    pub sandbox_id: String,
    /// Container running `httpd -f -p 127.0.0.1:8080`; target of the exec tests.
    pub web_id: String,
    /// Container running `cat` with stdin open (`stdin: true`); target of the attach tests.
    pub cat_id: String,
    /// Milliseconds: start.sh total, of which containerd start-up and image import, then
    /// sandbox and containers.
    pub timings: Timings,
}

/// Set-up durations in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub start_script_ms: u128,
    pub containerd_up_ms: Option<u128>,
    pub image_import_ms: Option<u128>,
    pub sandbox_ms: u128,
    pub containers_ms: u128,
}

impl Peer {
    /// A fresh CRI client. Make one per test: a client's connection task lives on the tokio
    /// runtime that created it, and every `#[tokio::test]` has its own runtime.
    pub async fn cri(&self) -> CriClient {
        CriClient::connect_unix(&self.socket)
            .await
            .expect("connect to containerd's CRI socket")
    }
}

/// Keeps the shared peer alive for one test; the last selected test's guard tears it down.
pub struct PeerGuard {
    peer: Arc<Peer>,
    test: &'static str,
    started: Instant,
}

impl std::ops::Deref for PeerGuard {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.peer
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        notice(&format!(
            "test {} took {} ms{}",
            self.test,
            self.started.elapsed().as_millis(),
            if std::thread::panicking() {
                " (failed)"
            } else {
                ""
            }
        ));
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        state.finished += 1;
        if state.selected.is_some_and(|n| state.finished >= n) {
            teardown(&mut state);
        }
    }
}

enum Up {
    NotStarted,
    Running(Arc<Peer>),
    Skipped(String),
    /// containerd ran but the pod could not be set up: every test fails with this.
    Failed(String),
}

struct State {
    up: Up,
    /// Tests of this binary that libtest will run, if it could be worked out.
    selected: Option<usize>,
    finished: usize,
    reaper: Option<ChildStdin>,
    dir: Option<PathBuf>,
    /// Run at teardown, before containerd stops (see [`on_teardown`]).
    hooks: Vec<Box<dyn FnOnce() + Send>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    up: Up::NotStarted,
    selected: None,
    finished: 0,
    reaper: None,
    dir: None,
    hooks: Vec::new(),
});

/// Registers `hook` to run at the synchronous teardown, before the pod and containerd are
/// stopped (hooks run in registration order, each on a thread of its own, so they may build a
/// tokio runtime). For things a test binary builds on top of the shared peer, such as a bridge
/// in front of containerd's streaming server. A hook must not call [`acquire`]. When the
/// synchronous teardown does not happen (see the module docs), hooks do not run either.
pub fn on_teardown(hook: impl FnOnce() + Send + 'static) {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    state.hooks.push(Box::new(hook));
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/containerd")
}

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Writes a line to stderr, bypassing libtest's output capture.
pub fn notice(msg: &str) {
    // One write per line, so lines do not interleave with libtest's own output.
    let line = format!("[containerd peer] {msg}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Returns the shared peer for the test `test` (one of `all_tests`, this binary's complete list
/// of tests that call `acquire`), starting it on first use. `None` (after a printed notice)
/// when containerd cannot run here and [`REQUIRE_ENV`] is not `1`.
pub fn acquire(test: &'static str, all_tests: &[&str]) -> Option<PeerGuard> {
    assert!(
        all_tests.contains(&test),
        "test {test} must be listed in the test list given to containerd_peer::acquire"
    );
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if state.selected.is_none() {
        state.selected = selected_count(all_tests);
    }
    match &state.up {
        Up::Running(peer) => {
            let peer = peer.clone();
            return Some(PeerGuard {
                peer,
                test,
                started: Instant::now(),
            });
        }
        Up::Skipped(why) => {
            notice(&format!("SKIPPED {test}: {why}"));
            state.finished += 1;
            return None;
        }
        Up::Failed(why) => panic!("containerd peer set-up failed earlier: {why}"),
        Up::NotStarted => {}
    }
    match start(&mut state) {
        Ok(peer) => {
            state.up = Up::Running(peer.clone());
            Some(PeerGuard {
                peer,
                test,
                started: Instant::now(),
            })
        }
        Err(Unavailable(why)) => {
            if required() {
                panic!("containerd peer required ({REQUIRE_ENV}=1) but unavailable: {why}");
            }
            notice(&format!(
                "SKIPPED {test}: containerd cannot run here ({why}); set {REQUIRE_ENV}=1 to make this a failure"
            ));
            state.up = Up::Skipped(why);
            state.finished += 1;
            None
        }
    }
}

struct Unavailable(String);

fn start(state: &mut State) -> Result<Arc<Peer>, Unavailable> {
    let base = std::env::temp_dir().join("ws-spdy-bridge-peers");
    fs::create_dir_all(&base).map_err(|e| Unavailable(format!("{}: {e}", base.display())))?;
    reap_leaked_runs(&base);

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = base.join(format!(
        "containerd-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000
    ));
    fs::create_dir_all(&dir).map_err(|e| Unavailable(format!("{}: {e}", dir.display())))?;
    fs::write(dir.join("owner.pid"), std::process::id().to_string())
        .map_err(|e| Unavailable(format!("owner.pid: {e}")))?;
    state.dir = Some(dir.clone());
    state.reaper = spawn_reaper(&dir);

    let t0 = Instant::now();
    let out = Command::new(scripts_dir().join("start.sh"))
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Unavailable(format!("cannot run start.sh: {e}")))?;
    let start_script_ms = t0.elapsed().as_millis();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let lines: Vec<&str> = stderr.trim().lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        let why = format!("start.sh exited with {}: {tail}", out.status);
        teardown(state);
        return Err(Unavailable(why));
    }
    for line in stdout.lines() {
        notice(line);
    }
    let (containerd_up_ms, image_import_ms) = parse_start_timings(&stdout);

    // CRI set-up on a runtime of its own: the caller is inside some test's runtime.
    let socket = dir.join("containerd.sock");
    let cgroup_parent = fs::read_to_string(dir.join("cgroup_parent"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let setup_dir = dir.clone();
    let setup_socket = socket.clone();
    let result = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(create_pod(&setup_dir, &setup_socket, &cgroup_parent))
    })
    .join()
    .unwrap_or_else(|_| Err("pod set-up panicked".to_string()));
    let pod = match result {
        Ok(pod) => pod,
        Err(e) => {
            let log = fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            teardown(state);
            // containerd runs, so this is no "cannot run here": fail loudly.
            let why = format!("the pod could not be set up: {e}");
            state.up = Up::Failed(why.clone());
            panic!("containerd started but {why}\ncontainerd.log (last lines):\n{tail}");
        }
    };
    let timings = Timings {
        start_script_ms,
        containerd_up_ms,
        image_import_ms,
        sandbox_ms: pod.sandbox_ms,
        containers_ms: pod.containers_ms,
    };
    notice(&format!("set-up timings: {timings:?}"));
    Ok(Arc::new(Peer {
        dir,
        socket,
        sandbox_id: pod.sandbox_id,
        web_id: pod.web_id,
        cat_id: pod.cat_id,
        timings,
    }))
}

fn parse_start_timings(stdout: &str) -> (Option<u128>, Option<u128>) {
    // "start.sh: timings: containerd up in N ms, images imported in M ms"
    let line = stdout.lines().find(|l| l.contains("timings:"));
    let num_after = |key: &str| -> Option<u128> {
        let l = line?;
        let rest = &l[l.find(key)? + key.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    (
        num_after("containerd up in"),
        num_after("images imported in"),
    )
}

struct Pod {
    sandbox_id: String,
    web_id: String,
    cat_id: String,
    sandbox_ms: u128,
    containers_ms: u128,
}

fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

async fn create_pod(dir: &Path, socket: &Path, cgroup_parent: &str) -> Result<Pod, String> {
    let cri = CriClient::connect_unix(socket)
        .await
        .map_err(|e| e.to_string())?;
    let v = cri.version().await.map_err(|e| e.to_string())?;
    notice(&format!(
        "CRI: {} {} (API {})",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    ));
    let images = cri.list_images(None).await.map_err(|e| e.to_string())?;
    if !images
        .iter()
        .any(|i| i.repo_tags.iter().any(|t| t == BUSYBOX_IMAGE))
    {
        return Err(format!(
            "image {BUSYBOX_IMAGE} not listed by CRI: {:?}",
            images.iter().map(|i| &i.repo_tags).collect::<Vec<_>>()
        ));
    }

    let log_dir = dir.join("pod-logs");
    fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "wsb-test".into(),
            uid: format!("wsb-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "wsb-test".into(),
        log_directory: log_dir.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let t0 = Instant::now();
    let sandbox_id = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let sandbox_ms = t0.elapsed().as_millis();

    let t1 = Instant::now();
    let container = |name: &str, command: Vec<&str>, stdin: bool| ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX_IMAGE.into(),
            ..Default::default()
        }),
        command: command.into_iter().map(String::from).collect(),
        log_path: format!("{name}.log"),
        stdin,
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        labels: HashMap::from([("ws-spdy-bridge/test".to_string(), name.to_string())]),
        ..Default::default()
    };
    let web_script = format!(
        "mkdir -p /www && printf '{}' >/www/index.html && exec httpd -f -p 127.0.0.1:{HTTP_PORT} -h /www",
        HTTP_BODY.replace('\n', "\\n")
    );
    let mut ids = Vec::new();
    for cfg in [
        container("web", vec!["/bin/sh", "-c", &web_script], false),
        container("cat", vec!["/bin/cat"], true),
    ] {
        let id = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox_id.clone(),
                config: Some(cfg),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .map_err(|e| e.to_string())?;
        cri.start_container(&id).await.map_err(|e| e.to_string())?;
        ids.push(id);
    }
    let containers_ms = t1.elapsed().as_millis();

    let running = cri
        .list_containers(Some(ContainerFilter {
            pod_sandbox_id: sandbox_id.clone(),
            state: Some(ContainerStateValue {
                state: ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        }))
        .await
        .map_err(|e| e.to_string())?;
    if running.len() != 2 {
        return Err(format!("expected 2 running containers, got {running:?}"));
    }
    let cat_id = ids.pop().unwrap_or_default();
    let web_id = ids.pop().unwrap_or_default();
    Ok(Pod {
        sandbox_id,
        web_id,
        cat_id,
        sandbox_ms,
        containers_ms,
    })
}

/// Stops everything and removes the run directory. Safe to call more than once.
fn teardown(state: &mut State) {
    let Some(dir) = state.dir.take() else {
        return;
    };
    let t0 = Instant::now();
    for hook in std::mem::take(&mut state.hooks) {
        if std::thread::spawn(hook).join().is_err() {
            notice("a teardown hook panicked");
        }
    }
    if let Up::Running(peer) = std::mem::replace(&mut state.up, Up::NotStarted) {
        // Graceful first (CNI DEL, unmounts, cgroups), bounded; stop.sh does the rest anyway.
        let socket = peer.socket.clone();
        let sandbox = peer.sandbox_id.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async {
                let work = async {
                    let cri = CriClient::connect_unix(&socket).await.ok()?;
                    cri.stop_pod_sandbox(&sandbox).await.ok()?;
                    cri.remove_pod_sandbox(&sandbox).await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(20), work).await;
            })
        })
        .join();
        notice(&format!(
            "pod stopped and removed over CRI in {} ms",
            t0.elapsed().as_millis()
        ));
    }
    let out = Command::new(scripts_dir().join("stop.sh"))
        .arg(&dir)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&out.stderr).lines())
            {
                notice(line);
            }
        }
        Err(e) => notice(&format!("cannot run stop.sh: {e}")),
    }
    if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") {
        notice(&format!("kept {}", dir.display()));
    } else {
        let _ = fs::remove_dir_all(&dir);
    }
    notice(&format!("teardown took {} ms", t0.elapsed().as_millis()));
    // Let the reaper go: it finds nothing left to do.
    state.reaper = None;
}

/// Starts the reaper: `stop.sh DIR` once this process is gone, whatever ends it.
fn spawn_reaper(dir: &Path) -> Option<ChildStdin> {
    let log = fs::File::create(dir.join("reaper.log")).ok()?;
    let log2 = log.try_clone().ok()?;
    let keep = std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
    let script = r#"
        cat >/dev/null
        [ -d "$2" ] || exit 0
        [ -f "$2/containerd.pid" ] || [ -d "$2/state" ] || exit 0
        echo "test process gone; stopping containerd in $2"
        "$1" "$2"
        [ "$3" = 1 ] || rm -rf "$2"
    "#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("reaper")
        .arg(scripts_dir().join("stop.sh"))
        .arg(dir)
        .arg(if keep { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .ok()?;
    child.stdin.take()
}

/// Stops and removes run directories of earlier runs whose test process is gone.
fn reap_leaked_runs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let owner = fs::read_to_string(dir.join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let Some(owner) = owner else { continue };
        if process_alive(owner) {
            continue; // another test binary's live run
        }
        notice(&format!(
            "cleaning up a leaked run of pid {owner}: {}",
            dir.display()
        ));
        let _ = Command::new(scripts_dir().join("stop.sh"))
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Whether `pid` runs (a zombie does not count: its run is over).
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// How many of `all_tests` libtest will run, from the binary's command line: positional
/// filters (substring, or whole name with `--exact`), `--skip` (same matching). `None` when the
/// command line holds something this does not understand (then only the reaper tears down).
fn selected_count(all_tests: &[&str]) -> Option<usize> {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut exact = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--exact" => exact = true,
            "--skip" => skips.push(args.next()?),
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" | "--shuffle-seed" => {
                args.next()?;
            }
            "--ignored" | "--list" | "--bench" => return None,
            a if a.starts_with("--skip=") => skips.push(a["--skip=".len()..].to_string()),
            a if a.starts_with('-') => {}
            a => filters.push(a.to_string()),
        }
    }
    let matches = |name: &str, pat: &str| {
        if exact {
            name == pat
        } else {
            name.contains(pat)
        }
    };
    Some(
        all_tests
            .iter()
            .filter(|t| filters.is_empty() || filters.iter().any(|f| matches(t, f)))
            .filter(|t| !skips.iter().any(|s| matches(t, s)))
            .count(),
    )
}
