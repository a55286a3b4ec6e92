//! The transport layer: sockets, HTTP heads, WebSocket frames, deadlines, back-pressure
//! and the cross-thread bus. It knows bytes, frames and connections — nothing about
//! chats, rooms, users or SQLite. Nothing under `net/` imports an application module.
//!
//! ```text
//!   acceptor ──Accept──▶ Shard<A> (one per core): Poll, Slab<Conn<A::Session>>, timers,
//!                        topic lists, inbox = bounded channel + Waker
//!                          │  calls the application through the [`App`] trait
//!                          ▼
//!                        A::on_request / on_ws_open / on_text / on_binary / on_timer /
//!                        on_heartbeat / on_topic / on_msg / on_close
//! ```
//!
//! The application reaches connections only through the `Shard` handle it is given
//! (send a frame, close with a code, subscribe a connection to a topic, re-arm its timer,
//! answer an HTTP request, upgrade it) and, from other threads, through [`bus::Shards`]
//! and [`bus::Topics`]. Messages between threads are data: [`bus::ShardMsg`] carries
//! frames, HTTP answers, topic events and the application's own typed messages.

pub mod acceptor;
pub mod bus;
pub mod conn;
pub mod frame;
pub mod http;
mod io;
pub mod iplimit;
pub mod origin;
pub mod outqueue;
mod read;
pub mod shard;
pub mod stats;
pub mod timer;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use tungstenite::{Bytes, Utf8Bytes};

pub use bus::{ConnId, MayBlock, ShardMsg, Shards, Topics};
pub use conn::Upgrade;
pub use http::{Request, Response};
pub use outqueue::{OutItem, TokenItem};
pub use shard::Shard;
pub use stats::NetMetrics;

/// WebSocket close codes (RFC 6455 §7.4.1) used by the server.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const OVERLOADED: u16 = 1013;
    /// Not sent on the wire: the TCP connection ended without a close handshake.
    pub const ABNORMAL: u16 = 1006;
}

/// Transport settings, fixed at start.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    /// TLS handshake plus request head and body.
    pub head_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// A ping (and `App::on_heartbeat`) this often on an open WebSocket.
    pub heartbeat_interval: Duration,
    /// A ping unanswered this long drops the connection.
    pub pong_timeout: Duration,
    /// Messages read from one connection per turn before others get theirs.
    pub read_budget_messages: u32,
    /// Bytes one read takes from a socket, into the shard's one read buffer.
    pub read_buffer_bytes: usize,
    /// How long a connection closed for a protocol violation keeps discarding input
    /// before the socket is dropped, so that the close frame reaches a client that is
    /// still sending (dropping at once makes the kernel answer with a reset).
    pub close_linger: Duration,
}

/// What the transport shares between its threads; the application owns it and hands it
/// out through [`App::net`].
pub struct Net<A: App> {
    pub cfg: NetConfig,
    pub shards: Shards<A>,
    pub topics: Topics,
    pub metrics: NetMetrics,
    /// `None`: plain TCP; `Some`: every connection speaks TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections per shard (for least-loaded hand-off).
    pub shard_load: Vec<std::sync::atomic::AtomicUsize>,
    /// Open connections per client address.
    pub ip_limit: iplimit::IpLimit,
    /// Global connection cap.
    pub max_connections: usize,
}

/// The application on top of the transport. Every callback runs on the shard thread that
/// owns the connection and must not block: work that waits goes to another thread, and
/// its answer comes back as an [`App::Msg`] through the shard's inbox.
pub trait App: Send + Sync + Sized + 'static {
    /// Per-WebSocket state owned by the application (its protocol session).
    type Session;
    /// Per-shard state owned by the application (decoder scratch space, …).
    type Local: Default;
    /// Typed messages from other threads to a shard.
    type Msg: Send + 'static;
    /// A topic event, shared by every subscriber of its topic on a shard.
    type Topic: Send + Sync + 'static;

    fn net(&self) -> &Net<Self>;

    /// The topic an event belongs to.
    fn topic_key(ev: &Self::Topic) -> &str;

    /// A complete HTTP request. Answer with `Shard::respond`, `Shard::defer` (then
    /// `ShardMsg::Http` later) or `Shard::upgrade`.
    fn on_request(sh: &mut Shard<Self>, slot: usize, req: Request);
    /// The 101 went out: the connection is a WebSocket with the session from `upgrade`.
    fn on_ws_open(sh: &mut Shard<Self>, slot: usize);
    fn on_text(sh: &mut Shard<Self>, slot: usize, text: Utf8Bytes);
    fn on_binary(sh: &mut Shard<Self>, slot: usize, data: Bytes);
    /// A ping arrived (tungstenite has queued the pong, coalesced with any pending one).
    fn on_ping(sh: &mut Shard<Self>, slot: usize);
    /// A heartbeat ping went out (every `NetConfig::heartbeat_interval`).
    fn on_heartbeat(sh: &mut Shard<Self>, slot: usize);
    /// The session's own deadline ([`App::deadline`]) may have passed.
    fn on_timer(sh: &mut Shard<Self>, slot: usize, now: timer::Tick);
    /// The session's earliest deadline, if it has one.
    fn deadline(session: &Self::Session) -> Option<timer::Tick>;
    /// A topic event for one subscribed connection: filter it and queue what is due.
    fn on_topic(sh: &mut Shard<Self>, slot: usize, ev: &Arc<Self::Topic>);
    fn on_msg(sh: &mut Shard<Self>, msg: Self::Msg);
    /// Events of `topic` were dropped for this shard (its inbox was full), or of every
    /// topic when `topic` is `None`: resync this shard's subscribers of it if the
    /// application's events need it (typing does not; presence does).
    fn on_missed(_sh: &mut Shard<Self>, _topic: Option<&str>) {}
    /// The user a WebSocket session belongs to, for log lines (`Shard::label`).
    fn user_of(_s: &Self::Session) -> Option<&str> {
        None
    }
    /// The route a request is on, as a metrics label (`/v1/rooms/{id}`, not the id): HTTP
    /// answers are counted by route and status.
    fn route_label(_req: &Request) -> &'static str {
        "other"
    }
    /// The server is about to close this WebSocket (`code`, `reason`): a last frame may be
    /// queued now (it goes out before the close frame).
    fn on_closing(_sh: &mut Shard<Self>, _slot: usize, _code: u16, _reason: &str) {}
    /// The WebSocket is gone (the slot is already free): forget it everywhere else.
    fn on_close(sh: &mut Shard<Self>, id: ConnId, session: Self::Session, code: u16);
}
