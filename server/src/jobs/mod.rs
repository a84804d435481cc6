//! Work outside the request path: the announcements that keep the
//! instance's caches true, the outbox relays (messages to Redis
//! Streams, mail to SMTP), the message worker, audit retention and tenant
//! removal, and the operations of the command line (migrations, accounts,
//! the schema lint).

pub mod announcements;
pub mod export;
pub mod keys;
pub mod lint;
pub mod mail;
pub mod ops;
pub mod relay;
pub mod retention;
pub mod worker;
