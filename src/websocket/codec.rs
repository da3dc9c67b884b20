//! RFC 6455 framing for the server side of a connection, free of I/O: bytes in, events out;
//! events in, frame headers out.
//!
//! The bridge needs only what a Kubernetes streaming server needs: no extensions (every RSV bit
//! must be clear), masked client frames, unmasked server frames. The decoder validates a frame
//! header before anything of the payload is buffered, so an oversized frame costs nothing, and
//! unmasks in place so a data frame becomes a [`Bytes`] without a copy.

use bytes::{Buf, Bytes, BytesMut};

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Status codes the bridge sends in Close frames (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// A Close frame's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: String,
}

/// What a client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole data message; `text` when it was sent as a text message. Its bytes are not
    /// checked for UTF-8: the bridge treats text like binary, as the Kubernetes servers do.
    Message {
        text: bool,
        payload: Bytes,
    },
    Ping(Bytes),
    Pong(Bytes),
    /// A Close frame, with its status code and reason when it carried one.
    Close(Option<CloseFrame>),
}

/// Why a client's bytes are not a WebSocket stream the bridge accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("client sent an unmasked frame")]
    Unmasked,
    #[error("client set reserved bits {0:#05b} without a negotiated extension")]
    ReservedBits(u8),
    #[error("client sent unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("client fragmented a control frame")]
    FragmentedControl,
    #[error("client sent a control frame with a {0}-byte payload (at most 125)")]
    ControlTooLong(u64),
    #[error("client sent a payload length with the most significant bit set")]
    InvalidLength,
    #[error("client sent a continuation frame with no message to continue")]
    UnexpectedContinuation,
    #[error("client started a new message before finishing a fragmented one")]
    UnfinishedMessage,
    #[error("client sent a {len}-byte frame (limit {max})")]
    FrameTooBig { len: u64, max: usize },
    #[error("client sent a message of more than {max} bytes")]
    MessageTooBig { max: usize },
    #[error("client sent a 1-byte Close payload")]
    CloseTooShort,
    #[error("client sent Close status code {0}, which may not be sent")]
    InvalidCloseCode(u16),
    #[error("client sent a Close reason that is not UTF-8")]
    CloseReasonNotUtf8,
}

