//! A tenant's own providers (seed 002, REQ-MT-B011): payment gateway, email
//! (an SMTP server, or Postmark's or SendGrid's API), SMS and analytics. Each configuration is validated, then sealed
//! with the tenant's data key (`domain::keyring`); the API shows only a
//! masked copy. A kind the tenant has not configured falls back to the
//! platform's (for email: the service's own mail settings).

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::domain::keyring::{DataKey, KeyError};
use crate::domain::mail_api::{ApiMailSettings, ApiMailer};
use crate::error::{AppError, AppResult};

/// The kinds of integration, as the API names them.
pub const KINDS: [&str; 4] = ["payment", "email", "sms", "analytics"];

/// The column name sealed values of `kind` are bound to.
pub fn sealed_column(kind: &str) -> String {
    format!("app.tenant_integrations.{kind}")
}

/// A tenant's email provider: its SMTP server, or an API.
#[derive(Clone)]
pub enum EmailProvider {
    Smtp(EmailSettings),
    Api(ApiMailSettings),
}

/// A tenant's SMTP server for its mail.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// `smtp`.
    pub provider: String,
    pub host: String,
    pub port: u16,
    /// `starttls` (default), `tls` (implicit, usually port 465) or `none`.
    #[serde(default = "starttls")]
    pub security: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, such as `Acme <no-reply@acme.example>`.
    pub from: String,
}

fn starttls() -> String {
    "starttls".to_owned()
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    /// `stripe`, `adyen`, `braintree` or `other`.
    pub provider: String,
    pub secret_key: String,
    #[serde(default)]
    pub publishable_key: Option<String>,
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    /// `twilio`, `vonage`, `messagebird` or `other`.
    pub provider: String,
    pub account_id: String,
    pub auth_token: String,
    /// The sending number, in E.164 form (`+15551234567`).
    pub from: String,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsSettings {
    /// `google`, `plausible`, `matomo` or `other`.
    pub provider: String,
    /// The site or measurement id; public (it is in every page), shown whole.
    pub tracking_id: String,
}

/// A validated configuration: what is sealed, and what the API shows.
pub struct Validated {
    /// The settings as sealed (zeroed when dropped).
    pub plain: zeroize::Zeroizing<Vec<u8>>,
    pub masked: Value,
    /// For email: the provider, to be checked over the network.
    pub email: Option<EmailProvider>,
}

fn invalid(message: impl Into<String>) -> AppError {
    AppError::Validation(message.into())
}

/// A value that must be short, printable and without spaces.
fn token(name: &str, value: &str) -> AppResult<()> {
    if value.is_empty() || value.len() > 512 || value.chars().any(|c| c.is_control() || c == ' ') {
        return Err(invalid(format!(
            "{name} must be 1 to 512 printable characters without spaces"
        )));
    }
    Ok(())
}

fn one_of(name: &str, value: &str, allowed: &[&str]) -> AppResult<()> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(invalid(format!(
        "{name} must be one of: {}",
        allowed.join(", ")
    )))
}

/// A secret as the API shows it: its last four characters when it is long
/// enough for them to reveal nothing useful.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() >= 16 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("****{tail}")
    } else {
        "****".to_owned()
    }
}

