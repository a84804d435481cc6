//! The request path: each request passes `limits::guard`, then (for
//! signed-in routes) `auth::authenticate`, then (for tenant-scoped routes)
//! `tenant::tenant_scope`, which opens the transaction with the signed
//! tenant context; a handler turns it into a database handle only with a
//! decision (`tenant::decide`). Errors become `{error, code}` in `crate::error`.

pub mod auth;
pub mod extract;
pub mod limits;
pub(crate) mod openapi;
pub mod routes;
pub mod tenant;
