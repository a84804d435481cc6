//! Messaging (seeds 000 and 001): messages validated and stored with their
//! outbox row, published to `messages:{tenant_id}` and nowhere else, read
//! by workers of their own tenant only, delivered live to their own user's
//! WebSockets; rate limits across instances; Redis, worker and relay faults.
//!
//! By feature: `api` (sending, listing, validation, rate limits), `workers`
//! (consumer groups and their isolation), `relay` (the outbox relay and
//! Redis faults), `websockets` (live delivery and its end).

mod api;
mod relay;
mod websockets;
mod workers;

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tenancy_server::domain::messaging::stream_key;
use tenancy_server::jobs::relay::Relay;
use tenancy_server::jobs::worker::{Worker, WorkerOptions};
use tenancy_tests::server::{Options, PrivateRedis, TestApp, ALICE, BOB, GUS};
use tenancy_tests::TestResult;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

pub(super) type Entries = Vec<(String, HashMap<String, String>)>;

pub(super) async fn redis(url: &str) -> TestResult<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Every entry of a tenant's stream, oldest first.
pub(super) async fn entries(
    conn: &mut redis::aio::MultiplexedConnection,
    tenant: Uuid,
) -> TestResult<Entries> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream_key(tenant))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|e| {
            let map = e
                .map
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        redis::from_redis_value::<String>(v).unwrap_or_default(),
                    )
                })
                .collect();
            (e.id, map)
        })
        .collect())
}

/// Polls `check` until it returns Some, for at most `secs` seconds.
pub(super) async fn eventually<T, F, Fut>(secs: u64, mut check: F) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("condition not met within {secs} s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tenant's stream once it holds at least `n` entries.
pub(super) async fn wait_entries(url: &str, tenant: Uuid, n: usize) -> TestResult<Entries> {
    let mut conn = redis(url).await?;
    for _ in 0..200 {
        let found = entries(&mut conn, tenant).await?;
        if found.len() >= n {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("fewer than {n} entries in {}", stream_key(tenant)).into())
}

pub(super) async fn new_session(app: &TestApp, token: &str) -> TestResult<Uuid> {
    let (status, body) = app
        .post("/api/chat/sessions", token, json!({"title": "support"}))
        .await?;
    assert_eq!(status, 201, "{body}");
    Ok(body["id"].as_str().unwrap_or_default().parse()?)
}

pub(super) async fn send(
    app: &TestApp,
    token: &str,
    session: Uuid,
    content: &str,
) -> TestResult<Value> {
    let (status, body) = app
        .post(
            "/api/messages",
            token,
            json!({"session_id": session, "content": content}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    Ok(body)
}

pub(super) async fn count(app: &TestApp, sql: &str) -> TestResult<i64> {
    let mut su = app.superuser().await?;
    Ok(sqlx::query_scalar(sql).fetch_one(&mut su).await?)
}

pub(super) fn shared_redis_url(app: &TestApp) -> String {
    app.config.stream_redis_url().to_owned()
}

pub(super) fn worker_options(tenants: Vec<Uuid>, consumer: &str) -> WorkerOptions {
    let mut options = WorkerOptions::new(tenants, consumer);
    options.group = format!("test-{}", Uuid::new_v4().simple());
    options.block = Duration::from_millis(200);
    options
}

pub(super) async fn worker(
    app: &TestApp,
    options: WorkerOptions,
    redis_url: &str,
) -> TestResult<Worker> {
    let db = sqlx::PgPool::connect(&app.config.database_url).await?;
    let keys = std::sync::Arc::new(tenancy_server::domain::sessions::Keys::new(&app.config));
    Ok(Worker::connect(options, redis_url, db, keys).await?)
}

/// Waits until every outbox row is published.
async fn published(app: &TestApp, expected: i64) -> TestResult {
    eventually(15, || async move {
        let done = count(
            app,
            "SELECT count(*) FROM app.message_outbox WHERE published_at IS NOT NULL",
        )
        .await?;
        Ok((done == expected).then_some(()))
    })
    .await
}
