//! Authentication: access tokens (what clients hold), sessions in Redis (so a
//! token can be revoked everywhere at once), password hashing, and the
//! context tokens the service hands PostgreSQL on every request.
//!
//! This module must never accept a token that is unsigned, signed with another
//! algorithm, expired, for another audience or issuer, or whose session has
//! been revoked.

use std::sync::LazyLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm as ArgonAlgorithm, Argon2, Params, Version};
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Config;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// A tenant a user belongs to, as listed in a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantRef {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
}

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: Uuid,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_slug: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<Uuid>,
    /// Set for users of several tenants, who must then select one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<TenantRef>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub super_admin: bool,
    pub sid: Uuid,
    pub jti: Uuid,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub AccessClaims);

/// Signing and verification keys, built once from the configuration.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    access_ttl: u64,
    context_kid: String,
    context_secret: String,
    context_ttl: u64,
    /// Context tokens by (tenant, user), reused for half their lifetime so
    /// the database's per-backend verification cache gets hits.
    context_cache: std::sync::Mutex<std::collections::HashMap<(Uuid, Uuid), (String, u64)>>,
}

/// Context tokens kept at most; the map is emptied when it reaches this size.
const CONTEXT_CACHE_CAPACITY: usize = 10_000;

impl Keys {
    pub fn new(config: &Config) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[&config.jwt_audience]);
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(config.jwt_secret.as_bytes()),
            decoding: DecodingKey::from_secret(config.jwt_secret.as_bytes()),
            validation,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            access_ttl: config.access_ttl_secs,
            context_kid: config.context_kid.clone(),
            context_secret: config.context_secret.clone(),
            context_ttl: config.context_ttl_secs,
            context_cache: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub fn access_ttl(&self) -> u64 {
        self.access_ttl
    }

    pub fn verify(&self, token: &str) -> AppResult<AccessClaims> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| AppError::Unauthorized("Invalid or expired token"))
    }

    /// A context token for PostgreSQL: short-lived, signed with the key the
    /// database knows under `context_kid`.
    pub fn context_token(&self, tenant: Uuid, user: Uuid) -> AppResult<String> {
        let now = tenancy_token::now();
        if let Ok(cache) = self.context_cache.lock() {
            if let Some((token, fresh_until)) = cache.get(&(tenant, user)) {
                if *fresh_until > now {
                    return Ok(token.clone());
                }
            }
        }
        let token = self.sign_context(tenant, user, now)?;
        if let Ok(mut cache) = self.context_cache.lock() {
            if cache.len() >= CONTEXT_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert((tenant, user), (token.clone(), now + self.context_ttl / 2));
        }
        Ok(token)
    }

    fn sign_context(&self, tenant: Uuid, user: Uuid, now: u64) -> AppResult<String> {
        let claims = serde_json::json!({
            "tenant_id": tenant,
            "sub": user,
            "iat": now,
            "exp": now + self.context_ttl,
        });
        tenancy_token::sign(&claims, &self.context_kid, "HS256", &self.context_secret)
            .map_err(AppError::internal)
    }

    fn sign(&self, claims: &AccessClaims) -> AppResult<String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(AppError::internal)
    }
}

/// What a login or a tenant switch puts into a new token.
pub struct TokenSubject {
    pub user_id: Uuid,
    pub email: String,
    pub super_admin: bool,
    pub tenant: Option<(Uuid, String)>,
    pub workspace_id: Option<Uuid>,
    pub tenants: Option<Vec<TenantRef>>,
}

pub(crate) fn session_key(sid: Uuid) -> String {
    format!("session:{sid}")
}

