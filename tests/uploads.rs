//! File upload over the WebSocket (`file_upload` init → chunk… → finalize) and download
//! over HTTP (`GET /v1/files/{id}`): exact bytes back, checksums enforced, access limited
//! to the uploader and the conversation's members, clear errors for every bad input,
//! partial files removed when their connection goes away, files kept across a restart.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn init(c: &mut Client, name: &str, size: usize, extra: Value) -> Value {
    let mut m = json!({"type": "file_upload", "upload_type": "init", "id": "init",
                       "file_name": name, "file_size": size, "mime_type": "application/pdf"});
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    c.send(m);
    reply(c)
}

/// The next answer to an upload message (presence and other room traffic skipped).
fn reply(c: &mut Client) -> Value {
    loop {
        let v = c.recv();
        if v["type"] == "file_upload" || v["type"] == "error" {
            return v;
        }
    }
}

/// Upload `data` in chunks and finalize with its SHA-256; returns the `complete` event.
fn upload(c: &mut Client, name: &str, data: &[u8], extra: Value) -> Value {
    let ev = init(c, name, data.len(), extra);
    assert_eq!(
        (ev["type"].as_str(), ev["upload_type"].as_str()),
        (Some("file_upload"), Some("init")),
        "{ev}"
    );
    assert_eq!(ev["id"], "init");
    let file_id = ev["file_id"].as_str().unwrap().to_string();
    let max = ev["max_chunk_bytes"].as_u64().unwrap() as usize;
    let total = data.len().div_ceil(max);
    for (i, chunk) in data.chunks(max).enumerate() {
        c.send(
            json!({"type": "file_upload", "upload_type": "chunk", "id": format!("c{i}"),
                      "file_id": file_id, "chunk_index": i, "total_chunks": total,
                      "chunk_data": B64.encode(chunk)}),
        );
        let p = reply(c);
        assert_eq!(
            (p["upload_type"].as_str(), p["id"].as_str()),
            (Some("chunk"), Some(format!("c{i}").as_str())),
            "{p}"
        );
        assert_eq!(p["received_chunks"], i + 1);
        assert_eq!(p["total_chunks"], total);
    }
    c.send(
        json!({"type": "file_upload", "upload_type": "finalize", "id": "fin",
                  "file_id": file_id, "checksum": sha_hex(data)}),
    );
    reply(c)
}

fn get_file(s: &TestServer, url: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    http_raw(s.addr, "GET", url, token, None)
}

#[test]
fn a_file_uploaded_in_chunks_downloads_byte_for_byte_and_survives_a_restart() {
    let mut s = TestServer::start("upload-roundtrip", |_| {});
    let mut a = s.client("alice");
    let data = noise(150_000, 7);
    let done = upload(&mut a, "Quarterly report.pdf", &data, json!({}));
    assert_eq!(
        (done["type"].as_str(), done["upload_type"].as_str()),
        (Some("file_upload"), Some("complete")),
        "{done}"
    );
    assert_eq!(done["id"], "fin");
    assert_eq!(done["size"], data.len());
    assert_eq!(done["sha256"], sha_hex(&data));
    assert_eq!(done["progress"], 100.0);
    let file_id = done["file_id"].as_str().unwrap().to_string();
    let url = done["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("/v1/files/{file_id}"));

    let (status, head, body) = get_file(&s, &url, Some(&s.token("alice")));
    assert_eq!(status, 200, "{head}");
    assert!(body == data, "downloaded bytes differ");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/pdf"), "{head}");
    assert!(
        head.contains("attachment; filename=\"quarterly report.pdf\""),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");

    // Not a participant, no token, unknown id.
    assert_eq!(get_file(&s, &url, Some(&s.token("mallory"))).0, 403);
    assert_eq!(get_file(&s, &url, None).0, 401);
    assert_eq!(
        get_file(
            &s,
            "/v1/files/f_000000000000000000000000",
            Some(&s.token("alice"))
        )
        .0,
        404
    );
    assert_eq!(
        http_raw(s.addr, "POST", &url, Some(&s.token("alice")), Some("{}")).0,
        405
    );
    // Not an id this server makes: 404 before any lookup or path.
    assert_eq!(
        get_file(&s, "/v1/files/..%2Fconfab.db", Some(&s.token("alice"))).0,
        404
    );

    // Stored under its id, nothing left in the upload area.
    let files = s.dir.join("files");
    assert!(files.join(&file_id).is_file());
    assert_eq!(std::fs::read_dir(files.join("tmp")).unwrap().count(), 0);

    let (_, _, metrics) = http_raw(s.addr, "GET", "/metrics", None, None);
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "confab_uploads_completed_total 1",
        "confab_uploads_active 0",
        "confab_downloads_total 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in\n{metrics}"
        );
    }
    assert!(metrics.contains(&format!("confab_upload_bytes_total {}", data.len())));

    // Restart on the same data dir: still there, still exact. A file that was renamed into
    // place but never recorded (a crash inside finalize) is removed at start.
    let dir = s.dir.clone();
    s.stop();
    let stray = dir.join("files").join("f_0123456789abcdef01234567");
    std::fs::write(&stray, b"never recorded").unwrap();
    let s2 = TestServer::start("upload-roundtrip-2", |c| c.store.data_dir = dir);
    let (status, _, body) = get_file(&s2, &url, Some(&s2.token("alice")));
    assert_eq!(status, 200);
    assert!(body == data);
    assert!(!stray.exists(), "unrecorded file kept");
    assert!(files.join(&file_id).is_file());
}

