//! Invitations with consent, through the API, with the mail written to the
//! real mail outbox: a new address chooses a password, an existing account
//! confirms with its own, and only then is it a member. Attacks by a tenant
//! admin (learning whether an address has an account) and by an anonymous
//! client (links used twice, expired, revoked, moved to another tenant).

use serde_json::{json, Value};
use tenancy_tests::server::{TestApp, ALICE, BOB, ERIN, GUS, PASSWORD};
use tenancy_tests::TestResult;

const NEW_PASSWORD: &str = "plum-harbour-window-17";

async fn invite(app: &TestApp, token: &str, email: &str, role: &str) -> TestResult<(u16, Value)> {
    app.post(
        "/api/tenant/invitations",
        token,
        json!({"email": email, "role": role}),
    )
    .await
}

async fn member_emails(app: &TestApp, token: &str) -> TestResult<Vec<String>> {
    let (status, body) = app.get("/api/tenant/members", token).await?;
    assert_eq!(status, 200, "{body}");
    Ok(body
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x["email"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

#[tokio::test]
async fn a_new_address_accepts_chooses_a_password_and_logs_in() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let (status, invitation) = invite(&app, &alice, "new.hire@acme.test", "member").await?;
    assert_eq!(status, 202, "{invitation}");
    assert_eq!(invitation["email"], "new.hire@acme.test");
    assert_eq!(invitation["role"], "member");
    assert!(!member_emails(&app, &alice)
        .await?
        .contains(&"new.hire@acme.test".to_owned()));
    let (status, pending) = app.get("/api/tenant/invitations", &alice).await?;
    assert_eq!(status, 200);
    assert_eq!(pending[0]["id"], invitation["id"]);

    let token = app.invitation_token("new.hire@acme.test").await?;
    // Not before a password is chosen, and not a weak one.
    for weak in ["short", "password123", "new.hire@acme.test"] {
        let (status, body) = app.accept(&token, weak).await?;
        assert_eq!(status, 422, "{weak}: {body}");
    }
    let (status, body) = app.accept(&token, NEW_PASSWORD).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenant_id"], json!(app.acme));
    assert!(member_emails(&app, &alice)
        .await?
        .contains(&"new.hire@acme.test".to_owned()));

    let (status, login) = app.login_body("new.hire@acme.test", NEW_PASSWORD).await?;
    assert_eq!(status, 200);
    assert_eq!(login["tenant_id"], json!(app.acme));

    // The link works once.
    let (status, _) = app.accept(&token, NEW_PASSWORD).await?;
    assert_eq!(status, 404);
    // Sent, accepted: both in the tenant's own trail.
    let (_, trail) = app.get("/api/tenant/audit?limit=50", &alice).await?;
    let actions: Vec<&str> = trail["events"]
        .as_array()
        .or(trail.as_array())
        .map(|e| e.iter().filter_map(|x| x["action"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        actions.contains(&"invitation.sent") && actions.contains(&"invitation.accepted"),
        "{trail}"
    );
    Ok(())
}

#[tokio::test]
async fn an_existing_account_joins_only_when_it_accepts_with_its_own_password() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let (status, body) = invite(&app, &alice, GUS, "member").await?;
    assert_eq!(status, 202, "{body}");
    // Nothing changed for gus yet: not a member, and his login keeps its tenant.
    assert!(!member_emails(&app, &alice).await?.contains(&GUS.to_owned()));
    let (_, login) = app.login_body(GUS, PASSWORD).await?;
    assert_eq!(login["tenant_id"], json!(app.globex), "{login}");

    let token = app.invitation_token(GUS).await?;
    // Holding the link is not enough: the account's own password is.
    let (status, _) = app.accept(&token, "a-guess-at-gus-password").await?;
    assert_eq!(status, 401);
    assert!(!member_emails(&app, &alice).await?.contains(&GUS.to_owned()));
    let (status, body) = app.accept(&token, PASSWORD).await?;
    assert_eq!(status, 200, "{body}");
    assert!(member_emails(&app, &alice).await?.contains(&GUS.to_owned()));
    // Gus's password is unchanged and he now has two tenants.
    let (_, login) = app.login_body(GUS, PASSWORD).await?;
    assert_eq!(
        login["tenants"].as_array().map(Vec::len),
        Some(2),
        "{login}"
    );
    Ok(())
}

#[tokio::test]
async fn invitations_are_managed_by_admins_and_owners_only() -> TestResult {
    let app = TestApp::spawn().await?;
    let (bob, erin) = (app.login(BOB).await?, app.login(ERIN).await?);
    let (status, _) = invite(&app, &bob, "x@acme.test", "member").await?;
    assert_eq!(status, 403, "members do not invite");
    let (status, _) = app.get("/api/tenant/invitations", &bob).await?;
    assert_eq!(status, 403, "nor list invitations");
    let (status, _) = invite(&app, &erin, "boss@acme.test", "owner").await?;
    assert_eq!(status, 403, "only owners invite owners");
    let (status, body) = invite(&app, &erin, BOB, "member").await?;
    assert_eq!(
        (status, body["error"].clone()),
        (409, json!("Already a member of this tenant"))
    );
    let (status, body) = invite(&app, &erin, "not an email", "member").await?;
    assert_eq!(status, 422, "{body}");
    Ok(())
}

mod tenant_admin {
    use super::*;

    #[tokio::test]
    async fn learns_whether_an_address_has_an_account() -> TestResult {
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;
        // gus has an account (another tenant's owner); nobody@ has none.
        let (existing_status, existing) = invite(&app, &alice, GUS, "member").await?;
        let (new_status, new) = invite(&app, &alice, "nobody@elsewhere.test", "member").await?;
        assert_eq!((existing_status, new_status), (202, 202));
        let keys = |v: &Value| {
            let mut k: Vec<String> = v
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            k.sort();
            k
        };
        assert_eq!(keys(&existing), keys(&new));
        // The mails say the same, but for the address and the link.
        let bodies = app.invitation_mails().await?;
        let normalise = |(recipient, body): &(String, String)| {
            let token = body
                .split("token=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_default();
            body.replace(token, "TOKEN")
                .replace(recipient.as_str(), "EMAIL")
        };
        assert_eq!(bodies.len(), 2);
        assert_eq!(normalise(&bodies[0]), normalise(&bodies[1]));
        Ok(())
    }
}

mod anonymous_client {
    use super::*;

    async fn invited(app: &TestApp, email: &str) -> TestResult<(String, String)> {
        let alice = app.login(ALICE).await?;
        let (status, body) = invite(app, &alice, email, "member").await?;
        assert_eq!(status, 202, "{body}");
        Ok((
            body["id"].as_str().unwrap_or_default().to_owned(),
            app.invitation_token(email).await?,
        ))
    }

    #[tokio::test]
    async fn uses_links_that_are_expired_revoked_replaced_or_made_up() -> TestResult {
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;

        // Expired.
        let (id, token) = invited(&app, "late@acme.test").await?;
        sqlx::query("UPDATE app.invitations SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
            .bind(&id)
            .execute(&mut app.superuser().await?)
            .await?;
        assert_eq!(app.accept(&token, NEW_PASSWORD).await?.0, 404);

        // Revoked.
        let (id, token) = invited(&app, "revoked@acme.test").await?;
        let (status, _) = app
            .call(
                reqwest::Method::DELETE,
                &format!("/api/tenant/invitations/{id}"),
                Some(&alice),
                &[],
                None,
            )
            .await?;
        assert_eq!(status, 204);
        assert_eq!(app.accept(&token, NEW_PASSWORD).await?.0, 404);

        // Replaced by a resend: the old link is dead, the new one works.
        let (id, old) = invited(&app, "resent@acme.test").await?;
        let (status, _) = app
            .post(
                &format!("/api/tenant/invitations/{id}/resend"),
                &alice,
                json!({}),
            )
            .await?;
        assert_eq!(status, 202);
        let new = app.invitation_token("resent@acme.test").await?;
        assert_ne!(old, new);
        assert_eq!(app.accept(&old, NEW_PASSWORD).await?.0, 404);

        // Moved to another tenant, truncated, made up.
        let secret = new.split_once('.').map(|(_, s)| s).unwrap_or_default();
        for forged in [
            format!("{}.{secret}", app.globex),
            format!("{}.{secret}", uuid::Uuid::new_v4()),
            new[..new.len() - 1].to_owned(),
            format!("{}.{}", app.acme, "0".repeat(64)),
            "garbage".to_owned(),
        ] {
            let (status, body) = app.accept(&forged, NEW_PASSWORD).await?;
            assert_eq!(
                (status, body["error"].clone()),
                (404, json!("Invitation not found")),
                "{forged}"
            );
        }
        let (status, body) = app.accept(&new, NEW_PASSWORD).await?;
        assert_eq!(status, 200, "{body}");
        let (_, members) = app.get("/api/tenant/members", &alice).await?;
        let emails = members.to_string();
        assert!(emails.contains("resent@acme.test"));
        assert!(!emails.contains("late@acme.test") && !emails.contains("revoked@acme.test"));
        Ok(())
    }
}
