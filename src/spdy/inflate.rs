//! Sans-IO inflater for SPDY/3 name/value header blocks: one zlib stream (RFC 1950) of
//! DEFLATE blocks (RFC 1951) per direction, preset with the SPDY dictionary.
//!
//! Why not flate2: a zlib inflate context keeps a 32 KiB window and about 10 KiB of state
//! for the whole life of a connection, while a SPDY connection's header traffic is usually a
//! few hundred bytes. This decoder reads the dictionary from the static constant, keeps only
//! the output it has produced (growing on demand, never past 32 KiB), and holds dynamic
//! Huffman tables only while it is inside the block that defines them.

use std::sync::OnceLock;

use crate::spdy::dictionary::{DICTIONARY, DICTIONARY_ADLER32};

/// Farthest a DEFLATE back-reference may reach, and so the most history worth keeping.
const WINDOW: usize = 32 * 1024;
/// First allocation of the history; small so an idle connection costs little.
const MIN_HISTORY_CAPACITY: usize = 64;
/// Longest Huffman code DEFLATE allows.
const MAX_CODE_BITS: usize = 15;
/// Literal/length symbols a dynamic block may define (286 and 287 exist only in the fixed code).
const MAX_LITERAL_CODES: usize = 286;
/// Distance symbols a dynamic block may define (30 and 31 exist only in the fixed code).
const MAX_DISTANCE_CODES: usize = 30;
/// Symbols of the fixed literal/length code.
const FIXED_LITERAL_CODES: usize = 288;
/// Symbols of the fixed distance code.
const FIXED_DISTANCE_CODES: usize = 32;
/// Symbols of the code that encodes code lengths.
const CODE_LENGTH_CODES: usize = 19;
const END_OF_BLOCK: u16 = 256;
/// Order in which a dynamic block header lists the code lengths of the code-length code.
const CODE_LENGTH_ORDER: [usize; CODE_LENGTH_CODES] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];
/// Base match length and extra bits of length symbols 257..=285.
const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// Base distance and extra bits of distance symbols 0..=29.
const DISTANCE_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DISTANCE_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Which Huffman code of a block an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeTable {
    /// The code a dynamic block header uses to send the other two codes' lengths.
    CodeLength,
    /// The literal/length code.
    LiteralLength,
    /// The distance code.
    Distance,
}

impl std::fmt::Display for CodeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::CodeLength => "code-length",
            Self::LiteralLength => "literal/length",
            Self::Distance => "distance",
        })
    }
}

/// Why a header-block stream could not be inflated.
///
/// Every variant is the sender's fault: the bytes are not a zlib stream of the shape SPDY/3
/// requires, or they inflate to more than the caller allows. None is recoverable, because
/// the one zlib stream spans the whole connection: after an error the [`HeaderInflater`] is
/// poisoned and returns the same error for every later call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The two-byte zlib header fails its check, or names a method other than deflate with a
    /// window of at most 32 KiB.
    #[error("bad zlib header {cmf:#04x} {flg:#04x}")]
    BadZlibHeader { cmf: u8, flg: u8 },
    /// The zlib header names a preset dictionary other than the SPDY/3 one.
    #[error("zlib stream wants dictionary {found:#010x}, not the SPDY/3 dictionary")]
    WrongDictionary { found: u32 },
    /// A block header has BTYPE 3, which DEFLATE reserves.
    #[error("reserved DEFLATE block type 3")]
    InvalidBlockType,
    /// A stored block's LEN is not the complement of its NLEN.
    #[error("stored block length {len} does not match its complement {nlen:#06x}")]
    StoredLengthMismatch { len: u16, nlen: u16 },
    /// A dynamic block header declares more literal/length or distance codes than exist.
    #[error("dynamic block declares {literal} literal/length and {distance} distance codes")]
    TooManyCodes { literal: usize, distance: usize },
    /// Code lengths describe more codes than the bit patterns can hold.
    #[error("{0} code lengths are over-subscribed")]
    OversubscribedCode(CodeTable),
    /// Code lengths leave bit patterns unused where DEFLATE requires a complete code.
    #[error("{0} code lengths are incomplete")]
    IncompleteCode(CodeTable),
    /// A "repeat previous length" code comes first, with nothing to repeat.
    #[error("code length repeat with no previous length")]
    RepeatWithoutPrevious,
    /// A code-length repeat runs past the number of lengths the header declared.
    #[error("code length repeat runs past the declared code lengths")]
    RepeatOverflow,
    /// A dynamic block gives the end-of-block symbol no code.
    #[error("dynamic block has no end-of-block code")]
    MissingEndOfBlock,
    /// The input's bits match no code of the current table.
    #[error("bits match no {0} code")]
    InvalidHuffmanCode(CodeTable),
    /// A decoded symbol DEFLATE does not allow (literal/length 286 or 287, distance 30 or 31).
    #[error("{table} symbol {symbol} is not allowed")]
    InvalidSymbol { table: CodeTable, symbol: u16 },
    /// A back-reference reaches before the start of the available history.
    #[error("back-reference distance {distance} exceeds the {available} bytes of history")]
    DistanceTooFar { distance: usize, available: usize },
    /// The call would append more than its `max_out` bytes.
    #[error("inflated output exceeds the limit of {limit} bytes")]
    OutputLimit { limit: usize },
    /// Input continues after the final block and its checksum.
    #[error("input after the end of the zlib stream")]
    StreamFinished,
    /// The Adler-32 after the final block does not match the inflated bytes.
    #[error("zlib checksum {expected:#010x} does not match inflated data {computed:#010x}")]
    ChecksumMismatch { expected: u32, computed: u32 },
}

/// Inflates the header blocks one side of a SPDY connection sends.
///
/// ```text
/// The zlib stream of one direction, spread over that direction's header blocks:
///
///  +-----+-----+--------------+=========================+ +------------+
///  | CMF | FLG | DICTID 4, BE | DEFLATE blocks ...      | | ADLER-32 4 |
///  +-----+-----+--------------+=========================+ +------------+
///   CMF 0x78: deflate, 32 KiB window.  FLG bit 0x20 (FDICT): DICTID follows and must be
///   0xe3c6a7c2, the SPDY/3 dictionary.  The checksum follows only a final block, which a
///   SPDY sender never writes: each frame ends with a sync flush, 00 00 ff ff.
///
///  DEFLATE block header, bits least significant first:  BFINAL:1  BTYPE:2
///   BTYPE 0 stored:  skip to a byte boundary, LEN:16 LE, NLEN:16 LE (= !LEN), LEN bytes
///   BTYPE 1 fixed Huffman codes, BTYPE 2 dynamic codes (HLIT:5 HDIST:5 HCLEN:4 ...)
/// ```
///
/// Input may be split anywhere; a call that ends mid-symbol keeps the few bits it could not
/// use yet and continues on the next call.
pub struct HeaderInflater {
    state: State,
    core: Core,
}

impl HeaderInflater {
    /// A decoder expecting the zlib header of a fresh stream.
    pub fn new() -> Self {
        Self {
            state: State::ZlibHeader,
            core: Core {
                bits: BitBuf::default(),
                history: History::default(),
                adler: Adler32::default(),
                final_block: false,
            },
        }
    }

