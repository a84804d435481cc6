//! A tenant's email provider reached over its HTTP API instead of SMTP
//! (seed 002, REQ-MT-B011): Postmark and SendGrid, the two APIs tenants
//! most often hold keys for. Checked on save with an authenticated call
//! that sends nothing, used by the mail sender for the tenant's own mail.
//!
//! As for a tenant's SMTP server, the service refuses to make requests
//! into its own network, or at any port of the internet, for a tenant: the
//! endpoint must be `https://` on port 443, its host must resolve to public
//! addresses only, and the connection goes straight (no proxy) to the
//! address checked, redirects not followed, unless the operator allows
//! private servers (`TENANCY_TENANT_SMTP_PRIVATE`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{AppError, AppResult};

/// The providers reached over their API, with their official endpoint.
pub const PROVIDERS: [(&str, &str); 2] = [
    ("postmark", "https://api.postmarkapp.com"),
    ("sendgrid", "https://api.sendgrid.com"),
];

/// A tenant's email API provider.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiMailSettings {
    /// `postmark` or `sendgrid`.
    pub provider: String,
    /// The server token (Postmark) or API key (SendGrid).
    pub api_key: String,
    /// The sender, such as `Acme <no-reply@acme.example>`.
    pub from: String,
    /// Another base URL than the provider's own (a regional endpoint, a
    /// proxy); `https://` unless private servers are allowed.
    #[serde(default)]
    pub endpoint: Option<String>,
}

fn invalid(message: impl Into<String>) -> AppError {
    AppError::Validation(message.into())
}

impl ApiMailSettings {
    /// Field checks (no network).
    pub fn validate(&self) -> AppResult<()> {
        if !PROVIDERS.iter().any(|(p, _)| *p == self.provider) {
            return Err(invalid("provider must be one of: smtp, postmark, sendgrid"));
        }
        if self.api_key.is_empty()
            || self.api_key.len() > 512
            || self.api_key.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(invalid(
                "api_key must be 1 to 512 printable characters without spaces",
            ));
        }
        if self.from.len() > 320 {
            return Err(invalid("from must be at most 320 characters"));
        }
        self.from.parse::<lettre::message::Mailbox>().map_err(|_| {
            invalid("from must be a mail address, such as Acme <no-reply@acme.example>")
        })?;
        if let Some(endpoint) = &self.endpoint {
            let url = reqwest::Url::parse(endpoint)
                .map_err(|_| invalid("endpoint must be a URL, such as https://api.example.com"))?;
            if !matches!(url.scheme(), "https" | "http")
                || url.host_str().is_none()
                || !url.username().is_empty()
                || url.password().is_some()
                || url.query().is_some()
                || endpoint.len() > 300
            {
                return Err(invalid(
                    "endpoint must be an https:// URL without credentials or query",
                ));
            }
        }
        Ok(())
    }

    /// What the API shows: the key masked.
    pub fn masked(&self) -> serde_json::Value {
        json!({
            "provider": self.provider,
            "api_key": crate::domain::integrations::mask(&self.api_key),
            "from": self.from,
            "endpoint": self.endpoint,
        })
    }

    fn base(&self) -> String {
        let official = PROVIDERS
            .iter()
            .find(|(p, _)| *p == self.provider)
            .map_or("", |(_, url)| *url);
        self.endpoint
            .as_deref()
            .unwrap_or(official)
            .trim_end_matches('/')
            .to_owned()
    }
}

/// A mail for the provider.
pub struct Outgoing<'a> {
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: Option<&'a str>,
}

/// A client for one tenant's provider, pinned to the address checked.
#[derive(Clone)]
pub struct ApiMailer {
    client: reqwest::Client,
    settings: ApiMailSettings,
    base: String,
}

