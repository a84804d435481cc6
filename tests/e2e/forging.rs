//! An application role that can run any SQL still cannot read another
//! tenant's rows without a token signed for that tenant.

use serde_json::json;
use sqlx::{Connection, PgConnection};
use tenancy_tests::{
    db_error, token, token_with, use_token, Role, TestDb, TestResult, ED_KID, ED_PUBLIC, HS_KID,
};
use uuid::Uuid;

/// Runs `SELECT name FROM projects` in a transaction whose context is set
/// by `setup`; returns the rows or the error.
async fn read_projects(app: &mut PgConnection, token: &str) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = app.begin().await?;
    sqlx::query("SELECT tenancy.set_token($1)")
        .bind(token)
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query_scalar("SELECT name FROM projects")
        .fetch_all(&mut *tx)
        .await;
    tx.rollback().await?;
    rows
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn forged_tokens_get_no_rows_and_a_clear_error() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    let mut app = db.connect(Role::App).await?;
    let user = Uuid::new_v4();
    let exp = tenancy_token::now() + 300;
    let acme_claims = json!({"tenant_id": db.acme, "sub": user, "exp": exp});

    let wrong_key = tenancy_token::sign(
        &acme_claims,
        HS_KID,
        "HS256",
        "another-secret-another-secret-0000",
    )
    .unwrap();
    let expired =
        token_with(json!({"tenant_id": db.acme, "sub": user, "exp": tenancy_token::now() - 600}));
    let alg_none = format!(
        "{}.{}.",
        b64(format!(r#"{{"alg":"none","typ":"JWT","kid":"{HS_KID}"}}"#).as_bytes()),
        b64(acme_claims.to_string().as_bytes())
    );
    // A valid globex token with its payload swapped for acme's.
    let globex = token(db.globex, user);
    let parts: Vec<&str> = globex.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(acme_claims.to_string().as_bytes()),
        parts[2]
    );
    let unknown_kid =
        tenancy_token::sign(&acme_claims, "made-up", "HS256", tenancy_tests::HS_SECRET).unwrap();
    // Algorithm confusion: HS256 "signed" with the EdDSA public key as secret.
    let confused = tenancy_token::sign(&acme_claims, ED_KID, "HS256", ED_PUBLIC).unwrap();
    let no_tenant = token_with(json!({"sub": user, "exp": exp}));

    let cases = [
        (
            "wrong key",
            wrong_key,
            "invalid tenant token: signature does not verify",
        ),
        (
            "expired",
            expired,
            "invalid tenant token: token has expired",
        ),
        (
            "alg none",
            alg_none,
            "invalid tenant token: token is malformed",
        ),
        (
            "tampered payload",
            tampered,
            "invalid tenant token: signature does not verify",
        ),
        (
            "unknown kid",
            unknown_kid,
            "invalid tenant token: no active key with kid \"made-up\"",
        ),
        (
            "algorithm confusion",
            confused,
            "invalid tenant token: token algorithm does not match the algorithm of its key",
        ),
        (
            "no tenant claim",
            no_tenant,
            "invalid tenant token: token has no \"tenant_id\" claim",
        ),
        (
            "garbage",
            "not-a-jwt".to_owned(),
            "invalid tenant token: token is malformed",
        ),
    ];
    for (case, forged, expected) in cases {
        let (code, message) = db_error(read_projects(&mut app, &forged).await);
        assert_eq!(code, "28000", "{case}: {message}");
        assert_eq!(message, expected, "{case}");
    }

    // And the genuine token still works on the same connection.
    assert_eq!(
        read_projects(&mut app, &token(db.acme, user)).await?,
        ["rocket"]
    );
    Ok(())
}

#[tokio::test]
async fn a_token_for_a_suspended_tenant_is_refused() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    let mut app = db.connect(Role::App).await?;
    let acme = token(db.acme, Uuid::new_v4());
    assert_eq!(
        read_projects(&mut app, &acme).await?,
        ["rocket"],
        "cached as active first"
    );

    let mut su = db.superuser().await?;
    sqlx::query("SELECT tenancy.set_tenant_status($1, 'suspended')")
        .bind(db.acme)
        .execute(&mut su)
        .await?;
    let (code, message) = db_error(read_projects(&mut app, &acme).await);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("55000", "tenant is not active")
    );

    sqlx::query("SELECT tenancy.set_tenant_status($1, 'inactive')")
        .bind(db.acme)
        .execute(&mut su)
        .await?;
    let (_, message) = db_error(read_projects(&mut app, &acme).await);
    assert_eq!(message, "tenant is not active");

    sqlx::query("SELECT tenancy.set_tenant_status($1, 'active')")
        .bind(db.acme)
        .execute(&mut su)
        .await?;
    assert_eq!(
        read_projects(&mut app, &acme).await?,
        ["rocket"],
        "reactivated without a restart"
    );
    Ok(())
}

