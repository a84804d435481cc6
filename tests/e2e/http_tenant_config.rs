//! A tenant's configuration (seed 002 REQ-MT-B005): defaults, validation,
//! versions and restore, branding, and one store loaded per request.

use reqwest::Method;
use serde_json::{json, Value};
use tenancy_tests::server::{TestApp, ALICE, BOB, CAROL, ERIN, GUS, PASSWORD};
use tenancy_tests::TestResult;

#[tokio::test]
async fn configuration_defaults_validation_versions_and_restore() -> TestResult {
    let app = TestApp::spawn().await?;
    let erin = app.login(ERIN).await?;
    let bob = app.login(BOB).await?;
    let (status, body) = app.get("/api/tenant/config", &erin).await?;
    assert_eq!(status, 200);
    assert_eq!(body["version"], 0);
    assert_eq!(body["config"]["locale"], "en-US", "defaults apply");
    assert_eq!(body["config"]["audit_retention_days"], 365);
    let (status, _) = app.get("/api/tenant/config", &bob).await?;
    assert_eq!(status, 403, "members do not read the configuration");
    let (status, _) = app
        .put("/api/tenant/config", &bob, json!({"locale": "fr-FR"}))
        .await?;
    assert_eq!(status, 403);

    let (status, v1) = app
        .put("/api/tenant/config", &erin, json!({"locale": "fr-FR"}))
        .await?;
    assert_eq!((status, v1["version"].clone()), (200, json!(1)), "{v1}");
    let (_, v2) = app
        .put(
            "/api/tenant/config",
            &erin,
            json!({"timezone": "Europe/Paris", "locale": "de-DE"}),
        )
        .await?;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["config"]["timezone"], "Europe/Paris");

    let (status, bad) = app
        .put(
            "/api/tenant/config",
            &erin,
            json!({"colour": "red", "audit_retention_days": "x", "locale": "french"}),
        )
        .await?;
    assert_eq!(status, 422);
    let error = bad["error"].as_str().unwrap_or_default();
    for key in ["colour: unknown key", "audit_retention_days", "locale"] {
        assert!(error.contains(key), "names {key}: {error}");
    }
    for body in [json!([1]), json!({})] {
        let (status, _) = app.put("/api/tenant/config", &erin, body).await?;
        assert_eq!(status, 422);
    }
    let (_, current) = app.get("/api/tenant/config", &erin).await?;
    assert_eq!(current["version"], 2, "nothing changed by bad input");

    let (_, history) = app.get("/api/tenant/config/versions", &erin).await?;
    assert_eq!(history.as_array().map(Vec::len), Some(2));
    assert_eq!(
        history[0]["changes"]["locale"],
        json!({"from": "fr-FR", "to": "de-DE"})
    );
    let (status, one) = app.get("/api/tenant/config/versions/1", &erin).await?;
    assert_eq!(
        (status, one["value"]["locale"].clone()),
        (200, json!("fr-FR"))
    );
    let (status, _) = app.get("/api/tenant/config/versions/99", &erin).await?;
    assert_eq!(status, 404);

    let (status, restored) = app
        .call(
            Method::POST,
            "/api/tenant/config/versions/1/restore",
            Some(&erin),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(
        (
            restored["version"].clone(),
            restored["restored_from"].clone()
        ),
        (json!(3), json!(1))
    );
    let (_, current) = app.get("/api/tenant/config", &erin).await?;
    assert_eq!(
        (
            current["config"]["locale"].clone(),
            current["config"]["timezone"].clone()
        ),
        (json!("fr-FR"), json!("UTC"))
    );
    assert_eq!(
        app.audit_actions(app.acme).await?[..3],
        ["config.restored", "config.updated", "config.updated"]
    );
    // Globex's configuration is its own.
    let (_, globex) = app
        .get("/api/tenant/config", &app.login(GUS).await?)
        .await?;
    assert_eq!(
        (
            globex["version"].clone(),
            globex["config"]["locale"].clone()
        ),
        (json!(0), json!("en-US"))
    );
    Ok(())
}

