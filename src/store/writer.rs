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

use rusqlite::Connection;

use super::db::{p, Db};

use super::cmd::{Completions, WriteCmd, WriteJob, Written};
use super::idempotency::Window;
use super::{StoreError, WriteMsg};
use crate::handoff::{self, Inbox};
use crate::metrics::Metrics;
use crate::protocol::{now_ms, ErrorCode};

// Rooms and message operations live in `rooms.rs` and `messages.rs`; their items keep
// their old paths.
pub use super::messages::*;
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
    pub idempotency: Idempotency,
}

/// How a retried client id is found.
pub enum Idempotency {
    /// Cluster mode: the `(author, client_id)` index, one lookup per message (writers on
    /// other nodes insert too).
    Index,
    /// The single box: the writer's window in memory (`idempotency.rs`).
    Memory(Window),
}

impl WriterState {
    pub fn new(idempotency_window_ms: i64, idempotency: Idempotency) -> WriterState {
        WriterState {
            users_seen: HashSet::new(),
            users_batch: HashSet::new(),
            users_job: Vec::new(),
            now_ms: now_ms(),
            idempotency_window_ms,
            idempotency,
        }
    }
}

/// The writer's settings, from `[store]`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub batch_max: usize,
    pub idempotency_window_ms: i64,
}

/// Batches committed (or failed) and not yet routed that the writer may run ahead of the
/// completion thread; past it the writer waits. The completion thread never waits on the
/// writer (`Store::write` does not block there: [`on_completion_thread`]), so this cannot
/// deadlock.
const COMPLETION_BACKLOG: usize = 256;

