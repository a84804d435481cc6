//! A running service for one test: its own database (extension +
//! migrations), tenants with users in every role, and the HTTP server on
//! port 0, against the real PostgreSQL and Redis.

use std::net::SocketAddr;

use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tenancy_server::jobs::ops;
use tenancy_server::{AppState, Config};
use uuid::Uuid;

use crate::{server_url, TestResult, SETUP_LOCK};

pub const PASSWORD: &str = "correct horse battery staple";
/// What `GET /metrics` wants as bearer token in tests.
pub const METRICS_TOKEN: &str = "test-metrics-token";
/// The tests' platform key (TENANCY_DATA_KEY): base64 of 32 bytes.
pub const DATA_KEY: &str = "dGVzdC1wbGF0Zm9ybS1rZXktMDEyMzQ1Njc4OWFiY2Q=";
const OWNER: &str = "tenancy_t_srv_owner";
const APP: &str = "tenancy_t_srv_app";
const ROLE_PASSWORD: &str = "tenancy";

/// The service under test and what it was seeded with.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub config: Config,
    pub db_name: String,
    pub acme: Uuid,
    pub globex: Uuid,
}

pub struct Options {
    pub single_tenant_users: bool,
    pub base_domain: Option<&'static str>,
    /// Another Redis than the shared one (fault tests run their own).
    pub redis_url: Option<String>,
    /// A Redis for the message streams apart from the sessions' one.
    pub stream_redis_url: Option<String>,
    /// Run the outbox relay inside the service.
    pub relay: bool,
    /// Messages per user per minute (0: unlimited).
    pub message_rate_per_minute: u32,
    /// Where outgoing mail is written.
    pub mail_dir: Option<std::path::PathBuf>,
    /// An SMTP server for outgoing mail.
    pub smtp_url: Option<String>,
    /// Budgets and timeouts (default: no per-user or login budgets, which
    /// every test's clients on 127.0.0.1 would share through one Redis).
    pub limits: tenancy_server::config::Limits,
    /// The DNS server custom-domain proofs are looked up at.
    pub dns_server: Option<std::net::SocketAddr>,
    /// Whether anyone may sign up for a tenant of their own.
    pub platform_signup: bool,
    /// Tenants' SMTP servers on public addresses and mail ports only (as
    /// deployed); off in tests, whose SMTP peers listen on loopback.
    pub public_smtp_only: bool,
    /// The platform's own payment, SMS and analytics providers (JSON).
    pub platform_integrations: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            single_tenant_users: false,
            base_domain: Some("tenancy.test"),
            redis_url: None,
            stream_redis_url: None,
            relay: true,
            message_rate_per_minute: 0,
            mail_dir: None,
            smtp_url: None,
            limits: tenancy_server::config::Limits::UNTHROTTLED,
            dns_server: None,
            platform_signup: false,
            public_smtp_only: false,
            platform_integrations: None,
        }
    }
}

/// Users seeded by `TestApp::spawn`, all with password [`PASSWORD`]:
/// alice owns acme, erin is an acme admin, bob and dave are acme members,
/// gus owns globex, carol is a member of both, and root is a super admin
/// of no tenant.
pub const ALICE: &str = "alice@acme.test";
pub const BOB: &str = "bob@acme.test";
pub const GUS: &str = "gus@globex.test";
pub const CAROL: &str = "carol@both.test";
pub const DAVE: &str = "dave@acme.test";
pub const ERIN: &str = "erin@acme.test";
pub const ROOT: &str = "root@platform.test";

fn role_url(role: &str, db: &str) -> String {
    let host = server_url();
    let host = host
        .split_once('@')
        .map(|(_, h)| h)
        .unwrap_or(&host)
        .to_owned();
    format!("postgres://{role}:{ROLE_PASSWORD}@{host}/{db}")
}

