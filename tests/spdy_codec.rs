//! The SPDY/3.1 frame codec against its public API: the golden vectors of protocol.md §1.5,
//! one test per frame type and per decoding error, DATA streaming, header blocks from a real
//! zlib (what Go peers send), and round trips of arbitrary frame sequences.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use ws_spdy_bridge::spdy::deflate::HeaderDeflater;
use ws_spdy_bridge::spdy::dictionary::{DICTIONARY, DICTIONARY_ADLER32, DICTIONARY_LEN};
use ws_spdy_bridge::spdy::frame::{
    DecodeError, EncodeError, MAX_FRAME_PAYLOAD, MAX_STREAM_ID, Setting, data_header,
};
use ws_spdy_bridge::spdy::headers::HeaderError;
use ws_spdy_bridge::spdy::inflate::InflateError;
use ws_spdy_bridge::spdy::{
    Decoder, Encoder, Frame, GoAwayStatus, HeaderBlock, HeaderLimits, Limits, RstStatus,
};

// ---------------------------------------------------------------------------------------
// Allocation tracking. The zlib-bomb test must show that the decoder never allocates much
// more than its cap. The library forbids unsafe code; this test binary needs one
// `unsafe impl` to wrap the system allocator. It only forwards to `System` and counts
// bytes per thread (tests run on parallel threads; each measures its own).
// ---------------------------------------------------------------------------------------

struct PerThreadCounter;

thread_local! {
    // `const` initialisers with no destructor: touching them never allocates, so they are
    // safe to use from inside the allocator.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // `try_with` because the allocator also runs while a thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the only
// addition is arithmetic on thread-local counters, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for PerThreadCounter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: PerThreadCounter = PerThreadCounter;

/// Runs `f` and returns its result with the most heap it held live at once on this thread,
/// above what was live when it started.
fn peak_heap_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - start).max(0) as usize)
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut dst = BytesMut::new();
    Encoder::new().encode(frame, &mut dst).expect("encodes");
    dst.to_vec()
}

/// Decodes every complete frame in `bytes`, stopping at the first error.
fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let mut src = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(frame) = decoder.decode(&mut src)? {
        out.push(frame);
    }
    Ok(out)
}

fn decode_one(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let mut frames = decode_all(&mut Decoder::new(Limits::default()), bytes)?;
    assert_eq!(
        frames.len(),
        1,
        "expected exactly one frame in {bytes:02x?}"
    );
    Ok(frames.remove(0))
}

fn decode_err(bytes: &[u8]) -> DecodeError {
    decode_err_with(Limits::default(), bytes)
}

fn decode_err_with(limits: Limits, bytes: &[u8]) -> DecodeError {
    let mut decoder = Decoder::new(limits);
    match decode_all(&mut decoder, bytes) {
        Ok(frames) => panic!("decoded {frames:?} from {bytes:02x?}, expected an error"),
        Err(err) => err,
    }
}

