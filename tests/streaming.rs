//! AI replies: a real HTTP server on 127.0.0.1 speaks OpenAI's streaming format (and its
//! failure modes); the demo provider streams with no network; stop, resume, BUSY, and
//! token merging for slow readers.
// In a test a panic is a failed test: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// An OpenAI-compatible backend. The requested `model` picks the behaviour.
struct Backend {
    port: u16,
    requests: Arc<Mutex<Vec<Value>>>,
}

const DELTAS: [&str; 4] = ["Hello", ",", " world", "!"];

fn chunk(content: Option<&str>, finish: Option<&str>) -> String {
    let delta = match content {
        Some(c) => json!({"content": c}),
        None => json!({}),
    };
    format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    )
}

fn serve_one(mut s: TcpStream, requests: Arc<Mutex<Vec<Value>>>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut len = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    let req: Value = serde_json::from_slice(&body).unwrap();
    let model = req["model"].as_str().unwrap_or("").to_string();
    let seen = {
        let mut all = requests.lock().unwrap();
        all.push(req);
        all.iter().filter(|r| r["model"] == model.as_str()).count()
    };
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    let role = format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
    );
    let mut w = |t: &str| {
        let _ = s.write_all(t.as_bytes());
        let _ = s.flush();
    };
    let busy = |status: &str, retry_after: &str| {
        let body = r#"{"error":{"message":"overloaded, try later","type":"rate_limit"}}"#;
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nRetry-After: {retry_after}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    };
    match model.as_str() {
        // Busy twice, then a normal reply.
        "flaky" if seen <= 2 => w(&busy("503 Service Unavailable", "0.05")),
        // Always rate-limited.
        "limited" => w(&busy("429 Too Many Requests", "0")),
        "http500" => {
            let body = r#"{"error":{"message":"backend exploded","type":"server_error"}}"#;
            w(&format!("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
        }
        "garbage" => {
            w(head);
            w(&role);
            w(&chunk(Some("partial"), None));
            w("data: {this is not json\n\n");
            std::thread::sleep(Duration::from_millis(200));
        }
        "hugeline" => {
            // One line of 2 MiB that never ends: the server must stop reading at its cap.
            w(head);
            w(&role);
            w(&chunk(Some("before"), None));
            let junk = "x".repeat(64 * 1024);
            for _ in 0..32 {
                w(&junk);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        "stall" => {
            w(head);
            w(&role);
            w(&chunk(Some("waiting"), None));
            std::thread::sleep(Duration::from_secs(3));
        }
        "reset" => {
            w(head);
            w(&role);
            w(&chunk(Some("one"), None));
            w(&chunk(Some(" two"), None));
            std::thread::sleep(Duration::from_millis(50));
            let sock = socket2::Socket::from(s);
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(sock); // RST
        }
        "slow" | "flood" => {
            let (n, pause) = if model == "slow" {
                (60, Duration::from_millis(25))
            } else {
                (20_000, Duration::ZERO)
            };
            w(head);
            w(&role);
            let mut buf = String::new();
            for i in 0..n {
                buf.push_str(&chunk(Some(&format!("t{i} ")), None));
                if !pause.is_zero() || buf.len() > 16_000 {
                    w(&buf);
                    buf.clear();
                    std::thread::sleep(pause);
                }
            }
            w(&buf);
            w(&chunk(None, Some("stop")));
            w("data: [DONE]\n\n");
        }
        _ => {
            w(head);
            w(&role);
            for d in DELTAS {
                w(&chunk(Some(d), None));
                std::thread::sleep(Duration::from_millis(5));
            }
            w(&chunk(None, Some("stop")));
            w(&format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}})
            ));
            w("data: [DONE]\n\n");
        }
    }
}

impl Backend {
    fn start() -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<Value>>> = Arc::default();
        let r2 = requests.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let r = r2.clone();
                std::thread::spawn(move || serve_one(s, r));
            }
        });
        Backend { port, requests }
    }
}

fn openai_server(tag: &str, b: &Backend) -> TestServer {
    let port = b.port;
    TestServer::start(tag, move |c| {
        c.llm.provider = confab::config::ProviderKind::OpenAi;
        c.llm.base_url = format!("http://127.0.0.1:{port}/v1");
        c.llm.read_timeout = Duration::from_millis(500);
        c.llm.first_token_timeout = Duration::from_secs(2);
        for a in c.agents.values_mut() {
            a.provider = confab::config::ProviderKind::OpenAi;
            a.price_prompt_per_1k = 1.0;
            a.price_completion_per_1k = 2.0;
        }
    })
}

