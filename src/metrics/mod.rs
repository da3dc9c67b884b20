//! Metric families and the per-session guard (design.md "Observability", style habit 7).
//!
//! One [`Metrics`] value owns one prometheus [`Registry`]; it is shared as `Arc<Metrics>`
//! (no process globals, so every test and every bridge in a process has its own numbers).
//!
//! ```text
//!  handshake refused ──▶ handshake_refusals_total{reason}
//!  session accepted  ──▶ SessionGuard ── started_total, active +1, /debug/sessions entry
//!        │ upgrade done ──────────────── upstream_upgrade_duration_seconds
//!        │ bytes (I/O wrapper / pumps) ─ bytes_total{channel,direction}, per-session bytes
//!        │ v5 CLOSE ──────────────────── close_signals_total{channel}
//!        ▼ Drop ──────────────────────── ended_total{outcome}, active -1, duration, log line
//! ```
//!
//! Labels are closed enums ([`labels`]): never a token, a session id or a path. Hot paths do
//! no label lookups: a session resolves its counters once ([`SessionGuard::bytes`]) and then
//! adds with relaxed atomics.

mod io;
pub mod labels;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::{Deserialize, Serialize};

pub use io::CountingIo;
pub use labels::{Channel, CloseSignal, Direction, Kind, Outcome, Protocol, RefusalReason};
pub use session::{ByteCounter, ChannelBytes, CloseSignals, SessionGuard, SessionView, Sessions};

/// Prefix of every family name.
pub const NAMESPACE: &str = "ws_spdy_bridge";

/// Buckets of `ws_spdy_bridge_session_duration_seconds`: a one-shot exec takes tens of
/// milliseconds, an interactive shell or a port-forward hours (the idle timeout is 4 h).
pub const SESSION_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// Buckets of `ws_spdy_bridge_upstream_upgrade_duration_seconds`: a loopback runtime answers
/// in about a millisecond; the connect and response-head timeouts are 30 s each.
pub const UPGRADE_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The admin listener (`/metrics`, `/debug/sessions`, `/healthz`, `/readyz`), the `metrics`
/// section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the admin listener. Default [`MetricsConfig::DEFAULT_LISTEN`]
    /// (`127.0.0.1:9765`): loopback, because `/debug/sessions` shows who is connected; bind a
    /// pod or node address only where the scraper needs it.
    pub listen: SocketAddr,
}

impl MetricsConfig {
    /// Default for [`listen`](Self::listen).
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:9765";
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Self::DEFAULT_LISTEN.parse().expect("valid default"),
        }
    }
}

