//! Platform administration (seed 002, REQ-MT-B004): tenants as a whole, for
//! super admins only; everyone else gets 403. Tenants are created with
//! everything they start with (see `provision`), listed, read, updated
//! (name, plan, limits), suspended, reactivated and soft-deleted (status
//! `inactive`: their data stays). Every change is audited in the tenant's
//! own trail, and reads of tenant data go through an audited bypass.
//!
//! The caller's super-admin flag is checked in the database on every
//! request, not only read from the token.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::authz::{Action, Principal, Resource, TenantRole};
use crate::domain::provision::{provision, NewTenant};
use crate::error::{AppError, AppResult};
use crate::http::auth::AuthUser;
use crate::http::extract::{AppJson, AppPath, AppQuery};
use crate::http::routes::Routes;
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
        .routes(routes!(suspend))
        .routes(routes!(reactivate))
        .routes(routes!(audit))
}

/// Proof that the policies let the caller act on the platform: only
/// [`platform`] makes one, and [`bypass`] (the only way these routes reach
/// tenant rows) takes one.
struct PlatformAdmin {
    id: Uuid,
}

/// The caller, if the policies let them do `action` on the platform; a
/// denial is logged in the extension's audit log and answered 403.
async fn platform(state: &AppState, user: &AuthUser, action: Action) -> AppResult<PlatformAdmin> {
    let id = user.0.sub;
    let super_admin = user.0.super_admin
        && sqlx::query_scalar::<_, bool>("SELECT is_super_admin FROM app.users WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.admin_db)
            .await?
            .unwrap_or(false);
    let principal = Principal {
        user: id,
        tenant: Uuid::nil(),
        tenant_role: TenantRole::None,
        super_admin,
        workspace_roles: Default::default(),
    };
    let decision = state.authz.decide(&principal, action, &Resource::Platform);
    if decision.allowed {
        return Ok(PlatformAdmin { id });
    }
    tracing::warn!(user_id = %id, action = %action, "platform action denied");
    // Sampled like tenant denials: the 1st, 10th, 100th... with a count.
    if let Some(count) =
        crate::http::limits::sample(state, &format!("platform:{id}:{action}")).await?
    {
        sqlx::query("SELECT tenancy.write_audit('platform.denied', NULL, NULL, $1)")
            .bind(
                json!({"user_id": id, "email": user.0.email, "action": action.as_str(),
                         "policies": decision.policies, "count": count}),
            )
            .execute(&state.admin_db)
            .await?;
    }
    Err(AppError::Denied)
}

/// A bypass transaction of a platform admin (see [`crate::http::routes::bypass`]).
async fn bypass(
    state: &AppState,
    admin: &PlatformAdmin,
    why: &str,
) -> AppResult<sqlx::Transaction<'static, sqlx::Postgres>> {
    crate::http::routes::bypass(state, format!("platform admin {}: {why}", admin.id)).await
}

#[derive(Serialize, sqlx::FromRow)]
struct TenantRow {
    id: Uuid,
    slug: String,
    name: String,
    display_name: String,
    logo_url: Option<String>,
    primary_color: Option<String>,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    plan: Option<String>,
    max_members: Option<i32>,
    max_workspaces: Option<i32>,
    storage_bytes: Option<i64>,
    api_requests_per_minute: Option<i32>,
    members: i64,
    workspaces: i64,
    storage_used: i64,
}

const TENANT_QUERY: &str = "
    SELECT t.id, t.slug, t.name, t.display_name, t.logo_url, t.primary_color, t.status,
           t.created_at, t.updated_at, l.plan, l.max_members, l.max_workspaces, l.storage_bytes,
           l.api_requests_per_minute,
           (SELECT count(*) FROM app.tenant_memberships m WHERE m.tenant_id = t.id) AS members,
           (SELECT count(*) FROM app.workspaces w WHERE w.tenant_id = t.id) AS workspaces,
           coalesce((SELECT u.storage_bytes FROM app.tenant_usage u WHERE u.tenant_id = t.id), 0) AS storage_used
    FROM tenancy.tenants t LEFT JOIN app.tenant_limits l ON l.tenant_id = t.id";

fn view(row: TenantRow) -> Value {
    json!({
        "id": row.id, "slug": row.slug, "name": row.name, "display_name": row.display_name,
        "logo_url": row.logo_url, "primary_color": row.primary_color, "status": row.status,
        "created_at": row.created_at, "updated_at": row.updated_at,
        "plan": row.plan,
        "limits": {
            "max_members": row.max_members, "max_workspaces": row.max_workspaces,
            "storage_bytes": row.storage_bytes, "api_requests_per_minute": row.api_requests_per_minute,
        },
        "usage": {"members": row.members, "workspaces": row.workspaces, "storage_bytes": row.storage_used},
    })
}

