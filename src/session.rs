//! One WebSocket's protocol session: its state ([`Session`]) and the rules of the native
//! protocol on an open connection — authentication, rate limit, token expiry, typing
//! expiry — before each message goes to the service that handles it (`chat.rs`,
//! `rooms.rs`, `uploads.rs`).
//!
//! Runs on the shard that owns the connection and never blocks: work that needs SQLite or
//! a model goes to the store writer, the read pool or the generation pool with `try_send`,
//! and a full queue is answered at once with `BUSY`. Results come back to the shard as
//! typed messages through its inbox.

use std::sync::Arc;
use std::time::Duration;

use crate::net::timer::Tick;

use crate::app::{Shard, ShardExt};
use crate::auth::{AuthError, User};
use crate::codec::Codec;
use crate::net::ConnId;
use crate::protocol::{close, ClientMsg, ErrorCode, Event, Incoming, UserInfo};
use crate::ratelimit::{RateWindow, Verdict};
use crate::subscription::Subscription;
use crate::vecmap::VecMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsKind {
    /// A chat protocol (the connection's codec says which wire form).
    Protocol,
    /// `server.echo_path`: every message is sent back unchanged.
    Echo,
}

/// `?room_id=&room_type=&room_name=` on the upgrade request: join at once.
#[derive(Debug, Clone)]
pub struct AutoJoin {
    pub room_id: String,
    pub room_type: Option<crate::protocol::RoomType>,
    pub room_name: Option<String>,
}

/// `codec_id` of a dialect connection (no codec has it; `codec()` is then the native one,
/// which a dialect's translator sits on).
const DIALECT: u8 = u8::MAX;

/// The application's state for one WebSocket.
pub struct Session {
    pub kind: WsKind,
    /// The wire form of this connection (chosen by the upgrade path): an index into
    /// `codec::CODECS` (one byte here instead of a 16-byte trait object per connection).
    codec_id: u8,
    pub user: Option<Arc<User>>,
    /// No token yet: the time to send `{"type":"auth"}` by.
    pub auth_deadline: Option<Tick>,
    /// When the token expires (then TOKEN_EXPIRED is sent) and, after it, the grace end.
    pub expiry_at: Option<Tick>,
    pub expiry_warned: bool,
    pub rate: RateWindow,
    pub strikes: u32,
    pub strikes_window: Tick,
    /// Conversations this connection follows (`subscription.rs` holds the rules).
    pub subs: VecMap<Arc<str>, Subscription>,
    /// Rooms joined on this connection (room id → its conversation id).
    pub rooms: VecMap<Arc<str>, Arc<str>>,
    /// What few connections have, boxed: every byte inline here is paid by every idle
    /// connection (`extras_mut` makes it, `tidy` drops it once empty).
    pub extras: Option<Box<Extras>>,
    /// A seed document's protocol on this connection (`dialect/`); `None`: native. Set
    /// with `set_dialect`, which also marks `codec_id` (what the per-delivery check reads).
    pub dialect: Option<Box<crate::dialect::Dialect>>,
}

/// What few connections have: boxed in [`Session::extras`].
#[derive(Default)]
pub struct Extras {
    /// Joined when the WebSocket opens (from the upgrade's query string).
    pub auto_join: Option<AutoJoin>,
    /// Joined rooms whose config asks for an AI reply to every message (`ai: true`).
    pub ai_rooms: Vec<Arc<str>>,
    /// Typing indicators this connection has on: target conversation → expiry.
    pub typing: VecMap<Arc<str>, Tick>,
    /// File uploads this connection has in progress (`uploads.rs`); aborted when it closes.
    pub uploads: Vec<crate::uploads::OpenUpload>,
}

impl Extras {
    fn is_empty(&self) -> bool {
        self.auto_join.is_none()
            && self.ai_rooms.is_empty()
            && self.typing.is_empty()
            && self.uploads.is_empty()
    }
}

impl Session {
    pub fn extras(&self) -> Option<&Extras> {
        self.extras.as_deref()
    }

    /// The extras, made on first use.
    pub fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Drop the extras once they hold nothing.
    pub fn tidy(&mut self) {
        if self.extras.as_ref().is_some_and(|e| e.is_empty()) {
            self.extras = None;
        }
    }

    pub fn new(
        kind: WsKind,
        codec: &'static dyn Codec,
        user: Option<Arc<User>>,
        now: Tick,
    ) -> Session {
        Session {
            kind,
            codec_id: codec.id() as u8,
            user,
            auth_deadline: None,
            expiry_at: None,
            expiry_warned: false,
            rate: RateWindow::new(now),
            strikes: 0,
            strikes_window: now,
            subs: VecMap::new(),
            rooms: VecMap::new(),
            extras: None,
            dialect: None,
        }
    }

