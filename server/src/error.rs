//! The one error type of the service and the one place that maps it to a
//! status and a JSON body `{"error": "...", "code": "..."}`. A 5xx never
//! carries internals: the detail is logged, the body is generic.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

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
            AppError::Conflict(_) | AppError::LimitReached(_) => StatusCode::CONFLICT,
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
            AppError::Conflict(_) => "conflict",
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

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            AppError::Internal(detail) | AppError::Unavailable(detail) => {
                tracing::error!(error = %detail, status = %self.status(), "request failed");
            }
            AppError::Unauthorized(reason) => tracing::debug!(reason, "unauthorized"),
            _ => {}
        }
        let body = Json(json!({"error": self.to_string(), "code": self.code()}));
        let mut response = (self.status(), body).into_response();
        let retry_after = match &self {
            AppError::RateLimited(seconds) => Some(*seconds),
            AppError::Busy(_) => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) => {
                let message = db.message();
                match db.code().as_deref() {
                    // The extension refuses the context itself.
                    Some("55000") if message == "tenant is not active" => AppError::TenantInactive,
                    Some("28000") if message == "tenant context names an unknown tenant" => {
                        AppError::TenantNotFound
                    }
                    // The plan's limits, enforced by triggers; the text names the limit.
                    Some("53400") => AppError::LimitReached(message.to_owned()),
                    // Raised by our own triggers (no constraint): their text is written for users.
                    Some("23505") if db.constraint().is_none() => {
                        AppError::Conflict(message.to_owned())
                    }
                    Some("23505") => AppError::Conflict("Already exists".to_owned()),
                    Some("23503") => {
                        AppError::Validation("Refers to something that does not exist".to_owned())
                    }
                    // Connection lost or server shutting down/restarting: retryable.
                    Some(code) if code.starts_with("08") || code.starts_with("57") => {
                        AppError::Unavailable(format!("database: {e}"))
                    }
                    // A NUL character in text (PostgreSQL's text cannot hold one).
                    // A date or time PostgreSQL cannot hold (year -99999, say).
                    Some("22008") => AppError::Validation("Date or time out of range".to_owned()),
                    // Two changes that cannot both apply (deadlock, serialization):
                    // the loser is told to try again; nothing of it was kept.
                    Some("40P01") | Some("40001") => AppError::Conflict(
                        "The change conflicted with another made at the same time; try again"
                            .to_owned(),
                    ),
                    Some("22021") | Some("22P05") => {
                        AppError::Validation("Text must not contain NUL characters".to_owned())
                    }
                    Some("23514") | Some("22001") | Some("22023") => {
                        AppError::Validation("Invalid value".to_owned())
                    }
                    _ => AppError::Internal(format!("database: {e}")),
                }
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                AppError::Unavailable(format!("database: {e}"))
            }
            _ => AppError::Internal(format!("database: {e}")),
        }
    }
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        crate::metrics::with(|m| m.redis_errors.inc());
        AppError::Unavailable(format!("redis: {e}"))
    }
}

pub type AppResult<T> = Result<T, AppError>;
