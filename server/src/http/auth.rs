//! Authentication of requests: the bearer token (or, on the WebSocket
//! route, the `access_token` query parameter) is verified and its session
//! checked before any signed-in route runs.
//!
//! This module must never accept a token that is unsigned, signed with another
//! algorithm, expired, for another audience or issuer, or whose session has
//! been revoked.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use crate::domain::sessions::{session_key, AccessClaims};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub AccessClaims);

/// The `access_token` query parameter, accepted on the WebSocket route only:
/// browsers cannot set headers on a WebSocket handshake.
fn query_token(request: &Request) -> Option<&str> {
    if request.uri().path() != "/api/ws" {
        return None;
    }
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .filter(|token| !token.is_empty())
}

fn bearer(request: &Request) -> AppResult<&str> {
    let Some(header) = request.headers().get(AUTHORIZATION) else {
        return query_token(request).ok_or(AppError::Unauthorized("Missing bearer token"));
    };
    let value = header
        .to_str()
        .map_err(|_| AppError::Unauthorized("Authorization header must be a bearer token"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AppError::Unauthorized(
            "Authorization header must be a bearer token",
        )),
    }
}

/// One round trip per request: whether the token's session is live (its
/// entry holds the token's jti) and, only if it is, one request counted
/// against the caller's per-minute budget. Returns (live, used, seconds left).
static SESSION_AND_BUDGET: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, 0, 0} end
        local used = redis.call('INCR', KEYS[2])
        redis.call('EXPIRE', KEYS[2], 60, 'NX')
        return {1, used, redis.call('TTL', KEYS[2])}
        ",
    )
});

/// Middleware: authenticates the bearer token and puts [`AuthUser`] into the
/// request. Anything wrong is a 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> AppResult<Response> {
    let claims = state.keys.verify(bearer(&request)?)?;
    let mut redis = state.redis.clone();
    // At most one round trip: the session, and the caller's own request
    // budget (counted before any database work, whatever the tenant); none
    // while the session is known live and the budget's batch not full.
    let budget = state.config.limits.user_requests_per_minute;
    let budget_key = format!("throttle:user:{}", claims.sub);
    if let Some(left) = state.refusals.refused(&budget_key) {
        crate::metrics::throttled("user_budget", None);
        return Err(AppError::RateLimited(left));
    }
    let jti = claims.jti.to_string();
    // Seen current within the cache's bound, no change announced, and not
    // past its own expiry (which Redis would have enforced).
    let cached =
        claims.exp > tenancy_token::now() && state.sessions.is_live(claims.sid, claims.jti);
    let (live, used, ttl) = if cached {
        // Known live: only the budget is left, counted as every budget is
        // (in batches when it is large: no round trip for most requests).
        crate::http::limits::count(&state, &budget_key, budget, 60, "user_budget").await?;
        (true, None, None)
    } else if budget > 0 {
        // The session first: only a live token spends its owner's budget,
        // so a revoked one cannot be used to lock its owner out.
        let asked = state.sessions.asking();
        let (live, used, ttl): (i64, i64, i64) = SESSION_AND_BUDGET
            .key(session_key(claims.sid))
            .key(&budget_key)
            .arg(&jti)
            .invoke_async(&mut redis)
            .await?;
        if live == 1 {
            state.sessions.remember(claims.sid, claims.jti, asked);
        }
        (live == 1, Some(used), Some(ttl))
    } else {
        let asked = state.sessions.asking();
        let current: Option<String> = redis::cmd("GET")
            .arg(session_key(claims.sid))
            .query_async(&mut redis)
            .await?;
        let live = current.as_deref() == Some(jti.as_str());
        if live {
            state.sessions.remember(claims.sid, claims.jti, asked);
        }
        (live, None, None)
    };
    if !live {
        return Err(AppError::Unauthorized("Token has been revoked"));
    }
    if used.is_some_and(|n| n > i64::from(budget)) {
        let left = ttl.unwrap_or(60).clamp(1, 60) as u64;
        state.refusals.remember(&budget_key, left);
        crate::metrics::throttled("user_budget", None);
        return Err(AppError::RateLimited(left));
    }
    request.extensions_mut().insert(AuthUser(claims));
    Ok(next.run(request).await)
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuthUser>()
            .cloned()
            .ok_or(AppError::Unauthorized("Missing bearer token"))
    }
}
