//! Per-connection sliding-window rate limit in O(1) memory.
//!
//! The sliding-window counter: the count of the current fixed window plus the previous
//! window's count weighted by how much of it still overlaps the sliding window. It never
//! lets more than `max` through in any window-length interval by more than the rounding
//! of one window edge, and costs 24 bytes per connection (a log of timestamps would cost
//! `max` × 16 bytes — too much at 100k connections).

use std::time::Duration;

use crate::net::timer::Tick;

#[derive(Debug, Clone)]
pub struct RateWindow {
    window_start: Tick,
    prev: u32,
    cur: u32,
}

/// The outcome of one `check`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Allowed,
    /// Refused; try again after this many seconds.
    Limited {
        retry_after_s: f64,
    },
}

impl RateWindow {
    pub fn new(now: Tick) -> RateWindow {
        RateWindow {
            window_start: now,
            prev: 0,
            cur: 0,
        }
    }

    pub fn check(&mut self, now: Tick, window: Duration, max: u32) -> Verdict {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= window {
            let windows = (elapsed.as_nanos() / window.as_nanos().max(1)) as u32;
            self.prev = if windows == 1 { self.cur } else { 0 };
            self.cur = 0;
            self.window_start += window * windows;
        }
        let into = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64()
            / window.as_secs_f64();
        let weighted = self.prev as f64 * (1.0 - into) + self.cur as f64;
        if weighted + 1.0 <= max as f64 {
            self.cur += 1;
            Verdict::Allowed
        } else {
            // Time until enough of the previous window has slid out, or the current window
            // ends, whichever frees a slot first.
            let need = weighted + 1.0 - max as f64;
            let retry = if self.prev > 0 {
                (need / self.prev as f64) * window.as_secs_f64()
            } else {
                (1.0 - into) * window.as_secs_f64()
            };
            let to_end = (1.0 - into) * window.as_secs_f64();
            Verdict::Limited {
                retry_after_s: (retry.min(to_end).max(0.001) * 1000.0).ceil() / 1000.0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_max_per_window_then_limits_with_a_retry_hint() {
        let now = Tick::now();
        let w = Duration::from_secs(1);
        let mut r = RateWindow::new(now);
        for _ in 0..5 {
            assert_eq!(r.check(now, w, 5), Verdict::Allowed);
        }
        match r.check(now, w, 5) {
            Verdict::Limited { retry_after_s } => {
                assert!(retry_after_s > 0.0 && retry_after_s <= 1.0)
            }
            v => panic!("{v:?}"),
        }
        // Half a window later the previous burst still counts for half: 2 more fit.
        let later = now + Duration::from_millis(1500);
        assert_eq!(r.check(later, w, 5), Verdict::Allowed);
        assert_eq!(r.check(later, w, 5), Verdict::Allowed);
        assert!(matches!(r.check(later, w, 5), Verdict::Limited { .. }));
        // After two quiet windows everything is forgotten.
        let much_later = now + Duration::from_secs(4);
        for _ in 0..5 {
            assert_eq!(r.check(much_later, w, 5), Verdict::Allowed);
        }
    }
}