/// Send a chat and collect everything up to `complete`.
struct Reply {
    ack: Value,
    tokens: Vec<(u64, String)>,
    /// Deltas received (a merged event carries `count`).
    deltas: u64,
    steps: Vec<String>,
    errors: Vec<Value>,
    complete: Value,
}

fn ask(c: &mut Client, id: &str, msg: Value) -> Reply {
    c.send(msg);
    let mut r = Reply {
        ack: Value::Null,
        tokens: vec![],
        deltas: 0,
        steps: vec![],
        errors: vec![],
        complete: Value::Null,
    };
    loop {
        let ev = c.recv();
        match ev["type"].as_str().unwrap() {
            "ack" => {
                assert_eq!(ev["id"], id);
                r.ack = ev;
            }
            "progress" => r.steps.push(ev["step"].as_str().unwrap().to_string()),
            "token" => {
                assert_eq!(
                    ev["index"].as_u64().unwrap(),
                    r.deltas,
                    "indexes are contiguous"
                );
                r.deltas += ev["count"].as_u64().unwrap_or(1);
                r.tokens.push((
                    ev["index"].as_u64().unwrap(),
                    ev["token"].as_str().unwrap().to_string(),
                ))
            }
            "error" => r.errors.push(ev),
            "complete" => {
                r.complete = ev;
                return r;
            }
            _ => {}
        }
    }
}

#[test]
fn tokens_equal_the_backends_deltas_in_order_and_usage_is_the_backends() {
    let b = Backend::start();
    let s = openai_server("openai-ok", &b);
    let mut c = s.client("olga");
    let r = ask(
        &mut c,
        "q1",
        json!({"type": "chat", "id": "q1", "message": "Say hello", "model": "ok"}),
    );
    assert_eq!(r.steps, ["queued", "loading_context", "generating"]);
    // Deltas that queue up within one event-loop turn may arrive merged (with `count`);
    // either way the text, the order and the number of deltas are the backend's.
    let texts: Vec<&str> = r.tokens.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts.concat(), DELTAS.concat());
    assert_eq!(r.deltas, DELTAS.len() as u64);
    if texts.len() == DELTAS.len() {
        assert_eq!(texts, DELTAS);
        assert_eq!(
            r.tokens.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }
    let done = &r.complete;
    assert_eq!(done["response"], "Hello, world!");
    assert_eq!(done["finish_reason"], "stop");
    let m = &done["metadata"];
    assert_eq!(
        (
            m["prompt_tokens"].as_u64(),
            m["completion_tokens"].as_u64(),
            m["total_tokens"].as_u64()
        ),
        (Some(11), Some(4), Some(15))
    );
    assert_eq!(m["model"], "ok");
    assert_eq!(m["agent"], "assistant");
    assert!(
        (m["cost_usd"].as_f64().unwrap() - (0.011 + 0.008)).abs() < 1e-9,
        "{m}"
    );
    assert!(m["first_token_ms"].as_u64().is_some() && m["response_time_ms"].as_u64().is_some());
    assert_eq!(done["seq"], 2);
    let req = b.requests.lock().unwrap()[0].clone();
    assert_eq!(req["stream"], true);
    assert_eq!(req["stream_options"]["include_usage"], true);
    assert_eq!(req["messages"][0]["role"], "system");
    assert_eq!(
        req["messages"][1],
        json!({"role": "user", "content": "Say hello"})
    );

    // The next turn sends the conversation so far as context; the reply is stored.
    let conv = r.ack["conversation_id"].as_str().unwrap().to_string();
    ask(
        &mut c,
        "q2",
        json!({"type": "chat", "id": "q2", "message": "Again", "model": "ok", "conversation_id": conv}),
    );
    let req = b.requests.lock().unwrap()[1].clone();
    let roles: Vec<&str> = req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(req["messages"][2]["content"], "Hello, world!");
    let (_, h) = s.http(
        "GET",
        &format!("/v1/conversations/{conv}/messages"),
        Some(&s.token("olga")),
        None,
    );
    let stored: Vec<(&str, &str)> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stored,
        [
            ("user", "complete"),
            ("assistant", "complete"),
            ("user", "complete"),
            ("assistant", "complete")
        ]
    );
}

