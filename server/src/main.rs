//! `tenancy-server`: serve, migrate, and bootstrap an install from the shell.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenancy_server::{ops, AppState, Config};
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
    /// Apply migrations as the owner role (and register the context key).
    Migrate,
    /// Revert the last N migrations.
    MigrateDown {
        #[arg(long, default_value_t = 1)]
        steps: usize,
    },
    /// Create or promote a super admin (password from TENANCY_PASSWORD).
    CreateSuperAdmin {
        #[arg(long)]
        email: String,
        #[arg(long, env = "TENANCY_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Create a tenant with its owner (password from TENANCY_PASSWORD).
    CreateTenant {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner_email: String,
        #[arg(long, env = "TENANCY_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Add a user to a tenant (password from TENANCY_PASSWORD, used if the user is new).
    AddMember {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "member")]
        role: String,
        #[arg(long, env = "TENANCY_PASSWORD", hide_env_values = true)]
        password: String,
    },
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
    let cli = Cli::parse();
    if let Err(e) = cli.config.validate() {
        eprintln!("configuration error: {e}");
        return ExitCode::from(2);
    }
    let config = cli.config;
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => ops::migrate(&config).await.map_err(|e| e.to_string()),
        Command::MigrateDown { steps } => ops::migrate_down(&config, steps)
            .await
            .map_err(|e| e.to_string()),
        Command::CreateSuperAdmin { email, password } => {
            ops::create_super_admin(&config, &email, password)
                .await
                .map(|id| println!("{id}"))
                .map_err(|e| e.to_string())
        }
        Command::CreateTenant {
            slug,
            name,
            owner_email,
            password,
        } => ops::create_tenant(&config, &slug, &name, &owner_email, password)
            .await
            .map(|(tenant, owner)| println!("{tenant} {owner}"))
            .map_err(|e| e.to_string()),
        Command::AddMember {
            tenant,
            email,
            role,
            password,
        } => ops::add_member(&config, tenant, &email, password, &role)
            .await
            .map(|id| println!("{id}"))
            .map_err(|e| e.to_string()),
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
    let state = AppState::connect(config)
        .await
        .map_err(|e| format!("{e:?}"))?;
    tracing::info!(addr = ?listener.local_addr().ok(), "listening");
    tenancy_server::serve(listener, state)
        .await
        .map_err(|e| e.to_string())
}
