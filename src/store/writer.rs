//! The store writer: the only thread that writes to SQLite.
//!
//! Group commit: block for the first job, take whatever else is queued (up to
//! `store.batch_max`), run all of them in one transaction — each inside its own SAVEPOINT
//! so that a refused job (no access, not found) rolls back alone — COMMIT once, and only
//! then hand each job's typed result to the [`Completions`] sink, in queue order (the
//! application acks, fans out and starts replies from there). `seq` numbers are assigned
//! here, so they are dense and ordered per conversation.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use rusqlite::Connection;

use super::db::{p, Db};

use super::cmd::{Completions, WriteCmd, WriteJob, Written};
use super::read::{message_columns, message_row, MessageRow};
use super::{StoreError, WriteMsg};
use crate::metrics::Metrics;
use crate::protocol::{now_ms, ErrorCode};

// Rooms moved to `rooms.rs`; their types keep their old paths.
pub use super::rooms::*;

pub struct WriterState {
    /// Users whose `users` row this process has committed: their row is not written again.
    users_seen: HashSet<String>,
    /// Users recorded by jobs of the open batch that succeeded (committed with the batch).
    users_batch: HashSet<String>,
    /// Users recorded by the running job (gone if its savepoint is rolled back).
    users_job: Vec<String>,
    /// The batch's timestamp (ms since the epoch): one clock reading per batch.
    pub now_ms: i64,
    pub idempotency_window_ms: i64,
}

impl WriterState {
    /// For benches and tools that drive the writer's operations directly.
    pub fn new(idempotency_window_ms: i64) -> WriterState {
        WriterState {
            users_seen: HashSet::new(),
            users_batch: HashSet::new(),
            users_job: Vec::new(),
            now_ms: now_ms(),
            idempotency_window_ms,
        }
    }
}

/// The writer's settings, from `[store]`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub batch_max: usize,
    pub idempotency_window_ms: i64,
}

