//! The single box's idempotency window, held in memory by the store writer.
//!
//! A `chat` retried with the same client `id` by the same user within
//! `store.idempotency_window_s` is not stored again: the original message is the answer
//! (`duplicate: true`). SQLite has one writer, so that writer can know every message of the
//! window: it keeps `(author, client id) → message id` in a hash map instead of an index
//! on the messages table. The index cost one randomly placed leaf page per message in
//! every COMMIT (client ids are random) — about a third of the WAL bytes the writer wrote,
//! with the lookup a B-tree descent per message (BENCHMARKS.md, *Store write path*).
//!
//! - **Durable as before**: the map is rebuilt at start from the messages themselves
//!   ([`Window::load`]: newest first, by rowid, which is commit order), so a retry after a
//!   restart or a `kill -9` still gets the original.
//! - **Exact**: a hit is only a candidate; the writer reads that row by its id and checks
//!   author, client id and age, so the map's 128-bit keys never decide alone.
//! - **Transactional**: entries become visible the way rows do — a job's when its savepoint
//!   is released, the batch's when it commits; a rolled-back job or batch leaves none.
//! - **Bounded**: ~80 B per message in the window, at most `store.idempotency_max_entries`
//!   messages. Past that the oldest leave before their time (the window is then shorter
//!   than configured; counted in `confab_store_idempotency_evicted_total`).
//!
//! Cluster mode keeps the SQL index and lookup: writers on several nodes share no memory.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use rusqlite::Connection;

/// The map's key: a 128-bit hash of (author, client id), from two independently keyed
/// hashers (random per process; the map is rebuilt at every start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key(u64, u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.0);
    }
}

/// The key is a hash already: the map uses its first half as is.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// One message in the window, in commit order.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at_ms: i64,
    id: i64,
    key: Key,
}

pub struct Window {
    window_ms: i64,
    max: usize,
    seeds: (std::hash::RandomState, std::hash::RandomState),
    map: HashMap<Key, i64, BuildHasherDefault<KeyHasher>>,
    /// Every entry of `map` (and older ones replaced there by a newer message with the
    /// same key), oldest first: what leaves when the window moves on.
    order: VecDeque<Entry>,
    /// Recorded by the running job (gone if its savepoint is rolled back).
    job: Vec<Entry>,
    /// Recorded by the open batch's released jobs (gone if the batch does not commit).
    batch: Vec<Entry>,
    /// Entries that left before the window's end because the map was full.
    pub evicted: u64,
}

impl Window {
    pub fn new(window_ms: i64, max: usize) -> Window {
        Window {
            window_ms,
            max: max.max(1),
            seeds: Default::default(),
            map: HashMap::default(),
            order: VecDeque::new(),
            job: Vec::new(),
            batch: Vec::new(),
            evicted: 0,
        }
    }

