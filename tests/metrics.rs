//! `GET /metrics` after real traffic: durations are histograms in seconds with
//! cumulative `_bucket`s, `_sum` and `_count`; replies by agent and model (time to first
//! token, duration, tokens in and out, cost); HTTP answers by route and status (deferred
//! answers and WebSocket upgrades included); queue depths; and every sample belongs to
//! a family with a `# TYPE`.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::json;

fn page(s: &TestServer) -> String {
    let (st, _, body) = http_raw(s.addr, "GET", "/metrics", None, None);
    assert_eq!(st, 200);
    String::from_utf8(body).unwrap()
}

/// The value of the sample whose name and labels start as `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
}

#[test]
fn the_metrics_page_after_a_chat() {
    let s = TestServer::start("metrics", |c| {
        c.agents
            .get_mut("assistant")
            .unwrap()
            .price_completion_per_1k = 0.002;
    });
    let mut a = s.client("alice");
    a.send(json!({"type":"chat","message":"hello"}));
    let done = a.recv_type("complete");
    let model = done["metadata"]["model"].as_str().unwrap().to_string();
    let tok = s.token("alice");
    assert_eq!(s.http("GET", "/v1/conversations", Some(&tok), None).0, 200);
    assert_eq!(s.http("GET", "/nowhere", None, None).0, 404);
    let text = page(&s);

    let l = format!("agent=\"assistant\",model=\"{model}\"");
    assert_eq!(value(&text, &format!("confab_replies_total{{{l}}}")), 1.0);
    assert!(
        value(
            &text,
            &format!("confab_llm_tokens_total{{{l},direction=\"out\"}}")
        ) > 0.0
    );
    assert!(
        value(
            &text,
            &format!("confab_llm_tokens_total{{{l},direction=\"in\"}}")
        ) > 0.0
    );
    assert!(value(&text, &format!("confab_llm_cost_usd_total{{{l}}}")) > 0.0);
    assert_eq!(
        value(
            &text,
            &format!("confab_time_to_first_token_seconds_count{{{l}}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("confab_reply_duration_seconds_count{{{l}}}")
        ),
        1.0
    );
    assert!(value(&text, "confab_store_commit_seconds_count") >= 2.0);
    assert!(value(&text, "confab_store_commit_seconds_sum") > 0.0);
    // HTTP: the upgrade, a deferred answer (read pool), a 404, by route.
    assert!(
        value(
            &text,
            "confab_http_responses_total{route=\"/v1/ws\",status=\"101\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(
            &text,
            "confab_http_responses_total{route=\"/v1/conversations\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "confab_http_responses_total{route=\"other\",status=\"404\"}"
        ),
        1.0
    );
    assert!(text.contains("confab_queue_depth{queue=\"store_write\"}"));
    assert!(text.contains("confab_queue_depth{queue=\"shard_inbox\",shard=\"0\"}"));
    assert!(text.contains("confab_build_info{"));

    // Well formed: each sample's family is typed; histograms are cumulative and end at
    // +Inf = _count.
    let mut types: HashMap<&str, &str> = HashMap::new();
    for l in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (n, k) = l.split_once(' ').unwrap();
        assert!(types.insert(n, k).is_none(), "{n} typed twice");
    }
    let mut last: HashMap<String, f64> = HashMap::new();
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = l.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|f| types.get(f) == Some(&"histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample {name} has no # TYPE");
        if name.ends_with("_bucket") {
            let series = l.split("le=").next().unwrap().to_string();
            let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
            if let Some(prev) = last.get(&series) {
                assert!(v >= *prev, "buckets not cumulative: {l}");
            }
            last.insert(series, v);
        }
    }
}
