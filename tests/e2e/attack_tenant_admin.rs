//! Attacks by a tenant's own administrator against people and data outside
//! the tenant, through the service's API.

use serde_json::json;
use tenancy_tests::server::{Options, TestApp, ALICE, GUS, PASSWORD, ROOT};
use tenancy_tests::TestResult;

#[tokio::test]
async fn learns_that_an_account_belongs_to_another_tenant() -> TestResult {
    // With one tenant per user, inviting someone who belongs elsewhere must
    // not say so: the answer is the one any address gets.
    let app = TestApp::spawn_with(Options {
        single_tenant_users: true,
        ..Options::default()
    })
    .await?;
    let alice = app.login(ALICE).await?;
    let mut answers = Vec::new();
    // gus belongs to globex; root has an account and no tenant; the third
    // address has no account.
    for email in [GUS, ROOT, "new-hire@acme.test"] {
        let (status, body) = app
            .post(
                "/api/tenant/members",
                &alice,
                json!({"email": email, "role": "member"}),
            )
            .await?;
        let mut keys: Vec<String> = body
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        answers.push((status, keys, body["role"].clone()));
    }
    assert_eq!(answers[0].0, 202, "{answers:?}");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // Only gus, accepting, learns that he cannot join.
    let (status, body) = app
        .accept(&app.invitation_token(GUS).await?, PASSWORD)
        .await?;
    assert_eq!(
        (status, body["error"].clone()),
        (409, json!("This account cannot be added to this tenant"))
    );
    Ok(())
}
