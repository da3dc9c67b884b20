//! SPDY codec throughput and memory, each against a baseline measured in the same run.
//!
//! `cargo bench --bench codec` prints one table:
//! * DATA encode/decode of 32 KiB payloads in MB/s, and the same bytes through `memcpy`;
//! * header blocks per second: SYN_STREAM encode, SYN_REPLY decode of blocks compressed the
//!   way Go peers do (zlib, SPDY dictionary, sync flush), with a `memcpy` of the same bytes;
//! * heap held by one Encoder + Decoder pair after a remote-command setup (4 SYN_STREAM out,
//!   4 SYN_REPLY in), by their `heap_size()` and by a counting allocator, next to a pair of
//!   zlib contexts (what a zlib-based codec would hold) and as a per-session slope.
//!
//! "x memcpy" is the codec's time divided by `memcpy`'s time for the same bytes (below 1:
//! cheaper than copying them).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use ws_spdy_bridge::spdy::dictionary::DICTIONARY;
use ws_spdy_bridge::spdy::{Decoder, Encoder, Frame, HeaderBlock, Limits};

/// Counts live heap bytes. The library forbids unsafe code; a bench binary needs one
/// `unsafe impl` to wrap the system allocator, and does nothing else unsafe.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
// adds an atomic counter update, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// How long each measurement runs (after a short warm-up): 400 ms under `cargo bench`, a
/// token 5 ms when `cargo test --benches` runs the binary just to see that it works.
static RUN_TIME: OnceLock<Duration> = OnceLock::new();

fn run_time() -> Duration {
    *RUN_TIME.get_or_init(|| {
        if std::env::args().any(|a| a == "--bench") {
            Duration::from_millis(400)
        } else {
            Duration::from_millis(5)
        }
    })
}
const PAYLOAD: usize = 32 * 1024;

/// Runs `op` repeatedly for about [`run_time`]; returns seconds per call.
fn time_per_op(mut op: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < run_time() / 8 {
        op();
    }
    let mut ops = 0u64;
    let start = Instant::now();
    let mut batch = 1u64;
    while start.elapsed() < run_time() {
        for _ in 0..batch {
            op();
        }
        ops += batch;
        batch = (batch * 2).min(1 << 16);
    }
    start.elapsed().as_secs_f64() / ops as f64
}

/// A `memcpy` of `len` bytes, the baseline every row is compared with.
fn memcpy_per_op(len: usize) -> f64 {
    let src = vec![0x5au8; len];
    let mut dst = vec![0u8; len];
    time_per_op(|| {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    })
}

struct Row {
    what: &'static str,
    value: String,
    vs: String,
}

fn throughput_row(what: &'static str, bytes: usize, codec: f64, memcpy: f64) -> Row {
    Row {
        what,
        value: format!("{:>9.0} MB/s", bytes as f64 / codec / 1e6),
        vs: format!(
            "{:>6.2} x memcpy ({:.0} MB/s)",
            codec / memcpy,
            bytes as f64 / memcpy / 1e6
        ),
    }
}

fn rate_row(what: &'static str, bytes: usize, codec: f64, memcpy: f64) -> Row {
    Row {
        what,
        value: format!("{:>9.0} /s", 1.0 / codec),
        vs: format!("{:>6.1} x memcpy of its {bytes} bytes", codec / memcpy),
    }
}

fn data_frame() -> Frame {
    Frame::Data {
        stream_id: 3,
        fin: false,
        payload: Bytes::from((0..PAYLOAD).map(|i| i as u8).collect::<Vec<u8>>()),
    }
}

