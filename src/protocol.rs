//! The native wire protocol `confab.v1` (see `docs/protocol.md`).
//!
//! Inbound: one text frame = one JSON object, parsed once with simd-json into a DOM and
//! read field by field into a typed [`ClientMsg`]. Anything else — not JSON, not an
//! object, a missing or mistyped field, an unknown `type` — is a [`DecodeError`] that the
//! connection answers with `BAD_REQUEST` (echoing `id` when it could be read); the
//! connection stays usable. Unknown fields are ignored.
//!
//! Outbound: every server message is a typed [`Event`], encoded once with serde into a
//! string. An event that goes to many connections is encoded once and shared.

use serde::Serialize;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

pub const PROTOCOL: &str = "confab.v1";
/// Longest client `id` echoed back.
pub const MAX_CLIENT_ID: usize = 64;

// ---------------------------------------------------------------- error codes

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    AuthRequired,
    AuthFailed,
    TokenExpired,
    Forbidden,
    BadRequest,
    EmptyMessage,
    MessageTooLarge,
    NotFound,
    RateLimit,
    Busy,
    LlmError,
    UploadTooLarge,
    UploadType,
    ChecksumMismatch,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::AuthRequired,
        ErrorCode::AuthFailed,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::BadRequest,
        ErrorCode::EmptyMessage,
        ErrorCode::MessageTooLarge,
        ErrorCode::NotFound,
        ErrorCode::RateLimit,
        ErrorCode::Busy,
        ErrorCode::LlmError,
        ErrorCode::UploadTooLarge,
        ErrorCode::UploadType,
        ErrorCode::ChecksumMismatch,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthRequired => "AUTH_REQUIRED",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::TokenExpired => "TOKEN_EXPIRED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::EmptyMessage => "EMPTY_MESSAGE",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::RateLimit => "RATE_LIMIT",
            ErrorCode::Busy => "BUSY",
            ErrorCode::LlmError => "LLM_ERROR",
            ErrorCode::UploadTooLarge => "UPLOAD_TOO_LARGE",
            ErrorCode::UploadType => "UPLOAD_TYPE",
            ErrorCode::ChecksumMismatch => "CHECKSUM_MISMATCH",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    pub fn index(self) -> usize {
        ErrorCode::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The HTTP status that goes with this code in JSON error bodies.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::AuthRequired | ErrorCode::AuthFailed | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MessageTooLarge | ErrorCode::UploadTooLarge => 413,
            ErrorCode::RateLimit => 429,
            ErrorCode::Busy => 503,
            ErrorCode::Internal | ErrorCode::LlmError => 500,
            _ => 400,
        }
    }
}

impl crate::net::http::ErrorName for ErrorCode {
    fn name(&self) -> &str {
        self.as_str()
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

// ---------------------------------------------------------------- close codes

pub use crate::net::close;

// ---------------------------------------------------------------- inbound

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub message: String,
    pub conversation_id: Option<String>,
    pub room_id: Option<String>,
    pub agent: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub ai: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomType {
    Private,
    Shared,
    Group,
}

impl RoomType {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomType::Private => "private",
            RoomType::Shared => "shared",
            RoomType::Group => "group",
        }
    }
    pub fn parse(s: &str) -> Option<RoomType> {
        match s {
            "private" => Some(RoomType::Private),
            "shared" => Some(RoomType::Shared),
            "group" => Some(RoomType::Group),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Upload {
    Init {
        file_name: String,
        file_size: u64,
        mime_type: String,
        conversation_id: Option<String>,
        room_id: Option<String>,
    },
    Chunk {
        file_id: String,
        chunk_index: u32,
        total_chunks: u32,
        chunk_data: String,
    },
    Finalize {
        file_id: String,
        checksum: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Auth {
        token: String,
    },
    Ping,
    Chat(ChatRequest),
    Stop {
        conversation_id: String,
    },
    Subscribe {
        conversation_id: String,
        after_seq: i64,
    },
    Unsubscribe {
        conversation_id: String,
    },
    JoinRoom {
        room_id: String,
        room_name: Option<String>,
        room_type: Option<RoomType>,
        after_seq: Option<i64>,
    },
    LeaveRoom {
        room_id: String,
    },
    Typing {
        room_id: Option<String>,
        conversation_id: Option<String>,
        is_typing: bool,
    },
    Read {
        conversation_id: String,
        seq: i64,
    },
    FileUpload(Upload),
}

impl ClientMsg {
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMsg::Auth { .. } => "auth",
            ClientMsg::Ping => "ping",
            ClientMsg::Chat(_) => "chat",
            ClientMsg::Stop { .. } => "stop",
            ClientMsg::Subscribe { .. } => "subscribe",
            ClientMsg::Unsubscribe { .. } => "unsubscribe",
            ClientMsg::JoinRoom { .. } => "join_room",
            ClientMsg::LeaveRoom { .. } => "leave_room",
            ClientMsg::Typing { .. } => "typing",
            ClientMsg::Read { .. } => "read",
            ClientMsg::FileUpload(_) => "file_upload",
        }
    }
}

/// A decoded client message with its optional correlation id.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub id: Option<String>,
    pub msg: ClientMsg,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The client's `id`, when it could be read, so the error can echo it.
    pub id: Option<String>,
    pub reason: String,
}

fn fail<T>(id: &Option<String>, reason: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError {
        id: id.clone(),
        reason: reason.into(),
    })
}

