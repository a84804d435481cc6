//! The tenant context of the current transaction.
//!
//! Two ways in: the signed `tenancy.token` (anyone may set it; only a token
//! that verifies against the catalog's keys gives a context) and the trusted
//! `tenancy.tenant_id` / `tenancy.user_id` (superuser-only GUCs, granted to
//! one service role with SET ON PARAMETER). Both are transaction-scoped when
//! set with SET LOCAL or set_config(..., true).
//!
//! Verification results, keys, settings and tenant statuses are cached per
//! backend. The catalog tables invalidate the cache through a relcache
//! invalidation (see `invalidate_cache`), so keys can be added and retired,
//! and tenants suspended, without a restart.
//!
//! This module must never hold a `RefCell` borrow across SPI: SPI can process
//! invalidation messages, which run `on_relcache_invalidation`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

use pgrx::prelude::*;
use pgrx::{pg_sys, GucSetting};
use tenancy_token::{Keyring, Rules, TenantContext, TokenError, VerifyingKey};
use uuid::Uuid;

use crate::error::TenancyError;

pub static TENANT_ID: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);
pub static USER_ID: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);
pub static TOKEN: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);
pub static BYPASS_REASON: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// Verified tokens kept per backend; the map is emptied when it reaches this
/// size. Entries are keyed by the token's SHA-256 and hold the verified
/// claims (a few hundred bytes), so the cache stays within a few MiB;
/// failures are never kept.
const TOKEN_CACHE_CAPACITY: usize = 8192;

/// Up to this many tenants, a backend reads every tenant's status in one
/// query the first time it needs one (about 5 ms for 10,000), instead of one
/// query per tenant it meets; a larger catalog is read tenant by tenant.
const BULK_STATUSES: i64 = 50_000;

/// The catalog as this backend last read it.
struct Catalog {
    owner: pg_sys::Oid,
    keys: Keyring,
    rules: Rules,
}

#[derive(Default)]
struct State {
    generation: u64,
    catalog: Option<Rc<Catalog>>,
    tokens: HashMap<[u8; 32], Rc<TenantContext>>,
    /// The token of the previous call: a policy calls us once per statement
    /// with the same token, so this avoids even the map lookup.
    last: Option<(String, Rc<TenantContext>)>,
    statuses: HashMap<Uuid, Option<String>>,
    /// Whether `statuses` holds every tenant (read in one query): a tenant
    /// missing from it does not exist.
    statuses_complete: bool,
    /// Whether the one-query read was tried in this generation.
    statuses_tried: bool,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// Bumped by the relcache callback; a state of an older generation is stale.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// The catalog tables whose invalidation makes the cache stale.
    static WATCHED: Cell<[pg_sys::Oid; 3]> = const { Cell::new([pg_sys::Oid::INVALID; 3]) };
}

/// Relcache callback: registered once in `_PG_init`.
#[pg_guard]
pub unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let watched = WATCHED.with(Cell::get);
    if relid == pg_sys::Oid::INVALID || watched.contains(&relid) {
        GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
    }
}

/// Runs `f` with the rights of `owner` (the catalog owner), the way
/// PostgreSQL's own RI triggers do; the caller's identity is restored on
/// every exit, including errors.
fn as_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    pinned_search_path(|| as_owner_unpinned(owner, f))
}

/// Runs `f` with `search_path` set to `pg_catalog, pg_temp`, as PostgreSQL
/// runs a function that has a SET clause: no operator, function or type in
/// our queries can then resolve to an object a caller created (which would
/// run with the owner's rights inside `as_owner`). The previous value comes
/// back on return; on an error the (sub)transaction abort restores it.
fn pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                // SAFETY: pops the GUC nest level pushed below, keeping nothing.
                unsafe { pg_sys::AtEOXact_GUC(true, self.0) }
            }
        }
    }
    // SAFETY: the same calls PostgreSQL makes for a function's SET clause.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let _restore = Restore(level);
    f()
}

fn as_owner_unpinned<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the values read below.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) }
        }
    }
    let mut uid = pg_sys::Oid::INVALID;
    let mut sec: i32 = 0;
    // SAFETY: plain reads and writes of backend-local identity state.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut uid, &mut sec);
        pg_sys::SetUserIdAndSecContext(
            owner,
            sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let _restore = Restore(uid, sec);
    f()
}

