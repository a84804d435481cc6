//! Outgoing mail: a sender delivers `app.email_outbox` rows and stamps them
//! sent. Mail is written in the transaction that causes it (a tenant's
//! provisioning writes its welcome email), so a mail server being down loses
//! nothing: rows stay pending and are retried.
//!
//! Pluggable delivery: SMTP (`TENANCY_SMTP_URL`, e.g.
//! `smtps://user:password@mail.example.com` or `smtp://localhost:25`) for
//! real deployments, a folder (`TENANCY_MAIL_DIR`, one `.eml` file per
//! message) or, by default, the log. Runs as the owner role, like the message relay: it is
//! the one reader of every tenant's pending mail, through `app.mail_due` and
//! `app.mail_attempted` (the owner is otherwise confined to a tenant context).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::domain::integrations::EmailProvider;

/// Where mail goes.
#[derive(Clone)]
pub enum Mailer {
    /// An SMTP server.
    Smtp(Box<Smtp>),
    /// One RFC 5322 file per message in this folder.
    Dir(PathBuf),
    /// A log line per message (the default; nothing leaves the machine).
    Log,
}

#[derive(sqlx::FromRow)]
struct Mail {
    tenant_id: Uuid,
    id: i64,
    /// Which mail it is (`welcome`, `invitation`, `password_reset`...).
    template: String,
    /// The address; for an invitation's mail, filled in when it is sent
    /// (the outbox holds the invitation, whose address is sealed).
    recipient: String,
    subject: String,
    body: String,
    /// The HTML part beside the text, when the mail has one.
    html: Option<String>,
    invitation_id: Option<Uuid>,
}

/// An SMTP server and the address mail comes from.
#[derive(Clone)]
pub struct Smtp {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

/// Why a mail was not delivered (retried later).
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("message: {0}")]
    Message(String),
}

impl Smtp {
    /// Sends `mail` through this server.
    async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        use lettre::AsyncTransport;
        let to = mail
            .recipient
            .parse()
            .map_err(|e| MailError::Message(format!("recipient: {e}")))?;
        let builder = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone());
        let message = match &mail.html {
            Some(html) => builder.multipart(lettre::message::MultiPart::alternative_plain_html(
                mail.body.clone(),
                html.clone(),
            )),
            None => builder
                .header(lettre::message::header::ContentType::TEXT_PLAIN)
                .body(mail.body.clone()),
        }
        .map_err(|e| MailError::Message(e.to_string()))?;
        self.transport.send(message).await?;
        Ok(())
    }
}

impl Mailer {
    /// The sender the configuration asks for: SMTP, a folder, or the log.
    pub fn from_config(config: &crate::config::Config) -> Result<Mailer, MailError> {
        if let Some(url) = config.smtp_url.as_deref().filter(|u| !u.trim().is_empty()) {
            let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)?
                .timeout(Some(std::time::Duration::from_secs(10)))
                .build();
            let from = config
                .mail_from
                .parse()
                .map_err(|e| MailError::Message(format!("TENANCY_MAIL_FROM: {e}")))?;
            return Ok(Mailer::Smtp(Box::new(Smtp { transport, from })));
        }
        Ok(match &config.mail_dir {
            Some(dir) => Mailer::Dir(dir.clone()),
            None => Mailer::Log,
        })
    }

    async fn deliver(&self, mail: &Mail) -> Result<(), MailError> {
        match self {
            Mailer::Smtp(smtp) => smtp.send(mail).await,
            Mailer::Log => {
                tracing::info!(tenant = %mail.tenant_id, to = %mail.recipient, subject = %mail.subject, "mail (log sink)");
                Ok(())
            }
            Mailer::Dir(dir) => {
                tokio::fs::create_dir_all(dir).await?;
                let file = dir.join(format!("{}-{}.eml", mail.tenant_id, mail.id));
                // Header values cannot carry line breaks.
                let clean = |s: &str| s.replace(['\r', '\n'], " ");
                let crlf = |s: &str| s.replace("\r\n", "\n").replace('\n', "\r\n");
                let head = format!(
                    "To: {}\r\nSubject: {}\r\nX-Tenant-ID: {}\r\nMIME-Version: 1.0\r\n",
                    clean(&mail.recipient),
                    clean(&mail.subject),
                    mail.tenant_id,
                );
                let text = match &mail.html {
                    None => format!(
                        "{head}Content-Type: text/plain; charset=utf-8\r\n\r\n{}",
                        crlf(&mail.body)
                    ),
                    Some(html) => {
                        // Random, so no part can close it early.
                        let boundary = format!("tenancy-{}", Uuid::new_v4().simple());
                        format!(
                            "{head}Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
                             --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n\
                             --{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{}\r\n\
                             --{boundary}--\r\n",
                            crlf(&mail.body),
                            crlf(html)
                        )
                    }
                };
                // Write then rename, so a reader never sees half a message.
                let partial = file.with_extension("eml.partial");
                tokio::fs::write(&partial, text).await?;
                tokio::fs::rename(&partial, &file).await?;
                Ok(())
            }
        }
    }
}

