//! The hub: the little state shared between threads, kept lock-light.
//!
//! (Which shards hold subscribers of a conversation is the transport's topic index,
//! `net::bus::Topics`.)
//!
//! - **Presence** (room conversation → users online in it), striped like the rest.
//! - **Users** (user id → open WebSocket connections): for the per-user connection cap and
//!   user-level presence.
//! - **Generations** in flight, by conversation: for `stop` and for mid-stream resume.
//!
//! Nothing here does I/O, and no lock is held across a channel send that could block —
//! the generation state lock included: a token is appended under it and published after
//! it is released (`generation.rs`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::auth::User;
use crate::net::ConnId;

const STRIPES: usize = 64;

fn stripe_of<K: Hash + ?Sized>(hasher: &std::collections::hash_map::RandomState, k: &K) -> usize {
    (hasher.hash_one(k) as usize) % STRIPES
}

#[derive(Default)]
struct UserEntry {
    conns: Vec<ConnId>,
    /// The user as a connection's token had it: a connection whose token says the same
    /// (the tabs of one browser) shares it instead of holding its own copy.
    user: Option<Arc<User>>,
}

/// Who is online in a room: user → (display name, connections in the room); and whether
/// the room is *large* — past `rooms.presence_max_users`, its joins and leaves not
/// announced one by one ([`Hub::presence_mode`]).
#[derive(Default)]
struct Presence {
    users: HashMap<Arc<str>, (String, u32)>,
    large: bool,
}

/// How one change of a room's presence reaches the room ([`Hub::presence_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// `presence` joined/left, to everyone else in the room.
    One,
    /// Nothing: the room is large.
    Quiet,
    /// The room just became large, or small again: everyone in it gets a `presence_list`
    /// (a sample and the count; or, small again, everyone).
    Resync,
}

pub struct Hub {
    hasher: std::collections::hash_map::RandomState,
    presence: Vec<Mutex<HashMap<Arc<str>, Presence>>>,
    users: Vec<Mutex<HashMap<Arc<str>, UserEntry>>>,
    pub generations: crate::generation::Registry,
}