    /// Decodes all of `input`, appending the bytes it yields to `out`. Fails if more than
    /// `max_out` bytes would be appended by this call.
    ///
    /// On error `out` is left as it was before the call and the inflater is poisoned: every
    /// later call returns the same error.
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max_out: usize,
    ) -> Result<(), InflateError> {
        if let State::Failed(err) = &self.state {
            return Err(err.clone());
        }
        let start = out.len();
        let mut sink = Sink {
            out,
            start,
            max_out,
            checksummed: start,
        };
        let mut input = input;
        match self.run(&mut input, &mut sink) {
            Ok(()) => {
                sink.checksum_into(&mut self.core.adler);
                Ok(())
            }
            Err(err) => {
                sink.out.truncate(start);
                self.state = State::Failed(err.clone());
                Err(err)
            }
        }
    }

    /// Heap bytes currently held (for memory tests and benches).
    pub fn heap_size(&self) -> usize {
        let block = match &self.state {
            State::DynamicHeader(_) => size_of::<DynamicHeader>(),
            State::Codes(Codes::Dynamic(_)) => size_of::<CodePair>(),
            _ => 0,
        };
        self.core.history.window.capacity() + block
    }

    /// Steps through the stream until the input runs out or the stream fails.
    fn run(&mut self, input: &mut &[u8], sink: &mut Sink<'_>) -> Result<(), InflateError> {
        loop {
            let core = &mut self.core;
            let next = match &mut self.state {
                State::ZlibHeader => core.zlib_header(input),
                State::DictionaryId => core.dictionary_id(input),
                State::BlockHeader => core.block_header(input),
                State::StoredLength => core.stored_length(input),
                State::Stored { remaining } => core.stored(remaining, input, sink),
                State::DynamicHeader(header) => header.advance(&mut core.bits, input),
                State::Codes(codes) => core.codes(codes.pair(), input, sink),
                State::Trailer => core.trailer(input, sink),
                State::Done => core.done(input),
                State::Failed(err) => Err(Fail::Error(err.clone())),
            };
            match next {
                Ok(state) => self.state = state,
                Err(Fail::NeedInput) => {
                    debug_assert!(input.is_empty(), "waiting with unread input");
                    return Ok(());
                }
                Err(Fail::Error(err)) => return Err(err),
            }
        }
    }
}

impl Default for HeaderInflater {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the decoder is in the stream. Each state's step either completes and names the next
/// state, or stops for input having kept its progress in place.
enum State {
    ZlibHeader,
    DictionaryId,
    BlockHeader,
    StoredLength,
    Stored { remaining: u16 },
    DynamicHeader(Box<DynamicHeader>),
    Codes(Codes),
    Trailer,
    Done,
    Failed(InflateError),
}

/// Why a step stopped: the input ran out at a point it can resume from, or the stream is bad.
enum Fail {
    NeedInput,
    Error(InflateError),
}

impl From<InflateError> for Fail {
    fn from(err: InflateError) -> Self {
        Self::Error(err)
    }
}

/// Everything but the block state: bit reader, history and checksum.
struct Core {
    bits: BitBuf,
    history: History,
    adler: Adler32,
    /// Whether the block being decoded has BFINAL set.
    final_block: bool,
}

impl Core {
    fn zlib_header(&mut self, input: &mut &[u8]) -> Result<State, Fail> {
        let header = self.bits.take(input, 16)?;
        let [cmf, flg, ..] = header.to_le_bytes();
        let check_ok = u16::from_be_bytes([cmf, flg]).is_multiple_of(31);
        let deflate = cmf & 0x0f == 8;
        let window_ok = cmf >> 4 <= 7;
        if !(check_ok && deflate && window_ok) {
            return Err(InflateError::BadZlibHeader { cmf, flg }.into());
        }
        let has_dictionary = flg & 0x20 != 0;
        Ok(if has_dictionary {
            State::DictionaryId
        } else {
            State::BlockHeader
        })
    }

    fn dictionary_id(&mut self, input: &mut &[u8]) -> Result<State, Fail> {
        // DICTID is big-endian; the bit reader assembles bytes little-endian.
        let found = self.bits.take(input, 32)?.swap_bytes();
        if found != DICTIONARY_ADLER32 {
            return Err(InflateError::WrongDictionary { found }.into());
        }
        self.history.dictionary = true;
        Ok(State::BlockHeader)
    }

    fn block_header(&mut self, input: &mut &[u8]) -> Result<State, Fail> {
        let header = self.bits.take(input, 3)?;
        self.final_block = header & 1 == 1;
        match header >> 1 {
            0 => {
                self.bits.align();
                Ok(State::StoredLength)
            }
            1 => Ok(State::Codes(Codes::Fixed)),
            2 => Ok(State::DynamicHeader(Box::new(DynamicHeader::new()))),
            _ => Err(InflateError::InvalidBlockType.into()),
        }
    }

    fn stored_length(&mut self, input: &mut &[u8]) -> Result<State, Fail> {
        let [len_lo, len_hi, nlen_lo, nlen_hi] = self.bits.take(input, 32)?.to_le_bytes();
        let len = u16::from_le_bytes([len_lo, len_hi]);
        let nlen = u16::from_le_bytes([nlen_lo, nlen_hi]);
        if len != !nlen {
            return Err(InflateError::StoredLengthMismatch { len, nlen }.into());
        }
        Ok(State::Stored { remaining: len })
    }

    fn stored(
        &mut self,
        remaining: &mut u16,
        input: &mut &[u8],
        sink: &mut Sink<'_>,
    ) -> Result<State, Fail> {
        while *remaining > 0 {
            // The bit buffer may still hold whole bytes read ahead with LEN/NLEN; they come
            // first, then the rest is copied straight from the input.
            let chunk: &[u8] = if let Some(byte) = self.bits.take_buffered_byte() {
                &[byte]
            } else if !input.is_empty() {
                let data: &[u8] = input;
                let (chunk, rest) = data.split_at(data.len().min(usize::from(*remaining)));
                *input = rest;
                chunk
            } else {
                return Err(Fail::NeedInput);
            };
            sink.write(chunk)?;
            self.history.push_slice(chunk);
            // The chunk is at most `remaining` bytes long, so this neither truncates nor wraps.
            *remaining -= chunk.len() as u16;
        }
        Ok(self.end_of_block())
    }

    fn codes(
        &mut self,
        codes: &CodePair,
        input: &mut &[u8],
        sink: &mut Sink<'_>,
    ) -> Result<State, Fail> {
        loop {
            self.bits.refill(input);
            let mut peek = self.bits.peek();
            let symbol = peek.symbol(codes)?;
            self.bits.commit(peek);
            match symbol {
                Symbol::Literal(byte) => {
                    sink.write(&[byte])?;
                    self.history.push_slice(&[byte]);
                }
                Symbol::Copy { length, distance } => self.copy(length, distance, sink)?,
                Symbol::EndOfBlock => return Ok(self.end_of_block()),
            }
        }
    }

