//! Workspaces of the current tenant. Queries carry no tenant filter: the
//! request's transaction has the tenant context and RLS does the rest.

use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa_axum::routes;
use uuid::Uuid;

use axum::extract::State;

use crate::domain::authz::{Action, Resource};
use crate::error::{AppError, AppResult};
use crate::http::extract::{AppJson, AppPath};
use crate::http::routes::Routes;
use crate::http::routes::{allowed, authorize, delete_row, valid_name, workspace_resource};
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Workspace {
    id: Uuid,
    name: String,
    archived_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, archived_at, created_at";

/// The workspaces of the tenant the caller may view.
#[utoipa::path(get, path = "/api/workspaces", tag = "workspaces",
    responses((status = 200, description = "The workspaces the caller may view, oldest first",
        body = [Workspace])))]
async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<Json<Vec<Workspace>>> {
    let mut db = db.lock().await?;
    // Any member lists; each workspace is shown if it may be viewed.
    let decided = crate::http::tenant::decide::as_member(&state, &tenant, &mut db).await?;
    let rows: Vec<Workspace> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM app.workspaces ORDER BY created_at, id"
    ))
    .fetch_all(db.conn(decided)?)
    .await?;
    let visible = rows
        .into_iter()
        .filter(|w| {
            allowed(
                &state,
                &tenant,
                Action::WorkspaceView,
                &Resource::Workspace {
                    id: w.id,
                    tenant: tenant.id,
                },
            )
        })
        .collect();
    Ok(Json(visible))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWorkspace {
    name: String,
}

#[utoipa::path(post, path = "/api/workspaces", tag = "workspaces",
    request_body = CreateWorkspace,
    responses((status = 201, description = "Created; the caller administers it",
        body = Workspace)))]
async fn create(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<CreateWorkspace>,
) -> AppResult<(StatusCode, Json<Workspace>)> {
    let name = valid_name("name", &body.name, 200)?;
    let mut db = db.lock().await?;
    let decided = authorize(
        &state,
        &tenant,
        &mut db,
        Action::WorkspaceCreate,
        Resource::Tenant(tenant.id),
    )
    .await?;
    let workspace: Workspace = sqlx::query_as(&format!(
        "INSERT INTO app.workspaces (name, created_by) VALUES ($1, $2) RETURNING {COLUMNS}"
    ))
    .bind(name)
    .bind(tenant.user_id)
    .fetch_one(db.conn(decided)?)
    .await?;
    // The creator administers the new workspace.
    sqlx::query(
        "INSERT INTO app.workspace_members (workspace_id, user_id, role) VALUES ($1, $2, 'admin')",
    )
    .bind(workspace.id)
    .bind(tenant.user_id)
    .execute(db.conn(decided)?)
    .await?;
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "workspace.created",
        Some(&workspace.id.to_string()),
        json!({"name": name}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(workspace)))
}

#[utoipa::path(get, path = "/api/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path, description = "Workspace")),
    responses((status = 200, description = "The workspace", body = Workspace)))]
async fn read(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<Json<Workspace>> {
    let mut db = db.lock().await?;
    let resource = workspace_resource(&mut db, &tenant, id).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::WorkspaceView, resource).await?;
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM app.workspaces WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.conn(decided)?)
    .await?
    .map(Json)
    .ok_or(AppError::NotFound("Workspace"))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateWorkspace {
    name: Option<String>,
    archived: Option<bool>,
}

#[utoipa::path(patch, path = "/api/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path, description = "Workspace")),
    request_body(content = UpdateWorkspace,
        description = "A new name and/or `archived` (true archives, false unarchives)"),
    responses((status = 200, description = "Updated", body = Workspace)))]
async fn update(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<UpdateWorkspace>,
) -> AppResult<Json<Workspace>> {
    if body.name.is_none() && body.archived.is_none() {
        return Err(AppError::Validation(
            "nothing to update: give name and/or archived".to_owned(),
        ));
    }
    let name = body
        .name
        .as_deref()
        .map(|n| valid_name("name", n, 200))
        .transpose()?;
    let mut db = db.lock().await?;
    let resource = workspace_resource(&mut db, &tenant, id).await?;
    let mut decided = None;
    if name.is_some() {
        decided =
            Some(authorize(&state, &tenant, &mut db, Action::WorkspaceUpdate, resource).await?);
    }
    if body.archived.is_some() {
        decided =
            Some(authorize(&state, &tenant, &mut db, Action::WorkspaceArchive, resource).await?);
    }
    let decided = decided.ok_or_else(|| {
        AppError::Validation("nothing to update: give name and/or archived".to_owned())
    })?;
    let workspace: Workspace = sqlx::query_as(&format!(
        "UPDATE app.workspaces SET name = coalesce($2, name),
             archived_at = CASE WHEN $3 IS NULL THEN archived_at WHEN $3 THEN coalesce(archived_at, now()) END,
             updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(name)
    .bind(body.archived)
    .fetch_optional(db.conn(decided)?)
    .await?
    .ok_or(AppError::NotFound("Workspace"))?;
    let action = match body.archived {
        Some(true) => "workspace.archived",
        Some(false) => "workspace.unarchived",
        None => "workspace.renamed",
    };
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        action,
        Some(&id.to_string()),
        json!({"name": name}),
    )
    .await?;
    Ok(Json(workspace))
}

#[utoipa::path(delete, path = "/api/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path, description = "Workspace")),
    responses((status = 204, description = "Deleted, with its boards and tasks")))]
async fn remove(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<StatusCode> {
    let mut db = db.lock().await?;
    let resource = workspace_resource(&mut db, &tenant, id).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::WorkspaceDelete, resource).await?;
    let deleted = delete_row(&mut db, decided, "app.workspaces", id, "Workspace").await?;
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "workspace.deleted",
        Some(&id.to_string()),
        json!({}),
    )
    .await?;
    Ok(deleted)
}
