//! `hold`: open N authenticated connections and measure the server's memory per connection.

use super::*;

struct HoldH {
    generic: bool,
    connected: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    t0: Instant,
    connect: Histogram<u64>,
    errors: HashMap<String, u64>,
}

impl Handler for HoldH {
    fn on_open(&mut self, _id: usize, _out: &mut Vec<String>, now: Instant) {
        // A generic server says nothing on open: the open itself counts.
        if self.generic {
            self.connected.fetch_add(1, Relaxed);
            let _ = self
                .connect
                .record(now.duration_since(self.t0).as_micros().max(1) as u64);
        }
    }
    fn on_text(&mut self, _id: usize, text: &str, _out: &mut Vec<String>, now: Instant) {
        if !self.generic && text.contains("\"type\":\"connected\"") {
            self.connected.fetch_add(1, Relaxed);
            let _ = self
                .connect
                .record(now.duration_since(self.t0).as_micros().max(1) as u64);
        }
    }
    fn on_failed(&mut self, _id: usize, why: &str) {
        self.failed.fetch_add(1, Relaxed);
        *self
            .errors
            .entry(why.chars().take(60).collect())
            .or_default() += 1;
    }
}

pub fn hold(o: &Opts) -> Value {
    let n = o.connections;
    let toks = tokens(o, n);
    let paths: Vec<String> = if o.generic {
        vec![o.path.clone().unwrap_or_else(|| "/".into()); n]
    } else {
        // With --room, every connection also joins it (authenticated and in a room).
        let extra = if o.in_room {
            format!("&room_id={}", o.room)
        } else {
            String::new()
        };
        toks.iter().map(|t| ws_path(t, &extra)).collect()
    };
    let rss_before = o.server_pid.and_then(proc_rss_kib);
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let deadline = t0 + o.duration;
    let (c2, f2) = (connected.clone(), failed.clone());
    let pid = o.server_pid;
    let settle = o.settle;
    let watcher = std::thread::spawn(move || {
        // Time to open them all, and the server's RSS once they are all open.
        while c2.load(Relaxed) + f2.load(Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let open_s = t0.elapsed().as_secs_f64();
        std::thread::sleep(settle);
        (open_s, pid.and_then(proc_rss_kib))
    });
    let hs = run_threads(
        o,
        paths,
        |_| HoldH {
            generic: o.generic,
            connected: connected.clone(),
            failed: failed.clone(),
            t0,
            connect: hist(),
            errors: HashMap::new(),
        },
        deadline,
        None,
        o.open_rate,
    );
    let (open_s, rss_after) = watcher.join().unwrap();
    let ok = connected.load(Relaxed);
    let mut errors: HashMap<String, u64> = HashMap::new();
    for h in &hs {
        for (k, v) in &h.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if ok > 0 => {
            json!(((a.saturating_sub(b)) as f64 * 1024.0 / ok as f64).round())
        }
        _ => Value::Null,
    };
    json!({
        "scenario": "hold", "connections": n, "connected": ok, "failed": failed.load(Relaxed),
        "open_all_s": (open_s * 1000.0).round() / 1000.0,
        "connect_rate_per_s": (ok as f64 / open_s).round(),
        "time_to_connected": pct(&merge(hs.into_iter().map(|h| h.connect))),
        "server_rss_kib_before": rss_before, "server_rss_kib_after": rss_after,
        "server_rss_bytes_per_connection": per_conn,
        "errors": errors,
    })
}
