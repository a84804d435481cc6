//! tenancy.lint() and `tenancy-server lint`: each rule fires on a schema
//! that breaks it, and its own fix SQL, run as given, makes the finding go
//! away. The fixture schema and the service's own migrations lint clean
//! (the service's with the baseline the repository keeps, sql/lint-baseline.json).

use sqlx::PgConnection;
use tenancy_server::jobs::lint::{self, Baseline, Finding};
use tenancy_tests::server::TestApp;
use tenancy_tests::{TestDb, TestResult};
use uuid::Uuid;

async fn findings(conn: &mut PgConnection) -> TestResult<Vec<Finding>> {
    Ok(sqlx::query_as(
        "SELECT rule, severity, object, message, fix FROM tenancy.lint() ORDER BY rule, object",
    )
    .fetch_all(conn)
    .await?)
}

/// The finding of `rule` on `object`, if any.
async fn finding(conn: &mut PgConnection, rule: &str, object: &str) -> TestResult<Option<Finding>> {
    Ok(findings(conn)
        .await?
        .into_iter()
        .find(|f| f.rule == rule && f.object == object))
}

/// Runs `setup`, expects `rule` on `object` with `severity`, runs the
/// finding's own fix and expects it gone (or, for rules whose fix leaves a
/// second finding of the same rule, the `then` severity next).
async fn fires_then_fix_clears(
    conn: &mut PgConnection,
    setup: &str,
    rule: &str,
    object: &str,
    severity: &str,
) -> TestResult {
    sqlx::raw_sql(setup).execute(&mut *conn).await?;
    let found = finding(conn, rule, object)
        .await?
        .ok_or_else(|| format!("{rule} on {object} after: {setup}"))?;
    assert_eq!(found.severity, severity, "{found:?}");
    assert!(!found.message.is_empty());
    let fix = found.fix.ok_or_else(|| format!("{rule} has a fix"))?;
    sqlx::raw_sql(&fix).execute(&mut *conn).await?;
    let left = finding(conn, rule, object).await?;
    assert!(left.is_none(), "after `{fix}`: {left:?}");
    Ok(())
}

/// Runs `sql` with the DDL event trigger off, as a DBA who works around
/// protect()'s own checks would.
fn around_the_checks(sql: &str) -> String {
    format!(
        "ALTER EVENT TRIGGER tenancy_on_ddl DISABLE; {sql}; ALTER EVENT TRIGGER tenancy_on_ddl ENABLE;"
    )
}

#[tokio::test]
async fn the_fixture_schema_lints_clean_but_for_its_identity_columns() -> TestResult {
    let db = TestDb::new().await?;
    let all = findings(&mut db.superuser().await?).await?;
    let rules: Vec<(&str, &str)> = all
        .iter()
        .map(|f| (f.rule.as_str(), f.object.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            ("TN012", "public.projects.id"),
            ("TN012", "public.tasks.id")
        ],
        "{all:#?}"
    );
    assert!(all.iter().all(|f| f.severity == "info" && f.fix.is_none()));
    Ok(())
}

#[tokio::test]
async fn tn001_a_table_with_a_tenant_column_that_is_not_protected() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    // A table without a tenant column is nobody's business.
    // Nor is a tenant column protect() could not use (not a uuid).
    sqlx::raw_sql(
        "CREATE TABLE countries (code text PRIMARY KEY);
         CREATE TABLE imports (tenant_id text, line text)",
    )
    .execute(&mut conn)
    .await?;
    assert!(findings(&mut conn).await?.iter().all(|f| f.rule != "TN001"));
    fires_then_fix_clears(
        &mut conn,
        "CREATE TABLE notes (tenant_id uuid, body text)",
        "TN001",
        "public.notes",
        "error",
    )
    .await
}