/// A raw control frame with version 3.
fn control(frame_type: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![0x80, 0x03];
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.extend_from_slice(&[flags, len[1], len[2], len[3]]);
    out.extend_from_slice(payload);
    out
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// A plain (uncompressed) name/value block from raw pairs, with no validation.
fn plain_block(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_be_bytes().to_vec();
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The first header block of a fresh context, holding `plain` in stored DEFLATE blocks.
fn first_stored_block(plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    HeaderDeflater::new().compress(plain, &mut out);
    out
}

fn syn_stream_raw(stream_id: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    let mut payload = words(&[stream_id, 0]);
    payload.extend_from_slice(&[0, 0]);
    payload.extend_from_slice(block);
    control(1, flags, &payload)
}

fn syn_reply_raw(stream_id: u32, block: &[u8]) -> Vec<u8> {
    let mut payload = stream_id.to_be_bytes().to_vec();
    payload.extend_from_slice(block);
    control(2, 0, &payload)
}

/// A zlib compressor set up the way spdystream's is: SPDY dictionary, sync flush after each
/// block. (zlib-rs, so its bytes differ from Go's; receivers must not care.)
struct RealDeflater(Compress);

impl RealDeflater {
    fn new(level: u32) -> Self {
        let mut z = Compress::new(Compression::new(level), true);
        let adler = z
            .set_dictionary(DICTIONARY)
            .expect("zlib-rs takes a dictionary");
        assert_eq!(adler, DICTIONARY_ADLER32);
        RealDeflater(z)
    }

    fn block(&mut self, plain: &[u8]) -> Vec<u8> {
        let z = &mut self.0;
        let start = z.total_in();
        let mut out = Vec::with_capacity(plain.len() / 2 + 64);
        loop {
            let used = (z.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            z.compress_vec(&plain[used..], &mut out, FlushCompress::Sync)
                .expect("compresses");
            // Done when all input is in and the flush did not fill the output.
            if (z.total_in() - start) as usize == plain.len() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// Deterministic pseudo-random numbers for chunking (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

fn streamtype(value: &str) -> HeaderBlock {
    HeaderBlock::new().with("streamtype", value)
}

fn syn_stream(stream_id: u32, headers: HeaderBlock) -> Frame {
    Frame::SynStream {
        stream_id,
        associated_to: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        headers,
    }
}

// ---------------------------------------------------------------------------------------
// protocol.md §1.5: golden vectors
// ---------------------------------------------------------------------------------------

const PING_1: &str = "80 03 00 06 00 00 00 04 00 00 00 01";
const RST_3_CANCEL: &str = "80 03 00 03 00 00 00 08 00 00 00 03 00 00 00 05";
const GOAWAY_9_OK: &str = "80 03 00 07 00 00 00 08 00 00 00 09 00 00 00 00";
const DATA_3_FIN_EMPTY: &str = "00 00 00 03 01 00 00 00";
const DATA_5_LS: &str = "00 00 00 05 00 00 00 03 6c 73 0a";

/// C zlib's compression of `streamtype: error`, the first block of a fresh context.
const WORKED_FIRST_BLOCK: &str =
    "78 f9 e3 c6 a7 c2 02 a6 23 46 70 3a 2b 29 4a 4d cc 85 16 25 ac a9 a0 80 06 00 00 00 ff ff";
/// The same context's next block, `streamtype: stdin`.
const WORKED_SECOND_BLOCK: &str = "c2 2e 55 5c 02 cc 2e 00 00 00 00 ff ff";
/// A server's first SYN_REPLY block (empty), from its own fresh context.
const WORKED_EMPTY_REPLY_BLOCK: &str = "78 f9 e3 c6 a7 c2 02 a6 23 06 00 00 00 00 ff ff";

fn golden_fixed_frames() -> Vec<(&'static str, Frame)> {
    vec![
        (PING_1, Frame::Ping { id: 1 }),
        (
            RST_3_CANCEL,
            Frame::RstStream {
                stream_id: 3,
                status: RstStatus::CANCEL,
            },
        ),
        (
            GOAWAY_9_OK,
            Frame::GoAway {
                last_good_stream_id: 9,
                status: GoAwayStatus::OK,
            },
        ),
        (
            DATA_3_FIN_EMPTY,
            Frame::Data {
                stream_id: 3,
                fin: true,
                payload: Bytes::new(),
            },
        ),
        (
            DATA_5_LS,
            Frame::Data {
                stream_id: 5,
                fin: false,
                payload: Bytes::from_static(b"ls\n"),
            },
        ),
    ]
}

#[test]
fn fixed_size_frames_encode_to_the_documented_bytes() {
    for (wire, frame) in golden_fixed_frames() {
        assert_eq!(encode(&frame), hex(wire), "{frame:?}");
    }
}

#[test]
fn fixed_size_frames_decode_from_the_documented_bytes() {
    for (wire, frame) in golden_fixed_frames() {
        assert_eq!(decode_one(&hex(wire)).unwrap(), frame, "{wire}");
    }
}

#[test]
fn golden_frames_back_to_back_decode_in_order() {
    let golden = golden_fixed_frames();
    let wire: Vec<u8> = golden.iter().flat_map(|(w, _)| hex(w)).collect();
    let frames = decode_all(&mut Decoder::new(Limits::default()), &wire).unwrap();
    let expected: Vec<Frame> = golden.into_iter().map(|(_, f)| f).collect();
    assert_eq!(frames, expected);
}

#[test]
fn worked_example_syn_stream_from_c_zlib_decodes() {
    let block = hex(WORKED_FIRST_BLOCK);
    assert_eq!(block.len(), 30);
    let wire = syn_stream_raw(1, 0, &block);
    assert_eq!(wire.len(), 48);
    assert_eq!(
        wire[..18],
        hex("80 03 00 01 00 00 00 28 00 00 00 01 00 00 00 00 00 00")[..]
    );
    assert_eq!(
        decode_one(&wire).unwrap(),
        syn_stream(1, streamtype("error"))
    );
}

#[test]
fn worked_example_second_block_continues_the_shared_context() {
    let mut decoder = Decoder::new(Limits::default());
    let mut wire = syn_stream_raw(1, 0, &hex(WORKED_FIRST_BLOCK));
    let second = syn_stream_raw(3, 0, &hex(WORKED_SECOND_BLOCK));
    // 10 fixed bytes + 13 compressed bytes.
    assert_eq!(second[..8], hex("80 03 00 01 00 00 00 17")[..]);
    wire.extend_from_slice(&second);
    assert_eq!(
        decode_all(&mut decoder, &wire).unwrap(),
        vec![
            syn_stream(1, streamtype("error")),
            syn_stream(3, streamtype("stdin"))
        ]
    );
}

#[test]
fn worked_example_second_block_alone_does_not_decode() {
    // It refers back into the first block: without that context it is not a zlib stream.
    let err = decode_err(&syn_stream_raw(3, 0, &hex(WORKED_SECOND_BLOCK)));
    assert!(matches!(err, DecodeError::Inflate(_)), "{err:?}");
}

#[test]
fn worked_example_empty_syn_reply_decodes() {
    let wire = syn_reply_raw(1, &hex(WORKED_EMPTY_REPLY_BLOCK));
    assert_eq!(wire[..12], hex("80 03 00 02 00 00 00 14 00 00 00 01")[..]);
    assert_eq!(
        decode_one(&wire).unwrap(),
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: HeaderBlock::new(),
        }
    );
}

#[test]
fn our_first_syn_stream_has_c18_shape() {
    let wire = encode(&syn_stream(1, streamtype("error")));
    // Version 3, type 1, flags 0.
    assert_eq!(wire[..5], [0x80, 0x03, 0x00, 0x01, 0x00]);
    assert_eq!(
        wire.len(),
        8 + usize::from(wire[7]) + (usize::from(wire[6]) << 8)
    );
    assert_eq!(wire[8..12], 1u32.to_be_bytes(), "stream id");
    assert_eq!(wire[12..16], [0; 4], "associated-to id");
    assert_eq!(wire[16], 0, "priority");
    assert_eq!(wire[17], 0, "slot");
    assert_eq!(
        wire[18..24],
        [0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2],
        "zlib header + DICTID"
    );
}

#[test]
fn our_header_blocks_end_in_a_sync_flush_and_inflate_in_order_with_reference_zlib() {
    let mut encoder = Encoder::new();
    let mut z = Decompress::new(true);
    for (i, kind) in ["error", "stdin", "stdout", "stderr"].iter().enumerate() {
        let mut wire = BytesMut::new();
        let id = 1 + 2 * i as u32;
        encoder
            .encode(&syn_stream(id, streamtype(kind)), &mut wire)
            .unwrap();
        let block = &wire[18..];
        // Each block ends where a zlib sync flush would: Go's inflater needs the marker to
        // hand out the block's last bytes without reading past the frame.
        assert!(
            block.ends_with(&[0, 0, 0xff, 0xff]),
            "block {i} lacks the sync flush"
        );
        let mut plain = Vec::new();
        streamtype(kind).encode(&mut plain).unwrap();
        let mut out = Vec::with_capacity(4096);
        let mut pos = 0;
        while pos < block.len() {
            let before = z.total_in();
            match z.decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary() == Some(DICTIONARY_ADLER32) => {
                    z.set_dictionary(DICTIONARY).unwrap();
                }
                Err(e) => panic!("reference zlib refused block {i}: {e}"),
            }
            pos += (z.total_in() - before) as usize;
        }
        assert_eq!(out, plain, "block {i}");
    }
}

// ---------------------------------------------------------------------------------------
// The dictionary
// ---------------------------------------------------------------------------------------

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in bytes {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[test]
fn dictionary_has_the_documented_length_and_digests() {
    assert_eq!(DICTIONARY.len(), 1423);
    assert_eq!(DICTIONARY_LEN, 1423);
    let digest: String = Sha256::digest(DICTIONARY.as_slice())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest,
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    );
    assert_eq!(adler32(DICTIONARY), 0xe3c6_a7c2);
    assert_eq!(DICTIONARY_ADLER32, 0xe3c6_a7c2);
    assert!(DICTIONARY.ends_with(b",*,enq=0."), "no trailing NUL");
}

#[test]
fn dictionary_matches_the_shared_hex_file_when_present() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/docs/spdy3-dictionary.txt");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("{} not present; skipped", path.display());
        return;
    };
    let mut parsed = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (offset, bytes) = line.split_once(':').expect("'<offset>: <bytes>' line");
        assert_eq!(
            usize::from_str_radix(offset.trim(), 16).unwrap(),
            parsed.len(),
            "offset of {line:?}"
        );
        parsed.extend(
            bytes
                .split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap()),
        );
    }
    assert_eq!(parsed.as_slice(), DICTIONARY.as_slice());
}

