//! The PostgreSQL backend (cluster mode): the record every node shares.
//!
//! The store's operations are the SQLite ones ([`super::db`]); this file supplies what
//! differs: a connection that prepares each statement once (rewriting `?N` to `$N`),
//! reconnects after PostgreSQL restarts, holds an advisory lock for [`Db::serialize`],
//! stamps a streaming reply with the node that runs it; the schema and its migrations
//! (run under an advisory lock, so nodes starting together do not race); this node's
//! incarnation and lease row; and a small pool for the threads that read outside the
//! reader pool (a reply's context, an upload's access check).
//!
//! Acks still follow COMMIT: PostgreSQL's, here. A lost connection fails the batch
//! (`INTERNAL`, never a false ack) and the next batch reconnects.

use std::collections::HashMap;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::db::{p, Db, Row, Val, WriteRow};
use super::writer::Batch;
use super::StoreError;

/// Numbered migrations; `confab_schema.version` is how many have run. Version 1 is the
/// SQLite schema at its version 5, plus the owner of a streaming reply (`node_id`,
/// `node_inc`) and the nodes' leases.
const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE users (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        first_seen  BIGINT NOT NULL,
        last_seen   BIGINT NOT NULL
    );
    CREATE TABLE conversations (
        id            TEXT PRIMARY KEY,
        owner         TEXT NOT NULL,
        kind          TEXT NOT NULL CHECK (kind IN ('chat', 'room')),
        room_id       TEXT UNIQUE,
        room_name     TEXT,
        room_type     TEXT CHECK (room_type IN ('private', 'shared', 'group')),
        created_at    BIGINT NOT NULL,
        last_updated  BIGINT NOT NULL,
        last_seq      BIGINT NOT NULL DEFAULT 0,
        message_count BIGINT NOT NULL DEFAULT 0,
        preview       TEXT,
        ai            BIGINT NOT NULL DEFAULT 0,
        deleted       BIGINT NOT NULL DEFAULT 0,
        title         TEXT
    );
    CREATE TABLE members (
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        user_id         TEXT NOT NULL,
        role            TEXT NOT NULL DEFAULT 'member',
        joined_at       BIGINT NOT NULL,
        read_seq        BIGINT NOT NULL DEFAULT 0,
        room            BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (conversation_id, user_id)
    );
    CREATE INDEX members_by_user ON members(user_id, conversation_id);
    CREATE INDEX members_rooms ON members(user_id) WHERE room = 1;
    CREATE TABLE messages (
        id              BIGSERIAL PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        seq             BIGINT NOT NULL,
        role            TEXT NOT NULL,
        author          TEXT NOT NULL,
        author_name     TEXT NOT NULL,
        content         TEXT NOT NULL,
        status          TEXT NOT NULL,
        client_id       TEXT,
        meta            TEXT,
        created_at      BIGINT NOT NULL,
        updated_at      BIGINT NOT NULL,
        node_id         TEXT,
        node_inc        BIGINT,
        UNIQUE (conversation_id, seq)
    );
    CREATE INDEX messages_idempotency ON messages(author, client_id) WHERE client_id IS NOT NULL;
    CREATE INDEX messages_streaming ON messages(node_id, node_inc) WHERE status = 'streaming';
    CREATE TABLE files (
        id              TEXT PRIMARY KEY,
        owner           TEXT NOT NULL,
        conversation_id TEXT REFERENCES conversations(id),
        file_name       TEXT NOT NULL,
        mime_type       TEXT NOT NULL,
        size            BIGINT NOT NULL,
        sha256          TEXT NOT NULL,
        created_at      BIGINT NOT NULL
    );
    CREATE TABLE compat_alias (
        user_id         TEXT NOT NULL,
        profile         TEXT NOT NULL,
        alias           TEXT NOT NULL,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        created_at      BIGINT NOT NULL,
        PRIMARY KEY (user_id, profile, alias)
    );
    CREATE INDEX compat_alias_conversation ON compat_alias(conversation_id);
    CREATE TABLE nodes (
        node_id     TEXT PRIMARY KEY,
        inc         BIGINT NOT NULL,
        lease_until BIGINT NOT NULL,
        started_at  BIGINT NOT NULL
    );
