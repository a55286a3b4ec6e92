//! The seeds' HTTP endpoints, each answered by its native counterpart (SEEDS-COMPAT.md
//! §6.2): 003's conversation list and history, 004's token, stats and rooms, 002's status
//! and broadcast, 001's test page.

use std::sync::Arc;

use super::Route;
use crate::auth::User;
use crate::config::{Config, Profile};
use crate::net::http::Request;
use crate::net::origin;
use crate::protocol::ErrorCode;
use crate::server::ServerCtx;

// ---------------------------------------------------------------- WebSocket upgrades

/// The token an upgrade carries, where its profile looks for one (SEEDS-COMPAT.md §6.3).
/// Native and every profile: query `token`, `Authorization: Bearer`, subprotocol
/// `bearer.<JWT>`; 000 also `?authorization=` (with or without `Bearer `) and a raw
/// `Authorization` header.
pub fn upgrade_token(req: &Request, offered: &[String], route: Option<&Route>) -> Option<String> {
    let agixt = route.is_some_and(|r| r.profile == Profile::Agixt);
    let strip = |t: &str| {
        let t = t.trim();
        t.strip_prefix("Bearer ").unwrap_or(t).trim().to_string()
    };
    let from_agixt_query = || {
        agixt
            .then(|| req.query_param("authorization"))
            .flatten()
            .map(|t| strip(&t))
            .filter(|t| !t.is_empty())
    };
    from_agixt_query()
        .or_else(|| req.query_param("token").filter(|t| !t.is_empty()))
        .or_else(|| req.bearer().map(str::to_string))
        .or_else(|| {
            agixt
                .then(|| req.header("authorization"))
                .flatten()
                .map(strip)
                .filter(|t| !t.is_empty())
        })
        .or_else(|| {
            offered
                .iter()
                .find_map(|p| p.strip_prefix("bearer.").map(str::to_string))
        })
}

/// Does this profile report a refused token in-band (accept the upgrade, send its error
/// form, close 1008)? 004 (like native) answers HTTP 401 instead.
pub fn in_band_auth(route: &Route) -> bool {
    route.profile != Profile::Rooms
}

/// The identity of a path-bound upgrade (002, 003): the token's user must be the path's;
/// with no token, the path's user itself when `compat.trust_path_user` allows it here.
/// 000 needs a token. `Err`: the error to report in-band, then close.
pub fn path_identity(
    ctx: &ServerCtx,
    req: &Request,
    route: &Route,
    user: Option<Arc<User>>,
) -> Result<Option<Arc<User>>, (ErrorCode, String)> {
    match (route.profile, &route.path_user, user) {
        (Profile::Agixt, _, None) => Err((
            ErrorCode::AuthRequired,
            "a token is required (?authorization=, ?token= or Authorization)".into(),
        )),
        (_, Some(want), Some(u)) if u.id != *want => Err((
            ErrorCode::Forbidden,
            format!("the token is for user {:?}, not the path's user", u.id),
        )),
        (_, Some(want), None) => {
            if trusted(ctx, req) {
                Ok(Some(Arc::new(User {
                    id: want.clone(),
                    name: want.clone(),
                    email: None,
                    admin: false,
                    // The connection lives as long as it is open; nothing expires it.
                    exp: crate::auth::now_s() + 10 * 365 * 86_400,
                })))
            } else {
                Err((
                    ErrorCode::AuthRequired,
                    "a token is required (?token=, Authorization: Bearer or subprotocol bearer.<JWT>); see compat.trust_path_user".into(),
                ))
            }
        }
        (_, _, u) => Ok(u),
    }
}

/// May a request with no token act as the user its path names? Only when the operator
/// said so, on a loopback listener, for a loopback `Host` (no DNS rebinding) and, from a
/// browser, a loopback or listed `Origin` (WebSockets are not subject to CORS).
fn trusted(ctx: &ServerCtx, req: &Request) -> bool {
    ctx.cfg.compat.trust_path_user
        && ctx.loopback
        && req.header("host").is_some_and(origin::is_loopback_host)
        && req.header("origin").is_none_or(|o| {
            origin::is_loopback_origin(o) || origin::is_listed(o, &ctx.cfg.server.cors_origins)
        })
}

/// The largest inbound message on this profile's sockets, when it differs from native.
pub fn max_message_bytes(route: &Route, cfg: &Config) -> Option<usize> {
    (route.profile == Profile::Rooms).then_some(cfg.compat.rooms_max_message_bytes)
}

// ---------------------------------------------------------------- HTTP endpoints

use serde_json::{json, Value};

use crate::app::Shard;
use crate::completion::HttpThen;
use crate::net::http::Response;
use crate::store::{ReadCmd, ReadDone};

/// 001's test page: the seed's own `ChatWebSocket` class driving `/ws/chat`.
pub const WS_TEST_HTML: &str = include_str!("../../static/ws_test.html");