#[test]
fn room_members_download_room_files_and_others_cannot() {
    let s = TestServer::start("upload-room", |_| {});
    let mut a = s.client("alice");
    let mut b = s.client("bob");
    for c in [&mut a, &mut b] {
        c.send(json!({"type": "join_room", "room_id": "design", "room_type": "shared"}));
        c.recv_type("room_joined");
    }
    let data = noise(10_000, 3);
    let done = upload(
        &mut a,
        "mock.png",
        &data,
        json!({"room_id": "design", "mime_type": "image/png"}),
    );
    assert_eq!(done["upload_type"], "complete", "{done}");
    assert!(done["conversation_id"].as_str().is_some());
    let url = done["url"].as_str().unwrap();
    let (status, head, body) = get_file(&s, url, Some(&s.token("bob")));
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: image/png"),
        "{head}"
    );
    assert!(body == data);
    assert_eq!(get_file(&s, url, Some(&s.token("carol"))).0, 403);

    // A room this connection has not joined, and a conversation that is not carol's.
    let mut c = s.client("carol");
    let e = init(&mut c, "x.pdf", 10, json!({"room_id": "design"}));
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("FORBIDDEN")),
        "{e}"
    );
    let e = init(
        &mut c,
        "x.pdf",
        10,
        json!({"conversation_id": done["conversation_id"]}),
    );
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("FORBIDDEN")),
        "{e}"
    );
}

fn expect_error(c: &mut Client, code: &str) -> Value {
    let e = reply(c);
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some(code)),
        "{e}"
    );
    e
}

