//! Personal data the service seals in tenant tables (seed 002,
//! REQ-MT-B009), and how it is shown where it must not be read whole.
//!
//! Sealed: the address of an invitation (`app.invitations.email`), which
//! stays after the invitation is accepted or revoked and belongs to someone
//! who may never have become a member. It is sealed under the tenant's data
//! key, bound to its row and to the digest of the invitation's link (so a
//! row revived or re-pointed at a link someone else holds does not open),
//! with a blind index for the one lookup the service makes on it (a new
//! invitation replaces a pending one for the same address). Why the other
//! columns are not sealed is in `docs/DATA_PROTECTION.md`.

use uuid::Uuid;

use std::collections::HashMap;

use crate::domain::keyring::{DataKey, KeyError, Keyring, TenantKeys};
use crate::error::{AppError, AppResult};

/// The column an invitation's address is sealed for.
pub const INVITEE_EMAIL: &str = "app.invitations.email";

/// Opens a sealed value with the key version that sealed it, given its
/// row's id and link digest.
pub type OpenFn = fn(&DataKey, Uuid, &[u8], &[u8]) -> Result<String, KeyError>;

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
    /// The row's id (bound to the sealed value, and naming it in errors).
    pub id: &'static str,
    /// The link digest bound to the sealed value (never exported).
    pub link: &'static str,
    /// Opens a value with the key version that sealed it, given the row's
    /// id and link digest.
    pub open: OpenFn,
}

/// Every sealed column: what exports open, and what rotation reseals.
pub const SEALED_FIELDS: [SealedField; 1] = [SealedField {
    table: "app.invitations",
    plain: "email",
    sealed: "email_sealed",
    index: "email_index",
    id: "id",
    link: "token_hash",
    open: open_invitee_with,
}];

/// The form of an address the blind index is taken of: trimmed, lower case
/// (addresses are compared without case everywhere in the service).
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// What an invitation's address is sealed for: the column, the row and the
/// digest of its link.
fn invitee_binding(id: Uuid, token_hash: &[u8]) -> String {
    let digest: String = token_hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("{INVITEE_EMAIL}/{id}/{digest}")
}

/// An address sealed for [`INVITEE_EMAIL`], with its blind index.
pub struct SealedEmail {
    pub sealed: Vec<u8>,
    pub index: [u8; 16],
    pub key_version: i32,
}

