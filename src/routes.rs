//! The HTTP router: what each request on the shared port gets.
//!
//! Runs on the shard. Answers that need no I/O (health, metrics, tokens, the test page,
//! WebSocket upgrades) are produced here; answers that need SQLite are handed to the read
//! pool and come back as `ShardMsg::Http` (the connection waits in `HttpWait`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::json;

use crate::app::Shard;
use crate::auth::{AuthError, User};
use crate::codec::Codec;
use crate::config::Config;
use crate::net::http::{self, Cors, Request, Response};
use crate::net::origin;
use crate::net::Upgrade;
use crate::protocol::{ErrorCode, RoomType};
use crate::session::{AutoJoin, Session, WsKind};

pub const INDEX_HTML: &str = include_str!("../static/index.html");

/// The JavaScript client library (clients/js/confab.js), served at `/confab.js`.
pub const CONFAB_JS: &str = include_str!("../clients/js/confab.js");

fn respond(shard: &mut Shard, slot: usize, resp: Response) {
    shard.respond(slot, resp);
}

/// The CORS answer for a request (policy: `http::Cors`, docs/security.md). A request
/// that carries a bearer token may be read by any origin; any other only by a listed one.
fn cors_for(req: &Request, cfg: &Config) -> Cors {
    match req.header("origin") {
        Some(o) if origin::is_listed(o, &cfg.server.cors_origins) => Cors::Origin(o.to_string()),
        _ if req.bearer().is_some() => Cors::Any,
        _ => Cors::None,
    }
}

/// A CORS preflight. Preflights never carry credentials, so the answer depends on the
/// path: token minting is open only to listed origins; every other endpoint that accepts
/// cross-origin calls needs a bearer token, which the real request must then carry.
fn preflight(req: &Request, cfg: &Config) -> Response {
    let cors = match req.header("origin") {
        Some(o) if origin::is_listed(o, &cfg.server.cors_origins) => Cors::Origin(o.to_string()),
        _ if req.path == "/v1/token" => Cors::None,
        _ => Cors::Any,
    };
    Response::text(204, "text/plain", Vec::new())
        .with_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
        .with_header(
            "Access-Control-Allow-Headers",
            "Authorization, Content-Type",
        )
        .with_header("Access-Control-Max-Age", "600")
        .with_cors(cors)
}

pub fn on_request(shard: &mut Shard, slot: usize, req: Request) {
    let ctx = shard.app().clone();
    // The seeds' HTTP endpoints: answered there, or rewritten to native ones.
    let req = if req.method != "OPTIONS" && !req.is_websocket_upgrade() {
        match crate::dialect::http::on_request(shard, slot, req) {
            Some(r) => r,
            None => return,
        }
    } else {
        req
    };
    let path = req.path.as_str();
    if req.method == "OPTIONS" {
        let r = preflight(&req, &ctx.cfg);
        return respond(shard, slot, r);
    }
    // WebSocket endpoints: a codec's path, the echo path, or a seed dialect's path.
    let native: &'static dyn Codec = &crate::codec::NATIVE;
    let endpoint = match crate::codec::for_path(path) {
        Some(codec) => Some((WsKind::Protocol, codec, None)),
        None if ctx.cfg.server.echo_path.as_deref() == Some(path) => {
            Some((WsKind::Echo, native, None))
        }
        None => crate::dialect::route(path, &ctx.cfg).map(|r| (WsKind::Protocol, native, Some(r))),
    };
    if let Some((kind, codec, dialect)) = endpoint {
        if !req.is_websocket_upgrade() {
            let r = Response::error(
                426,
                ErrorCode::BadRequest,
                "this endpoint speaks WebSocket only",
            )
            .with_header("Upgrade", "websocket");
            return respond(shard, slot, r);
        }
        return upgrade(shard, slot, req, kind, codec, dialect);
    }
    let method = req.method.as_str();
    let resp = match (method, path) {
        ("GET", "/health") => {
            let store_failing = ctx.metrics.store_unhealthy.load(Relaxed) != 0;
            let bus = ctx.bus_state();
            let unhealthy = store_failing || bus == "down";
            let body = json!({
                "status": if unhealthy { "degraded" } else { "ok" },
                "connections": ctx.net.metrics.ws_connections.load(Relaxed).max(0),
                "uptime_s": ctx.metrics.uptime_s(),
                "store": if store_failing { "failing" } else { "ok" },
                "bus": bus,
                "scanner": match ctx.uploads.scanner.as_ref().map(|s| s.state()) {
                    None => "off",
                    Some(crate::uploads::scan::SCANNER_OK) => "ok",
                    Some(_) => "failing",
                },
            });
            Response::json_value(if unhealthy { 503 } else { 200 }, &body)
        }
        ("GET", "/metrics") => match &ctx.cfg.server.metrics_token {
            Some(want) if !req.bearer().is_some_and(|got| same(got, want)) => Response::error(
                401,
                ErrorCode::AuthRequired,
                "/metrics needs its bearer token",
            ),
            _ => Response::text(
                200,
                "text/plain; version=0.0.4",
                ctx.prometheus(
                    &ctx.net.metrics,
                    &crate::metrics::Depths {
                        inbox_dropped: ctx.net.shards.dropped(),
                        inboxes: ctx.net.shards.inbox_lens(),
                        store_writes: ctx.store.write_queue_len(),
                        store_reads: ctx.store.read_queue_len(),
                        uploads: ctx.uploads.queue_len(),
                    },
                ),
            ),
        },
        ("GET", "/") | ("GET", "/index.html") => {
            Response::text(200, "text/html; charset=utf-8", INDEX_HTML)
        }
        ("GET", "/favicon.ico") => Response::text(204, "image/x-icon", Vec::new()),
        ("GET", "/vendor/marked.min.js") => Response::text(
            200,
            "text/javascript; charset=utf-8",
            include_str!("../static/vendor/marked.min.js"),
        ),
        ("GET", "/vendor/purify.min.js") => Response::text(
            200,
            "text/javascript; charset=utf-8",
            include_str!("../static/vendor/purify.min.js"),
        ),
        ("GET", "/confab.js") => {
            // Public code: any page may load it as a module (modules are fetched with CORS).
            let r = Response::text(200, "text/javascript; charset=utf-8", CONFAB_JS)
                .with_header("Cache-Control", "no-cache")
                .with_cors(Cors::Any);
            return respond(shard, slot, r);
        }
        ("POST", "/v1/token") => mint_token(shard, &req),
        _ => match crate::api::route(shard, slot, &req) {
            Some(r) => r,
            None => {
                if crate::api::deferred(shard, slot, &req) {
                    return;
                }
                match allowed_methods(path) {
                    Some(allow) => Response::error(
                        405,
                        ErrorCode::BadRequest,
                        &format!("method {method} not allowed on {path}"),
                    )
                    .with_header("Allow", allow),
                    None => Response::error(
                        404,
                        ErrorCode::NotFound,
                        &format!("no such path: {}", truncate(path, 100)),
                    ),
                }
            }
        },
    };
    let resp = resp.with_cors(cors_for(&req, &ctx.cfg));
    respond(shard, slot, resp);
}

