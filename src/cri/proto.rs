//! Hand-written protobuf messages for the subset of the CRI `runtime.v1` API the bridge uses.
//!
//! The field numbers and wire types follow `pkg/apis/runtime/v1/api.proto` of
//! `k8s.io/cri-api` (package `runtime.v1`). The structs are written by hand with `prost`'s derive
//! macros so the crate needs neither `protoc` nor a build script.
//!
//! Coverage: every message reachable from the calls listed in [`super::methods`] is complete,
//! including the Windows-specific sub-messages, so a request decoded here and encoded again keeps
//! every field the current API defines. Two things are deliberately simpler than the `.proto`:
//!
//! * `ContainerConfig.stop_signal` is kept as its raw `i32` (the CRI `Signal` enum value; 0 means
//!   the runtime's default) instead of a 66-variant Rust enum.
//! * Fields added to the API after these structs were written are unknown to `prost` and are
//!   dropped on decode. Code that forwards CRI calls must therefore forward the original bytes
//!   and only *read* the decoded message (see `design.md`, "CRI interception").
//!
//! Enum-typed fields are stored as `i32`, as `prost` does; the typed getters `prost` generates
//! (for example [`NamespaceOption::network()`]) map unknown values to the default variant.
//!
//! Older runtimes (containerd 1.6 speaks the API of about Kubernetes 1.24) ignore fields they do
//! not know, so sending a newer field is harmless but has no effect there.

use std::collections::HashMap;

// ---------------------------------------------------------------------------------------------
// Version
// ---------------------------------------------------------------------------------------------

/// `VersionRequest`: the kubelet's CRI API version (informational; runtimes ignore it).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct VersionRequest {
    #[prost(string, tag = "1")]
    pub version: String,
}

/// `VersionResponse`: which runtime answers and which CRI version it implements.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct VersionResponse {
    /// Version of the kubelet runtime API (for example `0.1.0`).
    #[prost(string, tag = "1")]
    pub version: String,
    /// Runtime name, for example `containerd`.
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    /// Runtime version, for example `1.6.20~ds1`.
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    /// CRI API version the runtime serves, for example `v1`.
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

// ---------------------------------------------------------------------------------------------
// Shared enums and small messages
// ---------------------------------------------------------------------------------------------

/// `Protocol` of a [`PortMapping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum Protocol {
    Tcp = 0,
    Udp = 1,
    Sctp = 2,
}

/// Mount propagation of a [`Mount`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum MountPropagation {
    /// `rprivate`.
    PropagationPrivate = 0,
    /// `rslave`.
    PropagationHostToContainer = 1,
    /// `rshared`.
    PropagationBidirectional = 2,
}

/// Scope of a Linux namespace ([`NamespaceOption`], [`UserNamespace`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum NamespaceMode {
    /// Shared by the containers of the pod (the CRI default).
    Pod = 0,
    /// Private to one container.
    Container = 1,
    /// The node's (host) namespace.
    Node = 2,
    /// The namespace of the container named in `target_id`.
    Target = 3,
}

/// How supplemental groups of a container's first process are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum SupplementalGroupsPolicy {
    Merge = 0,
    Strict = 1,
}

/// Container state as reported by the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum ContainerState {
    ContainerCreated = 0,
    ContainerRunning = 1,
    ContainerExited = 2,
    ContainerUnknown = 3,
}

/// `DNSConfig` of a sandbox (becomes the pod's `/etc/resolv.conf`).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DnsConfig {
    #[prost(string, repeated, tag = "1")]
    pub servers: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub searches: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub options: Vec<String>,
}

/// A host port mapping of a sandbox.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PortMapping {
    #[prost(enumeration = "Protocol", tag = "1")]
    pub protocol: i32,
    #[prost(int32, tag = "2")]
    pub container_port: i32,
    /// 0: no host port.
    #[prost(int32, tag = "3")]
    pub host_port: i32,
    #[prost(string, tag = "4")]
    pub host_ip: String,
}

