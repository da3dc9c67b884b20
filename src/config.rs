//! The bridge's one configuration: a typed [`Config`] read from a YAML or TOML file, then from
//! `WS_SPDY_BRIDGE_…` environment variables, then from command-line flags, each layer
//! overriding the one before. Every key has a serde default (a named const below), unknown keys
//! are errors, and loading reports every problem at once, each under its dotted key.
//!
//! ```text
//!  file (.yaml|.yml|.toml) ──────────────┐
//!  WS_SPDY_BRIDGE_SESSION__IDLE_TIMEOUT ─┼─▶ merged tree ──serde──▶ Config ──▶ validate()
//!  --listen, --upstream, … (Flags) ──────┘        │
//!                      on a serde error: each leaf is deserialized alone, so that every
//!                      bad or unknown key is named, not just the first one serde met
//! ```
//!
//! Durations are written with a unit (`"500ms"`, `"30s"`, `"1h30m"`); byte sizes as a number
//! of bytes or with a binary unit (`"64KiB"`, `"32MiB"`). Environment variables name a key in
//! upper case with `__` between levels: `WS_SPDY_BRIDGE_LIMITS__MAX_SESSIONS=100`; an empty
//! variable counts as unset.
//!
//! This module sits below `main` only: it converts into the runtime structs of
//! [`crate::server`], [`crate::cri`], [`crate::upstream`] and [`crate::bridge`]
//! ([`Config::to_bridge_config`], [`Config::to_cri_config`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{ConfigError, Value, ValueKind};
use http::Uri;
use serde::{Deserialize, Serialize};

use crate::bridge::remotecommand::SessionConfig;
use crate::connection::ConnectionConfig;
use crate::cri::CriProxyConfig;
use crate::metrics::MetricsConfig;
use crate::server::{BridgeConfig, ServeLimits, TlsConfig};
use crate::upstream::UpstreamConfig;
use crate::upstream::UpstreamTlsConfig;
use crate::upstream::remotecommand::client_connection_config;

/// Prefix of the environment variables that set keys (`WS_SPDY_BRIDGE_LISTEN`).
pub const ENV_PREFIX: &str = "WS_SPDY_BRIDGE";
/// Separator between levels in an environment variable's name (`SESSION__IDLE_TIMEOUT`).
pub const ENV_SEPARATOR: &str = "__";
/// Variables with the prefix that are not settings: the test suite's switches. They are
/// skipped rather than rejected as unknown keys, so that CI's environment does not break
/// `serve`.
pub const ENV_NOT_SETTINGS: &[&str] = &[
    "WS_SPDY_BRIDGE_REQUIRE_PEERS",
    "WS_SPDY_BRIDGE_KUBECTL_DIR",
    "WS_SPDY_BRIDGE_KEEP_PEER_DIR",
];

// ---------------------------------------------------------------------------------------------
// Defaults

/// Default `listen`: loopback, port 8765. The kubelet (which proxies the API server's streams)
/// runs on the same node, so nothing else needs to reach the bridge.
pub const DEFAULT_LISTEN: &str = BridgeConfig::DEFAULT_LISTEN;
/// Default `upstream.connect_timeout`: 30 s, the API server's own dial limit.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = crate::upstream::DEFAULT_CONNECT_TIMEOUT;
/// Default `upstream.response_header_timeout`: 30 s, the API server's wait for an upgrade
/// answer.
pub const DEFAULT_UPSTREAM_RESPONSE_HEADER_TIMEOUT: Duration =
    crate::upstream::DEFAULT_RESPONSE_HEADER_TIMEOUT;
/// Default `upstream.max_response_header_bytes`: 1 MiB, the API server's cap on a buffered
/// upstream response head.
pub const DEFAULT_UPSTREAM_MAX_RESPONSE_HEADER_BYTES: u64 =
    crate::upstream::DEFAULT_MAX_RESPONSE_HEADER_BYTES as u64;
/// Default `upstream.max_error_body_bytes`: 64 KiB; runtimes refuse with one short line.
pub const DEFAULT_UPSTREAM_MAX_ERROR_BODY_BYTES: u64 =
    crate::upstream::DEFAULT_MAX_ERROR_BODY_BYTES as u64;
/// Default `upstream.error_body_timeout`: 10 s, the API server's deadline for relaying an
/// upstream error.
pub const DEFAULT_UPSTREAM_ERROR_BODY_TIMEOUT: Duration =
    crate::upstream::DEFAULT_ERROR_BODY_TIMEOUT;
/// Default `session.idle_timeout`: 4 h, the kubelet streaming server's idle limit.
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);
/// Default `session.status_write_timeout`: 10 s, the API server translator's.
pub const DEFAULT_SESSION_STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `session.client_gone_grace`: 10 s for the runtime to finish after the client left.
pub const DEFAULT_SESSION_CLIENT_GONE_GRACE: Duration = Duration::from_secs(10);
/// Default `session.stdin_buffer`: 1 MiB of client stdin queued for a slow runtime.
pub const DEFAULT_SESSION_STDIN_BUFFER: u64 = 1024 * 1024;
/// Default `session.max_outbound_payload`: 32 KiB, client-go's copy buffer.
pub const DEFAULT_SESSION_MAX_OUTBOUND_PAYLOAD: u64 =
    crate::channel::frame::MAX_OUTBOUND_PAYLOAD as u64;
