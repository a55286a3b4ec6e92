//! The JSON HTTP API beyond health and tokens: conversation lists and history, rooms,
//! stats. Store-backed requests are handed to the read pool (or the writer) and the
//! answer comes back to the waiting connection as `ShardMsg::Http`.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use crate::app::Shard;
use crate::completion::{HttpThen, Reply};
use crate::net::http::{Request, Response};
use crate::protocol::ErrorCode;
use crate::routes::bearer_user;
use crate::server::ServerCtx;
use crate::store::read;
use crate::store::{ReadCmd, ReadDone, StoreError, WriteCmd};

/// Requests answered on the shard without I/O. `None`: not one of these.
pub fn route(shard: &mut Shard, _slot: usize, req: &Request) -> Option<Response> {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/agents") => Some(match bearer_user(shard, req) {
            Err(r) => r,
            Ok(_) => agents(shard.app()),
        }),
        ("GET", "/v1/stats") => Some(match bearer_user(shard, req) {
            Err(r) => r,
            Ok(u) if !u.admin => Response::error(403, ErrorCode::Forbidden, "admin scope required"),
            Ok(_) => stats(shard.app()),
        }),
        _ => None,
    }
}

/// The agents a chat may name: what a user needs to choose one, no secrets (the system
/// prompt and API keys stay on the server).
fn agents(ctx: &ServerCtx) -> Response {
    let list: Vec<_> = ctx
        .cfg
        .agents
        .values()
        .map(|a| {
            json!({
                "name": a.name,
                "description": a.description,
                "model": a.model,
                "max_tokens": a.max_tokens,
                "temperature": a.temperature,
                "price_prompt_per_1k": a.price_prompt_per_1k,
                "price_completion_per_1k": a.price_completion_per_1k,
                "default": a.name == ctx.cfg.llm.default_agent,
            })
        })
        .collect();
    Response::json_value(200, &json!({ "agents": list }))
}

