//! Context functions: the signed path (HS256, EdDSA, claims, key rotation,
//! audience and claim settings) and the trusted path.

use serde_json::json;
use sqlx::{Connection, PgConnection};
use tenancy_tests::{
    db_error, token, token_with, use_token, Role, TestDb, TestResult, ED_KID, ED_PRIVATE,
};
use uuid::Uuid;

async fn current(
    conn: &mut PgConnection,
    token: &str,
    expr: &str,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT tenancy.set_token($1)")
        .bind(token)
        .execute(&mut *tx)
        .await?;
    let value = sqlx::query_scalar(&format!("SELECT ({expr})::text"))
        .fetch_one(&mut *tx)
        .await;
    tx.rollback().await?;
    value
}

#[tokio::test]
async fn context_functions_expose_the_verified_claims() -> TestResult {
    let db = TestDb::new().await?;
    let mut app = db.connect(Role::App).await?;
    let user = Uuid::new_v4();
    let signed = token_with(json!({
        "tenant_id": db.acme, "sub": user, "exp": tenancy_token::now() + 60,
        "role": "member", "workspaces": [1, 2],
    }));
    let get = |expr: &'static str| (signed.clone(), expr);
    for ((tok, expr), expected) in [
        (
            get("tenancy.current_tenant_id()"),
            Some(db.acme.to_string()),
        ),
        (get("tenancy.current_user_id()"), Some(user.to_string())),
        (get("tenancy.claim('role')"), Some("member".to_owned())),
        (get("tenancy.claim('workspaces')"), Some("[1,2]".to_owned())),
        (get("tenancy.claim('absent')"), None),
        (get("tenancy.context_source()"), Some("token".to_owned())),
    ] {
        assert_eq!(current(&mut app, &tok, expr).await?, expected, "{expr}");
    }

    let (code, message) = db_error(
        sqlx::query_scalar::<_, String>("SELECT tenancy.current_user_id()::text")
            .fetch_one(&mut app)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "tenant context required")
    );

    let no_user = token_with(json!({"tenant_id": db.acme, "exp": tenancy_token::now() + 60}));
    let (code, message) = db_error(current(&mut app, &no_user, "tenancy.current_user_id()").await);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "user context required")
    );
    let odd_user =
        token_with(json!({"tenant_id": db.acme, "sub": "alice", "exp": tenancy_token::now() + 60}));
    let (code, message) = db_error(current(&mut app, &odd_user, "tenancy.current_user_id()").await);
    assert_eq!(code, "28000");
    assert_eq!(
        message,
        "invalid tenant token: claim \"sub\" is not a valid uuid"
    );
    Ok(())
}

#[tokio::test]
async fn eddsa_tokens_verify() -> TestResult {
    let db = TestDb::new().await?;
    let mut app = db.connect(Role::App).await?;
    let claims =
        json!({"tenant_id": db.globex, "sub": Uuid::new_v4(), "exp": tenancy_token::now() + 60});
    let signed = tenancy_token::sign(&claims, ED_KID, "EdDSA", ED_PRIVATE)?;
    assert_eq!(
        current(&mut app, &signed, "tenancy.current_tenant_id()").await?,
        Some(db.globex.to_string())
    );
    Ok(())
}

#[tokio::test]
async fn keys_rotate_without_a_restart() -> TestResult {
    let db = TestDb::new().await?;
    let mut app = db.connect(Role::App).await?;
    let old = token(db.acme, Uuid::new_v4());
    // Verified once, so it sits in this backend's cache.
    assert_eq!(
        current(&mut app, &old, "tenancy.current_tenant_id()").await?,
        Some(db.acme.to_string())
    );

    let new_secret = "rotated-secret-rotated-secret-000001";
    let mut admin = db.connect(Role::Admin).await?;
    sqlx::query("SELECT tenancy.add_key('k2', 'HS256', $1)")
        .bind(new_secret)
        .execute(&mut admin)
        .await?;
    sqlx::query("SELECT tenancy.retire_key('test-hs')")
        .execute(&mut admin)
        .await?;

    let (code, message) = db_error(current(&mut app, &old, "tenancy.current_tenant_id()").await);
    assert_eq!(code, "28000");
    assert_eq!(
        message,
        "invalid tenant token: no active key with kid \"test-hs\""
    );
    let claims =
        json!({"tenant_id": db.acme, "sub": Uuid::new_v4(), "exp": tenancy_token::now() + 60});
    let fresh = tenancy_token::sign(&claims, "k2", "HS256", new_secret)?;
    assert_eq!(
        current(&mut app, &fresh, "tenancy.current_tenant_id()").await?,
        Some(db.acme.to_string())
    );

    // Admins see which keys exist, never their material.
    let kids: Vec<(String, bool)> =
        sqlx::query_as("SELECT kid, active FROM tenancy.key_list ORDER BY kid")
            .fetch_all(&mut admin)
            .await?;
    assert_eq!(
        kids,
        [
            ("k2".to_owned(), true),
            ("test-ed".to_owned(), true),
            ("test-hs".to_owned(), false)
        ]
    );
    let (code, _) = db_error(
        sqlx::query("SELECT key_material FROM tenancy.keys")
            .fetch_all(&mut admin)
            .await,
    );
    assert_eq!(code, "42501");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenancy.audit_log
         WHERE action IN ('keys.insert', 'keys.update') AND acting_role = 'tenancy_t_admin'
           AND NOT details ? 'key_material'",
    )
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(audited, 2, "both key changes audited, without the key");
    Ok(())
}