/// A host path (or image) mounted into a container.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Mount {
    #[prost(string, tag = "1")]
    pub container_path: String,
    #[prost(string, tag = "2")]
    pub host_path: String,
    #[prost(bool, tag = "3")]
    pub readonly: bool,
    #[prost(bool, tag = "4")]
    pub selinux_relabel: bool,
    #[prost(enumeration = "MountPropagation", tag = "5")]
    pub propagation: i32,
    /// `uidMappings` in the `.proto`.
    #[prost(message, repeated, tag = "6")]
    pub uid_mappings: Vec<IdMapping>,
    /// `gidMappings` in the `.proto`.
    #[prost(message, repeated, tag = "7")]
    pub gid_mappings: Vec<IdMapping>,
    #[prost(bool, tag = "8")]
    pub recursive_read_only: bool,
    /// An image to mount instead of `host_path`.
    #[prost(message, optional, tag = "9")]
    pub image: Option<ImageSpec>,
    #[prost(string, tag = "10")]
    pub image_sub_path: String,
    #[prost(string, repeated, tag = "11")]
    pub mount_options: Vec<String>,
}

/// One range of a user-namespace id mapping.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct IdMapping {
    #[prost(uint32, tag = "1")]
    pub host_id: u32,
    #[prost(uint32, tag = "2")]
    pub container_id: u32,
    #[prost(uint32, tag = "3")]
    pub length: u32,
}

/// User namespace of a sandbox.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct UserNamespace {
    #[prost(enumeration = "NamespaceMode", tag = "1")]
    pub mode: i32,
    #[prost(message, repeated, tag = "2")]
    pub uids: Vec<IdMapping>,
    #[prost(message, repeated, tag = "3")]
    pub gids: Vec<IdMapping>,
}

/// Linux namespaces of a sandbox or container. All default to [`NamespaceMode::Pod`].
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct NamespaceOption {
    #[prost(enumeration = "NamespaceMode", tag = "1")]
    pub network: i32,
    #[prost(enumeration = "NamespaceMode", tag = "2")]
    pub pid: i32,
    #[prost(enumeration = "NamespaceMode", tag = "3")]
    pub ipc: i32,
    /// Container id for [`NamespaceMode::Target`].
    #[prost(string, tag = "4")]
    pub target_id: String,
    #[prost(message, optional, tag = "5")]
    pub userns_options: Option<UserNamespace>,
}

/// Wrapper that distinguishes "unset" from 0.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Int64Value {
    #[prost(int64, tag = "1")]
    pub value: i64,
}

/// A seccomp or AppArmor profile choice.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SecurityProfile {
    #[prost(enumeration = "security_profile::ProfileType", tag = "1")]
    pub profile_type: i32,
    /// Path (seccomp) or profile name (AppArmor) for `Localhost`.
    #[prost(string, tag = "2")]
    pub localhost_ref: String,
}

/// Nested types of [`SecurityProfile`].
pub mod security_profile {
    /// Which profile applies.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
    #[repr(i32)]
    pub enum ProfileType {
        RuntimeDefault = 0,
        Unconfined = 1,
        Localhost = 2,
    }
}

/// SELinux labels.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SeLinuxOption {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(string, tag = "2")]
    pub role: String,
    #[prost(string, tag = "3")]
    pub r#type: String,
    #[prost(string, tag = "4")]
    pub level: String,
}

/// A key and a byte value (container environment variables).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    /// Declared `bytes` in the `.proto` (Go sends UTF-8 text here).
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// Image reference plus metadata.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ImageSpec {
    /// Image name, id or digest, for example `localhost/ws-spdy-bridge/busybox:1`.
    #[prost(string, tag = "1")]
    pub image: String,
    #[prost(map = "string, string", tag = "2")]
    pub annotations: HashMap<String, String>,
    #[prost(string, tag = "18")]
    pub user_specified_image: String,
    #[prost(string, tag = "19")]
    pub runtime_handler: String,
    #[prost(string, tag = "20")]
    pub image_ref: String,
}

