//! End-to-end tests against a real PostgreSQL with the tenancy extension
//! installed. Every assertion is made as an ordinary role (the application
//! role, the table owner, a tenancy_admin member), never as a superuser.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

mod adopting;
mod attack_app_role;
mod attack_resources;
mod attack_tenancy_admin;
mod attack_tenant_admin;
mod bypass;
mod catalog;
mod citus;
mod context;
mod forging;
mod hardening;
mod http_accounts;
mod http_admin;
mod http_audit;
mod http_auth;
mod http_authz;
mod http_data_protection;
mod http_deletion;
mod http_domains;
mod http_exports;
mod http_faults;
mod http_input;
mod http_invitations;
mod http_mail;
mod http_messaging;
mod http_openapi;
mod http_routes;
mod http_sealed_fields;
mod http_tenancy;
mod http_tenant_config;
mod isolation;
mod lint;
mod pooling;
mod protect;
mod upgrade;
