//! Application state: built once at start-up, cloned into every request.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::auth::Keys;
use crate::config::Config;
use crate::error::AppError;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// Pool of the application role: every tenant query goes through it.
    pub db: PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub keys: Arc<Keys>,
    /// Caps concurrent password hashing so a login flood cannot starve the runtime.
    pub login_slots: Arc<Semaphore>,
}

impl AppState {
    pub async fn connect(config: Config) -> Result<Self, AppError> {
        let db = PgPoolOptions::new()
            .max_connections(config.db_pool_size)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&config.database_url)
            .await
            .map_err(|e| AppError::Unavailable(format!("database: {e}")))?;
        let client = redis::Client::open(config.redis_url.as_str())?;
        let redis = redis::aio::ConnectionManager::new(client).await?;
        let keys = Arc::new(Keys::new(&config));
        let login_slots = Arc::new(Semaphore::new(config.login_concurrency.max(1)));
        Ok(Self {
            config: Arc::new(config),
            db,
            redis,
            keys,
            login_slots,
        })
    }
}
