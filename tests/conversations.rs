//! Conversations: acks after commit, idempotency, access, sync across connections and
//! shards, resume with no gap and no duplicate, HTTP history, durability under kill -9.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn chat(c: &mut Client, id: &str, conv: Option<&str>, text: &str) -> Value {
    let mut m = json!({"type": "chat", "id": id, "message": text, "ai": false});
    if let Some(conv) = conv {
        m["conversation_id"] = json!(conv);
    }
    c.send(m);
    let ack = c.recv_type("ack");
    assert_eq!(ack["id"], id);
    ack
}

#[test]
fn a_chat_is_acked_after_commit_with_conversation_message_and_seq() {
    let s = TestServer::start("ack", |_| {});
    let mut c = s.client("ann");
    let a1 = chat(&mut c, "m1", None, "first");
    let conv = a1["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(a1["seq"], 1);
    assert!(a1["message_id"].as_i64().unwrap() > 0);
    assert!(a1["timestamp"].as_str().unwrap().ends_with('Z'));
    let a2 = chat(&mut c, "m2", Some(&conv), "second");
    assert_eq!(
        (a2["conversation_id"].as_str(), a2["seq"].as_i64()),
        (Some(conv.as_str()), Some(2))
    );
    let (st, h) = s.http(
        "GET",
        &format!("/v1/conversations/{conv}/messages"),
        Some(&s.token("ann")),
        None,
    );
    assert_eq!(st, 200, "{h}");
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["first", "second"]);
}

#[test]
fn a_retried_chat_id_returns_the_original_ack_and_stores_nothing_twice() {
    let s = TestServer::start("idem", |_| {});
    let mut c = s.client("ivy");
    let a = chat(&mut c, "same-id", None, "hello");
    let conv = a["conversation_id"].as_str().unwrap().to_string();
    // The retry may even name no conversation: the id identifies the message.
    let b = chat(&mut c, "same-id", None, "hello");
    assert_eq!(b["message_id"], a["message_id"]);
    assert_eq!(b["conversation_id"], a["conversation_id"]);
    assert_eq!(b["duplicate"], true);
    // From another connection of the same user, too.
    let mut c2 = s.client("ivy");
    let d = chat(&mut c2, "same-id", Some(&conv), "hello");
    assert_eq!(d["message_id"], a["message_id"]);
    let (_, h) = s.http(
        "GET",
        &format!("/v1/conversations/{conv}/messages"),
        Some(&s.token("ivy")),
        None,
    );
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    // Another user's same id is a different message.
    let mut other = s.client("jay");
    let e = chat(&mut other, "same-id", None, "hello");
    assert_ne!(e["message_id"], a["message_id"]);
}

