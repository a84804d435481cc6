//! Exports of all of a tenant's data (seed 002, REQ-MT-B008): built as a
//! job through the requester's own context, every protected table found in
//! the catalog, mailed as a link that works a bounded number of times.
//! Attacks are grouped by attacker.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::{json, Value};
use tenancy_tests::server::{Options, TestApp, ALICE, BOB, ERIN, GUS};
use tenancy_tests::TestResult;
use uuid::Uuid;

/// The files of a zip archive, by name.
fn unzip(bytes: &[u8]) -> TestResult<BTreeMap<String, String>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))?;
    let mut files = BTreeMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        files.insert(file.name().to_owned(), text);
    }
    Ok(files)
}

/// Asks for an export as `token` and waits until it is done; returns it.
async fn export(app: &TestApp, token: &str, format: &str) -> TestResult<Value> {
    let (status, queued) = app
        .post("/api/tenant/exports", token, json!({"format": format}))
        .await?;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["status"], "queued");
    let path = format!(
        "/api/tenant/exports/{}",
        queued["id"].as_str().unwrap_or_default()
    );
    for _ in 0..300 {
        let (_, export) = app.get(&path, token).await?;
        match export["status"].as_str() {
            Some("done") => return Ok(export),
            Some("failed") => return Err(format!("export failed: {export}").into()),
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    Err("the export did not finish".into())
}

/// Downloads with the link's secret; status and body.
async fn download(app: &TestApp, secret: &str) -> TestResult<(u16, Vec<u8>)> {
    let response = app
        .client
        .get(app.url(&format!("/exports/download?token={secret}")))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

/// A table added after the service's own, protected by the DBA, with a row
/// for each tenant: an export must find it without being told.
async fn add_later_table(app: &TestApp) -> TestResult {
    let mut su = app.superuser().await?;
    for statement in [
        "CREATE TABLE public.notes (tenant_id uuid NOT NULL, id serial, body text,
             PRIMARY KEY (tenant_id, id))",
        "SELECT tenancy.protect('public.notes')",
        "GRANT SELECT, INSERT ON public.notes TO tenancy_t_srv_app",
        "GRANT USAGE ON SEQUENCE public.notes_id_seq TO tenancy_t_srv_app",
    ] {
        sqlx::query(statement).execute(&mut su).await?;
    }
    for (tenant, body) in [(app.acme, "acme's note"), (app.globex, "globex's note")] {
        let mut tx = sqlx::Connection::begin(&mut su).await?;
        sqlx::query("SELECT tenancy.set_token($1)")
            .bind(app.context_token(tenant, Uuid::nil()))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO public.notes (body) VALUES ($1)")
            .bind(body)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

mod tenant_admin {
    use super::*;

    #[tokio::test]
    async fn exports_every_table_of_its_tenant_and_no_row_of_another() -> TestResult {
        let app = TestApp::spawn().await?;
        let (erin, gus) = (app.login(ERIN).await?, app.login(GUS).await?);
        tenancy_tests::load::board_with_tasks(&app, &erin, 25, "acme task").await?;
        tenancy_tests::load::board_with_tasks(&app, &gus, 7, "globex task").await?;
        add_later_table(&app).await?;
        // Addresses sealed in the table are exported opened.
        for (token, email) in [(&erin, "invitee@acme.test"), (&gus, "invitee@globex.test")] {
            let (status, body) = app.invite(token, email, "member").await?;
            assert_eq!(status, 202, "{body}");
        }

        let done = export(&app, &erin, "json").await?;
        assert!(done["rows_done"].as_i64().unwrap_or(0) > 25, "{done}");
        assert_eq!(done["tables_done"], done["tables_total"], "{done}");
        let secret = app.mailed_token(ERIN, "data_export").await?;
        let (status, bytes) = download(&app, &secret).await?;
        assert_eq!(status, 200);
        let files = unzip(&bytes)?;

        // Every protected table is in it, the later one too.
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT format('%s.%s', schema_name, relation_name) FROM tenancy.protected_tables
             WHERE parent_table IS NULL AND relation_name <> 'export_chunks'",
        )
        .fetch_all(&mut app.superuser().await?)
        .await?;
        let manifest: Value =
            serde_json::from_str(files.get("manifest.json").ok_or("no manifest")?)?;
        let listed: Vec<&str> = manifest["tables"]
            .as_array()
            .ok_or("no tables")?
            .iter()
            .filter_map(|t| t["table"].as_str())
            .collect();
        for table in &tables {
            assert!(
                listed.contains(&table.as_str()),
                "{table} not in {listed:?}"
            );
        }
        assert!(
            files.contains_key("public.notes.ndjson"),
            "{:?}",
            files.keys()
        );

        // Every row of every file is acme's.
        let acme = app.acme.to_string();
        let mut rows = 0;
        for (name, text) in &files {
            if !name.ends_with(".ndjson") {
                continue;
            }
            for line in text.lines() {
                let row: Value = serde_json::from_str(line)?;
                assert_eq!(
                    row["tenant_id"].as_str(),
                    Some(acme.as_str()),
                    "{name}: {line}"
                );
                rows += 1;
            }
        }
        assert_eq!(Some(rows), done["rows_done"].as_i64(), "every row counted");
        let tasks = files.get("app.tasks.ndjson").ok_or("no tasks")?;
        assert_eq!(tasks.lines().count(), 25);
        assert!(tasks.contains("acme task") && !tasks.contains("globex task"));
        let notes = files.get("public.notes.ndjson").ok_or("no notes")?;
        assert!(notes.contains("acme's note") && !notes.contains("globex's note"));
        let invitations = files
            .get("app.invitations.ndjson")
            .ok_or("no invitations")?;
        let invitation: Value = serde_json::from_str(invitations.trim())?;
        assert_eq!(invitation["email"], "invitee@acme.test", "{invitation}");
        assert!(
            invitation.get("email_sealed").is_none() && invitation.get("email_index").is_none()
        );
        // No secret column, even sealed or hashed.
        assert!(
            !files.contains_key("app.export_chunks.ndjson"),
            "no earlier archive"
        );
        for (name, text) in files.iter().filter(|(name, _)| name.ends_with(".ndjson")) {
            for column in [
                "\"token_hash\"",
                "\"password_hash\"",
                "\"wrapped\"",
                "\"sealed\"",
            ] {
                assert!(!text.contains(column), "{name} has {column}");
            }
        }
        let actions = app.audit_actions(app.acme).await?;
        for action in ["export.requested", "export.completed", "export.downloaded"] {
            assert!(
                actions.contains(&action.to_owned()),
                "{action}: {actions:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn keeps_its_export_running_after_losing_its_role() -> TestResult {
        // No background jobs: the export is built here, after the change.
        let app = TestApp::spawn_with(Options {
            relay: false,
            ..Options::default()
        })
        .await?;
        let (alice, erin) = (app.login(ALICE).await?, app.login(ERIN).await?);
        let (status, queued) = app
            .post("/api/tenant/exports", &erin, json!({"format": "json"}))
            .await?;
        assert_eq!(status, 202, "{queued}");
        let erin_id: Uuid = app
            .scalar(&format!("SELECT id FROM app.users WHERE email = '{ERIN}'"))
            .await?;
        let (status, body) = app
            .patch(
                &format!("/api/tenant/members/{erin_id}"),
                &alice,
                json!({"role": "member"}),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        let state = tenancy_server::AppState::connect(app.config.clone())
            .await
            .map_err(|e| e.to_string())?;
        tenancy_server::jobs::export::run_once(&state).await?;
        let (_, export) = app
            .get(
                &format!(
                    "/api/tenant/exports/{}",
                    queued["id"].as_str().unwrap_or_default()
                ),
                &alice,
            )
            .await?;
        assert_eq!(export["status"], "failed", "{export}");
        let chunks: i64 = app.scalar("SELECT count(*) FROM app.export_chunks").await?;
        assert_eq!(chunks, 0, "no archive was built");
        Ok(())
    }

    #[tokio::test]
    async fn exports_csv_with_a_header_per_table() -> TestResult {
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;
        tenancy_tests::load::board_with_tasks(
            &app,
            &alice,
            3,
            "line one\nline \"two\", with comma",
        )
        .await?;
        tenancy_tests::load::board_with_tasks(&app, &app.login(GUS).await?, 2, "globex").await?;
        let (status, _) = app.invite(&alice, "csv.invitee@acme.test", "admin").await?;
        assert_eq!(status, 202);
        export(&app, &alice, "csv").await?;
        let (status, bytes) =
            download(&app, &app.mailed_token(ALICE, "data_export").await?).await?;
        assert_eq!(status, 200);
        let files = unzip(&bytes)?;
        let tasks = files.get("app.tasks.csv").ok_or("no tasks")?;
        assert!(tasks.starts_with("tenant_id,"), "{tasks}");
        assert!(
            tasks.contains("\"line one\nline \"\"two\"\", with comma\""),
            "{tasks}"
        );
        assert!(!tasks.contains(&app.globex.to_string()));
        // The sealed address, opened, under its plain name.
        let invitations = files.get("app.invitations.csv").ok_or("no invitations")?;
        let mut lines = invitations.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        assert!(
            header.contains(&"email") && !header.iter().any(|c| c.starts_with("email_")),
            "{header:?}"
        );
        let row: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let at = |name: &str| {
            header
                .iter()
                .position(|c| *c == name)
                .and_then(|i| row.get(i))
        };
        assert_eq!(at("email"), Some(&"csv.invitee@acme.test"), "{invitations}");
        assert_eq!(at("role"), Some(&"admin"));
        assert_eq!(at("tenant_id"), Some(&app.acme.to_string().as_str()));
        assert_eq!(lines.next(), None);
        Ok(())
    }

    #[tokio::test]
    async fn asks_again_while_an_export_runs_and_uses_the_link_too_often() -> TestResult {
        // No background job: the export is built here, step by step.
        let app = TestApp::spawn_with(Options {
            relay: false,
            ..Options::default()
        })
        .await?;
        let alice = app.login(ALICE).await?;
        let (status, first) = app.post("/api/tenant/exports", &alice, json!({})).await?;
        assert_eq!(status, 202, "{first}");
        let (status, body) = app
            .post(
                "/api/tenant/exports",
                &app.login(ERIN).await?,
                json!({"format": "csv"}),
            )
            .await?;
        assert_eq!(status, 409, "{body}");
        assert_eq!(
            body["error"],
            "An export of this tenant is already queued or running"
        );
        // Another tenant is not held up by it.
        let (status, _) = app
            .post("/api/tenant/exports", &app.login(GUS).await?, json!({}))
            .await?;
        assert_eq!(status, 202);
        for (body, wanted) in [(json!({"format": "xml"}), 422), (json!({"extra": 1}), 422)] {
            let (status, answer) = app.post("/api/tenant/exports", &alice, body).await?;
            assert_eq!(status, wanted, "{answer}");
        }

        // A job that claimed it and died: it is taken over once stale.
        let state = tenancy_server::AppState::connect(app.config.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut su = app.superuser().await?;
        sqlx::query(
            "UPDATE app.exports SET status = 'running', heartbeat_at = now() - interval '5 minutes'
             WHERE tenant_id = $1",
        )
        .bind(app.acme)
        .execute(&mut su)
        .await?;
        while tenancy_server::jobs::export::run_once(&state).await? {}
        let (_, done) = app
            .get(
                &format!(
                    "/api/tenant/exports/{}",
                    first["id"].as_str().unwrap_or_default()
                ),
                &alice,
            )
            .await?;
        assert_eq!(done["status"], "done", "{done}");

        let secret = app.mailed_token(ALICE, "data_export").await?;
        for n in 1..=3 {
            let (status, _) = download(&app, &secret).await?;
            assert_eq!(status, 200, "download {n}");
        }
        let (status, _) = download(&app, &secret).await?;
        assert_eq!(status, 404, "used up");
        // Expired links and made-up ones: the same 404.
        let gus_secret = app.mailed_token(GUS, "data_export").await?;
        sqlx::query(
            "UPDATE app.exports SET expires_at = now() - interval '1 second' WHERE tenant_id = $1",
        )
        .bind(app.globex)
        .execute(&mut su)
        .await?;
        for secret in [gus_secret.as_str(), &"f".repeat(64), "short", ""] {
            let (status, _) = download(&app, secret).await?;
            assert_eq!(status, 404, "{secret}");
        }
        // The expired archive is removed; the record stays.
        assert!(tenancy_server::jobs::export::purge(&state).await? > 0);
        let left: (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM app.export_chunks WHERE tenant_id = $1),
                    (SELECT count(*) FROM app.exports WHERE tenant_id = $1)",
        )
        .bind(app.globex)
        .fetch_one(&mut su)
        .await?;
        assert_eq!(left, (0, 1));
        let acme_chunks: i64 =
            sqlx::query_scalar("SELECT count(*) FROM app.export_chunks WHERE tenant_id = $1")
                .bind(app.acme)
                .fetch_one(&mut su)
                .await?;
        assert!(acme_chunks > 0, "a link still valid keeps its archive");
        Ok(())
    }
}

mod tenant_member {
    use super::*;

    #[tokio::test]
    async fn asks_for_or_reads_the_tenants_exports() -> TestResult {
        let app = TestApp::spawn().await?;
        let bob = app.login(BOB).await?;
        let (status, _) = app.post("/api/tenant/exports", &bob, json!({})).await?;
        assert_eq!(status, 403);
        let (status, _) = app.get("/api/tenant/exports", &bob).await?;
        assert_eq!(status, 403);
        let exports: i64 = app.scalar("SELECT count(*) FROM app.exports").await?;
        assert_eq!(exports, 0);
        Ok(())
    }
}
