//! Noisy neighbour: tenant B's throughput and p99 alone, then while tenant
//! A floods the same instance, interleaved and repeated.
//!
//!   B     globex's owner, `CONCURRENCY_B` clients, GET a board's 20 tasks.
//!   flood acme, all at once: `FLOOD` clients listing a board of 500 tasks
//!         (heavy list queries) as several members, `SLOW` connections
//!         trickling request bodies, and `LOGIN_FLOOD` loops of wrong
//!         passwords from one address.
//!
//! Run: `cargo bench -p tenancy-tests --bench noisy_neighbour`
//! (env: ROUNDS=5 SECONDS=5 CONCURRENCY_B=8 FLOOD=32 SLOW=64 LOGIN_FLOOD=8).
//! Prints each round and the medians: B's throughput under the flood as a
//! ratio of B alone (goal >= 0.8) and its p99 as a multiple (goal <= 2).
//! Plans: A is on `A_PLAN` (default `free`, the plan tenants created through
//! the admin API start on: 120 API requests a minute), B on `B_PLAN`
//! (default `enterprise`: no API limit); `none` leaves a tenant without a
//! plan, as the CLI creates it.
//! The service runs with its default limits except the per-user budget
//! (`USER_BUDGET` requests per minute, default 0: off). B is one user
//! driven as fast as it is answered, far beyond any per-user budget, so
//! with budgets on B itself is throttled; off, the run measures what the
//! database share and the other limits hold against a flood of admitted work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tenancy_server::config::Limits;
use tenancy_tests::load::{board_with_tasks, load};
use tenancy_tests::server::{Options, TestApp, ALICE, BOB, DAVE, ERIN, GUS, ROOT};
use tenancy_tests::{env_or, median};
use tokio::io::AsyncWriteExt;

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Tenant A's flood until `stop`.
fn flood(
    app: &TestApp,
    tokens: &[String],
    board: &str,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let (flood, slow, logins) = (
        env_or("FLOOD", 32) as usize,
        env_or("SLOW", 64) as usize,
        env_or("LOGIN_FLOOD", 8) as usize,
    );
    let client = reqwest::Client::new();
    for i in 0..flood {
        let (client, stop) = (client.clone(), stop.clone());
        let url = app.url(&format!("/api/boards/{board}/tasks"));
        let token = tokens[i % tokens.len()].clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = client.get(&url).bearer_auth(&token).send().await {
                    let _ = r.bytes().await;
                }
            }
        }));
    }
    for i in 0..slow {
        let (addr, stop) = (app.addr, stop.clone());
        let token = tokens[i % tokens.len()].clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                    continue;
                };
                let head = format!(
                    "POST /api/chat/sessions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
                     Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                // A byte a second until the server gives up on us.
                while !stop.load(Ordering::Relaxed) && stream.write_all(b" ").await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
    }
    // The login flood comes from an address of its own (its lockout must
    // not outlive the run for the address the benchmark itself logs in from).
    let [_, a, b, c, ..] = *uuid::Uuid::new_v4().as_bytes();
    let flood_address = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, a, b, c.max(2)));
    let login_client = reqwest::Client::builder()
        .local_address(flood_address)
        .build()
        .unwrap_or_else(|_| client.clone());
    for _ in 0..logins {
        let (client, stop) = (login_client.clone(), stop.clone());
        let url = app.url("/auth/token");
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = client
                    .post(&url)
                    .json(&json!({"email": ALICE, "password": "not the password"}))
                    .send()
                    .await;
            }
        }));
    }
    tasks
}

#[tokio::main]
async fn main() -> BenchResult {
    let rounds = env_or("ROUNDS", 5);
    let seconds = env_or("SECONDS", 5);
    let concurrency = env_or("CONCURRENCY_B", 8) as usize;
    let plan =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let (a_plan, b_plan) = (plan("A_PLAN", "free"), plan("B_PLAN", "enterprise"));
    let app = TestApp::spawn_with(Options {
        limits: Limits {
            user_requests_per_minute: env_or("USER_BUDGET", 0) as u32,
            ..Limits::DEFAULT
        },
        ..Options::default()
    })
    .await?;
    let gus = app.login(GUS).await?;
    let b_board = board_with_tasks(&app, &gus, 20, &"x".repeat(200)).await?;
    let mut acme = Vec::new();
    for email in [ALICE, BOB, DAVE, ERIN] {
        acme.push(app.login(email).await?);
    }
    let a_board = board_with_tasks(&app, &acme[0], 500, &"x".repeat(200)).await?;
    // Plans once the data is seeded (the free plan's API limit would stop it).
    let root = app.login(ROOT).await?;
    for (tenant, plan) in [(app.acme, &a_plan), (app.globex, &b_plan)] {
        if plan.as_str() != "none" {
            let (status, body) = app
                .call(
                    reqwest::Method::PUT,
                    &format!("/api/admin/tenants/{tenant}"),
                    Some(&root),
                    &[],
                    Some(json!({ "plan": plan })),
                )
                .await?;
            if status != 200 {
                return Err(format!("plan {plan}: {status} {body}").into());
            }
        }
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let b_url = app.url(&format!("/api/boards/{b_board}/tasks"));

    println!(
        "== {rounds} interleaved rounds, {seconds}s per phase, B: {concurrency} clients; \
         flood: FLOOD={} SLOW={} LOGIN_FLOOD={}; USER_BUDGET={}/min; A_PLAN={} B_PLAN={}",
        env_or("FLOOD", 32),
        env_or("SLOW", 64),
        env_or("LOGIN_FLOOD", 8),
        app.config.limits.user_requests_per_minute,
        a_plan,
        b_plan,
    );
    let (mut solo_rps, mut solo99, mut noisy_rps, mut noisy99) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let solo = load(&client, &b_url, Some(&gus), concurrency, seconds).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flooding = flood(&app, &acme, &a_board, stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let noisy = load(&client, &b_url, Some(&gus), concurrency, seconds).await;
        stop.store(true, Ordering::Relaxed);
        for task in flooding {
            task.abort();
        }
        println!(
            "round {round}: B alone {:.0} req/s p99 {:.2} ms ({} errors) | B under flood {:.0} req/s p99 {:.2} ms ({} errors)",
            solo.rps, solo.p99.as_secs_f64() * 1e3, solo.errors,
            noisy.rps, noisy.p99.as_secs_f64() * 1e3, noisy.errors
        );
        solo_rps.push(solo.rps);
        solo99.push(solo.p99.as_secs_f64() * 1e3);
        noisy_rps.push(noisy.rps);
        noisy99.push(noisy.p99.as_secs_f64() * 1e3);
        // Let the flood's connections and budgets drain before the next round.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (s, n, s99, n99) = (
        median(solo_rps),
        median(noisy_rps),
        median(solo99),
        median(noisy99),
    );
    println!("\nmedian B alone:       {s:.0} req/s, p99 {s99:.2} ms");
    println!("median B under flood: {n:.0} req/s, p99 {n99:.2} ms");
    println!(
        "throughput ratio = {:.3} (goal >= 0.8); p99 ratio = {:.2} (goal <= 2)",
        n / s,
        n99 / s99
    );
    Ok(())
}