fn guc_text(setting: &GucSetting<Option<std::ffi::CString>>) -> Option<&'static str> {
    // SAFETY: the GUC machinery owns the string and keeps it alive until the
    // value changes; we read it without copying and never keep it past this call's user.
    let ptr = unsafe { *setting.as_ptr() };
    if ptr.is_null() {
        return None;
    }
    let text = unsafe { CStr::from_ptr(ptr) }.to_str().ok()?.trim();
    (!text.is_empty()).then_some(text)
}

fn fresh_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let generation = GENERATION.with(Cell::get);
    STATE.with(|s| {
        let mut state = s.borrow_mut();
        if state.generation != generation {
            *state = State {
                generation,
                ..State::default()
            };
        }
        f(&mut state)
    })
}

/// Processes pending invalidations, then returns the generation a value
/// about to be read from the catalog belongs to.
fn generation_before_read() -> u64 {
    // SAFETY: what PostgreSQL does at every lock acquisition.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    GENERATION.with(Cell::get)
}

/// Keeps a value read from the catalog, unless it may already be stale: an
/// invalidation arrived since `seen` (the read may predate the change), or
/// the transaction reads through a REPEATABLE READ / SERIALIZABLE snapshot
/// older than the latest change. Such a value is used once, not kept.
fn store(seen: u64, f: impl FnOnce(&mut State)) -> bool {
    // SAFETY: a read of backend-local transaction state.
    let fresh_snapshot = unsafe { pg_sys::XactIsoLevel } < pg_sys::XACT_REPEATABLE_READ as i32;
    let keep = fresh_snapshot && GENERATION.with(Cell::get) == seen;
    if keep {
        fresh_state(f);
    }
    keep
}

fn load_catalog() -> Result<Catalog, TenancyError> {
    // As the caller: where the catalog is and who owns it (pg_class is public).
    let tables: Vec<(String, pg_sys::Oid, pg_sys::Oid)> = pinned_search_path(|| {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT c.relname::text, c.oid, c.relowner FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = 'tenancy'::regnamespace \
               AND c.relname IN ('keys', 'settings', 'tenants')",
                None,
                &[],
            )?;
            let mut out = Vec::new();
            for row in rows {
                let name: Option<String> = row.get(1)?;
                let oid: Option<pg_sys::Oid> = row.get(2)?;
                let owner: Option<pg_sys::Oid> = row.get(3)?;
                if let (Some(name), Some(oid), Some(owner)) = (name, oid, owner) {
                    out.push((name, oid, owner));
                }
            }
            Ok::<_, TenancyError>(out)
        })
    })?;
    let owner = tables
        .iter()
        .find(|(name, _, _)| name == "keys")
        .map(|(_, _, owner)| *owner)
        .ok_or_else(|| TenancyError::Catalog("tenancy.keys is missing".to_owned()))?;
    let mut watched = [pg_sys::Oid::INVALID; 3];
    for (slot, (_, oid, _)) in watched.iter_mut().zip(tables.iter()) {
        *slot = *oid;
    }
    WATCHED.with(|w| w.set(watched));

    let (key_rows, setting_rows) = as_owner(owner, || {
        Spi::connect(|client| {
            let mut keys = Vec::new();
            for row in client.select(
                "SELECT kid, algorithm, key_material FROM tenancy.keys WHERE retired_at IS NULL",
                None,
                &[],
            )? {
                let kid: Option<String> = row.get(1)?;
                let alg: Option<String> = row.get(2)?;
                let material: Option<String> = row.get(3)?;
                if let (Some(kid), Some(alg), Some(material)) = (kid, alg, material) {
                    keys.push((kid, alg, material));
                }
            }
            let mut settings = Vec::new();
            for row in client.select("SELECT name, value FROM tenancy.settings", None, &[])? {
                let name: Option<String> = row.get(1)?;
                let value: Option<String> = row.get(2)?;
                if let (Some(name), Some(value)) = (name, value) {
                    settings.push((name, value));
                }
            }
            Ok::<_, TenancyError>((keys, settings))
        })
    })?;

    let mut keys = Keyring::new();
    for (kid, alg, material) in key_rows {
        match VerifyingKey::new(&alg, &material) {
            Ok(key) => keys.insert(kid, key),
            // Stored keys are checked on insert; one that still fails is skipped, loudly.
            Err(e) => pgrx::warning!("tenancy: key \"{kid}\" is unusable and was skipped: {e}"),
        }
    }
    let mut rules = Rules::default();
    for (name, value) in setting_rows {
        match name.as_str() {
            "jwt_audience" => rules.audience = Some(value),
            "jwt_issuer" => rules.issuer = Some(value),
            "jwt_leeway_seconds" => rules.leeway_secs = value.parse().unwrap_or(rules.leeway_secs),
            "tenant_claim" => rules.tenant_claim = value,
            "user_claim" => rules.user_claim = value,
            _ => {}
        }
    }
    Ok(Catalog { owner, keys, rules })
}

