//! A Prometheus histogram in seconds: fixed buckets, lock-free (relaxed atomics: these
//! are statistics), rendered with `_bucket{le}`, `_sum` and `_count`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds, seconds: from sub-millisecond store commits to minute-long replies.
pub const BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 120.0,
];

pub struct Histogram {
    /// Per bucket (not cumulative), the last one for +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Default::default(),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines of `name` with `labels` (`k="v",…` or
    /// empty). The family's HELP and TYPE lines are the caller's.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0u64;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cum}", braces(labels));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sum_is_in_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(800));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(500));
        let mut s = String::new();
        h.render(&mut s, "x_seconds", "a=\"b\"");
        assert!(
            s.contains("x_seconds_bucket{a=\"b\",le=\"0.001\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{a=\"b\",le=\"0.025\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{a=\"b\",le=\"120\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("x_seconds_bucket{a=\"b\",le=\"+Inf\"} 3\n"),
            "{s}"
        );
        assert!(s.contains("x_seconds_count{a=\"b\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_sum{a=\"b\"} 500.0208"), "{s}");
    }
}
