//! Workers: a worker reads its own tenants' streams only (by choice and by
//! Redis ACL), and entries a dead worker left are claimed by another.

use super::*;

#[tokio::test]
async fn a_worker_of_one_tenant_never_receives_another_tenants_messages() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    let acme_session = new_session(&app, &alice).await?;
    let globex_session = new_session(&app, &gus).await?;
    for n in 0..3 {
        send(&app, &alice, acme_session, &format!("acme {n}")).await?;
        send(&app, &gus, globex_session, &format!("globex {n}")).await?;
    }
    published(&app, 6).await?;

    let mut globex_worker = worker(
        &app,
        worker_options(vec![app.globex], "globex-1"),
        &shared_redis_url(&app),
    )
    .await?;
    let mut processed = 0;
    for _ in 0..10 {
        processed += globex_worker.run_once().await?;
    }
    assert_eq!(processed, 3, "the three globex messages, nothing else");
    let mut su = app.superuser().await?;
    let rows: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT tenant_id, processed_by FROM app.messages ORDER BY tenant_id")
            .fetch_all(&mut su)
            .await?;
    for (tenant, by) in rows {
        if tenant == app.globex {
            assert_eq!(by.as_deref(), Some("globex-1"));
        } else {
            assert_eq!(by, None, "acme's messages untouched");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_worker_restricted_by_redis_acl_cannot_read_another_tenants_stream() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    let acme_session = new_session(&app, &alice).await?;
    let globex_session = new_session(&app, &gus).await?;
    send(&app, &alice, acme_session, "for acme's worker").await?;
    send(&app, &gus, globex_session, "not for acme's worker").await?;
    published(&app, 2).await?;

    let user = format!("worker-{}", Uuid::new_v4().simple());
    let mut admin = redis(&shared_redis_url(&app)).await?;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            &user,
            "on",
            ">worker-password",
            "resetkeys",
            &format!("~{}", stream_key(app.acme)),
            "resetchannels",
            "+@all",
            "-@dangerous",
        ])
        .query_async(&mut admin)
        .await?;
    let url = format!(
        "redis://{user}:worker-password@127.0.0.1:{}",
        redis_port(&app)
    );
    let outcome = async {
        // Even asked for globex, the broker refuses.
        let mut restricted = redis(&url).await?;
        let read: redis::RedisResult<redis::Value> = redis::cmd("XRANGE")
            .arg(stream_key(app.globex))
            .arg("-")
            .arg("+")
            .query_async(&mut restricted)
            .await;
        let err = read.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("NOPERM"), "raw read of globex: {err}");

        let mut wrong = worker(&app, worker_options(vec![app.globex], "acme-1"), &url).await?;
        let attempt = wrong.run_once().await;
        let err = attempt.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("NOPERM"), "a worker pointed at globex: {err}");

        let mut right = worker(&app, worker_options(vec![app.acme], "acme-1"), &url).await?;
        let mut processed = 0;
        for _ in 0..5 {
            processed += right.run_once().await?;
        }
        assert_eq!(processed, 1, "its own tenant's message");
        TestResult::Ok(())
    }
    .await;
    let _: redis::RedisResult<()> = redis::cmd("ACL")
        .arg(&["DELUSER", &user])
        .query_async(&mut admin)
        .await;
    outcome
}

pub(super) fn redis_port(app: &TestApp) -> u16 {
    app.config
        .stream_redis_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(6379)
}

#[tokio::test]
async fn entries_a_dead_worker_left_pending_are_claimed_by_another() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let mine = new_session(&app, &alice).await?;
    for n in 0..3 {
        send(&app, &alice, mine, &format!("job {n}")).await?;
    }
    published(&app, 3).await?;
    let mut options = worker_options(vec![app.acme], "survivor");
    options.claim_idle = Duration::from_millis(1500);
    let group = options.group.clone();

    // The dead worker: read everything in the group, then died before acknowledging.
    let mut conn = redis(&shared_redis_url(&app)).await?;
    let key = stream_key(app.acme);
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", &key, &group, "0"])
        .query_async(&mut conn)
        .await?;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", &group, "dead", "COUNT", "10", "STREAMS", &key, ">"])
        .query_async(&mut conn)
        .await?;
    let pending = tenancy_server::jobs::worker::pending(&mut conn, app.acme, &group).await?;
    assert_eq!(pending, 3, "left pending on the dead consumer");

    let mut survivor = worker(&app, options, &shared_redis_url(&app)).await?;
    let first = survivor.run_once().await?;
    assert_eq!(
        first, 0,
        "not yet idle long enough: still the dead worker's"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut processed = 0;
    for _ in 0..3 {
        processed += survivor.run_once().await?;
    }
    assert_eq!(processed, 3);
    let pending = tenancy_server::jobs::worker::pending(&mut conn, app.acme, &group).await?;
    assert_eq!(pending, 0, "acknowledged");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM app.messages WHERE processed_by = 'survivor'"
        )
        .await?,
        3
    );
    Ok(())
}
