//! Tasks, on boards of the current tenant.

use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;
use uuid::Uuid;

use axum::extract::State;

use crate::domain::authz::Action;
use crate::error::{AppError, AppResult};
use crate::http::extract::{AppJson, AppPath, AppQuery};
use crate::http::routes::Routes;
use crate::http::routes::{authorize, board_resource, delete_row, task_resource, valid_name};
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Task {
    id: Uuid,
    board_id: Uuid,
    title: String,
    description: String,
    status: String,
    assignee_id: Option<Uuid>,
    created_by: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, board_id, title, description, status, assignee_id, created_by, created_at, updated_at";
const STATUSES: [&str; 3] = ["todo", "doing", "done"];

fn valid_status(status: Option<&str>) -> AppResult<Option<&str>> {
    match status {
        Some(s) if !STATUSES.contains(&s) => Err(AppError::Validation(format!(
            "status must be one of todo, doing, done; got {s:?}"
        ))),
        other => Ok(other),
    }
}

fn valid_description(description: Option<&str>) -> AppResult<Option<&str>> {
    match description {
        Some(d) if d.chars().count() > 10_000 => Err(AppError::Validation(
            "description must be at most 10000 characters".to_owned(),
        )),
        other => Ok(other),
    }
}

/// The assignee must be a member of this tenant (visible through RLS).
async fn valid_assignee(conn: &mut sqlx::PgConnection, assignee: Option<Uuid>) -> AppResult<()> {
    if let Some(user) = assignee {
        let member: Option<(Uuid,)> =
            sqlx::query_as("SELECT user_id FROM app.tenant_memberships WHERE user_id = $1")
                .bind(user)
                .fetch_optional(conn)
                .await?;
        if member.is_none() {
            return Err(AppError::Validation(
                "assignee_id is not a member of this tenant".to_owned(),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListTasks {
    /// At most this many (1 to 500, default 100): no request does unbounded work.
    limit: Option<i64>,
    /// Only tasks after this one (a cursor: the last id of the previous page).
    after: Option<Uuid>,
}

#[utoipa::path(get, path = "/api/boards/{id}/tasks", tag = "tasks",
    params(("id" = Uuid, Path, description = "Board"), ListTasks),
    responses((status = 200, description = "A page of the board's tasks, oldest first",
        body = [Task])))]
async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(board): AppPath<Uuid>,
    AppQuery(query): AppQuery<ListTasks>,
) -> AppResult<Json<Vec<Task>>> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(AppError::Validation(
            "limit must be between 1 and 500".to_owned(),
        ));
    }
    let mut db = db.lock().await?;
    let resource = board_resource(&mut db, &tenant, board).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::BoardView, resource).await?;
    let after = match query.after {
        None => None,
        Some(id) => Some(
            sqlx::query_as::<_, (DateTime<Utc>, Uuid)>(
                "SELECT created_at, id FROM app.tasks WHERE id = $1 AND board_id = $2",
            )
            .bind(id)
            .bind(board)
            .fetch_optional(db.conn(decided)?)
            .await?
            .ok_or_else(|| AppError::Validation("after must be a task of this board".to_owned()))?,
        ),
    };
    let rows = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM app.tasks
         WHERE board_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
         ORDER BY created_at, id LIMIT $4"
    ))
    .bind(board)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(db.conn(decided)?)
    .await?;
    Ok(Json(rows))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTask {
    title: String,
    description: Option<String>,
    status: Option<String>,
    assignee_id: Option<Uuid>,
}

#[utoipa::path(post, path = "/api/boards/{id}/tasks", tag = "tasks",
    params(("id" = Uuid, Path, description = "Board")),
    request_body(content = CreateTask,
        description = "`status` is todo (default), doing or done; the assignee must be a member \
            of the tenant"),
    responses((status = 201, description = "Created", body = Task)))]
