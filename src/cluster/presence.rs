//! Presence across nodes: who is online in each room is the union of every node's own
//! view (a simplified Phoenix.Tracker, docs/cluster.md).
//!
//! Each node owns its connections' presence (the hub) and mirrors it here with the room
//! ids; every change goes out on the bus as a versioned delta. Every other node's view is
//! kept as it was last heard, replaced by a full copy when a delta was missed (a version
//! gap, a restart: a new incarnation) and dropped when its heartbeats stop. `joined` and
//! `left` are decided on the union — a user's first connection anywhere, their last one
//! anywhere — computed alike on every node and delivered there to local subscribers
//! only, so there is one event per transition and no ghost outlives its node.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Presence news on the bus subject [`SUBJECT`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum DirMsg {
    /// One user's first connection in a room on `node` (on), or their last one gone.
    Delta {
        node: String,
        inc: i64,
        v: u64,
        conv: String,
        room_id: String,
        user: String,
        name: String,
        on: bool,
    },
    /// Everything `node` has, as of version `v`.
    Full {
        node: String,
        inc: i64,
        v: u64,
        entries: Vec<Entry>,
    },
    /// `node` is alive; its directory is at version `v`.
    Beat { node: String, inc: i64, v: u64 },
    /// `node` asks every node for a full copy.
    Dump { node: String },
}

pub const SUBJECT: &str = "cf.dir";

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub conv: String,
    pub room_id: String,
    pub user: String,
    pub name: String,
}

/// A transition of the union, for this node's subscribers of `conv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Joined(Entry),
    Left(Entry),
}

struct Remote {
    inc: i64,
    v: u64,
    last_seen: Instant,
    /// conv → user → entry
    online: HashMap<String, HashMap<String, Entry>>,
}

impl Remote {
    fn has(&self, conv: &str, user: &str) -> bool {
        self.online.get(conv).is_some_and(|u| u.contains_key(user))
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.online.values().flat_map(|u| u.values())
    }

    fn insert(&mut self, e: Entry) {
        self.online
            .entry(e.conv.clone())
            .or_default()
            .insert(e.user.clone(), e);
    }

    fn remove(&mut self, conv: &str, user: &str) -> Option<Entry> {
        let users = self.online.get_mut(conv)?;
        let e = users.remove(user);
        if users.is_empty() {
            self.online.remove(conv);
        }
        e
    }
}

/// This node's mirror and every other node's view.
pub struct Directory {
    node: String,
    inc: i64,
    v: u64,
    /// This node's presence: conv → user → entry.
    local: HashMap<String, HashMap<String, Entry>>,
    remote: HashMap<String, Remote>,
}

/// What applying a bus message asks of the caller.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changes: Vec<Change>,
    /// Ask every node for its full directory (something was missed).
    pub dump: bool,
    /// Answer with this node's full directory.
    pub send_full: bool,
}

impl Directory {
    pub fn new(node: &str, inc: i64) -> Directory {
        Directory {
            node: node.to_string(),
            inc,
            v: 0,
            local: HashMap::new(),
            remote: HashMap::new(),
        }
    }

    fn local_has(&self, conv: &str, user: &str) -> bool {
        self.local.get(conv).is_some_and(|u| u.contains_key(user))
    }

    /// Online on a node other than `except` (this node counts unless `except` is it).
    fn online_except(&self, conv: &str, user: &str, except: &str) -> bool {
        (except != self.node && self.local_has(conv, user))
            || self
                .remote
                .iter()
                .any(|(n, r)| n != except && r.has(conv, user))
    }

    /// Online on another node.
    pub fn remote_online(&self, conv: &str, user: &str) -> bool {
        self.remote.values().any(|r| r.has(conv, user))
    }

    /// Room members online on other nodes, one per (node, user): what a delivery
    /// confirmation adds to this node's count of subscribers.
    pub fn remote_count(&self, conv: &str) -> usize {
        self.remote
            .values()
            .map(|r| r.online.get(conv).map_or(0, HashMap::len))
            .sum()
    }

