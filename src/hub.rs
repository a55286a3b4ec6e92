//! The hub: the little state shared between threads, kept lock-light.
//!
//! - **Topics** (conversation → subscribed connections per shard): a fixed array of
//!   stripes, each a `parking_lot::RwLock<HashMap>`, picked by hash. The counts say which
//!   shards to send to and how many connections an event reached (delivery
//!   confirmations); the shard keeps the actual `conversation → [slot]` list itself, so the send path takes one read lock and sends ONE message per shard that
//!   holds subscribers: cross-thread traffic per event is O(shards), not O(subscribers).
//! - **Users** (user id → open WebSocket connections): for the per-user connection cap and
//!   user-level presence.
//! - **Generations** in flight, by conversation: for `stop` and for mid-stream resume.
//!
//! Nothing here does I/O, and no lock is held across a channel send that could block.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::shard::{ConnId, ShardMsg, Shards, TopicEvent};

const STRIPES: usize = 64;

fn stripe_of<K: Hash + ?Sized>(hasher: &std::collections::hash_map::RandomState, k: &K) -> usize {
    (hasher.hash_one(k) as usize) % STRIPES
}

/// Per-conversation subscriber counts by shard.
#[derive(Default)]
struct TopicEntry {
    /// `by_shard[s]` = number of subscribed connections on shard `s`.
    by_shard: Vec<u32>,
}

#[derive(Default)]
struct UserEntry {
    conns: Vec<ConnId>,
}

/// Who is online in a room: user → (display name, connections in the room).
type Presence = HashMap<Arc<str>, (String, u32)>;

pub struct Hub {
    hasher: std::collections::hash_map::RandomState,
    presence: Vec<Mutex<HashMap<Arc<str>, Presence>>>,
    topics: Vec<RwLock<HashMap<Arc<str>, TopicEntry>>>,
    users: Vec<Mutex<HashMap<Arc<str>, UserEntry>>>,
    pub generations: crate::generation::Registry,
    nshards: usize,
}

/// Refused by [`Hub::user_connect`]: the user already has this many connections.
#[derive(Debug)]
pub struct TooManyConnections(pub u32);

impl Hub {
    pub fn new(nshards: usize) -> Hub {
        Hub {
            hasher: Default::default(),
            topics: (0..STRIPES).map(|_| RwLock::new(HashMap::new())).collect(),
            users: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            presence: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            generations: Default::default(),
            nshards,
        }
    }

    // ------------------------------------------------------------ topics

    /// A connection on `shard` subscribed to `conv`.
    pub fn topic_shard_add(&self, conv: &Arc<str>, shard: usize) {
        let mut map = self.topics[stripe_of(&self.hasher, &**conv)].write();
        let e = map.entry(conv.clone()).or_default();
        if e.by_shard.len() < self.nshards {
            e.by_shard.resize(self.nshards, 0);
        }
        e.by_shard[shard] += 1;
    }

    /// A connection on `shard` unsubscribed from `conv`.
    pub fn topic_shard_remove(&self, conv: &str, shard: usize) {
        let mut map = self.topics[stripe_of(&self.hasher, conv)].write();
        if let Some(e) = map.get_mut(conv) {
            if let Some(n) = e.by_shard.get_mut(shard) {
                *n = n.saturating_sub(1);
            }
            if e.by_shard.iter().all(|n| *n == 0) {
                map.remove(conv);
            }
        }
    }