/// Checks `body` as a configuration of `kind`; the provider of an email
/// configuration is checked by [`check_email`] separately (it takes network).
pub fn validate(kind: &str, body: Value) -> AppResult<Validated> {
    // Never the submitted values in the answer: a secret sent in the wrong
    // field would come back in the error.
    let parse_error = |e: serde_json::Error| {
        let message = e.to_string();
        let message =
            if message.starts_with("unknown field") || message.starts_with("missing field") {
                message
                    .split(", expected")
                    .next()
                    .unwrap_or("invalid settings")
                    .to_owned()
            } else {
                "a field has the wrong type or value, or the settings are not an object".to_owned()
            };
        invalid(format!("{kind} integration: {message}"))
    };
    match kind {
        "email"
            if body
                .get("provider")
                .and_then(Value::as_str)
                .is_some_and(|p| p != "smtp") =>
        {
            let s: ApiMailSettings = serde_json::from_value(body).map_err(parse_error)?;
            s.validate()?;
            Ok(Validated {
                plain: zeroize::Zeroizing::new(
                    serde_json::to_vec(&s).map_err(|e| AppError::Internal(e.to_string()))?,
                ),
                masked: s.masked(),
                email: Some(EmailProvider::Api(s)),
            })
        }
        "email" => {
            let s: EmailSettings = serde_json::from_value(body).map_err(parse_error)?;
            one_of("security", &s.security, &["starttls", "tls", "none"])?;
            if !crate::domain::is_host_name(&s.host.to_ascii_lowercase())
                && s.host.parse::<IpAddr>().is_err()
            {
                return Err(invalid("host must be a host name or an IP address"));
            }
            if s.port == 0 {
                return Err(invalid("port must be between 1 and 65535"));
            }
            if let Some(user) = &s.username {
                token("username", user)?;
            }
            if let Some(password) = &s.password {
                if password.is_empty() || password.len() > 512 {
                    return Err(invalid("password must be 1 to 512 characters"));
                }
            }
            if s.password.is_some() && s.username.is_none() {
                return Err(invalid("a password needs a username"));
            }
            if s.from.len() > 320 || s.host.len() > 253 {
                return Err(invalid(
                    "from and host must be at most 320 and 253 characters",
                ));
            }
            s.from.parse::<lettre::message::Mailbox>().map_err(|_| {
                invalid("from must be a mail address, such as Acme <no-reply@acme.example>")
            })?;
            let masked = json!({
                "provider": s.provider, "host": s.host, "port": s.port, "security": s.security,
                "username": s.username, "password": s.password.as_deref().map(mask), "from": s.from,
            });
            Ok(Validated {
                plain: zeroize::Zeroizing::new(
                    serde_json::to_vec(&s).map_err(|e| AppError::Internal(e.to_string()))?,
                ),
                masked,
                email: Some(EmailProvider::Smtp(s)),
            })
        }
        "payment" => {
            let s: PaymentSettings = serde_json::from_value(body).map_err(parse_error)?;
            one_of(
                "provider",
                &s.provider,
                &["stripe", "adyen", "braintree", "other"],
            )?;
            token("secret_key", &s.secret_key)?;
            if s.provider == "stripe"
                && !["sk_live_", "sk_test_", "rk_live_", "rk_test_"]
                    .iter()
                    .any(|p| s.secret_key.starts_with(p))
            {
                return Err(invalid(
                    "a Stripe secret_key starts with sk_ or rk_ (live or test)",
                ));
            }
            for (name, value) in [
                ("publishable_key", &s.publishable_key),
                ("webhook_secret", &s.webhook_secret),
            ] {
                if let Some(value) = value {
                    token(name, value)?;
                }
            }
            let masked = json!({
                "provider": s.provider, "secret_key": mask(&s.secret_key),
                "publishable_key": s.publishable_key,
                "webhook_secret": s.webhook_secret.as_deref().map(mask),
            });
            Ok(Validated {
                plain: zeroize::Zeroizing::new(
                    serde_json::to_vec(&s).map_err(|e| AppError::Internal(e.to_string()))?,
                ),
                masked,
                email: None,
            })
        }
        "sms" => {
            let s: SmsSettings = serde_json::from_value(body).map_err(parse_error)?;
            one_of(
                "provider",
                &s.provider,
                &["twilio", "vonage", "messagebird", "other"],
            )?;
            token("account_id", &s.account_id)?;
            token("auth_token", &s.auth_token)?;
            let digits = s.from.strip_prefix('+').unwrap_or("");
            if !(8..=15).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(invalid(
                    "from must be a phone number in E.164 form, such as +15551234567",
                ));
            }
            let masked = json!({
                "provider": s.provider, "account_id": s.account_id,
                "auth_token": mask(&s.auth_token), "from": s.from,
            });
            Ok(Validated {
                plain: zeroize::Zeroizing::new(
                    serde_json::to_vec(&s).map_err(|e| AppError::Internal(e.to_string()))?,
                ),
                masked,
                email: None,
            })
        }
        "analytics" => {
            let s: AnalyticsSettings = serde_json::from_value(body).map_err(parse_error)?;
            one_of(
                "provider",
                &s.provider,
                &["google", "plausible", "matomo", "other"],
            )?;
            if s.tracking_id.len() > 100
                || s.tracking_id.is_empty()
                || !s
                    .tracking_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(
                    "tracking_id must be 1 to 100 letters, digits, '-', '_' or '.'",
                ));
            }
            let masked = json!({"provider": s.provider, "tracking_id": s.tracking_id});
            Ok(Validated {
                plain: zeroize::Zeroizing::new(
                    serde_json::to_vec(&s).map_err(|e| AppError::Internal(e.to_string()))?,
                ),
                masked,
                email: None,
            })
        }
        _ => Err(AppError::NotFound("Integration")),
    }
}

