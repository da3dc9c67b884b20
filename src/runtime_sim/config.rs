//! Settings of the runtime simulator. Defaults are the kubelet streaming library's
//! (protocol.md §8) so that the simulator behaves like containerd 1.6 out of the box.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Default [`SimConfig::listen`]: loopback, random port (containerd's default).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
/// Default [`SimConfig::token_ttl`]: 1 minute (kubelet lib `cacheTTL`).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Default [`SimConfig::max_tokens`]: 1000 (kubelet lib `maxInFlight`).
pub const DEFAULT_MAX_TOKENS: usize = 1000;
/// Default [`SimConfig::stream_creation_timeout`]: 30 s (`DefaultStreamCreationTimeout`).
pub const DEFAULT_STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`SimConfig::idle_timeout`]: 4 h (`StreamIdleTimeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);
/// Default [`SimConfig::max_chunk`]: 32 KiB, the copy buffer of Go's `io.Copy`.
pub const DEFAULT_MAX_CHUNK: usize = 32 * 1024;

/// How the simulator listens and how long it waits.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address to listen on. Default [`DEFAULT_LISTEN`] (`127.0.0.1:0`).
    pub listen: SocketAddr,
    /// Allow a non-loopback [`listen`](Self::listen) address. The simulator runs arbitrary
    /// commands for anyone who can reach its CRI endpoints, so this is off by default.
    pub allow_non_loopback: bool,
    /// Optional base path of the streaming URLs (`/base` gives `/base/exec/{token}`); empty or
    /// `/` for none. The JSON CRI endpoints (`/cri/...`) stay at the root. Default empty.
    pub base_path: String,
    /// How long a streaming token stays valid after the CRI call that created it.
    /// Default [`DEFAULT_TOKEN_TTL`] (1 min). Zero makes every token expire at once (tests).
    pub token_ttl: Duration,
    /// Maximum outstanding tokens; one more CRI call fails with `ResourceExhausted`.
    /// Default [`DEFAULT_MAX_TOKENS`] (1000).
    pub max_tokens: usize,
    /// Exec/attach: time allowed for the client to create all expected streams; port-forward:
    /// time allowed to complete each data/error pair. Default
    /// [`DEFAULT_STREAM_CREATION_TIMEOUT`] (30 s).
    pub stream_creation_timeout: Duration,
    /// Connection closed after this long without a frame in either direction.
    /// Default [`DEFAULT_IDLE_TIMEOUT`] (4 h).
    pub idle_timeout: Duration,
    /// Exec accepts any container id (and runs the command on this machine) instead of only
    /// the ids of containers created through the simulator. Default `true`, so that
    /// `echo hi` works without creating a container first.
    pub any_container: bool,
    /// Largest DATA payload the simulator sends, and its read size from processes and
    /// forwarded sockets. Default [`DEFAULT_MAX_CHUNK`] (32 KiB).
    pub max_chunk: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: DEFAULT_LISTEN,
            allow_non_loopback: false,
            base_path: String::new(),
            token_ttl: DEFAULT_TOKEN_TTL,
            max_tokens: DEFAULT_MAX_TOKENS,
            stream_creation_timeout: DEFAULT_STREAM_CREATION_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            any_container: true,
            max_chunk: DEFAULT_MAX_CHUNK,
        }
    }
}

impl SimConfig {
    /// The base path without a trailing slash (`""` for none).
    pub(crate) fn normalized_base_path(&self) -> String {
        let trimmed = self.base_path.trim_end_matches('/');
        if trimmed.is_empty() {
            String::new()
        } else if trimmed.starts_with('/') {
            trimmed.to_owned()
        } else {
            format!("/{trimmed}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_path_is_normalised_to_leading_slash_without_trailing_one() {
        let mut cfg = SimConfig::default();
        assert_eq!(cfg.normalized_base_path(), "");
        cfg.base_path = "/".into();
        assert_eq!(cfg.normalized_base_path(), "");
        cfg.base_path = "cri/".into();
        assert_eq!(cfg.normalized_base_path(), "/cri");
        cfg.base_path = "/a/b".into();
        assert_eq!(cfg.normalized_base_path(), "/a/b");
    }
}
