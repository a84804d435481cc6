//! Export memory: the service's resident memory while it builds a tenant's
//! export of `SMALL` task rows, then of `LARGE` (default 100,000 and
//! 1,000,000), each seeded for acme beside a few rows of globex, built by
//! the export job in this process (`jobs::export::run_once`), repeated
//! `ROUNDS` times, interleaved.
//!
//! Run: `cargo bench -p tenancy-tests --bench export_memory`
//! (env: SMALL=100000 LARGE=1000000 ROUNDS=2).
//! Prints the resident memory before any export, then per export its peak
//! resident memory (sampled every 20 ms) and how far above that baseline
//! it went, its time and archive size; then the medians and the ratio of
//! the large export's rise to the small one's: flat memory means a ratio
//! near 1 for 10 times the rows.

use std::time::{Duration, Instant};

use tenancy_tests::server::{Options, TestApp};
use tenancy_tests::{env_or, median};
use uuid::Uuid;

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// `rows` tasks for `tenant` on one board (triggers off: seeding only).
async fn seed(app: &TestApp, tenant: Uuid, rows: u64) -> BenchResult {
    let mut su = app.superuser().await?;
    let token = app.context_token(tenant, Uuid::nil());
    let mut tx = sqlx::Connection::begin(&mut su).await?;
    sqlx::query("SELECT tenancy.set_token($1)")
        .bind(&token)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM app.tasks")
        .execute(&mut *tx)
        .await?;
    let board: Uuid = sqlx::query_scalar(
        "WITH w AS (INSERT INTO app.workspaces (tenant_id, name) VALUES ($1, 'Export') RETURNING id)
         INSERT INTO app.boards (tenant_id, workspace_id, name) SELECT $1, id, 'Big' FROM w RETURNING id",
    )
    .bind(tenant)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO app.tasks (tenant_id, board_id, title, description)
         SELECT $1, $2, 'task ' || n, repeat('x', 120) FROM generate_series(1, $3) n",
    )
    .bind(tenant)
    .bind(board)
    .bind(rows as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Builds one export of acme; (peak added KiB, seconds, archive bytes).
async fn export(
    app: &TestApp,
    state: &tenancy_server::AppState,
    owner: &str,
) -> BenchResult<(u64, f64, i64)> {
    let (status, body) = app
        .post(
            "/api/tenant/exports",
            owner,
            serde_json::json!({"format": "json"}),
        )
        .await?;
    if status != 202 {
        return Err(format!("export refused: {status} {body}").into());
    }
    let before = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    while tenancy_server::jobs::export::run_once(state)
        .await
        .map_err(|e| e.to_string())?
    {}
    let seconds = started.elapsed().as_secs_f64();
    sampler.abort();
    let bytes: i64 = app
        .scalar(
            "SELECT bytes FROM app.exports WHERE status = 'done' ORDER BY finished_at DESC LIMIT 1",
        )
        .await?;
    Ok((
        peak.load(std::sync::atomic::Ordering::Relaxed),
        seconds,
        bytes,
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult {
    let small: u64 = env_or("SMALL", 100_000);
    let large: u64 = env_or("LARGE", 1_000_000);
    let rounds = env_or("ROUNDS", 2);
    let app = TestApp::spawn_with(Options {
        relay: false,
        ..Options::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let state = tenancy_server::AppState::connect(app.config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let owner = app
        .login(tenancy_tests::server::ALICE)
        .await
        .map_err(|e| e.to_string())?;
    seed(&app, app.globex, 100).await?;
    let baseline = rss_kib();
    println!(
        "resident before any export: {:.1} MiB",
        baseline as f64 / 1024.0
    );
    let (mut small_peaks, mut large_peaks) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (rows, peaks) in [(small, &mut small_peaks), (large, &mut large_peaks)] {
            seed(&app, app.acme, rows).await?;
            let (peak, seconds, bytes) = export(&app, &state, &owner).await?;
            let added = peak.saturating_sub(baseline) as f64 / 1024.0;
            println!(
                "round {round}: {rows} rows: peak {:.1} MiB resident (+{added:.1} over the baseline), {seconds:.1} s, archive {:.1} MiB",
                peak as f64 / 1024.0,
                bytes as f64 / 1_048_576.0
            );
            peaks.push(added);
        }
    }
    let (s, l) = (median(small_peaks), median(large_peaks));
    println!(
        "median peak added: {s:.1} MiB for {small} rows, {l:.1} MiB for {large} rows; ratio {:.2} for {}x the rows",
        l / s.max(0.1),
        large / small.max(1)
    );
    Ok(())
}
