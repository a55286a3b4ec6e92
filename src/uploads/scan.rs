//! Virus scanning with ClamAV's daemon, clamd: a finished upload is streamed to it with
//! `zINSTREAM` (length-prefixed chunks, a zero length to end) and its one-line answer is
//! the verdict — `stream: OK`, `stream: <signature> FOUND`, or an `… ERROR`. Runs on an
//! upload worker thread (blocking, bounded by `uploads.scan_timeout_ms`); the shard never
//! waits on it. `GET /health` reports the scanner from the last answer clamd gave.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::config::{ClamdAddress, ScanConfig};

/// What clamd said about one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// The signature's name.
    Infected(String),
    /// Larger than clamd's `StreamMaxLength`.
    TooLarge,
    /// No verdict: clamd down, timed out, or answered an error.
    Failed(String),
}

/// The scanner's health as `/health` shows it.
pub const SCANNER_OFF: u8 = 0;
pub const SCANNER_OK: u8 = 1;
pub const SCANNER_FAILING: u8 = 2;

/// How often an idle upload worker asks clamd whether it is alive.
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// Bytes per `INSTREAM` chunk.
const CHUNK: usize = 64 * 1024;

pub struct Scanner {
    cfg: ScanConfig,
    state: AtomicU8,
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(b),
            Conn::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(b),
            Conn::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

impl Scanner {
    pub fn new(cfg: ScanConfig) -> Scanner {
        Scanner {
            cfg,
            state: AtomicU8::new(SCANNER_OK),
        }
    }

    pub fn config(&self) -> &ScanConfig {
        &self.cfg
    }

    /// `ok` or `failing`, from clamd's last answer (or its silence).
    pub fn state(&self) -> u8 {
        self.state.load(Relaxed)
    }

    fn connect(&self, timeout: Duration) -> io::Result<Conn> {
        let conn = match &self.cfg.address {
            ClamdAddress::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Conn::Unix(s)
            }
            ClamdAddress::Tcp(a) => {
                let addr = std::net::ToSocketAddrs::to_socket_addrs(a.as_str())?
                    .next()
                    .ok_or_else(|| io::Error::other(format!("{a}: no address")))?;
                let s = TcpStream::connect_timeout(&addr, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Conn::Tcp(s)
            }
        };
        Ok(conn)
    }

    /// Is clamd there? (`zPING` → `PONG`.) Updates the state `/health` shows.
    pub fn ping(&self) -> Result<(), String> {
        let r = (|| {
            let mut c = self
                .connect(self.cfg.timeout.min(Duration::from_secs(2)))
                .map_err(|e| format!("cannot reach clamd at {}: {e}", self.where_()))?;
            c.write_all(b"zPING\0").map_err(|e| e.to_string())?;
            let answer = read_answer(&mut c).map_err(|e| e.to_string())?;
            if answer == "PONG" {
                Ok(())
            } else {
                Err(format!("clamd answered {answer:?} to PING"))
            }
        })();
        self.state.store(
            if r.is_ok() {
                SCANNER_OK
            } else {
                SCANNER_FAILING
            },
            Relaxed,
        );
        r
    }

    /// Scan the file at `path` (`size` bytes).
    pub fn scan(&self, path: &Path, size: u64) -> Verdict {
        if size > self.cfg.stream_max_bytes {
            return Verdict::TooLarge;
        }
        let v = self.scan_stream(path);
        let state = match &v {
            Verdict::Failed(_) => SCANNER_FAILING,
            _ => SCANNER_OK,
        };
        self.state.store(state, Relaxed);
        v
    }

    fn where_(&self) -> String {
        match &self.cfg.address {
            ClamdAddress::Unix(p) => format!("unix:{}", p.display()),
            ClamdAddress::Tcp(a) => format!("tcp:{a}"),
        }
    }

    fn scan_stream(&self, path: &Path) -> Verdict {
        let deadline = Instant::now() + self.cfg.timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => return Verdict::Failed(format!("cannot read the upload: {e}")),
        };
        let mut c = match self.connect(left()) {
            Ok(c) => c,
            Err(e) => {
                return Verdict::Failed(format!("cannot reach clamd at {}: {e}", self.where_()))
            }
        };
        let mut buf = vec![0u8; CHUNK];
        let sent = (|| -> io::Result<()> {
            c.write_all(b"zINSTREAM\0")?;
            loop {
                if left().is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "scan timed out"));
                }
                let n = file.read(&mut buf)?;
                c.write_all(&(n as u32).to_be_bytes())?;
                if n == 0 {
                    return c.flush();
                }
                c.write_all(&buf[..n])?;
            }
        })();
        // clamd answers (and closes) as soon as the stream is over its limit, so a failed
        // send may still have an answer waiting: read it before judging the send.
        match read_answer(&mut c) {
            Ok(a) => verdict(&a),
            Err(e) => match sent {
                Err(se) => Verdict::Failed(format!("sending to clamd failed: {se}")),
                Ok(()) => Verdict::Failed(format!("no answer from clamd: {e}")),
            },
        }
    }
}

/// One answer line, up to the terminating NUL (or newline, or the end).
fn read_answer(c: &mut Conn) -> io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 256];
    loop {
        let n = c.read(&mut b)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[..n]);
        if out.contains(&0) || out.contains(&b'\n') || out.len() > 4096 {
            break;
        }
    }
    if out.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "clamd closed the connection",
        ));
    }
    let end = out
        .iter()
        .position(|&x| x == 0 || x == b'\n')
        .unwrap_or(out.len());
    Ok(String::from_utf8_lossy(&out[..end]).trim().to_string())
}

/// clamd's answer to `INSTREAM` as a verdict.
pub fn verdict(answer: &str) -> Verdict {
    let body = answer.strip_prefix("stream:").unwrap_or(answer).trim();
    if body == "OK" {
        Verdict::Clean
    } else if let Some(sig) = body.strip_suffix(" FOUND") {
        Verdict::Infected(sig.trim().to_string())
    } else if answer.contains("size limit exceeded") {
        Verdict::TooLarge
    } else {
        Verdict::Failed(format!("clamd answered {answer:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_answers_become_verdicts() {
        assert_eq!(verdict("stream: OK"), Verdict::Clean);
        assert_eq!(
            verdict("stream: Eicar-Test-Signature FOUND"),
            Verdict::Infected("Eicar-Test-Signature".into())
        );
        assert_eq!(
            verdict("INSTREAM size limit exceeded. ERROR"),
            Verdict::TooLarge
        );
        assert!(matches!(
            verdict("stream: Can't allocate memory ERROR"),
            Verdict::Failed(_)
        ));
        assert!(matches!(verdict(""), Verdict::Failed(_)));
    }
}