/// `between_batches` runs after every batch, outside any transaction (SQLite: the WAL
/// restart the checkpointer asks for).
pub fn run<R: 'static, B: Batch>(
    mut conn: B,
    rx: Receiver<WriteMsg<R>>,
    settings: Settings,
    metrics: Arc<Metrics>,
    sink: Arc<dyn Completions<R>>,
    mut between_batches: impl FnMut(&mut B),
) {
    let batch_max = settings.batch_max;
    let mut state = WriterState::new(settings.idempotency_window_ms);
    let mut jobs = Vec::with_capacity(batch_max);
    let mut stop = false;
    while !stop {
        match rx.recv() {
            Ok(WriteMsg::Job(j)) => jobs.push(j),
            Ok(WriteMsg::Stop) | Err(_) => break,
        }
        while jobs.len() < batch_max {
            match rx.try_recv() {
                Ok(WriteMsg::Job(j)) => jobs.push(j),
                Ok(WriteMsg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &mut jobs, &mut state, &metrics, &*sink);
        between_batches(&mut conn);
    }
    // Jobs queued behind the stop marker still get an answer.
    while let Ok(WriteMsg::Job(j)) = rx.try_recv() {
        jobs.push(j);
    }
    if !jobs.is_empty() {
        commit_batch(&mut conn, &mut jobs, &mut state, &metrics, &*sink);
    }
    log::info!("store writer stopped");
}

/// A connection the writer runs batches on: one transaction per batch.
pub trait Batch: Db {
    /// Open the batch's transaction (reconnecting first if the connection was lost).
    fn begin(&mut self) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Abandon the open transaction, if any (errors are moot: the batch failed already).
    fn rollback(&mut self);
}

impl Batch for Connection {
    /// IMMEDIATE: take the write lock at BEGIN. A deferred transaction reads first and
    /// then upgrades, which fails outright (SQLITE_BUSY_SNAPSHOT, no busy wait) if the
    /// checkpointer restarted the WAL in between.
    fn begin(&mut self) -> Result<(), StoreError> {
        self.exec("BEGIN IMMEDIATE", &[]).map(drop)
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        self.exec("COMMIT", &[]).map(drop)
    }
    fn rollback(&mut self) {
        if !self.is_autocommit() {
            let _ = self.exec("ROLLBACK", &[]);
        }
    }
}

/// Times a job that lost a deadlock with another node's writer is run again (its
/// savepoint rolled back, so the other writer goes on and this one waits for it).
const RETRIES: usize = 3;

/// Run one job in its own savepoint: a refused job rolls back alone.
fn run_job(db: &impl Db, state: &mut WriterState, cmd: WriteCmd) -> Result<Written, StoreError> {
    let mut tries = 0;
    loop {
        db.exec("SAVEPOINT job", &[])?;
        let r = execute(db, state, &cmd);
        state.job_done(r.is_ok());
        if r.is_ok() {
            db.exec("RELEASE job", &[])?;
            return r;
        }
        db.exec("ROLLBACK TO job", &[])?;
        db.exec("RELEASE job", &[])?;
        match r {
            Err(e) if e.is_retryable() && tries < RETRIES => tries += 1,
            r => return r,
        }
    }
}

fn commit_batch<R: 'static, B: Batch>(
    conn: &mut B,
    jobs: &mut Vec<WriteJob<R>>,
    state: &mut WriterState,
    metrics: &Metrics,
    sink: &dyn Completions<R>,
) {
    state.now_ms = now_ms();
    let n = jobs.len();
    let mut done: Vec<(Result<Written, StoreError>, R, std::time::Instant)> = Vec::with_capacity(n);
    if let Err(e) = conn.begin() {
        conn.rollback();
        let replies = jobs.drain(..).map(|j| j.reply);
        fail_all(replies, &e, metrics, sink);
        return;
    }
    for job in jobs.drain(..) {
        let r = run_job(conn, state, job.cmd);
        done.push((r, job.reply, job.enqueued));
    }
    let committed = conn.commit();
    if committed.is_err() {
        conn.rollback();
    }
    state.batch_done(committed.is_ok());
    match committed {
        Ok(()) => {
            metrics.store_commits.fetch_add(1, Relaxed);
            metrics.store_writes.fetch_add(n as u64, Relaxed);
            metrics.store_unhealthy.store(0, Relaxed);
            {
                let mut h = metrics.commit_latency_us.lock();
                for (_, _, enq) in &done {
                    let waited = enq.elapsed();
                    let _ = h.record(waited.as_micros().max(1) as u64);
                    metrics.commit_seconds.observe(waited);
                }
            }
            for (r, reply, _) in done {
                match r {
                    Ok(w) => sink.written(reply, Ok(w)),
                    Err(e) => {
                        if !matches!(e, StoreError::Refused(..)) {
                            log::error!("store: write failed: {e}");
                            metrics.store_failures.fetch_add(1, Relaxed);
                        }
                        sink.written(reply, Err(&e))
                    }
                }
            }
        }
        Err(e) => {
            let replies = done.into_iter().map(|(_, reply, _)| reply);
            fail_all(replies, &e, metrics, sink);
        }
    }
}

fn fail_all<R: 'static>(
    replies: impl Iterator<Item = R>,
    err: &StoreError,
    metrics: &Metrics,
    sink: &dyn Completions<R>,
) {
    log::error!("store: batch failed, nothing acknowledged: {err}");
    metrics.store_failures.fetch_add(1, Relaxed);
    metrics.store_unhealthy.store(1, Relaxed);
    for reply in replies {
        sink.written(reply, Err(err));
    }
}

