//! Passwords: `POST /auth/password` (change, the current one required),
//! `POST /auth/password/forgot` (a reset link by mail) and
//! `POST /auth/password/reset` (a new password with that link).
//!
//! A change ends every other session of the account; a reset ends all of
//! them. The forgot answer is the same whether or not the address has an
//! account, and so is the work behind it. Reset links are single-use,
//! stored as their SHA-256, valid [`RESET_VALID_MINUTES`] minutes; a new
//! password passes the policy in [`crate::domain::password`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::{password, sessions};
use crate::error::{AppError, AppResult};
use crate::http::auth::AuthUser;
use crate::http::extract::AppJson;
use crate::http::limits::{ClientAddress, LoginBudget};
use crate::http::routes::Routes;
use crate::state::AppState;

/// Minutes a reset link stays valid.
pub const RESET_VALID_MINUTES: i32 = 60;

/// Routes that need no token.
pub fn public_router() -> Routes {
    Routes::default()
        .routes(routes!(forgot))
        .routes(routes!(reset))
}

/// Routes of a signed-in user.
pub fn authenticated_router() -> Routes {
    Routes::default().routes(routes!(change))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeRequest {
    current_password: String,
    new_password: String,
}

/// Reset requests and uses from one address, within the login budget.
async fn throttle(state: &AppState, address: &str) -> AppResult<()> {
    crate::http::limits::count(
        state,
        &format!("throttle:reset:addr:{address}"),
        state.config.limits.logins_per_address,
        60,
        "reset_address",
    )
    .await
}

/// Changes the caller's password: the current one proves it is them (its
/// attempts count against the login budgets), and every other session ends.
#[utoipa::path(post, path = "/auth/password", tag = "passwords",
    request_body = ChangeRequest,
    responses((status = 204, description = "Changed; the caller's other sessions have ended")))]
async fn change(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AuthUser(claims): AuthUser,
    AppJson(body): AppJson<ChangeRequest>,
) -> AppResult<StatusCode> {
    crate::domain::password::bounded(&body.current_password, "current_password")?;
    crate::domain::password::bounded(&body.new_password, "new_password")?;
    let budget = LoginBudget::check(&state, &address, &claims.email).await?;
    let current: Option<String> = sqlx::query_scalar("SELECT app.password_of($1)")
        .bind(claims.sub)
        .fetch_one(&state.auth_db)
        .await?;
    if !password::verify_password(&state, body.current_password, current).await? {
        budget.failed(&state).await?;
        return Err(AppError::Forbidden("The current password is not correct"));
    }
    budget.succeeded(&state).await?;
    crate::domain::password::check(&body.new_password, &claims.email)?;
    let new_hash = password::hash_new_password(&state, body.new_password).await?;
    let revoked: Vec<Uuid> = sqlx::query_scalar("SELECT app.set_password($1, $2, $3)")
        .bind(claims.sub)
        .bind(new_hash)
        .bind(claims.sid)
        .fetch_all(&state.auth_db)
        .await?;
    sessions::forget_sessions(&state, &revoked).await?;
    tracing::info!(user_id = %claims.sub, ended = revoked.len(), "password changed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ForgotRequest {
    email: String,
}

/// The one answer to a reset request.
fn forgot_answer() -> (StatusCode, Json<Value>) {
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "message": "If an account uses this address, a link to choose a new password is on its way."
        })),
    )
}

/// Mails a reset link to the address if it has an account. The answer
/// depends on nothing the address changes: once the address is well formed
/// and the caller within its budget, the link is recorded and the mail
/// queued off the answer's path, and the answer leaves a fixed time after
/// the request arrived.
#[utoipa::path(post, path = "/auth/password/forgot", tag = "passwords", security(()),
    request_body = ForgotRequest,
    responses((status = 202, description = "The same answer whether or not the address has an \
        account: `{message}`",
        body = serde_json::Value)))]
