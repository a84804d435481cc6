//! The tenant catalog: creation, status, host resolution, bad input.

use tenancy_tests::{db_error, Role, TestDb, TestResult};
use uuid::Uuid;

#[tokio::test]
async fn create_tenant_rejects_bad_input_and_changes_nothing() -> TestResult {
    let db = TestDb::new().await?;
    let mut admin = db.connect(Role::Admin).await?;
    let cases = [
        (
            "SELECT tenancy.create_tenant('', 'Empty')",
            "22023",
            "tenant slug must not be empty",
        ),
        (
            "SELECT tenancy.create_tenant(NULL, 'Null')",
            "22023",
            "tenant slug must not be empty",
        ),
        (
            "SELECT tenancy.create_tenant('Big Co', 'Big')",
            "22023",
            "tenant slug \"Big Co\" is not URL-safe",
        ),
        (
            "SELECT tenancy.create_tenant('-dash', 'Dash')",
            "22023",
            "tenant slug \"-dash\" is not URL-safe",
        ),
        (
            "SELECT tenancy.create_tenant('a/b', 'Slash')",
            "22023",
            "tenant slug \"a/b\" is not URL-safe",
        ),
        (
            "SELECT tenancy.create_tenant('acme', 'Again')",
            "23505",
            "a tenant with slug \"acme\" already exists",
        ),
        (
            "SELECT tenancy.create_tenant('fresh', '  ')",
            "22023",
            "tenant name must not be empty",
        ),
        (
            "SELECT tenancy.create_tenant('fresh', 'Fresh', NULL, '[1]')",
            "22023",
            "tenant configuration must be a JSON object",
        ),
        (
            "SELECT tenancy.create_tenant('fresh', 'Fresh', NULL, '{}', NULL, 'red')",
            "22023",
            "primary_color \"red\" is not a colour of the form #RRGGBB",
        ),
        (
            "SELECT tenancy.set_tenant_status('not-a-uuid', 'active')",
            "22P02",
            "invalid input syntax for type uuid: \"not-a-uuid\"",
        ),
        (
            "SELECT tenancy.set_tenant_status('00000000-0000-0000-0000-000000000000', 'active')",
            "P0002",
            "tenant 00000000-0000-0000-0000-000000000000 does not exist",
        ),
    ];
    for (statement, code, message) in cases {
        let (got_code, got_message) = db_error(sqlx::query(statement).execute(&mut admin).await);
        assert_eq!(
            (got_code.as_str(), got_message.as_str()),
            (code, message),
            "{statement}"
        );
    }
    let (code, message) = db_error(
        sqlx::query("SELECT tenancy.set_tenant_status($1, 'deleted')")
            .bind(db.acme)
            .execute(&mut admin)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("22023", "unknown tenant status \"deleted\"")
    );

    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT slug, status FROM tenancy.tenants ORDER BY slug")
            .fetch_all(&mut admin)
            .await?;
    assert_eq!(
        rows,
        [
            ("acme".into(), "active".into()),
            ("globex".into(), "active".into())
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_tenant_has_every_field_of_the_entity() -> TestResult {
    let db = TestDb::new().await?;
    let mut admin = db.connect(Role::Admin).await?;
    let id: Uuid = sqlx::query_scalar(
        "SELECT tenancy.create_tenant('initech', 'Initech', 'Initech Corp', '{\"system_prompt\": \"be brief\"}',
                                      'https://cdn.example/logo.png', '#1A2B3C')",
    )
    .fetch_one(&mut admin)
    .await?;
    let row: (String, String, String, Option<String>, Option<String>, serde_json::Value, String, bool) = sqlx::query_as(
        "SELECT slug, name, display_name, logo_url, primary_color, configuration, status, created_at <= updated_at
         FROM tenancy.tenants WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(
        row,
        (
            "initech".into(),
            "Initech".into(),
            "Initech Corp".into(),
            Some("https://cdn.example/logo.png".into()),
            Some("#1A2B3C".into()),
            serde_json::json!({"system_prompt": "be brief"}),
            "active".into(),
            true
        )
    );
    let audited: (String, Option<Uuid>) =
        sqlx::query_as("SELECT acting_role::text, tenant_id FROM tenancy.audit_log WHERE action = 'tenants.insert' AND tenant_id = $1")
            .bind(id)
            .fetch_one(&mut admin)
            .await?;
    assert_eq!(audited, ("tenancy_t_admin".to_owned(), Some(id)));
    Ok(())
}

#[tokio::test]
async fn hosts_resolve_by_subdomain_then_custom_domain() -> TestResult {
    let db = TestDb::new().await?;
    let mut admin = db.connect(Role::Admin).await?;
    sqlx::query("SELECT tenancy.set_setting('base_domain', 'Example.COM')")
        .execute(&mut admin)
        .await?;
    sqlx::query("SELECT tenancy.add_domain($1, 'Portal.Globex.io')")
        .bind(db.globex)
        .execute(&mut admin)
        .await?;

    // The application role resolves hosts before it has any tenant context.
    let mut app = db.connect(Role::App).await?;
    let cases: [(&str, Option<(Uuid, &str)>); 7] = [
        ("acme.example.com", Some((db.acme, "subdomain"))),
        ("ACME.example.com:8443", Some((db.acme, "subdomain"))),
        ("acme.example.com.", Some((db.acme, "subdomain"))),
        ("portal.globex.io", Some((db.globex, "custom_domain"))),
        ("nobody.example.com", None),
        ("deep.acme.example.com", None),
        ("example.com", None),
    ];
    for (host, expected) in cases {
        let got: Option<(Uuid, String)> =
            sqlx::query_as("SELECT tenant_id, matched_by FROM tenancy.resolve_tenant($1)")
                .bind(host)
                .fetch_optional(&mut app)
                .await?;
        assert_eq!(
            got.as_ref().map(|(id, by)| (*id, by.as_str())),
            expected,
            "{host}"
        );
    }
    for host in ["bad host", "<script>.example.com", "", "a..example.com"] {
        let (code, message) = db_error(
            sqlx::query("SELECT * FROM tenancy.resolve_tenant($1)")
                .bind(host)
                .fetch_all(&mut app)
                .await,
        );
        assert_eq!(code, "22023", "{host}");
        assert!(
            message.starts_with("invalid host name"),
            "{host}: {message}"
        );
    }

    let (code, message) = db_error(
        sqlx::query("SELECT tenancy.add_domain($1, 'portal.globex.io')")
            .bind(db.acme)
            .execute(&mut admin)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "23505",
            "domain \"portal.globex.io\" is already mapped to a tenant"
        )
    );
    Ok(())
}

#[tokio::test]
async fn drop_tenant_removes_an_inactive_tenant_and_every_row_it_has() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "launch").await?;
    db.seed(db.globex, "rollout").await?;
    let mut admin = db.connect(Role::Admin).await?;
    let drop =
        |tenant: Uuid| sqlx::query_scalar::<_, i64>("SELECT tenancy.drop_tenant($1)").bind(tenant);
    // Active: refused, nothing removed.
    let (code, message) = db_error(drop(db.acme).fetch_one(&mut admin).await);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("55000", format!("tenant {} is active", db.acme).as_str())
    );
    // Not a tenancy_admin: refused.
    let mut app = db.connect(Role::App).await?;
    let (code, _) = db_error(drop(db.acme).fetch_one(&mut app).await);
    assert_eq!(code, "42501");
    // Inactive: its projects and tasks and its catalog row go; globex's stay.
    sqlx::query("SELECT tenancy.set_tenant_status($1, 'inactive')")
        .bind(db.acme)
        .execute(&mut admin)
        .await?;
    let mut tx = sqlx::Connection::begin(&mut admin).await?;
    let deleted = drop(db.acme).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    // The project directly; its tasks by their ON DELETE CASCADE.
    assert_eq!(deleted, 1, "rows deleted by drop_tenant itself");
    let mut su = db.superuser().await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT 'projects', count(*) FROM projects WHERE tenant_id = $1
         UNION ALL SELECT 'tasks', count(*) FROM tasks WHERE tenant_id = $1
         UNION ALL SELECT 'tenants', count(*) FROM tenancy.tenants WHERE id = $1",
    )
    .bind(db.acme)
    .fetch_all(&mut su)
    .await?;
    assert!(rows.iter().all(|(_, n)| *n == 0), "{rows:?}");
    let globex: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE tenant_id = $1")
        .bind(db.globex)
        .fetch_one(&mut su)
        .await?;
    assert_eq!(globex, 2);
    let (code, _) = db_error(drop(db.acme).fetch_one(&mut admin).await);
    assert_eq!(code, "P0002", "gone");
    Ok(())
}

