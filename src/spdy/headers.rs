//! SPDY/3 name/value header blocks, uncompressed.
//!
//! ```text
//! +------------------------------------+
//! | number of name/value pairs (32)    |
//! +------------------------------------+
//! | length of name (32) | name ...     |  lower-case ASCII
//! | length of value (32)| value ...    |  several values are joined with NUL
//! +------------------------------------+  ... repeated for each pair
//! ```
//!
//! spdystream allocates whatever a length field says; we check every length against
//! [`HeaderLimits`] before we look at, or allocate for, the bytes behind it.

use thiserror::Error;

/// Caps on a decoded (inflated) header block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Largest inflated block, in bytes. Default 64 KiB: Kubernetes blocks are under 100 bytes.
    pub max_block: usize,
    /// Most name/value pairs in one block. Default 64; Kubernetes sends at most 3.
    pub max_pairs: usize,
    /// Longest name, in bytes. Default 256.
    pub max_name: usize,
    /// Longest value, in bytes. Default 16 KiB.
    pub max_value: usize,
}

impl HeaderLimits {
    /// Default for [`max_block`](Self::max_block).
    pub const DEFAULT_MAX_BLOCK: usize = 64 * 1024;
    /// Default for [`max_pairs`](Self::max_pairs).
    pub const DEFAULT_MAX_PAIRS: usize = 64;
    /// Default for [`max_name`](Self::max_name).
    pub const DEFAULT_MAX_NAME: usize = 256;
    /// Default for [`max_value`](Self::max_value).
    pub const DEFAULT_MAX_VALUE: usize = 16 * 1024;
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            max_block: Self::DEFAULT_MAX_BLOCK,
            max_pairs: Self::DEFAULT_MAX_PAIRS,
            max_name: Self::DEFAULT_MAX_NAME,
            max_value: Self::DEFAULT_MAX_VALUE,
        }
    }
}

/// What was wrong with a header block.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeaderError {
    #[error("header block ends inside a length field or value")]
    Truncated,
    #[error("header block has {extra} bytes after its last pair")]
    TrailingBytes { extra: usize },
    #[error("header block has {count} pairs, over the limit of {limit}")]
    TooManyPairs { count: u32, limit: usize },
    #[error("header name of {len} bytes is over the limit of {limit}")]
    NameTooLong { len: u32, limit: usize },
    #[error("header value of {len} bytes is over the limit of {limit}")]
    ValueTooLong { len: u32, limit: usize },
    #[error("empty header name")]
    EmptyName,
    #[error("header name {name:?} is not lower-case ASCII")]
    NameNotLowercase { name: String },
    #[error("header name {name:?} appears twice")]
    DuplicateName { name: String },
    #[error("header {name:?} is forbidden in this frame")]
    Forbidden { name: String },
}

/// The pairs of one header block, in wire order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderBlock {
    pairs: Vec<(String, Vec<u8>)>,
}

impl HeaderBlock {
    /// An empty block (the SYN_REPLY every Kubernetes server sends).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair. `name` must be lower case; [`encode`](Self::encode) checks.
    pub fn with(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.push(name, value);
        self
    }

    /// Adds a pair. `name` must be lower case; [`encode`](Self::encode) checks.
    pub fn push(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.pairs.push((name.to_owned(), value.into()));
    }

    /// The value of `name` (lower case), as bytes.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of `name` (lower case), if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the block has no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Appends the uncompressed wire form to `out`, refusing names a spdystream peer would
    /// treat as fatal (upper case, empty, repeated).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), HeaderError> {
        for (i, (name, _)) in self.pairs.iter().enumerate() {
            check_name(name.as_bytes())?;
            if self.pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(HeaderError::DuplicateName { name: name.clone() });
            }
        }
        out.reserve(self.encoded_len());
        out.extend_from_slice(&(self.pairs.len() as u32).to_be_bytes());
        for (name, value) in &self.pairs {
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
        Ok(())
    }

    /// Length of the uncompressed wire form.
    pub fn encoded_len(&self) -> usize {
        4 + self
            .pairs
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum::<usize>()
    }

    /// Parses an uncompressed block, checking every length against `limits` first.
    pub fn decode(mut buf: &[u8], limits: &HeaderLimits) -> Result<Self, HeaderError> {
        let count = take_u32(&mut buf)?;
        // Each pair needs at least 8 bytes of lengths, so a count the block cannot hold is
        // refused before we allocate for it.
        if count as usize > limits.max_pairs {
            return Err(HeaderError::TooManyPairs {
                count,
                limit: limits.max_pairs,
            });
        }
        if (count as usize).saturating_mul(8) > buf.len() {
            return Err(HeaderError::Truncated);
        }
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name_len = take_u32(&mut buf)?;
            if name_len as usize > limits.max_name {
                return Err(HeaderError::NameTooLong {
                    len: name_len,
                    limit: limits.max_name,
                });
            }
            let name = take(&mut buf, name_len as usize)?;
            check_name(name)?;
            let value_len = take_u32(&mut buf)?;
            if value_len as usize > limits.max_value {
                return Err(HeaderError::ValueTooLong {
                    len: value_len,
                    limit: limits.max_value,
                });
            }
            let value = take(&mut buf, value_len as usize)?;
            // check_name proved the name is ASCII.
            let name = String::from_utf8_lossy(name).into_owned();
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(HeaderError::DuplicateName { name });
            }
            pairs.push((name, value.to_vec()));
        }
        if !buf.is_empty() {
            return Err(HeaderError::TrailingBytes { extra: buf.len() });
        }
        Ok(HeaderBlock { pairs })
    }

    /// Fails on a name spdystream rejects (fatally) in a block of the given kind.
    pub fn check_forbidden(&self, kind: BlockKind) -> Result<(), HeaderError> {
        let forbidden: &[&str] = match kind {
            BlockKind::SynStream => &[
                "connection",
                "host",
                "keep-alive",
                "proxy-connection",
                "transfer-encoding",
            ],
            BlockKind::SynReply | BlockKind::Headers => &[
                "connection",
                "keep-alive",
                "proxy-connection",
                "transfer-encoding",
            ],
        };
        match self
            .pairs
            .iter()
            .find(|(n, _)| forbidden.contains(&n.as_str()))
        {
            Some((name, _)) => Err(HeaderError::Forbidden { name: name.clone() }),
            None => Ok(()),
        }
    }
}