    fn copy(&mut self, length: usize, distance: usize, sink: &mut Sink<'_>) -> Result<(), Fail> {
        let available = self.history.available();
        if distance > available {
            return Err(InflateError::DistanceTooFar {
                distance,
                available,
            }
            .into());
        }
        sink.claim(length)?;
        // Byte by byte, because a reference may overlap the bytes it produces (distance <
        // length repeats them); those come from `out`, the rest from the history as it was.
        let start = sink.out.len();
        for i in 0..length {
            let byte = if i < distance {
                self.history.byte_at(distance - i)
            } else {
                sink.out[start + i - distance]
            };
            sink.out.push(byte);
        }
        self.history.push_slice(&sink.out[start..]);
        Ok(())
    }

    fn end_of_block(&mut self) -> State {
        if self.final_block {
            self.bits.align();
            State::Trailer
        } else {
            State::BlockHeader
        }
    }

    fn trailer(&mut self, input: &mut &[u8], sink: &mut Sink<'_>) -> Result<State, Fail> {
        let expected = self.bits.take(input, 32)?.swap_bytes();
        sink.checksum_into(&mut self.adler);
        let computed = self.adler.value();
        if expected != computed {
            return Err(InflateError::ChecksumMismatch { expected, computed }.into());
        }
        Ok(State::Done)
    }

    fn done(&mut self, input: &mut &[u8]) -> Result<State, Fail> {
        if self.bits.count > 0 || !input.is_empty() {
            return Err(InflateError::StreamFinished.into());
        }
        Err(Fail::NeedInput)
    }
}

/// The Huffman codes of the block being decoded.
enum Codes {
    Fixed,
    /// Built from a dynamic block header; dropped when the block ends.
    Dynamic(Box<CodePair>),
}

impl Codes {
    fn pair(&self) -> &CodePair {
        match self {
            Self::Fixed => fixed_codes(),
            Self::Dynamic(pair) => pair,
        }
    }
}

/// A block's literal/length and distance codes.
struct CodePair {
    literal: Huffman<FIXED_LITERAL_CODES>,
    distance: Huffman<FIXED_DISTANCE_CODES>,
}

/// The codes of BTYPE 1 blocks (RFC 1951 §3.2.6), built on first use and shared.
fn fixed_codes() -> &'static CodePair {
    static FIXED: OnceLock<CodePair> = OnceLock::new();
    FIXED.get_or_init(|| {
        let mut literal = [0u8; FIXED_LITERAL_CODES];
        literal[..144].fill(8);
        literal[144..256].fill(9);
        literal[256..280].fill(7);
        literal[280..].fill(8);
        let distance = [5u8; FIXED_DISTANCE_CODES];
        // Both are complete codes; symbols 286, 287, 30 and 31 are rejected after decoding.
        CodePair {
            literal: Huffman::from_lengths(&literal).0,
            distance: Huffman::from_lengths(&distance).0,
        }
    })
}

/// A decoded literal/length symbol, with its distance when it is a back-reference.
enum Symbol {
    Literal(u8),
    Copy { length: usize, distance: usize },
    EndOfBlock,
}

/// How a set of code lengths fills the space of bit patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    Complete,
    Incomplete,
    Oversubscribed,
}

/// A canonical Huffman code stored as the number of codes of each length and the symbols
/// in code order, which is enough to decode bit by bit without a lookup table.
struct Huffman<const N: usize> {
    counts: [u16; MAX_CODE_BITS + 1],
    symbols: [u16; N],
}

impl<const N: usize> Huffman<N> {
    const EMPTY: Self = Self {
        counts: [0; MAX_CODE_BITS + 1],
        symbols: [0; N],
    };

    /// Builds the code for `lengths` (symbol `i` has length `lengths[i]`, 0 = unused, each at
    /// most 15; at most `N` symbols) and reports how well the lengths fill the code space.
    fn from_lengths(lengths: &[u8]) -> (Self, Fill) {
        let mut code = Self::EMPTY;
        for &len in lengths {
            code.counts[usize::from(len)] += 1;
        }
        code.counts[0] = 0;
        let mut unused: i32 = 1;
        for &count in &code.counts[1..] {
            unused = (unused << 1) - i32::from(count);
            if unused < 0 {
                return (code, Fill::Oversubscribed);
            }
        }
        let mut next = [0u16; MAX_CODE_BITS + 1];
        for len in 1..MAX_CODE_BITS {
            next[len + 1] = next[len] + code.counts[len];
        }
        for (symbol, &len) in (0u16..).zip(lengths) {
            if len != 0 {
                let slot = &mut next[usize::from(len)];
                code.symbols[usize::from(*slot)] = symbol;
                *slot += 1;
            }
        }
        let fill = if unused == 0 {
            Fill::Complete
        } else {
            Fill::Incomplete
        };
        (code, fill)
    }

    /// Builds a literal/length or distance code. DEFLATE lets these be incomplete only when
    /// they hold a single one-bit code (or, for distances, none at all), as zlib does.
    fn for_block(lengths: &[u8], table: CodeTable) -> Result<Self, InflateError> {
        let (code, fill) = Self::from_lengths(lengths);
        match fill {
            Fill::Complete => Ok(code),
            Fill::Incomplete if lengths.iter().all(|&len| len <= 1) => Ok(code),
            Fill::Incomplete => Err(InflateError::IncompleteCode(table)),
            Fill::Oversubscribed => Err(InflateError::OversubscribedCode(table)),
        }
    }
}

/// Resumable progress through a dynamic block header (RFC 1951 §3.2.7). Boxed, and dropped
/// once the block's codes are built.
struct DynamicHeader {
    phase: HeaderPhase,
    literal_codes: usize,
    distance_codes: usize,
    code_length_codes: usize,
    code_length_lengths: [u8; CODE_LENGTH_CODES],
    code_length_code: Huffman<CODE_LENGTH_CODES>,
    /// Literal/length code lengths followed directly by distance code lengths: a repeat may
    /// run from one into the other.
    lengths: [u8; MAX_LITERAL_CODES + MAX_DISTANCE_CODES],
    /// Entries of `code_length_lengths` (in the code-length phase) or `lengths` read so far.
    read: usize,
}

#[derive(Clone, Copy)]
enum HeaderPhase {
    Counts,
    CodeLengthCode,
    Lengths,
}

impl DynamicHeader {
    fn new() -> Self {
        Self {
            phase: HeaderPhase::Counts,
            literal_codes: 0,
            distance_codes: 0,
            code_length_codes: 0,
            code_length_lengths: [0; CODE_LENGTH_CODES],
            code_length_code: Huffman::EMPTY,
            lengths: [0; MAX_LITERAL_CODES + MAX_DISTANCE_CODES],
            read: 0,
        }
    }

    fn advance(&mut self, bits: &mut BitBuf, input: &mut &[u8]) -> Result<State, Fail> {
        loop {
            match self.phase {
                HeaderPhase::Counts => self.read_counts(bits, input)?,
                HeaderPhase::CodeLengthCode => self.read_code_length_code(bits, input)?,
                HeaderPhase::Lengths => {
                    self.read_lengths(bits, input)?;
                    return Ok(State::Codes(Codes::Dynamic(Box::new(self.build_codes()?))));
                }
            }
        }
    }

