//! Invitations with consent: `/api/tenant/invitations` (and
//! `POST /api/tenant/members`) for a tenant's admins, and
//! `POST /auth/invitations/accept` for the person invited.
//!
//! An invitation names an address and a role. Its link carries a secret,
//! stored only as its SHA-256, valid once and for [`VALID_DAYS`] days. The
//! membership exists only once the person accepts: a new address chooses a
//! password (the policy in [`crate::domain::password`]), an existing account
//! confirms with its own. The inviter's answer is the same whether or not
//! the address has an account.
//!
//! The address is sealed with the tenant's data key (see
//! [`crate::domain::pii`]): the table holds its ciphertext and a blind
//! index, and audit entries a masked form.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::keyring::TenantKeys;
use crate::domain::pii;
use crate::error::{AppError, AppResult};
use crate::http::extract::{AppJson, AppPath};
use crate::http::limits::ClientAddress;
use crate::http::routes::Routes;
use crate::http::tenant::decide::Decided;
use crate::http::tenant::{Db, DbGuard, Tenant};
use crate::state::AppState;

/// Days an invitation link stays valid.
pub const VALID_DAYS: i32 = 7;

/// Routes of the tenant's admins (inside the tenant layer).
pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
        .routes(routes!(resend))
}

/// The invitee's route (no token: the link is the credential).
pub fn public_router() -> Routes {
    Routes::default().routes(routes!(accept))
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Invitation {
    id: Uuid,
    email: String,
    role: String,
    invited_by: Option<Uuid>,
    created_at: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// An invitation as stored: its address sealed (or, for a row written
/// before addresses were sealed, in plain until the key job seals it).
#[derive(sqlx::FromRow)]
struct Stored {
    id: Uuid,
    token_hash: Vec<u8>,
    email: Option<String>,
    email_sealed: Option<Vec<u8>>,
    role: String,
    invited_by: Option<Uuid>,
    created_at: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
}

const STORED: &str =
    "id, token_hash, email, email_sealed, role, invited_by, created_at, expires_at";

impl Stored {
    /// The invitation with its address opened.
    async fn open(
        self,
        keys: &mut TenantKeys<'_>,
        conn: &mut sqlx::PgConnection,
    ) -> AppResult<Invitation> {
        let email = pii::open_invitee(
            keys,
            conn,
            self.id,
            &self.token_hash,
            self.email,
            self.email_sealed,
        )
        .await?;
        Ok(Invitation {
            id: self.id,
            email,
            role: self.role,
            invited_by: self.invited_by,
            created_at: self.created_at,
            expires_at: self.expires_at,
        })
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    pub email: String,
    pub role: String,
}

/// A new link secret for `tenant`: the token mailed (`<tenant>.<secret>`)
/// and the digest stored.
fn new_token(tenant: Uuid) -> (String, [u8; 32]) {
    let (secret, digest) = crate::domain::sessions::new_secret();
    (format!("{tenant}.{secret}"), digest)
}

/// Authorizes inviting with `role`: managing users, and owners for owner.
async fn authorize_invite(
    state: &AppState,
    tenant: &Tenant,
    db: &mut DbGuard<'_>,
    role: &str,
) -> AppResult<Decided> {
    crate::http::routes::members::authorize_role_change(state, tenant, db, &[role]).await
}

/// Invites `email` with `role` and mails the link; the answer is 202 and
/// the invitation, whatever the address.
pub async fn invite(
    state: &AppState,
    tenant: &Tenant,
    db: &mut DbGuard<'_>,
    body: InviteRequest,
) -> AppResult<(StatusCode, Json<Invitation>)> {
    let email = body.email.trim().to_owned();
    if !crate::domain::mail::valid_address(&email) {
        return Err(AppError::Validation(
            "email must be an email address".to_owned(),
        ));
    }
    let role = crate::http::routes::members::tenant_role(&body.role)?;
    let decided = authorize_invite(state, tenant, db, role).await?;
    // The tenant's own members are no secret to its admins.
    let member: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM app.tenant_memberships m JOIN app.users u ON u.id = m.user_id
                        WHERE lower(u.email) = lower($1))",
    )
    .bind(&email)
    .fetch_one(db.conn(decided)?)
    .await?;
    if member {
        return Err(AppError::Conflict(
            "Already a member of this tenant".to_owned(),
        ));
    }
    // A new invitation replaces a pending one for the same address, found
    // by its blind index under every live key version (and, for rows from
    // before addresses were sealed, by the address).
    let key = state
        .keyring
        .current_key(db.conn(decided)?, tenant.id)
        .await?;
    let live = state
        .keyring
        .live_keys(db.conn(decided)?, tenant.id)
        .await?;
    sqlx::query(
        "UPDATE app.invitations SET revoked_at = now()
         WHERE (email_index = ANY($1) OR lower(email) = lower($2))
           AND accepted_at IS NULL AND revoked_at IS NULL",
    )
    .bind(pii::invitee_indexes(&live, &email))
    .bind(&email)
    .execute(db.conn(decided)?)
    .await?;
    let (token, digest) = new_token(tenant.id);
    let id = Uuid::new_v4();
    let sealed = pii::seal_invitee(&key, id, &digest, &email)?;
    let (id, role, invited_by, created_at, expires_at) = sqlx::query_as(
        "INSERT INTO app.invitations (id, email_sealed, email_index, key_version, role, token_hash,
                                      invited_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(days => $8))
         RETURNING id, role, invited_by, created_at, expires_at",
    )
    .bind(id)
    .bind(&sealed.sealed)
    .bind(&sealed.index[..])
    .bind(sealed.key_version)
    .bind(role)
    .bind(&digest[..])
    .bind(tenant.user_id)
    .bind(VALID_DAYS)
    .fetch_one(db.conn(decided)?)
    .await?;
    crate::domain::keyring::ensure_live(db.conn(decided)?, key.version()).await?;
    let invitation = Invitation {
        id,
        email,
        role,
        invited_by,
        created_at,
        expires_at,
    };
    mail(state, db, decided, invitation.id, &invitation.email, &token).await?;
    crate::domain::audit::record(
        db.conn(decided)?,
        tenant.id,
        tenant.user_id,
        "invitation.sent",
        Some(&pii::mask_email(&invitation.email)),
        json!({"invitation_id": invitation.id, "role": invitation.role}),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(invitation)))
}

