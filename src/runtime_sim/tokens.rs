//! The request cache of the kubelet streaming library: a CRI call stores its request under a
//! random single-use token, and the streaming URL carries only the token.
//!
//! Tokens are 8 characters of URL-safe base64 (6 random bytes), valid for a TTL after the CRI
//! call, consumed by the first lookup whatever happens next, and at most `max` are outstanding.
//! Time is an argument: the caller passes `now`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::time::Instant;

/// Length of a token in characters.
pub const TOKEN_LEN: usize = 8;
/// Random bytes behind a token (8 base64 characters carry 6 bytes).
const TOKEN_BYTES: usize = TOKEN_LEN * 6 / 8;
/// Attempts at drawing a token that is not already in use.
const MAX_TRIES: usize = 10;

/// Why a token could not be issued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `max` tokens are outstanding.
    #[error("maximum number of in-flight requests exceeded")]
    Full,
    /// Random draws kept colliding with outstanding tokens.
    #[error("failed to generate unique token")]
    NoUniqueToken,
}

struct Entry<T> {
    req: T,
    expires: Instant,
}

/// Outstanding requests by token.
pub struct TokenCache<T> {
    ttl: Duration,
    max: usize,
    entries: HashMap<String, Entry<T>>,
    /// Tokens in insertion order (so in expiry order, the TTL being fixed), for garbage
    /// collection. Consumed tokens stay here until they expire; they are skipped then.
    order: VecDeque<(String, Instant)>,
}

impl<T> TokenCache<T> {
    /// An empty cache.
    pub fn new(ttl: Duration, max: usize) -> Self {
        TokenCache {
            ttl,
            max,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Stores `req` and returns its token.
    pub fn insert(&mut self, req: T, now: Instant) -> Result<String, TokenError> {
        self.gc(now);
        if self.entries.len() >= self.max {
            return Err(TokenError::Full);
        }
        let token = self.unique_token()?;
        let expires = now + self.ttl;
        self.entries.insert(token.clone(), Entry { req, expires });
        self.order.push_back((token.clone(), expires));
        Ok(token)
    }

    /// Removes the token and returns its request if it had not expired. An expired token is
    /// removed too.
    pub fn consume(&mut self, token: &str, now: Instant) -> Option<T> {
        let entry = self.entries.remove(token)?;
        // Like the kubelet lib: valid up to and including the expiry instant.
        if now > entry.expires {
            return None;
        }
        Some(entry.req)
    }

    /// Outstanding (unconsumed, possibly expired but not yet collected) tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is outstanding.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn gc(&mut self, now: Instant) {
        while let Some((token, expires)) = self.order.front() {
            if now <= *expires {
                break;
            }
            // A token can only be re-issued after its entry left `entries`, but a re-issued
            // token may sit later in `order`: remove only the entry this record describes.
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

    fn unique_token(&self) -> Result<String, TokenError> {
        for _ in 0..MAX_TRIES {
            let mut raw = [0u8; TOKEN_BYTES];
            rand::fill(&mut raw[..]);
            let token = URL_SAFE_NO_PAD.encode(raw);
            if !self.entries.contains_key(&token) {
                return Ok(token);
            }
        }
        Err(TokenError::NoUniqueToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max: usize) -> TokenCache<u32> {
        TokenCache::new(Duration::from_secs(60), max)
    }

    #[test]
    fn tokens_are_eight_url_safe_characters() {
        let mut c = cache(100);
        let now = Instant::now();
        for i in 0..100 {
            let t = c.insert(i, now).unwrap();
            assert_eq!(t.len(), TOKEN_LEN);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{t}"
            );
        }
    }

    #[test]
    fn token_is_consumed_by_the_first_lookup() {
        let mut c = cache(10);
        let now = Instant::now();
        let t = c.insert(7, now).unwrap();
        assert_eq!(c.consume(&t, now), Some(7));
        assert_eq!(c.consume(&t, now), None);
        assert!(c.is_empty());
    }

    #[test]
    fn token_expires_after_the_ttl_and_is_removed_by_the_failed_lookup() {
        let mut c = cache(10);
        let now = Instant::now();
        let t1 = c.insert(1, now).unwrap();
        let t2 = c.insert(2, now).unwrap();
        assert_eq!(c.consume(&t1, now + Duration::from_secs(60)), Some(1));
        assert_eq!(c.consume(&t2, now + Duration::from_secs(61)), None);
        assert!(c.is_empty());
    }

    #[test]
    fn cache_refuses_new_tokens_when_full_until_some_expire() {
        let mut c = cache(2);
        let now = Instant::now();
        c.insert(1, now).unwrap();
        let t = c.insert(2, now + Duration::from_secs(30)).unwrap();
        assert_eq!(
            c.insert(3, now + Duration::from_secs(30)),
            Err(TokenError::Full)
        );
        // Consuming frees a slot.
        let later = now + Duration::from_secs(30);
        c.consume(&t, later).unwrap();
        c.insert(4, later).unwrap();
        assert_eq!(c.insert(5, later), Err(TokenError::Full));
        // The first token expires at +60 s; garbage collection frees its slot.
        c.insert(6, now + Duration::from_secs(61)).unwrap();
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn unknown_token_is_not_found() {
        let mut c = cache(2);
        assert_eq!(c.consume("AAAAAAAA", Instant::now()), None);
    }
}