fn stats(ctx: &ServerCtx) -> Response {
    let m = &ctx.metrics;
    let n = &ctx.net.metrics;
    let h = m.commit_latency_us.lock();
    let body = json!({
        "connections": n.ws_connections.load(Relaxed),
        "connections_per_shard": ctx.net.shard_load.iter().map(|l| l.load(Relaxed)).collect::<Vec<_>>(),
        "messages_in": n.messages_in.load(Relaxed),
        "messages_out": n.messages_out.load(Relaxed),
        "tokens_out": n.tokens_out.load(Relaxed),
        "llm": { "in_flight": ctx.llm.in_flight(), "queued": m.llm_queued.load(Relaxed), "running": m.llm_running.load(Relaxed) },
        "store": { "write_queue": ctx.store.write_queue_len(), "commits": m.store_commits.load(Relaxed), "writes": m.store_writes.load(Relaxed),
                   "commit_latency_us": { "p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "max": h.max() } },
        "uptime_s": m.uptime_s(),
    });
    Response::json_value(200, &body)
}

/// A store refusal or failure as an HTTP error.
pub fn store_error(e: &StoreError) -> Response {
    let (code, msg) = e.client_error();
    Response::error(code.http_status(), code, &msg)
}

/// What a deferred HTTP request asks the store.
pub enum StoreOp {
    Read(ReadCmd),
    Write(WriteCmd),
}

/// Hand a request to the store; the connection waits for the answer (`render_read`, or
/// `rooms_api::render_written` after COMMIT). A full queue is answered 503 at once.
pub fn defer(shard: &mut Shard, slot: usize, op: StoreOp, then: HttpThen) {
    let Some(conn) = shard.conn_id(slot) else {
        return;
    };
    shard.defer(slot);
    let reply = Reply::Http { conn, then };
    let store = &shard.app().store;
    let queued = match op {
        StoreOp::Read(cmd) => store.try_read(cmd, reply),
        StoreOp::Write(cmd) => store.try_write(cmd, reply),
    };
    if queued.is_err() {
        let r = Response::error(503, ErrorCode::Busy, "the store is busy")
            .with_header("Retry-After", "1");
        shard.respond(slot, r);
    }
}

/// `PATCH /v1/conversations/{id}` `{"title"}` and `DELETE /v1/conversations/{id}`: the
/// owner (or an admin) renames or deletes a conversation. `true`: answered.
fn change_conversation(shard: &mut Shard, slot: usize, req: &Request, conv: &str) -> bool {
    let method = req.method.as_str();
    if method != "PATCH" && method != "DELETE" {
        return false;
    }
    let conv = crate::net::http::percent_decode(conv);
    let user = match bearer_user(shard, req) {
        Ok(u) => u,
        Err(r) => {
            shard.respond(slot, r);
            return true;
        }
    };
    let cmd = if method == "DELETE" {
        // Replies being made there stop now; their rows go with the conversation.
        shard
            .app()
            .hub
            .generations
            .cancel(&conv, &user.id, user.admin);
        WriteCmd::DeleteConversation {
            conversation_id: conv,
            user_id: user.id,
            admin: user.admin,
        }
    } else {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let title = match body.get("title") {
            Some(serde_json::Value::String(t)) if t.trim().chars().count() <= 200 => {
                Some(t.trim().to_string()).filter(|t| !t.is_empty())
            }
            Some(serde_json::Value::Null) => None,
            _ => {
                let r = Response::error(
                    400,
                    ErrorCode::BadRequest,
                    "body must be {\"title\": \"…\"} (at most 200 characters, or null)",
                );
                shard.respond(slot, r);
                return true;
            }
        };
        WriteCmd::RenameConversation {
            conversation_id: conv,
            user_id: user.id,
            admin: user.admin,
            title,
        }
    };
    defer(
        shard,
        slot,
        StoreOp::Write(cmd),
        HttpThen::ConversationChanged,
    );
    true
}

/// The HTTP answer to a committed write (on the writer's thread): conversations here,
/// rooms in `rooms_api`.
pub fn render_written(ctx: &ServerCtx, then: HttpThen, w: crate::store::Written) -> Response {
    use crate::store::Written;
    match (then, w) {
        (
            HttpThen::ConversationChanged,
            Written::Renamed {
                conversation_id,
                title,
            },
        ) => Response::json_value(
            200,
            &json!({"conversation_id": conversation_id, "title": title}),
        ),
        (
            HttpThen::ConversationChanged,
            Written::ConversationDeleted {
                conversation_id,
                files,
            },
        ) => {
            for f in &files {
                let _ = std::fs::remove_file(ctx.uploads.dir.join(f));
            }
            let conv: std::sync::Arc<str> = std::sync::Arc::from(conversation_id.as_str());
            let ev = crate::protocol::Event::ConversationDeleted {
                conversation_id: conversation_id.clone(),
            };
            ctx.publish(
                crate::net::MayBlock::worker(),
                crate::topic::topic_event(&conv, crate::topic::TopicKind::Deleted, ev),
            );
            Response::json_value(
                200,
                &json!({"deleted": true, "conversation_id": conversation_id, "files": files.len()}),
            )
        }
        (then, w) => crate::rooms_api::render_written(ctx, then, w),
    }
}

/// The HTTP answer to a store read (on a reader thread).
pub fn render_read(ctx: &ServerCtx, then: HttpThen, done: ReadDone) -> Response {
    match (then, done) {
        (
            then @ (HttpThen::SeedConversations { .. }
            | HttpThen::SeedHistory { .. }
            | HttpThen::SeedRoom),
            done,
        ) => crate::dialect::http::render_read(ctx, then, done),
        (HttpThen::Conversations, ReadDone::Conversations { list, next_cursor }) => {
            Response::json_value(
                200,
                &json!({ "conversations": list, "next_cursor": next_cursor }),
            )
        }
        (
            HttpThen::History,
            ReadDone::History {
                conversation_id,
                messages,
                last_seq,
                has_more,
                room_id,
            },
        ) => {
            let messages: Vec<_> = messages.iter().map(|r| r.view()).collect();
            Response::json_value(
                200,
                &json!({ "conversation_id": conversation_id, "messages": messages, "last_seq": last_seq, "has_more": has_more, "room_id": room_id }),
            )
        }
        (HttpThen::File, ReadDone::File(file)) => crate::uploads::serve(ctx, file),
        (then, done) => crate::rooms_api::render_read(ctx, then, done),
    }
}

fn query_u32(req: &Request, name: &str) -> Result<Option<u32>, Response> {
    match req.query_param(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Response::error(
                400,
                ErrorCode::BadRequest,
                &format!("`{name}` must be a non-negative integer"),
            )
        }),
    }
}

