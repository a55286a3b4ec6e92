//! The checkpointer: moves WAL content into the database file on a thread of its own, and
//! asks the writer to start the WAL over when a PASSIVE pass cannot catch up. An idle
//! server's checkpointer sleeps until the writer commits again ([`Cue`]).

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{fence, AtomicBool};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use rusqlite::Connection;

use super::WRITER_BUSY_TIMEOUT;
use crate::metrics::Metrics;

/// WAL content past which the WAL is started over (see [`run`]).
const WAL_RESTART_BYTES: i64 = 16 << 20;

/// Time between two passes while the writer commits.
const PASS_EVERY: Duration = Duration::from_millis(200);

/// What the writer and the store tell the checkpointer (the store's stop itself is
/// `Store::stopping`, which other threads read too).
#[derive(Default)]
pub struct Cue {
    /// Raised by the checkpointer: the writer runs [`restart_wal`] between two batches.
    restart: AtomicBool,
    /// The checkpointer sleeps until the next commit (nothing was left to copy).
    asleep: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Cue {
    /// The writer, after every batch: wake a sleeping checkpointer (one fence and one load
    /// when it is awake); true when the WAL should be started over now.
    pub fn batch_done(&self) -> bool {
        // Pairs with the checkpointer's `asleep` store and commit count load: either it
        // sees this batch's commit, or this sees it asleep.
        fence(SeqCst);
        if self.asleep.load(SeqCst) && self.asleep.swap(false, SeqCst) {
            self.wake();
        }
        self.restart.swap(false, Relaxed)
    }

    /// The store is stopping (`Store::stopping` is set): wake the thread if it sleeps, so
    /// that it makes its last pass and ends.
    pub fn stop(&self) {
        self.wake();
    }

    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Moves WAL content into the database file in the background: a PASSIVE checkpoint
/// (never blocks the writer or readers) every 200 ms. Under continuous writes a PASSIVE
/// pass never catches up (frames arrive while it copies), so the WAL would never start
/// over; once it holds more than [`WAL_RESTART_BYTES`] the checkpointer raises `restart`
/// and the writer, between two batches, runs [`restart_wal`]: only the frames written
/// since the PASSIVE pass are left to copy. (Before: a TRUNCATE from this thread once the
/// file passed 64 MiB — it waited for the writer's lock, copied up to 200 ms of frames
/// under it, and the file then grew again from zero: ack p99 42–63 ms, BENCHMARKS.md.)
///
/// When a pass copied every frame and the writer has committed nothing since, the thread
/// sleeps until the writer's next batch ([`Cue::batch_done`]) or the store's stop: an idle
/// server does no SQLite work and no wake-ups (a pass after 200 ms asleep cost ~3 ms of
/// CPU on the benchmark VM, and each wake ~0.5 ms).
pub fn run(
    path: std::path::PathBuf,
    stopping: Arc<AtomicBool>,
    cue: Arc<Cue>,
    metrics: Arc<Metrics>,
) {
    let _ = cue.thread.set(std::thread::current());
    let conn = match Connection::open(&path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("store checkpointer cannot open {}: {e}", path.display());
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_millis(100));
    let page: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap_or(4096);
    // Commits as of the last pass that left nothing to copy.
    let mut copied_up_to: Option<u64> = None;
    while !stopping.load(SeqCst) {
        std::thread::sleep(PASS_EVERY);
        // Read before the pass: a commit during it makes the next pass run.
        let commits = metrics.store_commits.load(SeqCst);
        if copied_up_to == Some(commits) {
            cue.asleep.store(true, SeqCst);
            if metrics.store_commits.load(SeqCst) == commits && !stopping.load(SeqCst) {
                // Until `Cue::batch_done` or `Cue::stop` (an unpark that came first is
                // kept: this returns at once, and an unpark happens-before the return, so
                // the stop flag set before it is seen); a spurious return costs one loop.
                std::thread::park();
            }
            cue.asleep.store(false, SeqCst);
            continue;
        }
        // Columns: busy, frames in the WAL, frames copied into the database.
        let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match pass {
            Ok((frames, copied)) => {
                if frames * page > WAL_RESTART_BYTES {
                    cue.restart.store(true, Relaxed)
                }
                copied_up_to = (copied >= frames).then_some(commits);
            }
            Err(e) => log::warn!("store: checkpoint failed: {e}"),
        }
    }
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
}

/// On the writer's connection, between batches: copy what the last PASSIVE pass left and
/// start the WAL over, in place (no file growth, no block zeroing; `journal_size_limit`
/// cuts back a file that grew while readers held old snapshots). A reader on an old
/// snapshot makes it give up at once (no busy wait: the writer must not stall); the
/// checkpointer asks again after its next pass.
pub fn restart_wal(conn: &mut Connection) {
    let _ = conn.busy_timeout(Duration::ZERO);
    match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)) {
        Ok(0) => {}
        Ok(_) => log::debug!("store: WAL restart deferred (a reader holds an old snapshot)"),
        Err(e) => log::warn!("store: WAL restart failed: {e}"),
    }
    let _ = conn.busy_timeout(WRITER_BUSY_TIMEOUT);
}
