//! The tenant's own mail: each tenant keeps its templates (subject and
//! plain text, per key and locale, in `app.email_templates`); the service
//! fills them in, adds what only it may write (links), and builds an HTML
//! part in the tenant's branding (name, logo, primary colour) from the same
//! text, escaped: tenants write text, never markup.
//!
//! A template is looked up in the tenant's `locale` (`fr-FR`), then its
//! language (`fr`), then without a locale, then the built-in text.
//! Addresses are checked here too ([`valid_address`]); delivery is
//! `jobs::mail`'s.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::AppResult;

/// The keys a tenant may keep a template for, with the built-in subject
/// and text. `{tenant}`, `{email}` and `{slug}` are filled in.
pub const BUILT_IN: [(&str, &str, &str); 5] = [
    (
        "welcome",
        "Welcome to {tenant}",
        "Hello,\n\nthe {tenant} workspace is ready, and you ({email}) are its owner.\nSign in and choose the tenant \"{slug}\" to get started.\n",
    ),
    (
        "invitation",
        "You are invited to {tenant}",
        "Hello,\n\nyou have been invited to join {tenant}.\n",
    ),
    (
        "password_reset",
        "Reset your password for {tenant}",
        "Hello,\n\nsomeone asked to reset the password of the account {email} at {tenant}.\nIf it was not you, ignore this mail: your password stays as it is.\n",
    ),
    (
        "signup_verification",
        "Confirm your address for {tenant}",
        "Hello,\n\nto finish signing up to {tenant} as {email}, confirm your address.\nIf you did not sign up, ignore this mail: no account is made.\n",
    ),
    (
        "data_export",
        "Your export of {tenant} is ready",
        "Hello,\n\nthe export of {tenant}'s data that you ({email}) asked for is ready.\nIf you did not ask for it, tell the tenant's owners: anyone with this link can download it.\n",
    ),
];

/// The keys whose text a tenant may change. Password resets and address
/// confirmations keep the service's own text (in the tenant's branding):
/// anyone can have them sent to any address, so a tenant's text there
/// would be a phishing mail in the platform's name.
pub const EDITABLE: [&str; 2] = ["welcome", "invitation"];

/// The longest a filled-in text may get; a longer one falls back to the
/// built-in text, so no template can make mail undeliverable.
const MAX_FILLED: usize = 40_000;

/// A mail ready for the outbox.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// What the service adds to a template: a link and the lines around it.
pub struct Action<'a> {
    pub label: &'a str,
    pub link: &'a str,
    /// Plain-text lines after the link (how long it works, and so on).
    pub note: &'a str,
}

/// The current tenant's mail for `key` to `email` (run in the tenant's
/// context): its template in its locale, or the built-in one, filled in,
/// with `action` appended, as text and as branded HTML.
pub async fn render(
    conn: &mut PgConnection,
    key: &str,
    email: &str,
    action: Option<Action<'_>>,
) -> AppResult<Rendered> {
    let (name, display, slug, logo, color, locale): (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT name, display_name, slug, logo_url, primary_color, configuration ->> 'locale'
         FROM tenancy.current_tenant()",
    )
    .fetch_one(&mut *conn)
    .await?;
    let locale = locale.unwrap_or_default();
    let language = locale.split('-').next().unwrap_or_default().to_owned();
    let own: Option<(String, String)> = if !EDITABLE.contains(&key) {
        None
    } else {
        sqlx::query_as(
        "SELECT subject, body FROM app.email_templates WHERE key = $1 AND locale IN ($2, $3, '')
         ORDER BY CASE locale WHEN $2 THEN 0 WHEN $3 THEN 1 ELSE 2 END LIMIT 1",
    )
        .bind(key)
        .bind(&locale)
        .bind(&language)
        .fetch_optional(&mut *conn)
        .await?
    };
    let built_in = || {
        BUILT_IN
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(_, s, b)| ((*s).to_owned(), (*b).to_owned()))
            .unwrap_or_default()
    };
    let tenant = if display.trim().is_empty() {
        name
    } else {
        display
    };
    // An invitee's address is kept sealed: not in its mail's text (a text
    // saved before that rule gets nothing for it).
    let email = if key == "invitation" { "" } else { email };
    let fill = |text: &str| {
        text.replace("{tenant}", &tenant)
            .replace("{email}", email)
            .replace("{slug}", &slug)
    };
    let filled = |(subject, body): (String, String)| {
        (fill(&subject).replace(['\r', '\n'], " "), fill(&body))
    };
    let (subject, body) = match own.map(filled) {
        Some((subject, body)) if subject.len() + body.len() <= MAX_FILLED => (subject, body),
        _ => filled(built_in()),
    };
    Ok(compose(
        subject,
        &body,
        action,
        &Brand {
            name: &tenant,
            logo: logo.as_deref(),
            color: color.as_deref(),
        },
    ))
}

