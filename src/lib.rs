//! confab — a self-hosted, real-time AI chat server.
//!
//! Three layers (docs/architecture.md draws them):
//! - [`net`]: the transport — acceptor, sharded mio event loops, connections, TLS, HTTP
//!   heads, WebSocket frames, out-queues, timers, the cross-thread bus and topic index. It
//!   calls the application through one trait, [`net::App`], and knows nothing of chats.
//! - the application: [`app`] implements `net::App` over [`server::ServerCtx`];
//!   [`session`] and [`subscription`] hold per-connection state and rules; [`codec`]
//!   picks the wire form per path, and [`dialect`] translates the seed documents' own
//!   protocols on theirs; [`chat`], [`rooms`], [`uploads`] and the HTTP modules
//!   do what each request asks; [`completion`] routes what the store answers; [`llm`]
//!   streams replies.
//! - [`store`]: SQLite — one writer thread with group commit, a pool of readers; typed
//!   commands in, typed results out through [`store::Completions`].
//!
//! ```text
//!   acceptor ─Accept─▶ shard 0..N-1 (net::Shard<ServerCtx>) ──try_send──▶ store writer,
//!                        ▲   inbox: ShardMsg (sockets, topics,       store readers,
//!                        │   HTTP answers, AppMsg)                   llm workers,
//!                        └──────────── blocking sends (MayBlock) ──── upload workers
//! ```
//!
//! Ownership: a shard owns its sockets outright; everything else reaches a connection by
//! sending a [`net::ShardMsg`] naming a [`net::ConnId`] (stale ids are dropped). Shards
//! never block; workers and the store writer may block on a shard's full inbox, which is
//! the back-pressure. No closure crosses a thread.

pub mod api;
pub mod app;
pub mod auth;
pub mod chat;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod codec;
pub mod completion;
pub mod config;
pub mod dialect;
pub mod generation;
pub mod handoff;
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
pub mod subscribe;
pub mod subscription;
pub mod topic;
pub mod uploads;
pub mod vecmap;

pub use config::Config;
pub use server::ServerHandle;
