//! The scenarios. Each returns one JSON object: the configuration, counts, latency
//! percentiles (microseconds), throughput, errors, and lost/duplicated messages.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::engine::{self, Handler};
use crate::Opts;

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn pct(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "count": h.len(), "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999), "max": h.max(), "unit": "us",
    })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Server process facts from /proc (RSS in KiB, CPU ticks).
fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

struct CpuMeter {
    pid: Option<u32>,
    ticks: u64,
    at: Instant,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            ticks: pid.and_then(proc_cpu_ticks).unwrap_or(0),
            at: Instant::now(),
        }
    }
    /// Server CPU use since start, in percent of one core.
    fn percent(&self) -> Value {
        let Some(pid) = self.pid else {
            return Value::Null;
        };
        let Some(now) = proc_cpu_ticks(pid) else {
            return Value::Null;
        };
        let hz = 100.0; // USER_HZ on Linux
        let secs = self.at.elapsed().as_secs_f64();
        json!(((now - self.ticks) as f64 / hz / secs * 100.0 * 10.0).round() / 10.0)
    }
}

/// Tokens: the given one, or dev tokens minted over HTTP (one user per 50 connections,
/// below the default per-user cap).
fn tokens(o: &Opts, n: usize) -> Vec<String> {
    if let Some(t) = &o.token {
        return vec![t.clone(); n];
    }
    if !o.dev_tokens {
        return vec![String::new(); n];
    }
    let users = n.div_ceil(50).max(1);
    let minted: Vec<String> = (0..users).map(|u| mint(o, &format!("load-{u}"))).collect();
    (0..n).map(|i| minted[i / 50].clone()).collect()
}

fn mint(o: &Opts, sub: &str) -> String {
    let body = json!({"sub": sub}).to_string();
    let mut s =
        TcpStream::connect((o.host.as_str(), o.port)).expect("server reachable for /v1/token");
    let req = format!("POST /v1/token HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", o.host, body.len());
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let json_body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let v: Value = serde_json::from_str(json_body).unwrap_or(Value::Null);
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("POST /v1/token failed: {out}"))
        .to_string()
}

fn ws_path(token: &str, extra: &str) -> String {
    if token.is_empty() {
        format!(
            "/v1/ws{}",
            if extra.is_empty() {
                String::new()
            } else {
                format!("?{}", &extra[1..])
            }
        )
    } else {
        format!("/v1/ws?token={token}{extra}")
    }
}