/// Issues a token for `subject` in session `sid` and makes it the session's
/// only valid token (an earlier token of the session stops working).
pub async fn issue(
    state: &AppState,
    subject: TokenSubject,
    sid: Uuid,
) -> AppResult<(String, AccessClaims)> {
    let keys = &state.keys;
    let now = tenancy_token::now();
    let claims = AccessClaims {
        sub: subject.user_id,
        email: subject.email,
        tenant_id: subject.tenant.as_ref().map(|(id, _)| *id),
        tenant_slug: subject.tenant.map(|(_, slug)| slug),
        workspace_id: subject.workspace_id,
        tenants: subject.tenants,
        super_admin: subject.super_admin,
        sid,
        jti: Uuid::new_v4(),
        iat: now,
        exp: now + keys.access_ttl,
        iss: keys.issuer.clone(),
        aud: keys.audience.clone(),
    };
    let token = keys.sign(&claims)?;
    let mut redis = state.redis.clone();
    let _: () = redis
        .set_ex(session_key(sid), claims.jti.to_string(), keys.access_ttl)
        .await?;
    Ok((token, claims))
}

/// Ends a session: every token of it stops working on every instance.
pub async fn revoke_session(state: &AppState, sid: Uuid) -> AppResult<()> {
    let mut redis = state.redis.clone();
    let _: () = redis.del(session_key(sid)).await?;
    Ok(())
}

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

/// Middleware: authenticates the bearer token and puts [`AuthUser`] into the
/// request. Anything wrong is a 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> AppResult<Response> {
    let claims = state.keys.verify(bearer(&request)?)?;
    let mut redis = state.redis.clone();
    // One round trip: the session, and the caller's own request budget
    // (counted before any database work, whatever the tenant).
    let budget = state.config.limits.user_requests_per_minute;
    let budget_key = format!("throttle:user:{}", claims.sub);
    let mut pipe = redis::pipe();
    pipe.get(session_key(claims.sid));
    if budget > 0 {
        pipe.incr(&budget_key, 1)
            .cmd("EXPIRE")
            .arg(&budget_key)
            .arg(60)
            .arg("NX")
            .ignore()
            .ttl(&budget_key);
    }
    let (current, used, ttl): (Option<String>, Option<i64>, Option<i64>) = if budget > 0 {
        let (current, used, ttl): (Option<String>, i64, i64) = pipe.query_async(&mut redis).await?;
        (current, Some(used), Some(ttl))
    } else {
        let (current,): (Option<String>,) = pipe.query_async(&mut redis).await?;
        (current, None, None)
    };
    if current.as_deref() != Some(claims.jti.to_string().as_str()) {
        return Err(AppError::Unauthorized("Token has been revoked"));
    }
    if used.is_some_and(|n| n > i64::from(budget)) {
        crate::metrics::throttled("user_budget", None);
        return Err(AppError::RateLimited(ttl.unwrap_or(60).clamp(1, 60) as u64));
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

/// argon2id with the OWASP-recommended parameters (19 MiB, 2 passes, 1 lane).
fn argon2() -> AppResult<Argon2<'static>> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(AppError::internal)?;
    Ok(Argon2::new(
        ArgonAlgorithm::Argon2id,
        Version::V0x13,
        params,
    ))
}

/// Hashes a password (blocking: call from a blocking thread).
pub fn hash_password(password: &str) -> AppResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(AppError::internal)
}

/// Checked for unknown emails so that they take as long as a wrong password.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("not the password of anyone").unwrap_or_default());

/// Verifies `password` against `hash` (or against a dummy hash when the
/// user is unknown) off the async runtime, at most `login_concurrency` at once.
pub async fn verify_password(
    state: &AppState,
    password: String,
    hash: Option<String>,
) -> AppResult<bool> {
    let _slot = state
        .login_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(AppError::internal)?;
    tokio::task::spawn_blocking(move || {
        // An account without a usable hash (invited, not yet set) is
        // checked against the dummy too: it answers in the same time as any
        // other, and never succeeds.
        let usable = hash.filter(|h| PasswordHash::new(h).is_ok());
        let known = usable.is_some();
        let hash = usable.unwrap_or_else(|| DUMMY_HASH.clone());
        let ok = match PasswordHash::new(&hash) {
            Ok(parsed) => argon2()?
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        };
        Ok(ok && known)
    })
    .await
    .map_err(AppError::internal)?
}
