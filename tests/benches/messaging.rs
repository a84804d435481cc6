//! Messaging benchmark: API to stream throughput and end-to-end latency to a
//! WebSocket, for 1 and 100 tenants, each against a baseline in the same run.
//!
//!   Throughput, interleaved per round:
//!     A  POST /api/messages: validation, rate-limit counter in Redis, the
//!        message and its outbox row in one transaction; then the relay
//!        publishes to `messages:{tenant}` (A counts until the outbox drains).
//!     B  POST /api/chat/sessions: the same authenticated, tenant-scoped
//!        write path with one plain INSERT and nothing queued.
//!   Latency: one WebSocket per tenant; each message timed from the start of
//!   its POST to its arrival on the socket (E2E), against the POST's own
//!   round trip (the baseline).
//!
//! Run: `cargo bench -p tenancy-tests --bench messaging`
//! (env: ROUNDS=3 SECONDS=5 CONCURRENCY=16 LATENCY_MESSAGES=400 TENANTS=1,100).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tenancy_tests::server::{Options, TestApp, PASSWORD};
use tenancy_tests::{env_or, median};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone)]
struct Client {
    token: String,
    session: String,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// Sends as fast as `concurrency` clients can for `seconds`; returns successes per second.
async fn load(
    http: &reqwest::Client,
    url: &str,
    clients: &[Client],
    messages: bool,
    concurrency: usize,
    seconds: u64,
) -> (f64, usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let client = clients[i % clients.len()].clone();
        let http = http.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0usize, 0usize);
            while Instant::now() < deadline {
                let body = if messages {
                    json!({"session_id": client.session, "content": "benchmark message"})
                } else {
                    json!({"title": "benchmark"})
                };
                match http
                    .post(&url)
                    .bearer_auth(&client.token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok += 1;
                    }
                    _ => errors += 1,
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    for task in tasks {
        if let Ok((o, e)) = task.await {
            ok += o;
            errors += e;
        }
    }
    (ok as f64 / started.elapsed().as_secs_f64(), ok, errors)
}

async fn pending(app: &TestApp) -> BenchResult<i64> {
    let mut su = app.superuser().await?;
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM app.message_outbox WHERE published_at IS NULL")
            .fetch_one(&mut su)
            .await?,
    )
}

async fn clients(app: &TestApp, tenants: usize) -> BenchResult<Vec<Client>> {
    let mut out = Vec::new();
    for n in 0..tenants {
        let email = format!("owner{n}@bench.test");
        tenancy_server::jobs::ops::create_tenant(
            &app.config,
            &format!("bench{n}"),
            &format!("Bench {n}"),
            &email,
            PASSWORD.to_owned(),
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
        let token = app.login(&email).await?;
        let (_, session) = app
            .post("/api/chat/sessions", &token, json!({"title": "bench"}))
            .await?;
        let session = session["id"].as_str().unwrap_or_default().to_owned();
        out.push(Client { token, session });
    }
    Ok(out)
}

/// Latency of `count` messages from POST to WebSocket, and of the POST alone.
async fn latency(
    app: &TestApp,
    http: &reqwest::Client,
    clients: &[Client],
    count: usize,
) -> BenchResult<(Vec<Duration>, Vec<Duration>)> {
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut readers = Vec::new();
    for client in clients {
        let mut request = format!("ws://{}/api/ws", app.addr).into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {}", client.token).parse()?);
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
        let arrivals = arrivals.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                if let WsMessage::Text(text) = frame {
                    let at = Instant::now();
                    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if let Some(content) = value["message"]["content"].as_str() {
                        arrivals.lock().await.insert(content.to_owned(), at);
                    }
                }
            }
        }));
    }
    // Eight senders, each waiting for its POST before the next: a steady load.
    let sent: Arc<Mutex<Vec<(String, Instant, Duration)>>> = Arc::default();
    let mut senders = Vec::new();
    for s in 0..8 {
        let http = http.clone();
        let url = app.url("/api/messages");
        let clients = clients.to_vec();
        let sent = sent.clone();
        senders.push(tokio::spawn(async move {
            for n in (s..count).step_by(8) {
                let client = &clients[n % clients.len()];
                let content = format!("latency {n}");
                let t0 = Instant::now();
                let ok = http
                    .post(&url)
                    .bearer_auth(&client.token)
                    .json(&json!({"session_id": client.session, "content": content}))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    sent.lock().await.push((content, t0, t0.elapsed()));
                }
            }
        }));
    }
    for s in senders {
        let _ = s.await;
    }
    let sent = sent.lock().await.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().await.len() < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in readers {
        r.abort();
    }
    let arrivals = arrivals.lock().await;
    let mut e2e = Vec::new();
    let mut post = Vec::new();
    for (content, t0, round_trip) in &sent {
        post.push(*round_trip);
        if let Some(at) = arrivals.get(content) {
            e2e.push(at.duration_since(*t0));
        }
    }
    if e2e.len() != sent.len() {
        return Err(format!("{} of {} messages reached a socket", e2e.len(), sent.len()).into());
    }
    e2e.sort();
    post.sort();
    Ok((e2e, post))
}

