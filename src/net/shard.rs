//! A shard: one event-loop thread that owns its connections outright.
//!
//! It owns a `mio::Poll`, a `Slab<Conn>`, a timer heap and its local topic lists
//! (topic → local connection slots). Other threads reach it only through its bounded
//! inbox ([`ShardMsg`]) plus its `mio::Waker`; nothing else touches a `Conn`. A shard
//! never blocks: no SQLite, no HTTP client, no lock held across I/O, and its own sends to
//! other threads are `try_send`.
//!
//! One turn of the loop:
//! 1. poll, with the timeout taken from the timer heap (zero when work is pending);
//! 2. for each readiness event, drive that connection (`io.rs`): read until `WouldBlock`
//!    or until its read budget is spent (then it goes on `pending` and the next poll
//!    won't sleep);
//! 3. drain the inbox (bounded per turn): accepted sockets, frames for connections, topic
//!    fan-out, deferred HTTP answers, the application's messages;
//! 4. fire due timers;
//! 5. flush every connection that got output this turn (one write burst per connection
//!    per turn, however many events it got).
//!
//! The fields are private: the application acts on its connections through the methods
//! below, which are the whole of what it may do to a connection.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{debug, info, warn};
use mio::{Events, Poll, Token};
use slab::Slab;
use tungstenite::{Bytes, Utf8Bytes};

use super::bus::{self, ConnId, ShardMsg, WAKER};
use super::conn::{AfterWrite, Conn, HttpTag, Phase, Upgrade};
use super::http::Response;
use super::outqueue::OutItem;
use super::timer::{Tick, Timers};
use super::{close, App};

pub(super) const CONN_OFFSET: usize = 1;
/// Inbox messages handled per turn before connections get their turn again.
const INBOX_BUDGET: usize = 8192;

pub struct Shard<A: App> {
    pub(super) idx: usize,
    pub(super) poll: Poll,
    rx: Receiver<ShardMsg<A>>,
    pub(super) conns: Slab<Conn<A::Session>>,
    pub(super) next_gen: u32,
    pub(super) timers: Timers,
    pub(super) pending: Vec<usize>,
    pub(super) dirty: Vec<usize>,
    /// Local subscribers by topic: (slot, generation), so a stale entry never reaches
    /// the connection that reused its slot.
    topics: HashMap<Arc<str>, Vec<(usize, u32)>>,
    /// The request being handled (its route label and id), for the answer's counters,
    /// log line and `X-Request-Id`.
    pub(super) http: HttpTag,
    /// Requests read so far (request ids are `s{idx}-{n}`).
    pub(super) requests: u64,
    pub(super) app: Arc<A>,
    local: A::Local,
    pub(super) shutdown_at: Option<Instant>,
    inbox_left: bool,
    /// Set for the readiness event being handled when it was a plain "readable" (not
    /// the peer's close or an error): `read_ws` may then stop at a short read
    /// (`io.rs`, `Counted`). Taken (reset) by the read it applies to.
    pub(super) short_read_drains: bool,
    /// Every WebSocket of the shard is read into this one buffer (`io.rs`, `read_ws`):
    /// a connection keeps bytes only while a frame of it is partial.
    pub(super) read_buf: Vec<u8>,
}

