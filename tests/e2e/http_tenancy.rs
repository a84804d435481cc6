//! Tenant resolution (subdomain, custom domain, X-Tenant-ID, claim), the
//! 400/403/404 outcomes, and cross-tenant attempts on every endpoint.

use reqwest::Method;
use serde_json::{json, Value};
use tenancy_tests::server::{Options, TestApp, ALICE, BOB, CAROL, GUS};
use tenancy_tests::TestResult;
use uuid::Uuid;

async fn call(
    app: &TestApp,
    token: &str,
    host: Option<&str>,
    tenant_header: Option<&str>,
) -> TestResult<(u16, Value)> {
    let mut headers = Vec::new();
    if let Some(host) = host {
        headers.push(("host", host));
    }
    if let Some(tenant) = tenant_header {
        headers.push(("x-tenant-id", tenant));
    }
    app.call(Method::GET, "/api/tenant", Some(token), &headers, None)
        .await
}

#[tokio::test]
async fn resolution_order_and_outcomes() -> TestResult {
    let app = TestApp::spawn().await?;
    let carol = app.login(CAROL).await?; // member of both, no tenant claim
    let alice = app.login(ALICE).await?; // acme only, tenant claim acme
    let acme = app.acme.to_string();
    let globex = app.globex.to_string();
    let mut su = app.superuser().await?;
    sqlx::query("SELECT tenancy.add_domain($1, 'tasks.globex.example')")
        .bind(app.globex)
        .execute(&mut su)
        .await?;
    // Ends like the base domain (tenancy.test) but is not under it.
    sqlx::query("SELECT tenancy.add_domain($1, 'globextenancy.test')")
        .bind(app.globex)
        .execute(&mut su)
        .await?;

    // Subdomain, custom domain, header: each selects for a user of several tenants.
    for (host, header, slug) in [
        (Some("acme.tenancy.test"), None, "acme"),
        (Some("ACME.tenancy.test:8080"), None, "acme"),
        (Some("tasks.globex.example"), None, "globex"),
        (Some("globextenancy.test"), None, "globex"),
        (None, Some(globex.as_str()), "globex"),
        (Some("acme.tenancy.test"), Some(acme.as_str()), "acme"),
    ] {
        let (status, body) = call(&app, &carol, host, header).await?;
        assert_eq!(
            (status, body["slug"].clone()),
            (200, json!(slug)),
            "{host:?} {header:?}: {body}"
        );
    }
    // The claim when nothing else is given.
    let (status, body) = call(&app, &alice, None, None).await?;
    assert_eq!((status, body["slug"].clone()), (200, json!("acme")));
    // The service's own host names no tenant.
    let (status, body) = call(&app, &alice, Some("api.tenancy.test"), None).await?;
    assert_eq!((status, body["slug"].clone()), (200, json!("acme")));

    let unknown = Uuid::new_v4().to_string();
    let cases: [(&str, Option<&str>, Option<&str>, u16, &str); 8] = [
        (
            "unknown subdomain",
            Some("nobody.tenancy.test"),
            None,
            404,
            "Tenant not found",
        ),
        (
            "unknown X-Tenant-ID",
            None,
            Some(unknown.as_str()),
            404,
            "Tenant not found",
        ),
        (
            "not a member",
            None,
            Some(globex.as_str()),
            403,
            "You are not a member of this tenant",
        ),
        (
            "malformed X-Tenant-ID",
            None,
            Some("acme"),
            400,
            "X-Tenant-ID must be a UUID",
        ),
        (
            "host and header disagree",
            Some("acme.tenancy.test"),
            Some(globex.as_str()),
            400,
            "X-Tenant-ID does not match the host's tenant",
        ),
        (
            "odd host",
            Some("acme_corp!.tenancy.test"),
            None,
            400,
            "Invalid Host header",
        ),
        (
            "token for another tenant",
            Some("globex.tenancy.test"),
            None,
            403,
            "Token is not valid for this tenant",
        ),
        (
            "header for another tenant",
            None,
            Some(globex.as_str()),
            403,
            "Token is not valid for this tenant",
        ),
    ];
    // Carol switched to acme: a member of globex too, but her token is for acme.
    let (_, switched) = app
        .post(
            "/auth/switch-tenant",
            &carol,
            json!({"tenant_id": app.acme}),
        )
        .await?;
    let carol_acme = switched["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let carol = app.login(CAROL).await?;
    for (case, host, header, status, message) in cases {
        let token = match case {
            c if c.contains("another tenant") => &carol_acme,
            "not a member" => &alice,
            _ => &carol,
        };
        let (got, body) = call(&app, token, host, header).await?;
        assert_eq!(
            (got, body["error"].clone()),
            (status, json!(message)),
            "{case}: {body}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_non_member_is_refused_and_audited() -> TestResult {
    let app = TestApp::spawn().await?;
    let bob = app.login(BOB).await?;
    let globex = app.globex.to_string();
    let (status, body) = app
        .call(
            Method::GET,
            "/api/workspaces",
            Some(&bob),
            &[("x-tenant-id", &globex)],
            None,
        )
        .await?;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"error": "You are not a member of this tenant", "code": "forbidden"})
        )
    );

    let mut su = app.superuser().await?;
    let audited: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT tenant_id, action, target FROM app.audit_events WHERE action = 'tenant.access_denied'")
            .fetch_all(&mut su)
            .await?;
    assert_eq!(
        audited,
        [(
            app.globex,
            "tenant.access_denied".to_owned(),
            "/api/workspaces".to_owned()
        )]
    );
    Ok(())
}

