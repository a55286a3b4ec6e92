//! A conversation's `message_added` events in `seq` order on this node, whichever node
//! wrote them: the core invariant of docs/cluster.md.
//!
//! Per conversation the node keeps `hwm`, the highest `seq` it delivered. An event at
//! `hwm + 1` is delivered (with any held successors); one at or below is a duplicate;
//! one above waits up to the reorder hold for the missing ones (events from two nodes
//! can cross on the bus). A gap still open after the hold is read from PostgreSQL, where
//! it is certain to be (a committed `seq` means every lower one is committed), and
//! delivered before what was held. The bus may lose events; this is how nothing is
//! lost for good.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::topic::TopicEvent;

/// Events held for one conversation at most; past it the gap is repaired at once.
const MAX_HELD: usize = 10_000;

struct Conv {
    hwm: i64,
    held: BTreeMap<i64, TopicEvent>,
    /// When the oldest open gap was seen (None: no gap).
    gap_since: Option<Instant>,
    /// A read of the gap is under way.
    repairing: bool,
    last_event: Instant,
}

#[derive(Default)]
pub struct Order {
    convs: HashMap<Arc<str>, Conv>,
}

impl Order {
    /// A `message_added` with this `seq`: what to deliver now, in `seq` order.
    pub fn offer(&mut self, ev: TopicEvent, seq: i64, now: Instant) -> Vec<TopicEvent> {
        let c = self
            .convs
            .entry(ev.conversation_id.clone())
            .or_insert_with(|| Conv {
                hwm: seq - 1,
                held: BTreeMap::new(),
                gap_since: None,
                repairing: false,
                last_event: now,
            });
        c.last_event = now;
        let mut out = Vec::new();
        if seq <= c.hwm {
            return out;
        }
        if seq == c.hwm + 1 {
            c.hwm = seq;
            out.push(ev);
            c.drain(&mut out);
        } else {
            c.held.insert(seq, ev);
            c.gap_since.get_or_insert(now);
            if c.held.len() > MAX_HELD {
                c.gap_since = Some(now - Duration::from_secs(3600));
            }
        }
        out
    }

    /// A subscriber on this node caught up to `last_seq` (its replay): follow `conv` from
    /// there if it is not followed yet. Without this the first event seen would set the
    /// baseline, and an older one still on the bus (written on another node just before)
    /// would then be dropped as a duplicate.
    /// An entry left from before (its events went unordered while nobody here followed
    /// it) moves up to `last_seq` when nothing is held.
    pub fn track(&mut self, conv: &Arc<str>, last_seq: i64, now: Instant) {
        let c = self.convs.entry(conv.clone()).or_insert_with(|| Conv {
            hwm: last_seq,
            held: BTreeMap::new(),
            gap_since: None,
            repairing: false,
            last_event: now,
        });
        if c.held.is_empty() && c.hwm < last_seq {
            c.hwm = last_seq;
        }
    }

    /// Open gaps older than `hold` that no read is repairing yet: `(conversation, hwm)`
    /// — the rows after `hwm` are to be read. Marked as being repaired.
    pub fn overdue(&mut self, now: Instant, hold: Duration) -> Vec<(Arc<str>, i64)> {
        let mut out = Vec::new();
        for (k, c) in self.convs.iter_mut() {
            if !c.repairing && c.gap_since.is_some_and(|t| now.duration_since(t) >= hold) {
                c.repairing = true;
                out.push((k.clone(), c.hwm));
            }
        }
        out
    }

    /// Rows read after a gap (or a resync), as `(seq, event)`: those past `hwm` are
    /// delivered in order, then whatever was held. A gap the database cannot fill (its
    /// rows are gone: a deleted conversation) is not waited on again.
    pub fn repaired(&mut self, conv: &str, mut rows: Vec<(i64, TopicEvent)>) -> Vec<TopicEvent> {
        let Some(c) = self.convs.get_mut(conv) else {
            return Vec::new();
        };
        c.repairing = false;
        rows.sort_by_key(|(s, _)| *s);
        let mut out = Vec::new();
        for (seq, ev) in rows {
            if seq > c.hwm {
                c.hwm = seq;
                // The held copy, when there is one, knows which connection sent it (and
                // so is not echoed to the sender); the row does not.
                out.push(c.held.remove(&seq).unwrap_or(ev));
            }
        }
        c.drain(&mut out);
        // Still a gap below what is held: the store has nothing for it; go on.
        while let Some((seq, ev)) = c.held.pop_first() {
            if seq > c.hwm {
                c.hwm = seq;
                out.push(ev);
            }
        }
        c.gap_since = None;
        out
    }

    /// A repair read failed: try again after the next hold.
    pub fn repair_failed(&mut self, conv: &str, now: Instant) {
        if let Some(c) = self.convs.get_mut(conv) {
            c.repairing = false;
            if !c.held.is_empty() {
                c.gap_since = Some(now);
            }
        }
    }

