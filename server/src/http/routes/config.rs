//! Tenant configuration and branding (seed 002, REQ-MT-B005), versioned.
//!
//! `GET/PUT /api/tenant/config`: the validated configuration (see
//! `tenant_config`), defaults for what the tenant has not set; owners and
//! admins. `GET/PUT /api/tenant/branding`: display name, logo URL, primary
//! colour (every member reads, owners and admins change). Every change is a
//! new version (who, when, what changed, the whole document after it) and an
//! audit entry; `GET /api/tenant/config/versions[/{n}]` reads them and
//! `POST /api/tenant/config/versions/{n}/restore` brings one back as a new
//! version.
//!
//! One store: the catalog's `configuration` document, which every request
//! loads. The schema keys there are the configuration; the versions are its
//! history. `PUT /api/tenant/settings` (routes::tenant) replaces the whole
//! document and is versioned here too ([`settings_written`]).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::authz::Action;
use crate::domain::tenant_config;
use crate::error::{AppError, AppResult};
use crate::http::extract::{AppJson, AppPath};
use crate::http::routes::Routes;
use crate::http::tenant::decide::Decided;
use crate::http::tenant::{Db, DbGuard, Tenant};
use crate::state::AppState;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(read_config, update_config))
        .routes(routes!(versions))
        .routes(routes!(version))
        .routes(routes!(restore))
        .routes(routes!(read_branding, update_branding))
        .routes(routes!(list_templates))
        .routes(routes!(put_template, delete_template))
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct Template {
    key: String,
    locale: String,
    subject: String,
    body: String,
}

/// The tenant's mail templates (every key and locale it keeps).
#[utoipa::path(get, path = "/api/tenant/email-templates", tag = "tenant configuration",
    responses((status = 200, description = "`templates`: the tenant's templates (`key`, `locale`, \
        `subject`, `body`), by key and locale; `keys`: the template keys a tenant may change \
        (`welcome`, `invitation`)", body = serde_json::Value)))]
async fn list_templates(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
    )
    .await?;
    let rows: Vec<Template> = sqlx::query_as(
        "SELECT key, locale, subject, body FROM app.email_templates ORDER BY key, locale",
    )
    .fetch_all(db.conn(decided)?)
    .await?;
    Ok(Json(
        json!({"templates": rows, "keys": crate::domain::mail::EDITABLE}),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TemplateBody {
    #[serde(default)]
    locale: String,
    subject: String,
    body: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LocaleQuery {
    /// The locale of the text to remove (absent or empty: the text for every other locale).
    #[serde(default)]
    locale: String,
}

/// A template key the tenant may change; 404 for any other (password
/// resets and address confirmations keep the service's text).
fn template_key(key: &str) -> AppResult<&str> {
    crate::domain::mail::EDITABLE
        .iter()
        .copied()
        .find(|k| *k == key)
        .ok_or(AppError::NotFound("Template"))
}

fn template_locale(locale: &str) -> AppResult<()> {
    let valid = locale.is_empty()
        || tenant_config::validate(&Map::from_iter([("locale".to_owned(), json!(locale))])).is_ok();
    if valid {
        Ok(())
    } else {
        Err(AppError::Validation(
            "locale must be empty, a language (fr) or a locale (fr-FR)".to_owned(),
        ))
    }
}

/// Sets the tenant's text for a mail, in one locale (`""`: every other).
/// Text only: the HTML part is built from it in the tenant's branding.
#[utoipa::path(put, path = "/api/tenant/email-templates/{key}", tag = "tenant configuration",
    params(("key" = String, Path, description = "Template key: `welcome` or `invitation`")),
    request_body(content = TemplateBody,
        description = "`locale`: empty (default, every other locale), a language (fr) or a locale \
            (fr-FR); `subject`: one line of 1 to 300 characters; `body`: 1 to 20000 characters"),
    responses((status = 200, description = "The template as stored", body = Template)))]
async fn put_template(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(key): AppPath<String>,
    AppJson(body): AppJson<TemplateBody>,
) -> AppResult<Json<Template>> {
    let key = template_key(&key)?;
    template_locale(&body.locale)?;
    let subject = body.subject.trim();
    if subject.is_empty() || subject.chars().count() > 300 || subject.contains(['\r', '\n']) {
        return Err(AppError::Validation(
            "subject must be one line of 1 to 300 characters".to_owned(),
        ));
    }
    if body.body.trim().is_empty() || body.body.chars().count() > 20_000 || body.body.contains('\0')
    {
        return Err(AppError::Validation(
            "body must be 1 to 20000 characters".to_owned(),
        ));
    }
    // The invitee's address is kept sealed: its mail's text, which stays in
    // the outbox, does not name it.
    if key == "invitation" && (subject.contains("{email}") || body.body.contains("{email}")) {
        return Err(AppError::Validation(
            "the invitation's text cannot name the address ({email}): invitees' addresses are kept sealed".to_owned(),
        ));
    }
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
    )
    .await?;
    let row: Template = sqlx::query_as(
        "INSERT INTO app.email_templates (key, locale, subject, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, key, locale) DO UPDATE SET subject = EXCLUDED.subject, body = EXCLUDED.body
         RETURNING key, locale, subject, body",
    )
    .bind(key)
    .bind(&body.locale)
    .bind(subject)
    .bind(&body.body)
    .fetch_one(db.conn(decided)?)
    .await?;
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "email_template.updated",
        Some(key),
        json!({"locale": body.locale}),
    )
    .await?;
    Ok(Json(row))
}