/// Queues the invitation mail from the tenant's own template, in its
/// locale and branding. One text for new and existing accounts: the mail
/// does not say which it is.
async fn mail(
    state: &AppState,
    db: &mut DbGuard<'_>,
    decided: Decided,
    invitation: Uuid,
    email: &str,
    token: &str,
) -> AppResult<()> {
    let link = format!(
        "{}/accept-invitation?token={token}",
        state.config.app_url.trim_end_matches('/')
    );
    let note = format!(
        "(Or send the token {token} to POST /auth/invitations/accept.)\n\
         If you already have an account, confirm with your password; otherwise choose one.\n\
         The link works once and expires in {VALID_DAYS} days.\n"
    );
    let mail = crate::domain::mail::render(
        db.conn(decided)?,
        "invitation",
        email,
        Some(crate::domain::mail::Action {
            label: "Accept the invitation",
            link: &link,
            note: &note,
        }),
    )
    .await?;
    sqlx::query("SELECT app.queue_invitation_mail($1, $2, $3, $4)")
        .bind(invitation)
        .bind(mail.subject)
        .bind(mail.text)
        .bind(mail.html)
        .execute(db.conn(decided)?)
        .await?;
    Ok(())
}

#[utoipa::path(post, path = "/api/tenant/invitations", tag = "invitations",
    request_body = InviteRequest,
    responses((status = 202,
        description = "Invited and mailed, whether or not the address has an account",
        body = Invitation)))]
async fn create(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<InviteRequest>,
) -> AppResult<(StatusCode, Json<Invitation>)> {
    let mut db = db.lock().await?;
    invite(&state, &tenant, &mut db, body).await
}

/// Pending invitations, newest first.
#[utoipa::path(get, path = "/api/tenant/invitations", tag = "invitations",
    responses((status = 200, description = "Pending invitations, newest first",
        body = [Invitation])))]
async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<Json<Vec<Invitation>>> {
    let mut db = db.lock().await?;
    let decided = authorize_invite(&state, &tenant, &mut db, "member").await?;
    let rows: Vec<Stored> = sqlx::query_as(&format!(
        "SELECT {STORED} FROM app.invitations
         WHERE accepted_at IS NULL AND revoked_at IS NULL ORDER BY created_at DESC"
    ))
    .fetch_all(db.conn(decided)?)
    .await?;
    let mut keys = TenantKeys::new(&state.keyring, tenant.id);
    let mut invitations = Vec::with_capacity(rows.len());
    for row in rows {
        invitations.push(row.open(&mut keys, db.conn(decided)?).await?);
    }
    Ok(Json(invitations))
}

