//! A small stderr logger for the `log` facade: one line per event, as text
//! (`TIME LEVEL [thread] message`) or JSON (`server.log_format = "json"`: `ts`, `level`,
//! `thread`, `target`, `msg`). Shard threads are named `shard-N`; connection messages
//! carry `[sN cSLOT.GEN]` themselves.
//!
//! Levels: `server.log_level`, or `RUST_LOG` with directives as env_logger reads them —
//! `warn`, `confab=debug`, `confab::store=trace,info` (the longest matching target prefix
//! wins). A directive that cannot be read is reported on stderr, not ignored.
//!
//! The same warning or error repeated (an fd limit hit every 200 ms, say) is written at
//! most [`BURST`] times per [`WINDOW`]; the next line after the window says how many were
//! suppressed.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::Write;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter};
use parking_lot::Mutex;

/// Identical warnings/errors written per window before the rest are counted instead.
pub const BURST: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Levels by target prefix, plus the default.
#[derive(Debug, Clone, PartialEq)]
pub struct Directives {
    default: LevelFilter,
    /// (target prefix, level), longest prefix first.
    targets: Vec<(String, LevelFilter)>,
}

impl Directives {
    pub fn level(default: LevelFilter) -> Directives {
        Directives {
            default,
            targets: Vec::new(),
        }
    }

    /// Parse `RUST_LOG`-style directives over `default`. Errors name the bad directive.
    pub fn parse(spec: &str, default: LevelFilter) -> Result<Directives, String> {
        let mut d = Directives::level(default);
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                None => match part.parse::<LevelFilter>() {
                    Ok(l) => d.default = l,
                    // A bare module name means "everything" for it, as env_logger reads it.
                    Err(_) if is_target(part) => d.targets.push((part.into(), LevelFilter::Trace)),
                    Err(_) => return Err(format!("`{part}` is not a level or a module path")),
                },
                Some((target, level)) => {
                    let l = level
                        .trim()
                        .parse::<LevelFilter>()
                        .map_err(|_| format!("`{level}` in `{part}` is not a level"))?;
                    let target = target.trim();
                    if !is_target(target) {
                        return Err(format!("`{target}` in `{part}` is not a module path"));
                    }
                    d.targets.push((target.into(), l));
                }
            }
        }
        d.targets.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        Ok(d)
    }

    pub fn enabled(&self, target: &str, level: Level) -> bool {
        let max = self
            .targets
            .iter()
            .find(|(t, _)| {
                target == t
                    || (target.starts_with(t.as_str()) && target[t.len()..].starts_with("::"))
            })
            .map_or(self.default, |(_, l)| *l);
        level <= max
    }

    /// The most verbose level any directive allows (for `log::set_max_level`).
    pub fn max(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, |a, b| a.max(b))
    }
}