"#];

/// Jobs in one writer transaction at most: each runs in a savepoint (a subtransaction),
/// and PostgreSQL caches 64 of them per backend before every snapshot has to look them up
/// in pg_subtrans (PGPROC_MAX_CACHED_SUBXIDS).
pub const MAX_JOBS_PER_BATCH: usize = 60;

/// The advisory lock key migrations run under ("confab" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_6e66_6162;

/// Milliseconds since the epoch on PostgreSQL's clock: leases are compared on one clock,
/// whatever the nodes' own say.
macro_rules! db_now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}
const DB_NOW_MS: &str = db_now_ms!();

/// Renew this node's lease; false when the row is another incarnation's now (a second
/// process with this node id started: this one must not go on as if it were the node).
pub fn renew_lease(db: &PgDb, node: &str, inc: i64, lease: Duration) -> Result<bool, StoreError> {
    Ok(db.exec(
        concat!(
            "UPDATE nodes SET lease_until = ",
            db_now_ms!(),
            " + ?3 WHERE node_id = ?1 AND inc = ?2"
        ),
        p![node, inc, lease.as_millis() as i64],
    )? == 1)
}

/// Nodes whose lease ran out (other than `me`): (node id, incarnation).
pub fn expired_nodes(db: &PgDb, me: &str) -> Result<Vec<(String, i64)>, StoreError> {
    db.rows(
        concat!(
            "SELECT node_id, inc FROM nodes WHERE node_id != ?1 AND lease_until < ",
            db_now_ms!()
        ),
        p![me],
        |r| Ok((r.text(0)?, r.int(1)?)),
    )
}

/// End with `error` the replies a dead node (up to incarnation `inc`) was streaming,
/// keeping the text it last saved. Only one node gets each row (its row lock and the
/// status condition): it announces them. Returns the rows with their room ids.
pub fn fail_replies_of(
    db: &PgDb,
    node: &str,
    inc: i64,
    now: i64,
) -> Result<Vec<(super::read::MessageRow, Option<String>)>, StoreError> {
    let rows = db.rows(
        concat!(
            "UPDATE messages SET status = 'error', updated_at = ?3 WHERE node_id = ?1 AND node_inc <= ?2 AND status = 'streaming' RETURNING ",
            super::read::message_columns!()
        ),
        p![node, inc, now],
        super::read::message_row,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let room = db
            .row(
                "SELECT room_id FROM conversations WHERE id = ?1",
                p![&r.conversation_id],
                |x| x.opt_text(0),
            )?
            .flatten();
        out.push((r, room));
    }
    Ok(out)
}

/// A conflict with another node's transaction: run the job again. A unique violation is
/// one too: two nodes creating the same room at once — PostgreSQL raises it only after
/// the other transaction committed, so the job, run again, finds the room.
pub fn retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

/// The server's own words for an error ("db error" alone says nothing).
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// Which node runs the replies this connection creates (`None`: a reader).
#[derive(Debug, Clone)]
pub struct Owner {
    pub node_id: String,
    pub inc: i64,
}

/// One PostgreSQL connection with its prepared statements.
pub struct PgDb {
    url: String,
    client: std::cell::RefCell<Option<Client>>,
    stmts: std::cell::RefCell<HashMap<&'static str, Statement>>,
    owner: Option<Owner>,
}

fn connect(url: &str) -> Result<Client, StoreError> {
    let mut cfg: postgres::Config = url.parse()?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .application_name("confab");
    Ok(cfg.connect(NoTls)?)
}

/// `?N` → `$N` (no statement of the store has a `?` anywhere else).
fn dollar(sql: &str) -> String {
    sql.replace('?', "$")
}

