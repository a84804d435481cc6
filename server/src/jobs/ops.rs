//! Operations run from the command line with the owner role: migrations,
//! the first super admin, a tenant with its owner. Their errors say what
//! failed and why, for an operator (`anyhow`), not as HTTP answers.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

use crate::config::Config;
use crate::domain::{password, sessions};
use anyhow::{bail, Context, Result};

use crate::error::AppError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../sql");

async fn owner_pool(config: &Config) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&config.database_owner_url)
        .await
        .context("cannot connect to the database as the owner role (DATABASE_OWNER_URL)")
}

fn app_role(config: &Config) -> Result<String> {
    let options = PgConnectOptions::from_str(&config.database_url)
        .context("DATABASE_URL is not a valid URL")?;
    Ok(options.get_username().to_owned())
}

/// Applies pending migrations, grants the application role what it needs,
/// registers the context-signing key and the deployment settings.
pub async fn migrate(config: &Config) -> Result<()> {
    let pool = owner_pool(config).await?;
    MIGRATOR.run(&pool).await.context("migration failed")?;

    let role = app_role(config)?;
    // Identifiers cannot be bound; quote_ident makes the role name safe.
    let quoted: String = sqlx::query_scalar("SELECT quote_ident($1)")
        .bind(&role)
        .fetch_one(&pool)
        .await?;
    let mut grants = pool.begin().await?;
    for statement in [
        format!("GRANT USAGE ON SCHEMA app TO {quoted}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {quoted}"),
        format!("REVOKE INSERT, UPDATE, DELETE ON app.users, app.settings FROM {quoted}"),
        // Credentials are the credential role's (DATABASE_AUTH_URL): the
        // application role reads users without their password hashes.
        format!("REVOKE SELECT ON app.users FROM {quoted}"),
        format!(
            "GRANT SELECT (id, email, display_name, is_super_admin, created_at) ON app.users TO {quoted}"
        ),
        format!("REVOKE UPDATE, DELETE ON app.audit_events FROM {quoted}"),
        format!("REVOKE INSERT, UPDATE, DELETE ON app.message_outbox FROM {quoted}"),
        // Memberships: added against the credential role's grants, and
        // never moved to another user or tenant.
        format!("REVOKE ALL ON app.membership_grants FROM {quoted}"),
        format!("REVOKE UPDATE ON app.tenant_memberships FROM {quoted}"),
        format!("GRANT UPDATE (role, default_workspace_id) ON app.tenant_memberships TO {quoted}"),
        // Plans, limits, usage, roles and mail are written by the owner role
        // (administration, provisioning, triggers); history is append-only.
        format!(
            "REVOKE INSERT, UPDATE, DELETE ON app.plans, app.tenant_plans, app.tenant_usage,
             app.tenant_usage_shards, app.tenant_roles, app.email_outbox FROM {quoted}"
        ),
        format!("REVOKE UPDATE, DELETE ON app.tenant_config_versions FROM {quoted}"),
        // Mail bodies carry one-time links (invitations, password resets):
        // the application role sees the outbox without them.
        format!("REVOKE SELECT ON app.email_outbox FROM {quoted}"),
        format!(
            "GRANT SELECT (tenant_id, id, recipient, template, subject, created_at, sent_at,
                           attempts, next_attempt_at, last_error) ON app.email_outbox TO {quoted}"
        ),
        // Sessions and password resets are the credential role's alone.
        format!(
            "REVOKE ALL ON app.sessions, app.spent_refresh_tokens, app.password_resets, app.signups,
             app.login_events, app.tenant_deletions, app.tenant_signups FROM {quoted}"
        ),
        // A tenant's first data key is added by the application role;
        // rotations go through app.rotate_tenant_key, and only the owner
        // role rewraps or destroys keys or registers platform keys.
        format!("REVOKE UPDATE, DELETE ON app.tenant_keys FROM {quoted}"),
        format!("REVOKE ALL ON app.platform_keys FROM {quoted}"),
        // A claim is verified by the owner role alone, after the DNS check.
        format!("REVOKE INSERT, UPDATE ON app.domain_claims FROM {quoted}"),
        format!(
            "GRANT INSERT (tenant_id, domain, token, requested_by, requested_at)
             ON app.domain_claims TO {quoted}"
        ),
    ] {
        // One transaction: no moment in which the broad grant holds
        // without the revocations that narrow it.
        sqlx::query(&statement).execute(&mut *grants).await?;
    }
    grants.commit().await?;

    let registered: Option<(String,)> =
        sqlx::query_as("SELECT kid FROM tenancy.key_list WHERE kid = $1")
            .bind(&config.context_kid)
            .fetch_optional(&pool)
            .await?;
    if registered.is_none() {
        sqlx::query("SELECT tenancy.add_key($1, 'HS256', $2)")
            .bind(&config.context_kid)
            .bind(&config.context_secret)
            .execute(&pool)
            .await?;
        tracing::info!(kid = %config.context_kid, "registered the context-signing key");
    }
    match config.base_domain() {
        Some(base) => sqlx::query("SELECT tenancy.set_setting('base_domain', $1)").bind(base),
        None => sqlx::query("SELECT tenancy.reset_setting('base_domain')"),
    }
    .execute(&pool)
    .await?;
    sqlx::query("UPDATE app.settings SET single_tenant_users = $1")
        .bind(config.single_tenant_users)
        .execute(&pool)
        .await?;
    Ok(())
}

