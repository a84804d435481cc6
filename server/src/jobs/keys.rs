//! Data-key work outside the request path (seed 002, REQ-MT-B009):
//!
//! - resealing after a tenant's data key was rotated: values sealed under a
//!   retired version (integrations, invitation addresses with their blind
//!   index; addresses written in plain before they were sealed, too) are
//!   opened and sealed again under the current one, a
//!   batch per transaction, so the work resumes wherever it stopped (a
//!   crash, a restart) and everything stays readable meanwhile; a retired
//!   version is destroyed once nothing is sealed under it;
//! - rewrapping every tenant's data key under a new platform key
//!   (`tenancy-server rotate-data-key`), which touches no sealed value.

use std::time::Duration;

use uuid::Uuid;

use crate::domain::integrations;
use crate::domain::keyring::{DataKey, TenantKeys};
use crate::domain::pii;
use crate::error::AppResult;
use crate::state::AppState;

/// Values resealed per transaction.
const BATCH: i64 = 100;

#[derive(sqlx::FromRow)]
struct Sealed {
    kind: String,
    key_version: i32,
    sealed: Vec<u8>,
}

/// Reseals up to `limit` of `tenant`'s values that a retired key sealed;
/// returns how many. Runs in the tenant's own context (the service acting).
pub async fn reseal_tenant(state: &AppState, tenant: Uuid, limit: i64) -> AppResult<u64> {
    let mut tx = state.db.begin().await?;
    crate::domain::context::enter(&mut tx, &state.keys, tenant, Uuid::nil()).await?;
    let key = state.keyring.current_key(&mut tx, tenant).await?;
    let rows: Vec<Sealed> = sqlx::query_as(
        "SELECT kind, key_version, sealed FROM app.tenant_integrations
         WHERE key_version < $1 ORDER BY kind LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(key.version())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut resealed = 0;
    for row in rows {
        let old = state
            .keyring
            .key_version(&mut tx, tenant, row.key_version)
            .await?;
        let column = integrations::sealed_column(&row.kind);
        let plain = old.open(
            &column,
            &format!("integration {} of tenant {tenant}", row.kind),
            &row.sealed,
        )?;
        let sealed = key.seal(&column, &plain)?;
        sqlx::query(
            "UPDATE app.tenant_integrations SET key_version = $1, sealed = $2 WHERE kind = $3",
        )
        .bind(key.version())
        .bind(&sealed)
        .bind(&row.kind)
        .execute(&mut *tx)
        .await?;
        resealed += 1;
    }
    resealed += reseal_invitations(state, &mut tx, tenant, &key, limit).await?;
    tx.commit().await?;
    Ok(resealed)
}

#[derive(sqlx::FromRow)]
struct Invitee {
    id: Uuid,
    token_hash: Vec<u8>,
    email: Option<String>,
    email_sealed: Option<Vec<u8>>,
}

/// Seals again, under `key`, up to `limit` invitation addresses sealed
/// under a retired key or still in plain (written before addresses were
/// sealed), with their blind index. A plain row was bound to no link, so
/// whoever could write it may have pointed it at their own: sealed, it is
/// also revoked if still pending (its admin sends it again).
async fn reseal_invitations(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    key: &DataKey,
    limit: i64,
) -> AppResult<u64> {
    let rows: Vec<Invitee> = sqlx::query_as(
        "SELECT id, token_hash, email, email_sealed FROM app.invitations
         WHERE key_version < $1 OR email IS NOT NULL ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(key.version())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut old = TenantKeys::new(&state.keyring, tenant);
    let mut resealed = 0;
    for row in rows {
        let plain = row.email.is_some() && row.email_sealed.is_none();
        let email = pii::open_invitee(
            &mut old,
            conn,
            row.id,
            &row.token_hash,
            row.email,
            row.email_sealed,
        )
        .await?;
        let sealed = pii::seal_invitee(key, row.id, &row.token_hash, &email)?;
        sqlx::query(
            "UPDATE app.invitations
             SET email = NULL, email_sealed = $2, email_index = $3, key_version = $4,
                 revoked_at = CASE WHEN $5 AND accepted_at IS NULL THEN coalesce(revoked_at, now())
                                   ELSE revoked_at END
             WHERE id = $1",
        )
        .bind(row.id)
        .bind(&sealed.sealed)
        .bind(&sealed.index[..])
        .bind(sealed.key_version)
        .bind(plain)
        .execute(&mut *conn)
        .await?;
        resealed += 1;
    }
    Ok(resealed)
}

/// One pass: reseals what retired keys sealed, tenant by tenant, then
/// destroys the retired keys nothing needs any more.
pub async fn reseal_pass(state: &AppState) -> AppResult<u64> {
    let tenants: Vec<Uuid> = {
        let mut tx = state.admin_db.begin().await?;
        let due = sqlx::query_scalar("SELECT app.rekey_due(100)")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        due
    };
    let mut total = 0;
    for tenant in tenants {
        loop {
            match reseal_tenant(state, tenant, BATCH).await {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "resealing failed; retried later");
                    break;
                }
            }
        }
        let destroyed: i32 = sqlx::query_scalar("SELECT app.destroy_retired_keys($1)")
            .bind(tenant)
            .fetch_one(&state.admin_db)
            .await?;
        if destroyed > 0 {
            tracing::info!(%tenant, destroyed, "retired data keys destroyed after resealing");
        }
    }
    Ok(total)
}

