//! The one error type of the service and the one place that maps it to a
//! status and a JSON body `{"error": "...", "code": "..."}`. A 5xx never
//! carries internals: the detail is logged, the body is generic.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request is malformed (message says how).
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing, malformed, expired, tampered or revoked credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 400: a tenant-scoped route without a resolvable tenant.
    #[error("Tenant context required")]
    TenantRequired,
    /// 404: the named tenant does not exist.
    #[error("Tenant not found")]
    TenantNotFound,
    /// 403: the tenant is suspended or inactive.
    #[error("Tenant is not active")]
    TenantInactive,
    /// 403: the caller may not do this (message says what).
    #[error("{0}")]
    Forbidden(&'static str),
    /// 403: the policies deny this; already audited in a transaction of its own.
    #[error("You are not allowed to do this")]
    Denied,
    /// 404: no such resource in this tenant.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 409: conflicts with existing data.
    #[error("{0}")]
    Conflict(String),
    /// 409: the transaction lost a deadlock or a serialization conflict to
    /// another made at the same time, also when run again; nothing was kept.
    #[error("The change conflicted with another made at the same time; try again")]
    Contention,
    /// 409: a limit of the tenant's plan is reached (message names it).
    #[error("{0}")]
    LimitReached(String),
    /// 405: the route exists, not with this method.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// 413: the body is larger than the configured limit.
    #[error("Request body too large")]
    PayloadTooLarge,
    /// 414: the request target is longer than the service reads.
    #[error("Request URI too long")]
    UriTooLong,
    /// 431: more or larger headers than the service reads.
    #[error("Request headers too large")]
    HeadersTooLarge,
    /// 429: too many requests; retry after this many seconds.
    #[error("Rate limit exceeded; retry in {0} seconds")]
    RateLimited(u64),
    /// 422: well-formed but invalid input.
    #[error("{0}")]
    Validation(String),
    /// 408: the client did not send its request in time.
    #[error("Request not received in time")]
    RequestTimeout,
    /// 503 with Retry-After: this instance or the tenant's share of it is
    /// busy (message says which); nothing was done.
    #[error("{0}; retry shortly")]
    Busy(&'static str),
    /// 503: a dependency (Redis, PostgreSQL) is unavailable.
    #[error("Service temporarily unavailable")]
    Unavailable(String),
    /// 500: anything else; the detail goes to the log only.
    #[error("Internal server error")]
    Internal(String),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) | AppError::TenantRequired => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::TenantInactive | AppError::Forbidden(_) | AppError::Denied => {
                StatusCode::FORBIDDEN
            }
            AppError::TenantNotFound | AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) | AppError::LimitReached(_) | AppError::Contention => {
                StatusCode::CONFLICT
            }
            AppError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UriTooLong => StatusCode::URI_TOO_LONG,
            AppError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            AppError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::Unavailable(_) | AppError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::TenantRequired => "tenant_required",
            AppError::TenantNotFound => "tenant_not_found",
            AppError::TenantInactive => "tenant_inactive",
            AppError::Forbidden(_) | AppError::Denied => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::Conflict(_) | AppError::Contention => "conflict",
            AppError::LimitReached(_) => "limit_reached",
            AppError::Validation(_) => "validation_failed",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::PayloadTooLarge => "payload_too_large",
            AppError::UriTooLong => "uri_too_long",
            AppError::HeadersTooLarge => "headers_too_large",
            AppError::RateLimited(_) => "rate_limited",
            AppError::RequestTimeout => "request_timeout",
            AppError::Busy(_) => "busy",
            AppError::Unavailable(_) => "unavailable",
            AppError::Internal(_) => "internal",
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        AppError::Internal(e.to_string())
    }
}

/// Marks an answer whose transaction lost a deadlock or a serialization
/// conflict: the tenant-scoped request path runs such a request again.
#[derive(Debug, Clone, Copy)]
pub struct Contended;

/// The body of every error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, written for people.
    error: String,
    /// What went wrong, stable for programs: `not_found`, `forbidden`,
    /// `validation_failed`, `rate_limited`...
    code: &'static str,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            AppError::Internal(detail) | AppError::Unavailable(detail) => {
                tracing::error!(error = %detail, status = %self.status(), "request failed");
            }
            AppError::Unauthorized(reason) => tracing::debug!(reason, "unauthorized"),
            _ => {}
        }
        let body = Json(ErrorBody {
            error: self.to_string(),
            code: self.code(),
        });
        let mut response = (self.status(), body).into_response();
        let retry_after = match &self {
            AppError::RateLimited(seconds) => Some(*seconds),
            AppError::Busy(_) => Some(1),
            _ => None,
        };
        if matches!(self, AppError::Contention) {
            response.extensions_mut().insert(Contended);
        }
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

