//! Keys for the data the service encrypts itself (seed 002, REQ-MT-B009).
//!
//! Two levels:
//! - the **platform key** (`TENANCY_DATA_KEY` or `TENANCY_DATA_KEY_FILE`, 32
//!   bytes in base64) is the operator's and never enters the database. Its
//!   id, an HMAC of the key, is stored beside what it wraps, so the service
//!   can tell at start-up that it was given the key the database needs;
//! - each tenant has **data keys** (`app.tenant_keys`), versioned, stored only
//!   wrapped by the platform key, with the tenant and version bound to the
//!   wrapping so a wrapped key copied to another tenant does not open.
//!
//! A field is sealed with XChaCha20-Poly1305 (random 192-bit nonce) under the
//! tenant's current data key, with the tenant, the column and the key
//! version as associated data: a ciphertext moved to another tenant or
//! column, or relabelled with another version, does not open.
//!
//! Sealed layout: `0x01 | version (u32, big endian) | nonce (24) | ciphertext+tag`.
//!
//! A sealed field that needs equality lookups has a **blind index** beside
//! it: HMAC-SHA-256, truncated to 128 bits, of the normalised value under a
//! key derived from the same data key (never the data key itself). The
//! database can compare two indexes; without the tenant's key it can
//! neither read the value nor test a guess.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::error::{AppError, AppResult};

const FORMAT: u8 = 1;
const NONCE: usize = 24;
const HEADER: usize = 1 + 4 + NONCE;

/// Why a key or a sealed value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Corrupt(String),
}

/// A platform key: wraps tenant data keys.
pub struct PlatformKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl PlatformKey {
    /// The key from its base64 text (32 bytes); `name` says where it came from.
    pub fn from_base64(text: &str, name: &str) -> Result<PlatformKey, KeyError> {
        use base64::Engine;
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::Config(format!("{name} is not base64")))?,
        );
        let bytes: Zeroizing<[u8; 32]> =
            Zeroizing::new(decoded[..].try_into().map_err(|_| {
                KeyError::Config(format!(
                    "{name} must be 32 bytes (base64 of 32 random bytes, e.g. `openssl rand -base64 32`), not {}",
                    decoded.len()
                ))
            })?);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&bytes[..])
            .map_err(|_| KeyError::Config(format!("{name} cannot be used as a key")))?;
        mac.update(b"tenancy platform key id");
        let id = hex(&mac.finalize().into_bytes()[..8]);
        Ok(PlatformKey {
            id,
            cipher: XChaCha20Poly1305::new(&Key::from(*bytes)),
        })
    }

    /// The key's id: an HMAC of the key, safe to store and to log.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn wrap_aad(tenant: Uuid, version: i32) -> Vec<u8> {
        let mut aad = b"tenancy tenant key".to_vec();
        aad.extend_from_slice(tenant.as_bytes());
        aad.extend_from_slice(&version.to_be_bytes());
        aad
    }

    /// `key` wrapped for `tenant`'s data key `version`: nonce then ciphertext.
    pub fn wrap(&self, tenant: Uuid, version: i32, key: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = Self::wrap_aad(tenant, version);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: key,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Corrupt("a data key could not be wrapped".to_owned()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The data key `wrapped` holds, if this key wrapped it for this tenant and version.
    pub fn unwrap(&self, tenant: Uuid, version: i32, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let corrupt = || {
            KeyError::Corrupt(format!(
                "data key {version} of tenant {tenant} does not open with platform key {}",
                self.id
            ))
        };
        if wrapped.len() < NONCE {
            return Err(corrupt());
        }
        let (nonce, sealed) = wrapped.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| corrupt())?;
        let aad = Self::wrap_aad(tenant, version);
        let key = Zeroizing::new(
            self.cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| corrupt())?,
        );
        let bytes: &[u8; 32] = key[..].try_into().map_err(|_| corrupt())?;
        Ok(DataKey::from_bytes(tenant, version, bytes))
    }
}

/// The platform keys the service holds: the current one, which wraps every
/// new data key, and the previous one while keys are rewrapped.
pub struct Keyring {
    pub current: PlatformKey,
    pub previous: Option<PlatformKey>,
}

impl Keyring {
    /// The keyring the configuration names; an error says, in one line,
    /// what is missing or wrong.
    pub fn from_config(config: &crate::config::Config) -> Result<Keyring, KeyError> {
        let current = read_key(
            config.data_key.as_deref(),
            config.data_key_file.as_deref(),
            "TENANCY_DATA_KEY",
        )?
        .ok_or_else(|| {
            KeyError::Config(
                "TENANCY_DATA_KEY (or TENANCY_DATA_KEY_FILE) is required: the platform key that wraps tenant data keys"
                    .to_owned(),
            )
        })?;
        let previous = read_key(
            config.data_key_previous.as_deref(),
            config.data_key_previous_file.as_deref(),
            "TENANCY_DATA_KEY_PREVIOUS",
        )?;
        Ok(Keyring { current, previous })
    }

