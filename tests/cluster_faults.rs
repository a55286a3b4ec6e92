//! Cluster mode under faults: a node killed with SIGKILL or paused with SIGSTOP past its
//! lease, nats-server restarted or paused, PostgreSQL restarted — with real servers started
//! by the harness (`tests/common/cluster.rs`). Run with `cargo test --features cluster`;
//! skipped with a notice when the servers are not installed.
#![cfg(feature = "cluster")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/cluster.rs"]
mod harness;

use std::time::Duration;

use common::Client;
use harness::{
    added_by_author, chat, drain, join, node, node_with, process_client, two_nodes, Nats, Postgres,
};
use serde_json::json;

#[test]
fn postgres_restart_refuses_writes_then_recovers_by_itself() {
    if !harness::available() {
        return;
    }
    let (pg, nats) = (Postgres::start(), Nats::start());
    let a = node(&pg, &nats, "a");
    let mut c = a.client("dan");
    let ack = chat(&mut c, json!({"id": "before", "message": "one"}));
    let conv = ack["conversation_id"].as_str().unwrap().to_string();
    c.recv_type("complete");

    pg.stop("fast");
    // No false ack while the database is down: an error, never `ack`.
    c.send(json!({"type": "chat", "id": "during", "conversation_id": conv, "message": "two"}));
    // (Generous: a loaded machine may take a while to notice the lost connection.)
    let ev = c
        .try_recv(Duration::from_secs(30))
        .expect("an answer while PostgreSQL is down");
    assert_eq!(ev["type"], "error", "{ev}");
    assert!(
        ["INTERNAL", "BUSY"].contains(&ev["code"].as_str().unwrap()),
        "{ev}"
    );
    pg.restart();
    // Back by itself: the next batch reconnects.
    let mut acked = None;
    for i in 0..50 {
        c.send(json!({"type": "chat", "id": format!("after{i}"), "conversation_id": conv, "message": "three"}));
        let ev = c
            .try_recv(Duration::from_secs(30))
            .expect("an answer after PostgreSQL is back");
        if ev["type"] == "ack" {
            acked = Some(ev);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let acked = acked.expect("writes resume after PostgreSQL is back");
    assert_eq!(
        pg.query(&format!(
            "SELECT COUNT(*) FROM messages WHERE id = {}",
            acked["message_id"]
        )),
        "1"
    );
    assert_eq!(
        pg.query("SELECT COUNT(*) FROM messages WHERE client_id = 'during'"),
        "0"
    );
}

#[test]
fn a_node_killed_mid_reply_has_its_reply_ended_and_its_users_leave() {
    if !harness::available() {
        return;
    }
    let (pg, nats) = (Postgres::start(), Nats::start());
    let fast_lease = [
        ("CONFAB_CLUSTER_LEASE_MS", "2000"),
        ("CONFAB_CLUSTER_HEARTBEAT_MS", "250"),
        ("CONFAB_LLM_DEMO_TOKENS_PER_S", "5"),
        ("CONFAB_LLM_CHECKPOINT_INTERVAL_MS", "100"),
    ];
    let a = node_with(&pg, &nats, "a", |c| {
        let cl = c.cluster.as_mut().unwrap();
        cl.lease = Duration::from_millis(2000);
    });
    let b = harness::NodeProcess::start(&pg, &nats, "b", &fast_lease);
    let mut obs = a.client("obs");
    join(&mut obs, "k");
    std::thread::sleep(Duration::from_millis(600));

    // Zoe, on B, in the room and with a reply streaming there; her other device on A.
    let mut zoe = process_client(&b, &a, "zoe");
    join(&mut zoe, "k");
    assert_eq!(
        drain(&mut obs, "presence", Duration::from_millis(500)).len(),
        1
    );
    zoe.send(json!({"type": "chat", "id": "z", "message": "a long answer please"}));
    let conv = zoe.recv_type("ack")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut other = a.client("zoe");
    other.send(json!({"type": "subscribe", "conversation_id": conv, "after_seq": 0}));
    other.recv_type("subscribed");
    for _ in 0..3 {
        other.recv_type("token");
    }

    let killed = std::time::Instant::now();
    b.signal("KILL");
    // Within the lease (plus a heartbeat or two) A ends the reply with the saved text.
    let done = other.recv_type("complete");
    let took = killed.elapsed();
    assert_eq!(done["finish_reason"], "error");
    assert!(took < Duration::from_secs(6), "{took:?}");
    let saved = pg.query(&format!(
        "SELECT status || ':' || length(content) FROM messages WHERE id = {}",
        done["message_id"]
    ));
    assert!(saved.starts_with("error:"), "{saved}");
    assert_eq!(
        done["response"].as_str().unwrap().len().to_string(),
        saved.trim_start_matches("error:")
    );
    // And her presence on B is gone from A's view (missed heartbeats), once.
    let left = obs.recv_type("presence");
    let gone = killed.elapsed();
    assert_eq!(
        (left["user_id"].as_str(), left["status"].as_str()),
        (Some("zoe"), Some("left"))
    );
    assert!(drain(&mut obs, "presence", Duration::from_millis(1000)).is_empty());
    // (`gone` is read after the reply's end: presence had left by then, at the latest.)
    eprintln!("kill -9 -> reply closed in {took:?}; presence left by {gone:?}");
}

#[test]
fn a_nats_restart_loses_no_acked_message_and_the_gap_is_filled() {
    let Some((_pg, mut nats, a, b)) = two_nodes() else {
        return;
    };
    let mut ann = a.client("ann");
    let mut bob = b.client("bob");
    join(&mut ann, "n");
    join(&mut bob, "n");
    std::thread::sleep(Duration::from_millis(300));
    let seen = |c: &mut Client, wait: u64| added_by_author(c, Duration::from_millis(wait));
    let send = |c: &mut Client, i: usize| {
        c.send(json!({"type": "chat", "id": format!("n{i}"), "room_id": "n", "message": format!("m{i}")}));
        c.recv_type("ack");
    };
    send(&mut ann, 0);
    assert_eq!(seen(&mut bob, 300).len(), 1);

    // The bus goes away: writes still commit and ack on both nodes.
    nats.stop();
    std::thread::sleep(Duration::from_millis(300));
    let (st, h) = a.http("GET", "/health", None, None);
    assert_eq!(st, 200, "within the grace period: {h}");
    assert_ne!(h["bus"], "ok", "{h}");
    for i in 1..=5 {
        send(&mut ann, i);
        send(&mut bob, 10 + i);
    }
    nats.restart();
    let back = std::time::Instant::now();
    // Back: each node reads what it missed from PostgreSQL; every message once, in order.
    let mut got_bob = Vec::new();
    let mut got_ann = Vec::new();
    let mut complete_at = None;
    for _ in 0..200 {
        got_bob.extend(seen(&mut bob, 25));
        got_ann.extend(seen(&mut ann, 25));
        if got_bob.iter().filter(|(_, a)| a == "ann").count() >= 5
            && got_ann.iter().filter(|(_, a)| a == "bob").count() >= 5
        {
            complete_at = Some(back.elapsed());
            break;
        }
    }
    got_bob.extend(seen(&mut bob, 300));
    got_ann.extend(seen(&mut ann, 300));
    eprintln!("nats restarted -> every missed message delivered in {complete_at:?} (25 ms polls)");
    let from = |v: &[(i64, String)], who: &str| v.iter().filter(|(_, a)| a == who).count();
    assert_eq!(from(&got_bob, "ann"), 5, "bob: {got_bob:?}");
    assert_eq!(from(&got_ann, "bob"), 5, "ann: {got_ann:?}");
    assert_eq!(from(&got_bob, "bob") + from(&got_ann, "ann"), 0);
    for v in [&got_bob, &got_ann] {
        assert!(
            v.windows(2).all(|w| w[0].0 < w[1].0),
            "in seq order, once: {v:?}"
        );
    }
    let (_, h) = a.http("GET", "/health", None, None);
    assert_eq!(h["bus"], "ok", "{h}");
}

#[test]
fn a_node_paused_past_its_lease_cannot_overwrite_what_the_cluster_decided() {
    if !harness::available() {
        return;
    }
    let (pg, nats) = (Postgres::start(), Nats::start());
    let env = [
        ("CONFAB_CLUSTER_LEASE_MS", "1500"),
        ("CONFAB_CLUSTER_HEARTBEAT_MS", "250"),
        ("CONFAB_LLM_DEMO_TOKENS_PER_S", "20"),
        ("CONFAB_LLM_CHECKPOINT_INTERVAL_MS", "100"),
    ];
    let a = node_with(&pg, &nats, "a", |c| {
        c.cluster.as_mut().unwrap().lease = Duration::from_millis(1500);
    });
    let b = harness::NodeProcess::start(&pg, &nats, "b", &env);
    let mut on_b = process_client(&b, &a, "pat");
    on_b.send(
        json!({"type": "chat", "id": "p", "message": "a long answer please, with many words"}),
    );
    let conv = on_b.recv_type("ack")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut on_a = a.client("pat");
    on_a.send(json!({"type": "subscribe", "conversation_id": conv, "after_seq": 0}));
    on_a.recv_type("subscribed");
    on_a.recv_type("token");

    // B freezes mid-reply, past its lease: A ends the reply.
    b.signal("STOP");
    let done = on_a.recv_type("complete");
    assert_eq!(done["finish_reason"], "error");
    let mid = done["message_id"].clone();
    // B wakes and finishes its stream: its writes change nothing, nobody hears a second end.
    b.signal("CONT");
    let later = drain(&mut on_a, "complete", Duration::from_secs(4));
    assert!(later.is_empty(), "{later:?}");
    assert_eq!(
        pg.query(&format!("SELECT status FROM messages WHERE id = {mid}")),
        "error"
    );
}

#[test]
fn a_paused_nats_server_delays_but_loses_and_repeats_nothing() {
    let Some((_pg, nats, a, b)) = two_nodes() else {
        return;
    };
    let mut ann = a.client("ann");
    let mut bob = b.client("bob");
    join(&mut ann, "s");
    join(&mut bob, "s");
    std::thread::sleep(Duration::from_millis(300));
    let seqs = |c: &mut Client, wait: u64| added_by_author(c, Duration::from_millis(wait));
    let send = |c: &mut Client, id: String| {
        c.send(json!({"type": "chat", "id": id, "room_id": "s", "message": "x"}));
        c.recv_type("ack");
    };
    // The bus server freezes (its clients' writes pile up in TCP) while both nodes write.
    nats.signal("STOP");
    for i in 0..5 {
        send(&mut ann, format!("a{i}"));
        send(&mut bob, format!("b{i}"));
    }
    std::thread::sleep(Duration::from_secs(2));
    nats.signal("CONT");
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        got_a.extend(seqs(&mut ann, 50));
        got_b.extend(seqs(&mut bob, 50));
    }
    let from = |v: &[(i64, String)], who: &str| v.iter().filter(|(_, a)| a == who).count();
    assert_eq!(from(&got_a, "bob"), 5, "ann: {got_a:?}");
    assert_eq!(from(&got_b, "ann"), 5, "bob: {got_b:?}");
    // Nobody gets their own message back (as on a single box).
    assert_eq!(from(&got_a, "ann") + from(&got_b, "bob"), 0);
    for v in [&got_a, &got_b] {
        assert!(
            v.windows(2).all(|w| w[0].0 < w[1].0),
            "once, in seq order: {v:?}"
        );
    }
}
