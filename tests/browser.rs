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
