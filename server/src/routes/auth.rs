//! `POST /auth/token`, `POST /auth/switch-tenant`, `POST /auth/logout`,
//! `GET /users/me`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

use crate::auth::{self, AuthUser, TenantRef, TokenSubject};
use crate::error::{AppError, AppResult};
use crate::extract::AppJson;
use crate::limits::{ClientAddress, LoginBudget};
use crate::state::AppState;

/// Routes that need no token.
pub fn public_router() -> Router<AppState> {
    Router::new().route("/auth/token", post(login))
}

/// Routes that need a valid token but no tenant.
pub fn authenticated_router() -> Router<AppState> {
    Router::new()
        .route("/auth/switch-tenant", post(switch_tenant))
        .route("/auth/logout", post(logout))
        .route("/users/me", get(me))
}

#[derive(Deserialize)]
struct LoginRequest {
    email: String,
    password: String,
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

fn token_response(token: String, claims: &auth::AccessClaims, ttl: u64) -> Json<Value> {
    Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": ttl,
        "tenant_id": claims.tenant_id,
        "tenants": claims.tenants,
    }))
}

#[tracing::instrument(skip_all)]
async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<LoginRequest>,
) -> AppResult<Json<Value>> {
    let email = body.email.trim();
    if email.is_empty() || email.len() > 254 {
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
    let budget = LoginBudget::check(&state, &address, email).await?;
    let found = lookup(&state, email).await?;
    let hash = found.as_ref().map(|f| f.password_hash.clone());
    // Unknown email and wrong password: same answer, same work.
    let verified = auth::verify_password(&state, body.password, hash).await?;
    let Some(found) = found.filter(|_| verified) else {
        budget.failed(&state).await?;
        return Err(AppError::Unauthorized("Invalid email or password"));
    };
    budget.succeeded(&state).await?;
    let subject = subject(
        found.user_id,
        found.email,
        found.super_admin,
        &found.tenants,
        None,
    );
    let (token, claims) = auth::issue(&state, subject, Uuid::new_v4()).await?;
    tracing::info!(user_id = %claims.sub, tenant_id = ?claims.tenant_id, "login");
    Ok(token_response(token, &claims, state.keys.access_ttl()))
}

#[derive(Deserialize)]
struct SwitchRequest {
    tenant_id: Uuid,
}

async fn switch_tenant(
    State(state): State<AppState>,
    AuthUser(claims): AuthUser,
    AppJson(body): AppJson<SwitchRequest>,
) -> AppResult<Json<Value>> {
    let tenants = memberships(&state, claims.sub).await?;
    let Some(selected) = tenants.iter().find(|m| m.id == body.tenant_id) else {
        tracing::warn!(user_id = %claims.sub, tenant_id = %body.tenant_id, "switch to a tenant the user is not a member of");
        return Err(AppError::Forbidden("You are not a member of this tenant"));
    };
    if selected.status != "active" {
        return Err(AppError::TenantInactive);
    }
    let subject = subject(
        claims.sub,
        claims.email.clone(),
        claims.super_admin,
        &tenants,
        Some(selected),
    );
    // Same session, new jti: the previous token of this session stops working.
    let (token, new_claims) = auth::issue(&state, subject, claims.sid).await?;
    Ok(token_response(token, &new_claims, state.keys.access_ttl()))
}

async fn logout(
    State(state): State<AppState>,
    AuthUser(claims): AuthUser,
) -> AppResult<StatusCode> {
    auth::revoke_session(&state, claims.sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

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
