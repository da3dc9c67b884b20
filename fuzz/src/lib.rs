//! Helpers shared by the fuzz targets and the seed generator.
//!
//! The targets themselves (`fuzz_targets/`) are thin: they turn bytes into calls and leave the
//! checking to the functions here, so the seed generator can run the same code.

pub mod session;
pub mod websocket;

use bytes::BytesMut;
use flate2::{Compress, Compression, FlushCompress};
use ws_spdy_bridge::spdy::dictionary::DICTIONARY;
use ws_spdy_bridge::spdy::frame::EncodeError;
use ws_spdy_bridge::spdy::{Decoder, Encoder, Frame, HeaderLimits, Limits};

/// Small caps, so a run that ignored them would show up as an allocation far above them.
pub fn small_limits() -> Limits {
    Limits {
        max_control_frame: 4096,
        max_data_frame: 1024,
        headers: HeaderLimits {
            max_block: 2048,
            max_pairs: 16,
            max_name: 64,
            max_value: 512,
        },
    }
}

/// A zlib compressor set up as spdystream's: SPDY dictionary, one sync flush per block.
pub struct ZlibBlocks {
    z: Compress,
}

impl ZlibBlocks {
    /// `level` 0–9; `dictionary` presets the SPDY dictionary (FDICT set in the header).
    pub fn new(level: u32, dictionary: bool) -> Self {
        let mut z = Compress::new(Compression::new(level.min(9)), true);
        if dictionary {
            z.set_dictionary(DICTIONARY)
                .expect("zlib-rs takes a dictionary");
        }
        ZlibBlocks { z }
    }

    /// Compresses one block, ending it with a sync flush (or finishing the stream).
    pub fn block(&mut self, plain: &[u8], finish: bool) -> Vec<u8> {
        let flush = if finish {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        let start = self.z.total_in();
        let mut out = Vec::with_capacity(plain.len() + 64);
        loop {
            let used = (self.z.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            let status = self
                .z
                .compress_vec(&plain[used..], &mut out, flush)
                .expect("compresses");
            let all_in = (self.z.total_in() - start) as usize == plain.len();
            let done = if finish {
                status == flate2::Status::StreamEnd
            } else {
                all_in && out.len() < out.capacity()
            };
            if done {
                return out;
            }
        }
    }
}

/// Deterministic pseudo-random numbers (xorshift64*), for chunk sizes.
pub struct Rng(u64);

impl Rng {
    /// A generator; any seed works (zero is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Encodes `frame` with `encoder` and decodes it with `decoder` (the two ends of one
/// direction); the result must be `frame` again, DATA pieces merged.
pub fn assert_round_trip(
    encoder: &mut Encoder,
    decoder: &mut Decoder,
    frame: &Frame,
) -> Result<(), EncodeError> {
    let mut wire = BytesMut::new();
    encoder.encode(frame, &mut wire)?;
    let mut frames = Vec::new();
    while let Some(f) = decoder
        .decode(&mut wire)
        .unwrap_or_else(|e| panic!("our own {} does not decode: {e}", frame.kind()))
    {
        frames.push(f);
    }
    assert!(
        wire.is_empty(),
        "{} bytes of our {} left",
        wire.len(),
        frame.kind()
    );
    assert_eq!(frames.as_slice(), std::slice::from_ref(frame));
    Ok(())
}
