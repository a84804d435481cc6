//! Sessions and passwords through the API: refresh tokens that rotate,
//! lifetimes from the tenant's configuration, logout of one or all
//! sessions, password change and reset by mail (read from the real mail
//! outbox), hashes upgraded on login. Attacks by an anonymous client (a
//! stolen refresh token used after its owner, reset links reused or
//! expired, telling accounts from unknown addresses) and by a tenant member
//! (ending someone else's session).

use std::time::Instant;

use reqwest::Method;
use serde_json::{json, Value};
use tenancy_tests::server::{claims, TestApp, ALICE, BOB, PASSWORD};
use tenancy_tests::TestResult;

const NEW_PASSWORD: &str = "plum-harbour-window-17";

/// Logs in; returns (access token, refresh token).
async fn session(app: &TestApp, email: &str, password: &str) -> TestResult<(String, String)> {
    let (status, body) = app.login_body(email, password).await?;
    assert_eq!(status, 200, "{body}");
    Ok(tokens(&body))
}

/// The session id of an access token.
fn sid(access: &str) -> String {
    claims(access)["sid"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn tokens(body: &Value) -> (String, String) {
    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    (text("access_token"), text("refresh_token"))
}

async fn refresh(app: &TestApp, refresh_token: &str) -> TestResult<(u16, Value)> {
    app.call(
        Method::POST,
        "/auth/refresh",
        None,
        &[],
        Some(json!({ "refresh_token": refresh_token })),
    )
    .await
}

/// The status of an authenticated read with `access`.
async fn works(app: &TestApp, access: &str) -> TestResult<u16> {
    Ok(app.get("/users/me", access).await?.0)
}

async fn form(app: &TestApp, fields: &[(&str, &str)]) -> TestResult<(u16, Value)> {
    let response = app
        .client
        .post(app.url("/auth/token"))
        .form(fields)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

async fn forgot(app: &TestApp, email: &str) -> TestResult<(u16, Value)> {
    app.call(
        Method::POST,
        "/auth/password/forgot",
        None,
        &[],
        Some(json!({ "email": email })),
    )
    .await
}

async fn reset(app: &TestApp, token: &str, password: &str) -> TestResult<(u16, Value)> {
    app.call(
        Method::POST,
        "/auth/password/reset",
        None,
        &[],
        Some(json!({ "token": token, "new_password": password })),
    )
    .await
}

async fn change(app: &TestApp, access: &str, current: &str, new: &str) -> TestResult<(u16, Value)> {
    app.post(
        "/auth/password",
        access,
        json!({ "current_password": current, "new_password": new }),
    )
    .await
}

mod sessions {
    use super::*;

    #[tokio::test]
    async fn a_refresh_token_rotates_and_the_previous_access_token_ends() -> TestResult {
        let app = TestApp::spawn().await?;
        let (access, refresh_1) = session(&app, ALICE, PASSWORD).await?;
        assert_eq!(refresh_1.len(), 64);
        let issued = claims(&access);
        assert_eq!(issued["user_id"], issued["sub"], "user_id beside sub");

        let (status, body) = refresh(&app, &refresh_1).await?;
        assert_eq!(status, 200, "{body}");
        let (access_2, refresh_2) = tokens(&body);
        assert_ne!(refresh_2, refresh_1, "a new refresh token each time");
        assert_eq!(claims(&access_2)["sid"], issued["sid"], "same session");
        assert_eq!(
            claims(&access_2)["tenant_id"],
            issued["tenant_id"],
            "same tenant"
        );
        assert_eq!(works(&app, &access_2).await?, 200);
        assert_eq!(
            works(&app, &access).await?,
            401,
            "the session's older token"
        );
        Ok(())
    }

    #[tokio::test]
    async fn stock_oauth_clients_use_the_form_encoded_grants() -> TestResult {
        let app = TestApp::spawn().await?;
        let (status, body) = form(
            &app,
            &[
                ("grant_type", "password"),
                ("username", ALICE),
                ("password", PASSWORD),
            ],
        )
        .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "bearer");
        let (access, refresh_token) = tokens(&body);
        assert_eq!(works(&app, &access).await?, 200);
        let (status, body) = form(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh_token),
            ],
        )
        .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(works(&app, &tokens(&body).0).await?, 200);

        for fields in [
            vec![("grant_type", "client_credentials")],
            vec![("grant_type", "password"), ("username", ALICE)],
            vec![("username", ALICE), ("password", PASSWORD)],
        ] {
            let (status, body) = form(&app, &fields).await?;
            assert_eq!(status, 400, "{fields:?}: {body}");
        }
        let (status, _) = form(
            &app,
            &[
                ("grant_type", "password"),
                ("username", ALICE),
                ("password", "wrong password!"),
            ],
        )
        .await?;
        assert_eq!(status, 401);
        Ok(())
    }

    #[tokio::test]
    async fn lifetimes_follow_the_tenants_session_timeout() -> TestResult {
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;
        let (_, settings) = app.get("/api/tenant/settings", &alice).await?;
        let mut settings = settings.as_object().cloned().unwrap_or_default();
        settings.insert("session_timeout_minutes".into(), json!(5));
        let (status, body) = app
            .put("/api/tenant/settings", &alice, Value::Object(settings))
            .await?;
        assert_eq!(status, 200, "{body}");

        // Acme's sessions: tokens of 5 minutes (the service's own is 10),
        // the session idle-expiring 5 minutes after its last refresh.
        let (status, body) = app.login_body(BOB, PASSWORD).await?;
        assert_eq!((status, &body["expires_in"]), (200, &json!(300)), "{body}");
        let (access, _) = tokens(&body);
        let (_, listed) = app.get("/auth/sessions", &access).await?;
        let current = &listed["sessions"][0];
        let idle = chrono::DateTime::parse_from_rfc3339(
            current["idle_expires_at"].as_str().unwrap_or_default(),
        )?;
        let left = idle.signed_duration_since(chrono::Utc::now()).num_seconds();
        assert!((280..=300).contains(&left), "idle timeout in {left} s");

        // Globex keeps the default of 60 minutes: the service's 600 s.
        let (_, body) = app.login_body(tenancy_tests::server::GUS, PASSWORD).await?;
        assert_eq!(body["expires_in"], 600, "{body}");
        Ok(())
    }

    #[tokio::test]
    async fn logout_ends_the_access_and_the_refresh_token() -> TestResult {
        let app = TestApp::spawn().await?;
        let (access, refresh_token) = session(&app, ALICE, PASSWORD).await?;
        let (other, _) = session(&app, ALICE, PASSWORD).await?;
        let (status, _) = app.post("/auth/logout", &access, json!({})).await?;
        assert_eq!(status, 204);
        assert_eq!(works(&app, &access).await?, 401);
        assert_eq!(refresh(&app, &refresh_token).await?.0, 401);
        assert_eq!(works(&app, &other).await?, 200, "other sessions go on");
        Ok(())
    }

    #[tokio::test]
    async fn sessions_are_listed_and_ended_one_or_all() -> TestResult {
        let app = TestApp::spawn().await?;
        let (laptop, laptop_refresh) = session(&app, ALICE, PASSWORD).await?;
        let (phone, phone_refresh) = session(&app, ALICE, PASSWORD).await?;
        let (tablet, _) = session(&app, ALICE, PASSWORD).await?;
        let (status, listed) = app.get("/auth/sessions", &laptop).await?;
        assert_eq!(status, 200);
        let list = listed["sessions"].as_array().cloned().unwrap_or_default();
        assert_eq!(list.len(), 3, "{listed}");
        let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
        assert_eq!(current.len(), 1);
        assert_eq!(current[0]["id"], claims(&laptop)["sid"]);

        let phone_sid = sid(&phone);
        let (status, _) = app
            .delete(&format!("/auth/sessions/{phone_sid}"), &laptop)
            .await?;
        assert_eq!(status, 204);
        assert_eq!(works(&app, &phone).await?, 401);
        assert_eq!(refresh(&app, &phone_refresh).await?.0, 401);
        assert_eq!(works(&app, &laptop).await?, 200);

        let (status, _) = app.post("/auth/logout-all", &tablet, json!({})).await?;
        assert_eq!(status, 204);
        for access in [&laptop, &tablet] {
            assert_eq!(works(&app, access).await?, 401);
        }
        assert_eq!(refresh(&app, &laptop_refresh).await?.0, 401);
        Ok(())
    }

    #[tokio::test]
    async fn a_redis_that_forgot_the_session_loses_nothing() -> TestResult {
        // Redis keeps only the access tokens' revocation entries: when it
        // forgets one (a restart), the access token is refused and the
        // session goes on with its refresh token.
        let app = TestApp::spawn().await?;
        let (access, refresh_token) = session(&app, ALICE, PASSWORD).await?;
        let sid = sid(&access);
        let redis = redis::Client::open(app.config.redis_url.as_str())?;
        let mut redis = redis.get_multiplexed_async_connection().await?;
        let _: () = redis::cmd("DEL")
            .arg(format!("session:{sid}"))
            .query_async(&mut redis)
            .await?;
        assert_eq!(works(&app, &access).await?, 401);
        let (status, body) = refresh(&app, &refresh_token).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(works(&app, &tokens(&body).0).await?, 200);
        Ok(())
    }

    #[tokio::test]
    async fn the_login_history_shows_failed_attempts_to_their_owner_only() -> TestResult {
        let app = TestApp::spawn().await?;
        for _ in 0..2 {
            assert_eq!(app.login_body(BOB, "a guess at bob's").await?.0, 401);
        }
        assert_eq!(app.login_body("nobody@acme.test", "a guess").await?.0, 401);
        let response = app
            .client
            .post(app.url("/auth/token"))
            .header("user-agent", "bob's laptop")
            .json(&json!({"email": BOB, "password": PASSWORD}))
            .send()
            .await?;
        let (access, _) = tokens(&response.json().await?);
        // Recorded after the answer: wait for the three.
        let mut history = Value::Null;
        for _ in 0..50 {
            history = app.get("/users/me/logins", &access).await?.1;
            if history["logins"].as_array().map(Vec::len) == Some(3) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let outcomes: Vec<(Value, Value)> = history["logins"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|e| (e["succeeded"].clone(), e["user_agent"].clone()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            outcomes,
            vec![
                (json!(true), json!("bob's laptop")),
                (json!(false), json!("")),
                (json!(false), json!(""))
            ],
            "{history}"
        );
        assert_eq!(history["logins"][0]["address"], "127.0.0.1");
        let alice = app.login(ALICE).await?;
        let (_, theirs) = app.get("/users/me/logins?limit=200", &alice).await?;
        assert!(
            theirs["logins"]
                .as_array()
                .is_some_and(|l| l.iter().all(|e| e["succeeded"] == true)),
            "alice sees her own: {theirs}"
        );
        assert_eq!(app.get("/users/me/logins?limit=0", &alice).await?.0, 422);
        Ok(())
    }

    #[tokio::test]
    async fn hashes_made_with_older_parameters_are_upgraded_on_login() -> TestResult {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let app = TestApp::spawn().await?;
        let weak = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(8 * 1024, 1, 1, None)?,
        )
        .hash_password(
            PASSWORD.as_bytes(),
            &SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA")?,
        )?
        .to_string();
        let mut su = app.superuser().await?;
        sqlx::query("UPDATE app.users SET password_hash = $1 WHERE email = $2")
            .bind(&weak)
            .bind(ALICE)
            .execute(&mut su)
            .await?;
        session(&app, ALICE, PASSWORD).await?;
        let stored: String =
            sqlx::query_scalar("SELECT password_hash FROM app.users WHERE email = $1")
                .bind(ALICE)
                .fetch_one(&mut su)
                .await?;
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        session(&app, ALICE, PASSWORD).await?;
        let (status, _) = app.login_body(ALICE, "not the password").await?;
        assert_eq!(status, 401);
        Ok(())
    }
}

mod passwords {
    use super::*;

    #[tokio::test]
    async fn a_change_needs_the_current_password_and_ends_the_other_sessions() -> TestResult {
        let app = TestApp::spawn().await?;
        let (here, _) = session(&app, ALICE, PASSWORD).await?;
        let (elsewhere, elsewhere_refresh) = session(&app, ALICE, PASSWORD).await?;

        let (status, body) = change(&app, &here, "not my password", NEW_PASSWORD).await?;
        assert_eq!(
            (status, &body["error"]),
            (403, &json!("The current password is not correct"))
        );
        let (status, body) = change(&app, &here, PASSWORD, "password1").await?;
        assert_eq!(status, 422, "{body}");
        assert_eq!(
            works(&app, &elsewhere).await?,
            200,
            "refusals change nothing"
        );

        let (status, body) = change(&app, &here, PASSWORD, NEW_PASSWORD).await?;
        assert_eq!(status, 204, "{body}");
        assert_eq!(works(&app, &here).await?, 200, "this session goes on");
        assert_eq!(works(&app, &elsewhere).await?, 401);
        assert_eq!(refresh(&app, &elsewhere_refresh).await?.0, 401);
        assert_eq!(app.login_body(ALICE, PASSWORD).await?.0, 401);
        session(&app, ALICE, NEW_PASSWORD).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_reset_by_mail_sets_the_password_and_ends_every_session() -> TestResult {
        let app = TestApp::spawn().await?;
        let (before, before_refresh) = session(&app, ALICE, PASSWORD).await?;
        let (status, answer) = forgot(&app, ALICE).await?;
        assert_eq!(status, 202, "{answer}");
        let token = app.mailed_token(ALICE, "password_reset").await?;

        let (status, body) = reset(&app, &token, "password123").await?;
        assert_eq!(status, 422, "the policy holds: {body}");
        let (status, body) = reset(&app, &token, NEW_PASSWORD).await?;
        assert_eq!(
            status, 200,
            "a refused password does not use the link: {body}"
        );
        assert_eq!(works(&app, &before).await?, 401);
        assert_eq!(refresh(&app, &before_refresh).await?.0, 401);
        assert_eq!(app.login_body(ALICE, PASSWORD).await?.0, 401);
        session(&app, ALICE, NEW_PASSWORD).await?;
        Ok(())
    }
}

mod anonymous_client {
    use super::*;

    #[tokio::test]
    async fn replays_a_stolen_refresh_token_after_its_owner_used_it() -> TestResult {
        let app = TestApp::spawn().await?;
        let (_, stolen) = session(&app, ALICE, PASSWORD).await?;
        // The owner refreshes first; the thief then presents the copy.
        let (_, body) = refresh(&app, &stolen).await?;
        let (owner_access, owner_refresh) = tokens(&body);
        let (status, body) = refresh(&app, &stolen).await?;
        assert_eq!(
            (status, &body["error"]),
            (
                401,
                &json!("Refresh token already used; the session has been ended")
            )
        );
        // The whole family is revoked: the owner signs in again.
        assert_eq!(works(&app, &owner_access).await?, 401);
        assert_eq!(refresh(&app, &owner_refresh).await?.0, 401);
        Ok(())
    }

    #[tokio::test]
    async fn sends_nul_characters_in_addresses() -> TestResult {
        let app = TestApp::spawn().await?;
        let (status, body) = forgot(&app, "a\u{0}b@acme.test").await?;
        assert_eq!(status, 422, "{body}");
        let (status, body) = app.login_body("alice\u{0}@acme.test", PASSWORD).await?;
        assert_eq!(status, 422, "{body}");
        let (status, body) = form(
            &app,
            &[
                ("grant_type", "password"),
                ("username", "a\u{0}b"),
                ("password", PASSWORD),
            ],
        )
        .await?;
        assert_eq!(status, 422, "{body}");
        Ok(())
    }

    #[tokio::test]
    async fn presents_made_up_refresh_tokens() -> TestResult {
        let app = TestApp::spawn().await?;
        for token in [
            "",
            "x",
            &"0".repeat(64),
            &"g".repeat(64),
            &"a".repeat(10_000),
        ] {
            let (status, body) = refresh(&app, token).await?;
            assert_eq!(
                (status, &body["error"]),
                (401, &json!("Invalid or expired refresh token")),
                "{token:.20}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn reuses_or_waits_out_a_reset_link() -> TestResult {
        let app = TestApp::spawn().await?;
        forgot(&app, ALICE).await?;
        let token = app.mailed_token(ALICE, "password_reset").await?;
        assert_eq!(reset(&app, &token, NEW_PASSWORD).await?.0, 200);
        let (status, body) = reset(&app, &token, "another-fine-password-42").await?;
        assert_eq!(
            (status, &body["error"]),
            (404, &json!("Reset link not found")),
            "single use"
        );

        // Bob's link, expired.
        forgot(&app, BOB).await?;
        let token = app.mailed_token(BOB, "password_reset").await?;
        sqlx::query("UPDATE app.password_resets SET expires_at = now() - interval '1 second'")
            .execute(&mut app.superuser().await?)
            .await?;
        assert_eq!(reset(&app, &token, NEW_PASSWORD).await?.0, 404);
        session(&app, BOB, PASSWORD).await?;
        for token in ["", "nope", &"f".repeat(64)] {
            assert_eq!(reset(&app, token, NEW_PASSWORD).await?.0, 404);
        }
        Ok(())
    }

    #[tokio::test]
    async fn tells_accounts_from_unknown_addresses_by_reset_answers() -> TestResult {
        let app = TestApp::spawn().await?;
        let accounts = [
            ALICE,
            BOB,
            tenancy_tests::server::DAVE,
            tenancy_tests::server::ERIN,
            tenancy_tests::server::GUS,
        ];
        let mut known_ms = Vec::new();
        let mut unknown_ms = Vec::new();
        let mut answers = Vec::new();
        for (i, email) in accounts.iter().enumerate() {
            let unknown = format!("nobody{i}@acme.test");
            for (address, times) in [(*email, &mut known_ms), (unknown.as_str(), &mut unknown_ms)] {
                let started = Instant::now();
                let answer = forgot(&app, address).await?;
                times.push(started.elapsed().as_secs_f64() * 1000.0);
                answers.push(answer);
            }
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "one answer: {answers:?}"
        );
        assert_eq!(answers[0].0, 202);
        let (known, unknown) = (
            tenancy_tests::median(known_ms),
            tenancy_tests::median(unknown_ms),
        );
        assert!(
            (known - unknown).abs() < 10.0,
            "median {known:.1} ms for accounts, {unknown:.1} ms for unknown addresses"
        );
        // Mail went to the accounts only (queued after the answer).
        for email in accounts {
            app.mailed_token(email, "password_reset").await?;
        }
        let mailed: Vec<String> = sqlx::query_scalar(
            "SELECT recipient FROM app.email_outbox WHERE template = 'password_reset'",
        )
        .fetch_all(&mut app.superuser().await?)
        .await?;
        assert_eq!(mailed.len(), 5, "{mailed:?}");
        Ok(())
    }
}

mod stolen_access_token {
    use super::*;
    use tenancy_tests::server::CAROL;

    /// Carol (of acme and globex) switches tenant with a token of a session
    /// the database has ended; returns the answer's status.
    async fn switch_after(app: &TestApp, end_session: &str) -> TestResult<u16> {
        let (access, _) = session(app, CAROL, PASSWORD).await?;
        let sid = sid(&access);
        sqlx::query(&format!(
            "UPDATE app.sessions SET {end_session} WHERE id = $1::uuid"
        ))
        .bind(&sid)
        .execute(&mut app.superuser().await?)
        .await?;
        let (status, _) = app
            .post(
                "/auth/switch-tenant",
                &access,
                json!({ "tenant_id": app.acme }),
            )
            .await?;
        Ok(status)
    }

    #[tokio::test]
    async fn keeps_an_ended_session_alive_by_switching_tenants() -> TestResult {
        let app = TestApp::spawn().await?;
        for end in [
            "refreshed_at = now() - interval '2 hours'",
            "expires_at = now() - interval '1 second'",
            "revoked_at = now()",
            "user_id = user_id, id = gen_random_uuid()",
        ] {
            assert_eq!(switch_after(&app, end).await?, 401, "{end}");
        }
        // A live session switches.
        assert_eq!(switch_after(&app, "user_agent = user_agent").await?, 200);
        Ok(())
    }

    #[tokio::test]
    async fn keeps_a_revoked_super_admin_flag_by_switching_tenants() -> TestResult {
        let app = TestApp::spawn().await?;
        let mut su = app.superuser().await?;
        let flag = |on: bool| {
            sqlx::query("UPDATE app.users SET is_super_admin = $1 WHERE email = $2")
                .bind(on)
                .bind(CAROL)
        };
        flag(true).execute(&mut su).await?;
        let (access, _) = session(&app, CAROL, PASSWORD).await?;
        assert_eq!(claims(&access)["super_admin"], true);
        flag(false).execute(&mut su).await?;
        let (status, body) = app
            .post(
                "/auth/switch-tenant",
                &access,
                json!({ "tenant_id": app.acme }),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        let switched = body["access_token"].as_str().unwrap_or_default();
        assert_eq!(
            claims(switched)["super_admin"],
            Value::Null,
            "read again, not copied"
        );
        Ok(())
    }

    #[tokio::test]
    async fn revives_a_logged_out_session_with_a_late_switch() -> TestResult {
        // Logout leaves a marker that no token issue overwrites, and the
        // session itself is ended in the database.
        let app = TestApp::spawn().await?;
        let (access, refresh_token) = session(&app, CAROL, PASSWORD).await?;
        let sid = sid(&access);
        assert_eq!(app.post("/auth/logout", &access, json!({})).await?.0, 204);
        let redis = redis::Client::open(app.config.redis_url.as_str())?;
        let mut redis = redis.get_multiplexed_async_connection().await?;
        let entry: Option<String> = redis::cmd("GET")
            .arg(format!("session:{sid}"))
            .query_async(&mut redis)
            .await?;
        assert_eq!(entry.as_deref(), Some("revoked"));
        let (status, _) = app
            .post(
                "/auth/switch-tenant",
                &access,
                json!({ "tenant_id": app.acme }),
            )
            .await?;
        assert_eq!(status, 401);
        assert_eq!(refresh(&app, &refresh_token).await?.0, 401);
        Ok(())
    }
}

mod tenant_member {
    use super::*;

    #[tokio::test]
    async fn ends_another_users_session() -> TestResult {
        let app = TestApp::spawn().await?;
        let (alice, _) = session(&app, ALICE, PASSWORD).await?;
        let (bob, _) = session(&app, BOB, PASSWORD).await?;
        let sid = sid(&alice);
        let (status, body) = app.delete(&format!("/auth/sessions/{sid}"), &bob).await?;
        assert_eq!((status, &body["error"]), (404, &json!("Session not found")));
        assert_eq!(works(&app, &alice).await?, 200);
        let (_, listed) = app.get("/auth/sessions", &bob).await?;
        assert_eq!(
            listed["sessions"].as_array().map(Vec::len),
            Some(1),
            "bob sees his own session only: {listed}"
        );
        Ok(())
    }
}

mod bootstrap {
    use super::*;
    use tenancy_server::jobs::ops;

    #[tokio::test]
    async fn add_member_sets_the_password_of_an_invited_account_only() -> TestResult {
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;
        let (status, _) = app
            .post(
                "/api/tenant/invitations",
                &alice,
                json!({"email": "invited@globex.test", "role": "member"}),
            )
            .await?;
        assert_eq!(status, 202);
        ops::add_member(
            &app.config,
            app.globex,
            "invited@globex.test",
            NEW_PASSWORD.to_owned(),
            "member",
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
        session(&app, "invited@globex.test", NEW_PASSWORD).await?;

        // An account with a password keeps it.
        ops::add_member(
            &app.config,
            app.globex,
            BOB,
            "a-different-password-9".to_owned(),
            "member",
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
        assert_eq!(app.login_body(BOB, "a-different-password-9").await?.0, 401);
        session(&app, BOB, PASSWORD).await?;
        Ok(())
    }

    #[tokio::test]
    async fn create_super_admin_keeps_an_existing_password() -> TestResult {
        let app = TestApp::spawn().await?;
        ops::create_super_admin(&app.config, ALICE, "a-different-password-9".to_owned())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (access, _) = session(&app, ALICE, PASSWORD).await?;
        assert_eq!(claims(&access)["super_admin"], true);
        Ok(())
    }

    #[tokio::test]
    async fn bootstrap_passwords_pass_the_policy() -> TestResult {
        let app = TestApp::spawn().await?;
        for weak in ["short", "password123", "newco.owner"] {
            let outcome = ops::create_tenant(
                &app.config,
                "newco",
                "NewCo",
                "newco.owner@newco.test",
                weak.to_owned(),
            )
            .await;
            let error = outcome.as_ref().err();
            assert!(
                matches!(
                    error.and_then(|e| e.downcast_ref()),
                    Some(tenancy_server::error::AppError::Validation(_))
                ),
                "{weak}: {outcome:?}"
            );
        }
        let created: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tenancy.tenants WHERE slug = 'newco'")
                .fetch_one(&mut app.superuser().await?)
                .await?;
        assert_eq!(created, 0);
        Ok(())
    }
}

mod signup {
    use super::*;

    async fn signup(
        app: &TestApp,
        email: &str,
        password: &str,
        tenant: &str,
    ) -> TestResult<(u16, Value)> {
        app.call(
            Method::POST,
            "/auth/signup",
            None,
            &[],
            Some(json!({ "email": email, "password": password, "tenant": tenant })),
        )
        .await
    }

    async fn verify(app: &TestApp, token: &str, password: &str) -> TestResult<(u16, Value)> {
        app.call(
            Method::POST,
            "/auth/signup/verify",
            None,
            &[],
            Some(json!({ "token": token, "password": password })),
        )
        .await
    }

    /// Acme's owner opens acme to signups.
    async fn open_acme(app: &TestApp) -> TestResult {
        let alice = app.login(ALICE).await?;
        let (status, body) = app
            .put(
                "/api/tenant/config",
                &alice,
                json!({"allow_public_signup": true}),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        Ok(())
    }

    #[tokio::test]
    async fn a_signup_logs_in_only_after_the_mailed_link() -> TestResult {
        let app = TestApp::spawn().await?;
        let (status, body) = signup(&app, "sam@example.test", NEW_PASSWORD, "acme").await?;
        assert_eq!(
            (status, &body["error"]),
            (403, &json!("This tenant does not accept sign-ups")),
            "closed by default"
        );
        open_acme(&app).await?;
        let (status, body) = signup(&app, "sam@example.test", "password1", "acme").await?;
        assert_eq!(status, 422, "the password policy holds: {body}");
        let (status, body) = signup(&app, "sam@example.test", NEW_PASSWORD, "acme").await?;
        assert_eq!(status, 202, "{body}");
        assert_eq!(
            app.login_body("sam@example.test", NEW_PASSWORD).await?.0,
            401,
            "not before the address is confirmed"
        );
        let token = app
            .mailed_token("sam@example.test", "signup_verification")
            .await?;
        let (status, _) = verify(&app, &token, "another-password-77").await?;
        assert_eq!(status, 401);
        let (status, body) = verify(&app, &token, NEW_PASSWORD).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["tenant_id"], json!(app.acme));
        let (access, _) = session(&app, "sam@example.test", NEW_PASSWORD).await?;
        assert_eq!(claims(&access)["tenant_slug"], "acme");
        let (status, body) = app.get("/api/workspaces", &access).await?;
        assert_eq!(status, 200, "{body}");
        // In acme's trail.
        let alice = app.login(ALICE).await?;
        let (_, trail) = app
            .get("/api/tenant/audit?action=member.signed_up", &alice)
            .await?;
        assert_eq!(trail["events"][0]["target"], "sam@example.test");
        assert_eq!(
            verify(&app, &token, NEW_PASSWORD).await?.0,
            404,
            "single use"
        );
        Ok(())
    }

    mod anonymous_client {
        use super::*;

        #[tokio::test]
        async fn tells_accounts_from_new_addresses_by_signup_answers() -> TestResult {
            let app = TestApp::spawn().await?;
            open_acme(&app).await?;
            let taken = signup(&app, BOB, NEW_PASSWORD, "acme").await?;
            let new = signup(&app, "new.person@example.test", NEW_PASSWORD, "acme").await?;
            assert_eq!(taken, new, "one answer");
            app.mailed_token("new.person@example.test", "signup_verification")
                .await?;
            let to_bob: i64 =
                sqlx::query_scalar("SELECT count(*) FROM app.email_outbox WHERE recipient = $1")
                    .bind(BOB)
                    .fetch_one(&mut app.superuser().await?)
                    .await?;
            assert_eq!(to_bob, 0, "no mail to an existing account");
            session(&app, BOB, PASSWORD).await?;
            assert_eq!(app.login_body(BOB, NEW_PASSWORD).await?.0, 401);
            Ok(())
        }

        #[tokio::test]
        async fn signs_up_with_someone_elses_address_first() -> TestResult {
            // The stranger's password is never activated by the victim's
            // click: the link needs the password chosen at signup.
            let app = TestApp::spawn().await?;
            open_acme(&app).await?;
            let victim = "vic@example.test";
            signup(&app, victim, "stranger-knows-this-1", "acme").await?;
            let stranger_link = app.mailed_token(victim, "signup_verification").await?;
            assert_eq!(verify(&app, &stranger_link, NEW_PASSWORD).await?.0, 401);
            // The victim signs up themselves: the stranger's password is
            // gone, so the stranger's link no longer works for the stranger.
            signup(&app, victim, NEW_PASSWORD, "acme").await?;
            let (status, _) = verify(&app, &stranger_link, "stranger-knows-this-1").await?;
            assert_eq!(status, 401);
            let mut waited = 0;
            let own_link = loop {
                let link = app.mailed_token(victim, "signup_verification").await?;
                if link != stranger_link || waited > 50 {
                    break link;
                }
                waited += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            };
            assert_eq!(verify(&app, &own_link, NEW_PASSWORD).await?.0, 200);
            assert_eq!(
                app.login_body(victim, "stranger-knows-this-1").await?.0,
                401
            );
            let (status, _) = verify(&app, &stranger_link, "stranger-knows-this-1").await?;
            assert_eq!(status, 404, "dead once the account is confirmed");
            session(&app, victim, NEW_PASSWORD).await?;
            Ok(())
        }

        #[tokio::test]
        async fn uses_expired_or_made_up_signup_links() -> TestResult {
            let app = TestApp::spawn().await?;
            open_acme(&app).await?;
            signup(&app, "late@example.test", NEW_PASSWORD, "acme").await?;
            let token = app
                .mailed_token("late@example.test", "signup_verification")
                .await?;
            sqlx::query("UPDATE app.signups SET expires_at = now() - interval '1 second'")
                .execute(&mut app.superuser().await?)
                .await?;
            for token in [token.as_str(), "", "x", &"0".repeat(64)] {
                let (status, body) = verify(&app, token, NEW_PASSWORD).await?;
                assert_eq!(
                    (status, &body["error"]),
                    (404, &json!("Signup link not found")),
                    "{token:.12}"
                );
            }
            assert_eq!(
                app.login_body("late@example.test", NEW_PASSWORD).await?.0,
                401
            );
            // A link mailed before the tenant closed signups no longer works.
            signup(&app, "closing@example.test", NEW_PASSWORD, "acme").await?;
            let token = app
                .mailed_token("closing@example.test", "signup_verification")
                .await?;
            let alice = app.login(ALICE).await?;
            let (status, _) = app
                .put(
                    "/api/tenant/config",
                    &alice,
                    json!({"allow_public_signup": false}),
                )
                .await?;
            assert_eq!(status, 200);
            assert_eq!(verify(&app, &token, NEW_PASSWORD).await?.0, 404);
            let (status, _) = signup(&app, "x@example.test", NEW_PASSWORD, "globex").await?;
            assert_eq!(status, 403, "globex does not accept sign-ups");
            let (status, _) = signup(&app, "x@example.test", NEW_PASSWORD, "nope").await?;
            assert_eq!(status, 403);
            Ok(())
        }
    }
}

/// Signup for a tenant of one's own, where the operator enables it.
mod platform_signup {
    use super::*;
    use tenancy_tests::server::Options;

    async fn spawn() -> TestResult<TestApp> {
        TestApp::spawn_with(Options {
            platform_signup: true,
            ..Options::default()
        })
        .await
    }

    async fn signup(app: &TestApp, email: &str, slug: &str) -> TestResult<(u16, Value)> {
        app.call(
            Method::POST,
            "/auth/signup/tenant",
            None,
            &[],
            Some(json!({"email": email, "password": NEW_PASSWORD, "slug": slug, "name": "New Co"})),
        )
        .await
    }

    async fn verify(app: &TestApp, token: &str, password: &str) -> TestResult<(u16, Value)> {
        app.call(
            Method::POST,
            "/auth/signup/tenant/verify",
            None,
            &[],
            Some(json!({ "token": token, "password": password })),
        )
        .await
    }

    async fn status_of(app: &TestApp, slug: &str) -> TestResult<Option<String>> {
        let mut su = app.superuser().await?;
        Ok(
            sqlx::query_scalar("SELECT status FROM tenancy.tenants WHERE slug = $1")
                .bind(slug)
                .fetch_optional(&mut su)
                .await?,
        )
    }

    #[tokio::test]
    async fn a_new_tenant_exists_once_its_owner_verifies() -> TestResult {
        let app = spawn().await?;
        let founder = "founder@newco.test";
        let (status, body) = signup(&app, founder, "newco").await?;
        assert_eq!(status, 202, "{body}");
        // Reserved, not usable: inactive, and the address cannot log in.
        assert_eq!(status_of(&app, "newco").await?.as_deref(), Some("inactive"));
        assert_eq!(app.login_body(founder, NEW_PASSWORD).await?.0, 401);
        let (status, body) = signup(&app, "other@example.test", "newco").await?;
        assert_eq!(status, 409, "the slug is taken: {body}");

        let token = app.mailed_token(founder, "signup_verification").await?;
        assert_eq!(verify(&app, &token, "not-the-chosen-one-9").await?.0, 401);
        let (status, created) = verify(&app, &token, NEW_PASSWORD).await?;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["role"], "owner");
        assert_eq!(status_of(&app, "newco").await?.as_deref(), Some("active"));
        // Single use.
        assert_eq!(verify(&app, &token, NEW_PASSWORD).await?.0, 404);

        let (status, login) = app.login_body(founder, NEW_PASSWORD).await?;
        assert_eq!(status, 200, "{login}");
        let token = login["access_token"].as_str().unwrap_or_default();
        let (status, tenant) = app.get("/api/tenant", token).await?;
        assert_eq!((status, tenant["slug"].clone()), (200, json!("newco")));
        // Provisioned like any tenant: a first workspace, the owner's.
        let (status, workspaces) = app.get("/api/workspaces", token).await?;
        assert_eq!(status, 200);
        assert_eq!(workspaces[0]["name"], "General", "{workspaces}");
        // The scheduled removal of the unverified tenant is cancelled.
        let mut su = app.superuser().await?;
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM app.tenant_deletions d JOIN tenancy.tenants t ON t.id = d.tenant
             WHERE t.slug = 'newco'",
        )
        .fetch_one(&mut su)
        .await?;
        assert_eq!(pending, 0);
        Ok(())
    }

    #[tokio::test]
    async fn is_refused_unless_the_operator_enables_it() -> TestResult {
        let app = TestApp::spawn().await?;
        let (status, _) = signup(&app, "founder@newco.test", "newco").await?;
        assert_eq!(status, 403);
        assert_eq!(status_of(&app, "newco").await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn an_unverified_tenant_is_removed_when_its_link_expires() -> TestResult {
        let app = spawn().await?;
        assert_eq!(signup(&app, "late@newco.test", "lateco").await?.0, 202);
        let mut su = app.superuser().await?;
        sqlx::raw_sql(
            "UPDATE app.tenant_deletions SET purge_after = now() - interval '1 second';
             UPDATE app.tenant_signups SET expires_at = now() - interval '1 second'",
        )
        .execute(&mut su)
        .await?;
        let removed = app.purge_due().await?;
        assert_eq!(removed, 1);
        assert_eq!(status_of(&app, "lateco").await?, None);
        // The slug is free again.
        assert_eq!(signup(&app, "late@newco.test", "lateco").await?.0, 202);
        Ok(())
    }

    #[tokio::test]
    async fn reserved_names_and_piles_of_pending_signups_are_refused() -> TestResult {
        let app = spawn().await?;
        let (status, body) = signup(&app, "x@newco.test", "admin").await?;
        assert_eq!(status, 409, "{body}");
        assert_eq!(status_of(&app, "admin").await?, None);
        for slug in ["one-co", "two-co", "three-co"] {
            assert_eq!(signup(&app, "busy@newco.test", slug).await?.0, 202);
        }
        let (status, _) = signup(&app, "busy@newco.test", "four-co").await?;
        assert_eq!(status, 429);
        assert_eq!(status_of(&app, "four-co").await?, None);
        Ok(())
    }

    /// Someone signs up with the address of an existing account.
    mod anonymous_client {
        use super::*;

        #[tokio::test]
        async fn activates_a_reservation_the_platform_suspended() -> TestResult {
            let app = spawn().await?;
            assert_eq!(signup(&app, "spam@newco.test", "spamco").await?.0, 202);
            let token = app
                .mailed_token("spam@newco.test", "signup_verification")
                .await?;
            let id: uuid::Uuid = app
                .scalar("SELECT id FROM tenancy.tenants WHERE slug = 'spamco'")
                .await?;
            let root = app.login(tenancy_tests::server::ROOT).await?;
            let (status, body) = app
                .post(
                    &format!("/api/admin/tenants/{id}/suspend"),
                    &root,
                    json!({}),
                )
                .await?;
            assert_eq!(status, 200, "{body}");
            assert_eq!(verify(&app, &token, NEW_PASSWORD).await?.0, 404);
            assert_eq!(
                status_of(&app, "spamco").await?.as_deref(),
                Some("suspended")
            );
            Ok(())
        }

        #[tokio::test]
        async fn makes_an_existing_account_owner_without_its_password() -> TestResult {
            let app = spawn().await?;
            // The answer is the same as for a new address.
            let (status, body) = signup(&app, BOB, "bobco").await?;
            assert_eq!(status, 202, "{body}");
            let token = app.mailed_token(BOB, "signup_verification").await?;
            // The password chosen at signup does not confirm for bob...
            let (status, body) = verify(&app, &token, NEW_PASSWORD).await?;
            assert_eq!(status, 401, "{body}");
            assert_eq!(status_of(&app, "bobco").await?.as_deref(), Some("inactive"));
            // ...bob's own does, and leaves his password as it was.
            let (status, created) = verify(&app, &token, PASSWORD).await?;
            assert_eq!(status, 201, "{created}");
            assert_eq!(app.login_body(BOB, PASSWORD).await?.0, 200);
            assert_eq!(app.login_body(BOB, NEW_PASSWORD).await?.0, 401);
            Ok(())
        }
    }
}
