//! The native protocol on an open WebSocket: what each client message does.
//!
//! Runs on the shard that owns the connection and never blocks: work that needs SQLite or
//! a model goes to the store writer, the read pool or the generation pool with `try_send`,
//! and a full queue is answered at once with `BUSY`. Results come back to the shard as
//! [`ShardMsg`](crate::shard::ShardMsg)s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;

use crate::auth::{AuthError, User};
use crate::conn::{AutoJoin, Phase};
use crate::protocol::{close, ClientMsg, ErrorCode, Event, Incoming, UserInfo};
use crate::ratelimit::Verdict;
use crate::shard::{ConnId, Shard};

pub fn send_error(shard: &mut Shard, slot: usize, code: ErrorCode, msg: &str, id: Option<String>) {
    shard.ctx.metrics.error(code);
    shard.send(slot, &Event::error(code, msg, id));
}

pub fn send_error_retry(
    shard: &mut Shard,
    slot: usize,
    code: ErrorCode,
    msg: &str,
    id: Option<String>,
    retry_after: f64,
) {
    shard.ctx.metrics.error(code);
    shard.send(
        slot,
        &Event::Error {
            code,
            error: msg.into(),
            id,
            retry_after: Some(retry_after),
        },
    );
}

/// A text frame arrived on a native connection.
pub fn on_text(shard: &mut Shard, slot: usize, text: &str) {
    let now = Instant::now();
    let decoded = shard.decoder.decode(text);
    // The next chunk of an upload this connection has open is paced by the upload queue
    // (BUSY) and bounded by the upload's declared size, not by the message rate.
    if let Ok(Incoming {
        msg:
            ClientMsg::FileUpload(crate::protocol::Upload::Chunk {
                file_id,
                chunk_index,
                ..
            }),
        ..
    }) = &decoded
    {
        if crate::uploads::exempt_chunk(shard, slot, file_id, *chunk_index) {
            if let Ok(msg) = decoded {
                dispatch(shard, slot, msg);
            }
            return;
        }
    }
    let window = shard.ctx.cfg.limits.rate_window;
    let max = shard.ctx.cfg.limits.rate_max_messages;
    let strikes_max = shard.ctx.cfg.limits.rate_strikes;
    let verdict = {
        let Some(ws) = shard.conns.get_mut(slot).and_then(|c| c.ws()) else {
            return;
        };
        let v = ws.rate.check(now, window, max);
        if let Verdict::Limited { .. } = v {
            if now.duration_since(ws.strikes_window) > window {
                ws.strikes_window = now;
                ws.strikes = 0;
            }
            ws.strikes += 1;
        }
        (v, ws.strikes)
    };
    if let (Verdict::Limited { retry_after_s }, strikes) = verdict {
        if strikes > strikes_max {
            send_error(
                shard,
                slot,
                ErrorCode::RateLimit,
                "rate limit exceeded repeatedly",
                None,
            );
            shard.close_ws(slot, close::POLICY, "rate limit abuse");
        } else {
            let id = match &decoded {
                Ok(m) => m.id.clone(),
                Err(e) => e.id.clone(),
            };
            send_error_retry(
                shard,
                slot,
                ErrorCode::RateLimit,
                "too many messages",
                id,
                retry_after_s,
            );
        }
        return;
    }
    match decoded {
        Ok(msg) => dispatch(shard, slot, msg),
        Err(e) => send_error(shard, slot, ErrorCode::BadRequest, &e.reason, e.id),
    }
}

fn dispatch(shard: &mut Shard, slot: usize, inc: Incoming) {
    let Incoming { id, msg } = inc;
    let user = shard.conns.get(slot).and_then(|c| c.user().cloned());
    match msg {
        ClientMsg::Auth { token } => on_auth_message(shard, slot, &token, id),
        ClientMsg::Ping => shard.send(
            slot,
            &Event::Pong {
                id,
                server_time: crate::protocol::now_rfc3339(),
            },
        ),
        other => {
            let Some(user) = user else {
                send_error(
                    shard,
                    slot,
                    ErrorCode::AuthRequired,
                    "authenticate first: send {\"type\":\"auth\",\"token\":\"…\"}",
                    id,
                );
                return;
            };
            crate::chat::dispatch(shard, slot, &user, id, other);
        }
    }
}

