//! Regression tests for the holes closed by the hardening work (docs/security.md): each
//! sends what an attacker's page or client would, over a real socket, and checks the
//! refusal.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// A POST as a browser sends it: `Origin`, `Host` and `Content-Type` chosen by the caller.
fn browser_post(
    s: &TestServer,
    path: &str,
    host: &str,
    origin: Option<&str>,
    content_type: &str,
    body: &Value,
) -> (u16, String, Value) {
    let body = body.to_string();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(o) = origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let (st, head, body) = send_raw(s.addr, &req);
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (st, head.to_ascii_lowercase(), v)
}

fn allow_origin(head: &str) -> Option<&str> {
    head.lines()
        .find_map(|l| l.strip_prefix("access-control-allow-origin:"))
        .map(str::trim)
}

#[test]
fn a_foreign_page_cannot_mint_a_dev_token() {
    let s = TestServer::start("sec-devtok", |_| {});
    let host = s.addr.to_string();
    let evil = "https://evil.example";
    let body = json!({"sub": "eve", "admin": true});

    // The "simple" request a page sends without a preflight: text/plain.
    let (st, head, v) = browser_post(&s, "/v1/token", &host, Some(evil), "text/plain", &body);
    assert_eq!(st, 415, "{v}");
    assert_eq!(allow_origin(&head), None, "{head}");
    assert!(v.get("token").is_none());

    // JSON from a foreign origin (after a preflight the browser would not have passed).
    let (st, head, v) = browser_post(
        &s,
        "/v1/token",
        &host,
        Some(evil),
        "application/json",
        &json!({"sub": "eve"}),
    );
    assert_eq!((st, v["code"].as_str()), (403, Some("FORBIDDEN")), "{v}");
    assert_eq!(allow_origin(&head), None);
    let (st, _, _) = browser_post(
        &s,
        "/v1/token",
        &host,
        Some("null"),
        "application/json",
        &json!({"sub": "eve"}),
    );
    assert_eq!(st, 403);

    // DNS rebinding: the page's own name resolved to 127.0.0.1, so Host is foreign.
    let (st, _, v) = browser_post(
        &s,
        "/v1/token",
        "evil.example:8080",
        Some("http://evil.example:8080"),
        "application/json",
        &json!({"sub": "eve"}),
    );
    assert_eq!(st, 403, "{v}");
    let (st, _, _) = browser_post(
        &s,
        "/v1/token",
        "evil.example",
        None,
        "application/json",
        &json!({"sub": "eve"}),
    );
    assert_eq!(st, 403);

    // The preflight for a JSON POST is not granted to a foreign origin.
    let pre = format!(
        "OPTIONS /v1/token HTTP/1.1\r\nHost: {host}\r\nOrigin: {evil}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n"
    );
    let (st, head, _) = send_raw(s.addr, &pre);
    assert_eq!(st, 204);
    assert_eq!(allow_origin(&head.to_ascii_lowercase()), None, "{head}");

    // The test page itself (same origin, loopback) still gets its token, and never admin.
    let own = format!("http://{host}");
    let (st, head, v) = browser_post(
        &s,
        "/v1/token",
        &host,
        Some(&own),
        "application/json",
        &json!({"sub": "me"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(allow_origin(&head), None, "no wildcard on token minting");
    assert!(
        !s.ctx()
            .auth
            .verify(v["token"].as_str().unwrap())
            .unwrap()
            .admin
    );
    let (st, _, v) = browser_post(
        &s,
        "/v1/token",
        "localhost",
        Some("http://localhost:3000"),
        "application/json",
        &body,
    );
    assert_eq!(
        (st, v["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "admin refused: {v}"
    );
    // A local tool without an Origin (curl) gets a plain token too.
    let (st, _, v) = browser_post(
        &s,
        "/v1/token",
        &host,
        None,
        "application/json",
        &json!({"sub": "cli"}),
    );
    assert_eq!(st, 200, "{v}");
}

#[test]
fn admin_dev_tokens_and_listed_origins_are_the_operators_choice() {
    let s = TestServer::start("sec-devtok-admin", |c| {
        c.auth.dev_tokens_admin = true;
        c.server.cors_origins = vec!["https://chat.example.com".into()];
    });
    let host = s.addr.to_string();
    let (st, head, v) = browser_post(
        &s,
        "/v1/token",
        &host,
        Some("https://chat.example.com"),
        "application/json",
        &json!({"sub": "root", "admin": true}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(allow_origin(&head), Some("https://chat.example.com"));
    assert!(
        s.ctx()
            .auth
            .verify(v["token"].as_str().unwrap())
            .unwrap()
            .admin
    );
    let (st, _, _) = browser_post(
        &s,
        "/v1/token",
        &host,
        Some("https://other.example"),
        "application/json",
        &json!({"sub": "x"}),
    );
    assert_eq!(st, 403);
}

#[test]
fn unauthenticated_endpoints_are_not_readable_cross_origin_but_bearer_ones_are() {
    let s = TestServer::start("sec-cors", |_| {});
    let host = s.addr.to_string();
    for path in ["/health", "/metrics", "/"] {
        let (st, head, _) = send_raw(
            s.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\n\r\n"),
        );
        assert_eq!(st, 200, "{path}");
        assert_eq!(
            allow_origin(&head.to_ascii_lowercase()),
            None,
            "{path}: {head}"
        );
    }
    let tok = s.token("alice");
    let (st, head, _) = send_raw(
        s.addr,
        &format!("GET /v1/conversations HTTP/1.1\r\nHost: {host}\r\nOrigin: https://app.example\r\nAuthorization: Bearer {tok}\r\n\r\n"),
    );
    assert_eq!(st, 200);
    assert_eq!(allow_origin(&head.to_ascii_lowercase()), Some("*"));
}

#[test]
fn upgrades_over_http_1_0_or_with_a_bad_key_get_400() {
    let s = TestServer::start("sec-upgrade", |_| {});
    let tok = s.token("alice");
    let up = |version: &str, key: &str| {
        let (st, _, body) = send_raw(
            s.addr,
            &format!(
                "GET /v1/ws?token={tok} HTTP/{version}\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
                s.addr
            ),
        );
        (st, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(up("1.0", "dGhlIHNhbXBsZSBub25jZQ==").0, 400);
    for bad in [
        "x",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZXg=",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "dGhlIHNhbXBsZSBub25jZR==",
    ] {
        let (st, body) = up("1.1", bad);
        assert_eq!(st, 400, "{bad}: {body}");
    }
    // A real client's key (16 random bytes) still upgrades.
    assert_eq!(
        upgrade_status(&s.url(&format!("/v1/ws?token={tok}"))).0,
        101
    );
}

#[test]
fn a_configured_audience_and_issuer_are_required_not_optional() {
    let s = TestServer::start("sec-aud", |c| {
        c.auth.audience = Some("confab".into());
        c.auth.issuer = Some("https://id.example".into());
    });
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"test-secret"),
        )
        .unwrap()
    };
    let cases = [
        (json!({"sub": "u", "exp": exp}), 401),
        (json!({"sub": "u", "exp": exp, "aud": "confab"}), 401),
        (
            json!({"sub": "u", "exp": exp, "iss": "https://id.example"}),
            401,
        ),
        (
            json!({"sub": "u", "exp": exp, "aud": "other", "iss": "https://id.example"}),
            401,
        ),
        (
            json!({"sub": "u", "exp": exp, "aud": "confab", "iss": "https://id.example"}),
            101,
        ),
    ];
    for (claims, want) in cases {
        let tok = sign(claims.clone());
        let (st, _) = upgrade_status(&s.url(&format!("/v1/ws?token={tok}")));
        assert_eq!(st, want, "{claims}");
        let (st, _) = s.http("GET", "/v1/conversations", Some(&tok), None);
        assert_eq!(st, if want == 101 { 200 } else { 401 }, "{claims}");
    }
}

#[test]
fn one_address_cannot_hold_more_than_max_connections_per_ip() {
    let s = TestServer::start("sec-per-ip", |c| c.server.max_connections_per_ip = 3);
    let mut open: Vec<Client> = (0..3).map(|i| s.client(&format!("u{i}"))).collect();
    let url = s.url(&format!("/v1/ws?token={}", s.token("u9")));
    let (st, body) = upgrade_status(&url);
    assert_eq!(
        (st, body["code"].as_str()),
        (429, Some("RATE_LIMIT")),
        "{body}"
    );
    // Plain HTTP counts too: it is a connection.
    assert_eq!(s.http("GET", "/health", None, None).0, 429);
    // A place comes back when a connection goes.
    open.pop().unwrap().close();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match upgrade_status(&url).0 {
            101 => break,
            429 if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            st => panic!("status {st}"),
        }
    }
}

#[test]
fn a_refused_token_gets_a_readable_reason() {
    let s = TestServer::start("sec-401", |_| {});
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "u", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    let (st, v) = s.http("GET", "/v1/conversations", Some(&other), None);
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("invalid signature")),
        "{v}"
    );
    let (st, v) = s.http("GET", "/v1/conversations", Some("abc"), None);
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("malformed token")),
        "{v}"
    );
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_closed_1008() {
    let s = TestServer::start("sec-pingflood", |c| {
        c.limits.rate_max_messages = 50;
        c.limits.rate_strikes = 5;
    });
    let mut c = s.client("flooder");
    for _ in 0..2_000 {
        if c.ws.write(Message::Ping(Default::default())).is_err() {
            break;
        }
    }
    let _ = c.ws.flush();
    let code = loop {
        match c.ws.read() {
            Ok(Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, 1008);
}

#[test]
fn metrics_can_require_a_bearer_token() {
    let s = TestServer::start("sec-metrics", |c| {
        c.server.metrics_token = Some("scrape-me".into())
    });
    assert_eq!(s.http("GET", "/metrics", None, None).0, 401);
    assert_eq!(s.http("GET", "/metrics", Some("scrape-mE"), None).0, 401);
    let (st, _, body) = http_raw(s.addr, "GET", "/metrics", Some("scrape-me"), None);
    assert_eq!(st, 200);
    let text = String::from_utf8(body).unwrap();
    for series in [
        "confab_build_info{version=",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
    ] {
        assert!(text.contains(series), "{series} missing");
    }
}