#[tokio::test]
async fn tn002_row_level_security_not_forced_or_not_enabled() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    fires_then_fix_clears(
        &mut conn,
        "ALTER TABLE projects NO FORCE ROW LEVEL SECURITY",
        "TN002",
        "public.projects",
        "error",
    )
    .await?;
    // Disabled and not forced: one fix does both.
    fires_then_fix_clears(
        &mut conn,
        "ALTER TABLE tasks DISABLE ROW LEVEL SECURITY, NO FORCE ROW LEVEL SECURITY",
        "TN002",
        "public.tasks",
        "error",
    )
    .await?;
    // tenancy's own policy, rewritten to let everything through.
    fires_then_fix_clears(
        &mut conn,
        "ALTER POLICY tenancy_isolation ON projects USING (true)",
        "TN002",
        "tenancy_isolation on public.projects",
        "error",
    )
    .await?;
    // The bypass policy, opened to everyone.
    fires_then_fix_clears(
        &mut conn,
        "ALTER POLICY tenancy_bypass ON tasks TO PUBLIC",
        "TN002",
        "tenancy_bypass on public.tasks",
        "error",
    )
    .await
}

#[tokio::test]
async fn tn003_another_permissive_policy_on_a_protected_table() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    // A restrictive policy only narrows: no finding.
    sqlx::raw_sql("CREATE POLICY narrow ON projects AS RESTRICTIVE FOR SELECT USING (name <> '')")
        .execute(&mut conn)
        .await?;
    assert!(findings(&mut conn).await?.iter().all(|f| f.rule != "TN003"));
    fires_then_fix_clears(
        &mut conn,
        "CREATE POLICY everything ON projects FOR SELECT USING (true)",
        "TN003",
        "everything on public.projects",
        "error",
    )
    .await
}

#[tokio::test]
async fn tn004_a_foreign_key_between_protected_tables_without_the_tenant_column() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    // The fixture's own key pairs the tenants: no finding (see the clean test).
    let setup = around_the_checks(
        "ALTER TABLE projects ADD CONSTRAINT projects_id_key UNIQUE (id);
         ALTER TABLE tasks ADD CONSTRAINT tasks_project_fkey FOREIGN KEY (project_id) REFERENCES projects (id)",
    );
    fires_then_fix_clears(
        &mut conn,
        &setup,
        "TN004",
        "tasks_project_fkey on public.tasks",
        "error",
    )
    .await
}

#[tokio::test]
async fn tn005_a_unique_constraint_or_index_without_the_tenant_column() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    fires_then_fix_clears(
        &mut conn,
        &around_the_checks("ALTER TABLE projects ADD CONSTRAINT projects_name_key UNIQUE (name)"),
        "TN005",
        "public.projects_name_key",
        "error",
    )
    .await?;
    fires_then_fix_clears(
        &mut conn,
        &around_the_checks("CREATE UNIQUE INDEX tasks_title_idx ON tasks (title)"),
        "TN005",
        "public.tasks_title_idx",
        "error",
    )
    .await
}

#[tokio::test]
async fn tn006_no_index_leads_with_the_tenant_column() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    // protect() made one; without the primary key and it, none is left.
    fires_then_fix_clears(
        &mut conn,
        "CREATE TABLE notes (tenant_id uuid NOT NULL, body text);
         SELECT tenancy.protect('notes');
         DROP INDEX notes_tenant_id_idx",
        "TN006",
        "public.notes",
        "warning",
    )
    .await
}

#[tokio::test]
async fn tn007_a_view_that_reads_a_protected_table_as_its_owner() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    sqlx::raw_sql("CREATE VIEW invoker AS SELECT * FROM projects")
        .execute(&mut conn)
        .await?;
    sqlx::raw_sql("ALTER VIEW invoker SET (security_invoker = true)")
        .execute(&mut conn)
        .await?;
    assert!(finding(&mut conn, "TN007", "public.invoker")
        .await?
        .is_none());
    fires_then_fix_clears(
        &mut conn,
        "CREATE VIEW project_names AS SELECT p.name FROM projects p JOIN tasks t USING (tenant_id)",
        "TN007",
        "public.project_names",
        "error",
    )
    .await?;
    // Through another view: an invoker view over the table, and a view
    // over it that runs as its owner (the invoker view then runs as that
    // owner too).
    fires_then_fix_clears(
        &mut conn,
        "CREATE VIEW outer_names AS SELECT name FROM invoker",
        "TN007",
        "public.outer_names",
        "error",
    )
    .await?;
    assert!(finding(&mut conn, "TN007", "public.invoker")
        .await?
        .is_none());
    // A materialized view holds the rows themselves: no setting fixes it.
    sqlx::raw_sql("CREATE MATERIALIZED VIEW snapshot AS SELECT * FROM projects WITH NO DATA")
        .execute(&mut conn)
        .await?;
    let found = finding(&mut conn, "TN007", "public.snapshot")
        .await?
        .ok_or("a materialized view of a protected table")?;
    assert!(found.fix.is_none() && found.message.contains("materialized"));
    Ok(())
}