// ---------------------------------------------------------------------------------------------
// Pod sandbox
// ---------------------------------------------------------------------------------------------

/// Linux security settings of a sandbox.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct LinuxSandboxSecurityContext {
    #[prost(message, optional, tag = "1")]
    pub namespace_options: Option<NamespaceOption>,
    #[prost(message, optional, tag = "2")]
    pub selinux_options: Option<SeLinuxOption>,
    #[prost(message, optional, tag = "3")]
    pub run_as_user: Option<Int64Value>,
    #[prost(message, optional, tag = "8")]
    pub run_as_group: Option<Int64Value>,
    #[prost(bool, tag = "4")]
    pub readonly_rootfs: bool,
    #[prost(int64, repeated, tag = "5")]
    pub supplemental_groups: Vec<i64>,
    #[prost(enumeration = "SupplementalGroupsPolicy", tag = "11")]
    pub supplemental_groups_policy: i32,
    #[prost(bool, tag = "6")]
    pub privileged: bool,
    #[prost(message, optional, tag = "9")]
    pub seccomp: Option<SecurityProfile>,
    #[prost(message, optional, tag = "10")]
    pub apparmor: Option<SecurityProfile>,
    /// Deprecated in favour of `seccomp`.
    #[prost(string, tag = "7")]
    pub seccomp_profile_path: String,
}

/// Linux settings of a sandbox.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct LinuxPodSandboxConfig {
    /// Parent cgroup (cgroupfs syntax, for example `/ws-spdy-bridge-abc`).
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxSandboxSecurityContext>,
    #[prost(map = "string, string", tag = "3")]
    pub sysctls: HashMap<String, String>,
    #[prost(message, optional, tag = "4")]
    pub overhead: Option<LinuxContainerResources>,
    #[prost(message, optional, tag = "5")]
    pub resources: Option<LinuxContainerResources>,
}

/// Identity of a sandbox (the pod's name, uid, namespace and attempt).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
}

/// Windows namespaces of a sandbox.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WindowsNamespaceOption {
    #[prost(enumeration = "NamespaceMode", tag = "1")]
    pub network: i32,
}

/// Windows security settings of a sandbox.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WindowsSandboxSecurityContext {
    #[prost(string, tag = "1")]
    pub run_as_username: String,
    #[prost(string, tag = "2")]
    pub credential_spec: String,
    #[prost(bool, tag = "3")]
    pub host_process: bool,
    #[prost(message, optional, tag = "4")]
    pub namespace_options: Option<WindowsNamespaceOption>,
}

/// Windows settings of a sandbox.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WindowsPodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub security_context: Option<WindowsSandboxSecurityContext>,
}

/// Everything needed to create a sandbox. Passed again in [`CreateContainerRequest`].
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    /// Host directory for the containers' log files (`ContainerConfig.log_path` is relative to it).
    #[prost(string, tag = "3")]
    pub log_directory: String,
    #[prost(message, optional, tag = "4")]
    pub dns_config: Option<DnsConfig>,
    #[prost(message, repeated, tag = "5")]
    pub port_mappings: Vec<PortMapping>,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
    #[prost(message, optional, tag = "9")]
    pub windows: Option<WindowsPodSandboxConfig>,
}

/// `RunPodSandbox` request.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodSandboxConfig>,
    /// Runtime class handler; empty selects the runtime's default.
    #[prost(string, tag = "2")]
    pub runtime_handler: String,
}

/// `RunPodSandbox` response.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// State of a [`PodSandbox`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum PodSandboxState {
    SandboxReady = 0,
    SandboxNotready = 1,
}

/// Wrapper that distinguishes "no state filter" from `SANDBOX_READY` (0).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PodSandboxStateValue {
    #[prost(enumeration = "PodSandboxState", tag = "1")]
    pub state: i32,
}