#[tokio::test]
async fn bad_keys_are_refused_when_stored() -> TestResult {
    let db = TestDb::new().await?;
    let mut admin = db.connect(Role::Admin).await?;
    let cases = [
        ("SELECT tenancy.add_key('short', 'HS256', 'too-short')", "22023", "invalid key for HS256: secret must be at least 32 bytes"),
        ("SELECT tenancy.add_key('nokey', 'none', 'whatever-whatever-whatever-whatever')", "22023",
         "unsupported algorithm \"none\" (supported: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"),
        ("SELECT tenancy.add_key('test-hs', 'HS256', 'another-secret-another-secret-0000')", "23505", "a key with kid \"test-hs\" already exists"),
        ("SELECT tenancy.add_key('bad kid!', 'HS256', 'another-secret-another-secret-0000')", "22023", "key id \"bad kid!\" is not valid"),
        ("SELECT tenancy.retire_key('never-existed')", "P0002", "no active key with kid \"never-existed\""),
    ];
    for (statement, code, message) in cases {
        let (got_code, got_message) = db_error(sqlx::query(statement).execute(&mut admin).await);
        assert_eq!(
            (got_code.as_str(), got_message.as_str()),
            (code, message),
            "{statement}"
        );
    }
    let ed: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.key_list")
        .fetch_one(&mut admin)
        .await?;
    assert_eq!(ed, 2, "no key was added");
    let (code, _) = db_error(
        sqlx::query("SELECT tenancy.add_key('pem', 'EdDSA', 'not a pem')")
            .execute(&mut admin)
            .await,
    );
    assert_eq!(code, "22023");
    Ok(())
}

