//! Logins and sessions: `POST /auth/token` (JSON, or the OAuth 2.0
//! form-encoded password and refresh-token grants), `POST /auth/refresh`,
//! `POST /auth/switch-tenant`, `POST /auth/logout`, `POST /auth/logout-all`,
//! `GET /auth/sessions`, `DELETE /auth/sessions/{id}`, `GET /users/me`.
//!
//! A login opens a session: a short access token and a refresh token that is
//! exchanged for the next one on each use; a refresh token used twice ends
//! its session (see [`crate::domain::sessions::rotate_refresh`]).

use axum::extract::{FromRequest, Request, State};
use axum::http::header::{CONTENT_TYPE, USER_AGENT};
use axum::http::{HeaderMap, StatusCode};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::sessions::{TenantRef, TokenSubject};
use crate::domain::{password, sessions};
use crate::error::{AppError, AppResult};
use crate::http::auth::AuthUser;
use crate::http::extract::{AppJson, AppPath, AppQuery};
use crate::http::limits::{ClientAddress, LoginBudget};
use crate::http::routes::Routes;
use crate::state::AppState;

/// Routes that need no token.
pub fn public_router() -> Routes {
    Routes::default()
        .routes(routes!(token))
        .routes(routes!(refresh))
}

/// Routes that need a valid token but no tenant.
pub fn authenticated_router() -> Routes {
    Routes::default()
        .routes(routes!(switch_tenant))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(sessions))
        .routes(routes!(end_session))
        .routes(routes!(me))
        .routes(routes!(logins))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct LoginRequest {
    email: String,
    password: String,
}

/// The OAuth 2.0 token request (RFC 6749 4.3 and 6), form-encoded.
#[derive(Deserialize, utoipa::ToSchema)]
struct OAuthForm {
    grant_type: String,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RefreshRequest {
    refresh_token: String,
}

/// What `POST /auth/token` was asked for.
enum Grant {
    Password(LoginRequest),
    Refresh(String),
}

impl<S: Send + Sync> FromRequest<S> for Grant {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form {
            let AppJson(body) = AppJson::<LoginRequest>::from_request(req, state).await?;
            return Ok(Grant::Password(body));
        }
        let Form(form) = Form::<OAuthForm>::from_request(req, state)
            .await
            .map_err(|_| {
                AppError::BadRequest("Malformed form body: grant_type is required".to_owned())
            })?;
        let missing = |name: &str| AppError::BadRequest(format!("{name} is required"));
        match form.grant_type.as_str() {
            "password" => Ok(Grant::Password(LoginRequest {
                email: form.username.ok_or_else(|| missing("username"))?,
                password: form.password.ok_or_else(|| missing("password"))?,
            })),
            "refresh_token" => Ok(Grant::Refresh(
                form.refresh_token.ok_or_else(|| missing("refresh_token"))?,
            )),
            _ => Err(AppError::BadRequest(
                "unsupported grant_type: use password or refresh_token".to_owned(),
            )),
        }
    }
}

/// Where a request came from, kept with the session it opens.
fn origin<'a>(headers: &'a HeaderMap, address: &'a str) -> sessions::Origin<'a> {
    sessions::Origin {
        user_agent: headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        address,
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Membership {
    id: Uuid,
    slug: String,
    name: String,
    role: String,
    status: String,
    default_workspace_id: Option<Uuid>,
}

struct LoginRow {
    user_id: Uuid,
    email: String,
    password_hash: String,
    super_admin: bool,
    tenants: Vec<Membership>,
}

async fn lookup(state: &AppState, email: &str) -> AppResult<Option<LoginRow>> {
    let row = sqlx::query("SELECT * FROM app.login_lookup($1)")
        .bind(email)
        .fetch_optional(&state.auth_db)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let tenants: Value = row.try_get("tenants")?;
    Ok(Some(LoginRow {
        user_id: row.try_get("user_id")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        super_admin: row.try_get("is_super_admin")?,
        tenants: serde_json::from_value(tenants).map_err(AppError::internal)?,
    }))
}

async fn memberships(state: &AppState, user: Uuid) -> AppResult<Vec<Membership>> {
    let rows = sqlx::query("SELECT tenant_id, slug, name, role, status, default_workspace_id FROM app.user_tenants($1) ORDER BY slug")
        .bind(user)
        .fetch_all(&state.auth_db)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Membership {
                id: r.try_get("tenant_id")?,
                slug: r.try_get("slug")?,
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                status: r.try_get("status")?,
                default_workspace_id: r.try_get("default_workspace_id")?,
            })
        })
        .collect()
}