/// Default `cri.token_ttl`: one minute, the runtime's own token lifetime.
pub const DEFAULT_CRI_TOKEN_TTL: Duration = crate::tokens::DEFAULT_TTL;
/// Default `cri.max_tokens`: 1000, the runtime's own bound on outstanding tokens.
pub const DEFAULT_CRI_MAX_TOKENS: usize = crate::tokens::DEFAULT_MAX_TOKENS;
/// Default `cri.connect_timeout`: 5 s to reach the runtime's local socket.
pub const DEFAULT_CRI_CONNECT_TIMEOUT: Duration = CriProxyConfig::DEFAULT_CONNECT_TIMEOUT;
/// Default `cri.shutdown_grace`: 5 s for in-flight CRI calls at shutdown.
pub const DEFAULT_CRI_SHUTDOWN_GRACE: Duration = CriProxyConfig::DEFAULT_SHUTDOWN_GRACE;
/// Default `limits.max_sessions`: 512. A session can buffer about 2 MiB at the default caps
/// (stdin, three SPDY streams, the WebSocket reader), so this bounds that memory near 1 GiB.
pub const DEFAULT_LIMITS_MAX_SESSIONS: usize = ServeLimits::DEFAULT_MAX_SESSIONS;
/// Default `limits.retry_after`: 5 s, sent with a 503 when `max_sessions` is reached.
pub const DEFAULT_LIMITS_RETRY_AFTER: Duration = ServeLimits::DEFAULT_RETRY_AFTER;
/// Default `limits.max_message_size`: 32 MiB, x/net/websocket's cap on a client message.
pub const DEFAULT_LIMITS_MAX_MESSAGE_SIZE: u64 = BridgeConfig::DEFAULT_MAX_MESSAGE as u64;
/// Default `limits.max_frame_size`: 32 MiB, as the message cap (clients do not fragment).
pub const DEFAULT_LIMITS_MAX_FRAME_SIZE: u64 = BridgeConfig::DEFAULT_MAX_MESSAGE as u64;
/// Default `limits.handshake_timeout`: 60 s, the two 30 s upstream steps back to back.
pub const DEFAULT_LIMITS_HANDSHAKE_TIMEOUT: Duration = ServeLimits::DEFAULT_HANDSHAKE_TIMEOUT;
/// Default `limits.header_read_timeout`: 10 s for a client's request head.
pub const DEFAULT_LIMITS_HEADER_READ_TIMEOUT: Duration = ServeLimits::DEFAULT_HEADER_READ_TIMEOUT;
/// Default `limits.stream_buffer`: 256 KiB of runtime output buffered per SPDY stream.
pub const DEFAULT_LIMITS_STREAM_BUFFER: u64 = ConnectionConfig::DEFAULT_STREAM_BUFFER as u64;
/// Default `limits.write_queue`: 16 DATA frames queued towards the runtime per session.
pub const DEFAULT_LIMITS_WRITE_QUEUE: usize = ConnectionConfig::DEFAULT_WRITE_QUEUE;
/// Default `drain.deadline`: 30 s, Kubernetes' default termination grace period.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Default `drain.close_timeout`: 2 s for Close 1001 and the upstream teardown.
pub const DEFAULT_DRAIN_CLOSE_TIMEOUT: Duration = BridgeConfig::DEFAULT_DRAIN_CLOSE_TIMEOUT;
/// Default `log.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

const KIB: u64 = 1024;

// ---------------------------------------------------------------------------------------------
// The typed configuration

/// Everything `serve` reads. Missing keys take their defaults; unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Streaming listener, `host:port`. Default [`DEFAULT_LISTEN`] (`127.0.0.1:8765`).
    pub listen: SocketAddr,
    /// The runtime's streaming server (standalone mode).
    pub upstream: UpstreamSection,
    /// Prefix of the bridge's routes (`<base_path>/exec/<token>`). Default empty. In CRI mode
    /// it is the path of `cri.advertise_url` and may be left empty.
    pub base_path: String,
    /// API-server compatibility switches.
    pub compat: CompatSection,
    /// Translated (v5) exec/attach sessions.
    pub session: SessionSection,
    /// CRI interception. Present: CRI mode (the bridge serves CRI and hands out its own
    /// streaming URLs). Absent: standalone mode (paths map onto `upstream.url`). Default absent.
    pub cri: Option<CriSection>,
    /// Admission, timeouts and buffering caps.
    pub limits: LimitsSection,
    /// Shutdown on SIGTERM or Ctrl-C.
    pub drain: DrainSection,
    /// Logging.
    pub log: LogSection,
    /// TLS on the streaming listener (`wss://`), see [`TlsConfig`]. Absent: plain HTTP.
    /// Default absent. Secret-bearing keys (`*_password`, `*_secret`, `*_token`, `*_pem`) are
    /// masked by `check-config`; key files are named by path and never printed.
    pub tls: Option<TlsConfig>,
    /// TLS to the runtime for `https` runtime URLs, see [`UpstreamTlsConfig`]. Default: nothing
    /// set, so `https` runtime URLs are refused.
    pub upstream_tls: UpstreamTlsConfig,
    /// The admin listener (`/metrics`, `/debug/sessions`, `/healthz`, `/readyz`), see
    /// [`MetricsConfig`].
    pub metrics: MetricsConfig,
}

/// `upstream`: how the bridge reaches the runtime's streaming server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSection {
    /// The runtime's streaming server, `http://host:port` (`/exec/<token>` maps to
    /// `<url>/exec/<token>`). Required in standalone mode, unused in CRI mode (the runtime's
    /// URLs come from its CRI answers). Default none.
    #[serde(with = "opt_uri")]
    pub url: Option<Uri>,
    /// Time for the TCP connect (and TLS handshake). Default
    /// [`DEFAULT_UPSTREAM_CONNECT_TIMEOUT`] (30 s).
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Time from writing the upgrade request to the end of the runtime's response head; a
    /// runtime that never answers holds a token and a task until then. Default
    /// [`DEFAULT_UPSTREAM_RESPONSE_HEADER_TIMEOUT`] (30 s).
    #[serde(with = "duration")]
    pub response_header_timeout: Duration,
    /// Largest runtime response head, bytes. Bounds what a misbehaving runtime can make us
    /// hold. Default [`DEFAULT_UPSTREAM_MAX_RESPONSE_HEADER_BYTES`] (1 MiB).
    #[serde(with = "size")]
    pub max_response_header_bytes: u64,
    /// Largest refusal body kept for the client's error text, bytes. Default
    /// [`DEFAULT_UPSTREAM_MAX_ERROR_BODY_BYTES`] (64 KiB).
    #[serde(with = "size")]
    pub max_error_body_bytes: u64,
    /// Time for reading a refusal body; what arrived by then is kept. Default
    /// [`DEFAULT_UPSTREAM_ERROR_BODY_TIMEOUT`] (10 s).
    #[serde(with = "duration")]
    pub error_body_timeout: Duration,
}

/// `compat`: behave as the API server does where the bridge would otherwise be stricter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompatSection {
    /// Answer 101 before contacting the runtime, so runtime failures reach the client as a
    /// Status on channel 3 instead of an HTTP error. Default false.
    pub upgrade_client_first: bool,
    /// Report a runtime that vanished without a status as Success, as the API server does.
    /// Default false (an InternalError Status).
    pub upstream_loss_is_success: bool,
}

/// `session`: translated exec/attach sessions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSection {
    /// End a session after this long without data either way (pings do not count). Default
    /// [`DEFAULT_SESSION_IDLE_TIMEOUT`] (4 h).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Deadline for writing the final status and Close frame. Default
    /// [`DEFAULT_SESSION_STATUS_WRITE_TIMEOUT`] (10 s).
    #[serde(with = "duration")]
    pub status_write_timeout: Duration,
    /// After the client vanished: how long the runtime may take to finish before the upstream
    /// is torn down. Default [`DEFAULT_SESSION_CLIENT_GONE_GRACE`] (10 s).
    #[serde(with = "duration")]
    pub client_gone_grace: Duration,
    /// Client stdin bytes queued while the runtime is slow to take them; the client is then
    /// back-pressured. Default [`DEFAULT_SESSION_STDIN_BUFFER`] (1 MiB).
    #[serde(with = "size")]
    pub stdin_buffer: u64,
    /// Largest payload of one message the bridge sends to the client; runtime output is split
    /// to fit. Default [`DEFAULT_SESSION_MAX_OUTBOUND_PAYLOAD`] (32 KiB).
    #[serde(with = "size")]
    pub max_outbound_payload: u64,
}

