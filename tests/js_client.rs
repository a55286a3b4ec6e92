//! The JavaScript client library (clients/js/confab.js) in Node against the real server:
//! each scenario of clients/js/test/client.test.mjs in its own server (a chat; resume
//! after a network drop; the server restarting mid-reply with a chat queued while it was
//! down; token refresh; BUSY retried; an upload; a room with two clients).
//!
//! Needs Node >= 20; skipped with a notice without it, unless
//! `CONFAB_REQUIRE_SEED_CLIENTS=1` (CI).
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use confab::Config;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/test/client.test.mjs")
}

/// Run one scenario against a server made with `tweak`; `on_line` answers the script's
/// requests (the restart scenario).
fn scenario(
    name: &str,
    tweak: impl Fn(&mut Config) + Clone,
    mut on_line: impl FnMut(&str, &mut Option<TestServer>),
) {
    let Some(flags) = node_flags() else {
        let required = std::env::var("CONFAB_REQUIRE_SEED_CLIENTS").is_ok_and(|v| v == "1");
        assert!(!required, "node >= 20 is required");
        eprintln!("NOTICE: node >= 20 not found; the JS client test {name} is skipped");
        return;
    };
    let mut server = Some(TestServer::start(&format!("js-{name}"), tweak));
    let base = format!("http://{}", server.as_ref().unwrap().addr);
    let mut cmd = Command::new("node");
    cmd.args(&flags).arg(script()).arg(name).arg(&base);
    let (ok, out, err) = run_driver(&mut cmd, |line| on_line(line, &mut server));
    assert!(
        ok && out.contains(&format!("PASS {name}")),
        "{name}\n{out}\n{err}"
    );
}

#[test]
fn a_chat_streams_and_matches_what_is_stored() {
    scenario("chat", |_| {}, |_, _| {});
}

#[test]
fn node_with_the_ws_package_instead_of_a_global_websocket() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/ws");
    if !ws.exists() {
        let required = std::env::var("CONFAB_REQUIRE_SEED_CLIENTS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "tests/browser/node_modules/ws is required (npm ci there)"
        );
        eprintln!("NOTICE: no `ws` package (npm ci in tests/browser); skipped");
        return;
    }
    scenario("ws_package", |_| {}, |_, _| {});
}

#[test]
fn a_reply_resumes_after_a_network_drop_with_no_gap_and_no_duplicate() {
    scenario("resume", |c| c.llm.demo_tokens_per_s = 60.0, |_, _| {});
}

#[test]
fn the_server_restarts_mid_reply_and_a_chat_sent_while_it_was_down_arrives_once() {
    let addr = std::sync::Arc::new(std::sync::Mutex::new(None));
    let dir = temp_dir("js-restart-data");
    let (a2, d2) = (addr.clone(), dir.clone());
    let tweak = move |c: &mut Config| {
        c.llm.demo_tokens_per_s = 40.0;
        c.store.data_dir = d2.clone();
        if let Some(a) = *a2.lock().unwrap() {
            c.server.listen = a;
        }
    };
    let t2 = tweak.clone();
    // The stopped server is kept (not dropped) until the end: dropping deletes its data dir.
    let old: std::sync::Arc<std::sync::Mutex<Vec<TestServer>>> = Default::default();
    let keep = old.clone();
    scenario("restart", tweak, move |line, server| match line {
        "STOP" => {
            let mut s = server.take().unwrap();
            *addr.lock().unwrap() = Some(s.addr);
            if let Some(h) = s.handle.take() {
                h.shutdown();
            }
            keep.lock().unwrap().push(s);
        }
        _ => *server = Some(TestServer::start("js-restart-2", t2.clone())),
    });
    drop(old);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tokens_are_refreshed_before_expiry_and_after_token_expired() {
    scenario(
        "refresh",
        |c| {
            c.auth.token_ttl_s = 3;
            c.auth.leeway_s = 0;
            c.auth.expiry_grace = std::time::Duration::from_secs(2);
        },
        |_, _| {},
    );
}

#[test]
fn busy_is_retried_from_the_outbox() {
    scenario(
        "busy",
        |c| {
            c.llm.workers = 1;
            c.llm.queue = 0;
            c.llm.demo_tokens_per_s = 200.0;
        },
        |_, _| {},
    );
}

#[test]
fn an_upload_round_trips_and_can_be_cancelled() {
    scenario("upload", |_| {}, |_, _| {});
}

#[test]
fn two_clients_see_presence_typing_and_receipts_in_a_room() {
    scenario("rooms", |_| {}, |_, _| {});
}