    /// The platform key with this id, if held.
    pub fn by_id(&self, id: &str) -> Option<&PlatformKey> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.id == id)
    }

    /// Opens a stored data key (wrapped under platform key `kek_id`).
    pub fn open(
        &self,
        tenant: Uuid,
        version: i32,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, KeyError> {
        self.by_id(kek_id)
            .ok_or_else(|| {
                KeyError::Config(format!(
                    "data key {version} of tenant {tenant} is wrapped by platform key {kek_id}, which this service does not hold"
                ))
            })?
            .unwrap(tenant, version, wrapped)
    }
}

fn read_key(
    value: Option<&str>,
    file: Option<&std::path::Path>,
    name: &str,
) -> Result<Option<PlatformKey>, KeyError> {
    match (value.filter(|v| !v.trim().is_empty()), file) {
        (Some(_), Some(_)) => Err(KeyError::Config(format!(
            "set {name} or {name}_FILE, not both"
        ))),
        (Some(text), None) => PlatformKey::from_base64(text, name).map(Some),
        (None, Some(path)) => {
            let text =
                Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    KeyError::Config(format!("{name}_FILE {}: {e}", path.display()))
                })?);
            PlatformKey::from_base64(&text, &format!("{name}_FILE")).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// A stored data key: which platform key wraps it, and how.
#[derive(sqlx::FromRow)]
struct StoredKey {
    version: i32,
    kek_id: String,
    wrapped: Option<Vec<u8>>,
}

impl Keyring {
    /// The tenant's current data key, made on first use. `conn` must be in
    /// `tenant`'s context (the key rows are the tenant's own).
    pub async fn current_key(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: Uuid,
    ) -> AppResult<DataKey> {
        for _ in 0..3 {
            let newest: Option<StoredKey> = sqlx::query_as(
                "SELECT version, kek_id, wrapped FROM app.tenant_keys
                 WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1",
            )
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?;
            match newest {
                Some(StoredKey {
                    version,
                    kek_id,
                    wrapped: Some(wrapped),
                }) => {
                    return self
                        .open(tenant, version, &kek_id, &wrapped)
                        .map_err(AppError::from)
                }
                Some(StoredKey { wrapped: None, .. }) => {
                    return Err(AppError::Unavailable(format!(
                        "the data keys of tenant {tenant} are destroyed"
                    )))
                }
                None => {}
            }
            let (key, bytes) = DataKey::generate(tenant, 1);
            let wrapped = self.current.wrap(tenant, 1, &bytes)?;
            let made = sqlx::query(
                "INSERT INTO app.tenant_keys (tenant_id, version, wrapped, kek_id) VALUES ($1, 1, $2, $3)
                 ON CONFLICT (tenant_id, version) DO NOTHING",
            )
            .bind(tenant)
            .bind(&wrapped)
            .bind(self.current.id())
            .execute(&mut *conn)
            .await?;
            if made.rows_affected() == 1 {
                return Ok(key);
            }
            // Another request made it first: read theirs.
        }
        Err(AppError::Unavailable(format!(
            "the data key of tenant {tenant} could not be read"
        )))
    }

    /// Version `version` of the tenant's data key (to open what it sealed).
    pub async fn key_version(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: Uuid,
        version: i32,
    ) -> AppResult<DataKey> {
        let stored: Option<StoredKey> = sqlx::query_as(
            "SELECT version, kek_id, wrapped FROM app.tenant_keys WHERE tenant_id = $1 AND version = $2",
        )
        .bind(tenant)
        .bind(version)
        .fetch_optional(&mut *conn)
        .await?;
        match stored {
            Some(StoredKey {
                version,
                kek_id,
                wrapped: Some(wrapped),
            }) => Ok(self.open(tenant, version, &kek_id, &wrapped)?),
            _ => Err(AppError::Unavailable(format!(
                "data key {version} of tenant {tenant} does not exist or is destroyed"
            ))),
        }
    }
}

impl From<KeyError> for AppError {
    fn from(e: KeyError) -> Self {
        AppError::Internal(e.to_string())
    }
}

/// One version of one tenant's data key, unwrapped (in memory only).
pub struct DataKey {
    tenant: Uuid,
    version: i32,
    bytes: Zeroizing<[u8; 32]>,
    /// Derived from `bytes`, for blind indexes only.
    index_key: Zeroizing<[u8; 32]>,
    cipher: XChaCha20Poly1305,
}

