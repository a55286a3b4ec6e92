//! Cluster mode: several confab nodes on one real PostgreSQL and one real nats-server
//! (started by the harness on free ports). Run with `cargo test --features cluster`;
//! skipped with a notice when the servers are not installed.
#![cfg(feature = "cluster")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/cluster.rs"]
mod harness;

use std::time::Duration;

use common::Client;
use harness::{chat, drain, join, node_with, two_nodes, Nats, Postgres};
use serde_json::{json, Value};

#[test]
fn two_nodes_share_conversations_history_and_seq() {
    let Some((_pg, _nats, a, b)) = two_nodes() else {
        return;
    };

    // A conversation started on A, with its AI reply…
    let mut ca = a.client("ann");
    let ack = chat(&mut ca, json!({"id": "m1", "message": "hello"}));
    let conv = ack["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(ack["seq"], 1);
    let done = ca.recv_type("complete");
    assert!(!done["response"].as_str().unwrap().is_empty());

    // …continues on B: seq goes on from PostgreSQL's counter, not a node's own.
    let mut cb = b.client("ann");
    let ack = chat(
        &mut cb,
        json!({"id": "m2", "conversation_id": conv, "message": "again"}),
    );
    assert_eq!(ack["seq"], 3);
    cb.recv_type("complete");

    // Either node lists it and pages its history: four messages, dense seq.
    let tok = b.token("ann");
    for n in [&a, &b] {
        let (st, hist) = n.http(
            "GET",
            &format!("/v1/conversations/{conv}/messages"),
            Some(&tok),
            None,
        );
        assert_eq!(st, 200, "{hist}");
        let seqs: Vec<i64> = hist["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        let (st, list) = n.http("GET", "/v1/conversations", Some(&tok), None);
        assert_eq!(st, 200);
        assert_eq!(list["conversations"][0]["id"], conv.as_str());
    }
    // Another user may not read it on either node.
    let (st, _) = a.http(
        "GET",
        &format!("/v1/conversations/{conv}/messages"),
        Some(&a.token("bob")),
        None,
    );
    assert_eq!(st, 403);
}

#[test]
fn a_chat_retried_on_another_node_is_acked_once() {
    let Some((pg, _nats, a, b)) = two_nodes() else {
        return;
    };
    let mut ca = a.client("cat");
    let first = chat(&mut ca, json!({"id": "same", "message": "once"}));
    let conv = first["conversation_id"].as_str().unwrap();
    // The same client id on B (a reconnect elsewhere): the original ack, no new row.
    let mut cb = b.client("cat");
    let again = chat(
        &mut cb,
        json!({"id": "same", "conversation_id": conv, "message": "once"}),
    );
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["duplicate"], true);

    // Both nodes at once with a fresh id: one message, both acks name it.
    let mut ca2 = a.client("cat");
    let mut cb2 = b.client("cat");
    let race = json!({"type": "chat", "id": "race", "conversation_id": conv, "message": "x"});
    ca2.send(race.clone());
    cb2.send(race);
    let (x, y) = (ca2.recv_type("ack"), cb2.recv_type("ack"));
    assert_eq!(x["message_id"], y["message_id"]);
    assert_eq!(
        [&x["duplicate"], &y["duplicate"]]
            .iter()
            .filter(|d| **d == &json!(true))
            .count(),
        1,
        "{x} {y}"
    );
    assert_eq!(
        pg.query("SELECT COUNT(*) FROM messages WHERE client_id = 'race'"),
        "1"
    );
}

#[test]
fn a_room_with_members_on_two_nodes_gets_messages_streams_typing_and_receipts() {
    let Some((_pg, _nats, a, b)) = two_nodes() else {
        return;
    };
    let mut ann = a.client("ann");
    let mut bob = b.client("bob");
    let conv = join(&mut ann, "hall")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    join(&mut bob, "hall");
    std::thread::sleep(Duration::from_millis(300));
    while ann.try_recv(Duration::from_millis(50)).is_some() {}
    while bob.try_recv(Duration::from_millis(50)).is_some() {}

    // Messages both ways, in seq order, exactly once.
    let mut seen: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    let added = |v: &Value| v["message"]["seq"].as_i64().unwrap();
    for i in 0..10 {
        let (from, to, id) = if i % 2 == 0 {
            (&mut ann, 0, format!("a{i}"))
        } else {
            (&mut bob, 1, format!("b{i}"))
        };
        from.send(json!({"type": "chat", "id": id, "room_id": "hall", "message": format!("m{i}")}));
        loop {
            let ev = from.recv();
            match ev["type"].as_str() {
                Some("delivery_confirmation") => {
                    assert_eq!(ev["recipients"], 1, "the member on the other node counts")
                }
                Some("ack") => break,
                Some("message_added") => seen[to].push(added(&ev)),
                _ => {}
            }
        }
    }
    for (i, c) in [&mut ann, &mut bob].into_iter().enumerate() {
        seen[i].extend(
            drain(c, "message_added", Duration::from_millis(500))
                .iter()
                .map(added),
        );
        // Each sees the other's five, ascending, none twice.
        assert_eq!(seen[i].len(), 5, "{:?}", seen[i]);
        assert!(seen[i].windows(2).all(|w| w[0] < w[1]), "{:?}", seen[i]);
    }

    // An AI reply running on A streams to Bob on B: tokens, then complete with the text.
    ann.send(json!({"type": "chat", "id": "ai", "room_id": "hall", "message": "bot?", "ai": true}));
    ann.recv_type("ack");
    let mut streamed = String::new();
    let done = loop {
        let ev = bob.recv();
        match ev["type"].as_str().unwrap() {
            "token" => streamed.push_str(ev["token"].as_str().unwrap()),
            "complete" => break ev,
            _ => {}
        }
    };
    assert!(!streamed.is_empty());
    assert_eq!(done["response"].as_str().unwrap(), streamed);
    ann.recv_type("complete");

    // Typing and read receipts cross too.
    bob.send(json!({"type": "typing", "room_id": "hall", "is_typing": true}));
    let t = loop {
        let t = ann.recv_type("typing");
        if t["user_id"] == "bob" {
            break t;
        }
    };
    assert_eq!(t["is_typing"], true);
    bob.send(json!({"type": "read", "conversation_id": conv, "seq": 3}));
    let r = ann.recv_type("receipt");
    assert_eq!(
        (r["user_id"].as_str(), r["seq"].as_i64()),
        (Some("bob"), Some(3))
    );
}

#[test]
fn presence_is_per_user_across_nodes_one_joined_one_left() {
    let Some((_pg, _nats, a, b)) = two_nodes() else {
        return;
    };
    let mut obs = a.client("obs");
    join(&mut obs, "p");
    let presence = |c: &mut Client| drain(c, "presence", Duration::from_millis(400));
    // Directories converge within a heartbeat (a delta sent before B's bus subscribed
    // is recovered from A's next heartbeat: version ahead → full copy).
    std::thread::sleep(Duration::from_millis(600));

    // Ann's first tab, on B: the observer on A hears `joined` once.
    let mut tab1 = b.client("ann");
    let j = join(&mut tab1, "p");
    let names: Vec<&str> = j["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"obs"), "B lists A's users: {j}");
    let got = presence(&mut obs);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0]["user_id"].as_str(), got[0]["status"].as_str()),
        (Some("ann"), Some("joined"))
    );

    // Her second tab, on A: no second `joined`.
    let mut tab2 = a.client("ann");
    join(&mut tab2, "p");
    assert!(presence(&mut obs).is_empty());

    // The tab on B goes: she is still online (on A), so no `left`.
    tab1.send(json!({"type": "leave_room", "room_id": "p"}));
    tab1.recv_type("room_left");
    assert!(presence(&mut obs).is_empty());
    // The last one goes: `left`, once.
    drop(tab2);
    let got = presence(&mut obs);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["status"], "left");

    // Bob on B, then his node shuts down: A's observer hears him leave.
    let mut bob = b.client("bob");
    join(&mut bob, "p");
    assert_eq!(presence(&mut obs).len(), 1);
    drop(bob);
    drop(tab1);
    drop(b);
    let got = drain(&mut obs, "presence", Duration::from_millis(1500));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0]["user_id"].as_str(), got[0]["status"].as_str()),
        (Some("bob"), Some("left"))
    );
}

