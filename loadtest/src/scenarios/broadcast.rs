//! `broadcast`: N members of one room, a message rate, delivery latency and loss.

use super::*;

struct BcastH {
    generic: bool,
    sender: bool,
    room: String,
    joined: Arc<AtomicUsize>,
    members: usize,
    rate: f64,
    started: Option<Instant>,
    stop_at: Arc<Mutex<Option<Instant>>>,
    /// CPU meters started with the first send: the server's (`--server-pid`) and the
    /// harness's own over the same window (near 100 %: the figure measures the load
    /// generator's core as much as the server).
    cpu: Arc<Mutex<Option<(CpuMeter, CpuMeter)>>>,
    server_pid: Option<u32>,
    duration: Duration,
    sent: Arc<AtomicU64>,
    received: u64,
    dup: u64,
    seen: HashMap<usize, u64>,
    lat: Histogram<u64>,
    failed: u64,
    sent_local: u64,
    /// Message size (`--size`): the timestamp, padded.
    size: usize,
}

impl BcastH {
    fn parse_ts(&self, text: &str) -> Option<u64> {
        if self.generic {
            let t = text.strip_prefix("ts:")?;
            return t[..t.find(' ').unwrap_or(t.len())].parse().ok();
        }
        // Cheap on purpose: at 500k deliveries/s a full JSON parse per event would make
        // the harness, not the server, the bottleneck on a shared 2-core box.
        if !text.contains("\"message_added\"") {
            return None;
        }
        let at = text.find("\"content\":\"ts:")? + "\"content\":\"ts:".len();
        let digits: &str = &text[at..at + text[at..].find([' ', '"'])?];
        digits.parse().ok()
    }
}

impl Handler for BcastH {
    fn on_open(&mut self, _id: usize, _out: &mut Vec<String>, _now: Instant) {
        if self.generic {
            self.joined.fetch_add(1, Relaxed);
        }
    }
    fn on_text(&mut self, id: usize, text: &str, _out: &mut Vec<String>, now: Instant) {
        if !self.generic && text.contains("\"type\":\"subscribed\"") {
            self.joined.fetch_add(1, Relaxed);
            return;
        }
        if let Some(ts) = self.parse_ts(text) {
            let lat_us = now_ns().saturating_sub(ts) / 1000;
            let last = self.seen.entry(id).or_insert(0);
            if ts <= *last {
                self.dup += 1;
                return;
            }
            *last = ts;
            self.received += 1;
            let _ = self.lat.record(lat_us.max(1));
        }
        let _ = now;
    }
    fn on_tick(&mut self, now: Instant, sends: &mut Vec<(usize, String)>) {
        if !self.sender || self.joined.load(Relaxed) < self.members {
            return;
        }
        let started = *self.started.get_or_insert_with(|| {
            *self.stop_at.lock().unwrap() = Some(now + self.duration);
            *self.cpu.lock().unwrap() = Some((
                CpuMeter::start(self.server_pid),
                CpuMeter::start(Some(std::process::id())),
            ));
            now
        });
        if now.duration_since(started) >= self.duration {
            return;
        }
        let due = (now.duration_since(started).as_secs_f64() * self.rate) as u64 + 1;
        while self.sent_local < due {
            self.sent_local += 1;
            self.sent.fetch_add(1, Relaxed);
            let mut body = format!("ts:{}", now_ns());
            if body.len() < self.size {
                // Padded to --size (the peers relay exactly this; confab wraps it).
                body.push(' ');
                body.extend(std::iter::repeat_n(
                    'x',
                    self.size.saturating_sub(body.len()),
                ));
            }
            let msg = if self.generic {
                body
            } else {
                json!({"type": "chat", "room_id": self.room, "message": body, "ai": false})
                    .to_string()
            };
            sends.push((0, msg));
        }
    }
    fn on_failed(&mut self, _id: usize, _why: &str) {
        self.failed += 1;
    }
    fn done(&self) -> bool {
        matches!(*self.stop_at.lock().unwrap(), Some(t) if Instant::now() > t + Duration::from_secs(2))
    }
}

pub fn broadcast(o: &Opts) -> Value {
    let n = o.connections.max(2);
    let toks = tokens(o, n);
    let paths: Vec<String> = if o.generic {
        vec![o.path.clone().unwrap_or_else(|| "/".into()); n]
    } else {
        toks.iter()
            .map(|t| ws_path(t, &format!("&room_id={}", o.room)))
            .collect()
    };
    let joined = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let cpu = Arc::new(Mutex::new(None::<(CpuMeter, CpuMeter)>));
    let deadline = Instant::now() + o.duration + Duration::from_secs(120);
    let tick = Duration::from_secs_f64((1.0 / o.rate).min(0.01));
    let hs = run_threads(
        o,
        paths,
        |k| BcastH {
            generic: o.generic,
            sender: k == 0,
            room: o.room.clone(),
            joined: joined.clone(),
            members: n,
            rate: o.rate,
            started: None,
            stop_at: stop_at.clone(),
            cpu: cpu.clone(),
            server_pid: o.server_pid,
            duration: o.duration,
            sent: sent.clone(),
            received: 0,
            dup: 0,
            seen: HashMap::new(),
            lat: hist(),
            failed: 0,
            sent_local: 0,
            size: o.size,
        },
        deadline,
        Some(tick),
        2000.0,
    );
    // From the first send to the end of the drain (2 s after the last send).
    let (cpu_s, load_cpu) = match cpu.lock().unwrap().as_ref() {
        Some((server, harness)) => (server.seconds(), harness.percent()),
        None => (None, Value::Null),
    };
    let sent = sent.load(Relaxed);
    let received: u64 = hs.iter().map(|h| h.received).sum();
    let dup: u64 = hs.iter().map(|h| h.dup).sum();
    let failed: u64 = hs.iter().map(|h| h.failed).sum();
    // Every member but the sending connection receives each message.
    let expected = sent * (n as u64 - 1);
    json!({
        "scenario": "broadcast", "generic": o.generic, "members": n, "rate_per_s": o.rate, "duration_s": o.duration.as_secs_f64(),
        "sent": sent, "expected_deliveries": expected, "deliveries": received, "lost": expected.saturating_sub(received), "duplicated": dup,
        "deliveries_per_s": (received as f64 / o.duration.as_secs_f64()).round(),
        "latency": pct(&merge(hs.into_iter().map(|h| h.lat))), "failed_connections": failed,
        "server_cpu_s": cpu_s, "load_cpu_percent": load_cpu,
        "server_us_per_delivery": cpu_s.filter(|_| received > 0).map(|s| (s * 1e7 / received as f64).round() / 10.0),
    })
}