/// `cri`: CRI interception (its presence selects CRI mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriSection {
    /// Socket the bridge serves CRI on, `unix:PATH`; point the kubelet's
    /// `--container-runtime-endpoint` here. Required.
    pub listen: Option<String>,
    /// The runtime's CRI socket, `unix:PATH` (e.g. `unix:/run/containerd/containerd.sock`).
    /// Required.
    pub runtime_endpoint: Option<String>,
    /// The bridge's streaming URL as the kubelet reaches it (`http://127.0.0.1:8765`); CRI
    /// Exec/Attach/PortForward answers point there. Required.
    #[serde(with = "opt_uri")]
    pub advertise_url: Option<Uri>,
    /// The runtime's streaming address, for runtime URLs without a scheme or host. Default none
    /// (learnt from the last absolute URL the runtime returned).
    #[serde(with = "opt_uri")]
    pub runtime_stream_base: Option<Uri>,
    /// Lifetime of a bridge token. Default [`DEFAULT_CRI_TOKEN_TTL`] (1 min).
    #[serde(with = "duration")]
    pub token_ttl: Duration,
    /// Most outstanding bridge tokens; more CRI streaming calls are refused. Default
    /// [`DEFAULT_CRI_MAX_TOKENS`] (1000).
    pub max_tokens: usize,
    /// Time to connect to the runtime's CRI socket. Default [`DEFAULT_CRI_CONNECT_TIMEOUT`]
    /// (5 s).
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// How long in-flight CRI calls may finish at shutdown. Default
    /// [`DEFAULT_CRI_SHUTDOWN_GRACE`] (5 s).
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

/// `limits`: what one client or many can make the bridge hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Most sessions at once, handshakes in progress included; over it a request gets 503 with
    /// `Retry-After` before the runtime is contacted. Default [`DEFAULT_LIMITS_MAX_SESSIONS`]
    /// (512).
    pub max_sessions: usize,
    /// The `Retry-After` sent with that 503 (whole seconds). Default
    /// [`DEFAULT_LIMITS_RETRY_AFTER`] (5 s).
    #[serde(with = "duration")]
    pub retry_after: Duration,
    /// Largest client WebSocket message, bytes. Default [`DEFAULT_LIMITS_MAX_MESSAGE_SIZE`]
    /// (32 MiB).
    #[serde(with = "size")]
    pub max_message_size: u64,
    /// Largest client WebSocket frame, bytes; at most `max_message_size`. Default
    /// [`DEFAULT_LIMITS_MAX_FRAME_SIZE`] (32 MiB).
    #[serde(with = "size")]
    pub max_frame_size: u64,
    /// Time from a request's arrival to its 101 (or error), runtime contact included. Default
    /// [`DEFAULT_LIMITS_HANDSHAKE_TIMEOUT`] (60 s).
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Time for a client to send its request head (idle keep-alive connections included), so
    /// silent connections cannot pile up. Default [`DEFAULT_LIMITS_HEADER_READ_TIMEOUT`]
    /// (10 s).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Runtime output buffered per SPDY stream before the bridge stops reading the runtime,
    /// bytes. Default [`DEFAULT_LIMITS_STREAM_BUFFER`] (256 KiB).
    #[serde(with = "size")]
    pub stream_buffer: u64,
    /// DATA frames queued towards the runtime per session before writers wait. Default
    /// [`DEFAULT_LIMITS_WRITE_QUEUE`] (16).
    pub write_queue: usize,
}

/// `drain`: what SIGTERM (or Ctrl-C) does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainSection {
    /// How long live sessions may go on after the listener closed; then translated sessions
    /// get Close 1001 and the rest are dropped. Keep the pod's terminationGracePeriodSeconds
    /// above `deadline + close_timeout`. Default [`DEFAULT_DRAIN_DEADLINE`] (30 s).
    #[serde(with = "duration")]
    pub deadline: Duration,
    /// After the deadline: time for Close 1001 and the upstream teardown before sessions are
    /// dropped. Default [`DEFAULT_DRAIN_CLOSE_TIMEOUT`] (2 s).
    #[serde(with = "duration")]
    pub close_timeout: Duration,
}

/// `log`: tracing output on stderr.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json` (one object a line, for log collectors). Default `text`.
    pub format: LogFormat,
    /// A tracing filter: a level (`info`) or directives (`info,ws_spdy_bridge=debug`).
    /// `RUST_LOG`, when set, wins. Default [`DEFAULT_LOG_LEVEL`] (`info`).
    pub level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            upstream: UpstreamSection::default(),
            base_path: String::new(),
            compat: CompatSection::default(),
            session: SessionSection::default(),
            cri: None,
            limits: LimitsSection::default(),
            drain: DrainSection::default(),
            log: LogSection::default(),
            tls: None,
            upstream_tls: UpstreamTlsConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            url: None,
            connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            response_header_timeout: DEFAULT_UPSTREAM_RESPONSE_HEADER_TIMEOUT,
            max_response_header_bytes: DEFAULT_UPSTREAM_MAX_RESPONSE_HEADER_BYTES,
            max_error_body_bytes: DEFAULT_UPSTREAM_MAX_ERROR_BODY_BYTES,
            error_body_timeout: DEFAULT_UPSTREAM_ERROR_BODY_TIMEOUT,
        }
    }
}

impl Default for SessionSection {
    fn default() -> Self {
        SessionSection {
            idle_timeout: DEFAULT_SESSION_IDLE_TIMEOUT,
            status_write_timeout: DEFAULT_SESSION_STATUS_WRITE_TIMEOUT,
            client_gone_grace: DEFAULT_SESSION_CLIENT_GONE_GRACE,
            stdin_buffer: DEFAULT_SESSION_STDIN_BUFFER,
            max_outbound_payload: DEFAULT_SESSION_MAX_OUTBOUND_PAYLOAD,
        }
    }
}

impl Default for CriSection {
    fn default() -> Self {
        CriSection {
            listen: None,
            runtime_endpoint: None,
            advertise_url: None,
            runtime_stream_base: None,
            token_ttl: DEFAULT_CRI_TOKEN_TTL,
            max_tokens: DEFAULT_CRI_MAX_TOKENS,
            connect_timeout: DEFAULT_CRI_CONNECT_TIMEOUT,
            shutdown_grace: DEFAULT_CRI_SHUTDOWN_GRACE,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_sessions: DEFAULT_LIMITS_MAX_SESSIONS,
            retry_after: DEFAULT_LIMITS_RETRY_AFTER,
            max_message_size: DEFAULT_LIMITS_MAX_MESSAGE_SIZE,
            max_frame_size: DEFAULT_LIMITS_MAX_FRAME_SIZE,
            handshake_timeout: DEFAULT_LIMITS_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_LIMITS_HEADER_READ_TIMEOUT,
            stream_buffer: DEFAULT_LIMITS_STREAM_BUFFER,
            write_queue: DEFAULT_LIMITS_WRITE_QUEUE,
        }
    }
}