async fn fetch(conn: &mut PgConnection, id: Uuid) -> AppResult<Value> {
    let row: Option<TenantRow> = sqlx::query_as(&format!("{TENANT_QUERY} WHERE t.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(view).ok_or(AppError::TenantNotFound)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    slug: String,
    name: String,
    display_name: Option<String>,
    plan: Option<String>,
    owner_email: String,
    #[serde(default)]
    demo_data: bool,
}

#[utoipa::path(post, path = "/api/admin/tenants", tag = "platform admin",
    request_body = CreateTenant,
    responses((status = 201, description = "Created and provisioned, with its owner: \
        `{id, slug, name, display_name, logo_url, primary_color, status, created_at, \
        updated_at, plan, limits: {max_members, max_workspaces, storage_bytes, \
        api_requests_per_minute}, usage: {members, workspaces, storage_bytes}}`",
        body = serde_json::Value)))]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    AppJson(body): AppJson<CreateTenant>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let admin = platform(&state, &user, Action::PlatformManageTenants).await?;
    if !crate::domain::mail::valid_address(body.owner_email.trim()) {
        return Err(AppError::Validation(
            "owner_email must be an email address".to_owned(),
        ));
    }
    let (tenant, _) = provision(
        &state,
        admin.id,
        &NewTenant {
            slug: body.slug.trim(),
            name: &body.name,
            display_name: body.display_name.as_deref(),
            plan: body.plan.as_deref().unwrap_or("free"),
            owner_email: &body.owner_email,
            demo_data: body.demo_data,
        },
    )
    .await?;
    let mut tx = bypass(&state, &admin, "read the tenant just created").await?;
    let created = fetch(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// Rows to skip (default 0).
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/admin/tenants", tag = "platform admin",
    params(ListQuery),
    responses((status = 200, description = "A page of tenants, oldest first: \
        `{tenants, total, limit, offset}`, each tenant as in `GET /api/admin/tenants/{id}`",
        body = serde_json::Value)))]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    AppQuery(query): AppQuery<ListQuery>,
) -> AppResult<Json<Value>> {
    let admin = platform(&state, &user, Action::PlatformViewTenants).await?;
    if let Some(status) = &query.status {
        if !matches!(status.as_str(), "active" | "suspended" | "inactive") {
            return Err(AppError::Validation(
                "status must be active, suspended or inactive".to_owned(),
            ));
        }
    }
    let limit = query.limit.unwrap_or(50);
    let offset = query.offset.unwrap_or(0);
    if !(1..=200).contains(&limit) || offset < 0 {
        return Err(AppError::Validation(
            "limit must be 1 to 200 and offset at least 0".to_owned(),
        ));
    }
    let mut tx = bypass(&state, &admin, "list tenants").await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenancy.tenants WHERE $1::text IS NULL OR status = $1",
    )
    .bind(&query.status)
    .fetch_one(&mut *tx)
    .await?;
    let rows: Vec<TenantRow> = sqlx::query_as(&format!(
        "{TENANT_QUERY} WHERE $1::text IS NULL OR t.status = $1 ORDER BY t.created_at, t.id LIMIT $2 OFFSET $3"
    ))
    .bind(&query.status)
    .bind(limit)
    .bind(offset)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "tenants": rows.into_iter().map(view).collect::<Vec<_>>(),
        "total": total, "limit": limit, "offset": offset,
    })))
}

#[utoipa::path(get, path = "/api/admin/tenants/{id}", tag = "platform admin",
    params(("id" = Uuid, Path, description = "Tenant")),
    responses((status = 200, description = "The tenant, with its plan, limits and usage: \
        `{id, slug, name, display_name, logo_url, primary_color, status, created_at, \
        updated_at, plan, limits: {max_members, max_workspaces, storage_bytes, \
        api_requests_per_minute}, usage: {members, workspaces, storage_bytes}}`",
        body = serde_json::Value)))]