/// What the sender needs for tenants' own mail servers (seed 002,
/// REQ-MT-B011): the keys that open their sealed settings, and whether
/// servers on internal addresses are allowed.
#[derive(Clone)]
pub struct TenantMail {
    pub keyring: std::sync::Arc<crate::domain::keyring::Keyring>,
    pub allow_private: bool,
}

#[derive(sqlx::FromRow)]
struct StoredServer {
    tenant_id: Uuid,
    key_version: i32,
    sealed: Vec<u8>,
    kek_id: String,
    wrapped: Option<Vec<u8>>,
}

/// Mail a tenant's own SMTP server may carry: the tenant's own business.
/// Mail that proves control of an address or of an account (password
/// resets, signup confirmations) always goes through the platform's
/// server: a tenant's admin reads what passes through the tenant's.
const TENANT_TEMPLATES: [&str; 3] = ["welcome", "invitation", "data_export"];

/// How long one delivery may take before it counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A tenant's own email provider, ready to send.
enum OwnServer {
    Smtp(Smtp),
    Api(crate::domain::mail_api::ApiMailer),
}

impl OwnServer {
    async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        match self {
            OwnServer::Smtp(smtp) => smtp.send(mail).await,
            OwnServer::Api(api) => api
                .send(&crate::domain::mail_api::Outgoing {
                    to: &mail.recipient,
                    subject: &mail.subject,
                    text: &mail.body,
                    html: mail.html.as_deref(),
                })
                .await
                .map_err(MailError::Message),
        }
    }
}

/// The email provider (SMTP server or API) of each tenant in `tenants`
/// that configured its own, or why it cannot be used (then its mail waits:
/// it never goes out through another provider than the tenant chose).
async fn own_servers(
    db: &PgPool,
    tenants: Vec<Uuid>,
    own: &TenantMail,
) -> Result<HashMap<Uuid, Result<OwnServer, String>>, sqlx::Error> {
    if tenants.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<StoredServer> = sqlx::query_as(
        "SELECT tenant_id, key_version, sealed, kek_id, wrapped FROM app.mail_integrations($1)",
    )
    .bind(&tenants)
    .fetch_all(db)
    .await?;
    let mut servers = HashMap::new();
    for row in rows {
        let server = async {
            let wrapped = row
                .wrapped
                .as_deref()
                .ok_or_else(|| "the tenant's data key is destroyed".to_owned())?;
            let key = own
                .keyring
                .open(row.tenant_id, row.key_version, &row.kek_id, wrapped)
                .map_err(|e| e.to_string())?;
            let settings =
                crate::domain::integrations::open_email(&key, row.tenant_id, &row.sealed)
                    .map_err(|e| e.to_string())?;
            let settings = match settings {
                EmailProvider::Api(api) => {
                    let mailer =
                        crate::domain::mail_api::ApiMailer::new(&api, own.allow_private).await?;
                    return Ok(OwnServer::Api(mailer));
                }
                EmailProvider::Smtp(smtp) => smtp,
            };
            let address =
                crate::domain::integrations::reachable(&settings, own.allow_private).await?;
            let transport = crate::domain::integrations::smtp_transport(&settings, address)
                .map_err(|e| format!("tenant SMTP server: {e}"))?;
            let from = settings
                .from
                .parse()
                .map_err(|_| "tenant SMTP server: the sender is not an address".to_owned())?;
            Ok::<_, String>(OwnServer::Smtp(Smtp { transport, from }))
        }
        .await;
        if let Err(why) = &server {
            tracing::warn!(tenant = %row.tenant_id, error = %why, "tenant mail server cannot be used");
        }
        servers.insert(row.tenant_id, server);
    }
    Ok(servers)
}

/// Tenants whose mail is being sent at most at once; more wait for a turn.
const TENANTS_IN_FLIGHT: usize = 32;

/// The tenants this sender is delivering for right now.
type Busy = std::sync::Arc<std::sync::Mutex<HashSet<Uuid>>>;

