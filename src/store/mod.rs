//! Storage: one SQLite file (WAL) under the data dir.
//!
//! - **One writer thread** ([`writer`]) owns the only write connection. It drains its
//!   bounded queue, runs the whole batch in ONE transaction (each job in its own
//!   savepoint, so one bad job does not sink the batch) and only after COMMIT runs the
//!   jobs' follow-ups: acks, fan-out, starting generations. An ack therefore means
//!   "committed": it survives `kill -9`. If COMMIT fails, every job of the batch gets its
//!   failure path (an `INTERNAL` error), never a false ack, and `/health` turns 503.
//! - **Readers** ([`read`]): a small pool of threads with their own read-only connections
//!   for history, replay and lists. Shards never touch SQLite.
//!
//! Schema changes are numbered migrations tracked in `PRAGMA user_version`; a database
//! from a newer binary is refused (exit code 2) rather than misread.

pub mod alias;
mod checkpoint;
pub mod cmd;
pub mod conversations;
pub mod db;
pub mod files;
pub mod idempotency;
pub mod messages;
#[cfg(feature = "cluster")]
pub mod pg;
pub mod pool;
pub mod read;
mod read_conn;
pub mod rooms;
pub mod writer;

pub use cmd::{Completions, ReadCmd, ReadDone, ReadJob, WriteCmd, WriteJob, Written};
pub use read_conn::ReadConn;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use rusqlite::Connection;

use crate::config::Config;
use crate::handoff::{Inbox, Outbox};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "database schema version {found} is newer than this binary knows ({known}); upgrade confab"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("sqlite: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The database cannot be reached right now.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[cfg(feature = "cluster")]
    #[error("postgres: {}", pg::describe(.0))]
    Pg(#[from] postgres::Error),
    /// A job refused for a reason the client caused (access, not found, empty...).
    #[error("{1}")]
    Refused(crate::protocol::ErrorCode, String),
}

impl StoreError {
    /// Errors an operator must fix before the server can start.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StoreError::SchemaTooNew { .. } | StoreError::Open { .. }
        )
    }

    /// A conflict with a concurrent writer elsewhere (another node's transaction): the
    /// job may simply be run again.
    pub fn is_retryable(&self) -> bool {
        #[cfg(feature = "cluster")]
        if let StoreError::Pg(e) = self {
            return super::store::pg::retryable(e);
        }
        false
    }

    pub fn refused(code: crate::protocol::ErrorCode, msg: impl Into<String>) -> StoreError {
        StoreError::Refused(code, msg.into())
    }

    /// The wire error code and text for a client.
    pub fn client_error(&self) -> (crate::protocol::ErrorCode, String) {
        match self {
            StoreError::Refused(c, m) => (*c, m.clone()),
            other => (
                crate::protocol::ErrorCode::Internal,
                format!("storage error: {other}"),
            ),
        }
    }
}

