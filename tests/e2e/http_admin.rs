//! Tenant administration (seed 002: REQ-MT-B004 to B007 and B013): the
//! super-admin tenant API, provisioning in one transaction, configuration and
//! branding with versions, plan limits under concurrency, and the audit
//! trail with its isolation and retention.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tenancy_tests::server::{Options, TestApp, ALICE, BOB, CAROL, ERIN, GUS, PASSWORD, ROOT};
use tenancy_tests::TestResult;
use uuid::Uuid;

async fn scalar<T>(app: &TestApp, sql: &str) -> TestResult<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut su = app.superuser().await?;
    Ok(sqlx::query_scalar(sql).fetch_one(&mut su).await?)
}

/// The tenant's audit actions, newest first (read behind the scenes).
async fn actions(app: &TestApp, tenant: Uuid) -> TestResult<Vec<String>> {
    let mut su = app.superuser().await?;
    Ok(sqlx::query_scalar(
        "SELECT action FROM app.audit_events WHERE tenant_id = $1 ORDER BY id DESC",
    )
    .bind(tenant)
    .fetch_all(&mut su)
    .await?)
}

fn initech() -> Value {
    json!({"slug": "initech", "name": "Initech", "plan": "pro",
           "owner_email": "peter@initech.test", "demo_data": true})
}

#[tokio::test]
async fn only_super_admins_manage_tenants() -> TestResult {
    let app = TestApp::spawn().await?;
    for email in [ALICE, ERIN, BOB] {
        let token = app.login(email).await?;
        let (status, body) = app.get("/api/admin/tenants", &token).await?;
        assert_eq!(status, 403, "{email} lists tenants: {body}");
        let (status, _) = app.post("/api/admin/tenants", &token, initech()).await?;
        assert_eq!(status, 403, "{email} creates a tenant");
        let (status, _) = app
            .call(
                Method::POST,
                &format!("/api/admin/tenants/{}/suspend", app.globex),
                Some(&token),
                &[],
                None,
            )
            .await?;
        assert_eq!(status, 403, "{email} suspends a tenant");
        let (status, _) = app.get("/api/admin/audit", &token).await?;
        assert_eq!(status, 403, "{email} reads every tenant's audit trail");
    }
    let (status, _) = app
        .call(Method::GET, "/api/admin/tenants", None, &[], None)
        .await?;
    assert_eq!(status, 401);
    assert_eq!(
        scalar::<i64>(&app, "SELECT count(*) FROM tenancy.tenants").await?,
        2
    );
    assert_eq!(
        scalar::<String>(
            &app,
            "SELECT status FROM tenancy.tenants WHERE slug = 'globex'"
        )
        .await?,
        "active"
    );
    // Each (user, action) is written the first time (then sampled: the
    // 10th, 100th...), with its count.
    let (denials, pairs): (i64, i64) = {
        let mut su = app.superuser().await?;
        sqlx::query_as(
            "SELECT count(*), count(DISTINCT (details->>'user_id', details->>'action'))
             FROM tenancy.audit_log WHERE action = 'platform.denied' AND details->>'count' = '1'",
        )
        .fetch_one(&mut su)
        .await?
    };
    assert!(
        denials >= 6 && denials == pairs,
        "denials are audited: {denials} of {pairs}"
    );

    let root = app.login(ROOT).await?;
    let (status, body) = app.get("/api/admin/tenants", &root).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 2);
    Ok(())
}

#[tokio::test]
async fn creating_a_tenant_provisions_everything_and_sends_a_welcome_email() -> TestResult {
    let mail = std::env::temp_dir().join(format!("tenancy-mail-{}", Uuid::new_v4().simple()));
    let app = TestApp::spawn_with(Options {
        mail_dir: Some(mail.clone()),
        ..Options::default()
    })
    .await?;
    let root = app.login(ROOT).await?;
    let (status, tenant) = app.post("/api/admin/tenants", &root, initech()).await?;
    assert_eq!(status, 201, "{tenant}");
    assert_eq!(tenant["slug"], "initech");
    assert_eq!(tenant["status"], "active");
    assert_eq!(tenant["plan"], "pro");
    assert_eq!(tenant["limits"]["max_members"], 50);
    assert_eq!(tenant["usage"]["members"], 1, "the owner");
    let id: Uuid = tenant["id"].as_str().unwrap_or_default().parse()?;

    let mut su = app.superuser().await?;
    let roles: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT scope, role, permissions FROM app.tenant_roles WHERE tenant_id = $1 ORDER BY scope, role",
    )
    .bind(id)
    .fetch_all(&mut su)
    .await?;
    let names: Vec<(&str, &str)> = roles
        .iter()
        .map(|(s, r, _)| (s.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("tenant", "admin"),
            ("tenant", "member"),
            ("tenant", "owner"),
            ("workspace", "admin"),
            ("workspace", "member"),
            ("workspace", "viewer")
        ]
    );
    let owner_permissions = &roles[2].2;
    assert!(owner_permissions.contains(&"tenant:delete".to_owned()));
    assert!(
        !roles[0].2.contains(&"tenant:delete".to_owned()),
        "admins do not delete the tenant"
    );
    for (table, expected) in [
        ("app.categories", 4),
        ("app.email_templates", 4),
        ("app.tenant_config_versions", 1),
    ] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1"
        ))
        .bind(id)
        .fetch_one(&mut su)
        .await?;
        assert_eq!(n, expected, "{table}");
    }
    let demo: i64 = sqlx::query_scalar("SELECT count(*) FROM app.tasks WHERE tenant_id = $1")
        .bind(id)
        .fetch_one(&mut su)
        .await?;
    assert_eq!(demo, 3, "demo data");
    let owner_role: String = sqlx::query_scalar(
        "SELECT m.role FROM app.tenant_memberships m JOIN app.users u ON u.id = m.user_id
         WHERE m.tenant_id = $1 AND u.email = 'peter@initech.test'",
    )
    .bind(id)
    .fetch_one(&mut su)
    .await?;
    assert_eq!(owner_role, "owner");
    assert_eq!(actions(&app, id).await?, ["tenant.created"]);

    // The welcome email leaves through the outbox.
    let file = mail.join(format!("{id}-1.eml"));
    let mut text = String::new();
    for _ in 0..100 {
        if let Ok(found) = std::fs::read_to_string(&file) {
            text = found;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.contains("To: peter@initech.test"), "{text:?}");
    assert!(text.contains("Subject: Welcome to Initech"), "{text:?}");
    assert!(
        text.contains("multipart/alternative") && text.contains("Content-Type: text/html"),
        "a plain-text and an HTML part: {text:?}"
    );
    // The file is written before the row is stamped sent and committed.
    let mut sent: i64 = 0;
    for _ in 0..50 {
        sent = sqlx::query_scalar(
            "SELECT count(*) FROM app.email_outbox WHERE tenant_id = $1 AND sent_at IS NOT NULL",
        )
        .bind(id)
        .fetch_one(&mut su)
        .await?;
        if sent == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sent, 1);
    let _ = std::fs::remove_dir_all(&mail);
    Ok(())
}

