//! The per-session guard, its byte counters and the registry of live sessions.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;
use tokio::time::Instant;

use super::{Channel, CloseSignal, Direction, Kind, Metrics, Outcome, Protocol};

/// One running session, as the registry and its byte counters see it.
struct LiveSession {
    id: u64,
    kind: Kind,
    protocol: Protocol,
    peer: Option<SocketAddr>,
    started: Instant,
    /// Indexed by [`slot`].
    bytes: [AtomicU64; Channel::COUNT * Direction::COUNT],
    /// Bit per [`Channel::index`]: the channels this session carries, shown even at zero.
    used: AtomicU32,
}

fn slot(channel: Channel, direction: Direction) -> usize {
    channel.index() * Direction::COUNT + direction.index()
}

impl LiveSession {
    fn channel_bytes(&self) -> BTreeMap<&'static str, ChannelBytes> {
        let used = self.used.load(Ordering::Relaxed);
        Channel::ALL
            .iter()
            .filter(|c| used & (1 << c.index()) != 0)
            .map(|&c| {
                let get = |d| self.bytes[slot(c, d)].load(Ordering::Relaxed);
                let b = ChannelBytes {
                    client_to_runtime: get(Direction::ClientToRuntime),
                    runtime_to_client: get(Direction::RuntimeToClient),
                };
                (c.as_str(), b)
            })
            .collect()
    }

    fn view(&self, now: Instant) -> SessionView {
        SessionView {
            id: self.id,
            kind: self.kind.as_str(),
            protocol: self.protocol.as_str(),
            age_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
            peer: self.peer.map(|p| p.to_string()),
            bytes: self.channel_bytes(),
        }
    }
}

/// Bytes one session moved on one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChannelBytes {
    pub client_to_runtime: u64,
    pub runtime_to_client: u64,
}

/// One entry of `/debug/sessions`. Holds nothing from the request path: no token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionView {
    /// Process-unique, increasing from 1. Logged and shown here; never a metric label.
    pub id: u64,
    pub kind: &'static str,
    pub protocol: &'static str,
    /// Seconds since the session started.
    pub age_seconds: f64,
    /// The client's address, when known.
    pub peer: Option<String>,
    /// Per channel the session carries (by name).
    pub bytes: BTreeMap<&'static str, ChannelBytes>,
}

/// The sessions running now, fed by [`SessionGuard`]s.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<u64, Arc<LiveSession>>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<LiveSession>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many sessions are running.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every running session, oldest first.
    pub fn snapshot(&self) -> Vec<SessionView> {
        let live: Vec<Arc<LiveSession>> = self.lock().values().cloned().collect();
        let now = Instant::now();
        let mut views: Vec<SessionView> = live.iter().map(|s| s.view(now)).collect();
        views.sort_by_key(|v| v.id);
        views
    }
}

/// Accounts for one session from its start to its end; dropping it records the end.
///
/// `Drop` counts `sessions_ended_total` with the outcome set by [`Self::set_outcome`],
/// decrements `sessions_active`, observes `session_duration_seconds`, removes the session
/// from `/debug/sessions` and writes the session's log line. A guard dropped without an
/// outcome records **`internal_error`**: that happens only when the session's task was
/// aborted (bridge shutdown without a drain), panicked, or a code path forgot to say how it
/// ended, and each of those is the bridge's to explain, not the client's, so it should show
/// up where errors are watched rather than hide among departed clients.
///
/// A disabled guard ([`Self::disabled`], or from a [`super::Meter`] without metrics) records
/// nothing and hands out counters that count nothing.
#[must_use = "dropping the guard ends the session's accounting"]
pub struct SessionGuard {
    active: Option<Active>,
}

struct Active {
    metrics: Arc<Metrics>,
    live: Arc<LiveSession>,
    outcome: Option<Outcome>,
    exit_code: Option<i32>,
}

impl fmt::Debug for SessionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.active {
            None => f.write_str("SessionGuard(disabled)"),
            Some(a) => f
                .debug_struct("SessionGuard")
                .field("id", &a.live.id)
                .field("kind", &a.live.kind)
                .field("protocol", &a.live.protocol)
                .field("outcome", &a.outcome)
                .finish(),
        }
    }
}

impl SessionGuard {
    pub(super) fn start(
        metrics: Arc<Metrics>,
        kind: Kind,
        protocol: Protocol,
        peer: Option<SocketAddr>,
    ) -> SessionGuard {
        let id = metrics.next_id.fetch_add(1, Ordering::Relaxed);
        metrics
            .started
            .with_label_values(&[kind.as_str(), protocol.as_str()])
            .inc();
        metrics.active[kind.index()].inc();
        let live = Arc::new(LiveSession {
            id,
            kind,
            protocol,
            peer,
            started: Instant::now(),
            bytes: std::array::from_fn(|_| AtomicU64::new(0)),
            used: AtomicU32::new(0),
        });
        metrics.sessions.lock().insert(id, live.clone());
        SessionGuard {
            active: Some(Active {
                metrics,
                live,
                outcome: None,
                exit_code: None,
            }),
        }
    }

    /// A guard that records nothing.
    pub fn disabled() -> SessionGuard {
        SessionGuard { active: None }
    }

