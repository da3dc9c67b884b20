//! SPDY/3.1 frames: types, encoder and incremental decoder.
//!
//! Control frame header (8 bytes):
//! ```text
//! +-+--------------+----------------+--------+------------------------+
//! |1| version (15) |   type (16)    | flags  |      length (24)       |
//! +-+--------------+----------------+--------+------------------------+
//! ```
//! Data frame header (8 bytes):
//! ```text
//! +-+-------------------------------+--------+------------------------+
//! |0|        stream-id (31)         | flags  |      length (24)       |
//! +-+-------------------------------+--------+------------------------+
//! ```
//! Control payloads are buffered whole (bounded by [`Limits::max_control_frame`]); DATA payloads
//! are handed out as they arrive, so a 16 MiB DATA frame never sits in memory whole.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use super::deflate::HeaderDeflater;
use super::headers::{BlockKind, HeaderBlock, HeaderError, HeaderLimits};
use super::inflate::{HeaderInflater, InflateError};

/// The only SPDY version we speak; spdystream writes 3 and ignores what it receives.
pub const VERSION: u16 = 3;
/// Largest payload a 24-bit length can describe (spdystream's `MaxDataLength`).
pub const MAX_FRAME_PAYLOAD: usize = 0x00ff_ffff;
/// Largest stream id.
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// DATA, SYN_STREAM, SYN_REPLY and HEADERS flag: the sender will send nothing more.
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM flag: the receiver may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SETTINGS flag: forget persisted settings.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// Length of every frame header.
pub const HEADER_LEN: usize = 8;

/// RST_STREAM status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RstStatus(pub u32);

impl RstStatus {
    pub const PROTOCOL_ERROR: RstStatus = RstStatus(1);
    pub const INVALID_STREAM: RstStatus = RstStatus(2);
    pub const REFUSED_STREAM: RstStatus = RstStatus(3);
    pub const UNSUPPORTED_VERSION: RstStatus = RstStatus(4);
    /// What every spdystream `Reset()` sends.
    pub const CANCEL: RstStatus = RstStatus(5);
    pub const INTERNAL_ERROR: RstStatus = RstStatus(6);
    pub const FLOW_CONTROL_ERROR: RstStatus = RstStatus(7);
    pub const STREAM_IN_USE: RstStatus = RstStatus(8);
    pub const STREAM_ALREADY_CLOSED: RstStatus = RstStatus(9);
    pub const FRAME_TOO_LARGE: RstStatus = RstStatus(11);
}

/// GOAWAY status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoAwayStatus(pub u32);

impl GoAwayStatus {
    pub const OK: GoAwayStatus = GoAwayStatus(0);
    pub const PROTOCOL_ERROR: GoAwayStatus = GoAwayStatus(1);
    pub const INTERNAL_ERROR: GoAwayStatus = GoAwayStatus(2);
}

/// One SETTINGS entry: `flags(8) | id(24)`, `value(32)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    /// 24-bit id.
    pub id: u32,
    pub value: u32,
}

/// A SPDY/3.1 frame. Stream ids of control frames are kept as the raw 32 bits read, reserved
/// bit included, because spdystream does not mask it either (an id above [`MAX_STREAM_ID`]
/// is a protocol error the session answers, not a decoding failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// DATA. The decoder may deliver one wire frame as several `Data` pieces; only the last
    /// carries `fin`.
    Data {
        stream_id: u32,
        fin: bool,
        payload: Bytes,
    },
    /// ```text
    /// | X | Stream-ID (31) | X | Associated-To-Stream-ID (31) | Pri (3) | unused (5) | Slot (8) | header block |
    /// ```
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        slot: u8,
        fin: bool,
        unidirectional: bool,
        headers: HeaderBlock,
    },
    /// `| X | Stream-ID (31) | header block |`
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: HeaderBlock,
    },
    /// `| X | Stream-ID (31) | Status code (32) |`
    RstStream { stream_id: u32, status: RstStatus },
    /// `| number of entries (32) | entries (8 bytes each) |`
    Settings { clear: bool, entries: Vec<Setting> },
    /// `| Ping-ID (32) |`
    Ping { id: u32 },
    /// `| X | Last-good-stream-ID (31) | Status (32) |`
    GoAway {
        last_good_stream_id: u32,
        status: GoAwayStatus,
    },
    /// `| X | Stream-ID (31) | header block |` — never sent by us (it wedges spdystream).
    Headers {
        stream_id: u32,
        fin: bool,
        headers: HeaderBlock,
    },
    /// `| X | Stream-ID (31) | X | Delta-Window-Size (31) |` — parsed and ignored.
    WindowUpdate { stream_id: u32, delta: u32 },
}

