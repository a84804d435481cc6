//! Properties of the token codec, over generated input: verification never
//! panics on anything a client can send, what is signed verifies to the
//! same context, and any change to a signed token's header or claims is
//! refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::json;
use tenancy_token::{now, sign, verify, Keyring, Rules, VerifyingKey};
use uuid::Uuid;

const SECRET: &str = "0123456789abcdef0123456789abcdef-property";

fn keys() -> Keyring {
    let mut keys = Keyring::new();
    keys.insert("k1", VerifyingKey::new("HS256", SECRET).unwrap());
    keys
}

const BASE64URL: &str = "[A-Za-z0-9_-]{0,120}";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_is_refused_or_verified_without_panic(token in "\\PC{0,600}") {
        let _ = verify(&token, &keys(), &Rules::default());
    }

    #[test]
    fn any_three_base64url_parts_are_refused(h in BASE64URL, c in BASE64URL, s in BASE64URL) {
        let token = format!("{h}.{c}.{s}");
        prop_assert!(verify(&token, &keys(), &Rules::default()).is_err());
    }

    #[test]
    fn any_header_and_claims_with_a_made_up_signature_are_refused(
        kid in prop::option::of("[a-z0-9]{0,8}"),
        alg in prop::sample::select(vec!["HS256", "HS512", "none", "RS256", "EdDSA", ""]),
        exp in any::<i64>(),
        tenant in "\\PC{0,40}",
    ) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
        let claims = json!({"tenant_id": tenant, "exp": exp, "sub": "u"});
        let token = format!(
            "{}.{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string()),
            b64.encode(b"not a signature"),
        );
        prop_assert!(verify(&token, &keys(), &Rules::default()).is_err());
    }

    #[test]
    fn what_is_signed_verifies_to_the_same_context(
        tenant in any::<u128>(),
        user in "\\PC{1,60}",
        ttl in 60u64..86_400,
    ) {
        let tenant = Uuid::from_u128(tenant);
        let exp = now() + ttl;
        let token = sign(&json!({"tenant_id": tenant, "sub": user, "exp": exp}), "k1", "HS256", SECRET).unwrap();
        let context = verify(&token, &keys(), &Rules::default()).unwrap();
        prop_assert_eq!(context.tenant_id, tenant);
        prop_assert_eq!(context.user_id.as_deref(), Some(user.as_str()));
        prop_assert_eq!(context.expires_at, exp);
    }

    #[test]
    fn a_changed_header_or_claims_character_is_refused(
        tenant in any::<u128>(),
        position in any::<prop::sample::Index>(),
        replacement in prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".chars().collect::<Vec<_>>()
        ),
    ) {
        let token = sign(
            &json!({"tenant_id": Uuid::from_u128(tenant), "sub": "u", "exp": now() + 600}),
            "k1",
            "HS256",
            SECRET,
        )
        .unwrap();
        let signed_part = token.rfind('.').unwrap();
        let at = position.index(signed_part);
        let original = token.as_bytes()[at] as char;
        prop_assume!(original != '.' && original != replacement);
        let mut tampered = token.clone();
        tampered.replace_range(at..at + 1, &replacement.to_string());
        prop_assert!(verify(&tampered, &keys(), &Rules::default()).is_err());
    }
}
