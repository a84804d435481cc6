//! `GET /api/tenant`: the current tenant as its members see it, with its
//! configuration (loaded once per request by the tenant layer).

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::state::AppState;
use crate::tenant::Tenant;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/tenant", get(current))
}

async fn current(tenant: Tenant) -> Json<Value> {
    // Configuration can hold the tenant's own API keys: owners and admins only.
    let configuration =
        matches!(tenant.role.as_str(), "owner" | "admin").then_some(&tenant.configuration);
    Json(json!({
        "id": tenant.id,
        "slug": tenant.slug,
        "name": tenant.name,
        "display_name": tenant.display_name,
        "configuration": configuration,
        "role": tenant.role,
    }))
}
