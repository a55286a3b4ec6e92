//! Rooms on a native connection: `join_room`, `leave_room`, presence.
//!
//! A room is a conversation with a name, a type and members (table `members`). Joining
//! goes through the store writer (membership check, creation when allowed) and then
//! subscribes the connection with a replay from the room's `last_seq` as of the join
//! commit — or from the client's `after_seq` to catch up — so nothing committed around
//! the join is missed. Presence is per user, not per tab: `joined` when a user's first
//! connection enters the room, `left` when their last one leaves or disconnects.

use std::sync::Arc;

use crate::app::{Shard, ShardExt};
use crate::auth::User;
use crate::chat::new_conversation_id;
use crate::completion::Reply;
use crate::net::ConnId;
use crate::protocol::{now_rfc3339, ErrorCode, Event};
use crate::session::AutoJoin;
use crate::session::{send_error, send_error_retry};
use crate::store::writer;
use crate::store::WriteCmd;
use crate::subscribe::subscribe;

pub fn join(
    shard: &mut Shard,
    slot: usize,
    user: &Arc<User>,
    id: Option<String>,
    req: AutoJoin,
    after_seq: Option<i64>,
) {
    let Some(conn_id) = shard.conn_id(slot) else {
        return;
    };
    let ctx = shard.app().clone();
    let create_allowed = ctx.cfg.rooms.create_on_join;
    let cmd = WriteCmd::JoinRoom {
        user_id: user.id.clone(),
        user_name: user.name.clone(),
        admin: user.admin,
        room_id: req.room_id,
        room_name: req.room_name,
        room_type: req.room_type,
        create_allowed,
        new_conversation_id: new_conversation_id(),
    };
    let reply = Reply::Join {
        conn: conn_id,
        id: id.clone(),
        user: user.clone(),
        after_seq,
    };
    if ctx.store.try_write(cmd, reply).is_err() {
        send_error_retry(shard, slot, ErrorCode::Busy, "the store is busy", id, 0.5);
    }
}

/// On the shard, after the join committed.
pub fn joined(
    shard: &mut Shard,
    slot: usize,
    user: &Arc<User>,
    id: Option<String>,
    room: writer::RoomRow,
    after_seq: Option<i64>,
) {
    let conv: Arc<str> = shard
        .topic_key(&room.conversation_id)
        .unwrap_or_else(|| Arc::from(room.conversation_id.as_str()));
    // Another local member's copy of the room id, if there is one: shared, like `conv`.
    let room_key: Arc<str> = shard
        .topic_member(&conv)
        .and_then(|s| shard.session(s))
        .and_then(|ws| ws.rooms.get_key_value(room.room_id.as_str()))
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| Arc::from(room.room_id.as_str()));
    let already = {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        if room.ai {
            let ai_rooms = &mut ws.extras_mut().ai_rooms;
            if !ai_rooms.contains(&room_key) {
                ai_rooms.push(room_key.clone());
            }
        }
        ws.rooms.insert(room_key.clone(), conv.clone()).is_some()
    };
    if !already && shard.app().hub.presence_add(&conv, &user.id, &user.name) {
        shard
            .app()
            .presence_changed(&room.room_id, &conv, user, true, true);
    }
    let (participants, participant_count) = shard.app().presence_shown(&conv);
    shard.send(
        slot,
        &Event::RoomJoined {
            id: id.clone(),
            room_id: room.room_id.clone(),
            room_name: room.room_name.clone(),
            room_type: room.room_type.as_str(),
            conversation_id: room.conversation_id.clone(),
            participants,
            participant_count,
            joined_at: now_rfc3339(),
            last_seq: room.last_seq,
        },
    );
    // Replay what was missed (or nothing: from the seq at join time), then live events.
    let from = after_seq.unwrap_or(room.last_seq);
    let already_live = shard
        .session_mut(slot)
        .is_some_and(|ws| ws.subs.contains_key(&conv));
    if !already_live || after_seq.is_some() {
        subscribe(shard, slot, user, None, conv, from, None);
    }
}

pub fn leave(shard: &mut Shard, slot: usize, user: &Arc<User>, id: Option<String>, room_id: &str) {
    let conv = {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        if let Some(e) = ws.extras.as_mut() {
            e.ai_rooms.retain(|r| &**r != room_id);
        }
        ws.tidy();
        let Some(conv) = ws.rooms.remove(room_id) else {
            return send_error(
                shard,
                slot,
                ErrorCode::NotFound,
                &format!("not in room {room_id} on this connection"),
                id,
            );
        };
        ws.subs.remove(&conv);
        let was_typing = ws
            .extras
            .as_mut()
            .is_some_and(|e| e.typing.remove(&conv).is_some());
        ws.tidy();
        (conv, was_typing)
    };
    let (conv, was_typing) = conv;
    if was_typing {
        crate::chat::publish_typing_as(
            shard.app(),
            &conv,
            Some(room_id.to_string()),
            &user.id,
            &user.name,
            false,
            true,
        );
    }
    shard.unsubscribe(&conv, slot);
    if shard.app().hub.presence_remove(&conv, &user.id) {
        shard
            .app()
            .presence_changed(room_id, &conv, user, false, true);
    }
    shard.send(
        slot,
        &Event::RoomLeft {
            id,
            room_id: room_id.to_string(),
            reason: None,
        },
    );
}

pub fn on_disconnect(
    shard: &mut Shard,
    _id: ConnId,
    user: &Arc<User>,
    _left: usize,
    rooms: Vec<(Arc<str>, Arc<str>)>,
) {
    for (room_id, conv) in rooms {
        if shard.app().hub.presence_remove(&conv, &user.id) {
            shard
                .app()
                .presence_changed(&room_id, &conv, user, false, true);
        }
    }
}
