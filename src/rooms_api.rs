//! Rooms over HTTP: create, show, delete, add/remove members; admin broadcast.
//!
//! Writes go through the store writer like everything else; the HTTP answer is sent after
//! COMMIT. Deleting a room or removing a member also reaches the live connections:
//! members of a deleted room get `room_left` (reason `deleted`) and stop receiving its
//! events; a removed member's connections leave the room (reason `removed`).

use std::sync::Arc;

use serde_json::json;

use crate::api::{reply, store_error};
use crate::app::{AppMsg, Shard, ShardExt};
use crate::auth::User;
use crate::chat::{new_conversation_id, run_on};
use crate::net::http::{Request, Response};
use crate::net::{MayBlock, ShardMsg};
use crate::protocol::{now_rfc3339, ErrorCode, Event, RoomType};
use crate::routes::bearer_user;
use crate::server::ServerCtx;
use crate::store::writer::{self, RoomRow};
use crate::store::{StoreError, WriteJob};
use crate::topic::topic_event;
use crate::topic::TopicKind;

fn respond(shard: &mut Shard, slot: usize, r: Response) {
    shard.respond(slot, r);
}

fn room_json(r: &RoomRow) -> serde_json::Value {
    json!({
        "room_id": r.room_id, "room_name": r.room_name, "room_type": r.room_type.as_str(),
        "conversation_id": r.conversation_id, "owner": r.owner, "last_seq": r.last_seq, "ai": r.ai,
    })
}

