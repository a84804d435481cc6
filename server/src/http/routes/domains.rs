//! Custom domains, managed by a tenant's admins (`tenant:update`):
//!
//! - `POST /api/tenant/domains` `{"domain": "tasks.acme.io"}` claims a
//!   domain: 201 with the DNS TXT record that proves control of it.
//! - `POST /api/tenant/domains/{domain}/verify` looks the record up; once
//!   it holds the claim's value, the domain is mapped to the tenant
//!   (`tenancy.domains`) and requests to it resolve to the tenant.
//! - `GET /api/tenant/domains` lists the tenant's claims, verified or not.
//! - `DELETE /api/tenant/domains/{domain}` removes the claim and, if
//!   verified, the mapping.
//!
//! A claim reserves nothing: several tenants may claim a name, the first to
//! publish its record gets it, and a domain already mapped stays with its
//! tenant. Each step is in the tenant's audit trail.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::Resolver;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa_axum::routes;

use crate::domain::authz::Action;
use crate::error::{AppError, AppResult};
use crate::http::extract::{AppJson, AppPath};
use crate::http::routes::bypass;
use crate::http::routes::Routes;
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

/// Claims, verified or pending, one tenant may hold.
pub const MAX_CLAIMS: i64 = 20;

/// The label under the domain where the proof is published.
pub const CHALLENGE_LABEL: &str = "_tenancy-challenge";

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(list, claim))
        .routes(routes!(remove))
        .routes(routes!(verify))
}

#[derive(sqlx::FromRow)]
struct Claim {
    domain: String,
    token: String,
    requested_at: DateTime<Utc>,
    verified_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ClaimView {
    domain: String,
    /// `pending` or `verified`.
    status: &'static str,
    requested_at: DateTime<Utc>,
    verified_at: Option<DateTime<Utc>>,
    /// The record to publish: `name` IN TXT `value`.
    verification: Value,
}

impl From<Claim> for ClaimView {
    fn from(c: Claim) -> Self {
        ClaimView {
            verification: json!({
                "type": "TXT",
                "name": format!("{CHALLENGE_LABEL}.{}", c.domain),
                "value": expected_value(&c.token),
            }),
            status: if c.verified_at.is_some() {
                "verified"
            } else {
                "pending"
            },
            domain: c.domain,
            requested_at: c.requested_at,
            verified_at: c.verified_at,
        }
    }
}

fn expected_value(token: &str) -> String {
    format!("tenancy-verification={token}")
}

const CLAIM: &str = "SELECT domain, token, requested_at, verified_at FROM app.domain_claims";

/// `domain` as the catalog stores it (lower case, no trailing dot), the
/// rules of `tenancy.normalize_host` without a port, or 422.
fn normalized(state: &AppState, domain: &str) -> AppResult<String> {
    let invalid = || {
        AppError::Validation(
            "domain must be a fully qualified host name, such as tasks.example.com".to_owned(),
        )
    };
    let host = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if !host.contains('.')
        || !crate::http::tenant::is_host_name(&host)
        || host.parse::<std::net::IpAddr>().is_ok()
    {
        return Err(invalid());
    }
    // The base domain's names are the tenants' subdomains, not claimable.
    if let Some(base) = state.config.base_domain() {
        if host == base || host.ends_with(&format!(".{base}")) {
            return Err(AppError::Validation(format!(
                "names under {base} are tenant subdomains and cannot be claimed"
            )));
        }
    }
    Ok(host)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ClaimRequest {
    domain: String,
}

#[utoipa::path(post, path = "/api/tenant/domains", tag = "domains",
    request_body(content = ClaimRequest,
        description = "A fully qualified host name, outside the service's base domain"),
    responses((status = 201, description = "Claimed, pending: publish the TXT record of \
        `verification`, then verify", body = ClaimView)))]
