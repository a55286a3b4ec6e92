//! Topic events: what is fanned out to every subscriber of a conversation, encoded once,
//! and the per-subscriber filter that keeps a resumed subscription free of gaps and
//! duplicates (`on_topic`).

use std::sync::Arc;

use crate::app::Shard;
use crate::codec::{Codec, Encoded};
use crate::net::{close, ConnId, OutItem, TokenItem};
use crate::protocol::Event;
use crate::subscription::Verdict;

/// What a live event is, so that a resuming subscriber can drop what its replay held.
#[derive(Debug, Clone)]
pub enum TopicKind {
    /// A stored message appeared with this seq.
    Added { seq: i64 },
    /// A stored message changed (streaming status, final content).
    Updated { message_id: i64 },
    /// A token delta of a streaming reply.
    Token {
        message_id: i64,
        index: u64,
        text: Arc<str>,
    },
    /// The end of a streaming reply.
    Complete { message_id: i64 },
    /// Typing, presence, receipts, room notices: not part of the log.
    Ephemeral,
    /// The room was deleted: members' connections leave it.
    RoomClosed { room_id: Arc<str> },
    /// The conversation was deleted: its subscribers stop following it.
    Deleted,
}

/// One event for every local subscriber of a conversation, encoded once per codec.
#[derive(Debug)]
pub struct TopicEvent {
    pub conversation_id: Arc<str>,
    pub kind: TopicKind,
    pub encoded: Encoded,
    /// Not delivered to this connection (e.g. a typing user's own connection).
    pub exclude: Option<ConnId>,
    /// Not delivered to any connection of this user.
    pub exclude_user: Option<Arc<str>>,
}

/// An event for every subscriber of `conv`, with its native frame encoded now.
pub fn topic_event(conv: &Arc<str>, kind: TopicKind, ev: crate::protocol::Event) -> TopicEvent {
    TopicEvent {
        conversation_id: conv.clone(),
        kind,
        encoded: Encoded::new(ev),
        exclude: None,
        exclude_user: None,
    }
}

/// A token delta for every subscriber of `conv`. Subscribers queue it as a mergeable
/// `TokenItem` (encoded at flush by their codec), so no frame is encoded here.
pub fn token_event(conv: &Arc<str>, kind: TopicKind, ev: crate::protocol::Event) -> TopicEvent {
    TopicEvent {
        conversation_id: conv.clone(),
        kind,
        encoded: Encoded::lazy(ev),
        exclude: None,
        exclude_user: None,
    }
}

/// The queue item for one subscriber speaking `codec`: token events stay mergeable, the
/// rest share the codec's frame.
pub fn topic_item(ev: &TopicEvent, codec: &dyn Codec) -> OutItem {
    match &ev.kind {
        TopicKind::Token {
            message_id,
            index,
            text,
        } => OutItem::Token(TokenItem {
            conversation_id: ev.conversation_id.clone(),
            message_id: *message_id,
            index: *index,
            count: 1,
            text: text.to_string(),
            encode: codec.token_encoder(),
        }),
        _ => OutItem::Frame(ev.encoded.frame(codec)),
    }
}

/// A presence event that the hub's current state contradicts. Presence is published
/// after the hub's lock is released, so a user's `joined` and `left` (from two shards)
/// can arrive in either order; the later state is the truth, so an event that disagrees
/// with it is stale — the event that made the truth is delivered too (or, if dropped on
/// a full inbox, followed by a `presence_list`: `on_missed`).
fn stale_presence(shard: &Shard, ev: &TopicEvent) -> bool {
    match &ev.encoded.event {
        Event::Presence {
            user_id, status, ..
        } => {
            let online = shard.app().presence_online(&ev.conversation_id, user_id);
            online != (*status == "joined")
        }
        _ => false,
    }
}