impl ApiMailer {
    /// Resolves and checks the endpoint (see the module's text); the error
    /// says why it cannot be used, without internals.
    pub async fn new(settings: &ApiMailSettings, allow_private: bool) -> Result<ApiMailer, String> {
        let base = settings.base();
        let url = reqwest::Url::parse(&base).map_err(|_| "the endpoint is not a URL".to_owned())?;
        let host = url
            .host_str()
            .ok_or_else(|| "the endpoint has no host".to_owned())?
            .to_owned();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5));
        if !allow_private {
            if url.scheme() != "https" {
                return Err("the endpoint must use https".to_owned());
            }
            let port = url.port_or_known_default().unwrap_or(443);
            if port != 443 {
                return Err("the endpoint must use port 443".to_owned());
            }
            let address = crate::domain::integrations::public_address(&host, port).await?;
            builder = builder.resolve(&host, SocketAddr::new(address, port));
        }
        let client = builder
            .build()
            .map_err(|_| "no HTTP client could be made for the endpoint".to_owned())?;
        Ok(ApiMailer {
            client,
            settings: settings.clone(),
            base,
        })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let request = request.header(reqwest::header::ACCEPT, "application/json");
        if self.settings.provider == "postmark" {
            request.header("X-Postmark-Server-Token", &self.settings.api_key)
        } else {
            request.bearer_auth(&self.settings.api_key)
        }
    }

    async fn answer(request: reqwest::RequestBuilder) -> Result<(), String> {
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(match response.status().as_u16() {
                401 | 403 => "refused the API key".to_owned(),
                code => format!("answered HTTP {code}"),
            }),
            Err(e) if e.is_timeout() => Err("timed out".to_owned()),
            Err(_) => Err("could not be reached".to_owned()),
        }
    }

    /// An authenticated call that sends nothing: proves the endpoint
    /// answers and takes the key.
    pub async fn check(&self) -> Result<(), String> {
        let path = if self.settings.provider == "postmark" {
            "/server"
        } else {
            "/v3/scopes"
        };
        Self::answer(self.authorized(self.client.get(format!("{}{path}", self.base))))
            .await
            .map_err(|why| format!("{} API {why}", self.settings.provider))
    }

    /// Sends one mail through the provider.
    pub async fn send(&self, mail: &Outgoing<'_>) -> Result<(), String> {
        let from: lettre::message::Mailbox = self
            .settings
            .from
            .parse()
            .map_err(|_| "the sender is not an address".to_owned())?;
        let (path, body) = if self.settings.provider == "postmark" {
            let mut body = json!({
                "From": from.to_string(), "To": mail.to, "Subject": mail.subject,
                "TextBody": mail.text, "MessageStream": "outbound",
            });
            if let Some(html) = mail.html {
                body["HtmlBody"] = json!(html);
            }
            ("/email", body)
        } else {
            let mut content = vec![json!({"type": "text/plain", "value": mail.text})];
            if let Some(html) = mail.html {
                content.push(json!({"type": "text/html", "value": html}));
            }
            let sender = match &from.name {
                Some(name) => json!({"email": from.email.to_string(), "name": name}),
                None => json!({"email": from.email.to_string()}),
            };
            (
                "/v3/mail/send",
                json!({
                    "personalizations": [{"to": [{"email": mail.to}]}],
                    "from": sender, "subject": mail.subject, "content": content,
                }),
            )
        };
        Self::answer(
            self.authorized(self.client.post(format!("{}{path}", self.base)))
                .json(&body),
        )
        .await
        .map_err(|why| format!("{} API {why}", self.settings.provider))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: Option<&str>) -> ApiMailSettings {
        ApiMailSettings {
            provider: "postmark".to_owned(),
            api_key: "server-token-0000".to_owned(),
            from: "Acme <mail@acme.test>".to_owned(),
            endpoint: endpoint.map(str::to_owned),
        }
    }

    #[test]
    fn endpoints_are_plain_urls_without_credentials() {
        assert!(settings(None).validate().is_ok());
        assert!(settings(Some("https://api.eu.example.com/"))
            .validate()
            .is_ok());
        for bad in [
            "ftp://x.example",
            "https://user:pw@x.example",
            "https://x.example/?a=b",
            "not a url",
        ] {
            assert!(settings(Some(bad)).validate().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn plain_http_and_internal_endpoints_are_refused_unless_private_is_allowed() {
        for endpoint in [
            "http://api.postmarkapp.com",
            "https://127.0.0.1",
            "https://api.postmarkapp.com:8443",
        ] {
            let refused = ApiMailer::new(&settings(Some(endpoint)), false).await;
            assert!(refused.is_err(), "{endpoint}");
            assert!(ApiMailer::new(&settings(Some(endpoint)), true)
                .await
                .is_ok());
        }
    }
}
