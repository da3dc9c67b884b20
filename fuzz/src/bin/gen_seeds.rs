//! Writes the seed corpora under `fuzz/corpus/<target>/`.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --features gen-seeds --bin gen_seeds [TARGET...]`
//!
//! Seeds are small files built from the golden vectors of protocol.md §1.5, from our own
//! encoder and from zlib. The session seeds are opaque `arbitrary` byte strings, so they are
//! mined: random inputs are run through the harness and kept while they exercise something
//! the seeds so far did not.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use ws_spdy_bridge::spdy::deflate::HeaderDeflater;
use ws_spdy_bridge::spdy::frame::Setting;
use ws_spdy_bridge::spdy::{Encoder, Frame, GoAwayStatus, HeaderBlock, RstStatus};
use ws_spdy_bridge::websocket::Opcode;
use ws_spdy_bridge_fuzz::session::{Harness, Input};
use ws_spdy_bridge_fuzz::websocket::{LengthForm, client_frame};
use ws_spdy_bridge_fuzz::{Rng, ZlibBlocks};

const PING_1: &str = "80 03 00 06 00 00 00 04 00 00 00 01";
const RST_3_CANCEL: &str = "80 03 00 03 00 00 00 08 00 00 00 03 00 00 00 05";
const GOAWAY_9_OK: &str = "80 03 00 07 00 00 00 08 00 00 00 09 00 00 00 00";
const DATA_3_FIN_EMPTY: &str = "00 00 00 03 01 00 00 00";
const DATA_5_LS: &str = "00 00 00 05 00 00 00 03 6c 73 0a";
const WORKED_FIRST_BLOCK: &str =
    "78 f9 e3 c6 a7 c2 02 a6 23 46 70 3a 2b 29 4a 4d cc 85 16 25 ac a9 a0 80 06 00 00 00 ff ff";
const WORKED_SECOND_BLOCK: &str = "c2 2e 55 5c 02 cc 2e 00 00 00 00 ff ff";
const WORKED_EMPTY_REPLY_BLOCK: &str = "78 f9 e3 c6 a7 c2 02 a6 23 06 00 00 00 00 ff ff";

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn control(frame_type: u16, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![0x80, 0x03];
    out.extend_from_slice(&frame_type.to_be_bytes());
    out.extend_from_slice(&[0, len[1], len[2], len[3]]);
    out.extend_from_slice(payload);
    out
}

fn syn_stream_raw(stream_id: u32, block: &[u8]) -> Vec<u8> {
    let mut payload = stream_id.to_be_bytes().to_vec();
    payload.extend_from_slice(&[0; 6]);
    payload.extend_from_slice(block);
    control(1, &payload)
}

fn syn_reply_raw(stream_id: u32, block: &[u8]) -> Vec<u8> {
    let mut payload = stream_id.to_be_bytes().to_vec();
    payload.extend_from_slice(block);
    control(2, &payload)
}

fn streamtype(v: &str) -> HeaderBlock {
    HeaderBlock::new().with("streamtype", v)
}

fn port_forward() -> HeaderBlock {
    HeaderBlock::new()
        .with("streamtype", "data")
        .with("port", "8080")
        .with("requestid", "0")
}

fn plain(block: &HeaderBlock) -> Vec<u8> {
    let mut out = Vec::new();
    block.encode(&mut out).unwrap();
    out
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut encoder = Encoder::new();
    let mut out = BytesMut::new();
    for f in frames {
        encoder.encode(f, &mut out).unwrap();
    }
    out.to_vec()
}

fn syn(stream_id: u32, headers: HeaderBlock) -> Frame {
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

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    // The `seed_` prefix keeps seeds apart from what a fuzzer adds (see .gitignore).
    let path = dir.join(format!("seed_{name}"));
    fs::write(&path, bytes).unwrap();
    println!("{:>5} bytes  {}", bytes.len(), path.display());
}

