//! Cluster mode (`--features cluster`, `[cluster]`): several confab nodes share the
//! record in PostgreSQL (`store::pg`) and live events over NATS core. docs/cluster.md has
//! the design and what each failure does.
//!
//! - [`Cluster::publish`] is where every conversation event of this node goes: to this
//!   node's subscribers (as on a single box) and, encoded once ([`wire`]), to the bus.
//! - [`bus`]: the one thread that owns the NATS client (tokio confined to it). Shards and
//!   workers reach it only through a bounded queue (`try_send`; full: the event is
//!   dropped and counted, receivers repair the gap).
//! - [`order`]: `message_added` events delivered in `seq` order whichever node wrote
//!   them; gaps (lost bus events) read from PostgreSQL.

pub mod bus;
pub mod lease;
pub mod order;
pub mod presence;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::ClusterConfig;
use crate::net::MayBlock;
use crate::server::ServerCtx;
use crate::topic::{TopicEvent, TopicKind};

/// What the bus thread is asked to do.
pub enum BusCmd {
    Publish {
        subject: String,
        payload: Vec<u8>,
    },
    /// Cancel `user`'s replies in a conversation on every node; when none had one, the
    /// connection hears NOT_FOUND (`conn` is None: nobody to tell).
    StopReplies {
        req: StopRequest,
        conn: Option<(crate::net::ConnId, Option<String>)>,
    },
    /// The replies `node` is generating in `conv`: (content so far, tokens so far).
    Snapshot {
        node: String,
        conv: String,
        reply: crossbeam_channel::Sender<Snapshots>,
    },
    Stop,
}

/// Where a user's removal from a room goes (each node takes its connections out).
pub const KICK_SUBJECT: &str = "cf.kick";

/// Where admin broadcasts to users or to everyone go.
pub const BROADCAST_SUBJECT: &str = "cf.bc";

/// Replies in flight by message id: (content so far, tokens so far).
pub type Snapshots = std::collections::HashMap<i64, (String, u64)>;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StopRequest {
    pub conv: String,
    pub user: String,
    pub admin: bool,
}

/// How long a node waits for another to answer a stop or a snapshot.
pub const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1000);

/// The bus's state for `/health` and `/metrics`.
#[derive(Default)]
pub struct BusHealth {
    pub connected: AtomicBool,
    /// The bus thread's subscriptions reached the server (start-up waits for this).
    pub subscribed: AtomicBool,
    /// When the bus connection was lost (ms since the epoch; 0: connected or never).
    pub down_since_ms: AtomicI64,
    pub published: AtomicU64,
    pub received: AtomicU64,
    /// Events not sent: the bus queue was full.
    pub dropped: AtomicU64,
    /// Bus messages that could not be read.
    pub malformed: AtomicU64,
    /// Gaps in a conversation's seq read from PostgreSQL.
    pub repairs: AtomicU64,
    /// Reads of every live conversation after a reconnect or a slow-consumer event.
    pub resyncs: AtomicU64,
}

/// After this long without the bus, `/health` answers 503: this node no longer hears the
/// others (it still serves its own connections, and every write still commits).
pub const BUS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl BusHealth {
    /// "ok", "connecting" (down less than [`BUS_GRACE`]) or "down".
    pub fn state(&self) -> &'static str {
        if self.connected.load(Relaxed) {
            return "ok";
        }
        let since = self.down_since_ms.load(Relaxed);
        let grace = BUS_GRACE.as_millis() as i64;
        if since != 0 && crate::protocol::now_ms() - since > grace {
            "down"
        } else {
            "connecting"
        }
    }

    /// The bus's counters in Prometheus' text format.
    pub fn prometheus(&self, s: &mut String) {
        use std::fmt::Write;
        let mut line = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                s,
                "# HELP confab_cluster_{name} {help}\n# TYPE confab_cluster_{name} {kind}\nconfab_cluster_{name} {v}"
            );
        };
        line(
            "bus_connected",
            "1 when this node is connected to NATS.",
            "gauge",
            u64::from(self.connected.load(Relaxed)),
        );
        line(
            "bus_published_total",
            "Events this node sent on the bus.",
            "counter",
            self.published.load(Relaxed),
        );
        line(
            "bus_received_total",
            "Bus messages this node received.",
            "counter",
            self.received.load(Relaxed),
        );
        line(
            "bus_dropped_total",
            "Events not sent: the bus queue was full or the bus refused them.",
            "counter",
            self.dropped.load(Relaxed),
        );
        line(
            "bus_malformed_total",
            "Bus messages that could not be read.",
            "counter",
            self.malformed.load(Relaxed),
        );
        line(
            "gap_repairs_total",
            "Gaps in a conversation's seq filled from PostgreSQL.",
            "counter",
            self.repairs.load(Relaxed),
        );
        line(
            "resyncs_total",
            "Resyncs of every followed conversation (bus reconnect, slow consumer).",
            "counter",
            self.resyncs.load(Relaxed),
        );
    }
}