impl PgDb {
    pub fn open(url: &str, owner: Option<Owner>) -> Result<PgDb, StoreError> {
        Ok(PgDb {
            url: url.to_string(),
            client: std::cell::RefCell::new(Some(connect(url)?)),
            stmts: Default::default(),
            owner,
        })
    }

    /// The node whose replies this connection creates.
    pub fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }

    /// Reconnect if PostgreSQL closed the connection (a restart, a failover).
    fn ensure(&self) -> Result<(), StoreError> {
        let closed = self.client.borrow().as_ref().is_none_or(Client::is_closed);
        if closed {
            self.stmts.borrow_mut().clear();
            *self.client.borrow_mut() = None;
            *self.client.borrow_mut() = Some(connect(&self.url)?);
            log::info!("store: reconnected to PostgreSQL");
        }
        Ok(())
    }

    fn with<T>(
        &self,
        sql: &'static str,
        f: impl FnOnce(&mut Client, &Statement) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = self.client.borrow_mut();
        let client = slot
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no PostgreSQL connection".into()))?;
        let cached = self.stmts.borrow().get(sql).cloned();
        let stmt = match cached {
            Some(s) => s,
            None => {
                let s = client.prepare(&dollar(sql))?;
                self.stmts.borrow_mut().insert(sql, s.clone());
                s
            }
        };
        Ok(f(client, &stmt)?)
    }

    fn simple(&self, sql: &str) -> Result<(), StoreError> {
        let mut slot = self.client.borrow_mut();
        let client = slot
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no PostgreSQL connection".into()))?;
        Ok(client.batch_execute(sql)?)
    }
}

