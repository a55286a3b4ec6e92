//! Store readers: threads with their own read-only connections (WAL lets them read while
//! the writer commits). They run the typed queries ([`ReadCmd`]) — history, replay,
//! listings, access checks — and hand the results to the [`Completions`] sink.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde::Serialize;

use super::cmd::{Completions, ReadCmd, ReadDone};
use super::db::{in_snapshot, p, Db, Row};
use super::writer::{conv_access, is_member, room_by_id};
use super::{ReadMsg, StoreError};
use crate::metrics::Metrics;
use crate::protocol::{rfc3339_ms, ErrorCode, MessageView, RoomSummary, RoomType};

/// Serve reads on `db` until the queue closes or says stop.
pub fn serve<R: 'static>(db: &impl Db, rx: Receiver<ReadMsg<R>>, sink: Arc<dyn Completions<R>>) {
    while let Ok(ReadMsg::Job(job)) = rx.recv() {
        let result = db
            .reconnect_if_lost()
            .and_then(|()| execute(db, job.cmd, &*sink));
        sink.read(job.reply, result);
    }
}

/// A reader that could not open its connection: logged, and the store reported unhealthy.
pub fn failed_to_open(e: &StoreError, metrics: &Metrics) {
    log::error!("store reader cannot open the database: {e}");
    metrics
        .store_unhealthy
        .store(1, std::sync::atomic::Ordering::Relaxed);
}

fn refused_not_member() -> StoreError {
    StoreError::refused(
        ErrorCode::Forbidden,
        "you are not a participant of this conversation",
    )
}

/// Run one query. `sink` supplies the in-flight replies a replay needs.
pub fn execute<R: 'static>(
    db: &impl Db,
    cmd: ReadCmd,
    sink: &dyn Completions<R>,
) -> Result<ReadDone, StoreError> {
    match cmd {
        ReadCmd::RoomsOf { user_id } => rooms_for_user(db, &user_id).map(ReadDone::Rooms),
        ReadCmd::Replay {
            conversation_id,
            user_id,
            admin,
            after_seq,
            limit,
        } => {
            let a = conv_access(db, &conversation_id, &user_id)?;
            if !a.is_member && !admin {
                return Err(refused_not_member());
            }
            // Snapshots BEFORE rows: see `Completions::in_flight`.
            let snapshots = sink.in_flight(&conversation_id);
            load_replay(db, &conversation_id, after_seq, limit, a.room_id, snapshots)
                .map(ReadDone::Replay)
        }
        ReadCmd::Conversations {
            user_id,
            cursor,
            limit,
            aliases,
        } => {
            let (mut list, next_cursor) = list_conversations(db, &user_id, cursor, limit)?;
            if let Some(profile) = aliases {
                for c in &mut list {
                    c.alias = super::alias::alias_of(db, &user_id, profile, &c.id)?;
                }
            }
            Ok(ReadDone::Conversations { list, next_cursor })
        }
        ReadCmd::History {
            conversation_id,
            alias,
            user_id,
            admin,
            before_seq,
            after_seq,
            limit,
        } => {
            // An alias names the conversation unless the id is a native one.
            let conversation_id = match alias {
                Some(p) if !conversation_id.starts_with("c_") => {
                    super::alias::lookup(db, &user_id, p, &conversation_id)?.ok_or_else(|| {
                        StoreError::refused(
                            crate::protocol::ErrorCode::NotFound,
                            format!("no conversation {conversation_id}"),
                        )
                    })?
                }
                _ => conversation_id,
            };
            let access = conv_access(db, &conversation_id, &user_id)?;
            if !access.is_member && !admin {
                return Err(refused_not_member());
            }
            let (messages, last_seq) = in_snapshot(db, || {
                let messages = history(db, &conversation_id, before_seq, after_seq, limit)?;
                Ok((messages, last_seq(db, &conversation_id).unwrap_or(0)))
            })?;
            let first = messages.first().map(|r| r.seq);
            let has_more = match (after_seq, first) {
                (None, Some(f)) => f > 1,
                _ => messages.len() as u32 == limit,
            };
            Ok(ReadDone::History {
                conversation_id,
                messages,
                last_seq,
                has_more,
                room_id: access.room_id,
            })
        }
        ReadCmd::File {
            file_id,
            user_id,
            admin,
        } => super::files::readable(db, &file_id, &user_id, admin).map(ReadDone::File),
        ReadCmd::Room {
            room_id,
            user_id,
            admin,
        } => {
            let Some(room) = room_by_id(db, &room_id)? else {
                return Err(StoreError::refused(
                    ErrorCode::NotFound,
                    format!("no room {room_id}"),
                ));
            };
            let member = is_member(db, &room.conversation_id, &user_id)?;
            if !member && !admin && room.room_type != RoomType::Shared {
                return Err(StoreError::refused(
                    ErrorCode::Forbidden,
                    "not a member of this room",
                ));
            }
            let members = members(db, &room.conversation_id)?;
            Ok(ReadDone::Room { room, members })
        }
        ReadCmd::RoomById { room_id } => room_by_id(db, &room_id).map(ReadDone::RoomById),
    }
}

