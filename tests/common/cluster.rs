//! Cluster test harness: a real PostgreSQL (initdb + pg_ctl into a temp dir, as the
//! `postgres` user when run as root, since PostgreSQL refuses root) and a real
//! `nats-server`, each on a free loopback port, stopped on drop. `available()` says
//! whether the binaries are here; with `CONFAB_REQUIRE_CLUSTER=1` (CI) their absence
//! fails the test instead of skipping it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::time::Duration as Wait;

use confab::config::ClusterConfig;
use serde_json::{json, Value};

use crate::common::{Client, TestServer};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn found(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// true when PostgreSQL's and NATS's servers are installed; else a notice (or, with
/// CONFAB_REQUIRE_CLUSTER=1, a failure).
pub fn available() -> bool {
    let missing: Vec<&str> = ["initdb", "pg_ctl", "nats-server"]
        .into_iter()
        .filter(|b| !found(b))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CONFAB_REQUIRE_CLUSTER").as_deref() == Ok("1") {
        panic!("CONFAB_REQUIRE_CLUSTER=1 but {missing:?} are not installed");
    }
    eprintln!(
        "SKIPPED: cluster tests need {missing:?} (apt-get install -y nats-server postgresql)"
    );
    false
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A command run as the `postgres` user when we are root.
fn pg_command(bin: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", bin]);
        c
    } else {
        Command::new(bin)
    }
}

pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Postgres {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("confab-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = dir.join("data");
        let out = pg_command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "confab",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Postgres {
            dir,
            port: free_port(),
        };
        pg.ctl_start();
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "confab",
            ])
            .args(["-d", "postgres", "-c", "CREATE DATABASE confab"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    fn ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let out = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// Stop (fast: connections are cut) and start again on the same port.
    pub fn restart(&self) {
        self.stop("fast");
        self.ctl_start();
    }

    pub fn stop(&self, mode: &str) {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "stop"])
            .output();
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=confab dbname=confab",
            self.port
        )
    }

    /// One SQL query's output (psql -At).
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "confab",
            ])
            .args(["-d", "confab", "-At", "-c", sql])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Nats {
    pub port: u16,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Nats {
        let mut n = Nats {
            port: free_port(),
            child: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Send a signal (STOP, CONT) to the server process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node as its own `confab serve` process (so that it can be killed with SIGKILL or
/// paused with SIGSTOP), signing tokens with `secret`.
pub struct NodeProcess {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl NodeProcess {
    pub fn start(pg: &Postgres, nats: &Nats, id: &str, env: &[(&str, &str)]) -> NodeProcess {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("confab-node-{id}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.arg("serve")
            .env("CONFAB_SERVER_LISTEN", "127.0.0.1:0")
            .env("CONFAB_STORE_DATA_DIR", &dir)
            .env("CONFAB_AUTH_JWT_SECRET", "test-secret")
            .env("CONFAB_SERVER_SHARDS", "2")
            .env("CONFAB_CLUSTER_POSTGRES_URL", pg.url())
            .env("CONFAB_CLUSTER_NATS_URL", nats.url())
            .env("CONFAB_CLUSTER_NODE_ID", id)
            .env("CONFAB_CLUSTER_POSTGRES_POOL", "4")
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("address line").unwrap();
            if let Some(rest) = line.split("serving on http://").nth(1) {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        NodeProcess { child, addr, dir }
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- nodes and clients

/// A node of the cluster, in this process.
pub fn node(pg: &Postgres, nats: &Nats, id: &str) -> TestServer {
    node_with(pg, nats, id, |_| {})
}

pub fn node_with(
    pg: &Postgres,
    nats: &Nats,
    id: &str,
    tweak: impl FnOnce(&mut confab::Config),
) -> TestServer {
    let (pg_url, nats_url) = (pg.url(), nats.url());
    TestServer::start(&format!("cluster-{id}"), |c| {
        c.cluster = Some(ClusterConfig {
            postgres_url: pg_url,
            nats_url,
            node_id: id.to_string(),
            postgres_pool: 4,
            writers: 2,
            lease: Wait::from_millis(3000),
            heartbeat: Wait::from_millis(250),
            down_after_beats: 3,
            reorder_hold: Wait::from_millis(50),
            bus_queue: 4096,
            shared_files: false,
        });
        tweak(c);
    })
}

pub fn chat(c: &mut Client, body: Value) -> Value {
    let mut msg = json!({"type": "chat"});
    for (k, v) in body.as_object().unwrap() {
        msg[k] = v.clone();
    }
    c.send(msg);
    c.recv_type("ack")
}

pub fn join(c: &mut Client, room: &str) -> Value {
    c.send(json!({"type": "join_room", "room_id": room, "id": format!("join-{room}")}));
    let j = c.recv_type("room_joined");
    c.recv_type("subscribed");
    j
}

/// Every event of `ty` that arrives within `wait`.
pub fn drain(c: &mut Client, ty: &str, wait: Wait) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = c.try_recv(wait) {
        if v["type"] == ty {
            out.push(v);
        }
    }
    out
}

pub fn process_client(n: &NodeProcess, via: &TestServer, sub: &str) -> Client {
    let url = format!("ws://{}/v1/ws?token={}", n.addr, via.token(sub));
    let mut c = Client::connect(&url).expect("connects");
    c.recv_type("connected");
    c
}

/// A PostgreSQL, a nats-server and two in-process nodes `a` and `b`; `None` (after a
/// notice) when the servers are not installed.
pub fn two_nodes() -> Option<(Postgres, Nats, TestServer, TestServer)> {
    if !available() {
        return None;
    }
    let (pg, nats) = (Postgres::start(), Nats::start());
    let a = node(&pg, &nats, "a");
    let b = node(&pg, &nats, "b");
    Some((pg, nats, a, b))
}

/// The `message_added` events arriving within `wait`: (seq, author).
pub fn added_by_author(c: &mut Client, wait: Wait) -> Vec<(i64, String)> {
    drain(c, "message_added", wait)
        .iter()
        .map(|m| {
            (
                m["message"]["seq"].as_i64().unwrap(),
                m["message"]["author"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
