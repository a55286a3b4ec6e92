//! A small nonblocking WebSocket client engine on mio: one event loop per thread, each
//! driving its share of the connections through connect → upgrade → open, and handing
//! every text message to a scenario [`Handler`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use crate::frames::{Frame, Reader};

pub trait Handler: Send {
    /// The connection `id` is open; queue its first messages.
    fn on_open(&mut self, id: usize, out: &mut Vec<String>, now: Instant);
    /// A text message arrived on `id`.
    fn on_text(&mut self, id: usize, text: &str, out: &mut Vec<String>, now: Instant);
    /// Called every `tick` (for rate-driven senders): (connection, message) to send.
    fn on_tick(&mut self, _now: Instant, _sends: &mut Vec<(usize, String)>) {}
    fn on_failed(&mut self, id: usize, why: &str);
    /// Stop early (everything this thread waits for has happened).
    fn done(&self) -> bool {
        false
    }
}

enum Phase {
    Connecting,
    Handshake(Vec<u8>),
    /// Frames are written by tungstenite (which masks them) and read by the client's
    /// [`Reader`] from the thread's buffer.
    Open(Box<WebSocketContext>),
    Dead,
}

struct Client {
    id: usize,
    sock: TcpStream,
    phase: Phase,
    request: Vec<u8>,
    sent_request: bool,
    /// Kept beside the socket, not behind the context's box: a delivery that needs no
    /// answer touches only this entry of the thread's client list.
    reader: Reader,
    /// tungstenite holds output a write could not finish.
    unflushed: bool,
}

pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

pub fn resolve(host: &str, port: u16) -> Target {
    let addr = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .expect("resolvable --url host");
    Target {
        addr,
        host: host.to_string(),
    }
}

fn upgrade_request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

fn ws_config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = 4096;
    c.write_buffer_size = 0;
    c.max_message_size = Some(16 << 20);
    c.max_frame_size = Some(16 << 20);
    c
}

/// Run `ids` connections (each to `path_of(id)`) until `deadline` or the handler is done.
/// Connection `id` goes to `targets[id % targets.len()]` (several nodes of a cluster).
/// `open_rate` limits new connections per second (0 = all at once).
pub fn run(
    targets: &[Target],
    ids: Vec<(usize, String)>,
    handler: &mut dyn Handler,
    deadline: Instant,
    tick: Option<Duration>,
    open_rate: f64,
) {
    let mut poll = Poll::new().expect("poll");
    let mut events = Events::with_capacity(1024);
    let mut clients: Vec<Client> = Vec::with_capacity(ids.len());
    let mut pending: std::collections::VecDeque<(usize, String)> = ids.into();
    let start = Instant::now();
    let mut opened = 0usize;
    let mut next_tick = Instant::now();
    let mut out = Vec::new();
    let mut sends = Vec::new();
    // One read buffer per thread, hot in cache: a connection keeps bytes only while a
    // frame is cut (frames.rs).
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        if now >= deadline || handler.done() {
            break;
        }
        // Open more connections (paced).
        let allowed = if open_rate > 0.0 {
            (now.duration_since(start).as_secs_f64() * open_rate) as usize + 1
        } else {
            usize::MAX
        };
        while opened < allowed {
            let Some((id, path)) = pending.pop_front() else {
                break;
            };
            opened += 1;
            let target = &targets[id % targets.len()];
            match TcpStream::connect(target.addr) {
                Ok(mut sock) => {
                    let tok = Token(clients.len());
                    if poll
                        .registry()
                        .register(&mut sock, tok, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        handler.on_failed(id, "register");
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    clients.push(Client {
                        id,
                        sock,
                        phase: Phase::Connecting,
                        request: upgrade_request(&target.host, &path),
                        sent_request: false,
                        reader: Reader::default(),
                        unflushed: false,
                    });
                }
                Err(e) => handler.on_failed(id, &e.to_string()),
            }
        }
        let mut timeout = Duration::from_millis(20);
        if let Some(t) = tick {
            if now >= next_tick {
                next_tick = now + t;
                handler.on_tick(now, &mut sends);
                for (cid, text) in sends.drain(..) {
                    if let Some(c) = clients.iter_mut().find(|c| c.id == cid) {
                        send(c, &text);
                    }
                }
            }
            timeout = timeout.min(next_tick.saturating_duration_since(Instant::now()));
        }
        if !pending.is_empty() && open_rate > 0.0 {
            timeout = timeout.min(Duration::from_millis(1));
        }
        let _ = poll.poll(&mut events, Some(timeout));
        for ev in events.iter() {
            let Some(c) = clients.get_mut(ev.token().0) else {
                continue;
            };
            drive(c, handler, &mut out, &mut buf);
        }
    }
}

fn send(c: &mut Client, text: &str) {
    if let Phase::Open(ctx) = &mut c.phase {
        // A failed write shows as a failed read on the next event.
        let _ = ctx.write(&mut c.sock, Message::text(text.to_string()));
        c.unflushed = ctx.flush(&mut c.sock).is_err();
    }
}