    /// This connection's codec.
    pub fn codec(&self) -> &'static dyn Codec {
        crate::codec::by_id(self.codec_id as usize)
    }

    /// Speak a seed's dialect on this connection.
    pub fn set_dialect(&mut self, d: Box<crate::dialect::Dialect>) {
        self.dialect = Some(d);
        self.codec_id = DIALECT;
    }

    /// Does this connection speak a dialect? Reads the byte `codec()` reads anyway: the
    /// topic delivery path asks for every event and subscriber.
    pub fn is_dialect(&self) -> bool {
        self.codec_id == DIALECT
    }

    /// The earliest of the session's own deadlines (auth, token expiry, typing).
    pub fn deadline(&self) -> Option<Tick> {
        [
            self.auth_deadline,
            self.expiry_at,
            self.extras().and_then(|e| e.typing.values().min().copied()),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

pub fn send_error(shard: &mut Shard, slot: usize, code: ErrorCode, msg: &str, id: Option<String>) {
    shard.app().metrics.error(code);
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
    shard.app().metrics.error(code);
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

/// A text frame arrived on a protocol connection (native or a dialect).
pub fn on_text(shard: &mut Shard, slot: usize, text: &str) {
    use crate::dialect::Inbound;
    let now = Tick::now();
    let inbound = {
        let (dec, session) = shard.local_and_session(slot);
        session
            .and_then(|s| s.dialect.as_mut())
            .map(|d| d.inbound(dec, text))
    };
    let (decoded, alias) = match inbound {
        None => {
            let codec = crate::app::codec_of(shard, slot);
            (codec.decode(shard.local(), text), None)
        }
        Some(Inbound::Native { inc, alias }) => (Ok(inc), alias),
        Some(Inbound::Invalid(e)) => (Err(e), None),
        // A dialect's own answer (e.g. a pong in its form) is rate-limited like any message.
        Some(Inbound::Reply(frames)) => {
            if !rate_limited(shard, slot, now, None) {
                for f in frames {
                    shard.send_frame(slot, f);
                }
            }
            return;
        }
    };
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
    let id = match &decoded {
        Ok(m) => m.id.as_deref(),
        Err(e) => e.id.as_deref(),
    };
    if rate_limited(shard, slot, now, id) {
        return;
    }
    match (decoded, alias) {
        (Ok(msg), None) => dispatch(shard, slot, msg),
        (Ok(msg), Some(alias)) => resolve_alias(shard, slot, alias, msg),
        (Err(e), _) => send_error(shard, slot, ErrorCode::BadRequest, &e.reason, e.id),
    }
}

/// A dialect's chat names its conversation by an alias: the store resolves it (making
/// the conversation with the alias when new), then the chat runs (`alias_resolved`).
fn resolve_alias(shard: &mut Shard, slot: usize, alias: String, inc: Incoming) {
    let (Some(conn), Some(s)) = (shard.conn_id(slot), shard.session(slot)) else {
        return;
    };
    let (Some(user), Some(profile)) = (s.user.clone(), s.dialect.as_ref().map(|d| d.profile))
    else {
        // Not authenticated yet: the native rules answer.
        return dispatch(shard, slot, inc);
    };
    let id = inc.id.clone();
    let cmd = crate::store::WriteCmd::ResolveAlias {
        user_id: user.id.clone(),
        user_name: user.name.clone(),
        profile,
        alias: alias.clone(),
        new_conversation_id: crate::chat::new_conversation_id(),
    };
    let reply = crate::completion::Reply::Alias {
        conn,
        alias,
        then: Box::new(inc),
    };
    if shard.app().store.try_write(cmd, reply).is_err() {
        send_error_retry(shard, slot, ErrorCode::Busy, "the store is busy", id, 0.5);
    }
}

/// The store resolved a dialect's alias: remember it, run the chat that named it.
pub fn alias_resolved(
    shard: &mut Shard,
    slot: usize,
    alias: &str,
    conv: String,
    mut inc: Incoming,
) {
    if let Some(d) = shard.session_mut(slot).and_then(|s| s.dialect.as_mut()) {
        d.learn(alias, &conv);
    }
    if let ClientMsg::Chat(req) = &mut inc.msg {
        req.conversation_id = Some(conv);
    }
    dispatch(shard, slot, inc);
}

/// Charge one message to the rate window; over it, answer `RATE_LIMIT` (echoing `id`),
/// or close 1008 after `limits.rate_strikes` strikes. `true`: the message goes no further.
fn rate_limited(shard: &mut Shard, slot: usize, now: Tick, id: Option<&str>) -> bool {
    let Some(verdict) = charge(shard, slot, now) else {
        return true;
    };
    let (Verdict::Limited { retry_after_s }, strikes) = verdict else {
        return false;
    };
    if strikes > shard.app().cfg.limits.rate_strikes {
        send_error(
            shard,
            slot,
            ErrorCode::RateLimit,
            "rate limit exceeded repeatedly",
            None,
        );
        shard.close_ws(slot, close::POLICY, "rate limit abuse");
    } else {
        send_error_retry(
            shard,
            slot,
            ErrorCode::RateLimit,
            "too many messages",
            id.map(str::to_string),
            retry_after_s,
        );
    }
    true
}

/// Charge one frame to the connection's rate window: the verdict and the strikes in the
/// current window. `None`: not a WebSocket any more.
fn charge(shard: &mut Shard, slot: usize, now: Tick) -> Option<(Verdict, u32)> {
    let cfg = &shard.app().cfg;
    let (max, window) = shard
        .session(slot)?
        .dialect
        .as_ref()
        .and_then(|d| d.rate_limit(cfg))
        .unwrap_or((cfg.limits.rate_max_messages, cfg.limits.rate_window));
    let ws = shard.session_mut(slot)?;
    let v = ws.rate.check(now, window, max);
    if let Verdict::Limited { .. } = v {
        if now.saturating_duration_since(ws.strikes_window) > window {
            ws.strikes_window = now;
            ws.strikes = 0;
        }
        ws.strikes += 1;
    }
    Some((v, ws.strikes))
}

/// A ping arrived. Pings count against the message rate like any frame: tungstenite keeps
/// one pong pending (RFC 6455 §5.5.3 lets a server answer only the latest), so a client
/// that floods pings and never reads costs no memory, but without this it was never told
/// and never closed. Over the rate for more than `limits.rate_strikes` frames: 1008.
pub fn on_ping(shard: &mut Shard, slot: usize) {
    let Some((verdict, strikes)) = charge(shard, slot, Tick::now()) else {
        return;
    };
    if matches!(verdict, Verdict::Limited { .. }) && strikes > shard.app().cfg.limits.rate_strikes {
        shard.close_ws(slot, close::POLICY, "rate limit abuse (control frames)");
    }
}

pub fn dispatch(shard: &mut Shard, slot: usize, inc: Incoming) {
    let Incoming { id, msg } = inc;
    let user = shard.session(slot).and_then(|s| s.user.clone());
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
    let current = shard.session(slot).and_then(|s| s.user.clone());
    match shard.app().auth.verify(token) {
        Ok(user) => {
            match current {
                // Token refresh on an open connection: same user, new expiry.
                Some(cur) if cur.id == user.id => {
                    let user = Arc::new(user);
                    set_expiry(shard, slot, &user);
                    if let Some(ws) = shard.session_mut(slot) {
                        ws.user = Some(user.clone());
                    }
                    shard.send(
                        slot,
                        &Event::AuthSuccess {
                            message: "token refreshed",
                            user: UserInfo {
                                id: user.id.clone(),
                                name: user.name.clone(),
                                email: user.email.clone(),
                            },
                        },
                    );
                }
                Some(_) => {
                    shard.app().metrics.error(ErrorCode::AuthFailed);
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
                    let cap = shard.app().cfg.server.max_connections_per_user;
                    let Ok(user) = shard.app().hub.user_connect(Arc::new(user), conn_id, cap)
                    else {
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
                    };
                    on_authenticated(shard, slot, user, true, None);
                }
            }
        }
        Err(e) => {
            let message = match e {
                AuthError::Expired => "token expired".to_string(),
                AuthError::Invalid(m) => m,
            };
            crate::logging::auth_failure(shard.peer(slot), "auth message", &message);
            shard.app().metrics.error(ErrorCode::AuthFailed);
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
    if let Some(ws) = shard.session_mut(slot) {
        ws.expiry_at = Some(Tick::now() + left);
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
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        ws.user = Some(user.clone());
        ws.auth_deadline = None;
    }
    set_expiry(shard, slot, &user);
    let info = UserInfo {
        id: user.id.clone(),
        name: user.name.clone(),
        email: user.email.clone(),
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
            email: user.email.clone(),
        },
        server_time: crate::protocol::now_rfc3339(),
        protocol: crate::protocol::PROTOCOL,
        heartbeat_interval: shard.app().cfg.ws.heartbeat_interval.as_secs().max(1),
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
    let left = shard.app().hub.user_disconnect(&user.id, id);
    crate::chat::on_disconnect(shard, id, user, left, rooms, typing);
}

/// Typing indicators that were not refreshed expire.
pub fn expire_typing(shard: &mut Shard, slot: usize, now: Tick) {
    let expired: Vec<Arc<str>> = {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        let Some(extras) = ws.extras.as_mut() else {
            return;
        };
        let e: Vec<Arc<str>> = extras
            .typing
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &e {
            extras.typing.remove(k);
        }
        ws.tidy();
        e
    };
    for conv in expired {
        crate::chat::publish_typing(shard, slot, &conv, false);
    }
}

/// A room this connection was in was deleted.
pub fn room_closed_locally(shard: &mut Shard, slot: usize, room_id: Arc<str>, conv: Arc<str>) {
    let ctx = shard.app().clone();
    if let Some(ws) = shard.session_mut(slot) {
        let was_in = ws.rooms.remove(&room_id).is_some();
        ws.subs.remove(&conv);
        if let Some(e) = ws.extras.as_mut() {
            e.typing.remove(&conv);
            e.ai_rooms.retain(|r| *r != room_id);
        }
        ws.tidy();
        if let (true, Some(u)) = (was_in, &ws.user) {
            if ctx.hub.presence_remove(&conv, &u.id) {
                ctx.presence_changed(&room_id, &conv, u, false, false);
            }
        }
    }
    // The room-closed event itself is queued by the caller; after it, no more events.
    shard.unsubscribe(&conv, slot);
}

/// Is this slot an open, authenticated protocol WebSocket (native or a dialect)?
pub fn is_authenticated(shard: &Shard, slot: usize) -> bool {
    shard
        .session(slot)
        .is_some_and(|s| s.kind == WsKind::Protocol && s.user.is_some())
}

/// The session's own deadlines: authentication, token expiry, typing indicators.
pub fn on_timer(shard: &mut Shard, slot: usize, now: Tick) {
    let grace = shard.app().cfg.auth.expiry_grace;
    enum Then {
        Nothing,
        AuthTimeout,
        WarnExpiry,
        CloseExpired,
    }
    let then = {
        let Some(s) = shard.session_mut(slot) else {
            return;
        };
        if s.auth_deadline.is_some_and(|d| now >= d) {
            s.auth_deadline = None;
            Then::AuthTimeout
        } else if s.expiry_at.is_some_and(|d| now >= d) {
            if s.expiry_warned {
                Then::CloseExpired
            } else {
                s.expiry_warned = true;
                s.expiry_at = Some(now + grace);
                Then::WarnExpiry
            }
        } else {
            Then::Nothing
        }
    };
    match then {
        Then::Nothing => {}
        Then::AuthTimeout => {
            shard.send(
                slot,
                &Event::AuthError {
                    message: "no auth message in time".into(),
                    code: ErrorCode::AuthRequired,
                },
            );
            shard.close_ws(slot, close::POLICY, "authentication timeout");
            return;
        }
        Then::WarnExpiry => {
            let e = Event::error(
                ErrorCode::TokenExpired,
                "token expired: send a fresh {\"type\":\"auth\"} to stay connected",
                None,
            );
            shard.send(slot, &e);
        }
        Then::CloseExpired => {
            shard.close_ws(slot, close::POLICY, "token expired");
            return;
        }
    }
    expire_typing(shard, slot, now);
}

/// The WebSocket is gone: abort its uploads, leave its topics, and tell the rest of the
/// server (presence, typing, the per-user count).
pub fn on_close(shard: &mut Shard, id: ConnId, session: Session) {
    let Session {
        user,
        subs,
        rooms,
        extras,
        ..
    } = session;
    let Extras {
        typing, uploads, ..
    } = extras.map(|e| *e).unwrap_or_default();
    for up in uploads {
        shard.app().uploads.abort(up.file_id);
    }
    for conv in subs.keys() {
        shard.unsubscribe(conv, id.slot as usize);
    }
    if let Some(user) = user {
        let rooms: Vec<(Arc<str>, Arc<str>)> = rooms.into_iter().collect();
        let typing: Vec<Arc<str>> = typing.into_keys().collect();
        on_disconnect(shard, id, &user, rooms, typing);
    }
}
