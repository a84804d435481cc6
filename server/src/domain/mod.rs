//! What the routes and the jobs share: decisions, the tenant context, the
//! audit trail, accounts' passwords, provisioning, configuration, mail
//! texts, message streams and what the hot path remembers between requests. Nothing here knows about HTTP requests.

pub mod audit;
pub mod authz;
pub mod context;
pub mod live;
pub mod mail;
pub mod messaging;
pub mod password;
pub mod provision;
pub mod sessions;
pub mod tenant_config;
