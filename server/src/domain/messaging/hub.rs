//! Live delivery to WebSockets: each service instance follows the streams of
//! the tenants that have a socket open on it and hands every entry to the
//! sockets of the entry's own user in the entry's own tenant. Nothing is
//! broadcast: a socket registered for (tenant, user) receives only entries
//! whose stream, tenant and user are all that tenant and that user.
//!
//! Sockets also end with their session: every `ws_session_check_secs` the
//! hub checks every open socket's session in Redis (one MGET) and closes
//! those that were revoked, replaced (tenant switch) or expired. When the
//! check cannot be made, sockets are closed (fail closed) and clients
//! reconnect. The same check closes the sockets of a member removed from a
//! tenant, and of every member of a tenant suspended or deleted
//! ([`evict`]), on every instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{stream_key, tenant_of_key, StreamMessage};
use crate::domain::sessions::AccessClaims;
use crate::error::AppResult;

/// What the hub sends a socket.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Message(StreamMessage),
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Messages buffered per socket; a socket that falls further behind is closed.
const SOCKET_BUFFER: usize = 256;
/// Close codes sent to clients.
pub const CLOSE_SESSION_ENDED: u16 = 4001;
pub const CLOSE_TRY_AGAIN: u16 = 1013;
pub const CLOSE_TOO_SLOW: u16 = 1008;

struct Socket {
    tenant: Uuid,
    user: Uuid,
    session: Uuid,
    jti: Uuid,
    expires_at: u64,
    /// When it opened, in milliseconds since the epoch (see [`evict`]).
    opened_ms: u64,
    tx: mpsc::Sender<Outgoing>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The Redis entry that ends `user`'s sockets in `tenant` (every socket of
/// the tenant with `None`) opened before the time it holds.
fn evicted_key(tenant: Uuid, user: Option<Uuid>) -> String {
    match user {
        Some(user) => format!("ws:evicted:{tenant}:{user}"),
        None => format!("ws:evicted:{tenant}"),
    }
}

/// Closes, on every instance, the sockets open now of `user` in `tenant`
/// (of every user with `None`): a member removed, a tenant suspended or
/// deleted. They close at the next session check (within
/// `ws_session_check_secs`). The entry outlives every socket open now: no
/// socket outlives its access token.
pub async fn evict(state: &crate::AppState, tenant: Uuid, user: Option<Uuid>) -> AppResult<()> {
    let mut redis = state.redis.clone();
    let _: () = redis
        .set_ex(
            evicted_key(tenant, user),
            now_ms(),
            state.keys.access_ttl() + 60,
        )
        .await?;
    Ok(())
}

#[derive(Default)]
struct Inner {
    sockets: HashMap<u64, Socket>,
    /// Last entry id delivered per followed tenant stream.
    cursors: HashMap<Uuid, String>,
}

impl Inner {
    /// Removes a socket; a tenant left without sockets is no longer followed.
    fn take(&mut self, id: u64) -> Option<Socket> {
        let socket = self.sockets.remove(&id)?;
        if !self.sockets.values().any(|s| s.tenant == socket.tenant) {
            self.cursors.remove(&socket.tenant);
        }
        Some(socket)
    }
}

#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    /// Open sockets allowed per user and per tenant (0: no cap).
    limits: (usize, usize),
}

/// A socket's place in the hub; leaving is dropping it.
pub struct Registration {
    hub: Arc<Hub>,
    id: u64,
    pub rx: mpsc::Receiver<Outgoing>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove(&self, id: u64) {
        self.lock().take(id);
    }

    /// A hub that allows `per_user` sockets per user and `per_tenant` per
    /// tenant (0: no cap); one more is refused with 429.
    pub fn with_caps(per_user: usize, per_tenant: usize) -> Self {
        Self {
            limits: (per_user, per_tenant),
            ..Self::default()
        }
    }

    /// Open sockets (for readiness and tests).
    pub fn sockets(&self) -> usize {
        self.lock().sockets.len()
    }