async fn claim(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<ClaimRequest>,
) -> AppResult<(StatusCode, Json<ClaimView>)> {
    let mut db = db.lock().await?;
    let decided =
        crate::http::tenant::decide::on_tenant(&state, &tenant, &mut db, Action::TenantUpdate)
            .await?;
    let domain = normalized(&state, &body.domain)?;
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM app.domain_claims")
        .fetch_one(db.conn(decided)?)
        .await?;
    if held >= MAX_CLAIMS {
        return Err(AppError::LimitReached(format!(
            "A tenant may hold at most {MAX_CLAIMS} custom domains"
        )));
    }
    let (secret, _) = crate::domain::sessions::new_secret();
    let claim: Option<Claim> = sqlx::query_as(
        "INSERT INTO app.domain_claims (domain, token, requested_by) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, domain) DO NOTHING
         RETURNING domain, token, requested_at, verified_at",
    )
    .bind(&domain)
    .bind(&secret[..32])
    .bind(tenant.user_id)
    .fetch_optional(db.conn(decided)?)
    .await?;
    let Some(claim) = claim else {
        return Err(AppError::Conflict(
            "This tenant has already claimed this domain".to_owned(),
        ));
    };
    crate::domain::audit::record(
        db.conn(decided)?,
        tenant.id,
        tenant.user_id,
        "domain.claimed",
        Some(&domain),
        json!({}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(claim.into())))
}

#[utoipa::path(get, path = "/api/tenant/domains", tag = "domains",
    responses((status = 200, description = "`domains`: the tenant's claims, verified or pending, \
        by domain (each `domain`, `status`, `requested_at`, `verified_at`, `verification`)",
        body = serde_json::Value)))]
async fn list(State(state): State<AppState>, tenant: Tenant, db: Db) -> AppResult<Json<Value>> {
    let mut db = db.lock().await?;
    let decided =
        crate::http::tenant::decide::on_tenant(&state, &tenant, &mut db, Action::TenantUpdate)
            .await?;
    let claims: Vec<Claim> = sqlx::query_as(&format!("{CLAIM} ORDER BY domain"))
        .fetch_all(db.conn(decided)?)
        .await?;
    let claims: Vec<ClaimView> = claims.into_iter().map(ClaimView::from).collect();
    Ok(Json(json!({ "domains": claims })))
}

/// The tenant's claim on `domain` (404 if none), for an admin about to
/// verify or remove it. The request's transaction ends here: no connection
/// is held while the DNS answers or the owner role works.
async fn claim_to_change(
    state: &AppState,
    tenant: &Tenant,
    db: &Db,
    domain: &str,
) -> AppResult<Claim> {
    let mut db = db.lock().await?;
    let decided =
        crate::http::tenant::decide::on_tenant(state, tenant, &mut db, Action::TenantUpdate)
            .await?;
    let domain = normalized(state, domain).map_err(|_| AppError::NotFound("Domain"))?;
    let claim = sqlx::query_as(&format!("{CLAIM} WHERE domain = $1"))
        .bind(&domain)
        .fetch_optional(db.conn(decided)?)
        .await?
        .ok_or(AppError::NotFound("Domain"))?;
    db.discard().await?;
    Ok(claim)
}

#[utoipa::path(post, path = "/api/tenant/domains/{domain}/verify", tag = "domains",
    params(("domain" = String, Path, description = "A domain the tenant has claimed")),
    responses((status = 200, description = "Verified: the TXT record holds the claim's value and \
        the domain now resolves to the tenant (also when it was already verified)",
        body = ClaimView)))]
