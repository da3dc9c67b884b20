//! What the bridge costs a `v5.channel.k8s.io` exec session, against the same session over a
//! direct SPDY connection to the same runtime, measured in the same run.
//!
//! Three processes, so that every figure can be attributed:
//!
//! ```text
//!   this process (--bench)            child: --bridge             child: --sim
//!   ┌───────────────────────┐  ws v5  ┌─────────────────┐  SPDY   ┌────────────────────┐
//!   │ lean WebSocket client ├────────▶│ Bridge::start   ├────────▶│ RuntimeSim::start  │
//!   │ direct SPDY client    ├──────────────── SPDY ──────────────▶│ + real processes   │
//!   └───────────────────────┘         └─────────────────┘         └────────────────────┘
//! ```
//!
//! The children are this binary re-executed with a flag. Each prints `LISTEN <addr>` and then
//! answers one-line requests on stdin (`EXEC <json>` → `URL <url>` from the simulator,
//! `HEAP` → `HEAP <bytes>` from the bridge); end of stdin shuts it down gracefully, which for
//! the simulator kills every process it started. Because the bridge is alone in its process,
//! its RSS (`/proc/<pid>/status`), its CPU time (`/proc/<pid>/stat`) and its live heap (the
//! counting allocator below, which every process of this binary installs) belong to the bridge
//! and nothing else.
//!
//! What is measured, and why this way:
//!
//! 1. Throughput of exec stdout (`dd bs=64k` of zeros) and stdin (`cat` with its output on
//!    /dev/null, ended by CLOSE `ff 00`), bridged against direct, in pairs run back to back
//!    (see [`PAIRS`] and [`Window`]). Next to MB/s, the CPU seconds per GB of every party from
//!    `/proc`: on a two-core machine the bridged path competes with the runtime and the
//!    client for the same cores, so its MB/s says as much about the machine as about the
//!    bridge, while the bridge's CPU per GB is its own cost wherever it runs.
//! 2. Memory per idle session as the slope between 100 and 1000 sessions of a fresh bridge
//!    process, so that start-up, the runtime's buffers and allocator slack cancel out: RSS as
//!    the kernel sees it, and live heap from the allocator. Once for sessions left alone
//!    after opening, once for sessions that first moved 256 KiB each way, which is what
//!    shows buffers kept after bulk data.
//! 3. Added latency of a 1-byte echo through `cat`: bridged and direct round trips
//!    interleaved one by one over two open sessions, p50 and p99 of each.
//!
//! Figures, never pass/fail: each is printed next to its target.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use ws_spdy_bridge::channel::frame;
use ws_spdy_bridge::runtime_sim::{ExecRequest, RuntimeSim, SimConfig};
use ws_spdy_bridge::server::{Bridge, BridgeConfig, ServeLimits};
use ws_spdy_bridge::upstream::UpstreamConfig;
use ws_spdy_bridge::upstream::remotecommand::{
    Outcome, RemoteCommand, StreamOptions, client_connection_config,
};

/// Counts live heap bytes. The one `unsafe` of the bench: GlobalAlloc is an unsafe trait, and
/// every method only forwards to `System` and adjusts a counter. A relaxed atomic add per
/// allocation is paid on both paths alike (the bridge allocates a few times per 32 KiB).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes per throughput run. Large enough that session setup (a few ms) is noise and the
/// 10 ms tick of `/proc/<pid>/stat` is a few per cent of the bridge's CPU time.
const RUN_BYTES: u64 = 512 * 1024 * 1024;
/// Throughput runs per path. They go in pairs, one direct and one bridged back to back (the
/// order alternating), and the ratio reported is the median of the pairs' ratios: on a shared
/// two-core machine a neighbour's compile moves absolute MB/s by a factor of two, but it
/// rarely hits one half of a pair and not the other.
const PAIRS: usize = 8;
/// Block size of the producer (`dd bs=`) and of the client's stdin messages. 64 KiB writes
/// make `dd` the cheapest producer at hand (about twice as fast as `head -c`, which writes
/// 8 KiB at a time); stdin goes in the 32 KiB pieces client-go's executor sends.
const DD_BLOCK: u64 = 64 * 1024;
const STDIN_CHUNK: usize = 32 * 1024;
/// Round trips per path for latency, after `LATENCY_WARMUP` unrecorded ones.
const LATENCY_TRIPS: usize = 2000;
const LATENCY_WARMUP: usize = 200;
/// Idle-session counts whose difference gives the per-session slope.
const IDLE_POINTS: [usize; 2] = [100, 1000];
/// Time for the bridge to reach its resting state after the last session opened: the
/// session tasks park, and (fresh sessions) the first upstream PING is not due for 5 s.
const SETTLE: Duration = Duration::from_millis(500);
/// The same after a burst: past the bridge's first upstream PING (5 s), whose small read lets
/// the SPDY connection's read buffer return to its idle size. Before that the session is
/// still warm from its burst, not idle.
const SETTLE_AFTER_BURST: Duration = Duration::from_secs(6);
/// `/proc/<pid>/stat` counts in clock ticks; Linux's USER_HZ is 100 on every architecture
/// this runs on.
const TICKS_PER_SEC: f64 = 100.0;