fn with_prefix(prefix: &[u8], parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

fn frame_decoder(dir: &Path) {
    let golden: Vec<Vec<u8>> = [
        PING_1,
        RST_3_CANCEL,
        GOAWAY_9_OK,
        DATA_3_FIN_EMPTY,
        DATA_5_LS,
    ]
    .iter()
    .map(|s| hex(s))
    .collect();
    write(dir, "golden_fixed_frames", &with_prefix(&[0, 0], &golden));
    write(
        dir,
        "worked_example_syn_streams",
        &with_prefix(
            &[0, 0],
            &[
                syn_stream_raw(1, &hex(WORKED_FIRST_BLOCK)),
                syn_stream_raw(3, &hex(WORKED_SECOND_BLOCK)),
            ],
        ),
    );
    write(
        dir,
        "worked_example_syn_reply_in_pieces",
        &with_prefix(&[5, 1], &[syn_reply_raw(1, &hex(WORKED_EMPTY_REPLY_BLOCK))]),
    );
    let setup = encode_all(&[
        syn(1, streamtype("error")),
        syn(3, streamtype("stdin")),
        syn(5, streamtype("stdout")),
        syn(7, streamtype("stderr")),
        Frame::Data {
            stream_id: 3,
            fin: false,
            payload: Bytes::from_static(b"ls\n"),
        },
        Frame::Data {
            stream_id: 3,
            fin: true,
            payload: Bytes::new(),
        },
        Frame::Ping { id: 1 },
        Frame::RstStream {
            stream_id: 5,
            status: RstStatus::CANCEL,
        },
        Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::OK,
        },
    ]);
    write(
        dir,
        "our_remote_command_session",
        &with_prefix(&[13, 7], &[setup]),
    );
    let mut zlib = ZlibBlocks::new(9, true);
    let replies: Vec<Vec<u8>> = [HeaderBlock::new(), streamtype("error"), port_forward()]
        .iter()
        .enumerate()
        .map(|(i, b)| syn_reply_raw(2 * i as u32 + 1, &zlib.block(&plain(b), false)))
        .collect();
    write(dir, "zlib_syn_replies", &with_prefix(&[0, 0], &replies));
    let rare = encode_all(&[
        Frame::Settings {
            clear: true,
            entries: vec![
                Setting {
                    flags: 1,
                    id: 4,
                    value: 100,
                },
                Setting {
                    flags: 0,
                    id: 7,
                    value: 65536,
                },
            ],
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 1024,
        },
        Frame::Headers {
            stream_id: 1,
            fin: true,
            headers: HeaderBlock::new().with("x-a", "1"),
        },
    ]);
    write(
        dir,
        "settings_window_update_headers",
        &with_prefix(&[3, 3], &[rare]),
    );
    let data = encode_all(&[Frame::Data {
        stream_id: 1,
        fin: true,
        payload: Bytes::from((0u8..100).collect::<Vec<u8>>()),
    }]);
    write(dir, "data_in_small_pieces", &with_prefix(&[1, 42], &[data]));
    write(
        dir,
        "ping_then_noop_type_5",
        &with_prefix(&[0, 0], &[hex(PING_1), hex("80 03 00 05 00 00 00 00")]),
    );
}

fn header_block(dir: &Path) {
    write(
        dir,
        "worked_example_block",
        &with_prefix(&[0], &[hex(WORKED_FIRST_BLOCK)]),
    );
    write(
        dir,
        "worked_example_block_split",
        &with_prefix(&[0x10], &[hex(WORKED_FIRST_BLOCK)]),
    );
    let mut zlib = ZlibBlocks::new(9, true);
    write(
        dir,
        "zlib_port_forward_block",
        &with_prefix(&[0], &[zlib.block(&plain(&port_forward()), false)]),
    );
    let mut zlib = ZlibBlocks::new(1, true);
    let long = HeaderBlock::new()
        .with("content-type", "text/plain")
        .with("x-long", vec![b'q'; 300]);
    write(
        dir,
        "zlib_level1_long_value",
        &with_prefix(&[0x22], &[zlib.block(&plain(&long), false)]),
    );
    let mut stored = Vec::new();
    HeaderDeflater::new().compress(&plain(&streamtype("error")), &mut stored);
    write(dir, "our_stored_block", &with_prefix(&[0], &[stored]));
    write(
        dir,
        "plain_port_forward",
        &with_prefix(&[1], &[plain(&port_forward())]),
    );
    write(dir, "plain_empty", &[1, 0, 0, 0, 0]);
}

fn blocks(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        assert!(p.len() < 255);
        out.push(p.len() as u8);
        out.extend_from_slice(p);
    }
    out
}

fn inflate_differential(dir: &Path) {
    let headers = blocks(&[
        plain(&streamtype("error")),
        plain(&streamtype("stdin")),
        plain(&HeaderBlock::new()),
        plain(&port_forward()),
    ]);
    write(
        dir,
        "dictionary_level9_headers",
        &with_prefix(&[0x19, 7], std::slice::from_ref(&headers)),
    );
    write(
        dir,
        "dictionary_level1_headers",
        &with_prefix(&[0x11, 3], std::slice::from_ref(&headers)),
    );
    write(
        dir,
        "dictionary_finished_stream",
        &with_prefix(&[0x39, 0], std::slice::from_ref(&headers)),
    );
    write(
        dir,
        "stored_level0_finished",
        &with_prefix(&[0x30, 9], &[headers]),
    );
    let text = blocks(&[
        b"content-type: text/plain; charset=utf-8".to_vec(),
        b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec(),
        (0u8..=200).collect(),
    ]);
    write(
        dir,
        "no_dictionary_level6",
        &with_prefix(&[0x06, 5], &[text]),
    );
    // Raw mode: the DEFLATE data of the worked example, after its 6-byte zlib header.
    let worked = hex(WORKED_FIRST_BLOCK);
    write(
        dir,
        "raw_worked_example",
        &with_prefix(&[0x50, 0], &[worked[6..].to_vec()]),
    );
    let mut zlib = ZlibBlocks::new(6, false);
    let finished = zlib.block(b"hello hello hello hello", true);
    write(
        dir,
        "raw_finished_no_dictionary",
        &with_prefix(&[0x40, 0], &[finished[2..].to_vec()]),
    );
}

