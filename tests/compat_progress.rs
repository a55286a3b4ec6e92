//! Seed 003 (`progress`, SEEDS-COMPAT.md §6.7) over a real socket: `/ws/{user}/{session}`
//! with a token or (trust mode, loopback) none, `query` → `started`, strictly increasing
//! `progress`, `completed`; the session id as a conversation alias; ping/pong; the error
//! envelope; and the REST history.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};

/// Events of one query up to `completed` (or `error`).
fn run(c: &mut Client) -> Vec<Value> {
    let mut evs = Vec::new();
    loop {
        let v = c.recv();
        assert!(v["data"].is_object(), "not in the envelope: {v}");
        let end = v["type"] == "completed" || v["type"] == "error";
        evs.push(v);
        if end {
            return evs;
        }
    }
}

fn check_percents(evs: &[Value]) {
    let percents: Vec<u64> = evs
        .iter()
        .map(|e| e["data"]["progress"].as_u64().unwrap())
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing: {percents:?}"
    );
    assert_eq!(percents.first(), Some(&0));
    assert_eq!(percents.last(), Some(&100));
}

#[test]
fn a_query_streams_started_progress_and_completed_with_the_session_as_conversation() {
    let s = TestServer::start("c003a", |_| {});
    let url = s.url(&format!(
        "/ws/alice/test_session?token={}",
        s.token("alice")
    ));
    let mut c = Client::connect(&url).unwrap();
    let hello = c.recv();
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["data"]["user_id"], "alice");
    assert_eq!(hello["data"]["session_id"], "test_session");

    c.send(json!({"type":"query","query":"Show me my top Instagram posts","conversation_id":"test_session"}));
    let evs = run(&mut c);
    assert_eq!(evs[0]["type"], "started");
    assert_eq!(evs[0]["data"]["message"], "Planning Task...");
    let done = evs.last().unwrap();
    assert_eq!(done["type"], "completed", "{evs:?}");
    assert_eq!(done["data"]["message"], "Complete!");
    assert!(!done["data"]["response"].as_str().unwrap().is_empty());
    assert_eq!(done["data"]["conversation_id"], "test_session");
    for e in &evs[1..evs.len() - 1] {
        assert_eq!(e["type"], "progress", "{e}");
    }
    assert!(evs
        .iter()
        .any(|e| e["data"]["message"] == "Finalizing Response..."));
    check_percents(&evs);

    // A second query (no conversation_id: the path's session) continues it.
    c.send(json!({"type":"query","query":"and the bottom 5?"}));
    check_percents(&run(&mut c));
    c.send(json!({"type":"ping"}));
    let p = c.recv();
    assert_eq!(p["type"], "pong");
    assert!(p["data"]["timestamp"].is_string());

    // Errors keep the socket open.
    c.send(json!({"type":"dance"}));
    let e = c.recv();
    assert_eq!(
        (e["type"].as_str(), e["data"]["code"].as_str()),
        (Some("error"), Some("BAD_REQUEST"))
    );
    c.send_text("nope");
    assert_eq!(c.recv()["data"]["code"], "BAD_REQUEST");
    c.send(json!({"type":"query","query":" "}));
    assert_eq!(c.recv()["data"]["code"], "EMPTY_MESSAGE");

    // REST: the list shows the session id, newest first, with preview and counts.
    let tok = s.token("alice");
    let (st, list) = s.http("GET", "/conversations/alice", Some(&tok), None);
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["user_id"], "alice");
    assert_eq!(list["count"], 1);
    let conv = &list["conversations"][0];
    assert_eq!(conv["conversation_id"], "test_session");
    assert_eq!(conv["message_count"], 4);
    assert_eq!(conv["preview"], "Show me my top Instagram posts");
    // Messages by alias, chronological, limited.
    let (st, msgs) = s.http(
        "GET",
        "/conversations/alice/test_session/messages?limit=3",
        Some(&tok),
        None,
    );
    assert_eq!(st, 200, "{msgs}");
    assert_eq!(msgs["count"], 3);
    let m = msgs["messages"].as_array().unwrap();
    assert_eq!(m[0]["role"], "assistant");
    assert_eq!(m[1]["content"], "and the bottom 5?");
    assert_eq!(m[2]["role"], "assistant");
    // Someone else's path, someone else's token, an unknown id.
    assert_eq!(
        s.http("GET", "/conversations/alice", Some(&s.token("bob")), None)
            .0,
        403
    );
    assert_eq!(s.http("GET", "/conversations/alice", None, None).0, 401);
    assert_eq!(
        s.http(
            "GET",
            "/conversations/alice/nope/messages",
            Some(&tok),
            None
        )
        .0,
        404
    );
}

#[test]
fn path_identity_needs_a_matching_token_unless_trusted_on_loopback() {
    let s = TestServer::start("c003b", |_| {});
    // No token: refused in the seed's form, then 1008.
    let mut c = Client::connect(&s.url("/ws/alice/s1")).unwrap();
    let e = c.recv();
    assert_eq!(
        (e["type"].as_str(), e["data"]["code"].as_str()),
        (Some("error"), Some("AUTH_REQUIRED"))
    );
    assert_eq!(c.expect_close(), 1008);
    // bob's token on alice's path.
    let mut c = Client::connect(&s.url(&format!("/ws/alice/s1?token={}", s.token("bob")))).unwrap();
    assert_eq!(c.recv()["data"]["code"], "FORBIDDEN");
    assert_eq!(c.expect_close(), 1008);

    let t = TestServer::start("c003c", |c| c.compat.trust_path_user = true);
    let mut c = Client::connect(&t.url("/ws/test_user/test_session_123")).unwrap();
    assert_eq!(c.recv()["data"]["user_id"], "test_user");
    c.send(json!({"type":"query","query":"Show me my top 5 Instagram posts by engagement"}));
    check_percents(&run(&mut c));
    // The REST history is open to the path's user in trust mode too.
    let (st, list) = t.http("GET", "/conversations/test_user", None, None);
    assert_eq!(st, 200, "{list}");
    assert_eq!(
        list["conversations"][0]["conversation_id"],
        "test_session_123"
    );
    // A foreign page (Origin) never gets the trust.
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(t.url("/ws/test_user/x"))
            .unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let mut c = Client::connect_req(req).unwrap();
    assert_eq!(c.recv()["data"]["code"], "AUTH_REQUIRED");
    assert_eq!(c.expect_close(), 1008);
}
