//! Workers: consume tenant streams in a consumer group, process each
//! message, acknowledge it, and claim what a dead worker left pending.
//!
//! A worker serves a set of tenants (given, or every tenant stream it finds)
//! and reads only their keys, so it can run as a Redis user whose ACL allows
//! only those keys (`~messages:{<tenant>}`). Processing writes through the
//! tenant's own signed context as the message's user: even in PostgreSQL a
//! worker for one tenant can touch nothing of another.
//!
//! Processing here records the message as processed (`processed_at`,
//! `processed_by`); it is idempotent, so a redelivered entry changes
//! nothing. An entry that is malformed or names another tenant than its
//! stream is acknowledged and dropped with an error in the log.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::domain::messaging::{stream_key, tenant_of_key, StreamMessage};
use crate::domain::sessions::Keys;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Tenants to serve; empty: every tenant stream found in Redis.
    pub tenants: Vec<Uuid>,
    /// Consumer group (all workers of one deployment share it).
    pub group: String,
    /// This worker's name in the group (unique per worker).
    pub consumer: String,
    /// Entries pending longer than this on another consumer are claimed.
    pub claim_idle: Duration,
    /// Entries read per stream per round.
    pub batch: usize,
    /// How long one read waits for new entries.
    pub block: Duration,
}

impl WorkerOptions {
    pub fn new(tenants: Vec<Uuid>, consumer: impl Into<String>) -> Self {
        WorkerOptions {
            tenants,
            group: "workers".to_owned(),
            consumer: consumer.into(),
            claim_idle: Duration::from_secs(30),
            batch: 100,
            block: Duration::from_secs(1),
        }
    }
}

/// Why a worker round failed (retried with backoff by `run`).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Context(String),
}

impl WorkerError {
    /// Whether trying again later may succeed: lost connections, a server
    /// restarting, a suspended tenant, serialization conflicts.
    pub fn retryable(&self) -> bool {
        match self {
            WorkerError::Redis(_) => true,
            WorkerError::Context(_) => false,
            WorkerError::Database(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                code.starts_with("08")
                    || code.starts_with("57")
                    || code.starts_with("40")
                    || code == "55000"
                    || code == "53300"
            }
            WorkerError::Database(_) => true,
        }
    }
}

pub struct Worker {
    options: WorkerOptions,
    redis: redis::aio::MultiplexedConnection,
    db: PgPool,
    keys: Arc<Keys>,
    groups_ready: HashSet<Uuid>,
    discovered: Vec<Uuid>,
    discovered_at: Option<Instant>,
}

/// How often a worker with no fixed tenants looks for new streams.
const DISCOVER_EVERY: Duration = Duration::from_secs(10);

