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
    Open(Box<WebSocketContext>),
    Dead,
}

struct Client {
    id: usize,
    sock: TcpStream,
    phase: Phase,
    request: Vec<u8>,
    sent_request: bool,
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
    let mut buf = vec![0u8; 8192];
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
        match ctx.write(&mut c.sock, Message::text(text.to_string())) {
            Ok(()) | Err(tungstenite::Error::Io(_)) => {}
            Err(_) => {}
        }
        let _ = ctx.flush(&mut c.sock);
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
                        c.phase = Phase::Open(Box::new(WebSocketContext::from_partially_read(
                            rest,
                            Role::Client,
                            Some(ws_config()),
                        )));
                        out.clear();
                        h.on_open(c.id, out, std::time::Instant::now());
                        for m in out.drain(..) {
                            send(c, &m);
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
            Phase::Open(ctx) => match ctx.read(&mut c.sock) {
                Ok(Message::Text(t)) => {
                    out.clear();
                    h.on_text(c.id, &t, out, Instant::now());
                    for m in out.drain(..) {
                        let _ = ctx.write(&mut c.sock, Message::text(m));
                    }
                    let _ = ctx.flush(&mut c.sock);
                }
                Ok(_) => {
                    let _ = ctx.flush(&mut c.sock);
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = ctx.flush(&mut c.sock);
                    return;
                }
                Err(e) => {
                    c.phase = Phase::Dead;
                    h.on_failed(c.id, &format!("closed: {e}"));
                    return;
                }
            },
        }
    }
}