fn query_i64(req: &Request, name: &str) -> Result<Option<i64>, Response> {
    match req.query_param(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Response::error(
                400,
                ErrorCode::BadRequest,
                &format!("`{name}` must be an integer"),
            )
        }),
    }
}

/// Requests that need the store. `false`: not one of these.
pub fn deferred(shard: &mut Shard, slot: usize, req: &Request) -> bool {
    let path = req.path.as_str();
    let method = req.method.as_str();
    let respond = |shard: &mut Shard, r: Response| shard.respond(slot, r);
    let max_page = shard.app().cfg.store.max_page;

    if method == "GET" && path == "/v1/conversations" {
        let user = match bearer_user(shard, req) {
            Ok(u) => u,
            Err(r) => {
                respond(shard, r);
                return true;
            }
        };
        let limit = match query_u32(req, "limit") {
            Ok(l) => l.unwrap_or(50).clamp(1, max_page),
            Err(r) => {
                respond(shard, r);
                return true;
            }
        };
        let cursor = match req.query_param("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => match read::parse_cursor(&c) {
                Some(c) => Some(c),
                None => {
                    respond(
                        shard,
                        Response::error(400, ErrorCode::BadRequest, "bad cursor"),
                    );
                    return true;
                }
            },
        };
        let cmd = ReadCmd::Conversations {
            user_id: user.id,
            cursor,
            limit,
            aliases: None,
        };
        defer(shard, slot, StoreOp::Read(cmd), HttpThen::Conversations);
        return true;
    }

    if let Some(conv) = path
        .strip_prefix("/v1/conversations/")
        .filter(|c| !c.is_empty() && !c.contains('/'))
    {
        return change_conversation(shard, slot, req, conv);
    }
    if let Some(rest) = path.strip_prefix("/v1/conversations/") {
        let Some(conv) = rest
            .strip_suffix("/messages")
            .filter(|c| !c.is_empty() && !c.contains('/'))
        else {
            return false;
        };
        if method != "GET" {
            return false;
        }
        let conv = crate::net::http::percent_decode(conv);
        let user = match bearer_user(shard, req) {
            Ok(u) => u,
            Err(r) => {
                respond(shard, r);
                return true;
            }
        };
        let (limit, before, after) = match (
            query_u32(req, "limit"),
            query_i64(req, "before_seq"),
            query_i64(req, "after_seq"),
        ) {
            (Ok(l), Ok(b), Ok(a)) => (l.unwrap_or(50).clamp(1, max_page), b, a),
            (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => {
                respond(shard, r);
                return true;
            }
        };
        let cmd = ReadCmd::History {
            conversation_id: conv,
            alias: None,
            user_id: user.id,
            admin: user.admin,
            before_seq: before,
            after_seq: after,
            limit,
        };
        defer(shard, slot, StoreOp::Read(cmd), HttpThen::History);
        return true;
    }
    if let Some(file_id) = path.strip_prefix("/v1/files/") {
        if method != "GET" || file_id.is_empty() || file_id.contains('/') {
            return false;
        }
        let file_id = crate::net::http::percent_decode(file_id);
        let user = match bearer_user(shard, req) {
            Ok(u) => u,
            Err(r) => {
                respond(shard, r);
                return true;
            }
        };
        // Only ids this server makes (`f_` + 24 hex digits) ever name a file on disk.
        if !crate::uploads::well_formed_id(&file_id) {
            shard.respond(
                slot,
                Response::error(404, ErrorCode::NotFound, "no such file"),
            );
            return true;
        }
        let cmd = ReadCmd::File {
            file_id,
            user_id: user.id,
            admin: user.admin,
        };
        defer(shard, slot, StoreOp::Read(cmd), HttpThen::File);
        return true;
    }
    crate::rooms_api::deferred(shard, slot, req)
}