impl Default for DrainSection {
    fn default() -> Self {
        DrainSection {
            deadline: DEFAULT_DRAIN_DEADLINE,
            close_timeout: DEFAULT_DRAIN_CLOSE_TIMEOUT,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::default(),
            level: DEFAULT_LOG_LEVEL.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sources

/// The command-line layer: flags given on the command line, each setting one key.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--listen` → `listen`.
    pub listen: Option<SocketAddr>,
    /// `--upstream` → `upstream.url`.
    pub upstream: Option<String>,
    /// `--base-path` → `base_path`.
    pub base_path: Option<String>,
    /// `--compat-upgrade-client-first` → `compat.upgrade_client_first = true`.
    pub compat_upgrade_client_first: bool,
    /// `--compat-upstream-loss-is-success` → `compat.upstream_loss_is_success = true`.
    pub compat_upstream_loss_is_success: bool,
    /// `--cri-listen` → `cri.listen`.
    pub cri_listen: Option<String>,
    /// `--runtime-endpoint` → `cri.runtime_endpoint`.
    pub runtime_endpoint: Option<String>,
    /// `--advertise-url` → `cri.advertise_url`.
    pub advertise_url: Option<String>,
    /// `--runtime-stream-base` → `cri.runtime_stream_base`.
    pub runtime_stream_base: Option<String>,
    /// `--metrics-listen` → `metrics.listen`.
    pub metrics_listen: Option<SocketAddr>,
}

impl Flags {
    /// The keys these flags set, with their values.
    pub fn overrides(&self) -> Vec<(&'static str, ValueKind)> {
        let mut out = Vec::new();
        let mut text = |key, v: &Option<String>| {
            if let Some(v) = v {
                out.push((key, ValueKind::String(v.clone())));
            }
        };
        text("upstream.url", &self.upstream);
        text("base_path", &self.base_path);
        text("cri.listen", &self.cri_listen);
        text("cri.runtime_endpoint", &self.runtime_endpoint);
        text("cri.advertise_url", &self.advertise_url);
        text("cri.runtime_stream_base", &self.runtime_stream_base);
        if let Some(listen) = self.listen {
            out.push(("listen", ValueKind::String(listen.to_string())));
        }
        if let Some(listen) = self.metrics_listen {
            out.push(("metrics.listen", ValueKind::String(listen.to_string())));
        }
        if self.compat_upgrade_client_first {
            out.push(("compat.upgrade_client_first", ValueKind::Boolean(true)));
        }
        if self.compat_upstream_loss_is_success {
            out.push(("compat.upstream_loss_is_success", ValueKind::Boolean(true)));
        }
        out
    }
}

/// The three layers, lowest first.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// A `.yaml`, `.yml` or `.toml` file. Default none (every key at its default).
    pub file: Option<PathBuf>,
    /// Environment variables (all of them: those without [`ENV_PREFIX`] are ignored). Tests
    /// pass their own; `serve` passes the process's.
    pub env: Vec<(String, String)>,
    /// Command-line flags.
    pub flags: Flags,
}

impl Sources {
    /// `file`, the process environment and `flags`.
    pub fn from_process(file: Option<PathBuf>, flags: Flags) -> Self {
        Sources {
            file,
            env: std::env::vars().collect(),
            flags,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// One problem with one key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyError {
    /// The dotted key (`session.idle_timeout`), or the file's path for an unreadable file.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// Where the value came from (`/etc/bridge.yaml`, `environment variable …`, `command
    /// line`); none for defaults.
    pub origin: Option<String>,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(origin) = &self.origin {
            write!(f, " (from {origin})")?;
        }
        Ok(())
    }
}

/// Every problem found, sorted by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<KeyError>);

impl ConfigErrors {
    /// Whether some error is about `key`.
    pub fn has_key(&self, key: &str) -> bool {
        self.0.iter().any(|e| e.key == key)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------
// Loading

impl Config {
    /// Loads and validates: every error of every layer, or the config.
    pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
        let tree = merge(sources)?;
        match deserialize(&tree) {
            Ok(cfg) => cfg.validated_from(&tree, sources.file.as_deref()),
            Err(_) => Err(ConfigErrors(diagnose(&tree, sources.file.as_deref(), true))),
        }
    }

    /// Loads without the semantic checks of [`validate`](Self::validate): type errors and
    /// unknown keys only. For callers that fill a key in before validating (`serve` starts
    /// its built-in simulator when no file and no upstream were given).
    pub fn load_unvalidated(sources: &Sources) -> Result<Config, ConfigErrors> {
        let tree = merge(sources)?;
        deserialize(&tree)
            .map_err(|_| ConfigErrors(diagnose(&tree, sources.file.as_deref(), false)))
    }

    fn validated_from(self, tree: &Tree, file: Option<&Path>) -> Result<Config, ConfigErrors> {
        let mut errors = self.validate();
        if errors.is_empty() {
            return Ok(self);
        }
        for e in &mut errors {
            e.origin = origin_of(tree, &e.key, file);
        }
        Err(ConfigErrors(errors))
    }

    /// `self` if [`validate`](Self::validate) finds nothing.
    pub fn validated(self) -> Result<Config, ConfigErrors> {
        let errors = self.validate();
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Every semantic problem, each naming its key, sorted by key.
    pub fn validate(&self) -> Vec<KeyError> {
        let mut c = Checks::default();
        let up = &self.upstream;
        match (&up.url, &self.cri) {
            (Some(url), _) => c.http_url("upstream.url", url, false),
            (None, None) => c.fail(
                "upstream.url",
                "required in standalone mode (when there is no cri section)",
            ),
            (None, Some(_)) => {}
        }
        c.positive("upstream.connect_timeout", up.connect_timeout);
        c.positive(
            "upstream.response_header_timeout",
            up.response_header_timeout,
        );
        c.at_least(
            "upstream.max_response_header_bytes",
            up.max_response_header_bytes,
            KIB,
        );
        c.fits_usize("upstream.max_error_body_bytes", up.max_error_body_bytes);

        if !self.base_path.is_empty()
            && (!self.base_path.starts_with('/')
                || self.base_path.contains(['?', '#'])
                || self.base_path.contains(char::is_whitespace))
        {
            c.fail(
                "base_path",
                "must be empty or a path starting with '/' (no query, fragment or spaces)",
            );
        }

        let s = &self.session;
        c.positive("session.idle_timeout", s.idle_timeout);
        c.positive("session.status_write_timeout", s.status_write_timeout);
        c.at_least("session.stdin_buffer", s.stdin_buffer, 1);
        c.fits("session.stdin_buffer", s.stdin_buffer, u32::MAX as u64);
        c.at_least("session.max_outbound_payload", s.max_outbound_payload, 1);
        c.fits_usize("session.max_outbound_payload", s.max_outbound_payload);

        if let Some(cri) = &self.cri {
            match &cri.listen {
                None => c.fail("cri.listen", "required in the cri section"),
                Some(l) => c.unix_endpoint("cri.listen", l),
            }
            match &cri.runtime_endpoint {
                None => c.fail("cri.runtime_endpoint", "required in the cri section"),
                Some(r) => c.unix_endpoint("cri.runtime_endpoint", r),
            }
            if let (Some(l), Some(r)) = (&cri.listen, &cri.runtime_endpoint)
                && unix_path(l) == unix_path(r)
            {
                c.fail("cri.listen", "must differ from cri.runtime_endpoint");
            }
            match &cri.advertise_url {
                None => c.fail("cri.advertise_url", "required in the cri section"),
                Some(u) => {
                    c.http_url("cri.advertise_url", u, false);
                    let advertised = u.path().trim_end_matches('/');
                    if !self.base_path.is_empty()
                        && self.base_path.trim_end_matches('/') != advertised
                    {
                        c.fail(
                            "base_path",
                            format!(
                                "must be empty or the path of cri.advertise_url ({advertised:?}) in CRI mode"
                            ),
                        );
                    }
                }
            }
            if let Some(u) = &cri.runtime_stream_base {
                c.http_url("cri.runtime_stream_base", u, true);
            }
            c.positive("cri.token_ttl", cri.token_ttl);
            c.at_least("cri.max_tokens", cri.max_tokens as u64, 1);
            c.positive("cri.connect_timeout", cri.connect_timeout);
        }

        let l = &self.limits;
        c.at_least("limits.max_sessions", l.max_sessions as u64, 1);
        c.at_least_duration("limits.retry_after", l.retry_after, Duration::from_secs(1));
        c.at_least("limits.max_message_size", l.max_message_size, 1);
        c.fits_usize("limits.max_message_size", l.max_message_size);
        c.at_least("limits.max_frame_size", l.max_frame_size, 1);
        if l.max_frame_size > l.max_message_size {
            c.fail(
                "limits.max_frame_size",
                "must not exceed limits.max_message_size",
            );
        }
        c.positive("limits.handshake_timeout", l.handshake_timeout);
        c.positive("limits.header_read_timeout", l.header_read_timeout);
        c.at_least("limits.stream_buffer", l.stream_buffer, KIB);
        c.fits_usize("limits.stream_buffer", l.stream_buffer);
        c.at_least("limits.write_queue", l.write_queue as u64, 1);

        c.positive("drain.close_timeout", self.drain.close_timeout);

        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            c.fail("log.level", format!("not a tracing filter: {e}"));
        }

        let mut errors = c.0;
        errors.sort();
        errors.dedup();
        errors
    }
}

/// Collects validation failures.
#[derive(Default)]
struct Checks(Vec<KeyError>);

impl Checks {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(KeyError {
            key: key.to_owned(),
            message: message.into(),
            origin: None,
        });
    }