/// Claims up to one batch of due mail of tenants not being sent for, and
/// starts one delivery task per tenant; returns how many mails it claimed.
/// A tenant's own mail goes through its own SMTP server when it set one,
/// everything else through the platform's. Each row is leased for a few
/// minutes and sent outside any transaction, so one tenant's slow server
/// holds up that tenant's mail only. A failure is retried later, waiting
/// 1, 2, 4 ... seconds, at most an hour.
async fn dispatch(
    db: &PgPool,
    mailer: &Mailer,
    own: &TenantMail,
    busy: &Busy,
) -> Result<usize, sqlx::Error> {
    let sending: Vec<Uuid> = match busy.lock() {
        Ok(set) => set.iter().copied().collect(),
        Err(_) => return Ok(0),
    };
    if sending.len() >= TENANTS_IN_FLIGHT {
        return Ok(0);
    }
    let batch: Vec<Mail> = sqlx::query_as(
        "SELECT tenant_id, id, template, coalesce(recipient, '') AS recipient, subject, body, html,
                invitation_id
         FROM app.mail_claim(50, make_interval(mins => 5), $1)",
    )
    .bind(&sending)
    .fetch_all(db)
    .await?;
    let claimed = batch.len();
    let mut by_tenant: HashMap<Uuid, Vec<Mail>> = HashMap::new();
    for mail in batch {
        by_tenant.entry(mail.tenant_id).or_default().push(mail);
    }
    for (tenant, mails) in by_tenant {
        if let Ok(mut set) = busy.lock() {
            set.insert(tenant);
        }
        let (db, mailer, own, busy) = (db.clone(), mailer.clone(), own.clone(), busy.clone());
        tokio::spawn(async move {
            if let Err(e) = deliver(&db, &mailer, &own, tenant, mails).await {
                tracing::warn!(%tenant, error = %e, "mail outcome not recorded; retried when its lease ends");
            }
            if let Ok(mut set) = busy.lock() {
                set.remove(&tenant);
            }
        });
    }
    Ok(claimed)
}

/// Delivers one tenant's claimed mail, one after the other.
async fn deliver(
    db: &PgPool,
    mailer: &Mailer,
    own: &TenantMail,
    tenant: Uuid,
    mut mails: Vec<Mail>,
) -> Result<usize, sqlx::Error> {
    let invitations: Vec<Uuid> = mails.iter().filter_map(|m| m.invitation_id).collect();
    let addresses =
        crate::domain::pii::invitation_addresses(db, &own.keyring, tenant, &invitations).await?;
    let servers = if mails
        .iter()
        .any(|m| TENANT_TEMPLATES.contains(&m.template.as_str()))
    {
        own_servers(db, vec![tenant], own).await?
    } else {
        HashMap::new()
    };
    let mut sent = 0;
    for mail in &mut mails {
        let address = mail.invitation_id.map(|invitation| {
            addresses
                .get(&invitation)
                .cloned()
                .unwrap_or_else(|| Err(format!("invitation {invitation} no longer exists")))
        });
        if let Some(Ok(address)) = &address {
            mail.recipient = address.clone();
        }
        let mail = &*mail;
        let own_server = TENANT_TEMPLATES
            .contains(&mail.template.as_str())
            .then(|| servers.get(&mail.tenant_id))
            .flatten();
        let delivery = async {
            if let Some(Err(why)) = &address {
                return Err(MailError::Message(format!(
                    "the invitation's address cannot be opened: {why}"
                )));
            }
            match own_server {
                Some(Ok(server)) => server.send(mail).await,
                Some(Err(why)) => Err(MailError::Message(why.clone())),
                None => mailer.deliver(mail).await,
            }
        };
        let outcome = match tokio::time::timeout(SEND_TIMEOUT, delivery).await {
            Ok(outcome) => outcome,
            Err(_) => Err(MailError::Message("the mail server timed out".to_owned())),
        };
        // A server's refusal may quote the recipient: an invitee's address,
        // kept sealed, is masked in what is stored.
        let error = outcome.as_ref().err().map(|e| {
            let text = e.to_string();
            match (&mail.invitation_id, mail.recipient.is_empty()) {
                (Some(_), false) => text.replace(
                    &mail.recipient,
                    &crate::domain::pii::mask_email(&mail.recipient),
                ),
                _ => text,
            }
        });
        sqlx::query("SELECT app.mail_attempted($1, $2, $3, $4)")
            .bind(mail.tenant_id)
            .bind(mail.id)
            .bind(outcome.is_ok())
            .bind(&error)
            .execute(db)
            .await?;
        match outcome {
            Ok(()) => sent += 1,
            Err(e) => {
                tracing::warn!(tenant = %mail.tenant_id, id = mail.id, error = %e, "mail not delivered; will retry")
            }
        }
    }
    Ok(sent)
}

/// Delivers pending mail, looking every `every`, until `shutdown`.
pub async fn run(
    db: PgPool,
    mailer: Mailer,
    own: TenantMail,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let busy = Busy::default();
    while !*shutdown.borrow() {
        match dispatch(&db, &mailer, &own, &busy).await {
            Ok(n) if n > 0 => {
                tracing::debug!(claimed = n, "mail claimed");
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "mail sender cannot read the outbox"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {}
        }
    }
}
