//! 004 `rooms`: the full chat system with rooms, typing, uploads and receipts,
//! `/api/v1/ws/ws` (SEEDS-COMPAT.md §6.8).
//!
//! In: the seed's envelope `{"type", "data": {…}, "room_id"?, "message_id"?}` or the flat
//! native form. `data` is lifted to the top level, `message_id` becomes the native `id`
//! (the idempotency key), `model_preference` becomes `model`; then the native decoder
//! reads it, so every native message works here too. A `chat` always asks for an AI
//! reply; its `conversation_id` may be a number or any client-chosen id (an alias, made
//! on first use). Out: every event as `{"type", "data"}` with the seed's names (`connect`,
//! `system` heartbeats, `chat` chunks and completion, `join_room`, `delivery_confirmation`
//! keyed by the client's `message_id`, …).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::{envelope, invalid, is_native_id, Aliases, Inbound, Out};
use crate::config::Config;
use crate::protocol::{now_rfc3339, ClientMsg, Decoder, Event, Incoming, MessageView};

/// A chat's ack, held until its room's `delivery_confirmation` (which has `recipients`).
struct HeldAck {
    id: Option<String>,
    message_id: i64,
    conversation_id: String,
    seq: i64,
}

pub struct State {
    default_room_type: &'static str,
    /// Client ids of chats sent into a room, waiting for their ack.
    room_chats: Vec<Option<String>>,
    held: Vec<HeldAck>,
    /// Conversation → room, for the rooms joined on this connection.
    room_of: HashMap<String, String>,
    /// Chats into a room this connection had not joined: sent once the join (asked for
    /// with the chat's id) is confirmed, dropped when it is refused.
    waiting: Vec<(String, Incoming)>,
}

/// Chats in flight whose acks this connection remembers.
const IN_FLIGHT_KEPT: usize = 256;

fn chat_view(m: &MessageView, conv: &str, room: Option<&String>, replayed: bool) -> Value {
    let mut d = json!({
        "role": m.role,
        "content": m.content,
        "user_id": m.author,
        "message_id": m.id,
        "seq": m.seq,
        "conversation_id": conv,
        "room_id": room,
        "timestamp": m.created_at,
        "streaming": false,
    });
    if m.role == "assistant" {
        d["done"] = json!(true);
    }
    if replayed {
        d["replayed"] = json!(true);
    }
    d
}

impl State {
    pub fn new(cfg: &Config) -> State {
        State {
            default_room_type: cfg.compat.rooms_default_room_type.as_str(),
            room_chats: Vec::new(),
            held: Vec::new(),
            room_of: HashMap::new(),
            waiting: Vec::new(),
        }
    }

    pub fn inbound(&mut self, d: &Aliases, dec: &mut Decoder, text: &str) -> Inbound {
        let mut top = match super::parse_object(text) {
            Ok(m) => m,
            Err(e) => return invalid(None, e),
        };
        // Lift `data`; the envelope's own fields fill what `data` lacks.
        let mut flat: Map<String, Value> = match top.remove("data") {
            Some(Value::Object(m)) => m,
            Some(Value::Null) | None => Map::new(),
            Some(_) => return invalid(None, "field `data` must be an object"),
        };
        for (k, v) in top {
            flat.entry(k).or_insert(v);
        }
        if !flat.contains_key("id") {
            if let Some(mid) = flat.remove("message_id") {
                flat.insert("id".into(), mid);
            }
        }
        if let Some(m) = flat.remove("model_preference") {
            flat.entry("model").or_insert(m);
        }
        let ty = flat.get("type").and_then(Value::as_str).unwrap_or("");
        let mut conv_ref: Option<String> = None;
        match ty {
            "chat" | "message" => {
                flat.insert("ai".into(), Value::Bool(true));
                let conv = flat.remove("conversation_id");
                // In a room the room's conversation is the conversation.
                if flat.get("room_id").is_none_or(|r| r.is_null()) {
                    conv_ref = match conv {
                        Some(Value::String(s)) if !s.is_empty() => Some(s),
                        Some(Value::Number(n)) => Some(n.to_string()),
                        _ => None,
                    };
                }
            }
            "join_room" if flat.get("room_type").is_none_or(|t| t.is_null()) => {
                flat.insert("room_type".into(), json!(self.default_room_type));
            }
            _ => {}
        }
        let text = Value::Object(flat).to_string();
        let mut inc = match dec.decode(&text) {
            Ok(i) => i,
            Err(e) => return Inbound::Invalid(e),
        };
        let mut alias = None;
        if let ClientMsg::Chat(req) = &mut inc.msg {
            // Into a room not joined here: join it first (the room's rules apply), then send.
            if let Some(room) = req.room_id.clone() {
                if !self.room_of.values().any(|r| *r == room) {
                    if self.waiting.len() >= IN_FLIGHT_KEPT {
                        return invalid(inc.id, "too many chats waiting for their rooms");
                    }
                    let join = Incoming {
                        id: inc.id.clone(),
                        msg: ClientMsg::JoinRoom {
                            room_id: room.clone(),
                            room_name: None,
                            room_type: crate::protocol::RoomType::parse(self.default_room_type),
                            after_seq: None,
                        },
                    };
                    self.waiting.push((room, inc));
                    return Inbound::Native {
                        inc: join,
                        alias: None,
                    };
                }
            }
            if req.room_id.is_some() {
                if self.room_chats.len() >= IN_FLIGHT_KEPT {
                    self.room_chats.remove(0);
                }
                self.room_chats.push(inc.id.clone());
            }
            match conv_ref {
                Some(c) if is_native_id(&c) => req.conversation_id = Some(c),
                Some(c) if req.message.trim().is_empty() => drop(c),
                Some(c) => match d.alias(&c) {
                    Some(native) => req.conversation_id = Some(native.to_string()),
                    None => alias = Some(c),
                },
                None => {}
            }
        }
        Inbound::Native { inc, alias }
    }

