//! Tenant provisioning: everything a new tenant starts with, in the one
//! transaction that creates it (seed 002, REQ-MT-B006): its plan, the owner's
//! membership and a first workspace, the role set of the policies, default
//! categories and email templates, the default configuration as version 1,
//! optionally demo data, a welcome email to the owner (through the mail
//! outbox), and an audit entry. Either all of it exists or none of it.
//!
//! Runs on the owner role's connection (creating a tenant is a catalog
//! change); every tenant row is written through the new tenant's own
//! signed context, never with a bypass.

use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// What a super admin asks for.
pub struct NewTenant<'a> {
    pub slug: &'a str,
    pub name: &'a str,
    pub display_name: Option<&'a str>,
    pub plan: &'a str,
    pub owner_email: &'a str,
    pub demo_data: bool,
}

const CATEGORIES: [&str; 4] = ["General", "Support", "Sales", "Billing"];

/// The owner's membership and a first workspace they administer (inside
/// the tenant's context). Returns the workspace.
pub async fn owner_and_workspace(conn: &mut PgConnection, owner: Uuid) -> AppResult<Uuid> {
    sqlx::query("INSERT INTO app.tenant_memberships (user_id, role) VALUES ($1, 'owner')")
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    let workspace: Uuid = sqlx::query_scalar(
        "INSERT INTO app.workspaces (name, created_by) VALUES ('General', $1) RETURNING id",
    )
    .bind(owner)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO app.workspace_members (workspace_id, user_id, role) VALUES ($1, $2, 'admin')",
    )
    .bind(workspace)
    .bind(owner)
    .execute(&mut *conn)
    .await?;
    // This runs as the owner role, for which memberships are not forced:
    // name the tenant, or the user's memberships in every tenant match.
    sqlx::query(
        "UPDATE app.tenant_memberships SET default_workspace_id = $1
         WHERE user_id = $2 AND tenant_id = tenancy.current_tenant_id()",
    )
    .bind(workspace)
    .bind(owner)
    .execute(&mut *conn)
    .await?;
    Ok(workspace)
}

/// Creates and provisions a tenant; returns its id and its owner's.
pub async fn provision(
    state: &AppState,
    actor: Uuid,
    new: &NewTenant<'_>,
) -> AppResult<(Uuid, Uuid)> {
    let mut tx = state.admin_db.begin().await?;
    let plan: Option<(String,)> = sqlx::query_as("SELECT name FROM app.plans WHERE name = $1")
        .bind(new.plan)
        .fetch_optional(&mut *tx)
        .await?;
    if plan.is_none() {
        let known: Vec<String> = sqlx::query_scalar("SELECT name FROM app.plans ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        return Err(AppError::Validation(format!(
            "unknown plan {:?}; plans are {}",
            new.plan,
            known.join(", ")
        )));
    }
    let tenant: Uuid = sqlx::query_scalar("SELECT tenancy.create_tenant($1, $2, $3)")
        .bind(new.slug)
        .bind(new.name)
        .bind(new.display_name)
        .fetch_one(&mut *tx)
        .await
        .map_err(AppError::user_facing)?;
    let owner: Uuid = sqlx::query_scalar("SELECT app.ensure_user($1)")
        .bind(new.owner_email)
        .fetch_one(&mut *tx)
        .await?;
    populate(state, &mut tx, tenant, owner, actor, new).await?;
    tx.commit().await?;
    Ok((tenant, owner))
}

/// Everything a tenant starts with, written through its own context on
/// the owner role's transaction `tx`, in which the tenant's catalog row
/// exists and is active.
pub async fn populate(
    state: &AppState,
    tx: &mut PgConnection,
    tenant: Uuid,
    owner: Uuid,
    actor: Uuid,
    new: &NewTenant<'_>,
) -> AppResult<()> {
    crate::domain::context::enter(tx, &state.keys, tenant, owner).await?;
    sqlx::query("INSERT INTO app.tenant_plans (plan) VALUES ($1)")
        .bind(new.plan)
        .execute(&mut *tx)
        .await?;
    let workspace = owner_and_workspace(tx, owner).await?;

    for (scope, role, permissions) in state.authz.role_permissions() {
        sqlx::query("INSERT INTO app.tenant_roles (scope, role, permissions) VALUES ($1, $2, $3)")
            .bind(scope)
            .bind(role)
            .bind(&permissions)
            .execute(&mut *tx)
            .await?;
    }
    for (position, name) in CATEGORIES.iter().enumerate() {
        sqlx::query("INSERT INTO app.categories (name, position) VALUES ($1, $2)")
            .bind(name)
            .bind(position as i32)
            .execute(&mut *tx)
            .await?;
    }
    // The tenant's own copies of the built-in templates, to edit.
    for (key, subject, body) in crate::domain::mail::BUILT_IN {
        sqlx::query("INSERT INTO app.email_templates (key, subject, body) VALUES ($1, $2, $3)")
            .bind(key)
            .bind(subject)
            .bind(body)
            .execute(&mut *tx)
            .await?;
    }
    let defaults = Value::Object(crate::domain::tenant_config::defaults());
    sqlx::query(
        "INSERT INTO app.tenant_config_versions (version, kind, value, changes, changed_by)
         VALUES (1, 'config', $1, $2, $3)",
    )
    .bind(&defaults)
    .bind(json!({"provisioned": "defaults"}))
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    if new.demo_data {
        demo_data(tx, owner, workspace).await?;
    }
    let welcome = crate::domain::mail::render(tx, "welcome", new.owner_email.trim(), None).await?;
    sqlx::query(
        "INSERT INTO app.email_outbox (recipient, template, subject, body, html)
         VALUES ($1, 'welcome', $2, $3, $4)",
    )
    .bind(new.owner_email.trim())
    .bind(welcome.subject)
    .bind(welcome.text)
    .bind(welcome.html)
    .execute(&mut *tx)
    .await?;
    crate::domain::audit::record(
        tx,
        tenant,
        actor,
        "tenant.created",
        Some(&tenant.to_string()),
        json!({"slug": new.slug, "plan": new.plan, "owner_email": new.owner_email.trim(), "demo_data": new.demo_data}),
    )
    .await?;
    Ok(())
}

/// A board with a few tasks in the first workspace, to look around.
async fn demo_data(conn: &mut PgConnection, owner: Uuid, workspace: Uuid) -> AppResult<()> {
    let board: Uuid = sqlx::query_scalar(
        "INSERT INTO app.boards (workspace_id, name) VALUES ($1, 'Getting started') RETURNING id",
    )
    .bind(workspace)
    .fetch_one(&mut *conn)
    .await?;
    for (title, status) in [
        ("Invite your team", "todo"),
        ("Set your branding", "doing"),
        ("Create your first workspace", "done"),
    ] {
        sqlx::query(
            "INSERT INTO app.tasks (board_id, title, status, created_by) VALUES ($1, $2, $3, $4)",
        )
        .bind(board)
        .bind(title)
        .bind(status)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