/// Split ids over threads and run one engine per thread with its own handler.
fn run_threads<H: Handler + 'static>(
    o: &Opts,
    paths: Vec<String>,
    mut make: impl FnMut(usize) -> H,
    deadline: Instant,
    tick: Option<Duration>,
    open_rate: f64,
) -> Vec<H> {
    let target = Arc::new(engine::resolve(&o.host, o.port));
    let t = o.threads.min(paths.len().max(1));
    let mut groups: Vec<Vec<(usize, String)>> = vec![Vec::new(); t];
    for (i, p) in paths.into_iter().enumerate() {
        groups[i % t].push((i, p));
    }
    let handles: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(k, ids)| {
            let mut h = make(k);
            let target = target.clone();
            let rate = open_rate / t as f64;
            std::thread::spawn(move || {
                engine::run(&target, ids, &mut h, deadline, tick, rate);
                h
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("load thread"))
        .collect()
}

fn merge(hs: impl Iterator<Item = Histogram<u64>>) -> Histogram<u64> {
    let mut out = hist();
    for h in hs {
        let _ = out.add(&h);
    }
    out
}

// ---------------------------------------------------------------- hold

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
        toks.iter().map(|t| ws_path(t, "")).collect()
    };
    let rss_before = o.server_pid.and_then(proc_rss_kib);
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let deadline = t0 + o.duration;
    let (c2, f2) = (connected.clone(), failed.clone());
    let pid = o.server_pid;
    let watcher = std::thread::spawn(move || {
        // Time to open them all, and the server's RSS once they are all open.
        while c2.load(Relaxed) + f2.load(Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let open_s = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
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
        0.0,
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

// ---------------------------------------------------------------- echo

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
        "server_cpu_percent": cpu.percent(),
    })
}

// ---------------------------------------------------------------- broadcast

struct BcastH {
    generic: bool,
    sender: bool,
    room: String,
    joined: Arc<AtomicUsize>,
    members: usize,
    rate: f64,
    started: Option<Instant>,
    stop_at: Arc<Mutex<Option<Instant>>>,
    duration: Duration,
    sent: Arc<AtomicU64>,
    received: u64,
    dup: u64,
    seen: HashMap<usize, u64>,
    lat: Histogram<u64>,
    failed: u64,
    sent_local: u64,
}

impl BcastH {
    fn parse_ts(&self, text: &str) -> Option<u64> {
        if self.generic {
            return text
                .trim()
                .strip_prefix("ts:")
                .unwrap_or(text.trim())
                .parse()
                .ok();
        }
        // Cheap on purpose: at 500k deliveries/s a full JSON parse per event would make
        // the harness, not the server, the bottleneck on a shared 2-core box.
        if !text.contains("\"message_added\"") {
            return None;
        }
        let at = text.find("\"content\":\"ts:")? + "\"content\":\"ts:".len();
        let digits: &str = &text[at..at + text[at..].find('"')?];
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
            now
        });
        if now.duration_since(started) >= self.duration {
            return;
        }
        let due = (now.duration_since(started).as_secs_f64() * self.rate) as u64 + 1;
        while self.sent_local < due {
            self.sent_local += 1;
            self.sent.fetch_add(1, Relaxed);
            let body = format!("ts:{}", now_ns());
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
    let cpu_start = Arc::new(Mutex::new(None::<CpuMeter>));
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
            duration: o.duration,
            sent: sent.clone(),
            received: 0,
            dup: 0,
            seen: HashMap::new(),
            lat: hist(),
            failed: 0,
            sent_local: 0,
        },
        deadline,
        Some(tick),
        2000.0,
    );
    drop(cpu_start);
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
    })
}

// ---------------------------------------------------------------- chat

#[derive(Default)]
struct ChatState {
    sent: Option<Instant>,
    first: Option<Instant>,
    /// (token index, arrival) for the added-latency estimate at the end of the stream.
    arrivals: Vec<(u64, Instant)>,
    next_index: u64,
    text: String,
    done: bool,
}

struct ChatH {
    rate: f64,
    st: HashMap<usize, ChatState>,
    first_token: Histogram<u64>,
    lag: Histogram<u64>,
    completion: Histogram<u64>,
    tokens: u64,
    reordered: u64,
    mismatched: u64,
    completed: u64,
    errors: u64,
    expected: usize,
    failed: u64,
}

impl Handler for ChatH {
    fn on_open(&mut self, _id: usize, _out: &mut Vec<String>, _now: Instant) {}
    fn on_text(&mut self, id: usize, text: &str, out: &mut Vec<String>, now: Instant) {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => return,
        };
        let s = self.st.entry(id).or_default();
        match v["type"].as_str().unwrap_or("") {
            "connected" => {
                s.sent = Some(now);
                out.push(json!({"type": "chat", "id": format!("load-{id}-{}", now_ns()), "message": "Tell me about load testing."}).to_string());
            }
            "token" => {
                let idx = v["index"].as_u64().unwrap_or(0);
                let count = v["count"].as_u64().unwrap_or(1);
                if idx != s.next_index {
                    self.reordered += 1;
                }
                s.next_index = idx + count;
                s.text.push_str(v["token"].as_str().unwrap_or(""));
                self.tokens += count;
                s.arrivals.push((idx, now));
                if s.first.is_none() {
                    s.first = Some(now);
                    if let Some(t) = s.sent {
                        let _ = self
                            .first_token
                            .record(now.duration_since(t).as_micros().max(1) as u64);
                    }
                }
            }
            "complete" if !s.done => {
                s.done = true;
                self.completed += 1;
                // The demo emits token i at start + i/rate. Anchor the schedule at the
                // least-delayed token (the best case we saw); every other token's lag
                // behind that schedule is latency the server added.
                let period = Duration::from_secs_f64(1.0 / self.rate);
                let anchor = s
                    .arrivals
                    .iter()
                    .map(|(i, t)| *t - period * (*i as u32))
                    .min();
                if let Some(anchor) = anchor {
                    for (i, t) in &s.arrivals {
                        let ideal = anchor + period * (*i as u32);
                        let _ = self
                            .lag
                            .record(t.saturating_duration_since(ideal).as_micros().max(1) as u64);
                    }
                }
                if v["response"].as_str() != Some(s.text.as_str()) {
                    self.mismatched += 1;
                }
                if let Some(t) = s.sent {
                    let _ = self
                        .completion
                        .record(now.duration_since(t).as_micros().max(1) as u64);
                }
            }
            "error" => self.errors += 1,
            _ => {}
        }
    }
    fn on_failed(&mut self, _id: usize, _why: &str) {
        self.failed += 1;
    }
    fn done(&self) -> bool {
        self.completed as usize + self.failed as usize >= self.expected
    }
}

