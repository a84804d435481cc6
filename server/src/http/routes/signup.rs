//! Public signup into a tenant that allows it (`allow_public_signup` in its
//! configuration): `POST /auth/signup` and `POST /auth/signup/verify`; and,
//! where the operator enables it, signup for a new tenant of one's own:
//! `POST /auth/signup/tenant` and `POST /auth/signup/tenant/verify`.
//!
//! The answer to a signup is the same whether or not the address has an
//! account. A new account cannot log in until the link mailed to it is
//! used with the password chosen at signup (a stranger who signed up with
//! someone else's address cannot get them to activate the stranger's
//! password); then it is a member of the tenant. Links are single-use,
//! stored as their SHA-256, valid [`VERIFY_VALID_HOURS`] hours.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::{password, sessions};
use crate::error::{AppError, AppResult};
use crate::http::extract::AppJson;
use crate::http::limits::ClientAddress;
use crate::http::routes::Routes;
use crate::state::AppState;

/// Slugs nobody signs up for: names of the service's own hosts and pages.
const RESERVED_SLUGS: &[&str] = &[
    "www",
    "api",
    "app",
    "admin",
    "auth",
    "login",
    "signup",
    "mail",
    "smtp",
    "status",
    "docs",
    "help",
    "support",
    "billing",
    "static",
    "assets",
    "cdn",
    "dashboard",
];

/// Unused tenant signups one address may have at once.
const MAX_PENDING_PER_ADDRESS: i64 = 3;

/// Hours a verification link stays valid.
pub const VERIFY_VALID_HOURS: i32 = 24;

pub fn public_router() -> Routes {
    Routes::default()
        .routes(routes!(signup))
        .routes(routes!(verify))
        .routes(routes!(signup_tenant))
        .routes(routes!(verify_tenant))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SignupRequest {
    email: String,
    password: String,
    /// The tenant's slug.
    tenant: String,
}

/// The signup's address, trimmed, once it and the password are acceptable
/// and the client's address is within its budget.
async fn checked(
    state: &AppState,
    address: &str,
    email: &str,
    password: &str,
) -> AppResult<String> {
    let email = email.trim().to_owned();
    if !crate::domain::mail::valid_address(&email) {
        return Err(AppError::Validation(
            "email must be an email address".to_owned(),
        ));
    }
    crate::domain::password::check(password, &email)?;
    throttle(state, address).await?;
    Ok(email)
}

/// Signups and verifications from one address, within the login budget.
async fn throttle(state: &AppState, address: &str) -> AppResult<()> {
    crate::http::limits::count(
        state,
        &format!("throttle:signup:addr:{address}"),
        state.config.limits.logins_per_address,
        60,
        "signup_address",
    )
    .await
}

#[utoipa::path(post, path = "/auth/signup", tag = "signup", security(()),
    request_body = SignupRequest,
    responses((status = 202, description = "The same answer whether or not the address has an \
        account; a link is mailed to a new one: `{message}`",
        body = serde_json::Value)))]
async fn signup(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<SignupRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let email = checked(&state, &address, &body.email, &body.password).await?;
    let tenant: Option<Uuid> = sqlx::query_scalar("SELECT app.signup_tenant($1)")
        .bind(body.tenant.trim())
        .fetch_one(&state.auth_db)
        .await?;
    let tenant = tenant.ok_or(AppError::Forbidden("This tenant does not accept sign-ups"))?;
    // Hashed whatever the address: the same work either way.
    let hash = password::hash_new_password(&state, body.password).await?;
    let (secret, digest) = sessions::new_secret();
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
            let queued = crate::domain::mail::queue_link_mail(
                &state,
                (tenant, user),
                "SELECT app.queue_signup_mail($1, $2, $3, $4)",
                digest,
                ("signup_verification", &email),
                crate::domain::mail::Action {
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    token: String,
    password: String,
}

/// The digest of a verification link's token, once the client's address is
/// within its budget and the token and password have acceptable shapes.
async fn link_digest(state: &AppState, address: &str, body: &VerifyRequest) -> AppResult<[u8; 32]> {
    throttle(state, address).await?;
    let token = body.token.trim();
    if !sessions::is_secret(token) {
        return Err(NO_LINK);
    }
    crate::domain::password::bounded(&body.password, "password")?;
    Ok(tenancy_token::digest(token))
}

/// One answer for a link that is malformed, unknown, used or expired.
const NO_LINK: AppError = AppError::NotFound("Signup link");

/// Uses a verification link with the password chosen at signup; the
/// account becomes a member of the tenant it signed up to.
#[utoipa::path(post, path = "/auth/signup/verify", tag = "signup", security(()),
    request_body = VerifyRequest,
    responses((status = 200,
        description = "The new membership: `{tenant_id, user_id, email, role}`",
        body = serde_json::Value)))]