    fn positive(&mut self, key: &str, d: Duration) {
        if d.is_zero() {
            self.fail(key, "must be > 0");
        }
    }

    fn at_least_duration(&mut self, key: &str, d: Duration, min: Duration) {
        if d < min {
            self.fail(key, format!("must be at least {}", duration::format(min)));
        }
    }

    fn at_least(&mut self, key: &str, v: u64, min: u64) {
        if v < min {
            let min = if min == 1 {
                "> 0".to_owned()
            } else {
                format!("at least {}", size::format(min))
            };
            self.fail(key, format!("must be {min}"));
        }
    }

    fn fits(&mut self, key: &str, v: u64, max: u64) {
        if v > max {
            self.fail(key, format!("must be at most {}", size::format(max)));
        }
    }

    fn fits_usize(&mut self, key: &str, v: u64) {
        self.fits(key, v, usize::MAX as u64);
    }

    fn http_url(&mut self, key: &str, u: &Uri, origin_only: bool) {
        if !matches!(u.scheme_str(), Some("http" | "https")) || u.authority().is_none() {
            self.fail(key, "must be an http:// or https:// URL with a host");
        } else if u.query().is_some() {
            self.fail(key, "must not have a query");
        } else if origin_only && !matches!(u.path(), "" | "/") {
            self.fail(key, "must have no path (scheme and host only)");
        }
    }

    fn unix_endpoint(&mut self, key: &str, endpoint: &str) {
        let path = unix_path(endpoint);
        if !path.is_absolute() {
            self.fail(key, "must be unix:/absolute/path (or an absolute path)");
        }
    }
}

/// The path of a `unix:PATH` or `unix://PATH` endpoint (a bare path is taken as is).
pub fn unix_path(endpoint: &str) -> PathBuf {
    endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint)
        .into()
}

type Tree = config::Map<String, Value>;

/// The three layers merged into one tree (file, then environment, then flags).
fn merge(sources: &Sources) -> Result<Tree, ConfigErrors> {
    let mut builder = config::Config::builder();
    if let Some(path) = &sources.file {
        let format = file_format(path).map_err(|message| {
            ConfigErrors(vec![KeyError {
                key: path.display().to_string(),
                message,
                origin: None,
            }])
        })?;
        builder = builder.add_source(config::File::from(path.as_path()).format(format));
    }
    let prefix = format!("{ENV_PREFIX}_");
    let env: config::Map<String, String> = sources
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix) && !ENV_NOT_SETTINGS.contains(&k.as_str()))
        .cloned()
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator(ENV_SEPARATOR)
            .ignore_empty(true)
            .source(Some(env)),
    );
    for (key, value) in sources.flags.overrides() {
        let value = Value::new(Some(&FLAG_ORIGIN.to_owned()), value);
        builder = builder
            .set_override(key, value)
            .expect("flag keys are valid paths");
    }
    let built = builder.build().map_err(|e| {
        let key = sources
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "environment".to_owned());
        ConfigErrors(vec![KeyError {
            key,
            message: inner_message(&e),
            origin: None,
        }])
    })?;
    config::Source::collect(&built).map_err(|e| {
        ConfigErrors(vec![KeyError {
            key: "(root)".to_owned(),
            message: inner_message(&e),
            origin: None,
        }])
    })
}

const FLAG_ORIGIN: &str = "command line";
const ENV_ORIGIN: &str = "the environment";

fn file_format(path: &Path) -> Result<config::FileFormat, String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => Ok(config::FileFormat::Yaml),
        Some("toml") => Ok(config::FileFormat::Toml),
        _ => Err("unsupported file type: use .yaml, .yml or .toml".to_owned()),
    }
}

fn deserialize(tree: &Tree) -> Result<Config, ConfigError> {
    Value::new(None, ValueKind::Table(tree.clone())).try_deserialize::<Config>()
}

