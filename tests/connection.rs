//! The connection server: auth paths, errors, limits, HTTP, echo, shutdown.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::json;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

#[test]
fn each_auth_path_reaches_connected() {
    let s = TestServer::start("auth-paths", |_| {});
    let t = s.token("alice");

    // Query parameter.
    let mut c = Client::connect(&s.url(&format!("/v1/ws?token={t}"))).unwrap();
    let ev = c.recv_type("connected");
    assert_eq!(ev["protocol"], "confab.v1");
    assert_eq!(ev["user"]["name"], "User alice");
    assert!(ev["heartbeat_interval"].as_u64().unwrap() > 0);

    // Authorization header.
    let mut req = s.url("/v1/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    let mut c = Client::connect_req(req).unwrap();
    c.recv_type("connected");

    // Subprotocol list: the server selects confab.v1.
    let mut req = s.url("/v1/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("confab.v1, bearer.{t}").parse().unwrap(),
    );
    let mut c = Client::connect_req(req).unwrap();
    c.recv_type("connected");

    // First message.
    let mut c = Client::connect(&s.url("/v1/ws")).unwrap();
    c.send(json!({"type": "auth", "token": t}));
    let ok = c.recv();
    assert_eq!(ok["type"], "auth_success", "{ok}");
    assert_eq!(ok["user"]["id"], "alice");
    assert_eq!(c.recv()["type"], "connected");
}

#[test]
fn bad_expired_none_and_wrong_key_tokens_are_refused_with_401() {
    let s = TestServer::start("auth-bad", |c| c.auth.leeway_s = 0);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = confab::auth::now_s();
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"u","exp":{}}}"#, now + 100))
    );
    let claims = json!({"sub": "u", "exp": now - 5});
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"test-secret"),
    )
    .unwrap();
    let claims = json!({"sub": "u", "exp": now + 100});
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"other"),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "u"}),
        &jsonwebtoken::EncodingKey::from_secret(b"test-secret"),
    )
    .unwrap();
    for bad in [
        "garbage",
        none.as_str(),
        expired.as_str(),
        wrong_key.as_str(),
        no_exp.as_str(),
    ] {
        let (status, body) = upgrade_status(&s.url(&format!("/v1/ws?token={bad}")));
        assert_eq!(status, 401, "token {bad}");
        assert_eq!(body["code"], "AUTH_FAILED", "{body}");
        assert!(body["error"].is_string());
    }
}

#[test]
fn a_bad_auth_message_gets_auth_error_and_close_1008() {
    let s = TestServer::start("auth-msg-bad", |_| {});
    let mut c = Client::connect(&s.url("/v1/ws")).unwrap();
    c.send(json!({"type": "auth", "token": "nope"}));
    assert_eq!(c.recv()["type"], "auth_error");
    assert_eq!(c.expect_close(), 1008);
}

#[test]
fn messages_before_auth_get_auth_required_and_a_silent_client_is_closed_1008() {
    let s = TestServer::start("auth-silent", |c| {
        c.auth.auth_timeout = Duration::from_millis(300)
    });
    let mut c = Client::connect(&s.url("/v1/ws")).unwrap();
    c.send(json!({"type": "chat", "id": "x", "message": "hi"}));
    let e = c.recv();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("AUTH_REQUIRED"), Some("x"))
    );
    assert_eq!(c.expect_close(), 1008);
}

