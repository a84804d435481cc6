//! Attacker: the application role (its password stolen, or application code
//! gone wrong), running any SQL it likes through psql. Each test is named
//! after what it tries; each must end in a refusal, or in nothing of
//! another tenant's reached.

use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};
use tenancy_tests::{db_error, token, token_with, use_token, Role, TestDb, TestResult};
use uuid::Uuid;

/// As the owner: a hash-partitioned, a list-partitioned and an inheritance
/// table, protected, granted to the application role.
async fn partitioned_schema(db: &TestDb) -> TestResult<PgConnection> {
    let mut owner = db.connect(Role::Owner).await?;
    sqlx::raw_sql(&format!(
        "CREATE TABLE events (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY,
                              body text NOT NULL, PRIMARY KEY (tenant_id, id))
             PARTITION BY HASH (tenant_id);
         CREATE TABLE events_p0 PARTITION OF events FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE events_p1 PARTITION OF events FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         CREATE TABLE notes (tenant_id uuid NOT NULL, body text NOT NULL) PARTITION BY LIST (tenant_id);
         CREATE TABLE notes_acme PARTITION OF notes FOR VALUES IN ('{acme}');
         CREATE TABLE notes_globex PARTITION OF notes FOR VALUES IN ('{globex}');
         CREATE TABLE logs (tenant_id uuid NOT NULL, body text NOT NULL);
         CREATE TABLE logs_archive () INHERITS (logs);
         SELECT tenancy.protect('events');
         SELECT tenancy.protect('notes');
         SELECT tenancy.protect('logs');
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tenancy_t_app;",
        acme = db.acme,
        globex = db.globex,
    ))
    .execute(&mut owner)
    .await?;
    Ok(owner)
}

/// Inserts one row per table for `tenant`, omitting tenant_id, as the app role.
async fn insert_rows(app: &mut PgConnection, tenant: Uuid, body: &str) -> TestResult {
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(tenant, Uuid::new_v4())).await?;
    for table in ["events", "notes", "logs"] {
        sqlx::query(&format!("INSERT INTO {table} (body) VALUES ($1)"))
            .bind(body)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn reads_and_writes_partitions_and_children_directly() -> TestResult {
    let db = TestDb::new().await?;
    let mut owner = partitioned_schema(&db).await?;
    let mut app = db.connect(Role::App).await?;
    // Inserts that omit tenant_id route by the context's tenant.
    insert_rows(&mut app, db.acme, "acme").await?;
    insert_rows(&mut app, db.globex, "globex").await?;
    let mut tx = app.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    sqlx::query("INSERT INTO logs_archive (body) VALUES ('acme archived')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let leaves = [
        "events_p0",
        "events_p1",
        "notes_acme",
        "notes_globex",
        "logs_archive",
    ];
    for leaf in leaves {
        // No token at all: refused, not every tenant's rows.
        for sql in [
            format!("SELECT count(*) FROM {leaf}"),
            format!("UPDATE {leaf} SET body = 'x'"),
            format!("DELETE FROM {leaf}"),
        ] {
            let (code, message) = db_error(sqlx::query(&sql).execute(&mut app).await);
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("42501", "tenant context required"),
                "{sql}"
            );
        }
        // acme's token: acme's rows only, through the leaf too.
        let mut tx = app.begin().await?;
        use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
        let bodies: Vec<String> = sqlx::query_scalar(&format!("SELECT body FROM {leaf}"))
            .fetch_all(&mut *tx)
            .await?;
        assert!(
            bodies.iter().all(|b| b.starts_with("acme")),
            "{leaf}: {bodies:?}"
        );
        let touched = sqlx::query(&format!("UPDATE {leaf} SET body = body"))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        assert_eq!(touched as usize, bodies.len(), "{leaf}");
        tx.rollback().await?;
    }

    // Partitions created or attached later, and new children, are protected as they appear.
    sqlx::raw_sql(
        "CREATE TABLE notes_late PARTITION OF notes DEFAULT;
         CREATE TABLE logs_late () INHERITS (logs);
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tenancy_t_app;",
    )
    .execute(&mut owner)
    .await?;
    let attach = sqlx::raw_sql(&format!(
        "CREATE TABLE notes_other (tenant_id uuid NOT NULL, body text NOT NULL);
         ALTER TABLE notes DETACH PARTITION notes_globex;
         ALTER TABLE notes ATTACH PARTITION notes_other FOR VALUES IN ('{}');
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tenancy_t_app;",
        db.globex
    ))
    .execute(&mut owner)
    .await;
    assert!(attach.is_ok(), "{attach:?}");
    for leaf in ["notes_late", "logs_late", "notes_other", "notes_globex"] {
        let (code, _) = db_error(
            sqlx::query(&format!("SELECT count(*) FROM {leaf}"))
                .fetch_one(&mut app)
                .await,
        );
        assert_eq!(code, "42501", "{leaf} is readable without a context");
    }
    let listed: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT relation_name::text, parent_table::text FROM tenancy.protected_tables ORDER BY 1",
    )
    .fetch_all(&mut app)
    .await?;
    for (leaf, parent) in [
        ("events_p0", "events"),
        ("events_p1", "events"),
        ("logs_archive", "logs"),
        ("logs_late", "logs"),
        ("notes_late", "notes"),
        ("notes_other", "notes"),
    ] {
        assert!(
            listed.contains(&(leaf.to_owned(), Some(parent.to_owned()))),
            "{leaf} missing from protected_tables: {listed:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_partition_that_cannot_be_protected_is_refused_with_a_reason() -> TestResult {
    let db = TestDb::new().await?;
    let mut owner = db.connect(Role::Owner).await?;
    // A child owned by another role: protect() on the parent cannot protect it.
    let mut su = db.superuser().await?;
    sqlx::raw_sql(
        "CREATE TABLE shared (tenant_id uuid NOT NULL, body text);
         ALTER TABLE shared OWNER TO tenancy_t_owner;
         CREATE TABLE shared_child () INHERITS (shared);
         ALTER TABLE shared_child OWNER TO tenancy_t_service;",
    )
    .execute(&mut su)
    .await?;
    let (code, message) = db_error(
        sqlx::query("SELECT tenancy.protect('shared')")
            .execute(&mut owner)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "must be owner of table shared_child")
    );
    // Nothing was half done: the parent is not protected either.
    let protected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenancy.protected_tables WHERE relation_name IN ('shared', 'shared_child')",
    )
    .fetch_one(&mut owner)
    .await?;
    assert_eq!(protected, 0);
    Ok(())
}

