//! Transport counters: connections, frames, bytes and closes. Relaxed atomics (statistics,
//! not synchronisation); the application renders them with its own in `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Close codes counted individually; anything else lands in "other".
pub const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1006, 1007, 1008, 1009, 1011, 1013];

#[derive(Default)]
pub struct NetMetrics {
    /// Open connections (HTTP and WebSocket).
    pub connections: AtomicI64,
    /// Open WebSockets.
    pub ws_connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub http_requests: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub tokens_out: AtomicU64,
    pub token_merges: AtomicU64,
    pub closes: [AtomicU64; CLOSE_CODES.len() + 1],
    /// Messages a non-blocking send dropped because a shard's inbox was full.
    pub inbox_dropped: AtomicU64,
    /// HTTP answers by (route label, status): `App::route_label` names the route.
    pub http: parking_lot::Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
}

impl NetMetrics {
    /// One HTTP answer (a `101` for a WebSocket upgrade included).
    pub fn http_answer(&self, route: &'static str, status: u16) {
        *self.http.lock().entry((route, status)).or_insert(0) += 1;
    }

    pub fn close(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.closes[i].fetch_add(1, Relaxed);
    }
}
