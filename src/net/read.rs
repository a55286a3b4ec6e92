//! A shard's WebSocket input: read each connection's bytes into the shard's one read
//! buffer (input left over from the last turn first), decode them with the connection's
//! `frame::Reader`, and hand each complete message or control frame on — text and binary
//! to the application, pings answered with pongs, the client's close answered with its
//! code. A connection closed for a violation has its input read and discarded.

use std::io::{self, Read};
use std::sync::atomic::Ordering::Relaxed;

use log::debug;

use super::timer::Tick;

use super::conn::Phase;
use super::frame::Unit;
use super::io::{Io, CLOSE_HANDSHAKE, MAX_FRAMING_BYTES};
use super::outqueue::{OutItem, OP_PONG};
use super::shard::Shard;
use super::transport::Transport;
use super::{close, App};

/// How decoding one piece of input ended.
enum Decoded {
    /// All of it was used.
    All,
    /// The read budget ran out: the input from this offset waits for the next turn.
    Budget(usize),
    /// Stop reading this connection now, with this outcome.
    Stop(Io),
}

impl<A: App> Shard<A> {
    /// Read and decode frames until the socket is drained or the read budget is spent:
    /// first input left over from the last turn, then the socket, into the shard's one
    /// read buffer.
    ///
    /// A plain TCP read that returns fewer bytes than asked means the kernel's buffer was
    /// empty then: reading again would only return EAGAIN (one `recvfrom` per message,
    /// measured), so the read stops there; bytes that arrive later raise a new
    /// (edge-triggered) readiness event. Not used for TLS, nor when the event said the
    /// peer closed (the EOF must still be read): `short_read_drains`.
    pub(super) fn read_ws(&mut self, slot: usize) -> Io {
        let mut budget = self.app.net().cfg.read_budget_messages;
        let may_drain = std::mem::take(&mut self.short_read_drains);
        let (unread, plain) = {
            let Some(conn) = self.conns.get_mut(slot) else {
                return Io::Blocked;
            };
            let plain = matches!(conn.io, Transport::Plain(_));
            let Phase::Ws(ws) = &mut conn.phase else {
                return Io::Blocked;
            };
            if ws.discard || ws.finish {
                return match discard_input(&mut conn.io) {
                    Discarded::Done(io) => io,
                    Discarded::More => self.read_later(slot, &[]),
                };
            }
            (ws.reader.take_unread(), plain)
        };
        if let Some(mut input) = unread {
            match self.decode_input(slot, &mut input, &mut budget) {
                Decoded::All => {}
                Decoded::Budget(pos) => return self.read_later(slot, &input[pos..]),
                Decoded::Stop(io) => return io,
            }
        }
        let mut buf = std::mem::take(&mut self.read_buf);
        if buf.is_empty() {
            buf = vec![0; self.app.net().cfg.read_buffer_bytes.max(256)];
        }
        let io = self.read_socket(slot, &mut buf, budget, may_drain && plain);
        self.read_buf = buf;
        io
    }

    fn read_socket(&mut self, slot: usize, buf: &mut [u8], mut budget: u32, may_drain: bool) -> Io {
        loop {
            if budget == 0 {
                return self.read_later(slot, &[]);
            }
            let Some(conn) = self.conns.get_mut(slot) else {
                return Io::Blocked;
            };
            let n = match conn.io.read(buf) {
                Ok(0) => {
                    // The peer closed TCP: after the close handshake that is the end; before
                    // it, an abnormal closure (1006).
                    return match &conn.phase {
                        Phase::Ws(ws) if ws.closing() => {
                            self.remove(slot, close::NORMAL);
                            Io::Blocked
                        }
                        _ => Io::Closed,
                    };
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Io::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("[{}] read: {e}", self.label(slot));
                    return Io::Closed;
                }
            };
            match self.decode_input(slot, &mut buf[..n], &mut budget) {
                Decoded::All => {}
                Decoded::Budget(pos) => return self.read_later(slot, &buf[pos..n]),
                Decoded::Stop(io) => return io,
            }
            if may_drain && n < buf.len() {
                return Io::Blocked;
            }
        }
    }

    /// The read budget is spent: keep `rest` and read this connection again next turn.
    fn read_later(&mut self, slot: usize, rest: &[u8]) -> Io {
        if let Some(c) = self.conns.get_mut(slot) {
            if let Phase::Ws(ws) = &mut c.phase {
                ws.reader.stash(rest);
            }
            if !c.pending {
                c.pending = true;
                self.pending.push(slot);
            }
        }
        Io::Blocked
    }