/// Numbered migrations; index + 1 is the schema version after it.
const MIGRATIONS: &[&str] = &[
    // 1: conversations, members (with read markers), messages, users.
    r#"
    CREATE TABLE users (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        first_seen  INTEGER NOT NULL,
        last_seen   INTEGER NOT NULL
    );
    CREATE TABLE conversations (
        id            TEXT PRIMARY KEY,
        owner         TEXT NOT NULL,
        kind          TEXT NOT NULL CHECK (kind IN ('chat', 'room')),
        room_id       TEXT UNIQUE,
        room_name     TEXT,
        room_type     TEXT CHECK (room_type IN ('private', 'shared', 'group')),
        created_at    INTEGER NOT NULL,
        last_updated  INTEGER NOT NULL,
        last_seq      INTEGER NOT NULL DEFAULT 0,
        message_count INTEGER NOT NULL DEFAULT 0,
        preview       TEXT,
        ai            INTEGER NOT NULL DEFAULT 0,
        deleted       INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE members (
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        user_id         TEXT NOT NULL,
        role            TEXT NOT NULL DEFAULT 'member',
        joined_at       INTEGER NOT NULL,
        read_seq        INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (conversation_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members(user_id, conversation_id);
    CREATE TABLE messages (
        id              INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        seq             INTEGER NOT NULL,
        role            TEXT NOT NULL,
        author          TEXT NOT NULL,
        author_name     TEXT NOT NULL,
        content         TEXT NOT NULL,
        status          TEXT NOT NULL,
        client_id       TEXT,
        meta            TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        UNIQUE (conversation_id, seq)
    );
    CREATE INDEX messages_idempotency ON messages(author, client_id) WHERE client_id IS NOT NULL;
    "#,
    // 2: room memberships are marked, so `connected` lists a user's rooms without walking
    // every conversation they ever had (1 ms per connect for a user with 2,000 AI chats).
    r#"
    ALTER TABLE members ADD COLUMN room INTEGER NOT NULL DEFAULT 0;
    UPDATE members SET room = 1 WHERE conversation_id IN (SELECT id FROM conversations WHERE kind = 'room');
    CREATE INDEX members_rooms ON members(user_id) WHERE room = 1;
    "#,
    // 3: uploaded files. The bytes live on disk under <data_dir>/files/<id>; a row exists
    // only once the file is complete, verified and renamed into place.
    r#"
    CREATE TABLE files (
        id              TEXT PRIMARY KEY,
        owner           TEXT NOT NULL,
        conversation_id TEXT REFERENCES conversations(id),
        file_name       TEXT NOT NULL,
        mime_type       TEXT NOT NULL,
        size            INTEGER NOT NULL,
        sha256          TEXT NOT NULL,
        created_at      INTEGER NOT NULL
    );
    "#,
    // 4: conversation aliases of the seed dialects (client-chosen session ids, numeric
    // ids), written in the transaction that creates the conversation (`alias.rs`).
    r#"
    CREATE TABLE compat_alias (
        user_id         TEXT NOT NULL,
        profile         TEXT NOT NULL,
        alias           TEXT NOT NULL,
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        created_at      INTEGER NOT NULL,
        PRIMARY KEY (user_id, profile, alias)
    ) WITHOUT ROWID;
    CREATE INDEX compat_alias_conversation ON compat_alias(conversation_id);
    "#,
    // 5: a conversation's title, set by its owner (lists show the preview without one).
    r#"
    ALTER TABLE conversations ADD COLUMN title TEXT;
    "#,
    // 6: the idempotency window is the writer's, in memory (`idempotency.rs`): the index
    // cost a random leaf page per message in every COMMIT. (PostgreSQL keeps its own.)
    r#"
    DROP INDEX IF EXISTS messages_idempotency;
    "#,
];

pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Query Planner Stability Guarantee: plans never depend on bound values, so a cached
/// statement is prepared once. Without it SQLite 3.54 re-prepared the hottest writer
/// statement on every bind (perf: ~20% of the writer thread).
fn stable_plans(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// How long the writer waits for a lock (another process, a checkpoint).
const WRITER_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn configure(
    conn: &Connection,
    synchronous_full: bool,
    page_size: u32,
) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
    stable_plans(conn)?;
    // Only takes effect while the file is empty (before WAL mode and the first table);
    // an existing database keeps the page size it was created with.
    conn.pragma_update(None, "page_size", page_size)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        log::warn!("sqlite journal_mode is {mode}, not wal");
    }
    conn.pragma_update(
        None,
        "synchronous",
        if synchronous_full { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(())
}

fn window_ms(cfg: &Config) -> i64 {
    i64::try_from(cfg.store.idempotency_window_s)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000)
}

/// Open (creating if needed, with `page_size`-byte pages) and migrate the database; the
/// write connection.
pub fn open_writer(
    path: &Path,
    synchronous_full: bool,
    page_size: u32,
) -> Result<Connection, StoreError> {
    let open = |p: &Path| {
        Connection::open(p).map_err(|source| StoreError::Open {
            path: p.display().to_string(),
            source,
        })
    };
    let mut conn = open(path)?;
    configure(&conn, synchronous_full, page_size).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = schema_version();
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        log::info!("store: migrated schema to version {}", i + 1);
    }
    // Checkpoints run on their own thread (`checkpoint.rs`), not inside the writer's
    // COMMIT, where they took ~8% of the writer's time.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Replies that were streaming when the previous process died will never finish.
    let n = conn.execute(
        "UPDATE messages SET status = 'error', updated_at = ?1 WHERE status = 'streaming'",
        [crate::protocol::now_ms()],
    )?;
    if n > 0 {
        log::warn!("store: {n} replies were interrupted by the last shutdown; marked as error");
    }
    Ok(conn)
}

pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    stable_plans(&conn)?;
    Ok(conn)
}

pub enum WriteMsg<R> {
    Job(WriteJob<R>),
    Stop,
}

pub enum ReadMsg<R> {
    Job(ReadJob<R>),
    Stop,
}

/// The queue is full: answer BUSY.
#[derive(Debug)]
pub struct Busy;

/// The store: queues to the writer and the readers. `R` is what a caller attaches to
/// each job to recognise its result (see [`cmd`]).
pub struct Store<R> {
    /// One queue per writer: SQLite has one writer; PostgreSQL `cluster.writers`, a
    /// command going to the writer its conversation (room, message) hashes to, so one
    /// conversation's writes stay in order. A writer parks on its empty queue at once
    /// (`handoff.rs`).
    write_tx: Vec<Outbox<WriteMsg<R>>>,
    write_rx: Mutex<Vec<Inbox<WriteMsg<R>>>>,
    read_tx: Sender<ReadMsg<R>>,
    read_rx: Receiver<ReadMsg<R>>,
    writer_conn: Mutex<Option<Opened>>,
    readers: usize,
    batch_max: usize,
    idempotency_window_ms: i64,
    idempotency_max: usize,
    pub path: std::path::PathBuf,
    pub synchronous_full: bool,
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The SQLite checkpointer's wake-ups and stop (`checkpoint.rs`).
    checkpoint: Arc<checkpoint::Cue>,
    /// Connections for threads that read now and then ([`ReadConn`]).
    occasional: ReadConn,
    /// Cluster mode: the shared database's URL.
    #[cfg(feature = "cluster")]
    pg: Option<String>,
}

/// The writers' connections, opened (and the schema migrated) by `Store::open`.
enum Opened {
    Sqlite(Connection),
    #[cfg(feature = "cluster")]
    Pg(Vec<pg::PgDb>),
}

impl<R: Send + 'static> Store<R> {
    pub fn open(cfg: &Config) -> Result<Store<R>, StoreError> {
        let path = cfg.store.db_path();
        #[cfg(feature = "cluster")]
        let (conn, pg) = match &cfg.cluster {
            Some(c) => (
                Opened::Pg(pg::open_writers(
                    &c.postgres_url,
                    &c.node_id,
                    c.lease,
                    c.writers,
                )?),
                Some(c.postgres_url.clone()),
            ),
            None => (
                Opened::Sqlite(open_writer(
                    &path,
                    cfg.store.synchronous_full,
                    cfg.store.page_size,
                )?),
                None,
            ),
        };
        #[cfg(not(feature = "cluster"))]
        let conn = Opened::Sqlite(open_writer(
            &path,
            cfg.store.synchronous_full,
            cfg.store.page_size,
        )?);
        let lanes = match &conn {
            Opened::Sqlite(_) => 1,
            #[cfg(feature = "cluster")]
            Opened::Pg(w) => w.len(),
        };
        let (write_tx, write_rx) = (0..lanes)
            .map(|_| crate::handoff::bounded(cfg.store.queue.div_ceil(lanes)))
            .unzip();
        let (read_tx, read_rx) = crossbeam_channel::bounded(cfg.store.read_queue);
        let occasional = match &conn {
            Opened::Sqlite(_) => {
                let p = path.clone();
                let pool =
                    pool::Pool::new(cfg.store.read_workers, Box::new(move || open_reader(&p)));
                pool.warm()?;
                ReadConn::Sqlite(pool)
            }
            #[cfg(feature = "cluster")]
            Opened::Pg(_) => {
                let url = cfg
                    .cluster
                    .as_ref()
                    .map(|c| c.postgres_url.clone())
                    .unwrap_or_default();
                let size = cfg.cluster.as_ref().map_or(1, |c| c.postgres_pool);
                ReadConn::Pg(pool::Pool::new(
                    size,
                    Box::new(move || pg::PgDb::open(&url, None)),
                ))
            }
        };
        Ok(Store {
            occasional,
            write_tx,
            write_rx: Mutex::new(write_rx),
            read_tx,
            read_rx,
            writer_conn: Mutex::new(Some(conn)),
            readers: cfg.store.read_workers,
            batch_max: cfg.store.batch_max,
            idempotency_window_ms: window_ms(cfg),
            idempotency_max: cfg.store.idempotency_max_entries,
            path,
            synchronous_full: cfg.store.synchronous_full,
            stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            checkpoint: Arc::default(),
            #[cfg(feature = "cluster")]
            pg,
        })
    }

    /// Connections for a thread that reads now and then ([`ReadConn`]; shared, small).
    pub fn read_conn(&self) -> Result<ReadConn, StoreError> {
        Ok(self.occasional.clone())
    }

    /// Cluster mode: this process's incarnation of its node (from the nodes table).
    pub fn node_incarnation(&self) -> Option<i64> {
        #[cfg(feature = "cluster")]
        if let Some(Opened::Pg(w)) = &*self.writer_conn.lock() {
            return w.first().and_then(|db| db.owner()).map(|o| o.inc);
        }
        None
    }

    /// Queue a write without blocking (shards).
    pub fn try_write(&self, cmd: WriteCmd, reply: R) -> Result<(), Busy> {
        let job = WriteJob {
            cmd,
            reply,
            enqueued: Instant::now(),
        };
        match self.write_tx[self.lane(&job.cmd)].try_send(WriteMsg::Job(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
        }
    }

    /// Queue a write, waiting for room (workers; never shards). On a writer's completion
    /// thread it does not wait — the writer may be waiting for that thread — and a write
    /// that finds the queue full is dropped with an error in the log. (The one such
    /// write: ending a reply that could not start because the server is stopping; its
    /// row, left streaming, is marked `error` at the next start.)
    pub fn write(&self, cmd: WriteCmd, reply: R) {
        let job = WriteJob {
            cmd,
            reply,
            enqueued: Instant::now(),
        };
        let tx = &self.write_tx[self.lane(&job.cmd)];
        if writer::on_completion_thread() {
            if let Err(TrySendError::Full(_)) = tx.try_send(WriteMsg::Job(job)) {
                log::error!(
                    "store: write queue full on the completion thread; a write was dropped"
                );
            }
            return;
        }
        let _ = tx.send(WriteMsg::Job(job));
    }

    /// The writer a command goes to.
    fn lane(&self, cmd: &WriteCmd) -> usize {
        match self.write_tx.len() {
            1 => 0,
            n => (cmd.lane_key() % n as u64) as usize,
        }
    }

    /// Queue a read without blocking.
    pub fn try_read(&self, cmd: ReadCmd, reply: R) -> Result<(), Busy> {
        match self.read_tx.try_send(ReadMsg::Job(ReadJob { cmd, reply })) {
            Ok(()) => Ok(()),
            Err(_) => Err(Busy),
        }
    }

    pub fn write_queue_len(&self) -> usize {
        self.write_tx.iter().map(Outbox::len).sum()
    }

    pub fn read_queue_len(&self) -> usize {
        self.read_tx.len()
    }

    /// Stop the writer after everything queued so far is committed, and the readers.
    pub fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.checkpoint.stop();
        for tx in &self.write_tx {
            let _ = tx.send(WriteMsg::Stop);
        }
        for _ in 0..self.readers {
            let _ = self.read_tx.send(ReadMsg::Stop);
        }
    }

    /// Start the writer, the checkpointer and the readers. Results go to `sink`.
    pub fn start_threads(
        &self,
        metrics: Arc<Metrics>,
        sink: Arc<dyn Completions<R>>,
    ) -> std::io::Result<Vec<JoinHandle<()>>> {
        let mut threads = Vec::new();
        let mut rxs = std::mem::take(&mut *self.write_rx.lock());
        if rxs.is_empty() {
            return Err(std::io::Error::other("store writer already started"));
        }
        let conn = self
            .writer_conn
            .lock()
            .take()
            .ok_or_else(|| std::io::Error::other("store writer connection taken"))?;
        let settings = writer::Settings {
            batch_max: self.batch_max,
            idempotency_window_ms: self.idempotency_window_ms,
        };
        let spawn_writer = |threads: &mut Vec<JoinHandle<()>>, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(f)
                .map(|h| threads.push(h))
        };
        match conn {
            Opened::Sqlite(conn) => {
                let rx = rxs.remove(0);
                let started = Instant::now();
                let window = idempotency::Window::load(
                    &conn,
                    self.idempotency_window_ms,
                    self.idempotency_max,
                    crate::protocol::now_ms(),
                )
                .map_err(std::io::Error::other)?;
                log::info!(
                    "store: idempotency window rebuilt, {} messages in {:?}",
                    window.len(),
                    started.elapsed()
                );
                let idem = writer::Idempotency::Memory(window);
                let commits_seen_by = metrics.clone();
                let (metrics, sink) = (metrics.clone(), sink.clone());
                let cue = self.checkpoint.clone();
                spawn_writer(
                    &mut threads,
                    Box::new(move || {
                        writer::run(conn, rx, settings, idem, metrics, sink, move |c| {
                            if cue.batch_done() {
                                checkpoint::restart_wal(c)
                            }
                        })
                    }),
                )?;
                let (path, cue) = (self.path.clone(), self.checkpoint.clone());
                let stopping = self.stopping.clone();
                threads.push(
                    std::thread::Builder::new()
                        .name("store-checkpoint".into())
                        .spawn(move || checkpoint::run(path, stopping, cue, commits_seen_by))?,
                );
            }
            #[cfg(feature = "cluster")]
            Opened::Pg(conn) => {
                // Each job's savepoint is a subtransaction; past 64 in one transaction
                // PostgreSQL's per-backend cache overflows and snapshots consult
                // pg_subtrans (a known cliff). Not what limits the figures measured here
                // (round trips do: BENCHMARKS.md, cluster mode), but kept below it.
                let settings = writer::Settings {
                    batch_max: settings.batch_max.min(pg::MAX_JOBS_PER_BATCH),
                    ..settings
                };
                for (conn, rx) in conn.into_iter().zip(rxs) {
                    let (metrics, sink) = (metrics.clone(), sink.clone());
                    spawn_writer(
                        &mut threads,
                        Box::new(move || {
                            let idem = writer::Idempotency::Index;
                            writer::run(conn, rx, settings, idem, metrics, sink, |_| {})
                        }),
                    )?;
                }
            }
        }
        for i in 0..self.readers {
            let rx = self.read_rx.clone();
            let (metrics, sink) = (metrics.clone(), sink.clone());
            let open = self.reader_opener();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("store-read-{i}"))
                    .spawn(move || open(rx, metrics, sink))?,
            );
        }
        Ok(threads)
    }

    /// What a reader thread runs: open its own connection, then serve reads.
    #[allow(clippy::type_complexity)]
    fn reader_opener(
        &self,
    ) -> Box<dyn FnOnce(Receiver<ReadMsg<R>>, Arc<Metrics>, Arc<dyn Completions<R>>) + Send> {
        #[cfg(feature = "cluster")]
        if let Some(url) = &self.pg {
            let url = url.clone();
            return Box::new(move |rx, metrics, sink| match pg::PgDb::open(&url, None) {
                Ok(db) => read::serve(&db, rx, sink),
                Err(e) => read::failed_to_open(&e, &metrics),
            });
        }
        let path = self.path.clone();
        Box::new(move |rx, metrics, sink| match open_reader(&path) {
            Ok(db) => read::serve(&db, rx, sink),
            Err(e) => read::failed_to_open(&e, &metrics),
        })
    }
}