/// Queue a topic event for one subscriber: a dialect connection gets its own form of it
/// (no shared frame, no token merging); any other the shared item for its codec.
pub fn deliver(shard: &mut Shard, slot: usize, ev: &TopicEvent) {
    if stale_presence(shard, ev) {
        return;
    }
    if !crate::app::deliver_dialect(shard, slot, &ev.encoded.event) {
        let codec = crate::app::codec_of(shard, slot);
        shard.queue(slot, topic_item(ev, codec));
    }
}

/// Events of `conv` (or of every topic) were dropped for this shard on its full inbox:
/// each local connection in such a room gets the room's `presence_list`, the truth it
/// can replace its view with (a sample and the count in a room past
/// `rooms.presence_max_users`), encoded once per room for all its connections here (a
/// large room's list is that many entries, and this runs when the shard is overloaded).
/// (Other ephemeral events need no repair: typing expires by itself.)
pub fn on_missed(shard: &mut Shard, conv: Option<&str>) {
    let slots = match conv {
        Some(c) => shard.local_subscribers(c),
        None => shard.ws_slots(),
    };
    let mut lists: std::collections::HashMap<Arc<str>, Arc<Encoded>> = Default::default();
    for slot in slots {
        let rooms: Vec<(Arc<str>, Arc<str>)> = match shard.session(slot) {
            Some(s) => s
                .rooms
                .iter()
                .filter(|(_, c)| conv.is_none_or(|x| ***c == *x))
                .map(|(r, c)| (r.clone(), c.clone()))
                .collect(),
            None => continue,
        };
        for (room_id, c) in rooms {
            let list = lists
                .entry(room_id.clone())
                .or_insert_with(|| {
                    let (online, online_count) = shard.app().presence_shown(&c);
                    Arc::new(Encoded::new(Event::PresenceList {
                        room_id: room_id.to_string(),
                        online,
                        online_count,
                    }))
                })
                .clone();
            crate::app::ShardExt::send_encoded(shard, slot, &list);
        }
    }
}

/// A topic event for one local subscriber: its subscription decides (`subscription.rs`).
pub fn on_topic(shard: &mut Shard, slot: usize, ev: &Arc<TopicEvent>) {
    enum Then {
        Skip,
        Deliver,
        Overloaded,
    }
    // Only an event that excludes one connection needs this one's id.
    let me = ev.exclude.and_then(|_| shard.conn_id(slot));
    let (then, codec, dialect) = {
        let Some(s) = shard.session_mut(slot) else {
            return;
        };
        let codec = s.codec();
        let dialect = s.is_dialect();
        let excluded = (me.is_some() && ev.exclude == me)
            || matches!((&s.user, &ev.exclude_user), (Some(u), Some(x)) if *u.id == **x);
        let then = match s.subs.get_mut(&ev.conversation_id) {
            _ if excluded => Then::Skip,
            None => Then::Skip,
            Some(sub) => match sub.on_live(ev) {
                Verdict::Deliver => Then::Deliver,
                Verdict::Skip | Verdict::Buffered => Then::Skip,
                Verdict::Overflow => Then::Overloaded,
            },
        };
        (then, codec, dialect)
    };
    match then {
        Then::Skip => {}
        Then::Overloaded => {
            shard.close_ws(slot, close::OVERLOADED, "too many events during replay")
        }
        Then::Deliver => {
            if let TopicKind::Deleted = &ev.kind {
                if let Some(s) = shard.session_mut(slot) {
                    s.subs.remove(&ev.conversation_id);
                }
                shard.unsubscribe(&ev.conversation_id, slot);
            }
            if let TopicKind::RoomClosed { room_id } = &ev.kind {
                crate::session::room_closed_locally(
                    shard,
                    slot,
                    room_id.clone(),
                    ev.conversation_id.clone(),
                );
            }
            if dialect {
                deliver(shard, slot, ev);
            } else if !stale_presence(shard, ev) {
                shard.queue(slot, topic_item(ev, codec));
            }
        }
    }
}