    /// Every tracked conversation and its `hwm` (a resync reads what came after).
    pub fn tracked(&self) -> Vec<(Arc<str>, i64)> {
        self.convs.iter().map(|(k, c)| (k.clone(), c.hwm)).collect()
    }

    /// Forget conversations with no event for `idle`, no gap and no subscriber here
    /// (memory stays bounded by the conversations followed lately).
    pub fn sweep(&mut self, now: Instant, idle: Duration, followed: impl Fn(&str) -> bool) {
        self.convs.retain(|k, c| {
            c.gap_since.is_some() || now.duration_since(c.last_event) < idle || followed(k)
        });
    }

    pub fn len(&self) -> usize {
        self.convs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.convs.is_empty()
    }
}

impl Conv {
    /// Deliver held events that now follow `hwm` without a gap.
    fn drain(&mut self, out: &mut Vec<TopicEvent>) {
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq <= self.hwm {
                entry.remove();
            } else if seq == self.hwm + 1 {
                out.push(entry.remove());
                self.hwm = seq;
            } else {
                break;
            }
        }
        if self.held.is_empty() {
            self.gap_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;
    use crate::topic::{topic_event, TopicKind};

    fn added(seq: i64) -> TopicEvent {
        topic_event(
            &Arc::from("c"),
            TopicKind::Added { seq },
            Event::ConversationDeleted {
                conversation_id: format!("{seq}"),
            },
        )
    }

    fn seqs(v: &[TopicEvent]) -> Vec<i64> {
        v.iter()
            .map(|e| match e.kind {
                TopicKind::Added { seq } => seq,
                _ => -1,
            })
            .collect()
    }

    #[test]
    fn in_order_duplicates_dropped_and_a_crossing_is_reordered() {
        let t = Instant::now();
        let mut o = Order::default();
        assert_eq!(seqs(&o.offer(added(5), 5, t)), [5]);
        assert_eq!(seqs(&o.offer(added(5), 5, t)), Vec::<i64>::new());
        // 7 overtook 6 on the bus: held, then both in order.
        assert!(o.offer(added(7), 7, t).is_empty());
        assert!(o.overdue(t, Duration::from_millis(50)).is_empty());
        assert_eq!(seqs(&o.offer(added(6), 6, t)), [6, 7]);
        assert!(o
            .overdue(t + Duration::from_secs(1), Duration::from_millis(50))
            .is_empty());
    }

    #[test]
    fn a_lost_event_is_read_from_the_store_after_the_hold() {
        let t = Instant::now();
        let hold = Duration::from_millis(50);
        let mut o = Order::default();
        o.offer(added(1), 1, t);
        assert!(o.offer(added(4), 4, t).is_empty());
        assert!(o.offer(added(5), 5, t).is_empty());
        assert!(o.overdue(t + Duration::from_millis(10), hold).is_empty());
        let due = o.overdue(t + hold, hold);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, 1);
        // Asked once while the read runs.
        assert!(o.overdue(t + hold * 2, hold).is_empty());
        let out = o.repaired("c", vec![(3, added(3)), (2, added(2)), (4, added(4))]);
        assert_eq!(seqs(&out), [2, 3, 4, 5]);
        assert!(o.offer(added(5), 5, t).is_empty());
        assert_eq!(seqs(&o.offer(added(6), 6, t)), [6]);
    }

    #[test]
    fn idle_conversations_are_forgotten_but_not_with_a_gap() {
        let t = Instant::now();
        let mut o = Order::default();
        o.offer(added(1), 1, t);
        let mut gap = added(9);
        gap.conversation_id = Arc::from("d");
        o.offer(added(1), 1, t);
        let mut first = added(1);
        first.conversation_id = Arc::from("d");
        o.offer(first, 1, t);
        o.offer(gap, 9, t);
        o.sweep(
            t + Duration::from_secs(600),
            Duration::from_secs(300),
            |_| false,
        );
        assert_eq!(o.len(), 1);
        assert_eq!(o.tracked()[0].0.as_ref(), "d");
    }

    #[test]
    fn a_followed_conversation_starts_from_its_subscriber_not_from_the_first_event() {
        let t = Instant::now();
        let mut o = Order::default();
        o.track(&Arc::from("c"), 0, t);
        // This node's own seq 2 arrives before seq 1 from the other node: held, not a
        // new baseline that would drop seq 1.
        assert!(o.offer(added(2), 2, t).is_empty());
        assert_eq!(seqs(&o.offer(added(1), 1, t)), [1, 2]);
        // Tracking again does not move it back.
        o.track(&Arc::from("c"), 0, t);
        assert!(o.offer(added(2), 2, t).is_empty());
        // A stale entry (seq 3..=9 went by unordered) starts from the new replay.
        o.track(&Arc::from("c"), 9, t);
        assert_eq!(seqs(&o.offer(added(10), 10, t)), [10]);
    }
}
