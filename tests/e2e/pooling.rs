//! One pooled connection serving tenants in turn never carries a context
//! from one transaction into the next.

use sqlx::{Connection, PgConnection};
use tenancy_tests::{db_error, token, use_token, Role, TestDb, TestResult};
use uuid::Uuid;

async fn names(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM projects ORDER BY name")
        .fetch_all(conn)
        .await
}

#[tokio::test]
async fn alternating_tenants_on_one_connection() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    db.seed(db.globex, "laser").await?;
    let mut conn = db.connect(Role::App).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;

    for round in 0..3 {
        for (tenant, expected) in [(db.acme, "rocket"), (db.globex, "laser")] {
            let mut tx = conn.begin().await?;
            use_token(&mut tx, &token(tenant, Uuid::new_v4())).await?;
            assert_eq!(names(&mut tx).await?, [expected], "round {round}");
            tx.commit().await?;

            // Between transactions: no context at all.
            let (code, message) = db_error(names(&mut conn).await);
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("42501", "tenant context required")
            );
            let leftover: String =
                sqlx::query_scalar("SELECT current_setting('tenancy.token', true)")
                    .fetch_one(&mut conn)
                    .await?;
            assert_eq!(leftover, "");
        }
    }
    let same: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(backend, same, "all of it ran on one backend");
    Ok(())
}

#[tokio::test]
async fn rollback_clears_the_context() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    let mut conn = db.connect(Role::App).await?;

    let mut tx = conn.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    assert_eq!(names(&mut tx).await?, ["rocket"]);
    tx.rollback().await?;
    let (_, message) = db_error(names(&mut conn).await);
    assert_eq!(message, "tenant context required");

    // A failed transaction is rolled back too, and takes its context with it.
    let mut tx = conn.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    let _ = sqlx::query("SELECT 1/0").execute(&mut *tx).await;
    tx.rollback().await?;
    let (_, message) = db_error(names(&mut conn).await);
    assert_eq!(message, "tenant context required");

    // The trusted context (service role) is transaction-scoped as well.
    let mut svc = db.connect(Role::Service).await?;
    let mut tx = svc.begin().await?;
    sqlx::raw_sql(&format!("SET LOCAL tenancy.tenant_id = '{}'", db.acme))
        .execute(&mut *tx)
        .await?;
    assert_eq!(names(&mut tx).await?, ["rocket"]);
    tx.commit().await?;
    let (_, message) = db_error(names(&mut svc).await);
    assert_eq!(message, "tenant context required");
    Ok(())
}
