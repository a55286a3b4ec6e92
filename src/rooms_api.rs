//! Rooms over HTTP: create, show, delete, add/remove members; admin broadcast.
//!
//! Writes go through the store writer like everything else; the HTTP answer is sent after
//! COMMIT. Deleting a room or removing a member also reaches the live connections:
//! members of a deleted room get `room_left` (reason `deleted`) and stop receiving its
//! events; a removed member's connections leave the room (reason `removed`).

use std::sync::Arc;

use serde_json::json;

use crate::api::{defer, StoreOp};
use crate::app::{AppMsg, ConnMsg, Shard, ShardExt};
use crate::auth::User;
use crate::chat::new_conversation_id;
use crate::completion::HttpThen;
use crate::net::http::{Request, Response};
use crate::net::{MayBlock, ShardMsg};
use crate::protocol::{now_rfc3339, ErrorCode, Event, RoomType};
use crate::routes::bearer_user;
use crate::server::ServerCtx;
use crate::store::writer::RoomRow;
use crate::store::{ReadCmd, ReadDone, WriteCmd, Written};
use crate::topic::topic_event;
use crate::topic::TopicKind;

fn respond(shard: &mut Shard, slot: usize, r: Response) {
    shard.respond(slot, r);
}

pub fn room_json(r: &RoomRow) -> serde_json::Value {
    json!({
        "room_id": r.room_id, "room_name": r.room_name, "room_type": r.room_type.as_str(),
        "conversation_id": r.conversation_id, "owner": r.owner, "last_seq": r.last_seq, "ai": r.ai,
    })
}

/// The HTTP answer to a committed room write (on the store writer's thread). Deleting a
/// room tells its live members; removing a member makes their connections leave.
pub fn render_written(ctx: &ServerCtx, then: HttpThen, w: Written) -> Response {
    match (then, w) {
        (HttpThen::RoomCreated { owner, members }, Written::RoomCreated(room)) => {
            let mut v = room_json(&room);
            let mut all = vec![owner.clone()];
            all.extend(members.into_iter().filter(|m| *m != owner));
            v["members"] = json!(all);
            Response::json_value(201, &v)
        }
        (HttpThen::RoomDeleted, Written::RoomDeleted(room)) => {
            let conv: Arc<str> = Arc::from(room.conversation_id.as_str());
            let ev = Event::RoomLeft {
                id: None,
                room_id: room.room_id.clone(),
                reason: Some("deleted"),
            };
            ctx.publish(
                MayBlock::worker(),
                topic_event(
                    &conv,
                    TopicKind::RoomClosed {
                        room_id: Arc::from(room.room_id.as_str()),
                    },
                    ev,
                ),
            );
            Response::json_value(200, &json!({"deleted": true, "room_id": room.room_id}))
        }
        (HttpThen::MemberChanged { member, add }, Written::MemberChanged(room)) => {
            if !add {
                kick_user(ctx, &member, &room.room_id, &room.conversation_id);
                #[cfg(feature = "cluster")]
                if let Some(c) = &ctx.cluster {
                    c.kick(&member, &room.room_id, &room.conversation_id);
                }
            }
            Response::json_value(
                200,
                &json!({"room_id": room.room_id, "user_id": member, "member": add}),
            )
        }
        (_, w) => {
            log::error!("rooms: unexpected store result {w:?}");
            Response::error(500, ErrorCode::Internal, "unexpected store result")
        }
    }
}

/// The HTTP answer to a room read (on a reader thread).
pub fn render_read(ctx: &ServerCtx, then: HttpThen, done: ReadDone) -> Response {
    match (then, done) {
        (HttpThen::Room, ReadDone::Room { room, members }) => {
            let members: Vec<_> = members
                .into_iter()
                .map(|(id, name)| json!({"user_id": id, "username": name}))
                .collect();
            let online: Vec<_> = ctx
                .presence_list(&room.conversation_id)
                .into_iter()
                .map(|(id, name)| json!({"user_id": id, "username": name}))
                .collect();
            let mut v = room_json(&room);
            v["members"] = json!(members);
            v["online_count"] = json!(online.len());
            v["online"] = json!(online);
            Response::json_value(200, &v)
        }
        (HttpThen::Broadcast { room_id, event }, ReadDone::RoomById(found)) => match found {
            Some(room) => {
                let conv: Arc<str> = Arc::from(room.conversation_id.as_str());
                ctx.publish(
                    MayBlock::worker(),
                    topic_event(&conv, TopicKind::Ephemeral, *event),
                );
                let n = ctx.net.topics.subscribers(&conv);
                Response::json_value(
                    200,
                    &json!({"sent": true, "scope": "room", "room_id": room_id, "connections": n}),
                )
            }
            None => Response::error(404, ErrorCode::NotFound, &format!("no room {room_id}")),
        },
        (_, done) => {
            log::error!("rooms: unexpected read result {done:?}");
            Response::error(500, ErrorCode::Internal, "unexpected store result")
        }
    }
}