impl Worker {
    /// `redis_url` may name a Redis user restricted to these tenants' keys;
    /// `db` is a pool of the application role.
    pub async fn connect(
        options: WorkerOptions,
        redis_url: &str,
        db: PgPool,
        keys: Arc<Keys>,
    ) -> Result<Worker, WorkerError> {
        let client = redis::Client::open(redis_url)?;
        // Reads block for `block`; give replies room beyond that.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(options.block + Duration::from_secs(5));
        let redis = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Worker {
            options,
            redis,
            db,
            keys,
            groups_ready: HashSet::new(),
            discovered: Vec::new(),
            discovered_at: None,
        })
    }

    async fn tenants(&mut self) -> Result<Vec<Uuid>, WorkerError> {
        if !self.options.tenants.is_empty() {
            return Ok(self.options.tenants.clone());
        }
        if self
            .discovered_at
            .is_none_or(|at| at.elapsed() >= DISCOVER_EVERY)
        {
            let mut found = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("messages:{*}")
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut self.redis)
                    .await?;
                found.extend(keys.iter().filter_map(|k| tenant_of_key(k)));
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            found.sort();
            found.dedup();
            self.discovered = found;
            self.discovered_at = Some(Instant::now());
        }
        Ok(self.discovered.clone())
    }

    async fn ensure_group(&mut self, tenant: Uuid) -> Result<(), WorkerError> {
        if self.groups_ready.contains(&tenant) {
            return Ok(());
        }
        let created: redis::RedisResult<()> = self
            .redis
            .xgroup_create_mkstream(stream_key(tenant), &self.options.group, "0")
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        self.groups_ready.insert(tenant);
        Ok(())
    }

    /// One round: claim entries idle on other consumers, then read new ones
    /// (waiting up to `block`). Returns how many entries were processed.
    pub async fn run_once(&mut self) -> Result<usize, WorkerError> {
        let tenants = self.tenants().await?;
        if tenants.is_empty() {
            tokio::time::sleep(self.options.block).await;
            return Ok(0);
        }
        for tenant in &tenants {
            self.ensure_group(*tenant).await?;
        }
        let mut processed = 0;
        for tenant in &tenants {
            let claimed: StreamAutoClaimReply = self
                .redis
                .xautoclaim_options(
                    stream_key(*tenant),
                    &self.options.group,
                    &self.options.consumer,
                    self.options.claim_idle.as_millis() as u64,
                    "0-0",
                    StreamAutoClaimOptions::default().count(self.options.batch),
                )
                .await?;
            for entry in claimed.claimed {
                processed += self.handle(*tenant, entry).await?;
            }
        }
        let keys: Vec<String> = tenants.iter().map(|t| stream_key(*t)).collect();
        let ids: Vec<&str> = tenants.iter().map(|_| ">").collect();
        let options = StreamReadOptions::default()
            .group(&self.options.group, &self.options.consumer)
            .count(self.options.batch)
            .block(self.options.block.as_millis() as usize);
        let reply: Option<StreamReadReply> =
            self.redis.xread_options(&keys, &ids, &options).await?;
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(tenant) = tenant_of_key(&stream.key) else {
                continue;
            };
            for entry in stream.ids {
                processed += self.handle(tenant, entry).await?;
            }
        }
        Ok(processed)
    }

    /// Processes one entry of `tenant`'s stream and acknowledges it. An
    /// error that may pass (the database unreachable, the tenant suspended)
    /// leaves the entry pending, to be claimed again later; any other error
    /// acknowledges it with an error in the log, so that one bad entry never
    /// holds up the others.
    async fn handle(&mut self, tenant: Uuid, entry: StreamId) -> Result<usize, WorkerError> {
        let key = stream_key(tenant);
        let done = match StreamMessage::from_entry(tenant, &entry.map) {
            Ok(message) => match self.process(&message).await {
                Ok(()) => 1,
                Err(e) if e.retryable() => {
                    tracing::warn!(stream = %key, entry = %entry.id, error = %e, "processing failed; left pending for a retry");
                    return Ok(0);
                }
                Err(e) => {
                    tracing::error!(stream = %key, entry = %entry.id, message_id = %message.message_id, error = %e, "processing failed for good; dropping the entry");
                    0
                }
            },
            Err(e) => {
                tracing::error!(stream = %key, entry = %entry.id, error = %e, "dropping a bad stream entry");
                0
            }
        };
        let _: i64 = self
            .redis
            .xack(&key, &self.options.group, &[&entry.id])
            .await?;
        Ok(done)
    }

    async fn process(&self, message: &StreamMessage) -> Result<(), WorkerError> {
        let mut tx = self.db.begin().await?;
        crate::domain::context::enter(&mut tx, &self.keys, message.tenant_id, message.user_id)
            .await
            .map_err(|e| WorkerError::Context(e.to_string()))?;
        let done = sqlx::query(
            "UPDATE app.messages SET processed_at = now(), processed_by = $2
             WHERE id = $1 AND processed_at IS NULL",
        )
        .bind(message.message_id)
        .bind(&self.options.consumer)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if done.rows_affected() == 0 {
            tracing::debug!(message_id = %message.message_id, "already processed (duplicate delivery)");
        }
        Ok(())
    }

    /// Processes until `shutdown` turns true, retrying with backoff while
    /// Redis or PostgreSQL fail.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            let round = tokio::select! {
                round = self.run_once() => round,
                _ = shutdown.changed() => break,
            };
            match round {
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "worker round failed");
                    // A restarted Redis has no groups: create them again.
                    self.groups_ready.clear();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Counts of a tenant stream's consumer group, for operators and tests.
pub async fn pending(
    redis: &mut impl redis::aio::ConnectionLike,
    tenant: Uuid,
    group: &str,
) -> redis::RedisResult<usize> {
    let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream_key(tenant))
        .arg(group)
        .query_async(redis)
        .await?;
    Ok(reply.count())
}