fn subject(
    user_id: Uuid,
    email: String,
    super_admin: bool,
    tenants: &[Membership],
    selected: Option<&Membership>,
) -> TokenSubject {
    let selected = selected.or(match tenants {
        [only] => Some(only),
        _ => None,
    });
    TokenSubject {
        user_id,
        email,
        super_admin,
        tenant: selected.map(|m| (m.id, m.slug.clone())),
        workspace_id: selected.and_then(|m| m.default_workspace_id),
        tenants: (tenants.len() > 1).then(|| {
            tenants
                .iter()
                .map(|m| TenantRef {
                    id: m.id,
                    slug: m.slug.clone(),
                    name: m.name.clone(),
                })
                .collect()
        }),
    }
}

fn token_response(
    token: String,
    claims: &sessions::AccessClaims,
    ttl: u64,
    refresh: Option<&str>,
) -> Json<Value> {
    let mut body = json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": ttl,
        "tenant_id": claims.tenant_id,
        "tenants": claims.tenants,
    });
    if let Some(refresh) = refresh {
        body["refresh_token"] = json!(refresh);
    }
    Json(body)
}

fn session_response(tokens: sessions::SessionTokens) -> Json<Value> {
    token_response(
        tokens.access,
        &tokens.claims,
        tokens.ttl,
        Some(&tokens.refresh),
    )
}

#[utoipa::path(post, path = "/auth/token", tag = "auth", security(()),
    request_body(content((LoginRequest = "application/json"),
        (OAuthForm = "application/x-www-form-urlencoded"))),
    responses((status = 200, description = "A new session: `{access_token, refresh_token, \
        token_type, expires_in, tenant_id, tenants}` (`tenant_id` when the account has one tenant, \
        `tenants` when it has several)",
        body = serde_json::Value)))]
async fn token(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    grant: Grant,
) -> AppResult<Json<Value>> {
    match grant {
        Grant::Password(body) => login(state, &address, &headers, body).await,
        Grant::Refresh(presented) => refreshed(state, &address, &presented).await,
    }
}

#[utoipa::path(post, path = "/auth/refresh", tag = "auth", security(()),
    request_body = RefreshRequest,
    responses((status = 200, description = "The session's next tokens: `{access_token, \
        refresh_token, token_type, expires_in, tenant_id, tenants}`",
        body = serde_json::Value)))]
async fn refresh(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<RefreshRequest>,
) -> AppResult<Json<Value>> {
    refreshed(state, &address, &body.refresh_token).await
}

/// Rotates the refresh token and issues an access token for the session's
/// tenant, if the user is still an active member of it.
async fn refreshed(state: AppState, address: &str, presented: &str) -> AppResult<Json<Value>> {
    // Refreshes from one address share the login budget's size: each costs
    // a round trip on the credential pool.
    crate::http::limits::count(
        &state,
        &format!("throttle:refresh:addr:{address}"),
        state.config.limits.logins_per_address,
        60,
        "refresh_address",
    )
    .await?;
    let (sid, user_id, email, super_admin, tenant, refresh, ttl) =
        match sessions::rotate_refresh(&state, presented).await? {
            sessions::Refreshed::Rotated {
                sid,
                user_id,
                email,
                super_admin,
                tenant,
                refresh,
                ttl,
            } => (sid, user_id, email, super_admin, tenant, refresh, ttl),
            sessions::Refreshed::Refused(why) => return Err(AppError::Unauthorized(why)),
        };
    let tenants = memberships(&state, user_id).await?;
    let selected =
        tenant.and_then(|id| tenants.iter().find(|m| m.id == id && m.status == "active"));
    let subject = subject(user_id, email, super_admin, &tenants, selected);
    let (token, claims) = sessions::issue(&state, subject, sid, ttl).await?;
    Ok(token_response(token, &claims, ttl, Some(&refresh)))
}

/// Writes the attempt into the account's login history, after the answer
/// (an account and an unknown address answer alike).
fn record_login(
    state: &AppState,
    email: &str,
    succeeded: bool,
    headers: &HeaderMap,
    address: &str,
) {
    let origin = origin(headers, address);
    let (state, email, agent, address) = (
        state.clone(),
        email.to_owned(),
        origin.user_agent.to_owned(),
        address.to_owned(),
    );
    tokio::spawn(async move {
        let recorded = sqlx::query("SELECT app.record_login($1, $2, $3, $4)")
            .bind(&email)
            .bind(succeeded)
            .bind(address)
            .bind(agent)
            .execute(&state.auth_db)
            .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "login attempt not recorded");
        }
    });
}

