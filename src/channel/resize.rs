//! Terminal sizes: the resize JSON stream, sans-IO (protocol.md §3.5, §4.7, §5.3).
//!
//! The same stream arrives on the WebSocket resize channel (`04` + bytes, v5) and on the SPDY
//! `resize` stream: JSON objects, split across or packed into messages at will.
//!
//! ```text
//!  04 {"Width":80,"Height":24}\n            client-go: one object per message, newline
//!  04 {"Width":80,"Height":24}              kube-rs: no newline
//!  04 {"width":80,"hei | 04 ght":24}{"Wi...   also valid: split and packed
//! ```
//!
//! Kubernetes decodes it with Go's streaming `json.Decoder` into
//! `TerminalSize{Width, Height uint16}`: field names match case-insensitively, unknown fields
//! are ignored, `null` decodes to a zero size, and the first error ends resize handling for
//! the rest of the session. Upstream the bridge always sends the canonical form,
//! [`TerminalSize::to_canonical_json`].

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Bytes kept without a complete JSON value before the decoder gives up; real clients send
/// objects of about 30 bytes. This bounds what a misbehaving peer can make us hold.
pub const MAX_PENDING: usize = 4 * 1024;

/// A terminal size as client-go sends it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TerminalSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

impl TerminalSize {
    /// The form client-go writes on the SPDY resize stream, which the API server's translator
    /// re-encodes every size into, whatever the client sent (C-39, C-40):
    ///
    /// ```text
    ///  {"Width":W,"Height":H}\n      decimal, no spaces, one trailing newline
    /// ```
    pub fn to_canonical_json(&self) -> String {
        format!("{{\"Width\":{},\"Height\":{}}}\n", self.width, self.height)
    }
}