fn is_target(s: &str) -> bool {
    !s.is_empty()
        && s.split("::")
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Counts repeats of one warning or error text.
#[derive(Default)]
pub struct Repeats {
    seen: HashMap<u64, (Instant, u32)>,
    hasher: std::collections::hash_map::RandomState,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Emit {
    /// Write it; `suppressed` identical lines were dropped in the window before.
    Yes {
        suppressed: u32,
    },
    No,
}

impl Repeats {
    pub fn check(&mut self, text: &str, now: Instant) -> Emit {
        let key = self.hasher.hash_one(text);
        if self.seen.len() > 1024 {
            self.seen
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let e = self.seen.entry(key).or_insert((now, 0));
        if now.duration_since(e.0) >= WINDOW {
            let suppressed = e.1.saturating_sub(BURST);
            *e = (now, 1);
            return Emit::Yes { suppressed };
        }
        e.1 += 1;
        if e.1 <= BURST {
            Emit::Yes { suppressed: 0 }
        } else {
            Emit::No
        }
    }
}

struct StderrLogger {
    directives: Directives,
    format: Format,
    repeats: Mutex<Repeats>,
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.directives.enabled(m.target(), m.level())
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut msg = r.args().to_string();
        if r.level() <= Level::Warn {
            match self.repeats.lock().check(&msg, Instant::now()) {
                Emit::No => return,
                Emit::Yes { suppressed: 0 } => {}
                Emit::Yes { suppressed } => msg.push_str(&format!(
                    " (repeated {suppressed} more times in the last window)"
                )),
            }
        }
        let t = std::thread::current();
        let thread = t.name().unwrap_or("main");
        let line = match self.format {
            Format::Text => format!(
                "{} {:5} [{thread}] {msg}\n",
                crate::protocol::now_rfc3339(),
                r.level(),
            ),
            Format::Json => format!(
                "{{\"ts\":{},\"level\":{},\"thread\":{},\"target\":{},\"msg\":{}}}\n",
                json_str(&crate::protocol::now_rfc3339()),
                json_str(r.level().as_str()),
                json_str(thread),
                json_str(r.target()),
                json_str(&msg),
            ),
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// A line for the operator that no level filters out (the "serving on" banner), in the
/// configured format, so that a JSON log stays JSON.
pub fn announce(msg: &str) {
    let line = match FORMAT.get().copied().unwrap_or(Format::Text) {
        Format::Text => format!("confab: {msg}\n"),
        Format::Json => format!(
            "{{\"ts\":{},\"level\":\"INFO\",\"thread\":\"main\",\"target\":\"confab\",\"msg\":{}}}\n",
            json_str(&crate::protocol::now_rfc3339()),
            json_str(msg),
        ),
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Install the logger: `RUST_LOG` directives win over `level`; a directive that cannot be
/// read is reported and the configured level used.
pub fn init(level: LevelFilter, format: Format) {
    let _ = FORMAT.set(format);
    let directives = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            Directives::parse(&spec, level).unwrap_or_else(|e| {
                eprintln!("confab: RUST_LOG ignored: {e}");
                Directives::level(level)
            })
        }
        _ => Directives::level(level),
    };
    let max = directives.max();
    let logger = StderrLogger {
        directives,
        format,
        repeats: Mutex::new(Repeats::default()),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

/// An authentication failure, at info with the peer and the reason — at most
/// `AUTH_LINES_PER_S` lines a second (a token-guessing client must not flood the log);
/// the next line written says how many were left out.
pub fn auth_failure(peer: Option<std::net::SocketAddr>, what: &str, reason: &str) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static WINDOW_S: AtomicU64 = AtomicU64::new(0);
    static IN_WINDOW: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now_s = crate::auth::now_s();
    if WINDOW_S.swap(now_s, Relaxed) != now_s {
        IN_WINDOW.store(0, Relaxed);
    }
    if IN_WINDOW.fetch_add(1, Relaxed) >= AUTH_LINES_PER_S {
        SUPPRESSED.fetch_add(1, Relaxed);
        return;
    }
    let left_out = SUPPRESSED.swap(0, Relaxed);
    let peer = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
    if left_out > 0 {
        log::info!("{what} refused from {peer}: {reason} ({left_out} more refusals not logged)");
    } else {
        log::info!("{what} refused from {peer}: {reason}");
    }
}

const AUTH_LINES_PER_S: u64 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_pick_the_longest_matching_target() {
        let d =
            Directives::parse("confab=debug,confab::store=trace,warn", LevelFilter::Info).unwrap();
        assert!(d.enabled("confab::store::writer", Level::Trace));
        assert!(d.enabled("confab::net::io", Level::Debug));
        assert!(!d.enabled("confab::net::io", Level::Trace));
        assert!(!d.enabled("ureq::unit", Level::Info), "default is warn");
        assert!(
            !d.enabled("confabulator", Level::Debug),
            "a prefix is a whole module"
        );
        assert_eq!(d.max(), LevelFilter::Trace);
        assert_eq!(
            Directives::parse("debug", LevelFilter::Info).unwrap(),
            Directives::level(LevelFilter::Debug)
        );
        assert!(Directives::parse("confab=loud", LevelFilter::Info).is_err());
        assert!(Directives::parse("not a module", LevelFilter::Info).is_err());
    }

    #[test]
    fn a_repeating_line_is_written_a_few_times_per_window_then_counted() {
        let mut r = Repeats::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(r.check("EMFILE", t0), Emit::Yes { suppressed: 0 });
        }
        for _ in 0..95 {
            assert_eq!(r.check("EMFILE", t0), Emit::No);
        }
        assert_eq!(r.check("other", t0), Emit::Yes { suppressed: 0 });
        assert_eq!(r.check("EMFILE", t0 + WINDOW), Emit::Yes { suppressed: 95 });
    }
}
