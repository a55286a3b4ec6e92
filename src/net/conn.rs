//! One client connection, owned by exactly one shard.
//!
//! ```text
//!  Accepted ─▶ Head ──(bad head / plain HTTP)──────────────▶ HttpWrite ─▶ closed
//!   [TLS       │  └──(deferred: answer from a worker)──▶ HttpWait ─▶ HttpWrite ─▶ closed
//!  handshake   └──(App::on_request upgrades)─▶ HttpWrite(101) ─▶ Ws ─▶ closing ─▶ closed
//!  inside Head]
//! ```
//! - `Head`: bytes are read until a complete request (head + body) is buffered; bounded by
//!   `max_header_bytes` + `max_body_bytes` and by `head_timeout` (which also covers the
//!   TLS handshake, driven transparently by [`Transport`]).
//! - `HttpWrite`: a response is written out; then the connection closes or, after a 101,
//!   becomes a WebSocket (bytes the client sent after its request are kept and read first).
//! - `Ws`: an open WebSocket. Inbound frames are decoded by its [`Reader`] (nothing held
//!   while no frame is partial); outbound frames, control frames included, wait in a
//!   byte-bounded [`OutQueue`], written while the socket accepts bytes (`blocked == false`).
//!   The transport's deadlines are heartbeat, pong and the close handshake; the
//!   application's session (`S`) adds its own through `App::deadline`.
//!
//! Every deadline of a connection is folded into one armed timer ([`Conn::next_deadline`]).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::timer::Tick;

use super::frame::{Limits, Reader};
use super::outqueue::{OutQueue, Wrote};
use super::stats::NetMetrics;
use super::transport::Transport;

pub struct Conn<S> {
    pub gen: u32,
    pub io: Transport,
    pub phase: Phase<S>,
    pub peer: SocketAddr,
    pub head_deadline: Tick,
    /// The deadline currently in the shard's timer heap for this connection.
    pub armed: Option<Tick>,
    /// On the shard's list of connections with unread input left over (budget spent).
    pub pending: bool,
    /// On the shard's list of connections with output to flush at the end of the turn.
    pub dirty: bool,
}

/// What the answer to an HTTP request is logged and counted under.
#[derive(Debug, Clone, Copy)]
pub struct HttpTag {
    /// `App::route_label` of the request.
    pub route: &'static str,
    /// Per shard, from 1: with the shard, the request id (`X-Request-Id: s0-42`).
    pub request: u64,
    pub started: Instant,
    /// Who sent it.
    pub peer: Option<std::net::SocketAddr>,
}

// The WebSocket variant is the big one on purpose: most connections are WebSockets for
// their whole life, and an HTTP connection's slot is only address space until used.
#[allow(clippy::large_enum_variant)]
pub enum Phase<S> {
    Head(Vec<u8>),
    /// Waiting for a worker's answer to this request.
    HttpWait(HttpTag),
    HttpWrite {
        buf: Vec<u8>,
        pos: usize,
        then: AfterWrite<S>,
        /// Released when the write ends (a download's memory permit).
        hold: Option<Arc<dyn std::fmt::Debug + Send + Sync>>,
    },
    /// Inline, not boxed: the slab's slot is the connection's memory (no allocation of
    /// its own, nothing for the allocator to scatter among short-lived ones).
    Ws(Ws<S>),
    Done,
}

pub enum AfterWrite<S> {
    Close,
    Upgrade(Box<Upgrade<S>>),
}

/// What becomes of a connection after its 101 response is written.
pub struct Upgrade<S> {
    /// The application's state for this WebSocket.
    pub session: S,
    /// Sizes this endpoint accepts (message and frame).
    pub limits: Limits,
    /// Outbound bytes queued before the client counts as a slow consumer (close 1013).
    pub out_cap: usize,
    /// Bytes that followed the request: the client's first frames.
    pub leftover: Vec<u8>,
}

/// An open WebSocket: the transport's half (frames, queue, liveness) and the
/// application's session.
pub struct Ws<S> {
    pub reader: Reader,
    pub limits: Limits,
    pub out: OutQueue,
    /// The socket returned WouldBlock on write; wait for a writable event.
    pub blocked: bool,
    pub next_heartbeat: Tick,
    pub pong_deadline: Option<Tick>,
    /// Set once our close frame is queued: the time to give up on the peer's close.
    pub close_deadline: Option<Tick>,
    /// Closed for a violation: input is read and thrown away (never buffered) until
    /// the peer closes or `close_deadline`, so our close frame is not lost to a reset.
    pub discard: bool,
    /// Our side of the TCP connection is shut (after a violation's close frame).
    pub write_shut: bool,
    /// The peer's close frame arrived and ours is queued: once the queue is written, the
    /// server closes TCP first (RFC 6455 §7.1.1).
    pub finish: bool,
    /// Bytes read since the last complete message (frame headers included): bounds the
    /// fragments of one message (`io.rs`, `MAX_FRAMING_BYTES`).
    pub partial_bytes: u32,
    pub session: S,
}

