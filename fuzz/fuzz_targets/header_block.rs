//! Arbitrary bytes as a header block: inflated with `HeaderInflater` and parsed with
//! `HeaderBlock::decode`, or (byte 0 odd) parsed directly as an uncompressed block.
//!
//! Inflating must give the same result however the input is split; a block that parses must
//! re-encode to the bytes it came from and parse back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_spdy_bridge::spdy::HeaderBlock;
use ws_spdy_bridge::spdy::headers::BlockKind;
use ws_spdy_bridge::spdy::inflate::{HeaderInflater, InflateError};
use ws_spdy_bridge_fuzz::small_limits;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limits = small_limits().headers;
    let plain = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        let split = if rest.is_empty() {
            0
        } else {
            usize::from(mode >> 1) % (rest.len() + 1)
        };
        match inflate_both_ways(rest, split, limits.max_block) {
            Some(plain) => plain,
            None => return,
        }
    };
    let Ok(block) = HeaderBlock::decode(&plain, &limits) else {
        return;
    };
    assert!(block.len() <= limits.max_pairs);
    let mut again = Vec::new();
    block.encode(&mut again).expect("a parsed block re-encodes");
    assert_eq!(again, plain);
    assert_eq!(block.encoded_len(), plain.len());
    assert_eq!(HeaderBlock::decode(&again, &limits).as_ref(), Ok(&block));
    for kind in [
        BlockKind::SynStream,
        BlockKind::SynReply,
        BlockKind::Headers,
    ] {
        let _ = block.check_forbidden(kind);
    }
});

/// Inflates `input` in one call and in two (split at `split`); both must agree.
fn inflate_both_ways(input: &[u8], split: usize, max_out: usize) -> Option<Vec<u8>> {
    let mut whole = Vec::new();
    let one = HeaderInflater::new().inflate(input, &mut whole, max_out);
    let mut inflater = HeaderInflater::new();
    let mut parts = Vec::new();
    let mut two = inflater.inflate(&input[..split], &mut parts, max_out);
    if two.is_ok() {
        two = inflater.inflate(&input[split..], &mut parts, max_out);
    }
    match (&one, &two) {
        (Ok(()), Ok(())) => assert_eq!(parts, whole),
        // The limit is per call, so two calls may fit what one cannot.
        (Err(InflateError::OutputLimit { .. }), _) => {}
        _ => assert_eq!(one, two, "split at {split} of {}", input.len()),
    }
    if let Err(err) = &one {
        assert!(whole.is_empty(), "output left behind by a failed call");
        // Poisoned: the same error again, and nothing appended.
        let mut out = vec![7];
        let mut inflater = HeaderInflater::new();
        let _ = inflater.inflate(input, &mut Vec::new(), max_out);
        assert_eq!(
            inflater.inflate(b"\x00", &mut out, max_out).as_ref(),
            Err(err)
        );
        assert_eq!(out, [7]);
    }
    one.ok().map(|()| whole)
}
