//! Dialects: the seed documents' own wire protocols (`../shared/seeds/`, docs/compat.md),
//! each a translator between one seed's messages and the native typed commands and
//! events. The upgrade path picks the profile ([`route`]); the connection keeps its
//! [`Dialect`] for life.
//!
//! A dialect only translates. Authentication, ack-after-commit, idempotency, replay, rate
//! limits, rooms and uploads are the native session's, behind it. Unlike the native codec
//! (`codec/`), a dialect has per-connection state — the text of a reply so far (001),
//! which messages a stream has shown (000), the client's ids (004), a conversation's
//! alias — so its frames are made per connection, never shared between connections.
//!
//! Inbound, a text frame becomes an [`Inbound`]: a native command (perhaps waiting for a
//! conversation alias to be resolved by the store), a reply the dialect makes itself, or
//! a decode error. Outbound, each native event becomes zero or more frames ([`Out`]), and
//! may ask for native follow-ups (000 subscribes once connected) or a close.

mod agixt;
mod edagent;
pub mod http;
mod progress;
mod rooms;
mod ws_chat;

use serde_json::{json, Map, Value};
use tungstenite::Utf8Bytes;

use crate::config::{Config, Profile};
use crate::protocol::{DecodeError, Decoder, ErrorCode, Event, Incoming};

/// Where a seed's WebSocket upgrade goes, with what its path carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub profile: Profile,
    /// 002, 003: the user the path names.
    pub path_user: Option<String>,
    /// 000: the conversation; 003: the session (a conversation alias).
    pub bound: Option<String>,
}

/// The `/compat/NNN` prefix, if `path` has one: (profile, the rest of the path).
fn compat_prefix(path: &str) -> Option<(Profile, &str)> {
    let rest = path.strip_prefix("/compat/")?;
    let (num, tail) = rest.split_at_checked(3)?;
    let p = Profile::ALL.into_iter().find(|p| p.number() == num)?;
    tail.starts_with('/').then_some((p, tail))
}

/// 002's path segments that are 004's or 002's own HTTP endpoints, never a user id.
const RESERVED: [&str; 6] = ["ws", "token", "stats", "rooms", "status", "broadcast"];

fn segment(s: &str) -> Option<String> {
    let s = crate::net::http::percent_decode(s);
    (!s.is_empty() && s.len() <= 128 && !s.contains('/')).then_some(s)
}

/// The seed WebSocket endpoint on `path`, if a served profile has one (SEEDS-COMPAT.md
/// §6.2: precedence top to bottom; `/compat/NNN/…` reaches one profile only).
pub fn route(path: &str, cfg: &Config) -> Option<Route> {
    let (only, path) = match compat_prefix(path) {
        Some((p, rest)) => (Some(p), rest),
        None => (None, path),
    };
    let r = route_bare(path, only)?;
    let wanted = only.is_none_or(|p| p == r.profile);
    (wanted && cfg.compat.serves(r.profile)).then_some(r)
}

fn route_bare(path: &str, only: Option<Profile>) -> Option<Route> {
    let edagent_only = only == Some(Profile::EdAgent);
    let r = |profile, path_user, bound| Route {
        profile,
        path_user,
        bound,
    };
    if let Some(rest) = path.strip_prefix("/v1/conversation/") {
        let conv = rest.strip_suffix("/stream")?;
        return Some(r(Profile::Agixt, None, Some(segment(conv)?)));
    }
    if path == "/ws/chat" {
        return Some(r(Profile::WsChat, None, None));
    }
    if let Some(rest) = path.strip_prefix("/ws/") {
        let (user, session) = rest.split_once('/')?;
        return Some(r(
            Profile::Progress,
            Some(segment(user)?),
            Some(segment(session)?),
        ));
    }
    if path == "/api/v1/ws/ws" && !edagent_only {
        return Some(r(Profile::Rooms, None, None));
    }
    if let Some(user) = path.strip_prefix("/api/v1/ws/") {
        let user = segment(user)?;
        // Under /compat/002 every segment is a user id (the escape from §7's conflict).
        if !edagent_only && RESERVED.contains(&user.as_str()) {
            return None;
        }
        return Some(r(Profile::EdAgent, Some(user), None));
    }
    None
}

/// What one inbound frame of a dialect asks for.
pub enum Inbound {
    /// A native command. With `alias`, its `chat` names a conversation by that alias:
    /// the store resolves it (creating the conversation with it when new) first.
    Native {
        inc: Incoming,
        alias: Option<String>,
    },
    /// Frames the dialect answers with itself (counted against the rate like any message).
    Reply(Vec<Utf8Bytes>),
    /// Not a message of this dialect: its error form, the connection stays open.
    Invalid(DecodeError),
}

