//! HTTP areas, each a module with `router()`, and helpers they share.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod boards;
pub mod chat;
pub mod config;
pub mod data_keys;
pub mod deletion;
pub mod domains;
pub mod exports;
pub mod health;
pub mod integrations;
pub mod invitations;
pub mod members;
pub mod passwords;
pub mod signup;
pub mod tasks;
pub mod tenant;
pub mod workspaces;

use crate::error::{AppError, AppResult};
use crate::http::tenant::decide::Decided;
use crate::http::tenant::DbGuard;
use crate::state::AppState;
use uuid::Uuid;

/// A module's routes: each handler carries its `#[utoipa::path]`, which
/// gives both its place in the router and its operation in the OpenAPI
/// document, so the two cannot drift apart. The paths make the service's
/// route table ([`crate::route_paths`]): tests walk it, so a new route is
/// covered without editing them.
#[derive(Default)]
pub struct Routes {
    router: utoipa_axum::router::OpenApiRouter<AppState>,
    paths: Vec<String>,
}

impl Routes {
    /// Adds the handlers of one path, collected with `utoipa_axum::routes!`.
    pub fn routes(mut self, routes: utoipa_axum::router::UtoipaMethodRouter<AppState>) -> Self {
        self.paths.extend(routes.1.paths.keys().cloned());
        self.router = self.router.routes(routes);
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The router and the OpenAPI operations of its routes.
    pub fn split(self) -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
        self.router.split_for_parts()
    }
}

pub(crate) use crate::http::tenant::decide::{
    allowed, authorize, board_resource, task_resource, workspace_resource,
};

/// A trimmed, non-empty name of at most `max` characters.
pub(crate) fn valid_name<'a>(field: &str, value: &'a str, max: usize) -> AppResult<&'a str> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > max {
        return Err(AppError::Validation(format!(
            "{field} must be 1 to {max} characters"
        )));
    }
    Ok(trimmed)
}

/// Deletes the row with this id (already authorized): 204, or 404 if the
/// tenant has no such row. `table` is always one of our own constants.
pub(crate) async fn delete_row(
    db: &mut DbGuard<'_>,
    decided: Decided,
    table: &'static str,
    id: Uuid,
    what: &'static str,
) -> AppResult<axum::http::StatusCode> {
    let done = sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
        .bind(id)
        .execute(db.conn(decided)?)
        .await?;
    match done.rows_affected() {
        0 => Err(AppError::NotFound(what)),
        _ => Ok(axum::http::StatusCode::NO_CONTENT),
    }
}

/// Whether a row with this id is visible in the current tenant.
/// `table` is always one of our own constants, never input.
pub(crate) async fn exists(
    conn: &mut sqlx::PgConnection,
    table: &'static str,
    id: Uuid,
) -> AppResult<bool> {
    let found: Option<(i32,)> = sqlx::query_as(&format!("SELECT 1 FROM {table} WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
}

/// A field that may be absent, `null` or a value, told apart (serde's
/// `Option` alone cannot tell `null` from absent): absent is `None`, `null`
/// is `Some(None)`. Use with `#[serde(default, deserialize_with = ...)]`.
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// Opens an owner transaction that may read and write every tenant's rows,
/// through `tenancy.bypass(why)` (written to the extension's audit log with
/// the reason).
pub(crate) async fn bypass(
    state: &AppState,
    why: String,
) -> AppResult<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = state.admin_db.begin().await?;
    sqlx::query("SELECT tenancy.bypass($1)")
        .bind(why)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Records an action of the request's caller in the request's tenant's
/// trail, in the request's own transaction: it stands or falls with the
/// change it describes.
pub async fn admin_action(
    db: &mut DbGuard<'_>,
    decided: Decided,
    tenant: &crate::http::tenant::Tenant,
    action: &str,
    target: Option<&str>,
    details: serde_json::Value,
) -> AppResult<()> {
    crate::domain::audit::record(
        db.conn(decided)?,
        tenant.id,
        tenant.user_id,
        action,
        target,
        details,
    )
    .await
}
