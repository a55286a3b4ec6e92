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
use rusqlite::{params, Connection, OptionalExtension};

use super::cmd::{Completions, WriteCmd, WriteJob, Written};
use super::read::{message_row, MessageRow, MESSAGE_COLUMNS};
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

pub fn run<R: 'static>(
    mut conn: Connection,
    rx: Receiver<WriteMsg<R>>,
    settings: Settings,
    metrics: Arc<Metrics>,
    sink: Arc<dyn Completions<R>>,
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

fn commit_batch<R: 'static>(
    conn: &mut Connection,
    jobs: &mut Vec<WriteJob<R>>,
    state: &mut WriterState,
    metrics: &Metrics,
    sink: &dyn Completions<R>,
) {
    state.now_ms = now_ms();
    let n = jobs.len();
    let mut done: Vec<(Result<Written, StoreError>, R, std::time::Instant)> = Vec::with_capacity(n);
    // IMMEDIATE: take the write lock at BEGIN. A deferred transaction reads first and
    // then upgrades, which fails outright (SQLITE_BUSY_SNAPSHOT, no busy wait) if the
    // checkpointer restarted the WAL in between.
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let replies = jobs.drain(..).map(|j| j.reply);
            fail_all(replies, &StoreError::Sql(e), metrics, sink);
            return;
        }
    };
    // Prepared once per connection (prepare_cached): parsing these per job cost more than
    // the jobs' own statements.
    let savepoint = |sql: &str| -> Result<(), StoreError> {
        tx.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    for job in jobs.drain(..) {
        let r = match savepoint("SAVEPOINT job") {
            Err(e) => Err(e),
            Ok(()) => {
                let r = execute(&tx, state, job.cmd);
                state.job_done(r.is_ok());
                let end = if r.is_ok() {
                    savepoint("RELEASE job")
                } else {
                    savepoint("ROLLBACK TO job").and_then(|_| savepoint("RELEASE job"))
                };
                match end {
                    Ok(()) => r,
                    Err(e) => Err(e),
                }
            }
        };
        done.push((r, job.reply, job.enqueued));
    }
    let committed = tx.commit();
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
            fail_all(replies, &StoreError::Sql(e), metrics, sink);
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
    conn: &Connection,
    state: &mut WriterState,
    cmd: WriteCmd,
) -> Result<Written, StoreError> {
    match cmd {
        WriteCmd::RenameConversation {
            conversation_id,
            user_id,
            admin,
            title,
        } => super::conversations::rename(
            conn,
            state.now_ms,
            &conversation_id,
            &user_id,
            admin,
            title.as_deref(),
        )
        .map(|()| Written::Renamed {
            conversation_id,
            title,
        }),
        WriteCmd::DeleteConversation {
            conversation_id,
            user_id,
            admin,
        } => super::conversations::delete(conn, &conversation_id, &user_id, admin).map(|files| {
            Written::ConversationDeleted {
                conversation_id,
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
            conn,
            state,
            (&user_id, &user_name),
            profile,
            &alias,
            &new_conversation_id,
        )
        .map(|(conversation_id, _)| Written::Alias { conversation_id }),
        WriteCmd::Chat(input) => {
            append_chat(conn, state, &input).map(|o| Written::Chat(Box::new(o)))
        }
        WriteCmd::MarkRead {
            conversation_id,
            user_id,
            seq,
        } => {
            mark_read(conn, &conversation_id, &user_id, seq).map(|marker| Written::Read { marker })
        }
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
            conn,
            state,
            &user_id,
            &user_name,
            admin,
            &room_id,
            room_name.as_deref(),
            room_type,
            create_allowed,
            &new_conversation_id,
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
            conn,
            state,
            &NewRoom {
                room_id: &room_id,
                room_name: &room_name,
                room_type,
                owner: &owner,
                owner_name: &owner_name,
                members: &members,
                ai,
                conversation_id: &conversation_id,
            },
        )
        .map(Written::RoomCreated),
        WriteCmd::DeleteRoom {
            room_id,
            user_id,
            admin,
        } => {
            let room = owned_room(conn, &room_id, &user_id, admin, "delete it")?;
            delete_room(conn, state.now_ms, &room.conversation_id)?;
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
            let room = owned_room(conn, &room_id, &user_id, admin, "change its members")?;
            if add {
                if member_count(conn, &room.conversation_id)? >= i64::from(max_members) {
                    return Err(StoreError::refused(
                        ErrorCode::BadRequest,
                        "the room is full",
                    ));
                }
                add_member(conn, state.now_ms, &room.conversation_id, &member)?;
            } else if !remove_member(conn, &room.conversation_id, &member)? {
                return Err(StoreError::refused(
                    ErrorCode::NotFound,
                    "not a member (or the owner)",
                ));
            }
            Ok(Written::MemberChanged(room))
        }
        WriteCmd::RecordFile(f) => {
            super::files::record(conn, state.now_ms, &f).map(|()| Written::FileRecorded)
        }
        WriteCmd::Checkpoint {
            message_id,
            content,
        } => checkpoint(conn, state.now_ms, message_id, &content).map(|()| Written::Checkpointed),
        WriteCmd::Finalize {
            message_id,
            content,
            status,
            meta_json,
        } => finalize(conn, state.now_ms, message_id, &content, status, &meta_json)
            .map(Written::Finalized),
    }
}

/// A room that `user` owns (or any room, for an admin); else NOT_FOUND / FORBIDDEN.
fn owned_room(
    conn: &Connection,
    room_id: &str,
    user: &str,
    admin: bool,
    to: &str,
) -> Result<RoomRow, StoreError> {
    let Some(room) = room_by_id(conn, room_id)? else {
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

fn member_count(conn: &Connection, conv: &str) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM members WHERE conversation_id = ?1")?
        .query_row([conv], |r| r.get(0))?)
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

pub fn conv_access(conn: &Connection, conv: &str, user: &str) -> Result<ConvAccess, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT c.kind, c.room_id, c.room_type, c.owner, c.ai, c.deleted,
                    EXISTS(SELECT 1 FROM members m WHERE m.conversation_id = c.id AND m.user_id = ?2)
             FROM conversations c WHERE c.id = ?1",
        )?
        .query_row(params![conv, user], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?, r.get::<_, bool>(4)?, r.get::<_, bool>(5)?, r.get::<_, bool>(6)?))
        })
        .optional()?;
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
    conn: &Connection,
    state: &mut WriterState,
    id: &str,
    name: &str,
) -> Result<(), StoreError> {
    if state.user_recorded(id) {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO users (id, name, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT(id) DO UPDATE SET name = excluded.name, last_seen = excluded.last_seen",
    )?
    .execute(params![id, name, state.now_ms])?;
    state.users_job.push(id.to_string());
    Ok(())
}

// The arguments are the columns of one row; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn insert_message(
    conn: &Connection,
    conv: &str,
    role: &str,
    author: &str,
    author_name: &str,
    content: &str,
    status: &str,
    client_id: Option<&str>,
    now: i64,
) -> Result<MessageRow, StoreError> {
    let (seq, no_preview): (i64, bool) = conn
        .prepare_cached(
            "UPDATE conversations SET last_seq = last_seq + 1, message_count = message_count + 1, last_updated = ?2
             WHERE id = ?1 RETURNING last_seq, preview IS NULL",
        )?
        .query_row(params![conv, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if no_preview && role == "user" {
        let preview: String = content.chars().take(100).collect();
        conn.prepare_cached("UPDATE conversations SET preview = ?2 WHERE id = ?1")?
            .execute(params![conv, preview])?;
    }
    conn.prepare_cached(
        "INSERT INTO messages (conversation_id, seq, role, author, author_name, content, status, client_id, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
    )?
    .execute(params![conv, seq, role, author, author_name, content, status, client_id, now])?;
    let id = conn.last_insert_rowid();
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

pub fn append_chat(
    conn: &Connection,
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
        let orig = conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE author = ?1 AND client_id = ?2 AND client_id IS NOT NULL ORDER BY id DESC LIMIT 1"
            ))?
            .query_row(params![input.user_id, cid], message_row)
            .optional()?
            .filter(|m| m.created_at >= now - state.idempotency_window_ms);
        if let Some(orig) = orig {
            let room_id: Option<String> = conn
                .prepare_cached("SELECT room_id FROM conversations WHERE id = ?1")?
                .query_row([&orig.conversation_id], |r| r.get(0))
                .optional()?
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
    touch_user(conn, state, &input.user_id, &input.user_name)?;
    let conv = input.conversation_id.as_str();
    let mut room_id = input.room_id.clone();
    if input.create {
        conn.prepare_cached(
            "INSERT INTO conversations (id, owner, kind, created_at, last_updated) VALUES (?1, ?2, 'chat', ?3, ?3)",
        )?
        .execute(params![conv, input.user_id, now])?;
        conn.prepare_cached("INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES (?1, ?2, 'owner', ?3)")?
            .execute(params![conv, input.user_id, now])?;
    } else {
        let a = conv_access(conn, conv, &input.user_id)?;
        if !a.is_member && !input.is_admin {
            return Err(StoreError::refused(
                ErrorCode::Forbidden,
                "you are not a participant of this conversation",
            ));
        }
        room_id = a.room_id;
    }
    let user_msg = insert_message(
        conn,
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
        Some(agent) => Some(insert_message(
            conn,
            conv,
            "assistant",
            agent,
            agent,
            "",
            "streaming",
            None,
            now,
        )?),
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
    conn: &Connection,
    now: i64,
    message_id: i64,
    content: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE messages SET content = ?2, updated_at = ?3 WHERE id = ?1 AND status = 'streaming'",
    )?
    .execute(params![message_id, content, now])?;
    Ok(())
}

/// Final content, status and metadata of a reply.
pub fn finalize(
    conn: &Connection,
    now: i64,
    message_id: i64,
    content: &str,
    status: &str,
    meta: &str,
) -> Result<MessageRow, StoreError> {
    conn.prepare_cached(
        "UPDATE messages SET content = ?2, status = ?3, meta = ?4, updated_at = ?5 WHERE id = ?1",
    )?
    .execute(params![message_id, content, status, meta, now])?;
    let row = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"
        ))?
        .query_row([message_id], message_row)?;
    conn.prepare_cached("UPDATE conversations SET last_updated = ?2 WHERE id = ?1")?
        .execute(params![row.conversation_id, now])?;
    Ok(row)
}

/// Move a member's read marker forward (never back, never past the last message).
/// Returns the marker after the move.
pub fn mark_read(conn: &Connection, conv: &str, user: &str, seq: i64) -> Result<i64, StoreError> {
    let a = conv_access(conn, conv, user)?;
    if !a.is_member {
        return Err(StoreError::refused(
            ErrorCode::Forbidden,
            "you are not a participant of this conversation",
        ));
    }
    let v: i64 = conn
        .prepare_cached(
            "UPDATE members SET read_seq = MAX(read_seq, MIN(?3, (SELECT last_seq FROM conversations WHERE id = ?1)))
             WHERE conversation_id = ?1 AND user_id = ?2 RETURNING read_seq",
        )?
        .query_row(params![conv, user, seq], |r| r.get(0))?;
    Ok(v)
}
