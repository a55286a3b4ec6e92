//! A shard: one event-loop thread that owns its connections outright.
//!
//! It owns a `mio::Poll`, a `Slab<Conn>`, a timer heap and its local subscription lists
//! (conversation → local connection slots). Other threads reach it only through its
//! bounded inbox ([`ShardMsg`]) plus its `mio::Waker`; nothing else touches a `Conn`.
//! A shard never blocks: no SQLite, no HTTP client, no lock held across I/O, and its own
//! sends to other threads are `try_send`.
//!
//! One turn of the loop:
//! 1. poll, with the timeout taken from the timer heap (zero when work is pending);
//! 2. for each readiness event, drive that connection: read until `WouldBlock` or until
//!    its read budget is spent (then it goes on `pending` and the next poll won't sleep);
//! 3. drain the inbox (bounded per turn): accepted sockets, events for connections,
//!    conversation fan-out, worker results;
//! 4. fire due timers;
//! 5. flush every connection that got output this turn (one write burst per connection
//!    per turn, however many events it got).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

use crate::conn::{AfterWrite, Conn, Drain, Phase, Sub, Upgrade, Ws, WsKind};
use crate::http::{self, Response};
use crate::outqueue::{OutItem, Overflow, Pushed, TokenItem};
use crate::protocol::{close, Event};
use crate::server::ServerCtx;
use crate::timer::Timers;
use crate::transport::Transport;

/// The inbox's waker. Connection tokens start after it.
pub const WAKER: Token = Token(0);
const CONN_OFFSET: usize = 1;
/// Inbox messages handled per turn before connections get their turn again.
const INBOX_BUDGET: usize = 8192;
/// Capacity of each shard's inbox.
pub const INBOX_CAPACITY: usize = 65536;
/// Iterations of one drive before we call it a spin and close the connection.
const LOOP_GUARD: u32 = 100_000;

/// Names a connection across threads. Stale ids (the slot was reused) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub shard: u16,
    pub slot: u32,
    pub gen: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}c{}.{}", self.shard, self.slot, self.gen)
    }
}

/// What a live event is, so that a resuming subscriber can drop what its replay held.
#[derive(Debug, Clone)]
pub enum TopicKind {
    /// A stored message appeared with this seq.
    Added { seq: i64 },
    /// A stored message changed (streaming status, final content).
    Updated { message_id: i64 },
    /// A token delta of a streaming reply.
    Token {
        message_id: i64,
        index: u64,
        text: Arc<str>,
    },
    /// The end of a streaming reply.
    Complete { message_id: i64 },
    /// Typing, presence, receipts, room notices: not part of the log.
    Ephemeral,
    /// The room was deleted: members' connections leave it.
    RoomClosed { room_id: Arc<str> },
}

/// One event for every local subscriber of a conversation, encoded once.
#[derive(Debug)]
pub struct TopicEvent {
    pub conversation_id: Arc<str>,
    pub kind: TopicKind,
    pub frame: Utf8Bytes,
    /// Not delivered to this connection (e.g. a typing user's own connection).
    pub exclude: Option<ConnId>,
    /// Not delivered to any connection of this user.
    pub exclude_user: Option<Arc<str>>,
}

pub enum ShardMsg {
    /// A freshly accepted socket from the acceptor.
    Accept(TcpStream, SocketAddr),
    /// One event for one connection.
    Send(ConnId, OutItem),
    /// A worker's HTTP response for a connection in `HttpWait`.
    Http(ConnId, Response),
    /// Close a connection with this code.
    Close(ConnId, u16, String),
    /// Fan-out to the local subscribers of a conversation.
    Topic(Arc<TopicEvent>),
    /// One frame for every authenticated native connection of the shard (admin broadcast).
    All(Utf8Bytes),
    /// Work that must run on this shard (for a connection it owns).
    Run(ConnId, ShardTask),
    Shutdown,
}

/// Work sent to a shard to run against one of its connections (by slot).
pub type ShardTask = Box<dyn FnOnce(&mut Shard, usize) + Send>;

/// The sending side of every shard's inbox.
pub struct ShardHandle {
    tx: Sender<ShardMsg>,
    waker: Waker,
    /// Set by senders, cleared by the shard before it drains: one wake per batch.
    notified: AtomicBool,
}

