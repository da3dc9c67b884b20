//! The outcome of a remote command, and the Status the client gets for it (protocol.md §3.6,
//! §5.6), sans-IO.
//!
//! Upstream, the runtime ends the SPDY `error` stream with the outcome; it is decoded as
//! client-go decodes it into an [`Outcome`]. Downstream, the bridge writes one Status on
//! channel 3, as the API server's translator does, built by [`client_status`] or
//! [`refusal_status`] and framed by [`status_message`]:
//!
//! ```text
//!  SPDY error stream (runtime -> bridge), read to its end:
//!    v4, v5   one metav1.Status JSON object     {"metadata":{},"status":"Success"}
//!    v1..v3   plain text, failures only         command terminated with non-zero exit code: ...
//!    any      no bytes at all                   success
//!
//!  WebSocket (bridge -> client), once, after all output, then Close 1000:
//!    +----+--------------------------------------------------+
//!    | 03 | metav1.Status JSON (Go field order, no newline)  |
//!    +----+--------------------------------------------------+
//! ```

use bytes::Bytes;

use super::frame::{ERROR, single_message};
use super::subprotocol::{V1, V2, V3, V4, V5};
use crate::status::{REASON_NON_ZERO_EXIT_CODE, STATUS_FAILURE, STATUS_SUCCESS, Status};

/// The remote-command protocol the runtime chose over SPDY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// `channel.k8s.io`, also assumed when the 101 names none.
    V1,
    /// `v2.channel.k8s.io`: text failures, no resize stream.
    V2,
    /// `v3.channel.k8s.io`: text failures, resize stream.
    V3,
    /// `v4.channel.k8s.io`, and v5, which over SPDY behaves exactly as v4.
    V4,
}

impl Protocol {
    /// The protocol a 101's `X-Stream-Protocol-Version` names; `None` for a protocol that is no
    /// remote-command version.
    pub fn from_header(value: Option<&str>) -> Option<Protocol> {
        Some(match value.map(str::trim) {
            None | Some("") => Protocol::V1,
            Some(V1) => Protocol::V1,
            Some(V2) => Protocol::V2,
            Some(V3) => Protocol::V3,
            Some(V4) | Some(V5) => Protocol::V4,
            Some(_) => return None,
        })
    }
}

/// How a remote command ended, decoded as client-go decodes the error stream (protocol.md
/// §3.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No bytes, or a v4 `Success` Status.
    Success,
    /// The process exited with a non-zero code.
    ExitCode {
        /// The code, 0–255 as client-go parses it.
        code: u8,
        /// The runtime's Status, as received.
        status: Status,
    },
    /// Any other failure the runtime reported, as a Status.
    Failure(Status),
    /// v1–v3 failure text (no exit code exists in these protocols).
    Text(String),
    /// The error stream did not hold what the protocol says; client-go's error text.
    ProtocolError(String),
}

impl Outcome {
    /// Decodes the error stream's bytes.
    pub fn decode(protocol: Protocol, bytes: &[u8]) -> Outcome {
        if bytes.is_empty() {
            return Outcome::Success;
        }
        let text = String::from_utf8_lossy(bytes).into_owned();
        if protocol < Protocol::V4 {
            return Outcome::Text(text);
        }
        let status: Status = match serde_json::from_slice(bytes) {
            Ok(s) => s,
            Err(e) => {
                return Outcome::ProtocolError(format!(
                    "error stream protocol error: {e} in \"{text}\""
                ));
            }
        };
        match status.status.as_str() {
            STATUS_SUCCESS => Outcome::Success,
            STATUS_FAILURE if status.reason == REASON_NON_ZERO_EXIT_CODE => {
                let Some(details) = &status.details else {
                    return Outcome::ProtocolError(
                        "error stream protocol error: details must be set".into(),
                    );
                };
                let Some(cause) = details
                    .causes
                    .iter()
                    .find(|c| c.reason == crate::status::CAUSE_EXIT_CODE)
                else {
                    return Outcome::ProtocolError(
                        "error stream protocol error: no ExitCode cause given".into(),
                    );
                };
                match cause.message.parse::<u8>() {
                    Ok(code) => Outcome::ExitCode {
                        code,
                        status: status.clone(),
                    },
                    Err(_) => Outcome::ProtocolError(format!(
                        "error stream protocol error: invalid exit code value {:?}",
                        cause.message
                    )),
                }
            }
            STATUS_FAILURE => Outcome::Failure(status),
            _ => Outcome::ProtocolError("error stream protocol error: unknown error".into()),
        }
    }
}

