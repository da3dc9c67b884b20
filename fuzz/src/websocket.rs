//! The WebSocket `Decoder` (src/websocket/codec.rs), fed bytes in pieces and checked.
//!
//! Two kinds of input share the checks in [`decode`]:
//!
//! - raw: arbitrary bytes as the client's side of the connection;
//! - messages: messages and control frames built by [`client_frame`] (masked, fragmented,
//!   with pings between the fragments, in every length form), whose expected events are
//!   known, so the decoder must produce exactly them, or exactly the limit error the frames
//!   call for.
//!
//! Whatever the input, the decoder must not panic, must never hold more than `max_message`
//! bytes of a fragmented message nor yield a bigger message, must want no more than one
//! frame's worth of bytes, and must give the same events, error and consumption whether the
//! bytes come all at once or in pieces.
//!
//! Input layout (plain bytes, so seeds are easy to write by hand):
//! ```text
//! byte 0: bit 0 messages mode (else raw)
//! byte 1: largest piece minus one (pieces of 1..=byte+1 bytes)
//! byte 2: seed for the piece sizes (and, in messages mode, masks and fragment cuts)
//! byte 3: max_frame in units of 8 bytes
//! byte 4: max_message in units of 16 bytes
//! rest:   raw mode: the wire; messages mode: operations, see `Op::parse`
//! ```

use bytes::{Bytes, BytesMut};
use ws_spdy_bridge::websocket::codec::{
    CloseFrame, DecodeError, Decoder, Event, Limits, MAX_HEADER, Opcode,
};

use crate::Rng;

/// Length encodings a client may use; the decoder must accept the longer ones too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthForm {
    Shortest,
    Bits16,
    Bits64,
}

/// A masked client frame. A `Bits16` form with a length that does not fit falls back to
/// `Bits64`.
pub fn client_frame(
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    payload: &[u8],
    form: LengthForm,
) -> Vec<u8> {
    let n = payload.len();
    let mut out = vec![u8::from(fin) << 7 | opcode as u8];
    let form = match form {
        LengthForm::Shortest if n < 126 => None,
        LengthForm::Shortest | LengthForm::Bits16 if n <= 0xffff => Some(LengthForm::Bits16),
        _ => Some(LengthForm::Bits64),
    };
    match form {
        None => out.push(0x80 | n as u8),
        Some(LengthForm::Bits16) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        Some(_) => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// What one decoder made of a wire.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub error: Option<DecodeError>,
    /// Bytes the decoder took out of its input buffer.
    pub consumed: usize,
    /// Bytes of an unfinished message it holds at the end.
    pub buffered: usize,
}

/// Runs `wire` through a fresh decoder, `piece()` bytes at a time, checking the invariants
/// after every call; feeding stops at the first error.
pub fn decode(limits: Limits, wire: &[u8], mut piece: impl FnMut() -> usize) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Outcome {
        events: Vec::new(),
        error: None,
        consumed: 0,
        buffered: 0,
    };
    let mut at = 0;
    while at < wire.len() {
        let end = (at + piece().max(1)).min(wire.len());
        buf.extend_from_slice(&wire[at..end]);
        at = end;
        loop {
            let before = buf.len();
            // Whatever the buffer holds, asking is safe; what comes back is an allocation
            // the reader makes, so it is bounded by one frame.
            let wanted = decoder.wanted(&buf);
            assert!(
                wanted <= MAX_HEADER + limits.max_frame,
                "wants {wanted} bytes with max_frame {}",
                limits.max_frame
            );
            let result = decoder.decode(&mut buf);
            out.consumed += before - buf.len();
            assert!(
                decoder.buffered() <= limits.max_message,
                "holds {} bytes of a message (max_message {})",
                decoder.buffered(),
                limits.max_message
            );
            match result {
                Ok(Some(event)) => {
                    assert!(buf.len() < before, "an event from no bytes");
                    check_event(limits, &event);
                    out.events.push(event);
                }
                Ok(None) => {
                    // It stops only for want of bytes, and says how many it needs.
                    let wanted = decoder.wanted(&buf);
                    assert!(
                        buf.len() < wanted,
                        "stalled holding {} bytes, wanting {wanted}",
                        buf.len()
                    );
                    break;
                }
                Err(err) => {
                    out.error = Some(err);
                    out.buffered = decoder.buffered();
                    return out;
                }
            }
        }
    }
    out.buffered = decoder.buffered();
    out
}

