//! Messages between the API, the tenant streams and their consumers.
//!
//! The contract: every message lives in PostgreSQL first (`app.messages`,
//! with an `app.message_outbox` row written by a trigger in the same
//! transaction). The [`relay`] publishes outbox rows to the Redis Stream
//! `messages:{tenant_id}` (the braces are a Redis Cluster hash tag: one
//! tenant's stream lives on one shard). [`worker`]s consume those streams in
//! consumer groups; the [`hub`] delivers them to the WebSockets of the
//! message's own user. Delivery is at least once; `message_id` identifies
//! duplicates.
//!
//! Nothing here may ever take a stream's tenant from anywhere but the key it
//! was read from, nor deliver an entry whose tenant differs from its key.

pub mod hub;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The stream of one tenant: `messages:{<tenant uuid>}`.
pub fn stream_key(tenant: Uuid) -> String {
    format!("messages:{{{tenant}}}")
}

/// The tenant a stream key names, if it is one of ours.
pub fn tenant_of_key(key: &str) -> Option<Uuid> {
    key.strip_prefix("messages:{")?
        .strip_suffix('}')
        .and_then(|t| Uuid::parse_str(t).ok())
}

/// One stream entry: what a consumer learns about a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMessage {
    pub message_id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// Why a stream entry was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("field {0} is missing or not text")]
    Missing(&'static str),
    #[error("field {0} is malformed")]
    Malformed(&'static str),
    #[error("entry names tenant {entry} but was read from the stream of {stream}")]
    WrongTenant { entry: Uuid, stream: Uuid },
}

impl StreamMessage {
    /// The entry's fields, in the order they are written.
    pub fn fields(&self) -> [(&'static str, String); 6] {
        [
            ("message_id", self.message_id.to_string()),
            ("tenant_id", self.tenant_id.to_string()),
            ("user_id", self.user_id.to_string()),
            ("session_id", self.session_id.to_string()),
            ("content", self.content.clone()),
            ("created_at", self.created_at.to_rfc3339()),
        ]
    }

    /// Parses an entry read from the stream of `stream_tenant`; an entry
    /// naming another tenant is refused.
    pub fn from_entry(
        stream_tenant: Uuid,
        map: &HashMap<String, redis::Value>,
    ) -> Result<Self, EntryError> {
        let text = |name: &'static str| -> Result<String, EntryError> {
            match map.get(name) {
                Some(value) => {
                    redis::from_redis_value::<String>(value).map_err(|_| EntryError::Missing(name))
                }
                None => Err(EntryError::Missing(name)),
            }
        };
        let id = |name: &'static str| -> Result<Uuid, EntryError> {
            Uuid::parse_str(&text(name)?).map_err(|_| EntryError::Malformed(name))
        };
        let message = StreamMessage {
            message_id: id("message_id")?,
            tenant_id: id("tenant_id")?,
            user_id: id("user_id")?,
            session_id: id("session_id")?,
            content: text("content")?,
            created_at: DateTime::parse_from_rfc3339(&text("created_at")?)
                .map_err(|_| EntryError::Malformed("created_at"))?
                .with_timezone(&Utc),
        };
        if message.tenant_id != stream_tenant {
            return Err(EntryError::WrongTenant {
                entry: message.tenant_id,
                stream: stream_tenant,
            });
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(message: &StreamMessage) -> HashMap<String, redis::Value> {
        message
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), redis::Value::BulkString(v.into_bytes())))
            .collect()
    }

    fn sample() -> StreamMessage {
        StreamMessage {
            message_id: Uuid::new_v4(),
            tenant_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            content: "hello {world}".to_owned(),
            created_at: DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn key_keeps_the_hash_tag_and_round_trips() {
        let tenant = Uuid::new_v4();
        let key = stream_key(tenant);
        assert_eq!(key, format!("messages:{{{tenant}}}"));
        assert_eq!(tenant_of_key(&key), Some(tenant));
        assert_eq!(tenant_of_key("messages:1"), None);
        assert_eq!(tenant_of_key("session:{x}"), None);
    }

    #[test]
    fn entry_round_trips() {
        let message = sample();
        assert_eq!(
            StreamMessage::from_entry(message.tenant_id, &entry(&message)),
            Ok(message)
        );
    }

    #[test]
    fn entry_of_another_tenant_is_refused() {
        let message = sample();
        let other = Uuid::new_v4();
        assert_eq!(
            StreamMessage::from_entry(other, &entry(&message)),
            Err(EntryError::WrongTenant {
                entry: message.tenant_id,
                stream: other
            })
        );
    }

    #[test]
    fn incomplete_or_malformed_entries_are_refused() {
        let message = sample();
        let mut map = entry(&message);
        map.remove("session_id");
        assert_eq!(
            StreamMessage::from_entry(message.tenant_id, &map),
            Err(EntryError::Missing("session_id"))
        );
        let mut map = entry(&message);
        map.insert(
            "user_id".to_owned(),
            redis::Value::BulkString(b"not-a-uuid".to_vec()),
        );
        assert_eq!(
            StreamMessage::from_entry(message.tenant_id, &map),
            Err(EntryError::Malformed("user_id"))
        );
    }
}
