//! Our `HeaderInflater` against zlib (flate2's zlib-rs backend).
//!
//! Mode "compress": arbitrary blocks are compressed by zlib as a SPDY sender does (one
//! stream, SPDY dictionary or none, sync flush after each block, optionally finished); each
//! block must inflate with ours, fed in two pieces, to exactly its plain bytes.
//!
//! Mode "raw": arbitrary bytes after a zlib header go to both inflaters; where zlib inflates
//! them, ours must yield the same bytes, and where zlib refuses them, so must ours.
//!
//! Input layout (plain bytes, so seeds are easy to write by hand):
//! ```text
//! byte 0: bits 0-3 zlib level (mod 10), bit 4 SPDY dictionary, bit 5 finish the stream,
//!         bit 6 raw mode
//! byte 1: where to split each compressed block into two calls
//! rest:   compress mode: blocks, each one length byte then that many bytes (255 = all the
//!         rest); raw mode: DEFLATE data to put after the zlib header
//! ```
#![no_main]

use flate2::{Decompress, FlushDecompress, Status};
use libfuzzer_sys::fuzz_target;
use ws_spdy_bridge::spdy::dictionary::{DICTIONARY, DICTIONARY_ADLER32};
use ws_spdy_bridge::spdy::inflate::{CodeTable, HeaderInflater, InflateError};
use ws_spdy_bridge_fuzz::ZlibBlocks;

/// Output cap for the raw mode; past it the comparison is skipped.
const RAW_LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let [flags, split, rest @ ..] = data else {
        return;
    };
    let level = u32::from(flags & 0x0f) % 10;
    let dictionary = flags & 0x10 != 0;
    let finish = flags & 0x20 != 0;
    if flags & 0x40 != 0 {
        raw_mode(dictionary, rest);
    } else {
        compress_mode(level, dictionary, finish, *split, &split_blocks(rest));
    }
});

fn split_blocks(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut blocks = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let n = if len == 255 {
            tail.len()
        } else {
            usize::from(len).min(tail.len())
        };
        blocks.push(&tail[..n]);
        rest = &tail[n..];
    }
    blocks
}

fn compress_mode(level: u32, dictionary: bool, finish: bool, split: u8, blocks: &[&[u8]]) {
    let mut zlib = ZlibBlocks::new(level, dictionary);
    let mut ours = HeaderInflater::new();
    for (i, plain) in blocks.iter().enumerate() {
        let last = i + 1 == blocks.len();
        let compressed = zlib.block(plain, finish && last);
        let cut = usize::from(split) % (compressed.len() + 1);
        let mut out = Vec::new();
        // The limit is exactly the block: reaching it is not exceeding it.
        let limit = plain.len();
        ours.inflate(&compressed[..cut], &mut out, limit)
            .unwrap_or_else(|e| panic!("block {i} (level {level}), first piece: {e}"));
        let first = out.len();
        ours.inflate(&compressed[cut..], &mut out, limit - first)
            .unwrap_or_else(|e| panic!("block {i} (level {level}), second piece: {e}"));
        assert_eq!(out.as_slice(), *plain, "block {i} at level {level}");
    }
    if finish && !blocks.is_empty() {
        // After the stream's end, any more input is an error.
        assert_eq!(
            ours.inflate(&[0], &mut Vec::new(), 16),
            Err(InflateError::StreamFinished)
        );
    }
}

fn raw_mode(dictionary: bool, deflate: &[u8]) {
    let mut input = if dictionary {
        let mut h = vec![0x78, 0xf9];
        h.extend_from_slice(&DICTIONARY_ADLER32.to_be_bytes());
        h
    } else {
        vec![0x78, 0x9c]
    };
    input.extend_from_slice(deflate);

    let reference = zlib_inflate(&input);
    let mut out = Vec::new();
    let ours = HeaderInflater::new().inflate(&input, &mut out, RAW_LIMIT);
    match (reference, ours) {
        (Reference::TooBig, _) | (_, Err(InflateError::OutputLimit { .. })) => {}
        (Reference::Inflated(expected), Ok(())) => assert_eq!(out, expected),
        // A dynamic block whose code-length code has no codes at all can never be valid,
        // but zlib only says so once it has read every length (it decodes them as zeros,
        // then finds no end-of-block code). Ours refuses as soon as the code is read, so
        // when the input stops in between, zlib has not failed yet.
        (Reference::Inflated(_), Err(InflateError::IncompleteCode(CodeTable::CodeLength))) => {}
        (Reference::Inflated(expected), Err(err)) => {
            panic!("zlib inflates {} bytes, ours fails: {err}", expected.len())
        }
        (Reference::Ended, Ok(())) => panic!("zlib saw input after the end, ours accepted it"),
        (Reference::Ended, Err(_)) => {}
        (Reference::Refused(why), Ok(())) => {
            panic!("zlib refuses ({why}), ours inflated {} bytes", out.len())
        }
        (Reference::Refused(_), Err(_)) => {}
    }
}

enum Reference {
    /// All input consumed without error; this is what came out.
    Inflated(Vec<u8>),
    /// The stream ended (final block and checksum) before the input did.
    Ended,
    Refused(String),
    TooBig,
}

fn zlib_inflate(input: &[u8]) -> Reference {
    let mut z = Decompress::new(true);
    let mut out = Vec::with_capacity(4096);
    loop {
        let used = z.total_in() as usize;
        if out.len() == out.capacity() {
            if out.len() >= RAW_LIMIT {
                return Reference::TooBig;
            }
            out.reserve(out.len());
        }
        let produced = out.len();
        match z.decompress_vec(&input[used..], &mut out, FlushDecompress::Sync) {
            Ok(Status::StreamEnd) => {
                return if z.total_in() as usize == input.len() {
                    Reference::Inflated(out)
                } else {
                    Reference::Ended
                };
            }
            Ok(_) => {}
            Err(e) if e.needs_dictionary().is_some() => {
                if let Err(e) = z.set_dictionary(DICTIONARY) {
                    return Reference::Refused(e.to_string());
                }
            }
            Err(e) => return Reference::Refused(e.to_string()),
        }
        let progress = z.total_in() as usize != used || out.len() != produced;
        if z.total_in() as usize == input.len() && out.len() < out.capacity() {
            return Reference::Inflated(out);
        }
        if !progress && out.len() < out.capacity() {
            return Reference::Refused("no progress".into());
        }
    }
}