#[tokio::test]
async fn tn008_a_security_definer_function_over_protected_tables() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    sqlx::raw_sql(
        "CREATE FUNCTION tidy() RETURNS int LANGUAGE sql SECURITY DEFINER
         SET search_path = pg_catalog, pg_temp AS $$ SELECT 1 $$",
    )
    .execute(&mut conn)
    .await?;
    assert!(findings(&mut conn).await?.iter().all(|f| f.rule != "TN008"));
    // Two findings in turn: the open search_path, then the definer's rights.
    sqlx::raw_sql(
        "CREATE FUNCTION count_projects() RETURNS bigint LANGUAGE sql SECURITY DEFINER
         AS $$ SELECT count(*) FROM public.projects $$",
    )
    .execute(&mut conn)
    .await?;
    let object = "public.count_projects()";
    let first = finding(&mut conn, "TN008", object).await?.ok_or("TN008")?;
    assert_eq!(first.severity, "error");
    let fix = first.fix.ok_or("a fix")?;
    assert!(fix.contains("search_path"), "{fix}");
    sqlx::raw_sql(&fix).execute(&mut conn).await?;
    fires_then_fix_clears(&mut conn, "SELECT 1", "TN008", object, "error").await
}

#[tokio::test]
async fn tn009_an_application_role_that_bypasses_or_can_become_one_that_does() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    let suffix = Uuid::new_v4().simple().to_string();
    let (reader, bypass, app, middle) = (
        format!("lint_reader_{suffix}"),
        format!("lint_bypass_{suffix}"),
        format!("lint_app_{suffix}"),
        format!("lint_middle_{suffix}"),
    );
    // A BYPASSRLS role with no privilege here is another database's matter.
    sqlx::raw_sql(&format!(
        "CREATE ROLE {bypass} BYPASSRLS; CREATE ROLE {reader} BYPASSRLS"
    ))
    .execute(&mut conn)
    .await?;
    assert!(finding(&mut conn, "TN009", &bypass).await?.is_none());
    let outcome = async {
        fires_then_fix_clears(
            &mut conn,
            &format!("GRANT SELECT ON projects TO {reader}"),
            "TN009",
            &reader,
            "warning",
        )
        .await?;
        // A member through another role (app -> middle -> bypass).
        fires_then_fix_clears(
            &mut conn,
            &format!(
                "CREATE ROLE {app} LOGIN; GRANT SELECT ON tasks TO {app}; \
                 CREATE ROLE {middle}; GRANT {bypass} TO {middle}; GRANT {middle} TO {app}"
            ),
            "TN009",
            &app,
            "error",
        )
        .await
    }
    .await;
    // Roles are the cluster's: leave none behind.
    sqlx::raw_sql(&format!(
        "DROP OWNED BY {reader}, {app}; DROP ROLE IF EXISTS {reader}; DROP ROLE IF EXISTS {app}; \
         DROP ROLE IF EXISTS {middle}; DROP ROLE IF EXISTS {bypass}"
    ))
    .execute(&mut conn)
    .await?;
    outcome
}

#[tokio::test]
async fn tn010_a_partition_or_child_that_is_not_protected() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    fires_then_fix_clears(
        &mut conn,
        &around_the_checks("CREATE TABLE projects_archive () INHERITS (projects)"),
        "TN010",
        "public.projects_archive",
        "error",
    )
    .await?;
    // The child is not also reported as an unprotected table of its own.
    assert!(finding(&mut conn, "TN001", "public.projects_archive")
        .await?
        .is_none());
    Ok(())
}

#[tokio::test]
async fn tn011_privileges_granted_to_public_on_a_protected_table() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    fires_then_fix_clears(
        &mut conn,
        "GRANT SELECT, INSERT ON projects TO PUBLIC",
        "TN011",
        "public.projects",
        "warning",
    )
    .await?;
    fires_then_fix_clears(
        &mut conn,
        "GRANT SELECT (name), UPDATE (name) ON projects TO PUBLIC",
        "TN011",
        "public.projects.name",
        "warning",
    )
    .await
}