impl<'de> Deserialize<'de> for TerminalSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl<'de> Visitor<'de> for SizeVisitor {
            type Value = TerminalSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TerminalSize object")
            }
            // Go leaves the (fresh, zero) struct untouched for a JSON null.
            fn visit_unit<E: de::Error>(self) -> Result<TerminalSize, E> {
                Ok(TerminalSize::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TerminalSize, A::Error> {
                let mut size = TerminalSize::default();
                // Fields in document order, so that the last of `Width`/`width` wins as in Go.
                while let Some(key) = map.next_key::<String>()? {
                    if key.eq_ignore_ascii_case("width") {
                        if let Some(w) = map.next_value::<Option<u16>>()? {
                            size.width = w;
                        }
                    } else if key.eq_ignore_ascii_case("height") {
                        if let Some(h) = map.next_value::<Option<u16>>()? {
                            size.height = h;
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(size)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// Why resize decoding stopped. The fault lies with whoever wrote the stream: the WebSocket
/// client on channel 4, or the SPDY peer on the resize stream.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// The stream is not a sequence of `TerminalSize` objects.
    #[error("invalid resize message: {0}")]
    Decode(#[from] serde_json::Error),
    /// More than [`MAX_PENDING`] bytes without a complete value.
    #[error("resize message longer than {MAX_PENDING} bytes")]
    TooLong,
    /// An earlier error already ended decoding.
    #[error("resize decoding already failed")]
    Failed,
}

/// Incremental decoder: push bytes, get the sizes completed by them.
///
/// It keeps at most [`MAX_PENDING`] bytes between calls (the unfinished object), and nothing
/// once decoding has failed.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    pending: Vec<u8>,
    failed: bool,
}

impl ResizeDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `data` and returns every size it completes. After the first error every call
    /// fails with [`ResizeError::Failed`].
    ///
    /// Sizes that precede a bad value in the same push are still returned (Go hands each one
    /// over before it meets the bad value); the error itself then shows as
    /// [`ResizeError::Failed`] on the next push, and [`has_failed`](Self::has_failed) is true
    /// at once.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, ResizeError> {
        if self.failed {
            return Err(ResizeError::Failed);
        }
        let mut sizes = Vec::new();
        // Without a partial object in hand, decode straight from `data`: the common case copies
        // nothing, and a huge message is never duplicated.
        let from_pending = !self.pending.is_empty();
        let (consumed, result) = if from_pending {
            self.pending.extend_from_slice(data);
            decode_values(&self.pending, &mut sizes)
        } else {
            decode_values(data, &mut sizes)
        };
        let total = if from_pending {
            self.pending.len()
        } else {
            data.len()
        };
        let result = result.and_then(|()| {
            if total - consumed > MAX_PENDING {
                Err(ResizeError::TooLong)
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                if from_pending {
                    self.pending.drain(..consumed);
                    // Do not keep the capacity a large message needed.
                    if self.pending.capacity() > 2 * MAX_PENDING {
                        self.pending.shrink_to(MAX_PENDING);
                    }
                } else {
                    self.pending.extend_from_slice(&data[consumed..]);
                }
                Ok(sizes)
            }
            Err(e) => {
                self.failed = true;
                self.pending = Vec::new();
                if sizes.is_empty() { Err(e) } else { Ok(sizes) }
            }
        }
    }

    /// Whether decoding has ended because of an error.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Bytes held for an unfinished object (at most [`MAX_PENDING`]).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Decodes the complete values at the start of `buf` into `sizes`. Returns how many bytes they
/// (and any whitespace after them) used, and whether decoding stopped at an error rather than
/// at the end of the input or inside an unfinished value.
fn decode_values(buf: &[u8], sizes: &mut Vec<TerminalSize>) -> (usize, Result<(), ResizeError>) {
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
    let mut consumed = 0;
    loop {
        match values.next() {
            Some(Ok(size)) => {
                sizes.push(size);
                consumed = values.byte_offset();
            }
            // An unfinished value: wait for more bytes.
            Some(Err(e)) if e.is_eof() => return (consumed, Ok(())),
            Some(Err(e)) => return (consumed, Err(ResizeError::Decode(e))),
            None => return (buf.len(), Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(width: u16, height: u16) -> TerminalSize {
        TerminalSize { width, height }
    }

    #[test]
    fn objects_split_across_and_packed_into_frames_are_decoded() {
        let mut d = ResizeDecoder::new();
        assert_eq!(d.push(b"{\"Width\":80,").unwrap(), vec![]);
        assert_eq!(
            d.push(b"\"Height\":24}\n{\"Width\":100,\"Height\":30}\n{\"Wid")
                .unwrap(),
            vec![size(80, 24), size(100, 30)]
        );
        assert_eq!(d.push(b"th\":1,\"Height\":2}").unwrap(), vec![size(1, 2)]);
    }

    #[test]
    fn field_names_match_case_insensitively_and_unknown_fields_are_ignored() {
        let mut d = ResizeDecoder::new();
        assert_eq!(
            d.push(br#"{"width":10,"HEIGHT":20,"extra":{"a":[1,2]}} null"#)
                .unwrap(),
            vec![size(10, 20), size(0, 0)]
        );
    }

    #[test]
    fn first_decode_error_ends_resize_handling() {
        let mut d = ResizeDecoder::new();
        assert!(d.push(br#"{"Width":70000,"Height":1}"#).is_err());
        assert!(d.has_failed());
        assert!(matches!(
            d.push(br#"{"Width":1,"Height":1}"#),
            Err(ResizeError::Failed)
        ));
    }

    #[test]
    fn sizes_before_an_error_are_still_delivered() {
        let mut d = ResizeDecoder::new();
        assert_eq!(
            d.push(br#"{"Width":1,"Height":2} "x""#).unwrap(),
            vec![size(1, 2)]
        );
        assert!(d.has_failed());
    }

    #[test]
    fn non_integer_and_negative_values_are_errors() {
        for bad in [
            &br#"{"Width":80.0}"#[..],
            br#"{"Width":-1}"#,
            br#"{"Width":-0}"#,
            br#"{"Width":1e2}"#,
            br#"{"Width":"80"}"#,
            b"[1]",
            b"}",
        ] {
            assert!(ResizeDecoder::new().push(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn canonical_json_is_exact() {
        assert_eq!(
            size(80, 24).to_canonical_json(),
            "{\"Width\":80,\"Height\":24}\n"
        );
        assert_eq!(
            size(65535, 0).to_canonical_json(),
            "{\"Width\":65535,\"Height\":0}\n"
        );
    }

    #[test]
    fn lower_case_resize_keys_become_canonical() {
        let sizes = ResizeDecoder::new()
            .push(br#"{"width":100,"height":30}"#)
            .unwrap();
        assert_eq!(sizes.len(), 1);
        assert_eq!(
            sizes[0].to_canonical_json(),
            "{\"Width\":100,\"Height\":30}\n"
        );
    }

    #[test]
    fn later_duplicate_field_wins_and_null_fields_keep_zero() {
        let mut d = ResizeDecoder::new();
        assert_eq!(
            d.push(br#"{"Width":1,"width":2,"Height":null}"#).unwrap(),
            vec![size(2, 0)]
        );
    }

    #[test]
    fn whitespace_between_objects_is_not_retained() {
        let mut d = ResizeDecoder::new();
        let mut msg = br#"{"Width":1,"Height":2}"#.to_vec();
        msg.extend(vec![b'\n'; 3 * MAX_PENDING]);
        assert_eq!(d.push(&msg).unwrap(), vec![size(1, 2)]);
        assert_eq!(d.pending_len(), 0);
        assert_eq!(
            d.push(br#"{"Width":3,"Height":4}"#).unwrap(),
            vec![size(3, 4)]
        );
    }

    #[test]
    fn only_the_unfinished_object_is_kept_between_pushes() {
        let mut d = ResizeDecoder::new();
        assert_eq!(
            d.push(br#"{"Width":1,"Height":1}{"Width":2,"#).unwrap(),
            vec![size(1, 1)]
        );
        assert_eq!(d.pending_len(), br#"{"Width":2,"#.len());
        // A large message completing it and carrying many more objects leaves nothing behind.
        let mut msg = br#""Height":2}"#.to_vec();
        for _ in 0..1000 {
            msg.extend_from_slice(br#"{"Width":3,"Height":3}"#);
        }
        let sizes = d.push(&msg).unwrap();
        assert_eq!(sizes.len(), 1001);
        assert_eq!(sizes[0], size(2, 2));
        assert_eq!(d.pending_len(), 0);
    }

    #[test]
    fn decode_error_releases_the_pending_bytes() {
        let mut d = ResizeDecoder::new();
        d.push(br#"{"Width":"#).unwrap();
        assert!(d.pending_len() > 0);
        assert!(d.push(br#"x}"#).is_err());
        assert_eq!(d.pending_len(), 0);
        // Later data is refused without being buffered.
        assert!(matches!(d.push(&[b' '; 100]), Err(ResizeError::Failed)));
        assert_eq!(d.pending_len(), 0);
    }

    #[test]
    fn overlong_unfinished_object_in_one_message_is_refused() {
        let mut msg = br#"{"Width":1,"x":""#.to_vec();
        msg.extend(vec![b'a'; MAX_PENDING]);
        let mut d = ResizeDecoder::new();
        assert!(matches!(d.push(&msg), Err(ResizeError::TooLong)));
        assert!(d.has_failed());
        assert_eq!(d.pending_len(), 0);
    }

    #[test]
    fn unfinished_object_up_to_the_cap_is_kept() {
        let mut msg = br#"{"Width":1,"x":""#.to_vec();
        msg.resize(MAX_PENDING, b'a');
        let mut d = ResizeDecoder::new();
        assert_eq!(d.push(&msg).unwrap(), vec![]);
        assert_eq!(d.pending_len(), MAX_PENDING);
        assert_eq!(d.push(br#"","Height":5}"#).unwrap(), vec![size(1, 5)]);
    }

    proptest::proptest! {
        #[test]
        fn any_split_decodes_like_the_whole(
            sizes in proptest::collection::vec((0u16.., 0u16.., proptest::bool::ANY), 0..8),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let mut stream = Vec::new();
            for (w, h, lower) in &sizes {
                let obj = if *lower {
                    format!("{{\"width\":{w}, \"height\":{h}}}")
                } else {
                    size(*w, *h).to_canonical_json()
                };
                stream.extend_from_slice(obj.as_bytes());
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            let mut d = ResizeDecoder::new();
            let mut got = Vec::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                got.extend(d.push(&stream[at..cut]).unwrap());
                proptest::prop_assert!(d.pending_len() <= MAX_PENDING);
                at = cut;
            }
            let want: Vec<TerminalSize> = sizes.iter().map(|(w, h, _)| size(*w, *h)).collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(d.pending_len(), 0);
        }
    }

    #[test]
    fn endless_value_is_refused() {
        let mut d = ResizeDecoder::new();
        d.push(b"{\"Width\":").unwrap();
        let filler = vec![b' '; MAX_PENDING + 1];
        assert!(matches!(d.push(&filler), Err(ResizeError::TooLong)));
    }
}
