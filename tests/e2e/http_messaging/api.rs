//! Sending and listing messages: validation, isolation of sessions and
//! messages, the rate limit across instances.

use super::*;

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
