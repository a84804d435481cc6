//! Service configuration, from flags or environment variables, with
//! defaults that work on a developer machine. Secrets have no defaults.

use std::net::SocketAddr;

/// Everything the service needs at start-up.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TENANCY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Database URL of the application role (owns nothing, no BYPASSRLS).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://tenancy_app:tenancy_app@127.0.0.1:5432/tenancy"
    )]
    pub database_url: String,
    /// Database URL of the owner role (runs migrations; member of tenancy_admin).
    #[arg(
        long,
        env = "DATABASE_OWNER_URL",
        default_value = "postgres://tenancy_owner:tenancy_owner@127.0.0.1:5432/tenancy"
    )]
    pub database_owner_url: String,
    /// Database URL of the role that reads credentials (password hashes,
    /// every user's memberships) for logins; default: the owner role. The
    /// application role cannot read them.
    #[arg(long, env = "DATABASE_AUTH_URL")]
    pub database_auth_url: Option<String>,
    /// Redis URL (sessions and revocations).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// HS256 secret for access tokens (at least 32 bytes); needed to serve,
    /// not to migrate or bootstrap.
    #[arg(
        long,
        env = "TENANCY_JWT_SECRET",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub jwt_secret: String,
    /// `iss` of access tokens.
    #[arg(long, env = "TENANCY_JWT_ISSUER", default_value = "tenancy")]
    pub jwt_issuer: String,
    /// `aud` of access tokens.
    #[arg(long, env = "TENANCY_JWT_AUDIENCE", default_value = "tenancy-api")]
    pub jwt_audience: String,
    /// Lifetime of access tokens, in seconds; never longer than the
    /// tenant's session timeout (`session_timeout_minutes`).
    #[arg(long, env = "TENANCY_ACCESS_TTL", default_value_t = 900)]
    pub access_ttl_secs: u64,
    /// Longest a session lasts however often it is refreshed, in days.
    #[arg(long, env = "TENANCY_SESSION_MAX_DAYS", default_value_t = 30)]
    pub session_max_days: u64,
    /// kid under which the context-signing key is registered in the database.
    #[arg(long, env = "TENANCY_CONTEXT_KID", default_value = "tenancy-server")]
    pub context_kid: String,
    /// HS256 secret that signs the per-request database context (at least 32 bytes).
    #[arg(long, env = "TENANCY_CONTEXT_SECRET", hide_env_values = true)]
    pub context_secret: String,
    /// Lifetime of a database context token, in seconds.
    #[arg(long, env = "TENANCY_CONTEXT_TTL", default_value_t = 120)]
    pub context_ttl_secs: u64,
    /// Base domain for tenant subdomains (acme.<base>); none disables subdomains.
    #[arg(long, env = "TENANCY_BASE_DOMAIN")]
    pub base_domain: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "TENANCY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Password hashes verified at once; more logins wait.
    #[arg(long, env = "TENANCY_LOGIN_CONCURRENCY", default_value_t = 4)]
    pub login_concurrency: usize,
    /// Database connections of the application pool.
    #[arg(long, env = "TENANCY_DB_POOL", default_value_t = 16)]
    pub db_pool_size: u32,
    /// Folder with tenancy.cedarschema and tenancy.cedar that replace the
    /// policies built into the binary (unset: the built-in ones).
    #[arg(long, env = "TENANCY_POLICY_DIR")]
    pub policy_dir: Option<std::path::PathBuf>,
    /// Require every user to belong to exactly one tenant (set at migrate time).
    #[arg(long, env = "TENANCY_SINGLE_TENANT_USERS", default_value_t = false)]
    pub single_tenant_users: bool,
    /// Redis that carries the message streams, if not the one of REDIS_URL.
    #[arg(long, env = "TENANCY_STREAM_REDIS_URL")]
    pub stream_redis_url: Option<String>,
    /// Run the background jobs in this process: the message relay (any number
    /// may run; one publishes at a time), the mail sender and the audit purge.
    #[arg(long, env = "TENANCY_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub relay: bool,
    /// Messages a user may send per minute in one tenant (0: no limit).
    #[arg(long, env = "TENANCY_MESSAGE_RATE", default_value_t = 60)]
    pub message_rate_per_minute: u32,
    /// Approximate length each tenant stream is trimmed to (0: never trim).
    /// Trimming drops the oldest entries even if a consumer group has not
    /// processed them yet: set it only above any backlog a worker may have.
    #[arg(long, env = "TENANCY_STREAM_MAXLEN", default_value_t = 0)]
    pub stream_maxlen: usize,
    /// SMTP server for outgoing mail (smtp://, smtps:// or smtp://...?tls=required URL).
    #[arg(long, env = "TENANCY_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender of outgoing mail.
    #[arg(
        long,
        env = "TENANCY_MAIL_FROM",
        default_value = "tenancy <no-reply@localhost>"
    )]
    pub mail_from: String,
    /// Folder that receives outgoing mail as .eml files when no SMTP server is set (default: the log).
    #[arg(long, env = "TENANCY_MAIL_DIR")]
    pub mail_dir: Option<std::path::PathBuf>,
    /// How often audit entries past each tenant's retention are purged, in seconds (0: never).
    #[arg(long, env = "TENANCY_AUDIT_PURGE_SECS", default_value_t = 3600)]
    pub audit_purge_secs: u64,
    /// Days a tenant its owner deleted can be restored before it and all
    /// its rows are removed (the removal runs with the audit purge).
    #[arg(long, env = "TENANCY_TENANT_DELETION_GRACE_DAYS", default_value_t = 30)]
    pub tenant_deletion_grace_days: u32,
    /// Lets anyone sign up for a new tenant of their own
    /// (`POST /auth/signup/tenant`), which exists once their address is verified.
    #[arg(long, env = "TENANCY_PLATFORM_SIGNUP", default_value_t = false)]
    pub platform_signup: bool,
    /// The plan of tenants created by signup.
    #[arg(long, env = "TENANCY_PLATFORM_SIGNUP_PLAN", default_value = "free")]
    pub platform_signup_plan: String,
    /// The DNS server that custom-domain proofs are looked up at (`ip:port`);
    /// none: the system's resolvers (/etc/resolv.conf).
    #[arg(long, env = "TENANCY_DNS_SERVER")]
    pub dns_server: Option<std::net::SocketAddr>,
    /// How often open WebSockets re-check that their session is still valid, in seconds.
    #[arg(long, env = "TENANCY_WS_SESSION_CHECK_SECS", default_value_t = 5)]
    pub ws_session_check_secs: u64,
    /// How long, in milliseconds, an instance takes a session it found live
    /// in Redis as live without asking again, while it hears every session
    /// change announced (docs/SECURITY.md); 0 asks Redis on every request.
    /// Set 0 while instances older than 0.2.0, which announce nothing, still
    /// serve.
    #[arg(long, env = "TENANCY_SESSION_CACHE_MS", default_value_t = 5000)]
    pub session_cache_ms: u64,
    /// Origins browsers may call the API from (comma-separated, e.g.
    /// `https://app.example.com`); none: no cross-origin access.
    #[arg(long, env = "TENANCY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Public address of the application, for links in mail (invitations).
    #[arg(long, env = "TENANCY_APP_URL", default_value = "http://localhost:8080")]
    pub app_url: String,
    /// Bearer token that `GET /metrics` requires; unset: no /metrics.
    #[arg(long, env = "TENANCY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// The platform key (base64 of 32 random bytes) that wraps every
    /// tenant's data keys; never stored in the database. Required to serve.
    #[arg(long, env = "TENANCY_DATA_KEY", hide_env_values = true)]
    pub data_key: Option<String>,
    /// A file holding TENANCY_DATA_KEY (for secret mounts).
    #[arg(long, env = "TENANCY_DATA_KEY_FILE")]
    pub data_key_file: Option<std::path::PathBuf>,
    /// The platform key being replaced, while `rotate-data-key` rewraps the
    /// tenant keys under TENANCY_DATA_KEY.
    #[arg(long, env = "TENANCY_DATA_KEY_PREVIOUS", hide_env_values = true)]
    pub data_key_previous: Option<String>,
    /// A file holding TENANCY_DATA_KEY_PREVIOUS.
    #[arg(long, env = "TENANCY_DATA_KEY_PREVIOUS_FILE")]
    pub data_key_previous_file: Option<std::path::PathBuf>,
    /// Lets tenants name SMTP servers on internal addresses (loopback,
    /// private networks) and any port; off: public addresses on ports 25,
    /// 465, 587 and 2525 only, so a tenant cannot make the service probe its
    /// own network.
    #[arg(long, env = "TENANCY_TENANT_SMTP_PRIVATE", default_value_t = false)]
    pub tenant_smtp_private: bool,
    /// The platform's own payment, SMS and analytics providers, the default
    /// of every tenant that has not set its own: a JSON object such as
    /// `{"payment": {...}, "sms": {...}, "analytics": {...}}`, each in the
    /// form `PUT /api/tenant/integrations/{kind}` takes. Validated at start.
    #[arg(long, env = "TENANCY_PLATFORM_INTEGRATIONS", hide_env_values = true)]
    pub platform_integrations: Option<String>,
    /// A file holding TENANCY_PLATFORM_INTEGRATIONS (for secret mounts).
    #[arg(long, env = "TENANCY_PLATFORM_INTEGRATIONS_FILE")]
    pub platform_integrations_file: Option<std::path::PathBuf>,
    /// What one client, user or tenant may take of this instance.
    #[command(flatten)]
    pub limits: Limits,
}

