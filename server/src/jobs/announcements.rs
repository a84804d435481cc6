//! Listens for announced session changes and keeps this instance's cache of
//! live sessions true to them (see [`crate::domain::live`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use uuid::Uuid;

use crate::domain::live::{LiveSessions, SESSIONS_CHANNEL};

/// What an instance publishes every [`HEARTBEAT`] on [`SESSIONS_CHANNEL`]:
/// hearing it proves the subscription still delivers.
const HEARTBEAT_PAYLOAD: &str = "heartbeat";

/// How often each instance publishes its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A subscription that delivers nothing for this long (not even this
/// instance's own heartbeat) is taken as lost.
const SILENCE: Duration = Duration::from_secs(3);

/// Subscribes to [`SESSIONS_CHANNEL`] and forgets each announced session;
/// while not subscribed, or while the subscription is silent, the cache is
/// off. Publishes this instance's heartbeat through `redis` meanwhile. Runs
/// until `stopped`.
pub async fn run_sessions(
    redis_url: String,
    redis: redis::aio::ConnectionManager,
    sessions: Arc<LiveSessions>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let heartbeat = tokio::spawn(beat(redis, stopped.clone()));
    while !*stopped.borrow() {
        match subscribe(&redis_url).await {
            Ok(mut pubsub) => {
                backoff = Duration::from_millis(100);
                sessions.listening(true);
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = tokio::time::timeout(SILENCE, messages.next()) => match message {
                            Ok(Some(message)) => {
                                let payload = message.get_payload::<String>().unwrap_or_default();
                                match Uuid::parse_str(&payload) {
                                    Ok(sid) => sessions.forget(sid),
                                    Err(_) if payload == HEARTBEAT_PAYLOAD => {}
                                    // Not ours to read: trust nothing cached.
                                    Err(_) => sessions.listening(true),
                                }
                            }
                            Ok(None) => break,
                            Err(_) => {
                                tracing::warn!("session announcements went silent");
                                break;
                            }
                        },
                        _ = stopped.changed() => break,
                    }
                }
                sessions.listening(false);
                if !*stopped.borrow() {
                    tracing::warn!("session announcements lost; checking every request in Redis until they are back");
                }
            }
            Err(e) => {
                sessions.listening(false);
                tracing::warn!(error = %e, "cannot subscribe to session announcements; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    let _ = heartbeat.await;
}

/// Publishes [`HEARTBEAT_PAYLOAD`] every [`HEARTBEAT`] until `stopped`.
async fn beat(mut redis: redis::aio::ConnectionManager, mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow() {
        let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(SESSIONS_CHANNEL)
            .arg(HEARTBEAT_PAYLOAD)
            .query_async(&mut redis)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "session heartbeat not sent");
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stopped.changed() => {}
        }
    }
}

async fn subscribe(url: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let client = redis::Client::open(url)?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::IoError, "subscription timed out"))
        })??;
    pubsub.subscribe(SESSIONS_CHANNEL).await?;
    Ok(pubsub)
}
