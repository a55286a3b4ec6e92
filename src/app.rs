//! confab on the transport: the [`App`] implementation that connects `net/` to the
//! protocol and the services (sessions, chat, rooms, uploads, the HTTP API).
//!
//! Every callback runs on the shard that owns the connection. The native protocol lives
//! in `session.rs` (per-connection rules) and `chat.rs` / `rooms.rs` / `uploads.rs` (what
//! each message does); HTTP in `routes.rs`, `api.rs`, `rooms_api.rs`.

use std::sync::Arc;

use tungstenite::{Bytes, Utf8Bytes};

use crate::net::timer::Tick;

use crate::auth::User;
use crate::codec::{Codec, Encoded, NATIVE};
use crate::net::{self, App, ConnId};
use crate::protocol::RoomSummary;
use crate::protocol::{Decoder, ErrorCode, Event};
use crate::server::ServerCtx;
use crate::session::AutoJoin;
use crate::session::{Session, WsKind};
use crate::store::read::Replay;
use crate::store::writer::RoomRow;
use crate::topic::TopicEvent;

/// A shard of this application.
pub type Shard = net::Shard<ServerCtx>;

/// The application's messages to a shard: data, never closures.
pub enum AppMsg {
    /// Something for one connection of the shard (dropped if it is gone).
    Conn(ConnId, ConnMsg),
    /// One event for every authenticated protocol connection (admin broadcast).
    All(Arc<Encoded>),
}

/// A follow-up for one connection, sent by a worker or the store's completions.
pub enum ConnMsg {
    /// One event. Its native frame was encoded by the sender (off the shard); another
    /// codec encodes it here.
    Event(Box<Encoded>),
    /// A chat was committed: confirm the pending subscription, then the ack.
    Acked {
        conversation_id: Arc<str>,
        ack: Box<Encoded>,
    },
    /// A request was refused or failed: forget its pending subscription, send the error.
    Refused {
        conversation_id: Option<Arc<str>>,
        error: Box<Event>,
    },
    /// A read receipt: the reader's own connection hears it even when not subscribed.
    Receipt {
        conversation_id: Arc<str>,
        event: Box<Event>,
    },
    /// A `join_room` was committed.
    Joined {
        id: Option<String>,
        user: Arc<User>,
        room: Box<RoomRow>,
        after_seq: Option<i64>,
    },
    /// A `subscribe` replay was read.
    Replayed {
        id: Option<String>,
        conversation_id: Arc<str>,
        replay: Box<Replay>,
        history_end: Option<i64>,
    },
    /// The room list for the `connected` event was read.
    Connected {
        user: Arc<User>,
        rooms: Vec<RoomSummary>,
        auto_join: Option<AutoJoin>,
    },
    /// The user was removed from a room: this connection leaves it.
    Kick {
        room_id: String,
        conversation_id: String,
    },
    /// A page of a backfilling connection's history.
    Backfilled {
        conversation_id: Arc<str>,
        /// The page starts after this seq.
        after_seq: i64,
        rows: Vec<crate::store::read::MessageRow>,
        has_more: bool,
    },
    /// A dialect's alias names this conversation: run the command that used it.
    Resolved {
        alias: String,
        conversation_id: String,
        then: Box<crate::protocol::Incoming>,
    },
    /// An upload ended (its answer, if any, goes to the client).
    UploadDone {
        file_id: Arc<str>,
        event: Option<Box<Event>>,
    },
}

/// The codec of a connection (the native one for a slot that is not a WebSocket).
pub fn codec_of(shard: &Shard, slot: usize) -> &'static dyn Codec {
    shard.session(slot).map_or(&NATIVE, |s| s.codec())
}

/// Sending typed events on a shard. Every event for one connection passes here (or
/// through `topic::deliver`), so a dialect connection gets its own form of each.
pub trait ShardExt {
    /// Encode and queue an event for one connection.
    fn send(&mut self, slot: usize, ev: &Event);
    /// Queue an event whose frames are cached per codec (encoded once for many).
    fn send_encoded(&mut self, slot: usize, ev: &Encoded);
}

