//! Resource isolation: what one client, user or tenant may take of an
//! instance, so that none of them can degrade the others.
//!
//! - [`guard`] (outermost layer): a cap on requests in progress per
//!   instance, the whole body read (size- and time-limited) before any
//!   authentication or database work, and a deadline for the whole request.
//! - [`Shares`]: each tenant's share of the application pool; a request over
//!   its tenant's share waits briefly, then gets 503 with Retry-After.
//! - [`count`]: budgets in Redis (shared by every instance), counted before
//!   any database work: per user, per client address and per account on
//!   login.
//! - [`Refusals`]: a spent budget is remembered in the instance until its
//!   window ends, so a client hammering past its budget is refused without
//!   a Redis round trip, and the refusal is held back (`guard`) so that a
//!   client which ignores Retry-After cannot turn refusals into a flood.
//! - [`sample`]: repeated denials become one audit row per power of ten.
//!
//! The connection cap and the header timeout live in [`crate::serve`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::error::{AppError, AppResult};
use crate::metrics::Held;
use crate::state::AppState;

/// Caps requests in progress, reads the body before anything else runs, and
/// bounds the whole request.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(slot) = state.in_flight.clone().try_acquire_owned() else {
        return AppError::Busy("This instance is at capacity").into_response();
    };
    let limits = &state.config.limits;
    let (parts, body) = request.into_parts();
    // Refused here, under the connection's own limits (which only catch
    // what is far larger), so that the answer has the service's JSON body.
    if parts.uri.path_and_query().map_or(0, |p| p.as_str().len()) > MAX_URI_BYTES {
        return AppError::UriTooLong.into_response();
    }
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if parts.headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return AppError::HeadersTooLarge.into_response();
    }
    let read = Limited::new(body, state.config.max_body_bytes).collect();
    let bytes = match tokio::time::timeout(secs(limits.body_timeout_secs), read).await {
        Err(_) => return AppError::RequestTimeout.into_response(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return AppError::PayloadTooLarge.into_response()
        }
        Ok(Err(_)) => {
            return AppError::BadRequest("The request body could not be read".to_owned())
                .into_response()
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let route = parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = parts.method.clone();
    let started = std::time::Instant::now();
    let request = Request::from_parts(parts, Body::from(bytes));
    let response =
        match tokio::time::timeout(secs(limits.request_timeout_secs), next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!(route, "request exceeded its deadline");
                AppError::Busy("The request took too long").into_response()
            }
        };
    crate::metrics::with(|m| {
        m.requests
            .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
            .inc();
        m.latency
            .with_label_values(&[route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    });
    // A refused budget is answered late, holding no request slot: a client
    // that retries at once is slowed to one attempt per delay, at the cost
    // of a timer instead of a round of work.
    if response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS {
        drop(slot);
        let retry_after = response
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        let delay =
            Duration::from_millis(limits.throttle_delay_ms).min(Duration::from_secs(retry_after));
        tokio::time::sleep(delay).await;
    }
    response
}

/// The longest request target the service reads (414 beyond).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most headers, and header bytes, a request may carry (431 beyond).
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n.max(1))
}

/// A request's place in its tenant's share (or borrowed beyond it); freed
/// when dropped.
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    _gauge: Held,
    held: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Each tenant's share of the application pool: how many of its requests
/// may hold a transaction at once. Beyond its share a tenant may borrow
/// while a quarter of the pool stays free for the others, so that one
/// tenant alone is not held back, and a tenant that needs its share finds
/// it: borrowed slots are never renewed while the reserve is taken.
pub struct Shares {
    default: u32,
    /// Slots held by every tenant, own and borrowed.
    held: Arc<AtomicUsize>,
    /// Most slots in use at which one more may be borrowed.
    borrow_below: usize,
    tenants: Mutex<HashMap<Uuid, Share>>,
}

struct Share {
    slots: Arc<Semaphore>,
    size: u32,
}

