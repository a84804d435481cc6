//! The outbox relay: publishes `app.message_outbox` rows to the tenant
//! streams, in outbox order, and stamps each row with its stream entry id.
//!
//! Runs as the owner role, through the three SQL functions that may read the
//! outbox across tenants (`app.relay_pending`, `app.relay_published`,
//! `app.relay_purge`); anything else the owner runs on the outbox is confined
//! to a tenant context. Any number of relays may run: a transaction-scoped advisory
//! lock lets one publish at a time, which keeps each session's messages in
//! order. While Redis is unavailable nothing is marked published, so nothing
//! is lost; the relay retries with backoff. A crash between publishing and
//! committing publishes those rows again, under the same `message_id`.
//!
//! The relay must never take a row's tenant from anything but its
//! `tenant_id` column, which the tenant policy checked when it was written.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redis::streams::StreamMaxlen;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::Config;
use crate::domain::messaging::{stream_key, StreamMessage};
use crate::error::{AppError, AppResult};

/// Advisory lock key held by the publishing relay ("tenancy" in ASCII).
const RELAY_LOCK: i64 = 0x0074_656e_616e_6379;
/// Rows published per round trip.
const BATCH: i64 = 500;
/// How often the relay looks even without a notification.
const POLL: Duration = Duration::from_millis(500);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Published rows are kept this long (for inspection), then deleted.
const KEEP_PUBLISHED: &str = "1 day";
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Why a relay round failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    tenant_id: Uuid,
    message_id: Uuid,
    session_id: Uuid,
    user_id: Uuid,
    content: String,
    message_created_at: DateTime<Utc>,
}

pub struct Relay {
    db: PgPool,
    redis: redis::aio::ConnectionManager,
    maxlen: usize,
}

impl Relay {
    /// Connects as the owner role (`DATABASE_OWNER_URL`) and to the stream Redis.
    pub async fn connect(config: &Config) -> AppResult<Relay> {
        let db = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&config.database_owner_url)
            .await
            .map_err(|e| AppError::Unavailable(format!("database (owner): {e}")))?;
        let redis = crate::state::redis_manager(config.stream_redis_url()).await?;
        Ok(Relay {
            db,
            redis,
            maxlen: config.stream_maxlen,
        })
    }

    /// Publishes up to one batch of pending rows; returns how many. Zero
    /// when there are none or another relay holds the lock.
    pub async fn run_once(&self) -> Result<usize, RelayError> {
        let mut tx = self.db.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, tenant_id, message_id, session_id, user_id, content, message_created_at
             FROM app.relay_pending($1)",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // One pipeline, not MULTI: tenant streams may live on different
        // shards. A partial failure republishes some rows under their ids.
        let mut pipe = redis::pipe();
        for row in &rows {
            let fields = StreamMessage {
                message_id: row.message_id,
                tenant_id: row.tenant_id,
                user_id: row.user_id,
                session_id: row.session_id,
                content: row.content.clone(),
                created_at: row.message_created_at,
            }
            .fields();
            let key = stream_key(row.tenant_id);
            if self.maxlen > 0 {
                pipe.xadd_maxlen(key, StreamMaxlen::Approx(self.maxlen), "*", &fields);
            } else {
                pipe.xadd(key, "*", &fields);
            }
        }
        let mut redis = self.redis.clone();
        let entry_ids: Vec<String> = pipe.query_async(&mut redis).await.inspect_err(|_| {
            crate::metrics::with(|m| m.redis_errors.inc());
        })?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let tenants: Vec<Uuid> = rows.iter().map(|r| r.tenant_id).collect();
        sqlx::query("SELECT app.relay_published($1, $2, $3)")
            .bind(&ids)
            .bind(&tenants)
            .bind(&entry_ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let oldest = rows.iter().map(|r| r.message_created_at).min();
        crate::metrics::with(|m| {
            m.relay_published.inc_by(rows.len() as u64);
            if let Some(oldest) = oldest {
                let lag = chrono::Utc::now() - oldest;
                m.relay_lag_seconds
                    .set(lag.num_milliseconds() as f64 / 1000.0);
            }
        });
        Ok(rows.len())
    }

    /// Deletes rows published long ago.
    async fn purge(&self) -> Result<u64, RelayError> {
        let done: i64 = sqlx::query_scalar("SELECT app.relay_purge($1::interval)")
            .bind(KEEP_PUBLISHED)
            .fetch_one(&self.db)
            .await?;
        Ok(u64::try_from(done).unwrap_or(0))
    }

    /// Publishes until `shutdown` turns true: at once on each commit that
    /// wrote outbox rows (LISTEN), otherwise every `POLL`; with backoff while
    /// PostgreSQL or Redis fail.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut listener: Option<PgListener> = None;
        let mut backoff = MIN_BACKOFF;
        let mut last_purge = Instant::now();
        while !*shutdown.borrow() {
            if listener.is_none() {
                listener = match PgListener::connect_with(&self.db).await {
                    Ok(mut l) => match l.listen("tenancy_outbox").await {
                        Ok(()) => Some(l),
                        Err(e) => {
                            tracing::debug!(error = %e, "relay cannot listen yet");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "relay cannot listen yet");
                        None
                    }
                };
            }
            match self.run_once().await {
                Ok(n) => {
                    backoff = MIN_BACKOFF;
                    if n > 0 {
                        tracing::debug!(published = n, "relay published");
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "relay cannot publish; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            if last_purge.elapsed() >= PURGE_EVERY {
                last_purge = Instant::now();
                match self.purge().await {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "purged published outbox rows"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "outbox purge failed"),
                }
            }
            let lost = {
                let wait = async {
                    match listener.as_mut() {
                        Some(l) => {
                            matches!(tokio::time::timeout(POLL, l.recv()).await, Ok(Err(_)))
                        }
                        None => {
                            tokio::time::sleep(POLL).await;
                            false
                        }
                    }
                };
                tokio::select! {
                    lost = wait => lost,
                    _ = shutdown.changed() => false,
                }
            };
            if lost {
                listener = None;
            }
        }
    }
}