/// Removes the tenant's text for a mail in one locale: the next in line
/// (its language, no locale, the built-in text) applies.
#[utoipa::path(delete, path = "/api/tenant/email-templates/{key}", tag = "tenant configuration",
    params(("key" = String, Path, description = "Template key: `welcome` or `invitation`"),
        LocaleQuery),
    responses((status = 204, description = "Removed")))]
async fn delete_template(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(key): AppPath<String>,
    crate::http::extract::AppQuery(query): crate::http::extract::AppQuery<LocaleQuery>,
) -> AppResult<axum::http::StatusCode> {
    let key = template_key(&key)?;
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
    )
    .await?;
    let done = sqlx::query("DELETE FROM app.email_templates WHERE key = $1 AND locale = $2")
        .bind(key)
        .bind(&query.locale)
        .execute(db.conn(decided)?)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::NotFound("Template"));
    }
    crate::http::routes::admin_action(
        &mut db,
        decided,
        &tenant,
        "email_template.deleted",
        Some(key),
        json!({"locale": query.locale}),
    )
    .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// The tenant's configuration document as every request loads it (the
/// catalog's `configuration`), schema keys and the tenant's own keys alike.
async fn loaded(db: &mut DbGuard<'_>, decided: Decided) -> AppResult<Map<String, Value>> {
    let document: Value = sqlx::query_scalar("SELECT configuration FROM tenancy.current_tenant()")
        .fetch_one(db.conn(decided)?)
        .await?;
    Ok(match document {
        Value::Object(map) => map,
        _ => Map::new(),
    })
}

/// The configuration in force (what requests load, with defaults for what
/// is not set) and its version (0: never changed).
async fn current_config(
    db: &mut DbGuard<'_>,
    decided: Decided,
) -> AppResult<(i32, Map<String, Value>)> {
    let version: Option<i32> = sqlx::query_scalar(
        "SELECT max(version) FROM app.tenant_config_versions WHERE kind = 'config'",
    )
    .fetch_one(db.conn(decided)?)
    .await?;
    let set = loaded(db, decided).await?;
    Ok((version.unwrap_or(0), tenant_config::effective(&set)))
}

/// Puts a configuration into the document requests load: its schema keys
/// replace the document's, the tenant's other keys stay.
async fn apply_config(
    db: &mut DbGuard<'_>,
    decided: Decided,
    config: &Map<String, Value>,
) -> AppResult<()> {
    let mut document = loaded(db, decided).await?;
    document.retain(|key, _| !tenant_config::is_key(key));
    document.extend(config.iter().map(|(k, v)| (k.clone(), v.clone())));
    sqlx::query("SELECT tenancy.set_current_tenant_configuration($1)")
        .bind(Value::Object(document))
        .execute(db.conn(decided)?)
        .await?;
    Ok(())
}