pub struct Cluster {
    pub cfg: ClusterConfig,
    /// This process's incarnation of `cfg.node_id` (a restart is a new one).
    pub inc: i64,
    tx: tokio::sync::mpsc::Sender<BusCmd>,
    rx: Mutex<Option<tokio::sync::mpsc::Receiver<BusCmd>>>,
    pub(crate) order: Mutex<order::Order>,
    /// Presence: this node's and the others' (see `presence.rs`).
    pub(crate) dir: Mutex<presence::Directory>,
    pub health: BusHealth,
}

impl Cluster {
    pub fn new(cfg: ClusterConfig, inc: i64) -> Cluster {
        let (tx, rx) = tokio::sync::mpsc::channel(cfg.bus_queue);
        let dir = Mutex::new(presence::Directory::new(&cfg.node_id, inc));
        Cluster {
            dir,
            cfg,
            inc,
            tx,
            rx: Mutex::new(Some(rx)),
            order: Mutex::new(order::Order::default()),
            health: BusHealth::default(),
        }
    }

    /// A conversation event of this node: to the bus, and to this node's subscribers.
    /// `may`: the caller may wait for room in full shard inboxes (workers); `None`: it
    /// may not (shards), so a full inbox drops the event as `Net::try_publish` does.
    /// Returns how many shards of this node it went to.
    pub fn publish(&self, ctx: &ServerCtx, may: Option<MayBlock>, ev: TopicEvent) -> usize {
        let payload = wire::encode(&self.cfg.node_id, self.inc, &ev);
        let subject = wire::conversation_subject(&ev.conversation_id);
        match self.tx.try_send(BusCmd::Publish { subject, payload }) {
            Ok(()) => {
                self.health.published.fetch_add(1, Relaxed);
            }
            Err(_) => {
                self.health.dropped.fetch_add(1, Relaxed);
            }
        }
        self.deliver(ctx, may, ev)
    }

    /// An event for this node's subscribers (from here or from the bus), `message_added`
    /// in `seq` order.
    pub fn deliver(&self, ctx: &ServerCtx, may: Option<MayBlock>, ev: TopicEvent) -> usize {
        let send = |e: TopicEvent| match may {
            Some(m) => ctx.net.publish(m, e),
            None => ctx.net.try_publish(e),
        };
        match ev.kind {
            // Nobody follows it here: nothing to order (a subscriber's replay starts the
            // order when one comes), and no lock or entry per chat on this path.
            TopicKind::Added { .. } if ctx.net.topics.subscribers(&ev.conversation_id) == 0 => 0,
            TopicKind::Added { seq } => {
                // Delivered under the lock: two threads releasing seq 6 and 7 must not
                // race each other to the shards.
                let mut order = self.order.lock();
                let mut n = 0;
                for e in order.offer(ev, seq, Instant::now()) {
                    n = n.max(send(e));
                }
                n
            }
            _ => send(ev),
        }
    }

    /// Send a presence message to the other nodes.
    pub(crate) fn send_dir(&self, msg: &presence::DirMsg) {
        let payload = serde_json::to_vec(msg).unwrap_or_default();
        let cmd = BusCmd::Publish {
            subject: presence::SUBJECT.to_string(),
            payload,
        };
        if self.tx.try_send(cmd).is_err() {
            // The next heartbeat's version tells the others they missed it.
            self.health.dropped.fetch_add(1, Relaxed);
        }
    }

    /// This node's first connection of `user` in a room (`joined`) or its last one gone:
    /// tell the other nodes, and this node's subscribers when the union changed.
    /// `deliver: false` when the room itself is gone (nobody is left to tell here).
    pub fn local_presence(&self, ctx: &ServerCtx, e: presence::Entry, joined: bool, deliver: bool) {
        let (msg, changed) = self.dir.lock().local_change(e.clone(), joined);
        self.send_dir(&msg);
        if changed && deliver {
            let change = if joined {
                presence::Change::Joined(e)
            } else {
                presence::Change::Left(e)
            };
            self.deliver_presence(ctx, change);
        }
    }