/// A pending invitation's address and role, locked; 404 if there is none.
async fn pending_role(
    state: &AppState,
    tenant: &Tenant,
    db: &mut DbGuard<'_>,
    decided: Decided,
    id: Uuid,
) -> AppResult<(String, String)> {
    let row: Stored = sqlx::query_as(&format!(
        "SELECT {STORED} FROM app.invitations
         WHERE id = $1 AND accepted_at IS NULL AND revoked_at IS NULL FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(db.conn(decided)?)
    .await?
    .ok_or(AppError::NotFound("Invitation"))?;
    let mut keys = TenantKeys::new(&state.keyring, tenant.id);
    let invitation = row.open(&mut keys, db.conn(decided)?).await?;
    Ok((invitation.email, invitation.role))
}

/// A new link (the old one stops working), valid for another
/// [`VALID_DAYS`] days, mailed again.
#[utoipa::path(post, path = "/api/tenant/invitations/{id}/resend", tag = "invitations",
    params(("id" = Uuid, Path, description = "Invitation")),
    responses((status = 202, description = "A new link, mailed again", body = Invitation)))]
async fn resend(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<(StatusCode, Json<Invitation>)> {
    let mut db = db.lock().await?;
    // Managing users at all first; then the invitation's role, once known.
    let decided = authorize_invite(&state, &tenant, &mut db, "member").await?;
    let (email, role) = pending_role(&state, &tenant, &mut db, decided, id).await?;
    let decided = authorize_invite(&state, &tenant, &mut db, &role).await?;
    // The new link's digest is bound to the address: sealed again with it.
    let (token, digest) = new_token(tenant.id);
    let key = state
        .keyring
        .current_key(db.conn(decided)?, tenant.id)
        .await?;
    let sealed = pii::seal_invitee(&key, id, &digest, &email)?;
    let stored: Stored = sqlx::query_as(&format!(
        "UPDATE app.invitations SET token_hash = $2, expires_at = now() + make_interval(days => $3),
             email = NULL, email_sealed = $4, email_index = $5, key_version = $6
         WHERE id = $1 RETURNING {STORED}"
    ))
    .bind(id)
    .bind(&digest[..])
    .bind(VALID_DAYS)
    .bind(&sealed.sealed)
    .bind(&sealed.index[..])
    .bind(sealed.key_version)
    .fetch_one(db.conn(decided)?)
    .await?;
    crate::domain::keyring::ensure_live(db.conn(decided)?, key.version()).await?;
    // The address was just sealed from `email`: no need to open it again.
    let invitation = Invitation {
        id: stored.id,
        email: email.clone(),
        role: stored.role,
        invited_by: stored.invited_by,
        created_at: stored.created_at,
        expires_at: stored.expires_at,
    };
    mail(&state, &mut db, decided, id, &email, &token).await?;
    crate::domain::audit::record(
        db.conn(decided)?,
        tenant.id,
        tenant.user_id,
        "invitation.resent",
        Some(&pii::mask_email(&email)),
        json!({"invitation_id": id}),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(invitation)))
}

#[utoipa::path(delete, path = "/api/tenant/invitations/{id}", tag = "invitations",
    params(("id" = Uuid, Path, description = "Invitation")),
    responses((status = 204, description = "Revoked: its link no longer works")))]