/// Queue a write whose outcome is the HTTP answer.
fn write_then_reply(
    shard: &mut Shard,
    slot: usize,
    op: impl FnOnce(
            &rusqlite::Connection,
            &mut writer::WriterState,
        ) -> Result<Box<dyn FnOnce(&ServerCtx) -> Response + Send>, StoreError>
        + Send
        + 'static,
) {
    let Some(conn) = shard.conn_id(slot) else {
        return;
    };
    shard.defer(slot);
    let job = WriteJob {
        enqueued: std::time::Instant::now(),
        op: Box::new(move |db, st| {
            let after = op(db, st)?;
            Ok(Box::new(move |ctx: &ServerCtx| {
                let r = after(ctx);
                reply(ctx, conn, r)
            }))
        }),
        on_fail: Box::new(move |ctx: &ServerCtx, e: &StoreError| reply(ctx, conn, store_error(e))),
    };
    if shard.app().store.try_write(job).is_err() {
        respond(
            shard,
            slot,
            Response::error(503, ErrorCode::Busy, "the store is busy")
                .with_header("Retry-After", "1"),
        );
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
    let user = user.clone();
    let conv = new_conversation_id();
    write_then_reply(shard, slot, move |db, st| {
        let room = writer::create_room(
            db,
            st,
            &writer::NewRoom {
                room_id: &room_id,
                room_name: &room_name,
                room_type,
                owner: &user.id,
                owner_name: &user.name,
                members: &members,
                ai,
                conversation_id: &conv,
            },
        )?;
        let mut v = room_json(&room);
        let mut all = vec![user.id.clone()];
        all.extend(members.into_iter().filter(|m| *m != user.id));
        v["members"] = json!(all);
        Ok(Box::new(move |_ctx: &ServerCtx| {
            Response::json_value(201, &v)
        }))
    });
}

fn show(shard: &mut Shard, slot: usize, user: &Arc<User>, room_id: String) {
    let Some(conn) = shard.conn_id(slot) else {
        return;
    };
    shard.defer(slot);
    let user = user.clone();
    let job: crate::store::ReadJob = Box::new(move |db, ctx| {
        let r = (|| -> Result<Response, StoreError> {
            let Some(room) = writer::room_by_id(db, &room_id)? else {
                return Ok(Response::error(
                    404,
                    ErrorCode::NotFound,
                    &format!("no room {room_id}"),
                ));
            };
            let member = writer::is_member(db, &room.conversation_id, &user.id)?;
            if !member && !user.admin && room.room_type != RoomType::Shared {
                return Ok(Response::error(
                    403,
                    ErrorCode::Forbidden,
                    "not a member of this room",
                ));
            }
            let members: Vec<_> = crate::store::read::members(db, &room.conversation_id)?
                .into_iter()
                .map(|(id, name)| json!({"user_id": id, "username": name}))
                .collect();
            let online: Vec<_> = ctx
                .hub
                .presence_list(&room.conversation_id)
                .into_iter()
                .map(|(id, name)| json!({"user_id": id, "username": name}))
                .collect();
            let mut v = room_json(&room);
            v["members"] = json!(members);
            v["online"] = json!(online);
            Ok(Response::json_value(200, &v))
        })();
        reply(ctx, conn, r.unwrap_or_else(|e| store_error(&e)));
    });
    if shard.app().store.try_read(job).is_err() {
        respond(
            shard,
            slot,
            Response::error(503, ErrorCode::Busy, "the store is busy"),
        );
    }
}

fn delete(shard: &mut Shard, slot: usize, user: &Arc<User>, room_id: String) {
    let user = user.clone();
    write_then_reply(shard, slot, move |db, st| {
        let Some(room) = writer::room_by_id(db, &room_id)? else {
            return Err(StoreError::refused(
                ErrorCode::NotFound,
                format!("no room {room_id}"),
            ));
        };
        if room.owner != user.id && !user.admin {
            return Err(StoreError::refused(
                ErrorCode::Forbidden,
                "only the room's owner or an admin can delete it",
            ));
        }
        writer::delete_room(db, st.now_ms, &room.conversation_id)?;
        Ok(Box::new(move |ctx: &ServerCtx| {
            let conv: Arc<str> = Arc::from(room.conversation_id.as_str());
            let ev = Event::RoomLeft {
                id: None,
                room_id: room.room_id.clone(),
                reason: Some("deleted"),
            };
            ctx.net.publish(
                MayBlock::worker(),
                topic_event(
                    &conv,
                    TopicKind::RoomClosed {
                        room_id: Arc::from(room.room_id.as_str()),
                    },
                    &ev,
                ),
            );
            Response::json_value(200, &json!({"deleted": true, "room_id": room.room_id}))
        }))
    });
}

fn members(
    shard: &mut Shard,
    slot: usize,
    user: &Arc<User>,
    room_id: String,
    member: String,
    add: bool,
) {
    let user = user.clone();
    let max = shard.app().cfg.rooms.max_members as i64;
    write_then_reply(shard, slot, move |db, st| {
        let Some(room) = writer::room_by_id(db, &room_id)? else {
            return Err(StoreError::refused(
                ErrorCode::NotFound,
                format!("no room {room_id}"),
            ));
        };
        if room.owner != user.id && !user.admin {
            return Err(StoreError::refused(
                ErrorCode::Forbidden,
                "only the room's owner or an admin can change its members",
            ));
        }
        if add {
            let n: i64 = db.query_row(
                "SELECT COUNT(*) FROM members WHERE conversation_id = ?1",
                [&room.conversation_id],
                |r| r.get(0),
            )?;
            if n >= max {
                return Err(StoreError::refused(
                    ErrorCode::BadRequest,
                    "the room is full",
                ));
            }
            writer::add_member(db, st.now_ms, &room.conversation_id, &member)?;
        } else if !writer::remove_member(db, &room.conversation_id, &member)? {
            return Err(StoreError::refused(
                ErrorCode::NotFound,
                "not a member (or the owner)",
            ));
        }
        Ok(Box::new(move |ctx: &ServerCtx| {
            if !add {
                // The removed user's connections leave the room now.
                for c in ctx.hub.user_connections(&member) {
                    let (rid, conv) = (room.room_id.clone(), room.conversation_id.clone());
                    run_on(ctx, c, move |shard, slot| kick(shard, slot, &rid, &conv));
                }
            }
            Response::json_value(
                200,
                &json!({"room_id": room.room_id, "user_id": member, "member": add}),
            )
        }))
    });
}

fn kick(shard: &mut Shard, slot: usize, room_id: &str, conv: &str) {
    let in_room = shard
        .session_mut(slot)
        .is_some_and(|ws| ws.rooms.contains_key(room_id));
    if !in_room {
        return;
    }
    let user = shard.session(slot).and_then(|s| s.user.clone());
    crate::session::room_closed_locally(shard, slot, Arc::from(room_id), Arc::from(conv));
    if let Some(u) = user {
        if !shard
            .app()
            .hub
            .presence_list(conv)
            .iter()
            .any(|(id, _)| *id == u.id)
        {
            let ev = Event::Presence {
                room_id: room_id.to_string(),
                user_id: u.id.clone(),
                username: u.name.clone(),
                status: "left",
            };
            shard
                .app()
                .net
                .try_publish(topic_event(&Arc::from(conv), TopicKind::Ephemeral, &ev));
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
    let ev = Event::System {
        room_id: room_id.clone(),
        message,
        from: user.name.clone(),
        timestamp: now_rfc3339(),
    };
    match room_id {
        None => {
            // Everyone connected: one message per shard, each writes to its own connections.
            let shared = Arc::new(crate::codec::Encoded::new(ev.clone()));
            let net = &shard.app().net;
            for s in 0..net.shards.len() {
                net.shards
                    .try_send(s, ShardMsg::App(AppMsg::All(shared.clone())));
            }
            let n = net
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
            let Some(conn) = shard.conn_id(slot) else {
                return;
            };
            shard.defer(slot);
            let job: crate::store::ReadJob = Box::new(move |db, ctx| {
                let r = match writer::room_by_id(db, &rid) {
                    Ok(Some(room)) => {
                        let conv: Arc<str> = Arc::from(room.conversation_id.as_str());
                        ctx.net.publish(
                            MayBlock::worker(),
                            topic_event(&conv, TopicKind::Ephemeral, &ev),
                        );
                        let n = ctx.net.topics.subscribers(&conv);
                        Response::json_value(
                            200,
                            &json!({"sent": true, "scope": "room", "room_id": rid, "connections": n}),
                        )
                    }
                    Ok(None) => {
                        Response::error(404, ErrorCode::NotFound, &format!("no room {rid}"))
                    }
                    Err(e) => store_error(&e),
                };
                reply(ctx, conn, r);
            });
            if shard.app().store.try_read(job).is_err() {
                respond(
                    shard,
                    slot,
                    Response::error(503, ErrorCode::Busy, "the store is busy"),
                );
            }
        }
    }
}