/// Ports a tenant's SMTP server may use unless private servers are allowed.
const SMTP_PORTS: [u16; 4] = [25, 465, 587, 2525];

/// Whether an address is one the service's own network might hold, or
/// reaches such one by translation: loopback, private, shared, link-local,
/// reserved, multicast, and the IPv6 forms that embed an IPv4 address
/// (mapped, compatible, NAT64, 6to4).
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                internal(IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                )))
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || v6.to_ipv4_mapped().is_some_and(|v4| internal(IpAddr::V4(v4)))
                // IPv4-compatible (::a.b.c.d)
                || (s[..6] == [0; 6])
                // NAT64 (64:ff9b::/96, 64:ff9b:1::/48): any embedded address
                || (s[0] == 0x64 && s[1] == 0xff9b)
                // 6to4 (2002::/16): the IPv4 address after the prefix
                || (s[0] == 0x2002 && embedded(s[1], s[2]))
        }
    }
}

/// Where to connect for a tenant's SMTP server: refuses an internal
/// address, or an unusual port, unless the operator allows private
/// servers (`TENANCY_TENANT_SMTP_PRIVATE`). The name is resolved once here
/// and the connection made to the address checked (`Some`), so a name that
/// resolves elsewhere a moment later (DNS rebinding) gains nothing; TLS
/// still checks the certificate against the name. Checked when saved and
/// before each delivery.
pub async fn reachable(s: &EmailSettings, allow_private: bool) -> Result<Option<IpAddr>, String> {
    if allow_private {
        return Ok(None);
    }
    if !SMTP_PORTS.contains(&s.port) {
        return Err(format!(
            "port must be one of {SMTP_PORTS:?} (mail submission and relay ports)"
        ));
    }
    public_address(&s.host, s.port).await.map(Some)
}

/// The address to connect to for `host`, resolved once: refused when the
/// name does not resolve or any of its addresses is internal.
pub async fn public_address(host: &str, port: u16) -> Result<IpAddr, String> {
    let addresses: Vec<IpAddr> = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host, port)),
    )
    .await
    {
        Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
        _ => return Err(format!("{host} does not resolve")),
    };
    match addresses.first() {
        Some(first) if !addresses.iter().any(|ip| internal(*ip)) => Ok(*first),
        _ => Err(format!(
            "{host} resolves to an address inside the service's network"
        )),
    }
}

