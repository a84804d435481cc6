//! Attacker: a member of tenancy_admin (a platform operator, or a stolen
//! operator credential). It may bypass isolation; it must not do so
//! without a trace, and errors must not show it the extension's insides.

use sqlx::Connection;
use tenancy_tests::{db_error, Role, TestDb, TestResult};
use uuid::Uuid;

#[tokio::test]
async fn bypasses_and_rolls_back_the_audit_row() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    db.seed(db.globex, "laser").await?;
    let reason = format!("quiet look {}", Uuid::new_v4());
    let mut admin = db.connect(Role::Admin).await?;
    let mut tx = admin.begin().await?;
    sqlx::query("SELECT tenancy.bypass($1)")
        .bind(&reason)
        .execute(&mut *tx)
        .await?;
    let everything: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(everything, 2, "the bypass works");
    tx.rollback().await?;

    // The audit row went with the transaction...
    let mut su = db.superuser().await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.audit_log WHERE reason = $1")
        .bind(&reason)
        .fetch_one(&mut su)
        .await?;
    assert_eq!(rows, 0);
    // ...the record in the server log did not.
    let log = String::from_utf8_lossy(&tenancy_tests::server_log()?).into_owned();
    let line = log
        .lines()
        .find(|l| l.contains(&reason))
        .ok_or("a rolled-back bypass left no record in the server log")?;
    assert!(
        line.contains("tenancy: bypass by session role \"tenancy_t_admin\""),
        "{line}"
    );
    Ok(())
}

#[tokio::test]
async fn reads_rust_internals_from_error_details() -> TestResult {
    // scripts/setup.sh runs the test cluster with RUST_BACKTRACE=1, the
    // setting that once put Rust backtraces into error details.
    let db = TestDb::new().await?;
    let mut admin = db.connect(Role::Admin).await?;
    let mut tx = admin.begin().await?;
    sqlx::raw_sql("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    let result = sqlx::query("SELECT tenancy.bypass('read-only attempt')")
        .execute(&mut *tx)
        .await;
    let detail = match &result {
        Err(sqlx::Error::Database(e)) => e
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .map(|pg| format!("{:?} {:?}", pg.detail(), pg.hint()))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let (code, message) = db_error(result);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("25006", "cannot execute INSERT in a read-only transaction")
    );
    for internal in ["backtrace", ".rs:", "pgrx", "rust_begin_unwind"] {
        assert!(!detail.contains(internal), "{internal} in {detail}");
    }
    Ok(())
}

#[tokio::test]
async fn registers_a_key_without_its_material_in_any_statement() -> TestResult {
    let db = TestDb::new().await?;
    let secret = format!("file-secret-{}", Uuid::new_v4().simple());
    let path = format!("/tmp/tenancy-test-{}.key", Uuid::new_v4().simple());
    let mut su = db.superuser().await?;
    // The server writes the file (it reads it too; the test may run elsewhere).
    sqlx::raw_sql(&format!(
        "COPY (SELECT '{secret}') TO '{path}';
         GRANT pg_read_server_files TO tenancy_t_admin;
         GRANT EXECUTE ON FUNCTION pg_read_file(text) TO tenancy_t_admin;"
    ))
    .execute(&mut su)
    .await?;
    let mut admin = db.connect(Role::Admin).await?;
    sqlx::query("SELECT tenancy.add_key_from_file('from-file', 'HS256', $1)")
        .bind(&path)
        .execute(&mut admin)
        .await?;
    sqlx::raw_sql("REVOKE pg_read_server_files FROM tenancy_t_admin")
        .execute(&mut su)
        .await?;
    // The key verifies tokens signed with the file's secret.
    let signed = tenancy_token::sign(
        &serde_json::json!({"tenant_id": db.acme, "sub": Uuid::new_v4(), "exp": tenancy_token::now() + 60}),
        "from-file",
        "HS256",
        &secret,
    )?;
    let mut app = db.connect(Role::App).await?;
    let mut tx = app.begin().await?;
    tenancy_tests::use_token(&mut tx, &signed).await?;
    let tenant: Uuid = sqlx::query_scalar("SELECT tenancy.current_tenant_id()")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(tenant, db.acme);
    // Without the right to read server files, no key is read.
    let (code, _) = db_error(
        sqlx::query("SELECT tenancy.add_key_from_file('again', 'HS256', $1)")
            .bind(&path)
            .execute(&mut admin)
            .await,
    );
    assert_eq!(code, "42501");
    let _ = std::fs::remove_file(&path);
    Ok(())
}