/// What one native event becomes on a dialect connection.
#[derive(Default)]
pub struct Out {
    pub frames: Vec<Utf8Bytes>,
    /// Native commands to run for this connection next (as if the client sent them).
    pub then: Vec<Incoming>,
    /// Close the connection after the frames (close code, reason).
    pub close: Option<(u16, &'static str)>,
}

impl Out {
    pub fn push(&mut self, v: Value) {
        self.frames.push(frame(&v));
    }
}

pub fn frame(v: &Value) -> Utf8Bytes {
    Utf8Bytes::from(v.to_string())
}

/// `{"type": ty, "data": data}`: the envelope of 000, 003 and 004.
pub fn envelope(ty: &str, data: Value) -> Value {
    json!({ "type": ty, "data": data })
}

/// A seed chat's conversation reference: a native id is used as is, anything else is an
/// alias of the user's in this profile. Native ids all start with `c_`.
pub fn is_native_id(id: &str) -> bool {
    id.starts_with("c_")
}

/// Per-profile state of one connection.
enum State {
    Agixt(agixt::State),
    WsChat(ws_chat::State),
    EdAgent(edagent::State),
    Progress(progress::State),
    Rooms(rooms::State),
}

/// One connection's dialect.
pub struct Dialect {
    pub profile: Profile,
    state: State,
    aliases: Aliases,
    /// An authentication failure to report in the dialect's form once the socket is open
    /// (the seeds expect an in-band error, not an HTTP status).
    pub auth_failure: Option<(ErrorCode, String)>,
}

/// Aliases remembered per connection (a client juggling more re-resolves, still correct).
const ALIASES_KEPT: usize = 64;

/// The aliases a connection resolved: (alias, conversation id), newest last.
#[derive(Default)]
pub struct Aliases(Vec<(String, String)>);

impl Aliases {
    /// The conversation an alias was resolved to on this connection.
    pub fn alias(&self, alias: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(a, _)| a == alias)
            .map(|(_, c)| c.as_str())
    }

    /// The alias this connection knows `conv` by.
    pub fn alias_of(&self, conv: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(_, c)| c == conv)
            .map(|(a, _)| a.as_str())
    }

    fn learn(&mut self, alias: &str, conv: &str) {
        self.0.retain(|(a, _)| a != alias);
        if self.0.len() >= ALIASES_KEPT {
            self.0.remove(0);
        }
        self.0.push((alias.to_string(), conv.to_string()));
    }
}

impl Dialect {
    pub fn new(route: &Route, cfg: &Config) -> Box<Dialect> {
        let state = match route.profile {
            Profile::Agixt => State::Agixt(agixt::State::new(route.bound.clone())),
            Profile::WsChat => State::WsChat(ws_chat::State::default()),
            Profile::EdAgent => State::EdAgent(edagent::State::default()),
            Profile::Progress => State::Progress(progress::State::new(
                route.path_user.clone().unwrap_or_default(),
                route.bound.clone().unwrap_or_default(),
            )),
            Profile::Rooms => State::Rooms(rooms::State::new(cfg)),
        };
        Box::new(Dialect {
            profile: route.profile,
            state,
            aliases: Aliases::default(),
            auth_failure: None,
        })
    }

    /// The store resolved `alias` to `conv`.
    pub fn learn(&mut self, alias: &str, conv: &str) {
        self.aliases.learn(alias, conv);
    }

    /// One inbound text frame.
    pub fn inbound(&mut self, dec: &mut Decoder, text: &str) -> Inbound {
        let a = &self.aliases;
        match &mut self.state {
            State::Agixt(s) => s.inbound(text),
            State::WsChat(s) => s.inbound(a, text),
            State::EdAgent(s) => s.inbound(a, text),
            State::Progress(s) => s.inbound(a, text),
            State::Rooms(s) => s.inbound(a, dec, text),
        }
    }

    /// One native event.
    pub fn outbound(&mut self, ev: &Event, out: &mut Out) {
        let a = &self.aliases;
        match &mut self.state {
            State::Agixt(s) => s.outbound(ev, out),
            State::WsChat(s) => s.outbound(a, ev, out),
            State::EdAgent(s) => s.outbound(ev, out),
            State::Progress(s) => s.outbound(a, ev, out),
            State::Rooms(s) => s.outbound(ev, out),
        }
    }

    /// The frame a dialect sends before the server closes the connection (002's chosen
    /// `disconnection`), if any.
    pub fn closing(&self, code: u16, reason: &str) -> Option<Utf8Bytes> {
        (self.profile == Profile::EdAgent)
            .then(|| frame(&json!({ "type": "disconnection", "reason": reason, "code": code })))
    }

    /// The message rate on this connection, when the profile has its own.
    pub fn rate_limit(&self, cfg: &Config) -> Option<(u32, std::time::Duration)> {
        (self.profile == Profile::Rooms).then_some((
            cfg.compat.rooms_rate_max_messages,
            cfg.compat.rooms_rate_window,
        ))
    }