/// Reseals every `every` until `shutdown`.
pub async fn run_reseal(
    state: AppState,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match reseal_pass(&state).await {
            Ok(n) if n > 0 => {
                tracing::info!(resealed = n, "values resealed under current data keys")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "resealing pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[derive(sqlx::FromRow)]
struct Wrapped {
    tenant_id: Uuid,
    version: i32,
    kek_id: String,
    wrapped: Vec<u8>,
}

/// What `rotate-data-key` did.
pub struct Rewrapped {
    pub rewrapped: u64,
    /// Keys no held platform key opens (named in the log), left as they are.
    pub skipped: u64,
}

/// Rewraps every live tenant data key under the current platform key,
/// opening each with whichever held key wrapped it; a batch per
/// transaction, so a stop half-way resumes where it was. A key that does
/// not open is skipped and named, never a reason to stop. The current
/// platform key is registered first; platform keys no tenant key uses any
/// more are forgotten at the end.
pub async fn rewrap_all(
    db: &sqlx::PgPool,
    keyring: &crate::domain::keyring::Keyring,
) -> AppResult<Rewrapped> {
    sqlx::query("SELECT app.register_platform_keys($1)")
        .bind(vec![keyring.current.id().to_owned()])
        .execute(db)
        .await?;
    let mut done = Rewrapped {
        rewrapped: 0,
        skipped: 0,
    };
    let mut after = (Uuid::nil(), 0i32);
    loop {
        let mut tx = db.begin().await?;
        let batch: Vec<Wrapped> = sqlx::query_as(
            "SELECT tenant_id, version, kek_id, wrapped FROM app.data_keys_to_rewrap($1, $2, $3, 500)",
        )
        .bind(keyring.current.id())
        .bind(after.0)
        .bind(after.1)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = batch.last() else {
            tx.commit().await?;
            break;
        };
        after = (last.tenant_id, last.version);
        for key in &batch {
            let opened = match keyring.open(key.tenant_id, key.version, &key.kek_id, &key.wrapped) {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::error!(tenant = %key.tenant_id, version = key.version, error = %e, "data key not rewrapped");
                    done.skipped += 1;
                    continue;
                }
            };
            let rewrapped = keyring
                .current
                .wrap(key.tenant_id, key.version, opened.bytes())?;
            sqlx::query("SELECT app.rewrap_data_key($1, $2, $3, $4)")
                .bind(key.tenant_id)
                .bind(key.version)
                .bind(keyring.current.id())
                .bind(&rewrapped)
                .execute(&mut *tx)
                .await?;
            done.rewrapped += 1;
        }
        tx.commit().await?;
    }
    sqlx::query("SELECT app.forget_platform_keys($1)")
        .bind(keyring.current.id())
        .execute(db)
        .await?;
    Ok(done)
}
