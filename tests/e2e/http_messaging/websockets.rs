//! WebSockets: the handshake needs a valid token; each user gets their own
//! messages in their own tenant; revocation, removal and suspension close
//! the socket.

use super::*;

pub(super) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(super) async fn connect_ws(
    app: &TestApp,
    token: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{}/api/ws", app.addr).into_client_request()?;
    if let Some(token) = token {
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.headers_mut().insert("authorization", value);
        }
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// Message contents received within `wait`.
pub(super) async fn received(socket: &mut Socket, wait: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, socket.next()).await {
        if let WsMessage::Text(text) = frame {
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            got.push(
                value["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    got
}

#[tokio::test]
async fn the_websocket_handshake_needs_a_valid_token() -> TestResult {
    let app = TestApp::spawn().await?;
    for token in [None, Some("not-a-jwt")] {
        match connect_ws(&app, token).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{token:?}")
            }
            other => panic!(
                "expected a 401 before the upgrade, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    // Browsers pass the token as a query parameter.
    let alice = app.login(ALICE).await?;
    let request = format!("ws://{}/api/ws?access_token={alice}", app.addr).into_client_request()?;
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    socket.send(WsMessage::Ping(vec![1].into())).await?;
    Ok(())
}

#[tokio::test]
async fn websockets_deliver_only_the_users_own_messages_in_their_own_tenant() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let bob = app.login(BOB).await?;
    let gus = app.login(GUS).await?;
    let mut alice_ws = connect_ws(&app, Some(&alice)).await?;
    let mut bob_ws = connect_ws(&app, Some(&bob)).await?;
    let mut gus_ws = connect_ws(&app, Some(&gus)).await?;
    let a = new_session(&app, &alice).await?;
    let b = new_session(&app, &bob).await?;
    let g = new_session(&app, &gus).await?;
    send(&app, &alice, a, "alice 1").await?;
    send(&app, &bob, b, "bob 1").await?;
    send(&app, &gus, g, "gus 1").await?;
    send(&app, &alice, a, "alice 2").await?;

    let wait = Duration::from_secs(3);
    let (alice_got, bob_got, gus_got) = tokio::join!(
        received(&mut alice_ws, wait),
        received(&mut bob_ws, wait),
        received(&mut gus_ws, wait)
    );
    assert_eq!(alice_got, ["alice 1", "alice 2"]);
    assert_eq!(bob_got, ["bob 1"], "same tenant, other user: only his own");
    assert_eq!(gus_got, ["gus 1"], "other tenant: only his own");
    Ok(())
}

#[tokio::test]
async fn revoking_the_session_closes_the_websocket() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let mut socket = connect_ws(&app, Some(&alice)).await?;
    let (status, _) = app
        .call(Method::POST, "/auth/logout", Some(&alice), &[], None)
        .await?;
    assert_eq!(status, 204);
    assert_eq!(
        closed_with(&mut socket).await,
        Some(4001),
        "closed with 'session ended'"
    );
    Ok(())
}

/// The close code `socket` gets within 5 s (None: it stayed open).
pub(super) async fn closed_with(socket: &mut Socket) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = socket.next().await {
            if let Ok(WsMessage::Close(frame)) = frame {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test]
async fn removing_a_member_or_suspending_the_tenant_closes_their_websockets() -> TestResult {
    let app = TestApp::spawn().await?;
    let alice = app.login(ALICE).await?;
    let bob = app.login(BOB).await?;
    let gus = app.login(GUS).await?;
    let mut bob_socket = connect_ws(&app, Some(&bob)).await?;
    let mut alice_socket = connect_ws(&app, Some(&alice)).await?;
    let mut gus_socket = connect_ws(&app, Some(&gus)).await?;
    let bob_id = tenancy_tests::server::claims(&bob)["sub"].clone();
    let (status, _) = app
        .delete(
            &format!(
                "/api/tenant/members/{}",
                bob_id.as_str().unwrap_or_default()
            ),
            &alice,
        )
        .await?;
    assert_eq!(status, 204);
    assert_eq!(
        closed_with(&mut bob_socket).await,
        Some(4001),
        "bob's socket"
    );

    // Suspending globex closes its members' sockets; acme's stay open.
    let root = app.login(tenancy_tests::server::ROOT).await?;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/admin/tenants/{}/suspend", app.globex),
            Some(&root),
            &[],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        closed_with(&mut gus_socket).await,
        Some(4001),
        "gus's socket"
    );
    let a = new_session(&app, &alice).await?;
    send(&app, &alice, a, "still here").await?;
    assert_eq!(
        received(&mut alice_socket, Duration::from_secs(5)).await,
        vec!["still here".to_owned()],
        "alice's socket stays open"
    );
    Ok(())
}
