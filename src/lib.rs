//! confab — a self-hosted, real-time AI chat server.
//!
//! ```text
//!                 clients: ws:// wss:// and plain HTTP on one port
//!                                   │
//!                          acceptor thread (server.rs)
//!                 least-loaded hand-off through each shard's inbox
//!          ┌────────────────────────┼────────────────────────┐
//!          ▼                        ▼                        ▼
//!   shard 0 (shard.rs)        shard 1               …   shard N-1      N = cores
//!   mio Poll, Slab<Conn>, timer heap, local subscription lists,
//!   inbox = bounded crossbeam channel + mio::Waker
//!          │ try_send                ▲ ShardMsg (acks, tokens, fan-out, HTTP answers)
//!          ▼                         │
//!   ┌───────────── hub (hub.rs): striped RwLock/Mutex maps ─────────────┐
//!   │ conversation → shards holding subscribers; user → connections;    │
//!   │ generations in flight (generation.rs)                             │
//!   └────────────────────────────────────────────────────────────────────┘
//!          │ jobs (bounded)                    │ writes (bounded)
//!          ▼                                   ▼
//!   generation workers (llm/)            store writer (store/): one thread,
//!   blocking ureq / demo model           SQLite WAL, group commit, acks after COMMIT
//!   store readers (store/): own connections, history / replay / lists
//!   upload workers (uploads.rs): chunk → file under files/tmp, SHA-256, then a store row
//! ```
//!
//! Ownership: a shard owns its sockets outright; everything else reaches a connection by
//! sending a [`shard::ShardMsg`] naming a [`shard::ConnId`] (stale ids are dropped). Shards
//! never block; workers and the store writer may block on a shard's full inbox, which is
//! the back-pressure. See `docs/architecture.md` for the full picture.

pub mod api;
pub mod app;
pub mod auth;
pub mod chat;
pub mod codec;
pub mod completion;
pub mod config;
pub mod generation;
pub mod hub;
pub mod llm;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod ratelimit;
pub mod rooms;
pub mod rooms_api;
pub mod routes;
pub mod server;
pub mod session;
pub mod store;
pub mod subscription;
pub mod topic;
pub mod uploads;

pub use config::Config;
pub use server::ServerHandle;
