//! Seed 004 (`rooms`, SEEDS-COMPAT.md §6.8) over a real socket: the `{"type","data"}`
//! envelope both ways, the seed's names for every event, `message_id` as the idempotency
//! key and the key of `delivery_confirmation`, AI replies in rooms, numeric conversation
//! ids, 1 MiB upload chunks, its rate limit and error form, and its HTTP endpoints — and
//! the same room shared with a native `/v1/ws` member.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

fn seed_socket(s: &TestServer, user: &str, query: &str) -> Client {
    let url = s.url(&format!("/api/v1/ws/ws?token={}{query}", s.token(user)));
    let mut c = Client::connect(&url).unwrap();
    let ev = c.recv();
    assert_eq!(ev["type"], "connect", "{ev}");
    assert_eq!(ev["data"]["status"], "connected");
    assert!(ev["data"]["connection_id"].is_string());
    assert!(ev["data"]["server_time"].is_string());
    c
}

/// Every event on a 004 socket is `{"type", "data"}`.
fn next(c: &mut Client) -> Value {
    let v = c.recv();
    assert!(v["data"].is_object(), "not in the envelope: {v}");
    v
}

fn until(c: &mut Client, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..2000 {
        let v = next(c);
        if pred(&v) {
            return v;
        }
    }
    panic!("no such event");
}

/// A reply's chunks up to its completion: (text of the chunks, the completion).
fn reply(c: &mut Client) -> (String, Value) {
    let mut text = String::new();
    loop {
        let v = next(c);
        if v["type"] == "chat" && v["data"]["role"] == "assistant" {
            if v["data"]["streaming"] == true {
                text.push_str(v["data"]["content"].as_str().unwrap());
            } else if v["data"]["done"] == true {
                return (text, v);
            }
        }
        assert_ne!(v["type"], "error", "{v}");
    }
}

