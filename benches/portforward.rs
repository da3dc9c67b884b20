//! What the port-forward tunnel (`SPDY/3.1+portforward.k8s.io`) costs, against a plain TCP
//! relay (`relay::splice`) measured in the same run, and what an idle tunnel holds.
//!
//! ```text
//!   this process (--bench)                      child: --proxy
//!   ┌──────────────────────────┐  WebSocket     ┌──────────────────────────┐   TCP
//!   │ tunnel client (kubectl's ├───────────────▶│ Bridge::start (tunnel)   ├──────┐
//!   │   4, 4, 32 KiB messages) │                │                          │      ▼
//!   │ relay client (raw TCP)   ├───────────────▶│ relay::splice listener   ├──▶ backend (this
//!   └──────────────────────────┘      TCP       └──────────────────────────┘     process): 101,
//!                                                                                then sink,
//!                                                                                source or echo
//! ```
//!
//! Both paths carry the same bytes to the same backend, including an HTTP upgrade exchange
//! first (the relay passes it through; the bridge makes its own). The bridge and the relay
//! live alone in the child process (this binary re-executed with `--proxy`), so its live heap
//! (the counting allocator below), RSS and CPU time belong to them. The child prints
//! `LISTEN <bridge> <relay>` and answers `HEAP` with `HEAP <bytes>`; end of stdin stops it.
//!
//! Throughput runs alternate tunnel and relay, several rounds, and report the median of each,
//! so a neighbour's load on this shared machine hits both. Memory is a slope: live heap per
//! idle tunnel between two tunnel counts. Figures are printed next to their targets.
//!
//! `WSB_PF_BENCH_MB` (default 512) sets the bytes per throughput run; `WSB_PF_BENCH_ONLY=upload`
//! (or `download`) runs that throughput part alone, for profiling.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use ws_spdy_bridge::relay::{self, RelayConfig};
use ws_spdy_bridge::server::{Bridge, BridgeConfig, ServeLimits};

/// Counts live heap bytes. The one `unsafe` of the bench: GlobalAlloc is an unsafe trait, and
/// every method only forwards to `System` and adjusts a counter.
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

const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// Throughput rounds per path and direction; the median is reported.
const ROUNDS: usize = 9;
/// kubectl's writes through the tunnel: spdystream writes a DATA frame's id, its flags and
/// length, then the payload (client-go copies 32 KiB at a time), each as one message.
const KUBECTL_MESSAGES: [usize; 3] = [4, 4, 32 * 1024];
/// One kubectl DATA frame's bytes; the relay client writes them in one write.
const FRAME: usize = 4 + 4 + 32 * 1024;
/// Idle tunnel counts whose heap difference gives the per-tunnel slope.
const IDLE_POINTS: [usize; 2] = [200, 1200];
/// Tunnels that first carry [`WARM_BYTES`] each way, then idle.
const WARM_TUNNELS: usize = 200;
const WARM_BYTES: usize = 1024 * 1024;
/// Time for the child to reach its resting state after the last tunnel opened.
const SETTLE: Duration = Duration::from_millis(500);
/// `/proc/<pid>/stat` counts in clock ticks of 1/100 s.
const TICKS_PER_SEC: f64 = 100.0;

// ---------------------------------------------------------------------------------------------
// The child: the bridge and the plain relay, both in front of the backend.

async fn proxy_child(backend: SocketAddr) {
    let bridge = Bridge::start(BridgeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: format!("http://{backend}").parse().unwrap(),
        // Room for every idle tunnel of the memory figure.
        limits: ServeLimits {
            max_sessions: 4 * IDLE_POINTS[1],
            ..ServeLimits::default()
        },
        ..BridgeConfig::default()
    })
    .await
    .unwrap();
    let relay_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay_listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = relay_listener.accept().await {
            let _ = client.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                relay::splice(client, upstream, &RelayConfig::default()).await;
            });
        }
    });
    println!("LISTEN {} {relay_addr}", bridge.addr());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "HEAP" {
            println!("HEAP {}", LIVE.load(Ordering::Relaxed));
        }
    }
    bridge.shutdown().await;
}

struct Proxy {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    bridge: SocketAddr,
    relay: SocketAddr,
}

