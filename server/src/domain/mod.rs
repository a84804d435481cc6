//! What the routes and the jobs share: decisions, the tenant context, the
//! audit trail, accounts' passwords, provisioning, configuration, mail
//! texts, message streams and what the hot path remembers between requests. Nothing here knows about HTTP requests.

pub mod audit;
pub mod authz;
pub mod context;
pub mod integrations;
pub mod keyring;
pub mod live;
pub mod mail;
pub mod mail_api;
pub mod messaging;
pub mod password;
pub mod pii;
pub mod provision;
pub mod sessions;
pub mod tenant_config;

/// Whether `host` (lower case, no port, no final dot) is a DNS host name:
/// at most 253 bytes of dot-separated labels of 1 to 63 letters, digits and
/// inner hyphens (the rules of `tenancy.normalize_host`).
pub fn is_host_name(host: &str) -> bool {
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !host.is_empty() && host.len() <= 253 && host.split('.').all(valid_label)
}
