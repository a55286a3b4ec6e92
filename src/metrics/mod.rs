//! Process-wide counters and gauges, all atomics (relaxed: they are statistics, not
//! synchronisation). Rendered as Prometheus text for `GET /metrics` and JSON for
//! `GET /v1/stats`. Latency histograms live with the thread that records them (the store
//! writer, the generation workers) behind an uncontended mutex and are merged when read.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::protocol::ErrorCode;

use crate::net::stats::{NetMetrics, CLOSE_CODES};

pub mod generation;
pub mod hist;

/// Queue depths at the time of a scrape (read by the caller from their owners).
#[derive(Default)]
pub struct Depths {
    /// Messages dropped on full shard inboxes so far.
    pub inbox_dropped: u64,
    /// Each shard's inbox length.
    pub inboxes: Vec<usize>,
    pub store_writes: usize,
    pub store_reads: usize,
    pub uploads: usize,
}

pub struct Metrics {
    pub started: Instant,
    pub errors: [AtomicU64; ErrorCode::ALL.len()],
    pub store_commits: AtomicU64,
    pub store_writes: AtomicU64,
    pub store_failures: AtomicU64,
    /// 1 while the last store operation failed (then /health answers 503).
    pub store_unhealthy: AtomicI64,
    /// Messages in the writer's idempotency window (single box; `store/idempotency.rs`).
    pub store_idempotency_entries: AtomicU64,
    /// Window entries dropped before their time because the window was full.
    pub store_idempotency_evicted: AtomicU64,
    pub llm_queued: AtomicI64,
    pub llm_running: AtomicI64,
    pub llm_completed: AtomicU64,
    pub llm_failed: AtomicU64,
    pub uploads_active: AtomicI64,
    pub uploads_completed: AtomicU64,
    pub uploads_failed: AtomicU64,
    /// Uploads refused because the virus scanner found something.
    pub uploads_infected: AtomicU64,
    /// Scans that gave no verdict (scanner down, timed out, answered an error).
    pub upload_scan_failures: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub downloads: AtomicU64,
    pub download_bytes: AtomicU64,
    /// Microseconds from a write entering the writer's queue to its COMMIT (for the
    /// percentiles of `/v1/stats`).
    pub commit_latency_us: Mutex<Histogram<u64>>,
    /// The same, as a Prometheus histogram in seconds.
    pub commit_seconds: hist::Histogram,
    /// AI replies by agent and model.
    pub generations: generation::Generations,
}

// Constant bounds that hdrhistogram accepts (1 ≤ low, high ≥ 2·low, 3 digits): no error.
#[allow(clippy::expect_used)]
fn hist() -> Mutex<Histogram<u64>> {
    Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds"))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            errors: Default::default(),
            store_commits: AtomicU64::new(0),
            store_writes: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            store_unhealthy: AtomicI64::new(0),
            store_idempotency_entries: AtomicU64::new(0),
            store_idempotency_evicted: AtomicU64::new(0),
            llm_queued: AtomicI64::new(0),
            llm_running: AtomicI64::new(0),
            llm_completed: AtomicU64::new(0),
            llm_failed: AtomicU64::new(0),
            uploads_active: AtomicI64::new(0),
            uploads_completed: AtomicU64::new(0),
            uploads_failed: AtomicU64::new(0),
            uploads_infected: AtomicU64::new(0),
            upload_scan_failures: AtomicU64::new(0),
            upload_bytes: AtomicU64::new(0),
            downloads: AtomicU64::new(0),
            download_bytes: AtomicU64::new(0),
            commit_latency_us: hist(),
            commit_seconds: Default::default(),
            generations: Default::default(),
        }
    }
}

