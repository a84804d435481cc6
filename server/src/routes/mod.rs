//! HTTP areas, each a module with `router()`, and helpers they share.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod boards;
pub mod chat;
pub mod config;
pub mod deletion;
pub mod domains;
pub mod health;
pub mod invitations;
pub mod members;
pub mod passwords;
pub mod signup;
pub mod tasks;
pub mod tenant;
pub mod workspaces;

use crate::authz::{Action, Resource};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::tenant::{DbGuard, Tenant};
use uuid::Uuid;

/// A module's routes: the router, and the path of each route, which make
/// the service's route table ([`crate::route_paths`]): tests walk it, so a
/// new route is covered without editing them.
#[derive(Default)]
pub struct Routes {
    router: axum::Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    pub fn route(
        mut self,
        path: &'static str,
        method_router: axum::routing::MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, method_router);
        self.paths.push(path);
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    pub fn paths(&self) -> &[&'static str] {
        &self.paths
    }

    pub fn into_router(self) -> axum::Router<AppState> {
        self.router
    }
}

/// Asks the policies whether the caller may do `action` on `resource`. A
/// denial is written to the tenant's audit trail (principal, action,
/// resource, deciding policies) and answered 403; whatever the request wrote
/// before is rolled back.
pub(crate) async fn authorize(
    state: &AppState,
    tenant: &Tenant,
    db: &mut DbGuard<'_>,
    action: Action,
    resource: Resource,
) -> AppResult<()> {
    let decision = state.authz.decide(&tenant.principal(), action, &resource);
    if decision.allowed {
        return Ok(());
    }
    if !decision.errors.is_empty() {
        tracing::warn!(errors = ?decision.errors, action = %action, "authorization evaluated with errors (denied)");
    }
    tracing::info!(user_id = %tenant.user_id, action = %action, resource = ?resource, policies = ?decision.policies, "denied");
    // Nothing the request did before the denial is kept: its transaction is
    // rolled back, and the audit entry is written in one of its own, through
    // the same tenant context.
    db.discard().await?;
    let mut tx = state.db.begin().await?;
    crate::context::enter(&mut tx, &state.keys, tenant.id, tenant.user_id).await?;
    crate::audit::record(
        &mut tx,
        tenant.id,
        tenant.user_id,
        "authz.denied",
        Some(&format!("{resource:?}")),
        serde_json::json!({
            "principal": tenant.user_id,
            "tenant_role": tenant.role,
            "action": action.as_str(),
            "resource": format!("{resource:?}"),
            "policies": decision.policies,
            "errors": decision.errors,
        }),
    )
    .await?;
    tx.commit().await?;
    Err(AppError::Denied)
}

/// Whether the policies allow it, without auditing (for filtering lists).
pub(crate) fn allowed(
    state: &AppState,
    tenant: &Tenant,
    action: Action,
    resource: &Resource,
) -> bool {
    state
        .authz
        .decide(&tenant.principal(), action, resource)
        .allowed
}

/// The workspace of a board, or 404 (never a hint of another tenant).
pub(crate) async fn board_resource(
    db: &mut DbGuard<'_>,
    tenant: &Tenant,
    board: Uuid,
) -> AppResult<Resource> {
    let row: Option<(Uuid,)> = sqlx::query_as("SELECT workspace_id FROM app.boards WHERE id = $1")
        .bind(board)
        .fetch_optional(db.conn()?)
        .await?;
    let (workspace,) = row.ok_or(AppError::NotFound("Board"))?;
    Ok(Resource::Board {
        id: board,
        tenant: tenant.id,
        workspace,
    })
}

/// The workspace of a task, or 404.
pub(crate) async fn task_resource(
    db: &mut DbGuard<'_>,
    tenant: &Tenant,
    task: Uuid,
) -> AppResult<Resource> {
    let row: Option<(Uuid,)> = sqlx::query_as(
        "SELECT b.workspace_id FROM app.tasks t JOIN app.boards b ON b.tenant_id = t.tenant_id AND b.id = t.board_id
         WHERE t.id = $1",
    )
    .bind(task)
    .fetch_optional(db.conn()?)
    .await?;
    let (workspace,) = row.ok_or(AppError::NotFound("Task"))?;
    Ok(Resource::Task {
        id: task,
        tenant: tenant.id,
        workspace,
    })
}

/// A workspace of this tenant, or 404.
pub(crate) async fn workspace_resource(
    db: &mut DbGuard<'_>,
    tenant: &Tenant,
    workspace: Uuid,
) -> AppResult<Resource> {
    if !exists(db.conn()?, "app.workspaces", workspace).await? {
        return Err(AppError::NotFound("Workspace"));
    }
    Ok(Resource::Workspace {
        id: workspace,
        tenant: tenant.id,
    })
}

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
    table: &'static str,
    id: Uuid,
    what: &'static str,
) -> AppResult<axum::http::StatusCode> {
    let done = sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
        .bind(id)
        .execute(db.conn()?)
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

/// Queues a mail that carries a one-time link, in the context of `tenant`
/// (for `user`): the tenant's template `key` for `email`, with `action`,
/// through `queue`, a function of the credential role that mails the
/// address of the pending link `digest` and no other
/// (`SELECT app.queue_..._mail($1, $2, $3, $4)`: digest, subject, text, html).
pub(crate) async fn queue_link_mail(
    state: &AppState,
    (tenant, user): (Uuid, Uuid),
    queue: &'static str,
    digest: [u8; 32],
    (key, email): (&str, &str),
    action: crate::mail_templates::Action<'_>,
) -> AppResult<()> {
    let mut tx = state.auth_db.begin().await?;
    crate::context::enter(&mut tx, &state.keys, tenant, user).await?;
    let mail = crate::mail_templates::render(&mut tx, key, email, Some(action)).await?;
    sqlx::query(queue)
        .bind(&digest[..])
        .bind(mail.subject)
        .bind(mail.text)
        .bind(mail.html)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
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
