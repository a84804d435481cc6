//! A closed-loop HTTP load generator for the benchmarks: `concurrency`
//! clients, each sending its next request when the last one is answered.

use std::time::{Duration, Instant};

/// What one phase of load measured.
pub struct Phase {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: usize,
}

/// Sends GET `url` (with `token` as bearer, if any) from `concurrency`
/// clients for `seconds`; successes count, anything else is an error.
pub async fn load(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    concurrency: usize,
    seconds: u64,
) -> Phase {
    let target = vec![(url.to_owned(), token.map(str::to_owned))];
    load_many(client, std::sync::Arc::new(target), concurrency, seconds).await
}

/// As [`load`], over several (URL, bearer token) targets: each client takes
/// them in turn, starting at its own place, so that all are used evenly.
pub async fn load_many(
    client: &reqwest::Client,
    targets: std::sync::Arc<Vec<(String, Option<String>)>>,
    concurrency: usize,
    seconds: u64,
) -> Phase {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let targets = targets.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut next = worker * targets.len().max(1) / concurrency.max(1);
            while Instant::now() < deadline {
                let Some((url, token)) = targets.get(next % targets.len().max(1)) else {
                    break;
                };
                next += 1;
                let t0 = Instant::now();
                let mut request = client.get(url);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(t0.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((latencies, e)) = worker.await {
            all.extend(latencies);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Phase {
        rps: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

/// A new workspace of `token`'s tenant with one board of `tasks` tasks
/// (each with `description`), made through the API; returns the board's id.
pub async fn board_with_tasks(
    app: &crate::server::TestApp,
    token: &str,
    tasks: u64,
    description: &str,
) -> crate::TestResult<String> {
    use serde_json::json;
    let (_, ws) = app
        .post("/api/workspaces", token, json!({"name": "Bench"}))
        .await?;
    let ws = ws["id"].as_str().unwrap_or_default().to_owned();
    let (_, board) = app
        .post(
            &format!("/api/workspaces/{ws}/boards"),
            token,
            json!({"name": "Load"}),
        )
        .await?;
    let board = board["id"].as_str().unwrap_or_default().to_owned();
    for i in 0..tasks {
        let (status, body) = app
            .post(
                &format!("/api/boards/{board}/tasks"),
                token,
                json!({"title": format!("task {i}"), "description": description}),
            )
            .await?;
        if status != 201 {
            return Err(format!("seeding: {status} {body}").into());
        }
    }
    Ok(board)
}