impl<A: App> Shard<A> {
    pub fn new(idx: usize, poll: Poll, rx: Receiver<ShardMsg<A>>, app: Arc<A>) -> Shard<A> {
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
            http: HttpTag {
                route: "malformed",
                request: 0,
                started: Instant::now(),
                peer: None,
            },
            requests: 0,
            app,
            local: A::Local::default(),
            shutdown_at: None,
            inbox_left: false,
            short_read_drains: false,
            read_buf: Vec::new(),
        }
    }

    // ------------------------------------------------------------ the application's handle

    pub fn idx(&self) -> usize {
        self.idx
    }

    /// The application (shared by every thread).
    pub fn app(&self) -> &Arc<A> {
        &self.app
    }

    /// The application's state for this shard.
    pub fn local(&mut self) -> &mut A::Local {
        &mut self.local
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

    /// `sN cSLOT.GEN`, the prefix of every log line about a connection.
    /// How log lines name a connection: `s0 c12.3`, and ` user=alice` once a
    /// WebSocket's user is known (`App::user_of`).
    pub fn label(&self, slot: usize) -> String {
        match self.conns.get(slot) {
            Some(c) => match &c.phase {
                Phase::Ws(ws) => match A::user_of(&ws.session) {
                    Some(u) => format!("s{} c{slot}.{} user={u}", self.idx, c.gen),
                    None => format!("s{} c{slot}.{}", self.idx, c.gen),
                },
                _ => format!("s{} c{slot}.{}", self.idx, c.gen),
            },
            None => format!("s{} c{slot}", self.idx),
        }
    }

    /// The address the HTTP request being handled came from.
    pub fn request_peer(&self) -> Option<std::net::SocketAddr> {
        self.http.peer
    }

    pub fn peer(&self, slot: usize) -> Option<std::net::SocketAddr> {
        self.conns.get(slot).map(|c| c.peer)
    }

    /// The session of an open WebSocket.
    pub fn session(&self, slot: usize) -> Option<&A::Session> {
        match &self.conns.get(slot)?.phase {
            Phase::Ws(ws) => Some(&ws.session),
            _ => None,
        }
    }

    pub fn session_mut(&mut self, slot: usize) -> Option<&mut A::Session> {
        match &mut self.conns.get_mut(slot)?.phase {
            Phase::Ws(ws) => Some(&mut ws.session),
            _ => None,
        }
    }

    /// The shard's application state and one connection's session, borrowed together.
    pub fn local_and_session(&mut self, slot: usize) -> (&mut A::Local, Option<&mut A::Session>) {
        let session = match self.conns.get_mut(slot).map(|c| &mut c.phase) {
            Some(Phase::Ws(ws)) => Some(&mut ws.session),
            _ => None,
        };
        (&mut self.local, session)
    }

    /// Is the WebSocket on `slot` closing (our close frame queued)?
    pub fn is_closing(&self, slot: usize) -> bool {
        match self.conns.get(slot).map(|c| &c.phase) {
            Some(Phase::Ws(ws)) => ws.closing(),
            _ => true,
        }
    }

    /// The slots of every open WebSocket on this shard.
    pub fn ws_slots(&self) -> Vec<usize> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Ws(_)))
            .map(|(k, _)| k)
            .collect()
    }

    /// Queue a text frame.
    pub fn send_frame(&mut self, slot: usize, frame: Utf8Bytes) {
        self.queue(slot, OutItem::Frame(frame));
    }

    /// Answer an HTTP request and close.
    pub fn respond(&mut self, slot: usize, resp: Response) {
        // A deferred answer belongs to the request that waited for it.
        let tag = match self.conns.get(slot).map(|c| &c.phase) {
            Some(Phase::HttpWait(t)) => *t,
            _ => self.http,
        };
        self.app.net().metrics.http_answer(tag.route, resp.status);
        let id = format!("s{}-{}", self.idx, tag.request);
        let took = tag.started.elapsed();
        if resp.status >= 500 {
            warn!(
                "[{} r={id}] {} answered {} in {took:?}",
                self.label(slot),
                tag.route,
                resp.status
            );
        } else {
            debug!(
                "[{} r={id}] {} answered {} in {took:?}",
                self.label(slot),
                tag.route,
                resp.status
            );
        }
        let resp = resp.with_header("X-Request-Id", id);
        let bytes = resp.to_bytes();
        self.start_http_write(slot, bytes, AfterWrite::Close, resp.hold);
    }

    /// The answer will come later as `ShardMsg::Http` (a worker is on it); until then the
    /// connection waits, bounded by the head deadline.
    pub fn defer(&mut self, slot: usize) {
        let tag = self.http;
        if let Some(c) = self.conns.get_mut(slot) {
            c.phase = Phase::HttpWait(tag);
        }
    }

    /// Write the `101` answer, then become a WebSocket with this session.
    pub fn upgrade(&mut self, slot: usize, response_101: Vec<u8>, up: Upgrade<A::Session>) {
        self.app.net().metrics.http_answer(self.http.route, 101);
        debug!(
            "[{} r=s{}-{}] {} upgraded to WebSocket",
            self.label(slot),
            self.idx,
            self.http.request,
            self.http.route
        );
        self.start_http_write(slot, response_101, AfterWrite::Upgrade(Box::new(up)), None);
    }

    /// Queue a binary frame (the echo endpoint); bounded like every queued event.
    pub fn send_binary(&mut self, slot: usize, data: Bytes) {
        self.queue(slot, OutItem::Binary(data))
    }

    /// The shard's own copy of `topic`'s name while a local connection follows it: members
    /// of one room share it instead of holding a copy each (~64 B per member).
    pub fn topic_key(&self, topic: &str) -> Option<Arc<str>> {
        self.topics.get_key_value(topic).map(|(k, _)| k.clone())
    }

    /// A local connection that follows `topic`, if any.
    pub fn topic_member(&self, topic: &str) -> Option<usize> {
        self.topics.get(topic)?.first().map(|(slot, _)| *slot)
    }

    /// Subscribe a local connection to a topic's events.
    pub fn subscribe(&mut self, topic: &Arc<str>, slot: usize) {
        let Some(gen) = self.conns.get(slot).map(|c| c.gen) else {
            return;
        };
        let list = self.topics.entry(topic.clone()).or_default();
        if list.iter().any(|(s, _)| *s == slot) {
            return;
        }
        list.push((slot, gen));
        self.app.net().topics.add(topic, self.idx);
    }

    pub fn unsubscribe(&mut self, topic: &str, slot: usize) {
        let Some(list) = self.topics.get_mut(topic) else {
            return;
        };
        let before = list.len();
        list.retain(|(s, _)| *s != slot);
        if list.len() < before {
            self.app.net().topics.remove(topic, self.idx);
        }
        if list.is_empty() {
            self.topics.remove(topic);
        }
    }

    // ------------------------------------------------------------ the loop

    pub fn run(mut self) {
        bus::mark_shard_thread();
        let mut events = Events::with_capacity(1024);
        info!("shard {} started", self.idx);
        loop {
            let now = Tick::now();
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
                        let hup = ev.is_read_closed() || ev.is_error();
                        let readable = ev.is_readable() || hup;
                        self.short_read_drains = readable && !hup;
                        self.drive(slot, readable, ev.is_writable());
                        self.short_read_drains = false;
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
            self.repair_missed();
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
        self.app.net().shards.clear_notified(self.idx);
        self.inbox_left = false;
        for _ in 0..INBOX_BUDGET {
            let Ok(msg) = self.rx.try_recv() else { return };
            self.on_msg(msg);
        }
        self.inbox_left = !self.rx.is_empty();
    }

    fn on_msg(&mut self, msg: ShardMsg<A>) {
        match msg {
            ShardMsg::Accept(sock, peer) => self.accept(sock, peer),
            ShardMsg::Http(id, resp) => {
                if let Some(slot) = self.resolve(id) {
                    if matches!(self.conns[slot].phase, Phase::HttpWait(_)) {
                        self.respond(slot, resp);
                    }
                }
            }
            ShardMsg::Close(id, code, reason) => {
                if let Some(slot) = self.resolve(id) {
                    self.close_ws(slot, code, &reason);
                }
            }
            ShardMsg::Topic(ev) => self.deliver_topic(ev),
            ShardMsg::App(m) => A::on_msg(self, m),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    /// Topics whose events were dropped on our full inbox: the application resyncs.
    fn repair_missed(&mut self) {
        let Some(missed) = self.app.net().shards.take_missed(self.idx) else {
            return;
        };
        if missed.all {
            A::on_missed(self, None);
        } else {
            for k in missed.keys {
                A::on_missed(self, Some(&k));
            }
        }
    }

    /// This shard's connections subscribed to `topic`.
    pub fn local_subscribers(&self, topic: &str) -> Vec<usize> {
        self.topics
            .get(topic)
            .map(|l| l.iter().map(|(s, _)| *s).collect())
            .unwrap_or_default()
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_at.is_some() {
            return;
        }
        self.shutdown_at = Some(Instant::now() + self.app.net().cfg.shutdown_timeout);
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

    fn deliver_topic(&mut self, ev: Arc<A::Topic>) {
        let Some(list) = self.topics.get(A::topic_key(&ev)) else {
            return;
        };
        let subscribers = list.clone();
        for (slot, gen) in subscribers {
            if self.conns.get(slot).is_some_and(|c| c.gen == gen) {
                A::on_topic(self, slot, &ev);
            }
        }
    }

    // ------------------------------------------------------------ timers

    /// Make sure the timer heap holds this connection's earliest deadline (call after
    /// changing a session deadline).
    pub fn rearm(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let Some(next) = c.next_deadline(A::deadline) else {
            return;
        };
        if c.armed.is_none_or(|a| next < a) {
            c.armed = Some(next);
            self.timers.arm(next, slot, c.gen);
        }
    }

    fn fire_timers(&mut self) {
        let now = Tick::now();
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
}
