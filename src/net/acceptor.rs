//! The acceptor: one thread owns the listening socket and hands each accepted socket to
//! the shard with the fewest connections (ties round-robin) through that shard's inbox.
//!
//! We chose this over one SO_REUSEPORT listener per shard because: the kernel's REUSEPORT
//! hash can pile connections onto one shard, while least-loaded hand-off keeps shards
//! even; the global and per-address connection caps and their answers live in one place;
//! and a shard that stops never strands connections queued in its own listen backlog. The
//! cost is one channel hop per accept (microseconds), which only matters for churn, and
//! the acceptor is not the limit there (see BENCHMARKS.md).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use super::bus::ShardMsg;
use super::http::Response;
use super::App;

/// Listeners are `Token(0..n)`; the waker comes after them.
const ACCEPT_WAKER: Token = Token(usize::MAX);

/// Bind a listening socket with a deep backlog (reconnect storms wait in the kernel).
pub fn bind(addr: SocketAddr) -> io::Result<StdListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// A running acceptor thread.
pub struct Acceptor {
    stop: Arc<AtomicBool>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Accept on every listener (the main one and any extra, e.g. a seed's port).
    pub fn start<A: App>(listeners: Vec<StdListener>, app: Arc<A>) -> io::Result<Acceptor> {
        let stop = Arc::new(AtomicBool::new(false));
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), ACCEPT_WAKER)?;
        let mut mio_listeners = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)?;
            mio_listeners.push(l);
        }
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("acceptor".into())
                .spawn(move || accept_loop(poll, mio_listeners, app, stop))?
        };
        Ok(Acceptor {
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// Stop accepting (idempotent). `true` the first time.
    pub fn stop(&self) -> bool {
        if self.stop.swap(true, Relaxed) {
            return false;
        }
        let _ = self.waker.wake();
        true
    }

    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop<A: App>(
    mut poll: Poll,
    listeners: Vec<TcpListener>,
    app: Arc<A>,
    stop: Arc<AtomicBool>,
) {
    let net = app.net();
    let mut events = Events::with_capacity(64);
    let mut rr = 0usize;
    let busy = Response::error(503, "BUSY", "server at its connection limit")
        .with_header("Retry-After", "1");
    let per_ip = Response::error(429, "RATE_LIMIT", "too many connections from this address")
        .with_header("Retry-After", "1");
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            warn!("acceptor: poll failed: {e}");
            return;
        }
        if stop.load(Relaxed) {
            info!("acceptor: stopped accepting");
            return;
        }
        // Drain the accept queue of each listener that is ready (edge-triggered).
        for ev in events.iter() {
            let Some(listener) = listeners.get(ev.token().0) else {
                continue;
            };
            accept_all(listener, net, &mut rr, (&busy, &per_ip));
        }
    }
}

fn accept_all<A: App>(
    listener: &TcpListener,
    net: &crate::net::Net<A>,
    rr: &mut usize,
    (busy, per_ip): (&Response, &Response),
) {
    let max = net.max_connections as i64;
    loop {
        match listener.accept() {
            Ok((sock, peer)) => {
                let refusal = if net.metrics.connections.load(Relaxed) >= max {
                    Some(busy)
                } else if !net.ip_limit.try_acquire(peer.ip()) {
                    Some(per_ip)
                } else {
                    None
                };
                if let Some(answer) = refusal {
                    net.metrics.connections_refused.fetch_add(1, Relaxed);
                    if net.tls.is_none() {
                        refuse(sock.into(), answer);
                    }
                    continue;
                }
                let _ = sock.set_nodelay(true);
                net.metrics.connections.fetch_add(1, Relaxed);
                net.metrics.connections_total.fetch_add(1, Relaxed);
                let target = pick_shard(&net.shard_load, rr);
                // Counted here, uncounted by the shard when the connection goes.
                net.shard_load[target].fetch_add(1, Relaxed);
                if !net.shards.try_send(target, ShardMsg::Accept(sock, peer)) {
                    net.shard_load[target].fetch_sub(1, Relaxed);
                    net.metrics.connections.fetch_sub(1, Relaxed);
                    net.metrics.connections_refused.fetch_add(1, Relaxed);
                    net.ip_limit.release(peer.ip());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE/ENFILE: back off instead of spinning on a full fd table.
                warn!("acceptor: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                break;
            }
        }
    }
}

fn pick_shard(load: &[std::sync::atomic::AtomicUsize], rr: &mut usize) -> usize {
    let n = load.len();
    *rr = (*rr + 1) % n;
    // Least loaded, starting from the round-robin position so ties rotate.
    let mut best = *rr;
    let mut best_load = usize::MAX;
    for k in 0..n {
        let i = (*rr + k) % n;
        let l = load[i].load(Relaxed);
        if l < best_load {
            best = i;
            best_load = l;
        }
    }
    best
}

/// Best-effort answer on a socket we will not serve (a connection cap).
fn refuse(mut sock: std::net::TcpStream, body: &Response) {
    let _ = sock.set_nonblocking(true);
    let _ = sock.write_all(&body.to_bytes());
}