/// What a subscriber missed: rows after its `seq`, and the replies still being
/// generated with their content so far.
#[derive(Debug)]
pub struct Replay {
    pub rows: Vec<MessageRow>,
    pub more: bool,
    pub last_seq: i64,
    /// In-flight replies: message id → (content so far, tokens so far).
    pub snapshots: HashMap<i64, (String, u64)>,
    pub room_id: Option<String>,
}

/// Read what a subscriber missed, given the in-flight `snapshots` taken just before.
pub fn load_replay(
    db: &impl Db,
    conv: &str,
    after_seq: i64,
    limit: u32,
    room_id: Option<String>,
    snapshots: HashMap<i64, (String, u64)>,
) -> Result<Replay, StoreError> {
    // One snapshot: `last_seq` says which live `message_added`s the rows cover (see
    // `Subscription::replayed`); read apart, a message committed between the two would be
    // neither in the rows nor delivered live.
    let ((mut rows, more), last_seq) = in_snapshot(db, || {
        Ok((replay(db, conv, after_seq, limit)?, last_seq(db, conv)?))
    })?;
    // A reply in flight that the client already "has" (seq <= after_seq) is replayed too:
    // the client holds only part of it.
    for mid in snapshots.keys() {
        if !rows.iter().any(|r| r.id == *mid) {
            if let Some(r) = db.row(
                concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE id = ?1 AND status = 'streaming'"
                ),
                p![*mid],
                message_row,
            )? {
                rows.push(r);
            }
        }
    }
    rows.sort_by_key(|r| r.seq);
    Ok(Replay {
        rows,
        more,
        last_seq,
        snapshots,
        room_id,
    })
}

/// The columns [`message_row`] reads, for `concat!` into a statement.
macro_rules! message_columns {
    () => {
        "id, conversation_id, seq, role, author, author_name, content, status, created_at, updated_at, meta"
    };
}
pub(crate) use message_columns;

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub id: i64,
    pub conversation_id: String,
    pub seq: i64,
    pub role: String,
    pub author: String,
    pub author_name: String,
    pub content: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// A finished reply's usage, cost, model and finish reason (JSON), if any.
    pub meta: Option<String>,
}

pub fn message_row(r: &dyn Row) -> Result<MessageRow, StoreError> {
    Ok(MessageRow {
        id: r.int(0)?,
        conversation_id: r.text(1)?,
        seq: r.int(2)?,
        role: r.text(3)?,
        author: r.text(4)?,
        author_name: r.text(5)?,
        content: r.text(6)?,
        status: r.text(7)?,
        created_at: r.int(8)?,
        updated_at: r.int(9)?,
        meta: r.opt_text(10)?,
    })
}

