//! Seed 004's authorization scenarios end to end: Cedar decides, denials
//! are 403 and audited with the deciding policies.

use reqwest::Method;
use serde_json::{json, Value};
use tenancy_tests::server::{claims, TestApp, ALICE, BOB, DAVE, ERIN, GUS};
use tenancy_tests::TestResult;

fn id(body: &Value) -> String {
    body["id"].as_str().unwrap_or_default().to_owned()
}

fn sub(token: &str) -> Value {
    claims(token)["sub"].clone()
}

/// Alice (owner) makes a workspace with a board; bob joins as member, dave as viewer.
async fn workspace_with_roles(
    app: &TestApp,
) -> TestResult<(String, String, String, String, String)> {
    let alice = app.login(ALICE).await?;
    let bob = app.login(BOB).await?;
    let dave = app.login(DAVE).await?;
    let (status, ws) = app
        .post("/api/workspaces", &alice, json!({"name": "Design"}))
        .await?;
    assert_eq!(status, 201, "{ws}");
    let ws = id(&ws);
    for (token, role) in [(&bob, "member"), (&dave, "viewer")] {
        let (status, body) = app
            .post(
                &format!("/api/workspaces/{ws}/members"),
                &alice,
                json!({"user_id": sub(token), "role": role}),
            )
            .await?;
        assert_eq!(status, 201, "{body}");
    }
    let (status, board) = app
        .post(
            &format!("/api/workspaces/{ws}/boards"),
            &alice,
            json!({"name": "Roadmap"}),
        )
        .await?;
    assert_eq!(status, 201, "{board}");
    Ok((alice, bob, dave, ws, id(&board)))
}

async fn denials(app: &TestApp) -> TestResult<Vec<Value>> {
    let mut su = app.superuser().await?;
    Ok(sqlx::query_scalar(
        "SELECT details FROM app.audit_events WHERE action = 'authz.denied' ORDER BY id",
    )
    .fetch_all(&mut su)
    .await?)
}

#[tokio::test]
async fn a_viewer_cannot_create_tasks_and_the_denial_is_audited() -> TestResult {
    let app = TestApp::spawn().await?;
    let (_, _, dave, _, board) = workspace_with_roles(&app).await?;
    let (status, body) = app
        .post(
            &format!("/api/boards/{board}/tasks"),
            &dave,
            json!({"title": "sneaky"}),
        )
        .await?;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"error": "You are not allowed to do this", "code": "forbidden"})
        )
    );
    // The viewer can still read.
    let (status, _) = app
        .get(&format!("/api/boards/{board}/tasks"), &dave)
        .await?;
    assert_eq!(status, 200);

    let audited = denials(&app).await?;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["action"], "task:create");
    assert_eq!(audited[0]["principal"], sub(&dave));
    assert!(
        audited[0]["resource"]
            .as_str()
            .unwrap_or_default()
            .contains(&board),
        "{}",
        audited[0]
    );
    assert_eq!(
        audited[0]["policies"],
        json!([]),
        "no permit applied, no forbid needed"
    );
    Ok(())
}

#[tokio::test]
async fn a_member_creates_a_task_in_their_workspace() -> TestResult {
    let app = TestApp::spawn().await?;
    let (_, bob, _, ws, board) = workspace_with_roles(&app).await?;
    let (status, task) = app
        .post(
            &format!("/api/boards/{board}/tasks"),
            &bob,
            json!({"title": "Draft the spec"}),
        )
        .await?;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["board_id"], json!(board));
    let (_, board_row) = app.get(&format!("/api/boards/{board}"), &bob).await?;
    assert_eq!(
        board_row["workspace_id"],
        json!(ws),
        "the task is in the member's workspace"
    );
    // Members edit, but do not delete or create boards.
    let task_id = id(&task);
    let (status, _) = app
        .patch(
            &format!("/api/tasks/{task_id}"),
            &bob,
            json!({"status": "doing"}),
        )
        .await?;
    assert_eq!(status, 200);
    let (status, _) = app.delete(&format!("/api/tasks/{task_id}"), &bob).await?;
    assert_eq!(status, 403);
    let (status, _) = app
        .post(
            &format!("/api/workspaces/{ws}/boards"),
            &bob,
            json!({"name": "Mine"}),
        )
        .await?;
    assert_eq!(status, 403);
    let (status, _) = app
        .patch(
            &format!("/api/boards/{board}"),
            &bob,
            json!({"name": "Renamed"}),
        )
        .await?;
    assert_eq!(status, 403, "members do not rename boards");
    Ok(())
}

