//! The tenant's data key, for its owners (`tenant:rotateKeys`; seed 002,
//! REQ-MT-B009):
//!
//! - `GET /api/tenant/data-key`: the key versions (never the keys) and how
//!   far a rotation has come;
//! - `POST /api/tenant/data-key/rotate`: a new version seals everything
//!   from now on; values sealed under older versions are resealed in the
//!   background (`jobs::keys`), still readable meanwhile, and a retired
//!   version is destroyed once nothing is sealed under it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use utoipa_axum::routes;

use crate::domain::authz::Action;
use crate::error::{AppError, AppResult};
use crate::http::routes::Routes;
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(status))
        .routes(routes!(rotate))
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct Version {
    version: i32,
    created_at: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
    destroyed_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct KeyStatus {
    /// The version new values are sealed under (null before the first).
    current: Option<i32>,
    /// Values still sealed under an older version (0: no rotation running).
    resealing: i64,
    /// Values sealed in all.
    sealed: i64,
    versions: Vec<Version>,
}

async fn read_status(conn: &mut sqlx::PgConnection) -> AppResult<KeyStatus> {
    let versions: Vec<Version> = sqlx::query_as(
        "SELECT version, created_at, retired_at, destroyed_at FROM app.tenant_keys ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?;
    let current = versions.last().map(|v| v.version);
    let (sealed, resealing): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE key_version < $1)
         FROM (SELECT key_version FROM app.tenant_integrations
               UNION ALL
               SELECT key_version FROM app.invitations WHERE key_version IS NOT NULL) sealed",
    )
    .bind(current.unwrap_or(0))
    .fetch_one(&mut *conn)
    .await?;
    Ok(KeyStatus {
        current,
        resealing,
        sealed,
        versions,
    })
}

#[utoipa::path(get, path = "/api/tenant/data-key", tag = "integrations",
    responses((status = 200, description = "The data key's versions and the rotation's progress",
        body = KeyStatus)))]
async fn status(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<Json<KeyStatus>> {
    let mut db = db.lock().await?;
    let decided =
        crate::http::tenant::decide::on_tenant(&state, &tenant, &mut db, Action::TenantRotateKeys)
            .await?;
    Ok(Json(read_status(db.conn(decided)?).await?))
}

#[utoipa::path(post, path = "/api/tenant/data-key/rotate", tag = "integrations",
    responses((status = 202, description = "A new version is current; older values are being \
        resealed", body = KeyStatus),
        (status = 409, description = "Another rotation started at the same moment")))]
async fn rotate(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<(StatusCode, Json<KeyStatus>)> {
    let mut db = db.lock().await?;
    let decided =
        crate::http::tenant::decide::on_tenant(&state, &tenant, &mut db, Action::TenantRotateKeys)
            .await?;
    let conn = db.conn(decided)?;
    // The first version, if the tenant has none yet.
    let current = state.keyring.current_key(conn, tenant.id).await?.version();
    let next = current + 1;
    let (_, bytes) = crate::domain::keyring::DataKey::generate(tenant.id, next);
    let wrapped = state.keyring.current.wrap(tenant.id, next, &bytes)?;
    let made: bool = sqlx::query_scalar("SELECT app.rotate_tenant_key($1, $2, $3)")
        .bind(next)
        .bind(&wrapped)
        .bind(state.keyring.current.id())
        .fetch_one(&mut *conn)
        .await?;
    if !made {
        return Err(AppError::Conflict(
            "Another rotation of this tenant's data key started at the same moment".to_owned(),
        ));
    }
    crate::domain::audit::record(
        &mut *conn,
        tenant.id,
        tenant.user_id,
        "data_key.rotated",
        None,
        json!({ "from_version": current, "to_version": next }),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(read_status(conn).await?)))
}
