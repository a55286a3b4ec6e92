//! Rooms over HTTP: create, show, delete, members; admin broadcast.

use crate::http::Request;
use crate::shard::Shard;

/// Store-backed room requests. `false`: not one of these.
pub fn deferred(_shard: &mut Shard, _slot: usize, _req: &Request) -> bool {
    false
}