/// One seed HTTP endpoint.
enum Endpoint {
    WsTest,
    Conversations { user: String },
    Messages { user: String, conv: String },
    Token,
    Stats,
    CreateRoom,
    ShowRoom { room: String },
    Status,
    Broadcast,
}

fn endpoint(method: &str, path: &str) -> Option<(Profile, Endpoint)> {
    use Endpoint::*;
    let seg = |s: &str| super::segment(s);
    Some(match (method, path) {
        ("GET", "/ws/test") => (Profile::WsChat, WsTest),
        ("POST", "/api/v1/ws/token") => (Profile::Rooms, Token),
        ("GET", "/api/v1/ws/stats") => (Profile::Rooms, Stats),
        ("POST", "/api/v1/ws/rooms") => (Profile::Rooms, CreateRoom),
        ("GET", "/api/v1/ws/status") => (Profile::EdAgent, Status),
        ("POST", "/api/v1/ws/broadcast") => (Profile::EdAgent, Broadcast),
        ("GET", p) if p.starts_with("/api/v1/ws/rooms/") => (
            Profile::Rooms,
            ShowRoom {
                room: seg(&p["/api/v1/ws/rooms/".len()..])?,
            },
        ),
        ("GET", p) if p.starts_with("/conversations/") => {
            let rest = &p["/conversations/".len()..];
            match rest.split('/').collect::<Vec<_>>().as_slice() {
                [user] => (Profile::Progress, Conversations { user: seg(user)? }),
                [user, conv, "messages"] => (
                    Profile::Progress,
                    Messages {
                        user: seg(user)?,
                        conv: seg(conv)?,
                    },
                ),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// A seed HTTP request: answered here, or rewritten to its native counterpart and given
/// back (`Some`) for the native router. Anything else comes back unchanged.
pub fn on_request(shard: &mut Shard, slot: usize, mut req: Request) -> Option<Request> {
    let ctx = shard.app().clone();
    let (only, path) = match super::compat_prefix(&req.path) {
        Some((p, rest)) => (Some(p), rest.to_string()),
        None => (None, req.path.clone()),
    };
    let Some((profile, ep)) = endpoint(&req.method, &path) else {
        return Some(req);
    };
    if only.is_some_and(|p| p != profile) || !ctx.cfg.compat.serves(profile) {
        return Some(req);
    }
    let respond = |shard: &mut Shard, r: Response| shard.respond(slot, r);
    match ep {
        Endpoint::WsTest => {
            respond(
                shard,
                Response::text(200, "text/html; charset=utf-8", WS_TEST_HTML),
            );
            None
        }
        Endpoint::Stats => {
            req.path = "/v1/stats".into();
            Some(req)
        }
        Endpoint::Broadcast => {
            req.path = "/v1/broadcast".into();
            Some(req)
        }
        Endpoint::Token => {
            // The seed exchanges a signed-in user's access token; no dev-token minting here.
            if req.bearer().is_none() {
                respond(
                    shard,
                    Response::error(
                        401,
                        ErrorCode::AuthRequired,
                        "missing Authorization: Bearer <token>",
                    ),
                );
                return None;
            }
            req.path = "/v1/token".into();
            Some(req)
        }
        Endpoint::CreateRoom => {
            let mut body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut body {
                if m.get("room_type").is_none_or(|t| t.is_null()) {
                    m.insert(
                        "room_type".into(),
                        json!(ctx.cfg.compat.rooms_default_room_type.as_str()),
                    );
                }
                req.body = body.to_string().into_bytes();
            }
            req.path = "/v1/rooms".into();
            Some(req)
        }
        Endpoint::ShowRoom { room } => {
            match crate::routes::bearer_user(shard, &req) {
                Err(r) => respond(shard, r),
                Ok(u) => {
                    let cmd = ReadCmd::Room {
                        room_id: room,
                        user_id: u.id,
                        admin: u.admin,
                    };
                    crate::api::defer(
                        shard,
                        slot,
                        crate::api::StoreOp::Read(cmd),
                        HttpThen::SeedRoom,
                    );
                }
            }
            None
        }
        Endpoint::Status => {
            let admin = req.bearer().is_some()
                && crate::routes::bearer_user(shard, &req).is_ok_and(|u| u.admin);
            respond(shard, status(&ctx, admin));
            None
        }
        Endpoint::Conversations { user } => {
            match path_user(shard, &req, &user) {
                Err(r) => respond(shard, r),
                Ok(()) => {
                    let cmd = ReadCmd::Conversations {
                        user_id: user.clone(),
                        cursor: None,
                        limit: LIST_MAX,
                        aliases: Some(Profile::Progress),
                    };
                    let then = HttpThen::SeedConversations { user_id: user };
                    crate::api::defer(shard, slot, crate::api::StoreOp::Read(cmd), then);
                }
            }
            None
        }
        Endpoint::Messages { user, conv } => {
            let max = ctx.cfg.store.max_page;
            let limit = match req.query_param("limit").map(|l| l.parse::<u32>()) {
                None => 50,
                Some(Ok(l)) => l.clamp(1, max),
                Some(Err(_)) => {
                    respond(
                        shard,
                        Response::error(
                            400,
                            ErrorCode::BadRequest,
                            "`limit` must be a non-negative integer",
                        ),
                    );
                    return None;
                }
            };
            match path_user(shard, &req, &user) {
                Err(r) => respond(shard, r),
                Ok(()) => {
                    let cmd = ReadCmd::History {
                        conversation_id: conv.clone(),
                        alias: Some(Profile::Progress),
                        user_id: user.clone(),
                        admin: false,
                        before_seq: None,
                        after_seq: None,
                        limit,
                    };
                    let then = HttpThen::SeedHistory {
                        user_id: user,
                        asked: conv,
                    };
                    crate::api::defer(shard, slot, crate::api::StoreOp::Read(cmd), then);
                }
            }
            None
        }
    }
}

/// 003's list holds all of a user's conversations; this many at most.
const LIST_MAX: u32 = 10_000;

/// 003's endpoints name the user in the path: a bearer token must be that user's (or an
/// admin's); with no token, trust mode as for its WebSocket (`trusted`).
fn path_user(shard: &Shard, req: &Request, user: &str) -> Result<(), Response> {
    if req.bearer().is_none() && trusted(shard.app(), req) {
        return Ok(());
    }
    let u = crate::routes::bearer_user(shard, req)?;
    if u.id == user || u.admin {
        Ok(())
    } else {
        Err(Response::error(
            403,
            ErrorCode::Forbidden,
            "the token is not the path's user's",
        ))
    }
}

/// 002's `GET /api/v1/ws/status`: counts for anyone, the users for an admin.
fn status(ctx: &ServerCtx, admin: bool) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let mut v = json!({
        "active_connections": ctx.net.metrics.ws_connections.load(Relaxed).max(0),
        "active_users": ctx.hub.user_count(),
        "timestamp": crate::protocol::now_rfc3339(),
    });
    // The list (every user, allocated) only for an admin.
    if admin {
        v["users"] = ctx
            .hub
            .users_online()
            .into_iter()
            .map(|(u, n)| json!({ "user_id": u, "connections": n }))
            .collect();
    }
    Response::json_value(200, &v)
}

/// The answer to a seed endpoint's store read (on a reader thread).
pub fn render_read(ctx: &ServerCtx, then: HttpThen, done: ReadDone) -> Response {
    match (then, done) {
        (HttpThen::SeedConversations { user_id }, ReadDone::Conversations { list, .. }) => {
            let conversations: Vec<Value> = list
                .into_iter()
                .filter(|c| c.kind == "chat")
                .map(|c| {
                    json!({
                        "conversation_id": c.alias.unwrap_or(c.id),
                        "created_at": c.created_at,
                        "last_updated": c.last_updated,
                        "message_count": c.message_count,
                        "preview": c.preview,
                    })
                })
                .collect();
            let count = conversations.len();
            Response::json_value(
                200,
                &json!({ "user_id": user_id, "conversations": conversations, "count": count }),
            )
        }
        (HttpThen::SeedHistory { user_id, asked }, ReadDone::History { messages, .. }) => {
            let messages: Vec<Value> = messages
                .into_iter()
                .map(|m| {
                    json!({
                        "message_id": m.id,
                        "role": m.role,
                        "content": m.content,
                        "timestamp": crate::protocol::rfc3339_ms(m.created_at),
                        "author": m.author,
                        "status": m.status,
                        "seq": m.seq,
                    })
                })
                .collect();
            let count = messages.len();
            Response::json_value(
                200,
                &json!({ "user_id": user_id, "conversation_id": asked, "messages": messages, "count": count }),
            )
        }
        (HttpThen::SeedRoom, ReadDone::Room { room, members }) => {
            let online = ctx.presence_list(&room.conversation_id);
            let mut v = crate::rooms_api::room_json(&room);
            v["members"] = members
                .into_iter()
                .map(|(id, name)| json!({"user_id": id, "username": name}))
                .collect();
            v["participants"] = online.iter().map(|(id, _)| json!(id)).collect();
            v["online"] = online
                .into_iter()
                .map(|(id, name)| json!({"user_id": id, "username": name}))
                .collect();
            Response::json_value(200, &v)
        }
        (_, done) => {
            log::error!("seed endpoint: unexpected read result {done:?}");
            Response::error(500, ErrorCode::Internal, "unexpected store result")
        }
    }
}