async fn verify(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<VerifyRequest>,
) -> AppResult<Json<Value>> {
    let digest = link_digest(&state, &address, &body).await?;
    let pending: Option<(String, String)> =
        sqlx::query_as("SELECT email, password_hash FROM app.pending_signup($1)")
            .bind(&digest[..])
            .fetch_optional(&state.auth_db)
            .await?;
    let (_, hash) = pending.ok_or(NO_LINK)?;
    if !password::verify_password(&state, body.password, Some(hash.clone())).await? {
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
    crate::domain::context::enter(&mut tx, &state.keys, tenant, user).await?;
    crate::http::routes::invitations::add_member(&state, &mut tx, tenant, &email, "member").await?;
    crate::domain::audit::record(
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

/// Where the operator enables it (`TENANCY_PLATFORM_SIGNUP`): anyone signs
/// up for a tenant of their own. The slug is reserved at once (an inactive
/// tenant, removed with the link's expiry if nobody verifies); the link
/// mailed to the address activates and provisions it with that person as
/// owner. The answer does not depend on whether the address has an
/// account: a new address confirms with the password chosen here, an
/// existing account with its own (so nobody is made owner of a tenant
/// without their consent).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TenantSignupRequest {
    email: String,
    password: String,
    /// The tenant's slug (its subdomain).
    slug: String,
    /// The tenant's name (default: the slug).
    name: Option<String>,
}

#[utoipa::path(post, path = "/auth/signup/tenant", tag = "signup", security(()),
    request_body = TenantSignupRequest,
    responses((status = 202,
        description = "The slug is reserved and a link is mailed: `{slug, message}`",
        body = serde_json::Value)))]
async fn signup_tenant(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<TenantSignupRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    if !state.config.platform_signup {
        return Err(AppError::Forbidden(
            "Signing up for a new tenant is not enabled",
        ));
    }
    let email = checked(&state, &address, &body.email, &body.password).await?;
    let slug = body.slug.trim().to_owned();
    let name = body
        .name
        .as_deref()
        .map(str::trim)
        .unwrap_or(&slug)
        .to_owned();
    if RESERVED_SLUGS.contains(&slug.to_ascii_lowercase().as_str()) {
        return Err(AppError::Conflict(format!(
            "The tenant address {slug:?} is reserved"
        )));
    }
    // A few pending signups per address: a mailbox cannot be flooded, nor
    // slugs held, from one address's links.
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM app.tenant_signups
         WHERE lower(email) = lower($1) AND used_at IS NULL AND expires_at > now()",
    )
    .bind(&email)
    .fetch_one(&state.admin_db)
    .await?;
    if pending >= MAX_PENDING_PER_ADDRESS {
        return Err(AppError::RateLimited(3600));
    }
    let hash = password::hash_new_password(&state, body.password).await?;
    let (secret, digest) = sessions::new_secret();
    let mut tx = state.admin_db.begin().await?;
    let tenant: Uuid = sqlx::query_scalar("SELECT tenancy.create_tenant($1, $2, $2)")
        .bind(&slug)
        .bind(&name)
        .fetch_one(&mut *tx)
        .await
        .map_err(crate::error::AppError::user_facing)?;
    sqlx::query(
        "INSERT INTO app.tenant_signups (token_hash, tenant, email, password_hash, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(hours => $5))",
    )
    .bind(&digest[..])
    .bind(tenant)
    .bind(&email)
    .bind(&hash)
    .bind(VERIFY_VALID_HOURS)
    .execute(&mut *tx)
    .await?;
    // Not verified in time: removed like a tenant its owner deleted.
    sqlx::query(
        "INSERT INTO app.tenant_deletions (tenant, purge_after)
         VALUES ($1, now() + make_interval(hours => $2))",
    )
    .bind(tenant)
    .bind(VERIFY_VALID_HOURS)
    .execute(&mut *tx)
    .await?;
    // The mail goes out through the new tenant's own outbox, written in
    // its context while it is still active; then it waits, inactive.
    crate::domain::context::enter(&mut tx, &state.keys, tenant, Uuid::nil()).await?;
    let link = format!(
        "{}/verify-tenant-signup?token={secret}",
        state.config.app_url.trim_end_matches('/')
    );
    let note = format!(
        "This creates the tenant {slug}. Confirm with the password you chose (or, if you \
         already have an account, with its password).\n\
         (Or send the token {secret} with it to POST /auth/signup/tenant/verify.)\n\
         The link works once and expires in {VERIFY_VALID_HOURS} hours.\n"
    );
    let mail = crate::domain::mail::render(
        &mut tx,
        "signup_verification",
        &email,
        Some(crate::domain::mail::Action {
            label: "Confirm and create your tenant",
            link: &link,
            note: &note,
        }),
    )
    .await?;
    sqlx::query(
        "INSERT INTO app.email_outbox (recipient, template, subject, body, html)
         VALUES ($1, 'signup_verification', $2, $3, $4)",
    )
    .bind(&email)
    .bind(mail.subject)
    .bind(mail.text)
    .bind(mail.html)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT tenancy.set_tenant_status($1, 'inactive')")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "slug": slug,
            "message": "Check your mail: open the link in it to create your tenant."
        })),
    ))
}

