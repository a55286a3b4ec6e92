//! The per-connection sliding-window rate limiter (runs once per client message).
// A bench that cannot set up has nothing to measure: unwrap is its error handling.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::hint::black_box;
use std::time::Duration;

use confab::net::timer::Tick;
use confab::ratelimit::RateWindow;
use criterion::{criterion_group, criterion_main, Criterion};

fn ratelimit(c: &mut Criterion) {
    let start = Tick::now();
    let mut r = RateWindow::new(start);
    let mut t = start;
    c.bench_function("ratelimit_check", |b| {
        b.iter(|| {
            t += Duration::from_millis(1); // a Tick's resolution
            black_box(r.check(black_box(t), Duration::from_secs(10), 200))
        })
    });
}

criterion_group!(benches, ratelimit);
criterion_main!(benches);