#[test]
fn a_room_chat_in_the_seed_envelope_gets_confirmations_and_an_ai_reply_for_every_member() {
    let s = TestServer::start("c004a", |_| {});
    // alice's socket auto-joins (creates) a shared room from the query.
    let mut a = seed_socket(
        &s,
        "alice",
        "&room_id=room-123&room_type=shared&room_name=Team",
    );
    let j = until(&mut a, |v| v["type"] == "join_room");
    assert_eq!(j["data"]["room_id"], "room-123");
    assert_eq!(j["data"]["room_type"], "shared");
    assert_eq!(j["data"]["participants"], json!(["alice"]));
    let conv = j["data"]["conversation_id"].as_str().unwrap().to_string();

    // bob joins with the seed's join_room envelope; a native member joins too.
    let mut b = seed_socket(&s, "bob", "");
    b.send(json!({"type":"join_room","data":{"room_id":"room-123"}}));
    let jb = until(&mut b, |v| v["type"] == "join_room");
    assert_eq!(jb["data"]["participants"].as_array().unwrap().len(), 2);
    let mut n = s.client("nina");
    n.send(json!({"type":"join_room","room_id":"room-123"}));
    n.recv_type("subscribed");

    // The seed's own chat message (model_preference, message_id, room_id outside data).
    a.send(
        json!({"type":"chat","data":{"message":"Hello, AI!","conversation_id":null,
        "model_preference":"gpt-4","temperature":0.7},"room_id":"room-123","message_id":"msg-1"}),
    );
    let dc = until(&mut a, |v| v["type"] == "delivery_confirmation");
    assert_eq!(dc["data"]["message_id"], "msg-1");
    assert_eq!(dc["data"]["status"], "delivered");
    assert_eq!(dc["data"]["recipients"], 2);
    assert_eq!(dc["data"]["conversation_id"], conv.as_str());
    // Every member gets the AI reply (AI is on for the seed's room chats).
    let (text_a, done_a) = reply(&mut a);
    assert!(!text_a.is_empty());
    assert_eq!(done_a["data"]["content"], "");
    assert_eq!(done_a["data"]["room_id"], "room-123");
    assert_eq!(done_a["data"]["model_used"], "gpt-4");
    assert!(done_a["data"]["tokens_used"].as_u64().unwrap() > 0);
    assert!(done_a["data"]["response_time"].is_number());
    assert!(done_a["data"]["message_id"].is_i64());
    // bob sees alice's message as a chat from user alice, then the reply.
    let m = until(&mut b, |v| {
        v["type"] == "chat" && v["data"]["role"] == "user"
    });
    assert_eq!(m["data"]["content"], "Hello, AI!");
    assert_eq!(m["data"]["user_id"], "alice");
    assert_eq!(m["data"]["room_id"], "room-123");
    let (text_b, _) = reply(&mut b);
    assert_eq!(text_a, text_b);
    // The native member saw the same message and reply in native form.
    let added = n.recv_type("message_added");
    assert_eq!(added["message"]["content"], "Hello, AI!");
    let done_n = n.recv_type("complete");
    assert_eq!(done_n["response"], text_a.as_str());

    // And the other way round: a native message reaches the seed sockets.
    n.send(json!({"type":"chat","room_id":"room-123","message":"from native","id":"n1"}));
    let m = until(&mut a, |v| {
        v["type"] == "chat" && v["data"]["role"] == "user"
    });
    assert_eq!(
        (m["data"]["content"].as_str(), m["data"]["user_id"].as_str()),
        (Some("from native"), Some("nina"))
    );

    // Resending the same message_id is idempotent: one confirmation marked duplicate.
    a.send(json!({"type":"chat","data":{"message":"Hello, AI!"},"room_id":"room-123","message_id":"msg-1"}));
    let dup = until(&mut a, |v| v["type"] == "delivery_confirmation");
    assert_eq!(dup["data"]["duplicate"], true);
    assert_eq!(
        dup["data"]["server_message_id"],
        dc["data"]["server_message_id"]
    );

    // Typing both ways in the envelope.
    b.send(json!({"type":"typing","data":{"is_typing":true,"room_id":"room-123"}}));
    let t = until(&mut a, |v| {
        v["type"] == "typing" && v["data"]["user_id"] == "bob"
    });
    assert_eq!(t["data"]["is_typing"], true);
    assert_eq!(t["data"]["room_id"], "room-123");
    assert!(t["data"]["username"].is_string());

    // Read receipts.
    b.send(json!({"type":"read","data":{"conversation_id":conv,"seq":1}}));
    let r = until(&mut a, |v| v["type"] == "read_receipt");
    assert_eq!(
        (r["data"]["user_id"].as_str(), r["data"]["seq"].as_i64()),
        (Some("bob"), Some(1))
    );

    // leave_room.
    b.send(json!({"type":"leave_room","data":{"room_id":"room-123"}}));
    let l = until(&mut b, |v| v["type"] == "leave_room");
    assert_eq!(l["data"]["room_id"], "room-123");
}