#[tokio::test]
async fn replays_a_token_read_from_pg_stat_activity() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "secret-plan").await?;
    let signed = token(db.acme, Uuid::new_v4());

    // The victim, as the documented form: a bind parameter, then idle in transaction.
    let mut victim = db.connect(Role::App).await?;
    let victim_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut victim)
        .await?;
    let mut tx = victim.begin().await?;
    use_token(&mut tx, &signed).await?;

    // The attacker: another session of the same role reads every query text.
    let mut attacker = db.connect(Role::App).await?;
    sqlx::query("SELECT tenancy.context_source()")
        .execute(&mut attacker)
        .await?;
    let texts: Vec<Option<String>> =
        sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE pid = $1")
            .bind(victim_pid)
            .fetch_all(&mut attacker)
            .await?;
    assert_eq!(
        texts.len(),
        1,
        "the victim's session is visible to its role"
    );
    assert!(
        texts.iter().flatten().all(|q| !q.contains(&signed)),
        "token visible in pg_stat_activity: {texts:?}"
    );
    tx.rollback().await?;

    // A token written into statement text never gives a context: before the
    // library is loaded in the session it is discarded when it loads...
    let mut fresh = db.connect(Role::App).await?;
    let mut tx = fresh.begin().await?;
    sqlx::raw_sql(&format!("SET LOCAL tenancy.token = '{signed}'"))
        .execute(&mut *tx)
        .await?;
    let (code, message) = db_error(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM projects")
            .fetch_one(&mut *tx)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "tenant context required")
    );
    tx.rollback().await?;
    // ...and once it is loaded it is refused, in every spelling.
    for sql in [
        format!("SET LOCAL tenancy.token = '{signed}'"),
        format!("SET tenancy.token TO '{signed}'"),
        format!("SELECT set_config('tenancy.token', '{signed}', true)"),
        format!("SELECT tenancy.set_token('{signed}')"),
    ] {
        let mut tx = attacker.begin().await?;
        let (code, message) = db_error(sqlx::raw_sql(&sql).execute(&mut *tx).await);
        assert_eq!(
            (code.as_str(), message.as_str()),
            (
                "42501",
                "tenancy.token must not appear in the statement text"
            ),
            "{sql}"
        );
        tx.rollback().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_refused_literal_token_stays_out_of_the_server_log() -> TestResult {
    let db = TestDb::new().await?;
    let signed = token(db.acme, Uuid::new_v4());
    let mut app = db.connect(Role::App).await?;
    // The library is loaded (the hook that keeps statements out of the log is its).
    sqlx::query("SELECT tenancy.context_source()")
        .execute(&mut app)
        .await?;
    let before = tenancy_tests::server_log()?.len();
    let _ = sqlx::raw_sql(&format!("SET LOCAL tenancy.token = '{signed}'"))
        .execute(&mut app)
        .await;
    let _ = sqlx::raw_sql(&format!(
        "SELECT tenancy.add_key('leak', 'HS256', 'material-{}-0123456789abcdef')",
        Uuid::new_v4()
    ))
    .execute(&mut app)
    .await;
    let log = tenancy_tests::server_log()?;
    let new = String::from_utf8_lossy(&log[before.min(log.len())..]);
    assert!(
        new.contains("tenancy.token must not appear"),
        "the refusal was not logged"
    );
    assert!(!new.contains(&signed), "token in the server log");
    assert!(!new.contains("material-"), "key material in the server log");
    Ok(())
}

#[tokio::test]
async fn answers_whether_a_value_exists_without_a_context() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.globex, "globex-secret").await?;
    let mut owner = db.connect(Role::Owner).await?;
    sqlx::raw_sql(
        "CREATE INDEX projects_name_idx ON projects (name);
         CREATE VIEW projects_by_owner AS SELECT * FROM projects;
         GRANT SELECT ON projects_by_owner TO tenancy_t_app;",
    )
    .execute(&mut owner)
    .await?;
    let mut app = db.connect(Role::App).await?;
    for name in ["globex-secret", "no-such-project"] {
        for sql in [
            "SELECT count(*) FROM projects WHERE name = $1",
            "SELECT count(*) FROM projects WHERE name > $1",
            // Through a view the owner owns (the policy runs as the owner).
            "SELECT count(*) FROM projects_by_owner WHERE name > $1",
        ] {
            let mut tx = app.begin().await?;
            tx.execute("SET LOCAL enable_seqscan = off").await?;
            let (code, message) = db_error(
                sqlx::query_scalar::<_, i64>(sql)
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await,
            );
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("42501", "tenant context required"),
                "{sql} with {name}: the answer must not depend on other tenants' rows"
            );
            tx.rollback().await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn keeps_a_context_beyond_its_transaction() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.acme, "rocket").await?;
    let signed = token(db.acme, Uuid::new_v4());
    let mut app = db.connect(Role::App).await?;
    // (A token set before the library loads is discarded: load it first.)
    sqlx::query("SELECT tenancy.context_source()")
        .execute(&mut app)
        .await?;
    // A session-level SET (not LOCAL), by parameter, inside a transaction.
    let mut tx = app.begin().await?;
    sqlx::query("SELECT set_config('tenancy.token', $1, false)")
        .bind(&signed)
        .execute(&mut *tx)
        .await?;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(seen, 1, "usable inside the transaction that set it");
    tx.commit().await?;
    let (code, message) = db_error(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM projects")
            .fetch_one(&mut app)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "tenant context required"),
        "the next transaction on the connection starts without a context"
    );

    // Every new connection starting inside a tenant: refused.
    for sql in [
        format!("ALTER ROLE tenancy_t_app IN DATABASE {} SET tenancy.token = 'x{signed}'", db.name),
        "ALTER ROLE tenancy_t_app SET tenancy.token = 'eyJhbGciOiJIUzI1NiJ9.e30.x'".to_owned(),
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql SET tenancy.token = 'eyJhbGciOiJIUzI1NiJ9.e30.x' AS 'SELECT 1'".to_owned(),
    ] {
        let (code, message) = db_error(sqlx::raw_sql(&sql).execute(&mut app).await);
        assert_eq!(code, "42501", "{sql}: {message}");
    }
    // A value stored while the library was not loaded is discarded when it loads.
    let mut su = db.superuser().await?;
    sqlx::raw_sql(&format!(
        "ALTER ROLE tenancy_t_app IN DATABASE {} SET tenancy.token = 'eyJhbGciOiJIUzI1NiJ9.e30.stored'",
        db.name
    ))
    .execute(&mut su)
    .await?;
    let mut fresh = db.connect(Role::App).await?;
    let result = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM projects")
        .fetch_one(&mut fresh)
        .await;
    sqlx::raw_sql(&format!(
        "ALTER ROLE tenancy_t_app IN DATABASE {} RESET tenancy.token",
        db.name
    ))
    .execute(&mut su)
    .await?;
    let (code, message) = db_error(result);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "tenant context required")
    );
    Ok(())
}

