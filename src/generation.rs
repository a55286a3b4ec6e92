//! Generations in flight: what `stop` cancels and what a mid-stream `subscribe` snapshots.
//!
//! The worker streaming a reply appends each delta to `state.content` under `state`'s
//! lock, then publishes the `token` event with the lock released (a publish may wait on a
//! full shard inbox; a replay must never wait behind it). A resuming subscriber registers
//! for live events first and then takes a snapshot under the same lock, so each token is
//! either in the snapshot (index < `tokens`) or not; its live event reaches the
//! subscriber either before the replay (buffered, then filtered) or after it (the live
//! subscription remembers `tokens` per streaming reply), and both paths drop the tokens
//! the snapshot holds (`subscription.rs`) — no gap, no duplicate.
//! A generation stays registered until its final state is committed and `complete` sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Debug, Default)]
pub struct GenState {
    pub content: String,
    /// Number of token deltas in `content`.
    pub tokens: u64,
}

#[derive(Debug)]
pub struct Generation {
    pub conversation_id: Arc<str>,
    pub message_id: i64,
    pub seq: i64,
    /// The user whose message started it (they, or an admin, may stop it).
    pub user_id: String,
    pub cancel: AtomicBool,
    pub state: Mutex<GenState>,
}

impl Generation {
    pub fn new(
        conversation_id: Arc<str>,
        message_id: i64,
        seq: i64,
        user_id: String,
    ) -> Arc<Generation> {
        Arc::new(Generation {
            conversation_id,
            message_id,
            seq,
            user_id,
            cancel: AtomicBool::new(false),
            state: Mutex::new(GenState::default()),
        })
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<Arc<str>, Vec<Arc<Generation>>>>,
}

impl Registry {
    pub fn insert(&self, g: Arc<Generation>) {
        self.map
            .lock()
            .entry(g.conversation_id.clone())
            .or_default()
            .push(g);
    }

    pub fn remove(&self, conv: &str, message_id: i64) {
        let mut map = self.map.lock();
        if let Some(v) = map.get_mut(conv) {
            v.retain(|g| g.message_id != message_id);
            if v.is_empty() {
                map.remove(conv);
            }
        }
    }

    pub fn in_conversation(&self, conv: &str) -> Vec<Arc<Generation>> {
        self.map.lock().get(conv).cloned().unwrap_or_default()
    }

    /// Cancel the generations of `conv` that `user` may stop. Returns how many.
    pub fn cancel(&self, conv: &str, user: &str, admin: bool) -> usize {
        let map = self.map.lock();
        let mut n = 0;
        for g in map.get(conv).into_iter().flatten() {
            if admin || g.user_id == user {
                g.cancel.store(true, Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }

    pub fn all(&self) -> Vec<Arc<Generation>> {
        self.map.lock().values().flatten().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.map.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
