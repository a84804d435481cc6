//! Messaging (seeds 000 and 001): messages validated and stored with their
//! outbox row, published to `messages:{tenant_id}` and nowhere else, read
//! by workers of their own tenant only, delivered live to their own user's
//! WebSockets; rate limits across instances; Redis, worker and relay faults.

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

type Entries = Vec<(String, HashMap<String, String>)>;

async fn redis(url: &str) -> TestResult<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Every entry of a tenant's stream, oldest first.
async fn entries(
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
async fn eventually<T, F, Fut>(secs: u64, mut check: F) -> TestResult<T>
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
async fn wait_entries(url: &str, tenant: Uuid, n: usize) -> TestResult<Entries> {
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

async fn new_session(app: &TestApp, token: &str) -> TestResult<Uuid> {
    let (status, body) = app
        .post("/api/chat/sessions", token, json!({"title": "support"}))
        .await?;
    assert_eq!(status, 201, "{body}");
    Ok(body["id"].as_str().unwrap_or_default().parse()?)
}

async fn send(app: &TestApp, token: &str, session: Uuid, content: &str) -> TestResult<Value> {
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

async fn count(app: &TestApp, sql: &str) -> TestResult<i64> {
    let mut su = app.superuser().await?;
    Ok(sqlx::query_scalar(sql).fetch_one(&mut su).await?)
}

fn shared_redis_url(app: &TestApp) -> String {
    app.config.stream_redis_url().to_owned()
}

#[tokio::test]
async fn a_message_goes_to_its_tenant_stream_with_tenant_user_and_session() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    let session = new_session(&app, &alice).await?;
    let sent = send(&app, &alice, session, "hello from acme").await?;
    let (_, me) = app.get("/users/me", &alice).await?;
    assert_eq!(sent["tenant_id"], json!(app.acme));
    assert_eq!(sent["session_id"], json!(session));

    let mut conn = redis(&shared_redis_url(&app)).await?;
    let acme = wait_entries(&shared_redis_url(&app), app.acme, 1).await?;
    assert_eq!(acme.len(), 1);
    let fields = &acme[0].1;
    assert_eq!(
        fields["message_id"],
        sent["id"].as_str().unwrap_or_default()
    );
    assert_eq!(fields["tenant_id"], app.acme.to_string());
    assert_eq!(fields["user_id"], me["id"].as_str().unwrap_or_default());
    assert_eq!(fields["session_id"], session.to_string());
    assert_eq!(fields["content"], "hello from acme");
    assert!(
        entries(&mut conn, app.globex).await?.is_empty(),
        "nothing in the other tenant's stream"
    );

    // The outbox row is stamped with the entry id (the relay stamps it
    // once the entry is in the stream: wait for it).
    let mut stamped = 0;
    for _ in 0..50 {
        stamped = count(
            &app,
            &format!(
                "SELECT count(*) FROM app.message_outbox WHERE published_at IS NOT NULL AND stream_id = '{}'",
                acme[0].0
            ),
        )
        .await?;
        if stamped == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stamped, 1);

    // A globex message lands in globex's stream only.
    let other = new_session(&app, &gus).await?;
    send(&app, &gus, other, "hello from globex").await?;
    let globex = wait_entries(&shared_redis_url(&app), app.globex, 1).await?;
    assert_eq!(globex[0].1["content"], "hello from globex");
    assert_eq!(globex[0].1["tenant_id"], app.globex.to_string());
    assert_eq!(entries(&mut conn, app.acme).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn bad_payloads_are_refused_before_anything_is_queued() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let bob = app.login(BOB).await?;
    let gus = app.login(GUS).await?;
    let mine = new_session(&app, &alice).await?;
    let bobs = new_session(&app, &bob).await?;
    let globex = new_session(&app, &gus).await?;
    let (_, bob_me) = app.get("/users/me", &bob).await?;
    let long = "x".repeat(4001);
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"content": "hi"}), 422, "missing session_id"),
        (json!({"session_id": mine}), 422, "missing content"),
        (
            json!({"session_id": "nope", "content": "hi"}),
            422,
            "malformed session_id",
        ),
        (
            json!({"session_id": mine, "content": ""}),
            422,
            "empty content",
        ),
        (
            json!({"session_id": mine, "content": "   "}),
            422,
            "blank content",
        ),
        (
            json!({"session_id": mine, "content": long}),
            422,
            "content too long",
        ),
        (
            json!({"session_id": mine, "content": "a\u{0}b"}),
            422,
            "NUL in content",
        ),
        (
            json!({"session_id": mine, "content": 5}),
            422,
            "content not text",
        ),
        (
            json!({"session_id": mine, "content": "hi", "extra": 1}),
            422,
            "unknown field",
        ),
        (
            json!({"session_id": mine, "content": "hi", "tenant_id": "x"}),
            422,
            "malformed tenant_id",
        ),
        (
            json!({"session_id": mine, "content": "hi", "tenant_id": app.globex}),
            403,
            "another tenant",
        ),
        (
            json!({"session_id": mine, "content": "hi", "user_id": bob_me["id"]}),
            403,
            "as another user",
        ),
        (
            json!({"session_id": bobs, "content": "hi"}),
            404,
            "another user's session",
        ),
        (
            json!({"session_id": globex, "content": "hi"}),
            404,
            "another tenant's session",
        ),
        (
            json!({"session_id": Uuid::new_v4(), "content": "hi"}),
            404,
            "no such session",
        ),
    ];
    for (body, expected, why) in cases {
        let (status, answer) = app.post("/api/messages", &alice, body).await?;
        assert_eq!(status, expected, "{why}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{why}: {answer}"
        );
    }
    let (status, _) = app
        .call(
            Method::POST,
            "/api/messages",
            None,
            &[],
            Some(json!({"session_id": mine, "content": "hi"})),
        )
        .await?;
    assert_eq!(status, 401, "no token");
    assert_eq!(count(&app, "SELECT count(*) FROM app.messages").await?, 0);
    assert_eq!(
        count(&app, "SELECT count(*) FROM app.message_outbox").await?,
        0
    );
    let mut conn = redis(&shared_redis_url(&app)).await?;
    assert!(entries(&mut conn, app.acme).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn listing_shows_only_the_callers_own_sessions_and_messages() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let bob = app.login(BOB).await?;
    let gus = app.login(GUS).await?;
    let mine = new_session(&app, &alice).await?;
    let bobs = new_session(&app, &bob).await?;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(send(&app, &alice, mine, &format!("alice {n}")).await?["id"].clone());
    }
    send(&app, &bob, bobs, "bob's secret").await?;

    let path = format!("/api/chat/sessions/{mine}/messages");
    let (status, list) = app.get(&path, &alice).await?;
    assert_eq!(status, 200);
    let got: Vec<Value> = list
        .as_array()
        .map(|a| a.iter().map(|m| m["id"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(got, ids, "all of alice's messages, in order");
    let (_, page) = app
        .get(
            &format!(
                "{path}?limit=2&after={}",
                ids[1].as_str().unwrap_or_default()
            ),
            &alice,
        )
        .await?;
    let page: Vec<Value> = page
        .as_array()
        .map(|a| a.iter().map(|m| m["id"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(page, ids[2..4].to_vec(), "cursor pagination");
    for (query, expected) in [("?limit=0", 422), ("?limit=x", 422), ("?bogus=1", 422)] {
        let (status, body) = app.get(&format!("{path}{query}"), &alice).await?;
        assert_eq!(status, expected, "{query}: {body}");
    }

    let (_, sessions) = app.get("/api/chat/sessions", &alice).await?;
    assert_eq!(
        sessions.as_array().map(Vec::len),
        Some(1),
        "only her own session: {sessions}"
    );
    let (status, _) = app
        .get(&format!("/api/chat/sessions/{bobs}/messages"), &alice)
        .await?;
    assert_eq!(status, 404, "another user's session, same tenant");
    let (status, _) = app.get(&path, &bob).await?;
    assert_eq!(status, 404);
    let (status, _) = app.get(&path, &gus).await?;
    assert_eq!(status, 404, "another tenant");
    let (status, _) = app
        .call(
            Method::GET,
            &path,
            Some(&gus),
            &[("x-tenant-id", &app.acme.to_string())],
            None,
        )
        .await?;
    assert_eq!(status, 403, "gus naming acme is not a member");
    Ok(())
}

#[tokio::test]
async fn the_application_role_cannot_read_or_forge_other_users_messages() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let bob = app.login(BOB).await?;
    let mine = new_session(&app, &alice).await?;
    let bobs = new_session(&app, &bob).await?;
    send(&app, &alice, mine, "alice's").await?;
    send(&app, &bob, bobs, "bob's").await?;
    let (_, me) = app.get("/users/me", &alice).await?;
    let (_, bob_me) = app.get("/users/me", &bob).await?;
    let alice_id: Uuid = me["id"].as_str().unwrap_or_default().parse()?;
    let bob_id: Uuid = bob_me["id"].as_str().unwrap_or_default().parse()?;

    // Raw SQL as the service's role, inside a context signed for alice.
    let keys = tenancy_server::domain::sessions::Keys::new(&app.config);
    let context = keys.context_token(app.acme, alice_id)?;
    let mut conn = app.app_role().await?;
    let mut tx = sqlx::Connection::begin(&mut conn).await?;
    tenancy_tests::use_token(&mut tx, &context).await?;
    let visible: Vec<String> = sqlx::query_scalar("SELECT content FROM app.messages")
        .fetch_all(&mut *tx)
        .await?;
    assert_eq!(
        visible,
        vec!["alice's".to_owned()],
        "no WHERE, still only hers"
    );
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM app.message_outbox")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(outbox, 1);
    let forged = sqlx::query(
        "INSERT INTO app.messages (session_id, user_id, content) VALUES ($1, $2, 'as bob')",
    )
    .bind(bobs)
    .bind(bob_id)
    .execute(&mut *tx)
    .await;
    let (code, _) = tenancy_tests::db_error(forged);
    assert_eq!(code, "42501", "a message as another user is refused");
    tx.rollback().await?;

    let mut tx = sqlx::Connection::begin(&mut conn).await?;
    tenancy_tests::use_token(&mut tx, &context).await?;
    let direct = sqlx::query(
        "INSERT INTO app.message_outbox (message_id, session_id, user_id, content, message_created_at)
         VALUES (gen_random_uuid(), $1, $2, 'forged', now())",
    )
    .bind(mine)
    .bind(alice_id)
    .execute(&mut *tx)
    .await;
    assert_eq!(
        tenancy_tests::db_error(direct).0,
        "42501",
        "no direct outbox writes"
    );
    tx.rollback().await?;
    let mut tx = sqlx::Connection::begin(&mut conn).await?;
    tenancy_tests::use_token(&mut tx, &context).await?;
    let republish = sqlx::query("UPDATE app.message_outbox SET published_at = NULL")
        .execute(&mut *tx)
        .await;
    assert_eq!(tenancy_tests::db_error(republish).0, "42501");
    tx.rollback().await?;
    Ok(())
}

#[tokio::test]
async fn the_rate_limit_holds_across_instances_and_per_user() -> TestResult {
    let app = TestApp::spawn_with(Options {
        message_rate_per_minute: 3,
        ..Options::default()
    })
    .await?;
    let second = tenancy_tests::server::serve(&app.config).await?;
    let alice = app.login(ALICE).await?;
    let bob = app.login(BOB).await?;
    let mine = new_session(&app, &alice).await?;
    let body = json!({"session_id": mine, "content": "hi"});
    send(&app, &alice, mine, "one").await?;
    send(&app, &alice, mine, "two").await?;
    // The third on the other instance still counts against the same budget.
    let other = app
        .client
        .post(format!("http://{second}/api/messages"))
        .bearer_auth(&alice)
        .json(&body)
        .send()
        .await?;
    assert_eq!(other.status(), 201);
    let limited = app
        .client
        .post(format!("http://{second}/api/messages"))
        .bearer_auth(&alice)
        .json(&body)
        .send()
        .await?;
    assert_eq!(limited.status(), 429);
    tenancy_tests::server::assert_retry_after(&limited);
    let answer: Value = limited.json().await?;
    assert_eq!(answer["code"], "rate_limited");
    let (status, _) = app.post("/api/messages", &alice, body.clone()).await?;
    assert_eq!(status, 429, "and on the first instance");
    assert_eq!(
        count(&app, "SELECT count(*) FROM app.messages").await?,
        3,
        "nothing stored past the limit"
    );

    let bobs = new_session(&app, &bob).await?;
    send(&app, &bob, bobs, "bob has his own budget").await?;
    Ok(())
}

fn worker_options(tenants: Vec<Uuid>, consumer: &str) -> WorkerOptions {
    let mut options = WorkerOptions::new(tenants, consumer);
    options.group = format!("test-{}", Uuid::new_v4().simple());
    options.block = Duration::from_millis(200);
    options
}

async fn worker(app: &TestApp, options: WorkerOptions, redis_url: &str) -> TestResult<Worker> {
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

fn redis_port(app: &TestApp) -> u16 {
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

#[tokio::test]
async fn with_the_stream_redis_down_messages_are_accepted_kept_and_delivered_in_order() -> TestResult
{
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

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_ws(
    app: &TestApp,
    token: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{}/api/ws", app.addr).into_client_request()?;
    if let Some(token) = token {
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.headers_mut().insert("authorization", value);
        }
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// Message contents received within `wait`.
async fn received(socket: &mut Socket, wait: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, socket.next()).await {
        if let WsMessage::Text(text) = frame {
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            got.push(
                value["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    got
}

#[tokio::test]
async fn the_websocket_handshake_needs_a_valid_token() -> TestResult {
    let app = TestApp::spawn().await?;
    for token in [None, Some("not-a-jwt")] {
        match connect_ws(&app, token).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{token:?}")
            }
            other => panic!(
                "expected a 401 before the upgrade, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    // Browsers pass the token as a query parameter.
    let alice = app.login(ALICE).await?;
    let request = format!("ws://{}/api/ws?access_token={alice}", app.addr).into_client_request()?;
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    socket.send(WsMessage::Ping(vec![1].into())).await?;
    Ok(())
}

#[tokio::test]
async fn websockets_deliver_only_the_users_own_messages_in_their_own_tenant() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let bob = app.login(BOB).await?;
    let gus = app.login(GUS).await?;
    let mut alice_ws = connect_ws(&app, Some(&alice)).await?;
    let mut bob_ws = connect_ws(&app, Some(&bob)).await?;
    let mut gus_ws = connect_ws(&app, Some(&gus)).await?;
    let a = new_session(&app, &alice).await?;
    let b = new_session(&app, &bob).await?;
    let g = new_session(&app, &gus).await?;
    send(&app, &alice, a, "alice 1").await?;
    send(&app, &bob, b, "bob 1").await?;
    send(&app, &gus, g, "gus 1").await?;
    send(&app, &alice, a, "alice 2").await?;

    let wait = Duration::from_secs(3);
    let (alice_got, bob_got, gus_got) = tokio::join!(
        received(&mut alice_ws, wait),
        received(&mut bob_ws, wait),
        received(&mut gus_ws, wait)
    );
    assert_eq!(alice_got, ["alice 1", "alice 2"]);
    assert_eq!(bob_got, ["bob 1"], "same tenant, other user: only his own");
    assert_eq!(gus_got, ["gus 1"], "other tenant: only his own");
    Ok(())
}

#[tokio::test]
async fn revoking_the_session_closes_the_websocket() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let mut socket = connect_ws(&app, Some(&alice)).await?;
    let (status, _) = app
        .call(Method::POST, "/auth/logout", Some(&alice), &[], None)
        .await?;
    assert_eq!(status, 204);
    assert_eq!(
        closed_with(&mut socket).await,
        Some(4001),
        "closed with 'session ended'"
    );
    Ok(())
}

/// The close code `socket` gets within 5 s (None: it stayed open).
async fn closed_with(socket: &mut Socket) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = socket.next().await {
            if let Ok(WsMessage::Close(frame)) = frame {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test]
async fn removing_a_member_or_suspending_the_tenant_closes_their_websockets() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let bob = app.login(BOB).await?;
    let gus = app.login(GUS).await?;
    let mut bob_socket = connect_ws(&app, Some(&bob)).await?;
    let mut alice_socket = connect_ws(&app, Some(&alice)).await?;
    let mut gus_socket = connect_ws(&app, Some(&gus)).await?;
    let bob_id = tenancy_tests::server::claims(&bob)["sub"].clone();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!(
                "/api/tenant/members/{}",
                bob_id.as_str().unwrap_or_default()
            ),
            Some(&alice),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 204);
    assert_eq!(
        closed_with(&mut bob_socket).await,
        Some(4001),
        "bob's socket"
    );

    // Suspending globex closes its members' sockets; acme's stay open.
    let root = app.login(tenancy_tests::server::ROOT).await?;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/admin/tenants/{}/suspend", app.globex),
            Some(&root),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        closed_with(&mut gus_socket).await,
        Some(4001),
        "gus's socket"
    );
    let a = new_session(&app, &alice).await?;
    send(&app, &alice, a, "still here").await?;
    assert_eq!(
        received(&mut alice_socket, Duration::from_secs(5)).await,
        vec!["still here".to_owned()],
        "alice's socket stays open"
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
