//! A small stderr logger for the `log` facade: one line per event,
//! `TIME LEVEL [thread] message`; shard threads are named `shard-N`, and connection
//! messages carry `[sN cSLOT.GEN]` themselves.

use std::io::Write;

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = std::thread::current();
        let line = format!(
            "{} {:5} [{}] {}\n",
            crate::protocol::now_rfc3339(),
            r.level(),
            t.name().unwrap_or("main"),
            r.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Install the logger. `RUST_LOG` (a plain level such as `debug`) wins over the config.
pub fn init(level: log::LevelFilter) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(level);
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}