#[test]
fn the_idempotency_window_ends_with_its_time_and_at_its_cap() {
    let s = TestServer::start("idem-window", |cfg| {
        cfg.store.idempotency_window_s = 1;
        cfg.store.idempotency_max_entries = 2;
    });
    let mut c = s.client("ivy");
    let a = chat(&mut c, "a", None, "one");
    let conv = a["conversation_id"].as_str().unwrap().to_string();
    // Past the window the same id is a new message.
    std::thread::sleep(Duration::from_millis(1_100));
    let again = chat(&mut c, "a", Some(&conv), "one, later");
    assert_ne!(again["duplicate"], true, "{again}");
    assert_ne!(again["message_id"], a["message_id"]);
    // Inside it, a retry is the original — until two newer ids push it out of a window
    // that holds two.
    assert_eq!(chat(&mut c, "a", Some(&conv), "x")["duplicate"], true);
    chat(&mut c, "b", Some(&conv), "two");
    assert_eq!(chat(&mut c, "b", Some(&conv), "x")["duplicate"], true);
    chat(&mut c, "c", Some(&conv), "three");
    let pushed_out = chat(&mut c, "a", Some(&conv), "one, once more");
    assert_ne!(pushed_out["duplicate"], true, "{pushed_out}");
    let (st, _, body) = http_raw(s.addr, "GET", "/metrics", None, None);
    assert_eq!(st, 200);
    let body = String::from_utf8(body).unwrap();
    let evicted = body
        .lines()
        .find_map(|l| l.strip_prefix("confab_store_idempotency_evicted_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(evicted.is_some_and(|n| n >= 1), "{body}");
}

#[test]
fn empty_forbidden_and_unknown_conversations_are_errors() {
    let s = TestServer::start("chat-errors", |_| {});
    let mut a = s.client("owner");
    let conv = chat(&mut a, "x", None, "mine")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    a.send(json!({"type": "chat", "id": "e", "message": "  \n "}));
    assert_eq!(a.recv_type("error")["code"], "EMPTY_MESSAGE");
    let mut b = s.client("intruder");
    b.send(
        json!({"type": "chat", "id": "f", "message": "hi", "conversation_id": conv, "ai": false}),
    );
    let e = b.recv_type("error");
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("FORBIDDEN"), Some("f"))
    );
    b.send(json!({"type": "chat", "id": "g", "message": "hi", "conversation_id": "c_nope", "ai": false}));
    assert_eq!(b.recv_type("error")["code"], "NOT_FOUND");
    b.send(json!({"type": "subscribe", "id": "h", "conversation_id": conv}));
    assert_eq!(b.recv_type("error")["code"], "FORBIDDEN");
    let (st, _) = s.http(
        "GET",
        &format!("/v1/conversations/{conv}/messages"),
        Some(&s.token("intruder")),
        None,
    );
    assert_eq!(st, 403);
    // The intruder never saw the owner's messages.
    a.send(json!({"type": "chat", "id": "y", "message": "private", "conversation_id": conv, "ai": false}));
    a.recv_type("ack");
    assert!(b.try_recv(Duration::from_millis(300)).is_none());
}