#[tokio::test]
async fn a_suspended_tenant_is_403_for_its_users() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let mut su = app.superuser().await?;
    for status in ["suspended", "inactive"] {
        sqlx::query("SELECT tenancy.set_tenant_status($1, $2)")
            .bind(app.acme)
            .bind(status)
            .execute(&mut su)
            .await?;
        let (code, body) = app.get("/api/workspaces", &alice).await?;
        assert_eq!(
            (code, body),
            (
                403,
                json!({"error": "Tenant is not active", "code": "tenant_inactive"})
            ),
            "{status}"
        );
    }
    Ok(())
}

/// Creates a workspace, a board in it and a task on it; returns their ids.
async fn seed_work(app: &TestApp, token: &str) -> TestResult<(String, String, String)> {
    let (status, ws) = app
        .post("/api/workspaces", token, json!({"name": "Secret plans"}))
        .await?;
    assert_eq!(status, 201, "{ws}");
    let ws = ws["id"].as_str().unwrap_or_default().to_owned();
    let (status, board) = app
        .post(
            &format!("/api/workspaces/{ws}/boards"),
            token,
            json!({"name": "Q3"}),
        )
        .await?;
    assert_eq!(status, 201, "{board}");
    let board = board["id"].as_str().unwrap_or_default().to_owned();
    let (status, task) = app
        .post(
            &format!("/api/boards/{board}/tasks"),
            token,
            json!({"title": "Launch"}),
        )
        .await?;
    assert_eq!(status, 201, "{task}");
    Ok((
        ws,
        board,
        task["id"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[tokio::test]
async fn crud_works_within_a_tenant() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let (ws, board, task) = seed_work(&app, &alice).await?;

    let (status, body) = app.get(&format!("/api/tasks/{task}"), &alice).await?;
    assert_eq!(
        (status, body["title"].clone(), body["status"].clone()),
        (200, json!("Launch"), json!("todo"))
    );
    let (status, body) = app
        .patch(
            &format!("/api/tasks/{task}"),
            &alice,
            json!({"status": "done"}),
        )
        .await?;
    assert_eq!((status, body["status"].clone()), (200, json!("done")));
    let (status, body) = app
        .get(&format!("/api/boards/{board}/tasks"), &alice)
        .await?;
    assert_eq!((status, body.as_array().map(Vec::len)), (200, Some(1)));
    let (status, body) = app
        .patch(
            &format!("/api/workspaces/{ws}"),
            &alice,
            json!({"archived": true}),
        )
        .await?;
    assert_eq!(status, 200);
    assert!(body["archived_at"].is_string());
    let (status, _) = app.delete(&format!("/api/boards/{board}"), &alice).await?;
    assert_eq!(status, 204);
    let (status, body) = app.get(&format!("/api/tasks/{task}"), &alice).await?;
    assert_eq!(
        (status, body["error"].clone()),
        (404, json!("Task not found")),
        "deleted with its board"
    );
    Ok(())
}

#[tokio::test]
async fn another_tenant_never_reads_changes_or_learns_of_rows() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    let (ws, board, task) = seed_work(&app, &alice).await?;

    let attempts = [
        (
            Method::GET,
            format!("/api/workspaces/{ws}"),
            None,
            "Workspace not found",
        ),
        (
            Method::PATCH,
            format!("/api/workspaces/{ws}"),
            Some(json!({"name": "pwned"})),
            "Workspace not found",
        ),
        (
            Method::DELETE,
            format!("/api/workspaces/{ws}"),
            None,
            "Workspace not found",
        ),
        (
            Method::GET,
            format!("/api/workspaces/{ws}/boards"),
            None,
            "Workspace not found",
        ),
        (
            Method::POST,
            format!("/api/workspaces/{ws}/boards"),
            Some(json!({"name": "planted"})),
            "Workspace not found",
        ),
        (
            Method::GET,
            format!("/api/boards/{board}"),
            None,
            "Board not found",
        ),
        (
            Method::PATCH,
            format!("/api/boards/{board}"),
            Some(json!({"name": "pwned"})),
            "Board not found",
        ),
        (
            Method::DELETE,
            format!("/api/boards/{board}"),
            None,
            "Board not found",
        ),
        (
            Method::GET,
            format!("/api/boards/{board}/tasks"),
            None,
            "Board not found",
        ),
        (
            Method::POST,
            format!("/api/boards/{board}/tasks"),
            Some(json!({"title": "planted"})),
            "Board not found",
        ),
        (
            Method::GET,
            format!("/api/tasks/{task}"),
            None,
            "Task not found",
        ),
        (
            Method::PATCH,
            format!("/api/tasks/{task}"),
            Some(json!({"title": "pwned"})),
            "Task not found",
        ),
        (
            Method::DELETE,
            format!("/api/tasks/{task}"),
            None,
            "Task not found",
        ),
    ];
    for (method, path, body, message) in attempts {
        let (status, got) = app
            .call(method.clone(), &path, Some(&gus), &[], body)
            .await?;
        assert_eq!(
            (status, got),
            (404, json!({"error": message, "code": "not_found"})),
            "{method} {path}"
        );
    }
    let (status, list) = app.get("/api/workspaces", &gus).await?;
    assert_eq!(status, 200);
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().all(|w| w["id"] != json!(ws))),
        "{list}"
    );

    // Alice's rows are exactly as she left them.
    let (_, task_now) = app.get(&format!("/api/tasks/{task}"), &alice).await?;
    assert_eq!(task_now["title"], "Launch");
    let (_, boards) = app
        .get(&format!("/api/workspaces/{ws}/boards"), &alice)
        .await?;
    assert_eq!(boards.as_array().map(Vec::len), Some(1));
    // And an assignee from another tenant cannot be set.
    let gus_id = tenancy_tests::server::claims(&gus)["sub"].clone();
    let (status, body) = app
        .patch(
            &format!("/api/tasks/{task}"),
            &alice,
            json!({"assignee_id": gus_id}),
        )
        .await?;
    assert_eq!(
        (status, body["error"].clone()),
        (422, json!("assignee_id is not a member of this tenant"))
    );
    // A member of the tenant can be assigned, and the task unassigned again.
    let alice_id = tenancy_tests::server::claims(&alice)["sub"].clone();
    for (assignee, title) in [(alice_id, "Launch"), (Value::Null, "Launch")] {
        let (status, body) = app
            .patch(
                &format!("/api/tasks/{task}"),
                &alice,
                json!({ "assignee_id": assignee }),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["assignee_id"], &body["title"]),
            (&assignee, &json!(title))
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_application_role_sees_one_tenant_even_with_a_handler_bug() -> TestResult {
    // What a buggy handler would run: a raw query with no tenant filter, on the
    // service's own database role, inside a request's context.
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    seed_work(&app, &alice).await?;
    seed_work(&app, &gus).await?;

    let keys = tenancy_server::domain::sessions::Keys::new(&app.config);
    let alice_id: Uuid =
        serde_json::from_value(tenancy_tests::server::claims(&alice)["sub"].clone())?;
    let mut conn = app.app_role().await?;
    let mut tx = sqlx::Connection::begin(&mut conn).await?;
    sqlx::query("SELECT * FROM app.begin_request($1, $2)")
        .bind(
            keys.context_token(app.acme, alice_id)
                .map_err(|e| format!("{e:?}"))?,
        )
        .bind(alice_id)
        .execute(&mut *tx)
        .await?;
    let tenants: Vec<Uuid> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM app.tasks")
        .fetch_all(&mut *tx)
        .await?;
    assert_eq!(tenants, [app.acme]);
    let everyone: i64 = sqlx::query_scalar("SELECT count(*) FROM app.users")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(
        everyone, 5,
        "alice, bob, carol, dave and erin: the users of acme only"
    );
    let deleted = sqlx::query("DELETE FROM app.workspaces")
        .execute(&mut *tx)
        .await?;
    assert_eq!(
        deleted.rows_affected(),
        2,
        "acme's two workspaces, not globex's"
    );
    tx.rollback().await?;

    // Without the request's context the same role gets nothing at all.
    let (code, message) = tenancy_tests::db_error(
        sqlx::query("SELECT * FROM app.tasks")
            .fetch_all(&mut conn)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "tenant context required")
    );
    Ok(())
}

#[tokio::test]
async fn tenant_configuration_is_loaded_per_request() -> TestResult {
    let app = TestApp::spawn().await?;
    let mut su = app.superuser().await?;
    sqlx::query("UPDATE tenancy.tenants SET configuration = $2 WHERE id = $1")
        .bind(app.acme)
        .bind(json!({"system_prompt": "You help Acme.", "vector_index": "acme-prod"}))
        .execute(&mut su)
        .await?;
    let (status, body) = app.get("/api/tenant", &app.login(ALICE).await?).await?;
    assert_eq!(status, 200);
    assert_eq!(body["configuration"]["system_prompt"], "You help Acme.");
    let (_, body) = app.get("/api/tenant", &app.login(BOB).await?).await?;
    assert_eq!(
        (body["role"].clone(), body["configuration"].clone()),
        (json!("member"), Value::Null)
    );
    Ok(())
}

#[tokio::test]
async fn single_tenant_deployments_refuse_a_second_tenant_per_user() -> TestResult {
    let app = TestApp::spawn_with(Options {
        single_tenant_users: true,
        ..Options::default()
    })
    .await?;
    let outcome = tenancy_server::jobs::ops::add_member(
        &app.config,
        app.globex,
        BOB,
        "another password".to_owned(),
        "member",
    )
    .await;
    let message = format!("{outcome:?}");
    assert!(
        outcome.is_err() && message.contains("This account cannot be added to this tenant"),
        "{message}"
    );
    let (status, body) = app.get("/api/workspaces", &app.login(BOB).await?).await?;
    assert_eq!(status, 200, "bob still works in acme: {body}");
    Ok(())
}

#[tokio::test]
async fn migrations_roll_back_and_forward() -> TestResult {
    let app = TestApp::spawn().await?;
    tenancy_server::jobs::ops::migrate_down(&app.config, 21)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut su = app.superuser().await?;
    let schema: Option<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = 'app'")
            .fetch_optional(&mut su)
            .await?;
    assert_eq!(schema, None, "everything the migrations made is gone");
    tenancy_server::jobs::ops::migrate(&app.config)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenancy.protected_tables WHERE schema_name = 'app' AND rls_enabled AND tenant_index",
    )
    .fetch_one(&mut su)
    .await?;
    assert_eq!(tables, 22, "every tenant-owned table protected again");
    Ok(())
}
