//! Access tokens (what clients hold), sessions (in PostgreSQL, with the
//! current access token of each in Redis, so a token can be revoked
//! everywhere at once), and the context tokens the service hands PostgreSQL
//! on every request.
//!
//! This module must never issue a token for a revoked session, nor let a
//! spent refresh token be used twice.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::Row;
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
    /// The user again, under the name some clients look for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
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

/// Issues a token for `subject` in session `sid`, valid `ttl` seconds, and
/// makes it the session's only valid token (an earlier token of the session
/// stops working).
pub async fn issue(
    state: &AppState,
    subject: TokenSubject,
    sid: Uuid,
    ttl: u64,
) -> AppResult<(String, AccessClaims)> {
    let keys = &state.keys;
    let now = tenancy_token::now();
    let claims = AccessClaims {
        sub: subject.user_id,
        user_id: Some(subject.user_id),
        email: subject.email,
        tenant_id: subject.tenant.as_ref().map(|(id, _)| *id),
        tenant_slug: subject.tenant.map(|(_, slug)| slug),
        workspace_id: subject.workspace_id,
        tenants: subject.tenants,
        super_admin: subject.super_admin,
        sid,
        jti: Uuid::new_v4(),
        iat: now,
        exp: now + ttl,
        iss: keys.issuer.clone(),
        aud: keys.audience.clone(),
    };
    let token = keys.sign(&claims)?;
    let mut redis = state.redis.clone();
    state.sessions.forget(sid);
    let current: redis::RedisResult<i64> = redis::cmd("EVAL")
        .arg(CURRENT_TOKEN)
        .arg(1)
        .arg(session_key(sid))
        .arg(claims.jti.to_string())
        .arg(ttl.max(1))
        .arg(crate::domain::live::SESSIONS_CHANNEL)
        .arg(sid.to_string())
        .query_async(&mut redis)
        .await;
    // The session's earlier token is no longer current, here at once, even
    // if the answer was lost (the write may have happened).
    state.sessions.forget(sid);
    if current? != 1 {
        // The session was ended meanwhile (logout, password change or
        // reset, reuse): its marker is never overwritten.
        return Err(AppError::Unauthorized("Session has ended"));
    }
    Ok((token, claims))
}

/// What a revoked session's entry holds until every access token it could
/// have issued has expired.
const REVOKED: &str = "revoked";

/// Makes `ARGV[1]` the session's current access token for `ARGV[2]`
/// seconds, unless the session has been revoked (then 0), and announces the
/// change (`ARGV[4]`, the session id, on channel `ARGV[3]`).
const CURRENT_TOKEN: &str = r"if redis.call('GET', KEYS[1]) == 'revoked' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1";

/// A new random secret: 32 bytes from the OS, as 64 hex digits, and the
/// SHA-256 under which it is stored.
pub fn new_secret() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let digest = tenancy_token::digest(&secret);
    (secret, digest)
}

/// Whether `secret` has the shape of one from [`new_secret`].
pub fn is_secret(secret: &str) -> bool {
    secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A session's tokens: the access token and its claims, the refresh token,
/// the access token's lifetime in seconds.
pub struct SessionTokens {
    pub access: String,
    pub claims: AccessClaims,
    pub refresh: String,
    pub ttl: u64,
}

/// Where a session was opened from, shown in the session list.
pub struct Origin<'a> {
    pub user_agent: &'a str,
    pub address: &'a str,
}

/// The access token's lifetime in a session whose idle timeout is
/// `idle_secs`: the configured lifetime, never longer than the idle timeout.
fn access_ttl(state: &AppState, idle_secs: i64) -> u64 {
    state
        .keys
        .access_ttl()
        .min(u64::try_from(idle_secs).unwrap_or(0))
        .max(1)
}

/// Opens a session for `subject`: a row in `app.sessions` (so Redis can
/// forget it without loss), its first refresh token and an access token.
pub async fn open_session(
    state: &AppState,
    subject: TokenSubject,
    origin: Origin<'_>,
) -> AppResult<SessionTokens> {
    let sid = Uuid::new_v4();
    let (refresh, digest) = new_secret();
    let idle: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM app.session_start($1, $2, $3, $4, make_interval(secs => $5), $6, $7))::bigint",
    )
    .bind(sid)
    .bind(subject.user_id)
    .bind(subject.tenant.as_ref().map(|(id, _)| *id))
    .bind(&digest[..])
    .bind(state.config.session_max_days.saturating_mul(86_400) as f64)
    .bind(origin.user_agent)
    .bind(origin.address)
    .fetch_one(&state.auth_db)
    .await?;
    let ttl = access_ttl(state, idle);
    let (access, claims) = issue(state, subject, sid, ttl).await?;
    Ok(SessionTokens {
        access,
        claims,
        refresh,
        ttl,
    })
}