/// Tenants remembered before idle ones are forgotten.
const REMEMBERED: usize = 10_000;

impl Shares {
    /// `share` per tenant (0: half of `pool`, at least 1).
    pub fn new(share: u32, pool: u32) -> Self {
        let default = if share == 0 { pool / 2 } else { share };
        let reserve = (pool / 4).max(1) as usize;
        Self {
            default: default.max(1),
            held: Arc::new(AtomicUsize::new(0)),
            borrow_below: (pool as usize).saturating_sub(reserve),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Share>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One of `tenant`'s slots, waiting at most `wait`.
    pub async fn acquire(&self, tenant: Uuid, wait: Duration) -> AppResult<Slot> {
        let slots = {
            let mut tenants = self.lock();
            if tenants.len() >= REMEMBERED {
                tenants.retain(|_, s| s.slots.available_permits() < s.size as usize);
            }
            tenants
                .entry(tenant)
                .or_insert_with(|| Share {
                    slots: Arc::new(Semaphore::new(self.default as usize)),
                    size: self.default,
                })
                .slots
                .clone()
        };
        let bucket = crate::metrics::bucket(tenant);
        // `held` already counts the slot.
        let slot = |permit| Slot {
            _permit: permit,
            _gauge: Held::new(|m| m.tenant_in_flight.with_label_values(&[bucket.as_str()])),
            held: self.held.clone(),
        };
        // An own slot at once; else a borrowed one while the reserve is
        // free; else wait for an own slot.
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            self.held.fetch_add(1, Ordering::AcqRel);
            return Ok(slot(Some(permit)));
        }
        if self.borrow() {
            return Ok(slot(None));
        }
        let waiting = Held::new(|m| m.tenant_waiting.with_label_values(&[bucket.as_str()]));
        let acquired = tokio::time::timeout(wait, slots.acquire_owned()).await;
        drop(waiting);
        match acquired {
            Ok(Ok(permit)) => {
                self.held.fetch_add(1, Ordering::AcqRel);
                Ok(slot(Some(permit)))
            }
            _ => {
                tracing::warn!(%tenant, "tenant at its share of the database");
                crate::metrics::throttled("tenant_share", Some(tenant));
                Err(AppError::Busy(
                    "Too many requests of this tenant in progress",
                ))
            }
        }
    }

    /// Takes one slot beyond a share if fewer than `borrow_below` are held.
    fn borrow(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.borrow_below).then_some(held + 1)
            })
            .is_ok()
    }

    /// Applies the share the tenant's plan sets (`None`: the default).
    pub fn resize(&self, tenant: Uuid, plan: Option<i32>) {
        let want = plan
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(self.default)
            .max(1);
        let mut tenants = self.lock();
        let Some(share) = tenants.get_mut(&tenant) else {
            return;
        };
        if want > share.size {
            share.slots.add_permits((want - share.size) as usize);
            share.size = want;
        } else if want < share.size {
            // Only free slots can be taken away; the rest go on the next resize.
            let taken = share.slots.forget_permits((share.size - want) as usize);
            share.size -= taken as u32;
        }
    }
}

/// Counts one event against a budget of `limit` per `window` seconds kept
/// in Redis (shared by every instance): 429 with Retry-After once spent.
/// A `limit` of 0 is no budget. Budgets of 200 or more are counted in
/// batches (see [`Tally`]): most events cost no round trip.
pub async fn count(
    state: &AppState,
    key: &str,
    limit: u32,
    window: u64,
    reason: &'static str,
) -> AppResult<()> {
    if limit == 0 {
        return Ok(());
    }
    if let Some(left) = state.refusals.refused(key) {
        crate::metrics::throttled(reason, None);
        return Err(AppError::RateLimited(left));
    }
    let by = match Tally::batch(limit) {
        1 => 1,
        batch => match state.tally.add(key, batch) {
            Some(count) => count,
            None => return Ok(()),
        },
    };
    let (used, ttl) = incr(state, key, by, window).await?;
    if used > i64::from(limit) {
        let left = ttl.clamp(1, window as i64) as u64;
        state.refusals.remember(key, left);
        crate::metrics::throttled(reason, None);
        return Err(AppError::RateLimited(left));
    }
    Ok(())
}