    /// The session's id (as in `/debug/sessions` and the log line); `None` when disabled.
    pub fn id(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.live.id)
    }

    /// Sets how the session ended; the last call wins.
    pub fn set_outcome(&mut self, outcome: Outcome) {
        if let Some(a) = &mut self.active {
            a.outcome = Some(outcome);
        }
    }

    /// The outcome set so far.
    pub fn outcome(&self) -> Option<Outcome> {
        self.active.as_ref().and_then(|a| a.outcome)
    }

    /// Sets the remote command's exit code, for the log line.
    pub fn set_exit_code(&mut self, code: Option<i32>) {
        if let Some(a) = &mut self.active {
            a.exit_code = code;
        }
    }

    /// The counter of this session's bytes on `channel` going `direction`: resolved here,
    /// once, so that counting is two relaxed atomic adds. The channel is listed in
    /// `/debug/sessions` from now on.
    pub fn bytes(&self, channel: Channel, direction: Direction) -> ByteCounter {
        let Some(a) = &self.active else {
            return ByteCounter::default();
        };
        a.live
            .used
            .fetch_or(1 << channel.index(), Ordering::Relaxed);
        let total = a.metrics.bytes.with_label_values(&[
            a.live.kind.as_str(),
            channel.as_str(),
            direction.as_str(),
        ]);
        ByteCounter {
            inner: Some(CounterInner {
                live: a.live.clone(),
                slot: slot(channel, direction),
                total,
            }),
        }
    }

    /// The v5 CLOSE counters.
    pub fn close_signals(&self) -> CloseSignals {
        CloseSignals(self.active.as_ref().map(|a| a.metrics.clone()))
    }

    /// Records how long establishing the runtime side took (a successful upgrade).
    pub fn upgraded(&self, took: Duration) {
        if let Some(a) = &self.active {
            a.metrics.observe_upgrade(a.live.kind, took);
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some(a) = self.active.take() else {
            return;
        };
        let live = &a.live;
        let outcome = a.outcome.unwrap_or(Outcome::InternalError);
        let m = &a.metrics;
        m.sessions.lock().remove(&live.id);
        m.ended
            .with_label_values(&[live.kind.as_str(), live.protocol.as_str(), outcome.as_str()])
            .inc();
        m.active[live.kind.index()].dec();
        let took = live.started.elapsed();
        m.duration[live.kind.index()].observe(took.as_secs_f64());

        let bytes = live.channel_bytes();
        let sum = |d: fn(&ChannelBytes) -> u64| bytes.values().map(d).sum::<u64>();
        let to_runtime = sum(|b| b.client_to_runtime);
        let to_client = sum(|b| b.runtime_to_client);
        let per_channel = serde_json::to_string(&bytes).unwrap_or_default();
        let peer = Peer(live.peer);
        // The one line per session: only bounded values, the id and the peer; the token never
        // reaches this module.
        match a.exit_code {
            Some(exit_code) => tracing::info!(
                id = live.id,
                kind = live.kind.as_str(),
                protocol = live.protocol.as_str(),
                outcome = outcome.as_str(),
                exit_code,
                duration_seconds = took.as_secs_f64(),
                peer = %peer,
                bytes_client_to_runtime = to_runtime,
                bytes_runtime_to_client = to_client,
                bytes = %per_channel,
                "session ended"
            ),
            None => tracing::info!(
                id = live.id,
                kind = live.kind.as_str(),
                protocol = live.protocol.as_str(),
                outcome = outcome.as_str(),
                duration_seconds = took.as_secs_f64(),
                peer = %peer,
                bytes_client_to_runtime = to_runtime,
                bytes_runtime_to_client = to_client,
                bytes = %per_channel,
                "session ended"
            ),
        }
    }
}

struct Peer(Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => p.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Counts one session's bytes on one channel and direction, into the session's own totals
/// (`/debug/sessions`, the log line) and `ws_spdy_bridge_bytes_total`. Cheap to clone; a
/// default counter counts nothing.
#[derive(Clone, Default)]
pub struct ByteCounter {
    inner: Option<CounterInner>,
}

#[derive(Clone)]
struct CounterInner {
    live: Arc<LiveSession>,
    slot: usize,
    total: IntCounter,
}

impl fmt::Debug for ByteCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("ByteCounter(disabled)"),
            Some(c) => write!(
                f,
                "ByteCounter({})",
                c.live.bytes[c.slot].load(Ordering::Relaxed)
            ),
        }
    }
}

impl ByteCounter {
    /// Adds `n` bytes.
    #[inline]
    pub fn add(&self, n: u64) {
        if let Some(c) = &self.inner
            && n > 0
        {
            c.live.bytes[c.slot].fetch_add(n, Ordering::Relaxed);
            c.total.inc_by(n);
        }
    }

    /// The session's count so far (zero when disabled).
    pub fn get(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |c| c.live.bytes[c.slot].load(Ordering::Relaxed))
    }
}

/// Counts v5 CLOSE messages (`ws_spdy_bridge_close_signals_total`); a default value counts
/// nothing.
#[derive(Clone, Debug, Default)]
pub struct CloseSignals(Option<Arc<Metrics>>);

impl CloseSignals {
    /// Counts one CLOSE naming `signal`'s channel.
    pub fn record(&self, signal: CloseSignal) {
        if let Some(m) = &self.0 {
            m.close_signals[signal.index()].inc();
        }
    }
}
