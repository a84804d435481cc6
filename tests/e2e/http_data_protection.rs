//! A tenant's own providers and its data keys (seed 002, REQ-MT-B009,
//! B011): sealed with the tenant's key, write-only through the API, mail
//! through the tenant's own SMTP server, key rotation, platform key
//! rotation, crypto-shredding; and secrets masked in the catalog's audit
//! log. Attacks are grouped by attacker.

use reqwest::Method;
use serde_json::{json, Value};
use tenancy_server::domain::keyring::Keyring;
use tenancy_tests::mail_api::api_peer;
use tenancy_tests::server::{
    free_port, smtp_printed, smtp_server, Options, TestApp, ALICE, BOB, ERIN, GUS,
};
use tenancy_tests::TestResult;
use uuid::Uuid;

const STRIPE_SECRET: &str = "sk_test_51HxSecretStripeKey0000wxyz";
const WEBHOOK_SECRET: &str = "whsec_WebhookSigningSecret00001234";
const SMS_TOKEN: &str = "twilio-auth-token-secret-5678";
const SMTP_PASSWORD: &str = "smtp-password-never-shown-9876";
const API_KEY: &str = "provider-api-key-01234567890";

fn payment() -> Value {
    json!({"provider": "stripe", "secret_key": STRIPE_SECRET, "publishable_key": "pk_test_public",
           "webhook_secret": WEBHOOK_SECRET})
}

fn sms() -> Value {
    json!({"provider": "twilio", "account_id": "AC0123456789", "auth_token": SMS_TOKEN,
           "from": "+15551234567"})
}

fn email(port: u16, from: &str) -> Value {
    json!({"provider": "smtp", "host": "127.0.0.1", "port": port, "security": "none", "from": from})
}

async fn put(app: &TestApp, token: &str, kind: &str, body: Value) -> TestResult<(u16, Value)> {
    app.put(&format!("/api/tenant/integrations/{kind}"), token, body)
        .await
}