    /// The window as of `now_ms`, read back from the messages table: the newest messages
    /// with a client id, until one is older than the window or `max` are held.
    pub fn load(
        conn: &Connection,
        window_ms: i64,
        max: usize,
        now_ms: i64,
    ) -> Result<Window, rusqlite::Error> {
        let mut w = Window::new(window_ms, max);
        let since = now_ms.saturating_sub(window_ms);
        // By rowid, newest first: rowids are handed out in commit order, and the scan stops
        // at the first message older than the window (no index on created_at). Each entry
        // goes in front of the older ones; a key already held keeps its newer message.
        let mut stmt = conn
            .prepare("SELECT id, author, client_id, created_at FROM messages ORDER BY id DESC")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let at: i64 = r.get(3)?;
            if at < since || w.order.len() >= w.max {
                break;
            }
            let cid: Option<String> = r.get(2)?;
            if let Some(cid) = cid {
                let author: String = r.get(1)?;
                let e = Entry {
                    at_ms: at,
                    id: r.get(0)?,
                    key: w.key(&author, &cid),
                };
                w.map.entry(e.key).or_insert(e.id);
                w.order.push_front(e);
            }
        }
        Ok(w)
    }

    fn key(&self, author: &str, client_id: &str) -> Key {
        let half = |s: &std::hash::RandomState| {
            let mut h = s.build_hasher();
            author.hash(&mut h);
            client_id.hash(&mut h);
            h.finish()
        };
        Key(half(&self.seeds.0), half(&self.seeds.1))
    }

    /// The message that may be the original of (author, client id): the newest one with
    /// that key, recorded at or after `now_ms - window`. The caller checks the row.
    pub fn find(&self, author: &str, client_id: &str, now_ms: i64) -> Option<i64> {
        let key = self.key(author, client_id);
        let since = now_ms.saturating_sub(self.window_ms);
        let fresh = |e: &&Entry| e.key == key && e.at_ms >= since;
        if let Some(e) = self.job.iter().rev().find(fresh) {
            return Some(e.id);
        }
        if let Some(e) = self.batch.iter().rev().find(fresh) {
            return Some(e.id);
        }
        let id = *self.map.get(&key)?;
        // The map holds the newest id for the key; its age is in `order`, but an entry
        // past the window is removed by `expire` before it could be found here, except
        // within one batch — the caller's age check on the row settles that.
        Some(id)
    }

    /// A message with a client id was inserted by the running job.
    pub fn record(&mut self, author: &str, client_id: &str, id: i64, at_ms: i64) {
        let key = self.key(author, client_id);
        self.job.push(Entry { at_ms, id, key });
    }

    /// The running job ended: its entries stay only if its savepoint was released.
    pub fn job_done(&mut self, ok: bool) {
        if ok {
            self.batch.append(&mut self.job);
        } else {
            self.job.clear();
        }
    }

    /// The batch's COMMIT ended: only committed messages enter the window. Then the
    /// window moves on to `now_ms`.
    pub fn batch_done(&mut self, committed: bool, now_ms: i64) {
        if committed {
            for e in self.batch.drain(..) {
                self.map.insert(e.key, e.id);
                self.order.push_back(e);
            }
        } else {
            self.batch.clear();
        }
        self.expire(now_ms);
    }

    /// Drop what is older than the window, and the oldest past `max`.
    fn expire(&mut self, now_ms: i64) {
        let since = now_ms.saturating_sub(self.window_ms);
        while let Some(front) = self.order.front().copied() {
            let full = self.order.len() > self.max;
            if front.at_ms >= since && !full {
                break;
            }
            self.order.pop_front();
            if full && front.at_ms >= since {
                self.evicted += 1;
            }
            // A newer message with the same key may have replaced it in the map.
            if self.map.get(&front.key) == Some(&front.id) {
                self.map.remove(&front.key);
            }
        }
    }

    /// Messages in the window now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_sees_its_own_and_the_batch_sees_released_jobs_only() {
        let mut w = Window::new(1_000, 10);
        w.record("u", "c1", 1, 100);
        assert_eq!(w.find("u", "c1", 100), Some(1));
        assert_eq!(
            w.find("v", "c1", 100),
            None,
            "another author's id is another key"
        );
        w.job_done(false);
        assert_eq!(
            w.find("u", "c1", 100),
            None,
            "a rolled-back job leaves nothing"
        );
        w.record("u", "c1", 2, 100);
        w.job_done(true);
        assert_eq!(w.find("u", "c1", 100), Some(2));
        w.batch_done(false, 100);
        assert_eq!(
            w.find("u", "c1", 100),
            None,
            "a batch that did not commit leaves nothing"
        );
        w.record("u", "c1", 3, 100);
        w.job_done(true);
        w.batch_done(true, 100);
        assert_eq!(w.find("u", "c1", 200), Some(3));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn entries_leave_with_the_window_and_past_the_cap() {
        let mut w = Window::new(1_000, 3);
        for (i, at) in [(1, 0), (2, 500), (3, 900)] {
            w.record("u", &format!("c{i}"), i, at);
            w.job_done(true);
        }
        w.batch_done(true, 900);
        assert_eq!(w.len(), 3);
        // At 1,200 the first (at 0) is past the 1 s window.
        w.batch_done(true, 1_200);
        assert_eq!(w.find("u", "c1", 1_200), None);
        assert_eq!(w.find("u", "c2", 1_200), Some(2));
        assert_eq!(w.evicted, 0);
        // Two more: over the cap of 3, the oldest leaves early and is counted.
        w.record("u", "c4", 4, 1_300);
        w.job_done(true);
        w.record("u", "c5", 5, 1_300);
        w.job_done(true);
        w.batch_done(true, 1_300);
        assert_eq!(w.len(), 3);
        assert_eq!(w.evicted, 1);
        assert_eq!(w.find("u", "c2", 1_300), None);
        assert_eq!(w.find("u", "c5", 1_300), Some(5));
    }

    #[test]
    fn a_reused_id_keeps_the_newest_message_when_the_older_one_expires() {
        let mut w = Window::new(1_000, 10);
        w.record("u", "c", 1, 0);
        w.job_done(true);
        w.batch_done(true, 0);
        // Past the window the same client id is a new message…
        w.record("u", "c", 2, 1_500);
        w.job_done(true);
        // …and the old entry's expiry must not remove the new one from the map.
        w.batch_done(true, 1_500);
        assert_eq!(w.find("u", "c", 1_500), Some(2));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn load_reads_the_window_back_newest_first_up_to_the_cap() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, author TEXT, client_id TEXT, created_at INTEGER);
             INSERT INTO messages VALUES (1, 'u', 'old', 0), (2, 'u', 'a', 5000), (3, 'u', NULL, 5100),
                                         (4, 'v', 'b', 5200), (5, 'u', 'c', 5300);",
        )
        .unwrap();
        let w = Window::load(&c, 1_000, 10, 6_000).unwrap();
        assert_eq!(w.len(), 3, "the three with a client id inside the window");
        assert_eq!(w.find("u", "a", 6_000), Some(2));
        assert_eq!(w.find("v", "b", 6_000), Some(4));
        assert_eq!(w.find("u", "old", 6_000), None);
        let w = Window::load(&c, 1_000, 2, 6_000).unwrap();
        assert_eq!(w.len(), 2, "the cap keeps the newest");
        assert_eq!(w.find("u", "a", 6_000), None);
        assert_eq!(w.find("u", "c", 6_000), Some(5));
    }

    #[test]
    fn load_keeps_the_newest_message_of_a_reused_id() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, author TEXT, client_id TEXT, created_at INTEGER);
             INSERT INTO messages VALUES (1, 'u', 'x', 5000), (2, 'u', 'x', 5500);",
        )
        .unwrap();
        let w = Window::load(&c, 1_000, 10, 6_000).unwrap();
        assert_eq!(w.find("u", "x", 6_000), Some(2));
        assert_eq!(w.len(), 2);
    }
}
