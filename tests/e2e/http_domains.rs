//! Custom domains through the API: a tenant admin claims a domain, proves
//! control with a DNS TXT record (answered by a real DNS server on a
//! loopback port), and requests to the domain then resolve to the tenant.
//! Attacks are grouped by who tries them.

use reqwest::Method;
use serde_json::{json, Value};
use tenancy_tests::dns::DnsServer;
use tenancy_tests::server::{Options, TestApp, ALICE, BOB, CAROL, ERIN, GUS};
use tenancy_tests::TestResult;

const DOMAIN: &str = "tasks.acme-corp.example";

async fn spawn() -> TestResult<(TestApp, DnsServer)> {
    let dns = DnsServer::start().await?;
    let app = TestApp::spawn_with(Options {
        dns_server: Some(dns.addr),
        ..Options::default()
    })
    .await?;
    Ok((app, dns))
}

/// `GET /api/tenant` as carol (a member of both tenants, so no tenant
/// claim decides for her) through `host`: the slug it resolved to, or the status.
async fn tenant_at(app: &TestApp, host: &str) -> TestResult<Result<String, u16>> {
    let carol = app.login(CAROL).await?;
    let (status, body) = app
        .call(
            Method::GET,
            "/api/tenant",
            Some(&carol),
            &[("host", host)],
            None,
        )
        .await?;
    Ok(match status {
        200 => Ok(body["slug"].as_str().unwrap_or_default().to_owned()),
        other => Err(other),
    })
}

async fn claim(app: &TestApp, token: &str, domain: &str) -> TestResult<(u16, Value)> {
    app.post("/api/tenant/domains", token, json!({ "domain": domain }))
        .await
}

async fn verify(app: &TestApp, token: &str, domain: &str) -> TestResult<(u16, Value)> {
    app.post(
        &format!("/api/tenant/domains/{domain}/verify"),
        token,
        json!({}),
    )
    .await
}

/// Publishes the record a claim asks for.
fn publish(dns: &DnsServer, claim: &Value) {
    dns.publish(
        claim["verification"]["name"].as_str().unwrap_or_default(),
        claim["verification"]["value"].as_str().unwrap_or_default(),
    );
}

