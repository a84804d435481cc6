//! A tenant's own providers, managed by its owners and admins
//! (`tenant:manageIntegrations`; seed 002, REQ-MT-B011):
//!
//! - `GET /api/tenant/integrations`: every kind, configured or not, with
//!   its masked configuration, when and by whom it was last set, and
//!   whether the tenant's own or the platform's applies;
//! - `PUT /api/tenant/integrations/{kind}`: validates (for email: a real
//!   connection to the SMTP server, TLS and login included), seals with the
//!   tenant's data key and stores; write-only: secrets never come back;
//! - `DELETE /api/tenant/integrations/{kind}`: the platform's applies again.
//!
//! Each change is in the tenant's audit trail, with masked values only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::authz::Action;
use crate::domain::integrations::{self, KINDS};
use crate::error::{AppError, AppResult};
use crate::http::extract::{AppJson, AppPath};
use crate::http::routes::Routes;
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(list))
        .routes(routes!(set, remove))
}

#[derive(sqlx::FromRow)]
struct Row {
    kind: String,
    masked: Value,
    updated_at: DateTime<Utc>,
    updated_by: Option<Uuid>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct IntegrationView {
    /// `payment`, `email`, `sms` or `analytics`.
    kind: String,
    /// `tenant` (its own configuration) or `platform` (the default).
    source: &'static str,
    /// The tenant's configuration with every secret masked; for the
    /// platform's default, its provider only; null when there is none.
    settings: Option<Value>,
    updated_at: Option<DateTime<Utc>>,
    updated_by: Option<Uuid>,
}

fn view(state: &AppState, kind: &str, row: Option<Row>) -> IntegrationView {
    match row {
        Some(row) => IntegrationView {
            kind: row.kind,
            source: "tenant",
            settings: Some(row.masked),
            updated_at: Some(row.updated_at),
            updated_by: row.updated_by,
        },
        None => IntegrationView {
            kind: kind.to_owned(),
            source: "platform",
            settings: if kind == "email" {
                state
                    .config
                    .smtp_url
                    .as_ref()
                    .map(|_| json!({"provider": "smtp"}))
            } else {
                state.platform_integrations.shown(kind)
            },
            updated_at: None,
            updated_by: None,
        },
    }
}

fn known(kind: &str) -> AppResult<&'static str> {
    KINDS
        .into_iter()
        .find(|k| *k == kind)
        .ok_or(AppError::NotFound("Integration"))
}

#[utoipa::path(get, path = "/api/tenant/integrations", tag = "integrations",
    responses((status = 200, description = "`integrations`: every kind (payment, email, sms, \
        analytics), masked, with its `source`", body = serde_json::Value)))]
async fn list(State(state): State<AppState>, tenant: Tenant, db: Db) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageIntegrations,
    )
    .await?;
    let mut rows: Vec<Row> =
        sqlx::query_as("SELECT kind, masked, updated_at, updated_by FROM app.tenant_integrations")
            .fetch_all(db.conn(decided)?)
            .await?;
    let views: Vec<IntegrationView> = KINDS
        .iter()
        .map(|kind| {
            let row = rows
                .iter()
                .position(|r| r.kind == *kind)
                .map(|i| rows.swap_remove(i));
            view(&state, kind, row)
        })
        .collect();
    Ok(Json(json!({ "integrations": views })))
}

#[utoipa::path(put, path = "/api/tenant/integrations/{kind}", tag = "integrations",
    params(("kind" = String, Path, description = "`payment`, `email`, `sms` or `analytics`")),
    request_body(content = serde_json::Value, description = "email: `{provider: \"smtp\", host, \
        port, security (starttls|tls|none), username?, password?, from}` or `{provider: \
        \"postmark\"|\"sendgrid\", api_key, from, endpoint?}`; payment: `{provider, \
        secret_key, publishable_key?, webhook_secret?}`; sms: `{provider, account_id, auth_token, \
        from}`; analytics: `{provider, tracking_id}`"),
    responses((status = 200, description = "Stored, sealed; the masked view", body = IntegrationView),
        (status = 422, description = "Invalid, or (email) the SMTP server or the API did not \
        accept the connection, the login or the key")))]
async fn set(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(kind): AppPath<String>,
    AppJson(body): AppJson<Value>,
) -> AppResult<Json<IntegrationView>> {
    let kind = known(&kind)?;
    {
        let mut db = db.lock().await?;
        crate::http::tenant::decide::on_tenant(
            &state,
            &tenant,
            &mut db,
            Action::TenantManageIntegrations,
        )
        .await?;
        // No transaction is held while the provider is checked.
        db.discard().await?;
    }
    let validated = integrations::validate(kind, body)?;
    if let Some(provider) = &validated.email {
        integrations::check_email(provider, state.config.tenant_smtp_private).await?;
    }
    let mut tx = state.db.begin().await?;
    crate::domain::context::enter(&mut tx, &state.keys, tenant.id, tenant.user_id).await?;
    // The check above may have taken a while: the caller must still run
    // the tenant when the settings are written.
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM app.tenant_memberships WHERE user_id = $1")
            .bind(tenant.user_id)
            .fetch_optional(&mut *tx)
            .await?;
    if !state.authz.still_allowed(
        tenant.user_id,
        tenant.id,
        role.as_deref(),
        Action::TenantManageIntegrations,
    ) {
        return Err(AppError::Forbidden("Not allowed"));
    }
    let key = state.keyring.current_key(&mut tx, tenant.id).await?;
    let sealed = integrations::seal(&key, kind, &validated.plain)?;
    let row: Row = sqlx::query_as(
        "INSERT INTO app.tenant_integrations (kind, key_version, sealed, masked, updated_by)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, kind) DO UPDATE SET key_version = EXCLUDED.key_version,
             sealed = EXCLUDED.sealed, masked = EXCLUDED.masked, updated_at = now(),
             updated_by = EXCLUDED.updated_by
         RETURNING kind, masked, updated_at, updated_by",
    )
    .bind(kind)
    .bind(key.version())
    .bind(&sealed)
    .bind(&validated.masked)
    .bind(tenant.user_id)
    .fetch_one(&mut *tx)
    .await?;
    // The row now holds its key (the foreign key's lock): if a rotation
    // retired and destroyed it in between, nothing could open the value.
    crate::domain::keyring::ensure_live(&mut tx, key.version()).await?;
    crate::domain::audit::record(
        &mut tx,
        tenant.id,
        tenant.user_id,
        "integration.updated",
        Some(kind),
        json!({ "settings": validated.masked }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(view(&state, kind, Some(row))))
}

#[utoipa::path(delete, path = "/api/tenant/integrations/{kind}", tag = "integrations",
    params(("kind" = String, Path, description = "`payment`, `email`, `sms` or `analytics`")),
    responses((status = 204, description = "Removed: the platform's default applies")))]
async fn remove(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(kind): AppPath<String>,
) -> AppResult<StatusCode> {
    let kind = known(&kind)?;
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageIntegrations,
    )
    .await?;
    let removed = sqlx::query("DELETE FROM app.tenant_integrations WHERE kind = $1")
        .bind(kind)
        .execute(db.conn(decided)?)
        .await?;
    if removed.rows_affected() == 0 {
        return Err(AppError::NotFound("Integration"));
    }
    crate::domain::audit::record(
        db.conn(decided)?,
        tenant.id,
        tenant.user_id,
        "integration.removed",
        Some(kind),
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
