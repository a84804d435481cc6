//! The current tenant: `GET /api/tenant` (every member), its settings
//! (`GET/PUT /api/tenant/settings`, owners and admins) and billing contact
//! (`PUT /api/tenant/billing`, owners). Settings live in the tenant's
//! catalog row (`configuration`), which the tenant layer loads per request.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa_axum::routes;

use crate::domain::authz::{Action, Resource};
use crate::error::{AppError, AppResult};
use crate::http::extract::AppJson;
use crate::http::routes::Routes;
use crate::http::routes::{allowed, authorize};
use crate::http::tenant::decide::Decided;
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

/// Kept apart from the settings: only owners change it.
const BILLING_KEY: &str = "billing_email";

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(current, crate::http::routes::deletion::request))
        .routes(routes!(settings, update_settings))
        .routes(routes!(update_billing))
}

#[utoipa::path(get, path = "/api/tenant", tag = "tenant",
    responses((status = 200, description = "The tenant: `id`, `slug`, `name`, `display_name`, \
        `role` (the caller's: owner, admin or member) and `configuration` (its settings \
        document, null unless the caller may manage settings)", body = serde_json::Value)))]
async fn current(State(state): State<AppState>, tenant: Tenant, db: Db) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    crate::http::tenant::decide::as_member(&state, &tenant, &mut db).await?;
    // Configuration can hold the tenant's own API keys: only for those who manage settings.
    let configuration = allowed(
        &state,
        &tenant,
        Action::TenantManageSettings,
        &Resource::Tenant(tenant.id),
    )
    .then_some(&tenant.configuration);
    Ok(Json(json!({
        "id": tenant.id,
        "slug": tenant.slug,
        "name": tenant.name,
        "display_name": tenant.display_name,
        "configuration": configuration,
        "role": tenant.role,
    })))
}

#[utoipa::path(get, path = "/api/tenant/settings", tag = "tenant",
    responses((status = 200, description = "The tenant's settings document (a JSON object: the \
        configuration keys, the billing contact and the tenant's own keys)",
        body = serde_json::Value)))]
async fn settings(State(state): State<AppState>, tenant: Tenant, db: Db) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    authorize(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
        Resource::Tenant(tenant.id),
    )
    .await?;
    Ok(Json(tenant.configuration.clone()))
}

async fn store(
    db: &mut crate::http::tenant::DbGuard<'_>,
    decided: Decided,
    configuration: Value,
) -> AppResult<Value> {
    Ok(
        sqlx::query_scalar("SELECT tenancy.set_current_tenant_configuration($1)")
            .bind(configuration)
            .fetch_one(db.conn(decided)?)
            .await?,
    )
}

/// Replaces the settings (a JSON object); the billing contact is kept.
#[utoipa::path(put, path = "/api/tenant/settings", tag = "tenant",
    request_body(content = serde_json::Value,
        description = "The whole settings document, a JSON object without `billing_email`; its \
            configuration keys must be valid (a change to them is a new configuration version)"),
    responses((status = 200, description = "The settings document as stored",
        body = serde_json::Value)))]
async fn update_settings(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<Value>,
) -> AppResult<Json<Value>> {
    let Value::Object(mut settings) = body else {
        return Err(AppError::Validation(
            "settings must be a JSON object".to_owned(),
        ));
    };
    if settings.contains_key(BILLING_KEY) {
        return Err(AppError::Validation(format!(
            "{BILLING_KEY} is changed with PUT /api/tenant/billing"
        )));
    }
    let mut db = db.lock().await?;
    let decided = authorize(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
        Resource::Tenant(tenant.id),
    )
    .await?;
    if let Some(billing) = tenant.configuration.get(BILLING_KEY) {
        settings.insert(BILLING_KEY.to_owned(), billing.clone());
    }
    // Which keys changed, not their values (they may be anything).
    let before = tenant.configuration.as_object();
    let mut changed: Vec<&String> = settings
        .iter()
        .filter(|(k, v)| before.and_then(|b| b.get(*k)) != Some(*v))
        .map(|(k, _)| k)
        .chain(
            before
                .into_iter()
                .flat_map(|b| b.keys())
                .filter(|k| !settings.contains_key(*k)),
        )
        .collect();
    changed.sort();
    let details = json!({ "changed": changed });
    let empty = Map::new();
    crate::http::routes::config::settings_written(
        &mut db,
        decided,
        &tenant,
        before.unwrap_or(&empty),
        &settings,
    )
    .await?;
    let stored = store(&mut db, decided, Value::Object(settings)).await?;
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "tenant.settings_changed",
        None,
        details,
    )
    .await?;
    Ok(Json(stored))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Billing {
    billing_email: String,
}

#[utoipa::path(put, path = "/api/tenant/billing", tag = "tenant",
    request_body(content = Billing, description = "The billing contact's email address"),
    responses((status = 200, description = "The settings document as stored, with the new \
        `billing_email`", body = serde_json::Value)))]
async fn update_billing(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<Billing>,
) -> AppResult<Json<Value>> {
    let email = body.billing_email.trim();
    if !crate::domain::mail::valid_address(email) {
        return Err(AppError::Validation(
            "billing_email must be an email address".to_owned(),
        ));
    }
    let mut db = db.lock().await?;
    let decided = authorize(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageBilling,
        Resource::Tenant(tenant.id),
    )
    .await?;
    let mut configuration = match &tenant.configuration {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    configuration.insert(BILLING_KEY.to_owned(), json!(email));
    let stored = store(&mut db, decided, Value::Object(configuration)).await?;
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "tenant.billing_changed",
        Some(email),
        json!({}),
    )
    .await?;
    Ok(Json(stored))
}
