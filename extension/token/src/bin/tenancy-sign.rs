//! Signs a tenant-context token, for demos, smoke tests and operators who
//! need to hand Postgres a context by hand.
//!
//! ```text
//! tenancy-sign --kid main --alg HS256 --key-env TENANCY_KEY --tenant <uuid> [--user <uuid>] [--ttl 300]
//! ```

use std::process::ExitCode;

use clap::Parser;
use serde_json::{json, Map, Value};
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Sign a tenancy context token (JWT)")]
struct Args {
    /// Key id, as registered with tenancy.add_key().
    #[arg(long)]
    kid: String,
    /// Algorithm of the key (HS256, EdDSA, RS256, ...).
    #[arg(long, default_value = "HS256")]
    alg: String,
    /// Name of the environment variable that holds the secret or private PEM.
    #[arg(long, default_value = "TENANCY_SIGNING_KEY")]
    key_env: String,
    /// Tenant id.
    #[arg(long)]
    tenant: Uuid,
    /// User id (the `sub` claim).
    #[arg(long)]
    user: Option<Uuid>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    ttl: u64,
    /// Extra claims as name=value (value parsed as JSON when it parses, else a string).
    #[arg(long = "claim")]
    claims: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Ok(key) = std::env::var(&args.key_env) else {
        eprintln!("error: environment variable {} is not set", args.key_env);
        return ExitCode::from(2);
    };
    let mut claims = Map::new();
    for extra in &args.claims {
        let Some((name, value)) = extra.split_once('=') else {
            eprintln!("error: --claim expects name=value, got {extra:?}");
            return ExitCode::from(2);
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        claims.insert(name.to_owned(), value);
    }
    claims.insert("tenant_id".into(), json!(args.tenant));
    if let Some(user) = args.user {
        claims.insert("sub".into(), json!(user));
    }
    let now = tenancy_token::now();
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + args.ttl));
    match tenancy_token::sign(&claims, &args.kid, &args.alg, &key) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