fn drive(c: &mut Client, h: &mut dyn Handler, out: &mut Vec<String>, buf: &mut [u8]) {
    loop {
        match &mut c.phase {
            Phase::Dead => return,
            Phase::Connecting => {
                if !c.sent_request {
                    match c.sock.write(&c.request) {
                        Ok(n) if n == c.request.len() => {
                            c.sent_request = true;
                            c.phase = Phase::Handshake(Vec::new());
                        }
                        Ok(_) => {
                            c.phase = Phase::Dead;
                            h.on_failed(c.id, "short write of the upgrade request");
                        }
                        Err(e)
                            if e.kind() == io::ErrorKind::WouldBlock
                                || e.kind() == io::ErrorKind::NotConnected =>
                        {
                            return
                        }
                        Err(e) => {
                            c.phase = Phase::Dead;
                            h.on_failed(c.id, &e.to_string());
                            return;
                        }
                    }
                }
            }
            Phase::Handshake(acc) => match c.sock.read(buf) {
                Ok(0) => {
                    c.phase = Phase::Dead;
                    h.on_failed(c.id, "closed during handshake");
                    return;
                }
                Ok(n) => {
                    acc.extend_from_slice(&buf[..n]);
                    if let Some(end) = acc.windows(4).position(|w| w == b"\r\n\r\n") {
                        if !acc.starts_with(b"HTTP/1.1 101") {
                            let line = String::from_utf8_lossy(
                                &acc[..acc.iter().position(|b| *b == b'\r').unwrap_or(acc.len())],
                            )
                            .into_owned();
                            c.phase = Phase::Dead;
                            h.on_failed(c.id, &line);
                            return;
                        }
                        let rest = acc[end + 4..].to_vec();
                        c.phase = Phase::Open(Box::new(WebSocketContext::new(
                            Role::Client,
                            Some(ws_config()),
                        )));
                        c.request = Vec::new();
                        out.clear();
                        h.on_open(c.id, out, std::time::Instant::now());
                        for m in out.drain(..) {
                            send(c, &m);
                        }
                        if !rest.is_empty() && !on_bytes(c, h, out, &rest) {
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    c.phase = Phase::Dead;
                    h.on_failed(c.id, &e.to_string());
                    return;
                }
            },
            Phase::Open(ctx) if c.unflushed => match ctx.flush(&mut c.sock) {
                Ok(()) => c.unflushed = false,
                // Still blocked; a writable event comes back here.
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    c.phase = Phase::Dead;
                    h.on_failed(c.id, &format!("closed: {e}"));
                    return;
                }
            },
            Phase::Open(_) => match c.sock.read(buf) {
                Ok(0) => {
                    c.phase = Phase::Dead;
                    h.on_failed(c.id, "closed: the server closed the connection");
                    return;
                }
                Ok(n) => {
                    if !on_bytes(c, h, out, &buf[..n]) {
                        return;
                    }
                    // A short read drained the socket: mio is edge-triggered, so more data
                    // brings a new event (no read that only answers EAGAIN).
                    if n < buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    c.phase = Phase::Dead;
                    h.on_failed(c.id, &format!("closed: {e}"));
                    return;
                }
            },
        }
    }
}

/// Hand the frames in `data` to the handler and write what it answers; false when the
/// connection is done (closed by the server or unreadable).
fn on_bytes(c: &mut Client, h: &mut dyn Handler, out: &mut Vec<String>, data: &[u8]) -> bool {
    let Phase::Open(ctx) = &mut c.phase else {
        return false;
    };
    let (id, sock) = (c.id, &mut c.sock);
    let mut closed: Option<Option<u16>> = None;
    let mut wrote = false;
    let fed = c.reader.feed(data, |f| match f {
        Frame::Text(t) => {
            out.clear();
            h.on_text(id, t, out, Instant::now());
            for m in out.drain(..) {
                let _ = ctx.write(&mut *sock, Message::text(m));
                wrote = true;
            }
        }
        Frame::Ping(p) => {
            let _ = ctx.write(&mut *sock, Message::Pong(p.to_vec().into()));
            wrote = true;
        }
        Frame::Close(code) => closed = Some(code),
        Frame::Other => {}
    });
    if closed.is_some() {
        // Answer the close as a client does.
        let _ = ctx.close(&mut *sock, None);
        wrote = true;
    }
    if wrote {
        c.unflushed = ctx.flush(&mut *sock).is_err();
    }
    let why = match fed {
        Err(e) => format!("closed: unreadable frames from the server ({e:?})"),
        Ok(()) => match closed {
            Some(Some(code)) => format!("closed by the server: {code}"),
            Some(None) => "closed by the server (no code)".to_string(),
            None => return true,
        },
    };
    c.phase = Phase::Dead;
    h.on_failed(id, &why);
    false
}
