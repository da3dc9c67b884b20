//! Arbitrary bytes, fed in arbitrary pieces, through one `Decoder` with small limits.
//!
//! Input: byte 0 picks the piece sizes (0 = everything at once, n = pieces of 1..=n bytes
//! from a generator seeded by byte 1), the rest is the wire. The decoder must never panic,
//! must stay poisoned after an error, must keep its heap within its limits, and every frame
//! it yields must survive our own encoder and a second decoder.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ws_spdy_bridge::spdy::frame::{DecodeError, EncodeError};
use ws_spdy_bridge::spdy::{Decoder, Encoder, Frame, Limits};
use ws_spdy_bridge_fuzz::{Rng, assert_round_trip, small_limits};

/// The inflater's 32 KiB history, the header block scratch (at most doubled by Vec growth)
/// and a little bookkeeping for Huffman tables.
const HEAP_BOUND: usize = 32 * 1024 + 2 * 2048 + 8 * 1024;

fuzz_target!(|data: &[u8]| {
    let (max_piece, seed, wire) = match data {
        [a, b, rest @ ..] => (usize::from(*a), u64::from(*b), rest),
        _ => return,
    };
    let limits = small_limits();
    let mut decoder = Decoder::new(limits);
    let mut rng = Rng::new(seed);
    let mut src = BytesMut::new();
    // Re-encoding uses default limits: our stored blocks are larger than the peer's.
    let mut encoder = Encoder::new();
    let mut check = Decoder::new(Limits::default());
    let mut at = 0;
    while at < wire.len() {
        let n = if max_piece == 0 {
            wire.len()
        } else {
            1 + rng.below(max_piece)
        };
        let end = (at + n).min(wire.len());
        src.extend_from_slice(&wire[at..end]);
        at = end;
        loop {
            let before = src.len();
            let first = src.first().copied();
            let wanted = decoder.wanted(&src);
            assert!(wanted >= 1);
            match decoder.decode(&mut src) {
                Ok(None) => {
                    // Nothing consumed, except a DATA header whose payload has not arrived.
                    let consumed = before - src.len();
                    if consumed == 0 {
                        assert!(before < wanted, "stalled with the {wanted} bytes it wanted");
                    } else {
                        assert_eq!(consumed, 8, "consumed bytes without a frame");
                        assert_eq!(first.map(|b| b & 0x80), Some(0), "not a DATA header");
                    }
                    break;
                }
                Ok(Some(frame)) => {
                    // Every frame, even an empty DATA piece's header, consumes input.
                    assert!(src.len() < before, "a frame from no bytes");
                    if let Frame::Data { payload, .. } = &frame {
                        assert!(payload.len() <= limits.max_data_frame);
                    }
                    re_encode(&mut encoder, &mut check, &frame);
                }
                Err(err) => {
                    assert_ne!(err, DecodeError::Poisoned);
                    assert_eq!(decoder.decode(&mut src), Err(DecodeError::Poisoned));
                    return;
                }
            }
            assert!(
                decoder.heap_size() <= HEAP_BOUND,
                "decoder holds {} bytes",
                decoder.heap_size()
            );
        }
    }
});

fn re_encode(encoder: &mut Encoder, check: &mut Decoder, frame: &Frame) {
    match assert_round_trip(encoder, check, frame) {
        Ok(()) => {}
        // Control ids with the reserved bit set decode (spdystream does not mask it either)
        // but are not ours to send.
        Err(EncodeError::StreamId(id)) => assert!(id > 0x7fff_ffff),
        Err(err) => panic!("decoded {frame:?} does not re-encode: {err}"),
    }
}
