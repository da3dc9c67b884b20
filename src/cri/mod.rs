//! CRI (Container Runtime Interface, `runtime.v1`) support.
//!
//! * [`intercept`]: CRI interception. The bridge serves the CRI API on its own unix socket,
//!   forwards every call to the runtime and swaps the runtime's streaming URLs for its own,
//!   storing each session's options under a bridge token ([`crate::tokens`], `design.md`).
//! * [`client`]: a small gRPC client over a unix socket, used by the integration tests to drive
//!   a real runtime (containerd 1.6) and the interceptor.
//! * [`grpc`] and [`urls`]: the sans-IO pieces of interception (gRPC framing and status,
//!   rewriting one protobuf field; resolving runtime URLs, building the bridge's).
//!
//! The messages in [`proto`] are written by hand from the CRI `api.proto`; no code generation.

pub mod client;
pub mod grpc;
pub mod intercept;
pub mod proto;
pub mod urls;

pub use client::{CriClient, CriClientConfig, CriError};
pub use intercept::{CriProxy, CriProxyConfig, ServeError, serve};

/// gRPC method paths (`/package.Service/Method`) of the calls this module knows.
pub mod methods {
    /// `RuntimeService/Version`.
    pub const VERSION: &str = "/runtime.v1.RuntimeService/Version";
    /// `RuntimeService/RunPodSandbox`.
    pub const RUN_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/RunPodSandbox";
    /// `RuntimeService/StopPodSandbox`.
    pub const STOP_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/StopPodSandbox";
    /// `RuntimeService/RemovePodSandbox`.
    pub const REMOVE_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/RemovePodSandbox";
    /// `RuntimeService/CreateContainer`.
    pub const CREATE_CONTAINER: &str = "/runtime.v1.RuntimeService/CreateContainer";
    /// `RuntimeService/StartContainer`.
    pub const START_CONTAINER: &str = "/runtime.v1.RuntimeService/StartContainer";
    /// `RuntimeService/StopContainer`.
    pub const STOP_CONTAINER: &str = "/runtime.v1.RuntimeService/StopContainer";
    /// `RuntimeService/RemoveContainer`.
    pub const REMOVE_CONTAINER: &str = "/runtime.v1.RuntimeService/RemoveContainer";
    /// `RuntimeService/ListPodSandbox`.
    pub const LIST_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/ListPodSandbox";
    /// `RuntimeService/ListContainers`.
    pub const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";
    /// `RuntimeService/Exec`: returns the exec streaming URL.
    pub const EXEC: &str = "/runtime.v1.RuntimeService/Exec";
    /// `RuntimeService/Attach`: returns the attach streaming URL.
    pub const ATTACH: &str = "/runtime.v1.RuntimeService/Attach";
    /// `RuntimeService/PortForward`: returns the port-forward streaming URL.
    pub const PORT_FORWARD: &str = "/runtime.v1.RuntimeService/PortForward";
    /// `ImageService/ListImages`.
    pub const LIST_IMAGES: &str = "/runtime.v1.ImageService/ListImages";
    /// The older API's `Exec` (containerd 1.6 serves both `runtime.v1` and `runtime.v1alpha2`;
    /// the messages of the streaming calls are the same).
    pub const V1ALPHA2_EXEC: &str = "/runtime.v1alpha2.RuntimeService/Exec";
    /// The older API's `Attach`.
    pub const V1ALPHA2_ATTACH: &str = "/runtime.v1alpha2.RuntimeService/Attach";
    /// The older API's `PortForward`.
    pub const V1ALPHA2_PORT_FORWARD: &str = "/runtime.v1alpha2.RuntimeService/PortForward";
}