/// Every metric family of the bridge, and the live-session registry.
pub struct Metrics {
    registry: Registry,
    started: IntCounterVec,
    ended: IntCounterVec,
    bytes: IntCounterVec,
    cri_calls: IntCounterVec,
    /// Per [`Kind`], resolved once.
    active: Vec<IntGauge>,
    duration: Vec<Histogram>,
    upgrade: Vec<Histogram>,
    /// Per [`CloseSignal`] and [`RefusalReason`], resolved once.
    close_signals: Vec<IntCounter>,
    refusals: Vec<IntCounter>,
    sessions: Sessions,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("live_sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn name(suffix: &str) -> String {
    format!("{NAMESPACE}_{suffix}")
}

impl Metrics {
    /// A registry with every family registered. Series of the fixed label sets (active
    /// sessions per kind, close signals, refusal reasons) exist from the start, at zero.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry
                .register(c)
                .expect("metric names are constant and unique");
        };
        let counter_vec = |suffix: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name(suffix), help), labels)
                .expect("valid metric definition");
            reg(Box::new(v.clone()));
            v
        };
        let histogram_vec = |suffix: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name(suffix), help).buckets(buckets.to_vec());
            let v = HistogramVec::new(opts, &["kind"]).expect("valid metric definition");
            reg(Box::new(v.clone()));
            v
        };

        let started = counter_vec(
            "sessions_started_total",
            "Streaming sessions started (the runtime is about to be contacted), by kind and protocol.",
            &["kind", "protocol"],
        );
        let ended = counter_vec(
            "sessions_ended_total",
            "Streaming sessions ended, by kind, protocol and outcome.",
            &["kind", "protocol", "outcome"],
        );
        let bytes = counter_vec(
            "bytes_total",
            "Payload bytes relayed, by kind, channel and direction.",
            &["kind", "channel", "direction"],
        );
        let close = counter_vec(
            "close_signals_total",
            "v5.channel.k8s.io CLOSE messages received from clients, by the channel they name.",
            &["channel"],
        );
        let refusals = counter_vec(
            "handshake_refusals_total",
            "Streaming requests refused before any session started, by reason.",
            &["reason"],
        );
        let cri_calls = counter_vec(
            "cri_calls_total",
            "CRI calls forwarded to the runtime, by method and whether the bridge intercepted them.",
            &["method", "intercepted"],
        );
        let active_vec = IntGaugeVec::new(
            Opts::new(
                name("sessions_active"),
                "Streaming sessions running now, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric definition");
        reg(Box::new(active_vec.clone()));
        let duration = histogram_vec(
            "session_duration_seconds",
            "Time from the start of a streaming session to its end, by kind.",
            SESSION_DURATION_BUCKETS,
        );
        let upgrade = histogram_vec(
            "upstream_upgrade_duration_seconds",
            "Time to establish a session with the runtime (connect, upgrade and, for exec and attach, stream creation), successful attempts only, by kind.",
            UPGRADE_DURATION_BUCKETS,
        );

        Metrics {
            active: Kind::ALL
                .iter()
                .map(|k| active_vec.with_label_values(&[k.as_str()]))
                .collect(),
            duration: Kind::ALL
                .iter()
                .map(|k| duration.with_label_values(&[k.as_str()]))
                .collect(),
            upgrade: Kind::ALL
                .iter()
                .map(|k| upgrade.with_label_values(&[k.as_str()]))
                .collect(),
            close_signals: CloseSignal::ALL
                .iter()
                .map(|c| close.with_label_values(&[c.as_str()]))
                .collect(),
            refusals: RefusalReason::ALL
                .iter()
                .map(|r| refusals.with_label_values(&[r.as_str()]))
                .collect(),
            registry,
            started,
            ended,
            bytes,
            cri_calls,
            sessions: Sessions::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// The registry: for scraping, or to register more collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format of every family (`/metrics`).
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of valid families");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Sessions running now (`/debug/sessions`).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Counts a request refused before any session started.
    pub fn refused(&self, reason: RefusalReason) {
        self.refusals[reason.index()].inc();
    }

    /// Counts a CRI call forwarded to the runtime; `path` is the gRPC path
    /// (`/runtime.v1.RuntimeService/Exec`), reduced to a bounded method name.
    pub fn cri_call(&self, path: &str, intercepted: bool) {
        let intercepted = if intercepted { "true" } else { "false" };
        self.cri_calls
            .with_label_values(&[labels::cri_method(path), intercepted])
            .inc();
    }

    /// Starts accounting for a session: counts it as started and active and lists it in
    /// [`Self::sessions`] until the guard is dropped.
    pub fn start_session(
        self: &Arc<Self>,
        kind: Kind,
        protocol: Protocol,
        peer: Option<SocketAddr>,
    ) -> SessionGuard {
        SessionGuard::start(self.clone(), kind, protocol, peer)
    }

    fn observe_upgrade(&self, kind: Kind, took: Duration) {
        self.upgrade[kind.index()].observe(took.as_secs_f64());
    }
}

/// What a translator needs to account for the sessions it may start: the bridge's metrics, if
/// any, and the client's address. Without metrics every operation is a no-op, so library users
/// and tests that do not care pass [`Meter::default`].
#[derive(Clone, Debug, Default)]
pub struct Meter {
    metrics: Option<Arc<Metrics>>,
    peer: Option<SocketAddr>,
}

impl Meter {
    /// A meter recording into `metrics` (none: records nothing) for a client at `peer`.
    pub fn new(metrics: Option<Arc<Metrics>>, peer: Option<SocketAddr>) -> Meter {
        Meter { metrics, peer }
    }

    /// The metrics recorded into, if any.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Counts a request refused before any session started.
    pub fn refused(&self, reason: RefusalReason) {
        if let Some(m) = &self.metrics {
            m.refused(reason);
        }
    }

    /// Starts a session ([`Metrics::start_session`]); a guard that records nothing without
    /// metrics.
    pub fn start(&self, kind: Kind, protocol: Protocol) -> SessionGuard {
        match &self.metrics {
            Some(m) => m.start_session(kind, protocol, self.peer),
            None => SessionGuard::disabled(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn fixed_series_exist_at_zero() {
        let m = Metrics::new();
        let text = m.encode();
        assert_eq!(
            value(&text, "ws_spdy_bridge_sessions_active{kind=\"exec\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                "ws_spdy_bridge_handshake_refusals_total{reason=\"unknown_token\"}"
            ),
            Some(0.0)
        );
        assert!(text.contains("# HELP ws_spdy_bridge_close_signals_total "));
    }

    #[test]
    fn a_guard_records_its_outcome_once_dropped() {
        let m = Arc::new(Metrics::new());
        let mut guard = m.start_session(Kind::Exec, Protocol::V5, None);
        guard
            .bytes(Channel::Stdin, Direction::ClientToRuntime)
            .add(5);
        assert_eq!(m.sessions().len(), 1);
        let text = m.encode();
        assert_eq!(
            value(&text, "ws_spdy_bridge_sessions_active{kind=\"exec\"}"),
            Some(1.0)
        );
        guard.set_outcome(Outcome::ExitNonzero);
        drop(guard);
        let text = m.encode();
        assert_eq!(
            value(&text, "ws_spdy_bridge_sessions_active{kind=\"exec\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                "ws_spdy_bridge_sessions_ended_total{kind=\"exec\",outcome=\"exit_nonzero\",protocol=\"v5\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "ws_spdy_bridge_bytes_total{channel=\"stdin\",direction=\"client_to_runtime\",kind=\"exec\"}"
            ),
            Some(5.0)
        );
        assert_eq!(m.sessions().len(), 0);
    }

    #[test]
    fn a_guard_without_an_outcome_records_internal_error() {
        let m = Arc::new(Metrics::new());
        drop(m.start_session(Kind::PortForward, Protocol::Tunnel, None));
        assert_eq!(
            value(
                &m.encode(),
                "ws_spdy_bridge_sessions_ended_total{kind=\"portforward\",outcome=\"internal_error\",protocol=\"tunnel\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn cri_calls_are_counted_by_bounded_method() {
        let m = Metrics::new();
        m.cri_call("/runtime.v1.RuntimeService/Exec", true);
        m.cri_call("/secret/abcdef", false);
        let text = m.encode();
        assert_eq!(
            value(
                &text,
                "ws_spdy_bridge_cri_calls_total{intercepted=\"true\",method=\"Exec\"}"
            ),
            Some(1.0)
        );
        assert!(!text.contains("abcdef"));
    }

    #[test]
    fn config_rejects_unknown_keys_and_defaults_to_loopback() {
        let cfg: MetricsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9765");
        let cfg: MetricsConfig = serde_json::from_str(r#"{"listen":"0.0.0.0:1"}"#).unwrap();
        assert_eq!(cfg.listen.port(), 1);
        assert!(serde_json::from_str::<MetricsConfig>(r#"{"listne":"x"}"#).is_err());
    }
}