// ---------------------------------------------------------------------------------------
// One test per frame type
// ---------------------------------------------------------------------------------------

fn round_trip(frame: Frame) -> Vec<u8> {
    let wire = encode(&frame);
    assert_eq!(decode_one(&wire).unwrap(), frame);
    wire
}

#[test]
fn data_frame_round_trips() {
    let wire = round_trip(Frame::Data {
        stream_id: MAX_STREAM_ID,
        fin: true,
        payload: Bytes::from(vec![0xa5; 1000]),
    });
    assert_eq!(wire[..8], hex("7f ff ff ff 01 00 03 e8")[..]);
}

#[test]
fn syn_stream_round_trips_with_every_field() {
    let wire = round_trip(Frame::SynStream {
        stream_id: 7,
        associated_to: 5,
        priority: 7,
        slot: 9,
        fin: true,
        unidirectional: true,
        headers: HeaderBlock::new()
            .with("streamtype", "data")
            .with("port", "8080")
            .with("requestid", "0")
            .with("multi", b"a\0b".to_vec()),
    });
    assert_eq!(wire[4], 0x03, "FIN | UNIDIRECTIONAL");
    assert_eq!(wire[16], 0xe0, "priority in the top 3 bits");
    assert_eq!(wire[17], 9, "slot");
}

#[test]
fn syn_reply_round_trips() {
    let wire = round_trip(Frame::SynReply {
        stream_id: 3,
        fin: true,
        headers: HeaderBlock::new().with("host", "allowed-in-a-reply"),
    });
    assert_eq!(wire[..5], [0x80, 0x03, 0x00, 0x02, 0x01]);
}

#[test]
fn rst_stream_round_trips() {
    let wire = round_trip(Frame::RstStream {
        stream_id: 0x7fff_fffe,
        status: RstStatus::FRAME_TOO_LARGE,
    });
    assert_eq!(wire, hex("80 03 00 03 00 00 00 08 7f ff ff fe 00 00 00 0b"));
}

#[test]
fn settings_round_trips() {
    let wire = round_trip(Frame::Settings {
        clear: true,
        entries: vec![
            Setting {
                flags: 0x01,
                id: 7,
                value: 65_536,
            },
            Setting {
                flags: 0x02,
                id: 0x00ff_ffff,
                value: u32::MAX,
            },
        ],
    });
    assert_eq!(
        wire,
        hex("80 03 00 04 01 00 00 14 00 00 00 02 01 00 00 07 00 01 00 00 02 ff ff ff ff ff ff ff")
    );
    round_trip(Frame::Settings {
        clear: false,
        entries: vec![],
    });
}

#[test]
fn ping_round_trips() {
    let wire = round_trip(Frame::Ping { id: u32::MAX });
    assert_eq!(wire, hex("80 03 00 06 00 00 00 04 ff ff ff ff"));
}

#[test]
fn goaway_round_trips() {
    let wire = round_trip(Frame::GoAway {
        last_good_stream_id: 0,
        status: GoAwayStatus::INTERNAL_ERROR,
    });
    assert_eq!(wire, hex("80 03 00 07 00 00 00 08 00 00 00 00 00 00 00 02"));
}

#[test]
fn headers_frame_round_trips() {
    let wire = round_trip(Frame::Headers {
        stream_id: 1,
        fin: true,
        headers: HeaderBlock::new().with("x-a", "1"),
    });
    assert_eq!(wire[..5], [0x80, 0x03, 0x00, 0x08, 0x01]);
}

#[test]
fn window_update_round_trips_including_session_id_zero() {
    let wire = round_trip(Frame::WindowUpdate {
        stream_id: 0,
        delta: 0x7fff_ffff,
    });
    assert_eq!(wire, hex("80 03 00 09 00 00 00 08 00 00 00 00 7f ff ff ff"));
}

#[test]
fn frame_kind_names_each_type() {
    let kinds: Vec<&str> = [
        Frame::Data {
            stream_id: 1,
            fin: false,
            payload: Bytes::new(),
        },
        syn_stream(1, HeaderBlock::new()),
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: HeaderBlock::new(),
        },
        Frame::RstStream {
            stream_id: 1,
            status: RstStatus::CANCEL,
        },
        Frame::Settings {
            clear: false,
            entries: vec![],
        },
        Frame::Ping { id: 1 },
        Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::OK,
        },
        Frame::Headers {
            stream_id: 1,
            fin: false,
            headers: HeaderBlock::new(),
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 1,
        },
    ]
    .iter()
    .map(Frame::kind)
    .collect();
    assert_eq!(
        kinds,
        [
            "DATA",
            "SYN_STREAM",
            "SYN_REPLY",
            "RST_STREAM",
            "SETTINGS",
            "PING",
            "GOAWAY",
            "HEADERS",
            "WINDOW_UPDATE"
        ]
    );
}

#[test]
fn control_stream_ids_keep_the_reserved_bit() {
    // spdystream does not mask it; the session answers such ids, the codec passes them on.
    let block = first_stored_block(&plain_block(&[]));
    let frame = decode_one(&syn_stream_raw(0x8000_0001, 0, &block)).unwrap();
    assert!(
        matches!(
            frame,
            Frame::SynStream {
                stream_id: 0x8000_0001,
                ..
            }
        ),
        "{frame:?}"
    );
    let frame = decode_one(&control(3, 0, &words(&[0x8000_0003, 5]))).unwrap();
    assert_eq!(
        frame,
        Frame::RstStream {
            stream_id: 0x8000_0003,
            status: RstStatus::CANCEL
        }
    );
}

#[test]
fn version_field_is_ignored_on_receipt() {
    let mut wire = hex(PING_1);
    wire[1] = 0x02;
    assert_eq!(decode_one(&wire).unwrap(), Frame::Ping { id: 1 });
}

#[test]
fn data_frame_ignores_flag_bits_other_than_fin() {
    let wire = hex("00 00 00 05 fe 00 00 01 41");
    assert_eq!(
        decode_one(&wire).unwrap(),
        Frame::Data {
            stream_id: 5,
            fin: false,
            payload: Bytes::from_static(b"A"),
        }
    );
}