// ---------------------------------------------------------------------------------------------
// The children.

/// The simulator child: serves exec sessions, hands out streaming URLs on request.
async fn sim_child() {
    let sim = RuntimeSim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    println!("LISTEN {}", sim.addr());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(json) = line.strip_prefix("EXEC ") {
            let req: ExecRequest = serde_json::from_str(json).unwrap();
            println!("URL {}", sim.exec(req).unwrap());
        }
    }
    // The parent is done (or gone): kill every process the sessions started.
    sim.shutdown().await;
}

/// The bridge child: a bridge in front of the simulator, reporting its live heap on request.
async fn bridge_child(upstream: &str) {
    let bridge = Bridge::start(BridgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: format!("http://{upstream}").parse().unwrap(),
        // Room for the memory phase; the default admits 512 sessions.
        limits: ServeLimits {
            max_sessions: IDLE_POINTS[1] + 16,
            ..ServeLimits::default()
        },
        ..BridgeConfig::default()
    })
    .await
    .unwrap();
    println!("LISTEN {}", bridge.addr());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "HEAP" {
            println!("HEAP {}", LIVE.load(Ordering::Relaxed));
        }
    }
    bridge.shutdown().await;
}

/// A child process seen from the parent: its control pipe and what `/proc` says about it.
struct Peer {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    async fn spawn(args: &[&str]) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // No kill on drop: if this process dies (a failed assertion), the child reads the
            // end of its stdin and shuts down on its own, which for the simulator means
            // killing the processes it started rather than leaving them behind.
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next_line().await.unwrap().unwrap();
        let addr = line.strip_prefix("LISTEN ").unwrap().parse().unwrap();
        Peer {
            child,
            pid,
            addr,
            stdin,
            lines,
        }
    }

    /// Sends one request line and returns the answer without its tag.
    async fn ask(&mut self, request: &str, tag: &str) -> String {
        self.stdin
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
        let line = self.lines.next_line().await.unwrap().unwrap();
        line.strip_prefix(tag).unwrap().to_owned()
    }

    /// User + system CPU time of the whole process (every thread, dead ones included).
    fn cpu(&self) -> f64 {
        cpu_of(&format!("/proc/{}/stat", self.pid))
    }

    fn rss(&self) -> u64 {
        rss_of(self.pid)
    }

    /// Closes the control pipe (the child shuts down gracefully) and reaps the child.
    async fn stop(self) {
        let Peer {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

fn cpu_of(stat_path: &str) -> f64 {
    stat_seconds(stat_path, 11)
}

/// CPU time of the children a process has reaped: for the simulator, its exec processes
/// (`dd`, `cat`), which both paths share.
fn reaped_cpu_of(pid: u32) -> f64 {
    stat_seconds(&format!("/proc/{pid}/stat"), 13)
}

/// The sum of two clock-tick fields of a `stat` file, counted from the first field after the
/// command name: utime and stime at 11 (fields 14 and 15 of the line), cutime and cstime at
/// 13.
fn stat_seconds(stat_path: &str, first: usize) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap();
    // The command name may hold spaces; the fields that follow it do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[first].parse::<u64>().unwrap() + fields[first + 1].parse::<u64>().unwrap();
    ticks as f64 / TICKS_PER_SEC
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Processes whose parent is `pid`: the simulator's exec processes.
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(&pid.to_string()) {
            found.push(child);
        }
    }
    found
}