impl DataKey {
    /// A new random key, and its bytes (to be wrapped).
    pub fn generate(tenant: Uuid, version: i32) -> (DataKey, Zeroizing<[u8; 32]>) {
        let bytes = Zeroizing::new(<[u8; 32]>::from(XChaCha20Poly1305::generate_key(
            &mut OsRng,
        )));
        (Self::from_bytes(tenant, version, &bytes), bytes)
    }

    fn from_bytes(tenant: Uuid, version: i32, bytes: &[u8; 32]) -> DataKey {
        let index_key = Zeroizing::new(<[u8; 32]>::from(
            hmac_sha256(bytes, &[b"tenancy blind index key"]).into_bytes(),
        ));
        DataKey {
            tenant,
            version,
            bytes: Zeroizing::new(*bytes),
            index_key,
            cipher: XChaCha20Poly1305::new(&Key::from(*bytes)),
        }
    }

    /// The blind index of `value` (already normalised) in `column`: equal
    /// values give equal indexes under the same key version, nothing else
    /// can be learnt from it without the key.
    pub fn blind_index(&self, column: &str, value: &[u8]) -> [u8; 16] {
        let mac = hmac_sha256(&self.index_key[..], &[column.as_bytes(), b"\0", value]).into_bytes();
        let mut index = [0u8; 16];
        index.copy_from_slice(&mac[..16]);
        index
    }

    /// The key itself, to be wrapped again under another platform key.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    fn aad(&self, column: &str) -> Vec<u8> {
        let mut aad = b"tenancy field".to_vec();
        aad.extend_from_slice(self.tenant.as_bytes());
        aad.extend_from_slice(&self.version.to_be_bytes());
        aad.extend_from_slice(column.as_bytes());
        aad
    }

    /// `plain` sealed for `column` (`table.column`) of this tenant.
    pub fn seal(&self, column: &str, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = self.aad(column);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Corrupt(format!("{column} could not be sealed")))?;
        let mut out = Vec::with_capacity(HEADER + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// What `sealed` holds, if it was sealed for this tenant, column and key
    /// version; `row` names the value in the error.
    pub fn open(
        &self,
        column: &str,
        row: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let corrupt = || {
            KeyError::Corrupt(format!(
                "{column} of {row} (tenant {}) does not decrypt: corrupted, or not sealed for this tenant and column",
                self.tenant
            ))
        };
        if sealed_version(sealed) != Some(self.version) {
            return Err(corrupt());
        }
        let nonce: [u8; NONCE] = sealed[5..HEADER].try_into().map_err(|_| corrupt())?;
        let nonce = XNonce::from(nonce);
        let aad = self.aad(column);
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed[HEADER..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| corrupt())
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> hmac::digest::CtOutput<Hmac<Sha256>> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize()
}

/// One tenant's data keys as a request or a job needs them: opened once
/// each, by the version a sealed value names. `conn` must be in the
/// tenant's context (or the key custodian's).
pub struct TenantKeys<'k> {
    keyring: &'k Keyring,
    tenant: Uuid,
    keys: std::collections::HashMap<i32, DataKey>,
}

