//! Start-up and shutdown: builds the services and the transport, starts every thread,
//! and stops them in order. The acceptor and the shards are `net/`'s; what they serve is
//! this crate's [`App`](crate::net::App) implementation (`app.rs`) over [`ServerCtx`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::info;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::net::acceptor::{self, Acceptor};
use crate::net::frame::Limits;
use crate::net::{bus, MayBlock, Net, NetConfig, ShardMsg, Shards, Topics};

/// Everything the threads share. Built once at start, read-only after (its parts have
/// their own interior synchronisation).
pub struct ServerCtx {
    pub cfg: Config,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub hub: Hub,
    /// The transport: shards' inboxes, topic index, connection counters, TLS.
    pub net: Net<ServerCtx>,
    /// The listener is on a loopback address (dev tokens are honoured only then).
    pub loopback: bool,
    /// Sizes the native endpoint accepts (a dialect's route may set its own).
    pub ws_limits: Limits,
    pub echo_limits: Limits,
    pub store: crate::store::Store<crate::completion::Reply>,
    pub llm: crate::llm::Llm,
    pub uploads: crate::uploads::Uploads,
    /// Cluster mode: the bus and the order of events across nodes.
    #[cfg(feature = "cluster")]
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl ServerCtx {
    /// A conversation event for every subscriber: this node's, and in cluster mode every
    /// other node's. Waits for room in full shard inboxes (workers only).
    pub fn publish(&self, may: MayBlock, ev: crate::topic::TopicEvent) -> usize {
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            return c.publish(self, Some(may), ev);
        }
        self.net.publish(may, ev)
    }