async fn read(
    State(state): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<Json<Value>> {
    let admin = platform(&state, &user, Action::PlatformViewTenants).await?;
    let mut tx = bypass(&state, &admin, "read a tenant").await?;
    let tenant = fetch(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(tenant))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Limits {
    #[serde(default, deserialize_with = "crate::http::routes::present")]
    #[schema(value_type = Option<i32>)]
    max_members: Option<Option<i32>>,
    #[serde(default, deserialize_with = "crate::http::routes::present")]
    #[schema(value_type = Option<i32>)]
    max_workspaces: Option<Option<i32>>,
    #[serde(default, deserialize_with = "crate::http::routes::present")]
    #[schema(value_type = Option<i64>)]
    storage_bytes: Option<Option<i64>>,
    #[serde(default, deserialize_with = "crate::http::routes::present")]
    #[schema(value_type = Option<i32>)]
    api_requests_per_minute: Option<Option<i32>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateTenant {
    name: Option<String>,
    display_name: Option<String>,
    plan: Option<String>,
    /// Per-tenant overrides of the plan's limits; only those given change
    /// (null: back to the plan's value).
    limits: Option<Limits>,
}

#[utoipa::path(put, path = "/api/admin/tenants/{id}", tag = "platform admin",
    params(("id" = Uuid, Path, description = "Tenant")),
    request_body = UpdateTenant,
    responses((status = 200, description = "The tenant as it is now (as in \
        `GET /api/admin/tenants/{id}`)", body = serde_json::Value)))]
async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<UpdateTenant>,
) -> AppResult<Json<Value>> {
    let admin = platform(&state, &user, Action::PlatformManageTenants).await?;
    if body.name.is_none()
        && body.display_name.is_none()
        && body.plan.is_none()
        && body.limits.is_none()
    {
        return Err(AppError::Validation(
            "nothing to update: give name, display_name, plan and/or limits".to_owned(),
        ));
    }
    let name = body
        .name
        .as_deref()
        .map(|n| crate::http::routes::valid_name("name", n, 200))
        .transpose()?;
    let display_name = body
        .display_name
        .as_deref()
        .map(|n| crate::http::routes::valid_name("display_name", n, 200))
        .transpose()?;
    let mut tx = bypass(&state, &admin, "update a tenant").await?;
    let before = fetch(&mut tx, id).await?;
    if let Some(plan) = &body.plan {
        let known: Vec<String> = sqlx::query_scalar("SELECT name FROM app.plans ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        if !known.contains(plan) {
            return Err(AppError::Validation(format!(
                "unknown plan {plan:?}; plans are {}",
                known.join(", ")
            )));
        }
    }
    if name.is_some() || display_name.is_some() {
        sqlx::query(
            "UPDATE tenancy.tenants SET name = coalesce($2, name), display_name = coalesce($3, display_name)
             WHERE id = $1",
        )
        .bind(id)
        .bind(name)
        .bind(display_name)
        .execute(&mut *tx)
        .await?;
    }
    if body.plan.is_some() || body.limits.is_some() {
        let limits = body.limits.unwrap_or_default();
        for (field, value) in [
            ("max_members", limits.max_members.flatten().map(i64::from)),
            (
                "max_workspaces",
                limits.max_workspaces.flatten().map(i64::from),
            ),
            ("storage_bytes", limits.storage_bytes.flatten()),
            (
                "api_requests_per_minute",
                limits.api_requests_per_minute.flatten().map(i64::from),
            ),
        ] {
            if value.is_some_and(|v| v < 0 || (field == "api_requests_per_minute" && v == 0)) {
                return Err(AppError::Validation(format!(
                    "limits.{field} must be positive"
                )));
            }
        }
        if body.plan.is_none() && before["plan"].is_null() {
            return Err(AppError::Validation(
                "this tenant has no plan: give a plan with its limits".to_owned(),
            ));
        }
        // Each override changes only when given ($n true), to its value or NULL.
        sqlx::query(
            "INSERT INTO app.tenant_plans AS p (tenant_id, plan, max_members, max_workspaces, storage_bytes, api_requests_per_minute)
             VALUES ($1, coalesce($2, 'free'), $4, $6, $8, $10)
             ON CONFLICT (tenant_id) DO UPDATE SET plan = coalesce($2, p.plan),
                 max_members = CASE WHEN $3 THEN $4 ELSE p.max_members END,
                 max_workspaces = CASE WHEN $5 THEN $6 ELSE p.max_workspaces END,
                 storage_bytes = CASE WHEN $7 THEN $8 ELSE p.storage_bytes END,
                 api_requests_per_minute = CASE WHEN $9 THEN $10 ELSE p.api_requests_per_minute END,
                 updated_at = now()",
        )
        .bind(id)
        .bind(&body.plan)
        .bind(limits.max_members.is_some())
        .bind(limits.max_members.flatten())
        .bind(limits.max_workspaces.is_some())
        .bind(limits.max_workspaces.flatten())
        .bind(limits.storage_bytes.is_some())
        .bind(limits.storage_bytes.flatten())
        .bind(limits.api_requests_per_minute.is_some())
        .bind(limits.api_requests_per_minute.flatten())
        .execute(&mut *tx)
        .await?;
    }
    let after = fetch(&mut tx, id).await?;
    // A limit may not be set below what the tenant already uses.
    for (limit, used) in [
        ("max_members", "members"),
        ("max_workspaces", "workspaces"),
        ("storage_bytes", "storage_bytes"),
    ] {
        let allowed = after["limits"][limit].as_i64();
        let in_use = after["usage"][used].as_i64().unwrap_or(0);
        if allowed.is_some_and(|a| a < in_use) {
            return Err(AppError::Validation(format!(
                "{limit} {} is below the tenant's current usage ({in_use})",
                allowed.unwrap_or_default()
            )));
        }
    }
    crate::domain::audit::record(
        &mut tx,
        id,
        admin.id,
        "tenant.updated",
        Some(&id.to_string()),
        json!({"before": before, "after": after}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after))
}

