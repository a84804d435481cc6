//! `tenancy-server`: serve, migrate, and bootstrap an install from the shell.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenancy_server::jobs::ops;
use tenancy_server::jobs::relay::Relay;
use tenancy_server::jobs::worker::{Worker, WorkerOptions};
use tenancy_server::{AppState, Config};
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "tenancy-server",
    about = "Multi-tenant API in front of the tenancy extension"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Process tenant message streams in a consumer group.
    Worker {
        /// Tenants to serve (repeat or comma-separate); none: every tenant stream found.
        #[arg(long, value_delimiter = ',')]
        tenants: Vec<Uuid>,
        /// Redis URL of the worker (e.g. a user whose ACL allows only these tenants' keys).
        #[arg(long, env = "TENANCY_WORKER_REDIS_URL")]
        worker_redis_url: Option<String>,
        /// Consumer group shared by the workers of a deployment.
        #[arg(long, default_value = "workers")]
        group: String,
        /// This worker's name in the group (default: host and process id).
        #[arg(long)]
        consumer: Option<String>,
        /// Claim entries another worker left pending this long, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        claim_idle_ms: u64,
    },
    /// Run only the outbox relay (when the API instances run with TENANCY_RELAY=false).
    Relay,
    /// Apply migrations as the owner role (and register the context key).
    Migrate,
    /// Rewrap every tenant's data key under the platform key
    /// TENANCY_DATA_KEY (those wrapped by the one it replaces open with
    /// TENANCY_DATA_KEY_PREVIOUS); touches no sealed value, resumes where it
    /// stopped. Prints how many keys were rewrapped.
    RotateDataKey,
    /// Revert the last N migrations.
    MigrateDown {
        #[arg(long, default_value_t = 1)]
        steps: usize,
    },
    /// Create or promote a super admin. The password of a new account (or
    /// of one that has none yet) comes from TENANCY_PASSWORD or, with
    /// --password-stdin, the first line of standard input; never from a
    /// flag, which other users could read in the process list.
    CreateSuperAdmin {
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Create a tenant with its owner (password as for create-super-admin).
    CreateTenant {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner_email: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Check a database's schema for what tenant isolation needs (the
    /// extension's tenancy.lint()): text, JSON or SARIF, a baseline, an exit
    /// code for CI. See `tenancy-server lint --help`; needs only DATABASE_URL.
    Lint,
    /// Print the OpenAPI 3.1 document (what `/openapi.json` serves), for
    /// client generators and API diffs in CI; needs no configuration.
    Openapi,
    /// Add a user to a tenant (password as for create-super-admin; an
    /// account that already has one keeps it).
    AddMember {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "member")]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// The password for a bootstrap command: the first line of standard input
/// with `--password-stdin`, else `TENANCY_PASSWORD`.
fn password(stdin: bool) -> Result<String, String> {
    let password = if stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        std::env::var("TENANCY_PASSWORD")
            .map_err(|_| "no password: set TENANCY_PASSWORD or pass --password-stdin".to_owned())?
    };
    if password.is_empty() {
        return Err("the password is empty".to_owned());
    }
    Ok(password)
}

/// Whether the command serves access tokens (and so needs their secret).
fn verifies_tokens(command: &Command) -> bool {
    matches!(command, Command::Serve)
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    // TENANCY_LOG_FORMAT=json for one JSON object per line (log shippers).
    if std::env::var("TENANCY_LOG_FORMAT").as_deref() == Ok("json") {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    // The document needs no configuration (and Cli::parse would ask for it).
    if std::env::args().nth(1).as_deref() == Some("openapi") {
        return match tenancy_server::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // The lint reads one database's catalogs: it needs only its URL.
    if std::env::args().nth(1).as_deref() == Some("lint") {
        use clap::Parser as _;
        let args = tenancy_server::jobs::lint::LintArgs::parse_from(std::env::args().skip(1));
        return match tenancy_server::jobs::lint::run(args).await {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Err(e) = cli.config.validate(verifies_tokens(&command)) {
        eprintln!("configuration error: {e}");
        return ExitCode::from(2);
    }
    let config = cli.config;
    let result = match command {
        Command::Serve => serve(config).await,
        Command::Worker {
            tenants,
            worker_redis_url,
            group,
            consumer,
            claim_idle_ms,
        } => {
            let mut options = WorkerOptions::new(
                tenants,
                consumer.unwrap_or_else(|| {
                    format!(
                        "{}-{}",
                        std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned()),
                        std::process::id()
                    )
                }),
            );
            options.group = group;
            options.claim_idle = std::time::Duration::from_millis(claim_idle_ms);
            worker(config, options, worker_redis_url).await
        }
        Command::Relay => relay(config).await,
        Command::Migrate => ops::migrate(&config).await.map_err(|e| format!("{e:#}")),
        Command::RotateDataKey => ops::rotate_data_key(&config)
            .await
            .map(|n| println!("{n}"))
            .map_err(|e| format!("{e:#}")),
        Command::MigrateDown { steps } => ops::migrate_down(&config, steps)
            .await
            .map_err(|e| format!("{e:#}")),
        Command::CreateSuperAdmin {
            email,
            password_stdin,
        } => match password(password_stdin) {
            Ok(password) => ops::create_super_admin(&config, &email, password)
                .await
                .map(|id| println!("{id}"))
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(e),
        },
        Command::CreateTenant {
            slug,
            name,
            owner_email,
            password_stdin,
        } => match password(password_stdin) {
            Ok(password) => ops::create_tenant(&config, &slug, &name, &owner_email, password)
                .await
                .map(|(tenant, owner)| println!("{tenant} {owner}"))
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(e),
        },
        Command::AddMember {
            tenant,
            email,
            role,
            password_stdin,
        } => match password(password_stdin) {
            Ok(password) => ops::add_member(&config, tenant, &email, password, &role)
                .await
                .map(|id| println!("{id}"))
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(e),
        },
        Command::Openapi | Command::Lint => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let state = AppState::connect(config).await.map_err(|e| e.to_string())?;
    tracing::info!(addr = ?listener.local_addr().ok(), "listening");
    tenancy_server::serve(listener, state)
        .await
        .map_err(|e| e.to_string())
}

/// A channel that turns true on SIGINT or SIGTERM.
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tenancy_server::shutdown_signal().await;
        let _ = stop.send(true);
    });
    stopped
}

async fn worker(
    config: Config,
    options: WorkerOptions,
    redis_url: Option<String>,
) -> Result<(), String> {
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&config.database_url)
        .await
        .map_err(|e| format!("database: {e}"))?;
    let keys = std::sync::Arc::new(tenancy_server::domain::sessions::Keys::new(&config));
    let url = redis_url.unwrap_or_else(|| config.stream_redis_url().to_owned());
    tracing::info!(tenants = ?options.tenants, group = %options.group, consumer = %options.consumer, "worker starting");
    let worker = Worker::connect(options, &url, db, keys)
        .await
        .map_err(|e| e.to_string())?;
    worker.run(stop_on_signal()).await;
    Ok(())
}

async fn relay(config: Config) -> Result<(), String> {
    let relay = Relay::connect(&config).await.map_err(|e| e.to_string())?;
    tracing::info!("relay starting");
    relay.run(stop_on_signal()).await;
    Ok(())
}