#[tokio::test]
async fn admin_claims_proves_and_removes_a_custom_domain() -> TestResult {
    let (app, dns) = spawn().await?;
    let erin = app.login(ERIN).await?; // acme admin
    let (status, claimed) = claim(&app, &erin, "Tasks.ACME-corp.example.").await?;
    assert_eq!(status, 201, "{claimed}");
    assert_eq!(claimed["domain"], DOMAIN);
    assert_eq!(claimed["status"], "pending");
    assert_eq!(claimed["verification"]["type"], "TXT");
    assert_eq!(
        claimed["verification"]["name"],
        format!("_tenancy-challenge.{DOMAIN}")
    );
    // Claimed is not mapped: the domain names no tenant yet.
    assert_eq!(tenant_at(&app, DOMAIN).await?, Err(400));

    // Without the record, no proof.
    let (status, body) = verify(&app, &erin, DOMAIN).await?;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("_tenancy-challenge"));
    // A record with another value is no proof either.
    dns.publish(
        &format!("_tenancy-challenge.{DOMAIN}"),
        "tenancy-verification=guess",
    );
    assert_eq!(verify(&app, &erin, DOMAIN).await?.0, 422);

    publish(&dns, &claimed);
    let (status, verified) = verify(&app, &erin, DOMAIN).await?;
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["status"], "verified");
    assert_eq!(tenant_at(&app, DOMAIN).await?, Ok("acme".to_owned()));
    // Verifying again changes nothing.
    assert_eq!(verify(&app, &erin, DOMAIN).await?.0, 200);

    let (status, listed) = app.get("/api/tenant/domains", &erin).await?;
    assert_eq!(status, 200);
    assert_eq!(listed["domains"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["domains"][0]["status"], "verified");

    let (status, _) = app
        .delete(&format!("/api/tenant/domains/{DOMAIN}"), &erin)
        .await?;
    assert_eq!(status, 204);
    assert_eq!(tenant_at(&app, DOMAIN).await?, Err(400));
    let (_, listed) = app.get("/api/tenant/domains", &erin).await?;
    assert_eq!(listed["domains"], json!([]));

    let (_, trail) = app.get("/api/tenant/audit?limit=50", &erin).await?;
    let actions: Vec<&str> = trail["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["target"] == DOMAIN)
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["domain.claimed", "domain.verified", "domain.removed"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    Ok(())
}

#[tokio::test]
async fn claims_only_fully_qualified_names_outside_the_base_domain() -> TestResult {
    let (app, _dns) = spawn().await?;
    let alice = app.login(ALICE).await?;
    let long = format!("{}.example", "a".repeat(250));
    for bad in [
        "localhost",
        "-bad-.example",
        "under_score.example",
        "10.0.0.1",
        "tasks.example:8080",
        "globex.tenancy.test",
        "tenancy.test",
        "nul\u{0}.example",
        long.as_str(),
        "",
    ] {
        let (status, body) = claim(&app, &alice, bad).await?;
        assert_eq!(status, 422, "{bad:?}: {body}");
    }
    let (_, listed) = app.get("/api/tenant/domains", &alice).await?;
    assert_eq!(listed["domains"], json!([]));
    // Twice the same claim.
    assert_eq!(claim(&app, &alice, DOMAIN).await?.0, 201);
    assert_eq!(claim(&app, &alice, DOMAIN).await?.0, 409);
    Ok(())
}

/// A tenant member (not an admin).
mod tenant_member {
    use super::*;

    #[tokio::test]
    async fn claims_or_lists_custom_domains() -> TestResult {
        let (app, _dns) = spawn().await?;
        let bob = app.login(BOB).await?;
        assert_eq!(claim(&app, &bob, DOMAIN).await?.0, 403);
        assert_eq!(app.get("/api/tenant/domains", &bob).await?.0, 403);
        let alice = app.login(ALICE).await?;
        assert_eq!(claim(&app, &alice, DOMAIN).await?.0, 201);
        assert_eq!(verify(&app, &bob, DOMAIN).await?.0, 403);
        Ok(())
    }
}

/// Another tenant's admin or owner.
mod tenant_admin {
    use super::*;

    #[tokio::test]
    async fn takes_a_domain_another_tenant_proved() -> TestResult {
        let (app, dns) = spawn().await?;
        let (alice, gus) = (app.login(ALICE).await?, app.login(GUS).await?);
        let (_, acme_claim) = claim(&app, &alice, DOMAIN).await?;
        publish(&dns, &acme_claim);
        assert_eq!(verify(&app, &alice, DOMAIN).await?.0, 200);
        // Globex claims the same name and even publishes its own record.
        let (status, globex_claim) = claim(&app, &gus, DOMAIN).await?;
        assert_eq!(status, 201);
        publish(&dns, &globex_claim);
        let (status, body) = verify(&app, &gus, DOMAIN).await?;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"], "This domain is in use by another tenant");
        assert_eq!(tenant_at(&app, DOMAIN).await?, Ok("acme".to_owned()));
        Ok(())
    }

    #[tokio::test]
    async fn proves_a_domain_with_another_tenants_record() -> TestResult {
        let (app, dns) = spawn().await?;
        let (alice, gus) = (app.login(ALICE).await?, app.login(GUS).await?);
        // Acme publishes its value but has not verified yet; globex's claim
        // has a value of its own, so acme's record proves nothing for it.
        let (_, acme_claim) = claim(&app, &alice, DOMAIN).await?;
        publish(&dns, &acme_claim);
        assert_eq!(claim(&app, &gus, DOMAIN).await?.0, 201);
        assert_eq!(verify(&app, &gus, DOMAIN).await?.0, 422);
        // A pending claim elsewhere blocks nobody: acme proves its own.
        assert_eq!(verify(&app, &alice, DOMAIN).await?.0, 200);
        assert_eq!(tenant_at(&app, DOMAIN).await?, Ok("acme".to_owned()));
        Ok(())
    }

    #[tokio::test]
    async fn removes_another_tenants_domain() -> TestResult {
        let (app, dns) = spawn().await?;
        let (alice, gus) = (app.login(ALICE).await?, app.login(GUS).await?);
        let (_, acme_claim) = claim(&app, &alice, DOMAIN).await?;
        publish(&dns, &acme_claim);
        assert_eq!(verify(&app, &alice, DOMAIN).await?.0, 200);
        let (status, _) = app
            .delete(&format!("/api/tenant/domains/{DOMAIN}"), &gus)
            .await?;
        assert_eq!(status, 404);
        let (_, listed) = app.get("/api/tenant/domains", &gus).await?;
        assert_eq!(
            listed["domains"],
            json!([]),
            "globex sees none of acme's claims"
        );
        assert_eq!(tenant_at(&app, DOMAIN).await?, Ok("acme".to_owned()));
        Ok(())
    }
}
