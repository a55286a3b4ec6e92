//! Seed 000 (`agixt`, SEEDS-COMPAT.md §6.4) over a real socket:
//! `/v1/conversation/{id}/stream` with the token in `?authorization=` or the header (raw
//! or Bearer), the history as `initial_message`, live `message_added`/`message_updated`
//! in the `data` envelope (a message committed elsewhere arrives well within the seed's
//! 2 s poll), heartbeats, and the refusals that end the stream.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A native chat that completes; returns its conversation id.
fn chat(c: &mut Client, conv: Option<&str>, text: &str) -> String {
    let mut m = json!({"type":"chat","message":text});
    if let Some(cv) = conv {
        m["conversation_id"] = json!(cv);
    }
    c.send(m);
    let ack = c.recv_type("ack");
    c.recv_type("complete");
    ack["conversation_id"].as_str().unwrap().to_string()
}

fn stream(s: &TestServer, conv: &str, auth: &str) -> Client {
    Client::connect(&s.url(&format!("/v1/conversation/{conv}/stream{auth}"))).unwrap()
}

#[test]
fn history_then_live_messages_in_the_seed_form() {
    let s = TestServer::start("c000a", |c| {
        c.ws.heartbeat_interval = Duration::from_millis(300);
    });
    let mut a = s.client("alice");
    let conv = chat(&mut a, None, "first question");
    chat(&mut a, Some(&conv), "second question");

    let tok = s.token("alice");
    let mut st = stream(&s, &conv, &format!("?authorization={tok}"));
    let hello = st.recv();
    assert_eq!(hello["type"], "connected", "{hello}");
    assert_eq!(hello["data"]["conversation_id"], conv.as_str());
    assert_eq!(hello["data"]["user_id"], "alice");
    // The whole history, oldest first.
    let mut history = Vec::new();
    for _ in 0..4 {
        let v = st.recv();
        assert_eq!(v["type"], "initial_message", "{v}");
        history.push(v["data"].clone());
    }
    assert_eq!(history[0]["message"], "first question");
    assert_eq!(history[0]["role"], "user");
    assert_eq!(history[1]["role"], "assistant"); // the agent's name
    assert_eq!(history[2]["message"], "second question");
    for h in &history {
        assert!(h["id"].is_string() && h["timestamp"].is_string() && h["updated_at"].is_string());
        assert_eq!(h["feedback_received"], false);
        assert!(h["updated_by"].is_string());
    }

    // A message committed on another connection arrives within the seed's 2 s.
    let t0 = Instant::now();
    a.send(json!({"type":"chat","message":"third question","conversation_id":conv}));
    let added = loop {
        let v = st.recv();
        if v["type"] == "message_added" {
            break v;
        }
    };
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(added["data"]["message"], "third question");
    // The reply is announced once it is complete, with its text.
    let reply = loop {
        let v = st.recv();
        assert_ne!(v["type"], "initial_message");
        if v["type"] == "message_added" {
            break v;
        }
    };
    assert_eq!(reply["data"]["role"], "assistant");
    assert_eq!(reply["data"]["status"], "complete");
    assert!(!reply["data"]["message"].as_str().unwrap().is_empty());

    // Heartbeats in the envelope (Client::recv skips type heartbeat, so read raw).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut beat = None;
    while Instant::now() < deadline && beat.is_none() {
        if let Ok(tungstenite::Message::Text(t)) = st.ws.read() {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "heartbeat" {
                beat = Some(v);
            }
        }
    }
    assert!(beat.unwrap()["data"]["timestamp"].is_string());

    // Read-only: a ping is answered, anything else is an error and the stream stays.
    st.send(json!({"type":"ping"}));
    assert_eq!(st.recv_type("pong")["type"], "pong");
    st.send(json!({"type":"chat","message":"x"}));
    let e = st.recv_type("error");
    assert_eq!(e["data"]["code"], "BAD_REQUEST");
    st.send(json!({"type":"ping"}));
    st.recv_type("pong");
}