#[tokio::test]
async fn fills_a_backend_with_huge_tokens() -> TestResult {
    let db = TestDb::new().await?;
    let mut app = db.connect(Role::App).await?;
    let huge = format!("{}.{}.{}", "a".repeat(100), "b".repeat(1 << 20), "c");
    let mut tx = app.begin().await?;
    let (code, message) = db_error(
        sqlx::query("SELECT tenancy.set_token($1)")
            .bind(&huge)
            .execute(&mut *tx)
            .await,
    );
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "28000",
            "invalid tenant token: token is longer than 8192 bytes"
        )
    );
    tx.rollback().await?;
    Ok(())
}

#[tokio::test]
async fn gets_a_not_yet_valid_token_refused_for_good() -> TestResult {
    let db = TestDb::new().await?;
    let mut su = db.superuser().await?;
    sqlx::query("SELECT tenancy.set_setting('jwt_leeway_seconds', '0')")
        .execute(&mut su)
        .await?;
    let now = tenancy_token::now();
    let early = token_with(json!({
        "tenant_id": db.acme, "sub": Uuid::new_v4(), "nbf": now + 2, "exp": now + 120,
    }));
    let mut app = db.connect(Role::App).await?;
    let (code, message) = db_error(current_tenant(&mut app, &early).await?);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("28000", "invalid tenant token: token is not valid yet")
    );
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    // Same backend, same token: valid now.
    assert_eq!(current_tenant(&mut app, &early).await??, db.acme);
    Ok(())
}

