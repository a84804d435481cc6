//! The request's authorization decision, and the only way past it to the
//! request's transaction: [`authorize`] asks the Cedar policies and returns
//! a [`Decided`] when they allow the action; [`DbGuard::conn`] takes one.
//! A handler that makes no decision has no connection to work with, so it
//! does not compile. Before the decision a handler may only look up the
//! resource it concerns ([`board_resource`], [`task_resource`],
//! [`workspace_resource`]), through the tenant's own context.

use uuid::Uuid;

use crate::domain::authz::{Action, Resource};
use crate::error::{AppError, AppResult};
use crate::http::tenant::{DbGuard, Tenant};
use crate::state::AppState;

/// Proof that the policies allowed the request's action: only
/// [`authorize`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct Decided(());

/// Asks the policies whether the caller may do `action` on `resource`. A
/// denial is written to the tenant's audit trail (principal, action,
/// resource, deciding policies) and answered 403; whatever the request wrote
/// before is rolled back.
pub async fn authorize(
    state: &AppState,
    tenant: &Tenant,
    db: &mut DbGuard<'_>,
    action: Action,
    resource: Resource,
) -> AppResult<Decided> {
    let decision = state.authz.decide(&tenant.principal(), action, &resource);
    if decision.allowed {
        return Ok(Decided(()));
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
    crate::domain::context::enter(&mut tx, &state.keys, tenant.id, tenant.user_id).await?;
    crate::domain::audit::record(
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

/// `action` on the request's own tenant (the resource of tenant-wide
/// actions: settings, members, domains...).
pub async fn on_tenant(
    state: &AppState,
    tenant: &Tenant,
    db: &mut DbGuard<'_>,
    action: Action,
) -> AppResult<Decided> {
    authorize(state, tenant, db, action, Resource::Tenant(tenant.id)).await
}

/// The decision that the caller may see the tenant, which the policies
/// allow every owner, admin and member: for what any member may do
/// (chat, lists filtered item by item).
pub async fn as_member(
    state: &AppState,
    tenant: &Tenant,
    db: &mut DbGuard<'_>,
) -> AppResult<Decided> {
    on_tenant(state, tenant, db, Action::TenantView).await
}

/// Whether the policies allow it, without auditing (for filtering lists).
pub fn allowed(state: &AppState, tenant: &Tenant, action: Action, resource: &Resource) -> bool {
    state
        .authz
        .decide(&tenant.principal(), action, resource)
        .allowed
}

/// The workspace of a board, or 404 (never a hint of another tenant).
pub async fn board_resource(
    db: &mut DbGuard<'_>,
    tenant: &Tenant,
    board: Uuid,
) -> AppResult<Resource> {
    let row: Option<(Uuid,)> = sqlx::query_as("SELECT workspace_id FROM app.boards WHERE id = $1")
        .bind(board)
        .fetch_optional(db.tx()?)
        .await?;
    let (workspace,) = row.ok_or(AppError::NotFound("Board"))?;
    Ok(Resource::Board {
        id: board,
        tenant: tenant.id,
        workspace,
    })
}

/// The workspace of a task, or 404.
pub async fn task_resource(
    db: &mut DbGuard<'_>,
    tenant: &Tenant,
    task: Uuid,
) -> AppResult<Resource> {
    let row: Option<(Uuid,)> = sqlx::query_as(
        "SELECT b.workspace_id FROM app.tasks t JOIN app.boards b ON b.tenant_id = t.tenant_id AND b.id = t.board_id
         WHERE t.id = $1",
    )
    .bind(task)
    .fetch_optional(db.tx()?)
    .await?;
    let (workspace,) = row.ok_or(AppError::NotFound("Task"))?;
    Ok(Resource::Task {
        id: task,
        tenant: tenant.id,
        workspace,
    })
}

/// A workspace of this tenant, or 404.
pub async fn workspace_resource(
    db: &mut DbGuard<'_>,
    tenant: &Tenant,
    workspace: Uuid,
) -> AppResult<Resource> {
    if !crate::http::routes::exists(db.tx()?, "app.workspaces", workspace).await? {
        return Err(AppError::NotFound("Workspace"));
    }
    Ok(Resource::Workspace {
        id: workspace,
        tenant: tenant.id,
    })
}