#[test]
fn numeric_conversation_ids_keep_a_conversation_and_errors_use_the_envelope() {
    let s = TestServer::start("c004b", |c| {
        c.compat.rooms_rate_max_messages = 12;
    });
    let mut a = seed_socket(&s, "alice", "");
    // Outside a room: one confirmation per chat, then the streamed reply.
    a.send(
        json!({"type":"chat","data":{"message":"first","conversation_id":123},"message_id":"m1"}),
    );
    let dc = until(&mut a, |v| v["type"] == "delivery_confirmation");
    assert_eq!(dc["data"]["message_id"], "m1");
    let conv = dc["data"]["conversation_id"].as_str().unwrap().to_string();
    let (_, done) = reply(&mut a);
    assert_eq!(done["data"]["conversation_id"], conv.as_str());
    // The same number continues it, on this socket and on another.
    a.send(
        json!({"type":"chat","data":{"message":"second","conversation_id":123},"message_id":"m2"}),
    );
    let dc2 = until(&mut a, |v| v["type"] == "delivery_confirmation");
    assert_eq!(dc2["data"]["conversation_id"], conv.as_str());
    reply(&mut a);
    let mut a2 = seed_socket(&s, "alice", "");
    a2.send(
        json!({"type":"chat","data":{"message":"third","conversation_id":123},"message_id":"m3"}),
    );
    let dc3 = until(&mut a2, |v| v["type"] == "delivery_confirmation");
    assert_eq!(dc3["data"]["conversation_id"], conv.as_str());
    // Another user's 123 is another conversation.
    let mut b = seed_socket(&s, "bob", "");
    b.send(
        json!({"type":"chat","data":{"message":"bob's","conversation_id":123},"message_id":"b1"}),
    );
    let dcb = until(&mut b, |v| v["type"] == "delivery_confirmation");
    assert_ne!(dcb["data"]["conversation_id"], conv.as_str());

    // Errors: the envelope, the client's message_id, the socket stays usable.
    b.send_text("{not json");
    let e = until(&mut b, |v| v["type"] == "error");
    assert_eq!(e["data"]["code"], "BAD_REQUEST");
    b.send(json!({"type":"chat","data":{"message":"  "},"message_id":"b2"}));
    let e = until(&mut b, |v| v["type"] == "error");
    assert_eq!(
        (e["data"]["code"].as_str(), e["data"]["message_id"].as_str()),
        (Some("EMPTY_MESSAGE"), Some("b2"))
    );
    b.send(json!({"type":"join_room","data":{"room_id":"someone-elses"}}));
    until(&mut b, |v| v["type"] == "join_room");
    // A room created by the seed's join is private by default: alice may not join it.
    a.send(json!({"type":"join_room","data":{"room_id":"someone-elses"}}));
    let e = until(&mut a, |v| v["type"] == "error");
    assert_eq!(e["data"]["code"], "FORBIDDEN");
    // A chat into a room not joined on this socket joins it first (the seed's example
    // sends room_id with no join); into a room it may not join, the chat is refused.
    a.send(json!({"type":"chat","data":{"message":"into a new room"},"room_id":"fresh","message_id":"m9"}));
    let j = until(&mut a, |v| v["type"] == "join_room");
    assert_eq!(j["data"]["room_id"], "fresh");
    let dc = until(&mut a, |v| v["type"] == "delivery_confirmation");
    assert_eq!(dc["data"]["message_id"], "m9");
    a.send(json!({"type":"chat","data":{"message":"let me in"},"room_id":"someone-elses","message_id":"m10"}));
    let e = until(&mut a, |v| v["type"] == "error");
    assert_eq!(
        (e["data"]["code"].as_str(), e["data"]["message_id"].as_str()),
        (Some("FORBIDDEN"), Some("m10"))
    );
    // The seed's rate limit (here 12 per window) with an integer retry_after.
    let mut limited = None;
    for i in 0..16 {
        b.send(json!({"type":"ping","message_id":format!("p{i}")}));
    }
    for _ in 0..1000 {
        let v = next(&mut b);
        if v["type"] == "error" && v["data"]["code"] == "RATE_LIMIT" {
            limited = Some(v);
            break;
        }
    }
    let limited = limited.expect("rate limited");
    assert!(limited["data"]["retry_after"].is_u64(), "{limited}");
}

