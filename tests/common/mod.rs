//! Shared test harness: a real server on 127.0.0.1:0 with a fresh data dir, and a real
//! blocking WebSocket client (tungstenite) with read timeouts instead of sleeps.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use confab::{Config, ServerHandle};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("confab-test-{}-{}-{n}", tag, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn test_config(tag: &str) -> Config {
    let mut cfg = Config::defaults();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shards = 2;
    cfg.store.data_dir = temp_dir(tag);
    cfg.auth.jwt_secret = Some("test-secret".into());
    cfg.llm.workers = 4;
    cfg.llm.demo_tokens_per_s = 2000.0;
    cfg
}

pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl TestServer {
    pub fn start(tag: &str, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = test_config(tag);
        tweak(&mut cfg);
        let dir = cfg.store.data_dir.clone();
        let handle = ServerHandle::start(cfg).expect("server starts");
        let addr = handle.addr;
        TestServer {
            handle: Some(handle),
            addr,
            dir,
        }
    }

    pub fn ctx(&self) -> &std::sync::Arc<confab::server::ServerCtx> {
        &self.handle.as_ref().unwrap().ctx
    }

    pub fn token(&self, sub: &str) -> String {
        self.ctx()
            .auth
            .sign(sub, Some(&format!("User {sub}")), false, 3600)
            .unwrap()
    }

    pub fn admin_token(&self, sub: &str) -> String {
        self.ctx().auth.sign(sub, None, true, 3600).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Connect with `?token=` and read the `connected` event.
    pub fn client(&self, sub: &str) -> Client {
        let mut c = Client::connect(&self.url(&format!("/v1/ws?token={}", self.token(sub))))
            .expect("connects");
        let ev = c.recv_type("connected");
        assert_eq!(ev["user"]["id"], sub);
        c
    }

    pub fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        http_request(self.addr, method, path, bearer, body)
    }

    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    /// Events read while looking for another type (in arrival order).
    pub seen: Vec<Value>,
}

impl Client {
    pub fn connect(url: &str) -> Result<Client, tungstenite::Error> {
        let req = url.into_client_request()?;
        Self::connect_req(req)
    }

    pub fn connect_req(
        req: tungstenite::handshake::client::Request,
    ) -> Result<Client, tungstenite::Error> {
        let host = req.uri().host().unwrap().to_string();
        let port = req.uri().port_u16().unwrap();
        let sock = TcpStream::connect((host.as_str(), port))?;
        sock.set_read_timeout(Some(WAIT))?;
        sock.set_nodelay(true)?;
        let (ws, _resp) = tungstenite::client(req, sock).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })?;
        Ok(Client {
            ws,
            seen: Vec::new(),
        })
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    pub fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_string())).expect("send");
    }

    /// The next JSON event (heartbeats skipped), within [`WAIT`]: a server that sends
    /// only heartbeats fails the test instead of keeping it waiting forever.
    pub fn recv(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "no event but heartbeats within {WAIT:?}"
            );
            match self.ws.read().expect("read an event") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("event is JSON");
                    if v["type"] == "heartbeat" {
                        continue;
                    }
                    return v;
                }
                Message::Close(f) => panic!("closed while waiting for an event: {f:?}"),
                _ => {}
            }
        }
    }

    pub fn try_recv(&mut self, timeout: Duration) -> Option<Value> {
        self.ws.get_ref().set_read_timeout(Some(timeout)).unwrap();
        let r = loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "heartbeat" {
                        continue;
                    }
                    break Some(v);
                }
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        let _ = self.ws.get_ref().set_read_timeout(Some(WAIT));
        r
    }

    /// Read until an event of `ty` arrives; the others are kept in `seen`.
    pub fn recv_type(&mut self, ty: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let v = self.recv();
            if v["type"] == ty {
                return v;
            }
            self.seen.push(v);
        }
        panic!("no {ty} event within {WAIT:?}; saw {:?}", self.seen);
    }

    /// Read until the server closes; returns the close code.
    pub fn expect_close(&mut self) -> u16 {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return u16::from(f.code),
                Ok(Message::Close(None)) => return 1005,
                Ok(Message::Text(t)) => self
                    .seen
                    .push(serde_json::from_str(&t).unwrap_or(json!(t.as_str()))),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => return 1005,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("no close within the timeout")
                }
                Err(e) => panic!("connection failed before a close frame: {e}"),
            }
        }
        panic!("no close");
    }

    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.ws.flush();
    }
}

/// A one-shot HTTP/1.1 request over a plain socket; returns status and JSON body
/// (or the body as a JSON string when it is not JSON).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let (status, _headers, body) = http_raw(
        addr,
        method,
        path,
        bearer,
        body.map(|b| b.to_string()).as_deref(),
    );
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, v)
}

pub fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String, Vec<u8>) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    send_raw(addr, &req)
}

/// Send `req` (a whole HTTP request as written) and read the answer until the server
/// closes: (status, head, body).
pub fn send_raw(addr: SocketAddr, req: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(out.len());
    (status, head.to_string(), out[split..].to_vec())
}

/// The HTTP status of a refused WebSocket upgrade (or 101).
pub fn upgrade_status(url: &str) -> (u16, Value) {
    match Client::connect(url) {
        Ok(_) => (101, Value::Null),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            (status, body)
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Send SIGTERM to a child process (std's `Child::kill` is SIGKILL): the graceful path.
#[allow(unsafe_code)]
pub fn sigterm(child: &std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

/// Deterministic, incompressible-looking bytes (xorshift).
pub fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// SHA-256 as 64 lower-case hex digits (what `finalize` takes).
pub fn sha_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The flags `node` needs for a global WebSocket, if a Node ≥ 20 is installed.
pub fn node_flags() -> Option<Vec<&'static str>> {
    let out = std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    let major: u32 = v
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()?;
    match major {
        0..=19 => None,
        20 | 21 => Some(vec!["--experimental-websocket", "--no-warnings"]),
        _ => Some(vec![]),
    }
}

/// Run a driver script that prints `STOP` / `START` when it wants the server stopped or
/// started again: `on_request` does it, then the script reads a line on stdin and goes on.
/// Returns (success, stdout, stderr).
pub fn run_driver(
    cmd: &mut std::process::Command,
    mut on_request: impl FnMut(&str),
) -> (bool, String, String) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = String::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        out.push_str(&line);
        out.push('\n');
        if line == "STOP" || line == "START" {
            on_request(&line);
            writeln!(stdin, "ok").unwrap();
            stdin.flush().unwrap();
        }
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status.success(), out, err)
}
