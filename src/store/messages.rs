//! The writer's operations on messages: a user's chat (access check, idempotency, `seq`
//! assignment, the insert; `append_chat`), a reply's checkpoints and final write, read
//! markers. They run inside the writer's open transaction (`writer.rs`), on either
//! backend (`db.rs`).

use super::db::{p, Db, WriteRow};
use super::read::{message_columns, message_row, MessageRow};
use super::writer::{Idempotency, WriterState};
use super::StoreError;
use crate::protocol::ErrorCode;

/// A user's chat message.
#[derive(Debug, Clone)]
pub struct ChatInput {
    pub user_id: String,
    pub user_name: String,
    pub client_id: Option<String>,
    /// An existing conversation, or the id to give a new one.
    pub conversation_id: String,
    pub create: bool,
    pub room_id: Option<String>,
    pub text: String,
    /// Also create the assistant's (streaming) reply message, authored by this agent.
    pub assistant: Option<String>,
    pub is_admin: bool,
}

#[derive(Debug, Clone)]
pub struct ChatOutcome {
    pub conversation_id: String,
    pub room_id: Option<String>,
    pub user_msg: MessageRow,
    pub assistant: Option<MessageRow>,
    /// The same client `id` was already accepted: this is the original message.
    pub duplicate: bool,
}

pub struct ConvAccess {
    /// The conversation's newest `seq`, and whether it has no preview yet, as read in the
    /// writer's transaction (see [`Db::ONE_WRITER`]).
    pub last: Last,
    pub kind: String,
    pub room_id: Option<String>,
    pub room_type: Option<String>,
    pub is_member: bool,
    pub owner: String,
    pub ai: bool,
}

pub fn conv_access(db: &impl Db, conv: &str, user: &str) -> Result<ConvAccess, StoreError> {
    let row = db.row(
        "SELECT c.kind, c.room_id, c.room_type, c.owner, c.ai, c.deleted,
                EXISTS(SELECT 1 FROM members m WHERE m.conversation_id = c.id AND m.user_id = ?2),
                c.last_seq, c.preview IS NULL
         FROM conversations c WHERE c.id = ?1",
        p![conv, user],
        |r| {
            Ok((
                (r.text(0)?, r.opt_text(1)?, r.opt_text(2)?, r.text(3)?),
                (r.flag(4)?, r.flag(5)?, r.flag(6)?),
                Last {
                    seq: r.int(7)?,
                    no_preview: r.flag(8)?,
                },
            ))
        },
    )?;
    match row {
        None | Some((_, (_, true, _), _)) => Err(StoreError::refused(
            ErrorCode::NotFound,
            format!("no conversation {conv}"),
        )),
        Some(((kind, room_id, room_type, owner), (ai, _, is_member), last)) => Ok(ConvAccess {
            last,
            kind,
            room_id,
            room_type,
            is_member,
            owner,
            ai,
        }),
    }
}

pub(super) fn touch_user(
    db: &impl Db,
    state: &mut WriterState,
    id: &str,
    name: &str,
) -> Result<(), StoreError> {
    if state.user_recorded(id) {
        return Ok(());
    }
    db.exec(
        "INSERT INTO users (id, name, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT(id) DO UPDATE SET name = excluded.name, last_seen = excluded.last_seen",
        p![id, name, state.now_ms],
    )?;
    state.user_written(id);
    Ok(())
}

/// A conversation's newest `seq`, and whether it has no preview yet.
#[derive(Debug, Clone, Copy)]
pub struct Last {
    pub seq: i64,
    pub no_preview: bool,
}

/// A conversation's next `seq` (and whether it has no preview yet).
const NEXT_SEQ: WriteRow = WriteRow {
    returning: "UPDATE conversations SET last_seq = last_seq + 1, message_count = message_count + 1, last_updated = ?2
                WHERE id = ?1 RETURNING last_seq, preview IS NULL",
    plain: "UPDATE conversations SET last_seq = last_seq + 1, message_count = message_count + 1, last_updated = ?2
            WHERE id = ?1",
};

/// A message row; its id back.
const INSERT_MESSAGE: WriteRow = WriteRow {
    returning: "INSERT INTO messages (conversation_id, seq, role, author, author_name, content, status, client_id, created_at, updated_at)
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) RETURNING id",
    plain: "INSERT INTO messages (conversation_id, seq, role, author, author_name, content, status, client_id, created_at, updated_at)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
};