/// Requests this instance has admitted against a per-minute budget and not
/// yet added to its count in Redis. A budget of `b` requests is counted in
/// batches of `b / 100` (at most 1% of it waits here per instance; budgets
/// under 200 are counted one by one), and a batch never waits longer than a
/// second. What waits is lost if the instance stops: the count errs low by
/// less than one batch per instance.
#[derive(Default)]
pub struct Tally {
    pending: Mutex<HashMap<String, (u32, std::time::Instant)>>,
}

/// Keys with uncounted requests kept before the oldest are dropped.
const TALLY_KEYS: usize = 100_000;

impl Tally {
    /// The batch size for a budget of `limit` per minute (1: no batching).
    pub fn batch(limit: u32) -> u32 {
        (limit / 100).max(1)
    }

    /// Counts one request against `key`; returns how many to add to Redis
    /// now (this one included) once `batch` are waiting or the first of
    /// them has waited a second.
    pub fn add(&self, key: &str, batch: u32) -> Option<u32> {
        let now = std::time::Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= TALLY_KEYS && !pending.contains_key(key) {
            pending.retain(|_, (_, since)| now.duration_since(*since) < Duration::from_secs(1));
        }
        let entry = pending.entry(key.to_owned()).or_insert((0, now));
        entry.0 += 1;
        if entry.0 >= batch || now.duration_since(entry.1) >= Duration::from_secs(1) {
            let count = entry.0;
            pending.remove(key);
            return Some(count);
        }
        None
    }
}

/// Budgets this instance has seen spent, each until its window ends (what
/// Redis said, never longer): repeated attempts past a budget are refused
/// without a round trip. Another instance learns of a spent budget on its
/// own first attempt; a budget raised meanwhile takes effect with the next
/// window.
#[derive(Default)]
pub struct Refusals {
    until: Mutex<HashMap<String, std::time::Instant>>,
}

/// Spent budgets remembered before expired ones are dropped.
const REFUSALS_REMEMBERED: usize = 10_000;

impl Refusals {
    /// Seconds left (at least 1) if `key`'s budget is known to be spent.
    pub fn refused(&self, key: &str) -> Option<u64> {
        let until = *self.lock().get(key)?;
        let left = until.checked_duration_since(std::time::Instant::now())?;
        Some(left.as_secs().max(1))
    }

