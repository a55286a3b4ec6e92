//! What clients send: typed messages decoded from JSON text frames.

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::MAX_CLIENT_ID;

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
    /// Not on the wire: a dialect (000) asking for a conversation's whole history, oldest
    /// first, in pages, and then to follow it live (`subscribe::backfill`).
    Backfill {
        conversation_id: String,
        after_seq: i64,
    },
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
            ClientMsg::Backfill { .. } => "backfill",
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
