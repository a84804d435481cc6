//! Test fixtures: a fresh database with the tenancy extension, the fixture
//! schema, two tenants and signing keys, in one call.
//!
//! Roles (cluster-wide, created once, password `tenancy`):
//! - `tenancy_t_owner`: owns the fixture tables (FORCE RLS applies to it too);
//! - `tenancy_t_app`: the application role: owns nothing, DML grants only;
//! - `tenancy_t_admin`: a member of `tenancy_admin` (may bypass);
//! - `tenancy_t_service`: may set the trusted context GUCs.
//!
//! The superuser connection comes from `TENANCY_PG_URL` (default
//! `postgres://postgres:postgres@127.0.0.1:5432`); it is used only to set
//! things up, never for the assertions of a test.

use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

pub const HS_KID: &str = "test-hs";
pub const HS_SECRET: &str = "tenancy-test-secret-0123456789abcdef";
pub const ED_KID: &str = "test-ed";
/// Ed25519 key pair (RFC 8037, appendix A.1); test use only.
pub const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
pub const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";

const ROLE_PASSWORD: &str = "tenancy";
const FIXTURE_SCHEMA: &str = include_str!("../fixtures/schema.sql");

pub mod citus;
pub mod dns;
pub mod load;
pub mod mail_api;
pub mod server;

static SETUP_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    App,
    Admin,
    Service,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Owner => "tenancy_t_owner",
            Role::App => "tenancy_t_app",
            Role::Admin => "tenancy_t_admin",
            Role::Service => "tenancy_t_service",
        }
    }
}

pub fn server_url() -> String {
    std::env::var("TENANCY_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432".to_owned())
}

fn host_part(url: &str) -> &str {
    url.split_once('@').map(|(_, host)| host).unwrap_or(url)
}

/// A database of its own for one test.
pub struct TestDb {
    pub name: String,
    pub acme: Uuid,
    pub globex: Uuid,
}

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

impl TestDb {
    /// A new database with the extension, the fixture schema, tenants
    /// `acme` and `globex`, an HS256 and an EdDSA key.
    pub async fn new() -> TestResult<TestDb> {
        TestDb::at_version(None).await
    }

