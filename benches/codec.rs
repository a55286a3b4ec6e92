//! Protocol decode (simd-json DOM into a typed message) and event encode (serde).
// A bench that cannot set up has nothing to measure: unwrap is its error handling.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::hint::black_box;

use confab::protocol::{Decoder, Event, MessageView};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let chat = r#"{"type":"chat","id":"c-123","message":"What is the engine power of the model X?","conversation_id":"c_0123456789abcdef01234567","temperature":0.5}"#;
    let ping = r#"{"type":"ping","id":"p1"}"#;
    let mut d = Decoder::default();
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_chat_130B", |b| {
        b.iter(|| black_box(d.decode(black_box(chat)).unwrap()))
    });
    g.bench_function("decode_ping", |b| {
        b.iter(|| black_box(d.decode(black_box(ping)).unwrap()))
    });
    g.bench_function("decode_malformed", |b| {
        b.iter(|| black_box(d.decode(black_box("{\"type\":\"chat\",")).is_err()))
    });
    let token = Event::Token {
        conversation_id: "c_0123456789abcdef01234567".into(),
        message_id: 42,
        index: 17,
        token: " engine".into(),
        count: None,
    };
    g.bench_function("encode_token", |b| {
        b.iter(|| black_box(black_box(&token).encode()))
    });
    let added = Event::MessageAdded {
        conversation_id: "c_0123456789abcdef01234567".into(),
        room_id: Some("lobby".into()),
        message: MessageView {
            id: 1234,
            seq: 99,
            role: "user".into(),
            author: "alice".into(),
            content: "Hello everyone, the deploy is done.".into(),
            status: "complete".into(),
            created_at: "2026-11-23T01:31:23.123Z".into(),
            updated_at: "2026-11-23T01:31:23.123Z".into(),
            meta: None,
        },
        replayed: None,
    };
    g.bench_function("encode_message_added", |b| {
        b.iter(|| black_box(black_box(&added).encode()))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
