//! `chat`: N concurrent AI streams; added token latency against the demo model's schedule.

use super::*;

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
    /// Added latency of tokens in a stream's first second, and of the rest.
    lag_first_s: Histogram<u64>,
    lag_later: Histogram<u64>,
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
                        let us = t.saturating_duration_since(ideal).as_micros().max(1) as u64;
                        let _ = self.lag.record(us);
                        // The stream's first second (where simultaneous starts collide)
                        // and the rest, apart: where the tail comes from.
                        let _ = if (*i as f64) < self.rate {
                            self.lag_first_s.record(us)
                        } else {
                            self.lag_later.record(us)
                        };
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
            lag_first_s: hist(),
            lag_later: hist(),
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
    let mut lag_first_s = hist();
    let mut lag_later = hist();
    let mut comp = hist();
    for h in hs {
        let _ = ft.add(&h.first_token);
        let _ = lag.add(&h.lag);
        let _ = lag_first_s.add(&h.lag_first_s);
        let _ = lag_later.add(&h.lag_later);
        let _ = comp.add(&h.completion);
    }
    json!({
        "scenario": "chat", "chats": n, "demo_tokens_per_s": o.rate, "open_rate": o.open_rate, "completed": completed, "errors": errors, "failed_connections": failed,
        "tokens": tokens, "tokens_per_s": (tokens as f64 / elapsed).round(), "reordered": reordered, "text_mismatches": mismatched,
        "first_token": pct(&ft), "token_added_latency": pct(&lag),
        "token_added_latency_first_s": pct(&lag_first_s), "token_added_latency_after_first_s": pct(&lag_later), "completion": pct(&comp),
        "server_cpu_percent": cpu_pct, "server_rss_kib": rss, "elapsed_s": (elapsed * 100.0).round() / 100.0,
    })
}
