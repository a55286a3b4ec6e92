//! `echo`: round trips on N connections (the native ping or raw echo frames).

use super::*;

struct EchoH {
    sent_at: HashMap<usize, Instant>,
    payload: String,
    rtt: Histogram<u64>,
    msgs: u64,
    failed: u64,
    measure_from: Instant,
}

impl Handler for EchoH {
    fn on_open(&mut self, id: usize, out: &mut Vec<String>, now: Instant) {
        self.sent_at.insert(id, now);
        out.push(self.payload.clone());
    }
    fn on_text(&mut self, id: usize, _text: &str, out: &mut Vec<String>, now: Instant) {
        if let Some(t) = self.sent_at.get(&id) {
            if now >= self.measure_from {
                let _ = self
                    .rtt
                    .record(now.duration_since(*t).as_micros().max(1) as u64);
                self.msgs += 1;
            }
        }
        self.sent_at.insert(id, now);
        out.push(self.payload.clone());
    }
    fn on_failed(&mut self, _id: usize, _why: &str) {
        self.failed += 1;
    }
}

pub fn echo(o: &Opts) -> Value {
    let n = o.connections;
    let path = o.path.clone().unwrap_or_else(|| "/echo".into());
    let paths = vec![path.clone(); n];
    let payload: String = "x".repeat(o.size.max(1));
    // One second of warm-up (connections opening) is not measured.
    let warm = Duration::from_secs(1);
    let start = Instant::now();
    let measure_from = start + warm;
    let cpu = CpuMeter::start(o.server_pid);
    let load_cpu = CpuMeter::start(Some(std::process::id()));
    let hs = run_threads(
        o,
        paths,
        |_| EchoH {
            sent_at: HashMap::new(),
            payload: payload.clone(),
            rtt: hist(),
            msgs: 0,
            failed: 0,
            measure_from,
        },
        start + warm + o.duration,
        None,
        0.0,
    );
    let msgs: u64 = hs.iter().map(|h| h.msgs).sum();
    let failed: u64 = hs.iter().map(|h| h.failed).sum();
    json!({
        "scenario": "echo", "path": path, "connections": n, "message_bytes": o.size, "duration_s": o.duration.as_secs_f64(),
        "messages": msgs, "msgs_per_s": (msgs as f64 / o.duration.as_secs_f64()).round(),
        "rtt": pct(&merge(hs.into_iter().map(|h| h.rtt))), "failed_connections": failed,
        "server_cpu_percent": cpu.percent(), "load_cpu_percent": load_cpu.percent(),
    })
}
