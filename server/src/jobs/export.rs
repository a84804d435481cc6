//! Tenant data exports (seed 002, REQ-MT-B008): the job that builds them.
//!
//! An export is claimed from `app.exports` (queued, or running under a job
//! that stopped beating: a crash or a restart starts it again), then built
//! through the requester's own signed context, in one REPEATABLE READ,
//! READ ONLY transaction: every table `tenancy.protected_tables` lists
//! (found at run time, so a table added later is exported too), each
//! streamed with `COPY ... TO STDOUT` into a zip entry (`<table>.ndjson` or
//! `<table>.csv`) on local disk, never held in memory. The database's
//! policies decide which rows the context sees, so the archive cannot hold
//! another tenant's row. The archive is then stored in chunks in
//! `app.export_chunks`, and the requester is mailed a link that works
//! `max_downloads` times within `LINK_VALID_HOURS`.
//!
//! Never exported: earlier exports' archives (`app.export_chunks`),
//! columns the application role may not read (credentials
//! and mail bodies with links), and columns that hold secrets even sealed or
//! hashed (`wrapped`, `sealed`, `*token_hash*`, `*password*`, `*secret*`).
//! Tables whose own policy limits rows to the context's user (chat) hold
//! the requester's rows only. The archive's `manifest.json` says all of it.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::PgConnection;
use std::collections::HashMap;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::keyring::{sealed_version, DataKey};
use crate::domain::pii::{self, SealedField};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// How long a download link works.
pub const LINK_VALID_HOURS: i64 = 24;
/// A running export whose job has not beaten for this long is taken over.
const STALE_SECS: f64 = 60.0;
/// Size of the stored archive's chunks.
const CHUNK: usize = 1 << 20;

#[derive(sqlx::FromRow)]
struct Claimed {
    tenant_id: Uuid,
    id: Uuid,
    requested_by: Uuid,
    format: String,
}

/// Claims and builds one export, if one is waiting; returns whether it did.
pub async fn run_once(state: &AppState) -> AppResult<bool> {
    let claimed: Option<Claimed> = {
        let mut tx = state.admin_db.begin().await?;
        let claimed = sqlx::query_as(
            "SELECT tenant_id, id, requested_by, format
             FROM app.export_claim(make_interval(secs => $1))",
        )
        .bind(STALE_SECS)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        claimed
    };
    let Some(job) = claimed else {
        return Ok(false);
    };
    if let Err(e) = build(state, &job).await {
        tracing::warn!(tenant = %job.tenant_id, export = %job.id, error = %e, "export failed");
        let reason = match &e {
            AppError::Forbidden(why) => (*why).to_owned(),
            _ => "The export could not be built; ask for a new one".to_owned(),
        };
        let mut tx = state.db.begin().await?;
        crate::domain::context::enter(&mut tx, &state.keys, job.tenant_id, job.requested_by)
            .await?;
        sqlx::query(
            "UPDATE app.exports SET status = 'failed', failure = $2, finished_at = now()
             WHERE id = $1",
        )
        .bind(job.id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(true)
}

/// Builds exports every `every` until `shutdown`; archives past their
/// link's expiry are removed on the way.
pub async fn run(
    state: AppState,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match run_once(&state).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "export job cannot claim exports"),
        }
        if let Err(e) = purge(&state).await {
            tracing::warn!(error = %e, "expired export archives not removed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Removes the archives of exports whose link expired; returns how many chunks went.
pub async fn purge(state: &AppState) -> AppResult<i64> {
    let mut tx = state.admin_db.begin().await?;
    let gone: i64 = sqlx::query_scalar("SELECT app.export_purge()")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(gone)
}

/// What goes to the archive writer.
enum Piece {
    Entry(String),
    Data(Vec<u8>),
}

/// Opens the sealed columns of a table's rows as they stream by: the rows
/// come as one JSON object per line, and leave as NDJSON or CSV with each
/// sealed column replaced by its plain value.
struct Unsealer<'f> {
    keys: HashMap<i32, DataKey>,
    fields: Vec<&'f SealedField>,
    /// The columns written, in order.
    columns: Vec<String>,
    csv: bool,
    /// The start of a line whose end has not come yet.
    pending: Vec<u8>,
}

impl Unsealer<'_> {
    fn header(&self) -> Vec<u8> {
        let mut line = self
            .columns
            .iter()
            .map(|c| csv_field(c))
            .collect::<Vec<_>>()
            .join(",");
        line.push('\n');
        line.into_bytes()
    }

    /// The output for every line `chunk` completes.
    fn feed(&mut self, chunk: &[u8]) -> AppResult<Vec<u8>> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            out.extend(self.line(&line[..end])?);
        }
        Ok(out)
    }

    fn line(&self, line: &[u8]) -> AppResult<Vec<u8>> {
        let bad = || AppError::Internal("export: a row could not be read back".to_owned());
        let mut row: serde_json::Map<String, Value> =
            serde_json::from_slice(line).map_err(|_| bad())?;
        for field in &self.fields {
            let sealed = row.remove(field.sealed);
            if row.get(field.plain).is_none_or(|v| v.is_null()) {
                let plain = match sealed {
                    Some(Value::String(text)) => Some(self.open(field, &row, &text)?),
                    _ => None,
                };
                row.insert(
                    field.plain.to_owned(),
                    plain.map_or(Value::Null, Value::String),
                );
            }
        }
        // Only the columns exported (not the link digests the values are
        // bound to).
        row.retain(|name, _| self.columns.contains(name));
        let mut out = if self.csv {
            self.columns
                .iter()
                .map(|c| match row.get(c) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => csv_field(s),
                    Some(other) => csv_field(&other.to_string()),
                })
                .collect::<Vec<_>>()
                .join(",")
                .into_bytes()
        } else {
            serde_json::to_vec(&row).map_err(|_| bad())?
        };
        out.push(b'\n');
        Ok(out)
    }

    /// The sealed value `text` of `row` opened (a bytea as `row_to_json`
    /// writes it: `\x` and hex).
    fn open(
        &self,
        field: &SealedField,
        row: &serde_json::Map<String, Value>,
        text: &str,
    ) -> AppResult<String> {
        let id = row.get(field.id).and_then(Value::as_str).unwrap_or("?");
        let corrupt = || {
            AppError::from(crate::domain::keyring::KeyError::Corrupt(format!(
                "{}.{} of row {id} does not decrypt: not a sealed value",
                field.table, field.plain
            )))
        };
        let bytes = bytea(text).ok_or_else(corrupt)?;
        let link = row
            .get(field.link)
            .and_then(Value::as_str)
            .and_then(bytea)
            .ok_or_else(corrupt)?;
        let uuid = Uuid::parse_str(id).map_err(|_| corrupt())?;
        let version = sealed_version(&bytes).ok_or_else(corrupt)?;
        let key = self.keys.get(&version).ok_or_else(|| {
            AppError::Unavailable(format!(
                "{}.{} of row {id}: data key {version} is destroyed",
                field.table, field.plain
            ))
        })?;
        Ok((field.open)(key, uuid, &link, &bytes)?)
    }
}