    fn read_counts(&mut self, bits: &mut BitBuf, input: &mut &[u8]) -> Result<(), Fail> {
        let counts = bits.take(input, 14)?;
        self.literal_codes = 257 + (counts & 0x1f) as usize;
        self.distance_codes = 1 + ((counts >> 5) & 0x1f) as usize;
        self.code_length_codes = 4 + (counts >> 10) as usize;
        if self.literal_codes > MAX_LITERAL_CODES || self.distance_codes > MAX_DISTANCE_CODES {
            return Err(InflateError::TooManyCodes {
                literal: self.literal_codes,
                distance: self.distance_codes,
            }
            .into());
        }
        self.phase = HeaderPhase::CodeLengthCode;
        Ok(())
    }

    fn read_code_length_code(&mut self, bits: &mut BitBuf, input: &mut &[u8]) -> Result<(), Fail> {
        while self.read < self.code_length_codes {
            let len = bits.take(input, 3)?;
            self.code_length_lengths[CODE_LENGTH_ORDER[self.read]] = len as u8;
            self.read += 1;
        }
        let (code, fill) = Huffman::from_lengths(&self.code_length_lengths);
        match fill {
            Fill::Complete => self.code_length_code = code,
            Fill::Incomplete => {
                return Err(InflateError::IncompleteCode(CodeTable::CodeLength).into());
            }
            Fill::Oversubscribed => {
                return Err(InflateError::OversubscribedCode(CodeTable::CodeLength).into());
            }
        }
        self.read = 0;
        self.phase = HeaderPhase::Lengths;
        Ok(())
    }

    fn read_lengths(&mut self, bits: &mut BitBuf, input: &mut &[u8]) -> Result<(), Fail> {
        let total = self.literal_codes + self.distance_codes;
        while self.read < total {
            bits.refill(input);
            let mut peek = bits.peek();
            let symbol = peek.decode(&self.code_length_code, CodeTable::CodeLength)?;
            let (len, repeat) = match symbol {
                0..=15 => (symbol as u8, 1),
                16 => {
                    if self.read == 0 {
                        return Err(InflateError::RepeatWithoutPrevious.into());
                    }
                    (self.lengths[self.read - 1], 3 + peek.bits(2)? as usize)
                }
                17 => (0, 3 + peek.bits(3)? as usize),
                _ => (0, 11 + peek.bits(7)? as usize),
            };
            if self.read + repeat > total {
                return Err(InflateError::RepeatOverflow.into());
            }
            bits.commit(peek);
            self.lengths[self.read..self.read + repeat].fill(len);
            self.read += repeat;
        }
        Ok(())
    }

    fn build_codes(&self) -> Result<CodePair, InflateError> {
        let (literal, distance) =
            self.lengths[..self.literal_codes + self.distance_codes].split_at(self.literal_codes);
        if literal[usize::from(END_OF_BLOCK)] == 0 {
            return Err(InflateError::MissingEndOfBlock);
        }
        Ok(CodePair {
            literal: Huffman::for_block(literal, CodeTable::LiteralLength)?,
            distance: Huffman::for_block(distance, CodeTable::Distance)?,
        })
    }
}

/// Bits read from the input but not yet used, least significant first. Holds at most 64, so
/// this (and the block state) is all a call leaves behind when the input stops mid-symbol.
#[derive(Default)]
struct BitBuf {
    buf: u64,
    count: u32,
}

impl BitBuf {
    /// Moves whole input bytes into the buffer while they fit. 57 or more bits then cover any
    /// single step: the longest, a length/distance pair, needs 15+5+15+13 = 48.
    fn refill(&mut self, input: &mut &[u8]) {
        while self.count <= 56 {
            let data: &[u8] = input;
            let Some((&byte, rest)) = data.split_first() else {
                break;
            };
            self.buf |= u64::from(byte) << self.count;
            self.count += 8;
            *input = rest;
        }
    }

    fn peek(&self) -> Peek {
        Peek {
            buf: self.buf,
            available: self.count,
            used: 0,
        }
    }

    /// Consumes the bits a successful peek used.
    fn commit(&mut self, peek: Peek) {
        // `used` is at most 48, so the shift stays below 64.
        self.buf >>= peek.used;
        self.count -= peek.used;
    }

    /// Takes `n` (at most 32) bits, or none if the input cannot supply them yet.
    fn take(&mut self, input: &mut &[u8], n: u32) -> Result<u32, Fail> {
        self.refill(input);
        let mut peek = self.peek();
        let value = peek.bits(n)?;
        self.commit(peek);
        Ok(value)
    }

    /// Drops the bits up to the next byte boundary.
    fn align(&mut self) {
        let partial = self.count % 8;
        self.buf >>= partial;
        self.count -= partial;
    }

    /// A whole byte already in the buffer, when byte-aligned (stored blocks).
    fn take_buffered_byte(&mut self) -> Option<u8> {
        if self.count < 8 {
            return None;
        }
        let byte = self.buf as u8;
        self.buf >>= 8;
        self.count -= 8;
        Some(byte)
    }
}

/// A tentative read of a [`BitBuf`]: a multi-part item (a symbol with its extra bits, say) is
/// decoded here and committed only when complete, so running out of input mid-item leaves
/// the buffer untouched for the next call.
struct Peek {
    buf: u64,
    available: u32,
    used: u32,
}

impl Peek {
    fn bits(&mut self, n: u32) -> Result<u32, Fail> {
        if self.used + n > self.available {
            return Err(Fail::NeedInput);
        }
        let value = (self.buf >> self.used) & ((1u64 << n) - 1);
        self.used += n;
        Ok(value as u32)
    }