fn catalog() -> Result<Rc<Catalog>, TenancyError> {
    if let Some(catalog) = fresh_state(|s| s.catalog.clone()) {
        return Ok(catalog);
    }
    let seen = generation_before_read();
    let catalog = Rc::new(load_catalog()?);
    store(seen, |s| s.catalog = Some(catalog.clone()));
    Ok(catalog)
}

fn verified(token: &str) -> Result<Rc<TenantContext>, TenancyError> {
    if token.len() > tenancy_token::MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong.into());
    }
    // The previous call's token first: a policy asks once per statement
    // with the same token, and this path must not even hash it.
    let last = fresh_state(|s| match &s.last {
        Some((last, context)) if last == token => Some(context.clone()),
        _ => None,
    });
    let (context, kept) = match last {
        Some(context) => (context, true),
        None => {
            let digest = tenancy_token::digest(token);
            match fresh_state(|s| s.tokens.get(&digest).cloned()) {
                Some(context) => (context, true),
                None => {
                    let seen = generation_before_read();
                    let catalog = catalog()?;
                    // Failures are not kept: a token refused as not yet valid
                    // becomes valid, and refused tokens must not fill memory.
                    let context =
                        Rc::new(tenancy_token::verify(token, &catalog.keys, &catalog.rules)?);
                    let kept = store(seen, |s| {
                        if s.tokens.len() >= TOKEN_CACHE_CAPACITY {
                            s.tokens.clear();
                        }
                        s.tokens.insert(digest, context.clone());
                    });
                    (context, kept)
                }
            }
        }
    };
    // A cached token can expire while the backend lives.
    let leeway = catalog()?.rules.leeway_secs;
    if context.expired_at(tenancy_token::now(), leeway) {
        return Err(TokenError::Expired.into());
    }
    if !kept {
        return Ok(context);
    }
    fresh_state(|s| {
        if !matches!(&s.last, Some((last, _)) if last == token) {
            s.last = Some((token.to_owned(), context.clone()));
        }
    });
    Ok(context)
}