#[test]
fn a_room_past_presence_max_users_resyncs_once_and_announces_no_one_across_nodes() {
    if !harness::available() {
        return;
    }
    let (pg, nats) = (Postgres::start(), Nats::start());
    let small = |c: &mut confab::Config| c.rooms.presence_max_users = 2;
    let a = node_with(&pg, &nats, "a", small);
    let b = node_with(&pg, &nats, "b", small);
    let mut obs = a.client("obs");
    join(&mut obs, "big");
    std::thread::sleep(Duration::from_millis(600));
    // The second user (on B) is within the limit: A's observer hears her.
    let mut ann = b.client("ann");
    join(&mut ann, "big");
    let got = drain(&mut obs, "presence", Duration::from_millis(400));
    assert_eq!(got.len(), 1, "{got:?}");
    // The third (on B) is past it: shown two of three, and no one hears of him.
    let mut cid = b.client("cid");
    let j = join(&mut cid, "big");
    assert_eq!(
        (
            j["participants"].as_array().map(Vec::len),
            j["participant_count"].as_u64()
        ),
        (Some(2), Some(3)),
        "{j}"
    );
    // A's observer: no `presence`, one `presence_list` (the room became large).
    let mut seen = Vec::new();
    while let Some(v) = obs.try_recv(Duration::from_millis(600)) {
        seen.push(v);
    }
    assert!(seen.iter().all(|e| e["type"] != "presence"), "{seen:?}");
    let lists: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "presence_list")
        .collect();
    assert_eq!(lists.len(), 1, "{seen:?}");
    assert_eq!(lists[0]["online_count"], 3, "{seen:?}");
    assert!(drain(&mut ann, "presence", Duration::from_millis(100)).is_empty());
}

