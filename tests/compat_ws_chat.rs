//! Seed 001 (`ws_chat`, SEEDS-COMPAT.md §6.5) over a real socket: `/ws/chat` with query
//! or message auth, the seed's progress steps, `partial_response` as the text so far,
//! `session_id` keeping a conversation, the error map.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};

/// Read one reply's events up to its `complete` (or an `error`).
fn reply(c: &mut Client) -> (Vec<Value>, Value) {
    let mut evs = Vec::new();
    loop {
        let v = c.recv();
        match v["type"].as_str() {
            Some("complete") | Some("error") => return (evs, v),
            _ => evs.push(v),
        }
    }
}

#[test]
fn query_token_chat_streams_progress_tokens_and_complete() {
    let s = TestServer::start("c001a", |_| {});
    let mut c = Client::connect(&s.url(&format!("/ws/chat?token={}", s.token("alice")))).unwrap();
    c.send(json!({"type":"message","message":"hello there","session_id":"py-1","customer_id":"cust-9"}));
    let (evs, done) = reply(&mut c);
    assert_eq!(done["type"], "complete", "{done}");
    // No greeting and no native events: the seed's first event is progress.
    assert_eq!(
        evs[0],
        json!({"type":"progress","step":"starting","message":"Processing started"})
    );
    assert_eq!(evs[1]["step"], "agent_routing");
    let steps: Vec<&str> = evs
        .iter()
        .filter(|e| e["type"] == "progress")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"rag_retrieval") && steps.contains(&"generating"),
        "{steps:?}"
    );
    // partial_response is the concatenation so far.
    let mut so_far = String::new();
    let mut n = 0;
    for e in evs.iter().filter(|e| e["type"] == "token") {
        so_far.push_str(e["token"].as_str().unwrap());
        assert_eq!(e["partial_response"], so_far.as_str());
        n += 1;
    }
    assert!(n > 1);
    assert_eq!(done["response"], so_far.as_str());
    assert_eq!(done["session_id"], "py-1");
    assert_eq!(done["metadata"]["agent"], "assistant");
    assert!(done["metadata"]["confidence"].is_null());
    assert_eq!(done["metadata"]["context"]["sources"], json!([]));
    for e in &evs {
        let ty = e["type"].as_str().unwrap();
        assert!(ty == "progress" || ty == "token", "unexpected {e}");
    }

    // The same session_id continues the same conversation (context continuity).
    c.send(json!({"type":"message","message":"and again","session_id":"py-1"}));
    let (_, done2) = reply(&mut c);
    assert_eq!(done2["session_id"], "py-1");
    let (st, list) = s.http("GET", "/v1/conversations", Some(&s.token("alice")), None);
    assert_eq!(st, 200);
    let convs = list["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 1, "{list}");
    assert_eq!(convs[0]["message_count"], 4);

    // A second socket with the same session_id reaches the same conversation.
    let mut c2 = Client::connect(&s.url(&format!("/ws/chat?token={}", s.token("alice")))).unwrap();
    c2.send(json!({"type":"message","message":"from another tab","session_id":"py-1"}));
    let (_, done3) = reply(&mut c2);
    assert_eq!(done3["session_id"], "py-1");
    let (_, list) = s.http("GET", "/v1/conversations", Some(&s.token("alice")), None);
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);

    // Without session_id: the connection's own conversation, named by its native id —
    // even for two messages sent at once (before the first is acknowledged).
    let mut c3 = Client::connect(&s.url(&format!("/ws/chat?token={}", s.token("bob")))).unwrap();
    c3.send(json!({"type":"message","message":"one"}));
    c3.send(json!({"type":"message","message":"two"}));
    let (_, d1) = reply(&mut c3);
    let (_, d2) = reply(&mut c3);
    assert!(d1["session_id"].as_str().unwrap().starts_with("c_"), "{d1}");
    assert_eq!(d1["session_id"], d2["session_id"]);
    let (_, list) = s.http("GET", "/v1/conversations", Some(&s.token("bob")), None);
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn auth_message_errors_and_the_error_map() {
    let s = TestServer::start("c001b", |_| {});
    // A message before auth.
    let mut c = Client::connect(&s.url("/ws/chat")).unwrap();
    c.send(json!({"type":"message","message":"hi"}));
    let e = c.recv();
    assert_eq!(
        e,
        json!({"type":"error","error":"Authentication required","code":"AUTH_REQUIRED"})
    );
    // The auth message: auth_success with id, email, name and nothing else first.
    let tok = s
        .ctx()
        .auth
        .sign("carol", Some("Carol"), false, 3600)
        .unwrap();
    c.send(json!({"type":"auth","token":tok}));
    let ok = c.recv();
    assert_eq!(ok["type"], "auth_success", "{ok}");
    assert_eq!(ok["message"], "Authentication successful");
    assert_eq!(ok["user"]["id"], "carol");
    assert_eq!(ok["user"]["name"], "Carol");
    assert!(ok["user"].as_object().unwrap().contains_key("email"));
    // Empty message.
    c.send(json!({"type":"message","message":"   "}));
    assert_eq!(
        c.recv(),
        json!({"type":"error","error":"Message is empty","code":"EMPTY_MESSAGE"})
    );
    // Not JSON, unknown type: the 001 error form, the socket stays usable.
    c.send_text("{nope");
    let e = c.recv();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("BAD_REQUEST"))
    );
    c.send(json!({"type":"dance"}));
    assert_eq!(c.recv()["code"], "BAD_REQUEST");
    c.send(json!({"type":"ping"}));
    assert_eq!(c.recv()["type"], "pong");

    // A bad token in the query: accepted, then auth_error and close 1008 (a browser sees it).
    let mut bad = Client::connect(&s.url("/ws/chat?token=not-a-jwt")).unwrap();
    let e = bad.recv();
    assert_eq!(e["type"], "auth_error");
    assert_eq!(e["message"], "Invalid token");
    assert_eq!(bad.expect_close(), 1008);
    // A bad token in the auth message: the same.
    let mut bad = Client::connect(&s.url("/ws/chat")).unwrap();
    bad.send(json!({"type":"auth","token":"garbage"}));
    assert_eq!(bad.recv()["message"], "Invalid token");
    assert_eq!(bad.expect_close(), 1008);
}

#[test]
fn an_extra_listener_serves_the_same_server() {
    let s = TestServer::start("c001c", |c| {
        c.compat.extra_listen = vec!["127.0.0.1:0".parse().unwrap()];
    });
    let extra = s.handle.as_ref().unwrap().extra_addrs[0];
    assert_ne!(extra, s.addr);
    let url = format!("ws://{extra}/ws/chat?token={}", s.token("alice"));
    let mut c = Client::connect(&url).unwrap();
    c.send(json!({"type":"message","message":"via the seed's port","session_id":"p"}));
    let (_, done) = reply(&mut c);
    assert_eq!(done["session_id"], "p");
    // Same server: the conversation is visible on the main address.
    let (_, list) = s.http("GET", "/v1/conversations", Some(&s.token("alice")), None);
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
}
