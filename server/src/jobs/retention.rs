//! Retention: each tenant's entries older than its
//! `audit_retention_days` are deleted through its own context, mail sent
//! more than [`SENT_MAIL_DAYS`] days ago leaves the outbox, and tenants
//! their owners deleted are removed once their grace period is over.

use serde_json::Value;
use uuid::Uuid;

use crate::domain::audit::record;
use crate::error::AppResult;
use crate::state::AppState;

/// Deletes, tenant by tenant and through each tenant's own context, the
/// entries older than its retention; records each purge in the trail.
/// Returns how many entries were deleted.
pub async fn purge(state: &AppState) -> AppResult<u64> {
    let tenants: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM tenancy.tenants WHERE status = 'active'")
            .fetch_all(&state.admin_db)
            .await?;
    let default_days = crate::domain::tenant_config::defaults()
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
    crate::domain::context::enter(&mut tx, &state.keys, tenant, Uuid::nil()).await?;
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

/// Days a delivered mail stays in the outbox (for support: "was it sent?")
/// before it is deleted: the outbox is a queue, not an archive of
/// everyone's addresses and links.
pub const SENT_MAIL_DAYS: i32 = 30;

/// Deletes mail delivered more than [`SENT_MAIL_DAYS`] days ago (never
/// mail still waiting); returns how many.
pub async fn purge_sent_mail(state: &AppState) -> AppResult<u64> {
    let mut tx = state.admin_db.begin().await?;
    // Across tenants, as the mail sender (the outbox's cross-tenant policy).
    sqlx::query("SELECT set_config('app.cross_tenant', 'mail_sender', true)")
        .execute(&mut *tx)
        .await?;
    let deleted = sqlx::query(
        "DELETE FROM app.email_outbox WHERE sent_at < now() - make_interval(days => $1)",
    )
    .bind(SENT_MAIL_DAYS)
    .execute(&mut *tx)
    .await?
    .rows_affected();
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
        match purge_sent_mail(&state).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "purged mail sent long ago"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sent mail purge failed"),
        }
        // Tenants deleted by their owners, once their grace period is over.
        if let Err(e) = purge_due(&state).await {
            tracing::warn!(error = %e, "tenant removal failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn drop_stream(state: &AppState, tenant: Uuid) -> AppResult<()> {
    let client = redis::Client::open(state.config.stream_redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: i64 = redis::cmd("DEL")
        .arg(crate::domain::messaging::stream_key(tenant))
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Removes every tenant whose grace period is over, with all its rows; one
/// tenant's failure never stops the others. Returns how many were removed.
pub async fn purge_due(state: &AppState) -> AppResult<usize> {
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT tenant FROM app.tenant_deletions WHERE purge_after <= now() ORDER BY purge_after",
    )
    .fetch_all(&state.admin_db)
    .await?;
    let mut removed = 0;
    for tenant in due {
        // The deletion must still be due and the tenant still deactivated by
        // it (a platform status change clears the deletion), checked under
        // the tenant row's lock.
        let dropped = async {
            // Crypto-shredding: its data keys are destroyed, and committed,
            // before any row goes, so whatever copy of its sealed values
            // exists (backups, replicas, exports) stays unreadable even if
            // removing the rows fails and waits for a retry.
            let mut shred = state.admin_db.begin().await?;
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM tenancy.tenants WHERE id = $1 FOR UPDATE")
                    .bind(tenant)
                    .fetch_optional(&mut *shred)
                    .await?;
            let due: Option<Uuid> = sqlx::query_scalar(
                "SELECT tenant FROM app.tenant_deletions WHERE tenant = $1 AND purge_after <= now()",
            )
            .bind(tenant)
            .fetch_optional(&mut *shred)
            .await?;
            if due.is_some() && status.as_deref() == Some("inactive") {
                let shredded: i32 = sqlx::query_scalar("SELECT app.shred_tenant_keys($1)")
                    .bind(tenant)
                    .fetch_one(&mut *shred)
                    .await?;
                tracing::info!(%tenant, keys = shredded, "tenant data keys destroyed");
            }
            shred.commit().await?;
            let mut tx = state.admin_db.begin().await?;
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM tenancy.tenants WHERE id = $1 FOR UPDATE")
                    .bind(tenant)
                    .fetch_optional(&mut *tx)
                    .await?;
            let due: Option<Uuid> = sqlx::query_scalar(
                "DELETE FROM app.tenant_deletions WHERE tenant = $1 AND purge_after <= now() RETURNING tenant",
            )
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
            if due.is_none() || status.as_deref() != Some("inactive") {
                tx.commit().await?;
                return AppResult::Ok(None);
            }
            let rows: i64 = sqlx::query_scalar("SELECT tenancy.drop_tenant($1)")
                .bind(tenant)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            AppResult::Ok(Some(rows))
        }
        .await;
        match dropped {
            Ok(Some(rows)) => {
                removed += 1;
                tracing::info!(%tenant, rows, "tenant removed after its grace period");
                // Its message stream too.
                if let Err(e) = drop_stream(state, tenant).await {
                    tracing::warn!(%tenant, error = %e, "tenant message stream not removed");
                }
            }
            Ok(None) => tracing::info!(%tenant, "tenant deletion no longer applies; not removed"),
            Err(e) => tracing::warn!(%tenant, error = %e, "tenant removal failed; retried later"),
        }
    }
    Ok(removed)
}
