//! A shard's connection I/O: accept, read heads, write HTTP answers, upgrade, write
//! WebSocket frames, close, remove, and the transport's deadlines (WebSocket input is
//! `read.rs`). Everything protocol-specific is handed to the application through the
//! `App` callbacks.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::timer::Tick;
use mio::net::TcpStream;
use mio::{Interest, Token};
use tungstenite::Bytes;

use super::bus::ConnId;
use super::conn::{drain_queue, AfterWrite, Conn, Drain, HttpTag, Phase, Upgrade, Ws};
use super::http::{self, Response};
use super::outqueue::{OutItem, Overflow, Pushed, OP_PING};
use super::shard::{Shard, CONN_OFFSET};
use super::transport::Transport;
use super::{close, App};

/// Iterations of one drive before we call it a spin and close the connection.
const LOOP_GUARD: u32 = 100_000;
/// How long a peer gets to answer our close frame.
pub(super) const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

pub(super) enum Io {
    /// Keep going.
    Continue,
    /// Nothing more now (WouldBlock).
    Blocked,
    /// The connection is finished.
    Closed,
}

/// Frame header bytes one message may spend beyond as many as its payload has, before the
/// connection is closed 1009 (a masked header is 6 to 14 bytes: at least 4,681 fragments
/// of any size; fragments of 64 bytes or more are never limited).
pub(super) const MAX_FRAMING_BYTES: usize = 64 * 1024;

impl<A: App> Shard<A> {
    // ------------------------------------------------------------ accept

    /// A connection counted by the acceptor is gone.
    fn uncount(&self, peer: SocketAddr) {
        let net = self.app.net();
        net.metrics.connections.fetch_sub(1, Relaxed);
        net.shard_load[self.idx].fetch_sub(1, Relaxed);
        net.ip_limit.release(peer.ip());
    }