thread_local! {
    static COMPLETION_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True on a writer's `store-complete` thread (or on a writer routing its own results),
/// where queueing a write must not wait for room: the writer may be waiting on us.
pub fn on_completion_thread() -> bool {
    COMPLETION_THREAD.with(|c| c.get())
}

/// The nice value the commit path's two threads (the writer, `store-complete`) ask for.
pub const COMMIT_PATH_NICE: i32 = -3;

/// Ask the scheduler to favour the calling thread over the shards. The commit path's work
/// per message is short, and every ack and every room delivery waits for it; on a core
/// shared with a shard's long fan-out turn it otherwise waits out the shard's time slice
/// (broadcast 5,000 on one core: p50 55–60 → 45–49 ms, BENCHMARKS.md). Lowering a nice
/// value needs `CAP_SYS_NICE` or a `RLIMIT_NICE` that allows it (systemd: `LimitNICE=`,
/// `Nice=`); without it the thread keeps the process's priority, which is only slower.
#[allow(unsafe_code)] // setpriority has no safe wrapper in std
fn favour_this_thread(name: &str) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only changes a scheduling attribute. On Linux the nice value
        // is per thread, and `who = 0` names the calling thread.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, COMMIT_PATH_NICE) };
        if rc != 0 {
            log::debug!(
                "store: {name} keeps its priority (nice {COMMIT_PATH_NICE} refused: {})",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// `between_batches` runs after every batch, outside any transaction (SQLite: the WAL
/// restart the checkpointer asks for).
///
/// A batch's results are routed (`Completions::written`: acks, fan-out, reply starts) on a
/// thread of their own, `store-complete`, in commit order: the routing was ~19% of the
/// writer's time (perf), and the writer is the one thread every acked write waits for.
/// The writer joins it before returning, so when the writer thread ends every result has
/// been handed on.
pub fn run<R: Send + 'static, B: Batch>(
    mut conn: B,
    rx: Inbox<WriteMsg<R>>,
    settings: Settings,
    idempotency: Idempotency,
    metrics: Arc<Metrics>,
    sink: Arc<dyn Completions<R>>,
    mut between_batches: impl FnMut(&mut B),
) {
    favour_this_thread("the writer");
    let batch_max = settings.batch_max;
    let mut state = WriterState::new(settings.idempotency_window_ms, idempotency);
    let mut jobs = Vec::with_capacity(batch_max);
    let (done_tx, done_rx) = handoff::bounded::<Outcome<R>>(COMPLETION_BACKLOG);
    let completer = {
        let (metrics, sink) = (metrics.clone(), sink.clone());
        std::thread::Builder::new()
            .name("store-complete".into())
            .spawn(move || {
                favour_this_thread("store-complete");
                COMPLETION_THREAD.with(|c| c.set(true));
                while let Ok(outcome) = done_rx.recv() {
                    outcome.deliver(&metrics, &*sink);
                }
            })
    };
    let completer = match completer {
        Ok(h) => Some(h),
        Err(e) => {
            log::warn!("store: no completion thread ({e}); results are routed by the writer");
            COMPLETION_THREAD.with(|c| c.set(true));
            None
        }
    };
    let hand_on = |outcome: Outcome<R>| match &completer {
        Some(_) => {
            if let Err(crossbeam_channel::SendError(outcome)) = done_tx.send(outcome) {
                outcome.deliver(&metrics, &*sink);
            }
        }
        None => outcome.deliver(&metrics, &*sink),
    };
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
        hand_on(commit_batch(&mut conn, &mut jobs, &mut state, &metrics));
        between_batches(&mut conn);
    }
    // Jobs queued behind the stop marker still get an answer.
    while let Ok(WriteMsg::Job(j)) = rx.try_recv() {
        jobs.push(j);
    }
    if !jobs.is_empty() {
        hand_on(commit_batch(&mut conn, &mut jobs, &mut state, &metrics));
    }
    drop(done_tx);
    if let Some(h) = completer {
        let _ = h.join();
    }
    log::info!("store writer stopped");
}

/// What a batch came to, for its callers.
enum Outcome<R> {
    /// COMMIT succeeded: each job's own result (a refused job rolled back alone).
    Committed(Vec<(Result<Written, StoreError>, R)>),
    /// The batch could not begin or commit: nothing of it was acknowledged.
    Failed(StoreError, Vec<R>),
}

impl<R: 'static> Outcome<R> {
    /// Hand each result to the sink, in queue order.
    fn deliver(self, metrics: &Metrics, sink: &dyn Completions<R>) {
        match self {
            Outcome::Committed(done) => {
                for (r, reply) in done {
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
            Outcome::Failed(err, replies) => {
                for reply in replies {
                    sink.written(reply, Err(&err));
                }
            }
        }
    }
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

fn commit_batch<R, B: Batch>(
    conn: &mut B,
    jobs: &mut Vec<WriteJob<R>>,
    state: &mut WriterState,
    metrics: &Metrics,
) -> Outcome<R> {
    state.now_ms = now_ms();
    let n = jobs.len();
    let mut done = Vec::with_capacity(n);
    if let Err(e) = conn.begin() {
        conn.rollback();
        let replies = jobs.drain(..).map(|j| j.reply).collect();
        return failed(e, replies, metrics);
    }
    let mut waited = Vec::with_capacity(n);
    for job in jobs.drain(..) {
        let r = run_job(conn, state, job.cmd);
        done.push((r, job.reply));
        waited.push(job.enqueued);
    }
    let committed = conn.commit();
    if committed.is_err() {
        conn.rollback();
    }
    state.batch_done(committed.is_ok());
    if let Idempotency::Memory(w) = &state.idempotency {
        metrics
            .store_idempotency_entries
            .store(w.len() as u64, Relaxed);
        metrics.store_idempotency_evicted.store(w.evicted, Relaxed);
    }
    match committed {
        Ok(()) => {
            metrics.store_commits.fetch_add(1, Relaxed);
            metrics.store_writes.fetch_add(n as u64, Relaxed);
            metrics.store_unhealthy.store(0, Relaxed);
            let mut h = metrics.commit_latency_us.lock();
            for enq in waited {
                let waited = enq.elapsed();
                let _ = h.record(waited.as_micros().max(1) as u64);
                metrics.commit_seconds.observe(waited);
            }
            Outcome::Committed(done)
        }
        Err(e) => {
            let replies = done.into_iter().map(|(_, reply)| reply).collect();
            failed(e, replies, metrics)
        }
    }
}

fn failed<R>(err: StoreError, replies: Vec<R>, metrics: &Metrics) -> Outcome<R> {
    log::error!("store: batch failed, nothing acknowledged: {err}");
    metrics.store_failures.fetch_add(1, Relaxed);
    metrics.store_unhealthy.store(1, Relaxed);
    Outcome::Failed(err, replies)
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

impl WriterState {
    /// The running job ended: what it recorded stays only if its savepoint was released.
    pub fn job_done(&mut self, ok: bool) {
        if ok {
            self.users_batch.extend(self.users_job.drain(..));
        } else {
            self.users_job.clear();
        }
        if let Idempotency::Memory(w) = &mut self.idempotency {
            w.job_done(ok);
        }
    }

    /// The batch's COMMIT ended: only committed rows count as written.
    pub fn batch_done(&mut self, committed: bool) {
        if committed {
            self.users_seen.extend(self.users_batch.drain());
        } else {
            self.users_batch.clear();
        }
        if let Idempotency::Memory(w) = &mut self.idempotency {
            w.batch_done(committed, self.now_ms);
        }
    }

    /// The running job wrote (or a committed one did) `id`'s `users` row.
    pub(super) fn user_written(&mut self, id: &str) {
        self.users_job.push(id.to_string());
    }

    pub(super) fn user_recorded(&self, id: &str) -> bool {
        self.users_seen.contains(id)
            || self.users_batch.contains(id)
            || self.users_job.iter().any(|u| u == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cmd::ReadDone;
    use std::collections::HashMap;

    /// Records, per answered job, its reply and whether it was answered on a completion
    /// thread.
    #[derive(Default)]
    struct Seen(parking_lot::Mutex<Vec<(u32, bool)>>);

    impl Completions<u32> for Seen {
        fn written(&self, reply: u32, _result: Result<Written, &StoreError>) {
            self.0.lock().push((reply, on_completion_thread()));
        }
        fn read(&self, _reply: u32, _result: Result<ReadDone, StoreError>) {}
        fn in_flight(&self, _conversation_id: &str) -> HashMap<i64, (String, u64)> {
            HashMap::new()
        }
    }

    #[test]
    fn results_are_answered_in_order_on_the_completion_thread_before_the_writer_ends() {
        let dir = std::env::temp_dir().join(format!("confab-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conn = crate::store::open_writer(&dir.join("w.db"), false, 4096).unwrap();
        let (tx, rx) = crate::handoff::bounded(64);
        for i in 0..50u32 {
            // Refused (no such conversation): each job still gets its answer.
            let cmd = WriteCmd::MarkRead {
                conversation_id: format!("c{i}"),
                user_id: "u".into(),
                seq: 1,
            };
            let job = WriteJob {
                cmd,
                reply: i,
                enqueued: std::time::Instant::now(),
            };
            tx.send(WriteMsg::Job(job)).unwrap();
        }
        tx.send(WriteMsg::Stop).unwrap();
        let seen = Arc::new(Seen::default());
        let settings = Settings {
            batch_max: 8,
            idempotency_window_ms: 1_000,
        };
        let idem = Idempotency::Memory(Window::new(1_000, 10));
        let sink: Arc<dyn Completions<u32>> = seen.clone();
        run(conn, rx, settings, idem, Arc::default(), sink, |_| {});
        // `run` returned: every answer has been given, in queue order, on the thread that
        // must not wait for the writer.
        let got = seen.0.lock().clone();
        assert_eq!(got.len(), 50);
        assert!(got.iter().enumerate().all(|(i, (r, _))| *r == i as u32));
        assert!(got.iter().all(|(_, on)| *on));
        assert!(!on_completion_thread());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