fn check_event(limits: Limits, event: &Event) {
    match event {
        Event::Message { payload, .. } => assert!(
            payload.len() <= limits.max_message,
            "a {}-byte message (max_message {})",
            payload.len(),
            limits.max_message
        ),
        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125, "{}-byte control", p.len()),
        Event::Close(Some(f)) => assert!(f.reason.len() <= 123, "{}-byte reason", f.reason.len()),
        Event::Close(None) => {}
    }
    // Every event is something a client can send: our encoder's frame for it decodes back
    // to it.
    let wire = encode_event(event, [0x5a, 0xa5, 0x0f, 0xf0]);
    let roomy = Limits {
        max_frame: wire.len(),
        max_message: wire.len(),
    };
    let mut buf = BytesMut::from(&wire[..]);
    let again = Decoder::new(roomy).decode(&mut buf);
    assert_eq!(again, Ok(Some(event.clone())), "re-encoded {event:?}");
    assert!(buf.is_empty());
}

/// One unfragmented client frame carrying `event`.
pub fn encode_event(event: &Event, mask: [u8; 4]) -> Vec<u8> {
    let (opcode, payload): (Opcode, Bytes) = match event {
        Event::Message {
            text: true,
            payload,
        } => (Opcode::Text, payload.clone()),
        Event::Message { payload, .. } => (Opcode::Binary, payload.clone()),
        Event::Ping(p) => (Opcode::Ping, p.clone()),
        Event::Pong(p) => (Opcode::Pong, p.clone()),
        Event::Close(f) => (Opcode::Close, close_payload(f.as_ref())),
    };
    client_frame(true, opcode, mask, &payload, LengthForm::Shortest)
}

fn close_payload(frame: Option<&CloseFrame>) -> Bytes {
    match frame {
        None => Bytes::new(),
        Some(f) => {
            let mut p = f.code.to_be_bytes().to_vec();
            p.extend_from_slice(f.reason.as_bytes());
            Bytes::from(p)
        }
    }
}

/// The input's header fields.
pub struct Setup<'a> {
    pub messages_mode: bool,
    pub max_piece: usize,
    pub seed: u64,
    pub limits: Limits,
    pub rest: &'a [u8],
}

impl Setup<'_> {
    pub fn parse(data: &[u8]) -> Option<Setup<'_>> {
        let [mode, piece, seed, frame, message, rest @ ..] = data else {
            return None;
        };
        Some(Setup {
            messages_mode: mode & 1 == 1,
            max_piece: usize::from(*piece) + 1,
            seed: u64::from(*seed),
            limits: Limits {
                max_frame: usize::from(*frame) * 8,
                max_message: usize::from(*message) * 16,
            },
            rest,
        })
    }
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let Some(setup) = Setup::parse(data) else {
        return;
    };
    let mut rng = Rng::new(setup.seed);
    let (wire, expected) = if setup.messages_mode {
        let frames = build_frames(setup.rest, &mut rng);
        let expected = model(setup.limits, &frames);
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.wire.iter().copied()).collect();
        (wire, Some(expected))
    } else {
        (setup.rest.to_vec(), None)
    };
    let whole = decode(setup.limits, &wire, || wire.len());
    let pieces = decode(setup.limits, &wire, || 1 + rng.below(setup.max_piece));
    assert_eq!(whole, pieces, "all at once vs in pieces");
    if let Some((events, error)) = expected {
        assert_eq!(pieces.events, events, "events vs the frames sent");
        assert_eq!(pieces.error, error, "error vs the frames sent");
        if error.is_none() {
            assert_eq!(pieces.consumed, wire.len());
            assert_eq!(pieces.buffered, 0);
        }
    }
}

/// A frame built in messages mode, with what it carries.
pub struct Built {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: Vec<u8>,
    pub wire: Vec<u8>,
}

/// Close codes a client may send (RFC 6455 §7.4), one of each range.
const CLOSE_CODES: [u16; 10] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 3000, 4999];

/// Most operations one input runs.
const MAX_OPS: usize = 64;