/// Filter of [`ListPodSandboxRequest`]; set fields are combined with AND.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PodSandboxFilter {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub state: Option<PodSandboxStateValue>,
    #[prost(map = "string, string", tag = "3")]
    pub label_selector: HashMap<String, String>,
}

/// `ListPodSandbox` request.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ListPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<PodSandboxFilter>,
}

/// One sandbox as listed by the runtime.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PodSandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(enumeration = "PodSandboxState", tag = "3")]
    pub state: i32,
    /// Nanoseconds since the Unix epoch.
    #[prost(int64, tag = "4")]
    pub created_at: i64,
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
    #[prost(string, tag = "7")]
    pub runtime_handler: String,
}

/// `ListPodSandbox` response.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ListPodSandboxResponse {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<PodSandbox>,
}

/// `StopPodSandbox` request.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StopPodSandboxRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// `StopPodSandbox` response (empty).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StopPodSandboxResponse {}

/// `RemovePodSandbox` request.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RemovePodSandboxRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// `RemovePodSandbox` response (empty).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RemovePodSandboxResponse {}

// ---------------------------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------------------------

/// Linux resource settings of a container (or a sandbox's overhead).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct LinuxContainerResources {
    #[prost(int64, tag = "1")]
    pub cpu_period: i64,
    #[prost(int64, tag = "2")]
    pub cpu_quota: i64,
    #[prost(int64, tag = "3")]
    pub cpu_shares: i64,
    #[prost(int64, tag = "4")]
    pub memory_limit_in_bytes: i64,
    #[prost(int64, tag = "5")]
    pub oom_score_adj: i64,
    #[prost(string, tag = "6")]
    pub cpuset_cpus: String,
    #[prost(string, tag = "7")]
    pub cpuset_mems: String,
    #[prost(message, repeated, tag = "8")]
    pub hugepage_limits: Vec<HugepageLimit>,
    /// cgroup v2 settings by file name.
    #[prost(map = "string, string", tag = "9")]
    pub unified: HashMap<String, String>,
    #[prost(int64, tag = "10")]
    pub memory_swap_limit_in_bytes: i64,
}

/// HugeTLB limit for one page size.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct HugepageLimit {
    /// For example `2MB`.
    #[prost(string, tag = "1")]
    pub page_size: String,
    #[prost(uint64, tag = "2")]
    pub limit: u64,
}

/// Capabilities to add or drop.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Capability {
    #[prost(string, repeated, tag = "1")]
    pub add_capabilities: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub drop_capabilities: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub add_ambient_capabilities: Vec<String>,
}

/// Linux security settings of a container.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct LinuxContainerSecurityContext {
    #[prost(message, optional, tag = "1")]
    pub capabilities: Option<Capability>,
    #[prost(bool, tag = "2")]
    pub privileged: bool,
    #[prost(message, optional, tag = "3")]
    pub namespace_options: Option<NamespaceOption>,
    #[prost(message, optional, tag = "4")]
    pub selinux_options: Option<SeLinuxOption>,
    #[prost(message, optional, tag = "5")]
    pub run_as_user: Option<Int64Value>,
    #[prost(message, optional, tag = "12")]
    pub run_as_group: Option<Int64Value>,
    #[prost(string, tag = "6")]
    pub run_as_username: String,
    #[prost(bool, tag = "7")]
    pub readonly_rootfs: bool,
    #[prost(int64, repeated, tag = "8")]
    pub supplemental_groups: Vec<i64>,
    #[prost(enumeration = "SupplementalGroupsPolicy", tag = "17")]
    pub supplemental_groups_policy: i32,
    #[prost(bool, tag = "11")]
    pub no_new_privs: bool,
    #[prost(string, repeated, tag = "13")]
    pub masked_paths: Vec<String>,
    #[prost(string, repeated, tag = "14")]
    pub readonly_paths: Vec<String>,
    #[prost(message, optional, tag = "15")]
    pub seccomp: Option<SecurityProfile>,
    #[prost(message, optional, tag = "16")]
    pub apparmor: Option<SecurityProfile>,
    /// Deprecated in favour of `apparmor`.
    #[prost(string, tag = "9")]
    pub apparmor_profile: String,
    /// Deprecated in favour of `seccomp`.
    #[prost(string, tag = "10")]
    pub seccomp_profile_path: String,
}

