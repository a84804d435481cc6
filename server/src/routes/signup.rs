//! Public signup into a tenant that allows it (`allow_public_signup` in its
//! configuration): `POST /auth/signup` and `POST /auth/signup/verify`.
//!
//! The answer to a signup is the same whether or not the address has an
//! account. A new account cannot log in until the link mailed to it is
//! used with the password chosen at signup (a stranger who signed up with
//! someone else's address cannot get them to activate the stranger's
//! password); then it is a member of the tenant. Links are single-use,
//! stored as their SHA-256, valid [`VERIFY_VALID_HOURS`] hours.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth;
use crate::error::{AppError, AppResult};
use crate::extract::AppJson;
use crate::limits::ClientAddress;
use crate::state::AppState;

/// Hours a verification link stays valid.
pub const VERIFY_VALID_HOURS: i32 = 24;

pub fn public_router() -> Router<AppState> {
    Router::new()
        .route("/auth/signup", post(signup))
        .route("/auth/signup/verify", post(verify))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupRequest {
    email: String,
    password: String,
    /// The tenant's slug.
    tenant: String,
}

/// Signups and verifications from one address, within the login budget.
async fn throttle(state: &AppState, address: &str) -> AppResult<()> {
    crate::limits::count(
        state,
        &format!("throttle:signup:addr:{address}"),
        state.config.limits.logins_per_address,
        60,
        "signup_address",
    )
    .await
}

async fn signup(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<SignupRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let email = body.email.trim().to_owned();
    if !crate::routes::members::valid_email(&email) {
        return Err(AppError::Validation(
            "email must be an email address".to_owned(),
        ));
    }
    crate::password::check(&body.password, &email)?;
    throttle(&state, &address).await?;
    let tenant: Option<Uuid> = sqlx::query_scalar("SELECT app.signup_tenant($1)")
        .bind(body.tenant.trim())
        .fetch_one(&state.auth_db)
        .await?;
    let tenant = tenant.ok_or(AppError::Forbidden("This tenant does not accept sign-ups"))?;
    // Hashed whatever the address: the same work either way.
    let password = body.password;
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(AppError::internal)??;
    let (secret, digest) = auth::new_secret();
    let user: Option<Uuid> =
        sqlx::query_scalar("SELECT app.signup($1, $2, $3, $4, make_interval(hours => $5))")
            .bind(&email)
            .bind(hash)
            .bind(tenant)
            .bind(&digest[..])
            .bind(VERIFY_VALID_HOURS)
            .fetch_one(&state.auth_db)
            .await?;
    if let Some(user) = user {
        let state = state.clone();
        tokio::spawn(async move {
            let link = format!(
                "{}/verify-signup?token={secret}",
                state.config.app_url.trim_end_matches('/')
            );
            let note = format!(
                "Confirm with the password you chose.\n\
                 (Or send the token {secret} with it to POST /auth/signup/verify.)\n\
                 The link works once and expires in {VERIFY_VALID_HOURS} hours.\n"
            );
            let queued = crate::routes::queue_link_mail(
                &state,
                (tenant, user),
                "SELECT app.queue_signup_mail($1, $2, $3, $4)",
                digest,
                ("signup_verification", &email),
                crate::mail_templates::Action {
                    label: "Confirm your address",
                    link: &link,
                    note: &note,
                },
            )
            .await;
            if let Err(e) = queued {
                tracing::error!(user_id = %user, error = %e, "signup mail not queued");
            }
        });
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "message": "Check your mail: open the link in it to finish signing up."
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    token: String,
    password: String,
}

/// One answer for a link that is malformed, unknown, used or expired.
const NO_LINK: AppError = AppError::NotFound("Signup link");

/// Uses a verification link with the password chosen at signup; the
/// account becomes a member of the tenant it signed up to.
async fn verify(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<VerifyRequest>,
) -> AppResult<Json<Value>> {
    throttle(&state, &address).await?;
    let token = body.token.trim();
    if !auth::is_secret(token) {
        return Err(NO_LINK);
    }
    crate::password::bounded(&body.password, "password")?;
    let digest = tenancy_token::digest(token);
    let pending: Option<(String, String)> =
        sqlx::query_as("SELECT email, password_hash FROM app.pending_signup($1)")
            .bind(&digest[..])
            .fetch_optional(&state.auth_db)
            .await?;
    let (_, hash) = pending.ok_or(NO_LINK)?;
    if !auth::verify_password(&state, body.password, Some(hash.clone())).await? {
        return Err(AppError::Unauthorized(
            "The password is not the one chosen at signup",
        ));
    }
    let verified: Option<(Uuid, Uuid, String)> =
        sqlx::query_as("SELECT tenant, user_id, email FROM app.verify_signup($1, $2)")
            .bind(&digest[..])
            .bind(&hash)
            .fetch_optional(&state.auth_db)
            .await?;
    let (tenant, user, email) = verified.ok_or(NO_LINK)?;
    let mut tx = state.db.begin().await?;
    crate::provision::enter_tenant(&mut tx, &state.keys, tenant, user).await?;
    crate::routes::invitations::add_member(&state, &mut tx, tenant, &email, "member").await?;
    crate::audit::record(
        &mut tx,
        tenant,
        user,
        "member.signed_up",
        Some(&email),
        json!({"role": "member"}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(
        json!({"tenant_id": tenant, "user_id": user, "email": email, "role": "member"}),
    ))
}