/// A backend that has read every tenant's status at once still sees, in its
/// next transaction, a tenant suspended, a tenant created, and a tenant
/// that does not exist, as the catalog says.
#[tokio::test]
async fn statuses_read_at_once_follow_the_catalog() -> TestResult {
    let db = TestDb::new().await?;
    let mut admin = db.connect(Role::Admin).await?;
    let mut app = db.connect(Role::App).await?;
    // The app backend reads acme's status, and with it everyone's.
    assert_eq!(ask(&mut app, db.acme).await?.0, "no database error");
    assert_eq!(ask(&mut app, db.globex).await?.0, "no database error");

    sqlx::query("SELECT tenancy.set_tenant_status($1, 'suspended')")
        .bind(db.globex)
        .execute(&mut admin)
        .await?;
    let (code, message) = ask(&mut app, db.globex).await?;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("55000", "tenant is not active")
    );

    let created: Uuid = sqlx::query_scalar("SELECT tenancy.create_tenant('initech', 'Initech')")
        .fetch_one(&mut admin)
        .await?;
    assert_eq!(
        ask(&mut app, created).await?.0,
        "no database error",
        "a new tenant is known"
    );

    let (code, message) = ask(&mut app, Uuid::new_v4()).await?;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("28000", "tenant context names an unknown tenant")
    );
    Ok(())
}

/// In a transaction of its own on `app`: the number of tasks `tenant`'s
/// context sees, or the error (code, message).
async fn ask(app: &mut sqlx::PgConnection, tenant: Uuid) -> TestResult<(String, String)> {
    let token = tenancy_tests::token(tenant, Uuid::new_v4());
    let mut tx = sqlx::Connection::begin(app).await?;
    tenancy_tests::use_token(&mut tx, &token).await?;
    let result = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tasks")
        .fetch_one(&mut *tx)
        .await;
    Ok(db_error(result.map(|_| ())))
}