#[tokio::test]
async fn tenant_settings_are_for_owners_and_admins() -> TestResult {
    let app = TestApp::spawn().await?;
    let (alice, bob, erin) = (
        app.login(ALICE).await?,
        app.login(BOB).await?,
        app.login(ERIN).await?,
    );
    let settings = json!({"system_prompt": "Be brief.", "vector_index": "acme"});

    let (status, _) = app
        .put("/api/tenant/settings", &bob, settings.clone())
        .await?;
    assert_eq!(status, 403, "a member cannot update tenant settings");
    let (status, _) = app.get("/api/tenant/settings", &bob).await?;
    assert_eq!(status, 403);

    let (status, body) = app
        .put("/api/tenant/settings", &alice, settings.clone())
        .await?;
    assert_eq!((status, body), (200, settings.clone()), "an owner can");
    let (status, body) = app.get("/api/tenant/settings", &erin).await?;
    assert_eq!((status, body), (200, settings), "an admin reads them");

    // Billing: owners only; and it survives a settings update.
    let (status, _) = app
        .put(
            "/api/tenant/billing",
            &erin,
            json!({"billing_email": "ap@acme.test"}),
        )
        .await?;
    assert_eq!(status, 403);
    let (status, body) = app
        .put(
            "/api/tenant/billing",
            &alice,
            json!({"billing_email": "ap@acme.test"}),
        )
        .await?;
    assert_eq!(
        (status, body["billing_email"].clone()),
        (200, json!("ap@acme.test"))
    );
    let (status, body) = app
        .put(
            "/api/tenant/settings",
            &erin,
            json!({"system_prompt": "Be kind."}),
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"system_prompt": "Be kind.", "billing_email": "ap@acme.test"})
    );

    // Globex never sees acme's settings.
    let (_, body) = app
        .get("/api/tenant/settings", &app.login(GUS).await?)
        .await?;
    assert_eq!(body, json!({}));
    let (status, body) = app.put("/api/tenant/settings", &alice, json!([1])).await?;
    assert_eq!(
        (status, body["error"].clone()),
        (422, json!("settings must be a JSON object"))
    );
    Ok(())
}

#[tokio::test]
async fn a_tenant_member_outside_a_workspace_gets_403_on_its_board() -> TestResult {
    let app = TestApp::spawn().await?;
    let (alice, _, _, ws, board) = workspace_with_roles(&app).await?;
    let erin_free = app.login(ERIN).await?;
    // Erin is a tenant admin: she may. A plain member not in the workspace may not.
    let (status, _) = app.get(&format!("/api/boards/{board}"), &erin_free).await?;
    assert_eq!(status, 200);
    let (status, body) = app
        .delete(
            &format!(
                "/api/workspaces/{ws}/members/{}",
                sub(&app.login(BOB).await?).as_str().unwrap_or_default()
            ),
            &alice,
        )
        .await?;
    assert_eq!(status, 204, "{body}");
    let bob = app.login(BOB).await?;
    for path in [
        format!("/api/boards/{board}"),
        format!("/api/boards/{board}/tasks"),
        format!("/api/workspaces/{ws}"),
    ] {
        let (status, body) = app.get(&path, &bob).await?;
        assert_eq!(
            (status, body["code"].clone()),
            (403, json!("forbidden")),
            "{path}"
        );
    }
    let (status, list) = app.get("/api/workspaces", &bob).await?;
    assert_eq!(status, 200);
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().all(|w| w["id"] != json!(ws))),
        "hidden from his list: {list}"
    );
    Ok(())
}