    fn confirmation(&self, a: &HeldAck, recipients: Option<u64>, duplicate: bool) -> Value {
        let mut d = json!({
            "message_id": a.id,
            "status": "delivered",
            "timestamp": now_rfc3339(),
            "server_message_id": a.message_id,
            "conversation_id": a.conversation_id,
            "seq": a.seq,
        });
        if let Some(n) = recipients {
            d["recipients"] = json!(n);
        }
        if duplicate {
            d["duplicate"] = json!(true);
        }
        envelope("delivery_confirmation", d)
    }

    pub fn outbound(&mut self, ev: &Event, out: &mut Out) {
        match ev {
            Event::Connected {
                connection_id,
                user,
                server_time,
                rooms,
                ..
            } => out.push(envelope(
                "connect",
                json!({
                    "connection_id": connection_id,
                    "status": "connected",
                    "server_time": server_time,
                    "user": user,
                    "rooms": rooms,
                }),
            )),
            Event::Heartbeat { server_time } => out.push(envelope(
                "system",
                json!({ "heartbeat": true, "server_time": server_time }),
            )),
            Event::System {
                room_id,
                message,
                from,
                timestamp,
            } => out.push(envelope(
                "system",
                json!({ "message": message, "from": from, "timestamp": timestamp, "room_id": room_id }),
            )),
            Event::Token {
                conversation_id,
                message_id,
                token,
                ..
            } => out.push(envelope(
                "chat",
                json!({
                    "role": "assistant",
                    "content": token,
                    "streaming": true,
                    "conversation_id": conversation_id,
                    "message_id": message_id,
                    "room_id": self.room_of.get(conversation_id),
                    "timestamp": now_rfc3339(),
                }),
            )),
            Event::Complete {
                conversation_id,
                message_id,
                response,
                finish_reason,
                metadata,
                ..
            } => out.push(envelope(
                "chat",
                json!({
                    "role": "assistant",
                    "content": "",
                    "response": response,
                    "streaming": false,
                    "done": true,
                    "message_id": message_id,
                    "conversation_id": conversation_id,
                    "room_id": self.room_of.get(conversation_id),
                    "tokens_used": metadata.total_tokens,
                    "model_used": metadata.model,
                    "cost_usd": metadata.cost_usd,
                    "response_time": metadata.response_time_ms as f64 / 1000.0,
                    "finish_reason": finish_reason,
                }),
            )),
            Event::MessageAdded {
                conversation_id,
                room_id,
                message,
                replayed,
            } => {
                // A reply is shown by its chunks and completion, unless replayed whole.
                let streaming = message.status == "streaming";
                if message.role == "user" || (replayed.is_some() && !streaming) {
                    let room = room_id.as_ref().or(self.room_of.get(conversation_id));
                    out.push(envelope(
                        "chat",
                        chat_view(message, conversation_id, room, replayed.is_some()),
                    ));
                }
            }
            Event::Ack {
                id,
                conversation_id,
                message_id,
                seq,
                duplicate,
                ..
            } => {
                let a = HeldAck {
                    id: id.clone(),
                    message_id: *message_id,
                    conversation_id: conversation_id.clone(),
                    seq: *seq,
                };
                let in_room = match self.room_chats.iter().position(|c| c == id) {
                    Some(i) => {
                        self.room_chats.remove(i);
                        true
                    }
                    None => false,
                };
                if in_room && duplicate.is_none() {
                    if self.held.len() >= IN_FLIGHT_KEPT {
                        self.held.remove(0);
                    }
                    self.held.push(a);
                } else {
                    out.push(self.confirmation(&a, None, duplicate.is_some()));
                }
            }
            Event::DeliveryConfirmation {
                id,
                message_id,
                recipients,
                ..
            } => {
                let a = match self.held.iter().position(|h| h.message_id == *message_id) {
                    Some(i) => self.held.remove(i),
                    None => HeldAck {
                        id: id.clone(),
                        message_id: *message_id,
                        conversation_id: String::new(),
                        seq: 0,
                    },
                };
                out.push(self.confirmation(&a, Some(*recipients), false));
            }
            Event::RoomJoined {
                room_id,
                room_name,
                room_type,
                conversation_id,
                participants,
                participant_count,
                joined_at,
                last_seq,
                ..
            } => {
                if self.room_of.len() < IN_FLIGHT_KEPT {
                    self.room_of.insert(conversation_id.clone(), room_id.clone());
                }
                let (go, stay): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
                    .into_iter()
                    .partition(|(r, _)| r == room_id);
                self.waiting = stay;
                for (_, chat) in go {
                    if let ClientMsg::Chat(req) = &chat.msg {
                        if self.room_chats.len() >= IN_FLIGHT_KEPT {
                            self.room_chats.remove(0);
                        }
                        if req.room_id.is_some() {
                            self.room_chats.push(chat.id.clone());
                        }
                    }
                    out.then.push(chat);
                }
                let ids: Vec<&str> = participants.iter().map(|p| p.user_id.as_str()).collect();
                out.push(envelope(
                    "join_room",
                    json!({
                        "room_id": room_id,
                        "room_name": room_name,
                        "room_type": room_type,
                        "participants": ids,
                        "participant_count": participant_count,
                        "joined_at": joined_at,
                        "conversation_id": conversation_id,
                        "last_seq": last_seq,
                    }),
                ));
            }
            Event::RoomLeft {
                room_id, reason, ..
            } => {
                self.room_of.retain(|_, r| r != room_id);
                out.push(envelope(
                    "leave_room",
                    json!({ "room_id": room_id, "reason": reason }),
                ))
            }
            Event::Typing {
                room_id,
                conversation_id,
                user_id,
                username,
                is_typing,
            } => out.push(envelope(
                "typing",
                json!({ "user_id": user_id, "username": username, "is_typing": is_typing,
                        "room_id": room_id, "conversation_id": conversation_id }),
            )),
            Event::Presence {
                room_id,
                user_id,
                username,
                status,
            } => out.push(envelope(
                "presence",
                json!({ "room_id": room_id, "user_id": user_id, "username": username, "status": status }),
            )),
            Event::PresenceList {
                room_id,
                online,
                online_count,
            } => out.push(envelope(
                "presence",
                json!({ "room_id": room_id, "online": online, "online_count": online_count, "sync": true }),
            )),
            Event::Receipt {
                conversation_id,
                user_id,
                seq,
                read_at,
            } => out.push(envelope(
                "read_receipt",
                json!({ "conversation_id": conversation_id, "user_id": user_id, "seq": seq, "read_at": read_at }),
            )),
            Event::FileUpload(u) => {
                out.push(envelope("file_upload", serde_json::to_value(u).unwrap_or_default()))
            }
            Event::Pong { server_time, .. } => {
                out.push(envelope("pong", json!({ "server_time": server_time })))
            }
            Event::Error {
                code,
                error,
                id,
                retry_after,
            } => {
                // A refused join answers the chat that waited for it.
                self.waiting.retain(|(_, c)| id.is_none() || c.id != *id);
                let mut d = json!({ "error": error, "code": code.as_str() });
                if let Some(r) = retry_after {
                    d["retry_after"] = json!(r.ceil() as u64);
                }
                if let Some(id) = id {
                    d["message_id"] = json!(id);
                }
                out.push(envelope("error", d))
            }
            Event::AuthError { message, code } => out.push(envelope(
                "error",
                json!({ "error": message, "code": code.as_str() }),
            )),
            _ => {}
        }
    }
}