/// The WAL file is cut back to this size when it starts over (it grows past it only
/// while readers keep a restart from happening).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_applies_to_a_new_database_only() {
        let dir = std::env::temp_dir().join(format!("confab-pagesize-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("p.db");
        let page =
            |c: &Connection| -> i64 { c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap() };
        let c = open_writer(&db, false, 1024).unwrap();
        assert_eq!(page(&c), 1024);
        drop(c);
        // Reopened with another setting: the file keeps the size it was created with.
        let c = open_writer(&db, false, 8192).unwrap();
        assert_eq!(page(&c), 1024);
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn migrations_run_in_order_and_a_newer_schema_is_refused() {
        let dir = std::env::temp_dir().join(format!("confab-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("t.db");
        // A version-1 database with a room member…
        {
            let mut c = Connection::open(&db).unwrap();
            let tx = c.transaction().unwrap();
            tx.execute_batch(MIGRATIONS[0]).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            tx.execute_batch("INSERT INTO conversations (id, owner, kind, room_id, room_name, room_type, created_at, last_updated) VALUES ('c1','u','room','r','r','shared',0,0);
                              INSERT INTO members (conversation_id, user_id, joined_at) VALUES ('c1','u',0);").unwrap();
            tx.commit().unwrap();
        }
        // …is migrated to the current version, keeping its data.
        let c = open_writer(&db, false, 4096).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema_version());
        assert_eq!(read::rooms_for_user(&c, "u").unwrap().len(), 1);
        drop(c);
        // A database from a newer binary is refused, as a configuration error.
        Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = open_writer(&db, false, 4096).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }));
        assert!(err.is_config());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
