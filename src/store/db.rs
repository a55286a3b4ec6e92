//! The one SQL surface the store's operations are written against, so that each
//! operation — access checks, seq assignment, idempotency, rooms, history — exists once
//! for both backends: SQLite on a single box, PostgreSQL in cluster mode (`pg.rs`).
//!
//! Statements are written once, in the dialect both engines accept: `?N` placeholders
//! (the PostgreSQL side rewrites them to `$N` when it prepares a statement, once),
//! `ON CONFLICT`, `RETURNING`, integer flags (`deleted = 0`), no engine-specific
//! functions. Values are [`Val`]s; rows are read through [`Row`].

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::StoreError;

/// A bound value.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    Int(i64),
    Text(&'a str),
    Null,
}

impl From<i64> for Val<'_> {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}

impl From<bool> for Val<'_> {
    fn from(v: bool) -> Self {
        Val::Int(i64::from(v))
    }
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(v: &'a str) -> Self {
        Val::Text(v)
    }
}

impl<'a> From<&'a String> for Val<'a> {
    fn from(v: &'a String) -> Self {
        Val::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Val<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Val::Null, Val::Text)
    }
}

impl<'a> From<&'a Option<String>> for Val<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().map_or(Val::Null, Val::Text)
    }
}

/// `&[Val]` from values of any of the types above: `db.exec(SQL, p![conv, now])`.
macro_rules! p {
    ($($v:expr),* $(,)?) => { &[$($crate::store::db::Val::from($v)),*] };
}
pub(crate) use p;

/// A result row: columns by position.
pub trait Row {
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    /// An integer flag or a boolean (`EXISTS`, `IS NULL`).
    fn flag(&self, i: usize) -> Result<bool, StoreError>;
}

/// A write that wants something of its row back, in both forms. PostgreSQL runs
/// `returning` (one round trip). SQLite runs `plain`: it builds a `RETURNING` clause's rows
/// in an ephemeral B-tree opened and closed with every statement (perf: ~10% of the store
/// writer on the chat path), and it does not need them — its one writer already knows a
/// row it read in the same transaction ([`Db::ONE_WRITER`]), and an insert's id is the
/// connection's last rowid ([`Db::insert_id`]).
pub struct WriteRow {
    pub returning: &'static str,
    pub plain: &'static str,
}

/// A connection (inside whatever transaction its owner opened).
pub trait Db {
    /// Run a statement; how many rows it changed.
    fn exec(&self, sql: &'static str, p: &[Val]) -> Result<u64, StoreError>;
    /// Every row of a query, each mapped by `f`.
    fn rows<T>(
        &self,
        sql: &'static str,
        p: &[Val],
        f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError>;
    /// The first row of a query, if any, mapped by `f`.
    fn row<T>(
        &self,
        sql: &'static str,
        p: &[Val],
        f: impl FnOnce(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError>;
    /// Run the insert `w` and return the new row's integer id: SQLite runs `w.plain` and
    /// reads the connection's last rowid (no second statement), PostgreSQL `w.returning`.
    fn insert_id(&self, w: &WriteRow, p: &[Val]) -> Result<i64, StoreError>;
    /// True when this connection is the database's only writer (SQLite: one writer
    /// thread). A value read earlier in the writer's transaction then still holds when the
    /// same transaction writes, so a write need not read its row back; PostgreSQL
    /// (several nodes' writers) says false.
    const ONE_WRITER: bool = true;
    /// Hold the pair `(a, b)` until the transaction ends, so that writers on other nodes
    /// handling the same pair run one after the other (a chat retried with the same client
    /// id). SQLite has one writer: nothing to do.
    fn serialize(&self, _a: &str, _b: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Open a read transaction, so that the statements until [`end_read`](Self::end_read)
    /// see one snapshot of the database; false when already inside one (a `Transaction`,
    /// the writer's batch), which is left alone. Use [`in_snapshot`].
    fn begin_read(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Close the read transaction [`begin_read`](Self::begin_read) opened.
    fn end_read(&self) {}
    /// A connection the server closed (a restart) is opened again; before a reader's job.
    fn reconnect_if_lost(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Record that this node runs the streaming reply `message_id` (cluster mode: another
    /// node ends it if this one dies). A single box has nothing to record.
    fn stamp_owner(&self, _message_id: i64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Run `f`'s reads on one snapshot of the database. Statements outside a transaction each
/// see the database as of their own start: a commit between two of them (a message added
/// between a replay's rows and its `last_seq`) makes their answers disagree.
pub fn in_snapshot<D: Db + ?Sized, T>(
    db: &D,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let opened = db.begin_read()?;
    let r = f();
    if opened {
        db.end_read();
    }
    r
}

// ---------------------------------------------------------------- SQLite

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Val::Int(v) => ValueRef::Integer(v),
            Val::Text(s) => ValueRef::Text(s.as_bytes()),
            Val::Null => ValueRef::Null,
        }))
    }
}

impl Row for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.get(i)?)
    }
}

impl Db for rusqlite::Connection {
    fn exec(&self, sql: &'static str, p: &[Val]) -> Result<u64, StoreError> {
        Ok(self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(p.iter()))? as u64)
    }

    fn rows<T>(
        &self,
        sql: &'static str,
        p: &[Val],
        mut f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(p.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(f(r)?);
        }
        Ok(out)
    }

    fn row<T>(
        &self,
        sql: &'static str,
        p: &[Val],
        f: impl FnOnce(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(p.iter()))?;
        match rows.next()? {
            Some(r) => f(r).map(Some),
            None => Ok(None),
        }
    }

    fn insert_id(&self, w: &WriteRow, p: &[Val]) -> Result<i64, StoreError> {
        self.exec(w.plain, p)?;
        Ok(self.last_insert_rowid())
    }

    /// DEFERRED: the snapshot is taken by the first SELECT; a reader never writes.
    fn begin_read(&self) -> Result<bool, StoreError> {
        if !self.is_autocommit() {
            return Ok(false);
        }
        self.exec("BEGIN", &[])?;
        Ok(true)
    }

    fn end_read(&self) {
        let _ = self.exec("COMMIT", &[]);
    }
}

/// A transaction is its connection (benches and tools hold one).
impl Db for rusqlite::Transaction<'_> {
    fn exec(&self, sql: &'static str, p: &[Val]) -> Result<u64, StoreError> {
        (**self).exec(sql, p)
    }

    fn rows<T>(
        &self,
        sql: &'static str,
        p: &[Val],
        f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        (**self).rows(sql, p, f)
    }

    fn row<T>(
        &self,
        sql: &'static str,
        p: &[Val],
        f: impl FnOnce(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        (**self).row(sql, p, f)
    }

    fn insert_id(&self, w: &WriteRow, p: &[Val]) -> Result<i64, StoreError> {
        (**self).insert_id(w, p)
    }
}