pub fn chat(o: &Opts) -> Value {
    let n = o.connections;
    let toks = tokens(o, n);
    let paths: Vec<String> = toks.iter().map(|t| ws_path(t, "")).collect();
    let t = o.threads.min(n.max(1));
    let start = Instant::now();
    let cpu = CpuMeter::start(o.server_pid);
    let per_thread: Vec<usize> = (0..t)
        .map(|k| (0..n).filter(|i| i % t == k).count())
        .collect();
    let hs = run_threads(
        o,
        paths,
        |k| ChatH {
            rate: o.rate,
            st: HashMap::new(),
            first_token: hist(),
            lag: hist(),
            completion: hist(),
            tokens: 0,
            reordered: 0,
            mismatched: 0,
            completed: 0,
            errors: 0,
            expected: per_thread[k],
            failed: 0,
        },
        start + o.duration,
        None,
        o.open_rate,
    );
    let elapsed = start.elapsed().as_secs_f64();
    let rss = o.server_pid.and_then(proc_rss_kib);
    let sum = |f: fn(&ChatH) -> u64| hs.iter().map(f).sum::<u64>();
    let (tokens, completed, reordered, mismatched, errors, failed) = (
        sum(|h| h.tokens),
        sum(|h| h.completed),
        sum(|h| h.reordered),
        sum(|h| h.mismatched),
        sum(|h| h.errors),
        sum(|h| h.failed),
    );
    let cpu_pct = cpu.percent();
    let mut ft = hist();
    let mut lag = hist();
    let mut comp = hist();
    for h in hs {
        let _ = ft.add(&h.first_token);
        let _ = lag.add(&h.lag);
        let _ = comp.add(&h.completion);
    }
    json!({
        "scenario": "chat", "chats": n, "demo_tokens_per_s": o.rate, "open_rate": o.open_rate, "completed": completed, "errors": errors, "failed_connections": failed,
        "tokens": tokens, "tokens_per_s": (tokens as f64 / elapsed).round(), "reordered": reordered, "text_mismatches": mismatched,
        "first_token": pct(&ft), "token_added_latency": pct(&lag), "completion": pct(&comp),
        "server_cpu_percent": cpu_pct, "server_rss_kib": rss, "elapsed_s": (elapsed * 100.0).round() / 100.0,
    })
}

// ---------------------------------------------------------------- blocking clients

type Ws = tungstenite::WebSocket<TcpStream>;