    /// Registers a socket for the caller's user in `tenant`. Done before the
    /// upgrade answers, so that every entry published after the handshake
    /// reaches the socket.
    pub async fn register(
        self: &Arc<Self>,
        streams: &mut redis::aio::ConnectionManager,
        tenant: Uuid,
        claims: &AccessClaims,
    ) -> AppResult<Registration> {
        let (tx, rx) = mpsc::channel(SOCKET_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut start = None;
        let mut inner = loop {
            {
                let inner = self.lock();
                // Followed already, or we know where its stream ends: register
                // now. (The tenant's last socket may have left since we
                // looked, taking the cursor along: then look again.)
                if start.is_some() || inner.cursors.contains_key(&tenant) {
                    break inner;
                }
            }
            let last: StreamRangeReply = streams
                .xrevrange_count(stream_key(tenant), "+", "-", 1)
                .await?;
            start = Some(
                last.ids
                    .first()
                    .map(|e| e.id.clone())
                    .unwrap_or_else(|| "0-0".to_owned()),
            );
        };
        let limits = &self.limits;
        let (mut of_user, mut of_tenant) = (0, 0);
        for socket in inner.sockets.values().filter(|s| s.tenant == tenant) {
            of_tenant += 1;
            of_user += usize::from(socket.user == claims.sub);
        }
        if (limits.0 > 0 && of_user >= limits.0) || (limits.1 > 0 && of_tenant >= limits.1) {
            return Err(crate::error::AppError::RateLimited(5));
        }
        if let Some(start) = start {
            inner.cursors.entry(tenant).or_insert(start);
        }
        inner.sockets.insert(
            id,
            Socket {
                tenant,
                user: claims.sub,
                session: claims.sid,
                jti: claims.jti,
                expires_at: claims.exp,
                opened_ms: now_ms(),
                tx,
            },
        );
        Ok(Registration {
            hub: self.clone(),
            id,
            rx,
        })
    }

    /// Hands entries of `tenant`'s stream to that tenant's sockets of the
    /// entry's user. Returns how many sockets received something.
    fn deliver(&self, tenant: Uuid, last_id: &str, messages: &[StreamMessage]) -> usize {
        let mut inner = self.lock();
        if let Some(cursor) = inner.cursors.get_mut(&tenant) {
            *cursor = last_id.to_owned();
        }
        let mut delivered = 0;
        let mut too_slow = Vec::new();
        for (id, socket) in inner.sockets.iter() {
            if socket.tenant != tenant {
                continue;
            }
            for message in messages.iter().filter(|m| m.user_id == socket.user) {
                match socket.tx.try_send(Outgoing::Message(message.clone())) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        too_slow.push(*id);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
        for id in too_slow {
            if let Some(socket) = inner.take(id) {
                tracing::warn!(tenant = %socket.tenant, user = %socket.user, "closing a socket that fell behind");
                // The buffer is full: dropping the sender ends the socket.
            }
        }
        delivered
    }

    /// Follows the streams of tenants with open sockets until `shutdown`.
    /// Uses its own connection: the reads block.
    pub async fn run_fanout(
        self: Arc<Self>,
        redis_url: String,
        mut shutdown: watch::Receiver<bool>,
    ) {
        const BLOCK: Duration = Duration::from_millis(250);
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            let cursors: Vec<(Uuid, String)> = self
                .lock()
                .cursors
                .iter()
                .map(|(t, c)| (*t, c.clone()))
                .collect();
            if cursors.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let conn = match connection.as_mut() {
                Some(conn) => conn,
                None => match open(&redis_url, BLOCK).await {
                    Ok(conn) => connection.insert(conn),
                    Err(e) => {
                        tracing::warn!(error = %e, "websocket fan-out cannot reach Redis; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            let keys: Vec<String> = cursors.iter().map(|(t, _)| stream_key(*t)).collect();
            let ids: Vec<&str> = cursors.iter().map(|(_, c)| c.as_str()).collect();
            let options = StreamReadOptions::default()
                .count(500)
                .block(BLOCK.as_millis() as usize);
            let read: redis::RedisResult<Option<StreamReadReply>> =
                conn.xread_options(&keys, &ids, &options).await;
            match read {
                Ok(reply) => {
                    backoff = Duration::from_millis(100);
                    for stream in reply.map(|r| r.keys).unwrap_or_default() {
                        let Some(tenant) = tenant_of_key(&stream.key) else {
                            continue;
                        };
                        let Some(last) = stream.ids.last().map(|e| e.id.clone()) else {
                            continue;
                        };
                        let messages: Vec<StreamMessage> = stream
                            .ids
                            .iter()
                            .filter_map(|e| match StreamMessage::from_entry(tenant, &e.map) {
                                Ok(m) => Some(m),
                                Err(err) => {
                                    tracing::error!(stream = %stream.key, entry = %e.id, error = %err, "not delivering a bad entry");
                                    None
                                }
                            })
                            .collect();
                        self.deliver(tenant, &last, &messages);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "websocket fan-out read failed; reconnecting");
                    connection = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Closes sockets whose session ended, every `every`, until `shutdown`.
    pub async fn run_session_checks(
        self: Arc<Self>,
        mut sessions: redis::aio::ConnectionManager,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let open: Vec<(u64, Uuid, Uuid, u64, u64)> = self
                .lock()
                .sockets
                .iter()
                .map(|(id, s)| (*id, s.session, s.jti, s.expires_at, s.opened_ms))
                .collect();
            if open.is_empty() {
                continue;
            }
            // Per socket: its session's current token, its user's eviction
            // in its tenant, its tenant's eviction.
            let keys: Vec<String> = {
                let inner = self.lock();
                open.iter()
                    .flat_map(|(id, sid, ..)| {
                        let (tenant, user) = inner
                            .sockets
                            .get(id)
                            .map(|s| (s.tenant, s.user))
                            .unwrap_or_default();
                        [
                            crate::domain::sessions::session_key(*sid),
                            evicted_key(tenant, Some(user)),
                            evicted_key(tenant, None),
                        ]
                    })
                    .collect()
            };
            let current: redis::RedisResult<Vec<Option<String>>> = sessions.mget(&keys).await;
            let now = tenancy_token::now();
            let evicted_since = |entry: &Option<String>, opened: u64| {
                entry
                    .as_deref()
                    .and_then(|at| at.parse::<u64>().ok())
                    .is_some_and(|at| at >= opened)
            };
            let ended: Vec<(u64, u16, &'static str)> = match current {
                Ok(current) => open
                    .iter()
                    .zip(current.chunks(3))
                    .filter_map(|((id, _, jti, exp, opened), entries)| {
                        let session = entries.first().and_then(|e| e.as_deref());
                        if *exp <= now || session != Some(jti.to_string().as_str()) {
                            Some((*id, CLOSE_SESSION_ENDED, "session ended"))
                        } else if entries[1..].iter().any(|e| evicted_since(e, *opened)) {
                            Some((*id, CLOSE_SESSION_ENDED, "no longer a member"))
                        } else {
                            None
                        }
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check websocket sessions; closing them");
                    open.iter()
                        .map(|(id, ..)| (*id, CLOSE_TRY_AGAIN, "cannot verify session"))
                        .collect()
                }
            };
            let mut inner = self.lock();
            for (id, code, reason) in ended {
                if let Some(socket) = inner.take(id) {
                    let _ = socket.tx.try_send(Outgoing::Close(code, reason));
                }
            }
        }
    }
}

async fn open(url: &str, block: Duration) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(block + Duration::from_secs(2));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
