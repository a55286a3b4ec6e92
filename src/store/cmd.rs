//! What the store is asked and what it answers: typed commands in, typed results out.
//!
//! Every job carries an opaque `reply` chosen by whoever asked (the application's record
//! of who is waiting and what comes next). After the writer's batch COMMIT — or its
//! failure — and after a reader's query, the store hands `(reply, result)` to the
//! [`Completions`] it was started with. The store runs no caller code of its own and
//! knows nothing of connections, shards or the protocol's sessions.

use std::collections::HashMap;
use std::time::Instant;

use super::read::{ConversationSummary, MessageRow, Replay};
use super::writer::{ChatInput, ChatOutcome, RoomRow};
use super::StoreError;
use crate::protocol::{RoomSummary, RoomType};

/// A write, run inside the batch transaction in its own savepoint.
#[derive(Debug)]
pub enum WriteCmd {
    /// A user message (and, with an assistant, its streaming reply row).
    Chat(ChatInput),
    /// Move a member's read marker forward.
    MarkRead {
        conversation_id: String,
        user_id: String,
        seq: i64,
    },
    /// Join a room, creating it when allowed.
    JoinRoom {
        user_id: String,
        user_name: String,
        admin: bool,
        room_id: String,
        room_name: Option<String>,
        room_type: Option<RoomType>,
        create_allowed: bool,
        new_conversation_id: String,
    },
    CreateRoom {
        room_id: String,
        room_name: String,
        room_type: RoomType,
        owner: String,
        owner_name: String,
        members: Vec<String>,
        ai: bool,
        conversation_id: String,
    },
    /// Delete a room: its owner or an admin.
    DeleteRoom {
        room_id: String,
        user_id: String,
        admin: bool,
    },
    /// Add or remove a member: the room's owner or an admin; `max_members` caps adding.
    ChangeMember {
        room_id: String,
        user_id: String,
        admin: bool,
        member: String,
        add: bool,
        max_members: u32,
    },
    /// Record a stored upload (access to its conversation is checked again).
    RecordFile(FileRecord),
    /// Title a conversation (owner or admin).
    RenameConversation {
        conversation_id: String,
        user_id: String,
        admin: bool,
        title: Option<String>,
    },
    /// Delete a conversation and everything in it (owner or admin).
    DeleteConversation {
        conversation_id: String,
        user_id: String,
        admin: bool,
    },
    /// The conversation a dialect's alias names, created with the alias when missing.
    ResolveAlias {
        user_id: String,
        user_name: String,
        profile: crate::config::Profile,
        alias: String,
        new_conversation_id: String,
    },
    /// Save a streaming reply's content so far.
    Checkpoint { message_id: i64, content: String },
    /// A reply's final content, status and metadata.
    Finalize {
        message_id: i64,
        content: String,
        status: &'static str,
        meta_json: String,
    },
}

impl WriteCmd {
    /// What picks the writer a command goes to when there are several: its conversation
    /// (or room, or reply), so that one conversation's writes keep their order.
    pub fn lane_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match self {
            WriteCmd::Chat(c) => c.conversation_id.hash(&mut h),
            WriteCmd::MarkRead {
                conversation_id, ..
            }
            | WriteCmd::RenameConversation {
                conversation_id, ..
            }
            | WriteCmd::DeleteConversation {
                conversation_id, ..
            } => conversation_id.hash(&mut h),
            WriteCmd::JoinRoom { room_id, .. }
            | WriteCmd::CreateRoom { room_id, .. }
            | WriteCmd::DeleteRoom { room_id, .. }
            | WriteCmd::ChangeMember { room_id, .. } => room_id.hash(&mut h),
            WriteCmd::RecordFile(f) => f.file_id.hash(&mut h),
            WriteCmd::ResolveAlias { user_id, alias, .. } => (user_id, alias).hash(&mut h),
            WriteCmd::Checkpoint { message_id, .. } | WriteCmd::Finalize { message_id, .. } => {
                message_id.hash(&mut h)
            }
        }
        h.finish()
    }
}

