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
use crate::state::AppState;

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

/// Records an action of the request's caller in the request's tenant's
/// trail, in the request's own transaction: it stands or falls with the
/// change it describes.
pub async fn admin_action(
    db: &mut crate::tenant::DbGuard<'_>,
    decided: crate::tenant::decide::Decided,
    tenant: &crate::tenant::Tenant,
    action: &str,
    target: Option<&str>,
    details: Value,
) -> AppResult<()> {
    record(
        db.conn(decided)?,
        tenant.id,
        tenant.user_id,
        action,
        target,
        details,
    )
    .await
}

/// Deletes, tenant by tenant and through each tenant's own context, the
/// entries older than its retention; records each purge in the trail.
/// Returns how many entries were deleted.
pub async fn purge(state: &AppState) -> AppResult<u64> {
    let tenants: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM tenancy.tenants WHERE status = 'active'")
            .fetch_all(&state.admin_db)
            .await?;
    let default_days = crate::tenant_config::defaults()
        .get("audit_retention_days")
        .and_then(Value::as_i64)
        .unwrap_or(365);
    let mut total = 0;
    for tenant in tenants {
        // One tenant's failure (suspended meanwhile, say) never stops the others.
        match purge_tenant(state, tenant, default_days).await {
            Ok(deleted) => total += deleted,
            Err(e) => tracing::warn!(%tenant, error = %e, "audit purge failed for a tenant"),
        }
    }
    Ok(total)
}

async fn purge_tenant(state: &AppState, tenant: Uuid, default_days: i64) -> AppResult<u64> {
    let mut tx = state.admin_db.begin().await?;
    crate::context::enter(&mut tx, &state.keys, tenant, Uuid::nil()).await?;
    // From the configuration requests load, checked again: only 30 to 3650
    // days is ever used, whatever was written there.
    let days: Option<i64> = sqlx::query_scalar(
        "SELECT CASE WHEN configuration->>'audit_retention_days' ~ '^[0-9]{1,4}$'
                     THEN least(greatest((configuration->>'audit_retention_days')::bigint, 30), 3650) END
         FROM tenancy.current_tenant()",
    )
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    let days = days.unwrap_or(default_days);
    let deleted = sqlx::query(
        "DELETE FROM app.audit_events WHERE created_at < now() - make_interval(days => $1::int)",
    )
    .bind(days)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if deleted > 0 {
        record(
            &mut tx,
            tenant,
            Uuid::nil(),
            "audit.purged",
            None,
            serde_json::json!({"deleted": deleted, "retention_days": days}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(deleted)
}

/// Purges every `every` until `shutdown`.
pub async fn run_purge(
    state: AppState,
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match purge(&state).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "purged audit entries past retention"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit purge failed"),
        }
        // Tenants deleted by their owners, once their grace period is over.
        if let Err(e) = crate::routes::deletion::purge_due(&state).await {
            tracing::warn!(error = %e, "tenant removal failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}
