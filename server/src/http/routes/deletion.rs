//! An owner deletes their tenant: `DELETE /api/tenant` deactivates it at
//! once (its members are refused, their WebSockets close) and schedules its
//! removal after `TENANCY_TENANT_DELETION_GRACE_DAYS`; during that time an
//! owner brings it back with `POST /api/tenants/{id}/restore`; after it,
//! [`purge_due`] removes the tenant and every row it has
//! (`tenancy.drop_tenant`). Each step is in the tenant's trail until the
//! tenant is gone, and in the extension's audit log after.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::authz::{Action, Resource};
use crate::error::{AppError, AppResult};
use crate::http::auth::AuthUser;
use crate::http::extract::AppPath;
use crate::http::routes::Routes;
use crate::http::routes::{authorize, bypass};
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

/// Routes of a signed-in user whose tenant may no longer be active.
pub fn authenticated_router() -> Routes {
    Routes::default().routes(routes!(restore))
}

/// `DELETE /api/tenant`: owners only (`tenant:delete`).
#[utoipa::path(delete, path = "/api/tenant", tag = "tenant",
    responses((status = 202, description = "Deactivated at once, removed after the grace period: \
        `{tenant_id, status, purge_after}`",
        body = serde_json::Value)))]
pub async fn request(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<(StatusCode, Json<Value>)> {
    {
        let mut db = db.lock().await?;
        authorize(
            &state,
            &tenant,
            &mut db,
            Action::TenantDelete,
            Resource::Tenant(tenant.id),
        )
        .await?;
    }
    let days = state.config.tenant_deletion_grace_days;
    let mut tx = bypass(
        &state,
        format!("owner {} deletes tenant {}", tenant.user_id, tenant.id),
    )
    .await?;
    let purge_after: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "INSERT INTO app.tenant_deletions (tenant, requested_by, purge_after)
         VALUES ($1, $2, now() + make_interval(days => $3))
         ON CONFLICT (tenant) DO UPDATE SET requested_by = EXCLUDED.requested_by,
             requested_at = now(), purge_after = EXCLUDED.purge_after
         RETURNING purge_after",
    )
    .bind(tenant.id)
    .bind(tenant.user_id)
    .bind(i32::try_from(days).unwrap_or(i32::MAX))
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("SELECT tenancy.set_tenant_status($1, 'inactive')")
        .bind(tenant.id)
        .execute(&mut *tx)
        .await?;
    crate::domain::audit::record(
        &mut tx,
        tenant.id,
        tenant.user_id,
        "tenant.deletion_requested",
        Some(&tenant.slug),
        json!({"purge_after": purge_after}),
    )
    .await?;
    tx.commit().await?;
    crate::domain::messaging::hub::evict(&state, tenant.id, None).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"tenant_id": tenant.id, "status": "inactive", "purge_after": purge_after})),
    ))
}

/// Brings back a tenant its owner deleted, during the grace period. The
/// caller must be an owner of it; anyone else gets 404.
#[utoipa::path(post, path = "/api/tenants/{id}/restore", tag = "tenant",
    params(("id" = Uuid, Path, description = "Tenant")),
    responses((status = 200, description = "Active again: `{tenant_id, status}`",
        body = serde_json::Value)))]
async fn restore(
    State(state): State<AppState>,
    AuthUser(claims): AuthUser,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<Json<Value>> {
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM app.user_tenants($1) WHERE tenant_id = $2")
            .bind(claims.sub)
            .bind(id)
            .fetch_optional(&state.auth_db)
            .await?;
    if role.as_deref() != Some("owner") {
        return Err(AppError::TenantNotFound);
    }
    let mut tx = bypass(&state, format!("owner {} restores tenant {id}", claims.sub)).await?;
    let pending: Option<Uuid> = sqlx::query_scalar(
        "DELETE FROM app.tenant_deletions WHERE tenant = $1 AND purge_after > now() RETURNING tenant",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if pending.is_none() {
        return Err(AppError::NotFound("Pending deletion"));
    }
    // Only the owner's own deletion is undone here: a tenant the platform
    // suspended meanwhile stays suspended.
    let status: String =
        sqlx::query_scalar("SELECT status FROM tenancy.tenants WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if status != "inactive" {
        return Err(AppError::TenantInactive);
    }
    sqlx::query("SELECT tenancy.set_tenant_status($1, 'active')")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    crate::domain::audit::record(
        &mut tx,
        id,
        claims.sub,
        "tenant.deletion_cancelled",
        None,
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({"tenant_id": id, "status": "active"})))
}