/// A bytea as `row_to_json` writes it (`\x` and hex).
fn bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

/// A CSV field, quoted when it must be.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Columns never exported, whatever the table.
fn secret_column(name: &str) -> bool {
    name == "wrapped"
        || name == "sealed"
        || name.contains("token_hash")
        || name.contains("password")
        || name.contains("secret")
}

#[derive(sqlx::FromRow)]
struct Column {
    name: String,
    readable: bool,
}

/// A short transaction in the requester's context on a connection of its own.
async fn in_context(
    state: &AppState,
    job: &Claimed,
) -> AppResult<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = state.db.begin().await?;
    crate::domain::context::enter(&mut tx, &state.keys, job.tenant_id, job.requested_by).await?;
    Ok(tx)
}

async fn progress(state: &AppState, job: &Claimed, set: &str, values: (i64, i64)) -> AppResult<()> {
    let mut tx = in_context(state, job).await?;
    sqlx::query(&format!(
        "UPDATE app.exports SET {set}, heartbeat_at = now() WHERE id = $1"
    ))
    .bind(job.id)
    .bind(values.0)
    .bind(values.1)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn build(state: &AppState, job: &Claimed) -> AppResult<()> {
    let mut read = state.db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *read)
        .await?;
    sqlx::query("SET LOCAL statement_timeout = '30min'")
        .execute(&mut *read)
        .await?;
    crate::domain::context::enter(&mut read, &state.keys, job.tenant_id, job.requested_by).await?;
    // The requester must still run the tenant.
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM app.tenant_memberships WHERE user_id = $1")
            .bind(job.requested_by)
            .fetch_optional(&mut *read)
            .await?;
    if !state.authz.still_allowed(
        job.requested_by,
        job.tenant_id,
        role.as_deref(),
        crate::domain::authz::Action::TenantExportData,
    ) {
        return Err(AppError::Forbidden(
            "The requester is no longer an owner or admin of the tenant",
        ));
    }
    // (SQL name, name in the archive); earlier exports' archives are not
    // exported again.
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, format('%s.%s', schema_name, relation_name)
         FROM tenancy.protected_tables
         WHERE parent_table IS NULL AND table_name <> 'app.export_chunks'::regclass ORDER BY 2",
    )
    .fetch_all(&mut *read)
    .await?;
    progress(
        state,
        job,
        "tables_total = $2, tables_done = $3",
        (tables.len() as i64, 0),
    )
    .await?;

    let path = std::env::temp_dir().join(format!("tenancy-export-{}.zip", job.id));
    let (pieces, mut incoming) = mpsc::channel::<Piece>(16);
    let target = path.clone();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let file = std::fs::File::create(&target)?;
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        while let Some(piece) = incoming.blocking_recv() {
            match piece {
                Piece::Entry(name) => zip
                    .start_file(name, options)
                    .map_err(std::io::Error::other)?,
                Piece::Data(bytes) => zip.write_all(&bytes)?,
            }
        }
        let file = zip.finish().map_err(std::io::Error::other)?;
        Ok(file.metadata()?.len())
    });

    let outcome = write_tables(state, job, &mut read, &tables, &pieces).await;
    drop(pieces);
    let written = writer
        .await
        .map_err(|e| AppError::Internal(format!("export writer: {e}")))
        .and_then(|r| r.map_err(|e| AppError::Internal(format!("export archive: {e}"))));
    read.rollback().await?;
    let stored = match (outcome, written) {
        (Ok(rows), Ok(size)) => store(state, job, &path, rows, size).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let _ = tokio::fs::remove_file(&path).await;
    stored
}

