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
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Shortest HMAC secret accepted, in bytes (RFC 7518 3.2: at least the hash size).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Longest token accepted, in bytes. A context token carries a handful of
/// claims; anything longer is refused before it is parsed or cached.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Latest `exp`, `nbf` or `iat` accepted: 9999-12-31T23:59:59Z. A NumericDate
/// beyond it is not a date any issuer means (2^64-1 would never expire).
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

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
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token repeats the {0} \"{1}\"")]
    DuplicateMember(&'static str, String),
    #[error("claim \"{0}\" must be {1}")]
    ClaimType(String, &'static str),
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

/// A JSON value parsed strictly: an object that names a member twice is an
/// error at any depth (RFC 7519 section 4: a JWT with duplicate claim names
/// must be rejected, or only the last one used; we reject).
struct Strict(Value);

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate:{key}")));
            }
            out.insert(key, value);
        }
        Ok(Strict(Value::Object(out)))
    }
}

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

/// Decodes one base64url part of a compact JWT into a JSON object, strictly.
fn strict_part(part: &str, what: &'static str) -> Result<Map<String, Value>, TokenError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    match serde_json::from_slice::<Strict>(&bytes) {
        Ok(Strict(Value::Object(map))) => Ok(map),
        Ok(_) => Err(TokenError::Malformed),
        Err(e) => match e.to_string().strip_prefix("duplicate:") {
            Some(rest) => Err(TokenError::DuplicateMember(
                what,
                rest.split(" at line").next().unwrap_or(rest).to_owned(),
            )),
            None => Err(TokenError::Malformed),
        },
    }
}

/// A NumericDate claim (RFC 7519 2): a non-negative integer no later than
/// [`MAX_NUMERIC_DATE`]. Fractions are refused too: no issuer of context
/// tokens needs them, and they make "equal" ambiguous.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_NUMERIC_DATE => Ok(Some(n)),
            _ => Err(TokenError::ClaimType(
                name.to_owned(),
                "an integer NumericDate no later than year 9999",
            )),
        },
    }
}

/// The strict reading of RFC 7519 that the signature check alone does not
/// give: no member named twice in header or payload, registered claims of
/// their registered types.
fn check_registered_claims(token: &str) -> Result<(), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    strict_part(header, "header parameter")?;
    let claims = strict_part(payload, "claim")?;
    for name in ["exp", "nbf", "iat"] {
        numeric_date(&claims, name)?;
    }
    for name in ["iss", "sub", "jti"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(TokenError::ClaimType(name.to_owned(), "a string"));
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(TokenError::ClaimType(
                "aud".to_owned(),
                "a string or an array of strings",
            ))
        }
    }
    Ok(())
}

/// A fixed-size digest of a token, so that caches keyed by tokens hold 32
/// bytes per entry whatever the caller sends.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Verifies `token` against `keys` and `rules` and extracts the context.
///
/// Strict (RFC 7519 read narrowly): at most [`MAX_TOKEN_BYTES`]; header and
/// claims are JSON objects naming no member twice; `exp` (required), `nbf`
/// and `iat` are integers no later than year 9999; `iss`, `sub`, `jti` are
/// strings; `aud` a string or an array of strings.
pub fn verify(token: &str, keys: &Keyring, rules: &Rules) -> Result<TenantContext, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong);
    }
    // Before anything else: cheap, and refuses what the lenient parsers
    // would otherwise resolve silently (duplicates, out-of-range dates).
    check_registered_claims(token)?;
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

    fn raw_token(header: &str, payload: &str) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signing_input = format!("{}.{}", b64.encode(header), b64.encode(payload));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            b64.encode(mac.finalize().into_bytes())
        )
    }

    fn strict_refusal(payload: String) -> TokenError {
        let token = raw_token(r#"{"alg":"HS256","kid":"k1"}"#, &payload);
        verify(&token, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap_err()
    }

    #[test]
    fn an_exp_that_never_comes_is_refused() {
        let t = Uuid::new_v4();
        let err = strict_refusal(format!(
            r#"{{"tenant_id":"{t}","exp":18446744073709551615}}"#
        ));
        assert!(
            matches!(err, TokenError::ClaimType(ref c, _) if c == "exp"),
            "{err}"
        );
        let err = strict_refusal(format!(r#"{{"tenant_id":"{t}","exp":1e30}}"#));
        assert!(
            matches!(err, TokenError::ClaimType(ref c, _) if c == "exp"),
            "{err}"
        );
        let err = strict_refusal(format!(r#"{{"tenant_id":"{t}","exp":"{}"}}"#, now() + 60));
        assert!(
            matches!(err, TokenError::ClaimType(ref c, _) if c == "exp"),
            "{err}"
        );
    }

    #[test]
    fn an_issuer_that_is_not_a_string_is_refused() {
        let t = Uuid::new_v4();
        let exp = now() + 60;
        let err = strict_refusal(format!(
            r#"{{"tenant_id":"{t}","exp":{exp},"iss":["https://a","https://b"]}}"#
        ));
        assert_eq!(err, TokenError::ClaimType("iss".into(), "a string"));
        let err = strict_refusal(format!(r#"{{"tenant_id":"{t}","exp":{exp},"aud":[1]}}"#));
        assert!(
            matches!(err, TokenError::ClaimType(ref c, _) if c == "aud"),
            "{err}"
        );
    }

    #[test]
    fn a_claim_named_twice_is_refused_not_resolved_to_the_last() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let exp = now() + 60;
        let err = strict_refusal(format!(
            r#"{{"tenant_id":"{a}","exp":{exp},"tenant_id":"{b}"}}"#
        ));
        assert_eq!(
            err,
            TokenError::DuplicateMember("claim", "tenant_id".into())
        );
        let nested = strict_refusal(format!(
            r#"{{"tenant_id":"{a}","exp":{exp},"x":{{"k":1,"k":2}}}}"#
        ));
        assert_eq!(nested, TokenError::DuplicateMember("claim", "k".into()));
        let token = raw_token(
            r#"{"alg":"HS256","kid":"k1","kid":"k2"}"#,
            &format!(r#"{{"tenant_id":"{a}","exp":{exp}}}"#),
        );
        let err = verify(&token, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap_err();
        assert_eq!(
            err,
            TokenError::DuplicateMember("header parameter", "kid".into())
        );
        // The same claims without the repetition verify.
        let ok = raw_token(
            r#"{"alg":"HS256","kid":"k1"}"#,
            &format!(r#"{{"tenant_id":"{a}","exp":{exp}}}"#),
        );
        assert_eq!(
            verify(&ok, &ring("k1", "HS256", SECRET), &Rules::default())
                .unwrap()
                .tenant_id,
            a
        );
    }

    #[test]
    fn an_oversized_token_is_refused_before_parsing() {
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        let err = verify(&big, &ring("k1", "HS256", SECRET), &Rules::default()).unwrap_err();
        assert_eq!(err, TokenError::TooLong);
    }
}
