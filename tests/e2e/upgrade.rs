//! Versions of the extension: a database created with the released 0.1.0,
//! holding tenants, keys and protected rows, updates in place with
//! `ALTER EXTENSION tenancy UPDATE`, keeps its isolation, keys and rows, and
//! ends with exactly what a fresh install of the current version creates.
//! `DROP EXTENSION` leaves only what it says (its empty schema, the
//! cluster's role), and protected tables closed, not open.

use sqlx::{Connection, PgConnection};
use tenancy_tests::{db_error, token, use_token, Role, TestDb, TestResult};
use uuid::Uuid;

const RELEASED: &str = "0.1.0";
const CURRENT: &str = "0.2.0";

async fn version(conn: &mut PgConnection) -> TestResult<String> {
    Ok(
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'tenancy'")
            .fetch_one(conn)
            .await?,
    )
}

/// The project names the application role sees in `tenant`'s context.
async fn visible(db: &TestDb, tenant: Uuid) -> TestResult<Vec<String>> {
    let mut app = db.connect(Role::App).await?;
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(tenant, Uuid::new_v4())).await?;
    let names = sqlx::query_scalar("SELECT name FROM projects ORDER BY name")
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(names)
}

/// Everything the extension owns, described, with each function's and
/// view's definition and each member's privileges: what an install is.
async fn footprint(conn: &mut PgConnection) -> TestResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT pg_describe_object(d.classid, d.objid, d.objsubid) || ' ' || coalesce(
                    CASE d.classid
                        WHEN 'pg_proc'::regclass THEN
                            md5(pg_get_functiondef(d.objid)) || coalesce((SELECT proacl::text FROM pg_proc WHERE oid = d.objid), '')
                        WHEN 'pg_class'::regclass THEN
                            coalesce(md5(pg_get_viewdef(d.objid)), '') || coalesce((SELECT relacl::text FROM pg_class WHERE oid = d.objid), '')
                    END, '')
         FROM pg_depend d
         WHERE d.refclassid = 'pg_extension'::regclass
           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'tenancy')
           AND d.deptype = 'e'
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await?)
}

#[tokio::test]
async fn a_released_install_with_data_updates_in_place_and_keeps_isolation_keys_and_rows(
) -> TestResult {
    let db = TestDb::at_version(Some(RELEASED)).await?;
    db.seed(db.acme, "rocket").await?;
    db.seed(db.globex, "laser").await?;
    let mut su = db.superuser().await?;
    assert_eq!(version(&mut su).await?, RELEASED);
    let keys_before: Vec<String> =
        sqlx::query_scalar("SELECT kid FROM tenancy.key_list ORDER BY kid")
            .fetch_all(&mut su)
            .await?;
    assert_eq!(visible(&db, db.acme).await?, ["rocket"]);

    sqlx::raw_sql("ALTER EXTENSION tenancy UPDATE")
        .execute(&mut su)
        .await?;
    assert_eq!(version(&mut su).await?, CURRENT);

    // Rows, tenants and keys are where they were.
    let keys_after: Vec<String> =
        sqlx::query_scalar("SELECT kid FROM tenancy.key_list ORDER BY kid")
            .fetch_all(&mut su)
            .await?;
    assert_eq!(keys_after, keys_before);
    let (projects, tasks): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM projects), (SELECT count(*) FROM tasks)")
            .fetch_one(&mut su)
            .await?;
    assert_eq!((projects, tasks), (2, 4));
    // Isolation holds with the keys signed before the update.
    assert_eq!(visible(&db, db.acme).await?, ["rocket"]);
    assert_eq!(visible(&db, db.globex).await?, ["laser"]);
    let mut app = db.connect(Role::App).await?;
    let (_, message) = db_error(
        sqlx::query("SELECT * FROM projects")
            .fetch_all(&mut app)
            .await,
    );
    assert_eq!(message, "tenant context required");
    // What 0.2.0 adds works on the updated database.
    let findings: Vec<String> =
        sqlx::query_scalar("SELECT rule || ' ' || object FROM tenancy.lint() ORDER BY 1")
            .fetch_all(&mut su)
            .await?;
    assert_eq!(
        findings,
        ["TN012 public.projects.id", "TN012 public.tasks.id"]
    );
    Ok(())
}

#[tokio::test]
async fn an_updated_install_has_exactly_what_a_fresh_install_has() -> TestResult {
    let updated = TestDb::at_version(Some(RELEASED)).await?;
    let mut su = updated.superuser().await?;
    let released = footprint(&mut su).await?;
    sqlx::raw_sql("ALTER EXTENSION tenancy UPDATE")
        .execute(&mut su)
        .await?;
    let after = footprint(&mut su).await?;
    let fresh = footprint(&mut TestDb::new().await?.superuser().await?).await?;
    assert_ne!(released, fresh, "the versions differ");
    let only_updated: Vec<&String> = after.iter().filter(|o| !fresh.contains(o)).collect();
    let only_fresh: Vec<&String> = fresh.iter().filter(|o| !after.contains(o)).collect();
    assert!(
        only_updated.is_empty() && only_fresh.is_empty(),
        "only after the update: {only_updated:#?}\nonly in a fresh install: {only_fresh:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn drop_extension_leaves_only_its_empty_schema_and_role_and_tables_closed() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    let mut su = db.superuser().await?;
    // Protected tables depend on it: a plain DROP says so and changes nothing.
    let (code, _) = db_error(
        sqlx::raw_sql("DROP EXTENSION tenancy")
            .execute(&mut su)
            .await,
    );
    assert_eq!(code, "2BP01");
    sqlx::raw_sql("DROP EXTENSION tenancy CASCADE")
        .execute(&mut su)
        .await?;
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'tenancy')
              + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                 WHERE n.nspname = 'tenancy')
              + (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'tenancy%')
              + (SELECT count(*) FROM pg_policy WHERE polname LIKE 'tenancy%')
              + (SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%tenancy%')
              + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'tenancy')",
    )
    .fetch_one(&mut su)
    .await?;
    assert_eq!(left, 0, "nothing of the extension is left in the database");
    // What it says it leaves: the schema it was installed in, empty
    // (PostgreSQL does not let an extension own its own schema), and the
    // role, which is the cluster's (other databases may use it).
    let schema: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'tenancy'")
            .fetch_one(&mut su)
            .await?;
    assert_eq!(schema, 1);
    let role: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = 'tenancy_admin'")
            .fetch_one(&mut su)
            .await?;
    assert_eq!(role, 1);
    // The tables keep row-level security on and forced with no policy: no
    // role but a superuser reads a row, instead of every role reading all.
    let forced: bool = sqlx::query_scalar(
        "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = 'projects'::regclass",
    )
    .fetch_one(&mut su)
    .await?;
    assert!(forced);
    for role in [Role::App, Role::Owner] {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
            .fetch_one(&mut db.connect(role).await?)
            .await?;
        assert_eq!(rows, 0, "{role:?} reads nothing");
    }
    Ok(())
}