#[tokio::test]
async fn tenant_membership_changes_follow_the_policies() -> TestResult {
    let app = TestApp::spawn().await?;
    let (alice, bob, erin) = (
        app.login(ALICE).await?,
        app.login(BOB).await?,
        app.login(ERIN).await?,
    );

    let (status, _) = app
        .post(
            "/api/tenant/members",
            &bob,
            json!({"email": "new@acme.test", "role": "member"}),
        )
        .await?;
    assert_eq!(status, 403, "members do not invite");
    let (status, body) = app
        .post(
            "/api/tenant/members",
            &erin,
            json!({"email": "new@acme.test", "role": "member"}),
        )
        .await?;
    assert_eq!(status, 202, "admins invite: {body}");
    let (status, _) = app
        .post(
            "/api/tenant/members",
            &erin,
            json!({"email": "boss@acme.test", "role": "owner"}),
        )
        .await?;
    assert_eq!(status, 403, "only owners make owners");
    let (status, body) = app
        .accept(
            &app.invitation_token("new@acme.test").await?,
            "plum-harbour-window-17",
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post(
            "/api/tenant/members",
            &erin,
            json!({"email": "new@acme.test", "role": "member"}),
        )
        .await?;
    assert_eq!(
        (status, body["error"].clone()),
        (409, json!("Already a member of this tenant"))
    );
    let (status, body) = app
        .post(
            "/api/tenant/members",
            &erin,
            json!({"email": "not an email", "role": "member"}),
        )
        .await?;
    assert_eq!(
        (status, body["error"].clone()),
        (422, json!("email must be an email address"))
    );

    let alice_id = sub(&alice).as_str().unwrap_or_default().to_owned();
    let (status, body) = app
        .patch(
            &format!("/api/tenant/members/{alice_id}"),
            &alice,
            json!({"role": "admin"}),
        )
        .await?;
    assert_eq!(
        (status, body["error"].clone()),
        (409, json!("A tenant needs at least one owner"))
    );

    let (status, members) = app.get("/api/tenant/members", &bob).await?;
    assert_eq!(status, 200);
    let emails: Vec<&str> = members
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["email"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        emails.contains(&"new@acme.test") && !emails.iter().any(|e| e.ends_with("globex.test")),
        "{emails:?}"
    );
    Ok(())
}

#[tokio::test]
async fn workspace_members_are_managed_by_workspace_admins() -> TestResult {
    let app = TestApp::spawn().await?;
    let (_, bob, dave, ws, _) = workspace_with_roles(&app).await?;
    let gus = app.login(GUS).await?;
    let (status, _) = app
        .post(
            &format!("/api/workspaces/{ws}/members"),
            &bob,
            json!({"user_id": sub(&dave), "role": "admin"}),
        )
        .await?;
    assert_eq!(status, 403, "a workspace member cannot promote");
    // A user of another tenant cannot be added (and the workspace is a 404 for globex).
    let alice = app.login(ALICE).await?;
    let (status, body) = app
        .post(
            &format!("/api/workspaces/{ws}/members"),
            &alice,
            json!({"user_id": sub(&gus), "role": "viewer"}),
        )
        .await?;
    assert_eq!(
        (status, body["error"].clone()),
        (422, json!("user_id is not a member of this tenant"))
    );
    let (status, _) = app
        .get(&format!("/api/workspaces/{ws}/members"), &gus)
        .await?;
    assert_eq!(status, 404);
    let (status, members) = app
        .get(&format!("/api/workspaces/{ws}/members"), &dave)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        members.as_array().map(Vec::len),
        Some(3),
        "alice, bob, dave: {members}"
    );
    Ok(())
}