#[test]
fn one_mib_chunks_upload_through_the_seed_socket() {
    let s = TestServer::start("c004c", |_| {});
    let mut a = seed_socket(&s, "alice", "");
    let data: Vec<u8> = (0..(1024 * 1024 + 5000))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let sha = sha_hex(&data);
    a.send(
        json!({"type":"file_upload","data":{"upload_type":"init","file_name":"report.pdf",
        "file_size":data.len(),"mime_type":"application/pdf"}}),
    );
    let init = until(&mut a, |v| {
        v["type"] == "file_upload" || v["type"] == "error"
    });
    assert_eq!(init["data"]["upload_type"], "init", "{init}");
    assert_eq!(init["data"]["max_chunk_bytes"], 1_048_576);
    let file_id = init["data"]["file_id"].as_str().unwrap().to_string();
    let b64 = base64::engine::general_purpose::STANDARD;
    for (i, chunk) in data.chunks(1_048_576).enumerate() {
        a.send(
            json!({"type":"file_upload","data":{"upload_type":"chunk","file_id":file_id,
            "chunk_index":i,"total_chunks":2,"chunk_data":b64.encode(chunk)}}),
        );
        let p = until(&mut a, |v| {
            v["type"] == "file_upload" || v["type"] == "error"
        });
        assert_eq!(p["data"]["upload_type"], "chunk", "{p}");
    }
    a.send(json!({"type":"file_upload","data":{"upload_type":"finalize","file_id":file_id,"checksum":sha}}));
    let done = until(&mut a, |v| {
        v["type"] == "file_upload" || v["type"] == "error"
    });
    assert_eq!(done["data"]["upload_type"], "complete", "{done}");
    assert_eq!(done["data"]["sha256"], sha.as_str());
    // Over the seed's chunk size: UPLOAD_TOO_LARGE, not a closed socket.
    a.send(
        json!({"type":"file_upload","data":{"upload_type":"init","file_name":"b.pdf",
        "file_size":3_000_000,"mime_type":"application/pdf"}}),
    );
    let init = until(&mut a, |v| v["type"] == "file_upload");
    let fid = init["data"]["file_id"].as_str().unwrap();
    let big = vec![1u8; 1_048_577];
    a.send(
        json!({"type":"file_upload","data":{"upload_type":"chunk","file_id":fid,
        "chunk_index":0,"total_chunks":3,"chunk_data":b64.encode(&big)}}),
    );
    let e = until(&mut a, |v| v["type"] == "error");
    assert_eq!(e["data"]["code"], "UPLOAD_TOO_LARGE");
    // The native socket keeps its own, smaller frames.
    let mut n = s.client("nina");
    n.send_text(&json!({"type":"ping","pad":"x".repeat(200_000)}).to_string());
    assert_eq!(n.expect_close(), 1009);
}

#[test]
fn the_seed_http_endpoints() {
    let s = TestServer::start("c004d", |_| {});
    let alice = s.token("alice");
    // Token exchange: Bearer required.
    let (st, v) = s.http("POST", "/api/v1/ws/token", Some(&alice), None);
    assert_eq!(st, 200, "{v}");
    assert!(v["token"].is_string());
    assert_eq!(v["expires_in"], s.ctx().cfg.auth.token_ttl_s);
    let (st, _) = s.http(
        "POST",
        "/api/v1/ws/token",
        None,
        Some(&json!({"sub":"eve"})),
    );
    assert_eq!(st, 401);
    // The exchanged token opens the socket.
    let mut c = Client::connect(&s.url(&format!(
        "/api/v1/ws/ws?token={}",
        v["token"].as_str().unwrap()
    )))
    .unwrap();
    assert_eq!(c.recv()["type"], "connect");
    // A bad token on the socket: HTTP 401 (the seed's "Connection Refused").
    let (st, _) = upgrade_status(&s.url("/api/v1/ws/ws?token=bad"));
    assert_eq!(st, 401);
    // Rooms: created private by default, shown with participants.
    let (st, room) = s.http(
        "POST",
        "/api/v1/ws/rooms",
        Some(&alice),
        Some(&json!({"room_id":"r-http","room_name":"HTTP room"})),
    );
    assert_eq!(st, 201, "{room}");
    assert_eq!(room["room_type"], "private");
    let (st, shown) = s.http("GET", "/api/v1/ws/rooms/r-http", Some(&alice), None);
    assert_eq!(st, 200, "{shown}");
    assert_eq!(shown["room_id"], "r-http");
    assert!(shown["participants"].is_array());
    let (st, _) = s.http(
        "GET",
        "/api/v1/ws/rooms/r-http",
        Some(&s.token("bob")),
        None,
    );
    assert_eq!(st, 403);
    // Stats: admin only.
    assert_eq!(s.http("GET", "/api/v1/ws/stats", None, None).0, 401);
    assert_eq!(s.http("GET", "/api/v1/ws/stats", Some(&alice), None).0, 403);
    let (st, stats) = s.http(
        "GET",
        "/api/v1/ws/stats",
        Some(&s.admin_token("root")),
        None,
    );
    assert_eq!(st, 200);
    assert!(stats["connections"].as_i64().unwrap() >= 1);
    // The prefixed form reaches the same endpoints.
    assert_eq!(
        s.http("GET", "/compat/004/api/v1/ws/stats", Some(&alice), None)
            .0,
        403
    );
    // Health stays native.
    assert_eq!(s.http("GET", "/health", None, None).0, 200);
}