#[test]
fn backend_failures_become_llm_error_and_complete_with_error_and_the_partial_reply_is_kept() {
    let b = Backend::start();
    let s = openai_server("openai-errors", &b);
    let mut c = s.client("eve");
    for (model, partial, needle) in [
        ("http500", "", "backend exploded"),
        ("limited", "", "429"),
        ("garbage", "partial", "malformed"),
        ("stall", "waiting", "timed out"),
        ("reset", "one two", "mid-stream"),
        ("hugeline", "before", "max_sse_line_bytes"),
    ] {
        let r = ask(
            &mut c,
            model,
            json!({"type": "chat", "id": model, "message": "go", "model": model}),
        );
        assert_eq!(r.complete["finish_reason"], "error", "{model}");
        assert_eq!(r.complete["response"], partial, "{model}");
        assert_eq!(r.errors.len(), 1, "{model}: {:?}", r.errors);
        assert_eq!(r.errors[0]["code"], "LLM_ERROR");
        let text = r.errors[0]["error"].as_str().unwrap().to_lowercase();
        assert!(text.contains(needle), "{model}: {text}");
        let conv = r.ack["conversation_id"].as_str().unwrap();
        let (_, h) = s.http(
            "GET",
            &format!("/v1/conversations/{conv}/messages"),
            Some(&s.token("eve")),
            None,
        );
        let asst = &h["messages"][1];
        assert_eq!(
            (asst["status"].as_str(), asst["content"].as_str()),
            (Some("error"), Some(partial)),
            "{model}: {h}"
        );
        // History keeps what `complete` said; a reply that failed before its first
        // token is not charged for a prompt the backend never ran.
        assert_eq!(asst["meta"]["finish_reason"], "error", "{model}: {h}");
        if partial.is_empty() {
            assert_eq!(r.complete["metadata"]["prompt_tokens"], 0, "{model}");
            assert_eq!(asst["meta"]["prompt_tokens"], 0, "{model}");
        }
    }
    // Nothing listening at all.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s2 = TestServer::start("openai-refused", move |c| {
        c.llm.provider = confab::config::ProviderKind::OpenAi;
        c.llm.base_url = format!("http://127.0.0.1:{dead}/v1");
        for a in c.agents.values_mut() {
            a.provider = confab::config::ProviderKind::OpenAi;
        }
    });
    let mut c = s2.client("eve");
    let r = ask(
        &mut c,
        "r",
        json!({"type": "chat", "id": "r", "message": "go"}),
    );
    assert_eq!(r.complete["finish_reason"], "error");
    assert!(
        r.errors[0]["error"].as_str().unwrap().contains("reach"),
        "{:?}",
        r.errors
    );
}

#[test]
fn the_demo_provider_streams_with_no_network() {
    let s = TestServer::start("demo", |_| {});
    let mut c = s.client("dora");
    let r = ask(
        &mut c,
        "d",
        json!({"type": "chat", "id": "d", "message": "What can you do?"}),
    );
    let text: String = r.tokens.iter().map(|(_, t)| t.as_str()).collect();
    assert!(r.tokens.len() > 20);
    assert_eq!(text, r.complete["response"].as_str().unwrap());
    assert!(text.contains("demo model") && text.contains("What can you do?"));
    assert_eq!(
        r.complete["metadata"]["completion_tokens"].as_u64(),
        Some(r.deltas)
    );
}

#[test]
fn stop_from_another_connection_cancels_within_a_chunk() {
    let s = TestServer::start("stop", |c| c.llm.demo_tokens_per_s = 20.0);
    let mut a = s.client("stan");
    a.send(json!({"type": "chat", "id": "s", "message": "talk"}));
    let conv = a.recv_type("ack")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    a.recv_type("token");
    a.recv_type("token");
    let mut b = s.client("stan");
    b.send(json!({"type": "stop", "conversation_id": conv}));
    let done = a.recv_type("complete");
    assert_eq!(done["finish_reason"], "cancelled");
    let n = done["metadata"]["completion_tokens"].as_u64().unwrap();
    assert!((2..10).contains(&n), "{n}");
    // Someone else cannot stop it; nothing to stop is NOT_FOUND.
    let mut other = s.client("mallory");
    other.send(json!({"type": "stop", "conversation_id": conv}));
    assert_eq!(other.recv_type("error")["code"], "NOT_FOUND");
    let (_, h) = s.http(
        "GET",
        &format!("/v1/conversations/{conv}/messages"),
        Some(&s.token("stan")),
        None,
    );
    assert_eq!(h["messages"][1]["status"], "cancelled");
    assert_eq!(h["messages"][1]["content"], done["response"]);
}