/// Linux settings of a container.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct LinuxContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub resources: Option<LinuxContainerResources>,
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<LinuxContainerSecurityContext>,
}

/// Windows security settings of a container.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WindowsContainerSecurityContext {
    #[prost(string, tag = "1")]
    pub run_as_username: String,
    #[prost(string, tag = "2")]
    pub credential_spec: String,
    #[prost(bool, tag = "3")]
    pub host_process: bool,
}

/// CPU group affinity of a Windows container.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WindowsCpuGroupAffinity {
    #[prost(uint64, tag = "1")]
    pub cpu_mask: u64,
    #[prost(uint32, tag = "2")]
    pub cpu_group: u32,
}

/// Windows resource settings of a container.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WindowsContainerResources {
    #[prost(int64, tag = "1")]
    pub cpu_shares: i64,
    #[prost(int64, tag = "2")]
    pub cpu_count: i64,
    #[prost(int64, tag = "3")]
    pub cpu_maximum: i64,
    #[prost(int64, tag = "4")]
    pub memory_limit_in_bytes: i64,
    #[prost(int64, tag = "5")]
    pub rootfs_size_in_bytes: i64,
    #[prost(message, repeated, tag = "6")]
    pub affinity_cpus: Vec<WindowsCpuGroupAffinity>,
}

/// Windows settings of a container.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WindowsContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub resources: Option<WindowsContainerResources>,
    #[prost(message, optional, tag = "2")]
    pub security_context: Option<WindowsContainerSecurityContext>,
}

/// Identity of a container inside its sandbox.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ContainerMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

/// A host device made available in a container.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Device {
    #[prost(string, tag = "1")]
    pub container_path: String,
    #[prost(string, tag = "2")]
    pub host_path: String,
    /// Some of `r`, `w`, `m`.
    #[prost(string, tag = "3")]
    pub permissions: String,
}

/// A CDI device by fully qualified name.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct CdiDevice {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// Everything needed to create a container.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ContainerConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "2")]
    pub image: Option<ImageSpec>,
    /// Entrypoint (replaces the image's).
    #[prost(string, repeated, tag = "3")]
    pub command: Vec<String>,
    /// Arguments (replace the image's `Cmd`).
    #[prost(string, repeated, tag = "4")]
    pub args: Vec<String>,
    #[prost(string, tag = "5")]
    pub working_dir: String,
    #[prost(message, repeated, tag = "6")]
    pub envs: Vec<KeyValue>,
    #[prost(message, repeated, tag = "7")]
    pub mounts: Vec<Mount>,
    #[prost(message, repeated, tag = "8")]
    pub devices: Vec<Device>,
    #[prost(map = "string, string", tag = "9")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "10")]
    pub annotations: HashMap<String, String>,
    /// Log file path relative to `PodSandboxConfig.log_directory`.
    #[prost(string, tag = "11")]
    pub log_path: String,
    /// Keep the container's stdin open (needed for attach with stdin).
    #[prost(bool, tag = "12")]
    pub stdin: bool,
    /// Close stdin after the first attach session that used it ends.
    #[prost(bool, tag = "13")]
    pub stdin_once: bool,
    #[prost(bool, tag = "14")]
    pub tty: bool,
    #[prost(message, optional, tag = "15")]
    pub linux: Option<LinuxContainerConfig>,
    #[prost(message, optional, tag = "16")]
    pub windows: Option<WindowsContainerConfig>,
    /// `CDI_devices` in the `.proto`.
    #[prost(message, repeated, tag = "17")]
    pub cdi_devices: Vec<CdiDevice>,
    /// CRI `Signal` enum value (0: the runtime's default stop signal).
    #[prost(int32, tag = "18")]
    pub stop_signal: i32,
}

