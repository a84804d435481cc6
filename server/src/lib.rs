//! tenancy-server: the HTTP service in front of the tenancy extension.
//!
//! Request path, one layer per job (see `app`): authenticate the bearer
//! token, resolve the tenant, open a transaction with the signed tenant
//! context, decide, run the handler. Isolation is the database's job:
//! handlers never filter by tenant themselves.
//!
//! - [`http`]: the request path (authentication, tenant resolution and its
//!   transaction, the decision a handler needs for a database handle,
//!   limits, extraction, the routes and their OpenAPI document);
//! - [`domain`]: what the routes and jobs share (authorization, the tenant
//!   context, the audit trail, passwords, provisioning, configuration,
//!   mail texts, message streams);
//! - [`jobs`]: work outside the request path (outbox relays, the message
//!   worker, mail delivery, audit retention, the command line's operations);
//! - [`error`]: the one error type, mapped to a status and `{error, code}`
//!   in one place (database errors by SQLSTATE).

pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod state;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::Router;
use tower_http::trace::TraceLayer;

pub use config::Config;
pub use state::AppState;

/// The routes of the service by the layers they pass: public, signed in
/// (`authenticate`), and tenant-scoped (`authenticate`, then `tenant_scope`).
struct Table {
    public: http::routes::Routes,
    authenticated: http::routes::Routes,
    tenant_scoped: http::routes::Routes,
}

fn table() -> Table {
    use http::routes::*;
    Table {
        public: Routes::default()
            .merge(health::router())
            .merge(auth::public_router())
            .merge(invitations::public_router())
            .merge(passwords::public_router())
            .merge(signup::public_router())
            .merge(exports::public_router()),
        authenticated: Routes::default()
            .merge(auth::authenticated_router())
            .merge(passwords::authenticated_router())
            .merge(deletion::authenticated_router())
            .merge(admin::router()),
        tenant_scoped: Routes::default()
            .merge(tenant::router())
            .merge(workspaces::router())
            .merge(members::router())
            .merge(invitations::router())
            .merge(domains::router())
            .merge(integrations::router())
            .merge(data_keys::router())
            .merge(exports::router())
            .merge(boards::router())
            .merge(tasks::router())
            .merge(chat::router())
            .merge(config::router())
            .merge(audit::router()),
    }
}

/// Every route path the service serves (axum's syntax: `/api/boards/{id}`).
pub fn route_paths() -> Vec<String> {
    let table = table();
    [table.public, table.authenticated, table.tenant_scoped]
        .iter()
        .flat_map(|routes| routes.paths().iter().cloned())
        .collect()
}

/// The service's OpenAPI 3.1 document, made from the handlers' own
/// annotations (served at `/openapi.json`, browsable at `/docs`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    Parts::new().doc
}

/// The routers of the three layers and the document of all their routes.
struct Parts {
    public: Router<AppState>,
    authenticated: Router<AppState>,
    tenant_scoped: Router<AppState>,
    doc: utoipa::openapi::OpenApi,
}

impl Parts {
    fn new() -> Self {
        let table = table();
        let mut doc = http::openapi::base();
        let mut split = |routes: http::routes::Routes| {
            let (router, api) = routes.split();
            doc.merge(api);
            router
        };
        let public = split(table.public);
        let authenticated = split(table.authenticated);
        let (tenant_scoped, mut api) = table.tenant_scoped.split();
        http::openapi::each_operation(&mut api, http::openapi::tenant_scoped);
        doc.merge(api);
        http::openapi::each_operation(&mut doc, http::openapi::refusals);
        http::openapi::operation_ids(&mut doc);
        Parts {
            public,
            authenticated,
            tenant_scoped,
            doc,
        }
    }
}

/// The whole HTTP application; tests serve it on port 0.
pub fn app(state: AppState) -> Router {
    let parts = Parts::new();
    let tenant_scoped = parts.tenant_scoped.route_layer(from_fn_with_state(
        state.clone(),
        http::tenant::tenant_scope,
    ));
    let authenticated = parts
        .authenticated
        .merge(tenant_scoped)
        .route_layer(from_fn_with_state(state.clone(), http::auth::authenticate));
    parts
        .public
        .merge(authenticated)
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", parts.doc))
        .fallback(|| async { error::AppError::NotFound("Route") })
        .method_not_allowed_fallback(|| async { error::AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(from_fn_with_state(state.clone(), http::limits::guard))
        .layer(cors(&state.config.cors_origins))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Cross-origin access for browsers, from the configured origins only: a
/// preflight is answered before authentication; credentials travel in the
/// `Authorization` header, never cookies.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    let origins: Vec<HeaderValue> = origins
        .iter()
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty())
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-tenant-id"),
        ])
        .expose_headers([header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600))
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
    background.spawn(jobs::announcements::run_sessions(
        state.config.redis_url.clone(),
        state.redis.clone(),
        state.sessions.clone(),
        stopped.clone(),
    ));
    background.spawn(state.hub.clone().run_session_checks(
        state.redis.clone(),
        std::time::Duration::from_secs(state.config.ws_session_check_secs.max(1)),
        stopped.clone(),
    ));
    if state.config.relay {
        let mailer = jobs::mail::Mailer::from_config(&state.config)
            .map_err(|e| std::io::Error::other(format!("mail: {e}")))?;
        background.spawn(jobs::mail::run(
            state.admin_db.clone(),
            mailer,
            jobs::mail::TenantMail {
                keyring: state.keyring.clone(),
                allow_private: state.config.tenant_smtp_private,
            },
            std::time::Duration::from_secs(1),
            stopped.clone(),
        ));
        background.spawn(jobs::export::run(
            state.clone(),
            std::time::Duration::from_secs(1),
            stopped.clone(),
        ));
        background.spawn(jobs::keys::run_reseal(
            state.clone(),
            std::time::Duration::from_secs(1),
            stopped.clone(),
        ));
        if state.config.audit_purge_secs > 0 {
            background.spawn(jobs::retention::run_purge(
                state.clone(),
                std::time::Duration::from_secs(state.config.audit_purge_secs),
                stopped.clone(),
            ));
        }
        match jobs::relay::Relay::connect(&state.config).await {
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
    let limits = state.config.limits.clone();
    accept(listener, app(state), &limits, shutdown_signal()).await;
    let _ = stop.send(true);
    background.join_all().await;
    Ok(())
}

/// Serves connections until `shutdown`, then lets open requests finish (at
/// most the request timeout). At most `max_connections` are open at once
/// (more are closed as they arrive); a client gets `header_timeout_secs` to
/// send each request's headers. Each request carries the peer address
/// (`ConnectInfo`), which the login budgets are keyed by.
async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &config::Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use std::time::Duration;
    use tower::ServiceExt;

    let connections =
        std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs.max(1)))
        // Above the service's own limits (crate::http::limits::MAX_HEADERS...),
        // which answer with a JSON body; these only catch the absurd.
        .max_headers(4 * crate::http::limits::MAX_HEADERS);
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: at the connection cap");
            continue;
        };
        let service = app.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        );
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let drain = Duration::from_secs(limits.request_timeout_secs.max(1));
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; closing them");
    }
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