pub struct Shards {
    handles: Vec<ShardHandle>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Shards {
    pub fn new(handles: Vec<ShardHandle>, metrics: Arc<crate::metrics::Metrics>) -> Shards {
        Shards { handles, metrics }
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    fn wake(&self, h: &ShardHandle) {
        if !h.notified.swap(true, Relaxed) {
            if let Err(e) = h.waker.wake() {
                warn!("waking a shard failed: {e}");
            }
        }
    }

    /// Blocking send: only for threads that are not shards (workers, the store writer).
    /// A full inbox applies back-pressure to the sender.
    pub fn send(&self, shard: usize, msg: ShardMsg) {
        let Some(h) = self.handles.get(shard) else {
            return;
        };
        if h.tx.send(msg).is_ok() {
            self.wake(h);
        }
    }

    /// Never blocks: a full inbox drops the message (counted). For shard threads and
    /// ephemeral events.
    pub fn try_send(&self, shard: usize, msg: ShardMsg) -> bool {
        let Some(h) = self.handles.get(shard) else {
            return false;
        };
        match h.tx.try_send(msg) {
            Ok(()) => {
                self.wake(h);
                true
            }
            Err(TrySendError::Full(_)) => {
                self.metrics.inbox_dropped.fetch_add(1, Relaxed);
                self.wake(h);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    pub fn send_to(&self, conn: ConnId, item: OutItem) {
        self.send(conn.shard as usize, ShardMsg::Send(conn, item));
    }

    pub fn send_event(&self, conn: ConnId, ev: &Event) {
        self.send_to(conn, OutItem::Frame(Utf8Bytes::from(ev.encode())));
    }
}

/// Create a shard's poll, inbox and waker. The handle goes to everyone; the parts to
/// the shard thread.
pub fn shard_parts() -> io::Result<(ShardHandle, Poll, Receiver<ShardMsg>)> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, rx) = crossbeam_channel::bounded(INBOX_CAPACITY);
    Ok((
        ShardHandle {
            tx,
            waker,
            notified: AtomicBool::new(false),
        },
        poll,
        rx,
    ))
}

pub struct Shard {
    pub idx: usize,
    poll: Poll,
    rx: Receiver<ShardMsg>,
    pub conns: Slab<Conn>,
    next_gen: u32,
    timers: Timers,
    pending: Vec<usize>,
    dirty: Vec<usize>,
    /// Local subscribers by conversation.
    pub topics: HashMap<Arc<str>, Vec<usize>>,
    pub ctx: Arc<ServerCtx>,
    pub decoder: crate::protocol::Decoder,
    shutdown_at: Option<Instant>,
    inbox_left: bool,
}

enum Io {
    /// Keep going.
    Continue,
    /// Nothing more now (WouldBlock).
    Blocked,
    /// The connection is finished.
    Closed,
}

impl Shard {
    pub fn new(idx: usize, poll: Poll, rx: Receiver<ShardMsg>, ctx: Arc<ServerCtx>) -> Shard {
        Shard {
            idx,
            poll,
            rx,
            conns: Slab::with_capacity(1024),
            next_gen: 1,
            timers: Timers::default(),
            pending: Vec::new(),
            dirty: Vec::new(),
            topics: HashMap::new(),
            ctx,
            decoder: Default::default(),
            shutdown_at: None,
            inbox_left: false,
        }
    }

    pub fn conn_id(&self, slot: usize) -> Option<ConnId> {
        self.conns.get(slot).map(|c| ConnId {
            shard: self.idx as u16,
            slot: slot as u32,
            gen: c.gen,
        })
    }

    /// The slot of `id` if it still names a live connection of this shard.
    pub fn resolve(&self, id: ConnId) -> Option<usize> {
        let slot = id.slot as usize;
        match self.conns.get(slot) {
            Some(c) if c.gen == id.gen && id.shard as usize == self.idx => Some(slot),
            _ => None,
        }
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        info!("shard {} started", self.idx);
        loop {
            let now = Instant::now();
            let timeout = if !self.pending.is_empty() || self.inbox_left {
                Some(Duration::ZERO)
            } else {
                let t = self.timers.timeout(now);
                match self.shutdown_at {
                    Some(_) => Some(
                        t.unwrap_or(Duration::from_millis(50))
                            .min(Duration::from_millis(50)),
                    ),
                    None => t,
                }
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!("shard {}: poll failed: {e}", self.idx);
                break;
            }
            // Readiness: drive each connection that has something to do.
            for ev in events.iter() {
                match ev.token() {
                    // The inbox is drained below, every turn.
                    WAKER => {}
                    Token(t) => {
                        let slot = t - CONN_OFFSET;
                        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        self.drive(slot, readable, ev.is_writable());
                    }
                }
            }
            // Connections whose read budget ran out last time get another go.
            for slot in std::mem::take(&mut self.pending) {
                if let Some(c) = self.conns.get_mut(slot) {
                    c.pending = false;
                    self.drive(slot, true, false);
                }
            }
            self.drain_inbox();
            self.fire_timers();
            self.flush_dirty();
            if let Some(deadline) = self.shutdown_at {
                if self.conns.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
        }
        let left = self.conns.len();
        for slot in self.conns.iter().map(|(k, _)| k).collect::<Vec<_>>() {
            self.remove(slot, close::GOING_AWAY);
        }
        info!(
            "shard {} stopped ({} connections dropped at the deadline)",
            self.idx, left
        );
    }

    // ------------------------------------------------------------ inbox

    fn drain_inbox(&mut self) {
        // Clear first: a message sent after this point wakes us again.
        if let Some(h) = self.ctx.shards.handles.get(self.idx) {
            h.notified.store(false, Relaxed);
        }
        self.inbox_left = false;
        for _ in 0..INBOX_BUDGET {
            let Ok(msg) = self.rx.try_recv() else { return };
            self.on_msg(msg);
        }
        self.inbox_left = !self.rx.is_empty();
    }

    fn on_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Accept(sock, peer) => self.accept(sock, peer),
            ShardMsg::Send(id, item) => {
                if let Some(slot) = self.resolve(id) {
                    self.queue(slot, item);
                }
            }
            ShardMsg::Http(id, resp) => {
                if let Some(slot) = self.resolve(id) {
                    if matches!(self.conns[slot].phase, Phase::HttpWait) {
                        let bytes = resp.to_bytes();
                        self.start_http_write_held(slot, bytes, AfterWrite::Close, resp.hold);
                    }
                }
            }
            ShardMsg::Close(id, code, reason) => {
                if let Some(slot) = self.resolve(id) {
                    self.close_ws(slot, code, &reason);
                }
            }
            ShardMsg::Topic(ev) => self.deliver_topic(ev),
            ShardMsg::Run(id, f) => {
                if let Some(slot) = self.resolve(id) {
                    f(self, slot);
                }
            }
            ShardMsg::All(frame) => {
                let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for slot in slots {
                    if crate::session::is_native(self, slot) {
                        self.queue(slot, OutItem::Frame(frame.clone()));
                    }
                }
            }
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.shutdown_at = Some(Instant::now() + self.ctx.cfg.server.shutdown_timeout);
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        info!(
            "shard {}: shutting down, closing {} connections",
            self.idx,
            slots.len()
        );
        for slot in slots {
            match self.conns[slot].phase {
                Phase::Ws(_) => self.close_ws(slot, close::GOING_AWAY, "server shutting down"),
                // HTTP requests in flight finish; idle heads are dropped.
                Phase::Head(_) => self.remove(slot, close::GOING_AWAY),
                _ => {}
            }
        }
    }

    // ------------------------------------------------------------ accept

    /// A connection counted by the acceptor is gone.
    fn uncount(&self, peer: SocketAddr) {
        self.ctx.metrics.connections.fetch_sub(1, Relaxed);
        self.ctx.shard_load[self.idx].fetch_sub(1, Relaxed);
        self.ctx.ip_limit.release(peer.ip());
    }

    fn accept(&mut self, sock: TcpStream, peer: SocketAddr) {
        if self.shutdown_at.is_some() {
            self.uncount(peer);
            return;
        }
        let io = match &self.ctx.tls {
            None => Transport::Plain(sock),
            Some(cfg) => match Transport::tls(sock, cfg.clone()) {
                Ok(t) => t,
                Err(e) => {
                    warn!("shard {}: TLS session for {peer} failed: {e}", self.idx);
                    self.uncount(peer);
                    return;
                }
            },
        };
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let deadline = Instant::now() + self.ctx.cfg.server.head_timeout;
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        let conn = entry.insert(Conn::new(gen, io, peer, deadline));
        // Edge-triggered, both directions, once: a writable edge only fires after the
        // socket was full, so this costs no wakeups in steady state and saves an
        // epoll_ctl per blocked write.
        if let Err(e) = self.poll.registry().register(
            conn.io.socket_mut(),
            Token(slot + CONN_OFFSET),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("shard {}: register {peer}: {e}", self.idx);
            self.conns.remove(slot);
            self.uncount(peer);
            return;
        }
        debug!("[s{} c{slot}.{gen}] accepted {peer}", self.idx);
        self.rearm(slot);
    }

    // ------------------------------------------------------------ driving I/O

    fn drive(&mut self, slot: usize, readable: bool, writable: bool) {
        let mut guard = 0u32;
        loop {
            guard += 1;
            if guard > LOOP_GUARD {
                warn!(
                    "[s{} c{slot}] probable infinite loop bug: closing the connection",
                    self.idx
                );
                self.remove(slot, close::INTERNAL);
                return;
            }
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            let r = match &mut conn.phase {
                Phase::Head(_) if readable => self.read_head(slot),
                Phase::Head(_) | Phase::HttpWait => Io::Blocked,
                Phase::HttpWrite { .. } => self.write_http(slot),
                Phase::Ws(ws) => {
                    if writable {
                        ws.blocked = false;
                    }
                    self.mark_dirty(slot);
                    if readable {
                        self.read_ws(slot)
                    } else {
                        Io::Blocked
                    }
                }
                Phase::Done => Io::Closed,
            };
            match r {
                Io::Continue => continue,
                Io::Blocked => break,
                Io::Closed => {
                    self.remove(slot, close::ABNORMAL);
                    return;
                }
            }
        }
        self.rearm(slot);
    }

    fn read_head(&mut self, slot: usize) -> Io {
        let max_head = self.ctx.cfg.server.max_header_bytes;
        let max_body = self.ctx.cfg.server.max_body_bytes;
        let conn = &mut self.conns[slot];
        let Phase::Head(buf) = &mut conn.phase else {
            return Io::Blocked;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match conn.io.read(&mut chunk) {
                Ok(0) => return Io::Closed,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > max_head + max_body + 4096 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("[s{} c{slot}] read error before request: {e}", self.idx);
                    return Io::Closed;
                }
            }
        }
        if buf.is_empty() {
            return Io::Blocked;
        }
        match http::parse_request(buf, max_head, max_body) {
            Ok(None) => Io::Blocked,
            Ok(Some(req)) => {
                self.ctx.metrics.http_requests.fetch_add(1, Relaxed);
                crate::routes::on_request(self, slot, req);
                Io::Continue
            }
            Err(e) => {
                self.start_http_write(slot, e.response().to_bytes(), AfterWrite::Close);
                Io::Continue
            }
        }
    }

    /// Answer a request: write `bytes`, then close or upgrade.
    pub fn start_http_write(&mut self, slot: usize, bytes: Vec<u8>, then: AfterWrite) {
        self.start_http_write_held(slot, bytes, then, None)
    }

    /// As `start_http_write`, keeping `hold` alive until the write ends. A large body
    /// (a file download) gets more time: the head deadline plus one second per 64 KiB.
    /// (A later deadline needs no new timer: the armed one fires, sees the deadline has
    /// not passed, and re-arms for it.)
    pub fn start_http_write_held(
        &mut self,
        slot: usize,
        bytes: Vec<u8>,
        then: AfterWrite,
        hold: Option<Arc<dyn std::fmt::Debug + Send + Sync>>,
    ) {
        let big = bytes.len() > 1 << 16;
        let timeout = self.ctx.cfg.server.head_timeout;
        if let Some(c) = self.conns.get_mut(slot) {
            if big {
                let extra = Duration::from_secs((bytes.len() >> 16) as u64);
                c.head_deadline = c.head_deadline.max(Instant::now() + timeout + extra);
            }
            c.phase = Phase::HttpWrite {
                buf: bytes,
                pos: 0,
                then,
                hold,
            };
            // Written on the next drive (right away when called from a drive; else the
            // connection goes on the pending list).
            if !c.pending {
                c.pending = true;
                self.pending.push(slot);
            }
        }
    }

    pub fn http_wait(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot) {
            c.phase = Phase::HttpWait;
        }
    }

    fn write_http(&mut self, slot: usize) -> Io {
        let conn = &mut self.conns[slot];
        let Phase::HttpWrite { buf, pos, .. } = &mut conn.phase else {
            return Io::Blocked;
        };
        while *pos < buf.len() {
            match conn.io.write(&buf[*pos..]) {
                Ok(0) => return Io::Closed,
                Ok(n) => *pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Io::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Io::Closed,
            }
        }
        match conn.io.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Io::Blocked,
            Err(_) => return Io::Closed,
        }
        let Phase::HttpWrite { then, .. } = std::mem::replace(&mut conn.phase, Phase::Done) else {
            return Io::Closed;
        };
        match then {
            AfterWrite::Close => {
                conn.io.send_close_notify();
                let _ = conn.io.socket().shutdown(std::net::Shutdown::Write);
                Io::Closed
            }
            AfterWrite::Upgrade(up) => {
                self.open_ws(slot, *up);
                Io::Continue
            }
        }
    }

