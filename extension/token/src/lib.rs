//! The signed tenant context: the one codec for the JWT that carries a tenant
//! into PostgreSQL.
//!
//! The service and the tests sign with [`sign`]; the `tenancy` extension
//! verifies with [`verify`] inside the database. Keeping both sides here means
//! the claim names, the algorithm rules and the error texts cannot drift.
//!
//! This module must never accept a token whose algorithm differs from the
//! algorithm registered for its key (algorithm confusion), a token with
//! `alg: none`, or a token without an expiry.

use std::collections::HashMap;
use std::str::FromStr;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Shortest HMAC secret accepted, in bytes (RFC 7518 3.2: at least the hash size).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Everything that can be wrong with a key or a token. The `Display` text is
/// what a database client sees after "invalid tenant token: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unsupported algorithm \"{0}\" (supported: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)")]
    UnsupportedAlgorithm(String),
    #[error("invalid key for {alg}: {reason}")]
    BadKey { alg: String, reason: String },
    #[error("token is malformed")]
    Malformed,
    #[error("token header has no kid and more than one key is configured")]
    MissingKid,
    #[error("no active key with kid \"{0}\"")]
    UnknownKey(String),
    #[error("token algorithm does not match the algorithm of its key")]
    AlgorithmMismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token has no \"{0}\" claim")]
    MissingClaim(String),
    #[error("claim \"{0}\" is not a valid uuid")]
    BadClaim(String),
    #[error("could not sign token: {0}")]
    Signing(String),
}

fn parse_algorithm(alg: &str) -> Result<Algorithm, TokenError> {
    Algorithm::from_str(alg).map_err(|_| TokenError::UnsupportedAlgorithm(alg.to_owned()))
}

fn bad_key(alg: &str, reason: impl Into<String>) -> TokenError {
    TokenError::BadKey {
        alg: alg.to_owned(),
        reason: reason.into(),
    }
}

/// A key that verifies tokens of exactly one algorithm.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    key: DecodingKey,
}

impl VerifyingKey {
    /// `material` is the shared secret for HS*, a PEM public key otherwise.
    pub fn new(alg: &str, material: &str) -> Result<Self, TokenError> {
        let algorithm = parse_algorithm(alg)?;
        let key = match algorithm.family() {
            AlgorithmFamily::Hmac => {
                if material.len() < MIN_HMAC_SECRET_BYTES {
                    return Err(bad_key(
                        alg,
                        format!("secret must be at least {MIN_HMAC_SECRET_BYTES} bytes"),
                    ));
                }
                DecodingKey::from_secret(material.as_bytes())
            }
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(material.as_bytes())
                .map_err(|e| bad_key(alg, format!("not an RSA public key in PEM form ({e})")))?,
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(material.as_bytes())
                .map_err(|e| bad_key(alg, format!("not an EC public key in PEM form ({e})")))?,
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(material.as_bytes()).map_err(|e| {
                bad_key(alg, format!("not an Ed25519 public key in PEM form ({e})"))
            })?,
        };
        Ok(Self {
            alg: algorithm,
            key,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// The active verification keys, by `kid`.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: HashMap<String, VerifyingKey>,
}

impl Keyring {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, kid: impl Into<String>, key: VerifyingKey) {
        self.keys.insert(kid.into(), key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn select(&self, kid: Option<&str>) -> Result<&VerifyingKey, TokenError> {
        match kid {
            Some(kid) => self
                .keys
                .get(kid)
                .ok_or_else(|| TokenError::UnknownKey(kid.to_owned())),
            None if self.keys.len() == 1 => self.keys.values().next().ok_or(TokenError::MissingKid),
            None => Err(TokenError::MissingKid),
        }
    }
}

/// What a token must satisfy beyond its signature, and where the context
/// lives inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Required `aud` (when set, a token without it is refused).
    pub audience: Option<String>,
    /// Required `iss` (when set, a token without it is refused).
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Claim holding the tenant id (a uuid).
    pub tenant_claim: String,
    /// Claim holding the user id.
    pub user_claim: String,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            audience: None,
            issuer: None,
            leeway_secs: 5,
            tenant_claim: "tenant_id".to_owned(),
            user_claim: "sub".to_owned(),
        }
    }
}

/// A verified tenant context.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantContext {
    pub tenant_id: Uuid,
    pub user_id: Option<String>,
    /// Expiry (seconds since the epoch); always present in a verified token.
    pub expires_at: u64,
    pub claims: Map<String, Value>,
}

