//! The password policy: at least [`MIN_CHARS`] characters, at most
//! [`MAX_BYTES`] bytes, not the account's own address or its name part, and
//! not on the list of common passwords shipped with the service
//! (`server/data/common-passwords.txt`, compiled in; never fetched).

use std::collections::HashSet;
use std::sync::LazyLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm as ArgonAlgorithm, Argon2, Params, Version};
use uuid::Uuid;

use crate::error::{AppError, AppResult};
use crate::state::AppState;

pub const MIN_CHARS: usize = 10;
pub const MAX_BYTES: usize = 1024;

static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// Refuses an empty or oversized password (named `field` in the answer)
/// before any work is done on it; the policy is not applied.
pub fn bounded(password: &str, field: &str) -> AppResult<()> {
    if password.is_empty() || password.len() > MAX_BYTES {
        return Err(AppError::Validation(format!(
            "{field} must be 1 to {MAX_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Refuses a password `email` may not choose, saying why (422).
pub fn check(password: &str, email: &str) -> AppResult<()> {
    if password.chars().count() < MIN_CHARS {
        return Err(AppError::Validation(format!(
            "password must be at least {MIN_CHARS} characters"
        )));
    }
    if password.len() > MAX_BYTES {
        return Err(AppError::Validation(format!(
            "password must be at most {MAX_BYTES} bytes"
        )));
    }
    let lower = password.to_lowercase();
    let email = email.to_lowercase();
    let name = email.split('@').next().unwrap_or_default();
    if lower == email || lower == name || COMMON.contains(lower.as_str()) {
        return Err(AppError::Validation(
            "password is too common or too easy to guess; choose another".to_owned(),
        ));
    }
    Ok(())
}

/// Memory (KiB), passes and lanes of new hashes: the OWASP-recommended
/// argon2id parameters (19 MiB, 2 passes, 1 lane).
const ARGON2_PARAMS: (u32, u32, u32) = (19 * 1024, 2, 1);

/// argon2id with [`ARGON2_PARAMS`].
fn argon2() -> AppResult<Argon2<'static>> {
    let (m, t, p) = ARGON2_PARAMS;
    let params = Params::new(m, t, p, None).map_err(AppError::internal)?;
    Ok(Argon2::new(
        ArgonAlgorithm::Argon2id,
        Version::V0x13,
        params,
    ))
}

/// Hashes a password (blocking: call from a blocking thread).
pub fn hash_password(password: &str) -> AppResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(AppError::internal)
}

/// One of the `TENANCY_LOGIN_CONCURRENCY` slots for password hashing.
async fn hashing_slot(state: &AppState) -> AppResult<tokio::sync::OwnedSemaphorePermit> {
    state
        .login_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(AppError::internal)
}

/// Hashes a new password off the async runtime, within the same cap on
/// concurrent hashing as logins (`TENANCY_LOGIN_CONCURRENCY`): signups,
/// resets and changes cannot take more memory or CPU than logins can.
pub async fn hash_new_password(state: &AppState, password: String) -> AppResult<String> {
    let _slot = hashing_slot(state).await?;
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(AppError::internal)?
}

/// Whether a usable hash was made otherwise than new hashes are now
/// (another algorithm, version or parameters): verified, it is replaced.
pub fn needs_rehash(hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (m, t, p) = ARGON2_PARAMS;
    match Params::try_from(&parsed) {
        Ok(params) => {
            parsed.algorithm != ArgonAlgorithm::Argon2id.ident()
                || parsed.version != Some(Version::V0x13 as u32)
                || (params.m_cost(), params.t_cost(), params.p_cost()) != (m, t, p)
        }
        Err(_) => true,
    }
}

/// After a successful login with `password`: when the stored hash was made
/// with other parameters, stores the password hashed as new ones are.
pub async fn upgrade_hash(
    state: &AppState,
    user: Uuid,
    old_hash: &str,
    password: String,
) -> AppResult<()> {
    if !needs_rehash(old_hash) {
        return Ok(());
    }
    let new_hash = hash_new_password(state, password).await?;
    let upgraded: bool = sqlx::query_scalar("SELECT app.rehash_password($1, $2, $3)")
        .bind(user)
        .bind(old_hash)
        .bind(new_hash)
        .fetch_one(&state.auth_db)
        .await?;
    tracing::info!(user_id = %user, upgraded, "password hash parameters upgraded");
    Ok(())
}

/// Checked for unknown emails so that they take as long as a wrong password.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("not the password of anyone").unwrap_or_default());

/// Verifies `password` against `hash` (or against a dummy hash when the
/// user is unknown) off the async runtime, at most `login_concurrency` at once.
pub async fn verify_password(
    state: &AppState,
    password: String,
    hash: Option<String>,
) -> AppResult<bool> {
    let _slot = hashing_slot(state).await?;
    tokio::task::spawn_blocking(move || {
        // An account without a usable hash (invited, not yet set) is
        // checked against the dummy too: it answers in the same time as any
        // other, and never succeeds.
        let usable = hash.filter(|h| PasswordHash::new(h).is_ok());
        let known = usable.is_some();
        let hash = usable.unwrap_or_else(|| DUMMY_HASH.clone());
        let ok = match PasswordHash::new(&hash) {
            Ok(parsed) => argon2()?
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        };
        Ok(ok && known)
    })
    .await
    .map_err(AppError::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_short_common_and_own_address() {
        assert!(check("short", "a@b.test").is_err());
        assert!(check("Password123", "a@b.test").is_err());
        assert!(check("alice.smith@b.test", "Alice.Smith@b.test").is_err());
        assert!(check("alice.smith", "alice.smith@b.test").is_err());
        assert!(check(&"x".repeat(MAX_BYTES + 1), "a@b.test").is_err());
        assert!(check("plum-harbour-window-17", "a@b.test").is_ok());
    }
}