#[test]
fn malformed_input_is_bad_request_and_the_connection_stays_usable() {
    let s = TestServer::start("bad-request", |_| {});
    let mut c = s.client("bob");
    for (text, id) in [
        ("{not json", None),
        ("[1,2,3]", None),
        ("\"just a string\"", None),
        (r#"{"type":"no_such_type","id":"q1"}"#, Some("q1")),
        (r#"{"type":"subscribe","id":"q2"}"#, Some("q2")),
        (
            r#"{"type":"read","id":"q3","conversation_id":"c","seq":"x"}"#,
            Some("q3"),
        ),
        (r#"{"id":"q4"}"#, Some("q4")),
    ] {
        c.send_text(text);
        let e = c.recv();
        assert_eq!(e["type"], "error", "{text}");
        assert_eq!(e["code"], "BAD_REQUEST", "{text}");
        assert_eq!(e["id"].as_str(), id, "{text}");
    }
    c.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(c.recv()["code"], "BAD_REQUEST");
    c.send(json!({"type": "ping", "id": "p"}));
    let p = c.recv();
    assert_eq!(
        (p["type"].as_str(), p["id"].as_str()),
        (Some("pong"), Some("p"))
    );
    assert!(p["server_time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn an_oversized_message_is_closed_with_1009() {
    let s = TestServer::start("too-big", |c| {
        c.ws.max_message_bytes = 1024;
        c.ws.max_frame_bytes = 1024;
    });
    let mut c = s.client("big");
    c.send_text(&format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(4000)
    ));
    assert_eq!(c.expect_close(), 1009);
}

#[test]
fn a_client_that_never_reads_is_closed_1013_and_memory_stays_bounded() {
    let s = TestServer::start("slow-consumer", |c| {
        c.ws.out_queue_max_bytes = 64 * 1024;
        c.ws.max_message_bytes = 1024;
        c.limits.rate_max_messages = 1_000_000;
    });
    let t = s.token("slow");
    // A small receive buffer so the kernel holds little on the client's side.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let req = s
        .url(&format!("/v1/ws?token={t}"))
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tungstenite::client(req, stream).unwrap();
    let before = rss_kib();
    // Every ping makes the server queue a pong; we never read them.
    let ping = Message::text(r#"{"type":"ping","id":"0123456789012345678901234567890123456789"}"#);
    let mut sent = 0;
    let closed = loop {
        if ws.write(ping.clone()).is_err() || (sent % 64 == 0 && ws.flush().is_err()) {
            break true;
        }
        sent += 1;
        if sent > 2_000_000 {
            break false;
        }
        if sent % 20000 == 0
            && s.ctx().net.metrics.closes[8].load(std::sync::atomic::Ordering::Relaxed) > 0
        {
            break true;
        }
    };
    assert!(closed, "server kept accepting without closing");
    let grew = rss_kib().saturating_sub(before);
    assert!(grew < 64 * 1024, "RSS grew by {grew} KiB");
    // Now read: pongs, then the close frame with 1013.
    let code = loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, 1013);
}

#[test]
fn the_connection_limit_answers_503() {
    let s = TestServer::start("conn-limit", |c| c.server.max_connections = 3);
    let _a = s.client("a");
    let _b = s.client("b");
    let _c = s.client("c");
    let (status, body) = upgrade_status(&s.url(&format!("/v1/ws?token={}", s.token("d"))));
    assert_eq!(status, 503);
    assert_eq!(body["code"], "BUSY");
}

#[test]
fn the_per_user_limit_answers_429() {
    let s = TestServer::start("user-limit", |c| c.server.max_connections_per_user = 2);
    let _a = s.client("same");
    let _b = s.client("same");
    let (status, body) = upgrade_status(&s.url(&format!("/v1/ws?token={}", s.token("same"))));
    assert_eq!(status, 429, "{body}");
    let _other = s.client("other");
}

#[test]
fn the_rate_limit_answers_with_retry_after_and_repeated_abuse_closes_1008() {
    let s = TestServer::start("rate", |c| {
        c.limits.rate_max_messages = 5;
        c.limits.rate_window = Duration::from_secs(10);
        c.limits.rate_strikes = 3;
    });
    let mut c = s.client("spammer");
    for i in 0..5 {
        c.send(json!({"type": "ping", "id": i.to_string()}));
        assert_eq!(c.recv()["type"], "pong");
    }
    c.send(json!({"type": "ping", "id": "over"}));
    let e = c.recv();
    assert_eq!(e["code"], "RATE_LIMIT");
    assert_eq!(e["id"], "over");
    let retry = e["retry_after"].as_f64().unwrap();
    assert!(retry > 0.0 && retry <= 10.0, "{retry}");
    for _ in 0..3 {
        c.send(json!({"type": "ping"}));
    }
    assert_eq!(c.expect_close(), 1008);
}

#[test]
fn two_thousand_concurrent_connections_are_each_answered() {
    let s = TestServer::start("many", |c| {
        c.limits.rate_max_messages = 1000;
        c.server.max_connections_per_ip = 0;
    });
    let mut clients = Vec::new();
    // The per-user cap is 64 by default: 40 users with 50 connections each.
    for i in 0..2000 {
        let tok = s.token(&format!("crowd{}", i / 50));
        let mut c = Client::connect(&s.url(&format!("/v1/ws?token={tok}"))).unwrap();
        c.recv_type("connected");
        clients.push(c);
    }
    assert_eq!(
        s.ctx()
            .net
            .metrics
            .ws_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        2000
    );
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(json!({"type": "ping", "id": i.to_string()}));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let p = c.recv();
        assert_eq!(p["id"], i.to_string());
    }
    // Both shards carry load.
    let loads: Vec<usize> = s
        .ctx()
        .net
        .shard_load
        .iter()
        .map(|l| l.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert!(loads.iter().all(|l| *l >= 900), "{loads:?}");
}

#[test]
fn http_health_metrics_404_and_405() {
    let s = TestServer::start("http", |_| {});
    let (st, body) = s.http("GET", "/health", None, None);
    assert_eq!(st, 200);
    assert_eq!(body["status"], "ok");
    assert!(body["connections"].is_number() && body["uptime_s"].is_number());
    let (st, body) = s.http("GET", "/nowhere", None, None);
    assert_eq!((st, body["code"].as_str()), (404, Some("NOT_FOUND")));
    let (st, _) = s.http("DELETE", "/health", None, None);
    assert_eq!(st, 405);
    let (st, _, body) = http_raw(s.addr, "GET", "/metrics", None, None);
    assert_eq!(st, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("confab_open_connections "), "{text}");
    // OpenMetrics parsers name a counter's family without `_total`: no gauge may have
    // that name (confab_connections vs confab_connections_total was rejected).
    let types: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    for (name, kind) in &types {
        if let (Some(family), &"counter") = (name.strip_suffix("_total"), kind) {
            assert!(
                !types.iter().any(|(n, k)| *n == family && *k != "counter"),
                "{family} is both a counter family and a {kind}"
            );
        }
    }
    assert!(text.contains("confab_closes_total{code=\"1008\"}"));
    assert!(text.contains("confab_errors_total{code=\"BAD_REQUEST\"}"));
    let (st, _) = s.http("GET", "/v1/ws", None, None);
    assert_eq!(st, 426);
}

#[test]
fn garbage_and_oversized_http_heads_get_4xx() {
    let s = TestServer::start("http-bad", |_| {});
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.write_all(b"\x00\x01\x02 not http\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = sock.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let _ = sock
        .write_all(format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000)).as_bytes());
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn a_first_frame_pipelined_with_the_upgrade_request_is_read() {
    let s = TestServer::start("pipelined", |_| {});
    let t = s.token("eager");
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let payload = br#"{"type":"ping","id":"early"}"#;
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut req = format!(
        "GET /v1/ws?token={t} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&frame);
    sock.write_all(&req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"early\"") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
}

#[test]
fn heartbeats_arrive_and_an_expired_token_is_warned_then_closed_1008() {
    let s = TestServer::start("heartbeat", |c| {
        c.ws.heartbeat_interval = Duration::from_millis(200);
        c.auth.leeway_s = 0;
        c.auth.expiry_grace = Duration::from_millis(500);
    });
    let t = s.ctx().auth.sign("brief", None, false, 2).unwrap();
    let mut c = Client::connect(&s.url(&format!("/v1/ws?token={t}"))).unwrap();
    c.recv_type("connected");
    // A heartbeat event comes (Client::recv skips them, so read raw).
    let mut saw_heartbeat = false;
    let mut saw_expired = false;
    let code = loop {
        match c.ws.read() {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                saw_heartbeat |= v["type"] == "heartbeat";
                saw_expired |= v["code"] == "TOKEN_EXPIRED";
            }
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert!(saw_heartbeat && saw_expired);
    assert_eq!(code, 1008);
}

#[test]
fn a_fresh_auth_message_keeps_an_expiring_connection_open() {
    let s = TestServer::start("refresh", |c| {
        c.auth.leeway_s = 0;
        c.auth.expiry_grace = Duration::from_secs(30);
    });
    let t = s.ctx().auth.sign("renew", None, false, 1).unwrap();
    let mut c = Client::connect(&s.url(&format!("/v1/ws?token={t}"))).unwrap();
    c.recv_type("connected");
    assert_eq!(c.recv_type("error")["code"], "TOKEN_EXPIRED");
    c.send(json!({"type": "auth", "token": s.token("renew")}));
    assert_eq!(c.recv_type("auth_success")["user"]["id"], "renew");
    c.send(json!({"type": "auth", "token": s.token("someone-else")}));
    assert_eq!(c.recv_type("auth_error")["code"], "AUTH_FAILED");
    assert_eq!(c.expect_close(), 1008);
}

#[test]
fn the_echo_path_echoes_text_and_binary_without_auth() {
    let s = TestServer::start("echo", |c| c.server.echo_path = Some("/echo".into()));
    let mut c = Client::connect(&s.url("/echo")).unwrap();
    c.ws.send(Message::text("hello")).unwrap();
    assert_eq!(c.ws.read().unwrap(), Message::text("hello"));
    c.ws.send(Message::binary(vec![0u8, 255, 7])).unwrap();
    assert_eq!(c.ws.read().unwrap(), Message::binary(vec![0u8, 255, 7]));
    // Off by default.
    let s2 = TestServer::start("echo-off", |_| {});
    let (st, _) = upgrade_status(&s2.url("/echo"));
    assert_eq!(st, 404);
}

#[test]
fn dev_tokens_are_minted_on_loopback_and_bearer_tokens_exchanged() {
    let s = TestServer::start("dev-token", |_| {});
    let (st, body) = s.http(
        "POST",
        "/v1/token",
        None,
        Some(&json!({"sub": "dev", "name": "Dev"})),
    );
    assert_eq!(st, 200, "{body}");
    let tok = body["token"].as_str().unwrap().to_string();
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    assert_eq!(s.ctx().auth.verify(&tok).unwrap().id, "dev");
    let (st, body) = s.http("POST", "/v1/token", Some(&tok), None);
    assert_eq!((st, body["user"]["id"].as_str()), (200, Some("dev")));
    let (st, _) = s.http("POST", "/v1/token", Some("bad"), None);
    assert_eq!(st, 401);
    let off = TestServer::start("dev-token-off", |c| c.auth.dev_tokens = false);
    let (st, body) = off.http("POST", "/v1/token", None, Some(&json!({"sub": "dev"})));
    assert_eq!((st, body["code"].as_str()), (401, Some("AUTH_REQUIRED")));
}

#[test]
fn a_client_still_sending_after_a_too_big_message_reads_the_1009() {
    // The server must not drop the socket while the client's bytes are unread: the
    // kernel would answer with a reset and the close frame would be lost.
    let s = TestServer::start("close-1009-linger", |_| {});
    let max = s.ctx().cfg.ws.max_message_bytes;
    for round in 0..10 {
        let mut c = s.client(&format!("big{round}"));
        // One message over the limit, then more traffic right behind it.
        c.ws.write(Message::text("x".repeat(max + 1))).unwrap();
        for _ in 0..20 {
            let _ = c.ws.write(Message::text("y".repeat(30_000)));
        }
        let _ = c.ws.flush();
        let code = loop {
            match c.ws.read() {
                Ok(Message::Close(Some(f))) => break u16::from(f.code),
                Ok(_) => continue,
                Err(e) => panic!("round {round}: no close frame, got {e}"),
            }
        };
        assert_eq!(code, 1009, "round {round}");
    }
}
