//! 001 `ws_chat`: `/ws/chat` token streaming with progress (SEEDS-COMPAT.md §6.5).
//!
//! In: `auth {token}`, `message {message, session_id?, customer_id?}` (also `chat`),
//! `ping`. Out: `auth_success`/`auth_error`, `progress {step, message}` with the seed's
//! steps, `token {token, partial_response}` (the text so far), `complete {response,
//! session_id, metadata}`, `error {error, code}`. No greeting: the seed defines none.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{
    chat_into, id_field, invalid, native, parse_object, str_field, unknown_type, Aliases, Inbound,
    Out,
};
use crate::protocol::{ClientMsg, ErrorCode, Event};

/// Replies whose text is being accumulated at once, at most (a reply's entry goes at its
/// `complete`; these bound a connection that stopped following some).
const PARTIALS_KEPT: usize = 32;

pub struct State {
    /// The alias of the conversation messages without `session_id` go to: private to this
    /// connection (made by its first such message; the store serializes the resolution,
    /// so two quick messages still share one conversation).
    current: String,
    /// Reply message id → its text so far (`partial_response`).
    partial: HashMap<i64, String>,
}

/// The 001 error form, with the seed's codes.
pub fn error_frame(code: ErrorCode, error: &str, retry_after: Option<f64>) -> Value {
    let (code, error) = match code {
        ErrorCode::LlmError | ErrorCode::Internal => ("PROCESSING_ERROR", error),
        ErrorCode::EmptyMessage => ("EMPTY_MESSAGE", "Message is empty"),
        ErrorCode::AuthRequired => ("AUTH_REQUIRED", "Authentication required"),
        c => (c.as_str(), error),
    };
    let mut v = json!({ "type": "error", "error": error, "code": code });
    if let Some(r) = retry_after {
        v["retry_after"] = json!(r);
    }
    v
}

/// Aliases of connections' own conversations start with this (a client's session ids are
/// shown back as given; these are shown as the native id).
const CONNECTION_ALIAS: &str = "~conn-";

impl Default for State {
    fn default() -> Self {
        State {
            current: format!("{CONNECTION_ALIAS}{}", crate::chat::random_id("")),
            partial: HashMap::new(),
        }
    }
}

impl State {
    pub fn inbound(&mut self, d: &Aliases, text: &str) -> Inbound {
        let m = match parse_object(text) {
            Ok(m) => m,
            Err(e) => return invalid(None, e),
        };
        let id = id_field(&m, "id");
        let msg = match str_field(&m, "type") {
            Some("auth") => match str_field(&m, "token") {
                Some(t) => ClientMsg::Auth {
                    token: t.to_string(),
                },
                None => return invalid(id, "missing field `token`"),
            },
            Some("ping") => ClientMsg::Ping,
            Some("message") | Some("chat") => {
                let Some(message) = str_field(&m, "message") else {
                    return invalid(id, "missing field `message`");
                };
                let session = id_field(&m, "session_id");
                let conv = session.unwrap_or_else(|| self.current.clone());
                return chat_into(d, id, message.to_string(), &conv);
            }
            Some(other) => return unknown_type(id, other),
            None => return invalid(id, "missing field `type`"),
        };
        native(id, msg)
    }

    pub fn outbound(&mut self, d: &Aliases, ev: &Event, out: &mut Out) {
        match ev {
            Event::AuthSuccess { user, .. } => out.push(json!({
                "type": "auth_success",
                "message": "Authentication successful",
                "user": { "id": user.id, "email": user.email, "name": user.name },
            })),
            Event::AuthError { message, code } => {
                let message = match code {
                    ErrorCode::AuthFailed => "Invalid token",
                    ErrorCode::TokenExpired => "Token expired",
                    _ => message.as_str(),
                };
                out.push(json!({ "type": "auth_error", "message": message, "code": code.as_str() }))
            }
            Event::Error {
                code,
                error,
                retry_after,
                ..
            } => out.push(error_frame(*code, error, *retry_after)),
            Event::Progress { step, message, .. } => match *step {
                "queued" => {
                    out.push(json!({ "type": "progress", "step": "starting", "message": "Processing started" }));
                    out.push(json!({ "type": "progress", "step": "agent_routing", "message": "Routing to the agent" }));
                }
                "loading_context" => out.push(
                    json!({ "type": "progress", "step": "rag_retrieval", "message": message }),
                ),
                step => out.push(json!({ "type": "progress", "step": step, "message": message })),
            },
            Event::Token {
                message_id, token, ..
            } => {
                if !self.partial.contains_key(message_id) && self.partial.len() >= PARTIALS_KEPT {
                    if let Some(k) = self.partial.keys().min().copied() {
                        self.partial.remove(&k);
                    }
                }
                let p = self.partial.entry(*message_id).or_default();
                p.push_str(token);
                out.push(json!({ "type": "token", "token": token, "partial_response": p }));
            }
            Event::Complete {
                conversation_id,
                message_id,
                response,
                finish_reason,
                metadata,
                ..
            } => {
                self.partial.remove(message_id);
                // A failed reply was already reported as an error.
                if *finish_reason == "error" {
                    return;
                }
                let session = d
                    .alias_of(conversation_id)
                    .filter(|a| !a.starts_with(CONNECTION_ALIAS))
                    .unwrap_or(conversation_id);
                out.push(json!({
                    "type": "complete",
                    "response": response,
                    "session_id": session,
                    "metadata": {
                        "agent": metadata.agent,
                        "confidence": null,
                        "context": { "sources": [] },
                        "model": metadata.model,
                        "prompt_tokens": metadata.prompt_tokens,
                        "completion_tokens": metadata.completion_tokens,
                        "total_tokens": metadata.total_tokens,
                        "cost_usd": metadata.cost_usd,
                        "response_time_ms": metadata.response_time_ms,
                        "finish_reason": finish_reason,
                    },
                }));
            }
            Event::Pong { server_time, .. } => {
                out.push(json!({ "type": "pong", "server_time": server_time }))
            }
            _ => {}
        }
    }
}