/// What a refresh token was good for.
pub enum Refreshed {
    /// Rotated: the session, its user and tenant, the next refresh token,
    /// the access token's lifetime.
    Rotated {
        sid: Uuid,
        user_id: Uuid,
        email: String,
        super_admin: bool,
        tenant: Option<Uuid>,
        refresh: String,
        ttl: u64,
    },
    /// Refused (unknown, expired, revoked, or reused: then the session is
    /// revoked too).
    Refused(&'static str),
}

/// Exchanges a refresh token for the next one. A token presented a second
/// time revokes its whole session, on every instance.
pub async fn rotate_refresh(state: &AppState, presented: &str) -> AppResult<Refreshed> {
    let presented = presented.trim();
    if !is_secret(presented) {
        return Ok(Refreshed::Refused("Invalid or expired refresh token"));
    }
    let (next, digest) = new_secret();
    let row = sqlx::query(
        "SELECT outcome, session_id, user_id, email, is_super_admin, selected_tenant,
                extract(epoch FROM idle_timeout)::bigint AS idle
         FROM app.session_refresh($1, $2)",
    )
    .bind(&tenancy_token::digest(presented)[..])
    .bind(&digest[..])
    .fetch_one(&state.auth_db)
    .await?;
    let outcome: String = row.try_get("outcome")?;
    match outcome.as_str() {
        "rotated" => Ok(Refreshed::Rotated {
            sid: row.try_get("session_id")?,
            user_id: row.try_get("user_id")?,
            email: row.try_get("email")?,
            super_admin: row.try_get("is_super_admin")?,
            tenant: row.try_get("selected_tenant")?,
            refresh: next,
            ttl: access_ttl(state, row.try_get("idle")?),
        }),
        "reused" => {
            let sid: Uuid = row.try_get("session_id")?;
            tracing::warn!(%sid, "refresh token reused: session revoked");
            forget_sessions(state, &[sid]).await?;
            Ok(Refreshed::Refused(
                "Refresh token already used; the session has been ended",
            ))
        }
        _ => Ok(Refreshed::Refused("Invalid or expired refresh token")),
    }
}

/// Makes the session's next tokens for `tenant`; returns the access
/// token's lifetime under that tenant's session timeout.
pub async fn select_tenant(
    state: &AppState,
    sid: Uuid,
    user: Uuid,
    tenant: Uuid,
) -> AppResult<u64> {
    let idle: Option<i64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM app.session_select_tenant($1, $2, $3))::bigint",
    )
    .bind(sid)
    .bind(user)
    .bind(tenant)
    .fetch_one(&state.auth_db)
    .await?;
    // No live session (ended, expired, idle too long): no new token.
    let idle = idle.ok_or(AppError::Unauthorized("Session has ended"))?;
    Ok(access_ttl(state, idle))
}

/// Ends sessions of `user`: `only` that one, or every one but `keep`.
/// Their access tokens stop working on every instance at once.
pub async fn revoke_sessions(
    state: &AppState,
    user: Uuid,
    only: Option<Uuid>,
    keep: Option<Uuid>,
    reason: &str,
) -> AppResult<Vec<Uuid>> {
    let revoked: Vec<Uuid> = sqlx::query_scalar("SELECT app.session_revoke($1, $2, $3, $4)")
        .bind(user)
        .bind(only)
        .bind(keep)
        .bind(reason)
        .fetch_all(&state.auth_db)
        .await?;
    forget_sessions(state, &revoked).await?;
    Ok(revoked)
}

/// Marks sessions ended in the database as revoked in Redis: their access
/// tokens stop working on every instance at once, and no request that was
/// already under way (a refresh, a tenant switch) can make one current
/// again. The marker outlives the longest access token.
pub async fn forget_sessions(state: &AppState, sids: &[Uuid]) -> AppResult<()> {
    if sids.is_empty() {
        return Ok(());
    }
    let ttl = state.keys.access_ttl() + 60;
    let mut pipe = redis::pipe();
    for sid in sids {
        pipe.set_ex(session_key(*sid), REVOKED, ttl).ignore();
        pipe.publish(crate::domain::live::SESSIONS_CHANNEL, sid.to_string())
            .ignore();
        state.sessions.forget(*sid);
    }
    let mut redis = state.redis.clone();
    let written: redis::RedisResult<()> = pipe.query_async(&mut redis).await;
    // Forgotten again after the write (whether or not its answer came): a
    // request that read the entry before it changed may have remembered it
    // meanwhile.
    for sid in sids {
        state.sessions.forget(*sid);
    }
    written?;
    Ok(())
}
