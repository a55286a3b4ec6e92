//! The cross-thread bus: connection ids, each shard's inbox and waker, and the topic
//! index that says which shards hold subscribers of a topic.
//!
//! Shards never block: a shard may only `try_send` (a full inbox drops the message and
//! counts it). Blocking sends — the back-pressure of the store writer and the workers on
//! a shard that falls behind — need a [`MayBlock`], which worker threads take and shard
//! threads refuse (checked in debug builds), so "am I a shard?" is a type at each call
//! site instead of a convention.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::warn;
use mio::net::TcpStream;
use mio::{Poll, Token, Waker};
use parking_lot::Mutex;
use parking_lot::RwLock;

use super::http::Response;
use super::App;

/// The inbox's waker token. Connection tokens start after it.
pub const WAKER: Token = Token(0);
/// Capacity of each shard's inbox.
pub const INBOX_CAPACITY: usize = 65536;

/// Names a connection across threads. Stale ids (the slot was reused) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub shard: u16,
    pub slot: u32,
    pub gen: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}c{}.{}", self.shard, self.slot, self.gen)
    }
}

/// What other threads tell a shard. Data only: no closures cross threads.
pub enum ShardMsg<A: App> {
    /// A freshly accepted socket from the acceptor.
    Accept(TcpStream, SocketAddr),
    /// The answer for a connection waiting on a deferred HTTP request.
    Http(ConnId, Response),
    /// Close a connection with this code and reason.
    Close(ConnId, u16, String),
    /// An event for every local subscriber of its topic.
    Topic(Arc<A::Topic>),
    /// The application's own typed message.
    App(A::Msg),
    Shutdown,
}

