//! Mail through the outbox and a real SMTP peer: delivery once the server
//! is up, and each tenant's own templates, locale and branding.

use std::time::Duration;

use serde_json::{json, Value};
use tenancy_tests::server::{smtp_server, Options, TestApp, ALICE, BOB, GUS, ROOT};
use tenancy_tests::TestResult;

fn initech() -> Value {
    json!({"slug": "initech", "name": "Initech", "plan": "pro",
           "owner_email": "peter@initech.test", "demo_data": true})
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
            json!({"locale": "fr", "subject": "Invitation à {tenant}", "body": "Bonjour,\n\nrejoignez <b>{tenant}</b>."}),
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
    // Each tenant's invitation mail (the outbox names the invitation).
    let mail = |tenant: uuid::Uuid| {
        sqlx::query_as::<_, (String, String, Option<String>)>(
            "SELECT subject, body, html FROM app.email_outbox
             WHERE tenant_id = $1 AND template = 'invitation'",
        )
        .bind(tenant)
    };
    let (subject, text, html) = mail(app.acme).fetch_one(&mut su).await?;
    assert_eq!(subject, "Invitation à Acme <Corp>");
    assert!(
        text.starts_with("Bonjour,\n\nrejoignez <b>Acme <Corp></b>."),
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
    let (subject, text, _) = mail(app.globex).fetch_one(&mut su).await?;
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
async fn mail_sent_long_ago_leaves_the_outbox_and_mail_still_waiting_never_does() -> TestResult {
    let app = TestApp::spawn_with(Options {
        relay: false,
        ..Options::default()
    })
    .await?;
    let mut su = app.superuser().await?;
    let mut tx = sqlx::Connection::begin(&mut su).await?;
    sqlx::query("SELECT tenancy.set_token($1)")
        .bind(app.context_token(app.acme, uuid::Uuid::nil()))
        .execute(&mut *tx)
        .await?;
    for (recipient, sent, created) in [
        ("old.sent@elsewhere.test", Some(31), 31),
        ("new.sent@elsewhere.test", Some(1), 1),
        ("old.waiting@elsewhere.test", None, 40),
    ] {
        sqlx::query(
            "INSERT INTO app.email_outbox (tenant_id, recipient, template, subject, body, created_at, sent_at)
             VALUES ($1, $2, 'welcome', 's', 'b', now() - make_interval(days => $3),
                     now() - make_interval(days => $4))",
        )
        .bind(app.acme)
        .bind(recipient)
        .bind(created)
        .bind(sent)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let state = tenancy_server::AppState::connect(app.config.clone())
        .await
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(
        tenancy_server::jobs::retention::purge_sent_mail(&state).await?,
        1
    );
    let mut left: Vec<String> = sqlx::query_scalar("SELECT recipient FROM app.email_outbox")
        .fetch_all(&mut su)
        .await?;
    left.sort();
    assert_eq!(
        left,
        ["new.sent@elsewhere.test", "old.waiting@elsewhere.test"]
    );
    Ok(())
}