/// `CreateContainer` request.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct CreateContainerRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "2")]
    pub config: Option<ContainerConfig>,
    /// The config the sandbox was created with.
    #[prost(message, optional, tag = "3")]
    pub sandbox_config: Option<PodSandboxConfig>,
}

/// `CreateContainer` response.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct CreateContainerResponse {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// `StartContainer` request.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StartContainerRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// `StartContainer` response (empty).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StartContainerResponse {}

/// `StopContainer` request.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StopContainerRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// Seconds to wait after the stop signal before killing; 0 kills at once.
    #[prost(int64, tag = "2")]
    pub timeout: i64,
}

/// `StopContainer` response (empty).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StopContainerResponse {}

/// `RemoveContainer` request.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RemoveContainerRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

/// `RemoveContainer` response (empty).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RemoveContainerResponse {}

/// Wrapper that distinguishes "no state filter" from `CONTAINER_CREATED` (0).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ContainerStateValue {
    #[prost(enumeration = "ContainerState", tag = "1")]
    pub state: i32,
}

/// Filter of [`ListContainersRequest`]; set fields are combined with AND.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ContainerFilter {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub state: Option<ContainerStateValue>,
    #[prost(string, tag = "3")]
    pub pod_sandbox_id: String,
    #[prost(map = "string, string", tag = "4")]
    pub label_selector: HashMap<String, String>,
}

/// `ListContainers` request.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ListContainersRequest {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<ContainerFilter>,
}

/// One container as listed by the runtime.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(message, optional, tag = "4")]
    pub image: Option<ImageSpec>,
    #[prost(string, tag = "5")]
    pub image_ref: String,
    #[prost(enumeration = "ContainerState", tag = "6")]
    pub state: i32,
    /// Nanoseconds since the Unix epoch.
    #[prost(int64, tag = "7")]
    pub created_at: i64,
    #[prost(map = "string, string", tag = "8")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "9")]
    pub annotations: HashMap<String, String>,
    #[prost(string, tag = "10")]
    pub image_id: String,
}

/// `ListContainers` response.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

// ---------------------------------------------------------------------------------------------
// Streaming calls: the runtime answers with a single-use URL on its streaming server.
// ---------------------------------------------------------------------------------------------

/// `Exec` request. At least one of `stdin`, `stdout`, `stderr` must be set; `tty` excludes
/// `stderr`. The runtime's streaming server later expects exactly these streams.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ExecRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, repeated, tag = "2")]
    pub cmd: Vec<String>,
    #[prost(bool, tag = "3")]
    pub tty: bool,
    #[prost(bool, tag = "4")]
    pub stdin: bool,
    #[prost(bool, tag = "5")]
    pub stdout: bool,
    #[prost(bool, tag = "6")]
    pub stderr: bool,
}

/// `Exec` response: `http://ADDR:PORT/exec/TOKEN` (single use, valid about a minute).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ExecResponse {
    #[prost(string, tag = "1")]
    pub url: String,
}

/// `Attach` request. Note the field numbers differ from [`ExecRequest`]'s.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct AttachRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(bool, tag = "2")]
    pub stdin: bool,
    /// Must match the container's own `tty` setting.
    #[prost(bool, tag = "3")]
    pub tty: bool,
    #[prost(bool, tag = "4")]
    pub stdout: bool,
    #[prost(bool, tag = "5")]
    pub stderr: bool,
}

/// `Attach` response: `http://ADDR:PORT/attach/TOKEN`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct AttachResponse {
    #[prost(string, tag = "1")]
    pub url: String,
}