fn session(dir: &Path) {
    let mut covered: BTreeSet<String> = BTreeSet::new();
    let mut rng = Rng::new(0x5eed_5eed);
    let mut kept = 0;
    for round in 0..40_000 {
        let len = 16 + rng.below(400);
        let bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        let input = Input::from_bytes(&bytes);
        let seen = Harness::run(&input);
        let new = seen.difference(&covered).count();
        if new >= 2 || (new == 1 && kept >= 4) {
            covered.extend(seen);
            write(dir, &format!("mined_{kept:02}_round_{round}"), &bytes);
            kept += 1;
            if kept == 10 {
                break;
            }
        }
    }
    println!("session seeds cover: {covered:?}");
}

/// Raw-mode header: pieces of 1..=`piece` bytes, max_frame 1 KiB, max_message 2 KiB.
fn ws_raw(piece: u8, frames: &[Vec<u8>]) -> Vec<u8> {
    with_prefix(&[0, piece - 1, 7, 128, 128], frames)
}

fn websocket_decoder(dir: &Path) {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let frame = |fin, opcode, payload: &[u8]| {
        client_frame(fin, opcode, mask, payload, LengthForm::Shortest)
    };
    let binary: Vec<u8> = (0..200u8).collect();
    write(
        dir,
        "binary_16bit_length_then_empty",
        &ws_raw(
            64,
            &[
                frame(true, Opcode::Binary, &binary),
                frame(true, Opcode::Binary, b""),
            ],
        ),
    );
    write(
        dir,
        "fragmented_text_with_ping_between",
        &ws_raw(
            3,
            &[
                frame(false, Opcode::Text, b"Hel"),
                frame(true, Opcode::Ping, b"are you there"),
                frame(false, Opcode::Continuation, b"lo, "),
                frame(true, Opcode::Continuation, b"world"),
                frame(true, Opcode::Pong, b""),
            ],
        ),
    );
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    write(
        dir,
        "close_with_code_and_reason",
        &ws_raw(1, &[frame(true, Opcode::Close, &close)]),
    );
    // A valid frame, then one without a mask: the decoder must refuse the second.
    let mut unmasked = frame(true, Opcode::Binary, b"abc");
    unmasked[1] &= 0x7f;
    unmasked.truncate(2);
    unmasked.extend_from_slice(b"abc");
    write(
        dir,
        "invalid_unmasked_after_valid",
        &ws_raw(5, &[frame(true, Opcode::Binary, b"ok"), unmasked]),
    );
    // Fragments that fit max_frame (64) but add up past max_message (96).
    write(
        dir,
        "fragments_past_max_message",
        &with_prefix(
            &[0, 15, 9, 8, 6],
            &[
                frame(false, Opcode::Binary, &[1; 60]),
                frame(false, Opcode::Continuation, &[2; 30]),
                frame(true, Opcode::Continuation, &[3; 30]),
            ],
        ),
    );
    // Messages mode: a binary message in 3 fragments (16-bit lengths), a text message, a
    // ping, a pong and a close with code 1001 and a reason.
    let mut ops = vec![0x48, 40];
    ops.extend(0..40u8);
    ops.extend_from_slice(&[0x01, 5]);
    ops.extend_from_slice(b"hello");
    ops.extend_from_slice(&[0x02, 2, b'p', b'!', 0x13, 0, 0x04, 4, 1, b'b', b'y', b'e']);
    write(
        dir,
        "messages_fragmented_and_control",
        &with_prefix(&[1, 7, 42, 64, 16], &[ops]),
    );
}

/// Writes one target's seeds into the directory given.
type Generator = fn(&Path);

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let generators: [(&str, Generator); 5] = [
        ("frame_decoder", frame_decoder),
        ("header_block", header_block),
        ("inflate_differential", inflate_differential),
        ("session", session),
        ("websocket_decoder", websocket_decoder),
    ];
    for (target, generate) in generators {
        if !wanted(target) {
            continue;
        }
        let dir = root.join(target);
        // Replace the seeds only; whatever else a local fuzz run left there stays.
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("seed_") {
                    fs::remove_file(entry.path()).unwrap();
                }
            }
        }
        generate(&dir);
    }
}

/// Whether `target`'s seeds are to be written: all of them, or those named on the command
/// line.
fn wanted(target: &str) -> bool {
    let mut named = std::env::args().skip(1).peekable();
    named.peek().is_none() || named.any(|t| t == target)
}