/// The transport for a tenant's SMTP server, to `address` when given (the
/// one [`reachable`] checked), else to the host name.
pub fn smtp_transport(
    s: &EmailSettings,
    address: Option<IpAddr>,
) -> Result<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>, lettre::transport::smtp::Error> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    type Transport = lettre::AsyncSmtpTransport<lettre::Tokio1Executor>;
    let server = address.map_or_else(|| s.host.clone(), |ip| ip.to_string());
    let tls = match s.security.as_str() {
        "none" => Tls::None,
        "tls" => Tls::Wrapper(TlsParameters::new(s.host.clone())?),
        _ => Tls::Required(TlsParameters::new(s.host.clone())?),
    };
    let mut builder = Transport::builder_dangerous(server)
        .port(s.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(10)));
    if let (Some(user), Some(password)) = (&s.username, &s.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

/// Connects to the tenant's SMTP server as the mail path would (TLS and
/// login included); the refusal says what failed, without internals.
pub async fn check_smtp(s: &EmailSettings, allow_private: bool) -> AppResult<()> {
    let address = reachable(s, allow_private)
        .await
        .map_err(|why| invalid(format!("SMTP server refused: {why}")))?;
    let target = format!("{}:{}", s.host, s.port);
    let transport = smtp_transport(s, address).map_err(|_| {
        invalid(format!(
            "SMTP server {target}: TLS cannot be set up for this host"
        ))
    })?;
    match transport.test_connection().await {
        Ok(true) => Ok(()),
        Ok(false) => Err(invalid(format!(
            "SMTP server {target} did not answer as an SMTP server"
        ))),
        Err(e) => {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_tls() {
                "TLS failed"
            } else if e.is_permanent() {
                "refused the login or the session"
            } else if e.is_client() {
                "offers no login this service can use"
            } else {
                "could not be reached"
            };
            Err(invalid(format!("SMTP server {target} {what}")))
        }
    }
}

/// Checks a tenant's email provider over the network, as the mail path
/// would use it; the refusal says what failed, without internals.
pub async fn check_email(provider: &EmailProvider, allow_private: bool) -> AppResult<()> {
    match provider {
        EmailProvider::Smtp(s) => check_smtp(s, allow_private).await,
        EmailProvider::Api(s) => {
            let mailer = ApiMailer::new(s, allow_private)
                .await
                .map_err(|why| invalid(format!("{} API refused: {why}", s.provider)))?;
            mailer.check().await.map_err(invalid)
        }
    }
}

/// The platform's own providers: the default of every tenant that has not
/// set its own (email's is the service's own sender, `TENANCY_SMTP_URL`).
#[derive(Default)]
pub struct PlatformDefaults {
    defaults: std::collections::HashMap<&'static str, Validated>,
}

impl PlatformDefaults {
    /// The defaults the configuration gives, validated as a tenant's would
    /// be; the error says in one line which is wrong and why.
    pub fn from_config(config: &crate::config::Config) -> Result<PlatformDefaults, String> {
        const NAME: &str = "TENANCY_PLATFORM_INTEGRATIONS";
        let text = match (
            config
                .platform_integrations
                .as_deref()
                .filter(|t| !t.trim().is_empty()),
            config.platform_integrations_file.as_deref(),
        ) {
            (Some(_), Some(_)) => return Err(format!("set {NAME} or {NAME}_FILE, not both")),
            (Some(text), None) => zeroize::Zeroizing::new(text.to_owned()),
            (None, Some(path)) => zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("{NAME}_FILE {}: {e}", path.display()))?,
            ),
            (None, None) => return Ok(PlatformDefaults::default()),
        };
        let parsed: serde_json::Map<String, Value> = serde_json::from_str(&text)
            .map_err(|_| format!("{NAME} must be a JSON object of kinds"))?;
        let mut defaults = std::collections::HashMap::new();
        for (kind, settings) in parsed {
            let known = ["payment", "sms", "analytics"]
                .into_iter()
                .find(|k| *k == kind)
                .ok_or_else(|| {
                    format!(
                        "{NAME}: {kind} is not one of payment, sms, analytics (the platform's email is TENANCY_SMTP_URL)"
                    )
                })?;
            let validated = validate(known, settings).map_err(|e| match e {
                AppError::Validation(why) => format!("{NAME}: {why}"),
                other => format!("{NAME}: {kind}: {other}"),
            })?;
            defaults.insert(known, validated);
        }
        Ok(PlatformDefaults { defaults })
    }

    /// What a tenant's admin sees of the platform's default for `kind`:
    /// the provider only (the platform's credentials are not the tenant's,
    /// not even masked).
    pub fn shown(&self, kind: &str) -> Option<Value> {
        self.defaults
            .get(kind)
            .map(|v| json!({ "provider": v.masked.get("provider") }))
    }

    /// The platform's settings of `kind`, as a tenant's would be sealed.
    pub fn settings(&self, kind: &str) -> Option<&[u8]> {
        self.defaults.get(kind).map(|v| &v.plain[..])
    }
}