/// Streams every table into the archive; returns the rows written.
async fn write_tables(
    state: &AppState,
    job: &Claimed,
    read: &mut PgConnection,
    tables: &[(String, String)],
    pieces: &mpsc::Sender<Piece>,
) -> AppResult<i64> {
    let send = |piece: Piece| async move {
        pieces
            .send(piece)
            .await
            .map_err(|_| AppError::Internal("export writer stopped".to_owned()))
    };
    let extension = if job.format == "csv" { "csv" } else { "ndjson" };
    let mut manifest_tables = Vec::new();
    let mut total: i64 = 0;
    for (done, (table, name)) in tables.iter().enumerate() {
        let columns: Vec<Column> = sqlx::query_as(
            "SELECT a.attname::text AS name,
                    has_column_privilege(a.attrelid, a.attnum, 'SELECT') AS readable
             FROM pg_attribute a
             WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
        )
        .bind(table)
        .fetch_all(&mut *read)
        .await?;
        let sealed: Vec<&SealedField> = pii::SEALED_FIELDS
            .iter()
            .filter(|f| f.table == name)
            .collect();
        let (kept, left_out): (Vec<&Column>, Vec<&Column>) = columns.iter().partition(|c| {
            c.readable && !secret_column(&c.name) && !sealed.iter().any(|f| f.index == c.name)
        });
        if kept.is_empty() {
            manifest_tables.push(json!({"table": name, "file": null, "rows": 0,
                "omitted_columns": left_out.iter().map(|c| &c.name).collect::<Vec<_>>(),
                "note": "not readable by the service's application role"}));
            progress(
                state,
                job,
                "tables_done = $2, rows_done = $3",
                (done as i64 + 1, total),
            )
            .await?;
            continue;
        }
        // The columns a sealed value is bound to are read too, to open it.
        let bound = sealed.iter().flat_map(|f| [f.id, f.link]);
        let mut names: Vec<&str> = kept.iter().map(|c| c.name.as_str()).collect();
        for name in bound {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let list: Vec<String> = names
            .iter()
            .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
            .collect();
        let list = list.join(", ");
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut *read)
            .await?;
        // JSON: one object per line. A CSV format with delimiter and quote
        // that row_to_json never emits raw (it escapes control characters)
        // passes each line through untouched.
        let copy = if job.format == "csv" && sealed.is_empty() {
            format!("COPY (SELECT {list} FROM {table}) TO STDOUT WITH (FORMAT csv, HEADER)")
        } else {
            format!(
                "COPY (SELECT row_to_json(r) FROM (SELECT {list} FROM {table}) r) TO STDOUT \
                 WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')"
            )
        };
        let file = format!("{name}.{extension}");
        // Sealed columns are opened with the tenant's keys (read before the
        // copy holds the connection) and exported under their plain name.
        let shown: Vec<&str> = kept
            .iter()
            .map(|c| c.name.as_str())
            .filter(|c| !sealed.iter().any(|f| f.sealed == *c))
            .collect();
        let mut unsealer = if sealed.is_empty() {
            None
        } else {
            let keys = state.keyring.live_keys(read, job.tenant_id).await?;
            Some(Unsealer {
                keys: keys.into_iter().map(|k| (k.version(), k)).collect(),
                fields: sealed.clone(),
                columns: shown.iter().map(|c| (*c).to_owned()).collect(),
                csv: job.format == "csv",
                pending: Vec::new(),
            })
        };
        send(Piece::Entry(file.clone())).await?;
        if let Some(u) = unsealer.as_ref().filter(|u| u.csv) {
            send(Piece::Data(u.header())).await?;
        }
        {
            let mut stream = read.copy_out_raw(&copy).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let data = match unsealer.as_mut() {
                    Some(u) => u.feed(&chunk)?,
                    None => chunk.to_vec(),
                };
                send(Piece::Data(data)).await?;
            }
        }
        total += rows;
        manifest_tables.push(json!({"table": name, "file": file, "rows": rows,
            "columns": shown,
            "omitted_columns": left_out.iter().map(|c| &c.name).collect::<Vec<_>>()}));
        progress(
            state,
            job,
            "tables_done = $2, rows_done = $3",
            (done as i64 + 1, total),
        )
        .await?;
    }
    let manifest = json!({
        "export_id": job.id,
        "tenant_id": job.tenant_id,
        "requested_by": job.requested_by,
        "format": job.format,
        "tables": manifest_tables,
        "notes": [
            "Every table of the tenant's protected data, read in one consistent snapshot through the requester's own tenant context.",
            "Columns that hold credentials or secrets (even sealed or hashed) are never exported; they are listed as omitted_columns.",
            "Personal data the service keeps sealed (invitees' addresses) is opened with the tenant's key and exported in plain under its own name; its blind index is omitted.",
            "Tables whose policy limits rows to their own user (chat sessions and messages) hold the requester's rows only.",
        ],
    });
    send(Piece::Entry("manifest.json".to_owned())).await?;
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| AppError::Internal(format!("manifest: {e}")))?;
    send(Piece::Data(text)).await?;
    Ok(total)
}