    fn ws_config(&self, kind: WsKind) -> tungstenite::protocol::WebSocketConfig {
        match kind {
            WsKind::Native => self.ctx.ws_config,
            WsKind::Echo => self.ctx.echo_ws_config,
        }
    }

    fn open_ws(&mut self, slot: usize, up: Upgrade) {
        let now = Instant::now();
        let cfg = self.ws_config(up.kind);
        let out_cap = match up.kind {
            WsKind::Native => self.ctx.cfg.ws.out_queue_max_bytes,
            WsKind::Echo => cfg.max_write_buffer_size,
        };
        let ctx = WebSocketContext::from_partially_read(up.leftover, Role::Server, Some(cfg));
        let mut ws = Ws::new(ctx, up.kind, out_cap, now);
        ws.next_heartbeat = now + self.ctx.cfg.ws.heartbeat_interval;
        self.ctx.metrics.ws_connections.fetch_add(1, Relaxed);
        let authed = up.user.is_some();
        if up.kind == WsKind::Native && !authed {
            ws.auth_deadline = Some(now + self.ctx.cfg.auth.auth_timeout);
        }
        self.conns[slot].phase = Phase::Ws(Box::new(ws));
        if let Some(user) = up.user {
            crate::session::on_authenticated(self, slot, user, false, up.auto_join);
        }
        // Bytes that came with the request may already hold frames: read them now.
        if let Some(c) = self.conns.get_mut(slot) {
            if !c.pending {
                c.pending = true;
                self.pending.push(slot);
            }
        }
    }