impl<'k> TenantKeys<'k> {
    pub fn new(keyring: &'k Keyring, tenant: Uuid) -> TenantKeys<'k> {
        TenantKeys {
            keyring,
            tenant,
            keys: std::collections::HashMap::new(),
        }
    }

    /// The key of `version`, read and opened on first use.
    pub async fn version(
        &mut self,
        conn: &mut sqlx::PgConnection,
        version: i32,
    ) -> AppResult<&DataKey> {
        if !self.keys.contains_key(&version) {
            let key = self.keyring.key_version(conn, self.tenant, version).await?;
            self.keys.insert(version, key);
        }
        self.keys.get(&version).ok_or_else(|| {
            AppError::Internal(format!("data key {version} of tenant {}", self.tenant))
        })
    }

    /// What `sealed` (of `column`, in the row `row` names) holds, as text.
    pub async fn open_text(
        &mut self,
        conn: &mut sqlx::PgConnection,
        column: &str,
        row: &str,
        sealed: &[u8],
    ) -> AppResult<String> {
        let tenant = self.tenant;
        let corrupt = || {
            AppError::from(KeyError::Corrupt(format!(
                "{column} of {row} (tenant {tenant}) does not decrypt: not a sealed value"
            )))
        };
        let version = sealed_version(sealed).ok_or_else(corrupt)?;
        let plain = self
            .version(conn, version)
            .await?
            .open(column, row, sealed)?;
        String::from_utf8(plain.to_vec()).map_err(|_| corrupt())
    }
}

impl Keyring {
    /// Every version of the tenant's data key not destroyed yet, newest
    /// first: a blind-index lookup matches under any of them while a
    /// rotation is resealing.
    pub async fn live_keys(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: Uuid,
    ) -> AppResult<Vec<DataKey>> {
        let stored: Vec<StoredKey> = sqlx::query_as(
            "SELECT version, kek_id, wrapped FROM app.tenant_keys
             WHERE tenant_id = $1 AND wrapped IS NOT NULL ORDER BY version DESC",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        stored
            .into_iter()
            .filter_map(|k| Some((k.version, k.kek_id, k.wrapped?)))
            .map(|(version, kek_id, wrapped)| {
                self.open(tenant, version, &kek_id, &wrapped)
                    .map_err(AppError::from)
            })
            .collect()
    }
}

/// Refuses a write that sealed under key `version` if the key was retired
/// and destroyed before the write took hold of it: call after the write,
/// whose foreign key to the key row now holds it (`FOR KEY SHARE`) until
/// commit, so a later destruction waits for it and then sees the value.
pub async fn ensure_live(conn: &mut sqlx::PgConnection, version: i32) -> AppResult<()> {
    let live: bool =
        sqlx::query_scalar("SELECT wrapped IS NOT NULL FROM app.tenant_keys WHERE version = $1")
            .bind(version)
            .fetch_one(&mut *conn)
            .await?;
    if live {
        Ok(())
    } else {
        Err(AppError::Conflict(
            "The tenant's data key was rotated at the same moment; send it again".to_owned(),
        ))
    }
}

/// The key version a sealed value names, if it is one.
pub fn sealed_version(sealed: &[u8]) -> Option<i32> {
    if sealed.len() <= HEADER || sealed[0] != FORMAT {
        return None;
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&sealed[1..5]);
    Some(i32::from_be_bytes(version))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> Result<PlatformKey, KeyError> {
        PlatformKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "test")
    }

    #[test]
    fn a_wrapped_key_opens_only_for_its_tenant_and_version() -> Result<(), KeyError> {
        let kek = platform()?;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (key, bytes) = DataKey::generate(a, 1);
        let wrapped = kek.wrap(a, 1, &bytes)?;
        let opened = kek.unwrap(a, 1, &wrapped)?;
        let sealed = key.seal("t.c", b"secret")?;
        assert_eq!(&opened.open("t.c", "r", &sealed)?[..], b"secret");
        assert!(kek.unwrap(b, 1, &wrapped).is_err());
        assert!(kek.unwrap(a, 2, &wrapped).is_err());
        Ok(())
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_tenant_and_column() -> Result<(), KeyError> {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (key_a, bytes) = DataKey::generate(a, 1);
        let sealed = key_a.seal("t.c", b"secret")?;
        assert!(key_a.open("t.d", "r", &sealed).is_err());
        // The same key bytes under another tenant's name do not open it.
        let key_b = DataKey::from_bytes(b, 1, &bytes);
        assert!(key_b.open("t.c", "r", &sealed).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let err = key_a.open("t.c", "row 7", &flipped).err();
        assert!(err.is_some_and(|e| e.to_string().contains("row 7")));
        Ok(())
    }

    #[test]
    fn blind_indexes_match_equal_values_only_under_the_same_key() {
        let tenant = Uuid::new_v4();
        let (key, bytes) = DataKey::generate(tenant, 1);
        let again = DataKey::from_bytes(tenant, 1, &bytes);
        let a = key.blind_index("t.c", b"ann@example.test");
        assert_eq!(a, again.blind_index("t.c", b"ann@example.test"));
        assert_ne!(a, key.blind_index("t.c", b"bob@example.test"));
        assert_ne!(a, key.blind_index("t.d", b"ann@example.test"));
        let (other, _) = DataKey::generate(tenant, 2);
        assert_ne!(a, other.blind_index("t.c", b"ann@example.test"));
        // Not the value's plain hash: the index key is secret.
        let plain = <sha2::Sha256 as sha2::Digest>::digest(b"ann@example.test");
        assert_ne!(a[..], plain[..16]);
    }

    #[test]
    fn platform_keys_are_32_bytes_of_base64() -> Result<(), KeyError> {
        assert!(PlatformKey::from_base64("c2hvcnQ=", "K").is_err());
        assert!(PlatformKey::from_base64("not base64!", "K").is_err());
        assert_eq!(platform()?.id().len(), 16);
        Ok(())
    }
}