    /// Decode the frames in `input` and hand each complete unit to the application.
    fn decode_input(&mut self, slot: usize, input: &mut [u8], budget: &mut u32) -> Decoded {
        let mut pos = 0;
        while pos < input.len() {
            if *budget == 0 {
                return Decoded::Budget(pos);
            }
            let (res, closing, fragmented) = {
                let Some(ws) = self.conns.get_mut(slot).and_then(|c| c.ws()) else {
                    return Decoded::Stop(Io::Blocked);
                };
                if ws.discard || ws.finish {
                    // Failed for a violation, or the peer's close is answered: the rest
                    // is read and thrown away (`discard_input`).
                    return Decoded::Stop(Io::Continue);
                }
                let r = ws.reader.next(&mut input[pos..], &ws.limits);
                // A message's frame headers may take as many bytes as its payload plus
                // MAX_FRAMING_BYTES: a client sending endless (empty) continuation frames
                // completes no message, so the rate limit never sees it; this does.
                let used = r.as_ref().map_or(0, |(used, _)| *used);
                let spent = (ws.partial_bytes as usize).saturating_add(used);
                let mut fragmented = false;
                match &r {
                    Ok((_, Some(Unit::Text(t)))) => {
                        fragmented = spent > t.len() * 2 + MAX_FRAMING_BYTES;
                        ws.partial_bytes = 0;
                    }
                    Ok((_, Some(Unit::Binary(b)))) => {
                        fragmented = spent > b.len() * 2 + MAX_FRAMING_BYTES;
                        ws.partial_bytes = 0;
                    }
                    Ok((_, Some(_))) if !ws.reader.in_message() => ws.partial_bytes = 0,
                    _ => {
                        fragmented = spent > ws.limits.max_message() * 2 + MAX_FRAMING_BYTES;
                        ws.partial_bytes = spent.min(u32::MAX as usize) as u32;
                    }
                }
                if matches!(r, Ok((_, Some(_)))) {
                    ws.pong_deadline = None; // any frame proves the peer alive
                }
                (r, ws.closing(), fragmented)
            };
            if fragmented && !closing {
                debug!("[{}] too many fragments in one message", self.label(slot));
                self.close_violation(slot, close::TOO_BIG, "message in too many fragments");
                return Decoded::Stop(Io::Continue);
            }
            match res {
                Ok((used, unit)) => {
                    pos += used;
                    if let Some(unit) = unit {
                        *budget -= 1;
                        if let Some(io) = self.on_unit(slot, unit, closing) {
                            return Decoded::Stop(io);
                        }
                    }
                }
                Err(v) => {
                    debug!(
                        "[{}] {}: closing {}",
                        self.label(slot),
                        v.reason(),
                        v.code()
                    );
                    if closing {
                        self.remove(slot, v.code());
                        return Decoded::Stop(Io::Blocked);
                    }
                    self.close_violation(slot, v.code(), v.reason());
                    return Decoded::Stop(Io::Continue);
                }
            }
        }
        Decoded::All
    }

    /// One complete message or control frame from the client; `Some` stops the reading.
    fn on_unit(&mut self, slot: usize, unit: Unit, closing: bool) -> Option<Io> {
        let metrics = &self.app.net().metrics;
        match unit {
            Unit::Text(t) => {
                metrics.messages_in.fetch_add(1, Relaxed);
                metrics.bytes_in.fetch_add(t.len() as u64, Relaxed);
                if !closing {
                    A::on_text(self, slot, t);
                }
            }
            Unit::Binary(b) => {
                metrics.messages_in.fetch_add(1, Relaxed);
                metrics.bytes_in.fetch_add(b.len() as u64, Relaxed);
                if !closing {
                    A::on_binary(self, slot, b);
                }
            }
            Unit::Ping(payload) => {
                if !closing {
                    self.queue(slot, OutItem::Control(OP_PONG, payload));
                    A::on_ping(self, slot);
                }
            }
            Unit::Pong => {}
            Unit::Close(code) => {
                if closing {
                    // The answer to our close: the handshake is complete.
                    self.remove(slot, close::NORMAL);
                    return Some(Io::Blocked);
                }
                // The peer closes: answer with its code (nothing queued goes out after the
                // close frame), then close TCP once that is written.
                let answer = code.unwrap_or(close::NORMAL);
                let Some(ws) = self.conns.get_mut(slot).and_then(|c| c.ws()) else {
                    return Some(Io::Blocked);
                };
                ws.out.clear();
                ws.out.push_unbounded(OutItem::close(code, ""));
                ws.finish = true;
                ws.close_deadline = Some(Tick::now() + CLOSE_HANDSHAKE);
                self.app.net().metrics.close(answer);
                self.mark_dirty(slot);
                return Some(Io::Blocked);
            }
        }
        None
    }
}

/// Reads of input thrown away per turn: a peer that keeps sending after its connection
/// was failed must not keep the shard from its other connections.
const DISCARD_READS: usize = 16;

enum Discarded {
    Done(Io),
    /// The budget ran out with input left: read again next turn.
    More,
}

/// Read and throw away whatever the peer sends (a connection failed for a violation, or
/// whose close was answered).
fn discard_input(io: &mut impl Read) -> Discarded {
    let mut scratch = [0u8; 4096];
    for _ in 0..DISCARD_READS {
        match io.read(&mut scratch) {
            Ok(0) => return Discarded::Done(Io::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Discarded::Done(Io::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Discarded::Done(Io::Closed),
        }
    }
    Discarded::More
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that never stops sending.
    struct Flood;

    impl Read for Flood {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(0x42);
            Ok(buf.len())
        }
    }

    #[test]
    fn discarding_a_flood_gives_the_turn_back() {
        assert!(matches!(discard_input(&mut Flood), Discarded::More));
        let mut drained = io::Cursor::new(vec![0u8; 10_000]);
        assert!(matches!(
            discard_input(&mut drained),
            Discarded::Done(Io::Closed)
        ));
    }
}