/// Sets tenancy.token for the rest of the transaction, as SET LOCAL does;
/// it is verified where it is used, like a token set any other way.
pub fn set_token(token: &str) -> Result<(), TenancyError> {
    let value = std::ffi::CString::new(token)
        .map_err(|_| TenancyError::InvalidArgument("a token must not contain NUL".to_owned()))?;
    // SAFETY: sets our own USERSET GUC with LOCAL action, as SET LOCAL would;
    // the check hook runs and raises on a refused value.
    unsafe {
        pg_sys::set_config_option(
            c"tenancy.token".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
    Ok(())
}

fn tenant_status(tenant: Uuid) -> Result<Option<String>, TenancyError> {
    let (known, complete, tried) = fresh_state(|s| {
        (
            s.statuses.get(&tenant).cloned(),
            s.statuses_complete,
            s.statuses_tried,
        )
    });
    if let Some(status) = known {
        return Ok(status);
    }
    if complete {
        return Ok(None);
    }
    let seen = generation_before_read();
    let catalog = catalog()?;
    if !tried {
        // Once per generation, whatever comes of it (a read through an old
        // snapshot is used, not kept, and not tried again).
        fresh_state(|s| s.statuses_tried = true);
        if let Some(all) = all_statuses(catalog.owner)? {
            let status = all.get(&tenant).cloned().flatten();
            let kept = store(seen, |s| {
                s.statuses = all;
                s.statuses_complete = true;
                s.statuses_tried = true;
            });
            // Not kept and not found: the tenant may be newer than what was
            // read; ask for it alone.
            if kept || status.is_some() {
                return Ok(status);
            }
        }
    }
    let status = as_owner(catalog.owner, || {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT status FROM tenancy.tenants WHERE id = $1",
                Some(1),
                &[pgrx::Uuid::from_bytes(*tenant.as_bytes()).into()],
            )?;
            match rows.is_empty() {
                true => Ok::<_, TenancyError>(None),
                false => Ok(rows.first().get_one::<String>()?),
            }
        })
    })?;
    store(seen, |s| {
        s.statuses.insert(tenant, status.clone());
    });
    Ok(status)
}

/// Every tenant's status in one query, or `None` when there are more than
/// [`BULK_STATUSES`] tenants.
fn all_statuses(owner: pg_sys::Oid) -> Result<Option<HashMap<Uuid, Option<String>>>, TenancyError> {
    as_owner(owner, || {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT id, status FROM tenancy.tenants LIMIT $1",
                None,
                &[(BULK_STATUSES + 1).into()],
            )?;
            if rows.len() as i64 > BULK_STATUSES {
                return Ok::<_, TenancyError>(None);
            }
            let mut all = HashMap::with_capacity(rows.len());
            for row in rows {
                let id: Option<pgrx::Uuid> = row.get(1)?;
                let status: Option<String> = row.get(2)?;
                if let Some(id) = id {
                    all.insert(Uuid::from_bytes(*id.as_bytes()), status);
                }
            }
            Ok(Some(all))
        })
    })
}

fn check_active(tenant: Uuid) -> Result<Uuid, TenancyError> {
    match tenant_status(tenant)? {
        Some(status) if status == "active" => Ok(tenant),
        Some(status) => Err(TenancyError::TenantNotActive { tenant, status }),
        None => Err(TenancyError::UnknownTenant(tenant)),
    }
}

fn trusted_uuid(
    name: &'static str,
    setting: &GucSetting<Option<std::ffi::CString>>,
) -> Result<Option<Uuid>, TenancyError> {
    match guc_text(setting) {
        None => Ok(None),
        Some(text) => Uuid::parse_str(text)
            .map(Some)
            .map_err(|_| TenancyError::BadTrustedValue(name, text.chars().take(64).collect())),
    }
}

/// Whether tenancy.bypass() was called in this transaction.
pub fn bypass_active() -> bool {
    guc_text(&BYPASS_REASON).is_some()
}

fn is_tenancy_admin() -> bool {
    // SAFETY: catalog lookups by name and oid; missing_ok avoids an error.
    unsafe {
        let admin = pg_sys::get_role_oid(c"tenancy_admin".as_ptr(), true);
        admin != pg_sys::Oid::INVALID && pg_sys::has_privs_of_role(pg_sys::GetUserId(), admin)
    }
}

/// The tenant of this transaction, checked active. `None` only for a
/// tenancy_admin member inside tenancy.bypass() without a tenant context.
pub fn tenant_id() -> Result<Option<Uuid>, TenancyError> {
    let trusted = trusted_uuid("tenant_id", &TENANT_ID)?;
    let tenant = match guc_text(&TOKEN) {
        Some(token) => {
            let signed = verified(token)?.tenant_id;
            if trusted.is_some_and(|t| t != signed) {
                return Err(TenancyError::ConflictingContext("tenant_id"));
            }
            signed
        }
        None => match trusted {
            Some(tenant) => tenant,
            None if bypass_active() && is_tenancy_admin() => return Ok(None),
            None => return Err(TenancyError::ContextRequired),
        },
    };
    check_active(tenant).map(Some)
}

