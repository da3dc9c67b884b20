//! The server side of RFC 6455 WebSocket connections, as the bridge's sessions use it: a
//! sans-IO frame codec ([`codec`]) and the connection's read and write halves ([`io`]).
//!
//! The opening handshake is answered by the HTTP server (see `server`, and port-forward's own
//! upgrade), with [`accept_key`]; the rest of this module starts on the upgraded connection.

pub mod codec;
pub mod io;

pub use codec::{CloseFrame, DecodeError, Event, Limits, Opcode, close_code};
pub use io::{ReadError, Reader, Writer, server};

/// The `Sec-WebSocket-Accept` value that answers a client's `Sec-WebSocket-Key` (RFC 6455
/// §4.2.2): base64 of the SHA-1 of the key followed by the protocol's GUID.
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_the_rfc_6455_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