#[tokio::test]
async fn tn012_a_sequence_shared_by_every_tenant() -> TestResult {
    let db = TestDb::new().await?;
    let mut conn = db.superuser().await?;
    sqlx::raw_sql(
        "CREATE TABLE notes (tenant_id uuid NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(),
                             n bigserial, PRIMARY KEY (tenant_id, id));
         SELECT tenancy.protect('notes')",
    )
    .execute(&mut conn)
    .await?;
    let found = finding(&mut conn, "TN012", "public.notes.n")
        .await?
        .ok_or("a bigserial of a protected table")?;
    assert_eq!((found.severity.as_str(), found.fix), ("info", None));
    assert!(finding(&mut conn, "TN012", "public.notes.id")
        .await?
        .is_none());
    Ok(())
}

#[tokio::test]
async fn the_services_own_schema_lints_clean_with_the_repositorys_baseline() -> TestResult {
    let app = TestApp::spawn().await?;
    let mut conn = app.superuser().await?;
    let all = findings(&mut conn).await?;
    let baseline: Baseline = serde_json::from_str(include_str!("../../sql/lint-baseline.json"))?;
    assert!(
        baseline.accepted.iter().all(|a| !a.reason.is_empty()),
        "every accepted finding says why"
    );
    let left = lint::new_findings(all.clone(), &baseline);
    assert!(left.is_empty(), "{left:#?}");
    // And the baseline accepts nothing that is not there (stale entries).
    for accepted in &baseline.accepted {
        assert!(
            all.iter()
                .any(|f| f.rule == accepted.rule && f.object == accepted.object),
            "stale baseline entry {accepted:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_command_prints_sarif_and_exits_1_on_findings_unless_the_baseline_accepts_them(
) -> TestResult {
    let db = TestDb::new().await?;
    sqlx::raw_sql("CREATE TABLE notes (tenant_id uuid, body text)")
        .execute(&mut db.superuser().await?)
        .await?;
    let url = db.url(tenancy_tests::Role::Owner);
    let all = lint::findings(&url).await?;
    let sarif = lint::sarif(&all);
    assert_eq!(sarif["version"], "2.1.0");
    let run = &sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "tenancy-lint");
    assert_eq!(
        run["tool"]["driver"]["rules"].as_array().map(Vec::len),
        Some(lint::RULES.len())
    );
    let result = run["results"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["ruleId"] == "TN001"))
        .ok_or("TN001 in the SARIF results")?;
    assert_eq!(result["level"], "error");
    assert_eq!(
        result["locations"][0]["logicalLocations"][0]["fullyQualifiedName"],
        "public.notes"
    );
    assert_eq!(
        result["properties"]["fix"],
        "SELECT tenancy.protect('public.notes', 'tenant_id');"
    );
    let rule_index = result["ruleIndex"].as_u64().ok_or("ruleIndex")?;
    assert_eq!(
        run["tool"]["driver"]["rules"][rule_index as usize]["id"],
        "TN001"
    );

    let dir = std::env::temp_dir().join(format!("lint-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let baseline = dir.join("baseline.json");
    let args = |baseline_in: Option<std::path::PathBuf>, write: Option<std::path::PathBuf>| {
        lint::LintArgs {
            database_url: url.clone(),
            format: lint::Format::Json,
            baseline: baseline_in,
            write_baseline: write,
            fail_on: lint::FailOn::Warning,
        }
    };
    assert_eq!(
        lint::run(args(None, None)).await?,
        1,
        "an error finding fails"
    );
    assert_eq!(lint::run(args(None, Some(baseline.clone()))).await?, 0);
    assert_eq!(
        lint::run(args(Some(baseline.clone()), None)).await?,
        0,
        "every finding accepted"
    );
    // A new finding is not covered by the old baseline.
    sqlx::raw_sql("CREATE TABLE memos (tenant_id uuid, body text)")
        .execute(&mut db.superuser().await?)
        .await?;
    assert_eq!(lint::run(args(Some(baseline.clone()), None)).await?, 1);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
