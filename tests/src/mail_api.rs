//! A real HTTP peer speaking the parts of Postmark's and SendGrid's APIs
//! the service uses (key check, send), recording every mail it accepts.
//! It accepts one key; any other is refused with 401, as the providers do.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::TestResult;

/// A mail the peer accepted: the API path and the JSON body.
pub type Received = Arc<Mutex<Vec<(String, Value)>>>;

pub struct ApiPeer {
    pub port: u16,
    pub received: Received,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ApiPeer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ApiPeer {
    /// The mails accepted so far.
    pub fn mails(&self) -> Vec<(String, Value)> {
        self.received.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Waits up to `secs` seconds for a mail whose body mentions `to`.
    pub async fn mail_to(&self, to: &str, secs: u64) -> Option<(String, Value)> {
        for _ in 0..secs * 10 {
            if let Some(found) = self
                .mails()
                .into_iter()
                .find(|(_, body)| body.to_string().contains(to))
            {
                return Some(found);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        None
    }
}

#[derive(Clone)]
struct Peer {
    key: String,
    received: Received,
}

fn authorized(peer: &Peer, headers: &HeaderMap) -> bool {
    let postmark = headers
        .get("x-postmark-server-token")
        .and_then(|v| v.to_str().ok());
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    postmark.or(bearer) == Some(peer.key.as_str())
}

async fn check(State(peer): State<Peer>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    if authorized(&peer, &headers) {
        (
            StatusCode::OK,
            Json(json!({"Name": "peer", "scopes": ["mail.send"]})),
        )
    } else {
        (StatusCode::UNAUTHORIZED, Json(json!({"ErrorCode": 10})))
    }
}

async fn send(
    State(peer): State<Peer>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&peer, &headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"ErrorCode": 10})));
    }
    if let Ok(mut received) = peer.received.lock() {
        received.push((uri.path().to_owned(), body));
    }
    (
        StatusCode::OK,
        Json(json!({"ErrorCode": 0, "Message": "OK"})),
    )
}

/// Starts a peer on a free port of 127.0.0.1 that accepts `key`.
pub async fn api_peer(key: &str) -> TestResult<ApiPeer> {
    let received = Received::default();
    let peer = Peer {
        key: key.to_owned(),
        received: received.clone(),
    };
    let app = Router::new()
        .route("/server", get(check))
        .route("/v3/scopes", get(check))
        .route("/email", post(send))
        .route("/v3/mail/send", post(send))
        .with_state(peer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(ApiPeer {
        port,
        received,
        server,
    })
}
