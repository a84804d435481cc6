//! Login, claims, switching tenant, logout and revocation (seeds 000, 003, 004).

use reqwest::Method;
use serde_json::json;
use tenancy_tests::server::{claims, TestApp, ALICE, BOB, CAROL, PASSWORD, ROOT};

#[tokio::test]
async fn login_returns_a_token_with_the_tenant_claims() -> tenancy_tests::TestResult {
    let app = TestApp::spawn().await?;
    let (status, body) = app
        .call(
            Method::POST,
            "/auth/token",
            None,
            &[],
            Some(json!({"email": ALICE, "password": PASSWORD})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "bearer");
    let token = body["access_token"].as_str().unwrap_or_default();
    let c = claims(token);
    assert_eq!(c["tenant_id"], json!(app.acme));
    assert_eq!(c["tenant_slug"], "acme");
    assert_eq!(c["email"], ALICE);
    assert!(
        c["workspace_id"].is_string(),
        "alice has a default workspace: {c}"
    );
    for claim in ["sub", "sid", "jti", "iat", "exp", "iss", "aud"] {
        assert!(!c[claim].is_null(), "claim {claim} missing: {c}");
    }
    assert!(
        c.get("tenants").is_none(),
        "a single-tenant user gets no tenants list"
    );

    let (status, me) = app.get("/users/me", token).await?;
    assert_eq!(status, 200);
    assert_eq!(
        (me["email"].clone(), me["tenants"][0]["slug"].clone()),
        (json!(ALICE), json!("acme"))
    );
    assert_eq!(me["tenants"][0]["role"], "owner");
    Ok(())
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_same_401() -> tenancy_tests::TestResult {
    let app = TestApp::spawn().await?;
    let mut answers = Vec::new();
    for (email, password) in [(ALICE, "wrong password"), ("nobody@nowhere.test", PASSWORD)] {
        let (status, body) = app
            .call(
                Method::POST,
                "/auth/token",
                None,
                &[],
                Some(json!({"email": email, "password": password})),
            )
            .await?;
        answers.push((status, body));
    }
    let expected = (
        401,
        json!({"error": "Invalid email or password", "code": "unauthorized"}),
    );
    assert_eq!(answers, [expected.clone(), expected]);
    Ok(())
}

#[tokio::test]
async fn a_user_of_several_tenants_must_select_one() -> tenancy_tests::TestResult {
    let app = TestApp::spawn().await?;
    let token = app.login(CAROL).await?;
    let c = claims(&token);
    assert!(c.get("tenant_id").is_none(), "{c}");
    let slugs: Vec<&str> = c["tenants"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x["slug"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(slugs, ["acme", "globex"]);

    let (status, body) = app.get("/api/workspaces", &token).await?;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": "Tenant context required", "code": "tenant_required"})
        )
    );

    let (status, body) = app
        .post(
            "/auth/switch-tenant",
            &token,
            json!({"tenant_id": app.globex}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let switched = body["access_token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(claims(&switched)["tenant_id"], json!(app.globex));
    assert_eq!(claims(&switched)["sid"], c["sid"], "same session");

    let (status, body) = app.get("/api/workspaces", &switched).await?;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body
        .as_array()
        .map(|w| w.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["General"], "globex's own workspace");

    // The previous token of the session no longer works.
    let (status, body) = app.get("/users/me", &token).await?;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("Token has been revoked"))
    );
    Ok(())
}

#[tokio::test]
async fn switching_to_a_tenant_one_is_not_a_member_of_is_403() -> tenancy_tests::TestResult {
    let app = TestApp::spawn().await?;
    let token = app.login(BOB).await?;
    let (status, body) = app
        .post(
            "/auth/switch-tenant",
            &token,
            json!({"tenant_id": app.globex}),
        )
        .await?;
    assert_eq!((status, body["code"].clone()), (403, json!("forbidden")));
    let (status, _) = app.get("/users/me", &token).await?;
    assert_eq!(status, 200, "a refused switch leaves the token valid");
    Ok(())
}

#[tokio::test]
async fn logout_revokes_the_token() -> tenancy_tests::TestResult {
    let app = TestApp::spawn().await?;
    let token = app.login(ALICE).await?;
    let (status, _) = app
        .call(Method::POST, "/auth/logout", Some(&token), &[], None)
        .await?;
    assert_eq!(status, 204);
    for path in ["/users/me", "/api/workspaces"] {
        let (status, body) = app.get(path, &token).await?;
        assert_eq!(
            (status, body["error"].clone()),
            (401, json!("Token has been revoked")),
            "{path}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn bad_credentials_are_401() -> tenancy_tests::TestResult {
    let app = TestApp::spawn().await?;
    let token = app.login(ALICE).await?;
    let c = claims(&token);
    let sign = |claims: serde_json::Value, secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap_or_default()
    };
    let mut expired = c.clone();
    expired["exp"] = json!(tenancy_token::now() - 600);
    let mut other_tenant = c.clone();
    other_tenant["tenant_id"] = json!(app.globex);
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = {
        use base64::Engine as _;
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(other_tenant.to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let alg_none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(other_tenant.to_string())
        )
    };
    let mut bad_tenant = c.clone();
    bad_tenant["tenant_id"] = json!("1");
    let cases = [
        (
            "invalid tenant_id claim",
            Some(format!(
                "Bearer {}",
                sign(bad_tenant, &app.config.jwt_secret)
            )),
            "Invalid or expired token",
        ),
        (
            "expired",
            Some(format!("Bearer {}", sign(expired, &app.config.jwt_secret))),
            "Invalid or expired token",
        ),
        (
            "wrong key",
            Some(format!(
                "Bearer {}",
                sign(c.clone(), "some-other-secret-some-other-secret")
            )),
            "Invalid or expired token",
        ),
        (
            "tampered",
            Some(format!("Bearer {tampered}")),
            "Invalid or expired token",
        ),
        (
            "alg none",
            Some(format!("Bearer {alg_none}")),
            "Invalid or expired token",
        ),
        (
            "not bearer",
            Some(format!("Basic {token}")),
            "Authorization header must be a bearer token",
        ),
        (
            "empty bearer",
            Some("Bearer ".to_owned()),
            "Authorization header must be a bearer token",
        ),
        ("missing", None, "Missing bearer token"),
    ];
    for (case, header, message) in cases {
        let mut request = app.client.get(app.url("/api/workspaces"));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await?;
        assert_eq!(
            (status, body),
            (401, json!({"error": message, "code": "unauthorized"})),
            "{case}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_super_admin_has_no_tenant_data_access() -> tenancy_tests::TestResult {
    let app = TestApp::spawn().await?;
    let token = app.login(ROOT).await?;
    assert_eq!(claims(&token)["super_admin"], true);
    let (status, _) = app.get("/api/workspaces", &token).await?;
    assert_eq!(status, 400, "no tenant of its own");
    let (status, body) = app
        .call(
            Method::GET,
            "/api/workspaces",
            Some(&token),
            &[("x-tenant-id", &app.acme.to_string())],
            None,
        )
        .await?;
    assert_eq!(
        (status, body["error"].clone()),
        (403, json!("You are not a member of this tenant"))
    );
    Ok(())
}

/// An instance that has just served a token remembers its session as live;
/// a logout through another instance must still end the token there, at
/// once (within the delivery of one announcement, here well under a second).
#[tokio::test]
async fn a_token_logged_out_on_one_instance_is_refused_by_another() -> tenancy_tests::TestResult {
    let app = TestApp::spawn().await?;
    let second = tenancy_tests::server::serve(&app.config).await?;
    let token = app.login(ALICE).await?;
    let on_second = || async {
        let response = app
            .client
            .get(format!("http://{second}/api/workspaces"))
            .bearer_auth(&token)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await?;
        tenancy_tests::TestResult::Ok((status, body))
    };
    // Served twice: the second time from what the instance remembers.
    assert_eq!(on_second().await?.0, 200);
    assert_eq!(on_second().await?.0, 200);

    let (status, _) = app
        .call(Method::POST, "/auth/logout", Some(&token), &[], None)
        .await?;
    assert_eq!(status, 204);
    let logged_out = std::time::Instant::now();
    let mut answer = on_second().await?;
    while answer.0 == 200 && logged_out.elapsed() < std::time::Duration::from_secs(1) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        answer = on_second().await?;
    }
    assert_eq!(
        (answer.0, answer.1["error"].clone()),
        (401, json!("Token has been revoked")),
        "still served {:?} after the logout",
        logged_out.elapsed()
    );
    Ok(())
}
