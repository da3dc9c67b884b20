//! Single-use bridge tokens and the session each one stands for.
//!
//! In CRI interception (`design.md`) the bridge answers a CRI `Exec`, `Attach` or
//! `PortForward` with its own streaming URL, `<advertise base>/exec/<token>`. The token is the
//! only thing the streaming client brings back, so everything the streaming side needs is
//! stored under it: what kind of session, the runtime's own streaming URL (with the runtime's
//! token in it), the stream options of the CRI request and, for port-forward, its ports.
//!
//! Tokens behave like the runtime's own (the kubelet streaming library's request cache):
//!
//! * random, URL-safe, [`TOKEN_LEN`] characters of unpadded base64url carrying [`TOKEN_BYTES`]
//!   random bytes (128 bits) from the thread-local CSPRNG, so they cannot be guessed;
//! * single use: [`TokenStore::take`] removes the token whatever the caller does next;
//! * short-lived: valid for a TTL after issue (one minute by default, like the runtime's);
//! * bounded: at most `max` outstanding, after which [`TokenStore::insert`] fails and the CRI
//!   call is refused with `RESOURCE_EXHAUSTED`, as the runtime's cache refuses it.
//!
//! A token is a bearer capability: [`Token`] and [`TokenStore`] never print one, and logs use
//! [`redact`]. Time is an argument (`*_at`); the plain methods read tokio's clock, so tests
//! can pause it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Uri;
use tokio::time::Instant;

use crate::upstream::redact_path;
use crate::upstream::remotecommand::StreamOptions;

/// Random bytes behind a token.
pub const TOKEN_BYTES: usize = 16;
/// Length of a token in characters (unpadded base64url of [`TOKEN_BYTES`] bytes).
pub const TOKEN_LEN: usize = (TOKEN_BYTES * 8).div_ceil(6);
/// How long a token stays valid after issue: the runtime's own token lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Outstanding tokens at most: the runtime's own cache size.
pub const DEFAULT_MAX_TOKENS: usize = 1000;
/// Characters of a token [`redact`] keeps: enough to tell sessions apart in a log.
pub const REDACT_KEEP: usize = 4;
/// Fresh draws tried when a token collides with an outstanding one (it never happens with
/// 128 bits, but a collision must not hand one session's capability to another).
const MAX_DRAWS: usize = 4;

/// Which streaming route a session belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionKind {
    Exec,
    Attach,
    PortForward,
}

impl SessionKind {
    /// The path segment of the route, as in `/exec/{token}`: `exec`, `attach`, `portforward`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Exec => "exec",
            SessionKind::Attach => "attach",
            SessionKind::PortForward => "portforward",
        }
    }
}

/// What a bridge token stands for: the CRI request that produced it and the runtime's answer.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub kind: SessionKind,
    /// The runtime's streaming URL, absolute (`http://127.0.0.1:41235/exec/Vh2Ua5Zr`). Its
    /// last segment is the runtime's token: never log it unredacted.
    pub runtime_url: Uri,
    /// Streams of the CRI request (`Exec`, `Attach`); all false for port-forward.
    pub options: StreamOptions,
    /// Ports of a `PortForward` request (may be empty: SPDY clients name a port per stream).
    pub ports: Vec<u16>,
    /// Container of an `Exec` or `Attach`; empty for port-forward.
    pub container_id: String,
    /// Pod sandbox of a `PortForward`; empty for exec and attach.
    pub pod_sandbox_id: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("kind", &self.kind)
            .field("runtime_url", &redact_url(&self.runtime_url))
            .field("options", &self.options)
            .field("ports", &self.ports)
            .field("container_id", &self.container_id)
            .field("pod_sandbox_id", &self.pod_sandbox_id)
            .finish()
    }
}

/// `scheme://host:port` and the path with its last segment redacted.
pub(crate) fn redact_url(uri: &Uri) -> String {
    let path = redact_path(uri.path_and_query().map_or("/", |pq| pq.as_str()));
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => match authority.port_u16() {
            Some(port) => format!("{scheme}://{}:{port}{path}", authority.host()),
            None => format!("{scheme}://{}{path}", authority.host()),
        },
        _ => path,
    }
}

/// A token as issued. Its value is only reachable through [`Token::as_str`]; `Debug` shows
/// the redacted form, and there is deliberately no `Display`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    /// The full token, for the URL handed to the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Token").field(&redact(&self.0)).finish()
    }
}

/// The loggable form of a token: its first [`REDACT_KEEP`] characters and `…`. A token of at
/// most that length (a forged one, say) is replaced whole.
pub fn redact(token: &str) -> String {
    match token.char_indices().nth(REDACT_KEEP) {
        Some((end, _)) => format!("{}…", &token[..end]),
        None => "…".to_owned(),
    }
}