struct Fields<'a, 'v> {
    obj: &'a simd_json::borrowed::Object<'v>,
    id: Option<String>,
}

impl<'a, 'v> Fields<'a, 'v> {
    fn get(&self, k: &str) -> Option<&'a BorrowedValue<'v>> {
        self.obj.get(k).filter(|v| !v.is_null())
    }
    fn opt_str(&self, k: &str) -> Result<Option<String>, DecodeError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_str() {
                Some(s) => Ok(Some(s.to_string())),
                None => fail(&self.id, format!("field `{k}` must be a string")),
            },
        }
    }
    fn str(&self, k: &str) -> Result<String, DecodeError> {
        match self.opt_str(k)? {
            Some(s) => Ok(s),
            None => fail(&self.id, format!("missing field `{k}`")),
        }
    }
    /// An identifier field: a non-empty string (numbers are accepted and turned into text,
    /// since some clients send numeric ids).
    fn opt_ident(&self, k: &str) -> Result<Option<String>, DecodeError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => {
                let s = if let Some(s) = v.as_str() {
                    s.to_string()
                } else if let Some(n) = v.as_i64() {
                    n.to_string()
                } else {
                    return fail(&self.id, format!("field `{k}` must be a string"));
                };
                if s.is_empty() || s.len() > 128 {
                    return fail(&self.id, format!("field `{k}` must be 1 to 128 characters"));
                }
                Ok(Some(s))
            }
        }
    }
    fn ident(&self, k: &str) -> Result<String, DecodeError> {
        match self.opt_ident(k)? {
            Some(s) => Ok(s),
            None => fail(&self.id, format!("missing field `{k}`")),
        }
    }
    fn opt_i64(&self, k: &str) -> Result<Option<i64>, DecodeError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) => Ok(Some(n)),
                None => fail(&self.id, format!("field `{k}` must be an integer")),
            },
        }
    }
    fn opt_u64(&self, k: &str) -> Result<Option<u64>, DecodeError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(n)),
                None => fail(
                    &self.id,
                    format!("field `{k}` must be a non-negative integer"),
                ),
            },
        }
    }
    fn opt_f64(&self, k: &str) -> Result<Option<f64>, DecodeError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.cast_f64() {
                Some(n) if n.is_finite() => Ok(Some(n)),
                _ => fail(&self.id, format!("field `{k}` must be a number")),
            },
        }
    }
    fn opt_bool(&self, k: &str) -> Result<Option<bool>, DecodeError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_bool() {
                Some(b) => Ok(Some(b)),
                None => fail(&self.id, format!("field `{k}` must be true or false")),
            },
        }
    }
}

/// Reusable scratch space for decoding (one per shard).
pub struct Decoder {
    buf: Vec<u8>,
    buffers: simd_json::Buffers,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: Vec::with_capacity(4096),
            buffers: simd_json::Buffers::default(),
        }
    }
}

