//! Uploads scanned by a real ClamAV daemon before they are stored: the test starts
//! `clamd` in the foreground with a temporary config and a signature database it makes
//! itself (SHA-256 hash signatures of a generated file and of the EICAR test string), so
//! no downloaded definitions are needed. A clean file is stored; an infected one is
//! refused `UPLOAD_INFECTED` and leaves nothing behind; a scanner that is down gives
//! `UPLOAD_SCAN_FAILED` (reject) or stores the file (accept); a file over the scanner's
//! stream limit is refused with `UPLOAD_TOO_LARGE`, never passed.
//!
//! Skipped with a notice when `clamd` is not installed, unless
//! `CONFAB_REQUIRE_CLAMD=1` (CI installs clamav-daemon and sets it).
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use confab::config::{ClamdAddress, ScanConfig};
use serde_json::{json, Value};

const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn clamd_binary() -> Option<PathBuf> {
    ["/usr/sbin/clamd", "/usr/bin/clamd", "/usr/local/sbin/clamd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A clamd of our own, killed when dropped.
struct Clamd {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start clamd with signatures for `bad` and EICAR and a 1 MiB stream limit; `None` (a
/// notice) when clamd is not installed and not required.
fn start_clamd(bad: &[u8]) -> Option<Clamd> {
    let required = std::env::var("CONFAB_REQUIRE_CLAMD").is_ok_and(|v| v == "1");
    let Some(bin) = clamd_binary() else {
        assert!(
            !required,
            "clamd is required (CONFAB_REQUIRE_CLAMD=1) but not installed"
        );
        eprintln!(
            "NOTICE: clamd not installed (apt-get install clamav-daemon); virus scan tests skipped"
        );
        return None;
    };
    let dir = temp_dir("clamd");
    let db = dir.join("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(
        db.join("confab-test.hsb"),
        format!(
            "{}:{}:Confab.Test.Eicar:73\n{}:{}:Confab.Test.Bad:73\n",
            sha_hex(EICAR),
            EICAR.len(),
            sha_hex(bad),
            bad.len()
        ),
    )
    .unwrap();
    let socket = dir.join("clamd.sock");
    let conf = dir.join("clamd.conf");
    std::fs::write(
        &conf,
        format!(
            "Foreground yes\nLocalSocket {}\nDatabaseDirectory {}\nLogFile {}\nStreamMaxLength 1M\nTemporaryDirectory {}\n",
            socket.display(),
            db.display(),
            dir.join("clamd.log").display(),
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let clamd = Clamd { child, socket, dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ping(&clamd.socket) {
        assert!(
            Instant::now() < deadline,
            "clamd did not answer PING within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(clamd)
}

fn ping(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = [0u8; 16];
    s.write_all(b"zPING\0").is_ok() && s.read(&mut b).is_ok_and(|n| b[..n].starts_with(b"PONG"))
}

fn scanning(socket: &Path, accept_on_error: bool, stream_max_bytes: u64) -> ScanConfig {
    ScanConfig {
        address: ClamdAddress::Unix(socket.to_path_buf()),
        timeout: Duration::from_secs(10),
        accept_on_error,
        stream_max_bytes,
    }
}

/// The next answer to an upload message.
fn answer(c: &mut Client) -> Value {
    loop {
        let v = c.recv();
        if v["type"] == "file_upload" || v["type"] == "error" {
            return v;
        }
    }
}

/// Upload `data` as `name`; the answer to `finalize` (or the first error).
fn upload(c: &mut Client, name: &str, data: &[u8]) -> Value {
    c.send(
        json!({"type":"file_upload","upload_type":"init","file_name":name,
                  "file_size":data.len(),"mime_type":"application/octet-stream"}),
    );
    let init = answer(c);
    if init["type"] == "error" {
        return init;
    }
    let file_id = init["file_id"].as_str().unwrap().to_string();
    let max = init["max_chunk_bytes"].as_u64().unwrap() as usize;
    let total = data.len().div_ceil(max).max(1);
    let b64 = base64::engine::general_purpose::STANDARD;
    for (i, chunk) in data.chunks(max).enumerate() {
        c.send(
            json!({"type":"file_upload","upload_type":"chunk","file_id":file_id,
                      "chunk_index":i,"total_chunks":total,"chunk_data":b64.encode(chunk)}),
        );
        let a = answer(c);
        assert_eq!(a["upload_type"], "chunk", "{a}");
    }
    c.send(
        json!({"type":"file_upload","upload_type":"finalize","file_id":file_id,
                  "checksum":sha_hex(data)}),
    );
    answer(c)
}

/// Stored files under the data dir (finished ones and partial ones).
fn files_on_disk(s: &TestServer) -> usize {
    let dir = s.dir.join("files");
    let count = |d: &Path| {
        std::fs::read_dir(d)
            .map(|r| r.flatten().filter(|e| e.path().is_file()).count())
            .unwrap_or(0)
    };
    count(&dir) + count(&dir.join("tmp"))
}

fn metric(s: &TestServer, name: &str) -> u64 {
    let (_, _, body) = http_raw(s.addr, "GET", "/metrics", None, None);
    let text = String::from_utf8_lossy(&body).to_string();
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn clean_files_are_stored_and_infected_ones_refused_with_nothing_left() {
    let bad = noise(5000, 7);
    let Some(clamd) = start_clamd(&bad) else {
        return;
    };
    let s = TestServer::start("scan", |c| {
        c.uploads.scan = Some(scanning(&clamd.socket, false, 1 << 20));
    });
    assert_eq!(s.http("GET", "/health", None, None).1["scanner"], "ok");
    let mut a = s.client("alice");

    let clean = noise(100_000, 1);
    let done = upload(&mut a, "clean.pdf", &clean);
    assert_eq!(done["upload_type"], "complete", "{done}");
    let (st, _, body) = http_raw(
        s.addr,
        "GET",
        done["url"].as_str().unwrap(),
        Some(&s.token("alice")),
        None,
    );
    assert_eq!((st, body.len()), (200, clean.len()));
    assert_eq!(files_on_disk(&s), 1);

    let e = upload(&mut a, "bad.zip", &bad);
    assert_eq!(e["code"], "UPLOAD_INFECTED", "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("Confab.Test.Bad"),
        "{e}"
    );
    let e = upload(&mut a, "eicar.txt", EICAR);
    assert_eq!(e["code"], "UPLOAD_INFECTED", "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("Confab.Test.Eicar"),
        "{e}"
    );
    // Nothing of either on disk or in the database.
    assert_eq!(files_on_disk(&s), 1);
    let db = rusqlite::Connection::open(s.dir.join("confab.db")).unwrap();
    let rows: i64 = db
        .query_row("SELECT COUNT(*) FROM files", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(metric(&s, "confab_uploads_infected_total"), 2);

    // Over the configured stream limit: refused at init, before any byte is sent.
    a.send(
        json!({"type":"file_upload","upload_type":"init","file_name":"big.pdf",
                  "file_size": (1 << 20) + 1,"mime_type":"application/pdf"}),
    );
    let e = answer(&mut a);
    assert_eq!(e["code"], "UPLOAD_TOO_LARGE", "{e}");
}

#[test]
fn a_file_over_clamds_own_limit_is_refused_not_passed() {
    let Some(clamd) = start_clamd(b"unused") else {
        return;
    };
    // The server believes the limit is 2 MiB; clamd's StreamMaxLength is 1 MiB.
    let s = TestServer::start("scan-limit", |c| {
        c.uploads.scan = Some(scanning(&clamd.socket, true, 2 << 20));
    });
    let mut a = s.client("alice");
    let e = upload(&mut a, "large.pdf", &noise(1_500_000, 3));
    assert_eq!(e["code"], "UPLOAD_TOO_LARGE", "{e}");
    assert_eq!(files_on_disk(&s), 0);
}

#[test]
fn a_scanner_that_is_down_rejects_or_accepts_by_policy() {
    let Some(clamd) = start_clamd(b"unused") else {
        return;
    };
    let socket = clamd.socket.clone();
    let reject = TestServer::start("scan-down-reject", |c| {
        c.uploads.scan = Some(scanning(&socket, false, 1 << 20));
    });
    let accept = TestServer::start("scan-down-accept", |c| {
        c.uploads.scan = Some(scanning(&socket, true, 1 << 20));
    });
    drop(clamd); // clamd stops
    let data = noise(10_000, 9);
    let mut a = reject.client("alice");
    let e = upload(&mut a, "doc.pdf", &data);
    assert_eq!(e["code"], "UPLOAD_SCAN_FAILED", "{e}");
    assert_eq!(files_on_disk(&reject), 0);
    assert_eq!(
        reject.http("GET", "/health", None, None).1["scanner"],
        "failing"
    );
    assert!(metric(&reject, "confab_upload_scan_failures_total") >= 1);

    let mut b = accept.client("bob");
    let done = upload(&mut b, "doc.pdf", &data);
    assert_eq!(done["upload_type"], "complete", "{done}");
    assert_eq!(files_on_disk(&accept), 1);
}

#[test]
fn scanning_off_is_reported() {
    let s = TestServer::start("scan-off", |_| {});
    assert_eq!(s.http("GET", "/health", None, None).1["scanner"], "off");
}