fn connect_blocking(o: &Opts, path: &str) -> Result<Ws, String> {
    let sock = TcpStream::connect((o.host.as_str(), o.port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
    sock.set_nodelay(true).ok();
    let url = format!("ws://{}:{}{}", o.host, o.port, path);
    tungstenite::client(url, sock)
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

fn read_until(ws: &mut Ws, ty: &str) -> Result<Value, String> {
    loop {
        match ws.read().map_err(|e| e.to_string())? {
            tungstenite::Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                if v["type"] == ty {
                    return Ok(v);
                }
                if v["type"] == "error" {
                    return Err(format!("error event: {v}"));
                }
            }
            tungstenite::Message::Close(f) => return Err(format!("closed: {f:?}")),
            _ => {}
        }
    }
}

pub fn churn(o: &Opts) -> Value {
    let workers = o.connections.max(1);
    let toks = tokens(o, workers);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(hist()));
    let start = Instant::now();
    let cpu = CpuMeter::start(o.server_pid);
    std::thread::scope(|s| {
        for tok in toks.iter().take(workers) {
            let (stop, done, failed, lat) =
                (stop.clone(), done.clone(), failed.clone(), lat.clone());
            let path = ws_path(tok, "");
            s.spawn(move || {
                let mut local = hist();
                while !stop.load(Relaxed) {
                    let t = Instant::now();
                    let r = (|| -> Result<(), String> {
                        let mut ws = connect_blocking(o, &path)?;
                        read_until(&mut ws, "connected")?;
                        ws.send(tungstenite::Message::text(r#"{"type":"ping"}"#))
                            .map_err(|e| e.to_string())?;
                        read_until(&mut ws, "pong")?;
                        let _ = ws.close(None);
                        let _ = ws.flush();
                        Ok(())
                    })();
                    match r {
                        Ok(()) => {
                            done.fetch_add(1, Relaxed);
                            let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Relaxed);
                        }
                    }
                }
                let _ = lat.lock().unwrap().add(&local);
            });
        }
        std::thread::sleep(o.duration);
        stop.store(true, Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Relaxed);
    let lat = lat.lock().unwrap();
    json!({
        "scenario": "churn", "workers": workers, "cycles": n, "failed": failed.load(Relaxed),
        "connections_per_s": (n as f64 / elapsed).round(), "cycle_latency": pct(&lat), "server_cpu_percent": cpu.percent(),
    })
}

pub fn resume(o: &Opts) -> Value {
    let n = o.connections.max(1);
    let toks = tokens(o, n);
    let ok = AtomicU64::new(0);
    let bad = AtomicU64::new(0);
    let errors: Mutex<Vec<String>> = Mutex::default();
    let workers = n.min(64);
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= n {
                    return;
                }
                let path = ws_path(&toks[i], "");
                let r = (|| -> Result<bool, String> {
                    let mut a = connect_blocking(o, &path)?;
                    read_until(&mut a, "connected")?;
                    a.send(tungstenite::Message::text(json!({"type": "chat", "id": format!("resume-{i}-{}", now_ns()), "message": "resume test"}).to_string())).map_err(|e| e.to_string())?;
                    let conv = read_until(&mut a, "ack")?["conversation_id"].as_str().unwrap_or("").to_string();
                    for _ in 0..3 {
                        read_until(&mut a, "token")?;
                    }
                    drop(a); // drop mid-stream
                    let mut b = connect_blocking(o, &path)?;
                    read_until(&mut b, "connected")?;
                    b.send(tungstenite::Message::text(json!({"type": "subscribe", "conversation_id": conv, "after_seq": 0}).to_string())).map_err(|e| e.to_string())?;
                    let mut text = String::new();
                    let mut next_index: Option<u64> = None;
                    loop {
                        let tungstenite::Message::Text(t) = b.read().map_err(|e| e.to_string())? else { continue };
                        let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                        match v["type"].as_str().unwrap_or("") {
                            "message_added" if v["message"]["role"] == "assistant" => text = v["message"]["content"].as_str().unwrap_or("").to_string(),
                            "token" => {
                                let idx = v["index"].as_u64().unwrap_or(0);
                                if next_index.is_some_and(|n| n != idx) {
                                    return Ok(false);
                                }
                                next_index = Some(idx + v["count"].as_u64().unwrap_or(1));
                                text.push_str(v["token"].as_str().unwrap_or(""));
                            }
                            "complete" => return Ok(v["response"].as_str() == Some(text.as_str())),
                            _ => {}
                        }
                    }
                })();
                match r {
                    Ok(true) => {
                        ok.fetch_add(1, Relaxed);
                    }
                    Ok(false) => {
                        bad.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        bad.fetch_add(1, Relaxed);
                        errors.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    let errs = errors.into_inner().unwrap();
    json!({
        "scenario": "resume", "clients": n, "rebuilt_exactly": ok.load(Relaxed), "gap_or_duplicate_or_error": bad.load(Relaxed),
        "errors": errs.iter().take(5).collect::<Vec<_>>(), "elapsed_s": (start.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    })
}

// ---------------------------------------------------------------- write (store path)

struct WriteH {
    sent_at: HashMap<usize, Instant>,
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
        self.sent_at.insert(id, now);
        out.push(m.to_string());
    }
}

impl Handler for WriteH {
    fn on_open(&mut self, _id: usize, _out: &mut Vec<String>, _now: Instant) {}
    fn on_text(&mut self, id: usize, text: &str, out: &mut Vec<String>, now: Instant) {
        if text.contains("\"type\":\"connected\"") {
            return self.next(id, out, now);
        }
        if text.contains("\"type\":\"ack\"") {
            if let std::collections::hash_map::Entry::Vacant(e) = self.conv.entry(id) {
                if let Ok(v) = serde_json::from_str::<Value>(text) {
                    e.insert(v["conversation_id"].as_str().unwrap_or("").to_string());
                }
            }
            if let Some(t) = self.sent_at.get(&id) {
                if now >= self.measure_from {
                    let _ = self
                        .lat
                        .record(now.duration_since(*t).as_micros().max(1) as u64);
                    self.acks += 1;
                }
            }
            return self.next(id, out, now);
        }
        if text.contains("\"type\":\"error\"") {
            self.errors += 1;
            self.next(id, out, now);
        }
    }
    fn on_failed(&mut self, _id: usize, _why: &str) {
        self.failed += 1;
    }
}

/// `write`: N senders, one chat (no AI) in flight each; acked messages/s and ack latency
/// (send → ack, which the server sends only after COMMIT).
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
        "scenario": "write", "senders": n, "duration_s": o.duration.as_secs_f64(), "acked": acks,
        "acked_per_s": (acks as f64 / o.duration.as_secs_f64()).round(), "errors": errors, "failed_connections": failed,
        "ack_latency": pct(&merge(hs.into_iter().map(|h| h.lat))), "server_cpu_percent": cpu.percent(),
    })
}

// ---------------------------------------------------------------- upload (files)

/// The file every connection uploads, and its base64 chunks for one chunk size.
struct UploadFile {
    data: Arc<Vec<u8>>,
    sha256: String,
    chunks: Option<(usize, Arc<Vec<String>>)>,
}

impl UploadFile {
    fn chunks(&mut self, size: usize) -> Arc<Vec<String>> {
        use base64::Engine;
        match &self.chunks {
            Some((s, c)) if *s == size => c.clone(),
            _ => {
                let c: Arc<Vec<String>> = Arc::new(
                    self.data
                        .chunks(size.max(1))
                        .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
                        .collect(),
                );
                self.chunks = Some((size, c.clone()));
                c
            }
        }
    }
}

/// One connection's upload in progress: file id, next chunk, the chunks, when it started.
type UploadState = (String, usize, Arc<Vec<String>>, Instant);

struct UploadH {
    file: UploadFile,
    state: HashMap<usize, UploadState>,
    lat: Histogram<u64>,
    done: u64,
    bytes: u64,
    errors: u64,
    failed: u64,
    first_error: Option<String>,
    measure_from: Instant,
}

impl UploadH {
    fn start(&mut self, id: usize, out: &mut Vec<String>) {
        out.push(
            json!({"type": "file_upload", "upload_type": "init", "file_name": "load.zip",
                   "file_size": self.file.data.len(), "mime_type": "application/octet-stream"})
            .to_string(),
        );
        self.state.remove(&id);
    }

    fn chunk(&mut self, id: usize, out: &mut Vec<String>) {
        let Some((fid, next, chunks, _)) = self.state.get_mut(&id) else {
            return;
        };
        if *next < chunks.len() {
            out.push(format!(
                r#"{{"type":"file_upload","upload_type":"chunk","file_id":"{fid}","chunk_index":{next},"total_chunks":{},"chunk_data":"{}"}}"#,
                chunks.len(),
                chunks[*next]
            ));
            *next += 1;
        } else {
            out.push(
                json!({"type": "file_upload", "upload_type": "finalize", "file_id": fid,
                       "checksum": self.file.sha256})
                .to_string(),
            );
        }
    }
}

impl Handler for UploadH {
    fn on_open(&mut self, _id: usize, _out: &mut Vec<String>, _now: Instant) {}
    fn on_text(&mut self, id: usize, text: &str, out: &mut Vec<String>, now: Instant) {
        if text.contains("\"type\":\"connected\"") {
            return self.start(id, out);
        }
        if text.contains("\"type\":\"error\"") {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(text.chars().take(200).collect());
            }
            return self.start(id, out);
        }
        if !text.contains("\"type\":\"file_upload\"") {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        match v["upload_type"].as_str() {
            Some("init") => {
                let size = v["max_chunk_bytes"].as_u64().unwrap_or(1) as usize;
                let chunks = self.file.chunks(size);
                let fid = v["file_id"].as_str().unwrap_or("").to_string();
                self.state.insert(id, (fid, 0, chunks, now));
                self.chunk(id, out);
            }
            Some("chunk") => self.chunk(id, out),
            Some("complete") => {
                if let Some((_, _, _, started)) = self.state.get(&id) {
                    if now >= self.measure_from {
                        let _ = self
                            .lat
                            .record(now.duration_since(*started).as_micros().max(1) as u64);
                        self.done += 1;
                        self.bytes += v["size"].as_u64().unwrap_or(0);
                    }
                }
                self.start(id, out);
            }
            _ => {}
        }
    }
    fn on_failed(&mut self, _id: usize, _why: &str) {
        self.failed += 1;
    }
}

/// `upload`: N connections, each uploading a `--size`-byte file (default 1 MiB) over and
/// over: init, chunks in order (each answered before the next), finalize with the
/// SHA-256. Uploads/s, MB/s and the time per upload (init sent → complete received).
pub fn upload(o: &Opts) -> Value {
    use sha2::Digest;
    let n = o.connections;
    let size = if o.size == 32 { 1 << 20 } else { o.size };
    let mut x: u32 = 0x9e37_79b9;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let sha256: String = sha2::Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let data = Arc::new(data);
    let toks = tokens(o, n);
    let paths: Vec<String> = toks.iter().map(|t| ws_path(t, "")).collect();
    let warm = Duration::from_secs(1);
    let start = Instant::now();
    let cpu = CpuMeter::start(o.server_pid);
    let hs = run_threads(
        o,
        paths,
        |_| UploadH {
            file: UploadFile {
                data: data.clone(),
                sha256: sha256.clone(),
                chunks: None,
            },
            state: HashMap::new(),
            lat: hist(),
            done: 0,
            bytes: 0,
            errors: 0,
            failed: 0,
            first_error: None,
            measure_from: start + warm,
        },
        start + warm + o.duration,
        None,
        0.0,
    );
    let secs = o.duration.as_secs_f64();
    let done: u64 = hs.iter().map(|h| h.done).sum();
    let bytes: u64 = hs.iter().map(|h| h.bytes).sum();
    let errors: u64 = hs.iter().map(|h| h.errors).sum();
    let failed: u64 = hs.iter().map(|h| h.failed).sum();
    let first_error = hs.iter().find_map(|h| h.first_error.clone());
    json!({
        "scenario": "upload", "connections": n, "file_bytes": size, "duration_s": secs,
        "uploads": done, "uploads_per_s": (done as f64 / secs * 10.0).round() / 10.0,
        "mb_per_s": (bytes as f64 / secs / 1e6 * 10.0).round() / 10.0,
        "errors": errors, "first_error": first_error, "failed_connections": failed,
        "upload_time": pct(&merge(hs.into_iter().map(|h| h.lat))), "server_cpu_percent": cpu.percent(),
    })
}