/// Finds every bad key. serde stops at the first error, so the key it names (the config crate
/// tracks the path) is cut from the tree and the rest is tried again, until what is left
/// deserializes; that is then validated too (`validate`), for keys not already reported.
fn diagnose(tree: &Tree, file: Option<&Path>, validate: bool) -> Vec<KeyError> {
    let mut work = tree.clone();
    let mut errors: Vec<KeyError> = Vec::new();
    let mut cut: Vec<String> = Vec::new();
    loop {
        let e = match deserialize(&work) {
            Ok(cfg) => {
                if validate {
                    let reported = |key: &str| {
                        errors.iter().any(|e| e.key == key)
                            || cut.iter().any(|c| key.starts_with(&format!("{c}.")))
                    };
                    let fresh: Vec<_> = cfg
                        .validate()
                        .into_iter()
                        .filter(|e| !reported(&e.key))
                        .collect();
                    errors.extend(fresh);
                }
                break;
            }
            Err(e) => e,
        };
        let (key, message, remove) = explain(&e);
        let progress = remove.as_deref().is_some_and(|r| remove_path(&mut work, r));
        errors.push(KeyError {
            key,
            message,
            origin: None,
        });
        match remove {
            Some(r) if progress => cut.push(r),
            _ => break,
        }
    }
    for e in &mut errors {
        e.origin = origin_of(tree, &e.key, file);
    }
    errors.sort();
    errors.dedup();
    errors
}

/// The key a deserialization error is about, its message, and the subtree to cut so that
/// the next attempt gets past it.
fn explain(e: &ConfigError) -> (String, String, Option<String>) {
    let (key, message) = match e {
        // A missing required field (inside an optional section such as `tls`): the section
        // goes, since the field cannot be cut.
        ConfigError::NotFound(key) => {
            let parent = key.rsplit_once('.').map(|(p, _)| p.to_owned());
            return (key.clone(), "required".to_owned(), parent);
        }
        ConfigError::At { key, .. } | ConfigError::Type { key, .. } => {
            (key.clone(), inner_message(e))
        }
        other => (None, inner_message(other)),
    };
    // serde names an unknown key by itself, at the level of the struct that refused it.
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((name, expected)) = rest.split_once('`')
    {
        let full = match &key {
            Some(parent) => format!("{parent}.{name}"),
            None => name.to_owned(),
        };
        let expected = expected.trim_start_matches(',').trim().replace('`', "");
        return (full.clone(), format!("unknown key; {expected}"), Some(full));
    }
    match key {
        Some(key) => (key.clone(), message, Some(key)),
        None => ("(root)".to_owned(), message, None),
    }
}

/// Removes the value at dotted `path`; whether there was one.
fn remove_path(tree: &mut Tree, path: &str) -> bool {
    match path.split_once('.') {
        None => tree.remove(path).is_some(),
        Some((first, rest)) => match tree.get_mut(first).map(|v| &mut v.kind) {
            Some(ValueKind::Table(t)) => remove_path(t, rest),
            _ => false,
        },
    }
}

fn origin_of(tree: &Tree, key: &str, file: Option<&Path>) -> Option<String> {
    let mut parts = key.split('.');
    let mut value = tree.get(parts.next()?)?;
    for part in parts {
        match &value.kind {
            ValueKind::Table(t) => value = t.get(part)?,
            _ => return None,
        }
    }
    match value.origin()? {
        ENV_ORIGIN => Some(format!(
            "environment variable {ENV_PREFIX}_{}",
            key.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
        )),
        FLAG_ORIGIN => Some(FLAG_ORIGIN.to_owned()),
        // The config crate names the file relative to the working directory; name it as the
        // operator did.
        other => Some(file.map_or_else(|| other.to_owned(), |f| f.display().to_string())),
    }
}