impl TenantContext {
    /// A claim as text: strings as they are, anything else as JSON.
    pub fn claim_text(&self, name: &str) -> Option<String> {
        match self.claims.get(name)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    /// Whether the context has expired at `now` (seconds since the epoch).
    pub fn expired_at(&self, now: u64, leeway_secs: u64) -> bool {
        self.expires_at.saturating_add(leeway_secs) < now
    }
}

/// Verifies `token` against `keys` and `rules` and extracts the context.
pub fn verify(token: &str, keys: &Keyring, rules: &Rules) -> Result<TenantContext, TokenError> {
    // decode_header refuses `alg: none` (no such Algorithm), which is what we want.
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    let key = keys.select(header.kid.as_deref())?;
    if header.alg != key.alg {
        return Err(TokenError::AlgorithmMismatch);
    }

    let mut validation = Validation::new(key.alg);
    validation.leeway = rules.leeway_secs;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    match &rules.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &rules.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);

    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm => TokenError::AlgorithmMismatch,
                ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
                _ => TokenError::Malformed,
            }
        })?;
    let claims = data.claims;

    let tenant_id = match claims.get(&rules.tenant_claim) {
        None | Some(Value::Null) => {
            return Err(TokenError::MissingClaim(rules.tenant_claim.clone()))
        }
        Some(Value::String(s)) => {
            Uuid::parse_str(s).map_err(|_| TokenError::BadClaim(rules.tenant_claim.clone()))?
        }
        Some(_) => return Err(TokenError::BadClaim(rules.tenant_claim.clone())),
    };
    let user_id = match claims.get(&rules.user_claim) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| TokenError::MissingClaim("exp".to_owned()))?;

    Ok(TenantContext {
        tenant_id,
        user_id,
        expires_at,
        claims,
    })
}