impl ShardExt for Shard {
    fn send(&mut self, slot: usize, ev: &Event) {
        if !deliver_dialect(self, slot, ev) {
            let frame = codec_of(self, slot).encode(ev);
            self.send_frame(slot, frame);
        }
    }

    fn send_encoded(&mut self, slot: usize, ev: &Encoded) {
        if !deliver_dialect(self, slot, &ev.event) {
            let frame = ev.frame(codec_of(self, slot));
            self.send_frame(slot, frame);
        }
    }
}

/// Translate `ev` for a dialect connection and queue what it becomes (and run the
/// follow-ups it asks for). `false`: the connection speaks no dialect.
pub fn deliver_dialect(sh: &mut Shard, slot: usize, ev: &Event) -> bool {
    let mut out = crate::dialect::Out::default();
    match sh.session_mut(slot).and_then(|s| s.dialect.as_mut()) {
        Some(d) => d.outbound(ev, &mut out),
        None => return false,
    }
    for f in out.frames {
        sh.send_frame(slot, f);
    }
    for inc in out.then {
        crate::session::dispatch(sh, slot, inc);
    }
    if let Some((code, reason)) = out.close {
        sh.close_ws(slot, code, reason);
    }
    true
}

impl ServerCtx {
    /// Send an event to a connection from a worker thread (waits for inbox room). Its
    /// native frame is encoded here; a dialect connection's shard translates it.
    pub fn send_event(&self, conn: ConnId, ev: Event) {
        self.to_shard(conn, ConnMsg::Event(Box::new(Encoded::new(ev))));
    }
}

impl App for ServerCtx {
    type Session = Session;
    type Local = Decoder;
    type Msg = AppMsg;
    type Topic = TopicEvent;

    fn net(&self) -> &net::Net<Self> {
        &self.net
    }

    fn topic_key(ev: &TopicEvent) -> &str {
        &ev.conversation_id
    }

    fn on_request(sh: &mut Shard, slot: usize, req: net::Request) {
        crate::routes::on_request(sh, slot, req)
    }

    fn on_ws_open(sh: &mut Shard, slot: usize) {
        let Some(s) = sh.session_mut(slot) else {
            return;
        };
        let auto_join = s.extras.as_mut().and_then(|e| e.auto_join.take());
        s.tidy();
        let user = s.user.clone();
        // A dialect reports a refused upgrade in its own form, then closes.
        if let Some((code, message)) = s.dialect.as_mut().and_then(|d| d.auth_failure.take()) {
            sh.app().metrics.error(code);
            sh.send(slot, &Event::AuthError { message, code });
            sh.close_ws(
                slot,
                crate::protocol::close::POLICY,
                "authentication failed",
            );
            return;
        }
        if let Some(user) = user {
            crate::session::on_authenticated(sh, slot, user, false, auto_join);
        }
        sh.rearm(slot);
    }

    fn on_text(sh: &mut Shard, slot: usize, text: Utf8Bytes) {
        match sh.session(slot).map(|s| s.kind) {
            Some(WsKind::Echo) => sh.send_frame(slot, text),
            Some(WsKind::Protocol) => crate::session::on_text(sh, slot, &text),
            None => {}
        }
    }

    fn on_binary(sh: &mut Shard, slot: usize, data: Bytes) {
        match sh.session(slot).map(|s| s.kind) {
            // Queued like every frame; the echo endpoint's queue cap is its
            // max_write_buffer_size.
            Some(WsKind::Echo) => sh.send_binary(slot, data),
            Some(WsKind::Protocol) => crate::session::send_error(
                sh,
                slot,
                ErrorCode::BadRequest,
                "binary frames are not part of the protocol; send JSON text",
                None,
            ),
            None => {}
        }
    }

    fn on_ping(sh: &mut Shard, slot: usize) {
        crate::session::on_ping(sh, slot)
    }

    fn on_heartbeat(sh: &mut Shard, slot: usize) {
        if crate::session::is_authenticated(sh, slot) {
            sh.send(
                slot,
                &Event::Heartbeat {
                    server_time: crate::protocol::now_rfc3339(),
                },
            );
        }
    }

    fn on_timer(sh: &mut Shard, slot: usize, now: Tick) {
        crate::session::on_timer(sh, slot, now)
    }

