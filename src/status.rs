//! The Kubernetes `metav1.Status` object, as runtimes, the API server and client-go put it on
//! the wire.
//!
//! Field order matters to clients that compare bytes: Go's `json.Marshal` writes `kind`,
//! `apiVersion`, `metadata` (always, usually `{}`), `status`, `message`, `reason`, `details`,
//! `code`, leaving out empty optional fields. The structs below serialise in that order.

use serde::{Deserialize, Serialize};

/// `status` value of a successful outcome.
pub const STATUS_SUCCESS: &str = "Success";
/// `status` value of a failed outcome.
pub const STATUS_FAILURE: &str = "Failure";
/// `reason` of a process that exited with a non-zero code.
pub const REASON_NON_ZERO_EXIT_CODE: &str = "NonZeroExitCode";
/// `reason` of a cause that carries the exit code in its message.
pub const CAUSE_EXIT_CODE: &str = "ExitCode";
/// `reason` of an internal error (HTTP 500).
pub const REASON_INTERNAL_ERROR: &str = "InternalError";

/// `metav1.Status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub code: i32,
}

/// `metav1.ListMeta`: always present in a Status, almost always empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub self_link: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, rename = "continue", skip_serializing_if = "String::is_empty")]
    pub continue_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_item_count: Option<i64>,
}

/// `metav1.StatusDetails`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry_after_seconds: i32,
}

/// `metav1.StatusCause`; its type field is named `reason` in JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCause {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl Status {
    /// `{"metadata":{},"status":"Success"}`.
    pub fn success() -> Self {
        Status {
            status: STATUS_SUCCESS.into(),
            ..Status::default()
        }
    }

    /// The Status a runtime writes for a process that exited with `code` (kubelet lib, v4).
    pub fn non_zero_exit(message: impl Into<String>, code: u32) -> Self {
        Status {
            status: STATUS_FAILURE.into(),
            message: message.into(),
            reason: REASON_NON_ZERO_EXIT_CODE.into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    reason: CAUSE_EXIT_CODE.into(),
                    message: code.to_string(),
                    ..StatusCause::default()
                }],
                ..StatusDetails::default()
            }),
            ..Status::default()
        }
    }

    /// `apierrors.NewInternalError(errors.New(inner))`: message `Internal error occurred: <inner>`,
    /// one cause carrying `inner`, code 500.
    pub fn internal_error(inner: impl Into<String>) -> Self {
        let inner = inner.into();
        Status {
            status: STATUS_FAILURE.into(),
            message: format!("Internal error occurred: {inner}"),
            reason: REASON_INTERNAL_ERROR.into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    message: inner,
                    ..StatusCause::default()
                }],
                ..StatusDetails::default()
            }),
            code: 500,
            ..Status::default()
        }
    }

    /// A top-level HTTP error Status (`kind: Status`, `apiVersion: v1`) as the API server writes
    /// it in response bodies.
    pub fn http_error(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Status {
            kind: "Status".into(),
            api_version: "v1".into(),
            status: STATUS_FAILURE.into(),
            message: message.into(),
            reason: reason.into(),
            code: i32::from(code),
            ..Status::default()
        }
    }

    /// The exit code carried by a `NonZeroExitCode` Status, if it has a valid one.
    pub fn exit_code(&self) -> Option<u8> {
        if self.status != STATUS_FAILURE || self.reason != REASON_NON_ZERO_EXIT_CODE {
            return None;
        }
        self.details
            .as_ref()?
            .causes
            .iter()
            .find(|c| c.reason == CAUSE_EXIT_CODE)?
            .message
            .parse()
            .ok()
    }

    /// Serialises as Go's `json.Marshal` would.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Status always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_serialises_like_the_kubelet() {
        assert_eq!(
            Status::success().to_json(),
            r#"{"metadata":{},"status":"Success"}"#
        );
    }

    #[test]
    fn non_zero_exit_serialises_in_go_field_order() {
        assert_eq!(
            Status::non_zero_exit("command terminated with non-zero exit code: x", 3).to_json(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: x","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
    }

    #[test]
    fn internal_error_serialises_with_code_500() {
        assert_eq!(
            Status::internal_error("unable to upgrade connection: 404 page not found").to_json(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: unable to upgrade connection: 404 page not found","reason":"InternalError","details":{"causes":[{"message":"unable to upgrade connection: 404 page not found"}]},"code":500}"#
        );
    }

    #[test]
    fn exit_code_is_read_back_from_the_cause() {
        assert_eq!(Status::non_zero_exit("m", 42).exit_code(), Some(42));
        assert_eq!(Status::success().exit_code(), None);
        let mut bad = Status::non_zero_exit("m", 1);
        bad.details.as_mut().unwrap().causes[0].message = "300".into();
        assert_eq!(bad.exit_code(), None);
    }
}