impl TestApp {
    pub async fn spawn() -> TestResult<TestApp> {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> TestResult<TestApp> {
        let db_name = format!("tenancy_t_{}", Uuid::new_v4().simple());
        {
            let _guard = SETUP_LOCK.lock().await;
            let mut server = PgConnection::connect(&format!("{}/postgres", server_url())).await?;
            for role in [OWNER, APP] {
                sqlx::raw_sql(&format!(
                    "DO $$ BEGIN CREATE ROLE {role} LOGIN PASSWORD '{ROLE_PASSWORD}';
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
                ))
                .execute(&mut server)
                .await?;
            }
            sqlx::raw_sql(&format!("CREATE DATABASE {db_name}"))
                .execute(&mut server)
                .await?;
            let mut su = PgConnection::connect(&format!("{}/{db_name}", server_url())).await?;
            sqlx::raw_sql(&format!(
                "CREATE EXTENSION tenancy;
                 GRANT tenancy_admin TO {OWNER};
                 SELECT tenancy.grant_table_owner('{OWNER}');
                 GRANT CREATE ON DATABASE {db_name} TO {OWNER};
                 GRANT CREATE ON SCHEMA public TO {OWNER};"
            ))
            .execute(&mut su)
            .await?;
        }
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            database_url: role_url(APP, &db_name),
            database_owner_url: role_url(OWNER, &db_name),
            database_auth_url: None,
            redis_url: options.redis_url.clone().unwrap_or_else(|| {
                std::env::var("TENANCY_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
            }),
            jwt_secret: "test-access-token-secret-0123456789abcdef".to_owned(),
            jwt_issuer: "tenancy-test".to_owned(),
            jwt_audience: "tenancy-test-api".to_owned(),
            access_ttl_secs: 600,
            session_max_days: 30,
            context_kid: "test-server".to_owned(),
            context_secret: "test-context-secret-0123456789abcdef0".to_owned(),
            context_ttl_secs: 120,
            base_domain: options.base_domain.map(str::to_owned),
            max_body_bytes: 16 * 1024,
            login_concurrency: 2,
            db_pool_size: 8,
            single_tenant_users: options.single_tenant_users,
            // The policies built into the service.
            policy_dir: None,
            stream_redis_url: options.stream_redis_url.clone(),
            relay: options.relay,
            message_rate_per_minute: options.message_rate_per_minute,
            stream_maxlen: 10_000,
            ws_session_check_secs: 1,
            session_cache_ms: 5000,
            limits: options.limits.clone(),
            metrics_token: Some(METRICS_TOKEN.to_owned()),
            app_url: "https://app.tenancy.test".to_owned(),
            cors_origins: vec!["https://app.tenancy.test".to_owned()],
            mail_dir: options.mail_dir.clone(),
            smtp_url: options.smtp_url.clone(),
            mail_from: "Tenancy Test <no-reply@tenancy.test>".to_owned(),
            audit_purge_secs: 0,
            tenant_deletion_grace_days: 30,
            dns_server: options.dns_server,
            platform_signup: options.platform_signup,
            platform_signup_plan: "free".to_owned(),
            data_key: Some(DATA_KEY.to_owned()),
            data_key_file: None,
            data_key_previous: None,
            data_key_previous_file: None,
            tenant_smtp_private: !options.public_smtp_only,
            platform_integrations: options.platform_integrations.clone(),
            platform_integrations_file: None,
        };
        ops::migrate(&config)
            .await
            .map_err(|e| format!("migrate: {e:?}"))?;
        let password = || PASSWORD.to_owned();
        let (acme, _) = ops::create_tenant(&config, "acme", "Acme Corp", ALICE, password())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (globex, _) = ops::create_tenant(&config, "globex", "Globex", GUS, password())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut members = vec![
            (acme, BOB, "member"),
            (acme, DAVE, "member"),
            (acme, ERIN, "admin"),
        ];
        if !options.single_tenant_users {
            members.extend([(acme, CAROL, "member"), (globex, CAROL, "admin")]);
        }
        for (tenant, email, role) in members {
            ops::add_member(&config, tenant, email, password(), role)
                .await
                .map_err(|e| format!("{email}: {e:?}"))?;
        }
        ops::create_super_admin(&config, ROOT, password())
            .await
            .map_err(|e| format!("{e:?}"))?;

        let addr = serve(&config).await?;
        Ok(TestApp {
            addr,
            client: reqwest::Client::new(),
            config,
            db_name,
            acme,
            globex,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Superuser connection to this app's database, for checks behind the scenes.
    pub async fn superuser(&self) -> TestResult<PgConnection> {
        Ok(PgConnection::connect(&format!("{}/{}", server_url(), self.db_name)).await?)
    }

    /// A connection as the service's application role.
    /// A database context token for `tenant` and `user`, signed with the
    /// service's own context key (what a compromised service could mint).
    pub fn context_token(&self, tenant: Uuid, user: Uuid) -> String {
        let claims = serde_json::json!({
            "tenant_id": tenant, "sub": user, "exp": tenancy_token::now() + 300,
        });
        tenancy_token::sign(
            &claims,
            &self.config.context_kid,
            "HS256",
            &self.config.context_secret,
        )
        .unwrap_or_default()
    }

    pub async fn app_role(&self) -> TestResult<PgConnection> {
        Ok(PgConnection::connect(&self.config.database_url).await?)
    }

    /// Logs in and returns the access token.
    pub async fn login(&self, email: &str) -> TestResult<String> {
        let response = self
            .client
            .post(self.url("/auth/token"))
            .json(&serde_json::json!({"email": email, "password": PASSWORD}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status != 200 {
            return Err(format!("login {email}: {status} {body}").into());
        }
        Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
    }

    /// Logs in by password; returns the answer's status and body (access
    /// and refresh tokens on success).
    pub async fn login_body(&self, email: &str, password: &str) -> TestResult<(u16, Value)> {
        let response = self
            .client
            .post(self.url("/auth/token"))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// Sends a request with a bearer token and returns status and JSON body
    /// (Null for an empty body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> TestResult<(u16, Value)> {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        };
        Ok((status, body))
    }

    /// The token of the latest invitation mailed to `email` (read from the
    /// mail outbox, as the invitee reads their mail).
    pub async fn invitation_token(&self, email: &str) -> TestResult<String> {
        self.mailed_token(email, "invitation").await
    }

    /// Every invitation mail in the outbox, oldest first, as (address,
    /// body): the outbox names the invitation, whose address is sealed, so
    /// it is opened here with the tests' platform key, as the sender does.
    pub async fn invitation_mails(&self) -> TestResult<Vec<(String, String)>> {
        let mut su = self.superuser().await?;
        let mails: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT tenant_id, invitation_id, body FROM app.email_outbox
             WHERE invitation_id IS NOT NULL ORDER BY created_at, id",
        )
        .fetch_all(&mut su)
        .await?;
        let keyring = tenancy_server::domain::keyring::Keyring::from_config(&self.config)?;
        let mut addresses = std::collections::HashMap::new();
        let mut tenants: Vec<Uuid> = mails.iter().map(|m| m.0).collect();
        tenants.sort();
        tenants.dedup();
        for tenant in tenants {
            let ids: Vec<Uuid> = mails
                .iter()
                .filter(|m| m.0 == tenant)
                .map(|m| m.1)
                .collect();
            addresses.extend(
                tenancy_server::domain::pii::invitation_addresses(&mut su, &keyring, tenant, &ids)
                    .await?,
            );
        }
        mails
            .into_iter()
            .map(|(_, id, body)| match addresses.get(&id) {
                Some(Ok(address)) => Ok((address.clone(), body)),
                Some(Err(why)) => Err(why.clone().into()),
                None => Err(format!("invitation {id} is gone").into()),
            })
            .collect()
    }

    /// The token in the latest mail of `template` to `email`, from the mail
    /// outbox (waiting up to 5 s for mail queued after the answer).
    pub async fn mailed_token(&self, email: &str, template: &str) -> TestResult<String> {
        let mut su = self.superuser().await?;
        let mut waited = 0;
        let body: String = loop {
            let body: Option<String> = if template == "invitation" {
                self.invitation_mails()
                    .await?
                    .into_iter()
                    .rev()
                    .find(|(to, _)| to == email)
                    .map(|(_, body)| body)
            } else {
                sqlx::query_scalar(
                    "SELECT body FROM app.email_outbox WHERE recipient = $1 AND template = $2
                     ORDER BY created_at DESC, id DESC LIMIT 1",
                )
                .bind(email)
                .bind(template)
                .fetch_optional(&mut su)
                .await?
            };
            match body {
                Some(body) => break body,
                None if waited < 50 => {
                    waited += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                None => return Err(format!("no {template} mail to {email}").into()),
            }
        };
        body.split("token=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .ok_or_else(|| format!("no link in the mail: {body}").into())
    }

    /// Invites `email` with `role` to the tenant of `token`.
    pub async fn invite(&self, token: &str, email: &str, role: &str) -> TestResult<(u16, Value)> {
        self.post(
            "/api/tenant/invitations",
            token,
            serde_json::json!({"email": email, "role": role}),
        )
        .await
    }

    /// Accepts an invitation as the invitee (no bearer token).
    pub async fn accept(&self, token: &str, password: &str) -> TestResult<(u16, Value)> {
        self.call(
            reqwest::Method::POST,
            "/auth/invitations/accept",
            None,
            &[],
            Some(serde_json::json!({"token": token, "password": password})),
        )
        .await
    }

    /// Invites `email` as `role` with `token` (an admin's) and accepts with
    /// `password`; returns the acceptance's status and body.
    pub async fn invite_and_accept(
        &self,
        token: &str,
        email: &str,
        role: &str,
        password: &str,
    ) -> TestResult<(u16, Value)> {
        let (status, body) = self
            .post(
                "/api/tenant/invitations",
                token,
                serde_json::json!({"email": email, "role": role}),
            )
            .await?;
        if status != 202 {
            return Err(format!("invite {email}: {status} {body}").into());
        }
        self.accept(&self.invitation_token(email).await?, password)
            .await
    }

    /// Runs the service's removal of tenants past their grace period now;
    /// returns how many were removed.
    pub async fn purge_due(&self) -> TestResult<usize> {
        let state = tenancy_server::AppState::connect(self.config.clone())
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(tenancy_server::jobs::retention::purge_due(&state)
            .await
            .map_err(|e| format!("{e:?}"))?)
    }

    /// One value of `sql`, read as the superuser (behind the scenes).
    pub async fn scalar<T>(&self, sql: &str) -> TestResult<T>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        let mut su = self.superuser().await?;
        Ok(sqlx::query_scalar(sql).fetch_one(&mut su).await?)
    }

    /// The tenant's audit actions, newest first (read behind the scenes).
    pub async fn audit_actions(&self, tenant: Uuid) -> TestResult<Vec<String>> {
        let mut su = self.superuser().await?;
        Ok(sqlx::query_scalar(
            "SELECT action FROM app.audit_events WHERE tenant_id = $1 ORDER BY id DESC",
        )
        .bind(tenant)
        .fetch_all(&mut su)
        .await?)
    }

    pub async fn get(&self, path: &str, token: &str) -> TestResult<(u16, Value)> {
        self.call(reqwest::Method::GET, path, Some(token), &[], None)
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> TestResult<(u16, Value)> {
        self.call(reqwest::Method::PUT, path, Some(token), &[], Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> TestResult<(u16, Value)> {
        self.call(reqwest::Method::PATCH, path, Some(token), &[], Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> TestResult<(u16, Value)> {
        self.call(reqwest::Method::DELETE, path, Some(token), &[], None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> TestResult<(u16, Value)> {
        self.call(reqwest::Method::POST, path, Some(token), &[], Some(body))
            .await
    }
}

/// Starts one more instance of the service with `config` (same database
/// and Redis), on port 0; returns its address.
pub async fn serve(config: &Config) -> TestResult<SocketAddr> {
    let state = AppState::connect(config.clone())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = tenancy_server::serve(listener, state).await;
    });
    Ok(addr)
}

/// A Redis of a test's own on a free port (the shared one stays up), to
/// stop and start again.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    pub async fn start_on(port: u16) -> TestResult<PrivateRedis> {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(PrivateRedis {
                    port,
                    child: Some(child),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err("redis-server did not start".into())
    }

    pub async fn start() -> TestResult<PrivateRedis> {
        Self::start_on(free_port()?).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn stop(&mut self) -> TestResult {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
            child.wait().await?;
        }
        Ok(())
    }
}

/// A real SMTP peer (Python's smtpd debugging server) on `port`; what it
/// receives is printed to its stdout.
pub async fn smtp_server(port: u16) -> TestResult<tokio::process::Child> {
    let child = tokio::process::Command::new("python3")
        .args([
            "-u",
            "-W",
            "ignore",
            "-m",
            "smtpd",
            "-n",
            "-c",
            "DebuggingServer",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(child);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err("the SMTP server did not start".into())
}

/// What an SMTP peer printed until every one of `wanted` appeared in it
/// (at most `secs` seconds); the caller asserts on it.
pub async fn smtp_printed(
    out: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
    wanted: &[&str],
    secs: u64,
) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut seen = String::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(secs), async {
        let mut line = String::new();
        while out.read_line(&mut line).await.unwrap_or(0) > 0 {
            seen.push_str(&line);
            line.clear();
            if wanted.iter().all(|w| seen.contains(w)) {
                return;
            }
        }
    })
    .await;
    seen
}

/// A port nothing listens on yet.
pub fn free_port() -> TestResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The claims of a JWT, decoded without verification (for assertions only).
pub fn claims(token: &str) -> Value {
    use base64::Engine as _;
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

/// A 429's Retry-After is a number of seconds within the minute window.
pub fn assert_retry_after(response: &reqwest::Response) {
    let retry: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(response.status(), 429);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}