    /// Decodes one symbol of `code`. Huffman codes are sent most significant bit first, so
    /// the code is assembled one bit at a time and compared with the first code of each
    /// length.
    fn decode<const N: usize>(&mut self, code: &Huffman<N>, table: CodeTable) -> Result<u16, Fail> {
        let mut value = 0u32;
        let mut first = 0u32;
        let mut index = 0u32;
        for &count in &code.counts[1..] {
            value |= self.bits(1)?;
            let count = u32::from(count);
            // Canonical codes keep `value >= first`, so the subtraction cannot wrap.
            if value < first + count {
                return Ok(code.symbols[(index + value - first) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            value <<= 1;
        }
        Err(InflateError::InvalidHuffmanCode(table).into())
    }

    /// Decodes a literal/length symbol and, for a length, its extra bits and distance.
    fn symbol(&mut self, codes: &CodePair) -> Result<Symbol, Fail> {
        let symbol = self.decode(&codes.literal, CodeTable::LiteralLength)?;
        if symbol < END_OF_BLOCK {
            return Ok(Symbol::Literal(symbol as u8));
        }
        if symbol == END_OF_BLOCK {
            return Ok(Symbol::EndOfBlock);
        }
        let index = usize::from(symbol - END_OF_BLOCK - 1);
        let (Some(&base), Some(&extra)) = (LENGTH_BASE.get(index), LENGTH_EXTRA.get(index)) else {
            return Err(invalid_symbol(CodeTable::LiteralLength, symbol));
        };
        let length = usize::from(base) + self.bits(u32::from(extra))? as usize;
        let symbol = self.decode(&codes.distance, CodeTable::Distance)?;
        let index = usize::from(symbol);
        let (Some(&base), Some(&extra)) = (DISTANCE_BASE.get(index), DISTANCE_EXTRA.get(index))
        else {
            return Err(invalid_symbol(CodeTable::Distance, symbol));
        };
        let distance = usize::from(base) + self.bits(u32::from(extra))? as usize;
        Ok(Symbol::Copy { length, distance })
    }
}

fn invalid_symbol(table: CodeTable, symbol: u16) -> Fail {
    InflateError::InvalidSymbol { table, symbol }.into()
}

/// The bytes a back-reference may copy: the SPDY dictionary (when the stream names it),
/// directly followed by the output produced so far, of which the last 32 KiB are kept.
#[derive(Default)]
struct History {
    /// Produced output. Grows on demand up to [`WINDOW`] bytes, then is overwritten as a ring.
    window: Vec<u8>,
    /// Where the next byte goes: `window.len()` while growing, the oldest byte once full.
    head: usize,
    /// Whether the stream was compressed with the SPDY dictionary, so it precedes the output.
    dictionary: bool,
}

impl History {
    /// How far back a reference may reach.
    fn available(&self) -> usize {
        let dictionary = if self.dictionary { DICTIONARY.len() } else { 0 };
        (self.window.len() + dictionary).min(WINDOW)
    }

    /// The byte `distance` (1..=[`Self::available`]) back from the next one to be produced.
    fn byte_at(&self, distance: usize) -> u8 {
        let len = self.window.len();
        if distance <= len {
            let index = if distance <= self.head {
                self.head - distance
            } else {
                self.head + len - distance
            };
            self.window[index]
        } else {
            DICTIONARY[DICTIONARY.len() - (distance - len)]
        }
    }

    fn push_slice(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = if self.window.len() < WINDOW {
                let n = bytes.len().min(WINDOW - self.window.len());
                self.reserve(n);
                self.window.extend_from_slice(&bytes[..n]);
                n
            } else {
                let n = bytes.len().min(WINDOW - self.head);
                self.window[self.head..self.head + n].copy_from_slice(&bytes[..n]);
                n
            };
            self.head = (self.head + n) % WINDOW;
            bytes = &bytes[n..];
        }
    }

    /// Doubles the capacity as needed, but never beyond the window, so a connection's history
    /// costs about what it has inflated, and 32 KiB at most.
    fn reserve(&mut self, additional: usize) {
        let needed = self.window.len() + additional;
        if needed > self.window.capacity() {
            let target = needed
                .max(self.window.capacity() * 2)
                .clamp(MIN_HISTORY_CAPACITY, WINDOW);
            self.window.reserve_exact(target - self.window.len());
        }
    }
}

/// The caller's output for one call, with the call's output limit.
struct Sink<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    max_out: usize,
    /// How much of `out` the running checksum already covers.
    checksummed: usize,
}

impl Sink<'_> {
    /// Checks that `n` more bytes fit under the limit before they are produced.
    fn claim(&self, n: usize) -> Result<(), InflateError> {
        let produced = self.out.len() - self.start;
        if n > self.max_out - produced {
            return Err(InflateError::OutputLimit {
                limit: self.max_out,
            });
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), InflateError> {
        self.claim(bytes.len())?;
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn checksum_into(&mut self, adler: &mut Adler32) {
        adler.update(&self.out[self.checksummed..]);
        self.checksummed = self.out.len();
    }
}

/// Running Adler-32 (RFC 1950 §8) of the inflated bytes, checked against the trailer.
struct Adler32 {
    a: u32,
    b: u32,
}

impl Default for Adler32 {
    fn default() -> Self {
        Self { a: 1, b: 0 }
    }
}

impl Adler32 {
    const MODULUS: u32 = 65521;
    /// Most bytes that can be summed before `b` could overflow a u32.
    const CHUNK: usize = 5552;

    fn update(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(Self::CHUNK) {
            for &byte in chunk {
                self.a += u32::from(byte);
                self.b += self.a;
            }
            self.a %= Self::MODULUS;
            self.b %= Self::MODULUS;
        }
    }

    fn value(&self) -> u32 {
        (self.b << 16) | self.a
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use flate2::{Compress, Compression, FlushCompress, Status};
    use proptest::prelude::*;

    use super::*;

    /// Generous per-call limit for tests that are not about the limit.
    const LIMIT: usize = 1 << 22;
    /// zlib header naming the SPDY dictionary, as every SPDY/3 sender writes it.
    const DICT_HEADER: [u8; 6] = [0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2];
    /// zlib header without a preset dictionary.
    const PLAIN_HEADER: [u8; 2] = [0x78, 0x9c];

    // protocol.md §1.5, worked example.
    const CLIENT_FIRST: [u8; 30] = [
        0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x46, 0x70, 0x3a, 0x2b, 0x29, 0x4a,
        0x4d, 0xcc, 0x85, 0x16, 0x25, 0xac, 0xa9, 0xa0, 0x80, 0x06, 0x00, 0x00, 0x00, 0xff, 0xff,
    ];
    const CLIENT_SECOND: [u8; 13] = [
        0xc2, 0x2e, 0x55, 0x5c, 0x02, 0xcc, 0x2e, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
    ];
    const SERVER_EMPTY_REPLY: [u8; 16] = [
        0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x06, 0x00, 0x00, 0x00, 0x00, 0xff,
        0xff,
    ];

    /// A SPDY/3 name/value block (protocol.md §1.5, uncompressed layout).
    fn header_block<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
        let mut block = (pairs.len() as u32).to_be_bytes().to_vec();
        for (name, value) in pairs {
            for part in [name.as_ref(), value.as_ref()] {
                block.extend_from_slice(&(part.len() as u32).to_be_bytes());
                block.extend_from_slice(part);
            }
        }
        block
    }

    fn compressor(level: u32) -> Compress {
        let mut compress = Compress::new(Compression::new(level), true);
        compress
            .set_dictionary(DICTIONARY)
            .expect("zlib-rs takes a preset dictionary");
        compress
    }

    /// Compresses `plain` and flushes: `Sync` as a SPDY sender does after each block, or
    /// `Finish` to end the stream.
    fn deflate(compress: &mut Compress, plain: &[u8], flush: FlushCompress) -> Vec<u8> {
        let mut out = Vec::new();
        let mut consumed = 0;
        loop {
            out.reserve(plain.len() + 256);
            let before = compress.total_in();
            let status = compress
                .compress_vec(&plain[consumed..], &mut out, flush)
                .expect("compression succeeds");
            consumed += (compress.total_in() - before) as usize;
            let flushed = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                _ => out.len() < out.capacity(),
            };
            if consumed == plain.len() && flushed {
                return out;
            }
        }
    }

    fn compress_blocks(level: u32, blocks: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut compress = compressor(level);
        blocks
            .iter()
            .map(|block| deflate(&mut compress, block, FlushCompress::Sync))
            .collect()
    }

    fn inflate_all(pieces: &[&[u8]]) -> Result<Vec<u8>, InflateError> {
        let mut inflater = HeaderInflater::new();
        let mut out = Vec::new();
        for piece in pieces {
            inflater.inflate(piece, &mut out, LIMIT)?;
        }
        Ok(out)
    }

    /// Pseudo-random text from a small vocabulary: compressible, with matches near and far.
    fn text(len: usize, seed: u64) -> Vec<u8> {
        const WORDS: [&str; 12] = [
            "stdin",
            "stdout",
            "stderr",
            "error",
            "resize",
            "streamtype",
            "content-type",
            "x-",
            "port",
            "requestid",
            "0",
            "application/json",
        ];
        let mut state = seed;
        let mut out = Vec::with_capacity(len + 32);
        while out.len() < len {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let pick = (state >> 33) as usize;
            if pick.is_multiple_of(7) {
                out.push((state >> 20) as u8);
            } else {
                out.extend_from_slice(WORDS[pick % WORDS.len()].as_bytes());
            }
        }
        out.truncate(len);
        out
    }

    /// Writes DEFLATE bit fields by hand, for streams a compressor would not produce.
    #[derive(Default)]
    struct BitWriter {
        bytes: Vec<u8>,
        acc: u64,
        count: u32,
    }

    impl BitWriter {
        fn after(header: &[u8]) -> Self {
            Self {
                bytes: header.to_vec(),
                ..Self::default()
            }
        }

        /// A field, least significant bit first.
        fn bits(&mut self, value: u32, n: u32) -> &mut Self {
            self.acc |= u64::from(value) << self.count;
            self.count += n;
            while self.count >= 8 {
                self.bytes.push(self.acc as u8);
                self.acc >>= 8;
                self.count -= 8;
            }
            self
        }

        /// A Huffman code, most significant bit first.
        fn code(&mut self, code: u32, len: u32) -> &mut Self {
            self.bits(code.reverse_bits() >> (32 - len), len)
        }

        /// A literal/length symbol of the fixed code (RFC 1951 §3.2.6).
        fn fixed(&mut self, symbol: u32) -> &mut Self {
            match symbol {
                0..=143 => self.code(0x30 + symbol, 8),
                144..=255 => self.code(0x190 + symbol - 144, 9),
                256..=279 => self.code(symbol - 256, 7),
                _ => self.code(0xc0 + symbol - 280, 8),
            }
        }

        /// An empty non-final stored block: what a zlib sync flush appends.
        fn sync_flush(&mut self) -> Vec<u8> {
            self.bits(0, 3);
            if self.count > 0 {
                self.bits(0, 8 - self.count);
            }
            self.bytes.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
            std::mem::take(&mut self.bytes)
        }
    }

    /// Start of a fixed-code block that is not final.
    fn fixed_block(header: &[u8]) -> BitWriter {
        let mut writer = BitWriter::after(header);
        writer.bits(0, 1).bits(1, 2);
        writer
    }

    /// Start of a dynamic block declaring 257 literal/length and 1 distance code lengths,
    /// sent with a code-length code where 0, 16, 17 and 18 are two bits each:
    /// 0 = `00`, 16 = `01`, 17 = `10`, 18 = `11`.
    fn dynamic_block_lengths() -> BitWriter {
        let mut writer = BitWriter::after(&DICT_HEADER);
        writer
            .bits(1, 1)
            .bits(2, 2)
            .bits(0, 5)
            .bits(0, 5)
            .bits(0, 4);
        for _ in 0..4 {
            writer.bits(2, 3);
        }
        writer
    }

    fn inflate_err(stream: &[u8]) -> InflateError {
        inflate_all(&[stream]).expect_err("stream must be rejected")
    }

    #[test]
    fn worked_example_client_blocks_decode_in_order() {
        let mut inflater = HeaderInflater::new();
        let mut out = Vec::new();
        inflater.inflate(&CLIENT_FIRST, &mut out, 64).unwrap();
        assert_eq!(out, header_block(&[("streamtype", "error")]));
        out.clear();
        inflater.inflate(&CLIENT_SECOND, &mut out, 64).unwrap();
        assert_eq!(out, header_block(&[("streamtype", "stdin")]));
    }

    #[test]
    fn worked_example_empty_reply_decodes() {
        let mut out = Vec::new();
        HeaderInflater::new()
            .inflate(&SERVER_EMPTY_REPLY, &mut out, 64)
            .unwrap();
        assert_eq!(out, [0, 0, 0, 0]);
    }

    /// One stream with header blocks, long text and random bytes, per compression level.
    fn mixed_stream(level: u32) -> (Vec<u8>, Vec<u8>) {
        let blocks = vec![
            header_block(&[("streamtype", "error")]),
            header_block(&[("streamtype", "stdin"), ("content-type", "text/plain")]),
            text(600, 7),
            (0..=255u8).rev().collect(),
            header_block::<&str, &str>(&[]),
        ];
        let compressed = compress_blocks(level, &blocks).concat();
        (compressed, blocks.concat())
    }

    #[test]
    fn splitting_at_every_position_gives_identical_output() {
        for level in [0, 1, 6, 9] {
            let (compressed, plain) = mixed_stream(level);
            for at in 0..=compressed.len() {
                let (head, tail) = compressed.split_at(at);
                let out = inflate_all(&[head, tail]).unwrap();
                assert!(out == plain, "level {level}, split at {at}");
            }
        }
    }

    #[test]
    fn byte_at_a_time_input_gives_identical_output() {
        for level in [0, 9] {
            let (compressed, plain) = mixed_stream(level);
            let bytes: Vec<&[u8]> = compressed.chunks(1).collect();
            assert_eq!(inflate_all(&bytes).unwrap(), plain, "level {level}");
        }
    }

    #[test]
    fn stored_block_is_copied() {
        let mut writer = BitWriter::after(&PLAIN_HEADER);
        writer.bits(0, 3).bits(0, 5);
        writer.bytes.extend_from_slice(&[5, 0, !5, 0xff]);
        writer.bytes.extend_from_slice(b"hello");
        let stream = writer.sync_flush();
        assert_eq!(inflate_all(&[&stream]).unwrap(), b"hello");
    }

    #[test]
    fn stored_block_length_mismatch_is_rejected() {
        let mut stream = PLAIN_HEADER.to_vec();
        stream.extend_from_slice(&[0x00, 5, 0, 0xfb, 0xfe]);
        assert_eq!(
            inflate_err(&stream),
            InflateError::StoredLengthMismatch {
                len: 5,
                nlen: 0xfefb
            }
        );
    }

    #[test]
    fn level_zero_output_is_stored_blocks() {
        let plain = text(3000, 1);
        let compressed = compress_blocks(0, std::slice::from_ref(&plain));
        assert_eq!(compressed[0][6] & 0b110, 0, "first block is stored");
        assert_eq!(inflate_all(&[&compressed[0]]).unwrap(), plain);
    }

    #[test]
    fn fixed_block_copies_from_dictionary() {
        // "options" starts at dictionary offset 4, 1419 bytes before its end.
        assert_eq!(&DICTIONARY[4..11], b"options");
        let mut writer = fixed_block(&DICT_HEADER);
        writer
            .fixed(261)
            .code(20, 5)
            .bits(1419 - 1025, 9)
            .fixed(256);
        let stream = writer.sync_flush();
        assert_eq!(inflate_all(&[&stream]).unwrap(), b"options");
    }

    #[test]
    fn reference_spans_dictionary_end_and_output() {
        // Length 4 at distance 3 after one literal: the dictionary's last two bytes, the
        // literal, then the first byte this copy produced.
        let mut writer = fixed_block(&DICT_HEADER);
        writer
            .fixed(u32::from(b'X'))
            .fixed(258)
            .code(2, 5)
            .fixed(256);
        let stream = writer.sync_flush();
        let [.., y, z] = *DICTIONARY;
        assert_eq!(inflate_all(&[&stream]).unwrap(), [b'X', y, z, b'X', y]);
    }

    #[test]
    fn distance_past_dictionary_start_is_rejected() {
        let mut writer = fixed_block(&DICT_HEADER);
        writer
            .fixed(257)
            .code(20, 5)
            .bits(1424 - 1025, 9)
            .fixed(256);
        assert_eq!(
            inflate_err(&writer.sync_flush()),
            InflateError::DistanceTooFar {
                distance: 1424,
                available: 1423
            }
        );
    }

    #[test]
    fn distance_before_output_without_dictionary_is_rejected() {
        let mut writer = fixed_block(&PLAIN_HEADER);
        writer
            .fixed(u32::from(b'a'))
            .fixed(257)
            .code(1, 5)
            .fixed(256);
        assert_eq!(
            inflate_err(&writer.sync_flush()),
            InflateError::DistanceTooFar {
                distance: 2,
                available: 1
            }
        );
    }

    #[test]
    fn stream_without_dictionary_decodes() {
        let plain = text(2000, 3);
        let mut compress = Compress::new(Compression::new(9), true);
        let compressed = deflate(&mut compress, &plain, FlushCompress::Sync);
        assert_eq!(compressed[1] & 0x20, 0, "no FDICT");
        assert_eq!(inflate_all(&[&compressed]).unwrap(), plain);
    }

    #[test]
    fn dynamic_block_decodes() {
        let trace = text(2000, 9);
        let plain = header_block::<&[u8], &[u8]>(&[
            (b"streamtype", b"stdout"),
            (b"content-type", b"application/json; charset=utf-8"),
            (b"x-request-id", b"d4c5a1f0-5e0b-4d2c-9a57-8f3b0e6c2d11"),
            (b"x-trace", &trace),
        ]);
        let compressed = compress_blocks(9, std::slice::from_ref(&plain));
        assert_eq!((compressed[0][6] >> 1) & 0b11, 2, "first block is dynamic");
        assert_eq!(inflate_all(&[&compressed[0]]).unwrap(), plain);
    }

    #[test]
    fn too_many_literal_codes_are_rejected() {
        let mut writer = BitWriter::after(&DICT_HEADER);
        writer
            .bits(1, 1)
            .bits(2, 2)
            .bits(30, 5)
            .bits(0, 5)
            .bits(0, 4);
        assert_eq!(
            inflate_err(&writer.sync_flush()),
            InflateError::TooManyCodes {
                literal: 287,
                distance: 1
            }
        );
    }

    #[test]
    fn oversubscribed_code_length_code_is_rejected() {
        let mut writer = BitWriter::after(&DICT_HEADER);
        writer
            .bits(1, 1)
            .bits(2, 2)
            .bits(0, 5)
            .bits(0, 5)
            .bits(15, 4);
        for _ in 0..CODE_LENGTH_CODES {
            writer.bits(1, 3);
        }
        assert_eq!(
            inflate_err(&writer.sync_flush()),
            InflateError::OversubscribedCode(CodeTable::CodeLength)
        );
    }

    #[test]
    fn repeat_with_nothing_before_is_rejected() {
        let mut writer = dynamic_block_lengths();
        writer.code(0b01, 2).bits(0, 2);
        assert_eq!(
            inflate_err(&writer.sync_flush()),
            InflateError::RepeatWithoutPrevious
        );
    }

    #[test]
    fn repeat_past_declared_lengths_is_rejected() {
        let mut writer = dynamic_block_lengths();
        writer.code(0b11, 2).bits(127, 7).code(0b11, 2).bits(127, 7);
        assert_eq!(
            inflate_err(&writer.sync_flush()),
            InflateError::RepeatOverflow
        );
    }

    #[test]
    fn block_without_end_of_block_code_is_rejected() {
        let mut writer = dynamic_block_lengths();
        writer.code(0b11, 2).bits(127, 7).code(0b11, 2).bits(109, 7);
        assert_eq!(
            inflate_err(&writer.sync_flush()),
            InflateError::MissingEndOfBlock
        );
    }

    #[test]
    fn reserved_block_type_is_rejected() {
        let mut writer = BitWriter::after(&DICT_HEADER);
        writer.bits(0, 1).bits(3, 2);
        assert_eq!(
            inflate_err(&writer.sync_flush()),
            InflateError::InvalidBlockType
        );
    }

    #[test]
    fn fixed_length_symbol_287_is_rejected() {
        let mut writer = fixed_block(&DICT_HEADER);
        writer.fixed(287);
        assert_eq!(
            inflate_err(&writer.sync_flush()),
            InflateError::InvalidSymbol {
                table: CodeTable::LiteralLength,
                symbol: 287
            }
        );
    }

    #[test]
    fn zlib_bomb_fails_with_output_limit_quickly() {
        let bomb = compress_blocks(9, &[vec![0; 16 << 20]]).concat();
        assert!(bomb.len() < 32 * 1024, "bomb is {} bytes", bomb.len());
        let mut inflater = HeaderInflater::new();
        let mut out = b"earlier".to_vec();
        let started = Instant::now();
        let err = inflater.inflate(&bomb, &mut out, 64 * 1024).unwrap_err();
        assert_eq!(err, InflateError::OutputLimit { limit: 64 * 1024 });
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(out, b"earlier", "a failed call appends nothing");
    }

    #[test]
    fn output_limit_is_per_call() {
        let blocks = [text(100, 1), text(100, 2)];
        let compressed = compress_blocks(6, &blocks);
        let mut inflater = HeaderInflater::new();
        let mut out = Vec::new();
        inflater.inflate(&compressed[0], &mut out, 100).unwrap();
        inflater.inflate(&compressed[1], &mut out, 100).unwrap();
        assert_eq!(out, blocks.concat());
        let mut inflater = HeaderInflater::new();
        assert_eq!(
            inflater.inflate(&compressed[0], &mut Vec::new(), 99),
            Err(InflateError::OutputLimit { limit: 99 })
        );
    }

    #[test]
    fn bad_zlib_headers_are_rejected() {
        // Failed check bits, method 7 (with valid check bits), window 64 KiB (likewise).
        for (cmf, flg) in [(0x78, 0xfa), (0x77, 0x09), (0x88, 0x1c)] {
            assert_eq!(
                u16::from_be_bytes([cmf, flg]).is_multiple_of(31),
                flg != 0xfa
            );
            assert_eq!(
                inflate_err(&[cmf, flg, 0, 0, 0, 0]),
                InflateError::BadZlibHeader { cmf, flg }
            );
        }
    }

    #[test]
    fn wrong_dictionary_id_is_rejected() {
        assert_eq!(
            inflate_err(&[0x78, 0xf9, 0x12, 0x34, 0x56, 0x78]),
            InflateError::WrongDictionary { found: 0x1234_5678 }
        );
    }

    #[test]
    fn errors_poison_the_inflater() {
        let mut inflater = HeaderInflater::new();
        let mut out = Vec::new();
        let err = inflater
            .inflate(&[0x78, 0x00], &mut out, LIMIT)
            .unwrap_err();
        assert_eq!(
            inflater.inflate(&CLIENT_FIRST, &mut out, LIMIT),
            Err(err.clone())
        );
        assert_eq!(inflater.inflate(&[], &mut out, LIMIT), Err(err));
        assert!(out.is_empty());
    }

    #[test]
    fn input_after_finished_stream_is_rejected() {
        let plain = text(500, 4);
        let mut compress = compressor(9);
        let stream = deflate(&mut compress, &plain, FlushCompress::Finish);
        assert_eq!(inflate_all(&[&stream]).unwrap(), plain);
        assert_eq!(inflate_all(&[&stream, &[]]).unwrap(), plain);
        let err = InflateError::StreamFinished;
        assert_eq!(inflate_all(&[&stream, &[0]]), Err(err.clone()));
        assert_eq!(inflate_all(&[&[&stream[..], &[0]].concat()]), Err(err));
    }

    #[test]
    fn corrupt_checksum_is_rejected() {
        let mut compress = compressor(9);
        let mut stream = deflate(&mut compress, &text(500, 4), FlushCompress::Finish);
        *stream.last_mut().unwrap() ^= 1;
        assert!(matches!(
            inflate_err(&stream),
            InflateError::ChecksumMismatch { .. }
        ));
    }

    #[test]
    fn heap_size_stays_small_for_small_blocks() {
        let mut inflater = HeaderInflater::new();
        assert_eq!(inflater.heap_size(), 0);
        let mut out = Vec::new();
        inflater.inflate(&CLIENT_FIRST, &mut out, LIMIT).unwrap();
        inflater.inflate(&CLIENT_SECOND, &mut out, LIMIT).unwrap();
        assert!(inflater.heap_size() < 2048, "{}", inflater.heap_size());
        let more: Vec<Vec<u8>> = (0..4)
            .map(|i| header_block(&[("streamtype", ["stdout", "stderr", "resize", "data"][i])]))
            .collect();
        let mut compress = compressor(9);
        let mut inflater = HeaderInflater::new();
        for block in &more {
            let compressed = deflate(&mut compress, block, FlushCompress::Sync);
            inflater.inflate(&compressed, &mut out, LIMIT).unwrap();
        }
        assert!(inflater.heap_size() < 2048, "{}", inflater.heap_size());
        assert!(inflater.heap_size() <= 256, "{}", inflater.heap_size());
    }

    #[test]
    fn dynamic_tables_live_only_inside_their_block() {
        let plain = text(4000, 5);
        let compressed = compress_blocks(9, std::slice::from_ref(&plain)).concat();
        assert_eq!((compressed[6] >> 1) & 0b11, 2, "first block is dynamic");
        let mut inflater = HeaderInflater::new();
        let mut out = Vec::new();
        let (head, tail) = compressed.split_at(compressed.len() / 2);
        inflater.inflate(head, &mut out, LIMIT).unwrap();
        let window = inflater.core.history.window.capacity();
        assert_eq!(inflater.heap_size(), window + size_of::<CodePair>());
        inflater.inflate(tail, &mut out, LIMIT).unwrap();
        assert_eq!(out, plain);
        assert_eq!(
            inflater.heap_size(),
            inflater.core.history.window.capacity()
        );
    }

    #[test]
    fn history_wraps_at_32_kib() {
        let blocks: Vec<Vec<u8>> = (0..8).map(|i| text(20_000, i)).collect();
        let compressed = compress_blocks(9, &blocks);
        let mut inflater = HeaderInflater::new();
        for (block, plain) in compressed.iter().zip(&blocks) {
            let mut out = Vec::new();
            inflater.inflate(block, &mut out, LIMIT).unwrap();
            assert!(out == *plain);
        }
        assert_eq!(inflater.heap_size(), WINDOW);
    }

    fn header_like_block() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            Just("streamtype".to_string()),
            Just("content-type".to_string()),
            Just("port".to_string()),
            Just("requestid".to_string()),
            Just("accept-encoding".to_string()),
            "[a-z][a-z0-9-]{0,24}",
        ];
        let value = prop_oneof![
            Just("stdin".to_string()),
            Just("error".to_string()),
            Just("application/json".to_string()),
            "[ -~]{0,80}",
        ];
        prop::collection::vec((name, value), 0..10).prop_map(|pairs| header_block(&pairs))
    }

    fn any_block() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => header_like_block(),
            1 => prop::collection::vec(any::<u8>(), 0..2000),
            1 => (prop::collection::vec(any::<u8>(), 1..12), 1..400usize)
                .prop_map(|(unit, times)| unit.repeat(times)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn compressed_blocks_decode_block_by_block(
            level in 0u32..=9,
            blocks in prop::collection::vec(any_block(), 1..8),
        ) {
            let compressed = compress_blocks(level, &blocks);
            let mut inflater = HeaderInflater::new();
            for (block, plain) in compressed.iter().zip(&blocks) {
                let mut out = Vec::new();
                inflater.inflate(block, &mut out, plain.len()).unwrap();
                prop_assert_eq!(&out, plain);
            }
        }

        #[test]
        fn input_split_anywhere_decodes_the_same(
            level in 0u32..=9,
            blocks in prop::collection::vec(any_block(), 1..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let compressed = compress_blocks(level, &blocks).concat();
            let mut at: Vec<usize> = cuts.iter().map(|cut| cut.index(compressed.len() + 1)).collect();
            at.push(0);
            at.push(compressed.len());
            at.sort_unstable();
            let pieces: Vec<&[u8]> = at.windows(2).map(|w| &compressed[w[0]..w[1]]).collect();
            prop_assert_eq!(inflate_all(&pieces).unwrap(), blocks.concat());
        }

        #[test]
        fn random_input_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            with_header in any::<bool>(),
        ) {
            let stream = if with_header { [&DICT_HEADER[..], &bytes].concat() } else { bytes };
            let mut inflater = HeaderInflater::new();
            let mut out = Vec::new();
            let _ = inflater.inflate(&stream, &mut out, 1 << 16);
            prop_assert!(out.len() <= 1 << 16);
        }
    }
}