/// Budgets and timeouts that keep one client, user or tenant from degrading
/// the others (README: "Resource limits"). 0 turns a budget off.
#[derive(Clone, Debug, clap::Args)]
pub struct Limits {
    /// Seconds a client has to send a request's headers.
    #[arg(long, env = "TENANCY_HEADER_TIMEOUT_SECS", default_value_t = Limits::DEFAULT.header_timeout_secs)]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body (read before any database work).
    #[arg(long, env = "TENANCY_BODY_TIMEOUT_SECS", default_value_t = Limits::DEFAULT.body_timeout_secs)]
    pub body_timeout_secs: u64,
    /// Seconds a request may take in all; then 503.
    #[arg(long, env = "TENANCY_REQUEST_TIMEOUT_SECS", default_value_t = Limits::DEFAULT.request_timeout_secs)]
    pub request_timeout_secs: u64,
    /// Open client connections per instance; more are closed at once.
    #[arg(long, env = "TENANCY_MAX_CONNECTIONS", default_value_t = Limits::DEFAULT.max_connections)]
    pub max_connections: usize,
    /// Requests in progress per instance; more get 503 at once.
    #[arg(long, env = "TENANCY_MAX_IN_FLIGHT", default_value_t = Limits::DEFAULT.max_in_flight)]
    pub max_in_flight: usize,
    /// Transactions one tenant may hold at once (its share of TENANCY_DB_POOL);
    /// a plan's `concurrent_requests` overrides it. 0: half the pool.
    #[arg(long, env = "TENANCY_TENANT_DB_SHARE", default_value_t = Limits::DEFAULT.tenant_db_share)]
    pub tenant_db_share: u32,
    /// Milliseconds a request waits for its tenant's share; then 503 with Retry-After.
    #[arg(long, env = "TENANCY_TENANT_QUEUE_MS", default_value_t = Limits::DEFAULT.tenant_queue_ms)]
    pub tenant_queue_ms: u64,
    /// statement_timeout of the application pool's connections, in milliseconds.
    #[arg(long, env = "TENANCY_STATEMENT_TIMEOUT_MS", default_value_t = Limits::DEFAULT.statement_timeout_ms)]
    pub statement_timeout_ms: u64,
    /// idle_in_transaction_session_timeout of the application pool's connections, in milliseconds.
    #[arg(long, env = "TENANCY_IDLE_IN_TRANSACTION_MS", default_value_t = Limits::DEFAULT.idle_in_transaction_ms)]
    pub idle_in_transaction_ms: u64,
    /// Requests per minute of one authenticated user, counted before any database work.
    #[arg(long, env = "TENANCY_USER_REQUESTS_PER_MINUTE", default_value_t = Limits::DEFAULT.user_requests_per_minute)]
    pub user_requests_per_minute: u32,
    /// Login attempts per minute from one client address.
    #[arg(long, env = "TENANCY_LOGINS_PER_ADDRESS", default_value_t = Limits::DEFAULT.logins_per_address)]
    pub logins_per_address: u32,
    /// Failed logins of one account from one client address within 15
    /// minutes, after which that address waits out the window.
    #[arg(long, env = "TENANCY_LOGIN_FAILURES", default_value_t = Limits::DEFAULT.login_failures)]
    pub login_failures: u32,
    /// Milliseconds a 429 is held back (at most its Retry-After), holding no
    /// request slot: a client retrying at once is slowed, not served. 0: none.
    #[arg(long, env = "TENANCY_THROTTLE_DELAY_MS", default_value_t = Limits::DEFAULT.throttle_delay_ms)]
    pub throttle_delay_ms: u64,
    /// Open WebSockets per user, per instance.
    #[arg(long, env = "TENANCY_WS_PER_USER", default_value_t = Limits::DEFAULT.ws_per_user)]
    pub ws_per_user: usize,
    /// Open WebSockets per tenant, per instance.
    #[arg(long, env = "TENANCY_WS_PER_TENANT", default_value_t = Limits::DEFAULT.ws_per_tenant)]
    pub ws_per_tenant: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        header_timeout_secs: 10,
        body_timeout_secs: 10,
        request_timeout_secs: 30,
        max_connections: 1024,
        max_in_flight: 512,
        tenant_db_share: 0,
        tenant_queue_ms: 2000,
        statement_timeout_ms: 5000,
        idle_in_transaction_ms: 10_000,
        user_requests_per_minute: 1200,
        logins_per_address: 30,
        login_failures: 10,
        throttle_delay_ms: 1000,
        ws_per_user: 8,
        ws_per_tenant: 1000,
    };

    /// Budgets off, timeouts kept: for tests that share one Redis.
    pub const UNTHROTTLED: Limits = Limits {
        user_requests_per_minute: 0,
        logins_per_address: 0,
        login_failures: 0,
        throttle_delay_ms: 0,
        ..Limits::DEFAULT
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("redis_url", &self.redis_url)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("base_domain", &self.base_domain)
            .field("relay", &self.relay)
            .field("secrets", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A configuration problem found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be at least 32 bytes")]
    WeakSecret(&'static str),
    #[error("TENANCY_CONTEXT_KID must not be empty")]
    EmptyKid,
}

impl Config {
    /// Checks the secrets; the access-token secret only when `serving`.
    pub fn validate(&self, serving: bool) -> Result<(), ConfigError> {
        if serving && self.jwt_secret.len() < 32 {
            return Err(ConfigError::WeakSecret("TENANCY_JWT_SECRET"));
        }
        if self.context_secret.len() < 32 {
            return Err(ConfigError::WeakSecret("TENANCY_CONTEXT_SECRET"));
        }
        if self.context_kid.trim().is_empty() {
            return Err(ConfigError::EmptyKid);
        }
        Ok(())
    }

    /// The Redis of the message streams.
    /// The credential-reading role's URL (the owner's unless set).
    pub fn auth_database_url(&self) -> &str {
        self.database_auth_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or(&self.database_owner_url)
    }

    pub fn stream_redis_url(&self) -> &str {
        self.stream_redis_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or(&self.redis_url)
    }

    pub fn base_domain(&self) -> Option<String> {
        self.base_domain
            .as_deref()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec!["tenancy-server", "--database-url", "postgres://app@db/app"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.config)
    }

    #[test]
    fn the_access_token_secret_is_needed_to_serve_only() -> Result<(), clap::Error> {
        let context = ["--context-secret", "a context secret of at least 32 bytes!"];
        let config = parse(&context)?;
        assert!(config.validate(false).is_ok(), "migrate and bootstrap");
        assert!(matches!(
            config.validate(true),
            Err(ConfigError::WeakSecret("TENANCY_JWT_SECRET"))
        ));
        let mut both = context.to_vec();
        both.extend(["--jwt-secret", "an access token secret of 32 bytes+"]);
        assert!(parse(&both)?.validate(true).is_ok());
        assert!(
            parse(&["--context-secret", "short"])?
                .validate(false)
                .is_err(),
            "the context secret always"
        );
        Ok(())
    }
}