#[tokio::main]
async fn main() -> BenchResult {
    let rounds = env_or("ROUNDS", 3);
    let seconds = env_or("SECONDS", 5);
    let concurrency = env_or("CONCURRENCY", 16) as usize;
    let latency_messages = env_or("LATENCY_MESSAGES", 400) as usize;
    let tenant_counts: Vec<usize> = std::env::var("TENANTS")
        .unwrap_or_else(|_| "1,100".to_owned())
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();

    let app = TestApp::spawn_with(Options {
        message_rate_per_minute: 0,
        ..Options::default()
    })
    .await?;
    let most = tenant_counts.iter().copied().max().unwrap_or(1);
    let all = clients(&app, most).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let messages_url = app.url("/api/messages");
    let sessions_url = app.url("/api/chat/sessions");

    for tenants in tenant_counts {
        let clients = &all[..tenants];
        println!("\n== {tenants} tenant(s): {rounds} interleaved rounds, {seconds}s per phase, {concurrency} concurrent clients");
        let (mut api, mut stream, mut base) = (vec![], vec![], vec![]);
        for round in 1..=rounds {
            let started = Instant::now();
            let (a_rate, a_ok, a_err) =
                load(&http, &messages_url, clients, true, concurrency, seconds).await;
            while pending(&app).await? > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let to_stream = a_ok as f64 / started.elapsed().as_secs_f64();
            let (b_rate, _, b_err) =
                load(&http, &sessions_url, clients, false, concurrency, seconds).await;
            println!(
                "round {round}: A {a_rate:.0} msg/s accepted, {to_stream:.0} msg/s into the streams ({a_err} errors) | B {b_rate:.0} req/s ({b_err} errors)"
            );
            api.push(a_rate);
            stream.push(to_stream);
            base.push(b_rate);
        }
        let (api, stream, base) = (median(api), median(stream), median(base));
        println!("median A: {api:.0} msg/s accepted by the API, {stream:.0} msg/s API to stream");
        println!("median B: {base:.0} req/s (session create, nothing queued)");
        println!("ratio A(stream)/B = {:.3}", stream / base);

        let (e2e, post) = latency(&app, &http, clients, latency_messages).await?;
        let (e50, e99, p50, p99) = (
            percentile(&e2e, 0.50),
            percentile(&e2e, 0.99),
            percentile(&post, 0.50),
            percentile(&post, 0.99),
        );
        println!(
            "latency, {} messages: POST to WebSocket p50 {e50:.2} ms p99 {e99:.2} ms | POST round trip p50 {p50:.2} ms p99 {p99:.2} ms | ratio p50 {:.2}",
            e2e.len(),
            e50 / p50
        );
    }
    Ok(())
}
