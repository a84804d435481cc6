//! What the routes and the jobs share: decisions, the tenant context, the
//! audit trail, accounts' passwords, provisioning, configuration, mail
//! texts and message streams. Nothing here knows about HTTP requests.

pub mod audit;
pub mod authz;
pub mod context;
pub mod mail;
pub mod messaging;
pub mod password;
pub mod provision;
pub mod sessions;
pub mod tenant_config;
