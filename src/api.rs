//! The JSON HTTP API beyond health and tokens: conversation lists and history, rooms,
//! stats. Store-backed requests are handed to the read pool (or the writer) and the
//! answer comes back to the waiting connection as `ShardMsg::Http`.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use crate::app::Shard;
use crate::auth::User;
use crate::net::http::{Request, Response};
use crate::net::{ConnId, MayBlock, ShardMsg};
use crate::protocol::ErrorCode;
use crate::routes::bearer_user;
use crate::server::ServerCtx;
use crate::store::read;
use crate::store::writer;
use crate::store::StoreError;

/// Requests answered on the shard without I/O. `None`: not one of these.
pub fn route(shard: &mut Shard, _slot: usize, req: &Request) -> Option<Response> {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/stats") => Some(match bearer_user(shard, req) {
            Err(r) => r,
            Ok(u) if !u.admin => Response::error(403, ErrorCode::Forbidden, "admin scope required"),
            Ok(_) => stats(shard.app()),
        }),
        _ => None,
    }
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

/// Send a worker's HTTP answer to the connection waiting for it.
pub fn reply(ctx: &ServerCtx, conn: ConnId, resp: Response) {
    ctx.net.shards.send(
        MayBlock::worker(),
        conn.shard as usize,
        ShardMsg::Http(conn, resp),
    );
}

/// A store refusal or failure as an HTTP error.
pub fn store_error(e: &StoreError) -> Response {
    let (code, msg) = e.client_error();
    Response::error(code.http_status(), code, &msg)
}

/// Hand a read to the pool; the connection waits for the answer.
fn defer_read(
    shard: &mut Shard,
    slot: usize,
    f: impl FnOnce(&rusqlite::Connection, &ServerCtx) -> Response + Send + 'static,
) {
    let Some(conn) = shard.conn_id(slot) else {
        return;
    };
    shard.defer(slot);
    let job: crate::store::ReadJob = Box::new(move |db, ctx| {
        let r = f(db, ctx);
        reply(ctx, conn, r);
    });
    if shard.app().store.try_read(job).is_err() {
        let r = Response::error(503, ErrorCode::Busy, "the store is busy")
            .with_header("Retry-After", "1");
        shard.respond(slot, r);
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
        defer_read(shard, slot, move |db, _ctx| match read::list_conversations(
            db, &user.id, cursor, limit,
        ) {
            Ok((list, next)) => {
                Response::json_value(200, &json!({ "conversations": list, "next_cursor": next }))
            }
            Err(e) => store_error(&e),
        });
        return true;
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
        defer_read(shard, slot, move |db, _ctx| {
            history(db, &user, &conv, before, after, limit)
        });
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
        defer_read(shard, slot, move |db, ctx| {
            crate::uploads::download(db, ctx, &user, &file_id)
        });
        return true;
    }
    crate::rooms_api::deferred(shard, slot, req)
}

fn history(
    db: &rusqlite::Connection,
    user: &User,
    conv: &str,
    before: Option<i64>,
    after: Option<i64>,
    limit: u32,
) -> Response {
    let access = match writer::conv_access(db, conv, &user.id) {
        Ok(a) => a,
        Err(e) => return store_error(&e),
    };
    if !access.is_member && !user.admin {
        return Response::error(
            403,
            ErrorCode::Forbidden,
            "you are not a participant of this conversation",
        );
    }
    match read::history(db, conv, before, after, limit) {
        Ok(rows) => {
            let first = rows.first().map(|r| r.seq);
            let has_more = match (after, first) {
                (None, Some(f)) => f > 1,
                _ => rows.len() as u32 == limit,
            };
            let messages: Vec<_> = rows.iter().map(|r| r.view()).collect();
            let last_seq = read::last_seq(db, conv).unwrap_or(0);
            Response::json_value(
                200,
                &json!({ "conversation_id": conv, "messages": messages, "last_seq": last_seq, "has_more": has_more, "room_id": access.room_id }),
            )
        }
        Err(e) => store_error(&e),
    }
}