async fn verify(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(domain): AppPath<String>,
) -> AppResult<Json<ClaimView>> {
    let claim = claim_to_change(&state, &tenant, &db, &domain).await?;
    if claim.verified_at.is_some() {
        return Ok(Json(claim.into()));
    }
    let name = format!("{CHALLENGE_LABEL}.{}", claim.domain);
    if !published(&state, &name, &expected_value(&claim.token)).await? {
        return Err(AppError::Validation(format!(
            "No TXT record at {name} holds this claim's value yet; publish it and verify again"
        )));
    }
    let mut tx = bypass(
        &state,
        format!(
            "admin {} maps verified domain {} to tenant {}",
            tenant.user_id, claim.domain, tenant.id
        ),
    )
    .await?;
    sqlx::query("SELECT tenancy.add_domain($1, $2)")
        .bind(tenant.id)
        .bind(&claim.domain)
        .execute(&mut *tx)
        .await
        .map_err(|e| match AppError::from(e) {
            AppError::Conflict(_) => {
                AppError::Conflict("This domain is in use by another tenant".to_owned())
            }
            other => other,
        })?;
    let verified: Option<Claim> = sqlx::query_as(
        "UPDATE app.domain_claims SET verified_at = now()
         WHERE tenant_id = $1 AND domain = $2
         RETURNING domain, token, requested_at, verified_at",
    )
    .bind(tenant.id)
    .bind(&claim.domain)
    .fetch_optional(&mut *tx)
    .await?;
    // Removed meanwhile: map nothing.
    let Some(verified) = verified else {
        return Err(AppError::NotFound("Domain"));
    };
    crate::domain::audit::record(
        &mut tx,
        tenant.id,
        tenant.user_id,
        "domain.verified",
        Some(&claim.domain),
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(verified.into()))
}

#[utoipa::path(delete, path = "/api/tenant/domains/{domain}", tag = "domains",
    params(("domain" = String, Path, description = "A domain the tenant has claimed")),
    responses((status = 204, description = "The claim is removed and, if verified, the mapping")))]
async fn remove(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(domain): AppPath<String>,
) -> AppResult<StatusCode> {
    let claim = claim_to_change(&state, &tenant, &db, &domain).await?;
    let mut tx = bypass(
        &state,
        format!(
            "admin {} removes domain {} of tenant {}",
            tenant.user_id, claim.domain, tenant.id
        ),
    )
    .await?;
    sqlx::query("DELETE FROM app.domain_claims WHERE tenant_id = $1 AND domain = $2")
        .bind(tenant.id)
        .bind(&claim.domain)
        .execute(&mut *tx)
        .await?;
    // Only this tenant's own mapping.
    sqlx::query("DELETE FROM tenancy.domains WHERE tenant_id = $1 AND domain = $2")
        .bind(tenant.id)
        .bind(&claim.domain)
        .execute(&mut *tx)
        .await?;
    crate::domain::audit::record(
        &mut tx,
        tenant.id,
        tenant.user_id,
        "domain.removed",
        Some(&claim.domain),
        json!({"was_verified": claim.verified_at.is_some()}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether a TXT record at `name` holds `value`, asking the resolver the
/// operator configured (`TENANCY_DNS_SERVER`) or the system's.
async fn published(state: &AppState, name: &str, value: &str) -> AppResult<bool> {
    let provider = TokioConnectionProvider::default();
    let mut builder = match state.config.dns_server {
        Some(server) => Resolver::builder_with_config(
            ResolverConfig::from_parts(
                None,
                vec![],
                NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true),
            ),
            provider,
        ),
        None => Resolver::builder(provider).map_err(|e| {
            tracing::error!(error = %e, "no DNS resolver configuration");
            AppError::Unavailable("DNS resolver".to_owned())
        })?,
    };
    // Always the record as published now, never a cached answer.
    builder.options_mut().cache_size = 0;
    builder.options_mut().timeout = std::time::Duration::from_secs(3);
    builder.options_mut().attempts = 1;
    let resolver = builder.build();
    // A fully qualified name: no search domains appended.
    let fqdn = format!("{name}.");
    match resolver.txt_lookup(fqdn).await {
        Ok(records) => Ok(records.iter().any(|txt| {
            let joined: Vec<u8> = txt
                .txt_data()
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            joined == value.as_bytes()
        })),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(false),
        // The domain's own servers failing (SERVFAIL, timeouts) is the
        // domain's state, not the service's: the claim stays unproved.
        Err(e) => {
            tracing::info!(error = %e, name, "DNS lookup failed");
            Err(AppError::Validation(format!(
                "The DNS lookup of {name} failed; check the domain's name servers and verify again"
            )))
        }
    }
}