    /// A transition of the union for this node's subscribers of the room.
    pub(crate) fn deliver_presence(&self, ctx: &ServerCtx, change: presence::Change) {
        let (e, joined) = match change {
            presence::Change::Joined(e) => (e, true),
            presence::Change::Left(e) => (e, false),
        };
        let conv: std::sync::Arc<str> = std::sync::Arc::from(e.conv.as_str());
        ctx.tell_presence(&e.room_id, &conv, &e.user, &e.name, joined);
    }

    /// An admin broadcast to users or everyone: the other nodes deliver it to their own
    /// connections.
    pub fn broadcast(&self, users: Option<&[String]>, ev: &crate::protocol::Event) {
        let msg = serde_json::json!({ "users": users, "event": ev });
        let cmd = BusCmd::Publish {
            subject: BROADCAST_SUBJECT.to_string(),
            payload: serde_json::to_vec(&msg).unwrap_or_default(),
        };
        if self.tx.try_send(cmd).is_err() {
            self.health.dropped.fetch_add(1, Relaxed);
        }
    }

    /// A user removed from a room: every node takes that user's connections out of it.
    pub fn kick(&self, user: &str, room_id: &str, conversation_id: &str) {
        let msg = serde_json::json!({ "user": user, "room_id": room_id, "conv": conversation_id });
        let cmd = BusCmd::Publish {
            subject: KICK_SUBJECT.to_string(),
            payload: serde_json::to_vec(&msg).unwrap_or_default(),
        };
        if self.tx.try_send(cmd).is_err() {
            self.health.dropped.fetch_add(1, Relaxed);
        }
    }

    /// `stop` in cluster mode: the replies may run on any node. `found_here`: this node
    /// cancelled some already (the others are still asked, never answered NOT_FOUND).
    pub fn stop_everywhere(
        &self,
        req: StopRequest,
        conn: crate::net::ConnId,
        id: Option<String>,
        found_here: bool,
    ) -> bool {
        let conn = (!found_here).then_some((conn, id));
        self.tx.try_send(BusCmd::StopReplies { req, conn }).is_ok()
    }

    /// The replies generated in `conv` on other nodes, taken by their owners now (a
    /// replay shows their text so far and drops the tokens it holds). Blocking: reader
    /// threads only. The owners are read from the store; a silent owner gives nothing
    /// (the replay shows the row's last checkpoint).
    pub fn remote_in_flight(&self, ctx: &ServerCtx, conv: &str) -> Snapshots {
        let owners = match ctx
            .store
            .read_conn()
            .and_then(|db| db.streaming_owners(conv))
        {
            Ok(o) => o,
            Err(e) => {
                log::warn!("cluster: cannot read who runs the replies in {conv}: {e}");
                return Snapshots::new();
            }
        };
        let mut out = Snapshots::new();
        for node in owners {
            if node == self.cfg.node_id {
                continue;
            }
            let (tx, rx) = crossbeam_channel::bounded(1);
            let cmd = BusCmd::Snapshot {
                node,
                conv: conv.to_string(),
                reply: tx,
            };
            if self.tx.try_send(cmd).is_err() {
                continue;
            }
            if let Ok(s) = rx.recv_timeout(ASK_TIMEOUT + std::time::Duration::from_millis(200)) {
                out.extend(s);
            }
        }
        out
    }

    /// Start the bus and lease threads (joined at shutdown: the lease thread ends when
    /// the store stops).
    pub fn start(
        ctx: &std::sync::Arc<ServerCtx>,
    ) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        let Some(cluster) = &ctx.cluster else {
            return Ok(Vec::new());
        };
        let rx = cluster
            .rx
            .lock()
            .take()
            .ok_or_else(|| std::io::Error::other("bus already started"))?;
        let lease_ctx = ctx.clone();
        let lease = std::thread::Builder::new()
            .name("cluster-lease".into())
            .spawn(move || lease::run(lease_ctx))?;
        let ctx = ctx.clone();
        let bus = std::thread::Builder::new()
            .name("cluster-bus".into())
            .spawn(move || bus::run(ctx, rx))?;
        Ok(vec![lease, bus])
    }

    /// Wait (at most `limit`) until the bus listens, so that this node does not take
    /// traffic the others cannot hear about yet. Without NATS it starts anyway, serving
    /// its own connections (`/health` says so), and catches up when the bus comes.
    pub fn wait_ready(&self, limit: std::time::Duration) -> bool {
        let t = Instant::now();
        while !self.health.subscribed.load(Relaxed) {
            if t.elapsed() > limit {
                log::warn!(
                    "cluster: no bus at {} after {limit:?}; serving without it for now",
                    self.cfg.nats_url
                );
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }

    /// Ask the bus thread to stop (after what is queued).
    pub fn shutdown(&self) {
        let _ = self.tx.try_send(BusCmd::Stop);
    }
}