impl MessageRow {
    pub fn view(&self) -> MessageView {
        MessageView {
            id: self.id,
            seq: self.seq,
            role: self.role.clone(),
            author: self.author.clone(),
            content: self.content.clone(),
            status: self.status.clone(),
            created_at: rfc3339_ms(self.created_at),
            updated_at: rfc3339_ms(self.updated_at),
            meta: self
                .meta
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
        }
    }
}

/// Messages with seq > `after_seq`, at most `limit`, oldest first. When more than `limit`
/// match, the NEWEST `limit` are returned and the flag says so.
pub fn replay(
    db: &impl Db,
    conv: &str,
    after_seq: i64,
    limit: u32,
) -> Result<(Vec<MessageRow>, bool), StoreError> {
    let mut rows = db.rows(
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq DESC LIMIT ?3"
        ),
        p![conv, after_seq, limit as i64 + 1],
        message_row,
    )?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    rows.reverse();
    Ok((rows, more))
}

pub fn last_seq(db: &impl Db, conv: &str) -> Result<i64, StoreError> {
    Ok(db
        .row(
            "SELECT last_seq FROM conversations WHERE id = ?1",
            p![conv],
            |r| r.int(0),
        )?
        .unwrap_or(0))
}

/// A page of history in seq order: the newest `limit` before `before_seq` (or after
/// `after_seq`, oldest first).
pub fn history(
    db: &impl Db,
    conv: &str,
    before_seq: Option<i64>,
    after_seq: Option<i64>,
    limit: u32,
) -> Result<Vec<MessageRow>, StoreError> {
    if let Some(after) = after_seq {
        return db.rows(
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ),
            p![conv, after, limit as i64],
            message_row,
        );
    }
    let mut rows = db.rows(
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE conversation_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
        ),
        p![conv, before_seq.unwrap_or(i64::MAX), limit as i64],
        message_row,
    )?;
    rows.reverse();
    Ok(rows)
}

