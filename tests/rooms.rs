//! Rooms across two shards: presence per user (not per tab), typing with expiry, fan-out
//! to every member connection exactly once, delivery confirmations, receipts, catch-up,
//! group membership, deletion, admin broadcast.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn join(c: &mut Client, room: &str, extra: Value) -> Value {
    let mut m = json!({"type": "join_room", "room_id": room, "id": format!("join-{room}")});
    if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    c.send(m);
    let j = c.recv_type("room_joined");
    c.recv_type("subscribed");
    j
}

/// Events of `ty` that arrive within `wait`.
fn drain(c: &mut Client, ty: &str, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = c.try_recv(wait) {
        if v["type"] == ty {
            out.push(v);
        }
    }
    out
}

#[test]
fn presence_is_per_user_not_per_tab() {
    let s = TestServer::start("presence", |c| c.server.shards = 2);
    let mut a1 = s.client("alice");
    let mut a2 = s.client("alice");
    let j = join(
        &mut a1,
        "lobby",
        json!({"room_name": "Lobby", "room_type": "shared"}),
    );
    assert_eq!(
        (j["room_name"].as_str(), j["room_type"].as_str()),
        (Some("Lobby"), Some("shared"))
    );
    join(&mut a2, "lobby", json!({}));
    let mut b1 = s.client("bob");
    let mut b2 = s.client("bob");
    let jb = join(&mut b1, "lobby", json!({}));
    let online: Vec<&str> = jb["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap())
        .collect();
    assert!(
        online.contains(&"alice") && online.contains(&"bob"),
        "{online:?}"
    );
    for a in [&mut a1, &mut a2] {
        let p = a.recv_type("presence");
        assert_eq!(
            (
                p["user_id"].as_str(),
                p["status"].as_str(),
                p["username"].as_str()
            ),
            (Some("bob"), Some("joined"), Some("User bob"))
        );
    }
    // Bob's second tab: no new presence. Bob's first tab leaves: still none.
    join(&mut b2, "lobby", json!({}));
    b1.send(json!({"type": "leave_room", "room_id": "lobby"}));
    assert_eq!(b1.recv_type("room_left")["room_id"], "lobby");
    assert!(drain(&mut a1, "presence", Duration::from_millis(300)).is_empty());
    // Bob's last connection goes away: left, once per alice tab.
    drop(b2);
    for a in [&mut a1, &mut a2] {
        let p = a.recv_type("presence");
        assert_eq!(
            (p["user_id"].as_str(), p["status"].as_str()),
            (Some("bob"), Some("left"))
        );
    }
    assert!(drain(&mut a2, "presence", Duration::from_millis(200)).is_empty());
}

/// The next event of `ty`, and whether a `presence` event came before it.
fn recv_after_presence(c: &mut Client, ty: &str) -> (Value, bool) {
    c.seen.clear();
    let v = c.recv_type(ty);
    (v, c.seen.iter().any(|e| e["type"] == "presence"))
}

/// The `presence_list` events among what `c` read before its last `recv_type`.
fn lists_seen(c: &Client) -> Vec<&Value> {
    c.seen
        .iter()
        .filter(|e| e["type"] == "presence_list")
        .collect()
}

#[test]
fn a_room_past_presence_max_users_resyncs_once_shows_a_sample_and_the_count_and_announces_no_one() {
    let s = TestServer::start("presence-max", |c| c.rooms.presence_max_users = 2);
    let mut a = s.client("ann");
    join(&mut a, "big", json!({}));
    let mut b = s.client("bea");
    let jb = join(&mut b, "big", json!({}));
    assert_eq!(jb["participants"].as_array().unwrap().len(), 2);
    assert_eq!(jb["participant_count"], 2);
    // The second user is within the limit: announced.
    let p = a.recv_type("presence");
    assert_eq!(
        (p["user_id"].as_str(), p["status"].as_str()),
        (Some("bea"), Some("joined"))
    );

    // The third takes the room past it: no `presence`, but once, everyone's view is
    // replaced by two of the three and the count; cid is shown the same.
    let mut c = s.client("cid");
    let jc = join(&mut c, "big", json!({}));
    assert_eq!(jc["participants"].as_array().unwrap().len(), 2, "{jc}");
    assert_eq!(jc["participant_count"], 3);
    c.send(json!({"type": "chat", "room_id": "big", "message": "hello", "id": "c1"}));
    c.recv_type("ack");
    let (m, announced) = recv_after_presence(&mut a, "message_added");
    assert_eq!(m["message"]["content"], "hello");
    assert!(!announced, "cid's join was announced: {:?}", a.seen);
    let lists = lists_seen(&a);
    assert_eq!(lists.len(), 1, "{:?}", a.seen);
    assert_eq!(
        (
            lists[0]["online_count"].as_u64(),
            lists[0]["online"].as_array().map(Vec::len)
        ),
        (Some(3), Some(2))
    );
    // HTTP lists everyone.
    let (code, room) = s.http("GET", "/v1/rooms/big", Some(&s.token("ann")), None);
    assert_eq!(code, 200, "{room}");
    assert_eq!(
        (
            room["online_count"].as_u64(),
            room["online"].as_array().map(Vec::len)
        ),
        (Some(3), Some(3))
    );

    // cid leaves (two left: still large, nothing said); bea leaves (one left: half the
    // limit, small again): ann gets the whole list, then joins are announced again.
    c.send(json!({"type": "leave_room", "room_id": "big"}));
    c.recv_type("room_left");
    b.send(json!({"type": "leave_room", "room_id": "big"}));
    b.recv_type("room_left");
    a.seen.clear();
    let list = a.recv_type("presence_list");
    assert_eq!(list["online_count"], 1, "{list}");
    assert_eq!(list["online"][0]["user_id"], "ann", "{list}");
    assert!(
        a.seen.iter().all(|e| e["type"] != "presence"),
        "{:?}",
        a.seen
    );
    let mut d = s.client("dan");
    join(&mut d, "big", json!({}));
    let p = a.recv_type("presence");
    assert_eq!(
        (p["user_id"].as_str(), p["status"].as_str()),
        (Some("dan"), Some("joined"))
    );
}

#[test]
fn typing_reaches_the_others_only_and_expires() {
    let s = TestServer::start("typing", |c| {
        c.rooms.typing_timeout = Duration::from_millis(300)
    });
    let mut a = s.client("tara");
    let mut b = s.client("ben");
    join(&mut a, "t", json!({}));
    join(&mut b, "t", json!({}));
    a.recv_type("presence");
    a.send(json!({"type": "typing", "room_id": "t", "is_typing": true}));
    let t = b.recv_type("typing");
    assert_eq!(
        (
            t["user_id"].as_str(),
            t["is_typing"].as_bool(),
            t["room_id"].as_str()
        ),
        (Some("tara"), Some(true), Some("t"))
    );
    let t = b.recv_type("typing");
    assert_eq!(t["is_typing"], false, "expired without a refresh");
    assert!(
        drain(&mut a, "typing", Duration::from_millis(200)).is_empty(),
        "no echo to the typist"
    );
    // Typing where you are not is refused.
    a.send(json!({"type": "typing", "room_id": "elsewhere", "is_typing": true}));
    assert_eq!(a.recv_type("error")["code"], "FORBIDDEN");
}

#[test]
fn room_chat_reaches_every_member_connection_exactly_once_with_a_delivery_count() {
    let s = TestServer::start("fanout", |c| c.server.shards = 2);
    let users = ["u1", "u1", "u2", "u2", "u3", "u3"];
    let mut cs: Vec<Client> = users.iter().map(|u| s.client(u)).collect();
    for c in cs.iter_mut() {
        join(c, "hall", json!({}));
    }
    // Let presence settle, then clear what was seen.
    std::thread::sleep(Duration::from_millis(200));
    for c in cs.iter_mut() {
        while c.try_recv(Duration::from_millis(50)).is_some() {}
    }
    cs[0].send(json!({"type": "chat", "id": "hi", "room_id": "hall", "message": "hello hall"}));
    let ack = cs[0].recv_type("ack");
    let dc = cs[0].recv_type("delivery_confirmation");
    assert_eq!(
        (
            dc["message_id"].clone(),
            dc["recipients"].as_u64(),
            dc["status"].as_str()
        ),
        (ack["message_id"].clone(), Some(5), Some("delivered"))
    );
    for (i, c) in cs.iter_mut().enumerate().skip(1) {
        let got = drain(c, "message_added", Duration::from_millis(300));
        assert_eq!(got.len(), 1, "connection {i}");
        assert_eq!(
            (
                got[0]["message"]["content"].as_str(),
                got[0]["room_id"].as_str()
            ),
            (Some("hello hall"), Some("hall"))
        );
    }
    assert!(drain(&mut cs[0], "message_added", Duration::from_millis(200)).is_empty());
    // In a room the AI answers only when asked, and then to everyone.
    cs[2].send(
        json!({"type": "chat", "id": "ai", "room_id": "hall", "message": "bot?", "ai": true}),
    );
    for c in cs.iter_mut() {
        let done = c.recv_type("complete");
        assert!(done["response"].as_str().unwrap().contains("demo model"));
    }
}

#[test]
fn read_receipts_move_forward_only_and_reach_the_other_members() {
    let s = TestServer::start("receipts", |_| {});
    let mut a = s.client("ria");
    let mut b = s.client("rob");
    let conv = join(&mut a, "r", json!({}))["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    join(&mut b, "r", json!({}));
    for i in 0..3 {
        a.send(json!({"type": "chat", "id": i.to_string(), "room_id": "r", "message": format!("m{i}")}));
        a.recv_type("ack");
    }
    b.send(json!({"type": "read", "conversation_id": conv, "seq": 2}));
    let r = a.recv_type("receipt");
    assert_eq!(
        (r["user_id"].as_str(), r["seq"].as_i64()),
        (Some("rob"), Some(2))
    );
    assert!(r["read_at"].is_string());
    b.send(json!({"type": "read", "conversation_id": conv, "seq": 1}));
    assert_eq!(a.recv_type("receipt")["seq"], 2, "never back");
    b.send(json!({"type": "read", "conversation_id": conv, "seq": 99}));
    assert_eq!(
        a.recv_type("receipt")["seq"],
        3,
        "never past the last message"
    );
    // Same marker on Rob's other device.
    let b2 = s.client("rob");
    let (_, list) = s.http("GET", "/v1/conversations", Some(&s.token("rob")), None);
    assert_eq!(list["conversations"][0]["unread"], 0);
    drop(b2);
    let mut outsider = s.client("olaf");
    outsider.send(json!({"type": "read", "conversation_id": conv, "seq": 1}));
    assert_eq!(outsider.recv_type("error")["code"], "FORBIDDEN");
}

#[test]
fn an_offline_member_sees_unread_counts_on_connect_and_catches_up_on_join() {
    let s = TestServer::start("catchup", |c| c.server.shards = 2);
    let mut a = s.client("cat");
    let mut b = s.client("dan");
    join(&mut a, "c", json!({}));
    let jb = join(&mut b, "c", json!({}));
    let seen_seq = jb["last_seq"].as_i64().unwrap();
    drop(b);
    for i in 0..3 {
        a.send(json!({"type": "chat", "id": i.to_string(), "room_id": "c", "message": format!("while away {i}")}));
        a.recv_type("ack");
    }
    let mut b = Client::connect(&s.url(&format!("/v1/ws?token={}", s.token("dan")))).unwrap();
    let connected = b.recv_type("connected");
    let room = &connected["rooms"][0];
    assert_eq!(
        (
            room["room_id"].as_str(),
            room["last_seq"].as_i64(),
            room["unread"].as_i64()
        ),
        (Some("c"), Some(3), Some(3))
    );
    b.send(json!({"type": "join_room", "room_id": "c", "after_seq": seen_seq}));
    b.recv_type("room_joined");
    let mut missed = Vec::new();
    loop {
        let ev = b.recv();
        match ev["type"].as_str().unwrap() {
            "message_added" => missed.push(ev["message"]["content"].as_str().unwrap().to_string()),
            "subscribed" => break,
            _ => {}
        }
    }
    assert_eq!(missed, ["while away 0", "while away 1", "while away 2"]);
}

#[test]
fn group_membership_is_enforced_and_the_owner_manages_it() {
    let s = TestServer::start("group", |_| {});
    let owner = s.token("gina");
    let (st, room) = s.http("POST", "/v1/rooms", Some(&owner), Some(&json!({"room_id": "g1", "room_name": "Team", "room_type": "group", "members": ["hank"]})));
    assert_eq!(st, 201, "{room}");
    assert_eq!(room["members"], json!(["gina", "hank"]));
    let (st, _) = s.http(
        "POST",
        "/v1/rooms",
        Some(&owner),
        Some(&json!({"room_id": "g1"})),
    );
    assert_eq!(st, 400, "duplicate room id");
    let mut carol = s.client("carol");
    carol.send(json!({"type": "join_room", "room_id": "g1"}));
    assert_eq!(carol.recv_type("error")["code"], "FORBIDDEN");
    carol.send(json!({"type": "chat", "room_id": "g1", "message": "let me in"}));
    assert_eq!(carol.recv_type("error")["code"], "FORBIDDEN");
    let (st, _) = s.http("GET", "/v1/rooms/g1", Some(&s.token("carol")), None);
    assert_eq!(st, 403);
    let (st, _) = s.http(
        "POST",
        "/v1/rooms/g1/members",
        Some(&s.token("carol")),
        Some(&json!({"user_id": "carol"})),
    );
    assert_eq!(st, 403, "only the owner adds members");
    let mut hank = s.client("hank");
    join(&mut hank, "g1", json!({}));
    let (st, info) = s.http("GET", "/v1/rooms/g1", Some(&owner), None);
    assert_eq!(st, 200);
    assert_eq!(
        info["online"],
        json!([{"user_id": "hank", "username": "User hank"}])
    );
    assert_eq!(info["members"].as_array().unwrap().len(), 2);
    let (st, _) = s.http(
        "POST",
        "/v1/rooms/g1/members",
        Some(&owner),
        Some(&json!({"user_id": "carol"})),
    );
    assert_eq!(st, 200);
    join(&mut carol, "g1", json!({}));
    // Removing Hank takes him out of the room on his live connection too.
    let (st, _) = s.http("DELETE", "/v1/rooms/g1/members/hank", Some(&owner), None);
    assert_eq!(st, 200);
    let left = hank.recv_type("room_left");
    assert_eq!(left["reason"], "removed");
    // A private room is the creator's alone.
    let mut p = s.client("pia");
    join(&mut p, "pia-notes", json!({"room_type": "private"}));
    let mut q = s.client("quin");
    q.send(json!({"type": "join_room", "room_id": "pia-notes"}));
    assert_eq!(q.recv_type("error")["code"], "FORBIDDEN");
}

#[test]
fn deleting_a_room_tells_its_members_and_closes_it() {
    let s = TestServer::start("delete-room", |c| c.server.shards = 2);
    let mut a = s.client("dora");
    let mut b = s.client("eli");
    join(&mut a, "gone", json!({}));
    join(&mut b, "gone", json!({}));
    let (st, _) = s.http("DELETE", "/v1/rooms/gone", Some(&s.token("eli")), None);
    assert_eq!(st, 403, "not the owner");
    let (st, _) = s.http("DELETE", "/v1/rooms/gone", Some(&s.token("dora")), None);
    assert_eq!(st, 200);
    for c in [&mut a, &mut b] {
        let l = c.recv_type("room_left");
        assert_eq!(
            (l["room_id"].as_str(), l["reason"].as_str()),
            (Some("gone"), Some("deleted"))
        );
    }
    b.send(json!({"type": "chat", "room_id": "gone", "message": "hello?"}));
    assert_eq!(b.recv_type("error")["code"], "FORBIDDEN");
    let (st, _) = s.http("GET", "/v1/rooms/gone", Some(&s.token("dora")), None);
    assert_eq!(st, 404);
}

#[test]
fn an_admin_broadcast_reaches_a_room_or_everyone() {
    let s = TestServer::start("broadcast", |c| c.server.shards = 2);
    let mut a = s.client("x1");
    let mut b = s.client("x2");
    join(&mut a, "news", json!({}));
    let (st, _) = s.http(
        "POST",
        "/v1/broadcast",
        Some(&s.token("x1")),
        Some(&json!({"message": "hi"})),
    );
    assert_eq!(st, 403);
    let admin = s.admin_token("root");
    let (st, r) = s.http(
        "POST",
        "/v1/broadcast",
        Some(&admin),
        Some(&json!({"message": "room only", "room_id": "news"})),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(a.recv_type("system")["message"], "room only");
    let (st, _) = s.http(
        "POST",
        "/v1/broadcast",
        Some(&admin),
        Some(&json!({"message": "everyone"})),
    );
    assert_eq!(st, 200);
    assert_eq!(a.recv_type("system")["message"], "everyone");
    let sys = b.recv_type("system");
    assert_eq!(
        (sys["message"].as_str(), sys["from"].as_str()),
        (Some("everyone"), Some("root"))
    );
    assert!(
        drain(&mut b, "system", Duration::from_millis(200)).is_empty(),
        "x2 is not in the room"
    );
}

#[test]
fn a_room_created_with_ai_answers_every_message() {
    let s = TestServer::start("ai-room", |_| {});
    let (st, _) = s.http(
        "POST",
        "/v1/rooms",
        Some(&s.token("ada")),
        Some(&json!({"room_id": "bot", "ai": true})),
    );
    assert_eq!(st, 201);
    let mut a = s.client("ada");
    join(&mut a, "bot", json!({}));
    a.send(json!({"type": "chat", "id": "q", "room_id": "bot", "message": "anyone?"}));
    assert!(a.recv_type("complete")["response"]
        .as_str()
        .unwrap()
        .contains("anyone?"));
    // ai:false still wins.
    a.send(json!({"type": "chat", "id": "q2", "room_id": "bot", "message": "quiet", "ai": false}));
    a.recv_type("ack");
    assert!(drain(&mut a, "progress", Duration::from_millis(300)).is_empty());
}

#[test]
fn auto_join_on_connect_via_query() {
    let s = TestServer::start("auto-join", |_| {});
    let mut c = Client::connect(&s.url(&format!(
        "/v1/ws?token={}&room_id=auto&room_name=Auto%20Room&room_type=shared",
        s.token("zed")
    )))
    .unwrap();
    c.recv_type("connected");
    let j = c.recv_type("room_joined");
    assert_eq!(
        (j["room_id"].as_str(), j["room_name"].as_str()),
        (Some("auto"), Some("Auto Room"))
    );
}

#[test]
fn a_refused_write_does_not_keep_the_writer_from_recording_the_user() {
    // The writer caches which users it has written; a job rolled back by its savepoint
    // (here: a chat into someone else's conversation) must not leave its user cached,
    // or that user's row (and name) is never written.
    let s = TestServer::start("users-rollback", |_| {});
    let mut alice = s.client("alice");
    alice.send(json!({"type": "chat", "id": "a1", "message": "mine", "ai": false}));
    let conv = alice.recv_type("ack")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bob = s.client("bob");
    bob.send(json!({"type": "chat", "id": "b1", "conversation_id": conv, "message": "x"}));
    assert_eq!(bob.recv_type("error")["code"], "FORBIDDEN");
    join(&mut bob, "lobby", json!({}));
    let (st, room) = s.http("GET", "/v1/rooms/lobby", Some(&s.token("bob")), None);
    assert_eq!(st, 200, "{room}");
    let bob_entry = room["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == "bob" || m["id"] == "bob")
        .cloned()
        .unwrap_or_else(|| panic!("bob not a member: {room}"));
    assert!(bob_entry.to_string().contains("User bob"), "{bob_entry}");
}

#[test]
fn auto_join_is_never_lost_when_the_read_queue_is_full() {
    use std::io::{Read, Write};
    // One reader with a one-slot queue, and 60 upgrades with ?room_id= arriving at once:
    // most `connected` room-list reads are refused, and every auto-join must still be
    // answered (room_joined, or an error the client can act on).
    let s = TestServer::start("autojoin-busy", |c| {
        c.store.read_workers = 1;
        c.store.read_queue = 1;
        c.server.max_connections_per_user = 1000;
    });
    let tok = s.token("crowd");
    let mut socks = Vec::new();
    for i in 0..60 {
        let mut sock = std::net::TcpStream::connect(s.addr).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        let req = format!(
            "GET /v1/ws?token={tok}&room_id=hall HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            s.addr
        );
        sock.write_all(req.as_bytes()).unwrap();
        socks.push((i, sock));
    }
    for (i, mut sock) in socks {
        // The 101 head, byte by byte so no frame is swallowed.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(sock.read(&mut b).unwrap(), 1, "connection {i} closed");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let ws = tungstenite::WebSocket::from_raw_socket(
            sock,
            tungstenite::protocol::Role::Client,
            None,
        );
        let mut c = Client {
            ws,
            seen: Vec::new(),
        };
        let answer = loop {
            let ev = c.recv();
            if ev["type"] == "room_joined" || ev["type"] == "error" {
                break ev;
            }
        };
        if answer["type"] == "error" {
            assert_eq!(answer["code"], "BUSY", "connection {i}: {answer}");
        }
    }
}

#[test]
fn presence_that_contradicts_the_current_state_is_not_delivered_and_lost_presence_is_resynced() {
    use confab::protocol::Event;
    use confab::topic::{topic_event, TopicKind};
    use std::sync::Arc;
    let s = TestServer::start("presence-truth", |_| {});
    let mut a = s.client("alice");
    let j = join(&mut a, "truth", json!({}));
    let conv: Arc<str> = Arc::from(j["conversation_id"].as_str().unwrap());
    let mut b = s.client("bob");
    join(&mut b, "truth", json!({}));
    assert_eq!(a.recv_type("presence")["user_id"], "bob");
    let net = &s.ctx().net;
    let presence = |user: &str, status: &'static str| {
        topic_event(
            &conv,
            TopicKind::Ephemeral,
            Event::Presence {
                room_id: "truth".into(),
                user_id: user.into(),
                username: user.into(),
                status,
            },
        )
    };
    // Arriving late (published before a newer state of the same user): not delivered.
    net.try_publish(presence("ghost", "joined"));
    net.try_publish(presence("bob", "left"));
    // One that agrees with the state is.
    net.try_publish(presence("bob", "joined"));
    let p = a.recv_type("presence");
    assert_eq!(
        (p["user_id"].as_str(), p["status"].as_str()),
        (Some("bob"), Some("joined"))
    );
    assert!(
        a.seen.iter().all(|v| v["type"] != "presence"),
        "{:?}",
        a.seen
    );

    // An event dropped on a full inbox is followed by the room's full list.
    for shard in 0..net.shards.len() {
        net.shards.note_missed(shard, &conv);
    }
    let list = a.recv_type("presence_list");
    assert_eq!(list["room_id"], "truth");
    let mut online: Vec<&str> = list["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap())
        .collect();
    online.sort();
    assert_eq!(online, ["alice", "bob"]);
    assert_eq!(b.recv_type("presence_list")["room_id"], "truth");
}
