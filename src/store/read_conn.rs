//! [`ReadConn`]: a connection for the threads that read outside the reader pool now and
//! then — an LLM worker loading a reply's context, an upload worker checking access, the
//! cluster bus repairing a gap — on whichever backend the store runs.

use std::sync::Arc;

use rusqlite::Connection;

#[cfg(feature = "cluster")]
use super::pg;
use super::pool::Pool;
use super::{db, read, writer, StoreError};

/// A connection for a thread that reads outside the reader pool now and then (an LLM
/// worker loading a reply's context, an upload worker checking access).
#[derive(Clone)]
pub enum ReadConn {
    Sqlite(Arc<Pool<Connection>>),
    #[cfg(feature = "cluster")]
    Pg(Arc<Pool<pg::PgDb>>),
}

impl ReadConn {
    /// Prior messages for a model's context (see [`read::context`]).
    pub fn context(
        &self,
        conv: &str,
        before_seq: i64,
        n: u32,
        max_chars: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            ReadConn::Sqlite(p) => read::context(&*p.get()?, conv, before_seq, n, max_chars),
            #[cfg(feature = "cluster")]
            ReadConn::Pg(p) => read::context(&*p.get()?, conv, before_seq, n, max_chars),
        }
    }

    /// Up to `limit` messages after `after_seq`, oldest first, and the conversation's room
    /// (cluster mode repairs a gap in what the bus delivered with these).
    pub fn messages_after(
        &self,
        conv: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<(Vec<read::MessageRow>, Option<String>), StoreError> {
        fn read(
            db: &impl db::Db,
            conv: &str,
            after_seq: i64,
            limit: u32,
        ) -> Result<(Vec<read::MessageRow>, Option<String>), StoreError> {
            let rows = read::history(db, conv, None, Some(after_seq), limit)?;
            let room = db
                .row(
                    "SELECT room_id FROM conversations WHERE id = ?1",
                    db::p![conv],
                    |r| r.opt_text(0),
                )?
                .flatten();
            Ok((rows, room))
        }
        match self {
            ReadConn::Sqlite(p) => read(&*p.get()?, conv, after_seq, limit),
            #[cfg(feature = "cluster")]
            ReadConn::Pg(p) => read(&*p.get()?, conv, after_seq, limit),
        }
    }

    /// The nodes running a reply in `conv` now (cluster mode; none on a single box).
    #[cfg(feature = "cluster")]
    pub fn streaming_owners(&self, conv: &str) -> Result<Vec<String>, StoreError> {
        match self {
            ReadConn::Sqlite(_) => Ok(Vec::new()),
            ReadConn::Pg(p) => db::Db::rows(
                &*p.get()?,
                "SELECT DISTINCT node_id FROM messages WHERE conversation_id = ?1 AND status = 'streaming' AND node_id IS NOT NULL",
                db::p![conv],
                |r| r.text(0),
            ),
        }
    }

    /// What `user` may do in `conv` (see [`writer::conv_access`]).
    pub fn conv_access(&self, conv: &str, user: &str) -> Result<writer::ConvAccess, StoreError> {
        match self {
            ReadConn::Sqlite(p) => writer::conv_access(&*p.get()?, conv, user),
            #[cfg(feature = "cluster")]
            ReadConn::Pg(p) => writer::conv_access(&*p.get()?, conv, user),
        }
    }
}
