//! Bad input gets a JSON 4xx that says what was wrong, and changes nothing.

use reqwest::Method;
use serde_json::{json, Value};
use tenancy_tests::server::{TestApp, ALICE};
use tenancy_tests::TestResult;

async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    content_type: &str,
    body: String,
) -> TestResult<(u16, Value)> {
    let response = app
        .client
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

#[tokio::test]
async fn malformed_requests_get_clear_4xx_and_change_nothing() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let (_, before) = app.get("/api/workspaces", &alice).await?;
    let json_ct = "application/json";
    let cases: Vec<(&str, Method, &str, &str, String, u16, &str)> = vec![
        (
            "malformed JSON",
            Method::POST,
            "/api/workspaces",
            json_ct,
            "{\"name\": ".into(),
            400,
            "Malformed JSON body",
        ),
        (
            "not JSON",
            Method::POST,
            "/api/workspaces",
            "text/plain",
            "name=x".into(),
            400,
            "Content-Type must be application/json",
        ),
        (
            "missing field",
            Method::POST,
            "/api/workspaces",
            json_ct,
            "{}".into(),
            422,
            "",
        ),
        (
            "wrong type",
            Method::POST,
            "/api/workspaces",
            json_ct,
            "{\"name\": 42}".into(),
            422,
            "",
        ),
        (
            "unknown field",
            Method::POST,
            "/api/workspaces",
            json_ct,
            "{\"name\": \"x\", \"tenant_id\": \"x\"}".into(),
            422,
            "",
        ),
        (
            "blank name",
            Method::POST,
            "/api/workspaces",
            json_ct,
            "{\"name\": \"   \"}".into(),
            422,
            "name must be 1 to 200 characters",
        ),
        (
            "too long",
            Method::POST,
            "/api/workspaces",
            json_ct,
            json!({"name": "x".repeat(201)}).to_string(),
            422,
            "name must be 1 to 200 characters",
        ),
        (
            "oversized body",
            Method::POST,
            "/api/workspaces",
            json_ct,
            json!({"name": "x".repeat(20_000)}).to_string(),
            413,
            "Request body too large",
        ),
        (
            "malformed uuid",
            Method::GET,
            "/api/workspaces/not-a-uuid",
            json_ct,
            String::new(),
            400,
            "Malformed id in path: expected a UUID",
        ),
        (
            "empty update",
            Method::PATCH,
            "/api/workspaces/00000000-0000-0000-0000-000000000000",
            json_ct,
            "{}".into(),
            422,
            "nothing to update: give name and/or archived",
        ),
        (
            "bad status",
            Method::POST,
            "/api/boards/00000000-0000-0000-0000-000000000000/tasks",
            json_ct,
            "{\"title\": \"t\", \"status\": \"later\"}".into(),
            422,
            "status must be one of todo, doing, done; got \"later\"",
        ),
        (
            "unknown route",
            Method::GET,
            "/api/nothing-here",
            json_ct,
            String::new(),
            404,
            "Route not found",
        ),
    ];
    for (case, method, path, ct, body, status, message) in cases {
        let (got, body) = raw(&app, method, path, &alice, ct, body).await?;
        assert_eq!(got, status, "{case}: {body}");
        assert!(
            body["code"].is_string() && body["error"].is_string(),
            "{case}: {body}"
        );
        if !message.is_empty() {
            assert_eq!(body["error"], message, "{case}");
        }
    }
    let (_, after) = app.get("/api/workspaces", &alice).await?;
    assert_eq!(before, after, "nothing changed");

    let (status, body) = app
        .call(
            Method::POST,
            "/auth/token",
            None,
            &[],
            Some(json!({"email": "", "password": "x"})),
        )
        .await?;
    assert_eq!(
        (status, body["error"].clone()),
        (422, json!("email must be 1 to 254 characters"))
    );
    Ok(())
}

#[tokio::test]
async fn health_and_readiness() -> TestResult {
    let app = TestApp::spawn().await?;
    let (status, body) = app.call(Method::GET, "/healthz", None, &[], None).await?;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = app.call(Method::GET, "/readyz", None, &[], None).await?;
    assert_eq!(
        (status, body),
        (200, json!({"postgres": "up", "redis": "up"}))
    );
    Ok(())
}

#[tokio::test]
async fn dates_out_of_range_are_422() -> TestResult {
    let app = TestApp::spawn().await?;
    let erin = app.login(tenancy_tests::server::ERIN).await?;
    for query in [
        "since=-99999-01-01T00:00:00Z",
        "until=-99999-12-31T00:00:00Z",
    ] {
        let (status, body) = app
            .get(&format!("/api/tenant/audit?{query}"), &erin)
            .await?;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["error"], "Date or time out of range", "{query}");
    }
    Ok(())
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_405_with_a_json_body() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    for (method, path, token) in [
        (Method::DELETE, "/api/workspaces", Some(alice.as_str())),
        (Method::PUT, "/auth/token", None),
        (Method::PATCH, "/healthz", None),
    ] {
        let (status, body) = app.call(method.clone(), path, token, &[], None).await?;
        assert_eq!(
            (status, body),
            (
                405,
                json!({"error": "Method not allowed", "code": "method_not_allowed"})
            ),
            "{method} {path}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_overlong_uri_or_too_many_headers_get_json_errors() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let long = format!("/api/workspaces?q={}", "a".repeat(10 * 1024));
    let (status, body) = app.get(&long, &alice).await?;
    assert_eq!(
        (status, body),
        (
            414,
            json!({"error": "Request URI too long", "code": "uri_too_long"})
        )
    );
    let names: Vec<String> = (0..150).map(|i| format!("x-filler-{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let (status, body) = app
        .call(Method::GET, "/api/workspaces", Some(&alice), &many, None)
        .await?;
    assert_eq!(
        (status, body),
        (
            431,
            json!({"error": "Request headers too large", "code": "headers_too_large"})
        )
    );
    let big = "b".repeat(40 * 1024);
    let (status, body) = app
        .call(
            Method::GET,
            "/healthz",
            None,
            &[("x-big", big.as_str())],
            None,
        )
        .await?;
    assert_eq!(
        (status, body["code"].clone()),
        (431, json!("headers_too_large"))
    );
    Ok(())
}

#[tokio::test]
async fn browsers_get_cross_origin_access_from_the_configured_origins_only() -> TestResult {
    let app = TestApp::spawn().await?;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url("/api/workspaces"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, x-tenant-id",
            )
            .send()
    };
    let allowed = preflight("https://app.tenancy.test").await?;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_lowercase()
    };
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        "https://app.tenancy.test"
    );
    assert!(header(&allowed, "access-control-allow-headers").contains("authorization"));
    assert!(header(&allowed, "access-control-allow-methods").contains("post"));
    let refused = preflight("https://evil.test").await?;
    assert_eq!(header(&refused, "access-control-allow-origin"), "");
    // The actual request carries the header too.
    let alice = app.login(ALICE).await?;
    let response = app
        .client
        .get(app.url("/api/workspaces"))
        .bearer_auth(&alice)
        .header("origin", "https://app.tenancy.test")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        "https://app.tenancy.test"
    );
    Ok(())
}