    /// The shards holding subscribers of `conv`.
    pub fn topic_shards(&self, conv: &str, out: &mut Vec<usize>) {
        out.clear();
        let map = self.topics[stripe_of(&self.hasher, conv)].read();
        if let Some(e) = map.get(conv) {
            out.extend(
                e.by_shard
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(s, _)| s),
            );
        }
    }

    /// How many connections are subscribed to `conv` (all shards).
    pub fn topic_subscribers(&self, conv: &str) -> usize {
        let map = self.topics[stripe_of(&self.hasher, conv)].read();
        map.get(conv)
            .map(|e| e.by_shard.iter().map(|n| *n as usize).sum())
            .unwrap_or(0)
    }

    /// Conversations with at least one subscribed connection (all shards).
    pub fn topic_count(&self) -> usize {
        self.topics.iter().map(|t| t.read().len()).sum()
    }

    /// Send `ev` to every shard holding subscribers of its conversation (blocking send:
    /// only for non-shard threads). Returns how many shards it went to.
    pub fn publish(&self, shards: &Shards, ev: TopicEvent) -> usize {
        let mut targets = Vec::with_capacity(4);
        self.topic_shards(&ev.conversation_id, &mut targets);
        let n = targets.len();
        if n == 0 {
            return 0;
        }
        let ev = Arc::new(ev);
        for s in targets {
            shards.send(s, ShardMsg::Topic(ev.clone()));
        }
        n
    }

    /// Like [`publish`](Self::publish) but never blocks (for shard threads): a full inbox
    /// drops the event and counts it. Only used for ephemeral events (typing, presence).
    pub fn publish_nonblocking(&self, shards: &Shards, ev: TopicEvent) -> usize {
        let mut targets = Vec::with_capacity(4);
        self.topic_shards(&ev.conversation_id, &mut targets);
        let ev = Arc::new(ev);
        let n = targets.len();
        for s in targets {
            shards.try_send(s, ShardMsg::Topic(ev.clone()));
        }
        n
    }

    // ------------------------------------------------------------ presence

    /// A connection of `user` joined room conversation `conv`. True when it is the user's
    /// first connection there (then the others hear `presence joined`).
    pub fn presence_add(&self, conv: &Arc<str>, user: &str, name: &str) -> bool {
        let mut map = self.presence[stripe_of(&self.hasher, &**conv)].lock();
        let room = map.entry(conv.clone()).or_default();
        let e = room
            .entry(Arc::from(user))
            .or_insert_with(|| (name.to_string(), 0));
        e.1 += 1;
        e.1 == 1
    }

    /// A connection of `user` left `conv`. True when it was the user's last one there.
    pub fn presence_remove(&self, conv: &str, user: &str) -> bool {
        let mut map = self.presence[stripe_of(&self.hasher, conv)].lock();
        let Some(room) = map.get_mut(conv) else {
            return false;
        };
        let last = match room.get_mut(user) {
            Some(e) => {
                e.1 = e.1.saturating_sub(1);
                e.1 == 0
            }
            None => return false,
        };
        if last {
            room.remove(user);
            if room.is_empty() {
                map.remove(conv);
            }
        }
        last
    }

    /// Users online in a room: (id, name).
    pub fn presence_list(&self, conv: &str) -> Vec<(String, String)> {
        let map = self.presence[stripe_of(&self.hasher, conv)].lock();
        map.get(conv)
            .map(|r| {
                r.iter()
                    .map(|(u, (n, _))| (u.to_string(), n.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    // ------------------------------------------------------------ users

    /// Count a new WebSocket connection of `user`; refuse over `cap`.
    /// Returns how many connections the user has now (1 = this is the first).
    pub fn user_connect(
        &self,
        user: &str,
        conn: ConnId,
        cap: u32,
    ) -> Result<usize, TooManyConnections> {
        let mut map = self.users[stripe_of(&self.hasher, user)].lock();
        let e = map.entry(Arc::from(user)).or_default();
        if e.conns.len() >= cap as usize {
            return Err(TooManyConnections(cap));
        }
        e.conns.push(conn);
        Ok(e.conns.len())
    }

    /// Forget a connection. Returns how many the user still has.
    pub fn user_disconnect(&self, user: &str, conn: ConnId) -> usize {
        let mut map = self.users[stripe_of(&self.hasher, user)].lock();
        let Some(e) = map.get_mut(user) else { return 0 };
        e.conns.retain(|c| *c != conn);
        let left = e.conns.len();
        if left == 0 {
            map.remove(user);
        }
        left
    }

    pub fn user_connections(&self, user: &str) -> Vec<ConnId> {
        let map = self.users[stripe_of(&self.hasher, user)].lock();
        map.get(user).map(|e| e.conns.clone()).unwrap_or_default()
    }

    pub fn user_online(&self, user: &str) -> bool {
        self.users[stripe_of(&self.hasher, user)]
            .lock()
            .contains_key(user)
    }
}
