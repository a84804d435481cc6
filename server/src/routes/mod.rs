//! HTTP areas, each a module with `router()`, and helpers they share.

pub mod auth;
pub mod boards;
pub mod health;
pub mod tasks;
pub mod tenant;
pub mod workspaces;

use crate::error::{AppError, AppResult};
use uuid::Uuid;

/// A trimmed, non-empty name of at most `max` characters.
pub(crate) fn valid_name<'a>(field: &str, value: &'a str, max: usize) -> AppResult<&'a str> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > max {
        return Err(AppError::Validation(format!(
            "{field} must be 1 to {max} characters"
        )));
    }
    Ok(trimmed)
}

/// Whether a row with this id is visible in the current tenant.
/// `table` is always one of our own constants, never input.
pub(crate) async fn exists(
    conn: &mut sqlx::PgConnection,
    table: &'static str,
    id: Uuid,
) -> AppResult<bool> {
    let found: Option<(i32,)> = sqlx::query_as(&format!("SELECT 1 FROM {table} WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
}