impl<S> Ws<S> {
    pub fn new(limits: Limits, out_cap: usize, now: Tick, session: S) -> Ws<S> {
        Ws {
            reader: Reader::default(),
            limits,
            out: OutQueue::new(out_cap),
            blocked: false,
            next_heartbeat: now,
            pong_deadline: None,
            close_deadline: None,
            discard: false,
            write_shut: false,
            finish: false,
            partial_bytes: 0,
            session,
        }
    }

    pub fn closing(&self) -> bool {
        self.close_deadline.is_some()
    }

    fn next_deadline(&self, session_deadline: Option<Tick>) -> Option<Tick> {
        if let Some(c) = self.close_deadline {
            return Some(c);
        }
        let mut d = self.next_heartbeat;
        for x in [self.pong_deadline, session_deadline].into_iter().flatten() {
            d = d.min(x);
        }
        Some(d)
    }
}

impl<S> Conn<S> {
    pub fn new(gen: u32, io: Transport, peer: SocketAddr, head_deadline: Tick) -> Conn<S> {
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

    /// The earliest deadline; `session_deadline` is the application's for its session.
    pub fn next_deadline(&self, session_deadline: impl Fn(&S) -> Option<Tick>) -> Option<Tick> {
        match &self.phase {
            Phase::Head(_) | Phase::HttpWait(_) | Phase::HttpWrite { .. } => {
                Some(self.head_deadline)
            }
            Phase::Ws(ws) => ws.next_deadline(session_deadline(&ws.session)),
            Phase::Done => None,
        }
    }

    pub fn ws(&mut self) -> Option<&mut Ws<S>> {
        match &mut self.phase {
            Phase::Ws(ws) => Some(ws),
            _ => None,
        }
    }
}

/// What one write burst achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Drain {
    /// The queue is empty and everything is on the wire.
    Done,
    /// The socket would block; wait for a writable event. Nothing is lost: the queue
    /// remembers how much of its front frame went out.
    Blocked,
    /// The socket is gone.
    Closed,
}

