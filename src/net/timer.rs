//! Per-shard timers: a min-heap of `(deadline, slot, generation)`, and [`Tick`], the
//! 8-byte time every connection keeps its deadlines in.
//!
//! A connection keeps one armed deadline (the earliest of its head, auth, heartbeat, pong,
//! token-expiry and typing deadlines). Re-arming pushes a new entry; an entry whose
//! connection is gone, whose generation is stale, or whose deadline is no longer the armed
//! one is skipped when popped (lazy deletion), so nothing ever scans every connection.
//! The shard's poll timeout is the time to the earliest entry.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU64;
use std::ops::{Add, AddAssign};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A point in time to the millisecond in 8 bytes, `Option<Tick>` too (an `Instant` and an
/// `Option<Instant>` are 16 each): a connection keeps nine deadlines and timestamps, and
/// every byte of a connection is paid once per connection held. Milliseconds since the
/// process's first `Tick::now()`, plus one (never zero). A deadline made with `+` is
/// rounded up, so it is never early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(NonZeroU64);

static EPOCH: OnceLock<Instant> = OnceLock::new();

impl Tick {
    pub fn now() -> Tick {
        let epoch = *EPOCH.get_or_init(Instant::now);
        Tick::from_ms(Instant::now().saturating_duration_since(epoch).as_millis() as u64)
    }

    fn from_ms(ms: u64) -> Tick {
        Tick(NonZeroU64::new(ms.saturating_add(1)).unwrap_or(NonZeroU64::MAX))
    }

    fn ms(self) -> u64 {
        self.0.get() - 1
    }

    /// The time from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Tick) -> Duration {
        Duration::from_millis(self.ms().saturating_sub(earlier.ms()))
    }
}

impl Add<Duration> for Tick {
    type Output = Tick;
    fn add(self, d: Duration) -> Tick {
        let ms = d.as_nanos().div_ceil(1_000_000).min(u64::MAX as u128) as u64;
        Tick::from_ms(self.ms().saturating_add(ms))
    }
}

impl AddAssign<Duration> for Tick {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerEntry {
    pub at: Tick,
    pub slot: usize,
    pub gen: u32,
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<TimerEntry>>,
}

impl Timers {
    pub fn arm(&mut self, at: Tick, slot: usize, gen: u32) {
        self.heap.push(Reverse(TimerEntry { at, slot, gen }));
    }

    /// Time until the next entry, or `None` when there is none.
    pub fn timeout(&self, now: Tick) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse(e)| e.at.saturating_duration_since(now))
    }

    /// Pop one entry that is due at `now`.
    pub fn pop_due(&mut self, now: Tick) -> Option<TimerEntry> {
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
        let now = Tick::now();
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

    #[test]
    fn a_tick_is_eight_bytes_and_rounds_deadlines_up() {
        assert_eq!(std::mem::size_of::<Option<Tick>>(), 8);
        let t = Tick::now();
        assert_eq!(
            (t + Duration::from_micros(1)).saturating_duration_since(t),
            Duration::from_millis(1)
        );
        assert_eq!(
            (t + Duration::from_millis(5)).saturating_duration_since(t),
            Duration::from_millis(5)
        );
        assert_eq!(
            t.saturating_duration_since(t + Duration::from_secs(1)),
            Duration::ZERO
        );
        assert!(t + Duration::ZERO == t && t < t + Duration::from_millis(1));
        let mut u = t;
        u += Duration::from_secs(2);
        assert_eq!(u.saturating_duration_since(t), Duration::from_secs(2));
        assert!(Tick::now() >= t);
    }
}
