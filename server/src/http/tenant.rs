//! Tenant resolution and the per-request database transaction.
//!
//! Resolution order: subdomain of the base domain, custom domain, the
//! `X-Tenant-ID` header, the token's `tenant_id` claim. The resolved tenant
//! must match the token's tenant (when it has one) and the caller must be a
//! member. Then one transaction is opened, the signed context is set in it,
//! and the handler runs inside it; the middleware commits on success and
//! rolls back otherwise.
//!
//! Handlers never filter by tenant: the database does. This module must never
//! run a handler without the context set, nor reuse a transaction across
//! requests.

pub mod decide;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::error::{AppError, AppResult};
use crate::http::auth::AuthUser;
use crate::state::AppState;

/// The tenant of this request, with the caller's role in it and the tenant's
/// configuration (loaded once per request).
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub display_name: String,
    pub configuration: serde_json::Value,
    /// The caller's tenant role: owner, admin or member.
    pub role: String,
    pub user_id: Uuid,
    pub default_workspace_id: Option<Uuid>,
    pub super_admin: bool,
    /// workspace id -> admin | member | viewer, read through the tenant's context.
    pub workspace_roles: std::collections::HashMap<Uuid, crate::domain::authz::WorkspaceRole>,
}

impl Tenant {
    /// The caller as the Cedar policies see it.
    pub fn principal(&self) -> crate::domain::authz::Principal {
        crate::domain::authz::Principal {
            user: self.user_id,
            tenant: self.id,
            // The membership's role (the database allows only these names).
            tenant_role: crate::domain::authz::TenantRole::parse(&self.role)
                .unwrap_or(crate::domain::authz::TenantRole::None),
            super_admin: self.super_admin,
            workspace_roles: self.workspace_roles.clone(),
        }
    }
}

/// The request's transaction, with the tenant context set.
#[derive(Clone)]
pub struct Db(Arc<Mutex<Option<Transaction<'static, Postgres>>>>);

impl Db {
    pub async fn lock(&self) -> AppResult<DbGuard<'_>> {
        Ok(DbGuard(self.0.lock().await))
    }
}

pub struct DbGuard<'a>(MutexGuard<'a, Option<Transaction<'static, Postgres>>>);