/// Write until the queue is empty or the socket would block (vectored writes,
/// `OutQueue::write_to`), then flush the stream: TLS takes frames into its records and
/// may still hold some when the socket stopped taking them — they must go out on the next
/// writable event even when the queue is empty by then (without this flush they waited
/// for the next frame of ours, a heartbeat up to 30 s later). Generic over the stream so
/// that it is tested over in-memory streams; the shard calls it with the connection's
/// `Transport`.
pub fn drain_queue<S: Write>(io: &mut S, out: &mut OutQueue, metrics: &NetMetrics) -> Drain {
    match out.write_to(io, metrics) {
        Wrote::All => {}
        Wrote::Blocked => return Drain::Blocked,
        Wrote::Closed => return Drain::Closed,
    }
    loop {
        match io.flush() {
            Ok(()) => return Drain::Done,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Drain::Blocked,
            Err(_) => return Drain::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::outqueue::{OutItem, TokenItem, OP_PONG};
    use std::io::{self, Read};
    use tungstenite::protocol::{Role, WebSocketContext};
    use tungstenite::{Bytes, Message, Utf8Bytes};

    /// An in-memory socket that takes at most `chunk` bytes per write and `budget` bytes
    /// in all before it answers WouldBlock — a peer that reads slowly — and whose
    /// `input` is what the server reads.
    struct SlowPeer {
        input: io::Cursor<Vec<u8>>,
        wire: Vec<u8>,
        budget: usize,
        chunk: usize,
    }

    impl SlowPeer {
        fn new(budget: usize, chunk: usize) -> SlowPeer {
            SlowPeer {
                input: io::Cursor::new(Vec::new()),
                wire: Vec::new(),
                budget,
                chunk,
            }
        }
    }

    impl Read for SlowPeer {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            match self.input.read(b)? {
                0 => Err(io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        }
    }

    impl Write for SlowPeer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.chunk).min(self.budget);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.wire.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        /// Like a socket: takes bytes across slices, up to `chunk` and `budget`, so a
        /// write can end anywhere — inside a header, between frames, inside a payload.
        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.chunk.min(self.budget);
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room);
                self.wire.extend_from_slice(&b[..take]);
                n += take;
                room -= take;
                if room == 0 {
                    break;
                }
            }
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_writes_that_stop_anywhere_lose_and_repeat_nothing() {
        // Every write size from 1 to 40 bytes against frames with 2- and 4-byte headers.
        for chunk in 1..=40 {
            let metrics = NetMetrics::default();
            let mut out = OutQueue::new(1 << 20);
            let sent: Vec<String> = (0..30)
                .map(|i| format!("{i}:{}", "y".repeat(if i % 3 == 0 { 200 } else { i })))
                .collect();
            for m in &sent {
                out.push(OutItem::Frame(Utf8Bytes::from(m.clone())))
                    .unwrap();
            }
            let mut peer = SlowPeer::new(0, chunk);
            let mut rounds = 0;
            loop {
                peer.budget += 3 * chunk + 1;
                rounds += 1;
                match drain_queue(&mut peer, &mut out, &metrics) {
                    Drain::Done => break,
                    Drain::Blocked => assert!(rounds < 100_000),
                    Drain::Closed => panic!("closed"),
                }
            }
            assert_eq!(client_reads(&peer.wire), sent, "write size {chunk}");
        }
    }

    /// Decode everything a client would read from `wire`.
    fn client_reads(wire: &[u8]) -> Vec<String> {
        let mut client = WebSocketContext::new(Role::Client, None);
        let mut stream = io::Cursor::new(wire.to_vec());
        struct Rw<'a>(&'a mut io::Cursor<Vec<u8>>);
        impl Read for Rw<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                match self.0.read(b)? {
                    0 => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                }
            }
        }
        impl Write for Rw<'_> {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Vec::new();
        loop {
            match client.read(&mut Rw(&mut stream)) {
                Ok(Message::Text(t)) => out.push(t.to_string()),
                Ok(Message::Pong(_)) => out.push("<pong>".into()),
                _ => return out,
            }
        }
    }

    #[test]
    fn a_pong_queued_while_a_frame_is_half_written_follows_that_frame() {
        let metrics = NetMetrics::default();
        let mut out = OutQueue::new(1 << 20);
        let big = "a".repeat(5000);
        out.push(OutItem::Frame(Utf8Bytes::from(big.clone())))
            .unwrap();
        let mut peer = SlowPeer::new(1000, usize::MAX);
        assert_eq!(drain_queue(&mut peer, &mut out, &metrics), Drain::Blocked);
        assert!(out.partial());
        // The client pings meanwhile: the pong queues behind the frame on the wire.
        out.push(OutItem::Control(OP_PONG, Bytes::new())).unwrap();
        out.push(OutItem::Frame(Utf8Bytes::from("after"))).unwrap();
        peer.budget = 1 << 20;
        assert_eq!(drain_queue(&mut peer, &mut out, &metrics), Drain::Done);
        assert_eq!(
            client_reads(&peer.wire),
            vec![big, "<pong>".into(), "after".to_string()]
        );
    }

    #[test]
    fn a_socket_that_blocks_mid_frame_loses_and_repeats_nothing() {
        let metrics = NetMetrics::default();
        let mut out = OutQueue::new(1 << 20);
        for i in 0..100 {
            out.push(OutItem::Frame(Utf8Bytes::from(format!(
                "{{\"n\":{i},\"pad\":\"{}\"}}",
                "x".repeat(i)
            ))))
            .unwrap();
        }
        let mut peer = SlowPeer::new(1500, 97);
        assert_eq!(drain_queue(&mut peer, &mut out, &metrics), Drain::Blocked);
        let partial = client_reads(&peer.wire);
        assert!(!partial.is_empty() && partial.len() < 100);
        // The peer reads on; every later burst continues exactly where the socket stopped.
        let mut rounds = 0;
        loop {
            peer.budget += 700;
            rounds += 1;
            match drain_queue(&mut peer, &mut out, &metrics) {
                Drain::Done => break,
                Drain::Blocked => assert!(rounds < 1000),
                Drain::Closed => panic!("closed"),
            }
        }
        let got = client_reads(&peer.wire);
        assert_eq!(got.len(), 100);
        for (i, m) in got.iter().enumerate() {
            assert!(
                m.starts_with(&format!("{{\"n\":{i},")),
                "message {i} is {m}"
            );
        }
    }

    #[test]
    fn tokens_queued_while_blocked_go_out_merged_with_the_same_text() {
        let metrics = NetMetrics::default();
        let mut out = OutQueue::new(1 << 20);
        let mut peer = SlowPeer::new(0, 1 << 20);
        for i in 0..50u64 {
            out.push(OutItem::Token(TokenItem {
                conversation_id: std::sync::Arc::from("c"),
                message_id: 7,
                index: i,
                count: 1,
                text: format!("t{i} "),
                encode: |t| {
                    serde_json::json!({"index": t.index, "count": t.count, "token": t.text})
                        .to_string()
                },
            }))
            .unwrap();
        }
        assert_eq!(
            out.len(),
            1,
            "all deltas merged while nothing could be written"
        );
        assert_eq!(drain_queue(&mut peer, &mut out, &metrics), Drain::Blocked);
        peer.budget = 1 << 20;
        assert_eq!(drain_queue(&mut peer, &mut out, &metrics), Drain::Done);
        let got = client_reads(&peer.wire);
        assert_eq!(got.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(
            (v["index"].as_u64(), v["count"].as_u64()),
            (Some(0), Some(50))
        );
        let expected: String = (0..50).map(|i| format!("t{i} ")).collect();
        assert_eq!(v["token"], expected);
    }
}