    /// The largest upload chunk on this connection, when the profile has its own.
    pub fn max_chunk_bytes(&self, cfg: &Config) -> Option<usize> {
        (self.profile == Profile::Rooms).then_some(cfg.compat.rooms_max_chunk_bytes)
    }
}

/// A JSON object from a text frame, or the reason it is not one.
pub fn parse_object(text: &str) -> Result<Map<String, Value>, &'static str> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("a message must be a JSON object"),
        Err(_) => Err("Invalid JSON format"),
    }
}

/// A native command, with no alias to resolve.
pub fn native(id: Option<String>, msg: crate::protocol::ClientMsg) -> Inbound {
    Inbound::Native {
        inc: Incoming { id, msg },
        alias: None,
    }
}

/// A `type` this dialect does not have (shown shortened).
pub fn unknown_type(id: Option<String>, ty: &str) -> Inbound {
    let shown: String = ty.chars().take(40).collect();
    invalid(id, format!("unknown message type {shown:?}"))
}

pub fn invalid(id: Option<String>, reason: impl Into<String>) -> Inbound {
    Inbound::Invalid(DecodeError {
        id,
        reason: reason.into(),
    })
}

/// A string field, if present and a string.
pub fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

/// An id field that may be a string or a number, as text.
pub fn id_field(m: &Map<String, Value>, k: &str) -> Option<String> {
    match m.get(k)? {
        Value::String(s) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A native chat request with an AI reply, as the seeds' chats all are.
pub fn ai_chat(message: String, conversation_id: Option<String>) -> crate::protocol::ChatRequest {
    crate::protocol::ChatRequest {
        message,
        conversation_id,
        room_id: None,
        agent: None,
        model: None,
        system_prompt: None,
        temperature: None,
        max_tokens: None,
        ai: Some(true),
    }
}

/// A chat into `conv_ref` (native id or alias) from a dialect connection.
pub fn chat_into(d: &Aliases, id: Option<String>, message: String, conv_ref: &str) -> Inbound {
    use crate::protocol::ClientMsg;
    // A blank message is refused natively (EMPTY_MESSAGE) before an alias could make a
    // conversation for it.
    if message.trim().is_empty() {
        return native(id, ClientMsg::Chat(ai_chat(message, None)));
    }
    // A native id as is; an alias this connection already resolved, by its conversation.
    let known = if is_native_id(conv_ref) {
        Some(conv_ref)
    } else {
        d.alias(conv_ref)
    };
    match known {
        Some(conv) => native(
            id,
            ClientMsg::Chat(ai_chat(message, Some(conv.to_string()))),
        ),
        None => Inbound::Native {
            inc: Incoming {
                id,
                msg: ClientMsg::Chat(ai_chat(message, None)),
            },
            alias: Some(conv_ref.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(path: &str) -> Option<(Profile, Option<String>, Option<String>)> {
        route(path, &Config::defaults()).map(|r| (r.profile, r.path_user, r.bound))
    }

    #[test]
    fn seed_paths_route_by_precedence() {
        use Profile::*;
        assert_eq!(
            r("/v1/conversation/c_1/stream"),
            Some((Agixt, None, Some("c_1".into())))
        );
        assert_eq!(r("/ws/chat"), Some((WsChat, None, None)));
        assert_eq!(
            r("/ws/alice/test_session"),
            Some((Progress, Some("alice".into()), Some("test_session".into())))
        );
        assert_eq!(r("/api/v1/ws/ws"), Some((Rooms, None, None)));
        assert_eq!(
            r("/api/v1/ws/bob"),
            Some((EdAgent, Some("bob".into()), None))
        );
        for reserved in RESERVED {
            if reserved != "ws" {
                assert_eq!(r(&format!("/api/v1/ws/{reserved}")), None, "{reserved}");
            }
        }
        // The prefixed form escapes the conflict: a user named `ws`.
        assert_eq!(
            r("/compat/002/api/v1/ws/ws"),
            Some((EdAgent, Some("ws".into()), None))
        );
        assert_eq!(r("/compat/001/ws/chat"), Some((WsChat, None, None)));
        // A prefix reaches its own profile only.
        assert_eq!(r("/compat/000/ws/chat"), None);
        assert_eq!(r("/v1/ws"), None);
        assert_eq!(r("/ws/a/b/c"), None);
        assert_eq!(r("/ws/"), None);
        assert_eq!(r("/v1/conversation//stream"), None);
    }

    #[test]
    fn a_profile_switched_off_has_no_paths() {
        let mut cfg = Config::defaults();
        cfg.compat.profiles.retain(|p| *p != Profile::WsChat);
        assert!(route("/ws/chat", &cfg).is_none());
        assert!(route("/compat/001/ws/chat", &cfg).is_none());
        assert!(route("/api/v1/ws/ws", &cfg).is_some());
    }
}