async fn current_tenant(
    conn: &mut PgConnection,
    signed: &str,
) -> TestResult<Result<Uuid, sqlx::Error>> {
    let mut tx = conn.begin().await?;
    use_token(&mut tx, signed).await?;
    let r = sqlx::query_scalar::<_, Uuid>("SELECT tenancy.current_tenant_id()")
        .fetch_one(&mut *tx)
        .await;
    tx.rollback().await?;
    Ok(r)
}

#[tokio::test]
async fn explains_its_way_to_other_tenants_values() -> TestResult {
    let db = TestDb::new().await?;
    db.seed(db.globex, "globex-secret").await?;
    let mut owner = db.connect(Role::Owner).await?;
    sqlx::raw_sql("CREATE INDEX projects_name_idx ON projects (name)")
        .execute(&mut owner)
        .await?;
    let mut app = db.connect(Role::App).await?;
    for sql in [
        "EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM projects WHERE name = 'globex-secret'",
        "EXPLAIN SELECT * FROM projects WHERE name = 'globex-secret'",
        "EXPLAIN (ANALYZE) SELECT * FROM tasks t JOIN projects p USING (tenant_id)",
    ] {
        let mut tx = app.begin().await?;
        use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
        let (code, message) = db_error(sqlx::raw_sql(sql).execute(&mut *tx).await);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(
            message.starts_with("EXPLAIN is not allowed on"),
            "{message}"
        );
        tx.rollback().await?;
    }
    // A role the DBA trusts may.
    let mut su = db.superuser().await?;
    sqlx::raw_sql(&format!(
        "ALTER ROLE tenancy_t_admin IN DATABASE {} SET tenancy.allow_explain = on",
        db.name
    ))
    .execute(&mut su)
    .await?;
    let mut admin = db.connect(Role::Admin).await?;
    let mut tx = admin.begin().await?;
    use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
    let plan: Vec<String> = sqlx::query_scalar("EXPLAIN SELECT * FROM projects")
        .fetch_all(&mut *tx)
        .await?;
    assert!(!plan.is_empty());
    Ok(())
}

/// The service's own schema, as its application role.
mod service_schema {
    use super::*;
    use tenancy_tests::server::{TestApp, ALICE, BOB, GUS};

    #[tokio::test]
    async fn reads_password_hashes() -> TestResult {
        let app = TestApp::spawn().await?;
        let mut attacker = app.app_role().await?;
        for sql in [
            "SELECT password_hash FROM app.login_lookup('alice@acme.test')",
            "SELECT * FROM app.user_tenants('00000000-0000-0000-0000-000000000000')",
            "SELECT app.ensure_user('new-account@example.test')",
        ] {
            let (code, message) = db_error(sqlx::raw_sql(sql).execute(&mut attacker).await);
            assert_eq!(code, "42501", "{sql}: {message}");
        }
        // Through its own tenant's context, with a membership it can see.
        let owner: Uuid = sqlx::query_scalar("SELECT id FROM app.users WHERE email = $1")
            .bind(ALICE)
            .fetch_one(&mut app.superuser().await?)
            .await?;
        let mut tx = attacker.begin().await?;
        use_token(&mut tx, &app.context_token(app.acme, owner)).await?;
        let (code, message) = db_error(
            sqlx::query_scalar::<_, String>("SELECT password_hash FROM app.users")
                .fetch_all(&mut *tx)
                .await,
        );
        assert_eq!(code, "42501", "{message}");
        tx.rollback().await?;
        // What it may read carries no credential.
        let mut tx = attacker.begin().await?;
        use_token(&mut tx, &app.context_token(app.acme, owner)).await?;
        let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM app.users")
            .fetch_all(&mut *tx)
            .await?;
        assert!(emails.contains(&ALICE.to_owned()));
        Ok(())
    }