#[tokio::test]
async fn the_application_role_cannot_set_the_trusted_context() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    let mut app = db.connect(Role::App).await?;
    // Load the library in this backend first, as any earlier query would.
    sqlx::query("SELECT tenancy.bypass_active()")
        .execute(&mut app)
        .await?;

    let acme = db.acme.to_string();
    for statement in [
        format!("SET tenancy.tenant_id = '{acme}'"),
        format!("SET LOCAL tenancy.tenant_id = '{acme}'"),
        format!("SELECT set_config('tenancy.tenant_id', '{acme}', true)"),
        format!("SET tenancy.user_id = '{acme}'"),
        "SET tenancy.bypass_reason = 'because'".to_owned(),
    ] {
        let mut tx = app.begin().await?;
        let (code, message) = db_error(sqlx::raw_sql(&statement).execute(&mut *tx).await);
        assert_eq!(code, "42501", "{statement}: {message}");
        assert!(
            message.starts_with("permission denied to set parameter"),
            "{statement}: {message}"
        );
        tx.rollback().await?;
    }
    let (_, message) = db_error(
        sqlx::query("SELECT name FROM projects")
            .fetch_all(&mut app)
            .await,
    );
    assert_eq!(message, "tenant context required");
    Ok(())
}

#[tokio::test]
async fn a_trusted_context_set_before_the_library_loads_is_discarded() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    // A fresh backend: the library is not loaded, so the name is a placeholder.
    let mut app = db.connect(Role::App).await?;
    sqlx::raw_sql(&format!("SET tenancy.tenant_id = '{}'", db.acme))
        .execute(&mut app)
        .await?;
    let (code, message) = db_error(
        sqlx::query("SELECT name FROM projects")
            .fetch_all(&mut app)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "tenant context required")
    );
    Ok(())
}

#[tokio::test]
async fn raw_sql_as_the_application_role_cannot_get_around_the_policy() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    db.seed(db.globex, "laser").await?;
    let mut app = db.connect(Role::App).await?;
    let attempts = [
        ("ALTER TABLE projects DISABLE ROW LEVEL SECURITY", "42501"),
        ("ALTER TABLE projects NO FORCE ROW LEVEL SECURITY", "42501"),
        ("DROP POLICY tenancy_isolation ON projects", "42501"),
        ("SELECT tenancy.unprotect('projects')", "42501"),
        ("SET ROLE tenancy_t_owner", "42501"),
        ("SET ROLE tenancy_admin", "42501"),
        ("SELECT tenancy.bypass('I am the admin now')", "42501"),
        ("SELECT * FROM tenancy.keys", "42501"),
        ("SELECT * FROM tenancy.tenants", "42501"),
        (
            "SELECT tenancy.add_key('mine', 'HS256', 'my-own-secret-my-own-secret-00000')",
            "42501",
        ),
        ("SELECT tenancy.set_setting('tenant_claim', 'sub')", "42501"),
        (
            "SELECT tenancy.set_tenant_status('00000000-0000-0000-0000-000000000000', 'active')",
            "42501",
        ),
        (
            "CREATE FUNCTION public.steal() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'",
            "42501",
        ),
    ];
    for (statement, expected) in attempts {
        let mut tx = app.begin().await?;
        let (code, message) = db_error(sqlx::raw_sql(statement).execute(&mut *tx).await);
        assert_eq!(code, expected, "{statement}: {message}");
        tx.rollback().await?;
    }
    // After all of that, a globex token still reads only globex.
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.globex, Uuid::new_v4())).await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
        .fetch_all(&mut *tx)
        .await?;
    assert_eq!(names, ["laser"]);
    Ok(())
}

#[tokio::test]
async fn signed_and_trusted_context_must_agree() -> TestResult {
    let db = TestDb::new().await?;
    let mut svc = db.connect(Role::Service).await?;
    let mut tx = svc.begin().await?;
    sqlx::query("SELECT set_config('tenancy.tenant_id', $1, true)")
        .bind(db.acme.to_string())
        .execute(&mut *tx)
        .await?;
    use_token(&mut tx, &token(db.globex, Uuid::new_v4())).await?;
    let (code, message) = db_error(
        sqlx::query("SELECT count(*) FROM projects")
            .fetch_one(&mut *tx)
            .await,
    );
    assert_eq!(code, "28000");
    assert_eq!(message, "tenancy.token and tenancy.tenant_id disagree");
    Ok(())
}