async fn forgot(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<ForgotRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let email = body.email.trim().to_owned();
    if !crate::domain::mail::valid_address(&email) {
        return Err(AppError::Validation(
            "email must be an email address".to_owned(),
        ));
    }
    throttle(&state, &address).await?;
    let answer_at = tokio::time::Instant::now() + FORGOT_ANSWER_AFTER;
    tokio::spawn(async move {
        if let Err(e) = record_reset(&state, &email).await {
            tracing::error!(error = %e, "password reset request not recorded");
        }
    });
    tokio::time::sleep_until(answer_at).await;
    Ok(forgot_answer())
}

/// Records a reset link for `email` (any address gets one, so the work is
/// alike) and, if an account uses the address, queues its mail.
async fn record_reset(state: &AppState, email: &str) -> AppResult<()> {
    let (secret, digest) = sessions::new_secret();
    let to_mail: Option<(Uuid, String, Uuid)> = sqlx::query_as(
        "SELECT user_id, recipient, tenant_id
         FROM app.request_password_reset($1, $2, make_interval(mins => $3))",
    )
    .bind(email)
    .bind(&digest[..])
    .bind(RESET_VALID_MINUTES)
    .fetch_optional(&state.auth_db)
    .await?;
    match to_mail {
        Some((user, recipient, tenant)) => {
            queue_reset_mail(state, user, tenant, &recipient, &secret, digest).await
        }
        None => Ok(()),
    }
}

/// How long after it arrives a reset request is answered, whatever the
/// address: well above the work it does, even on a loaded machine.
const FORGOT_ANSWER_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Queues the reset mail in the context of the tenant it goes out for.
async fn queue_reset_mail(
    state: &AppState,
    user: Uuid,
    tenant: Uuid,
    recipient: &str,
    secret: &str,
    digest: [u8; 32],
) -> AppResult<()> {
    let link = format!(
        "{}/reset-password?token={secret}",
        state.config.app_url.trim_end_matches('/')
    );
    let note = format!(
        "(Or send the token {secret} with your new password to POST /auth/password/reset.)\n\
         The link works once and expires in {RESET_VALID_MINUTES} minutes.\n"
    );
    crate::domain::mail::queue_link_mail(
        state,
        (tenant, user),
        "SELECT app.queue_password_reset_mail($1, $2, $3, $4)",
        digest,
        ("password_reset", recipient),
        crate::domain::mail::Action {
            label: "Choose a new password",
            link: &link,
            note: &note,
        },
    )
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    token: String,
    new_password: String,
}

/// One answer for a link that is malformed, unknown, used or expired.
const NO_LINK: AppError = AppError::NotFound("Reset link");

/// Sets a new password with a reset link; every session of the account ends.
#[utoipa::path(post, path = "/auth/password/reset", tag = "passwords", security(()),
    request_body = ResetRequest,
    responses((status = 200, description = "Changed; every session of the account has ended: \
        `{message}`",
        body = serde_json::Value)))]
async fn reset(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<ResetRequest>,
) -> AppResult<Json<Value>> {
    throttle(&state, &address).await?;
    crate::domain::password::bounded(&body.new_password, "new_password")?;
    let token = body.token.trim();
    if !sessions::is_secret(token) {
        return Err(NO_LINK);
    }
    let digest = tenancy_token::digest(token);
    let email: Option<String> = sqlx::query_scalar("SELECT app.password_reset_email($1)")
        .bind(&digest[..])
        .fetch_one(&state.auth_db)
        .await?;
    let email = email.ok_or(NO_LINK)?;
    crate::domain::password::check(&body.new_password, &email)?;
    let new_hash = password::hash_new_password(&state, body.new_password).await?;
    let done: Option<(Uuid, Vec<Uuid>)> =
        sqlx::query_as("SELECT user_id, revoked FROM app.reset_password($1, $2)")
            .bind(&digest[..])
            .bind(new_hash)
            .fetch_optional(&state.auth_db)
            .await?;
    let (user, revoked) = done.ok_or(NO_LINK)?;
    sessions::forget_sessions(&state, &revoked).await?;
    tracing::info!(user_id = %user, ended = revoked.len(), "password reset");
    Ok(Json(json!({
        "message": "Your password has been changed. Sign in with the new password."
    })))
}