/// Compare secrets without an early exit on the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Known paths and their methods (for 405 vs 404).
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/health" | "/metrics" | "/" | "/index.html" | "/confab.js" | "/v1/stats"
        | "/v1/agents" | "/v1/conversations" => Some("GET"),
        "/v1/token" | "/v1/broadcast" => Some("POST"),
        "/v1/rooms" => Some("POST"),
        p if p.starts_with("/v1/rooms/") => Some("GET, DELETE"),
        p if p.starts_with("/v1/conversations/") && p.ends_with("/messages") => Some("GET"),
        p if p.starts_with("/v1/conversations/") => Some("PATCH, DELETE"),
        p if p.starts_with("/v1/files/") => Some("GET"),
        _ => None,
    }
}

/// The user named by a request's bearer token.
pub fn bearer_user(shard: &Shard, req: &Request) -> Result<User, Response> {
    let Some(token) = req.bearer() else {
        return Err(Response::error(
            401,
            ErrorCode::AuthRequired,
            "missing Authorization: Bearer <JWT>",
        ));
    };
    shard.app().auth.verify(token).map_err(|e| {
        let reason = match e {
            AuthError::Expired => "token expired".to_string(),
            AuthError::Invalid(m) => m,
        };
        crate::logging::auth_failure(shard.request_peer(), "bearer token", &reason);
        Response::error(401, ErrorCode::AuthFailed, &reason)
    })
}

