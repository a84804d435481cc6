//! Outgoing mail: a sender delivers `app.email_outbox` rows and stamps them
//! sent. Mail is written in the transaction that causes it (a tenant's
//! provisioning writes its welcome email), so a mail server being down loses
//! nothing: rows stay pending and are retried.
//!
//! Pluggable delivery: a folder (`TENANCY_MAIL_DIR`, one `.eml` file per
//! message, for development and for handing to a mail system) or, by
//! default, the log. Runs as the owner role, like the message relay: it is
//! the one reader of every tenant's pending mail.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// Where mail goes.
#[derive(Debug, Clone)]
pub enum Mailer {
    /// One RFC 5322 file per message in this folder.
    Dir(PathBuf),
    /// A log line per message (the default; nothing leaves the machine).
    Log,
}

#[derive(sqlx::FromRow)]
struct Mail {
    tenant_id: Uuid,
    id: i64,
    recipient: String,
    subject: String,
    body: String,
}

impl Mailer {
    async fn deliver(&self, mail: &Mail) -> std::io::Result<()> {
        match self {
            Mailer::Log => {
                tracing::info!(tenant = %mail.tenant_id, to = %mail.recipient, subject = %mail.subject, "mail (log sink)");
                Ok(())
            }
            Mailer::Dir(dir) => {
                tokio::fs::create_dir_all(dir).await?;
                let file = dir.join(format!("{}-{}.eml", mail.tenant_id, mail.id));
                // Header values cannot carry line breaks.
                let clean = |s: &str| s.replace(['\r', '\n'], " ");
                let text = format!(
                    "To: {}\r\nSubject: {}\r\nX-Tenant-ID: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}",
                    clean(&mail.recipient),
                    clean(&mail.subject),
                    mail.tenant_id,
                    mail.body.replace('\n', "\r\n")
                );
                // Write then rename, so a reader never sees half a message.
                let partial = file.with_extension("eml.partial");
                tokio::fs::write(&partial, text).await?;
                tokio::fs::rename(&partial, &file).await
            }
        }
    }
}

/// Delivers up to one batch of pending mail; returns how many were sent.
pub async fn send_pending(db: &PgPool, mailer: &Mailer) -> Result<usize, sqlx::Error> {
    let mut tx = db.begin().await?;
    let batch: Vec<Mail> = sqlx::query_as(
        "SELECT tenant_id, id, recipient, subject, body FROM app.email_outbox
         WHERE sent_at IS NULL ORDER BY id LIMIT 50 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut sent = 0;
    for mail in &batch {
        let outcome = mailer.deliver(mail).await;
        sqlx::query(
            "UPDATE app.email_outbox SET attempts = attempts + 1,
                 sent_at = CASE WHEN $3 THEN now() END, last_error = $4
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(mail.tenant_id)
        .bind(mail.id)
        .bind(outcome.is_ok())
        .bind(outcome.as_ref().err().map(|e| e.to_string()))
        .execute(&mut *tx)
        .await?;
        match outcome {
            Ok(()) => sent += 1,
            Err(e) => {
                tracing::warn!(tenant = %mail.tenant_id, id = mail.id, error = %e, "mail not delivered; will retry")
            }
        }
    }
    tx.commit().await?;
    Ok(sent)
}

/// Delivers pending mail every `every` until `shutdown`.
pub async fn run(db: PgPool, mailer: Mailer, every: Duration, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        match send_pending(&db, &mailer).await {
            Ok(n) if n > 0 => {
                tracing::debug!(sent = n, "mail sent");
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