#[test]
fn a_reply_running_on_one_node_is_resumed_and_stopped_from_another() {
    if !harness::available() {
        return;
    }
    let (pg, nats) = (Postgres::start(), Nats::start());
    let slow = |c: &mut confab::Config| c.llm.demo_tokens_per_s = 40.0;
    let a = node_with(&pg, &nats, "a", slow);
    let b = node_with(&pg, &nats, "b", slow);
    let mut dev1 = a.client("eve");
    dev1.send(json!({"type": "chat", "id": "q", "message": "tell me"}));
    let conv = dev1.recv_type("ack")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..5 {
        dev1.recv_type("token");
    }
    // Her other device, on B, resumes mid-reply: the text so far (taken by A), then
    // the tokens after it — no gap, no duplicate.
    let mut dev2 = b.client("eve");
    dev2.send(json!({"type": "subscribe", "conversation_id": conv, "after_seq": 0}));
    let mut text = String::new();
    let mut next: Option<u64> = None;
    let mut tokens = 0;
    let done = loop {
        let ev = dev2.recv();
        match ev["type"].as_str().unwrap() {
            "message_added" if ev["message"]["role"] == "assistant" => {
                assert_eq!(ev["message"]["status"], "streaming");
                text = ev["message"]["content"].as_str().unwrap().to_string();
                assert!(!text.is_empty(), "five tokens were already generated on A");
            }
            "token" => {
                let i = ev["index"].as_u64().unwrap();
                if let Some(n) = next {
                    assert_eq!(i, n, "no gap, no duplicate");
                }
                next = Some(i + ev["count"].as_u64().unwrap_or(1));
                text.push_str(ev["token"].as_str().unwrap());
                tokens += 1;
                if tokens == 3 {
                    // …and stops it from B: A cancels it.
                    dev2.send(json!({"type": "stop", "conversation_id": conv}));
                }
            }
            "complete" => break ev,
            _ => {}
        }
    };
    assert_eq!(done["finish_reason"], "cancelled");
    assert_eq!(text, done["response"].as_str().unwrap());
    assert_eq!(dev1.recv_type("complete")["finish_reason"], "cancelled");
    // Nothing runs any more: NOT_FOUND, from either node.
    dev2.send(json!({"type": "stop", "conversation_id": conv, "id": "s2"}));
    let e = dev2.recv_type("error");
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("NOT_FOUND"), Some("s2"))
    );
}

#[test]
fn an_admin_broadcast_on_one_node_reaches_connections_on_another() {
    let Some((_pg, _nats, a, b)) = two_nodes() else {
        return;
    };
    let mut bob = b.client("bob");
    let mut cy = b.client("cy");
    let admin = a.admin_token("root");
    let (st, _) = a.http(
        "POST",
        "/v1/broadcast",
        Some(&admin),
        Some(&json!({"message": "maintenance at noon"})),
    );
    assert_eq!(st, 200);
    for c in [&mut bob, &mut cy] {
        assert_eq!(c.recv_type("system")["message"], "maintenance at noon");
    }
    let (st, _) = a.http(
        "POST",
        "/v1/broadcast",
        Some(&admin),
        Some(&json!({"message": "just you", "user_ids": ["bob"]})),
    );
    assert_eq!(st, 200);
    assert_eq!(bob.recv_type("system")["message"], "just you");
    assert!(drain(&mut cy, "system", Duration::from_millis(300)).is_empty());
}