#[test]
fn encoder_refuses_stream_ids_above_31_bits() {
    let mut dst = BytesMut::new();
    let mut encoder = Encoder::new();
    for frame in [
        Frame::Data {
            stream_id: 0x8000_0000,
            fin: false,
            payload: Bytes::new(),
        },
        syn_stream(0x8000_0001, HeaderBlock::new()),
        Frame::RstStream {
            stream_id: u32::MAX,
            status: RstStatus::CANCEL,
        },
        Frame::GoAway {
            last_good_stream_id: 0x8000_0000,
            status: GoAwayStatus::OK,
        },
    ] {
        assert!(
            matches!(
                encoder.encode(&frame, &mut dst),
                Err(EncodeError::StreamId(_))
            ),
            "{frame:?}"
        );
    }
    assert!(dst.is_empty(), "nothing written for a refused frame");
}

#[test]
fn encoder_refuses_data_beyond_the_24_bit_length() {
    assert!(data_header(1, false, MAX_FRAME_PAYLOAD).is_ok());
    assert_eq!(
        data_header(1, false, MAX_FRAME_PAYLOAD + 1),
        Err(EncodeError::TooLarge {
            kind: "DATA",
            len: MAX_FRAME_PAYLOAD + 1
        })
    );
}

#[test]
fn encoder_refuses_upper_case_and_duplicate_header_names() {
    let mut dst = BytesMut::new();
    let mut encoder = Encoder::new();
    let upper = syn_stream(1, HeaderBlock::new().with("StreamType", "error"));
    assert!(matches!(
        encoder.encode(&upper, &mut dst),
        Err(EncodeError::Header(HeaderError::NameNotLowercase { .. }))
    ));
    let twice = syn_stream(1, HeaderBlock::new().with("a", "1").with("a", "2"));
    assert!(matches!(
        encoder.encode(&twice, &mut dst),
        Err(EncodeError::Header(HeaderError::DuplicateName { .. }))
    ));
}

#[test]
fn encoder_refuses_hop_by_hop_header_names() {
    let mut dst = BytesMut::new();
    let mut encoder = Encoder::new();
    let host = syn_stream(1, HeaderBlock::new().with("host", "example"));
    assert!(
        encoder.encode(&host, &mut dst).is_err(),
        "host in SYN_STREAM"
    );
    let conn = Frame::SynReply {
        stream_id: 1,
        fin: false,
        headers: HeaderBlock::new().with("connection", "close"),
    };
    assert!(
        encoder.encode(&conn, &mut dst).is_err(),
        "connection in SYN_REPLY"
    );
}

#[test]
fn encoder_stays_in_step_after_refusing_an_oversized_header_block() {
    let mut encoder = Encoder::new();
    let mut dst = BytesMut::new();
    let huge = syn_stream(
        1,
        HeaderBlock::new().with("x", vec![b'a'; MAX_FRAME_PAYLOAD]),
    );
    assert!(matches!(
        encoder.encode(&huge, &mut dst),
        Err(EncodeError::TooLarge { .. })
    ));
    assert!(dst.is_empty());
    encoder
        .encode(&syn_stream(3, streamtype("error")), &mut dst)
        .unwrap();
    assert_eq!(
        decode_all(&mut Decoder::new(Limits::default()), &dst).unwrap(),
        vec![syn_stream(3, streamtype("error"))]
    );
}

// ---------------------------------------------------------------------------------------
// One test per DecodeError variant
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_control_types_are_refused_from_the_header_alone() {
    // 5 is SPDY/2's NOOP, 10 SPDY/3's CREDENTIAL; both fatal to spdystream.
    for frame_type in [0u16, 5, 10, 11, 0x7fff, 0xffff] {
        let mut header = control(frame_type, 0, &[]);
        header[7] = 100; // claims a payload that has not arrived
        assert_eq!(
            decode_err(&header),
            DecodeError::UnknownControlType { frame_type },
            "type {frame_type}"
        );
    }
}

#[test]
fn oversized_control_frame_is_refused_before_its_payload_arrives() {
    let header = hex("80 03 00 01 00 ff ff ff");
    assert_eq!(
        decode_err(&header),
        DecodeError::FrameTooLarge {
            kind: "SYN_STREAM",
            len: 0x00ff_ffff,
            limit: Limits::DEFAULT_MAX_CONTROL_FRAME,
        }
    );
    // One byte over a small limit.
    let limits = Limits {
        max_control_frame: 16,
        ..Limits::default()
    };
    let header = hex("80 03 00 04 00 00 00 11");
    assert_eq!(
        decode_err_with(limits, &header),
        DecodeError::FrameTooLarge {
            kind: "SETTINGS",
            len: 17,
            limit: 16,
        }
    );
}

#[test]
fn oversized_data_frame_is_refused_before_its_payload_arrives() {
    let limits = Limits {
        max_data_frame: 32 * 1024,
        ..Limits::default()
    };
    let header = hex("00 00 00 01 00 00 80 01");
    assert_eq!(
        decode_err_with(limits, &header),
        DecodeError::FrameTooLarge {
            kind: "DATA",
            len: 32 * 1024 + 1,
            limit: 32 * 1024,
        }
    );
    // Exactly at the limit is fine, and streams.
    let mut decoder = Decoder::new(limits);
    let mut src = BytesMut::from(&hex("00 00 00 01 00 00 80 00 61")[..]);
    assert!(matches!(
        decoder.decode(&mut src),
        Ok(Some(Frame::Data { .. }))
    ));
}

#[test]
fn fixed_size_control_frames_with_other_lengths_are_refused() {
    let cases: [(u16, &str, usize); 7] = [
        (3, "RST_STREAM", 7),
        (3, "RST_STREAM", 12),
        (6, "PING", 5),
        (6, "PING", 0),
        (7, "GOAWAY", 4), // SPDY/2's GOAWAY
        (9, "WINDOW_UPDATE", 9),
        (9, "WINDOW_UPDATE", 4),
    ];
    for (frame_type, kind, len) in cases {
        let payload = vec![0x01; len];
        assert_eq!(
            decode_err(&control(frame_type, 0, &payload)),
            DecodeError::InvalidLength { kind, len },
            "{kind} of {len}"
        );
    }
}

#[test]
fn variable_control_frames_shorter_than_their_fixed_part_are_refused() {
    let cases: [(u16, &str, usize); 4] = [
        (1, "SYN_STREAM", 9),
        (2, "SYN_REPLY", 3),
        (8, "HEADERS", 0),
        (4, "SETTINGS", 3),
    ];
    for (frame_type, kind, len) in cases {
        assert_eq!(
            decode_err(&control(frame_type, 0, &vec![0; len])),
            DecodeError::InvalidLength { kind, len },
            "{kind} of {len}"
        );
    }
}

#[test]
fn zero_stream_ids_are_refused() {
    let block = first_stored_block(&plain_block(&[]));
    let mut reply = 0u32.to_be_bytes().to_vec();
    reply.extend_from_slice(&block);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("DATA", hex("00 00 00 00 01 00 00 00")),
        ("SYN_STREAM", syn_stream_raw(0, 0, &block)),
        ("SYN_REPLY", control(2, 0, &reply)),
        ("HEADERS", control(8, 0, &reply)),
        ("RST_STREAM", control(3, 0, &words(&[0, 5]))),
    ];
    for (kind, wire) in cases {
        assert_eq!(
            decode_err(&wire),
            DecodeError::ZeroStreamId { kind },
            "{kind}"
        );
    }
}

