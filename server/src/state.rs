//! Application state: built once at start-up, cloned into every request.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::domain::authz::{Authz, AuthzError};
use crate::domain::keyring::Keyring;
use crate::domain::messaging::hub::Hub;
use crate::domain::sessions::Keys;
use crate::error::{AppError, AppResult};
use crate::http::limits::Shares;

/// Why the service refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid authorization policies: {0}")]
    Policies(#[from] AuthzError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DataKey(String),
}

impl From<AppError> for StartupError {
    fn from(e: AppError) -> Self {
        StartupError::Unavailable(match e {
            AppError::Unavailable(detail) | AppError::Internal(detail) => detail,
            other => other.to_string(),
        })
    }
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// Pool of the application role: every tenant query goes through it.
    pub db: PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub keys: Arc<Keys>,
    /// Caps concurrent password hashing so a login flood cannot starve the runtime.
    pub login_slots: Arc<Semaphore>,
    /// The Cedar policies, validated at start-up.
    pub authz: Arc<Authz>,
    /// The Redis of the message streams (the same as `redis` unless configured).
    pub streams: redis::aio::ConnectionManager,
    /// Open WebSockets of this instance.
    pub hub: Arc<Hub>,
    /// Pool of the owner role (member of tenancy_admin), for platform
    /// administration only: creating tenants, changing their status, plans.
    /// Connected on first use.
    pub admin_db: PgPool,
    /// Pool of the credential-reading role (`DATABASE_AUTH_URL`, default the
    /// owner): login lookups and account creation only. Kept apart from
    /// `db` so the role that serves tenant data never sees a password hash.
    pub auth_db: PgPool,
    /// Requests in progress on this instance (`TENANCY_MAX_IN_FLIGHT`).
    pub in_flight: Arc<Semaphore>,
    /// Each tenant's share of `db`.
    pub shares: Arc<Shares>,
    /// Budgets known to be spent (see [`crate::http::limits::Refusals`]).
    pub refusals: Arc<crate::http::limits::Refusals>,
    /// Sessions seen live (see [`crate::domain::live`]).
    pub sessions: Arc<crate::domain::live::LiveSessions>,
    /// Requests admitted and not yet counted in Redis.
    pub tally: Arc<crate::http::limits::Tally>,
    /// The platform keys that open tenant data keys.
    pub keyring: Arc<Keyring>,
    /// The platform's own providers, every tenant's default.
    pub platform_integrations: Arc<crate::domain::integrations::PlatformDefaults>,
}

/// A Redis connection manager with short timeouts and few retries: with
/// Redis down a request must fail fast (503), not wait; the manager
/// reconnects by itself afterwards.
pub async fn redis_manager(url: &str) -> AppResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(Duration::from_secs(1))
        .set_number_of_retries(1)
        .set_max_delay(500);
    Ok(redis::aio::ConnectionManager::new_with_config(client, config).await?)
}

/// Options for `url` whose connections carry the statement and
/// idle-in-transaction timeouts, whatever the role's own settings (README:
/// "Resource limits").
fn with_timeouts(config: &Config, url: &str) -> AppResult<PgConnectOptions> {
    let limits = &config.limits;
    Ok(url
        .parse::<PgConnectOptions>()
        .map_err(|e| AppError::Unavailable(format!("database: {e}")))?
        .options([
            ("statement_timeout", limits.statement_timeout_ms.to_string()),
            (
                "idle_in_transaction_session_timeout",
                limits.idle_in_transaction_ms.to_string(),
            ),
        ]))
}

impl AppState {
    /// Loads the policies (refusing invalid ones) and connects to PostgreSQL and Redis.
    pub async fn connect(config: Config) -> Result<Self, StartupError> {
        let authz = Arc::new(Authz::load_or_embedded(config.policy_dir.as_deref())?);
        let platform_integrations = Arc::new(
            crate::domain::integrations::PlatformDefaults::from_config(&config)
                .map_err(StartupError::Unavailable)?,
        );
        let keyring = Arc::new(
            Keyring::from_config(&config).map_err(|e| StartupError::DataKey(e.to_string()))?,
        );
        let db = PgPoolOptions::new()
            .max_connections(config.db_pool_size)
            .acquire_timeout(Duration::from_secs(3))
            // No test round trip before each use of a connection that was
            // busy a moment ago; one idle for a second or more (through which
            // PostgreSQL may have restarted) is still tested. A dead one that
            // slips through fails its request's BEGIN, which is then opened
            // on another connection (http::tenant::begin); the pool's check
            // on release closes it.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= Duration::from_secs(1) {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(with_timeouts(&config, &config.database_url)?)
            .await
            .map_err(|e| AppError::Unavailable(format!("database: {e}")))?;
        let redis = redis_manager(&config.redis_url).await?;
        let streams = if config.stream_redis_url() == config.redis_url {
            redis.clone()
        } else {
            redis_manager(config.stream_redis_url()).await?
        };
        let keys = Arc::new(Keys::new(&config));
        let login_slots = Arc::new(Semaphore::new(config.login_concurrency.max(1)));
        let admin_db = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(with_timeouts(&config, &config.database_owner_url)?);
        let auth_db = PgPoolOptions::new()
            .max_connections(config.login_concurrency.max(1) as u32 + 2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(with_timeouts(&config, config.auth_database_url())?);
        check_keyring(&keyring, &admin_db).await?;
        let in_flight = Arc::new(Semaphore::new(config.limits.max_in_flight.max(1)));
        let shares = Arc::new(Shares::new(
            config.limits.tenant_db_share,
            config.db_pool_size,
        ));
        let hub = Arc::new(Hub::with_caps(
            config.limits.ws_per_user,
            config.limits.ws_per_tenant,
        ));
        Ok(Self {
            in_flight,
            shares,
            refusals: Arc::default(),
            tally: Arc::default(),
            sessions: Arc::new(crate::domain::live::LiveSessions::new(
                Duration::from_millis(config.session_cache_ms),
            )),
            auth_db,
            config: Arc::new(config),
            db,
            redis,
            keys,
            login_slots,
            authz,
            streams,
            hub,
            admin_db,
            keyring,
            platform_integrations,
        })
    }
}

/// Refuses to start when some tenant's data key is wrapped by a platform key
/// the service was not given: better now than a failure at the first
/// sealed value it reads.
async fn check_keyring(keyring: &Keyring, admin_db: &PgPool) -> Result<(), StartupError> {
    let unavailable = |e: sqlx::Error| match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("42883") => {
            StartupError::Unavailable(
                "the database is not migrated: run `tenancy-server migrate` first".to_owned(),
            )
        }
        _ => StartupError::Unavailable(format!("database: {e}")),
    };
    let wrappers: Vec<String> = sqlx::query_scalar("SELECT app.data_key_wrappers()")
        .fetch_all(admin_db)
        .await
        .map_err(unavailable)?;
    let missing: Vec<&str> = wrappers
        .iter()
        .map(String::as_str)
        .filter(|id| keyring.by_id(id).is_none())
        .collect();
    if missing.is_empty() {
        // New tenant keys may be wrapped by this key only.
        sqlx::query("SELECT app.register_platform_keys($1)")
            .bind(vec![keyring.current.id().to_owned()])
            .execute(admin_db)
            .await
            .map_err(unavailable)?;
        return Ok(());
    }
    Err(StartupError::DataKey(format!(
        "TENANCY_DATA_KEY (id {}) does not open the tenant data keys: they are wrapped by platform key {}; start with that key (or with it as TENANCY_DATA_KEY_PREVIOUS and run rotate-data-key)",
        keyring.current.id(),
        missing.join(", ")
    )))
}
