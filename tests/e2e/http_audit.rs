//! A tenant's audit trail (seed 002 REQ-MT-B013): every admin action in
//! the tenant's own trail, per-tenant isolation, filters, and retention.

use reqwest::Method;
use serde_json::{json, Value};
use tenancy_tests::server::{TestApp, ALICE, BOB, ERIN, GUS, ROOT};
use tenancy_tests::TestResult;
use uuid::Uuid;

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
    let deleted = tenancy_server::jobs::retention::purge(&state).await?;
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
    let keys = tenancy_server::domain::sessions::Keys::new(&app.config);
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
        tenancy_server::jobs::retention::purge(&state).await?,
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