async fn revoke(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(id): AppPath<Uuid>,
) -> AppResult<StatusCode> {
    let mut db = db.lock().await?;
    // Managing users at all first; then the invitation's role, once known.
    let decided = authorize_invite(&state, &tenant, &mut db, "member").await?;
    let (email, role) = pending_role(&state, &tenant, &mut db, decided, id).await?;
    let decided = authorize_invite(&state, &tenant, &mut db, &role).await?;
    sqlx::query("UPDATE app.invitations SET revoked_at = now() WHERE id = $1")
        .bind(id)
        .execute(db.conn(decided)?)
        .await?;
    crate::domain::audit::record(
        db.conn(decided)?,
        tenant.id,
        tenant.user_id,
        "invitation.revoked",
        Some(&pii::mask_email(&email)),
        json!({"invitation_id": id}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AcceptRequest {
    token: String,
    password: String,
}

/// One answer for a token that is malformed, unknown, used, revoked,
/// expired or of a tenant that does not exist.
const NO_INVITATION: AppError = AppError::NotFound("Invitation");

/// Accepts an invitation: proves or sets the account's password, then the
/// membership is created in the invitation's tenant.
#[utoipa::path(post, path = "/auth/invitations/accept", tag = "invitations", security(()),
    request_body = AcceptRequest,
    responses((status = 200,
        description = "The new membership: `{tenant_id, user_id, email, role}`",
        body = serde_json::Value)))]
async fn accept(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    AppJson(body): AppJson<AcceptRequest>,
) -> AppResult<Json<Value>> {
    crate::http::limits::count(
        &state,
        &format!("throttle:accept:addr:{address}"),
        state.config.limits.logins_per_address,
        60,
        "accept_address",
    )
    .await?;
    let (tenant, secret) = body.token.trim().split_once('.').ok_or(NO_INVITATION)?;
    let tenant = Uuid::parse_str(tenant).map_err(|_| NO_INVITATION)?;
    if !crate::domain::sessions::is_secret(secret) {
        return Err(NO_INVITATION);
    }
    crate::domain::password::bounded(&body.password, "password")?;
    let digest = tenancy_token::digest(secret);

    // In the invitation's own tenant (no user yet: the nil user).
    let mut tx = state.db.begin().await?;
    let found = async {
        crate::domain::context::enter(&mut tx, &state.keys, tenant, Uuid::nil()).await?;
        sqlx::query_as::<_, Stored>(&format!(
            "SELECT {STORED} FROM app.invitations
             WHERE token_hash = $1 AND accepted_at IS NULL AND revoked_at IS NULL
               AND expires_at > now()
             FOR UPDATE"
        ))
        .bind(&digest[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(AppError::from)
    }
    .await;
    let stored = match found {
        Ok(Some(row)) => row,
        Ok(None) | Err(AppError::TenantNotFound) => return Err(NO_INVITATION),
        Err(other) => return Err(other),
    };
    let row = stored.id;
    // A row from before addresses were sealed is bound to no link: the key
    // job seals it (and revokes it if pending); its link is not honoured.
    if stored.email_sealed.is_none() {
        tracing::warn!(%tenant, invitation = %row, "an invitation not sealed yet was not accepted");
        return Err(NO_INVITATION);
    }
    // An address that does not open for this row and link (a row revived
    // or re-pointed at another link behind the service's back) is no
    // invitation: nothing is opened, made or answered for it.
    let mut keys = TenantKeys::new(&state.keyring, tenant);
    let Invitation {
        id, email, role, ..
    } = match stored.open(&mut keys, &mut tx).await {
        Ok(invitation) => invitation,
        Err(e) => {
            tracing::warn!(%tenant, invitation = %row, error = ?e, "an invitation's address does not open for its link");
            return Err(NO_INVITATION);
        }
    };

    // The account: an existing password is proved, a missing one is set.
    let existing: Option<String> =
        sqlx::query_scalar("SELECT password_hash FROM app.login_lookup($1)")
            .bind(&email)
            .fetch_optional(&state.auth_db)
            .await?;
    let usable = existing.filter(|h| h.starts_with("$argon2"));
    if let Some(hash) = usable {
        if !crate::domain::password::verify_password(&state, body.password, Some(hash)).await? {
            return Err(AppError::Unauthorized(
                "The password does not match this account",
            ));
        }
    } else {
        crate::domain::password::check(&body.password, &email)?;
        let hash = crate::domain::password::hash_new_password(&state, body.password).await?;
        let claimed: Option<Uuid> = sqlx::query_scalar("SELECT app.claim_account($1, $2)")
            .bind(&email)
            .bind(hash)
            .fetch_one(&state.auth_db)
            .await?;
        if claimed.is_none() {
            return Err(AppError::Conflict(
                "The account was set up meanwhile; accept again with its password".to_owned(),
            ));
        }
    }
    let user = add_member(&state, &mut tx, tenant, &email, &role).await?;
    sqlx::query("UPDATE app.invitations SET accepted_at = now(), accepted_by = $2 WHERE id = $1")
        .bind(id)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    crate::domain::audit::record(
        &mut tx,
        tenant,
        user,
        "invitation.accepted",
        Some(&pii::mask_email(&email)),
        json!({"invitation_id": id, "role": role}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(
        json!({"tenant_id": tenant, "user_id": user, "email": email, "role": role}),
    ))
}

/// Makes the account of `email` a member of `tenant` with `role`, through
/// `conn` (a transaction in that tenant's context): the credential role
/// grants, the insert consumes the grant. Returns the account; 409 when it
/// is a member already.
pub(crate) async fn add_member(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    email: &str,
    role: &str,
) -> AppResult<Uuid> {
    let user: Uuid = sqlx::query_scalar("SELECT app.grant_membership($1, $2)")
        .bind(tenant)
        .bind(email)
        .fetch_one(&state.auth_db)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO app.tenant_memberships (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(role)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(AppError::Conflict(
            "Already a member of this tenant".to_owned(),
        ));
    }
    Ok(user)
}
