//! Scale in tenants: the same tenant-scoped list endpoint served from a
//! database holding 10 tenants and from one holding 10,000, with the same
//! rows per tenant, in one run, interleaved.
//!
//!   A  GET /api/boards/{id}/tasks against the database of 10 tenants
//!   B  the same request against the database of 10,000 tenants
//!
//! Every tenant has one workspace, one board and ROWS tasks; the requests
//! come from acme's owner in both. Each database has its own instance of
//! the service, both in this process, started the same way.
//!
//! Run: `cargo bench -p tenancy-tests --bench tenant_scale`
//! (env: ROUNDS=5 SECONDS=5 CONCURRENCY=16 SMALL=10 LARGE=10000 ROWS=20).
//! Prints requests per second and latency of each, and the ratio B/A of
//! the medians over the rounds (target >= 0.9).

use serde_json::Value;
use tenancy_tests::load::load;
use tenancy_tests::server::{TestApp, ALICE};
use tenancy_tests::{env_or, median};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A service over a database of `tenants` tenants; returns it, acme's
/// owner's token and the URL of acme's board's task list.
async fn loaded(tenants: u64, rows: u64) -> BenchResult<(TestApp, String, String)> {
    let app = TestApp::spawn().await?;
    let token = app.login(ALICE).await?;
    let board = tenancy_tests::load::board_with_tasks(&app, &token, rows).await?;
    // The other tenants (acme and globex are two), created by the catalog's
    // own function, then their rows in bulk (triggers off: data loading).
    let others = tenants.saturating_sub(2);
    let mut su = app.superuser().await?;
    sqlx::raw_sql(&format!(
        "DO $$ BEGIN
           FOR i IN 1..{others} LOOP
             PERFORM tenancy.create_tenant('scale-' || i, 'Scale ' || i);
           END LOOP;
         END $$;
         SET session_replication_role = replica;
         INSERT INTO app.workspaces (tenant_id, name)
           SELECT id, 'Work' FROM tenancy.tenants WHERE slug LIKE 'scale-%';
         INSERT INTO app.boards (tenant_id, workspace_id, name)
           SELECT tenant_id, id, 'Board' FROM app.workspaces
           WHERE tenant_id IN (SELECT id FROM tenancy.tenants WHERE slug LIKE 'scale-%');
         INSERT INTO app.tasks (tenant_id, board_id, title)
           SELECT b.tenant_id, b.id, 'task ' || n FROM app.boards b, generate_series(1, {rows}) n
           WHERE b.tenant_id IN (SELECT id FROM tenancy.tenants WHERE slug LIKE 'scale-%');
         RESET session_replication_role;
         ANALYZE;"
    ))
    .execute(&mut su)
    .await?;
    let held: i64 = app.scalar("SELECT count(*) FROM tenancy.tenants").await?;
    let per_tenant: i64 = app
        .scalar("SELECT count(*) FROM app.tasks GROUP BY tenant_id ORDER BY count(*) DESC LIMIT 1")
        .await?;
    assert_eq!(held as u64, tenants.max(2));
    assert_eq!(per_tenant as u64, rows);
    let url = app.url(&format!("/api/boards/{board}/tasks"));
    Ok((app, token, url))
}

#[tokio::main]
async fn main() -> BenchResult {
    let rounds = env_or("ROUNDS", 5);
    let seconds = env_or("SECONDS", 5);
    let concurrency = env_or("CONCURRENCY", 16) as usize;
    let (small_n, large_n) = (env_or("SMALL", 10), env_or("LARGE", 10_000));
    let rows = env_or("ROWS", 20);

    let started = std::time::Instant::now();
    let (_small, small_token, small_url) = loaded(small_n, rows).await?;
    let (_large, large_token, large_url) = loaded(large_n, rows).await?;
    println!(
        "== loaded {small_n} and {large_n} tenants, {rows} tasks each, in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    // The same answer from both, or the comparison means nothing.
    let mut answers = vec![];
    for (url, token) in [(&small_url, &small_token), (&large_url, &large_token)] {
        let body: Value = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        answers.push(body.as_array().map(Vec::len));
    }
    assert_eq!(answers, [Some(rows as usize), Some(rows as usize)]);

    println!(
        "== {rounds} interleaved rounds, {seconds}s per phase, {concurrency} concurrent clients"
    );
    let (mut a_rps, mut b_rps, mut a99, mut b99) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let a = load(
            &client,
            &small_url,
            Some(&small_token),
            concurrency,
            seconds,
        )
        .await;
        let b = load(
            &client,
            &large_url,
            Some(&large_token),
            concurrency,
            seconds,
        )
        .await;
        println!(
            "round {round}: {small_n} tenants {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors) | {large_n} tenants {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors)",
            a.rps, a.p50.as_secs_f64() * 1e3, a.p99.as_secs_f64() * 1e3, a.errors,
            b.rps, b.p50.as_secs_f64() * 1e3, b.p99.as_secs_f64() * 1e3, b.errors
        );
        a_rps.push(a.rps);
        b_rps.push(b.rps);
        a99.push(a.p99.as_secs_f64() * 1e3);
        b99.push(b.p99.as_secs_f64() * 1e3);
    }
    let (ra, rb) = (median(a_rps), median(b_rps));
    println!(
        "\nmedian {small_n} tenants: {ra:.0} req/s, p99 {:.2} ms",
        median(a99)
    );
    println!(
        "median {large_n} tenants: {rb:.0} req/s, p99 {:.2} ms",
        median(b99)
    );
    println!(
        "ratio {large_n}/{small_n} = {:.3}   (target >= 0.9)",
        rb / ra
    );
    Ok(())
}
