//! Personal data sealed in tenant tables (seed 002, REQ-MT-B009): an
//! invitee's address is stored only sealed with the tenant's data key, with
//! a keyed blind index for the one lookup the service needs; rotation
//! reseals it (and its index), rows from before sealing get sealed, and a
//! sealed address copied to another tenant does not open. Attacks are
//! grouped by attacker.

use serde_json::{json, Value};
use tenancy_server::domain::keyring::TenantKeys;
use tenancy_server::domain::pii;
use tenancy_tests::server::{Options, TestApp, ALICE, GUS};
use tenancy_tests::TestResult;
use uuid::Uuid;

async fn invite(app: &TestApp, token: &str, email: &str) -> TestResult<Value> {
    let (status, body) = app.invite(token, email, "member").await?;
    assert_eq!(status, 202, "{body}");
    Ok(body)
}

/// The addresses of the tenant's pending invitations, as its admin sees them.
async fn pending(app: &TestApp, token: &str) -> TestResult<Vec<String>> {
    let (status, body) = app.get("/api/tenant/invitations", token).await?;
    assert_eq!(status, 200, "{body}");
    Ok(body
        .as_array()
        .ok_or("not a list")?
        .iter()
        .filter_map(|i| i["email"].as_str().map(str::to_owned))
        .collect())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Every invitation of `tenant` as stored: (email, sealed, index, key version).
async fn stored(
    app: &TestApp,
    tenant: Uuid,
) -> TestResult<
    Vec<(
        Option<String>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<i32>,
    )>,
> {
    Ok(sqlx::query_as(
        "SELECT email, email_sealed, email_index, key_version FROM app.invitations
         WHERE tenant_id = $1 ORDER BY created_at",
    )
    .bind(tenant)
    .fetch_all(&mut app.superuser().await?)
    .await?)
}

mod application_role {
    //! The service's own database role, stolen: raw SQL in its tenant's
    //! context.
    use super::*;

    async fn as_app_role(app: &TestApp, sql: &str) -> TestResult<String> {
        let mut conn = app.app_role().await?;
        let mut tx = sqlx::Connection::begin(&mut conn).await?;
        sqlx::query("SELECT tenancy.set_token($1)")
            .bind(app.context_token(app.acme, Uuid::nil()))
            .execute(&mut *tx)
            .await?;
        let outcome = sqlx::query(sql).execute(&mut *tx).await;
        tx.commit().await?;
        Ok(outcome.err().map(|e| e.to_string()).unwrap_or_default())
    }

    #[tokio::test]
    async fn writes_plain_addresses_for_the_key_job_to_index_as_guesses() -> TestResult {
        let app = TestApp::spawn().await?;
        invite(&app, &app.login(ALICE).await?, "target@elsewhere.test").await?;
        let refused = as_app_role(
            &app,
            "INSERT INTO app.invitations (email, role, token_hash, expires_at)
             VALUES ('guess@elsewhere.test', 'member', decode(repeat('ab', 32), 'hex'), now() + interval '1 day')",
        )
        .await?;
        assert!(refused.contains("stored sealed only"), "{refused}");
        let refused = as_app_role(
            &app,
            "UPDATE app.invitations SET email = 'guess@elsewhere.test', email_sealed = NULL,
                 email_index = NULL, key_version = NULL",
        )
        .await?;
        assert!(refused.contains("stored sealed only"), "{refused}");
        let plain: i64 = app
            .scalar("SELECT count(*) FROM app.invitations WHERE email IS NOT NULL")
            .await?;
        assert_eq!(plain, 0);
        Ok(())
    }

    #[tokio::test]
    async fn revives_an_old_invitation_with_its_own_link_to_make_the_service_open_it() -> TestResult
    {
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;
        let invitation = invite(&app, &alice, "former.invitee@elsewhere.test").await?;
        let id = invitation["id"].as_str().unwrap_or_default().to_owned();
        let (status, _) = app
            .delete(&format!("/api/tenant/invitations/{id}"), &alice)
            .await?;
        assert_eq!(status, 204);
        // The revoked row brought back, pointed at a link the attacker holds.
        let (secret, digest) = tenancy_server::domain::sessions::new_secret();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let error = as_app_role(
            &app,
            &format!(
                "UPDATE app.invitations SET revoked_at = NULL, expires_at = now() + interval '1 day',
                     token_hash = decode('{hex}', 'hex') WHERE id = '{id}'"
            ),
        )
        .await?;
        assert_eq!(error, "", "the role may write its tenant's rows");
        let (status, body) = app
            .accept(&format!("{}.{secret}", app.acme), "plum-harbour-window-17")
            .await?;
        assert_eq!(status, 404, "{body}");
        assert!(!body.to_string().contains("former.invitee"), "{body}");
        let account: i64 = app
            .scalar("SELECT count(*) FROM app.users WHERE email = 'former.invitee@elsewhere.test'")
            .await?;
        assert_eq!(account, 0, "no account made with the attacker's password");
        Ok(())
    }
}

mod tenant_admin {
    use super::*;

    #[tokio::test]
    async fn names_the_invitees_address_in_the_invitation_text() -> TestResult {
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;
        for body in [
            json!({"subject": "Hello {email}", "body": "Join us."}),
            json!({"subject": "Hello", "body": "Join us, {email}."}),
        ] {
            let (status, answer) = app
                .put("/api/tenant/email-templates/invitation", &alice, body)
                .await?;
            assert_eq!(status, 422, "{answer}");
            assert!(
                answer["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("{email}"),
                "{answer}"
            );
        }
        // The welcome mail to an account may still name it.
        let (status, answer) = app
            .put(
                "/api/tenant/email-templates/welcome",
                &alice,
                json!({"subject": "Hello {email}", "body": "Welcome."}),
            )
            .await?;
        assert_eq!(status, 200, "{answer}");
        Ok(())
    }
}

mod database_reader {
    //! Anyone holding a copy of the database: a dump, a replica, a backup,
    //! or the application role itself.
    use super::*;

    #[tokio::test]
    async fn reads_an_invitees_address_from_the_table_or_the_audit_trail() -> TestResult {
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;
        let address = "Private.Person@elsewhere.test";
        let invitation = invite(&app, &alice, address).await?;
        assert_eq!(invitation["email"], address, "the inviter sees it whole");
        assert_eq!(pending(&app, &alice).await?, vec![address.to_owned()]);

        let rows = stored(&app, app.acme).await?;
        assert_eq!(rows.len(), 1);
        let (plain, sealed, index, version) = &rows[0];
        assert_eq!(plain, &None, "no plain copy");
        let sealed = sealed.as_deref().ok_or("not sealed")?;
        assert!(!contains(sealed, "private.person"), "ciphertext only");
        let index = index.as_deref().ok_or("no blind index")?;
        assert_eq!(index.len(), 16);
        // Not a plain hash anyone could compute from a guess.
        for guess in [address.to_owned(), address.to_lowercase()] {
            let digest = tenancy_token::digest(&guess);
            assert_ne!(index, &digest[..16]);
        }
        assert_eq!(*version, Some(1));

        // Nor in the mail outbox (the mail names the invitation)...
        let mut su = app.superuser().await?;
        let outbox: Vec<String> = sqlx::query_scalar(
            "SELECT o::text FROM app.email_outbox o WHERE template = 'invitation'",
        )
        .fetch_all(&mut su)
        .await?;
        assert_eq!(outbox.len(), 1);
        assert!(
            !outbox[0].to_lowercase().contains("private.person"),
            "{outbox:?}"
        );
        // ...nor in the audit trail.
        let trail: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT coalesce(target, '') || details::text FROM app.audit_events
             WHERE tenant_id = $1 AND action LIKE 'invitation.%'",
        )
        .bind(app.acme)
        .fetch_all(&mut su)
        .await?;
        assert!(!trail.is_empty());
        for entry in trail.iter().flatten() {
            assert!(!entry.to_lowercase().contains("private.person"), "{entry}");
        }
        assert!(
            trail.iter().flatten().any(|e| e.contains("P***@e***.test")),
            "masked: {trail:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn moves_a_sealed_address_into_another_tenants_invitation() -> TestResult {
        let app = TestApp::spawn_with(Options {
            relay: false,
            ..Options::default()
        })
        .await?;
        let (alice, gus) = (app.login(ALICE).await?, app.login(GUS).await?);
        invite(&app, &alice, "moved@acme.test").await?;
        invite(&app, &gus, "own@globex.test").await?;
        let (sealed, index): (Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT email_sealed, email_index FROM app.invitations WHERE tenant_id = $1",
        )
        .bind(app.acme)
        .fetch_one(&mut app.superuser().await?)
        .await?;
        // Copied behind the service's back into a globex invitation, under
        // globex's own key version.
        let mut su = app.superuser().await?;
        let mut tx = sqlx::Connection::begin(&mut su).await?;
        sqlx::query("SELECT tenancy.set_token($1)")
            .bind(app.context_token(app.globex, Uuid::nil()))
            .execute(&mut *tx)
            .await?;
        let planted: Uuid = sqlx::query_scalar(
            "INSERT INTO app.invitations (email_sealed, email_index, key_version, role, token_hash, expires_at)
             VALUES ($1, $2, 1, 'member', decode(repeat('ab', 32), 'hex'), now() + interval '1 day')
             RETURNING id",
        )
        .bind(&sealed)
        .bind(&index)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;

        // It opens as nothing: an error, no address, never garbage.
        let (status, body) = app.get("/api/tenant/invitations", &gus).await?;
        assert_eq!(status, 500, "{body}");
        assert!(!body.to_string().contains("moved@acme.test"), "{body}");
        let state = tenancy_server::AppState::connect(app.config.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = state.db.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        tenancy_server::domain::context::enter(&mut tx, &state.keys, app.globex, Uuid::nil())
            .await?;
        let mut keys = TenantKeys::new(&state.keyring, app.globex);
        let opened = keys
            .open_text(
                &mut tx,
                pii::INVITEE_EMAIL,
                &pii::invitation_row(planted),
                &sealed,
            )
            .await;
        let message = opened.err().map(|e| format!("{e:?}")).unwrap_or_default();
        assert!(
            message.contains("does not decrypt") && message.contains(&planted.to_string()),
            "the error names the row: {message}"
        );
        tx.rollback().await?;
        // Acme's own listing is untouched.
        assert_eq!(pending(&app, &alice).await?, vec!["moved@acme.test"]);
        Ok(())
    }
}

#[tokio::test]
async fn a_mail_of_one_tenant_naming_another_tenants_invitation_is_never_sent() -> TestResult {
    let app = TestApp::spawn().await?;
    let invitation = invite(
        &app,
        &app.login(ALICE).await?,
        "acme.invitee@elsewhere.test",
    )
    .await?;
    let id = invitation["id"].as_str().unwrap_or_default().to_owned();
    // Planted behind the service's back: a globex mail naming acme's invitation.
    let mut su = app.superuser().await?;
    let mut tx = sqlx::Connection::begin(&mut su).await?;
    sqlx::query("SELECT tenancy.set_token($1)")
        .bind(app.context_token(app.globex, Uuid::nil()))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO app.email_outbox (invitation_id, template, subject, body)
         VALUES ($1::uuid, 'invitation', 'planted', 'planted')",
    )
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut error = None;
    for _ in 0..100 {
        error = sqlx::query_scalar(
            "SELECT last_error FROM app.email_outbox WHERE tenant_id = $1 AND attempts > 0",
        )
        .bind(app.globex)
        .fetch_optional(&mut su)
        .await?
        .flatten();
        if error.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let error: String = error.ok_or("the planted mail was never tried")?;
    assert!(error.contains("no longer exists"), "{error}");
    let sent: i64 = app
        .scalar("SELECT count(*) FROM app.email_outbox WHERE subject = 'planted' AND sent_at IS NOT NULL")
        .await?;
    assert_eq!(sent, 0);
    Ok(())
}

#[tokio::test]
async fn a_rotation_reseals_addresses_and_their_index_finds_them_throughout() -> TestResult {
    // No background jobs: the resealing is run here, step by step.
    let app = TestApp::spawn_with(Options {
        relay: false,
        ..Options::default()
    })
    .await?;
    let alice = app.login(ALICE).await?;
    invite(&app, &alice, "rotated@elsewhere.test").await?;
    invite(&app, &alice, "kept@elsewhere.test").await?;
    let (status, rotated) = app
        .post("/api/tenant/data-key/rotate", &alice, json!({}))
        .await?;
    assert_eq!(status, 202, "{rotated}");
    assert_eq!(rotated["resealing"], 2, "{rotated}");

    // Mid-rotation: the index under the retired version still finds the
    // pending invitation, whatever the case of the address.
    invite(&app, &alice, "ROTATED@elsewhere.test").await?;
    let mut addresses = pending(&app, &alice).await?;
    addresses.sort();
    assert_eq!(addresses, ["ROTATED@elsewhere.test", "kept@elsewhere.test"]);

    let state = tenancy_server::AppState::connect(app.config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let resealed = tenancy_server::jobs::keys::reseal_pass(&state).await?;
    assert_eq!(resealed, 2, "the pending one and the replaced one");
    let rows = stored(&app, app.acme).await?;
    assert!(rows.iter().all(|r| r.3 == Some(2)), "all under version 2");
    let (_, status) = app.get("/api/tenant/data-key", &alice).await?;
    assert_eq!(status["resealing"], 0, "{status}");
    assert_eq!(status["sealed"], 3, "{status}");
    assert!(
        status["versions"][0]["destroyed_at"].is_string(),
        "version 1 destroyed once nothing needs it: {status}"
    );

    // After it: the new index finds it, and the link still works.
    invite(&app, &alice, "kept@ELSEWHERE.test").await?;
    let mut addresses = pending(&app, &alice).await?;
    addresses.sort();
    assert_eq!(addresses, ["ROTATED@elsewhere.test", "kept@ELSEWHERE.test"]);
    let token = app.invitation_token("ROTATED@elsewhere.test").await?;
    let (status, accepted) = app.accept(&token, "plum-harbour-window-17").await?;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["email"], "ROTATED@elsewhere.test");
    Ok(())
}

#[tokio::test]
async fn addresses_stored_in_plain_before_sealing_get_sealed_by_the_key_job() -> TestResult {
    let app = TestApp::spawn_with(Options {
        relay: false,
        ..Options::default()
    })
    .await?;
    let alice = app.login(ALICE).await?;
    // A row as written before addresses were sealed (no trigger then).
    let mut su = app.superuser().await?;
    let mut tx = sqlx::Connection::begin(&mut su).await?;
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT tenancy.set_token($1)")
        .bind(app.context_token(app.acme, Uuid::nil()))
        .execute(&mut *tx)
        .await?;
    let (secret, digest) = tenancy_server::domain::sessions::new_secret();
    sqlx::query(
        "INSERT INTO app.invitations (tenant_id, email, role, token_hash, expires_at)
         VALUES ($1, 'Old.Style@elsewhere.test', 'member', $2, now() + interval '1 day')",
    )
    .bind(app.acme)
    .bind(&digest[..])
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    assert_eq!(pending(&app, &alice).await?, ["Old.Style@elsewhere.test"]);
    // Its link is not honoured: the row was bound to none.
    let (status, _) = app
        .accept(&format!("{}.{secret}", app.acme), "plum-harbour-window-17")
        .await?;
    assert_eq!(status, 404);

    let state = tenancy_server::AppState::connect(app.config.clone())
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(tenancy_server::jobs::keys::reseal_pass(&state).await?, 1);
    let rows = stored(&app, app.acme).await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, None, "the plain address is gone");
    assert!(rows[0].1.is_some() && rows[0].2.is_some());
    assert!(
        pending(&app, &alice).await?.is_empty(),
        "revoked: it must be sent again"
    );
    // Sent again: a sealed invitation, found by its blind index next time.
    invite(&app, &alice, "old.style@elsewhere.test").await?;
    invite(&app, &alice, "OLD.style@elsewhere.test").await?;
    assert_eq!(pending(&app, &alice).await?, ["OLD.style@elsewhere.test"]);
    assert_eq!(tenancy_server::jobs::keys::reseal_pass(&state).await?, 0);
    Ok(())
}
