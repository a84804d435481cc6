//! The current tenant: `GET /api/tenant` (every member), its settings
//! (`GET/PUT /api/tenant/settings`, owners and admins) and billing contact
//! (`PUT /api/tenant/billing`, owners). Settings live in the tenant's
//! catalog row (`configuration`), which the tenant layer loads per request.

use axum::extract::State;
use axum::routing::{get, put};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::authz::{Action, Resource};
use crate::error::{AppError, AppResult};
use crate::extract::AppJson;
use crate::routes::Routes;
use crate::routes::{allowed, authorize};
use crate::state::AppState;
use crate::tenant::decide::Decided;
use crate::tenant::{Db, Tenant};

/// Kept apart from the settings: only owners change it.
const BILLING_KEY: &str = "billing_email";

pub fn router() -> Routes {
    Routes::default()
        .route(
            "/api/tenant",
            get(current).delete(crate::routes::deletion::request),
        )
        .route("/api/tenant/settings", get(settings).put(update_settings))
        .route("/api/tenant/billing", put(update_billing))
}

async fn current(State(state): State<AppState>, tenant: Tenant, db: Db) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    crate::tenant::decide::as_member(&state, &tenant, &mut db).await?;
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
    db: &mut crate::tenant::DbGuard<'_>,
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
    crate::routes::config::settings_written(
        &mut db,
        decided,
        &tenant,
        before.unwrap_or(&empty),
        &settings,
    )
    .await?;
    let stored = store(&mut db, decided, Value::Object(settings)).await?;
    crate::audit::admin_action(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Billing {
    billing_email: String,
}

async fn update_billing(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<Billing>,
) -> AppResult<Json<Value>> {
    let email = body.billing_email.trim();
    if !crate::mail::valid_address(email) {
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
    crate::audit::admin_action(
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