fn on_auth_message(shard: &mut Shard, slot: usize, token: &str, id: Option<String>) {
    let current = shard.conns.get(slot).and_then(|c| c.user().cloned());
    match shard.ctx.auth.verify(token) {
        Ok(user) => {
            match current {
                // Token refresh on an open connection: same user, new expiry.
                Some(cur) if cur.id == user.id => {
                    let user = Arc::new(user);
                    set_expiry(shard, slot, &user);
                    if let Some(ws) = shard.conns.get_mut(slot).and_then(|c| c.ws()) {
                        ws.user = Some(user.clone());
                    }
                    shard.send(
                        slot,
                        &Event::AuthSuccess {
                            message: "token refreshed",
                            user: UserInfo {
                                id: user.id.clone(),
                                name: user.name.clone(),
                            },
                        },
                    );
                }
                Some(_) => {
                    shard.ctx.metrics.error(ErrorCode::AuthFailed);
                    shard.send(
                        slot,
                        &Event::AuthError {
                            message: "a connection cannot change user".into(),
                            code: ErrorCode::AuthFailed,
                        },
                    );
                    shard.close_ws(slot, close::POLICY, "user changed");
                }
                None => {
                    let Some(conn_id) = shard.conn_id(slot) else {
                        return;
                    };
                    let cap = shard.ctx.cfg.server.max_connections_per_user;
                    if shard.ctx.hub.user_connect(&user.id, conn_id, cap).is_err() {
                        send_error(
                            shard,
                            slot,
                            ErrorCode::RateLimit,
                            "too many connections for this user",
                            id,
                        );
                        shard.close_ws(
                            slot,
                            close::OVERLOADED,
                            "too many connections for this user",
                        );
                        return;
                    }
                    on_authenticated(shard, slot, Arc::new(user), true, None);
                }
            }
        }
        Err(e) => {
            let message = match e {
                AuthError::Expired => "token expired".to_string(),
                AuthError::Invalid(m) => m,
            };
            debug!("[s{} c{slot}] auth message refused: {message}", shard.idx);
            shard.ctx.metrics.error(ErrorCode::AuthFailed);
            shard.send(
                slot,
                &Event::AuthError {
                    message,
                    code: ErrorCode::AuthFailed,
                },
            );
            shard.close_ws(slot, close::POLICY, "authentication failed");
        }
    }
}

fn set_expiry(shard: &mut Shard, slot: usize, user: &User) {
    let now_s = crate::auth::now_s();
    let left = Duration::from_secs(user.exp.saturating_sub(now_s));
    if let Some(ws) = shard.conns.get_mut(slot).and_then(|c| c.ws()) {
        ws.expiry_at = Some(Instant::now() + left);
        ws.expiry_warned = false;
    }
    shard.rearm(slot);
}

/// The connection now has a user (the user is already counted in the hub).
pub fn on_authenticated(
    shard: &mut Shard,
    slot: usize,
    user: Arc<User>,
    via_message: bool,
    auto_join: Option<AutoJoin>,
) {
    let Some(conn_id) = shard.conn_id(slot) else {
        return;
    };
    {
        let Some(ws) = shard.conns.get_mut(slot).and_then(|c| c.ws()) else {
            return;
        };
        ws.user = Some(user.clone());
        ws.auth_deadline = None;
    }
    set_expiry(shard, slot, &user);
    let info = UserInfo {
        id: user.id.clone(),
        name: user.name.clone(),
    };
    if via_message {
        shard.send(
            slot,
            &Event::AuthSuccess {
                message: "Authentication successful",
                user: info.clone(),
            },
        );
    }
    crate::chat::on_connected(shard, slot, conn_id, &user, auto_join);
}

/// The first event of every authenticated connection.
pub fn connected_event(
    shard: &Shard,
    conn_id: ConnId,
    user: &User,
    rooms: Vec<crate::protocol::RoomSummary>,
) -> Event {
    Event::Connected {
        connection_id: conn_id.to_string(),
        user: UserInfo {
            id: user.id.clone(),
            name: user.name.clone(),
        },
        server_time: crate::protocol::now_rfc3339(),
        protocol: crate::protocol::PROTOCOL,
        heartbeat_interval: shard.ctx.cfg.ws.heartbeat_interval.as_secs().max(1),
        rooms,
    }
}

/// A native connection went away: forget it everywhere else.
pub fn on_disconnect(
    shard: &mut Shard,
    id: ConnId,
    user: &Arc<User>,
    rooms: Vec<(Arc<str>, Arc<str>)>,
    typing: Vec<Arc<str>>,
) {
    let left = shard.ctx.hub.user_disconnect(&user.id, id);
    crate::chat::on_disconnect(shard, id, user, left, rooms, typing);
}

/// Typing indicators that were not refreshed expire.
pub fn expire_typing(shard: &mut Shard, slot: usize, now: Instant) {
    let expired: Vec<Arc<str>> = {
        let Some(ws) = shard.conns.get_mut(slot).and_then(|c| c.ws()) else {
            return;
        };
        let e: Vec<Arc<str>> = ws
            .typing
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &e {
            ws.typing.remove(k);
        }
        e
    };
    for conv in expired {
        crate::chat::publish_typing(shard, slot, &conv, false);
    }
}

/// A room this connection was in was deleted.
pub fn room_closed_locally(shard: &mut Shard, slot: usize, room_id: Arc<str>, conv: Arc<str>) {
    let user = shard.conns.get(slot).and_then(|c| c.user().cloned());
    if let Some(ws) = shard.conns.get_mut(slot).and_then(|c| c.ws()) {
        let was_in = ws.rooms.remove(&room_id).is_some();
        ws.subs.remove(&conv);
        ws.typing.remove(&conv);
        if let (true, Some(u)) = (was_in, user) {
            shard.ctx.hub.presence_remove(&conv, &u.id);
        }
    }
    // The room-closed event itself is queued by the caller; after it, no more events.
    shard.topic_local_remove(&conv, slot);
}

/// Is this slot an open, authenticated native WebSocket?
pub fn is_native(shard: &Shard, slot: usize) -> bool {
    matches!(shard.conns.get(slot).map(|c| &c.phase), Some(Phase::Ws(ws)) if ws.user.is_some())
}