    fn read_ws(&mut self, slot: usize) -> Io {
        let mut budget = self.ctx.cfg.ws.read_budget_messages;
        loop {
            if budget == 0 {
                // Others get their turn; this connection is read again next turn.
                if let Some(c) = self.conns.get_mut(slot) {
                    if !c.pending {
                        c.pending = true;
                        self.pending.push(slot);
                    }
                }
                return Io::Blocked;
            }
            let (res, closing, kind) = {
                let Some(conn) = self.conns.get_mut(slot) else {
                    return Io::Blocked;
                };
                let Phase::Ws(ws) = &mut conn.phase else {
                    return Io::Blocked;
                };
                let r = ws.ctx.read(&mut conn.io);
                if r.is_ok() {
                    ws.pong_deadline = None; // any frame proves the peer alive
                }
                (r, ws.closing(), ws.kind)
            };
            match res {
                Ok(msg) => {
                    budget -= 1;
                    match msg {
                        Message::Text(t) => {
                            self.ctx.metrics.messages_in.fetch_add(1, Relaxed);
                            self.ctx.metrics.bytes_in.fetch_add(t.len() as u64, Relaxed);
                            if closing {
                                continue;
                            }
                            match kind {
                                WsKind::Echo => self.queue(slot, OutItem::Frame(t)),
                                WsKind::Native => crate::session::on_text(self, slot, &t),
                            }
                        }
                        Message::Binary(b) => {
                            self.ctx.metrics.messages_in.fetch_add(1, Relaxed);
                            self.ctx.metrics.bytes_in.fetch_add(b.len() as u64, Relaxed);
                            if closing {
                                continue;
                            }
                            match kind {
                                // Binary echo bypasses the text queue: tungstenite buffers
                                // it, capped by its max_write_buffer_size.
                                WsKind::Echo => self.echo_binary(slot, b),
                                WsKind::Native => crate::session::send_error(
                                    self,
                                    slot,
                                    crate::protocol::ErrorCode::BadRequest,
                                    "binary frames are not part of the protocol; send JSON text",
                                    None,
                                ),
                            }
                        }
                        // tungstenite queued the pong / the close reply; flush soon.
                        Message::Ping(_) | Message::Close(_) => self.mark_dirty(slot),
                        Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.mark_dirty(slot);
                    return Io::Blocked;
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => {
                    self.remove(slot, close::NORMAL);
                    return Io::Blocked;
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    debug!("[s{} c{slot}] too big: {e}", self.idx);
                    self.close_ws(slot, close::TOO_BIG, "message too big");
                    return Io::Blocked;
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    self.close_ws(slot, close::INVALID_DATA, "invalid UTF-8");
                    return Io::Blocked;
                }
                Err(tungstenite::Error::Protocol(e)) => {
                    debug!("[s{} c{slot}] protocol error: {e}", self.idx);
                    if closing {
                        self.remove(slot, close::PROTOCOL_ERROR);
                    } else {
                        self.close_ws(slot, close::PROTOCOL_ERROR, "protocol error");
                    }
                    return Io::Blocked;
                }
                Err(e) => {
                    debug!("[s{} c{slot}] read: {e}", self.idx);
                    return Io::Closed;
                }
            }
        }
    }

    fn echo_binary(&mut self, slot: usize, b: tungstenite::Bytes) {
        let full = {
            let conn = &mut self.conns[slot];
            let Phase::Ws(ws) = &mut conn.phase else {
                return;
            };
            match ws.ctx.write(&mut conn.io, Message::Binary(b)) {
                Ok(()) => false,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    ws.blocked = true;
                    false
                }
                Err(tungstenite::Error::WriteBufferFull(_)) => true,
                Err(_) => false,
            }
        };
        if full {
            self.close_ws(slot, close::OVERLOADED, "slow consumer");
        } else {
            self.mark_dirty(slot);
        }
    }

    /// Write queued events until the queue is empty or the socket is full.
    fn flush_ws(&mut self, slot: usize) -> Io {
        let metrics = &self.ctx.metrics;
        let Some(conn) = self.conns.get_mut(slot) else {
            return Io::Closed;
        };
        let Phase::Ws(ws) = &mut conn.phase else {
            return Io::Blocked;
        };
        if ws.blocked {
            return Io::Blocked;
        }
        match crate::conn::drain_queue(&mut ws.ctx, &mut conn.io, &mut ws.out, metrics) {
            Drain::Done => Io::Blocked,
            Drain::Blocked => {
                ws.blocked = true;
                Io::Blocked
            }
            Drain::Closed => Io::Closed,
        }
    }

    pub fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    fn flush_dirty(&mut self) {
        for slot in std::mem::take(&mut self.dirty) {
            let Some(c) = self.conns.get_mut(slot) else {
                continue;
            };
            c.dirty = false;
            if let Io::Closed = self.flush_ws(slot) {
                let code = match self.conns.get(slot).map(|c| &c.phase) {
                    Some(Phase::Ws(ws)) if ws.closing() => close::NORMAL,
                    _ => close::ABNORMAL,
                };
                self.remove(slot, code);
            } else {
                self.rearm(slot);
            }
        }
    }

    /// Queue an event for a connection; a slow consumer over its cap is closed with 1013.
    pub fn queue(&mut self, slot: usize, item: OutItem) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let Phase::Ws(ws) = &mut conn.phase else {
            return;
        };
        if ws.closing() {
            return;
        }
        let is_token = matches!(item, OutItem::Token(_));
        match ws.out.push(item) {
            Ok(Pushed::Queued) => {
                if is_token {
                    self.ctx.metrics.tokens_out.fetch_add(1, Relaxed);
                }
            }
            Ok(Pushed::Merged) => {
                self.ctx.metrics.tokens_out.fetch_add(1, Relaxed);
                self.ctx.metrics.token_merges.fetch_add(1, Relaxed);
            }
            Err(Overflow) => {
                info!(
                    "[s{} c{slot}] slow consumer: {} bytes queued, closing 1013",
                    self.idx,
                    ws.out.bytes()
                );
                ws.out.clear();
                self.close_ws(
                    slot,
                    close::OVERLOADED,
                    "slow consumer: outbound queue over its cap",
                );
                return;
            }
        }
        self.mark_dirty(slot);
    }