    /// `key`'s budget is spent for `seconds` more.
    pub fn remember(&self, key: &str, seconds: u64) {
        let now = std::time::Instant::now();
        let mut until = self.lock();
        if until.len() >= REFUSALS_REMEMBERED {
            until.retain(|_, t| *t > now);
            if until.len() >= REFUSALS_REMEMBERED {
                until.clear();
            }
        }
        until.insert(key.to_owned(), now + Duration::from_secs(seconds));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        self.until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adds `by` to `key`, expiring `window` seconds after its first increment;
/// returns the count and the seconds left.
async fn incr(state: &AppState, key: &str, by: u32, window: u64) -> AppResult<(i64, i64)> {
    let mut redis = state.redis.clone();
    Ok(redis::pipe()
        .incr(key, by)
        .cmd("EXPIRE")
        .arg(key)
        .arg(window)
        .arg("NX")
        .ignore()
        .ttl(key)
        .query_async(&mut redis)
        .await?)
}

/// Login budgets, checked before the account is looked up: attempts per
/// client address per minute, and failures of this account from this
/// address per 15 minutes. Keyed by address as well as account, so that
/// nobody can spend another person's budget from elsewhere.
pub struct LoginBudget {
    failures_key: String,
}

const LOGIN_FAILURE_WINDOW: u64 = 15 * 60;

impl LoginBudget {
    pub async fn check(state: &AppState, address: &str, email: &str) -> AppResult<LoginBudget> {
        let limits = &state.config.limits;
        count(
            state,
            &format!("throttle:login:addr:{address}"),
            limits.logins_per_address,
            60,
            "login_address",
        )
        .await?;
        // The account by a digest: the key names no address in Redis.
        let account: String = tenancy_token::digest(&email.to_lowercase())[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let failures_key = format!("throttle:login:fail:{account}:{address}");
        if limits.login_failures > 0 {
            let mut redis = state.redis.clone();
            let (failures, ttl): (Option<i64>, i64) = redis::pipe()
                .get(&failures_key)
                .ttl(&failures_key)
                .query_async(&mut redis)
                .await?;
            if failures.unwrap_or(0) >= i64::from(limits.login_failures) {
                crate::metrics::throttled("login_account", None);
                return Err(AppError::RateLimited(
                    ttl.clamp(1, LOGIN_FAILURE_WINDOW as i64) as u64,
                ));
            }
        }
        Ok(LoginBudget { failures_key })
    }

    pub async fn failed(self, state: &AppState) -> AppResult<()> {
        if state.config.limits.login_failures > 0 {
            incr(state, &self.failures_key, 1, LOGIN_FAILURE_WINDOW).await?;
        }
        Ok(())
    }

    pub async fn succeeded(self, state: &AppState) -> AppResult<()> {
        if state.config.limits.login_failures > 0 {
            let mut redis = state.redis.clone();
            redis::cmd("DEL")
                .arg(&self.failures_key)
                .query_async::<()>(&mut redis)
                .await?;
        }
        Ok(())
    }
}

/// How long a run of identical denials is counted as one.
const SAMPLE_WINDOW: u64 = 3600;

/// Counts one occurrence of `key` (a caller, target and reason) within the
/// hour; `Some(n)` when the n-th occurrence should be written down: the
/// 1st, 10th, 100th and so on. A flood of denials costs the target's audit
/// trail a handful of rows, each saying how many it stands for.
pub async fn sample(state: &AppState, key: &str) -> AppResult<Option<i64>> {
    let (n, _) = incr(state, &format!("sample:{key}"), 1, SAMPLE_WINDOW).await?;
    let mut power = 1;
    while power < n {
        power *= 10;
    }
    Ok((power == n).then_some(n))
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn capped(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The client's address as the service's listener saw it ("unknown" when
/// the application runs under another server). Proxies in front of the
/// service make every client one address: give them their own budgets, or
/// keep logins on a listener of their own.
pub struct ClientAddress(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip().to_string())
                .unwrap_or_else(|| "unknown".to_owned()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_budgets_are_counted_one_by_one() {
        assert_eq!(Tally::batch(0), 1);
        assert_eq!(Tally::batch(199), 1);
        assert_eq!(Tally::batch(1200), 12);
        let tally = Tally::default();
        assert_eq!(tally.add("k", 1), Some(1));
        assert_eq!(tally.add("k", 1), Some(1));
    }

    #[test]
    fn a_batch_goes_out_when_full_and_keys_are_apart() {
        let tally = Tally::default();
        assert_eq!(tally.add("a", 3), None);
        assert_eq!(tally.add("b", 3), None);
        assert_eq!(tally.add("a", 3), None);
        assert_eq!(tally.add("a", 3), Some(3));
        assert_eq!(tally.add("a", 3), None, "a new batch starts");
        assert_eq!(tally.add("b", 3), None);
        assert_eq!(tally.add("b", 3), Some(3));
    }

    #[test]
    fn a_batch_waits_at_most_a_second() {
        let tally = Tally::default();
        assert_eq!(tally.add("a", 100), None);
        std::thread::sleep(Duration::from_millis(1010));
        assert_eq!(tally.add("a", 100), Some(2));
    }
}