/// Reverts the last `steps` migrations.
pub async fn migrate_down(config: &Config, steps: usize) -> Result<()> {
    let pool = owner_pool(config).await?;
    let applied: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations ORDER BY version DESC")
            .fetch_all(&pool)
            .await?;
    let target = applied.get(steps).map(|(v,)| *v).unwrap_or(0);
    MIGRATOR
        .undo(&pool, target)
        .await
        .context("reverting migrations failed")
}

/// Hashes a password for `email` that passes the policy ([`crate::domain::password`]).
async fn hash(password: String, email: &str) -> Result<String> {
    crate::domain::password::check(&password, email.trim())?;
    Ok(
        tokio::task::spawn_blocking(move || password::hash_password(&password))
            .await
            .context("password hashing stopped")??,
    )
}

async fn owner_conn(config: &Config) -> Result<sqlx::PgConnection> {
    sqlx::PgConnection::connect(&config.database_owner_url)
        .await
        .context("cannot connect to the database as the owner role (DATABASE_OWNER_URL)")
}

/// The user with this email, created with `password_hash` if new.
async fn upsert_user(
    conn: &mut sqlx::PgConnection,
    email: &str,
    password_hash: &str,
) -> Result<Uuid> {
    // An existing account keeps its password; one that has none yet
    // (invited, never accepted) gets this one.
    Ok(sqlx::query_scalar(
        "INSERT INTO app.users (email, password_hash) VALUES ($1, $2)
         ON CONFLICT (lower(email)) DO UPDATE SET password_hash = CASE
             WHEN app.users.password_hash LIKE '$argon2%' THEN app.users.password_hash
             ELSE EXCLUDED.password_hash END
         RETURNING id",
    )
    .bind(email.trim())
    .bind(password_hash)
    .fetch_one(conn)
    .await?)
}

/// Sets the tenant's signed context in the transaction, as the service does.
async fn enter_tenant(
    conn: &mut sqlx::PgConnection,
    config: &Config,
    tenant: Uuid,
    user: Uuid,
) -> Result<()> {
    crate::domain::context::enter(conn, &sessions::Keys::new(config), tenant, user).await?;
    Ok(())
}

/// Creates (or promotes) a super admin: platform actions only, no tenant.
pub async fn create_super_admin(config: &Config, email: &str, password: String) -> Result<Uuid> {
    let pool = owner_pool(config).await?;
    let password_hash = hash(password, email).await?;
    let id = sqlx::query_scalar(
        "INSERT INTO app.users (email, password_hash, is_super_admin) VALUES ($1, $2, true)
         ON CONFLICT (lower(email)) DO UPDATE SET is_super_admin = true, password_hash = CASE
             WHEN app.users.password_hash LIKE '$argon2%' THEN app.users.password_hash
             ELSE EXCLUDED.password_hash END
         RETURNING id",
    )
    .bind(email.trim())
    .bind(password_hash)
    .fetch_one(&pool)
    .await?;
    Ok(id)
}

/// A new tenant, its owner (created if the email is new) and a first
/// workspace, in one transaction, written through the tenant's own context.
pub async fn create_tenant(
    config: &Config,
    slug: &str,
    name: &str,
    owner_email: &str,
    owner_password: String,
) -> Result<(Uuid, Uuid)> {
    let password_hash = hash(owner_password, owner_email).await?;
    let mut conn = owner_conn(config).await?;
    let mut tx = conn.begin().await?;
    let tenant: Uuid = sqlx::query_scalar("SELECT tenancy.create_tenant($1, $2)")
        .bind(slug)
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(AppError::user_facing)?;
    let owner = upsert_user(&mut tx, owner_email, &password_hash).await?;
    enter_tenant(&mut tx, config, tenant, owner).await?;
    crate::domain::provision::owner_and_workspace(&mut tx, owner).await?;
    tx.commit().await?;
    Ok((tenant, owner))
}

/// Adds an existing or new user to a tenant with a tenant role.
pub async fn add_member(
    config: &Config,
    tenant: Uuid,
    email: &str,
    password: String,
    role: &str,
) -> Result<Uuid> {
    if !matches!(role, "owner" | "admin" | "member") {
        bail!(AppError::Validation(format!(
            "role must be owner, admin or member; got {role:?}"
        )));
    }
    let password_hash = hash(password, email).await?;
    let mut conn = owner_conn(config).await?;
    let mut tx = conn.begin().await?;
    let user = upsert_user(&mut tx, email, &password_hash).await?;
    enter_tenant(&mut tx, config, tenant, user).await?;
    sqlx::query("INSERT INTO app.tenant_memberships (user_id, role) VALUES ($1, $2)")
        .bind(user)
        .bind(role)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(user)
}

/// Rewraps every tenant's data key under TENANCY_DATA_KEY, opening those
/// still under the previous platform key with TENANCY_DATA_KEY_PREVIOUS.
/// Sealed values are not touched. Returns how many keys were rewrapped;
/// once it has run, the previous platform key can be retired.
pub async fn rotate_data_key(config: &Config) -> Result<u64> {
    let keyring = crate::domain::keyring::Keyring::from_config(config)?;
    let pool = owner_pool(config).await?;
    let done = crate::jobs::keys::rewrap_all(&pool, &keyring)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if done.skipped > 0 {
        bail!(
            "{} data keys rewrapped; {} do not open with the keys given (see the log) and are still under their old platform key",
            done.rewrapped,
            done.skipped
        );
    }
    Ok(done.rewrapped)
}