#[derive(Debug, Clone)]
pub struct FileRecord {
    pub file_id: String,
    pub owner: String,
    pub owner_admin: bool,
    pub conversation_id: Option<String>,
    pub file_name: String,
    pub mime_type: String,
    pub size: u64,
    pub sha256: String,
}

/// What a committed write produced.
#[derive(Debug)]
pub enum Written {
    Chat(Box<ChatOutcome>),
    /// The read marker now stands here.
    Read {
        marker: i64,
    },
    Joined(RoomRow),
    RoomCreated(RoomRow),
    RoomDeleted(RoomRow),
    MemberChanged(RoomRow),
    FileRecorded,
    Renamed {
        conversation_id: String,
        title: Option<String>,
    },
    /// A conversation is gone; these files' bytes are to be removed.
    ConversationDeleted {
        conversation_id: String,
        files: Vec<String>,
    },
    /// The conversation an alias names.
    Alias {
        conversation_id: String,
    },
    Checkpointed,
    Finalized(MessageRow),
}

/// A read, run on a reader thread with its own connection.
#[derive(Debug)]
pub enum ReadCmd {
    /// The rooms a user belongs to, with unread counts.
    RoomsOf { user_id: String },
    /// What a subscriber missed after `after_seq` (access checked).
    Replay {
        conversation_id: String,
        user_id: String,
        admin: bool,
        after_seq: i64,
        limit: u32,
    },
    Conversations {
        user_id: String,
        cursor: Option<(i64, String)>,
        limit: u32,
        /// Also give each conversation's alias in this dialect profile.
        aliases: Option<crate::config::Profile>,
    },
    /// A page of history (access checked).
    History {
        /// A conversation id, or (with `alias`) an alias of the user's in that profile.
        conversation_id: String,
        alias: Option<crate::config::Profile>,
        user_id: String,
        admin: bool,
        before_seq: Option<i64>,
        after_seq: Option<i64>,
        limit: u32,
    },
    /// A file's row, if `user_id` may read it.
    File {
        file_id: String,
        user_id: String,
        admin: bool,
    },
    /// A room with its members, if `user_id` may see it.
    Room {
        room_id: String,
        user_id: String,
        admin: bool,
    },
    /// A room by id, no access check (admin broadcast).
    RoomById { room_id: String },
}

/// What a read found.
#[derive(Debug)]
pub enum ReadDone {
    Rooms(Vec<RoomSummary>),
    Replay(Replay),
    Conversations {
        list: Vec<ConversationSummary>,
        next_cursor: Option<String>,
    },
    History {
        conversation_id: String,
        messages: Vec<MessageRow>,
        last_seq: i64,
        has_more: bool,
        room_id: Option<String>,
    },
    File(FileRow),
    Room {
        room: RoomRow,
        /// (user id, display name)
        members: Vec<(String, String)>,
    },
    RoomById(Option<RoomRow>),
}

#[derive(Debug, Clone)]
pub struct FileRow {
    pub file_id: String,
    pub file_name: String,
    pub mime_type: String,
    pub size: u64,
    pub sha256: String,
}

/// A write waiting for the writer.
pub struct WriteJob<R> {
    pub cmd: WriteCmd,
    pub reply: R,
    pub enqueued: Instant,
}

/// A read waiting for a reader.
pub struct ReadJob<R> {
    pub cmd: ReadCmd,
    pub reply: R,
}

/// Where results go. The writer calls `written` once per job, in queue order, after the
/// batch's COMMIT (or with the error that sank it); readers call `read`.
pub trait Completions<R>: Send + Sync + 'static {
    fn written(&self, reply: R, result: Result<Written, &StoreError>);
    fn read(&self, reply: R, result: Result<ReadDone, StoreError>);
    /// Replies being generated in `conversation_id` right now: message id → (content so
    /// far, tokens so far). A replay takes this BEFORE it reads rows (see
    /// `generation.rs` for why that order leaves no gap and no duplicate).
    fn in_flight(&self, conversation_id: &str) -> HashMap<i64, (String, u64)>;
}
