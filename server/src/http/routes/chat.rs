//! Chat: sessions and messages of the caller, in the current tenant, and the
//! WebSocket that delivers them live.
//!
//! Each session and message belongs to one user; besides the tenant policy,
//! a restrictive policy in the database limits every query to the caller's
//! own rows, so these handlers never filter by user or tenant. Sending
//! writes the message; a trigger writes its outbox row in the same
//! transaction, and the relay publishes it to `messages:{tenant_id}`.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::messaging::hub::{Outgoing, Registration};
use crate::error::{AppError, AppResult};
use crate::http::auth::AuthUser;
use crate::http::extract::{AppJson, AppPath, AppQuery};
use crate::http::routes::valid_name;
use crate::http::routes::Routes;
use crate::http::tenant::{Db, Tenant};
use crate::state::AppState;

/// Longest message, in characters (the database checks it too).
pub const MAX_CONTENT_CHARS: usize = 4000;

pub fn router() -> Routes {
    Routes::default()
        .routes(routes!(list_sessions, create_session))
        .routes(routes!(list_messages))
        .routes(routes!(send))
        .routes(routes!(websocket))
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Session {
    id: Uuid,
    user_id: Uuid,
    title: String,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ChatMessage {
    id: Uuid,
    tenant_id: Uuid,
    session_id: Uuid,
    user_id: Uuid,
    content: String,
    created_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
}

const MESSAGE_COLUMNS: &str =
    "id, tenant_id, session_id, user_id, content, created_at, processed_at";

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    title: Option<String>,
}

#[utoipa::path(post, path = "/api/chat/sessions", tag = "messaging",
    request_body(content = CreateSession, description = "An optional title (empty if absent)"),
    responses((status = 201, description = "The caller's new session", body = Session)))]
async fn create_session(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<CreateSession>,
) -> AppResult<(StatusCode, Json<Session>)> {
    let title = match body.title.as_deref() {
        Some(t) => valid_name("title", t, 200)?,
        None => "",
    };
    let mut db = db.lock().await?;
    // Chat is every member's.
    let decided = crate::http::tenant::decide::as_member(&state, &tenant, &mut db).await?;
    let session = sqlx::query_as(
        "INSERT INTO app.chat_sessions (user_id, title) VALUES ($1, $2)
         RETURNING id, user_id, title, created_at",
    )
    .bind(tenant.user_id)
    .bind(title)
    .fetch_one(db.conn(decided)?)
    .await?;
    Ok((StatusCode::CREATED, Json(session)))
}

#[utoipa::path(get, path = "/api/chat/sessions", tag = "messaging",
    responses((status = 200, description = "The caller's own sessions in this tenant, oldest first",
        body = [Session])))]
async fn list_sessions(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
) -> AppResult<Json<Vec<Session>>> {
    let mut db = db.lock().await?;
    // Chat is every member's.
    let decided = crate::http::tenant::decide::as_member(&state, &tenant, &mut db).await?;
    let rows = sqlx::query_as(
        "SELECT id, user_id, title, created_at FROM app.chat_sessions ORDER BY created_at, id",
    )
    .fetch_all(db.conn(decided)?)
    .await?;
    Ok(Json(rows))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListMessages {
    /// At most this many (1 to 500, default 100).
    limit: Option<i64>,
    /// Only messages after this one (a cursor: the last id of the previous page).
    after: Option<Uuid>,
}

#[utoipa::path(get, path = "/api/chat/sessions/{id}/messages", tag = "messaging",
    params(("id" = Uuid, Path, description = "Session (one of the caller's own)"), ListMessages),
    responses((status = 200, description = "A page of the session's messages, oldest first",
        body = [ChatMessage])))]
async fn list_messages(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppPath(session): AppPath<Uuid>,
    AppQuery(query): AppQuery<ListMessages>,
) -> AppResult<Json<Vec<ChatMessage>>> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(AppError::Validation(
            "limit must be between 1 and 500".to_owned(),
        ));
    }
    let mut db = db.lock().await?;
    // Chat is every member's.
    let decided = crate::http::tenant::decide::as_member(&state, &tenant, &mut db).await?;
    if !crate::http::routes::exists(db.conn(decided)?, "app.chat_sessions", session).await? {
        return Err(AppError::NotFound("Session"));
    }
    let after = match query.after {
        None => None,
        Some(id) => Some(
            sqlx::query_as::<_, (DateTime<Utc>, Uuid)>(
                "SELECT created_at, id FROM app.messages WHERE id = $1 AND session_id = $2",
            )
            .bind(id)
            .bind(session)
            .fetch_optional(db.conn(decided)?)
            .await?
            .ok_or_else(|| {
                AppError::Validation("after must be a message of this session".to_owned())
            })?,
        ),
    };
    let rows = sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM app.messages
         WHERE session_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
         ORDER BY created_at, id LIMIT $4"
    ))
    .bind(session)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(db.conn(decided)?)
    .await?;
    Ok(Json(rows))
}