impl DbGuard<'_> {
    /// Rolls the request's transaction back and ends it: nothing it did is kept.
    pub async fn discard(&mut self) -> AppResult<()> {
        if let Some(tx) = self.0.take() {
            tx.rollback().await?;
        }
        Ok(())
    }

    /// The request's transaction, for what the decision `_` allowed.
    pub fn conn(&mut self, _: decide::Decided) -> AppResult<&mut sqlx::PgConnection> {
        self.tx()
    }

    /// The transaction before any decision: for the resource lookups in
    /// [`decide`] only.
    fn tx(&mut self) -> AppResult<&mut sqlx::PgConnection> {
        match self.0.as_mut() {
            Some(tx) => Ok(&mut **tx),
            None => Err(AppError::Internal(
                "request transaction already finished".to_owned(),
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Db {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Db>().cloned().ok_or_else(|| {
            AppError::Internal("no request transaction (route outside the tenant layer)".to_owned())
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Tenant>()
            .cloned()
            .ok_or(AppError::TenantRequired)
    }
}

/// Where the tenant came from; the first source present wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Host,
    Header,
    Claim,
}

/// A host name from the Host header, lower-cased, without port; `None` for
/// IP literals and localhost, which never name a tenant.
fn host_name(headers: &HeaderMap) -> AppResult<Option<String>> {
    let Some(raw) = headers.get(axum::http::header::HOST) else {
        return Ok(None);
    };
    let raw = raw
        .to_str()
        .map_err(|_| AppError::BadRequest("Invalid Host header".to_owned()))?;
    let host = match raw.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => raw,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" {
        return Ok(None);
    }
    if !is_host_name(&host) {
        return Err(AppError::BadRequest("Invalid Host header".to_owned()));
    }
    Ok(Some(host))
}

pub use crate::domain::is_host_name;

/// Looks the host up: `Some(id)` for a tenant's subdomain or custom domain.
/// An unknown subdomain of the base domain is a 404; any other unknown host
/// (the service's own name) names no tenant.
async fn tenant_from_host(state: &AppState, host: &str) -> AppResult<Option<Uuid>> {
    let base = state.config.base_domain();
    let subdomain = base.as_deref().and_then(|base| {
        host.strip_suffix(base)
            .and_then(|rest| rest.strip_suffix('.'))
            .filter(|label| !label.contains('.') && !matches!(*label, "www" | "api"))
    });
    if base.as_deref() == Some(host)
        || (subdomain.is_none()
            && base
                .as_deref()
                .is_some_and(|b| host.ends_with(&format!(".{b}"))))
    {
        return Ok(None);
    }
    let row: Option<(Uuid,)> = sqlx::query_as("SELECT tenant_id FROM tenancy.resolve_tenant($1)")
        .bind(host)
        .fetch_optional(&state.db)
        .await?;
    match (row, subdomain) {
        (Some((id,)), _) => Ok(Some(id)),
        (None, Some(_)) => Err(AppError::TenantNotFound),
        (None, None) => Ok(None),
    }
}

fn tenant_from_header(headers: &HeaderMap) -> AppResult<Option<Uuid>> {
    match headers.get("x-tenant-id") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| Uuid::parse_str(v.trim()).ok())
            .map(Some)
            .ok_or_else(|| AppError::BadRequest("X-Tenant-ID must be a UUID".to_owned())),
    }
}

async fn resolve(
    state: &AppState,
    headers: &HeaderMap,
    user: &AuthUser,
) -> AppResult<(Uuid, Source)> {
    if let Some(host) = host_name(headers)? {
        if let Some(id) = tenant_from_host(state, &host).await? {
            if tenant_from_header(headers)?.is_some_and(|h| h != id) {
                return Err(AppError::BadRequest(
                    "X-Tenant-ID does not match the host's tenant".to_owned(),
                ));
            }
            return Ok((id, Source::Host));
        }
    }
    if let Some(id) = tenant_from_header(headers)? {
        return Ok((id, Source::Header));
    }
    match user.0.tenant_id {
        Some(id) => Ok((id, Source::Claim)),
        None => Err(AppError::TenantRequired),
    }
}

/// How many times a tenant-scoped request runs when its transaction loses a
/// deadlock or a serialization conflict, before the caller gets 409.
const ATTEMPTS: u32 = 3;

/// Middleware for tenant-scoped routes (runs after `authenticate`).
pub async fn tenant_scope(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> AppResult<Response> {
    let user = request
        .extensions()
        .get::<AuthUser>()
        .cloned()
        .ok_or(AppError::Unauthorized("Missing bearer token"))?;
    let (tenant_id, source) = resolve(&state, request.headers(), &user).await?;
    // A tenant whose API budget this instance has seen spent is refused
    // before it takes a slot of the pool or a round trip: its members'
    // excess costs the others nothing. Only for tokens issued for this
    // tenant, so that an outsider learns nothing of another tenant's use.
    let api_key = api_budget_key(tenant_id);
    if user.0.tenant_id == Some(tenant_id) {
        if let Some(left) = state.refusals.refused(&api_key) {
            crate::metrics::throttled("tenant_api", Some(tenant_id));
            return Err(AppError::RateLimited(left));
        }
    }
    // The tenant's share of the pool, held until its transaction ends: one
    // tenant's load waits in its own line, not in everyone's.
    let _share = state
        .shares
        .acquire(
            tenant_id,
            std::time::Duration::from_millis(state.config.limits.tenant_queue_ms),
        )
        .await?;
    // A request whose transaction loses a deadlock or a serialization
    // conflict runs again from the start (membership and decision included)
    // on a new transaction, a bounded number of times; its body is kept for
    // that. Reads (GET, HEAD) take no row locks at read committed, so they
    // neither deadlock nor lose such conflicts: they run once, unbuffered,
    // as does a WebSocket upgrade.
    let reads = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if reads {
        return attempt(&state, &user, tenant_id, source, request, next, Mode::Read).await;
    }
    if request.headers().contains_key(axum::http::header::UPGRADE) {
        return attempt(&state, &user, tenant_id, source, request, next, Mode::Once).await;
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, state.config.max_body_bytes)
        .await
        .map_err(|e| {
            if e.into_inner().is::<http_body_util::LengthLimitError>() {
                AppError::PayloadTooLarge
            } else {
                AppError::BadRequest("The request body could not be read".to_owned())
            }
        })?;
    let mut tries = 0;
    loop {
        tries += 1;
        let request = Request::from_parts(parts.clone(), axum::body::Body::from(body.clone()));
        let outcome = attempt(
            &state,
            &user,
            tenant_id,
            source,
            request,
            next.clone(),
            if tries == 1 { Mode::Once } else { Mode::Again },
        )
        .await;
        let lost = match &outcome {
            Err(e) => matches!(e, AppError::Contention),
            Ok(response) => response
                .extensions()
                .get::<crate::error::Contended>()
                .is_some(),
        };
        if !lost || tries >= ATTEMPTS {
            return outcome;
        }
        crate::metrics::throttled("contention_retry", Some(tenant_id));
        tracing::debug!(%tenant_id, tries, "transaction lost a conflict; running the request again");
        let pause = 5 * u64::from(tries) + u64::from(rand_millis());
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
}

/// Up to 10 ms, so that two requests that collided do not collide again.
fn rand_millis() -> u8 {
    (uuid::Uuid::new_v4().as_bytes()[0]) % 10
}

/// How a tenant-scoped request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A write, run for the first time.
    Once,
    /// A write run again after a conflict: its API budget was already counted.
    Again,
    /// A read (GET, HEAD, the WebSocket handshake included): a READ ONLY
    /// transaction, ended by a rollback that the pool sends with the
    /// connection's release check (one round trip fewer than a COMMIT;
    /// nothing to keep). Not run again on conflicts: at read committed a
    /// read takes no row locks.
    Read,
}

/// One run of a tenant-scoped request: a new transaction with the signed
/// context, the caller's membership, the handler, then commit (on success)
/// or rollback.
async fn attempt(
    state: &AppState,
    user: &AuthUser,
    tenant_id: Uuid,
    source: Source,
    mut request: Request,
    next: Next,
    mode: Mode,
) -> AppResult<Response> {
    let user_id = user.0.sub;
    let api_key = api_budget_key(tenant_id);
    let first = mode != Mode::Again;
    let mut tx = begin(state, mode).await?;
    let context = state.keys.context_token(tenant_id, user_id)?;
    // One round trip: set the signed context, then read the caller's
    // membership and the tenant (both through the context just set).
    let row = sqlx::query("SELECT * FROM app.begin_request($1, $2)")
        .bind(&context)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Err(AppError::Internal(
            "begin_request returned nothing".to_owned(),
        ));
    };
    let role: Option<String> = row.try_get("role")?;
    // Membership first: a non-member learns only that; a member holding a
    // token for another of their tenants must switch tenant first.
    let tenant_claim_mismatch = role.is_some()
        && source != Source::Claim
        && user.0.tenant_id.is_some_and(|t| t != tenant_id);
    let Some(role) = role.filter(|_| !tenant_claim_mismatch) else {
        // Audited in the tenant's own trail, sampled: a caller repeating a
        // denial writes the 1st, 10th, 100th... with its count, so an
        // outsider cannot fill another tenant's trail.
        let reason = if tenant_claim_mismatch {
            "token is for another tenant"
        } else {
            "not a member"
        };
        let sample_key = format!(
            "denied:{{{tenant_id}}}:{user_id}:{}",
            u8::from(tenant_claim_mismatch)
        );
        if let Some(count) = crate::http::limits::sample(state, &sample_key).await? {
            if mode == Mode::Read {
                // The trail is written, even for a read: in a transaction
                // of its own, in the tenant's context.
                drop(tx);
                tx = state.db.begin().await?;
                crate::domain::context::enter(&mut tx, &state.keys, tenant_id, user_id).await?;
            }
            crate::domain::audit::record(
                &mut tx,
                tenant_id,
                user_id,
                "tenant.access_denied",
                Some(crate::http::limits::capped(request.uri().path(), 200)),
                serde_json::json!({
                    "method": request.method().as_str(),
                    "reason": reason,
                    "count": count,
                }),
            )
            .await?;
            tx.commit().await?;
        }
        tracing::warn!(%user_id, %tenant_id, path = %request.uri().path(), "tenant access denied");
        return Err(if tenant_claim_mismatch {
            AppError::Forbidden("Token is not valid for this tenant")
        } else {
            AppError::Forbidden("You are not a member of this tenant")
        });
    };
    state
        .shares
        .resize(tenant_id, row.try_get("concurrent_requests")?);
    let api_limit: Option<i32> = row.try_get("api_requests_per_minute")?;
    if let Some(limit) = api_limit.filter(|_| first) {
        rate_limit(state, &api_key, limit, "tenant_api").await?;
    }
    let tenant = Tenant {
        id: tenant_id,
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        display_name: row.try_get("display_name")?,
        configuration: row.try_get("configuration")?,
        role,
        user_id,
        default_workspace_id: row.try_get("default_workspace_id")?,
        super_admin: user.0.super_admin,
        workspace_roles: serde_json::from_value(row.try_get("workspace_roles")?)
            .map_err(AppError::internal)?,
    };
    let db = Db(Arc::new(Mutex::new(Some(tx))));
    request.extensions_mut().insert(tenant);
    request.extensions_mut().insert(db.clone());

    let response = next.run(request).await;

    let tx = db.0.lock().await.take();
    if let Some(tx) = tx {
        if mode == Mode::Read {
            // Rolled back on the way back to the pool (see Mode::Read).
            drop(tx);
        } else if response.status().is_success() || response.status().is_redirection() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
    }
    Ok(response)
}

/// Opens the request's transaction. A connection busy a moment ago is
/// handed out without a test round trip, so one that died meanwhile
/// (PostgreSQL restarted, its backend terminated) fails its `BEGIN`; it is
/// closed on its way back to the pool and another is tried, at most once
/// per connection of the pool (a dead connection fails at once, so this
/// takes no longer than one round trip each). Nothing has run yet, so
/// trying again is always safe.
async fn begin(state: &AppState, mode: Mode) -> AppResult<Transaction<'static, Postgres>> {
    let mut left = state.config.db_pool_size.max(1) + 1;
    loop {
        let begun = match mode {
            Mode::Read => state.db.begin_with("BEGIN READ ONLY").await,
            Mode::Once | Mode::Again => state.db.begin().await,
        };
        match begun {
            Err(e) if left > 1 && connection_lost(&e) => {
                left -= 1;
                tracing::debug!(error = %e, "a pooled connection was dead; taking another");
            }
            begun => return Ok(begun?),
        }
    }
}