/// The tenant's integration rows as stored: (kind, key_version, sealed, masked).
async fn stored(app: &TestApp, tenant: Uuid) -> TestResult<Vec<(String, i32, Vec<u8>, Value)>> {
    Ok(sqlx::query_as(
        "SELECT kind, key_version, sealed, masked FROM app.tenant_integrations
         WHERE tenant_id = $1 ORDER BY kind",
    )
    .bind(tenant)
    .fetch_all(&mut app.superuser().await?)
    .await?)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Invites `email` to the caller's tenant (queues an invitation mail).
async fn invite(app: &TestApp, token: &str, email: &str) -> TestResult {
    let (status, body) = app
        .post(
            "/api/tenant/invitations",
            token,
            json!({"email": email, "role": "member"}),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    Ok(())
}

/// The last delivery error of `tenant`'s newest mail of `template`, once it
/// has one.
async fn mail_error(app: &TestApp, tenant: Uuid, template: &str) -> TestResult<Option<String>> {
    let mut su = app.superuser().await?;
    for _ in 0..100 {
        let error: Option<Option<String>> = sqlx::query_scalar(
            "SELECT last_error FROM app.email_outbox WHERE tenant_id = $1 AND template = $2
               AND attempts > 0
             ORDER BY id DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(template)
        .fetch_optional(&mut su)
        .await?;
        if let Some(error) = error {
            return Ok(error);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(format!("no delivery attempt of {template}").into())
}

/// A service whose platform mail goes to an SMTP peer of its own (returned
/// to read what it received), and a free port for a tenant's server.
async fn with_platform_mail() -> TestResult<(TestApp, tokio::process::Child, u16)> {
    let platform_port = free_port()?;
    let platform = smtp_server(platform_port).await?;
    let app = TestApp::spawn_with(Options {
        smtp_url: Some(format!("smtp://127.0.0.1:{platform_port}")),
        ..Options::default()
    })
    .await?;
    Ok((app, platform, free_port()?))
}

mod tenant_admin {
    use super::*;

    #[tokio::test]
    async fn sets_every_integration_and_reads_back_only_masked_values() -> TestResult {
        let app = TestApp::spawn().await?;
        let port = free_port()?;
        let _smtp = smtp_server(port).await?;
        let erin = app.login(ERIN).await?;
        let (status, body) = put(&app, &erin, "payment", payment()).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["settings"]["secret_key"], "****wxyz", "{body}");
        assert_eq!(body["settings"]["publishable_key"], "pk_test_public");
        let (status, body) = put(&app, &erin, "sms", sms()).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["settings"]["auth_token"], "****5678", "{body}");
        let (status, body) =
            put(&app, &erin, "email", email(port, "Acme <mail@acme.test>")).await?;
        assert_eq!(status, 200, "{body}");
        let (status, body) = put(
            &app,
            &erin,
            "analytics",
            json!({"provider": "plausible", "tracking_id": "acme.test"}),
        )
        .await?;
        assert_eq!(status, 200, "{body}");

        let (status, list) = app.get("/api/tenant/integrations", &erin).await?;
        assert_eq!(status, 200, "{list}");
        let kinds: Vec<(&str, &str)> = list["integrations"]
            .as_array()
            .ok_or("no list")?
            .iter()
            .map(|i| {
                (
                    i["kind"].as_str().unwrap_or(""),
                    i["source"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("payment", "tenant"),
                ("email", "tenant"),
                ("sms", "tenant"),
                ("analytics", "tenant")
            ]
        );
        let text = list.to_string();
        for secret in [STRIPE_SECRET, WEBHOOK_SECRET, SMS_TOKEN] {
            assert!(!text.contains(secret), "{secret} came back: {text}");
        }

        // Stored sealed: no secret in the row, none in the audit trail.
        let rows = stored(&app, app.acme).await?;
        assert_eq!(rows.len(), 4);
        for (kind, version, sealed, masked) in &rows {
            assert_eq!(*version, 1, "{kind}");
            for secret in [STRIPE_SECRET, WEBHOOK_SECRET, SMS_TOKEN, "pk_test_public"] {
                assert!(!contains(sealed, secret), "{kind} holds {secret} in clear");
                assert!(!masked.to_string().contains(secret) || secret == "pk_test_public");
            }
        }
        let audit: Vec<String> = sqlx::query_scalar(
            "SELECT details::text FROM app.audit_events
             WHERE tenant_id = $1 AND action = 'integration.updated'",
        )
        .bind(app.acme)
        .fetch_all(&mut app.superuser().await?)
        .await?;
        assert_eq!(audit.len(), 4, "{audit:?}");
        for secret in [STRIPE_SECRET, WEBHOOK_SECRET, SMS_TOKEN] {
            assert!(!audit.iter().any(|a| a.contains(secret)), "{audit:?}");
        }

        // Removed: the platform's applies again, and that is audited.
        let (status, _) = app
            .delete("/api/tenant/integrations/payment", &erin)
            .await?;
        assert_eq!(status, 204);
        let (_, list) = app.get("/api/tenant/integrations", &erin).await?;
        assert_eq!(list["integrations"][0]["source"], "platform", "{list}");
        assert_eq!(list["integrations"][0]["settings"], Value::Null);
        let (status, _) = app
            .delete("/api/tenant/integrations/payment", &erin)
            .await?;
        assert_eq!(status, 404);
        assert!(app
            .audit_actions(app.acme)
            .await?
            .contains(&"integration.removed".to_owned()));
        Ok(())
    }

    #[tokio::test]
    async fn saves_bad_settings_and_nothing_is_stored() -> TestResult {
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;
        let closed = free_port()?;
        // A real SMTP server that offers no login: credentials for it fail.
        let open = free_port()?;
        let _smtp = smtp_server(open).await?;
        for (kind, body, wanted) in [
            (
                "payment",
                json!({"provider": "stripe", "secret_key": "oops"}),
                "starts with sk_",
            ),
            (
                "payment",
                json!({"provider": "paypal", "secret_key": "x"}),
                "provider must be one of",
            ),
            (
                "sms",
                json!({"provider": "twilio", "account_id": "AC1", "auth_token": "t", "from": "555"}),
                "E.164",
            ),
            (
                "sms",
                json!({"provider": "twilio", "account_id": "AC1", "auth_token": "t", "from": "+15551234567", "extra": 1}),
                "unknown field",
            ),
            (
                "analytics",
                json!({"provider": "google", "tracking_id": "<script>"}),
                "tracking_id",
            ),
            (
                "email",
                json!({"provider": "smtp", "host": "127.0.0.1", "port": closed, "security": "none", "from": "a@b.test"}),
                "could not be reached",
            ),
            (
                "email",
                json!({"provider": "smtp", "host": "bad host", "port": 25, "from": "a@b.test"}),
                "host must be",
            ),
            (
                "email",
                json!({"provider": "smtp", "host": "mail.acme.test", "port": 25, "from": "not an address"}),
                "from must be",
            ),
            (
                "email",
                json!({"provider": "smtp", "host": "mail.acme.test", "port": 25, "password": "p", "from": "a@b.test"}),
                "needs a username",
            ),
            ("email", json!("a string"), "not an object"),
            (
                "payment",
                json!({"provider": "stripe", "secret_key": 42, "webhook_secret": "whsec_leak_me_0001"}),
                "wrong type",
            ),
            (
                "email",
                json!({"provider": "smtp", "host": "127.0.0.1", "port": open, "security": "none",
                             "username": "acme", "password": SMTP_PASSWORD, "from": "a@b.test"}),
                "login",
            ),
        ] {
            let (status, body) = put(&app, &alice, kind, body).await?;
            assert_eq!(status, 422, "{kind}: {body}");
            let message = body["error"].as_str().unwrap_or_default();
            assert!(message.contains(wanted), "{kind}: {body}");
            assert!(
                !message.contains(SMTP_PASSWORD) && !message.contains("leak_me"),
                "{body}"
            );
            assert!(
                !message.contains("line") && !message.contains("column"),
                "{body}"
            );
        }
        let (status, _) = put(&app, &alice, "fax", json!({})).await?;
        assert_eq!(status, 404);
        assert!(stored(&app, app.acme).await?.is_empty());
        let keys: i64 = app.scalar("SELECT count(*) FROM app.tenant_keys").await?;
        assert_eq!(keys, 0, "no key made for nothing");
        assert!(!app
            .audit_actions(app.acme)
            .await?
            .contains(&"integration.updated".to_owned()));
        Ok(())
    }

    #[tokio::test]
    async fn points_the_mail_server_at_the_services_own_network() -> TestResult {
        let app = TestApp::spawn_with(Options {
            public_smtp_only: true,
            ..Options::default()
        })
        .await?;
        let alice = app.login(ALICE).await?;
        for (host, port, wanted) in [
            ("127.0.0.1", 25, "inside the service's network"),
            ("localhost", 587, "inside the service's network"),
            ("10.1.2.3", 25, "inside the service's network"),
            ("169.254.169.254", 25, "inside the service's network"),
            ("mail.acme.test", 6379, "port must be one of"),
        ] {
            let (status, body) = put(
                &app,
                &alice,
                "email",
                json!({"provider": "smtp", "host": host, "port": port, "from": "a@acme.test"}),
            )
            .await?;
            assert_eq!(status, 422, "{host}:{port}: {body}");
            assert!(
                body["error"].as_str().unwrap_or_default().contains(wanted),
                "{host}:{port}: {body}"
            );
        }
        // The same for an email API's endpoint.
        for (endpoint, wanted) in [
            ("http://api.postmarkapp.com", "must use https"),
            ("https://127.0.0.1", "inside the service's network"),
            ("https://api.postmarkapp.com:8443", "port 443"),
            ("https://localhost", "inside the service's network"),
            (
                "https://169.254.169.254/latest",
                "inside the service's network",
            ),
        ] {
            let (status, body) = put(
                &app,
                &alice,
                "email",
                json!({"provider": "postmark", "api_key": "server-token-1", "from": "a@acme.test",
                       "endpoint": endpoint}),
            )
            .await?;
            assert_eq!(status, 422, "{endpoint}: {body}");
            assert!(
                body["error"].as_str().unwrap_or_default().contains(wanted),
                "{endpoint}: {body}"
            );
        }
        assert!(stored(&app, app.acme).await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn reads_the_owners_password_reset_link_through_its_own_mail_server() -> TestResult {
        let (app, mut platform, own_port) = with_platform_mail().await?;
        let mut own = smtp_server(own_port).await?;
        // Erin, an admin, points acme's mail at a server she reads.
        let (status, _) = put(
            &app,
            &app.login(ERIN).await?,
            "email",
            email(own_port, "Acme <mail@acme.test>"),
        )
        .await?;
        assert_eq!(status, 200);
        let (status, _) = app
            .call(
                Method::POST,
                "/auth/password/forgot",
                None,
                &[],
                Some(json!({ "email": ALICE })),
            )
            .await?;
        assert_eq!(status, 202);
        // The reset link goes through the platform's server, never hers.
        let mut platform_out =
            tokio::io::BufReader::new(platform.stdout.take().ok_or("no stdout")?);
        let seen = smtp_printed(&mut platform_out, &[ALICE, "reset-password?token="], 20).await;
        assert!(seen.contains("reset-password?token="), "{seen}");
        let mut own_out = tokio::io::BufReader::new(own.stdout.take().ok_or("no stdout")?);
        let leaked = smtp_printed(&mut own_out, &["reset-password"], 2).await;
        assert!(!leaked.contains("reset-password"), "{leaked}");
        Ok(())
    }

    #[tokio::test]
    async fn stalls_every_tenants_mail_with_a_server_that_never_answers() -> TestResult {
        let platform_port = free_port()?;
        let mut platform = smtp_server(platform_port).await?;
        let app = TestApp::spawn_with(Options {
            smtp_url: Some(format!("smtp://127.0.0.1:{platform_port}")),
            ..Options::default()
        })
        .await?;
        // Acme's server passes the check on save, then goes silent: it
        // accepts connections and never says a word.
        let own_port = free_port()?;
        let peer = smtp_server(own_port).await?;
        let alice = app.login(ALICE).await?;
        let (status, _) = put(
            &app,
            &alice,
            "email",
            email(own_port, "Acme <mail@acme.test>"),
        )
        .await?;
        assert_eq!(status, 200);
        drop(peer);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let silent = tokio::net::TcpListener::bind(("127.0.0.1", own_port)).await?;
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        for n in 0..3 {
            invite(&app, &alice, &format!("stuck{n}@example.test")).await?;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        // Globex's mail goes out meanwhile, within seconds.
        let started = std::time::Instant::now();
        invite(&app, &app.login(GUS).await?, "prompt@example.test").await?;
        let mut out = tokio::io::BufReader::new(platform.stdout.take().ok_or("no stdout")?);
        let seen = smtp_printed(&mut out, &["prompt@example.test"], 20).await;
        assert!(seen.contains("prompt@example.test"), "{seen}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "globex's mail waited {:?} behind acme's silent server",
            started.elapsed()
        );
        hold.abort();
        Ok(())
    }

    #[tokio::test]
    async fn reads_or_changes_another_tenants_integrations() -> TestResult {
        let app = TestApp::spawn().await?;
        let gus = app.login(GUS).await?;
        let (status, _) = put(&app, &gus, "payment", payment()).await?;
        assert_eq!(status, 200);
        let alice = app.login(ALICE).await?;
        let globex = app.globex.to_string();
        for (method, path, body) in [
            (Method::GET, "/api/tenant/integrations", None),
            (
                Method::PUT,
                "/api/tenant/integrations/payment",
                Some(payment()),
            ),
            (Method::DELETE, "/api/tenant/integrations/payment", None),
            (Method::POST, "/api/tenant/data-key/rotate", None),
        ] {
            let (status, body) = app
                .call(
                    method.clone(),
                    path,
                    Some(&alice),
                    &[("x-tenant-id", &globex)],
                    body,
                )
                .await?;
            assert!(
                status == 403 || status == 404,
                "{method} {path}: {status} {body}"
            );
        }
        // Her own tenant shows none of globex's.
        let (_, list) = app.get("/api/tenant/integrations", &alice).await?;
        assert_eq!(list["integrations"][0]["source"], "platform", "{list}");
        assert_eq!(stored(&app, app.globex).await?.len(), 1, "globex's kept");
        Ok(())
    }
}

mod tenant_member {
    use super::*;

    #[tokio::test]
    async fn sees_sets_or_rotates_the_tenants_secrets() -> TestResult {
        let app = TestApp::spawn().await?;
        let bob = app.login(BOB).await?;
        let (status, _) = app.get("/api/tenant/integrations", &bob).await?;
        assert_eq!(status, 403);
        let (status, _) = put(&app, &bob, "payment", payment()).await?;
        assert_eq!(status, 403);
        let (status, _) = app.get("/api/tenant/data-key", &bob).await?;
        assert_eq!(status, 403);
        // An admin runs integrations; rotating the key is the owners'.
        let erin = app.login(ERIN).await?;
        let (status, _) = app
            .post("/api/tenant/data-key/rotate", &erin, json!({}))
            .await?;
        assert_eq!(status, 403);
        assert!(stored(&app, app.acme).await?.is_empty());
        Ok(())
    }
}

mod application_role {
    use super::*;

    #[tokio::test]
    async fn destroys_retires_or_plants_its_tenants_data_keys() -> TestResult {
        let app = TestApp::spawn().await?;
        let (status, _) = put(&app, &app.login(ALICE).await?, "payment", payment()).await?;
        assert_eq!(status, 200);
        let token = app.context_token(app.acme, Uuid::nil());
        for statement in [
            "UPDATE app.tenant_keys SET retired_at = now()",
            "UPDATE app.tenant_keys SET wrapped = NULL, destroyed_at = now()",
            "UPDATE app.tenant_keys SET kek_id = '0000000000000000'",
            "DELETE FROM app.tenant_keys",
            "SELECT app.shred_tenant_keys(tenant_id) FROM app.tenant_keys",
            "SELECT count(*) FROM app.mail_integrations(ARRAY[gen_random_uuid()])",
            "SELECT app.data_key_wrappers()",
        ] {
            let mut conn = app.app_role().await?;
            let mut tx = sqlx::Connection::begin(&mut conn).await?;
            sqlx::query("SELECT tenancy.set_token($1)")
                .bind(&token)
                .execute(&mut *tx)
                .await?;
            let outcome = sqlx::query(statement).execute(&mut *tx).await;
            let message = outcome.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                message.contains("permission denied"),
                "{statement}: {message}"
            );
        }
        // A key under a platform key the service does not hold would stop
        // every instance at its next start: it cannot be planted.
        let mut conn = app.app_role().await?;
        let mut tx = sqlx::Connection::begin(&mut conn).await?;
        sqlx::query("SELECT tenancy.set_token($1)")
            .bind(&token)
            .execute(&mut *tx)
            .await?;
        let planted = sqlx::query(
            "INSERT INTO app.tenant_keys (version, wrapped, kek_id)
             VALUES (9, decode(repeat('00', 72), 'hex'), 'ffffffffffffffff')",
        )
        .execute(&mut *tx)
        .await;
        let message = planted.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("foreign key"), "{message}");
        drop(tx);
        let live: i64 = app
            .scalar("SELECT count(*) FROM app.tenant_keys WHERE wrapped IS NOT NULL AND retired_at IS NULL")
            .await?;
        assert_eq!(live, 1);
        tenancy_server::AppState::connect(app.config.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    #[tokio::test]
    async fn moves_a_sealed_mail_server_to_another_tenant() -> TestResult {
        let platform = free_port()?;
        let app = TestApp::spawn_with(Options {
            smtp_url: Some(format!("smtp://127.0.0.1:{platform}")),
            ..Options::default()
        })
        .await?;
        let own = free_port()?;
        let _peer = smtp_server(own).await?;
        let (alice, gus) = (app.login(ALICE).await?, app.login(GUS).await?);
        let (status, _) = put(&app, &alice, "email", email(own, "Acme <mail@acme.test>")).await?;
        assert_eq!(status, 200);
        let (status, _) = put(&app, &gus, "sms", sms()).await?;
        assert_eq!(status, 200);
        // Behind the scenes, acme's sealed mail server is copied to globex.
        let mut su = app.superuser().await?;
        let (version, sealed, masked): (i32, Vec<u8>, Value) = sqlx::query_as(
            "SELECT key_version, sealed, masked FROM app.tenant_integrations
             WHERE tenant_id = $1 AND kind = 'email'",
        )
        .bind(app.acme)
        .fetch_one(&mut su)
        .await?;
        let mut tx = sqlx::Connection::begin(&mut su).await?;
        sqlx::query("SELECT tenancy.set_token($1)")
            .bind(app.context_token(app.globex, Uuid::nil()))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO app.tenant_integrations (kind, key_version, sealed, masked)
             VALUES ('email', $1, $2, $3)",
        )
        .bind(version)
        .bind(&sealed)
        .bind(&masked)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        invite(&app, &gus, "victim@elsewhere.test").await?;
        let error = mail_error(&app, app.globex, "invitation")
            .await?
            .unwrap_or_default();
        assert!(
            error.contains("does not decrypt") && error.contains(&app.globex.to_string()),
            "refused, naming the row: {error}"
        );
        let sent: i64 = app
            .scalar("SELECT count(*) FROM app.email_outbox WHERE sent_at IS NOT NULL AND template = 'invitation'")
            .await?;
        assert_eq!(sent, 0, "never sent through acme's server");
        Ok(())
    }
}

#[tokio::test]
async fn each_tenants_mail_goes_through_its_own_server_or_the_platforms() -> TestResult {
    let (app, mut platform, own_port) = with_platform_mail().await?;
    let mut own = smtp_server(own_port).await?;
    let alice = app.login(ALICE).await?;
    let (status, body) = put(
        &app,
        &alice,
        "email",
        email(own_port, "Acme Mail <mail@acme.test>"),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    invite(&app, &alice, "new.acme@example.test").await?;
    invite(&app, &app.login(GUS).await?, "new.globex@example.test").await?;

    let mut own_out = tokio::io::BufReader::new(own.stdout.take().ok_or("no stdout")?);
    let mut platform_out = tokio::io::BufReader::new(platform.stdout.take().ok_or("no stdout")?);
    let seen_own = smtp_printed(
        &mut own_out,
        &["new.acme@example.test", "mail@acme.test"],
        20,
    )
    .await;
    assert!(
        seen_own.contains("new.acme@example.test")
            && seen_own.contains("From: \"Acme Mail\" <mail@acme.test>"),
        "acme's mail through acme's server, from its sender: {seen_own}"
    );
    assert!(!seen_own.contains("new.globex@example.test"), "{seen_own}");
    let seen_platform = smtp_printed(&mut platform_out, &["new.globex@example.test"], 20).await;
    assert!(
        seen_platform.contains("new.globex@example.test"),
        "{seen_platform}"
    );
    assert!(
        !seen_platform.contains("new.acme@example.test"),
        "{seen_platform}"
    );
    Ok(())
}

#[tokio::test]
async fn a_tenants_mail_goes_through_its_email_api_which_is_checked_on_save() -> TestResult {
    let app = TestApp::spawn().await?;
    let peer = api_peer(API_KEY).await?;
    let endpoint = format!("http://127.0.0.1:{}", peer.port);
    let (alice, gus) = (app.login(ALICE).await?, app.login(GUS).await?);
    // A key the provider refuses is never stored.
    let (status, body) = put(
        &app,
        &alice,
        "email",
        json!({"provider": "postmark", "api_key": "not-the-right-token", "from": "Acme <mail@acme.test>",
               "endpoint": endpoint}),
    )
    .await?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("refused the API key"),
        "{body}"
    );
    assert!(stored(&app, app.acme).await?.is_empty());

    // Acme on Postmark, globex on SendGrid: each tenant's mail through its own.
    for (token, provider) in [(&alice, "postmark"), (&gus, "sendgrid")] {
        let (status, body) = put(
            &app,
            token,
            "email",
            json!({"provider": provider, "api_key": API_KEY, "from": "Team <mail@tenant.test>",
                   "endpoint": endpoint}),
        )
        .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["settings"]["api_key"], "****7890", "{body}");
        assert!(!body.to_string().contains(API_KEY));
    }
    invite(&app, &alice, "to.acme@elsewhere.test").await?;
    invite(&app, &gus, "to.globex@elsewhere.test").await?;
    let (path, mail) = peer
        .mail_to("to.acme@elsewhere.test", 15)
        .await
        .ok_or("acme's invitation never reached its API")?;
    assert_eq!(path, "/email");
    assert_eq!(mail["To"], "to.acme@elsewhere.test");
    assert!(mail["From"]
        .as_str()
        .unwrap_or_default()
        .contains("mail@tenant.test"));
    assert!(mail["TextBody"]
        .as_str()
        .unwrap_or_default()
        .contains("accept-invitation?token="));
    let (path, mail) = peer
        .mail_to("to.globex@elsewhere.test", 15)
        .await
        .ok_or("globex's invitation never reached its API")?;
    assert_eq!(path, "/v3/mail/send");
    assert_eq!(
        mail["personalizations"][0]["to"][0]["email"],
        "to.globex@elsewhere.test"
    );
    assert_eq!(mail["from"]["email"], "mail@tenant.test");
    let sent: i64 = app
        .scalar("SELECT count(*) FROM app.email_outbox WHERE template = 'invitation' AND sent_at IS NOT NULL")
        .await?;
    assert_eq!(sent, 2, "both recorded as sent");
    Ok(())
}

#[tokio::test]
async fn each_kind_falls_back_to_the_platforms_default_until_the_tenant_sets_its_own() -> TestResult
{
    const PLATFORM_SECRET: &str = "platform-adyen-secret-key-0001";
    let app = TestApp::spawn_with(Options {
        platform_integrations: Some(
            json!({"payment": {"provider": "adyen", "secret_key": PLATFORM_SECRET},
                   "analytics": {"provider": "plausible", "tracking_id": "platform.example"}})
            .to_string(),
        ),
        ..Options::default()
    })
    .await?;
    let alice = app.login(ALICE).await?;
    let shown = |body: &Value, kind: &str| -> Value {
        body["integrations"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["kind"] == kind).cloned())
            .unwrap_or(Value::Null)
    };
    let (status, body) = app.get("/api/tenant/integrations", &alice).await?;
    assert_eq!(status, 200, "{body}");
    let default = shown(&body, "payment");
    assert_eq!(default["source"], "platform");
    assert_eq!(
        default["settings"],
        json!({"provider": "adyen"}),
        "{default}"
    );
    assert_eq!(
        shown(&body, "analytics")["settings"]["provider"],
        "plausible"
    );
    assert_eq!(shown(&body, "sms")["settings"], Value::Null, "no default");
    assert!(
        !body.to_string().contains("platform-adyen") && !body.to_string().contains("0001"),
        "the platform's credentials are not shown, not even masked: {body}"
    );

    // What code charging for a tenant gets: the platform's, then its own.
    let state = tenancy_server::AppState::connect(app.config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let effective = |tenant: Uuid| {
        let state = state.clone();
        async move {
            let mut tx = state.db.begin().await?;
            tenancy_server::domain::context::enter(&mut tx, &state.keys, tenant, Uuid::nil())
                .await?;
            let found = tenancy_server::domain::integrations::effective(
                &state.keyring,
                &state.platform_integrations,
                &mut tx,
                tenant,
                "payment",
            )
            .await?;
            tx.rollback().await?;
            Ok::<_, tenancy_server::error::AppError>(
                found.map(|(source, plain)| (source, String::from_utf8_lossy(&plain).into_owned())),
            )
        }
    };
    use tenancy_server::domain::integrations::Source;
    let (source, plain) = effective(app.acme).await?.ok_or("no payment settings")?;
    assert_eq!(source, Source::Platform);
    assert!(plain.contains(PLATFORM_SECRET));
    let (status, _) = put(&app, &alice, "payment", payment()).await?;
    assert_eq!(status, 200);
    let (source, plain) = effective(app.acme).await?.ok_or("no payment settings")?;
    assert_eq!(source, Source::Tenant);
    assert!(plain.contains(STRIPE_SECRET) && !plain.contains(PLATFORM_SECRET));
    let (source, _) = effective(app.globex).await?.ok_or("no payment settings")?;
    assert_eq!(source, Source::Platform, "globex keeps the default");
    let (status, _) = app
        .delete("/api/tenant/integrations/payment", &alice)
        .await?;
    assert_eq!(status, 204);
    let (source, _) = effective(app.acme).await?.ok_or("no payment settings")?;
    assert_eq!(source, Source::Platform, "back to the default");

    // A default that would be refused for a tenant stops the start.
    for (defaults, wanted) in [
        (
            json!({"payment": {"provider": "paypal", "secret_key": "x"}}),
            "provider must be one of",
        ),
        (json!({"email": {"provider": "smtp"}}), "TENANCY_SMTP_URL"),
        (json!(["payment"]), "JSON object"),
    ] {
        let mut config = app.config.clone();
        config.platform_integrations = Some(defaults.to_string());
        let refused = tenancy_server::AppState::connect(config).await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("TENANCY_PLATFORM_INTEGRATIONS") && message.contains(wanted),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
    }
    Ok(())
}

#[tokio::test]
async fn rotating_a_tenants_data_key_reseals_everything_and_survives_a_stop_half_way() -> TestResult
{
    // No background jobs: the resealing is run here, step by step.
    let app = TestApp::spawn_with(Options {
        relay: false,
        ..Options::default()
    })
    .await?;
    let alice = app.login(ALICE).await?;
    for (kind, body) in [("payment", payment()), ("sms", sms())] {
        let (status, _) = put(&app, &alice, kind, body).await?;
        assert_eq!(status, 200);
    }
    let (status, rotated) = app
        .post("/api/tenant/data-key/rotate", &alice, json!({}))
        .await?;
    assert_eq!(status, 202, "{rotated}");
    assert_eq!(rotated["current"], 2);
    assert_eq!(rotated["resealing"], 2, "{rotated}");
    assert!(app
        .audit_actions(app.acme)
        .await?
        .contains(&"data_key.rotated".to_owned()));

    let state = tenancy_server::AppState::connect(app.config.clone())
        .await
        .map_err(|e| e.to_string())?;
    // A stop half-way: one value resealed, then nothing more.
    let n = tenancy_server::jobs::keys::reseal_tenant(&state, app.acme, 1).await?;
    assert_eq!(n, 1);
    let (_, status) = app.get("/api/tenant/data-key", &alice).await?;
    assert_eq!(status["resealing"], 1, "{status}");
    // Both versions open what they sealed meanwhile.
    let rows = stored(&app, app.acme).await?;
    let mut versions: Vec<i32> = rows.iter().map(|r| r.1).collect();
    versions.sort();
    assert_eq!(versions, [1, 2], "one resealed, one not yet");
    let mut conn = state.db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    tenancy_server::domain::context::enter(&mut tx, &state.keys, app.acme, Uuid::nil()).await?;
    for (kind, version, sealed, _) in &rows {
        let key = state
            .keyring
            .key_version(&mut tx, app.acme, *version)
            .await?;
        let plain = key.open(
            &tenancy_server::domain::integrations::sealed_column(kind),
            kind,
            sealed,
        )?;
        assert!(!plain.is_empty());
    }
    tx.rollback().await?;

    // Resumed: the rest is resealed and the retired key destroyed.
    let resealed = tenancy_server::jobs::keys::reseal_pass(&state).await?;
    assert_eq!(resealed, 1);
    let (_, status) = app.get("/api/tenant/data-key", &alice).await?;
    assert_eq!(status["resealing"], 0, "{status}");
    assert_eq!(status["sealed"], 2);
    assert!(
        status["versions"][0]["destroyed_at"].is_string(),
        "{status}"
    );
    assert!(status["versions"][1]["destroyed_at"].is_null(), "{status}");
    let rows = stored(&app, app.acme).await?;
    assert!(rows.iter().all(|r| r.1 == 2));
    Ok(())
}

#[tokio::test]
async fn the_platform_key_is_rotated_by_rewrapping_and_a_wrong_or_missing_one_stops_the_start(
) -> TestResult {
    let app = TestApp::spawn_with(Options {
        relay: false,
        ..Options::default()
    })
    .await?;
    let (status, _) = put(&app, &app.login(ALICE).await?, "payment", payment()).await?;
    assert_eq!(status, 200);
    let (status, _) = put(&app, &app.login(GUS).await?, "sms", sms()).await?;
    assert_eq!(status, 200);
    let sealed_before = stored(&app, app.acme).await?;

    let new_key = "bmV3LXBsYXRmb3JtLWtleS0wMTIzNDU2Nzg5YWJjZGU=";
    let mut rotated = app.config.clone();
    rotated.data_key_previous = rotated.data_key.take();
    rotated.data_key = Some(new_key.to_owned());
    let n = tenancy_server::jobs::ops::rotate_data_key(&rotated)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(n, 2, "both tenants' keys rewrapped");
    let again = tenancy_server::jobs::ops::rotate_data_key(&rotated)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(again, 0, "nothing left to rewrap");
    assert_eq!(
        stored(&app, app.acme).await?,
        sealed_before,
        "no sealed value touched"
    );
    let new_id = Keyring::from_config(&rotated)?.current.id().to_owned();
    let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT kek_id FROM app.tenant_keys")
        .fetch_all(&mut app.superuser().await?)
        .await?;
    assert_eq!(ids, [new_id]);

    // The new key alone serves.
    let mut only_new = rotated.clone();
    only_new.data_key_previous = None;
    tenancy_server::AppState::connect(only_new)
        .await
        .map_err(|e| e.to_string())?;
    // The old one, or none, or a malformed one, stops the start in one line.
    for (key, wanted) in [
        (
            Some(tenancy_tests::server::DATA_KEY),
            "does not open the tenant data keys",
        ),
        (
            None,
            "TENANCY_DATA_KEY (or TENANCY_DATA_KEY_FILE) is required",
        ),
        (Some("c2hvcnQ="), "must be 32 bytes"),
    ] {
        let mut config = app.config.clone();
        config.data_key = key.map(str::to_owned);
        let error = match tenancy_server::AppState::connect(config).await {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains(wanted) && !error.contains('\n'),
            "{key:?}: {error}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_removed_tenants_leftover_ciphertext_cannot_be_decrypted() -> TestResult {
    let app = TestApp::spawn_with(Options {
        relay: false,
        ..Options::default()
    })
    .await?;
    let alice = app.login(ALICE).await?;
    let (status, _) = put(&app, &alice, "payment", payment()).await?;
    assert_eq!(status, 200);
    let (status, _) = put(&app, &app.login(GUS).await?, "payment", payment()).await?;
    assert_eq!(status, 200);
    let (status, _) = app.delete("/api/tenant", &alice).await?;
    assert_eq!(status, 202);
    let mut su = app.superuser().await?;
    // A row of acme's that something outside the protected tables still
    // references holds its removal up: its sealed values stay behind.
    sqlx::query(
        "CREATE TABLE public.keeps_acme (tenant_id uuid, kind text,
             FOREIGN KEY (tenant_id, kind) REFERENCES app.tenant_integrations (tenant_id, kind))",
    )
    .execute(&mut su)
    .await?;
    sqlx::query("UPDATE app.tenant_deletions SET purge_after = now() - interval '1 second'")
        .execute(&mut su)
        .await?;
    sqlx::query("INSERT INTO public.keeps_acme VALUES ($1, 'payment')")
        .bind(app.acme)
        .execute(&mut su)
        .await?;
    assert_eq!(app.purge_due().await?, 0, "removal waits for the reference");
    let left = stored(&app, app.acme).await?;
    assert_eq!(left.len(), 1, "the ciphertext is still there");

    // Its key was destroyed first: nothing opens what is left.
    let keys: Vec<(Option<Vec<u8>>, bool)> = sqlx::query_as(
        "SELECT wrapped, destroyed_at IS NOT NULL FROM app.tenant_keys WHERE tenant_id = $1",
    )
    .bind(app.acme)
    .fetch_all(&mut su)
    .await?;
    assert_eq!(keys, [(None, true)]);
    let state = tenancy_server::AppState::connect(app.config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = state.db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    tenancy_server::domain::context::enter(&mut tx, &state.keys, app.acme, Uuid::nil()).await?;
    let refused = state
        .keyring
        .key_version(&mut tx, app.acme, left[0].1)
        .await;
    assert!(refused.is_err(), "no key opens acme's leftovers");
    let refused = state.keyring.current_key(&mut tx, app.acme).await;
    assert!(
        refused.is_err(),
        "and no new key is made for a shredded tenant"
    );
    tx.rollback().await?;

    // Globex's key and values are untouched.
    let globex_live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM app.tenant_keys WHERE tenant_id = $1 AND wrapped IS NOT NULL",
    )
    .bind(app.globex)
    .fetch_one(&mut su)
    .await?;
    assert_eq!(globex_live, 1);

    // Once the reference goes, so do the rows.
    sqlx::query("DROP TABLE public.keeps_acme")
        .execute(&mut su)
        .await?;
    assert_eq!(app.purge_due().await?, 1);
    assert!(stored(&app, app.acme).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn secrets_in_a_tenants_configuration_are_masked_in_the_catalog_audit_log() -> TestResult {
    let app = TestApp::spawn().await?;
    let mut su = app.superuser().await?;
    sqlx::query(
        "SELECT tenancy.create_tenant('initech', 'Initech', NULL,
             '{\"smtp_password\": \"hunter2-hunter2\", \"locale\": \"fr\", \"smtpPassword\": \"camel-0003\",
               \"author\": \"Ada\", \"database\": {\"url\": \"postgres://u:pw-secret-0004@db.test/x\"},
               \"billing\": {\"api_key\": \"ak-secret-0001\", \"plan\": \"pro\"},
               \"webhooks\": [{\"url\": \"https://h.test\", \"signing_secret\": \"sig-0002\"}]}'::jsonb)",
    )
    .execute(&mut su)
    .await?;
    let details: Vec<String> = sqlx::query_scalar(
        "SELECT details::text FROM tenancy.audit_log WHERE action = 'tenants.insert'
         AND details ->> 'slug' = 'initech'",
    )
    .fetch_all(&mut su)
    .await?;
    assert_eq!(details.len(), 1, "{details:?}");
    let entry = &details[0];
    for secret in [
        "hunter2-hunter2",
        "ak-secret-0001",
        "sig-0002",
        "camel-0003",
        "pw-secret-0004",
    ] {
        assert!(
            !entry.contains(secret),
            "{secret} in the audit log: {entry}"
        );
    }
    assert!(
        entry.contains("\"locale\": \"fr\"") && entry.contains("\"plan\": \"pro\""),
        "{entry}"
    );
    assert!(entry.contains("https://h.test"), "{entry}");
    assert!(
        entry.contains("\"author\": \"Ada\""),
        "not every key with auth in it: {entry}"
    );
    assert!(entry.contains("postgres://u:****@db.test/x"), "{entry}");
    Ok(())
}
