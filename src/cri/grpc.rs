//! The pieces of gRPC-over-HTTP/2 and of the protobuf wire format that CRI interception needs,
//! sans-IO: message framing, status trailers, and replacing one string field of an encoded
//! message while keeping every other byte.
//!
//! Everything else the interceptor forwards without looking at it.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};

/// `grpc-status` header or trailer.
pub const GRPC_STATUS: &str = "grpc-status";
/// `grpc-message` header or trailer (percent-encoded UTF-8).
pub const GRPC_MESSAGE: &str = "grpc-message";
/// `grpc-encoding`: the compression of the sender's messages.
pub const GRPC_ENCODING: &str = "grpc-encoding";
/// `grpc-accept-encoding`: the compressions the sender can read.
pub const GRPC_ACCEPT_ENCODING: &str = "grpc-accept-encoding";
/// Content type of every gRPC message.
pub const CONTENT_TYPE_GRPC: &str = "application/grpc";

/// Bytes before each message.
///
/// ```text
/// +------------+----------------------------+----------------------------+
/// | compressed | length: u32, big-endian    | message: `length` bytes    |
/// | 1 byte 0/1 | 4 bytes                    |                            |
/// +------------+----------------------------+----------------------------+
/// ```
pub const PREFIX_LEN: usize = 5;

/// What is wrong with the body of a unary call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The body ends inside a prefix or a message.
    #[error("the body ends inside a message ({have} of {need} bytes)")]
    Truncated { have: usize, need: usize },
    /// The body holds no message at all.
    #[error("the body holds no message")]
    Empty,
    /// More than the one message a unary call carries.
    #[error("the body holds more than one message")]
    Trailing,
    /// The message is compressed; the bridge decodes only uncompressed messages.
    #[error("the message is compressed")]
    Compressed,
    /// The compressed flag is neither 0 nor 1.
    #[error("invalid compressed flag {0}")]
    BadFlag(u8),
    /// The declared length exceeds the cap.
    #[error("the message declares {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
}

/// The one uncompressed message of a unary call's body (request or response). The length is
/// checked against `max` before anything is sliced.
pub fn single_message(body: &[u8], max: usize) -> Result<&[u8], FramingError> {
    if body.is_empty() {
        return Err(FramingError::Empty);
    }
    if body.len() < PREFIX_LEN {
        return Err(FramingError::Truncated {
            have: body.len(),
            need: PREFIX_LEN,
        });
    }
    let flag = body[0];
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if len > max {
        return Err(FramingError::TooLarge { len, max });
    }
    match flag {
        0 => {}
        1 => return Err(FramingError::Compressed),
        other => return Err(FramingError::BadFlag(other)),
    }
    let rest = &body[PREFIX_LEN..];
    if rest.len() < len {
        return Err(FramingError::Truncated {
            have: rest.len(),
            need: len,
        });
    }
    if rest.len() > len {
        return Err(FramingError::Trailing);
    }
    Ok(rest)
}

/// `message` with its (uncompressed) prefix.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + message.len());
    out.put_u8(0);
    // Callers pass messages they built from ones within the u32 range plus one URL.
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// The gRPC status codes the bridge sends itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    InvalidArgument = 3,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

/// `grpc-status` (and `grpc-message` when not empty) for a status the bridge answers itself.
pub fn status_headers(code: Code, message: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(GRPC_STATUS, HeaderValue::from(code as u16));
    if !message.is_empty() {
        let encoded = percent_encode(message);
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            h.insert(GRPC_MESSAGE, v);
        }
    }
    h
}

/// The numeric `grpc-status` of a header map, if present and numeric.
pub fn status_code(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable ASCII, and `%`, become
/// `%XX`.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What is wrong with an encoded protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated varint")]
    Varint,
    #[error("field number 0")]
    FieldZero,
    #[error("unsupported wire type {0} (groups are not used by CRI)")]
    WireType(u8),
    #[error("a field runs past the end of the message")]
    Truncated,
    #[error("field {field} has wire type {wire_type}, not length-delimited")]
    NotLengthDelimited { field: u32, wire_type: u8 },
}