async fn create(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(board): AppPath<Uuid>,
    AppJson(body): AppJson<CreateTask>,
) -> AppResult<(StatusCode, Json<Task>)> {
    let title = valid_name("title", &body.title, 500)?;
    let status = valid_status(body.status.as_deref())?.unwrap_or("todo");
    let description = valid_description(body.description.as_deref())?.unwrap_or("");
    let mut db = db.lock().await?;
    let resource = board_resource(&mut db, &tenant, board).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::TaskCreate, resource).await?;
    valid_assignee(db.conn(decided)?, body.assignee_id).await?;
    let task = sqlx::query_as(&format!(
        "INSERT INTO app.tasks (board_id, title, description, status, assignee_id, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    ))
    .bind(board)
    .bind(title)
    .bind(description)
    .bind(status)
    .bind(body.assignee_id)
    .bind(tenant.user_id)
    .fetch_one(db.conn(decided)?)
    .await?;
    Ok((StatusCode::CREATED, Json(task)))
}

#[utoipa::path(get, path = "/api/tasks/{id}", tag = "tasks",
    params(("id" = Uuid, Path, description = "Task")),
    responses((status = 200, description = "The task", body = Task)))]
async fn read(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<Json<Task>> {
    let mut db = db.lock().await?;
    let resource = task_resource(&mut db, &tenant, id).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::TaskView, resource).await?;
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM app.tasks WHERE id = $1"))
        .bind(id)
        .fetch_optional(db.conn(decided)?)
        .await?
        .map(Json)
        .ok_or(AppError::NotFound("Task"))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateTask {
    title: Option<String>,
    description: Option<String>,
    status: Option<String>,
    /// Absent: unchanged; `null`: unassigned; an id: assigned.
    #[serde(default, deserialize_with = "crate::http::routes::present")]
    #[schema(value_type = Option<Uuid>)]
    assignee_id: Option<Option<Uuid>>,
}

#[utoipa::path(patch, path = "/api/tasks/{id}", tag = "tasks",
    params(("id" = Uuid, Path, description = "Task")),
    request_body(content = UpdateTask,
        description = "At least one field; absent fields are unchanged"),
    responses((status = 200, description = "Updated", body = Task)))]
async fn update(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<UpdateTask>,
) -> AppResult<Json<Task>> {
    if body.title.is_none()
        && body.description.is_none()
        && body.status.is_none()
        && body.assignee_id.is_none()
    {
        return Err(AppError::Validation(
            "nothing to update: give title, description, status and/or assignee_id".to_owned(),
        ));
    }
    let title = body
        .title
        .as_deref()
        .map(|t| valid_name("title", t, 500))
        .transpose()?;
    let status = valid_status(body.status.as_deref())?;
    let description = valid_description(body.description.as_deref())?;
    let mut db = db.lock().await?;
    let resource = task_resource(&mut db, &tenant, id).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::TaskUpdate, resource).await?;
    valid_assignee(db.conn(decided)?, body.assignee_id.flatten()).await?;
    sqlx::query_as(&format!(
        "UPDATE app.tasks SET title = coalesce($2, title), description = coalesce($3, description),
             status = coalesce($4, status),
             assignee_id = CASE WHEN $6 THEN $5 ELSE assignee_id END, updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(title)
    .bind(description)
    .bind(status)
    .bind(body.assignee_id.flatten())
    .bind(body.assignee_id.is_some())
    .fetch_optional(db.conn(decided)?)
    .await?
    .map(Json)
    .ok_or(AppError::NotFound("Task"))
}

#[utoipa::path(delete, path = "/api/tasks/{id}", tag = "tasks",
    params(("id" = Uuid, Path, description = "Task")),
    responses((status = 204, description = "Deleted")))]
async fn remove(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<StatusCode> {
    let mut db = db.lock().await?;
    let resource = task_resource(&mut db, &tenant, id).await?;
    let decided = authorize(&state, &tenant, &mut db, Action::TaskDelete, resource).await?;
    delete_row(&mut db, decided, "app.tasks", id, "Task").await
}