fn params<'a>(p: &'a [Val<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    p.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Db for PgDb {
    fn exec(&self, sql: &'static str, p: &[Val]) -> Result<u64, StoreError> {
        self.with(sql, |c, s| c.execute(s, &params(p)))
    }

    fn rows<T>(
        &self,
        sql: &'static str,
        p: &[Val],
        mut f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = self.with(sql, |c, s| c.query(s, &params(p)))?;
        rows.iter().map(|r| f(r)).collect()
    }

    fn row<T>(
        &self,
        sql: &'static str,
        p: &[Val],
        f: impl FnOnce(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let rows = self.with(sql, |c, s| c.query(s, &params(p)))?;
        rows.first().map(|r| f(r)).transpose()
    }

    fn insert_id(&self, w: &WriteRow, p: &[Val]) -> Result<i64, StoreError> {
        // An INSERT that succeeded returns its row.
        Ok(self.row(w.returning, p, |r| r.int(0))?.unwrap_or_default())
    }

    const ONE_WRITER: bool = false;

    fn reconnect_if_lost(&self) -> Result<(), StoreError> {
        self.ensure()
    }

    /// REPEATABLE READ: one snapshot for every statement until COMMIT (PostgreSQL's
    /// default, READ COMMITTED, takes a new one per statement).
    /// Only a reader calls this, between jobs: never inside the writer's batch.
    fn begin_read(&self) -> Result<bool, StoreError> {
        self.simple("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        Ok(true)
    }

    fn end_read(&self) {
        // After an error inside, COMMIT ends the aborted transaction as a rollback.
        let _ = self.simple("COMMIT");
    }

    fn serialize(&self, a: &str, b: &str) -> Result<(), StoreError> {
        self.row(
            "SELECT pg_advisory_xact_lock(hashtextextended(?1 || chr(1) || ?2, 0))",
            p![a, b],
            |_| Ok(()),
        )
        .map(drop)
    }

    fn stamp_owner(&self, message_id: i64) -> Result<(), StoreError> {
        if let Some(o) = &self.owner {
            self.exec(
                "UPDATE messages SET node_id = ?2, node_inc = ?3 WHERE id = ?1",
                p![message_id, o.node_id.as_str(), o.inc],
            )?;
        }
        Ok(())
    }
}

impl Batch for PgDb {
    fn begin(&mut self) -> Result<(), StoreError> {
        self.ensure()?;
        self.simple("BEGIN")
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        self.simple("COMMIT")
    }
    fn rollback(&mut self) {
        let _ = self.simple("ROLLBACK");
    }
}

impl ToSql for Val<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Val::Null => Ok(IsNull::Yes),
            Val::Text(s) => s.to_sql(ty, out),
            Val::Int(v) => match *ty {
                Type::BOOL => (v != 0).to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl Row for postgres::Row {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        let ty = self.columns().get(i).map(|c| c.type_().clone());
        Ok(match ty {
            Some(Type::INT4) => i64::from(self.try_get::<_, i32>(i)?),
            Some(Type::INT2) => i64::from(self.try_get::<_, i16>(i)?),
            Some(Type::BOOL) => i64::from(self.try_get::<_, bool>(i)?),
            _ => self.try_get::<_, i64>(i)?,
        })
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        match self.columns().get(i).map(|c| c.type_().clone()) {
            Some(Type::BOOL) => Ok(self.try_get(i)?),
            _ => Ok(self.int(i)? != 0),
        }
    }
}

/// Connect, migrate (one node at a time) and register this node's new incarnation.
/// Returns the writer's connection. The replies a previous incarnation of this node was
/// streaming will never finish: they are marked `error` now, as the single box does at
/// start.
pub fn open_writer(url: &str, node_id: &str, lease: Duration) -> Result<PgDb, StoreError> {
    let mut client = connect(url)?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let migrated = migrate(&mut client);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    migrated?;
    let lease_ms = lease.as_millis() as i64;
    let inc: i64 = client
        .query_one(
            &format!(
                "INSERT INTO nodes (node_id, inc, lease_until, started_at) VALUES ($1, 1, {DB_NOW_MS} + $2, {DB_NOW_MS})
                 ON CONFLICT (node_id) DO UPDATE SET inc = nodes.inc + 1, lease_until = EXCLUDED.lease_until, started_at = EXCLUDED.started_at
                 RETURNING inc"
            ),
            &[&node_id, &lease_ms],
        )?
        .get(0);
    let n = client.execute(
        "UPDATE messages SET status = 'error', updated_at = $3 WHERE status = 'streaming' AND node_id = $1 AND node_inc < $2",
        &[&node_id, &inc, &crate::protocol::now_ms()],
    )?;
    if n > 0 {
        log::warn!("store: {n} replies of this node's last run were interrupted; marked as error");
    }
    log::info!("store: PostgreSQL schema ready; node {node_id} incarnation {inc}");
    Ok(PgDb {
        url: url.to_string(),
        client: std::cell::RefCell::new(Some(client)),
        stmts: Default::default(),
        owner: Some(Owner {
            node_id: node_id.to_string(),
            inc,
        }),
    })
}

/// The writers' connections: the first migrates and registers the node (see
/// [`open_writer`]); the others stamp replies with the same incarnation.
pub fn open_writers(
    url: &str,
    node_id: &str,
    lease: Duration,
    n: usize,
) -> Result<Vec<PgDb>, StoreError> {
    let first = open_writer(url, node_id, lease)?;
    let owner = first.owner.clone();
    let mut all = vec![first];
    for _ in 1..n.max(1) {
        all.push(PgDb::open(url, owner.clone())?);
    }
    Ok(all)
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client.batch_execute("CREATE TABLE IF NOT EXISTS confab_schema (version BIGINT NOT NULL)")?;
    let found: i64 = match client.query_opt("SELECT version FROM confab_schema", &[])? {
        Some(r) => r.get(0),
        None => {
            client.execute("INSERT INTO confab_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    let known = MIGRATIONS.len() as i64;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute(
            "UPDATE confab_schema SET version = $1",
            &[&((i + 1) as i64)],
        )?;
        tx.commit()?;
        log::info!("store: migrated the PostgreSQL schema to version {}", i + 1);
    }
    Ok(())
}