/// The message of a config error without the key and origin the crate appends.
fn inner_message(e: &ConfigError) -> String {
    match e {
        ConfigError::At { error, .. } => inner_message(error),
        ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {unexpected}, expected {expected}"),
        ConfigError::Message(m) => m.clone(),
        ConfigError::NotFound(_) => "missing".to_owned(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions into the runtime structs

impl Config {
    /// Connecting to the runtime's streaming server. Reads the `upstream_tls` files.
    pub fn upstream_config(&self) -> Result<UpstreamConfig, KeyError> {
        let up = &self.upstream;
        let tls = self
            .upstream_tls
            .client_config()
            .map_err(upstream_tls_error)?;
        Ok(UpstreamConfig {
            connect_timeout: up.connect_timeout,
            response_header_timeout: up.response_header_timeout,
            max_response_header_bytes: to_usize(up.max_response_header_bytes),
            max_error_body_bytes: to_usize(up.max_error_body_bytes),
            error_body_timeout: up.error_body_timeout,
            tls,
        })
    }

    /// The SPDY connection to the runtime: client-go's values with the buffering caps.
    pub fn connection_config(&self) -> ConnectionConfig {
        ConnectionConfig {
            stream_buffer: to_usize(self.limits.stream_buffer),
            write_queue: self.limits.write_queue,
            ..client_connection_config()
        }
    }

    /// Translated sessions.
    pub fn session_config(&self) -> SessionConfig {
        let s = &self.session;
        SessionConfig {
            idle_timeout: s.idle_timeout,
            status_write_timeout: s.status_write_timeout,
            client_gone_grace: s.client_gone_grace,
            stdin_buffer: to_usize(s.stdin_buffer),
            max_outbound_payload: to_usize(s.max_outbound_payload),
            compat_upstream_loss_is_success: self.compat.upstream_loss_is_success,
        }
    }

    /// The streaming server. Reads the `upstream_tls` files (not the listener's: the bridge
    /// loads those when it starts). In CRI mode `upstream.url` is unused (tokens name the
    /// runtime's URLs), the caller sets `tokens`, and the base path is the path of
    /// `cri.advertise_url`.
    pub fn to_bridge_config(&self) -> Result<BridgeConfig, KeyError> {
        let defaults = BridgeConfig::default();
        let base_path = match self.cri.as_ref().and_then(|c| c.advertise_url.as_ref()) {
            Some(advertise) => advertise.path().trim_end_matches('/').to_owned(),
            None => self.base_path.clone(),
        };
        Ok(BridgeConfig {
            listen: self.listen,
            upstream: self.upstream.url.clone().unwrap_or(defaults.upstream),
            base_path,
            compat_upgrade_client_first: self.compat.upgrade_client_first,
            upstream_cfg: self.upstream_config()?,
            connection: self.connection_config(),
            session: self.session_config(),
            max_message: to_usize(self.limits.max_message_size),
            max_frame: to_usize(self.limits.max_frame_size),
            limits: ServeLimits {
                max_sessions: self.limits.max_sessions,
                retry_after: self.limits.retry_after,
                handshake_timeout: self.limits.handshake_timeout,
                header_read_timeout: self.limits.header_read_timeout,
            },
            drain_close_timeout: self.drain.close_timeout,
            tls: self.tls.clone(),
            ..defaults
        })
    }

    /// Reads every file the configuration names (listener and upstream TLS) the way `serve`
    /// will, and reports those that do not load, under their key. Nothing read is kept or
    /// printed.
    pub fn check_files(&self) -> Vec<KeyError> {
        let mut errors = Vec::new();
        if let Some(tls) = &self.tls
            && let Err(e) = crate::server::tls::ServerTls::load(tls.clone())
        {
            errors.push(KeyError {
                key: "tls".to_owned(),
                message: e.to_string(),
                origin: None,
            });
        }
        if let Err(e) = self.upstream_tls.client_config() {
            errors.push(upstream_tls_error(e));
        }
        errors
    }

    /// The CRI interceptor, in CRI mode. `None` in standalone mode, or when a required key is
    /// missing (which [`validate`](Self::validate) reports).
    pub fn to_cri_config(&self) -> Option<CriProxyConfig> {
        let cri = self.cri.as_ref()?;
        let mut out = CriProxyConfig::new(
            unix_path(cri.listen.as_deref()?),
            unix_path(cri.runtime_endpoint.as_deref()?),
            cri.advertise_url.clone()?,
        );
        out.runtime_stream_base = cri.runtime_stream_base.clone();
        out.token_ttl = cri.token_ttl;
        out.max_tokens = cri.max_tokens;
        out.connect_timeout = cri.connect_timeout;
        out.shutdown_grace = cri.shutdown_grace;
        Some(out)
    }
}

fn upstream_tls_error(e: crate::upstream::UpstreamTlsError) -> KeyError {
    use crate::upstream::UpstreamTlsError as E;
    let key = match &e {
        E::Read { key, .. } => format!("upstream_tls.{key}"),
        _ => "upstream_tls".to_owned(),
    };
    let message = match &e {
        E::Read { path, source, .. } => format!("reading {}: {source}", path.display()),
        other => other.to_string(),
    };
    KeyError {
        key,
        message,
        origin: None,
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

// ---------------------------------------------------------------------------------------------
// Printing (check-config)

/// Last `_`-separated words of keys whose values are never printed.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passphrase",
    "secret",
    "token",
    "credentials",
    "pem",
];

impl Config {
    /// The effective configuration as YAML that loads back, with secrets masked: any key
    /// ending in a [`SECRET_WORDS`] word prints `***`, and URLs lose their user-info and
    /// query. Key files are printed by path; their contents are never read.
    pub fn to_masked_yaml(&self) -> String {
        let mut value = serde_json::to_value(self).expect("Config serialises");
        mask(&mut value);
        let mut out = String::new();
        render_yaml(&value, 0, &mut out);
        out
    }
}

fn mask(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let last = k.rsplit('_').next().unwrap_or(k);
                if SECRET_WORDS.contains(&last) && !v.is_null() {
                    *v = serde_json::Value::String("***".into());
                } else {
                    mask(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask),
        serde_json::Value::String(s) => {
            if let Some(masked) = mask_url(s) {
                *s = masked;
            }
        }
        _ => {}
    }
}

/// `scheme://user:pass@host/p?q` → `scheme://***@host/p?***`; `None` when nothing to hide.
fn mask_url(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, had_user) = match authority.rsplit_once('@') {
        Some((_, host)) => (host, true),
        None => (authority, false),
    };
    let (tail, had_query) = match tail.split_once('?') {
        Some((path, _)) => (format!("{path}?***"), true),
        None => (tail.to_owned(), false),
    };
    if !had_user && !had_query {
        return None;
    }
    let user = if had_user { "***@" } else { "" };
    Some(format!("{scheme}://{user}{host}{tail}"))
}

fn render_yaml(value: &serde_json::Value, indent: usize, out: &mut String) {
    let serde_json::Value::Object(map) = value else {
        return;
    };
    let pad = " ".repeat(indent);
    for (k, v) in map {
        match v {
            serde_json::Value::Object(inner) if !inner.is_empty() => {
                out.push_str(&format!("{pad}{k}:\n"));
                render_yaml(v, indent + 2, out);
            }
            // JSON scalars are YAML flow scalars: strings keep their JSON quoting.
            other => out.push_str(&format!("{pad}{k}: {other}\n")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// serde helpers

/// Durations as text with units: `"500ms"`, `"30s"`, `"5m"`, `"4h"`, `"1h30m"`, `"1d"`. A bare
/// number is seconds (as in the `tls` section's durations).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de};

    /// Parses `"1h30m"`-style text.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if let Ok(secs) = text.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
        if text.is_empty() {
            return Err("empty duration; write e.g. \"30s\"".into());
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("invalid duration {text:?}: expected a number"));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let ms_per = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => {
                    return Err(format!(
                        "invalid duration {text:?}: every number but a lone one needs a unit (ms, s, m, h or d)"
                    ));
                }
                other => {
                    return Err(format!(
                        "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h or d)"
                    ));
                }
            };
            total = n
                .checked_mul(ms_per)
                .and_then(|ms| total.checked_add(ms))
                .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
            rest = rest[unit_len..].trim_start();
        }
        Ok(Duration::from_millis(total))
    }

    /// The shortest text [`parse`] reads back (whole milliseconds).
    pub fn format(d: Duration) -> String {
        let mut ms = d.as_millis();
        if ms == 0 {
            return "0s".into();
        }
        let mut out = String::new();
        for (unit, per) in [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
            if ms >= per {
                out.push_str(&format!("{}{unit}", ms / per));
                ms %= per;
            }
        }
        out
    }

    /// serde `serialize_with`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// serde `deserialize_with`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as \"30s\" or \"1h30m\", or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom("a duration cannot be negative")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Byte sizes: a number of bytes, or text with a binary unit: `"512B"`, `"64KiB"`, `"32MiB"`,
/// `"1GiB"`.
pub mod size {
    use serde::{Deserializer, Serializer, de};

    const UNITS: [(&str, u64); 4] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];

    /// Parses `"32MiB"`-style text (or a plain number of bytes).
    pub fn parse(text: &str) -> Result<u64, String> {
        let text = text.trim();
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        if digits == 0 {
            return Err(format!(
                "invalid size {text:?}: expected e.g. 65536 or \"64KiB\""
            ));
        }
        let n: u64 = text[..digits]
            .parse()
            .map_err(|_| format!("invalid size {text:?}: number too large"))?;
        let unit = text[digits..].trim();
        if unit.is_empty() {
            return Ok(n);
        }
        let per = UNITS
            .iter()
            .find(|(u, _)| u.eq_ignore_ascii_case(unit))
            .map(|(_, per)| *per)
            .ok_or_else(|| {
                format!("invalid size {text:?}: unknown unit {unit:?} (use B, KiB, MiB or GiB)")
            })?;
        n.checked_mul(per)
            .ok_or_else(|| format!("invalid size {text:?}: too large"))
    }

    /// The largest exact binary unit: `"32MiB"`, `"1000B"`.
    pub fn format(v: u64) -> String {
        for (unit, per) in UNITS {
            if v >= per && v.is_multiple_of(per) {
                return format!("{}{unit}", v / per);
            }
        }
        "0B".into()
    }

    /// serde `serialize_with`.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*v))
    }

    /// serde `deserialize_with`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size in bytes, e.g. 65536 or \"64KiB\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `Option<http::Uri>` as an optional string.
mod opt_uri {
    use http::Uri;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(u: &Option<Uri>, s: S) -> Result<S::Ok, S::Error> {
        match u {
            Some(u) => s.serialize_some(&u.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uri>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| de::Error::custom(format!("invalid URL {s:?}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_env(env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        Config::load_unvalidated(&Sources {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Sources::default()
        })
    }

    #[test]
    fn durations_read_with_units_and_print_back() {
        assert_eq!(duration::parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration::parse("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(duration::parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration::parse("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(duration::parse("0"), Ok(Duration::ZERO));
        assert_eq!(duration::parse("30"), Ok(Duration::from_secs(30)));
        assert!(
            duration::parse("1h30")
                .unwrap_err()
                .contains("needs a unit")
        );
        assert!(duration::parse("3x").unwrap_err().contains("unknown unit"));
        assert!(duration::parse("").is_err());
        for d in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(5400),
            Duration::from_secs(4 * 3600),
        ] {
            assert_eq!(duration::parse(&duration::format(d)), Ok(d));
        }
        assert_eq!(duration::format(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn sizes_read_as_bytes_or_binary_units() {
        assert_eq!(size::parse("65536"), Ok(65536));
        assert_eq!(size::parse("64KiB"), Ok(65536));
        assert_eq!(size::parse("32 mib"), Ok(32 << 20));
        assert!(size::parse("1MB").is_err());
        assert!(size::parse("-1").is_err());
        assert_eq!(size::format(32 << 20), "32MiB");
        assert_eq!(size::format(1000), "1000B");
        assert_eq!(size::format(0), "0B");
    }

    #[test]
    fn environment_nests_with_double_underscore() {
        let cfg = load_env(&[
            ("WS_SPDY_BRIDGE_SESSION__IDLE_TIMEOUT", "5m"),
            ("WS_SPDY_BRIDGE_BASE_PATH", "/x"),
            ("WS_SPDY_BRIDGE_LIMITS__MAX_SESSIONS", "7"),
            ("WS_SPDY_BRIDGE_COMPAT__UPGRADE_CLIENT_FIRST", "true"),
            ("WS_SPDY_BRIDGE_REQUIRE_PEERS", "1"),
            ("WS_SPDY_BRIDGE_LISTEN", ""),
            ("OTHER", "x"),
        ])
        .unwrap();
        assert_eq!(cfg.session.idle_timeout, Duration::from_secs(300));
        assert_eq!(cfg.base_path, "/x");
        assert_eq!(cfg.limits.max_sessions, 7);
        assert!(cfg.compat.upgrade_client_first);
        assert_eq!(cfg.listen, DEFAULT_LISTEN.parse().unwrap());
    }

    #[test]
    fn bad_leaves_are_each_named_with_their_origin() {
        let env = [
            ("WS_SPDY_BRIDGE_SESSION__IDLE_TIMEOUT", "soon"),
            ("WS_SPDY_BRIDGE_SESSION__STDIN_BUFFER", "lots"),
            ("WS_SPDY_BRIDGE_SESION__IDLE_TIMEOUT", "1s"),
            ("WS_SPDY_BRIDGE_LIMITS__MAX_SESSIONS", "0"),
            ("WS_SPDY_BRIDGE_UPSTREAM__URL", "http://127.0.0.1:1"),
        ];
        // Without validation, only what does not parse.
        let unvalidated = load_env(&env).unwrap_err();
        assert_eq!(unvalidated.0.len(), 3, "{unvalidated}");
        let err = Config::load(&Sources {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Sources::default()
        })
        .unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "limits.max_sessions",
                "sesion",
                "session.idle_timeout",
                "session.stdin_buffer"
            ],
            "{err}"
        );
        let idle = &err.0[2];
        assert!(idle.message.contains("invalid duration"), "{idle}");
        assert_eq!(
            idle.origin.as_deref(),
            Some("environment variable WS_SPDY_BRIDGE_SESSION__IDLE_TIMEOUT")
        );
        assert!(err.0[1].message.starts_with("unknown key"), "{}", err.0[1]);
    }

    #[test]
    fn flags_override_as_keys() {
        let cfg = Config::load_unvalidated(&Sources {
            env: vec![("WS_SPDY_BRIDGE_UPSTREAM__URL".into(), "http://env:1".into())],
            flags: Flags {
                upstream: Some("http://flag:2".into()),
                compat_upstream_loss_is_success: true,
                ..Flags::default()
            },
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(cfg.upstream.url.unwrap().to_string(), "http://flag:2/");
        assert!(cfg.compat.upstream_loss_is_success);
    }

    #[test]
    fn masking_hides_secret_keys_and_url_credentials() {
        let mut v = serde_json::json!({
            "tls": {"key_file": "/etc/key.pem", "key_password": "hunter2", "client_pem": "-----BEGIN"},
            "cri": {"token_ttl": "1m", "max_tokens": 10},
            "url": "https://admin:pw@runtime:10250/base?token=abc",
            "plain": "http://runtime:10250/",
        });
        mask(&mut v);
        assert_eq!(v["tls"]["key_file"], "/etc/key.pem");
        assert_eq!(v["tls"]["key_password"], "***");
        assert_eq!(v["tls"]["client_pem"], "***");
        assert_eq!(v["cri"]["token_ttl"], "1m");
        assert_eq!(v["cri"]["max_tokens"], 10);
        assert_eq!(v["url"], "https://***@runtime:10250/base?***");
        assert_eq!(v["plain"], "http://runtime:10250/");
    }

    #[test]
    fn printed_config_loads_back_unchanged() {
        let mut cfg = Config::default();
        cfg.upstream.url = Some(Uri::from_static("http://127.0.0.1:10010"));
        cfg.cri = Some(CriSection {
            listen: Some("unix:/run/bridge.sock".into()),
            ..CriSection::default()
        });
        cfg.session.idle_timeout = Duration::from_millis(90_500);
        let dir = std::env::temp_dir().join(format!("ws-spdy-bridge-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("printed.yaml");
        std::fs::write(&path, cfg.to_masked_yaml()).unwrap();
        let back = Config::load_unvalidated(&Sources {
            file: Some(path),
            ..Sources::default()
        })
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(back, cfg);
    }

    #[test]
    fn defaults_pass_validation_once_an_upstream_is_set() {
        let mut cfg = Config::default();
        assert_eq!(
            cfg.validate()
                .iter()
                .map(|e| &e.key[..])
                .collect::<Vec<_>>(),
            ["upstream.url"]
        );
        cfg.upstream.url = Some(Uri::from_static("http://127.0.0.1:10010"));
        assert_eq!(cfg.validate(), []);
        let b = cfg.to_bridge_config().unwrap();
        assert_eq!(b.max_message, 32 << 20);
        assert_eq!(b.session.idle_timeout, DEFAULT_SESSION_IDLE_TIMEOUT);
        assert!(cfg.to_cri_config().is_none());
    }
}
