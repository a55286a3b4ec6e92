//! The JSON HTTP API beyond health and tokens: conversations, rooms, stats, files.

use crate::http::{Request, Response};
use crate::shard::Shard;

/// Requests answered on the shard without I/O. `None`: not one of these.
pub fn route(_shard: &mut Shard, _slot: usize, _req: &Request) -> Option<Response> {
    None
}

/// Requests that need the store: handed to the read pool. `false`: not one of these.
pub fn deferred(_shard: &mut Shard, _slot: usize, _req: &Request) -> bool {
    false
}