/// Uses a tenant signup link: a new address with the password chosen at
/// signup, an existing account with its own. The tenant becomes active,
/// provisioned, with the person as its owner.
#[utoipa::path(post, path = "/auth/signup/tenant/verify", tag = "signup", security(()),
    request_body = VerifyRequest,
    responses((status = 201,
        description = "The tenant, active, with its owner: `{tenant_id, slug, user_id, role}`",
        body = serde_json::Value)))]
async fn verify_tenant(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<VerifyRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let digest = link_digest(&state, &address, &body).await?;
    let pending: Option<(Uuid, String, String)> = sqlx::query_as(
        "SELECT tenant, email, password_hash FROM app.tenant_signups
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()",
    )
    .bind(&digest[..])
    .fetch_optional(&state.admin_db)
    .await?;
    let (tenant, email, chosen) = pending.ok_or(NO_LINK)?;
    // An account with a password of its own confirms with it; any other
    // address with the password chosen at signup.
    let own: Option<String> = sqlx::query_scalar(
        "SELECT password_hash FROM app.users
         WHERE lower(email) = lower($1) AND password_hash LIKE '$argon2%'",
    )
    .bind(&email)
    .fetch_optional(&state.admin_db)
    .await?;
    let existing = own.is_some();
    if !password::verify_password(&state, body.password, Some(own.unwrap_or(chosen.clone())))
        .await?
    {
        return Err(AppError::Unauthorized(if existing {
            "The password is not this account's"
        } else {
            "The password is not the one chosen at signup"
        }));
    }
    let mut tx = state.admin_db.begin().await?;
    let used: Option<Uuid> = sqlx::query_scalar(
        "UPDATE app.tenant_signups SET used_at = now()
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING tenant",
    )
    .bind(&digest[..])
    .fetch_optional(&mut *tx)
    .await?;
    if used.is_none() {
        return Err(NO_LINK);
    }
    // Still the reservation this link made: inactive, its removal pending.
    // A tenant the platform has suspended (or reactivated) since is not
    // the link's to activate.
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM tenancy.tenants WHERE id = $1 FOR UPDATE")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
    let pending: Option<Uuid> =
        sqlx::query_scalar("DELETE FROM app.tenant_deletions WHERE tenant = $1 RETURNING tenant")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
    if status.as_deref() != Some("inactive") || pending.is_none() {
        return Err(NO_LINK);
    }
    let owner: Uuid =
        match sqlx::query_scalar::<_, Option<Uuid>>("SELECT app.claim_account($1, $2)")
            .bind(&email)
            .bind(&chosen)
            .fetch_one(&mut *tx)
            .await?
        {
            Some(owner) => owner,
            None => {
                sqlx::query_scalar("SELECT app.ensure_user($1)")
                    .bind(&email)
                    .fetch_one(&mut *tx)
                    .await?
            }
        };
    sqlx::query("SELECT tenancy.set_tenant_status($1, 'active')")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let slug: String = sqlx::query_scalar("SELECT slug FROM tenancy.tenants WHERE id = $1")
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
    crate::domain::provision::populate(
        &state,
        &mut tx,
        tenant,
        owner,
        owner,
        &crate::domain::provision::NewTenant {
            slug: &slug,
            name: &slug,
            display_name: None,
            plan: &state.config.platform_signup_plan,
            owner_email: &email,
            demo_data: false,
        },
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"tenant_id": tenant, "slug": slug, "user_id": owner, "role": "owner"})),
    ))
}
