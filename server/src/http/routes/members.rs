//! Tenant members (`/api/tenant/members`) and workspace members
//! (`/api/workspaces/{id}/members`), each change decided by the policies.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::authz::{Action, Resource};
use crate::error::{AppError, AppResult};
use crate::http::extract::{AppJson, AppPath};
use crate::http::routes::invitations::{invite, Invitation, InviteRequest};
use crate::http::routes::Routes;
use crate::http::routes::{authorize, workspace_resource};
use crate::http::tenant::decide::Decided;
use crate::http::tenant::{Db, DbGuard, Tenant};
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(list_tenant, add_tenant))
        .routes(routes!(change_tenant, remove_tenant))
        .routes(routes!(list_workspace, add_workspace))
        .routes(routes!(change_workspace, remove_workspace))
}

pub(crate) fn tenant_role(role: &str) -> AppResult<&str> {
    match role {
        "owner" | "admin" | "member" => Ok(role),
        other => Err(AppError::Validation(format!(
            "role must be owner, admin or member; got {other:?}"
        ))),
    }
}

fn workspace_role(role: &str) -> AppResult<&str> {
    match role {
        "admin" | "member" | "viewer" => Ok(role),
        other => Err(AppError::Validation(format!(
            "role must be admin, member or viewer; got {other:?}"
        ))),
    }
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct Member {
    user_id: Uuid,
    email: String,
    display_name: String,
    role: String,
}

#[utoipa::path(get, path = "/api/tenant/members", tag = "members",
    responses((status = 200, description = "The tenant's members (user id, email, display name, \
        tenant role: owner, admin or member), by email", body = [Member])))]
async fn list_tenant(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<Json<Vec<Member>>> {
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::as_member(&state, &tenant, &mut db).await?;
    let rows = sqlx::query_as(
        "SELECT m.user_id, u.email, u.display_name, m.role
         FROM app.tenant_memberships m JOIN app.users u ON u.id = m.user_id ORDER BY u.email",
    )
    .fetch_all(db.conn(decided)?)
    .await?;
    Ok(Json(rows))
}

/// Authorizes a change that touches the owner role, then the general right.
pub(crate) async fn authorize_role_change(
    state: &AppState,
    tenant: &Tenant,
    db: &mut DbGuard<'_>,
    roles: &[&str],
) -> AppResult<Decided> {
    let decided = authorize(
        state,
        tenant,
        db,
        Action::TenantManageUsers,
        Resource::Tenant(tenant.id),
    )
    .await?;
    if roles.contains(&"owner") {
        return authorize(
            state,
            tenant,
            db,
            Action::TenantManageOwners,
            Resource::Tenant(tenant.id),
        )
        .await;
    }
    Ok(decided)
}

/// Invites an address (the same as `POST /api/tenant/invitations`): the
/// membership exists once the person accepts.
#[utoipa::path(post, path = "/api/tenant/members", tag = "members",
    request_body = InviteRequest,
    responses((status = 202, description = "Invitation sent; the membership exists once it is \
        accepted", body = Invitation)))]
async fn add_tenant(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<InviteRequest>,
) -> AppResult<(StatusCode, Json<Invitation>)> {
    let mut db = db.lock().await?;
    invite(&state, &tenant, &mut db, body).await
}

async fn tenant_member(db: &mut DbGuard<'_>, decided: Decided, user: Uuid) -> AppResult<Member> {
    Ok(sqlx::query_as(
        "SELECT m.user_id, u.email, u.display_name, m.role
         FROM app.tenant_memberships m JOIN app.users u ON u.id = m.user_id WHERE m.user_id = $1",
    )
    .bind(user)
    .fetch_one(db.conn(decided)?)
    .await?)
}

async fn current_role(db: &mut DbGuard<'_>, decided: Decided, user: Uuid) -> AppResult<String> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT role FROM app.tenant_memberships WHERE user_id = $1 FOR UPDATE")
            .bind(user)
            .fetch_optional(db.conn(decided)?)
            .await?;
    row.map(|(r,)| r).ok_or(AppError::NotFound("Member"))
}

/// Refuses to leave the tenant without an owner.
async fn keep_an_owner(db: &mut DbGuard<'_>, decided: Decided, user: Uuid) -> AppResult<()> {
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM app.tenant_memberships WHERE role = 'owner' AND user_id <> $1 FOR UPDATE) o",
    )
    .bind(user)
    .fetch_one(db.conn(decided)?)
    .await?;
    if others == 0 {
        return Err(AppError::Conflict(
            "A tenant needs at least one owner".to_owned(),
        ));
    }
    Ok(())
}

