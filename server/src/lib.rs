//! tenancy-server: the HTTP service in front of the tenancy extension.
//!
//! Request path, one layer per job (see `app`): authenticate the bearer
//! token, resolve the tenant, open a transaction with the signed tenant
//! context, run the handler. Isolation is the database's job: handlers never
//! filter by tenant themselves.

pub mod auth;
pub mod authz;
pub mod config;
pub mod error;
pub mod extract;
pub mod ops;
pub mod routes;
pub mod state;
pub mod tenant;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::Router;
use tower_http::trace::TraceLayer;

pub use config::Config;
pub use state::AppState;

/// The whole HTTP application; tests serve it on port 0.
pub fn app(state: AppState) -> Router {
    let tenant_scoped = Router::new()
        .merge(routes::tenant::router())
        .merge(routes::workspaces::router())
        .merge(routes::members::router())
        .merge(routes::boards::router())
        .merge(routes::tasks::router())
        .route_layer(from_fn_with_state(state.clone(), tenant::tenant_scope));
    let authenticated = Router::new()
        .merge(routes::auth::authenticated_router())
        .merge(tenant_scoped)
        .route_layer(from_fn_with_state(state.clone(), auth::authenticate));
    Router::new()
        .merge(routes::health::router())
        .merge(routes::auth::public_router())
        .merge(authenticated)
        .fallback(|| async { error::AppError::NotFound("Route") })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until SIGINT or SIGTERM, then drains in-flight requests.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
