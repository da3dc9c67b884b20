//! Heap held by idle SPDY client connections, and stream throughput over loopback.
//!
//! The peer runs in a child process (this same binary with `--peer`), so the counting
//! allocator sees only the client side: what the bridge holds per upstream connection.
//! Memory is reported as a slope (bytes per connection between 100 and 500 connections), and
//! throughput as a ratio against a plain TCP copy measured in the same run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ws_spdy_bridge::connection::{self, ConnectionConfig, Stream};
use ws_spdy_bridge::spdy::HeaderBlock;

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

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The peer: a SPDY server that accepts every stream and echoes stream data back.
async fn peer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("LISTEN {}", listener.local_addr().unwrap());
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let (_handle, mut incoming) =
                connection::spawn(tcp, Bytes::new(), ConnectionConfig::server());
            while let Some(s) = incoming.accept().await {
                tokio::spawn(async move {
                    let (mut rd, mut wr) = s.accept().split();
                    while let Some(piece) = rd.recv().await {
                        if wr.send(piece).await.is_err() {
                            break;
                        }
                    }
                    let _ = wr.finish().await;
                });
            }
        });
    }
}

const STREAMS: [&str; 4] = ["error", "stdin", "stdout", "stderr"];

async fn open_session(addr: &str) -> (connection::Handle, Vec<Stream>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (handle, _incoming) = connection::spawn(tcp, Bytes::new(), ConnectionConfig::client());
    let mut streams = Vec::new();
    for t in STREAMS {
        let s = handle
            .open_stream(HeaderBlock::new().with("streamtype", t))
            .await
            .unwrap();
        streams.push(s);
    }
    (handle, streams)
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn memory(addr: &str) {
    let mut held = Vec::new();
    let mut marks = Vec::new();
    for target in [100usize, 500] {
        while held.len() < target {
            held.push(open_session(addr).await);
        }
        settle().await;
        marks.push((target, live()));
    }
    let (n0, b0) = marks[0];
    let (n1, b1) = marks[1];
    let per_conn = (b1 - b0) as f64 / (n1 - n0) as f64;
    println!(
        "idle client connection with {} open streams: {:.0} bytes of heap each (slope {n0}..{n1}; target <= 49152)",
        STREAMS.len(),
        per_conn
    );
    for (handle, _) in &held {
        handle.abort();
    }
}

async fn throughput(addr: &str) {
    const TOTAL: usize = 256 * 1024 * 1024;
    const CHUNK: usize = 32 * 1024;
    let (_handle, mut streams) = open_session(addr).await;
    let stream = streams.remove(1);
    let (mut rd, mut wr) = stream.split();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let chunk = Bytes::from(vec![0x5au8; CHUNK]);
        for _ in 0..TOTAL / CHUNK {
            wr.send(chunk.clone()).await.unwrap();
        }
        wr.finish().await.unwrap();
    });
    let mut got = 0usize;
    while let Some(piece) = rd.recv().await {
        got += piece.len();
    }
    sender.await.unwrap();
    assert_eq!(got, TOTAL);
    let spdy = TOTAL as f64 / started.elapsed().as_secs_f64() / 1e6;

    // Baseline: the same echo over plain TCP, in this process, now.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = tcp.into_split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let tcp = TcpStream::connect(local).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let chunk = vec![0x5au8; CHUNK];
        for _ in 0..TOTAL / CHUNK {
            w.write_all(&chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    sender.await.unwrap();
    assert_eq!(got, TOTAL);
    let tcp = TOTAL as f64 / started.elapsed().as_secs_f64() / 1e6;
    println!(
        "echo through one SPDY stream: {spdy:.0} MB/s; plain TCP echo: {tcp:.0} MB/s; ratio {:.2} (the SPDY peer is a separate process)",
        spdy / tcp
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|a| a == "--peer") {
        rt.block_on(peer());
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--peer")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("LISTEN ").unwrap().to_owned();
    rt.block_on(async {
        memory(&addr).await;
        throughput(&addr).await;
    });
    let _ = child.kill();
    let _ = child.wait();
}