fn is_alive_sleep(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.starts_with("sleep\0") && !is_zombie(pid))
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

// ---------------------------------------------------------------------------------------------
// The two clients.

struct Setup {
    sim: Peer,
    bridge: Peer,
}

fn exec_request(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool) -> ExecRequest {
    ExecRequest {
        container_id: "bench".into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty: false,
        stdin,
        stdout,
        stderr,
    }
}

fn options(req: &ExecRequest) -> StreamOptions {
    StreamOptions {
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
        tty: req.tty,
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Setup {
    async fn url(&mut self, req: &ExecRequest) -> String {
        let json = serde_json::to_string(req).unwrap();
        self.sim.ask(&format!("EXEC {json}"), "URL ").await
    }

    /// A direct SPDY session, as client-go's SPDY executor (and the bridge itself) opens it.
    async fn direct(&mut self, req: &ExecRequest) -> RemoteCommand {
        let url = self.url(req).await;
        RemoteCommand::start(
            &url.parse().unwrap(),
            options(req),
            &UpstreamConfig::default(),
            client_connection_config(),
        )
        .await
        .unwrap()
    }

    /// A v5 WebSocket session through the bridge, for the same kind of token. The stream
    /// options ride in the query, as in the bridge's standalone mode.
    async fn bridged(&mut self, req: &ExecRequest) -> Ws {
        let url = self.bridged_url(req).await;
        connect_ws(url).await
    }

    /// The bridge's URL for a fresh token of `req`.
    async fn bridged_url(&mut self, req: &ExecRequest) -> String {
        let url = self.url(req).await;
        let token = url.rsplit('/').next().unwrap();
        format!(
            "ws://{}/exec/{token}?stdin={}&stdout={}&stderr={}&tty={}",
            self.bridge.addr, req.stdin, req.stdout, req.stderr, req.tty
        )
    }

    /// Replaces the bridge process with a fresh one in front of the same simulator.
    async fn restart_bridge(&mut self) {
        let fresh = Peer::spawn(&["--bridge", &self.sim.addr.to_string()]).await;
        std::mem::replace(&mut self.bridge, fresh).stop().await;
    }

    fn cpu(&self) -> Cpu {
        Cpu {
            bridge: self.bridge.cpu(),
            sim: self.sim.cpu(),
            procs: reaped_cpu_of(self.sim.pid),
            client: cpu_of("/proc/self/stat"),
        }
    }
}

async fn connect_ws(url: String) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("v5.channel.k8s.io"),
    );
    // Nagle off, as client-go's dialer leaves Go's default (TCP_NODELAY on).
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        request,
        Some(WebSocketConfig::default()),
        true,
    )
    .await
    .unwrap();
    ws
}

