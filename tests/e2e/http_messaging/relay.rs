//! The outbox relay: Redis down, relays restarting or racing, a suspended
//! tenant's pending rows.

use super::*;

#[tokio::test]
pub(super) async fn with_the_stream_redis_down_messages_are_accepted_kept_and_delivered_in_order(
) -> TestResult {
    let mut broker = PrivateRedis::start().await?;
    let port = broker.port;
    let app = TestApp::spawn_with(Options {
        stream_redis_url: Some(broker.url()),
        ..Options::default()
    })
    .await?;
    let alice = app.login(ALICE).await?;
    let first = new_session(&app, &alice).await?;
    let second = new_session(&app, &alice).await?;
    broker.stop().await?;

    let mut sent = Vec::new();
    for n in 0..6 {
        let session = if n % 2 == 0 { first } else { second };
        let message = send(&app, &alice, session, &format!("while down {n}")).await?;
        sent.push((
            session,
            message["id"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM app.message_outbox WHERE published_at IS NULL"
        )
        .await?,
        6,
        "kept in the outbox"
    );

    let broker = PrivateRedis::start_on(port).await?;
    published(&app, 6).await?;
    let mut conn = redis(&broker.url()).await?;
    let stream = entries(&mut conn, app.acme).await?;
    for session in [first, second] {
        let expected: Vec<&str> = sent
            .iter()
            .filter(|(s, _)| *s == session)
            .map(|(_, id)| id.as_str())
            .collect();
        let got: Vec<&str> = stream
            .iter()
            .filter(|(_, f)| f["session_id"] == session.to_string())
            .map(|(_, f)| f["message_id"].as_str())
            .collect();
        assert_eq!(
            got, expected,
            "all of the session's messages, in order, once"
        );
    }
    Ok(())
}

#[tokio::test]
async fn relays_restarting_or_racing_lose_nothing_and_publish_each_row_once() -> TestResult {
    let app = TestApp::spawn_with(Options {
        relay: false,
        ..Options::default()
    })
    .await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    let a = new_session(&app, &alice).await?;
    let g = new_session(&app, &gus).await?;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(send(&app, &alice, a, &format!("a{n}")).await?["id"].clone());
        send(&app, &gus, g, &format!("g{n}")).await?;
    }
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM app.message_outbox WHERE published_at IS NULL"
        )
        .await?,
        20,
        "no relay: all pending"
    );
    // Two relays start (a restart beside a second instance) and race.
    let one = Relay::connect(&app.config).await?;
    let two = Relay::connect(&app.config).await?;
    let drain = |relay: Relay| async move {
        let mut total = 0;
        for _ in 0..50 {
            total += relay.run_once().await?;
        }
        TestResult::Ok(total)
    };
    let (x, y) = tokio::join!(drain(one), drain(two));
    assert_eq!(x? + y?, 20, "each row published by exactly one relay");
    let mut conn = redis(&shared_redis_url(&app)).await?;
    let acme = entries(&mut conn, app.acme).await?;
    let got: Vec<Value> = acme.iter().map(|(_, f)| json!(f["message_id"])).collect();
    assert_eq!(got, ids, "once each, in order");
    assert_eq!(entries(&mut conn, app.globex).await?.len(), 10);
    assert_eq!(
        count(&app, "SELECT count(*) FROM app.message_outbox WHERE published_at IS NULL OR stream_id IS NULL").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_suspended_tenant_waits_pending_without_holding_up_the_others() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    let a = new_session(&app, &alice).await?;
    let g = new_session(&app, &gus).await?;
    for n in 0..3 {
        send(&app, &alice, a, &format!("acme {n}")).await?;
        send(&app, &gus, g, &format!("globex {n}")).await?;
    }
    published(&app, 6).await?;
    let mut su = app.superuser().await?;
    sqlx::query("SELECT tenancy.set_tenant_status($1, 'suspended')")
        .bind(app.acme)
        .execute(&mut su)
        .await?;
    let mut options = worker_options(vec![app.acme, app.globex], "w1");
    options.claim_idle = Duration::from_millis(200);
    let group = options.group.clone();
    let mut worker = worker(&app, options, &shared_redis_url(&app)).await?;
    let mut processed = 0;
    for _ in 0..3 {
        processed += worker.run_once().await?;
    }
    assert_eq!(processed, 3, "globex's three, though acme's fail first");
    let mut conn = redis(&shared_redis_url(&app)).await?;
    let pending = tenancy_server::jobs::worker::pending(&mut conn, app.acme, &group).await?;
    assert_eq!(pending, 3, "acme's wait, unacknowledged");

    sqlx::query("SELECT tenancy.set_tenant_status($1, 'active')")
        .bind(app.acme)
        .execute(&mut su)
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut later = 0;
    for _ in 0..3 {
        later += worker.run_once().await?;
    }
    assert_eq!(
        later, 3,
        "claimed again and processed once the tenant is back"
    );
    assert_eq!(
        tenancy_server::jobs::worker::pending(&mut conn, app.acme, &group).await?,
        0
    );
    Ok(())
}