impl Frame {
    /// Short name of the frame type, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Data { .. } => "DATA",
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
        }
    }
}

/// Caps on what the peer may make us buffer or allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest control frame payload, in bytes (it is buffered whole). Default 64 KiB.
    pub max_control_frame: usize,
    /// Largest DATA frame payload, in bytes. DATA is streamed, so this is a policy cap, not a
    /// buffer size. Default 16 MiB − 1, the protocol's own maximum.
    pub max_data_frame: usize,
    /// Caps on inflated header blocks.
    pub headers: HeaderLimits,
}

impl Limits {
    /// Default for [`max_control_frame`](Self::max_control_frame).
    pub const DEFAULT_MAX_CONTROL_FRAME: usize = 64 * 1024;
    /// Default for [`max_data_frame`](Self::max_data_frame).
    pub const DEFAULT_MAX_DATA_FRAME: usize = MAX_FRAME_PAYLOAD;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_control_frame: Self::DEFAULT_MAX_CONTROL_FRAME,
            max_data_frame: Self::DEFAULT_MAX_DATA_FRAME,
            headers: HeaderLimits::default(),
        }
    }
}

/// Why the peer's bytes are not a valid SPDY/3.1 frame sequence. Every variant is the peer's
/// fault and fatal to the connection (as each is to spdystream).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("control frame of unknown type {frame_type}")]
    UnknownControlType { frame_type: u16 },
    #[error("{kind} frame of {len} bytes is over the limit of {limit}")]
    FrameTooLarge {
        kind: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{kind} frame has invalid length {len}")]
    InvalidLength { kind: &'static str, len: usize },
    #[error("{kind} frame with stream id 0")]
    ZeroStreamId { kind: &'static str },
    #[error("{kind} frame with non-zero flags {flags:#04x}")]
    InvalidFlags { kind: &'static str, flags: u8 },
    #[error("PING with id 0")]
    ZeroPingId,
    #[error("RST_STREAM with status 0")]
    ZeroRstStatus,
    #[error("SETTINGS says {count} entries but carries {len} bytes")]
    SettingsCount { count: u32, len: usize },
    #[error("header block does not inflate: {0}")]
    Inflate(#[from] InflateError),
    #[error("header block: {0}")]
    Header(#[from] HeaderError),
    #[error("decoder already failed")]
    Poisoned,
}

/// Why a frame could not be encoded (our fault).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    #[error("{kind} payload of {len} bytes exceeds the 24-bit length field")]
    TooLarge { kind: &'static str, len: usize },
    #[error("stream id {0} is out of range")]
    StreamId(u32),
    #[error("header block: {0}")]
    Header(#[from] HeaderError),
}

/// Encodes frames for one direction of a connection (it owns that direction's header context).
#[derive(Debug, Default)]
pub struct Encoder {
    deflater: HeaderDeflater,
    scratch: Vec<u8>,
}

impl Encoder {
    /// An encoder for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the wire form of `frame` to `dst`.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                payload,
            } => {
                check_id(*stream_id)?;
                dst.extend_from_slice(&data_header(*stream_id, *fin, payload.len())?);
                dst.extend_from_slice(payload);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                check_id(*stream_id)?;
                check_id(*associated_to)?;
                let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
                let block = self.compress(headers, BlockKind::SynStream, 10)?;
                let mut payload = Vec::with_capacity(10 + block.len());
                payload.extend_from_slice(&stream_id.to_be_bytes());
                payload.extend_from_slice(&associated_to.to_be_bytes());
                payload.push((priority & 0x07) << 5);
                payload.push(*slot);
                payload.extend_from_slice(&block);
                control(dst, TYPE_SYN_STREAM, flags, &payload)?;
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                check_id(*stream_id)?;
                let payload = self.id_and_block(*stream_id, headers, BlockKind::SynReply)?;
                control(dst, TYPE_SYN_REPLY, flag(*fin, FLAG_FIN), &payload)?;
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                check_id(*stream_id)?;
                let payload = self.id_and_block(*stream_id, headers, BlockKind::Headers)?;
                control(dst, TYPE_HEADERS, flag(*fin, FLAG_FIN), &payload)?;
            }
            Frame::RstStream { stream_id, status } => {
                check_id(*stream_id)?;
                control(dst, TYPE_RST_STREAM, 0, &two_words(*stream_id, status.0))?;
            }
            Frame::Settings { clear, entries } => {
                let mut payload = Vec::with_capacity(4 + 8 * entries.len());
                payload.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    payload.push(e.flags);
                    payload.extend_from_slice(&e.id.to_be_bytes()[1..]);
                    payload.extend_from_slice(&e.value.to_be_bytes());
                }
                control(
                    dst,
                    TYPE_SETTINGS,
                    flag(*clear, FLAG_CLEAR_SETTINGS),
                    &payload,
                )?;
            }
            Frame::Ping { id } => control(dst, TYPE_PING, 0, &id.to_be_bytes())?,
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                check_id(*last_good_stream_id)?;
                control(
                    dst,
                    TYPE_GOAWAY,
                    0,
                    &two_words(*last_good_stream_id, status.0),
                )?
            }
            Frame::WindowUpdate { stream_id, delta } => {
                check_id(*stream_id)?;
                control(dst, TYPE_WINDOW_UPDATE, 0, &two_words(*stream_id, *delta))?
            }
        }
        Ok(())
    }

    /// Compresses one block, after every check that could refuse the frame: the header
    /// context must only advance for a frame that is really sent.
    fn compress(
        &mut self,
        headers: &HeaderBlock,
        kind: BlockKind,
        fixed: usize,
    ) -> Result<Vec<u8>, EncodeError> {
        headers.check_forbidden(kind)?;
        self.scratch.clear();
        headers.encode(&mut self.scratch)?;
        let len = fixed + self.deflater.compressed_len(self.scratch.len());
        if len > MAX_FRAME_PAYLOAD {
            self.scratch = Vec::new();
            return Err(EncodeError::TooLarge {
                kind: "header block",
                len,
            });
        }
        let mut block = Vec::with_capacity(self.deflater.compressed_len(self.scratch.len()));
        self.deflater.compress(&self.scratch, &mut block);
        // Header blocks are rare and tiny; don't keep a large scratch buffer per connection.
        if self.scratch.capacity() > 1024 {
            self.scratch = Vec::new();
        }
        Ok(block)
    }

    fn id_and_block(
        &mut self,
        stream_id: u32,
        headers: &HeaderBlock,
        kind: BlockKind,
    ) -> Result<Vec<u8>, EncodeError> {
        let block = self.compress(headers, kind, 4)?;
        let mut payload = Vec::with_capacity(4 + block.len());
        payload.extend_from_slice(&stream_id.to_be_bytes());
        payload.extend_from_slice(&block);
        Ok(payload)
    }

    /// Heap bytes held between frames.
    pub fn heap_size(&self) -> usize {
        self.scratch.capacity()
    }
}

/// The 8-byte header of a DATA frame, for writers that send the payload separately.
pub fn data_header(stream_id: u32, fin: bool, len: usize) -> Result<[u8; 8], EncodeError> {
    check_id(stream_id)?;
    if len > MAX_FRAME_PAYLOAD {
        return Err(EncodeError::TooLarge { kind: "DATA", len });
    }
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&stream_id.to_be_bytes());
    h[4..].copy_from_slice(&(len as u32).to_be_bytes());
    h[4] = flag(fin, FLAG_FIN);
    Ok(h)
}