    pub fn send(&mut self, slot: usize, ev: &Event) {
        self.queue(slot, OutItem::Frame(Utf8Bytes::from(ev.encode())));
    }

    /// Start the close handshake: what is queued still goes out first (except for a slow
    /// consumer, whose queue was dropped), then the close frame.
    pub fn close_ws(&mut self, slot: usize, code: u16, reason: &str) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let Phase::Ws(ws) = &mut conn.phase else {
            self.remove(slot, code);
            return;
        };
        if ws.closing() {
            return;
        }
        // Hand everything queued to tungstenite (its buffer is capped) before the close.
        while let Some(item) = ws.out.pop() {
            let text = match item {
                OutItem::Frame(b) => b,
                OutItem::Token(t) => Utf8Bytes::from(t.encode()),
            };
            match ws.ctx.write(&mut conn.io, Message::Text(text)) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        ws.out.clear();
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        };
        let _ = ws.ctx.close(&mut conn.io, Some(frame));
        ws.close_deadline = Some(Instant::now() + Duration::from_secs(2));
        ws.blocked = false;
        self.ctx.metrics.close(code);
        debug!("[s{} c{slot}] closing {code} {reason}", self.idx);
        self.mark_dirty(slot);
        self.rearm(slot);
    }

    /// Drop a connection and everything that refers to it.
    pub fn remove(&mut self, slot: usize, code: u16) {
        let Some(mut conn) = self.conns.try_remove(slot) else {
            return;
        };
        let _ = self.poll.registry().deregister(conn.io.socket_mut());
        self.uncount(conn.peer);
        let id = ConnId {
            shard: self.idx as u16,
            slot: slot as u32,
            gen: conn.gen,
        };
        if let Phase::HttpWrite {
            then: AfterWrite::Upgrade(up),
            ..
        } = &conn.phase
        {
            // Counted at upgrade time; the 101 never finished.
            if let Some(u) = &up.user {
                self.ctx.hub.user_disconnect(&u.id, id);
            }
        }
        if let Phase::Ws(ws) = &mut conn.phase {
            self.ctx.metrics.ws_connections.fetch_sub(1, Relaxed);
            if !ws.closing() {
                // Closed without our close frame (peer vanished, error): count it here.
                self.ctx.metrics.close(code);
            }
            let subs: Vec<Arc<str>> = ws.subs.keys().cloned().collect();
            let rooms: Vec<(Arc<str>, Arc<str>)> = ws
                .rooms
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect();
            let typing: Vec<Arc<str>> = ws.typing.keys().cloned().collect();
            for up in std::mem::take(&mut ws.uploads) {
                self.ctx.uploads.abort(up.file_id);
            }
            let user = ws.user.clone();
            for conv in subs {
                self.topic_local_remove(&conv, slot);
            }
            if let Some(user) = user {
                crate::session::on_disconnect(self, id, &user, rooms, typing);
            }
        }
        debug!("[s{} c{slot}.{}] removed ({code})", self.idx, conn.gen);
    }

    // ------------------------------------------------------------ topics

    /// Subscribe a local connection to a conversation's live events.
    pub fn topic_local_add(&mut self, conv: &Arc<str>, slot: usize) {
        let list = self.topics.entry(conv.clone()).or_default();
        if list.contains(&slot) {
            return;
        }
        list.push(slot);
        self.ctx.hub.topic_shard_add(conv, self.idx);
    }

    pub fn topic_local_remove(&mut self, conv: &str, slot: usize) {
        let Some(list) = self.topics.get_mut(conv) else {
            return;
        };
        let before = list.len();
        list.retain(|s| *s != slot);
        if list.len() < before {
            self.ctx.hub.topic_shard_remove(conv, self.idx);
        }
        if list.is_empty() {
            self.topics.remove(conv);
        }
    }

    fn deliver_topic(&mut self, ev: Arc<TopicEvent>) {
        let idx = self.idx;
        let Some(list) = self.topics.get(&ev.conversation_id) else {
            return;
        };
        let slots = list.clone();
        for slot in slots {
            enum Then {
                Skip,
                Deliver,
                Overloaded,
            }
            let then = {
                let Some(conn) = self.conns.get_mut(slot) else {
                    continue;
                };
                let gen = conn.gen;
                let Phase::Ws(ws) = &mut conn.phase else {
                    continue;
                };
                let excluded = ev.exclude.is_some_and(|x| {
                    x.shard as usize == idx && x.slot as usize == slot && x.gen == gen
                }) || matches!((&ws.user, &ev.exclude_user), (Some(u), Some(x)) if *u.id == **x);
                match ws.subs.get_mut(&ev.conversation_id) {
                    _ if excluded => Then::Skip,
                    Some(Sub::Pending { buffered }) => {
                        if buffered.len() >= 100_000 {
                            // A replay that never finishes must not grow without bound.
                            Then::Overloaded
                        } else {
                            buffered.push(ev.clone());
                            Then::Skip
                        }
                    }
                    Some(Sub::Live { last_seq, finals }) => match &ev.kind {
                        // Already delivered (by a replay, or earlier live).
                        TopicKind::Added { seq } if *seq <= *last_seq => Then::Skip,
                        TopicKind::Added { seq } => {
                            *last_seq = *seq;
                            Then::Deliver
                        }
                        TopicKind::Token { message_id, .. }
                        | TopicKind::Updated { message_id }
                        | TopicKind::Complete { message_id }
                            if finals.contains(message_id) =>
                        {
                            Then::Skip
                        }
                        _ => Then::Deliver,
                    },
                    None => Then::Skip,
                }
            };
            match then {
                Then::Skip => {}
                Then::Overloaded => {
                    self.close_ws(slot, close::OVERLOADED, "too many events during replay")
                }
                Then::Deliver => {
                    if let TopicKind::RoomClosed { room_id } = &ev.kind {
                        crate::session::room_closed_locally(
                            self,
                            slot,
                            room_id.clone(),
                            ev.conversation_id.clone(),
                        );
                    }
                    self.queue(slot, topic_item(&ev));
                }
            }
        }
    }

    // ------------------------------------------------------------ timers

    /// Make sure the timer heap holds this connection's earliest deadline.
    pub fn rearm(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let Some(next) = c.next_deadline() else {
            return;
        };
        if c.armed.is_none_or(|a| next < a) {
            c.armed = Some(next);
            self.timers.arm(next, slot, c.gen);
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(e) = self.timers.pop_due(now) {
            let Some(c) = self.conns.get_mut(e.slot) else {
                continue;
            };
            if c.gen != e.gen || c.armed != Some(e.at) {
                continue; // stale entry
            }
            c.armed = None;
            self.on_timer(e.slot, now);
            self.rearm(e.slot);
        }
    }

    fn on_timer(&mut self, slot: usize, now: Instant) {
        let hb = self.ctx.cfg.ws.heartbeat_interval;
        let pong = self.ctx.cfg.ws.pong_timeout;
        let grace = self.ctx.cfg.auth.expiry_grace;
        enum Then {
            Nothing,
            Remove,
            RequestTimeout,
            AuthTimeout,
            WarnExpiry,
            CloseExpired,
            Heartbeat { event: bool },
        }
        let then = {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            let Conn {
                io,
                phase,
                head_deadline,
                ..
            } = conn;
            match phase {
                Phase::Head(buf) if now >= *head_deadline => {
                    if buf.is_empty() {
                        Then::Remove
                    } else {
                        *head_deadline = now + Duration::from_secs(1);
                        Then::RequestTimeout
                    }
                }
                Phase::HttpWait | Phase::HttpWrite { .. } if now >= *head_deadline => Then::Remove,
                Phase::Head(_) | Phase::HttpWait | Phase::HttpWrite { .. } | Phase::Done => {
                    Then::Nothing
                }
                Phase::Ws(ws) => {
                    if let Some(d) = ws.close_deadline {
                        // The peer never answered our close frame.
                        if now >= d {
                            Then::Remove
                        } else {
                            Then::Nothing
                        }
                    } else if ws.auth_deadline.is_some_and(|d| now >= d) {
                        ws.auth_deadline = None;
                        Then::AuthTimeout
                    } else if ws.pong_deadline.is_some_and(|d| now >= d) {
                        debug!("[s{} c{slot}] pong timeout", self.idx);
                        Then::Remove
                    } else if ws.expiry_at.is_some_and(|d| now >= d) {
                        if ws.expiry_warned {
                            Then::CloseExpired
                        } else {
                            ws.expiry_warned = true;
                            ws.expiry_at = Some(now + grace);
                            Then::WarnExpiry
                        }
                    } else if now >= ws.next_heartbeat {
                        ws.next_heartbeat = now + hb;
                        if ws.pong_deadline.is_none() {
                            ws.pong_deadline = Some(now + pong);
                        }
                        let _ = ws.ctx.write(io, Message::Ping(Default::default()));
                        Then::Heartbeat {
                            event: ws.kind == WsKind::Native && ws.user.is_some(),
                        }
                    } else {
                        Then::Nothing
                    }
                }
            }
        };
        match then {
            Then::Nothing => {}
            Then::Remove => {
                debug!("[s{} c{slot}] deadline passed, dropping", self.idx);
                self.remove(slot, close::ABNORMAL);
                return;
            }
            Then::RequestTimeout => {
                let r = Response::error(
                    408,
                    crate::protocol::ErrorCode::BadRequest,
                    "request timeout",
                );
                self.start_http_write(slot, r.to_bytes(), AfterWrite::Close);
            }
            Then::AuthTimeout => {
                self.send(
                    slot,
                    &Event::AuthError {
                        message: "no auth message in time".into(),
                        code: crate::protocol::ErrorCode::AuthRequired,
                    },
                );
                self.close_ws(slot, close::POLICY, "authentication timeout");
                return;
            }
            Then::WarnExpiry => {
                let e = Event::error(
                    crate::protocol::ErrorCode::TokenExpired,
                    "token expired: send a fresh {\"type\":\"auth\"} to stay connected",
                    None,
                );
                self.send(slot, &e);
            }
            Then::CloseExpired => {
                self.close_ws(slot, close::POLICY, "token expired");
                return;
            }
            Then::Heartbeat { event } => {
                if event {
                    self.send(
                        slot,
                        &Event::Heartbeat {
                            server_time: crate::protocol::now_rfc3339(),
                        },
                    );
                }
                self.mark_dirty(slot);
            }
        }
        crate::session::expire_typing(self, slot, now);
    }
}

/// The queue item for one subscriber: token events stay mergeable, the rest are shared.
pub fn topic_item(ev: &TopicEvent) -> OutItem {
    match &ev.kind {
        TopicKind::Token {
            message_id,
            index,
            text,
        } => OutItem::Token(TokenItem {
            conversation_id: ev.conversation_id.clone(),
            message_id: *message_id,
            index: *index,
            count: 1,
            text: text.to_string(),
        }),
        _ => OutItem::Frame(ev.frame.clone()),
    }
}

/// Best-effort answer on a socket we will not serve (connection cap).
pub fn refuse(mut sock: std::net::TcpStream, body: &Response) {
    let _ = sock.set_nonblocking(true);
    let _ = sock.write_all(&body.to_bytes());
}