/// Take the conversation's next `seq`. `read` is its [`Last`] as read earlier in this
/// transaction: with one writer (SQLite) it still holds, so the update need not read the
/// row back; otherwise the update's own row (PostgreSQL: its row lock, held to COMMIT,
/// orders the nodes' writers) says what the seq is, and `read` is not used.
fn next_seq<D: Db>(db: &D, conv: &str, now: i64, read: Last) -> Result<Last, StoreError> {
    let not_found = || StoreError::refused(ErrorCode::NotFound, format!("no conversation {conv}"));
    if D::ONE_WRITER {
        if db.exec(NEXT_SEQ.plain, p![conv, now])? == 0 {
            return Err(not_found());
        }
        return Ok(Last {
            seq: read.seq + 1,
            no_preview: read.no_preview,
        });
    }
    db.row(NEXT_SEQ.returning, p![conv, now], |r| {
        Ok(Last {
            seq: r.int(0)?,
            no_preview: r.flag(1)?,
        })
    })?
    .ok_or_else(not_found)
}

// The arguments are the columns of one row; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn insert_message(
    db: &impl Db,
    conv: &str,
    known: Last,
    role: &str,
    author: &str,
    author_name: &str,
    content: &str,
    status: &str,
    client_id: Option<&str>,
    now: i64,
) -> Result<MessageRow, StoreError> {
    // The conversation's row lock (held to COMMIT) orders its writers, also across the
    // nodes of a cluster: seq is dense and a committed seq means every lower one is.
    let Last { seq, no_preview } = next_seq(db, conv, now, known)?;
    if no_preview && role == "user" {
        let preview: String = content.chars().take(100).collect();
        db.exec(
            "UPDATE conversations SET preview = ?2 WHERE id = ?1",
            p![conv, preview.as_str()],
        )?;
    }
    let id = db.insert_id(
        &INSERT_MESSAGE,
        p![
            conv,
            seq,
            role,
            author,
            author_name,
            content,
            status,
            client_id,
            now
        ],
    )?;
    Ok(MessageRow {
        id,
        conversation_id: conv.to_string(),
        seq,
        role: role.to_string(),
        author: author.to_string(),
        author_name: author_name.to_string(),
        content: content.to_string(),
        status: status.to_string(),
        created_at: now,
        updated_at: now,
        meta: None,
    })
}

/// A new chat conversation owned by `user`.
pub fn new_conversation(db: &impl Db, id: &str, user: &str, now: i64) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO conversations (id, owner, kind, created_at, last_updated) VALUES (?1, ?2, 'chat', ?3, ?3)",
        p![id, user, now],
    )?;
    db.exec(
        "INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES (?1, ?2, 'owner', ?3)",
        p![id, user, now],
    )?;
    Ok(())
}

pub fn append_chat(
    db: &impl Db,
    state: &mut WriterState,
    input: &ChatInput,
) -> Result<ChatOutcome, StoreError> {
    let now = state.now_ms;
    // Idempotency: the same user retrying the same client id gets the original message.
    if let Some(cid) = &input.client_id {
        let orig = original(db, state, &input.user_id, cid)?
            .filter(|m| m.created_at >= now - state.idempotency_window_ms);
        if let Some(orig) = orig {
            let room_id = db
                .row(
                    "SELECT room_id FROM conversations WHERE id = ?1",
                    p![&orig.conversation_id],
                    |r| r.opt_text(0),
                )?
                .flatten();
            return Ok(ChatOutcome {
                conversation_id: orig.conversation_id.clone(),
                room_id,
                user_msg: orig,
                assistant: None,
                duplicate: true,
            });
        }
    }
    touch_user(db, state, &input.user_id, &input.user_name)?;
    let conv = input.conversation_id.as_str();
    let mut room_id = input.room_id.clone();
    let last = if input.create {
        new_conversation(db, conv, &input.user_id, now)?;
        Last {
            seq: 0,
            no_preview: true,
        }
    } else {
        let a = conv_access(db, conv, &input.user_id)?;
        if !a.is_member && !input.is_admin {
            return Err(StoreError::refused(
                ErrorCode::Forbidden,
                "you are not a participant of this conversation",
            ));
        }
        room_id = a.room_id;
        a.last
    };
    let user_msg = insert_message(
        db,
        conv,
        last,
        "user",
        &input.user_id,
        &input.user_name,
        &input.text,
        "complete",
        input.client_id.as_deref(),
        now,
    )?;
    if let (Some(cid), Idempotency::Memory(w)) = (&input.client_id, &mut state.idempotency) {
        w.record(&input.user_id, cid, user_msg.id, now);
    }
    let assistant = match &input.assistant {
        Some(agent) => {
            let after_user = Last {
                seq: user_msg.seq,
                no_preview: false,
            };
            let row = insert_message(
                db,
                conv,
                after_user,
                "assistant",
                agent,
                agent,
                "",
                "streaming",
                None,
                now,
            )?;
            db.stamp_owner(row.id)?;
            Some(row)
        }
        None => None,
    };
    Ok(ChatOutcome {
        conversation_id: conv.to_string(),
        room_id,
        user_msg,
        assistant,
        duplicate: false,
    })
}

