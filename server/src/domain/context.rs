//! The tenant context of a transaction: the one function that sets it,
//! with a token signed for the tenant and the user, which PostgreSQL
//! verifies (`tenancy.set_token`). The request path sets the same token
//! inside `app.begin_request` (one round trip with the caller's
//! membership); everything else (jobs, provisioning, denials written to a
//! trail, links used without a session) goes through [`enter`].

use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::sessions::Keys;
use crate::error::AppResult;

/// Sets `tenant`'s signed context, acting as `user` (the nil user for the
/// service itself), for the rest of the transaction on `conn`.
pub async fn enter(
    conn: &mut PgConnection,
    keys: &Keys,
    tenant: Uuid,
    user: Uuid,
) -> AppResult<()> {
    sqlx::query("SELECT tenancy.set_token($1)")
        .bind(keys.context_token(tenant, user)?)
        .execute(conn)
        .await?;
    Ok(())
}
