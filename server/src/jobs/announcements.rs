//! Listens for announced session changes and keeps this instance's cache of
//! live sessions true to them (see [`crate::domain::live`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use uuid::Uuid;

use crate::domain::live::{LiveSessions, SESSIONS_CHANNEL};

/// Subscribes to [`SESSIONS_CHANNEL`] and forgets each announced session;
/// while not subscribed the cache is off. Runs until `stopped`.
pub async fn run_sessions(
    redis_url: String,
    sessions: Arc<LiveSessions>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    while !*stopped.borrow() {
        match subscribe(&redis_url).await {
            Ok(mut pubsub) => {
                backoff = Duration::from_millis(100);
                sessions.listening(true);
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => {
                                match message.get_payload::<String>().ok().and_then(|p| Uuid::parse_str(&p).ok()) {
                                    Some(sid) => sessions.forget(sid),
                                    // Not ours to read: trust nothing cached.
                                    None => sessions.listening(true),
                                }
                            }
                            None => break,
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