/// The newest message `author` sent with client id `cid`, if any (the caller checks its
/// age against the window).
fn original(
    db: &impl Db,
    state: &WriterState,
    author: &str,
    cid: &str,
) -> Result<Option<MessageRow>, StoreError> {
    match &state.idempotency {
        Idempotency::Memory(w) => {
            let Some(id) = w.find(author, cid, state.now_ms) else {
                return Ok(None);
            };
            // The window's key is a hash: the row itself says whether it is the one.
            db.row(
                concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE id = ?1 AND author = ?2 AND client_id = ?3"
                ),
                p![id, author, cid],
                message_row,
            )
        }
        Idempotency::Index => {
            // Two things keep this statement prepared once (perf showed it re-prepared on
            // every call, ~20-30% of the writer): `client_id IS NOT NULL` is spelled out,
            // so using the partial index does not depend on the bound value (SQLite
            // otherwise re-plans on every bind); and the window is checked by the caller,
            // not with a bound range. Writers on other nodes may hold the same id right
            // now: the first to commit wins, the other then finds its row.
            db.serialize(author, cid)?;
            db.row(
                concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE author = ?1 AND client_id = ?2 AND client_id IS NOT NULL ORDER BY id DESC LIMIT 1"
                ),
                p![author, cid],
                message_row,
            )
        }
    }
}

/// Save the partial content of a streaming reply.
pub fn checkpoint(
    db: &impl Db,
    now: i64,
    message_id: i64,
    content: &str,
) -> Result<(), StoreError> {
    let changed = db.exec(
        "UPDATE messages SET content = ?2, updated_at = ?3 WHERE id = ?1 AND status = 'streaming'",
        p![message_id, content, now],
    )?;
    if changed == 0 {
        return Err(StoreError::refused(ErrorCode::NotFound, ENDED_ELSEWHERE));
    }
    Ok(())
}

/// A reply's final write found it no longer streaming.
pub const ENDED_ELSEWHERE: &str =
    "the reply was already ended (by another node, or its conversation was deleted)";

/// Final content, status and metadata of a reply.
pub fn finalize(
    db: &impl Db,
    now: i64,
    message_id: i64,
    content: &str,
    status: &str,
    meta: &str,
) -> Result<MessageRow, StoreError> {
    // Only a reply still streaming: in a cluster another node may have ended it already
    // (this node was paused past its lease); a deleted conversation has no row.
    let changed = db.exec(
        "UPDATE messages SET content = ?2, status = ?3, meta = ?4, updated_at = ?5 WHERE id = ?1 AND status = 'streaming'",
        p![message_id, content, status, meta, now],
    )?;
    if changed == 0 {
        return Err(StoreError::refused(ErrorCode::NotFound, ENDED_ELSEWHERE));
    }
    let row = db
        .row(
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE id = ?1"
            ),
            p![message_id],
            message_row,
        )?
        .ok_or_else(|| StoreError::refused(ErrorCode::NotFound, "no such message"))?;
    db.exec(
        "UPDATE conversations SET last_updated = ?2 WHERE id = ?1",
        p![&row.conversation_id, now],
    )?;
    Ok(row)
}

/// Move a member's read marker forward (never back, never past the last message).
/// Returns the marker after the move.
pub fn mark_read(db: &impl Db, conv: &str, user: &str, seq: i64) -> Result<i64, StoreError> {
    let a = conv_access(db, conv, user)?;
    if !a.is_member {
        return Err(StoreError::refused(
            ErrorCode::Forbidden,
            "you are not a participant of this conversation",
        ));
    }
    // Never past the last message, never back: CASE rather than MIN/MAX, which are
    // spelled differently in SQLite and PostgreSQL.
    let last = super::read::last_seq(db, conv)?;
    let v = db
        .row(
            "UPDATE members SET read_seq = CASE WHEN read_seq < ?3 THEN ?3 ELSE read_seq END
             WHERE conversation_id = ?1 AND user_id = ?2 RETURNING read_seq",
            p![conv, user, seq.min(last)],
            |r| r.int(0),
        )?
        .unwrap_or(0);
    Ok(v)
}