/// Refused by [`Hub::user_connect`]: the user already has this many connections.
#[derive(Debug)]
pub struct TooManyConnections(pub u32);

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            hasher: Default::default(),
            users: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            presence: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            generations: Default::default(),
        }
    }

    // ------------------------------------------------------------ presence

    /// A connection of `user` joined room conversation `conv`. True when it is the user's
    /// first connection there (then the others hear `presence joined`).
    pub fn presence_add(&self, conv: &Arc<str>, user: &str, name: &str) -> bool {
        let mut map = self.presence[stripe_of(&self.hasher, &**conv)].lock();
        let room = map.entry(conv.clone()).or_default();
        let e = room
            .users
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
        let last = match room.users.get_mut(user) {
            Some(e) => {
                e.1 = e.1.saturating_sub(1);
                e.1 == 0
            }
            None => return false,
        };
        if last {
            room.users.remove(user);
            if room.users.is_empty() {
                map.remove(conv);
            }
        }
        last
    }

    /// Is `user` online in room conversation `conv` now?
    pub fn presence_online(&self, conv: &str, user: &str) -> bool {
        let map = self.presence[stripe_of(&self.hasher, conv)].lock();
        map.get(conv).is_some_and(|r| r.users.contains_key(user))
    }

    /// How a change of `conv`'s presence that the hub has taken in (a join when `joined`)
    /// is told, with `remote` users online on other nodes (cluster mode; 0 on a single
    /// box) and at most `max` announced one by one. A room becomes large when a join
    /// takes it past `max`, and small again when leaves bring it down to `max / 2` — the
    /// gap keeps a room that hovers at the limit from resyncing everyone on every join
    /// and leave. Decided under the room's lock, so two shards cannot both flip it.
    pub fn presence_mode(&self, conv: &str, remote: usize, joined: bool, max: usize) -> Announce {
        let mut map = self.presence[stripe_of(&self.hasher, conv)].lock();
        let Some(room) = map.get_mut(conv) else {
            return Announce::One; // the last one left: nobody to tell here
        };
        let n = room.users.len() + remote;
        match (room.large, joined) {
            (false, true) if n > max => {
                room.large = true;
                Announce::Resync
            }
            (false, _) => Announce::One,
            (true, false) if n <= max / 2 => {
                room.large = false;
                Announce::Resync
            }
            (true, _) => Announce::Quiet,
        }
    }

    /// At most `limit` of the users online in a room (id, name), and how many there are:
    /// what a join shows without copying a large room's whole list under the lock.
    pub fn presence_sample(&self, conv: &str, limit: usize) -> (Vec<(String, String)>, usize) {
        let map = self.presence[stripe_of(&self.hasher, conv)].lock();
        match map.get(conv) {
            Some(r) => (
                r.users
                    .iter()
                    .take(limit)
                    .map(|(u, (n, _))| (u.to_string(), n.clone()))
                    .collect(),
                r.users.len(),
            ),
            None => (Vec::new(), 0),
        }
    }

    /// Users online in a room: (id, name).
    pub fn presence_list(&self, conv: &str) -> Vec<(String, String)> {
        let map = self.presence[stripe_of(&self.hasher, conv)].lock();
        map.get(conv)
            .map(|r| {
                r.users
                    .iter()
                    .map(|(u, (n, _))| (u.to_string(), n.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    // ------------------------------------------------------------ users

    /// Count a new WebSocket connection of `user`; refuse over `cap`. Returns the user
    /// for the connection to keep: the one an earlier connection with the same claims
    /// keeps (so N tabs hold one copy), or this one.
    pub fn user_connect(
        &self,
        user: Arc<User>,
        conn: ConnId,
        cap: u32,
    ) -> Result<Arc<User>, TooManyConnections> {
        let mut map = self.users[stripe_of(&self.hasher, user.id.as_str())].lock();
        let e = map.entry(Arc::from(user.id.as_str())).or_default();
        if e.conns.len() >= cap as usize {
            return Err(TooManyConnections(cap));
        }
        e.conns.push(conn);
        match &e.user {
            Some(kept) if **kept == *user => Ok(kept.clone()),
            _ => {
                e.user = Some(user.clone());
                Ok(user)
            }
        }
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

    /// How many users have a connection open (no allocation: anyone may ask, 002's status).
    pub fn user_count(&self) -> usize {
        self.users.iter().map(|s| s.lock().len()).sum()
    }

    /// Every user with a connection open, with how many (walks every stripe: for status
    /// pages, not for the message path).
    pub fn users_online(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for stripe in &self.users {
            for (u, e) in stripe.lock().iter() {
                out.push((u.to_string(), e.conns.len()));
            }
        }
        out.sort();
        out
    }

    pub fn user_online(&self, user: &str) -> bool {
        self.users[stripe_of(&self.hasher, user)]
            .lock()
            .contains_key(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_turns_large_past_the_limit_and_small_again_at_half_of_it() {
        let hub = Hub::new();
        let conv: Arc<str> = Arc::from("c1");
        let max = 4;
        let join = |u: &str| {
            assert!(hub.presence_add(&conv, u, u));
            hub.presence_mode(&conv, 0, true, max)
        };
        // Up to the limit: one by one.
        for u in ["a", "b", "c", "d"] {
            assert_eq!(join(u), Announce::One, "{u}");
        }
        // Past it: one resync, then quiet.
        assert_eq!(join("e"), Announce::Resync);
        assert_eq!(join("f"), Announce::Quiet);
        let leave = |u: &str| {
            assert!(hub.presence_remove(&conv, u));
            hub.presence_mode(&conv, 0, false, max)
        };
        // Back under the limit is still large (no resync on every join and leave at the
        // edge) until half of it: one resync, then one by one again.
        for u in ["f", "e", "d"] {
            assert_eq!(leave(u), Announce::Quiet, "{u}");
        }
        assert_eq!(leave("c"), Announce::Resync);
        assert_eq!(leave("b"), Announce::One);
        assert_eq!(join("x"), Announce::One);
        // Other nodes' users count too (cluster mode).
        assert!(hub.presence_add(&conv, "y", "y"));
        assert_eq!(hub.presence_mode(&conv, 10, true, max), Announce::Resync);
        let (some, n) = hub.presence_sample(&conv, 2);
        assert_eq!((some.len(), n), (2, 3));
    }
}