    /// Users online in `conv` on other nodes: (id, name).
    pub fn remote_list(&self, conv: &str) -> Vec<(String, String)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for r in self.remote.values() {
            for e in r.online.get(conv).into_iter().flat_map(|u| u.values()) {
                if seen.insert(e.user.clone()) {
                    out.push((e.user.clone(), e.name.clone()));
                }
            }
        }
        out
    }

    /// This node's first connection of a user in a room (`on`) or its last one gone.
    /// Returns the delta for the bus and whether the union changed (then this node's
    /// subscribers hear `joined`/`left`).
    pub fn local_change(&mut self, e: Entry, on: bool) -> (DirMsg, bool) {
        let elsewhere = self.remote_online(&e.conv, &e.user);
        if on {
            self.local
                .entry(e.conv.clone())
                .or_default()
                .insert(e.user.clone(), e.clone());
        } else if let Some(users) = self.local.get_mut(&e.conv) {
            users.remove(&e.user);
            if users.is_empty() {
                self.local.remove(&e.conv);
            }
        }
        self.v += 1;
        let msg = DirMsg::Delta {
            node: self.node.clone(),
            inc: self.inc,
            v: self.v,
            conv: e.conv,
            room_id: e.room_id,
            user: e.user,
            name: e.name,
            on,
        };
        (msg, !elsewhere)
    }

    /// This node's whole directory.
    pub fn full(&self) -> DirMsg {
        DirMsg::Full {
            node: self.node.clone(),
            inc: self.inc,
            v: self.v,
            entries: self
                .local
                .values()
                .flat_map(|u| u.values().cloned())
                .collect(),
        }
    }

    pub fn beat(&self) -> DirMsg {
        DirMsg::Beat {
            node: self.node.clone(),
            inc: self.inc,
            v: self.v,
        }
    }

    pub fn dump_request(&self) -> DirMsg {
        DirMsg::Dump {
            node: self.node.clone(),
        }
    }

    /// A message from the bus.
    pub fn apply(&mut self, msg: DirMsg, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        match msg {
            DirMsg::Dump { node } => out.send_full = node != self.node,
            DirMsg::Beat { node, inc, v } => {
                if node == self.node {
                    return out;
                }
                match self.remote.get_mut(&node) {
                    Some(r) if r.inc == inc => {
                        r.last_seen = now;
                        out.dump = v != r.v;
                    }
                    Some(r) if r.inc > inc => {}
                    // Unknown, or restarted: its old view is void.
                    _ => {
                        self.drop_node(&node, &mut out.changes);
                        out.dump = true;
                    }
                }
            }
            DirMsg::Full {
                node,
                inc,
                v,
                entries,
            } => {
                if node == self.node || self.remote.get(&node).is_some_and(|r| r.inc > inc) {
                    return out;
                }
                let old = match self.remote.remove(&node) {
                    Some(r) if r.inc == inc => r.entries().cloned().collect::<Vec<_>>(),
                    Some(r) => {
                        self.remote.insert(node.clone(), r);
                        self.drop_node(&node, &mut out.changes);
                        Vec::new()
                    }
                    None => Vec::new(),
                };
                let mut r = Remote {
                    inc,
                    v,
                    last_seen: now,
                    online: HashMap::new(),
                };
                let new: HashSet<&Entry> = entries.iter().collect();
                let old_keys: HashSet<(&str, &str)> = old
                    .iter()
                    .map(|e| (e.conv.as_str(), e.user.as_str()))
                    .collect();
                for e in &entries {
                    if !old_keys.contains(&(e.conv.as_str(), e.user.as_str()))
                        && !self.online_except(&e.conv, &e.user, &node)
                    {
                        out.changes.push(Change::Joined(e.clone()));
                    }
                    r.insert(e.clone());
                }
                let new_keys: HashSet<(&str, &str)> = new
                    .iter()
                    .map(|e| (e.conv.as_str(), e.user.as_str()))
                    .collect();
                for e in old {
                    if !new_keys.contains(&(e.conv.as_str(), e.user.as_str()))
                        && !self.online_except(&e.conv, &e.user, &node)
                    {
                        out.changes.push(Change::Left(e));
                    }
                }
                self.remote.insert(node, r);
            }
            DirMsg::Delta {
                node,
                inc,
                v,
                conv,
                room_id,
                user,
                name,
                on,
            } => {
                if node == self.node {
                    return out;
                }
                match self.remote.get(&node) {
                    Some(r) if r.inc > inc => return out,
                    Some(r) if r.inc == inc => out.dump = v != r.v + 1,
                    _ => {
                        self.drop_node(&node, &mut out.changes);
                        out.dump = v != 1;
                    }
                }
                let elsewhere = self.online_except(&conv, &user, &node);
                let r = self.remote.entry(node).or_insert_with(|| Remote {
                    inc,
                    v: 0,
                    last_seen: now,
                    online: HashMap::new(),
                });
                r.inc = inc;
                r.v = r.v.max(v);
                r.last_seen = now;
                let e = Entry {
                    conv,
                    room_id,
                    user,
                    name,
                };
                if on {
                    let had = r.has(&e.conv, &e.user);
                    r.insert(e.clone());
                    if !had && !elsewhere {
                        out.changes.push(Change::Joined(e));
                    }
                } else if r.remove(&e.conv, &e.user).is_some() && !elsewhere {
                    out.changes.push(Change::Left(e));
                }
            }
        }
        out
    }

    /// Nodes silent for longer than `after`: their view is dropped (`left` where the
    /// union empties).
    pub fn expire(&mut self, now: Instant, after: Duration) -> Vec<Change> {
        let dead: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, r)| now.duration_since(r.last_seen) > after)
            .map(|(n, _)| n.clone())
            .collect();
        let mut changes = Vec::new();
        for n in dead {
            log::warn!("cluster: node {n} missed its heartbeats; its presence is dropped");
            self.drop_node(&n, &mut changes);
        }
        changes
    }

    fn drop_node(&mut self, node: &str, changes: &mut Vec<Change>) {
        let Some(r) = self.remote.remove(node) else {
            return;
        };
        for e in r.online.into_values().flat_map(|u| u.into_values()) {
            if !self.online_except(&e.conv, &e.user, node) {
                changes.push(Change::Left(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(user: &str) -> Entry {
        Entry {
            conv: "c".into(),
            room_id: "r".into(),
            user: user.into(),
            name: user.to_uppercase(),
        }
    }

    fn delta(node: &str, inc: i64, v: u64, user: &str, on: bool) -> DirMsg {
        DirMsg::Delta {
            node: node.into(),
            inc,
            v,
            conv: "c".into(),
            room_id: "r".into(),
            user: user.into(),
            name: user.to_uppercase(),
            on,
        }
    }

    #[test]
    fn one_joined_and_one_left_per_user_across_nodes() {
        let t = Instant::now();
        let mut a = Directory::new("a", 1);
        // ann's first tab on A: the union changed.
        let (msg, changed) = a.local_change(e("ann"), true);
        assert!(changed);
        assert!(matches!(msg, DirMsg::Delta { v: 1, on: true, .. }));
        // ann also on B: no second `joined` on A.
        let out = a.apply(delta("b", 1, 1, "ann", true), t);
        assert!(out.changes.is_empty() && !out.dump);
        // her tab on A goes: still online on B, so no `left`.
        assert!(!a.local_change(e("ann"), false).1);
        assert_eq!(a.remote_list("c"), vec![("ann".into(), "ANN".into())]);
        assert_eq!(a.remote_count("c"), 1);
        // and gone from B: now `left`.
        let out = a.apply(delta("b", 1, 2, "ann", false), t);
        assert_eq!(out.changes, vec![Change::Left(e("ann"))]);
        // bob only on B: `joined` on A.
        let out = a.apply(delta("b", 1, 3, "bob", true), t);
        assert_eq!(out.changes, vec![Change::Joined(e("bob"))]);
    }

    #[test]
    fn a_missed_delta_asks_for_a_full_copy_which_settles_the_difference() {
        let t = Instant::now();
        let mut a = Directory::new("a", 1);
        a.apply(delta("b", 1, 1, "ann", true), t);
        // v 2 was lost (bob joined); v 3 arrives.
        let out = a.apply(delta("b", 1, 3, "cid", true), t);
        assert!(out.dump);
        let full = DirMsg::Full {
            node: "b".into(),
            inc: 1,
            v: 3,
            entries: vec![e("ann"), e("bob"), e("cid")],
        };
        let out = a.apply(full, t);
        assert_eq!(out.changes, vec![Change::Joined(e("bob"))]);
        assert!(
            !a.apply(
                DirMsg::Beat {
                    node: "b".into(),
                    inc: 1,
                    v: 3
                },
                t
            )
            .dump
        );
        assert!(
            a.apply(
                DirMsg::Beat {
                    node: "b".into(),
                    inc: 1,
                    v: 4
                },
                t
            )
            .dump
        );
    }

    #[test]
    fn a_silent_or_restarted_node_leaves_no_ghosts() {
        let t = Instant::now();
        let mut a = Directory::new("a", 1);
        a.local_change(e("own"), true);
        a.apply(delta("b", 1, 1, "ann", true), t);
        a.apply(delta("b", 1, 2, "own", true), t);
        assert!(a
            .expire(t + Duration::from_millis(500), Duration::from_secs(3))
            .is_empty());
        // B is silent: ann leaves; `own` is still here on A.
        let gone = a.expire(t + Duration::from_secs(4), Duration::from_secs(3));
        assert_eq!(gone, vec![Change::Left(e("ann"))]);
        assert!(!a.remote_online("c", "ann"));
        // B restarted (incarnation 2) with nobody: a beat voids what remained.
        a.apply(delta("b", 1, 3, "zed", true), t);
        let out = a.apply(
            DirMsg::Beat {
                node: "b".into(),
                inc: 2,
                v: 0,
            },
            t,
        );
        assert_eq!(out.changes, vec![Change::Left(e("zed"))]);
        assert!(out.dump);
        // A message of the old incarnation is ignored now.
        a.apply(
            DirMsg::Full {
                node: "b".into(),
                inc: 2,
                v: 0,
                entries: vec![],
            },
            t,
        );
        assert!(a.apply(delta("b", 1, 9, "old", true), t).changes.is_empty());
        assert!(!a.remote_online("c", "old"));
    }
}
