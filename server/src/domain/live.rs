//! What this instance remembers between requests so that the hot path needs
//! no round trip to Redis for the session check: sessions seen live, each
//! for at most [`MAX_AGE`], and only while a subscription tells it of every
//! change (a new token in the session, a revocation).
//!
//! Correctness rests on three rules:
//! - an entry is written only if no change was announced between the Redis
//!   read that found the session live and the write (the epoch);
//! - losing the subscription empties the cache and turns it off until the
//!   subscription is back, so a missed announcement cannot leave a revoked
//!   session cached;
//! - every entry expires after [`MAX_AGE`] whatever happens, which bounds
//!   what a silently half-open subscription could cost.
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

/// The longest a session is taken as live without asking Redis.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// Entries kept at most; past it the cache starts again empty.
const CAPACITY: usize = 100_000;

/// Sessions seen live: session id -> (current token id, when read).
#[derive(Default)]
pub struct LiveSessions {
    entries: Mutex<HashMap<Uuid, (Uuid, Instant)>>,
    /// Counts announcements and subscription changes.
    epoch: AtomicU64,
    /// Whether announcements are being received.
    listening: AtomicBool,
}

impl LiveSessions {
    /// Whether token `jti` of session `sid` was seen current within
    /// [`MAX_AGE`] and no change of the session was announced since.
    pub fn is_live(&self, sid: Uuid, jti: Uuid) -> bool {
        if !self.listening.load(Ordering::Acquire) {
            return false;
        }
        let entries = self.lock();
        entries
            .get(&sid)
            .is_some_and(|(current, at)| *current == jti && at.elapsed() < MAX_AGE)
    }

    /// The epoch to pass to [`LiveSessions::remember`], read before asking Redis.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Remembers that Redis answered "`jti` is current" for `sid`, unless a
    /// change was announced since `epoch` was read.
    pub fn remember(&self, sid: Uuid, jti: Uuid, epoch: u64) {
        if !self.listening.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(sid, (jti, Instant::now()));
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
        cache.remember(sid, jti, cache.epoch());
        assert!(!cache.is_live(sid, jti));
    }

    #[test]
    fn a_remembered_session_is_live_for_its_token_only() {
        let cache = LiveSessions::default();
        cache.listening(true);
        let (sid, jti) = (Uuid::new_v4(), Uuid::new_v4());
        cache.remember(sid, jti, cache.epoch());
        assert!(cache.is_live(sid, jti));
        assert!(!cache.is_live(sid, Uuid::new_v4()));
        assert!(!cache.is_live(Uuid::new_v4(), jti));
    }

    #[test]
    fn an_announcement_between_read_and_write_keeps_the_entry_out() {
        let cache = LiveSessions::default();
        cache.listening(true);
        let (sid, jti) = (Uuid::new_v4(), Uuid::new_v4());
        let epoch = cache.epoch();
        cache.forget(sid); // revoked while Redis was being asked
        cache.remember(sid, jti, epoch);
        assert!(!cache.is_live(sid, jti));
    }

    #[test]
    fn forgetting_and_losing_the_subscription_end_liveness() {
        let cache = LiveSessions::default();
        cache.listening(true);
        let (sid, jti) = (Uuid::new_v4(), Uuid::new_v4());
        cache.remember(sid, jti, cache.epoch());
        cache.forget(sid);
        assert!(!cache.is_live(sid, jti));
        cache.remember(sid, jti, cache.epoch());
        cache.listening(false);
        assert!(!cache.is_live(sid, jti));
        cache.listening(true);
        assert!(!cache.is_live(sid, jti), "a new subscription starts empty");
    }
}
