//! Attacks on shared resources: a tenant member, an outsider (a user of
//! another tenant) or an anonymous client trying to degrade other tenants.
//! Loopback only, bounded in count and time. Clients that must not share a
//! budget connect from addresses of their own (127.x.y.z).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde_json::json;
use tenancy_server::config::Limits;
use tenancy_tests::server::{Options, TestApp, ALICE, BOB, GUS, METRICS_TOKEN, PASSWORD};
use tenancy_tests::TestResult;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

fn spawn_with(limits: Limits) -> impl std::future::Future<Output = TestResult<TestApp>> {
    TestApp::spawn_with(Options {
        limits,
        ..Options::default()
    })
}

/// A loopback address no other test (or earlier run) uses.
fn fresh_address() -> IpAddr {
    let [_, a, b, c, ..] = *Uuid::new_v4().as_bytes();
    IpAddr::V4(Ipv4Addr::new(127, a, b, c.max(2)))
}

fn client_from(address: IpAddr) -> TestResult<reqwest::Client> {
    Ok(reqwest::Client::builder().local_address(address).build()?)
}

async fn login_from(
    app: &TestApp,
    client: &reqwest::Client,
    email: &str,
    password: &str,
) -> TestResult<(u16, Option<String>)> {
    let response = client
        .post(app.url("/auth/token"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, retry))
}

/// Reads until the server closes the connection or `within` passes;
/// returns what it sent and whether it closed.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        match tokio::time::timeout(deadline - Instant::now(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&seen).into(), false)
}

mod tenant_member {
    use super::*;

