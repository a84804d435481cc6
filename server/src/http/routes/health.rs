//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::routes;

use crate::error::AppError;
use crate::http::routes::Routes;
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The Prometheus exposition, for a bearer of `TENANCY_METRICS_TOKEN`
/// (404 when none is configured).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("metrics" = [])),
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), AppError> {
    let Some(expected) = state.config.metrics_token.as_deref() else {
        return Err(AppError::NotFound("Route"));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared as digests: the time taken says nothing about the token.
    if tenancy_token::digest(given) != tenancy_token::digest(expected) {
        return Err(AppError::Unauthorized("Missing or invalid metrics token"));
    }
    crate::metrics::with(|m| {
        let size = i64::from(state.db.size());
        let idle = state.db.num_idle() as i64;
        m.pool.with_label_values(&["in_use"]).set(size - idle);
        m.pool.with_label_values(&["idle"]).set(idle);
        m.websockets.set(state.hub.sockets() as i64);
    });
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    ))
}

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "The process is up")))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready only when PostgreSQL and Redis both answer.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "PostgreSQL and Redis answer"),
        (status = 503, description = "One of them does not")))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let postgres = sqlx::query("SELECT 1").execute(&state.db).await.is_ok();
    let mut redis = state.redis.clone();
    let redis_ok = redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .is_ok();
    let status = if postgres && redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "up" } else { "down" };
    (
        status,
        Json(json!({"postgres": word(postgres), "redis": word(redis_ok)})),
    )
}
