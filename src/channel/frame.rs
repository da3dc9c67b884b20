//! `v5.channel.k8s.io` channel framing (protocol.md §4.3–§4.6), sans-IO.
//!
//! Every WebSocket message is one frame of one channel. The codec sees whole messages: the
//! WebSocket layer reassembles fragments before calling [`decode_inbound`], and sends each
//! encoded message as a single binary frame.

use bytes::Bytes;

/// Client → server: the process's standard input.
pub const STDIN: u8 = 0;
/// Server → client: the process's standard output.
pub const STDOUT: u8 = 1;
/// Server → client: the process's standard error (absent with a tty).
pub const STDERR: u8 = 2;
/// Server → client: the final Status, written once at the end.
pub const ERROR: u8 = 3;
/// Client → server: terminal sizes as a stream of JSON objects.
pub const RESIZE: u8 = 4;
/// Client → server, v5 only: the CLOSE signal, followed by the channel being half-closed.
pub const CLOSE: u8 = 255;
/// Number of channels a remote-command server allocates; CLOSE for a channel at or above it is
/// a protocol violation.
pub const CHANNEL_COUNT: u8 = 5;

/// Payload bytes per outbound message by default: the 32 KiB read buffer the API server's
/// translator uses, so a message is at most 1 + 32 768 bytes (protocol.md §4.10).
pub const MAX_OUTBOUND_PAYLOAD: usize = 32 * 1024;

/// One complete client message, decoded. Text and binary messages decode alike, as the
/// Kubernetes servers do (C-28).
///
/// ```text
///  data message                           CLOSE signal (v5)
///  +---------+---------------------+      +------+---------+
///  | channel | payload (0..n bytes)|      | 0xff | channel |   exactly 2 bytes
///  +---------+---------------------+      +------+---------+
///    1 byte
///
///  channel 0  stdin    payload is relayed             ff 00  stdin EOF
///  channel 4  resize   payload is JSON sizes          ff 04  no more resizes
///  1, 2, 3, 5..=254    ignored                        ff 01..03  no effect
///  (no bytes at all)   ignored                        ff 05..ff, ff, ff xx yy..  teardown
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// `00` + bytes. The payload may be empty, which carries nothing and must not become an
    /// upstream frame.
    Stdin(Bytes),
    /// `04` + bytes: a piece of the resize JSON stream (possibly empty, or part of an object).
    Resize(Bytes),
    /// `ff 00`: the client will send no more stdin. Repeats are no-ops (C-32).
    CloseStdin,
    /// `ff 04`: the client will send no more resizes.
    CloseResize,
    /// `ff 01`, `ff 02`, `ff 03`: CLOSE for a server-written channel; no effect (C-35).
    CloseOther(u8),
    /// Data on a channel the server does not read: 1, 2, 3 or 5..=254. Dropped (C-26).
    Ignored(u8),
    /// A message with no bytes at all. Dropped (C-30).
    Empty,
    /// `ff` alone, or `ff` with more than one byte after it. The API server tears the
    /// connection down (Close 1000, no status; C-36).
    MalformedClose {
        /// The whole message's length.
        len: usize,
    },
    /// `ff` + a channel ≥ [`CHANNEL_COUNT`]. The API server tears the connection down
    /// (Close 1000, no status; C-37).
    CloseInvalidChannel(u8),
}

impl Inbound {
    /// Whether the API server ends the connection on this message (Close 1000, no status).
    pub fn is_teardown(&self) -> bool {
        matches!(
            self,
            Inbound::MalformedClose { .. } | Inbound::CloseInvalidChannel(_)
        )
    }
}

/// Decodes one complete client message. Payloads are slices of `msg`, never copies.
///
/// The CLOSE check comes first, as in the API server: a message starting with `ff` is a CLOSE
/// or a violation, never data.
pub fn decode_inbound(msg: Bytes) -> Inbound {
    let Some(&channel) = msg.first() else {
        return Inbound::Empty;
    };
    if channel == CLOSE {
        if msg.len() != 2 {
            return Inbound::MalformedClose { len: msg.len() };
        }
        return match msg[1] {
            STDIN => Inbound::CloseStdin,
            RESIZE => Inbound::CloseResize,
            c if c < CHANNEL_COUNT => Inbound::CloseOther(c),
            c => Inbound::CloseInvalidChannel(c),
        };
    }
    match channel {
        STDIN => Inbound::Stdin(msg.slice(1..)),
        RESIZE => Inbound::Resize(msg.slice(1..)),
        c => Inbound::Ignored(c),
    }
}

/// One message with the whole of `payload`, unsplit, even when empty. For the status on
/// [`ERROR`], which the API server writes in a single message whatever its size.
pub fn single_message(channel: u8, payload: &[u8]) -> Bytes {
    let mut msg = Vec::with_capacity(1 + payload.len());
    msg.push(channel);
    msg.extend_from_slice(payload);
    Bytes::from(msg)
}

