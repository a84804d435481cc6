//! Tenant administration by the platform (seed 002: REQ-MT-B004, B006,
//! B007): the super-admin tenant API, provisioning in one transaction,
//! plan limits under concurrency. Configuration, audit, mail and deletion
//! have files of their own.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tenancy_tests::server::{Options, TestApp, ALICE, BOB, ERIN, GUS, ROOT};
use tenancy_tests::TestResult;
use uuid::Uuid;

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
        app.scalar::<i64>("SELECT count(*) FROM tenancy.tenants")
            .await?,
        2
    );
    assert_eq!(
        app.scalar::<String>("SELECT status FROM tenancy.tenants WHERE slug = 'globex'")
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
        // Its copy of each built-in mail text.
        (
            "app.email_templates",
            tenancy_server::domain::mail::BUILT_IN.len() as i64,
        ),
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
    assert_eq!(app.audit_actions(id).await?, ["tenant.created"]);

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
        app.scalar::<i64>("SELECT count(*) FROM tenancy.tenants")
            .await?,
        2
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM app.email_outbox")
            .await?,
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
        app.scalar::<i64>("SELECT count(*) FROM tenancy.tenants WHERE slug = 'initech'")
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
            app.scalar::<i64>(&format!("SELECT count(*) FROM {table}"))
                .await?,
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
        app.scalar::<i64>(&format!(
            "SELECT count(*) FROM app.workspaces WHERE tenant_id = '{}'",
            app.acme
        ))
        .await?,
        2
    );
    assert_eq!(
        app.audit_actions(app.acme).await?[..3],
        ["tenant.deleted", "tenant.reactivated", "tenant.suspended"]
    );
    let bypasses: i64 = app
        .scalar("SELECT count(*) FROM tenancy.audit_log WHERE action = 'bypass'")
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
    assert_eq!(app.audit_actions(app.acme).await?[0], "tenant.updated");
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
        app.scalar::<i64>(&format!(
            "SELECT count(*) FROM app.tenant_memberships WHERE tenant_id = '{}'",
            app.acme
        ))
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
    let used: i64 = app.scalar(&format!("SELECT coalesce((SELECT storage_bytes FROM app.tenant_usage WHERE tenant_id = '{}'), 0)", app.acme)).await?;
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
    let keys = tenancy_server::domain::sessions::Keys::new(&app.config);
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