impl Proxy {
    async fn spawn(backend: SocketAddr) -> Proxy {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--proxy")
            .arg(backend.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next_line().await.unwrap().unwrap();
        let mut parts = line.strip_prefix("LISTEN ").unwrap().split(' ');
        let bridge = parts.next().unwrap().parse().unwrap();
        let relay = parts.next().unwrap().parse().unwrap();
        Proxy {
            child,
            stdin,
            lines,
            bridge,
            relay,
        }
    }

    async fn heap(&mut self) -> isize {
        self.stdin.write_all(b"HEAP\n").await.unwrap();
        let line = self.lines.next_line().await.unwrap().unwrap();
        line.strip_prefix("HEAP ").unwrap().parse().unwrap()
    }

    /// RSS in bytes, from `/proc`.
    fn rss(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }

    /// User + system CPU time, in seconds.
    fn cpu(&self) -> f64 {
        let pid = self.child.id().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / TICKS_PER_SEC
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The backend: answers the SPDY upgrade with a 101, then does what the path says.

/// `/portforward/sink-N` (read N bytes, then write one byte), `/portforward/source-N` (write N
/// bytes), `/portforward/echo`.
async fn backend(listener: TcpListener) {
    while let Ok((mut conn, _)) = listener.accept().await {
        let _ = conn.set_nodelay(true);
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let end = loop {
                let n = match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                head.extend_from_slice(&buf[..n]);
                if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
            };
            let early = head.split_off(end);
            let line = String::from_utf8_lossy(&head);
            let path = line.split(' ').nth(1).unwrap_or("").to_owned();
            let mode = path.rsplit('/').next().unwrap_or("").to_owned();
            let answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n";
            if conn.write_all(answer).await.is_err() {
                return;
            }
            if let Some(n) = mode.strip_prefix("sink-") {
                let want: usize = n.parse().unwrap();
                let mut got = early.len();
                while got < want {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let _ = conn.write_all(b"k").await;
                let _ = conn.read(&mut buf).await;
            } else if let Some(n) = mode.strip_prefix("source-") {
                let mut left: usize = n.parse().unwrap();
                let chunk = vec![0x5au8; 64 * 1024];
                while left > 0 {
                    let take = left.min(chunk.len());
                    if conn.write_all(&chunk[..take]).await.is_err() {
                        return;
                    }
                    left -= take;
                }
                let _ = conn.read(&mut buf).await;
            } else {
                let (mut rd, mut wr) = conn.into_split();
                if wr.write_all(&early).await.is_ok() {
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

type Ws = WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn tunnel(bridge: SocketAddr, mode: &str) -> Ws {
    let mut req = format!("ws://{bridge}/portforward/{mode}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(TUNNEL));
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(TUNNEL)
    );
    ws
}

async fn relayed(relay: SocketAddr, mode: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(relay).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let req = format!(
        "POST /portforward/{mode} HTTP/1.1\r\nHost: backend\r\nContent-Length: 0\r\n\
         Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tcp
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client → runtime (kubectl sending to the pod).
    Upload,
    /// Runtime → client.
    Download,
}

/// kubectl's three messages for one DATA frame, as client frames on the wire: FIN + binary,
/// masked with the all-zero key (any key is valid; this one leaves the payload as is). Written
/// raw, so that the load generator pays for a tunnel upload what it pays for a relay upload,
/// and the difference is the bridge's: a client masks whatever proxy it talks to.
fn premasked_frames() -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME + 3 * 14);
    for len in KUBECTL_MESSAGES {
        out.push(0x82);
        if len < 126 {
            out.push(0x80 | len as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend(std::iter::repeat_n(0x5a, len));
    }
    out
}

/// A tunnel opened by hand, so that both clients are raw sockets: the handshake, then the
/// connection positioned at the first WebSocket frame.
async fn raw_tunnel(bridge: SocketAddr, mode: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(bridge).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let req = format!(
        "GET /portforward/{mode} HTTP/1.1\r\nHost: {bridge}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {TUNNEL}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// Counts the payload bytes of unmasked server frames read from `tcp` until `total`, skipping
/// the headers: the least a client can do with the stream.
async fn read_frames(tcp: &mut TcpStream, total: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut header = Vec::with_capacity(10);
    let (mut payload_left, mut got) = (0usize, 0usize);
    while got < total {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "tunnel download ended early");
        let mut i = 0;
        while i < n {
            if payload_left > 0 {
                let take = payload_left.min(n - i);
                payload_left -= take;
                got += take;
                i += take;
                continue;
            }
            header.push(buf[i]);
            i += 1;
            let need = match header.get(1).map(|b| b & 0x7f) {
                None => continue,
                Some(126) => 4,
                Some(127) => 10,
                Some(_) => 2,
            };
            if header.len() == need {
                payload_left = match need {
                    2 => usize::from(header[1] & 0x7f),
                    4 => usize::from(u16::from_be_bytes([header[2], header[3]])),
                    _ => u64::from_be_bytes(header[2..10].try_into().unwrap()) as usize,
                };
                assert_eq!(header[0], 0x82, "a final binary frame");
                header.clear();
            }
        }
    }
}

/// One run through the tunnel: seconds.
async fn tunnel_run(bridge: SocketAddr, dir: Direction, frames: usize) -> f64 {
    let total = frames * FRAME;
    match dir {
        Direction::Upload => {
            let mut tcp = raw_tunnel(bridge, &format!("sink-{total}")).await;
            let unit = premasked_frames();
            let started = Instant::now();
            for _ in 0..frames {
                tcp.write_all(&unit).await.unwrap();
            }
            // The backend's one-byte answer, as a binary message.
            let mut ack = [0u8; 3];
            tcp.read_exact(&mut ack).await.unwrap();
            assert_eq!(ack, [0x82, 1, b'k']);
            started.elapsed().as_secs_f64()
        }
        Direction::Download => {
            let mut tcp = raw_tunnel(bridge, &format!("source-{total}")).await;
            let started = Instant::now();
            read_frames(&mut tcp, total).await;
            started.elapsed().as_secs_f64()
        }
    }
}

/// The same run through the plain relay: seconds.
async fn relay_run(relay: SocketAddr, dir: Direction, frames: usize) -> f64 {
    let total = frames * FRAME;
    match dir {
        Direction::Upload => {
            let mut tcp = relayed(relay, &format!("sink-{total}")).await;
            let frame = vec![0x5au8; FRAME];
            let started = Instant::now();
            for _ in 0..frames {
                tcp.write_all(&frame).await.unwrap();
            }
            let mut ack = [0u8; 1];
            tcp.read_exact(&mut ack).await.unwrap();
            started.elapsed().as_secs_f64()
        }
        Direction::Download => {
            let mut tcp = relayed(relay, &format!("source-{total}")).await;
            let mut buf = vec![0u8; 64 * 1024];
            let started = Instant::now();
            let mut got = 0;
            while got < total {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "relay download ended early");
                got += n;
            }
            started.elapsed().as_secs_f64()
        }
    }
}

struct Throughput {
    tunnel_mbps: f64,
    relay_mbps: f64,
    /// Proxy CPU seconds per GB moved.
    tunnel_cpu: f64,
    relay_cpu: f64,
    /// Tunnel over relay MB/s of each back-to-back pair: their median is the figure that
    /// the machine's other load disturbs least, their range shows how much it did.
    pair_ratios: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn throughput(proxy: &Proxy, dir: Direction, frames: usize) -> Throughput {
    let bytes = (frames * FRAME) as f64;
    // One unrecorded run of each warms caches and the allocator.
    tunnel_run(proxy.bridge, dir, frames / 8).await;
    relay_run(proxy.relay, dir, frames / 8).await;
    let (mut t, mut r, mut tc, mut rc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let cpu0 = proxy.cpu();
        let secs = tunnel_run(proxy.bridge, dir, frames).await;
        let cpu1 = proxy.cpu();
        t.push(bytes / secs / 1e6);
        tc.push((cpu1 - cpu0) / (bytes / 1e9));
        let secs = relay_run(proxy.relay, dir, frames).await;
        let cpu2 = proxy.cpu();
        r.push(bytes / secs / 1e6);
        rc.push((cpu2 - cpu1) / (bytes / 1e9));
    }
    let mut pair_ratios: Vec<f64> = t.iter().zip(&r).map(|(t, r)| t / r).collect();
    pair_ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Throughput {
        pair_ratios,
        tunnel_mbps: median(t),
        relay_mbps: median(r),
        tunnel_cpu: median(tc),
        relay_cpu: median(rc),
    }
}

// ---------------------------------------------------------------------------------------------
// Memory.

/// An idle tunnel as kubectl leaves one: open, a SPDY PING's worth of bytes each way, quiet.
async fn idle_tunnel(bridge: SocketAddr, warm: usize) -> Ws {
    let mut ws = tunnel(bridge, "echo").await;
    let ping = Bytes::from_static(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    let mut want = ping.len();
    ws.send(Message::Binary(ping)).await.unwrap();
    if warm > 0 {
        let chunk = Bytes::from(vec![7u8; 32 * 1024]);
        let mut sent = 0;
        while sent < warm {
            ws.feed(Message::Binary(chunk.clone())).await.unwrap();
            sent += chunk.len();
        }
        ws.flush().await.unwrap();
        want += sent;
    }
    let mut got = 0;
    while got < want {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => got += b.len(),
            other => panic!("echo failed: {other:?}"),
        }
    }
    ws
}

async fn idle_relay(relay: SocketAddr) -> TcpStream {
    let mut tcp = relayed(relay, "echo").await;
    tcp.write_all(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    let mut back = [0u8; 12];
    tcp.read_exact(&mut back).await.unwrap();
    tcp
}

struct Memory {
    tunnel_heap: f64,
    tunnel_rss: f64,
    warm_heap: f64,
    relay_heap: f64,
}

async fn memory(proxy: &mut Proxy) -> Memory {
    let mut marks = Vec::new();
    let mut held = Vec::new();
    for target in IDLE_POINTS {
        while held.len() < target {
            held.push(idle_tunnel(proxy.bridge, 0).await);
        }
        tokio::time::sleep(SETTLE).await;
        marks.push((target, proxy.heap().await, proxy.rss()));
    }
    let n = (IDLE_POINTS[1] - IDLE_POINTS[0]) as f64;
    let tunnel_heap = (marks[1].1 - marks[0].1) as f64 / n;
    let tunnel_rss = (marks[1].2 as f64 - marks[0].2 as f64) / n;

    // After carrying data: what an idle tunnel keeps of the buffers a transfer grew.
    let before = proxy.heap().await;
    let mut warm = Vec::new();
    for _ in 0..WARM_TUNNELS {
        warm.push(idle_tunnel(proxy.bridge, WARM_BYTES).await);
    }
    tokio::time::sleep(SETTLE).await;
    let warm_heap = (proxy.heap().await - before) as f64 / WARM_TUNNELS as f64;

    let before = proxy.heap().await;
    let mut relays = Vec::new();
    for _ in 0..IDLE_POINTS[0] {
        relays.push(idle_relay(proxy.relay).await);
    }
    tokio::time::sleep(SETTLE).await;
    let relay_heap = (proxy.heap().await - before) as f64 / IDLE_POINTS[0] as f64;

    for ws in held.iter_mut().chain(warm.iter_mut()) {
        let _ = ws.close(None).await;
    }
    drop(relays);
    tokio::time::sleep(SETTLE).await;
    Memory {
        tunnel_heap,
        tunnel_rss,
        warm_heap,
        relay_heap,
    }
}

// ---------------------------------------------------------------------------------------------

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--proxy") {
        let backend = args[2].parse().unwrap();
        return multi_thread().block_on(proxy_child(backend));
    }
    let mb: usize = std::env::var("WSB_PF_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let frames = mb * 1024 * 1024 / FRAME;
    // The clients and the backend share one thread, as a lean load generator.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = listener.local_addr().unwrap();
        tokio::spawn(backend(listener));
        let mut proxy = Proxy::spawn(backend_addr).await;
        let started = Instant::now();

        let only = std::env::var("WSB_PF_BENCH_ONLY").unwrap_or_default();
        if !only.is_empty() {
            // Profiling aid: one part alone, e.g. under `perf record` or `strace -c`.
            let dir = if only == "download" { Direction::Download } else { Direction::Upload };
            let t = throughput(&proxy, dir, frames).await;
            println!(
                "{only}: tunnel {:.0} MB/s, relay {:.0} MB/s, ratio {:.2}; proxy CPU {:.2} vs {:.2} s/GB",
                t.tunnel_mbps,
                t.relay_mbps,
                t.tunnel_mbps / t.relay_mbps,
                t.tunnel_cpu,
                t.relay_cpu
            );
            proxy.stop().await;
            return;
        }
        let up = throughput(&proxy, Direction::Upload, frames).await;
        let down = throughput(&proxy, Direction::Download, frames).await;
        let mem = memory(&mut proxy).await;
        proxy.stop().await;

        println!("port-forward tunnel vs plain TCP relay (relay::splice), same run, {mb} MiB per run, median of {ROUNDS}:");
        for (name, t) in [("upload (client → runtime)", &up), ("download (runtime → client)", &down)] {
            println!(
                "  {name}: tunnel {:.0} MB/s, relay {:.0} MB/s, ratio {:.2} (median of pair \
                 ratios; pairs {:.2}..{:.2}; target >= 0.90); proxy CPU {:.2} s/GB vs {:.2} s/GB",
                t.tunnel_mbps,
                t.relay_mbps,
                median(t.pair_ratios.clone()),
                t.pair_ratios[0],
                t.pair_ratios[t.pair_ratios.len() - 1],
                t.tunnel_cpu,
                t.relay_cpu
            );
        }
        println!(
            "  idle tunnel: {:.0} bytes of heap each (slope {}..{} tunnels; target <= 24576), RSS slope {:.0} bytes",
            mem.tunnel_heap, IDLE_POINTS[0], IDLE_POINTS[1], mem.tunnel_rss
        );
        println!(
            "  idle tunnel after {} KiB each way: {:.0} bytes of heap each",
            WARM_BYTES / 1024,
            mem.warm_heap
        );
        println!(
            "  idle plain relay connection (baseline): {:.0} bytes of heap each",
            mem.relay_heap
        );
        println!("  total {:.1} s", started.elapsed().as_secs_f64());
    });
}
