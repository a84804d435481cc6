//! HTTP load benchmark: the full tenant path against a bare endpoint, in one
//! run, interleaved.
//!
//!   A  GET /api/boards/{id}/tasks with a bearer token: JWT check, session
//!      check in Redis, tenant resolution, a transaction with the signed
//!      context, membership, one indexed query through RLS.
//!   B  GET /bare/boards/{id}/tasks: the same query with an explicit
//!      `tenant_id = $1`, no auth, no transaction, no RLS (superuser pool).
//!
//! Run: `cargo bench -p tenancy-tests --bench http_load`
//! (env: ROUNDS=5 SECONDS=5 CONCURRENCY=16). Prints requests per second,
//! p50 and p99 of each, and the ratio A/B of the medians over the rounds.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;
use tenancy_tests::load::load;
use tenancy_tests::server::{TestApp, ALICE};
use tenancy_tests::{env_or, median};
use uuid::Uuid;

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const QUERY: &str = "SELECT id, board_id, title, description, status, assignee_id, created_by, created_at, updated_at \
                     FROM app.tasks WHERE tenant_id = $1 AND board_id = $2 ORDER BY created_at, id";

#[derive(Clone)]
struct Bare {
    pool: PgPool,
    tenant: Uuid,
}

async fn bare_tasks(State(bare): State<Bare>, Path(board): Path<Uuid>) -> Json<Value> {
    let rows = sqlx::query_as::<
        _,
        (
            Uuid,
            Uuid,
            String,
            String,
            String,
            Option<Uuid>,
            Option<Uuid>,
            chrono::DateTime<chrono::Utc>,
            chrono::DateTime<chrono::Utc>,
        ),
    >(QUERY)
    .bind(bare.tenant)
    .bind(board)
    .fetch_all(&bare.pool)
    .await
    .unwrap_or_default();
    Json(Value::Array(
        rows.into_iter()
            .map(|(id, board_id, title, description, status, assignee_id, created_by, created_at, updated_at)| {
                json!({"id": id, "board_id": board_id, "title": title, "description": description,
                       "status": status, "assignee_id": assignee_id, "created_by": created_by,
                       "created_at": created_at, "updated_at": updated_at})
            })
            .collect(),
    ))
}

#[tokio::main]
async fn main() -> BenchResult {
    let rounds = env_or("ROUNDS", 5);
    let seconds = env_or("SECONDS", 5);
    let concurrency = env_or("CONCURRENCY", 16) as usize;

    let app = TestApp::spawn().await?;
    let token = app.login(ALICE).await?;
    let board = tenancy_tests::load::board_with_tasks(&app, &token, 20, "").await?;

    let bare_pool =
        PgPool::connect(&format!("{}/{}", tenancy_tests::server_url(), app.db_name)).await?;
    let bare = Bare {
        pool: bare_pool,
        tenant: app.acme,
    };
    let router = Router::new()
        .route("/bare/boards/{id}/tasks", get(bare_tasks))
        .with_state(bare);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let a_url = app.url(&format!("/api/boards/{board}/tasks"));
    let b_url = format!("http://{bare_addr}/bare/boards/{board}/tasks");
    // Same answer from both, or the comparison means nothing.
    let a_body: Value = client
        .get(&a_url)
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let b_body: Value = client.get(&b_url).send().await?.json().await?;
    assert_eq!(a_body, b_body, "A and B must return the same rows");
    assert_eq!(a_body.as_array().map(Vec::len), Some(20));

    println!(
        "== {rounds} interleaved rounds, {seconds}s per phase, {concurrency} concurrent clients"
    );
    let (mut a_rps, mut b_rps, mut a50, mut a99, mut b50, mut b99) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let a = load(&client, &a_url, Some(&token), concurrency, seconds).await;
        let b = load(&client, &b_url, None, concurrency, seconds).await;
        println!(
            "round {round}: A {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors) | B {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors)",
            a.rps, a.p50.as_secs_f64() * 1e3, a.p99.as_secs_f64() * 1e3, a.errors,
            b.rps, b.p50.as_secs_f64() * 1e3, b.p99.as_secs_f64() * 1e3, b.errors
        );
        a_rps.push(a.rps);
        b_rps.push(b.rps);
        a50.push(a.p50.as_secs_f64() * 1e3);
        a99.push(a.p99.as_secs_f64() * 1e3);
        b50.push(b.p50.as_secs_f64() * 1e3);
        b99.push(b.p99.as_secs_f64() * 1e3);
    }
    let (ra, rb) = (median(a_rps), median(b_rps));
    println!(
        "\nmedian A (authenticated, tenant-scoped): {ra:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        median(a50),
        median(a99)
    );
    println!(
        "median B (bare, explicit WHERE):         {rb:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        median(b50),
        median(b99)
    );
    println!("ratio A/B = {:.3}   (target >= 0.8)", ra / rb);
    Ok(())
}