    /// The same with the extension installed at a released `version`
    /// (`CREATE EXTENSION tenancy VERSION ...`), or the current one.
    pub async fn at_version(version: Option<&str>) -> TestResult<TestDb> {
        let name = format!("tenancy_t_{}", Uuid::new_v4().simple());
        {
            let _guard = SETUP_LOCK.lock().await;
            let mut server = PgConnection::connect(&format!("{}/postgres", server_url())).await?;
            for role in [Role::Owner, Role::App, Role::Admin, Role::Service] {
                let sql = format!(
                    "DO $$ BEGIN CREATE ROLE {} LOGIN PASSWORD '{ROLE_PASSWORD}'; \
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
                    role.name()
                );
                sqlx::raw_sql(&sql).execute(&mut server).await?;
            }
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&mut server)
                .await?;
            server.close().await?;
        }
        let db = TestDb {
            name,
            acme: Uuid::nil(),
            globex: Uuid::nil(),
        };
        let mut su = db.superuser().await?;
        let create = match version {
            Some(version) => format!("CREATE EXTENSION tenancy VERSION '{version}'"),
            None => "CREATE EXTENSION tenancy".to_owned(),
        };
        sqlx::raw_sql(&create).execute(&mut su).await?;
        sqlx::raw_sql(
            "GRANT tenancy_admin TO tenancy_t_admin;
             SELECT tenancy.grant_table_owner('tenancy_t_owner');
             SELECT tenancy.grant_context_setter('tenancy_t_service');
             GRANT CREATE ON SCHEMA public TO tenancy_t_owner;",
        )
        .execute(&mut su)
        .await?;
        let mut owner = db.connect(Role::Owner).await?;
        sqlx::raw_sql(FIXTURE_SCHEMA).execute(&mut owner).await?;
        sqlx::raw_sql(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public
               TO tenancy_t_app, tenancy_t_admin, tenancy_t_service;",
        )
        .execute(&mut owner)
        .await?;
        sqlx::query("SELECT tenancy.add_key($1, 'HS256', $2)")
            .bind(HS_KID)
            .bind(HS_SECRET)
            .execute(&mut su)
            .await?;
        sqlx::query("SELECT tenancy.add_key($1, 'EdDSA', $2)")
            .bind(ED_KID)
            .bind(ED_PUBLIC)
            .execute(&mut su)
            .await?;
        let acme = create_tenant(&mut su, "acme").await?;
        let globex = create_tenant(&mut su, "globex").await?;
        Ok(TestDb { acme, globex, ..db })
    }

    pub fn url(&self, role: Role) -> String {
        format!(
            "postgres://{}:{ROLE_PASSWORD}@{}/{}",
            role.name(),
            host_part(&server_url()),
            self.name
        )
    }

    pub async fn connect(&self, role: Role) -> TestResult<PgConnection> {
        Ok(PgConnection::connect(&self.url(role)).await?)
    }

    /// Superuser connection, for setup steps only.
    pub async fn superuser(&self) -> TestResult<PgConnection> {
        Ok(PgConnection::connect(&format!("{}/{}", server_url(), self.name)).await?)
    }

    /// Seeds one project with two tasks in `tenant`, through the trusted
    /// context as the service role (the way a migration or import would).
    pub async fn seed(&self, tenant: Uuid, project: &str) -> TestResult<i64> {
        let mut svc = self.connect(Role::Service).await?;
        let mut tx = sqlx::Connection::begin(&mut svc).await?;
        sqlx::query("SELECT set_config('tenancy.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
        let id: i64 = sqlx::query_scalar("INSERT INTO projects (name) VALUES ($1) RETURNING id")
            .bind(project)
            .fetch_one(&mut *tx)
            .await?;
        for title in ["first", "second"] {
            sqlx::query("INSERT INTO tasks (project_id, title) VALUES ($1, $2)")
                .bind(id)
                .bind(format!("{project} {title}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(id)
    }
}

pub async fn create_tenant(conn: &mut PgConnection, slug: &str) -> TestResult<Uuid> {
    Ok(sqlx::query_scalar("SELECT tenancy.create_tenant($1, $2)")
        .bind(slug)
        .bind(format!("{slug} Inc."))
        .fetch_one(conn)
        .await?)
}

/// An HS256 context token for `tenant` and `user`, valid for five minutes.
pub fn token(tenant: Uuid, user: Uuid) -> String {
    token_with(json!({
        "tenant_id": tenant.to_string(),
        "sub": user.to_string(),
        "exp": tenancy_token::now() + 300,
    }))
}

/// Signs arbitrary claims with the test HS256 key.
pub fn token_with(claims: serde_json::Value) -> String {
    tenancy_token::sign(&claims, HS_KID, "HS256", HS_SECRET).unwrap_or_default()
}

/// Sets the signed context for the current transaction (like SET LOCAL).
pub async fn use_token(conn: &mut PgConnection, token: &str) -> TestResult {
    sqlx::query("SELECT tenancy.set_token($1)")
        .bind(token)
        .execute(conn)
        .await?;
    Ok(())
}

/// The PostgreSQL server log, for tests of what reaches it: the file named
/// by `TENANCY_PG_LOG`, else the Debian cluster's log that scripts/setup.sh
/// starts. A test that needs it fails, saying so, when it cannot be read.
pub fn server_log() -> TestResult<Vec<u8>> {
    let path = std::env::var("TENANCY_PG_LOG")
        .unwrap_or_else(|_| "/var/log/postgresql/postgresql-15-main.log".to_owned());
    std::fs::read(&path).map_err(|e| {
        format!("this test reads the PostgreSQL server log and cannot: {path}: {e} (set TENANCY_PG_LOG)").into()
    })
}

/// The SQLSTATE and message of a database error; panics on anything else.
pub fn db_error<T: std::fmt::Debug>(result: Result<T, sqlx::Error>) -> (String, String) {
    match result {
        Err(sqlx::Error::Database(e)) => (
            e.code().map(|c| c.into_owned()).unwrap_or_default(),
            e.message().to_owned(),
        ),
        other => (String::from("no database error"), format!("{other:?}")),
    }
}

/// Median of benchmark figures (0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A numeric benchmark setting from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