async fn set_status(
    state: &AppState,
    user: &AuthUser,
    id: Uuid,
    status: &'static str,
    action: &'static str,
) -> AppResult<Json<Value>> {
    let admin = platform(state, user, Action::PlatformManageTenants).await?;
    let mut tx = bypass(state, &admin, action).await?;
    let before = fetch(&mut tx, id).await?;
    sqlx::query("SELECT tenancy.set_tenant_status($1, $2)")
        .bind(id)
        .bind(status)
        .execute(&mut *tx)
        .await?;
    // The platform's decision replaces an owner's pending deletion.
    sqlx::query("DELETE FROM app.tenant_deletions WHERE tenant = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    crate::domain::audit::record(
        &mut tx,
        id,
        admin.id,
        action,
        Some(&id.to_string()),
        json!({"from": before["status"], "to": status}),
    )
    .await?;
    let after = fetch(&mut tx, id).await?;
    tx.commit().await?;
    if status != "active" {
        // Its members' open WebSockets close.
        crate::domain::messaging::hub::evict(state, id, None).await?;
    }
    Ok(Json(after))
}

#[utoipa::path(post, path = "/api/admin/tenants/{id}/suspend", tag = "platform admin",
    params(("id" = Uuid, Path, description = "Tenant")),
    responses((status = 200, description = "Suspended; its members' WebSockets close. The \
        tenant as in `GET /api/admin/tenants/{id}`", body = serde_json::Value)))]
async fn suspend(
    State(state): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<Json<Value>> {
    set_status(&state, &user, id, "suspended", "tenant.suspended").await
}

#[utoipa::path(post, path = "/api/admin/tenants/{id}/reactivate", tag = "platform admin",
    params(("id" = Uuid, Path, description = "Tenant")),
    responses((status = 200, description = "Active again. The tenant as in \
        `GET /api/admin/tenants/{id}`", body = serde_json::Value)))]
async fn reactivate(
    State(state): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<Json<Value>> {
    set_status(&state, &user, id, "active", "tenant.reactivated").await
}

/// Soft delete: the tenant becomes inactive; its data stays.
#[utoipa::path(delete, path = "/api/admin/tenants/{id}", tag = "platform admin",
    params(("id" = Uuid, Path, description = "Tenant")),
    responses((status = 200, description = "Inactive, its data kept. The tenant as in \
        `GET /api/admin/tenants/{id}`", body = serde_json::Value)))]
async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<Json<Value>> {
    set_status(&state, &user, id, "inactive", "tenant.deleted").await
}

#[utoipa::path(get, path = "/api/admin/audit", tag = "platform admin",
    params(crate::http::routes::audit::AuditQuery),
    responses((status = 200, description = "A page of every tenant's trail, newest first: \
        `{events: [{id, tenant_id, actor_id, action, target, details, created_at}], \
        next_before}` (`next_before` is null on the last page)", body = serde_json::Value)))]
async fn audit(
    State(state): State<AppState>,
    user: AuthUser,
    AppQuery(query): AppQuery<crate::http::routes::audit::AuditQuery>,
) -> AppResult<Json<Value>> {
    let admin = platform(&state, &user, Action::PlatformViewTenants).await?;
    let mut tx = bypass(&state, &admin, "read the audit trail").await?;
    let page = crate::http::routes::audit::page(&mut tx, &query).await?;
    tx.commit().await?;
    Ok(Json(page))
}