#[tokio::test]
async fn branding_is_validated_versioned_and_restorable() -> TestResult {
    let app = TestApp::spawn().await?;
    let erin = app.login(ERIN).await?;
    let bob = app.login(BOB).await?;
    let (status, body) = app.get("/api/tenant/branding", &bob).await?;
    assert_eq!(status, 200, "every member sees the branding");
    assert_eq!(
        body,
        json!({"display_name": "Acme Corp", "logo_url": null, "primary_color": null})
    );
    let (status, _) = app
        .put(
            "/api/tenant/branding",
            &bob,
            json!({"primary_color": "#000000"}),
        )
        .await?;
    assert_eq!(status, 403);

    let (status, body) = app
        .put(
            "/api/tenant/branding",
            &erin,
            json!({"primary_color": "#112233", "logo_url": "https://cdn.acme.test/logo.png"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["branding"]["primary_color"], "#112233");
    for bad in [
        json!({"primary_color": "red"}),
        json!({"logo_url": "javascript:alert(1)"}),
        // An https URL without markup only.
        json!({"logo_url": "http://cdn.acme.test/logo.png"}),
        json!({"logo_url": "https://x.test/\"><script>alert(1)</script>"}),
        json!({"logo_url": "https://x.test/a b.png"}),
        json!({"display_name": "  "}),
        json!({"font": "Comic Sans"}),
        json!({}),
    ] {
        let (status, answer) = app.put("/api/tenant/branding", &erin, bad.clone()).await?;
        assert_eq!(status, 422, "{bad}: {answer}");
    }
    let (_, second) = app
        .put(
            "/api/tenant/branding",
            &erin,
            json!({"display_name": "ACME", "primary_color": ""}),
        )
        .await?;
    assert_eq!(
        second["branding"],
        json!({"display_name": "ACME", "logo_url": "https://cdn.acme.test/logo.png", "primary_color": null})
    );
    let first = second["version"].as_i64().unwrap_or_default() - 1;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/tenant/config/versions/{first}/restore"),
            Some(&erin),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let (_, now) = app.get("/api/tenant/branding", &bob).await?;
    assert_eq!(
        now,
        json!({"display_name": "Acme Corp", "logo_url": "https://cdn.acme.test/logo.png", "primary_color": "#112233"})
    );
    let (_, globex) = app
        .get("/api/tenant/branding", &app.login(GUS).await?)
        .await?;
    assert_eq!(globex["primary_color"], Value::Null, "globex untouched");
    assert_eq!(
        app.audit_actions(app.acme).await?[..3],
        ["config.restored", "branding.updated", "branding.updated"]
    );
    assert!(
        app.audit_actions(app.globex).await?.is_empty(),
        "nothing of it in globex's trail"
    );
    Ok(())
}

#[tokio::test]
async fn one_configuration_store_and_each_tenant_gets_its_own() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let gus = app.login(GUS).await?;
    let (status, body) = app
        .put(
            "/api/tenant/config",
            &alice,
            json!({"session_timeout_minutes": 5, "locale": "fr-FR"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    // The same document through settings, and as every request loads it.
    let (_, settings) = app.get("/api/tenant/settings", &alice).await?;
    assert_eq!(
        (&settings["session_timeout_minutes"], &settings["locale"]),
        (&json!(5), &json!("fr-FR"))
    );
    let (_, theirs) = app.get("/api/tenant/config", &gus).await?;
    assert_eq!(
        (
            &theirs["config"]["session_timeout_minutes"],
            &theirs["config"]["locale"]
        ),
        (&json!(60), &json!("en-US")),
        "globex keeps the defaults"
    );

    // The keys take effect: token lifetimes per tenant, switching included.
    let expires = |body: &Value| body["expires_in"].clone();
    assert_eq!(expires(&app.login_body(BOB, PASSWORD).await?.1), 300);
    assert_eq!(expires(&app.login_body(GUS, PASSWORD).await?.1), 600);
    let mut carol = app.login(CAROL).await?;
    for (tenant, lifetime) in [(app.acme, 300), (app.globex, 600), (app.acme, 300)] {
        let (status, body) = app
            .post(
                "/auth/switch-tenant",
                &carol,
                json!({ "tenant_id": tenant }),
            )
            .await?;
        assert_eq!((status, expires(&body)), (200, json!(lifetime)), "{body}");
        // Each switch replaces the session's token.
        carol = body["access_token"].as_str().unwrap_or_default().to_owned();
    }

    // Settings written whole are checked and versioned like the rest.
    for (path, bad) in [
        (
            "/api/tenant/settings",
            json!({"session_timeout_minutes": "soon"}),
        ),
        ("/api/tenant/settings", json!({"app_theme": "dark\u{0}"})),
        (
            "/api/tenant/config",
            json!({"timezone": "Europe/Paris\u{0}"}),
        ),
    ] {
        let (status, body) = app.put(path, &alice, bad).await?;
        assert_eq!(status, 422, "{path}: {body}");
    }
    let (status, body) = app
        .put(
            "/api/tenant/settings",
            &alice,
            json!({"session_timeout_minutes": 10, "app_theme": "dark"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (_, config) = app.get("/api/tenant/config", &alice).await?;
    assert_eq!(config["config"]["session_timeout_minutes"], 10);
    assert_eq!(config["version"], 2);
    assert_eq!(expires(&app.login_body(BOB, PASSWORD).await?.1), 600);

    // Restoring version 1 puts it back where requests load it.
    let (status, body) = app
        .call(
            Method::POST,
            "/api/tenant/config/versions/1/restore",
            Some(&alice),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(expires(&app.login_body(BOB, PASSWORD).await?.1), 300);
    let (_, settings) = app.get("/api/tenant/settings", &alice).await?;
    assert_eq!(settings["app_theme"], "dark", "the tenant's own keys stay");
    Ok(())
}