/// The one channel-only message sent right after the upgrade, before anything else, to tell
/// the client the connection is live (protocol.md §4.5): the lowest channel the server writes.
///
/// ```text
///  stdout requested           +----+
///                             | 01 |
///  else stderr requested      | 02 |
///  else                       | 03 |   (the error channel is always written)
///                             +----+
/// ```
///
/// Pass the options as requested. The API server looks at `stderr` alone; since a CRI request
/// never has both `tty` and `stderr`, passing `stderr && !tty` gives the same answer.
pub fn initial_message(stdout: bool, stderr: bool) -> Bytes {
    static OUT: [u8; 1] = [STDOUT];
    static ERR: [u8; 1] = [STDERR];
    static STATUS: [u8; 1] = [ERROR];
    Bytes::from_static(if stdout {
        &OUT
    } else if stderr {
        &ERR
    } else {
        &STATUS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Inbound {
        decode_inbound(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn stdin_payload_is_sliced_without_the_channel_byte() {
        let msg = Bytes::from_static(b"\x00hi\n");
        let Inbound::Stdin(payload) = decode_inbound(msg.clone()) else {
            panic!("not stdin");
        };
        assert_eq!(&payload[..], b"hi\n");
        // Zero-copy: the payload points into the message.
        assert_eq!(payload.as_ptr(), msg[1..].as_ptr());
    }

    #[test]
    fn channel_only_stdin_message_is_empty_stdin() {
        assert_eq!(decode(&[0]), Inbound::Stdin(Bytes::new()));
    }

    #[test]
    fn resize_payload_is_sliced_without_the_channel_byte() {
        assert_eq!(
            decode(b"\x04{\"Width\":80,\"Height\":24}"),
            Inbound::Resize(Bytes::from_static(b"{\"Width\":80,\"Height\":24}"))
        );
    }

    #[test]
    fn data_on_server_written_and_unknown_channels_is_ignored() {
        for ch in [1u8, 2, 3, 5, 6, 100, 254] {
            assert_eq!(decode(&[ch, b'x']), Inbound::Ignored(ch), "channel {ch}");
            assert_eq!(decode(&[ch]), Inbound::Ignored(ch), "channel {ch}");
        }
    }

    #[test]
    fn empty_message_is_empty() {
        assert_eq!(decode(&[]), Inbound::Empty);
        assert!(!Inbound::Empty.is_teardown());
    }

    #[test]
    fn close_for_stdin_and_resize_half_close_them() {
        assert_eq!(decode(&[0xff, 0]), Inbound::CloseStdin);
        assert_eq!(decode(&[0xff, 4]), Inbound::CloseResize);
        assert!(!Inbound::CloseStdin.is_teardown());
    }

    #[test]
    fn close_for_server_written_channels_has_no_effect() {
        for ch in 1..=3 {
            let m = decode(&[0xff, ch]);
            assert_eq!(m, Inbound::CloseOther(ch));
            assert!(!m.is_teardown());
        }
    }

    #[test]
    fn close_for_channel_five_is_invalid() {
        let m = decode(&[0xff, 5]);
        assert_eq!(m, Inbound::CloseInvalidChannel(5));
        assert!(m.is_teardown());
        assert_eq!(decode(&[0xff, 0xff]), Inbound::CloseInvalidChannel(0xff));
    }

    #[test]
    fn close_of_the_wrong_length_is_malformed() {
        assert_eq!(decode(&[0xff]), Inbound::MalformedClose { len: 1 });
        assert_eq!(decode(&[0xff, 0, 0]), Inbound::MalformedClose { len: 3 });
        assert!(decode(&[0xff]).is_teardown());
    }

    #[test]
    fn every_two_byte_message_is_classified_with_close_checked_first() {
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                let expected = match (first, second) {
                    (CLOSE, STDIN) => Inbound::CloseStdin,
                    (CLOSE, RESIZE) => Inbound::CloseResize,
                    (CLOSE, c @ 1..=3) => Inbound::CloseOther(c),
                    (CLOSE, c) => Inbound::CloseInvalidChannel(c),
                    (STDIN, b) => Inbound::Stdin(Bytes::copy_from_slice(&[b])),
                    (RESIZE, b) => Inbound::Resize(Bytes::copy_from_slice(&[b])),
                    (c, _) => Inbound::Ignored(c),
                };
                assert_eq!(
                    decode(&[first, second]),
                    expected,
                    "{first:02x} {second:02x}"
                );
            }
        }
    }

    #[test]
    fn single_message_is_never_split() {
        let payload = vec![b'x'; 2 * MAX_OUTBOUND_PAYLOAD];
        let m = single_message(ERROR, &payload);
        assert_eq!(m.len(), 1 + payload.len());
        assert_eq!(m[0], ERROR);
    }

    #[test]
    fn initial_message_names_the_lowest_written_channel() {
        assert_eq!(&initial_message(true, true)[..], [STDOUT]);
        assert_eq!(&initial_message(true, false)[..], [STDOUT]);
        assert_eq!(&initial_message(false, true)[..], [STDERR]);
        assert_eq!(&initial_message(false, false)[..], [ERROR]);
    }
}