#[test]
fn a_second_connection_on_another_shard_replays_then_follows_live() {
    let s = TestServer::start("sync", |c| c.server.shards = 2);
    let mut tab1 = s.client("sam");
    let conv = chat(&mut tab1, "1", None, "one")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    chat(&mut tab1, "2", Some(&conv), "two");
    let mut tab2 = s.client("sam");
    tab2.send(json!({"type": "subscribe", "id": "s", "conversation_id": conv, "after_seq": 0}));
    let r1 = tab2.recv();
    let r2 = tab2.recv();
    assert_eq!(
        (
            r1["type"].as_str(),
            r1["replayed"].as_bool(),
            r1["message"]["seq"].as_i64()
        ),
        (Some("message_added"), Some(true), Some(1))
    );
    assert_eq!(r2["message"]["content"], "two");
    let sub = tab2.recv();
    assert_eq!(
        (
            sub["type"].as_str(),
            sub["last_seq"].as_i64(),
            sub["id"].as_str()
        ),
        (Some("subscribed"), Some(2), Some("s"))
    );
    // Live: a message from tab1 reaches tab2 (tab1 itself gets only its ack).
    chat(&mut tab1, "3", Some(&conv), "three");
    let live = tab2.recv_type("message_added");
    assert_eq!(
        (
            live["message"]["seq"].as_i64(),
            live["message"]["content"].as_str()
        ),
        (Some(3), Some("three"))
    );
    assert!(live.get("replayed").is_none());
    assert!(
        tab1.try_recv(Duration::from_millis(200)).is_none(),
        "the sender gets its ack, not its own message_added"
    );
    // And back: tab2 writes, tab1 (auto-subscribed as the sender) sees it.
    chat(&mut tab2, "4", Some(&conv), "four");
    assert_eq!(tab1.recv_type("message_added")["message"]["seq"], 4);
    // Both shards were used.
    let loads: Vec<usize> = s
        .ctx()
        .net
        .shard_load
        .iter()
        .map(|l| l.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert_eq!(loads, vec![1, 1]);
}

#[test]
fn a_reconnecting_client_gets_exactly_the_messages_it_missed() {
    let s = TestServer::start("resume", |_| {});
    let mut writer = s.client("rita");
    let conv = chat(&mut writer, "0", None, "m1")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut reader = s.client("rita");
    reader.send(json!({"type": "subscribe", "conversation_id": conv}));
    reader.recv_type("subscribed");
    for i in 2..=4 {
        chat(&mut writer, &i.to_string(), Some(&conv), &format!("m{i}"));
    }
    let mut seen = Vec::new();
    for _ in 2..=4 {
        seen.push(
            reader.recv_type("message_added")["message"]["seq"]
                .as_i64()
                .unwrap(),
        );
    }
    let last_seen = *seen.last().unwrap();
    drop(reader); // offline
    for i in 5..=9 {
        chat(&mut writer, &i.to_string(), Some(&conv), &format!("m{i}"));
    }
    let mut back = s.client("rita");
    back.send(json!({"type": "subscribe", "conversation_id": conv, "after_seq": last_seen}));
    let mut got = Vec::new();
    loop {
        let ev = back.recv();
        match ev["type"].as_str().unwrap() {
            "message_added" => got.push(ev["message"]["seq"].as_i64().unwrap()),
            "subscribed" => {
                assert_eq!(ev["last_seq"], 9);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(got, vec![5, 6, 7, 8, 9]);
    chat(&mut writer, "10", Some(&conv), "m10");
    assert_eq!(back.recv_type("message_added")["message"]["seq"], 10);
}

#[test]
fn the_conversation_list_is_most_recent_first_with_paging_and_previews() {
    let s = TestServer::start("list", |_| {});
    let mut c = s.client("lou");
    let mut convs = Vec::new();
    for i in 0..5 {
        let long = format!("conversation {i} {}", "x".repeat(150));
        convs.push(
            chat(&mut c, &format!("c{i}"), None, &long)["conversation_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        std::thread::sleep(Duration::from_millis(3));
    }
    chat(&mut c, "again", Some(&convs[1]), "bump");
    let t = s.token("lou");
    let (st, page1) = s.http("GET", "/v1/conversations?limit=2", Some(&t), None);
    assert_eq!(st, 200, "{page1}");
    let list = page1["conversations"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], convs[1].as_str());
    assert_eq!(list[0]["message_count"], 2);
    assert_eq!(list[0]["preview"].as_str().unwrap().chars().count(), 100);
    assert!(list[0]["created_at"].is_string() && list[0]["last_updated"].is_string());
    assert_eq!(list[1]["id"], convs[4].as_str());
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = s.http(
        "GET",
        &format!("/v1/conversations?limit=10&cursor={cursor}"),
        Some(&t),
        None,
    );
    let ids: Vec<&str> = page2["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [convs[3].as_str(), convs[2].as_str(), convs[0].as_str()]
    );
    assert!(page2["next_cursor"].is_null());
    let (st, _) = s.http("GET", "/v1/conversations", None, None);
    assert_eq!(st, 401);
    let (_, other) = s.http("GET", "/v1/conversations", Some(&s.token("someone")), None);
    assert_eq!(other["conversations"].as_array().unwrap().len(), 0);
}

#[test]
fn history_pages_backwards_by_seq() {
    let s = TestServer::start("history", |_| {});
    let mut c = s.client("hal");
    let conv = chat(&mut c, "0", None, "m1")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 2..=7 {
        chat(&mut c, &i.to_string(), Some(&conv), &format!("m{i}"));
    }
    let t = s.token("hal");
    let (_, p) = s.http(
        "GET",
        &format!("/v1/conversations/{conv}/messages?limit=3"),
        Some(&t),
        None,
    );
    let seqs: Vec<i64> = p["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [5, 6, 7]);
    assert_eq!(p["has_more"], true);
    let (_, p) = s.http(
        "GET",
        &format!("/v1/conversations/{conv}/messages?limit=3&before_seq=5"),
        Some(&t),
        None,
    );
    let seqs: Vec<i64> = p["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
    let (st, _) = s.http(
        "GET",
        &format!("/v1/conversations/{conv}/messages?limit=x"),
        Some(&t),
        None,
    );
    assert_eq!(st, 400);
    let (st, _) = s.http(
        "GET",
        "/v1/conversations/c_missing/messages",
        Some(&t),
        None,
    );
    assert_eq!(st, 404);
}

fn spawn(dir: &std::path::Path) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .arg("serve")
        .env("CONFAB_SERVER_LISTEN", "127.0.0.1:0")
        .env("CONFAB_STORE_DATA_DIR", dir)
        .env("CONFAB_AUTH_JWT_SECRET", "kill-secret")
        .env("CONFAB_SERVER_SHARDS", "2")
        .env("CONFAB_LIMITS_RATE_MAX_MESSAGES", "100000")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("address line").unwrap();
        if let Some(rest) = line.split("serving on http://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[test]
fn every_acked_message_survives_kill_9_exactly_once() {
    let dir = temp_dir("kill9");
    let (mut child, addr) = spawn(&dir);
    let sign = |sub: &str| {
        let mut cfg = confab::Config::defaults();
        cfg.auth.jwt_secret = Some("kill-secret".into());
        confab::auth::Authenticator::from_config(&cfg.auth, &dir)
            .unwrap()
            .sign(sub, None, false, 600)
            .unwrap()
    };
    // message_id -> (user, conversation, client id)
    type Acked = HashMap<i64, (String, String, String)>;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut threads = Vec::new();
    for w in 0..6 {
        let url = format!("ws://{addr}/v1/ws?token={}", sign(&format!("w{w}")));
        let acked = acked.clone();
        threads.push(std::thread::spawn(move || {
            let Ok(mut c) = Client::connect(&url) else { return };
            let _ = c.ws.get_ref().set_read_timeout(Some(Duration::from_secs(5)));
            let mut conv: Option<String> = None;
            for i in 0.. {
                let mut m = json!({"type": "chat", "id": format!("w{w}-{i}"), "message": format!("msg {i}"), "ai": false});
                if let Some(c) = &conv {
                    m["conversation_id"] = json!(c);
                }
                if c.ws.send(tungstenite::Message::text(m.to_string())).is_err() {
                    return;
                }
                // Read until the ack (or the server dies).
                loop {
                    match c.ws.read() {
                        Ok(tungstenite::Message::Text(t)) => {
                            let v: Value = serde_json::from_str(&t).unwrap();
                            if v["type"] == "ack" {
                                let cid = v["conversation_id"].as_str().unwrap().to_string();
                                conv.get_or_insert(cid.clone());
                                let entry = (format!("w{w}"), cid, format!("w{w}-{i}"));
                                acked.lock().unwrap().insert(v["message_id"].as_i64().unwrap(), entry);
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    // Let them write for a while, then kill mid-stream.
    while acked.lock().unwrap().len() < 300 {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    for t in threads {
        let _ = t.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    // The database is intact…
    let db = rusqlite::Connection::open(dir.join("confab.db")).unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    drop(db);

    // …and after a restart on the same data dir every acked message is there exactly once.
    let (mut child, addr) = spawn(&dir);
    let mut by_conv: HashMap<String, (String, HashSet<i64>)> = HashMap::new();
    for (mid, (user, conv, _)) in &acked {
        by_conv
            .entry(conv.clone())
            .or_insert_with(|| (user.clone(), HashSet::new()))
            .1
            .insert(*mid);
    }
    for (conv, (user, mids)) in by_conv {
        let mut found: HashMap<i64, usize> = HashMap::new();
        let mut before = i64::MAX;
        loop {
            let (st, page) = http_request(
                addr,
                "GET",
                &format!("/v1/conversations/{conv}/messages?limit=200&before_seq={before}"),
                Some(&sign(&user)),
                None,
            );
            assert_eq!(st, 200, "{page}");
            let msgs = page["messages"].as_array().unwrap();
            if msgs.is_empty() {
                break;
            }
            for m in msgs {
                *found.entry(m["id"].as_i64().unwrap()).or_default() += 1;
            }
            before = msgs[0]["seq"].as_i64().unwrap();
        }
        for mid in mids {
            assert_eq!(found.get(&mid), Some(&1), "acked message {mid} in {conv}");
        }
    }
    // A client that never saw its ack retries after the restart: the idempotency window
    // was rebuilt from the database, so every acked id answers with its original message.
    let mut clients: HashMap<String, Client> = HashMap::new();
    for (mid, (user, conv, cid)) in &acked {
        let c = clients.entry(user.clone()).or_insert_with(|| {
            Client::connect(&format!("ws://{addr}/v1/ws?token={}", sign(user))).unwrap()
        });
        let again = chat(c, cid, Some(conv), "retried after the restart");
        assert_eq!(again["duplicate"], true, "{cid}: {again}");
        assert_eq!(again["message_id"].as_i64(), Some(*mid), "{cid}: {again}");
    }
    sigterm(&child);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn busy_from_a_full_store_queue_answers_the_id_and_forgets_the_subscription() {
    let s = TestServer::start("store-busy", |c| {
        c.store.queue = 1;
        c.store.batch_max = 1;
        c.limits.rate_max_messages = 100_000;
    });
    let mut a = s.client("alice");
    let (mut acked, mut busy) = (0usize, 0usize);
    // A burst of new conversations against a one-slot queue: some are refused BUSY.
    for round in 0..20 {
        let n = 200;
        for i in 0..n {
            a.send(json!({"type": "chat", "id": format!("r{round}-{i}"), "message": "hi", "ai": false}));
        }
        for _ in 0..n {
            let ev = loop {
                let ev = a.recv();
                if ev["type"] == "ack" || ev["type"] == "error" {
                    break ev;
                }
            };
            if ev["type"] == "ack" {
                acked += 1;
            } else {
                assert_eq!(ev["code"], "BUSY", "{ev}");
                assert!(
                    ev["id"]
                        .as_str()
                        .is_some_and(|i| i.starts_with(&format!("r{round}-"))),
                    "BUSY without the client's id: {ev}"
                );
                busy += 1;
            }
        }
        if busy > 0 {
            break;
        }
    }
    assert!(busy > 0, "the burst never filled the queue ({acked} acked)");
    // Every acked conversation keeps its subscriber; the refused ones left nothing behind.
    assert_eq!(s.ctx().net.topics.count(), acked);
}

#[test]
fn a_replay_cut_at_replay_max_says_more_and_where_it_starts() {
    let s = TestServer::start("replay-more", |c| c.store.replay_max = 3);
    let mut a = s.client("alice");
    a.send(json!({"type": "chat", "id": "m0", "message": "m0", "ai": false}));
    let conv = a.recv_type("ack")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 1..6 {
        a.send(json!({"type": "chat", "id": format!("m{i}"), "conversation_id": conv, "message": format!("m{i}"), "ai": false}));
        a.recv_type("ack");
    }
    let mut b = s.client("alice");
    b.send(json!({"type": "subscribe", "id": "s", "conversation_id": conv, "after_seq": 0}));
    let sub = b.recv_type("subscribed");
    assert_eq!(sub["id"], "s");
    assert_eq!(sub["last_seq"], 6);
    assert_eq!(sub["more"], true, "{sub}");
    assert_eq!(sub["first_seq"], 4, "{sub}");
    // Caught up: no `more`.
    b.send(json!({"type": "subscribe", "conversation_id": conv, "after_seq": 5}));
    let sub = b.recv_type("subscribed");
    assert!(
        sub.get("more").is_none() && sub.get("first_seq").is_none(),
        "{sub}"
    );
}

#[test]
fn history_keeps_usage_agents_are_listed_and_owners_rename_and_delete() {
    let s = TestServer::start("conv-manage", |c| {
        c.agents
            .get_mut("assistant")
            .unwrap()
            .price_completion_per_1k = 0.0123;
    });
    let alice = s.token("alice");
    let mut a = s.client("alice");
    a.send(json!({"type":"chat","id":"1","message":"hello there"}));
    let ack = a.recv_type("ack");
    let conv = ack["conversation_id"].as_str().unwrap().to_string();
    let done = a.recv_type("complete");
    // History returns each reply's usage and cost, exact.
    let (_, h) = s.http(
        "GET",
        &format!("/v1/conversations/{conv}/messages"),
        Some(&alice),
        None,
    );
    let meta = &h["messages"][1]["meta"];
    assert_eq!(meta["finish_reason"], "stop", "{h}");
    assert_eq!(
        meta["completion_tokens"],
        done["metadata"]["completion_tokens"]
    );
    assert_eq!(meta["cost_usd"], done["metadata"]["cost_usd"]);
    let want = done["metadata"]["completion_tokens"].as_f64().unwrap() / 1000.0 * 0.0123;
    assert!(
        (meta["cost_usd"].as_f64().unwrap() - want).abs() < 1e-15,
        "{meta}"
    );
    // Replay too.
    let mut a2 = s.client("alice");
    a2.send(json!({"type":"subscribe","conversation_id":conv,"after_seq":0}));
    let mut replayed = Vec::new();
    loop {
        let v = a2.recv();
        if v["type"] == "subscribed" {
            break;
        }
        replayed.push(v);
    }
    assert_eq!(replayed[1]["message"]["meta"]["finish_reason"], "stop");

    // Agents: what a user chooses by, no system prompt.
    let (st, ag) = s.http("GET", "/v1/agents", Some(&alice), None);
    assert_eq!(st, 200);
    let first = &ag["agents"][0];
    assert_eq!(first["name"], "assistant");
    assert!(first["description"].is_string() && first["model"].is_string());
    assert!(first.get("system_prompt").is_none());
    assert_eq!(s.http("GET", "/v1/agents", None, None).0, 401);

    // Rename: the owner only; the list shows the title.
    let path = format!("/v1/conversations/{conv}");
    let (st, _) = s.http(
        "PATCH",
        &path,
        Some(&s.token("bob")),
        Some(&json!({"title":"x"})),
    );
    assert_eq!(st, 403);
    let (st, r) = s.http(
        "PATCH",
        &path,
        Some(&alice),
        Some(&json!({"title":"  Trip plans "})),
    );
    assert_eq!(st, 200, "{r}");
    let (_, list) = s.http("GET", "/v1/conversations", Some(&alice), None);
    assert_eq!(list["conversations"][0]["title"], "Trip plans");

    // Delete: the owner only; subscribers are told; history is gone.
    assert_eq!(s.http("DELETE", &path, Some(&s.token("bob")), None).0, 403);
    let (st, r) = s.http("DELETE", &path, Some(&alice), None);
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        a2.recv_type("conversation_deleted")["conversation_id"],
        conv.as_str()
    );
    let (st, _) = s.http("GET", &format!("{path}/messages"), Some(&alice), None);
    assert_eq!(st, 404);
    let (_, list) = s.http("GET", "/v1/conversations", Some(&alice), None);
    assert_eq!(list["conversations"].as_array().unwrap().len(), 0);
    assert_eq!(s.http("DELETE", &path, Some(&alice), None).0, 404);
}

/// Messages in the database file itself (not the WAL): `immutable=1` makes SQLite read
/// the main file only. A read that meets a page mid-copy counts as not there yet.
fn rows_in_database_file(db: &std::path::Path) -> i64 {
    let uri = format!("file:{}?immutable=1", db.display());
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    rusqlite::Connection::open_with_flags(uri, flags)
        .and_then(|c| c.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)))
        .unwrap_or(0)
}

fn wait_for_rows(db: &std::path::Path, n: i64) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if rows_in_database_file(db) >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn committed_messages_are_checkpointed_into_the_database_file_also_after_an_idle_spell() {
    // The checkpointer skips its pass while nothing was committed since a complete one;
    // commits after such an idle spell must still be copied.
    let s = TestServer::start("checkpoint", |_| {});
    let db = s.dir.join("confab.db");
    let mut c = s.client("ann");
    let conv = chat(&mut c, "k1", None, "one")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        wait_for_rows(&db, 1),
        "the first message never left the WAL"
    );
    // Several passes with nothing to do.
    std::thread::sleep(Duration::from_millis(700));
    chat(&mut c, "k2", Some(&conv), "two");
    chat(&mut c, "k3", Some(&conv), "three");
    assert!(
        wait_for_rows(&db, 3),
        "messages committed after an idle spell stayed in the WAL"
    );
}