fn check_id(id: u32) -> Result<(), EncodeError> {
    if id > MAX_STREAM_ID {
        return Err(EncodeError::StreamId(id));
    }
    Ok(())
}

fn flag(on: bool, bit: u8) -> u8 {
    if on { bit } else { 0 }
}

fn two_words(a: u32, b: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&a.to_be_bytes());
    out[4..].copy_from_slice(&b.to_be_bytes());
    out
}

fn control(
    dst: &mut BytesMut,
    frame_type: u16,
    flags: u8,
    payload: &[u8],
) -> Result<(), EncodeError> {
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(EncodeError::TooLarge {
            kind: "control",
            len: payload.len(),
        });
    }
    dst.reserve(HEADER_LEN + payload.len());
    dst.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    dst.extend_from_slice(&frame_type.to_be_bytes());
    let len = (payload.len() as u32).to_be_bytes();
    dst.extend_from_slice(&[flags, len[1], len[2], len[3]]);
    dst.extend_from_slice(payload);
    Ok(())
}

/// A DATA frame whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
struct PartialData {
    stream_id: u32,
    fin: bool,
    remaining: usize,
}

/// Decodes the frames one direction of a connection carries (it owns that direction's
/// header inflater).
pub struct Decoder {
    limits: Limits,
    inflater: HeaderInflater,
    data: Option<PartialData>,
    block: Vec<u8>,
    failed: bool,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("limits", &self.limits)
            .field("data", &self.data)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder for a new connection.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            inflater: HeaderInflater::new(),
            data: None,
            block: Vec::new(),
            failed: false,
        }
    }

    /// Takes the next frame (or DATA piece) off the front of `src`. `Ok(None)` means more
    /// bytes are needed; [`wanted`](Self::wanted) says how many would complete the frame.
    /// After an error the decoder stays failed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Poisoned);
        }
        let result = self.decode_inner(src);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Bytes `src` must hold before [`decode`](Self::decode) can make progress: at least a
    /// header, or the whole control frame whose header is at the front.
    pub fn wanted(&self, src: &[u8]) -> usize {
        if self.data.is_some() {
            return 1;
        }
        if src.len() < HEADER_LEN || src[0] & 0x80 == 0 {
            return HEADER_LEN;
        }
        HEADER_LEN + u24(&src[5..8])
    }

    /// Heap bytes held between frames (the header inflater's history and scratch space).
    pub fn heap_size(&self) -> usize {
        self.inflater.heap_size() + self.block.capacity()
    }

    fn decode_inner(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if let Some(partial) = self.data {
            return Ok(self.data_piece(partial, src));
        }
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = src[4];
        let len = u24(&src[5..8]);
        if src[0] & 0x80 == 0 {
            let stream_id = be32(&src[0..4]);
            if stream_id == 0 {
                return Err(DecodeError::ZeroStreamId { kind: "DATA" });
            }
            if len > self.limits.max_data_frame {
                return Err(DecodeError::FrameTooLarge {
                    kind: "DATA",
                    len,
                    limit: self.limits.max_data_frame,
                });
            }
            src.advance(HEADER_LEN);
            let partial = PartialData {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                remaining: len,
            };
            if len == 0 {
                return Ok(Some(Frame::Data {
                    stream_id,
                    fin: partial.fin,
                    payload: Bytes::new(),
                }));
            }
            self.data = Some(partial);
            return Ok(self.data_piece(partial, src));
        }
        // spdystream ignores the version field; so do we.
        let frame_type = u16::from_be_bytes([src[2], src[3]]);
        let kind = control_kind(frame_type)?;
        if len > self.limits.max_control_frame {
            return Err(DecodeError::FrameTooLarge {
                kind,
                len,
                limit: self.limits.max_control_frame,
            });
        }
        if src.len() < HEADER_LEN + len {
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len);
        self.control_frame(frame_type, kind, flags, &payload)
            .map(Some)
    }

    fn data_piece(&mut self, partial: PartialData, src: &mut BytesMut) -> Option<Frame> {
        if src.is_empty() {
            return None;
        }
        let take = partial.remaining.min(src.len());
        let payload = src.split_to(take).freeze();
        let remaining = partial.remaining - take;
        let fin = remaining == 0 && partial.fin;
        self.data = (remaining > 0).then_some(PartialData {
            remaining,
            ..partial
        });
        Some(Frame::Data {
            stream_id: partial.stream_id,
            fin,
            payload,
        })
    }

    fn control_frame(
        &mut self,
        frame_type: u16,
        kind: &'static str,
        flags: u8,
        p: &[u8],
    ) -> Result<Frame, DecodeError> {
        let fin = flags & FLAG_FIN != 0;
        match frame_type {
            TYPE_SYN_STREAM => {
                min_len(kind, p, 10)?;
                let stream_id = nonzero_id(kind, be32(&p[0..4]))?;
                let headers = self.header_block(&p[10..], BlockKind::SynStream)?;
                Ok(Frame::SynStream {
                    stream_id,
                    associated_to: be32(&p[4..8]),
                    priority: p[8] >> 5,
                    slot: p[9],
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                })
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                min_len(kind, p, 4)?;
                let stream_id = nonzero_id(kind, be32(&p[0..4]))?;
                let block_kind = if frame_type == TYPE_SYN_REPLY {
                    BlockKind::SynReply
                } else {
                    BlockKind::Headers
                };
                let headers = self.header_block(&p[4..], block_kind)?;
                Ok(if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                })
            }
            TYPE_RST_STREAM => {
                exact_len(kind, p, 8)?;
                let stream_id = nonzero_id(kind, be32(&p[0..4]))?;
                let status = be32(&p[4..8]);
                if status == 0 {
                    return Err(DecodeError::ZeroRstStatus);
                }
                Ok(Frame::RstStream {
                    stream_id,
                    status: RstStatus(status),
                })
            }
            TYPE_SETTINGS => {
                min_len(kind, p, 4)?;
                let count = be32(&p[0..4]);
                // spdystream trusts the count and desynchronises; we insist they agree.
                if (count as usize).checked_mul(8) != Some(p.len() - 4) {
                    return Err(DecodeError::SettingsCount {
                        count,
                        len: p.len(),
                    });
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| Setting {
                        flags: e[0],
                        id: u24(&e[1..4]) as u32,
                        value: be32(&e[4..8]),
                    })
                    .collect();
                Ok(Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                })
            }
            TYPE_PING => {
                exact_len(kind, p, 4)?;
                zero_flags(kind, flags)?;
                let id = be32(p);
                if id == 0 {
                    return Err(DecodeError::ZeroPingId);
                }
                Ok(Frame::Ping { id })
            }
            TYPE_GOAWAY => {
                exact_len(kind, p, 8)?;
                zero_flags(kind, flags)?;
                Ok(Frame::GoAway {
                    last_good_stream_id: be32(&p[0..4]),
                    status: GoAwayStatus(be32(&p[4..8])),
                })
            }
            TYPE_WINDOW_UPDATE => {
                exact_len(kind, p, 8)?;
                zero_flags(kind, flags)?;
                Ok(Frame::WindowUpdate {
                    stream_id: be32(&p[0..4]),
                    delta: be32(&p[4..8]),
                })
            }
            _ => Err(DecodeError::UnknownControlType { frame_type }),
        }
    }

    fn header_block(
        &mut self,
        compressed: &[u8],
        kind: BlockKind,
    ) -> Result<HeaderBlock, DecodeError> {
        self.block.clear();
        let limits = self.limits.headers;
        self.inflater
            .inflate(compressed, &mut self.block, limits.max_block)?;
        let headers = HeaderBlock::decode(&self.block, &limits)?;
        headers.check_forbidden(kind)?;
        // Keep the scratch small once a large block has gone through.
        if self.block.capacity() > 1024 {
            self.block = Vec::new();
        }
        Ok(headers)
    }
}