/// Stores the archive in chunks, marks the export done with a fresh link,
/// audits and mails it.
async fn store(
    state: &AppState,
    job: &Claimed,
    path: &std::path::Path,
    rows: i64,
    size: u64,
) -> AppResult<()> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| AppError::Internal(format!("export archive: {e}")))?;
    let mut tx = in_context(state, job).await?;
    sqlx::query("DELETE FROM app.export_chunks WHERE export_id = $1")
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
    let mut seq = 0i32;
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        let read = (&mut file)
            .take(CHUNK as u64)
            .read_to_end(&mut chunk)
            .await
            .map_err(|e| AppError::Internal(format!("export archive: {e}")))?;
        if read == 0 {
            break;
        }
        sqlx::query("INSERT INTO app.export_chunks (export_id, seq, data) VALUES ($1, $2, $3)")
            .bind(job.id)
            .bind(seq)
            .bind(&chunk)
            .execute(&mut *tx)
            .await?;
        seq += 1;
    }
    let (secret, digest) = crate::domain::sessions::new_secret();
    sqlx::query(
        "UPDATE app.exports SET status = 'done', finished_at = now(), heartbeat_at = now(),
             rows_done = $2, bytes = $3, token_hash = $4,
             expires_at = now() + make_interval(hours => $5), downloads = 0
         WHERE id = $1",
    )
    .bind(job.id)
    .bind(rows)
    .bind(size as i64)
    .bind(&digest[..])
    .bind(LINK_VALID_HOURS as i32)
    .execute(&mut *tx)
    .await?;
    crate::domain::audit::record(
        &mut tx,
        job.tenant_id,
        Uuid::nil(),
        "export.completed",
        Some(&job.id.to_string()),
        json!({"requested_by": job.requested_by, "format": job.format, "rows": rows, "bytes": size}),
    )
    .await?;
    tx.commit().await?;
    let link = format!(
        "{}/exports/download?token={secret}",
        state.config.app_url.trim_end_matches('/')
    );
    let note = format!(
        "The link works 3 times and expires in {LINK_VALID_HOURS} hours. The archive holds \
         every table of the tenant's data ({rows} rows); manifest.json describes it.\n"
    );
    let email: String = {
        let mut tx = in_context(state, job).await?;
        let email = sqlx::query_scalar("SELECT email FROM app.users WHERE id = $1")
            .bind(job.requested_by)
            .fetch_one(&mut *tx)
            .await?;
        tx.rollback().await?;
        email
    };
    crate::domain::mail::queue_link_mail(
        state,
        (job.tenant_id, job.requested_by),
        "SELECT app.queue_export_mail($1, $2, $3, $4)",
        digest,
        ("data_export", &email),
        crate::domain::mail::Action {
            label: "Download the export",
            link: &link,
            note: &note,
        },
    )
    .await
}