/// Why no token was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// `max` tokens are outstanding. The runtime's wording, so CRI clients see the same text.
    #[error("maximum number of in-flight requests exceeded ({max} bridge tokens outstanding)")]
    Full { max: usize },
    /// Random draws kept colliding with outstanding tokens (a broken random source).
    #[error("failed to generate a unique bridge token")]
    NoUniqueToken,
}

struct Entry {
    session: Session,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Tokens in issue order, hence expiry order (the TTL is fixed), for collection. Taken
    /// tokens stay here until they expire and are skipped then.
    order: VecDeque<(String, Instant)>,
}

impl Inner {
    fn collect_expired(&mut self, now: Instant) {
        while let Some((token, expires)) = self.order.front() {
            if now <= *expires {
                break;
            }
            // Only remove the entry this record describes: the token may have been taken and,
            // however unlikely, issued again since.
            if self
                .entries
                .get(token)
                .is_some_and(|e| e.expires == *expires)
            {
                self.entries.remove(token);
            }
            self.order.pop_front();
        }
    }
}

/// Outstanding bridge tokens. Shared (`Arc`) between the CRI interceptor, which issues them,
/// and the streaming server, which takes them.
pub struct TokenStore {
    ttl: Duration,
    max: usize,
    inner: Mutex<Inner>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("ttl", &self.ttl)
            .field("max", &self.max)
            .field("outstanding", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for TokenStore {
    fn default() -> Self {
        TokenStore::new(DEFAULT_TTL, DEFAULT_MAX_TOKENS)
    }
}

impl TokenStore {
    /// An empty store: tokens live `ttl`, at most `max` outstanding.
    pub fn new(ttl: Duration, max: usize) -> Self {
        TokenStore {
            ttl,
            max,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Token lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Most tokens outstanding.
    pub fn max(&self) -> usize {
        self.max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that
        // matters (at worst a stale order record), so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `session` under a new token, valid for the TTL from now.
    pub fn insert(&self, session: Session) -> Result<Token, InsertError> {
        self.insert_at(session, Instant::now())
    }

    /// [`insert`](Self::insert) at `now`.
    pub fn insert_at(&self, session: Session, now: Instant) -> Result<Token, InsertError> {
        let mut inner = self.lock();
        inner.collect_expired(now);
        if inner.entries.len() >= self.max {
            return Err(InsertError::Full { max: self.max });
        }
        let token = (0..MAX_DRAWS)
            .map(|_| draw())
            .find(|t| !inner.entries.contains_key(t))
            .ok_or(InsertError::NoUniqueToken)?;
        let expires = now + self.ttl;
        inner
            .entries
            .insert(token.clone(), Entry { session, expires });
        inner.order.push_back((token.clone(), expires));
        Ok(Token(token))
    }

    /// Consumes `token`: its session if it was issued and has not expired or been taken.
    /// Unknown, taken, expired and forged tokens are all `None` (an expired one is removed).
    pub fn take(&self, token: &str) -> Option<Session> {
        self.take_at(token, Instant::now())
    }

    /// [`take`](Self::take) at `now`.
    pub fn take_at(&self, token: &str, now: Instant) -> Option<Session> {
        let entry = self.lock().entries.remove(token)?;
        // Valid up to and including the expiry instant, like the runtime's cache.
        (now <= entry.expires).then_some(entry.session)
    }

    /// Whether an [`insert`](Self::insert) now would fail for lack of room. The interceptor
    /// asks before calling the runtime, so a full store does not spend a runtime token.
    pub fn is_full(&self) -> bool {
        self.is_full_at(Instant::now())
    }

    /// [`is_full`](Self::is_full) at `now`.
    pub fn is_full_at(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        inner.collect_expired(now);
        inner.entries.len() >= self.max
    }

    /// Outstanding tokens (not taken; expired ones count until collected by the next insert).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no token is outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn draw() -> String {
    let mut raw = [0u8; TOKEN_BYTES];
    rand::fill(&mut raw[..]);
    URL_SAFE_NO_PAD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(kind: SessionKind) -> Session {
        Session {
            kind,
            runtime_url: Uri::from_static("http://127.0.0.1:41235/exec/Vh2Ua5Zr"),
            options: StreamOptions {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true,
            },
            ports: Vec::new(),
            container_id: "c1".into(),
            pod_sandbox_id: String::new(),
        }
    }

    #[test]
    fn tokens_are_22_url_safe_characters() {
        assert_eq!(TOKEN_LEN, 22);
        let store = TokenStore::default();
        let t = store.insert(session(SessionKind::Exec)).unwrap();
        assert_eq!(t.as_str().len(), TOKEN_LEN);
        assert!(
            t.as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{}",
            t.as_str()
        );
    }

    #[test]
    fn tokens_differ() {
        let store = TokenStore::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let t = store.insert(session(SessionKind::Attach)).unwrap();
            assert!(seen.insert(t.as_str().to_owned()));
        }
    }

    #[test]
    fn take_returns_the_session_once() {
        let store = TokenStore::default();
        let s = session(SessionKind::Exec);
        let t = store.insert(s.clone()).unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(store.take(t.as_str()), Some(s));
        assert_eq!(store.take(t.as_str()), None);
        assert!(store.is_empty());
    }

    #[test]
    fn token_is_valid_until_and_including_expiry() {
        let store = TokenStore::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let a = store.insert_at(session(SessionKind::Exec), now).unwrap();
        let b = store.insert_at(session(SessionKind::Exec), now).unwrap();
        assert!(
            store
                .take_at(a.as_str(), now + Duration::from_secs(60))
                .is_some()
        );
        let late = now + Duration::from_secs(60) + Duration::from_nanos(1);
        assert_eq!(store.take_at(b.as_str(), late), None);
        // An expired token is gone, not merely refused.
        assert!(store.is_empty());
    }

    #[test]
    fn forged_and_truncated_tokens_are_unknown() {
        let store = TokenStore::default();
        let t = store.insert(session(SessionKind::Exec)).unwrap();
        assert_eq!(store.take("AAAAAAAAAAAAAAAAAAAAAA"), None);
        assert_eq!(store.take(&t.as_str()[..TOKEN_LEN - 1]), None);
        assert_eq!(store.take(""), None);
        // Failed lookups do not disturb the real token.
        assert!(store.take(t.as_str()).is_some());
    }

    #[test]
    fn full_store_refuses_until_a_token_expires() {
        let store = TokenStore::new(Duration::from_secs(1), 2);
        let now = Instant::now();
        store.insert_at(session(SessionKind::Exec), now).unwrap();
        store
            .insert_at(session(SessionKind::Exec), now + Duration::from_millis(500))
            .unwrap();
        assert!(store.is_full_at(now));
        assert_eq!(
            store.insert_at(session(SessionKind::Exec), now),
            Err(InsertError::Full { max: 2 })
        );
        // The first expires; its slot is reclaimed by the next insert.
        let later = now + Duration::from_millis(1001);
        assert!(!store.is_full_at(later));
        store.insert_at(session(SessionKind::Exec), later).unwrap();
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn taken_tokens_free_their_slot_at_once() {
        let store = TokenStore::new(DEFAULT_TTL, 1);
        let t = store.insert(session(SessionKind::Exec)).unwrap();
        assert!(store.is_full());
        store.take(t.as_str()).unwrap();
        store.insert(session(SessionKind::PortForward)).unwrap();
    }

    #[test]
    fn collection_skips_records_of_taken_tokens() {
        let store = TokenStore::new(Duration::from_secs(1), 10);
        let now = Instant::now();
        let a = store.insert_at(session(SessionKind::Exec), now).unwrap();
        store.take_at(a.as_str(), now).unwrap();
        let b = store
            .insert_at(session(SessionKind::Exec), now + Duration::from_millis(900))
            .unwrap();
        // Collecting a's record at 1.1 s must leave b alone.
        store
            .insert_at(
                session(SessionKind::Exec),
                now + Duration::from_millis(1100),
            )
            .unwrap();
        assert!(
            store
                .take_at(b.as_str(), now + Duration::from_millis(1100))
                .is_some()
        );
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        let store = TokenStore::default();
        let t = store.insert(session(SessionKind::Exec)).unwrap();
        let token_dbg = format!("{t:?}");
        let store_dbg = format!("{store:?}");
        assert!(!token_dbg.contains(t.as_str()), "{token_dbg}");
        assert!(
            token_dbg.contains(&t.as_str()[..REDACT_KEEP]),
            "{token_dbg}"
        );
        assert!(
            !store_dbg.contains(&t.as_str()[..REDACT_KEEP]),
            "{store_dbg}"
        );
        // The runtime's token inside the stored URL is redacted too.
        let s = store.take(t.as_str()).unwrap();
        let session_dbg = format!("{s:?}");
        assert!(!session_dbg.contains("Vh2Ua5Zr"), "{session_dbg}");
        assert!(
            session_dbg.contains("http://127.0.0.1:41235/exec/Vh2U…"),
            "{session_dbg}"
        );
    }

    #[test]
    fn redact_keeps_four_characters() {
        assert_eq!(redact("abcdefghijklmnopqrstuv"), "abcd…");
        assert_eq!(redact("abcd"), "…");
        assert_eq!(redact(""), "…");
        assert_eq!(redact("äöüßx"), "äöüß…");
    }

    #[test]
    fn kinds_name_their_routes() {
        assert_eq!(SessionKind::Exec.as_str(), "exec");
        assert_eq!(SessionKind::Attach.as_str(), "attach");
        assert_eq!(SessionKind::PortForward.as_str(), "portforward");
    }
}
