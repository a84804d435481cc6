//! Exports of all of a tenant's data (seed 002, REQ-MT-B008), for its
//! owners and admins (`tenant:exportData`):
//!
//! - `POST /api/tenant/exports` `{"format": "json" | "csv"}`: 202, queued;
//!   409 while another export of the tenant is queued or running;
//! - `GET /api/tenant/exports`, `GET /api/tenant/exports/{id}`: status and
//!   progress (tables and rows done);
//! - `GET /exports/download?token=...` (no bearer: the link mailed to the
//!   requester): the zip archive, a bounded number of times, until the link
//!   expires.
//!
//! Requested, completed and downloaded are in the tenant's audit trail. The
//! job that builds them is `jobs::export`.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::authz::Action;
use crate::error::{AppError, AppResult};
use crate::http::extract::{AppJson, AppPath};
use crate::http::limits::ClientAddress;
use crate::http::routes::Routes;
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(list, request))
        .routes(routes!(show))
}

pub fn public_router() -> Routes {
    Routes::default().routes(routes!(download))
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct ExportView {
    id: Uuid,
    /// `json` (one NDJSON file per table) or `csv` (one CSV file per table).
    format: String,
    /// `queued`, `running`, `done` or `failed`.
    status: String,
    tables_total: i32,
    tables_done: i32,
    rows_done: i64,
    /// Size of the archive, once done.
    bytes: i64,
    failure: Option<String>,
    requested_by: Uuid,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    /// When the download link stops working.
    expires_at: Option<DateTime<Utc>>,
    downloads: i32,
    max_downloads: i32,
}

const VIEW: &str =
    "SELECT id, format, status, tables_total, tables_done, rows_done, bytes, failure,
    requested_by, created_at, started_at, finished_at, expires_at, downloads, max_downloads
    FROM app.exports";

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    /// `json` (default) or `csv`.
    #[serde(default)]
    format: Option<String>,
}

#[utoipa::path(post, path = "/api/tenant/exports", tag = "exports",
    request_body = ExportRequest,
    responses((status = 202, description = "Queued: the archive is built in the background and a \
        download link is mailed to the requester", body = ExportView),
        (status = 409, description = "Another export of this tenant is queued or running")))]
async fn request(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<ExportRequest>,
) -> AppResult<(StatusCode, Json<ExportView>)> {
    let format = body.format.unwrap_or_else(|| "json".to_owned());
    if format != "json" && format != "csv" {
        return Err(AppError::Validation(
            "format must be json or csv".to_owned(),
        ));
    }
    let mut db = db.lock().await?;
    let decided =
        crate::http::tenant::decide::on_tenant(&state, &tenant, &mut db, Action::TenantExportData)
            .await?;
    let conn = db.conn(decided)?;
    let export: Option<ExportView> = sqlx::query_as(&format!(
        "WITH made AS (INSERT INTO app.exports (requested_by, format) VALUES ($1, $2)
                       ON CONFLICT (tenant_id) WHERE status IN ('queued', 'running') DO NOTHING
                       RETURNING *)
         {} ",
        VIEW.replace("FROM app.exports", "FROM made")
    ))
    .bind(tenant.user_id)
    .bind(&format)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(export) = export else {
        return Err(AppError::Conflict(
            "An export of this tenant is already queued or running".to_owned(),
        ));
    };
    crate::domain::audit::record(
        conn,
        tenant.id,
        tenant.user_id,
        "export.requested",
        Some(&export.id.to_string()),
        json!({"format": format}),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(export)))
}

#[utoipa::path(get, path = "/api/tenant/exports", tag = "exports",
    responses((status = 200, description = "`exports`: the tenant's last 20 exports, newest first",
        body = serde_json::Value)))]
async fn list(State(state): State<AppState>, tenant: Tenant, db: Db) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    let decided =
        crate::http::tenant::decide::on_tenant(&state, &tenant, &mut db, Action::TenantExportData)
            .await?;
    let exports: Vec<ExportView> =
        sqlx::query_as(&format!("{VIEW} ORDER BY created_at DESC LIMIT 20"))
            .fetch_all(db.conn(decided)?)
            .await?;
    Ok(Json(json!({ "exports": exports })))
}

#[utoipa::path(get, path = "/api/tenant/exports/{id}", tag = "exports",
    params(("id" = Uuid, Path, description = "An export of the tenant")),
    responses((status = 200, description = "The export's status and progress", body = ExportView)))]
async fn show(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<Json<ExportView>> {
    let mut db = db.lock().await?;
    let decided =
        crate::http::tenant::decide::on_tenant(&state, &tenant, &mut db, Action::TenantExportData)
            .await?;
    let export: Option<ExportView> = sqlx::query_as(&format!("{VIEW} WHERE id = $1"))
        .bind(id)
        .fetch_optional(db.conn(decided)?)
        .await?;
    export.map(Json).ok_or(AppError::NotFound("Export"))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct DownloadQuery {
    /// The secret of the mailed link.
    token: Option<String>,
}

#[utoipa::path(get, path = "/exports/download", tag = "exports", security(()),
    params(DownloadQuery),
    responses((status = 200, description = "The archive (application/zip)"),
        (status = 404, description = "`Export not found`: the link is unknown, expired or used up")))]
async fn download(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Query(query): Query<DownloadQuery>,
) -> AppResult<Response> {
    let token = query.token.unwrap_or_default();
    if !crate::domain::sessions::is_secret(&token) {
        return Err(AppError::NotFound("Export"));
    }
    let digest = tenancy_token::digest(&token);
    let found: Option<(Uuid, Uuid, i32)> = {
        let mut tx = state.admin_db.begin().await?;
        let found = sqlx::query_as("SELECT tenant_id, id, downloads FROM app.export_download($1)")
            .bind(&digest[..])
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        found
    };
    let Some((tenant, export, downloads)) = found else {
        return Err(AppError::NotFound("Export"));
    };
    {
        let mut tx = state.db.begin().await?;
        crate::domain::context::enter(&mut tx, &state.keys, tenant, Uuid::nil()).await?;
        crate::domain::audit::record(
            &mut tx,
            tenant,
            Uuid::nil(),
            "export.downloaded",
            Some(&export.to_string()),
            json!({"download": downloads, "address": address}),
        )
        .await?;
        tx.commit().await?;
    }
    // The archive goes out chunk by chunk, one read at a time: a large
    // export is never held in memory.
    let mut tx = state.db.begin().await?;
    crate::domain::context::enter(&mut tx, &state.keys, tenant, Uuid::nil()).await?;
    let chunks = futures_util::stream::unfold(Some((tx, 0i32)), move |next| async move {
        let (mut tx, seq) = next?;
        let chunk: Result<Option<Vec<u8>>, sqlx::Error> = sqlx::query_scalar(
            "SELECT data FROM app.export_chunks WHERE export_id = $1 AND seq = $2",
        )
        .bind(export)
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await;
        match chunk {
            Ok(Some(data)) => Some((Ok::<_, std::io::Error>(data), Some((tx, seq + 1)))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"export-{export}.zip\""),
            ),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}