fn body_json(req: &Request) -> Result<serde_json::Value, Response> {
    if req.body.is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_slice(&req.body) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        _ => Err(Response::error(
            400,
            ErrorCode::BadRequest,
            "body must be a JSON object",
        )),
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.contains('/')
}

/// Store-backed room requests. `false`: not one of these.
pub fn deferred(shard: &mut Shard, slot: usize, req: &Request) -> bool {
    let path = req.path.as_str();
    let method = req.method.as_str();
    let is_rooms = path == "/v1/rooms" || path.starts_with("/v1/rooms/");
    let is_broadcast = path == "/v1/broadcast";
    if !is_rooms && !is_broadcast {
        return false;
    }
    let user = match bearer_user(shard, req) {
        Ok(u) => Arc::new(u),
        Err(r) => {
            respond(shard, slot, r);
            return true;
        }
    };
    let body = match body_json(req) {
        Ok(b) => b,
        Err(r) => {
            respond(shard, slot, r);
            return true;
        }
    };
    let parts: Vec<String> = path
        .trim_start_matches("/v1/rooms")
        .split('/')
        .filter(|p| !p.is_empty())
        .map(crate::net::http::percent_decode)
        .collect();
    match (method, is_broadcast, parts.as_slice()) {
        ("POST", true, _) => broadcast(shard, slot, &user, &body),
        ("POST", false, []) => create(shard, slot, &user, &body),
        ("GET", false, [room]) => show(shard, slot, &user, room.clone()),
        ("DELETE", false, [room]) => delete(shard, slot, &user, room.clone()),
        ("POST", false, [room, m]) if m == "members" => {
            let Some(member) = body
                .get("user_id")
                .and_then(|v| v.as_str())
                .filter(|s| valid_id(s))
                .map(str::to_string)
            else {
                respond(
                    shard,
                    slot,
                    Response::error(400, ErrorCode::BadRequest, "field `user_id` is required"),
                );
                return true;
            };
            members(shard, slot, &user, room.clone(), member, true)
        }
        ("DELETE", false, [room, m, member]) if m == "members" => {
            members(shard, slot, &user, room.clone(), member.clone(), false)
        }
        _ => return false,
    }
    true
}

fn create(shard: &mut Shard, slot: usize, user: &Arc<User>, body: &serde_json::Value) {
    let room_id = match body.get("room_id").and_then(|v| v.as_str()) {
        Some(r) if valid_id(r) => r.to_string(),
        Some(_) => {
            return respond(
                shard,
                slot,
                Response::error(
                    400,
                    ErrorCode::BadRequest,
                    "`room_id` must be 1 to 128 characters without '/'",
                ),
            )
        }
        None => format!("r_{}", &new_conversation_id()[2..14]),
    };
    let room_type = match body.get("room_type").and_then(|v| v.as_str()) {
        None => RoomType::Shared,
        Some(t) => match RoomType::parse(t) {
            Some(t) => t,
            None => {
                return respond(
                    shard,
                    slot,
                    Response::error(
                        400,
                        ErrorCode::BadRequest,
                        "`room_type` must be private, shared or group",
                    ),
                )
            }
        },
    };
    let room_name = body
        .get("room_name")
        .and_then(|v| v.as_str())
        .unwrap_or(&room_id)
        .chars()
        .take(200)
        .collect::<String>();
    let members: Vec<String> = body
        .get("members")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str())
                .filter(|m| valid_id(m))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if members.len() as u32 > shard.app().cfg.rooms.max_members {
        return respond(
            shard,
            slot,
            Response::error(400, ErrorCode::BadRequest, "too many members"),
        );
    }
    let ai = body.get("ai").and_then(|v| v.as_bool()).unwrap_or(false);
    let cmd = WriteCmd::CreateRoom {
        room_id,
        room_name,
        room_type,
        owner: user.id.clone(),
        owner_name: user.name.clone(),
        members: members.clone(),
        ai,
        conversation_id: new_conversation_id(),
    };
    let then = HttpThen::RoomCreated {
        owner: user.id.clone(),
        members,
    };
    defer(shard, slot, StoreOp::Write(cmd), then);
}

fn show(shard: &mut Shard, slot: usize, user: &Arc<User>, room_id: String) {
    let cmd = ReadCmd::Room {
        room_id,
        user_id: user.id.clone(),
        admin: user.admin,
    };
    defer(shard, slot, StoreOp::Read(cmd), HttpThen::Room);
}

fn delete(shard: &mut Shard, slot: usize, user: &Arc<User>, room_id: String) {
    let cmd = WriteCmd::DeleteRoom {
        room_id,
        user_id: user.id.clone(),
        admin: user.admin,
    };
    defer(shard, slot, StoreOp::Write(cmd), HttpThen::RoomDeleted);
}

fn members(
    shard: &mut Shard,
    slot: usize,
    user: &Arc<User>,
    room_id: String,
    member: String,
    add: bool,
) {
    let cmd = WriteCmd::ChangeMember {
        room_id,
        user_id: user.id.clone(),
        admin: user.admin,
        member: member.clone(),
        add,
        max_members: shard.app().cfg.rooms.max_members,
    };
    defer(
        shard,
        slot,
        StoreOp::Write(cmd),
        HttpThen::MemberChanged { member, add },
    );
}