    /// The cluster bus for `/health`: "off" on a single box, else "ok", "connecting" or
    /// "down" (503).
    pub fn bus_state(&self) -> &'static str {
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            return c.health.state();
        }
        "off"
    }

    /// `/metrics`: the server's figures, and the bus's in cluster mode.
    pub fn prometheus(
        &self,
        net: &crate::net::NetMetrics,
        depths: &crate::metrics::Depths,
    ) -> String {
        #[allow(unused_mut)]
        let mut s = self.metrics.prometheus(net, depths);
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            c.health.prometheus(&mut s);
        }
        s
    }

    /// Is `user` online in room conversation `conv` (on any node)?
    pub fn presence_online(&self, conv: &str, user: &str) -> bool {
        if self.hub.presence_online(conv, user) {
            return true;
        }
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            return c.dir.lock().remote_online(conv, user);
        }
        false
    }

    /// Cluster mode: members of room `conv` online on other nodes (one per node and user;
    /// their connections there are not counted). 0 on a single box.
    pub fn remote_recipients(&self, _conv: &str) -> usize {
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            return c.dir.lock().remote_count(_conv);
        }
        0
    }

    /// Users online in a room (on any node): (id, name).
    pub fn presence_list(&self, conv: &str) -> Vec<(String, String)> {
        #[allow(unused_mut)]
        let mut list = self.hub.presence_list(conv);
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            for (id, name) in c.dir.lock().remote_list(conv) {
                if !list.iter().any(|(u, _)| *u == id) {
                    list.push((id, name));
                }
            }
        }
        list
    }

    /// What a client is shown of a room's users online: at most
    /// `rooms.presence_max_users` of them, as `Participant`s, and how many there are.
    pub fn presence_shown(&self, conv: &str) -> (Vec<crate::protocol::Participant>, usize) {
        let max = self.cfg.rooms.presence_max_users;
        #[cfg(feature = "cluster")]
        if self.cluster.is_some() {
            let mut all = self.presence_list(conv);
            let n = all.len();
            all.truncate(max);
            return (participants(all), n);
        }
        let (some, n) = self.hub.presence_sample(conv, max);
        (participants(some), n)
    }

    /// Tell this node's subscribers of room `conv` that `user_id` came (`joined`) or went,
    /// as [`Hub::presence_mode`](crate::hub::Hub::presence_mode) decides: one by one while
    /// the room has at most `rooms.presence_max_users` online (each announcement is a
    /// delivery to every member, so announcing every join of an N-user room costs N²
    /// deliveries: a 5,000-user room filling up sent 2 GB); nothing while it is larger; a
    /// `presence_list` to everyone when it becomes large or small again. Called after the
    /// hub (and the cluster directory) took the change in.
    pub fn tell_presence(
        &self,
        room_id: &str,
        conv: &std::sync::Arc<str>,
        user_id: &str,
        username: &str,
        joined: bool,
    ) {
        use crate::hub::Announce;
        use crate::protocol::Event;
        use crate::topic::{topic_event, TopicKind};
        #[allow(unused_mut)]
        let mut remote = 0;
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            remote = c.dir.lock().remote_count(conv);
        }
        let max = self.cfg.rooms.presence_max_users;
        let ev = match self.hub.presence_mode(conv, remote, joined, max) {
            Announce::Quiet => return,
            Announce::One => {
                let ev = Event::Presence {
                    room_id: room_id.to_string(),
                    user_id: user_id.to_string(),
                    username: username.to_string(),
                    status: if joined { "joined" } else { "left" },
                };
                let mut te = topic_event(conv, TopicKind::Ephemeral, ev);
                te.exclude_user = Some(std::sync::Arc::from(user_id));
                te
            }
            Announce::Resync => {
                let (online, online_count) = self.presence_shown(conv);
                let ev = Event::PresenceList {
                    room_id: room_id.to_string(),
                    online,
                    online_count,
                };
                topic_event(conv, TopicKind::Ephemeral, ev)
            }
        };
        self.net.try_publish(ev);
    }

    /// `user`'s first connection in a room on this node (`joined`) or its last one gone
    /// (as the hub counted): the room's subscribers hear `presence` — in cluster mode only
    /// when the user's presence across all nodes changed. `deliver: false`: the room is
    /// gone, only the other nodes need to know.
    pub fn presence_changed(
        &self,
        room_id: &str,
        conv: &std::sync::Arc<str>,
        user: &crate::auth::User,
        joined: bool,
        deliver: bool,
    ) {
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            let e = crate::cluster::presence::Entry {
                conv: conv.to_string(),
                room_id: room_id.to_string(),
                user: user.id.clone(),
                name: user.name.clone(),
            };
            return c.local_presence(self, e, joined, deliver);
        }
        if deliver {
            self.tell_presence(room_id, conv, &user.id, &user.name, joined);
        }
    }

    /// Like [`publish`](Self::publish), never blocking (shards): a full inbox drops the
    /// event there and marks the topic missed.
    pub fn try_publish(&self, ev: crate::topic::TopicEvent) -> usize {
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            return c.publish(self, None, ev);
        }
        self.net.try_publish(ev)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    Key(#[from] crate::auth::KeyError),
    #[error("data dir {path} (store.data_dir) is not usable: {source}")]
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
            StartError::Tls(_) | StartError::Key(_) | StartError::DataDir { .. } => 2,
            StartError::Store(e) if e.is_config() => 2,
            _ => 1,
        }
    }
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// The `compat.extra_listen` listeners' addresses, in order.
    pub extra_addrs: Vec<SocketAddr>,
    pub ctx: Arc<ServerCtx>,
    acceptor: Option<Acceptor>,
    threads: Vec<JoinHandle<()>>,
}

/// Whether uploads are scanned, and whether clamd answered.
fn log_scanner(ctx: &ServerCtx) {
    let Some(s) = &ctx.uploads.scanner else {
        log::info!("virus scanning of uploads: off (uploads.virus_scan)");
        return;
    };
    let policy = if s.config().accept_on_error {
        "stored unscanned"
    } else {
        "refused"
    };
    match s.ping() {
        Ok(()) => log::info!("virus scanning of uploads: on, clamd answered PING"),
        Err(e) => log::warn!(
            "virus scanning of uploads: on, but {e}; until it answers, uploads are {policy}"
        ),
    }
}