#[test]
fn token_forms_and_refusals() {
    let s = TestServer::start("c000b", |_| {});
    let mut a = s.client("alice");
    let conv = chat(&mut a, None, "hello");
    let tok = s.token("alice");
    // `Bearer ` inside the query value, the raw header, the Bearer header.
    let mut c = stream(&s, &conv, &format!("?authorization=Bearer%20{tok}"));
    assert_eq!(c.recv()["type"], "connected");
    for value in [tok.clone(), format!("Bearer {tok}")] {
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(
            s.url(&format!("/v1/conversation/{conv}/stream")),
        )
        .unwrap();
        req.headers_mut()
            .insert("Authorization", value.parse().unwrap());
        let mut c = Client::connect_req(req).unwrap();
        assert_eq!(c.recv()["type"], "connected");
        assert_eq!(c.recv()["type"], "initial_message");
    }
    // No token, a bad token: the error in the envelope, then 1008.
    let mut c = stream(&s, &conv, "");
    let e = c.recv();
    assert_eq!(
        (e["type"].as_str(), e["data"]["code"].as_str()),
        (Some("error"), Some("AUTH_REQUIRED"))
    );
    assert_eq!(c.expect_close(), 1008);
    let mut c = stream(&s, &conv, "?authorization=garbage");
    let e = c.recv();
    assert_eq!(
        e["data"],
        json!({"error":"Invalid token","code":"AUTH_FAILED"})
    );
    assert_eq!(c.expect_close(), 1008);
    // Someone else's conversation; one that does not exist.
    let mut c = stream(&s, &conv, &format!("?authorization={}", s.token("bob")));
    assert_eq!(c.recv()["type"], "connected");
    assert_eq!(c.recv()["data"]["code"], "FORBIDDEN");
    assert_eq!(c.expect_close(), 1008);
    let mut c = stream(
        &s,
        "c_000000000000000000000000",
        &format!("?authorization={tok}"),
    );
    c.recv();
    let e = c.recv();
    assert_eq!(
        e["data"],
        json!({"error":"Conversation not found","code":"NOT_FOUND"})
    );
    assert_eq!(c.expect_close(), 1008);
}

#[test]
fn a_room_message_from_a_004_socket_reaches_a_000_stream_and_back() {
    let s = TestServer::start("c000c", |_| {});
    let mut r = Client::connect(&s.url(&format!(
        "/api/v1/ws/ws?token={}&room_id=lobby&room_type=shared",
        s.token("alice")
    )))
    .unwrap();
    let joined = loop {
        let v = r.recv();
        if v["type"] == "join_room" {
            break v;
        }
    };
    let conv = joined["data"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut b = s.client("bob");
    b.send(json!({"type":"join_room","room_id":"lobby"}));
    b.recv_type("subscribed");
    let mut st = stream(&s, &conv, &format!("?authorization={}", s.token("bob")));
    assert_eq!(st.recv()["type"], "connected");
    r.send(
        json!({"type":"chat","data":{"message":"hi lobby"},"room_id":"lobby","message_id":"m1"}),
    );
    // Sent right after `connected`: it may land in the stream's initial history (read
    // while the stream starts) rather than live — either is the seed's form.
    let added = loop {
        let v = st.recv();
        if v["type"] == "message_added" || v["type"] == "initial_message" {
            break v;
        }
    };
    assert_eq!(added["data"]["message"], "hi lobby");
    assert_eq!(added["data"]["role"], "user");
    // The reply, when complete, on the stream; on the native member, natively.
    // The reply, complete: live as `message_added`; or, when the stream started while it
    // was being written, as `initial_message` (partial) then `message_updated`.
    let reply = loop {
        let v = st.recv();
        let ty = v["type"].as_str().unwrap_or("");
        if ["message_added", "message_updated", "initial_message"].contains(&ty)
            && v["data"]["role"] == "assistant"
            && v["data"]["status"] == "complete"
        {
            break v;
        }
    };
    assert_eq!(reply["data"]["status"], "complete");
    assert_eq!(
        b.recv_type("message_added")["message"]["content"],
        "hi lobby"
    );
    // And back: the native member's message reaches the 004 socket and the stream.
    b.send(json!({"type":"chat","room_id":"lobby","message":"hi from native","ai":false}));
    let m = loop {
        let v = r.recv();
        if v["type"] == "chat" && v["data"]["role"] == "user" && v["data"]["user_id"] == "bob" {
            break v;
        }
    };
    assert_eq!(m["data"]["content"], "hi from native");
    let added = st.recv_type("message_added");
    assert_eq!(added["data"]["message"], "hi from native");
}

#[test]
fn the_whole_history_arrives_oldest_first_beyond_one_replay() {
    let s = TestServer::start("c000d", |c| {
        c.store.replay_max = 5;
        c.store.max_page = 3;
    });
    let mut a = s.client("alice");
    a.send(json!({"type":"chat","message":"m0","ai":false}));
    let conv = a.recv_type("ack")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 1..12 {
        a.send(json!({"type":"chat","message":format!("m{i}"),"conversation_id":conv,"ai":false}));
        a.recv_type("ack");
    }
    let mut st = stream(&s, &conv, &format!("?authorization={}", s.token("alice")));
    assert_eq!(st.recv()["type"], "connected");
    for i in 0..12 {
        let v = st.recv();
        assert_eq!(v["type"], "initial_message", "{v}");
        assert_eq!(v["data"]["message"], format!("m{i}"));
        assert_eq!(v["data"]["seq"], i + 1);
    }
    // Then live, exactly once: as `initial_message` if it was committed before the stream
    // switched from its history pages to live, else as `message_added`.
    a.send(json!({"type":"chat","message":"live","conversation_id":conv,"ai":false}));
    let v = st.recv();
    assert_eq!(v["data"]["message"], "live", "{v}");
    assert!(
        v["type"] == "initial_message" || v["type"] == "message_added",
        "{v}"
    );
    assert!(st.try_recv(std::time::Duration::from_millis(300)).is_none());
}
