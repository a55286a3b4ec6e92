//! confab-load: the load harness.
//!
//! `confab-load SCENARIO --url ws://HOST:PORT [--url …] [--token JWT | --dev-tokens] [--connections N]
//!  [--duration-s S] [--rate R] [--server-pid PID] [--path P] [--threads T] [--generic] [--json]`
//!
//! Scenarios: hold, echo, broadcast, chat, churn, resume, write, upload (see loadtest/README.md).
//! hold/echo/broadcast/chat run on a small mio event loop per thread (one process drives
//! 10,000+ connections); churn and resume use blocking clients. Every latency goes into an
//! hdrhistogram (microseconds). Traffic goes only where --url points (loopback in our runs).
//! `--url` given several times (the nodes of a cluster): the event-loop scenarios spread
//! their connections over them, connection i to url i mod n.

mod engine;
mod frames;
mod scenarios;

use std::time::Duration;

pub struct Opts {
    pub scenario: String,
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Every `--url`'s (host, port); connections are spread over them.
    pub targets: Vec<(String, u16)>,
    pub token: Option<String>,
    pub dev_tokens: bool,
    /// `--dev-tokens`: connections sharing one minted user (1: every connection its own).
    pub conns_per_user: usize,
    pub connections: usize,
    pub duration: Duration,
    pub rate: f64,
    pub server_pid: Option<u32>,
    pub path: Option<String>,
    pub threads: usize,
    pub generic: bool,
    /// `hold`: every connection also joins `--room`.
    pub in_room: bool,
    pub json: bool,
    pub room: String,
    pub size: usize,
    /// `write`: chats each sender keeps in flight (sent, not yet acked).
    pub in_flight: usize,
    /// New connections per second (0: all at once). Used by `chat`.
    pub open_rate: f64,
    /// `hold`: how long after the last connection opened the server's RSS is read.
    pub settle: Duration,
}

const USAGE: &str =
    "usage: confab-load SCENARIO --url ws://HOST:PORT [--url ...] [--token JWT | --dev-tokens [--conns-per-user K]]
  [--connections N] [--duration-s S] [--rate R] [--server-pid PID] [--path P] [--threads T]
  [--room ROOM] [--in-room] [--size BYTES] [--in-flight K] [--open-rate CONNS_PER_S] [--settle-s S] [--generic] [--json]
scenarios: hold echo broadcast chat churn resume write upload";

/// A count of at least one, or the flag's error.
fn positive(s: &str, flag: &str) -> Result<usize, String> {
    s.parse()
        .ok()
        .filter(|k| *k > 0)
        .ok_or(format!("{flag}: a positive number"))
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().ok_or("missing scenario")?;
    let mut o = Opts {
        scenario,
        url: String::new(),
        host: String::new(),
        port: 0,
        targets: Vec::new(),
        token: None,
        dev_tokens: false,
        conns_per_user: 50,
        connections: 100,
        duration: Duration::from_secs(10),
        rate: 10.0,
        server_pid: None,
        path: None,
        threads: 2,
        generic: false,
        json: false,
        room: "load-room".into(),
        in_room: false,
        size: 32,
        in_flight: 1,
        open_rate: 0.0,
        settle: Duration::from_millis(500),
    };
    let mut urls = Vec::new();
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--url" => urls.push(v()?),
            "--token" => o.token = Some(v()?),
            "--dev-tokens" => o.dev_tokens = true,
            "--conns-per-user" => o.conns_per_user = positive(&v()?, "--conns-per-user")?,
            "--connections" | "-n" => {
                o.connections = v()?.parse().map_err(|_| "--connections: a number")?
            }
            "--duration-s" => {
                o.duration =
                    Duration::from_secs_f64(v()?.parse().map_err(|_| "--duration-s: a number")?)
            }
            "--rate" => o.rate = v()?.parse().map_err(|_| "--rate: a number")?,
            "--server-pid" => {
                o.server_pid = Some(v()?.parse().map_err(|_| "--server-pid: a number")?)
            }
            "--path" => o.path = Some(v()?),
            "--threads" => o.threads = v()?.parse().map_err(|_| "--threads: a number")?,
            "--room" => o.room = v()?,
            "--size" => o.size = v()?.parse().map_err(|_| "--size: a number")?,
            "--in-flight" => o.in_flight = positive(&v()?, "--in-flight")?,
            "--open-rate" => o.open_rate = v()?.parse().map_err(|_| "--open-rate: a number")?,
            "--generic" => o.generic = true,
            "--in-room" => o.in_room = true,
            "--settle-s" => {
                o.settle = Duration::from_secs_f64(v()?.parse().map_err(|_| "--settle-s: seconds")?)
            }
            "--json" => o.json = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    o.url = urls.first().cloned().ok_or("--url is required")?;
    for (i, url) in urls.iter().enumerate() {
        let rest = url
            .strip_prefix("ws://")
            .ok_or("--url must be ws://HOST:PORT[/path]")?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let (h, p) = hostport.rsplit_once(':').ok_or("--url needs a port")?;
        let port: u16 = p.parse().map_err(|_| "bad port in --url")?;
        o.targets.push((h.to_string(), port));
        if i == 0 {
            o.host = h.to_string();
            o.port = port;
            if let Some(idx) = rest.find('/') {
                if o.path.is_none() && o.generic {
                    o.path = Some(rest[idx..].to_string());
                }
            }
        }
    }
    o.threads = o.threads.max(1);
    Ok(o)
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("confab-load: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let report = match o.scenario.as_str() {
        "hold" => scenarios::hold(&o),
        "echo" => scenarios::echo(&o),
        "broadcast" => scenarios::broadcast(&o),
        "chat" => scenarios::chat(&o),
        "churn" => scenarios::churn(&o),
        "resume" => scenarios::resume(&o),
        "write" => scenarios::write(&o),
        "upload" => scenarios::upload(&o),
        other => {
            eprintln!("confab-load: unknown scenario {other}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if o.json {
        println!("{}", report);
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
}
