//! The runtime's response head, refusal body framing and chunked decoding (sans-IO).

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::status::Status;

/// Most header lines accepted in a response head. A 101 carries four or five; Go's
/// `http.Error` refusals about six.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 128;

/// Longest chunk-size line (size, extensions, CRLF) accepted in a chunked refusal body.
const MAX_CHUNK_LINE: usize = 4096;

/// Returns the length of the response head in `buf` (up to and including the blank line), if
/// it is complete. The search restarts at `from`, so a caller that keeps reading passes the
/// previous buffer length and the scan stays linear. Accepts bare-LF line ends, as Go does.
pub(crate) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // A terminator is "\n\n" or "\n\r\n"; its first byte may sit up to two bytes before `from`.
    let start = from.saturating_sub(2);
    let mut i = start;
    while let Some(pos) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + pos;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Parses a complete response head (as delimited by [`find_head_end`]).
pub(crate) fn parse_head(head: &[u8]) -> Result<Head, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete response head".into()),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("more than {MAX_RESPONSE_HEADERS} header lines"));
        }
        Err(e) => return Err(e.to_string()),
    }
    let code = response.code.ok_or("no status code")?;
    let status = StatusCode::from_u16(code).map_err(|_| format!("bad status code {code}"))?;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| "invalid header name".to_owned())?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| format!("invalid value in header {name}"))?;
        headers.append(name, value);
    }
    Ok(Head { status, headers })
}

/// The first value of `name`, lower-cased, as Go's `Header.Get` followed by `ToLower`.
pub(crate) fn first_lower(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
}

/// Longest runtime-supplied text (a header value, a redirect location) put in an error message:
/// the response head may be up to a megabyte, a log line should not.
pub(crate) const MAX_ERROR_FIELD_CHARS: usize = 256;

/// `text` cut to [`MAX_ERROR_FIELD_CHARS`] characters, with `…` marking a cut.
pub(crate) fn bounded(mut text: String) -> String {
    if let Some((i, _)) = text.char_indices().nth(MAX_ERROR_FIELD_CHARS) {
        text.truncate(i);
        text.push('…');
    }
    text
}

/// How the body of a non-101 response is delimited (RFC 9112 §6.3, as Go's reader applies it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked` (last coding).
    Chunked,
    /// Neither: the body runs to EOF.
    UntilEof,
}

impl BodyFraming {
    pub(crate) fn of(method: &Method, status: StatusCode, headers: &HeaderMap) -> Self {
        if *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return BodyFraming::Empty;
        }
        if let Some(te) = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
        {
            let last = te
                .to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .map(|v| v.trim().to_ascii_lowercase());
            return if last.as_deref() == Some("chunked") {
                BodyFraming::Chunked
            } else {
                BodyFraming::UntilEof
            };
        }
        match headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilEof,
        }
    }
}

/// A malformed chunked body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ChunkError(pub &'static str);

/// Decoder for `Transfer-Encoding: chunked`, bounded by a caller-given output limit.
///
/// ```text
/// chunk      = chunk-size [ ";" ext ] CRLF  chunk-data CRLF
/// last-chunk = "0" [ ";" ext ] CRLF  [ trailers ]  CRLF    (trailers are not read)
/// ```
#[derive(Debug, Default)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Done,
}

impl ChunkedDecoder {
    /// Consumes what it can of `input`, appending chunk data to `out` without letting it grow
    /// past `limit`. Returns `Ok(true)` once the last chunk is seen or `out` is full, and
    /// `Ok(false)` when it needs more input.
    pub(crate) fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<bool, ChunkError> {
        loop {
            if out.len() >= limit {
                return Ok(true);
            }
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Size => {
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        if input.len() > MAX_CHUNK_LINE {
                            return Err(ChunkError("chunk size line too long"));
                        }
                        return Ok(false);
                    };
                    if nl > MAX_CHUNK_LINE {
                        return Err(ChunkError("chunk size line too long"));
                    }
                    let size = parse_chunk_size(&input[..nl])?;
                    input.advance(nl + 1);
                    self.state = if size == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    let room = limit - out.len();
                    out.extend_from_slice(&input[..take.min(room)]);
                    input.advance(take);
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => match input.first() {
                    None => return Ok(false),
                    Some(b'\n') => {
                        input.advance(1);
                        self.state = ChunkState::Size;
                    }
                    Some(b'\r') => match input.get(1) {
                        None => return Ok(false),
                        Some(b'\n') => {
                            input.advance(2);
                            self.state = ChunkState::Size;
                        }
                        Some(_) => return Err(ChunkError("missing CRLF after chunk data")),
                    },
                    Some(_) => return Err(ChunkError("missing CRLF after chunk data")),
                },
            }
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return Err(ChunkError("bad chunk size"));
    }
    let mut size: u64 = 0;
    for &b in digits {
        let d = (b as char)
            .to_digit(16)
            .ok_or(ChunkError("bad chunk size"))?;
        size = (size << 4) | u64::from(d);
    }
    Ok(size)
}

/// The body of a refusal, decoded the way client-go decodes it (protocol.md §2.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalBody {
    /// The body is a `metav1.Status` JSON object; client-go's error *is* this Status.
    Status(Box<Status>),
    /// Any other body: lossy UTF-8, surrounding whitespace trimmed, at most
    /// [`super::UpstreamConfig::max_error_body_bytes`] bytes before trimming.
    Text(String),
}

