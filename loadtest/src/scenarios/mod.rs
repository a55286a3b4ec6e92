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

mod blocking;
mod broadcast;
mod chat;
mod echo;
mod hold;
mod upload;
mod write;

pub use blocking::*;
pub use broadcast::*;
pub use chat::*;
pub use echo::*;
pub use hold::*;
pub use upload::*;
pub use write::*;

pub(super) fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

pub(super) fn pct(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "count": h.len(), "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999), "max": h.max(), "unit": "us",
    })
}

pub(super) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Server process facts from /proc (RSS in KiB, CPU ticks).
pub(super) fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub(super) fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(super) struct CpuMeter {
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
    /// Server CPU seconds used since start.
    fn seconds(&self) -> Option<f64> {
        let now = proc_cpu_ticks(self.pid?)?;
        Some((now - self.ticks) as f64 / 100.0) // USER_HZ on Linux
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
pub(super) fn tokens(o: &Opts, n: usize) -> Vec<String> {
    if let Some(t) = &o.token {
        return vec![t.clone(); n];
    }
    if !o.dev_tokens {
        return vec![String::new(); n];
    }
    let k = o.conns_per_user;
    let users = n.div_ceil(k).max(1);
    let minted: Vec<String> = (0..users).map(|u| mint(o, &format!("load-{u}"))).collect();
    (0..n).map(|i| minted[i / k].clone()).collect()
}

pub(super) fn mint(o: &Opts, sub: &str) -> String {
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

pub(super) fn ws_path(token: &str, extra: &str) -> String {
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
pub(super) fn run_threads<H: Handler + 'static>(
    o: &Opts,
    paths: Vec<String>,
    mut make: impl FnMut(usize) -> H,
    deadline: Instant,
    tick: Option<Duration>,
    open_rate: f64,
) -> Vec<H> {
    let target: Arc<Vec<engine::Target>> = Arc::new(
        o.targets
            .iter()
            .map(|(h, p)| engine::resolve(h, *p))
            .collect(),
    );
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

pub(super) fn merge(hs: impl Iterator<Item = Histogram<u64>>) -> Histogram<u64> {
    let mut out = hist();
    for h in hs {
        let _ = out.add(&h);
    }
    out
}