/// Where the settings in effect for a tenant come from.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    Tenant,
    Platform,
}

/// The settings of `kind` in effect for the tenant of `conn`'s context (a
/// transaction in it): its own, opened, else the platform's default, else
/// none. This is what code that charges, texts or tracks for a tenant asks.
pub async fn effective(
    keyring: &crate::domain::keyring::Keyring,
    platform: &PlatformDefaults,
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    kind: &str,
) -> AppResult<Option<(Source, zeroize::Zeroizing<Vec<u8>>)>> {
    let own: Option<(i32, Vec<u8>)> =
        sqlx::query_as("SELECT key_version, sealed FROM app.tenant_integrations WHERE kind = $1")
            .bind(kind)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((version, sealed)) = own {
        let key = keyring.key_version(conn, tenant, version).await?;
        let plain = key.open(
            &sealed_column(kind),
            &format!("integration {kind} of tenant {tenant}"),
            &sealed,
        )?;
        return Ok(Some((Source::Tenant, plain)));
    }
    Ok(platform
        .settings(kind)
        .map(|p| (Source::Platform, zeroize::Zeroizing::new(p.to_vec()))))
}

/// Seals a validated configuration of `kind` for the tenant of `key`.
pub fn seal(key: &DataKey, kind: &str, plain: &[u8]) -> AppResult<Vec<u8>> {
    Ok(key.seal(&sealed_column(kind), plain)?)
}

/// Opens a tenant's sealed email configuration; the error names the row.
pub fn open_email(key: &DataKey, tenant: Uuid, sealed: &[u8]) -> Result<EmailProvider, KeyError> {
    let plain = key.open(&sealed_column("email"), &format!("tenant {tenant}"), sealed)?;
    let corrupt = || {
        KeyError::Corrupt(format!(
            "the email integration of tenant {tenant} is not a valid configuration"
        ))
    };
    let value: Value = serde_json::from_slice(&plain).map_err(|_| corrupt())?;
    if value.get("provider").and_then(Value::as_str) == Some("smtp") {
        serde_json::from_value(value)
            .map(EmailProvider::Smtp)
            .map_err(|_| corrupt())
    } else {
        serde_json::from_value(value)
            .map(EmailProvider::Api)
            .map_err(|_| corrupt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal_text(address: &str) -> Option<bool> {
        address.parse::<IpAddr>().ok().map(internal)
    }

    #[test]
    fn addresses_inside_or_translated_into_the_network_are_internal() {
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::1",
        ] {
            assert_eq!(internal_text(address), Some(true), "{address}");
        }
    }

    #[test]
    fn public_addresses_are_not_internal() {
        for address in [
            "8.8.8.8",
            "1.1.1.1",
            "2a00:1450:4001::200e",
            "2002:0808:0808::1",
        ] {
            assert_eq!(internal_text(address), Some(false), "{address}");
        }
    }

    #[test]
    fn masks_keep_at_most_the_last_four_characters_of_long_secrets() {
        assert_eq!(mask("sk_test_0123456789abcdef"), "****cdef");
        assert_eq!(mask("short"), "****");
        assert_eq!(mask("ααααααααααααααααβ"), "****αααβ");
    }
}
