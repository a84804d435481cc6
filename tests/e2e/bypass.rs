//! tenancy.bypass(): tenancy_admin members only, transaction-scoped,
//! audited, and invisible to the application role's query plans.

use sqlx::{Connection, PgConnection};
use tenancy_tests::{db_error, token, use_token, Role, TestDb, TestResult};
use uuid::Uuid;

async fn plan(conn: &mut PgConnection, query: &str) -> TestResult<String> {
    let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN (COSTS OFF) {query}"))
        .fetch_all(conn)
        .await?;
    Ok(lines.join("\n"))
}

#[tokio::test]
async fn bypass_is_refused_to_the_application_role() -> TestResult {
    let db = TestDb::new().await?;
    let mut app = db.connect(Role::App).await?;
    let (code, message) = db_error(
        sqlx::query("SELECT tenancy.bypass('support ticket 42')")
            .execute(&mut app)
            .await,
    );
    assert_eq!(code, "42501");
    assert_eq!(
        message,
        "permission denied: tenancy.bypass() requires membership in tenancy_admin"
    );
    Ok(())
}

#[tokio::test]
async fn bypass_is_allowed_to_tenancy_admin_for_one_transaction_and_audited() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    db.seed(db.globex, "laser").await?;
    let mut admin = db.connect(Role::Admin).await?;

    let (_, message) = db_error(
        sqlx::query("SELECT name FROM projects")
            .fetch_all(&mut admin)
            .await,
    );
    assert_eq!(
        message, "tenant context required",
        "membership alone bypasses nothing"
    );

    let (code, message) = db_error(
        sqlx::query("SELECT tenancy.bypass('  ')")
            .execute(&mut admin)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("22023", "tenancy.bypass() needs a reason")
    );

    let mut tx = admin.begin().await?;
    sqlx::query("SELECT tenancy.bypass('support ticket 42')")
        .execute(&mut *tx)
        .await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects ORDER BY name")
        .fetch_all(&mut *tx)
        .await?;
    assert_eq!(names, ["laser", "rocket"], "all tenants while bypassing");
    tx.commit().await?;

    let (_, message) = db_error(
        sqlx::query("SELECT name FROM projects")
            .fetch_all(&mut admin)
            .await,
    );
    assert_eq!(
        message, "tenant context required",
        "the bypass ended with the transaction"
    );

    let audit: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT session_role::text, acting_role::text, action, reason FROM tenancy.audit_log WHERE action = 'bypass'",
    )
    .fetch_all(&mut admin)
    .await?;
    assert_eq!(
        audit,
        [(
            "tenancy_t_admin".to_owned(),
            "tenancy_t_admin".to_owned(),
            "bypass".to_owned(),
            Some("support ticket 42".to_owned())
        )]
    );
    Ok(())
}

#[tokio::test]
async fn the_application_role_plan_keeps_the_tenant_index() -> TestResult {
    let db = TestDb::new().await?;
    // EXPLAIN over protected tables is for roles the DBA trusts with it.
    sqlx::raw_sql(&format!(
        "ALTER ROLE tenancy_t_app IN DATABASE {0} SET tenancy.allow_explain = on;
         ALTER ROLE tenancy_t_admin IN DATABASE {0} SET tenancy.allow_explain = on;",
        db.name
    ))
    .execute(&mut db.superuser().await?)
    .await?;
    let mut app = db.connect(Role::App).await?;
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    // Rule the planner's cost choice out: only whether the index *can* be used matters.
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await?;
    let app_plan = plan(&mut tx, "SELECT * FROM projects ORDER BY id LIMIT 10").await?;
    assert!(
        app_plan.contains("Index Cond: (tenant_id = $0)"),
        "{app_plan}"
    );
    assert!(!app_plan.contains("bypass_active"), "{app_plan}");
    tx.rollback().await?;

    // The admin's plan carries the bypass policy; the application role's does not.
    let mut admin = db.connect(Role::Admin).await?;
    let mut tx = admin.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await?;
    let admin_plan = plan(&mut tx, "SELECT * FROM projects ORDER BY id LIMIT 10").await?;
    // (tenant_id = $0) OR $1: the OR is what costs the index, and only admins get it.
    assert!(
        admin_plan.contains("Filter: ((tenant_id = $0) OR $1)"),
        "{admin_plan}"
    );
    Ok(())
}