/// The Status the API server's translator writes on channel 3 for an upstream outcome
/// (protocol.md §5.6). It decodes the error stream as client-go does, then re-encodes; the
/// runtime's Status is never forwarded verbatim.
///
/// | outcome | Status |
/// |---|---|
/// | success | `{"metadata":{},"status":"Success"}` |
/// | exit code N | NonZeroExitCode, message `command terminated with non-zero exit code: command terminated with exit code N`, cause ExitCode `N`, no `code` |
/// | other Failure with message M | InternalError of M (so a runtime InternalError reads `Internal error occurred: Internal error occurred: …`) |
/// | v2/v3 text T | InternalError of `error executing remote command: T` |
/// | v1 text T | InternalError of `Error executing remote command: T` |
/// | protocol error | InternalError of client-go's text |
pub fn client_status(outcome: &Outcome, protocol: Protocol) -> Status {
    match outcome {
        Outcome::Success => Status::success(),
        Outcome::ExitCode { code, .. } => Status::non_zero_exit(
            // client-go's CodeExitError text, wrapped by the translator.
            format!(
                "command terminated with non-zero exit code: command terminated with exit code {code}"
            ),
            u32::from(*code),
        ),
        Outcome::Failure(status) => Status::internal_error(status.message.clone()),
        Outcome::Text(text) if protocol == Protocol::V1 => {
            Status::internal_error(format!("Error executing remote command: {text}"))
        }
        Outcome::Text(text) => {
            Status::internal_error(format!("error executing remote command: {text}"))
        }
        Outcome::ProtocolError(text) => Status::internal_error(text.clone()),
    }
}

/// The Status for a session that never got its streams: the upgrade was refused or failed, or
/// a stream could not be created (protocol.md §5.6, §5.7).
///
/// * `refusal` is the runtime's refusal body when it was a `metav1.Status`: sent unchanged
///   (its `code`, `kind` and `apiVersion` kept), as client-go turns it into a StatusError and
///   the translator writes that.
/// * Otherwise `client_go_text` is client-go's error text (`unable to upgrade connection: 404
///   page not found`, `error sending request: …`, `Timeout occurred`, `Stream reset`), sent as
///   an InternalError.
pub fn refusal_status(refusal: Option<&Status>, client_go_text: &str) -> Status {
    match refusal {
        Some(status) => status.clone(),
        None => Status::internal_error(client_go_text),
    }
}