/// `email` sealed under `key` for invitation `id` with link digest
/// `token_hash`, indexed by its normalised form.
pub fn seal_invitee(
    key: &DataKey,
    id: Uuid,
    token_hash: &[u8],
    email: &str,
) -> Result<SealedEmail, KeyError> {
    Ok(SealedEmail {
        sealed: key.seal(&invitee_binding(id, token_hash), email.as_bytes())?,
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
    token_hash: &[u8],
    plain: Option<String>,
    sealed: Option<Vec<u8>>,
) -> AppResult<String> {
    match (plain, sealed) {
        (_, Some(sealed)) => {
            keys.open_text(
                conn,
                &invitee_binding(id, token_hash),
                &invitation_row(id),
                &sealed,
            )
            .await
        }
        (Some(plain), None) => Ok(plain),
        (None, None) => Err(AppError::Internal(format!(
            "{} has no address",
            invitation_row(id)
        ))),
    }
}

/// An invitation's sealed address opened with `key` (the version that
/// sealed it), where no connection is at hand (the mail sender, exports).
pub fn open_invitee_with(
    key: &DataKey,
    id: Uuid,
    token_hash: &[u8],
    sealed: &[u8],
) -> Result<String, KeyError> {
    let plain = key.open(
        &invitee_binding(id, token_hash),
        &invitation_row(id),
        sealed,
    )?;
    String::from_utf8(plain.to_vec()).map_err(|_| {
        KeyError::Corrupt(format!("the address of {} is not text", invitation_row(id)))
    })
}

#[derive(sqlx::FromRow)]
struct InvitationAddress {
    id: Uuid,
    tenant_id: Uuid,
    email: Option<String>,
    email_sealed: Option<Vec<u8>>,
    token_hash: Vec<u8>,
    key_version: Option<i32>,
    kek_id: Option<String>,
    wrapped: Option<Vec<u8>>,
}

impl InvitationAddress {
    fn open(self, keyring: &Keyring) -> Result<String, String> {
        match (self.email, self.email_sealed, self.key_version, self.kek_id) {
            (Some(plain), None, ..) => Ok(plain),
            (_, Some(sealed), Some(version), Some(kek_id)) => {
                let wrapped = self
                    .wrapped
                    .ok_or_else(|| "the tenant's data key is destroyed".to_owned())?;
                keyring
                    .open(self.tenant_id, version, &kek_id, &wrapped)
                    .and_then(|key| open_invitee_with(&key, self.id, &self.token_hash, &sealed))
                    .map_err(|e| e.to_string())
            }
            _ => Err(format!("{} has no address", invitation_row(self.id))),
        }
    }
}

/// The addresses of `tenant`'s invitations `ids`, opened with its key, or
/// why one cannot be opened: for the mail sender, which alone may call
/// `app.invitation_addresses` (the owner role). An id of another tenant
/// is not found.
pub async fn invitation_addresses(
    db: impl sqlx::PgExecutor<'_>,
    keyring: &Keyring,
    tenant: Uuid,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Result<String, String>>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<InvitationAddress> = sqlx::query_as(
        "SELECT id, tenant_id, email, email_sealed, token_hash, key_version, kek_id, wrapped
         FROM app.invitation_addresses($1, $2)",
    )
    .bind(tenant)
    .bind(ids)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id, row.open(keyring)))
        .collect())
}

/// How an invitation's row is named in an error.
pub fn invitation_row(id: Uuid) -> String {
    format!("invitation {id}")
}

/// An address as audit entries show it: the first character of the local
/// part and of the domain, and the domain's last label
/// (`a***@e***.com`): enough to tell entries apart, not enough to name
/// someone on a domain of their own.
pub fn mask_email(email: &str) -> String {
    let first = |s: &str| s.chars().take(1).collect::<String>();
    match email.trim().rsplit_once('@') {
        Some((local, domain)) => {
            let top = domain.rsplit_once('.').map_or("", |(_, top)| top);
            if top.is_empty() {
                format!("{}***@{}***", first(local), first(domain))
            } else {
                format!("{}***@{}***.{top}", first(local), first(domain))
            }
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_the_domain_and_one_letter() {
        assert_eq!(mask_email("Ann.Lee@example.com"), "A***@e***.com");
        assert_eq!(mask_email(" x@y.test "), "x***@y***.test");
        assert_eq!(mask_email("root@localhost"), "r***@l***");
        assert_eq!(mask_email("nobody"), "***");
    }

    #[test]
    fn the_index_ignores_case_and_spaces_but_not_the_address() {
        let (key, _) = DataKey::generate(Uuid::new_v4(), 1);
        let a = seal_invitee(&key, Uuid::new_v4(), &[1; 32], "Ann@Example.com").map(|s| s.index);
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

#[cfg(test)]
mod binding_tests {
    use super::*;

    #[test]
    fn an_address_opens_only_for_its_row_and_link() -> Result<(), KeyError> {
        let (key, _) = DataKey::generate(Uuid::new_v4(), 1);
        let (id, link) = (Uuid::new_v4(), [7u8; 32]);
        let sealed = seal_invitee(&key, id, &link, "ann@example.com")?.sealed;
        assert_eq!(
            open_invitee_with(&key, id, &link, &sealed)?,
            "ann@example.com"
        );
        assert!(open_invitee_with(&key, Uuid::new_v4(), &link, &sealed).is_err());
        assert!(open_invitee_with(&key, id, &[8u8; 32], &sealed).is_err());
        Ok(())
    }
}
