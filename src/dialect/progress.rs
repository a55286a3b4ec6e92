//! 003 `progress`: the progress-streaming analytics agent, `/ws/{user_id}/{session_id}`
//! (SEEDS-COMPAT.md §6.7).
//!
//! In: `query {query, conversation_id?}` (the conversation is an alias: the path's
//! `session_id` unless given), `ping`. Out, all `{"type", "data"}`: `connected`,
//! `started` (0 %), `progress` with the seed's stages (10, 30, 75, 95 %), `completed`
//! (100 %, with the response), `error`, `pong`. Percents strictly increase within a
//! reply; conversation ids are shown as the client's alias.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{
    chat_into, envelope, id_field, invalid, native, parse_object, str_field, unknown_type, Aliases,
    Inbound, Out,
};
use crate::protocol::{ClientMsg, ErrorCode, Event};

pub struct State {
    user: String,
    session: String,
    /// Per conversation, the last percent sent for its reply in progress.
    percent: HashMap<String, u8>,
}

const REPLIES_KEPT: usize = 64;

fn stage(message: &str, progress: u8, stage: &str) -> Value {
    json!({ "message": message, "progress": progress, "stage": stage, "retry_count": 0 })
}

fn error_frame(code: ErrorCode, error: &str) -> Value {
    envelope(
        "error",
        json!({ "error": error, "code": code.as_str(), "message": error }),
    )
}

impl State {
    pub fn new(user: String, session: String) -> State {
        State {
            user,
            session,
            percent: HashMap::new(),
        }
    }

    pub fn inbound(&mut self, d: &Aliases, text: &str) -> Inbound {
        let m = match parse_object(text) {
            Ok(m) => m,
            Err(e) => return invalid(None, e),
        };
        let id = id_field(&m, "id");
        match str_field(&m, "type") {
            Some("query") => {
                let Some(q) = str_field(&m, "query") else {
                    return invalid(id, "missing field `query`");
                };
                let conv = id_field(&m, "conversation_id").unwrap_or_else(|| self.session.clone());
                chat_into(d, id, q.to_string(), &conv)
            }
            Some("ping") => native(id, ClientMsg::Ping),
            Some(other) => unknown_type(id, other),
            None => invalid(id, "missing field `type`"),
        }
    }

    /// Send a stage of `conv`'s reply if it moves the percent forward.
    fn advance(&mut self, conv: &str, data: Value, ty: &str, out: &mut Out) {
        let p = data["progress"].as_u64().unwrap_or(0) as u8;
        match self.percent.get_mut(conv) {
            Some(last) if *last >= p => return,
            Some(last) => *last = p,
            None => {
                if self.percent.len() >= REPLIES_KEPT {
                    self.percent.clear();
                }
                self.percent.insert(conv.to_string(), p);
            }
        }
        out.push(envelope(ty, data));
    }

    pub fn outbound(&mut self, d: &Aliases, ev: &Event, out: &mut Out) {
        match ev {
            Event::Connected { .. } => out.push(envelope(
                "connected",
                json!({
                    "user_id": self.user,
                    "session_id": self.session,
                    "conversation_id": self.session,
                    "message": "Connected",
                }),
            )),
            Event::Ack {
                conversation_id,
                duplicate,
                ..
            } => {
                if duplicate.is_some() {
                    return; // the original's reply is (or was) reported already
                }
                let shown = d.alias_of(conversation_id).unwrap_or(conversation_id);
                let mut data = stage("Planning Task...", 0, "started");
                data["conversation_id"] = json!(shown);
                self.percent.insert(conversation_id.clone(), 0);
                out.push(envelope("started", data));
            }
            Event::Progress {
                conversation_id,
                step,
                ..
            } => {
                let data = match *step {
                    "queued" => stage("Planning Task...", 10, "planner"),
                    "loading_context" => stage("Fetching Data...", 30, "fetch"),
                    _ => stage("Interpreting Data...", 75, "interpret"),
                };
                self.advance(conversation_id, data, "progress", out);
            }
            Event::Complete {
                conversation_id,
                message_id,
                response,
                finish_reason,
                metadata,
                ..
            } => {
                if *finish_reason == "error" {
                    self.percent.remove(conversation_id);
                    return; // reported as an error
                }
                let data = stage("Finalizing Response...", 95, "finalize");
                self.advance(conversation_id, data, "progress", out);
                self.percent.remove(conversation_id);
                let shown = d.alias_of(conversation_id).unwrap_or(conversation_id);
                out.push(envelope(
                    "completed",
                    json!({
                        "message": "Complete!",
                        "progress": 100,
                        "stage": "completed",
                        "retry_count": 0,
                        "response": response,
                        "conversation_id": shown,
                        "message_id": message_id,
                        "finish_reason": finish_reason,
                        "metadata": metadata,
                    }),
                ));
            }
            Event::Error { code, error, .. } => out.push(error_frame(*code, error)),
            Event::AuthError { message, code } => out.push(error_frame(*code, message)),
            Event::Pong { server_time, .. } => {
                out.push(envelope("pong", json!({ "timestamp": server_time })))
            }
            _ => {}
        }
    }
}