/// The channel-3 message carrying `status`: `03` + its JSON, in one message whatever its size,
/// as the API server writes it.
pub fn status_message(status: &Status) -> Bytes {
    single_message(ERROR, status.to_json().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_error_stream_is_success_in_every_protocol() {
        for p in [Protocol::V1, Protocol::V2, Protocol::V3, Protocol::V4] {
            assert_eq!(Outcome::decode(p, b""), Outcome::Success);
        }
    }

    #[test]
    fn v4_exit_code_is_decoded() {
        let json =
            Status::non_zero_exit("command terminated with non-zero exit code: x", 3).to_json();
        assert!(matches!(
            Outcome::decode(Protocol::V4, json.as_bytes()),
            Outcome::ExitCode { code: 3, .. }
        ));
    }

    #[test]
    fn v4_protocol_errors_use_client_go_texts() {
        let no_details = r#"{"metadata":{},"status":"Failure","reason":"NonZeroExitCode"}"#;
        assert_eq!(
            Outcome::decode(Protocol::V4, no_details.as_bytes()),
            Outcome::ProtocolError("error stream protocol error: details must be set".into())
        );
        let bad_code = Status::non_zero_exit("m", 1)
            .to_json()
            .replace("\"1\"", "\"300\"");
        assert!(matches!(
            Outcome::decode(Protocol::V4, bad_code.as_bytes()),
            Outcome::ProtocolError(m) if m.contains("invalid exit code value \"300\"")
        ));
        let unknown = r#"{"metadata":{},"status":"Maybe"}"#;
        assert_eq!(
            Outcome::decode(Protocol::V4, unknown.as_bytes()),
            Outcome::ProtocolError("error stream protocol error: unknown error".into())
        );
        assert!(matches!(
            Outcome::decode(Protocol::V4, b"not json"),
            Outcome::ProtocolError(m) if m.starts_with("error stream protocol error: ")
        ));
    }

    #[test]
    fn v2_text_is_kept() {
        assert_eq!(
            Outcome::decode(Protocol::V2, b"boom"),
            Outcome::Text("boom".into())
        );
    }

    #[test]
    fn negotiated_header_maps_to_protocol() {
        assert_eq!(Protocol::from_header(None), Some(Protocol::V1));
        assert_eq!(
            Protocol::from_header(Some("v4.channel.k8s.io")),
            Some(Protocol::V4)
        );
        assert_eq!(
            Protocol::from_header(Some("v5.channel.k8s.io")),
            Some(Protocol::V4)
        );
        assert_eq!(Protocol::from_header(Some("portforward.k8s.io")), None);
    }

    fn decode_and_map(protocol: Protocol, error_stream: &[u8]) -> String {
        client_status(&Outcome::decode(protocol, error_stream), protocol).to_json()
    }

    #[test]
    fn success_maps_to_api_server_success_json() {
        assert_eq!(
            decode_and_map(Protocol::V4, br#"{"metadata":{},"status":"Success"}"#),
            r#"{"metadata":{},"status":"Success"}"#
        );
    }

    #[test]
    fn empty_error_stream_maps_to_success_json_in_every_protocol() {
        for p in [Protocol::V1, Protocol::V2, Protocol::V3, Protocol::V4] {
            assert_eq!(
                decode_and_map(p, b""),
                r#"{"metadata":{},"status":"Success"}"#
            );
        }
    }

    #[test]
    fn exit_42_maps_to_api_server_status_json() {
        let runtime = Status::non_zero_exit(
            "command terminated with non-zero exit code: error executing command [sh -c exit 42], exit code 42",
            42,
        );
        assert_eq!(
            decode_and_map(Protocol::V4, runtime.to_json().as_bytes()),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: command terminated with exit code 42","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"42"}]}}"#
        );
    }

    #[test]
    fn client_exit_status_carries_the_code_back() {
        for code in [0u8, 1, 3, 255] {
            let status = client_status(
                &Outcome::ExitCode {
                    code,
                    status: Status::default(),
                },
                Protocol::V4,
            );
            assert_eq!(status.exit_code(), Some(code));
            assert_eq!(status.code, 0);
        }
    }

    #[test]
    fn runtime_internal_error_gets_a_doubled_prefix() {
        let runtime = Status::internal_error("error executing command in container: boom");
        assert_eq!(
            decode_and_map(Protocol::V4, runtime.to_json().as_bytes()),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: Internal error occurred: error executing command in container: boom","reason":"InternalError","details":{"causes":[{"message":"Internal error occurred: error executing command in container: boom"}]},"code":500}"#
        );
    }

    #[test]
    fn other_failure_reason_becomes_internal_error_of_its_message() {
        let runtime =
            r#"{"metadata":{},"status":"Failure","message":"M","reason":"Forbidden","code":403}"#;
        assert_eq!(
            decode_and_map(Protocol::V4, runtime.as_bytes()),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: M","reason":"InternalError","details":{"causes":[{"message":"M"}]},"code":500}"#
        );
    }

    #[test]
    fn v3_and_v2_text_maps_to_lower_case_error_executing() {
        for p in [Protocol::V2, Protocol::V3] {
            let status = client_status(&Outcome::decode(p, b"T"), p);
            assert_eq!(
                status.message,
                "Internal error occurred: error executing remote command: T"
            );
            assert_eq!(status.code, 500);
        }
    }

    #[test]
    fn v1_text_maps_to_capitalised_error_executing() {
        assert_eq!(
            decode_and_map(Protocol::V1, b"T"),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: Error executing remote command: T","reason":"InternalError","details":{"causes":[{"message":"Error executing remote command: T"}]},"code":500}"#
        );
    }

    #[test]
    fn protocol_error_maps_to_internal_error_of_client_go_text() {
        let status = client_status(
            &Outcome::decode(Protocol::V4, br#"{"metadata":{},"status":"Maybe"}"#),
            Protocol::V4,
        );
        assert_eq!(
            status,
            Status::internal_error("error stream protocol error: unknown error")
        );
    }

    #[test]
    fn text_refusal_becomes_internal_error() {
        assert_eq!(
            refusal_status(None, "unable to upgrade connection: 404 page not found").to_json(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: unable to upgrade connection: 404 page not found","reason":"InternalError","details":{"causes":[{"message":"unable to upgrade connection: 404 page not found"}]},"code":500}"#
        );
        assert_eq!(
            refusal_status(None, "Timeout occurred"),
            Status::internal_error("Timeout occurred")
        );
    }

    #[test]
    fn status_refusal_is_sent_unchanged() {
        let refusal = Status::http_error(403, "Forbidden", "nope");
        let sent = refusal_status(Some(&refusal), "ignored");
        assert_eq!(sent, refusal);
        assert_eq!(
            sent.to_json(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"nope","reason":"Forbidden","code":403}"#
        );
    }

    #[test]
    fn status_message_is_channel_three_and_the_json() {
        let msg = status_message(&Status::success());
        assert_eq!(&msg[..], b"\x03{\"metadata\":{},\"status\":\"Success\"}");
    }

    #[test]
    fn header_value_is_trimmed_and_v2_v3_are_recognised() {
        assert_eq!(Protocol::from_header(Some("")), Some(Protocol::V1));
        assert_eq!(
            Protocol::from_header(Some(" v3.channel.k8s.io ")),
            Some(Protocol::V3)
        );
        assert_eq!(
            Protocol::from_header(Some("v2.channel.k8s.io")),
            Some(Protocol::V2)
        );
        assert_eq!(
            Protocol::from_header(Some("channel.k8s.io")),
            Some(Protocol::V1)
        );
    }
}
