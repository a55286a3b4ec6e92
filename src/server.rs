//! Start-up, the acceptor and shutdown.
//!
//! **One acceptor thread** owns the listening socket and hands each accepted socket to the
//! shard with the fewest connections (ties round-robin) through that shard's inbox. We
//! chose this over one SO_REUSEPORT listener per shard because: the kernel's REUSEPORT
//! hash can pile connections onto one shard, while least-loaded hand-off keeps shards even;
//! the global connection cap and its 503 answer live in one place; and a shard that stops
//! never strands connections queued in its own listen backlog. The cost is one channel
//! hop per accept (microseconds), which only matters for churn, and the acceptor is not
//! the limit there (see BENCHMARKS.md).

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use tungstenite::protocol::WebSocketConfig;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::http::Response;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::ErrorCode;
use crate::shard::{self, Shard, ShardMsg, Shards};

/// Everything the threads share. Built once at start, read-only after (its parts have
/// their own interior synchronisation).
pub struct ServerCtx {
    pub cfg: Config,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub hub: Hub,
    pub shards: Shards,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The listener is on a loopback address (dev tokens are honoured only then).
    pub loopback: bool,
    pub ws_config: WebSocketConfig,
    pub echo_ws_config: WebSocketConfig,
    pub store: crate::store::Store,
    pub llm: crate::llm::Llm,
    pub uploads: crate::uploads::Uploads,
    /// Connections per shard (for least-loaded hand-off).
    pub shard_load: Vec<AtomicUsize>,
    /// Open connections per client address (`server.max_connections_per_ip`).
    pub ip_limit: crate::iplimit::IpLimit,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    Key(#[from] crate::auth::KeyError),
    #[error("data dir {path}: {source}")]
    DataDir { path: String, source: io::Error },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("start-up: {0}")]
    Io(#[from] io::Error),
}

impl StartError {
    /// Exit code for `confab serve`: 2 for configuration problems, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Tls(_) | StartError::Key(_) => 2,
            StartError::Store(e) if e.is_config() => 2,
            _ => 1,
        }
    }
}

const LISTENER: Token = Token(0);
const ACCEPT_WAKER: Token = Token(1);

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub ctx: Arc<ServerCtx>,
    stop: Arc<AtomicBool>,
    acceptor_waker: Arc<Waker>,
    threads: Vec<JoinHandle<()>>,
    acceptor: Option<JoinHandle<()>>,
}

pub fn ws_config(cfg: &Config, max_message: usize, out_cap: usize) -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = cfg.ws.read_buffer_bytes;
    c.write_buffer_size = cfg.ws.write_buffer_bytes;
    // tungstenite's buffer only ever holds what the shard fed it while the socket was
    // writable plus one frame; this cap is a backstop, not the back-pressure mechanism.
    c.max_write_buffer_size = out_cap + cfg.ws.write_buffer_bytes + max_message + 1024;
    c.max_message_size = Some(max_message);
    c.max_frame_size = Some(
        max_message.min(
            cfg.ws
                .max_frame_bytes
                .max(max_message.min(cfg.ws.max_frame_bytes)),
        ),
    );
    c.accept_unmasked_frames = false;
    c
}

/// Echo endpoint limits: Autobahn sends messages up to 16 MiB.
const ECHO_MAX_MESSAGE: usize = 16 << 20;