#[test]
fn a_reply_survives_its_clients_disconnect_and_a_resume_mid_stream_rebuilds_the_exact_text() {
    let b = Backend::start();
    let s = openai_server("resume-mid", &b);
    let mut a = s.client("rex");
    a.send(json!({"type": "chat", "id": "r", "message": "long one", "model": "slow"}));
    let conv = a.recv_type("ack")["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..5 {
        a.recv_type("token");
    }
    drop(a); // the client goes away mid-stream
    std::thread::sleep(Duration::from_millis(100));
    let mut b2 = s.client("rex");
    b2.send(json!({"type": "subscribe", "conversation_id": conv, "after_seq": 0}));
    let mut text = String::new();
    let mut next_index: Option<u64> = None;
    let mut saw_streaming = false;
    let done = loop {
        let ev = b2.recv();
        match ev["type"].as_str().unwrap() {
            "message_added" if ev["message"]["role"] == "assistant" => {
                assert_eq!(ev["message"]["status"], "streaming");
                saw_streaming = true;
                text = ev["message"]["content"].as_str().unwrap().to_string();
                assert!(!text.is_empty(), "five tokens were already generated");
            }
            "token" => {
                let i = ev["index"].as_u64().unwrap();
                if let Some(n) = next_index {
                    assert_eq!(i, n, "no gap, no duplicate");
                }
                next_index = Some(i + ev["count"].as_u64().unwrap_or(1));
                text.push_str(ev["token"].as_str().unwrap());
            }
            "complete" => break ev,
            _ => {}
        }
    };
    assert!(saw_streaming);
    assert_eq!(text, done["response"].as_str().unwrap());
    assert_eq!(done["finish_reason"], "stop");
    let expected: String = (0..60).map(|i| format!("t{i} ")).collect();
    assert_eq!(text, expected);
}

#[test]
fn a_full_generation_queue_answers_busy_with_retry_after() {
    let s = TestServer::start("busy", |c| {
        c.llm.workers = 1;
        c.llm.queue = 1;
        c.llm.demo_tokens_per_s = 5.0;
    });
    let mut c = s.client("bea");
    c.send(json!({"type": "chat", "id": "1", "message": "a"}));
    c.recv_type("ack");
    c.send(json!({"type": "chat", "id": "2", "message": "b"}));
    c.recv_type("ack");
    c.send(json!({"type": "chat", "id": "3", "message": "c"}));
    let e = c.recv_type("error");
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("BUSY"), Some("3"))
    );
    assert!(e["retry_after"].as_f64().unwrap() > 0.0);
    // A chat that wants no AI reply is still accepted.
    c.send(json!({"type": "chat", "id": "4", "message": "d", "ai": false}));
    assert_eq!(c.recv_type("ack")["id"], "4");
}

#[test]
fn a_slow_reader_gets_merged_token_events_with_the_same_text() {
    let b = Backend::start();
    let s = openai_server("merge", &b);
    let t = s.token("slowpoke");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    // A small MSS too: with loopback's 64 KiB MSS a 4 KiB receive buffer can never
    // advertise a window of one segment, so after the client starts reading the sender
    // waits on TCP's zero-window probe timer (backing off towards 120 s) instead of
    // window updates; this test then took minutes about one run in ten.
    sock.set_tcp_mss(1024).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut ws, _) = tungstenite::client(
        s.url(&format!("/v1/ws?token={t}"))
            .into_client_request()
            .unwrap(),
        stream,
    )
    .unwrap();
    ws.send(Message::text(
        json!({"type": "chat", "id": "m", "message": "flood me", "model": "flood"}).to_string(),
    ))
    .unwrap();
    // Do not read until the whole reply was generated.
    let m = &s.ctx().metrics;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while m.llm_completed.load(Relaxed) < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "generation did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut text = String::new();
    let mut events = 0;
    let mut next = 0u64;
    let done = loop {
        let Message::Text(t) = ws.read().unwrap() else {
            continue;
        };
        let ev: Value = serde_json::from_str(&t).unwrap();
        match ev["type"].as_str().unwrap() {
            "token" => {
                events += 1;
                assert_eq!(
                    ev["index"].as_u64().unwrap(),
                    next,
                    "merged events keep the first index"
                );
                let tok = ev["token"].as_str().unwrap();
                assert_eq!(
                    ev["count"].as_u64().unwrap_or(1),
                    tok.split_whitespace().count() as u64
                );
                next += ev["count"].as_u64().unwrap_or(1);
                text.push_str(tok);
            }
            "complete" => break ev,
            _ => {}
        }
    };
    assert_eq!(text, done["response"].as_str().unwrap());
    assert_eq!(next, 20_000);
    assert!(events < 20_000, "no merging happened ({events} events)");
    assert!(s.ctx().net.metrics.token_merges.load(Relaxed) > 0);
}

#[test]
fn a_busy_backend_is_retried_before_the_first_token() {
    let b = Backend::start();
    let s = openai_server("openai-retry", &b);
    let mut c = s.client("patient");
    let r = ask(
        &mut c,
        "f",
        json!({"type": "chat", "id": "f", "message": "go", "model": "flaky"}),
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.complete["finish_reason"], "stop");
    assert_eq!(r.complete["response"], DELTAS.concat());
    let n = b
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["model"] == "flaky")
        .count();
    assert_eq!(n, 3, "two 503s, then the reply");
}