/// A workspace admin may manage the workspace's members, but the tenant's
/// owners only if the caller may manage owners (an owner): a workspace
/// admin who is a plain member of the tenant cannot demote or remove them.
async fn spare_owners(
    state: &AppState,
    tenant: &Tenant,
    db: &mut DbGuard<'_>,
    decided: Decided,
    user: Uuid,
) -> AppResult<()> {
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM app.tenant_memberships WHERE user_id = $1")
            .bind(user)
            .fetch_optional(db.conn(decided)?)
            .await?;
    if role.as_deref() == Some("owner") && user != tenant.user_id {
        authorize_role_change(state, tenant, db, &["owner"]).await?;
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeRole {
    role: String,
}

#[utoipa::path(patch, path = "/api/tenant/members/{user_id}", tag = "members",
    params(("user_id" = Uuid, Path, description = "Member")),
    request_body(content = ChangeRole, description = "The new tenant role: owner, admin or member"),
    responses((status = 200, description = "Role changed", body = Member)))]
async fn change_tenant(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(user): AppPath<Uuid>,
    AppJson(body): AppJson<ChangeRole>,
) -> AppResult<Json<Member>> {
    let role = tenant_role(&body.role)?;
    let mut db = db.lock().await?;
    // Managing users at all first; then the roles involved, once known.
    let decided = authorize_role_change(&state, &tenant, &mut db, &[]).await?;
    let before = current_role(&mut db, decided, user).await?;
    let decided = authorize_role_change(&state, &tenant, &mut db, &[role, before.as_str()]).await?;
    if before == "owner" && role != "owner" {
        keep_an_owner(&mut db, decided, user).await?;
    }
    sqlx::query("UPDATE app.tenant_memberships SET role = $2 WHERE user_id = $1")
        .bind(user)
        .bind(role)
        .execute(db.conn(decided)?)
        .await?;
    let member = tenant_member(&mut db, decided, user).await?;
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "member.role_changed",
        Some(&member.email),
        json!({"user_id": user, "from": before, "to": role}),
    )
    .await?;
    Ok(Json(member))
}

#[utoipa::path(delete, path = "/api/tenant/members/{user_id}", tag = "members",
    params(("user_id" = Uuid, Path, description = "Member")),
    responses((status = 204,
        description = "Removed from the tenant; their WebSockets in it close")))]
async fn remove_tenant(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(user): AppPath<Uuid>,
) -> AppResult<StatusCode> {
    let mut db = db.lock().await?;
    // Managing users at all first; then the roles involved, once known.
    let decided = authorize_role_change(&state, &tenant, &mut db, &[]).await?;
    let before = current_role(&mut db, decided, user).await?;
    let decided = authorize_role_change(&state, &tenant, &mut db, &[before.as_str()]).await?;
    if before == "owner" {
        keep_an_owner(&mut db, decided, user).await?;
    }
    let removed = tenant_member(&mut db, decided, user).await?;
    sqlx::query("DELETE FROM app.tenant_memberships WHERE user_id = $1")
        .bind(user)
        .execute(db.conn(decided)?)
        .await?;
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "member.removed",
        Some(&removed.email),
        json!({"user_id": user, "role": before}),
    )
    .await?;
    // Their open WebSockets in this tenant close.
    crate::domain::messaging::hub::evict(&state, tenant.id, Some(user)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct WorkspaceMember {
    user_id: Uuid,
    email: String,
    role: String,
}

const WORKSPACE_MEMBER: &str = "SELECT w.user_id, u.email, w.role FROM app.workspace_members w JOIN app.users u ON u.id = w.user_id";

async fn workspace_member(
    db: &mut DbGuard<'_>,
    decided: Decided,
    workspace: Uuid,
    user: Uuid,
) -> AppResult<WorkspaceMember> {
    Ok(sqlx::query_as(&format!(
        "{WORKSPACE_MEMBER} WHERE w.workspace_id = $1 AND w.user_id = $2"
    ))
    .bind(workspace)
    .bind(user)
    .fetch_one(db.conn(decided)?)
    .await?)
}

#[utoipa::path(get, path = "/api/workspaces/{id}/members", tag = "members",
    params(("id" = Uuid, Path, description = "Workspace")),
    responses((status = 200, description = "The workspace's members (user id, email, workspace \
        role: admin, member or viewer), by email", body = [WorkspaceMember])))]
async fn list_workspace(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(workspace): AppPath<Uuid>,
) -> AppResult<Json<Vec<WorkspaceMember>>> {
    let mut db = db.lock().await?;
    let resource = workspace_resource(&mut db, &tenant, workspace).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::WorkspaceView, resource).await?;
    let rows = sqlx::query_as(&format!(
        "{WORKSPACE_MEMBER} WHERE w.workspace_id = $1 ORDER BY u.email"
    ))
    .bind(workspace)
    .fetch_all(db.conn(decided)?)
    .await?;
    Ok(Json(rows))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddWorkspaceMember {
    user_id: Uuid,
    role: String,
}