/// Signs `claims` with `material` (the secret for HS*, a PEM private key
/// otherwise) under `kid`.
pub fn sign<C: Serialize>(
    claims: &C,
    kid: &str,
    alg: &str,
    material: &str,
) -> Result<String, TokenError> {
    let algorithm = parse_algorithm(alg)?;
    let key = match algorithm.family() {
        AlgorithmFamily::Hmac => EncodingKey::from_secret(material.as_bytes()),
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(material.as_bytes())
            .map_err(|e| bad_key(alg, e.to_string()))?,
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(material.as_bytes())
            .map_err(|e| bad_key(alg, e.to_string()))?,
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(material.as_bytes())
            .map_err(|e| bad_key(alg, e.to_string()))?,
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| TokenError::Signing(e.to_string()))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
    const OTHER: &str = "fedcba9876543210fedcba9876543210-test";
    // Ed25519 test key pair (RFC 8037 A.1).
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";

    fn ring(kid: &str, alg: &str, material: &str) -> Keyring {
        let mut keys = Keyring::new();
        keys.insert(kid, VerifyingKey::new(alg, material).unwrap());
        keys
    }

    fn claims(tenant: Uuid, exp_offset: i64) -> Value {
        let exp = (now() as i64 + exp_offset) as u64;
        json!({"tenant_id": tenant.to_string(), "sub": "user-1", "exp": exp, "role": "member"})
    }

    #[test]
    fn hs256_round_trip_gives_the_context() {
        let tenant = Uuid::new_v4();
        let token = sign(&claims(tenant, 300), "k1", "HS256", SECRET).unwrap();
        let ctx = verify(&token, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap();
        assert_eq!(ctx.tenant_id, tenant);
        assert_eq!(ctx.user_id.as_deref(), Some("user-1"));
        assert_eq!(ctx.claim_text("role").as_deref(), Some("member"));
        assert_eq!(ctx.claim_text("missing"), None);
    }

    #[test]
    fn eddsa_round_trip_gives_the_context() {
        let tenant = Uuid::new_v4();
        let token = sign(&claims(tenant, 300), "ed", "EdDSA", ED_PRIVATE).unwrap();
        let ctx = verify(&token, &ring("ed", "EdDSA", ED_PUBLIC), &Rules::default()).unwrap();
        assert_eq!(ctx.tenant_id, tenant);
    }

    #[test]
    fn wrong_secret_is_refused() {
        let token = sign(&claims(Uuid::new_v4(), 300), "k1", "HS256", OTHER).unwrap();
        let err = verify(&token, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap_err();
        assert_eq!(err, TokenError::BadSignature);
    }

    #[test]
    fn expired_token_is_refused() {
        let token = sign(&claims(Uuid::new_v4(), -600), "k1", "HS256", SECRET).unwrap();
        let err = verify(&token, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap_err();
        assert_eq!(err, TokenError::Expired);
    }

    #[test]
    fn token_without_exp_is_refused() {
        let body = json!({"tenant_id": Uuid::new_v4().to_string()});
        let token = sign(&body, "k1", "HS256", SECRET).unwrap();
        let err = verify(&token, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap_err();
        assert_eq!(err, TokenError::MissingClaim("exp".into()));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let body = b64.encode(claims(Uuid::new_v4(), 300).to_string());
        let token = format!("{header}.{body}.");
        let err = verify(&token, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap_err();
        assert_eq!(err, TokenError::Malformed);
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // An attacker signs HS256 with the *public* key text as the secret.
        let token = sign(&claims(Uuid::new_v4(), 300), "ed", "HS256", ED_PUBLIC).unwrap();
        let err = verify(&token, &ring("ed", "EdDSA", ED_PUBLIC), &Rules::default()).unwrap_err();
        assert_eq!(err, TokenError::AlgorithmMismatch);
    }

    #[test]
    fn tampered_payload_is_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = sign(&claims(Uuid::new_v4(), 300), "k1", "HS256", SECRET).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64.encode(claims(Uuid::new_v4(), 300).to_string());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        let err = verify(&tampered, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap_err();
        assert_eq!(err, TokenError::BadSignature);
    }

    #[test]
    fn unknown_kid_is_refused() {
        let token = sign(&claims(Uuid::new_v4(), 300), "retired", "HS256", SECRET).unwrap();
        let err = verify(&token, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap_err();
        assert_eq!(err, TokenError::UnknownKey("retired".into()));
    }

    #[test]
    fn audience_and_issuer_are_enforced_when_configured() {
        let rules = Rules {
            audience: Some("tenancy".into()),
            issuer: Some("https://auth.example".into()),
            ..Rules::default()
        };
        let keys = ring("k1", "HS256", SECRET);
        let tenant = Uuid::new_v4();
        let exp = now() + 300;
        let good = json!({"tenant_id": tenant, "exp": exp, "aud": "tenancy", "iss": "https://auth.example"});
        assert!(verify(&sign(&good, "k1", "HS256", SECRET).unwrap(), &keys, &rules).is_ok());
        let wrong_aud =
            json!({"tenant_id": tenant, "exp": exp, "aud": "other", "iss": "https://auth.example"});
        assert_eq!(
            verify(
                &sign(&wrong_aud, "k1", "HS256", SECRET).unwrap(),
                &keys,
                &rules
            )
            .unwrap_err(),
            TokenError::WrongAudience
        );
        let no_iss = json!({"tenant_id": tenant, "exp": exp, "aud": "tenancy"});
        assert_eq!(
            verify(
                &sign(&no_iss, "k1", "HS256", SECRET).unwrap(),
                &keys,
                &rules
            )
            .unwrap_err(),
            TokenError::MissingClaim("iss".into())
        );
    }

    #[test]
    fn claim_names_are_configurable() {
        let rules = Rules {
            tenant_claim: "org".into(),
            user_claim: "uid".into(),
            ..Rules::default()
        };
        let tenant = Uuid::new_v4();
        let body = json!({"org": tenant, "uid": "u-9", "exp": now() + 60});
        let ctx = verify(
            &sign(&body, "k1", "HS256", SECRET).unwrap(),
            &ring("k1", "HS256", SECRET),
            &rules,
        )
        .unwrap();
        assert_eq!(ctx.tenant_id, tenant);
        assert_eq!(ctx.user_id.as_deref(), Some("u-9"));
    }

    #[test]
    fn tenant_claim_must_be_a_uuid() {
        let body = json!({"tenant_id": "acme", "exp": now() + 60});
        let token = sign(&body, "k1", "HS256", SECRET).unwrap();
        let err = verify(&token, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap_err();
        assert_eq!(err, TokenError::BadClaim("tenant_id".into()));
    }

    #[test]
    fn keys_are_validated() {
        assert!(matches!(
            VerifyingKey::new("HS256", "short"),
            Err(TokenError::BadKey { .. })
        ));
        assert!(matches!(
            VerifyingKey::new("EdDSA", "not pem"),
            Err(TokenError::BadKey { .. })
        ));
        assert!(matches!(
            VerifyingKey::new("none", SECRET),
            Err(TokenError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn a_single_key_serves_tokens_without_kid_but_two_keys_do_not() {
        let tenant = Uuid::new_v4();
        let header = Header::new(Algorithm::HS256);
        let token = jsonwebtoken::encode(
            &header,
            &claims(tenant, 60),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let mut keys = ring("k1", "HS256", SECRET);
        assert_eq!(
            verify(&token, &keys, &Rules::default()).unwrap().tenant_id,
            tenant
        );
        keys.insert("k2", VerifyingKey::new("HS256", OTHER).unwrap());
        assert_eq!(
            verify(&token, &keys, &Rules::default()).unwrap_err(),
            TokenError::MissingKid
        );
    }
}
