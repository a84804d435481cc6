//! The OpenAPI document at `/openapi.json` against the router itself: every
//! route of the route table is in it with exactly the methods the router
//! answers, every operation documents the error body, and the browsable
//! page at `/docs/` is served whole by the service.

use reqwest::Method;
use serde_json::Value;
use tenancy_tests::server::TestApp;
use tenancy_tests::TestResult;

use crate::http_routes::fill;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

async fn document(app: &TestApp) -> TestResult<Value> {
    let response = app.client.get(app.url("/openapi.json")).send().await?;
    assert_eq!(response.status(), 200);
    Ok(response.json().await?)
}

#[tokio::test]
async fn every_route_is_documented_with_exactly_the_methods_it_answers() -> TestResult {
    let app = TestApp::spawn().await?;
    let doc = document(&app).await?;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    let paths = tenancy_server::route_paths();
    assert!(
        paths.len() > 40,
        "the route table lists the service's routes"
    );
    let documented = doc["paths"].as_object().ok_or("no paths")?;
    let mut wrong = Vec::new();
    for path in &paths {
        let Some(item) = documented.get(path) else {
            wrong.push(format!("{path}: not in the document"));
            continue;
        };
        for method in METHODS {
            let in_doc = item.get(method.as_str().to_lowercase()).is_some();
            // Anonymous: the answer says whether the route has the method
            // (405) without running anything.
            let url = fill(path, "00000000-0000-0000-0000-000000000000");
            let response = app
                .client
                .request(method.clone(), app.url(&url))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let routed = status != 405 && body["error"] != "Route not found";
            if in_doc != routed {
                wrong.push(format!(
                    "{method} {path}: documented {in_doc}, router answers {status} {body}"
                ));
            }
        }
    }
    // And nothing documented that the route table does not have.
    for path in documented.keys() {
        if !paths.iter().any(|p| p == path) {
            wrong.push(format!("{path}: documented, not in the route table"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

#[tokio::test]
async fn every_operation_has_its_own_id_the_error_body_and_tenant_routes_their_header() -> TestResult
{
    let app = TestApp::spawn().await?;
    let doc = document(&app).await?;
    let schema = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(schema["required"], serde_json::json!(["error", "code"]));
    let mut wrong = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().ok_or("no paths")? {
        for (method, operation) in item.as_object().ok_or("no operations")? {
            if !operation["operationId"]
                .as_str()
                .is_some_and(|id| ids.insert(id.to_owned()))
            {
                wrong.push(format!("{method} {path}: no operationId or a repeated one"));
            }
            let error = &operation["responses"]["4XX"]["content"]["application/json"]["schema"];
            if error["$ref"] != "#/components/schemas/ErrorBody" {
                wrong.push(format!("{method} {path}: no error body"));
            }
            if !operation["responses"].as_object().is_some_and(|r| {
                r.keys()
                    .any(|status| status.starts_with('2') || status == "101")
            }) {
                wrong.push(format!("{method} {path}: no success answer"));
            }
            let has_tenant_header = operation["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "X-Tenant-ID"));
            if path.starts_with("/api/") && !path.starts_with("/api/admin/") {
                if !has_tenant_header && path != "/api/tenants/{id}/restore" {
                    wrong.push(format!("{method} {path}: no X-Tenant-ID"));
                }
            } else if has_tenant_header {
                wrong.push(format!(
                    "{method} {path}: X-Tenant-ID on a route without a tenant"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Public routes say they need no token.
    assert_eq!(
        doc["paths"]["/auth/token"]["post"]["security"],
        serde_json::json!([{}])
    );
    Ok(())
}

#[tokio::test]
async fn the_browsable_page_is_served_whole_by_the_service() -> TestResult {
    let app = TestApp::spawn().await?;
    let page = app.client.get(app.url("/docs/")).send().await?;
    assert_eq!(page.status(), 200);
    let html = page.text().await?;
    assert!(html.contains("swagger-ui"), "{html:.300}");
    // Nothing is fetched from elsewhere: every script and style is relative.
    for attribute in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!html.contains(attribute), "{attribute} in {html:.2000}");
    }
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-initializer.js",
    ] {
        let response = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{asset}");
        let text = response.text().await?;
        assert!(text.len() > 100, "{asset}");
        if asset == "swagger-initializer.js" {
            assert!(text.contains("/openapi.json"), "{text}");
        }
    }
    Ok(())
}
