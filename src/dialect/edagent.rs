//! 002 `edagent`: EdAgent's per-user socket, `/api/v1/ws/{user_id}` (SEEDS-COMPAT.md
//! §6.6; the seed names its message kinds only, the wire forms are chosen there).
//!
//! In: `{"message": "…"}` with no `type` (or `message`/`chat`), `typing` (accepted,
//! nothing to do), `ping`. Every chat goes to the user's default conversation (alias
//! `default`). Out: `connection`, `typing` from `edagent` while a reply is made,
//! `ai_response`, `broadcast`, `error {message, code}`, `pong`.

use std::collections::HashSet;

use serde_json::json;

use super::{
    chat_into, id_field, invalid, native, parse_object, str_field, unknown_type, Aliases, Inbound,
    Out,
};
use crate::protocol::{now_rfc3339, ClientMsg, Event};

/// The alias of every EdAgent user's one conversation.
pub const DEFAULT_ALIAS: &str = "default";

#[derive(Default)]
pub struct State {
    /// Replies the AI is "typing" (typing:true sent, false not yet).
    typing: HashSet<i64>,
}

const TYPING_KEPT: usize = 64;

impl State {
    pub fn inbound(&mut self, d: &Aliases, text: &str) -> Inbound {
        let m = match parse_object(text) {
            Ok(m) => m,
            Err(e) => return invalid(None, e),
        };
        let id = id_field(&m, "id");
        match str_field(&m, "type") {
            None | Some("message") | Some("chat") => match m.get("message") {
                Some(serde_json::Value::String(s)) => chat_into(d, id, s.clone(), DEFAULT_ALIAS),
                _ => invalid(id, "message is required"),
            },
            Some("typing") => Inbound::Reply(Vec::new()),
            Some("ping") => native(id, ClientMsg::Ping),
            Some(other) => unknown_type(id, other),
        }
    }

    pub fn outbound(&mut self, ev: &Event, out: &mut Out) {
        match ev {
            Event::Connected {
                connection_id,
                user,
                server_time,
                ..
            } => out.push(json!({
                "type": "connection",
                "user_id": user.id,
                "connection_id": connection_id,
                "message": "Connected to EdAgent",
                "timestamp": server_time,
            })),
            Event::Progress { message_id, .. }
                if self.typing.len() < TYPING_KEPT && self.typing.insert(*message_id) =>
            {
                out.push(json!({ "type": "typing", "user_id": "edagent", "is_typing": true }));
            }
            Event::Complete {
                conversation_id,
                message_id,
                response,
                finish_reason,
                metadata,
                ..
            } => {
                if self.typing.remove(message_id) {
                    out.push(json!({ "type": "typing", "user_id": "edagent", "is_typing": false }));
                }
                if *finish_reason != "error" {
                    out.push(json!({
                        "type": "ai_response",
                        "message": response,
                        "conversation_id": conversation_id,
                        "message_id": message_id,
                        "timestamp": now_rfc3339(),
                        "metadata": metadata,
                    }));
                }
            }
            Event::Error { code, error, .. } => {
                out.push(json!({ "type": "error", "message": error, "code": code.as_str() }))
            }
            Event::AuthError { message, code } => {
                out.push(json!({ "type": "error", "message": message, "code": code.as_str() }))
            }
            Event::System {
                message,
                from,
                timestamp,
                ..
            } => out.push(json!({
                "type": "broadcast",
                "message": message,
                "from": from,
                "timestamp": timestamp,
            })),
            Event::Pong { server_time, .. } => {
                out.push(json!({ "type": "pong", "timestamp": server_time }))
            }
            _ => {}
        }
    }
}
