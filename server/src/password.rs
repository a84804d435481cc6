//! The password policy: at least [`MIN_CHARS`] characters, at most
//! [`MAX_BYTES`] bytes, not the account's own address or its name part, and
//! not on the list of common passwords shipped with the service
//! (`server/data/common-passwords.txt`, compiled in; never fetched).

use std::collections::HashSet;
use std::sync::LazyLock;

use crate::error::{AppError, AppResult};

pub const MIN_CHARS: usize = 10;
pub const MAX_BYTES: usize = 1024;

static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../data/common-passwords.txt")
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