/// One line an operator can check the deployment against.
fn log_startup(ctx: &ServerCtx, addr: SocketAddr) {
    let c = &ctx.cfg;
    let provider = match c.llm.provider {
        crate::config::ProviderKind::Demo => "demo (built in)".to_string(),
        crate::config::ProviderKind::OpenAi => {
            format!("openai at {}, model {}", c.llm.base_url, c.llm.model)
        }
    };
    let key = if std::env::var_os(&c.llm.api_key_env).is_some() {
        "found"
    } else {
        "not set"
    };
    let agents: Vec<&str> = c.agents.keys().map(String::as_str).collect();
    let dev = if c.auth.dev_tokens && ctx.loopback {
        "on (loopback)"
    } else {
        "off"
    };
    info!(
        "listening on {addr}, TLS {}; data dir {}; provider {provider}; agents [{}]; \
         API key variable {} {key}; dev tokens {dev}; {} shards, {} generation workers, \
         {} store readers, {} upload workers",
        if ctx.net.tls.is_some() { "on" } else { "off" },
        c.store.data_dir.display(),
        agents.join(", "),
        c.llm.api_key_env,
        c.server.shards,
        c.llm.workers,
        c.store.read_workers,
        c.uploads.workers,
    );
}

/// The data dir exists (or is created) and this process can write to it — checked first,
/// so a bad `store.data_dir` is reported as such (exit 2) and not as whichever file
/// happened to be opened first in it.
fn check_data_dir(dir: &std::path::Path) -> Result<(), StartError> {
    let fail = |source: io::Error| StartError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".confab-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The sizes a WebSocket endpoint accepts: messages up to `max_message`, frames up to
/// `ws.max_frame_bytes` (never more than a message).
pub fn ws_limits(cfg: &Config, max_message: usize) -> Limits {
    Limits::new(cfg.ws.max_frame_bytes.min(max_message), max_message)
}

/// Echo endpoint limits: Autobahn sends messages up to 16 MiB.
const ECHO_MAX_MESSAGE: usize = 16 << 20;
/// The echo endpoint's out queue: a few of its largest messages.
pub const ECHO_OUT_CAP: usize = 3 * ECHO_MAX_MESSAGE + (64 << 10);

impl ServerHandle {
    /// Bind, open the store, start every thread. Returns once the server accepts.
    pub fn start(cfg: Config) -> Result<ServerHandle, StartError> {
        // Exactly one rustls provider is compiled in, but both rustls and ureq want the
        // process default set before first use; a second call is a harmless error.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

        check_data_dir(&cfg.store.data_dir)?;
        let auth = Authenticator::from_config(&cfg.auth, &cfg.store.data_dir)?;
        let tls = match &cfg.tls {
            None => None,
            Some(files) => Some(
                crate::net::transport::load_tls_config(&files.cert_file, &files.key_file)
                    .map_err(StartError::Tls)?,
            ),
        };
        let metrics = Arc::new(Metrics::default());

        let std_listener =
            acceptor::bind(cfg.server.listen).map_err(|source| StartError::Listen {
                addr: cfg.server.listen,
                source,
            })?;
        let addr = std_listener.local_addr()?;
        // compat.extra_listen: more ports for the same server (a seed's documented port).
        let mut listeners = vec![std_listener];
        let mut extra_addrs = Vec::new();
        for a in &cfg.compat.extra_listen {
            let l = acceptor::bind(*a).map_err(|source| StartError::Listen { addr: *a, source })?;
            extra_addrs.push(l.local_addr()?);
            listeners.push(l);
        }
        // Loopback only when every listener is: dev tokens and trusted path users are
        // honoured only then.
        let loopback = addr.ip().is_loopback() && extra_addrs.iter().all(|a| a.ip().is_loopback());

        let n = cfg.server.shards;
        let mut handles = Vec::with_capacity(n);
        let mut parts = Vec::with_capacity(n);
        for _ in 0..n {
            let (h, poll, rx) = bus::shard_parts()?;
            handles.push(h);
            parts.push((poll, rx));
        }
        let net = Net {
            cfg: NetConfig {
                max_header_bytes: cfg.server.max_header_bytes,
                max_body_bytes: cfg.server.max_body_bytes,
                head_timeout: cfg.server.head_timeout,
                shutdown_timeout: cfg.server.shutdown_timeout,
                heartbeat_interval: cfg.ws.heartbeat_interval,
                pong_timeout: cfg.ws.pong_timeout,
                read_budget_messages: cfg.ws.read_budget_messages,
                read_buffer_bytes: cfg.ws.read_buffer_bytes,
                close_linger: Duration::from_secs(1),
            },
            shards: Shards::new(handles),
            topics: Topics::new(n),
            metrics: Default::default(),
            tls,
            shard_load: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            ip_limit: crate::net::iplimit::IpLimit::new(cfg.server.max_connections_per_ip),
            max_connections: cfg.server.max_connections,
        };
        let store = crate::store::Store::open(&cfg)?;
        #[cfg(feature = "cluster")]
        let cluster = match (&cfg.cluster, store.node_incarnation()) {
            (Some(c), Some(inc)) => Some(Arc::new(crate::cluster::Cluster::new(c.clone(), inc))),
            _ => None,
        };
        let llm = crate::llm::Llm::new(&cfg, metrics.clone());
        let uploads =
            crate::uploads::Uploads::open(&cfg).map_err(|source| StartError::DataDir {
                path: crate::config::UploadsConfig::dir(&cfg.store)
                    .display()
                    .to_string(),
                source,
            })?;

        let native_limits = ws_limits(&cfg, cfg.ws.max_message_bytes);
        let echo_limits = Limits::new(ECHO_MAX_MESSAGE, ECHO_MAX_MESSAGE);
        let ctx = Arc::new(ServerCtx {
            loopback,
            ws_limits: native_limits,
            echo_limits,
            hub: Hub::new(),
            net,
            cfg,
            auth,
            metrics,
            store,
            llm,
            uploads,
            #[cfg(feature = "cluster")]
            cluster,
        });
        // Threads that need the context (store writer, readers, generation workers).
        let mut threads = ctx.store.start_threads(ctx.metrics.clone(), ctx.clone())?;
        threads.extend(crate::llm::start_workers(&ctx)?);
        threads.extend(crate::uploads::start_workers(&ctx)?);
        #[cfg(feature = "cluster")]
        {
            threads.extend(crate::cluster::Cluster::start(&ctx)?);
            if let Some(c) = &ctx.cluster {
                c.wait_ready(Duration::from_secs(5));
            }
        }
        for (i, (poll, rx)) in parts.into_iter().enumerate() {
            let shard = crate::app::Shard::new(i, poll, rx, ctx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard-{i}"))
                    .spawn(move || shard.run())?,
            );
        }
        let acceptor = Acceptor::start(listeners, ctx.clone())?;
        log_startup(&ctx, addr);
        log_scanner(&ctx);
        #[cfg(feature = "cluster")]
        if let Some(c) = &ctx.cluster {
            // Not the PostgreSQL URL: it may hold a password.
            log::info!(
                "cluster node {} (incarnation {}): bus {} ({}), PostgreSQL store, lease {:?}",
                c.cfg.node_id,
                c.inc,
                c.cfg.nats_url,
                c.health.state(),
                c.cfg.lease
            );
        }
        if !extra_addrs.is_empty() {
            log::info!("also listening on {extra_addrs:?} (compat.extra_listen)");
        }
        Ok(ServerHandle {
            addr,
            extra_addrs,
            ctx,
            acceptor: Some(acceptor),
            threads,
        })
    }

    /// Stop accepting, close every WebSocket with 1001, let in-flight writes commit,
    /// and join every thread.
    pub fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(mut a) = self.acceptor.take() {
            a.join();
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
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.ctx.cluster {
            c.shutdown();
        }
        self.ctx.store.shutdown();
        for t in others {
            let _ = t.join();
        }
        info!("server stopped");
    }

    fn begin_shutdown(&self) {
        let Some(a) = &self.acceptor else {
            return;
        };
        if !a.stop() {
            return;
        }
        for i in 0..self.ctx.net.shards.len() {
            self.ctx
                .net
                .shards
                .send(MayBlock::worker(), i, ShardMsg::Shutdown);
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

fn participants(users: Vec<(String, String)>) -> Vec<crate::protocol::Participant> {
    users
        .into_iter()
        .map(|(user_id, username)| crate::protocol::Participant { user_id, username })
        .collect()
}
