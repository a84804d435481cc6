//! Faults with the real dependencies: the service's own Redis stops and
//! comes back. Requests fail closed with a clean 503 (no internals), and the
//! service recovers by itself.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tenancy_tests::server::{Options, PrivateRedis, TestApp, ALICE};
use tenancy_tests::TestResult;

#[tokio::test]
async fn redis_down_fails_closed_with_a_clean_503_and_recovers() -> TestResult {
    let mut redis = PrivateRedis::start().await?;
    let port = redis.port;
    let app = TestApp::spawn_with(Options {
        redis_url: Some(format!("redis://127.0.0.1:{port}")),
        ..Options::default()
    })
    .await?;
    let token = app.login(ALICE).await?;
    let (status, _) = app.get("/api/workspaces", &token).await?;
    assert_eq!(status, 200);

    redis.stop().await?;
    let expected = json!({"error": "Service temporarily unavailable", "code": "unavailable"});
    // The instance stops trusting what it remembers of sessions as soon as
    // it sees its subscription end (a few milliseconds after the stop).
    let stopped = std::time::Instant::now();
    let (mut status, mut body) = app.get("/api/workspaces", &token).await?;
    while status == 200 && stopped.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        (status, body) = app.get("/api/workspaces", &token).await?;
    }
    assert_eq!(
        (status, body),
        (503, expected.clone()),
        "revocation cannot be checked: fail closed"
    );
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/token",
            None,
            &[],
            Some(json!({"email": ALICE, "password": tenancy_tests::server::PASSWORD})),
        )
        .await?;
    assert_eq!((status, body), (503, expected));
    let (status, body) = app.call(Method::GET, "/readyz", None, &[], None).await?;
    assert_eq!(
        (status, body),
        (503, json!({"postgres": "up", "redis": "down"}))
    );
    let (status, _) = app.call(Method::GET, "/healthz", None, &[], None).await?;
    assert_eq!(status, 200, "alive, just not ready");

    let _redis = PrivateRedis::start_on(port).await?;
    // The connection manager reconnects on its own; give it a moment.
    let mut recovered = None;
    for _ in 0..50 {
        let (status, body) = app.call(Method::GET, "/readyz", None, &[], None).await?;
        if status == 200 {
            recovered = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(recovered, Some(json!({"postgres": "up", "redis": "up"})));
    // This Redis keeps nothing on disk, so the session is gone: the old token
    // is refused (never accepted unchecked) and a new login works.
    let (status, _) = app.get("/api/workspaces", &token).await?;
    assert_eq!(status, 401);
    let fresh = app.login(ALICE).await?;
    let (status, _) = app.get("/api/workspaces", &fresh).await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn lost_database_connections_are_a_clean_503_then_recover() -> TestResult {
    let app = TestApp::spawn().await?;
    let token = app.login(ALICE).await?;
    let (status, _) = app.get("/api/workspaces", &token).await?;
    assert_eq!(status, 200);

    // What a PostgreSQL restart does to the pool: every connection dies.
    let mut su = app.superuser().await?;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND usename = 'tenancy_t_srv_app') t",
    )
    .fetch_one(&mut su)
    .await?;
    assert!(killed > 0, "the service had connections");

    let mut statuses = Vec::new();
    for _ in 0..20 {
        let (status, body) = app.get("/api/workspaces", &token).await?;
        if status != 200 {
            assert_eq!(
                (status, body),
                (
                    503,
                    json!({"error": "Service temporarily unavailable", "code": "unavailable"})
                ),
                "a broken connection is never a 500 and never leaks internals"
            );
        }
        statuses.push(status);
        if status == 200 {
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&200),
        "recovers with fresh connections: {statuses:?}"
    );
    Ok(())
}

/// Connections that died while idle in the pool (what a PostgreSQL restart
/// leaves) cost no tenant-scoped request: the transaction is opened again
/// on another connection, the dead ones are dropped.
#[tokio::test]
async fn dead_pooled_connections_cost_no_tenant_request() -> TestResult {
    let app = TestApp::spawn().await?;
    let token = app.login(ALICE).await?;
    // Several connections in the pool, all idle.
    let requests = (0..6).map(|_| app.get("/api/workspaces", &token));
    for (status, _) in futures::future::try_join_all(requests).await? {
        assert_eq!(status, 200);
    }
    let mut su = app.superuser().await?;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND usename = 'tenancy_t_srv_app') t",
    )
    .fetch_one(&mut su)
    .await?;
    assert!(killed > 1, "the pool held {killed} connections");
    for _ in 0..killed + 2 {
        let (status, body) = app.get("/api/workspaces", &token).await?;
        assert_eq!(status, 200, "{body}");
    }
    Ok(())
}

/// Makes every INSERT into app.workspaces fail with `sqlstate` for its first
/// `times` tries (counted by a sequence, which a rollback does not undo).
async fn fail_workspace_inserts(app: &TestApp, sqlstate: &str, times: i64) -> TestResult {
    let mut db = app.superuser().await?;
    for statement in [
        "CREATE SEQUENCE public.insert_tries".to_owned(),
        "GRANT USAGE ON SEQUENCE public.insert_tries TO PUBLIC".to_owned(),
        format!(
            "CREATE FUNCTION public.collide() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF nextval('public.insert_tries') <= {times} THEN \
             RAISE EXCEPTION 'collided' USING ERRCODE = '{sqlstate}'; END IF; \
             RETURN NEW; END $$"
        ),
        "CREATE TRIGGER collide BEFORE INSERT ON app.workspaces \
         FOR EACH ROW EXECUTE FUNCTION public.collide()"
            .to_owned(),
    ] {
        sqlx::query(&statement).execute(&mut db).await?;
    }
    Ok(())
}

async fn create_workspace(
    app: &TestApp,
    token: &str,
    name: &str,
) -> TestResult<(u16, serde_json::Value)> {
    app.post("/api/workspaces", token, json!({ "name": name }))
        .await
}

async fn tries(app: &TestApp) -> TestResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT last_value FROM public.insert_tries")
            .fetch_one(&mut app.superuser().await?)
            .await?,
    )
}

#[tokio::test]
async fn a_request_that_loses_a_deadlock_runs_again_and_succeeds() -> TestResult {
    let app = TestApp::spawn().await?;
    let token = app.login(ALICE).await?;
    fail_workspace_inserts(&app, "40P01", 2).await?;
    let (status, body) = create_workspace(&app, &token, "Third time").await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(tries(&app).await?, 3, "two lost tries, then the one kept");
    let (_, list) = app.get("/api/workspaces", &token).await?;
    let named = list.as_array().map_or(0, |l| {
        l.iter().filter(|w| w["name"] == "Third time").count()
    });
    assert_eq!(named, 1, "created once: {list}");
    Ok(())
}

#[tokio::test]
async fn a_request_that_keeps_losing_serialization_conflicts_gets_409_after_three_tries(
) -> TestResult {
    let app = TestApp::spawn().await?;
    let token = app.login(ALICE).await?;
    fail_workspace_inserts(&app, "40001", 1_000).await?;
    let (status, body) = create_workspace(&app, &token, "Never").await?;
    assert_eq!(
        (status, body),
        (
            409,
            json!({
                "error": "The change conflicted with another made at the same time; try again",
                "code": "conflict"
            })
        )
    );
    assert_eq!(tries(&app).await?, 3, "a bounded number of tries");
    let (_, list) = app.get("/api/workspaces", &token).await?;
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().all(|w| w["name"] != "Never")),
        "nothing kept: {list}"
    );
    Ok(())
}
