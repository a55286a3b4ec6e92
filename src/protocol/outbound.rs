//! What the server sends: typed events and the views they carry.

use serde::{Deserialize, Serialize};

use super::intern::{interned, interned_opt};

use super::ErrorCode;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserInfo {
    pub id: String,
    pub name: String,
    /// The token's `email` claim, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomSummary {
    pub room_id: String,
    pub room_name: String,
    #[serde(deserialize_with = "interned")]
    pub room_type: &'static str,
    pub conversation_id: String,
    pub last_seq: i64,
    pub unread: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageView {
    pub id: i64,
    pub seq: i64,
    pub role: String,
    pub author: String,
    pub content: String,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    /// A finished reply's `metadata` (as in `complete`: usage, cost, model, timings) and
    /// its `finish_reason`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Participant {
    pub user_id: String,
    pub username: String,
}

/// Every message the server sends on the native protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Connected {
        connection_id: String,
        user: UserInfo,
        server_time: String,
        #[serde(deserialize_with = "interned")]
        protocol: &'static str,
        heartbeat_interval: u64,
        rooms: Vec<RoomSummary>,
    },
    AuthSuccess {
        #[serde(deserialize_with = "interned")]
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
        #[serde(deserialize_with = "interned")]
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
        #[serde(deserialize_with = "interned")]
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
        #[serde(skip_serializing_if = "Option::is_none")]
        room_id: Option<String>,
        /// More was missed than a replay carries: fetch from `first_seq` back over HTTP.
        #[serde(skip_serializing_if = "Option::is_none")]
        more: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        first_seq: Option<i64>,
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
        #[serde(deserialize_with = "interned")]
        status: &'static str,
        recipients: u64,
        timestamp: String,
    },
    RoomJoined {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room_id: String,
        room_name: String,
        #[serde(deserialize_with = "interned")]
        room_type: &'static str,
        conversation_id: String,
        /// Users online in the room: all of them, or `rooms.presence_max_users` of them
        /// in a larger room (then `participant_count` is larger than the list).
        participants: Vec<Participant>,
        /// How many users are online in the room.
        #[serde(default)]
        participant_count: usize,
        joined_at: String,
        last_seq: i64,
    },
    RoomLeft {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        room_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[serde(default, deserialize_with = "interned_opt")]
        reason: Option<&'static str>,
    },
    Presence {
        room_id: String,
        user_id: String,
        username: String,
        #[serde(deserialize_with = "interned")]
        status: &'static str,
    },
    /// The conversation was deleted by its owner: no more events for it.
    ConversationDeleted {
        conversation_id: String,
    },
    /// Everyone online in a room now: replaces the client's view (sent when presence
    /// events may have been lost).
    PresenceList {
        room_id: String,
        /// As `room_joined`'s `participants`: everyone, or a sample of a large room.
        online: Vec<Participant>,
        #[serde(default)]
        online_count: usize,
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UploadEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(deserialize_with = "interned")]
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