impl DecodeError {
    /// The Close status code that answers the error.
    pub fn close_code(&self) -> u16 {
        match self {
            DecodeError::FrameTooBig { .. } | DecodeError::MessageTooBig { .. } => {
                close_code::MESSAGE_TOO_BIG
            }
            DecodeError::CloseReasonNotUtf8 => close_code::INVALID_PAYLOAD,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// Limits of a [`Decoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted; a larger frame is refused from its header alone.
    pub max_frame: usize,
    /// Largest message (all fragments) accepted.
    pub max_message: usize,
}

/// Longest frame header: 2 bytes, a 64-bit length, a 4-byte mask.
pub const MAX_HEADER: usize = 14;

struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    len: usize,
    header_len: usize,
}

/// A fragmented message being put together.
struct Partial {
    text: bool,
    data: BytesMut,
}

/// Payloads shorter than this are copied out of the read buffer instead of sliced from it: a
/// small message that waits in a queue (stdin while the runtime is slow, a pong) must not keep
/// a whole read buffer alive, or a client sending tiny messages could pin far more memory than
/// the bytes it is charged for.
pub const COPY_BELOW: usize = 4 * 1024;

/// Decodes a client's frames into [`Event`]s.
pub struct Decoder {
    limits: Limits,
    partial: Option<Partial>,
    /// The first error: the stream is unusable after it, and says so again on every call.
    failed: Option<DecodeError>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            partial: None,
            failed: None,
        }
    }

    /// How many bytes `buf` must hold before [`decode`](Self::decode) can make progress: the
    /// whole next frame once its header is known, else enough for the header.
    pub fn wanted(&self, buf: &[u8]) -> usize {
        match parse_header(buf, self.limits.max_frame) {
            Ok(Some(h)) => h.header_len + h.len,
            Ok(None) => header_len_hint(buf),
            Err(_) => 0,
        }
    }

    /// Takes the next event out of `buf`: `Ok(None)` when `buf` holds no complete frame yet
    /// (a fragment that completes no message is consumed and buffered here). After an error
    /// the stream is unusable: the caller closes it with [`DecodeError::close_code`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let decoded = self.decode_frames(buf);
        if let Err(e) = &decoded {
            self.failed = Some(e.clone());
            self.partial = None;
        }
        decoded
    }

    fn decode_frames(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, DecodeError> {
        loop {
            let Some(h) = parse_header(buf, self.limits.max_frame)? else {
                return Ok(None);
            };
            self.check_sequence(&h)?;
            if buf.len() < h.header_len + h.len {
                return Ok(None);
            }
            buf.advance(h.header_len);
            let mut payload = buf.split_to(h.len);
            unmask(&mut payload, h.mask);
            if let Some(event) = self.on_frame(h, payload)? {
                return Ok(Some(event));
            }
        }
    }

    /// Refuses a frame that cannot follow what came before, before its payload is buffered.
    fn check_sequence(&self, h: &Header) -> Result<(), DecodeError> {
        match (h.opcode, &self.partial) {
            (Opcode::Continuation, None) => Err(DecodeError::UnexpectedContinuation),
            (Opcode::Continuation, Some(p)) if p.data.len() + h.len > self.limits.max_message => {
                Err(DecodeError::MessageTooBig {
                    max: self.limits.max_message,
                })
            }
            (Opcode::Text | Opcode::Binary, Some(_)) => Err(DecodeError::UnfinishedMessage),
            (Opcode::Text | Opcode::Binary, None) if h.len > self.limits.max_message => {
                Err(DecodeError::MessageTooBig {
                    max: self.limits.max_message,
                })
            }
            _ => Ok(()),
        }
    }

    fn on_frame(&mut self, h: Header, payload: BytesMut) -> Result<Option<Event>, DecodeError> {
        let event = match h.opcode {
            Opcode::Ping => Event::Ping(detach(payload)),
            Opcode::Pong => Event::Pong(detach(payload)),
            Opcode::Close => Event::Close(close_payload(&payload)?),
            Opcode::Text | Opcode::Binary if h.fin => Event::Message {
                text: h.opcode == Opcode::Text,
                payload: detach(payload),
            },
            Opcode::Text | Opcode::Binary => {
                self.partial = Some(Partial {
                    text: h.opcode == Opcode::Text,
                    data: payload,
                });
                return Ok(None);
            }
            Opcode::Continuation => {
                let partial = self.partial.as_mut().expect("checked before the payload");
                partial.data.extend_from_slice(&payload);
                if !h.fin {
                    return Ok(None);
                }
                let Partial { text, data } = self.partial.take().expect("just used");
                Event::Message {
                    text,
                    payload: detach(data),
                }
            }
        };
        Ok(Some(event))
    }

    /// Bytes held for a fragmented message.
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.data.len())
    }
}

/// A payload as handed out: a slice of the read buffer, or its own copy when it is small (see
/// [`COPY_BELOW`]).
fn detach(payload: BytesMut) -> Bytes {
    if payload.len() < COPY_BELOW {
        Bytes::copy_from_slice(&payload)
    } else {
        payload.freeze()
    }
}

fn header_len_hint(buf: &[u8]) -> usize {
    match buf.get(1) {
        None => 2,
        Some(b) => {
            2 + 4
                + match b & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                }
        }
    }
}

/// Parses and validates the header at the start of `buf`; `Ok(None)` if it is incomplete.
fn parse_header(buf: &[u8], max_frame: usize) -> Result<Option<Header>, DecodeError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    if rsv != 0 {
        return Err(DecodeError::ReservedBits(rsv));
    }
    let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(DecodeError::UnknownOpcode(b0 & 0x0f))?;
    if b1 & 0x80 == 0 {
        return Err(DecodeError::Unmasked);
    }
    let (len, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len >> 63 != 0 {
        return Err(DecodeError::InvalidLength);
    }
    if opcode.is_control() {
        if !fin {
            return Err(DecodeError::FragmentedControl);
        }
        if len > 125 {
            return Err(DecodeError::ControlTooLong(len));
        }
    }
    if len > max_frame as u64 {
        return Err(DecodeError::FrameTooBig {
            len,
            max: max_frame,
        });
    }
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: mask.try_into().expect("4 bytes"),
        len: len as usize,
        header_len: at + 4,
    }))
}

