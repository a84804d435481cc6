//! An owner deletes their tenant: inactive at once, restorable during the
//! grace period, then removed with every row it has.

use reqwest::Method;
use serde_json::json;
use tenancy_tests::server::{TestApp, ALICE, BOB, ERIN, GUS, ROOT};
use tenancy_tests::TestResult;
use uuid::Uuid;

#[tokio::test]
async fn an_owner_deletes_the_tenant_restores_it_and_after_the_grace_period_it_is_gone(
) -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let erin = app.login(ERIN).await?;
    let gus = app.login(GUS).await?;
    let (status, _) = app.delete("/api/tenant", &erin).await?;
    assert_eq!(status, 403, "an admin does not delete the tenant");
    let (status, body) = app.delete("/api/tenant", &alice).await?;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("inactive")),
        "{body}"
    );
    let bob = app.login(BOB).await?;
    let (status, body) = app.get("/api/workspaces", &bob).await?;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("Tenant is not active"))
    );

    // Restored by an owner (nobody else) during the grace period.
    let restore = format!("/api/tenants/{}/restore", app.acme);
    for (token, expected) in [(&bob, 404), (&gus, 404), (&alice, 200), (&alice, 404)] {
        let (status, body) = app
            .call(Method::POST, &restore, Some(token), &[], None)
            .await?;
        assert_eq!(status, expected, "{body}");
    }
    let (status, _) = app.get("/api/workspaces", &bob).await?;
    assert_eq!(status, 200, "back");

    // A platform decision replaces the owner's deletion: suspended by the
    // platform after the owner deleted it, the owner cannot undo that.
    let root = app.login(ROOT).await?;
    let (status, _) = app.delete("/api/tenant", &app.login(ALICE).await?).await?;
    assert_eq!(status, 202);
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/admin/tenants/{}/suspend", app.acme),
            Some(&root),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let (status, _) = app
        .call(Method::POST, &restore, Some(&alice), &[], None)
        .await?;
    assert_eq!(status, 404, "no owner's deletion pending any more");
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/admin/tenants/{}/reactivate", app.acme),
            Some(&root),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let actions: Vec<String> = {
        let (_, page) = app.get("/api/tenant/audit?limit=100", &alice).await?;
        page["events"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e["action"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        actions.contains(&"tenant.deletion_requested".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"tenant.deletion_cancelled".to_owned()),
        "{actions:?}"
    );

    // Deleted again; once the grace period is over, every row goes.
    let (status, _) = app.delete("/api/tenant", &app.login(ALICE).await?).await?;
    assert_eq!(status, 202);
    let mut su = app.superuser().await?;
    sqlx::query("UPDATE app.tenant_deletions SET purge_after = now() - interval '1 second'")
        .execute(&mut su)
        .await?;
    let rows_of = |tenant: Uuid| {
        let sql = "SELECT coalesce(sum((xpath('/row/c/text()',
                        query_to_xml(format('SELECT count(*) AS c FROM %s WHERE %I = %L',
                                            table_name, tenant_column, $1), false, true, '')))[1]::text::bigint), 0)::bigint
                   FROM tenancy.protected_tables WHERE parent_table IS NULL";
        sqlx::query_scalar::<_, i64>(sql).bind(tenant)
    };
    let (acme_before, globex_before) = (
        rows_of(app.acme).fetch_one(&mut su).await?,
        rows_of(app.globex).fetch_one(&mut su).await?,
    );
    assert!(acme_before > 0 && globex_before > 0);
    let removed = app.purge_due().await?;
    assert_eq!(removed, 1);
    assert_eq!(
        rows_of(app.acme).fetch_one(&mut su).await?,
        0,
        "acme's rows are gone"
    );
    assert_eq!(
        rows_of(app.globex).fetch_one(&mut su).await?,
        globex_before,
        "globex's rows are untouched"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.tenants WHERE id = $1")
        .bind(app.acme)
        .fetch_one(&mut su)
        .await?;
    assert_eq!(left, 0, "the catalog row too");
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenancy.audit_log WHERE action = 'tenants.delete'",
    )
    .fetch_one(&mut su)
    .await?;
    assert_eq!(logged, 1, "in the extension's audit log");
    let (status, _) = app.get("/api/workspaces", &gus).await?;
    assert_eq!(status, 200, "globex goes on");
    Ok(())
}