    #[tokio::test]
    async fn rewrites_its_tenants_storage_use_to_pass_the_limit() -> TestResult {
        // Usage is the triggers' to keep (as the owner role); the application
        // role only reads it. (The view app.tenant_usage sums the shards and
        // cannot be written at all.)
        let app = TestApp::spawn().await?;
        let mut attacker = app.app_role().await?;
        let acme = app.acme;
        for sql in [
            "UPDATE app.tenant_usage_shards SET storage_bytes = -1000000000".to_owned(),
            format!(
                "INSERT INTO app.tenant_usage_shards (tenant_id, shard, storage_bytes)
                 VALUES ('{acme}', 15, -1000000000)"
            ),
            "DELETE FROM app.tenant_usage_shards".to_owned(),
        ] {
            // In acme's own context, as the compromised service would be.
            let mut tx = attacker.begin().await?;
            sqlx::query("SELECT tenancy.set_token($1)")
                .bind(app.context_token(acme, Uuid::new_v4()))
                .execute(&mut *tx)
                .await?;
            let (code, message) = db_error(sqlx::raw_sql(&sql).execute(&mut *tx).await);
            assert_eq!(code, "42501", "{sql}: {message}");
            assert!(message.starts_with("permission denied"), "{sql}: {message}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn takes_over_sessions_or_sets_passwords() -> TestResult {
        // Refresh-token digests, reset links and the functions that rotate,
        // revoke or set them are the credential role's alone.
        let app = TestApp::spawn().await?;
        app.login(ALICE).await?;
        let mut attacker = app.app_role().await?;
        let nil = "'00000000-0000-0000-0000-000000000000'";
        for sql in [
            "SELECT refresh_hash FROM app.sessions".to_owned(),
            "SELECT token_hash FROM app.spent_refresh_tokens".to_owned(),
            "SELECT token_hash FROM app.password_resets".to_owned(),
            "UPDATE app.sessions SET expires_at = now() + interval '10 years'".to_owned(),
            "SELECT * FROM app.session_refresh('\\x00', '\\x00')".to_owned(),
            format!("SELECT * FROM app.session_list({nil})"),
            format!("SELECT app.password_of({nil})"),
            format!("SELECT app.set_password({nil}, '$argon2id$', NULL)"),
            "SELECT * FROM app.reset_password('\\x00', '$argon2id$')".to_owned(),
            "SELECT app.request_password_reset('alice@acme.test', '\\x00', '1 hour')".to_owned(),
            "SELECT app.queue_password_reset_mail('\\x00', 's', 'b', 'h')".to_owned(),
            "SELECT app.queue_signup_mail('\\x00', 's', 'b', 'h')".to_owned(),
            "SELECT token_hash FROM app.signups".to_owned(),
            "SELECT address FROM app.login_events".to_owned(),
            format!("SELECT * FROM app.login_history({nil}, 10)"),
            "SELECT app.record_login('alice@acme.test', true, '', '')".to_owned(),
            "SELECT * FROM app.pending_signup('\\x00')".to_owned(),
            "SELECT * FROM app.verify_signup('\\x00', '$argon2id$')".to_owned(),
            format!("SELECT app.signup('a@b.test', '$argon2id$', {nil}, '\\x00', '1 hour')"),
            "SELECT token_hash, password_hash FROM app.tenant_signups".to_owned(),
            "UPDATE app.tenant_signups SET expires_at = now() + interval '1 year'".to_owned(),
        ] {
            let (code, message) = db_error(sqlx::raw_sql(&sql).execute(&mut attacker).await);
            assert_eq!(code, "42501", "{sql}: {message}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn maps_a_custom_domain_without_proving_it() -> TestResult {
        // A claim is the tenant's to write; marking it verified and mapping
        // the domain are the owner role's, after the DNS check.
        let app = TestApp::spawn().await?;
        let owner = user_id(&app, ALICE).await?;
        let mut attacker = app.app_role().await?;
        let mut tx = attacker.begin().await?;
        use_token(&mut tx, &app.context_token(app.acme, owner)).await?;
        sqlx::query(
            "INSERT INTO app.domain_claims (domain, token) VALUES ('portal.victim.example', repeat('a', 32))",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for sql in [
            "UPDATE app.domain_claims SET verified_at = now()".to_owned(),
            "INSERT INTO app.domain_claims (domain, token, verified_at)
             VALUES ('other.victim.example', repeat('b', 32), now())"
                .to_owned(),
            format!("SELECT tenancy.add_domain('{}', 'portal.victim.example')", app.acme),
            format!(
                "INSERT INTO tenancy.domains (domain, tenant_id) VALUES ('portal.victim.example', '{}')",
                app.acme
            ),
        ] {
            let mut tx = attacker.begin().await?;
            use_token(&mut tx, &app.context_token(app.acme, owner)).await?;
            let (code, message) = db_error(sqlx::raw_sql(&sql).execute(&mut *tx).await);
            assert_eq!(code, "42501", "{sql}: {message}");
        }
        let mapped: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenancy.resolve_tenant('portal.victim.example')",
        )
        .fetch_one(&mut app.superuser().await?)
        .await?;
        assert_eq!(mapped, 0);
        Ok(())
    }

    #[tokio::test]
    async fn reads_one_time_links_from_the_mail_outbox() -> TestResult {
        // Invitation and reset mails carry links that sign in as someone:
        // the application role sees the outbox without the bodies.
        let app = TestApp::spawn().await?;
        let alice = app.login(ALICE).await?;
        let (status, _) = app
            .post(
                "/api/tenant/invitations",
                &alice,
                serde_json::json!({"email": "new@acme.test", "role": "member"}),
            )
            .await?;
        assert_eq!(status, 202);
        app.invitation_token("new@acme.test").await?;
        let owner = user_id(&app, ALICE).await?;
        let mut attacker = app.app_role().await?;
        let mut tx = attacker.begin().await?;
        use_token(&mut tx, &app.context_token(app.acme, owner)).await?;
        let (code, message) = db_error(
            sqlx::query_scalar::<_, String>("SELECT body FROM app.email_outbox")
                .fetch_all(&mut *tx)
                .await,
        );
        assert_eq!(code, "42501", "{message}");
        tx.rollback().await?;
        let mut tx = attacker.begin().await?;
        use_token(&mut tx, &app.context_token(app.acme, owner)).await?;
        // Nor the invitee's address: the mail names its invitation, whose
        // address is sealed.
        let recipients: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT recipient FROM app.email_outbox WHERE template = 'invitation'",
        )
        .fetch_all(&mut *tx)
        .await?;
        assert_eq!(recipients, vec![None]);
        Ok(())
    }

    async fn user_id(app: &TestApp, email: &str) -> TestResult<Uuid> {
        Ok(
            sqlx::query_scalar("SELECT id FROM app.users WHERE email = $1")
                .bind(email)
                .fetch_one(&mut app.superuser().await?)
                .await?,
        )
    }

    #[tokio::test]
    async fn joins_another_tenants_owner_to_read_their_account() -> TestResult {
        let app = TestApp::spawn().await?;
        let alice = user_id(&app, ALICE).await?;
        let gus = user_id(&app, GUS).await?;
        let mut attacker = app.app_role().await?;
        let mut tx = attacker.begin().await?;
        use_token(&mut tx, &app.context_token(app.acme, alice)).await?;
        let (code, message) = db_error(
            sqlx::query("INSERT INTO app.tenant_memberships (user_id, role) VALUES ($1, 'member')")
                .bind(gus)
                .execute(&mut *tx)
                .await,
        );
        assert_eq!(code, "42501", "{message}");
        tx.rollback().await?;

        // Nor by moving one of its own memberships onto that user.
        let mut tx = attacker.begin().await?;
        use_token(&mut tx, &app.context_token(app.acme, alice)).await?;
        let (code, message) = db_error(
            sqlx::query("UPDATE app.tenant_memberships SET user_id = $1 WHERE user_id = $2")
                .bind(gus)
                .bind(user_id(&app, BOB).await?)
                .execute(&mut *tx)
                .await,
        );
        assert_eq!(code, "42501", "{message}");
        tx.rollback().await?;

        // Nor by issuing itself the grant the checked path consumes.
        let (code, message) = db_error(
            sqlx::query("SELECT app.grant_membership($1, $2)")
                .bind(app.acme)
                .bind(GUS)
                .execute(&mut attacker)
                .await,
        );
        assert_eq!(code, "42501", "{message}");
        let (code, message) = db_error(
            sqlx::query("INSERT INTO app.membership_grants (tenant_id, user_id) VALUES ($1, $2)")
                .bind(app.acme)
                .bind(gus)
                .execute(&mut attacker)
                .await,
        );
        assert_eq!(code, "42501", "{message}");

        let mut tx = attacker.begin().await?;
        use_token(&mut tx, &app.context_token(app.acme, alice)).await?;
        let visible: Vec<String> = sqlx::query_scalar("SELECT email FROM app.users")
            .fetch_all(&mut *tx)
            .await?;
        assert!(!visible.contains(&GUS.to_owned()), "{visible:?}");
        Ok(())
    }

    #[tokio::test]
    async fn blocks_another_tenants_inserts_with_its_limit_lock() -> TestResult {
        let app = TestApp::spawn().await?;
        let mut su = app.superuser().await?;
        let mut setup = su.begin().await?;
        sqlx::query("SELECT set_config('tenancy.tenant_id', $1, true)")
            .bind(app.acme.to_string())
            .execute(&mut *setup)
            .await?;
        sqlx::query("INSERT INTO app.tenant_plans (tenant_id, plan) VALUES ($1, 'pro')")
            .bind(app.acme)
            .execute(&mut *setup)
            .await?;
        setup.commit().await?;
        let mut attacker = app.app_role().await?;
        let mut held = attacker.begin().await?;
        // The key the limit triggers used to serialise on.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtext('tenancy.limit.max_workspaces'), hashtext($1::text))",
        )
        .bind(app.acme)
        .execute(&mut *held)
        .await?;
        let (code, _) = db_error(
            sqlx::query("SELECT 1 FROM app.tenant_plans FOR NO KEY UPDATE")
                .execute(&mut *held)
                .await,
        );
        assert_eq!(
            code, "42501",
            "the plan rows cannot be locked by the application role"
        );

        let owner = app.login(ALICE).await?;
        let created = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            app.post("/api/workspaces", &owner, json!({"name": "Not blocked"})),
        )
        .await;
        let (status, body) =
            created.map_err(|_| "acme's insert waited on the attacker's lock")??;
        assert_eq!(status, 201, "{body}");
        held.rollback().await?;
        Ok(())
    }
}

/// What the schema lets the application role do across tenants: protect()
/// and later DDL refuse it, saying how to fix it.
mod schema_rules {
    use super::*;

