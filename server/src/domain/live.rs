//! What this instance remembers between requests so that the hot path needs
//! no round trip to Redis for the session check: sessions seen live, each
//! for at most a few seconds, and only while a subscription tells it of every
//! change (a new token in the session, a revocation).
//!
//! Correctness rests on three rules:
//! - an entry is written only if no change was announced between the Redis
//!   read that found the session live and the write (the epoch);
//! - losing the subscription empties the cache and turns it off until the
//!   subscription is back, so a missed announcement cannot leave a revoked
//!   session cached;
//! - every entry expires after its age (default [`MAX_AGE`]), counted from
//!   when Redis was asked, whatever happens; and a subscription that hears
//!   nothing, not even this instance's own heartbeat, for a few seconds is
//!   taken as lost.
//!
//! The instance that revokes a session forgets it at once; the others within
//! the delivery of one pub/sub message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The channel on which every change of a session's current token is
/// announced (the payload is the session id).
pub const SESSIONS_CHANNEL: &str = "tenancy:sessions";

/// The default of how long a session is taken as live without asking Redis
/// (`TENANCY_SESSION_CACHE_MS`).
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// Entries kept at most; past it the cache starts again empty.
const CAPACITY: usize = 100_000;

/// Sessions seen live: session id -> (current token id, when Redis was asked).
pub struct LiveSessions {
    entries: Mutex<HashMap<Uuid, (Uuid, Instant)>>,
    /// Counts announcements and subscription changes.
    epoch: AtomicU64,
    /// Whether announcements are being received.
    listening: AtomicBool,
    /// How long an entry is trusted; zero: never.
    max_age: Duration,
}

impl Default for LiveSessions {
    fn default() -> Self {
        Self::new(MAX_AGE)
    }
}

/// When Redis was asked, and the epoch then: what [`LiveSessions::remember`]
/// needs to know that nothing changed since.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    epoch: u64,
    at: Instant,
}

impl LiveSessions {
    /// A cache whose entries are trusted for `max_age` (zero: off).
    pub fn new(max_age: Duration) -> Self {
        LiveSessions {
            entries: Mutex::default(),
            epoch: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            max_age,
        }
    }

    /// Whether token `jti` of session `sid` was seen current within the
    /// cache's age, counted from when Redis was asked, and no change of the
    /// session was announced since.
    pub fn is_live(&self, sid: Uuid, jti: Uuid) -> bool {
        if !self.listening.load(Ordering::Acquire) {
            return false;
        }
        let entries = self.lock();
        entries
            .get(&sid)
            .is_some_and(|(current, at)| *current == jti && at.elapsed() < self.max_age)
    }

    /// To be called just before asking Redis; its answer is then passed to
    /// [`LiveSessions::remember`].
    pub fn asking(&self) -> Asked {
        Asked {
            epoch: self.epoch.load(Ordering::Acquire),
            at: Instant::now(),
        }
    }

    /// Remembers that Redis answered "`jti` is current" for `sid` when
    /// `asked`, unless a change was announced since.
    pub fn remember(&self, sid: Uuid, jti: Uuid, asked: Asked) {
        if self.max_age.is_zero() || !self.listening.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.lock();
        if self.epoch.load(Ordering::Acquire) != asked.epoch {
            return;
        }
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(sid, (jti, asked.at));
    }

    /// A change of `sid` was announced (or made here): forget it.
    pub fn forget(&self, sid: Uuid) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(&sid);
    }

    /// The subscription started (`true`) or was lost (`false`): either way
    /// nothing remembered before can be trusted.
    pub fn listening(&self, on: bool) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.clear();
        self.listening.store(on, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Uuid, Instant)>> {
        // A panic while holding the lock leaves a consistent map.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_live_while_not_listening() {
        let cache = LiveSessions::default();
        let (sid, jti) = (Uuid::new_v4(), Uuid::new_v4());
        cache.remember(sid, jti, cache.asking());
        assert!(!cache.is_live(sid, jti));
    }

    #[test]
    fn a_remembered_session_is_live_for_its_token_only() {
        let cache = LiveSessions::default();
        cache.listening(true);
        let (sid, jti) = (Uuid::new_v4(), Uuid::new_v4());
        cache.remember(sid, jti, cache.asking());
        assert!(cache.is_live(sid, jti));
        assert!(!cache.is_live(sid, Uuid::new_v4()));
        assert!(!cache.is_live(Uuid::new_v4(), jti));
    }

    #[test]
    fn an_announcement_between_read_and_write_keeps_the_entry_out() {
        let cache = LiveSessions::default();
        cache.listening(true);
        let (sid, jti) = (Uuid::new_v4(), Uuid::new_v4());
        let asked = cache.asking();
        cache.forget(sid); // revoked while Redis was being asked
        cache.remember(sid, jti, asked);
        assert!(!cache.is_live(sid, jti));
    }

    #[test]
    fn forgetting_and_losing_the_subscription_end_liveness() {
        let cache = LiveSessions::default();
        cache.listening(true);
        let (sid, jti) = (Uuid::new_v4(), Uuid::new_v4());
        cache.remember(sid, jti, cache.asking());
        cache.forget(sid);
        assert!(!cache.is_live(sid, jti));
        cache.remember(sid, jti, cache.asking());
        cache.listening(false);
        assert!(!cache.is_live(sid, jti));
        cache.listening(true);
        assert!(!cache.is_live(sid, jti), "a new subscription starts empty");
    }

    #[test]
    fn an_entry_ages_from_when_redis_was_asked_and_zero_turns_it_off() {
        let cache = LiveSessions::new(Duration::from_millis(50));
        cache.listening(true);
        let (sid, jti) = (Uuid::new_v4(), Uuid::new_v4());
        let asked = cache.asking();
        std::thread::sleep(Duration::from_millis(60)); // a slow answer
        cache.remember(sid, jti, asked);
        assert!(!cache.is_live(sid, jti));

        let off = LiveSessions::new(Duration::ZERO);
        off.listening(true);
        off.remember(sid, jti, off.asking());
        assert!(!off.is_live(sid, jti));
    }
}
