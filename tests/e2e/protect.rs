//! tenancy.protect(): FORCE RLS (the owner is isolated too), tenant filled
//! on insert, other tenants refused, idempotent, bad input refused.

use sqlx::{Connection, PgConnection};
use tenancy_tests::{db_error, token, use_token, Role, TestDb, TestResult};
use uuid::Uuid;

/// Everything protect() creates or changes, by oid, so that a second call
/// can be shown to change nothing.
async fn footprint(conn: &mut PgConnection, table: &str) -> TestResult<String> {
    Ok(sqlx::query_scalar(
        "SELECT concat_ws(' | ',
            (SELECT string_agg(oid::text || polname, ',' ORDER BY oid) FROM pg_policy WHERE polrelid = $1::regclass),
            (SELECT string_agg(oid::text || tgname, ',' ORDER BY oid) FROM pg_trigger WHERE tgrelid = $1::regclass),
            (SELECT string_agg(indexrelid::text, ',' ORDER BY indexrelid) FROM pg_index WHERE indrelid = $1::regclass),
            (SELECT string_agg(oid::text || conname, ',' ORDER BY oid) FROM pg_constraint WHERE conrelid = $1::regclass),
            (SELECT relrowsecurity::text || relforcerowsecurity::text FROM pg_class WHERE oid = $1::regclass),
            (SELECT attnotnull::text FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'tenant_id'))",
    )
    .bind(table)
    .fetch_one(conn)
    .await?)
}

#[tokio::test]
async fn the_table_owner_is_isolated_too() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    db.seed(db.globex, "laser").await?;
    let mut owner = db.connect(Role::Owner).await?;

    let (_, message) = db_error(
        sqlx::query("SELECT * FROM projects")
            .fetch_all(&mut owner)
            .await,
    );
    assert_eq!(message, "tenant context required");

    let mut tx = owner.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
        .fetch_all(&mut *tx)
        .await?;
    assert_eq!(names, ["rocket"]);
    Ok(())
}

#[tokio::test]
async fn inserts_get_the_current_tenant_and_cannot_name_another() -> TestResult {
    let db = TestDb::new().await?;
    let mut app = db.connect(Role::App).await?;
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;

    let filled: Uuid =
        sqlx::query_scalar("INSERT INTO projects (name) VALUES ('a') RETURNING tenant_id")
            .fetch_one(&mut *tx)
            .await?;
    assert_eq!(filled, db.acme);
    let explicit_null: Uuid = sqlx::query_scalar(
        "INSERT INTO projects (tenant_id, name) VALUES (NULL, 'b') RETURNING tenant_id",
    )
    .fetch_one(&mut *tx)
    .await?;
    assert_eq!(explicit_null, db.acme);
    let same: Uuid = sqlx::query_scalar(
        "INSERT INTO projects (tenant_id, name) VALUES ($1, 'c') RETURNING tenant_id",
    )
    .bind(db.acme)
    .fetch_one(&mut *tx)
    .await?;
    assert_eq!(same, db.acme);

    let (code, message) = db_error(
        sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'planted')")
            .bind(db.globex)
            .execute(&mut *tx)
            .await,
    );
    assert_eq!(code, "42501");
    assert_eq!(
        message,
        format!(
            "row names tenant {} but the current tenant is {}",
            db.globex, db.acme
        )
    );
    tx.rollback().await?;

    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    sqlx::query("INSERT INTO projects (name) VALUES ('mine')")
        .execute(&mut *tx)
        .await?;
    let (code, message) = db_error(
        sqlx::query("UPDATE projects SET tenant_id = $1")
            .bind(db.globex)
            .execute(&mut *tx)
            .await,
    );
    assert_eq!(code, "42501");
    assert_eq!(
        message,
        "a row cannot be moved to another tenant (projects.tenant_id)"
    );
    tx.rollback().await?;

    // Nothing of the above reached globex.
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.globex, Uuid::new_v4())).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(count, 0);
    Ok(())
}