/// Which frame a header block travels in (the forbidden names differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    SynStream,
    SynReply,
    Headers,
}

fn check_name(name: &[u8]) -> Result<(), HeaderError> {
    if name.is_empty() {
        return Err(HeaderError::EmptyName);
    }
    // spdystream fails the whole connection on an upper-case name; anything outside printable
    // ASCII cannot come from an HTTP header name either.
    if name
        .iter()
        .any(|&b| b.is_ascii_uppercase() || !(0x21..0x7f).contains(&b))
    {
        return Err(HeaderError::NameNotLowercase {
            name: String::from_utf8_lossy(name).into_owned(),
        });
    }
    Ok(())
}

fn take_u32(buf: &mut &[u8]) -> Result<u32, HeaderError> {
    let bytes = take(buf, 4)?;
    Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
    if buf.len() < n {
        return Err(HeaderError::Truncated);
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeaderLimits {
        HeaderLimits::default()
    }

    #[test]
    fn streamtype_error_block_matches_protocol_example() {
        let mut out = Vec::new();
        HeaderBlock::new()
            .with("streamtype", "error")
            .encode(&mut out)
            .unwrap();
        assert_eq!(
            out,
            b"\x00\x00\x00\x01\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error"
        );
        assert_eq!(out.len(), 27);
    }

    #[test]
    fn empty_block_is_four_zero_bytes() {
        let mut out = Vec::new();
        HeaderBlock::new().encode(&mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 0]);
        assert_eq!(
            HeaderBlock::decode(&out, &limits()).unwrap(),
            HeaderBlock::new()
        );
    }

    #[test]
    fn port_forward_headers_round_trip() {
        let block = HeaderBlock::new()
            .with("streamtype", "data")
            .with("port", "8080")
            .with("requestid", "0");
        let mut out = Vec::new();
        block.encode(&mut out).unwrap();
        let back = HeaderBlock::decode(&out, &limits()).unwrap();
        assert_eq!(back, block);
        assert_eq!(back.get_str("port"), Some("8080"));
        assert_eq!(back.get("missing"), None);
    }

    #[test]
    fn upper_case_name_is_refused_both_ways() {
        let mut out = Vec::new();
        let err = HeaderBlock::new().with("streamType", "x").encode(&mut out);
        assert!(matches!(err, Err(HeaderError::NameNotLowercase { .. })));
        let wire = b"\x00\x00\x00\x01\x00\x00\x00\x01A\x00\x00\x00\x00";
        assert!(matches!(
            HeaderBlock::decode(wire, &limits()),
            Err(HeaderError::NameNotLowercase { .. })
        ));
    }

    #[test]
    fn pair_count_over_limit_is_refused_before_allocating() {
        let wire = u32::MAX.to_be_bytes();
        assert!(matches!(
            HeaderBlock::decode(&wire, &limits()),
            Err(HeaderError::TooManyPairs { .. })
        ));
        let mut wire = 10u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&[0; 8]);
        assert_eq!(
            HeaderBlock::decode(&wire, &limits()),
            Err(HeaderError::Truncated)
        );
    }

    #[test]
    fn name_and_value_lengths_are_capped() {
        let mut wire = 1u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        wire.extend_from_slice(&[0; 8]);
        assert!(matches!(
            HeaderBlock::decode(&wire, &limits()),
            Err(HeaderError::NameTooLong { .. })
        ));
        let mut wire = 1u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&1u32.to_be_bytes());
        wire.push(b'a');
        wire.extend_from_slice(&(1u32 << 30).to_be_bytes());
        assert!(matches!(
            HeaderBlock::decode(&wire, &limits()),
            Err(HeaderError::ValueTooLong { .. })
        ));
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors() {
        let mut out = Vec::new();
        HeaderBlock::new().with("a", "b").encode(&mut out).unwrap();
        for cut in 0..out.len() {
            assert!(HeaderBlock::decode(&out[..cut], &limits()).is_err());
        }
        out.push(0);
        assert_eq!(
            HeaderBlock::decode(&out, &limits()),
            Err(HeaderError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut out = Vec::new();
        let err = HeaderBlock::new()
            .with("a", "1")
            .with("a", "2")
            .encode(&mut out);
        assert!(matches!(err, Err(HeaderError::DuplicateName { .. })));
    }

    #[test]
    fn hop_by_hop_names_are_forbidden_per_frame_kind() {
        let block = HeaderBlock::new().with("host", "x");
        assert!(block.check_forbidden(BlockKind::SynStream).is_err());
        assert!(block.check_forbidden(BlockKind::SynReply).is_ok());
        let block = HeaderBlock::new().with("connection", "close");
        assert!(block.check_forbidden(BlockKind::SynReply).is_err());
    }
}