/// Versions a settings document written whole (`PUT /api/tenant/settings`):
/// its schema keys must be valid, and a change to them is a new version.
pub(crate) async fn settings_written(
    db: &mut DbGuard<'_>,
    decided: Decided,
    tenant: &Tenant,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
) -> AppResult<()> {
    let known: Map<String, Value> = after
        .iter()
        .filter(|(k, _)| tenant_config::is_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tenant_config::validate(&known).map_err(AppError::Validation)?;
    let (before, after) = (
        tenant_config::effective(before),
        tenant_config::effective(after),
    );
    let changes = tenant_config::changes(&before, &after);
    if changes.as_object().is_some_and(|c| !c.is_empty()) {
        new_version(db, decided, tenant, "config", &after, changes, None).await?;
    }
    Ok(())
}

async fn current_branding(db: &mut DbGuard<'_>, decided: Decided) -> AppResult<Map<String, Value>> {
    let (display_name, logo_url, primary_color): (String, Option<String>, Option<String>) =
        sqlx::query_as(
            "SELECT display_name, logo_url, primary_color FROM tenancy.current_tenant()",
        )
        .fetch_one(db.conn(decided)?)
        .await?;
    Ok(branding_map(display_name, logo_url, primary_color))
}

fn branding_map(
    display_name: String,
    logo_url: Option<String>,
    primary_color: Option<String>,
) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("display_name".to_owned(), json!(display_name));
    map.insert("logo_url".to_owned(), json!(logo_url));
    map.insert("primary_color".to_owned(), json!(primary_color));
    map
}

/// Writes a new version of `kind` and its audit entry; returns its number.
async fn new_version(
    db: &mut DbGuard<'_>,
    decided: Decided,
    tenant: &Tenant,
    kind: &str,
    value: &Map<String, Value>,
    changes: Value,
    restored_from: Option<i32>,
) -> AppResult<i32> {
    let conn = db.conn(decided)?;
    // One writer at a time per tenant, so version numbers never collide.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tenancy.config'), hashtext($1::text))")
        .bind(tenant.id)
        .execute(&mut *conn)
        .await?;
    let version: i32 = sqlx::query_scalar(
        "INSERT INTO app.tenant_config_versions (version, kind, value, changes, changed_by, restored_from)
         SELECT coalesce(max(version), 0) + 1, $1, $2, $3, $4, $5 FROM app.tenant_config_versions
         RETURNING version",
    )
    .bind(kind)
    .bind(Value::Object(value.clone()))
    .bind(&changes)
    .bind(tenant.user_id)
    .bind(restored_from)
    .fetch_one(&mut *conn)
    .await?;
    let action = match (kind, restored_from) {
        (_, Some(_)) => "config.restored",
        ("branding", None) => "branding.updated",
        _ => "config.updated",
    };
    crate::domain::audit::record(
        conn,
        tenant.id,
        tenant.user_id,
        action,
        Some(&format!("version {version}")),
        json!({"kind": kind, "changes": changes, "restored_from": restored_from}),
    )
    .await?;
    Ok(version)
}

#[utoipa::path(get, path = "/api/tenant/config", tag = "tenant configuration",
    responses((status = 200, description = "`version`: the current version (0: never changed); \
        `config`: every key (`locale`, `timezone`, `date_format`, `allow_public_signup`, \
        `session_timeout_minutes`, `audit_retention_days`, `support_email`), \
        with defaults for those not set", body = serde_json::Value)))]
async fn read_config(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
    )
    .await?;
    let (version, config) = current_config(&mut db, decided).await?;
    Ok(Json(json!({"version": version, "config": config})))
}

#[utoipa::path(put, path = "/api/tenant/config", tag = "tenant configuration",
    request_body(content = serde_json::Value,
        description = "A JSON object of the keys to change (at least one; the others are kept), \
            among `locale`, `timezone`, `date_format`, `allow_public_signup`, \
            `session_timeout_minutes`, `audit_retention_days`, `support_email`"),
    responses((status = 200, description = "A new version: `version`, its number; `config`, \
        the whole configuration after the change", body = serde_json::Value)))]