#[utoipa::path(post, path = "/api/workspaces/{id}/members", tag = "members",
    params(("id" = Uuid, Path, description = "Workspace")),
    request_body(content = AddWorkspaceMember,
        description = "A member of the tenant and a workspace role: admin, member or viewer"),
    responses((status = 201, description = "Added", body = WorkspaceMember)))]
async fn add_workspace(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(workspace): AppPath<Uuid>,
    AppJson(body): AppJson<AddWorkspaceMember>,
) -> AppResult<(StatusCode, Json<WorkspaceMember>)> {
    let role = workspace_role(&body.role)?;
    let mut db = db.lock().await?;
    let resource = workspace_resource(&mut db, &tenant, workspace).await?;
    let decided = authorize(
        &state,
        &tenant,
        &mut db,
        Action::WorkspaceManageMembers,
        resource,
    )
    .await?;
    // Only members of this tenant can join its workspaces (the key enforces it too).
    let member: Option<(Uuid,)> =
        sqlx::query_as("SELECT user_id FROM app.tenant_memberships WHERE user_id = $1")
            .bind(body.user_id)
            .fetch_optional(db.conn(decided)?)
            .await?;
    if member.is_none() {
        return Err(AppError::Validation(
            "user_id is not a member of this tenant".to_owned(),
        ));
    }
    let inserted = sqlx::query(
        "INSERT INTO app.workspace_members (workspace_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(workspace)
    .bind(body.user_id)
    .bind(role)
    .execute(db.conn(decided)?)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(AppError::Conflict(
            "Already a member of this workspace".to_owned(),
        ));
    }
    let row = workspace_member(&mut db, decided, workspace, body.user_id).await?;
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "workspace_member.added",
        Some(&row.email),
        json!({"workspace_id": workspace, "user_id": body.user_id, "role": role}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(row)))
}

#[utoipa::path(patch, path = "/api/workspaces/{id}/members/{user_id}", tag = "members",
    params(("id" = Uuid, Path, description = "Workspace"),
        ("user_id" = Uuid, Path, description = "Workspace member")),
    request_body(content = ChangeRole,
        description = "The new workspace role: admin, member or viewer"),
    responses((status = 200, description = "Role changed", body = WorkspaceMember)))]
async fn change_workspace(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath((workspace, user)): AppPath<(Uuid, Uuid)>,
    AppJson(body): AppJson<ChangeRole>,
) -> AppResult<Json<WorkspaceMember>> {
    let role = workspace_role(&body.role)?;
    let mut db = db.lock().await?;
    let resource = workspace_resource(&mut db, &tenant, workspace).await?;
    let decided = authorize(
        &state,
        &tenant,
        &mut db,
        Action::WorkspaceManageMembers,
        resource,
    )
    .await?;
    spare_owners(&state, &tenant, &mut db, decided, user).await?;
    let done = sqlx::query(
        "UPDATE app.workspace_members SET role = $3 WHERE workspace_id = $1 AND user_id = $2",
    )
    .bind(workspace)
    .bind(user)
    .bind(role)
    .execute(db.conn(decided)?)
    .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::NotFound("Workspace member"));
    }
    let row = workspace_member(&mut db, decided, workspace, user).await?;
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "workspace_member.role_changed",
        Some(&row.email),
        json!({"workspace_id": workspace, "user_id": user, "role": role}),
    )
    .await?;
    Ok(Json(row))
}

#[utoipa::path(delete, path = "/api/workspaces/{id}/members/{user_id}", tag = "members",
    params(("id" = Uuid, Path, description = "Workspace"),
        ("user_id" = Uuid, Path, description = "Workspace member")),
    responses((status = 204, description = "Removed from the workspace")))]
async fn remove_workspace(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath((workspace, user)): AppPath<(Uuid, Uuid)>,
) -> AppResult<StatusCode> {
    let mut db = db.lock().await?;
    let resource = workspace_resource(&mut db, &tenant, workspace).await?;
    let decided = authorize(
        &state,
        &tenant,
        &mut db,
        Action::WorkspaceManageMembers,
        resource,
    )
    .await?;
    spare_owners(&state, &tenant, &mut db, decided, user).await?;
    let done =
        sqlx::query("DELETE FROM app.workspace_members WHERE workspace_id = $1 AND user_id = $2")
            .bind(workspace)
            .bind(user)
            .execute(db.conn(decided)?)
            .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::NotFound("Workspace member"));
    }
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "workspace_member.removed",
        None,
        json!({"workspace_id": workspace, "user_id": user}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
