//! The rules of one connection's subscription to one conversation, in one type.
//!
//! A subscription starts **pending**: the connection is registered for live events
//! *before* the store is asked (so no event can slip between the store's answer and the
//! registration), and what arrives meanwhile is buffered. Then either
//! - the store **confirms** access (a `chat` was committed): the buffer is delivered and
//!   the subscription goes live; or
//! - a **replay** was read: the rows are delivered by the caller, and the buffer only for
//!   what the replay did not already show (by `seq`, token index, final state); or
//! - the store **refuses**: the subscription is dropped with its buffer, so a non-member
//!   never sees anything.
//!
//! A **live** subscription still filters: the writer publishes after COMMIT, and a
//! generation worker publishes a token after appending it to the snapshot state, so a
//! replay can show something whose live event is still on its way. It remembers the
//! highest `seq` it delivered (`message_added` arrives in `seq` order: one writer
//! publishes in commit order), the replies a replay showed as final, and how many tokens
//! of each streaming reply the replay showed, and drops late copies of those.

use std::collections::HashMap;
use std::sync::Arc;

use crate::topic::{TopicEvent, TopicKind};

/// Live events one pending subscription may buffer: a replay that never finishes must not
/// grow memory without bound (the connection is closed 1013 instead).
pub const MAX_BUFFERED: usize = 100_000;

/// What to do with one live event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// Already delivered, or covered by a replay.
    Skip,
    /// Kept until the subscription is confirmed or replayed.
    Buffered,
    /// The pending buffer is full.
    Overflow,
}

/// What a replay showed of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Its final state: later token/update/complete events for it are late copies.
    Final,
    /// Streaming, with this many tokens included in the content shown.
    Streaming { tokens: u64 },
}

/// What a replay delivered, as the subscription needs it.
#[derive(Debug, Default)]
pub struct ReplayCover {
    /// The conversation's `last_seq` when the rows were read.
    pub last_seq: i64,
    /// The highest `seq` the client now has (rows included).
    pub delivered_seq: i64,
    pub held: HashMap<i64, Held>,
    /// Replies shown final that ended recently (their live events may still be in flight).
    pub recent_finals: Vec<i64>,
}

pub enum Subscription {
    Pending {
        buffered: Vec<Arc<TopicEvent>>,
    },
    Live {
        last_seq: i64,
        finals: Vec<i64>,
        /// Streaming replies the replay showed: (message id, tokens it included). An
        /// entry goes when its reply completes, so this stays tiny.
        streaming: Vec<(i64, u64)>,
    },
}

impl Subscription {
    pub fn pending() -> Subscription {
        Subscription::Pending {
            buffered: Vec::new(),
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self, Subscription::Live { .. })
    }

    pub fn is_pending(&self) -> bool {
        matches!(self, Subscription::Pending { .. })
    }

    /// A live event for this conversation arrived.
    pub fn on_live(&mut self, ev: &Arc<TopicEvent>) -> Verdict {
        match self {
            Subscription::Pending { buffered } => {
                if buffered.len() >= MAX_BUFFERED {
                    Verdict::Overflow
                } else {
                    buffered.push(ev.clone());
                    Verdict::Buffered
                }
            }
            Subscription::Live {
                last_seq,
                finals,
                streaming,
            } => match &ev.kind {
                TopicKind::Added { seq } if *seq <= *last_seq => Verdict::Skip,
                TopicKind::Added { seq } => {
                    *last_seq = *seq;
                    Verdict::Deliver
                }
                TopicKind::Token { message_id, .. }
                | TopicKind::Updated { message_id }
                | TopicKind::Complete { message_id }
                    if finals.contains(message_id) =>
                {
                    Verdict::Skip
                }
                TopicKind::Token {
                    message_id, index, ..
                } if streaming
                    .iter()
                    .any(|(m, held)| m == message_id && index < held) =>
                {
                    Verdict::Skip
                }
                TopicKind::Complete { message_id } => {
                    streaming.retain(|(m, _)| m != message_id);
                    Verdict::Deliver
                }
                _ => Verdict::Deliver,
            },
        }
    }

