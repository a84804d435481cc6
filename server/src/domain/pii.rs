//! Personal data the service seals in tenant tables (seed 002,
//! REQ-MT-B009), and how it is shown where it must not be read whole.
//!
//! Sealed: the address of an invitation (`app.invitations.email`), which
//! stays after the invitation is accepted or revoked and belongs to someone
//! who may never have become a member. It is sealed under the tenant's data
//! key with a blind index for the one lookup the service makes on it (a new
//! invitation replaces a pending one for the same address). Why the other
//! columns are not sealed is in `docs/DATA_PROTECTION.md`.

use uuid::Uuid;

use crate::domain::keyring::{DataKey, KeyError, TenantKeys};
use crate::error::{AppError, AppResult};

/// The column an invitation's address is sealed for.
pub const INVITEE_EMAIL: &str = "app.invitations.email";

/// A sealed column of a tenant table: where its ciphertext, its blind
/// index and (for rows from before it was sealed) its plain form live.
pub struct SealedField {
    /// The table (`schema.table`).
    pub table: &'static str,
    /// The column holding the plain value (NULL once sealed), and the name
    /// the opened value has in exports.
    pub plain: &'static str,
    /// The column holding the sealed value.
    pub sealed: &'static str,
    /// The column holding its blind index (never exported).
    pub index: &'static str,
    /// What it is sealed for (associated data).
    pub column: &'static str,
    /// The column naming the row in errors.
    pub id: &'static str,
}

/// Every sealed column: what exports open, and what rotation reseals.
pub const SEALED_FIELDS: [SealedField; 1] = [SealedField {
    table: "app.invitations",
    plain: "email",
    sealed: "email_sealed",
    index: "email_index",
    column: INVITEE_EMAIL,
    id: "id",
}];

/// The form of an address the blind index is taken of: trimmed, lower case
/// (addresses are compared without case everywhere in the service).
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// An address sealed for [`INVITEE_EMAIL`], with its blind index.
pub struct SealedEmail {
    pub sealed: Vec<u8>,
    pub index: [u8; 16],
    pub key_version: i32,
}

/// `email` sealed under `key`, indexed by its normalised form.
pub fn seal_invitee(key: &DataKey, email: &str) -> Result<SealedEmail, KeyError> {
    Ok(SealedEmail {
        sealed: key.seal(INVITEE_EMAIL, email.as_bytes())?,
        index: key.blind_index(INVITEE_EMAIL, normalize_email(email).as_bytes()),
        key_version: key.version(),
    })
}

/// The blind indexes of `email` under each of `keys` (every live version
/// of the tenant's key, so a lookup matches during a rotation too).
pub fn invitee_indexes(keys: &[DataKey], email: &str) -> Vec<Vec<u8>> {
    let normal = normalize_email(email);
    keys.iter()
        .map(|k| k.blind_index(INVITEE_EMAIL, normal.as_bytes()).to_vec())
        .collect()
}

/// An invitation's address from its stored forms: the sealed one opened,
/// else the plain one of a row from before sealing; an error names the row.
pub async fn open_invitee(
    keys: &mut TenantKeys<'_>,
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    plain: Option<String>,
    sealed: Option<Vec<u8>>,
) -> AppResult<String> {
    match (plain, sealed) {
        (_, Some(sealed)) => {
            keys.open_text(conn, INVITEE_EMAIL, &invitation_row(id), &sealed)
                .await
        }
        (Some(plain), None) => Ok(plain),
        (None, None) => Err(AppError::Internal(format!(
            "{} has no address",
            invitation_row(id)
        ))),
    }
}

/// How an invitation's row is named in an error.
pub fn invitation_row(id: Uuid) -> String {
    format!("invitation {id}")
}

/// An address as audit entries show it: the first character of the local
/// part and the whole domain (`a***@example.com`), enough to tell entries
/// apart without keeping the address itself in the trail.
pub fn mask_email(email: &str) -> String {
    match email.trim().split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_the_domain_and_one_letter() {
        assert_eq!(mask_email("Ann.Lee@example.com"), "A***@example.com");
        assert_eq!(mask_email(" x@y.test "), "x***@y.test");
        assert_eq!(mask_email("nobody"), "***");
    }

    #[test]
    fn the_index_ignores_case_and_spaces_but_not_the_address() {
        let (key, _) = DataKey::generate(Uuid::new_v4(), 1);
        let a = seal_invitee(&key, "Ann@Example.com").map(|s| s.index);
        assert_eq!(
            a.ok(),
            Some(key.blind_index(INVITEE_EMAIL, b"ann@example.com"))
        );
        let keys = [key];
        assert_eq!(
            invitee_indexes(&keys, " ANN@example.COM"),
            vec![keys[0]
                .blind_index(INVITEE_EMAIL, b"ann@example.com")
                .to_vec()]
        );
        assert_ne!(
            invitee_indexes(&keys, "anne@example.com"),
            invitee_indexes(&keys, "ann@example.com")
        );
    }
}
