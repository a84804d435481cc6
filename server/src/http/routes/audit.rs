//! Reading the audit trail: `GET /api/tenant/audit` for the tenant's owners
//! and admins (its own trail only: the database's isolation, not a filter,
//! keeps other tenants out), and the page format `GET /api/admin/audit`
//! shares. Newest first; `before` is the cursor.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::authz::{Action, Resource};
use crate::error::{AppError, AppResult};
use crate::http::extract::AppQuery;
use crate::http::routes::authorize;
use crate::http::routes::Routes;
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default().routes(routes!(tenant_audit))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this action (e.g. `authz.denied`, `config.updated`).
    action: Option<String>,
    /// Only the actions of this user.
    actor_id: Option<Uuid>,
    /// Only this tenant (super admins; within a tenant it is always its own).
    tenant_id: Option<Uuid>,
    /// Only entries at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Only entries before this time (RFC 3339).
    until: Option<DateTime<Utc>>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// Entries older than this id (the `next_before` of the previous page).
    before: Option<i64>,
}

#[derive(Serialize, sqlx::FromRow)]
struct Entry {
    id: i64,
    tenant_id: Uuid,
    actor_id: Option<Uuid>,
    action: String,
    target: Option<String>,
    details: Value,
    created_at: DateTime<Utc>,
}

/// One page of the trail visible on `conn`, filtered by `query`.
pub async fn page(conn: &mut PgConnection, query: &AuditQuery) -> AppResult<Value> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(AppError::Validation("limit must be 1 to 200".to_owned()));
    }
    if let (Some(since), Some(until)) = (query.since, query.until) {
        if since > until {
            return Err(AppError::Validation(
                "since must not be after until".to_owned(),
            ));
        }
    }
    let entries: Vec<Entry> = sqlx::query_as(
        "SELECT tenant_id, id, actor_id, action, target, details, created_at FROM app.audit_events
         WHERE ($1::text IS NULL OR action = $1)
           AND ($2::uuid IS NULL OR actor_id = $2)
           AND ($3::uuid IS NULL OR tenant_id = $3)
           AND ($4::timestamptz IS NULL OR created_at >= $4)
           AND ($5::timestamptz IS NULL OR created_at < $5)
           AND ($6::bigint IS NULL OR id < $6)
         ORDER BY id DESC LIMIT $7",
    )
    .bind(&query.action)
    .bind(query.actor_id)
    .bind(query.tenant_id)
    .bind(query.since)
    .bind(query.until)
    .bind(query.before)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(json!({"events": entries, "next_before": next}))
}

#[utoipa::path(get, path = "/api/tenant/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "One page of the tenant's trail, newest first: \
        `events` (each `id`, `tenant_id`, `actor_id`, `action`, `target`, `details`, \
        `created_at`) and `next_before` (the `before` of the next page; null when this page \
        is not full)",
        body = serde_json::Value)))]
async fn tenant_audit(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppQuery(query): AppQuery<AuditQuery>,
) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    let decided = authorize(
        &state,
        &tenant,
        &mut db,
        Action::TenantViewAudit,
        Resource::Tenant(tenant.id),
    )
    .await?;
    Ok(Json(page(db.conn(decided)?, &query).await?))
}