/// Whether `e` says the connection itself is gone (not the statement).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// The Redis key of `tenant`'s API budget (its plan's requests per minute).
fn api_budget_key(tenant: Uuid) -> String {
    format!("ratelimit:api:{{{tenant}}}")
}

/// Counts one request against a per-minute budget kept in Redis (shared by
/// every instance): 429 with Retry-After once `limit` is spent this minute.
/// `reason` labels the refusals in the metrics.
pub async fn rate_limit(
    state: &AppState,
    key: &str,
    limit: i32,
    reason: &'static str,
) -> AppResult<()> {
    let limit = u32::try_from(limit).unwrap_or(0).max(1);
    crate::http::limits::count(state, key, limit, 60, reason).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(value: &str) -> AppResult<Option<String>> {
        let mut headers = HeaderMap::new();
        match axum::http::HeaderValue::from_str(value) {
            Ok(v) => {
                headers.insert(axum::http::header::HOST, v);
                host_name(&headers)
            }
            // Not a header value at all: nothing to parse.
            Err(_) => Ok(None),
        }
    }

    proptest! {
        /// Whatever the Host header holds: no panic, and a name only in
        /// the canonical form the catalog stores.
        #[test]
        fn any_host_header_is_a_canonical_name_or_refused(raw in "\\PC{0,300}") {
            if let Ok(Some(name)) = host(&raw) {
                prop_assert!(is_host_name(&name), "{name:?}");
                prop_assert_eq!(name.to_ascii_lowercase(), name.clone());
                prop_assert!(!name.ends_with('.') && !name.contains(':'));
            }
        }

        /// A host name in any case, with a final dot or a port, reads as
        /// the same lower-case name.
        #[test]
        fn a_host_name_reads_back_lower_case(
            labels in prop::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", 1..5),
            dot in any::<bool>(),
            port in prop::option::of(1u16..),
        ) {
            let name = labels.join(".");
            prop_assume!(!name.eq_ignore_ascii_case("localhost"));
            prop_assume!(name.parse::<std::net::IpAddr>().is_err());
            let mut raw = name.clone();
            if dot {
                raw.push('.');
            }
            if let Some(port) = port {
                raw.push_str(&format!(":{port}"));
            }
            prop_assert_eq!(host(&raw).unwrap(), Some(name.to_ascii_lowercase()));
        }
    }
}
