//! The store writer's batch: N chat messages (idempotency check, seq assignment, insert)
//! in one transaction with a savepoint each, then COMMIT — on a real SQLite file.
// A bench that cannot set up has nothing to measure: unwrap is its error handling.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::hint::black_box;

use confab::store::idempotency::Window;
use confab::store::writer::{append_chat, ChatInput, Idempotency, WriterState};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn store(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("confab-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut g = c.benchmark_group("store_batch_commit");
    for (label, full) in [("synchronous_normal", false), ("synchronous_full", true)] {
        let mut conn =
            confab::store::open_writer(&dir.join(format!("{label}.db")), full, 4096).unwrap();
        // The single box's writer: the idempotency window in memory.
        let window = Window::new(86_400_000, 1_000_000);
        let mut st = WriterState::new(86_400_000, Idempotency::Memory(window));
        let mut n = 0u64;
        // 100 conversations, like 100 concurrent senders.
        for k in 0..100 {
            let tx = conn.transaction().unwrap();
            let input = ChatInput {
                user_id: format!("u{k}"),
                user_name: "U".into(),
                client_id: None,
                conversation_id: format!("c{k}"),
                create: true,
                room_id: None,
                text: "first".into(),
                assistant: None,
                is_admin: false,
            };
            append_chat(&tx, &mut st, &input).unwrap();
            tx.commit().unwrap();
        }
        let batch = 100u64;
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::new(label, batch), &batch, |b, &batch| {
            b.iter(|| {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .unwrap();
                for i in 0..batch {
                    n += 1;
                    tx.execute_batch("SAVEPOINT job").unwrap();
                    let input = ChatInput {
                        user_id: format!("u{}", i % 100),
                        user_name: "U".into(),
                        client_id: Some(format!("m{n}")),
                        conversation_id: format!("c{}", i % 100),
                        create: false,
                        room_id: None,
                        text: "a message of ordinary length for a chat".into(),
                        assistant: None,
                        is_admin: false,
                    };
                    black_box(append_chat(&tx, &mut st, &input).unwrap());
                    tx.execute_batch("RELEASE job").unwrap();
                    st.job_done(true);
                }
                tx.commit().unwrap();
                st.batch_done(true);
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, store);
criterion_main!(benches);
