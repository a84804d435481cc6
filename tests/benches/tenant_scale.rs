//! Scale in tenants: the same tenant-scoped list endpoint served from a
//! database holding 10 tenants and from one holding 10,000, with the same
//! rows per tenant, in one run, interleaved.
//!
//!   A  GET /api/boards/{id}/tasks against the database of 10 tenants
//!   B  the same request against the database of 10,000 tenants
//!
//! Every tenant has one workspace, one board and ROWS tasks, and its own
//! owner with a session. With SPREAD=1 (the default) the clients take every
//! tenant's owner and board in turn, so each database serves all of its
//! tenants at once; with SPREAD=0 only acme's. Each database has its own
//! instance of the service, both in this process, started the same way.
//!
//! Run: `cargo bench -p tenancy-tests --bench tenant_scale`
//! (env: ROUNDS=5 SECONDS=5 CONCURRENCY=16 SMALL=10 LARGE=10000 ROWS=20
//! SPREAD=1). Prints requests per second and latency of each, and the ratio
//! B/A of the medians over the rounds (target >= 0.9).

use std::sync::Arc;

use futures::StreamExt;
use serde_json::Value;
use tenancy_server::domain::sessions::{open_session, Origin, TokenSubject};
use tenancy_server::AppState;
use tenancy_tests::load::load_many;
use tenancy_tests::server::{TestApp, ALICE};
use tenancy_tests::{env_or, median};
use uuid::Uuid;

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What the clients request: (URL, bearer token) pairs.
type Targets = Arc<Vec<(String, Option<String>)>>;

/// A service over a database of `tenants` tenants; returns it and the
/// targets: acme's board as its owner, then (with `spread`) every other
/// tenant's board as its owner.
async fn loaded(tenants: u64, rows: u64, spread: bool) -> BenchResult<(TestApp, Targets)> {
    let app = TestApp::spawn().await?;
    let token = app.login(ALICE).await?;
    let board = tenancy_tests::load::board_with_tasks(&app, &token, rows, "").await?;
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
         INSERT INTO app.users (email, password_hash)
           SELECT 'owner@' || slug || '.test', (SELECT password_hash FROM app.users WHERE email = '{ALICE}')
           FROM tenancy.tenants WHERE slug LIKE 'scale-%';
         INSERT INTO app.tenant_memberships (tenant_id, user_id, role)
           SELECT t.id, u.id, 'owner' FROM tenancy.tenants t
           JOIN app.users u ON u.email = 'owner@' || t.slug || '.test';
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
    let mut targets = vec![(app.url(&format!("/api/boards/{board}/tasks")), Some(token))];
    if spread {
        // A session for each owner, opened as a login would (no password
        // hashing: the bench is about serving, not signing in).
        let owners: Vec<(Uuid, String, Uuid, String)> = sqlx::query_as(
            "SELECT t.id, t.slug, u.id, b.id::text FROM tenancy.tenants t
             JOIN app.tenant_memberships m ON m.tenant_id = t.id
             JOIN app.users u ON u.id = m.user_id
             JOIN app.boards b ON b.tenant_id = t.id
             WHERE t.slug LIKE 'scale-%' ORDER BY t.slug",
        )
        .fetch_all(&mut su)
        .await?;
        let state = AppState::connect(app.config.clone())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let opened =
            futures::stream::iter(owners.into_iter().map(|(tenant, slug, user, board)| {
                let state = state.clone();
                async move {
                    let subject = TokenSubject {
                        user_id: user,
                        email: format!("owner@{slug}.test"),
                        super_admin: false,
                        tenant: Some((tenant, slug)),
                        workspace_id: None,
                        tenants: None,
                    };
                    let origin = Origin {
                        user_agent: "tenant_scale",
                        address: "127.0.0.1",
                    };
                    open_session(&state, subject, origin)
                        .await
                        .map(|session| (board, session.access))
                }
            }))
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        for session in opened {
            let (board, access) = session.map_err(|e| format!("{e:?}"))?;
            targets.push((app.url(&format!("/api/boards/{board}/tasks")), Some(access)));
        }
    }
    Ok((app, Arc::new(targets)))
}

#[tokio::main]
async fn main() -> BenchResult {
    let rounds = env_or("ROUNDS", 5);
    let seconds = env_or("SECONDS", 5);
    let concurrency = env_or("CONCURRENCY", 16) as usize;
    let (small_n, large_n) = (env_or("SMALL", 10), env_or("LARGE", 10_000));
    let rows = env_or("ROWS", 20);

    let spread = env_or("SPREAD", 1) == 1;

    let started = std::time::Instant::now();
    let (_small, small) = loaded(small_n, rows, spread).await?;
    let (_large, large) = loaded(large_n, rows, spread).await?;
    println!(
        "== loaded {small_n} and {large_n} tenants, {rows} tasks each, in {:.0} s; requests go to {} and {} tenants",
        started.elapsed().as_secs_f64(),
        small.len(),
        large.len()
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    // Every target answers with its board's rows, or the comparison means
    // nothing (and a tenant seeing another's rows would show here too).
    for targets in [&small, &large] {
        for (url, token) in targets.iter() {
            let mut request = client.get(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let body: Value = request.send().await?.json().await?;
            assert_eq!(
                body.as_array().map(Vec::len),
                Some(rows as usize),
                "{url}: {body}"
            );
        }
    }

    println!(
        "== {rounds} interleaved rounds, {seconds}s per phase, {concurrency} concurrent clients"
    );
    let (mut a_rps, mut b_rps, mut a99, mut b99) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let a = load_many(&client, small.clone(), concurrency, seconds).await;
        let b = load_many(&client, large.clone(), concurrency, seconds).await;
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