thread_local! {
    static ON_SHARD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as a shard: it may never take a [`MayBlock`].
pub(super) fn mark_shard_thread() {
    ON_SHARD.with(|c| c.set(true));
}

/// Permission to block on a full shard inbox. Only threads that are not shards (store
/// writer and readers, generation and upload workers) may hold one; a shard that waited
/// on its own full inbox would deadlock.
#[derive(Debug, Clone, Copy)]
pub struct MayBlock(());

impl MayBlock {
    /// Take the permission on a worker thread. Debug builds panic on a shard thread.
    pub fn worker() -> MayBlock {
        debug_assert!(
            !ON_SHARD.with(|c| c.get()),
            "a shard thread asked for a blocking send"
        );
        MayBlock(())
    }
}

/// The sending side of one shard's inbox.
pub struct ShardHandle<A: App> {
    tx: Sender<ShardMsg<A>>,
    waker: Waker,
    /// Set by senders, cleared by the shard before it drains: one wake per batch.
    notified: AtomicBool,
    /// Topics whose events a `try_publish` dropped on this shard's full inbox: the shard
    /// tells the application (`App::on_missed`) so it can resync what was lost.
    missed: Mutex<Missed>,
    missed_any: AtomicBool,
}

/// Topic keys with a dropped event; past `MISSED_MAX` keys, every topic.
#[derive(Default)]
pub struct Missed {
    pub keys: Vec<Arc<str>>,
    pub all: bool,
}

const MISSED_MAX: usize = 4096;

/// Every shard's inbox.
pub struct Shards<A: App> {
    handles: Vec<ShardHandle<A>>,
    /// Messages a `try_send` dropped on a full inbox.
    dropped: AtomicU64,
}

impl<A: App> Shards<A> {
    pub fn new(handles: Vec<ShardHandle<A>>) -> Shards<A> {
        Shards {
            handles,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Each shard's inbox length now.
    pub fn inbox_lens(&self) -> Vec<usize> {
        self.handles.iter().map(|h| h.tx.len()).collect()
    }

    /// Messages dropped on a full inbox so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    fn wake(&self, h: &ShardHandle<A>) {
        if !h.notified.swap(true, Relaxed) {
            if let Err(e) = h.waker.wake() {
                warn!("waking a shard failed: {e}");
            }
        }
    }

    /// Remember that an event of `topic` was dropped for `shard` (and wake it).
    pub fn note_missed(&self, shard: usize, topic: &str) {
        let Some(h) = self.handles.get(shard) else {
            return;
        };
        {
            let mut m = h.missed.lock();
            if !m.all && !m.keys.iter().any(|k| **k == *topic) {
                if m.keys.len() >= MISSED_MAX {
                    m.all = true;
                    m.keys.clear();
                } else {
                    m.keys.push(Arc::from(topic));
                }
            }
        }
        h.missed_any.store(true, Relaxed);
        self.wake(h);
    }

    /// The topics `shard` missed events of since the last call.
    pub fn take_missed(&self, shard: usize) -> Option<Missed> {
        let h = self.handles.get(shard)?;
        if !h.missed_any.swap(false, Relaxed) {
            return None;
        }
        Some(std::mem::take(&mut *h.missed.lock()))
    }

    /// Blocking send: a full inbox applies back-pressure to the sender.
    pub fn send(&self, _: MayBlock, shard: usize, msg: ShardMsg<A>) {
        let Some(h) = self.handles.get(shard) else {
            return;
        };
        if h.tx.send(msg).is_ok() {
            self.wake(h);
        }
    }

    /// Never blocks: a full inbox drops the message (counted).
    pub fn try_send(&self, shard: usize, msg: ShardMsg<A>) -> bool {
        let Some(h) = self.handles.get(shard) else {
            return false;
        };
        match h.tx.try_send(msg) {
            Ok(()) => {
                self.wake(h);
                true
            }
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Relaxed);
                self.wake(h);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Blocking send to the shard that owns `conn`.
    pub fn send_to(&self, may: MayBlock, conn: ConnId, msg: ShardMsg<A>) {
        self.send(may, conn.shard as usize, msg);
    }

    pub(super) fn clear_notified(&self, shard: usize) {
        if let Some(h) = self.handles.get(shard) {
            h.notified.store(false, Relaxed);
        }
    }
}

/// Create a shard's poll, inbox and waker. The handle goes to [`Shards`]; the rest to the
/// shard thread.
pub fn shard_parts<A: App>() -> io::Result<(ShardHandle<A>, Poll, Receiver<ShardMsg<A>>)> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, rx) = crossbeam_channel::bounded(INBOX_CAPACITY);
    Ok((
        ShardHandle {
            tx,
            waker,
            notified: AtomicBool::new(false),
            missed: Mutex::new(Missed::default()),
            missed_any: AtomicBool::new(false),
        },
        poll,
        rx,
    ))
}

// ---------------------------------------------------------------- topics

const STRIPES: usize = 64;

/// Which shards hold subscribers of each topic, and how many: a fixed array of stripes,
/// each a `RwLock<HashMap>` picked by hash. Each shard keeps its own `topic → [slot]`
/// lists; this index lets a publisher send ONE message per shard that has subscribers,
/// so cross-thread traffic per event is O(shards), not O(subscribers).
pub struct Topics {
    hasher: std::collections::hash_map::RandomState,
    stripes: Vec<RwLock<HashMap<Arc<str>, Vec<u32>>>>,
    nshards: usize,
}

impl Topics {
    pub fn new(nshards: usize) -> Topics {
        Topics {
            hasher: Default::default(),
            stripes: (0..STRIPES).map(|_| RwLock::new(HashMap::new())).collect(),
            nshards,
        }
    }

    fn stripe<K: Hash + ?Sized>(&self, k: &K) -> &RwLock<HashMap<Arc<str>, Vec<u32>>> {
        &self.stripes[(self.hasher.hash_one(k) as usize) % STRIPES]
    }

    /// A connection on `shard` subscribed to `topic`.
    pub(super) fn add(&self, topic: &Arc<str>, shard: usize) {
        let mut map = self.stripe(&**topic).write();
        let by_shard = map.entry(topic.clone()).or_default();
        if by_shard.len() < self.nshards {
            by_shard.resize(self.nshards, 0);
        }
        by_shard[shard] += 1;
    }

    /// A connection on `shard` left `topic`.
    pub(super) fn remove(&self, topic: &str, shard: usize) {
        let mut map = self.stripe(topic).write();
        if let Some(by_shard) = map.get_mut(topic) {
            if let Some(n) = by_shard.get_mut(shard) {
                *n = n.saturating_sub(1);
            }
            if by_shard.iter().all(|n| *n == 0) {
                map.remove(topic);
            }
        }
    }

    /// The shards holding subscribers of `topic`.
    pub fn shards_of(&self, topic: &str, out: &mut Vec<usize>) {
        out.clear();
        let map = self.stripe(topic).read();
        if let Some(by_shard) = map.get(topic) {
            out.extend(
                by_shard
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(s, _)| s),
            );
        }
    }

    /// How many connections are subscribed to `topic` (all shards).
    pub fn subscribers(&self, topic: &str) -> usize {
        let map = self.stripe(topic).read();
        map.get(topic)
            .map(|by_shard| by_shard.iter().map(|n| *n as usize).sum())
            .unwrap_or(0)
    }

    /// Topics with at least one subscribed connection.
    pub fn count(&self) -> usize {
        self.stripes.iter().map(|t| t.read().len()).sum()
    }
}

impl<A: App> super::Net<A> {
    /// Send `ev` to every shard holding subscribers of its topic, waiting for room in
    /// full inboxes (workers only). Returns how many shards it went to.
    pub fn publish(&self, may: MayBlock, ev: A::Topic) -> usize {
        self.fan_out(ev, |s, msg| self.shards.send(may, s, msg))
    }

    /// Like [`publish`](Self::publish) but never blocks: a full inbox drops the event,
    /// counts it, and records the topic as missed on that shard (`App::on_missed` then
    /// lets the application resync). Returns how many shards it was offered to.
    pub fn try_publish(&self, ev: A::Topic) -> usize {
        let key: Arc<str> = Arc::from(A::topic_key(&ev));
        self.fan_out(ev, |s, msg| {
            if !self.shards.try_send(s, msg) {
                self.shards.note_missed(s, &key);
            }
        })
    }

    fn fan_out(&self, ev: A::Topic, send: impl Fn(usize, ShardMsg<A>)) -> usize {
        let mut targets = Vec::with_capacity(4);
        self.topics.shards_of(A::topic_key(&ev), &mut targets);
        let n = targets.len();
        if n == 0 {
            return 0;
        }
        let ev = Arc::new(ev);
        for s in targets {
            send(s, ShardMsg::Topic(ev.clone()));
        }
        n
    }
}