async fn update_config(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<Value>,
) -> AppResult<Json<Value>> {
    let Value::Object(update) = body else {
        return Err(AppError::Validation(
            "configuration must be a JSON object".to_owned(),
        ));
    };
    if update.is_empty() {
        return Err(AppError::Validation(
            "nothing to update: give at least one key".to_owned(),
        ));
    }
    tenant_config::validate(&update).map_err(AppError::Validation)?;
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
    )
    .await?;
    let (_, before) = current_config(&mut db, decided).await?;
    let mut after = before.clone();
    after.extend(update);
    let changes = tenant_config::changes(&before, &after);
    let version = new_version(&mut db, decided, &tenant, "config", &after, changes, None).await?;
    apply_config(&mut db, decided, &after).await?;
    Ok(Json(json!({"version": version, "config": after})))
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct Version {
    version: i32,
    kind: String,
    changes: Value,
    changed_by: Option<Uuid>,
    changed_at: DateTime<Utc>,
    restored_from: Option<i32>,
}

#[utoipa::path(get, path = "/api/tenant/config/versions", tag = "tenant configuration",
    responses((status = 200, description = "Every version of the configuration and the \
        branding, newest first (who, when, what changed)", body = [Version])))]
async fn versions(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<Json<Vec<Version>>> {
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
    )
    .await?;
    let rows = sqlx::query_as(
        "SELECT version, kind, changes, changed_by, changed_at, restored_from
         FROM app.tenant_config_versions ORDER BY version DESC",
    )
    .fetch_all(db.conn(decided)?)
    .await?;
    Ok(Json(rows))
}

#[derive(sqlx::FromRow)]
struct StoredVersion {
    kind: String,
    value: Value,
    changes: Value,
    changed_by: Option<Uuid>,
    changed_at: DateTime<Utc>,
    restored_from: Option<i32>,
}

/// A version's kind, its document, and the whole row as JSON.
async fn load_version(
    db: &mut DbGuard<'_>,
    decided: Decided,
    number: i32,
) -> AppResult<(String, Map<String, Value>, Value)> {
    let row: Option<StoredVersion> = sqlx::query_as(
        "SELECT kind, value, changes, changed_by, changed_at, restored_from
         FROM app.tenant_config_versions WHERE version = $1",
    )
    .bind(number)
    .fetch_optional(db.conn(decided)?)
    .await?;
    let Some(StoredVersion {
        kind,
        value: Value::Object(value),
        changes,
        changed_by,
        changed_at,
        restored_from,
    }) = row
    else {
        return Err(AppError::NotFound("Configuration version"));
    };
    let meta = json!({
        "version": number, "kind": kind, "value": value, "changes": changes,
        "changed_by": changed_by, "changed_at": changed_at, "restored_from": restored_from,
    });
    Ok((kind, value, meta))
}

#[utoipa::path(get, path = "/api/tenant/config/versions/{version}", tag = "tenant configuration",
    params(("version" = i32, Path, description = "Version number")),
    responses((status = 200, description = "The version: `version`, `kind` (`config` or \
        `branding`), `value` (the whole document after the change), `changes`, `changed_by`, \
        `changed_at`, `restored_from`", body = serde_json::Value)))]
async fn version(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(number): AppPath<i32>,
) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
    )
    .await?;
    Ok(Json(load_version(&mut db, decided, number).await?.2))
}

#[utoipa::path(post, path = "/api/tenant/config/versions/{version}/restore",
    tag = "tenant configuration",
    params(("version" = i32, Path, description = "Version number to bring back")),
    responses((status = 200, description = "Restored as a new version: `version`, its number; \
        `kind` (`config` or `branding`); `value`, the document now in force; `restored_from`",
        body = serde_json::Value)))]
