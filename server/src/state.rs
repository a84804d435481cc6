//! Application state: built once at start-up, cloned into every request.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::auth::Keys;
use crate::authz::{Authz, AuthzError};
use crate::config::Config;
use crate::error::AppError;

/// Why the service refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid authorization policies: {0}")]
    Policies(#[from] AuthzError),
    #[error("{0}")]
    Unavailable(String),
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
}

impl AppState {
    /// Loads the policies (refusing invalid ones) and connects to PostgreSQL and Redis.
    pub async fn connect(config: Config) -> Result<Self, StartupError> {
        let authz = Arc::new(Authz::load(&config.policy_dir)?);
        let db = PgPoolOptions::new()
            .max_connections(config.db_pool_size)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&config.database_url)
            .await
            .map_err(|e| AppError::Unavailable(format!("database: {e}")))?;
        let client = redis::Client::open(config.redis_url.as_str()).map_err(AppError::from)?;
        // Short timeouts and few retries: with Redis down a request must fail
        // fast (503), not wait; the manager reconnects by itself afterwards.
        let redis_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_secs(1))
            .set_number_of_retries(1)
            .set_max_delay(500);
        let redis = redis::aio::ConnectionManager::new_with_config(client, redis_config)
            .await
            .map_err(AppError::from)?;
        let keys = Arc::new(Keys::new(&config));
        let login_slots = Arc::new(Semaphore::new(config.login_concurrency.max(1)));
        Ok(Self {
            config: Arc::new(config),
            db,
            redis,
            keys,
            login_slots,
            authz,
        })
    }
}
