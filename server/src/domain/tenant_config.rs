//! The tenant configuration's schema: the keys a tenant may set, their types
//! and ranges, and the defaults that apply to keys it has not set.
//!
//! Validation names every offending key at once, so a client can fix a
//! request in one go. Nothing here touches storage.

use serde_json::{json, Map, Value};

/// The type and range of one key.
#[derive(Debug, Clone, Copy)]
enum Rule {
    Text { max: usize },
    OneOf(&'static [&'static str]),
    Bool,
    Integer { min: i64, max: i64 },
    EmailOrNull,
    Locale,
}

/// A key: its name, its rule, its default.
type Key = (&'static str, Rule, fn() -> Value);

/// Every key.
const KEYS: &[Key] = &[
    ("locale", Rule::Locale, || json!("en-US")),
    ("timezone", Rule::Text { max: 64 }, || json!("UTC")),
    (
        "date_format",
        Rule::OneOf(&["YYYY-MM-DD", "DD/MM/YYYY", "MM/DD/YYYY"]),
        || json!("YYYY-MM-DD"),
    ),
    ("allow_public_signup", Rule::Bool, || json!(false)),
    (
        "session_timeout_minutes",
        Rule::Integer {
            min: 5,
            max: 10_080,
        },
        || json!(60),
    ),
    (
        "audit_retention_days",
        // At least 30 days: an admin cannot erase the trail of what they did.
        Rule::Integer { min: 30, max: 3650 },
        || json!(365),
    ),
    ("support_email", Rule::EmailOrNull, || Value::Null),
];

/// Whether `key` is one of the schema's keys (the rest of a tenant's
/// configuration document is the tenant's own).
pub fn is_key(key: &str) -> bool {
    KEYS.iter().any(|(name, ..)| *name == key)
}

/// What the tenant has not set, and what every tenant starts with.
pub fn defaults() -> Map<String, Value> {
    KEYS.iter()
        .map(|(name, _, default)| ((*name).to_owned(), default()))
        .collect()
}

/// The configuration in force: the defaults overlaid with what is set.
pub fn effective(set: &Map<String, Value>) -> Map<String, Value> {
    let mut out = defaults();
    for (key, value) in set {
        if out.contains_key(key) {
            out.insert(key.clone(), value.clone());
        }
    }
    out
}

fn check(rule: Rule, value: &Value) -> Result<(), String> {
    match (rule, value) {
        (Rule::Text { max }, Value::String(s))
            if !s.trim().is_empty() && s.chars().count() <= max && !s.contains('\0') =>
        {
            Ok(())
        }
        (Rule::Text { max }, _) => Err(format!(
            "must be a non-empty string of at most {max} characters"
        )),
        (Rule::OneOf(options), Value::String(s)) if options.contains(&s.as_str()) => Ok(()),
        (Rule::OneOf(options), _) => Err(format!("must be one of {}", options.join(", "))),
        (Rule::Bool, Value::Bool(_)) => Ok(()),
        (Rule::Bool, _) => Err("must be true or false".to_owned()),
        (Rule::Integer { min, max }, Value::Number(n))
            if n.as_i64().is_some_and(|i| (min..=max).contains(&i)) =>
        {
            Ok(())
        }
        (Rule::Integer { min, max }, _) => Err(format!("must be an integer from {min} to {max}")),
        (Rule::EmailOrNull, Value::Null) => Ok(()),
        (Rule::EmailOrNull, Value::String(s)) if crate::domain::mail::valid_address(s) => Ok(()),
        (Rule::EmailOrNull, _) => Err("must be an email address or null".to_owned()),
        (Rule::Locale, Value::String(s)) if valid_locale(s) => Ok(()),
        (Rule::Locale, _) => Err("must be a locale such as en or en-US".to_owned()),
    }
}

fn valid_locale(s: &str) -> bool {
    let mut parts = s.split('-');
    let language = parts.next().unwrap_or_default();
    let region = parts.next();
    parts.next().is_none()
        && language.len() == 2
        && language.chars().all(|c| c.is_ascii_lowercase())
        && region.is_none_or(|r| r.len() == 2 && r.chars().all(|c| c.is_ascii_uppercase()))
}

/// Checks a partial update: every key known and well-typed. The error names
/// each offending key with what is wrong with it.
pub fn validate(update: &Map<String, Value>) -> Result<(), String> {
    let mut problems = Vec::new();
    for (key, value) in update {
        match KEYS.iter().find(|(name, ..)| name == key) {
            None => problems.push(format!("{key}: unknown key")),
            Some((_, rule, _)) => {
                if let Err(e) = check(*rule, value) {
                    problems.push(format!("{key}: {e}"));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.sort();
        Err(format!("invalid configuration: {}", problems.join("; ")))
    }
}

/// The keys whose values differ between two documents: `{key: {from, to}}`.
pub fn changes(before: &Map<String, Value>, after: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let (from, to) = (before.get(key), after.get(key));
        if from != to {
            out.insert(
                key.clone(),
                json!({"from": from.cloned().unwrap_or(Value::Null), "to": to.cloned().unwrap_or(Value::Null)}),
            );
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn defaults_fill_what_is_not_set() {
        let set = object(json!({"locale": "de-DE", "stray": 1}));
        let effective = effective(&set);
        assert_eq!(effective["locale"], "de-DE");
        assert_eq!(effective["audit_retention_days"], 365);
        assert!(!effective.contains_key("stray"));
    }

    #[test]
    fn every_bad_key_is_named() {
        let err = validate(&object(json!({
            "locale": "english", "audit_retention_days": 0, "colour": "red",
            "allow_public_signup": "yes", "support_email": "x"
        })))
        .unwrap_err();
        for key in [
            "locale",
            "audit_retention_days",
            "colour: unknown key",
            "allow_public_signup",
            "support_email",
        ] {
            assert!(err.contains(key), "{err} names {key}");
        }
        assert!(validate(&object(
            json!({"locale": "en", "timezone": "Europe/Paris", "support_email": null})
        ))
        .is_ok());
        assert!(validate(&object(json!({"session_timeout_minutes": 5.5}))).is_err());
    }

    #[test]
    fn changes_list_only_what_differs() {
        let before = object(json!({"locale": "en", "timezone": "UTC"}));
        let after = object(json!({"locale": "fr", "timezone": "UTC"}));
        assert_eq!(
            changes(&before, &after),
            json!({"locale": {"from": "en", "to": "fr"}})
        );
    }
}
