//! CRI (Container Runtime Interface, `runtime.v1`) support.
//!
//! Today: a small gRPC client ([`client::CriClient`]) over a unix socket, used by the
//! integration tests to drive a real runtime (containerd 1.6) and obtain streaming URLs.
//! Later: CRI interception, where the bridge serves the CRI API itself, forwards every call to
//! the runtime and swaps the runtime's streaming URLs for its own (`design.md`).
//!
//! The messages in [`proto`] are written by hand from the CRI `api.proto`; no code generation.

pub mod client;
pub mod proto;

pub use client::{CriClient, CriClientConfig, CriError};

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
}