#[tokio::test]
async fn audience_issuer_and_claim_names_are_settings() -> TestResult {
    let db = TestDb::new().await?;
    let mut admin = db.connect(Role::Admin).await?;
    let mut app = db.connect(Role::App).await?;
    let exp = tenancy_token::now() + 60;
    for (name, value) in [
        ("jwt_audience", "tenancy-test"),
        ("jwt_issuer", "https://auth.test"),
        ("tenant_claim", "org"),
    ] {
        sqlx::query("SELECT tenancy.set_setting($1, $2)")
            .bind(name)
            .bind(value)
            .execute(&mut admin)
            .await?;
    }
    let good = token_with(
        json!({"org": db.acme, "exp": exp, "aud": "tenancy-test", "iss": "https://auth.test"}),
    );
    assert_eq!(
        current(&mut app, &good, "tenancy.current_tenant_id()").await?,
        Some(db.acme.to_string())
    );
    let no_aud = token_with(json!({"org": db.acme, "exp": exp, "iss": "https://auth.test"}));
    let (_, message) = db_error(current(&mut app, &no_aud, "tenancy.current_tenant_id()").await);
    assert_eq!(message, "invalid tenant token: token has no \"aud\" claim");
    let wrong_iss = token_with(
        json!({"org": db.acme, "exp": exp, "aud": "tenancy-test", "iss": "https://evil.test"}),
    );
    let (_, message) = db_error(current(&mut app, &wrong_iss, "tenancy.current_tenant_id()").await);
    assert_eq!(
        message,
        "invalid tenant token: token issuer is not accepted"
    );
    let old_claim = token_with(
        json!({"tenant_id": db.acme, "exp": exp, "aud": "tenancy-test", "iss": "https://auth.test"}),
    );
    let (_, message) = db_error(current(&mut app, &old_claim, "tenancy.current_tenant_id()").await);
    assert_eq!(message, "invalid tenant token: token has no \"org\" claim");

    for (statement, message) in [
        (
            "SELECT tenancy.set_setting('colour', 'blue')",
            "unknown setting \"colour\"",
        ),
        (
            "SELECT tenancy.set_setting('jwt_leeway_seconds', 'soon')",
            "jwt_leeway_seconds must be a whole number of seconds from 0 to 300, not \"soon\"",
        ),
        (
            "SELECT tenancy.set_setting('user_claim', '')",
            "setting \"user_claim\" must not be empty; use tenancy.reset_setting() to remove it",
        ),
    ] {
        let (code, got) = db_error(sqlx::query(statement).execute(&mut admin).await);
        assert_eq!(
            (code.as_str(), got.as_str()),
            ("22023", message),
            "{statement}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_trusted_context_works_for_the_granted_role_only() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    let mut svc = db.connect(Role::Service).await?;
    let user = Uuid::new_v4();
    let mut tx = svc.begin().await?;
    sqlx::raw_sql(&format!(
        "SET LOCAL tenancy.tenant_id = '{}'; SET LOCAL tenancy.user_id = '{user}'",
        db.acme
    ))
    .execute(&mut *tx)
    .await?;
    let (tenant, who, source): (Uuid, Uuid, String) = sqlx::query_as(
        "SELECT tenancy.current_tenant_id(), tenancy.current_user_id(), tenancy.context_source()",
    )
    .fetch_one(&mut *tx)
    .await?;
    assert_eq!((tenant, who, source.as_str()), (db.acme, user, "trusted"));
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
        .fetch_all(&mut *tx)
        .await?;
    assert_eq!(names, ["rocket"]);
    tx.rollback().await?;

    let mut tx = svc.begin().await?;
    sqlx::raw_sql("SET LOCAL tenancy.tenant_id = 'acme'")
        .execute(&mut *tx)
        .await?;
    let (code, message) = db_error(
        sqlx::query("SELECT * FROM projects")
            .fetch_all(&mut *tx)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("22P02", "tenancy.tenant_id must be a uuid, not \"acme\"")
    );
    tx.rollback().await?;

    let mut tx = svc.begin().await?;
    sqlx::raw_sql(&format!(
        "SET LOCAL tenancy.tenant_id = '{}'",
        Uuid::new_v4()
    ))
    .execute(&mut *tx)
    .await?;
    let (code, message) = db_error(
        sqlx::query("SELECT * FROM projects")
            .fetch_all(&mut *tx)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("28000", "tenant context names an unknown tenant")
    );
    Ok(())
}

#[tokio::test]
async fn set_token_is_what_set_config_with_a_parameter_does() -> TestResult {
    // The README shows tenancy.set_token($1); set_config(..., $1, true) has
    // the same effect once the library is loaded. Neither puts the token in
    // statement text.
    let db = TestDb::new().await?;
    let mut app = db.connect(Role::App).await?;
    let signed = token(db.acme, Uuid::new_v4());
    let mut tx = app.begin().await?;
    use_token(&mut tx, &signed).await?;
    let a: Uuid = sqlx::query_scalar("SELECT tenancy.current_tenant_id()")
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    let mut tx = app.begin().await?;
    sqlx::query("SELECT set_config('tenancy.token', $1, true)")
        .bind(&signed)
        .execute(&mut *tx)
        .await?;
    let b: Uuid = sqlx::query_scalar("SELECT tenancy.current_tenant_id()")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!((a, b), (db.acme, db.acme));
    Ok(())
}

#[tokio::test]
async fn a_cached_token_still_expires() -> TestResult {
    let db = TestDb::new().await?;
    let mut admin = db.connect(Role::Admin).await?;
    sqlx::query("SELECT tenancy.set_setting('jwt_leeway_seconds', '0')")
        .execute(&mut admin)
        .await?;
    let mut app = db.connect(Role::App).await?;
    let short = token_with(
        json!({"tenant_id": db.acme, "sub": Uuid::new_v4(), "exp": tenancy_token::now() + 2}),
    );
    assert_eq!(
        current(&mut app, &short, "tenancy.current_tenant_id()").await?,
        Some(db.acme.to_string()),
        "verified once and cached in this backend"
    );
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let (code, message) = db_error(current(&mut app, &short, "tenancy.current_tenant_id()").await);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("28000", "invalid tenant token: token has expired")
    );
    Ok(())
}

#[tokio::test]
async fn a_parallel_plan_keeps_the_context() -> TestResult {
    // Parallel workers get the leader's context: the end-of-transaction
    // clearing and the executor-start check must not lose it there.
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    db.seed(db.globex, "laser").await?;
    let mut app = db.connect(Role::App).await?;
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    sqlx::query("SET LOCAL force_parallel_mode = on")
        .execute(&mut *tx)
        .await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
        .fetch_all(&mut *tx)
        .await?;
    assert_eq!(names, vec!["rocket".to_owned()]);
    Ok(())
}