#[tokio::test]
async fn the_service_refuses_to_start_with_a_broken_policy_file() -> TestResult {
    let app = TestApp::spawn().await?;
    let dir = std::env::temp_dir().join(format!(
        "tenancy-policies-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    std::fs::copy(
        shipped.join("tenancy.cedarschema"),
        dir.join("tenancy.cedarschema"),
    )?;
    let mut policies = std::fs::read_to_string(shipped.join("tenancy.cedar"))?;
    let line = policies.lines().count() + 3; // a blank line, the @id, then the faulty rule
    policies.push_str("\n@id(\"typo\")\npermit (principal, action, resource is Tenancy::Task) when { resource.tennant == principal.tenant };\n");
    std::fs::write(dir.join("tenancy.cedar"), policies)?;

    let mut config = app.config.clone();
    config.policy_dir = Some(dir.clone());
    let outcome = tenancy_server::AppState::connect(config).await;
    let message = match outcome {
        Ok(_) => String::from("started"),
        Err(e) => e.to_string(),
    };
    let expected = format!("{}:{line}:", dir.join("tenancy.cedar").display());
    assert!(
        message.starts_with("invalid authorization policies: ") && message.contains(&expected),
        "{message}"
    );
    // A missing override folder is one line naming the file.
    let mut config = app.config.clone();
    config.policy_dir = Some(dir.join("missing"));
    let message = match tenancy_server::AppState::connect(config).await {
        Ok(_) => String::from("started"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains(
            &dir.join("missing")
                .join("tenancy.cedarschema")
                .display()
                .to_string()
        ) && !message.contains('\n'),
        "{message}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn a_workspace_admin_who_is_a_tenant_member_cannot_demote_the_owner() -> TestResult {
    // Alice (owner) makes bob (a tenant member) admin of her workspace.
    let app = TestApp::spawn().await?;
    let (alice, bob, _, ws, _) = workspace_with_roles(&app).await?;
    let path = |token: &str| {
        format!(
            "/api/workspaces/{ws}/members/{}",
            sub(token).as_str().unwrap_or_default()
        )
    };
    let (status, body) = app
        .patch(&path(&bob), &alice, json!({"role": "admin"}))
        .await?;
    assert_eq!(status, 200, "{body}");
    for (method, body) in [
        (Method::PATCH, Some(json!({"role": "viewer"}))),
        (Method::DELETE, None),
    ] {
        let (status, answer) = app
            .call(method.clone(), &path(&alice), Some(&bob), &[], body)
            .await?;
        assert_eq!(status, 403, "{method}: {answer}");
    }
    let (_, members) = app
        .get(&format!("/api/workspaces/{ws}/members"), &alice)
        .await?;
    let alices: Vec<&Value> = members
        .as_array()
        .map(|m| m.iter().filter(|m| m["email"] == ALICE).collect())
        .unwrap_or_default();
    assert_eq!(
        alices.first().map(|m| &m["role"]),
        Some(&json!("admin")),
        "{members}"
    );
    // Another member of the workspace he may manage.
    let dave = app.login(DAVE).await?;
    let (status, _) = app
        .patch(&path(&dave), &bob, json!({"role": "member"}))
        .await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn two_owners_removing_each_other_leave_one_owner_and_no_500() -> TestResult {
    for _ in 0..4 {
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;
        let erin = app.login(ERIN).await?;
        let (status, body) = app
            .patch(
                &format!(
                    "/api/tenant/members/{}",
                    sub(&erin).as_str().unwrap_or_default()
                ),
                &alice,
                json!({"role": "owner"}),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        let path = |other: &str| {
            format!(
                "/api/tenant/members/{}",
                sub(other).as_str().unwrap_or_default()
            )
        };
        let (to_erin, to_alice) = (path(&erin), path(&alice));
        let (a, e) = tokio::join!(app.delete(&to_erin, &alice), app.delete(&to_alice, &erin));
        let mut statuses = vec![a?.0, e?.0];
        statuses.sort();
        assert_eq!(statuses[0], 204, "one removal happens: {statuses:?}");
        assert!(
            matches!(statuses[1], 403 | 409),
            "the other is refused, never a 5xx: {statuses:?}"
        );
        let owners: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM app.tenant_memberships WHERE tenant_id = $1 AND role = 'owner'",
        )
        .bind(app.acme)
        .fetch_one(&mut app.superuser().await?)
        .await?;
        assert_eq!(owners, 1);
    }
    Ok(())
}