#[test]
fn data_with_stream_id_zero_is_refused_from_the_header_alone() {
    assert_eq!(
        decode_err(&hex("00 00 00 00 00 00 10 00")),
        DecodeError::ZeroStreamId { kind: "DATA" }
    );
}

#[test]
fn ping_with_id_zero_is_refused() {
    assert_eq!(
        decode_err(&hex("80 03 00 06 00 00 00 04 00 00 00 00")),
        DecodeError::ZeroPingId
    );
}

#[test]
fn flags_on_ping_goaway_and_window_update_are_refused() {
    let cases: [(u16, &str, Vec<u8>); 3] = [
        (6, "PING", words(&[1])),
        (7, "GOAWAY", words(&[0, 0])),
        (9, "WINDOW_UPDATE", words(&[1, 1])),
    ];
    for (frame_type, kind, payload) in cases {
        for flags in [0x01, 0x80] {
            assert_eq!(
                decode_err(&control(frame_type, flags, &payload)),
                DecodeError::InvalidFlags { kind, flags },
                "{kind}"
            );
        }
    }
}

#[test]
fn rst_stream_with_status_zero_is_refused() {
    assert_eq!(
        decode_err(&control(3, 0, &words(&[1, 0]))),
        DecodeError::ZeroRstStatus
    );
}

#[test]
fn settings_whose_count_disagrees_with_its_length_are_refused() {
    // spdystream trusts the count and desynchronises; we refuse.
    let mut payload = words(&[2]);
    payload.extend_from_slice(&[0; 8]);
    assert_eq!(
        decode_err(&control(4, 0, &payload)),
        DecodeError::SettingsCount { count: 2, len: 12 }
    );
    let mut payload = words(&[u32::MAX]);
    payload.extend_from_slice(&[0; 8]);
    assert_eq!(
        decode_err(&control(4, 0, &payload)),
        DecodeError::SettingsCount {
            count: u32::MAX,
            len: 12
        }
    );
    let payload = words(&[0, 0]);
    assert_eq!(
        decode_err(&control(4, 0, &payload)),
        DecodeError::SettingsCount { count: 0, len: 8 }
    );
}

