//! What crosses the bus: a conversation's live event with the facts a receiving node
//! needs to order and filter it (its kind: `seq`, message id, token index), stamped
//! with the publishing node and incarnation. JSON, like the wire protocol itself.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::Event;
use crate::topic::{token_event, topic_event, TopicEvent, TopicKind};

/// The subject of a conversation's events.
pub fn conversation_subject(conv: &str) -> String {
    format!("cf.c.{conv}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Kind {
    Added { seq: i64 },
    Updated { message_id: i64 },
    Token { message_id: i64, index: u64 },
    Complete { message_id: i64 },
    Ephemeral,
    RoomClosed { room_id: String },
    Deleted,
}

#[derive(Serialize)]
struct Out<'a> {
    node: &'a str,
    inc: i64,
    conv: &'a str,
    #[serde(flatten)]
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    exclude_user: Option<&'a str>,
    event: &'a Event,
}

#[derive(Deserialize)]
struct In {
    node: String,
    inc: i64,
    conv: String,
    #[serde(flatten)]
    kind: Kind,
    #[serde(default)]
    exclude_user: Option<String>,
    /// Read as a value first: `Event` names fixed strings as `&'static str`, so it is
    /// deserialised from owned data (`'de = 'static`), not from the borrowed buffer.
    event: serde_json::Value,
}

/// `ev` as the bus carries it.
pub fn encode(node: &str, inc: i64, ev: &TopicEvent) -> Vec<u8> {
    let kind = match &ev.kind {
        TopicKind::Added { seq } => Kind::Added { seq: *seq },
        TopicKind::Updated { message_id } => Kind::Updated {
            message_id: *message_id,
        },
        TopicKind::Token {
            message_id, index, ..
        } => Kind::Token {
            message_id: *message_id,
            index: *index,
        },
        TopicKind::Complete { message_id } => Kind::Complete {
            message_id: *message_id,
        },
        TopicKind::Ephemeral => Kind::Ephemeral,
        TopicKind::RoomClosed { room_id } => Kind::RoomClosed {
            room_id: room_id.to_string(),
        },
        TopicKind::Deleted => Kind::Deleted,
    };
    let out = Out {
        node,
        inc,
        conv: &ev.conversation_id,
        kind,
        exclude_user: ev.exclude_user.as_deref(),
        event: &ev.encoded.event,
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

/// A bus message: its sender `(node, incarnation)` and the event for local subscribers.
pub struct Received {
    pub node: String,
    pub inc: i64,
    pub event: TopicEvent,
}

pub fn decode(bytes: &[u8]) -> Result<Received, serde_json::Error> {
    let m: In = serde_json::from_slice(bytes)?;
    let event = <Event as serde::Deserialize>::deserialize(m.event)?;
    let conv: Arc<str> = Arc::from(m.conv);
    let kind = match m.kind {
        Kind::Added { seq } => TopicKind::Added { seq },
        Kind::Updated { message_id } => TopicKind::Updated { message_id },
        Kind::Token { message_id, index } => {
            let text = match &event {
                Event::Token { token, .. } => Arc::from(token.as_str()),
                _ => Arc::from(""),
            };
            TopicKind::Token {
                message_id,
                index,
                text,
            }
        }
        Kind::Complete { message_id } => TopicKind::Complete { message_id },
        Kind::Ephemeral => TopicKind::Ephemeral,
        Kind::RoomClosed { room_id } => TopicKind::RoomClosed {
            room_id: Arc::from(room_id),
        },
        Kind::Deleted => TopicKind::Deleted,
    };
    let mut event = match kind {
        TopicKind::Token { .. } => token_event(&conv, kind, event),
        _ => topic_event(&conv, kind, event),
    };
    event.exclude_user = m.exclude_user.map(Arc::from);
    Ok(Received {
        node: m.node,
        inc: m.inc,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CompletionMeta, MessageView};

    fn round_trip(ev: TopicEvent) -> TopicEvent {
        let bytes = encode("a", 3, &ev);
        let r = decode(&bytes).unwrap();
        assert_eq!((r.node.as_str(), r.inc), ("a", 3));
        assert_eq!(r.event.conversation_id, ev.conversation_id);
        assert_eq!(r.event.encoded.event.encode(), ev.encoded.event.encode());
        assert_eq!(format!("{:?}", r.event.kind), format!("{:?}", ev.kind));
        r.event
    }

    #[test]
    fn events_cross_the_bus_unchanged() {
        let conv: Arc<str> = Arc::from("c_1");
        let view = MessageView {
            id: 7,
            seq: 4,
            role: "user".into(),
            author: "ann".into(),
            content: "hi \"there\"".into(),
            status: "complete".into(),
            created_at: "t".into(),
            updated_at: "t".into(),
            meta: None,
        };
        round_trip(topic_event(
            &conv,
            TopicKind::Added { seq: 4 },
            Event::MessageAdded {
                conversation_id: "c_1".into(),
                room_id: Some("r".into()),
                message: view,
                replayed: None,
            },
        ));
        let t = round_trip(token_event(
            &conv,
            TopicKind::Token {
                message_id: 8,
                index: 2,
                text: Arc::from("lo"),
            },
            Event::Token {
                conversation_id: "c_1".into(),
                message_id: 8,
                index: 2,
                token: "lo".into(),
                count: None,
            },
        ));
        assert!(matches!(t.kind, TopicKind::Token { ref text, .. } if &**text == "lo"));
        round_trip(topic_event(
            &conv,
            TopicKind::Complete { message_id: 8 },
            Event::Complete {
                conversation_id: "c_1".into(),
                message_id: 8,
                seq: 5,
                response: "hello".into(),
                finish_reason: "stop",
                metadata: CompletionMeta::default(),
            },
        ));
        let mut typing = topic_event(
            &conv,
            TopicKind::Ephemeral,
            Event::Presence {
                room_id: "r".into(),
                user_id: "ann".into(),
                username: "Ann".into(),
                status: "joined",
            },
        );
        typing.exclude_user = Some(Arc::from("ann"));
        let back = round_trip(typing);
        assert_eq!(back.exclude_user.as_deref(), Some("ann"));
        assert!(decode(b"{\"node\":1}").is_err());
    }
}
