//! `tenancy-server lint`: the command-line front end of the extension's
//! `tenancy.lint()`. Prints the findings as text, JSON or SARIF 2.1 (for
//! code-scanning dashboards), leaves out those a baseline file accepts, and
//! exits 1 when a finding at or above `--fail-on` remains, so CI can gate
//! a migration on it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Connection;

/// The rules `tenancy.lint()` applies: id, name, default severity, summary.
/// docs/LINT.md says why each matters and how to fix it.
pub const RULES: [(&str, &str, &str, &str); 12] = [
    ("TN001", "unprotected-tenant-table", "error", "A table with a tenant column is not protected"),
    ("TN002", "rls-not-enabled-or-forced", "error", "Row-level security is not enabled, or not forced, on a protected table"),
    ("TN003", "permissive-policy", "error", "Another permissive policy on a protected table widens access"),
    ("TN004", "foreign-key-without-tenant", "error", "A foreign key between protected tables does not pair the tenant columns"),
    ("TN005", "unique-without-tenant", "error", "A unique constraint or index on a protected table leaves out the tenant column"),
    ("TN006", "no-tenant-index", "warning", "No index on a protected table leads with the tenant column"),
    ("TN007", "view-as-owner", "error", "A view reads a protected table with its owner's rights, or a materialized view holds its rows"),
    ("TN008", "security-definer", "error", "A SECURITY DEFINER function reads protected tables or has no fixed search_path"),
    ("TN009", "bypassrls-role", "error", "A role bypasses row-level security, or can become one that does"),
    ("TN010", "unprotected-partition", "error", "A partition or child of a protected table is not protected"),
    ("TN011", "public-grant", "warning", "A protected table grants privileges to PUBLIC"),
    ("TN012", "shared-sequence", "info", "A sequence shared by every tenant leaks how many rows the others create"),
];

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Finding {
    pub rule: String,
    pub severity: String,
    pub object: String,
    pub message: String,
    pub fix: Option<String>,
}

/// Findings a team has looked at and accepted, by rule and object.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Baseline {
    pub accepted: Vec<Accepted>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Accepted {
    pub rule: String,
    pub object: String,
    /// When given, only a finding of this severity is accepted: a later,
    /// graver finding of the same rule on the same object is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Why it is accepted: for the next reader.
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Sarif,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum FailOn {
    Info,
    Warning,
    Error,
    Never,
}

#[derive(Debug, clap::Parser)]
#[command(
    name = "tenancy-server lint",
    about = "Checks a database's schema for what tenant isolation needs (tenancy.lint())"
)]
pub struct LintArgs {
    /// The database to check (any role can read the catalogs; it sees what
    /// that role may see).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// A baseline file (JSON) of accepted findings to leave out.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Write the current findings as a baseline file, then exit 0.
    #[arg(long)]
    pub write_baseline: Option<PathBuf>,
    /// Exit 1 when a finding of this severity or above remains.
    #[arg(long, value_enum, default_value = "warning")]
    pub fail_on: FailOn,
}

fn rank(severity: &str) -> FailOn {
    match severity {
        "error" => FailOn::Error,
        "warning" => FailOn::Warning,
        _ => FailOn::Info,
    }
}

/// Every finding of `tenancy.lint()` in the database at `url`.
pub async fn findings(url: &str) -> Result<Vec<Finding>> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("cannot connect to the database")?;
    let rows = sqlx::query_as::<_, Finding>(
        "SELECT rule, severity, object, message, fix FROM tenancy.lint() ORDER BY rule, object",
    )
    .fetch_all(&mut conn)
    .await
    .context("tenancy.lint() failed (is the tenancy extension installed?)")?;
    Ok(rows)
}

/// The findings a baseline does not accept.
pub fn new_findings(findings: Vec<Finding>, baseline: &Baseline) -> Vec<Finding> {
    findings
        .into_iter()
        .filter(|f| {
            !baseline.accepted.iter().any(|a| {
                a.rule == f.rule
                    && a.object == f.object
                    && a.severity.as_ref().is_none_or(|s| *s == f.severity)
            })
        })
        .collect()
}

pub fn text(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!(
            "{} {} {}: {}\n",
            f.severity, f.rule, f.object, f.message
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("    fix: {fix}\n"));
        }
    }
    let count = |s: &str| findings.iter().filter(|f| f.severity == s).count();
    out.push_str(&format!(
        "{} findings: {} errors, {} warnings, {} info\n",
        findings.len(),
        count("error"),
        count("warning"),
        count("info")
    ));
    out
}

/// SARIF 2.1.0: one run of the tool, its rules, one result per finding
/// (the object as a logical location; the fix SQL in the result's
/// properties, since SARIF fixes are edits of files). Findings are about
/// database objects, not files: viewers that need a file location for
/// every result (GitHub code scanning) show none of them.
pub fn sarif(findings: &[Finding]) -> serde_json::Value {
    let level = |severity: &str| match severity {
        "error" => "error",
        "warning" => "warning",
        _ => "note",
    };
    let rules: Vec<_> = RULES
        .iter()
        .map(|(id, name, severity, summary)| {
            json!({
                "id": id,
                "name": name,
                "shortDescription": {"text": summary},
                "help": {"text": format!("See docs/LINT.md, {id}: why it matters and how to fix it.")},
                "defaultConfiguration": {"level": level(severity)},
            })
        })
        .collect();
    let results: Vec<_> = findings
        .iter()
        .map(|f| {
            let mut result = json!({
                "ruleId": f.rule,
                "level": level(&f.severity),
                "message": {"text": f.message},
                "locations": [{
                    "logicalLocations": [{"fullyQualifiedName": f.object, "kind": "object"}]
                }],
                "partialFingerprints": {"tenancyFinding/v1": format!("{}:{}", f.rule, f.object)},
                "properties": {"fix": f.fix},
            });
            if let Some(index) = RULES.iter().position(|(id, ..)| *id == f.rule) {
                result["ruleIndex"] = json!(index);
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "tenancy-lint",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }]
    })
}

/// Runs the command; the exit code is 1 when findings at or above
/// `--fail-on` remain after the baseline.
pub async fn run(args: LintArgs) -> Result<u8> {
    let all = findings(&args.database_url).await?;
    if let Some(path) = &args.write_baseline {
        let baseline = Baseline {
            accepted: all
                .iter()
                .map(|f| Accepted {
                    rule: f.rule.clone(),
                    object: f.object.clone(),
                    severity: Some(f.severity.clone()),
                    reason: String::new(),
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&baseline)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("{} findings written to {}", all.len(), path.display());
        return Ok(0);
    }
    let baseline = match &args.baseline {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the baseline {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a baseline file", path.display()))?
        }
        None => Baseline::default(),
    };
    let left = new_findings(all, &baseline);
    match args.format {
        Format::Text => print!("{}", text(&left)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&left)?),
        Format::Sarif => println!("{}", serde_json::to_string_pretty(&sarif(&left))?),
    }
    let failing = left
        .iter()
        .any(|f| args.fail_on != FailOn::Never && rank(&f.severity) >= args.fail_on);
    Ok(u8::from(failing))
}
