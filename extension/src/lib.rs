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
mod guard;

use error::{OrRaise, TenancyError};

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../sql/lint.sql", name = "lint");
extension_sql_file!("../sql/api.sql", name = "api", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // A Rust backtrace names our internals; PostgreSQL errors are what
    // clients get. std reads this once, at the first capture.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    guard::init();
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

/// Sets the signed context for the rest of the transaction. Pass the token
/// as a bind parameter (`SELECT tenancy.set_token($1)`): statement text is
/// visible to other sessions of the same role, parameters are not. NULL or
/// '' clears the context.
#[pg_extern(volatile, parallel_unsafe)]
fn set_token(token: Option<&str>) {
    context::set_token(token.unwrap_or("")).or_raise()
}

/// Planner support function of current_tenant_id(), which every tenancy
/// policy calls: it simplifies nothing; calling it at plan time loads this
/// library (and its executor checks) before the first statement that reads
/// a protected table executes.
#[pg_extern(immutable, parallel_safe)]
fn context_support(_request: pgrx::Internal) -> pgrx::Internal {
    pgrx::Internal::from(Some(pg_sys::Datum::from(0usize)))
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
