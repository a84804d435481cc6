//! Every route of the service's own route table (`tenancy_server::route_paths`,
//! so a route added later is covered without editing this file) gets bad
//! input: made-up and malformed path parameters, every method, no, forged
//! and real credentials, and bodies that are not what the route reads. No
//! answer may be a 5xx, and every error has the service's body
//! `{"error": "...", "code": "..."}`.

use futures::stream::{self, StreamExt};
use reqwest::Method;
use serde_json::Value;
use tenancy_tests::server::{TestApp, ALICE, BOB};
use tenancy_tests::TestResult;

/// Values for a path parameter: well-formed but unknown, malformed, hostile.
const PARAMS: [&str; 5] = [
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
    "%00",
    "..%2F..%2Fetc",
    "9999999999999999999999999",
];

/// Bodies that are not what any route reads, as JSON text.
fn bodies() -> Vec<String> {
    let deep = format!("{}{}", "[".repeat(2_000), "]".repeat(2_000));
    vec![
        String::new(),
        "{}".to_owned(),
        "[]".to_owned(),
        "null".to_owned(),
        "{\"name\":".to_owned(),
        deep,
        r#"{"name": "\u0000", "title": "\u0000", "email": "a\u0000@b.c", "domain": "\u0000"}"#
            .to_owned(),
        r#"{"name": 5, "email": [], "role": {}, "title": null, "password": 1e400, "limit": -1}"#
            .to_owned(),
        r#"{"id": "00000000-0000-0000-0000-000000000000", "tenant_id": "x", "since": "-99999-01-01T00:00:00Z"}"#
            .to_owned(),
    ]
}

/// `path` with its `{parameters}` replaced by `value`.
pub(crate) fn fill(path: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => {
                out.push_str(value);
                rest = &rest[start + end + 1..];
            }
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

struct Probe {
    method: Method,
    path: String,
    token: Option<String>,
    body: Option<String>,
}

/// Sends `probe`; `Err` describes an answer that breaks the rules.
async fn send(app: &TestApp, probe: Probe) -> Result<(), String> {
    let mut request = app
        .client
        .request(probe.method.clone(), app.url(&probe.path));
    if let Some(token) = &probe.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = &probe.body {
        request = request
            .header("content-type", "application/json")
            .body(body.clone());
    }
    let what = format!(
        "{} {} (token: {}, body: {:.60})",
        probe.method,
        probe.path,
        probe
            .token
            .as_deref()
            .map_or("none", |t| &t[..t.len().min(12)]),
        probe.body.as_deref().unwrap_or("none")
    );
    let response = request.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    if status >= 500 {
        return Err(format!("{what}: {status} {text:.200}"));
    }
    if status >= 400 {
        let body: Value = serde_json::from_str(&text)
            .map_err(|_| format!("{what}: {status} with a body that is not JSON: {text:.200}"))?;
        if !(body["error"].is_string() && body["code"].is_string()) {
            return Err(format!(
                "{what}: {status} without {{error, code}}: {text:.200}"
            ));
        }
    }
    Ok(())
}

#[tokio::test]
async fn no_route_answers_bad_input_with_a_5xx_or_a_bare_error() -> TestResult {
    let app = TestApp::spawn().await?;
    let paths = tenancy_server::route_paths();
    assert!(
        paths.len() > 40,
        "the route table lists the service's routes"
    );
    // Anonymous, forged, a member and the tenant's owner.
    let tokens = [
        None,
        Some("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.forged".to_owned()),
        Some(app.login(BOB).await?),
        Some(app.login(ALICE).await?),
    ];
    let bodies = bodies();
    let mut probes = Vec::new();
    for token in &tokens {
        for (p, path) in paths.iter().enumerate() {
            for method in [Method::GET, Method::DELETE] {
                for param in PARAMS {
                    probes.push(Probe {
                        method: method.clone(),
                        path: fill(path, param),
                        token: token.clone(),
                        body: None,
                    });
                }
            }
            for method in [Method::POST, Method::PUT, Method::PATCH] {
                for (b, body) in bodies.iter().enumerate() {
                    probes.push(Probe {
                        method: method.clone(),
                        path: fill(path, PARAMS[(p + b) % PARAMS.len()]),
                        token: token.clone(),
                        body: Some(body.clone()),
                    });
                }
            }
        }
    }
    // What ends a session or the tenant goes last, so that the real tokens
    // reach every other route while they still work.
    let ends_something = |p: &Probe| {
        p.path.starts_with("/auth/logout")
            || (p.method == Method::DELETE && p.path == "/api/tenant")
    };
    let (last, mut probes): (Vec<Probe>, Vec<Probe>) = probes.into_iter().partition(ends_something);
    probes.extend(last);
    let total = probes.len();
    let failures: Vec<String> = stream::iter(probes)
        .map(|probe| send(&app, probe))
        .buffer_unordered(8)
        .filter_map(|outcome| async move { outcome.err() })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} of {total} answers broke the rules:\n{}",
        failures.len(),
        failures[..failures.len().min(30)].join("\n")
    );
    Ok(())
}
