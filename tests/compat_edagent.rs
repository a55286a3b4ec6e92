//! Seed 002 (`edagent`, SEEDS-COMPAT.md §6.6) over a real socket: `/api/v1/ws/{user_id}`,
//! type-less `{"message"}` in, `connection`, AI `typing`, `ai_response`, `broadcast`,
//! errors out; one conversation per user across reconnects; `status` and `broadcast`
//! over HTTP.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_typeless_message_gets_typing_then_the_ai_response_in_one_conversation() {
    let s = TestServer::start("c002a", |_| {});
    let url = s.url(&format!(
        "/api/v1/ws/student1?token={}",
        s.token("student1")
    ));
    let mut c = Client::connect(&url).unwrap();
    let hello = c.recv();
    assert_eq!(hello["type"], "connection", "{hello}");
    assert_eq!(hello["user_id"], "student1");
    assert_eq!(hello["message"], "Connected to EdAgent");
    c.send(json!({"message":"Hello EdAgent!"}));
    assert_eq!(
        c.recv(),
        json!({"type":"typing","user_id":"edagent","is_typing":true})
    );
    assert_eq!(
        c.recv(),
        json!({"type":"typing","user_id":"edagent","is_typing":false})
    );
    let r = c.recv();
    assert_eq!(r["type"], "ai_response", "{r}");
    assert!(!r["message"].as_str().unwrap().is_empty());
    let conv = r["conversation_id"].as_str().unwrap().to_string();
    // After a reconnect the same conversation continues.
    drop(c);
    let mut c = Client::connect(&url).unwrap();
    c.recv_type("connection");
    c.send(json!({"type":"message","message":"again"}));
    let r2 = c.recv_type("ai_response");
    assert_eq!(r2["conversation_id"], conv.as_str());
    // Errors in the chosen form; the socket stays.
    c.send_text("not json");
    assert_eq!(
        c.recv(),
        json!({"type":"error","message":"Invalid JSON format","code":"BAD_REQUEST"})
    );
    c.send(json!({"text":"no message field"}));
    assert_eq!(c.recv()["message"], "message is required");
    c.send(json!({"message":""}));
    assert_eq!(c.recv()["code"], "EMPTY_MESSAGE");
    c.send(json!({"type":"typing"}));
    c.send(json!({"type":"ping"}));
    let p = c.recv();
    assert_eq!(p["type"], "pong");
    assert!(p["timestamp"].is_string());

    // Someone else's path with this token: refused.
    let mut x = Client::connect(&s.url(&format!("/api/v1/ws/other?token={}", s.token("student1"))))
        .unwrap();
    let e = x.recv();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("FORBIDDEN"))
    );
    assert_eq!(x.expect_close(), 1008);
}

#[test]
fn status_and_broadcast_over_http() {
    let s = TestServer::start("c002b", |c| c.compat.trust_path_user = true);
    // Trust mode: the seed's own client sends no token.
    let mut a = Client::connect(&s.url("/api/v1/ws/ann")).unwrap();
    a.recv_type("connection");
    let mut b = Client::connect(&s.url("/api/v1/ws/ben")).unwrap();
    b.recv_type("connection");
    // A user named like a 004 endpoint uses the prefixed path.
    let mut w = Client::connect(&s.url("/compat/002/api/v1/ws/ws")).unwrap();
    assert_eq!(w.recv_type("connection")["user_id"], "ws");

    let (st, v) = s.http("GET", "/api/v1/ws/status", None, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["active_connections"], 3);
    assert_eq!(v["active_users"], 3);
    assert!(v.get("users").is_none());
    let admin = s.admin_token("root");
    let (_, v) = s.http("GET", "/api/v1/ws/status", Some(&admin), None);
    assert_eq!(v["users"].as_array().unwrap().len(), 3);

    // Broadcast: admin only; to some users, or to everyone.
    let body = json!({"message":"Class starts in 5 minutes","user_ids":["ann"]});
    assert_eq!(
        s.http("POST", "/api/v1/ws/broadcast", None, Some(&body)).0,
        401
    );
    assert_eq!(
        s.http(
            "POST",
            "/api/v1/ws/broadcast",
            Some(&s.token("ann")),
            Some(&body)
        )
        .0,
        403
    );
    let (st, v) = s.http("POST", "/api/v1/ws/broadcast", Some(&admin), Some(&body));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["connections"], 1);
    let m = a.recv_type("broadcast");
    assert_eq!(m["message"], "Class starts in 5 minutes");
    assert!(b.try_recv(std::time::Duration::from_millis(300)).is_none());
    let (st, _) = s.http(
        "POST",
        "/api/v1/ws/broadcast",
        Some(&admin),
        Some(&json!({"message":"all"})),
    );
    assert_eq!(st, 200);
    assert_eq!(b.recv_type("broadcast")["message"], "all");
    assert_eq!(a.recv_type("broadcast")["message"], "all");

    // The server going away is announced before the close frame.
    let mut s = s;
    s.stop();
    let d = a.recv_type("disconnection");
    assert_eq!(d["reason"], "server shutting down");
    assert_eq!(a.expect_close(), 1001);
}