fn data_rows(rows: &mut Vec<Row>) {
    let memcpy = memcpy_per_op(PAYLOAD);
    let frame = data_frame();
    let mut encoder = Encoder::new();
    let mut dst = BytesMut::with_capacity(PAYLOAD + 64);
    let encode = time_per_op(|| {
        dst.clear();
        encoder.encode(black_box(&frame), &mut dst).unwrap();
        black_box(&dst);
    });
    rows.push(throughput_row(
        "DATA encode, 32 KiB",
        PAYLOAD,
        encode,
        memcpy,
    ));

    // Decode: 64 frames (2 MiB) at a time, as if read from a socket into one reused read
    // buffer. Payloads come out as slices of that buffer (no copy), so the baseline is a
    // memcpy of the same 2 MiB, i.e. what reading them into the buffer costs anyway.
    const FRAMES: usize = 64;
    let mut wire = BytesMut::new();
    for _ in 0..FRAMES {
        encoder.encode(&frame, &mut wire).unwrap();
    }
    let wire = wire.freeze();
    let memcpy_wire = memcpy_per_op(wire.len()) / FRAMES as f64;
    let mut decoder = Decoder::new(Limits::default());
    let mut src = BytesMut::with_capacity(wire.len());
    let with_copy = time_per_op(|| {
        src.extend_from_slice(&wire);
        while let Some(f) = decoder.decode(&mut src).unwrap() {
            black_box(f);
        }
    }) / FRAMES as f64;
    rows.push(throughput_row(
        "DATA decode, 32 KiB, incl. read-buffer fill",
        PAYLOAD,
        with_copy,
        memcpy_wire,
    ));
    // Parsing alone: the clock runs only around the decode loop.
    let mut total = Duration::ZERO;
    let mut frames = 0usize;
    let deadline = Instant::now() + run_time();
    while Instant::now() < deadline {
        src.extend_from_slice(&wire);
        let start = Instant::now();
        while let Some(f) = decoder.decode(&mut src).unwrap() {
            black_box(f);
        }
        total += start.elapsed();
        frames += FRAMES;
    }
    rows.push(throughput_row(
        "DATA decode, 32 KiB, parsing only",
        PAYLOAD,
        total.as_secs_f64() / frames as f64,
        memcpy_wire,
    ));
}

/// A zlib compressor as spdystream's: level 9, SPDY dictionary, sync flush per block.
fn go_like_blocks(blocks: &[HeaderBlock]) -> Vec<Vec<u8>> {
    let mut z = Compress::new(Compression::best(), true);
    z.set_dictionary(DICTIONARY).unwrap();
    blocks
        .iter()
        .map(|headers| {
            let mut plain = Vec::new();
            headers.encode(&mut plain).unwrap();
            let mut out = Vec::with_capacity(plain.len() + 64);
            z.compress_vec(&plain, &mut out, FlushCompress::Sync)
                .unwrap();
            assert!(out.len() < out.capacity(), "block fits");
            out
        })
        .collect()
}

fn syn_reply_wire(stream_id: u32, block: &[u8]) -> Vec<u8> {
    let len = (4 + block.len()) as u32;
    let mut out = vec![0x80, 0x03, 0x00, 0x02, 0x00];
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(block);
    out
}

fn syn_stream(stream_id: u32, kind: &str) -> Frame {
    Frame::SynStream {
        stream_id,
        associated_to: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        headers: HeaderBlock::new().with("streamtype", kind),
    }
}

const KINDS: [&str; 4] = ["error", "stdin", "stdout", "stderr"];

fn header_rows(rows: &mut Vec<Row>) {
    // SYN_STREAM encode, one connection's encoder continuing its context.
    let frames: Vec<Frame> = (0..4)
        .map(|i| syn_stream(2 * i + 1, KINDS[i as usize]))
        .collect();
    let mut encoder = Encoder::new();
    let mut dst = BytesMut::with_capacity(256);
    encoder.encode(&frames[0], &mut dst).unwrap();
    let frame_len = dst.len();
    let mut i = 0;
    let encode = time_per_op(|| {
        dst.clear();
        encoder.encode(black_box(&frames[i & 3]), &mut dst).unwrap();
        i += 1;
        black_box(&dst);
    });
    rows.push(rate_row(
        "SYN_STREAM encode (streamtype)",
        frame_len,
        encode,
        memcpy_per_op(frame_len),
    ));

    // SYN_REPLY decode: 1024 replies in one zlib stream (empty blocks, as Kubernetes
    // servers send, mixed with small ones), decoded in order by one decoder.
    const REPLIES: usize = 1024;
    let blocks: Vec<HeaderBlock> = (0..REPLIES)
        .map(|i| match i % 4 {
            0 | 2 => HeaderBlock::new(),
            1 => HeaderBlock::new().with("streamtype", KINDS[i / 4 % 4]),
            _ => HeaderBlock::new()
                .with("streamtype", "data")
                .with("port", "8080")
                .with("requestid", (i / 4).to_string()),
        })
        .collect();
    let wire: Vec<u8> = go_like_blocks(&blocks)
        .iter()
        .enumerate()
        .flat_map(|(i, b)| syn_reply_wire(2 * i as u32 + 1, b))
        .collect();
    let decode = time_per_op(|| {
        let mut decoder = Decoder::new(Limits::default());
        let mut src = BytesMut::from(&wire[..]);
        while let Some(f) = decoder.decode(&mut src).unwrap() {
            black_box(f);
        }
    }) / REPLIES as f64;
    let avg = wire.len() / REPLIES;
    rows.push(rate_row(
        "SYN_REPLY decode (zlib level 9 + dictionary)",
        avg,
        decode,
        memcpy_per_op(avg),
    ));
}

