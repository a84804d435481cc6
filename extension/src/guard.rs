//! What keeps the tenant context a per-transaction secret, and planner
//! output from describing rows the policies hide.
//!
//! - The context GUCs (`tenancy.token`, `tenancy.tenant_id`, `tenancy.user_id`)
//!   are defined here with a check hook: a value can only come from this
//!   session inside a transaction (never from ALTER ROLE / ALTER DATABASE,
//!   the configuration file or connection options), a token never from text
//!   that other sessions can read (`pg_stat_activity`, the server log,
//!   `pg_stat_statements`), and none survives its transaction: at commit a
//!   session-level value is cleared.
//! - Errors raised while a statement names a secret (a token, key material)
//!   are logged without the statement text.
//! - EXPLAIN of a plan that reads a table whose rows row-level security hides
//!   from the current role is refused unless `tenancy.allow_explain` is on for
//!   that role: index conditions run before the policies, so row counts and
//!   estimates would describe other tenants' rows.
//!
//! This module must never let a hook raise past PostgreSQL without the
//! `pg_guard` boundary, and never keep a borrow across a call into PostgreSQL.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};

use pgrx::prelude::*;
use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting, PgSqlErrorCode};

use crate::context;
use crate::error::OrRaise;

/// Off by default: EXPLAIN of plans over rows that RLS hides is refused.
pub static ALLOW_EXPLAIN: GucSetting<bool> = GucSetting::<bool>::new(false);

thread_local! {
    /// True while `_PG_init` defines the GUCs: a value present then was set
    /// before the library loaded, by a path the check hook never saw.
    static LOADING: Cell<bool> = const { Cell::new(false) };
    /// How many EXPLAIN statements are executing in this backend.
    static EXPLAIN_DEPTH: Cell<u32> = const { Cell::new(0) };
    static PREV_EMIT_LOG: Cell<pg_sys::emit_log_hook_type> = const { Cell::new(None) };
    static PREV_UTILITY: Cell<pg_sys::ProcessUtility_hook_type> = const { Cell::new(None) };
    static PREV_EXECUTOR_START: Cell<pg_sys::ExecutorStart_hook_type> = const { Cell::new(None) };
    /// The context GUCs' definitions, found once: token, tenant_id, user_id.
    static GUCS: Cell<[*mut pg_sys::config_generic; 3]> = const { Cell::new([std::ptr::null_mut(); 3]) };
}

/// Defines the context GUCs and installs the hooks; called once from `_PG_init`.
pub fn init() {
    LOADING.with(|l| l.set(true));
    define(
        c"tenancy.tenant_id",
        c"Trusted tenant context (a tenant uuid) for this transaction.",
        c"Superuser-only; grant one service role SET ON PARAMETER (tenancy.grant_context_setter). Set it with SET LOCAL.",
        &context::TENANT_ID,
        pg_sys::GucContext::PGC_SUSET,
        0,
        Some(check_trusted),
    );
    define(
        c"tenancy.user_id",
        c"Trusted user context (a user uuid) for this transaction.",
        c"Superuser-only, like tenancy.tenant_id.",
        &context::USER_ID,
        pg_sys::GucContext::PGC_SUSET,
        0,
        Some(check_trusted),
    );
    define(
        c"tenancy.token",
        c"Signed tenant context: a JWT verified by the extension.",
        c"Set it with SELECT tenancy.set_token($1) (a bind parameter); only a token signed by a key in tenancy.keys gives a context.",
        &context::TOKEN,
        pg_sys::GucContext::PGC_USERSET,
        GucFlags::NO_SHOW_ALL.bits(),
        Some(check_token),
    );
    LOADING.with(|l| l.set(false));
    GucRegistry::define_bool_guc(
        c"tenancy.allow_explain",
        c"Whether this role may EXPLAIN plans over rows that row-level security hides from it.",
        c"Superuser-only; set it per role (ALTER ROLE dba SET tenancy.allow_explain = on) for trusted roles.",
        &ALLOW_EXPLAIN,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: hooks are installed once per backend at library load, keeping
    // the previous hook to chain to, as PostgreSQL's own modules do.
    unsafe {
        PREV_EMIT_LOG.with(|p| p.set(pg_sys::emit_log_hook));
        pg_sys::emit_log_hook = Some(emit_log);
        PREV_UTILITY.with(|p| p.set(pg_sys::ProcessUtility_hook));
        pg_sys::ProcessUtility_hook = Some(process_utility);
        PREV_EXECUTOR_START.with(|p| p.set(pg_sys::ExecutorStart_hook));
        pg_sys::ExecutorStart_hook = Some(executor_start);
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
    }
}

#[allow(clippy::too_many_arguments)]
fn define(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static GucSetting<Option<std::ffi::CString>>,
    context: pg_sys::GucContext::Type,
    flags: i32,
    check: pg_sys::GucStringCheckHook,
) {
    // SAFETY: the same call pgrx's GucRegistry makes, with a check hook; the
    // variable lives for the life of the backend.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            name.as_ptr(),
            short.as_ptr(),
            long.as_ptr(),
            setting.as_ptr(),
            std::ptr::null(),
            context,
            flags,
            check,
            None,
            None,
        );
    }
}

