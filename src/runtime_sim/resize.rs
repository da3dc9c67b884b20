//! Decoding of the remote command `resize` stream (protocol.md §3.5), sans-IO.
//!
//! The stream carries JSON objects `{"Width":W,"Height":H}`, split across or packed into DATA
//! frames at will. The kubelet lib decodes them with Go's streaming `json.Decoder` into a
//! `TerminalSize{Width, Height uint16}`: field names match case-insensitively, unknown fields
//! are ignored, `null` decodes to a zero size, and the first error ends resize handling.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Bytes buffered without a complete JSON value before the decoder gives up; real clients
/// send objects of about 30 bytes.
pub const MAX_PENDING: usize = 64 * 1024;

/// A terminal size as client-go sends it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TerminalSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

impl<'de> Deserialize<'de> for TerminalSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl<'de> Visitor<'de> for SizeVisitor {
            type Value = TerminalSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TerminalSize object")
            }
            // Go leaves the struct untouched for a JSON null.
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

/// Why resize decoding stopped.
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
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, ResizeError> {
        if self.failed {
            return Err(ResizeError::Failed);
        }
        self.pending.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        let result = {
            let mut values =
                serde_json::Deserializer::from_slice(&self.pending).into_iter::<TerminalSize>();
            loop {
                match values.next() {
                    Some(Ok(size)) => {
                        sizes.push(size);
                        consumed = values.byte_offset();
                    }
                    // An incomplete value: wait for more bytes.
                    Some(Err(e)) if e.is_eof() => break Ok(()),
                    Some(Err(e)) => break Err(ResizeError::Decode(e)),
                    None => {
                        consumed = self.pending.len();
                        break Ok(());
                    }
                }
            }
        };
        self.pending.drain(..consumed);
        if result.is_ok() && self.pending.len() > MAX_PENDING {
            self.failed = true;
            return Err(ResizeError::TooLong);
        }
        match result {
            Ok(()) => Ok(sizes),
            Err(e) => {
                self.failed = true;
                // Go delivers each size before it meets the bad value: hand those out now and
                // report the end on the next push.
                if sizes.is_empty() { Err(e) } else { Ok(sizes) }
            }
        }
    }

    /// Whether decoding has ended because of an error.
    pub fn has_failed(&self) -> bool {
        self.failed
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
            br#"{"Width":"80"}"#,
            b"[1]",
            b"}",
        ] {
            assert!(ResizeDecoder::new().push(bad).is_err(), "{bad:?}");
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
