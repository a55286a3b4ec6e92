//! The browser pages in headless Chromium: the test page at `/` (driven by
//! tests/browser/page.test.js) and seed 001's `/ws/test` (tests/browser/ws_test.test.js).
//!
//! Needs node, Chromium and `npm install` in tests/browser (`.ci/run` installs them and
//! sets CONFAB_REQUIRE_BROWSER=1, so in CI a missing piece is a failure, not a skip).
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Node, Chromium and playwright-core, if all are there (else skip, or fail in CI).
fn ready(dir: &Path, chromium: &str) -> bool {
    let required = std::env::var("CONFAB_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let have_node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let ready = have_node
        && Path::new(chromium).exists()
        && dir.join("node_modules/playwright-core").exists();
    if !ready {
        assert!(
            !required,
            "browser test required but node, {chromium} or tests/browser/node_modules is missing"
        );
        eprintln!("SKIPPED: browser test needs node, {chromium} and `npm install` in tests/browser (CI installs them)");
    }
    ready
}

/// Run one driver script against `url`; it must print `passed`.
fn drive(dir: &Path, chromium: &str, script: &str, url: &str, passed: &str) {
    let out = Command::new("node")
        .arg(dir.join(script))
        .arg(url)
        .env("CHROMIUM", chromium)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(passed), "{text}");
    eprintln!("{text}");
}

#[test]
fn seed_001s_test_page_chats_with_the_seeds_own_client_class() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !ready(&dir, &chromium) {
        return;
    }
    let s = TestServer::start("browser-ws-test", |c| c.llm.demo_tokens_per_s = 200.0);
    let url = format!("http://{}/ws/test", s.addr);
    drive(
        &dir,
        &chromium,
        "ws_test.test.js",
        &url,
        "ws_test page passed",
    );
}

#[test]
fn the_test_page_streams_resumes_after_a_reload_stops_and_uploads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !ready(&dir, &chromium) {
        return;
    }
    let s = TestServer::start("browser", |c| c.llm.demo_tokens_per_s = 15.0);
    let url = format!("http://{}/", s.addr);
    drive(&dir, &chromium, "page.test.js", &url, "browser test passed");
}

#[test]
fn the_chat_page_on_desktop_and_phone_with_markdown_errors_an_outage_and_a_room() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !ready(&dir, &chromium) {
        return;
    }
    let data = temp_dir("browser-chat-data");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tweak = |addr: Option<std::net::SocketAddr>, data: std::path::PathBuf| {
        move |c: &mut confab::Config| {
            c.llm.demo_tokens_per_s = 400.0;
            c.store.data_dir = data.clone();
            // An agent whose backend is down, for the error case.
            c.llm.base_url = format!("http://{dead}/v1");
            let mut broken = c.agents["assistant"].clone();
            broken.name = "broken".into();
            broken.provider = confab::config::ProviderKind::OpenAi;
            c.agents.insert("broken".into(), broken);
            if let Some(a) = addr {
                c.server.listen = a;
            }
        }
    };
    let mut server = Some(TestServer::start("browser-chat", tweak(None, data.clone())));
    let addr = server.as_ref().unwrap().addr;
    let mut stopped = Vec::new();
    // CONFAB_SHOTS_DIR=docs refreshes docs/page-desktop.png and docs/page-phone.png.
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("chat.test.js"))
        .arg(format!("http://{addr}/"))
        .env("CHROMIUM", &chromium)
        .env(
            "SHOTS_DIR",
            std::env::var("CONFAB_SHOTS_DIR").unwrap_or_default(),
        );
    let (ok, out, err) = run_driver(&mut cmd, |line| {
        if line == "STOP" {
            let mut s = server.take().unwrap();
            if let Some(h) = s.handle.take() {
                h.shutdown();
            }
            stopped.push(s); // dropping it would delete the data dir
        } else {
            server = Some(TestServer::start(
                "browser-chat-2",
                tweak(Some(addr), data.clone()),
            ));
        }
    });
    assert!(ok && out.contains("chat page test passed"), "{out}\n{err}");
    drop(stopped);
    let _ = std::fs::remove_dir_all(data);
}
