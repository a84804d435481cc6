//! The one error type of the extension and the one place that turns it into
//! a PostgreSQL error with a documented SQLSTATE (see README, "Errors").

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use tenancy_token::TokenError;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    /// 42501: no tenant context in this transaction.
    #[error("tenant context required")]
    ContextRequired,
    /// 42501: a tenant context without a user.
    #[error("user context required")]
    UserContextRequired,
    /// 28000: tenancy.token is set but does not verify.
    #[error("invalid tenant token: {0}")]
    Token(#[from] TokenError),
    /// 28000: the signed and the trusted context disagree.
    #[error("tenancy.token and tenancy.{0} disagree")]
    ConflictingContext(&'static str),
    /// 28000: the user claim of a verified token is not a uuid.
    #[error("invalid tenant token: claim \"{0}\" is not a valid uuid")]
    BadUserClaim(String),
    /// 28000: the context names a tenant the catalog does not know.
    #[error("tenant context names an unknown tenant")]
    UnknownTenant(Uuid),
    /// 55000: the tenant is suspended or inactive.
    #[error("tenant is not active")]
    TenantNotActive { tenant: Uuid, status: String },
    /// 22P02: a trusted context GUC holds something that is not a uuid.
    #[error("tenancy.{0} must be a uuid, not \"{1}\"")]
    BadTrustedValue(&'static str, String),
    /// 42501: tenancy.bypass() called by a role outside tenancy_admin.
    #[error("permission denied: tenancy.bypass() requires membership in tenancy_admin")]
    BypassDenied,
    /// 42501: EXPLAIN of a plan over rows that row-level security hides.
    #[error(
        "EXPLAIN is not allowed on \"{0}\": row-level security hides rows of it from this role"
    )]
    ExplainDenied(String),
    /// 22023: a bad argument to one of the functions.
    #[error("{0}")]
    InvalidArgument(String),
    /// XX000: the catalog could not be read; details go to the server log only.
    #[error("tenancy catalog could not be read")]
    Catalog(String),
}

impl From<pgrx::spi::SpiError> for TenancyError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        TenancyError::Catalog(e.to_string())
    }
}

impl TenancyError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            TenancyError::ContextRequired
            | TenancyError::UserContextRequired
            | TenancyError::BypassDenied
            | TenancyError::ExplainDenied(_) => ERRCODE_INSUFFICIENT_PRIVILEGE,
            TenancyError::Token(_)
            | TenancyError::ConflictingContext(_)
            | TenancyError::BadUserClaim(_)
            | TenancyError::UnknownTenant(_) => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            TenancyError::TenantNotActive { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            TenancyError::BadTrustedValue(..) => ERRCODE_INVALID_TEXT_REPRESENTATION,
            TenancyError::InvalidArgument(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            TenancyError::Catalog(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            TenancyError::ContextRequired => Some(
                "Set a signed token with SELECT tenancy.set_token($1) (or, for a granted role, SET LOCAL tenancy.tenant_id) in this transaction."
                    .to_owned(),
            ),
            TenancyError::ExplainDenied(_) => Some(
                "Index conditions run before the policies, so plans and row counts would describe other tenants' rows. A superuser can allow it for a trusted role: ALTER ROLE ... SET tenancy.allow_explain = on."
                    .to_owned(),
            ),
            TenancyError::UserContextRequired => {
                Some("The token has no user claim; see tenancy.set_setting('user_claim', ...).".to_owned())
            }
            _ => None,
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            TenancyError::TenantNotActive { tenant, status } => {
                Some(format!("tenant {tenant} is {status}"))
            }
            TenancyError::UnknownTenant(tenant) => Some(format!("no tenant with id {tenant}")),
            _ => None,
        }
    }

    /// Raises this error in PostgreSQL; does not return.
    pub fn raise(self) -> ! {
        if let TenancyError::Catalog(internal) = &self {
            pgrx::log!("tenancy: catalog read failed: {internal}");
        }
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "tenancy");
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        if let Some(detail) = self.detail() {
            report = report.set_detail(detail);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// Unwraps a result or raises its error in PostgreSQL.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, TenancyError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| e.raise())
    }
}