/// The user of this transaction (from the token's user claim or tenancy.user_id).
pub fn user_id() -> Result<Uuid, TenancyError> {
    if tenant_id()?.is_none() {
        return Err(TenancyError::UserContextRequired);
    }
    let trusted = trusted_uuid("user_id", &USER_ID)?;
    match guc_text(&TOKEN) {
        Some(token) => {
            let context = verified(token)?;
            let claim = || catalog().map(|c| c.rules.user_claim.clone());
            let user = match &context.user_id {
                None => return Err(TenancyError::UserContextRequired),
                Some(text) => Uuid::parse_str(text).map_err(|_| match claim() {
                    Ok(name) => TenancyError::BadUserClaim(name),
                    Err(e) => e,
                })?,
            };
            if trusted.is_some_and(|t| t != user) {
                return Err(TenancyError::ConflictingContext("user_id"));
            }
            Ok(user)
        }
        None => trusted.ok_or(TenancyError::UserContextRequired),
    }
}

/// A claim of the verified token, as text; NULL without a token or claim.
pub fn claim(name: &str) -> Result<Option<String>, TenancyError> {
    tenant_id()?;
    match guc_text(&TOKEN) {
        Some(token) => Ok(verified(token)?.claim_text(name)),
        None => Ok(None),
    }
}

/// Turns on the bypass for this transaction and writes the audit entry.
pub fn bypass(reason: &str) -> Result<(), TenancyError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(TenancyError::InvalidArgument(
            "tenancy.bypass() needs a reason".to_owned(),
        ));
    }
    if !is_tenancy_admin() {
        return Err(TenancyError::BypassDenied);
    }
    // The context, if any, is recorded; its absence is the normal case.
    let tenant = tenant_id().ok().flatten();
    write_audit("bypass", tenant, Some(reason), serde_json::json!({}))?;
    // The audit row goes with the transaction; this line does not. A bypass
    // that is rolled back still leaves its record in the server log.
    // SAFETY: reads of backend-local identity.
    let (session, acting) = unsafe { (pg_sys::GetSessionUserId(), pg_sys::GetUserId()) };
    pgrx::log!(
        "tenancy: bypass by session role \"{}\" acting as \"{}\" (pid {}), tenant {}, reason: {}",
        role_name(session),
        role_name(acting),
        // SAFETY: a plain read of this backend's pid.
        unsafe { pg_sys::MyProcPid },
        tenant.map_or_else(|| "none".to_owned(), |t| t.to_string()),
        reason.escape_debug()
    );
    let value = std::ffi::CString::new(reason)
        .map_err(|_| TenancyError::InvalidArgument("reason must not contain NUL".to_owned()))?;
    // SAFETY: sets our own SUSET GUC with LOCAL action, as SET LOCAL would for a superuser.
    unsafe {
        pg_sys::set_config_option(
            c"tenancy.bypass_reason".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
    Ok(())
}

fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: noerr = true returns NULL for a dropped role instead of raising.
    let ptr = unsafe { pg_sys::GetUserNameFromId(oid, true) };
    if ptr.is_null() {
        return format!("oid {}", oid.to_u32());
    }
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// Appends to tenancy.audit_log with the caller's real identity, whatever
/// rights the caller has on the table.
pub fn write_audit(
    action: &str,
    tenant: Option<Uuid>,
    reason: Option<&str>,
    details: serde_json::Value,
) -> Result<(), TenancyError> {
    // SAFETY: reads of backend-local identity.
    let (session, acting) = unsafe { (pg_sys::GetSessionUserId(), pg_sys::GetUserId()) };
    let (session, acting) = (role_name(session), role_name(acting));
    let catalog = catalog()?;
    as_owner(catalog.owner, || {
        Spi::run_with_args(
            "INSERT INTO tenancy.audit_log (session_role, acting_role, action, tenant_id, reason, details) \
             VALUES ($1::name, $2::name, $3, $4, $5, $6)",
            &[
                session.into(),
                acting.into(),
                action.into(),
                tenant.map(|t| pgrx::Uuid::from_bytes(*t.as_bytes())).into(),
                reason.into(),
                pgrx::JsonB(details).into(),
            ],
        )
    })?;
    Ok(())
}
