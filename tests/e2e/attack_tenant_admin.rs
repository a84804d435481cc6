//! Attacks by a tenant's own administrator against people and data outside
//! the tenant, through the service's API.

use serde_json::json;
use tenancy_tests::server::{Options, TestApp, ALICE, GUS, ROOT};
use tenancy_tests::TestResult;

#[tokio::test]
async fn learns_that_an_account_belongs_to_another_tenant() -> TestResult {
    // With one tenant per user, adding someone who belongs elsewhere must
    // not say so: the answer is the one any existing account gets.
    let app = TestApp::spawn_with(Options {
        single_tenant_users: true,
        ..Options::default()
    })
    .await?;
    let alice = app.login(ALICE).await?;
    let (elsewhere_status, elsewhere) = app
        .post(
            "/api/tenant/members",
            &alice,
            json!({"email": GUS, "role": "member"}),
        )
        .await?;
    // root@platform.test has an account and no tenant.
    let (no_tenant_status, no_tenant) = app
        .post(
            "/api/tenant/members",
            &alice,
            json!({"email": ROOT, "role": "member"}),
        )
        .await?;
    assert_eq!(elsewhere_status, 409, "{elsewhere}");
    assert_eq!(
        (elsewhere_status, &elsewhere),
        (no_tenant_status, &no_tenant)
    );
    let text = elsewhere.to_string();
    assert!(
        !text.contains("another tenant") && !text.contains(GUS),
        "{text}"
    );
    // A new address still becomes a member.
    let (status, body) = app
        .post(
            "/api/tenant/members",
            &alice,
            json!({"email": "new-hire@acme.test", "role": "member"}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    Ok(())
}