impl Decoder {
    pub fn decode(&mut self, text: &str) -> Result<Incoming, DecodeError> {
        self.buf.clear();
        self.buf.extend_from_slice(text.as_bytes());
        let value =
            match simd_json::to_borrowed_value_with_buffers(&mut self.buf, &mut self.buffers) {
                Ok(v) => v,
                Err(e) => return fail(&None, format!("not valid JSON: {e}")),
            };
        let Some(obj) = value.as_object() else {
            return fail(&None, "a message must be a JSON object");
        };
        // Read `id` first so every later error can echo it.
        let id = match obj.get("id") {
            None => None,
            Some(v) if v.is_null() => None,
            Some(v) => match (v.as_str(), v.as_i64()) {
                (Some(s), _) if s.len() <= MAX_CLIENT_ID => Some(s.to_string()),
                (None, Some(n)) => Some(n.to_string()),
                (Some(_), _) => {
                    return fail(
                        &None,
                        format!("field `id` is longer than {MAX_CLIENT_ID} characters"),
                    )
                }
                _ => return fail(&None, "field `id` must be a string"),
            },
        };
        let f = Fields { obj, id };
        let ty = match f.get("type").map(|v| v.as_str()) {
            Some(Some(t)) => t,
            Some(None) => return fail(&f.id, "field `type` must be a string"),
            None => return fail(&f.id, "missing field `type`"),
        };
        let msg = match ty {
            "auth" => ClientMsg::Auth {
                token: f.str("token")?,
            },
            "ping" => ClientMsg::Ping,
            "chat" | "message" => ClientMsg::Chat(ChatRequest {
                message: f.str("message")?,
                conversation_id: f.opt_ident("conversation_id")?,
                room_id: f.opt_ident("room_id")?,
                agent: f.opt_str("agent")?,
                model: f.opt_str("model")?,
                system_prompt: f.opt_str("system_prompt")?,
                temperature: f.opt_f64("temperature")?,
                max_tokens: match f.opt_u64("max_tokens")? {
                    Some(n) if n > u32::MAX as u64 => {
                        return fail(&f.id, "field `max_tokens` is too large")
                    }
                    n => n.map(|n| n as u32),
                },
                ai: f.opt_bool("ai")?,
            }),
            "stop" => ClientMsg::Stop {
                conversation_id: f.ident("conversation_id")?,
            },
            "subscribe" => ClientMsg::Subscribe {
                conversation_id: f.ident("conversation_id")?,
                after_seq: f.opt_i64("after_seq")?.unwrap_or(0).max(0),
            },
            "unsubscribe" => ClientMsg::Unsubscribe {
                conversation_id: f.ident("conversation_id")?,
            },
            "join_room" => ClientMsg::JoinRoom {
                room_id: f.ident("room_id")?,
                room_name: f.opt_str("room_name")?,
                room_type: match f.opt_str("room_type")? {
                    None => None,
                    Some(t) => match RoomType::parse(&t) {
                        Some(rt) => Some(rt),
                        None => {
                            return fail(
                                &f.id,
                                "field `room_type` must be private, shared or group",
                            )
                        }
                    },
                },
                after_seq: f.opt_i64("after_seq")?.map(|n| n.max(0)),
            },
            "leave_room" => ClientMsg::LeaveRoom {
                room_id: f.ident("room_id")?,
            },
            "typing" => {
                let room_id = f.opt_ident("room_id")?;
                let conversation_id = f.opt_ident("conversation_id")?;
                if room_id.is_none() && conversation_id.is_none() {
                    return fail(&f.id, "typing needs `room_id` or `conversation_id`");
                }
                ClientMsg::Typing {
                    room_id,
                    conversation_id,
                    is_typing: f.opt_bool("is_typing")?.unwrap_or(true),
                }
            }
            "read" => ClientMsg::Read {
                conversation_id: f.ident("conversation_id")?,
                seq: match f.opt_i64("seq")? {
                    Some(s) if s >= 0 => s,
                    Some(_) => return fail(&f.id, "field `seq` must be >= 0"),
                    None => return fail(&f.id, "missing field `seq`"),
                },
            },
            "file_upload" => ClientMsg::FileUpload(match f.str("upload_type")?.as_str() {
                "init" => Upload::Init {
                    file_name: f.str("file_name")?,
                    file_size: f.opt_u64("file_size")?.ok_or_else(|| DecodeError {
                        id: f.id.clone(),
                        reason: "missing field `file_size`".into(),
                    })?,
                    mime_type: f
                        .opt_str("mime_type")?
                        .unwrap_or_else(|| "application/octet-stream".into()),
                    conversation_id: f.opt_ident("conversation_id")?,
                    room_id: f.opt_ident("room_id")?,
                },
                "chunk" => {
                    let index = f.opt_u64("chunk_index")?;
                    let total = f.opt_u64("total_chunks")?;
                    match (index, total) {
                        (Some(i), Some(t)) if i < t && t <= u32::MAX as u64 => Upload::Chunk {
                            file_id: f.ident("file_id")?,
                            chunk_index: i as u32,
                            total_chunks: t as u32,
                            chunk_data: f.str("chunk_data")?,
                        },
                        (None, _) => return fail(&f.id, "missing field `chunk_index`"),
                        (_, None) => return fail(&f.id, "missing field `total_chunks`"),
                        _ => {
                            return fail(
                                &f.id,
                                "`chunk_index` must be less than `total_chunks` (0-based)",
                            )
                        }
                    }
                }
                "finalize" => Upload::Finalize {
                    file_id: f.ident("file_id")?,
                    checksum: f.str("checksum")?,
                },
                _ => return fail(&f.id, "field `upload_type` must be init, chunk or finalize"),
            }),
            other => {
                let shown: String = other.chars().take(40).collect();
                return fail(&f.id, format!("unknown message type {shown:?}"));
            }
        };
        Ok(Incoming { id: f.id, msg })
    }
}