    fn deadline(s: &Session) -> Option<Tick> {
        s.deadline()
    }

    fn on_topic(sh: &mut Shard, slot: usize, ev: &Arc<TopicEvent>) {
        crate::topic::on_topic(sh, slot, ev)
    }

    fn on_msg(sh: &mut Shard, msg: AppMsg) {
        match msg {
            AppMsg::Conn(id, m) => {
                if let Some(slot) = sh.resolve(id) {
                    on_conn_msg(sh, slot, id, m);
                }
            }
            AppMsg::All(ev) => {
                for slot in sh.ws_slots() {
                    if crate::session::is_authenticated(sh, slot) {
                        sh.send_encoded(slot, &ev);
                    }
                }
            }
        }
    }

    fn user_of(s: &Session) -> Option<&str> {
        s.user.as_ref().map(|u| u.id.as_str())
    }

    fn route_label(req: &net::Request) -> &'static str {
        crate::routes::route_label(req)
    }

    fn on_missed(sh: &mut Shard, topic: Option<&str>) {
        crate::topic::on_missed(sh, topic)
    }

    fn on_closing(sh: &mut Shard, slot: usize, code: u16, reason: &str) {
        let last = sh
            .session(slot)
            .and_then(|s| s.dialect.as_ref())
            .and_then(|d| d.closing(code, reason));
        if let Some(frame) = last {
            sh.send_frame(slot, frame);
        }
    }

    fn on_close(sh: &mut Shard, id: ConnId, session: Session, _code: u16) {
        crate::session::on_close(sh, id, session)
    }
}

/// A follow-up for one live connection of this shard.
fn on_conn_msg(sh: &mut Shard, slot: usize, id: ConnId, m: ConnMsg) {
    match m {
        ConnMsg::Event(ev) => sh.send_encoded(slot, &ev),
        ConnMsg::Acked {
            conversation_id,
            ack,
        } => {
            crate::subscribe::confirm_subscription(sh, slot, &conversation_id);
            sh.send_encoded(slot, &ack);
        }
        ConnMsg::Refused {
            conversation_id,
            error,
        } => {
            if let Some(conv) = conversation_id {
                crate::subscribe::drop_pending(sh, slot, &conv);
            }
            sh.send(slot, &error);
        }
        ConnMsg::Receipt {
            conversation_id,
            event,
        } => {
            let subscribed = sh.session(slot).is_some_and(|s| {
                s.subs
                    .get(&conversation_id)
                    .is_some_and(crate::subscription::Subscription::is_live)
            });
            if !subscribed {
                sh.send(slot, &event);
            }
        }
        ConnMsg::Joined {
            id,
            user,
            room,
            after_seq,
        } => crate::rooms::joined(sh, slot, &user, id, *room, after_seq),
        ConnMsg::Replayed {
            id,
            conversation_id,
            replay,
            history_end,
        } => crate::subscribe::finish_replay(sh, slot, &conversation_id, *replay, id, history_end),
        ConnMsg::Connected {
            user,
            rooms,
            auto_join,
        } => {
            let ev = crate::session::connected_event(sh, id, &user, rooms);
            sh.send(slot, &ev);
            if let Some(aj) = auto_join {
                crate::rooms::join(sh, slot, &user, None, aj, None);
            }
        }
        ConnMsg::Kick {
            room_id,
            conversation_id,
        } => crate::rooms_api::kick(sh, slot, &room_id, &conversation_id),
        ConnMsg::Resolved {
            alias,
            conversation_id,
            then,
        } => crate::session::alias_resolved(sh, slot, &alias, conversation_id, *then),
        ConnMsg::Backfilled {
            conversation_id,
            after_seq,
            rows,
            has_more,
        } => crate::subscribe::backfilled(sh, slot, conversation_id, after_seq, rows, has_more),
        ConnMsg::UploadDone { file_id, event } => {
            crate::uploads::forget(sh, slot, &file_id);
            if let Some(ev) = event {
                if let Event::Error { code, .. } = &*ev {
                    sh.app().metrics.error(*code);
                }
                sh.send(slot, &ev);
            }
        }
    }
}