#[tracing::instrument(skip_all)]
async fn login(
    state: AppState,
    address: &str,
    headers: &HeaderMap,
    body: LoginRequest,
) -> AppResult<Json<Value>> {
    let email = body.email.trim();
    if email.is_empty() || email.len() > 254 || email.contains('\0') {
        return Err(AppError::Validation(
            "email must be 1 to 254 characters".to_owned(),
        ));
    }
    if body.password.is_empty() || body.password.len() > 1024 {
        return Err(AppError::Validation(
            "password must be 1 to 1024 characters".to_owned(),
        ));
    }
    // Budgets first, before the account is looked up or a hash computed.
    let budget = LoginBudget::check(&state, address, email).await?;
    let found = lookup(&state, email).await?;
    let hash = found.as_ref().map(|f| f.password_hash.clone());
    // Unknown email and wrong password: same answer, same work.
    let verified = password::verify_password(&state, body.password.clone(), hash).await?;
    record_login(&state, email, verified, headers, address);
    let Some(found) = found.filter(|_| verified) else {
        budget.failed(&state).await?;
        return Err(AppError::Unauthorized("Invalid email or password"));
    };
    budget.succeeded(&state).await?;
    password::upgrade_hash(&state, found.user_id, &found.password_hash, body.password).await?;
    let subject = subject(
        found.user_id,
        found.email,
        found.super_admin,
        &found.tenants,
        None,
    );
    let tokens = sessions::open_session(&state, subject, origin(headers, address)).await?;
    tracing::info!(user_id = %tokens.claims.sub, tenant_id = ?tokens.claims.tenant_id, "login");
    Ok(session_response(tokens))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct SwitchRequest {
    tenant_id: Uuid,
}

#[utoipa::path(post, path = "/auth/switch-tenant", tag = "auth",
    request_body = SwitchRequest,
    responses((status = 200, description = "An access token for the tenant, same session: \
        `{access_token, token_type, expires_in, tenant_id, tenants}`",
        body = serde_json::Value)))]
async fn switch_tenant(
    State(state): State<AppState>,
    AuthUser(claims): AuthUser,
    AppJson(body): AppJson<SwitchRequest>,
) -> AppResult<Json<Value>> {
    // The account as it is now (a super admin demoted since the last
    // token stays demoted), with its memberships.
    let account = lookup(&state, &claims.email)
        .await?
        .filter(|a| a.user_id == claims.sub)
        .ok_or(AppError::Unauthorized("Session has ended"))?;
    let tenants = account.tenants;
    let Some(selected) = tenants.iter().find(|m| m.id == body.tenant_id) else {
        tracing::warn!(user_id = %claims.sub, tenant_id = %body.tenant_id, "switch to a tenant the user is not a member of");
        return Err(AppError::Forbidden("You are not a member of this tenant"));
    };
    if selected.status != "active" {
        return Err(AppError::TenantInactive);
    }
    let subject = subject(
        claims.sub,
        account.email,
        account.super_admin,
        &tenants,
        Some(selected),
    );
    // Same session, new jti: the previous token of this session stops
    // working; the session's refresh token now refreshes into this tenant.
    let ttl = sessions::select_tenant(&state, claims.sid, claims.sub, selected.id).await?;
    let (token, new_claims) = sessions::issue(&state, subject, claims.sid, ttl).await?;
    Ok(token_response(token, &new_claims, ttl, None))
}

/// Ends the caller's session: its access and refresh tokens stop working.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    responses((status = 204, description = "Signed out")))]
async fn logout(
    State(state): State<AppState>,
    AuthUser(claims): AuthUser,
) -> AppResult<StatusCode> {
    sessions::revoke_sessions(&state, claims.sub, Some(claims.sid), None, "logout").await?;
    sessions::forget_sessions(&state, &[claims.sid]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of the caller, this one included.
#[utoipa::path(post, path = "/auth/logout-all", tag = "auth",
    responses((status = 204, description = "Every session ended")))]
async fn logout_all(
    State(state): State<AppState>,
    AuthUser(claims): AuthUser,
) -> AppResult<StatusCode> {
    sessions::revoke_sessions(&state, claims.sub, None, None, "logout everywhere").await?;
    sessions::forget_sessions(&state, &[claims.sid]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's sessions that can still be refreshed, newest first.
#[utoipa::path(get, path = "/auth/sessions", tag = "auth",
    responses((status = 200, description = "`{sessions: [{id, current, tenant_id, created_at, \
        last_refreshed_at, idle_expires_at, expires_at, user_agent, address}]}`",
        body = serde_json::Value)))]
