//! The compressing side of a SPDY header-block zlib context, without a compressor.
//!
//! SPDY/3 requires every header block to be a piece of one zlib stream per direction, preloaded
//! with the SPDY dictionary, ending on a byte boundary (a sync flush). It does not require the
//! blocks to be *compressed*: DEFLATE's stored blocks are valid input for every inflater. A real
//! zlib deflater costs ~370 KiB per connection (zlib-rs) or ~600 KiB (Go), and we send a handful
//! of tiny header blocks per connection, so we emit stored blocks and keep no state but one flag.
//!
//! ```text
//! first block only:  78 f9                zlib CMF/FLG: deflate, 32 KiB window, FDICT set
//!                    e3 c6 a7 c2          DICTID = Adler-32 of the SPDY dictionary
//! every block:       00                   BFINAL=0, BTYPE=00 (stored), padded to a byte
//!                    LEN(le16) NLEN(le16) NLEN = !LEN
//!                    LEN bytes            the plain name/value block
//!                    00 00 00 ff ff       an empty stored block: the sync-flush marker
//! ```
//!
//! The receiver can decode the frame's bytes alone, exactly as after a zlib sync flush. `78 f9` is the header spdystream's level-9 compressor writes;
//! inflaters ignore the FLEVEL bits, and the FDICT bit makes the stream name the dictionary as
//! SPDY peers expect (checklist C-18).

use super::dictionary::DICTIONARY_ADLER32;

/// The zlib header every SPDY/3 sender starts its header stream with (FDICT set).
pub const ZLIB_HEADER: [u8; 2] = [0x78, 0xf9];

/// Largest payload of one stored block.
const MAX_STORED: usize = u16::MAX as usize;

/// Writes the header blocks of one direction of a connection as stored DEFLATE blocks.
#[derive(Debug, Default)]
pub struct HeaderDeflater {
    started: bool,
}

impl HeaderDeflater {
    /// A context for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the compressed form of one plain name/value block to `out`.
    pub fn compress(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        if !self.started {
            out.extend_from_slice(&ZLIB_HEADER);
            out.extend_from_slice(&DICTIONARY_ADLER32.to_be_bytes());
            self.started = true;
        }
        for chunk in plain.chunks(MAX_STORED) {
            push_stored(chunk, out);
        }
        // The empty stored block a zlib sync flush ends with. Go's inflater (spdystream, so
        // every Kubernetes peer) hands out a stored block's bytes only once it has read the
        // next block header; without this marker it reads past the frame and the peer's
        // connection dies on our second header block.
        push_stored(&[], out);
    }

    /// Bytes [`compress`](Self::compress) will append for a plain block of `plain_len` bytes.
    pub fn compressed_len(&self, plain_len: usize) -> usize {
        let header = if self.started { 0 } else { 6 };
        let blocks = plain_len.div_ceil(MAX_STORED) + 1;
        header + blocks * 5 + plain_len
    }
}

fn push_stored(chunk: &[u8], out: &mut Vec<u8>) {
    let len = chunk.len() as u16;
    out.push(0x00);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(chunk);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::dictionary::DICTIONARY;
    use flate2::{Decompress, FlushDecompress, Status};

    /// Inflates with zlib-rs, the reference, supplying the dictionary when asked.
    fn reference_inflate(z: &mut Decompress, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut pos = 0;
        loop {
            let before = z.total_in();
            match z.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync) {
                Ok(Status::Ok) | Ok(Status::BufError) | Ok(Status::StreamEnd) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    z.set_dictionary(DICTIONARY).expect("dictionary accepted");
                }
                Err(e) => panic!("reference inflater refused our block: {e}"),
            }
            pos += (z.total_in() - before) as usize;
            if pos >= input.len() {
                return out;
            }
            out.reserve(input.len());
        }
    }

    #[test]
    fn first_block_names_the_spdy_dictionary() {
        let mut d = HeaderDeflater::new();
        let mut out = Vec::new();
        d.compress(&[0, 0, 0, 0], &mut out);
        assert_eq!(
            out,
            [
                0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0, 4, 0, 0xfb, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff,
                0xff
            ]
        );
    }

    #[test]
    fn blocks_inflate_with_the_reference_zlib_in_order() {
        let mut d = HeaderDeflater::new();
        let mut z = Decompress::new(true);
        let blocks: Vec<Vec<u8>> = vec![
            b"\x00\x00\x00\x01\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error".to_vec(),
            vec![],
            vec![0xab; 70_000],
            b"\x00\x00\x00\x00".to_vec(),
        ];
        for block in &blocks {
            let predicted = d.compressed_len(block.len());
            let mut out = Vec::new();
            d.compress(block, &mut out);
            assert_eq!(out.len(), predicted);
            assert_eq!(&reference_inflate(&mut z, &out), block);
        }
    }

    #[test]
    fn compressed_len_matches_output() {
        for len in [0, 1, 65_535, 65_536, 200_000] {
            let mut d = HeaderDeflater::new();
            let predicted = d.compressed_len(len);
            let mut out = Vec::new();
            d.compress(&vec![7; len], &mut out);
            assert_eq!(out.len(), predicted);
            let predicted = d.compressed_len(len);
            out.clear();
            d.compress(&vec![7; len], &mut out);
            assert_eq!(out.len(), predicted);
        }
    }
}
