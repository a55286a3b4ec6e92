//! Per-shard timers: a min-heap of `(deadline, slot, generation)`.
//!
//! A connection keeps one armed deadline (the earliest of its head, auth, heartbeat, pong,
//! token-expiry and typing deadlines). Re-arming pushes a new entry; an entry whose
//! connection is gone, whose generation is stale, or whose deadline is no longer the armed
//! one is skipped when popped (lazy deletion), so nothing ever scans every connection.
//! The shard's poll timeout is the time to the earliest entry.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerEntry {
    pub at: Instant,
    pub slot: usize,
    pub gen: u32,
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<TimerEntry>>,
}

impl Timers {
    pub fn arm(&mut self, at: Instant, slot: usize, gen: u32) {
        self.heap.push(Reverse(TimerEntry { at, slot, gen }));
    }

    /// Time until the next entry, or `None` when there is none.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse(e)| e.at.saturating_duration_since(now))
    }

    /// Pop one entry that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<TimerEntry> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_out_in_deadline_order_and_only_when_due() {
        let mut t = Timers::default();
        let now = Instant::now();
        t.arm(now + Duration::from_millis(30), 1, 0);
        t.arm(now + Duration::from_millis(10), 2, 0);
        t.arm(now + Duration::from_millis(20), 3, 7);
        assert!(t.pop_due(now).is_none());
        assert_eq!(t.timeout(now), Some(Duration::from_millis(10)));
        let later = now + Duration::from_millis(25);
        assert_eq!(t.pop_due(later).map(|e| e.slot), Some(2));
        assert_eq!(t.pop_due(later).map(|e| (e.slot, e.gen)), Some((3, 7)));
        assert!(t.pop_due(later).is_none());
        assert_eq!(t.len(), 1);
    }
}