#[tokio::test]
async fn bad_tenant_input_is_a_clear_4xx_and_creates_nothing() -> TestResult {
    let app = TestApp::spawn().await?;
    let root = app.login(ROOT).await?;
    let base = initech();
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    let cases = [
        (with("slug", json!("acme")), 409, "duplicate slug"),
        (
            with("slug", json!("Not URL Safe")),
            422,
            "slug not URL-safe",
        ),
        (with("slug", json!("-x-")), 422, "slug not a DNS label"),
        (with("plan", json!("gold")), 422, "unknown plan"),
        (with("owner_email", json!("nobody")), 422, "bad owner email"),
        (with("name", json!("  ")), 422, "blank name"),
        (with("extra", json!(1)), 422, "unknown field"),
        (json!({"slug": "x"}), 422, "missing fields"),
    ];
    for (body, expected, why) in cases {
        let (status, answer) = app.post("/api/admin/tenants", &root, body).await?;
        assert_eq!(status, expected, "{why}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{why}: {answer}"
        );
    }
    let (_, answer) = app
        .post("/api/admin/tenants", &root, with("plan", json!("gold")))
        .await?;
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("free"),
        "names the plans: {answer}"
    );
    assert_eq!(
        scalar::<i64>(&app, "SELECT count(*) FROM tenancy.tenants").await?,
        2
    );
    assert_eq!(
        scalar::<i64>(&app, "SELECT count(*) FROM app.email_outbox").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn provisioning_is_one_transaction() -> TestResult {
    // One tenant per user: an owner who already has a tenant fails the
    // membership step, after the tenant row was written. Nothing may remain.
    let app = TestApp::spawn_with(Options {
        single_tenant_users: true,
        ..Options::default()
    })
    .await?;
    let root = app.login(ROOT).await?;
    let mut body = initech();
    body["owner_email"] = json!(ALICE);
    let (status, answer) = app.post("/api/admin/tenants", &root, body).await?;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(
        scalar::<i64>(
            &app,
            "SELECT count(*) FROM tenancy.tenants WHERE slug = 'initech'"
        )
        .await?,
        0
    );
    for table in [
        "app.tenant_plans",
        "app.tenant_roles",
        "app.categories",
        "app.email_outbox",
        "app.tenant_config_versions",
    ] {
        assert_eq!(
            scalar::<i64>(&app, &format!("SELECT count(*) FROM {table}")).await?,
            0,
            "{table}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn tenants_list_paginates_and_filters_by_status() -> TestResult {
    let app = TestApp::spawn().await?;
    let root = app.login(ROOT).await?;
    for slug in ["t1", "t2", "t3"] {
        let body = json!({"slug": slug, "name": slug, "owner_email": format!("owner@{slug}.test")});
        let (status, answer) = app.post("/api/admin/tenants", &root, body).await?;
        assert_eq!(status, 201, "{answer}");
    }
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
    let (_, page) = app
        .get("/api/admin/tenants?limit=2&offset=0", &root)
        .await?;
    assert_eq!(
        (
            page["total"].clone(),
            page["tenants"].as_array().map(Vec::len)
        ),
        (json!(5), Some(2))
    );
    let (_, rest) = app
        .get("/api/admin/tenants?limit=2&offset=4", &root)
        .await?;
    assert_eq!(rest["tenants"].as_array().map(Vec::len), Some(1));
    let (_, suspended) = app
        .get("/api/admin/tenants?status=suspended", &root)
        .await?;
    assert_eq!(suspended["total"], 1);
    assert_eq!(suspended["tenants"][0]["slug"], "globex");
    for query in ["?limit=0", "?status=gone", "?offset=-1", "?colour=red"] {
        let (status, body) = app
            .get(&format!("/api/admin/tenants{query}"), &root)
            .await?;
        assert_eq!(status, 422, "{query}: {body}");
    }
    Ok(())
}

#[tokio::test]
async fn suspend_reactivate_and_soft_delete_keep_the_data() -> TestResult {
    let app = TestApp::spawn().await?;
    let root = app.login(ROOT).await?;
    let alice = app.login(ALICE).await?;
    let path = format!("/api/admin/tenants/{}", app.acme);
    let (status, _) = app
        .post("/api/workspaces", &alice, json!({"name": "Kept"}))
        .await?;
    assert_eq!(status, 201);

    let (status, body) = app
        .call(
            Method::POST,
            &format!("{path}/suspend"),
            Some(&root),
            &[],
            None,
        )
        .await?;
    assert_eq!((status, body["status"].clone()), (200, json!("suspended")));
    let (status, body) = app.get("/api/workspaces", &alice).await?;
    assert_eq!(
        (status, body["error"].clone()),
        (403, json!("Tenant is not active"))
    );
    let (status, _) = app
        .call(
            Method::POST,
            &format!("{path}/reactivate"),
            Some(&root),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let (status, _) = app.get("/api/workspaces", &alice).await?;
    assert_eq!(status, 200, "back");

    let (status, body) = app.delete(&path, &root).await?;
    assert_eq!((status, body["status"].clone()), (200, json!("inactive")));
    let (status, body) = app.get("/api/workspaces", &alice).await?;
    assert_eq!(
        (status, body["error"].clone()),
        (403, json!("Tenant is not active"))
    );
    // Soft: the super admin still sees the tenant and its data.
    let (status, body) = app.get(&path, &root).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "inactive");
    assert_eq!(body["usage"]["members"], 5);
    assert_eq!(body["usage"]["workspaces"], 2, "General and Kept");
    assert_eq!(
        scalar::<i64>(
            &app,
            &format!(
                "SELECT count(*) FROM app.workspaces WHERE tenant_id = '{}'",
                app.acme
            )
        )
        .await?,
        2
    );
    assert_eq!(
        actions(&app, app.acme).await?[..3],
        ["tenant.deleted", "tenant.reactivated", "tenant.suspended"]
    );
    let bypasses: i64 = scalar(
        &app,
        "SELECT count(*) FROM tenancy.audit_log WHERE action = 'bypass'",
    )
    .await?;
    assert!(bypasses > 0, "the super admin's reads are audited bypasses");
    let (status, _) = app
        .get(&format!("/api/admin/tenants/{}", Uuid::new_v4()), &root)
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn plan_and_limits_change_but_never_below_usage() -> TestResult {
    let app = TestApp::spawn().await?;
    let root = app.login(ROOT).await?;
    let path = format!("/api/admin/tenants/{}", app.acme);
    let (status, body) = app
        .put(&path, &root, json!({"plan": "free", "name": "Acme Inc"}))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["plan"].clone(), body["name"].clone()),
        (json!("free"), json!("Acme Inc"))
    );
    assert_eq!(body["limits"]["max_members"], 5);
    for (update, why) in [
        (json!({"limits": {"max_members": 3}}), "below the 5 members"),
        (json!({"plan": "gold"}), "unknown plan"),
        (json!({"limits": {"max_workspaces": -1}}), "negative"),
        (json!({"limits": {"seats": 9}}), "unknown limit"),
        (json!({}), "nothing to update"),
    ] {
        let (status, answer) = app.put(&path, &root, update).await?;
        assert_eq!(status, 422, "{why}: {answer}");
    }
    let (_, answer) = app
        .put(&path, &root, json!({"limits": {"max_members": 3}}))
        .await?;
    assert_eq!(
        answer["error"],
        "max_members 3 is below the tenant's current usage (5)"
    );
    let (_, now) = app.get(&path, &root).await?;
    assert_eq!(now["limits"]["max_members"], 5, "unchanged");
    assert_eq!(actions(&app, app.acme).await?[0], "tenant.updated");
    Ok(())
}

#[tokio::test]
async fn two_concurrent_requests_cannot_both_take_the_last_slot() -> TestResult {
    let app = TestApp::spawn().await?;
    let root = app.login(ROOT).await?;
    let alice = app.login(ALICE).await?;
    let path = format!("/api/admin/tenants/{}", app.acme);
    let (status, body) = app
        .put(
            &path,
            &root,
            json!({"plan": "pro", "limits": {"max_members": 6, "max_workspaces": 2}}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    // Invitations are not seats; accepting takes one.
    for email in ["one@acme.test", "two@acme.test", "three@acme.test"] {
        let (status, body) = app
            .post(
                "/api/tenant/members",
                &alice,
                json!({"email": email, "role": "member"}),
            )
            .await?;
        assert_eq!(status, 202, "{body}");
    }
    let password = "plum-harbour-window-17";
    let (one, two) = (
        app.invitation_token("one@acme.test").await?,
        app.invitation_token("two@acme.test").await?,
    );
    let (a, b) = tokio::join!(app.accept(&one, password), app.accept(&two, password));
    let mut statuses = [a?.0, b?.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 409],
        "one takes the sixth seat, the other is refused"
    );
    let (_, refused) = app
        .accept(&app.invitation_token("three@acme.test").await?, password)
        .await?;
    assert_eq!(refused["error"], "Limit reached: max_members (6)");
    assert_eq!(refused["code"], "limit_reached");
    assert_eq!(
        scalar::<i64>(
            &app,
            &format!(
                "SELECT count(*) FROM app.tenant_memberships WHERE tenant_id = '{}'",
                app.acme
            )
        )
        .await?,
        6
    );

    let create = |name: &'static str| app.post("/api/workspaces", &alice, json!({"name": name}));
    let (a, b) = tokio::join!(create("Second"), create("Third"));
    let mut statuses = [a?.0, b?.0];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "the second workspace slot goes once");
    let (_, refused) = create("Fourth").await?;
    assert_eq!(refused["error"], "Limit reached: max_workspaces (2)");
    Ok(())
}

#[tokio::test]
async fn the_api_rate_and_storage_limits_of_a_tenant() -> TestResult {
    let app = TestApp::spawn().await?;
    let root = app.login(ROOT).await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    let path = format!("/api/admin/tenants/{}", app.acme);
    let (status, _) = app
        .put(
            &path,
            &root,
            json!({"plan": "enterprise", "limits": {"api_requests_per_minute": 5}}),
        )
        .await?;
    assert_eq!(status, 200);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(app.get("/api/workspaces", &alice).await?.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let limited = app
        .client
        .get(app.url("/api/workspaces"))
        .bearer_auth(&alice)
        .send()
        .await?;
    tenancy_tests::server::assert_retry_after(&limited);
    let (status, _) = app.get("/api/workspaces", &gus).await?;
    assert_eq!(status, 200, "another tenant has its own budget");

    // Storage: a budget just above what acme uses now.
    let used: i64 = scalar(&app, &format!("SELECT coalesce((SELECT storage_bytes FROM app.tenant_usage WHERE tenant_id = '{}'), 0)", app.acme)).await?;
    let (status, body) = app
        .put(
            &path,
            &root,
            json!({"plan": "enterprise", "limits": {"storage_bytes": used + 1500}}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let mut su = app.superuser().await?;
    let owner: Uuid = sqlx::query_scalar(
        "SELECT m.user_id FROM app.tenant_memberships m WHERE m.tenant_id = $1 AND m.role = 'owner'",
    )
    .bind(app.acme)
    .fetch_one(&mut su)
    .await?;
    // Writes as the service's role through acme's context, like a request.
    let keys = tenancy_server::auth::Keys::new(&app.config);
    let mut conn = app.app_role().await?;
    let mut outcomes = Vec::new();
    for n in 0..5 {
        let mut tx = sqlx::Connection::begin(&mut conn).await?;
        tenancy_tests::use_token(&mut tx, &keys.context_token(app.acme, owner)?).await?;
        let session: Uuid =
            sqlx::query_scalar("INSERT INTO app.chat_sessions (user_id) VALUES ($1) RETURNING id")
                .bind(owner)
                .fetch_one(&mut *tx)
                .await?;
        let inserted = sqlx::query(
            "INSERT INTO app.messages (session_id, user_id, content) VALUES ($1, $2, $3)",
        )
        .bind(session)
        .bind(owner)
        .bind(format!("{n} {}", "x".repeat(400)))
        .execute(&mut *tx)
        .await;
        let (code, message) = match inserted {
            Ok(_) => (String::new(), String::new()),
            Err(e) => tenancy_tests::db_error::<()>(Err(e)),
        };
        tx.commit().await.ok();
        outcomes.push((code, message));
    }
    assert!(outcomes[0].0.is_empty(), "within the budget: {outcomes:?}");
    assert!(
        outcomes.iter().any(|(code, message)| code == "53400"
            && message.starts_with("Limit reached: storage_bytes")),
        "refused past the budget: {outcomes:?}"
    );
    Ok(())
}

#[tokio::test]
async fn configuration_defaults_validation_versions_and_restore() -> TestResult {
    let app = TestApp::spawn().await?;
    let erin = app.login(ERIN).await?;
    let bob = app.login(BOB).await?;
    let (status, body) = app.get("/api/tenant/config", &erin).await?;
    assert_eq!(status, 200);
    assert_eq!(body["version"], 0);
    assert_eq!(body["config"]["locale"], "en-US", "defaults apply");
    assert_eq!(body["config"]["audit_retention_days"], 365);
    let (status, _) = app.get("/api/tenant/config", &bob).await?;
    assert_eq!(status, 403, "members do not read the configuration");
    let (status, _) = app
        .put("/api/tenant/config", &bob, json!({"locale": "fr-FR"}))
        .await?;
    assert_eq!(status, 403);

    let (status, v1) = app
        .put("/api/tenant/config", &erin, json!({"locale": "fr-FR"}))
        .await?;
    assert_eq!((status, v1["version"].clone()), (200, json!(1)), "{v1}");
    let (_, v2) = app
        .put(
            "/api/tenant/config",
            &erin,
            json!({"timezone": "Europe/Paris", "locale": "de-DE"}),
        )
        .await?;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["config"]["timezone"], "Europe/Paris");

    let (status, bad) = app
        .put(
            "/api/tenant/config",
            &erin,
            json!({"colour": "red", "audit_retention_days": "x", "locale": "french"}),
        )
        .await?;
    assert_eq!(status, 422);
    let error = bad["error"].as_str().unwrap_or_default();
    for key in ["colour: unknown key", "audit_retention_days", "locale"] {
        assert!(error.contains(key), "names {key}: {error}");
    }
    for body in [json!([1]), json!({})] {
        let (status, _) = app.put("/api/tenant/config", &erin, body).await?;
        assert_eq!(status, 422);
    }
    let (_, current) = app.get("/api/tenant/config", &erin).await?;
    assert_eq!(current["version"], 2, "nothing changed by bad input");

    let (_, history) = app.get("/api/tenant/config/versions", &erin).await?;
    assert_eq!(history.as_array().map(Vec::len), Some(2));
    assert_eq!(
        history[0]["changes"]["locale"],
        json!({"from": "fr-FR", "to": "de-DE"})
    );
    let (status, one) = app.get("/api/tenant/config/versions/1", &erin).await?;
    assert_eq!(
        (status, one["value"]["locale"].clone()),
        (200, json!("fr-FR"))
    );
    let (status, _) = app.get("/api/tenant/config/versions/99", &erin).await?;
    assert_eq!(status, 404);

    let (status, restored) = app
        .call(
            Method::POST,
            "/api/tenant/config/versions/1/restore",
            Some(&erin),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(
        (
            restored["version"].clone(),
            restored["restored_from"].clone()
        ),
        (json!(3), json!(1))
    );
    let (_, current) = app.get("/api/tenant/config", &erin).await?;
    assert_eq!(
        (
            current["config"]["locale"].clone(),
            current["config"]["timezone"].clone()
        ),
        (json!("fr-FR"), json!("UTC"))
    );
    assert_eq!(
        actions(&app, app.acme).await?[..3],
        ["config.restored", "config.updated", "config.updated"]
    );
    // Globex's configuration is its own.
    let (_, globex) = app
        .get("/api/tenant/config", &app.login(GUS).await?)
        .await?;
    assert_eq!(
        (
            globex["version"].clone(),
            globex["config"]["locale"].clone()
        ),
        (json!(0), json!("en-US"))
    );
    Ok(())
}

#[tokio::test]
async fn branding_is_validated_versioned_and_restorable() -> TestResult {
    let app = TestApp::spawn().await?;
    let erin = app.login(ERIN).await?;
    let bob = app.login(BOB).await?;
    let (status, body) = app.get("/api/tenant/branding", &bob).await?;
    assert_eq!(status, 200, "every member sees the branding");
    assert_eq!(
        body,
        json!({"display_name": "Acme Corp", "logo_url": null, "primary_color": null})
    );
    let (status, _) = app
        .put(
            "/api/tenant/branding",
            &bob,
            json!({"primary_color": "#000000"}),
        )
        .await?;
    assert_eq!(status, 403);

    let (status, body) = app
        .put(
            "/api/tenant/branding",
            &erin,
            json!({"primary_color": "#112233", "logo_url": "https://cdn.acme.test/logo.png"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["branding"]["primary_color"], "#112233");
    for bad in [
        json!({"primary_color": "red"}),
        json!({"logo_url": "javascript:alert(1)"}),
        // An https URL without markup only.
        json!({"logo_url": "http://cdn.acme.test/logo.png"}),
        json!({"logo_url": "https://x.test/\"><script>alert(1)</script>"}),
        json!({"logo_url": "https://x.test/a b.png"}),
        json!({"display_name": "  "}),
        json!({"font": "Comic Sans"}),
        json!({}),
    ] {
        let (status, answer) = app.put("/api/tenant/branding", &erin, bad.clone()).await?;
        assert_eq!(status, 422, "{bad}: {answer}");
    }
    let (_, second) = app
        .put(
            "/api/tenant/branding",
            &erin,
            json!({"display_name": "ACME", "primary_color": ""}),
        )
        .await?;
    assert_eq!(
        second["branding"],
        json!({"display_name": "ACME", "logo_url": "https://cdn.acme.test/logo.png", "primary_color": null})
    );
    let first = second["version"].as_i64().unwrap_or_default() - 1;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/tenant/config/versions/{first}/restore"),
            Some(&erin),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let (_, now) = app.get("/api/tenant/branding", &bob).await?;
    assert_eq!(
        now,
        json!({"display_name": "Acme Corp", "logo_url": "https://cdn.acme.test/logo.png", "primary_color": "#112233"})
    );
    let (_, globex) = app
        .get("/api/tenant/branding", &app.login(GUS).await?)
        .await?;
    assert_eq!(globex["primary_color"], Value::Null, "globex untouched");
    assert_eq!(
        actions(&app, app.acme).await?[..3],
        ["config.restored", "branding.updated", "branding.updated"]
    );
    assert!(
        actions(&app, app.globex).await?.is_empty(),
        "nothing of it in globex's trail"
    );
    Ok(())
}

#[tokio::test]
async fn one_configuration_store_and_each_tenant_gets_its_own() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    let (status, body) = app
        .put(
            "/api/tenant/config",
            &alice,
            json!({"session_timeout_minutes": 5, "locale": "fr-FR"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    // The same document through settings, and as every request loads it.
    let (_, settings) = app.get("/api/tenant/settings", &alice).await?;
    assert_eq!(
        (&settings["session_timeout_minutes"], &settings["locale"]),
        (&json!(5), &json!("fr-FR"))
    );
    let (_, theirs) = app.get("/api/tenant/config", &gus).await?;
    assert_eq!(
        (
            &theirs["config"]["session_timeout_minutes"],
            &theirs["config"]["locale"]
        ),
        (&json!(60), &json!("en-US")),
        "globex keeps the defaults"
    );

    // The keys take effect: token lifetimes per tenant, switching included.
    let expires = |body: &Value| body["expires_in"].clone();
    assert_eq!(expires(&app.login_body(BOB, PASSWORD).await?.1), 300);
    assert_eq!(expires(&app.login_body(GUS, PASSWORD).await?.1), 600);
    let mut carol = app.login(CAROL).await?;
    for (tenant, lifetime) in [(app.acme, 300), (app.globex, 600), (app.acme, 300)] {
        let (status, body) = app
            .call(
                Method::POST,
                "/auth/switch-tenant",
                Some(&carol),
                &[],
                Some(json!({ "tenant_id": tenant })),
            )
            .await?;
        assert_eq!((status, expires(&body)), (200, json!(lifetime)), "{body}");
        // Each switch replaces the session's token.
        carol = body["access_token"].as_str().unwrap_or_default().to_owned();
    }

    // Settings written whole are checked and versioned like the rest.
    for (path, bad) in [
        (
            "/api/tenant/settings",
            json!({"session_timeout_minutes": "soon"}),
        ),
        ("/api/tenant/settings", json!({"app_theme": "dark\u{0}"})),
        (
            "/api/tenant/config",
            json!({"timezone": "Europe/Paris\u{0}"}),
        ),
    ] {
        let (status, body) = app.put(path, &alice, bad).await?;
        assert_eq!(status, 422, "{path}: {body}");
    }
    let (status, body) = app
        .put(
            "/api/tenant/settings",
            &alice,
            json!({"session_timeout_minutes": 10, "app_theme": "dark"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (_, config) = app.get("/api/tenant/config", &alice).await?;
    assert_eq!(config["config"]["session_timeout_minutes"], 10);
    assert_eq!(config["version"], 2);
    assert_eq!(expires(&app.login_body(BOB, PASSWORD).await?.1), 600);

    // Restoring version 1 puts it back where requests load it.
    let (status, body) = app
        .call(
            Method::POST,
            "/api/tenant/config/versions/1/restore",
            Some(&alice),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(expires(&app.login_body(BOB, PASSWORD).await?.1), 300);
    let (_, settings) = app.get("/api/tenant/settings", &alice).await?;
    assert_eq!(settings["app_theme"], "dark", "the tenant's own keys stay");
    Ok(())
}

#[tokio::test]
async fn every_tenant_admin_action_is_in_the_tenants_own_trail() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let id = |token: &str| {
        tenancy_tests::server::claims(token)["sub"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (bob, dave) = (
        id(&app.login(BOB).await?),
        id(&app.login("dave@acme.test").await?),
    );
    let call = |method: Method, path: String, body: Option<Value>| {
        let (app, alice) = (&app, &alice);
        async move {
            let (status, body) = app.call(method, &path, Some(alice), &[], body).await?;
            assert!(status < 300, "{path}: {status} {body}");
            TestResult::Ok(body)
        }
    };
    let ws = call(
        Method::POST,
        "/api/workspaces".into(),
        Some(json!({"name": "Ops"})),
    )
    .await?;
    let ws = ws["id"].as_str().unwrap_or_default().to_owned();
    let steps = [
        (
            Method::PATCH,
            format!("/api/workspaces/{ws}"),
            Some(json!({"name": "Ops 2"})),
        ),
        (
            Method::POST,
            format!("/api/workspaces/{ws}/members"),
            Some(json!({"user_id": bob, "role": "member"})),
        ),
        (
            Method::PATCH,
            format!("/api/workspaces/{ws}/members/{bob}"),
            Some(json!({"role": "viewer"})),
        ),
        (
            Method::DELETE,
            format!("/api/workspaces/{ws}/members/{bob}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/workspaces/{ws}"),
            Some(json!({"archived": true})),
        ),
        (Method::DELETE, format!("/api/workspaces/{ws}"), None),
        (
            Method::PATCH,
            format!("/api/tenant/members/{bob}"),
            Some(json!({"role": "admin"})),
        ),
        (Method::DELETE, format!("/api/tenant/members/{dave}"), None),
        (
            Method::PUT,
            "/api/tenant/settings".to_owned(),
            Some(json!({"timezone": "Europe/Paris"})),
        ),
        (
            Method::PUT,
            "/api/tenant/billing".to_owned(),
            Some(json!({"billing_email": "billing@acme.test"})),
        ),
    ];
    for (method, path, body) in steps {
        call(method, path, body).await?;
    }
    let page = call(Method::GET, "/api/tenant/audit?limit=100".into(), None).await?;
    let events = page["events"].as_array().cloned().unwrap_or_default();
    let mut actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    actions.reverse();
    let expected = [
        "workspace.created",
        "workspace.renamed",
        "workspace_member.added",
        "workspace_member.role_changed",
        "workspace_member.removed",
        "workspace.archived",
        "workspace.deleted",
        "member.role_changed",
        "member.removed",
        "tenant.settings_changed",
        "tenant.billing_changed",
    ];
    let ours: Vec<&str> = actions
        .into_iter()
        .filter(|a| expected.contains(a))
        .collect();
    assert_eq!(ours, expected, "{page}");
    let removed = events.iter().find(|e| e["action"] == "member.removed");
    assert_eq!(
        removed.map(|e| (e["target"].clone(), e["details"]["role"].clone())),
        Some((json!("dave@acme.test"), json!("member")))
    );
    let settings = events
        .iter()
        .find(|e| e["action"] == "tenant.settings_changed");
    assert_eq!(
        settings.map(|e| e["details"]["changed"].clone()),
        Some(json!(["timezone"])),
        "the keys changed, not their values"
    );
    // Globex's trail has none of it.
    let gus = app.login(GUS).await?;
    let (_, theirs) = app.get("/api/tenant/audit?limit=100", &gus).await?;
    assert!(
        theirs["events"].as_array().is_some_and(|e| e
            .iter()
            .all(|e| !expected.contains(&e["action"].as_str().unwrap_or_default()))),
        "{theirs}"
    );
    Ok(())
}

#[tokio::test]
async fn the_audit_trail_is_per_tenant_filterable_and_purged_past_retention() -> TestResult {
    let app = TestApp::spawn().await?;
    let erin = app.login(ERIN).await?;
    let bob = app.login(BOB).await?;
    let gus = app.login(GUS).await?;
    let root = app.login(ROOT).await?;
    app.put("/api/tenant/config", &erin, json!({"locale": "fr-FR"}))
        .await?;
    app.put("/api/tenant/config", &erin, json!({"locale": "it-IT"}))
        .await?;
    app.put(
        "/api/tenant/config",
        &app.login(GUS).await?,
        json!({"locale": "es-ES"}),
    )
    .await?;
    let (status, _) = app.get("/api/tenant/audit", &bob).await?;
    assert_eq!(status, 403, "members do not read the trail");

    let (status, page) = app.get("/api/tenant/audit", &erin).await?;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events.iter().all(|e| e["tenant_id"] == json!(app.acme)),
        "only acme's"
    );
    let found: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(
        found[..3],
        ["authz.denied", "config.updated", "config.updated"],
        "bob's denial is in it too"
    );
    let (_, filtered) = app
        .get("/api/tenant/audit?action=config.updated&limit=1", &erin)
        .await?;
    assert_eq!(filtered["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        filtered["events"][0]["details"]["changes"]["locale"]["to"],
        "it-IT"
    );
    let before = filtered["next_before"].as_i64().unwrap_or_default();
    let (_, next) = app
        .get(
            &format!("/api/tenant/audit?action=config.updated&before={before}"),
            &erin,
        )
        .await?;
    assert_eq!(
        next["events"][0]["details"]["changes"]["locale"]["to"], "fr-FR",
        "the cursor pages back"
    );
    // Naming another tenant in the filter shows nothing of it.
    let (_, sneaky) = app
        .get(
            &format!("/api/tenant/audit?tenant_id={}", app.globex),
            &erin,
        )
        .await?;
    assert_eq!(sneaky["events"], json!([]));
    let (_, theirs) = app.get("/api/tenant/audit", &gus).await?;
    assert!(theirs["events"]
        .as_array()
        .is_some_and(|e| e.iter().all(|e| e["tenant_id"] == json!(app.globex))));
    for query in ["?limit=0", "?since=yesterday", "?bogus=1"] {
        let (status, _) = app.get(&format!("/api/tenant/audit{query}"), &erin).await?;
        assert_eq!(status, 422, "{query}");
    }
    let (_, all) = app
        .get("/api/admin/audit?action=config.updated", &root)
        .await?;
    assert_eq!(
        all["events"].as_array().map(Vec::len),
        Some(3),
        "the super admin reads every tenant's"
    );
    let (_, acme_only) = app
        .get(
            &format!(
                "/api/admin/audit?action=config.updated&tenant_id={}",
                app.acme
            ),
            &root,
        )
        .await?;
    assert_eq!(acme_only["events"].as_array().map(Vec::len), Some(2));

    // Retention: at least 30 days; acme keeps 30, two of its entries are older.
    let (status, _) = app
        .put(
            "/api/tenant/config",
            &erin,
            json!({"audit_retention_days": 29}),
        )
        .await?;
    assert_eq!(status, 422, "an admin cannot erase the trail");
    app.put(
        "/api/tenant/config",
        &erin,
        json!({"audit_retention_days": 30}),
    )
    .await?;
    let mut su = app.superuser().await?;
    sqlx::query("UPDATE app.audit_events SET created_at = now() - interval '40 days' WHERE action = 'config.updated' AND details->'changes'->'locale' IS NOT NULL")
        .execute(&mut su)
        .await?;
    let state = tenancy_server::AppState::connect(app.config.clone())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let deleted = tenancy_server::audit::purge(&state).await?;
    assert_eq!(deleted, 2, "acme's two old entries; globex keeps 365 days");
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM app.audit_events WHERE tenant_id = $1 ORDER BY id DESC",
    )
    .bind(app.acme)
    .fetch_all(&mut su)
    .await?;
    assert_eq!(left[0], "audit.purged");
    assert!(
        left.contains(&"config.updated".to_owned()),
        "the recent change stays: {left:?}"
    );
    let globex_old: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM app.audit_events WHERE tenant_id = $1 AND action = 'config.updated'",
    )
    .bind(app.globex)
    .fetch_one(&mut su)
    .await?;
    assert_eq!(globex_old, 1);
    Ok(())
}

/// A real SMTP peer (Python's smtpd debugging server) on `port`; what it
/// receives is printed to its stdout.
async fn smtp_server(port: u16) -> TestResult<tokio::process::Child> {
    let child = tokio::process::Command::new("python3")
        .args([
            "-u",
            "-W",
            "ignore",
            "-m",
            "smtpd",
            "-n",
            "-c",
            "DebuggingServer",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the SMTP server did not start".into())
}

#[tokio::test]
async fn welcome_mail_waits_for_a_down_smtp_server_and_is_delivered_once_it_is_up() -> TestResult {
    let port = tenancy_tests::server::free_port()?;
    let app = TestApp::spawn_with(Options {
        smtp_url: Some(format!("smtp://127.0.0.1:{port}")),
        ..Options::default()
    })
    .await?;
    let root = app.login(ROOT).await?;
    let (status, body) = app.post("/api/admin/tenants", &root, initech()).await?;
    assert_eq!(
        status, 201,
        "the mail server being down does not fail provisioning: {body}"
    );
    let mut su = app.superuser().await?;
    let mut failed: (i32, Option<String>) = (0, None);
    for _ in 0..50 {
        failed = sqlx::query_as(
            "SELECT attempts, last_error FROM app.email_outbox WHERE sent_at IS NULL",
        )
        .fetch_one(&mut su)
        .await?;
        if failed.0 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (attempts, error): (i32, Option<String>) = failed;
    assert!(
        attempts > 0 && error.is_some(),
        "tried and kept: {attempts} {error:?}"
    );

    let mut smtp = smtp_server(port).await?;
    let mut out = tokio::io::BufReader::new(smtp.stdout.take().ok_or("no stdout")?);
    let mut seen = String::new();
    let received = tokio::time::timeout(Duration::from_secs(15), async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        while out.read_line(&mut line).await.unwrap_or(0) > 0 {
            seen.push_str(&line);
            line.clear();
            if seen.contains("Subject: Welcome to Initech")
                && seen.contains("peter@initech.test")
                && seen.contains("text/html")
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        received,
        "the SMTP server got the welcome mail, text and HTML: {seen}"
    );
    assert!(seen.contains("multipart/alternative"), "{seen}");
    let mut sent: i64 = 0;
    for _ in 0..50 {
        sent =
            sqlx::query_scalar("SELECT count(*) FROM app.email_outbox WHERE sent_at IS NOT NULL")
                .fetch_one(&mut su)
                .await?;
        if sent == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sent, 1);
    Ok(())
}

#[tokio::test]
async fn an_existing_user_of_another_tenant_can_own_a_new_one() -> TestResult {
    let app = TestApp::spawn().await?;
    let root = app.login(ROOT).await?;
    let mut su = app.superuser().await?;
    let before: Option<Uuid> = sqlx::query_scalar(
        "SELECT m.default_workspace_id FROM app.tenant_memberships m JOIN app.users u ON u.id = m.user_id
         WHERE u.email = $1 AND m.tenant_id = $2",
    )
    .bind(ALICE)
    .bind(app.acme)
    .fetch_one(&mut su)
    .await?;
    let mut body = initech();
    body["owner_email"] = json!(ALICE);
    let (status, answer) = app.post("/api/admin/tenants", &root, body).await?;
    assert_eq!(status, 201, "{answer}");
    let after: Option<Uuid> = sqlx::query_scalar(
        "SELECT m.default_workspace_id FROM app.tenant_memberships m JOIN app.users u ON u.id = m.user_id
         WHERE u.email = $1 AND m.tenant_id = $2",
    )
    .bind(ALICE)
    .bind(app.acme)
    .fetch_one(&mut su)
    .await?;
    assert_eq!(after, before, "her membership in acme is untouched");
    let tenants: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM app.tenant_memberships m JOIN app.users u ON u.id = m.user_id WHERE u.email = $1",
    )
    .bind(ALICE)
    .fetch_one(&mut su)
    .await?;
    assert_eq!(tenants, 2);
    Ok(())
}

#[tokio::test]
async fn a_limit_update_changes_only_the_limits_given() -> TestResult {
    let app = TestApp::spawn().await?;
    let root = app.login(ROOT).await?;
    let path = format!("/api/admin/tenants/{}", app.acme);
    let (status, answer) = app
        .put(&path, &root, json!({"limits": {"max_members": 10}}))
        .await?;
    assert_eq!(
        (status, answer["error"].clone()),
        (
            422,
            json!("this tenant has no plan: give a plan with its limits")
        )
    );
    let (_, t) = app
        .put(
            &path,
            &root,
            json!({"plan": "pro", "limits": {"max_members": 10, "max_workspaces": 4}}),
        )
        .await?;
    assert_eq!(
        (
            t["limits"]["max_members"].clone(),
            t["limits"]["max_workspaces"].clone()
        ),
        (json!(10), json!(4))
    );
    let (_, t) = app
        .put(&path, &root, json!({"limits": {"max_members": 12}}))
        .await?;
    assert_eq!(
        (
            t["limits"]["max_members"].clone(),
            t["limits"]["max_workspaces"].clone()
        ),
        (json!(12), json!(4)),
        "max_workspaces kept"
    );
    let (_, t) = app
        .put(&path, &root, json!({"limits": {"max_workspaces": null}}))
        .await?;
    assert_eq!(
        (
            t["limits"]["max_members"].clone(),
            t["limits"]["max_workspaces"].clone()
        ),
        (json!(12), json!(25)),
        "back to the plan's"
    );
    let (_, t) = app.put(&path, &root, json!({"plan": "free"})).await?;
    assert_eq!(
        (
            t["plan"].clone(),
            t["limits"]["max_members"].clone(),
            t["limits"]["max_workspaces"].clone()
        ),
        (json!("free"), json!(12), json!(3))
    );
    Ok(())
}

#[tokio::test]
async fn a_forged_retention_never_purges_more_than_the_default_allows() -> TestResult {
    let app = TestApp::spawn().await?;
    let erin = app.login(ERIN).await?;
    app.put("/api/tenant/config", &erin, json!({"locale": "fr-FR"}))
        .await?;
    let mut su = app.superuser().await?;
    sqlx::query(
        "UPDATE app.audit_events SET created_at = now() - interval '3 days' WHERE tenant_id = $1",
    )
    .bind(app.acme)
    .execute(&mut su)
    .await?;
    // Raw SQL as the service's role, in acme's context: a forged version.
    let keys = tenancy_server::auth::Keys::new(&app.config);
    let mut conn = app.app_role().await?;
    let mut tx = sqlx::Connection::begin(&mut conn).await?;
    tenancy_tests::use_token(&mut tx, &keys.context_token(app.acme, Uuid::new_v4())?).await?;
    sqlx::query(
        "INSERT INTO app.tenant_config_versions (version, kind, value, changes)
         VALUES (999, 'config', '{\"audit_retention_days\": -36500}', '{}')",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let state = tenancy_server::AppState::connect(app.config.clone())
        .await
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(
        tenancy_server::audit::purge(&state).await?,
        0,
        "3 days is within the default 365"
    );
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM app.audit_events WHERE tenant_id = $1")
            .bind(app.acme)
            .fetch_one(&mut su)
            .await?;
    assert_eq!(kept, 1);
    let (status, body) = app
        .call(
            Method::POST,
            "/api/tenant/config/versions/999/restore",
            Some(&erin),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 422, "a forged version is not restored: {body}");
    Ok(())
}

#[tokio::test]
async fn mail_is_the_tenants_own_in_its_locale_with_a_branded_html_part() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    for (path, body) in [
        ("/api/tenant/config", json!({"locale": "fr-FR"})),
        (
            "/api/tenant/branding",
            json!({"display_name": "Acme <Corp>", "primary_color": "#FF0000"}),
        ),
        (
            "/api/tenant/email-templates/invitation",
            json!({"locale": "fr", "subject": "Invitation à {tenant}", "body": "Bonjour {email},\n\nrejoignez <b>{tenant}</b>."}),
        ),
    ] {
        let (status, answer) = app.put(path, &alice, body).await?;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    for (email, token) in [("new.fr@acme.test", &alice), ("new.en@globex.test", &gus)] {
        let (status, _) = app
            .post(
                "/api/tenant/invitations",
                token,
                json!({"email": email, "role": "member"}),
            )
            .await?;
        assert_eq!(status, 202);
    }
    let mut su = app.superuser().await?;
    let mail = |email: &'static str| {
        sqlx::query_as::<_, (String, String, Option<String>)>(
            "SELECT subject, body, html FROM app.email_outbox WHERE recipient = $1",
        )
        .bind(email)
    };
    let (subject, text, html) = mail("new.fr@acme.test").fetch_one(&mut su).await?;
    assert_eq!(subject, "Invitation à Acme <Corp>");
    assert!(
        text.starts_with("Bonjour new.fr@acme.test,\n\nrejoignez <b>Acme <Corp></b>."),
        "{text}"
    );
    assert!(
        text.contains("Accept the invitation: https://app.tenancy.test/accept-invitation?token=")
    );
    let html = html.unwrap_or_default();
    assert!(
        html.contains("rejoignez &lt;b&gt;Acme &lt;Corp&gt;&lt;/b&gt;."),
        "{html}"
    );
    assert!(html.contains("#FF0000"), "the tenant's colour: {html}");
    assert!(html.contains("<a href=\"https://app.tenancy.test/accept-invitation?token="));
    // Globex keeps the built-in English text.
    let (subject, text, _) = mail("new.en@globex.test").fetch_one(&mut su).await?;
    assert_eq!(subject, "You are invited to Globex");
    assert!(text.starts_with("Hello,"), "{text}");

    // Only known keys and well-formed templates, by those who manage settings.
    let bob = app.login(BOB).await?;
    for (token, path, body, status) in [
        (
            &alice,
            "/api/tenant/email-templates/nope",
            json!({"subject": "s", "body": "b"}),
            404,
        ),
        (
            &alice,
            "/api/tenant/email-templates/welcome",
            json!({"subject": "a\nb", "body": "b"}),
            422,
        ),
        (
            &alice,
            "/api/tenant/email-templates/welcome",
            json!({"locale": "french", "subject": "s", "body": "b"}),
            422,
        ),
        (
            &bob,
            "/api/tenant/email-templates/welcome",
            json!({"subject": "s", "body": "b"}),
            403,
        ),
        // Security mails keep the service's text: they go to any address.
        (
            &alice,
            "/api/tenant/email-templates/password_reset",
            json!({"subject": "s", "body": "b"}),
            404,
        ),
        (
            &alice,
            "/api/tenant/email-templates/signup_verification",
            json!({"subject": "s", "body": "b"}),
            404,
        ),
    ] {
        let (got, answer) = app.put(path, token, body).await?;
        assert_eq!(got, status, "{path}: {answer}");
    }
    let (status, _) = app
        .delete("/api/tenant/email-templates/invitation?locale=fr", &alice)
        .await?;
    assert_eq!(status, 204);
    let (_, list) = app.get("/api/tenant/email-templates", &alice).await?;
    assert!(
        list["templates"]
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t["locale"] == "")),
        "{list}"
    );
    Ok(())
}

#[tokio::test]
async fn an_owner_deletes_the_tenant_restores_it_and_after_the_grace_period_it_is_gone(
) -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let erin = app.login(ERIN).await?;
    let gus = app.login(GUS).await?;
    let (status, _) = app.delete("/api/tenant", &erin).await?;
    assert_eq!(status, 403, "an admin does not delete the tenant");
    let (status, body) = app.delete("/api/tenant", &alice).await?;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("inactive")),
        "{body}"
    );
    let bob = app.login(BOB).await?;
    let (status, body) = app.get("/api/workspaces", &bob).await?;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("Tenant is not active"))
    );

    // Restored by an owner (nobody else) during the grace period.
    let restore = format!("/api/tenants/{}/restore", app.acme);
    for (token, expected) in [(&bob, 404), (&gus, 404), (&alice, 200), (&alice, 404)] {
        let (status, body) = app
            .call(Method::POST, &restore, Some(token), &[], None)
            .await?;
        assert_eq!(status, expected, "{body}");
    }
    let (status, _) = app.get("/api/workspaces", &bob).await?;
    assert_eq!(status, 200, "back");

    // A platform decision replaces the owner's deletion: suspended by the
    // platform after the owner deleted it, the owner cannot undo that.
    let root = app.login(ROOT).await?;
    let (status, _) = app.delete("/api/tenant", &app.login(ALICE).await?).await?;
    assert_eq!(status, 202);
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/admin/tenants/{}/suspend", app.acme),
            Some(&root),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let (status, _) = app
        .call(Method::POST, &restore, Some(&alice), &[], None)
        .await?;
    assert_eq!(status, 404, "no owner's deletion pending any more");
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/admin/tenants/{}/reactivate", app.acme),
            Some(&root),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let actions: Vec<String> = {
        let (_, page) = app.get("/api/tenant/audit?limit=100", &alice).await?;
        page["events"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e["action"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        actions.contains(&"tenant.deletion_requested".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"tenant.deletion_cancelled".to_owned()),
        "{actions:?}"
    );

    // Deleted again; once the grace period is over, every row goes.
    let (status, _) = app.delete("/api/tenant", &app.login(ALICE).await?).await?;
    assert_eq!(status, 202);
    let mut su = app.superuser().await?;
    sqlx::query("UPDATE app.tenant_deletions SET purge_after = now() - interval '1 second'")
        .execute(&mut su)
        .await?;
    let rows_of = |tenant: Uuid| {
        let sql = "SELECT coalesce(sum((xpath('/row/c/text()',
                        query_to_xml(format('SELECT count(*) AS c FROM %s WHERE %I = %L',
                                            table_name, tenant_column, $1), false, true, '')))[1]::text::bigint), 0)::bigint
                   FROM tenancy.protected_tables WHERE parent_table IS NULL";
        sqlx::query_scalar::<_, i64>(sql).bind(tenant)
    };
    let (acme_before, globex_before) = (
        rows_of(app.acme).fetch_one(&mut su).await?,
        rows_of(app.globex).fetch_one(&mut su).await?,
    );
    assert!(acme_before > 0 && globex_before > 0);
    let state = tenancy_server::AppState::connect(app.config.clone())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let removed = tenancy_server::routes::deletion::purge_due(&state)
        .await
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(removed, 1);
    assert_eq!(
        rows_of(app.acme).fetch_one(&mut su).await?,
        0,
        "acme's rows are gone"
    );
    assert_eq!(
        rows_of(app.globex).fetch_one(&mut su).await?,
        globex_before,
        "globex's rows are untouched"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.tenants WHERE id = $1")
        .bind(app.acme)
        .fetch_one(&mut su)
        .await?;
    assert_eq!(left, 0, "the catalog row too");
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenancy.audit_log WHERE action = 'tenants.delete'",
    )
    .fetch_one(&mut su)
    .await?;
    assert_eq!(logged, 1, "in the extension's audit log");
    let (status, _) = app.get("/api/workspaces", &gus).await?;
    assert_eq!(status, 200, "globex goes on");
    Ok(())
}