/// Reads a v5 session to its end: counts channel-1 bytes (into `window` too, if given),
/// keeps the status (channel 3).
async fn drain_ws(ws: &mut Ws, mut window: Option<&mut Window>) -> (u64, Vec<u8>) {
    let mut stdout = 0u64;
    let mut status = Vec::new();
    while let Some(msg) = ws.next().await {
        match msg.unwrap() {
            Message::Binary(b) => match b.first() {
                Some(&frame::STDOUT) => {
                    stdout += b.len() as u64 - 1;
                    if let Some(w) = window.as_deref_mut() {
                        w.add(b.len() as u64 - 1);
                    }
                }
                Some(&frame::ERROR) => status.extend_from_slice(&b[1..]),
                _ => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    (stdout, status)
}

fn assert_success_status(status: &[u8]) {
    let text = String::from_utf8_lossy(status);
    assert!(text.contains(r#""status":"Success""#), "{text}");
}

// ---------------------------------------------------------------------------------------------
// 1. Throughput.

/// CPU seconds of each party: the bridge, the simulator, its exec processes, this client.
#[derive(Clone, Copy)]
struct Cpu {
    bridge: f64,
    sim: f64,
    procs: f64,
    client: f64,
}

impl Cpu {
    fn map(self, f: impl Fn(f64) -> f64) -> Cpu {
        Cpu {
            bridge: f(self.bridge),
            sim: f(self.sim),
            procs: f(self.procs),
            client: f(self.client),
        }
    }

    /// Everything but the bridge.
    fn others(&self) -> f64 {
        self.sim + self.procs + self.client
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            bridge: self.bridge - o.bridge,
            sim: self.sim - o.sim,
            procs: self.procs - o.procs,
            client: self.client - o.client,
        }
    }
}

#[derive(Clone, Copy)]
struct Run {
    mb_s: f64,
    /// CPU seconds per GB (1e9 bytes) moved.
    cpu_per_gb: Cpu,
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Bridged,
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    /// `dd` writes zeros to stdout; the client reads them.
    Stdout,
    /// The client writes; `cat` (stdout not requested, so /dev/null) reads them.
    Stdin,
}

/// Times the steady part of a run: from the moment 1/16 of its bytes have passed the client
/// to the moment 15/16 have. Neither end is the bridge's throughput, and either would be
/// several per cent of a half-second run: setup (a process spawn, two connections) at the
/// start, and at the end the last partial TCP segment, which can wait up to 40 ms for a
/// delayed ACK (the simulator leaves Nagle on). CPU time is still taken over the whole run.
struct Window {
    total: u64,
    seen: u64,
    from: Option<(Instant, u64)>,
    to: Option<(Instant, u64)>,
}

impl Window {
    fn new(total: u64) -> Self {
        Window {
            total,
            seen: 0,
            from: None,
            to: None,
        }
    }

    fn add(&mut self, n: u64) {
        self.seen += n;
        if self.from.is_none() && self.seen >= self.total / 16 {
            self.from = Some((Instant::now(), self.seen));
        }
        if self.to.is_none() && self.seen >= self.total / 16 * 15 {
            self.to = Some((Instant::now(), self.seen));
        }
    }

    fn mb_s(&self) -> f64 {
        let ((t0, n0), (t1, n1)) = (self.from.unwrap(), self.to.unwrap());
        (n1 - n0) as f64 / (t1 - t0).as_secs_f64() / 1e6
    }
}

async fn run_once(s: &mut Setup, dir: Direction, path: Path, bytes: u64) -> Run {
    let req = match dir {
        Direction::Stdout => {
            let count = format!("count={}", bytes / DD_BLOCK);
            let bs = format!("bs={DD_BLOCK}");
            exec_request(
                &["dd", "if=/dev/zero", &bs, &count, "status=none"],
                false,
                true,
                false,
            )
        }
        Direction::Stdin => exec_request(&["cat"], true, false, false),
    };
    let chunks = bytes / STDIN_CHUNK as u64;
    // Stdin is timed as the client hands it over: with every buffer on the way bounded (a few
    // MiB against the run's 512), the steady rate the client can send at is the rate `cat`
    // takes it at.
    let mut window = Window::new(bytes);
    let before = s.cpu();
    let moved = match path {
        Path::Direct => {
            let mut rc = s.direct(&req).await;
            let moved = match dir {
                Direction::Stdout => {
                    let mut out = rc.stdout.take().unwrap();
                    let mut n = 0u64;
                    while let Some(piece) = out.recv().await {
                        n += piece.len() as u64;
                        window.add(piece.len() as u64);
                    }
                    n
                }
                Direction::Stdin => {
                    let mut w = rc.stdin.take().unwrap();
                    let chunk = Bytes::from(vec![0x5a; STDIN_CHUNK]);
                    for _ in 0..chunks {
                        w.send(chunk.clone()).await.unwrap();
                        window.add(STDIN_CHUNK as u64);
                    }
                    w.finish().await.unwrap();
                    chunks * STDIN_CHUNK as u64
                }
            };
            // `cat` exits only after reading the last byte, so the status marks the end.
            let outcome = rc.read_outcome(64 * 1024).await;
            assert!(matches!(outcome, Outcome::Success), "{outcome:?}");
            rc.close().await;
            moved
        }
        Path::Bridged => {
            let mut ws = s.bridged(&req).await;
            let (moved, status) = match dir {
                Direction::Stdout => drain_ws(&mut ws, Some(&mut window)).await,
                Direction::Stdin => {
                    let mut msg = vec![0x5a; 1 + STDIN_CHUNK];
                    msg[0] = frame::STDIN;
                    let msg = Bytes::from(msg);
                    for _ in 0..chunks {
                        ws.send(Message::Binary(msg.clone())).await.unwrap();
                        window.add(STDIN_CHUNK as u64);
                    }
                    let close = Bytes::from_static(&[frame::CLOSE, frame::STDIN]);
                    ws.send(Message::Binary(close)).await.unwrap();
                    let (_, status) = drain_ws(&mut ws, None).await;
                    (chunks * STDIN_CHUNK as u64, status)
                }
            };
            assert_success_status(&status);
            moved
        }
    };
    let cpu = s.cpu() - before;
    assert_eq!(moved, bytes);
    let gb = moved as f64 / 1e9;
    Run {
        mb_s: window.mb_s(),
        cpu_per_gb: cpu.map(|secs| secs / gb),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The runs of one direction, direct and bridged in pairs run back to back.
struct Throughput {
    direct: Vec<Run>,
    bridged: Vec<Run>,
}

impl Throughput {
    fn mb_s(runs: &[Run]) -> f64 {
        median(runs.iter().map(|r| r.mb_s).collect())
    }

    fn cpu(runs: &[Run]) -> Cpu {
        let of = |f: fn(&Cpu) -> f64| median(runs.iter().map(|r| f(&r.cpu_per_gb)).collect());
        Cpu {
            bridge: of(|c| c.bridge),
            sim: of(|c| c.sim),
            procs: of(|c| c.procs),
            client: of(|c| c.client),
        }
    }

    /// The median of the per-pair ratios, and their range (how noisy the run was).
    fn ratio(&self) -> (f64, f64, f64) {
        let pairs: Vec<f64> = self
            .direct
            .iter()
            .zip(&self.bridged)
            .map(|(d, b)| b.mb_s / d.mb_s)
            .collect();
        let lo = pairs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = pairs.iter().copied().fold(0.0, f64::max);
        (median(pairs), lo, hi)
    }
}

async fn throughput(s: &mut Setup, dir: Direction) -> Throughput {
    // Warm-up, not recorded: page cache for the binaries, allocator arenas, TCP buffers.
    for path in [Path::Direct, Path::Bridged] {
        run_once(s, dir, path, RUN_BYTES / 8).await;
    }
    let (mut direct, mut bridged) = (Vec::new(), Vec::new());
    for pair in 0..PAIRS {
        // Alternating which goes first cancels any effect of going second (warm caches, the
        // previous session's teardown still running).
        if pair % 2 == 0 {
            direct.push(run_once(s, dir, Path::Direct, RUN_BYTES).await);
            bridged.push(run_once(s, dir, Path::Bridged, RUN_BYTES).await);
        } else {
            bridged.push(run_once(s, dir, Path::Bridged, RUN_BYTES).await);
            direct.push(run_once(s, dir, Path::Direct, RUN_BYTES).await);
        }
    }
    Throughput { direct, bridged }
}

// ---------------------------------------------------------------------------------------------
// 3. Latency.

struct Latency {
    direct: (Duration, Duration),
    bridged: (Duration, Duration),
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

async fn latency(s: &mut Setup) -> Latency {
    // `cat` echoes each byte as soon as it reads it: one pipe hop each way in the runtime,
    // the same on both paths, so the difference is the bridge.
    let req = exec_request(&["cat"], true, true, false);
    let mut rc = s.direct(&req).await;
    let mut d_in = rc.stdin.take().unwrap();
    let mut d_out = rc.stdout.take().unwrap();
    let mut ws = s.bridged(&req).await;
    // The channel-only message that says the session is live.
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first.into_data().as_ref(), &[frame::STDOUT]);

    let byte = Bytes::from_static(b"x");
    let ws_byte = Bytes::from_static(&[frame::STDIN, b'x']);
    let (mut direct, mut bridged) = (Vec::new(), Vec::new());
    // Interleaved one by one: both sessions are open at once, so whatever else the machine
    // does at a given moment lands on both paths alike.
    for i in 0..LATENCY_WARMUP + LATENCY_TRIPS {
        let t = Instant::now();
        d_in.send(byte.clone()).await.unwrap();
        let echo = d_out.recv().await.unwrap();
        let d = t.elapsed();
        assert_eq!(&echo[..], b"x");

        let t = Instant::now();
        ws.send(Message::Binary(ws_byte.clone())).await.unwrap();
        let echo = loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(b) => break b,
                _ => continue,
            }
        };
        let b = t.elapsed();
        assert_eq!(&echo[..], &[frame::STDOUT, b'x']);
        if i >= LATENCY_WARMUP {
            direct.push(d);
            bridged.push(b);
        }
    }

    d_in.finish().await.unwrap();
    assert!(d_out.recv().await.is_none());
    assert!(matches!(rc.read_outcome(64 * 1024).await, Outcome::Success));
    rc.close().await;
    ws.send(Message::Binary(Bytes::from_static(&[
        frame::CLOSE,
        frame::STDIN,
    ])))
    .await
    .unwrap();
    let (_, status) = drain_ws(&mut ws, None).await;
    assert_success_status(&status);
    Latency {
        direct: percentiles(direct),
        bridged: percentiles(bridged),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Idle memory.

struct Mark {
    sessions: usize,
    bridge_rss: u64,
    bridge_heap: i64,
    sim_rss: u64,
}

impl Mark {
    /// Bytes per session between this mark and a later one, for (RSS, heap, simulator RSS).
    fn slope(&self, later: &Mark) -> (f64, f64, f64) {
        let n = (later.sessions - self.sessions) as f64;
        (
            (later.bridge_rss as f64 - self.bridge_rss as f64) / n,
            (later.bridge_heap - self.bridge_heap) as f64 / n,
            (later.sim_rss as f64 - self.sim_rss as f64) / n,
        )
    }
}

struct Memory {
    marks: Vec<Mark>,
    open_secs: f64,
    /// The exec processes behind the sessions, checked again after shutdown.
    sleeps: Vec<u32>,
}

/// What the idle sessions did before going idle.
#[derive(Clone, Copy, PartialEq)]
enum History {
    /// Nothing: opened and left alone.
    Fresh,
    /// `BURST` bytes of output read and `BURST` bytes of stdin sent, in 32 KiB messages: what
    /// an interactive session that printed something and was typed into looks like, bulk
    /// buffers included.
    Burst,
}

/// Output and input of a [`History::Burst`] session.
const BURST: usize = 256 * 1024;

/// Sessions opened at once in the memory phase.
const OPEN_BATCH: usize = 25;

/// Opens one session, runs its history, and returns it for the caller to leave alone.
async fn open_idle_session(url: String, history: History) -> Ws {
    let mut ws = connect_ws(url).await;
    // The bridge answers 101 only once every upstream stream exists; the first message means
    // its session task is running too.
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first.into_data().as_ref(), &[frame::STDOUT]);
    if history == History::Burst {
        let mut got = 0;
        while got < BURST {
            got += ws.next().await.unwrap().unwrap().into_data().len() - 1;
        }
        let mut stdin = vec![0x5a; 1 + STDIN_CHUNK];
        stdin[0] = frame::STDIN;
        let stdin = Bytes::from(stdin);
        for _ in 0..BURST / STDIN_CHUNK {
            ws.send(Message::Binary(stdin.clone())).await.unwrap();
        }
    }
    ws
}

async fn memory(s: &mut Setup, history: History) -> Memory {
    // A fresh bridge process, so that its RSS holds the sessions and nothing freed by an
    // earlier phase that the allocator could hand out again.
    s.restart_bridge().await;
    // kubectl exec -i: stdin, stdout and stderr, no terminal. `sleep` never reads or writes,
    // so after setup the sessions are idle apart from the bridge's 5 s upstream PING.
    let script = format!("head -c {BURST} /dev/zero; head -c {BURST} >/dev/null; exec sleep 3600");
    let req = match history {
        History::Fresh => exec_request(&["sleep", "3600"], true, true, true),
        History::Burst => exec_request(&["sh", "-c", &script], true, true, true),
    };
    let mut held = Vec::new();
    let mut marks = Vec::new();
    let started = Instant::now();
    for target in IDLE_POINTS {
        while held.len() < target {
            // A batch at a time: process start-up and the odd delayed ACK overlap instead of
            // adding up (the burst sessions would take half a minute one by one).
            let mut urls = Vec::new();
            while held.len() + urls.len() < target && urls.len() < OPEN_BATCH {
                urls.push(s.bridged_url(&req).await);
            }
            let opened = futures_util::future::join_all(
                urls.into_iter().map(|url| open_idle_session(url, history)),
            )
            .await;
            held.extend(opened);
        }
        tokio::time::sleep(match history {
            History::Fresh => SETTLE,
            History::Burst => SETTLE_AFTER_BURST,
        })
        .await;
        let heap = s.bridge.ask("HEAP", "HEAP ").await.parse().unwrap();
        marks.push(Mark {
            sessions: target,
            bridge_rss: s.bridge.rss(),
            bridge_heap: heap,
            sim_rss: s.sim.rss(),
        });
    }
    let open_secs = started.elapsed().as_secs_f64();
    let sleeps = children_of(s.sim.pid);
    assert!(
        sleeps.len() >= held.len(),
        "{} processes for {} sessions",
        sleeps.len(),
        held.len()
    );
    // End the sessions the way they would end in production, by their processes exiting;
    // SIGKILL because `sleep` ignores the end of its stdin. Whether anything is left is
    // checked after the simulator's shutdown, on the processes themselves.
    for &pid in &sleeps {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    drop(held);
    Memory {
        marks,
        open_secs,
        sleeps,
    }
}

// ---------------------------------------------------------------------------------------------

/// File descriptors the memory phase needs in the busiest process (the simulator: a socket
/// and three pipes per session), with room for the rest.
fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed = (IDLE_POINTS[1] * 5 + 1024) as u64;
    let lim = getrlimit(Resource::Nofile);
    if lim.current.is_some_and(|c| c < needed) {
        let raised = lim.maximum.map_or(needed, |m| needed.min(m));
        // Children inherit the soft limit; failing to raise it shows up as a failed session.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum: lim.maximum,
            },
        );
    }
}

/// CPU seconds the whole machine has spent busy, and seconds elapsed per CPU, from
/// `/proc/stat` (all but idle and iowait).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap())
        .collect();
    let total: u64 = ticks.iter().sum();
    let idle = ticks[3] + ticks[4];
    (
        (total - idle) as f64 / TICKS_PER_SEC,
        total as f64 / TICKS_PER_SEC,
    )
}

fn multi_thread() -> tokio::runtime::Runtime {
    // As `ws-spdy-bridge serve` runs (Runtime::new: one worker per core).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--sim") => return multi_thread().block_on(sim_child()),
        Some("--bridge") => return multi_thread().block_on(bridge_child(&args[2])),
        _ => {}
    }
    raise_nofile();
    // The clients are one thread: a lean loop per session, which is what a kubectl is.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = Peer::spawn(&["--sim"]).await;
        let bridge = Peer::spawn(&["--bridge", &sim.addr.to_string()]).await;
        let mut s = Setup { sim, bridge };
        let started = Instant::now();

        let (busy0, all0) = machine_cpu();
        let ours0 = s.cpu();
        let out = throughput(&mut s, Direction::Stdout).await;
        let inp = throughput(&mut s, Direction::Stdin).await;
        let (busy1, all1) = machine_cpu();
        let ours = s.cpu() - ours0;
        // The share of the machine's CPU time that was neither idle nor accounted to our
        // processes: neighbours, plus kernel work no process is charged for.
        let neighbours = ((busy1 - busy0) - (ours.others() + ours.bridge)) / (all1 - all0);
        let lat = latency(&mut s).await;
        let fresh = memory(&mut s, History::Fresh).await;
        let burst = memory(&mut s, History::Burst).await;

        let Setup { sim, bridge } = s;
        sim.stop().await;
        bridge.stop().await;
        // Killed processes are reaped by init once the simulator is gone; give it a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started_processes = fresh.sleeps.len() + burst.sleeps.len();
        let alive = fresh
            .sleeps
            .iter()
            .chain(&burst.sleeps)
            .filter(|&&p| is_alive_sleep(p))
            .count();
        report(&out, &inp, &lat, &[&fresh, &burst]);
        // Other work on the machine moves every wall-clock figure: say how much there was.
        println!(
            "  CPU time outside the bench's processes during the throughput runs: {:.0}% of {} CPUs",
            neighbours * 100.0,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "  sessions opened in {:.1} s + {:.1} s; {started_processes} exec processes, {alive} alive after shutdown; total {:.0} s",
            fresh.open_secs,
            burst.open_secs,
            started.elapsed().as_secs_f64()
        );
    });
}