impl RefusalBody {
    /// Decodes a refusal body. A JSON object counts as a Status when it has a `status` field or
    /// `kind: Status`, and its fields have the Status types.
    pub fn decode(body: &[u8]) -> Self {
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
            let looks_like_status = map.contains_key("status")
                || map.get("kind").and_then(|k| k.as_str()) == Some("Status");
            if looks_like_status
                && let Ok(status) = serde_json::from_value::<Status>(serde_json::Value::Object(map))
            {
                return RefusalBody::Status(Box::new(status));
            }
        }
        RefusalBody::Text(String::from_utf8_lossy(body).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_across_reads_and_with_bare_lf() {
        let full = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\n\r\n\x80\x03";
        let end = full.len() - 2;
        assert_eq!(find_head_end(full, 0), Some(end));
        // Every split point finds the same end when the scan resumes at the old length.
        for split in 0..full.len() {
            let first = find_head_end(&full[..split], 0);
            if first.is_none() {
                assert_eq!(find_head_end(full, split), Some(end), "split {split}");
            }
        }
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\nA: b\n\nbody", 0), Some(22));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n", 0), None);
    }

    #[test]
    fn head_parses_into_status_and_headers() {
        let head = parse_head(
            b"HTTP/1.1 403 Forbidden\r\nX-Accepted-Stream-Protocol-Versions: a\r\n\
              X-Accepted-Stream-Protocol-Versions: b\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.status, StatusCode::FORBIDDEN);
        let values: Vec<_> = head
            .headers
            .get_all("x-accepted-stream-protocol-versions")
            .iter()
            .collect();
        assert_eq!(values, ["a", "b"]);
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn error_fields_are_bounded() {
        assert_eq!(bounded("short".into()), "short");
        let long = bounded("é".repeat(MAX_ERROR_FIELD_CHARS + 10));
        assert_eq!(long.chars().count(), MAX_ERROR_FIELD_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn framing_follows_go_rules() {
        let mut h = HeaderMap::new();
        let post = Method::POST;
        assert_eq!(
            BodyFraming::of(&post, StatusCode::NOT_FOUND, &h),
            BodyFraming::UntilEof
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("19"));
        assert_eq!(
            BodyFraming::of(&post, StatusCode::NOT_FOUND, &h),
            BodyFraming::Length(19)
        );
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert_eq!(
            BodyFraming::of(&post, StatusCode::NOT_FOUND, &h),
            BodyFraming::Chunked
        );
        assert_eq!(
            BodyFraming::of(&Method::HEAD, StatusCode::NOT_FOUND, &h),
            BodyFraming::Empty
        );
        assert_eq!(
            BodyFraming::of(&post, StatusCode::NO_CONTENT, &h),
            BodyFraming::Empty
        );
    }

    fn decode_all(wire: &[u8], limit: usize) -> (Result<bool, ChunkError>, Vec<u8>) {
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut input = BytesMut::new();
        let mut result = Ok(false);
        // Feed one byte at a time: the decoder must cope with any split.
        for &b in wire {
            input.extend_from_slice(&[b]);
            result = dec.decode(&mut input, &mut out, limit);
            if !matches!(result, Ok(false)) {
                break;
            }
        }
        (result, out)
    }

    #[test]
    fn chunked_body_decodes_byte_by_byte() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
        let (result, out) = decode_all(wire, 1024);
        assert_eq!(result, Ok(true));
        assert_eq!(out, b"hello, world");
        let (result, out) = decode_all(b"3\nabc\n0\n\n", 1024);
        assert_eq!(result, Ok(true));
        assert_eq!(out, b"abc");
    }

    #[test]
    fn chunked_body_stops_at_the_limit() {
        let (result, out) = decode_all(b"a\r\n0123456789\r\n0\r\n\r\n", 4);
        assert_eq!(result, Ok(true));
        assert_eq!(out, b"0123");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        assert!(decode_all(b"zz\r\n", 64).0.is_err());
        assert!(decode_all(b"2\r\nabX", 64).0.is_err());
        assert!(decode_all(b"11111111111111111\r\n", 64).0.is_err());
        let long = vec![b'1'; MAX_CHUNK_LINE + 2];
        assert!(decode_all(&long, 64).0.is_err());
    }

    #[test]
    fn refusal_body_is_status_only_when_it_looks_like_one() {
        let status = RefusalBody::decode(
            br#" {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"m","reason":"Forbidden","code":403} "#,
        );
        match status {
            RefusalBody::Status(s) => {
                assert_eq!(s.code, 403);
                assert_eq!(s.message, "m");
            }
            other => panic!("expected a Status, got {other:?}"),
        }
        assert!(matches!(
            RefusalBody::decode(br#"{"status":"Failure","message":"x"}"#),
            RefusalBody::Status(_)
        ));
        assert_eq!(
            RefusalBody::decode(br#"{"message":"no status field"}"#),
            RefusalBody::Text(r#"{"message":"no status field"}"#.into())
        );
        assert_eq!(
            RefusalBody::decode(br#"{"status":42}"#),
            RefusalBody::Text(r#"{"status":42}"#.into())
        );
        assert_eq!(
            RefusalBody::decode(b"\n 404 page not found\n"),
            RefusalBody::Text("404 page not found".into())
        );
        assert_eq!(
            RefusalBody::decode(b"bad \xff byte"),
            RefusalBody::Text("bad \u{fffd} byte".into())
        );
    }
}