fn mint_token(shard: &mut Shard, req: &Request) -> Response {
    let ctx = shard.app();
    let body: serde_json::Value = if req.body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => return Response::error(400, ErrorCode::BadRequest, "body must be a JSON object"),
        }
    };
    let str_field = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let ttl = ctx.auth.token_ttl_s;
    let (sub, name, admin) = if req.bearer().is_some() {
        match bearer_user(shard, req) {
            // A signed-in user exchanges their token for a connection token of their own.
            Ok(u) => (u.id, Some(u.name), u.admin),
            Err(r) => return r,
        }
    } else if ctx.cfg.auth.dev_tokens && ctx.loopback {
        if let Err(r) = dev_token_allowed(req, &ctx.cfg) {
            return r;
        }
        let Some(sub) = str_field("sub").filter(|s| !s.is_empty() && s.len() <= 128) else {
            return Response::error(
                400,
                ErrorCode::BadRequest,
                "field `sub` (1 to 128 characters) is required",
            );
        };
        let admin = body.get("admin").and_then(|v| v.as_bool()).unwrap_or(false);
        if admin && !ctx.cfg.auth.dev_tokens_admin {
            return Response::error(
                403,
                ErrorCode::Forbidden,
                "dev tokens are never admin unless auth.dev_tokens_admin = true",
            );
        }
        (sub, str_field("name"), admin)
    } else {
        return Response::error(401, ErrorCode::AuthRequired, "missing Authorization: Bearer <JWT> (dev tokens are off or the listener is not loopback)");
    };
    match ctx.auth.sign(&sub, name.as_deref(), admin, ttl) {
        Ok(token) => Response::json_value(
            200,
            &json!({ "token": token, "expires_in": ttl, "user": { "id": sub, "name": name.unwrap_or_else(|| sub.clone()) } }),
        ),
        Err(e) => Response::error(500, ErrorCode::Internal, &e.to_string()),
    }
}

/// The browser guards on an unauthenticated dev-token request (the listener is loopback
/// and dev tokens are on). A foreign web page can reach a loopback server through the
/// user's browser; these keep it from minting tokens there:
/// - `Content-Type: application/json`, which a page can only send after a CORS preflight
///   (a "simple" `text/plain` POST needs none);
/// - a loopback `Host`, so a DNS-rebinding page (its own name resolving to 127.0.0.1)
///   is refused;
/// - an `Origin`, when present, that is loopback or listed in `server.cors_origins`.
fn dev_token_allowed(req: &Request, cfg: &Config) -> Result<(), Response> {
    let json = req
        .header("content-type")
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Response::error(
            415,
            ErrorCode::BadRequest,
            "Content-Type must be application/json",
        ));
    }
    if !req.header("host").is_some_and(origin::is_loopback_host) {
        return Err(Response::error(
            403,
            ErrorCode::Forbidden,
            "dev tokens are minted only for a loopback Host (localhost, 127.0.0.1, [::1])",
        ));
    }
    if let Some(o) = req.header("origin") {
        if !origin::is_loopback_origin(o) && !origin::is_listed(o, &cfg.server.cors_origins) {
            return Err(Response::error(
                403,
                ErrorCode::Forbidden,
                "dev tokens are not minted for cross-origin pages (see server.cors_origins)",
            ));
        }
    }
    Ok(())
}

