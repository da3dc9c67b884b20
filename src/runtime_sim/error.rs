//! Errors of the simulator: failed CRI calls (named after the gRPC code a runtime returns) and
//! start-up failures.

use std::net::SocketAddr;

use http::StatusCode;

/// Why a CRI call or the simulator itself failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The CRI request is malformed (gRPC `InvalidArgument`). The caller's fault.
    #[error("{0}")]
    InvalidArgument(String),
    /// The container or sandbox is unknown (gRPC `NotFound`). The caller's fault.
    #[error("{0}")]
    NotFound(String),
    /// A container with that id already exists (gRPC `AlreadyExists`). The caller's fault.
    #[error("{0}")]
    AlreadyExists(String),
    /// The container is not in a state that allows the call (gRPC `FailedPrecondition`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Too many streaming tokens are outstanding (gRPC `ResourceExhausted`); the kubelet turns
    /// this into HTTP 429 with `Retry-After: 60`.
    #[error("maximum number of in-flight requests exceeded")]
    ResourceExhausted,
    /// The simulator refuses to listen beyond loopback: exec runs commands on this machine.
    #[error(
        "refusing to listen on non-loopback address {0}: the simulator runs commands on this \
         machine for anyone who can reach it (set SimConfig::allow_non_loopback)"
    )]
    NonLoopback(SocketAddr),
    /// An operating-system call failed (bind, spawn, pty). Our fault.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The simulator has been shut down.
    #[error("runtime simulator is shut down")]
    ShutDown,
}

impl SimError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SimError::Io {
            what: what.into(),
            source,
        }
    }

    /// The gRPC status code name a CRI server would return.
    pub fn grpc_code(&self) -> &'static str {
        match self {
            SimError::InvalidArgument(_) => "InvalidArgument",
            SimError::NotFound(_) => "NotFound",
            SimError::AlreadyExists(_) => "AlreadyExists",
            SimError::FailedPrecondition(_) => "FailedPrecondition",
            SimError::ResourceExhausted => "ResourceExhausted",
            SimError::ShutDown => "Unavailable",
            SimError::NonLoopback(_) | SimError::Io { .. } => "Internal",
        }
    }

    /// Whether the caller (rather than the simulator) is to blame.
    pub fn is_caller_fault(&self) -> bool {
        matches!(
            self,
            SimError::InvalidArgument(_)
                | SimError::NotFound(_)
                | SimError::AlreadyExists(_)
                | SimError::FailedPrecondition(_)
                | SimError::NonLoopback(_)
        )
    }

    /// The HTTP status of the JSON CRI front-end, following the kubelet's mapping of CRI
    /// streaming errors (`NotFound` → 404, `ResourceExhausted` → 429, the rest 4xx/500).
    pub(crate) fn http_status(&self) -> StatusCode {
        match self {
            SimError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            SimError::NotFound(_) => StatusCode::NOT_FOUND,
            SimError::AlreadyExists(_) => StatusCode::CONFLICT,
            SimError::FailedPrecondition(_) => StatusCode::PRECONDITION_FAILED,
            SimError::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            SimError::ShutDown => StatusCode::SERVICE_UNAVAILABLE,
            SimError::NonLoopback(_) | SimError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