/// Run one command inside the open transaction.
pub fn execute(
    db: &impl Db,
    state: &mut WriterState,
    cmd: &WriteCmd,
) -> Result<Written, StoreError> {
    match cmd {
        WriteCmd::RenameConversation {
            conversation_id,
            user_id,
            admin,
            title,
        } => super::conversations::rename(
            db,
            state.now_ms,
            conversation_id,
            user_id,
            *admin,
            title.as_deref(),
        )
        .map(|()| Written::Renamed {
            conversation_id: conversation_id.clone(),
            title: title.clone(),
        }),
        WriteCmd::DeleteConversation {
            conversation_id,
            user_id,
            admin,
        } => super::conversations::delete(db, conversation_id, user_id, *admin).map(|files| {
            Written::ConversationDeleted {
                conversation_id: conversation_id.clone(),
                files,
            }
        }),
        WriteCmd::ResolveAlias {
            user_id,
            user_name,
            profile,
            alias,
            new_conversation_id,
        } => super::alias::resolve_or_create(
            db,
            state,
            (user_id, user_name),
            *profile,
            alias,
            new_conversation_id,
        )
        .map(|(conversation_id, _)| Written::Alias { conversation_id }),
        WriteCmd::Chat(input) => append_chat(db, state, input).map(|o| Written::Chat(Box::new(o))),
        WriteCmd::MarkRead {
            conversation_id,
            user_id,
            seq,
        } => mark_read(db, conversation_id, user_id, *seq).map(|marker| Written::Read { marker }),
        WriteCmd::JoinRoom {
            user_id,
            user_name,
            admin,
            room_id,
            room_name,
            room_type,
            create_allowed,
            new_conversation_id,
        } => join_room(
            db,
            state,
            user_id,
            user_name,
            *admin,
            room_id,
            room_name.as_deref(),
            *room_type,
            *create_allowed,
            new_conversation_id,
        )
        .map(|(room, _created)| Written::Joined(room)),
        WriteCmd::CreateRoom {
            room_id,
            room_name,
            room_type,
            owner,
            owner_name,
            members,
            ai,
            conversation_id,
        } => create_room(
            db,
            state,
            &NewRoom {
                room_id,
                room_name,
                room_type: *room_type,
                owner,
                owner_name,
                members,
                ai: *ai,
                conversation_id,
            },
        )
        .map(Written::RoomCreated),
        WriteCmd::DeleteRoom {
            room_id,
            user_id,
            admin,
        } => {
            let room = owned_room(db, room_id, user_id, *admin, "delete it")?;
            delete_room(db, state.now_ms, &room.conversation_id)?;
            Ok(Written::RoomDeleted(room))
        }
        WriteCmd::ChangeMember {
            room_id,
            user_id,
            admin,
            member,
            add,
            max_members,
        } => {
            let room = owned_room(db, room_id, user_id, *admin, "change its members")?;
            if *add {
                if member_count(db, &room.conversation_id)? >= i64::from(*max_members) {
                    return Err(StoreError::refused(
                        ErrorCode::BadRequest,
                        "the room is full",
                    ));
                }
                add_member(db, state.now_ms, &room.conversation_id, member)?;
            } else if !remove_member(db, &room.conversation_id, member)? {
                return Err(StoreError::refused(
                    ErrorCode::NotFound,
                    "not a member (or the owner)",
                ));
            }
            Ok(Written::MemberChanged(room))
        }
        WriteCmd::RecordFile(f) => {
            super::files::record(db, state.now_ms, f).map(|()| Written::FileRecorded)
        }
        WriteCmd::Checkpoint {
            message_id,
            content,
        } => checkpoint(db, state.now_ms, *message_id, content).map(|()| Written::Checkpointed),
        WriteCmd::Finalize {
            message_id,
            content,
            status,
            meta_json,
        } => finalize(db, state.now_ms, *message_id, content, status, meta_json)
            .map(Written::Finalized),
    }
}

/// A room that `user` owns (or any room, for an admin); else NOT_FOUND / FORBIDDEN.
fn owned_room(
    db: &impl Db,
    room_id: &str,
    user: &str,
    admin: bool,
    to: &str,
) -> Result<RoomRow, StoreError> {
    let Some(room) = room_by_id(db, room_id)? else {
        return Err(StoreError::refused(
            ErrorCode::NotFound,
            format!("no room {room_id}"),
        ));
    };
    if room.owner != user && !admin {
        return Err(StoreError::refused(
            ErrorCode::Forbidden,
            format!("only the room's owner or an admin can {to}"),
        ));
    }
    Ok(room)
}

fn member_count(db: &impl Db, conv: &str) -> Result<i64, StoreError> {
    Ok(db
        .row(
            "SELECT COUNT(*) FROM members WHERE conversation_id = ?1",
            p![conv],
            |r| r.int(0),
        )?
        .unwrap_or(0))
}