/// Refuses a value through the GUC machinery, with our SQLSTATE and texts.
unsafe fn refuse(code: PgSqlErrorCode, message: &CStr, hint: Option<&CStr>) -> bool {
    pg_sys::GUC_check_errcode(code as c_int);
    pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(message.as_ptr());
    if let Some(hint) = hint {
        pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(hint.as_ptr());
    }
    false
}

/// The rules every context value follows; `None` when the value may be set.
unsafe fn check_context(newval: *mut *mut c_char, source: pg_sys::GucSource::Type) -> Option<bool> {
    if newval.is_null() || (*newval).is_null() {
        return None;
    }
    let value = CStr::from_ptr(*newval).to_bytes();
    if value.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    use pg_sys::GucSource::*;
    match source {
        PGC_S_SESSION | PGC_S_DEFAULT | PGC_S_DYNAMIC_DEFAULT => None,
        _ => Some(refuse(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            c"a tenancy context can only be set inside a transaction",
            Some(c"Use SELECT tenancy.set_token($1), SET LOCAL or set_config(..., true); not ALTER ROLE, ALTER DATABASE, a function's SET clause, the configuration file or connection options."),
        )),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_trusted(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    if newval.is_null() {
        return true;
    }
    match check_context(newval, source) {
        Some(verdict) => verdict,
        None if !(*newval).is_null() && CStr::from_ptr(*newval).to_bytes().len() > 256 => refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            c"a trusted tenancy context must be a uuid",
            None,
        ),
        None => true,
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_token(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    if let Some(verdict) = check_context(newval, source) {
        return verdict;
    }
    if (*newval).is_null()
        || CStr::from_ptr(*newval)
            .to_bytes()
            .iter()
            .all(u8::is_ascii_whitespace)
    {
        return true;
    }
    // A token present while the library loads was set where this hook could
    // not see how (statement text, a session-level SET): it is discarded.
    if LOADING.with(Cell::get) {
        return refuse(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            c"a tenancy.token set before the tenancy library was loaded is discarded",
            Some(c"Set it with SELECT tenancy.set_token($1), which loads the library first, or preload it (session_preload_libraries = 'tenancy')."),
        );
    }
    let token = CStr::from_ptr(*newval).to_bytes();
    if token.len() > tenancy_token::MAX_TOKEN_BYTES {
        return refuse(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            c"invalid tenant token: token is longer than 8192 bytes",
            None,
        );
    }
    if token.len() >= 16 && statement_contains(token) && !citus_internal() {
        return refuse(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            c"tenancy.token must not appear in the statement text",
            Some(c"Other sessions of the same role can read statement text (pg_stat_activity). Pass the token as a bind parameter: SELECT tenancy.set_token($1)."),
        );
    }
    true
}

/// The text of the statement being executed, if any.
fn statement_text() -> Option<&'static [u8]> {
    // SAFETY: PostgreSQL keeps debug_query_string valid for the statement.
    unsafe {
        let text = pg_sys::debug_query_string;
        (!text.is_null()).then(|| CStr::from_ptr(text).to_bytes())
    }
}

fn statement_contains(needle: &[u8]) -> bool {
    let Some(text) = statement_text() else {
        return false;
    };
    match (std::str::from_utf8(text), std::str::from_utf8(needle)) {
        (Ok(text), Ok(needle)) => text.contains(needle),
        _ => text.windows(needle.len()).any(|w| w == needle),
    }
}

/// Citus carries the context to its workers in a `SET LOCAL` of its own;
/// on a worker that statement is Citus's, not the application's.
fn citus_internal() -> bool {
    // SAFETY: application_name is a GUC string owned by PostgreSQL.
    unsafe {
        let name = pg_sys::application_name;
        !name.is_null()
            && CStr::from_ptr(name)
                .to_bytes()
                .starts_with(b"citus_internal")
    }
}

/// At commit, a context set at session level (plain SET, not LOCAL) is
/// cleared, so it can never reach the next transaction on the connection.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    // A parallel worker's GUCs are the leader's, restored for its plan.
    if (event != XACT_EVENT_PRE_COMMIT && event != XACT_EVENT_PRE_PREPARE)
        || pg_sys::ParallelWorkerNumber >= 0
    {
        return;
    }
    for (slot, (name, setting)) in [
        (c"tenancy.token", &context::TOKEN),
        (c"tenancy.tenant_id", &context::TENANT_ID),
        (c"tenancy.user_id", &context::USER_ID),
    ]
    .into_iter()
    .enumerate()
    {
        if !(*setting.as_ptr()).is_null() && !ends_with_transaction(slot, name) {
            pg_sys::set_config_option(
                name.as_ptr(),
                std::ptr::null(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SET,
                true,
                0,
                false,
            );
        }
    }
}

/// Whether the GUC's value goes away at commit by itself: set only with
/// LOCAL in this transaction over no session value (the usual case, which
/// then costs no extra work at commit).
unsafe fn ends_with_transaction(slot: usize, name: &CStr) -> bool {
    let guc = match GUCS.with(|g| g.get()[slot]) {
        found if !found.is_null() => found,
        _ => {
            let found = find_guc(name);
            GUCS.with(|g| {
                let mut all = g.get();
                all[slot] = found;
                g.set(all);
            });
            found
        }
    };
    if guc.is_null() {
        return false;
    }
    let stack = (*guc).stack;
    !stack.is_null()
        && (*stack).prev.is_null()
        && (*stack).state == pg_sys::GucStackState::GUC_LOCAL
        && (*stack).prior.val.stringval.is_null()
}

/// The GUC's definition (allocated once per backend and never moved).
unsafe fn find_guc(name: &CStr) -> *mut pg_sys::config_generic {
    let variables = pg_sys::get_guc_variables();
    if variables.is_null() {
        return std::ptr::null_mut();
    }
    for i in 0..pg_sys::GetNumConfigOptions().max(0) as usize {
        let guc = *variables.add(i);
        if !guc.is_null() && !(*guc).name.is_null() && CStr::from_ptr((*guc).name) == name {
            return guc;
        }
    }
    std::ptr::null_mut()
}

/// Whether the statement being executed names a secret: a token or key
/// material. Its text is then kept out of the server log.
fn statement_names_secret() -> bool {
    let Some(text) = statement_text() else {
        return false;
    };
    // No allocation: this runs while an error is being reported.
    [
        &b"tenancy.token"[..],
        b"set_token",
        b"add_key",
        b"tenancy.keys",
    ]
    .iter()
    .any(|needle| {
        text.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn emit_log(edata: *mut pg_sys::ErrorData) {
    if !edata.is_null() && (*edata).elevel >= pg_sys::PGERROR as c_int && statement_names_secret() {
        (*edata).hide_stmt = true;
    }
    if let Some(prev) = PREV_EMIT_LOG.with(Cell::get) {
        prev(edata);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            EXPLAIN_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    let utility = (*pstmt).utilityStmt;
    let _depth =
        (!utility.is_null() && (*utility).type_ == pg_sys::NodeTag::T_ExplainStmt).then(|| {
            EXPLAIN_DEPTH.with(|d| d.set(d.get() + 1));
            Depth
        });
    match PREV_UTILITY.with(Cell::get) {
        Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| {
            prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            )
        }),
        None => pg_sys::standard_ProcessUtility(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: c_int) {
    let plan = (*query_desc).plannedstmt;
    let explain_only = eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as c_int != 0;
    let explaining = explain_only
        || EXPLAIN_DEPTH.with(Cell::get) > 0
        || ((*query_desc).instrument_options != 0 && statement_is_explain());
    if explaining && !ALLOW_EXPLAIN.get() {
        if let Some(relid) = hidden_relation(plan, |_| true) {
            crate::error::TenancyError::ExplainDenied(relation_name(relid)).raise();
        }
    }
    // No context, no read: checked here, before any node runs, because the
    // policies' own conditions run only when the plan reaches them (an
    // index condition that matches nothing never asks for the context).
    if !explain_only && hidden_relation(plan, |relid| tenancy_protected(relid)).is_some() {
        context::tenant_id().or_raise();
    }
    match PREV_EXECUTOR_START.with(Cell::get) {
        Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| prev(query_desc, eflags)),
        None => pg_sys::standard_ExecutorStart(query_desc, eflags),
    }
}

/// Whether the top-level statement is an EXPLAIN (for an EXPLAIN ANALYZE
/// that ran before this library was loaded, so the utility hook missed it).
fn statement_is_explain() -> bool {
    statement_text().is_some_and(|text| {
        let start = text
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(0);
        text[start..]
            .get(..7)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"explain"))
    })
}

/// Whether the table carries tenancy's `tenancy_isolation` policy.
unsafe fn tenancy_protected(relid: pg_sys::Oid) -> bool {
    let rel = pg_sys::RelationIdGetRelation(relid);
    if rel.is_null() {
        return false;
    }
    let desc = (*rel).rd_rsdesc;
    let mut found = false;
    if !desc.is_null() {
        found = list_items::<pg_sys::RowSecurityPolicy>((*desc).policies).any(|policy| {
            !(*policy).policy_name.is_null()
                && CStr::from_ptr((*policy).policy_name).to_bytes() == b"tenancy_isolation"
        });
    }
    pg_sys::RelationClose(rel);
    found
}

/// The first relation of the plan whose rows row-level security filters
/// for the role that reads it, which does not own it, and that `also`
/// accepts.
unsafe fn hidden_relation(
    plan: *mut pg_sys::PlannedStmt,
    also: impl Fn(pg_sys::Oid) -> bool,
) -> Option<pg_sys::Oid> {
    if plan.is_null() {
        return None;
    }
    for rte in list_items::<pg_sys::RangeTblEntry>((*plan).rtable) {
        if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION {
            continue;
        }
        let relid = (*rte).relid;
        // Code running as the owner (and its members) is exempt: the owner
        // may disable the policies anyway, and PostgreSQL's own checks run
        // as the owner (a foreign key's initial validation reads through
        // FORCE RLS). A view the owner owns, read by another role, is not:
        // the current user is the reader.
        if pg_sys::check_enable_rls(relid, (*rte).checkAsUser, true)
            == pg_sys::CheckEnableRlsResult::RLS_ENABLED as c_int
            && !pg_sys::pg_class_ownercheck(relid, pg_sys::GetUserId())
            && also(relid)
        {
            return Some(relid);
        }
    }
    None
}

/// The non-null pointer elements of a PostgreSQL `List`.
unsafe fn list_items<T>(list: *mut pg_sys::List) -> impl Iterator<Item = *mut T> {
    let (elements, length) = match list.is_null() {
        true => (std::ptr::null_mut(), 0),
        false => ((*list).elements, (*list).length.max(0) as usize),
    };
    (0..length)
        .map(move |i| (*elements.add(i)).ptr_value as *mut T)
        .filter(|p| !p.is_null())
}

fn relation_name(relid: pg_sys::Oid) -> String {
    // SAFETY: returns NULL for an unknown oid; the string is palloc'd.
    let name = unsafe { pg_sys::get_rel_name(relid) };
    if name.is_null() {
        return format!("oid {}", relid.to_u32());
    }
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}