fn close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, DecodeError> {
    match payload {
        [] => Ok(None),
        [_] => Err(DecodeError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_may_be_sent(code) {
                return Err(DecodeError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| DecodeError::CloseReasonNotUtf8)?
                .to_owned();
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// RFC 6455 §7.4: codes a peer may put in a Close frame.
fn close_code_may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// XORs `data` with the repeating 4-byte `mask`, eight bytes at a time.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// An unmasked (server) frame header for a payload of `len` bytes, FIN set.
#[derive(Clone, Copy, Debug)]
pub struct FrameHeader {
    bytes: [u8; 10],
    len: u8,
}

impl FrameHeader {
    pub fn new(opcode: Opcode, len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode as u8;
        let n = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if len <= usize::from(u16::MAX) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        FrameHeader { bytes, len: n }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A Close frame's payload: the code, then the reason cut to fit 125 bytes on a character
/// boundary.
pub fn encode_close(frame: Option<&CloseFrame>) -> Bytes {
    let Some(f) = frame else {
        return Bytes::new();
    };
    let mut reason = f.reason.as_str();
    while reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    let mut out = Vec::with_capacity(2 + reason.len());
    out.extend_from_slice(&f.code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_frame: 1 << 20,
        max_message: 1 << 20,
    };

    /// A client frame: masked with a fixed key.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Event>, DecodeError> {
        let mut d = Decoder::new(LIMITS);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(e) = d.decode(&mut buf)? {
            out.push(e);
        }
        Ok(out)
    }

    fn binary(payload: &[u8]) -> Event {
        Event::Message {
            text: false,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn masked_binary_frames_of_every_length_form_decode() {
        for n in [0, 1, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            assert_eq!(
                decode_all(&client_frame(0x82, &payload)).unwrap(),
                vec![binary(&payload)]
            );
        }
    }

    #[test]
    fn byte_by_byte_input_yields_the_same_events() {
        let mut wire = client_frame(0x01, b"he");
        wire.extend(client_frame(0x80, b"llo"));
        wire.extend(client_frame(0x89, b"p"));
        wire.extend(client_frame(0x88, &[0x03, 0xe8, b'o', b'k']));
        let mut d = Decoder::new(LIMITS);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire {
            buf.extend_from_slice(&[b]);
            while let Some(e) = d.decode(&mut buf).unwrap() {
                out.push(e);
            }
        }
        assert_eq!(
            out,
            vec![
                Event::Message {
                    text: true,
                    payload: Bytes::from_static(b"hello")
                },
                Event::Ping(Bytes::from_static(b"p")),
                Event::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "ok".into()
                })),
            ]
        );
    }

    #[test]
    fn control_frames_may_interleave_a_fragmented_message() {
        let mut wire = client_frame(0x02, b"a");
        wire.extend(client_frame(0x89, b""));
        wire.extend(client_frame(0x80, b"b"));
        assert_eq!(
            decode_all(&wire).unwrap(),
            vec![Event::Ping(Bytes::new()), binary(b"ab")]
        );
    }

    #[test]
    fn protocol_violations_are_refused_with_their_close_code() {
        let unmasked = vec![0x82, 0x01, 0x00];
        let cases: Vec<(Vec<u8>, DecodeError, u16)> = vec![
            (unmasked, DecodeError::Unmasked, 1002),
            (client_frame(0xc2, b"x"), DecodeError::ReservedBits(4), 1002),
            (client_frame(0x83, b""), DecodeError::UnknownOpcode(3), 1002),
            (
                client_frame(0x09, b""),
                DecodeError::FragmentedControl,
                1002,
            ),
            (
                client_frame(0x89, &[0; 126]),
                DecodeError::ControlTooLong(126),
                1002,
            ),
            (
                client_frame(0x80, b"x"),
                DecodeError::UnexpectedContinuation,
                1002,
            ),
            (client_frame(0x88, b"x"), DecodeError::CloseTooShort, 1002),
            (
                client_frame(0x88, &[0x03, 0xed]),
                DecodeError::InvalidCloseCode(1005),
                1002,
            ),
            (
                client_frame(0x88, &[0x03, 0xe8, 0xff]),
                DecodeError::CloseReasonNotUtf8,
                1007,
            ),
        ];
        for (wire, err, code) in cases {
            let got = decode_all(&wire).unwrap_err();
            assert_eq!(got, err);
            assert_eq!(got.close_code(), code);
        }
        let mut wire = client_frame(0x02, b"a");
        wire.extend(client_frame(0x82, b"b"));
        assert_eq!(
            decode_all(&wire).unwrap_err(),
            DecodeError::UnfinishedMessage
        );
    }

    #[test]
    fn an_error_is_final() {
        let mut d = Decoder::new(LIMITS);
        let mut wire = client_frame(0x88, b"x");
        wire.extend(client_frame(0x82, b"after"));
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(d.decode(&mut buf), Err(DecodeError::CloseTooShort));
        assert_eq!(d.decode(&mut buf), Err(DecodeError::CloseTooShort));
    }

    #[test]
    fn small_payloads_do_not_keep_the_read_buffer_alive() {
        let mut d = Decoder::new(LIMITS);
        let mut wire = client_frame(0x82, b"tiny");
        wire.extend(client_frame(0x82, &[5; COPY_BELOW]));
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.extend_from_slice(&wire);
        let base = buf.as_ptr() as usize;
        let within = |b: &Bytes| (base..base + 64 * 1024).contains(&(b.as_ptr() as usize));
        let Some(Event::Message { payload: small, .. }) = d.decode(&mut buf).unwrap() else {
            panic!("a message")
        };
        let Some(Event::Message { payload: large, .. }) = d.decode(&mut buf).unwrap() else {
            panic!("a message")
        };
        assert!(!within(&small), "a small payload is its own copy");
        assert!(
            within(&large),
            "a large payload is a slice of the read buffer"
        );
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        let mut d = Decoder::new(Limits {
            max_frame: 16,
            max_message: 16,
        });
        // Header of a 1 GiB frame and nothing more.
        let mut buf = BytesMut::from(&[0x82, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0][..]);
        let err = d.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            DecodeError::FrameTooBig {
                len: 1 << 30,
                max: 16
            }
        );
        assert_eq!(err.close_code(), 1009);
        let mut d = Decoder::new(Limits {
            max_frame: 16,
            max_message: 16,
        });
        let mut buf = BytesMut::from(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(d.decode(&mut buf).unwrap_err(), DecodeError::InvalidLength);
    }

    #[test]
    fn fragmented_messages_are_bounded_as_a_whole() {
        let mut d = Decoder::new(Limits {
            max_frame: 8,
            max_message: 10,
        });
        let mut wire = client_frame(0x02, &[1; 8]);
        wire.extend(client_frame(0x80, &[2; 3]));
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap_err(),
            DecodeError::MessageTooBig { max: 10 }
        );
    }

    #[test]
    fn wanted_names_the_whole_next_frame() {
        let d = Decoder::new(LIMITS);
        let wire = client_frame(0x82, &[7; 300]);
        assert_eq!(d.wanted(&[]), 2);
        assert_eq!(d.wanted(&wire[..2]), 8);
        assert_eq!(d.wanted(&wire[..5]), 8);
        assert_eq!(d.wanted(&wire[..8]), 308);
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        assert_eq!(FrameHeader::new(Opcode::Binary, 5).as_bytes(), &[0x82, 5]);
        assert_eq!(
            FrameHeader::new(Opcode::Binary, 126).as_bytes(),
            &[0x82, 126, 0, 126]
        );
        assert_eq!(
            FrameHeader::new(Opcode::Close, 70000).as_bytes(),
            &[0x88, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }

    #[test]
    fn close_reasons_are_cut_on_a_character_boundary() {
        let f = CloseFrame {
            code: 1001,
            reason: "é".repeat(100),
        };
        let out = encode_close(Some(&f));
        assert!(out.len() <= 125);
        assert_eq!(&out[..2], &[0x03, 0xe9]);
        assert!(std::str::from_utf8(&out[2..]).is_ok());
        assert!(encode_close(None).is_empty());
    }

    #[test]
    fn unmask_matches_a_bytewise_xor_at_every_length_and_offset() {
        let mask = [0xa1, 0xb2, 0xc3, 0xd4];
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }
}