impl Metrics {
    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Relaxed);
    }

    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The Prometheus text page: the transport's counters (`net`, plus the messages
    /// dropped on full inboxes) and the application's.
    pub fn prometheus(&self, net: &NetMetrics, depths: &Depths) -> String {
        let inbox_dropped = depths.inbox_dropped;
        let mut s = String::with_capacity(4096);
        let mut line = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(
                s,
                "# HELP confab_{name} {help}\n# TYPE confab_{name} {kind}\nconfab_{name} {v}"
            );
        };
        line(
            "open_connections",
            "Open TCP connections (HTTP and WebSocket).",
            "gauge",
            net.connections.load(Relaxed).to_string(),
        );
        line(
            "open_ws_connections",
            "Open WebSocket connections.",
            "gauge",
            net.ws_connections.load(Relaxed).to_string(),
        );
        line(
            "connections_total",
            "Connections accepted.",
            "counter",
            net.connections_total.load(Relaxed).to_string(),
        );
        line(
            "connections_refused_total",
            "Connections refused at the connection cap.",
            "counter",
            net.connections_refused.load(Relaxed).to_string(),
        );
        line(
            "http_requests_total",
            "Plain HTTP requests served.",
            "counter",
            net.http_requests.load(Relaxed).to_string(),
        );
        line(
            "messages_in_total",
            "WebSocket messages received.",
            "counter",
            net.messages_in.load(Relaxed).to_string(),
        );
        line(
            "messages_out_total",
            "WebSocket messages sent.",
            "counter",
            net.messages_out.load(Relaxed).to_string(),
        );
        line(
            "bytes_in_total",
            "WebSocket payload bytes received.",
            "counter",
            net.bytes_in.load(Relaxed).to_string(),
        );
        line(
            "bytes_out_total",
            "WebSocket payload bytes sent.",
            "counter",
            net.bytes_out.load(Relaxed).to_string(),
        );
        line(
            "tokens_out_total",
            "Token events queued to connections.",
            "counter",
            net.tokens_out.load(Relaxed).to_string(),
        );
        line(
            "token_merges_total",
            "Token deltas merged into an earlier queued token for a slow reader.",
            "counter",
            net.token_merges.load(Relaxed).to_string(),
        );
        line(
            "store_commits_total",
            "Store write transactions committed.",
            "counter",
            self.store_commits.load(Relaxed).to_string(),
        );
        line(
            "store_writes_total",
            "Store writes committed.",
            "counter",
            self.store_writes.load(Relaxed).to_string(),
        );
        line(
            "store_failures_total",
            "Store operations that failed.",
            "counter",
            self.store_failures.load(Relaxed).to_string(),
        );
        line(
            "store_idempotency_entries",
            "Messages in the store writer's idempotency window (single box).",
            "gauge",
            self.store_idempotency_entries.load(Relaxed).to_string(),
        );
        line(
            "store_idempotency_evicted_total",
            "Idempotency window entries dropped early because store.idempotency_max_entries was reached.",
            "counter",
            self.store_idempotency_evicted.load(Relaxed).to_string(),
        );
        line(
            "llm_queued",
            "Generations waiting for a worker.",
            "gauge",
            self.llm_queued.load(Relaxed).to_string(),
        );
        line(
            "llm_running",
            "Generations running.",
            "gauge",
            self.llm_running.load(Relaxed).to_string(),
        );
        line(
            "llm_completed_total",
            "Generations finished.",
            "counter",
            self.llm_completed.load(Relaxed).to_string(),
        );
        line(
            "llm_failed_total",
            "Generations that ended in an error.",
            "counter",
            self.llm_failed.load(Relaxed).to_string(),
        );
        line(
            "inbox_dropped_total",
            "Ephemeral events dropped because a shard inbox was full.",
            "counter",
            inbox_dropped.to_string(),
        );
        for (name, help, kind, v) in [
            (
                "uploads_active",
                "File uploads in progress.",
                "gauge",
                self.uploads_active.load(Relaxed).to_string(),
            ),
            (
                "uploads_completed_total",
                "File uploads verified and stored.",
                "counter",
                self.uploads_completed.load(Relaxed).to_string(),
            ),
            (
                "uploads_failed_total",
                "File uploads discarded (checksum, write or store failure).",
                "counter",
                self.uploads_failed.load(Relaxed).to_string(),
            ),
            (
                "uploads_infected_total",
                "File uploads refused by the virus scanner (deleted, not stored).",
                "counter",
                self.uploads_infected.load(Relaxed).to_string(),
            ),
            (
                "upload_scan_failures_total",
                "Virus scans with no verdict (scanner down, timed out or in error).",
                "counter",
                self.upload_scan_failures.load(Relaxed).to_string(),
            ),
            (
                "upload_bytes_total",
                "File bytes received in upload chunks.",
                "counter",
                self.upload_bytes.load(Relaxed).to_string(),
            ),
            (
                "downloads_total",
                "Files served by GET /v1/files/{id}.",
                "counter",
                self.downloads.load(Relaxed).to_string(),
            ),
            (
                "download_bytes_total",
                "File bytes served.",
                "counter",
                self.download_bytes.load(Relaxed).to_string(),
            ),
        ] {
            line(name, help, kind, v);
        }
        let _ = writeln!(s, "# HELP confab_closes_total WebSocket closes by close code.\n# TYPE confab_closes_total counter");
        for (i, c) in CLOSE_CODES.iter().enumerate() {
            let _ = writeln!(
                s,
                "confab_closes_total{{code=\"{c}\"}} {}",
                net.closes[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "confab_closes_total{{code=\"other\"}} {}",
            net.closes[CLOSE_CODES.len()].load(Relaxed)
        );
        let _ = writeln!(s, "# HELP confab_errors_total Error events sent, by code.\n# TYPE confab_errors_total counter");
        for code in ErrorCode::ALL {
            let _ = writeln!(
                s,
                "confab_errors_total{{code=\"{}\"}} {}",
                code.as_str(),
                self.errors[code.index()].load(Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP confab_store_commit_seconds From a write entering the store's queue to its COMMIT.\n# TYPE confab_store_commit_seconds histogram");
        self.commit_seconds
            .render(&mut s, "confab_store_commit_seconds", "");
        self.generations.render(&mut s);
        let _ = writeln!(s, "# HELP confab_http_responses_total HTTP answers by route and status (101: WebSocket upgrades).\n# TYPE confab_http_responses_total counter");
        for ((route, status), n) in net.http.lock().iter() {
            let _ = writeln!(
                s,
                "confab_http_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(s, "# HELP confab_queue_depth Items waiting in a queue now.\n# TYPE confab_queue_depth gauge");
        for (i, n) in depths.inboxes.iter().enumerate() {
            let _ = writeln!(
                s,
                "confab_queue_depth{{queue=\"shard_inbox\",shard=\"{i}\"}} {n}"
            );
        }
        for (q, n) in [
            ("store_write", depths.store_writes),
            ("store_read", depths.store_reads),
            ("uploads", depths.uploads),
        ] {
            let _ = writeln!(s, "confab_queue_depth{{queue=\"{q}\"}} {n}");
        }
        let _ = writeln!(s, "# HELP confab_uptime_seconds Seconds since start.\n# TYPE confab_uptime_seconds gauge\nconfab_uptime_seconds {}", self.uptime_s());
        let _ = writeln!(
            s,
            "# HELP confab_build_info The running build.\n# TYPE confab_build_info gauge\nconfab_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        process_metrics(&mut s);
        s
    }
}

/// The standard `process_*` series, from /proc (Linux); absent elsewhere.
fn process_metrics(s: &mut String) {
    // VmRSS is in kB whatever the page size.
    if let Some(kib) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
    {
        let _ = writeln!(s, "# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}", kib * 1024);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(s, "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}", fds.count());
    }
    // stat: utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| {
            let after = t.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
    {
        let _ = writeln!(s, "# HELP process_cpu_seconds_total CPU time, user and system.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {:.2}", ticks as f64 / 100.0);
    }
}
