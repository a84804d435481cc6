//! The audit trail (seed 002, REQ-MT-B013): administrative actions,
//! configuration changes, authorization denials and (in the extension's
//! `tenancy.audit_log`) bypasses, each with actor, tenant, action, target,
//! details and time, in the tenant's own `app.audit_events` under the same
//! isolation as all tenant data. Retention is per tenant
//! (`audit_retention_days` in its configuration); `purge` enforces it.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::AppResult;

/// Writes one entry into `tenant`'s trail (inside that tenant's context, or
/// a bypass).
pub async fn record(
    conn: &mut PgConnection,
    tenant: Uuid,
    actor: Uuid,
    action: &str,
    target: Option<&str>,
    details: Value,
) -> AppResult<()> {
    sqlx::query(
        "INSERT INTO app.audit_events (tenant_id, actor_id, action, target, details)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant)
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}