fn upgrade(
    shard: &mut Shard,
    slot: usize,
    req: Request,
    kind: WsKind,
    codec: &'static dyn Codec,
    route: Option<crate::dialect::Route>,
) {
    let ctx = shard.app().clone();
    // Subprotocols: the codec's own (`confab.v1`) is selected when offered;
    // `bearer.<JWT>` carries a token.
    let offered: Vec<String> = req
        .headers
        .iter()
        .filter(|(k, _)| k == "sec-websocket-protocol")
        .flat_map(|(_, v)| v.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect();
    let subprotocol = codec
        .subprotocol()
        .filter(|own| kind == WsKind::Protocol && offered.iter().any(|p| p == own));
    let mut user = None;
    // A dialect that reports authentication in-band (not with an HTTP status).
    let mut auth_failure = None;
    if kind == WsKind::Protocol {
        let token = crate::dialect::http::upgrade_token(&req, &offered, route.as_ref());
        if let Some(token) = token {
            match ctx.auth.verify(&token) {
                Ok(u) => user = Some(Arc::new(u)),
                Err(e) => {
                    ctx.metrics.error(ErrorCode::AuthFailed);
                    let msg = match e {
                        AuthError::Expired => "token expired".to_string(),
                        AuthError::Invalid(m) => m,
                    };
                    crate::logging::auth_failure(shard.request_peer(), "WebSocket token", &msg);
                    if route
                        .as_ref()
                        .is_some_and(crate::dialect::http::in_band_auth)
                    {
                        auth_failure = Some((ErrorCode::AuthFailed, msg));
                    } else {
                        return respond(
                            shard,
                            slot,
                            Response::error(401, ErrorCode::AuthFailed, &msg),
                        );
                    }
                }
            }
        }
        if let (Some(r), None) = (&route, &auth_failure) {
            match crate::dialect::http::path_identity(&ctx, &req, r, user.take()) {
                Ok(u) => user = u,
                Err(f) => auth_failure = Some(f),
            }
        }
    }
    // A dialect may have its own default room type (004: private).
    let default_room_type = route
        .as_ref()
        .filter(|r| r.profile == crate::config::Profile::Rooms)
        .map(|_| ctx.cfg.compat.rooms_default_room_type);
    let auto_join = req
        .query_param("room_id")
        .filter(|r| !r.is_empty() && r.len() <= 128)
        .map(|room_id| AutoJoin {
            room_id,
            room_type: req
                .query_param("room_type")
                .and_then(|t| RoomType::parse(&t))
                .or(default_room_type),
            room_name: req.query_param("room_name").filter(|n| !n.is_empty()),
        });
    let bytes = match http::switching_protocols(&req, subprotocol) {
        Ok(b) => b,
        Err(r) => return respond(shard, slot, r),
    };
    if let Some(u) = user.take() {
        let Some(id) = shard.conn_id(slot) else {
            return;
        };
        let cap = ctx.cfg.server.max_connections_per_user;
        match ctx.hub.user_connect(u, id, cap) {
            Ok(shared) => user = Some(shared),
            Err(_) => {
                return respond(
                    shard,
                    slot,
                    Response::error(
                        429,
                        ErrorCode::RateLimit,
                        "too many connections for this user",
                    ),
                )
            }
        }
    }
    let now = crate::net::timer::Tick::now();
    let authed = user.is_some();
    let mut session = Session::new(kind, codec, user, now);
    if let Some(a) = auto_join {
        session.extras_mut().auto_join = Some(a);
    }
    if kind == WsKind::Protocol && !authed {
        session.auth_deadline = Some(now + ctx.cfg.auth.auth_timeout);
    }
    let (mut limits, out_cap) = match kind {
        WsKind::Protocol => (ctx.ws_limits, ctx.cfg.ws.out_queue_max_bytes),
        WsKind::Echo => (ctx.echo_limits, crate::server::ECHO_OUT_CAP),
    };
    if let Some(r) = &route {
        if let Some(max) = crate::dialect::http::max_message_bytes(r, &ctx.cfg) {
            // A dialect's own limit: its messages may come as one frame of that size.
            limits = crate::net::frame::Limits::new(max, max);
        }
        let mut d = crate::dialect::Dialect::new(r, &ctx.cfg);
        d.auth_failure = auth_failure;
        session.set_dialect(d);
    }
    let up = Upgrade {
        session,
        limits,
        out_cap,
        leftover: req.leftover,
    };
    shard.upgrade(slot, bytes, up);
}

/// The route of a request as a metrics label: the path with its ids replaced by their
/// names (bounded: any path not served here is `other`).
pub fn route_label(req: &Request) -> &'static str {
    let path = req.path.as_str();
    // The seeds' prefixed paths count as their bare forms.
    let path = match path.strip_prefix("/compat/") {
        Some(rest) if rest.len() > 3 && rest.as_bytes()[3] == b'/' => &rest[3..],
        _ => path,
    };
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    match segs.as_slice() {
        ["health"] => "/health",
        ["metrics"] => "/metrics",
        [""] | ["index.html"] => "/",
        ["favicon.ico"] => "/favicon.ico",
        ["confab.js"] => "/confab.js",
        ["vendor", _] => "/vendor/{file}",
        ["v1", "ws"] => "/v1/ws",
        ["v1", "token"] => "/v1/token",
        ["v1", "stats"] => "/v1/stats",
        ["v1", "agents"] => "/v1/agents",
        ["v1", "broadcast"] => "/v1/broadcast",
        ["v1", "conversations"] => "/v1/conversations",
        ["v1", "conversations", _, "messages"] => "/v1/conversations/{id}/messages",
        ["v1", "conversations", _] => "/v1/conversations/{id}",
        ["v1", "conversation", _, "stream"] => "/v1/conversation/{id}/stream",
        ["v1", "files", _] => "/v1/files/{id}",
        ["v1", "rooms"] => "/v1/rooms",
        ["v1", "rooms", _] => "/v1/rooms/{id}",
        ["v1", "rooms", _, "members"] => "/v1/rooms/{id}/members",
        ["ws", "chat"] => "/ws/chat",
        ["ws", "test"] => "/ws/test",
        ["ws", _, _] => "/ws/{user_id}/{session_id}",
        ["conversations", _] => "/conversations/{user_id}",
        ["conversations", _, _, "messages"] => "/conversations/{user_id}/{id}/messages",
        ["api", "v1", "ws", "ws"] => "/api/v1/ws/ws",
        ["api", "v1", "ws", "token"] => "/api/v1/ws/token",
        ["api", "v1", "ws", "stats"] => "/api/v1/ws/stats",
        ["api", "v1", "ws", "status"] => "/api/v1/ws/status",
        ["api", "v1", "ws", "broadcast"] => "/api/v1/ws/broadcast",
        ["api", "v1", "ws", "rooms"] => "/api/v1/ws/rooms",
        ["api", "v1", "ws", "rooms", _] => "/api/v1/ws/rooms/{id}",
        ["api", "v1", "ws", _] => "/api/v1/ws/{user_id}",
        _ if req.is_websocket_upgrade() => "other-websocket",
        _ => "other",
    }
}