/// Messages-mode operations, each `kind len payload...`:
/// ```text
/// kind bits 0-2: 0/6/7 binary, 1 text, 2 ping, 3 pong, 4 close with code, 5 empty close
///      bits 3-4: length form (0 shortest, 1 16-bit, 2/3 64-bit)
///      bits 5-7: data messages: fragments minus one (a ping goes between fragments when
///                the generator says so)
/// len:           payload length (control frames: at most 125); fewer if the input ends
/// payload:       close: first byte picks the code, the rest (lossy UTF-8, cut to 123
///                bytes) is the reason
/// ```
pub fn build_frames(mut rest: &[u8], rng: &mut Rng) -> Vec<Built> {
    let mut frames = Vec::new();
    let mut ops = 0;
    while let [kind, len, tail @ ..] = rest {
        if ops == MAX_OPS {
            break;
        }
        ops += 1;
        let n = usize::from(*len).min(tail.len());
        let (payload, tail) = tail.split_at(n);
        rest = tail;
        let form = match (kind >> 3) & 3 {
            0 => LengthForm::Shortest,
            1 => LengthForm::Bits16,
            _ => LengthForm::Bits64,
        };
        let mut push = |fin, opcode, payload: Vec<u8>, rng: &mut Rng| {
            let mask = [0; 4].map(|_: u8| rng.below(256) as u8);
            let wire = client_frame(fin, opcode, mask, &payload, form);
            frames.push(Built {
                fin,
                opcode,
                payload,
                wire,
            });
        };
        match kind & 7 {
            2 => push(true, Opcode::Ping, payload[..n.min(125)].to_vec(), rng),
            3 => push(true, Opcode::Pong, payload[..n.min(125)].to_vec(), rng),
            4 => {
                let (code, reason) = match payload.split_first() {
                    Some((c, r)) => (CLOSE_CODES[usize::from(*c) % CLOSE_CODES.len()], r),
                    None => (1000, &[][..]),
                };
                let mut reason = String::from_utf8_lossy(reason).into_owned();
                while reason.len() > 123 {
                    reason.pop();
                }
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(reason.as_bytes());
                push(true, Opcode::Close, p, rng);
            }
            5 => push(true, Opcode::Close, Vec::new(), rng),
            k => {
                let opcode = if k == 1 { Opcode::Text } else { Opcode::Binary };
                let fragments = usize::from(kind >> 5) + 1;
                let mut cuts: Vec<usize> = (1..fragments).map(|_| rng.below(n + 1)).collect();
                cuts.sort_unstable();
                cuts.push(n);
                let mut from = 0;
                for (i, &to) in cuts.iter().enumerate() {
                    let fin = i + 1 == cuts.len();
                    let op = if i == 0 { opcode } else { Opcode::Continuation };
                    push(fin, op, payload[from..to].to_vec(), rng);
                    from = to;
                    if !fin && rng.below(2) == 0 {
                        push(true, Opcode::Ping, vec![i as u8], rng);
                    }
                }
            }
        }
    }
    frames
}

/// What RFC 6455 and the limits make of `frames`: the events, and the limit error at the
/// first frame too big for them (checked as each header arrives: frame size first, then the
/// message size).
pub fn model(limits: Limits, frames: &[Built]) -> (Vec<Event>, Option<DecodeError>) {
    let mut events = Vec::new();
    let mut partial: Option<(bool, Vec<u8>)> = None;
    for f in frames {
        let len = f.payload.len();
        if len > limits.max_frame {
            let err = DecodeError::FrameTooBig {
                len: len as u64,
                max: limits.max_frame,
            };
            return (events, Some(err));
        }
        let message_len = match f.opcode {
            Opcode::Text | Opcode::Binary => Some(len),
            Opcode::Continuation => Some(partial.as_ref().expect("built in order").1.len() + len),
            _ => None,
        };
        if message_len.is_some_and(|n| n > limits.max_message) {
            let err = DecodeError::MessageTooBig {
                max: limits.max_message,
            };
            return (events, Some(err));
        }
        let payload = Bytes::from(f.payload.clone());
        match f.opcode {
            Opcode::Ping => events.push(Event::Ping(payload)),
            Opcode::Pong => events.push(Event::Pong(payload)),
            Opcode::Close => events.push(Event::Close(match &f.payload[..] {
                [] => None,
                [hi, lo, reason @ ..] => Some(CloseFrame {
                    code: u16::from_be_bytes([*hi, *lo]),
                    reason: String::from_utf8(reason.to_vec()).expect("built as UTF-8"),
                }),
                [_] => unreachable!("never built"),
            })),
            Opcode::Text | Opcode::Binary => {
                partial = Some((f.opcode == Opcode::Text, f.payload.clone()))
            }
            Opcode::Continuation => partial
                .as_mut()
                .expect("built in order")
                .1
                .extend_from_slice(&f.payload),
        }
        if f.fin
            && matches!(
                f.opcode,
                Opcode::Text | Opcode::Binary | Opcode::Continuation
            )
        {
            let (text, data) = partial.take().expect("just set");
            events.push(Event::Message {
                text,
                payload: Bytes::from(data),
            });
        }
    }
    (events, None)
}
