//! Two tenants, every command: each sees and touches only its own rows.

use futures::TryStreamExt;
use sqlx::Connection;
use tenancy_tests::{db_error, token, use_token, Role, TestDb, TestResult};
use uuid::Uuid;

async fn copy_out(conn: &mut sqlx::PgConnection, statement: &str) -> TestResult<String> {
    let chunks: Vec<_> = conn.copy_out_raw(statement).await?.try_collect().await?;
    Ok(chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect())
}

#[tokio::test]
async fn every_command_sees_and_touches_only_its_own_tenant() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    let laser = db.seed(db.globex, "laser").await?;

    let mut app = db.connect(Role::App).await?;
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;

    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects ORDER BY name")
        .fetch_all(&mut *tx)
        .await?;
    assert_eq!(names, ["rocket"]);

    let joined: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.name, t.title FROM projects p JOIN tasks t ON t.project_id = p.id ORDER BY t.title",
    )
    .fetch_all(&mut *tx)
    .await?;
    assert_eq!(
        joined,
        [
            ("rocket".to_owned(), "rocket first".to_owned()),
            ("rocket".to_owned(), "rocket second".to_owned())
        ]
    );

    let in_subquery: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasks WHERE project_id IN (SELECT id FROM projects)",
    )
    .fetch_one(&mut *tx)
    .await?;
    assert_eq!(in_subquery, 2);
    let by_foreign_id: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE project_id = $1")
        .bind(laser)
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(by_foreign_id, 0, "globex's tasks are invisible by id");

    let updated = sqlx::query("UPDATE tasks SET done = true")
        .execute(&mut *tx)
        .await?;
    assert_eq!(
        updated.rows_affected(),
        2,
        "only acme's two tasks are updated"
    );
    let renamed = sqlx::query("UPDATE projects SET name = 'hijacked' WHERE id = $1")
        .bind(laser)
        .execute(&mut *tx)
        .await?;
    assert_eq!(renamed.rows_affected(), 0);
    let deleted = sqlx::query("DELETE FROM tasks WHERE project_id = $1")
        .bind(laser)
        .execute(&mut *tx)
        .await?;
    assert_eq!(deleted.rows_affected(), 0);

    let copied = copy_out(&mut tx, "COPY projects (name) TO STDOUT").await?;
    assert_eq!(copied, "rocket\n");
    let copied = copy_out(
        &mut tx,
        "COPY (SELECT title FROM tasks ORDER BY title) TO STDOUT",
    )
    .await?;
    assert_eq!(copied, "rocket first\nrocket second\n");

    // A task pointing at globex's project cannot exist: the key includes the tenant.
    let (code, _) = db_error(
        sqlx::query("INSERT INTO tasks (project_id, title) VALUES ($1, 'sneak')")
            .bind(laser)
            .execute(&mut *tx)
            .await,
    );
    assert_eq!(code, "23503");
    tx.rollback().await?;

    // Globex is exactly as seeded.
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.globex, Uuid::new_v4())).await?;
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT p.name, t.done FROM projects p JOIN tasks t ON t.project_id = p.id ORDER BY t.title",
    )
    .fetch_all(&mut *tx)
    .await?;
    assert_eq!(
        rows,
        [("laser".to_owned(), false), ("laser".to_owned(), false)]
    );
    Ok(())
}

#[tokio::test]
async fn committed_writes_stay_in_their_tenant() -> TestResult {
    let db = TestDb::new().await?;
    let mut app = db.connect(Role::App).await?;

    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    let tenant: Uuid =
        sqlx::query_scalar("INSERT INTO projects (name) VALUES ('mine') RETURNING tenant_id")
            .fetch_one(&mut *tx)
            .await?;
    assert_eq!(tenant, db.acme, "tenant_id is filled from the context");
    tx.commit().await?;

    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.globex, Uuid::new_v4())).await?;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(seen, 0);
    let deleted = sqlx::query("DELETE FROM projects")
        .execute(&mut *tx)
        .await?;
    assert_eq!(deleted.rows_affected(), 0);
    tx.commit().await?;

    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
        .fetch_all(&mut *tx)
        .await?;
    assert_eq!(names, ["mine"]);
    Ok(())
}

#[tokio::test]
async fn copy_from_is_refused_on_protected_tables() -> TestResult {
    let db = TestDb::new().await?;
    let mut app = db.connect(Role::App).await?;
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    let outcome = match tx.copy_in_raw("COPY projects (name) FROM STDIN").await {
        Err(e) => Err(e),
        Ok(mut copy) => {
            copy.send(b"smuggled\n".as_slice()).await?;
            copy.finish().await
        }
    };
    let (code, message) = db_error(outcome);
    assert_eq!(code, "0A000");
    assert!(
        message.contains("COPY FROM not supported with row-level security"),
        "{message}"
    );
    tx.rollback().await?;

    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(count, 0, "nothing was copied in");
    Ok(())
}