async fn restore(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(number): AppPath<i32>,
) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
    )
    .await?;
    let (kind, value, _) = load_version(&mut db, decided, number).await?;
    let (before, after) = if kind == "branding" {
        let before = current_branding(&mut db, decided).await?;
        let after = apply_branding(
            &mut db,
            decided,
            value.get("display_name").and_then(Value::as_str),
            Some(value.get("logo_url").and_then(Value::as_str).unwrap_or("")),
            Some(
                value
                    .get("primary_color")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            ),
        )
        .await?;
        (before, after)
    } else {
        let (_, before) = current_config(&mut db, decided).await?;
        let after = tenant_config::effective(&value);
        // History is checked again before it is trusted.
        tenant_config::validate(&after).map_err(|e| {
            AppError::Validation(format!("version {number} cannot be restored: {e}"))
        })?;
        apply_config(&mut db, decided, &after).await?;
        (before, after)
    };
    let changes = tenant_config::changes(&before, &after);
    let version = new_version(
        &mut db,
        decided,
        &tenant,
        &kind,
        &after,
        changes,
        Some(number),
    )
    .await?;
    Ok(Json(
        json!({"version": version, "kind": kind, "value": after, "restored_from": number}),
    ))
}

#[utoipa::path(get, path = "/api/tenant/branding", tag = "tenant configuration",
    responses((status = 200, description = "`display_name`, `logo_url` and `primary_color` \
        (null when not set)", body = serde_json::Value)))]
async fn read_branding(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<Json<Map<String, Value>>> {
    let mut db = db.lock().await?;
    let decided =
        crate::http::tenant::decide::on_tenant(&state, &tenant, &mut db, Action::TenantView)
            .await?;
    Ok(Json(current_branding(&mut db, decided).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Branding {
    display_name: Option<String>,
    /// An http(s) URL; "" removes the logo.
    logo_url: Option<String>,
    /// #RRGGBB; "" removes the colour.
    primary_color: Option<String>,
}

async fn apply_branding(
    db: &mut DbGuard<'_>,
    decided: Decided,
    display_name: Option<&str>,
    logo_url: Option<&str>,
    primary_color: Option<&str>,
) -> AppResult<Map<String, Value>> {
    let (display_name, logo_url, primary_color): (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT * FROM tenancy.set_current_tenant_branding($1, $2, $3)")
            .bind(display_name)
            .bind(logo_url)
            .bind(primary_color)
            .fetch_one(db.conn(decided)?)
            .await
            .map_err(AppError::user_facing)?;
    Ok(branding_map(display_name, logo_url, primary_color))
}

#[utoipa::path(put, path = "/api/tenant/branding", tag = "tenant configuration",
    request_body(content = Branding, description = "At least one field; absent fields are kept"),
    responses((status = 200, description = "A new version: `version`, its number; `branding`, \
        `display_name`, `logo_url` and `primary_color` after the change",
        body = serde_json::Value)))]
async fn update_branding(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<Branding>,
) -> AppResult<Json<Value>> {
    if body.display_name.is_none() && body.logo_url.is_none() && body.primary_color.is_none() {
        return Err(AppError::Validation(
            "nothing to update: give display_name, logo_url and/or primary_color".to_owned(),
        ));
    }
    if let Some(logo) = body.logo_url.as_deref().filter(|l| !l.is_empty()) {
        let markup = logo
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>\"'`\\".contains(c));
        if !logo.starts_with("https://") || logo.len() > 2048 || markup {
            return Err(AppError::Validation(
                "logo_url must be an https URL of at most 2048 characters, without spaces, quotes or angle brackets"
                    .to_owned(),
            ));
        }
    }
    let mut db = db.lock().await?;
    let decided = crate::http::tenant::decide::on_tenant(
        &state,
        &tenant,
        &mut db,
        Action::TenantManageSettings,
    )
    .await?;
    let before = current_branding(&mut db, decided).await?;
    let after = apply_branding(
        &mut db,
        decided,
        body.display_name.as_deref(),
        body.logo_url.as_deref(),
        body.primary_color.as_deref(),
    )
    .await?;
    let changes = tenant_config::changes(&before, &after);
    let version = new_version(&mut db, decided, &tenant, "branding", &after, changes, None).await?;
    Ok(Json(json!({"version": version, "branding": after})))
}