    /// The store confirmed access without a replay: go live and return the buffered
    /// events to deliver, in arrival order. Already live: nothing.
    pub fn confirm(&mut self) -> Vec<Arc<TopicEvent>> {
        let Subscription::Pending { buffered } = self else {
            return Vec::new();
        };
        let buffered = std::mem::take(buffered);
        *self = Subscription::Live {
            last_seq: 0,
            finals: Vec::new(),
            streaming: Vec::new(),
        };
        buffered
            .into_iter()
            .filter(|ev| self.on_live(ev) == Verdict::Deliver)
            .collect()
    }

    /// A replay was delivered: go live after it and return the buffered events it did not
    /// cover, in arrival order.
    pub fn replayed(&mut self, cover: ReplayCover) -> Vec<Arc<TopicEvent>> {
        let buffered = match std::mem::replace(self, Subscription::pending()) {
            Subscription::Pending { buffered } => buffered,
            Subscription::Live { .. } => Vec::new(),
        };
        let mut last_seq = cover.delivered_seq;
        let out = buffered
            .into_iter()
            .filter(|ev| {
                let deliver = match &ev.kind {
                    TopicKind::Added { seq } => *seq > cover.last_seq,
                    TopicKind::Token {
                        message_id, index, ..
                    } => match cover.held.get(message_id) {
                        Some(Held::Final) => false,
                        Some(Held::Streaming { tokens }) => *index >= *tokens,
                        None => true,
                    },
                    TopicKind::Updated { message_id } | TopicKind::Complete { message_id } => {
                        !matches!(cover.held.get(message_id), Some(Held::Final))
                    }
                    TopicKind::Ephemeral | TopicKind::RoomClosed { .. } | TopicKind::Deleted => {
                        true
                    }
                };
                if let (true, TopicKind::Added { seq }) = (deliver, &ev.kind) {
                    last_seq = last_seq.max(*seq);
                }
                deliver
            })
            .collect();
        let streaming = cover
            .held
            .iter()
            .filter_map(|(m, h)| match h {
                Held::Streaming { tokens } => Some((*m, *tokens)),
                Held::Final => None,
            })
            .collect();
        *self = Subscription::Live {
            last_seq,
            finals: cover.recent_finals,
            streaming,
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;

    fn ev(kind: TopicKind) -> Arc<TopicEvent> {
        let e = Event::Heartbeat {
            server_time: "t".into(),
        };
        Arc::new(crate::topic::topic_event(&Arc::from("c"), kind, e))
    }

    fn added(seq: i64) -> Arc<TopicEvent> {
        ev(TopicKind::Added { seq })
    }

    fn token(message_id: i64, index: u64) -> Arc<TopicEvent> {
        ev(TopicKind::Token {
            message_id,
            index,
            text: Arc::from("x"),
        })
    }

    fn kinds(evs: &[Arc<TopicEvent>]) -> Vec<String> {
        evs.iter()
            .map(|e| match &e.kind {
                TopicKind::Added { seq } => format!("added {seq}"),
                TopicKind::Token {
                    message_id, index, ..
                } => format!("token {message_id}#{index}"),
                TopicKind::Updated { message_id } => format!("updated {message_id}"),
                TopicKind::Complete { message_id } => format!("complete {message_id}"),
                TopicKind::Ephemeral => "ephemeral".into(),
                TopicKind::RoomClosed { .. } => "closed".into(),
                TopicKind::Deleted => "deleted".into(),
            })
            .collect()
    }

    #[test]
    fn pending_buffers_and_confirm_delivers_in_order() {
        let mut s = Subscription::pending();
        assert_eq!(s.on_live(&added(1)), Verdict::Buffered);
        assert_eq!(s.on_live(&token(9, 0)), Verdict::Buffered);
        assert_eq!(s.on_live(&added(2)), Verdict::Buffered);
        assert_eq!(kinds(&s.confirm()), ["added 1", "token 9#0", "added 2"]);
        assert!(s.is_live());
        // Live now, and it remembers what it delivered.
        assert_eq!(s.on_live(&added(2)), Verdict::Skip);
        assert_eq!(s.on_live(&added(3)), Verdict::Deliver);
        assert!(
            s.confirm().is_empty(),
            "confirming a live subscription is a no-op"
        );
    }

    #[test]
    fn a_replay_delivers_only_what_it_did_not_cover() {
        let mut s = Subscription::pending();
        // Events that arrived while the replay was being read.
        for e in [
            added(4),                                  // covered: the rows went to seq 5
            token(7, 2),                               // covered: the snapshot held 3 tokens of 7
            token(7, 3),                               // new
            ev(TopicKind::Complete { message_id: 8 }), // 8 was final in the replay
            added(6),                                  // new
            ev(TopicKind::Ephemeral),
        ] {
            assert_eq!(s.on_live(&e), Verdict::Buffered);
        }
        let cover = ReplayCover {
            last_seq: 5,
            delivered_seq: 5,
            held: HashMap::from([(7, Held::Streaming { tokens: 3 }), (8, Held::Final)]),
            recent_finals: vec![8],
        };
        assert_eq!(
            kinds(&s.replayed(cover)),
            ["token 7#3", "added 6", "ephemeral"]
        );
        // Late live copies are dropped: seq 6 was delivered, 8 was final.
        assert_eq!(s.on_live(&added(6)), Verdict::Skip);
        assert_eq!(s.on_live(&token(8, 40)), Verdict::Skip);
        assert_eq!(
            s.on_live(&ev(TopicKind::Updated { message_id: 8 })),
            Verdict::Skip
        );
        assert_eq!(s.on_live(&added(7)), Verdict::Deliver);
        assert_eq!(s.on_live(&token(7, 4)), Verdict::Deliver);
    }

    #[test]
    fn a_token_the_snapshot_held_is_dropped_even_when_it_arrives_after_the_replay() {
        // The worker appends a token to the snapshot state, then publishes it without
        // holding the lock, so the replay can overtake the token's live event.
        let mut s = Subscription::pending();
        let cover = ReplayCover {
            last_seq: 3,
            delivered_seq: 3,
            held: HashMap::from([(7, Held::Streaming { tokens: 5 })]),
            recent_finals: vec![],
        };
        assert!(s.replayed(cover).is_empty());
        assert_eq!(s.on_live(&token(7, 4)), Verdict::Skip, "in the snapshot");
        assert_eq!(s.on_live(&token(7, 5)), Verdict::Deliver);
        assert_eq!(
            s.on_live(&ev(TopicKind::Complete { message_id: 7 })),
            Verdict::Deliver
        );
        match &s {
            Subscription::Live { streaming, .. } => assert!(streaming.is_empty()),
            Subscription::Pending { .. } => panic!("pending"),
        }
    }

    #[test]
    fn a_resubscribe_replays_again_from_the_given_seq() {
        let mut s = Subscription::pending();
        s.confirm();
        assert_eq!(s.on_live(&added(10)), Verdict::Deliver);
        // subscribe again with after_seq=0: pending again, the replay covers up to 10.
        s = Subscription::pending();
        assert_eq!(s.on_live(&added(11)), Verdict::Buffered);
        let cover = ReplayCover {
            last_seq: 10,
            delivered_seq: 10,
            ..Default::default()
        };
        assert_eq!(kinds(&s.replayed(cover)), ["added 11"]);
        assert_eq!(s.on_live(&added(11)), Verdict::Skip);
    }

    #[test]
    fn the_pending_buffer_is_bounded() {
        let mut s = Subscription::pending();
        let e = added(1);
        for _ in 0..MAX_BUFFERED {
            assert_eq!(s.on_live(&e), Verdict::Buffered);
        }
        assert_eq!(s.on_live(&e), Verdict::Overflow);
    }
}