fn control_kind(frame_type: u16) -> Result<&'static str, DecodeError> {
    Ok(match frame_type {
        TYPE_SYN_STREAM => "SYN_STREAM",
        TYPE_SYN_REPLY => "SYN_REPLY",
        TYPE_RST_STREAM => "RST_STREAM",
        TYPE_SETTINGS => "SETTINGS",
        TYPE_PING => "PING",
        TYPE_GOAWAY => "GOAWAY",
        TYPE_HEADERS => "HEADERS",
        TYPE_WINDOW_UPDATE => "WINDOW_UPDATE",
        // Includes SPDY/2's NOOP (5) and SPDY/3's CREDENTIAL (10): fatal to spdystream too.
        _ => return Err(DecodeError::UnknownControlType { frame_type }),
    })
}

fn min_len(kind: &'static str, p: &[u8], min: usize) -> Result<(), DecodeError> {
    if p.len() < min {
        return Err(DecodeError::InvalidLength { kind, len: p.len() });
    }
    Ok(())
}

fn exact_len(kind: &'static str, p: &[u8], len: usize) -> Result<(), DecodeError> {
    if p.len() != len {
        return Err(DecodeError::InvalidLength { kind, len: p.len() });
    }
    Ok(())
}

fn zero_flags(kind: &'static str, flags: u8) -> Result<(), DecodeError> {
    if flags != 0 {
        return Err(DecodeError::InvalidFlags { kind, flags });
    }
    Ok(())
}

fn nonzero_id(kind: &'static str, id: u32) -> Result<u32, DecodeError> {
    if id == 0 {
        return Err(DecodeError::ZeroStreamId { kind });
    }
    Ok(id)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}