/// A member removed over HTTP: this connection leaves the room.
pub fn kick(shard: &mut Shard, slot: usize, room_id: &str, conv: &str) {
    let in_room = shard
        .session_mut(slot)
        .is_some_and(|ws| ws.rooms.contains_key(room_id));
    if !in_room {
        return;
    }
    let user = shard.session(slot).and_then(|s| s.user.clone());
    crate::session::room_closed_locally(shard, slot, Arc::from(room_id), Arc::from(conv));
    if let Some(u) = user {
        if !shard.app().hub.presence_online(conv, &u.id) {
            shard
                .app()
                .tell_presence(room_id, &Arc::from(conv), &u.id, &u.name, false);
        }
    }
    shard.send(
        slot,
        &Event::RoomLeft {
            id: None,
            room_id: room_id.to_string(),
            reason: Some("removed"),
        },
    );
}

fn broadcast(shard: &mut Shard, slot: usize, user: &Arc<User>, body: &serde_json::Value) {
    if !user.admin {
        return respond(
            shard,
            slot,
            Response::error(403, ErrorCode::Forbidden, "admin scope required"),
        );
    }
    let Some(message) = body
        .get("message")
        .and_then(|v| v.as_str())
        .filter(|m| !m.trim().is_empty())
        .map(str::to_string)
    else {
        return respond(
            shard,
            slot,
            Response::error(400, ErrorCode::BadRequest, "field `message` is required"),
        );
    };
    let room_id = body
        .get("room_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let user_ids: Option<Vec<String>> = match body.get("user_ids") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(a)) if a.iter().all(|u| u.is_string()) => Some(
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect(),
        ),
        Some(_) => {
            return respond(
                shard,
                slot,
                Response::error(
                    400,
                    ErrorCode::BadRequest,
                    "`user_ids` must be an array of user ids",
                ),
            )
        }
    };
    let ev = Event::System {
        room_id: room_id.clone(),
        message,
        from: user.name.clone(),
        timestamp: now_rfc3339(),
    };
    if let Some(users) = user_ids {
        let ctx = shard.app().clone();
        let sent = to_users(&ctx, &users, &ev);
        to_other_nodes(&ctx, Some(&users), &ev);
        return respond(
            shard,
            slot,
            Response::json_value(
                200,
                &json!({"sent": true, "scope": "users", "users": users.len(), "connections": sent}),
            ),
        );
    }
    match room_id {
        None => {
            let ctx = shard.app().clone();
            to_all(&ctx, &ev);
            to_other_nodes(&ctx, None, &ev);
            let n = ctx
                .net
                .metrics
                .ws_connections
                .load(std::sync::atomic::Ordering::Relaxed);
            respond(
                shard,
                slot,
                Response::json_value(
                    200,
                    &json!({"sent": true, "scope": "all", "connections": n}),
                ),
            );
        }
        Some(rid) => {
            let cmd = ReadCmd::RoomById {
                room_id: rid.clone(),
            };
            let then = HttpThen::Broadcast {
                room_id: rid,
                event: Box::new(ev),
            };
            defer(shard, slot, StoreOp::Read(cmd), then);
        }
    }
}

/// A broadcast to these users' connections on this node (a full shard inbox skips one).
/// Returns how many connections it went to.
pub fn to_users(ctx: &ServerCtx, users: &[String], ev: &Event) -> usize {
    let mut sent = 0;
    for u in users {
        for c in ctx.hub.user_connections(u) {
            // Encoded by the receiving shard, in the connection's own form.
            let msg = ConnMsg::Event(Box::new(crate::codec::Encoded::lazy(ev.clone())));
            if ctx
                .net
                .shards
                .try_send(c.shard as usize, ShardMsg::App(AppMsg::Conn(c, msg)))
            {
                sent += 1;
            }
        }
    }
    sent
}

/// A broadcast to every connection on this node: one message per shard, each writes to
/// its own connections.
pub fn to_all(ctx: &ServerCtx, ev: &Event) {
    let shared = Arc::new(crate::codec::Encoded::new(ev.clone()));
    for s in 0..ctx.net.shards.len() {
        ctx.net
            .shards
            .try_send(s, ShardMsg::App(AppMsg::All(shared.clone())));
    }
}

/// In cluster mode the other nodes deliver the broadcast to their own connections (the
/// answer's counts are this node's).
#[allow(unused_variables)]
fn to_other_nodes(ctx: &ServerCtx, users: Option<&[String]>, ev: &Event) {
    #[cfg(feature = "cluster")]
    if let Some(c) = &ctx.cluster {
        c.broadcast(users, ev);
    }
}

/// A user removed from a room: their connections on this node leave it now.
pub fn kick_user(ctx: &ServerCtx, user: &str, room_id: &str, conversation_id: &str) {
    for c in ctx.hub.user_connections(user) {
        ctx.to_shard(
            c,
            ConnMsg::Kick {
                room_id: room_id.to_string(),
                conversation_id: conversation_id.to_string(),
            },
        );
    }
}