#[derive(Debug, Serialize)]
pub struct ConversationSummary {
    pub id: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_name: Option<String>,
    pub message_count: i64,
    pub last_seq: i64,
    pub preview: Option<String>,
    pub created_at: String,
    pub last_updated: String,
    pub unread: i64,
    /// Set by its owner (`PATCH /v1/conversations/{id}`); `null`: show the preview.
    pub title: Option<String>,
    /// The user's alias for it in a dialect profile (asked for by that dialect's HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// The user's conversations, most recent first. `cursor` = the `next_cursor` of the
/// previous page (`<last_updated>:<id>`).
pub fn list_conversations(
    db: &impl Db,
    user: &str,
    cursor: Option<(i64, String)>,
    limit: u32,
) -> Result<(Vec<ConversationSummary>, Option<String>), StoreError> {
    // No cursor: (MAX, "") — every row has last_updated < MAX.
    let (cu, cid) = cursor.unwrap_or((i64::MAX, String::new()));
    let rows: Vec<(ConversationSummary, i64)> = db.rows(
        "SELECT c.id, c.kind, c.room_id, c.room_name, c.message_count, c.last_seq, c.preview, c.created_at, c.last_updated, m.read_seq, c.title
         FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.user_id = ?1 AND c.deleted = 0
           AND (c.last_updated < ?2 OR (c.last_updated = ?2 AND c.id < ?3))
         ORDER BY c.last_updated DESC, c.id DESC LIMIT ?4",
        p![user, cu, cid.as_str(), limit as i64 + 1],
        |r| {
            let last_seq = r.int(5)?;
            let read = r.int(9)?;
            let updated = r.int(8)?;
            Ok((
                ConversationSummary {
                    id: r.text(0)?,
                    kind: r.text(1)?,
                    room_id: r.opt_text(2)?,
                    room_name: r.opt_text(3)?,
                    message_count: r.int(4)?,
                    last_seq,
                    preview: r.opt_text(6)?,
                    created_at: rfc3339_ms(r.int(7)?),
                    last_updated: rfc3339_ms(updated),
                    unread: (last_seq - read).max(0),
                    alias: None,
                    title: r.opt_text(10)?,
                },
                updated,
            ))
        },
    )?;
    let more = rows.len() > limit as usize;
    let mut out: Vec<(ConversationSummary, i64)> = rows;
    out.truncate(limit as usize);
    let next = if more {
        out.last().map(|(c, u)| format!("{u}:{}", c.id))
    } else {
        None
    };
    Ok((out.into_iter().map(|(c, _)| c).collect(), next))
}

pub fn parse_cursor(s: &str) -> Option<(i64, String)> {
    let (u, id) = s.split_once(':')?;
    Some((u.parse().ok()?, id.to_string()))
}

/// The user's rooms with their last seq and unread count (for `connected`).
pub fn rooms_for_user(db: &impl Db, user: &str) -> Result<Vec<RoomSummary>, StoreError> {
    db.rows(
        "SELECT c.room_id, c.room_name, c.room_type, c.id, c.last_seq, m.read_seq
         FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.user_id = ?1 AND m.room = 1 AND c.deleted = 0
         ORDER BY c.last_updated DESC LIMIT 500",
        p![user],
        |r| {
            let last_seq = r.int(4)?;
            let read = r.int(5)?;
            let rt = r.text(2)?;
            Ok(RoomSummary {
                room_id: r.text(0)?,
                room_name: r.text(1)?,
                room_type: RoomType::parse(&rt).unwrap_or(RoomType::Shared).as_str(),
                conversation_id: r.text(3)?,
                last_seq,
                unread: (last_seq - read).max(0),
            })
        },
    )
}

pub fn members(db: &impl Db, conv: &str) -> Result<Vec<(String, String)>, StoreError> {
    db.rows(
        "SELECT m.user_id, COALESCE(u.name, m.user_id) FROM members m LEFT JOIN users u ON u.id = m.user_id
         WHERE m.conversation_id = ?1 ORDER BY m.joined_at LIMIT 10000",
        p![conv],
        |r| Ok((r.text(0)?, r.text(1)?)),
    )
}

/// Prior messages for a model's context: up to `n` before `before_seq`, oldest first,
/// newest kept when over `max_chars`.
pub fn context(
    db: &impl Db,
    conv: &str,
    before_seq: i64,
    n: u32,
    max_chars: usize,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = db.rows(
        "SELECT role, content FROM messages WHERE conversation_id = ?1 AND seq < ?2 AND content != ''
         AND role IN ('user', 'assistant', 'system') ORDER BY seq DESC LIMIT ?3",
        p![conv, before_seq, n as i64],
        |r| Ok((r.text(0)?, r.text(1)?)),
    )?;
    let mut total = 0;
    let mut kept = Vec::new();
    for (role, content) in rows {
        total += content.len();
        if total > max_chars && !kept.is_empty() {
            break;
        }
        kept.push((role, content));
    }
    kept.reverse();
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use rusqlite::Connection;

    use super::*;
    use crate::store::db::{Val, WriteRow};

    /// A reader connection whose first read of messages is followed by a commit on another
    /// connection: what a busy writer does between a reader's statements.
    struct Interleaved {
        reader: Connection,
        writer: Connection,
        fired: Cell<bool>,
    }

    impl Interleaved {
        fn commit_a_message_once(&self, after: &str) {
            if after.contains("FROM messages") && !self.fired.replace(true) {
                self.writer
                    .execute_batch(
                        "INSERT INTO messages (conversation_id, seq, role, author, author_name, content, status, created_at, updated_at)
                         VALUES ('c1', 4, 'user', 'u', 'u', 'late', 'done', 0, 0);
                         UPDATE conversations SET last_seq = 4 WHERE id = 'c1';",
                    )
                    .unwrap();
            }
        }
    }

    impl Db for Interleaved {
        fn exec(&self, sql: &'static str, p: &[Val]) -> Result<u64, StoreError> {
            self.reader.exec(sql, p)
        }
        fn rows<T>(
            &self,
            sql: &'static str,
            p: &[Val],
            f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
        ) -> Result<Vec<T>, StoreError> {
            let out = self.reader.rows(sql, p, f);
            self.commit_a_message_once(sql);
            out
        }
        fn row<T>(
            &self,
            sql: &'static str,
            p: &[Val],
            f: impl FnOnce(&dyn Row) -> Result<T, StoreError>,
        ) -> Result<Option<T>, StoreError> {
            let out = self.reader.row(sql, p, f);
            self.commit_a_message_once(sql);
            out
        }
        fn insert_id(&self, w: &WriteRow, p: &[Val]) -> Result<i64, StoreError> {
            self.reader.insert_id(w, p)
        }
        fn begin_read(&self) -> Result<bool, StoreError> {
            self.reader.begin_read()
        }
        fn end_read(&self) {
            self.reader.end_read()
        }
    }

    fn conversation_with_three_messages(name: &str) -> (std::path::PathBuf, Interleaved) {
        let dir = std::env::temp_dir().join(format!("confab-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let writer = crate::store::open_writer(&path, false, 4096).unwrap();
        writer
            .execute_batch(
                "INSERT INTO conversations (id, owner, kind, created_at, last_updated, last_seq) VALUES ('c1', 'u', 'chat', 0, 0, 3);
                 INSERT INTO messages (conversation_id, seq, role, author, author_name, content, status, created_at, updated_at) VALUES
                   ('c1', 1, 'user', 'u', 'u', 'a', 'done', 0, 0),
                   ('c1', 2, 'user', 'u', 'u', 'b', 'done', 0, 0),
                   ('c1', 3, 'user', 'u', 'u', 'c', 'done', 0, 0);",
            )
            .unwrap();
        let reader = crate::store::open_reader(&path).unwrap();
        let db = Interleaved {
            reader,
            writer,
            fired: Cell::new(false),
        };
        (dir, db)
    }

    /// The replay's `last_seq` says which live `message_added`s its rows cover: a message
    /// committed between the two reads must be in both or in neither (else the subscriber
    /// drops its live copy as covered and never sees it).
    #[test]
    fn a_replay_reads_its_rows_and_last_seq_from_one_snapshot() {
        let (dir, db) = conversation_with_three_messages("replay-snapshot");
        let r = load_replay(&db, "c1", 0, 100, None, HashMap::new()).unwrap();
        let rows_up_to = r.rows.iter().map(|m| m.seq).max().unwrap();
        assert_eq!((rows_up_to, r.last_seq), (3, 3));
        assert!(db.fired.get(), "the interleaved commit ran");
        // The next read sees the message: the snapshot was released.
        let r = load_replay(&db, "c1", 3, 100, None, HashMap::new()).unwrap();
        assert_eq!((r.rows.len(), r.last_seq), (1, 4));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_history_page_reads_its_rows_and_last_seq_from_one_snapshot() {
        struct Sink;
        impl Completions<()> for Sink {
            fn written(&self, _: (), _: Result<crate::store::cmd::Written, &StoreError>) {}
            fn read(&self, _: (), _: Result<ReadDone, StoreError>) {}
            fn in_flight(&self, _: &str) -> HashMap<i64, (String, u64)> {
                HashMap::new()
            }
        }
        let (dir, db) = conversation_with_three_messages("history-snapshot");
        let cmd = ReadCmd::History {
            conversation_id: "c1".into(),
            alias: None,
            user_id: "u".into(),
            admin: true,
            before_seq: None,
            after_seq: Some(0),
            limit: 100,
        };
        let Ok(ReadDone::History {
            messages, last_seq, ..
        }) = execute(&db, cmd, &Sink)
        else {
            panic!("history failed");
        };
        let rows_up_to = messages.iter().map(|m| m.seq).max().unwrap();
        assert_eq!((rows_up_to, last_seq), (3, 3));
        assert!(db.fired.get(), "the interleaved commit ran");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