async fn sessions(
    State(state): State<AppState>,
    AuthUser(claims): AuthUser,
) -> AppResult<Json<Value>> {
    let rows = sqlx::query(
        "SELECT id, selected_tenant, created_at, refreshed_at, idle_expires_at, expires_at,
                user_agent, address
         FROM app.session_list($1)",
    )
    .bind(claims.sub)
    .fetch_all(&state.auth_db)
    .await?;
    let mut list = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get("id")?;
        let at =
            |name: &str| -> AppResult<chrono::DateTime<chrono::Utc>> { Ok(row.try_get(name)?) };
        list.push(json!({
            "id": id,
            "current": id == claims.sid,
            "tenant_id": row.try_get::<Option<Uuid>, _>("selected_tenant")?,
            "created_at": at("created_at")?,
            "last_refreshed_at": at("refreshed_at")?,
            "idle_expires_at": at("idle_expires_at")?,
            "expires_at": at("expires_at")?,
            "user_agent": row.try_get::<String, _>("user_agent")?,
            "address": row.try_get::<String, _>("address")?,
        }));
    }
    Ok(Json(json!({ "sessions": list })))
}

/// Ends one of the caller's own sessions (404 for any other id).
#[utoipa::path(delete, path = "/auth/sessions/{id}", tag = "auth",
    params(("id" = Uuid, Path, description = "Session")),
    responses((status = 204, description = "Session ended")))]
async fn end_session(
    State(state): State<AppState>,
    AuthUser(claims): AuthUser,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<StatusCode> {
    let ended =
        sessions::revoke_sessions(&state, claims.sub, Some(id), None, "ended by the user").await?;
    if ended.is_empty() {
        return Err(AppError::NotFound("Session"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LoginsQuery {
    /// At most this many (1 to 200, default 50).
    limit: Option<i32>,
}

/// The caller's latest login attempts, successful and failed, newest first.
#[utoipa::path(get, path = "/users/me/logins", tag = "auth",
    params(LoginsQuery),
    responses((status = 200, description = "`{logins: [{at, succeeded, address, user_agent}]}`",
        body = serde_json::Value)))]
async fn logins(
    State(state): State<AppState>,
    AuthUser(claims): AuthUser,
    AppQuery(query): AppQuery<LoginsQuery>,
) -> AppResult<Json<Value>> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(AppError::Validation("limit must be 1 to 200".to_owned()));
    }
    let rows: Vec<(chrono::DateTime<chrono::Utc>, bool, String, String)> =
        sqlx::query_as("SELECT at, succeeded, address, user_agent FROM app.login_history($1, $2)")
            .bind(claims.sub)
            .bind(limit)
            .fetch_all(&state.auth_db)
            .await?;
    let logins: Vec<Value> = rows
        .into_iter()
        .map(|(at, succeeded, address, user_agent)| {
            json!({"at": at, "succeeded": succeeded, "address": address, "user_agent": user_agent})
        })
        .collect();
    Ok(Json(json!({ "logins": logins })))
}

#[utoipa::path(get, path = "/users/me", tag = "auth",
    responses((status = 200, description = "The caller: `{id, email, super_admin, tenant_id, \
        tenant_slug, workspace_id, tenants: [{id, slug, name, role, status}]}`",
        body = serde_json::Value)))]
async fn me(State(state): State<AppState>, AuthUser(claims): AuthUser) -> AppResult<Json<Value>> {
    let tenants = memberships(&state, claims.sub).await?;
    let tenants: Vec<Value> = tenants
        .iter()
        .map(|m| json!({"id": m.id, "slug": m.slug, "name": m.name, "role": m.role, "status": m.status}))
        .collect();
    Ok(Json(json!({
        "id": claims.sub,
        "email": claims.email,
        "super_admin": claims.super_admin,
        "tenant_id": claims.tenant_id,
        "tenant_slug": claims.tenant_slug,
        "workspace_id": claims.workspace_id,
        "tenants": tenants,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(slug: &str) -> Membership {
        Membership {
            id: Uuid::new_v4(),
            slug: slug.to_owned(),
            name: slug.to_uppercase(),
            role: "member".to_owned(),
            status: "active".to_owned(),
            default_workspace_id: None,
        }
    }

    #[test]
    fn one_tenant_goes_into_the_claims_several_go_into_a_list() {
        let one = [membership("acme")];
        let s = subject(Uuid::new_v4(), "a@x.io".into(), false, &one, None);
        assert_eq!(s.tenant.as_ref().map(|t| t.1.as_str()), Some("acme"));
        assert!(s.tenants.is_none());

        let two = [membership("acme"), membership("globex")];
        let s = subject(Uuid::new_v4(), "a@x.io".into(), false, &two, None);
        assert!(s.tenant.is_none());
        assert_eq!(s.tenants.map(|t| t.len()), Some(2));

        let s = subject(Uuid::new_v4(), "a@x.io".into(), false, &two, Some(&two[1]));
        assert_eq!(s.tenant.map(|t| t.1), Some("globex".to_owned()));
    }
}
