//! Fan-out on a shard: one event, encoded once, queued to N local members and written
//! out of each queue. This is the shard's per-member work for a room broadcast (the share
//! per member of the encoded frame, the queue push with its byte accounting, the frame
//! header and the vectored write, here into `io::sink`); socket writes are measured end
//! to end by `confab-load broadcast`.
// A bench that cannot set up has nothing to measure: unwrap is its error handling.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::hint::black_box;
use std::sync::Arc;

use confab::codec::NATIVE;
use confab::net::outqueue::OutQueue;
use confab::net::stats::NetMetrics;
use confab::protocol::{Event, MessageView};
use confab::topic::{topic_event, topic_item, TopicKind};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_local");
    let metrics = NetMetrics::default();
    for n in [1_000usize, 10_000] {
        let mut queues: Vec<OutQueue> = (0..n).map(|_| OutQueue::new(1 << 20)).collect();
        let conv: Arc<str> = Arc::from("c_0123456789abcdef01234567");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let ev = Event::MessageAdded {
                    conversation_id: conv.to_string(),
                    room_id: Some("hall".into()),
                    message: MessageView {
                        id: 1,
                        seq: 2,
                        role: "user".into(),
                        author: "a".into(),
                        content: "ts:1795400000000000000".into(),
                        status: "complete".into(),
                        created_at: "t".into(),
                        updated_at: "t".into(),
                        meta: None,
                    },
                    replayed: None,
                };
                let te = topic_event(&conv, TopicKind::Added { seq: 2 }, ev);
                for q in queues.iter_mut() {
                    let _ = q.push(topic_item(black_box(&te), &NATIVE));
                }
                for q in queues.iter_mut() {
                    black_box(q.write_to(&mut std::io::sink(), &metrics));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
