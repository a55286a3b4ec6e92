//! 000 `agixt`: AGiXT's read-only conversation stream, `/v1/conversation/{id}/stream`
//! (SEEDS-COMPAT.md §6.4).
//!
//! Once authenticated the connection subscribes to its conversation from the start: the
//! history comes as `initial_message` (oldest first), then live `message_added` /
//! `message_updated`, all `{"type", "data"}`. An assistant reply is announced when it is
//! complete (AGiXT shows a message when it is stored), as `message_added`; a reply that
//! was already shown while streaming (in the history) is updated with `message_updated`.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::{envelope, invalid, native, parse_object, str_field, Inbound, Out};
use crate::protocol::{close, ClientMsg, ErrorCode, Event, Incoming, MessageView};

pub struct State {
    conversation: Option<String>,
    /// The subscription was confirmed (a refusal before it ends the stream).
    subscribed: bool,
    /// Streaming replies announced natively but not shown yet.
    unshown: HashSet<i64>,
}

/// Streaming replies not yet shown, at most (more than the replies one conversation can
/// have in flight).
const UNSHOWN_KEPT: usize = 256;

fn message_data(m: &MessageView) -> Value {
    json!({
        "id": m.id.to_string(),
        "role": if m.role == "user" { "user" } else { m.author.as_str() },
        "message": m.content,
        "timestamp": m.created_at,
        "updated_at": m.updated_at,
        "updated_by": m.author,
        "feedback_received": false,
        "seq": m.seq,
        "status": m.status,
    })
}

fn error_data(code: ErrorCode, error: &str) -> Value {
    let error = match code {
        ErrorCode::NotFound => "Conversation not found",
        ErrorCode::AuthFailed => "Invalid token",
        _ => error,
    };
    envelope("error", json!({ "error": error, "code": code.as_str() }))
}

impl State {
    pub fn new(conversation: Option<String>) -> State {
        State {
            conversation,
            subscribed: false,
            unshown: HashSet::new(),
        }
    }

    pub fn inbound(&mut self, text: &str) -> Inbound {
        let m = match parse_object(text) {
            Ok(m) => m,
            Err(e) => return invalid(None, e),
        };
        match str_field(&m, "type") {
            Some("ping") => native(None, ClientMsg::Ping),
            _ => invalid(None, "this stream is read-only"),
        }
    }

    pub fn outbound(&mut self, ev: &Event, out: &mut Out) {
        match ev {
            Event::Connected {
                connection_id,
                user,
                server_time,
                heartbeat_interval,
                ..
            } => {
                out.push(envelope(
                    "connected",
                    json!({
                        "conversation_id": self.conversation,
                        "user_id": user.id,
                        "connection_id": connection_id,
                        "server_time": server_time,
                        "heartbeat_interval": heartbeat_interval,
                    }),
                ));
                if let Some(c) = &self.conversation {
                    // Every stored message, oldest first, then live.
                    out.then.push(Incoming {
                        id: None,
                        msg: ClientMsg::Backfill {
                            conversation_id: c.clone(),
                            after_seq: 0,
                        },
                    });
                }
            }
            Event::MessageAdded {
                message, replayed, ..
            } => {
                if replayed.is_some() {
                    out.push(envelope("initial_message", message_data(message)));
                } else if message.role == "assistant" && message.status == "streaming" {
                    if self.unshown.len() < UNSHOWN_KEPT {
                        self.unshown.insert(message.id);
                    }
                } else {
                    out.push(envelope("message_added", message_data(message)));
                }
            }
            Event::MessageUpdated { message, .. } => {
                let ty = if self.unshown.remove(&message.id) {
                    "message_added"
                } else {
                    "message_updated"
                };
                out.push(envelope(ty, message_data(message)));
            }
            Event::Subscribed { .. } => self.subscribed = true,
            Event::Heartbeat { server_time } => {
                out.push(envelope("heartbeat", json!({ "timestamp": server_time })))
            }
            Event::Pong { server_time, .. } => {
                out.push(envelope("pong", json!({ "timestamp": server_time })))
            }
            Event::AuthError { message, code } => out.push(error_data(*code, message)),
            Event::Error { code, error, .. } => {
                out.push(error_data(*code, error));
                // The stream's one conversation could not be opened: the socket is useless.
                if !self.subscribed && matches!(code, ErrorCode::NotFound | ErrorCode::Forbidden) {
                    out.close = Some((close::POLICY, "conversation not available"));
                }
            }
            _ => {}
        }
    }
}