impl ServerHandle {
    /// Bind, open the store, start every thread. Returns once the server accepts.
    pub fn start(cfg: Config) -> Result<ServerHandle, StartError> {
        // Exactly one rustls provider is compiled in, but both rustls and ureq want the
        // process default set before first use; a second call is a harmless error.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

        std::fs::create_dir_all(&cfg.store.data_dir).map_err(|source| StartError::DataDir {
            path: cfg.store.data_dir.display().to_string(),
            source,
        })?;
        let auth = Authenticator::from_config(&cfg.auth, &cfg.store.data_dir)?;
        let tls = match &cfg.tls {
            None => None,
            Some(files) => Some(
                crate::transport::load_tls_config(&files.cert_file, &files.key_file)
                    .map_err(StartError::Tls)?,
            ),
        };
        let metrics = Arc::new(Metrics::default());

        let std_listener = bind(cfg.server.listen).map_err(|source| StartError::Listen {
            addr: cfg.server.listen,
            source,
        })?;
        let addr = std_listener.local_addr()?;

        let n = cfg.server.shards;
        let mut handles = Vec::with_capacity(n);
        let mut parts = Vec::with_capacity(n);
        for _ in 0..n {
            let (h, poll, rx) = shard::shard_parts()?;
            handles.push(h);
            parts.push((poll, rx));
        }
        let shards = Shards::new(handles, metrics.clone());
        let store = crate::store::Store::open(&cfg, metrics.clone())?;
        let llm = crate::llm::Llm::new(&cfg, metrics.clone());
        let uploads =
            crate::uploads::Uploads::open(&cfg).map_err(|source| StartError::DataDir {
                path: crate::config::UploadsConfig::dir(&cfg.store)
                    .display()
                    .to_string(),
                source,
            })?;

        let native_cfg = ws_config(&cfg, cfg.ws.max_message_bytes, cfg.ws.out_queue_max_bytes);
        let mut echo_cfg = ws_config(&cfg, ECHO_MAX_MESSAGE, 2 * ECHO_MAX_MESSAGE);
        echo_cfg.max_frame_size = Some(ECHO_MAX_MESSAGE);
        let ctx = Arc::new(ServerCtx {
            loopback: addr.ip().is_loopback(),
            ws_config: native_cfg,
            echo_ws_config: echo_cfg,
            hub: Hub::new(n),
            shard_load: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            ip_limit: crate::iplimit::IpLimit::new(cfg.server.max_connections_per_ip),
            cfg,
            auth,
            metrics,
            shards,
            tls,
            store,
            llm,
            uploads,
        });
        // Threads that need the context (store writer, readers, generation workers).
        let mut threads = crate::store::start_threads(&ctx)?;
        threads.extend(crate::llm::start_workers(&ctx)?);
        threads.extend(crate::uploads::start_workers(&ctx)?);
        for (i, (poll, rx)) in parts.into_iter().enumerate() {
            let shard = Shard::new(i, poll, rx, ctx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard-{i}"))
                    .spawn(move || shard.run())?,
            );
        }

        let stop = Arc::new(AtomicBool::new(false));
        let poll = Poll::new()?;
        let acceptor_waker = Arc::new(Waker::new(poll.registry(), ACCEPT_WAKER)?);
        let mut listener = TcpListener::from_std(std_listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let acceptor = {
            let ctx = ctx.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("acceptor".into())
                .spawn(move || accept_loop(poll, listener, ctx, stop))?
        };
        info!(
            "listening on {}://{addr} with {n} shards (data dir {})",
            if ctx.tls.is_some() { "https" } else { "http" },
            ctx.cfg.store.data_dir.display()
        );
        Ok(ServerHandle {
            addr,
            ctx,
            stop,
            acceptor_waker,
            threads,
            acceptor: Some(acceptor),
        })
    }

    /// Stop accepting, close every WebSocket with 1001, let in-flight writes commit,
    /// and join every thread.
    pub fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        // Shards first (they stop producing work), then generations (they finish or are
        // cut at the shutdown deadline), then the store (it commits what it was given).
        let threads = std::mem::take(&mut self.threads);
        let named =
            |t: &JoinHandle<()>, p: &str| t.thread().name().is_some_and(|n| n.starts_with(p));
        let (shards, others): (Vec<_>, Vec<_>) =
            threads.into_iter().partition(|t| named(t, "shard-"));
        for t in shards {
            let _ = t.join();
        }
        // Upload workers may still hand finished files to the store writer.
        let (uploaders, others): (Vec<_>, Vec<_>) =
            others.into_iter().partition(|t| named(t, "upload-"));
        self.ctx.uploads.shutdown();
        for t in uploaders {
            let _ = t.join();
        }
        self.ctx.llm.shutdown(&self.ctx);
        self.ctx.store.shutdown();
        for t in others {
            let _ = t.join();
        }
        info!("server stopped");
    }

    fn begin_shutdown(&self) {
        if self.stop.swap(true, Relaxed) {
            return;
        }
        let _ = self.acceptor_waker.wake();
        for i in 0..self.ctx.shards.len() {
            self.ctx.shards.send(i, ShardMsg::Shutdown);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.begin_shutdown();
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<StdListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    // A deep backlog: connection bursts (reconnect storms) wait in the kernel, not refused.
    sock.listen(4096)?;
    Ok(sock.into())
}

fn accept_loop(mut poll: Poll, listener: TcpListener, ctx: Arc<ServerCtx>, stop: Arc<AtomicBool>) {
    let mut events = Events::with_capacity(64);
    let mut rr = 0usize;
    let max = ctx.cfg.server.max_connections as i64;
    let busy = Response::error(503, ErrorCode::Busy, "server at its connection limit")
        .with_header("Retry-After", "1");
    let per_ip = Response::error(
        429,
        ErrorCode::RateLimit,
        "too many connections from this address",
    )
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
        // Drain the accept queue (edge-triggered).
        loop {
            match listener.accept() {
                Ok((sock, peer)) => {
                    if ctx.metrics.connections.load(Relaxed) >= max {
                        ctx.metrics.connections_refused.fetch_add(1, Relaxed);
                        let std_sock: std::net::TcpStream = sock.into();
                        if ctx.tls.is_none() {
                            shard::refuse(std_sock, &busy);
                        }
                        continue;
                    }
                    if !ctx.ip_limit.try_acquire(peer.ip()) {
                        ctx.metrics.connections_refused.fetch_add(1, Relaxed);
                        let std_sock: std::net::TcpStream = sock.into();
                        if ctx.tls.is_none() {
                            shard::refuse(std_sock, &per_ip);
                        }
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    ctx.metrics.connections.fetch_add(1, Relaxed);
                    ctx.metrics.connections_total.fetch_add(1, Relaxed);
                    let target = pick_shard(&ctx, &mut rr);
                    // Counted here, uncounted by the shard when the connection goes.
                    ctx.shard_load[target].fetch_add(1, Relaxed);
                    if !ctx.shards.try_send(target, ShardMsg::Accept(sock, peer)) {
                        ctx.shard_load[target].fetch_sub(1, Relaxed);
                        ctx.metrics.connections.fetch_sub(1, Relaxed);
                        ctx.ip_limit.release(peer.ip());
                        ctx.metrics.connections_refused.fetch_add(1, Relaxed);
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
}

fn pick_shard(ctx: &ServerCtx, rr: &mut usize) -> usize {
    let n = ctx.shards.len();
    *rr = (*rr + 1) % n;
    // Least loaded, starting from the round-robin position so ties rotate.
    let mut best = *rr;
    let mut best_load = usize::MAX;
    for k in 0..n {
        let i = (*rr + k) % n;
        let l = ctx.shard_load[i].load(Relaxed);
        if l < best_load {
            best = i;
            best_load = l;
        }
    }
    best
}
