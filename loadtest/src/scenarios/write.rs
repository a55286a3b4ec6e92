//! `write`: the store write path — acked chat messages per second from N senders.

use super::*;

struct WriteH {
    /// Send times of each sender's chats not yet acked, oldest first (acks come in order).
    sent_at: HashMap<usize, std::collections::VecDeque<Instant>>,
    in_flight: usize,
    conv: HashMap<usize, String>,
    seq: HashMap<usize, u64>,
    lat: Histogram<u64>,
    acks: u64,
    errors: u64,
    failed: u64,
    measure_from: Instant,
}

impl WriteH {
    fn next(&mut self, id: usize, out: &mut Vec<String>, now: Instant) {
        let n = self.seq.entry(id).or_insert(0);
        *n += 1;
        let mut m = json!({"type": "chat", "id": format!("w{id}-{n}-{}", now_ns()), "message": format!("load message {n}"), "ai": false});
        if let Some(c) = self.conv.get(&id) {
            m["conversation_id"] = json!(c);
        }
        self.sent_at.entry(id).or_default().push_back(now);
        out.push(m.to_string());
    }

    /// Fill the sender's window. Until its first ack names its conversation, one chat at a
    /// time (each chat without a conversation id would open a new conversation).
    fn fill(&mut self, id: usize, out: &mut Vec<String>, now: Instant) {
        let window = if self.conv.contains_key(&id) {
            self.in_flight
        } else {
            1
        };
        while self.sent_at.get(&id).map_or(0, |q| q.len()) < window {
            self.next(id, out, now);
        }
    }
}

impl Handler for WriteH {
    fn on_open(&mut self, _id: usize, _out: &mut Vec<String>, _now: Instant) {}
    fn on_text(&mut self, id: usize, text: &str, out: &mut Vec<String>, now: Instant) {
        if text.contains("\"type\":\"connected\"") {
            return self.fill(id, out, now);
        }
        if text.contains("\"type\":\"ack\"") {
            if let std::collections::hash_map::Entry::Vacant(e) = self.conv.entry(id) {
                if let Ok(v) = serde_json::from_str::<Value>(text) {
                    e.insert(v["conversation_id"].as_str().unwrap_or("").to_string());
                }
            }
            if let Some(t) = self.sent_at.get_mut(&id).and_then(|q| q.pop_front()) {
                if now >= self.measure_from {
                    let _ = self
                        .lat
                        .record(now.duration_since(t).as_micros().max(1) as u64);
                    self.acks += 1;
                }
            }
            return self.fill(id, out, now);
        }
        if text.contains("\"type\":\"error\"") {
            self.errors += 1;
            if let Some(q) = self.sent_at.get_mut(&id) {
                q.pop_front();
            }
            self.fill(id, out, now);
        }
    }
    fn on_failed(&mut self, _id: usize, _why: &str) {
        self.failed += 1;
    }
}

/// `write`: N senders, `--in-flight` chats (no AI) in flight each (default one); acked
/// messages/s and ack latency (send → ack, which the server sends only after COMMIT).
pub fn write(o: &Opts) -> Value {
    let n = o.connections;
    let toks = tokens(o, n);
    let paths: Vec<String> = toks.iter().map(|t| ws_path(t, "")).collect();
    let warm = Duration::from_secs(1);
    let start = Instant::now();
    let cpu = CpuMeter::start(o.server_pid);
    let hs = run_threads(
        o,
        paths,
        |_| WriteH {
            sent_at: HashMap::new(),
            in_flight: o.in_flight,
            conv: HashMap::new(),
            seq: HashMap::new(),
            lat: hist(),
            acks: 0,
            errors: 0,
            failed: 0,
            measure_from: start + warm,
        },
        start + warm + o.duration,
        None,
        0.0,
    );
    let acks: u64 = hs.iter().map(|h| h.acks).sum();
    let errors: u64 = hs.iter().map(|h| h.errors).sum();
    let failed: u64 = hs.iter().map(|h| h.failed).sum();
    json!({
        "scenario": "write", "senders": n, "in_flight": o.in_flight, "duration_s": o.duration.as_secs_f64(), "acked": acks,
        "acked_per_s": (acks as f64 / o.duration.as_secs_f64()).round(), "errors": errors, "failed_connections": failed,
        "ack_latency": pct(&merge(hs.into_iter().map(|h| h.lat))), "server_cpu_percent": cpu.percent(),
    })
}
