//! A real Citus cluster on this machine: a coordinator and two workers
//! (`scripts/citus-cluster.sh`, ports 9700-9702), each test in databases of
//! its own on every node, with Citus and tenancy installed and the workers
//! added. Citus itself is installed by `scripts/citus.sh` (run by the test
//! command); when it is absent a test fails saying so, never passes.

use sqlx::{Connection, PgConnection};

use crate::TestResult;

pub const PORTS: [u16; 3] = [9700, 9701, 9702];

/// Serialises cluster start-up between tests of one process.
static START: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

pub struct Cluster {
    pub db: String,
}

fn url(port: u16, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{db}")
}

impl Cluster {
    /// A new database on every node of the cluster, started if need be.
    pub async fn new() -> TestResult<Cluster> {
        let lib = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_config")
            .arg("--pkglibdir")
            .output()?;
        let lib = String::from_utf8_lossy(&lib.stdout).trim().to_owned();
        if !std::path::Path::new(&lib).join("citus.so").exists() {
            return Err(
                "Citus is absent: this test needs it (scripts/citus.sh builds and installs it)"
                    .into(),
            );
        }
        {
            let mut started = START.lock().await;
            if !*started {
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/citus-cluster.sh");
                let status = tokio::process::Command::new("bash")
                    .arg(script)
                    .arg("start")
                    .status()
                    .await?;
                if !status.success() {
                    return Err("the Citus cluster did not start (scripts/citus-cluster.sh)".into());
                }
                *started = true;
            }
        }
        let db = format!("tenancy_c_{}", uuid::Uuid::new_v4().simple());
        for port in PORTS {
            let mut conn = PgConnection::connect(&url(port, "postgres")).await?;
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&mut conn)
                .await?;
            let mut conn = PgConnection::connect(&url(port, &db)).await?;
            sqlx::query("CREATE EXTENSION citus")
                .execute(&mut conn)
                .await?;
        }
        let cluster = Cluster { db };
        let mut coordinator = cluster.coordinator().await?;
        sqlx::query("SELECT citus_set_coordinator_host('127.0.0.1', $1)")
            .bind(i32::from(PORTS[0]))
            .execute(&mut coordinator)
            .await?;
        for port in &PORTS[1..] {
            sqlx::query("SELECT citus_add_node('127.0.0.1', $1)")
                .bind(i32::from(*port))
                .execute(&mut coordinator)
                .await?;
        }
        // Citus installs it on the workers as well.
        sqlx::query("CREATE EXTENSION tenancy")
            .execute(&mut coordinator)
            .await?;
        Ok(cluster)
    }

    /// A superuser connection to the coordinator.
    pub async fn coordinator(&self) -> TestResult<PgConnection> {
        Ok(PgConnection::connect(&url(PORTS[0], &self.db)).await?)
    }

    /// A superuser connection to worker `n` (1 or 2).
    pub async fn worker(&self, n: usize) -> TestResult<PgConnection> {
        Ok(PgConnection::connect(&url(PORTS[n], &self.db)).await?)
    }

    /// Drops the test's databases (the nodes' metadata first).
    pub async fn drop(self) -> TestResult {
        for port in PORTS {
            let mut conn = PgConnection::connect(&url(port, "postgres")).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db))
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }
}
