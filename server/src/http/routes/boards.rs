//! Boards, inside workspaces of the current tenant.

use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;
use uuid::Uuid;

use axum::extract::State;

use crate::domain::authz::Action;
use crate::error::{AppError, AppResult};
use crate::http::extract::{AppJson, AppPath};
use crate::http::routes::Routes;
use crate::http::routes::{authorize, board_resource, delete_row, valid_name, workspace_resource};
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Board {
    id: Uuid,
    workspace_id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, workspace_id, name, created_at";

#[utoipa::path(get, path = "/api/workspaces/{id}/boards", tag = "boards",
    params(("id" = Uuid, Path, description = "Workspace")),
    responses((status = 200, description = "The workspace's boards, oldest first", body = [Board])))]
async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(workspace): AppPath<Uuid>,
) -> AppResult<Json<Vec<Board>>> {
    let mut db = db.lock().await?;
    let resource = workspace_resource(&mut db, &tenant, workspace).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::WorkspaceView, resource).await?;
    let rows = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM app.boards WHERE workspace_id = $1 ORDER BY created_at, id"
    ))
    .bind(workspace)
    .fetch_all(db.conn(decided)?)
    .await?;
    Ok(Json(rows))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BoardBody {
    name: String,
}

#[utoipa::path(post, path = "/api/workspaces/{id}/boards", tag = "boards",
    params(("id" = Uuid, Path, description = "Workspace")),
    request_body = BoardBody,
    responses((status = 201, description = "Created", body = Board)))]
async fn create(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(workspace): AppPath<Uuid>,
    AppJson(body): AppJson<BoardBody>,
) -> AppResult<(StatusCode, Json<Board>)> {
    let name = valid_name("name", &body.name, 200)?;
    let mut db = db.lock().await?;
    let resource = workspace_resource(&mut db, &tenant, workspace).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::BoardCreate, resource).await?;
    let board = sqlx::query_as(&format!(
        "INSERT INTO app.boards (workspace_id, name) VALUES ($1, $2) RETURNING {COLUMNS}"
    ))
    .bind(workspace)
    .bind(name)
    .fetch_one(db.conn(decided)?)
    .await?;
    Ok((StatusCode::CREATED, Json(board)))
}

#[utoipa::path(get, path = "/api/boards/{id}", tag = "boards",
    params(("id" = Uuid, Path, description = "Board")),
    responses((status = 200, body = Board)))]
async fn read(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<Json<Board>> {
    let mut db = db.lock().await?;
    let resource = board_resource(&mut db, &tenant, id).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::BoardView, resource).await?;
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM app.boards WHERE id = $1"))
        .bind(id)
        .fetch_optional(db.conn(decided)?)
        .await?
        .map(Json)
        .ok_or(AppError::NotFound("Board"))
}

#[utoipa::path(patch, path = "/api/boards/{id}", tag = "boards",
    params(("id" = Uuid, Path, description = "Board")),
    request_body = BoardBody,
    responses((status = 200, description = "Renamed", body = Board)))]
async fn update(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<BoardBody>,
) -> AppResult<Json<Board>> {
    let name = valid_name("name", &body.name, 200)?;
    let mut db = db.lock().await?;
    let resource = board_resource(&mut db, &tenant, id).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::BoardUpdate, resource).await?;
    sqlx::query_as(&format!(
        "UPDATE app.boards SET name = $2 WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(name)
    .fetch_optional(db.conn(decided)?)
    .await?
    .map(Json)
    .ok_or(AppError::NotFound("Board"))
}

#[utoipa::path(delete, path = "/api/boards/{id}", tag = "boards",
    params(("id" = Uuid, Path, description = "Board")),
    responses((status = 204, description = "Deleted, with its tasks")))]
async fn remove(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<StatusCode> {
    let mut db = db.lock().await?;
    let resource = board_resource(&mut db, &tenant, id).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::BoardDelete, resource).await?;
    delete_row(&mut db, decided, "app.boards", id, "Board").await
}
