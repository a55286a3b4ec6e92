//! Parsing an OpenAI-style SSE stream line by line.
// A bench that cannot set up has nothing to measure: unwrap is its error handling.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::hint::black_box;

use confab::llm::sse::SseParser;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn sse(c: &mut Criterion) {
    let mut lines = Vec::new();
    for i in 0..100 {
        lines.push(format!(r#"data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":" tok{i}"}},"finish_reason":null}}]}}"#));
        lines.push(String::new());
    }
    lines.push("data: [DONE]".into());
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_100_chunks", |b| {
        b.iter(|| {
            let mut p = SseParser::default();
            let mut n = 0;
            for l in &lines {
                if p.line(black_box(l)).unwrap().is_some() {
                    n += 1;
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, sse);
criterion_main!(benches);