// ---------------------------------------------------------------- outbound

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserInfo {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomSummary {
    pub room_id: String,
    pub room_name: String,
    pub room_type: &'static str,
    pub conversation_id: String,
    pub last_seq: i64,
    pub unread: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageView {
    pub id: i64,
    pub seq: i64,
    pub role: String,
    pub author: String,
    pub content: String,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct CompletionMeta {
    pub agent: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
    pub first_token_ms: Option<u64>,
    pub response_time_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Participant {
    pub user_id: String,
    pub username: String,
}

/// Every message the server sends on the native protocol.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Connected {
        connection_id: String,
        user: UserInfo,
        server_time: String,
        protocol: &'static str,
        heartbeat_interval: u64,
        rooms: Vec<RoomSummary>,
    },
    AuthSuccess {
        message: &'static str,
        user: UserInfo,
    },
    AuthError {
        message: String,
        code: ErrorCode,
    },
    Heartbeat {
        server_time: String,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        server_time: String,
    },
    Error {
        code: ErrorCode,
        error: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<f64>,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        conversation_id: String,
        message_id: i64,
        seq: i64,
        timestamp: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        duplicate: Option<bool>,
    },
    Progress {
        conversation_id: String,
        message_id: i64,
        step: &'static str,
        message: String,
        percent: u8,
    },
    Token {
        conversation_id: String,
        message_id: i64,
        index: u64,
        token: String,
        /// Deltas merged into this event (slow reader); absent when 1.
        #[serde(skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
    },
    Complete {
        conversation_id: String,
        message_id: i64,
        seq: i64,
        response: String,
        finish_reason: &'static str,
        metadata: CompletionMeta,
    },
    MessageAdded {
        conversation_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        room_id: Option<String>,
        message: MessageView,
        #[serde(skip_serializing_if = "Option::is_none")]
        replayed: Option<bool>,
    },
    MessageUpdated {
        conversation_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        room_id: Option<String>,
        message: MessageView,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        conversation_id: String,
        last_seq: i64,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        conversation_id: String,
    },
    DeliveryConfirmation {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        message_id: i64,
        status: &'static str,
        recipients: u64,
        timestamp: String,
    },
    RoomJoined {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room_id: String,
        room_name: String,
        room_type: &'static str,
        conversation_id: String,
        participants: Vec<Participant>,
        joined_at: String,
        last_seq: i64,
    },
    RoomLeft {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    Presence {
        room_id: String,
        user_id: String,
        username: String,
        status: &'static str,
    },
    Typing {
        #[serde(skip_serializing_if = "Option::is_none")]
        room_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        conversation_id: Option<String>,
        user_id: String,
        username: String,
        is_typing: bool,
    },
    Receipt {
        conversation_id: String,
        user_id: String,
        seq: i64,
        read_at: String,
    },
    /// Every answer to a `file_upload`; which fields are set depends on `upload_type`.
    FileUpload(Box<UploadEvent>),
    System {
        #[serde(skip_serializing_if = "Option::is_none")]
        room_id: Option<String>,
        message: String,
        from: String,
        timestamp: String,
    },
}

/// The body of a `file_upload` event: `upload_type` is `init` (accepted: `file_id`,
/// `max_chunk_bytes`), `chunk` (progress) or `complete` (stored: `url`, `size`, `sha256`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct UploadEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub upload_type: &'static str,
    pub file_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_chunk_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_chunks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_chunks: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_bytes: Option<u64>,
    /// Percent of `file_size` received, 0 to 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Event {
    pub fn error(code: ErrorCode, error: impl Into<String>, id: Option<String>) -> Event {
        Event::Error {
            code,
            error: error.into(),
            id,
            retry_after: None,
        }
    }

    pub fn encode(&self) -> String {
        // Serialising these plain structs cannot fail (no maps with non-string keys, no
        // fallible Serialize impls); an empty object keeps the wire valid regardless.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

// ---------------------------------------------------------------- time

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T01:31:23.123Z`.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Lower-case hex of `bytes` (ids, secrets, SHA-256 digests).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn now_rfc3339() -> String {
    rfc3339_ms(now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    fn decode(s: &str) -> Result<Incoming, DecodeError> {
        Decoder::default().decode(s)
    }

    #[test]
    fn chat_decodes_with_its_optional_fields() {
        let m = decode(r#"{"type":"chat","id":"c1","message":"hi","conversation_id":"abc","temperature":0.5,"max_tokens":10,"extra":1}"#).unwrap();
        assert_eq!(m.id.as_deref(), Some("c1"));
        match m.msg {
            ClientMsg::Chat(c) => {
                assert_eq!(c.message, "hi");
                assert_eq!(c.conversation_id.as_deref(), Some("abc"));
                assert_eq!(c.temperature, Some(0.5));
                assert_eq!(c.max_tokens, Some(10));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_input_is_a_decode_error_not_a_panic() {
        assert!(decode("{not json").is_err());
        assert!(decode("[1,2]").unwrap_err().reason.contains("object"));
        assert!(decode("42").is_err());
        assert!(decode("").is_err());
        let e = decode(r#"{"type":"bogus","id":"x"}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("x"));
        assert!(e.reason.contains("unknown message type"));
        let e =
            decode(r#"{"type":"read","id":"r","conversation_id":"c","seq":"nope"}"#).unwrap_err();
        assert!(e.reason.contains("`seq`"), "{}", e.reason);
        assert_eq!(e.id.as_deref(), Some("r"));
        assert!(decode(r#"{"type":"subscribe"}"#)
            .unwrap_err()
            .reason
            .contains("conversation_id"));
        assert!(decode(r#"{"id":"no-type"}"#)
            .unwrap_err()
            .reason
            .contains("type"));
        let deep = "[".repeat(10_000);
        assert!(decode(&deep).is_err());
    }

    #[test]
    fn events_encode_with_their_type_tag() {
        let e = Event::error(ErrorCode::RateLimit, "slow down", Some("7".into()));
        let s = e.encode();
        assert!(
            s.starts_with(r#"{"type":"error","code":"RATE_LIMIT""#),
            "{s}"
        );
        assert!(s.contains(r#""id":"7""#));
        let t = Event::Token {
            conversation_id: "c".into(),
            message_id: 3,
            index: 0,
            token: "\"q\"".into(),
            count: None,
        }
        .encode();
        assert_eq!(
            t,
            r#"{"type":"token","conversation_id":"c","message_id":3,"index":0,"token":"\"q\""}"#
        );
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_397_483_123), "2026-11-23T01:31:23.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
