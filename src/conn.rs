//! One client connection, owned by exactly one shard.
//!
//! ```text
//!  Accepted ─▶ Head ──(bad head / plain HTTP)──────────────▶ HttpWrite ─▶ closed
//!   [TLS       │  └──(needs a store read)──▶ HttpWait ──────▶ HttpWrite ─▶ closed
//!  handshake   └──(valid upgrade + auth ok)─▶ HttpWrite(101) ─▶ Ws ─▶ closing ─▶ closed
//!  inside Head]
//! ```
//! - `Head`: bytes are read until a complete request (head + body) is buffered; bounded by
//!   `server.max_header_bytes` + `server.max_body_bytes` and by `server.head_timeout_ms`
//!   (which also covers the TLS handshake, driven transparently by [`Transport`]).
//! - `HttpWrite`: a response is written out; then the connection closes or, after a 101,
//!   becomes a WebSocket (bytes the client sent after its request are kept and read first).
//! - `Ws`: an open WebSocket. Outbound events wait in a byte-bounded [`OutQueue`]; the
//!   shard feeds tungstenite only while the socket accepts bytes (`blocked == false`).
//!   Deadlines: auth (no token yet), heartbeat, pong, token expiry, close handshake.
//!
//! Every deadline of a connection is folded into one armed timer ([`Conn::next_deadline`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tungstenite::protocol::WebSocketContext;

use crate::auth::User;
use crate::outqueue::OutQueue;
use crate::ratelimit::RateWindow;
use crate::shard::TopicEvent;
use crate::transport::Transport;

pub struct Conn {
    pub gen: u32,
    pub io: Transport,
    pub phase: Phase,
    pub peer: SocketAddr,
    pub head_deadline: Instant,
    /// The deadline currently in the shard's timer heap for this connection.
    pub armed: Option<Instant>,
    /// On the shard's list of connections with unread input left over (budget spent).
    pub pending: bool,
    /// On the shard's list of connections with output to flush at the end of the turn.
    pub dirty: bool,
}

pub enum Phase {
    Head(Vec<u8>),
    HttpWait,
    HttpWrite {
        buf: Vec<u8>,
        pos: usize,
        then: AfterWrite,
    },
    Ws(Box<Ws>),
    Done,
}

pub enum AfterWrite {
    Close,
    Upgrade(Box<Upgrade>),
}

/// What becomes of a connection after its 101 response is written.
pub struct Upgrade {
    pub kind: WsKind,
    pub user: Option<Arc<User>>,
    pub leftover: Vec<u8>,
    /// `?room_id=&room_type=&room_name=` on the upgrade request: join at once.
    pub auto_join: Option<AutoJoin>,
}

#[derive(Debug, Clone)]
pub struct AutoJoin {
    pub room_id: String,
    pub room_type: Option<crate::protocol::RoomType>,
    pub room_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsKind {
    /// The native protocol on `/v1/ws`.
    Native,
    /// `server.echo_path`: every message is sent back unchanged.
    Echo,
}

/// A subscription of this connection to a conversation.
pub enum Sub {
    /// Live events are delivered as they come, minus what this connection already has.
    /// The store writer publishes after COMMIT, so a replay on a reader thread can see a
    /// committed message whose live event is still on its way; these two fields make
    /// such a late event a no-op instead of a duplicate.
    Live {
        /// Highest `seq` delivered in a `message_added` (live events arrive in seq order:
        /// one writer publishes them in commit order).
        last_seq: i64,
        /// Replies a replay showed as final: their late token/updated/complete events
        /// are dropped. Only replies that were recently active, so this stays tiny.
        finals: Vec<i64>,
    },
    /// Waiting for the store (an access check, or a replay): live events wait here and,
    /// after a replay, are filtered against it (see `generation.rs`).
    Pending { buffered: Vec<Arc<TopicEvent>> },
}

pub struct Ws {
    pub ctx: WebSocketContext,
    pub kind: WsKind,
    pub out: crate::outqueue::OutQueue,
    /// The socket returned WouldBlock on write; wait for a writable event.
    pub blocked: bool,
    pub user: Option<Arc<User>>,
    pub auth_deadline: Option<Instant>,
    pub next_heartbeat: Instant,
    pub pong_deadline: Option<Instant>,
    /// When the token expires (then TOKEN_EXPIRED is sent) and, after it, the grace end.
    pub expiry_at: Option<Instant>,
    pub expiry_warned: bool,
    /// Set once our close frame is queued: the time to give up on the peer's close.
    pub close_deadline: Option<Instant>,
    pub rate: RateWindow,
    pub strikes: u32,
    pub strikes_window: Instant,
    pub subs: HashMap<Arc<str>, Sub>,
    /// Rooms joined on this connection (room id → its conversation id).
    pub rooms: HashMap<Arc<str>, Arc<str>>,
    /// Typing indicators this connection has on: target conversation → expiry.
    pub typing: HashMap<Arc<str>, Instant>,
}

impl Sub {
    pub fn live() -> Sub {
        Sub::Live {
            last_seq: 0,
            finals: Vec::new(),
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self, Sub::Live { .. })
    }
}

impl Ws {
    pub fn new(ctx: WebSocketContext, kind: WsKind, out_cap: usize, now: Instant) -> Ws {
        Ws {
            ctx,
            kind,
            out: OutQueue::new(out_cap),
            blocked: false,
            user: None,
            auth_deadline: None,
            next_heartbeat: now,
            pong_deadline: None,
            expiry_at: None,
            expiry_warned: false,
            close_deadline: None,
            rate: RateWindow::new(now),
            strikes: 0,
            strikes_window: now,
            subs: HashMap::new(),
            rooms: HashMap::new(),
            typing: HashMap::new(),
        }
    }

    pub fn closing(&self) -> bool {
        self.close_deadline.is_some()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        if let Some(c) = self.close_deadline {
            return Some(c);
        }
        let mut d = Some(self.next_heartbeat);
        let mut fold = |x: Option<Instant>| {
            if let Some(x) = x {
                d = Some(d.map_or(x, |d| d.min(x)));
            }
        };
        fold(self.auth_deadline);
        fold(self.pong_deadline);
        fold(self.expiry_at);
        fold(self.typing.values().min().copied());
        d
    }
}

impl Conn {
    pub fn new(gen: u32, io: Transport, peer: SocketAddr, head_deadline: Instant) -> Conn {
        Conn {
            gen,
            io,
            phase: Phase::Head(Vec::new()),
            peer,
            head_deadline,
            armed: None,
            pending: false,
            dirty: false,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Head(_) | Phase::HttpWait | Phase::HttpWrite { .. } => Some(self.head_deadline),
            Phase::Ws(ws) => ws.next_deadline(),
            Phase::Done => None,
        }
    }

    pub fn ws(&mut self) -> Option<&mut Ws> {
        match &mut self.phase {
            Phase::Ws(ws) => Some(ws),
            _ => None,
        }
    }

    pub fn user(&self) -> Option<&Arc<User>> {
        match &self.phase {
            Phase::Ws(ws) => ws.user.as_ref(),
            _ => None,
        }
    }
}
