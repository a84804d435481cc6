//! Adopting an existing single-tenant schema (seed 001's migration
//! strategy): docs/adopting.sql, run step by step as written, turns a
//! schema with rows into a protected one (every row in the adopted tenant,
//! keys and foreign keys with the tenant column, isolation in force, the
//! lint clean), and docs/adopting-rollback.sql brings the schema back to
//! exactly what it was, rows intact.

use sqlx::{Connection, PgConnection};
use tenancy_tests::{token, use_token, Role, TestDb, TestResult};
use uuid::Uuid;

const ADOPT: &str = include_str!("../../docs/adopting.sql");
const ROLLBACK: &str = include_str!("../../docs/adopting-rollback.sql");

/// Runs each `-- step:` of `script` as its own query, as psql would with
/// autocommit.
async fn run_steps(conn: &mut PgConnection, script: &str) -> TestResult<usize> {
    let mut steps = 0;
    for step in script.split("\n-- step:").skip(1) {
        // The rest of the marker's line says what the step does.
        let step = step.split_once('\n').map_or("", |(_, sql)| sql);
        sqlx::raw_sql(step)
            .execute(&mut *conn)
            .await
            .map_err(|e| format!("step {step:.80}: {e}"))?;
        steps += 1;
    }
    Ok(steps)
}

/// Columns, constraints, indexes and row-level security of the two tables.
async fn schema(conn: &mut PgConnection) -> TestResult<String> {
    Ok(sqlx::query_scalar(
        "SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
             SELECT format('%s.%s %s not null: %s default: %s', c.relname, a.attname,
                           format_type(a.atttypid, a.atttypmod), a.attnotnull,
                           pg_get_expr(d.adbin, d.adrelid))
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE c.relname IN ('customers', 'orders') AND a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT format('%s %s %s', k.conrelid::regclass, k.conname, pg_get_constraintdef(k.oid))
             FROM pg_constraint k WHERE k.conrelid IN ('customers'::regclass, 'orders'::regclass)
             UNION ALL
             SELECT pg_get_indexdef(i.indexrelid)
             FROM pg_index i WHERE i.indrelid IN ('customers'::regclass, 'orders'::regclass)
             UNION ALL
             SELECT format('%s rls %s forced %s triggers %s', c.relname, c.relrowsecurity,
                           c.relforcerowsecurity, (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid))
             FROM pg_class c WHERE c.relname IN ('customers', 'orders')
         ) t(x)",
    )
    .fetch_one(conn)
    .await?)
}

async fn count(conn: &mut PgConnection, sql: &str) -> TestResult<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(conn).await?)
}

#[tokio::test]
async fn a_single_tenant_schema_with_rows_is_adopted_in_batches_and_rolled_back() -> TestResult {
    let db = TestDb::new().await?;
    let mut su = db.superuser().await?;
    sqlx::raw_sql(
        "CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                 email text NOT NULL UNIQUE, name text);
         CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                              customer_id bigint NOT NULL REFERENCES customers (id),
                              total numeric NOT NULL);
         INSERT INTO customers (email, name)
             SELECT 'c' || g || '@legacy.test', 'Customer ' || g FROM generate_series(1, 1200) g;
         INSERT INTO orders (customer_id, total)
             SELECT 1 + g % 1200, g FROM generate_series(1, 2500) g;
         GRANT SELECT, INSERT ON customers, orders TO tenancy_t_app;",
    )
    .execute(&mut su)
    .await?;
    let before = schema(&mut su).await?;
    let rows = "SELECT (SELECT count(*) FROM customers) * 10000 + (SELECT count(*) FROM orders)";
    assert_eq!(count(&mut su, rows).await?, 1200 * 10000 + 2500);

    let steps = run_steps(&mut su, ADOPT).await?;
    assert!(steps > 10, "{steps} steps");

    // Every row is the adopted tenant's; nothing lost.
    let legacy: Uuid = sqlx::query_scalar("SELECT id FROM tenancy.tenants WHERE slug = 'legacy'")
        .fetch_one(&mut su)
        .await?;
    assert_eq!(count(&mut su, rows).await?, 1200 * 10000 + 2500);
    let strays = count(
        &mut su,
        &format!(
            "SELECT (SELECT count(*) FROM customers WHERE tenant_id <> '{legacy}')
                  + (SELECT count(*) FROM orders WHERE tenant_id <> '{legacy}')"
        ),
    )
    .await?;
    assert_eq!(strays, 0);
    // Keys and foreign keys carry the tenant; the lint has nothing but the
    // shared identity sequences to say about the adopted tables.
    let findings: Vec<String> = sqlx::query_scalar(
        "SELECT rule || ' ' || object FROM tenancy.lint()
         WHERE object LIKE '%customers%' OR object LIKE '%orders%' ORDER BY 1",
    )
    .fetch_all(&mut su)
    .await?;
    assert_eq!(
        findings,
        ["TN012 public.customers.id", "TN012 public.orders.id"]
    );

    // Isolation in force: the adopted tenant sees its rows, another none,
    // and an address may now repeat in another tenant.
    let mut app = db.connect(Role::App).await?;
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(legacy, Uuid::new_v4())).await?;
    assert_eq!(
        count(&mut tx, "SELECT count(*) FROM customers").await?,
        1200
    );
    tx.rollback().await?;
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    assert_eq!(count(&mut tx, "SELECT count(*) FROM orders").await?, 0);
    sqlx::query("INSERT INTO customers (email, name) VALUES ('c1@legacy.test', 'Another')")
        .execute(&mut *tx)
        .await?;
    // Rolled back: the way back is for while the adopted tenant is alone.
    tx.rollback().await?;

    let steps = run_steps(&mut su, ROLLBACK).await?;
    assert!(steps > 5, "{steps} steps");
    assert_eq!(schema(&mut su).await?, before, "the schema is as it was");
    assert_eq!(count(&mut su, rows).await?, 1200 * 10000 + 2500);
    assert_eq!(
        count(
            &mut su,
            "SELECT count(*) FROM tenancy.tenants WHERE slug = 'legacy'"
        )
        .await?,
        0
    );
    Ok(())
}