/// The tenant's look in the HTML part.
struct Brand<'a> {
    name: &'a str,
    logo: Option<&'a str>,
    color: Option<&'a str>,
}

/// Text with `&`, `<`, `>`, `"` and `'` escaped for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Paragraphs of escaped text (blank lines between, line breaks within).
fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| format!("<p>{}</p>", escape(p).replace('\n', "<br>")))
        .collect()
}

fn compose(subject: String, body: &str, action: Option<Action<'_>>, brand: &Brand<'_>) -> Rendered {
    // A colour only in the catalog's #RRGGBB form, a logo only over http(s).
    let color = brand
        .color
        .filter(|c| {
            c.len() == 7 && c.starts_with('#') && c[1..].chars().all(|d| d.is_ascii_hexdigit())
        })
        .unwrap_or("#334155");
    let logo = brand
        .logo
        .filter(|l| l.starts_with("https://") || l.starts_with("http://"))
        .map(|l| format!("<img src=\"{}\" alt=\"\" height=\"32\"> ", escape(l)))
        .unwrap_or_default();
    let mut text = body.trim_end().to_owned();
    let mut html = paragraphs(body);
    if let Some(action) = action {
        text.push_str(&format!(
            "\n\n{}: {}\n{}",
            action.label,
            action.link,
            action.note.trim_end()
        ));
        html.push_str(&format!(
            "<p><a href=\"{link}\" style=\"background:{color};color:#ffffff;padding:10px 16px;\
             border-radius:4px;text-decoration:none;display:inline-block\">{label}</a></p>{note}",
            link = escape(action.link),
            label = escape(action.label),
            note = paragraphs(action.note),
        ));
    }
    text.push('\n');
    let html = format!(
        "<!DOCTYPE html><html><body style=\"font-family:sans-serif;color:#111827\">\
         <div style=\"border-top:4px solid {color};padding:16px 0\">{logo}<strong>{name}</strong></div>\
         {html}</body></html>",
        name = escape(brand.name),
    );
    Rendered {
        subject,
        text,
        html,
    }
}

/// Whether `email` looks like an address mail can be sent to: one `@`, a
/// local part, a dotted domain, no spaces or control characters, at most
/// 254 bytes. Delivery is the proof; this only refuses what cannot be one.
pub fn valid_address(email: &str) -> bool {
    let parts: Vec<&str> = email.split('@').collect();
    email.len() <= 254
        && parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Queues a mail that carries a one-time link, in the context of `tenant`
/// (for `user`): the tenant's template `key` for `email`, with `action`,
/// through `queue`, a function of the credential role that mails the
/// address of the pending link `digest` and no other
/// (`SELECT app.queue_..._mail($1, $2, $3, $4)`: digest, subject, text, html).
pub async fn queue_link_mail(
    state: &crate::state::AppState,
    (tenant, user): (Uuid, Uuid),
    queue: &'static str,
    digest: [u8; 32],
    (key, email): (&str, &str),
    action: Action<'_>,
) -> AppResult<()> {
    let mut tx = state.auth_db.begin().await?;
    crate::domain::context::enter(&mut tx, &state.keys, tenant, user).await?;
    let mail = render(&mut tx, key, email, Some(action)).await?;
    sqlx::query(queue)
        .bind(&digest[..])
        .bind(mail.subject)
        .bind(mail.text)
        .bind(mail.html)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_write_text_and_the_html_escapes_it() {
        let brand = Brand {
            name: "Acme <Corp>",
            logo: Some("javascript:alert(1)"),
            color: Some("red;background:url(x)"),
        };
        let mail = compose(
            "Hi".to_owned(),
            "Hello <b>you</b>,\n\nline one\nline two\n",
            Some(Action {
                label: "Accept",
                link: "https://app.test/a?token=x&y=\"1\"",
                note: "Works once.",
            }),
            &brand,
        );
        assert!(mail.html.contains("Hello &lt;b&gt;you&lt;/b&gt;"));
        assert!(mail.html.contains("Acme &lt;Corp&gt;"));
        assert!(mail.html.contains("line one<br>line two"));
        assert!(mail
            .html
            .contains("href=\"https://app.test/a?token=x&amp;y=&quot;1&quot;\""));
        assert!(!mail.html.contains("javascript:"), "no logo but http(s)");
        assert!(mail.html.contains("#334155"), "no colour but #RRGGBB");
        assert!(mail
            .text
            .contains("Accept: https://app.test/a?token=x&y=\"1\"\nWorks once."));
        assert!(
            mail.text.starts_with("Hello <b>you</b>"),
            "the text part as written"
        );
    }
}