/// A message as sent: the seed's payload. `tenant_id` and `user_id` may be
/// given; they must then be the caller's own.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SendMessage {
    session_id: Uuid,
    content: String,
    tenant_id: Option<Uuid>,
    user_id: Option<Uuid>,
}

fn valid_content(content: &str) -> AppResult<&str> {
    if content.trim().is_empty() {
        return Err(AppError::Validation("content must not be empty".to_owned()));
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(AppError::Validation(format!(
            "content must be at most {MAX_CONTENT_CHARS} characters"
        )));
    }
    if content.contains('\0') {
        return Err(AppError::Validation(
            "content must not contain NUL characters".to_owned(),
        ));
    }
    Ok(content)
}

/// Counts one message against the caller's per-minute budget.
async fn rate_limit(state: &AppState, tenant: &Tenant) -> AppResult<()> {
    match i32::try_from(state.config.message_rate_per_minute) {
        Ok(0) => Ok(()),
        Ok(limit) => {
            let key = format!("ratelimit:messages:{{{}}}:{}", tenant.id, tenant.user_id);
            crate::http::tenant::rate_limit(state, &key, limit, "message_rate").await
        }
        Err(_) => Ok(()),
    }
}

#[utoipa::path(post, path = "/api/messages", tag = "messaging",
    request_body(content = SendMessage,
        description = "`content`: 1 to 4000 characters, not blank; the session must be one of \
            the caller's own. Counted against the caller's per-minute message budget."),
    responses((status = 201, description = "Stored; delivered live to the caller's WebSockets",
        body = ChatMessage)))]
async fn send(
    State(state): State<AppState>,
    tenant: Tenant,
    db: Db,
    AppJson(body): AppJson<SendMessage>,
) -> AppResult<(StatusCode, Json<ChatMessage>)> {
    if body.tenant_id.is_some_and(|t| t != tenant.id) {
        return Err(AppError::Forbidden(
            "tenant_id does not match the request's tenant",
        ));
    }
    if body.user_id.is_some_and(|u| u != tenant.user_id) {
        return Err(AppError::Forbidden("Messages can only be sent as yourself"));
    }
    let content = valid_content(&body.content)?;
    rate_limit(&state, &tenant).await?;
    let mut db = db.lock().await?;
    // Chat is every member's.
    let decided = crate::http::tenant::decide::as_member(&state, &tenant, &mut db).await?;
    // Another user's session is as invisible as one that does not exist.
    if !crate::http::routes::exists(db.conn(decided)?, "app.chat_sessions", body.session_id).await?
    {
        return Err(AppError::NotFound("Session"));
    }
    let message = sqlx::query_as(&format!(
        "INSERT INTO app.messages (session_id, user_id, content) VALUES ($1, $2, $3)
         RETURNING {MESSAGE_COLUMNS}"
    ))
    .bind(body.session_id)
    .bind(tenant.user_id)
    .bind(content)
    .fetch_one(db.conn(decided)?)
    .await?;
    Ok((StatusCode::CREATED, Json(message)))
}

/// `GET /api/ws`: authenticated and tenant-resolved like any request (401,
/// 400, 403, 404 before the upgrade); then the caller's own messages in
/// this tenant, live, until the session ends.
#[utoipa::path(get, path = "/api/ws", tag = "messaging",
    responses((status = 101, description = "Switching Protocols: a WebSocket. The server sends \
        each of the caller's own new messages in this tenant as a text frame \
        `{\"type\": \"message\", \"message\": {message_id, tenant_id, user_id, session_id, \
        content, created_at}}`. Client text is ignored; pings are answered. The server closes \
        with 4001 when the session ends or the caller is no longer a member, 1013 when the \
        session cannot be verified, 1008 when the client reads too slowly.")))]
async fn websocket(
    State(state): State<AppState>,
    tenant: Tenant,
    AuthUser(claims): AuthUser,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> AppResult<Response> {
    let upgrade = upgrade.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let mut streams = state.streams.clone();
    let registration = state.hub.register(&mut streams, tenant.id, &claims).await?;
    Ok(upgrade.on_upgrade(move |socket| serve_socket(socket, registration)))
}

async fn serve_socket(mut socket: WebSocket, mut registration: Registration) {
    loop {
        tokio::select! {
            outgoing = registration.rx.recv() => match outgoing {
                Some(Outgoing::Message(message)) => {
                    let text = serde_json::json!({"type": "message", "message": message}).to_string();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(Outgoing::Close(code, reason)) => {
                    let frame = CloseFrame { code, reason: reason.into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    return;
                }
                None => {
                    let frame = CloseFrame { code: crate::domain::messaging::hub::CLOSE_TOO_SLOW, reason: "too slow".into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                // Pings are answered by the protocol layer; client text is ignored.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_rules() {
        assert!(valid_content("hi").is_ok());
        assert!(valid_content("  \n ").is_err());
        assert!(valid_content("").is_err());
        assert!(valid_content("a\0b").is_err());
        assert!(valid_content(&"é".repeat(MAX_CONTENT_CHARS)).is_ok());
        assert!(valid_content(&"é".repeat(MAX_CONTENT_CHARS + 1)).is_err());
    }
}