/// Reads a varint at `*pos`; at most 10 bytes.
fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos).ok_or(WireError::Varint)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::Varint)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `message` with every occurrence of the string field `field` replaced by `value`, every other
/// field (unknown ones included) copied byte for byte in its place. A message without the field
/// gets it appended. Re-encoding the decoded struct instead would drop fields newer than
/// [`super::proto`].
///
/// ```text
/// field = key value
/// key   = varint (field_number << 3 | wire_type)
/// value = varint (type 0) | 8 bytes (type 1) | varint length + bytes (type 2) | 4 bytes (type 5)
/// ```
pub fn replace_string_field(message: &[u8], field: u32, value: &str) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(message.len() + value.len() + 8);
    let mut pos = 0;
    let mut replaced = false;
    let put_field = |out: &mut Vec<u8>| {
        put_varint(out, (u64::from(field) << 3) | 2);
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value.as_bytes());
    };
    while pos < message.len() {
        let start = pos;
        let key = read_varint(message, &mut pos)?;
        let number = u32::try_from(key >> 3).map_err(|_| WireError::Varint)?;
        if number == 0 {
            return Err(WireError::FieldZero);
        }
        let wire_type = (key & 7) as u8;
        let skip = match wire_type {
            0 => {
                read_varint(message, &mut pos)?;
                0
            }
            1 => 8,
            2 => usize::try_from(read_varint(message, &mut pos)?)
                .map_err(|_| WireError::Truncated)?,
            5 => 4,
            other => return Err(WireError::WireType(other)),
        };
        let end = pos.checked_add(skip).ok_or(WireError::Truncated)?;
        if end > message.len() {
            return Err(WireError::Truncated);
        }
        pos = end;
        if number == field {
            if wire_type != 2 {
                return Err(WireError::NotLengthDelimited { field, wire_type });
            }
            put_field(&mut out);
            replaced = true;
        } else {
            out.extend_from_slice(&message[start..end]);
        }
    }
    if !replaced {
        put_field(&mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::proto::ExecResponse;
    use prost::Message;

    #[test]
    fn single_message_round_trips_with_frame() {
        let framed = frame(b"hello");
        assert_eq!(&framed[..], b"\0\0\0\0\x05hello");
        assert_eq!(single_message(&framed, 16), Ok(&b"hello"[..]));
        // An empty message is a valid message (an empty request, say).
        assert_eq!(single_message(&frame(b""), 16), Ok(&b""[..]));
    }

    #[test]
    fn single_message_refuses_what_it_cannot_decode() {
        assert_eq!(single_message(b"", 16), Err(FramingError::Empty));
        assert_eq!(
            single_message(b"\0\0\0", 16),
            Err(FramingError::Truncated { have: 3, need: 5 })
        );
        assert_eq!(
            single_message(b"\0\0\0\0\x05hell", 16),
            Err(FramingError::Truncated { have: 4, need: 5 })
        );
        assert_eq!(
            single_message(b"\0\0\0\0\x01ab", 16),
            Err(FramingError::Trailing)
        );
        assert_eq!(
            single_message(b"\x01\0\0\0\x01a", 16),
            Err(FramingError::Compressed)
        );
        assert_eq!(
            single_message(b"\x02\0\0\0\x01a", 16),
            Err(FramingError::BadFlag(2))
        );
        // The length is checked before anything else is believed.
        assert_eq!(
            single_message(b"\0\xff\xff\xff\xff", 16),
            Err(FramingError::TooLarge {
                len: u32::MAX as usize,
                max: 16
            })
        );
    }

    #[test]
    fn percent_encoding_follows_grpc() {
        assert_eq!(percent_encode("plain text"), "plain text");
        assert_eq!(percent_encode("100%"), "100%25");
        assert_eq!(percent_encode("a\nb"), "a%0Ab");
        assert_eq!(percent_encode("ü"), "%C3%BC");
        let h = status_headers(Code::ResourceExhausted, "full");
        assert_eq!(status_code(&h), Some(8));
        assert_eq!(h.get(GRPC_MESSAGE).unwrap(), "full");
    }

    #[test]
    fn url_replacement_keeps_unknown_fields_in_place() {
        let original = ExecResponse {
            url: "http://127.0.0.1:1/exec/abcdEFGH".into(),
        }
        .encode_to_vec();
        // Unknown fields around it: a varint (2), fixed64 (3), bytes (4), fixed32 (5).
        let mut msg = vec![0x10, 0x96, 0x01];
        msg.extend_from_slice(&[0x19, 1, 2, 3, 4, 5, 6, 7, 8]);
        msg.extend_from_slice(&original);
        msg.extend_from_slice(&[0x22, 2, b'h', b'i', 0x2d, 9, 9, 9, 9]);
        let out = replace_string_field(&msg, 1, "http://bridge/exec/T").unwrap();
        let decoded = ExecResponse::decode(&out[..]).unwrap();
        assert_eq!(decoded.url, "http://bridge/exec/T");
        let mut expected = vec![0x10, 0x96, 0x01];
        expected.extend_from_slice(&[0x19, 1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(
            &ExecResponse {
                url: "http://bridge/exec/T".into(),
            }
            .encode_to_vec(),
        );
        expected.extend_from_slice(&[0x22, 2, b'h', b'i', 0x2d, 9, 9, 9, 9]);
        assert_eq!(out, expected);
    }

    #[test]
    fn url_replacement_appends_a_missing_field_and_replaces_repeats() {
        assert_eq!(replace_string_field(&[], 1, "u").unwrap(), [0x0a, 1, b'u']);
        let twice = [0x0a, 1, b'a', 0x0a, 1, b'b'];
        assert_eq!(
            replace_string_field(&twice, 1, "u").unwrap(),
            [0x0a, 1, b'u', 0x0a, 1, b'u']
        );
    }

    #[test]
    fn url_replacement_rejects_malformed_messages() {
        assert_eq!(
            replace_string_field(&[0x0a, 5, b'a'], 1, "u"),
            Err(WireError::Truncated)
        );
        assert_eq!(
            replace_string_field(&[0x80], 1, "u"),
            Err(WireError::Varint)
        );
        assert_eq!(
            replace_string_field(&[0x08, 1], 1, "u"),
            Err(WireError::NotLengthDelimited {
                field: 1,
                wire_type: 0
            })
        );
        assert_eq!(
            replace_string_field(&[0x0b], 1, "u"),
            Err(WireError::WireType(3))
        );
        assert_eq!(
            replace_string_field(&[0x02, 0], 1, "u"),
            Err(WireError::FieldZero)
        );
        let huge_len = [
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(
            replace_string_field(&huge_len, 1, "u"),
            Err(WireError::Truncated)
        );
    }
}
