//! Regressions found by a security review of the extension: catalog reads
//! made with the catalog owner's rights must not resolve anything through
//! the caller's search_path, and the per-backend cache must never keep a
//! value read through a snapshot older than the latest catalog change.

use sqlx::{Connection, Executor};
use tenancy_tests::{db_error, token, use_token, Role, TestDb, TestResult};
use uuid::Uuid;

/// A role that can create objects (here the table owner, CREATE on
/// `public`) plants an `=` for uuids and puts its schema before pg_catalog.
/// The extension's own lookups, run as the catalog owner, must not call it.
#[tokio::test]
async fn a_planted_operator_is_never_run_with_the_catalog_owners_rights() -> TestResult {
    let db = TestDb::new().await?;
    let mut owner = db.connect(Role::Owner).await?;
    sqlx::raw_sql(
        "CREATE FUNCTION public.planted_eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'planted operator ran as %', current_user; END $$;
         CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = public.planted_eq);
         SET search_path = public, pg_catalog;",
    )
    .execute(&mut owner)
    .await?;
    let mut tx = owner.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    let tenant: Result<Uuid, _> = sqlx::query_scalar("SELECT tenancy.current_tenant_id()")
        .fetch_one(&mut *tx)
        .await;
    assert_eq!(tenant.map_err(|e| e.to_string())?, db.acme);
    tx.rollback().await?;
    // The caller's own search_path is untouched afterwards.
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&mut owner)
        .await?;
    assert_eq!(path, "public, pg_catalog");
    Ok(())
}

/// A REPEATABLE READ transaction that first looks at a tenant after it was
/// suspended still sees it active (its snapshot is older), but that stale
/// status must not be cached for the backend's later transactions.
#[tokio::test]
async fn a_status_read_through_an_old_snapshot_is_not_cached() -> TestResult {
    let db = TestDb::new().await?;
    let user = Uuid::new_v4();
    let mut app = db.connect(Role::App).await?;
    let mut su = db.superuser().await?;

    app.execute("BEGIN ISOLATION LEVEL REPEATABLE READ").await?;
    let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut app).await?;
    sqlx::query("SELECT tenancy.set_tenant_status($1, 'suspended')")
        .bind(db.acme)
        .execute(&mut su)
        .await?;
    use_token(&mut app, &token(db.acme, user)).await?;
    let inside: Uuid = sqlx::query_scalar("SELECT tenancy.current_tenant_id()")
        .fetch_one(&mut app)
        .await?;
    assert_eq!(
        inside, db.acme,
        "consistent with the transaction's snapshot"
    );
    app.execute("COMMIT").await?;

    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, user)).await?;
    let after = sqlx::query_scalar::<_, Uuid>("SELECT tenancy.current_tenant_id()")
        .fetch_one(&mut *tx)
        .await;
    assert_eq!(
        db_error(after),
        ("55000".to_owned(), "tenant is not active".to_owned()),
        "the next transaction sees the suspension"
    );
    Ok(())
}