#[test]
fn bad_uploads_get_clear_errors_and_the_connection_stays_usable() {
    let s = TestServer::start("upload-errors", |_| {});
    let mut a = s.client("alice");
    let max_file = s.ctx().cfg.uploads.max_file_bytes;

    // Refused at init: type, size, name, media type.
    assert_eq!(
        init(&mut a, "tool.exe", 10, json!({}))["code"],
        "UPLOAD_TYPE"
    );
    assert_eq!(
        init(&mut a, "big.pdf", (max_file + 1) as usize, json!({}))["code"],
        "UPLOAD_TOO_LARGE"
    );
    assert_eq!(init(&mut a, "", 10, json!({}))["code"], "BAD_REQUEST");
    assert_eq!(
        init(
            &mut a,
            "a.pdf",
            10,
            json!({"mime_type": "text/html\r\nX-Evil: 1"})
        )["code"],
        "UPLOAD_TYPE"
    );

    // In-flight mistakes: order, encoding, size, early finalize, wrong checksum.
    let data = noise(100, 1);
    let ev = init(
        &mut a,
        "notes.txt",
        data.len(),
        json!({"mime_type": "text/plain"}),
    );
    let fid = ev["file_id"].as_str().unwrap().to_string();
    let chunk = |i: usize, d: &str| json!({"type": "file_upload", "upload_type": "chunk", "file_id": fid, "chunk_index": i, "total_chunks": 2, "chunk_data": d});
    a.send(chunk(1, &B64.encode(&data[..50])));
    assert!(expect_error(&mut a, "BAD_REQUEST")["error"]
        .as_str()
        .unwrap()
        .contains("expected chunk_index 0"));
    a.send(chunk(0, "not base64!!"));
    expect_error(&mut a, "BAD_REQUEST");
    a.send(chunk(0, &B64.encode(noise(101, 2))));
    expect_error(&mut a, "UPLOAD_TOO_LARGE");
    a.send(chunk(0, &B64.encode(&data[..50])));
    assert_eq!(reply(&mut a)["received_bytes"], 50);
    // The same chunk again (a retry) is acknowledged and not written twice.
    a.send(chunk(0, &B64.encode(&data[..50])));
    assert_eq!(reply(&mut a)["received_bytes"], 50);
    a.send(json!({"type": "file_upload", "upload_type": "finalize", "file_id": fid, "checksum": sha_hex(&data)}));
    assert!(expect_error(&mut a, "BAD_REQUEST")["error"]
        .as_str()
        .unwrap()
        .contains("incomplete"));
    a.send(chunk(1, &B64.encode(&data[50..])));
    assert_eq!(reply(&mut a)["received_bytes"], 100);
    a.send(
        json!({"type": "file_upload", "upload_type": "finalize", "file_id": fid, "checksum": "ab"}),
    );
    expect_error(&mut a, "BAD_REQUEST");
    a.send(json!({"type": "file_upload", "upload_type": "finalize", "id": "f", "file_id": fid, "checksum": sha_hex(b"other")}));
    let e = expect_error(&mut a, "CHECKSUM_MISMATCH");
    assert_eq!(e["id"], "f");
    // The upload is gone after a mismatch.
    a.send(chunk(1, &B64.encode(&data[50..])));
    expect_error(&mut a, "NOT_FOUND");

    // Another connection cannot write into alice's upload.
    let ev = init(&mut a, "n2.txt", 10, json!({"mime_type": "text/plain"}));
    let fid2 = ev["file_id"].as_str().unwrap();
    let mut a2 = s.client("alice");
    a2.send(json!({"type": "file_upload", "upload_type": "chunk", "file_id": fid2, "chunk_index": 0, "total_chunks": 1, "chunk_data": "AAAA"}));
    expect_error(&mut a2, "NOT_FOUND");

    // Too many at once on one connection.
    let per_conn = s.ctx().cfg.uploads.max_per_connection;
    for _ in 1..per_conn {
        assert_eq!(
            init(&mut a, "n.txt", 10, json!({"mime_type": "text/plain"}))["upload_type"],
            "init"
        );
    }
    let e = init(&mut a, "n.txt", 10, json!({"mime_type": "text/plain"}));
    assert_eq!(e["code"], "RATE_LIMIT", "{e}");
    assert!(e["retry_after"].as_f64().is_some());

    // Still a working connection.
    a.send(json!({"type": "ping"}));
    assert_eq!(a.recv_type("pong")["type"], "pong");
    // No files were recorded, nothing completed.
    assert_eq!(
        std::fs::read_dir(s.dir.join("files"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .count(),
        0
    );
}

#[test]
fn an_empty_file_uploads_with_no_chunks() {
    let s = TestServer::start("upload-empty", |_| {});
    let mut a = s.client("alice");
    let done = upload(&mut a, "empty.txt", b"", json!({"mime_type": "text/plain"}));
    assert_eq!(done["upload_type"], "complete", "{done}");
    assert_eq!(done["sha256"], sha_hex(b""));
    let (status, _, body) = get_file(&s, done["url"].as_str().unwrap(), Some(&s.token("alice")));
    assert_eq!((status, body.len()), (200, 0));
}

#[test]
fn a_closed_connection_abandons_its_partial_upload() {
    let s = TestServer::start("upload-abandon", |_| {});
    let mut a = s.client("alice");
    let ev = init(&mut a, "half.pdf", 1000, json!({}));
    let fid = ev["file_id"].as_str().unwrap().to_string();
    a.send(json!({"type": "file_upload", "upload_type": "chunk", "file_id": fid, "chunk_index": 0, "total_chunks": 2, "chunk_data": B64.encode(noise(500, 9))}));
    assert_eq!(reply(&mut a)["received_bytes"], 500);
    let tmp = s.dir.join("files").join("tmp");
    assert!(tmp.join(&fid).is_file());
    a.close();
    let deadline = Instant::now() + WAIT;
    while tmp.join(&fid).exists() {
        assert!(Instant::now() < deadline, "partial file still there");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_server_wide_upload_cap_answers_busy_until_an_upload_ends() {
    let s = TestServer::start("upload-cap", |c| c.uploads.max_active = 1);
    let mut a = s.client("alice");
    let mut b = s.client("bob");
    let ev = init(&mut a, "one.txt", 3, json!({"mime_type": "text/plain"}));
    let fid = ev["file_id"].as_str().unwrap().to_string();
    let e = init(&mut b, "two.txt", 3, json!({"mime_type": "text/plain"}));
    assert_eq!(e["code"], "BUSY", "{e}");
    assert!(e["retry_after"].as_f64().is_some(), "{e}");
    a.send(
        json!({"type": "file_upload", "upload_type": "chunk", "file_id": fid,
                  "chunk_index": 0, "total_chunks": 1, "chunk_data": B64.encode(b"abc")}),
    );
    reply(&mut a);
    a.send(
        json!({"type": "file_upload", "upload_type": "finalize", "file_id": fid,
                  "checksum": sha_hex(b"abc")}),
    );
    assert_eq!(reply(&mut a)["upload_type"], "complete");
    assert_eq!(
        init(&mut b, "two.txt", 3, json!({"mime_type": "text/plain"}))["upload_type"],
        "init"
    );
}

#[test]
fn chunks_of_an_open_upload_do_not_count_against_the_message_rate() {
    // 5 messages per minute: init and finalize fit, the 12 chunks would not.
    let s = TestServer::start("upload-rate", |c| {
        c.limits.rate_max_messages = 5;
        c.limits.rate_window = Duration::from_secs(60);
        c.uploads.max_chunk_bytes = 1000;
    });
    let mut a = s.client("alice");
    let data = noise(11_500, 5);
    let done = upload(
        &mut a,
        "many.txt",
        &data,
        json!({"mime_type": "text/plain"}),
    );
    assert_eq!(done["upload_type"], "complete", "{done}");
    // Chunks out of order for an open upload are ordinary messages: rate-limited. So is a
    // chunk for an upload that is not open. (init and finalize above used 2 of the 5.)
    let ev = init(&mut a, "next.txt", 10, json!({"mime_type": "text/plain"}));
    let fid = ev["file_id"].as_str().unwrap().to_string();
    let out_of_order = json!({"type": "file_upload", "upload_type": "chunk", "file_id": fid,
                              "chunk_index": 7, "total_chunks": 9, "chunk_data": "AAAA"});
    a.send(out_of_order.clone());
    assert_eq!(reply(&mut a)["code"], "BAD_REQUEST");
    a.send(
        json!({"type": "file_upload", "upload_type": "chunk", "file_id": "f_x",
                  "chunk_index": 0, "total_chunks": 1, "chunk_data": "AAAA"}),
    );
    assert_eq!(reply(&mut a)["code"], "NOT_FOUND");
    a.send(out_of_order);
    assert_eq!(reply(&mut a)["code"], "RATE_LIMIT");
}

#[test]
fn upload_names_are_reduced_to_a_safe_base_name() {
    let s = TestServer::start("upload-names", |_| {});
    let mut a = s.client("alice");
    for bad in [".", "..", "../", "a/..", "/", "\u{202E}"] {
        assert_eq!(
            init(&mut a, bad, 10, json!({}))["code"],
            "BAD_REQUEST",
            "{bad:?}"
        );
    }
    let data = noise(300, 3);
    let done = upload(&mut a, "../../evil\u{202E}fdp.pdf", &data, json!({}));
    assert_eq!(done["upload_type"], "complete", "{done}");
    assert_eq!(done["file_name"], "evilfdp.pdf");
    let url = done["url"].as_str().unwrap().to_string();
    let (status, head, _) = get_file(&s, &url, Some(&s.token("alice")));
    assert_eq!(status, 200);
    let cd = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
        .unwrap();
    assert!(
        cd.contains("filename=\"evilfdp.pdf\"") && cd.contains("filename*=UTF-8''evilfdp.pdf"),
        "{cd}"
    );
    assert!(!cd.contains(".."), "{cd}");
}