/// `PortForward` request. Over SPDY each stream names its own port; `port` matters only to
/// the runtime's WebSocket port-forward.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PortForwardRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(int32, repeated, tag = "2")]
    pub port: Vec<i32>,
}

/// `PortForward` response: `http://ADDR:PORT/portforward/TOKEN`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PortForwardResponse {
    #[prost(string, tag = "1")]
    pub url: String,
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

/// Filter of [`ListImagesRequest`].
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ImageFilter {
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
}

/// `ListImages` request.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ListImagesRequest {
    #[prost(message, optional, tag = "1")]
    pub filter: Option<ImageFilter>,
}

/// One image known to the runtime.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Image {
    /// Image id (`sha256:…` of the config).
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, repeated, tag = "2")]
    pub repo_tags: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub repo_digests: Vec<String>,
    #[prost(uint64, tag = "4")]
    pub size: u64,
    #[prost(message, optional, tag = "5")]
    pub uid: Option<Int64Value>,
    #[prost(string, tag = "6")]
    pub username: String,
    #[prost(message, optional, tag = "7")]
    pub spec: Option<ImageSpec>,
    #[prost(bool, tag = "8")]
    pub pinned: bool,
}

/// `ListImages` response.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ListImagesResponse {
    #[prost(message, repeated, tag = "1")]
    pub images: Vec<Image>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Bytes as Go's protobuf encodes them, assembled by hand from the field numbers.
    #[test]
    fn exec_request_wire_format() {
        let req = ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["echo".into(), "hi".into()],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: false,
        };
        let bytes = req.encode_to_vec();
        let expected: &[u8] = &[
            0x0a, 2, b'c', b'1', // 1: container_id
            0x12, 4, b'e', b'c', b'h', b'o', // 2: cmd
            0x12, 2, b'h', b'i', // 2: cmd
            0x20, 1, // 4: stdin
            0x28, 1, // 5: stdout
        ];
        assert_eq!(bytes, expected);
        assert_eq!(ExecRequest::decode(&bytes[..]).unwrap(), req);
    }

    #[test]
    fn attach_request_field_numbers_differ_from_exec() {
        let req = AttachRequest {
            container_id: String::new(),
            stdin: true,
            tty: true,
            stdout: false,
            stderr: false,
        };
        assert_eq!(req.encode_to_vec(), [0x10, 1, 0x18, 1]);
    }

    #[test]
    fn port_forward_ports_are_packed() {
        let req = PortForwardRequest {
            pod_sandbox_id: "p".into(),
            port: vec![80, 8080],
        };
        let bytes = req.encode_to_vec();
        assert_eq!(bytes, [0x0a, 1, b'p', 0x12, 3, 80, 0x90, 0x3f]);
        // An unpacked encoding (older encoders) decodes to the same value.
        let unpacked = [0x0a, 1, b'p', 0x10, 80, 0x10, 0x90, 0x3f];
        assert_eq!(PortForwardRequest::decode(&unpacked[..]).unwrap(), req);
    }

    #[test]
    fn sandbox_config_round_trips() {
        let cfg = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "pod".into(),
                uid: "uid-1".into(),
                namespace: "ns".into(),
                attempt: 2,
            }),
            hostname: "h".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/x".into(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    run_as_group: Some(Int64Value { value: 0 }),
                    seccomp: Some(SecurityProfile {
                        profile_type: security_profile::ProfileType::Unconfined as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: "runc".into(),
        };
        let back = RunPodSandboxRequest::decode(&req.encode_to_vec()[..]).unwrap();
        assert_eq!(back, req);
        let ns = back
            .config
            .and_then(|c| c.linux)
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .unwrap();
        assert_eq!(ns.network(), NamespaceMode::Node);
        assert_eq!(ns.ipc(), NamespaceMode::Pod);
    }

    #[test]
    fn unknown_enum_value_maps_to_default() {
        let c = Container {
            state: 42,
            ..Default::default()
        };
        assert_eq!(c.state(), ContainerState::ContainerCreated);
    }
}
