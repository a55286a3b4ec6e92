//! The browser test page in headless Chromium (driven by tests/browser/page.test.js).
//!
//! Needs node, Chromium and `npm install` in tests/browser (`.ci/run` installs them and
//! sets CONFAB_REQUIRE_BROWSER=1, so in CI a missing piece is a failure, not a skip).
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn the_test_page_streams_resumes_after_a_reload_stops_and_uploads() {
    let required = std::env::var("CONFAB_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let have_node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let ready = have_node
        && Path::new(&chromium).exists()
        && dir.join("node_modules/playwright-core").exists();
    if !ready {
        assert!(
            !required,
            "browser test required but node, {chromium} or tests/browser/node_modules is missing"
        );
        eprintln!("SKIPPED: browser test needs node, {chromium} and `npm install` in tests/browser (CI installs them)");
        return;
    }
    let s = TestServer::start("browser", |c| c.llm.demo_tokens_per_s = 15.0);
    let out = Command::new("node")
        .arg(dir.join("page.test.js"))
        .arg(format!("http://{}/", s.addr))
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("browser test passed"), "{text}");
    eprintln!("{text}");
}