#[test]
fn the_same_new_room_joined_on_two_nodes_at_once_is_one_room() {
    let Some((pg, _nats, a, b)) = two_nodes() else {
        return;
    };
    let mut ann = a.client("ann");
    let mut bob = b.client("bob");
    for i in 0..10 {
        let room = format!("race{i}");
        let m = json!({"type": "join_room", "room_id": room});
        ann.send(m.clone());
        bob.send(m);
        let answer = |c: &mut Client| loop {
            let v = c.recv();
            if v["type"] == "room_joined" || v["type"] == "error" {
                break v;
            }
        };
        let (x, y) = (answer(&mut ann), answer(&mut bob));
        assert_eq!(
            x["conversation_id"], y["conversation_id"],
            "{room}: {x} {y}"
        );
    }
    assert_eq!(
        pg.query("SELECT COUNT(*) FROM conversations WHERE room_id LIKE 'race%'"),
        "10"
    );
}

#[test]
fn room_and_conversation_changes_on_one_node_reach_connections_on_another() {
    let Some((_pg, _nats, a, b)) = two_nodes() else {
        return;
    };
    let owner = a.token("olga");
    let (st, _) = a.http(
        "POST",
        "/v1/rooms",
        Some(&owner),
        Some(&json!({"room_id": "g", "room_name": "Team", "room_type": "group", "members": ["hank", "ivy"]})),
    );
    assert_eq!(st, 201);
    let mut hank = b.client("hank");
    let mut ivy = b.client("ivy");
    join(&mut hank, "g");
    join(&mut ivy, "g");
    // Removed on A: Hank's connection on B leaves the room.
    let (st, _) = a.http("DELETE", "/v1/rooms/g/members/hank", Some(&owner), None);
    assert_eq!(st, 200);
    assert_eq!(hank.recv_type("room_left")["reason"], "removed");
    // Deleted on A: Ivy's connection on B is told and the room is closed to her.
    let (st, _) = a.http("DELETE", "/v1/rooms/g", Some(&owner), None);
    assert_eq!(st, 200);
    assert_eq!(ivy.recv_type("room_left")["reason"], "deleted");
    ivy.send(json!({"type": "chat", "room_id": "g", "message": "hello?"}));
    assert_eq!(ivy.recv_type("error")["code"], "FORBIDDEN");

    // A conversation deleted on A: its subscriber on B hears so.
    let mut on_a = a.client("jan");
    let ack = chat(
        &mut on_a,
        json!({"id": "d", "message": "soon gone", "ai": false}),
    );
    let conv = ack["conversation_id"].as_str().unwrap().to_string();
    let mut on_b = b.client("jan");
    on_b.send(json!({"type": "subscribe", "conversation_id": conv, "after_seq": 0}));
    on_b.recv_type("subscribed");
    let (st, _) = a.http(
        "DELETE",
        &format!("/v1/conversations/{conv}"),
        Some(&a.token("jan")),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(
        on_b.recv_type("conversation_deleted")["conversation_id"],
        conv.as_str()
    );
    // Uploads are refused while the nodes share no files directory.
    on_b.send(json!({"type": "file_upload", "upload_type": "init", "file_name": "a.txt", "file_size": 3, "mime_type": "text/plain"}));
    let e = on_b.recv_type("error");
    assert_eq!(e["code"], "FORBIDDEN");
    assert!(e["error"].as_str().unwrap().contains("shared_files"), "{e}");
}

#[test]
fn a_seed_004_socket_on_one_node_and_a_native_member_on_another_share_a_room() {
    let Some((_pg, _nats, a, b)) = two_nodes() else {
        return;
    };
    // alice speaks seed 004's protocol on A (her socket joins the room from its query)…
    let url = a.url(&format!(
        "/api/v1/ws/ws?token={}&room_id=mixed&room_type=shared",
        a.token("alice")
    ));
    let mut alice = Client::connect(&url).unwrap();
    let until = |c: &mut Client, pred: &dyn Fn(&Value) -> bool| loop {
        let v = c.recv();
        if pred(&v) {
            break v;
        }
    };
    until(&mut alice, &|v| v["type"] == "join_room");
    // …nina the native protocol on B.
    let mut nina = b.client("nina");
    join(&mut nina, "mixed");
    std::thread::sleep(Duration::from_millis(300));
    alice.send(json!({"type":"chat","data":{"message":"from the seed side"},"room_id":"mixed","message_id":"s1"}));
    let m = nina.recv_type("message_added");
    assert_eq!(m["message"]["content"], "from the seed side");
    // The AI reply (on for 004's room chats) streams to nina on B.
    let done = nina.recv_type("complete");
    assert!(!done["response"].as_str().unwrap().is_empty());
    // And back: nina's message reaches alice's seed socket in the seed's form.
    nina.send(json!({"type": "chat", "id": "n1", "room_id": "mixed", "message": "from the native side", "ai": false}));
    let back = until(&mut alice, &|v| {
        v["type"] == "chat" && v["data"]["role"] == "user" && v["data"]["user_id"] == "nina"
    });
    assert_eq!(back["data"]["content"], "from the native side");
}