fn report(out: &Throughput, inp: &Throughput, lat: &Latency, mem: &[&Memory; 2]) {
    println!(
        "exec through the bridge (WebSocket v5 -> SPDY) vs direct SPDY to the same simulator, same run"
    );
    println!(
        "{:<34}{:>11}{:>11}{:>8}{:>9}{:>13}{:>14}",
        format!("throughput ({PAIRS} pairs x {} MiB)", RUN_BYTES >> 20),
        "direct",
        "bridged",
        "ratio",
        "target",
        "bridge CPU",
        "pair ratios"
    );
    for (name, t) in [
        ("  stdout: dd bs=64k", out),
        ("  stdin: cat, 32 KiB messages", inp),
    ] {
        let (ratio, lo, hi) = t.ratio();
        println!(
            "{:<34}{:>6.0} MB/s{:>6.0} MB/s{:>7.2}x{:>9}{:>8.2} s/GB{:>8.2}..{:.2}",
            name,
            Throughput::mb_s(&t.direct),
            Throughput::mb_s(&t.bridged),
            ratio,
            ">=0.90x",
            Throughput::cpu(&t.bridged).bridge,
            lo,
            hi,
        );
    }
    for (name, t) in [("stdout", out), ("stdin", inp)] {
        let (d, b) = (Throughput::cpu(&t.direct), Throughput::cpu(&t.bridged));
        println!(
            "  {name:<6} CPU s/GB direct/bridged: simulator {:.2}/{:.2}, {} {:.2}/{:.2}, client {:.2}/{:.2}; all {:.2}/{:.2}",
            d.sim,
            b.sim,
            if name == "stdout" { "dd" } else { "cat" },
            d.procs,
            b.procs,
            d.client,
            b.client,
            d.others(),
            b.others() + b.bridge,
        );
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:<34}{:>11}{:>11}{:>8}{:>9}",
        format!("latency (1-byte echo, {LATENCY_TRIPS} RTs)"),
        "direct",
        "bridged",
        "added",
        "target"
    );
    for (name, d, b, target) in [
        ("  p50", lat.direct.0, lat.bridged.0, "<=50 us"),
        ("  p99", lat.direct.1, lat.bridged.1, ""),
    ] {
        println!(
            "{:<34}{:>8.0} us{:>8.0} us{:>5.0} us{:>9}",
            name,
            us(d),
            us(b),
            us(b) - us(d),
            target
        );
    }
    let mib = |x: u64| x as f64 / (1024.0 * 1024.0);
    let kib = |x: f64| x / 1024.0;
    for (title, mem) in [
        ("idle sessions (sleep, -i)", mem[0]),
        ("  idle after 256 KiB out + in", mem[1]),
    ] {
        let (a, b) = (&mem.marks[0], &mem.marks[1]);
        let (rss, heap, sim) = a.slope(b);
        println!(
            "{:<34}{:>11}{:>11}{:>10}{:>9}",
            title, a.sessions, b.sessions, "slope", "target"
        );
        println!(
            "{:<34}{:>7.1} MiB{:>7.1} MiB{:>6.1} KiB{:>9}",
            "    bridge RSS",
            mib(a.bridge_rss),
            mib(b.bridge_rss),
            kib(rss),
            "<=64 KiB"
        );
        println!(
            "{:<34}{:>7.1} MiB{:>7.1} MiB{:>6.1} KiB",
            "    bridge heap (live bytes)",
            mib(a.bridge_heap.max(0) as u64),
            mib(b.bridge_heap.max(0) as u64),
            kib(heap),
        );
        println!(
            "{:<34}{:>7.1} MiB{:>7.1} MiB{:>6.1} KiB",
            "    simulator RSS (for scale)",
            mib(a.sim_rss),
            mib(b.sim_rss),
            kib(sim),
        );
    }
}
