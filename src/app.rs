//! confab on the transport: the [`App`] implementation that connects `net/` to the
//! protocol and the services (sessions, chat, rooms, uploads, the HTTP API).
//!
//! Every callback runs on the shard that owns the connection. The native protocol lives
//! in `session.rs` (per-connection rules) and `chat.rs` / `rooms.rs` / `uploads.rs` (what
//! each message does); HTTP in `routes.rs`, `api.rs`, `rooms_api.rs`.

use std::sync::Arc;
use std::time::Instant;

use tungstenite::{Bytes, Utf8Bytes};

use crate::codec::{Codec, Encoded, NATIVE};
use crate::net::{self, App, ConnId, MayBlock, ShardMsg};
use crate::protocol::{Decoder, ErrorCode, Event};
use crate::server::ServerCtx;
use crate::session::{Session, WsKind};
use crate::topic::TopicEvent;

/// A shard of this application.
pub type Shard = net::Shard<ServerCtx>;

/// Work that must run on a connection's shard, by slot.
pub type ShardTask = Box<dyn FnOnce(&mut Shard, usize) + Send>;

/// The application's messages to a shard.
pub enum AppMsg {
    /// Run against one connection of the shard.
    Run(ConnId, ShardTask),
    /// One event for one connection, encoded there by its codec.
    Event(ConnId, Box<Event>),
    /// One event for every authenticated protocol connection (admin broadcast).
    All(Arc<Encoded>),
}

/// The codec of a connection (the native one for a slot that is not a WebSocket).
pub fn codec_of(shard: &Shard, slot: usize) -> &'static dyn Codec {
    shard.session(slot).map_or(&NATIVE, |s| s.codec)
}

/// Sending typed events on a shard.
pub trait ShardExt {
    /// Encode and queue an event for one connection.
    fn send(&mut self, slot: usize, ev: &Event);
}

impl ShardExt for Shard {
    fn send(&mut self, slot: usize, ev: &Event) {
        let frame = codec_of(self, slot).encode(ev);
        self.send_frame(slot, frame);
    }
}

impl ServerCtx {
    /// Send an event to a connection from a worker thread (waits for inbox room).
    pub fn send_event(&self, may: MayBlock, conn: ConnId, ev: &Event) {
        let frame = net::OutItem::Frame(Utf8Bytes::from(ev.encode()));
        self.net
            .shards
            .send_to(may, conn, ShardMsg::Send(conn, frame));
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
        let (user, auto_join) = (s.user.clone(), s.auto_join.take());
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
            // Binary echo bypasses the text queue: tungstenite buffers it, capped by its
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

    fn on_heartbeat(sh: &mut Shard, slot: usize) {
        if sh
            .session(slot)
            .is_some_and(|s| s.kind == WsKind::Protocol && s.user.is_some())
        {
            sh.send(
                slot,
                &Event::Heartbeat {
                    server_time: crate::protocol::now_rfc3339(),
                },
            );
        }
    }

    fn on_timer(sh: &mut Shard, slot: usize, now: Instant) {
        crate::session::on_timer(sh, slot, now)
    }

    fn deadline(s: &Session) -> Option<Instant> {
        s.deadline()
    }

    fn on_topic(sh: &mut Shard, slot: usize, ev: &Arc<TopicEvent>) {
        crate::topic::on_topic(sh, slot, ev)
    }

    fn on_msg(sh: &mut Shard, msg: AppMsg) {
        match msg {
            AppMsg::Run(id, f) => {
                if let Some(slot) = sh.resolve(id) {
                    f(sh, slot);
                }
            }
            AppMsg::Event(id, ev) => {
                if let Some(slot) = sh.resolve(id) {
                    sh.send(slot, &ev);
                }
            }
            AppMsg::All(ev) => {
                for slot in sh.ws_slots() {
                    if crate::session::is_native(sh, slot) {
                        let frame = ev.frame(codec_of(sh, slot));
                        sh.send_frame(slot, frame);
                    }
                }
            }
        }
    }

    fn on_close(sh: &mut Shard, id: ConnId, session: Session, _code: u16) {
        crate::session::on_close(sh, id, session)
    }
}