    pub(super) fn accept(&mut self, sock: TcpStream, peer: SocketAddr) {
        if self.shutdown_at.is_some() {
            self.uncount(peer);
            return;
        }
        let io = match &self.app.net().tls {
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
        let deadline = Tick::now() + self.app.net().cfg.head_timeout;
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

    pub(super) fn drive(&mut self, slot: usize, readable: bool, writable: bool) {
        let mut guard = 0u32;
        loop {
            guard += 1;
            if guard > LOOP_GUARD {
                warn!(
                    "[{}] probable infinite loop bug: closing the connection",
                    self.label(slot)
                );
                self.remove(slot, close::INTERNAL);
                return;
            }
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            let r = match &mut conn.phase {
                Phase::Head(_) if readable => self.read_head(slot),
                Phase::Head(_) | Phase::HttpWait(_) => Io::Blocked,
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
        let max_head = self.app.net().cfg.max_header_bytes;
        let max_body = self.app.net().cfg.max_body_bytes;
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
                    debug!(
                        "[s{} c{slot}.{}] read error before request: {e}",
                        self.idx, conn.gen
                    );
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
                self.app.net().metrics.http_requests.fetch_add(1, Relaxed);
                self.requests += 1;
                self.http = HttpTag {
                    route: A::route_label(&req),
                    request: self.requests,
                    started: Instant::now(),
                    peer: self.peer(slot),
                };
                A::on_request(self, slot, req);
                Io::Continue
            }
            Err(e) => {
                self.requests += 1;
                self.http = HttpTag {
                    route: "malformed",
                    request: self.requests,
                    started: Instant::now(),
                    peer: self.peer(slot),
                };
                self.respond(slot, e.response());
                Io::Continue
            }
        }
    }

    /// Write `bytes`, then close or upgrade; `hold` lives until the write ends. A large
    /// body (a file download) gets more time: the head deadline plus one second per 64
    /// KiB. (A later deadline needs no new timer: the armed one fires, sees the deadline
    /// has not passed, and re-arms for it.)
    pub(super) fn start_http_write(
        &mut self,
        slot: usize,
        bytes: Vec<u8>,
        then: AfterWrite<A::Session>,
        hold: Option<Arc<dyn std::fmt::Debug + Send + Sync>>,
    ) {
        let big = bytes.len() > 1 << 16;
        let timeout = self.app.net().cfg.head_timeout;
        if let Some(c) = self.conns.get_mut(slot) {
            if big {
                let extra = Duration::from_secs((bytes.len() >> 16) as u64);
                c.head_deadline = c.head_deadline.max(Tick::now() + timeout + extra);
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

    fn open_ws(&mut self, slot: usize, up: Upgrade<A::Session>) {
        let now = Tick::now();
        let mut ws = Ws::new(up.limits, up.out_cap, now, up.session);
        ws.reader.stash(&up.leftover);
        ws.next_heartbeat = now + self.app.net().cfg.heartbeat_interval;
        self.app.net().metrics.ws_connections.fetch_add(1, Relaxed);
        self.conns[slot].phase = Phase::Ws(ws);
        A::on_ws_open(self, slot);
        // Bytes that came with the request may already hold frames: read them now.
        if let Some(c) = self.conns.get_mut(slot) {
            if !c.pending {
                c.pending = true;
                self.pending.push(slot);
            }
        }
    }

    /// Close for a violation of the protocol (too big, bad UTF-8, bad framing): the
    /// reader's state cannot be trusted any more, so input is thrown away from now on —
    /// never buffered — until the peer closes or the close handshake times out. Dropping
    /// the socket at once would make the kernel answer the peer's unread bytes with a
    /// reset, which many clients see instead of our close frame.
    pub(super) fn close_violation(&mut self, slot: usize, code: u16, reason: &str) {
        self.close_ws(slot, code, reason);
        if let Some(ws) = self.conns.get_mut(slot).and_then(|c| c.ws()) {
            ws.discard = true;
            let linger = self.app.net().cfg.close_linger;
            ws.close_deadline = Some(Tick::now() + linger);
        }
        self.rearm(slot);
    }

    /// Write queued events until the queue is empty or the socket is full.
    fn flush_ws(&mut self, slot: usize) -> Io {
        let metrics = &self.app.net().metrics;
        let Some(conn) = self.conns.get_mut(slot) else {
            return Io::Closed;
        };
        let Phase::Ws(ws) = &mut conn.phase else {
            return Io::Blocked;
        };
        if ws.blocked {
            return Io::Blocked;
        }
        match drain_queue(&mut conn.io, &mut ws.out, metrics) {
            // Our answer to the peer's close is out: the server closes TCP first.
            Drain::Done if ws.finish => Io::Closed,
            // Failed for a violation, our close frame is out: send FIN now (a lingering
            // close), so that the peer closes its side and the discarding reader sees EOF,
            // instead of both ends waiting for the other until the linger runs out.
            Drain::Done if ws.discard && !ws.write_shut => {
                ws.write_shut = true;
                conn.io.send_close_notify();
                let _ = conn.io.socket().shutdown(std::net::Shutdown::Write);
                Io::Blocked
            }
            Drain::Done => Io::Blocked,
            Drain::Blocked => {
                ws.blocked = true;
                Io::Blocked
            }
            Drain::Closed => Io::Closed,
        }
    }

    pub(super) fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    pub(super) fn flush_dirty(&mut self) {
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
        let metrics = &self.app.net().metrics;
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
                    metrics.tokens_out.fetch_add(1, Relaxed);
                }
            }
            Ok(Pushed::Merged) => {
                metrics.tokens_out.fetch_add(1, Relaxed);
                metrics.token_merges.fetch_add(1, Relaxed);
            }
            Err(Overflow) => {
                info!(
                    "[s{} c{slot}.{}] slow consumer: {} bytes queued, closing 1013",
                    self.idx,
                    conn.gen,
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

    /// Start the close handshake: what is queued still goes out first (except for a slow
    /// consumer, whose queue was dropped), then the close frame. Not a WebSocket: dropped.
    pub fn close_ws(&mut self, slot: usize, code: u16, reason: &str) {
        if matches!(self.conns.get(slot).map(|c| &c.phase), Some(Phase::Ws(ws)) if !ws.closing()) {
            A::on_closing(self, slot, code, reason);
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let gen = conn.gen;
        let Phase::Ws(ws) = &mut conn.phase else {
            self.remove(slot, code);
            return;
        };
        if ws.closing() {
            return;
        }
        // What is queued goes out before the close frame (a slow consumer's queue was
        // dropped; a partly written frame is finished first).
        ws.out.push_unbounded(OutItem::close(Some(code), reason));
        ws.close_deadline = Some(Tick::now() + CLOSE_HANDSHAKE);
        ws.blocked = false;
        self.app.net().metrics.close(code);
        debug!("[s{} c{slot}.{gen}] closing {code} {reason}", self.idx);
        self.mark_dirty(slot);
        self.rearm(slot);
    }

    /// Drop a connection and everything that refers to it.
    pub(super) fn remove(&mut self, slot: usize, code: u16) {
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
        match conn.phase {
            // The 101 never finished: the session was made but never opened.
            Phase::HttpWrite {
                then: AfterWrite::Upgrade(up),
                ..
            } => A::on_close(self, id, up.session, code),
            Phase::Ws(ws) => {
                let metrics = &self.app.net().metrics;
                metrics.ws_connections.fetch_sub(1, Relaxed);
                if !ws.closing() {
                    // Closed without our close frame (peer vanished, error): count it here.
                    metrics.close(code);
                }
                A::on_close(self, id, ws.session, code);
            }
            _ => {}
        }
        debug!("[s{} c{slot}.{}] removed ({code})", self.idx, conn.gen);
    }

    // ------------------------------------------------------------ deadlines

    pub(super) fn on_timer(&mut self, slot: usize, now: Tick) {
        let hb = self.app.net().cfg.heartbeat_interval;
        let pong = self.app.net().cfg.pong_timeout;
        enum Then {
            Nothing,
            Remove,
            RequestTimeout,
            Heartbeat,
        }
        let then = {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            let Conn {
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
                Phase::HttpWait(_) | Phase::HttpWrite { .. } if now >= *head_deadline => {
                    Then::Remove
                }
                Phase::Head(_) | Phase::HttpWait(_) | Phase::HttpWrite { .. } | Phase::Done => {
                    return
                }
                Phase::Ws(ws) => {
                    if let Some(d) = ws.close_deadline {
                        // The peer never answered our close frame.
                        if now >= d {
                            Then::Remove
                        } else {
                            return;
                        }
                    } else if ws.pong_deadline.is_some_and(|d| now >= d) {
                        debug!("[{}] pong timeout", self.label(slot));
                        Then::Remove
                    } else if now >= ws.next_heartbeat {
                        ws.next_heartbeat = now + hb;
                        if ws.pong_deadline.is_none() {
                            ws.pong_deadline = Some(now + pong);
                        }
                        ws.out
                            .push_unbounded(OutItem::Control(OP_PING, Bytes::new()));
                        Then::Heartbeat
                    } else {
                        Then::Nothing
                    }
                }
            }
        };
        match then {
            Then::Nothing => {}
            Then::Remove => {
                debug!("[{}] deadline passed, dropping", self.label(slot));
                self.remove(slot, close::ABNORMAL);
                return;
            }
            Then::RequestTimeout => {
                let r = Response::error(408, "BAD_REQUEST", "request timeout");
                self.respond(slot, r);
                return;
            }
            Then::Heartbeat => {
                self.mark_dirty(slot);
                A::on_heartbeat(self, slot);
            }
        }
        A::on_timer(self, slot, now);
    }
}