/// The frames a client sends and receives to set up exec with stdin, stdout and stderr.
fn remote_command_setup(encoder: &mut Encoder, decoder: &mut Decoder, replies: &[u8]) {
    let mut out = BytesMut::new();
    for (i, kind) in KINDS.iter().enumerate() {
        encoder
            .encode(&syn_stream(2 * i as u32 + 1, kind), &mut out)
            .unwrap();
    }
    let mut src = BytesMut::from(replies);
    let mut n = 0;
    while let Some(f) = decoder.decode(&mut src).unwrap() {
        assert!(matches!(f, Frame::SynReply { .. }));
        n += 1;
    }
    assert_eq!(n, 4);
}

/// The same setup with a zlib context each way, as a zlib-based codec would hold them.
fn zlib_setup(replies: &[Vec<u8>]) -> (Compress, Decompress) {
    let mut z = Compress::new(Compression::best(), true);
    z.set_dictionary(DICTIONARY).unwrap();
    let mut d = Decompress::new(true);
    for (i, kind) in KINDS.iter().enumerate() {
        let mut plain = Vec::new();
        HeaderBlock::new()
            .with("streamtype", *kind)
            .encode(&mut plain)
            .unwrap();
        let mut out = Vec::with_capacity(128);
        z.compress_vec(&plain, &mut out, FlushCompress::Sync)
            .unwrap();
        let mut inflated = Vec::with_capacity(64);
        let block = &replies[i];
        let start = d.total_in();
        loop {
            let used = (d.total_in() - start) as usize;
            match d.decompress_vec(&block[used..], &mut inflated, FlushDecompress::Sync) {
                Err(e) if e.needs_dictionary().is_some() => {
                    d.set_dictionary(DICTIONARY).unwrap();
                }
                other => {
                    other.unwrap();
                    if (d.total_in() - start) as usize == block.len() {
                        break;
                    }
                }
            }
        }
        assert_eq!(inflated, [0, 0, 0, 0], "an empty block");
    }
    (z, d)
}

fn memory_rows(rows: &mut Vec<Row>) {
    let blocks = go_like_blocks(&vec![HeaderBlock::new(); 4]);
    let replies: Vec<u8> = blocks
        .iter()
        .enumerate()
        .flat_map(|(i, b)| syn_reply_wire(2 * i as u32 + 1, b))
        .collect();

    let before = live();
    let mut encoder = Encoder::new();
    let mut decoder = Decoder::new(Limits::default());
    remote_command_setup(&mut encoder, &mut decoder, &replies);
    let counted = live() - before;
    let reported = encoder.heap_size() + decoder.heap_size();

    // Slope: many sessions at once, per session.
    const SESSIONS: isize = 100;
    let before_many = live();
    let many: Vec<(Encoder, Decoder)> = (0..SESSIONS)
        .map(|_| {
            let mut e = Encoder::new();
            let mut d = Decoder::new(Limits::default());
            remote_command_setup(&mut e, &mut d, &replies);
            (e, d)
        })
        .collect();
    let slope = (live() - before_many) / SESSIONS;
    drop(many);

    let before_zlib = live();
    let zlib = zlib_setup(&blocks);
    let zlib_bytes = live() - before_zlib;
    drop(zlib);

    rows.push(Row {
        what: "Encoder + Decoder heap, heap_size()",
        value: format!("{reported:>9} B"),
        vs: format!(
            "encoder {} + decoder {}",
            encoder.heap_size(),
            decoder.heap_size()
        ),
    });
    rows.push(Row {
        what: "Encoder + Decoder heap, counting allocator",
        value: format!("{counted:>9} B"),
        vs: format!(
            "{:>6.3}% of a zlib-rs context pair ({zlib_bytes} B)",
            100.0 * counted as f64 / zlib_bytes as f64
        ),
    });
    rows.push(Row {
        what: "  per session incl. the structs, 100 sessions",
        value: format!("{slope:>9} B"),
        vs: String::new(),
    });
    black_box((encoder, decoder));
}

fn main() {
    let started = Instant::now();
    let mut rows = Vec::new();
    data_rows(&mut rows);
    header_rows(&mut rows);
    memory_rows(&mut rows);
    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    println!();
    println!(
        "{:<width$}  {:>14}  baseline (same run)",
        "spdy codec", "result"
    );
    println!("{}", "-".repeat(width + 50));
    for row in &rows {
        println!("{:<width$}  {:>14}  {}", row.what, row.value, row.vs);
    }
    println!("({:.1} s)", started.elapsed().as_secs_f64());
}