// ---------------------------------------------------------------- operations

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
                EXISTS(SELECT 1 FROM members m WHERE m.conversation_id = c.id AND m.user_id = ?2)
         FROM conversations c WHERE c.id = ?1",
        p![conv, user],
        |r| {
            Ok((
                r.text(0)?,
                r.opt_text(1)?,
                r.opt_text(2)?,
                r.text(3)?,
                r.flag(4)?,
                r.flag(5)?,
                r.flag(6)?,
            ))
        },
    )?;
    match row {
        None | Some((_, _, _, _, _, true, _)) => Err(StoreError::refused(
            ErrorCode::NotFound,
            format!("no conversation {conv}"),
        )),
        Some((kind, room_id, room_type, owner, ai, _, is_member)) => Ok(ConvAccess {
            kind,
            room_id,
            room_type,
            is_member,
            owner,
            ai,
        }),
    }
}

impl WriterState {
    /// The running job ended: what it recorded stays only if its savepoint was released.
    pub fn job_done(&mut self, ok: bool) {
        if ok {
            self.users_batch.extend(self.users_job.drain(..));
        } else {
            self.users_job.clear();
        }
    }

    /// The batch's COMMIT ended: only committed rows count as written.
    pub fn batch_done(&mut self, committed: bool) {
        if committed {
            self.users_seen.extend(self.users_batch.drain());
        } else {
            self.users_batch.clear();
        }
    }

    fn user_recorded(&self, id: &str) -> bool {
        self.users_seen.contains(id)
            || self.users_batch.contains(id)
            || self.users_job.iter().any(|u| u == id)
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
    state.users_job.push(id.to_string());
    Ok(())
}

// The arguments are the columns of one row; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn insert_message(
    db: &impl Db,
    conv: &str,
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
    let (seq, no_preview) = db
        .row(
            "UPDATE conversations SET last_seq = last_seq + 1, message_count = message_count + 1, last_updated = ?2
             WHERE id = ?1 RETURNING last_seq, preview IS NULL",
            p![conv, now],
            |r| Ok((r.int(0)?, r.flag(1)?)),
        )?
        .ok_or_else(|| StoreError::refused(ErrorCode::NotFound, format!("no conversation {conv}")))?;
    if no_preview && role == "user" {
        let preview: String = content.chars().take(100).collect();
        db.exec(
            "UPDATE conversations SET preview = ?2 WHERE id = ?1",
            p![conv, preview.as_str()],
        )?;
    }
    let id = db
        .row(
            "INSERT INTO messages (conversation_id, seq, role, author, author_name, content, status, client_id, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) RETURNING id",
            p![conv, seq, role, author, author_name, content, status, client_id, now],
            |r| r.int(0),
        )?
        .unwrap_or_default();
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
        // Two things keep this statement prepared once (perf showed it re-prepared on every
        // call, ~20-30% of the writer): `client_id IS NOT NULL` is spelled out, so using
        // the partial index does not depend on the bound value (SQLite otherwise re-plans
        // on every bind); and the window is checked here, not with a bound range.
        // Writers on other nodes may hold the same id right now: the first to commit
        // wins, the other then finds its row (a no-op on SQLite's single writer).
        db.serialize(&input.user_id, cid)?;
        let orig = db
            .row(
                concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE author = ?1 AND client_id = ?2 AND client_id IS NOT NULL ORDER BY id DESC LIMIT 1"
                ),
                p![&input.user_id, cid],
                message_row,
            )?
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
    if input.create {
        new_conversation(db, conv, &input.user_id, now)?;
    } else {
        let a = conv_access(db, conv, &input.user_id)?;
        if !a.is_member && !input.is_admin {
            return Err(StoreError::refused(
                ErrorCode::Forbidden,
                "you are not a participant of this conversation",
            ));
        }
        room_id = a.room_id;
    }
    let user_msg = insert_message(
        db,
        conv,
        "user",
        &input.user_id,
        &input.user_name,
        &input.text,
        "complete",
        input.client_id.as_deref(),
        now,
    )?;
    let assistant = match &input.assistant {
        Some(agent) => {
            let row = insert_message(
                db,
                conv,
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