    async fn refusal(owner: &mut PgConnection, sql: &str) -> (String, String, String) {
        match sqlx::raw_sql(sql).execute(&mut *owner).await {
            Err(sqlx::Error::Database(e)) => {
                let hint = e
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.hint().map(str::to_owned))
                    .unwrap_or_default();
                (
                    e.code().map(|c| c.into_owned()).unwrap_or_default(),
                    e.message().to_owned(),
                    hint,
                )
            }
            other => ("no error".to_owned(), format!("{other:?}"), String::new()),
        }
    }

    #[tokio::test]
    async fn learns_of_another_tenants_value_from_a_unique_violation() -> TestResult {
        let db = TestDb::new().await?;
        let mut owner = db.connect(Role::Owner).await?;
        sqlx::raw_sql(
            "CREATE TABLE accounts (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY,
                                    email text NOT NULL, PRIMARY KEY (tenant_id, id),
                                    CONSTRAINT accounts_email_key UNIQUE (email))",
        )
        .execute(&mut owner)
        .await?;
        let (code, message, hint) = refusal(&mut owner, "SELECT tenancy.protect('accounts')").await;
        assert_eq!(code, "42P17", "{message}");
        assert!(
            message.contains("accounts_email_key") && message.contains("tenant column"),
            "{message}"
        );
        assert!(
            hint.contains("ADD CONSTRAINT accounts_email_key UNIQUE (tenant_id, email)"),
            "{hint}"
        );
        // The fix from the hint makes protect() pass.
        sqlx::raw_sql(
            "ALTER TABLE accounts DROP CONSTRAINT accounts_email_key,
                 ADD CONSTRAINT accounts_email_key UNIQUE (tenant_id, email);
             SELECT tenancy.protect('accounts');",
        )
        .execute(&mut owner)
        .await?;
        // An exclusion constraint checks across tenants like a unique one.
        let (code, message, _) = refusal(
            &mut owner,
            "ALTER TABLE accounts ADD CONSTRAINT accounts_email_excl EXCLUDE USING btree (email WITH =)",
        )
        .await;
        assert_eq!(code, "42P17", "{message}");
        // And a later unique index without the tenant column is refused too.
        let (code, message, _) = refusal(
            &mut owner,
            "CREATE UNIQUE INDEX accounts_email_global ON accounts (lower(email))",
        )
        .await;
        assert_eq!(code, "42P17", "{message}");
        Ok(())
    }

    #[tokio::test]
    async fn points_a_row_at_another_tenants_row_through_a_foreign_key() -> TestResult {
        // Both tables keyed by tenant; the foreign key names a tenant, but
        // not the row's own: the RI check (which ignores RLS) would let an
        // acme row point at a globex list.
        let db = TestDb::new().await?;
        let mut owner = db.connect(Role::Owner).await?;
        sqlx::raw_sql(
            "CREATE TABLE lists (tenant_id uuid NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id));
             SELECT tenancy.protect('lists');
             CREATE TABLE entries (tenant_id uuid NOT NULL, list_tenant uuid NOT NULL, list_id bigint NOT NULL,
                                   PRIMARY KEY (tenant_id, list_id),
                                   CONSTRAINT entries_list_fkey
                                   FOREIGN KEY (list_tenant, list_id) REFERENCES lists (tenant_id, id));",
        )
        .execute(&mut owner)
        .await?;
        let (code, message, hint) = refusal(&mut owner, "SELECT tenancy.protect('entries')").await;
        assert_eq!(code, "42P17", "{message}");
        assert!(
            message.contains("foreign key entries_list_fkey") && message.contains("tenant column"),
            "{message}"
        );
        assert!(
            hint.contains("REFERENCES public.lists (tenant_id, ...)"),
            "{hint}"
        );
        // Added after protection, the same foreign key is refused by the DDL check.
        sqlx::raw_sql(
            "ALTER TABLE entries DROP CONSTRAINT entries_list_fkey;
             SELECT tenancy.protect('entries');",
        )
        .execute(&mut owner)
        .await?;
        // (Validating a foreign key reads both tables, through FORCE RLS:
        // the owner needs a context for that, as for any read.)
        let mut tx = owner.begin().await?;
        use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
        let (code, message, _) = refusal(
            &mut tx,
            "ALTER TABLE entries ADD CONSTRAINT entries_list_fkey
                 FOREIGN KEY (list_tenant, list_id) REFERENCES lists (tenant_id, id)",
        )
        .await;
        assert_eq!(code, "42P17", "{message}");
        tx.rollback().await?;
        // Paired with the row's own tenant, it is accepted.
        let mut tx = owner.begin().await?;
        use_token(&mut tx, &token(db.acme, Uuid::new_v4())).await?;
        sqlx::raw_sql(
            "ALTER TABLE entries ADD CONSTRAINT entries_list_fkey
                 FOREIGN KEY (tenant_id, list_id) REFERENCES lists (tenant_id, id)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Service code that runs as the owner role (the outbox relay, the mail
/// sender, provisioning, the login lookups): a statement that forgets its
/// WHERE on tenant_id stays inside the context like the application role's.
mod owner_role_code {
    use super::*;
    use tenancy_tests::server::{TestApp, ALICE, GUS};

    async fn owner(app: &TestApp) -> TestResult<PgConnection> {
        Ok(PgConnection::connect(&app.config.database_owner_url).await?)
    }

    #[tokio::test]
    async fn updates_every_tenants_memberships_without_a_where() -> TestResult {
        let app = TestApp::spawn().await?;
        let gus: Uuid = sqlx::query_scalar("SELECT id FROM app.users WHERE email = $1")
            .bind(GUS)
            .fetch_one(&mut app.superuser().await?)
            .await?;
        let mut owner = owner(&app).await?;
        let mut tx = owner.begin().await?;
        use_token(&mut tx, &app.context_token(app.globex, gus)).await?;
        let touched = sqlx::query("UPDATE app.tenant_memberships SET role = role")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let tenants: Vec<Uuid> =
            sqlx::query_scalar("SELECT DISTINCT tenant_id FROM app.tenant_memberships")
                .fetch_all(&mut *tx)
                .await?;
        tx.rollback().await?;
        assert_eq!(tenants, vec![app.globex]);
        let globex_members: i64 =
            sqlx::query_scalar("SELECT count(*) FROM app.tenant_memberships WHERE tenant_id = $1")
                .bind(app.globex)
                .fetch_one(&mut app.superuser().await?)
                .await?;
        assert_eq!(touched as i64, globex_members);
        Ok(())
    }

    #[tokio::test]
    async fn reads_every_tenants_outboxes_in_one_tenants_context() -> TestResult {
        let app = TestApp::spawn_with(tenancy_tests::server::Options {
            relay: false,
            ..Default::default()
        })
        .await?;
        let alice_token = app.login(ALICE).await?;
        let (status, session) = app
            .post(
                "/api/chat/sessions",
                &alice_token,
                json!({"title": "outbox"}),
            )
            .await?;
        assert_eq!(status, 201, "{session}");
        let (status, body) = app
            .post(
                "/api/messages",
                &alice_token,
                json!({"session_id": session["id"], "content": "acme only"}),
            )
            .await?;
        assert_eq!(status, 201, "{body}");
        let gus: Uuid = sqlx::query_scalar("SELECT id FROM app.users WHERE email = $1")
            .bind(GUS)
            .fetch_one(&mut app.superuser().await?)
            .await?;
        let mut su = app.superuser().await?;
        let mut setup = su.begin().await?;
        sqlx::query("SELECT set_config('tenancy.tenant_id', $1, true)")
            .bind(app.acme.to_string())
            .execute(&mut *setup)
            .await?;
        sqlx::query(
            "INSERT INTO app.email_outbox (recipient, template, subject, body)
             VALUES ('someone@acme.test', 'welcome', 'acme only', 'acme only')",
        )
        .execute(&mut *setup)
        .await?;
        setup.commit().await?;
        let mut owner = owner(&app).await?;
        for table in ["app.message_outbox", "app.email_outbox"] {
            let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&mut app.superuser().await?)
                .await?;
            let mut tx = owner.begin().await?;
            use_token(&mut tx, &app.context_token(app.globex, gus)).await?;
            let seen: Vec<Uuid> = sqlx::query_scalar(&format!("SELECT tenant_id FROM {table}"))
                .fetch_all(&mut *tx)
                .await?;
            tx.rollback().await?;
            assert!(seen.iter().all(|t| *t == app.globex), "{table}: {seen:?}");
            assert!(total > 0, "{table} holds acme's row");
            // Without a context the owner reads nothing at all.
            let (code, message) = db_error(
                sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                    .fetch_one(&mut owner)
                    .await,
            );
            assert_eq!(code, "42501", "{table}: {message}");
        }
        Ok(())
    }
}