#[tokio::test]
async fn protect_twice_changes_nothing_and_the_view_shows_it() -> TestResult {
    let db = TestDb::new().await?;
    let mut owner = db.connect(Role::Owner).await?;
    sqlx::raw_sql("CREATE TABLE notes (tenant_id uuid, body text)")
        .execute(&mut owner)
        .await?;
    sqlx::query("SELECT tenancy.protect('notes')")
        .execute(&mut owner)
        .await?;
    let first = footprint(&mut owner, "notes").await?;
    sqlx::query("SELECT tenancy.protect('notes')")
        .execute(&mut owner)
        .await?;
    assert_eq!(footprint(&mut owner, "notes").await?, first);
    assert!(
        first.contains("tenancy_isolation") && first.contains("tenancy_bypass"),
        "{first}"
    );
    assert!(
        first.ends_with("truetrue | true"),
        "RLS enabled and forced, NOT NULL: {first}"
    );

    let rows: Vec<(String, String, bool, bool, bool)> = sqlx::query_as(
        "SELECT relation_name::text, tenant_column::text, rls_enabled, rls_forced, tenant_index
         FROM tenancy.protected_tables ORDER BY 1",
    )
    .fetch_all(&mut owner)
    .await?;
    let expect = |t: &str| (t.to_owned(), "tenant_id".to_owned(), true, true, true);
    assert_eq!(rows, [expect("notes"), expect("projects"), expect("tasks")]);

    // unprotect() takes the policy away; protect() puts it back.
    sqlx::query("SELECT tenancy.unprotect('notes')")
        .execute(&mut owner)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut owner)
        .await?;
    assert_eq!(count, 0, "readable without a context once unprotected");
    sqlx::query("SELECT tenancy.protect('notes')")
        .execute(&mut owner)
        .await?;
    let (_, message) = db_error(
        sqlx::query("SELECT count(*) FROM notes")
            .fetch_one(&mut owner)
            .await,
    );
    assert_eq!(message, "tenant context required");
    Ok(())
}

#[tokio::test]
async fn protect_creates_the_tenant_index_when_none_leads_with_the_column() -> TestResult {
    let db = TestDb::new().await?;
    let mut owner = db.connect(Role::Owner).await?;
    // The key includes the tenant column (protect() requires that) but does not lead with it.
    sqlx::raw_sql(
        "CREATE TABLE events (id bigint, tenant_id uuid NOT NULL, PRIMARY KEY (id, tenant_id))",
    )
    .execute(&mut owner)
    .await?;
    sqlx::query("SELECT tenancy.protect('events')")
        .execute(&mut owner)
        .await?;
    let leading: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a
           ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = 'events'::regclass ORDER BY 1",
    )
    .fetch_all(&mut owner)
    .await?;
    assert_eq!(leading, ["id", "tenant_id"]);
    let fk: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'events'::regclass
           AND contype = 'f' AND confrelid = 'tenancy.tenants'::regclass",
    )
    .fetch_one(&mut owner)
    .await?;
    assert_eq!(fk, 1, "tenant_id references the catalog");
    Ok(())
}

#[tokio::test]
async fn protect_rejects_bad_arguments_and_changes_nothing() -> TestResult {
    let db = TestDb::new().await?;
    let mut owner = db.connect(Role::Owner).await?;
    sqlx::raw_sql(
        "CREATE TABLE wrong_type (tenant_id text, body text);
         CREATE VIEW a_view AS SELECT 1 AS tenant_id;",
    )
    .execute(&mut owner)
    .await?;
    let cases = [
        (
            "SELECT tenancy.protect('no_such_table')",
            "42P01",
            "relation \"no_such_table\" does not exist",
        ),
        (
            "SELECT tenancy.protect('wrong_type')",
            "42804",
            "column \"tenant_id\" of table public.wrong_type must be of type uuid, not text",
        ),
        (
            "SELECT tenancy.protect('wrong_type', 'nope')",
            "42703",
            "column \"nope\" of table public.wrong_type does not exist",
        ),
        (
            "SELECT tenancy.protect('a_view')",
            "42809",
            "public.a_view is not a table",
        ),
        (
            "SELECT tenancy.protect('tenancy.tenants')",
            "42809",
            "the tenancy catalog cannot be protected",
        ),
        (
            "SELECT tenancy.unprotect('wrong_type')",
            "42704",
            "table public.wrong_type is not protected by tenancy",
        ),
    ];
    for (statement, code, message) in cases {
        let (got_code, got_message) = db_error(sqlx::query(statement).execute(&mut owner).await);
        assert_eq!(
            (got_code.as_str(), got_message.as_str()),
            (code, message),
            "{statement}"
        );
    }
    let before = footprint(&mut owner, "wrong_type").await?;
    assert_eq!(
        before, "falsefalse | false",
        "no policy, trigger, index or constraint was left behind"
    );

    // Someone else's table: refused before anything is changed.
    let mut app = db.connect(Role::App).await?;
    let (code, message) = db_error(
        sqlx::query("SELECT tenancy.protect('wrong_type')")
            .execute(&mut app)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "must be owner of table public.wrong_type")
    );
    Ok(())
}