#[test]
fn header_block_that_is_not_zlib_is_refused() {
    let err = decode_err(&syn_reply_raw(1, &hex("00 01 02 03 04 05")));
    assert!(
        matches!(
            err,
            DecodeError::Inflate(InflateError::BadZlibHeader { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn header_block_naming_another_dictionary_is_refused() {
    let err = decode_err(&syn_reply_raw(1, &hex("78 f9 00 00 00 01 00 00 00 ff ff")));
    assert_eq!(
        err,
        DecodeError::Inflate(InflateError::WrongDictionary { found: 1 })
    );
}

#[test]
fn fresh_zlib_header_on_a_later_block_is_refused() {
    // A sender that resets its compressor per frame corrupts the stream (protocol.md §1.5).
    let first = first_stored_block(&plain_block(&[]));
    let mut wire = syn_reply_raw(1, &first);
    wire.extend_from_slice(&syn_reply_raw(3, &first));
    let mut decoder = Decoder::new(Limits::default());
    let mut src = BytesMut::from(&wire[..]);
    assert!(matches!(
        decoder.decode(&mut src),
        Ok(Some(Frame::SynReply { .. }))
    ));
    let err = decoder.decode(&mut src).unwrap_err();
    assert!(matches!(err, DecodeError::Inflate(_)), "{err:?}");
}

#[test]
fn header_block_shorter_than_its_pairs_is_refused() {
    // The frame ends before the block it announces: spdystream's "compressed payload size
    // was incorrect".
    let plain = plain_block(&[(b"streamtype", b"error")]);
    let block = first_stored_block(&plain);
    // zlib header and DICTID (6), stored block header (5), all but the last 3 plain bytes.
    let cut = 6 + 5 + plain.len() - 3;
    assert_eq!(block[6], 0x00, "a stored block");
    let err = decode_err(&syn_reply_raw(1, &block[..cut]));
    assert_eq!(err, DecodeError::Header(HeaderError::Truncated));
}

#[test]
fn upper_case_header_name_is_refused() {
    let block = first_stored_block(&plain_block(&[(b"StreamType", b"error")]));
    let err = decode_err(&syn_stream_raw(1, 0, &block));
    assert!(
        matches!(
            err,
            DecodeError::Header(HeaderError::NameNotLowercase { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn host_header_in_syn_stream_is_refused_but_allowed_in_syn_reply() {
    let block = first_stored_block(&plain_block(&[(b"host", b"example")]));
    assert_eq!(
        decode_err(&syn_stream_raw(1, 0, &block)),
        DecodeError::Header(HeaderError::Forbidden {
            name: "host".into()
        })
    );
    assert!(decode_one(&syn_reply_raw(1, &block)).is_ok());
}

#[test]
fn hop_by_hop_headers_are_refused_in_every_header_frame() {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
    ] {
        let block = first_stored_block(&plain_block(&[(name.as_bytes(), b"x")]));
        let forbidden = DecodeError::Header(HeaderError::Forbidden { name: name.into() });
        assert_eq!(decode_err(&syn_stream_raw(1, 0, &block)), forbidden);
        assert_eq!(decode_err(&syn_reply_raw(1, &block)), forbidden);
        let mut headers = 1u32.to_be_bytes().to_vec();
        headers.extend_from_slice(&block);
        assert_eq!(decode_err(&control(8, 0, &headers)), forbidden);
    }
}

#[test]
fn duplicate_empty_and_trailing_header_blocks_are_refused() {
    let cases: Vec<(Vec<u8>, HeaderError)> = vec![
        (
            plain_block(&[(b"a", b"1"), (b"a", b"2")]),
            HeaderError::DuplicateName { name: "a".into() },
        ),
        (plain_block(&[(b"", b"1")]), HeaderError::EmptyName),
        (
            [plain_block(&[(b"a", b"1")]), vec![0]].concat(),
            HeaderError::TrailingBytes { extra: 1 },
        ),
    ];
    for (plain, expected) in cases {
        let block = first_stored_block(&plain);
        assert_eq!(
            decode_err(&syn_reply_raw(1, &block)),
            DecodeError::Header(expected)
        );
    }
}

#[test]
fn header_limits_are_enforced() {
    let limits = Limits {
        headers: HeaderLimits {
            max_block: 256,
            max_pairs: 2,
            max_name: 8,
            max_value: 16,
        },
        ..Limits::default()
    };
    let too_many = plain_block(&[(b"a", b""), (b"b", b""), (b"c", b"")]);
    let long_name = plain_block(&[(b"abcdefghi", b"")]);
    let long_value = plain_block(&[(b"a", &[b'v'; 17])]);
    let big_block = [
        1u32.to_be_bytes().as_slice(),
        &1u32.to_be_bytes(),
        b"a",
        &300u32.to_be_bytes(),
        &[0; 300],
    ]
    .concat();
    let expected = [
        DecodeError::Header(HeaderError::TooManyPairs { count: 3, limit: 2 }),
        DecodeError::Header(HeaderError::NameTooLong { len: 9, limit: 8 }),
        DecodeError::Header(HeaderError::ValueTooLong { len: 17, limit: 16 }),
        DecodeError::Inflate(InflateError::OutputLimit { limit: 256 }),
    ];
    for (plain, expected) in [too_many, long_name, long_value, big_block]
        .into_iter()
        .zip(expected)
    {
        let block = first_stored_block(&plain);
        assert_eq!(decode_err_with(limits, &syn_reply_raw(1, &block)), expected);
    }
    // At the limits everything passes.
    let at_limits = plain_block(&[(b"abcdefgh", &[b'v'; 16]), (b"b", b"")]);
    let block = first_stored_block(&at_limits);
    let mut decoder = Decoder::new(limits);
    assert_eq!(
        decode_all(&mut decoder, &syn_reply_raw(1, &block))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn zlib_bomb_header_block_stops_at_the_inflate_limit_without_allocating_past_it() {
    // 10 MiB of zeros compress to about 10 KiB, which fits a 64 KiB control frame.
    let plain = vec![0u8; 10 << 20];
    let block = RealDeflater::new(9).block(&plain);
    drop(plain);
    assert!(
        block.len() < Limits::DEFAULT_MAX_CONTROL_FRAME,
        "{}",
        block.len()
    );
    let wire = syn_reply_raw(1, &block);
    let mut decoder = Decoder::new(Limits::default());
    let mut src = BytesMut::from(&wire[..]);
    let (result, peak) = peak_heap_during(|| decoder.decode(&mut src));
    assert_eq!(
        result,
        Err(DecodeError::Inflate(InflateError::OutputLimit {
            limit: HeaderLimits::DEFAULT_MAX_BLOCK
        }))
    );
    // The inflated output (capped at 64 KiB, perhaps doubled once by Vec growth) and the
    // 32 KiB history, with room for small bookkeeping; nowhere near 10 MiB.
    let bound = 2 * HeaderLimits::DEFAULT_MAX_BLOCK + 32 * 1024 + 16 * 1024;
    eprintln!(
        "zlib bomb: {} compressed bytes, decoder peak heap {peak} bytes",
        block.len()
    );
    assert!(
        peak <= bound,
        "decoder peaked at {peak} bytes, bound {bound}"
    );
    assert!(decoder.heap_size() <= bound);
}

#[test]
fn decoder_is_poisoned_after_an_error() {
    let mut decoder = Decoder::new(Limits::default());
    let mut src = BytesMut::from(&hex("80 03 00 05 00 00 00 00")[..]);
    assert_eq!(
        decoder.decode(&mut src),
        Err(DecodeError::UnknownControlType { frame_type: 5 })
    );
    let mut good = BytesMut::from(&hex(PING_1)[..]);
    assert_eq!(decoder.decode(&mut good), Err(DecodeError::Poisoned));
    assert_eq!(decoder.decode(&mut good), Err(DecodeError::Poisoned));
    assert_eq!(good.len(), 12, "a poisoned decoder consumes nothing");
}

#[test]
fn truncated_frames_need_more_bytes_rather_than_fail() {
    for wire in [
        hex(PING_1),
        hex(GOAWAY_9_OK),
        syn_stream_raw(1, 0, &hex(WORKED_FIRST_BLOCK)),
    ] {
        for cut in 0..wire.len() {
            let mut decoder = Decoder::new(Limits::default());
            let mut src = BytesMut::from(&wire[..cut]);
            assert_eq!(decoder.decode(&mut src), Ok(None), "cut at {cut}");
            assert_eq!(src.len(), cut, "nothing consumed at cut {cut}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// DATA streaming and `wanted`
// ---------------------------------------------------------------------------------------

#[test]
fn large_data_frame_streams_out_in_pieces_with_fin_only_on_the_last() {
    let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
    let wire = encode(&Frame::Data {
        stream_id: 9,
        fin: true,
        payload: Bytes::from(payload.clone()),
    });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut decoder = Decoder::new(Limits::default());
    let mut src = BytesMut::new();
    let mut received = Vec::with_capacity(payload.len());
    let mut pieces = 0;
    let mut fins = 0;
    let mut at = 0;
    while at < wire.len() {
        let n = (1 + rng.below(64 * 1024)).min(wire.len() - at);
        src.extend_from_slice(&wire[at..at + n]);
        at += n;
        while let Some(frame) = decoder.decode(&mut src).unwrap() {
            let Frame::Data {
                stream_id,
                fin,
                payload,
            } = frame
            else {
                panic!("not DATA: {frame:?}");
            };
            assert_eq!(stream_id, 9);
            assert!(!payload.is_empty(), "pieces carry bytes");
            received.extend_from_slice(&payload);
            pieces += 1;
            if fin {
                fins += 1;
                assert_eq!(at, wire.len(), "FIN before the last byte arrived");
            }
        }
    }
    assert_eq!(received, payload);
    assert_eq!(fins, 1);
    assert!(pieces > 1, "expected several pieces, got {pieces}");
    assert!(src.is_empty());
}

#[test]
fn empty_data_with_fin_comes_out_exactly_once() {
    let mut decoder = Decoder::new(Limits::default());
    let mut src = BytesMut::new();
    let wire = hex(DATA_3_FIN_EMPTY);
    let mut frames = Vec::new();
    for byte in wire {
        src.extend_from_slice(&[byte]);
        while let Some(frame) = decoder.decode(&mut src).unwrap() {
            frames.push(frame);
        }
    }
    assert_eq!(
        frames,
        vec![Frame::Data {
            stream_id: 3,
            fin: true,
            payload: Bytes::new()
        }]
    );
    assert_eq!(decoder.decode(&mut src), Ok(None));
}

#[test]
fn data_pieces_do_not_run_into_the_next_frame() {
    let mut wire = encode(&Frame::Data {
        stream_id: 1,
        fin: false,
        payload: Bytes::from_static(b"abc"),
    });
    wire.extend_from_slice(&hex(PING_1));
    let mut decoder = Decoder::new(Limits::default());
    let mut src = BytesMut::from(&wire[..10]);
    assert_eq!(
        decoder.decode(&mut src).unwrap(),
        Some(Frame::Data {
            stream_id: 1,
            fin: false,
            payload: Bytes::from_static(b"ab")
        })
    );
    assert_eq!(decoder.decode(&mut src).unwrap(), None);
    src.extend_from_slice(&wire[10..]);
    assert_eq!(
        decoder.decode(&mut src).unwrap(),
        Some(Frame::Data {
            stream_id: 1,
            fin: false,
            payload: Bytes::from_static(b"c")
        })
    );
    assert_eq!(
        decoder.decode(&mut src).unwrap(),
        Some(Frame::Ping { id: 1 })
    );
}

#[test]
fn wanted_reports_the_whole_control_frame() {
    let wire = syn_stream_raw(1, 0, &hex(WORKED_FIRST_BLOCK));
    let decoder = Decoder::new(Limits::default());
    for cut in 0..8 {
        assert_eq!(decoder.wanted(&wire[..cut]), 8, "before a whole header");
    }
    for cut in 8..=wire.len() {
        assert_eq!(decoder.wanted(&wire[..cut]), 48, "cut at {cut}");
    }
    // A DATA header only needs itself; then any byte makes progress.
    let mut decoder = Decoder::new(Limits::default());
    let data = hex(DATA_5_LS);
    assert_eq!(decoder.wanted(&data[..8]), 8);
    let mut src = BytesMut::from(&data[..8]);
    assert_eq!(decoder.decode(&mut src), Ok(None));
    assert_eq!(decoder.wanted(&src), 1);
}

// ---------------------------------------------------------------------------------------
// Header blocks from a real zlib (what Go peers send)
// ---------------------------------------------------------------------------------------

fn go_like_blocks() -> Vec<HeaderBlock> {
    vec![
        HeaderBlock::new(),
        streamtype("error"),
        streamtype("stdin"),
        HeaderBlock::new(),
        streamtype("stdout"),
        HeaderBlock::new()
            .with("streamtype", "data")
            .with("port", "8080")
            .with("requestid", "1"),
        HeaderBlock::new()
            .with("x-long", vec![b'z'; 5000])
            .with("status", "200 OK")
            .with("content-type", "text/plain"),
        HeaderBlock::new(),
    ]
}

#[test]
fn zlib_compressed_blocks_at_every_level_decode_in_sequence() {
    for level in 1..=9 {
        let mut deflater = RealDeflater::new(level);
        let mut decoder = Decoder::new(Limits::default());
        let mut wire = Vec::new();
        let blocks = go_like_blocks();
        for (i, headers) in blocks.iter().enumerate() {
            let mut plain = Vec::new();
            headers.encode(&mut plain).unwrap();
            let compressed = deflater.block(&plain);
            if i == 0 {
                assert_eq!(compressed[2..6], [0xe3, 0xc6, 0xa7, 0xc2], "level {level}");
            }
            assert!(compressed.ends_with(&[0, 0, 0xff, 0xff]), "sync flush");
            wire.extend_from_slice(&syn_reply_raw(2 * i as u32 + 1, &compressed));
        }
        let frames = decode_all(&mut decoder, &wire).unwrap();
        let expected: Vec<Frame> = blocks
            .into_iter()
            .enumerate()
            .map(|(i, headers)| Frame::SynReply {
                stream_id: 2 * i as u32 + 1,
                fin: false,
                headers,
            })
            .collect();
        assert_eq!(frames, expected, "level {level}");
    }
}

#[test]
fn zlib_compressed_blocks_decode_when_bytes_arrive_one_at_a_time() {
    let mut deflater = RealDeflater::new(9);
    let mut wire = Vec::new();
    let blocks = go_like_blocks();
    for (i, headers) in blocks.iter().enumerate() {
        let mut plain = Vec::new();
        headers.encode(&mut plain).unwrap();
        wire.extend_from_slice(&syn_reply_raw(2 * i as u32 + 1, &deflater.block(&plain)));
    }
    let mut decoder = Decoder::new(Limits::default());
    let mut src = BytesMut::new();
    let mut got = Vec::new();
    for &byte in &wire {
        src.extend_from_slice(&[byte]);
        while let Some(Frame::SynReply { headers, .. }) = decoder.decode(&mut src).unwrap() {
            got.push(headers);
        }
    }
    assert_eq!(got, blocks);
}

// ---------------------------------------------------------------------------------------
// Round trips of arbitrary frame sequences
// ---------------------------------------------------------------------------------------

const FORBIDDEN: [&str; 5] = [
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];

fn header_block() -> impl Strategy<Value = HeaderBlock> {
    let name = "[a-z0-9][a-z0-9!#$%&'*+.^_`|~-]{0,15}"
        .prop_filter("hop-by-hop", |n: &String| !FORBIDDEN.contains(&n.as_str()));
    let value = proptest::collection::vec(any::<u8>(), 0..48);
    proptest::collection::vec((name, value), 0..6).prop_map(|pairs| {
        let mut block = HeaderBlock::new();
        for (name, value) in pairs {
            if block.get(&name).is_none() {
                block.push(&name, value);
            }
        }
        block
    })
}

fn stream_id() -> impl Strategy<Value = u32> {
    1..=MAX_STREAM_ID
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        4 => (stream_id(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(stream_id, fin, payload)| Frame::Data {
                stream_id,
                fin,
                payload: Bytes::from(payload),
            }),
        2 => (
            stream_id(),
            0..=MAX_STREAM_ID,
            0u8..8,
            any::<u8>(),
            any::<bool>(),
            any::<bool>(),
            header_block(),
        )
            .prop_map(
                |(stream_id, associated_to, priority, slot, fin, unidirectional, headers)| {
                    Frame::SynStream {
                        stream_id,
                        associated_to,
                        priority,
                        slot,
                        fin,
                        unidirectional,
                        headers,
                    }
                }
            ),
        2 => (stream_id(), any::<bool>(), header_block()).prop_map(|(stream_id, fin, headers)| {
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
        }),
        1 => (stream_id(), 1..=u32::MAX).prop_map(|(stream_id, status)| Frame::RstStream {
            stream_id,
            status: RstStatus(status),
        }),
        1 => (
            any::<bool>(),
            proptest::collection::vec((any::<u8>(), 0..=0x00ff_ffffu32, any::<u32>()), 0..5)
        )
            .prop_map(|(clear, entries)| Frame::Settings {
                clear,
                entries: entries
                    .into_iter()
                    .map(|(flags, id, value)| Setting { flags, id, value })
                    .collect(),
            }),
        1 => (1..=u32::MAX).prop_map(|id| Frame::Ping { id }),
        1 => (0..=MAX_STREAM_ID, any::<u32>()).prop_map(|(last_good_stream_id, status)| {
            Frame::GoAway {
                last_good_stream_id,
                status: GoAwayStatus(status),
            }
        }),
        1 => (stream_id(), any::<bool>(), header_block()).prop_map(|(stream_id, fin, headers)| {
            Frame::Headers {
                stream_id,
                fin,
                headers,
            }
        }),
        1 => (0..=MAX_STREAM_ID, any::<u32>())
            .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
    ]
}

/// Feeds `wire` to a fresh decoder in pieces of the given sizes (cycled), collecting frames.
fn decode_chunked(wire: &[u8], sizes: &[usize]) -> Vec<Frame> {
    let mut decoder = Decoder::new(Limits::default());
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    for &size in sizes.iter().cycle() {
        if at >= wire.len() {
            break;
        }
        let end = (at + size).min(wire.len());
        src.extend_from_slice(&wire[at..end]);
        at = end;
        while let Some(frame) = decoder.decode(&mut src).expect("decodes") {
            frames.push(frame);
        }
    }
    assert!(src.is_empty(), "{} bytes left undecoded", src.len());
    frames
}

/// Reassembles the DATA pieces of `got` against the frame boundaries of `expected`: each
/// expected DATA frame must come out as consecutive non-empty pieces of its stream (or one
/// empty piece), FIN only on the last.
fn merge_pieces(expected: &[Frame], got: Vec<Frame>) -> Result<Vec<Frame>, TestCaseError> {
    let mut got = got.into_iter();
    let mut merged = Vec::new();
    for want in expected {
        let Frame::Data {
            payload: want_payload,
            ..
        } = want
        else {
            merged.push(
                got.next()
                    .ok_or_else(|| TestCaseError::fail("missing frame"))?,
            );
            continue;
        };
        let mut payload = Vec::new();
        loop {
            let Some(Frame::Data {
                stream_id,
                fin,
                payload: piece,
            }) = got.next()
            else {
                return Err(TestCaseError::fail("expected a DATA piece"));
            };
            payload.extend_from_slice(&piece);
            let last = payload.len() >= want_payload.len();
            let want_fin = matches!(want, Frame::Data { fin: true, .. });
            prop_assert_eq!(fin, last && want_fin, "FIN only on the last piece");
            prop_assert!(!piece.is_empty() || want_payload.is_empty());
            if last {
                merged.push(Frame::Data {
                    stream_id,
                    fin,
                    payload: Bytes::from(payload),
                });
                break;
            }
        }
    }
    prop_assert!(got.next().is_none(), "extra frames");
    Ok(merged)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_frame_sequence_round_trips(frames in proptest::collection::vec(any_frame(), 0..24)) {
        let mut encoder = Encoder::new();
        let mut wire = BytesMut::new();
        for frame in &frames {
            encoder.encode(frame, &mut wire).unwrap();
        }
        let decoded = decode_all(&mut Decoder::new(Limits::default()), &wire).unwrap();
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn any_frame_sequence_round_trips_through_arbitrary_chunks(
        frames in proptest::collection::vec(any_frame(), 0..24),
        sizes in proptest::collection::vec(1usize..64, 1..16),
    ) {
        let mut encoder = Encoder::new();
        let mut wire = BytesMut::new();
        for frame in &frames {
            encoder.encode(frame, &mut wire).unwrap();
        }
        let got = decode_chunked(&wire, &sizes);
        prop_assert_eq!(merge_pieces(&frames, got)?, frames);
    }

    #[test]
    fn zlib_compressed_header_blocks_round_trip(
        blocks in proptest::collection::vec(header_block(), 1..8),
        level in 1u32..=9,
        sizes in proptest::collection::vec(1usize..40, 1..8),
    ) {
        let mut deflater = RealDeflater::new(level);
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (i, headers) in blocks.into_iter().enumerate() {
            let mut plain = Vec::new();
            headers.encode(&mut plain).unwrap();
            let stream_id = 2 * i as u32 + 1;
            wire.extend_from_slice(&syn_reply_raw(stream_id, &deflater.block(&plain)));
            expected.push(Frame::SynReply { stream_id, fin: false, headers });
        }
        prop_assert_eq!(decode_chunked(&wire, &sizes), expected);
    }
}

// ---------------------------------------------------------------------------------------
// Session output through the codec (found by the `session` fuzz target)
// ---------------------------------------------------------------------------------------

mod session_findings {
    use super::*;
    use ws_spdy_bridge::spdy::{Event, Role, Session};

    #[test]
    fn every_frame_a_session_answers_with_is_encodable_for_valid_ids() {
        let mut server = Session::new(Role::Server);
        server.recv(syn_stream(5, streamtype("error")));
        server.recv(syn_stream(3, streamtype("stdin"))); // too low: RST PROTOCOL_ERROR
        server.recv(Frame::Ping { id: 1 }); // the client's: echoed
        let mut encoder = Encoder::new();
        let mut dst = BytesMut::new();
        while let Some(frame) = server.poll_transmit() {
            encoder.encode(&frame, &mut dst).unwrap();
        }
        for frame in server.close() {
            encoder.encode(&frame, &mut dst).unwrap();
        }
        let frames = decode_all(&mut Decoder::new(Limits::default()), &dst).unwrap();
        assert_eq!(frames.len(), 4, "{frames:?}");
    }

    #[test]
    fn rst_for_a_reserved_bit_stream_id_is_encodable() {
        let mut server = Session::new(Role::Server);
        assert_eq!(
            server.recv(syn_stream(0x8000_0001, HeaderBlock::new())),
            None
        );
        let rst = server.poll_transmit().expect("an RST_STREAM is owed");
        let mut dst = BytesMut::new();
        assert_eq!(Encoder::new().encode(&rst, &mut dst), Ok(()), "{rst:?}");
    }

    #[test]
    fn syn_stream_with_fin_and_unidirectional_leaves_no_open_stream() {
        let mut server = Session::new(Role::Server);
        let event = server.recv(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: true,
            unidirectional: true,
            headers: HeaderBlock::new(),
        });
        assert!(matches!(event, Some(Event::StreamOpened { .. })));
        assert_eq!(server.open_streams(), 0);
    }

    #[test]
    fn peer_syn_stream_cannot_take_over_our_own_open_stream() {
        let mut client = Session::new(Role::Client);
        let _ = client.open(streamtype("error")).unwrap(); // 1
        let (ours, _) = client.open(streamtype("stdin")).unwrap(); // 3
        let event = client.recv(syn_stream(ours, streamtype("stdout")));
        assert_eq!(event, None, "got {event:?}");
        assert_eq!(
            client.poll_transmit(),
            Some(Frame::RstStream {
                stream_id: ours,
                status: RstStatus::PROTOCOL_ERROR
            })
        );
    }
}
