//! Conversations, rooms and AI replies on a native connection (filled in by the store,
//! LLM and rooms work).

use std::sync::Arc;

use crate::auth::User;
use crate::conn::AutoJoin;
use crate::protocol::{ClientMsg, ErrorCode};
use crate::session::{connected_event, send_error};
use crate::shard::{ConnId, Shard};

pub fn dispatch(shard: &mut Shard, slot: usize, _user: &Arc<User>, id: Option<String>, msg: ClientMsg) {
    let what = msg.type_name();
    send_error(shard, slot, ErrorCode::Internal, &format!("`{what}` is not available yet"), id);
}

pub fn on_connected(shard: &mut Shard, slot: usize, conn_id: ConnId, user: &Arc<User>, _auto_join: Option<AutoJoin>) {
    let ev = connected_event(shard, conn_id, user, Vec::new());
    shard.send(slot, &ev);
}

pub fn on_disconnect(_shard: &mut Shard, _id: ConnId, _user: &Arc<User>, _left: usize, _rooms: Vec<(Arc<str>, Arc<str>)>, _typing: Vec<Arc<str>>) {}

pub fn publish_typing(_shard: &mut Shard, _slot: usize, _conv: &Arc<str>, _on: bool) {}
