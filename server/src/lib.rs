//! tenancy-server: the HTTP service in front of the tenancy extension.
//!
//! Request path, one layer per job (see `app`): authenticate the bearer
//! token, resolve the tenant, open a transaction with the signed tenant
//! context, run the handler. Isolation is the database's job: handlers never
//! filter by tenant themselves.

pub mod audit;
pub mod auth;
pub mod authz;
pub mod config;
pub mod error;
pub mod extract;
pub mod mail;
pub mod messaging;
pub mod ops;
pub mod provision;
pub mod routes;
pub mod state;
pub mod tenant;
pub mod tenant_config;

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
        .merge(routes::chat::router())
        .merge(routes::config::router())
        .merge(routes::audit::router())
        .route_layer(from_fn_with_state(state.clone(), tenant::tenant_scope));
    let authenticated = Router::new()
        .merge(routes::auth::authenticated_router())
        .merge(routes::admin::router())
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

/// Serves until SIGINT or SIGTERM, then drains in-flight requests. Runs
/// beside it the WebSocket fan-out and session checks and, unless
/// disabled, the outbox relay.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut background = tokio::task::JoinSet::new();
    background.spawn(
        state
            .hub
            .clone()
            .run_fanout(state.config.stream_redis_url().to_owned(), stopped.clone()),
    );
    background.spawn(state.hub.clone().run_session_checks(
        state.redis.clone(),
        std::time::Duration::from_secs(state.config.ws_session_check_secs.max(1)),
        stopped.clone(),
    ));
    if state.config.relay {
        let mailer = mail::Mailer::from_config(&state.config)
            .map_err(|e| std::io::Error::other(format!("mail: {e}")))?;
        background.spawn(mail::run(
            state.admin_db.clone(),
            mailer,
            std::time::Duration::from_secs(1),
            stopped.clone(),
        ));
        if state.config.audit_purge_secs > 0 {
            background.spawn(audit::run_purge(
                state.clone(),
                std::time::Duration::from_secs(state.config.audit_purge_secs),
                stopped.clone(),
            ));
        }
        match messaging::relay::Relay::connect(&state.config).await {
            Ok(relay) => {
                background.spawn(relay.run(stopped.clone()));
            }
            Err(e) => {
                return Err(std::io::Error::other(format!(
                    "cannot start the outbox relay: {e:?}"
                )))
            }
        }
    }
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    let _ = stop.send(true);
    background.join_all().await;
    served
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