/// The one mapping of database errors, by SQLSTATE (class first, then the
/// codes of this service's own triggers and of the extension). Nothing of
/// the database's own wording reaches a client, except where noted: the
/// texts of this service's triggers, which are written for users.
impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        let sqlx::Error::Database(db) = &e else {
            return match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                    AppError::Unavailable(format!("database: {e}"))
                }
                _ => AppError::Internal(format!("database: {e}")),
            };
        };
        let code = db.code().unwrap_or_default();
        let message = db.message();
        let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
        let field = pg
            .and_then(|pg| pg.column())
            .or_else(|| check_field(db.constraint(), pg.and_then(|pg| pg.table())));
        match (&code[..2.min(code.len())], &*code) {
            // The extension refuses the context itself (see its README, "Errors").
            (_, "55000") if message == "tenant is not active" => AppError::TenantInactive,
            (_, "28000") if message == "tenant context names an unknown tenant" => {
                AppError::TenantNotFound
            }
            // Class 22, data exceptions: the input, not the service.
            (_, "22021") | (_, "22P05") => {
                AppError::Validation("Text must not contain NUL characters".to_owned())
            }
            (_, "22007") | (_, "22008") => {
                AppError::Validation("Date or time out of range".to_owned())
            }
            (_, "22003") => AppError::Validation(match field {
                Some(field) => format!("{field} is out of range"),
                None => "A number is out of range".to_owned(),
            }),
            (_, "22001") => AppError::Validation(match field {
                Some(field) => format!("{field} is too long"),
                None => "A value is too long".to_owned(),
            }),
            ("22", _) => AppError::Validation(match field {
                Some(field) => format!("Invalid value for {field}"),
                None => "Invalid value".to_owned(),
            }),
            // Class 23, integrity constraints.
            // Raised by our own triggers (no constraint): their text is written for users.
            (_, "23505") if db.constraint().is_none() => AppError::Conflict(message.to_owned()),
            (_, "23505") => AppError::Conflict("Already exists".to_owned()),
            (_, "23503") => {
                AppError::Validation("Refers to something that does not exist".to_owned())
            }
            (_, "23502") => AppError::Validation(match field {
                Some(field) => format!("{field} is required"),
                None => "A required value is missing".to_owned(),
            }),
            ("23", _) => AppError::Validation(match field {
                Some(field) => format!("Invalid value for {field}"),
                None => "Invalid value".to_owned(),
            }),
            // Class 40: the transaction lost a deadlock or a serialization
            // conflict; the tenant-scoped request path runs it again
            // (tenant::tenant_scope), then the caller is told to try again.
            (_, "40P01") | (_, "40001") => AppError::Contention,
            // The plan's limits, enforced by triggers; the text names the limit.
            (_, "53400") => AppError::LimitReached(message.to_owned()),
            // Connection lost, too many connections, server shutting down or
            // restarting: retryable.
            ("08", _) | ("57", _) | (_, "53300") => AppError::Unavailable(format!("database: {e}")),
            _ => AppError::Internal(format!("database: {e}")),
        }
    }
}

impl AppError {
    /// For calls to the extension's functions whose refusals are written
    /// for users (a bad slug, a duplicate name, a bad colour): 22023 and
    /// 23505 carry their own text; anything else as [`From<sqlx::Error>`].
    pub fn user_facing(e: sqlx::Error) -> AppError {
        if let sqlx::Error::Database(db) = &e {
            match db.code().as_deref() {
                Some("22023") => return AppError::Validation(db.message().to_owned()),
                Some("23505") => return AppError::Conflict(db.message().to_owned()),
                _ => {}
            }
        }
        AppError::from(e)
    }
}

/// The column a CHECK constraint named by PostgreSQL's convention
/// (`<table>_<column>_check`) is about.
fn check_field<'a>(constraint: Option<&'a str>, table: Option<&str>) -> Option<&'a str> {
    constraint?
        .strip_prefix(table?)?
        .strip_prefix('_')?
        .strip_suffix("_check")
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        crate::metrics::with(|m| m.redis_errors.inc());
        AppError::Unavailable(format!("redis: {e}"))
    }
}

pub type AppResult<T> = Result<T, AppError>;
