//! tenancy: multi-tenant isolation enforced inside PostgreSQL.
//!
//! `CREATE EXTENSION tenancy` installs the tenant catalog (sql/catalog.sql),
//! the context functions defined here, and the SQL API that protects tables
//! (sql/api.sql). The Rust side owns what SQL cannot do well or safely:
//! verifying the signed context, caching it per backend, and the bypass.

use pgrx::prelude::*;
use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry};

mod context;
mod error;

use error::{OrRaise, TenancyError};

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../sql/api.sql", name = "api", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    GucRegistry::define_string_guc(
        c"tenancy.tenant_id",
        c"Trusted tenant context (a tenant uuid) for this transaction.",
        c"Superuser-only; grant one service role SET ON PARAMETER (tenancy.grant_context_setter). Set it with SET LOCAL.",
        &context::TENANT_ID,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"tenancy.user_id",
        c"Trusted user context (a user uuid) for this transaction.",
        c"Superuser-only, like tenancy.tenant_id.",
        &context::USER_ID,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"tenancy.token",
        c"Signed tenant context: a JWT verified by the extension.",
        c"Anyone may set it; only a token signed by a key in tenancy.keys gives a context. Set it with SET LOCAL.",
        &context::TOKEN,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"tenancy.bypass_reason",
        c"Set by tenancy.bypass() for the rest of the transaction.",
        c"Internal; only tenancy.bypass() sets it for a tenancy_admin member.",
        &context::BYPASS_REASON,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    // SAFETY: called once per backend at library load, as PostgreSQL requires.
    unsafe {
        // No one can create stray tenancy.* placeholders from now on.
        pg_sys::MarkGUCPrefixReserved(c"tenancy".as_ptr());
        pg_sys::CacheRegisterRelcacheCallback(
            Some(context::on_relcache_invalidation),
            pg_sys::Datum::from(0usize),
        );
    }
}

fn to_pg(u: uuid::Uuid) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*u.as_bytes())
}

/// The tenant of the current transaction. Raises "tenant context required"
/// (42501) without a context and "tenant is not active" (55000) for a
/// suspended or inactive tenant.
#[pg_extern(stable, parallel_safe)]
fn current_tenant_id() -> Option<pgrx::Uuid> {
    context::tenant_id().or_raise().map(to_pg)
}

/// The user of the current transaction (token user claim or tenancy.user_id).
#[pg_extern(stable, parallel_safe)]
fn current_user_id() -> pgrx::Uuid {
    to_pg(context::user_id().or_raise())
}

/// A claim of the verified tenancy.token, as text (NULL when absent).
#[pg_extern(stable, parallel_safe)]
fn claim(name: &str) -> Option<String> {
    context::claim(name).or_raise()
}

/// Whether the tenant context comes from a verified token, the trusted GUC,
/// or is missing; never raises, for diagnostics.
#[pg_extern(stable, parallel_safe)]
fn context_source() -> &'static str {
    match context::tenant_id() {
        Ok(Some(_))
            if pgrx::guc::GucSetting::get(&context::TOKEN).is_some_and(|t| !t.is_empty()) =>
        {
            "token"
        }
        Ok(Some(_)) => "trusted",
        Ok(None) => "bypass",
        Err(_) => "none",
    }
}

/// Lifts tenant isolation for the rest of the transaction, for members of
/// tenancy_admin only; every call is written to tenancy.audit_log.
#[pg_extern(volatile, parallel_unsafe)]
fn bypass(reason: &str) {
    context::bypass(reason).or_raise()
}

/// True inside a transaction that called tenancy.bypass().
#[pg_extern(stable, parallel_safe)]
fn bypass_active() -> bool {
    context::bypass_active()
}

/// Raises 22023 with the reason when `key_material` is not a usable key for `algorithm`.
#[pg_extern(immutable, parallel_safe)]
fn check_key(algorithm: &str, key_material: &str) {
    if let Err(e) = tenancy_token::VerifyingKey::new(algorithm, key_material) {
        TenancyError::InvalidArgument(e.to_string()).raise()
    }
}

/// Appends an audit entry attributed to the calling role (tenancy_admin only).
#[pg_extern(volatile, parallel_unsafe)]
fn write_audit(
    action: &str,
    tenant_id: Option<pgrx::Uuid>,
    reason: Option<&str>,
    details: Option<pgrx::JsonB>,
) {
    let tenant = tenant_id.map(|t| uuid::Uuid::from_bytes(*t));
    let details = details
        .map(|d| d.0)
        .unwrap_or_else(|| serde_json::json!({}));
    context::write_audit(action, tenant, reason, details).or_raise()
}

/// Makes every backend drop its cached keys, settings and tenant statuses
/// at its next transaction (called by the catalog triggers).
#[pg_extern(volatile, parallel_unsafe)]
fn invalidate_cache(relation: pg_sys::Oid) {
    // SAFETY: queues a relcache invalidation for an existing relation; the
    // catalog triggers pass their own TG_RELID.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relation) }
}