    #[tokio::test]
    async fn holds_the_pool_with_slow_bodies() -> TestResult {
        // The pool has 8 connections; bob opens 3x as many requests and
        // trickles their bodies.
        let app = spawn_with(Limits {
            body_timeout_secs: 3,
            ..Limits::UNTHROTTLED
        })
        .await?;
        let bob = app.login(BOB).await?;
        let mut slow = Vec::new();
        for _ in 0..24 {
            let mut stream = TcpStream::connect(app.addr).await?;
            stream
                .write_all(
                    format!(
                        "POST /api/chat/sessions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {bob}\r\n\
                         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"title\":"
                    )
                    .as_bytes(),
                )
                .await?;
            slow.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Another tenant, and a login, go on as usual meanwhile.
        let gus = app.login(GUS).await?;
        // (Before bodies were read first, these got 503 once the pool's
        // acquire timeout passed.)
        for _ in 0..10 {
            let (status, body) = app.get("/api/workspaces", &gus).await?;
            assert_eq!(status, 200, "{body}");
        }
        let (status, body) = app.get("/readyz", &gus).await?;
        assert_eq!(status, 200, "{body}");
        // The slow requests end with 408 once their time is up.
        let (answer, closed) = until_closed(&mut slow[0], Duration::from_secs(6)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(closed || answer.contains("request_timeout"), "{answer:?}");
        Ok(())
    }

    #[tokio::test]
    async fn takes_the_whole_pool_with_blocked_transactions() -> TestResult {
        // Acme's share is 1 transaction, and it may borrow while a quarter
        // of the pool (8) stays free: 6 at most. A lock held elsewhere keeps
        // acme's requests inside their transactions.
        let app = spawn_with(Limits {
            tenant_db_share: 1,
            tenant_queue_ms: 300,
            ..Limits::UNTHROTTLED
        })
        .await?;
        let alice = app.login(ALICE).await?;
        let gus = app.login(GUS).await?;
        let mut su = app.superuser().await?;
        let mut setup = sqlx::Connection::begin(&mut su).await?;
        sqlx::query("SELECT set_config('tenancy.tenant_id', $1, true)")
            .bind(app.acme.to_string())
            .execute(&mut *setup)
            .await?;
        sqlx::query("INSERT INTO app.tenant_plans (tenant_id, plan) VALUES ($1, 'pro') ON CONFLICT DO NOTHING")
            .bind(app.acme)
            .execute(&mut *setup)
            .await?;
        setup.commit().await?;
        // The plan's limit trigger locks this row on every new workspace.
        let mut lock = sqlx::Connection::begin(&mut su).await?;
        sqlx::query("SELECT 1 FROM app.tenant_plans WHERE tenant_id = $1 FOR UPDATE")
            .bind(app.acme)
            .execute(&mut *lock)
            .await?;
        let mut blocked = Vec::new();
        for i in 0..8 {
            let (app_url, client, token) = (
                app.url("/api/workspaces"),
                app.client.clone(),
                alice.clone(),
            );
            blocked.push(tokio::spawn(async move {
                let response = client
                    .post(app_url)
                    .bearer_auth(token)
                    .json(&json!({"name": format!("blocked {i}")}))
                    .send()
                    .await?;
                let retry = response.headers().get("retry-after").is_some();
                Ok::<_, reqwest::Error>((response.status().as_u16(), retry))
            }));
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        for _ in 0..5 {
            let (status, body) = app.get("/api/workspaces", &gus).await?;
            assert_eq!(status, 200, "{body}");
        }
        lock.rollback().await?;
        let mut outcomes = Vec::new();
        for task in blocked {
            outcomes.push(task.await??);
        }
        outcomes.sort();
        let mut expected = vec![(201, false); 6];
        expected.extend([(503, true); 2]);
        assert_eq!(
            outcomes, expected,
            "six in acme's share and what it may borrow, the others turned away with Retry-After"
        );
        let (status, body) = app
            .post("/api/workspaces", &alice, json!({"name": "after"}))
            .await?;
        assert_eq!(status, 201, "{body}");

        // The operator sees it: acme's bucket was turned away, by name of
        // its bucket only.
        let response = app
            .client
            .get(app.url("/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 200);
        let text = response.text().await?;
        let bucket = tenancy_server::metrics::bucket(app.acme);
        assert!(
            text.lines()
                .any(|l| l.starts_with("tenancy_throttled_total")
                    && l.contains(&format!("bucket=\"{bucket}\""))
                    && l.contains("reason=\"tenant_share\"")),
            "{text}"
        );
        assert!(text.contains("route=\"/api/workspaces\""), "{text}");
        assert!(text.contains("tenancy_db_pool_connections"), "{text}");
        assert!(!text.contains(&app.acme.to_string()));
        let (status, _) = app.get("/metrics", &alice).await?;
        assert_eq!(status, 401, "an access token is not the metrics token");
        Ok(())
    }

    #[tokio::test]
    async fn spends_more_than_its_own_request_budget() -> TestResult {
        let app = spawn_with(Limits {
            user_requests_per_minute: 20,
            ..Limits::UNTHROTTLED
        })
        .await?;
        let bob = app.login(BOB).await?;
        let mut statuses = Vec::new();
        for _ in 0..25 {
            statuses.push(app.get("/api/workspaces", &bob).await?.0);
        }
        assert_eq!(&statuses[..20], &[200; 20]);
        assert_eq!(&statuses[20..], &[429; 5]);
        // Another member of the same tenant has a budget of their own.
        let (status, _) = app.get("/api/workspaces", &app.login(ALICE).await?).await?;
        assert_eq!(status, 200);
        Ok(())
    }

    #[tokio::test]
    async fn spends_more_than_a_large_budget_counted_in_batches() -> TestResult {
        // A budget of 300 is counted in Redis 3 requests at a time: at most
        // 2 more than the budget get through one instance, never more.
        let app = spawn_with(Limits {
            user_requests_per_minute: 300,
            ..Limits::UNTHROTTLED
        })
        .await?;
        let bob = app.login(BOB).await?;
        let mut statuses = Vec::new();
        for _ in 0..310 {
            statuses.push(app.get("/api/workspaces", &bob).await?.0);
        }
        let served = statuses.iter().filter(|s| **s == 200).count();
        assert!((300..=302).contains(&served), "{served} served");
        assert_eq!(&statuses[..300], &[200; 300]);
        assert_eq!(&statuses[305..], &[429; 5]);
        let used: i64 = {
            let client = redis::Client::open(
                std::env::var("TENANCY_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            )?;
            let mut redis = client.get_multiplexed_async_connection().await?;
            let bob_id = tenancy_tests::server::claims(&bob)["sub"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            redis::cmd("GET")
                .arg(format!("throttle:user:{bob_id}"))
                .query_async(&mut redis)
                .await?
        };
        assert!(used >= 300, "Redis counted {used}");
        Ok(())
    }

    #[tokio::test]
    async fn spends_its_owners_budget_with_a_revoked_token() -> TestResult {
        let app = spawn_with(Limits {
            user_requests_per_minute: 4,
            ..Limits::UNTHROTTLED
        })
        .await?;
        let (stolen, own) = (app.login(BOB).await?, app.login(BOB).await?);
        // The logout is the first of bob's four requests this minute.
        let (status, _) = app
            .call(
                reqwest::Method::POST,
                "/auth/logout",
                Some(&stolen),
                &[],
                None,
            )
            .await?;
        assert_eq!(status, 204);
        for _ in 0..5 {
            assert_eq!(app.get("/api/workspaces", &stolen).await?.0, 401);
        }
        // The revoked token's attempts spent none of the other three.
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(app.get("/api/workspaces", &own).await?.0);
        }
        assert_eq!(statuses, [200, 200, 200, 429]);
        Ok(())
    }

    #[tokio::test]
    async fn retries_at_once_past_its_budget() -> TestResult {
        let app = spawn_with(Limits {
            user_requests_per_minute: 2,
            throttle_delay_ms: 1500,
            max_in_flight: 1,
            ..Limits::UNTHROTTLED
        })
        .await?;
        let (bob, alice) = (app.login(BOB).await?, app.login(ALICE).await?);
        for _ in 0..2 {
            assert_eq!(app.get("/api/workspaces", &bob).await?.0, 200);
        }
        // The refusal comes late...
        let started = Instant::now();
        let refused = tokio::spawn({
            let (client, url, bob) = (app.client.clone(), app.url("/api/workspaces"), bob.clone());
            async move { client.get(url).bearer_auth(bob).send().await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ...and holds no request slot meanwhile: the instance takes one
        // request at a time and would answer another 503 at once.
        let (status, _) = app.get("/api/workspaces", &alice).await?;
        assert_eq!(status, 200);
        assert!(!refused.is_finished(), "alice was served during the delay");
        let response = refused.await??;
        assert_eq!(response.status().as_u16(), 429);
        assert!(
            started.elapsed() >= Duration::from_millis(1400),
            "the 429 was held back"
        );
        tenancy_tests::server::assert_retry_after(&response);
        // Further attempts are refused by the instance without counting
        // them again in Redis.
        for _ in 0..2 {
            assert_eq!(app.get("/api/workspaces", &bob).await?.0, 429);
        }
        let sub = tenancy_tests::server::claims(&bob)["sub"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut redis = redis::Client::open(app.config.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let counted: i64 = redis::cmd("GET")
            .arg(format!("throttle:user:{sub}"))
            .query_async(&mut redis)
            .await?;
        assert_eq!(counted, 3);
        Ok(())
    }

    #[tokio::test]
    async fn keeps_sending_past_the_tenants_api_budget() -> TestResult {
        let app = spawn_with(Limits::UNTHROTTLED).await?;
        let root = app.login(tenancy_tests::server::ROOT).await?;
        let (status, body) = app
            .call(
                reqwest::Method::PUT,
                &format!("/api/admin/tenants/{}", app.acme),
                Some(&root),
                &[],
                Some(json!({"plan": "pro", "limits": {"api_requests_per_minute": 3}})),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        let bob = app.login(BOB).await?;
        let mut statuses = Vec::new();
        for _ in 0..7 {
            statuses.push(app.get("/api/workspaces", &bob).await?.0);
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429]);
        // Once the instance knows the budget is spent, acme's excess is
        // refused before any round trip: counted once, not per attempt.
        let mut redis = redis::Client::open(app.config.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let counted: i64 = redis::cmd("GET")
            .arg(format!("ratelimit:api:{{{}}}", app.acme))
            .query_async(&mut redis)
            .await?;
        assert_eq!(counted, 4);
        // Another tenant is not held to acme's budget.
        let (status, _) = app.get("/api/workspaces", &app.login(GUS).await?).await?;
        assert_eq!(status, 200);
        Ok(())
    }

    #[tokio::test]
    async fn lists_a_whole_board_in_one_request() -> TestResult {
        let app = spawn_with(Limits::UNTHROTTLED).await?;
        let alice = app.login(ALICE).await?;
        let (_, ws) = app
            .post("/api/workspaces", &alice, json!({"name": "Big"}))
            .await?;
        let (_, board) = app
            .post(
                &format!("/api/workspaces/{}/boards", ws["id"].as_str().unwrap_or("")),
                &alice,
                json!({"name": "Big"}),
            )
            .await?;
        let path = format!("/api/boards/{}/tasks", board["id"].as_str().unwrap_or(""));
        for i in 0..130 {
            let (status, body) = app
                .post(&path, &alice, json!({"title": format!("task {i}")}))
                .await?;
            assert_eq!(status, 201, "{body}");
        }
        // One request does a bounded amount of work: pages of 100 by default.
        let (status, first) = app.get(&path, &alice).await?;
        assert_eq!(status, 200);
        let first = first.as_array().cloned().unwrap_or_default();
        assert_eq!(first.len(), 100);
        let last = first[99]["id"].as_str().unwrap_or_default();
        let (_, rest) = app.get(&format!("{path}?after={last}"), &alice).await?;
        assert_eq!(rest.as_array().map(Vec::len), Some(30));
        assert_eq!(rest[0]["title"], "task 100");
        for bad in ["limit=0", "limit=501", "after=not-a-uuid"] {
            let (status, _) = app.get(&format!("{path}?{bad}"), &alice).await?;
            assert!(status == 422 || status == 400, "{bad}: {status}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn opens_more_websockets_than_its_cap() -> TestResult {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let app = spawn_with(Limits {
            ws_per_user: 2,
            ..Limits::UNTHROTTLED
        })
        .await?;
        let bob = app.login(BOB).await?;
        let open = |token: String| {
            let url = format!("ws://{}/api/ws", app.addr);
            async move {
                let mut request = url.into_client_request()?;
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    tokio_tungstenite::connect_async(request).await,
                )
            }
        };
        let first = open(bob.clone()).await?.map_err(|e| e.to_string())?;
        let second = open(bob.clone()).await?.map_err(|e| e.to_string())?;
        match open(bob.clone()).await? {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 429)
            }
            other => panic!("third socket: {:?}", other.map(|_| "opened")),
        }
        // Another user of the tenant is not held to bob's cap.
        let _alice = open(app.login(ALICE).await?)
            .await?
            .map_err(|e| e.to_string())?;
        drop((first, second));
        Ok(())
    }
}

mod outsider {
    use super::*;

    #[tokio::test]
    async fn floods_another_tenants_audit_trail() -> TestResult {
        let app = spawn_with(Limits::UNTHROTTLED).await?;
        let gus = app.login(GUS).await?;
        let long_path = format!("/api/workspaces/{}", "x".repeat(4000));
        for i in 0..120 {
            let path = if i % 2 == 0 {
                "/api/workspaces"
            } else {
                long_path.as_str()
            };
            let (status, _) = app
                .call(
                    reqwest::Method::GET,
                    path,
                    Some(&gus),
                    &[("x-tenant-id", &app.acme.to_string())],
                    None,
                )
                .await?;
            assert_eq!(status, 403);
        }
        let mut su = app.superuser().await?;
        let rows: Vec<(Option<String>, serde_json::Value)> = sqlx::query_as(
            "SELECT target, details FROM app.audit_events
             WHERE tenant_id = $1 AND action = 'tenant.access_denied' ORDER BY id",
        )
        .bind(app.acme)
        .fetch_all(&mut su)
        .await?;
        let counts: Vec<i64> = rows
            .iter()
            .filter_map(|(_, d)| d["count"].as_i64())
            .collect();
        assert_eq!(counts, vec![1, 10, 100], "{rows:?}");
        assert!(rows
            .iter()
            .all(|(target, _)| target.as_deref().is_some_and(|t| t.len() <= 200)));
        Ok(())
    }
}

mod anonymous_client {
    use super::*;

    #[tokio::test]
    async fn guesses_a_password_then_locks_its_owner_out() -> TestResult {
        let app = spawn_with(Limits {
            logins_per_address: 100,
            login_failures: 5,
            ..Limits::UNTHROTTLED
        })
        .await?;
        let attacker = client_from(fresh_address())?;
        let mut statuses = Vec::new();
        for _ in 0..8 {
            statuses.push(login_from(&app, &attacker, ALICE, "wrong password").await?);
        }
        assert!(statuses[..5].iter().all(|(s, _)| *s == 401), "{statuses:?}");
        assert!(
            statuses[5..].iter().all(|(s, r)| *s == 429 && r.is_some()),
            "{statuses:?}"
        );
        // Even the right password is no use from the attacker's address...
        let (status, _) = login_from(&app, &attacker, ALICE, PASSWORD).await?;
        assert_eq!(status, 429);
        // ...while alice, from her own, logs in.
        let alice = client_from(fresh_address())?;
        let (status, _) = login_from(&app, &alice, ALICE, PASSWORD).await?;
        assert_eq!(status, 200);
        Ok(())
    }

    #[tokio::test]
    async fn floods_logins_from_one_address() -> TestResult {
        let app = spawn_with(Limits {
            logins_per_address: 10,
            login_failures: 0,
            ..Limits::UNTHROTTLED
        })
        .await?;
        let attacker = client_from(fresh_address())?;
        let mut statuses = Vec::new();
        for i in 0..14 {
            let email = format!("nobody-{i}@example.test");
            statuses.push(login_from(&app, &attacker, &email, "guess").await?.0);
        }
        assert_eq!(&statuses[..10], &[401; 10]);
        assert_eq!(&statuses[10..], &[429; 4]);
        let alice = client_from(fresh_address())?;
        let (status, _) = login_from(&app, &alice, ALICE, PASSWORD).await?;
        assert_eq!(status, 200, "a real user from elsewhere still logs in");
        Ok(())
    }

    #[tokio::test]
    async fn holds_connections_with_half_sent_headers() -> TestResult {
        let app = spawn_with(Limits {
            header_timeout_secs: 1,
            max_connections: 8,
            ..Limits::UNTHROTTLED
        })
        .await?;
        let mut held = Vec::new();
        for _ in 0..8 {
            let mut stream = TcpStream::connect(app.addr).await?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await?;
            held.push(stream);
        }
        // Over the cap: closed at once.
        let mut extra = TcpStream::connect(app.addr).await?;
        let (_, closed) = until_closed(&mut extra, Duration::from_secs(2)).await;
        assert!(closed, "a connection over the cap is closed");
        // The half-sent ones are closed once their header time is up...
        for stream in &mut held {
            let (_, closed) = until_closed(stream, Duration::from_secs(5)).await;
            assert!(closed, "half-sent headers still held open");
        }
        // ...and the service answers again.
        let (status, _) = app
            .call(reqwest::Method::GET, "/healthz", None, &[], None)
            .await?;
        assert_eq!(status, 200);
        Ok(())
    }
}
